"""Geodesic measurements on the WGS-84 ellipsoid for lon/lat (EPSG:4326) geometries.

pyproj is deliberately not used: its bundled PROJ clashes with the system PROJ that
mod_spatialite loads into the same process (a double free at exit). Areas come from the
ellipsoid's exact equal-area (authalic) cylindrical projection, which shapely then measures;
distances from geographiclib, Karney's reference implementation in pure Python.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import shapely
from geographiclib.geodesic import Geodesic
from shapely.geometry.base import BaseGeometry

_A = 6378137.0  # WGS-84 semi-major axis (m)
_F = 1.0 / 298.257223563  # WGS-84 flattening
_E2 = _F * (2.0 - _F)  # first eccentricity squared
_E = math.sqrt(_E2)

# The meridian radius of curvature M = a(1 - e²)/(1 - e² sin²φ)^1.5 is smallest at the equator,
# so no degree of latitude anywhere is shorter than this.
_MIN_METRES_PER_DEGREE_LAT = _A * (1.0 - _E2) * math.pi / 180.0
# Absorbs floating-point rounding so the bound stays on the safe side.
_SAFETY = 1.000001


def _q(sin_phi: np.ndarray | float) -> np.ndarray | float:
    # Snyder (1987) eq. 3-12: the authalic function q(φ).
    return (1.0 - _E2) * (
        sin_phi / (1.0 - _E2 * sin_phi * sin_phi)
        - np.log((1.0 - _E * sin_phi) / (1.0 + _E * sin_phi)) / (2.0 * _E)
    )


_QP = float(_q(1.0))
_RQ = _A * math.sqrt(_QP / 2.0)  # authalic radius


def _equal_area(coords: np.ndarray) -> np.ndarray:
    """Project lon/lat degrees to the ellipsoid's cylindrical equal-area plane (metres)."""
    lam = np.radians(coords[:, 0])
    q = _q(np.sin(np.radians(coords[:, 1])))
    return np.column_stack([_RQ * lam, _RQ * q / _QP])


def areas_m2(geoms: Iterable[BaseGeometry | None]) -> np.ndarray:
    """Return the areas in m² of many lon/lat geometries at once (0.0 for None or empty).

    Exact for the ellipsoid up to the difference between a geodesic edge and a straight edge
    in the equal-area plane, far below a square metre for grid-sized polygons.
    """
    arr = np.asarray(list(geoms) if not isinstance(geoms, np.ndarray) else geoms, dtype=object)
    arr = arr.ravel()
    if len(arr) == 0:
        return np.zeros(0, dtype=np.float64)
    projected = shapely.transform(arr, _equal_area)
    return np.nan_to_num(shapely.area(projected), nan=0.0)


def area_m2(geom: BaseGeometry) -> float:
    """Return the area in m² of a lon/lat (multi)polygon on the WGS-84 ellipsoid.

    Returns 0.0 for empty or non-polygonal geometries. Raises TypeError for a non-geometry.
    """
    if not isinstance(geom, BaseGeometry):
        raise TypeError(f"expected a shapely geometry, got {type(geom).__name__}")
    return float(areas_m2([geom])[0])


def distance_m(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    """Return the geodesic distance in metres between two lon/lat points (WGS-84)."""
    return float(Geodesic.WGS84.Inverse(lat1, lon1, lat2, lon2, Geodesic.DISTANCE)["s12"])


def metres_per_degree(lat: Any) -> tuple[Any, Any]:
    """Return how many metres one degree of longitude and of latitude span at ``lat`` (a
    number or an array) on the WGS-84 ellipsoid, from its prime vertical and meridian
    radii: a local plane in which nearest points are nearest on the ground too, to a small
    fraction over tens of metres."""
    phi = np.radians(lat)
    s = np.sin(phi)
    w = np.sqrt(1.0 - _E2 * s * s)
    rad = np.pi / 180.0
    return _A / w * np.cos(phi) * rad, _A * (1.0 - _E2) / w**3 * rad


def local_distance_m(lons1: Any, lats1: Any, lons2: Any, lats2: Any) -> Any:
    """Return distances in metres measured in the local plane at the points' mean latitude
    (under 1e-8 relative error against the geodesic below 1 km; within a fraction of a
    percent up to tens of kilometres). Vectorised: numbers or arrays."""
    kx, ky = metres_per_degree((np.asarray(lats1) + np.asarray(lats2)) / 2.0)
    dlon = (np.asarray(lons2) - np.asarray(lons1) + 180.0) % 360.0 - 180.0
    return np.hypot(ky * (np.asarray(lats2) - np.asarray(lats1)), kx * dlon)


def metres_to_latitude_degrees(metres: float) -> float:
    """Conservative north-south search half-height in degrees covering ``metres`` anywhere:
    no degree of latitude is shorter than at the equator (110,574 m), so a box of ±this many
    degrees of latitude never misses a point within ``metres``."""
    return metres / _MIN_METRES_PER_DEGREE_LAT * _SAFETY


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
