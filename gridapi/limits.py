"""Rate limits: flask-limiter for sign-in throttling, the same storage for per-key limits.

Storage is Redis when GRIDAPI_REDIS_URL is set (shared by every process and machine) and
process memory otherwise. When Redis cannot be reached, what it limits answers 503 with
Retry-After (``errors``): never unlimited, never 500.
"""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .errors import DomainError

limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)

#: How long a request waits for Redis to connect, then to answer, before the limits'
#: storage counts as unreachable: without a bound, a Redis host that drops packets would hold
#: every worker until gunicorn's timeout.
REDIS_TIMEOUT_SECONDS = 1.0


def storage_options(redis_url: str) -> dict[str, object]:
    """Return the options of the limits' storage: with Redis, bounded waits and its errors
    raised as ``limits.errors.StorageError`` (answered 503)."""
    if not redis_url:
        return {"wrap_exceptions": False}
    return {
        "wrap_exceptions": True,
        "socket_connect_timeout": REDIS_TIMEOUT_SECONDS,
        "socket_timeout": REDIS_TIMEOUT_SECONDS,
    }


def storage_reachable() -> bool:
    """Return whether the limits' storage answers (process memory always does)."""
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


class TooManyRequests(DomainError):
    status = 429

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(
            message or f"Too many requests; retry after {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


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
    """Return the throttling key of the name a sign-in gives, as typed (trimmed, any case).

    The limit on it answers 429. It is not the account's: failures by an account's phone
    number then locking its username too (429 for one, 401 for a name that was not the
    number's) told anyone who could guess both whose number it was. An account's own
    allowance is kept beside it (``account_locked``), and refuses silently.
    """
    from .extensions import state
    from .security.fields import blind_index

    data = request.get_json(silent=True) or {}
    login = data.get("username") if isinstance(data, dict) else None
    login = str(login or "").strip()
    if not login or len(login) > 64 or "\x00" in login:
        # Not a name the sign-in takes (its schema answers 422): one key for all of them.
        return "account:invalid"
    # Keyed hash: a phone number typed (staff's are kept only encrypted) is no storage key.
    return f"account:name:{blind_index('login', login.lower(), state().phone_key)}"


#: The scope of the sign-in failures counted per account (``count_account_failure``,
#: ``account_locked`` and ``password_guesses`` spend the same allowance).
LOGIN_ACCOUNT_SCOPE = "login-account"


def account_key(user_id: int) -> str:
    """Return the throttling key of an account's sign-in failures."""
    return f"account:user:{user_id}"


def account_locked(limit: str, user_id: int) -> bool:
    """Return whether an account's allowance of failed sign-ins is spent (by any of its
    names, or wrong current passwords)."""
    from limits import parse

    return not limiter_strategy().test(parse(limit), account_key(user_id), LOGIN_ACCOUNT_SCOPE)


def count_account_failure(limit: str, user_id: int) -> None:
    """Count a failed sign-in against the account it named."""
    from limits import parse

    limiter_strategy().hit(parse(limit), account_key(user_id), LOGIN_ACCOUNT_SCOPE)


def _spend(limit: str, identifiers: tuple[str, ...], message: str, *, cost: int = 0) -> None:
    """Spend ``cost`` of ``limit`` under ``identifiers`` (0: only check that some is left);
    raise TooManyRequests (with the wait) when there is not enough."""
    import time

    from limits import parse

    item = parse(limit)
    strategy = limiter_strategy()
    if strategy.hit(item, *identifiers, cost=cost) if cost else strategy.test(item, *identifiers):
        return
    reset, _ = strategy.get_window_stats(item, *identifiers)
    raise TooManyRequests(max(1, int(reset - time.time())), message)


def count_lookup(limit: str, caller: str, kind: str = "lookup", cost: int = 1) -> None:
    """Count ``cost`` exact-value lookups of personal data by ``caller``; 429 past ``limit``.

    Kept in the limiter's storage (Redis with GRIDAPI_REDIS_URL, so the count is shared by
    every process), so that the API cannot be used to test at scale whether a person with a
    given ID or phone number is registered.
    """
    message = f"Too many lookups of ID or phone numbers, or whole names ({limit}); retry later."
    _spend(limit, (kind, caller), message, cost=cost)


def password_guesses(limit: str, user_id: int, *, failed: bool) -> None:
    """Check (``failed`` false) or count (true) the wrong current passwords sent by an
    account's own session, against the sign-in failures' allowance of that account (the
    same key and scope as the sign-in's limit): 429 when it is spent. A stolen access token
    could otherwise guess the password at ``POST /auth/password`` without limit."""
    message = f"Too many wrong passwords for this account ({limit}); retry later."
    identifiers = (account_key(user_id), LOGIN_ACCOUNT_SCOPE)
    _spend(limit, identifiers, message, cost=1 if failed else 0)
