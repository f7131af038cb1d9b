"""The working calendar deadlines are counted on: holidays, 调休 workdays, working hours."""

from __future__ import annotations

from datetime import UTC, date, datetime

from flask.views import MethodView

from .. import clock
from ..auditing import audit, request_actor
from ..auth import AUTHENTICATED
from ..errors import NotFound, Unprocessable
from ..extensions import commit, db_session, state
from ..schemas.calendar import (
    CalendarDaySetSchema,
    CalendarDayUpdateSchema,
    CalendarImportResultSchema,
    CalendarImportSchema,
    CalendarQueryArgsSchema,
    CalendarSchema,
    CalendarYearSchema,
    CalendarYearUpdateSchema,
)
from ..services import calendar as svc
from ..services.tasks import recount_tasks_after_edit
from ..workcalendar import WorkingCalendar
from .blueprint import Blueprint

blp = Blueprint(
    "calendar",
    __name__,
    url_prefix="/api/v1/calendar",
    description="Holidays and the weekend days worked in exchange (调休), as data.",
)


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise NotFound("The day is not in the calendar.") from None


def _recount(before: WorkingCalendar) -> dict[str, int]:
    """Move the deadlines still ahead that the edit changes (see services.calendar), and
    the tasks' and active campaigns' given in working time (services.tasks.
    move_task_deadlines); return how many cases, tasks and campaigns moved (``cases_moved``,
    ``tasks_moved``, ``campaigns_moved``)."""
    settings = state().settings
    moved = svc.recount_after_edit(
        db_session(),
        before,
        settings.working_hours,
        settings.timezone,
        datetime.now(UTC),
        request_actor(),
        cache_seconds=settings.calendar_cache_seconds,
    )
    given = recount_tasks_after_edit(
        db_session(),
        before,
        settings.working_hours,
        settings.timezone,
        datetime.now(UTC),
        request_actor(),
    )
    return {
        "cases_moved": len(moved),
        "tasks_moved": len(given.tasks),
        "campaigns_moved": len(given.campaigns),
    }


def _before() -> WorkingCalendar:
    settings = state().settings
    return svc.calendar_for_edit(db_session(), settings.working_hours, settings.timezone)


