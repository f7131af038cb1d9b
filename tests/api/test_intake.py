"""Reporting a case on PostgreSQL's two-statement path writes what the one-by-one path
writes (gridapi.services.intake), and a report that fails leaves nothing behind."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from gridapi.resources.cases import REPORT_DEFAULTS
from gridapi.services import idempotency, intake

from .test_cases import center, report_body
from .test_connection_loss import spy_on_borrowing


def _rows(session: Any, sql: str) -> list[dict[str, Any]]:
    session.rollback()  # a fresh snapshot
    return [dict(r._mapping) for r in session.execute(text(sql))]


def _without(row: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in names}


def _body(i: int) -> dict[str, Any]:
    lon, lat = center(0)
    return report_body(
        lon,
        lat,
        crs="wgs84",
        accuracy_m=8,  # an integer: stored and answered as a float by both paths
        occurred_at="2026-11-28T09:30:00+08:00",  # answered in UTC by both paths
        urgent=True,
        parties=[{"name": "张三", "role": "reporter"}],
        client_id=str(uuid.UUID(int=i + 1)),  # the nil UUID (0) is no client_id
    )


@pytest.mark.engines("postgis")
def test_the_two_statement_report_writes_what_the_one_by_one_report_writes(
    client, world, session, monkeypatch
):
    answers, raw = [], []
    for i, two_statements in enumerate((True, False)):
        if not two_statements:
            monkeypatch.setattr(intake, "TWO_STATEMENT_DIALECTS", frozenset())
        r = client.post("/api/v1/cases", json=_body(i), headers={"Idempotency-Key": f"k{i}"})
        assert r.status_code == 201, r.get_json()
        answers.append(r.get_json())
        raw.append(r.data)

    cases = _rows(session, "SELECT *, ST_AsText(location) AS wkt FROM cases ORDER BY id")
    assert len(cases) == 2
    assert cases[0]["number"].endswith("-0001") and cases[1]["number"].endswith("-0002")
    differ = ("id", "number", "location", "client_id", "reported_at", "updated_at")
    differ += ("accept_due_at",)  # a few microseconds apart: computed from each report's time
    assert _without(cases[0], *differ) == _without(cases[1], *differ)

    events = _rows(session, "SELECT * FROM case_events ORDER BY id")
    assert [e["case_id"] for e in events] == [cases[0]["id"], cases[1]["id"]]
    assert _without(events[0], "id", "case_id", "at") == _without(events[1], "id", "case_id", "at")
    assert [e["at"] for e in events] == [c["reported_at"] for c in cases]

    audit = _rows(session, "SELECT * FROM audit_log WHERE action = 'case.report' ORDER BY id")
    assert [a["object_id"] for a in audit] == [str(c["id"]) for c in cases]
    assert [a["summary"] for a in audit] == [
        {"number": c["number"], "grid": c["grid_code"]} for c in cases
    ]
    same = ("id", "at", "object_id", "summary", "request_id")
    assert _without(audit[0], *same) == _without(audit[1], *same)
    assert audit[0]["actor_id"] and audit[0]["region_code"] == cases[0]["region_code"]

    keys = _rows(session, "SELECT * FROM idempotency_keys ORDER BY id")
    assert [(k["key"], k["resource_id"]) for k in keys] == [
        ("key:k0", cases[0]["id"]),
        (f"client_id:{uuid.UUID(int=1)}", cases[0]["id"]),
        ("key:k1", cases[1]["id"]),
        (f"client_id:{uuid.UUID(int=2)}", cases[1]["id"]),
    ]
    assert [orjson.loads(k["response"]) for k in keys[::2]] == answers

    # The answers agree but for what is the case's own: id, number, times, the phone's id.
    own = ("id", "number", "client_id", "reported_at", "updated_at", "deadlines")
    own += ("possible_duplicates",)  # checked below
    assert _without(answers[0], *own) == _without(answers[1], *own)
    assert answers[0]["occurred_at"] == "2026-11-28T01:30:00+00:00"
    assert all(b'"accuracy_m":8.0,' in data for data in raw)
    # The second report is a possible duplicate of the first, found by both paths' search.
    assert answers[0]["possible_duplicates"] == []
    assert [d["id"] for d in answers[1]["possible_duplicates"]] == [cases[0]["id"]]

    # One change each for phones (sync) and webhooks (outbox), as for any case.
    ids = sorted(c["id"] for c in cases)
    synced = _rows(session, "SELECT entity_id FROM sync_log WHERE entity = 'case' ORDER BY id")
    assert [s["entity_id"] for s in synced] == ids
    outbox = _rows(session, "SELECT case_id FROM webhook_events ORDER BY id")
    assert [e["case_id"] for e in outbox] == ids


def test_a_report_the_database_refuses_leaves_nothing_behind(client, world, session):
    """The number is taken, the case is refused (its number exists): no case, timeline,
    audit or key row, and the counter is as it was; a retry then succeeds."""
    first = client.post("/api/v1/cases", json=_body(0), headers={"Idempotency-Key": "a"})
    assert first.status_code == 201
    session.execute(text("UPDATE case_counters SET last = 0"))
    session.commit()

    refused = client.post("/api/v1/cases", json=_body(1), headers={"Idempotency-Key": "b"})
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["message"] == "The change conflicts with existing data."
    counts = {
        table: _rows(session, f"SELECT count(*) AS n FROM {table}")[0]["n"]
        for table in ("cases", "case_events", "idempotency_keys")
    }
    assert counts == {"cases": 1, "case_events": 1, "idempotency_keys": 2}
    audit = _rows(session, "SELECT count(*) AS n FROM audit_log WHERE action = 'case.report'")
    assert audit[0]["n"] == 1
    assert _rows(session, "SELECT last FROM case_counters") == [{"last": 0}]

    session.execute(text("UPDATE case_counters SET last = 1"))
    session.commit()
    again = client.post("/api/v1/cases", json=_body(1), headers={"Idempotency-Key": "b"})
    assert again.status_code == 201, again.get_json()
    assert again.get_json()["number"].endswith("-0002")


@pytest.mark.engines("postgis")
@pytest.mark.parametrize("meanwhile", ["answered", "answered another body", "in flight"])
def test_the_same_key_used_while_a_report_is_being_rendered(
    client, world, session, engine, monkeypatch, meanwhile
):
    """A key is claimed by the statement that writes: a request with the same key that is
    answered, or still in flight, while this one renders its answer decides this one's
    (the stored answer replayed, 422, or 409), and this one writes nothing."""
    probe = client.post("/api/v1/cases", json=_body(0), headers={"Idempotency-Key": "probe"})
    assert probe.status_code == 201, probe.get_json()
    caller = _rows(session, "SELECT caller FROM idempotency_keys")[0]["caller"]
    body = _body(1)
    digest = idempotency.request_hash("POST", "/api/v1/cases", body, defaults=REPORT_DEFAULTS)
    if meanwhile == "answered another body":
        digest = idempotency.request_hash(
            "POST", "/api/v1/cases", _body(2), defaults=REPORT_DEFAULTS
        )
    other = engine.connect()
    real = intake.svc.new_case_row

    def render_while_another_goes(*args: Any, **kwargs: Any) -> Any:
        if meanwhile == "in flight":  # holds the key until the test ends
            taken = other.execute(
                text("SELECT pg_try_advisory_xact_lock(:n)"),
                {"n": idempotency.lock_id(caller, "key:k")},
            )
            assert taken.scalar() is True
        else:
            other.execute(
                text(
                    "INSERT INTO idempotency_keys (caller, key, request_hash, method, path,"
                    " status_code, response, resource_id, created_at, expires_at) VALUES"
                    " (:caller, 'key:k', :hash, 'POST', '/api/v1/cases', 201,"
                    " '{\"first\": true}', NULL, now(), now() + interval '7 days')"
                ),
                {"caller": caller, "hash": digest.value},
            )
            other.commit()
        return real(*args, **kwargs)

    monkeypatch.setattr(intake.svc, "new_case_row", render_while_another_goes)
    try:
        r = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "k"})
    finally:
        other.rollback()
        other.close()
        monkeypatch.undo()

    if meanwhile == "answered":
        assert r.status_code == 201
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.get_json() == {"first": True}
    elif meanwhile == "answered another body":
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    else:
        assert r.status_code == 409, r.get_json()
        assert r.headers["Retry-After"] == "1"
    # Nothing of this request was written: one case, one event, one audit row, the
    # counter at one, and only the probe's keys (and the other request's, if it stored one).
    assert _rows(session, "SELECT count(*) AS n FROM cases")[0]["n"] == 1
    assert _rows(session, "SELECT count(*) AS n FROM case_events")[0]["n"] == 1
    audit = _rows(session, "SELECT count(*) AS n FROM audit_log WHERE action = 'case.report'")
    assert audit[0]["n"] == 1
    assert _rows(session, "SELECT last FROM case_counters") == [{"last": 1}]
    keys = _rows(session, "SELECT key FROM idempotency_keys ORDER BY id")
    expected = ["key:probe", f"client_id:{uuid.UUID(int=1)}"]
    assert [k["key"] for k in keys] == expected + ([] if meanwhile == "in flight" else ["key:k"])
    if meanwhile == "in flight":  # the lock is gone: the retry reports the case
        again = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "k"})
        assert again.status_code == 201, again.get_json()
        assert again.get_json()["number"].endswith("-0002")


@pytest.mark.engines("postgis")
def test_a_report_that_commits_by_itself_gives_its_connection_back_as_lent(
    client, world, session, monkeypatch
):
    """A report the request's session has not begun runs on a pooled connection in
    autocommit mode, outside the session: the pool gets the connection back out of
    autocommit, so the next request that takes it writes in one transaction again."""
    borrowed = spy_on_borrowing(monkeypatch)
    for i in range(3):
        r = client.post("/api/v1/cases", json=_body(i), headers={"Idempotency-Key": f"p{i}"})
        assert r.status_code == 201, r.get_json()
    assert borrowed, "no report ran outside the session"
    # Each report's driver connection, as given back to the pool.
    assert [report.raw.autocommit for report in borrowed] == [False] * len(borrowed)
    assert _rows(session, "SELECT count(*) AS n FROM cases")[0]["n"] == 3
    # A request that fails after writing leaves nothing on the connections the reports used.
    session.execute(text("UPDATE case_counters SET last = 0"))
    session.commit()
    refused = client.post("/api/v1/cases", json=_body(9), headers={"Idempotency-Key": "x"})
    assert refused.status_code == 409, refused.get_json()
    assert _rows(session, "SELECT count(*) AS n FROM case_events")[0]["n"] == 3
    assert _rows(session, "SELECT last FROM case_counters") == [{"last": 0}]


def test_a_category_changed_between_reports_is_read_as_it_is_now(client, world, session):
    """Every report reads its category as it is at that moment, whoever changed it and
    however: a worker that keeps the category rows it read (PostgreSQL) reads one again
    when it is no longer the same."""
    point = center(0)
    first = client.post("/api/v1/cases", json=report_body(*point))
    second = client.post("/api/v1/cases", json=report_body(*point))
    assert first.status_code == second.status_code == 201, second.get_json()
    assert [d["id"] for d in second.get_json()["possible_duplicates"]] == [first.get_json()["id"]]

    # Changed behind the API's back: no updated_at, no event, nothing but the row.
    session.execute(
        text(
            "UPDATE categories SET duplicate_radius_m = 0, accept_limit = 3,"
            " accept_unit = 'days' WHERE code = '0101'"
        )
    )
    session.commit()
    third = client.post("/api/v1/cases", json=report_body(*point))
    assert third.status_code == 201, third.get_json()
    assert third.get_json()["possible_duplicates"] == []
    accept = [datetime.fromisoformat(r.get_json()["deadlines"]["accept"]) for r in (second, third)]
    assert accept[1] - accept[0] > timedelta(days=1)  # 3 working days, not 2 working hours

    session.execute(text("UPDATE categories SET is_active = false WHERE code = '0101'"))
    session.commit()
    fourth = client.post("/api/v1/cases", json=report_body(*point))
    assert fourth.status_code == 422, fourth.get_json()
    assert fourth.get_json()["errors"] == {"json": {"category": ["no active category 0101"]}}
    assert _rows(session, "SELECT count(*) AS n FROM cases")[0]["n"] == 3


@pytest.mark.engines("postgis")
def test_stored_answers_are_looked_up_through_the_unique_index_however_the_table_grew(
    engine,
):
    """``gridapi_stored_answers`` keeps its plan for the connection's life: made while the
    keys table was empty, it must still read a caller's keys by both columns of the unique
    index once the caller has thousands of them (the plan that filtered the keys out of the
    caller's made a report cost 25 ms of PostgreSQL's CPU within a minute)."""
    stored = text("SELECT gridapi_stored_answers(:caller, CAST(:keys AS text[]))")
    with engine.connect() as conn:
        for _ in range(10):  # planned now, on an empty table
            assert conn.execute(stored, {"caller": "client:1", "keys": "{a,b}"}).scalar() is None
        conn.execute(
            text(
                "INSERT INTO idempotency_keys (caller, key, request_hash, method, path,"
                " status_code, response, resource_id, created_at, expires_at)"
                " SELECT 'client:1', 'key:' || i, 'h' || i, 'POST', '/api/v1/cases', 201,"
                " '{\"n\": ' || i || '}', i, now(), now() + interval '7 days'"
                " FROM generate_series(1, 5000) AS i"
            )
        )
        conn.commit()
        index = "'uq_idempotency_keys_caller_key'::regclass"
        read = text(
            f"SELECT pg_stat_get_xact_blocks_fetched({index})"
            f" + pg_stat_get_xact_blocks_hit({index})"
        )
        before = conn.execute(read).scalar_one()
        found = conn.execute(stored, {"caller": "client:1", "keys": "{key:4000,x,key:17}"}).scalar()
        blocks = conn.execute(read).scalar_one() - before
        conn.rollback()
    # Stored in the order of their rows, whatever the order of the keys asked for.
    assert found == [
        ["key:17", "h17", 201, '{"n": 17}', 17],
        ["key:4000", "h4000", 201, '{"n": 4000}', 4000],
    ]
    # Three keys, each a descent of the index (a root and a leaf, or a few more): not the
    # caller's 5,000 entries (40-odd leaf pages).
    assert blocks <= 12, blocks
