"""Who reads a case, everywhere a case can show: its own read, lists, the possible
duplicates of another report, and the duplicate links of other cases (their views,
timelines, sync, refusals). A case a caller may not read must not be named to it at all
(docs/cases.md, "Who sees a case" and "Links to other cases")."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import select, text

from gridapi.auth import Principal
from gridapi.models import Case
from gridapi.scope import Scope
from gridapi.services import cases as svc

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY, TOWNSHIP
from .test_case_workflow import Desk, ok
from .test_cases import center, report_body

A1, B1 = COMMUNITY_A + "001", COMMUNITY_B + "001"


@pytest.fixture
def desk(app, accounts, client, world) -> Desk:  # type: ignore[no-untyped-def]
    return Desk(app, accounts, client)


def app_key(app: Any, admin: Any, scopes: list[str], region: str | None) -> Any:
    body: dict[str, Any] = {"name": "12345 热线", "scopes": scopes}
    if region:
        body["scope_region"] = region
    key = ok(admin.post("/api/v1/clients", json=body), 201)["api_key"]
    c = app.test_client()
    c.environ_base["HTTP_X_API_KEY"] = key
    return c


def near(col: int = 0, dx: float = 0.0001) -> tuple[float, float]:
    lon, lat = center(col)
    return lon + dx, lat


def test_possible_duplicates_name_only_cases_the_reporter_may_read(desk, accounts):
    """A report near a case names it as a possible duplicate only to a caller who may read
    it: not to a worker of another grid (it answered the case's id, number and distance
    while the case itself was a 404 to them), nor a sensitive case to the grid's own
    other worker."""
    d = desk
    plain = d.report(d.worker, category="0101")["id"]
    sensitive = d.report(d.worker, category="5107")["id"]  # 医患纠纷: sensitive, 100 m
    colleague = accounts.client("w2_a1", "grid_worker", grids=[A1])
    stranger = accounts.client("w_b1", "grid_worker", grids=[B1])

    probes: set[int] = set()  # the reports named() makes are candidates too: left out

    def named(who: Any, category: str) -> list[int]:
        body = ok(who.post("/api/v1/cases", json=report_body(*near(), category=category)), 201)
        probes.add(body["id"])
        return [p["id"] for p in body["possible_duplicates"] if p["id"] not in probes]

    assert named(d.office, "0101") == [plain]
    assert named(d.office, "5107") == [sensitive]  # the office over the unit holding it
    assert named(colleague, "0101") == [plain]
    assert named(colleague, "5107") == []
    assert stranger.get(f"/api/v1/cases/{plain}").status_code == 404
    assert named(stranger, "0101") == []
    assert named(stranger, "5107") == []
    assert named(d.worker, "5107") == [sensitive]  # its reporter
    # an app of the other community, and one of the whole county without office rights
    other_app = app_key(d.app, d.admin, ["cases:read", "cases:write"], COMMUNITY_B)
    assert named(other_app, "0101") == []
    county_app = app_key(d.app, d.admin, ["cases:read", "cases:write"], COUNTY)
    assert plain in named(county_app, "0101")
    assert sensitive not in named(county_app, "5107")


def test_possible_duplicates_are_named_to_no_caller_that_reads_no_case(desk):
    """An app that may only report (``cases:write``) reads no case: its report named the
    cases near it (id, number, status, distance) while each of them answered it 403."""
    d = desk
    plain = d.report(d.worker, category="0101")["id"]
    writer = app_key(d.app, d.admin, ["cases:write"], COUNTY)
    r = writer.post("/api/v1/cases", json=report_body(*near(), category="0101"))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["possible_duplicates"] == []
    assert writer.get(f"/api/v1/cases/{plain}").status_code == 403
    # the same app with the right to read is told of it
    reader = app_key(d.app, d.admin, ["cases:read", "cases:write"], COUNTY)
    body = ok(reader.post("/api/v1/cases", json=report_body(*near(), category="0101")), 201)
    assert plain in [p["id"] for p in body["possible_duplicates"]]


def test_a_sensitive_case_is_read_by_its_offices_handler_and_reporter_only(desk, accounts):
    """A family dispute filed to the township: the offices over it (township, county) read
    it; a department member and apps whose area covers it do not, until it is dispatched to
    that department (then its members do)."""
    d = desk
    cid = d.report(d.worker, category="5103")["id"]
    d.to_filed(cid)
    county_member = d.department_member("fire_county", d.dept, COUNTY)
    county_app = app_key(d.app, d.admin, ["cases:read"], COUNTY)
    unrestricted_app = app_key(d.app, d.admin, ["cases:read"], None)

    def reads(who: Any) -> bool:
        one = who.get(f"/api/v1/cases/{cid}").status_code
        listed = cid in {c["id"] for c in ok(who.get("/api/v1/cases?limit=200"))["items"]}
        timeline = who.get(f"/api/v1/cases/{cid}/timeline").status_code
        assert (one, timeline) in ((200, 200), (404, 404)), (one, timeline)
        assert listed is (one == 200)
        return one == 200

    assert reads(d.office) and reads(d.county) and reads(d.worker)
    assert not reads(d.member) and not reads(county_member)
    assert not reads(county_app) and not reads(unrestricted_app)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    assert reads(d.member) and reads(county_member)
    assert not reads(county_app) and not reads(unrestricted_app)
    # a plain case of the same place is read by the apps whose area holds it; a department
    # reads only what was dispatched to it (or it reported)
    plain = d.report(d.worker, category="0101")["id"]
    for who in (county_app, unrestricted_app):
        assert who.get(f"/api/v1/cases/{plain}").status_code == 200
    for who in (d.member, county_member):
        assert who.get(f"/api/v1/cases/{plain}").status_code == 404


def test_a_department_reads_only_the_cases_dispatched_to_it_or_it_reported(desk, engine):
    """The county's fire brigade read every case of the county by its area: complaints,
    their timeline and photos, in lists, exports and maps; DOMAIN.md's departments receive
    dispatched cases and report back. Now: what was dispatched to the department (while it
    holds it, and after it handled it), and what its members reported."""
    d = desk
    county_member = d.department_member("fire_county", d.dept, COUNTY)
    other = ok(
        d.admin.post(
            "/api/v1/departments", json={"code": "MKT", "name": "市场监管", "region_code": COUNTY}
        ),
        201,
    )["id"]
    stranger = d.department_member("market", other, COUNTY)
    cid = d.report(d.worker, category="0101")["id"]
    own = d.report(stranger, col=1, category="0101")["id"]

    def listed(who: Any) -> set[int]:
        return {c["id"] for c in ok(who.get("/api/v1/cases?limit=200"))["items"]}

    for who in (d.member, county_member, stranger):
        assert who.get(f"/api/v1/cases/{cid}").status_code == 404
        assert who.get(f"/api/v1/cases/{cid}/timeline").status_code == 404
        assert cid not in listed(who)
    assert listed(stranger) == {own} and listed(d.member) == set()
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", department_id=d.dept)
    assert listed(d.member) == {cid} and listed(county_member) == {cid}
    assert stranger.get(f"/api/v1/cases/{cid}").status_code == 404
    d.act(d.member, cid, "sign")
    d.act(d.member, cid, "feedback", comment="已整改")
    d.act(d.office, cid, "verify_pass")
    d.act(d.office, cid, "close")
    assert ok(county_member.get(f"/api/v1/cases/{cid}"))["status"] == "closed"


def test_may_see_is_the_rule_the_queries_use(desk, accounts, session):
    """``may_see`` (in Python, for duplicate candidates) and ``visible_condition`` (in SQL,
    for everything else) agree for every caller on every case of a varied set."""
    d = desk
    ids = [
        d.report(d.worker, col=col, category=cat)["id"]
        for col in (0, 2)
        for cat in ("0101", "5103")
    ]
    d.to_filed(ids[1])
    d.to_filed(ids[3])
    d.act(d.office, ids[3], "dispatch", department_id=d.dept)
    d.to_filed(ids[2])
    d.act(d.office, ids[2], "dispatch", assignee_id=d.id("worker"))
    ids.append(d.report(d.office, col=1, category="5103")["id"])
    scopes = {
        "unrestricted": Scope.everything(),
        "county": Scope.of_region(COUNTY),
        "township": Scope.of_region(TOWNSHIP),
        "community B": Scope.of_region(COMMUNITY_B),
        "grid A1": Scope.of_grids([A1]),
        "grid B1": Scope.of_grids([B1]),
    }
    permissions = {
        "office": frozenset({"cases:read", "cases:dispatch"}),
        "reader": frozenset({"cases:read"}),
    }
    callers = []
    for scope in scopes.values():
        for perms in permissions.values():
            for kind, pid, dept in (
                ("user", d.id("worker"), None),
                ("user", d.id("member"), d.dept),
                ("client", 1, None),
                ("user", d.id("office"), None),
            ):
                principal = Principal(
                    kind=kind, id=pid, name="x", role="r", rank=0, permissions=perms, scope=scope
                )
                callers.append(svc.Caller(principal, dept))
    rows = session.scalars(select(Case).where(Case.id.in_(ids))).all()
    assert len(rows) == len(ids)
    checked = 0
    for caller in callers:
        in_sql = set(
            session.scalars(select(Case.id).where(Case.id.in_(ids), svc.visible_condition(caller)))
        )
        in_python = {c.id for c in rows if svc.may_see(caller, c)}
        assert in_sql == in_python, (
            caller.principal.kind,
            caller.principal.scope,
            caller.principal.permissions,
            caller.department_id,
        )
        checked += len(in_sql)
    assert 0 < checked < len(callers) * len(ids)  # some cases seen, not all by everyone


def test_duplicate_links_name_only_cases_the_caller_may_read(desk, accounts, session):
    """19 and 20 reported in grid A1, 20 closed as a duplicate of 19, then 19 as a duplicate
    of 12 in community B (20 moved on to 12). The worker and the officer of A read 19 and
    20 but not 12: the case, the list, the timeline and sync named 12 and its number to
    them. The officer of B reads 12 but not 19 and 20: 12 listed them, and its timeline
    their numbers. The township, which reads all three, is shown every link."""
    d = desk
    officer_b = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    c19, c20 = d.report(d.worker), d.report(d.worker)
    c12 = d.report(d.admin, col=2)
    ids = (c12["id"], c19["id"], c20["id"])
    d.act(d.office, c20["id"], "duplicate", duplicate_of=c19["id"], comment="重复上报")
    d.act(d.office, c19["id"], "duplicate", duplicate_of=c12["id"], comment="重复上报")

    def case(who: Any, cid: int) -> dict[str, Any]:
        return ok(who.get(f"/api/v1/cases/{cid}"))

    def timeline(who: Any, cid: int) -> dict[str, dict[str, Any]]:
        """The data of each duplicate row, by action (the last of each)."""
        items = ok(who.get(f"/api/v1/cases/{cid}/timeline"))["items"]
        return {e["action"]: e["data"] for e in items if "duplicate" in e["action"]}

    for who in (d.worker, d.officer):
        assert who.get(f"/api/v1/cases/{c12['id']}").status_code == 404
        assert case(who, c19["id"])["duplicate_of"] is None
        assert case(who, c19["id"])["duplicates"] == []
        assert case(who, c20["id"])["duplicate_of"] is None
        listed = {c["id"]: c for c in ok(who.get("/api/v1/cases?limit=200"))["items"]}
        assert listed[c19["id"]]["duplicate_of"] is None
        assert listed[c20["id"]]["duplicate_of"] is None
        assert timeline(who, c19["id"]) == {
            "duplicates_attached": {"attached": [c20["id"]], "attached_numbers": [c20["number"]]},
            "duplicate": {
                "duplicate_of": None,
                "duplicate_of_number": None,
                "moved_duplicates": [c20["id"]],
            },
        }
        assert timeline(who, c20["id"])["duplicate_moved"] == {
            "from_original": c19["id"],
            "from_original_number": c19["number"],
            "duplicate_of": None,
            "duplicate_of_number": None,
        }
        answers = [case(who, i) for i in ids[1:]] + [timeline(who, i) for i in ids[1:]]
        assert c12["number"] not in json.dumps(answers)
    # The worker's phone: the upserts of its reports.
    changes = ok(d.worker.get("/api/v1/sync", query_string={"limit": 2000}))["changes"]
    synced = {c["id"]: c["data"] for c in changes if c["type"] == "case" and c["op"] == "upsert"}
    assert synced[c19["id"]]["duplicate_of"] is None and synced[c20["id"]]["duplicate_of"] is None
    assert c12["number"] not in json.dumps(synced)

    # The other way round: the officer of B reads 12, not the reports attached to it.
    assert officer_b.get(f"/api/v1/cases/{c19['id']}").status_code == 404
    assert case(officer_b, c12["id"])["duplicates"] == []
    assert timeline(officer_b, c12["id"]) == {
        "duplicates_attached": {"attached": [], "attached_numbers": []}
    }
    # Still followed up for them: not cancelled, and the refusal names none of them. It
    # said only "Other reports are closed as duplicates", listing none: the officer had
    # nothing to go on. It says how many it cannot read, and which office reads them all
    # (the township over both communities, not the community holding them).
    assert "cancel" not in case(officer_b, c12["id"])["allowed_actions"]
    for action, comment in (("cancel", "撤销"), ("reject", "不予受理")):
        refused = d.post(officer_b, c12["id"], action, comment=comment)
        assert refused.status_code == 409
        errors = refused.get_json()["errors"]
        assert errors["duplicates"] == []
        assert (errors["hidden_duplicates"], errors["ask_unit"]) == (2, TOWNSHIP)
        assert "2 of them" in refused.get_json()["message"]
        assert TOWNSHIP in refused.get_json()["message"]
        assert COMMUNITY_A not in json.dumps(refused.get_json())
        assert c19["number"] not in json.dumps(refused.get_json())
    shown = d.post(d.office, c12["id"], "cancel", comment="撤销").get_json()
    assert shown["errors"]["duplicates"] == [c19["id"], c20["id"]]
    assert shown["errors"]["hidden_duplicates"] == 0 and "ask_unit" not in shown["errors"]

    # Those who read all three are shown every link.
    for who in (d.office, d.admin):
        assert case(who, c19["id"])["duplicate_of"] == c12["id"]
        assert case(who, c20["id"])["duplicate_of"] == c12["id"]
        assert case(who, c12["id"])["duplicates"] == [c19["id"], c20["id"]]
        assert timeline(who, c12["id"])["duplicates_attached"] == {
            "attached": [c19["id"], c20["id"]],
            "attached_numbers": [c19["number"], c20["number"]],
        }
        assert timeline(who, c20["id"])["duplicate_moved"]["duplicate_of_number"] == c12["number"]
    # The stored rows are whole: only the answers leave the links out.
    stored = session.execute(
        text("SELECT data FROM case_events WHERE case_id = :id AND action = 'duplicate_moved'"),
        {"id": c20["id"]},
    ).scalar_one()
    stored = stored if isinstance(stored, dict) else json.loads(stored)
    assert stored["duplicate_of"] == c12["id"]
    # Webhook events name no other case: each tells of its own case only (its area decides
    # who hears it, as for the case itself).
    for payload in session.execute(
        text("SELECT payload FROM webhook_events WHERE case_id IN (:a, :b, :c)"),
        dict(zip("abc", ids, strict=True)),
    ).scalars():
        payload = payload if isinstance(payload, dict) else json.loads(payload)
        own = {c12["id"]: c12["number"], c19["id"]: c19["number"], c20["id"]: c20["number"]}
        assert own[payload["case_id"]] == payload["number"]
        assert not {"data", "duplicate_of", "duplicates", "attached"} & set(payload)


def test_a_duplicate_of_a_sensitive_case_names_it_to_its_readers_only(desk, accounts):
    """A plain report closed as a duplicate of a family dispute in the same grid: the link
    is shown to exactly the callers to whom GET of the dispute answers 200 (one rule, the
    one that decides the read), not to the reporter of the plain case, and no longer to the community's officer once the township holds
    the dispute."""
    d = desk
    dispute = d.report(d.office, category="5103")
    plain = d.report(d.worker)["id"]
    d.act(d.office, plain, "duplicate", duplicate_of=dispute["id"], comment="同一纠纷")
    county_app = app_key(d.app, d.admin, ["cases:read"], COUNTY)
    readers_of_plain = {
        "worker": d.worker,
        "officer": d.officer,
        "office": d.office,
        "county": d.county,
        "county app": county_app,
    }

    def shown() -> dict[str, bool]:
        out = {}
        for name, who in readers_of_plain.items():
            view = ok(who.get(f"/api/v1/cases/{plain}"))
            row = ok(who.get(f"/api/v1/cases/{plain}/timeline"))["items"][-1]
            reads = who.get(f"/api/v1/cases/{dispute['id']}").status_code == 200
            assert view["duplicate_of"] == (dispute["id"] if reads else None), name
            assert row["data"] == {
                "duplicate_of": dispute["id"] if reads else None,
                "duplicate_of_number": dispute["number"] if reads else None,
            }, name
            out[name] = reads
        return out

    everyone = dict.fromkeys(readers_of_plain, False)
    assert shown() == {**everyone, "officer": True, "office": True, "county": True}
    d.to_filed(dispute["id"])  # the township handles family disputes
    assert ok(d.admin.get(f"/api/v1/cases/{dispute['id']}"))["responsible"]["unit"]["code"] == (
        TOWNSHIP
    )
    assert shown() == {**everyone, "office": True, "county": True}


def test_a_refused_duplicate_does_not_name_an_original_the_caller_may_not_read(desk, accounts):
    """Closing a report onto 19, itself a duplicate of 12 in community B, is refused with
    "use case 12" to the township, which reads 12; the officer of A, who does not, is told
    that 19 is itself a duplicate, not of which case."""
    d = desk
    c19, c21 = d.report(d.worker)["id"], d.report(d.worker)["id"]
    c12 = d.report(d.admin, col=2)["id"]
    d.act(d.office, c19, "duplicate", duplicate_of=c12, comment="重复上报")
    told = {}
    for name, who in (("office", d.office), ("officer", d.officer)):
        r = d.post(who, c21, "duplicate", duplicate_of=c19)
        assert r.status_code == 422, r.get_json()
        told[name] = r.get_json()["errors"]["json"]["duplicate_of"]
    assert told == {
        "office": [f"use case {c12}"],
        "officer": [f"case {c19} is itself a duplicate"],
    }
