"""Statistical division codes: levels, structural errors, parents, subtrees, grid codes, kinds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gridapi.codes import (
    LEVEL_DEPTH,
    PROVINCE_CODES,
    InvalidCode,
    common_region,
    parent_candidates,
    region_level,
    subtree_prefix,
    township_kind,
    validate_grid_code,
    village_kind,
)

# ---- region_level ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "level"),
    [
        ("320000000000", "province"),  # 江苏省
        ("320500000000", "city"),  # 苏州市
        ("320508000000", "county"),  # 姑苏区
        ("320508001000", "township"),  # 平江街道
        ("320508001001", "village"),  # 平江社区
        ("441900000000", "city"),  # 东莞市, a city without counties
        ("441900003000", "township"),  # 东城街道, directly under 东莞
        ("441900003001", "village"),  # a community of 东城街道
        ("429000000000", "city"),  # 省直辖县级行政区划 (pseudo-city)
        ("429004000000", "county"),  # 仙桃市
        ("429004001000", "township"),  # a township of 仙桃
        ("110000000000", "province"),  # 北京市
        ("110100000000", "city"),  # 市辖区
        ("110101000000", "county"),  # 东城区
        ("110105000000", "county"),  # 朝阳区
        ("810000000000", "province"),  # 香港
    ],
)
def test_region_level(code: str, level: str) -> None:
    assert region_level(code) == level


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("32050800100", "12 digits"),  # 11 digits
        ("3205080010011", "12 digits"),  # 13 digits
        ("", "12 digits"),
        ("32050800100A", "12 digits"),  # a letter
        ("32o508001001", "12 digits"),  # letter o for zero
        ("32 508001001", "12 digits"),
        ("990000000000", "province digits 99"),  # no province 99 in GB/T 2260
        ("000000000000", "province digits 00"),
        ("320001000000", "city digits"),  # county digits under city 00
        ("320000001000", "city digits"),  # township digits under city 00
        ("320508000001", "township digits"),  # village digits under township 000
        ("441900000001", "township digits"),  # the same under 东莞
    ],
)
def test_malformed_codes_are_rejected_with_a_reason(code: str, reason: str) -> None:
    with pytest.raises(InvalidCode, match=reason):
        region_level(code)


@pytest.mark.parametrize("code", [None, 320508001001, b"320508001001"])
def test_non_strings_are_rejected(code: object) -> None:
    with pytest.raises(InvalidCode):
        region_level(code)  # type: ignore[arg-type]


def test_code_with_trailing_newline_is_rejected() -> None:
    # '^...$' would accept it: '$' also matches before a final newline.
    with pytest.raises(InvalidCode):
        region_level("320508001001\n")


def test_code_with_full_width_digit_is_rejected() -> None:
    # '\d' would accept it: it matches every Unicode digit, not only 0-9.
    with pytest.raises(InvalidCode):
        region_level("32050800100５")


# ---- parents and subtrees --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "parents"),
    [
        ("320000000000", []),
        ("320500000000", ["320000000000"]),
        ("320508000000", ["320500000000"]),
        ("320508001000", ["320508000000"]),
        ("320508001001", ["320508001000"]),
        ("441900003000", ["441900000000"]),  # 东莞: township under the city
        ("441900003001", ["441900003000"]),
        ("429004000000", ["429000000000", "420000000000"]),  # 仙桃: pseudo-city, else province
        ("429004001000", ["429004000000"]),
        ("110101000000", ["110100000000"]),  # 东城区 under 市辖区
        ("110100000000", ["110000000000"]),
    ],
)
def test_parent_candidates_nearest_first(code: str, parents: list[str]) -> None:
    assert parent_candidates(code) == parents


def test_parent_candidates_rejects_malformed_codes() -> None:
    with pytest.raises(InvalidCode):
        parent_candidates("990000000000")


@pytest.mark.parametrize(
    ("code", "prefix"),
    [
        ("320000000000", "32"),
        ("320500000000", "3205"),
        ("320508000000", "320508"),
        ("320508001000", "320508001"),
        ("320508001001", "320508001001"),
        ("441900000000", "4419"),
        ("441900003000", "441900003"),
        ("429000000000", "4290"),
        ("110000000000", "11"),
        ("110101000000", "110101"),
    ],
)
def test_subtree_prefix(code: str, prefix: str) -> None:
    assert subtree_prefix(code) == prefix


def test_subtree_prefix_rejects_malformed_codes() -> None:
    with pytest.raises(InvalidCode):
        subtree_prefix("320508000001")


# ---- grid codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "community"),
    [
        ("320508001001001", "320508001001"),
        ("320508001002999", "320508001002"),
        ("441900003001010", "441900003001"),  # 东莞
    ],
)
def test_validate_grid_code_returns_the_community(grid: str, community: str) -> None:
    assert validate_grid_code(grid) == community


@pytest.mark.parametrize(
    ("grid", "reason"),
    [
        ("32050800100100", "15 digits"),  # 14 digits
        ("3205080010010011", "15 digits"),  # 16 digits
        ("32050800100100A", "15 digits"),
        ("320508001001001\n", "15 digits"),  # a trailing newline
        ("32050800100100１", "15 digits"),  # a full-width digit
        ("320508001001000", "must not be 000"),  # sequence 000
        ("320508001000001", "township code"),  # first 12 digits are a township
        ("320508000000001", "county code"),
        ("990508001001001", "not a division code"),
        ("320508000001001", "not a division code"),
    ],
)
def test_validate_grid_code_rejects(grid: str, reason: str) -> None:
    with pytest.raises(InvalidCode, match=reason):
        validate_grid_code(grid)


# ---- kinds -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("320508001000", "街道"),
        ("320508099000", "街道"),
        ("320508100000", "镇"),
        ("320508199000", "镇"),
        ("320508200000", "乡"),
        ("320508399000", "乡"),
        ("320508400000", "其他"),
        ("441900003000", "街道"),  # 东莞 东城街道
    ],
)
def test_township_kind(code: str, kind: str) -> None:
    assert township_kind(code) == kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("320508001001", "居委会"),
        ("320508001199", "居委会"),
        ("320508101200", "村委会"),
        ("320508101399", "村委会"),
        ("320508101400", "其他"),
    ],
)
def test_village_kind(code: str, kind: str) -> None:
    assert village_kind(code) == kind


# ---- property: parents are shallower and contain the code ------------------------------------


def _group(width: int, low: int = 1) -> st.SearchStrategy[str]:
    return st.integers(low, 10**width - 1).map(lambda n: str(n).zfill(width))


@st.composite
def valid_codes(draw: st.DrawFn) -> str:
    """A well-formed code of any level, including 东莞-style (county 00) and xx90 codes."""
    depth = draw(st.integers(0, 4))
    province = draw(st.sampled_from(sorted(PROVINCE_CODES)))
    if depth == 0:
        return province + "0" * 10
    city = draw(st.one_of(st.just("90"), st.just("19"), _group(2)))
    if depth == 1:
        return province + city + "0" * 8
    if depth == 2:
        return province + city + draw(_group(2)) + "0" * 6
    county = draw(st.one_of(st.just("00"), _group(2)))  # 00: a city without counties
    township = draw(_group(3))
    if depth == 3:
        return province + city + county + township + "000"
    return province + city + county + township + draw(_group(3))


@given(valid_codes())
def test_parents_are_shallower_and_contain_the_code(code: str) -> None:
    level = region_level(code)
    candidates = parent_candidates(code)
    assert (candidates == []) == (level == "province")
    for parent in candidates:
        assert LEVEL_DEPTH[region_level(parent)] < LEVEL_DEPTH[level]
        assert code.startswith(subtree_prefix(parent))
        assert parent != code
    assert code.startswith(subtree_prefix(code))


def test_common_region_is_the_deepest_region_holding_every_code():
    assert common_region(["320508001001", "320508001002"]) == "320508001000"
    assert common_region(["320508001001001", "320508002001"]) == "320508000000"  # a grid too
    assert common_region(["320508001001", "320508001001"]) == "320508001001"
    assert common_region(iter(["320508001001", "320583001001"])) == "320500000000"
    assert common_region(["320508001001", "330108001001"]) is None  # two provinces
    assert common_region([]) is None
