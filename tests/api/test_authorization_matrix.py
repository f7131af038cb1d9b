"""Every operation of the OpenAPI document × every caller × in and out of the caller's scope.

The operations come from the generated spec, the permission each needs from its
``x-permission`` and what each role holds from ``gridapi.security.permissions.ROLES``; only
the requests are written here, in ``REQUESTS``. A new operation fails
``test_operation_answers_every_caller`` until it gets an entry there: that is how it
declares what it does for each caller.

Expected answers:

* a public operation (``x-permission`` null) answers its documented 2xx to anyone;
* elsewhere an anonymous caller gets 401, and a caller without the permission 403;
* otherwise an object in the caller's scope answers the documented 2xx, and an object out of
  the caller's scope answers like a missing one: ``Case.out``, 404 for an id in the path,
  422 for a create that references a region or a grid, 200 for a filtered list.

Deviations by design are listed, with their reason, in ``DESIGNED``.

``World`` builds what every test starts from: the township and communities A and B of
``tests/factories.py`` with grids A1, A2, B1, B2 (a grid version per community), and in
another city county 320602 with community C and grids C1, C2, out of scope for every caller
but the unrestricted admin; in each community a department, a worker and an API client.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event, text

from gridapi import clock
from gridapi.auth import AUTHENTICATED
from gridapi.personal import check_digit
from gridapi.scope import Scope
from gridapi.security.permissions import PERMISSIONS, ROLES
from gridapi.spec import spec_dict

from ..factories import (
    CITY,
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    LAT0,
    LON0,
    PASSWORD,
    STEP,
    TOWNSHIP,
    collection,
    feature,
    rectangle,
    region_rows,
    square,
)
from ..snapshots import Snapshot, State, WorldKey, take, world_key

OUT_CITY, OUT_COUNTY, OUT_TOWNSHIP = "320600000000", "320602000000", "320602001000"
COMMUNITY_C = "320602001001"
OTHER_TOWNSHIP = "320508002000"  # in the home county, with no communities
OUT_COL = 20  # community C lies 20 cells east of community A
NEW_PASSWORD = "An0ther-Passw0rd!"
NOWHERE = (100.0, 40.0)  # far from every grid and region
MISSING_ID = 987_654
CLIENT_SCOPES = ("grids:read", "regions:read")


@dataclasses.dataclass(frozen=True)
class Area:
    """A community, its township and two of its grids; ``name`` keys the world's objects."""

    name: str
    township: str
    community: str
    grids: tuple[str, str]


AREAS = {
    "A": Area("A", TOWNSHIP, COMMUNITY_A, (COMMUNITY_A + "001", COMMUNITY_A + "002")),
    "B": Area("B", TOWNSHIP, COMMUNITY_B, (COMMUNITY_B + "001", COMMUNITY_B + "002")),
    "C": Area("C", OUT_TOWNSHIP, COMMUNITY_C, (COMMUNITY_C + "001", COMMUNITY_C + "002")),
}
# Well-formed codes of nothing, in the home county (inside the scope of its centres).
MISSING = Area("missing", "320508009000", "320508009001", ("320508009001001", "320508009001002"))
A1, A2 = AREAS["A"].grids
B1 = AREAS["B"].grids[0]
C1 = AREAS["C"].grids[0]
COLUMNS = {
    A1: 0,
    A2: 1,
    B1: 2,
    AREAS["B"].grids[1]: 3,
    C1: OUT_COL,
    AREAS["C"].grids[1]: OUT_COL + 1,
}

# The callers: an account of each role (Accounts.create arguments), an API client, nobody.
ACTORS: dict[str, dict[str, Any]] = {
    "grid_worker": {"role": "grid_worker", "grids": [A1]},
    "grid_chief": {"role": "grid_chief", "grids": [A1, A2]},
    "community_officer": {"role": "community_officer", "scope_region": COMMUNITY_A},
    "department": {"role": "department", "scope_region": COUNTY},
    "township_office": {"role": "township_office", "scope_region": TOWNSHIP},
    "county_centre": {"role": "county_centre", "scope_region": COUNTY},
    "city_centre": {"role": "city_centre", "scope_region": CITY},
    "admin": {"role": "admin"},
    "api_client": {"scopes": CLIENT_SCOPES, "scope_region": COUNTY},
    "anonymous": {},
}
ROLE_PERMISSIONS = {name: frozenset(permissions) for name, _, _, permissions in ROLES}

SPEC = spec_dict()
OPERATIONS = sorted(
    (method.upper(), path)
    for path, item in SPEC["paths"].items()
    for method in item
    if method in ("get", "put", "post", "patch", "delete")
)


def spec_operation(method: str, path: str) -> dict[str, Any]:
    return SPEC["paths"][path][method.lower()]


def success_status(method: str, path: str) -> int:
    """Return the one 2xx status the spec documents for the operation."""
    codes = [int(c) for c in spec_operation(method, path)["responses"] if c.startswith("2")]
    if sorted(codes) == [200, 201]:  # created, or (a replay long after) found: 201 first
        return 201
    if sorted(codes) == [200, 206]:  # a file: 206 answers a Range request only
        return 200
    assert len(codes) == 1, f"{method} {path} documents {codes} as success"
    return codes[0]


def actor_permissions(spec: dict[str, Any]) -> frozenset[str]:
    if "scopes" in spec:
        return frozenset(spec["scopes"])
    return ROLE_PERMISSIONS[spec["role"]] if spec else frozenset()


def actor_scope(spec: dict[str, Any]) -> Scope:
    if spec.get("scope_region"):
        return Scope.of_region(spec["scope_region"])
    if spec.get("grids"):
        return Scope.of_grids(spec["grids"])
    return Scope.everything()


def center(grid: str) -> tuple[float, float]:
    """Return the middle of ``grid``, or a point far from everything for an unknown grid."""
    if grid not in COLUMNS:
        return NOWHERE
    return (round(LON0 + (COLUMNS[grid] + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6))


def grids_of(area: Area) -> dict[str, Any]:
    """Return a FeatureCollection of the area's two grids (unknown grids go far east)."""
    return collection(
        *(feature(code, square(COLUMNS.get(code, 60 + i), 0)) for i, code in enumerate(area.grids))
    )


def world_regions() -> list[dict[str, Any]]:
    c_box = rectangle(OUT_COL, 0, OUT_COL + 2, 1)
    return [
        *region_rows(),
        {"code": OTHER_TOWNSHIP, "name": "双塔街道", "boundary": rectangle(0, 2, 4, 3)},
        {"code": OUT_CITY, "name": "南通市"},
        {"code": OUT_COUNTY, "name": "崇川区"},
        {"code": OUT_TOWNSHIP, "name": "城东街道", "boundary": c_box},
        {"code": COMMUNITY_C, "name": "城东社区", "boundary": c_box},
    ]


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_data(as_text=True))
    return response.get_json()


# Categories are global, and on PostgreSQL the table is not truncated between tests: the
# ``world`` fixture removes the ones a test made, and codes are never reused in a process.
_CALENDAR_DAYS = itertools.count(1)
_CATEGORY_CODES = itertools.count(10)
_ID_SERIAL = itertools.count(0)  # birth days from 1950-01-01: ID numbers unique per process


# --- the world ------------------------------------------------------------------------------


