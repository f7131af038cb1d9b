"""The working calendar as data: holidays and 调休 workdays, read, edited and imported."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, delete, extract, func, or_, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import NotFound, Unprocessable
from ..models import CalendarDay, CalendarYear
from ..workcalendar import YEAR_STATUSES, WorkingCalendar, parse_periods
from .audit import Actor, record
from .uniques import add_or_found

# The years GET /api/v1/calendar?year= lists (CalendarQueryArgsSchema): a year imported
# outside them could not be read back.
FIRST_YEAR, LAST_YEAR = 2000, 2100
#: How far ahead the calendar must be the State Council's: deadlines counted from today reach
#: about this far (a month of working days and more), so a year that starts within it and is
#: not official is warned of.
HORIZON = timedelta(days=60)
#: Longest source text kept for a year.
SOURCE_MAX = 2000
#: How many imports of the same years at once an import waits for before it gives up with
#: the generic conflict (each is retried after the one it waited for).
IMPORT_RETRIES = 3


def working_calendar(session: Session, working_hours: str, timezone: str) -> WorkingCalendar:
    """Return the calendar deadlines are counted on: the stored days and the working hours."""
    rows = session.execute(select(CalendarDay.day, CalendarDay.kind)).all()
    return WorkingCalendar(
        holidays=frozenset(d for d, kind in rows if kind == "holiday"),
        workdays=frozenset(d for d, kind in rows if kind == "workday"),
        periods=parse_periods(working_hours),
        tz=ZoneInfo(timezone),
    )


# PostgreSQL advisory lock, two-key form (see services.regions): the calendar's edits.
_CALENDAR_LOCK = 2290


def calendar_for_edit(session: Session, working_hours: str, timezone: str) -> WorkingCalendar:
    """Wait until no other transaction is editing the calendar or counting deadlines again
    after an edit, keep the others from doing so until this transaction ends, and return
    the calendar as it is now: the ``before`` of an edit.

    Every edit (a day set or removed, an import) takes it before it reads the calendar, as
    does the worker's recount (``recount_after_cache``). Two edits at once each counted the
    deadlines on the calendar they read before the other committed: the second, having
    waited for the first's case locks, moved them back on a calendar without the first's
    day. Now the second waits here, then reads the first's day. SQLite writers are one at
    a time already."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:calendar, 0)"), {"calendar": _CALENDAR_LOCK}
        )
    return working_calendar(session, working_hours, timezone)


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
    # Locked (PostgreSQL): a day another admin removes meanwhile is waited for, then set
    # anew, as when this came second; the update of a row gone was a 500.
    row = session.get(CalendarDay, day, with_for_update=True)
    if row is None:
        # Set by another admin between the look-up and the insert: set again over theirs,
        # as when this came second, not the generic conflict.
        row = add_or_found(
            session,
            CalendarDay(day=day, kind=kind, name=name),
            lambda: session.get(CalendarDay, day),
        )
    row.kind, row.name = kind, name
    session.flush()
    return row


def remove_day(session: Session, day: date) -> None:
    """Return a day to the Monday-Friday rule. Raises NotFound."""
    row = session.get(CalendarDay, day, with_for_update=True)  # removed meanwhile: the 404
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
    source = data.get("source")
    source = source if isinstance(source, str) else ""
    problem = None
    if "\x00" in source:
        # The API's schema refuses it; a file given to `gridapi calendar import` came here
        # with it, and PostgreSQL's refusal to store it ended the command in a traceback.
        problem = "Must not contain NUL characters (U+0000)."
    elif len(source) > SOURCE_MAX:
        # Refused as PUT /api/v1/calendar/years/<year> refuses it: cut at SOURCE_MAX, the
        # notice's name or address was kept without its end, and nobody told.
        problem = f"Longer than maximum length {SOURCE_MAX}."
    if problem is not None:
        raise Unprocessable(
            f"Invalid calendar data: source: {problem}", errors={"json": {"source": [problem]}}
        )
    # Another admin importing one of the years at once: the days they inserted meanwhile,
    # which our delete did not see, refuse ours. The years are replaced again on what is
    # there now, as when this import came second (each retry waits for one such import).
    for retries_left in reversed(range(IMPORT_RETRIES + 1)):
        try:
            with session.begin_nested():
                _replace_years(session, data, parsed, years, source)
            break
        except IntegrityError:
            if not retries_left:
                raise
    return {"years": len(years), "holidays": len(parsed.holidays), "workdays": len(parsed.workdays)}


