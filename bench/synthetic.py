"""Synthetic grid sets (warped Voronoi tilings with a real-looking code tree) and fast loading."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
import shapely
from sqlalchemy import insert, text, update
from sqlalchemy.engine import Engine

from gridapi import migrations
from gridapi.db import make_engine
from gridapi.geo.geodesy import areas_m2
from gridapi.geo.shapes import to_db
from gridapi.models import Grid, GridVersion, IndexGeneration, Region

# The largest set (FULL_SIZE grids) fills this rectangle; smaller sets use a centred
# sub-rectangle, so the grid density (about 4 km² per grid on average) is the same at all sizes.
FULL_BOUNDS = (113.0, 22.0, 121.0, 32.0)
FULL_SIZE = 200_000
GRIDS_PER_COMMUNITY = 10
COMMUNITIES_PER_TOWNSHIP = 14
TOWNSHIPS_PER_COUNTY = 14
GRIDS_PER_CITY_CORE = 8_000
# Each edge of a Voronoi cell is halved this many times before warping: about 6 × 2**3 = 48
# vertices per grid, so edges are bent lines rather than straight Voronoi edges.
DENSIFY_LEVELS = 3
DEDICATED_SHARE = 0.05

PROVINCES = {"32": "江苏省", "44": "广东省"}
# Real prefecture-level codes and names; 4419 (东莞) and 4420 (中山) have no counties, so they
# are left out to keep every township under a county.
CITIES = {
    "32": [
        ("3201", "南京市"),
        ("3202", "无锡市"),
        ("3203", "徐州市"),
        ("3204", "常州市"),
        ("3205", "苏州市"),
        ("3206", "南通市"),
        ("3207", "连云港市"),
        ("3208", "淮安市"),
        ("3209", "盐城市"),
        ("3210", "扬州市"),
        ("3211", "镇江市"),
        ("3212", "泰州市"),
        ("3213", "宿迁市"),
    ],
    "44": [
        ("4401", "广州市"),
        ("4402", "韶关市"),
        ("4403", "深圳市"),
        ("4404", "珠海市"),
        ("4405", "汕头市"),
        ("4406", "佛山市"),
        ("4407", "江门市"),
        ("4408", "湛江市"),
        ("4409", "茂名市"),
        ("4412", "肇庆市"),
        ("4413", "惠州市"),
        ("4414", "梅州市"),
        ("4415", "汕尾市"),
        ("4416", "河源市"),
        ("4417", "阳江市"),
        ("4418", "清远市"),
        ("4451", "潮州市"),
        ("4452", "揭阳市"),
        ("4453", "云浮市"),
    ],
}
_FIRST = "平沧金双虎苏吴葑枫横浒通望胥盘娄齐桃阊木光甪浦郭越斜石长清凤龙留彩新东南西北桂梅竹兰"
_SECOND = "江浪门塔丘锦南洋桥塘泾溪湖浦港山庄湾里渎墅泽荡坞亭阳滨河渚园苑坊巷城林府"
_DEDICATED = ("小学", "农贸市场", "工业园", "医院", "中学")


@dataclass
class GridSet:
    """A synthetic grid set: grids sorted by code, and the region rows they need."""

    seed: int
    bounds: tuple[float, float, float, float]
    codes: list[str]
    names: list[str]
    types: list[str]
    geoms: np.ndarray  # MultiPolygon per grid, same order as codes
    regions: list[dict[str, Any]]  # code, name, level, parent_code, boundary (or None)
    vertices: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def provinces(self) -> list[str]:
        return sorted({c[:2] for c in self.codes})

    def level_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.regions:
            out[r["level"]] = out.get(r["level"], 0) + 1
        return out


def extent(n: int) -> tuple[float, float, float, float]:
    """Return the rectangle a set of ``n`` grids covers (constant grid density)."""
    minx, miny, maxx, maxy = FULL_BOUNDS
    f = math.sqrt(min(1.0, n / FULL_SIZE))
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    hw, hh = (maxx - minx) / 2 * f, (maxy - miny) / 2 * f
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def _seeds(
    n: int, bounds: Sequence[float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return n seed points whose density peaks at city cores, and the core centres."""
    minx, miny, maxx, maxy = bounds
    area = (maxx - minx) * (maxy - miny)
    m = max(1, round(n / GRIDS_PER_CITY_CORE))
    centres = np.column_stack([rng.uniform(minx, maxx, m), rng.uniform(miny, maxy, m)])
    sigma = rng.uniform(0.06, 0.14, m) * math.sqrt(area / m)
    peak = rng.uniform(8.0, 25.0, m)

    def density(p: np.ndarray) -> np.ndarray:
        d2 = ((p[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        return 1.0 + (peak * np.exp(-d2 / (2 * sigma**2))).sum(axis=1)

    top = float(density(centres).max())
    out: list[np.ndarray] = []
    have = 0
    while have < n:
        cand = np.column_stack([rng.uniform(minx, maxx, 500_000), rng.uniform(miny, maxy, 500_000)])
        keep = cand[rng.uniform(0.0, top, len(cand)) < density(cand)]
        out.append(keep)
        have += len(keep)
    return np.concatenate(out)[:n], centres


def _densify(polys: np.ndarray, levels: int) -> np.ndarray:
    """Halve every edge ``levels`` times; midpoints are symmetric, so shared edges stay shared."""
    coords, idx = shapely.get_coordinates(shapely.get_exterior_ring(polys), return_index=True)
    for _ in range(levels):
        same = idx[:-1] == idx[1:]
        mids = (coords[:-1] + coords[1:])[same] / 2
        pos = np.arange(len(coords)) + np.concatenate([[0], np.cumsum(same)])
        out = np.empty((len(coords) + len(mids), 2))
        out[pos] = coords
        out[(pos[:-1] + 1)[same]] = mids
        new_idx = np.empty(len(out), dtype=idx.dtype)
        new_idx[pos] = idx
        new_idx[(pos[:-1] + 1)[same]] = idx[:-1][same]
        coords, idx = out, new_idx
    return shapely.polygons(shapely.linearrings(coords, indices=idx))


def _warp(
    polys: np.ndarray, bounds: Sequence[float], spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Bend edges with a smooth displacement field that is zero on the outer rectangle.

    The field's Lipschitz constant stays well below 1, so the map is one-to-one and the cells
    still tile the rectangle without gaps or overlaps.
    """
    minx, miny, maxx, maxy = bounds
    waves = []
    for axis in range(2):
        for _ in range(4):
            wavelength = spacing * rng.uniform(0.6, 4.0)
            k = 2 * math.pi / wavelength
            angle = rng.uniform(0, 2 * math.pi)
            waves.append(
                (
                    axis,
                    0.08 / k,
                    k * math.cos(angle),
                    k * math.sin(angle),
                    rng.uniform(0, 2 * math.pi),
                )
            )
    taper_w = 4.0 * spacing

    def field(c: np.ndarray) -> np.ndarray:
        x, y = c[:, 0], c[:, 1]
        edge = np.minimum.reduce([x - minx, maxx - x, y - miny, maxy - y])
        t = np.clip(edge / taper_w, 0.0, 1.0)
        taper = t * t * (3 - 2 * t)
        out = c.copy()
        for axis, amp, kx, ky, phase in waves:
            out[:, axis] += taper * amp * np.sin(kx * x + ky * y + phase)
        return out

    return shapely.transform(polys, field)


def _nearest(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Return, for every point, the index of the nearest target point."""
    tree = shapely.STRtree(shapely.points(targets))
    inp, tre = tree.query_nearest(shapely.points(points), all_matches=False)
    out = np.empty(len(points), dtype=np.int64)
    out[inp] = tre
    return out


def _reading_order(members: np.ndarray, xy: np.ndarray, band: float) -> np.ndarray:
    """Return ``members`` sorted north to south in bands, then west to east."""
    pts = xy[members]
    return members[np.lexsort((pts[:, 0], -np.floor(pts[:, 1] / band)))]


def _groups(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Return label → member indices (ascending) for every label present."""
    order = np.argsort(labels, kind="stable")
    uniq, starts = np.unique(labels[order], return_index=True)
    return dict(zip(uniq.tolist(), np.split(order, starts[1:]), strict=True))


def _two(rng: random.Random) -> str:
    return rng.choice(_FIRST) + rng.choice(_SECOND)


def _multi(geom: shapely.Geometry) -> shapely.Geometry:
    parts = [p for p in shapely.get_parts(geom) if p.geom_type == "Polygon"]
    return shapely.MultiPolygon(parts)


def build(
    n: int, seed: int = 2024, *, boundaries: bool = True, densify_levels: int = DENSIFY_LEVELS
) -> GridSet:
    """Build a deterministic set of ``n`` grids; the same (n, seed) gives the same set."""
    if n < 1:
        raise ValueError("n must be at least 1")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    names_rng = random.Random(seed)
    bounds = extent(n)
    minx, miny, maxx, maxy = bounds
    spacing = math.sqrt((maxx - minx) * (maxy - miny) / n)

    # Geometry: Voronoi cells of the seeds, clipped to the rectangle, densified and warped.
    seeds, centres = _seeds(n, bounds, rng)
    box = shapely.box(*bounds)
    cells = shapely.get_parts(
        shapely.voronoi_polygons(shapely.multipoints(seeds), extend_to=box, ordered=True)
    )
    cells = shapely.clip_by_rect(cells, *bounds)
    cells = _warp(_densify(cells, densify_levels), bounds, spacing, rng)
    timings["geometry"] = time.perf_counter() - started

    # Tree: community, township and county seeds are subsets of the grid seeds (so they follow
    # the density); every unit takes the children nearest to its seed.
    n_comm = max(1, round(n / GRIDS_PER_COMMUNITY))
    comm_seed = np.sort(rng.choice(n, n_comm, replace=False))
    grid_comm = _nearest(seeds, seeds[comm_seed])
    n_town = max(1, round(n_comm / COMMUNITIES_PER_TOWNSHIP))
    town_seed = np.sort(rng.choice(n_comm, n_town, replace=False))
    comm_town = _nearest(seeds[comm_seed], seeds[comm_seed][town_seed])
    n_county = max(1, round(n_town / TOWNSHIPS_PER_COUNTY))
    county_seed = np.sort(rng.choice(n_town, n_county, replace=False))
    town_xy = seeds[comm_seed][town_seed]
    town_county = _nearest(town_xy, town_xy[county_seed])
    county_xy = town_xy[county_seed]
    county_city = _nearest(county_xy, centres)
    comm_xy = seeds[comm_seed]

    # Codes in reading order within each parent; provinces split north (32) / south (44).
    mid_lat = (FULL_BOUNDS[1] + FULL_BOUNDS[3]) / 2
    regions: list[dict[str, Any]] = []
    grid_codes = np.empty(n, dtype=object)
    comm_code = np.empty(n_comm, dtype=object)
    town_code = np.empty(n_town, dtype=object)
    county_code = np.empty(n_county, dtype=object)
    cities_of = _groups(county_city)
    by_province: dict[str, list[int]] = {}
    for city in cities_of:
        by_province.setdefault("32" if centres[city, 1] >= mid_lat else "44", []).append(city)
    counties_of = _groups(town_county)
    towns_of = _groups(comm_town)
    grids_of = _groups(grid_comm)
    band = spacing * 3
    for prov in sorted(by_province):
        prov_code = prov.ljust(12, "0")
        regions.append(
            {"code": prov_code, "name": PROVINCES[prov], "level": "province", "parent_code": None}
        )
        cities = _reading_order(np.array(by_province[prov]), centres, band * 30)
        real = CITIES[prov]
        for ci, city in enumerate(cities.tolist()):
            c4, c_name = real[ci] if ci < len(real) else (f"{prov}{60 + ci:02d}", f"第{ci}市")
            if int(c4[2:]) >= 90:
                raise ValueError("too many cities for one province")
            city_code = c4.ljust(12, "0")
            regions.append(
                {"code": city_code, "name": c_name, "level": "city", "parent_code": prov_code}
            )
            counties = _reading_order(cities_of[city], county_xy, band * 12)
            if len(counties) > 98:
                raise ValueError("too many counties for one city")
            for ki, county in enumerate(counties.tolist()):
                k6 = f"{c4}{ki + 2:02d}"
                county_code[county] = k6
                regions.append(
                    {
                        "code": k6.ljust(12, "0"),
                        "name": _two(names_rng) + names_rng.choice("区县"),
                        "level": "county",
                        "parent_code": city_code,
                    }
                )
                towns = _reading_order(counties_of[county], town_xy, band * 4)
                streets = math.ceil(len(towns) * 0.4)
                if streets > 99 or len(towns) - streets > 100:
                    raise ValueError("too many townships for one county")
                for ti, town in enumerate(towns.tolist()):
                    is_street = ti < streets
                    t3 = ti + 1 if is_street else 100 + ti - streets
                    t9 = f"{k6}{t3:03d}"
                    town_code[town] = t9
                    regions.append(
                        {
                            "code": t9 + "000",
                            "name": _two(names_rng) + ("街道" if is_street else "镇"),
                            "level": "township",
                            "parent_code": k6.ljust(12, "0"),
                        }
                    )
                    comms = _reading_order(towns_of[town], comm_xy, band * 1.5)
                    if len(comms) > 999:
                        raise ValueError("too many communities for one township")
                    for vi, comm in enumerate(comms.tolist()):
                        v12 = f"{t9}{vi + 1:03d}"
                        comm_code[comm] = v12
                        regions.append(
                            {
                                "code": v12,
                                "name": _two(names_rng) + ("社区" if is_street else "村"),
                                "level": "village",
                                "parent_code": t9 + "000",
                            }
                        )
                        members = _reading_order(grids_of[comm], seeds, spacing * 0.7)
                        if len(members) > 999:
                            raise ValueError("too many grids for one community")
                        for si, g in enumerate(members.tolist()):
                            grid_codes[g] = f"{v12}{si + 1:03d}"
    name_of = {r["code"]: r["name"] for r in regions}
    order = np.argsort(grid_codes.astype(str), kind="stable")
    codes = [str(c) for c in grid_codes[order]]
    names, types = [], []
    for code in codes:
        if names_rng.random() < DEDICATED_SHARE:
            names.append(name_of[code[:12]] + names_rng.choice(_DEDICATED) + "专属网格")
            types.append("dedicated")
        else:
            names.append(f"{name_of[code[:12]]}第{int(code[12:])}网格")
            types.append("basic")
    polys = cells[order]
    geoms = shapely.multipolygons(polys, indices=np.arange(n))
    timings["tree"] = time.perf_counter() - started - timings["geometry"]

    # Boundaries of villages, townships and counties: exact unions of the cells they hold.
    if boundaries:
        t0 = time.perf_counter()
        by_code = {r["code"]: r for r in regions}
        for r in regions:
            r["boundary"] = None
        comm_of_grid = np.array([c[:12] for c in codes])
        village_geom: dict[str, Any] = {}
        for code, members in _groups_by_str(comm_of_grid).items():
            village_geom[code] = shapely.coverage_union_all(polys[members])
        _set_boundaries(by_code, village_geom)
        town_geom = _union_children(village_geom, 9)
        _set_boundaries(by_code, town_geom)
        _set_boundaries(by_code, _union_children(town_geom, 6))
        timings["boundaries"] = time.perf_counter() - t0
    else:
        for r in regions:
            r["boundary"] = None
    regions.sort(key=lambda r: r["code"])
    return GridSet(
        seed=seed,
        bounds=bounds,
        codes=codes,
        names=names,
        types=types,
        geoms=geoms,
        regions=regions,
        vertices=int(shapely.get_num_coordinates(geoms).sum()),
        timings=timings,
    )


def _groups_by_str(keys: np.ndarray) -> dict[str, np.ndarray]:
    uniq, inverse = np.unique(keys, return_inverse=True)
    return {str(uniq[i]): m for i, m in _groups(inverse).items()}


def _union_children(child_geom: dict[str, Any], digits: int) -> dict[str, Any]:
    keys = np.array([code[:digits] for code in child_geom])
    geoms = np.array(list(child_geom.values()), dtype=object)
    return {
        prefix.ljust(12, "0"): shapely.coverage_union_all(geoms[m])
        for prefix, m in _groups_by_str(keys).items()
    }


def _set_boundaries(by_code: dict[str, dict[str, Any]], geoms: dict[str, Any]) -> None:
    for code, geom in geoms.items():
        by_code[code]["boundary"] = _multi(geom)


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


def load(engine: Engine, gs: GridSet) -> dict[str, float]:
    """Migrate, then insert the regions and the grids as active versions; return timings.

    One active version per province (a version's region must contain its grids), every grid in
    service, and the 'grids' generation bumped so running servers rebuild their index.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    migrations.upgrade(engine)
    timings["migrate"] = time.perf_counter() - t0
    now = datetime.now(UTC)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        version_of: dict[str, int] = {}
        for prov in gs.provinces:
            count = sum(1 for c in gs.codes if c.startswith(prov))
            version_of[prov] = conn.execute(
                insert(GridVersion)
                .values(
                    region_code=prov.ljust(12, "0"),
                    status="active",
                    label=f"synthetic seed {gs.seed}",
                    source="bench/synthetic.py",
                    grid_count=count,
                    error_count=0,
                    warning_count=0,
                    report={},
                    forced=False,
                    created_at=now,
                    activated_at=now,
                )
                .returning(GridVersion.id)
            ).scalar_one()
    timings["versions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    areas = areas_m2(gs.geoms)
    timings["areas"] = time.perf_counter() - t0
    if engine.dialect.name == "postgresql":
        timings.update(_load_postgres(engine, gs, version_of, areas, now))
    else:
        timings.update(_load_generic(engine, gs, version_of, areas, now))
    with engine.begin() as conn:
        conn.execute(
            update(IndexGeneration)
            .where(IndexGeneration.name == "grids")
            .values(generation=IndexGeneration.generation + 1, changed_at=now)
        )
    return timings


def _copy_text(values: Iterable[Any]) -> str:
    return "\t".join("\\N" if v is None else str(v) for v in values)


def _load_postgres(
    engine: Engine, gs: GridSet, version_of: dict[str, int], areas: np.ndarray, now: datetime
) -> dict[str, float]:
    timings: dict[str, float] = {}
    stamp = now.isoformat()
    t0 = time.perf_counter()
    region_wkb = shapely.to_wkb(
        shapely.set_srid(np.array([r["boundary"] for r in gs.regions], dtype=object), 4326),
        hex=True,
        include_srid=True,
    )
    grid_wkb = shapely.to_wkb(shapely.set_srid(gs.geoms, 4326), hex=True, include_srid=True)
    timings["encode"] = time.perf_counter() - t0
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute("DROP INDEX IF EXISTS idx_grids_geom")
            with cur.copy(
                "COPY regions (code, level, name, parent_code, boundary, created_at, "
                "updated_at) FROM STDIN"
            ) as copy:
                buf = io.StringIO()
                for r, wkb in zip(gs.regions, region_wkb, strict=True):
                    buf.write(
                        _copy_text(
                            (r["code"], r["level"], r["name"], r["parent_code"], wkb, stamp, stamp)
                        )
                        + "\n"
                    )
                copy.write(buf.getvalue())
            timings["copy_regions"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            with cur.copy(
                "COPY grids (version_id, code, name, type, community_code, "
                "county_code, area_m2, in_service, geom) FROM STDIN"
            ) as copy:
                chunk = 20_000
                for i in range(0, len(gs), chunk):
                    lines = []
                    for j in range(i, min(i + chunk, len(gs))):
                        code = gs.codes[j]
                        lines.append(
                            _copy_text(
                                (
                                    version_of[code[:2]],
                                    code,
                                    gs.names[j],
                                    gs.types[j],
                                    code[:12],
                                    code[:6],
                                    repr(float(areas[j])),
                                    "t",
                                    grid_wkb[j],
                                )
                            )
                        )
                    copy.write("\n".join(lines) + "\n")
            timings["copy_grids"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cur.execute("CREATE INDEX idx_grids_geom ON grids USING gist (geom)")
            timings["gist_index"] = time.perf_counter() - t0
        conn.commit()
        t0 = time.perf_counter()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE grids")
            cur.execute("VACUUM ANALYZE regions")
            # Flush the load now rather than during the measurements (needs superuser).
            with contextlib.suppress(psycopg.Error):
                cur.execute("CHECKPOINT")
        conn.autocommit = False
        timings["analyze"] = time.perf_counter() - t0
    finally:
        raw.close()
    return timings


def _load_generic(
    engine: Engine, gs: GridSet, version_of: dict[str, int], areas: np.ndarray, now: datetime
) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(
            insert(Region),
            [
                {
                    "code": r["code"],
                    "level": r["level"],
                    "name": r["name"],
                    "parent_code": r["parent_code"],
                    "boundary": to_db(r["boundary"]),
                    "created_at": now,
                    "updated_at": now,
                }
                for r in gs.regions
            ],
        )
    timings["insert_regions"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunk = 5_000
    with engine.begin() as conn:
        for i in range(0, len(gs), chunk):
            conn.execute(
                insert(Grid),
                [
                    {
                        "version_id": version_of[gs.codes[j][:2]],
                        "code": gs.codes[j],
                        "name": gs.names[j],
                        "type": gs.types[j],
                        "community_code": gs.codes[j][:12],
                        "county_code": gs.codes[j][:6],
                        "area_m2": float(areas[j]),
                        "in_service": True,
                        "geom": to_db(gs.geoms[j]),
                    }
                    for j in range(i, min(i + chunk, len(gs)))
                ],
            )
    timings["insert_grids"] = time.perf_counter() - t0
    return timings


def create_postgres_database(admin_url: str, name: str) -> str:
    """(Re)create database ``name`` on the server of ``admin_url``; return its URL."""
    if not name.startswith("gridapi_bench_"):
        raise ValueError("benchmark databases must be named gridapi_bench_*")
    from sqlalchemy.engine import make_url

    admin = make_engine(admin_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def drop_postgres_database(admin_url: str, name: str) -> None:
    """Drop benchmark database ``name`` (closing any connection still open to it)."""
    if not name.startswith("gridapi_bench_"):
        raise ValueError("benchmark databases must be named gridapi_bench_*")
    admin = make_engine(admin_url)
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def main(argv: list[str] | None = None) -> int:
    """Build one set and load it into a database (for ad-hoc use of the synthetic data)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--database-url",
        required=True,
        help="a migrated-or-empty database, e.g. sqlite:///var/bench.sqlite3",
    )
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    gs = build(args.size, args.seed)
    print(
        f"built {len(gs)} grids, {len(gs.regions)} regions {gs.level_counts()}, "
        f"{gs.vertices / len(gs):.0f} vertices/grid in {time.perf_counter() - t0:.1f} s "
        f"{ {k: round(v, 2) for k, v in gs.timings.items()} }"
    )
    engine = make_engine(args.database_url)
    t0 = time.perf_counter()
    timings = load(engine, gs)
    print(
        f"loaded in {time.perf_counter() - t0:.1f} s "
        f"{ {k: round(v, 2) for k, v in timings.items()} }"
    )
    engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
