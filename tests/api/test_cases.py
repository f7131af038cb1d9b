"""Reporting cases: routing, numbering, deadlines, unrouted points, validation, reads."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from geographiclib.geodesic import Geodesic
from sqlalchemy import event, select, text

from gridapi.geo.crs import wgs84_to_bd09, wgs84_to_gcj02

from ..factories import (
    CITY,
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    LAT0,
    LON0,
    STEP,
    TOWNSHIP,
    collection,
    feature,
    rectangle,
    square,
)
from ..statements import statements_sent

A1 = COMMUNITY_A + "001"
B2 = COMMUNITY_B + "002"


def center(col: int) -> tuple[float, float]:
    return (round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6))


def report_body(lon: float, lat: float, **extra) -> dict:  # type: ignore[no-untyped-def]
    body = {
        "category": "0101",
        "description": "小区门口垃圾堆放",
        "location": {"type": "Point", "coordinates": [lon, lat]},
        "accuracy_m": 8.5,
        "address": "平江路 1 号",
    }
    body.update(extra)
    return body


def test_report_routes_numbers_and_sets_the_acceptance_deadline(client, world, session):
    before = datetime.now(UTC)
    r = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["status"] == "reported"
    assert body["status_name"] == "已上报"
    assert body["grid"]["code"] == A1
    assert body["grid"]["version_id"] == body["routing"]["grid_version_id"]
    assert body["community"] == {"code": COMMUNITY_A, "name": "平江社区"}
    assert body["township"] == {"code": TOWNSHIP, "name": "平江街道"}
    assert body["routing"] == {
        "method": "inside",
        "distance_m": None,
        "unrouted": False,
        "grid_version_id": body["grid"]["version_id"],
    }
    local_day = before.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y%m%d")
    assert body["number"] == f"{COUNTY[:6]}-{local_day}-0001"
    # Category 0101 is accepted within 2 working hours; the deadline is later than now.
    assert datetime.fromisoformat(body["deadlines"]["accept"]) > before
    assert body["deadlines"]["handle"] is None
    assert r.headers["ETag"] == f'"{body["id"]}-1"'
    # The community takes the report in first; filing hands it to the category's handling
    # unit, here the township office.
    assert body["responsible"]["unit"] == {"code": COMMUNITY_A, "name": "平江社区"}
    etag = r.headers["ETag"]
    for action in ("accept", "file"):
        step = client.post(
            f"/api/v1/cases/{body['id']}/transitions",
            json={"action": action},
            headers={"If-Match": etag},
        )
        assert step.status_code == 200, step.get_json()
        etag = step.headers["ETag"]
    assert step.get_json()["responsible"]["unit"] == {"code": TOWNSHIP, "name": "平江街道"}
    second = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()
    assert second["number"].endswith("-0002")
    rows = session.execute(text("SELECT action, to_status FROM case_events ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [
        ("report", "reported"),
        ("accept", "accepted"),
        ("file", "filed"),
        ("report", "reported"),
    ]
    audit = session.execute(
        text("SELECT count(*) FROM audit_log WHERE action = 'case.report'")
    ).scalar()
    assert audit == 2


@pytest.mark.parametrize("crs,convert", [("gcj02", wgs84_to_gcj02), ("bd09", wgs84_to_bd09)])
def test_report_in_chinese_coordinates_is_routed_after_conversion(client, world, crs, convert):
    # A point near the east edge of grid A1 in WGS-84: sent in GCJ-02 unconverted it would
    # land hundreds of metres away, in grid B1 or beyond.
    lon, lat = LON0 + 0.9 * STEP, LAT0 + 0.5 * STEP
    sent = convert(lon, lat)
    r = client.post("/api/v1/cases", json=report_body(*sent, crs=crs))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["grid"]["code"] == A1
    assert body["reported_location"] == {"coordinates": list(sent), "crs": crs}
    got_lon, got_lat = body["location"]["coordinates"]
    assert abs(got_lon - lon) < 1e-6 and abs(got_lat - lat) < 1e-6


def test_a_position_with_an_altitude_is_reported_and_the_altitude_dropped(client, world, session):
    """RFC 7946 lets a position carry an altitude; phones' GeoJSON writers add it. A report
    with one was refused 422 ("Length must be 2") and the phone's queue kept retrying it."""
    lon, lat = center(0)
    r = client.post(
        "/api/v1/cases",
        json=report_body(lon, lat, crs="wgs84")
        | {"location": {"type": "Point", "coordinates": [lon, lat, 12.5]}},
    )
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["grid"]["code"] == A1
    assert body["location"]["coordinates"] == [lon, lat]
    assert body["reported_location"] == {"coordinates": [lon, lat], "crs": "wgs84"}
    stored = session.execute(text("SELECT lon, lat FROM cases WHERE id = :i"), {"i": body["id"]})
    assert tuple(stored.one()) == (lon, lat)
    # Four elements have no agreed meaning: refused, in the one error shape, nothing stored.
    four = client.post(
        "/api/v1/cases",
        json=report_body(lon, lat)
        | {"location": {"type": "Point", "coordinates": [lon, lat, 12.5, 3.0]}},
    )
    assert four.status_code == 422
    assert four.get_json()["errors"]["json"]["location"]["coordinates"]
    assert session.execute(text("SELECT count(*) FROM cases")).scalar() == 1