def _replace_years(
    session: Session, data: Any, parsed: WorkingCalendar, years: list[int], source: str
) -> None:
    session.execute(delete(CalendarDay).where(extract("year", CalendarDay.day).in_(years)))
    for day in sorted(parsed.holidays):
        session.add(CalendarDay(day=day, kind="holiday", name=""))
    for day in sorted(parsed.workdays):
        session.add(CalendarDay(day=day, kind="workday", name=""))
    for key, entry in data["years"].items():
        set_year(session, int(key), entry.get("status", "official"), source)
    session.flush()


def set_year(session: Session, year: int, status: str, source: str | None = None) -> CalendarYear:
    """Say whether ``year``'s days are the State Council's arrangement (``official``) or a
    stand-in (``provisional``); ``source`` (None: keep it) names where they come from."""
    if status not in YEAR_STATUSES:
        raise ValueError(status)
    row = session.get(CalendarYear, year)
    if row is None:
        row = add_or_found(  # set meanwhile by another admin: set again, as set_day
            session,
            CalendarYear(year=year, status=status, source=source or ""),
            lambda: session.get(CalendarYear, year),
        )
    row.status = status
    if source is not None:
        row.source = source
    session.flush()
    return row


def years_view(session: Session, today: date, year: int | None = None) -> list[dict[str, Any]]:
    """Return the status of ``year``, or of every year with one or with days and of the years
    deadlines counted from ``today`` may reach: ``official``, ``provisional`` or ``missing``
    (no arrangement at all: every weekday a working day), by year.

    A year whose days were set one by one and never marked is ``provisional``, as of its
    last day set: its holidays count, and nobody has said they are the notice's. It showed
    as ``missing``, no arrangement at all, whatever days it held."""
    rows = {r.year: r for r in session.scalars(select(CalendarYear))}
    day_year = extract("year", CalendarDay.day)
    stmt = select(day_year, func.max(CalendarDay.updated_at)).group_by(day_year)
    if year:
        stmt = stmt.where(day_year == year)
    days_set = {int(y): last for y, last in session.execute(stmt)}
    wanted = {year} if year else {*rows, *days_set, *_reached(today)}
    out = []
    for y in sorted(wanted):
        row = rows.get(y)
        if row is not None:
            status, source, updated_at = row.status, row.source, row.updated_at
        elif y in days_set:
            status, source, updated_at = "provisional", "", days_set[y]
        else:
            status, source, updated_at = "missing", "", None
        out.append({"year": y, "status": status, "source": source, "updated_at": updated_at})
    return out


def _reached(today: date) -> list[int]:
    return sorted({today.year, (today + HORIZON).year})


def calendar_problem(session: Session, today: date) -> str | None:
    """Return what is wrong with the years deadlines counted from ``today`` may reach (None
    when they are all official): their weekdays count as working days, holidays or not."""
    statuses = {v["year"]: v["status"] for v in years_view(session, today)}
    short = [f"{y} is {statuses[y]}" for y in _reached(today) if statuses[y] != "official"]
    if not short:
        return None
    return (
        f"The working calendar is not the State Council's arrangement where deadlines reach: "
        f"{', '.join(short)}. Deadlines count such a year's weekdays as working days, its "
        "Spring Festival and other holidays without fixed dates included. Import the notice "
        "(POST /api/v1/calendar/import, gridapi calendar import) or, once its days are set, "
        "mark the year official (PUT /api/v1/calendar/years/<year>)."
    )


# --- what an edit does to the deadlines already set ---------------------------------------------

#: Where each stage's clock starts: the case's column (the handling clock restarts at a reopen,
#: read from its timeline row) and the category's unit for it.
_STAGE_START = {
    "accept_due_at": ("reported_at", "accept_unit"),
    "handle_due_at": ("filed_at", "handle_unit"),
    "verify_due_at": ("feedback_at", "verify_unit"),
}
#: The ids of cases read per statement (the IN lists stay short on both engines).
_CHUNK = 500
#: How many of the moved cases' ids the audit row names (it counts them all): an edit that
#: moves a county's year of deadlines must not write one row of a hundred thousand ids.
AUDITED_CASE_IDS = 50
#: The timeline rows that start each stage's clock; each records the limit it counted
#: (``<stage>_limit``, ``<stage>_unit``; rows older than that do not).
_CLOCK_ROWS = {
    "accept_due_at": ("report",),
    "handle_due_at": ("file", "reopen"),
    "verify_due_at": ("feedback",),
}
#: The rows that set a deadline: those, and an extension approved (``amount``, ``unit``).
_COUNTING_ACTIONS = ("report", "file", "reopen", "feedback", "approve_extension")
_UNITS = ("hours", "days")
#: How far around an edit's window the worker looks: a step that began before the edit (its
#: calendar read earlier) and committed after it, and the edit's own transaction's length.
RECOUNT_MARGIN = timedelta(seconds=60)
#: Who the worker's ``deadline_moved`` rows name (as the other jobs' rows).
WORKER_ACTOR, WORKER_NAME = "system:worker", "系统"


