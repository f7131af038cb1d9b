"""The audit log: one row per write in the write's transaction, append-only, scoped reads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from gridapi.models import AuditEntry

from ..factories import COMMUNITY_A, COUNTY, PASSWORD, TOWNSHIP

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
OTHER_COUNTY = "320506000000"
NEW_PASSWORD = "Brand-New-Pa55!"
PHONES = ("13812345678", "13987654321", "15000001111")


def rows(session: Any, **where: Any) -> list[AuditEntry]:
    """Audit rows (oldest first), read in a fresh transaction."""
    session.rollback()
    stmt = select(AuditEntry).filter_by(**where).order_by(AuditEntry.id)
    result = list(session.scalars(stmt))
    session.rollback()
    return result


def count(session: Any) -> int:
    session.rollback()
    n = session.scalar(select(func.count()).select_from(AuditEntry))
    session.rollback()
    return n


class Ledger:
    """Checks that each write adds exactly one audit row, with the expected action."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.seen = count(session)

    def one(self, response: Any, status: int, action: str) -> AuditEntry:
        assert response.status_code == status, response.get_data(as_text=True)
        entries = rows(self.session)
        assert len(entries) == self.seen + 1, (action, [e.action for e in entries[self.seen :]])
        self.seen = len(entries)
        assert entries[-1].action == action
        return entries[-1]

    def none(self, response: Any, status: int) -> None:
        assert response.status_code == status, response.get_data(as_text=True)
        assert count(self.session) == self.seen


# ---- one row per write -----------------------------------------------------------------------


def test_creating_a_region_leaves_one_row_with_actor_request_and_address(
    client: Any, accounts: Any, factory: Any, session: Any
) -> None:
    factory.regions()
    ledger = Ledger(session)
    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    row = ledger.one(r, 201, "region.create")
    assert (row.actor_type, row.actor_id, row.actor_name) == (
        "user",
        f"user:{accounts.ids['admin']}",
        "admin",
    )
    assert (row.object_type, row.object_id, row.region_code) == (
        "region",
        OTHER_COUNTY,
        OTHER_COUNTY,
    )
    assert row.summary["name"] == "吴中区"
    assert row.request_id and row.request_id == r.headers["X-Request-ID"]
    assert row.client_address == "127.0.0.1"
    assert row.at is not None


def test_the_callers_request_id_is_kept(client: Any, factory: Any, session: Any) -> None:
    factory.regions()
    ledger = Ledger(session)
    r = client.post(
        "/api/v1/regions",
        json={"code": OTHER_COUNTY, "name": "吴中区"},
        headers={"X-Request-ID": "req-from-the-gateway-42"},
    )
    assert r.headers["X-Request-ID"] == "req-from-the-gateway-42"
    assert ledger.one(r, 201, "region.create").request_id == "req-from-the-gateway-42"


def test_a_long_request_id_does_not_break_writes(client: Any, factory: Any, session: Any) -> None:
    factory.regions()
    r = client.post(
        "/api/v1/regions",
        json={"code": OTHER_COUNTY, "name": "吴中区"},
        headers={"X-Request-ID": "x" * 100},
    )
    assert r.status_code == 201, r.get_json()
    (row,) = rows(session, action="region.create")
    assert len(row.request_id) <= 64
    assert row.request_id == r.headers["X-Request-ID"]


