"""Working calendar: holiday data, period parsing, working hours and days, and their properties."""

from __future__ import annotations

import json
import math
from datetime import UTC, date, datetime, time, timedelta
from importlib import resources
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gridapi.workcalendar import (
    DEFAULT_PERIODS,
    WorkingCalendar,
    load_default_calendar,
    parse_periods,
)

SH = ZoneInfo("Asia/Shanghai")
CAL = load_default_calendar()
MINUTE = timedelta(minutes=1)
MICROSECOND = timedelta(microseconds=1)


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, tz: ZoneInfo = SH) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=tz)


def days_between(first: str, last: str) -> set[date]:
    d, end = date.fromisoformat(first), date.fromisoformat(last)
    out = set()
    while d <= end:
        out.add(d)
        d += timedelta(days=1)
    return out


def in_closed_period(cal: WorkingCalendar, t: datetime) -> bool:
    local = t.astimezone(cal.tz)
    clock = local.time()
    return cal.is_working_day(local.date()) and any(a <= clock <= b for a, b in cal.periods)


def in_open_period(cal: WorkingCalendar, t: datetime) -> bool:
    local = t.astimezone(cal.tz)
    clock = local.time()
    return cal.is_working_day(local.date()) and any(a <= clock < b for a, b in cal.periods)


# ---- the data file ---------------------------------------------------------------------------


def raw_data() -> dict:
    text = resources.files("gridapi").joinpath("data/holidays_cn.json").read_text("utf-8")
    return json.loads(text)


def test_data_file_is_consistent():
    data = raw_data()
    assert data["version"] == 1
    assert set(data["years"]) == {"2026", "2027"}
    for year, entry in data["years"].items():
        holidays = [date.fromisoformat(s) for s in entry["holidays"]]
        workdays = [date.fromisoformat(s) for s in entry["workdays"]]
        assert holidays == sorted(set(holidays)), f"{year}: holidays unsorted or duplicated"
        assert workdays == sorted(set(workdays)), f"{year}: workdays unsorted or duplicated"
        assert all(str(d.year) == year for d in holidays + workdays)
        assert all(d.weekday() >= 5 for d in workdays), f"{year}: a workday is not a weekend day"
        assert not set(holidays) & set(workdays)


def test_data_2026_matches_state_council_notice():
    # 国务院办公厅关于2026年部分节假日安排的通知 (2025-11-04), transcribed a second time here.
    expected_holidays = (
        days_between("2026-01-01", "2026-01-03")  # 元旦
        | days_between("2026-02-15", "2026-02-23")  # 春节, 9 days
        | days_between("2026-04-04", "2026-04-06")  # 清明节
        | days_between("2026-05-01", "2026-05-05")  # 劳动节
        | days_between("2026-06-19", "2026-06-21")  # 端午节
        | days_between("2026-09-25", "2026-09-27")  # 中秋节
        | days_between("2026-10-01", "2026-10-07")  # 国庆节
    )
    expected_workdays = {
        date(2026, 1, 4),  # Sunday
        date(2026, 2, 14),  # Saturday
        date(2026, 2, 28),  # Saturday
        date(2026, 5, 9),  # Saturday
        date(2026, 9, 20),  # Sunday
        date(2026, 10, 10),  # Saturday
    }
    assert {d for d in CAL.holidays if d.year == 2026} == expected_holidays
    assert {d for d in CAL.workdays if d.year == 2026} == expected_workdays


def test_data_2027_has_only_fixed_date_holidays():
    assert {d for d in CAL.holidays if d.year == 2027} == {
        date(2027, 1, 1),
        date(2027, 5, 1),
        date(2027, 5, 2),  # statutory since the 2024 revision of the 放假办法
        date(2027, 10, 1),
        date(2027, 10, 2),
        date(2027, 10, 3),
    }
    assert not {d for d in CAL.workdays if d.year == 2027}
    assert "2027" in raw_data()["source"]


def test_2026_has_248_working_days():
    # 261 weekdays - 19 weekday holidays + 6 调休 weekend days; also a year-long span.
    start, end = at(2026, 1, 1), at(2027, 1, 1)
    assert CAL.working_hours_between(start, end) == 248 * 7.5
    assert sum(CAL.is_working_day(d) for d in days_between("2026-01-01", "2026-12-31")) == 248