def changed_days(before: WorkingCalendar, after: WorkingCalendar) -> set[date]:
    """Return the days whose kind an edit changed (holiday, workday or neither)."""
    return (before.holidays ^ after.holidays) | (before.workdays ^ after.workdays)


def recounted(
    before: WorkingCalendar, after: WorkingCalendar, start: datetime, due: datetime, unit: str
) -> datetime:
    """Return ``due``, counted from ``start`` on ``before``, counted as much from ``start`` on
    ``after`` (in UTC).

    ``hours``: the working hours ``before`` counts from ``start`` to ``due``, added on
    ``after``. ``days``: the working days ``before`` counts after the day of ``start`` up to
    the day of ``due``, added on ``after``, at ``due``'s time of day (the end of the day for a
    limit in days; an extension in hours on top of one keeps its time).
    """
    if unit == "hours":
        hours = before.working_hours_between(start, due)
        return after.add_working_hours(start, hours).astimezone(UTC)
    tz = before.tz
    first, last = start.astimezone(tz).date(), due.astimezone(tz).date()
    days = sum(
        1 for n in range(1, (last - first).days + 1) if before.is_working_day(first + timedelta(n))
    )
    day = after.add_working_days(start, days).astimezone(after.tz).date()
    moment = datetime.combine(day, due.astimezone(tz).time(), tzinfo=after.tz)
    return moment.astimezone(UTC)


@dataclass(frozen=True)
class Counted:
    """How the deadline of a case's current stage was counted, as its timeline says: from
    ``start``, ``limit`` in ``unit`` (None: a row written before they were recorded), then
    each extension approved since (amount, unit; a unit of "?" for a row that does not say),
    in order; ``set_at``: when each of those rows was written."""

    start: datetime
    limit: int | None
    unit: str | None
    extensions: tuple[tuple[int, str], ...] = ()
    set_at: tuple[datetime, ...] = ()

    @property
    def exact(self) -> bool:
        """Whether the extensions are all known (and so the deadline can be counted again)."""
        return all(unit in _UNITS for _, unit in self.extensions)

    def due(self, calendar: WorkingCalendar, limit: int, unit: str) -> datetime:
        """Return the deadline so counted on ``calendar`` (in UTC)."""
        from .cases import add_limit

        due = add_limit(calendar, self.start, limit, unit)
        for amount, extra_unit in self.extensions:
            due = add_limit(calendar, due, amount, extra_unit)
        return due


def _units_ok(limit: Any, unit: Any) -> bool:
    return isinstance(limit, int) and not isinstance(limit, bool) and unit in _UNITS


def counted_deadlines(session: Session, cases: Sequence[Any]) -> dict[int, Counted]:
    """Return, by case id, how the deadline each case runs against now was counted (one
    read of their timelines). A case in no stage with a clock, or without the row that
    started it, is left out."""
    from ..models import CaseEvent
    from .cases import STAGE_DUE

    if not cases:
        return {}
    rows = session.execute(
        select(CaseEvent.case_id, CaseEvent.action, CaseEvent.at, CaseEvent.data)
        .where(
            CaseEvent.case_id.in_([c.id for c in cases]),
            CaseEvent.action.in_(_COUNTING_ACTIONS),
        )
        .order_by(CaseEvent.case_id, CaseEvent.seq)
    ).all()
    timelines: dict[int, list[Any]] = {}
    for row in rows:
        timelines.setdefault(row.case_id, []).append(row)
    out: dict[int, Counted] = {}
    for c in cases:
        column = STAGE_DUE.get(c.status)
        if column is None:
            continue
        stage = column.removesuffix("_due_at")
        found: Counted | None = None
        for row in timelines.get(c.id, ()):
            data = row.data or {}
            if row.action in _CLOCK_ROWS[column]:
                limit, unit = data.get(f"{stage}_limit"), data.get(f"{stage}_unit")
                if not _units_ok(limit, unit):
                    limit = unit = None
                found = Counted(row.at, limit, unit, set_at=(row.at,))
            elif row.action == "approve_extension" and found is not None and stage == "handle":
                amount, unit = data.get("amount"), data.get("unit")
                extension = (amount, unit) if _units_ok(amount, unit) else (0, "?")
                found = Counted(
                    found.start,
                    found.limit,
                    found.unit,
                    (*found.extensions, extension),
                    (*found.set_at, row.at),
                )
        if found is not None:
            out[c.id] = found
    return out


