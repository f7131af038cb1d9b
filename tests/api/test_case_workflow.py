"""The case workflow over HTTP: every path through the states, who may take which step, the
timeline each step leaves, If-Match on every transition, and the work queues."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text, update

from gridapi import clock
from gridapi.models import Case
from gridapi.security.permissions import ROLES
from gridapi.services.cases import ACTIONS, add_limit

from ..factories import CITY, COMMUNITY_A, COMMUNITY_B, COUNTY, PASSWORD, TOWNSHIP
from ..statements import statements_sent
from .test_cases import A1, center, report_body

A2 = COMMUNITY_A + "002"
ROLE_PERMISSIONS = {name: frozenset(permissions) for name, _, _, permissions in ROLES}


# --- the people and the desk they work at ---------------------------------------------------


class Desk:
    """The township of ``tests/factories.py`` with its people, and helpers to move cases.

    ``office`` (township), ``county``, ``city``, ``officer`` (community A), ``worker`` (grid
    A1) and ``member`` (of the department ``dept``, in community A) are signed-in clients;
    ``admin`` is the unrestricted admin who reads ETags.
    """

    def __init__(self, app: Any, accounts: Any, admin: Any) -> None:
        self.app = app
        self.accounts = accounts
        self.admin = admin
        self.office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
        self.county = accounts.client("county", "county_centre", scope_region=COUNTY)
        self.city = accounts.client("city", "city_centre", scope_region=CITY)
        self.officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
        self.worker = accounts.client("worker", "grid_worker", grids=[A1])
        body = {"code": "FIRE", "name": "消防", "region_code": COMMUNITY_A}
        self.dept = ok(admin.post("/api/v1/departments", json=body), 201)["id"]
        self.member = self.department_member("member", self.dept, COMMUNITY_A)

    def department_member(self, username: str, dept: int, scope_region: str) -> Any:
        body = {
            "username": username,
            "password": PASSWORD,
            "role": "department",
            "scope_region": scope_region,
            "department_id": dept,
        }
        self.accounts.ids[username] = ok(self.admin.post("/api/v1/users", json=body), 201)["id"]
        return self.accounts.client(username)

    def id(self, username: str) -> int:
        return self.accounts.ids[username]

    def actor(self, username: str) -> str:
        return f"user:{self.id(username)}"

    def report(self, who: Any = None, col: int = 0, **extra: Any) -> dict[str, Any]:
        body = report_body(*center(col), **extra)
        return ok((who or self.admin).post("/api/v1/cases", json=body), 201)

    def get(self, case_id: int) -> dict[str, Any]:
        return ok(self.admin.get(f"/api/v1/cases/{case_id}"))

    def etag(self, case_id: int) -> str:
        r = self.admin.get(f"/api/v1/cases/{case_id}")
        assert r.status_code == 200
        return r.headers["ETag"]

    def post(self, who: Any, case_id: int, action: str, **data: Any) -> Any:
        """Send ``action`` with the case's current ETag; return the response."""
        return who.post(
            f"/api/v1/cases/{case_id}/transitions",
            json={"action": action, **data},
            headers={"If-Match": self.etag(case_id)},
        )

    def act(self, who: Any, case_id: int, action: str, **data: Any) -> dict[str, Any]:
        """Take ``action``, which must succeed; return the case (one version later)."""
        before = self.get(case_id)["version"]
        r = self.post(who, case_id, action, **data)
        assert r.status_code == 200, (action, r.status_code, r.get_json())
        body = r.get_json()
        # One step, one version (dispatch to a worker bumped it twice before no_autoflush).
        assert body["version"] == before + 1, (action, before, body["version"])
        assert r.headers["ETag"] == f'"{case_id}-{body["version"]}"'
        return body

    def timeline(self, case_id: int) -> list[dict[str, Any]]:
        return ok(self.admin.get(f"/api/v1/cases/{case_id}/timeline"))["items"]

    def steps(self, case_id: int) -> list[tuple[str, str | None, str, str]]:
        """Return the timeline as (action, from, to, who)."""
        return [
            (e["action"], e["from_status"], e["to_status"], e["actor"])
            for e in self.timeline(case_id)
        ]

    def to_filed(self, case_id: int) -> dict[str, Any]:
        self.act(self.office, case_id, "accept")
        return self.act(self.office, case_id, "file")

    def to_handling(self, case_id: int) -> dict[str, Any]:
        self.to_filed(case_id)
        self.act(self.office, case_id, "dispatch", assignee_id=self.id("worker"))
        return self.act(self.worker, case_id, "sign")

    def to_closed(self, case_id: int) -> dict[str, Any]:
        self.to_handling(case_id)
        self.act(self.worker, case_id, "feedback", comment="已清理")
        self.act(self.office, case_id, "verify_pass")
        return self.act(self.office, case_id, "close")


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def when(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@pytest.fixture
def desk(app, accounts, client, factory):  # type: ignore[no-untyped-def]
    factory.regions()
    factory.grid_version()
    return Desk(app, accounts, client)


# --- the main road --------------------------------------------------------------------------


def test_report_to_rating_on_the_main_road(desk, app, session):
    d = desk
    reported = d.report(d.worker)
    cid = reported["id"]
    assert reported["status"] == "reported"
    assert reported["reporter"] == d.actor("worker")
    accepted = d.act(d.office, cid, "accept")
    assert accepted["status"] == "accepted" and accepted["deadlines"]["handle"] is None

    filed = d.act(d.office, cid, "file", comment="立案")
    assert filed["status"] == "filed"
    handle_due = when(filed["deadlines"]["handle"])
    assert handle_due is not None and handle_due > when(filed["updated_at"])
    # Category 0101 is handled within 4 working hours of filing.
    calendar = app.extensions["gridapi"].calendar(session)
    assert handle_due == add_limit(calendar, when(filed["updated_at"]), 4, "hours")

    dispatched = d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    assert dispatched["status"] == "dispatched"
    assert dispatched["responsible"] == {
        "unit": {"code": TOWNSHIP, "name": "平江街道"},
        "department_id": None,
        "assignee_id": d.id("worker"),
    }
    # The office may still act for its worker (sign, return, ask for time); there is no
    # request to decide yet.
    assert dispatched["allowed_actions"] == [
        "sign",
        "return",
        "request_extension",
        "supervise",
        "duplicate",
    ]
    worker_view = ok(d.worker.get(f"/api/v1/cases/{cid}"))
    assert worker_view["allowed_actions"] == ["sign", "return", "request_extension"]

    handling = d.act(d.worker, cid, "sign")
    assert handling["status"] == "handling"
    feedback = d.act(d.worker, cid, "feedback", comment="已清理完毕")
    assert feedback["status"] == "feedback"
    verify_due = when(feedback["deadlines"]["verify"])
    assert verify_due == add_limit(calendar, when(feedback["updated_at"]), 1, "days")

    verified = d.act(d.office, cid, "verify_pass", comment="现场核查通过")
    assert verified["status"] == "verified"
    closed = d.act(d.office, cid, "close")
    assert closed["status"] == "closed" and closed["allowed_actions"] == ["reopen"]
    assert (closed["rework_count"], closed["extension_count"], closed["reopen_count"]) == (0, 0, 0)

    rated = ok(d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 5, "comment": "满意"}))
    assert rated["satisfaction"]["score"] == 5 and rated["satisfaction"]["comment"] == "满意"
    again = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 1})
    assert again.status_code == 409, again.get_json()
    assert d.get(cid)["satisfaction"]["score"] == 5

    office, worker = d.actor("office"), d.actor("worker")
    assert d.steps(cid) == [
        ("report", None, "reported", worker),
        ("accept", "reported", "accepted", office),
        ("file", "accepted", "filed", office),
        ("dispatch", "filed", "dispatched", office),
        ("sign", "dispatched", "handling", worker),
        ("feedback", "handling", "feedback", worker),
        ("verify_pass", "feedback", "verified", office),
        ("close", "verified", "closed", office),
        ("rate", "closed", "closed", worker),
    ]
    events = d.timeline(cid)
    assert [e["seq"] for e in events] == list(range(1, 10))
    assert events[2]["comment"] == "立案"
    assert events[2]["data"] == {
        "handle_due_at": handle_due.isoformat(),
        "handle_limit": 4,  # what it was counted with: a calendar edit counts it again so
        "handle_unit": "hours",
        "from_unit": COMMUNITY_A,
        "to_unit": TOWNSHIP,
    }
    assert events[3]["data"] == {"assignee_id": d.id("worker")}
    assert events[5]["comment"] == "已清理完毕"
    assert events[5]["data"] == {
        "verify_due_at": verify_due.isoformat(),
        "verify_limit": 1,
        "verify_unit": "days",
    }
    assert events[6]["comment"] == "现场核查通过"
    assert events[8]["data"] == {"score": 5}
    assert {e["actor_name"] for e in events} == {"office", "worker"}
    # The community takes the report in; from filing on the township holds the case.
    assert [e["unit"] for e in events[:2]] == [COMMUNITY_A, COMMUNITY_A]
    assert all(e["unit"] == TOWNSHIP for e in events[2:])
    # One audit row per step (the report and the rating included).
    audit = session.execute(
        text(
            "SELECT action FROM audit_log WHERE object_type = 'case' AND object_id = :id "
            "ORDER BY id"
        ),
        {"id": str(cid)},
    ).scalars()
    assert list(audit) == [
        "case.report",
        "case.accept",
        "case.file",
        "case.dispatch",
        "case.sign",
        "case.feedback",
        "case.verify_pass",
        "case.close",
        "case.rate",
    ]


def test_a_reopen_clears_the_rating_and_the_next_closure_is_rated(desk):
    """After a reopen the earlier rating stayed on the case and the next closure could not
    be rated (409 "rated already"): the reopen clears it, the timeline keeps it."""
    d = desk
    cid = d.report(d.worker)["id"]
    d.to_closed(cid)
    rated = ok(d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 1, "comment": "没修好"}))
    assert rated["satisfaction"]["score"] == 1
    reopened = d.act(d.office, cid, "reopen", comment="群众反映问题复发")
    assert reopened["satisfaction"] is None and d.get(cid)["satisfaction"] is None
    assert d.timeline(cid)[-1]["data"]["earlier_score"] == 1
    early = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 5})
    assert early.status_code == 409, early.get_json()  # not closed yet
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "feedback", comment="已修复")
    d.act(d.office, cid, "verify_pass")
    d.act(d.office, cid, "close")
    again = ok(d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 5, "comment": "满意"}))
    assert again["satisfaction"]["score"] == 5 and again["satisfaction"]["comment"] == "满意"
    assert d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 4}).status_code == 409
    rates = [(e["data"], e["comment"]) for e in d.timeline(cid) if e["action"] == "rate"]
    assert rates == [({"score": 1}, "没修好"), ({"score": 5}, "满意")]


def test_the_rating_answers_the_etag_of_the_version_it_made(desk):
    """A rating makes a new version of the case, but its answer had no ETag: a phone kept the
    one of the closure, and its next step (reopen) was refused 412."""
    d = desk
    cid = d.report(d.worker)["id"]
    closed = d.to_closed(cid)
    r = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 4})
    assert r.status_code == 200, r.get_json()
    version = r.get_json()["version"]
    assert version == closed["version"] + 1
    assert r.headers["ETag"] == f'"{cid}-{version}"' == d.etag(cid)
    reopen = d.office.post(
        f"/api/v1/cases/{cid}/transitions",
        json={"action": "reopen", "comment": "问题复发"},
        headers={"If-Match": r.headers["ETag"]},
    )
    assert reopen.status_code == 200, reopen.get_json()


def test_rating_only_by_the_reporter_and_only_when_closed(desk):
    d = desk
    cid = d.report(d.worker)["id"]
    early = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 4})
    assert early.status_code == 409, early.get_json()
    d.to_closed(cid)
    for stranger in (d.office, d.admin):
        r = stranger.post(f"/api/v1/cases/{cid}/rating", json={"score": 1})
        assert r.status_code == 403, r.get_json()
    bad = d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 6})
    assert bad.status_code == 422
    assert d.get(cid)["satisfaction"] is None
    assert ok(d.worker.post(f"/api/v1/cases/{cid}/rating", json={"score": 4}))["satisfaction"]


# --- other roads ----------------------------------------------------------------------------


def test_resolved_on_the_spot_and_a_failed_check_goes_back_to_the_office(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    spot = d.act(d.office, cid, "feedback", comment="现场已处置")
    assert spot["status"] == "feedback" and spot["deadlines"]["verify"] is not None
    assert spot["responsible"]["assignee_id"] is None
    event = d.timeline(cid)[-1]
    assert (event["action"], event["from_status"], event["to_status"]) == (
        "feedback",
        "filed",
        "feedback",
    )
    assert event["data"]["on_the_spot"] is True
    failed = d.act(d.office, cid, "verify_fail", comment="仍有垃圾")
    # Nobody was dispatched: the rework is the office's own.
    assert failed["status"] == "filed"
    assert failed["rework_count"] == 1 and failed["deadlines"]["verify"] is None
    assert d.timeline(cid)[-1]["data"] == {"rework": 1}


def test_a_failed_check_sends_the_case_back_to_the_same_worker(desk):
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "feedback", comment="已清理")
    missing_reason = d.post(d.office, cid, "verify_fail")
    assert missing_reason.status_code == 422
    assert missing_reason.get_json()["errors"]["json"]["comment"]
    failed = d.act(d.office, cid, "verify_fail", comment="仍有垃圾")
    assert failed["status"] == "dispatched"
    assert failed["responsible"]["assignee_id"] == d.id("worker")
    assert failed["rework_count"] == 1 and failed["deadlines"]["verify"] is None
    assert ok(d.worker.get(f"/api/v1/cases/{cid}"))["allowed_actions"] == [
        "sign",
        "return",
        "request_extension",
    ]
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "feedback", comment="再次清理")
    d.act(d.office, cid, "verify_fail", comment="还是不行")
    assert d.get(cid)["rework_count"] == 2
    rework = [e for e in d.timeline(cid) if e["action"] == "verify_fail"]
    assert [(e["data"], e["comment"], e["to_status"]) for e in rework] == [
        ({"rework": 1}, "仍有垃圾", "dispatched"),
        ({"rework": 2}, "还是不行", "dispatched"),
    ]


