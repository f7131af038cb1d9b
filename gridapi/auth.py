"""Who is calling: bearer access tokens for people, API keys for apps; permission checks.

Every operation declares a permission with ``@blp.requires(...)`` (or ``@blp.public``); the
declaration is both enforced here and published in the OpenAPI document.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass
from functools import wraps
from typing import Any

from flask import g, request

from .db import sqlite_write_intent
from .errors import DomainError
from .extensions import state
from .limits import RateWindow
from .scope import Scope
from .security.tokens import InvalidToken, api_key_prefix, digest

# The pseudo-permission of operations any authenticated caller may use (sign-out, /me).
AUTHENTICATED = "authenticated"


class Unauthorized(DomainError):
    status = 401

    def __init__(
        self, message: str = "Authentication is required: send a bearer access token or an API key."
    ) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="gridapi"'})


class Forbidden(DomainError):
    status = 403


@dataclass(frozen=True)
class Principal:
    """The authenticated caller: a user or an API client, with permissions and scope."""

    kind: str  # "user" | "client"
    id: int
    name: str
    role: str | None
    rank: int
    permissions: frozenset[str]
    scope: Scope
    region_code: str | None = None
    rate_limit: str | None = None

    def can(self, permission: str) -> bool:
        return permission in self.permissions

    @property
    def actor_id(self) -> str:
        return f"{self.kind}:{self.id}"


class PrincipalCache:
    """A short per-process cache of principals, so a request need not reload its user.

    Entries live ``ttl`` seconds (never past the credential's own expiry): a disabled user,
    a revoked key or a signed-out sign-in stops working within that time in every process,
    and at once in the process that made the change.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._items: dict[tuple[Any, ...], tuple[float, Any]] = {}

    def get(self, key: tuple[Any, ...]) -> tuple[bool, Any]:
        item = self._items.get(key)
        if item is None or time.monotonic() > item[0]:
            return False, None
        return True, item[1]

    def put(self, key: tuple[Any, ...], value: Any, expires_at: float | None = None) -> None:
        """Keep ``value`` for ``ttl`` seconds, or until ``expires_at`` (epoch) if sooner."""
        if self.ttl <= 0:
            return
        lifetime = self.ttl if expires_at is None else min(self.ttl, expires_at - time.time())
        if lifetime > 0:
            if len(self._items) > 10_000:
                self._items.clear()
            self._items[key] = (time.monotonic() + lifetime, value)

    def end_session(self, session_id: str) -> None:
        """Refuse the access tokens of the sign-in ``session_id`` from now on in this process
        (its refresh tokens were revoked; other processes see it within ``ttl``)."""
        self.put(("session", session_id), False)

    def clear(self) -> None:
        self._items.clear()


def _credentials() -> tuple[str, str] | None:
    """Return the request's credential as (``"token"`` or ``"key"``, value), or None.

    A request carrying an Authorization header is authenticated by it alone, whatever else it
    carries: X-API-Key is then not read. So one that is present but empty or malformed is
    refused (Unauthorized), as a bad token is, never passed over for the key: the caller
    meant to send a credential there, and which one it is must not be guessed."""
    header = request.headers.get("Authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("The Authorization header must be 'Bearer <token>'.")
        value = value.strip()
        return ("key", value) if api_key_prefix(value) else ("token", value)
    key = request.headers.get("X-API-Key", "")
    if key:
        return "key", key.strip()
    return None


def current_principal(required: bool = True) -> Principal | None:
    """Return the caller, authenticating once per request.

    Raises Unauthorized for bad credentials, or for none when ``required``.
    """
    if "principal" in g:
        principal = g.principal
    else:
        creds = _credentials()
        principal = None if creds is None else _authenticate(*creds)
        g.principal = principal
    if principal is None and required:
        raise Unauthorized()
    return principal


def _authenticate(kind: str, value: str) -> Principal:
    # Credentials are read in a session of their own, as a plain read: on SQLite a write
    # request's BEGIN IMMEDIATE here would wait on the request's own write lock.
    token = sqlite_write_intent.set(False)
    try:
        return _authenticate_read(kind, value)
    finally:
        sqlite_write_intent.reset(token)


def _authenticate_read(kind: str, value: str) -> Principal:
    from .services import identity

    st = state()
    cache: PrincipalCache = st.principals
    if kind == "token":
        # A token already verified in this process skips the signature check until the
        # cache entry ends (at most ttl, never past the token's expiry).
        hit, verified = cache.get(("jwt", value))
        if hit and verified is not None:
            principal, session_id = verified
        else:
            try:
                claims = st.tokens.verify(value)
                user_id, version = int(claims["sub"]), int(claims.get("ver", -1))
                session_id = claims.get("sid")
                if session_id is not None and not isinstance(session_id, str):
                    raise ValueError("sid")
            except (InvalidToken, KeyError, ValueError):
                raise Unauthorized("The access token is invalid or expired.") from None
            hit, principal = cache.get(("user", user_id, version))
            if not hit:
                with st.sessions() as session:
                    principal = identity.user_principal(session, user_id, version)
                cache.put(("user", user_id, version), principal)
            if principal is None:
                raise Unauthorized("The access token is no longer valid.")
            cache.put(("jwt", value), (principal, session_id), expires_at=float(claims["exp"]))
        # Tokens issued before they carried ``sid`` end with their lifetime, as they did.
        if session_id is not None and not _session_live(session_id):
            raise Unauthorized("The access token is no longer valid.")
        return principal
    prefix = api_key_prefix(value)
    if prefix is None:
        raise Unauthorized("The API key is invalid or revoked.")
    hit, principal = cache.get(("client", prefix, digest(value)))
    if not hit:
        with st.sessions() as session:
            principal = identity.client_principal(session, prefix, value)
        cache.put(("client", prefix, digest(value)), principal)
    if principal is None:
        raise Unauthorized("The API key is invalid or revoked.")
    _check_client_rate(principal)
    return principal


def _session_live(session_id: str) -> bool:
    """Return whether the sign-in an access token belongs to is still live (not signed out,
    not ended by a replayed refresh token or a new password). Read from the database at
    most once per GRIDAPI_AUTH_CACHE_SECONDS per sign-in and process: a request whose token
    this process has seen costs a dictionary lookup."""
    from .services import identity

    st = state()
    cache: PrincipalCache = st.principals
    hit, live = cache.get(("session", session_id))
    if not hit:
        with st.sessions() as session:
            live = identity.session_live(session, session_id)
        cache.put(("session", session_id), live)
    return bool(live)


@functools.lru_cache(maxsize=256)
def _parse_limit(limit: str):  # type: ignore[no-untyped-def]
    from limits import parse

    return parse(limit)


class LocalRateLimiter:
    """Fixed-window request counters per API key, kept in this process.

    Used when there is no shared store (no GRIDAPI_REDIS_URL): flask-limiter's memory
    storage is per process too, and this costs a dictionary lookup instead of a lock.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[int, str], tuple[int, int]] = {}
        self._lock = threading.Lock()

    def hit(self, key: int, limit: str) -> tuple[bool, RateWindow]:
        """Count a request; return whether it is allowed, and the window it was counted in."""
        item = _parse_limit(limit)
        period = item.get_expiry()
        now = time.time()
        window = int(now // period)
        reset_at = (window + 1) * period
        with self._lock:
            start, count = self._windows.get((key, limit), (window, 0))
            if start != window:
                start, count = window, 0
            if count >= item.amount:
                return False, RateWindow(item.amount, 0, reset_at)
            self._windows[(key, limit)] = (start, count + 1)
        return True, RateWindow(item.amount, item.amount - count - 1, reset_at)


def _check_client_rate(principal: Principal) -> None:
    """Count the request against the key's own limit; 429 past it. The window is kept for
    the answer's ``X-RateLimit-*`` headers (``limits.rate_limit_headers``), which every
    answer to the key carries, as every answer of a route flask-limiter limits does."""
    from .limits import TooManyRequests, limiter_strategy

    if not principal.rate_limit:
        return
    st = state()
    if not st.settings.redis_url:
        allowed, window = st.client_limits.hit(principal.id, principal.rate_limit)
    else:
        from limits.strategies import FixedWindowRateLimiter

        item = _parse_limit(principal.rate_limit)
        strategy = limiter_strategy()
        if isinstance(strategy, FixedWindowRateLimiter):
            # The count the hit answers is where the key stands: one round trip to Redis
            # fewer than asking for it again (get_window_stats reads it, then the expiry).
            key = item.key_for("client", str(principal.id))
            count = strategy.storage.incr(key, item.get_expiry())
            allowed = count <= item.amount
            reset = strategy.storage.get_expiry(key)
            window = RateWindow(item.amount, item.amount - count if allowed else 0, reset)
        else:
            allowed = strategy.hit(item, "client", str(principal.id))
            reset, remaining = strategy.get_window_stats(item, "client", str(principal.id))
            window = RateWindow(item.amount, remaining if allowed else 0, reset)
    g.client_rate_window = window
    if not allowed:
        raise TooManyRequests(retry_after=window.retry_after(), window=window)


def check_permission(permission: str) -> Principal:
    """Return the caller if it holds ``permission``; Unauthorized or Forbidden otherwise."""
    principal = current_principal()
    assert principal is not None
    if permission != AUTHENTICATED and not principal.can(permission):
        raise Forbidden(f"This operation needs the permission {permission!r}.")
    return principal


def requires_permission(permission: str):  # type: ignore[no-untyped-def]
    """Decorate a view: authenticate the caller and check ``permission`` before it runs."""

    def decorator(func):  # type: ignore[no-untyped-def]
        @wraps(func)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            check_permission(permission)
            return func(*args, **kwargs)

        return wrapper

    return decorator
