"""Deterministic demo county (regions and grids) built as pure data, for seeding and tests."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import shapely
from shapely.geometry import Polygon, shape

PROVINCE = ("320000000000", "江苏省")
CITY = ("320500000000", "苏州市")
COUNTY = ("320508000000", "姑苏区")

CENTER_LON = 120.62
CENTER_LAT = 31.31
COUNTY_SPAN_M = 20_000.0

# Length of one degree at the county's latitude (WGS84 series expansion). An equirectangular
# plane is accurate to well under a metre over 20 km, so pyproj is not needed here.
_PHI = math.radians(CENTER_LAT)
M_PER_DEG_LAT = 111_132.954 - 559.822 * math.cos(2 * _PHI) + 1.175 * math.cos(4 * _PHI)
M_PER_DEG_LON = 111_412.84 * math.cos(_PHI) - 93.5 * math.cos(3 * _PHI)

# Output coordinates live on a 1e-7 degree lattice (about 1 cm). All final geometry is cut from
# one snap-rounded arrangement on that lattice, so rounding to 7 decimals is lossless and
# neighbouring polygons share bit-identical vertices.
COORD_DECIMALS = 7
_COORD_GRID = 10.0**-COORD_DECIMALS
# Design-stage overlays run on a 1 mm lattice so nearly coincident edges merge cleanly.
_DESIGN_GRID_M = 1e-3

# Share of townships that are urban streets (街道); they are placed nearest the centre.
_STREET_SHARE = 0.6
_DEDICATED_SHARE = 0.05
# Code ranges from the statistical division coding rules.
_STREET_CODES = (1, 99)
_TOWN_CODES = (100, 199)
_COMMUNITY_CODES = (1, 199)
_VILLAGE_CODES = (200, 399)
_MAX_GRIDS = 999

# Boundary "wiggle" per level: townships and communities follow rivers and old lanes, grids
# mostly follow streets, so they are warped less.
_WARP = {"township": 1.0, "village": 0.8, "grid": 0.35}

_TOWNSHIP_FIRST = "平沧金双虎苏吴葑枫横浒通望胥盘娄齐桃阊木光甪浦郭越斜石长清凤龙留彩"
_TOWNSHIP_SECOND = "江浪门塔丘锦南洋桥塘泾溪湖浦港山庄湾里渎墅泽荡坞亭阳滨河渚园"
_COMMUNITY_FIRST = "新东南西北桂梅竹兰菊福康和安乐宁华景锦翠青金玉春秋明光文彩瑞德泰嘉星月晓友益馨"
_COMMUNITY_SECOND = "园苑坊巷桥里湾庭城门亭港塘街林府湖滨邨花"
_SURNAMES = "陈张王李周吴徐沈朱顾陆钱蒋杨姚许邵薛范潘严蔡"
_VILLAGE_PLACES = "家庄巷浜桥港泾湾埭墩圩"
_VILLAGE_FIRST = "新永联群红前光民建和胜长"
_VILLAGE_SECOND = "联丰合安星利胜明新华农江"
_BRAND = "恒瑞华东盛鑫达通宏兴嘉隆科博中亿创协永顺天"
_INDUSTRY = ("电子", "精密机械", "纺织", "新材料", "光电", "食品", "物流", "医疗器械")


@dataclass
class DemoCounty:
    """A demo county: the region tree (parents first) and its grids as GeoJSON."""

    regions: list[dict]  # {"code", "name", "level", "boundary": MultiPolygon | None}
    grids: dict  # GeoJSON FeatureCollection; properties {"code", "name", "type"}


# --------------------------------------------------------------------------------------------
# Design stage: an approximate nested partition in a local metric plane (metres, centre = 0,0).
# --------------------------------------------------------------------------------------------


def _polygons(geom: shapely.Geometry) -> list[Polygon]:
    """Non-empty polygon parts of any geometry, largest first."""
    parts = [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and p.area > 0]
    return sorted(parts, key=lambda p: p.area, reverse=True)


def _county_outline(rng: random.Random) -> Polygon:
    """Irregular star-shaped outline; star-shaped with r > 0 guarantees a simple polygon."""
    n = 360
    harmonics = [
        (k, rng.uniform(0.02, 0.11) / math.sqrt(k), rng.uniform(0, 2 * math.pi))
        for k in range(2, 7)
    ]
    # Smoothed random noise gives the small meanders of a boundary that follows waterways.
    noise = [rng.gauss(0.0, 1.0) for _ in range(n)]
    smooth = [sum(noise[(i + d) % n] for d in range(-3, 4)) / 7 for i in range(n)]
    stretch = rng.uniform(0.85, 1.15)
    coords = []
    for i in range(n):
        theta = 2 * math.pi * i / n
        r = 1.0 + sum(a * math.cos(k * theta + ph) for k, a, ph in harmonics) + 0.025 * smooth[i]
        coords.append((r * math.cos(theta) * stretch, r * math.sin(theta) / stretch))
    outline = Polygon(coords)
    minx, miny, maxx, maxy = outline.bounds
    scale = COUNTY_SPAN_M / math.sqrt((maxx - minx) * (maxy - miny))
    cx, cy = (minx + maxx) / 2, (miny + maxy) / 2
    outline = shapely.transform(outline, lambda c: (c - (cx, cy)) * scale)
    return shapely.set_precision(outline, _DESIGN_GRID_M)


def _sample_points(parent: shapely.Geometry, n: int, rng: random.Random) -> np.ndarray:
    """Random points inside parent with a minimum spacing, so no Voronoi cell is tiny."""
    minx, miny, maxx, maxy = parent.bounds
    min_dist = 0.6 * math.sqrt(parent.area / n)
    shapely.prepare(parent)
    pts: list[tuple[float, float]] = []
    tries = 0
    while len(pts) < n:
        tries += 1
        if tries % 400 == 0:  # relax spacing for awkward (thin) parents instead of looping forever
            min_dist *= 0.8
        x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
        if not shapely.contains_xy(parent, x, y):
            continue
        if all((x - px) ** 2 + (y - py) ** 2 >= min_dist**2 for px, py in pts):
            pts.append((x, y))
    return np.array(pts)


def _voronoi(pts: np.ndarray, parent: shapely.Geometry, margin: float) -> np.ndarray:
    # The extent is padded so the warped cells still cover the whole parent.
    minx, miny, maxx, maxy = parent.bounds
    extent = shapely.box(minx - margin, miny - margin, maxx + margin, maxy + margin)
    return shapely.get_parts(shapely.voronoi_polygons(shapely.multipoints(pts), extend_to=extent))


def _lloyd(pts: np.ndarray, parent: shapely.Geometry, margin: float) -> np.ndarray:
    """One Lloyd relaxation step: evens out cell sizes, which looks more like real divisions."""
    moved = []
    for cell in shapely.intersection(_voronoi(pts, parent, margin), parent):
        parts = _polygons(cell)
        if parts:
            # A centroid can fall outside a concave cell; then use a point that is inside.
            p = (
                parts[0].centroid
                if parts[0].contains(parts[0].centroid)
                else parts[0].point_on_surface()
            )
            moved.append((p.x, p.y))
    return np.array(moved)


def _warp(cells: np.ndarray, scale: float, strength: float, rng: random.Random) -> np.ndarray:
    """Bend straight Voronoi edges with a smooth displacement field.

    The field is a sum of plane waves whose Lipschitz constant stays well below 1, so the map
    is a homeomorphism: cells that tiled before still tile afterwards. Shared edges are
    densified identically from both sides (up to float noise that the final snap removes).
    """
    if strength <= 0:
        return cells
    waves = []
    for _axis in range(2):
        axis_waves = []
        for _ in range(3):
            wavelength = scale * rng.uniform(0.3, 1.2)
            k = 2 * math.pi / wavelength
            angle = rng.uniform(0, 2 * math.pi)
            amp = 0.15 * strength / k  # amp * k bounds this wave's contribution to the gradient
            axis_waves.append(
                (amp, k * math.cos(angle), k * math.sin(angle), rng.uniform(0, 2 * math.pi))
            )
        waves.append(axis_waves)

    def field(coords: np.ndarray) -> np.ndarray:
        x, y = coords[:, 0], coords[:, 1]
        out = coords.copy()
        for axis, axis_waves in enumerate(waves):
            for amp, kx, ky, phase in axis_waves:
                out[:, axis] += amp * np.sin(kx * x + ky * y + phase)
        return out

    return shapely.transform(shapely.segmentize(cells, scale / 10), field)


def _merge_fragments(mains: list[shapely.Geometry], fragments: list[Polygon]) -> None:
    """Fold stray pieces of clipped cells into the neighbour they share the most edge with."""
    pending = sorted(fragments, key=lambda f: f.area, reverse=True)
    for _ in range(3):  # a fragment may only touch another fragment until that one is merged
        left = []
        for frag in pending:
            touch = shapely.area(shapely.intersection(frag.buffer(10 * _DESIGN_GRID_M), mains))
            j = int(np.argmax(touch))
            if touch[j] <= 0:
                left.append(frag)
                continue
            mains[j] = shapely.union(mains[j], frag, grid_size=_DESIGN_GRID_M)
        pending = left
        if not pending:
            return
    for frag in pending:  # never leave a gap; the exact stage fixes any resulting multipart
        j = int(np.argmin(shapely.distance(frag, mains)))
        mains[j] = shapely.union(mains[j], frag, grid_size=_DESIGN_GRID_M)


def _subdivide(
    parent: shapely.Geometry, n: int, strength: float, rng: random.Random
) -> list[shapely.Geometry]:
    """Cut parent into about n connected pieces: relaxed, warped Voronoi cells clipped to it."""
    if n <= 1:
        return [parent]
    scale = math.sqrt(parent.area / n)
    mains: list[shapely.Geometry] = []
    fragments: list[Polygon] = []
    for _attempt in range(12):
        pts = _sample_points(parent, n, rng)
        for _ in range(2):
            pts = _lloyd(pts, parent, scale)
        cells = _warp(_voronoi(pts, parent, scale), scale, strength, rng)
        cells = shapely.make_valid(cells)
        mains, fragments = [], []
        for piece in shapely.intersection(cells, parent, grid_size=_DESIGN_GRID_M):
            parts = _polygons(piece)
            if parts:
                mains.append(parts[0])
                fragments.extend(parts[1:])
        # Retry rather than keep slivers as divisions: a 2% community looks like a bug.
        if len(mains) == n and min(m.area for m in mains) >= 0.2 * parent.area / n:
            break
    _merge_fragments(mains, fragments)
    return mains


def _reading_order(geoms: Sequence[shapely.Geometry], band: float) -> list[int]:
    """Indices sorted north-to-south in bands, then west-to-east, like codes on a real map."""
    pts = [g.point_on_surface() for g in geoms]
    return sorted(range(len(geoms)), key=lambda i: (-math.floor(pts[i].y / band), pts[i].x))


# --------------------------------------------------------------------------------------------
# Exact stage: one snap-rounded planar arrangement in lon/lat; every level is a union of faces.
# --------------------------------------------------------------------------------------------


def _to_lonlat(geoms: np.ndarray) -> np.ndarray:
    scale = np.array([1 / M_PER_DEG_LON, 1 / M_PER_DEG_LAT])
    return shapely.transform(geoms, lambda c: c * scale + (CENTER_LON, CENTER_LAT))


def _faces(designs: np.ndarray) -> np.ndarray:
    """Faces of the arrangement of all design edges, snap-rounded to the output lattice.

    Snap rounding merges the float-noisy, nearly coincident edges of neighbouring designs into
    single shared edges, so faces tile exactly and carry only lattice coordinates.
    """
    noded = shapely.union_all(shapely.boundary(designs), grid_size=_COORD_GRID)
    faces = shapely.get_parts(shapely.polygonize(shapely.get_parts(noded)))
    return np.array([f for f in faces if isinstance(f, Polygon) and f.area > 0], dtype=object)


def _assign_faces(faces: np.ndarray, designs: np.ndarray) -> np.ndarray:
    """Design index per face by largest overlap (robust to slivers left along old edges)."""
    fi, di = shapely.STRtree(designs).query(faces, predicate="intersects")
    overlap = shapely.area(shapely.intersection(faces[fi], designs[di]))
    best = np.full(len(faces), -1)
    best_area = np.zeros(len(faces))
    for f, d, a in zip(fi, di, overlap, strict=True):
        if a > best_area[f]:
            best[f], best_area[f] = d, a
    for f in np.flatnonzero(best < 0):  # gap faces (if any) join the nearest design
        best[f] = int(np.argmin(shapely.distance(faces[f], designs)))
    return best


def _adjacency(faces: np.ndarray) -> dict[int, dict[int, float]]:
    """Shared edge length between faces; faces meeting only at a point are not neighbours."""
    i, j = shapely.STRtree(faces).query(faces, predicate="intersects")
    keep = i < j
    i, j = i[keep], j[keep]
    bounds = shapely.boundary(faces)
    shared = shapely.length(shapely.intersection(bounds[i], bounds[j]))
    adj: dict[int, dict[int, float]] = defaultdict(dict)
    for a, b, s in zip(i.tolist(), j.tolist(), shared.tolist(), strict=True):
        if s > 0:
            adj[a][b] = s
            adj[b][a] = s
    return adj


def _make_connected(
    labels: np.ndarray, level: int, faces: np.ndarray, adj: dict[int, dict[int, float]]
) -> None:
    """Give every unit at `level` a single connected set of faces.

    labels[:, 0..2] are township, community and grid of each face. Smaller components of a unit
    move to the neighbouring unit (within the same parent) sharing the longest edge with them.
    """
    groups: dict[int, list[int]] = defaultdict(list)
    for f, unit in enumerate(labels[:, level].tolist()):
        groups[unit].append(f)
    for unit in sorted(groups):
        members = set(groups[unit])
        components = []
        while members:
            stack = [members.pop()]
            comp = set(stack)
            while stack:
                for nb in adj[stack.pop()]:
                    if nb in members:
                        members.remove(nb)
                        comp.add(nb)
                        stack.append(nb)
            components.append(sorted(comp))
        if len(components) < 2:
            continue
        components.sort(key=lambda c: (-float(shapely.area(faces[c]).sum()), c[0]))
        for comp in components[1:]:
            parent = labels[comp[0], level - 1] if level > 0 else None
            shared: dict[int, float] = defaultdict(float)
            for f in comp:
                for nb, length in adj[f].items():
                    if labels[nb, level] != unit and (
                        parent is None or labels[nb, level - 1] == parent
                    ):
                        shared[nb] += length
            if shared:
                target = max(sorted(shared), key=lambda nb: shared[nb])
                labels[comp, level:] = labels[target, level:]


# --------------------------------------------------------------------------------------------
# Names and codes.
# --------------------------------------------------------------------------------------------


def _two(rng: random.Random, first: str, second: str) -> str:
    a, b = rng.choice(first), rng.choice(second)
    while b == a:
        b = rng.choice(second)
    return a + b


def _pick(make: Callable[[], str], county_used: set[str], parent_used: set[str]) -> str:
    """A name unique within its parent, and county-wide too while the syllable space allows."""
    for attempt in range(400):
        name = make()
        if name not in parent_used and (attempt >= 200 or name not in county_used):
            parent_used.add(name)
            county_used.add(name)
            return name
    raise ValueError("ran out of distinct demo names; lower the demo size")


def _township_name(rng: random.Random, suffix: str) -> str:
    return _two(rng, _TOWNSHIP_FIRST, _TOWNSHIP_SECOND) + suffix


def _community_name(rng: random.Random) -> str:
    return _two(rng, _COMMUNITY_FIRST, _COMMUNITY_SECOND) + "社区"


def _village_name(rng: random.Random) -> str:
    if rng.random() < 0.55:
        return rng.choice(_SURNAMES) + rng.choice(_VILLAGE_PLACES) + "村"
    return _two(rng, _VILLAGE_FIRST, _VILLAGE_SECOND) + "村"


_DEDICATED_KINDS = ("school", "market", "enterprise")
# Villages host factories and markets; urban communities host more schools.
_KIND_WEIGHTS = {True: (1, 2, 4), False: (4, 3, 2)}


def _dedicated_kind(rng: random.Random, is_village: bool, taken: set[str]) -> str:
    """Kind of a dedicated grid; kinds already in the community are skipped (one school each)."""
    options = [
        (k, w)
        for k, w in zip(_DEDICATED_KINDS, _KIND_WEIGHTS[is_village], strict=True)
        if k not in taken
    ] or [("enterprise", 1)]
    kind = rng.choices([k for k, _ in options], weights=[w for _, w in options])[0]
    taken.add(kind)
    return kind


def _dedicated_name(rng: random.Random, kind: str, stem: str, is_village: bool) -> str:
    if kind == "school":
        school = ("中心小学", "小学", "幼儿园") if is_village else ("小学", "实验小学", "中学")
        place = stem + rng.choice(school)
    elif kind == "market":
        place = stem + rng.choice(("农贸市场", "菜市场", "综合市场"))
    else:
        place = _two(rng, _BRAND, _BRAND) + rng.choice(_INDUSTRY) + "有限公司"
    return place + "专属网格"


def _codes(rng: random.Random, count: int, lo: int, hi: int) -> list[int]:
    """Ascending codes from lo, with the occasional gap real code tables have after mergers.

    The first code is always lo; later gaps are only taken while the rest still fit in range.
    """
    if count > hi - lo + 1:
        raise ValueError(f"{count} units do not fit code range {lo:03d}-{hi:03d}")
    codes, nxt = [], lo
    for remaining in range(count, 0, -1):
        if codes and rng.random() < 0.12 and hi - nxt >= remaining:
            nxt += 1
        codes.append(nxt)
        nxt += 1
    return codes


# --------------------------------------------------------------------------------------------
# GeoJSON helpers.
# --------------------------------------------------------------------------------------------


def _geojson_multipolygon(geom: shapely.Geometry) -> dict:
    # orient_polygons gives RFC 7946 ring order (exterior counter-clockwise) without moving
    # any vertex, so the shared edges stay bit-identical.
    polys = []
    for poly in _polygons(shapely.orient_polygons(geom)):
        rings = [poly.exterior, *poly.interiors]
        polys.append([np.round(np.asarray(r.coords), COORD_DECIMALS).tolist() for r in rings])
    return {"type": "MultiPolygon", "coordinates": polys}


def _feature(properties: dict, geometry: dict) -> dict:
    return {"type": "Feature", "properties": properties, "geometry": geometry}


def regions_as_features(county: DemoCounty) -> dict:
    """FeatureCollection of the regions that have a boundary (county, townships, villages)."""
    features = [
        _feature(
            {"code": r["code"], "name": r["name"], "level": r["level"]},
            _geojson_multipolygon(r["boundary"]),
        )
        for r in county.regions
        if r["boundary"] is not None
    ]
    return {"type": "FeatureCollection", "features": features}


# --------------------------------------------------------------------------------------------
# Builder.
# --------------------------------------------------------------------------------------------


def _vary(rng: random.Random, target: int) -> int:
    """Child count within about ±20% of target, so divisions are not suspiciously uniform."""
    return rng.randint(max(1, round(target * 0.8)), max(1, round(target * 1.2)))


def build_demo_county(
    seed: int = 2024,
    townships: int = 10,
    communities_per_township: int = 10,
    grids_per_community: int = 10,
) -> DemoCounty:
    """Build a deterministic demo county; the same seed yields byte-identical output."""
    if min(townships, communities_per_township, grids_per_community) < 1:
        raise ValueError("all demo sizes must be at least 1")
    rng = random.Random(seed)

    # Design: township -> community -> grid, each level cut from its parent.
    county_design = _county_outline(rng)
    township_designs = _subdivide(county_design, townships, _WARP["township"], rng)
    grid_designs: list[shapely.Geometry] = []
    design_owner: list[tuple[int, int]] = []  # (township index, community index) per grid
    n_comm = 0
    for t, township in enumerate(township_designs):
        for community in _subdivide(
            township, _vary(rng, communities_per_township), _WARP["village"], rng
        ):
            for grid in _subdivide(community, _vary(rng, grids_per_community), _WARP["grid"], rng):
                grid_designs.append(grid)
                design_owner.append((t, n_comm))
            n_comm += 1

    # Exact: snap-rounded faces, labelled by design, then every unit made connected top-down.
    designs = _to_lonlat(np.array(grid_designs, dtype=object))
    faces = _faces(designs)
    owner = np.array(design_owner)
    grid_of_face = _assign_faces(faces, designs)
    labels = np.column_stack([owner[grid_of_face], grid_of_face])
    adj = _adjacency(faces)
    for level in range(3):
        _make_connected(labels, level, faces, adj)

    def union(members: np.ndarray) -> shapely.Geometry:
        return shapely.coverage_union_all(faces[members])

    # Township kinds and codes: urban streets are the townships nearest the centre.
    t_ids = sorted(set(labels[:, 0].tolist()))
    t_geom = {t: union(labels[:, 0] == t) for t in t_ids}
    county_geom = union(np.ones(len(faces), dtype=bool))
    centre = county_geom.centroid
    by_distance = sorted(t_ids, key=lambda t: (t_geom[t].centroid.distance(centre), t))
    n_streets = max(1, round(len(t_ids) * _STREET_SHARE)) if len(t_ids) > 1 else 1
    streets = set(by_distance[:n_streets])
    band = math.sqrt(county_geom.area / max(1, len(t_ids)))
    ordered = [t_ids[i] for i in _reading_order([t_geom[t] for t in t_ids], band)]
    street_order = [t for t in ordered if t in streets]
    town_order = [t for t in ordered if t not in streets]
    t_code = dict(zip(street_order, _codes(rng, len(street_order), *_STREET_CODES), strict=True))
    t_code |= dict(zip(town_order, _codes(rng, len(town_order), *_TOWN_CODES), strict=True))

    county_names: set[str] = set()
    regions: list[dict] = [
        {"code": PROVINCE[0], "name": PROVINCE[1], "level": "province", "boundary": None},
        {"code": CITY[0], "name": CITY[1], "level": "city", "boundary": None},
        {"code": COUNTY[0], "name": COUNTY[1], "level": "county", "boundary": county_geom},
    ]
    township_names: set[str] = set()
    grid_units: list[tuple[str, shapely.Geometry]] = []  # (community code, geometry)
    # (community code, name, indices into grid_units in reading order, is a village)
    communities: list[tuple[str, str, list[int], bool]] = []
    for t in sorted(t_ids, key=lambda t: t_code[t]):
        is_street = t in streets
        suffix = "街道" if is_street else "镇"
        t_name = _pick(partial(_township_name, rng, suffix), county_names, township_names)
        t_full = f"{COUNTY[0][:6]}{t_code[t]:03d}000"
        regions.append({"code": t_full, "name": t_name, "level": "township", "boundary": t_geom[t]})

        c_ids = sorted(set(labels[labels[:, 0] == t, 1].tolist()))
        c_geom = {c: union(labels[:, 1] == c) for c in c_ids}
        # A town's seat (the communities nearest its centre) is urban: 社区, the rest 村.
        t_centre = t_geom[t].centroid
        near = sorted(c_ids, key=lambda c: (c_geom[c].centroid.distance(t_centre), c))
        n_urban = len(c_ids) if is_street else min(rng.randint(1, 2), max(0, len(c_ids) - 1))
        urban = set(near[:n_urban])
        c_band = math.sqrt(t_geom[t].area / len(c_ids))
        c_ordered = [c_ids[i] for i in _reading_order([c_geom[c] for c in c_ids], c_band)]
        urban_order = [c for c in c_ordered if c in urban]
        rural_order = [c for c in c_ordered if c not in urban]
        c_code = dict(
            zip(urban_order, _codes(rng, len(urban_order), *_COMMUNITY_CODES), strict=True)
        )
        c_code |= dict(
            zip(rural_order, _codes(rng, len(rural_order), *_VILLAGE_CODES), strict=True)
        )
        sibling_names: set[str] = set()
        for c in sorted(c_ids, key=lambda c: c_code[c]):
            if c in urban:
                c_name = _pick(partial(_community_name, rng), county_names, sibling_names)
            else:
                c_name = _pick(partial(_village_name, rng), county_names, sibling_names)
            c_full = f"{t_full[:9]}{c_code[c]:03d}"
            regions.append(
                {"code": c_full, "name": c_name, "level": "village", "boundary": c_geom[c]}
            )
            g_ids = sorted(set(labels[labels[:, 1] == c, 2].tolist()))
            if len(g_ids) > _MAX_GRIDS:
                raise ValueError(f"{len(g_ids)} grids do not fit a 3-digit sequence")
            g_geom = [union(labels[:, 2] == g) for g in g_ids]
            g_band = math.sqrt(c_geom[c].area / len(g_ids))
            communities.append(
                (
                    c_full,
                    c_name,
                    [len(grid_units) + i for i in _reading_order(g_geom, g_band)],
                    c not in urban,
                )
            )
            grid_units.extend((c_full, g) for g in g_geom)

    # About 5% of grids are dedicated (a school, market or enterprise), at most two per community
    # and only in communities with at least three grids, so no community is all "dedicated".
    eligible = [g for _, _, members, _ in communities if len(members) >= 3 for g in members]
    rng.shuffle(eligible)
    want = round(len(grid_units) * _DEDICATED_SHARE)
    dedicated: set[int] = set()
    per_community: dict[str, int] = defaultdict(int)
    for g in eligible:
        if len(dedicated) >= want:
            break
        if per_community[grid_units[g][0]] < 2:
            dedicated.add(g)
            per_community[grid_units[g][0]] += 1

    features = []
    for c_full, c_name, members, is_village in communities:
        # Basic grids first so "第N网格" matches sequence N; dedicated grids follow.
        basic = [g for g in members if g not in dedicated]
        special = [g for g in members if g in dedicated]
        stem = c_name.removesuffix("社区").removesuffix("村")
        used: set[str] = set()
        places: set[str] = set()
        for seq, g in enumerate(basic + special, start=1):
            if g in dedicated:
                place = _dedicated_kind(rng, is_village, places)
                make = partial(_dedicated_name, rng, place, stem, is_village)
                name, kind = _pick(make, set(), used), "dedicated"
            else:
                name, kind = f"{c_name}第{seq}网格", "basic"
            features.append(
                _feature(
                    {"code": f"{c_full}{seq:03d}", "name": name, "type": kind},
                    _geojson_multipolygon(grid_units[g][1]),
                )
            )

    # Round-trip boundaries through GeoJSON so region geometries are exactly what gets written.
    for region in regions:
        if region["boundary"] is not None:
            region["boundary"] = shape(_geojson_multipolygon(region["boundary"]))
    regions.sort(key=lambda r: r["code"])  # zero-padded codes sort every parent before its children
    return DemoCounty(regions=regions, grids={"type": "FeatureCollection", "features": features})
