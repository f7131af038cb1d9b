"""Retrying a case report: an Idempotency-Key or the phone's client_id gets the first answer
back and never a second case, also when the retries arrive all at once."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from .test_case_workflow import race
from .test_cases import center, report_body


def post(client: Any, body: dict[str, Any], key: str | None = None) -> Any:
    headers = {} if key is None else {"Idempotency-Key": key}
    return client.post("/api/v1/cases", json=body, headers=headers)


def count(session: Any, table: str) -> int:
    session.rollback()  # a fresh snapshot: the requests committed on connections of their own
    return session.execute(text(f"SELECT count(*) FROM {table}")).scalar()


def counts(session: Any) -> tuple[int, int, int]:
    """Return how many cases, timeline rows and idempotency keys there are."""
    return (
        count(session, "cases"),
        count(session, "case_events"),
        count(session, "idempotency_keys"),
    )


def test_a_retry_with_the_same_key_gets_the_same_answer(client, world, session):
    body = report_body(*center(0))
    first = post(client, body, "report-1")
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, body, "report-1")
    assert again.status_code == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data  # byte for byte
    assert counts(session) == (1, 1, 1)
    audit = session.execute(
        text("SELECT count(*) FROM audit_log WHERE action = 'case.report'")
    ).scalar()
    assert audit == 1


def test_a_replay_carries_the_etag_of_the_answer_it_repeats(client, world):
    """A phone whose first answer was lost gets it again, with the ETag to send as If-Match
    with its next step: the replay had none (an extra GET on a bad network)."""
    body = report_body(*center(0))
    first = post(client, body, "report-etag")
    case_id = first.get_json()["id"]
    again = post(client, body, "report-etag")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["ETag"] == first.headers["ETag"] == f'"{case_id}-1"'
    step = client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": "accept"},
        headers={"If-Match": again.headers["ETag"]},
    )
    assert step.status_code == 200, step.get_json()
    # replayed after the case moved on: the tag of the answer repeated, now stale (412)
    late = post(client, body, "report-etag")
    assert late.headers["ETag"] == f'"{case_id}-1"' and late.data == first.data
    stale = client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": "file"},
        headers={"If-Match": late.headers["ETag"]},
    )
    assert stale.status_code == 412


def test_a_client_id_replayed_after_its_answer_expired_gets_the_case(client, world, session):
    """A phone replaying a queue older than the stored answers: the case as it is now (it got
    a bare 409 "conflicts with existing data", which it could not tell from "retry")."""
    cid = str(uuid.uuid4())
    body = report_body(*center(0), client_id=cid)
    first = post(client, body, "old-key")
    case_id = first.get_json()["id"]
    client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": "accept"},
        headers={"If-Match": first.headers["ETag"]},
    )
    session.execute(text("DELETE FROM idempotency_keys"))  # as the worker's purge does
    session.commit()
    for key in ("old-key", None):
        again = post(client, body, key)
        assert again.status_code == 200, again.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        shown = again.get_json()
        assert (shown["id"], shown["status"], shown["client_id"]) == (case_id, "accepted", cid)
        assert again.headers["ETag"] == f'"{case_id}-2"'
    assert count(session, "cases") == 1


def test_a_client_id_in_upper_case_is_the_same_uuid(client, world, session):
    """iOS writes UUIDs in upper case; the answer gives them back in lower case, and a replay
    may send either: the same request (it was 422 "used for a different request")."""
    cid = str(uuid.uuid4()).upper()
    first = post(client, report_body(*center(0), client_id=cid))
    assert first.status_code == 201 and first.get_json()["client_id"] == cid.lower()
    again = post(client, report_body(*center(0), client_id=cid.lower()))
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert count(session, "cases") == 1


def test_quoted_and_bare_keys_are_the_same_key(client, world, session):
    body = report_body(*center(0))
    first = post(client, body, "abc-123")
    quoted = post(client, body, '"abc-123"')
    assert (first.status_code, quoted.status_code) == (201, 201)
    assert quoted.headers["Idempotent-Replayed"] == "true" and quoted.data == first.data
    spaced = post(client, body, '  "abc-123" ')
    assert spaced.data == first.data
    assert counts(session) == (1, 1, 1)


@pytest.mark.parametrize("key", ["", '""', "x" * 201, "tab\there"])
def test_an_invalid_key_is_422_and_creates_nothing(client, world, session, key):
    r = post(client, report_body(*center(0)), key)
    assert r.status_code == 422, r.get_json()
    assert "Idempotency-Key" in r.get_json()["errors"]["headers"]
    assert counts(session) == (0, 0, 0)


@pytest.mark.parametrize(
    "lines",
    [["k-1", "k-2"], ['"k-1"', '"k-2"'], ["k-1,k-2"], ['"k-1", "k-2"']],
    ids=["two-bare", "two-quoted", "bare-comma", "quoted-list"],
)
def test_several_keys_in_one_request_are_422_and_create_nothing(client, world, session, lines):
    """Two Idempotency-Key lines reach the app joined by a comma: stored as one new key,
    a retry sending either line alone made a second case."""
    r = client.post(
        "/api/v1/cases",
        json=report_body(*center(0)),
        headers=[("Idempotency-Key", line) for line in lines],
    )
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {
        "headers": {
            "Idempotency-Key": [
                "one key: several header lines, or a comma in a bare key (quote it)"
            ]
        }
    }
    assert counts(session) == (0, 0, 0)
    # a comma inside a quoted key is part of that one key
    body = report_body(*center(0))
    first, again = post(client, body, '"k-1,k-2"'), post(client, body, '"k-1,k-2"')
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert counts(session) == (1, 1, 1)


def test_the_same_key_with_another_body_is_422_and_creates_nothing(client, world, session):
    assert post(client, report_body(*center(0)), "k").status_code == 201
    other = post(client, report_body(*center(1)), "k")
    assert other.status_code == 422, other.get_json()
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert "Idempotent-Replayed" not in other.headers
    assert counts(session) == (1, 1, 1)


REENCODED = [
    # an encoder that writes every number of a float field with a point
    ({"accuracy_m": 12}, {"accuracy_m": 12.0}),
    # an app that writes what it left out before (the documented defaults)
    (
        {},
        {
            "crs": "wgs84",
            "urgent": False,
            "severity": "general",
            "parties": [],
            "attributes": {},
        },
    ),
    # and the other way round: the first sent them, the retry leaves them out
    ({"crs": "wgs84", "parties": [], "urgent": False}, {}),
    # text composed or decomposed (NFC, NFD): the same characters
    ({"address": "Café 1 号"}, {"address": "Cafe\u0301 1 号"}),
    # null for a member that may be null and was left out (an encoder that writes nulls)
    ({}, {"occurred_at": None, "client_id": None}),
    ({"occurred_at": None}, {}),
    # one instant in another offset, or with its fraction written (JavaScript's toISOString)
    (
        {"occurred_at": "2026-12-01T10:00:00+08:00"},
        {"occurred_at": "2026-12-01T02:00:00.000Z"},
    ),
]


@pytest.mark.parametrize("first_how, retry_how", REENCODED)
@pytest.mark.parametrize("by", ["key", "client_id"])
def test_a_retry_written_otherwise_is_the_same_request(
    client, world, session, first_how, retry_how, by
):
    """The same report in other JSON (12.0 for 12, a default written out or left out) is the
    same request: a phone that rebuilds its queue from its database gets its answer, not a
    422 "reused" that leaves the report unconfirmed for ever."""
    base = report_body(*center(0), accuracy_m=12)
    extra = {"client_id": str(uuid.uuid4())} if by == "client_id" else {}
    key = "re-encoded" if by == "key" else None
    first = post(client, {**base, **first_how, **extra}, key)
    assert first.status_code == 201, first.get_json()
    again = post(client, {**base, **retry_how, **extra}, key)
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    assert count(session, "cases") == 1 and count(session, "case_events") == 1


@pytest.mark.parametrize(
    "change",
    [{"accuracy_m": 12.5}, {"severity": "major"}, {"urgent": True}, {"crs": "gcj02"}],
    ids=["a number", "a default changed", "a flag set", "another crs"],
)
def test_a_retry_that_says_something_else_is_still_another_request(client, world, session, change):
    lon, lat = center(0)
    body = report_body(lon, lat, accuracy_m=12)
    assert post(client, body, "said").status_code == 201
    other = post(client, {**body, **change}, "said")
    assert other.status_code == 422, other.get_json()
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert counts(session) == (1, 1, 1)


def test_another_instant_is_another_request(client, world, session):
    body = report_body(*center(0), occurred_at="2026-12-01T10:00:00+08:00")
    assert post(client, body, "when").status_code == 201
    # the same wall-clock time in UTC is eight hours earlier: another report
    other = post(client, {**body, "occurred_at": "2026-12-01T10:00:00Z"}, "when")
    assert other.status_code == 422, other.get_json()
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert counts(session) == (1, 1, 1)


def stored_as(session: Any, key: str, body: Any) -> None:
    """Give the key's stored answer the hash a release before kept: of ``body``'s JSON,
    sorted, as that release hashed it."""
    as_then = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    before = hashlib.sha256(f"POST /api/v1/cases\n{as_then}".encode()).hexdigest()
    session.rollback()
    session.execute(
        text("UPDATE idempotency_keys SET request_hash = :h WHERE key = :k"),
        {"h": before, "k": f"key:{key}"},
    )
    session.commit()


def test_a_key_stored_before_nulls_and_instants_were_read_still_answers(client, world, session):
    """Keys stored before nulls and date-times were read by their meaning kept the hash of
    the body with its nulls and its date-time as written: its retry still replays."""
    from gridapi.resources.cases import REPORT_DEFAULTS
    from gridapi.services import idempotency

    body = report_body(
        *center(0), occurred_at="2026-12-01T10:00:00+08:00", client_id=None, urgent=False
    )
    first = post(client, body, "nulls-before")
    assert first.status_code == 201, first.get_json()
    kept = {k: v for k, v in REPORT_DEFAULTS.items() if v is not None}
    stored_as(session, "nulls-before", idempotency.canonical_body(body, kept))
    again = post(client, body, "nulls-before")
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert counts(session) == (1, 1, 1)


@pytest.mark.parametrize(
    "first_alt, retry_alt",
    [(None, 35.2), (35.2, None), (35.2, 41.0)],
    ids=["added", "left out", "another"],
)
@pytest.mark.parametrize("by", ["key", "client_id"])
def test_a_retry_that_differs_in_altitude_only_is_the_same_request(
    client, world, session, first_alt, retry_alt, by
):
    """The point is stored as [lon, lat]: an altitude (a third coordinate) is read and
    dropped. A retry whose phone added the altitude of a later fix, or left it out, got 422
    "reused" for a report that says the same thing, and the phone never learnt its case."""
    lon, lat = center(0)
    extra = {"client_id": str(uuid.uuid4())} if by == "client_id" else {}
    key = "altitude" if by == "key" else None

    def body(alt: float | None) -> dict[str, Any]:
        position = [lon, lat] if alt is None else [lon, lat, alt]
        return {**report_body(lon, lat), "location": {"type": "Point", "coordinates": position}}

    first = post(client, {**body(first_alt), **extra}, key)
    assert first.status_code == 201, first.get_json()
    again = post(client, {**body(retry_alt), **extra}, key)
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert count(session, "cases") == 1
    # Another point is another report.
    moved = {**report_body(*center(1)), **extra}
    assert post(client, moved, key).status_code == 422
    assert count(session, "cases") == 1


def test_a_key_stored_with_an_altitude_still_answers_its_retry(client, world, session):
    """Keys stored before altitudes were left out kept the hash of the body with its
    altitude: the same retry still replays."""
    from gridapi.resources.cases import REPORT_DEFAULTS, REPORT_INSTANTS
    from gridapi.services import idempotency

    lon, lat = center(0)
    body = {
        **report_body(lon, lat, occurred_at="2026-12-01T10:00:00+08:00"),
        "location": {"type": "Point", "coordinates": [lon, lat, 9.5]},
    }
    first = post(client, body, "alt-before")
    assert first.status_code == 201, first.get_json()
    then = idempotency.canonical_body(body, REPORT_DEFAULTS, REPORT_INSTANTS)
    stored_as(session, "alt-before", then)
    again = post(client, body, "alt-before")
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert counts(session) == (1, 1, 1)


def test_a_key_stored_before_bodies_were_canonical_still_answers_its_retry(client, world, session):
    """Keys stored by the release before kept the hash of the body as sent (its JSON with
    sorted keys): a phone retrying such a report after the upgrade gets its answer."""
    body = report_body(*center(0), accuracy_m=12.0, crs="wgs84", urgent=False)
    first = post(client, body, "from-before")
    assert first.status_code == 201, first.get_json()
    stored_as(session, "from-before", body)
    again = post(client, body, "from-before")
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    other = post(client, {**body, "accuracy_m": 13}, "from-before")
    assert other.status_code == 422, other.get_json()
    assert counts(session) == (1, 1, 1)


def test_keys_belong_to_their_caller(client, world, accounts, session):
    worker = accounts.client("worker", "grid_worker", grids=["320508001001001"])
    body = report_body(*center(0))
    mine = post(client, body, "same-key")
    theirs = post(worker, body, "same-key")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert "Idempotent-Replayed" not in theirs.headers
    assert mine.get_json()["id"] != theirs.get_json()["id"]
    assert counts(session) == (2, 2, 2)


def test_a_repeated_client_id_is_a_retry(client, world, session):
    cid = str(uuid.uuid4())
    body = report_body(*center(0), client_id=cid)
    first = post(client, body)
    again = post(client, body)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert first.get_json()["client_id"] == cid
    # With a key as well: the client_id already answers for the request.
    keyed = post(client, body, "late-key")
    assert keyed.status_code == 201 and keyed.data == first.data
    changed = post(client, report_body(*center(1), client_id=cid))
    assert changed.status_code == 422, changed.get_json()
    assert changed.get_json()["errors"] == {"json": {"client_id": ["reused"]}}
    assert count(session, "cases") == 1 and count(session, "case_events") == 1


def test_the_nil_uuid_is_no_client_id(client, world, session):
    """A phone library that writes the nil UUID for "no id" sent it with every report: the
    second, another report, was refused 422 as a reuse of the first's client_id, and lost."""
    nil = "00000000-0000-0000-0000-000000000000"
    first = post(client, report_body(*center(0), client_id=nil))
    second = post(client, report_body(*center(1), client_id=nil))
    assert (first.status_code, second.status_code) == (201, 201), second.get_json()
    assert first.get_json()["id"] != second.get_json()["id"]
    assert first.get_json()["client_id"] is None and second.get_json()["client_id"] is None
    # A retry of one of them with its key is still answered as the first time.
    keyed = post(client, report_body(*center(2), client_id=nil), "nil-1")
    again = post(client, report_body(*center(2), client_id=nil), "nil-1")
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == keyed.data
    assert count(session, "cases") == 3


