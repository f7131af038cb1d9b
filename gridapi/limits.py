"""Rate limits: flask-limiter for sign-in throttling, the same storage for per-key limits.

Storage is Redis when GRIDAPI_REDIS_URL is set (shared by every process and machine) and
the database otherwise (``DatabaseStorage``: shared by every process too), where only the
sensitive limits are counted (sign-in failures, exact lookups of personal data); the
per-request limit of API keys is then counted in process memory (``auth``), so a report
costs no database round trip for it. When Redis cannot be reached, what it limits answers
503 with Retry-After (``errors``): never unlimited, never 500.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from limits.storage import Storage
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .db import sqlite_write_intent
from .errors import DomainError

log = logging.getLogger(__name__)


def _address_hash() -> str:
    """Return the keyed hash of the client's address (HMAC-SHA256 under the blind-index
    key, as the name a sign-in gives), never the address itself."""
    from .extensions import state
    from .security.fields import blind_index

    return blind_index("address", get_remote_address() or "", state().phone_key)


def address_key() -> str:
    """Return the throttling key of the client's address: a keyed hash of it, never the
    address itself.

    The keys are the rows of ``rate_limit_counters`` (and Redis's keys): with the address
    in them the table held who had tried to sign in from where for a window, personal data
    the database has no other use for. A keyed hash is still one key per address, so the
    limits count as before; without the key, nobody can try the 2^32 IPv4 addresses to read
    them back."""
    return f"address:{_address_hash()}"


limiter = Limiter(key_func=address_key, default_limits=[], headers_enabled=True)

#: How long a request waits for Redis to connect, then to answer, before the limits'
#: storage counts as unreachable: without a bound, a Redis host that drops packets would hold
#: every worker until gunicorn's timeout.
REDIS_TIMEOUT_SECONDS = 1.0


#: The limits' storage URI without Redis: ``DatabaseStorage``.
DATABASE_STORAGE_URI = "gridapi+db://"


def storage_options(redis_url: str) -> dict[str, object]:
    """Return the options of the limits' storage: with Redis, bounded waits and its errors
    raised as ``limits.errors.StorageError`` (answered 503); without, the database's errors
    answered as the database's."""
    if not redis_url:
        return {"wrap_exceptions": False}
    return {
        "wrap_exceptions": True,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }


def storage_reachable() -> bool:
    """Return whether the limits' storage answers."""
    return bool(limiter.storage.check())


def storage_warning(redis_url: str) -> str | None:
    """Return what goes wrong while GRIDAPI_REDIS_URL cannot be reached (None when it is
    not set or answers). The URL is shown without its password."""
    if not redis_url:
        return None
    from urllib.parse import urlsplit

    from limits.storage import storage_from_string

    storage = storage_from_string(redis_url, **storage_options(redis_url))
    if storage.check():
        return None
    parts = urlsplit(redis_url)
    shown = redis_url
    if parts.password is not None:
        shown = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
        shown = shown.geturl()
    return (
        f"GRIDAPI_REDIS_URL ({shown}) cannot be reached: until it can, sign-in, exact ID and "
        "phone lookups and requests with API keys answer 503, and /api/v1/health too."
    )


class DatabaseStorage(Storage):
    """The limits' fixed-window counters in the table ``rate_limit_counters``, shared by
    every process and server on the database. Each call is one statement in a transaction
    of its own (committed at once, whatever becomes of the request's): an increment is one
    INSERT … ON CONFLICT DO UPDATE … RETURNING, which PostgreSQL and SQLite both take, so
    two processes counting at once never lose a hit. Expired windows are deleted now and
    then by the increment that finds them due."""

    STORAGE_SCHEME = ["gridapi+db"]
    #: How often (seconds) a process deletes the expired windows.
    PRUNE_SECONDS = 300.0

    _INCR = text(
        "INSERT INTO rate_limit_counters (key, hits, expires_at)"
        " VALUES (:key, :amount, :now + :expiry)"
        " ON CONFLICT (key) DO UPDATE SET"
        " hits = CASE WHEN rate_limit_counters.expires_at > :now"
        " THEN rate_limit_counters.hits + excluded.hits ELSE excluded.hits END,"
        " expires_at = CASE WHEN rate_limit_counters.expires_at > :now"
        " THEN rate_limit_counters.expires_at ELSE excluded.expires_at END"
        " RETURNING hits"
    )
    _WINDOW = text("SELECT hits, expires_at FROM rate_limit_counters WHERE key = :key")

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **_: Any) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        self._next_prune = 0.0

    @property
    def engine(self) -> Any:
        """The current application's engine: flask-limiter's limiter is one for every
        application of the process (tests make several), each with its own database."""
        from .extensions import state

        return state().engine

    @property
    def base_exceptions(self) -> type[Exception]:
        return DBAPIError

    def _run(self, statement: Any, params: dict[str, Any], *, write: bool) -> Any:
        # Its own connection and transaction: on SQLite a plain read, or a writer's for an
        # increment, whatever the request's session began as.
        if write and statement is self._INCR:
            joined = _request_writer_session()
            if joined is not None:
                return self._incr_in(joined, params)
        token = sqlite_write_intent.set(write)
        try:
            with self.engine.begin() as conn:
                if write and params.get("now", 0.0) >= self._next_prune:
                    self._next_prune = params["now"] + self.PRUNE_SECONDS
                    conn.execute(
                        text("DELETE FROM rate_limit_counters WHERE expires_at <= :now"),
                        {"now": params["now"]},
                    )
                return conn.execute(statement, params).first()
        finally:
            sqlite_write_intent.reset(token)

    def _incr_in(self, session: Any, params: dict[str, Any]) -> Any:
        """Count in the request's own SQLite write transaction (another connection would wait
        for the write lock this one holds, for the busy timeout); counted again on a
        connection of its own if that transaction rolls back, so a refused request counts."""
        session.info.setdefault(_PENDING, []).append((self, params))
        return session.execute(self._INCR, params).first()

    def _window(self, key: str) -> tuple[int, float] | None:
        now = time.time()
        row = self._run(self._WINDOW, {"key": key}, write=False)
        if row is None or row.expires_at <= now:
            return None
        return int(row.hits), float(row.expires_at)

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        params = {"key": key, "amount": amount, "expiry": float(expiry), "now": time.time()}
        return int(self._run(self._INCR, params, write=True).hits)

    def get(self, key: str) -> int:
        window = self._window(key)
        return window[0] if window else 0

    def get_expiry(self, key: str) -> float:
        window = self._window(key)
        return window[1] if window else time.time()

    def check(self) -> bool:
        try:
            self._run(text("SELECT 1"), {}, write=False)
        except DBAPIError:
            return False
        return True

    def reset(self) -> int | None:
        with self.engine.begin() as conn:
            return int(conn.execute(text("DELETE FROM rate_limit_counters")).rowcount)

    def clear(self, key: str) -> None:
        self._run(
            text("DELETE FROM rate_limit_counters WHERE key = :key"), {"key": key}, write=True
        )


