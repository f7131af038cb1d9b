"""Working calendar (工作日历) for case deadlines: holidays, 调休 workdays, working hours and days."""

from __future__ import annotations

import json
import math
import operator
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

Period = tuple[time, time]

DEFAULT_PERIODS: tuple[Period, ...] = ((time(8, 30), time(12, 0)), (time(13, 30), time(17, 30)))
DEFAULT_TZ = ZoneInfo("Asia/Shanghai")
DATA_VERSION = 1

_US_PER_HOUR = 3_600_000_000
_ONE_DAY = timedelta(days=1)
# ASCII: \d alone matches any Unicode digit (full-width ２０３１), which int() reads.
_PERIOD_RE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", re.ASCII)
_ISO_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_YEAR_KEY_RE = re.compile(r"\d{4}", re.ASCII)


def _normalise_periods(periods: Iterable[Sequence[time]]) -> tuple[Period, ...]:
    """Return `periods` as a sorted tuple of (start, end) pairs.

    Raises ValueError if there are none, if a period is empty or reversed, or if two overlap.
    Touching periods (one ends when the next starts) are allowed. Times must be naive: they are
    wall-clock times in the calendar's time zone.
    """
    pairs: list[Period] = []
    for item in periods:
        if len(item) != 2:
            raise ValueError(f"a working period is a (start, end) pair, got {item!r}")
        start, end = item
        if not isinstance(start, time) or not isinstance(end, time):
            raise ValueError(f"working period bounds must be datetime.time, got {item!r}")
        if start.tzinfo is not None or end.tzinfo is not None:
            raise ValueError("working period times must be naive (they are local to the calendar)")
        if end <= start:
            raise ValueError(f"working period {_fmt(start)}-{_fmt(end)} ends before it starts")
        pairs.append((start, end))
    if not pairs:
        raise ValueError("at least one working period is required")
    pairs.sort()
    for (s1, e1), (s2, e2) in zip(pairs, pairs[1:], strict=False):
        if s2 < e1:
            raise ValueError(
                f"working periods {_fmt(s1)}-{_fmt(e1)} and {_fmt(s2)}-{_fmt(e2)} overlap"
            )
    return tuple(pairs)


def _fmt(t: time) -> str:
    return t.strftime("%H:%M:%S") if t.second or t.microsecond else t.strftime("%H:%M")


def parse_periods(text: str) -> tuple[Period, ...]:
    """Parse working periods written as ``"08:30-12:00,13:30-17:30"``.

    Returns the periods sorted by start time. Whitespace around items is ignored; times are
    ``H:MM`` or ``HH:MM`` (00:00-23:59, so a period cannot run to midnight).
    Raises ValueError naming the offending item on a bad format, an impossible time, an empty
    list, a period whose end is not after its start, or overlapping periods; TypeError if
    `text` is not a string.
    """
    if not isinstance(text, str):
        raise TypeError(
            f"working periods must be a string like '08:30-12:00,13:30-17:30', got {text!r}"
        )
    items = [item.strip() for item in text.split(",")]
    if items == [""]:
        raise ValueError("no working periods given (expected e.g. '08:30-12:00,13:30-17:30')")
    periods: list[Period] = []
    for item in items:
        match = _PERIOD_RE.fullmatch(item)
        if match is None:
            raise ValueError(f"bad working period {item!r}: expected HH:MM-HH:MM, e.g. 08:30-12:00")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        try:
            periods.append((time(h1, m1), time(h2, m2)))
        except ValueError:
            raise ValueError(f"bad working period {item!r}: times must be within 00:00-23:59")
    return _normalise_periods(periods)


def _coerce_tz(tz: tzinfo | str) -> tzinfo:
    if isinstance(tz, str):
        return ZoneInfo(tz)
    if not isinstance(tz, tzinfo):
        raise TypeError(f"tz must be a tzinfo (e.g. ZoneInfo) or a zone name, got {tz!r}")
    return tz