def test_a_failed_check_tells_the_department_nobody_of_it_signed_for(desk, session):
    """The office signed a department's case on its behalf, a member reported back, the
    check failed: the case went back to the department (dispatched) and nobody was told,
    as the dispatch had told the department."""
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    d.act(d.office, cid, "sign")
    d.act(d.member, cid, "feedback", comment="已整改")
    failed = d.act(d.office, cid, "verify_fail", comment="仍未整改")
    assert failed["status"] == "dispatched"
    assert failed["responsible"]["department_id"] == d.dept
    notices = session.execute(
        text(
            "SELECT user_id, region_code, department_id, message FROM notifications"
            " WHERE case_id = :id AND kind LIKE 'rework:%'"
        ),
        {"id": cid},
    ).all()
    assert [tuple(n) for n in notices] == [
        (None, None, d.dept, f"事件 {failed['number']} 核查未通过，请返工")
    ]


def test_a_rework_overdue_at_once_is_still_one_version(desk, app):
    """Sent back for rework after the handling deadline, the case is overdue at once: the
    step flagged it in a second update, so the step made two versions (6 → 8)."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "feedback", comment="已清理")
    passed = datetime.now(UTC) - timedelta(days=2)
    with app.extensions["gridapi"].sessions.begin() as s:
        s.execute(update(Case).where(Case.id == cid).values(handle_due_at=passed))
    failed = d.act(d.office, cid, "verify_fail", comment="仍有垃圾")  # one version more
    assert failed["overdue"] is True and when(failed["overdue_since"]) == passed
    assert [e["action"] for e in d.timeline(cid)[-2:]] == ["verify_fail", "overdue"]


def test_rework_of_a_case_overdue_at_verification_is_overdue_at_handling(desk, app):
    """A case overdue against its verification deadline, which fell on the instant of its
    passed handling deadline, sent back for rework: overdue against the handling deadline,
    with its row and notice. The step took the flag as the handling stage's (same
    instant) and wrote neither."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "feedback", comment="已清理")
    passed = datetime.now(UTC) - timedelta(days=2)
    with app.extensions["gridapi"].sessions.begin() as s:
        s.execute(
            update(Case)
            .where(Case.id == cid)
            .values(handle_due_at=passed, verify_due_at=passed, overdue=True, overdue_since=passed)
        )
    failed = d.act(d.office, cid, "verify_fail", comment="仍有垃圾")
    assert failed["overdue"] is True and when(failed["overdue_since"]) == passed
    row = d.timeline(cid)[-1]
    assert (row["action"], row["data"]["stage"]) == ("overdue", "handle")


def test_a_lower_unit_returns_a_case_handed_down_to_it(desk, accounts):
    """A community handed a case that is not its own (交办) had no 回退 to the township
    that handed it down, only 上报, which counted as an escalation. It returns it now: the
    township holds it again, filed, with its deadline, told in its inbox; no escalation."""
    d = desk
    cid = d.report()["id"]
    filed = d.to_filed(cid)
    assert "return" not in filed["allowed_actions"]  # held where it was filed: nobody above
    refused = d.post(d.office, cid, "return", comment="不属于本街道")
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["errors"]["action"] == ["not handed down"]
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    assert "return" in ok(d.officer.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    # The township takes it back by transferring it, not by returning it to itself.
    assert "return" not in d.get(cid)["allowed_actions"]
    assert d.post(d.office, cid, "return", comment="收回").status_code == 403
    assert d.post(d.officer, cid, "return").status_code == 422  # say why
    returned = d.act(d.officer, cid, "return", comment="不属于本社区")
    assert returned["status"] == "filed"
    assert returned["responsible"]["unit"]["code"] == TOWNSHIP
    assert returned["deadlines"]["handle"] == filed["deadlines"]["handle"]
    assert returned["escalation_count"] == 0
    row = d.timeline(cid)[-1]
    assert (row["action"], row["from_status"], row["to_status"], row["unit"]) == (
        "return",
        "filed",
        "filed",
        TOWNSHIP,
    )
    assert row["data"] == {"from_unit": COMMUNITY_A, "to_unit": TOWNSHIP}
    assert row["comment"] == "不属于本社区"
    inbox = ok(d.office.get("/api/v1/me/notifications"))["items"]
    assert [(n["kind"], n["case_id"]) for n in inbox] == [("returned", cid)]
    # Back with the township, the community has nothing to return and no office step.
    assert "return" not in ok(d.officer.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    assert "return" not in returned["allowed_actions"]


def test_a_case_handed_down_twice_goes_back_one_level(desk):
    """Handed down by the county to the township, then by the township to the community:
    the community returns it to the township; moved on by a transfer, it has nobody to
    return it to."""
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "escalate", comment="需区级协调")
    d.act(d.county, cid, "dispatch", unit=TOWNSHIP, comment="交办平江街道")
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    back = d.act(d.officer, cid, "return", comment="不属于本社区")
    assert back["responsible"]["unit"]["code"] == TOWNSHIP
    assert back["escalation_count"] == 1  # the escalation by hand, not the return
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="再次交办")
    d.act(d.office, cid, "transfer", unit=COMMUNITY_B, comment="属观前社区")
    refused = d.post(d.office, cid, "return", comment="退回")
    assert refused.status_code == 409, refused.get_json()


def test_each_return_goes_back_one_level_of_a_chain_of_hand_downs(desk):
    """County → township → community: the community returns the case to the township, and
    the township then returns it to the county (it had nobody to return it to: the return
    cleared the county's hand-down). Handed down again meanwhile, it still goes back one
    level at a time; at the county, which got it by escalation, there is nobody above."""
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "escalate", comment="需区级协调")
    d.act(d.county, cid, "dispatch", unit=TOWNSHIP, comment="交办平江街道")
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    back = d.act(d.officer, cid, "return", comment="不属于本社区")
    assert back["responsible"]["unit"]["code"] == TOWNSHIP
    assert "return" in ok(d.office.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    assert "return" not in ok(d.county.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    # Handed down again and returned again: still the county's hand-down above.
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="再次交办")
    d.act(d.officer, cid, "return", comment="仍不属于本社区")
    up = d.act(d.office, cid, "return", comment="不属于本街道")
    assert up["status"] == "filed"
    assert up["responsible"]["unit"]["code"] == COUNTY
    assert up["escalation_count"] == 1  # the escalation by hand only
    row = d.timeline(cid)[-1]
    assert (row["action"], row["from_status"], row["to_status"], row["unit"]) == (
        "return",
        "filed",
        "filed",
        COUNTY,
    )
    assert row["data"] == {"from_unit": TOWNSHIP, "to_unit": COUNTY}
    inbox = ok(d.county.get("/api/v1/me/notifications"))["items"]
    assert ("returned", cid) in [(n["kind"], n["case_id"]) for n in inbox]
    # At the county, which it reached by escalation: nobody to return it to.
    assert "return" not in ok(d.county.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    refused = d.post(d.county, cid, "return", comment="退回")
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["errors"]["action"] == ["not handed down"]
    # Handed down from the county anew, the chain starts again from there.
    d.act(d.county, cid, "dispatch", unit=TOWNSHIP, comment="重新交办")
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办")
    d.act(d.officer, cid, "return", comment="退回街道")
    assert d.act(d.office, cid, "return", comment="退回区")["responsible"]["unit"]["code"] == (
        COUNTY
    )


def test_a_transfer_ends_the_chain_of_hand_downs(desk, accounts):
    """Handed down county → township → community A, then transferred by the township to
    community B, which returns nothing; nor does the township once it has taken the case
    back by transferring it to itself: the county's hand-down went with the first transfer,
    and a later return does not bring it back."""
    d = desk
    officer_b = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "escalate", comment="需区级协调")
    d.act(d.county, cid, "dispatch", unit=TOWNSHIP, comment="交办平江街道")
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    d.act(d.office, cid, "transfer", unit=COMMUNITY_B, comment="属观前社区")
    refused = d.post(officer_b, cid, "return", comment="退回")
    assert refused.status_code == 409, refused.get_json()
    d.act(d.office, cid, "transfer", unit=TOWNSHIP, comment="收回街道")
    d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    back = d.act(d.officer, cid, "return", comment="退回")
    assert back["responsible"]["unit"]["code"] == TOWNSHIP
    refused = d.post(d.office, cid, "return", comment="退回区")
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["errors"]["action"] == ["not handed down"]


def test_dispatch_to_a_department_and_a_member_signs(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    dispatched = d.act(d.office, cid, "dispatch", department_id=d.dept)
    assert dispatched["status"] == "dispatched"
    assert dispatched["responsible"]["department_id"] == d.dept
    assert dispatched["responsible"]["assignee_id"] is None
    member_view = ok(d.member.get(f"/api/v1/cases/{cid}"))
    assert member_view["allowed_actions"] == ["sign", "return", "request_extension"]
    signed = d.act(d.member, cid, "sign")
    # The member who signs becomes the handler.
    assert signed["status"] == "handling"
    assert signed["responsible"]["assignee_id"] == d.id("member")
    assert signed["responsible"]["department_id"] == d.dept
    d.act(d.member, cid, "feedback", comment="已整改")
    assert d.steps(cid)[-3:] == [
        ("dispatch", "filed", "dispatched", d.actor("office")),
        ("sign", "dispatched", "handling", d.actor("member")),
        ("feedback", "handling", "feedback", d.actor("member")),
    ]
    assert d.timeline(cid)[-3]["data"] == {"department_id": d.dept}


def test_the_member_who_signs_a_rework_becomes_its_handler(desk, session):
    """A check failed and the case went back to the department with the member who had
    handled it as its assignee; another member signed the rework and did it, but the first
    stayed the handler (told of its deadlines and supervision, shown in the queue "mine")."""
    d = desk
    other = d.department_member("member2", d.dept, COMMUNITY_A)
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    d.act(d.member, cid, "sign")
    d.act(d.member, cid, "feedback", comment="已整改")
    d.act(d.office, cid, "verify_fail", comment="仍未整改")
    signed = d.act(other, cid, "sign")
    assert signed["responsible"]["assignee_id"] == d.id("member2")
    assert signed["responsible"]["department_id"] == d.dept
    assert d.timeline(cid)[-1]["data"] == {"previous_assignee_id": d.id("member")}
    mine = ok(other.get("/api/v1/cases?assignee=me"))["items"]
    assert [c["id"] for c in mine] == [cid]
    # The first member, still of the department, may yet act for it.
    assert "feedback" in ok(d.member.get(f"/api/v1/cases/{cid}"))["allowed_actions"]


def test_an_office_signing_for_a_department_does_not_become_its_handler(desk):
    """The township office signed a case dispatched to a department and became its assignee:
    rework and supervision notices then went to the office, and no member could take it."""
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    signed = d.act(d.office, cid, "sign")
    assert signed["status"] == "handling"
    assert signed["responsible"]["assignee_id"] is None
    assert signed["responsible"]["department_id"] == d.dept
    # Returned by the department: its id is named as a department's, not as a user's.
    returned = d.act(d.member, cid, "return", comment="不属于本部门")
    assert returned["status"] == "filed"
    assert d.timeline(cid)[-1]["data"] == {"department_id": d.dept}
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    d.act(d.member, cid, "sign")
    d.act(d.member, cid, "feedback", comment="已整改")  # the department still holds it
    assert d.steps(cid)[-1] == ("feedback", "handling", "feedback", d.actor("member"))


def test_a_township_dispatches_to_a_department_of_its_county(desk):
    """The county's fire brigade serves every township: the township office holding a fire
    hazard (handler department:fire) dispatches to it, and its members sign. It was 422
    "no active department in your scope": the department lies above the township."""
    d = desk
    body = {"code": "fire", "name": "姑苏区消防救援大队", "region_code": COUNTY}
    brigade = ok(d.admin.post("/api/v1/departments", json=body), 201)["id"]
    firefighter = d.department_member("firefighter", brigade, COUNTY)
    cid = d.report(category="5301", attributes={"hazard": ["消防通道堵塞"]})["id"]
    d.to_filed(cid)
    assert d.get(cid)["responsible"]["unit"]["code"] == TOWNSHIP
    dispatched = d.act(d.office, cid, "dispatch", department_id=brigade)
    assert dispatched["responsible"]["department_id"] == brigade
    assert d.act(firefighter, cid, "sign")["responsible"]["assignee_id"] == d.id("firefighter")


def test_dispatch_needs_exactly_one_target_in_the_dispatchers_area(desk, accounts):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    for body in ({}, {"assignee_id": d.id("worker"), "department_id": d.dept}):
        r = d.post(d.office, cid, "dispatch", **body)
        assert r.status_code == 422, (body, r.get_json())
    stranger = accounts.create("stranger", "grid_worker", grids=[COMMUNITY_B + "001"])
    other_dept = ok(
        d.admin.post(
            "/api/v1/departments", json={"code": "FAR", "name": "远方", "region_code": CITY}
        ),
        201,
    )["id"]
    for body, field in (
        ({"assignee_id": 999_999}, "assignee_id"),
        ({"department_id": other_dept}, "department_id"),  # the city's, above the township
        ({"unit": TOWNSHIP}, "unit"),  # not lower than the township itself
        ({"unit": "320508009001"}, "unit"),  # no such region
        ({"unit": COUNTY}, "unit"),  # above the township
    ):
        r = d.post(d.office, cid, "dispatch", **body)
        assert r.status_code == 422, (body, r.get_json())
        assert field in r.get_json()["errors"]["json"], r.get_json()
    # The county above exists (the office reads its name): not "no region", and no
    # different from a unit that does not exist.
    above = d.post(d.office, cid, "dispatch", unit=COUNTY).get_json()
    assert above["errors"]["json"]["unit"] == [f"no region {COUNTY} in your scope"]
    missing = d.post(d.office, cid, "dispatch", unit="320508009001").get_json()
    assert missing["errors"]["json"]["unit"] == ["no region 320508009001 in your scope"]
    # A worker of community B is still in the township office's area.
    assert d.act(d.office, cid, "dispatch", assignee_id=stranger)["status"] == "dispatched"
    assert d.get(cid)["version"] == 4  # report 1, accept 2, file 3, dispatch 4: no 422 counted


def test_dispatch_to_a_community_whose_end_is_planned(desk):
    """A community with a planned end (a merger next month: valid_to set, still valid
    today) was refused as a unit: 422 "Unknown unit", as if it had ended already."""
    d = desk
    later = (clock.today() + timedelta(days=30)).isoformat()
    r = d.admin.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"valid_to": later})
    assert r.status_code == 200, r.get_json()
    cid = d.report()["id"]
    d.to_filed(cid)
    handed = d.act(d.office, cid, "dispatch", unit=COMMUNITY_A)
    assert (handed["status"], handed["responsible"]["unit"]["code"]) == ("filed", COMMUNITY_A)


