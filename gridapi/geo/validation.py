"""Validation of an imported grid file: codes, geometries, overlaps, gaps and community fit."""

from __future__ import annotations

import copy
import math
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, shape
from shapely.geometry.base import BaseGeometry

from gridapi.codes import InvalidCode, normalize_code, validate_grid_code
from gridapi.geo.geodesy import areas_m2

GRID_TYPES = ("basic", "dedicated")
DEFAULT_GRID_TYPE = "basic"

# GEOS reports the location of an invalidity as "Reason[x y]".
_REASON_POINT_RE = re.compile(r"\[\s*([-+0-9.eE]+)\s+([-+0-9.eE]+)\s*\]")
_POLYGON, _MULTIPOLYGON = 3, 6
_COLLECTIONS = (4, 5, 6, 7)
_AREA_DIGITS = 2  # 0.01 m² in reports
_POINT_DIGITS = 7  # ~1 cm in lon/lat degrees


Problem = dict[str, Any]


@dataclass
class ParsedGrid:
    """One feature that became a grid: a well-formed code and a polygonal geometry."""

    index: int
    code: str
    name: str
    type: str
    community_code: str
    # Always a valid 2-D MultiPolygon (possibly empty): repaired when the input was invalid.
    geometry: MultiPolygon
    area_m2: float
    problems: list[Problem] = field(default_factory=list)


