"""Accounts, roles, grid rosters with history, scope that follows assignments, departments."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gridapi.models import User
from gridapi.security.permissions import ROLES

from ..factories import (
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    PASSWORD,
    TOWNSHIP,
    clean_tiling,
    collection,
    feature,
    rectangle,
    region_rows,
    square,
)
from ..races import report_while_held

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1, B2 = COMMUNITY_B + "001", COMMUNITY_B + "002"
# A second township of the same county, east of the first, with one community and one grid.
TOWNSHIP_2, COMMUNITY_C = "320508002000", "320508002001"
C1 = COMMUNITY_C + "001"
OTHER_COUNTY = "320506000000"
PHONE = "13812345678"
NEW_PASSWORD = "Brand-New-Pa55!"


def today() -> date:
    """The day the server takes as today (the county's, GRIDAPI_TIMEZONE), read when a test
    needs it: a module-level date made the roster tests fail when the suite ran across
    midnight."""
    from gridapi import clock

    return clock.today()


def days_ago(n: int) -> str:
    return (today() - timedelta(days=n)).isoformat()


@pytest.fixture
def world(client: Any, factory: Any) -> None:
    """Two townships of one county; grids A1, A2 (community A), B1, B2 (B) and C1 (C)."""
    rows = [
        *region_rows(),
        {"code": TOWNSHIP_2, "name": "双塔街道", "boundary": rectangle(4, 0, 5, 1)},
        {"code": COMMUNITY_C, "name": "双塔社区", "boundary": rectangle(4, 0, 5, 1)},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()
    factory.grid_version(collection(*clean_tiling()["features"], feature(C1, square(4, 0))))


@pytest.fixture
def office(world: None, accounts: Any) -> Any:
    """The 平安办 of the first township."""
    return accounts.client("office", "township_office", scope_region=TOWNSHIP)


def new_user(client: Any, username: str, role: str = "grid_worker", **extra: Any) -> Any:
    body = {"username": username, "password": PASSWORD, "role": role, **extra}
    return client.post("/api/v1/users", json=body)


def created(client: Any, username: str, role: str = "grid_worker", **extra: Any) -> dict:
    r = new_user(client, username, role, **extra)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def error_fields(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["code"] == status
    return body["errors"].get("json", {})


def sign_in(client: Any, login: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/token", json={"username": login, "password": password})


def tokens(client: Any, login: str, password: str = PASSWORD) -> dict[str, Any]:
    r = sign_in(client, login, password)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def roster(client: Any, grid: str, on: str | None = None) -> list[str]:
    r = client.get(f"/api/v1/grids/{grid}/roster" + (f"?on={on}" if on else ""))
    assert r.status_code == 200, r.get_json()
    return [item["user"]["username"] for item in r.get_json()["items"]]


# ---- creating accounts -----------------------------------------------------------------------


def test_a_township_office_creates_a_worker_on_a_grid_of_its_township(
    office: Any, anon_client: Any, session: Any
) -> None:
    r = new_user(office, "wang", grids=[A1], phone=PHONE, display_name="张三")
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["username"] == "wang" and body["display_name"] == "张三"
    assert body["role"] == "grid_worker"
    assert body["phone"] == "138****5678"
    assert body["region_code"] == COMMUNITY_A and body["scope_region"] is None
    assert body["is_active"] is True
    assert PHONE not in r.get_data(as_text=True)
    assert "password" not in body
    for path in (f"/api/v1/users/{body['id']}", "/api/v1/users", f"/api/v1/grids/{A1}/roster"):
        page = office.get(path)
        assert page.status_code == 200, (path, page.get_json())
        assert PHONE not in page.get_data(as_text=True) and "138****5678" in page.get_data(
            as_text=True
        )
    stored = session.scalars(select(User).where(User.username == "wang")).one()
    assert PHONE not in (stored.phone_hmac or "") and stored.phone_masked == "138****5678"
    assert PASSWORD not in stored.password_hash
    # The new worker signs in by phone and is on the grid's roster from today.
    assert sign_in(anon_client, PHONE).status_code == 200
    assert roster(office, A1) == ["wang"]


@pytest.mark.parametrize("role", ["grid_chief", "community_officer", "department", "grid_worker"])
def test_a_township_office_gives_roles_below_its_own(office: Any, role: str) -> None:
    assert created(office, f"u-{role}", role, scope_region=COMMUNITY_A)["role"] == role


@pytest.mark.parametrize("role", ["township_office", "county_centre", "city_centre", "admin"])
def test_a_township_office_may_not_give_its_own_rank_or_above(office: Any, role: str) -> None:
    errors = error_fields(new_user(office, "climber", role, scope_region=TOWNSHIP), 422)
    assert "role" in errors


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"grids": [C1]}, "grids"),
        ({"grids": [A1, C1]}, "grids"),
        ({"scope_region": TOWNSHIP_2}, "scope_region"),
        ({"scope_region": COMMUNITY_C}, "scope_region"),
        ({"scope_region": COUNTY}, "scope_region"),
    ],
)
def test_a_township_office_may_not_reach_outside_its_township(
    office: Any, extra: dict[str, Any], field: str, session: Any
) -> None:
    errors = error_fields(new_user(office, "outsider", **extra), 422)
    assert field in errors
    assert session.scalars(select(User).where(User.username == "outsider")).first() is None


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"username": "no spaces allowed", "scope_region": COMMUNITY_A}, "username"),
        ({"phone": "12345", "scope_region": COMMUNITY_A}, "phone"),
        ({"password": "short", "scope_region": COMMUNITY_A}, "password"),
        ({"password": f"Ab-{PHONE}", "phone": PHONE, "scope_region": COMMUNITY_A}, "password"),
        ({}, "scope_region"),
        ({"scope_region": COMMUNITY_A, "grids": [A1]}, "grids"),
        ({"grids": ["123"]}, "grids"),
        ({"role": "emperor", "scope_region": COMMUNITY_A}, "role"),
    ],
)
def test_invalid_accounts_are_refused_naming_the_field(
    office: Any, extra: dict[str, Any], field: str
) -> None:
    body = {"username": "wu9", "password": PASSWORD, "role": "grid_worker", **extra}
    errors = error_fields(office.post("/api/v1/users", json=body), 422)
    assert field in errors, errors


def test_a_taken_username_or_phone_is_a_conflict(office: Any) -> None:
    """Each 409 names the field, as every error does (its `errors` was empty)."""
    created(office, "wang", grids=[A1], phone=PHONE)
    assert error_fields(new_user(office, "wang", grids=[A2]), 409) == {"username": ["taken"]}
    phone = error_fields(new_user(office, "zhao", grids=[A2], phone=PHONE), 409)
    assert phone == {"phone": ["another account's"]}


def test_asking_whether_phone_numbers_have_accounts_is_counted(office: Any, app: Any) -> None:
    """A 409 for a phone number of an account anywhere tells whether the number has an
    account: an office could test numbers without limit. Each such answer is now an exact
    lookup (GRIDAPI_PERSON_LOOKUP_RATE); creating accounts is not."""
    app.extensions["gridapi"].settings.person_lookup_rate = "2 per hour"
    created(office, "wang", grids=[A1], phone=PHONE)
    for n in range(3):  # new numbers: accounts made, nothing counted
        created(office, f"li{n}", grids=[A2], phone=f"1390000000{n}")
    answers = [new_user(office, f"zhao{n}", grids=[A2], phone=PHONE) for n in range(3)]
    assert [r.status_code for r in answers] == [409, 409, 429]
    assert "belongs to another account" not in answers[2].get_data(as_text=True)
    assert answers[2].headers["Retry-After"]


def test_past_the_allowance_a_free_name_or_number_is_refused_as_a_taken_one_is(
    office: Any, app: Any, engine: Any
) -> None:
    """Only a taken username or phone number counted (its 409): once the allowance was
    spent, a taken one answered 429 and a free one 201 (200 for a rename), so the 429 itself
    told whether an account has the name or number, without limit. Past the allowance every
    create, and every rename, is refused before anything is looked up, taken or not, and
    makes nothing; other changes go on."""
    app.extensions["gridapi"].settings.person_lookup_rate = "1 per hour"
    created(office, "wang", grids=[A1], phone=PHONE)
    user = created(office, "liu", grids=[A2])
    assert new_user(office, "zhao", grids=[A2], phone=PHONE).status_code == 409  # spent
    with engine.connect() as conn:
        before = conn.execute(select(func.count()).select_from(User)).scalar_one()
    for username, phone in (
        ("wang", None),
        ("zhou", PHONE),
        ("zhou", "13900000009"),
        ("zhou", None),
    ):
        extra = {"phone": phone} if phone else {}
        r = new_user(office, username, grids=[A2], **extra)
        assert r.status_code == 429 and r.get_json()["code"] == 429, (username, phone)
        assert int(r.headers["Retry-After"]) > 0
    for username in ("wang", "zhou"):
        r = office.patch(f"/api/v1/users/{user['id']}", json={"username": username})
        assert r.status_code == 429 and r.get_json()["code"] == 429, username
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(User)).scalar_one() == before
        assert (
            conn.execute(select(User.username).where(User.id == user["id"])).scalar_one() == "liu"
        )
    # Nothing looked up: an edit form sending the name unchanged, another field.
    body = {"username": "liu", "display_name": "李工"}
    r = office.patch(f"/api/v1/users/{user['id']}", json=body)
    assert r.status_code == 200 and r.get_json()["display_name"] == "李工", r.get_json()


def test_asking_whether_a_username_has_an_account_elsewhere_is_counted_and_audited(
    world: None, accounts: Any, app: Any, engine: Any
) -> None:
    """Usernames are unique across every scope, so "username taken" (409) told a township
    office whether an account it may not see (another township's) had a name, without limit
    or trace. The 409 stays (the name cannot be given), but each one counts as an exact
    lookup (GRIDAPI_PERSON_LOOKUP_RATE: 429 once spent) and writes an audit row
    `user.username_taken` filed under the caller's region, naming no account."""
    from gridapi.models import AuditEntry

    app.extensions["gridapi"].settings.person_lookup_rate = "2 per hour"
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    created(other, "zhangwei", grids=[C1])
    assert office.get("/api/v1/users?q=zhangwei").get_json()["items"] == []
    for n in range(3):  # free names: accounts made, nothing counted
        created(office, f"li{n}", grids=[A2])
    answers = [new_user(office, name, grids=[A1]) for name in ("zhangwei", "ZhangWei", "li0")]
    assert [r.status_code for r in answers] == [409, 409, 429]
    assert "taken" not in answers[2].get_data(as_text=True)
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditEntry.region_code, AuditEntry.object_id, AuditEntry.summary)
            .where(AuditEntry.action == "user.username_taken")
            .order_by(AuditEntry.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        (TOWNSHIP, None, {"username": "zhangwei"}),
        (TOWNSHIP, None, {"username": "ZhangWei"}),
    ]
    # Nothing else of the refused requests was kept.
    with app.extensions["gridapi"].sessions() as session:
        names = session.scalars(select(User.username).where(User.username.ilike("zhangwei")))
        assert list(names) == ["zhangwei"]


def test_an_office_renames_an_account_which_then_signs_in_by_the_new_name_only(
    office: Any, accounts: Any, anon_client: Any, app: Any, engine: Any
) -> None:
    """Usernames could be changed on the command line only (`gridapi users rename`). An
    account manager renames with PATCH /users/{id} `username`: sign-in by the new name only,
    sessions go on, an audit row with the old and the new name; a taken name is a 409
    (counted and audited), a bad one a 422, your own account or one out of scope refused."""
    from gridapi.models import AuditEntry

    user = created(office, "wang", grids=[A1], display_name="王五")
    session_tokens = tokens(anon_client, "wang")
    r = office.patch(f"/api/v1/users/{user['id']}", json={"username": "wang.wu"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["username"], r.get_json()["display_name"]) == ("wang.wu", "王五")
    assert sign_in(anon_client, "wang").status_code == 401
    assert sign_in(anon_client, "WANG.WU").status_code == 200
    # Its sessions go on: the access token and the refresh token still work.
    me = anon_client.get("/api/v1/me", headers=bearer(session_tokens["access_token"]))
    assert me.status_code == 200, me.get_json()
    refreshed = anon_client.post(
        "/api/v1/auth/refresh", json={"refresh_token": session_tokens["refresh_token"]}
    )
    assert refreshed.status_code == 200, refreshed.get_json()
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditEntry.action, AuditEntry.object_id, AuditEntry.summary)
            .where(AuditEntry.action.in_(["user.rename", "user.update"]))
            .order_by(AuditEntry.id)
        ).all()
    assert [tuple(r) for r in rows] == [
        ("user.rename", str(user["id"]), {"from": "wang", "to": "wang.wu"})
    ]

    # Refusals: a name taken (here in another case, by an account of another township the
    # office may not see), a bad name, an account out of scope, yourself.
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    outsider = created(other, "zhangwei", grids=[C1])
    r = office.patch(f"/api/v1/users/{user['id']}", json={"username": "ZhangWei"})
    assert r.status_code == 409 and r.get_json()["message"] == "The username 'ZhangWei' is taken."
    assert "username" in error_fields(
        office.patch(f"/api/v1/users/{user['id']}", json={"username": "13812345678"}), 422
    )
    assert (
        office.patch(f"/api/v1/users/{outsider['id']}", json={"username": "zw"}).status_code == 404
    )
    admin = accounts.client("root", "admin")
    me = admin.get("/api/v1/me").get_json()
    assert "username" in error_fields(
        admin.patch(f"/api/v1/users/{me['id']}", json={"username": "root2"}), 422
    )
    with engine.connect() as conn:
        probes = conn.execute(
            select(AuditEntry.summary).where(AuditEntry.action == "user.username_taken")
        ).scalars()
        assert list(probes) == [{"username": "ZhangWei"}]
        names = conn.execute(select(User.username).order_by(User.id)).scalars().all()
    assert "wang.wu" in names and "zhangwei" in names and "root" in names
    assert not {"ZhangWei", "13812345678", "zw", "root2", "wang"} & set(names)


