"""Point routing on both engines: inside, edges, vertices, gaps, outside, batches, CRS."""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from sqlalchemy import text

from gridapi import clock, create_app
from gridapi.geo.crs import wgs84_to_bd09, wgs84_to_gcj02

from ..factories import (
    COMMUNITY_A,
    COMMUNITY_B,
    LAT0,
    LON0,
    STEP,
    TOWNSHIP,
    Accounts,
    collection,
    feature,
    square,
)

A1, A2, B1, B2 = COMMUNITY_A + "001", COMMUNITY_A + "002", COMMUNITY_B + "001", COMMUNITY_B + "002"


@pytest.fixture
def tiled(factory):
    factory.regions()
    return factory.grid_version()


def test_point_inside_a_grid(factory, tiled):
    answer = factory.locate(LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)
    assert answer["grid"]["code"] == A1
    assert answer["method"] == "inside"
    assert answer["grid"]["version_id"] == tiled["id"]
    assert [r["level"] for r in answer["regions"]] == [
        "village",
        "township",
        "county",
        "city",
        "province",
    ]
    assert answer["regions"][0]["code"] == COMMUNITY_A
    assert answer["point"] == {
        "type": "Point",
        "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP],
    }
    assert "distance_m" not in answer


def test_point_on_shared_edge_goes_to_lowest_code(factory, tiled):
    # The edge between A1 and A2; both cover it, neither contains it.
    answer = factory.locate(LON0 + STEP, LAT0 + 0.5 * STEP)
    assert (answer["grid"]["code"], answer["method"]) == (A1, "boundary")
    # The edge between communities A and B (A2 | B1).
    answer = factory.locate(LON0 + 2 * STEP, LAT0 + 0.25 * STEP)
    assert (answer["grid"]["code"], answer["method"]) == (A2, "boundary")


def test_point_on_shared_vertex_and_outer_vertex(factory, tiled):
    answer = factory.locate(LON0 + 2 * STEP, LAT0 + STEP)  # A2, B1 corner
    assert (answer["grid"]["code"], answer["method"]) == (A2, "boundary")
    answer = factory.locate(LON0, LAT0)  # outer corner of A1 only
    assert (answer["grid"]["code"], answer["method"]) == (A1, "boundary")


def test_interior_beats_boundary_where_grids_overlap(factory):
    factory.regions(with_boundaries=False)
    # B1 overlaps A1's right half; a point on A1's right edge is inside B... no: use a point on
    # A1's edge that lies in B1's interior.
    fc = collection(feature(A1, square(0, 0)), feature(B1, square(0.5, 0)))
    factory.grid_version(fc, force=True)
    answer = factory.locate(LON0 + STEP, LAT0 + 0.5 * STEP)  # A1's east edge, inside B1
    assert (answer["grid"]["code"], answer["method"]) == (B1, "inside")
    answer = factory.locate(LON0 + 0.75 * STEP, LAT0 + 0.5 * STEP)  # inside both
    assert (answer["grid"]["code"], answer["method"]) == (A1, "inside")


def test_gap_snaps_to_nearest_grid_within_distance(factory):
    factory.regions(with_boundaries=False)
    # A gap 0.0004° (~38 m) wide between A1 and A2.
    fc = collection(feature(A1, square(0, 0)), feature(A2, square(1.04, 0)))
    factory.grid_version(fc, force=True)
    lat = LAT0 + 0.5 * STEP
    near_a1 = factory.locate(LON0 + STEP + 0.0001, lat)  # ~9.5 m from A1, ~28.5 m from A2
    assert (near_a1["grid"]["code"], near_a1["method"]) == (A1, "snapped")
    assert 8.5 < near_a1["distance_m"] < 10.5
    near_a2 = factory.locate(LON0 + 1.04 * STEP - 0.0001, lat)
    assert (near_a2["grid"]["code"], near_a2["method"]) == (A2, "snapped")


def test_point_beyond_snap_distance_has_no_grid_but_regions(factory, tiled):
    # 0.002° north of the tiling (~220 m): inside no grid and no region boundary.
    answer = factory.locate(LON0 + 0.5 * STEP, LAT0 + STEP + 0.002)
    assert answer["grid"] is None
    assert answer["method"] == "none"
    assert answer["regions"] == []


def test_point_in_a_region_without_grids_gets_that_region(factory):
    factory.regions()
    factory.grid_version(
        collection(feature(A1, square(0, 0)), feature(A2, square(1, 0))), force=True
    )  # community B has no grids: gap error
    answer = factory.locate(LON0 + 3.5 * STEP, LAT0 + 0.5 * STEP)
    assert answer["grid"] is None and answer["method"] == "none"
    assert answer["regions"][0]["code"] == COMMUNITY_B


