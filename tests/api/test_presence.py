"""Presence over HTTP: heartbeats, who is on duty in a grid now, when workers were last seen.

The clearing of old coordinates is tested with the retention of tracks (test_patrols.py);
every operation × role × scope in test_authorization_matrix.py.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from gridapi.geo.crs import wgs84_to_bd09
from gridapi.geo.geodesy import distance_m

from ..factories import COMMUNITY_A, COMMUNITY_B, LAT0, LON0, STEP

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1 = COMMUNITY_B + "001"


def center(col: float) -> list[float]:
    return [round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]


def point(col: float) -> dict:
    return {"type": "Point", "coordinates": center(col)}


def ok(response, status: int = 200) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def beat(client, col: float, **extra) -> dict:  # type: ignore[no-untyped-def]
    return ok(client.post("/api/v1/presence/heartbeat", json={"location": point(col), **extra}))


@pytest.fixture
def people(accounts, world) -> dict:  # type: ignore[no-untyped-def]
    return {
        "worker1": accounts.client("worker1", "grid_worker", grids=[A1]),
        "worker2": accounts.client("worker2", "grid_worker", grids=[A1]),
        "visitor": accounts.client("visitor", "grid_worker", grids=[B1]),
        "chief": accounts.client("chief1", "grid_chief", grids=[A1, A2]),
    }


@contextlib.contextmanager
def role_without(engine, role: str, permission: str):  # type: ignore[no-untyped-def]
    """Take one permission from a stock role for the block only (PostgreSQL keeps roles)."""
    with engine.begin() as conn:
        before = conn.execute(
            text("SELECT permissions FROM roles WHERE name = :r"), {"r": role}
        ).scalar()
        before = json.loads(before) if isinstance(before, str) else before
        conn.execute(
            text("UPDATE roles SET permissions = :p WHERE name = :r"),
            {"p": json.dumps([p for p in before if p != permission]), "r": role},
        )
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(
                text("UPDATE roles SET permissions = :p WHERE name = :r"),
                {"p": json.dumps(before), "r": role},
            )


def test_a_heartbeat_is_routed_and_a_late_one_changes_nothing(people):
    worker = people["worker1"]
    lon, lat = wgs84_to_bd09(*center(1))  # Baidu's BD-09
    body = {"location": {"type": "Point", "coordinates": [lon, lat]}, "crs": "bd09"}
    seen = ok(worker.post("/api/v1/presence/heartbeat", json={**body, "battery": 76}))
    assert (seen["grid"], seen["on_duty"], seen["battery"]) == (A2, True, 76)
    assert distance_m(*seen["location"]["coordinates"], *center(1)) < 1.0
    # a heartbeat the phone took earlier (sent late) does not move the worker back
    earlier = (datetime.now(UTC) - timedelta(minutes=3)).isoformat()
    again = beat(worker, 0, at=earlier)
    assert (again["grid"], again["last_seen"]) == (A2, seen["last_seen"])
    assert beat(worker, 0)["grid"] == A1
    # bad input: the one error format, naming the field
    for bad, field in (
        ({"location": point(0), "battery": 101}, "battery"),
        ({"crs": "wgs84"}, "location"),
        ({"location": point(0), "at": (datetime.now(UTC) + timedelta(hours=1)).isoformat()}, "at"),
    ):
        answer = ok(worker.post("/api/v1/presence/heartbeat", json=bad), 422)
        assert field in answer["errors"]["json"], bad


def test_a_heartbeat_without_a_fix_keeps_the_time_not_the_place(people):
    worker = people["worker1"]
    assert beat(worker, 0)["grid"] == A1
    # a phone without a fix sends 0°, 0°: on duty, but nowhere (not in the Gulf of Guinea)
    no_fix = {"location": {"type": "Point", "coordinates": [0, 0]}, "battery": 40}
    seen = ok(worker.post("/api/v1/presence/heartbeat", json=no_fix))
    assert (seen["on_duty"], seen["battery"], seen["grid"], seen["location"]) == (
        True,
        40,
        None,
        None,
    )
    # Baidu's SDK writes 4.9E-324 (the smallest double, not quite 0) for both: the same
    baidu = {"type": "Point", "coordinates": [4.9e-324, 4.9e-324]}
    assert beat(worker, 0)["grid"] == A1
    seen = ok(
        worker.post(
            "/api/v1/presence/heartbeat", json={"location": baidu, "crs": "bd09", "battery": 39}
        )
    )
    assert (seen["battery"], seen["grid"], seen["location"]) == (39, None, None)


def test_who_is_on_duty_in_a_grid_now(people, accounts, engine):
    beat(people["worker1"], 0)  # on the roster of A1, there
    beat(people["visitor"], 0)  # on the roster of B1, in A1 now
    stale = (datetime.now(UTC) - timedelta(minutes=40)).isoformat()
    beat(people["worker2"], 0, at=stale)  # on the roster, not seen for 40 minutes
    duty = ok(people["chief"].get(f"/api/v1/grids/{A1}/on-duty"))
    on = {i["username"]: i for i in duty["items"]}
    # the visitor lives outside the chief's scope: where they are is not the chief's to read
    # (they were listed, with their coordinates)
    assert set(on) == {"worker1"}
    assert (on["worker1"]["on_roster"], on["worker1"]["in_grid"]) == (True, True)
    assert on["worker1"]["location"]["coordinates"] == center(0)
    # the township office, whose scope holds both communities, sees the visitor in A1
    office = accounts.client("office1", "township_office", scope_region=COMMUNITY_A[:9] + "000")
    seen = {i["username"]: i for i in ok(office.get(f"/api/v1/grids/{A1}/on-duty"))["items"]}
    assert set(seen) == {"worker1", "visitor"}
    assert (seen["visitor"]["on_roster"], seen["visitor"]["in_grid"]) == (False, True)
    assert seen["visitor"]["location"]["coordinates"] == center(0)
    off = {i["username"]: i for i in duty["off_duty"]}
    assert set(off) == {"worker2", "chief1"}  # the chief is on A1's roster too
    assert off["worker2"]["last_seen"] is not None and off["chief1"]["last_seen"] is None
    assert off["worker2"]["on_duty"] is False
    # elsewhere in A2 nobody is on duty; a worker moving away leaves A1
    assert ok(people["chief"].get(f"/api/v1/grids/{A2}/on-duty"))["items"] == []
    beat(people["visitor"], 2)
    assert {i["username"] for i in ok(office.get(f"/api/v1/grids/{A1}/on-duty"))["items"]} == {
        "worker1"
    }


def test_on_duty_out_of_scope_answers_like_a_missing_grid(people):
    chief = people["chief"]
    out = chief.get(f"/api/v1/grids/{B1}/on-duty")
    missing = chief.get(f"/api/v1/grids/{COMMUNITY_B}999/on-duty")
    assert (out.status_code, out.data) == (404, missing.data)
    assert people["worker1"].get(f"/api/v1/grids/{A1}/on-duty").status_code == 403


def test_last_seen_of_the_workers_in_scope(people, accounts, engine):
    beat(people["worker1"], 0)
    stale = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    beat(people["visitor"], 2, at=stale)
    chief = people["chief"]
    seen = {i["username"]: i for i in ok(chief.get("/api/v1/presence"))["items"]}
    # the workers on the chief's grids (the chief too), seen or not; B1's is out of scope
    assert set(seen) == {"worker1", "worker2", "chief1"}
    assert seen["worker1"]["on_duty"] and seen["worker1"]["grid"] == A1
    assert seen["worker2"]["last_seen"] is None and not seen["worker2"]["on_duty"]
    on_duty = ok(chief.get("/api/v1/presence?on_duty=true"))["items"]
    assert [i["username"] for i in on_duty] == ["worker1"]
    office = accounts.client("office1", "township_office", scope_region=COMMUNITY_A[:9] + "000")
    everyone = {i["username"]: i for i in ok(office.get("/api/v1/presence"))["items"]}
    assert {"worker1", "worker2", "visitor"} <= set(everyone)
    assert everyone["visitor"]["on_duty"] is False and everyone["visitor"]["grid"] == B1
    assert [i["username"] for i in ok(office.get(f"/api/v1/presence?grid={B1}"))["items"]] == [
        "visitor"
    ]
    assert ok(office.get(f"/api/v1/presence?region={COMMUNITY_B}"))["items"][0]["username"] == (
        "visitor"
    )
    page = ok(office.get("/api/v1/presence?limit=1"))
    after = ok(office.get(f"/api/v1/presence?limit=1&cursor={page['next_cursor']}"))["items"]
    assert after[0]["user_id"] > page["items"][0]["user_id"]
    # whereabouts only with patrols:read
    with role_without(engine, "grid_chief", "patrols:read"):
        limited = accounts.client("chief2", "grid_chief", grids=[A1])
        items = ok(limited.get("/api/v1/presence"))["items"]
        assert items and all(i["location"] is None for i in items)
        duty = ok(limited.get(f"/api/v1/grids/{A1}/on-duty"))["items"]
        assert duty and all(i["location"] is None for i in duty)


def test_the_roster_is_read_on_the_county_s_date(people, app, engine):
    """At 17:00 UTC it is already the next day in Asia/Shanghai: a worker on a roster from
    that day was left out of the last-seen list (it read the roster on the UTC date), from
    16:00 to 24:00 UTC every day."""
    from gridapi.scope import Scope
    from gridapi.services.presence import list_presence

    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE grid_assignments SET valid_from = :d WHERE user_id = "
                "(SELECT id FROM users WHERE username = 'worker2')"
            ),
            {"d": datetime(2030, 1, 2).date()},
        )
    evening = datetime(2030, 1, 1, 17, 0, tzinfo=UTC)  # 2030-01-02 01:00 in Shanghai
    with app.extensions["gridapi"].sessions() as session:
        rows = list_presence(
            session, Scope.everything(), {}, now=evening, minutes=15, with_location=False
        )
    assert "worker2" in {row["username"] for row in rows}


def test_a_deactivated_account_is_not_listed_off_duty(people, accounts, client):
    """Its assignment may stay on the roster (history), but nobody is on duty or off duty
    through an account that cannot sign in."""
    beat(people["worker1"], 0)
    chief = people["chief"]
    duty = ok(chief.get(f"/api/v1/grids/{A1}/on-duty"))
    assert {i["username"] for i in duty["off_duty"]} == {"worker2", "chief1"}
    r = client.patch(f"/api/v1/users/{accounts.ids['worker2']}", json={"is_active": False})
    assert r.status_code == 200, r.get_json()
    duty = ok(chief.get(f"/api/v1/grids/{A1}/on-duty"))
    assert {i["username"] for i in duty["off_duty"]} == {"chief1"}
    assert {i["username"] for i in duty["items"]} == {"worker1"}


def test_where_workers_are_is_kept_in_no_cache(people):
    """Who is where now (the last heartbeat's place) was answered 'private, no-cache', so a
    browser on an office's shared computer kept it on disk; a patrol's track is 'no-store'."""
    beat(people["worker1"], 0)
    for url in (f"/api/v1/grids/{A1}/on-duty", "/api/v1/presence"):
        r = people["chief"].get(url)
        assert r.status_code == 200, r.get_json()
        assert r.headers["Cache-Control"] == "private, no-store", url


def test_a_heartbeat_by_a_fast_clock_is_moved_by_its_date_header(people):
    """A heartbeat stamped by a clock an hour fast was refused as lying in the future (and
    one by a slow clock was older than the one stored, and changed nothing). With the
    phone's Date header its `at` is moved to the server's clock."""
    from werkzeug.http import http_date

    worker = people["worker1"]
    phone_now = datetime.now(UTC) + timedelta(hours=1)
    body = {"location": point(0), "at": phone_now.isoformat()}
    assert "at" in ok(worker.post("/api/v1/presence/heartbeat", json=body), 422)["errors"]["json"]
    headers = {"Date": http_date(phone_now)}
    seen = ok(worker.post("/api/v1/presence/heartbeat", json=body, headers=headers))
    assert abs(datetime.fromisoformat(seen["last_seen"]) - datetime.now(UTC)) < timedelta(seconds=5)
    assert seen["on_duty"] is True