class World:
    """What every test starts from, made through the API by an unrestricted ``setup`` admin
    (API clients through the service layer: the API shows a key only once)."""

    def __init__(self, app: Any, accounts: Any) -> None:
        self.app = app
        self.accounts = accounts
        self.serial = itertools.count(100)
        self.setup = accounts.client("setup", "admin")
        self.anonymous = app.test_client()
        self.ids: dict[str, int] = {}
        self.usernames: dict[int, str] = {}
        self.actors: dict[str, dict[str, Any]] = {}
        self.clients: dict[str, Any] = {}
        self.categories: list[str] = []  # made here; removed again by the ``world`` fixture

    @classmethod
    def build(cls, app: Any, accounts: Any) -> World:
        world = cls(app, accounts)
        ok(world.setup.post("/api/v1/regions/import", json=world_regions()))
        for area in AREAS.values():
            world.ids[f"version_{area.name}"] = version = world.draft(area)
            ok(world.setup.post(f"/api/v1/grid-versions/{version}/activate"))
            world.ids[f"dept_{area.name}"] = world.department(area)
            world.ids[f"member_{area.name}"] = world.user(area)
            world.ids[f"client_{area.name}"] = world.api_client(area.community)[0]
        for name, spec in ACTORS.items():
            world.add_actor(name, spec)
        return world

    def kept(self, snapshot: Snapshot) -> _Kept:
        """Return what a restored copy of this world (just built) needs besides its rows; its
        serial goes on from where this one's does."""
        serial = next(self.serial)
        self.serial = itertools.count(serial)
        keys = {
            name: self.clients[name].environ_base["HTTP_X_API_KEY"]
            for name, spec in ACTORS.items()
            if "scopes" in spec
        }
        return _Kept(
            snapshot, dict(self.ids), dict(self.usernames), serial, dict(self.accounts.ids), keys
        )

    @classmethod
    def restored(cls, app: Any, accounts: Any, kept: _Kept) -> World:
        """Return the world ``kept`` was taken from, on an application whose database has
        its rows back: callers signed in afresh (the signing key is the application's), the
        apps with their keys, the serial going on where the build left it."""
        world = cls.__new__(cls)
        world.app, world.accounts = app, accounts
        accounts.ids.update(kept.accounts)
        world.serial = itertools.count(kept.serial)
        world.setup = accounts.client("setup")
        world.anonymous = app.test_client()
        world.ids, world.usernames = dict(kept.ids), dict(kept.usernames)
        world.actors, world.clients, world.categories = {}, {}, []
        for name, spec in ACTORS.items():
            world.actors[name] = spec
            if not spec:
                world.clients[name] = world.anonymous
            elif "scopes" in spec:
                client = app.test_client()
                client.environ_base["HTTP_X_API_KEY"] = kept.keys[name]
                world.clients[name] = client
            else:
                world.clients[name] = accounts.client(f"actor_{name}")
        return world

    # -- callers

    def add_actor(self, name: str, spec: dict[str, Any]) -> None:
        self.actors[name] = spec
        self.clients[name] = self.caller(spec, f"actor_{name}")

    def caller(self, spec: dict[str, Any], username: str) -> Any:
        """Return a test client for a new caller made after ``spec``."""
        if not spec:
            return self.anonymous
        client = self.app.test_client()
        if "scopes" in spec:
            _, key = self.api_client(spec["scope_region"], spec["scopes"])
            client.environ_base["HTTP_X_API_KEY"] = key
            return client
        kwargs = {k: v for k, v in spec.items() if k != "role"}
        return self.accounts.client(username, spec["role"], **kwargs)

    def fresh_caller(self, actor: str) -> tuple[Any, str | None]:
        """Return a new account like ``actor``, signed in, and its refresh token.

        For password changes and sign-out, which end the caller's sessions. Apps and nobody
        are returned as they are (they have no password and no refresh token).
        """
        spec = self.actors[actor]
        if not spec or "scopes" in spec:
            return self.clients[actor], None
        username = f"fresh{next(self.serial)}"
        self.caller(spec, username)
        tokens = ok(self.anonymous.post("/api/v1/auth/token", json=self.credentials(username)))
        client = self.app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens['access_token']}"
        return client, tokens["refresh_token"]

    def api_client(
        self, scope_region: str | None, scopes: tuple[str, ...] = CLIENT_SCOPES
    ) -> tuple[int, str]:
        from gridapi.services.identity import create_client

        with self.app.extensions["gridapi"].sessions.begin() as session:
            client, key = create_client(
                session,
                name=f"app {next(self.serial)}",
                scopes=list(scopes),
                scope_region=scope_region,
                rate_limit="100000 per minute",
                created_by="tests",
            )
            return client.id, key

    # -- objects; writes get fresh ones, so that no call depends on another

    def username(self) -> str:
        return f"user{next(self.serial)}"

    def credentials(self, username: str) -> dict[str, str]:
        return {"username": username, "password": PASSWORD}

    def user(self, area: Area) -> int:
        username = self.username()
        body = {"username": username, "password": PASSWORD, "role": "grid_worker"}
        user_id = ok(self.setup.post("/api/v1/users", json={**body, "grids": [area.grids[0]]}), 201)
        self.usernames[user_id["id"]] = username
        return user_id["id"]

    def refresh_token(self, user_id: int) -> str:
        body = self.credentials(self.usernames[user_id])
        return ok(self.anonymous.post("/api/v1/auth/token", json=body))["refresh_token"]

    def region_code(self, township: str) -> str:
        return township[:9] + f"{next(self.serial):03d}"

    def region(self, area: Area) -> str:
        code = self.region_code(area.township)
        ok(self.setup.post("/api/v1/regions", json={"code": code, "name": f"社区{code[-3:]}"}), 201)
        return code

    def department(self, area: Area) -> int:
        body = {"code": f"D{next(self.serial)}", "name": "消防", "region_code": area.community}
        return ok(self.setup.post("/api/v1/departments", json=body), 201)["id"]

    def draft(self, area: Area) -> int:
        return ok(self.setup.post("/api/v1/grid-versions", json=grids_of(area)), 201)["id"]

    def category_code(self) -> str:
        """Return an unused subclass code of the test class 99 (made when missing)."""
        if self.setup.get("/api/v1/categories/99").status_code == 404:
            ok(self.setup.post("/api/v1/categories", json={"code": "99", "name": "测试"}), 201)
            self.categories.append("99")
        code = f"99{next(_CATEGORY_CODES):02d}"
        self.categories.insert(0, code)
        return code

    def calendar_day(self) -> str:
        """Return a day (far in the future) just put into the calendar, to delete."""
        day = (
            datetime.date(2099, 1, 1) + datetime.timedelta(days=next(_CALENDAR_DAYS))
        ).isoformat()
        ok(self.setup.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}), 200)
        return day

    def category(self) -> str:
        code = self.category_code()
        ok(self.setup.post("/api/v1/categories", json={"code": code, "name": "测试小类"}), 201)
        return code

    def case(self, area: Area, reporter: Any = None) -> int:
        """Return a new case at the centre of the area's first grid, reported by ``reporter``
        (a signed-in client; ``setup`` by default)."""
        point = {"type": "Point", "coordinates": list(center(area.grids[0]))}
        body = {"category": "0101", "description": "矩阵事件", "location": point}
        return ok((reporter or self.setup).post("/api/v1/cases", json=body), 201)["id"]

    def step(self, case_id: int, action: str, **data: Any) -> str:
        """Take a workflow step on the case as ``setup``; return the case's new ETag."""
        etag = self.setup.get(f"/api/v1/cases/{case_id}").headers["ETag"]
        r = self.setup.post(
            f"/api/v1/cases/{case_id}/transitions",
            json={"action": action, "comment": "矩阵", **data},
            headers={"If-Match": etag},
        )
        return f'"{case_id}-{ok(r)["version"]}"'

    def dispatched_case(self, area: Area, assignee: int) -> tuple[int, str]:
        """Return a new case of the area dispatched to the account ``assignee``, and its ETag."""
        case_id = self.case(area)
        self.step(case_id, "accept")
        self.step(case_id, "file")
        return case_id, self.step(case_id, "dispatch", assignee_id=assignee)

    def notification(self, area: Area) -> int:
        """Return the id of the notice of a new case of the area dispatched to its member."""
        case_id, _etag = self.dispatched_case(area, self.ids[f"member_{area.name}"])
        with self.app.extensions["gridapi"].engine.connect() as conn:
            return conn.execute(
                text("SELECT max(id) FROM notifications WHERE case_id = :case"), {"case": case_id}
            ).scalar_one()

    def closed_case(self, area: Area, reporter: Any) -> int:
        """Return a new case of the area reported by ``reporter``, resolved and closed."""
        case_id = self.case(area, reporter)
        for action in ("accept", "file", "feedback", "verify_pass", "close"):
            self.step(case_id, action)
        return case_id

    def attachment(self, area: Area) -> tuple[int, int]:
        """Return (case id, attachment id) of a small PNG attached to a new case of the area."""
        case_id = self.case(area)
        r = self.setup.post(
            f"/api/v1/cases/{case_id}/attachments",
            data=photo_upload(),
            content_type="multipart/form-data",
        )
        return case_id, ok(r, 201)["id"]

    # -- tasks and campaigns

    due_in = {"amount": 3, "unit": "days"}

    def webhook(self, area: Area) -> int:
        """Return a new webhook subscription (made by ``setup``) for the area's community."""
        body = {
            "url": "https://93.184.215.14/hooks/matrix",  # public, never called: no worker runs
            "events": ["case.created"],
            "region_codes": [area.community],
        }
        return ok(self.setup.post("/api/v1/webhooks", json=body), 201)["id"]

    def webhook_delivery(self, area: Area) -> tuple[int, int]:
        """Return a new subscription of the area and a dead delivery of a ping to it (as
        the worker leaves one after its last attempt: only such a one may be redelivered)."""
        from sqlalchemy import update

        from gridapi.models import WebhookDelivery

        webhook_id = self.webhook(area)
        delivery = ok(self.setup.post(f"/api/v1/webhooks/{webhook_id}/ping"), 202)
        with self.app.extensions["gridapi"].sessions.begin() as session:
            session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery["id"])
                .values(status="dead")
            )
        return webhook_id, delivery["id"]

    def task(self, area: Area, assignee: int | None = None) -> int:
        """Return a new task in the area's first grid, for ``assignee`` (else for the grid)."""
        body: dict[str, Any] = {"title": "矩阵任务", "grid": area.grids[0], "due_in": self.due_in}
        if assignee is not None:
            body["assignee_id"] = assignee
        return ok(self.setup.post("/api/v1/tasks", json=body), 201)["id"]

    def campaign(self, area: Area) -> int:
        """Return a new campaign over the area's community (a task per grid)."""
        body = {"title": "矩阵专项", "region": area.community, "due_in": self.due_in}
        return ok(self.setup.post("/api/v1/campaigns", json=body), 201)["id"]

    def step_call(self, c: Ctx, kind: str, object_id: int, body: Any) -> Call:
        """Return a step on a task or campaign with its current ETag (made up when missing)."""
        if c.variant == "missing":
            etag = f'"{object_id}-1"'
        else:
            etag = self.setup.get(f"/api/v1/{kind}s/{object_id}").headers["ETag"]
        return Call(params={f"{kind}_id": object_id}, json=body, headers={"If-Match": etag})

    def own_task_step(self, c: Ctx, body: Any = None) -> Call:
        """Accept or complete a task assigned to the caller itself (an account whose role
        takes tasks: accept and complete are the assignee's); out of the caller's scope, one
        assigned to the area's member."""
        spec = self.actors[c.actor]
        account = self.accounts.ids.get(f"actor_{c.actor}")
        mine = c.variant == "in" or actor_scope(spec).covers_region(c.area.community)
        if not mine or account is None or "tasks:complete" not in actor_permissions(spec):
            account = c.object("member")
        return self.step_call(c, "task", c.fresh(lambda area: self.task(area, account)), body)

    # -- the register

    def id_number(self) -> str:
        """Return a valid ID number never used before in this process."""
        born = datetime.date(1950, 1, 1) + datetime.timedelta(days=next(_ID_SERIAL))
        first = f"320508{born:%Y%m%d}{next(self.serial) % 1000:03d}"
        return first + check_digit(first)

    def house(self, area: Area) -> int:
        body = {"address": f"测试路{next(self.serial)}号", "grid": area.grids[0]}
        return ok(self.setup.post("/api/v1/houses", json=body), 201)["id"]

    def household(self, area: Area) -> int:
        body = {"number": f"H{next(self.serial)}", "house_id": self.house(area)}
        return ok(self.setup.post("/api/v1/households", json=body), 201)["id"]

    def person(self, area: Area) -> int:
        body = {"name": "张三", "id_number": self.id_number(), "grid": area.grids[0]}
        return ok(self.setup.post("/api/v1/persons", json=body), 201)["id"]

    def visit(self, area: Area) -> int:
        body = {"household_id": self.household(area), "findings": "矩阵走访"}
        return ok(self.setup.post("/api/v1/visits", json=body), 201)["id"]

    def special_group(self, area: Area) -> int:
        body = {"person_id": self.person(area), "type": "petitioner", "notes": "矩阵"}
        return ok(self.setup.post("/api/v1/special-groups", json=body), 201)["id"]

    # -- patrols and presence

    def member_client(self, area: Area) -> Any:
        """Return the area's member (a grid worker of its first grid), signed in."""
        key = f"member_{area.name}"
        if key not in self.clients:
            body = self.credentials(self.usernames[self.ids[key]])
            tokens = ok(self.anonymous.post("/api/v1/auth/token", json=body))
            client = self.app.test_client()
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {tokens['access_token']}"
            self.clients[key] = client
        return self.clients[key]

    def patrol(self, area: Area) -> int:
        """Return a new ended patrol of the area's member, with a short track in its grid."""
        member = self.member_client(area)
        began = patrol_start()
        start = {"started_at": began.isoformat()}
        patrol_id = ok(member.post("/api/v1/patrols", json=start), 201)["id"]
        lon, lat = center(area.grids[0])
        step = (datetime.datetime.now(datetime.UTC) - began) / 4
        points = [{"t": (began + step * i).isoformat(), "lon": lon, "lat": lat} for i in (1, 2, 3)]
        ok(member.post(f"/api/v1/patrols/{patrol_id}/points", json={"points": points}))
        ok(member.post(f"/api/v1/patrols/{patrol_id}/end", json={}))
        return patrol_id

    def own_patrol(self, c: Ctx) -> int:
        """Return an active patrol of the caller itself (only its worker writes to a patrol;
        out of the caller's scope, or for a caller who cannot patrol, one of the area's
        member), or the missing id."""
        if c.variant == "missing":
            return c.missing_id
        spec = self.actors[c.actor]
        mine = c.variant == "in" or actor_scope(spec).covers_region(c.area.community)
        account = self.accounts.ids.get(f"actor_{c.actor}")
        if not mine or account is None or "patrols:write" not in actor_permissions(spec):
            return self.patrol(c.area)
        began = patrol_start()
        where = {"type": "Point", "coordinates": list(center(c.area.grids[0]))}
        r = self.clients[c.actor].post(
            "/api/v1/patrols", json={"started_at": began.isoformat(), "location": where}
        )
        if r.status_code == 409:  # one active patrol per worker: that one
            return r.get_json()["errors"]["active_patrol_id"]
        return ok(r, 201)["id"]

    def grid_point(self, c: Ctx) -> dict[str, Any]:
        """Return the middle of the area's first grid as a GeoJSON point."""
        return {"type": "Point", "coordinates": list(center(c.area.grids[0]))}

    def track_point(self, c: Ctx) -> dict[str, Any]:
        """Return a point in the area's first grid, a little into a patrol started at
        ``patrol_start`` (an hour-old one: a minute into it)."""
        lon, lat = center(c.area.grids[0])
        began = patrol_start()
        at = began + (datetime.datetime.now(datetime.UTC) - began) / 60
        return {"t": at.isoformat(), "lon": lon, "lat": lat}

    def read_patrol(self, c: Ctx) -> Call:
        """Read a patrol of the area's member; a worker without patrols:read reads its own."""
        spec = self.actors[c.actor]
        own = c.variant == "in" and "patrols:read" not in actor_permissions(spec)
        if own and self.accounts.ids.get(f"actor_{c.actor}") is not None:
            return Call(params={"patrol_id": self.own_patrol(c)})
        return Call(params={"patrol_id": c.fresh(self.patrol)})