def test_holidays_are_never_and_workdays_always_working_days():
    assert not any(CAL.is_working_day(d) for d in CAL.holidays)
    assert all(CAL.is_working_day(d) for d in CAL.workdays)


def test_load_default_calendar_with_custom_periods_and_zone():
    cal = load_default_calendar(periods="09:00-17:00", tz="Asia/Urumqi")
    assert cal.periods == ((time(9), time(17)),)
    assert cal.tz == ZoneInfo("Asia/Urumqi")
    assert cal.holidays == CAL.holidays
    assert cal.add_working_hours(datetime(2026, 3, 6, 16, tzinfo=cal.tz), 2) == datetime(
        2026, 3, 9, 10, tzinfo=cal.tz
    )


# ---- parse_periods ---------------------------------------------------------------------------


def test_parse_periods_default():
    assert parse_periods("08:30-12:00,13:30-17:30") == DEFAULT_PERIODS


def test_parse_periods_sorts_and_tolerates_spaces():
    assert parse_periods(" 13:30 - 17:30 , 8:30-12:00 ") == DEFAULT_PERIODS


def test_parse_periods_allows_touching_periods():
    assert parse_periods("08:00-12:00,12:00-13:00") == (
        (time(8), time(12)),
        (time(12), time(13)),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no working periods"),
        ("   ", "no working periods"),
        ("08:30-12", "expected HH:MM-HH:MM"),
        ("08:30-12:00;13:30-17:30", "expected HH:MM-HH:MM"),
        ("08:30-12:00,", "expected HH:MM-HH:MM"),
        ("0830-1200", "expected HH:MM-HH:MM"),
        ("8h-12h", "expected HH:MM-HH:MM"),
        ("25:00-26:00", "within 00:00-23:59"),
        ("08:60-09:00", "within 00:00-23:59"),
        ("08:00-24:00", "within 00:00-23:59"),
        ("12:00-08:30", "ends before it starts"),
        ("08:30-08:30", "ends before it starts"),
        ("08:30-12:00,11:00-14:00", "overlap"),
        ("13:30-17:30,08:30-14:00", "overlap"),
        # Full-width and Arabic-Indic digits: \d matched them and int() read them.
        ("０８:30-12:00", "expected HH:MM-HH:MM"),
        ("08:30-١٢:00", "expected HH:MM-HH:MM"),
    ],
)
def test_parse_periods_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_periods(text)


def test_parse_periods_rejects_non_strings():
    with pytest.raises(TypeError):
        parse_periods(None)  # type: ignore[arg-type]


# ---- construction ----------------------------------------------------------------------------


def test_constructor_normalises_fields():
    cal = WorkingCalendar(
        {date(2026, 1, 1)},  # type: ignore[arg-type]
        [date(2026, 1, 4)],  # type: ignore[arg-type]
        [(time(13), time(14)), (time(9), time(12))],  # type: ignore[arg-type]
        "UTC",  # type: ignore[arg-type]
    )
    assert cal.holidays == frozenset({date(2026, 1, 1)})
    assert cal.workdays == frozenset({date(2026, 1, 4)})
    assert cal.periods == ((time(9), time(12)), (time(13), time(14)))
    assert cal.tz == ZoneInfo("UTC")
    hash(cal)  # frozen and hashable, so it can be a cache key


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"periods": ()}, ValueError, "at least one"),
        ({"periods": ((time(9), time(12)), (time(11), time(13)))}, ValueError, "overlap"),
        ({"periods": ((time(12), time(9)),)}, ValueError, "ends before"),
        ({"holidays": frozenset({date(2026, 1, 4)})}, ValueError, "both holiday and workday"),
        ({"workdays": frozenset({date(2026, 1, 5)})}, ValueError, "Saturdays or Sundays"),
        ({"holidays": frozenset({datetime(2026, 1, 1)})}, TypeError, "datetime.date"),
        ({"tz": 8}, TypeError, "tzinfo"),
    ],
)
def test_constructor_rejects_inconsistent_input(kwargs, error, message):
    fields = {"holidays": frozenset(), "workdays": frozenset({date(2026, 1, 4)}), **kwargs}
    with pytest.raises(error, match=message):
        WorkingCalendar(**fields)