def test_a_point_outside_every_grid_is_kept_in_the_region_intake_queue(client, world):
    # Inside the township's boundary but north of every grid and community: no grid, no
    # community; the township takes it.
    r = client.post("/api/v1/cases", json=report_body(LON0 + 0.5 * STEP, LAT0 - 0.5 * STEP))
    assert r.status_code == 201
    far = client.post("/api/v1/cases", json=report_body(100.0, 40.0))
    assert far.status_code == 201, far.get_json()
    for body in (r.get_json(), far.get_json()):
        assert body["grid"] is None
        assert body["routing"]["unrouted"] is True
        assert body["routing"]["method"] == "none"
    listed = client.get("/api/v1/cases?unrouted=true").get_json()["items"]
    assert {c["id"] for c in listed} == {r.get_json()["id"], far.get_json()["id"]}


def test_a_point_no_region_takes_goes_to_the_nearest_grid_on_the_ground(client, factory):
    """The last fallback (no grid within the snap distance, no region boundary, a reporter
    without a region) took the grid nearest in degrees: at 31° N a degree of longitude is
    95 km and one of latitude 111 km, so a grid 1,053 m north beat one 952 m east."""
    factory.regions(with_boundaries=False)
    east = rectangle(1.5, -2, 2.5, -0.5)  # its west edge 0.0100° east of the point
    factory.grid_version(
        collection(feature(A1, square(0, 0)), feature(COMMUNITY_B + "001", east)), force=True
    )
    lon, lat = LON0 + 0.5 * STEP, LAT0 - 0.95 * STEP  # A1's south edge 0.0095° north
    r = client.post("/api/v1/cases", json=report_body(lon, lat))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert (body["grid"], body["routing"]["unrouted"]) == (None, True)
    assert body["region_code"] == COMMUNITY_B


def test_a_case_a_city_takes_in_lies_in_the_county_nearest_it(client, world, accounts, session):
    """A city centre's report outside every region's boundary fell back to the city itself:
    county code "320500", no county's (the key cases are distributed by), in its number
    (320500-…) and its export. A case a city or province would take in goes to the county
    under it nearest the point on the ground (that of the nearest grid), so it lies in a
    county, whose centre takes it in; the city still sees it and is its office."""
    from gridapi.models import Case

    huqiu, fengqiao = "320505000000", "320505001001"
    rows = [
        {"code": huqiu, "name": "虎丘区"},
        {"code": "320505001000", "name": "枫桥街道", "boundary": rectangle(20, 0, 21, 1)},
        {"code": fengqiao, "name": "枫桥社区", "boundary": rectangle(20, 0, 21, 1)},
    ]
    assert client.post("/api/v1/regions/import", json=rows).status_code == 200
    world.grid_version(collection(feature(fengqiao + "001", square(20, 0))))
    city = accounts.client("city", "city_centre", scope_region=CITY)
    # South of 姑苏区's grids, far from 虎丘区's (of the lower county code), in no boundary.
    near_gusu = report_body(LON0 + 2 * STEP, LAT0 - 5 * STEP)
    near_huqiu = report_body(LON0 + 20.5 * STEP, LAT0 - 5 * STEP)
    answers = [city.post("/api/v1/cases", json=body) for body in (near_gusu, near_huqiu)]
    for r in answers:
        assert r.status_code == 201, r.get_json()
    bodies = [r.get_json() for r in answers]
    assert [b["region_code"] for b in bodies] == [COUNTY, huqiu]
    assert [b["number"][:7] for b in bodies] == ["320508-", "320505-"]
    assert all(b["grid"] is None and b["routing"]["unrouted"] for b in bodies)
    session.rollback()
    stored = session.scalars(select(Case.county_code).order_by(Case.id)).all()
    assert stored == ["320508", "320505"]
    county = accounts.client("gusu", "county_centre", scope_region=COUNTY)
    assert "accept" in client_case(county, bodies[0]["id"])["allowed_actions"]
    assert "accept" in client_case(city, bodies[1]["id"])["allowed_actions"]