def test_dispatch_to_a_lower_unit_and_the_community_dispatches_it(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    assert "dispatch" not in ok(d.officer.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    handed = d.act(d.office, cid, "dispatch", unit=COMMUNITY_A, comment="交办平江社区")
    # 交办: the community takes the case and is the office for it now; still filed.
    assert handed["status"] == "filed"
    assert handed["responsible"] == {
        "unit": {"code": COMMUNITY_A, "name": "平江社区"},
        "department_id": None,
        "assignee_id": None,
    }
    assert d.timeline(cid)[-1]["data"] == {"unit": COMMUNITY_A, "from_unit": TOWNSHIP}
    assert d.timeline(cid)[-1]["unit"] == COMMUNITY_A
    officer_view = ok(d.officer.get(f"/api/v1/cases/{cid}"))
    assert {"dispatch", "feedback", "cancel"} <= set(officer_view["allowed_actions"])
    lower_again = d.post(d.officer, cid, "dispatch", unit=COMMUNITY_A)
    assert lower_again.status_code == 422
    dispatched = d.act(d.officer, cid, "dispatch", assignee_id=d.id("worker"))
    assert dispatched["status"] == "dispatched"
    assert dispatched["responsible"]["unit"]["code"] == COMMUNITY_A
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "feedback", comment="已处置")
    d.act(d.officer, cid, "verify_pass")
    assert d.act(d.officer, cid, "close")["status"] == "closed"
    assert [s[3] for s in d.steps(cid)[3:]] == [
        d.actor("office"),
        d.actor("officer"),
        d.actor("worker"),
        d.actor("worker"),
        d.actor("officer"),
        d.actor("officer"),
    ]


def test_the_handler_returns_a_case_to_the_office(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    no_reason = d.post(d.worker, cid, "return")
    assert no_reason.status_code == 422
    returned = d.act(d.worker, cid, "return", comment="不属于本网格")
    assert returned["status"] == "filed"
    assert returned["responsible"]["assignee_id"] is None
    event = d.timeline(cid)[-1]
    assert (event["action"], event["from_status"], event["to_status"], event["actor"]) == (
        "return",
        "dispatched",
        "filed",
        d.actor("worker"),
    )
    assert (event["comment"], event["data"]) == ("不属于本网格", {"returned_by": d.id("worker")})
    # No longer the worker's: they see it (their grid) but may do nothing with it.
    assert ok(d.worker.get(f"/api/v1/cases/{cid}"))["allowed_actions"] == []
    # Returned while handling, too.
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    d.act(d.worker, cid, "sign")
    assert d.act(d.worker, cid, "return", comment="需要执法")["status"] == "filed"


def test_a_step_that_leaves_the_case_out_of_reach_answers_without_its_contents(desk):
    """A department member returning a family dispute (sensitive: read only by its offices,
    handler and reporter), or the township escalating one to the county, may no longer read
    it: its GET is a 404. The step's answer still carried the whole case (the parties'
    names, the description, the address), kept on the phone that may not read it. It now
    answers what the step did and withholds the contents, naming what it withholds."""
    d = desk
    parties = [{"role": "当事人", "name": "王某", "note": "男方"}]
    body = {"category": "5103", "description": "王某夫妻争吵", "parties": parties}
    masked = [{"role": "当事人", "name": "王*", "note": "男方"}]
    returned, escalated = d.report(**body)["id"], d.report(col=1, **body)["id"]
    d.to_filed(returned)
    d.act(d.office, returned, "dispatch", department_id=d.dept)
    d.act(d.member, returned, "sign")
    answer = d.act(d.member, returned, "return", comment="非本部门职责")
    assert (answer["status"], answer["responsible"]["unit"]["code"]) == ("filed", TOWNSHIP)
    assert answer["allowed_actions"] == []
    assert (answer["description"], answer["parties"], answer["address"]) == ("", [], "")
    assert answer["location"] == {"type": "Point", "coordinates": [0.0, 0.0]}
    assert "description" in answer["withheld"] and "parties" in answer["withheld"]
    assert d.member.get(f"/api/v1/cases/{returned}").status_code == 404
    full = ok(d.office.get(f"/api/v1/cases/{returned}"))
    assert (full["parties"], full["description"]) == (masked, "王某夫妻争吵")
    assert "withheld" not in full
    assert d.steps(returned)[-1] == ("return", "handling", "filed", d.actor("member"))

    d.to_filed(escalated)
    up = d.act(d.office, escalated, "escalate", comment="需区级协调")
    assert (up["status"], up["responsible"]["unit"]["code"]) == ("filed", COUNTY)
    assert (up["description"], up["parties"], up["reporter"]) == ("", [], "")
    assert d.office.get(f"/api/v1/cases/{escalated}").status_code == 404
    assert ok(d.county.get(f"/api/v1/cases/{escalated}"))["parties"] == masked
    # A step that leaves the case in reach answers it whole.
    kept = d.act(d.county, escalated, "dispatch", department_id=d.dept)
    assert kept["parties"] == masked and "withheld" not in kept


def test_the_township_escalates_to_the_county_and_up_to_the_city(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    up = d.act(d.office, cid, "escalate", comment="需区级协调")
    assert up["status"] == "filed"
    assert up["responsible"]["unit"] == {"code": COUNTY, "name": "姑苏区"}
    assert up["escalation_count"] == 1
    event = d.timeline(cid)[-1]
    assert event["data"] == {"from_unit": TOWNSHIP, "to_unit": COUNTY}
    assert event["comment"] == "需区级协调" and event["unit"] == COUNTY
    # The township sees the case (its area) but is no longer its office.
    assert ok(d.office.get(f"/api/v1/cases/{cid}"))["allowed_actions"] == []
    assert d.post(d.office, cid, "dispatch", unit=COMMUNITY_A).status_code == 403
    assert "dispatch" in ok(d.county.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    again = d.act(d.county, cid, "escalate", comment="需市级协调")
    assert again["responsible"]["unit"]["code"] == CITY and again["escalation_count"] == 2
    top = d.post(d.city, cid, "escalate", comment="再往上")
    assert top.status_code == 409, top.get_json()
    assert d.get(cid)["escalation_count"] == 2
    # An accepted case escalates too, and stays accepted.
    other = d.report(col=1)["id"]
    d.act(d.office, other, "accept")
    assert d.act(d.office, other, "escalate", comment="越级")["status"] == "accepted"


HUBEI, HUBEI_PSEUDO_CITY, XIANTAO = "420000000000", "429000000000", "429004000000"


@pytest.mark.parametrize("pseudo_city", ["without", "with", "ending", "planned"])
def test_a_province_administered_county_escalates_as_the_worker_would(desk, accounts, pseudo_city):
    """仙桃 (429004) is administered by the province; the regions may hold the pseudo-city
    429000 above it, or not. Without it, escalating from the county sent the case to
    429000000000, a unit that does not exist (no office, no name), where the worker's
    automatic escalation goes nowhere (nothing below the province). Both now follow one
    rule: to the pseudo-city when it exists today, else the county is the top.

    Today, not "the period without an end": a pseudo-city whose end is planned (valid_to
    next month) was not found, and the county's cases could not escalate at all; one
    planned to start next month took the cases before it existed."""
    d = desk
    later = (clock.today() + timedelta(days=30)).isoformat()
    rows = [{"code": HUBEI, "name": "湖北省"}]
    if pseudo_city in ("with", "ending"):
        rows.append({"code": HUBEI_PSEUDO_CITY, "name": "省直辖县级行政区划"})
    rows += [{"code": XIANTAO, "name": "仙桃市"}, {"code": "429004001000", "name": "沙嘴街道"}]
    ok(d.admin.post("/api/v1/regions/import", json=rows))
    if pseudo_city == "ending":
        body = {"valid_to": later}
        ok(d.admin.patch(f"/api/v1/regions/{HUBEI_PSEUDO_CITY}", json=body))
    elif pseudo_city == "planned":
        body = {"code": HUBEI_PSEUDO_CITY, "name": "省直辖县级行政区划", "valid_from": later}
        ok(d.admin.post("/api/v1/regions", json=body), 201)
    pseudo_city_today = pseudo_city in ("with", "ending")
    office = accounts.client("xt_office", "township_office", scope_region="429004001000")
    centre = accounts.client("xt_centre", "county_centre", scope_region=XIANTAO)
    # Far from every grid and region boundary: the case stays in the reporter's region.
    body = report_body(113.45, 30.36)
    cid = ok(office.post("/api/v1/cases", json=body), 201)["id"]
    d.act(office, cid, "accept")
    d.act(office, cid, "file")
    assert d.act(office, cid, "escalate", comment="需市级协调")["responsible"]["unit"] == {
        "code": XIANTAO,
        "name": "仙桃市",
    }
    shown = ok(centre.get(f"/api/v1/cases/{cid}"))
    if not pseudo_city_today:
        assert "escalate" not in shown["allowed_actions"]
        refused = d.post(centre, cid, "escalate", comment="再往上")
        assert refused.status_code == 409, refused.get_json()
        assert refused.get_json()["errors"]["action"] == ["nothing above the unit holding the case"]
        assert d.get(cid)["responsible"]["unit"]["code"] == XIANTAO
    else:
        assert "escalate" in shown["allowed_actions"]
        up = d.act(centre, cid, "escalate", comment="再往上")
        assert up["responsible"]["unit"] == {
            "code": HUBEI_PSEUDO_CITY,
            "name": "省直辖县级行政区划",
        }
        assert "escalate" not in d.get(cid)["allowed_actions"]  # a city level: the top


def test_a_worker_escalates_a_case_they_are_handling(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    # Not while only dispatched (sign first).
    early = d.post(d.worker, cid, "escalate", comment="处理不了")
    assert early.status_code == 409
    assert early.get_json()["errors"]["allowed_actions"] == ["sign", "return", "request_extension"]
    d.act(d.worker, cid, "sign")
    up = d.act(d.worker, cid, "escalate", comment="处理不了")
    assert up["status"] == "filed"
    assert up["responsible"] == {
        "unit": {"code": COUNTY, "name": "姑苏区"},
        "department_id": None,
        "assignee_id": None,
    }
    assert up["escalation_count"] == 1
    assert d.steps(cid)[-1] == ("escalate", "handling", "filed", d.actor("worker"))


def test_transfer_to_another_unit(desk):
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    assert d.post(d.office, cid, "transfer", unit=COMMUNITY_B).status_code == 422  # no reason
    same = d.post(d.office, cid, "transfer", unit=TOWNSHIP, comment="转办")
    assert same.status_code == 422 and "unit" in same.get_json()["errors"]["json"]
    elsewhere = d.post(d.office, cid, "transfer", unit="320602001001", comment="转办")
    assert elsewhere.status_code == 422  # no such region, and not the township's anyway
    moved = d.act(d.office, cid, "transfer", unit=COMMUNITY_B, comment="属观前社区")
    assert moved["status"] == "filed"
    assert moved["responsible"]["unit"] == {"code": COMMUNITY_B, "name": "观前社区"}
    assert d.timeline(cid)[-1]["data"] == {"from_unit": TOWNSHIP, "to_unit": COMMUNITY_B}
    # Not transferable once dispatched.
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    late = d.post(d.office, cid, "transfer", unit=COMMUNITY_A, comment="再转")
    assert late.status_code == 409
    assert "transfer" not in late.get_json()["errors"]["allowed_actions"]


def test_extensions_are_requested_once_and_decided_by_the_office(desk, app, session):
    d = desk
    cid = d.report()["id"]
    handling = d.to_handling(cid)
    due = when(handling["deadlines"]["handle"])
    asked = d.act(d.worker, cid, "request_extension", amount=3, comment="需要更换设备")
    assert asked["status"] == "handling"
    request = asked["extension_request"]
    assert (request["amount"], request["unit"], request["reason"]) == (3, "days", "需要更换设备")
    assert request["requested_by"] == d.actor("worker")
    assert when(asked["deadlines"]["handle"]) == due  # nothing moves until approved
    twice = d.post(d.worker, cid, "request_extension", amount=1, comment="再要一天")
    assert twice.status_code == 409, twice.get_json()
    assert d.get(cid)["extension_request"]["amount"] == 3
    assert d.post(d.worker, cid, "approve_extension").status_code == 403  # not the worker's call

    approved = d.act(d.office, cid, "approve_extension", comment="同意")
    calendar = app.extensions["gridapi"].calendar(session)
    moved = add_limit(calendar, due, 3, "days")
    assert when(approved["deadlines"]["handle"]) == moved
    assert approved["extension_count"] == 1 and approved["extension_request"] is None
    assert approved["status"] == "handling"
    assert d.timeline(cid)[-1]["data"] == {
        "amount": 3,
        "unit": "days",
        "handle_due_before": due.isoformat(),
        "handle_due_at": moved.isoformat(),
    }
    nothing_pending = d.post(d.office, cid, "approve_extension")
    assert nothing_pending.status_code == 409

    d.act(d.worker, cid, "request_extension", amount=4, unit_of_time="hours", comment="再延")
    assert d.post(d.office, cid, "deny_extension").status_code == 422  # say why
    denied = d.act(d.office, cid, "deny_extension", comment="不予延期")
    assert denied["extension_request"] is None and denied["extension_count"] == 1
    assert when(denied["deadlines"]["handle"]) == moved
    assert d.timeline(cid)[-1]["data"] == {"amount": 4, "unit": "hours"}
    actions = [s[0] for s in d.steps(cid)[-4:]]
    assert actions == [
        "request_extension",
        "approve_extension",
        "request_extension",
        "deny_extension",
    ]


def test_an_extension_is_approved_by_someone_other_than_who_asked(desk):
    """The office asked for more time on its handler's behalf and approved its own request
    at once: the deadline moved with nobody deciding. Another office decides it (the county
    over the township), and the one who asked may still withdraw it (deny)."""
    d = desk
    cid = d.report()["id"]
    handling = d.to_handling(cid)
    d.act(d.office, cid, "request_extension", amount=3, comment="设备未到")
    view = ok(d.office.get(f"/api/v1/cases/{cid}"))
    assert "approve_extension" not in view["allowed_actions"]
    assert "deny_extension" in view["allowed_actions"]
    own = d.post(d.office, cid, "approve_extension", comment="同意")
    assert own.status_code == 403, own.get_json()
    assert set(own.get_json()) == {"code", "status", "message", "errors"}
    unchanged = d.get(cid)
    assert unchanged["extension_count"] == 0 and unchanged["extension_request"] is not None
    assert unchanged["deadlines"]["handle"] == handling["deadlines"]["handle"]
    assert "approve_extension" in ok(d.county.get(f"/api/v1/cases/{cid}"))["allowed_actions"]
    approved = d.act(d.county, cid, "approve_extension", comment="同意")
    assert approved["extension_count"] == 1
    assert approved["deadlines"]["handle"] != handling["deadlines"]["handle"]
    # Asked by the office again, it may take its own request back.
    d.act(d.office, cid, "request_extension", amount=1, comment="再延一天")
    withdrawn = d.act(d.office, cid, "deny_extension", comment="撤回")
    assert withdrawn["extension_request"] is None and withdrawn["extension_count"] == 1


def test_the_handler_does_not_verify_its_own_work(desk, accounts):
    """A grid chief dispatched a case of their own grid handled it, reported back and passed
    their own check (核查): nobody but the handler looked at the result. The chief verifies
    the work of others in their grids; the office verifies the chief's."""
    d = desk
    chief = accounts.client("chief", "grid_chief", grids=[A1, A2])
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("chief"))
    d.act(chief, cid, "sign")
    d.act(chief, cid, "feedback", comment="已清理")
    assert ok(chief.get(f"/api/v1/cases/{cid}"))["allowed_actions"] == []
    # Nor is it in the chief's 待核查, counted or listed.
    counts = {q["queue"]: q["count"] for q in ok(chief.get("/api/v1/cases/queues"))["items"]}
    assert counts["verify"] == 0
    assert ok(chief.get("/api/v1/cases?queue=verify"))["items"] == []
    assert [c["id"] for c in ok(d.office.get("/api/v1/cases?queue=verify"))["items"]] == [cid]
    for action in ("verify_pass", "verify_fail"):
        own = d.post(chief, cid, action, comment="自查")
        assert own.status_code == 403, (action, own.get_json())
        assert "own work" in own.get_json()["message"]
    assert d.get(cid)["status"] == "feedback" and d.get(cid)["rework_count"] == 0
    assert d.act(d.office, cid, "verify_pass")["status"] == "verified"
    # The worker's work in the chief's grid is the chief's to check.
    other = d.report()["id"]
    d.to_handling(other)
    d.act(d.worker, other, "feedback", comment="已清理")
    assert d.act(chief, other, "verify_pass")["status"] == "verified"
    # An office member the case was dispatched to is its handler too.
    third = d.report()["id"]
    d.to_filed(third)
    colleague = accounts.client("office_b", "township_office", scope_region=TOWNSHIP)
    d.act(d.office, third, "dispatch", assignee_id=d.id("office_b"))
    d.act(colleague, third, "sign")
    d.act(colleague, third, "feedback", comment="已处置")
    assert d.post(colleague, third, "verify_pass").status_code == 403
    assert d.act(d.office, third, "verify_pass")["status"] == "verified"


def test_the_unit_holding_a_case_does_not_lift_its_card(desk):
    """The county gave a township's case a red card (督办) and the township set it back to
    normal itself: the sanction was undone by the unit it judged. Lowering a level takes an
    office above the unit holding the case; raising one does not."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    assert d.get(cid)["responsible"]["unit"]["code"] == TOWNSHIP
    d.act(d.county, cid, "supervise", level="red", comment="严重超期")
    for level in ("normal", "yellow"):
        lifted = d.post(d.office, cid, "supervise", level=level, comment="已在处理")
        assert lifted.status_code == 403, (level, lifted.get_json())
        assert set(lifted.get_json()) == {"code", "status", "message", "errors"}
    assert d.get(cid)["supervision"] == "red"
    assert [e["data"]["level"] for e in d.timeline(cid) if e["action"] == "supervise"] == ["red"]
    assert d.act(d.county, cid, "supervise", level="normal", comment="已整改")["supervision"] == (
        "normal"
    )
    # The unit holding it may raise a level; the office above lowers it.
    assert d.act(d.office, cid, "supervise", level="yellow", comment="加快")["supervision"] == (
        "yellow"
    )
    # Nor does the county lift the city's card: the office that set it, or one above it, does.
    d.act(d.city, cid, "supervise", level="red", comment="市级督办")
    by_county = d.post(d.county, cid, "supervise", level="yellow", comment="已整改")
    assert by_county.status_code == 403, by_county.get_json()
    assert d.get(cid)["supervision"] == "red"
    assert d.act(d.city, cid, "supervise", level="normal", comment="已整改")["supervision"] == (
        "normal"
    )
    # A township lifts a card on a case a community holds (handed down to it).
    handed = d.report()["id"]
    d.to_filed(handed)
    d.act(d.office, handed, "dispatch", unit=COMMUNITY_A)
    d.act(d.office, handed, "supervise", level="yellow", comment="请加快")
    assert d.act(d.office, handed, "supervise", level="normal", comment="已整改")[
        "supervision"
    ] == ("normal")


@pytest.mark.parametrize("variant", ["set again", "set again by the unit", "raised above it"])
def test_an_office_does_not_take_over_a_card_given_above_it(desk, variant):
    """Who gave a card was read from the last supervise step alone, and setting a level
    again passed every check: the county set the city's red card again (or the carded
    township did) and then lifted it, or raised the city's yellow to red and lowered it to
    normal. The card stays the city's until the city (or one above it) lifts it; the
    county lifts only its own, down to the city's."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    if variant == "raised above it":
        d.act(d.city, cid, "supervise", level="yellow", comment="市级督办")
        d.act(d.county, cid, "supervise", level="red", comment="县级督办")
        assert d.post(d.county, cid, "supervise", level="normal").status_code == 403
        # Its own red it lowers, to the city's yellow.
        assert d.act(d.county, cid, "supervise", level="yellow")["supervision"] == "yellow"
        assert d.post(d.county, cid, "supervise", level="normal").status_code == 403
    else:
        d.act(d.city, cid, "supervise", level="red", comment="市级督办")
        again = d.county if variant == "set again" else d.office
        assert d.act(again, cid, "supervise", level="red", comment="再次督办")["supervision"] == (
            "red"
        )
        for level in ("yellow", "normal"):
            lifted = d.post(d.county, cid, "supervise", level=level, comment="已整改")
            assert lifted.status_code == 403, (level, lifted.get_json())
        # The city lowers its red to yellow: the yellow left is still the city's.
        assert d.act(d.city, cid, "supervise", level="yellow")["supervision"] == "yellow"
        assert d.post(d.county, cid, "supervise", level="normal").status_code == 403
    assert d.get(cid)["supervision"] == "yellow"
    assert d.act(d.city, cid, "supervise", level="normal", comment="已整改")["supervision"] == (
        "normal"
    )
    # Lifted, a card the county gives is the county's to lift.
    d.act(d.county, cid, "supervise", level="red", comment="县级督办")
    assert d.act(d.county, cid, "supervise", level="normal")["supervision"] == "normal"


@pytest.mark.parametrize("action", ["return", "escalate", "feedback", "duplicate"])
def test_a_step_that_ends_the_handling_withdraws_a_waiting_extension_request(desk, action):
    """A request for more time waits for the office; a step that ends the handling it asked
    time for takes it away, and its row says so. Closed as a duplicate, a handling case
    kept the request: a cancelled case showed a request waiting for ever. The others
    dropped it without a word (the timeline had the request and no end to it)."""
    d = desk
    original = d.report()["id"] if action == "duplicate" else None
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "request_extension", amount=2, comment="等配件")
    who = d.office if action == "duplicate" else d.worker
    extra = {"duplicate_of": original} if action == "duplicate" else {}
    after = d.act(who, cid, action, comment="原因", **extra)
    assert after["extension_request"] is None
    assert not {"approve_extension", "deny_extension"} & set(after["allowed_actions"])
    row = d.timeline(cid)[-1]
    assert row["action"] == action
    assert row["data"]["withdrawn_extension"] == {"amount": 2, "unit": "days"}
    assert d.get(cid)["extension_count"] == 0


def test_no_withdrawn_request_is_named_when_none_was_waiting(desk):
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "request_extension", amount=1, comment="等配件")
    d.act(d.office, cid, "deny_extension", comment="不予延期")
    d.act(d.worker, cid, "return", comment="不属于本网格")
    assert d.timeline(cid)[-1]["data"] == {"returned_by": d.id("worker")}


def test_an_extension_requests_reason_is_its_comment_as_kept(desk):
    """The timeline keeps a comment without its surrounding spaces; the request's reason
    kept them ("  等配件  "), so the two disagreed."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    asked = d.act(d.worker, cid, "request_extension", amount=1, comment="  等配件\n")
    assert asked["extension_request"]["reason"] == "等配件"
    assert d.timeline(cid)[-1]["comment"] == "等配件"


def test_a_field_only_another_action_takes_is_refused(desk):
    """Fields of another action were dropped without a word: an office approving "1 day"
    (amount 1) of a request for 3 approved the 3; a transfer naming a worker left the case
    with nobody."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "request_extension", amount=3, comment="需要更换设备")
    before = d.get(cid)
    one_day = d.post(d.office, cid, "approve_extension", amount=1, comment="只给一天")
    assert one_day.status_code == 422, one_day.get_json()
    assert one_day.get_json()["errors"]["json"] == {
        "amount": ["not a field of 'approve_extension' (only of request_extension)"]
    }
    for action, extra in (
        ("deny_extension", {"unit_of_time": "hours"}),
        ("supervise", {"level": "red", "duplicate_of": cid}),
        ("feedback", {"assignee_id": d.id("worker")}),
    ):
        r = d.post(d.office, cid, action, comment="原因", **extra)
        assert r.status_code == 422, (action, r.get_json())
        assert set(r.get_json()["errors"]["json"]) == set(extra) - {"level"}, r.get_json()
    assert d.get(cid) == before  # nothing changed
    # Null is no value: a form may send every field, those with a default too (comment,
    # evidence and unit_of_time answered 422 "Field may not be null").
    approved = d.act(d.office, cid, "approve_extension", amount=None, level=None, unit=None)
    assert approved["extension_count"] == 1
    asked = d.act(
        d.worker, cid, "request_extension", amount=2, unit_of_time=None, comment="仍缺配件"
    )
    assert (asked["extension_request"]["amount"], asked["extension_request"]["unit"]) == (
        2,
        "days",
    )
    d.act(d.office, cid, "approve_extension", comment=None, evidence=None)
    assert d.timeline(cid)[-1]["comment"] == "" and d.timeline(cid)[-1]["evidence"] == []

    filed = d.report(col=1)["id"]
    d.to_filed(filed)
    r = d.post(d.office, filed, "transfer", unit=COMMUNITY_B, assignee_id=d.id("worker"))
    assert r.status_code == 422 and set(r.get_json()["errors"]["json"]) == {"assignee_id"}


def test_every_field_of_a_transition_belongs_to_its_actions():
    from gridapi.schemas.cases import ACTION_FIELDS, TransitionSchema

    everyone = {"action", "comment", "evidence"}
    assert set(TransitionSchema().fields) == everyone | set(ACTION_FIELDS)
    assert all(takers <= set(ACTIONS) for takers in ACTION_FIELDS.values())


def test_allowed_actions_list_only_steps_that_would_work(desk):
    """A phone builds its buttons from allowed_actions: deciding an extension nobody asked
    for, asking twice, or escalating from the top were listed and then answered 409."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)

    def allowed(who: Any) -> list[str]:
        return ok(who.get(f"/api/v1/cases/{cid}"))["allowed_actions"]

    assert "request_extension" in allowed(d.worker)
    office = allowed(d.office)
    assert "approve_extension" not in office and "deny_extension" not in office
    refused = d.post(d.office, cid, "approve_extension")
    assert refused.status_code == 409
    assert refused.get_json()["errors"]["allowed_actions"] == office
    d.act(d.worker, cid, "request_extension", amount=1, comment="等配件")
    assert "request_extension" not in allowed(d.worker)
    assert {"approve_extension", "deny_extension"} <= set(allowed(d.office))
    twice = d.post(d.worker, cid, "request_extension", amount=1, comment="再要")
    assert twice.status_code == 409
    assert twice.get_json()["errors"]["allowed_actions"] == allowed(d.worker)
    # escalated to the city: nothing above it to escalate to
    d.act(d.office, cid, "deny_extension", comment="不予延期")
    d.act(d.worker, cid, "escalate", comment="处理不了")
    d.act(d.county, cid, "escalate", comment="需市级协调")
    assert "escalate" not in allowed(d.city) and "dispatch" in allowed(d.city)
    top = d.post(d.city, cid, "escalate", comment="再往上")
    assert top.status_code == 409
    assert top.get_json()["errors"]["allowed_actions"] == allowed(d.city)


def test_reopen_needs_a_reason(desk, app, session):
    d = desk
    cid = d.report()["id"]
    closed = d.to_closed(cid)
    silent = d.post(d.office, cid, "reopen")
    assert silent.status_code == 422
    assert silent.get_json()["errors"]["json"]["comment"] == ["required for 'reopen'"]
    blank = d.post(d.office, cid, "reopen", comment="   ")
    assert blank.status_code == 422
    assert d.get(cid)["version"] == closed["version"]
    reopened = d.act(d.office, cid, "reopen", comment="群众反映问题复发")
    assert reopened["status"] == "filed"
    assert reopened["reopen_count"] == 1
    assert reopened["responsible"]["assignee_id"] is None
    assert reopened["deadlines"]["verify"] is None
    # A new handling deadline from the moment of reopening.
    calendar = app.extensions["gridapi"].calendar(session)
    restarted = add_limit(calendar, when(reopened["updated_at"]), 4, "hours")
    assert when(reopened["deadlines"]["handle"]) == restarted
    event = d.timeline(cid)[-1]
    assert (event["from_status"], event["to_status"], event["comment"]) == (
        "closed",
        "filed",
        "群众反映问题复发",
    )
    assert event["data"] == {
        "handle_due_at": reopened["deadlines"]["handle"],
        "handle_limit": 4,
        "handle_unit": "hours",
    }


def test_a_closure_keeps_its_evaluation_in_its_timeline_row(desk, session):
    """DOMAIN §4: closed is terminal with an evaluation snapshot. The close row records the
    closure as the indicators judge it (the deadline in force, on time or late, working
    hours, reworks, extensions, supervision); a reopen clears the case's columns, and the
    first closure's row keeps what it was."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    late = datetime(2020, 1, 2, 9, 0, tzinfo=UTC)
    session.execute(update(Case).where(Case.id == cid).values(handle_due_at=late))
    session.commit()
    d.act(d.worker, cid, "feedback", comment="已清理")
    d.act(d.office, cid, "verify_fail", comment="仍有垃圾")  # past the deadline: overdue at once
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "feedback", comment="已清理干净")
    d.act(d.office, cid, "verify_pass")
    d.act(d.office, cid, "close")

    def hours() -> float:
        query = text("SELECT handling_hours FROM cases WHERE id = :id")
        value = session.execute(query, {"id": cid}).scalar()
        session.rollback()  # read afresh next time
        return value

    first = d.timeline(cid)[-1]
    snapshot = {
        "handling_hours": hours(),
        "handle_due_at": late.isoformat(),
        "on_time": False,
        "rework_count": 1,
        "extension_count": 0,
        "supervision": "yellow",
    }
    assert (first["action"], first["data"]) == ("close", snapshot)
    assert isinstance(snapshot["handling_hours"], float)
    audit = ok(d.admin.get("/api/v1/audit"))["items"]
    closing = [e for e in audit if e["action"] == "case.close"]
    assert closing[0]["summary"] == {"from": "verified", "to": "closed", **snapshot}

    reopened = d.act(d.office, cid, "reopen", comment="群众反映问题复发")
    d.act(d.office, cid, "feedback", comment="现场已处置")
    d.act(d.office, cid, "verify_pass")
    d.act(d.office, cid, "close")
    rows = [e for e in d.timeline(cid) if e["action"] == "close"]
    assert rows[0]["data"] == snapshot
    assert rows[1]["data"] == {
        "handling_hours": hours(),
        "handle_due_at": reopened["deadlines"]["handle"],
        "on_time": True,
        "rework_count": 1,
        "extension_count": 0,
        "supervision": "normal",  # the second life was not supervised
    }


