"""Geodesic measurements on the WGS-84 ellipsoid for lon/lat (EPSG:4326) geometries."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import shapely
from pyproj import Geod
from shapely.geometry.base import BaseGeometry

# One Geod for the whole process: constructing it parses the ellipsoid definition each time.
_GEOD = Geod(ellps="WGS84")

_A = 6378137.0  # WGS-84 semi-major axis (m)
_F = 1.0 / 298.257223563  # WGS-84 flattening
_E2 = _F * (2.0 - _F)  # first eccentricity squared

# The meridian radius of curvature M = a(1 - e²)/(1 - e² sin²φ)^1.5 is smallest at the equator,
# so no degree of latitude anywhere is shorter than this.
_MIN_METRES_PER_DEGREE_LAT = _A * (1.0 - _E2) * math.pi / 180.0
# Absorbs floating-point rounding so the bound stays on the safe side.
_SAFETY = 1.000001

_POLYGON = 3
_COLLECTION_TYPES = (4, 5, 6, 7)  # MultiPoint, MultiLineString, MultiPolygon, GeometryCollection


def _polygon_parts(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Explode geometries down to single Polygons.

    Returns (polygons, owner) where owner[i] is the index in ``geoms`` that polygons[i] came from;
    non-polygonal parts (points, lines) are dropped because they have no area.
    """
    parts, owner = shapely.get_parts(geoms, return_index=True)
    # get_parts only goes one level down; nested GeometryCollections need further passes.
    while True:
        type_ids = shapely.get_type_id(parts)
        nested = np.isin(type_ids, _COLLECTION_TYPES)
        if not nested.any():
            break
        sub, sub_owner = shapely.get_parts(parts[nested], return_index=True)
        keep = ~nested
        parts = np.concatenate([parts[keep], sub])
        owner = np.concatenate([owner[keep], owner[nested][sub_owner]])
    polygonal = shapely.get_type_id(parts) == _POLYGON
    return parts[polygonal], owner[polygonal]


def areas_m2(geoms: Iterable[BaseGeometry | None]) -> np.ndarray:
    """Geodesic areas in m² of many lon/lat geometries at once.

    Returns a float64 array with one entry per input: the area of the polygonal parts (exterior
    rings minus holes), 0.0 for None, empty and non-polygonal geometries. Ring orientation does
    not matter. Results are meaningful for valid geometries only (an invalid polygon whose hole
    lies outside its shell may be clamped to 0).
    """
    arr = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    arr = arr.ravel()
    result = np.zeros(len(arr), dtype=np.float64)
    if len(arr) == 0:
        return result
    polygons, owner = _polygon_parts(arr)
    if len(polygons) == 0:
        return result
    rings, ring_polygon = shapely.get_rings(polygons, return_index=True)
    if len(rings) == 0:
        return result
    # get_rings lists each polygon's exterior first, then its holes.
    is_exterior = np.ones(len(rings), dtype=bool)
    is_exterior[1:] = ring_polygon[1:] != ring_polygon[:-1]
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    counts = np.bincount(coord_ring, minlength=len(rings))
    ends = np.cumsum(counts)
    starts = ends - counts
    lons = coords[:, 0]
    lats = coords[:, 1]
    ring_area = np.empty(len(rings), dtype=np.float64)
    polygon_area_perimeter = _GEOD.polygon_area_perimeter
    for k in range(len(rings)):
        # Rings are closed (last point == first); the geodesic routine closes them itself.
        s, e = starts[k], ends[k] - 1
        if e - s < 3:
            ring_area[k] = 0.0
            continue
        ring_area[k] = abs(polygon_area_perimeter(lons[s:e], lats[s:e])[0])
    # Using |area| of each ring with a fixed sign makes the result independent of orientation.
    signed = np.where(is_exterior, ring_area, -ring_area)
    per_polygon = np.bincount(ring_polygon, weights=signed, minlength=len(polygons))
    result += np.bincount(owner, weights=per_polygon, minlength=len(arr))
    return np.maximum(result, 0.0)


def area_m2(geom: BaseGeometry) -> float:
    """Absolute geodesic area in m² of a lon/lat (multi)polygon on the WGS-84 ellipsoid.

    Returns 0.0 for empty or non-polygonal geometries; polygonal parts of a GeometryCollection
    are summed. Raises TypeError if ``geom`` is not a shapely geometry.
    """
    if not isinstance(geom, BaseGeometry):
        raise TypeError(f"expected a shapely geometry, got {type(geom).__name__}")
    return float(areas_m2([geom])[0])


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Geodesic distance in metres between two lon/lat points on the WGS-84 ellipsoid.

    Returns a non-negative float.
    """
    _, _, dist = _GEOD.inv(lon1, lat1, lon2, lat2)
    return float(dist)


def metres_to_degrees(metres: float, lat: float) -> float:
    """Conservative search radius in degrees covering ``metres`` in any direction at ``lat``.

    Returns r such that every point within geodesic distance ``metres`` of any point at latitude
    ``lat`` differs from it by at most r degrees in latitude and in longitude, so a box of ±r
    degrees (e.g. an STRtree query with predicate "dwithin" and distance r) never misses it.
    Returns 180.0 when the circle reaches a pole (every longitude is then possible).
    Raises ValueError for negative or non-finite ``metres`` or ``lat`` outside [-90, 90].
    """
    if not math.isfinite(metres) or metres < 0:
        raise ValueError(f"metres must be a finite non-negative number, got {metres!r}")
    if not math.isfinite(lat) or not -90.0 <= lat <= 90.0:
        raise ValueError(f"lat must be within [-90, 90], got {lat!r}")
    # Moving north/south, every metre buys at most 1/_MIN_METRES_PER_DEGREE_LAT degrees.
    dlat = metres / _MIN_METRES_PER_DEGREE_LAT * _SAFETY
    phi_max = abs(lat) + dlat
    if phi_max >= 90.0:
        return 180.0
    # Moving east/west, ds >= N cos φ dλ >= a cos φ dλ (N >= a), and along any path of length
    # ``metres`` the latitude stays within ±dlat, so cos φ >= cos(phi_max).
    metres_per_degree_lon = _A * math.cos(math.radians(phi_max)) * math.pi / 180.0
    dlon = metres / metres_per_degree_lon * _SAFETY
    return min(max(dlat, dlon), 180.0)
