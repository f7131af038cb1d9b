"""Resident ID numbers (居民身份证号码, GB 11643) and mobile numbers: validation and masking.

Pure functions, no I/O: used by schemas, services, the importer and property tests.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from .codes import PROVINCE_CODES

# Only the province (GB/T 2260, and 83 of the Taiwan residents' permit) is checked: an ID
# number keeps the county code of the place of first registration, and thousands of those
# counties have since been renamed, merged or abolished, so a check against today's county
# list would reject real people.
PROVINCE_PREFIXES = PROVINCE_CODES | {"83"}
RESIDENCE_PERMIT_PREFIXES = frozenset({"81", "82", "83"})
_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CHECK = "10X98765432"
_ID_SHAPE = re.compile(r"[0-9]{17}[0-9X]")
_FIRST_GENERATION_SHAPE = re.compile(r"[0-9]{15}")
_PHONE = re.compile(r"1[3-9][0-9]{9}")
_PHONE_NOISE = re.compile(r"[\s\-()]")
EARLIEST_BIRTH = date(1890, 1, 1)
#: Where ID numbers are issued: the mainland, and the permits of Hong Kong, Macao and Taiwan.
ISSUED_IN = ZoneInfo("Asia/Shanghai")


class InvalidValue(ValueError):
    """The value is not acceptable; the message is the reason, fit for a 422."""


@dataclass(frozen=True)
class IdNumber:
    value: str
    birth_date: date
    gender: str  # "male" | "female"


def check_digit(first17: str) -> str:
    """Return the ISO 7064 MOD 11-2 check character of the first 17 digits."""
    total = sum(int(d) * w for d, w in zip(first17, _WEIGHTS, strict=True))
    return _CHECK[total % 11]


def parse_id_number(raw: str, today: date | None = None) -> IdNumber:
    """Return the normalised ID number with the birth date and gender it encodes.

    Raises InvalidValue with the reason: length, characters, region prefix, birth date,
    check digit. A lower-case x is accepted and normalised to X; surrounding spaces dropped;
    full-width digits and letters (１２３, Ｘ, as a Chinese input method types them) are
    read as ASCII (NFKC), as the register import reads them.
    """
    value = unicodedata.normalize("NFKC", str(raw)).strip().upper()
    if len(value) != 18:
        raise InvalidValue("must be 18 characters")
    if not _ID_SHAPE.fullmatch(value):
        raise InvalidValue("must be 17 digits followed by a digit or X")
    # Residence permits of Hong Kong, Macao and Taiwan residents (港澳台居民居住证) carry
    # 810000, 820000 and 830000: a province with no county, unlike every mainland number.
    permit = value[:2] in RESIDENCE_PERMIT_PREFIXES and value[2:6] == "0000"
    _check_region(value[:6], PROVINCE_PREFIXES, permit=permit)
    born = _birth_date(value[6:10], value[10:12], value[12:14], today)
    if check_digit(value[:17]) != value[17]:
        raise InvalidValue("has a wrong check digit")
    return IdNumber(value, born, "male" if int(value[16]) % 2 else "female")


def parse_first_generation_id_number(raw: str, today: date | None = None) -> IdNumber:
    """Return a first-generation (15-digit, 1984-2004) ID number with the birth date and
    gender it encodes: a region code, the birth date as YYMMDD in the 1900s, a sequence
    number (odd for men), and no check digit. Old paper records still carry them.

    Raises InvalidValue with the reason: length, characters, region prefix, birth date,
    as :func:`parse_id_number` checks them (no residence permit had 15 digits: a
    mainland province's code only).
    """
    value = unicodedata.normalize("NFKC", str(raw)).strip()
    if not _FIRST_GENERATION_SHAPE.fullmatch(value):
        raise InvalidValue("must be 15 digits")
    _check_region(value[:6], PROVINCE_CODES, permit=False)
    born = _birth_date("19" + value[6:8], value[8:10], value[10:12], today)
    return IdNumber(value, born, "male" if int(value[14]) % 2 else "female")


def _check_region(code: str, provinces: frozenset[str], *, permit: bool) -> None:
    if code[:2] not in provinces or (code[2:] == "0000" and not permit):
        raise InvalidValue("does not start with a known region code")


def _birth_date(year: str, month: str, day: str, today: date | None) -> date:
    try:
        born = date(int(year), int(month), int(day))
    except ValueError:
        raise InvalidValue("does not contain a real birth date") from None
    # Today where the number was issued (China, UTC+8, as are the residence permits): a
    # server on UTC, eight hours behind, took tomorrow's births for a day (age -1).
    if born < EARLIEST_BIRTH or born > (today or datetime.now(ISSUED_IN).date()):
        raise InvalidValue("contains a birth date in the future or before 1890")
    return born


def parse_phone(raw: str) -> str:
    """Return a mainland mobile number as 11 digits (spaces, dashes, +86 or 0086 dropped).

    Raises InvalidValue when it is not one. Full-width digits, spaces and signs are read as
    ASCII (NFKC), as the register import reads them.
    """
    value = _PHONE_NOISE.sub("", unicodedata.normalize("NFKC", str(raw)))
    for prefix in ("+86", "0086"):
        if value.startswith(prefix):
            value = value[len(prefix) :]
            break
    if not _PHONE.fullmatch(value):
        raise InvalidValue("must be a mainland mobile number (11 digits starting 13-19)")
    return value


#: A run of digits as long as a phone number or longer, once separators are dropped.
_LONG_NUMBER = re.compile(r"[0-9]{11,}")
_NUMBER_SEPARATORS = re.compile(r"[\s\-_./]")


#: Digits written in Chinese, as a number is read out or written to slip past a filter
#: (一三八…, 壹叁捌…, 幺 for one, 〇 and 零 for nought); 十, 百 and 千 are left alone: a
#: run of 11 single digits is a number no quantity is written as.
_CHINESE_DIGITS = str.maketrans(
    {
        **dict.fromkeys("〇零○", "0"),
        **dict.fromkeys("一壹幺", "1"),
        **dict.fromkeys("二贰貳两兩", "2"),
        **dict.fromkeys("三叁參", "3"),
        **dict.fromkeys("四肆", "4"),
        **dict.fromkeys("五伍", "5"),
        **dict.fromkeys("六陆陸", "6"),
        **dict.fromkeys("七柒", "7"),
        **dict.fromkeys("八捌", "8"),
        **dict.fromkeys("九玖", "9"),
    }
)


def number_in_name(name: str) -> bool:
    """Whether a name holds what can only be a phone or ID number (11 digits or more in a
    row, spaces and dashes between them dropped, digits written in Chinese read as digits):
    a misplaced column stored it where names are kept in clear (and searched, and
    exported)."""
    normal = unicodedata.normalize("NFKC", name)
    bare = _NUMBER_SEPARATORS.sub("", normal.translate(_CHINESE_DIGITS))
    return _LONG_NUMBER.search(bare) is not None


#: Why ``number_in_name`` refuses a name.
NUMBER_IN_NAME = "must not be an ID or phone number: a name is kept unencrypted"
#: Why a free text about a resident (an address, an ethnicity, a visit's findings) holding
#: what ``number_in_name`` finds is refused.
NUMBER_IN_TEXT = (
    "must not hold an ID or phone number (11 digits or more in a row): it is kept and shown "
    "unencrypted; numbers go in their own fields, encrypted"
)

#: A run of 11 digits or more, written apart or not (any decimal digits: full-width too),
#: an ID number's final X included.
_NUMBER_IN_TEXT = re.compile(r"\d(?:[\s\-_./－]*\d){10,}[Xx]?")


def mask_numbers_in(text: str) -> str:
    """Return ``text`` with every ID or phone number in it masked (``number_in_name``'s
    runs of 11 digits or more, separators and all): 电话 138****5678. For text stored
    before such numbers were refused in it."""
    return _NUMBER_IN_TEXT.sub(lambda m: m[0][:3] + "****" + m[0][-4:], text)


def mask_name(name: str) -> str:
    """Return 张* for 张三, 欧** for 欧阳修: the first character, one star for each other."""
    name = name.strip()
    if len(name) <= 1:
        return "*" * len(name)
    return name[0] + "*" * (len(name) - 1)


def mask_phone(phone: str) -> str:
    """Return 138****5678 for 13812345678."""
    return phone[:3] + "****" + phone[-4:]


def mask_id_number(value: str) -> str:
    """Return 3201**********1234: the first four and the last four characters."""
    return value[:4] + "*" * (len(value) - 8) + value[-4:]


def age_on(birth: date, day: date) -> int:
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
