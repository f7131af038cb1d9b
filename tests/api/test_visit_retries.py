"""Retrying a visit (走访) that reports a case: the case's client_id makes the visit and its
case once, and every retry (online, from the sync batch, at the same moment) is answered with
the first visit, never a second visit or case, nor a bare 409."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from ..factories import COMMUNITY_A, COMMUNITY_B
from .test_case_workflow import race
from .test_register import created, make_id, point

A1 = COMMUNITY_A + "001"
B1 = COMMUNITY_B + "001"


@pytest.fixture
def phone(accounts, world):  # type: ignore[no-untyped-def]
    """A grid worker's phone."""
    return accounts.client("worker1", "grid_worker", grids=[A1])


@pytest.fixture
def home(client, world) -> dict:  # type: ignore[no-untyped-def]
    house = created(
        client.post("/api/v1/houses", json={"address": "平江路1号", "location": point(0)})
    )
    return created(
        client.post("/api/v1/households", json={"number": "0001", "house_id": house["id"]})
    )


def visit_body(household_id: int, client_id: str, findings: str = "走访") -> dict:
    return {
        "household_id": household_id,
        "findings": findings,
        "case": {"category": "0101", "description": "楼道堆放杂物", "client_id": client_id},
    }


def post(phone: Any, body: dict) -> Any:
    return phone.post("/api/v1/visits", json=body)


def rows(engine: Any) -> dict[str, int]:
    """Return what the database holds: visits, cases, report timeline rows, audit rows."""
    queries = {
        "visits": "SELECT count(*) FROM visits",
        "cases": "SELECT count(*) FROM cases",
        "reports": "SELECT count(*) FROM case_events WHERE action = 'report'",
        "visit_audits": "SELECT count(*) FROM audit_log WHERE action = 'visit.create'",
        "case_audits": "SELECT count(*) FROM audit_log WHERE action = 'case.report'",
    }
    with engine.connect() as conn:
        return {name: conn.execute(text(sql)).scalar() for name, sql in queries.items()}


ONE = {"visits": 1, "cases": 1, "reports": 1, "visit_audits": 1, "case_audits": 1}


def test_a_retried_visit_gets_the_first_answer_and_makes_nothing(phone, home, engine):
    """The phone lost the answer on a bad network and sent the visit again: it gets the
    visit and its case (it got a bare 409 and could never learn their ids)."""
    cid = str(uuid.uuid4())
    first = post(phone, visit_body(home["id"], cid))
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    visit = first.get_json()
    assert isinstance(visit["case_id"], int)
    for sent in (cid, cid.upper()):  # upper and lower case are the same UUID
        again = post(phone, visit_body(home["id"], sent))
        assert again.status_code == 201, again.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.data == first.data  # byte for byte: the visit and its case
    assert phone.get(f"/api/v1/visits/{visit['id']}").get_json()["case_id"] == visit["case_id"]
    case = phone.get(f"/api/v1/cases/{visit['case_id']}").get_json()
    assert (case["client_id"], case["source"]) == (cid, "visit")
    assert rows(engine) == ONE


def test_the_same_client_id_with_another_visit_is_422_and_makes_nothing(phone, home, engine):
    """As POST /cases: the client_id names one request; another body with it is refused."""
    cid = str(uuid.uuid4())
    assert post(phone, visit_body(home["id"], cid)).status_code == 201
    other = post(phone, visit_body(home["id"], cid, findings="另一次走访"))
    assert other.status_code == 422, other.get_json()
    # Named where the visit's body has it (it was `json.client_id`, a field visits lack).
    assert other.get_json()["errors"] == {"json": {"case": {"client_id": ["reused"]}}}
    assert "Idempotent-Replayed" not in other.headers
    assert rows(engine) == ONE


def test_a_retry_after_the_stored_answer_is_gone_gets_the_visit(phone, home, engine):
    """A queue replayed after GRIDAPI_IDEMPOTENCY_DAYS: the visit as it is now (200), as
    POST /cases answers the case; never a second visit."""
    cid = str(uuid.uuid4())
    first = post(phone, visit_body(home["id"], cid)).get_json()
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM idempotency_keys"))  # as the worker's purge does
    again = post(phone, visit_body(home["id"], cid))
    assert again.status_code == 200, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    shown = again.get_json()
    assert (shown["id"], shown["case_id"], shown["findings"]) == (
        first["id"],
        first["case_id"],
        "走访",
    )
    assert rows(engine) == ONE


def test_a_retry_is_answered_after_the_household_left_the_workers_grid(client, phone, home, engine):
    """Checked again, the household would be out of the worker's scope (404): a retry is
    answered first, as a report is."""
    cid = str(uuid.uuid4())
    first = post(phone, visit_body(home["id"], cid))
    moved = client.patch(f"/api/v1/houses/{home['house_id']}", json={"location": point(2)})
    assert created(moved, 200)["grid"] != A1
    again = post(phone, visit_body(home["id"], cid))
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true" and again.data == first.data
    assert rows(engine) == ONE


