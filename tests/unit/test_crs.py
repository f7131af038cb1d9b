"""Tests for gridapi.geo.crs: WGS-84 / CGCS2000 / GCJ-02 / BD-09 conversions."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridapi.geo import crs
from gridapi.geo.crs import (
    SUPPORTED_CRS,
    UnknownCRS,
    bd09_to_gcj02,
    bd09_to_wgs84,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    out_of_china,
    to_wgs84,
    to_wgs84_many,
    wgs84_to_bd09,
    wgs84_to_gcj02,
)

Point = tuple[float, float]
Convert = Callable[[float, float], Point]

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG)


def haversine_m(a: Point, b: Point) -> float:
    """Return the great-circle distance in metres between two (lon, lat) points."""
    lon1, lat1 = map(math.radians, a)
    lon2, lat2 = map(math.radians, b)
    h = (
        math.sin((lat2 - lat1) / 2) ** 2
        + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(h))


def assert_close_deg(got: Point, want: Point, tol: float = 1e-6) -> None:
    """Assert both coordinates agree within ``tol`` degrees."""
    assert abs(got[0] - want[0]) <= tol, (got, want)
    assert abs(got[1] - want[1]) <= tol, (got, want)


# ---------------------------------------------------------------------------
# 1. Published vectors from independent public implementations (numbers only;
#    every pair below is written (lon, lat), whatever order the source used).
# ---------------------------------------------------------------------------

# googollee/eviltransform, python/test.py (the same table is in its go/, c/,
# csharp/, javascript/ and matlab/ tests; stored there as lat, lng).
WGS_GCJ_EVILTRANSFORM = [
    pytest.param((116.377817, 39.911954), (116.38404722455657, 39.91334545536069), id="beijing"),
    pytest.param((121.5272106, 31.1774276), (121.531541859215, 31.17530398364597), id="shanghai"),
    pytest.param((113.912316, 22.543847), (113.9171764808363, 22.540796131694766), id="shenzhen"),
]

# wandergis/coordtransform, test/app.js (the same numbers are asserted by
# dromara/hutool's CoordinateUtilTest).
WGS_GCJ_COORDTRANSFORM = [
    pytest.param((116.404, 39.915), (116.41024449916938, 39.91640428150164), id="beijing-2"),
]
GCJ_BD_COORDTRANSFORM = [
    pytest.param((116.404, 39.915), (116.41036949371029, 39.92133699351021), id="beijing"),
]

# dromara/hutool, hutool-core/src/test/java/cn/hutool/core/util/CoordinateUtilTest.java
# (wgs84toBd09Test and wgs84toBd09Test2, the latter checked against tool.lu).
WGS_BD_HUTOOL = [
    pytest.param((116.404, 39.915), (116.41662724378733, 39.922699552216216), id="beijing"),
    pytest.param((122.99395597, 44.99804071), (123.00636516028885, 45.0063690918959), id="jilin"),
]

# hujiulong/gcoord, test/fixtures/china-cities.json: (WGS84, GCJ02, BD09) per
# city, rounded to 1e-7 degree. Its GCJ02 -> BD09 pairs agree with the formula
# to < 1e-7 degree. Its WGS84 column sits a steady ~0.5-0.9 m away from the
# formula's inverse of its GCJ02 column (gcoord itself only checks it to 4
# decimals), so that column is checked separately, at 1 m.
GCOORD_CITIES = {
    "urumqi": ((87.6140048, 43.824388), (87.6168579, 43.8255962), (87.6232918, 43.8317719)),
    "aksu": ((80.2584377, 41.1677969), (80.2606106, 41.1687815), (80.2670534, 41.1749125)),
    "lhasa": ((91.1706414, 29.655277), (91.1721167, 29.6524954), (91.1786184, 29.6585294)),
    "shanghai": ((121.4691633, 31.2323443), (121.4737061, 31.2304194), (121.4802435, 31.2363541)),
    "shenzhen": ((114.0527534, 22.5458236), (114.0578659, 22.5431014), (114.064418, 22.5487584)),
    "sanya": ((109.507813, 18.2545417), (109.5119135, 18.2528524), (109.5184703, 18.2585878)),
    "tahe": ((124.7038236, 52.3338635), (124.7115324, 52.3352664), (124.7180582, 52.3412419)),
}
GCJ_BD_GCOORD = [pytest.param(gcj, bd, id=name) for name, (_, gcj, bd) in GCOORD_CITIES.items()]
WGS_GCJ_GCOORD = [pytest.param(wgs, gcj, id=name) for name, (wgs, gcj, _) in GCOORD_CITIES.items()]


@pytest.mark.parametrize(("wgs", "gcj"), WGS_GCJ_EVILTRANSFORM + WGS_GCJ_COORDTRANSFORM)
def test_wgs84_to_gcj02_matches_published(wgs: Point, gcj: Point) -> None:
    assert_close_deg(wgs84_to_gcj02(*wgs), gcj)


@pytest.mark.parametrize(("wgs", "gcj"), WGS_GCJ_EVILTRANSFORM + WGS_GCJ_COORDTRANSFORM)
def test_gcj02_to_wgs84_matches_published(wgs: Point, gcj: Point) -> None:
    assert haversine_m(gcj02_to_wgs84(*gcj), wgs) < 0.5
    assert haversine_m(to_wgs84(*gcj, "gcj02"), wgs) < 0.5


@pytest.mark.parametrize(("gcj", "bd"), GCJ_BD_COORDTRANSFORM + GCJ_BD_GCOORD)
def test_gcj02_to_bd09_matches_published(gcj: Point, bd: Point) -> None:
    assert_close_deg(gcj02_to_bd09(*gcj), bd)


@pytest.mark.parametrize(("gcj", "bd"), GCJ_BD_COORDTRANSFORM + GCJ_BD_GCOORD)
def test_bd09_to_gcj02_matches_published(gcj: Point, bd: Point) -> None:
    assert haversine_m(bd09_to_gcj02(*bd), gcj) < 0.5


@pytest.mark.parametrize(("wgs", "bd"), WGS_BD_HUTOOL)
def test_wgs84_to_bd09_matches_published(wgs: Point, bd: Point) -> None:
    assert_close_deg(wgs84_to_bd09(*wgs), bd)


@pytest.mark.parametrize(("wgs", "bd"), WGS_BD_HUTOOL)
def test_bd09_to_wgs84_matches_published(wgs: Point, bd: Point) -> None:
    assert haversine_m(bd09_to_wgs84(*bd), wgs) < 0.5
    assert haversine_m(to_wgs84(*bd, "bd09"), wgs) < 0.5


@pytest.mark.parametrize(("wgs", "gcj"), WGS_GCJ_GCOORD)
def test_gcoord_wgs84_column_within_a_metre(wgs: Point, gcj: Point) -> None:
    # See GCOORD_CITIES: this fixture's WGS84 column is only metre-consistent.
    assert haversine_m(wgs84_to_gcj02(*wgs), gcj) < 1.0
    assert haversine_m(gcj02_to_wgs84(*gcj), wgs) < 1.0


# ---------------------------------------------------------------------------
# 2. Round trips over China's rectangle.
# ---------------------------------------------------------------------------

# Stay 0.05 degree inside the rectangle: the combined GCJ-02 + BD-09 shift is
# below 0.02 degree, so the shifted point is still "in China". Right at the
# rectangle's edge a shifted point can leave it, and then the inverse (which,
# like every public implementation, tests the point it is given) passes it
# through: an inherent ambiguity of the rectangle, far from Chinese territory.
MARGIN = 0.05
china_lon = st.floats(72.004 + MARGIN, 137.8347 - MARGIN)
china_lat = st.floats(0.8293 + MARGIN, 55.8271 - MARGIN)
ROUND_TRIP_TOLERANCE_M = 0.01


@settings(max_examples=500)
@given(china_lon, china_lat)
def test_gcj02_round_trip_is_centimetre_exact(lon: float, lat: float) -> None:
    assert haversine_m(gcj02_to_wgs84(*wgs84_to_gcj02(lon, lat)), (lon, lat)) < (
        ROUND_TRIP_TOLERANCE_M
    )
    # and the other way round: the inverse really solves forward(p) == input
    assert haversine_m(wgs84_to_gcj02(*gcj02_to_wgs84(lon, lat)), (lon, lat)) < (
        ROUND_TRIP_TOLERANCE_M
    )


@settings(max_examples=500)
@given(china_lon, china_lat)
def test_bd09_round_trip_is_centimetre_exact(lon: float, lat: float) -> None:
    assert haversine_m(bd09_to_gcj02(*gcj02_to_bd09(lon, lat)), (lon, lat)) < (
        ROUND_TRIP_TOLERANCE_M
    )
    assert haversine_m(bd09_to_wgs84(*wgs84_to_bd09(lon, lat)), (lon, lat)) < (
        ROUND_TRIP_TOLERANCE_M
    )
    assert haversine_m(wgs84_to_bd09(*bd09_to_wgs84(lon, lat)), (lon, lat)) < (
        ROUND_TRIP_TOLERANCE_M
    )


def _one_step_inverse(forward: Convert, lon: float, lat: float) -> Point:
    """The common non-iterative inverse: p = g - (forward(g) - g)."""
    flon, flat = forward(lon, lat)
    return 2 * lon - flon, 2 * lat - flat


@pytest.mark.parametrize(
    ("forward", "inverse"),
    [(wgs84_to_gcj02, gcj02_to_wgs84), (gcj02_to_bd09, bd09_to_gcj02)],
    ids=["gcj02", "bd09"],
)
def test_one_step_inverse_is_not_good_enough(forward: Convert, inverse: Convert) -> None:
    # On a grid over China the one-step inverse misses the 1 cm bound almost
    # everywhere (GCJ-02: median ~0.7 m, worst ~5 m; BD-09 started from the
    # input: median ~8 m), which is why the module iterates.
    lons = np.linspace(72.004 + MARGIN, 137.8347 - MARGIN, 40)
    lats = np.linspace(0.8293 + MARGIN, 55.8271 - MARGIN, 30)
    one_step_errors = []
    for lon in lons:
        for lat in lats:
            p = (float(lon), float(lat))
            target = forward(*p)
            one_step_errors.append(haversine_m(_one_step_inverse(forward, *target), p))
            assert haversine_m(inverse(*target), p) < ROUND_TRIP_TOLERANCE_M
    errors = np.array(one_step_errors)
    assert np.mean(errors > ROUND_TRIP_TOLERANCE_M) > 0.95
    assert errors.max() > 1.0


# ---------------------------------------------------------------------------
# 3. Pass-through and errors.
# ---------------------------------------------------------------------------

OUTSIDE_CHINA = [
    pytest.param((-0.1276, 51.5072), id="london"),
    pytest.param((139.6917, 35.6895), id="tokyo"),
    pytest.param((151.2093, -33.8688), id="sydney"),
    pytest.param((-74.006, 40.7128), id="new-york"),
    pytest.param((37.6173, 55.7558), id="moscow"),
    pytest.param((0.0, 0.0), id="null-island"),
    pytest.param((72.0039, 30.0), id="just-west"),
    pytest.param((137.8348, 30.0), id="just-east"),
    pytest.param((100.0, 0.8292), id="just-south"),
    pytest.param((100.0, 55.8272), id="just-north"),
]
ALL_CONVERSIONS = [
    wgs84_to_gcj02,
    gcj02_to_wgs84,
    gcj02_to_bd09,
    bd09_to_gcj02,
    wgs84_to_bd09,
    bd09_to_wgs84,
]


@pytest.mark.parametrize("point", OUTSIDE_CHINA)
def test_outside_china_passes_through_unchanged(point: Point) -> None:
    assert out_of_china(*point)
    for convert in ALL_CONVERSIONS:
        assert convert(*point) == point, convert.__name__
    for name in SUPPORTED_CRS:
        assert to_wgs84(*point, name) == point, name
        lons, lats = to_wgs84_many(np.array([point[0]]), np.array([point[1]]), name)
        assert (lons[0], lats[0]) == point, name


def test_out_of_china_rectangle_edges_are_inside() -> None:
    for point in [(72.004, 30.0), (137.8347, 30.0), (100.0, 0.8293), (100.0, 55.8271)]:
        assert not out_of_china(*point)
        assert wgs84_to_gcj02(*point) != point
    assert out_of_china(math.nan, 30.0)
    assert out_of_china(100.0, math.nan)


@pytest.mark.parametrize("point", [(116.404, 39.915), (87.6168579, 43.8255962), (0.0, 0.0)])
@pytest.mark.parametrize("name", ["wgs84", "cgcs2000"])
def test_wgs84_and_cgcs2000_pass_through(point: Point, name: str) -> None:
    assert to_wgs84(*point, name) == point
    lons, lats = to_wgs84_many(np.array([point[0]]), np.array([point[1]]), name)
    assert (lons[0], lats[0]) == point


def test_to_wgs84_dispatches_to_the_inverse() -> None:
    point = (116.404, 39.915)
    assert to_wgs84(*point, "gcj02") == gcj02_to_wgs84(*point)
    assert to_wgs84(*point, "bd09") == bd09_to_wgs84(*point)


@pytest.mark.parametrize(
    "name", ["WGS84", "wgs-84", "epsg:4326", "gcj-02", "bd09mc", "", " wgs84", None, 4326, ["bd09"]]
)
def test_unknown_crs_raises(name: object) -> None:
    with pytest.raises(UnknownCRS) as excinfo:
        to_wgs84(116.404, 39.915, name)  # type: ignore[arg-type]
    assert excinfo.value.crs == name
    assert isinstance(excinfo.value, ValueError)
    with pytest.raises(UnknownCRS):
        to_wgs84_many(np.array([116.404]), np.array([39.915]), name)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# 4. Vectorised version.
# ---------------------------------------------------------------------------


def _random_points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Mostly points in China, plus some outside and some on the rectangle's edges."""
    rng = np.random.default_rng(seed)
    lons = rng.uniform(73.0, 135.0, n)
    lats = rng.uniform(18.0, 53.5, n)
    k = n // 10
    lons[:k] = rng.uniform(-180.0, 180.0, k)
    lats[:k] = rng.uniform(-90.0, 90.0, k)
    lons[k : 2 * k] = rng.uniform(71.9, 72.1, k)  # straddles the western edge
    lats[2 * k : 3 * k] = rng.uniform(55.7, 55.9, k)  # straddles the northern edge
    return lons, lats