def test_a_username_or_phone_taken_meanwhile_answers_as_one_taken_before(
    office: Any, app: Any, engine: Any
) -> None:
    """Two creates of one username or phone number at once: the one whose insert met the
    other's in the unique index (PostgreSQL: it had looked before the other committed) got
    the generic 409, "The change conflicts with existing data.", and a phone number's
    counted no lookup, so the race told whether a number has an account for free. It now
    answers as when the other came first: the 409 naming what is taken, a phone number's
    counted (429 once spent)."""
    from gridapi.scope import Scope
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    st.settings.person_lookup_rate = "2 per hour"  # a username's 409 counts too

    def race(username: str, phone: str, sent: dict) -> Any:
        with st.sessions() as session:  # another request's account, inserted, not committed
            svc.create_user(
                session,
                scope=Scope.everything(),
                actor_rank=None,
                username=username,
                password=PASSWORD,
                role="grid_worker",
                phone=phone,
                grids=[B1],
                phone_key=st.phone_key,
            )
            return send_while_uncommitted(
                engine, session, "users", lambda: new_user(office, grids=[A2], **sent)
            )

    r = race("wang", "13900000001", {"username": "wang", "phone": "13900000002"})
    assert r.status_code == 409 and r.get_json()["message"] == "The username 'wang' is taken."
    r = race("lisi", PHONE, {"username": "zhao", "phone": PHONE})
    assert r.status_code == 409
    assert r.get_json()["message"] == "The phone number belongs to another account."
    with st.sessions() as session:
        names = session.scalars(
            select(User.username).where(User.username.in_(["wang", "lisi", "zhao"]))
        )
        assert sorted(names) == ["lisi", "wang"]
    # the allowance of two lookups is spent by the races' answers
    assert new_user(office, "zhou", grids=[A2], phone=PHONE).status_code == 429


