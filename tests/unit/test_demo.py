"""Tests for the deterministic demo county in gridapi.demo."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import MultiPolygon, Polygon, box, shape

from gridapi.demo import DemoCounty, _make_connected, build_demo_county, regions_as_features

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiling tolerances. Coordinates sit on a 1e-7 degree lattice, so a genuine overlap between two
# grids is at least about half a lattice cell (5e-15 deg²); anything below 1e-15 is float noise.
UNION_TOLERANCE = 1e-10
OVERLAP_TOLERANCE = 1e-15


@pytest.fixture(scope="module")
def built() -> tuple[DemoCounty, float]:
    start = time.perf_counter()
    county = build_demo_county()
    return county, time.perf_counter() - start


@pytest.fixture(scope="module")
def county(built: tuple[DemoCounty, float]) -> DemoCounty:
    return built[0]


def _digest(county: DemoCounty) -> str:
    regions = [
        (r["code"], r["name"], r["level"], None if r["boundary"] is None else r["boundary"].wkt)
        for r in county.regions
    ]
    payload = json.dumps({"grids": county.grids, "regions": regions}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _level_of(code: str) -> str:
    """Level implied by a 12-digit division code (trailing zero padding)."""
    if code[2:] == "0" * 10:
        return "province"
    if code[4:] == "0" * 8:
        return "city"
    if code[6:] == "0" * 6:
        return "county"
    if code[9:] == "000":
        return "township"
    return "village"


def _parent_code(code: str) -> str:
    cut = {"city": 2, "county": 4, "township": 6, "village": 9}[_level_of(code)]
    return code[:cut].ljust(12, "0")


def _by_level(county: DemoCounty, level: str) -> list[dict]:
    return [r for r in county.regions if r["level"] == level]


def _grid_shapes(county: DemoCounty) -> list[tuple[dict, MultiPolygon]]:
    return [(f["properties"], shape(f["geometry"])) for f in county.grids["features"]]


# ---- determinism and speed -------------------------------------------------------------------


def test_same_seed_is_byte_identical(county: DemoCounty) -> None:
    again = build_demo_county()
    assert json.dumps(again.grids, sort_keys=True) == json.dumps(county.grids, sort_keys=True)
    assert _digest(again) == _digest(county)


def test_different_seeds_differ(county: DemoCounty) -> None:
    other = build_demo_county(seed=7)
    assert json.dumps(other.grids, sort_keys=True) != json.dumps(county.grids, sort_keys=True)


def test_deterministic_across_processes() -> None:
    # A fresh interpreter with another hash seed catches any reliance on set/dict-of-str order.
    script = (
        "import hashlib, json; from gridapi.demo import build_demo_county; "
        "c = build_demo_county(seed=11, townships=3, communities_per_township=3, "
        "grids_per_community=4); "
        "print(hashlib.sha256(json.dumps(c.grids, sort_keys=True).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    local = build_demo_county(
        seed=11, townships=3, communities_per_township=3, grids_per_community=4
    )
    expected = hashlib.sha256(json.dumps(local.grids, sort_keys=True).encode()).hexdigest()
    assert out.stdout.strip() == expected


# ---- counts and the fixed top of the tree ----------------------------------------------------


def test_counts(county: DemoCounty) -> None:
    assert len(_by_level(county, "township")) == 10
    assert 85 <= len(_by_level(county, "village")) <= 115
    grids = county.grids["features"]
    assert 850 <= len(grids) <= 1150
    dedicated = [g for g in grids if g["properties"]["type"] == "dedicated"]
    assert 0.02 <= len(dedicated) / len(grids) <= 0.10


def test_top_levels(county: DemoCounty) -> None:
    top = [(r["code"], r["name"], r["level"]) for r in county.regions[:3]]
    assert top == [
        ("320000000000", "江苏省", "province"),
        ("320500000000", "苏州市", "city"),
        ("320508000000", "姑苏区", "county"),
    ]
    assert county.regions[0]["boundary"] is None
    assert county.regions[1]["boundary"] is None
    for region in county.regions[2:]:
        assert isinstance(region["boundary"], MultiPolygon)


def test_county_location_size_and_outline(county: DemoCounty) -> None:
    outline = county.regions[2]["boundary"]
    minx, miny, maxx, maxy = outline.bounds
    assert abs((minx + maxx) / 2 - 120.62) < 0.05
    assert abs((miny + maxy) / 2 - 31.31) < 0.05
    width_km = (maxx - minx) * 111.32 * np.cos(np.radians(31.31))
    height_km = (maxy - miny) * 110.9
    assert 15 < width_km < 27 and 15 < height_km < 27
    # Irregular: clearly not its bounding rectangle, and with a detailed outline.
    assert outline.area < 0.95 * box(*outline.bounds).area
    assert shapely.get_num_coordinates(outline) > 50


def test_mix_of_streets_and_towns(county: DemoCounty) -> None:
    names = [r["name"] for r in _by_level(county, "township")]
    assert any(n.endswith("街道") for n in names)
    assert any(n.endswith("镇") for n in names)
    communities = [r["name"] for r in _by_level(county, "village")]
    assert any(n.endswith("社区") for n in communities)
    assert any(n.endswith("村") for n in communities)


# ---- codes and names -------------------------------------------------------------------------


def test_region_codes_well_formed(county: DemoCounty) -> None:
    codes = [r["code"] for r in county.regions]
    assert len(set(codes)) == len(codes)
    seen: dict[str, dict] = {}
    for region in county.regions:
        code, name, level = region["code"], region["name"], region["level"]
        assert re.fullmatch(r"\d{12}", code), code
        assert _level_of(code) == level, (code, level)
        if level != "province":
            assert _parent_code(code) in seen, f"{code} listed before its parent"
        if level == "township":
            township = int(code[6:9])
            if name.endswith("街道"):
                assert 1 <= township <= 99, code
            else:
                assert name.endswith("镇") and 100 <= township <= 199, (code, name)
        if level == "village":
            community = int(code[9:12])
            if name.endswith("社区"):
                assert 1 <= community <= 199, code
            else:
                assert name.endswith("村") and 200 <= community <= 399, (code, name)
        seen[code] = region


def test_grid_codes_and_names(county: DemoCounty) -> None:
    villages = {r["code"]: r["name"] for r in _by_level(county, "village")}
    sequences: dict[str, list[int]] = defaultdict(list)
    codes = []
    for feature in county.grids["features"]:
        props = feature["properties"]
        assert set(props) == {"code", "name", "type"}
        code, name = props["code"], props["name"]
        assert re.fullmatch(r"\d{15}", code), code
        assert code[:12] in villages, code
        seq = int(code[12:])
        sequences[code[:12]].append(seq)
        codes.append(code)
        if props["type"] == "basic":
            assert name == f"{villages[code[:12]]}第{seq}网格"
        else:
            assert props["type"] == "dedicated"
            assert re.fullmatch(r".+(小学|中学|幼儿园|市场|有限公司)专属网格", name), name
    assert len(set(codes)) == len(codes)
    assert set(sequences) == set(villages), "every community has grids"
    for seqs in sequences.values():
        assert sorted(seqs) == list(range(1, len(seqs) + 1))


def test_names_unique_within_parent(county: DemoCounty) -> None:
    children: dict[str, list[str]] = defaultdict(list)
    for region in county.regions[1:]:
        children[_parent_code(region["code"])].append(region["name"])
    for feature in county.grids["features"]:
        children[feature["properties"]["code"][:12]].append(feature["properties"]["name"])
    for parent, names in children.items():
        assert len(set(names)) == len(names), parent


# ---- geometry --------------------------------------------------------------------------------


def test_grid_geojson_shape(county: DemoCounty) -> None:
    assert county.grids["type"] == "FeatureCollection"
    for feature in county.grids["features"]:
        assert feature["type"] == "Feature"
        geometry = feature["geometry"]
        assert geometry["type"] == "MultiPolygon"
        for polygon in geometry["coordinates"]:
            for ring in polygon:
                assert ring[0] == ring[-1]
                for lon, lat in ring:
                    assert 120.4 < lon < 120.9 and 31.1 < lat < 31.5
                    assert round(lon, 7) == lon and round(lat, 7) == lat


def test_geometries_valid_and_single_part(county: DemoCounty) -> None:
    shapes = [g for _, g in _grid_shapes(county)]
    shapes += [r["boundary"] for r in county.regions if r["boundary"] is not None]
    for geom in shapes:
        assert geom.is_valid, shapely.is_valid_reason(geom)
        assert len(geom.geoms) == 1 and isinstance(geom.geoms[0], Polygon)
        assert geom.area > 0


def _children_of(county: DemoCounty, parent_level: str) -> dict[str, list]:
    """Map parent code -> child geometries for one level of the tree."""
    out: dict[str, list] = defaultdict(list)
    if parent_level == "village":
        for props, geom in _grid_shapes(county):
            out[props["code"][:12]].append(geom)
    else:
        child_level = {"county": "township", "township": "village"}[parent_level]
        for region in _by_level(county, child_level):
            out[_parent_code(region["code"])].append(region["boundary"])
    return out


@pytest.mark.parametrize("parent_level", ["county", "township", "village"])
def test_children_tile_parent_exactly(county: DemoCounty, parent_level: str) -> None:
    children = _children_of(county, parent_level)
    parents = {r["code"]: r["boundary"] for r in _by_level(county, parent_level)}
    assert set(children) == set(parents)
    for code, boundary in parents.items():
        union = shapely.union_all(children[code])
        gap_or_spill = shapely.symmetric_difference(union, boundary).area
        assert gap_or_spill < UNION_TOLERANCE, (code, gap_or_spill)


@pytest.mark.parametrize("level", ["township", "village", "grid"])
def test_no_overlaps_anywhere_in_level(county: DemoCounty, level: str) -> None:
    # Checked across the whole county, not only among siblings, so neighbouring parents' children
    # are proven to meet along the same edges.
    if level == "grid":
        geoms = np.array([g for _, g in _grid_shapes(county)], dtype=object)
    else:
        geoms = np.array([r["boundary"] for r in _by_level(county, level)], dtype=object)
    left, right = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    pairs = left < right
    assert pairs.any(), "neighbours must touch"
    overlap = shapely.area(shapely.intersection(geoms[left[pairs]], geoms[right[pairs]]))
    assert overlap.max() < OVERLAP_TOLERANCE


def test_grids_share_their_community_vertices(county: DemoCounty) -> None:
    # Stronger than area checks: the community outline is made of the grids' own vertices.
    grid_vertices: dict[str, set[tuple[float, float]]] = defaultdict(set)
    for props, geom in _grid_shapes(county):
        grid_vertices[props["code"][:12]].update(map(tuple, shapely.get_coordinates(geom)))
    for region in _by_level(county, "village"):
        outline = set(map(tuple, shapely.get_coordinates(region["boundary"])))
        assert outline <= grid_vertices[region["code"]], region["code"]


def test_regions_as_features(county: DemoCounty) -> None:
    collection = regions_as_features(county)
    assert collection["type"] == "FeatureCollection"
    with_boundary = [r for r in county.regions if r["boundary"] is not None]
    assert (
        len(collection["features"])
        == len(with_boundary)
        == 1 + 10 + len(_by_level(county, "village"))
    )
    for feature, region in zip(collection["features"], with_boundary, strict=True):
        assert feature["properties"] == {
            "code": region["code"],
            "name": region["name"],
            "level": region["level"],
        }
        assert shape(feature["geometry"]).equals_exact(region["boundary"], 0)
    json.dumps(collection)  # plain, serialisable data


# ---- sizes and the connectivity repair -------------------------------------------------------


def test_small_sizes_and_bad_sizes() -> None:
    tiny = build_demo_county(seed=3, townships=1, communities_per_township=1, grids_per_community=1)
    assert [r["level"] for r in tiny.regions] == [
        "province",
        "city",
        "county",
        "township",
        "village",
    ]
    assert len(tiny.grids["features"]) == 1
    with pytest.raises(ValueError):
        build_demo_county(townships=0)


def test_make_connected_moves_stray_component_to_neighbour() -> None:
    # Three unit squares in a row; community 0 owns both ends, so its right end is stranded.
    faces = np.array([box(i, 0, i + 1, 1) for i in range(3)], dtype=object)
    labels = np.array([[0, 0, 0], [0, 1, 1], [0, 0, 2]])
    adjacency = {0: {1: 1.0}, 1: {0: 1.0, 2: 1.0}, 2: {1: 1.0}}
    _make_connected(labels, 1, faces, adjacency)
    assert labels.tolist() == [[0, 0, 0], [0, 1, 1], [0, 1, 1]]