def patrol_start() -> datetime.datetime:
    """An hour ago, or the start of the county's day if that is later: the accounts'
    rosters start today (the county's date), and a patrol started before midnight belongs
    to the grid of that day's roster: none, so that its grid's chief could not read it
    (between 00:00 and 01:00 in Shanghai the matrix failed)."""
    now = datetime.datetime.now(datetime.UTC)
    midnight = datetime.datetime.combine(clock.today(), datetime.time(), clock.zone())
    return max(now - datetime.timedelta(hours=1), midnight + datetime.timedelta(seconds=1))


# --- requests -------------------------------------------------------------------------------


@dataclasses.dataclass
class Call:
    """A concrete request: path parameters, query, JSON body (or multipart ``files``), and who
    sends it when not the caller under test itself (a fresh account like it, for password
    changes and sign-out)."""

    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    query: dict[str, Any] | None = None
    json: Any = None
    sender: Any = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


@dataclasses.dataclass
class Ctx:
    """What a request builder gets: the world, the caller, and which objects to use.

    ``variant`` "in" uses the objects of area A, "out" those of ``out_area`` (C unless a test
    says otherwise) and "missing" codes and ids of nothing (``missing``, ``missing_id``).
    """

    world: World
    actor: str
    variant: str
    out_area: str = "C"
    missing: Area = MISSING
    missing_id: int = MISSING_ID

    @property
    def area(self) -> Area:
        if self.variant == "missing":
            return self.missing
        return AREAS["A" if self.variant == "in" else self.out_area]

    def object(self, kind: str) -> int:
        """Return the id of the area's ``kind`` (version, dept, member, client)."""
        if self.variant == "missing":
            return self.missing_id
        return self.world.ids[f"{kind}_{self.area.name}"]

    def fresh(self, make: Callable[[Area], Any], missing: Any = None) -> Any:
        """Return a new object of the area, or ``missing`` (default the missing id)."""
        if self.variant == "missing":
            return self.missing_id if missing is None else missing
        return make(self.area)