def client_case(who, case_id):  # type: ignore[no-untyped-def]
    r = who.get(f"/api/v1/cases/{case_id}")
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_a_point_just_outside_a_grid_snaps_to_it(client, world):
    lon, lat = LON0 + 0.5 * STEP, LAT0 + STEP + 0.0002  # ~22 m north of grid A1
    body = client.post("/api/v1/cases", json=report_body(lon, lat)).get_json()
    assert body["grid"]["code"] == A1
    assert body["routing"]["method"] == "snapped"
    assert 15 < body["routing"]["distance_m"] < 30


@pytest.mark.parametrize(
    "change,field",
    [
        ({"category": "7777"}, "category"),
        ({"location": {"type": "Point", "coordinates": [200, 31]}}, "location"),
        ({"location": {"type": "LineString", "coordinates": [120, 31]}}, "location"),
        ({"crs": "epsg3857"}, "crs"),
        ({"client_id": "not-a-uuid"}, "client_id"),
        ({"occurred_at": "2026-01-01T10:00:00"}, "occurred_at"),
        # it answered 422 "A number is too large." naming nothing (OverflowError)
        ({"occurred_at": "0001-01-01T00:00:00+14:00"}, "occurred_at"),
        ({"occurred_at": "1970-01-01T00:00:00+08:00"}, "occurred_at"),
        ({"description": ""}, "description"),
        # white space alone, and a zero-width space, were a description (201)
        ({"description": "   "}, "description"),
        ({"description": "\u200b\n"}, "description"),
        ({"severity": "huge"}, "severity"),
        ({"colour": "red"}, "colour"),
        # marshmallow's Float reads text: a coordinate sent as a string was reported
        ({"location": {"type": "Point", "coordinates": ["120.6", 31.3]}}, "location"),
        ({"accuracy_m": "8.5"}, "accuracy_m"),
        ({"accuracy_m": True}, "accuracy_m"),
    ],
)
def test_bad_reports_are_422_naming_the_field_and_store_nothing(
    client, world, session, change, field
):
    r = client.post("/api/v1/cases", json=report_body(*center(0), **change))
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["errors"]["json"]
    assert session.execute(text("SELECT count(*) FROM cases")).scalar() == 0


def test_category_attributes_are_validated(client, world):
    client.patch(
        "/api/v1/categories/0101",
        json={
            "attributes": [
                {"code": "volume", "label": "体积", "type": "number", "required": True},
            ]
        },
    )
    missing = client.post("/api/v1/cases", json=report_body(*center(0)))
    assert missing.status_code == 422
    assert missing.get_json()["errors"]["json"]["attributes"]["volume"] == ["required"]
    good = client.post("/api/v1/cases", json=report_body(*center(0), attributes={"volume": 2}))
    assert good.status_code == 201
    assert good.get_json()["attributes"] == {"volume": 2}


def test_possible_duplicates_are_returned_on_report(client, world):
    first = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    lon, lat = center(0)
    near = client.post("/api/v1/cases", json=report_body(lon + 0.0001, lat)).get_json()
    assert [d["id"] for d in near["possible_duplicates"]] == [first["id"]]
    assert 5 < near["possible_duplicates"][0]["distance_m"] < 15
    other = client.post("/api/v1/cases", json=report_body(*center(1))).get_json()
    assert other["possible_duplicates"] == []


def test_possible_duplicates_due_north_within_the_radius_are_found(client, world):
    """The search box was radius / 111,000 m degrees tall, but a degree of latitude is
    shorter than 111 km south of 45° N (110,870 m at 31° N): a report 4,997 m due north of
    an open one, inside a 5,000 m radius, was not offered as a possible duplicate, while one
    4,997 m due east was."""
    r = client.patch("/api/v1/categories/0101", json={"duplicate_radius_m": 5000})
    assert r.status_code == 200, r.get_json()
    lon, lat = center(0)
    first = client.post("/api/v1/cases", json=report_body(lon, lat)).get_json()
    north = Geodesic.WGS84.Direct(lat, lon, 0.0, 4997.0)
    east = Geodesic.WGS84.Direct(lat, lon, 90.0, 4997.0)
    for there in (east, north):
        near = client.post("/api/v1/cases", json=report_body(there["lon2"], there["lat2"]))
        assert near.status_code == 201, near.get_json()
        found = near.get_json()["possible_duplicates"]
        assert first["id"] in [d["id"] for d in found], there
        assert 4990 < next(d for d in found if d["id"] == first["id"])["distance_m"] <= 5000