def test_supervision_yellow_and_red_cards(desk, session):
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    assert d.post(d.county, cid, "supervise").status_code == 422  # which level?
    yellow = d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    assert (yellow["status"], yellow["supervision"]) == ("handling", "yellow")
    red = d.act(d.county, cid, "supervise", level="red")
    assert red["supervision"] == "red"
    events = d.timeline(cid)[-2:]
    assert [(e["data"], e["actor"], e["from_status"], e["to_status"]) for e in events] == [
        ({"level": "yellow", "previous": "normal"}, d.actor("county"), "handling", "handling"),
        ({"level": "red", "previous": "yellow"}, d.actor("county"), "handling", "handling"),
    ]
    assert ok(d.county.get("/api/v1/cases?supervision=red"))["items"][0]["id"] == cid
    # The worker handling it is told.
    notified = session.execute(
        text("SELECT count(*) FROM notifications WHERE case_id = :id AND user_id = :u"),
        {"id": cid, "u": d.id("worker")},
    ).scalar()
    assert notified >= 3  # dispatched, yellow, red
    # The worker may not supervise.
    assert d.post(d.worker, cid, "supervise", level="normal").status_code == 403


def test_a_reopened_case_is_supervised_afresh(desk):
    """A red card (督办) of the case's first life stayed on the case through its reopen: the
    reopened case was listed and shown as red-carded for a new handling nobody had judged
    yet. The closed case keeps the level it closed under (the close row too); the reopen
    starts the new life at normal and its row names the level it ended."""
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    d.act(d.county, cid, "supervise", level="red", comment="严重超期")
    d.act(d.worker, cid, "feedback", comment="已清理")
    d.act(d.office, cid, "verify_pass")
    closed = d.act(d.office, cid, "close")
    assert closed["supervision"] == "red"
    assert d.timeline(cid)[-1]["data"]["supervision"] == "red"
    reopened = d.act(d.office, cid, "reopen", comment="群众反映问题复发")
    assert reopened["supervision"] == "normal"
    event = d.timeline(cid)[-1]
    assert event["action"] == "reopen"
    assert event["data"]["earlier_supervision"] == "red"
    assert [e["data"]["level"] for e in d.timeline(cid) if e["action"] == "supervise"] == ["red"]
    assert cid not in [c["id"] for c in ok(d.county.get("/api/v1/cases?supervision=red"))["items"]]
    again = d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    assert again["supervision"] == "yellow"
    assert d.timeline(cid)[-1]["data"] == {"level": "yellow", "previous": "normal"}