def test_a_username_taken_meanwhile_in_another_case_answers_as_one_taken_before(
    office: Any, app: Any, engine: Any, anon_client: Any
) -> None:
    """Two creates of "Alice" and "alice" at once: both looked before either committed, and
    the unique index compared names as written, so PostgreSQL took both; sign-in as either
    then reached whichever the database returned first. The index is on lower(username)
    now (0031): the second answers as when the first came first."""
    from gridapi.scope import Scope
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    with st.sessions() as session:  # another request's account, inserted, not committed
        svc.create_user(
            session,
            scope=Scope.everything(),
            actor_rank=None,
            username="Alice",
            password=PASSWORD,
            role="grid_worker",
            grids=[B1],
            phone_key=st.phone_key,
        )
        r = send_while_uncommitted(
            engine, session, "users", lambda: new_user(office, "alice", grids=[A2])
        )
    assert r.status_code == 409 and r.get_json()["message"] == "The username 'alice' is taken."
    with st.sessions() as session:
        names = session.scalars(select(User.username).where(User.username.ilike("alice")))
        assert list(names) == ["Alice"]
    token = tokens(anon_client, "alice")["access_token"]
    me = anon_client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json()["name"] == "Alice"


def test_a_community_officer_reads_accounts_but_cannot_create_them(
    office: Any, accounts: Any
) -> None:
    created(office, "w-a", grids=[A1])
    created(office, "w-b", grids=[B1])
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    r = new_user(officer, "zhao", grids=[A2])
    assert r.status_code == 403, r.get_json()
    r = officer.get("/api/v1/users")
    assert r.status_code == 200, r.get_json()
    assert sorted(u["username"] for u in r.get_json()["items"]) == ["officer", "w-a"]


def test_a_grid_worker_cannot_read_accounts(world: None, accounts: Any) -> None:
    worker = accounts.client("wang", "grid_worker", grids=[A1])
    assert worker.get("/api/v1/users").status_code == 403
    assert worker.get(f"/api/v1/grids/{A1}/roster").status_code == 403


def test_a_grid_chief_reads_the_accounts_on_its_grids_roster(office: Any, accounts: Any) -> None:
    wang = created(office, "wang", grids=[A1])
    created(office, "zhao", grids=[B1])
    chief = accounts.client("chief", "grid_chief", grids=[A1])
    assert set(roster(chief, A1)) == {"wang", "chief"}
    assert chief.get(f"/api/v1/users/{wang['id']}").status_code == 200
    names = {u["username"] for u in chief.get("/api/v1/users").get_json()["items"]}
    assert names == {"wang", "chief"}


def test_each_office_lists_only_the_accounts_of_its_township(office: Any, accounts: Any) -> None:
    created(office, "w-a", grids=[A1])
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    created(other, "w-c", grids=[C1])
    names = {u["username"] for u in office.get("/api/v1/users").get_json()["items"]}
    assert names == {"office", "w-a"}
    names = {u["username"] for u in other.get("/api/v1/users").get_json()["items"]}
    assert names == {"office2", "w-c"}
    w_c = accounts.create("w-c", "grid_worker")  # already there: returns its id
    assert office.get(f"/api/v1/users/{w_c}").status_code == 404


def test_an_office_reads_an_account_from_elsewhere_on_its_grids_roster(
    office: Any, accounts: Any, county: Any
) -> None:
    """GET /users lists, and GET /users/{id} reads, the accounts on the roster of a grid in
    the caller's scope: a township office did not see a worker of another township the
    county put on its grid (404, left out), although its roster listed them. Changing that
    account stays with the township where it lives."""
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    w_c = created(other, "w-c", grids=[C1])
    r = county.post(f"/api/v1/users/{w_c['id']}/assignments", json={"grid": A1})
    assert r.status_code == 201, r.get_json()
    assert "w-c" in roster(office, A1)
    assert office.get(f"/api/v1/users/{w_c['id']}").status_code == 200
    assert office.get(f"/api/v1/users/{w_c['id']}/assignments").status_code == 200
    names = {u["username"] for u in office.get("/api/v1/users").get_json()["items"]}
    assert names == {"office", "w-c"}
    changed = office.patch(f"/api/v1/users/{w_c['id']}", json={"display_name": "改"})
    assert changed.status_code == 404
    # Off the roster, out of sight again.
    ended = county.post(f"/api/v1/users/{w_c['id']}/assignments/{A1}/end", json={})
    assert ended.status_code == 200, ended.get_json()
    assert office.get(f"/api/v1/users/{w_c['id']}").status_code == 404


def test_an_account_from_elsewhere_does_not_show_its_regions_outside_the_callers_scope(
    office: Any, accounts: Any, county: Any
) -> None:
    """A township office reading an account of another township through its grid's roster
    (the account, its list entry, the roster) was told where that account lives and which
    region it sees, regions that answer the office 404. They are null for it now; the
    county over both, and a grid chief for an account of its own community, see them."""
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    w_c = created(other, "w-c", grids=[C1])
    o_c = created(other, "o-c", "community_officer", scope_region=COMMUNITY_C)
    wang = created(office, "wang", grids=[A1])
    for account in (w_c, o_c):
        r = county.post(f"/api/v1/users/{account['id']}/assignments", json={"grid": A1})
        assert r.status_code == 201, r.get_json()
    assert office.get(f"/api/v1/regions/{COMMUNITY_C}").status_code == 404

    def regions(answer: dict[str, Any]) -> tuple[Any, Any]:
        return answer["region_code"], answer["scope_region"]

    for account in (w_c, o_c):
        r = office.get(f"/api/v1/users/{account['id']}")
        assert r.status_code == 200, r.get_json()
        assert regions(r.get_json()) == (None, None)
        assert TOWNSHIP_2[:9] not in r.get_data(as_text=True)
    listed = {u["username"]: u for u in office.get("/api/v1/users").get_json()["items"]}
    assert regions(listed["w-c"]) == regions(listed["o-c"]) == (None, None)
    assert regions(listed["wang"]) == (COMMUNITY_A, None)
    assert regions(listed["office"]) == (TOWNSHIP, TOWNSHIP)
    on_roster = office.get(f"/api/v1/grids/{A1}/roster").get_json()["items"]
    assert {e["user"]["username"]: regions(e["user"]) for e in on_roster} == {
        "wang": (COMMUNITY_A, None),
        "w-c": (None, None),
        "o-c": (None, None),
    }
    # Where the regions are readable, they are shown.
    assert regions(county.get(f"/api/v1/users/{w_c['id']}").get_json()) == (COMMUNITY_C, None)
    assert regions(county.get(f"/api/v1/users/{o_c['id']}").get_json()) == (
        COMMUNITY_C,
        COMMUNITY_C,
    )
    assert regions(other.get(f"/api/v1/users/{w_c['id']}").get_json()) == (COMMUNITY_C, None)
    chief = accounts.client("chief", "grid_chief", grids=[A1])  # its community: an ancestor
    assert regions(chief.get(f"/api/v1/users/{wang['id']}").get_json()) == (COMMUNITY_A, None)
    assert regions(chief.get(f"/api/v1/users/{w_c['id']}").get_json()) == (None, None)


