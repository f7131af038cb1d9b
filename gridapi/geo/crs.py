"""Conversions between WGS-84, CGCS2000, GCJ-02 and BD-09 coordinates (lon, lat in degrees)."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "SUPPORTED_CRS",
    "UnknownCRS",
    "bd09_to_gcj02",
    "bd09_to_wgs84",
    "gcj02_to_bd09",
    "gcj02_to_wgs84",
    "out_of_china",
    "to_wgs84",
    "to_wgs84_many",
    "wgs84_to_bd09",
    "wgs84_to_gcj02",
]

FloatArray = npt.NDArray[np.float64]
_T = TypeVar("_T", float, FloatArray)

SUPPORTED_CRS: Final = ("wgs84", "cgcs2000", "gcj02", "bd09")

# Krasovsky 1940 ellipsoid, which the GCJ-02 offset formula uses to turn its
# pseudo-metre offsets into degrees.
_KRASOVSKY_A: Final = 6378245.0
_KRASOVSKY_EE: Final = 0.00669342162296594323
_DEG_PER_PARALLEL_UNIT: Final = 180.0 / (math.pi * _KRASOVSKY_A)
_DEG_PER_MERIDIAN_UNIT: Final = 180.0 / (math.pi * _KRASOVSKY_A * (1.0 - _KRASOVSKY_EE))

# BD-09 constants.
_X_PI: Final = math.pi * 3000.0 / 180.0
_BD_LON_SHIFT: Final = 0.0065
_BD_LAT_SHIFT: Final = 0.006

# The rectangle that the public implementations treat as "China".
_CHINA_MIN_LON: Final = 72.004
_CHINA_MAX_LON: Final = 137.8347
_CHINA_MIN_LAT: Final = 0.8293
_CHINA_MAX_LAT: Final = 55.8271

# Iterative inverses stop once a correction step is below _TOLERANCE degrees
# (about 10 micrometres) in both coordinates, or after _MAX_ITERATIONS steps.
_TOLERANCE: Final = 1e-10
_MAX_ITERATIONS: Final = 30

_Forward = Callable[[_T, _T, ModuleType], tuple[_T, _T]]


class UnknownCRS(ValueError):
    """Raised when a CRS name is not one of SUPPORTED_CRS."""

    def __init__(self, crs: object) -> None:
        """Store the offending name in ``self.crs`` and build the message."""
        super().__init__(f"unknown CRS {crs!r}; expected one of {', '.join(SUPPORTED_CRS)}")
        self.crs = crs


# --------------------------------------------------------------------------
# Forward formulas, written once and evaluated either with ``math`` (scalars)
# or ``numpy`` (arrays): both modules provide sin, cos, sqrt and fabs.
# --------------------------------------------------------------------------


def _sin3(s: _T) -> _T:
    """Return sin(3t) given s = sin(t) (triple-angle identity; saves a sin call)."""
    return s * (3.0 - 4.0 * s * s)


def _gcj02_forward(lon: _T, lat: _T, xp: ModuleType) -> tuple[_T, _T]:
    """Return the GCJ-02 position of the WGS-84 point, with no out-of-China test."""
    x = lon - 105.0
    y = lat - 35.0
    px = math.pi * x
    py = math.pi * y
    sin_2px = xp.sin(2.0 * px)
    sin_px3 = xp.sin(px / 3.0)
    sin_py3 = xp.sin(py / 3.0)
    common = 20.0 * _sin3(sin_2px) + 20.0 * sin_2px  # 20 sin(6 pi x) + 20 sin(2 pi x)
    wave_lon = (
        common
        + 20.0 * _sin3(sin_px3)  # sin(pi x)
        + 40.0 * sin_px3
        + 150.0 * xp.sin(px / 12.0)
        + 300.0 * xp.sin(px / 30.0)
    )
    wave_lat = (
        common
        + 20.0 * _sin3(sin_py3)  # sin(pi y)
        + 40.0 * sin_py3
        + 160.0 * xp.sin(py / 12.0)
        + 320.0 * xp.sin(py / 30.0)
    )
    xy = 0.1 * x * y
    root = xp.sqrt(xp.fabs(x))
    offset_lon = 300.0 + x + 2.0 * y + 0.1 * x * x + xy + 0.1 * root + wave_lon * (2.0 / 3.0)
    offset_lat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + xy + 0.2 * root + wave_lat * (2.0 / 3.0)

    # The offsets are (pseudo) metres on the Krasovsky ellipsoid: divide by the
    # parallel radius a*cos(phi)/W and the meridian radius a(1-e^2)/W^3, where
    # W = sqrt(1 - e^2 sin^2 phi). In China 0 < phi < 90 deg, so cos(phi) > 0.
    sin2_phi = xp.sin(lat * (math.pi / 180.0)) ** 2
    w2 = 1.0 - _KRASOVSKY_EE * sin2_phi
    w = xp.sqrt(w2)
    cos_phi = xp.sqrt(1.0 - sin2_phi)
    dlon = offset_lon * w / cos_phi * _DEG_PER_PARALLEL_UNIT
    dlat = offset_lat * (w2 * w) * _DEG_PER_MERIDIAN_UNIT
    return lon + dlon, lat + dlat


def _bd09_forward(lon: _T, lat: _T, xp: ModuleType) -> tuple[_T, _T]:
    """Return the BD-09 position of the GCJ-02 point, with no out-of-China test.

    BD-09 scales the radius r = |(lon, lat)| by 1 + 0.00002 sin(lat x_pi) / r,
    turns the point by d = 0.000003 cos(lon x_pi) radians, then shifts it by
    (0.0065, 0.006). The rotation is applied as a rotation matrix instead of
    through atan2/cos/sin; since |d| <= 3e-6, sin d = d and cos d = 1 - d^2/2
    hold to far below double precision.
    """
    radius = xp.sqrt(lon * lon + lat * lat)
    scale = 1.0 + 0.00002 * xp.sin(lat * _X_PI) / radius
    turn = 0.000003 * xp.cos(lon * _X_PI)
    cos_turn = 1.0 - 0.5 * turn * turn
    bd_lon = scale * (lon * cos_turn - lat * turn) + _BD_LON_SHIFT
    bd_lat = scale * (lat * cos_turn + lon * turn) + _BD_LAT_SHIFT
    return bd_lon, bd_lat


# --------------------------------------------------------------------------
# Iterative inverses.
# --------------------------------------------------------------------------


def _invert_scalar(forward: _Forward[float], lon: float, lat: float) -> tuple[float, float]:
    """Return the point p with forward(p) == (lon, lat), by fixed-point iteration.

    Starts from the target itself and repeatedly subtracts the forward error;
    the first step alone is the usual "one-step" (metre-level) inverse.
    """
    x, y = lon, lat
    for _ in range(_MAX_ITERATIONS):
        fx, fy = forward(x, y, math)
        err_x = fx - lon
        err_y = fy - lat
        x -= err_x
        y -= err_y
        if abs(err_x) < _TOLERANCE and abs(err_y) < _TOLERANCE:
            break
    return x, y


def _invert_array(
    forward: _Forward[FloatArray], lon: FloatArray, lat: FloatArray
) -> tuple[FloatArray, FloatArray]:
    """Vectorised ``_invert_scalar`` over 1-D arrays; returns new arrays.

    Every point takes exactly the steps the scalar version would take: a point
    leaves the working set once its own correction is below the tolerance, and
    the loop ends when the working set is empty (or after _MAX_ITERATIONS).
    """
    out_x = lon.copy()
    out_y = lat.copy()
    index = np.arange(lon.size)
    target_x, target_y = lon, lat
    x, y = out_x.copy(), out_y.copy()
    for _ in range(_MAX_ITERATIONS):
        if index.size == 0:
            break
        fx, fy = forward(x, y, np)
        err_x = fx - target_x
        err_y = fy - target_y
        x -= err_x
        y -= err_y
        out_x[index] = x
        out_y[index] = y
        pending = ~((np.fabs(err_x) < _TOLERANCE) & (np.fabs(err_y) < _TOLERANCE))
        if not pending.all():
            index = index[pending]
            x, y = x[pending], y[pending]
            target_x, target_y = target_x[pending], target_y[pending]
    return out_x, out_y


# --------------------------------------------------------------------------
# Scalar API.
# --------------------------------------------------------------------------


def out_of_china(lon: float, lat: float) -> bool:
    """Return True if (lon, lat) lies outside the rectangle where GCJ-02 applies.

    The rectangle is lon 72.004..137.8347, lat 0.8293..55.8271, as in the common
    public implementations. NaN coordinates count as outside.
    """
    inside = _CHINA_MIN_LON <= lon <= _CHINA_MAX_LON and _CHINA_MIN_LAT <= lat <= _CHINA_MAX_LAT
    return not inside


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """Return the GCJ-02 (lon, lat) of a WGS-84 point; points outside China are unchanged."""
    lon, lat = float(lon), float(lat)
    if out_of_china(lon, lat):
        return lon, lat
    return _gcj02_forward(lon, lat, math)


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """Return the WGS-84 (lon, lat) of a GCJ-02 point; points outside China are unchanged.

    Uses the iterative inverse of ``wgs84_to_gcj02`` (sub-millimetre), not the
    metre-level one-step approximation.
    """
    lon, lat = float(lon), float(lat)
    if out_of_china(lon, lat):
        return lon, lat
    return _invert_scalar(_gcj02_forward, lon, lat)


def gcj02_to_bd09(lon: float, lat: float) -> tuple[float, float]:
    """Return the BD-09 (lon, lat) of a GCJ-02 point; points outside China are unchanged.

    Baidu uses WGS-84 outside China (mainland, Hong Kong, Macao and Taiwan), so
    no BD-09 distortion is applied there.
    """
    lon, lat = float(lon), float(lat)
    if out_of_china(lon, lat):
        return lon, lat
    return _bd09_forward(lon, lat, math)


def bd09_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """Return the GCJ-02 (lon, lat) of a BD-09 point; points outside China are unchanged.

    Uses the iterative inverse of ``gcj02_to_bd09``.
    """
    lon, lat = float(lon), float(lat)
    if out_of_china(lon, lat):
        return lon, lat
    return _invert_scalar(_bd09_forward, lon, lat)


def wgs84_to_bd09(lon: float, lat: float) -> tuple[float, float]:
    """Return the BD-09 (lon, lat) of a WGS-84 point (via GCJ-02)."""
    return gcj02_to_bd09(*wgs84_to_gcj02(lon, lat))


def bd09_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """Return the WGS-84 (lon, lat) of a BD-09 point (via GCJ-02, both steps iterative)."""
    return gcj02_to_wgs84(*bd09_to_gcj02(lon, lat))


def _passthrough(lon: float, lat: float) -> tuple[float, float]:
    """Return (lon, lat) as floats: WGS-84 and CGCS2000 are treated as identical."""
    return float(lon), float(lat)


_TO_WGS84: Final[dict[str, Callable[[float, float], tuple[float, float]]]] = {
    "wgs84": _passthrough,
    "cgcs2000": _passthrough,
    "gcj02": gcj02_to_wgs84,
    "bd09": bd09_to_wgs84,
}


def _converter(crs: object) -> Callable[[float, float], tuple[float, float]]:
    """Return the scalar converter to WGS-84 for ``crs``; raise UnknownCRS if unsupported."""
    try:
        return _TO_WGS84[crs]  # type: ignore[index]
    except (KeyError, TypeError):  # TypeError: unhashable crs
        raise UnknownCRS(crs) from None


# How near 0°, 0° a position is no fix (about a tenth of a millimetre; nobody patrols there).
_NO_FIX_DEGREES = 1e-9


def no_fix(lon: float, lat: float) -> bool:
    """Whether a phone's position is 0°, 0°: what location services give before they have a
    fix (in the Gulf of Guinea, far from any grid), whatever the coordinate system. Baidu's
    SDK writes 4.9E-324 for both (the smallest double, not quite zero): the same. Callers
    keep the time of such a position but not the place."""
    return abs(lon) < _NO_FIX_DEGREES and abs(lat) < _NO_FIX_DEGREES


def to_wgs84(lon: float, lat: float, crs: str) -> tuple[float, float]:
    """Return the WGS-84 (lon, lat) of a point given in ``crs``.

    ``crs`` must be one of SUPPORTED_CRS (exact, lower case); "wgs84" and
    "cgcs2000" pass through. Raises UnknownCRS for any other value.
    """
    return _converter(crs)(lon, lat)


# --------------------------------------------------------------------------
# Vectorised API.
# --------------------------------------------------------------------------


def _inside_china(lon: FloatArray, lat: FloatArray) -> npt.NDArray[np.bool_]:
    """Return the element-wise negation of ``out_of_china`` (NaN counts as outside)."""
    return (
        (lon >= _CHINA_MIN_LON)
        & (lon <= _CHINA_MAX_LON)
        & (lat >= _CHINA_MIN_LAT)
        & (lat <= _CHINA_MAX_LAT)
    )


def _invert_inside_china(forward: _Forward[FloatArray], lon: FloatArray, lat: FloatArray) -> None:
    """Replace, in place, the in-China points of 1-D ``lon``/``lat`` by their inverse."""
    inside = _inside_china(lon, lat)
    if inside.all():
        lon[:], lat[:] = _invert_array(forward, lon, lat)
        return
    index = np.flatnonzero(inside)
    if index.size:
        lon[index], lat[index] = _invert_array(forward, lon[index], lat[index])


def to_wgs84_many(
    lons: npt.ArrayLike, lats: npt.ArrayLike, crs: str
) -> tuple[FloatArray, FloatArray]:
    """Return new float64 arrays (lons, lats) in WGS-84 for points given in ``crs``.

    Element-wise equal (to floating-point noise) to ``to_wgs84``; the inputs are
    not modified and the outputs have the inputs' shape. Raises UnknownCRS for
    an unsupported ``crs`` and ValueError if the two inputs differ in shape.
    """
    _converter(crs)
    lon = np.array(lons, dtype=np.float64)
    lat = np.array(lats, dtype=np.float64)
    if lon.shape != lat.shape:
        raise ValueError(f"lons and lats differ in shape: {lon.shape} != {lat.shape}")
    flat_lon = lon.reshape(-1)
    flat_lat = lat.reshape(-1)
    if crs == "bd09":
        _invert_inside_china(_bd09_forward, flat_lon, flat_lat)
    if crs in ("bd09", "gcj02"):
        _invert_inside_china(_gcj02_forward, flat_lon, flat_lat)
    return lon, lat
