"""ID numbers (GB 11643), mobile numbers and masking: properties over generated values."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gridapi.personal import (
    PROVINCE_PREFIXES,
    InvalidValue,
    check_digit,
    mask_id_number,
    mask_name,
    mask_phone,
    parse_first_generation_id_number,
    parse_id_number,
    parse_phone,
)

TODAY = date.today()
ID_ALPHABET = "0123456789Xx"


def make_id(prefix: str = "320508", born: str = "19900101", seq: str = "123") -> str:
    first = prefix + born + seq
    return first + check_digit(first)


def reason(value: str, today: date | None = TODAY) -> str:
    with pytest.raises(InvalidValue) as info:
        parse_id_number(value, today=today)
    return str(info.value)


provinces = st.sampled_from(sorted(PROVINCE_PREFIXES))
# The four digits after the province: any but 0000 (no county is coded 0000).
counties = st.integers(min_value=1, max_value=9999).map(lambda n: f"{n:04d}")
births = st.dates(min_value=date(1900, 1, 1), max_value=TODAY)
sequences = st.integers(min_value=0, max_value=999).map(lambda n: f"{n:03d}")


@st.composite
def valid_ids(draw: st.DrawFn) -> tuple[str, date]:
    born = draw(births)
    first = draw(provinces) + draw(counties) + born.strftime("%Y%m%d") + draw(sequences)
    return first + check_digit(first), born


phones = st.from_regex(r"\A1[3-9][0-9]{9}\Z")


# --- ID numbers -------------------------------------------------------------------------------


@given(valid_ids())
def test_every_valid_id_parses_with_its_birth_date_and_gender(generated):
    value, born = generated
    parsed = parse_id_number(value)  # against the real today
    assert parsed.value == value
    assert parsed.birth_date == born
    assert parsed.gender == ("male" if int(value[16]) % 2 else "female")


@given(valid_ids())
def test_lower_case_x_and_surrounding_spaces_are_normalised(generated):
    value, _ = generated
    assert parse_id_number(f"  {value.lower()}\n", today=TODAY).value == value


def test_lower_case_x_check_character():
    # Find a number whose check character is X, so the lower-case form is really different.
    value = next(
        make_id(seq=f"{n:03d}") for n in range(1000) if make_id(seq=f"{n:03d}").endswith("X")
    )
    parsed = parse_id_number(value.lower(), today=TODAY)
    assert parsed.value == value
    assert parsed.value.endswith("X")


@given(valid_ids(), st.integers(min_value=0, max_value=17), st.sampled_from(ID_ALPHABET))
def test_changing_any_single_character_is_rejected(generated, position, replacement):
    value, _ = generated
    assume(replacement.upper() != value[position])
    changed = value[:position] + replacement + value[position + 1 :]
    with pytest.raises(InvalidValue):
        parse_id_number(changed, today=TODAY)


@given(valid_ids())
def test_changing_the_check_character_names_the_check_digit(generated):
    value, _ = generated
    for other in "0123456789X":
        if other != value[17]:
            assert reason(value[:17] + other) == "has a wrong check digit"


@given(valid_ids(), st.integers(min_value=1, max_value=40).filter(lambda n: n != 18))
def test_wrong_length_is_rejected(generated, length):
    value, _ = generated
    wrong = (value * 3)[:length]
    assert reason(wrong) == "must be 18 characters"


@pytest.mark.parametrize(
    "value",
    [
        "32050819900101123A",
        "3205081990010112X3",
        "32050819900101-123",
        "٣٢٠٥٠٨١٩٩٠٠١٠١١٢٣٤",  # Arabic-Indic digits: digits, but no ASCII ones under NFKC
        "X20508199001011234",
        "32050819900101 234",
    ],
)
def test_non_digits_are_rejected(value):
    assert reason(value) == "must be 17 digits followed by a digit or X"


def test_full_width_digits_are_read_as_ascii():
    """As a Chinese input method types them (and as the register import reads them)."""
    typed = "".join(chr(ord(c) + 0xFEE0) for c in "32050819800229038x")
    assert parse_id_number(typed).value == "32050819800229038X"
    assert parse_phone("\u3000１３８－１２３４－５６７８") == "13812345678"


@pytest.mark.parametrize(
    "prefix", ["990508", "000508", "100508", "910508", "320000", "710000", "840000"]
)
def test_unknown_region_is_rejected(prefix):
    assert reason(make_id(prefix=prefix)) == "does not start with a known region code"


@pytest.mark.parametrize("prefix", ["810000", "820000", "830000"])
def test_residence_permits_of_hong_kong_macao_and_taiwan_residents_are_taken(prefix):
    """港澳台居民居住证 numbers carry 810000, 820000, 830000: they were refused as having no
    county, and their holders are real residents of a register (流动人口)."""
    parsed = parse_id_number(make_id(prefix=prefix))
    assert parsed.value.startswith(prefix) and parsed.birth_date.year == 1990


@given(st.integers(min_value=1900, max_value=2023).filter(lambda y: y % 4 != 0 or y == 1900))
def test_february_29_of_a_common_year_is_rejected(year):
    assert reason(make_id(born=f"{year}0229")) == "does not contain a real birth date"


@given(st.integers(min_value=1904, max_value=2020).filter(lambda y: y % 4 == 0))
def test_february_29_of_a_leap_year_is_accepted(year):
    assert parse_id_number(make_id(born=f"{year}0229"), today=TODAY).birth_date == date(year, 2, 29)


@pytest.mark.parametrize("born", ["19901301", "19900001", "19900100", "19900431", "19901232"])
def test_impossible_dates_are_rejected(born):
    assert reason(make_id(born=born)) == "does not contain a real birth date"


@given(st.dates(min_value=TODAY + timedelta(days=2), max_value=date(2099, 12, 31)))
def test_future_birth_date_is_rejected(born):
    value = make_id(born=born.strftime("%Y%m%d"))
    assert reason(value) == "contains a birth date in the future or before 1890"


def test_birth_today_is_accepted_and_tomorrow_is_not():
    value = make_id(born=TODAY.strftime("%Y%m%d"))
    assert parse_id_number(value, today=TODAY).birth_date == TODAY
    assert "future" in reason(value, today=TODAY - timedelta(days=1))


def test_birth_before_1890_is_rejected():
    assert "before 1890" in reason(make_id(born="18891231"))


@pytest.mark.parametrize("value", [None, 320508199001011234, ""])
def test_non_strings_and_empty_are_rejected(value):
    with pytest.raises(InvalidValue):
        parse_id_number(value, today=TODAY)  # type: ignore[arg-type]


def test_check_digit_known_value():
    # The example of GB 11643-1999, appendix A.
    assert check_digit("11010519491231002") == "X"
    assert parse_id_number("11010519491231002X", today=TODAY).gender == "female"


# --- first-generation (15-digit) ID numbers ---------------------------------------------------


def test_a_first_generation_id_number_gives_its_birth_date_in_the_1900s_and_gender():
    parsed = parse_first_generation_id_number(" 110105491231002 ")
    assert (parsed.value, parsed.birth_date, parsed.gender) == (
        "110105491231002",
        date(1949, 12, 31),
        "female",
    )
    assert parse_first_generation_id_number("１１０１０５４９１２３１００３").gender == "male"


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("11010549123100", "must be 15 digits"),
        ("1101054912310021", "must be 15 digits"),
        ("11010549123100X", "must be 15 digits"),
        ("990105491231002", "does not start with a known region code"),
        ("830105491231002", "does not start with a known region code"),  # permits had 18
        ("110000491231002", "does not start with a known region code"),
        ("110105491331002", "does not contain a real birth date"),
        ("110105000229002", "does not contain a real birth date"),  # 1900 was no leap year
    ],
)
def test_an_implausible_first_generation_id_number_is_refused_with_the_reason(value, why):
    with pytest.raises(InvalidValue, match=why):
        parse_first_generation_id_number(value)


# --- phones -----------------------------------------------------------------------------------


@given(
    phones,
    st.sampled_from(["", "+86", "0086", "+86 ", "0086-", "+86-"]),
    st.lists(st.sampled_from([" ", "-"]), min_size=0, max_size=3),
    st.randoms(use_true_random=False),
)
def test_phone_with_prefix_spaces_and_dashes_is_accepted(phone, prefix, noise, rnd):
    chars = list(phone)
    for ch in noise:
        chars.insert(rnd.randint(1, len(chars) - 1), ch)
    assert parse_phone(prefix + "".join(chars)) == phone


@pytest.mark.parametrize(
    "raw", ["+86 138 1234 5678", "138-1234-5678", "0086 13812345678", " 13812345678 "]
)
def test_phone_examples(raw):
    assert parse_phone(raw) == "13812345678"


@given(phones, st.integers(min_value=0, max_value=9))
def test_twelve_digits_are_rejected(phone, extra):
    with pytest.raises(InvalidValue):
        parse_phone(phone + str(extra))


@given(phones)
def test_ten_digits_are_rejected(phone):
    with pytest.raises(InvalidValue):
        parse_phone(phone[:10])


@given(st.from_regex(r"\A1[0-2][0-9]{9}\Z"))
def test_numbers_starting_10_to_12_are_rejected(number):
    with pytest.raises(InvalidValue) as info:
        parse_phone(number)
    assert "mainland mobile number" in str(info.value)


@pytest.mark.parametrize("raw", ["12812345678", "23812345678", "1381234567a", "+85213812345678"])
def test_phone_examples_rejected(raw):
    with pytest.raises(InvalidValue):
        parse_phone(raw)


# --- masking ----------------------------------------------------------------------------------

names = st.text(
    alphabet=st.characters(whitelist_categories=("Lo", "Lu", "Ll")), min_size=2, max_size=20
)


@given(names)
def test_mask_name_keeps_the_first_character_only(name):
    masked = mask_name(name)
    assert len(masked) == len(name)
    assert masked[0] == name[0]
    assert masked[1:] == "*" * (len(name) - 1)


def test_mask_name_examples():
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳修") == "欧**"
    assert mask_name("王") == "*"  # one character: nothing is shown


@given(phones)
def test_mask_phone_shows_only_the_first_three_and_last_four(phone):
    masked = mask_phone(phone)
    assert masked == phone[:3] + "****" + phone[-4:]
    assert len(masked) == 11
    assert masked[3:7] == "****"


@given(valid_ids())
def test_mask_id_number_shows_the_first_four_and_last_four(generated):
    value, _ = generated
    masked = mask_id_number(value)
    assert len(masked) == 18
    assert masked[:4] == value[:4]
    assert masked[-4:] == value[-4:]
    assert masked[4:14] == "*" * 10


def test_a_birth_tomorrow_in_china_is_refused_whatever_the_server_s_clock():
    """A server on UTC took tomorrow's births (age -1) for up to a day: the birth date is
    checked against today in China, where the numbers are issued."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    today_cn = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    assert parse_id_number(make_id(born=today_cn.strftime("%Y%m%d"))).birth_date == today_cn
    tomorrow = (today_cn + timedelta(days=1)).strftime("%Y%m%d")
    assert reason(make_id(born=tomorrow), today=None) == (
        "contains a birth date in the future or before 1890"
    )