def test_every_write_leaves_exactly_one_row(client: Any, anon_client: Any, session: Any) -> None:
    ledger = Ledger(session)
    ledger.one(client.post("/api/v1/regions/import", json=_regions()), 200, "region.import")
    r = client.post("/api/v1/grid-versions", json=_grids())
    ledger.one(r, 201, "grid_version.import")
    version = r.get_json()["id"]
    r = client.post(f"/api/v1/grid-versions/{version}/activate", json={})
    ledger.one(r, 200, "grid_version.activate")
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"name": "平江新社区"})
    ledger.one(r, 200, "region.update")

    r = client.post(
        "/api/v1/users",
        json={"username": "wang", "password": PASSWORD, "role": "grid_worker", "grids": [A1]},
    )
    user = ledger.one(r, 201, "user.create").object_id
    ledger.one(
        client.patch(f"/api/v1/users/{user}", json={"display_name": "王五"}), 200, "user.update"
    )
    r = client.post(f"/api/v1/users/{user}/assignments", json={"grid": A2})
    assert ledger.one(r, 201, "user.assign_grid").summary["grid"] == A2
    r = client.post(f"/api/v1/users/{user}/assignments/{A2}/end", json={})
    ledger.one(r, 200, "user.end_assignment")
    r = client.post(f"/api/v1/users/{user}/password", json={"new_password": NEW_PASSWORD})
    ledger.one(r, 204, "user.password_reset")

    r = client.post(
        "/api/v1/departments", json={"code": "gusu-fire", "name": "消防", "region_code": COUNTY}
    )
    dept = ledger.one(r, 201, "department.create").object_id
    r = client.patch(f"/api/v1/departments/{dept}", json={"is_active": False})
    ledger.one(r, 200, "department.update")

    r = anon_client.post("/api/v1/auth/token", json={"username": "wang", "password": NEW_PASSWORD})
    ledger.one(r, 200, "auth.login")
    pair = r.get_json()
    headers = {"Authorization": f"Bearer {pair['access_token']}"}
    r = anon_client.post(
        "/api/v1/auth/password",
        json={"current_password": NEW_PASSWORD, "new_password": "Third-Passw0rd!"},
        headers=headers,
    )
    ledger.one(r, 204, "user.password_change")
    r = anon_client.post(
        "/api/v1/auth/token", json={"username": "wang", "password": "Third-Passw0rd!"}
    )
    ledger.one(r, 200, "auth.login")
    pair = r.get_json()
    r = anon_client.post(
        "/api/v1/auth/logout",
        json={"refresh_token": pair["refresh_token"]},
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )
    ledger.one(r, 204, "auth.logout")

    client_id = _service_client(client.application)
    ledger.one(client.delete(f"/api/v1/clients/{client_id}"), 200, "client.revoke")
    # Revoking it again changes nothing (the first revoked_at stays) and writes no second row.
    ledger.none(client.delete(f"/api/v1/clients/{client_id}"), 200)

    # Reads write nothing.
    for path in ("/api/v1/users", "/api/v1/regions", "/api/v1/audit", "/api/v1/me"):
        ledger.none(client.get(path), 200)


def test_failed_writes_leave_no_row(client: Any, factory: Any, session: Any) -> None:
    factory.regions()
    ledger = Ledger(session)
    ledger.none(client.post("/api/v1/regions", json={"code": "12", "name": "x"}), 422)
    ledger.none(client.post("/api/v1/regions", json={"code": COUNTY, "name": "姑苏区"}), 409)
    bad_user = {
        "username": "wang",
        "password": "short",
        "role": "grid_worker",
        "scope_region": TOWNSHIP,
    }
    ledger.none(client.post("/api/v1/users", json=bad_user), 422)
    good_user = {**bad_user, "password": PASSWORD}
    ledger.one(client.post("/api/v1/users", json=good_user), 201, "user.create")
    # A taken username tells that an account has it, in any scope: the probe is recorded.
    taken = ledger.one(client.post("/api/v1/users", json=good_user), 409, "user.username_taken")
    assert taken.summary == {"username": "wang"}
    ledger.none(client.patch("/api/v1/users/999999", json={"display_name": "x"}), 404)
    ledger.none(client.post("/api/v1/grid-versions/999999/activate", json={}), 404)
    bad_import = [{"code": "320508003000", "name": "x"}, {"code": "bad", "name": "y"}]
    ledger.none(client.post("/api/v1/regions/import", json=bad_import), 422)
    # A refused sign-in writes its own row (MLPS 2.0 wants login failures recorded).
    anon = client.application.test_client()
    r = anon.post("/api/v1/auth/token", json={"username": "wang", "password": "x"})
    assert ledger.one(r, 401, "auth.login_failed").summary["reason"] == "wrong_password"


def _regions() -> list[dict[str, Any]]:
    from ..factories import region_rows

    return region_rows()


def _grids() -> dict[str, Any]:
    from ..factories import clean_tiling

    return clean_tiling()


def _service_client(app: Any, **extra: Any) -> int:
    from gridapi.services.identity import create_client

    values = {
        "name": "hotline",
        "scopes": ["grids:read"],
        "scope_region": None,
        "rate_limit": "600 per minute",
        "created_by": "test",
        **extra,
    }
    with app.extensions["gridapi"].sessions.begin() as session:
        return create_client(session, **values)[0].id


# ---- append-only -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET action = 'region.nothing_happened'",
        "UPDATE audit_log SET summary = '{}' WHERE action = 'region.create'",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE action = 'region.create'",
    ],
)
def test_the_audit_log_is_append_only_in_the_database(
    client: Any, factory: Any, engine: Any, session: Any, statement: str
) -> None:
    factory.regions()
    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    assert r.status_code == 201
    before = [(e.id, e.action, e.summary) for e in rows(session)]
    assert before
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(text(statement))
    assert [(e.id, e.action, e.summary) for e in rows(session)] == before