def test_snap_distance_is_configurable(settings, factory):
    factory.regions(with_boundaries=False)
    factory.grid_version(collection(feature(A1, square(0, 0))))
    strict = create_app(settings.__class__(**{**settings.__dict__, "routing_snap_meters": 5}))
    point = f"lon={LON0 + STEP + 0.0001!r}&lat={LAT0 + 0.5 * STEP!r}"  # ~9.5 m east of A1
    strict_client = Accounts(strict).client("admin")
    assert strict_client.get(f"/api/v1/locate?{point}").get_json()["method"] == "none"
    strict.extensions["gridapi"].engine.dispose()


def test_batch_answers_in_order_and_matches_single(factory, client, tiled):
    rng = random.Random(7)
    points = [
        [LON0 + rng.uniform(-0.005, 0.045), LAT0 + rng.uniform(-0.005, 0.015)] for _ in range(300)
    ]
    points += [[LON0 + STEP, LAT0 + 0.5 * STEP], [LON0 + 2 * STEP, LAT0 + STEP], [0.0, 0.0]]
    r = client.post("/api/v1/locate/batch", json={"points": points})
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert len(results) == len(points)
    for point, result in zip(points, results, strict=True):
        assert result == factory.locate(*point)


def test_batch_answers_points_outside_every_grid_as_single_lookups(factory, accounts):
    """A batch looked the regions of each point no grid answers for up on its own; they are
    now looked up for the whole batch at once. The answers must stay those of single
    lookups: in a community without grids, on its edges and corners (shared with the other
    community, or the township's outer edge), outside every region, far away, and mixed
    with points in grids, for callers of every scope."""
    factory.regions()
    factory.grid_version(
        collection(feature(A1, square(0, 0)), feature(A2, square(1, 0))), force=True
    )  # community B (cells 2..4) has no grids
    rng = random.Random(13)
    points = [
        [LON0 + rng.uniform(-0.005, 0.045), LAT0 + rng.uniform(-0.005, 0.015)] for _ in range(120)
    ]
    # Every vertex and edge midpoint of the lattice: B's edges, its corners, the township's.
    points += [[LON0 + i * STEP / 2, LAT0 + j * STEP / 2] for i in range(9) for j in range(3)]
    points += [[0.0, 0.0], [LON0 + 1.0, LAT0], [LON0 + 3.5 * STEP, LAT0 + 0.5 * STEP]]
    points += [[LON0 + 2 * STEP + 0.0003, LAT0 + 0.5 * STEP]]  # in B, ~28 m from A2: snaps
    callers = [
        accounts.client("admin"),
        accounts.client("worker", "grid_worker", grids=[A1]),
        accounts.client("office_b", "community_officer", scope_region=COMMUNITY_B),
    ]
    outcomes = set()
    for caller in callers:
        r = caller.post("/api/v1/locate/batch", json={"points": points})
        assert r.status_code == 200
        results = r.get_json()["results"]
        assert len(results) == len(points)
        for point, result in zip(points, results, strict=True):
            single = caller.get(f"/api/v1/locate?lon={point[0]!r}&lat={point[1]!r}")
            assert result == single.get_json(), point
            outcomes.add((result["method"], tuple(x["code"] for x in result["regions"][:1])))
    assert {
        ("none", (COMMUNITY_B,)),
        ("none", ()),
        ("inside", (COMMUNITY_A,)),
        ("boundary", (COMMUNITY_A,)),
        ("snapped", (COMMUNITY_A,)),
    } <= outcomes


def test_gcj02_and_bd09_are_converted_before_routing(factory, tiled, client):
    lon, lat = LON0 + 1.7 * STEP, LAT0 + 0.5 * STEP  # inside A2, 300 m from B1
    glon, glat = wgs84_to_gcj02(lon, lat)
    blon, blat = wgs84_to_bd09(lon, lat)
    for crs, (x, y) in (
        ("gcj02", (glon, glat)),
        ("bd09", (blon, blat)),
        ("cgcs2000", (lon, lat)),
        ("wgs84", (lon, lat)),
    ):
        answer = factory.locate(x, y, crs)
        assert answer["grid"]["code"] == A2, crs
        got_lon, got_lat = answer["point"]["coordinates"]
        assert abs(got_lon - lon) < 1e-7 and abs(got_lat - lat) < 1e-7, crs
    r = client.post("/api/v1/locate/batch", json={"crs": "gcj02", "points": [[glon, glat]]})
    assert r.get_json()["results"][0]["grid"]["code"] == A2
    # Treating the GCJ-02 point as WGS-84 lands ~500 m off, in another grid.
    assert factory.locate(glon, glat)["grid"]["code"] != A2