@pytest.mark.parametrize("retry", ["nil", "null", "left out"])
@pytest.mark.parametrize("first", ["nil", "left out"])
def test_a_nil_client_id_is_the_same_request_as_none(client, world, session, first, retry):
    """The nil UUID is read as no client_id, and a member written with the value that means
    leaving it out is the same request: a report sent without a client_id and retried with
    the nil UUID (a phone library's "no id") was 422 "reused" online, and a replay in a
    batch (which read it as none)."""
    nil = "00000000-0000-0000-0000-000000000000"
    written = {"nil": nil, "null": None}

    def body(how: str) -> dict[str, Any]:
        made = report_body(*center(0))
        made.pop("client_id", None)
        return made if how == "left out" else {**made, "client_id": written[how]}

    one = post(client, body(first), "nil-key")
    assert one.status_code == 201, one.get_json()
    again = post(client, body(retry), "nil-key")
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == one.data
    assert count(session, "cases") == 1


def test_a_key_stored_with_a_nil_client_id_as_sent_still_answers(client, world, session):
    """Keys stored before the nil UUID was read as none kept the hash of the body with the
    nil UUID as written: its retry still replays."""
    from gridapi.resources.cases import REPORT_DEFAULTS, REPORT_INSTANTS
    from gridapi.services import idempotency

    body = report_body(*center(0), client_id="00000000-0000-0000-0000-000000000000")
    first = post(client, body, "nil-before")
    assert first.status_code == 201, first.get_json()
    before = idempotency.request_hash(
        "POST", "/api/v1/cases", body, defaults=REPORT_DEFAULTS, instants=REPORT_INSTANTS
    )
    session.rollback()
    session.execute(
        text("UPDATE idempotency_keys SET request_hash = :h WHERE key = 'key:nil-before'"),
        {"h": before.value},
    )
    session.commit()
    again = post(client, body, "nil-before")
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert counts(session) == (1, 1, 1)


