"""With GRIDAPI_REDIS_URL, sign-in throttling and per-key limits live in Redis (shared)."""

from __future__ import annotations

import socket
import uuid

import pytest

from gridapi import create_app
from gridapi.services.identity import create_client

from ..factories import PASSWORD, Accounts

REDIS_URL = "redis://127.0.0.1:6379/15"


def _redis_up() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")


def test_limits_are_shared_between_processes_through_redis(settings):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # database 15 is the tests' own
    shared = settings.__class__(
        **{**settings.__dict__, "redis_url": REDIS_URL, "login_rate_account": "3 per 15 minutes"}
    )
    first, second = create_app(shared), create_app(shared)
    username = f"r{uuid.uuid4().hex[:10]}"
    Accounts(first).create(username, "admin")
    for _ in range(3):
        r = first.test_client().post(
            "/api/v1/auth/token", json={"username": username, "password": "wrong"}
        )
        assert r.status_code == 401
    # Another process sees the same counter: the account is throttled there too.
    r = second.test_client().post(
        "/api/v1/auth/token", json={"username": username, "password": PASSWORD}
    )
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1

    with first.extensions["gridapi"].sessions.begin() as session:
        _, key = create_client(
            session,
            name="redis",
            scopes=["grids:read"],
            scope_region=None,
            rate_limit="2 per minute",
            created_by=None,
        )
    statuses = [
        app.test_client().get("/api/v1/grids", headers={"X-API-Key": key}).status_code
        for app in (first, second, first)
    ]
    assert statuses == [200, 200, 429]
    for app in (first, second):
        app.extensions["gridapi"].engine.dispose()