def good_data() -> dict:
    return {
        "version": 1,
        "source": "test",
        "years": {"2026": {"holidays": ["2026-01-01"], "workdays": ["2026-01-04"]}},
    }


def test_from_data():
    cal = WorkingCalendar.from_data(good_data(), periods="09:00-12:00", tz=UTC)
    assert cal.holidays == {date(2026, 1, 1)}
    assert cal.workdays == {date(2026, 1, 4)}
    assert cal.periods == ((time(9), time(12)),)
    assert cal.tz is UTC


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(version=2), "version 1"),
        (lambda d: d.pop("years"), "'years'"),
        (lambda d: d["years"].update({"26": {}}), "4-digit"),
        # Unicode digits are not 4-digit year keys (int("２０３１") is 2031).
        (lambda d: d["years"].update({"２０３１": {"holidays": []}}), "4-digit"),
        (lambda d: d["years"].update({"٢٠٣١": {}}), "4-digit"),
        (lambda d: d["years"]["2026"]["holidays"].append("２０２６-01-02"), "not a YYYY-MM-DD"),
        (lambda d: d["years"]["2026"].update(notes=[]), "only have"),
        (lambda d: d["years"]["2026"].update(holidays="2026-01-01"), "list of dates"),
        (lambda d: d["years"]["2026"]["holidays"].append("2026-02-30"), "not a valid date"),
        (lambda d: d["years"]["2026"]["holidays"].append("2026/02/01"), "not a YYYY-MM-DD"),
        (lambda d: d["years"]["2026"]["holidays"].append(20260201), "not a YYYY-MM-DD"),
        (lambda d: d["years"]["2026"]["holidays"].append("2027-01-01"), "another year"),
        (lambda d: d["years"]["2026"]["holidays"].append("2026-01-01"), "duplicated holidays"),
        (lambda d: d["years"]["2026"]["workdays"].append("2026-01-05"), "Saturdays or Sundays"),
        (lambda d: d["years"]["2026"]["holidays"].append("2026-01-04"), "both holiday"),
    ],
)
def test_from_data_errors(change, message):
    data = good_data()
    change(data)
    with pytest.raises(ValueError, match=message):
        WorkingCalendar.from_data(data)


def test_from_data_files_a_zero_padded_year_under_its_key():
    # "0001" is the year of 0001-01-01 (compared as text, "1" != "0001" said another year).
    data = {"version": 1, "years": {"0001": {"holidays": ["0001-01-01"]}}}
    assert WorkingCalendar.from_data(data).holidays == {date(1, 1, 1)}
    data = {"version": 1, "years": {"0001": {"holidays": ["0002-01-01"]}}}
    with pytest.raises(ValueError, match="belongs to another year"):
        WorkingCalendar.from_data(data)


# ---- is_working_day --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "working"),
    [
        (date(2026, 3, 6), True),  # ordinary Friday
        (date(2026, 3, 7), False),  # ordinary Saturday
        (date(2026, 3, 8), False),  # ordinary Sunday
        (date(2026, 10, 1), False),  # 国庆
        (date(2026, 10, 10), True),  # 调休 Saturday
        (date(2026, 9, 20), True),  # 调休 Sunday
        (date(2026, 2, 23), False),  # Monday inside 春节
        (date(2028, 1, 3), True),  # no data for 2028: weekdays are working days
    ],
)
def test_is_working_day(day, working):
    assert CAL.is_working_day(day) is working


def test_is_working_day_rejects_datetimes():
    with pytest.raises(TypeError, match="datetime.date"):
        CAL.is_working_day(at(2026, 3, 6))