def test_a_key_is_kept_for_at_least_seven_days(client, world, session):
    before = datetime.now(UTC)
    cid = str(uuid.uuid4())
    case_id = post(client, report_body(*center(0), client_id=cid), "kept").get_json()["id"]
    rows = session.execute(
        text(
            "SELECT key, caller, status_code, resource_id, expires_at, method, path "
            "FROM idempotency_keys ORDER BY key"
        )
    ).all()
    assert [(r.key, r.status_code, r.resource_id) for r in rows] == [
        (f"client_id:{cid}", 201, case_id),
        ("key:kept", 201, case_id),
    ]
    for row in rows:
        expires = row.expires_at
        if isinstance(expires, str):
            expires = datetime.fromisoformat(expires)
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        assert expires >= before + timedelta(days=7), row
        assert (row.method, row.path) == ("POST", "/api/v1/cases")
        assert row.caller.startswith("user:")


@pytest.mark.parametrize("change", ["deactivated", "attribute required"])
def test_a_retry_is_answered_as_the_first_time_after_the_rules_changed(
    client, world, session, change
):
    """A phone replaying its queue after the category was deactivated or given a required
    attribute: the report exists, so the replay is the first answer (not the 422 a new
    report now gets), by its key and by its client_id, and nothing is written."""
    body = report_body(*center(0), client_id=str(uuid.uuid4()))
    first = post(client, body, "queued-1")
    assert first.status_code == 201, first.get_json()
    if change == "deactivated":
        patch = {"is_active": False}
    else:
        volume = {"code": "volume", "label": "体积", "type": "number", "required": True}
        patch = {"attributes": [volume]}
    r = client.patch("/api/v1/categories/0101", json=patch)
    assert r.status_code == 200, r.get_json()
    fresh = post(client, {**body, "client_id": str(uuid.uuid4())}, "new-one")
    assert fresh.status_code == 422, fresh.get_json()  # the rules now refuse a new report
    for key in ("queued-1", None):  # by the key, then by the client_id alone
        again = post(client, body, key)
        assert again.status_code == 201, again.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.data == first.data
    assert counts(session) == (1, 1, 2)