def test_a_late_retry_tells_nothing_of_where_the_resident_moved(client, phone, engine):
    """After its stored answer was purged, a retry got the visit as it is now, also when the
    visit had followed its resident out of the worker's grids: its grid and community told
    the worker where the resident had moved, which GET /visits/{id} answers 404 for."""
    resident = {"name": "张三", "id_number": make_id(), "grid": A1}
    person = created(client.post("/api/v1/persons", json=resident))
    cid = str(uuid.uuid4())
    body = {
        "person_id": person["id"],
        "findings": "走访",
        "location": point(0),
        "case": {"category": "0101", "description": "门前堆物", "client_id": cid},
    }
    first = created(post(phone, body))
    there = created(client.post("/api/v1/households", json={"number": "0002", "grid": B1}))
    moved = client.patch(f"/api/v1/persons/{person['id']}", json={"household_id": there["id"]})
    assert created(moved, 200)["grid"] == B1
    stored = post(phone, body)  # the answer the worker had, as it was
    assert (stored.status_code, stored.get_json()) == (201, first)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM idempotency_keys"))  # as the worker's purge does
    again = post(phone, body)
    missing = phone.get(f"/api/v1/visits/{first['id']}")
    assert missing.status_code == 404
    assert (again.status_code, again.data) == (404, missing.data)
    assert B1 not in again.get_data(as_text=True)
    assert rows(engine) == ONE


def test_an_erased_resident_leaves_no_stored_answer_of_their_visit(client, phone, engine):
    """Erasure clears the findings of a visit about the resident alone: the answer stored
    for its retries (which repeats them) goes too, and a retry gets the visit as it is now."""
    resident = {"name": "张三", "id_number": make_id(), "grid": A1}
    person = created(client.post("/api/v1/persons", json=resident))
    cid = str(uuid.uuid4())
    body = {
        "person_id": person["id"],
        "findings": "个人情况",
        "place": "家中",
        "location": point(0),
        "case": {"category": "0101", "description": "门前堆物", "client_id": cid},
    }
    first = created(post(phone, body))
    assert first["household_id"] is None
    erased = client.delete(f"/api/v1/persons/{person['id']}?reason=本人申请删除")
    assert erased.status_code == 204
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT response FROM idempotency_keys")).scalars().all()
    assert not [r for r in kept if "个人情况" in r or "家中" in r], kept
    again = post(phone, body)
    assert again.status_code == 200, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    shown = again.get_json()
    assert (shown["id"], shown["findings"], shown["place"], shown["person_id"]) == (
        first["id"],
        "",
        "",
        None,
    )
    assert rows(engine) == ONE


def test_an_erased_resident_leaves_no_answer_under_a_visit_s_idempotency_key(client, phone, engine):
    """The answer stored under a visit's Idempotency-Key (a phone's retry header, or a
    batch's visit.create) kept the findings, place and person after the erasure, and a
    retry with the key was answered them in full."""
    resident = {"name": "李四", "id_number": make_id(seq="007"), "grid": A1}
    person = created(client.post("/api/v1/persons", json=resident))
    body = {"person_id": person["id"], "findings": "独居，有慢性病", "place": "家中"}
    sent = phone.post("/api/v1/visits", json=body, headers={"Idempotency-Key": "visit-k"})
    assert sent.status_code == 201
    batched = phone.post(
        "/api/v1/sync/batch",
        json={"actions": [{"key": "visit-b", "type": "visit.create", "payload": body}]},
    )
    assert batched.get_json()["results"][0]["status"] == 201
    assert client.delete(f"/api/v1/persons/{person['id']}?reason=本人申请删除").status_code == 204
    with engine.connect() as conn:
        kept = conn.execute(text("SELECT response FROM idempotency_keys")).scalars().all()
    assert not [r for r in kept if "慢性病" in r or "家中" in r], kept
    for key in ("visit-k", "visit-b"):
        again = phone.post("/api/v1/visits", json=body, headers={"Idempotency-Key": key})
        assert again.status_code == 422, again.get_json()  # the resident is gone
        assert "慢性病" not in again.get_data(as_text=True)
    with engine.connect() as conn:
        findings = conn.execute(text("SELECT findings FROM visits")).scalars().all()
    assert findings == ["", ""]