# Statements that go round row triggers: PostgreSQL fires none on TRUNCATE, and SQLite's
# REPLACE deletes the row it replaces without firing DELETE triggers.
AROUND_ROW_TRIGGERS = {
    "sqlite": [
        "INSERT OR REPLACE INTO audit_log (id, at, actor_type, actor_name, action, object_type,"
        " summary) SELECT id, at, 'user', 'nobody', 'region.nothing_happened', 'region', '{}'"
        " FROM audit_log WHERE action = 'region.create'",
        "REPLACE INTO audit_log (id, at, actor_type, action, object_type, summary)"
        " SELECT id, at, 'user', 'region.nothing_happened', 'region', '{}' FROM audit_log",
    ],
    "postgresql": ["TRUNCATE audit_log", "TRUNCATE audit_log RESTART IDENTITY CASCADE"],
}


def test_no_truncate_or_replace_goes_round_the_append_only_guard(
    client: Any, factory: Any, engine: Any
) -> None:
    factory.regions()
    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    assert r.status_code == 201

    def entries() -> list[tuple[Any, ...]]:
        with engine.connect() as conn:  # no lock left behind for TRUNCATE to wait for
            return [tuple(r) for r in conn.execute(text("SELECT * FROM audit_log ORDER BY id"))]

    before = entries()
    assert before
    for statement in AROUND_ROW_TRIGGERS[engine.dialect.name]:
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
        assert entries() == before
    # A row the database numbers itself is still taken.
    r = client.post("/api/v1/regions", json={"code": "320507000000", "name": "相城区"})
    assert r.status_code == 201
    assert len(entries()) == len(before) + 1


def test_the_orm_cannot_change_or_delete_a_row_either(
    client: Any, factory: Any, session: Any
) -> None:
    factory.regions()
    r = client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"})
    assert r.status_code == 201
    (entry,) = rows(session, action="region.create")
    entry = session.get(AuditEntry, entry.id)
    entry.actor_name = "someone else"
    with pytest.raises(DBAPIError, match="append-only"):
        session.commit()
    session.rollback()
    session.delete(session.get(AuditEntry, entry.id))
    with pytest.raises(DBAPIError, match="append-only"):
        session.commit()
    session.rollback()
    assert [e.actor_name for e in rows(session, action="region.create")] == ["admin"]


# ---- reading the log -------------------------------------------------------------------------


@pytest.fixture
def history(client: Any, factory: Any, anon_client: Any) -> None:
    """Rows of the county (a department, a user, grid versions), of another county, and
    rows without a region (the admin's sign-in)."""
    factory.regions()
    factory.grid_version()
    assert (
        client.post("/api/v1/regions", json={"code": OTHER_COUNTY, "name": "吴中区"}).status_code
        == 201
    )
    r = client.post(
        "/api/v1/departments", json={"code": "gusu-fire", "name": "消防", "region_code": COUNTY}
    )
    assert r.status_code == 201
    r = client.post(
        "/api/v1/departments",
        json={"code": "wz-fire", "name": "吴中消防", "region_code": OTHER_COUNTY},
    )
    assert r.status_code == 201
    r = client.post(
        "/api/v1/users",
        json={"username": "wang", "password": PASSWORD, "role": "grid_worker", "grids": [A1]},
    )
    assert r.status_code == 201
    r = anon_client.post("/api/v1/auth/token", json={"username": "wang", "password": PASSWORD})
    assert r.status_code == 200


def audit_page(client: Any, query: str = "") -> dict[str, Any]:
    r = client.get(f"/api/v1/audit{query}")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_an_admin_sees_every_row_newest_first(client: Any, history: None, session: Any) -> None:
    items = audit_page(client)["items"]
    assert [i["id"] for i in items] == sorted((e.id for e in rows(session)), reverse=True)
    assert OTHER_COUNTY in {i["region_code"] for i in items}
    assert {"region.create", "department.create", "user.create", "auth.login"} <= {
        i["action"] for i in items
    }
    first = items[0]
    assert set(first) == {
        "id",
        "at",
        "actor_type",
        "actor_id",
        "actor_name",
        "action",
        "object_type",
        "object_id",
        "region_code",
        "summary",
        "request_id",
        "client_address",
    }


def test_the_log_pages_and_filters(client: Any, history: None, session: Any) -> None:
    everything = [e.id for e in rows(session)][::-1]
    page = audit_page(client, "?limit=2")
    assert [i["id"] for i in page["items"]] == everything[:2]
    page = audit_page(client, f"?limit=2&before={page['next']}")
    assert [i["id"] for i in page["items"]] == everything[2:4]
    only = audit_page(client, "?action=department.create")["items"]
    assert [i["object_type"] for i in only] == ["department", "department"]
    assert (
        audit_page(client, "?object_type=user&action=user.create")["items"][0]["summary"][
            "username"
        ]
        == "wang"
    )