def _count_again(
    before: WorkingCalendar,
    after: WorkingCalendar,
    start: datetime,
    due: datetime,
    counted: Counted | None,
    category_limit: int | None,
    category_unit: str,
) -> datetime:
    """Return ``due`` counted again on ``after``: exactly as it was counted (its recorded
    limit and unit, or the category's when they give ``due`` on ``before``, then each
    extension in its own unit), else ``recounted`` from ``start`` in the recorded unit, or
    the category's."""
    if counted is not None and counted.exact:
        limit, unit = counted.limit, counted.unit
        if limit is None or unit is None:
            limit, unit = category_limit, category_unit
        if limit is not None and counted.due(before, limit, unit) == due:
            return counted.due(after, limit, unit)
    unit = (counted.unit if counted is not None else None) or category_unit
    return recounted(before, after, start, due, unit)


def _record_move(
    session: Session,
    c: Any,
    column: str,
    due: datetime,
    new_due: datetime,
    seq: int,
    actor: str,
    actor_name: str,
    now: datetime,
    tz: ZoneInfo,
) -> None:
    from .cases import add_event

    setattr(c, column, new_due)
    c.updated_at = now
    if new_due < due:
        _tell_earlier(session, c, column.removesuffix("_due_at"), new_due, now, tz)
    add_event(
        session,
        c,
        seq,
        "deadline_moved",
        c.status,
        actor,
        actor_name,
        now,
        data={
            "stage": column.removesuffix("_due_at"),
            "due_before": due.isoformat(),
            "due_at": new_due.isoformat(),
        },
    )


def _tell_earlier(
    session: Session, c: Any, stage: str, new_due: datetime, now: datetime, tz: ZoneInfo
) -> None:
    """Tell the case's assignee and the unit holding it (as the overdue notice does) that an
    edit brought the stage's deadline earlier: they planned for the old one. Once per case
    and deadline (the kind names it: ``deadline_earlier:<stage>:<deadline>``)."""
    from .cases import those_handling
    from .jobs import STAGE_NAMES, queue_once

    stamp = new_due.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    local = new_due.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    queue_once(
        session,
        c,
        f"deadline_earlier:{stage}:{stamp}",
        f"事件 {c.number} 的{STAGE_NAMES.get(stage, '')}期限因工作日历调整提前至{local}",
        now,
        **those_handling(c),
    )


def _last_seqs(session: Session, ids: Sequence[int]) -> dict[int, int]:
    from ..models import CaseEvent

    # The timeline rows numbered by one read of the chunk, not one per case moved.
    rows = session.execute(
        select(CaseEvent.case_id, func.max(CaseEvent.seq))
        .where(CaseEvent.case_id.in_(ids))
        .group_by(CaseEvent.case_id)
    ).all()
    return {case_id: seq or 0 for case_id, seq in rows}