def test_reports_from_phones_without_a_fix_are_not_duplicates_of_each_other(
    client, world, accounts
):
    """A phone without a fix reports 0°, 0° (Baidu's SDK 4.9E-324). Two such reports of one
    category, from anywhere, were each other's possible duplicates at 0.0 m, inviting an
    office to close a real report as a duplicate of an unrelated one. A report at 0°, 0°
    has no place to compare: it is routed to the reporter's area and names no duplicates."""
    worker = accounts.client("worker_a1", "grid_worker", grids=[A1])
    answers = []
    for reporter, point in ((worker, [0.0, 0.0]), (client, [4.9e-324, 4.9e-324])):
        for crs in ("wgs84", "gcj02"):
            r = reporter.post("/api/v1/cases", json=report_body(*point, crs=crs))
            assert r.status_code == 201, r.get_json()
            answers.append(r.get_json())
    assert [a["possible_duplicates"] for a in answers] == [[], [], [], []]
    assert answers[1]["routing"]["unrouted"] and answers[1]["region_code"] == COMMUNITY_A
    # A real position still finds the reports near it.
    first = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    again = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    assert [d["id"] for d in again["possible_duplicates"]] == [first["id"]]


def test_reads_are_scoped(client, world, accounts):
    a = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    b = client.post("/api/v1/cases", json=report_body(*center(3))).get_json()
    worker = accounts.client("w_a1", "grid_worker", grids=[A1])
    assert worker.get(f"/api/v1/cases/{a['id']}").status_code == 200
    missing = worker.get(f"/api/v1/cases/{b['id']}")
    assert missing.status_code == 404
    assert missing.get_json() == worker.get("/api/v1/cases/999999").get_json()
    assert [c["id"] for c in worker.get("/api/v1/cases").get_json()["items"]] == [a["id"]]
    # The worker's own report outside their grid stays visible to them.
    own = worker.post("/api/v1/cases", json=report_body(*center(2))).get_json()
    assert own["grid"]["code"] == COMMUNITY_B + "001"
    assert worker.get(f"/api/v1/cases/{own['id']}").status_code == 200


def test_list_filters_and_keyset_pagination(client, world):
    ids = [
        client.post("/api/v1/cases", json=report_body(*center(i % 4))).get_json()["id"]
        for i in range(7)
    ]
    seen, cursor = [], None
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/api/v1/cases?{query}").get_json()
        seen += [c["id"] for c in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    grid = client.get(f"/api/v1/cases?grid={A1}").get_json()["items"]
    assert {c["grid"]["code"] for c in grid} == {A1} and len(grid) == 2
    region = client.get(f"/api/v1/cases?region={COMMUNITY_B}").get_json()["items"]
    assert len(region) == 3
    box = f"{LON0},{LAT0},{LON0 + STEP},{LAT0 + STEP}"
    assert len(client.get(f"/api/v1/cases?bbox={box}").get_json()["items"]) == 2
    assert client.get("/api/v1/cases?q=垃圾").get_json()["items"]
    assert client.get("/api/v1/cases?status=closed").get_json()["items"] == []
    bad = client.get("/api/v1/cases?cursor=xyz")
    assert bad.status_code == 422


@pytest.mark.parametrize(
    "value",
    [
        # an id past 64 bits reached the query: 422 "out of range" / "too large", naming nothing
        ["2026-11-19T19:06:37+00:00", 2**70],
        ["2026-11-19T19:06:37+00:00", "2"],
        ["2026-11-19T19:06:37+00:00", 1.5],
        ["2026-11-19T19:06:37+00:00", True],
        ["2026-11-19T19:06:37", 2],  # no zone
        ["0001-01-01T00:00:00+14:00", 2],
    ],
)
def test_a_forged_cursor_is_422_naming_the_cursor(client, world, value):
    import base64

    cursor = base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    r = client.get(f"/api/v1/cases?cursor={cursor}")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {"query": {"cursor": ["not a cursor from this API"]}}


def test_a_cursor_pages_only_the_list_it_came_from(client, world):
    """A cursor of sort=reported_at used with sort=-reported_at answered an empty page (the
    client lost every case), one of status=closed paged status=reported from its place."""
    for col in range(3):
        client.post("/api/v1/cases", json=report_body(*center(col)))
    first = client.get("/api/v1/cases?limit=1&sort=reported_at").get_json()
    cursor = first["next_cursor"]
    nxt = client.get(f"/api/v1/cases?limit=1&sort=reported_at&cursor={cursor}")
    assert nxt.status_code == 200 and nxt.get_json()["items"][0]["id"] != first["items"][0]["id"]
    for other in ("sort=-reported_at", "sort=reported_at&status=closed", "sort=reported_at&q=x"):
        r = client.get(f"/api/v1/cases?limit=1&{other}&cursor={cursor}")
        assert r.status_code == 422, (other, r.get_json())
        assert list(r.get_json()["errors"]["query"]) == ["cursor"]
    # the page size is not the list's: another limit goes on from the cursor
    assert client.get(f"/api/v1/cases?limit=5&sort=reported_at&cursor={cursor}").status_code == 200


def test_a_cursor_written_in_another_zone_pages_as_in_utc(client, world):
    """The same instant written +08:00 sorted as text on SQLite: the next page repeated
    cases the cursor had passed (PostgreSQL was right)."""
    import base64

    for col in range(3):
        client.post("/api/v1/cases", json=report_body(*center(col)))
    first = client.get("/api/v1/cases?limit=1").get_json()
    value, last_id, tag = json.loads(base64.urlsafe_b64decode(first["next_cursor"] + "=="))
    local = datetime.fromisoformat(value).astimezone(ZoneInfo("Asia/Shanghai")).isoformat()
    pages = {}
    for written in (value, local):
        raw = json.dumps([written, last_id, tag]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        r = client.get(f"/api/v1/cases?cursor={cursor}")
        assert r.status_code == 200, r.get_json()
        pages[written[-6:]] = [c["id"] for c in r.get_json()["items"]]
    assert pages == {"+00:00": pages["+00:00"], "+08:00": pages["+00:00"]}
    assert first["items"][0]["id"] not in pages["+08:00"] and len(pages["+08:00"]) == 2


def test_minus_zero_is_zero_on_both_engines(client, world):
    """PostgreSQL kept the sign of -0.0 and answered it, SQLite answered 0.0."""
    body = report_body(-0.0, -0.0, accuracy_m=-0.0)
    r = client.post("/api/v1/cases", json=body)
    assert r.status_code == 201, r.get_json()
    case = client.get(f"/api/v1/cases/{r.get_json()['id']}").get_data(as_text=True)
    assert "-0.0" not in case and '"accuracy_m":0.0' in case.replace(" ", "")


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("assignee=999999999999", "assignee"),  # field-less 422 on PostgreSQL; exports broke
        ("assignee=2147483648", "assignee"),
        ("bbox=-200,-95,200,95", "bbox"),
        ("bbox=-200,0,10,10", "bbox"),
        ("from=2026-11-28T00:00:00Z&to=2026-11-20T00:00:00Z", "to"),
        ("status=", "status"),  # filtered nothing
    ],
)
def test_list_filters_that_cannot_be_are_422_naming_them(client, world, query, name):
    for path in ("/api/v1/cases", "/api/v1/exports/cases", "/api/v1/maps/case-counts"):
        r = client.get(f"{path}?{query}&format=csv" if "exports" in path else f"{path}?{query}")
        assert r.status_code == 422, (path, r.status_code, r.get_data(as_text=True)[:200])
        assert name in r.get_json()["errors"]["query"], (path, r.get_json())


