"""The in-process index: single lookups (cell lattice) agree with batches (STRtree)."""

from __future__ import annotations

import random

import numpy as np
import orjson
import shapely
from shapely.geometry import shape

from gridapi.codes import parent_candidates, region_level
from gridapi.demo import DemoCounty, build_demo_county
from gridapi.scope import Scope
from gridapi.services.routing import IndexSnapshot


def _grid_rows(county: DemoCounty, left_out: tuple[str, ...] = ()) -> list[tuple]:
    """The index's rows of the county's grids, but those whose code starts with one of
    ``left_out`` (grids not in service)."""
    features = sorted(county.grids["features"], key=lambda f: f["properties"]["code"])
    return [
        (
            i,
            f["properties"]["code"],
            f["properties"]["name"],
            "basic",
            f["properties"]["code"][:12],
            1,
            shapely.to_wkb(shape(f["geometry"])),
        )
        for i, f in enumerate(features)
        if not (left_out and f["properties"]["code"].startswith(left_out))
    ]


def _snapshot() -> IndexSnapshot:
    county = build_demo_county(
        seed=7, townships=3, communities_per_township=4, grids_per_community=6
    )
    rows = _grid_rows(county)
    regions = {
        r["code"]: {
            "level": r["level"],
            "parent_code": None,
            "api": {"code": r["code"], "name": r["name"], "level": r["level"]},
        }
        for r in county.regions
    }
    return IndexSnapshot(1, rows, regions, [], snap_meters=50)


def test_single_lookups_match_batch_lookups_everywhere():
    snap = _snapshot()
    minx, miny, maxx, maxy = shapely.total_bounds(snap.geoms)
    rng = random.Random(3)
    points = [
        (rng.uniform(minx - 0.01, maxx + 0.01), rng.uniform(miny - 0.01, maxy + 0.01))
        for _ in range(4000)
    ]
    # Vertices are where ties and cell edges meet.
    for geom in snap.geoms[:40]:
        points += [tuple(c) for c in shapely.get_coordinates(geom)[:20]]
    lons = np.array([p[0] for p in points])
    lats = np.array([p[1] for p in points])
    grid, method, dist = snap.locate_many(lons, lats)
    names = ("inside", "boundary", "snapped", "none")
    for i, (lon, lat) in enumerate(points):
        match = snap.locate(lon, lat)
        assert (match.grid, match.method) == (int(grid[i]), names[method[i]]), (lon, lat)
    assert {"inside", "boundary", "none"} <= {names[m] for m in method}


def test_snapping_measures_the_distance_to_the_nearest_point_on_the_ground():
    """The nearest point was found in degrees, where a degree of longitude is shorter than
    one of latitude: next to a slanted edge the distance came out up to 1.2 % long, and a
    point 49.4 m from a grid was refused at a 50 m snap distance."""
    from geographiclib.geodesic import Geodesic

    # A grid whose east edge runs at 30° from north, at 31.3°N.
    lat0, lon0 = 31.3, 120.6
    geod = Geodesic.WGS84
    top = geod.Direct(lat0, lon0, 30.0, 2000.0)
    ring = [
        (lon0, lat0),
        (top["lon2"], top["lat2"]),
        (lon0 - 0.03, top["lat2"]),
        (lon0 - 0.03, lat0),
    ]
    rows = [
        (
            0,
            "320508001001001",
            "斜边网格",
            "basic",
            "320508001001",
            1,
            shapely.to_wkb(shapely.Polygon(ring)),
        )
    ]
    snap = IndexSnapshot(1, rows, {}, [], snap_meters=50)
    middle = geod.Direct(lat0, lon0, 30.0, 1000.0)  # on the edge
    for metres in (10.0, 30.0, 49.4):
        out = geod.Direct(middle["lat2"], middle["lon2"], 120.0, metres)  # square off the edge
        match = snap.locate(out["lon2"], out["lat2"])
        assert match.method == "snapped", metres
        assert abs(match.distance_m - metres) < 0.05, (metres, match.distance_m)
    far = geod.Direct(middle["lat2"], middle["lon2"], 120.0, 50.5)
    assert snap.locate(far["lon2"], far["lat2"]).method == "none"