def test_a_report_that_failed_leaves_no_key_and_can_be_retried(client, world, session):
    client.patch(
        "/api/v1/categories/0101",
        json={
            "attributes": [{"code": "volume", "label": "体积", "type": "number", "required": True}]
        },
    )
    cid = str(uuid.uuid4())
    wrong = post(client, report_body(*center(0), client_id=cid), "retry-me")
    assert wrong.status_code == 422, wrong.get_json()
    assert counts(session) == (0, 0, 0)
    # Corrected (another body, so the same key would be a conflict had the key been kept).
    fixed = post(
        client, report_body(*center(0), client_id=cid, attributes={"volume": 2}), "retry-me"
    )
    assert fixed.status_code == 201, fixed.get_json()
    assert "Idempotent-Replayed" not in fixed.headers
    assert counts(session) == (1, 1, 2)


def test_twenty_retries_at_once_make_one_case(client, world, accounts, session, engine):
    """All at the same moment with one key: one case; every answer is that case (201,
    replayed) or "still in flight" (409 with Retry-After). On SQLite the writes queue; on
    PostgreSQL a request that finds the key's advisory lock taken answers 409 at once."""
    body = report_body(*center(0))
    clients = [accounts.client("admin") for _ in range(20)]
    answers = race(clients, lambda c: post(c, body, "storm"))
    statuses = sorted(a.status_code for a in answers)
    details = [(a.status_code, a.get_data(as_text=True)[:200]) for a in answers]
    assert set(statuses) <= {201, 409}, details
    assert count(session, "cases") == 1
    assert count(session, "case_events") == 1
    assert count(session, "idempotency_keys") == 1
    created = [a for a in answers if a.status_code == 201]
    assert created, details
    originals = [a for a in created if "Idempotent-Replayed" not in a.headers]
    assert len(originals) == 1, details
    for a in created:
        assert a.data == originals[0].data
    for a in answers:
        if a.status_code == 409:
            assert a.headers["Retry-After"] == "1"
            assert a.get_json()["errors"] == {"headers": {"Idempotency-Key": ["in flight"]}}
    if engine.dialect.name == "sqlite":
        assert statuses == [201] * 20, details  # writers wait their turn, then replay
    # Whatever answered 409 gets the case on a later retry.
    later = post(client, body, "storm")
    assert later.status_code == 201 and later.data == originals[0].data