def _plan(conn, statement: str, parameters) -> str:  # type: ignore[no-untyped-def]
    """Return the plan of a captured statement, as text to search."""
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
        return json.dumps(rows)
    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
    return " | ".join(str(row[-1]) for row in rows)


def _one_case_and_older_copies(client, engine, **change) -> dict:  # type: ignore[no-untyped-def]
    """Report one case, add 3,000 copies of it a minute apart before it (with ``change``
    applied), analyse, and return the reported case's row."""
    from gridapi.models import Case

    assert client.post("/api/v1/cases", json=report_body(*center(0))).status_code == 201
    table = Case.__table__
    with engine.begin() as conn:
        row = dict(conn.execute(select(table)).mappings().one())
        copies = []
        for i in range(1, 3001):
            copy = {k: v for k, v in row.items() if k != "id"}
            copy.update(
                number=f"{row['number']}{i:04d}",
                client_id=None,
                reported_at=row["reported_at"] - timedelta(minutes=i),
                **change,
            )
            copies.append(copy)
        conn.execute(table.insert(), copies)
        conn.exec_driver_sql("ANALYZE")
    return row


def _lists_sent(engine) -> Any:  # type: ignore[no-untyped-def]
    """Collect the list statements sent meanwhile, with their parameters."""
    return statements_sent(
        engine,
        lambda s: "FROM cases" in s and "ORDER BY cases.reported_at DESC" in s,
        parameters=True,
    )


def test_the_newest_cases_of_every_region_are_read_from_an_index(client, world, app):
    """An unrestricted caller's list with no filter, and its next page, walk
    ix_cases_reported_at backwards: no read and sort of the whole table (≈ 0.3 s on
    PostgreSQL and seconds on SQLite at 1 M cases before migration 0017)."""
    engine = app.extensions["gridapi"].engine
    _one_case_and_older_copies(client, engine)  # so the planner weighs a real table
    with _lists_sent(engine) as sent:
        first = client.get("/api/v1/cases?limit=50").get_json()
        second = client.get(f"/api/v1/cases?limit=50&cursor={first['next_cursor']}").get_json()
    times = [c["reported_at"] for c in first["items"] + second["items"]]
    assert len(times) == 100 and times == sorted(times, reverse=True)
    assert len(sent) == 2
    with engine.connect() as conn:
        for statement, parameters in sent:
            plan = _plan(conn, statement, parameters)
            assert "ix_cases_reported_at" in plan, plan
            assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan


