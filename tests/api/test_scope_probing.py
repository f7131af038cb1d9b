"""Probing the area scope: an object outside it must be indistinguishable from one that does
not exist, a write to it must change nothing, and lists must never show it.

Every operation with an id in its path is called, by callers of a community, of another
township, of another county, with the id of an existing object outside their scope and with
a random id of nothing; the two answers must be identical byte for byte and, for writes, the
database must be exactly as before. The requests come from ``REQUESTS`` of the authorization
matrix, so a new operation is probed as soon as it is declared there.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text

from ..factories import CITY, COUNTY, PASSWORD, PROVINCE, TOWNSHIP
from .test_authorization_matrix import (
    A1,
    A2,
    AREAS,
    B1,
    C1,
    COMMUNITY_A,
    COMMUNITY_C,
    OPERATIONS,
    OTHER_TOWNSHIP,
    OUT_COUNTY,
    REQUESTS,
    Area,
    Ctx,
    World,
    center,
    describe,
    grids_of,
    ok,
    prepare,
)
from .test_authorization_matrix import app as app  # noqa: F401  (the 1 s SQLite busy timeout)
from .test_authorization_matrix import world as world  # noqa: F401  (World.build, cleaned up)

# Callers, and the areas of the world that are outside their scope.
PROBERS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "worker_of_A": ({"role": "grid_worker", "grids": [A1]}, ("B", "C")),
    "officer_of_A": ({"role": "community_officer", "scope_region": COMMUNITY_A}, ("B", "C")),
    "office_of_another_township": (
        {"role": "township_office", "scope_region": OTHER_TOWNSHIP},
        ("A", "C"),
    ),
    "centre_of_another_county": ({"role": "county_centre", "scope_region": OUT_COUNTY}, ("A", "B")),
    "admin_of_another_county": ({"role": "admin", "scope_region": OUT_COUNTY}, ("A", "B")),
}
ID_OPERATIONS = [op for op in OPERATIONS if "{" in op[1]]
# Operations on objects that have no area: every caller who may use them sees all of them.
GLOBAL = {
    ("GET", "/api/v1/categories/{code}"): "one taxonomy for everybody",
    ("PATCH", "/api/v1/categories/{code}"): "one taxonomy for everybody",
    ("PUT", "/api/v1/calendar/{day}"): "one working calendar for everybody",
    ("DELETE", "/api/v1/calendar/{day}"): "one working calendar for everybody",
    ("PUT", "/api/v1/calendar/years/{year}"): "one working calendar for everybody",
}
TABLES = (
    "regions",
    "grids",
    "grid_versions",
    "users",
    "grid_assignments",
    "departments",
    "api_clients",
    "refresh_tokens",
    "audit_log",
    "index_generations",
    "houses",
    "households",
    "persons",
    "visits",
    "special_group_records",
    "patrols",
    "patrol_points",
    "patrol_checkins",
    "patrol_findings",
    "presence",
    "campaigns",
    "tasks",
    "task_items",
)
WRITES = ("POST", "PUT", "PATCH", "DELETE")


def snapshot(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Return every row of the tables a write could touch."""
    with engine.connect() as conn:
        return {
            table: [tuple(row) for row in conn.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
            for table in TABLES
        }


def changed_tables(before: dict[str, list[Any]], after: dict[str, list[Any]]) -> list[str]:
    return [table for table in TABLES if before[table] != after[table]]


def random_area(rng: random.Random) -> Area:
    """Return well-formed codes of nothing: a community of a township that does not exist."""
    township = f"320508{rng.randint(500, 899)}000"
    community = township[:9] + f"{rng.randint(1, 199):03d}"
    return Area(
        "random",
        township,
        community,
        (community + f"{rng.randint(1, 499):03d}", community + f"{rng.randint(500, 999):03d}"),
    )


def add_probers(world: World) -> None:
    for name, (spec, _) in PROBERS.items():
        world.add_actor(name, spec)


@dataclasses.dataclass
class Probe:
    """The answers to an out-of-scope id and to a random one, and what each changed."""

    out: Any
    random: Any
    out_changed: list[str]
    random_changed: list[str]


def probe(
    world: World, engine: Any, method: str, path: str, prober: str, area: str, seed: str
) -> Probe:
    rng = random.Random(f"{seed} {area}")  # random, and the same in every run
    out = prepare(Ctx(world, prober, "out", out_area=area), method, path)
    nothing = prepare(
        Ctx(
            world,
            prober,
            "missing",
            missing=random_area(rng),
            missing_id=rng.randint(10**6, 10**9),
        ),
        method,
        path,
    )
    answers, changes = [], []
    for request in (out, nothing):
        before = snapshot(engine) if method in WRITES else None
        answers.append(request.send())
        changes.append(changed_tables(before, snapshot(engine)) if before else [])
    return Probe(answers[0], answers[1], changes[0], changes[1])


def probe_problems(result: Probe, label: str) -> list[str]:
    problems = []
    if result.out.status_code not in (403, 404):
        problems.append(f"{label}: out of scope answered {describe(result.out)}")
    if (result.out.status_code, result.out.data) != (result.random.status_code, result.random.data):
        problems.append(
            f"{label}: out of scope {describe(result.out)} but random {describe(result.random)}"
        )
    if result.out_changed or result.random_changed:
        problems.append(f"{label}: changed {result.out_changed or result.random_changed}")
    return problems


# --- every id-bearing operation -------------------------------------------------------------


def test_global_operations_are_operations_of_the_spec():
    assert set(GLOBAL) <= set(ID_OPERATIONS), sorted(set(GLOBAL) - set(ID_OPERATIONS))


@pytest.mark.parametrize(
    "operation", [op for op in ID_OPERATIONS if op not in GLOBAL], ids=" ".join
)
def test_out_of_scope_id_answers_like_a_random_one(world, engine, operation):
    method, path = operation
    assert operation in REQUESTS, f"{method} {path}: add it to REQUESTS of the matrix first"
    add_probers(world)
    problems = []
    for prober, (_, areas) in PROBERS.items():
        for area in areas:
            result = probe(world, engine, method, path, prober, area, f"{operation} {prober}")
            problems += probe_problems(result, f"{prober} on {area}")
    assert not problems, f"{method} {path}:\n" + "\n".join(problems)


# --- an id in scope with a reference out of scope -------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mixed:
    """A request about an object in the caller's scope that names another object: the named
    object out of scope must answer like a random one (up to the echoed code itself)."""

    caller: dict[str, Any]
    method: str
    request: Callable[[World, Any], tuple[str, Any]]  # (world, reference) -> (url, body)
    out: Callable[[World], Any]
    random: Any


TOWNSHIP_OFFICE = {"role": "township_office", "scope_region": TOWNSHIP}
COUNTY_CENTRE = {"role": "county_centre", "scope_region": COUNTY}
MIXED = {
    "grid of another version": Mixed(
        {"role": "grid_worker", "grids": [A1]},
        "GET",
        lambda w, version: (f"/api/v1/grids/{A1}?version={version}", None),
        lambda w: w.ids["version_C"],
        765_432,
    ),
    "assign a grid out of scope": Mixed(
        TOWNSHIP_OFFICE,
        "POST",
        lambda w, grid: (f"/api/v1/users/{w.ids['member_A']}/assignments", {"grid": grid}),
        lambda w: C1,
        A1[:12] + "555",
    ),
    "end an assignment on a grid out of scope": Mixed(
        TOWNSHIP_OFFICE,
        "POST",
        lambda w, grid: (f"/api/v1/users/{w.ids['member_A']}/assignments/{grid}/end", None),
        lambda w: assigned(w, "member_A", C1),
        A1[:12] + "555",
    ),
    "move an account to a region out of scope": Mixed(
        TOWNSHIP_OFFICE,
        "PATCH",
        lambda w, region: (f"/api/v1/users/{w.ids['member_A']}", {"scope_region": region}),
        lambda w: COMMUNITY_C,
        TOWNSHIP[:9] + "555",
    ),
    "an account in a department out of scope": Mixed(
        TOWNSHIP_OFFICE,
        "POST",
        lambda w, dept: ("/api/v1/users", new_officer(dept)),
        lambda w: w.ids["dept_C"],
        765_432,
    ),
    "a version of a region out of scope": Mixed(
        COUNTY_CENTRE,
        "POST",
        lambda w, region: (f"/api/v1/grid-versions?region={region}", grids_of(AREAS["A"])),
        lambda w: COMMUNITY_C,
        "320508555001",
    ),
}


def assigned(world: World, member: str, grid: str) -> str:
    """Put ``member`` (by the setup admin) on the roster of ``grid`` as well; return it."""
    ok(world.setup.post(f"/api/v1/users/{world.ids[member]}/assignments", json={"grid": grid}), 201)
    return grid


def new_officer(department_id: int) -> dict[str, Any]:
    return {
        "username": "officer_x",
        "password": PASSWORD,
        "role": "community_officer",
        "scope_region": COMMUNITY_A,
        "department_id": department_id,
    }


@pytest.mark.parametrize("name", sorted(MIXED))
def test_out_of_scope_reference_answers_like_a_random_one(world, engine, name):
    mixed = MIXED[name]
    world.add_actor("caller", mixed.caller)
    caller = world.clients["caller"]
    answers = []
    for reference in (mixed.out(world), mixed.random):
        url, body = mixed.request(world, reference)
        before = snapshot(engine)
        response = caller.open(url, method=mixed.method, json=body)
        assert changed_tables(before, snapshot(engine)) == [], (name, reference)
        # The caller's own input may be echoed back: compare with it blanked out.
        data = response.get_data(as_text=True).replace(str(reference), "<ref>")
        answers.append((response.status_code, data))
    assert answers[0] == answers[1], name
    assert answers[0][0] in (404, 422), answers[0]


# --- lists ----------------------------------------------------------------------------------


def items(response: Any, key: str = "code") -> list[Any]:
    return [item[key] for item in ok(response)["items"]]


def test_lists_never_show_what_a_community_worker_may_not_see(world):
    worker = world.clients["grid_worker"]  # grids [A1] of community A
    visible_regions = {PROVINCE, CITY, COUNTY, TOWNSHIP, COMMUNITY_A}  # A and its ancestors

    shown = set(items(worker.get("/api/v1/regions?limit=1000")))
    assert shown == visible_regions
    for query in (
        {"level": "village"},
        {"parent": TOWNSHIP},
        {"within": COUNTY},
        {"within": OUT_COUNTY},
        {"q": "社区"},
        {"q": "街道"},
    ):
        assert set(items(worker.get("/api/v1/regions", query_string=query))) <= visible_regions

    assert items(worker.get("/api/v1/grids?limit=1000")) == [A1]
    for query in (
        {"community": AREAS["B"].community},
        {"region": OUT_COUNTY},
        {"version": world.ids["version_A"]},
        {"version": world.ids["version_B"]},
        {"version": world.ids["version_C"]},
        {"q": "网格"},
        {"type": "dedicated"},
    ):
        assert set(items(worker.get("/api/v1/grids", query_string=query))) <= {A1}, query

    for query in (
        {},
        {"region": TOWNSHIP},
        {"region": OUT_COUNTY},
    ):
        r = worker.get("/api/v1/grids/export", query_string=query)
        codes = {f["properties"]["code"] for f in ok(r)["features"]}
        assert codes <= {A1}, query
    # A version of which the worker sees nothing answers like a missing one.
    hidden = worker.get("/api/v1/grids/export", query_string={"version": world.ids["version_C"]})
    missing = worker.get("/api/v1/grids/export", query_string={"version": 2**31 - 1})
    assert (hidden.status_code, hidden.get_json()) == (404, missing.get_json())

    versions = set(items(worker.get("/api/v1/grid-versions?limit=1000"), "id"))
    assert not versions & {world.ids["version_B"], world.ids["version_C"]}

    points = [center(A1), center(A2), center(B1), center(C1), (120.0, 31.0)]
    answers = ok(worker.post("/api/v1/locate/batch", json={"points": [list(p) for p in points]}))
    results = answers["results"]
    assert [r["grid"] and r["grid"]["code"] for r in results] == [A1, None, None, None, None]
    for result in results:
        assert {r["code"] for r in result["regions"]} <= visible_regions, result
    lon, lat = center(C1)
    single = ok(worker.get("/api/v1/locate", query_string={"lon": lon, "lat": lat}))
    assert single["grid"] is None and {r["code"] for r in single["regions"]} <= visible_regions

    for url in ("/api/v1/users", "/api/v1/departments", "/api/v1/audit"):
        assert worker.get(url).status_code == 403, url  # not the worker's permissions


def test_lists_of_people_departments_and_audit_stay_in_scope(world):
    officer = world.clients["community_officer"]  # community A
    for query in ({}, {"region": AREAS["B"].community}, {"region": COMMUNITY_C}, {"q": "user"}):
        users = ok(officer.get("/api/v1/users", query_string={**query, "limit": 1000}))["items"]
        assert {u["region_code"] for u in users} <= {COMMUNITY_A}, query
    assert world.ids["member_A"] in items(officer.get("/api/v1/users?limit=1000"), "id")

    office = world.clients["township_office"]  # the township of A and B
    depts = set(items(office.get("/api/v1/departments"), "id"))
    assert depts == {world.ids["dept_A"], world.ids["dept_B"]}
    assert not items(office.get(f"/api/v1/departments?region={COMMUNITY_C}"), "id")

    centre = world.clients["county_centre"]
    for entry in ok(centre.get("/api/v1/audit?limit=1000"))["items"]:
        assert entry["region_code"] and entry["region_code"].startswith(COUNTY[:6]), entry
    other = world.caller({"role": "county_centre", "scope_region": OUT_COUNTY}, "centre_c")
    seen = ok(other.get("/api/v1/audit?limit=1000"))["items"]
    assert seen and all(e["region_code"].startswith(OUT_COUNTY[:6]) for e in seen)


# --- accounts the caller may not change, credentials it does not hold ----------------------


def test_sign_out_with_someone_elses_refresh_token_revokes_nothing(world, engine):
    token = world.refresh_token(world.ids["member_C"])
    before = snapshot(engine)
    r = world.clients["grid_worker"].post("/api/v1/auth/logout", json={"refresh_token": token})
    assert r.status_code == 204
    after = snapshot(engine)
    assert changed_tables(before, after) in ([], ["audit_log"])
    assert before["refresh_tokens"] == after["refresh_tokens"]
    r = world.anonymous.post("/api/v1/auth/refresh", json={"refresh_token": token})
    assert r.status_code == 200, r.get_json()


def test_a_peer_account_answers_like_a_missing_one(world, engine):
    """A township office may not change another township office of its township (PATCH and
    password reset say 404, as for a missing account); reading it is allowed."""
    office = world.clients["township_office"]
    peer = world.accounts.create("peer_office", "township_office", scope_region=TOWNSHIP)
    assert office.get(f"/api/v1/users/{peer}").status_code == 200
    for method, suffix, body in (
        ("PATCH", "", {"display_name": "x"}),
        ("POST", "/password", {"new_password": "An0ther-Passw0rd!"}),
    ):
        answers = []
        for user_id in (peer, 765_432):
            before = snapshot(engine)
            r = office.open(f"/api/v1/users/{user_id}{suffix}", method=method, json=body)
            assert changed_tables(before, snapshot(engine)) == []
            answers.append((r.status_code, r.data))
        assert answers[0] == answers[1] and answers[0][0] == 404, (method, suffix, answers)


def test_a_peer_account_has_a_roster_the_caller_may_not_change(world, engine):
    """Putting a peer on a roster or taking it off answers 404 too (before e5967f8: 201 and
    200, which ended the peer's sessions)."""
    office = world.clients["township_office"]
    peer = world.accounts.create("peer_office", "township_office", scope_region=TOWNSHIP)
    world.setup.post(f"/api/v1/users/{peer}/assignments", json={"grid": A2})
    for url, body in (
        (f"/api/v1/users/{peer}/assignments", {"grid": A1}),
        (f"/api/v1/users/{peer}/assignments/{A2}/end", None),
    ):
        before = snapshot(engine)
        r = office.post(url, json=body)
        assert (r.status_code, changed_tables(before, snapshot(engine))) == (404, []), describe(r)


def test_a_region_scoped_admin_cannot_create_an_unrestricted_admin(world, engine):
    """An admin scoped to a region may not make an account without a region: that would be
    an unrestricted admin, out of its scope (it could before e5967f8)."""
    add_probers(world)
    admin = world.clients["admin_of_another_county"]
    before = snapshot(engine)
    body = {"username": "boss", "password": PASSWORD, "role": "admin"}
    r = admin.post("/api/v1/users", json=body)
    assert (r.status_code, changed_tables(before, snapshot(engine))) == (422, []), describe(r)


def test_a_region_scoped_admin_registers_clients_only_in_its_area(world, engine):
    """... not for another area nor for everything (both were registered before e5967f8)."""
    add_probers(world)
    admin = world.clients["admin_of_another_county"]
    for extra in ({"scope_region": COMMUNITY_A}, {}):
        before = snapshot(engine)
        body = {"name": "hotline", "scopes": ["grids:read"], **extra}
        r = admin.post("/api/v1/clients", json=body)
        assert (r.status_code, changed_tables(before, snapshot(engine))) == (422, []), describe(r)


def test_a_region_scoped_admin_lists_only_the_clients_of_its_area(world):
    """... and sees no other (it listed, read and revoked every client before the scoped
    list_clients/get_client/revoke_client)."""
    add_probers(world)
    admin = world.clients["admin_of_another_county"]  # county 320602, community C
    regions = {c["scope_region"] for c in ok(admin.get("/api/v1/clients"))["items"]}
    assert regions == {COMMUNITY_C}, regions