def move_deadlines(
    session: Session,
    before: WorkingCalendar,
    after: WorkingCalendar,
    now: datetime,
    actor: str,
    actor_name: str,
) -> list[int]:
    """Count again, on ``after``, the deadlines still ahead that open cases run against now
    and that ``before`` counted across a day the edit changed; return the ids of the cases
    whose deadline moved, in id order.

    Each is counted as it was (``Counted``: its start, the limit and unit its timeline row
    recorded, each approved extension in its own unit), or, for a deadline its timeline
    does not account for, keeps its start and its length (``recounted``, in the unit
    recorded, else its category's for the stage). A deadline already passed stays (the
    case stays overdue: it was told, flagged, perhaps carded); one that the new count would
    put at or before ``now`` stays too (a case does not become overdue by a calendar edit,
    unwarned). Each moved case gets a ``deadline_moved`` timeline row (``stage``,
    ``due_before``, ``due_at``), a new version, and its ``overdue`` flag unchanged (false);
    one moved earlier, a notice to its assignee and unit (``_tell_earlier``).
    Tasks given working time are moved alike by ``services.tasks.move_task_deadlines``,
    called next to this one.
    """
    from ..models import Case, Category
    from .cases import STAGE_DUE

    days = changed_days(before, after)
    if not days:
        return []
    # A deadline before the first day changed counted none of them, nor one whose clock
    # started after the last; the first bound is in SQL, the second below.
    first = min(days)
    bound = max(now, datetime.combine(first, time(0), tzinfo=before.tz).astimezone(UTC))
    last_end = datetime.combine(max(days) + timedelta(days=1), time(0), tzinfo=before.tz)
    last_end = last_end.astimezone(UTC)
    conditions = []
    for column, (start_column, _) in _STAGE_START.items():
        states = [s for s, c in STAGE_DUE.items() if c == column]
        # The clock starts at the column or later (a reopen): one started after the last day
        # changed is left out here already.
        conditions.append(
            and_(
                Case.status.in_(states),
                getattr(Case, column) > bound,
                getattr(Case, start_column) < last_end,
            )
        )
    ids = list(
        session.scalars(
            select(Case.id).where(or_(*conditions), Case.overdue.is_(False)).order_by(Case.id)
        )
    )
    moved: list[int] = []
    categories: dict[str, Category | None] = {}
    for offset in range(0, len(ids), _CHUNK):
        chunk = ids[offset : offset + _CHUNK]
        cases = session.scalars(
            select(Case).where(Case.id.in_(chunk)).order_by(Case.id).with_for_update()
        ).all()
        counted = counted_deadlines(session, cases)
        last_seq = _last_seqs(session, chunk)
        for c in cases:
            column = STAGE_DUE.get(c.status)
            if column is None or c.overdue:  # moved on meanwhile (the lock waited for it)
                continue
            due = getattr(c, column)
            start_column, unit_column = _STAGE_START[column]
            how = counted.get(c.id)
            start = how.start if how is not None else getattr(c, start_column)
            if due is None or start is None or due <= bound or start >= last_end:
                continue
            if c.category_code not in categories:
                categories[c.category_code] = session.get(Category, c.category_code)
            category = categories[c.category_code]
            limit = getattr(category, unit_column.replace("_unit", "_limit"), None)
            unit = getattr(category, unit_column) if category is not None else "days"
            new_due = _count_again(before, after, start, due, how, limit, unit)
            if new_due == due or new_due <= now:
                continue
            last_seq[c.id] = last_seq.get(c.id, 0) + 1
            _record_move(
                session, c, column, due, new_due, last_seq[c.id], actor, actor_name, now, after.tz
            )
            moved.append(c.id)
        session.flush()
    return moved


def recount_stale_deadlines(
    session: Session, calendar: WorkingCalendar, since: datetime, until: datetime, now: datetime
) -> list[int]:
    """Count again on ``calendar`` the deadlines of the open cases whose current deadline was
    set (a report, a filing, a reopen, a feedback, an extension approved) between ``since``
    and ``until``, as their timeline says they were counted (``Counted``, with the limit and
    unit recorded); move each that differs, still ahead and staying ahead of ``now``, with a
    ``deadline_moved`` row by the worker. Returns the ids moved, in id order.

    Idempotent: a deadline counted on ``calendar`` already is left as it is."""
    from ..models import Case
    from .cases import STAGE_DUE

    # A step changes the case's updated_at: the open cases not overdue (the overdue job's
    # index) changed since the window began; their timelines say which it set a deadline.
    ids = list(
        session.scalars(
            select(Case.id)
            .where(
                Case.overdue.is_(False),
                Case.status.in_(tuple(STAGE_DUE)),
                Case.updated_at >= since,
            )
            .order_by(Case.id)
        )
    )
    moved: list[int] = []
    for offset in range(0, len(ids), _CHUNK):
        chunk = ids[offset : offset + _CHUNK]
        cases = session.scalars(
            select(Case)
            .where(
                Case.id.in_(chunk),
                Case.status.in_(tuple(STAGE_DUE)),
                Case.overdue.is_(False),
            )
            .order_by(Case.id)
            .with_for_update()
        ).all()
        counted = counted_deadlines(session, cases)
        last_seq = _last_seqs(session, [c.id for c in cases]) if cases else {}
        for c in cases:
            column = STAGE_DUE[c.status]
            due, how = getattr(c, column), counted.get(c.id)
            if due is None or due <= now or how is None or how.limit is None or how.unit is None:
                continue
            if not how.exact or not any(since <= at <= until for at in how.set_at):
                continue
            new_due = how.due(calendar, how.limit, how.unit)
            if new_due == due or new_due <= now:
                continue
            last_seq[c.id] = last_seq.get(c.id, 0) + 1
            seq = last_seq[c.id]
            _record_move(
                session, c, column, due, new_due, seq, WORKER_ACTOR, WORKER_NAME, now, calendar.tz
            )
            moved.append(c.id)
        session.flush()
    return moved


