"""Tests for gridapi.geo.geodesy: geodesic area, distance and search radius."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geographiclib.geodesic import Geodesic
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import GeometryCollection, LineString, MultiPolygon, Point, Polygon, box

from gridapi.geo.geodesy import area_m2, areas_m2, distance_m, metres_to_degrees

LON0, LAT0, D = 120.6, 31.3, 0.01

# WGS-84
A = 6378137.0
F = 1 / 298.257223563
E2 = F * (2 - F)
E = math.sqrt(E2)
# Authalic radius: the sphere with the ellipsoid's surface area.
R_AUTHALIC = 6371007.1809


def sphere_box_area(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Return the area of a lon/lat box on the authalic sphere: R² Δλ (sin φ2 − sin φ1)."""
    dlon = math.radians(lon1 - lon0)
    return R_AUTHALIC**2 * dlon * (math.sin(math.radians(lat1)) - math.sin(math.radians(lat0)))


def ellipsoid_box_area(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Return the exact area of a lon/lat box bounded by parallels on the WGS-84 ellipsoid."""

    def q(lat: float) -> float:
        s = math.sin(math.radians(lat))
        return (1 - E2) * (s / (1 - E2 * s * s) - math.log((1 - E * s) / (1 + E * s)) / (2 * E))

    return A**2 * math.radians(lon1 - lon0) * (q(lat1) - q(lat0)) / 2


def test_square_area_matches_authalic_sphere_formula() -> None:
    square = box(LON0, LAT0, LON0 + D, LAT0 + D)
    expected = sphere_box_area(LON0, LAT0, LON0 + D, LAT0 + D)
    assert area_m2(square) == pytest.approx(expected, rel=0.005)


def test_square_area_matches_ellipsoid_formula_closely() -> None:
    # Over 0.01° the geodesic edges and the parallels differ by millimetres.
    square = box(LON0, LAT0, LON0 + D, LAT0 + D)
    expected = ellipsoid_box_area(LON0, LAT0, LON0 + D, LAT0 + D)
    assert area_m2(square) == pytest.approx(expected, rel=1e-4)


def test_area_ignores_ring_orientation() -> None:
    ccw = box(LON0, LAT0, LON0 + D, LAT0 + D, ccw=True)
    cw = box(LON0, LAT0, LON0 + D, LAT0 + D, ccw=False)
    assert area_m2(cw) == pytest.approx(area_m2(ccw), rel=1e-12)
    assert area_m2(cw) > 0


def test_area_subtracts_holes_whatever_their_orientation() -> None:
    outer = box(LON0, LAT0, LON0 + 3 * D, LAT0 + 3 * D).exterior.coords
    hole = box(LON0 + D, LAT0 + D, LON0 + 2 * D, LAT0 + 2 * D).exterior.coords
    donut_a = Polygon(outer, [hole])
    donut_b = Polygon(outer, [list(hole)[::-1]])
    expected = area_m2(Polygon(outer)) - area_m2(Polygon(hole))
    assert area_m2(donut_a) == pytest.approx(expected, rel=1e-9)
    assert area_m2(donut_b) == pytest.approx(expected, rel=1e-9)


def test_multipolygon_and_collection_sum_polygonal_parts() -> None:
    a = box(LON0, LAT0, LON0 + D, LAT0 + D)
    b = box(LON0 + 2 * D, LAT0, LON0 + 3 * D, LAT0 + D)
    total = area_m2(a) + area_m2(b)
    assert area_m2(MultiPolygon([a, b])) == pytest.approx(total, rel=1e-12)
    collection = GeometryCollection([a, LineString([(0, 0), (1, 1)]), MultiPolygon([b])])
    assert area_m2(collection) == pytest.approx(total, rel=1e-12)


def test_area_of_empty_and_non_polygonal_is_zero() -> None:
    assert area_m2(Polygon()) == 0.0
    assert area_m2(MultiPolygon()) == 0.0
    assert area_m2(Point(LON0, LAT0)) == 0.0
    assert area_m2(LineString([(LON0, LAT0), (LON0 + D, LAT0)])) == 0.0


def test_area_rejects_non_geometry() -> None:
    with pytest.raises(TypeError):
        area_m2({"type": "Polygon"})  # type: ignore[arg-type]


def test_areas_vectorised_matches_scalar() -> None:
    geoms = [box(LON0 + i * D, LAT0, LON0 + (i + 1) * D, LAT0 + (i + 1) * D) for i in range(5)]
    got = areas_m2(geoms + [None, Polygon()])
    assert isinstance(got, np.ndarray)
    assert got[:5] == pytest.approx([area_m2(g) for g in geoms], rel=1e-12)
    assert list(got[5:]) == [0.0, 0.0]
    assert len(areas_m2([])) == 0


def test_one_degree_of_latitude() -> None:
    d = distance_m(LON0, 30.8, LON0, 31.8)
    assert d == pytest.approx(110_900, abs=100)


def test_distance_is_symmetric_and_zero_on_same_point() -> None:
    assert distance_m(LON0, LAT0, LON0, LAT0) == 0.0
    there = distance_m(LON0, LAT0, 121.5, 31.2)
    back = distance_m(121.5, 31.2, LON0, LAT0)
    assert there == pytest.approx(back, rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(
    lat=st.floats(min_value=-85, max_value=85),
    metres=st.floats(min_value=0, max_value=200_000),
    azimuth=st.floats(min_value=-180, max_value=180),
)
def test_search_radius_is_never_too_small(lat: float, metres: float, azimuth: float) -> None:
    radius = metres_to_degrees(metres, lat)
    _d = Geodesic.WGS84.Direct(lat, LON0, azimuth, metres)
    lon, lat2 = _d["lon2"], _d["lat2"]
    # 1e-12° (~0.1 µm) absorbs the rounding of geographiclib's own forward computation.
    assert abs(lon - LON0) <= radius + 1e-12
    assert abs(lat2 - lat) <= radius + 1e-12


def test_search_radius_is_not_wastefully_large() -> None:
    # 1 km at 31.3°N: about 0.0105° of longitude is needed; the bound should stay close to it.
    radius = metres_to_degrees(1000, LAT0)
    needed = max(
        abs(Geodesic.WGS84.Direct(LAT0, LON0, az, 1000)["lon2"] - LON0) for az in range(0, 360, 5)
    )
    assert needed <= radius <= needed * 1.01


def test_search_radius_edge_cases() -> None:
    assert metres_to_degrees(0, LAT0) == 0.0
    assert metres_to_degrees(10_000, 89.99) == 180.0
    assert metres_to_degrees(1e9, 0) == 180.0
    with pytest.raises(ValueError):
        metres_to_degrees(-1, LAT0)
    with pytest.raises(ValueError):
        metres_to_degrees(float("nan"), LAT0)
    with pytest.raises(ValueError):
        metres_to_degrees(10, 91)


def test_area_matches_geographiclib_exact_geodesic_polygon() -> None:
    """An irregular county-sized polygon (20 km edges): within 0.01% of Karney's exact area."""
    ring = [
        (120.50, 31.20),
        (120.74, 31.22),
        (120.71, 31.41),
        (120.58, 31.38),
        (120.52, 31.30),
        (120.50, 31.20),
    ]
    poly = Geodesic.WGS84.Polygon()
    for lon, lat in ring[:-1]:
        poly.AddPoint(lat, lon)
    _, _, exact = poly.Compute(False, True)
    ours = area_m2(Polygon(ring))
    assert abs(ours - abs(exact)) / abs(exact) < 1e-4