def _day_to_set(text: str) -> date:
    """The day a PUT names: a real date in the years the calendar holds, else 422 naming it
    (2026-02-30 was a 404 naming nothing; 9999-12-31 was stored, and no year's read showed
    it)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        day = None
    if day is None or not svc.FIRST_YEAR <= day.year <= svc.LAST_YEAR:
        reason = f"a date (YYYY-MM-DD) of the years {svc.FIRST_YEAR}-{svc.LAST_YEAR}"
        raise Unprocessable("Invalid day.", errors={"path": {"day": [reason]}})
    return day


@blp.route("")
class Calendar(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(CalendarQueryArgsSchema, location="query")
    @blp.response(200, CalendarSchema)
    def get(self, args):
        """The working hours and the days that depart from Monday-Friday

        Returns the configured working hours and timezone with the stored exceptions to the
        Monday-Friday week, by date: public holidays (`holiday`) and weekend days worked in exchange
        (调休, `workday`); `year` limits the list to one year. Deadlines in working hours or days are
        counted on this calendar. Any valid credential may call it, e.g. for a phone to show when a
        case falls due.

        `years` says of each year whether its days are the State Council's arrangement
        (`official`), a stand-in until that is published (`provisional`), or `missing`;
        `warning` is set while a year deadlines counted from today may reach is not official.
        """
        settings = state().settings
        session = db_session()
        today = clock.today()
        return {
            "working_hours": settings.working_hours,
            "timezone": settings.timezone,
            "years": svc.years_view(session, today, args.get("year")),
            "warning": svc.calendar_problem(session, today),
            "items": svc.list_days(session, args.get("year")),
        }


@blp.route("/import")
class CalendarImport(MethodView):
    @blp.requires("calendar:write")
    @blp.arguments(CalendarImportSchema)
    @blp.response(200, CalendarImportResultSchema)
    def post(self, data):
        """Import a year's arrangement (the State Council notice), replacing those years

        All or nothing: a file with any bad date changes nothing. Each year imported takes the
        `status` its entry gives (`official` unless it says `provisional`) and the file's
        `source`; a `source` of more than 2000 characters is a 422 naming it, as with
        `PUT /api/v1/calendar/years/{year}`. The deadlines still ahead of open cases that the
        import changes move with it (docs/cases.md, "When the calendar changes"): a
        `deadline_moved` row in each case's timeline, an audit row `calendar.deadlines_moved`;
        so do those of open tasks given working time (`due_in`; docs/tasks.md): a new version,
        an audit row `task.deadline_moved` each, and a notice to those doing it when it comes
        earlier; and those of active campaigns given working time (an audit row
        `campaign.deadline_moved` and a webhook event each). The answer says how many cases,
        tasks and campaigns moved (`cases_moved`, `tasks_moved`, `campaigns_moved`).
        """
        settings = state().settings
        before = _before()
        result = svc.import_days(db_session(), data, settings.working_hours, settings.timezone)
        audit("calendar.import", "calendar", None, summary=result)
        moved = _recount(before)
        commit()
        state().forget_calendar()
        return {**result, **moved}


@blp.route("/<date:day>")
class CalendarDay(MethodView):
    @blp.requires("calendar:write")
    @blp.arguments(CalendarDayUpdateSchema)
    @blp.response(200, CalendarDaySetSchema)
    def put(self, data, day):
        """Mark a day as a holiday or as a weekend day worked in exchange

        Creates or replaces the exception for the day given in the path (`YYYY-MM-DD`): `kind` is
        `holiday` or `workday` (only a Saturday or Sunday can be a workday in exchange; a weekday is
        a 422), with an optional `name` such as 春节; a day that is no date, or not of the years
        2000-2100, is a 422 naming `day`. Setting the same values again changes nothing.
        Deadlines computed after the change use it: at once in the process that made it, within
        GRIDAPI_CALENDAR_CACHE_SECONDS (10 s) in the others. Deadlines still ahead of open cases
        that counted the day are counted again from the same start, in this request (a
        `deadline_moved` row in each case's timeline), and so are those of open tasks given
        working time (`due_in`, an audit row `task.deadline_moved`, and a notice to those doing
        it when it comes earlier) and of active campaigns given working time (an audit row
        `campaign.deadline_moved` and a webhook event); deadlines already passed stay. The
        answer says how many of each moved (`cases_moved`, `tasks_moved`, `campaigns_moved`).
        Needs `calendar:write`; writes an audit row `calendar.set`, and
        `calendar.deadlines_moved` when case deadlines moved.
        """
        before = _before()
        row = svc.set_day(db_session(), _day_to_set(day), data["kind"], data["name"])
        audit("calendar.set", "calendar", day, summary=data)
        moved = _recount(before)
        commit()
        state().forget_calendar()
        return {"day": row.day, "kind": row.kind, "name": row.name, **moved}

    @blp.requires("calendar:write")
    @blp.response(204)
    def delete(self, day):
        """Return a day to the Monday-Friday rule

        Deletes the exception stored for the day, so it is again a working day from Monday to Friday
        and a rest day at the weekend, and answers 204. A day with no exception (or not a valid
        date) answers 404. Needs `calendar:write`; writes an audit row `calendar.remove`, and
        deadlines computed afterwards use the change; deadlines still ahead of open cases and
        of open tasks and active campaigns given working time that counted the day move as with
        `PUT` (`calendar.deadlines_moved`, `task.deadline_moved`, `campaign.deadline_moved`;
        the audit rows say how many: the answer has no body).
        """
        before = _before()
        svc.remove_day(db_session(), _day(day))
        audit("calendar.remove", "calendar", day)
        _recount(before)
        commit()
        state().forget_calendar()


@blp.route("/years/<int:year>")
class CalendarYear(MethodView):
    @blp.requires("calendar:write")
    @blp.arguments(CalendarYearUpdateSchema)
    @blp.response(200, CalendarYearSchema)
    def put(self, data, year):
        """Say whether a year's days are the State Council's arrangement

        `official` once the year's holidays and 调休 days are those of the notice (set day by
        day with `PUT /api/v1/calendar/{day}`, or imported), `provisional` while they are a
        stand-in; `source` names the notice. While a year deadlines counted from today may
        reach is not official, `GET /api/v1/calendar` and `gridapi serve` warn. A year outside
        2000-2100 is a 422 naming `year`. Needs `calendar:write`; writes an audit row
        `calendar.year`.
        """
        if not svc.FIRST_YEAR <= year <= svc.LAST_YEAR:
            reason = f"a year of {svc.FIRST_YEAR}-{svc.LAST_YEAR}"
            raise Unprocessable("Invalid year.", errors={"path": {"year": [reason]}})
        session = db_session()
        svc.set_year(session, year, data["status"], data.get("source"))
        audit("calendar.year", "calendar", str(year), summary={"status": data["status"]})
        commit()
        return svc.years_view(session, clock.today(), year)[0]