@dataclass(frozen=True)
class Recounted:
    """What the worker's recount after an edit moved: the ids of the cases and of the
    tasks, each in id order."""

    cases: list[int]
    tasks: list[int]


def recount_after_cache(
    session: Session, working_hours: str, timezone: str, now: datetime
) -> Recounted:
    """Finish the calendar edits whose cache window has passed (``recount_until`` at or
    before ``now``): count again the deadlines set in their windows, by other processes
    perhaps on the calendar they still held: the cases' (``recount_stale_deadlines``), and
    the tasks' and active campaigns' given working time (``tasks.
    recount_stale_task_deadlines``: an audit row ``task.deadline_moved`` or
    ``campaign.deadline_moved`` each); mark each edit done, and write one audit row
    ``calendar.deadlines_moved`` when any case moved. Returns the ids moved. Several
    workers: on PostgreSQL each takes the edits no other holds."""
    from ..models import CalendarEdit
    from .tasks import recount_stale_task_deadlines

    stmt = (
        select(CalendarEdit)
        .where(CalendarEdit.recounted_at.is_(None), CalendarEdit.recount_until <= now)
        .order_by(CalendarEdit.id)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    edits = list(session.scalars(stmt))
    if not edits:
        return Recounted([], [])
    # After an edit that is still counting commits (its calendar is read here then).
    calendar = calendar_for_edit(session, working_hours, timezone)
    worker = Actor("system", WORKER_ACTOR, WORKER_NAME)
    moved: set[int] = set()
    tasks_moved: set[int] = set()
    for edit in edits:
        since, until = edit.recount_from, edit.recount_until
        moved.update(recount_stale_deadlines(session, calendar, since, until, now))
        tasks_moved.update(
            recount_stale_task_deadlines(session, calendar, since, until, now, worker)
        )
        edit.recounted_at = now
    session.flush()
    ids = sorted(moved)
    if ids:
        record(
            session,
            worker,
            "calendar.deadlines_moved",
            "calendar",
            None,
            summary={"cases": len(ids), "case_ids": ids[:AUDITED_CASE_IDS]},
        )
    return Recounted(ids, sorted(tasks_moved))


def recount_after_edit(
    session: Session,
    before: WorkingCalendar,
    working_hours: str,
    timezone: str,
    now: datetime,
    actor: Actor,
    *,
    cache_seconds: float = 10.0,
) -> list[int]:
    """Move the deadlines an edit of the calendar changes (``move_deadlines``, in the edit's
    transaction) and, when any moved, write the audit row ``calendar.deadlines_moved``
    naming the cases (``cases``: how many; ``case_ids``: the first 50). Returns their ids.

    An edit that changed a day is recorded (``calendar_edits``): the processes that keep the
    calendar ``cache_seconds`` (GRIDAPI_CALENDAR_CACHE_SECONDS) may count deadlines on the
    old one until then, and the worker counts again those set meanwhile
    (``recount_after_cache``)."""
    from ..models import CalendarEdit

    after = working_calendar(session, working_hours, timezone)
    if changed_days(before, after):
        session.add(
            CalendarEdit(
                edited_at=now,
                recount_from=now - RECOUNT_MARGIN,
                recount_until=now + timedelta(seconds=cache_seconds) + RECOUNT_MARGIN,
            )
        )
    moved = move_deadlines(session, before, after, now, actor.id or actor.type, actor.name or "")
    if moved:
        record(
            session,
            actor,
            "calendar.deadlines_moved",
            "calendar",
            None,
            summary={"cases": len(moved), "case_ids": moved[:AUDITED_CASE_IDS]},
        )
    return moved