@pytest.mark.parametrize("name", SUPPORTED_CRS)
def test_vectorised_matches_scalar(name: str) -> None:
    lons, lats = _random_points(2000, seed=20240501)
    lons_in, lats_in = lons.copy(), lats.copy()
    out_lons, out_lats = to_wgs84_many(lons, lats, name)
    np.testing.assert_array_equal(lons, lons_in)  # inputs untouched
    np.testing.assert_array_equal(lats, lats_in)
    expected = np.array([to_wgs84(lon, lat, name) for lon, lat in zip(lons, lats, strict=True)])
    # Same formulas and iteration; only libm vs numpy rounding may differ.
    np.testing.assert_allclose(out_lons, expected[:, 0], rtol=0, atol=1e-11)
    np.testing.assert_allclose(out_lats, expected[:, 1], rtol=0, atol=1e-11)


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.floats(60.0, 150.0), st.floats(-5.0, 60.0)), min_size=1, max_size=30),
    st.sampled_from(SUPPORTED_CRS),
)
def test_vectorised_matches_scalar_property(points: list[Point], name: str) -> None:
    lons = np.array([p[0] for p in points])
    lats = np.array([p[1] for p in points])
    out_lons, out_lats = to_wgs84_many(lons, lats, name)
    for i, point in enumerate(points):
        want = to_wgs84(*point, name)
        assert abs(out_lons[i] - want[0]) <= 1e-11
        assert abs(out_lats[i] - want[1]) <= 1e-11


