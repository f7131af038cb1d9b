"""The in-process index: single lookups (cell lattice) agree with batches (STRtree)."""

from __future__ import annotations

import random

import numpy as np
import shapely
from shapely.geometry import shape

from gridapi.demo import build_demo_county
from gridapi.services.routing import IndexSnapshot


def _snapshot() -> IndexSnapshot:
    county = build_demo_county(
        seed=7, townships=3, communities_per_township=4, grids_per_community=6
    )
    features = sorted(county.grids["features"], key=lambda f: f["properties"]["code"])
    rows = [
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
    ]
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