def test_an_account_does_not_show_a_department_outside_the_callers_scope(
    office: Any, accounts: Any, county: Any, client: Any
) -> None:
    """A township office reading an account that belongs to a department of another
    township or county (on its grid's roster, or living in its township) was told that
    department's id, in every answer carrying the account, where the department answers
    it 404. It is null for the office now; the departments of its township and of the
    county above it (its dispatch targets) are shown, and the county and the admin see
    every department of theirs."""

    def department(caller: Any, code: str, region: str) -> int:
        r = caller.post(
            "/api/v1/departments", json={"code": code, "name": code, "region_code": region}
        )
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    assert r.status_code == 201, r.get_json()
    other_county = department(client, "wz-fire", OTHER_COUNTY)
    other_township = department(county, "st-market", TOWNSHIP_2)
    own_county, own_township = (
        department(county, "gusu-fire", COUNTY),
        department(county, "pj", TOWNSHIP),
    )
    for dept in (other_county, other_township):
        assert office.get(f"/api/v1/departments/{dept}").status_code == 404
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    on_roster = created(other, "d-c", "department", grids=[C1], department_id=other_township)
    r = county.post(f"/api/v1/users/{on_roster['id']}/assignments", json={"grid": A1})
    assert r.status_code == 201, r.get_json()
    living_here = created(
        client, "d-wz", "department", scope_region=COMMUNITY_A, department_id=other_county
    )
    shown = {
        created(county, f"d-{n}", "department", scope_region=COMMUNITY_A, department_id=d)["id"]: d
        for n, d in (("gusu", own_county), ("pj", own_township))
    }
    hidden = (on_roster["id"], living_here["id"])

    listed = office.get("/api/v1/users?limit=200").get_json()["items"]
    assert {u["id"]: u["department_id"] for u in listed if u["role"] == "department"} == {
        **dict.fromkeys(hidden),
        **shown,
    }
    for user_id in hidden:
        r = office.get(f"/api/v1/users/{user_id}")
        assert r.status_code == 200 and r.get_json()["department_id"] is None, r.get_json()
    for user_id, dept in shown.items():
        assert office.get(f"/api/v1/users/{user_id}").get_json()["department_id"] == dept
    entries = office.get(f"/api/v1/grids/{A1}/roster").get_json()["items"]
    assert [e["user"]["department_id"] for e in entries if e["user"]["id"] == on_roster["id"]] == [
        None
    ]
    changed = office.patch(f"/api/v1/users/{living_here['id']}", json={"display_name": "改"})
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["department_id"] is None

    # Where the department is readable, it is shown.
    assert county.get(f"/api/v1/users/{on_roster['id']}").get_json()["department_id"] == (
        other_township
    )
    assert county.get(f"/api/v1/users/{living_here['id']}").get_json()["department_id"] is None
    assert client.get(f"/api/v1/users/{living_here['id']}").get_json()["department_id"] == (
        other_county
    )
    entries = county.get(f"/api/v1/grids/{A1}/roster").get_json()["items"]
    assert [e["user"]["department_id"] for e in entries if e["user"]["id"] == on_roster["id"]] == [
        other_township
    ]


# ---- rosters ---------------------------------------------------------------------------------