@dataclasses.dataclass(frozen=True)
class Case:
    """How to call an operation, and what an out-of-scope (or missing) object answers.

    ``out`` None: the operation touches nothing that has an area (the caller itself, public
    or global data), so it is only called with the "in" variant.
    """

    build: Callable[[Ctx], Call]
    out: int | None


def plain(c: Ctx) -> Call:
    return Call()


def filtered(name: str, attribute: str = "community") -> Callable[[Ctx], Call]:
    return lambda c: Call(query={name: getattr(c.area, attribute)})


def region(c: Ctx) -> Call:
    return Call(params={"code": c.area.community})


def new_region(c: Ctx) -> dict[str, str]:
    return {"code": c.world.region_code(c.area.township), "name": "新社区"}


def version(c: Ctx) -> Call:
    return Call(params={"version_id": c.object("version")})


def fresh_user(c: Ctx) -> int:
    return c.fresh(c.world.user)


def sign_in(c: Ctx) -> Call:
    return Call(json=c.world.credentials(c.world.usernames[c.world.ids["member_A"]]))


def refresh(c: Ctx) -> Call:
    return Call(json={"refresh_token": c.world.refresh_token(c.world.ids["member_A"])})


def logout(c: Ctx) -> Call:
    """Sign out with one's own refresh token; someone else's or an unknown one does nothing."""
    if c.variant == "in":
        sender, token = c.world.fresh_caller(c.actor)
        if token is None:  # nobody, or an app: any real token will do
            token = c.world.refresh_token(c.world.ids["member_A"])
        return Call(json={"refresh_token": token}, sender=sender)
    other = c.fresh(lambda area: c.world.refresh_token(c.object("member")), missing="x" * 43)
    return Call(json={"refresh_token": other})


def change_password(c: Ctx) -> Call:
    sender, _ = c.world.fresh_caller(c.actor)
    return Call(json={"current_password": PASSWORD, "new_password": NEW_PASSWORD}, sender=sender)


def import_version(c: Ctx) -> Call:
    if c.variant == "missing":  # a province nobody created: no region can hold the grids
        area = Area(
            "missing", "110101009000", "110101009001", ("110101009001001", "110101009001002")
        )
        return Call(json=grids_of(area))
    return Call(json=grids_of(c.area))


def new_user(c: Ctx) -> Call:
    body = {"username": c.world.username(), "password": PASSWORD, "role": "grid_worker"}
    return Call(json={**body, "grids": [c.area.grids[0]]})


def end_assignment(c: Ctx) -> Call:
    return Call(params={"user_id": fresh_user(c), "grid_code": c.area.grids[0]})


def new_department(c: Ctx) -> Call:
    code = f"D{next(c.world.serial)}"
    return Call(json={"code": code, "name": "市场监管", "region_code": c.area.community})


