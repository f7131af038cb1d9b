"""The working calendar as data: holidays and 调休 workdays, read, edited and imported."""

from __future__ import annotations

from datetime import date
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import delete, extract, select
from sqlalchemy.orm import Session

from ..errors import NotFound, Unprocessable
from ..models import CalendarDay
from ..workcalendar import WorkingCalendar, parse_periods

# The years GET /api/v1/calendar?year= lists (CalendarQueryArgsSchema): a year imported
# outside them could not be read back.
FIRST_YEAR, LAST_YEAR = 2000, 2100


def working_calendar(session: Session, working_hours: str, timezone: str) -> WorkingCalendar:
    """Return the calendar deadlines are counted on: the stored days and the working hours."""
    rows = session.execute(select(CalendarDay.day, CalendarDay.kind)).all()
    return WorkingCalendar(
        holidays=frozenset(d for d, kind in rows if kind == "holiday"),
        workdays=frozenset(d for d, kind in rows if kind == "workday"),
        periods=parse_periods(working_hours),
        tz=ZoneInfo(timezone),
    )


def list_days(session: Session, year: int | None = None) -> list[CalendarDay]:
    """Return the stored days (of one year), by date."""
    stmt = select(CalendarDay)
    if year:
        stmt = stmt.where(extract("year", CalendarDay.day) == year)
    return list(session.scalars(stmt.order_by(CalendarDay.day)))


def set_day(session: Session, day: date, kind: str, name: str = "") -> CalendarDay:
    """Mark a day as a holiday or a worked weekend day. Raises Unprocessable."""
    if kind == "workday" and day.weekday() < 5:
        raise Unprocessable(
            "Only a weekend day can be a workday in exchange.",
            errors={"json": {"kind": [f"{day} is a weekday, already a working day"]}},
        )
    row = session.get(CalendarDay, day)
    if row is None:
        row = CalendarDay(day=day, kind=kind, name=name)
        session.add(row)
    else:
        row.kind, row.name = kind, name
    session.flush()
    return row


def remove_day(session: Session, day: date) -> None:
    """Return a day to the Monday-Friday rule. Raises NotFound."""
    row = session.get(CalendarDay, day)
    if row is None:
        raise NotFound("The day is not in the calendar.")
    session.delete(row)
    session.flush()


def import_days(session: Session, data: Any, working_hours: str, timezone: str) -> dict[str, int]:
    """Replace the years in ``data`` (the holidays_cn.json format) with its days.

    All or nothing: the file is checked completely first. Raises Unprocessable naming
    ``years`` for a malformed file or a year outside FIRST_YEAR-LAST_YEAR.
    """
    try:
        parsed = WorkingCalendar.from_data(data, periods=working_hours, tz=timezone)
    except (ValueError, TypeError) as exc:
        raise Unprocessable(
            f"Invalid calendar data: {exc}", errors={"json": {"years": [str(exc)]}}
        ) from None
    # from_data has checked each key is 4 ASCII digits, so int() reads what was written.
    years = sorted(int(y) for y in data["years"])
    outside = [y for y in years if not FIRST_YEAR <= y <= LAST_YEAR]
    if outside:
        problem = f"years must lie between {FIRST_YEAR} and {LAST_YEAR}, got {outside[0]:04d}"
        raise Unprocessable(
            f"Invalid calendar data: {problem}", errors={"json": {"years": [problem]}}
        )
    session.execute(delete(CalendarDay).where(extract("year", CalendarDay.day).in_(years)))
    for day in sorted(parsed.holidays):
        session.add(CalendarDay(day=day, kind="holiday", name=""))
    for day in sorted(parsed.workdays):
        session.add(CalendarDay(day=day, kind="workday", name=""))
    session.flush()
    return {"years": len(years), "holidays": len(parsed.holidays), "workdays": len(parsed.workdays)}
