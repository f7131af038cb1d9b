"""Rate limits: flask-limiter for sign-in throttling, the same storage for per-key limits.

Storage is Redis when GRIDAPI_REDIS_URL is set (shared by every process and machine) and
process memory otherwise.
"""

from __future__ import annotations

from flask import request
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address

from .errors import DomainError

limiter = Limiter(key_func=get_remote_address, default_limits=[], headers_enabled=True)


class TooManyRequests(DomainError):
    status = 429

    def __init__(self, retry_after: int, message: str | None = None) -> None:
        super().__init__(
            message or f"Too many requests; retry after {retry_after} s.",
            headers={"Retry-After": str(retry_after)},
        )


def limiter_strategy():  # type: ignore[no-untyped-def]
    """Return the rate-limiting strategy (and storage) flask-limiter was configured with."""
    return limiter.limiter


def login_username_key() -> str:
    """Return the throttling key of the account a sign-in names.

    The account is resolved first, so failures by username and by phone number count
    together; a name that matches no account is throttled by its text.
    """
    from .extensions import state
    from .services.identity import find_login_user

    data = request.get_json(silent=True) or {}
    login = data.get("username") if isinstance(data, dict) else None
    login = str(login or "").strip()
    st = state()
    with st.sessions() as session:
        user = find_login_user(session, login, st.phone_key) if login else None
    return f"account:user:{user.id}" if user else f"account:name:{login.lower()}"
