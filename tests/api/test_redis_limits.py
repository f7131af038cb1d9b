"""With GRIDAPI_REDIS_URL, sign-in throttling and per-key limits live in Redis (shared);
when it cannot be reached, what it limits answers 503, never 500 and never unlimited."""

from __future__ import annotations

import socket
import time
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


needs_redis = pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")


@needs_redis
def test_limits_are_shared_between_processes_through_redis(settings):
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()  # database 15 is the tests' own
    shared = settings.__class__(
        **{
            **settings.__dict__,
            "redis_url": REDIS_URL,
            "login_rate_account_address": "3 per 15 minutes",
        }
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
    answers = [
        app.test_client().get("/api/v1/grids", headers={"X-API-Key": key})
        for app in (first, second, first)
    ]
    assert [r.status_code for r in answers] == [200, 200, 429]
    # The window counted in Redis, as every process sees it: in the X-RateLimit-* headers.
    assert [r.headers["X-RateLimit-Remaining"] for r in answers] == ["1", "0", "0"]
    assert {r.headers["X-RateLimit-Limit"] for r in answers} == {"2"}
    assert 1 <= int(answers[2].headers["Retry-After"]) <= 60
    assert int(answers[2].headers["X-RateLimit-Reset"]) >= int(time.time())
    for app in (first, second):
        app.extensions["gridapi"].engine.dispose()


@needs_redis
def test_redis_keys_hold_no_client_address(settings):
    """The sign-in limit by address kept the address in its Redis key; a keyed hash of it
    now, one per address: the limit still holds for that address and no other."""
    import redis

    from gridapi.security.fields import blind_index

    shared = settings.__class__(
        **{**settings.__dict__, "redis_url": REDIS_URL, "login_rate_address": "2 per 15 minutes"}
    )
    app = create_app(shared)
    # A documentation address of its own per run (database 15 is shared by the test runs).
    there = f"2001:db8::{uuid.uuid4().hex[:4]}"
    elsewhere = f"2001:db8:1::{uuid.uuid4().hex[:4]}"

    def sign_in(address: str, n: int) -> int:
        return (
            app.test_client()
            .post(
                "/api/v1/auth/token",
                json={"username": f"guess{n}", "password": "wrong"},
                environ_base={"REMOTE_ADDR": address},
            )
            .status_code
        )

    try:
        assert [sign_in(there, n) for n in range(3)] == [401, 401, 429]
        assert sign_in(elsewhere, 9) == 401
        keys = [k.decode() for k in redis.Redis.from_url(REDIS_URL).scan_iter("*address:*")]
        assert not [k for k in keys if there in k or elsewhere in k]
        hashed = blind_index("address", there, app.extensions["gridapi"].phone_key)
        assert [k for k in keys if f"address:{hashed}" in k]
    finally:
        app.extensions["gridapi"].engine.dispose()


def _nothing_listening() -> str:
    """Return a Redis URL at a port of this machine where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"redis://:a-password@127.0.0.1:{port}/0"


def _unavailable(response) -> None:  # type: ignore[no-untyped-def]
    body = response.get_json()
    assert response.status_code == 503, body
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 503
    assert "rate-limit storage" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1


def test_an_unreachable_redis_answers_503_wherever_limits_are_counted(settings):
    """GRIDAPI_REDIS_URL pointing at nothing: serve started, /api/v1/health said ok, and every
    sign-in answered 500 (redis ConnectionError). What is limited now answers 503 with
    Retry-After in the one error body, health (readiness) fails, liveness does not."""
    app = create_app(settings.__class__(**{**settings.__dict__, "redis_url": _nothing_listening()}))
    try:
        accounts = Accounts(app)
        admin = accounts.client("admin")
        anonymous = app.test_client()
        _unavailable(
            anonymous.post("/api/v1/auth/token", json={"username": "admin", "password": PASSWORD})
        )
        _unavailable(admin.get("/api/v1/persons", query_string={"id_number": "320508199001011232"}))
        _unavailable(
            admin.post(
                "/api/v1/auth/password",
                json={"current_password": PASSWORD, "new_password": "Another-Passw0rd-9"},
            )
        )
        with app.extensions["gridapi"].sessions.begin() as session:
            _, key = create_client(
                session,
                name="limited",
                scopes=["grids:read"],
                scope_region=None,
                rate_limit="100 per minute",
                created_by=None,
            )
        _unavailable(anonymous.get("/api/v1/grids", headers={"X-API-Key": key}))
        assert admin.get("/api/v1/me").status_code == 200  # nothing counted: answered
        assert admin.get("/api/v1/persons", query_string={"name": "王"}).status_code == 200
        _unavailable(anonymous.get("/api/v1/health"))
        assert anonymous.get("/api/v1/health/live").status_code == 200
    finally:
        app.extensions["gridapi"].engine.dispose()


def test_an_unreachable_redis_answers_503_on_open311_too(settings):
    """An Open311 key is counted like any other: the storage's error reached the Open311
    catch-all, which answered it as an unexpected 500 (and logged a stack trace)."""
    import xml.etree.ElementTree as ET

    app = create_app(settings.__class__(**{**settings.__dict__, "redis_url": _nothing_listening()}))
    try:
        with app.extensions["gridapi"].sessions.begin() as session:
            _, key = create_client(
                session,
                name="hotline",
                scopes=["cases:read", "cases:write"],
                scope_region=None,
                rate_limit="100 per minute",
                created_by=None,
            )
        anonymous = app.test_client()
        r = anonymous.get("/open311/v2/requests.json", query_string={"api_key": key})
        assert r.status_code == 503, r.get_data(as_text=True)
        [error] = r.get_json()
        assert error["code"] == 503 and "rate-limit storage" in error["description"]
        assert int(r.headers["Retry-After"]) >= 1
        r = anonymous.post("/open311/v2/requests.xml", data={"api_key": key})
        assert r.status_code == 503
        assert ET.fromstring(r.data).findtext("error/code") == "503"
        assert int(r.headers["Retry-After"]) >= 1
    finally:
        app.extensions["gridapi"].engine.dispose()


def test_a_count_that_fails_after_the_answer_is_made_answers_503(settings):
    """flask-limiter counts a failed sign-in after the view, in an after_request hook: an
    error of the storage there reached Flask's 500 path, and answers 503 as well."""
    from limits.errors import StorageError

    app = create_app(settings.__class__(**{**settings.__dict__, "redis_url": _nothing_listening()}))

    @app.after_request
    def _count(response):  # type: ignore[no-untyped-def]
        raise StorageError(ConnectionError("Connection refused"))

    try:
        _unavailable(app.test_client().get("/api/v1/health/live"))
    finally:
        app.extensions["gridapi"].engine.dispose()


def test_health_says_where_limits_are_counted(app):
    assert app.test_client().get("/api/v1/health").get_json()["rate_limits"] == "database"


@needs_redis
def test_health_with_redis_reachable_is_ready(settings):
    app = create_app(
        settings.__class__(**{**settings.__dict__, "redis_url": "redis://127.0.0.1:6379/11"})
    )
    try:
        r = app.test_client().get("/api/v1/health")
        assert r.status_code == 200 and r.get_json()["rate_limits"] == "redis"
    finally:
        app.extensions["gridapi"].engine.dispose()


def test_serve_warns_when_redis_cannot_be_reached():
    from gridapi.limits import storage_warning

    url = _nothing_listening()
    warning = storage_warning(url)
    assert warning is not None and "cannot be reached" in warning and "503" in warning
    assert "a-password" not in warning and url.replace("a-password", "***") in warning
    assert storage_warning("") is None
    if _redis_up():
        assert storage_warning("redis://127.0.0.1:6379/11") is None