def _request_writer_session() -> Any:
    """Return the request's session when, on SQLite, it holds the database's one write lock
    (a write request's transaction, BEGIN IMMEDIATE, under way); else None."""
    from flask import g, has_request_context

    if not has_request_context() or not sqlite_write_intent.get():
        return None
    session = g.get("_db_session")
    if session is None or not session.in_transaction():
        return None
    return session if session.get_bind().dialect.name == "sqlite" else None


#: ``Session.info`` key of the hits counted in a request's SQLite transaction not yet committed.
_PENDING = "gridapi_rate_limit_hits"


@event.listens_for(Session, "after_commit")
def _committed_hits(session: Session) -> None:
    session.info.pop(_PENDING, None)


@event.listens_for(Session, "after_transaction_end")
def _count_rolled_back_hits(session: Session, transaction: Any) -> None:
    # Runs once the transaction's connection is released (its write lock with it).
    if transaction.parent is None and _PENDING in session.info:
        for storage, params in session.info.pop(_PENDING):
            try:
                storage._run(storage._INCR, {**params, "now": time.time()}, write=True)
            except DBAPIError as exc:  # the answer has gone; the database is down
                log.warning("a rate-limit hit could not be counted again: %s", exc.orig)


@dataclass(frozen=True)
class RateWindow:
    """Where a caller stands in the window of one rate limit, as flask-limiter's
    ``X-RateLimit-*`` headers tell it on the sign-in: ``limit`` requests per window,
    ``remaining`` of them left, the window ending at ``reset_at`` (epoch seconds)."""

    limit: int
    remaining: int
    reset_at: float

    def retry_after(self) -> int:
        """Return the seconds until the window ends (at least 1): the 429's Retry-After."""
        return max(1, int(self.reset_at - time.time()))

    def headers(self) -> dict[str, str]:
        """Return the ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` headers."""
        return {
            RATE_LIMIT_LIMIT: str(self.limit),
            RATE_LIMIT_REMAINING: str(max(0, self.remaining)),
            RATE_LIMIT_RESET: str(int(self.reset_at)),
        }


