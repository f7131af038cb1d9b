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