def test_the_roster_answers_who_was_responsible_on_a_past_day_and_today(office: Any) -> None:
    w1 = created(office, "wang", grids=[A1])
    w2 = created(office, "zhao", grids=[B1])
    r = office.post(
        f"/api/v1/users/{w2['id']}/assignments", json={"grid": A1, "valid_from": days_ago(30)}
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["valid_from"] == days_ago(30) and r.get_json()["valid_to"] is None
    r = office.post(
        f"/api/v1/users/{w2['id']}/assignments/{A1}/end", json={"valid_to": days_ago(10)}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["valid_to"] == days_ago(10)

    assert roster(office, A1, days_ago(40)) == []
    assert roster(office, A1, days_ago(20)) == ["zhao"]
    assert roster(office, A1, days_ago(11)) == ["zhao"]
    assert roster(office, A1, days_ago(10)) == []  # valid_to is the first day off
    assert roster(office, A1) == ["wang"]
    assert roster(office, A1, today().isoformat()) == ["wang"]
    assert roster(office, B1) == ["zhao"]

    history = office.get(f"/api/v1/users/{w2['id']}/assignments")
    assert history.status_code == 200
    items = history.get_json()["items"]
    assert [(a["grid_code"], a["valid_to"]) for a in items] == [
        (B1, None),
        (A1, days_ago(10)),
    ]
    assert w1["id"] != w2["id"]


def test_the_roster_body(office: Any) -> None:
    w1 = created(office, "wang", grids=[A1], phone=PHONE)
    r = office.get(f"/api/v1/grids/{A1}/roster?on={today().isoformat()}")
    body = r.get_json()
    assert body["grid_code"] == A1 and body["on"] == today().isoformat()
    (entry,) = body["items"]
    assert entry["user"]["id"] == w1["id"] and entry["user"]["phone"] == "138****5678"
    assert entry["is_primary"] is True and entry["valid_from"] == today().isoformat()


def test_assignments_made_at_once_end_as_if_one_came_first(
    office: Any, app: Any, engine: Any
) -> None:
    """Two assignments of one account at once, each checked before the other was written:
    on PostgreSQL both were written: the account twice on one grid's roster (the sequential
    second is a 409), or with two primary grids (a new primary takes the flag from the
    others). The account's row is locked before the check now: the second waits for the
    first and answers, or is written, as when the first came first."""
    from gridapi.scope import Scope
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    worker = created(office, "w-race", grids=[B1])
    path = f"/api/v1/users/{worker['id']}/assignments"

    def race(grid: str, sent: dict) -> Any:
        with st.sessions() as session:  # another request's assignment, written, not committed
            svc.assign_grid(session, worker["id"], grid, scope=Scope.everything(), is_primary=True)
            return send_while_uncommitted(
                engine,
                session,
                "grid_assignments",
                lambda: office.post(path, json=sent),
                waits_in="",  # any statement of the request's waiting for the other's locks
            )

    r = race(A1, {"grid": A1})
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["message"] == f"The user is already on the roster of grid {A1}."
    r = race(A2, {"grid": B2, "is_primary": True})
    assert r.status_code == 201, r.get_json()
    rows = office.get(path).get_json()["items"]
    assert sorted(row["grid_code"] for row in rows) == [A1, A2, B1, B2]  # A1 once
    assert [row["grid_code"] for row in rows if row["is_primary"]] == [B2]  # the last one's


def test_assignment_errors(office: Any, accounts: Any) -> None:
    w1 = created(office, "wang", grids=[A1])
    path = f"/api/v1/users/{w1['id']}/assignments"
    assert office.post(path, json={"grid": A1}).status_code == 409  # already on it
    assert "grid" in error_fields(office.post(path, json={"grid": C1}), 422)  # not its township
    assert office.post(path, json={"grid": "999999999999001"}).status_code == 422
    r = office.post(f"{path}/{A2}/end", json={})
    assert r.status_code == 404, r.get_json()  # not on A2
    r = office.post(f"{path}/{A1}/end", json={"valid_to": days_ago(1)})
    assert "valid_to" in error_fields(r, 422)  # before the start
    assert office.post("/api/v1/users/999999/assignments", json={"grid": A2}).status_code == 404
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    assert officer.post(path, json={"grid": A2}).status_code == 403
    assert office.get(f"/api/v1/grids/{C1}/roster").status_code == 404


def test_an_office_cannot_end_an_assignment_on_another_townships_grid(
    office: Any, accounts: Any
) -> None:
    wang = created(office, "wang", grids=[A1])
    county = accounts.client("county", "county_centre", scope_region=COUNTY)
    r = county.post(f"/api/v1/users/{wang['id']}/assignments", json={"grid": C1})
    assert r.status_code == 201, r.get_json()
    r = office.post(f"/api/v1/users/{wang['id']}/assignments/{C1}/end", json={})
    assert r.status_code == 404, r.get_json()


def test_an_assignment_list_leaves_out_grids_outside_the_callers_scope(
    office: Any, accounts: Any, client: Any
) -> None:
    """A township office reading its worker's assignments saw the code of another
    township's grid the admin had put them on, while that grid answered it 404; the county
    over both sees both, and the other township's office reading the same worker (on its
    roster) sees only its own grid."""
    wang = created(office, "wang", grids=[A1])
    path = f"/api/v1/users/{wang['id']}/assignments"
    r = client.post(path, json={"grid": C1, "valid_from": "2027-01-01"})
    assert r.status_code == 201, r.get_json()
    r = client.post(path, json={"grid": B1, "valid_from": days_ago(3)})
    assert r.status_code == 201, r.get_json()
    assert office.get(f"/api/v1/grids/{C1}").status_code == 404
    assert office.get(f"/api/v1/users/{wang['id']}").status_code == 200

    def grids(who: Any) -> list[str]:
        r = who.get(path)
        assert r.status_code == 200, r.get_json()
        return [a["grid_code"] for a in r.get_json()["items"]]

    assert grids(office) == [A1, B1]  # newest first, C1 left out
    assert C1 not in office.get(path).get_data(as_text=True)
    county = accounts.client("county", "county_centre", scope_region=COUNTY)
    assert grids(county) == grids(client) == [C1, A1, B1]
    other = accounts.client("office2", "township_office", scope_region=TOWNSHIP_2)
    assert other.get(f"/api/v1/users/{wang['id']}").status_code == 404  # not yet on C1's roster
    chief = accounts.client("chief", "grid_chief", grids=[A1])
    assert grids(chief) == [A1]


# ---- the scope of a worker follows its assignments ------------------------------------------


def _me(client: Any, access: str) -> dict[str, Any]:
    r = client.get("/api/v1/me", headers=bearer(access))
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _fresh_access(client: Any, pair: dict[str, Any]) -> dict[str, Any]:
    r = client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def _grid_status(client: Any, access: str, code: str) -> int:
    return client.get(f"/api/v1/grids/{code}", headers=bearer(access)).status_code


def test_a_workers_scope_follows_its_assignments(office: Any, anon_client: Any) -> None:
    w1 = created(office, "wang", grids=[A1])
    pair = tokens(anon_client, "wang")
    assert _me(anon_client, pair["access_token"])["scope"]["grids"] == [A1]
    assert _grid_status(anon_client, pair["access_token"], A2) == 404

    r = office.post(
        f"/api/v1/users/{w1['id']}/assignments", json={"grid": A2, "valid_from": days_ago(5)}
    )
    assert r.status_code == 201, r.get_json()
    # The scope changed: the old access token ends, a refreshed one carries the new scope.
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 401
    pair = _fresh_access(anon_client, pair)
    assert _me(anon_client, pair["access_token"])["scope"]["grids"] == [A1, A2]
    assert _grid_status(anon_client, pair["access_token"], A2) == 200
    listed = anon_client.get("/api/v1/grids", headers=bearer(pair["access_token"]))
    assert [g["code"] for g in listed.get_json()["items"]] == [A1, A2]

    r = office.post(
        f"/api/v1/users/{w1['id']}/assignments/{A2}/end", json={"valid_to": days_ago(1)}
    )
    assert r.status_code == 200, r.get_json()
    pair = _fresh_access(anon_client, pair)
    assert _me(anon_client, pair["access_token"])["scope"]["grids"] == [A1]
    assert _grid_status(anon_client, pair["access_token"], A2) == 404


def test_an_end_set_for_later_can_be_brought_forward(office: Any) -> None:
    """An assignment ending next month could not be ended today: only open-ended ones were
    found (404). It is ended earlier now; a later end than the one set is a 422."""
    w1 = created(office, "wang", grids=[A1, A2])
    url = f"/api/v1/users/{w1['id']}/assignments/{A2}/end"
    later = (today() + timedelta(days=30)).isoformat()
    assert office.post(url, json={"valid_to": later}).status_code == 200
    assert roster(office, A2) == ["wang"]  # until then
    beyond = office.post(url, json={"valid_to": (today() + timedelta(days=40)).isoformat()})
    assert beyond.status_code == 422
    assert beyond.get_json()["errors"]["json"]["valid_to"] == [f"must not be after {later}"]
    r = office.post(url, json={})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["valid_to"] == today().isoformat()
    assert roster(office, A2) == []
    assert office.post(url, json={}).status_code == 404  # ended: nothing current to end


def test_ending_an_assignment_today_takes_the_grid_away_now(office: Any, anon_client: Any) -> None:
    w1 = created(office, "wang", grids=[A1, A2])
    r = office.post(f"/api/v1/users/{w1['id']}/assignments/{A2}/end", json={})
    assert r.status_code == 200, r.get_json()
    assert roster(office, A2) == []
    access = tokens(anon_client, "wang")["access_token"]
    assert _me(anon_client, access)["scope"]["grids"] == [A1]
    assert _grid_status(anon_client, access, A2) == 404


# ---- changing accounts -----------------------------------------------------------------------


def test_patch_role_and_activity(office: Any, anon_client: Any) -> None:
    w1 = created(office, "wang", grids=[A1])
    r = office.patch(
        f"/api/v1/users/{w1['id']}", json={"role": "grid_chief", "display_name": "李四"}
    )
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["role"], r.get_json()["display_name"]) == ("grid_chief", "李四")
    assert "role" in error_fields(
        office.patch(f"/api/v1/users/{w1['id']}", json={"role": "county_centre"}), 422
    )
    assert "role" in error_fields(
        office.patch(f"/api/v1/users/{w1['id']}", json={"role": "township_office"}), 422
    )
    access = tokens(anon_client, "wang")["access_token"]
    r = office.patch(f"/api/v1/users/{w1['id']}", json={"is_active": False})
    assert r.status_code == 200 and r.get_json()["is_active"] is False
    assert anon_client.get("/api/v1/me", headers=bearer(access)).status_code == 401
    assert sign_in(anon_client, "wang").status_code == 401
    r = office.patch(f"/api/v1/users/{w1['id']}", json={"is_active": True})
    assert r.status_code == 200 and r.get_json()["is_active"] is True
    assert sign_in(anon_client, "wang").status_code == 200


def test_an_admin_cannot_disable_itself(client: Any, accounts: Any) -> None:
    r = client.patch(f"/api/v1/users/{accounts.ids['admin']}", json={"is_active": False})
    assert "is_active" in error_fields(r, 422)


@pytest.mark.parametrize(
    ("role", "scope"),
    [
        ("county_centre", TOWNSHIP),  # inside the township, but of a higher rank
        ("county_centre", COUNTY),
        ("township_office", TOWNSHIP),  # a peer
        ("admin", None),
    ],
)
def test_a_township_office_cannot_change_a_peer_or_superior(
    office: Any, accounts: Any, anon_client: Any, role: str, scope: str | None
) -> None:
    target = accounts.create("boss", role, scope_region=scope)
    missing = office.patch("/api/v1/users/999999", json={"display_name": "x"})
    assert missing.status_code == 404
    for call in (
        lambda: office.patch(f"/api/v1/users/{target}", json={"display_name": "x"}),
        lambda: office.patch(f"/api/v1/users/{target}", json={"is_active": False}),
        lambda: office.post(
            f"/api/v1/users/{target}/password", json={"new_password": NEW_PASSWORD}
        ),
    ):
        r = call()
        assert r.status_code == 404, r.get_json()
        assert r.get_json() == missing.get_json()
    assert sign_in(anon_client, "boss").status_code == 200


def test_a_grid_named_twice_is_422_and_makes_no_account(office: Any, session: Any) -> None:
    """It made two current assignments of one grid, both primary: the roster listed the
    account twice and it took two ends to take it off."""
    r = new_user(office, "twice", "grid_worker", grids=[A1, A1])
    assert error_fields(r, 422) == {"grids": [f"{A1} is given more than once."]}
    assert session.scalar(select(User).where(User.username == "twice")) is None


def test_a_role_or_scope_change_ends_the_users_sessions(office: Any, anon_client: Any) -> None:
    """PATCH says a role or scope change ends the account's sessions: the access token
    ended, but the refresh token still gave a new pair (now refused: signed in again)."""
    w1 = created(office, "wang", grids=[A1])
    for change in ({"role": "grid_chief"}, {"scope_region": COMMUNITY_A}):
        pair = tokens(anon_client, "wang")
        same = office.patch(f"/api/v1/users/{w1['id']}", json=change)
        assert same.status_code == 200, same.get_json()
        me = anon_client.get("/api/v1/me", headers=bearer(pair["access_token"]))
        assert me.status_code == 401, change
        r = anon_client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        assert r.status_code == 401, (change, r.get_json())
        assert sign_in(anon_client, "wang").status_code == 200
    # The same role or scope again ends nothing.
    pair = tokens(anon_client, "wang")
    for change in ({"role": "grid_chief"}, {"scope_region": COMMUNITY_A}):
        assert office.patch(f"/api/v1/users/{w1['id']}", json=change).status_code == 200
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 200
    r = anon_client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200, r.get_json()


def test_a_password_reset_by_an_office_ends_the_users_sessions(
    office: Any, anon_client: Any, session: Any
) -> None:
    w1 = created(office, "wang", grids=[A1])
    pair = tokens(anon_client, "wang")
    r = office.post(f"/api/v1/users/{w1['id']}/password", json={"new_password": "weak"})
    assert "new_password" in error_fields(r, 422)
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 200

    r = office.post(f"/api/v1/users/{w1['id']}/password", json={"new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.get_data(as_text=True)
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 401
    r = anon_client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    assert sign_in(anon_client, "wang").status_code == 401
    assert sign_in(anon_client, "wang", NEW_PASSWORD).status_code == 200


# ---- departments and roles -------------------------------------------------------------------


@pytest.fixture
def county(world: None, accounts: Any) -> Any:
    return accounts.client("county", "county_centre", scope_region=COUNTY)


def test_departments_create_list_get_patch(county: Any, office: Any, client: Any) -> None:
    body = {"code": "gusu-fire", "name": "姑苏区消防救援大队", "region_code": COUNTY}
    r = county.post("/api/v1/departments", json=body)
    assert r.status_code == 201, r.get_json()
    dept = r.get_json()
    assert {k: dept[k] for k in body} == body and dept["is_active"] is True
    r = county.post("/api/v1/departments", json=body)
    assert (
        r.status_code == 409
        and r.get_json()["message"] == "A department with code 'gusu-fire' exists."
    )
    assert r.get_json()["errors"] == {"json": {"code": ["a department has this code"]}}

    r = county.post(
        "/api/v1/departments",
        json={"code": "pj-market", "name": "平江市场监管所", "region_code": TOWNSHIP},
    )
    assert r.status_code == 201, r.get_json()

    listed = county.get("/api/v1/departments").get_json()["items"]
    assert [d["code"] for d in listed] == ["gusu-fire", "pj-market"]
    only = county.get(f"/api/v1/departments?region={TOWNSHIP}").get_json()["items"]
    assert [d["code"] for d in only] == ["pj-market"]
    assert county.get(f"/api/v1/departments/{dept['id']}").get_json() == dept

    r = county.patch(
        f"/api/v1/departments/{dept['id']}", json={"name": "消防救援大队", "is_active": False}
    )
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["name"], r.get_json()["is_active"]) == ("消防救援大队", False)

    # The township office sees the county's departments (dispatch targets) but cannot write.
    seen = office.get("/api/v1/departments").get_json()["items"]
    assert {d["code"] for d in seen} == {"gusu-fire", "pj-market"}
    assert office.get(f"/api/v1/departments/{dept['id']}").status_code == 200
    assert (
        office.post(
            "/api/v1/departments", json={**body, "code": "x1", "region_code": TOWNSHIP}
        ).status_code
        == 403
    )
    assert office.patch(f"/api/v1/departments/{dept['id']}", json={"name": "x"}).status_code == 403


def test_departments_stay_inside_the_scope(county: Any, client: Any, accounts: Any) -> None:
    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    assert r.status_code == 201, r.get_json()
    r = county.post(
        "/api/v1/departments",
        json={"code": "wz-fire", "name": "吴中消防", "region_code": OTHER_COUNTY},
    )
    assert "region_code" in error_fields(r, 422)
    r = client.post(
        "/api/v1/departments",
        json={"code": "wz-fire", "name": "吴中消防", "region_code": OTHER_COUNTY},
    )
    assert r.status_code == 201, r.get_json()
    other = r.get_json()["id"]
    assert county.get(f"/api/v1/departments/{other}").status_code == 404
    assert county.patch(f"/api/v1/departments/{other}", json={"name": "x"}).status_code == 404
    assert county.get("/api/v1/departments").get_json()["items"] == []
    worker = accounts.client("wang", "grid_worker", grids=[A1])
    assert worker.get("/api/v1/departments").status_code == 403


def test_a_department_code_taken_meanwhile_answers_as_one_taken_before(
    county: Any, app: Any, engine: Any
) -> None:
    """Two creates of department gusu-fire at once: both looked before either committed, and
    on PostgreSQL the second insert waited in the unique index for the first, then answered
    the generic 409 naming nothing. It answers as when the other came first now: the 409
    naming `code`, the one department the other's, and no audit row of its own."""
    from gridapi.models import AuditEntry, Department
    from gridapi.scope import Scope
    from gridapi.services import identity as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    body = {"code": "gusu-fire", "name": "姑苏区消防救援大队", "region_code": COUNTY}
    with st.sessions() as session:  # another request's department, inserted, not committed
        svc.create_department(
            session, scope=Scope.everything(), code="gusu-fire", name="消防", region_code=COUNTY
        )
        r = send_while_uncommitted(
            engine, session, "departments", lambda: county.post("/api/v1/departments", json=body)
        )
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["message"] == "A department with code 'gusu-fire' exists."
    assert r.get_json()["errors"] == {"json": {"code": ["a department has this code"]}}
    with st.sessions() as session:
        names = session.scalars(select(Department.name).where(Department.code == "gusu-fire"))
        assert list(names) == ["消防"]
        audited = session.scalars(
            select(AuditEntry.id).where(AuditEntry.action == "department.create")
        )
        assert list(audited) == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"code": "x", "name": "n", "region_code": COUNTY}, "code"),
        ({"code": "ok-code", "name": "", "region_code": COUNTY}, "name"),
        ({"code": "ok-code", "name": "n", "region_code": "12"}, "region_code"),
        ({"code": "ok-code", "name": "n", "region_code": OTHER_COUNTY}, "region_code"),
        ({"code": "ok-code", "name": "n", "region_code": "320508999000"}, "region_code"),
    ],
)
def test_invalid_departments_are_refused(county: Any, payload: dict, field: str) -> None:
    assert field in error_fields(county.post("/api/v1/departments", json=payload), 422)