def _coerce_dates(name: str, values: Iterable[date]) -> frozenset[date]:
    result = frozenset(values)
    for d in result:
        # A datetime is a date subclass but never equal to a date, so it would silently not match.
        if not isinstance(d, date) or isinstance(d, datetime):
            raise TypeError(f"{name} must contain datetime.date values, got {d!r}")
    return result


#: Whether a year's days are the State Council's arrangement or a stand-in for it.
YEAR_STATUSES = ("official", "provisional")


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days and hours of one office, in one time zone.

    A day is a working day if it is Monday-Friday and not in `holidays`, or if it is in
    `workdays` (a weekend day worked in exchange, 调休/补班). Working time is the union of
    `periods` (wall-clock times in `tz`) on working days; durations are measured in real elapsed
    time. Datetimes passed in must be timezone-aware (any zone: they are converted to `tz`);
    datetimes returned are in `tz`.

    Holidays and workdays only cover the years present in the data: any later weekday is a
    working day, so import each year's State Council notice when it is published.
    """

    holidays: frozenset[date]
    workdays: frozenset[date]
    periods: tuple[Period, ...] = DEFAULT_PERIODS
    tz: ZoneInfo = DEFAULT_TZ

    def __post_init__(self) -> None:
        """Normalise the fields; raise ValueError/TypeError on inconsistent input."""
        holidays = _coerce_dates("holidays", self.holidays)
        workdays = _coerce_dates("workdays", self.workdays)
        clash = holidays & workdays
        if clash:
            raise ValueError(
                f"dates both holiday and workday: {sorted(d.isoformat() for d in clash)}"
            )
        weekday_workdays = sorted(d.isoformat() for d in workdays if d.weekday() < 5)
        if weekday_workdays:
            # Listing a Mon-Fri date as a workday has no effect, so it is almost surely a typo.
            raise ValueError(f"workdays must be Saturdays or Sundays: {weekday_workdays}")
        # The dataclass is frozen; these assignments only normalise what __init__ stored.
        object.__setattr__(self, "holidays", holidays)
        object.__setattr__(self, "workdays", workdays)
        object.__setattr__(self, "periods", _normalise_periods(self.periods))
        object.__setattr__(self, "tz", _coerce_tz(self.tz))

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_data(
        cls,
        data: Mapping[str, Any],
        periods: str | Sequence[Period] = DEFAULT_PERIODS,
        tz: tzinfo | str = DEFAULT_TZ,
    ) -> WorkingCalendar:
        """Build a calendar from the holidays JSON format (see ``gridapi/data/holidays_cn.json``).

        ``{"version": 1, "source": "...", "years": {"2026": {"status": "official",
        "holidays": ["2026-01-01", ...], "workdays": ["2026-01-04", ...]}, ...}}``; a year's
        ``status`` (``YEAR_STATUSES``, default official) says whether it is the State
        Council's arrangement or a stand-in until that is published. `periods` may be a string for parse_periods.
        Returns the calendar. Raises ValueError on an unknown version, a malformed structure, an
        invalid or duplicated date, a date filed under the wrong year, a workday that is not a
        weekend day, or a date that is both holiday and workday.
        """
        if not isinstance(data, Mapping) or data.get("version") != DATA_VERSION:
            raise ValueError(f"holiday data must be an object with version {DATA_VERSION}")
        years = data.get("years")
        if not isinstance(years, Mapping):
            raise ValueError("holiday data needs a 'years' object")
        holidays: list[date] = []
        workdays: list[date] = []
        for year_key, entry in years.items():
            if not (isinstance(year_key, str) and _YEAR_KEY_RE.fullmatch(year_key)):
                raise ValueError(f"year keys must be 4-digit strings, got {year_key!r}")
            if not isinstance(entry, Mapping) or set(entry) - {"holidays", "workdays", "status"}:
                raise ValueError(
                    f"year {year_key} must only have 'holidays' and 'workdays' lists and a 'status'"
                )
            if entry.get("status", "official") not in YEAR_STATUSES:
                raise ValueError(
                    f"year {year_key}: status must be one of {', '.join(YEAR_STATUSES)}"
                )
            for name, target in (("holidays", holidays), ("workdays", workdays)):
                values = entry.get(name, [])
                if not isinstance(values, list):
                    raise ValueError(f"year {year_key}: {name} must be a list of dates")
                target.extend(_parse_day(year_key, name, v) for v in values)
        for name, values in (("holidays", holidays), ("workdays", workdays)):
            duplicates = sorted(d.isoformat() for d, n in Counter(values).items() if n > 1)
            if duplicates:
                raise ValueError(f"duplicated {name}: {duplicates}")
        if isinstance(periods, str):
            periods = parse_periods(periods)
        return cls(frozenset(holidays), frozenset(workdays), tuple(periods), _coerce_tz(tz))

    # ---- days --------------------------------------------------------------------------------

    def is_working_day(self, d: date) -> bool:
        """Return True if `d` is Mon-Fri and not a holiday, or is a 调休 workday.

        Raises TypeError for a datetime: convert it first with ``t.astimezone(cal.tz).date()``
        (a datetime never equals a date, so a lookup would silently fail).
        """
        if isinstance(d, datetime) or not isinstance(d, date):
            raise TypeError(f"is_working_day takes a datetime.date, got {d!r}")
        return self._works(d)

    def _works(self, d: date) -> bool:
        """is_working_day without the argument check, for the per-day loops."""
        return d in self.workdays or (d.weekday() < 5 and d not in self.holidays)

    def _next_working_day(self, d: date) -> date:
        """Return the first working day strictly after `d`."""
        d += _ONE_DAY
        while not self._works(d):
            d += _ONE_DAY
        return d

    def _bounds(self, d: date) -> list[tuple[datetime, datetime]]:
        """Return the UTC (start, end) of each working period on local date `d` ([] if off)."""
        if not self._works(d):
            return []
        bounds = []
        for start, end in self.periods:
            # Going through UTC makes durations real elapsed time even in a zone with DST
            # (same-tzinfo datetime arithmetic in Python is wall-clock arithmetic).
            s = datetime.combine(d, start, tzinfo=self.tz).astimezone(UTC)
            e = datetime.combine(d, end, tzinfo=self.tz).astimezone(UTC)
            if e > s:  # a period inside a DST gap can vanish
                bounds.append((s, e))
        return bounds

    def _split(self, t: datetime) -> tuple[datetime, date]:
        """Return `t` as a UTC datetime and its local date in `tz`; ValueError if naive."""
        if not isinstance(t, datetime):
            raise TypeError(f"expected a datetime, got {t!r}")
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError(f"naive datetime {t.isoformat()}: pass a timezone-aware datetime")
        return t.astimezone(UTC), t.astimezone(self.tz).date()

    # ---- moments and durations ---------------------------------------------------------------

    def next_working_moment(self, t: datetime) -> datetime:
        """Return the first moment >= `t` at which working time is counted, in `tz`.

        Periods are half-open here: inside [start, end) of a period on a working day `t` itself
        is returned; at or after a period's end (e.g. 12:00 or 17:30 exactly) the result is the
        start of the next period, possibly on a later working day. Raises ValueError if naive.
        """
        u, d = self._split(t)
        while True:
            for s, e in self._bounds(d):
                if u < e:
                    return max(s, u).astimezone(self.tz)
            d += _ONE_DAY

    def add_working_hours(self, start: datetime, hours: float) -> datetime:
        """Return the moment `hours` of working time have been spent, counting from `start`.

        Precisely: the earliest moment t >= `start` such that the working time in [start, t]
        equals `hours` and t lies in a working period taken as closed [period start, period end]
        on a working day. Hence time outside periods and working days does not count; counting
        from a non-working moment starts at the next period start; a budget used up exactly at
        a period end returns that end (17:30), not the next start (08:30 the next working day).
        For ``hours == 0`` the result is `start` if it is in or at the end of a period, else the
        next period start; this keeps ``add(add(s, a), b) == add(s, a + b)`` for every b >= 0
        (next_working_moment differs only at a period's exact end). `hours` is rounded to whole
        microseconds. Returns an aware datetime in `tz`.
        Raises ValueError if `start` is naive or `hours` is negative or not finite.
        """
        if not math.isfinite(hours) or hours < 0:
            raise ValueError(f"hours must be a finite number >= 0, got {hours!r}")
        u, d = self._split(start)
        # Integer microseconds keep the arithmetic exact, so splitting a budget only costs the
        # rounding of its parts (at most a microsecond).
        remaining = timedelta(microseconds=round(hours * _US_PER_HOUR))
        while True:
            for s, e in self._bounds(d):
                if e < u:
                    continue
                begin = max(s, u)
                available = e - begin
                if remaining <= available:
                    return (begin + remaining).astimezone(self.tz)
                remaining -= available
            d += _ONE_DAY

    def add_working_days(self, start: datetime, days: int) -> datetime:
        """Return the deadline `days` working days after `start`: the end of that working day.

        Follows "自受理之日起N个工作日内": the day of `start` (its date in `tz`) does not count,
        whatever the time; the deadline is the end of the last period of the `days`-th working
        day strictly after it (Monday any time + 1 = Tuesday 17:30; Friday + 1 = Monday 17:30;
        Saturday + 1 = Monday 17:30). For ``days == 0`` it is the end of the start day if that
        is a working day (which is earlier than `start` if it came after closing time), else
        the end of the next working day. Returns an aware datetime in `tz`.
        Raises ValueError if `start` is naive or `days` is negative, TypeError if not an int.
        """
        days = operator.index(days)
        if days < 0:
            raise ValueError(f"days must be >= 0, got {days}")
        _, d = self._split(start)
        if days == 0:
            if not self._works(d):
                d = self._next_working_day(d)
        else:
            for _ in range(days):
                d = self._next_working_day(d)
        return datetime.combine(d, self.periods[-1][1], tzinfo=self.tz)

    def working_hours_between(self, start: datetime, end: datetime) -> float:
        """Return the working hours in [start, end) as a float, 0.0 if `end` <= `start`.

        Never negative, so it can be averaged directly as a handling time; the caller decides
        what an inverted interval means. Raises ValueError if either datetime is naive.
        """
        u0, d = self._split(start)
        u1, last = self._split(end)
        if u1 <= u0:
            return 0.0
        total = timedelta(0)
        while d <= last:
            for s, e in self._bounds(d):
                overlap = min(e, u1) - max(s, u0)
                if overlap > timedelta(0):
                    total += overlap
            d += _ONE_DAY
        return (total // timedelta(microseconds=1)) / _US_PER_HOUR


def _parse_day(year_key: str, name: str, value: object) -> date:
    """Return `value` ("YYYY-MM-DD" in year `year_key`) as a date; ValueError otherwise."""
    if not isinstance(value, str) or not _ISO_DATE_RE.fullmatch(value):
        raise ValueError(f"year {year_key}: {name} entry {value!r} is not a YYYY-MM-DD date")
    try:
        d = date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"year {year_key}: {name} entry {value!r} is not a valid date")
    if d.year != int(year_key):
        raise ValueError(f"year {year_key}: {name} entry {value} belongs to another year")
    return d


def load_default_calendar(
    periods: str | Sequence[Period] = DEFAULT_PERIODS,
    tz: tzinfo | str = DEFAULT_TZ,
) -> WorkingCalendar:
    """Return the calendar of ``gridapi/data/holidays_cn.json`` with the given periods and zone.

    The file is read on every call: build the calendar once and reuse it. Raises ValueError
    if the file content or `periods` is invalid (see WorkingCalendar.from_data).
    """
    text = resources.files("gridapi").joinpath("data/holidays_cn.json").read_text("utf-8")
    return WorkingCalendar.from_data(json.loads(text), periods=periods, tz=tz)