@dataclass
class GridSetReport:
    """Everything found wrong with one grid file, ready to store or return as JSON."""

    grids: list[ParsedGrid]
    feature_problems: list[Problem]
    communities: list[dict[str, Any]]
    tolerance_m2: float

    def _all_problems(self) -> list[Problem]:
        out = list(self.feature_problems)
        for grid in self.grids:
            out.extend(grid.problems)
        for community in self.communities:
            out.extend(community["problems"])
        return out

    @property
    def error_count(self) -> int:
        """Return the number of problems with severity "error" (feature, grid and community)."""
        return sum(1 for p in self._all_problems() if p["severity"] == "error")

    @property
    def warning_count(self) -> int:
        """Return the number of problems with severity "warning"."""
        return sum(1 for p in self._all_problems() if p["severity"] == "warning")

    @property
    def ok(self) -> bool:
        """Return True when there is no error (warnings do not count)."""
        return self.error_count == 0

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary; only grids that have problems are listed.

        Areas are rounded to 0.01 m², points to 1e-7 degrees; grids and feature problems are
        sorted by code then feature index, communities by code, so equal input gives equal output.
        """
        grids = sorted((g for g in self.grids if g.problems), key=lambda g: (g.code, g.index))
        feature_problems = sorted(
            self.feature_problems,
            key=lambda p: (p["code"] or "", p["index"], p["kind"], p["message"]),
        )
        return {
            "ok": self.ok,
            "error_count": self.error_count,
            "warning_count": self.warning_count,
            "tolerance_m2": float(self.tolerance_m2),
            "grid_count": len(self.grids),
            "grids": [
                {
                    "index": g.index,
                    "code": g.code,
                    "name": g.name,
                    "type": g.type,
                    "community": g.community_code,
                    "area_m2": _round_area(g.area_m2),
                    "problems": copy.deepcopy(g.problems),
                }
                for g in grids
            ],
            "feature_problems": copy.deepcopy(feature_problems),
            "communities": copy.deepcopy(sorted(self.communities, key=lambda c: c["code"])),
        }


def _round_area(value: float) -> float:
    return round(float(value), _AREA_DIGITS)


def _point(geom: BaseGeometry | None) -> list[float] | None:
    """Return [lon, lat] of a point guaranteed to lie on ``geom``, or None when it is empty."""
    if geom is None or geom.is_empty:
        return None
    p = shapely.point_on_surface(geom)
    return [round(float(p.x), _POINT_DIGITS), round(float(p.y), _POINT_DIGITS)]


def _fmt_point(point: list[float] | None) -> str:
    return "" if point is None else f" near [{point[0]}, {point[1]}]"


def _fmt_area(area: float) -> str:
    return f"{area:,.2f} m²"


# The longest grid name stored (grids.name).
MAX_NAME_LENGTH = 200


def _problem(kind: str, message: str, severity: str = "error", **extra: Any) -> Problem:
    return {"severity": severity, "kind": kind, "message": message, **extra}


def _polygonal(geom: BaseGeometry | None) -> MultiPolygon:
    """Return the polygonal parts of ``geom`` as a new valid-if-possible 2-D MultiPolygon.

    Nested collections are flattened; points and lines are dropped. Parts are unioned when
    they would otherwise form an invalid MultiPolygon (e.g. two parts sharing an edge).
    """
    if geom is None or geom.is_empty:
        return MultiPolygon()
    parts = np.array([geom], dtype=object)
    while True:
        parts = shapely.get_parts(parts)
        types = shapely.get_type_id(parts)
        if not np.isin(types, _COLLECTIONS).any():
            break
    polygons = [p for p, t in zip(parts, types, strict=True) if t == _POLYGON and not p.is_empty]
    if not polygons:
        return MultiPolygon()
    result = MultiPolygon(polygons)
    if result.is_valid:
        return result
    merged = shapely.union_all(np.array(polygons, dtype=object))
    if shapely.get_type_id(merged) == _MULTIPOLYGON:
        return merged
    if shapely.get_type_id(merged) == _POLYGON:
        return MultiPolygon([merged])
    return _polygonal(merged)


def _holes(geoms: np.ndarray) -> BaseGeometry:
    """Return the union of the interior rings of ``geoms`` as polygons (empty when none)."""
    polygons = shapely.get_parts(geoms)
    polygons = polygons[shapely.get_type_id(polygons) == _POLYGON]
    if len(polygons) == 0:
        return MultiPolygon()
    rings, owner = shapely.get_rings(polygons, return_index=True)
    if len(rings) == 0:
        return MultiPolygon()
    # get_rings lists each polygon's exterior first; everything after it is a hole.
    interior = np.ones(len(rings), dtype=bool)
    interior[0] = False
    interior[1:] = owner[1:] == owner[:-1]
    if not interior.any():
        return MultiPolygon()
    return shapely.union_all(shapely.polygons(rings[interior]))


# --- feature-level parsing -------------------------------------------------------------------


def _describe(index: int, code: str | None) -> str:
    return f"features[{index}]" + (f" (code {code!r})" if code else "")


#: Vertices one grid may have. A community's grid drawn in a GIS has hundreds, a few thousand
#: at most; one of 100,000 zig-zag vertices (4 MB, under the body limit) held a worker until
#: gunicorn killed it, and on SQLite every other write waited for it.
MAX_VERTICES = 20_000


def _parse_geometry(obj: Any, where: str) -> tuple[MultiPolygon | None, Problem | None]:
    """Return (geometry, None) or (None, problem) for a GeoJSON geometry object."""
    if obj is None:
        return None, _problem("geometry_type", f"{where} has no geometry", geometry_type=None)
    if not isinstance(obj, Mapping):
        return None, _problem(
            "geometry_type",
            f"{where}: geometry is not a GeoJSON geometry object "
            f"(got {type(obj).__name__}); expected Polygon or MultiPolygon",
            geometry_type=None,
        )
    gtype = obj.get("type")
    if gtype not in ("Polygon", "MultiPolygon"):
        return None, _problem(
            "geometry_type",
            f"{where} has a {gtype!s} geometry; a grid must be a Polygon or MultiPolygon",
            geometry_type=gtype if isinstance(gtype, str) else None,
        )
    try:
        geom = shape(obj)
    # shapely raises ValueError, TypeError, KeyError, IndexError or GEOSException for the many
    # ways coordinates can be malformed; all of them mean the same thing to the uploader.
    except Exception as exc:
        return None, _problem(
            "geometry_unreadable", f"{where}: the {gtype} coordinates cannot be read: {exc}"
        )
    geom = shapely.force_2d(geom)
    coords = shapely.get_coordinates(geom)
    if len(coords) > MAX_VERTICES:
        return None, _problem(
            "too_many_vertices",
            f"{where} has {len(coords):,} vertices; a grid has at most {MAX_VERTICES:,} "
            "(simplify its boundary: a tolerance of 0.5 m keeps it exact for routing)",
            count=int(len(coords)),
        )
    if len(coords):
        lon, lat = coords[:, 0], coords[:, 1]
        bad = ~(np.isfinite(lon) & np.isfinite(lat))
        bad |= (np.abs(lon) > 180.0) | (np.abs(lat) > 90.0)
        if bad.any():
            x, y = coords[np.argmax(bad)]
            return None, _problem(
                "coordinates_out_of_range",
                f"{where}: coordinate [{x}, {y}] is not a lon/lat position "
                f"({int(bad.sum())} of {len(coords)} coordinates are outside ±180/±90 degrees "
                "or not finite); coordinates must be WGS-84/CGCS2000 degrees, not projected",
                count=int(bad.sum()),
            )
    if geom.is_empty:
        return MultiPolygon(), None
    if isinstance(geom, MultiPolygon):
        return geom, None
    return MultiPolygon([geom]), None


def _parse_feature(index: int, feature: Any) -> tuple[ParsedGrid | None, list[Problem]]:
    """Return (grid, []) for a usable feature, else (None, feature problems)."""

    def fp(code: str | None, problem: Problem) -> Problem:
        return {"index": index, "code": code, **problem}

    if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
        got = feature.get("type") if isinstance(feature, Mapping) else type(feature).__name__
        return None, [
            fp(
                None,
                _problem(
                    "geometry_type",
                    f"features[{index}] is not a GeoJSON Feature (got {got!r})",
                    geometry_type=None,
                ),
            )
        ]
    props = feature.get("properties")
    if not isinstance(props, Mapping):
        props = {}
    raw_code = normalize_code(props.get("code"))
    code = raw_code if isinstance(raw_code, str) else (None if raw_code is None else str(raw_code))
    where = _describe(index, code)
    problems: list[Problem] = []

    community = ""
    if raw_code is None:
        problems.append(_problem("code_format", f"{where} has no 'code' property"))
    elif not isinstance(raw_code, str):
        problems.append(
            _problem(
                "code_format",
                f"{where}: code must be a string of 15 digits, not a {type(raw_code).__name__}",
            )
        )
    else:
        try:
            community = validate_grid_code(raw_code)
        except InvalidCode as exc:
            problems.append(
                _problem(
                    "code_format",
                    f"{where}: {raw_code!r} is not a grid code: {exc} (expected a 12-digit "
                    "village/community code followed by a sequence 001-999)",
                )
            )

    name = props.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(_problem("name_missing", f"{where} has no name (property 'name')"))
    elif "\x00" in name:  # PostgreSQL cannot store it in text (the import failed there)
        problems.append(
            _problem(
                "name_invalid",
                f"{where}: the name contains the NUL character (U+0000), which cannot be "
                "stored; remove it",
            )
        )
    elif len(name.strip()) > MAX_NAME_LENGTH:  # was cut to 200 when stored, without a word
        problems.append(
            _problem(
                "name_too_long",
                f"{where}: the name has {len(name.strip())} characters, at most "
                f"{MAX_NAME_LENGTH} are allowed",
            )
        )

    grid_type = props.get("type")
    if grid_type is None:
        grid_type = DEFAULT_GRID_TYPE
    elif grid_type not in GRID_TYPES:
        problems.append(
            _problem(
                "type_invalid",
                f"{where}: type {grid_type!r} is not one of {', '.join(GRID_TYPES)}",
                value=grid_type if isinstance(grid_type, str) else None,
            )
        )

    geometry, geometry_problem = _parse_geometry(feature.get("geometry"), where)
    if geometry_problem is not None:
        problems.append(geometry_problem)

    if problems or geometry is None:
        return None, [fp(code, p) for p in problems]
    assert isinstance(name, str) and isinstance(raw_code, str)
    return (
        ParsedGrid(
            index=index,
            code=raw_code,
            name=name.strip(),
            type=grid_type,
            community_code=community,
            geometry=geometry,
            area_m2=0.0,
        ),
        [],
    )


# --- per-grid and per-community checks -------------------------------------------------------


def _repair_invalid(grids: list[ParsedGrid], geoms: np.ndarray) -> None:
    """Report invalid geometries and replace them (in ``grids`` and ``geoms``) by repairs."""
    invalid = np.flatnonzero(~shapely.is_valid(geoms))
    if len(invalid) == 0:
        return
    reasons = shapely.is_valid_reason(geoms[invalid])
    repaired = shapely.make_valid(geoms[invalid])
    for k, reason, fixed in zip(invalid, reasons, repaired, strict=True):
        grid = grids[k]
        point = None
        match = _REASON_POINT_RE.search(reason or "")
        if match:
            x, y = float(match.group(1)), float(match.group(2))
            if math.isfinite(x) and math.isfinite(y):
                point = [round(x, _POINT_DIGITS), round(y, _POINT_DIGITS)]
        text = _REASON_POINT_RE.sub("", reason or "").strip() or "invalid"
        grid.geometry = _polygonal(fixed)
        geoms[k] = grid.geometry
        grid.problems.append(
            _problem(
                "invalid_geometry",
                f"grid {grid.code} (features[{grid.index}]) has an invalid geometry: "
                f"{text}{_fmt_point(point)}; it was repaired with make_valid for checking",
                reason=reason,
                point=point,
            )
        )


def _check_overlaps(
    grids: list[ParsedGrid],
    geoms: np.ndarray,
    active: np.ndarray,
    community_ids: np.ndarray,
    tolerance_m2: float,
) -> None:
    """Report pairs of grids of one community whose interiors overlap by more than tolerance."""
    if len(active) < 2:
        return
    act = geoms[active]
    tree = shapely.STRtree(act)
    left, right = tree.query(act, predicate="intersects")
    keep = (left < right) & (community_ids[active][left] == community_ids[active][right])
    left, right = left[keep], right[keep]
    if len(left) == 0:
        return
    # Neighbours in a tiling touch along edges; only interior-interior contact is an overlap,
    # and the DE-9IM test is much cheaper than computing every shared edge.
    interior = shapely.relate_pattern(act[left], act[right], "T********")
    left, right = left[interior], right[interior]
    if len(left) == 0:
        return
    shared = shapely.intersection(act[left], act[right])
    areas = areas_m2(shared)
    order = np.lexsort((active[right], active[left]))
    for k in order:
        if areas[k] <= tolerance_m2:
            continue
        a, b = grids[active[left[k]]], grids[active[right[k]]]
        area = _round_area(areas[k])
        point = _point(_polygonal(shared[k]))
        for this, other in ((a, b), (b, a)):
            this.problems.append(
                _problem(
                    "overlap",
                    f"grid {this.code} (features[{this.index}]) overlaps grid {other.code} "
                    f"(features[{other.index}]) by {_fmt_area(area)}{_fmt_point(point)}",
                    **{"with": other.code},
                    with_index=other.index,
                    area_m2=area,
                    point=point,
                )
            )


def _check_outside(
    grids: list[ParsedGrid],
    geoms: np.ndarray,
    members: np.ndarray,
    boundary: BaseGeometry,
    tolerance_m2: float,
) -> None:
    """Report grids (indices ``members``) reaching outside their community's ``boundary``."""
    if len(members) == 0:
        return
    # ``boundary`` is prepared, and it must be the first argument for that to be used.
    inside = shapely.covers(boundary, geoms[members])
    outside = members[~inside]
    if len(outside) == 0:
        return
    spill = shapely.difference(geoms[outside], boundary)
    areas = areas_m2(spill)
    for k, piece, area in zip(outside, spill, areas, strict=True):
        if area <= tolerance_m2:
            continue
        grid = grids[k]
        point = _point(_polygonal(piece))
        grid.problems.append(
            _problem(
                "outside_community",
                f"grid {grid.code} (features[{grid.index}]) extends {_fmt_area(area)} outside "
                f"the boundary of community {grid.community_code}{_fmt_point(point)}",
                community=grid.community_code,
                area_m2=_round_area(area),
                point=point,
            )
        )