def test_an_erased_resident_leaves_no_answer_of_a_visit_with_a_case_under_its_key(
    client, phone, home, engine
):
    """A visit that reported a case keeps its answer under the case's id: the erasure
    looked for the visit's id, and a retry with the key (online or a batch's) answered the
    findings of the erased resident in full. Another visit's answer stays."""
    resident = {"name": "孙五", "id_number": make_id(seq="011"), "grid": A1}
    person = created(client.post("/api/v1/persons", json=resident))
    for _ in range(3):  # the cases' ids are not the visits' (equal, the rows were found)
        report = {"category": "0101", "description": "占道经营", "location": point(0)}
        created(client.post("/api/v1/cases", json=report))

    def about(cid: str) -> dict:
        return {
            "person_id": person["id"],
            "findings": "情绪激动，拒绝服药",
            "place": "家中",
            "location": point(0),
            "case": {"category": "0101", "description": "门前堆物", "client_id": cid},
        }

    online = about(str(uuid.uuid4()))
    assert keyed(phone, online, "visit-kc").status_code == 201
    queued = about(str(uuid.uuid4()))
    batched = phone.post(
        "/api/v1/sync/batch",
        json={"actions": [{"key": "visit-bc", "type": "visit.create", "payload": queued}]},
    )
    assert batched.get_json()["results"][0]["status"] == 201, batched.get_json()
    other = {"household_id": home["id"], "findings": "邻居走访"}
    kept = keyed(phone, other, "visit-other")
    assert kept.status_code == 201
    assert client.delete(f"/api/v1/persons/{person['id']}?reason=本人申请删除").status_code == 204
    with engine.connect() as conn:
        answers = conn.execute(text("SELECT response FROM idempotency_keys")).scalars().all()
    assert not [r for r in answers if "服药" in r or "家中" in r], answers
    for body, key in ((online, "visit-kc"), (queued, "visit-bc")):
        again = keyed(phone, body, key)
        assert "服药" not in again.get_data(as_text=True), again.get_json()
    again = keyed(phone, other, "visit-other")  # another visit's answer is still its answer
    assert again.status_code == 201 and again.data == kept.data
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM visits")).scalar() == 3


def test_errors_of_a_visits_case_name_its_fields_under_case(phone, home, engine):
    """The case's fields are under `case` in a visit's body, and so in its errors (an
    unknown category was `json.category`, a field a visit has not got); nothing is
    written, the visit neither."""
    body = visit_body(home["id"], str(uuid.uuid4()))
    body["case"]["category"] = "9999"
    refused = post(phone, body)
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["errors"] == {
        "json": {"case": {"category": ["no active category 9999"]}}
    }
    assert rows(engine) == dict.fromkeys(ONE, 0)


def test_a_visits_case_with_nowhere_to_be_is_422_under_case(client, phone, engine):
    """Neither the case, the visit nor the house has a location: 422 naming
    `json.case.location` (once: the errors of the case's own report are moved under
    `case`, these were already there), and nothing is written."""
    house = created(client.post("/api/v1/houses", json={"address": "平江路2号", "grid": A1}))
    home = created(
        client.post("/api/v1/households", json={"number": "0002", "house_id": house["id"]})
    )
    refused = post(phone, visit_body(home["id"], str(uuid.uuid4())))
    assert refused.status_code == 422, refused.get_json()
    assert refused.get_json()["errors"] == {
        "json": {"case": {"location": ["required: the visit has no location"]}}
    }
    assert rows(engine) == dict.fromkeys(ONE, 0)


def test_a_case_client_id_belongs_to_one_report(phone, home, engine):
    """POST /cases with a visit's client_id answers that visit's case; a visit with a
    client_id that POST /cases reported answers 409 naming it, not the bare conflict."""
    cid = str(uuid.uuid4())
    visit = post(phone, visit_body(home["id"], cid)).get_json()
    report = {**visit_body(home["id"], cid)["case"], "location": point(0)}
    as_case = phone.post("/api/v1/cases", json=report)
    assert as_case.status_code == 200, as_case.get_json()
    assert as_case.headers["Idempotent-Replayed"] == "true"
    assert as_case.get_json()["id"] == visit["case_id"]
    other = str(uuid.uuid4())
    assert phone.post("/api/v1/cases", json={**report, "client_id": other}).status_code == 201
    taken = post(phone, visit_body(home["id"], other))
    assert taken.status_code == 409, taken.get_json()
    assert taken.get_json()["errors"] == {
        "json": {"case": {"client_id": ["used for another case"]}}
    }
    counted = rows(engine)
    assert (counted["visits"], counted["cases"], counted["reports"]) == (1, 2, 2)


