"""Tests for gridapi.geo.validation: every check of a grid file, on 0.01° squares in Suzhou."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import MultiPolygon, Point, box

from gridapi.geo.validation import GridSetReport, ParsedGrid, validate_grid_features

LON0, LAT0, D = 120.6, 31.3, 0.01
COMMUNITY = "320505001001"
OTHER_COMMUNITY = "320505001002"
R_AUTHALIC = 6371007.1809


def expected_area(lon0: float, lat0: float, lon1: float, lat1: float) -> float:
    """Return the area of a lon/lat box on the authalic sphere: R² Δλ (sin φ2 − sin φ1)."""
    dlon = math.radians(lon1 - lon0)
    return R_AUTHALIC**2 * dlon * (math.sin(math.radians(lat1)) - math.sin(math.radians(lat0)))


def cell(i: float, j: float, w: float = 1, h: float = 1) -> tuple[float, float, float, float]:
    """Return (lon0, lat0, lon1, lat1) of a w×h block of 0.01° cells at column i, row j."""
    return (LON0 + i * D, LAT0 + j * D, LON0 + (i + w) * D, LAT0 + (j + h) * D)


def polygon(bounds: tuple[float, float, float, float]) -> dict[str, Any]:
    x0, y0, x1, y1 = bounds
    return {
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]],
    }


def feature(code: Any, geometry: Any, name: Any = "网格", **props: Any) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"code": code, "name": name, **props},
        "geometry": geometry,
    }


def grid_code(seq: int, community: str = COMMUNITY) -> str:
    return f"{community}{seq:03d}"


def tiling(cols: int, rows: int, community: str = COMMUNITY) -> list[dict[str, Any]]:
    return [
        feature(grid_code(1 + j * cols + i, community), polygon(cell(i, j)), name=f"网格{i}-{j}")
        for j in range(rows)
        for i in range(cols)
    ]


def kinds(problems: list[dict[str, Any]]) -> list[str]:
    return [p["kind"] for p in problems]


def grid(report: GridSetReport, code: str, index: int | None = None) -> ParsedGrid:
    matches = [g for g in report.grids if g.code == code and index in (None, g.index)]
    assert len(matches) == 1, matches
    return matches[0]


def community(report: GridSetReport, code: str = COMMUNITY) -> dict[str, Any]:
    return next(c for c in report.communities if c["code"] == code)


# --- clean input -----------------------------------------------------------------------------


def test_clean_tiling_has_no_problems() -> None:
    report = validate_grid_features(tiling(3, 2), {COMMUNITY: box(*cell(0, 0, 3, 2))})
    out = report.as_dict()
    assert out["ok"] is True
    assert out["error_count"] == 0 and out["warning_count"] == 0
    assert out["grid_count"] == 6
    assert out["grids"] == [] and out["feature_problems"] == []
    [c] = out["communities"]
    assert c["code"] == COMMUNITY and c["grid_count"] == 6 and c["boundary_known"] is True
    assert c["gap_area_m2"] == 0 and c["gaps"] == [] and c["problems"] == []
    assert c["area_m2"] == pytest.approx(expected_area(*cell(0, 0, 3, 2)), rel=0.01)
    g = grid(report, grid_code(1))
    assert isinstance(g.geometry, MultiPolygon) and g.geometry.is_valid
    assert (g.type, g.name, g.community_code, g.index) == ("basic", "网格0-0", COMMUNITY, 0)
    assert g.area_m2 == pytest.approx(expected_area(*cell(0, 0)), rel=0.01)


def test_clean_tiling_without_known_boundary() -> None:
    report = validate_grid_features(tiling(3, 3), {COMMUNITY: None})
    assert report.ok
    assert community(report)["boundary_known"] is False


def test_type_and_multipolygon_and_z_are_accepted() -> None:
    x0, y0, x1, y1 = cell(0, 0)
    geometry = {
        "type": "MultiPolygon",
        "coordinates": [[[[x0, y0, 5], [x1, y0, 5], [x1, y1, 5], [x0, y1, 5], [x0, y0, 5]]]],
    }
    features = [feature(grid_code(1), geometry, type="dedicated")]
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0))})
    assert report.ok, report.as_dict()
    g = report.grids[0]
    assert g.type == "dedicated"
    assert not g.geometry.has_z


# --- per-grid problems -----------------------------------------------------------------------


def test_overlap_is_reported_on_both_grids_with_geodesic_area() -> None:
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(2), polygon(cell(0.5, 0))),  # shifted half a cell east
    ]
    report = validate_grid_features(features, {COMMUNITY: None})
    expected = expected_area(*cell(0.5, 0, 0.5, 1))
    for this, other in ((grid_code(1), grid_code(2)), (grid_code(2), grid_code(1))):
        [problem] = grid(report, this).problems
        assert problem["kind"] == "overlap" and problem["severity"] == "error"
        assert problem["with"] == other
        assert problem["area_m2"] == pytest.approx(expected, rel=0.01)
        assert other in problem["message"] and this in problem["message"]
        lon, lat = problem["point"]
        assert box(*cell(0.5, 0, 0.5, 1)).buffer(1e-9).contains(Point(lon, lat))
    assert report.error_count == 2 and not report.ok


def test_grid_inside_another_is_an_overlap() -> None:
    features = [
        feature(grid_code(1), polygon(cell(0, 0, 2, 2))),
        feature(grid_code(2), polygon(cell(0.5, 0.5))),
    ]
    report = validate_grid_features(features, {COMMUNITY: None})
    [problem] = grid(report, grid_code(2)).problems
    assert problem["kind"] == "overlap"
    assert problem["area_m2"] == pytest.approx(expected_area(*cell(0.5, 0.5)), rel=0.01)


def test_overlap_between_communities_is_not_a_grid_overlap() -> None:
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(1, OTHER_COMMUNITY), polygon(cell(0.5, 0))),
    ]
    report = validate_grid_features(features, {COMMUNITY: None, OTHER_COMMUNITY: None})
    assert report.ok


def test_sliver_overlap_below_tolerance_is_ignored() -> None:
    eps = 1e-7  # ~0.0095 m × 1110 m ≈ 10.6 m²
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(2), polygon((LON0 + D - eps, LAT0, LON0 + 2 * D, LAT0 + D))),
    ]
    boundary = {COMMUNITY: box(*cell(0, 0, 2, 1))}
    assert validate_grid_features(features, boundary, tolerance_m2=20).ok
    strict = validate_grid_features(features, boundary, tolerance_m2=1)
    assert kinds(grid(strict, grid_code(1)).problems) == ["overlap"]
    assert grid(strict, grid_code(1)).problems[0]["area_m2"] == pytest.approx(10.6, rel=0.05)


def test_gap_inside_known_boundary() -> None:
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(2), polygon(cell(2, 0))),
    ]
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0, 3, 1))})
    expected = expected_area(*cell(1, 0))
    c = community(report)
    assert c["gap_area_m2"] == pytest.approx(expected, rel=0.01)
    [gap] = c["gaps"]
    assert gap["area_m2"] == pytest.approx(expected, rel=0.01)
    assert box(*cell(1, 0)).contains(Point(*gap["point"]))
    [problem] = c["problems"]
    assert problem["kind"] == "gap" and problem["severity"] == "error"
    assert problem["gap_area_m2"] == c["gap_area_m2"] and COMMUNITY in problem["message"]
    assert report.error_count == 1 and report.grids[0].problems == []


def test_gap_without_boundary_is_an_enclosed_hole() -> None:
    features = [f for f in tiling(3, 3) if f["properties"]["code"] != grid_code(5)]  # centre
    report = validate_grid_features(features, {COMMUNITY: None})
    c = community(report)
    [gap] = c["gaps"]
    assert gap["area_m2"] == pytest.approx(expected_area(*cell(1, 1)), rel=0.01)
    assert box(*cell(1, 1)).contains(Point(*gap["point"]))
    assert kinds(c["problems"]) == ["gap"]


def test_hole_of_an_input_grid_is_not_a_gap() -> None:
    # One ring-shaped grid around a lake: the hole is intended, not a gap.
    x0, y0, x1, y1 = cell(0, 0, 3, 3)
    hx0, hy0, hx1, hy1 = cell(1, 1)
    donut = {
        "type": "Polygon",
        "coordinates": [
            [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]],
            [[hx0, hy0], [hx0, hy1], [hx1, hy1], [hx1, hy0], [hx0, hy0]],
        ],
    }
    report = validate_grid_features([feature(grid_code(1), donut)], {COMMUNITY: None})
    assert report.ok, report.as_dict()


def test_bow_tie_is_reported_and_repaired() -> None:
    x0, y0, x1, y1 = cell(0, 0)
    bow_tie = {
        "type": "Polygon",
        "coordinates": [[[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]],
    }
    report = validate_grid_features([feature(grid_code(1), bow_tie)], {COMMUNITY: None})
    g = report.grids[0]
    [problem] = [p for p in g.problems if p["kind"] == "invalid_geometry"]
    assert problem["severity"] == "error"
    assert "Self-intersection" in problem["reason"]
    assert "Self-intersection" in problem["message"] and grid_code(1) in problem["message"]
    assert problem["point"] == pytest.approx([(x0 + x1) / 2, (y0 + y1) / 2])
    assert isinstance(g.geometry, MultiPolygon) and g.geometry.is_valid
    assert len(g.geometry.geoms) == 2
    assert g.area_m2 == pytest.approx(expected_area(*cell(0, 0)) / 2, rel=0.01)
    out = report.as_dict()
    assert out["grids"][0]["problems"][0]["kind"] == "invalid_geometry"


def test_grid_partly_outside_its_community() -> None:
    features = [feature(grid_code(1), polygon(cell(0.2, 0)))]  # 0.002° beyond the east edge
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0))})
    [problem] = grid(report, grid_code(1)).problems
    assert problem["kind"] == "outside_community"
    assert problem["area_m2"] == pytest.approx(expected_area(*cell(1, 0, 0.2, 1)), rel=0.01)
    assert box(*cell(1, 0, 0.2, 1)).buffer(1e-9).contains(Point(*problem["point"]))
    # What the grid does not cover inside the boundary is a gap of the same size.
    assert community(report)["gap_area_m2"] == pytest.approx(problem["area_m2"], rel=0.01)


def test_unknown_community() -> None:
    features = [feature(grid_code(1, OTHER_COMMUNITY), polygon(cell(0, 0)))]
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0))})
    [problem] = report.grids[0].problems
    assert problem["kind"] == "unknown_community" and problem["community"] == OTHER_COMMUNITY
    assert OTHER_COMMUNITY in problem["message"]
    c = community(report, OTHER_COMMUNITY)
    assert c["boundary_known"] is False and c["grid_count"] == 1
    assert [c["code"] for c in report.communities] == [OTHER_COMMUNITY]


def test_required_community_without_a_usable_grid() -> None:
    third = "320505001003"
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(1, third), {"type": "Polygon", "coordinates": []}),
    ]
    boundaries = {COMMUNITY: box(*cell(0, 0)), OTHER_COMMUNITY: box(*cell(1, 0)), third: None}
    required = {COMMUNITY: "甲", OTHER_COMMUNITY: "乙", third: None}
    report = validate_grid_features(features, boundaries, required=required)
    assert community(report, COMMUNITY)["problems"] == []
    other = community(report, OTHER_COMMUNITY)
    assert kinds(other["problems"]) == ["community_without_grids"]
    assert other["grid_count"] == 0 and other["gap_area_m2"] > 0
    assert other["problems"][0]["name"] == "乙" and "(乙)" in other["problems"][0]["message"]
    assert kinds(community(report, third)["problems"]) == ["community_without_grids"]
    assert report.error_count == 3  # the two communities and the empty grid
    assert validate_grid_features(features[:1], boundaries, required={COMMUNITY: None}).ok


def test_duplicate_code_is_reported_on_later_copies() -> None:
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(1), polygon(cell(1, 0))),
        feature(grid_code(1), polygon(cell(2, 0))),
    ]
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0, 3, 1))})
    assert grid(report, grid_code(1), 0).problems == []
    for index in (1, 2):
        [problem] = grid(report, grid_code(1), index).problems
        assert problem["kind"] == "duplicate_code" and problem["first_index"] == 0
    # The later copies are left out of the version: the cells they cover are a gap.
    assert kinds(community(report)["problems"]) == ["gap"]
    assert report.error_count == 3


def test_a_later_copy_of_a_code_covers_no_gap() -> None:
    """The import keeps the first copy of a code: the second copy's area was counted as
    covered, the report showed no gap, and a forced activation left it routed nowhere."""
    features = [
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(1), polygon(cell(1, 0))),  # meant as grid 2, coded as 1
    ]
    report = validate_grid_features(features, {COMMUNITY: box(*cell(0, 0, 2, 1))})
    c = community(report)
    assert c["grid_count"] == 1
    assert c["gap_area_m2"] == pytest.approx(expected_area(*cell(1, 0)), rel=0.01)
    assert kinds(c["problems"]) == ["gap"]


def test_a_grid_of_too_many_vertices_is_not_a_grid() -> None:
    """A valid zig-zag of 100,000 vertices held a worker past its timeout; more than
    MAX_VERTICES is a feature problem, read no further."""
    from gridapi.geo.validation import MAX_VERTICES

    n = MAX_VERTICES + 1
    x0, y0 = LON0 + D / 2, LAT0 + D / 2
    ring = [
        [
            x0 + (0.004 if k % 2 else 0.002) * math.cos(2 * math.pi * k / n),
            y0 + (0.004 if k % 2 else 0.002) * math.sin(2 * math.pi * k / n),
        ]
        for k in range(n)
    ]
    spiky = feature(grid_code(1), {"type": "Polygon", "coordinates": [[*ring, ring[0]]]})
    report = validate_grid_features([spiky], {COMMUNITY: box(*cell(0, 0))})
    assert report.grids == []
    [problem] = report.feature_problems
    assert problem["kind"] == "too_many_vertices" and problem["count"] == n + 1
    assert f"at most {MAX_VERTICES:,}" in problem["message"]
    at_cap = [[x, y] for x, y in ring[: MAX_VERTICES - 1]]
    kept = feature(grid_code(1), {"type": "Polygon", "coordinates": [[*at_cap, at_cap[0]]]})
    assert len(validate_grid_features([kept], {COMMUNITY: box(*cell(0, 0))}).grids) == 1


def test_empty_and_zero_area_geometries() -> None:
    x0, y0, x1, _ = cell(0, 0)
    flat = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y0], [x0, y0]]]}
    features = [
        feature(grid_code(1), {"type": "Polygon", "coordinates": []}),
        feature(grid_code(2), flat),
        feature(grid_code(3), polygon(cell(0, 0))),
    ]
    report = validate_grid_features(features, {COMMUNITY: None})
    assert kinds(grid(report, grid_code(1)).problems) == ["empty_geometry"]
    assert "empty_geometry" in kinds(grid(report, grid_code(2)).problems)
    assert grid(report, grid_code(3)).problems == []
    for code in (grid_code(1), grid_code(2)):
        g = grid(report, code)
        assert isinstance(g.geometry, MultiPolygon) and g.geometry.is_valid


# --- feature-level problems ------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "32050500100100",  # 14 digits
        "3205050010010011",  # 16 digits
        "320505001000001",  # first 12 digits are a township (乡镇/街道) code
        "320505001001000",  # sequence 000
        "32050500100100a",
        "３２０５０５００１００１００１",  # full-width digits are not ASCII digits
        320505001.5,  # a number that is not an integer
        None,
    ],
)
def test_bad_codes(code: Any) -> None:
    report = validate_grid_features([feature(code, polygon(cell(0, 0)))], {COMMUNITY: None})
    assert report.grids == []
    [problem] = report.feature_problems
    assert problem["kind"] == "code_format" and problem["severity"] == "error"
    assert problem["index"] == 0
    assert problem["code"] == (None if code is None else str(code))
    assert not report.ok


def test_line_string_feature() -> None:
    line = {"type": "LineString", "coordinates": [[LON0, LAT0], [LON0 + D, LAT0 + D]]}
    report = validate_grid_features([feature(grid_code(1), line)], {COMMUNITY: None})
    assert report.grids == []
    [problem] = report.feature_problems
    assert problem["kind"] == "geometry_type" and problem["geometry_type"] == "LineString"
    assert problem["code"] == grid_code(1) and "LineString" in problem["message"]


@pytest.mark.parametrize(
    ("item", "kind"),
    [
        ({"type": "Polygon", "coordinates": []}, "geometry_type"),
        ("not a feature", "geometry_type"),
        (feature(grid_code(1), None), "geometry_type"),
        (
            feature(grid_code(1), {"type": "Polygon", "coordinates": [[[LON0, LAT0], [1, 1]]]}),
            "geometry_unreadable",
        ),
        (feature(grid_code(1), {"type": "Polygon", "coordinates": "x"}), "geometry_unreadable"),
        (
            feature(grid_code(1), polygon((500000.0, 3460000.0, 501000.0, 3461000.0))),
            "coordinates_out_of_range",
        ),
        (feature(grid_code(1), polygon(cell(0, 0)), name=""), "name_missing"),
        (feature(grid_code(1), polygon(cell(0, 0)), name=None), "name_missing"),
        (feature(grid_code(1), polygon(cell(0, 0)), name="网" * 201), "name_too_long"),
        (feature(grid_code(1), polygon(cell(0, 0)), type="special"), "type_invalid"),
    ],
)
def test_feature_level_problems(item: Any, kind: str) -> None:
    report = validate_grid_features([item], {COMMUNITY: None})
    assert report.grids == []
    assert kinds(report.feature_problems) == [kind]
    assert report.feature_problems[0]["message"].startswith("features[0]")
    json.dumps(report.as_dict())


def test_every_feature_level_problem_of_a_feature_is_listed() -> None:
    bad = feature("123", {"type": "Point", "coordinates": [LON0, LAT0]}, name="", type="x")
    report = validate_grid_features([bad], {})
    assert sorted(kinds(report.feature_problems)) == [
        "code_format",
        "geometry_type",
        "name_missing",
        "type_invalid",
    ]
    assert report.error_count == 4


def test_arguments_are_checked() -> None:
    with pytest.raises(TypeError):
        validate_grid_features({"type": "FeatureCollection"}, {})  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        validate_grid_features([], {}, tolerance_m2=-1)
    with pytest.raises(ValueError):
        validate_grid_features([], {}, tolerance_m2=float("nan"))


# --- the report as a whole -------------------------------------------------------------------


def messy_features() -> list[dict[str, Any]]:
    x0, y0, x1, y1 = cell(3, 0)
    return [
        feature(grid_code(2), polygon(cell(0.5, 0))),
        feature(grid_code(1), polygon(cell(0, 0))),
        feature(grid_code(1), polygon(cell(1, 1))),
        feature(
            grid_code(3),
            {
                "type": "Polygon",
                "coordinates": [[[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]],
            },
        ),
        feature("bad", polygon(cell(2, 2))),
        feature(grid_code(1, OTHER_COMMUNITY), polygon(cell(5, 5))),
        feature(grid_code(4), {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}),
    ]


def test_as_dict_is_deterministic_sorted_and_json_serialisable() -> None:
    boundaries = {COMMUNITY: box(*cell(0, 0, 4, 2))}
    first = validate_grid_features(messy_features(), boundaries).as_dict()
    second = validate_grid_features(messy_features(), boundaries).as_dict()
    assert first == second
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)
    keys = [(g["code"], g["index"]) for g in first["grids"]]
    assert keys == sorted(keys)
    assert [c["code"] for c in first["communities"]] == sorted(
        c["code"] for c in first["communities"]
    )
    fp_keys = [(p["code"] or "", p["index"]) for p in first["feature_problems"]]
    assert fp_keys == sorted(fp_keys)
    assert set(first) == {
        "ok", "error_count", "warning_count", "tolerance_m2", "grid_count",
        "grids", "feature_problems", "communities",
    }  # fmt: skip
    assert first["ok"] is False
    total = (
        len(first["feature_problems"])
        + sum(len(g["problems"]) for g in first["grids"])
        + sum(len(c["problems"]) for c in first["communities"])
    )
    assert first["error_count"] == total
    for g in first["grids"]:
        assert g["problems"] and round(g["area_m2"], 2) == g["area_m2"]


def test_as_dict_is_a_copy() -> None:
    report = validate_grid_features(messy_features(), {COMMUNITY: None})
    out = report.as_dict()
    out["grids"][0]["problems"].clear()
    out["communities"][0]["problems"].append({"severity": "error"})
    assert report.as_dict() != out


@settings(max_examples=25, deadline=None)
@given(
    cols=st.integers(min_value=1, max_value=6),
    rows=st.integers(min_value=1, max_value=6),
    data=st.data(),
)
def test_removed_cells_are_exactly_the_gaps(cols: int, rows: int, data: st.DataObject) -> None:
    features = tiling(cols, rows)
    removed = data.draw(st.sets(st.integers(0, cols * rows - 1), max_size=cols * rows - 1))
    kept = [f for k, f in enumerate(features) if k not in removed]
    report = validate_grid_features(kept, {COMMUNITY: box(*cell(0, 0, cols, rows))})
    expected = sum(expected_area(*cell(k % cols, k // cols)) for k in removed)
    c = community(report)
    assert c["gap_area_m2"] == pytest.approx(expected, rel=0.01)
    assert report.ok is (not removed)
    assert all(g.problems == [] for g in report.grids)


@pytest.mark.parametrize("code", [320505001001001, 320505001001001.0, " 320505001001001 "])
def test_codes_from_spreadsheets_are_normalised(code: Any) -> None:
    """Shapefile and spreadsheet exports carry codes as numbers or with spaces."""
    report = validate_grid_features([feature(code, polygon(cell(0, 0)))], {COMMUNITY: None})
    assert [g.code for g in report.grids] == ["320505001001001"]
    assert report.feature_problems == []
