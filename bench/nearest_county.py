"""Nearest-county benchmark: where a city's report outside every grid is taken in.

A report a city or province account takes in outside every grid and region boundary goes to
the county under it nearest the point (``IndexSnapshot.nearest_county``). This measures one
call on a synthetic grid set (``bench/synthetic.py``, in memory, no database) two ways:

- *every grid*: the distance to every grid of the city's counties, as before (O(grids));
- *tree*: the index's tree of the city's grids, searched near the point (now).

Points are drawn over the set's extent and a margin around it; the answers of both must be
the same county for every point. Prints a Markdown table; never asserts timings.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import shapely

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synthetic  # noqa: E402

from gridapi.geo.geodesy import metres_per_degree  # noqa: E402
from gridapi.services.routing import IndexSnapshot  # noqa: E402


def snapshot_of(gs: synthetic.GridSet) -> tuple[IndexSnapshot, float]:
    """Return the routing snapshot of the set (regions without boundaries) and its build time."""
    rows = [
        (i, code, name, gtype, code[:12], 1, shapely.to_wkb(geom))
        for i, (code, name, gtype, geom) in enumerate(
            zip(gs.codes, gs.names, gs.types, gs.geoms, strict=True)
        )
    ]
    regions = {
        r["code"]: {
            "level": r["level"],
            "parent_code": r["parent_code"],
            "api": {"code": r["code"], "name": r["name"], "level": r["level"]},
        }
        for r in gs.regions
    }
    started = time.perf_counter()
    snap = IndexSnapshot(1, rows, regions, [], snap_meters=50.0)
    return snap, time.perf_counter() - started


def by_every_grid(snap: IndexSnapshot, lon: float, lat: float, code: str) -> str | None:
    """The county of the grid under ``code`` nearest on the ground, measured to every grid
    of the city's counties (the implementation before the tree)."""
    prefix = code[:4] if code[2:4] != "00" else code[:2]
    known = {c for c, r in snap.regions.items() if r["level"] == "county" and c.startswith(prefix)}
    if not known:
        return None
    under = np.array(
        [i for i, g in enumerate(snap.grids) if g["community_code"][:6].ljust(12, "0") in known],
        dtype=int,
    )
    if not under.size:
        return min(known)
    kx, ky = metres_per_degree(lat)
    planar = shapely.transform(
        snap.geoms[under], lambda c: np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky])
    )
    nearest = int(under[int(np.argmin(shapely.distance(planar, shapely.points(0.0, 0.0))))])
    return snap.grids[nearest]["community_code"][:6].ljust(12, "0")


def per_call_us(call, points) -> tuple[list, float, float]:  # type: ignore[no-untyped-def]
    """Return the answers and the median and 99th-percentile time of one call, in µs."""
    answers, times = [], []
    for lon, lat in points:
        started = time.perf_counter_ns()
        answers.append(call(lon, lat))
        times.append(time.perf_counter_ns() - started)
    ns = np.array(times, dtype=float)
    return answers, float(np.percentile(ns, 50)) / 1e3, float(np.percentile(ns, 99)) / 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", type=int, default=20_000)
    parser.add_argument("--points", type=int, default=500)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    gs = synthetic.build(args.grids, args.seed, boundaries=False)
    snap, build_s = snapshot_of(gs)
    # The city with the most grids: the worst case of measuring every one of them.
    cities = [c[:4] for c in gs.codes]
    city = max(set(cities), key=cities.count).ljust(12, "0")
    rng = np.random.default_rng(args.seed)
    minx, miny, maxx, maxy = gs.bounds
    pad = 0.2 * max(maxx - minx, maxy - miny)
    points = list(
        zip(
            rng.uniform(minx - pad, maxx + pad, args.points).tolist(),
            rng.uniform(miny - pad, maxy + pad, args.points).tolist(),
            strict=True,
        )
    )
    slow, slow_p50, slow_p99 = per_call_us(lambda x, y: by_every_grid(snap, x, y, city), points)
    fast, fast_p50, fast_p99 = per_call_us(lambda x, y: snap.nearest_county(x, y, city), points)
    agree = sum(a == b for a, b in zip(slow, fast, strict=True))
    under = sum(c == city[:4] for c in cities)
    print(f"# Nearest county: {len(snap):,} grids, city {city} with {under:,} of them\n")
    print(f"Snapshot build (all trees included): {build_s:.2f} s; {args.points} points.\n")
    print("| per call | p50 | p99 |")
    print("|---|---:|---:|")
    print(f"| every grid (before) | {slow_p50:,.0f} µs | {slow_p99:,.0f} µs |")
    print(f"| tree (now) | {fast_p50:,.0f} µs | {fast_p99:,.0f} µs |")
    print(f"\nSame county for {agree} of {len(points)} points.")
    return 0 if agree == len(points) else 1


if __name__ == "__main__":
    raise SystemExit(main())