@pytest.mark.engines("postgis")
@pytest.mark.parametrize(
    ("header", "held"),
    [(False, ["client_id"]), (True, ["client_id"]), (True, ["key"]), (True, ["key", "client_id"])],
)
def test_a_retry_in_flight_is_named_by_what_is_in_flight(
    client, world, session, engine, header, held
):
    """A phone that sends no Idempotency-Key, only a client_id: a retry still in flight was
    told its Idempotency-Key header was, a header it never sent. A report with a new key
    whose client_id was in flight (another request, another key) was told the same."""
    from gridapi.services import idempotency

    probe = post(client, report_body(*center(1), client_id=str(uuid.uuid4())))
    assert probe.status_code == 201
    caller = session.execute(text("SELECT caller FROM idempotency_keys")).scalar()
    cid = str(uuid.uuid4())
    keys = {"client_id": f"client_id:{cid}", "key": "key:k"}
    with engine.connect() as other:  # the first request, still in flight, holds the keys
        for name in held:
            taken = other.execute(
                text("SELECT pg_try_advisory_xact_lock(:n)"),
                {"n": idempotency.lock_id(caller, keys[name])},
            )
            assert taken.scalar() is True
        r = post(client, report_body(*center(0), client_id=cid), "k" if header else None)
        other.rollback()
    assert r.status_code == 409, r.get_json()
    assert r.headers["Retry-After"] == "1"
    expected: dict[str, Any] = {}
    if "key" in held:
        expected["headers"] = {"Idempotency-Key": ["in flight"]}
    if "client_id" in held:
        expected["json"] = {"client_id": ["in flight"]}
    assert r.get_json()["errors"] == expected
    what = " and ".join({"key": "Idempotency-Key", "client_id": "client_id"}[n] for n in held)
    assert r.get_json()["message"].startswith(f"A request with this {what} is still")
    assert count(session, "cases") == 1