def photo_upload() -> dict[str, Any]:
    """Return the multipart fields of an upload of a small PNG."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(out, "PNG")
    return {"file": (io.BytesIO(out.getvalue()), "evidence.png")}


def attachment(c: Ctx) -> Call:
    case_id, attachment_id = c.fresh(c.world.attachment, missing=(c.missing_id, c.missing_id))
    return Call(params={"case_id": case_id, "attachment_id": attachment_id})


def new_case(c: Ctx) -> Call:
    point = {"type": "Point", "coordinates": list(center(c.area.grids[0]))}
    return Call(json={"category": "0101", "description": "矩阵事件", "location": point})


def a_case(c: Ctx) -> Call:
    return Call(params={"case_id": c.fresh(c.world.case)})


def sign(c: Ctx) -> Call:
    """Sign for a case dispatched to the caller itself (any account may be dispatched to,
    and its handler may sign whatever its role); out of scope, one dispatched to the area's
    member. The ETag is current: only the scope decides."""
    if c.variant == "missing":
        etag = f'"{c.missing_id}-4"'
        return Call(
            params={"case_id": c.missing_id}, json={"action": "sign"}, headers={"If-Match": etag}
        )
    account = c.world.accounts.ids.get(f"actor_{c.actor}")
    if c.variant == "out" or account is None:  # an app, nobody
        account = c.object("member")
    case_id, etag = c.world.dispatched_case(c.area, account)
    return Call(params={"case_id": case_id}, json={"action": "sign"}, headers={"If-Match": etag})


def rate(c: Ctx) -> Call:
    """Rate a closed case the caller reported itself; out of scope one the ``setup`` admin
    reported (unless the caller's area covers it: then the caller reports it, as in scope)."""
    if c.variant == "missing":
        return Call(params={"case_id": c.missing_id}, json={"score": 5})
    spec = c.world.actors[c.actor]
    reporter = c.world.setup
    person = bool(spec) and "scopes" not in spec
    if person and (c.variant == "in" or actor_scope(spec).covers_region(c.area.community)):
        reporter = c.world.clients[c.actor]
    return Call(params={"case_id": c.world.closed_case(c.area, reporter)}, json={"score": 5})


def new_client(c: Ctx) -> Call:
    return Call(
        json={"name": "12345热线", "scopes": ["grids:read"], "scope_region": c.area.community}
    )


def new_person(c: Ctx) -> Call:
    body = {"name": "李四", "id_number": c.world.id_number(), "phone": "13912345678"}
    return Call(json={**body, "grid": c.area.grids[0]})


def by_id(name: str, make: str) -> Callable[[Ctx], Call]:
    """Return a builder calling with a fresh object of the area made by ``World.<make>``."""
    return lambda c: Call(params={name: c.fresh(getattr(c.world, make))})


PURPOSE = {"purpose": "矩阵核实身份"}


def person_import(c: Ctx) -> Call:
    """A one-row CSV in the area's first grid (all or nothing: out of scope → 422)."""
    body = f"姓名,身份证号,网格编码\n李四,{c.world.id_number()},{c.area.grids[0]}\n"
    return Call(files={"file": (io.BytesIO(body.encode()), "people.csv")})


def export_job(c: Any, kind: str, *, done: bool = False) -> Any:
    """The request of an export-job operation.

    "in": a job of the caller itself; "out": a job the caller cannot reach (another
    account's), or for a caller whose scope covers area C its own job of area C; "missing":
    an id of nothing. A caller that may not export ``kind`` gets the missing id (it is
    answered 401/403 before the id is looked at).
    """
    from .test_exports import run_jobs

    if c.variant == "missing":
        return Call(params={"job_id": c.missing_id})
    spec = c.world.actors[c.actor]
    # Area C is outside every caller's scope but that of the callers covering it (the
    # matrix expects their own job there); anywhere else "out" is someone else's job.
    own = c.variant == "in" or (
        c.area.community == COMMUNITY_C and spec and actor_scope(spec).covers_region(COMMUNITY_C)
    )
    sender = c.world.clients[c.actor] if own else c.world.setup
    r = sender.post(f"/api/v1/exports/{kind}/jobs", json={"filters": {"region": c.area.community}})
    if r.status_code != 202:
        return Call(params={"job_id": c.missing_id})
    if done:
        run_jobs(c.world.app)
    return Call(params={"job_id": r.get_json()["id"]})


REQUESTS: dict[tuple[str, str], Case] = {
    # health and sign-in: public
    ("GET", "/api/v1/health"): Case(plain, out=None),
    ("GET", "/api/v1/health/live"): Case(plain, out=None),
    # the worker's backlog: counted over every county, for admins (system:read)
    ("GET", "/api/v1/health/jobs"): Case(plain, out=None),
    # the caller's own inbox: addressed to the caller, of cases the caller reads
    ("GET", "/api/v1/me/notifications"): Case(plain, out=None),
    # the caller's own read mark: clamped to the caller's own notifications
    ("PUT", "/api/v1/me/notifications/read"): Case(
        lambda c: Call(json={"up_to": MISSING_ID}), out=None
    ),
    # the gateways' queue: of the caller's area (by the case's or task's region)
    ("GET", "/api/v1/notifications"): Case(plain, out=None),
    ("POST", "/api/v1/notifications/sent"): Case(
        lambda c: Call(json={"ids": [c.fresh(c.world.notification)]}), out=422
    ),
    ("POST", "/api/v1/auth/token"): Case(sign_in, out=None),
    ("POST", "/api/v1/auth/refresh"): Case(refresh, out=None),
    # the caller itself
    ("POST", "/api/v1/auth/logout"): Case(logout, out=204),
    ("POST", "/api/v1/auth/password"): Case(change_password, out=None),
    ("GET", "/api/v1/me"): Case(plain, out=None),
    # regions
    ("GET", "/api/v1/regions"): Case(filtered("parent", "township"), out=200),
    ("POST", "/api/v1/regions"): Case(lambda c: Call(json=new_region(c)), out=422),
    ("POST", "/api/v1/regions/import"): Case(lambda c: Call(json=[new_region(c)]), out=422),
    ("GET", "/api/v1/regions/{code}"): Case(region, out=404),
    ("PATCH", "/api/v1/regions/{code}"): Case(
        lambda c: Call(
            params={"code": c.fresh(c.world.region, missing=c.area.community)},
            json={"name": "改名社区"},
        ),
        out=404,
    ),
    ("GET", "/api/v1/regions/{code}/children"): Case(region, out=404),
    ("GET", "/api/v1/regions/{code}/ancestors"): Case(region, out=404),
    ("GET", "/api/v1/regions/{code}/subtree"): Case(region, out=404),
    # grid versions and grids
    ("GET", "/api/v1/grid-versions"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/grid-versions"): Case(import_version, out=422),
    ("GET", "/api/v1/grid-versions/{version_id}"): Case(version, out=404),
    ("POST", "/api/v1/grid-versions/{version_id}/activate"): Case(
        lambda c: Call(params={"version_id": c.fresh(c.world.draft)}, json={"force": False}),
        out=404,
    ),
    ("GET", "/api/v1/grid-versions/{version_id}/grids"): Case(version, out=404),
    ("GET", "/api/v1/grids"): Case(filtered("community"), out=200),
    ("GET", "/api/v1/grids/export"): Case(filtered("region"), out=200),
    ("GET", "/api/v1/grids/{code}"): Case(
        lambda c: Call(params={"code": c.area.grids[0]}), out=404
    ),
    # routing: a point in a grid out of scope answers like a point in no grid
    ("GET", "/api/v1/locate"): Case(
        lambda c: Call(query=dict(zip(("lon", "lat"), center(c.area.grids[0]), strict=True))),
        out=200,
    ),
    ("POST", "/api/v1/locate/batch"): Case(
        lambda c: Call(json={"points": [list(center(c.area.grids[0]))]}), out=200
    ),
    # users and rosters
    ("GET", "/api/v1/roles"): Case(plain, out=None),
    ("GET", "/api/v1/users"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/users"): Case(new_user, out=422),
    ("GET", "/api/v1/users/{user_id}"): Case(
        lambda c: Call(params={"user_id": c.object("member")}), out=404
    ),
    ("PATCH", "/api/v1/users/{user_id}"): Case(
        lambda c: Call(params={"user_id": fresh_user(c)}, json={"display_name": "新名字"}),
        out=404,
    ),
    ("POST", "/api/v1/users/{user_id}/password"): Case(
        lambda c: Call(params={"user_id": fresh_user(c)}, json={"new_password": NEW_PASSWORD}),
        out=404,
    ),
    ("GET", "/api/v1/users/{user_id}/assignments"): Case(
        lambda c: Call(params={"user_id": c.object("member")}), out=404
    ),
    ("POST", "/api/v1/users/{user_id}/assignments"): Case(
        lambda c: Call(params={"user_id": fresh_user(c)}, json={"grid": c.area.grids[1]}),
        out=404,
    ),
    ("POST", "/api/v1/users/{user_id}/assignments/{grid_code}/end"): Case(end_assignment, out=404),
    ("GET", "/api/v1/grids/{grid_code}/roster"): Case(
        lambda c: Call(params={"grid_code": c.area.grids[0]}), out=404
    ),
    # departments
    ("GET", "/api/v1/departments"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/departments"): Case(new_department, out=422),
    ("GET", "/api/v1/departments/{dept_id}"): Case(
        lambda c: Call(params={"dept_id": c.object("dept")}), out=404
    ),
    ("PATCH", "/api/v1/departments/{dept_id}"): Case(
        lambda c: Call(params={"dept_id": c.fresh(c.world.department)}, json={"name": "应急管理"}),
        out=404,
    ),
    # API clients: admins only, every client whatever its area
    ("GET", "/api/v1/clients"): Case(plain, out=None),
    ("POST", "/api/v1/clients"): Case(new_client, out=422),
    ("GET", "/api/v1/clients/{client_id}"): Case(
        lambda c: Call(params={"client_id": c.object("client")}), out=404
    ),
    ("DELETE", "/api/v1/clients/{client_id}"): Case(
        lambda c: Call(
            params={"client_id": c.fresh(lambda area: c.world.api_client(area.community)[0])}
        ),
        out=404,
    ),
    # audit
    ("GET", "/api/v1/audit"): Case(filtered("object_id"), out=200),
    # case categories: one taxonomy for everybody
    ("GET", "/api/v1/categories"): Case(plain, out=None),
    ("POST", "/api/v1/categories"): Case(
        lambda c: Call(json={"code": c.world.category_code(), "name": "新小类"}),
        out=None,
    ),
    ("GET", "/api/v1/categories/{code}"): Case(lambda c: Call(params={"code": "0101"}), out=None),
    ("PATCH", "/api/v1/categories/{code}"): Case(
        lambda c: Call(params={"code": c.world.category()}, json={"handle_limit": 3}), out=None
    ),
    # the working calendar: one for everybody
    ("GET", "/api/v1/calendar"): Case(plain, out=None),
    ("POST", "/api/v1/calendar/import"): Case(
        lambda c: Call(json={"version": 1, "years": {"2098": {"holidays": ["2098-01-01"]}}}),
        out=None,
    ),
    ("PUT", "/api/v1/calendar/{day}"): Case(
        lambda c: Call(params={"day": "2098-10-08"}, json={"kind": "holiday"}), out=None
    ),
    ("DELETE", "/api/v1/calendar/{day}"): Case(
        lambda c: Call(params={"day": c.world.calendar_day()}), out=None
    ),
    ("PUT", "/api/v1/calendar/years/{year}"): Case(
        lambda c: Call(params={"year": 2098}, json={"status": "official"}), out=None
    ),
    # cases: anyone may report anywhere (the area holding the point takes the case in);
    # a case out of scope answers like a missing one
    ("GET", "/api/v1/cases"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/cases"): Case(new_case, out=201),
    ("GET", "/api/v1/cases/queues"): Case(plain, out=None),
    ("GET", "/api/v1/cases/{case_id}"): Case(a_case, out=404),
    ("GET", "/api/v1/cases/{case_id}/timeline"): Case(a_case, out=404),
    ("GET", "/api/v1/cases/{case_id}/parties"): Case(
        lambda c: Call(
            params={"case_id": c.fresh(c.world.case)}, query={"purpose_code": "case_handling"}
        ),
        out=404,
    ),
    ("POST", "/api/v1/cases/{case_id}/transitions"): Case(sign, out=404),
    ("POST", "/api/v1/cases/{case_id}/rating"): Case(rate, out=404),
    # evidence photos of cases: a case out of scope answers like a missing one
    ("GET", "/api/v1/cases/{case_id}/attachments"): Case(
        lambda c: Call(params={"case_id": c.fresh(c.world.case)}), out=404
    ),
    ("POST", "/api/v1/cases/{case_id}/attachments"): Case(
        lambda c: Call(params={"case_id": c.fresh(c.world.case)}, files=photo_upload()),
        out=404,
    ),
    ("GET", "/api/v1/cases/{case_id}/attachments/{attachment_id}/content"): Case(
        attachment, out=404
    ),
    ("GET", "/api/v1/cases/{case_id}/attachments/{attachment_id}/thumbnail"): Case(
        attachment, out=404
    ),
    # tasks and campaigns: out of scope answers like missing; creates pointing out of scope → 422
    ("GET", "/api/v1/tasks"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/tasks"): Case(
        lambda c: Call(
            json={"title": "矩阵任务", "grid": c.area.grids[0], "due_in": c.world.due_in}
        ),
        out=422,
    ),
    ("GET", "/api/v1/tasks/{task_id}"): Case(by_id("task_id", "task"), out=404),
    ("POST", "/api/v1/tasks/{task_id}/accept"): Case(lambda c: c.world.own_task_step(c), out=404),
    ("POST", "/api/v1/tasks/{task_id}/complete"): Case(
        lambda c: c.world.own_task_step(c, {"comment": "矩阵"}), out=404
    ),
    ("POST", "/api/v1/tasks/{task_id}/reassign"): Case(
        lambda c: c.world.step_call(
            c, "task", c.fresh(c.world.task), {"assignee_id": c.object("member")}
        ),
        out=404,
    ),
    ("POST", "/api/v1/tasks/{task_id}/cancel"): Case(
        lambda c: c.world.step_call(c, "task", c.fresh(c.world.task), {"reason": "矩阵取消"}),
        out=404,
    ),
    ("GET", "/api/v1/me/tasks"): Case(plain, out=None),
    ("GET", "/api/v1/campaigns"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/campaigns"): Case(
        lambda c: Call(
            json={"title": "矩阵专项", "region": c.area.community, "due_in": c.world.due_in}
        ),
        out=422,
    ),
    ("GET", "/api/v1/campaigns/{campaign_id}"): Case(by_id("campaign_id", "campaign"), out=404),
    ("GET", "/api/v1/campaigns/{campaign_id}/progress"): Case(
        by_id("campaign_id", "campaign"), out=404
    ),
    ("POST", "/api/v1/campaigns/{campaign_id}/cancel"): Case(
        lambda c: c.world.step_call(
            c, "campaign", c.fresh(c.world.campaign), {"reason": "矩阵取消"}
        ),
        out=404,
    ),
    # the register: out of scope answers like missing; creates pointing out of scope → 422
    ("GET", "/api/v1/houses"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/houses"): Case(
        # An address of its own for each caller: a house is registered once at its place.
        lambda c: Call(
            json={"address": f"矩阵路{next(c.world.serial)}号", "grid": c.area.grids[0]}
        ),
        out=422,
    ),
    ("GET", "/api/v1/houses/{house_id}"): Case(by_id("house_id", "house"), out=404),
    ("PATCH", "/api/v1/houses/{house_id}"): Case(
        lambda c: Call(params={"house_id": c.fresh(c.world.house)}, json={"use": "rented"}),
        out=404,
    ),
    ("GET", "/api/v1/households"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/households"): Case(
        lambda c: Call(json={"number": f"N{next(c.world.serial)}", "grid": c.area.grids[0]}),
        out=422,
    ),
    ("GET", "/api/v1/households/{household_id}"): Case(by_id("household_id", "household"), out=404),
    ("PATCH", "/api/v1/households/{household_id}"): Case(
        lambda c: Call(
            params={"household_id": c.fresh(c.world.household)}, json={"type": "rental"}
        ),
        out=404,
    ),
    ("GET", "/api/v1/persons"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/persons"): Case(new_person, out=422),
    ("POST", "/api/v1/persons/import"): Case(person_import, out=422),
    ("GET", "/api/v1/persons/{person_id}"): Case(by_id("person_id", "person"), out=404),
    ("PATCH", "/api/v1/persons/{person_id}"): Case(
        lambda c: Call(params={"person_id": c.fresh(c.world.person)}, json={"ethnicity": "回族"}),
        out=404,
    ),
    ("DELETE", "/api/v1/persons/{person_id}"): Case(
        lambda c: Call(params={"person_id": c.fresh(c.world.person)}, query={"reason": "迁出本地"}),
        out=404,
    ),
    ("GET", "/api/v1/persons/{person_id}/sensitive"): Case(
        lambda c: Call(params={"person_id": c.fresh(c.world.person)}, query=PURPOSE), out=404
    ),
    ("GET", "/api/v1/persons/{person_id}/export"): Case(
        lambda c: Call(params={"person_id": c.fresh(c.world.person)}, query=PURPOSE), out=404
    ),
    ("GET", "/api/v1/visits"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/visits"): Case(
        lambda c: Call(json={"household_id": c.fresh(c.world.household), "findings": "走访"}),
        out=422,
    ),
    ("GET", "/api/v1/visits/{visit_id}"): Case(by_id("visit_id", "visit"), out=404),
    # patrols: a worker writes only its own (another's answers like a missing one); reads by
    # the worker, or with patrols:read over the patrol's grid
    ("GET", "/api/v1/patrols"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/patrols"): Case(
        lambda c: Call(json={"location": {"type": "Point", "coordinates": list(center(A1))}}),
        out=None,
    ),
    ("GET", "/api/v1/patrols/stats"): Case(filtered("region"), out=200),
    ("GET", "/api/v1/patrols/{patrol_id}"): Case(lambda c: c.world.read_patrol(c), out=404),
    ("POST", "/api/v1/patrols/{patrol_id}/end"): Case(
        lambda c: Call(params={"patrol_id": c.world.own_patrol(c)}, json={}), out=404
    ),
    ("POST", "/api/v1/patrols/{patrol_id}/points"): Case(
        lambda c: Call(
            params={"patrol_id": c.world.own_patrol(c)},
            json={"points": [c.world.track_point(c)]},
        ),
        out=404,
    ),
    ("POST", "/api/v1/patrols/{patrol_id}/checkins"): Case(
        lambda c: Call(
            params={"patrol_id": c.world.own_patrol(c)},
            json={"place": "矩阵市场", "location": c.world.grid_point(c)},
        ),
        out=404,
    ),
    ("POST", "/api/v1/patrols/{patrol_id}/findings"): Case(
        lambda c: Call(
            params={"patrol_id": c.world.own_patrol(c)},
            json={"category": "0101", "description": "巡查发现", "location": c.world.grid_point(c)},
        ),
        out=404,
    ),
    # presence: the caller's own heartbeat; who is on duty in a grid in scope
    ("POST", "/api/v1/presence/heartbeat"): Case(
        lambda c: Call(json={"location": c.world.grid_point(c)}), out=None
    ),
    ("GET", "/api/v1/grids/{grid_code}/on-duty"): Case(
        lambda c: Call(params={"grid_code": c.area.grids[0]}), out=404
    ),
    ("GET", "/api/v1/presence"): Case(filtered("region"), out=200),
    # offline sync: the caller's own world (the batch answers 200; each action its own status)
    ("GET", "/api/v1/sync"): Case(plain, out=None),
    ("POST", "/api/v1/sync/batch"): Case(
        lambda c: Call(
            json={
                "actions": [
                    {
                        "key": f"matrix-{next(c.world.serial)}",
                        "type": "case.create",
                        "payload": new_case(c).json,
                    }
                ]
            }
        ),
        out=None,
    ),
    # special groups: their own permission; out of scope like missing
    ("GET", "/api/v1/special-groups"): Case(filtered("region"), out=200),
    ("POST", "/api/v1/special-groups"): Case(
        lambda c: Call(json={"person_id": c.fresh(c.world.person), "type": "at_risk_youth"}),
        out=422,
    ),
    ("GET", "/api/v1/special-groups/{record_id}"): Case(
        by_id("record_id", "special_group"), out=404
    ),
    ("PATCH", "/api/v1/special-groups/{record_id}"): Case(
        lambda c: Call(
            params={"record_id": c.fresh(c.world.special_group)}, json={"attention_level": "high"}
        ),
        out=404,
    ),
    # exports: the list filters of each kind; a region out of scope exports nothing (200)
    ("GET", "/api/v1/exports/cases"): Case(filtered("region"), out=200),
    ("GET", "/api/v1/exports/tasks"): Case(filtered("region"), out=200),
    ("GET", "/api/v1/exports/visits"): Case(filtered("region"), out=200),
    ("GET", "/api/v1/exports/persons"): Case(filtered("region"), out=200),
    # export jobs: queued with the list filters; a job is its requester's alone (another's
    # answers like a missing one: see matrix_job in tests/api/test_exports.py)
    **{
        op: case
        for kind in ("cases", "tasks", "visits", "persons")
        for op, case in (
            (
                ("POST", f"/api/v1/exports/{kind}/jobs"),
                Case(lambda c: Call(json={"filters": {"region": c.area.community}}), out=202),
            ),
            (
                ("GET", f"/api/v1/exports/{kind}/jobs/{{job_id}}"),
                Case(
                    lambda c, kind=kind: export_job(c, kind),
                    out=404,
                ),
            ),
            (
                ("GET", f"/api/v1/exports/{kind}/jobs/{{job_id}}/file"),
                Case(
                    lambda c, kind=kind: export_job(c, kind, done=True),
                    out=404,
                ),
            ),
        )
    },
    # map layers: the choropleth of a region outside the scope answers like a missing one; the
    # clusters filter like the case list (an out-of-scope region leaves nothing: 200)
    ("GET", "/api/v1/maps/case-counts"): Case(filtered("region"), out=404),
    ("GET", "/api/v1/maps/case-clusters"): Case(
        lambda c: Call(
            query={
                "region": c.area.community,
                "zoom": 14,
                "bbox": ",".join(
                    str(round(v + d, 6))
                    for v, d in zip(
                        center(c.area.grids[0]) * 2, (-0.05, -0.05, 0.05, 0.05), strict=True
                    )
                ),
            }
        ),
        out=200,
    ),
    # indicators and bulletins: a region outside the caller's scope answers like a missing one
    ("GET", "/api/v1/indicators"): Case(
        lambda c: Call(
            query={"region": c.area.community, "from": "2026-03-01", "to": "2026-04-01"}
        ),
        out=404,
    ),
    ("GET", "/api/v1/bulletins/{region}/{month}"): Case(
        lambda c: Call(params={"region": c.area.community, "month": "2026-03"}), out=404
    ),
    # webhooks (webhooks:manage): subscriptions of an area, or missing
    ("GET", "/api/v1/webhooks"): Case(plain, out=None),
    ("POST", "/api/v1/webhooks"): Case(
        lambda c: Call(
            json={
                "url": "https://93.184.215.14/hooks/new",
                "events": ["case.created", "task.completed"],
                "region_codes": [c.area.community],
            }
        ),
        out=422,
    ),
    ("GET", "/api/v1/webhooks/{webhook_id}"): Case(by_id("webhook_id", "webhook"), out=404),
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): Case(
        lambda c: Call(
            params={"webhook_id": c.fresh(c.world.webhook)}, json={"description": "矩阵"}
        ),
        out=404,
    ),
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): Case(by_id("webhook_id", "webhook"), out=404),
    ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"): Case(
        by_id("webhook_id", "webhook"), out=404
    ),
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): Case(
        by_id("webhook_id", "webhook"), out=404
    ),
    ("POST", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"): Case(
        lambda c: Call(
            params=dict(
                zip(
                    ("webhook_id", "delivery_id"),
                    c.fresh(c.world.webhook_delivery, missing=(c.missing_id, c.missing_id)),
                    strict=True,
                )
            )
        ),
        out=404,
    ),
    ("POST", "/api/v1/webhooks/{webhook_id}/ping"): Case(by_id("webhook_id", "webhook"), out=404),
}


# --- expectations ---------------------------------------------------------------------------

Cell = tuple[str, str, str, str]  # method, path, actor, variant

# Answers that differ from the general rule by design, and why.
DESIGNED: dict[Cell, tuple[int, str]] = {
    ("POST", "/api/v1/cases/{case_id}/attachments", "department", "in"): (
        403,
        "reads the case by its area (a department role without a department) but does not "
        "work it: evidence is added by the reporter, the handler, the office or the grid's "
        "own workers",
    ),
    **{
        ("GET", "/api/v1/cases/{case_id}/parties", actor, "in"): (
            403,
            "reads the case by its area but neither works it (office, handler, reporter) nor "
            "may unmask residents: the parties' full names are not its to read",
        )
        for actor in ("grid_worker", "grid_chief", "department", "api_client")
    },
    **{
        (method, path, actor, "in"): (
            404,
            "an account scoped to grids sees grids, never a grid version (a region's object): "
            "it reads its own grids of a version (/grid-versions/{id}/grids), not the version",
        )
        for method, path in (("GET", "/api/v1/grid-versions/{version_id}"),)
        for actor in ("grid_worker", "grid_chief")
    },
    **{
        ("POST", path, "api_client", variant): (
            403,
            "for people only: an app has no password and no refresh token (the spec's "
            "x-permission 'authenticated' does not say so)",
        )
        for path, variants in (
            ("/api/v1/auth/logout", ("in", "out", "missing")),
            ("/api/v1/auth/password", ("in",)),
        )
        for variant in variants
    },
    **{
        (method, path, actor, variant): (
            403,
            "needs patrols:write (one's own patrols) or patrols:read (those in scope); the "
            "spec's x-permission 'authenticated' cannot say 'either'",
        )
        for method, path in (
            ("GET", "/api/v1/patrols"),
            ("GET", "/api/v1/patrols/stats"),
            ("GET", "/api/v1/patrols/{patrol_id}"),
        )
        for actor in ("department", "api_client")
        for variant in ("in", "out", "missing")
    },
}


def expected_status(cell: Cell, actor_spec: dict[str, Any]) -> int:
    """Return the status the matrix expects (see the module docstring)."""
    method, path, actor, variant = cell
    permission = spec_operation(method, path)["x-permission"]
    success = success_status(method, path)
    if permission is None:
        return success
    if not actor_spec:
        return 401
    if permission != AUTHENTICATED and permission not in actor_permissions(actor_spec):
        return 403
    if cell in DESIGNED:
        return DESIGNED[cell][0]
    case = REQUESTS[(method, path)]
    if variant == "in" or case.out is None:
        return success
    if variant == "out" and actor_scope(actor_spec).covers_region(COMMUNITY_C):
        return success
    return case.out


def variants(case: Case) -> tuple[str, ...]:
    return ("in",) if case.out is None else ("in", "out", "missing")


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A request built and ready to send (built first: builders may make objects)."""

    sender: Any
    method: str
    url: str
    call: Call

    def send(self) -> Any:
        body: dict[str, Any] = {"json": self.call.json}
        if self.call.files is not None:
            body = {"data": self.call.files, "content_type": "multipart/form-data"}
        return self.sender.open(
            self.url,
            method=self.method,
            query_string=self.call.query,
            headers=self.call.headers,
            **body,
        )


def prepare(ctx: Ctx, method: str, path: str) -> Prepared:
    call = REQUESTS[(method, path)].build(ctx)
    sender = call.sender or ctx.world.clients[ctx.actor]
    return Prepared(sender, method, path.format(**call.params), call)


def describe(response: Any) -> str:
    return f"{response.status_code} {response.get_data(as_text=True)[:300]}"


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def app(app):  # type: ignore[no-untyped-def]
    """The application, with a 1 s SQLite busy timeout: these tests make one request at a
    time, so any wait for a lock is a deadlock and should not cost the default 30 s."""
    engine = app.extensions["gridapi"].engine
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _short_busy_timeout(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=1000")

        engine.dispose()
    return app


@dataclasses.dataclass(frozen=True)
class _Kept:
    """A built world: its rows (``Snapshot``) and the Python state a restored copy needs."""

    snapshot: Snapshot
    ids: dict[str, int]
    usernames: dict[int, str]
    serial: int
    accounts: dict[str, int]  # username -> id, of Accounts
    keys: dict[str, str]  # the apps' API keys, by actor


_KEPT: dict[WorldKey, _Kept] = {}


@pytest.fixture
def world(app, accounts, engine, settings, engine_name):  # type: ignore[no-untyped-def]
    """The world of ``World.build``; the categories it made are removed afterwards.

    Built through the API by the first test of a process (per engine and settings); later
    tests get its rows back and a ``World`` as the build left it (tests/snapshots.py): the
    build was ~0.35 s of each of these ~470 tests."""
    key = world_key(engine_name, settings)
    kept = _KEPT.get(key)
    if kept is not None and kept.snapshot.restore(engine):
        built = World.restored(app, accounts, kept)
    else:
        before = State.read(engine) if kept is None else None
        built = World.build(app, accounts)
        if before is not None:
            _KEPT[key] = built.kept(take(engine, before))
    yield built
    with engine.begin() as conn:
        for code in built.categories:  # subclasses first
            conn.execute(text("DELETE FROM categories WHERE code = :code"), {"code": code})


# --- tests ----------------------------------------------------------------------------------


def test_spec_declares_a_permission_and_security_for_every_operation():
    for method, path in OPERATIONS:
        op = spec_operation(method, path)
        assert "x-permission" in op, f"{method} {path}: no x-permission (use @blp.requires)"
        permission = op["x-permission"]
        assert permission in {None, AUTHENTICATED, *PERMISSIONS}, (method, path, permission)
        if permission is None:
            assert op["security"] == [], f"{method} {path} is public but declares security"
        else:
            assert op["security"], f"{method} {path} needs {permission} but declares no security"
            assert {"401", "403"} <= set(op["responses"]), (method, path)


def test_every_request_entry_is_an_operation_of_the_spec():
    stale = sorted(set(REQUESTS) - set(OPERATIONS))
    assert not stale, f"REQUESTS has entries for operations the spec does not have: {stale}"


def test_roles_in_the_database_hold_the_permissions_of_the_code(client):
    items = ok(client.get("/api/v1/roles"))["items"]
    assert {r["name"]: set(r["permissions"]) for r in items} == {
        name: set(permissions) for name, permissions in ROLE_PERMISSIONS.items()
    }


@pytest.mark.parametrize("operation", OPERATIONS, ids=" ".join)
def test_operation_answers_every_caller(world, operation):
    method, path = operation
    assert operation in REQUESTS, (
        f"{method} {path} has no entry in REQUESTS ({__name__}): add one that builds its "
        "request in and out of the caller's scope and says what an out-of-scope or missing "
        "object answers (Case.out), so that its authorization is tested for every role"
    )
    problems = []
    for actor, spec in ACTORS.items():
        for variant in variants(REQUESTS[operation]):
            cell = (method, path, actor, variant)
            expected = expected_status(cell, spec)
            response = prepare(Ctx(world, actor, variant), method, path).send()
            if response.status_code != expected:
                problems.append(f"{actor} {variant}: expected {expected}, got {describe(response)}")
    assert not problems, f"{method} {path}:\n" + "\n".join(problems)


def test_sign_in_ignores_a_stale_authorization_header(app, accounts):
    """A public operation does not read credentials: an expired token left on the request
    must not spoil a sign-in with the right password (it answered 401 before e5967f8)."""
    accounts.create("signer", "admin")
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = "Bearer expired.or.forged"
    r = client.post("/api/v1/auth/token", json={"username": "signer", "password": PASSWORD})
    assert r.status_code == 200, describe(r)