def test_a_list_asks_for_duplicates_by_index_for_the_page_only(client, world, app):
    """A list reads each case's category name and whether it has duplicates in its one
    statement, by a probe per case of the page (pk_categories, ix_cases_duplicate_of). As
    an EXISTS, PostgreSQL hashed every case's duplicate_of_id first, reading the whole table
    on every list (70 ms at 100,000 cases)."""
    engine = app.extensions["gridapi"].engine
    _one_case_and_older_copies(client, engine)
    with _lists_sent(engine) as sent:
        page = client.get("/api/v1/cases?limit=50").get_json()
    assert len(page["items"]) == 50
    assert {c["category"]["name"] for c in page["items"]} == {"暴露垃圾"}
    assert len(sent) == 1
    with engine.connect() as conn:
        plan = _plan(conn, *sent[0])
    assert "ix_cases_duplicate_of" in plan, plan
    assert "SCAN duplicate" not in plan, plan  # SQLite's whole-table read

    def nodes(node):  # type: ignore[no-untyped-def]
        yield node
        for child in node.get("Plans", ()):
            yield from nodes(child)

    if engine.dialect.name == "postgresql":
        read = [n for n in nodes(json.loads(plan)[0]["Plan"]) if n.get("Relation Name") == "cases"]
        assert [n["Node Type"] for n in read] == ["Index Scan", "Index Scan"], plan


def test_a_case_is_read_with_its_category_name_and_duplicates_in_one_statement(client, world, app):
    """GET /cases/{id} reads the case, its category's name and whether reports were closed
    as its duplicates in one statement (two more round trips asked for the name and the
    duplicates by its id); the duplicates themselves are read only for a case with some."""
    engine = app.extensions["gridapi"].engine
    created = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    reads = statements_sent(engine, lambda s: "FROM cases" in s or "FROM categories" in s)
    with reads as sent:
        r = client.get(f"/api/v1/cases/{created['id']}")
    assert r.status_code == 200
    body = r.get_json()
    assert (body["category"]["name"], body["duplicates"]) == ("暴露垃圾", [])
    assert r.headers["ETag"] == f'"{created["id"]}-{body["version"]}"'
    assert len(sent) == 1, sent