@pytest.mark.engines("postgis")
def test_a_client_id_in_flight_is_named_after_its_request_ended(
    client, world, session, app, monkeypatch
):
    """Twenty reports with one client_id and a key each: a 409 named the Idempotency-Key
    too when the request holding the client_id had ended between the report's statement
    and the check of which lock was held (read again after the statement, every lock was
    free, and the 409 named them all). It names what the statement found held."""
    from gridapi.services import idempotency, intake

    probe = post(client, report_body(*center(1), client_id=str(uuid.uuid4())))
    assert probe.status_code == 201
    caller = session.execute(text("SELECT caller FROM idempotency_keys")).scalar()
    cid = str(uuid.uuid4())
    engine = app.extensions["gridapi"].engine
    with engine.connect() as other:  # the first request, in flight, holds the client_id
        taken = other.execute(
            text("SELECT pg_try_advisory_xact_lock(:n)"),
            {"n": idempotency.lock_id(caller, f"client_id:{cid}")},
        )
        assert taken.scalar() is True

        execute = intake._TwoStatements.execute

        def first_request_ends(self, sql, params):  # type: ignore[no-untyped-def]
            done = execute(self, sql, params)
            if "INSERT INTO case_counters" in sql and other.in_transaction():
                other.rollback()  # just after the report's statement found the lock held
            return done

        monkeypatch.setattr(intake._TwoStatements, "execute", first_request_ends)
        r = post(client, report_body(*center(0), client_id=cid), "fresh-key")
        monkeypatch.undo()
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["errors"] == {"json": {"client_id": ["in flight"]}}
    assert count(session, "cases") == 1