def test_a_reopen_of_a_case_never_supervised_names_no_earlier_level(desk):
    d = desk
    cid = d.report()["id"]
    d.to_closed(cid)
    d.act(d.office, cid, "reopen", comment="问题复发")
    assert "earlier_supervision" not in d.timeline(cid)[-1]["data"]


def handled_today(who: Any) -> int:
    """The 处置反馈数 of the township over the days around today."""
    today = clock.today()
    query = f"region={TOWNSHIP}&from={today - timedelta(days=1)}&to={today + timedelta(days=2)}"
    return ok(who.get(f"/api/v1/indicators?{query}"))["indicators"]["handled"]


def test_a_return_escalation_or_reopen_ends_the_dispatch_the_indicators_count(desk):
    """处置反馈数 counts the dispatch → feedback leg (docs/indicators.md); on-the-spot
    handling has none. A case dispatched and then returned (回退), escalated (上报) or
    closed and reopened, and then handled on the spot by an office, still carried the
    dispatch it had ended: counted as handled by a handler who never gave its feedback."""
    d = desk
    returned, escalated, reopened, handled = (d.report(col=c)["id"] for c in range(4))
    d.to_filed(returned)
    d.act(d.office, returned, "dispatch", assignee_id=d.id("worker"))
    d.act(d.worker, returned, "return", comment="不属于本网格")
    d.act(d.office, returned, "feedback", comment="现场已处置")
    d.to_handling(escalated)
    d.act(d.worker, escalated, "escalate", comment="需区级协调")
    d.act(d.county, escalated, "feedback", comment="区级现场处置")
    d.to_closed(reopened)
    d.act(d.office, reopened, "reopen", comment="问题复发")
    d.act(d.office, reopened, "feedback", comment="现场已处置")
    for cid in (returned, escalated, reopened):
        assert d.timeline(cid)[-1]["data"] == {
            "verify_due_at": d.get(cid)["deadlines"]["verify"],
            "verify_limit": 1,
            "verify_unit": "days",
            "on_the_spot": True,
        }
    d.to_handling(handled)
    d.act(d.worker, handled, "feedback", comment="已清理")
    assert handled_today(d.admin) == 1
    # Dispatched again after the return: a leg again, and counted.
    d.act(d.office, returned, "verify_fail", comment="仍有问题")
    d.act(d.office, returned, "dispatch", assignee_id=d.id("worker"))
    d.act(d.worker, returned, "sign")
    d.act(d.worker, returned, "feedback", comment="已处置")
    assert handled_today(d.admin) == 2


def test_a_duplicate_is_cancelled_and_linked_both_ways(desk):
    d = desk
    original = d.report()["id"]
    copy = d.report()
    assert [p["id"] for p in copy["possible_duplicates"]] == [original]
    assert d.post(d.office, copy["id"], "duplicate", duplicate_of=copy["id"]).status_code == 422
    assert d.post(d.office, copy["id"], "duplicate", duplicate_of=999_999).status_code == 422
    assert d.post(d.office, copy["id"], "duplicate").status_code == 422
    etag_original = d.etag(original)
    dup = d.act(d.office, copy["id"], "duplicate", duplicate_of=original, comment="重复上报")
    # The original lists a new duplicate: a new version, which sync sends again.
    assert d.etag(original) != etag_original
    assert dup["status"] == "cancelled" and dup["duplicate_of"] == original
    assert dup["allowed_actions"] == []
    assert d.get(original)["duplicates"] == [copy["id"]]
    assert ok(d.office.get(f"/api/v1/cases/{original}"))["duplicates"] == [copy["id"]]
    event = d.timeline(copy["id"])[-1]
    assert event["data"] == {
        "duplicate_of": original,
        "duplicate_of_number": d.get(original)["number"],
    }
    # A case that is itself a duplicate cannot be the original of another.
    third = d.report()["id"]
    chained = d.post(d.office, third, "duplicate", duplicate_of=copy["id"])
    assert chained.status_code == 422
    assert chained.get_json()["errors"]["json"]["duplicate_of"] == [f"use case {original}"]
    # The original back onto its duplicate: told so (it said "use case <original>", itself).
    back = d.post(d.office, original, "duplicate", duplicate_of=copy["id"])
    assert back.status_code == 422
    assert back.get_json()["errors"]["json"]["duplicate_of"] == [
        f"case {copy['id']} is a duplicate of this case"
    ]
    # A rejected or cancelled case is followed up by nobody: not an original.
    rejected = d.report()["id"]
    d.act(d.office, rejected, "reject", comment="无效信息")
    onto = d.post(d.office, third, "duplicate", duplicate_of=rejected)
    assert onto.status_code == 422
    assert onto.get_json()["errors"]["json"]["duplicate_of"] == [f"case {rejected} is rejected"]
    assert d.get(third)["status"] == "reported"


def test_an_original_closed_as_a_duplicate_hands_its_duplicates_on(desk):
    """B was closed as a duplicate of A, then A as a duplicate of C: B kept pointing at A,
    cancelled and followed up by nobody, and C did not list it."""
    d = desk
    a, b, c = (d.report()["id"] for _ in range(3))
    d.act(d.office, b, "duplicate", duplicate_of=a, comment="重复上报")
    etag_b = d.etag(b)
    d.act(d.office, a, "duplicate", duplicate_of=c, comment="重复上报")
    assert d.get(b)["duplicate_of"] == c and d.get(a)["duplicate_of"] == c
    assert d.get(c)["duplicates"] == [a, b] and d.get(a)["duplicates"] == []
    assert d.etag(b) != etag_b  # a phone holding B learns of the change
    assert d.timeline(a)[-1]["data"]["moved_duplicates"] == [b]


def test_moving_duplicates_on_leaves_a_timeline_row_on_each_case(desk, session):
    """23 was a duplicate of 22; 22 closed as a duplicate of 24 moved 23 onto 24 (a new
    version) with no row in 23's timeline, and 24 got no row when reports were attached to it:
    now each moved report and the original say who did it, when, and which cases."""
    d = desk
    c22, c23, c24 = (d.report() for _ in range(3))
    d.act(d.office, c23["id"], "duplicate", duplicate_of=c22["id"], comment="重复上报")
    office = d.actor("office")
    first = d.timeline(c22["id"])[-1]
    assert (first["action"], first["from_status"], first["to_status"], first["actor"]) == (
        "duplicates_attached",
        "reported",
        "reported",
        office,
    )
    assert first["data"] == {"attached": [c23["id"]], "attached_numbers": [c23["number"]]}
    version_23, steps_24 = d.get(c23["id"])["version"], len(d.timeline(c24["id"]))

    d.act(d.office, c22["id"], "duplicate", duplicate_of=c24["id"], comment="重复上报")
    moved = d.timeline(c23["id"])[-1]
    assert (moved["action"], moved["from_status"], moved["to_status"], moved["actor"]) == (
        "duplicate_moved",
        "cancelled",
        "cancelled",
        office,
    )
    assert moved["actor_name"] == "office" and moved["at"] == d.timeline(c22["id"])[-1]["at"]
    assert moved["data"] == {
        "from_original": c22["id"],
        "from_original_number": c22["number"],
        "duplicate_of": c24["id"],
        "duplicate_of_number": c24["number"],
    }
    assert [e["seq"] for e in d.timeline(c23["id"])] == [1, 2, 3]
    assert d.get(c23["id"])["version"] == version_23 + 1
    attached = d.timeline(c24["id"])
    assert len(attached) == steps_24 + 1
    assert (attached[-1]["action"], attached[-1]["actor"]) == ("duplicates_attached", office)
    assert attached[-1]["data"] == {
        "attached": [c22["id"], c23["id"]],
        "attached_numbers": [c22["number"], c23["number"]],
    }
    # Webhook subscribers hear of both as steps of those cases.
    outbox = session.execute(
        text(
            "SELECT case_id, event_type, payload FROM webhook_events "
            "WHERE case_id IN (:a, :b) ORDER BY id"
        ),
        {"a": c23["id"], "b": c24["id"]},
    ).all()
    heard = [
        (case_id, kind, (p if isinstance(p, dict) else json.loads(p))["action"])
        for case_id, kind, p in outbox
    ]
    assert (c23["id"], "case.transitioned", "duplicate_moved") in heard
    assert (c24["id"], "case.transitioned", "duplicates_attached") in heard