def test_activation_switches_routing_in_another_process_without_restart(settings, factory, client):
    factory.regions(with_boundaries=False)
    first = factory.grid_version(collection(feature(A1, square(0, 0))))
    other_app = create_app(settings)
    other_process = Accounts(other_app).client("admin2", "admin")  # own engine, index
    routing = other_app.extensions["gridapi"].routing
    point = f"lon={LON0 + 0.5 * STEP!r}&lat={LAT0 + 0.5 * STEP!r}"
    assert other_process.get(f"/api/v1/locate?{point}").get_json()["grid"]["code"] == A1
    second = factory.grid_version(collection(feature(A2, square(0, 0))))
    # Its first request after the change starts the rebuild, answered from the index at hand.
    assert other_process.get(f"/api/v1/locate?{point}").get_json()["grid"]["code"] == A1
    assert routing.wait_for_rebuild(60)
    answer = other_process.get(f"/api/v1/locate?{point}").get_json()
    assert answer["grid"]["code"] == A2
    assert answer["grid"]["version_id"] == second["id"] != first["id"]
    versions = {
        v["id"]: v["status"] for v in client.get("/api/v1/grid-versions").get_json()["items"]
    }
    assert versions == {first["id"]: "retired", second["id"]: "active"}
    # Re-activating the old version (rolling back) works the same way.
    client.post(f"/api/v1/grid-versions/{first['id']}/activate", json={})
    other_process.get(f"/api/v1/locate?{point}")
    assert routing.wait_for_rebuild(60)
    assert other_process.get(f"/api/v1/locate?{point}").get_json()["grid"]["code"] == A1
    other_app.extensions["gridapi"].engine.dispose()


def test_version_of_a_smaller_region_shadows_the_larger_one(factory, client):
    factory.regions(with_boundaries=False)
    township = factory.grid_version()  # region derived: the township (both communities)
    assert township["region_code"] == TOWNSHIP
    redraw = collection(feature(COMMUNITY_A + "003", square(0, 0, 2)))  # one grid for A
    community = factory.grid_version(redraw, region=COMMUNITY_A)
    assert (
        factory.locate(LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)["grid"]["code"] == COMMUNITY_A + "003"
    )
    b = factory.locate(LON0 + 2.5 * STEP, LAT0 + 0.5 * STEP)["grid"]
    assert (b["code"], b["version_id"]) == (B1, township["id"])
    statuses = {
        v["id"]: v["status"] for v in client.get("/api/v1/grid-versions").get_json()["items"]
    }
    assert statuses == {township["id"]: "active", community["id"]: "active"}


def test_index_agrees_with_database_covers_query(factory, client, engine, tiled):
    """The in-process index and the engine's own ST_Covers give the same grid everywhere."""
    rng = random.Random(11)
    points = [
        (LON0 + rng.uniform(-0.002, 0.042), LAT0 + rng.uniform(-0.002, 0.012)) for _ in range(400)
    ]
    # Every vertex and edge midpoint of the lattice, where ties happen.
    points += [(LON0 + i * STEP / 2, LAT0 + j * STEP / 2) for i in range(9) for j in range(3)]
    r = client.post("/api/v1/locate/batch", json={"points": [list(p) for p in points]})
    results = r.get_json()["results"]
    sql = text(
        "SELECT code FROM grids WHERE in_service AND "
        "ST_Covers(geom, ST_GeomFromText(:wkt, 4326)) "
        "ORDER BY CASE WHEN ST_Contains(geom, ST_GeomFromText(:wkt, 4326)) THEN 0 ELSE 1 END, "
        "code LIMIT 1"
    )
    checked = 0
    with engine.connect() as conn:
        for (lon, lat), result in zip(points, results, strict=True):
            expected = conn.execute(sql, {"wkt": f"POINT({lon!r} {lat!r})"}).scalar()
            if result["method"] in ("inside", "boundary"):
                assert result["grid"]["code"] == expected, (lon, lat)
                checked += 1
            else:
                assert expected is None, (lon, lat)
    assert checked > 250