# ---- add_working_hours -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "hours", "expected"),
    [
        (at(2026, 3, 6, 16, 30), 4, at(2026, 3, 9, 11, 30)),  # Friday -> Monday, normal week
        (at(2026, 9, 30, 16, 30), 4, at(2026, 10, 8, 11, 30)),  # jumps 国庆 1-7 Oct
        (at(2026, 10, 9, 16, 30), 4, at(2026, 10, 10, 11, 30)),  # 调休 Saturday counts
        (at(2026, 9, 19, 10), 1, at(2026, 9, 20, 9, 30)),  # 调休 Sunday counts
        (at(2026, 3, 5, 11), 2, at(2026, 3, 5, 14, 30)),  # lunch break skipped
        (at(2026, 3, 5, 20), 2, at(2026, 3, 6, 10, 30)),  # evening: next morning
        (at(2026, 3, 5, 6), 1, at(2026, 3, 5, 9, 30)),  # early morning: same morning
        (at(2026, 3, 5, 12, 30), 0.5, at(2026, 3, 5, 14)),  # lunch time: afternoon
        (at(2026, 3, 5, 12), 0.5, at(2026, 3, 5, 14)),  # at a period end: next period
        (at(2026, 3, 5, 17, 30), 1, at(2026, 3, 6, 9, 30)),  # at closing: next day
        (at(2026, 3, 5, 8, 30), 3.5, at(2026, 3, 5, 12)),  # used up at noon: 12:00
        (at(2026, 3, 6, 13, 30), 4, at(2026, 3, 6, 17, 30)),  # used up at close: Friday 17:30
        (at(2026, 3, 5, 8, 30), 7.5, at(2026, 3, 5, 17, 30)),  # one full day
        (at(2026, 3, 2, 8, 30), 37.5, at(2026, 3, 6, 17, 30)),  # one full week
        (at(2026, 3, 5, 9, 10), 0.25, at(2026, 3, 5, 9, 25)),
        (at(2026, 10, 3, 10), 1, at(2026, 10, 8, 9, 30)),  # start inside a holiday
        (at(2026, 2, 13, 16, 30), 4, at(2026, 2, 14, 11, 30)),  # 春节 调休 Saturday
        (at(2026, 2, 14, 16, 30), 4, at(2026, 2, 24, 11, 30)),  # across 春节 (15-23 Feb)
        (at(2025, 12, 31, 17), 1, at(2026, 1, 4, 9)),  # across 元旦 to 调休 Sunday
        # hours == 0: the start itself when in or at the end of a period, else the next start.
        (at(2026, 3, 5, 10), 0, at(2026, 3, 5, 10)),
        (at(2026, 3, 5, 12), 0, at(2026, 3, 5, 12)),
        (at(2026, 3, 5, 17, 30), 0, at(2026, 3, 5, 17, 30)),
        (at(2026, 3, 5, 12, 1), 0, at(2026, 3, 5, 13, 30)),
        (at(2026, 3, 7, 10), 0, at(2026, 3, 9, 8, 30)),
    ],
)
def test_add_working_hours(start, hours, expected):
    result = CAL.add_working_hours(start, hours)
    assert result == expected
    assert result.tzinfo == SH


def test_add_working_hours_converts_other_zones():
    start = datetime(2026, 3, 6, 8, 30, tzinfo=UTC)  # Friday 16:30 in Shanghai
    result = CAL.add_working_hours(start, 4)
    assert result == at(2026, 3, 9, 11, 30)
    assert result.tzinfo == SH
    assert result.isoformat() == "2026-03-09T11:30:00+08:00"


def test_add_working_hours_over_a_year():
    start = at(2026, 1, 1)
    assert CAL.add_working_hours(start, 248 * 7.5) == at(2026, 12, 31, 17, 30)


@pytest.mark.parametrize("hours", [-1, -1e-9, math.nan, math.inf])
def test_add_working_hours_rejects_bad_hours(hours):
    with pytest.raises(ValueError, match="hours"):
        CAL.add_working_hours(at(2026, 3, 5, 10), hours)


# ---- next_working_moment ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (at(2026, 3, 5, 10), at(2026, 3, 5, 10)),
        (at(2026, 3, 5, 8, 30), at(2026, 3, 5, 8, 30)),
        (at(2026, 3, 5, 12), at(2026, 3, 5, 13, 30)),  # a period end is not working time
        (at(2026, 3, 5, 17, 30), at(2026, 3, 6, 8, 30)),
        (at(2026, 3, 6, 18), at(2026, 3, 9, 8, 30)),  # Friday evening -> Monday
        (at(2026, 9, 30, 18), at(2026, 10, 8, 8, 30)),  # before 国庆
        (at(2026, 10, 9, 18), at(2026, 10, 10, 8, 30)),  # 调休 Saturday
    ],
)
def test_next_working_moment(t, expected):
    assert CAL.next_working_moment(t) == expected