def test_a_cursor_of_zero_is_before_every_row(client: Any, history: None) -> None:
    """``before=0`` was taken for no cursor and answered the newest page: 0 is a value (as
    ``/grid-versions?after=0`` is), and no row has an id below it. A negative one is a 422
    naming it (tests/api/test_errors.py)."""
    assert audit_page(client, "?before=0") == {"items": [], "next": None}


def test_a_county_centre_sees_only_rows_of_its_county(
    client: Any, accounts: Any, history: None, session: Any
) -> None:
    county = accounts.client("county", "county_centre", scope_region=COUNTY)
    items = audit_page(county)["items"]
    assert items
    assert all(i["region_code"] and i["region_code"].startswith("320508") for i in items), items
    expected = [e.id for e in rows(session) if (e.region_code or "").startswith("320508")]
    assert sorted(i["id"] for i in items) == expected
    actions = {i["action"] for i in items}
    assert {"department.create", "user.create", "grid_version.activate"} <= actions
    assert "region.create" not in actions  # 吴中区 is another county
    assert audit_page(county, f"?object_id={OTHER_COUNTY}")["items"] == []


@pytest.mark.parametrize("role", ["township_office", "community_officer"])
def test_offices_without_audit_read_are_refused(history: None, accounts: Any, role: str) -> None:
    office = accounts.client("office", role, scope_region=TOWNSHIP)
    r = office.get("/api/v1/audit")
    assert r.status_code == 403, r.get_json()


def test_anonymous_and_key_holders_cannot_read_the_log(app: Any, anon_client: Any) -> None:
    from gridapi.services.identity import create_client

    assert anon_client.get("/api/v1/audit").status_code == 401
    with app.extensions["gridapi"].sessions.begin() as session:
        _, key = create_client(
            session,
            name="hotline",
            scopes=["grids:read", "regions:read", "cases:read"],
            scope_region=None,
            rate_limit="600 per minute",
            created_by="test",
        )
    assert anon_client.get("/api/v1/audit", headers={"X-API-Key": key}).status_code == 403


# ---- no secrets in the log -------------------------------------------------------------------


def test_no_password_key_token_or_phone_reaches_the_log(
    client: Any, factory: Any, anon_client: Any, accounts: Any, session: Any
) -> None:
    factory.regions()
    factory.grid_version()
    secrets: list[str] = [PASSWORD, NEW_PASSWORD, *PHONES]
    for n, phone in enumerate(PHONES):
        r = client.post(
            "/api/v1/users",
            json={
                "username": f"worker{n}",
                "password": PASSWORD,
                "role": "grid_worker",
                "grids": [A1],
                "phone": phone,
            },
        )
        assert r.status_code == 201, r.get_json()
    r = anon_client.post("/api/v1/auth/token", json={"username": PHONES[0], "password": PASSWORD})
    assert r.status_code == 200
    pair = r.get_json()
    secrets += [pair["access_token"], pair["refresh_token"]]
    r = anon_client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    secrets += [r.get_json()["access_token"], r.get_json()["refresh_token"]]
    r = anon_client.post(
        "/api/v1/auth/password",
        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD},
        headers={"Authorization": f"Bearer {r.get_json()['access_token']}"},
    )
    assert r.status_code == 204
    user_id = rows(session, action="user.create")[1].object_id
    r = client.post(f"/api/v1/users/{user_id}/password", json={"new_password": "Reset-Passw0rd!"})
    assert r.status_code == 204
    secrets.append("Reset-Passw0rd!")
    # Registering a client over HTTP (answers 500 today, after writing its row) and revoking it.
    r = client.post("/api/v1/clients", json={"name": "hotline", "scopes": ["grids:read"]})
    if r.status_code == 201:
        secrets.append(r.get_json()["api_key"])
    for listed in client.get("/api/v1/clients").get_json()["items"]:
        assert client.delete(f"/api/v1/clients/{listed['id']}").status_code == 200

    entries = rows(session)
    assert {"user.create", "auth.login", "user.password_change", "user.password_reset"} <= {
        e.action for e in entries
    }
    for entry in entries:
        dumped = json.dumps(
            {c.name: getattr(entry, c.name) for c in AuditEntry.__table__.columns},
            ensure_ascii=False,
            default=str,
        )
        for secret in secrets:
            assert secret not in dumped, (entry.action, secret)
        assert "gk_" not in dumped and "$argon2" not in dumped
        assert "5678" not in json.dumps(entry.summary), entry.action  # not even masked
