"""Without GRIDAPI_REDIS_URL the sign-in and lookup limits are counted in the database, so
every worker process (every application on the database) spends the same allowance."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sqlalchemy import event, func, select

from gridapi import create_app
from gridapi.models import RateLimitCounter
from gridapi.security.fields import blind_index

from ..factories import PASSWORD, Accounts
from .test_cases import center, report_body

ID_NUMBER = "320508199001011232"


def _worker(settings: Any) -> Any:
    """A new application on the same database, as another gunicorn worker is. (flask-
    limiter's limiter is one per process: it counts in what the newest application set.)"""
    app = create_app(settings)
    app.config["TESTING"] = True
    return app


def _counters(app: Any) -> int:
    with app.extensions["gridapi"].engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(RateLimitCounter))


def test_exact_lookups_are_counted_across_workers(settings):
    """Five workers let a user make 5 × GRIDAPI_PERSON_LOOKUP_RATE exact ID lookups: each
    counted them in its own memory."""
    shared = replace(settings, person_lookup_rate="3 per hour")
    first = _worker(shared)
    admin = Accounts(first).client("admin")
    lookup = {"id_number": ID_NUMBER}
    for _ in range(2):
        assert admin.get("/api/v1/persons", query_string=lookup).status_code == 200
    second = _worker(shared)
    other = Accounts(second).client("admin")
    assert other.get("/api/v1/persons", query_string=lookup).status_code == 200
    r = other.get("/api/v1/persons", query_string=lookup)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert admin.get("/api/v1/persons", query_string=lookup).status_code == 429
    for app in (first, second):
        app.extensions["gridapi"].engine.dispose()


def test_sign_in_failures_are_counted_across_workers(settings):
    """The lockout of an account (and of the name typed) spent per worker: 5 workers gave
    25 password guesses a quarter of an hour instead of 5."""
    shared = replace(settings, login_rate_account_address="3 per 15 minutes")
    first = _worker(shared)
    Accounts(first).create("alice", "admin")
    wrong = {"username": "alice", "password": "wrong"}
    for _ in range(2):
        assert first.test_client().post("/api/v1/auth/token", json=wrong).status_code == 401
    second = _worker(shared)
    assert second.test_client().post("/api/v1/auth/token", json=wrong).status_code == 401
    right = {"username": "alice", "password": PASSWORD}
    r = second.test_client().post("/api/v1/auth/token", json=right)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert _counters(second) >= 1
    for app in (first, second):
        app.extensions["gridapi"].engine.dispose()


def test_a_report_costs_no_round_trip_for_the_limits(client, world, app):
    """The limits counted in the database are the sensitive ones: filing a report (the
    busiest write) reads and writes no counter."""
    statements: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = app.extensions["gridapi"].engine
    event.listen(engine, "before_cursor_execute", seen)
    try:
        r = client.post("/api/v1/cases", json=report_body(*center(0)))
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert r.status_code == 201, r.get_json()
    assert statements and not [s for s in statements if "rate_limit_counters" in s]


def test_the_counters_hold_no_client_address(settings):
    """The sign-in limit by address kept the address itself in the counter's key: the
    table held, for a window, who had tried to sign in from where. The key is a keyed hash
    now, one per address, so the limit still holds for that address and no other."""
    app = _worker(replace(settings, login_rate_address="3 per 15 minutes"))
    there, elsewhere = "198.51.100.23", "198.51.100.24"

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

    assert [sign_in(there, n) for n in range(4)] == [401, 401, 401, 429]
    assert sign_in(elsewhere, 9) == 401
    with app.extensions["gridapi"].engine.connect() as conn:
        keys = list(conn.scalars(select(RateLimitCounter.key)))
    assert keys and not [k for k in keys if there in k or elsewhere in k]
    hashed = blind_index("address", there, app.extensions["gridapi"].phone_key)
    assert [k for k in keys if f"address:{hashed}" in k]
    app.extensions["gridapi"].engine.dispose()
