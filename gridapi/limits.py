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
    """Return the throttling key of the account a sign-in names."""
    data = request.get_json(silent=True) or {}
    username = data.get("username") if isinstance(data, dict) else None
    return f"account:{str(username or '').strip().lower()}"
