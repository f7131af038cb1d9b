"""Counting a deadline again on an edited calendar: same start, same length."""

from __future__ import annotations

from datetime import UTC, date, datetime

from gridapi.services.calendar import changed_days, recounted
from gridapi.workcalendar import WorkingCalendar

BEFORE = WorkingCalendar(holidays=frozenset(), workdays=frozenset())
TZ = BEFORE.tz


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=TZ).astimezone(UTC)


def test_hours_are_counted_again_around_a_new_holiday():
    # Friday 2026-12-04 16:30 + 4 working hours: Monday 11:30; Monday a holiday: Tuesday.
    after = WorkingCalendar(holidays=frozenset({date(2026, 12, 7)}), workdays=frozenset())
    start, due = at(2026, 12, 4, 16, 30), at(2026, 12, 7, 11, 30)
    assert recounted(BEFORE, after, start, due, "hours") == at(2026, 12, 8, 11, 30)
    assert changed_days(BEFORE, after) == {date(2026, 12, 7)}
    # and back
    assert recounted(after, BEFORE, start, at(2026, 12, 8, 11, 30), "hours") == due


def test_days_keep_their_time_of_day_and_a_worked_saturday_counts():
    # Monday 10:00 + 2 working days (Wednesday 17:30), or extended by 2 hours to
    # Wednesday 15:00 ... Tuesday a holiday: Thursday, at the same time of day.
    after = WorkingCalendar(holidays=frozenset({date(2026, 12, 8)}), workdays=frozenset())
    start = at(2026, 12, 7, 10, 0)
    assert recounted(BEFORE, after, start, at(2026, 12, 9, 17, 30), "days") == at(
        2026, 12, 10, 17, 30
    )
    assert recounted(BEFORE, after, start, at(2026, 12, 9, 15, 0), "days") == at(
        2026, 12, 10, 15, 0
    )
    # Friday + 1 working day is Monday; with Saturday worked in exchange, Saturday.
    saturday = WorkingCalendar(holidays=frozenset(), workdays=frozenset({date(2026, 12, 12)}))
    friday = at(2026, 12, 11, 9, 0)
    assert recounted(BEFORE, saturday, friday, at(2026, 12, 14, 17, 30), "days") == at(
        2026, 12, 12, 17, 30
    )