# --- a phone whose clock is wrong ------------------------------------------------------------


def _phone_clock(ahead: timedelta) -> tuple[datetime, str]:
    """Return the phone's 'now' when its clock is ``ahead`` of the server's, and the Date
    header it would send (RFC 9110's format, whole seconds)."""
    from werkzeug.http import http_date

    now = datetime.now(UTC) + ahead
    return now, http_date(now)


def _stored_occurred_at(session: Any, case_id: int) -> datetime:
    session.rollback()
    value = session.execute(
        text("SELECT occurred_at FROM cases WHERE id = :i"), {"i": case_id}
    ).scalar_one()
    if isinstance(value, str):  # SQLite
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_a_fast_phone_clock_is_corrected_by_its_date_header(client, world, session):
    """A phone two hours fast wrote occurred_at two hours ahead: 422 "lies in the future",
    and an offline queue replayed by it lost the report. Its Date header says how fast it
    is: the report is taken, its time moved to the server's clock."""
    phone_now, date = _phone_clock(timedelta(hours=2))
    written = (phone_now - timedelta(minutes=5)).isoformat()
    body = report_body(*center(0), occurred_at=written)
    refused = post(client, body, "fast-1")
    assert refused.status_code == 422
    assert refused.get_json()["errors"]["json"]["occurred_at"] == ["lies in the future"]
    r = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "fast-1", "Date": date})
    assert r.status_code == 201, r.get_json()
    expected = datetime.now(UTC) - timedelta(minutes=5)
    answered = datetime.fromisoformat(r.get_json()["occurred_at"])
    assert abs(answered - expected) < timedelta(seconds=5), (answered, expected)
    assert abs(_stored_occurred_at(session, r.get_json()["id"]) - expected) < timedelta(seconds=5)
    # A retry sends a Date of its own (later): the same body, the first answer, no new case.
    later = client.post(
        "/api/v1/cases",
        json=body,
        headers={
            "Idempotency-Key": "fast-1",
            "Date": _phone_clock(timedelta(hours=2, minutes=1))[1],
        },
    )
    assert later.status_code == 201
    assert later.headers["Idempotent-Replayed"] == "true"
    assert later.data == r.data
    assert counts(session) == (1, 1, 1)


@pytest.mark.parametrize("by", ["key", "client_id", "batch"])
def test_a_retry_after_the_phone_clock_was_corrected_gets_its_answer(client, world, session, by):
    """A phone two hours fast sent a report (its Date said so), lost the answer, had its
    clock corrected once it had network, and sent the same report again: the body, checked
    against the retry's own Date (or none), lay in the future, and the 422 kept the phone
    from ever learning the number of a report the server had taken. The retry is answered
    as the first send was, by its key, by its client_id, and in an offline batch."""
    phone_now, date = _phone_clock(timedelta(hours=2))
    body = report_body(
        *center(0),
        occurred_at=(phone_now - timedelta(minutes=10)).isoformat(),
        client_id=str(uuid.uuid4()),
    )
    first = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "k1", "Date": date})
    assert first.status_code == 201, first.get_json()
    if by == "batch":
        batch = {"actions": [{"key": "k1", "type": "case.create", "payload": body}]}
        r = client.post("/api/v1/sync/batch", json=batch)
        assert r.status_code == 200, r.get_json()
        [result] = r.get_json()["results"]
        assert (result["status"], result["id"], result["replayed"]) == (
            201,
            first.get_json()["id"],
            True,
        ), result
    else:
        again = post(client, body, "k1" if by == "key" else None)  # no Date: a right clock
        assert again.status_code == 201, again.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.headers["ETag"] == first.headers["ETag"]
        assert again.data == first.data
    assert count(session, "cases") == 1
    # Another report that lies in the future is still refused, and so is this one under a
    # new key and client_id.
    fresh = post(client, {**body, "client_id": str(uuid.uuid4())}, "k2")
    assert fresh.status_code == 422
    assert fresh.get_json()["errors"]["json"]["occurred_at"] == ["lies in the future"]
    changed = post(client, {**body, "description": "另一件事"}, "k1")
    assert changed.status_code == 422 and "occurred_at" in changed.get_json()["errors"]["json"]
    assert count(session, "cases") == 1