def test_the_duplicate_search_reads_open_cases_only(client, world, app):
    """Each report's search for possible duplicates (open cases of its category near its
    point, reported in the last days) is decided in ix_cases_open_duplicates: the closed
    cases of the category around the point are not read (migration 0020)."""
    from gridapi.models import Case
    from gridapi.services import cases as svc

    engine = app.extensions["gridapi"].engine
    # Closed cases of the category on the spot, all in the search's window.
    row = _one_case_and_older_copies(client, engine, status="closed")
    since = row["reported_at"] - timedelta(hours=72)
    params = {
        "category": row["category_code"],
        **svc.duplicate_bounds(50.0, row["lon"], row["lat"], since),
    }
    sent: list[tuple[str, object]] = []

    def capture(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if "FROM cases" in statement:
            sent.append((statement, parameters))

    with engine.connect() as conn:
        event.listen(conn, "before_cursor_execute", capture)
        found = conn.execute(svc.duplicate_search(Case.number), params).scalars().all()
        event.remove(conn, "before_cursor_execute", capture)
        assert found == [row["number"]] and len(sent) == 1
        plan = _plan(conn, *sent[0])
    assert "ix_cases_open_duplicates" in plan, plan


def test_a_report_names_a_subclass_not_its_class(client, world, session):
    """Class 01 (市容环境) was accepted for a report, with limits and handler of no subclass;
    a class without subclasses is still reported as itself (Open311 lists it so)."""
    r = client.post("/api/v1/cases", json=report_body(*center(0), category="01"))
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["category"] == [
        "01 is a class: name one of its subclasses"
    ]
    assert session.execute(text("SELECT count(*) FROM cases")).scalar() == 0
    made = client.post("/api/v1/categories", json={"code": "97", "name": "其他事项"})
    assert made.status_code == 201, made.get_json()
    alone = client.post("/api/v1/cases", json=report_body(*center(0), category="97"))
    assert alone.status_code == 201, alone.get_json()
    assert alone.get_json()["category"]["code"] == "97"


def test_text_search_finds_the_text_as_written(client, world):
    """`q` is text to find: % and _ matched every case, and a backslash none."""
    texts = ["进度100%完成", "a_b下划线", "反斜杠\\测试", "普通描述 ABC", "ÉCOLE ＦＵＬＬ宽"]
    ids = {
        t: client.post("/api/v1/cases", json=report_body(*center(0), description=t)).get_json()[
            "id"
        ]
        for t in texts
    }

    def found(q: str) -> set[int]:
        r = client.get("/api/v1/cases", query_string={"q": q, "limit": 100})
        assert r.status_code == 200, r.get_json()
        return {c["id"] for c in r.get_json()["items"]}

    assert found("%") == {ids["进度100%完成"]}
    assert found("100%") == {ids["进度100%完成"]}
    assert found("_") == {ids["a_b下划线"]}
    assert found("\\") == {ids["反斜杠\\测试"]}
    assert found("abc") == {ids["普通描述 ABC"]}  # case-insensitive, as before
    assert found("/") == set()
    # beyond ASCII too (SQLite's lower() knew ASCII only: even "ÉCOLE" missed itself)
    for q in ("ÉCOLE", "école", "ＦＵＬＬ", "ｆｕｌｌ宽"):
        assert found(q) == {ids["ÉCOLE ＦＵＬＬ宽"]}, q


def test_text_search_finds_any_text_as_written_on_both_engines(client, world):
    """The words were lowered in Python and the columns by the database: on PostgreSQL
    "ΣΟΦΟΣ" (Python: final ς, PostgreSQL: σ) and "İstanbul" (Python: i + a combining dot,
    PostgreSQL: i) did not find the case they were copied from. Both sides are lowered by
    the database now, so a text as written finds itself on either engine."""
    texts = ["ΟΔΟΣ ΣΟΦΟΚΛΕΟΥΣ", "İSTANBUL CADDESİ"]
    ids = {
        t: client.post("/api/v1/cases", json=report_body(*center(0), address=t)).get_json()["id"]
        for t in texts
    }

    def found(q: str) -> set[int]:
        r = client.get("/api/v1/cases", query_string={"q": q, "limit": 100})
        assert r.status_code == 200, r.get_json()
        return {c["id"] for c in r.get_json()["items"]}

    for text_as_written in texts:
        for q in (text_as_written, *text_as_written.split()):
            assert found(q) == {ids[text_as_written]}, q


def test_client_id_must_be_unique_per_caller_only(client, world, accounts):
    cid = str(uuid.uuid4())
    first = client.post("/api/v1/cases", json=report_body(*center(0), client_id=cid))
    other = accounts.client("w_a1", "grid_worker", grids=[A1])
    second = other.post("/api/v1/cases", json=report_body(*center(0), client_id=cid))
    assert first.status_code == second.status_code == 201
    assert first.get_json()["id"] != second.get_json()["id"]


def test_sensitive_cases_are_not_seen_by_area_alone(client, world, accounts):
    """A marriage dispute (5103, sensitive) in grid A1: the unit holding it (the community
    at intake, the township once filed) and its reporter see it; the grid's other worker
    never does, and the community officer no longer once the township holds it."""
    reporter = accounts.client("w_a1", "grid_worker", grids=[A1])
    r = reporter.post("/api/v1/cases", json=report_body(*center(0), category="5103"))
    body = r.get_json()
    assert body["sensitive"] is True
    plain = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    colleague = accounts.client("w2_a1", "grid_worker", grids=[A1])
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)

    def check(expected):  # type: ignore[no-untyped-def]
        for caller, sees in expected:
            assert caller.get(f"/api/v1/cases/{body['id']}").status_code == (200 if sees else 404)
            listed = {c["id"] for c in caller.get("/api/v1/cases").get_json()["items"]}
            assert (body["id"] in listed) is sees
            assert caller.get(f"/api/v1/cases/{plain['id']}").status_code == 200

    check(((reporter, True), (office, True), (colleague, False), (officer, True)))
    etag = r.headers["ETag"]
    for action in ("accept", "file"):
        step = office.post(
            f"/api/v1/cases/{body['id']}/transitions",
            json={"action": action},
            headers={"If-Match": etag},
        )
        assert step.status_code == 200, step.get_json()
        etag = step.headers["ETag"]
    check(((reporter, True), (office, True), (colleague, False), (officer, False)))


def test_the_ten_thousandth_case_of_a_day_gets_a_longer_number(client, world, session):
    """Numbers grow past four digits instead of failing (a county's busy day, or a flood)."""
    first = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    session.execute(text("UPDATE case_counters SET last = 9999"))
    session.commit()
    r = client.post("/api/v1/cases", json=report_body(*center(1)))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["number"] == first["number"][:-4] + "10000"


