"""Statistical division codes (统计用区划代码) and grid codes: structure, level and ancestry."""

from __future__ import annotations

import re
from collections.abc import Iterable

LEVELS = ("province", "city", "county", "township", "village")
LEVEL_DEPTH = {level: depth for depth, level in enumerate(LEVELS)}

# GB/T 2260 province-level codes (including 71 Taiwan, 81 Hong Kong, 82 Macao).
PROVINCE_CODES = frozenset(
    {
        "11",
        "12",
        "13",
        "14",
        "15",
        "21",
        "22",
        "23",
        "31",
        "32",
        "33",
        "34",
        "35",
        "36",
        "37",
        "41",
        "42",
        "43",
        "44",
        "45",
        "46",
        "50",
        "51",
        "52",
        "53",
        "54",
        "61",
        "62",
        "63",
        "64",
        "65",
        "71",
        "81",
        "82",
    }
)

_REGION_RE = re.compile(r"[0-9]{12}")
_GRID_RE = re.compile(r"[0-9]{15}")


class InvalidCode(ValueError):
    """A code whose structure is wrong; the message says what is wrong."""


def region_level(code: str) -> str:
    """Return the level a 12-digit code implies.

    Cities without counties (东莞 4419) have townships whose county digits are 00, and
    province-administered county-level cities sit under the pseudo-city xx90; both are valid.
    Raises InvalidCode when the code is not a well-formed division code.
    """
    if not isinstance(code, str) or not _REGION_RE.fullmatch(code):
        raise InvalidCode("must be exactly 12 digits")
    if code[:2] not in PROVINCE_CODES:
        raise InvalidCode(f"province digits {code[:2]} are not a GB/T 2260 province code")
    if code[2:] == "0" * 10:
        return "province"
    if code[2:4] == "00":
        raise InvalidCode("city digits (3-4) are 00 below the province level")
    if code[4:] == "0" * 8:
        return "city"
    if code[6:] == "0" * 6:
        if code[4:6] == "00":  # pragma: no cover - unreachable, kept for clarity
            raise InvalidCode("county digits (5-6) are 00")
        return "county"
    if code[6:9] == "000":
        raise InvalidCode("township digits (7-9) are 000 below the township level")
    if code[9:] == "000":
        return "township"
    return "village"


def parent_candidates(code: str) -> list[str]:
    """Return the codes that may be the parent of ``code``, nearest first (empty for provinces).

    A county's parent is its city, or its province when there is no city row (a
    province-administered county-level city); a township's is its county, or its city when the
    city has no counties (东莞).
    Raises InvalidCode for a malformed code.
    """
    level = region_level(code)
    if level == "province":
        return []
    if level == "city":
        return [code[:2].ljust(12, "0")]
    if level == "county":
        city, province = code[:4].ljust(12, "0"), code[:2].ljust(12, "0")
        # 省直辖县级行政区划: the pseudo-city xx90 is often missing from real files.
        return [city, province] if code[2:4] == "90" else [city]
    if level == "township":
        return [code[:6].ljust(12, "0")] if code[4:6] != "00" else [code[:4].ljust(12, "0")]
    return [code[:9] + "000"]


def _is_region_code(code: str) -> bool:
    try:
        region_level(code)
    except InvalidCode:
        return False
    return True


def ancestor_prefix_codes(code: str) -> list[str]:
    """Return every code that may be an ancestor of ``code``, deepest first."""
    region_level(code)
    out: list[str] = []
    for n in (9, 6, 4, 2):
        candidate = code[:n].ljust(12, "0")
        if candidate != code and candidate not in out and _is_region_code(candidate):
            out.append(candidate)
    return out


def subtree_prefix(code: str) -> str:
    """Return the prefix every code in the subtree of ``code`` starts with."""
    level = region_level(code)
    return code[: {"province": 2, "city": 4, "county": 6, "township": 9, "village": 12}[level]]


def common_region(codes: Iterable[str]) -> str | None:
    """Return the deepest region code whose subtree holds every code in ``codes`` (12-digit
    region codes, or longer codes that start with one, as grid codes do), or None for none
    or for codes of different provinces."""
    codes = list(codes)
    if not codes:
        return None
    prefix = codes[0]
    for code in codes[1:]:
        while not code.startswith(prefix):
            prefix = prefix[:-1]
    for n in (12, 9, 6, 4, 2):
        if len(prefix) >= n:
            return prefix[:n].ljust(12, "0")
    return None


def township_kind(code: str) -> str:
    """Return 街道, 镇, 乡 or 其他 from the township digits (7-9)."""
    n = int(code[6:9])
    if n < 100:
        return "街道"
    if n < 200:
        return "镇"
    if n < 400:
        return "乡"
    return "其他"


def village_kind(code: str) -> str:
    """Return 居委会, 村委会 or 其他 from the village digits (10-12)."""
    n = int(code[9:12])
    if n < 200:
        return "居委会"
    if n < 400:
        return "村委会"
    return "其他"


def validate_grid_code(code: str) -> str:
    """Return the community code of a 15-digit grid code.

    Raises InvalidCode unless the first 12 digits are a village/community code and the
    sequence (13-15) is not 000.
    """
    if not isinstance(code, str) or not _GRID_RE.fullmatch(code):
        raise InvalidCode("a grid code must be exactly 15 digits")
    community = code[:12]
    try:
        level = region_level(community)
    except InvalidCode as exc:
        raise InvalidCode(f"its first 12 digits are not a division code: {exc}") from exc
    if level != "village":
        raise InvalidCode(f"its first 12 digits are a {level} code, not a village/community")
    if code[12:] == "000":
        raise InvalidCode("the grid sequence (digits 13-15) must not be 000")
    return community


def normalize_code(value: object) -> object:
    """Return a code as a digit string when it came as a number or with spaces.

    Boundary files converted from spreadsheets and shapefiles often carry codes as integers
    or integral floats; anything else is returned unchanged for validation to refuse.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and 0 < value < 1e16:
        return str(int(value))
    if isinstance(value, str):
        return value.strip()
    return value