#: The headers flask-limiter writes (``RATELIMIT_HEADERS_ENABLED``), written alike here.
RATE_LIMIT_LIMIT = "X-RateLimit-Limit"
RATE_LIMIT_REMAINING = "X-RateLimit-Remaining"
RATE_LIMIT_RESET = "X-RateLimit-Reset"


class TooManyRequests(DomainError):
    """429 with Retry-After; given the ``window`` of the limit that refused, with its
    ``X-RateLimit-*`` headers too (the ones flask-limiter's 429s carry)."""

    status = 429

    def __init__(
        self, retry_after: int, message: str | None = None, *, window: RateWindow | None = None
    ) -> None:
        headers = {"Retry-After": str(retry_after)}
        if window is not None:
            headers.update(window.headers())
        super().__init__(
            message or f"Too many requests; retry after {retry_after} s.", headers=headers
        )


def rate_limit_headers(response):  # type: ignore[no-untyped-def]
    """Add the ``X-RateLimit-*`` headers of the API key's own limit (``auth``) to every
    answer to a request the key authenticated, as flask-limiter adds its own to the answers
    of the routes it limits; a header already there (a 429 of another limit) is kept."""
    from flask import g

    window = g.get("client_rate_window")
    if window is not None:
        for name, value in window.headers().items():
            if name not in response.headers:
                response.headers[name] = value
    return response


#: The answers that ask the client to wait: flask-limiter adds Retry-After to every answer
#: of a limited route (a first failed sign-in answered 401 with ``Retry-After: 900``).
WAITING_STATUSES = frozenset({409, 429, 503})


def retry_after_only_when_waiting(response):  # type: ignore[no-untyped-def]
    """Drop Retry-After from an answer that does not ask the client to wait (registered
    before the limiter, so it runs after the limiter has added its headers)."""
    if response.status_code not in WAITING_STATUSES:
        response.headers.pop("Retry-After", None)
    return response


def limiter_strategy():  # type: ignore[no-untyped-def]
    """Return the rate-limiting strategy (and storage) flask-limiter was configured with."""
    return limiter.limiter


def login_name_key() -> str:
    """Return the throttling key of the name a sign-in gives, as typed (trimmed, any case),
    from the client's address.

    The limit on it (GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS) answers 429. It is counted per
    address: counted per name alone, anyone who knew a grid worker's username could keep
    the worker locked out from wherever they were (a 429 for the right password too). Nor
    is it the account's: failures by an account's phone number then locking its username
    too (429 for one, 401 for a name that was not the number's) told anyone who could guess
    both whose number it was. An account's own allowances are kept beside it
    (``account_locked``), and refuse silently.
    """
    from .extensions import state
    from .security.fields import blind_index

    data = request.get_json(silent=True) or {}
    login = data.get("username") if isinstance(data, dict) else None
    login = str(login or "").strip()
    if not login or len(login) > 64 or "\x00" in login:
        # Not a name the sign-in takes (its schema answers 422): one key for all of them
        # from an address.
        return f"account:invalid:{_address_hash()}"
    # Keyed hash: a phone number typed (staff's are kept only encrypted) is no storage key.
    name = blind_index("login", login.lower(), state().phone_key)
    return f"account:name:{name}:{_address_hash()}"


#: The scopes of the sign-in failures counted per account: from one client address
#: (GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS) and from every address together
#: (GRIDAPI_LOGIN_RATE_ACCOUNT). ``count_account_failure``, ``account_locked`` and
#: ``password_guesses`` spend the same allowances.
LOGIN_ACCOUNT_ADDRESS_SCOPE = "login-account-address"
LOGIN_ACCOUNT_SCOPE = "login-account"
#: The scope of the sign-in failures counted per account on a device that signed in to it
#: before (a valid ``device_token``; GRIDAPI_LOGIN_RATE_ACCOUNT_ADDRESS).
LOGIN_DEVICE_SCOPE = "login-account-device"


def account_key(user_id: int) -> str:
    """Return the throttling key of an account's sign-in failures from every address."""
    return f"account:user:{user_id}"


def _device_allowance(user_id: int, device: str) -> tuple[str, tuple[str, str]]:
    from .extensions import state

    return (
        state().settings.login_rate_account_address,
        (f"{account_key(user_id)}:device:{device}", LOGIN_DEVICE_SCOPE),
    )