# ---- add_working_days ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "days", "expected"),
    [
        (at(2026, 3, 2, 10), 1, at(2026, 3, 3, 17, 30)),  # Monday + 1 = Tuesday 17:30
        (at(2026, 3, 2, 0), 1, at(2026, 3, 3, 17, 30)),
        (at(2026, 3, 2, 23, 59), 1, at(2026, 3, 3, 17, 30)),
        (at(2026, 3, 6, 9), 1, at(2026, 3, 9, 17, 30)),  # Friday + 1 = Monday 17:30
        (at(2026, 3, 7, 9), 1, at(2026, 3, 9, 17, 30)),  # Saturday + 1 = Monday 17:30
        (at(2026, 3, 2, 9), 5, at(2026, 3, 9, 17, 30)),
        (at(2026, 2, 13, 9), 1, at(2026, 2, 14, 17, 30)),  # 春节 调休 Saturday
        (at(2026, 2, 14, 9), 1, at(2026, 2, 24, 17, 30)),  # across 春节
        (at(2026, 2, 12, 9), 3, at(2026, 2, 24, 17, 30)),  # 13 Feb, 14 Feb (调休), 24 Feb
        (at(2026, 2, 17, 9), 1, at(2026, 2, 24, 17, 30)),  # reported during 春节
        (at(2026, 9, 28, 9), 7, at(2026, 10, 13, 17, 30)),  # 7-day penalty across 国庆
        (at(2026, 3, 2, 10), 0, at(2026, 3, 2, 17, 30)),  # same working day
        (at(2026, 3, 2, 20), 0, at(2026, 3, 2, 17, 30)),  # documented: before the start
        (at(2026, 3, 7, 10), 0, at(2026, 3, 9, 17, 30)),  # weekend: next working day
        (at(2026, 10, 1, 10), 0, at(2026, 10, 8, 17, 30)),
        (datetime(2026, 3, 1, 16, 30, tzinfo=UTC), 1, at(2026, 3, 3, 17, 30)),  # Mon 00:30 SH
    ],
)
def test_add_working_days(start, days, expected):
    result = CAL.add_working_days(start, days)
    assert result == expected
    assert result.tzinfo == SH


def test_add_working_days_uses_last_period_end():
    cal = WorkingCalendar(frozenset(), frozenset(), parse_periods("09:00-12:00,14:00-18:00"))
    assert cal.add_working_days(at(2026, 3, 2, 10), 1) == at(2026, 3, 3, 18)


def test_add_working_days_rejects_bad_days():
    with pytest.raises(ValueError, match="days"):
        CAL.add_working_days(at(2026, 3, 2), -1)
    with pytest.raises(TypeError):
        CAL.add_working_days(at(2026, 3, 2), 1.5)  # type: ignore[arg-type]


# ---- working_hours_between -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "hours"),
    [
        (at(2026, 3, 6, 16, 30), at(2026, 3, 9, 11, 30), 4.0),
        (at(2026, 3, 5, 11), at(2026, 3, 5, 14, 30), 2.0),
        (at(2026, 3, 5, 12), at(2026, 3, 5, 13, 30), 0.0),
        (at(2026, 3, 2), at(2026, 3, 9), 37.5),
        (at(2026, 9, 28), at(2026, 10, 12), 6 * 7.5),  # 28-30 Sep, 8-10 Oct
        (at(2026, 2, 14, 17), at(2026, 2, 24, 9), 1.0),  # 0.5 h before and after 春节
        (at(2026, 3, 5, 14), at(2026, 3, 5, 10), 0.0),  # reversed: 0
        (at(2026, 3, 5, 10), at(2026, 3, 5, 10), 0.0),
        (datetime(2026, 3, 5, 2, tzinfo=UTC), datetime(2026, 3, 5, 3, tzinfo=UTC), 1.0),
    ],
)
def test_working_hours_between(start, end, hours):
    assert CAL.working_hours_between(start, end) == hours