def test_an_original_with_duplicates_is_not_cancelled(desk):
    d = desk
    original, copy = d.report()["id"], d.report()["id"]
    d.act(d.office, copy, "duplicate", duplicate_of=original, comment="重复上报")
    r = d.post(d.office, original, "cancel", comment="撤销")
    assert r.status_code == 409, r.get_json()
    errors = r.get_json()["errors"]
    assert errors["duplicates"] == [copy] and "cancel" not in errors["allowed_actions"]
    assert d.get(original)["status"] == "reported"


FOLLOWED_UP = "Other reports are closed as duplicates of this case: it is followed up for them."


@pytest.mark.parametrize("start", ["reported", "accepted"])
def test_an_original_with_duplicates_is_not_rejected(desk, start):
    """Rejecting the original left the reports closed as its duplicates with nobody
    following them up: refused as cancelling it is."""
    d = desk
    original, copy = d.report()["id"], d.report()["id"]
    if start == "accepted":
        d.act(d.office, original, "accept")
    d.act(d.office, copy, "duplicate", duplicate_of=original, comment="重复上报")
    before, steps = d.get(original), d.steps(original)
    r = d.post(d.office, original, "reject", comment="无效信息")
    assert r.status_code == 409, r.get_json()
    body = r.get_json()
    assert (body["code"], body["message"]) == (409, FOLLOWED_UP)
    assert body["errors"]["duplicates"] == [copy]
    assert not {"reject", "cancel"} & set(body["errors"]["allowed_actions"])
    after = d.get(original)
    assert (after["status"], after["version"]) == (start, before["version"])
    assert d.steps(original) == steps
    assert d.get(copy)["duplicate_of"] == original


def test_an_original_with_duplicates_offers_only_the_steps_that_work(desk):
    """The case read listed cancel (and reject) for an original with duplicates, which then
    answered 409 with a list leaving cancel out: the read, a list's item and every 409 now
    give one list, of steps that work."""
    d = desk
    original, copy = d.report()["id"], d.report()["id"]
    d.act(d.office, copy, "duplicate", duplicate_of=original, comment="重复上报")
    for state, offered in (
        ("reported", ["accept", "duplicate"]),
        ("accepted", ["file", "escalate", "supervise", "duplicate"]),
    ):
        if state == "accepted":
            d.act(d.office, original, "accept")
        shown = ok(d.office.get(f"/api/v1/cases/{original}"))["allowed_actions"]
        assert shown == offered, state
        items = ok(d.office.get("/api/v1/cases"))["items"]
        assert [c["allowed_actions"] for c in items if c["id"] == original] == [offered]
        for action in ("reject", "cancel", "close"):
            r = d.post(d.office, original, action, comment="无效信息")
            assert r.status_code == 409, (action, r.get_json())
            assert r.get_json()["errors"]["allowed_actions"] == offered, action
    # A case without duplicates is offered both, and the list says so too.
    other = d.report()["id"]
    d.act(d.office, other, "accept")
    assert ok(d.office.get(f"/api/v1/cases/{other}"))["allowed_actions"] == [
        "reject",
        "file",
        "escalate",
        "supervise",
        "duplicate",
        "cancel",
    ]


@pytest.mark.parametrize("action,start", [("cancel", "filed"), ("reject", "accepted")])
def test_cancel_and_reject_are_final_and_need_a_reason(desk, action, start):
    d = desk
    cid = d.report()["id"]
    d.act(d.office, cid, "accept")
    if start == "filed":
        d.act(d.office, cid, "file")
    assert d.post(d.office, cid, action).status_code == 422
    # Blank is no reason: spaces (ideographic too), or characters that show nothing.
    for blank in ("   ", "\u3000", "\u200b", "\ufeff\u200d "):
        r = d.post(d.office, cid, action, comment=blank)
        assert r.status_code == 422, (blank, r.get_json())
        assert r.get_json()["errors"]["json"]["comment"] == [f"required for '{action}'"]
    done = d.act(d.office, cid, action, comment="\u200b无效信息 ")
    assert d.timeline(cid)[-1]["comment"] == "无效信息"
    final = {"cancel": "cancelled", "reject": "rejected"}[action]
    assert done["status"] == final and done["allowed_actions"] == []
    assert d.steps(cid)[-1] == (action, start, final, d.actor("office"))
    for later in ("accept", "reopen", "supervise", "cancel"):
        extra = {"level": "red"} if later == "supervise" else {}  # only supervise takes one
        r = d.post(d.admin, cid, later, comment="x", **extra)
        assert r.status_code == 409, (later, r.get_json())
        assert r.get_json()["errors"]["allowed_actions"] == []


def test_an_action_the_state_does_not_allow_is_409_with_what_is_allowed(desk):
    d = desk
    cid = d.report()["id"]
    r = d.post(d.office, cid, "close")
    assert r.status_code == 409
    assert r.get_json()["errors"] == {
        "action": ["not allowed in state reported"],
        "allowed_actions": ["accept", "reject", "duplicate", "cancel"],
    }
    assert d.get(cid)["version"] == 1 and len(d.timeline(cid)) == 1
    # Without the permission the answer is 403 whatever the state.
    assert d.post(d.worker, cid, "close").status_code == 403


# --- If-Match -------------------------------------------------------------------------------


def transition(who: Any, case_id: int, etag: str | None, action: str = "accept") -> Any:
    headers = {} if etag is None else {"If-Match": etag}
    return who.post(
        f"/api/v1/cases/{case_id}/transitions", json={"action": action}, headers=headers
    )


def test_if_match_is_required_and_must_be_current(desk):
    d = desk
    cid = d.report()["id"]
    other = d.report(col=1)["id"]
    missing = transition(d.office, cid, None)
    assert missing.status_code == 428, missing.get_json()
    assert missing.get_json()["code"] == 428
    stale_tag = d.etag(cid)
    d.act(d.office, cid, "accept")
    before = d.get(cid)
    for tag in (stale_tag, '"garbage"', f'"{cid}-99"', d.etag(other)):
        stale = transition(d.office, cid, tag, "file")
        assert stale.status_code == 412, (tag, stale.get_json())
    assert stale.headers["ETag"] == f'"{cid}-2"'
    # Unchanged, and no timeline row.
    assert d.get(cid) == before
    assert [s[0] for s in d.steps(cid)] == ["report", "accept"]
    assert transition(d.office, cid, f'"{cid}-2"', "file").status_code == 200
    listed = transition(d.office, cid, f'"{other}-1", "{cid}-3"', "dispatch")
    assert listed.status_code == 422  # past If-Match: no target given
    bare = transition(d.office, cid, f"{cid}-3", "cancel")
    assert bare.status_code == 422  # past If-Match: cancel needs a reason
    assert d.get(cid)["version"] == 3


def test_another_cases_etag_is_not_this_cases(desk):
    """An ETag names one version of one case: the ETag of another case that happens to be at
    the same version must not pass (it did: only the number after the dash was compared)."""
    d = desk
    cid = d.report()["id"]
    other = d.report(col=1)["id"]
    r = transition(d.office, cid, f'"{other}-1"')
    assert r.status_code == 412, r.get_json()
    assert d.get(cid)["status"] == "reported"


def test_a_weak_etag_never_matches_and_star_matches_any_version(desk):
    """If-Match compares strongly (RFC 9110 §13.1.1): `W/"<id>-<version>"` of the current
    version was taken as the version itself, gzipped or not, alone or in a list."""
    d = desk
    cid = d.report()["id"]
    current = d.etag(cid)
    assert current == f'"{cid}-1"'
    stale = transition(d.office, cid, f'"{cid}-0"')
    for tag in (f"W/{current}", f'W/"{cid}-1:gzip"', f'W/"{cid}-1", "{cid}-0"'):
        weak = transition(d.office, cid, tag)
        assert weak.status_code == 412, (tag, weak.get_json())
        assert weak.get_json() == stale.get_json()  # the one error shape, the stale words
        assert weak.headers["ETag"] == current
    assert d.get(cid)["status"] == "reported"
    assert [s[0] for s in d.steps(cid)] == ["report"]
    # A strong tag among weak ones still matches; `*` matches whatever version it is at.
    listed = transition(d.office, cid, f'W/"{cid}-1", {current}')
    assert listed.status_code == 200, listed.get_json()
    star = transition(d.office, cid, "*", "file")
    assert star.status_code == 200, star.get_json()
    assert d.get(cid)["status"] == "filed" and d.get(cid)["version"] == 3


def race(clients: list[Any], send: Any) -> list[Any]:
    """Send one request from each client at the same moment (threads and a barrier)."""
    barrier = threading.Barrier(len(clients))
    answers: list[Any] = [None] * len(clients)
    errors: list[BaseException] = []

    def run(i: int, client: Any) -> None:
        try:
            barrier.wait(timeout=30)
            answers[i] = send(client)
        except BaseException as exc:  # noqa: BLE001  (reported below, in the test's thread)
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert all(a is not None for a in answers), "a request did not finish"
    return answers


def test_two_transitions_with_one_etag_exactly_one_wins(desk, accounts):
    d = desk
    cid = d.report()["id"]
    tag = d.etag(cid)
    offices = [accounts.client("office"), accounts.client("office")]
    answers = race(offices, lambda c: transition(c, cid, tag))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 412], [(a.status_code, a.get_json()) for a in answers]
    assert d.get(cid)["version"] == 2
    assert [s[0] for s in d.steps(cid)] == ["report", "accept"]


def test_concurrent_different_actions_with_one_etag(desk, accounts):
    """Accept and reject raced on one ETag: one of them, never both."""
    d = desk
    cid = d.report()["id"]
    tag = d.etag(cid)

    def send(pair: tuple[Any, str]) -> Any:
        client, action = pair
        return client.post(
            f"/api/v1/cases/{cid}/transitions",
            json={"action": action, "comment": "无效"},
            headers={"If-Match": tag},
        )

    pairs = [(accounts.client("office"), "accept"), (accounts.client("office"), "reject")]
    answers = race(pairs, send)
    assert sorted(a.status_code for a in answers) == [200, 412]
    winner = next(a.get_json() for a in answers if a.status_code == 200)
    assert d.get(cid)["status"] == winner["status"]
    assert len(d.timeline(cid)) == 2


def test_two_cases_closed_as_duplicates_of_each_other_at_once(desk, accounts, monkeypatch):
    """Two offices closing case X as a duplicate of Y and Y as one of X at the same moment:
    each step locked its own case, then waited for the other's, and PostgreSQL broke the
    deadlock with a 503. Both steps now lock the pair in one order: one of them is taken,
    and the pair is linked one way. The other was then answered 412 "the case changed since
    you read it" for an If-Match that was current when sent (the step taken first changed
    its case: a new duplicate); it is told the conflict instead (409), with its case's
    ETag."""
    from gridapi.services import cases as case_svc

    d = desk
    x, y = d.report()["id"], d.report(col=1)["id"]
    tags = {x: d.etag(x), y: d.etag(y)}
    # Each step waits (a little) for the other after locking its own case: without the one
    # order both then hold one row and want the other's.
    both = threading.Event()
    count = iter(range(2))
    read_duplicates = case_svc.duplicates_of

    def meet_then_read(session: Any, case_obj: Any) -> Any:
        if next(count, 2) == 1:
            both.set()
        both.wait(3)
        return read_duplicates(session, case_obj)

    monkeypatch.setattr(case_svc, "duplicates_of", meet_then_read)

    def send(pair: tuple[Any, int, int]) -> Any:
        client, cid, other = pair
        return client.post(
            f"/api/v1/cases/{cid}/transitions",
            json={"action": "duplicate", "duplicate_of": other},
            headers={"If-Match": tags[cid]},
        )

    pairs = [(accounts.client("office"), x, y), (accounts.client("office"), y, x)]
    answers = race(pairs, send)
    monkeypatch.undo()
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 409], [(a.status_code, a.get_json()) for a in answers]
    winner = next(a.get_json() for a in answers if a.status_code == 200)
    loser = y if winner["id"] == x else x
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.get_json()["message"] == (
        f"Case {winner['id']} was closed as a duplicate of this case meanwhile."
    )
    assert refused.get_json()["errors"]["json"] == {
        "duplicate_of": [f"case {winner['id']} is a duplicate of this case"]
    }
    assert "duplicate" in refused.get_json()["errors"]["allowed_actions"]
    assert refused.headers["ETag"] == d.etag(loser) != tags[loser]
    assert (winner["status"], winner["duplicate_of"]) == ("cancelled", loser)
    kept = d.get(loser)
    assert (kept["status"], kept["duplicate_of"], kept["duplicates"]) == (
        "reported",
        None,
        [winner["id"]],
    )
    assert [s[0] for s in d.steps(winner["id"])] == ["report", "duplicate"]
    assert [s[0] for s in d.steps(loser)] == ["report", "duplicates_attached"]