def test_roles_are_listed_with_their_permissions(office: Any, accounts: Any) -> None:
    r = office.get("/api/v1/roles")
    assert r.status_code == 200, r.get_json()
    items = r.get_json()["items"]
    assert {i["name"]: (i["title"], i["rank"], sorted(i["permissions"])) for i in items} == {
        name: (title, rank, sorted(perms)) for name, title, rank, perms in ROLES
    }
    ranks = [i["rank"] for i in items]
    assert ranks == sorted(ranks) and items[-1]["name"] == "admin"
    worker = accounts.client("wang", "grid_worker", grids=[A1])
    assert worker.get("/api/v1/roles").status_code == 403


@pytest.fixture
def server_clock_a_day_behind(monkeypatch: Any) -> Any:
    """The process's clock in UTC-12 and the county in UTC+14: their dates always differ
    (by one day or two), as a UTC server's and Shanghai's do every day from 16:00 UTC."""
    import time

    from gridapi import clock

    monkeypatch.setenv("TZ", "Etc/GMT+12")
    time.tzset()
    monkeypatch.setattr(clock, "_zone", __import__("zoneinfo").ZoneInfo("Pacific/Kiritimati"))
    assert clock.today() > date.today()
    yield clock
    monkeypatch.undo()
    time.tzset()