def test_a_slow_phone_clock_is_corrected_too(client, world, session):
    phone_now, date = _phone_clock(-timedelta(hours=3))
    body = report_body(*center(0), occurred_at=(phone_now - timedelta(minutes=30)).isoformat())
    r = client.post("/api/v1/cases", json=body, headers={"Date": date})
    assert r.status_code == 201, r.get_json()
    expected = datetime.now(UTC) - timedelta(minutes=30)
    assert abs(_stored_occurred_at(session, r.get_json()["id"]) - expected) < timedelta(seconds=5)


@pytest.mark.parametrize(
    "date",
    [
        "within a minute",
        "not a date",
        "two years fast",
        "the last year, west of UTC",
    ],
)
def test_a_date_header_that_says_nothing_leaves_the_time_as_written(client, world, session, date):
    """Within a minute (the header's resolution, a slow upload), unreadable, or off by more
    than a year (however far): the time is taken as the phone wrote it."""
    header = {
        "within a minute": _phone_clock(timedelta(seconds=40))[1],
        "not a date": "yesterday",
        "two years fast": _phone_clock(timedelta(days=730))[1],
        # Past the last instant Python holds, once in UTC: a 500 (OverflowError) at first.
        "the last year, west of UTC": "Fri, 31 Dec 9999 23:59:59 -1200",
    }[date]
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    body = report_body(*center(0), occurred_at=written.isoformat())
    r = client.post("/api/v1/cases", json=body, headers={"Date": header})
    assert r.status_code == 201, r.get_json()
    assert _stored_occurred_at(session, r.get_json()["id"]) == written


def test_a_time_moved_before_the_year_2000_is_refused(client, world, session):
    """The year was checked as written, before the Date header moved the time: a report of
    2000-01-01 00:30 from a phone 300 days fast was stored as 1999-03-07."""
    date = _phone_clock(timedelta(days=300))[1]
    body = report_body(*center(0), occurred_at="2000-01-01T00:30:00Z")
    r = client.post("/api/v1/cases", json=body, headers={"Date": date})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["occurred_at"] == ["lies before the year 2000"]
    assert count(session, "cases") == 0


def test_an_offline_queue_from_a_fast_phone_is_taken_with_the_batch_s_date(client, world, session):
    """The batch's Date applies to each report in it: the case.create of a phone an hour
    fast, written three hours before the queue was sent, is stored at its true time."""
    phone_now, date = _phone_clock(timedelta(hours=1))
    body = report_body(*center(0), occurred_at=(phone_now - timedelta(hours=3)).isoformat())
    future = report_body(*center(1), occurred_at=(phone_now - timedelta(minutes=1)).isoformat())
    batch = {
        "actions": [
            {"key": "queued-1", "type": "case.create", "payload": body},
            {"key": "queued-2", "type": "case.create", "payload": future},
        ]
    }
    r = client.post("/api/v1/sync/batch", json=batch, headers={"Date": date})
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [201, 201], results
    now = datetime.now(UTC)
    for result, ago in zip(results, (timedelta(hours=3), timedelta(minutes=1)), strict=True):
        stored = _stored_occurred_at(session, result["id"])
        assert abs(stored - (now - ago)) < timedelta(seconds=5), (stored, now - ago)
    # Without the header the second report lies in the future, as before.
    again = {"actions": [{"key": "queued-3", "type": "case.create", "payload": future}]}
    [refused] = client.post("/api/v1/sync/batch", json=again).get_json()["results"]
    assert refused["status"] == 422
    assert count(session, "cases") == 2