def test_two_reports_closed_as_duplicates_of_one_case_at_once(desk, accounts):
    """Two offices closing two reports as duplicates of one case at the same moment: each
    step changes the original (a new duplicate, a new version), but neither caller sent the
    original's ETag, so both steps are taken; the original lists both."""
    d = desk
    first, original, second = d.report()["id"], d.report(col=1)["id"], d.report()["id"]
    tags = {cid: d.etag(cid) for cid in (first, second)}

    def send(pair: tuple[Any, int]) -> Any:
        client, cid = pair
        return client.post(
            f"/api/v1/cases/{cid}/transitions",
            json={"action": "duplicate", "duplicate_of": original},
            headers={"If-Match": tags[cid]},
        )

    pairs = [(accounts.client("office"), first), (accounts.client("office"), second)]
    answers = race(pairs, send)
    assert [a.status_code for a in answers] == [200, 200], [a.get_json() for a in answers]
    assert d.get(original)["duplicates"] == [first, second]
    assert [s[0] for s in d.steps(original)] == [
        "report",
        "duplicates_attached",
        "duplicates_attached",
    ]
    for cid in (first, second):
        assert (d.get(cid)["status"], d.get(cid)["duplicate_of"]) == ("cancelled", original)


def test_a_duplicate_step_refused_for_another_stale_if_match_is_412(desk):
    """The conflict is named only where the pair was linked the other way: a duplicate step
    with an If-Match made stale by any other change answers 412, as every step does."""
    d = desk
    x, y = d.report()["id"], d.report(col=1)["id"]
    stale = d.etag(y)
    d.act(d.office, y, "accept")
    r = d.office.post(
        f"/api/v1/cases/{y}/transitions",
        json={"action": "duplicate", "duplicate_of": x},
        headers={"If-Match": stale},
    )
    assert r.status_code == 412, r.get_json()
    assert r.headers["ETag"] == d.etag(y)
    assert d.get(y)["status"] == "accepted"


@pytest.mark.parametrize("first", ["a_to_b", "b_to_c"])
def test_a_chain_of_duplicates_closed_at_once(desk, accounts, first):
    """Case A closed as a duplicate of B while another office closes B as a duplicate of C,
    both with the ETag they had read. A taken first attached A to B (a new version of B), and
    B's step was answered 412 "the case changed since you read it" for an If-Match that was
    current when sent. It is taken now, A moving on to C with B, as one after the other
    would. B taken first, A's step is refused naming C (422), as it always was: never a
    412."""
    d = desk
    a, b, c = d.report()["id"], d.report(col=1)["id"], d.report()["id"]
    tags = {cid: d.etag(cid) for cid in (a, b)}
    steps = {"a_to_b": (a, b), "b_to_c": (b, c)}
    done = threading.Event()

    def send(pair: tuple[Any, str]) -> Any:
        client, name = pair
        cid, other = steps[name]
        if name != first:
            assert done.wait(30)  # sent at once, taken second (its ETag read before)
        try:
            return client.post(
                f"/api/v1/cases/{cid}/transitions",
                json={"action": "duplicate", "duplicate_of": other},
                headers={"If-Match": tags[cid]},
            )
        finally:
            done.set()

    pairs = [(accounts.client("office"), "a_to_b"), (accounts.client("office"), "b_to_c")]
    to_b, to_c = race(pairs, send)
    assert to_c.status_code == 200, to_c.get_json()
    assert to_c.headers["ETag"] == d.etag(b)
    assert (d.get(b)["status"], d.get(b)["duplicate_of"]) == ("cancelled", c)
    if first == "a_to_b":
        assert to_b.status_code == 200, to_b.get_json()
        assert to_c.get_json()["duplicates"] == []
        assert d.timeline(b)[-1]["data"]["moved_duplicates"] == [a]
        assert d.get(c)["duplicates"] == [a, b]
        assert (d.get(a)["status"], d.get(a)["duplicate_of"]) == ("cancelled", c)
        assert [s[0] for s in d.steps(a)] == ["report", "duplicate", "duplicate_moved"]
        assert [s[0] for s in d.steps(b)] == ["report", "duplicates_attached", "duplicate"]
    else:
        assert to_b.status_code == 422, to_b.get_json()
        assert to_b.get_json()["errors"]["json"] == {"duplicate_of": [f"use case {c}"]}
        assert d.get(a)["status"] == "reported"
        assert d.get(c)["duplicates"] == [b]


def test_an_if_match_stale_by_more_than_attachments_is_412(desk):
    """B's If-Match is let through only when every change since was another step attaching
    duplicates to it: a step of its own meanwhile (accept) leaves the 412."""
    d = desk
    a, b, c = d.report()["id"], d.report(col=1)["id"], d.report()["id"]
    stale = d.etag(b)
    d.act(d.office, b, "accept")
    d.act(d.office, a, "duplicate", duplicate_of=b)
    r = d.office.post(
        f"/api/v1/cases/{b}/transitions",
        json={"action": "duplicate", "duplicate_of": c},
        headers={"If-Match": stale},
    )
    assert r.status_code == 412, r.get_json()
    assert r.headers["ETag"] == d.etag(b)
    assert (d.get(b)["status"], d.get(a)["duplicate_of"]) == ("accepted", b)


def test_a_steps_answer_shows_the_duplicates_the_step_read(desk, app):
    """A step reads the case's duplicates once, after locking it; its answer shows them
    from that read (it asked for them again). Closing a case as a duplicate moves its own
    duplicates to the original: its answer shows none."""
    d = desk
    b, a, c = d.report(col=1)["id"], d.report()["id"], d.report(col=2)["id"]
    d.act(d.office, a, "duplicate", duplicate_of=b)
    engine = app.extensions["gridapi"].engine
    tag = d.etag(b)
    with statements_sent(engine, lambda s: "cases.duplicate_of_id IN" in s) as sent:
        accepted = transition(d.office, b, tag, "accept")
    assert len(sent) == 1, sent
    moved = d.post(d.office, b, "duplicate", duplicate_of=c)
    assert (accepted.status_code, accepted.get_json()["duplicates"]) == (200, [a])
    assert moved.status_code == 200, moved.get_json()
    assert (moved.get_json()["duplicate_of"], moved.get_json()["duplicates"]) == (c, [])
    assert d.get(c)["duplicates"] == sorted([a, b])  # in id order


def test_a_step_sent_before_reports_were_attached_is_taken(desk):
    """A burst pipe reported by many residents: while the office accepts the first report,
    others are closed as its duplicates, each a new version of it. The office's step, sent
    with the ETag it had read, was answered 412 "the case changed since you read it" for
    changes it did not make and which left the case's state as it read it: it is taken,
    and the answer's ETag is the version it made."""
    d = desk
    b, a1, a2 = d.report(col=1)["id"], d.report()["id"], d.report()["id"]
    read = d.get(b)
    stale = d.etag(b)
    d.act(d.office, a1, "duplicate", duplicate_of=b)
    d.act(d.office, a2, "duplicate", duplicate_of=b)
    r = transition(d.office, b, stale, "accept")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["status"], body["duplicates"]) == ("accepted", [a1, a2])
    assert body["version"] == read["version"] + 3
    assert r.headers["ETag"] == f'"{b}-{body["version"]}"' == d.etag(b)
    assert [s[0] for s in d.steps(b)] == [
        "report",
        "duplicates_attached",
        "duplicates_attached",
        "accept",
    ]
    # The ETag it was given is the one to send next; the one it sent is stale now.
    assert transition(d.office, b, stale, "file").status_code == 412
    assert transition(d.office, b, r.headers["ETag"], "file").status_code == 200


@pytest.mark.parametrize("action", ["reject", "cancel"])
def test_a_reject_sent_before_a_report_was_attached_is_refused_for_it(desk, action):
    """Taken past a stale If-Match, the step is judged on the case as it is now: a reject or
    cancel of a case a report was attached to since the office read it is refused for that
    duplicate (409, as when read after it), neither taken nor a 412."""
    d = desk
    original, copy = d.report(col=1)["id"], d.report()["id"]
    stale = d.etag(original)
    d.act(d.office, copy, "duplicate", duplicate_of=original)
    before, steps = d.get(original), d.steps(original)
    r = d.office.post(
        f"/api/v1/cases/{original}/transitions",
        json={"action": action, "comment": "无效信息"},
        headers={"If-Match": stale},
    )
    assert r.status_code == 409, r.get_json()
    body = r.get_json()
    assert (body["code"], body["message"]) == (409, FOLLOWED_UP)
    assert body["errors"]["duplicates"] == [copy]
    assert not {"reject", "cancel"} & set(body["errors"]["allowed_actions"])
    assert d.get(original) == before and d.steps(original) == steps
    assert d.get(copy)["duplicate_of"] == original


@pytest.mark.parametrize("accept_first", [True, False])
def test_a_step_stale_by_an_attachment_and_a_step_is_412(desk, accept_first):
    """Only attachments are let through: an If-Match stale also by a step of the case's own
    (an accept, before or after the attachment) answers 412, and nothing changes."""
    d = desk
    b, a = d.report(col=1)["id"], d.report()["id"]
    stale = d.etag(b)
    if accept_first:
        d.act(d.office, b, "accept")
    d.act(d.office, a, "duplicate", duplicate_of=b)
    if not accept_first:
        d.act(d.office, b, "accept")
    before, steps = d.get(b), d.steps(b)
    r = transition(d.office, b, stale, "file")
    assert r.status_code == 412, r.get_json()
    assert r.headers["ETag"] == d.etag(b)
    assert d.get(b) == before and d.steps(b) == steps


def test_a_step_stale_by_a_change_without_a_timeline_row_is_412(desk):
    """A change of the case that writes no timeline row of its own (its category made
    sensitive: a new version of each of its cases) is no attachment, though the case's last
    row is one (written before the caller's read): the stale If-Match answers 412."""
    d = desk
    b, a = d.report(col=1)["id"], d.report()["id"]
    d.act(d.office, a, "duplicate", duplicate_of=b)
    stale = d.etag(b)
    category = d.get(b)["category"]["code"]
    flip = d.admin.patch(f"/api/v1/categories/{category}", json={"sensitive": True})
    assert flip.status_code == 200, flip.get_json()
    assert d.etag(b) != stale
    r = transition(d.office, b, stale, "accept")
    assert r.status_code == 412, r.get_json()
    assert r.headers["ETag"] == d.etag(b)
    assert d.get(b)["status"] == "reported"


# --- queues ---------------------------------------------------------------------------------


def queues(who: Any) -> dict[str, int]:
    return {q["queue"]: q["count"] for q in ok(who.get("/api/v1/cases/queues"))["items"]}


def test_queues_follow_the_cases(desk, engine):
    d = desk
    empty = queues(d.office)
    assert empty == {"intake": 0, "dispatch": 0, "handle": 0, "verify": 0, "close": 0, "overdue": 0}
    assert queues(d.worker) == {"handle": 0, "overdue": 0}

    ids = [d.report(col=i % 2)["id"] for i in range(8)]
    reported, accepted, filed, dispatched, handling, feedback, verified, closed = ids
    d.act(d.office, accepted, "accept")
    d.to_filed(filed)
    d.to_filed(dispatched)
    d.act(d.office, dispatched, "dispatch", assignee_id=d.id("worker"))
    d.to_handling(handling)
    d.to_handling(feedback)
    d.act(d.worker, feedback, "feedback", comment="ok")
    d.to_handling(verified)
    d.act(d.worker, verified, "feedback", comment="ok")
    d.act(d.office, verified, "verify_pass")
    d.to_closed(closed)
    assert queues(d.office) == {
        "intake": 2,
        "dispatch": 1,
        "handle": 2,
        "verify": 1,
        "close": 1,
        "overdue": 0,
    }
    assert queues(d.worker) == {"handle": 2, "overdue": 0}
    assert queues(d.county)["intake"] == 2
    # Community A is the first line of intake for what is reported in it; once filed, the
    # township holds the cases, so nothing else is the community officer's.
    assert queues(d.officer) == {
        "intake": 2,
        "dispatch": 0,
        "handle": 0,
        "verify": 0,
        "close": 0,
        "overdue": 0,
    }

    d.act(d.office, filed, "dispatch", unit=COMMUNITY_A)
    assert queues(d.officer)["dispatch"] == 1
    assert queues(d.office)["dispatch"] == 1  # still the township's area
    d.act(d.worker, dispatched, "return", comment="非本网格")
    assert queues(d.worker) == {"handle": 1, "overdue": 0}
    assert queues(d.office)["dispatch"] == 2 and queues(d.office)["handle"] == 1

    with engine.begin() as conn:  # the overdue sweep's mark
        conn.execute(update(Case).where(Case.id == handling).values(overdue=True))
    assert queues(d.worker) == {"handle": 1, "overdue": 1}
    assert queues(d.office)["overdue"] == 1
    # A department member whose area covers the township holds only what is dispatched to
    # its department (it counted every case of the area before is_office).
    outsider = d.department_member("outsider", d.dept, COUNTY)
    assert queues(outsider) == {"handle": 0, "overdue": 0}  # it reads none of them
    d.act(d.office, dispatched, "dispatch", department_id=d.dept)
    assert queues(outsider) == {"handle": 1, "overdue": 0}
    assert queues(d.member) == {"handle": 1, "overdue": 0}  # overdue: of what it may see
    with engine.begin() as conn:
        conn.execute(update(Case).where(Case.id == dispatched).values(overdue=True))
    assert queues(d.member) == {"handle": 1, "overdue": 1}