def test_a_roster_from_the_county_s_today_holds_whatever_the_server_s_date(
    office: Any, accounts: Any, server_clock_a_day_behind: Any
) -> None:
    """Scope and /me/tasks read the roster for the server process's date, campaigns for the
    county's: a worker put on a grid from the county's today saw none of its tasks."""
    accounts.create("tz_worker", "grid_worker", grids=[A1])
    county_today = server_clock_a_day_behind.today().isoformat()
    r = office.post(
        f"/api/v1/users/{accounts.ids['tz_worker']}/assignments",
        json={"grid": A2, "valid_from": county_today},
    )
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["valid_from"] == county_today
    r = accounts.client("tz_worker").get("/api/v1/me")  # signed in again: the roster changed
    assert r.status_code == 200, r.get_json()
    assert set(r.get_json()["scope"]["grids"]) == {A1, A2}, r.get_json()["scope"]


def test_a_regional_admin_cannot_make_an_unrestricted_one(
    client: Any, accounts: Any, world: Any
) -> None:
    """An admin with grids and no region was unrestricted: a regional admin made one (or
    promoted a worker to one), which then read every township's accounts."""
    regional = accounts.client("radmin", "admin", scope_region=TOWNSHIP)
    r = new_user(regional, "adm2", "admin", grids=[A1])
    assert r.status_code == 422 and "grids" in r.get_json()["errors"]["json"]
    worker = created(regional, "wkr9", grids=[A1])
    r = regional.patch(f"/api/v1/users/{worker['id']}", json={"role": "admin"})
    assert r.status_code == 422 and "scope_region" in r.get_json()["errors"]["json"]
    r = regional.patch(
        f"/api/v1/users/{worker['id']}", json={"role": "admin", "scope_region": COMMUNITY_A}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["scope_region"] == COMMUNITY_A
    # the unrestricted admin still makes an unrestricted one of an account on no grid
    assert new_user(client, "adm3", "admin").status_code == 201


def test_an_admin_resets_others_passwords_not_its_own(client: Any, accounts: Any) -> None:
    """A stolen admin token reset its admin's password without knowing it."""
    r = client.post(
        f"/api/v1/users/{accounts.ids['admin']}/password", json={"new_password": NEW_PASSWORD}
    )
    assert r.status_code == 403 and "/auth/password" in r.get_json()["message"]


def test_a_new_primary_grid_leaves_past_rosters_as_they_were(office: Any) -> None:
    """Every new primary assignment cleared the flag of ended ones too: a past day's roster
    changed."""
    w = created(office, "prim", grids=[A1])
    path = f"/api/v1/users/{w['id']}/assignments"
    r = office.post(path, json={"grid": A2, "valid_from": days_ago(60), "is_primary": True})
    assert r.status_code == 201, r.get_json()
    ended = office.post(f"{path}/{A2}/end", json={"valid_to": days_ago(20)})
    assert ended.status_code == 200, ended.get_json()

    def primary_on(day: str) -> bool:
        roster = office.get(f"/api/v1/grids/{A2}/roster?on={day}").get_json()["items"]
        return [m["is_primary"] for m in roster if m["user"]["id"] == w["id"]] == [True]

    assert primary_on(days_ago(30))
    r = office.post(path, json={"grid": B1, "valid_from": days_ago(1), "is_primary": True})
    assert r.status_code == 201, r.get_json()
    assert primary_on(days_ago(30))


def test_a_regional_admin_cannot_take_over_an_unrestricted_admin(
    client: Any, accounts: Any, world: Any
) -> None:
    """An account made an unrestricted admin after its grids ended still lived in the
    community of its last grid: a regional admin there reset its password (and could sign
    in as it, seeing everything), disabled it or put it on a grid."""
    regional = accounts.client("radmin", "admin", scope_region=TOWNSHIP)
    worker = created(client, "wkr_up", grids=[A1])
    r = client.post(f"/api/v1/users/{worker['id']}/assignments/{A1}/end", json={})
    assert r.status_code == 200, r.get_json()
    r = client.patch(f"/api/v1/users/{worker['id']}", json={"role": "admin"})
    assert r.status_code == 200, r.get_json()
    r = accounts.app.test_client().post(
        "/api/v1/auth/token", json={"username": "wkr_up", "password": PASSWORD}
    )
    token = r.get_json()["access_token"]
    me = accounts.app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert me.get_json()["scope"]["unrestricted"] is True, me.get_json()
    path = f"/api/v1/users/{worker['id']}"
    r = regional.post(f"{path}/password", json={"new_password": NEW_PASSWORD})
    assert r.status_code == 404, r.get_json()
    assert regional.patch(path, json={"is_active": False}).status_code == 404
    assert regional.patch(path, json={"role": "grid_worker"}).status_code == 404
    assert regional.post(f"{path}/assignments", json={"grid": A1}).status_code == 404
    # the unrestricted admin still changes it
    assert client.patch(path, json={"display_name": "Up"}).status_code == 200


def test_an_office_cannot_give_a_role_over_another_townships_grid(
    office: Any, accounts: Any, county: Any
) -> None:
    """An account of the township on the roster of another township's grid (the county put
    it there) is changed where it lives: its township office promoted it to community
    officer, who unmasks residents and reads special groups in that other township's grid,
    an area the office itself may not touch. The county over both still may."""
    w = created(office, "w-a", grids=[A1])
    r = county.post(f"/api/v1/users/{w['id']}/assignments", json={"grid": C1})
    assert r.status_code == 201, r.get_json()
    path = f"/api/v1/users/{w['id']}"
    r = office.patch(path, json={"role": "community_officer"})
    assert "role" in error_fields(r, 422)
    assert office.get(path).get_json()["role"] == "grid_worker"
    # the rest of the account is still the township's to change, and the same role is no change
    assert office.patch(path, json={"display_name": "王", "role": "grid_worker"}).status_code == 200
    r = county.patch(path, json={"role": "community_officer"})
    assert r.status_code == 200, r.get_json()
    # off the other township's grid, the office gives roles again
    ended = county.post(f"{path}/assignments/{C1}/end", json={})
    assert ended.status_code == 200, ended.get_json()
    assert office.patch(path, json={"role": "grid_chief"}).status_code == 200


def test_an_office_cannot_take_over_an_account_that_works_in_another_township(
    office: Any, accounts: Any, county: Any, anon_client: Any
) -> None:
    """Its role was guarded, the rest was not: a township office reset the password of an
    account the county had also put on another township's grid, renamed it, signed in as it
    and read that township's residents; it could also disable it or narrow its area. Each
    is for an office over all of it (the county); the display name stays the township's."""
    w = created(office, "w-x", grids=[A1])
    r = county.post(f"/api/v1/users/{w['id']}/assignments", json={"grid": C1})
    assert r.status_code == 201, r.get_json()
    path = f"/api/v1/users/{w['id']}"
    r = office.post(f"{path}/password", json={"new_password": NEW_PASSWORD})
    assert "new_password" in error_fields(r, 422)
    assert sign_in(anon_client, "w-x", NEW_PASSWORD).status_code == 401
    for change in ({"username": "w-x2"}, {"is_active": False}, {"scope_region": COMMUNITY_A}):
        r = office.patch(path, json=change)
        assert list(error_fields(r, 422)) == list(change), change
    kept = county.get(path).get_json()
    assert (kept["username"], kept["is_active"], kept["scope_region"]) == ("w-x", True, None)
    # the same values again are no change, and the display name is the township's to give
    same = {"username": "w-x", "is_active": True, "role": "grid_worker", "display_name": "王"}
    assert office.patch(path, json=same).status_code == 200
    # the county over both may
    r = county.post(f"{path}/password", json={"new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.get_json()
    assert sign_in(anon_client, "w-x", NEW_PASSWORD).status_code == 200
    # and so may the township, once the account works only there
    ended = county.post(f"{path}/assignments/{C1}/end", json={})
    assert ended.status_code == 200, ended.get_json()
    assert office.post(f"{path}/password", json={"new_password": PASSWORD + "x"}).status_code == 204


def test_an_office_cannot_take_over_a_member_of_a_county_department(
    office: Any, county: Any, anon_client: Any
) -> None:
    """A member of a county department (it reads the cases dispatched to it, county-wide)
    living in the township: its township office could reset its password and sign in as it.
    Its display name the office still gives; the county resets it."""
    r = county.post(
        "/api/v1/departments", json={"code": "gusu-fire", "name": "消防", "region_code": COUNTY}
    )
    assert r.status_code == 201, r.get_json()
    member = created(
        county, "d-y", "department", scope_region=COMMUNITY_A, department_id=r.get_json()["id"]
    )
    path = f"/api/v1/users/{member['id']}"
    r = office.post(f"{path}/password", json={"new_password": NEW_PASSWORD})
    assert "new_password" in error_fields(r, 422)
    assert office.patch(path, json={"display_name": "消防员"}).status_code == 200
    assert county.post(f"{path}/password", json={"new_password": NEW_PASSWORD}).status_code == 204
    assert sign_in(anon_client, "d-y", NEW_PASSWORD).status_code == 200


def test_an_office_changing_its_own_account_is_told_why_not(office: Any, accounts: Any) -> None:
    """A township office that PATCHed its own account was answered 404 "does not exist or is
    outside your scope" while GET of it answered 200: it is 403, saying who changes it."""
    path = f"/api/v1/users/{accounts.ids['office']}"
    assert office.get(path).status_code == 200
    r = office.patch(path, json={"display_name": "平安办"})
    assert r.status_code == 403, r.get_json()
    assert "office above you" in r.get_json()["message"]
    assert office.get(path).get_json()["display_name"] != "平安办"


def test_an_admin_cannot_narrow_its_own_scope(client: Any, accounts: Any, world: Any) -> None:
    """Its own role it may not change (it could leave nobody able to undo it), but an
    unrestricted admin could give itself a region: a regional admin, which may not make an
    unrestricted one again, and the change ended its own sessions."""
    path = f"/api/v1/users/{accounts.ids['admin']}"
    assert "scope_region" in error_fields(client.patch(path, json={"scope_region": TOWNSHIP}), 422)
    r = client.get(path)
    assert r.status_code == 200 and r.get_json()["scope_region"] is None
    # another admin may
    other = accounts.client("admin2", "admin")
    assert other.patch(path, json={"scope_region": TOWNSHIP}).status_code == 200


def test_marking_an_active_account_active_again_ends_nothing(office: Any, anon_client: Any) -> None:
    """As the same role or scope again: `is_active: true` sent with an account's other
    fields (an edit form sends them all) ended its access tokens."""
    w1 = created(office, "wang", grids=[A1])
    pair = tokens(anon_client, "wang")
    r = office.patch(f"/api/v1/users/{w1['id']}", json={"display_name": "王", "is_active": True})
    assert r.status_code == 200, r.get_json()
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 200


@pytest.mark.parametrize("change", ["create", "reset"])
def test_a_report_does_not_wait_for_an_account_s_password_to_be_hashed(
    client: Any, accounts: Any, world: None, monkeypatch: Any, change: str
) -> None:
    """Creating an account or resetting its password hashed the password (argon2: a tenth of
    a second to seconds of CPU, by design) after the request's first read: on SQLite while
    holding the database's one write lock, so every phone's report waited for it. As for
    a sign-in and a password change, the hash is made before the transaction begins."""
    from gridapi.services import identity as svc

    office = accounts.client("admin")  # a client of its own: the report is sent meanwhile
    if change == "create":
        body = {"username": "w_new", "password": PASSWORD, "role": "grid_worker", "grids": [A1]}
        answer = report_while_held(
            client,
            monkeypatch,
            svc,
            "hash_password",
            lambda: office.post("/api/v1/users", json=body),
        )
        assert answer.status_code == 201, answer.get_json()
        login, password = "w_new", PASSWORD
    else:
        user_id = accounts.create("w_old", "grid_worker", grids=[A1])
        url = f"/api/v1/users/{user_id}/password"
        answer = report_while_held(
            client,
            monkeypatch,
            svc,
            "hash_password",
            lambda: office.post(url, json={"new_password": NEW_PASSWORD}),
        )
        assert answer.status_code == 204, answer.get_json()
        login, password = "w_old", NEW_PASSWORD
    assert sign_in(client.application.test_client(), login, password).status_code == 200