def _community_report(
    code: str,
    grid_count: int,
    member_geoms: np.ndarray,
    boundary: BaseGeometry | None,
    tolerance_m2: float,
) -> dict[str, Any]:
    """Return the community entry: union area and the gaps larger than tolerance."""
    union = shapely.union_all(member_geoms) if len(member_geoms) else MultiPolygon()
    if boundary is not None:
        uncovered = shapely.difference(boundary, union)
    else:
        # Without a boundary only enclosed holes can be gaps, and a hole that an input grid
        # itself has (a lake, an enclave of another community) is intentional.
        uncovered = _holes(np.array([union], dtype=object))
        if not uncovered.is_empty and len(member_geoms):
            intended = _holes(member_geoms)
            if not intended.is_empty:
                uncovered = shapely.difference(uncovered, intended)
    pieces = shapely.get_parts(np.array([_polygonal(uncovered)], dtype=object))
    piece_areas = areas_m2(pieces)
    gaps = [
        {"area_m2": _round_area(a), "point": _point(p)}
        for p, a in zip(pieces, piece_areas, strict=True)
        if a > tolerance_m2
    ]
    gaps.sort(key=lambda g: (-g["area_m2"], g["point"]))
    gap_area = _round_area(sum(g["area_m2"] for g in gaps))
    problems: list[Problem] = []
    if gaps:
        largest = gaps[0]
        problems.append(
            _problem(
                "gap",
                f"community {code} has {len(gaps)} gap(s) covered by no grid, "
                f"{_fmt_area(gap_area)} in total; the largest is {_fmt_area(largest['area_m2'])}"
                f"{_fmt_point(largest['point'])}",
                gap_area_m2=gap_area,
                gap_count=len(gaps),
            )
        )
    return {
        "code": code,
        "grid_count": grid_count,
        "boundary_known": boundary is not None,
        "area_m2": _round_area(areas_m2([union])[0]),
        "gap_area_m2": gap_area,
        "gaps": gaps,
        "problems": problems,
    }