def test_routing_answers_with_the_regions_of_the_new_day(factory, client, monkeypatch):
    """A community renamed from tomorrow answered with its old name after midnight, until some
    write moved the routing generation: the index kept the regions valid the day it was
    built. It is rebuilt when the county's date changes."""
    factory.regions()
    factory.grid_version()
    tomorrow = clock.today() + timedelta(days=1)
    r = client.patch(
        f"/api/v1/regions/{COMMUNITY_A}",
        json={"name": "新平江社区", "effective_from": tomorrow.isoformat()},
    )
    assert r.status_code == 200, r.get_json()
    point = (LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)
    assert factory.locate(*point)["regions"][0] == {
        "code": COMMUNITY_A,
        "name": "平江社区",
        "level": "village",
    }
    monkeypatch.setattr(clock, "today", lambda: tomorrow)
    # The first request of the new day starts the rebuild in the background and is answered
    # from the index at hand; the requests after it, from the new day's.
    factory.locate(*point)
    assert client.application.extensions["gridapi"].routing.wait_for_rebuild(60)
    answer = factory.locate(*point)
    assert answer["grid"]["code"] == A1
    assert answer["regions"][0] == {"code": COMMUNITY_A, "name": "新平江社区", "level": "village"}
    batch = client.post("/api/v1/locate/batch", json={"points": [list(point)]}).get_json()
    assert batch["results"][0]["regions"][0]["name"] == "新平江社区"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("routing_snap_meters", float("nan")),
        ("routing_snap_meters", float("inf")),
        ("routing_refresh_seconds", float("nan")),
        ("grid_tolerance_m2", float("inf")),
    ],
)
def test_settings_that_cannot_route_stop_start_up(settings, factory, name, value):
    """GRIDAPI_ROUTING_SNAP_METERS=nan (or inf) was taken, and then every point near no grid
    (a lookup, a report) answered 500 from the snap search; a tolerance of inf made every
    grid import a 500. Such a setting now stops the start, naming the variable."""
    from dataclasses import replace

    factory.regions(with_boundaries=False)
    factory.grid_version(collection(feature(A1, square(0, 0))))
    with pytest.raises(ValueError, match=f"GRIDAPI_{name.upper()}={value}"):
        replace(settings, **{name: value})
    # What a finite setting does meanwhile: a point in no grid is answered, not a 500.
    gap = f"lon={LON0 + STEP + 0.0001!r}&lat={LAT0 + 0.5 * STEP!r}"
    assert factory.client.get(f"/api/v1/locate?{gap}").get_json()["method"] == "snapped"


def _activate_elsewhere(app, version_id: int) -> None:  # type: ignore[no-untyped-def]
    """Activate a version as another server process would: the database changes, this
    process's index is not told (no ``invalidate``)."""
    from gridapi.scope import Scope
    from gridapi.services import grids as grid_svc

    with app.extensions["gridapi"].sessions.begin() as session:
        grid_svc.activate_version(session, version_id, force=True, scope=Scope.everything())


def test_requests_during_a_rebuild_are_answered_from_the_old_index(app, factory, client):
    """A new generation (a version activated by another process, or midnight) made the
    request that noticed it, and every request behind it, wait for the whole rebuild
    (≈ 3 s at 200,000 grids). The rebuild runs in the background: requests meanwhile are
    answered from the old index, and the new one replaces it whole once built."""
    import threading

    factory.regions()
    first = factory.grid_version()
    redrawn = collection(feature(A1, square(0, 0, 2)), feature(B1, square(2, 0, 2)))
    second = factory.grid_version(redrawn, activate=False)
    point = (LON0 + 1.5 * STEP, LAT0 + 0.5 * STEP)  # A2 of the first version, A1 of the second
    assert factory.locate(*point)["grid"]["code"] == A2
    routing = app.extensions["gridapi"].routing
    old = routing.snapshot()
    held, release = threading.Event(), threading.Event()
    built: list = []

    def hold(new) -> None:  # type: ignore[no-untyped-def]
        built.append(new)
        held.set()
        assert release.wait(60)

    routing.before_swap = hold
    try:
        _activate_elsewhere(app, second["id"])
        answer = factory.locate(*point)  # notices the new generation: starts the rebuild
        assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A2, first["id"])
        assert held.wait(60), "no rebuild started"
        # The new index is complete but not in service yet: requests still get the old one.
        assert factory.locate(*point)["grid"]["version_id"] == first["id"]
        batch = client.post("/api/v1/locate/batch", json={"points": [list(point)]}).get_json()
        assert batch["results"][0]["grid"]["code"] == A2
        assert routing.snapshot() is old and routing.rebuilding()
        assert len(built[0]) == 2 and built[0].locate(*point).grid >= 0
    finally:
        release.set()
        routing.before_swap = None
    assert routing.wait_for_rebuild(60)
    assert routing.snapshot() is built[0]  # swapped whole: the snapshot built, no other
    answer = factory.locate(*point)
    assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A1, second["id"])


def test_the_process_that_activates_a_version_routes_with_it_at_once(app, factory):
    """The activating request waits for the rebuild (only it): the next request of the same
    process already routes with the new version, even with a rebuild held in the background."""
    factory.regions()
    factory.grid_version()
    redrawn = collection(feature(A1, square(0, 0, 2)), feature(B1, square(2, 0, 2)))
    second = factory.grid_version(redrawn, force=True)
    answer = factory.locate(LON0 + 1.5 * STEP, LAT0 + 0.5 * STEP)
    assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A1, second["id"])
    assert not app.extensions["gridapi"].routing.rebuilding()