# ---- naive datetimes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda t: CAL.add_working_hours(t, 1),
        lambda t: CAL.add_working_days(t, 1),
        lambda t: CAL.next_working_moment(t),
        lambda t: CAL.working_hours_between(t, at(2026, 3, 6)),
        lambda t: CAL.working_hours_between(at(2026, 3, 4), t),
    ],
)
def test_naive_datetimes_are_rejected(call):
    with pytest.raises(ValueError, match="naive"):
        call(datetime(2026, 3, 5, 10))


# ---- properties ------------------------------------------------------------------------------

# Arbitrary calendars on a 15-minute grid around early 2026, besides the real one.
_BASE = date(2026, 1, 1)
_window_days = st.integers(0, 90).map(lambda i: _BASE + timedelta(days=i))


@st.composite
def random_calendars(draw) -> WorkingCalendar:
    holidays = draw(st.frozensets(_window_days, max_size=30))
    weekend = draw(st.frozensets(_window_days.filter(lambda d: d.weekday() >= 5), max_size=10))
    marks = sorted(draw(st.lists(st.integers(0, 95), min_size=2, max_size=8, unique=True)))
    marks = marks[: len(marks) // 2 * 2]
    periods = tuple(
        (time(*divmod(a * 15, 60)), time(*divmod(b * 15, 60)))
        for a, b in zip(marks[::2], marks[1::2], strict=True)
    )
    tz = draw(st.sampled_from([SH, ZoneInfo("UTC")]))
    return WorkingCalendar(holidays, weekend - holidays, periods, tz)


calendars = st.one_of(st.just(CAL), st.just(CAL), random_calendars())


def moments(cal: WorkingCalendar) -> st.SearchStrategy[datetime]:
    """Aware moments, biased towards holidays, 调休 days and period boundaries."""
    special = sorted(cal.holidays | cal.workdays)
    days = st.dates(date(2025, 12, 20), date(2027, 12, 31))
    if special:
        shifted = st.tuples(st.sampled_from(special), st.integers(-2, 2))
        days = st.one_of(days, shifted.map(lambda p: p[0] + timedelta(days=p[1])))
    bounds = [t for period in cal.periods for t in period]
    clock = st.one_of(st.sampled_from(bounds), st.times())
    return st.builds(lambda d, t: datetime.combine(d, t, tzinfo=cal.tz), days, clock)


hours_st = st.one_of(
    st.sampled_from([0, 0.25, 1, 3.5, 4, 7.5, 8, 37.5]),
    st.floats(0, 60, allow_nan=False, allow_infinity=False),
)

prop = settings(deadline=None)


@prop
@given(st.data())
def test_add_working_hours_is_monotonic_in_start(data):
    cal = data.draw(calendars)
    s1, s2 = sorted([data.draw(moments(cal)), data.draw(moments(cal))])
    hours = data.draw(hours_st)
    assert cal.add_working_hours(s1, hours) <= cal.add_working_hours(s2, hours)


@prop
@given(st.data())
def test_add_working_hours_is_monotonic_in_hours(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal))
    h1, h2 = sorted([data.draw(hours_st), data.draw(hours_st)])
    assert cal.add_working_hours(start, h1) <= cal.add_working_hours(start, h2)


@prop
@given(st.data())
def test_working_hours_between_inverts_add_working_hours(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal))
    hours = data.draw(hours_st)
    # Any start: time before the first working moment does not count either.
    end = cal.add_working_hours(start, hours)
    assert cal.working_hours_between(start, end) == pytest.approx(hours, abs=1e-6)
    working_start = cal.next_working_moment(start)
    end = cal.add_working_hours(working_start, hours)
    assert cal.working_hours_between(working_start, end) == pytest.approx(hours, abs=1e-6)


@prop
@given(st.data())
def test_add_working_hours_composes(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal))
    a, b = data.draw(hours_st), data.draw(hours_st)
    for s in (start, cal.next_working_moment(start)):
        stepwise = cal.add_working_hours(cal.add_working_hours(s, a), b)
        assert abs(stepwise - cal.add_working_hours(s, a + b)) <= MICROSECOND