def test_a_batch_snaps_the_points_near_a_grid_and_no_others():
    """A batch looked each point outside every grid up on its own for snapping (≈ 0.1 ms a
    point: 10,000 fixes at 0°, 0° took a second). The points with no grid within the snap
    distance are now set aside in one query: the answers are the single lookups'."""
    snap = _snapshot()
    minx, miny, maxx, maxy = shapely.total_bounds(snap.geoms)
    rng = random.Random(5)
    # Around the covered area, where every outcome occurs, and far from it.
    points = [
        (rng.uniform(minx - 0.002, maxx + 0.002), rng.uniform(miny - 0.002, maxy + 0.002))
        for _ in range(3000)
    ]
    points += [(0.0, 0.0)] * 50 + [(maxx + 1.0, maxy + 1.0)] * 50
    lons = np.array([p[0] for p in points])
    lats = np.array([p[1] for p in points])
    grid, method, dist = snap.locate_many(lons, lats)
    names = ("inside", "boundary", "snapped", "none")
    for i, (lon, lat) in enumerate(points):
        match = snap.locate(lon, lat)
        assert (match.grid, match.method) == (int(grid[i]), names[method[i]]), (lon, lat)
        if match.method == "snapped":
            assert match.distance_m == dist[i]
    assert {names[m] for m in method} == {"inside", "snapped", "none"} | (
        {"boundary"} if 1 in method else set()
    )
    assert list(method[-100:]) == [3] * 100


def _county_with_gaps() -> tuple[IndexSnapshot, str]:
    """The demo county with its region boundaries, where the grids of one township, and of
    one community elsewhere, are not in service, and that community has no known boundary
    either. Returns the index and the code of the township without grids."""
    county = build_demo_county(
        seed=7, townships=3, communities_per_township=4, grids_per_community=6
    )
    codes = {r["code"] for r in county.regions}
    townships = sorted(c for c in codes if region_level(c) == "township")
    gridless_township = townships[1]
    gridless_community = sorted(c for c in codes if c.startswith(townships[0][:9]))[-1]
    rows = _grid_rows(county, (gridless_township[:9], gridless_community))
    regions = {
        r["code"]: {
            "level": r["level"],
            "parent_code": next((c for c in parent_candidates(r["code"]) if c in codes), None),
            "api": {"code": r["code"], "name": r["name"], "level": r["level"]},
        }
        for r in county.regions
    }
    shapes = [
        (r["code"], r["boundary"])
        for r in county.regions
        if r["boundary"] is not None and r["code"] != gridless_community
    ]
    return IndexSnapshot(1, rows, regions, shapes, snap_meters=50), gridless_township


def _answers_one_by_one(snap: IndexSnapshot, points: list, scope: Scope) -> bytes:
    parts = [snap.encode_answer(snap.locate(lon, lat), lon, lat, scope) for lon, lat in points]
    return b'{"results":[' + b",".join(parts) + b"]}"


def test_batch_answers_are_the_single_answers_outside_grids_and_on_region_edges():
    """A batch looked up the regions of each point no grid answers for on its own; it now
    looks them up for all such points at once. Every answer (grid, regions, method,
    distance) must be the one the point gets alone: in a township without grids, in a
    community without grids or boundary, outside every region, on region edges and
    vertices, far away, and mixed with points inside grids, for every kind of caller."""
    snap, gridless = _county_with_gaps()
    township = snap.region_geoms[snap.region_codes.index(gridless)]
    minx, miny, maxx, maxy = shapely.total_bounds(snap.region_geoms)
    rng = random.Random(11)
    points = [
        (rng.uniform(minx - 0.02, maxx + 0.02), rng.uniform(miny - 0.02, maxy + 0.02))
        for _ in range(3000)
    ]
    tminx, tminy, tmaxx, tmaxy = township.bounds
    while len(points) < 4000:
        x, y = rng.uniform(tminx, tmaxx), rng.uniform(tminy, tmaxy)
        if shapely.contains_xy(township, x, y):
            points.append((x, y))
    # Vertices and edge midpoints of every region boundary: where a point is covered by two
    # regions of one level (the lowest code wins), or by a region's edge only.
    for geom in snap.region_geoms:
        ring = shapely.get_coordinates(geom)
        points += [tuple(c) for c in ring[::7]]
        points += [tuple(c) for c in (ring[:-1:7] + ring[1::7]) / 2]
    points += [(0.0, 0.0), (maxx + 1.0, maxy), (minx - 0.5, miny - 0.5)] * 3
    points = [(float(x), float(y)) for x, y in points]
    rng.shuffle(points)
    grids = [g["code"] for g in snap.grids]
    scopes = [
        Scope.everything(),
        Scope.of_region(gridless),
        Scope.of_region(grids[0][:9] + "000"),
        Scope.of_grids(grids[:5]),
        Scope(),  # sees nothing
    ]
    lons = np.array([p[0] for p in points])
    lats = np.array([p[1] for p in points])
    for scope in scopes:
        batch = snap.encode_answers(lons, lats, scope)
        alone = _answers_one_by_one(snap, points, scope)
        if batch != alone:
            for point, got, expected in zip(
                points, orjson.loads(batch)["results"], orjson.loads(alone)["results"], strict=True
            ):
                assert got == expected, (scope, point)
        assert batch == alone, scope
    answers = orjson.loads(snap.encode_answers(lons, lats, Scope.everything()))["results"]
    outcomes = {(a["method"], a["regions"][0]["level"] if a["regions"] else None) for a in answers}
    assert {
        ("inside", "village"),
        ("boundary", "village"),
        ("snapped", "village"),
        ("none", "village"),  # the township without grids
        ("none", "township"),  # the community without grids or boundary
        ("none", None),  # outside every region
    } <= outcomes