def trusted_device(user_id: int, device: str | None) -> str | None:
    """Return ``device`` (the id of a valid device token of the account) while its own
    allowance of failed sign-ins is left, else None: a device token stolen with the device
    buys a guesser that allowance once, then counts for nothing."""
    if device is None:
        return None
    from limits import parse

    limit, identifiers = _device_allowance(user_id, device)
    return device if limiter_strategy().test(parse(limit), *identifiers) else None


def _account_allowances(
    user_id: int, device: str | None = None
) -> tuple[tuple[str, tuple[str, str]], ...]:
    """Return the account's allowances of failed sign-ins, each as (limit, identifiers): on a
    trusted device (``trusted_device``), that device's alone; elsewhere, from the client's
    address first, then from every address.

    A device that signed in to the account before is not held by the allowance of every
    address: once someone elsewhere has spent it guessing, the owner still signs in on their
    phone (OWASP's device cookies), wherever its address is that day."""
    from .extensions import state

    if device is not None:
        return (_device_allowance(user_id, device),)
    settings = state().settings
    return (
        (
            settings.login_rate_account_address,
            (f"{account_key(user_id)}:{_address_hash()}", LOGIN_ACCOUNT_ADDRESS_SCOPE),
        ),
        (settings.login_rate_account, (account_key(user_id), LOGIN_ACCOUNT_SCOPE)),
    )


def account_locked(user_id: int, device: str | None = None) -> bool:
    """Return whether an account's allowance of failed sign-ins is spent (by any of its
    names, or wrong current passwords): the one from the client's address, or the one from
    every address; on a trusted ``device``, that device's."""
    from limits import parse

    strategy = limiter_strategy()
    return not all(
        strategy.test(parse(limit), *identifiers)
        for limit, identifiers in _account_allowances(user_id, device)
    )


def count_account_failure(user_id: int, device: str | None = None) -> None:
    """Count a failed sign-in against the account it named, from the client's address and
    from every address; on a trusted ``device``, against that device's allowance."""
    from limits import parse

    strategy = limiter_strategy()
    for limit, identifiers in _account_allowances(user_id, device):
        strategy.hit(parse(limit), *identifiers)


def _spend(limit: str, identifiers: tuple[str, ...], message: str, *, cost: int = 0) -> None:
    """Spend ``cost`` of ``limit`` under ``identifiers`` (0: only check that some is left);
    raise TooManyRequests (with the wait) when there is not enough."""

    from limits import parse

    item = parse(limit)
    strategy = limiter_strategy()
    if strategy.hit(item, *identifiers, cost=cost) if cost else strategy.test(item, *identifiers):
        return
    reset, _ = strategy.get_window_stats(item, *identifiers)
    window = RateWindow(item.amount, 0, reset)
    raise TooManyRequests(window.retry_after(), message, window=window)


def count_lookup(limit: str, caller: str, kind: str = "lookup", cost: int = 1) -> None:
    """Count ``cost`` exact-value lookups of personal data by ``caller``; 429 past ``limit``.

    Kept in the limiter's storage (Redis with GRIDAPI_REDIS_URL, else the database: the count
    is shared by every process), so that the API cannot be used to test at scale whether a person with a
    given ID or phone number is registered.
    """
    message = f"Too many lookups of ID or phone numbers, or whole names ({limit}); retry later."
    _spend(limit, (kind, caller), message, cost=cost)


def require_lookup_left(limit: str, caller: str, kind: str = "lookup") -> None:
    """Raise TooManyRequests (429) when ``caller`` has no exact lookup left of ``limit``;
    count nothing.

    Asked before a number is checked against the register (an ID number, a household
    number, a username or phone number of an account), where only a hit is counted (its
    409 tells that the number is taken) and a miss is not, so that ordinary data entry
    spends nothing. Past the allowance the request is refused before anything is looked up,
    hit or miss: refused only on a hit, a 429 meant "registered" and a 201 "not
    registered", an oracle without limit."""
    count_lookup(limit, caller, kind, cost=0)


def password_guesses(user_id: int, *, failed: bool) -> None:
    """Check (``failed`` false) or count (true) the wrong current passwords sent by an
    account's own session, against the sign-in failures' allowances of that account (the
    same keys and scopes as the sign-in's): 429 when one is spent. A stolen access token
    could otherwise guess the password at ``POST /auth/password`` without limit."""
    spent = None
    for limit, identifiers in _account_allowances(user_id):
        message = f"Too many wrong passwords for this account ({limit}); retry later."
        try:
            _spend(limit, identifiers, message, cost=1 if failed else 0)
        except TooManyRequests as exc:
            spent = spent or exc  # counted against both all the same
    if spent is not None:
        raise spent