@prop
@given(st.data())
def test_add_working_hours_ends_inside_a_working_period(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal))
    result = cal.add_working_hours(start, data.draw(hours_st))
    assert result >= start
    assert result.tzinfo == cal.tz
    assert in_closed_period(cal, result)


@prop
@given(st.data())
def test_next_working_moment_is_the_first_working_moment(data):
    cal = data.draw(calendars)
    t = data.draw(moments(cal))
    nxt = cal.next_working_moment(t)
    assert nxt >= t
    assert in_open_period(cal, nxt)
    assert cal.working_hours_between(t, nxt) == 0
    if in_open_period(cal, t):
        assert nxt == t
    # add_working_hours(t, 0) differs only when t is exactly at a period end.
    zero = cal.add_working_hours(t, 0)
    assert zero == nxt or (zero == t and t.astimezone(cal.tz).time() in {e for _, e in cal.periods})


@prop
@given(st.data())
def test_add_working_days_lands_at_the_end_of_a_working_day(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal))
    n = data.draw(st.integers(0, 30))
    result = cal.add_working_days(start, n)
    day = start.astimezone(cal.tz).date()
    assert result.tzinfo == cal.tz
    assert cal.is_working_day(result.date())
    assert result.time() == cal.periods[-1][1]
    assert result.date() >= day
    # Exactly n working days in (start day, result day], or the start day itself for n=0.
    counted = sum(cal.is_working_day(d) for d in _dates(day + timedelta(days=1), result.date()))
    if n == 0 and cal.is_working_day(day):
        assert result.date() == day
    elif n == 0:
        assert counted == 1  # the next working day
    else:
        assert counted == n


@prop
@given(st.data())
def test_holidays_and_workdays(data):
    cal = data.draw(calendars)
    for d in cal.holidays:
        assert not cal.is_working_day(d)
    for d in cal.workdays:
        assert cal.is_working_day(d)
        assert cal.add_working_days(datetime.combine(d, time(9), cal.tz), 0).date() == d
    if cal.workdays:
        d = data.draw(st.sampled_from(sorted(cal.workdays)))
        start = datetime.combine(d, cal.periods[0][0], cal.tz)
        assert cal.add_working_hours(start, 0.25).date() == d
    if cal.holidays:
        d = data.draw(st.sampled_from(sorted(cal.holidays)))
        span = cal.working_hours_between(
            datetime.combine(d, time(0), cal.tz),
            datetime.combine(d + timedelta(days=1), time(0), cal.tz),
        )
        assert span == 0


@prop
@given(st.data())
def test_working_hours_between_is_additive_and_bounded(data):
    cal = data.draw(calendars)
    a, b, c = sorted(data.draw(moments(cal)) for _ in range(3))
    ab, bc, ac = (cal.working_hours_between(x, y) for x, y in ((a, b), (b, c), (a, c)))
    assert ab + bc == pytest.approx(ac, abs=1e-6)
    assert 0 <= ac <= (c - a).total_seconds() / 3600 + 1e-9
    assert cal.working_hours_between(c, a) == (0 if c > a else ac)


def _dates(first: date, last: date):
    d = first
    while d <= last:
        yield d
        d += timedelta(days=1)


def _reference_add(cal: WorkingCalendar, start: datetime, minutes: int) -> datetime:
    """Minute-by-minute add_working_hours for minute-aligned inputs: slow but obvious."""
    t = start
    if minutes == 0:
        while not in_closed_period(cal, t):
            t += MINUTE
        return t
    while minutes:
        if in_open_period(cal, t):  # the minute [t, t + 1 min) is working time
            minutes -= 1
        t += MINUTE
    return t


@settings(deadline=None, max_examples=60)
@given(st.data())
def test_add_working_hours_matches_minute_by_minute_reference(data):
    cal = data.draw(calendars)
    start = data.draw(moments(cal)).replace(second=0, microsecond=0)
    minutes = data.draw(st.integers(0, 8 * 60))
    assert cal.add_working_hours(start, minutes / 60) == _reference_add(cal, start, minutes)