def validate_grid_features(
    features: Sequence[Any],
    communities: Mapping[str, BaseGeometry | None],
    tolerance_m2: float = 1.0,
    required: Mapping[str, str | None] | None = None,
) -> GridSetReport:
    """Validate the features of a grid GeoJSON FeatureCollection against the admin tree.

    ``communities`` maps every community code of the administrative tree that the file may use
    to its lon/lat boundary, or None when the boundary is unknown. Overlaps, parts outside a
    boundary and gap pieces of at most ``tolerance_m2`` are ignored as digitising slivers.
    ``required`` maps the communities the file replaces (those of the version's region) to
    their names: each one left without any usable grid gets ``community_without_grids``.

    Returns a GridSetReport. A feature with any feature-level problem (geometry type, unreadable
    or out-of-range coordinates, code format, missing name, invalid type) is not a grid and takes
    no part in the spatial checks, so the area it was meant to cover may also show up as a gap.
    A duplicated code is reported on every copy but the first (which is the one kept by code);
    each overlap is reported on both grids. A grid whose area is at most ``tolerance_m2`` gets
    ``empty_geometry`` and is left out of the spatial checks. Raises TypeError if ``features`` is not a sequence
    and ValueError if ``tolerance_m2`` is negative or not finite.
    """
    if isinstance(features, (str, bytes, Mapping)) or not isinstance(features, Sequence):
        raise TypeError("features must be a list of GeoJSON Feature objects")
    if not isinstance(tolerance_m2, (int, float)) or not math.isfinite(tolerance_m2):
        raise ValueError(f"tolerance_m2 must be a finite number, got {tolerance_m2!r}")
    if tolerance_m2 < 0:
        raise ValueError(f"tolerance_m2 must not be negative, got {tolerance_m2!r}")
    tolerance_m2 = float(tolerance_m2)

    grids: list[ParsedGrid] = []
    feature_problems: list[Problem] = []
    for index, feature in enumerate(features):
        grid, problems = _parse_feature(index, feature)
        feature_problems.extend(problems)
        if grid is not None:
            grids.append(grid)

    geoms = np.empty(len(grids), dtype=object)
    geoms[:] = [g.geometry for g in grids]

    first_by_code: dict[str, ParsedGrid] = {}
    for grid in grids:
        first = first_by_code.setdefault(grid.code, grid)
        if first is not grid:
            grid.problems.append(
                _problem(
                    "duplicate_code",
                    f"grid {grid.code} (features[{grid.index}]) repeats the code of "
                    f"features[{first.index}]",
                    first_index=first.index,
                )
            )
        if grid.community_code not in communities:
            grid.problems.append(
                _problem(
                    "unknown_community",
                    f"grid {grid.code} (features[{grid.index}]) belongs to community "
                    f"{grid.community_code}, which is not in the administrative tree; the "
                    "grid is left out of the version (import the community first)",
                    community=grid.community_code,
                )
            )

    _repair_invalid(grids, geoms)

    areas = areas_m2(geoms)
    for grid, area in zip(grids, areas, strict=True):
        grid.area_m2 = float(area)
    # A grid no bigger than a tolerated sliver cannot be a real grid; it is left out of the
    # spatial checks, which it could only disturb.
    empty = shapely.is_empty(geoms) | (areas <= tolerance_m2)
    for k in np.flatnonzero(empty):
        grid = grids[k]
        grid.problems.append(
            _problem(
                "empty_geometry",
                f"grid {grid.code} (features[{grid.index}]) has "
                + (
                    "an empty geometry"
                    if grid.geometry.is_empty
                    else f"an area of only {_fmt_area(grid.area_m2)}"
                ),
                area_m2=_round_area(grid.area_m2),
            )
        )

    community_codes = sorted({g.community_code for g in grids})
    community_index = {c: i for i, c in enumerate(community_codes)}
    community_ids = np.array([community_index[g.community_code] for g in grids], dtype=np.int64)
    # The later copies of a code are not grids of the version (the import keeps the first):
    # counted in, they covered the area their first copy leaves uncovered, and the report
    # promised no gap where activation left points routed nowhere.
    later = np.array([first_by_code[g.code] is not g for g in grids], dtype=bool)
    active = np.flatnonzero(~empty & ~later)

    _check_overlaps(grids, geoms, active, community_ids, tolerance_m2)

    members_of: dict[int, list[int]] = defaultdict(list)
    for k in active:
        members_of[int(community_ids[k])].append(int(k))
    counts = np.bincount(community_ids[active], minlength=len(community_codes))

    community_reports: list[dict[str, Any]] = []
    for cid, code in enumerate(community_codes):
        raw = communities.get(code)
        boundary = _polygonal(shapely.make_valid(raw)) if raw is not None else None
        if boundary is not None and boundary.is_empty:
            boundary = None
        members = np.array(members_of.get(cid, []), dtype=np.int64)
        if boundary is not None:
            shapely.prepare(boundary)
            _check_outside(grids, geoms, members, boundary, tolerance_m2)
        community_reports.append(
            _community_report(code, int(counts[cid]), geoms[members], boundary, tolerance_m2)
        )

    if required:
        served = {grids[k].community_code for k in active}
        by_code = {c["code"]: c for c in community_reports}
        for code in sorted(set(required) - served):
            entry = by_code.get(code)
            if entry is None:
                raw = communities.get(code)
                boundary = _polygonal(shapely.make_valid(raw)) if raw is not None else None
                if boundary is not None and boundary.is_empty:
                    boundary = None
                entry = _community_report(
                    code, 0, np.empty(0, dtype=object), boundary, tolerance_m2
                )
                # The whole community is the gap: the problem below says it, once.
                entry["problems"] = []
                community_reports.append(entry)
            entry["problems"].append(_community_without_grids(code, required[code]))

    return GridSetReport(
        grids=grids,
        feature_problems=feature_problems,
        communities=community_reports,
        tolerance_m2=tolerance_m2,
    )


def _community_without_grids(code: str, name: str | None) -> Problem:
    label = f"community {code}" + (f" ({name})" if name else "")
    return _problem(
        "community_without_grids",
        f"{label} has no grid in this file: activating the version takes its grids out of "
        "service and leaves it without any, so its cases go unrouted; add its grids, or "
        "import only the communities to replace (a file of one community is that "
        "community's version)",
        community=code,
        name=name,
    )