def test_vectorised_keeps_shape_and_accepts_sequences() -> None:
    lons = np.array([[116.404, 121.47], [87.61, -0.12]])
    lats = np.array([[39.915, 31.23], [43.82, 51.5]])
    out_lons, out_lats = to_wgs84_many(lons, lats, "bd09")
    assert out_lons.shape == out_lats.shape == (2, 2)
    assert out_lons.dtype == out_lats.dtype == np.float64
    assert (out_lons[1, 1], out_lats[1, 1]) == (-0.12, 51.5)
    assert (out_lons[0, 0], out_lats[0, 0]) == pytest.approx(
        bd09_to_wgs84(116.404, 39.915), abs=1e-11
    )
    list_lons, list_lats = to_wgs84_many([116.404, 121.47], [39.915, 31.23], "gcj02")
    assert (list_lons[1], list_lats[1]) == pytest.approx(gcj02_to_wgs84(121.47, 31.23), abs=1e-11)
    empty_lons, empty_lats = to_wgs84_many(np.array([]), np.array([]), "gcj02")
    assert empty_lons.size == empty_lats.size == 0


def test_vectorised_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        to_wgs84_many(np.zeros(3), np.zeros(4), "gcj02")


def test_vectorised_outputs_do_not_alias_inputs() -> None:
    lons = np.array([116.404])
    lats = np.array([39.915])
    out_lons, out_lats = to_wgs84_many(lons, lats, "wgs84")
    out_lons[0] = 0.0
    out_lats[0] = 0.0
    assert (lons[0], lats[0]) == (116.404, 39.915)


def test_module_exports_and_constants() -> None:
    assert SUPPORTED_CRS == ("wgs84", "cgcs2000", "gcj02", "bd09")
    assert set(crs.__all__) >= {
        "SUPPORTED_CRS",
        "UnknownCRS",
        "out_of_china",
        "to_wgs84",
        "to_wgs84_many",
    }