def test_a_visit_tried_online_then_queued_is_the_first_visit_in_the_batch(phone, home, engine):
    """The phone heard nothing online and queued the visit with a new key: the batch
    answers the first visit, replayed, on every send (it answered 409 for ever)."""
    cid = str(uuid.uuid4())
    online = post(phone, visit_body(home["id"], cid))
    assert online.status_code == 201
    action = {"key": "queued-visit", "type": "visit.create", "payload": visit_body(home["id"], cid)}
    expected = {
        "key": "queued-visit",
        "status": 201,
        "id": online.get_json()["id"],
        "error": None,
        "replayed": True,
    }
    for _ in range(2):
        sent = phone.post("/api/v1/sync/batch", json={"actions": [action]})
        assert sent.status_code == 200, sent.get_json()
        assert sent.get_json()["results"] == [expected]
    assert rows(engine) == ONE


def test_a_visit_queued_twice_under_two_keys_is_made_once(phone, home, engine):
    cid = str(uuid.uuid4())
    actions = [
        {"key": key, "type": "visit.create", "payload": visit_body(home["id"], cid)}
        for key in ("first-try", "second-try")
    ]
    sent = phone.post("/api/v1/sync/batch", json={"actions": actions})
    results = sent.get_json()["results"]
    assert [(r["status"], r["replayed"], r["error"]) for r in results] == [
        (201, False, None),
        (201, True, None),
    ], results
    assert results[0]["id"] == results[1]["id"]
    assert rows(engine) == ONE


def test_retries_at_once_make_one_visit(phone, home, accounts, engine):
    """Twelve sends of one visit at the same moment: one visit and one case; every answer
    is that visit (201) or "still in flight" (409 with Retry-After), and a later retry gets
    the visit. On SQLite writers queue, so every answer is the visit."""
    cid = str(uuid.uuid4())
    body = visit_body(home["id"], cid)
    phones = [accounts.client("worker1") for _ in range(12)]
    answers = race(phones, lambda c: post(c, body))
    details = [(a.status_code, a.get_data(as_text=True)[:200]) for a in answers]
    assert {a.status_code for a in answers} <= {201, 409}, details
    created_ = [a for a in answers if a.status_code == 201]
    originals = [a for a in created_ if "Idempotent-Replayed" not in a.headers]
    assert len(originals) == 1, details
    assert all(a.data == originals[0].data for a in created_), details
    for a in answers:
        if a.status_code == 409:
            assert a.headers.get("Retry-After") == "1", details
    if engine.dialect.name == "sqlite":
        assert [a.status_code for a in answers] == [201] * 12, details
    later = post(phone, body)
    assert later.status_code == 201 and later.data == originals[0].data
    assert rows(engine) == ONE


# --- an Idempotency-Key: visits without a case too ----------------------------------------------


def keyed(phone: Any, body: dict, key: str) -> Any:
    return phone.post("/api/v1/visits", json=body, headers={"Idempotency-Key": key})


VISIT_ONLY = {"visits": 1, "cases": 0, "reports": 0, "visit_audits": 1, "case_audits": 0}


def test_a_visit_without_a_case_sent_again_with_its_key_is_made_once(phone, home, engine):
    """A visit with no case had nothing to retry by: the phone's retry recorded it twice."""
    body = {"household_id": home["id"], "findings": "入户走访"}
    first = keyed(phone, body, "visit-1")
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    again = keyed(phone, body, '"visit-1"')  # quoted or bare: one key
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data
    other = keyed(phone, {**body, "findings": "另一次走访"}, "visit-1")
    assert other.status_code == 422
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert rows(engine) == VISIT_ONLY
    # Without a key it is another visit, as it always was.
    assert post(phone, body).status_code == 201
    assert rows(engine)["visits"] == 2


def test_a_keyed_visit_with_a_case_is_answered_by_its_key(phone, home, engine):
    cid = str(uuid.uuid4())
    first = keyed(phone, visit_body(home["id"], cid), "visit-2")
    assert first.status_code == 201, first.get_json()
    again = keyed(phone, visit_body(home["id"], cid), "visit-2")
    assert again.status_code == 201 and again.data == first.data
    assert rows(engine) == ONE


def test_keyed_visits_sent_at_once_make_one_visit(phone, home, accounts, engine):
    body = {"household_id": home["id"], "findings": "入户走访"}
    phones = [accounts.client("worker1") for _ in range(8)]
    answers = race(phones, lambda c: keyed(c, body, "storm"))
    details = [(a.status_code, a.get_data(as_text=True)[:200]) for a in answers]
    assert {a.status_code for a in answers} <= {201, 409}, details
    created_ = [a for a in answers if a.status_code == 201]
    assert len({a.data for a in created_}) == 1, details
    for a in answers:
        if a.status_code == 409:
            assert a.get_json()["errors"] == {"headers": {"Idempotency-Key": ["in flight"]}}
    if engine.dialect.name == "sqlite":
        assert [a.status_code for a in answers] == [201] * 8, details
    assert rows(engine) == VISIT_ONLY