def test_a_renamed_region_shows_in_routing_and_in_cases_at_once(client, world):
    """Names in answers come from the routing index, which a region write refreshes."""
    case = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    assert case["community"]["name"] == "平江社区"
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"name": "平江新村社区"})
    assert r.status_code == 200, r.get_json()
    located = client.get(f"/api/v1/locate?lon={center(0)[0]}&lat={center(0)[1]}").get_json()
    assert located["regions"][0]["name"] == "平江新村社区"
    again = client.get(f"/api/v1/cases/{case['id']}").get_json()
    assert again["community"]["name"] == "平江新村社区"
    listed = client.get("/api/v1/cases").get_json()["items"][0]
    assert listed["community"]["name"] == "平江新村社区"


def test_listed_cases_have_the_documented_shape(client, world):
    """The list is encoded without a schema dump: every item must still load as the spec's
    CaseSchema says, and equal the single read."""
    from gridapi.schemas.cases import CaseSchema

    case = client.post("/api/v1/cases", json=report_body(*center(0))).get_json()
    assert CaseSchema().validate(case) == {}
    item = client.get("/api/v1/cases").get_json()["items"][0]
    assert CaseSchema().validate(item) == {}
    single = client.get(f"/api/v1/cases/{case['id']}").get_json()
    single.pop("duplicates")
    assert item == single


def test_a_community_handled_category_stays_with_the_community_office(client, world, accounts):
    """default_handler "community": filing keeps the case with the community, whose officer
    then dispatches it; the township office still may, its area holding the community."""
    r = client.patch("/api/v1/categories/0101", json={"default_handler": "community"})
    assert r.status_code == 200, r.get_json()
    assert client.patch("/api/v1/categories/0101", json={"default_handler": "village"}).get_json()[
        "errors"
    ]["json"]["default_handler"]
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    worker_id = accounts.create("w_a1", "grid_worker", grids=[A1])
    r = client.post("/api/v1/cases", json=report_body(*center(0)))
    case, etag = r.get_json()["id"], r.headers["ETag"]
    for action, extra in (("accept", {}), ("file", {}), ("dispatch", {"assignee_id": worker_id})):
        step = officer.post(
            f"/api/v1/cases/{case}/transitions",
            json={"action": action, **extra},
            headers={"If-Match": etag},
        )
        assert step.status_code == 200, step.get_json()
        etag = step.headers["ETag"]
    body = step.get_json()
    assert body["status"] == "dispatched"
    assert body["responsible"]["unit"]["code"] == COMMUNITY_A
    assert body["responsible"]["assignee_id"] == worker_id


# Cursors handed out before the case list and /me/tasks shared one cursor codec, written by
# that code (``encode_cursor``) and kept here as they were: a phone or a client may hold one
# across an upgrade. Each is 2026-11-20T12:00Z and id 1; the tagged ones carry the tag of
# the default list (sort=-reported_at, no filters), the untagged one is older still.
OLD_TAGGED = "WyIyMDI2LTExLTIwVDEyOjAwOjAwKzAwOjAwIiwgMSwgIjNhMDg2YzhiZTIxZCJd"
OLD_TAGGED_CST = "WyIyMDI2LTExLTIwVDIwOjAwOjAwKzA4OjAwIiwgMSwgIjNhMDg2YzhiZTIxZCJd"  # +08:00
OLD_UNTAGGED = "WyIyMDI2LTExLTIwVDEyOjAwOjAwKzAwOjAwIiwgMV0"


def test_a_cursor_handed_out_before_the_shared_codec_pages_on(client, world, session):
    """A cursor written by the old code, tagged or not, in UTC or +08:00, goes on from its
    place; under another sort it is still refused as another list's."""
    from sqlalchemy import update

    from gridapi.models import Case

    ids = [
        client.post("/api/v1/cases", json=report_body(*center(c))).get_json()["id"]
        for c in range(3)
    ]
    days = ("2026-11-19T08:00", "2026-11-20T11:00", "2026-11-21T08:00")
    for case_id, day in zip(ids, days, strict=True):
        moment = datetime.fromisoformat(day).replace(tzinfo=UTC)
        session.execute(update(Case).where(Case.id == case_id).values(reported_at=moment))
    session.commit()
    for cursor in (OLD_TAGGED, OLD_TAGGED_CST, OLD_UNTAGGED):
        page = client.get(f"/api/v1/cases?cursor={cursor}")
        assert page.status_code == 200, page.get_json()
        # newest first, from the place the cursor names: those reported before 11-20 12:00
        assert [c["id"] for c in page.get_json()["items"]] == [ids[1], ids[0]], cursor
    other = client.get(f"/api/v1/cases?sort=reported_at&cursor={OLD_TAGGED}")
    assert other.status_code == 422 and list(other.get_json()["errors"]["query"]) == ["cursor"]