def _city_of_counties(seed: int) -> IndexSnapshot:
    """Grids of nine counties of 苏州 scattered over one degree, slanted and interleaved, and
    a second city (无锡) whose counties have no grid in service."""
    rng = random.Random(seed)
    regions = {}

    def region(code: str, level: str, parent: str | None) -> None:
        regions[code] = {
            "level": level,
            "parent_code": parent,
            "api": {"code": code, "name": code, "level": level},
        }

    region("320000000000", "province", None)
    region("320500000000", "city", "320000000000")
    region("320200000000", "city", "320000000000")
    region("320205000000", "county", "320200000000")
    region("320206000000", "county", "320200000000")
    rows = []
    for county in range(1, 10):
        code = f"3205{county:02d}000000"
        region(code, "county", "320500000000")
        for grid in range(60):
            x, y = 120.0 + rng.random(), 31.0 + rng.random()
            w, h = rng.uniform(0.002, 0.02), rng.uniform(0.002, 0.02)
            skew = rng.uniform(-0.01, 0.01)  # slanted edges: degrees are not ground
            ring = [(x, y), (x + w, y + skew), (x + w, y + h + skew), (x, y + h), (x, y)]
            rows.append((f"3205{county:02d}001001{grid:03d}", shapely.Polygon(ring)))
    # Two grids of two counties equally far from a point between them: the lower code wins.
    rows.append(("320509001001900", shapely.box(121.5, 31.5, 121.6, 31.6)))
    rows.append(("320508001001900", shapely.box(121.7, 31.5, 121.8, 31.6)))
    rows.sort()
    index_rows = [
        (i, code, code, "basic", code[:12], 1, shapely.to_wkb(geom))
        for i, (code, geom) in enumerate(rows)
    ]
    return IndexSnapshot(1, index_rows, regions, [], snap_meters=50)


def _nearest_county_by_every_grid(snap: IndexSnapshot, lon: float, lat: float, code: str):
    """The rule, measured against every grid under ``code``: the county of the grid nearest
    on the ground (a local plane of metres around the point), ties to the lowest code."""
    from gridapi.geo.geodesy import metres_per_degree

    prefix = code[:4] if code[2:4] != "00" else code[:2]
    counties = sorted(
        c for c, r in snap.regions.items() if r["level"] == "county" and c.startswith(prefix)
    )
    under = [i for i, g in enumerate(snap.grids) if g["community_code"][:6] + "000000" in counties]
    if not under:
        return counties[0] if counties else None
    kx, ky = metres_per_degree(lat)
    planar = shapely.transform(
        snap.geoms[under],
        lambda c: np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky]),
    )
    distances = shapely.distance(planar, shapely.Point(0, 0))
    return snap.grids[under[int(np.argmin(distances))]]["community_code"][:6] + "000000"


def test_the_nearest_county_from_the_tree_is_that_of_the_nearest_grid_of_all():
    """A city's report outside every grid measured its distance to every grid of the city
    (O(grids) a report); the search with a tree per city and province picks the same county
    as that rule for every point: near, far, between, inside, and at an exact tie."""
    snap = _city_of_counties(11)
    rng = random.Random(5)
    points = [(rng.uniform(119.5, 121.5), rng.uniform(30.5, 32.5)) for _ in range(400)]
    points += [(121.65, 31.55), (121.65, 31.7), (100.0, 10.0), (120.5, 31.5)]
    for code in ("320500000000", "320000000000"):
        for lon, lat in points:
            expected = _nearest_county_by_every_grid(snap, lon, lat, code)
            assert snap.nearest_county(lon, lat, code) == expected, (code, lon, lat)
    assert snap.nearest_county(121.65, 31.55, "320500000000") == "320508000000"
    # A city whose counties have no grid: its lowest county; one without counties: None.
    assert snap.nearest_county(120.5, 31.5, "320200000000") == "320205000000"
    assert snap.nearest_county(120.5, 31.5, "320300000000") is None
