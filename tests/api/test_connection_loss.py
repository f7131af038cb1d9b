"""A pooled PostgreSQL connection that the server dropped: a request in flight on it gets
503 with Retry-After and nothing half-written, the pool replaces it by itself, and one that
sat idle is tested and replaced before use (gridapi.db)."""

from __future__ import annotations

import psycopg
import pytest

from gridapi import db
from gridapi.services import intake

from .test_cases import center, report_body

pytestmark = pytest.mark.engines("postgis")


@pytest.fixture
def admin(settings):  # type: ignore[no-untyped-def]
    """A connection of the test's own, outside the application's pool."""
    url = settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        yield conn


def drop_pooled_connections(admin) -> int:  # type: ignore[no-untyped-def]
    """Terminate every other session of the database (the application's pool)."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    return len(rows)


def spy_on_borrowing(monkeypatch) -> list[object]:  # type: ignore[no-untyped-def]
    """Record each report that borrows a connection of the pool outside the session."""
    borrowed: list[object] = []
    real = intake._TwoStatements._borrow

    def borrow(self):  # type: ignore[no-untyped-def]
        borrowed.append(self)
        real(self)

    monkeypatch.setattr(intake._TwoStatements, "_borrow", borrow)
    return borrowed


def cases(admin) -> int:  # type: ignore[no-untyped-def]
    return admin.execute("SELECT count(*) FROM cases").fetchone()[0]


def unavailable_then_served(client, admin, body, key, then=None) -> None:  # type: ignore[no-untyped-def]
    """Report ``body``: 503 with Retry-After and nothing written; after ``then()`` (the
    database back), the retry with the same key is served as a new report."""
    before = cases(admin)
    down = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": key})
    assert down.status_code == 503, down.get_json()
    assert down.headers["Retry-After"]
    assert down.get_json()["code"] == 503
    assert cases(admin) == before
    if then is not None:
        then()
    again = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201, again.get_json()
    assert "Idempotent-Replayed" not in again.headers
    assert cases(admin) == before + 1


def test_a_report_on_a_dropped_connection_is_503_and_the_retry_is_served(
    client, world, admin, monkeypatch
):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # no test before use
    body = report_body(*center(0), client_id="0b0e5a7c-1d2e-4f00-8a00-000000000001")
    assert client.get("/api/v1/categories").status_code == 200  # a pooled connection
    assert drop_pooled_connections(admin) >= 1
    unavailable_then_served(client, admin, body, "r1")


def test_an_idle_connection_the_server_dropped_is_replaced_before_use(
    client, world, admin, monkeypatch
):
    assert client.get("/api/v1/categories").status_code == 200
    assert drop_pooled_connections(admin) >= 1
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection is idle
    assert client.get("/api/v1/categories").status_code == 200
    r = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert r.status_code == 201, r.get_json()
    assert cases(admin) == 1


def test_a_report_outside_the_session_on_a_dropped_connection_is_503_and_the_retry_is_served(
    app, client, world, admin, monkeypatch
):
    """The same for a report that commits by itself on a connection of the pool (the
    calendar already read, the routing index not checked: the session is not begun)."""
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)
    first = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert first.status_code == 201, first.get_json()
    monkeypatch.setattr(app.extensions["gridapi"].routing, "refresh_seconds", 3600.0)
    borrowed = spy_on_borrowing(monkeypatch)
    assert drop_pooled_connections(admin) >= 1
    body = report_body(*center(0), client_id="0b0e5a7c-1d2e-4f00-8a00-000000000002")
    unavailable_then_served(client, admin, body, "r2")
    assert borrowed, "the report did not run outside the session"


def test_a_report_outside_the_session_while_the_database_refuses_connections_is_503(
    app, client, world, admin, engine, monkeypatch
):
    """The pool has to connect and the database refuses: 503 with Retry-After (the pool
    raises the driver's own error there, not SQLAlchemy's), nothing written, and the retry
    is served once the database answers again. Bench/crash saw 500s there."""
    first = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert first.status_code == 201, first.get_json()
    # The routing index is not checked against the database during the test: the report's
    # own connection is the first the request asks for.
    monkeypatch.setattr(app.extensions["gridapi"].routing, "refresh_seconds", 3600.0)
    borrowed = spy_on_borrowing(monkeypatch)

    def refuse(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise psycopg.OperationalError("connection refused (the test's database is down)")

    engine.pool.dispose()  # no pooled connection left: the next report must connect
    monkeypatch.setattr(engine.dialect, "connect", refuse)
    body = report_body(*center(0), client_id="0b0e5a7c-1d2e-4f00-8a00-000000000003")
    unavailable_then_served(client, admin, body, "r3", then=monkeypatch.undo)
    assert borrowed, "the report did not run outside the session"