def queue_list(who: Any, queue: str, **filters: Any) -> list[int]:
    """Return the ids of ``GET /cases?queue=…`` with ``filters``, paged two at a time."""
    ids: list[int] = []
    query: dict[str, Any] = {"queue": queue, "limit": 2, **filters}
    while True:
        body = ok(who.get("/api/v1/cases", query_string=query))
        ids += [c["id"] for c in body["items"]]
        if not body["next_cursor"]:
            return ids
        query["cursor"] = body["next_cursor"]


def test_each_queue_opens_as_a_list_of_exactly_its_cases(desk, engine):
    """The queue counts could not be opened as a list: no filter selected a queue's cases
    (a department's 待处理 counts what was dispatched to it; a township's 待派遣 leaves out
    the cases of its area the county holds). `queue` is the counts' own condition."""
    d = desk
    chief = d.accounts.client("chief", "grid_chief", grids=[A1, A2])
    outsider = d.department_member("outsider", d.dept, COUNTY)
    ids = [d.report(col=i % 2)["id"] for i in range(12)]
    (reported, accepted, filed, escalated, handed_down, to_worker, to_dept) = ids[:7]
    (handling, feedback, verified, closed, late) = ids[7:]
    d.act(d.office, accepted, "accept")
    d.to_filed(filed)
    d.to_filed(escalated)
    d.act(d.office, escalated, "escalate", comment="需县级协调")
    d.to_filed(handed_down)
    d.act(d.office, handed_down, "dispatch", unit=COMMUNITY_A)
    d.to_filed(to_worker)
    d.act(d.office, to_worker, "dispatch", assignee_id=d.id("worker"))
    d.to_filed(to_dept)
    d.act(d.office, to_dept, "dispatch", department_id=d.dept)
    d.to_handling(handling)
    d.to_handling(feedback)
    d.act(d.worker, feedback, "feedback", comment="ok")
    d.to_handling(verified)
    d.act(d.worker, verified, "feedback", comment="ok")
    d.act(d.office, verified, "verify_pass")
    d.to_closed(closed)
    d.to_handling(late)
    with engine.begin() as conn:  # the overdue sweep's mark
        conn.execute(update(Case).where(Case.id.in_([late, to_dept])).values(overdue=True))

    callers = {
        "office": d.office,
        "county": d.county,
        "city": d.city,
        "officer": d.officer,
        "worker": d.worker,
        "chief": chief,
        "member": d.member,
        "outsider": outsider,
        "admin": d.admin,
    }
    seen_nonzero = set()
    for who, client in callers.items():
        for name, count in queues(client).items():
            listed = queue_list(client, name)
            assert len(listed) == len(set(listed)) == count, (who, name, listed)
            oldest_first = queue_list(client, name, sort="reported_at")
            assert oldest_first == sorted(listed), (who, name)
            if count:
                seen_nonzero.add(name)
    assert seen_nonzero == {"intake", "dispatch", "handle", "verify", "close", "overdue"}
    # What no other filter could say: the township's 待派遣 leaves out the case of its area
    # the county holds, and a department's 待处理 is what was dispatched to it.
    filed_in_area = {c["id"] for c in ok(d.office.get("/api/v1/cases?status=filed"))["items"]}
    assert {filed, escalated, handed_down} <= filed_in_area
    assert set(queue_list(d.office, "dispatch")) == {filed, handed_down}
    assert set(queue_list(d.county, "dispatch")) == {filed, escalated, handed_down}
    assert queue_list(d.officer, "dispatch") == [handed_down]
    assert queue_list(outsider, "handle") == [to_dept]
    assert set(queue_list(d.worker, "handle")) == {to_worker, handling, late}
    assert queue_list(chief, "verify") == [feedback]
    # With the other filters; a queue the caller does not work holds nothing.
    assert set(queue_list(d.office, "handle", overdue="true")) == {late, to_dept}
    assert queue_list(d.office, "handle", q=d.get(late)["number"]) == [late]
    assert queue_list(d.worker, "verify") == []
    # The map layers take it as they take the list's other filters.
    layer = ok(d.office.get(f"/api/v1/maps/case-counts?region={TOWNSHIP}&queue=dispatch"))
    assert sum(f["properties"]["count"] for f in layer["features"]) == 2
    # A cursor belongs to its queue, and a queue is one of the known ones.
    first = ok(d.office.get("/api/v1/cases", query_string={"queue": "handle", "limit": 1}))
    other = d.office.get(
        "/api/v1/cases", query_string={"queue": "intake", "cursor": first["next_cursor"]}
    )
    assert other.status_code == 422, other.get_json()
    bad = d.office.get("/api/v1/cases?queue=inbox")
    assert bad.status_code == 422
    assert "queue" in bad.get_json()["errors"]["query"]


# --- who may take which step ----------------------------------------------------------------

# Every role, scoped as a real account of it would be.
MATRIX_ACTORS: dict[str, dict[str, Any]] = {
    "grid_worker": {"grids": [A1]},
    "grid_chief": {"grids": [A1, A2]},
    "community_officer": {"scope_region": COMMUNITY_A},
    "department": {"scope_region": COUNTY},  # a member of the department DEPT (community A)
    "township_office": {"scope_region": TOWNSHIP},
    "county_centre": {"scope_region": COUNTY},
    "city_centre": {"scope_region": CITY},
    "admin": {},
}
# Who is the office over a unit holding a case: an office whose area covers the unit.
# Grid workers and chiefs (scoped to grids) and departments are nobody's office.
OFFICES = {
    COUNTY: {"county_centre", "city_centre", "admin"},
    TOWNSHIP: {"township_office", "county_centre", "city_centre", "admin"},
    COMMUNITY_A: {"community_officer", "township_office", "county_centre", "city_centre", "admin"},
}
# The unit that handed a filed case down (交办) to the unit holding it in the matrix.
HANDED_DOWN_FROM = {TOWNSHIP: COUNTY, COMMUNITY_A: TOWNSHIP}
# Whom a dispatched case is with, and which role that is.
HANDLERS = {"worker": "grid_worker", "department": "department", None: None}


def sees(role: str, handler: str | None) -> bool:
    """Whether ``role`` reads the matrix case: a department member only while its department
    handles it (what was dispatched to it); every other role by the case's area."""
    return role != "department" or handler == "department"


def expected_answer(role: str, action: str, unit: str, state: str, handler: str | None) -> int:
    """The answer to ``action`` by ``role`` on a case held by ``unit``, in a state that
    allows it: it needs the action's permission, and the office over the unit (office
    steps), the office or the case's handler (handler steps), or the office or the chief
    of the case's grid (verification). A filed case handed down is returned by the office
    of the unit it was handed down to, not by one over the unit that handed it down."""
    _, permission, who = ACTIONS[action]
    if not sees(role, handler):  # a case out of the caller's sight answers like a missing one
        return 404
    if permission not in ROLE_PERMISSIONS[role]:
        return 403
    office = role in OFFICES[unit]
    if action == "return" and state == "filed":
        return 200 if office and role not in OFFICES[HANDED_DOWN_FROM[unit]] else 403
    if who == "office":
        return 200 if office else 403
    if who == "verifier":  # the office, or the grid chief over the case's grid (A1)
        return 200 if office or role == "grid_chief" else 403
    return 200 if office or HANDLERS[handler] == role else 403


def situations() -> list[tuple[str, str, str | None]]:
    """Return (action, state, handler) for every state each action may start from; the
    dispatched and handling states once with a worker and once with a department."""
    out = []
    for action, (states, _, _) in ACTIONS.items():
        for state in states:
            handlers: tuple[str | None, ...] = (None,)
            if state in ("dispatched", "handling"):
                handlers = ("worker", "department")
            elif state in ("feedback", "verified"):
                handlers = ("worker",)
            out += [(action, state, h) for h in handlers]
    return out


REASON = "理由"


def action_body(action: str, desk: MatrixDesk) -> dict[str, Any]:
    body: dict[str, Any] = {"action": action, "comment": REASON}
    if action == "dispatch":
        body["assignee_id"] = desk.worker_id
    elif action == "transfer":
        body["unit"] = COMMUNITY_B
    elif action == "request_extension":
        body["amount"] = 2
    elif action == "supervise":
        body["level"] = "yellow"
    elif action == "duplicate":
        body["duplicate_of"] = desk.original
    return body


@dataclasses.dataclass
class MatrixDesk:
    clients: dict[str, Any]
    worker_id: int
    member_id: int
    dept: int
    original: int
    case_id: int


@pytest.fixture
def matrix_desk(desk, app, accounts):  # type: ignore[no-untyped-def]
    clients = {}
    for role, scope in MATRIX_ACTORS.items():
        if role == "department":
            clients[role] = desk.department_member("m_department", desk.dept, COUNTY)
        else:
            clients[role] = accounts.client(f"m_{role}", role, **scope)
    return MatrixDesk(
        clients=clients,
        worker_id=accounts.ids["m_grid_worker"],
        member_id=accounts.ids["m_department"],
        dept=desk.dept,
        original=desk.report()["id"],
        case_id=desk.report()["id"],
    )


DECISIONS = ("approve_extension", "deny_extension")


def put_case(
    engine: Any, m: MatrixDesk, unit: str, state: str, handler: str | None, *, pending: bool
) -> str:
    """Put the matrix case into ``state`` held by ``unit`` (with ``handler``, and an extension
    request waiting when ``pending``); return its ETag.

    Written straight into the table: the roads into each state are the tests above; here
    only the step out of it is under test.
    """
    assignee = department = None
    if handler == "worker":
        assignee = m.worker_id
    elif handler == "department":
        department = m.dept
        assignee = m.member_id if state == "handling" else None
    request = {"amount": 1, "unit": "days", "reason": REASON, "requested_by": "user:0"}
    values = {
        "status": state,
        "responsible_region_code": unit,
        # Filed: handed down to the unit (交办), so that it may be returned.
        "handed_down_from": HANDED_DOWN_FROM[unit] if state == "filed" else None,
        "assignee_id": assignee,
        "department_id": department,
        "extension_request": request if pending else None,
        "duplicate_of_id": None,
        "supervision": "normal",
        "version": Case.version + 1,
    }
    with engine.begin() as conn:
        conn.execute(update(Case).where(Case.id == m.case_id).values(**values))
        version = conn.execute(select(Case.version).where(Case.id == m.case_id)).scalar_one()
    return f'"{m.case_id}-{version}"'


@pytest.mark.parametrize("unit", [TOWNSHIP, COMMUNITY_A], ids=["township", "community"])
def test_every_role_takes_every_step_it_may_and_no_other(matrix_desk, engine, unit):
    m = matrix_desk
    assert set(MATRIX_ACTORS) == set(ROLE_PERMISSIONS), "a role is missing from the matrix"
    problems = []
    checked_views = set()
    for action, state, handler in situations():
        pending = action in DECISIONS
        # With a request waiting it may be decided, not asked again; without, the reverse.
        unready = {"request_extension"} if pending else set(DECISIONS)
        for role, client in m.clients.items():
            etag = put_case(engine, m, unit, state, handler, pending=pending)
            if (role, state, handler) not in checked_views:
                checked_views.add((role, state, handler))
                view = client.get(f"/api/v1/cases/{m.case_id}")
                allowed = (
                    set(view.get_json()["allowed_actions"]) if view.status_code == 200 else None
                )
                wanted: set[str] | None = {
                    a
                    for a, (states, _, _) in ACTIONS.items()
                    if state in states
                    and a not in unready
                    and expected_answer(role, a, unit, state, handler) == 200
                }
                if not sees(role, handler):
                    wanted = None
                if allowed != wanted:
                    problems.append(
                        f"{role} sees {state}/{handler}: allowed_actions {allowed}"
                        f" but expected {wanted}"
                    )
            r = client.post(
                f"/api/v1/cases/{m.case_id}/transitions",
                json=action_body(action, m),
                headers={"If-Match": etag},
            )
            want = expected_answer(role, action, unit, state, handler)
            if r.status_code != want:
                problems.append(
                    f"{role} {action} from {state}/{handler}: expected {want}, got "
                    f"{r.status_code} {r.get_data(as_text=True)[:200]}"
                )
    assert not problems, f"{len(problems)} cells differ:\n" + "\n".join(problems)


# --- references out of the caller's area ----------------------------------------------------


def test_a_reference_out_of_the_callers_area_answers_like_a_missing_one(desk, accounts, engine):
    """A worker, department or case the office may not see, or a unit outside its area, is
    refused exactly as one that does not exist (up to the echoed reference itself)."""
    d = desk
    other_worker = accounts.create("worker_b", "grid_worker", grids=[COMMUNITY_B + "001"])
    body = {"code": "MARKET", "name": "市场监管", "region_code": COMMUNITY_B}
    other_dept = ok(d.admin.post("/api/v1/departments", json=body), 201)["id"]
    other_case = d.report(col=2)["id"]  # grid B1, held by the township
    held_by_a = d.report()["id"]
    d.to_filed(held_by_a)
    d.act(d.office, held_by_a, "dispatch", unit=COMMUNITY_A)
    held_by_township = d.report()["id"]
    d.to_filed(held_by_township)
    probes = [
        (d.officer, held_by_a, "dispatch", "assignee_id", other_worker, 987_654),
        (d.officer, held_by_a, "dispatch", "department_id", other_dept, 987_654),
        (d.officer, held_by_a, "duplicate", "duplicate_of", other_case, 987_654),
        (d.office, held_by_township, "transfer", "unit", CITY, "320508009001"),
    ]
    for who, case_id, action, field, out, missing in probes:
        answers = []
        for reference in (out, missing):
            before = d.get(case_id)["version"], len(d.timeline(case_id))
            r = d.post(who, case_id, action, comment="转", **{field: reference})
            assert (d.get(case_id)["version"], len(d.timeline(case_id))) == before
            echoed = re.sub(rf"(?<![0-9]){reference}(?![0-9])", "<ref>", r.get_data(as_text=True))
            answers.append((r.status_code, echoed))
        assert answers[0] == answers[1], (action, field, answers)
        assert answers[0][0] == 422, answers[0]
