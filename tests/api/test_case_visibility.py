"""Who reads a case, everywhere a case can show: its own read, lists, and the possible
duplicates of another report. A case a caller may not read must not be named to it at all
(docs/cases.md, "Who sees a case")."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

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
    # a plain case of the same place stays readable by all of them
    plain = d.report(d.worker, category="0101")["id"]
    for who in (d.member, county_member, county_app, unrestricted_app):
        assert who.get(f"/api/v1/cases/{plain}").status_code == 200


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
