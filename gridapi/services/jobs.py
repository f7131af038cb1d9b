"""Background jobs: case deadlines (counted again after a calendar edit, with the task
deadlines given in working time; overdue marking, automatic supervision and escalation),
overdue tasks, the retention of patrol tracks and of the sync log, idempotency keys, and
attachment files no row references (left by requests that failed after writing them).

``gridapi worker`` runs them every ``GRIDAPI_WORKER_INTERVAL_SECONDS``; ``gridapi serve`` can
run one such worker beside the server. Each job walks its candidate cases in batches of
``BATCH_SIZE`` by id; each batch is one transaction, and each case inside it one savepoint, so
a case is changed completely or not at all. Several workers may run at once: on PostgreSQL
a batch locks its cases with ``FOR UPDATE SKIP LOCKED`` (another worker takes the others), on
SQLite the batch's write transaction (BEGIN IMMEDIATE) serialises the workers. Every
condition is checked again on the locked row, and every notification a job queues has a
kind unique per case (``overdue:handle:20260105T093000Z``), inserted with ON CONFLICT DO
NOTHING, so a second run, or a second worker, changes nothing.

The batch functions take a Session and flush; ``run_jobs`` is the unit of work that opens
and commits one transaction per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, not_, or_, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from ..db import Sessions, in_write_transaction, sessions_of
from ..models import Case, CaseEvent, Category, Notification
from ..models.base import utcnow
from ..workcalendar import WorkingCalendar
from .attachments import remove_orphan_files
from .calendar import recount_after_cache, working_calendar
from .cases import ACTIONS, STAGE_DUE, add_event, escalation_target, those_handling
from .idempotency import purge
from .patrols import thin_tracks
from .sync import prune as prune_sync_log
from .tasks import flag_overdue_tasks

log = logging.getLogger(__name__)

SYSTEM_ACTOR = "system:worker"
SYSTEM_NAME = "系统"
BATCH_SIZE = 200
# Each job and what it counts, in the order they run.
JOBS = {
    "calendar": ("moved", "tasks_moved"),
    "overdue": ("marked",),
    "supervision": ("yellow", "red"),
    "escalation": ("escalated",),
    "idempotency": ("purged",),
    "tasks": ("overdue",),
    "tracks": ("ended", "thinned", "deleted", "presence_cleared"),
    "sync": ("pruned",),
    "files": ("removed",),
}
JOB_NAMES = tuple(JOBS)
SIMPLE_JOBS = ("calendar", "idempotency", "tasks", "tracks", "sync", "files")
#: The removal of unreferenced attachment files walks the whole store: ``run_forever`` runs
#: it once at start and then once a day (``gridapi worker --once`` always).
FILES_EVERY_SECONDS = 24 * 3600.0
#: A looping worker says what is wrong with the working calendar (a year deadlines may reach
#: that is not the State Council's arrangement) at start and then once a day: it may have
#: started before that year came within reach.
CALENDAR_EVERY_SECONDS = 24 * 3600.0
LEVEL_RANK = {"normal": 0, "yellow": 1, "red": 2}
LEVEL_NAMES = {"yellow": "黄牌", "red": "红牌"}
STAGE_NAMES = {"accept": "受理", "handle": "处置", "verify": "核查"}
# Automatic supervision applies where an office could supervise by hand.
SUPERVISED_STATUSES = ACTIONS["supervise"][0]
ESCALATED_STATUSES = ("filed", "dispatched", "handling")


@dataclass(frozen=True)
class JobOptions:
    """What the jobs read from the settings: the working calendar and the thresholds."""

    working_hours: str = "08:30-12:00,13:30-17:30"
    timezone: str = "Asia/Shanghai"
    yellow_hours: float = 0.0
    red_hours: float = 24.0
    track_raw_days: float = 30.0
    track_retention_days: float = 180.0
    sync_retention_days: float = 30.0
    #: Where attachments are stored ("" : no removal of unreferenced files).
    attachments_root: str = ""

    @classmethod
    def from_settings(cls, settings: Any) -> JobOptions:
        return cls(
            attachments_root=str(Path(settings.data_dir) / "attachments"),
            working_hours=settings.working_hours,
            timezone=settings.timezone,
            yellow_hours=float(settings.supervision_yellow_hours),
            red_hours=float(settings.supervision_red_hours),
            track_raw_days=float(settings.track_raw_days),
            track_retention_days=float(settings.track_retention_days),
            sync_retention_days=float(settings.sync_retention_days),
        )


@dataclass
class Batch:
    """What one batch did: cases looked at, changes by kind, the last id seen, failures."""

    checked: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    last_id: int | None = None

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


@dataclass
class JobResult:
    """The totals of one job over one run."""

    name: str
    counts: dict[str, int]
    checked: int = 0
    errors: int = 0

    @property
    def changed(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """Return one line: ``overdue: checked=30 marked=30 errors=0``."""
        # Batch jobs count the rows they looked at; one-transaction jobs only what they did.
        parts = [] if self.name in SIMPLE_JOBS else [f"checked={self.checked}"]
        parts += [f"{key}={value}" for key, value in self.counts.items()]
        parts.append(f"errors={self.errors}")
        return f"{self.name}: " + " ".join(parts)


# --- helpers ------------------------------------------------------------------------------------


def stage_of(column: str) -> str:
    """Return the stage a deadline column belongs to: accept_due_at → accept."""
    return column.removesuffix("_due_at")


def current_deadline(case_obj: Case) -> tuple[str, datetime | None]:
    """Return the stage the case is in and the deadline it runs against (None: no clock)."""
    column = STAGE_DUE.get(case_obj.status)
    if column is None:
        return "", None
    return stage_of(column), getattr(case_obj, column)


def _stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _deadline_passed(now: datetime) -> ColumnElement[bool]:
    """The condition 'the deadline of the case's current stage is before ``now``'."""
    statuses: dict[str, list[str]] = {}
    for status, column in STAGE_DUE.items():
        statuses.setdefault(column, []).append(status)
    return or_(
        *(
            and_(Case.status.in_(group), getattr(Case, column) < now)
            for column, group in statuses.items()
        )
    )


def _lock_batch(
    session: Session, condition: ColumnElement[bool], after_id: int, limit: int
) -> list[Case]:
    """Return up to ``limit`` matching cases after ``after_id``, locked for this transaction.

    PostgreSQL skips cases another worker holds; SQLite's write transaction already excludes
    every other writer.
    """
    stmt = select(Case).where(condition, Case.id > after_id).order_by(Case.id).limit(limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=Case)
    return list(session.scalars(stmt))


def _next_seqs(session: Session, cases: Sequence[Case]) -> dict[int, int]:
    if not cases:
        return {}
    rows = session.execute(
        select(CaseEvent.case_id, func.max(CaseEvent.seq))
        .where(CaseEvent.case_id.in_([c.id for c in cases]))
        .group_by(CaseEvent.case_id)
    ).all()
    last = {case_id: seq or 0 for case_id, seq in rows}
    return {c.id: last.get(c.id, 0) + 1 for c in cases}


def _add_event(
    session: Session,
    case_obj: Case,
    seq: int,
    action: str,
    before: str,
    now: datetime,
    data: dict[str, Any],
) -> None:
    add_event(session, case_obj, seq, action, before, SYSTEM_ACTOR, SYSTEM_NAME, now, data=data)


def queue_once(
    session: Session,
    case_obj: Case,
    kind: str,
    message: str,
    now: datetime,
    *,
    user_id: int | None = None,
    region: str | None = None,
    department_id: int | None = None,
) -> bool:
    """Queue a notification unless the case has one of this kind; return whether it did.

    The unique (case_id, kind) constraint decides, so two workers never both queue it.
    """
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = (
        insert(Notification)
        .values(
            county_code=case_obj.county_code,
            case_id=case_obj.id,
            kind=kind[:64],
            user_id=user_id,
            region_code=region,
            department_id=department_id,
            message=message,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["case_id", "kind"])
        .returning(Notification.id)
    )
    return session.execute(stmt).first() is not None


def _each_case(
    session: Session,
    cases: Sequence[Case],
    batch: Batch,
    job: str,
    apply: Callable[[Case], str | None],
) -> None:
    """Apply ``apply`` to each case in its own savepoint; count what it returns.

    A case that fails is rolled back alone and logged; the next run tries it again.
    """
    batch.checked += len(cases)
    for case_obj in cases:
        batch.last_id = case_obj.id
        try:
            with session.begin_nested():
                outcome = apply(case_obj)
                session.flush()
        except (SQLAlchemyError, ValueError) as exc:
            batch.errors += 1
            log.warning("%s job: case %s left unchanged: %s", job, case_obj.id, exc)
            continue
        if outcome:
            batch.count(outcome)


# --- 1. overdue ---------------------------------------------------------------------------------


def mark_overdue(
    session: Session, now: datetime, *, after_id: int = 0, limit: int = BATCH_SIZE
) -> Batch:
    """Mark overdue the open cases whose current stage deadline is before ``now``.

    Each gets ``overdue`` with ``overdue_since`` = that deadline, an ``overdue`` timeline row
    and one notification per deadline (kind ``overdue:<stage>:<deadline>``) to its assignee
    and the unit holding it.
    """
    # The status list again at the top: PostgreSQL then estimates the few open cases and
    # reads ix_cases_open_not_overdue (from the OR of the stages alone it expected ~70,000
    # matches at 1 M cases and walked the primary key through every case).
    condition = and_(
        Case.overdue.is_(False), Case.status.in_(tuple(STAGE_DUE)), _deadline_passed(now)
    )
    cases = _lock_batch(session, condition, after_id, limit)
    seqs = _next_seqs(session, cases)
    batch = Batch()

    def apply(c: Case) -> str | None:
        _, due = current_deadline(c)
        if c.overdue or due is None or due >= now:
            return None
        mark_case_overdue(session, c, seqs[c.id], now)
        return "marked"

    _each_case(session, cases, batch, "overdue", apply)
    return batch


def mark_case_overdue(session: Session, c: Case, seq: int, now: datetime) -> None:
    """Mark ``c`` overdue against the deadline of its current stage (which has passed): the
    flag with ``overdue_since``, the ``overdue`` timeline row (timeline row ``seq``) and the
    notification of that deadline to its assignee and the unit holding it. The worker does
    it when a deadline passes; a step does it when it leaves the case in a stage whose
    deadline has already passed (rework after the handling deadline)."""
    stage, due = current_deadline(c)
    assert due is not None
    c.overdue = True
    c.overdue_since = due
    c.updated_at = now
    _add_event(
        session, c, seq, "overdue", c.status, now, {"stage": stage, "due_at": due.isoformat()}
    )
    queue_once(
        session,
        c,
        f"overdue:{stage}:{_stamp(due)}",
        f"事件 {c.number} 已超过{STAGE_NAMES.get(stage, '')}期限",
        now,
        **those_handling(c),
    )


# --- 2. supervision -----------------------------------------------------------------------------


def supervision_due(hours_overdue: float, yellow_hours: float, red_hours: float) -> str | None:
    """Return the level a case overdue this many working hours has earned, or None."""
    if hours_overdue >= red_hours:
        return "red"
    if hours_overdue >= yellow_hours:
        return "yellow"
    return None


def raise_supervision(
    session: Session,
    now: datetime,
    calendar: WorkingCalendar,
    *,
    yellow_hours: float = 0.0,
    red_hours: float = 24.0,
    after_id: int = 0,
    limit: int = BATCH_SIZE,
) -> Batch:
    """Raise the supervision of overdue cases by how long (in working hours) they are overdue.

    Yellow at ``yellow_hours``, red at ``red_hours``; never lowered. Each level is given
    automatically once per overdue period (notification kind
    ``supervision_<level>:auto:<overdue since>``): an office that lowers it by hand is not
    overruled until the next level is due.
    """
    # Working hours never exceed elapsed hours, so these bounds only drop sure misses.
    could_be_red = and_(
        Case.supervision != "red", Case.overdue_since <= now - timedelta(hours=red_hours)
    )
    could_be_yellow = and_(
        Case.supervision == "normal", Case.overdue_since <= now - timedelta(hours=yellow_hours)
    )
    condition = and_(
        Case.overdue.is_(True),
        Case.overdue_since.is_not(None),
        Case.status.in_(SUPERVISED_STATUSES),
        or_(could_be_red, could_be_yellow),
    )
    cases = _lock_batch(session, condition, after_id, limit)
    seqs = _next_seqs(session, cases)
    batch = Batch()

    def apply(c: Case) -> str | None:
        if not c.overdue or c.overdue_since is None or c.status not in SUPERVISED_STATUSES:
            return None
        hours = calendar.working_hours_between(c.overdue_since, now)
        level = supervision_due(hours, yellow_hours, red_hours)
        if level is None or LEVEL_RANK[level] <= LEVEL_RANK[c.supervision]:
            return None
        if not queue_once(
            session,
            c,
            f"supervision_{level}:auto:{_stamp(c.overdue_since)}",
            f"事件 {c.number} 超期 {hours:.1f} 个工作小时，{LEVEL_NAMES[level]}督办",
            now,
            **those_handling(c),
        ):
            return None  # given once already in this overdue period
        previous = c.supervision
        c.supervision = level
        c.updated_at = now
        data = {
            "level": level,
            "previous": previous,
            "automatic": True,
            "overdue_hours": round(hours, 2),
        }
        _add_event(session, c, seqs[c.id], "supervise", c.status, now, data)
        return level

    _each_case(session, cases, batch, "supervision", apply)
    return batch


# --- 3. escalation ------------------------------------------------------------------------------


def _escalated_at(session: Session, cases: Sequence[Case]) -> dict[int, datetime]:
    """Return the moment of each case's last automatic escalation (fresh, under the lock)."""
    if not cases:
        return {}
    rows = session.execute(
        select(CaseEvent.case_id, func.max(CaseEvent.at))
        .where(
            CaseEvent.case_id.in_([c.id for c in cases]),
            CaseEvent.action == "escalate",
            CaseEvent.actor == SYSTEM_ACTOR,
        )
        .group_by(CaseEvent.case_id)
    ).all()
    return {case_id: at for case_id, at in rows}


def upper_unit(session: Session, code: str) -> str | None:
    """Return the office a case held by ``code`` escalates to, or None at the city level:
    the ``escalate`` step's own rule (``cases.escalation_target``)."""
    return escalation_target(session, code)


def escalate_overdue(
    session: Session, now: datetime, *, after_id: int = 0, limit: int = BATCH_SIZE
) -> Batch:
    """Escalate overdue cases of ``auto_escalate`` categories to the parent level's office.

    Cases filed, dispatched or handling whose handling deadline has passed and that were not
    escalated automatically since it passed: status filed, held by the parent unit,
    assignee, department and any extension request cleared, ``escalation_count`` + 1, an
    ``escalate`` timeline row ``{"automatic": true, "from_unit", "to_unit"}`` and a
    notification to the new unit. Once per deadline; a case held by a city office stays.
    """
    auto_categories = select(Category.code).where(Category.auto_escalate.is_(True))
    already = (
        select(CaseEvent.id)
        .where(
            CaseEvent.case_id == Case.id,
            CaseEvent.action == "escalate",
            CaseEvent.actor == SYSTEM_ACTOR,
            CaseEvent.at >= Case.handle_due_at,
        )
        .exists()
    )
    condition = and_(
        Case.overdue.is_(True),
        Case.status.in_(ESCALATED_STATUSES),
        Case.handle_due_at < now,
        Case.category_code.in_(auto_categories),
        # City (and province) codes end in eight zeros: nothing above them to go to.
        not_(Case.responsible_region_code.like("%00000000")),
        not_(already),
    )
    cases = _lock_batch(session, condition, after_id, limit)
    # Checked again with fresh reads: the lock may have been taken on a newer row version.
    escalated = _escalated_at(session, cases)
    auto = set(session.scalars(auto_categories))
    seqs = _next_seqs(session, cases)
    batch = Batch()

    def apply(c: Case) -> str | None:
        due = c.handle_due_at
        if (
            not c.overdue
            or c.status not in ESCALATED_STATUSES
            or due is None
            or due >= now
            or c.category_code not in auto
            or (c.id in escalated and escalated[c.id] >= due)
        ):
            return None
        upper = upper_unit(session, c.responsible_region_code)
        if upper is None:
            return None
        if not queue_once(
            session,
            c,
            f"escalated:auto:{_stamp(due)}",
            f"事件 {c.number} 超期未办结，已自动上报",
            now,
            region=upper,
        ):
            return None
        before, from_unit = c.status, c.responsible_region_code
        data = {
            "automatic": True,
            "from_unit": from_unit,
            "to_unit": upper,
            "due_at": due.isoformat(),
        }
        if c.extension_request:  # as the escalate step does: the row says where it went
            req = c.extension_request
            data["withdrawn_extension"] = {"amount": req["amount"], "unit": req["unit"]}
        c.responsible_region_code, c.handed_down_from = upper, None
        c.assignee_id = c.department_id = None
        c.dispatched_at = None  # as the escalate step: that handling leg ended
        c.extension_request = None
        c.escalation_count += 1
        c.status = "filed"
        c.updated_at = now
        _add_event(session, c, seqs[c.id], "escalate", before, now, data)
        return "escalated"

    _each_case(session, cases, batch, "escalation", apply)
    return batch


# --- running them -------------------------------------------------------------------------------


def _recount_after_cache(session: Session, options: JobOptions, now: datetime) -> dict[str, int]:
    recounted = recount_after_cache(session, options.working_hours, options.timezone, now)
    return {"moved": len(recounted.cases), "tasks_moved": len(recounted.tasks)}


def run_jobs(
    bind: Engine | Sessions,
    now: datetime,
    options: JobOptions | None = None,
    *,
    jobs: Sequence[str] = JOB_NAMES,
    batch_size: int = BATCH_SIZE,
    stop: threading.Event | None = None,
) -> list[JobResult]:
    """Run the jobs once at the moment ``now``; return one result per job.

    Each batch commits on its own. A job that fails (the database went away) is logged and
    counted; the other jobs still run. ``stop`` ends the run after the current batch.
    """
    sessions = sessions_of(bind)
    options = options or JobOptions()
    with sessions() as session:
        calendar = working_calendar(session, options.working_hours, options.timezone)
    batch_jobs: dict[str, Callable[..., Batch]] = {
        "overdue": mark_overdue,
        "supervision": partial(
            raise_supervision,
            calendar=calendar,
            yellow_hours=options.yellow_hours,
            red_hours=options.red_hours,
        ),
        "escalation": escalate_overdue,
    }
    # Jobs done in one transaction each; they return their counts.
    simple_jobs: dict[str, Callable[[Session], dict[str, int]]] = {
        # Before the overdue marking: a deadline counted on a calendar a process still held
        # after an edit is first counted again.
        "calendar": lambda s: _recount_after_cache(s, options, now),
        "idempotency": lambda s: {"purged": purge(s, now)},
        "tasks": lambda s: {"overdue": flag_overdue_tasks(s, now)},
        "tracks": lambda s: thin_tracks(
            s, now, options.track_raw_days, options.track_retention_days
        ),
        "sync": lambda s: {
            "pruned": prune_sync_log(s, now - timedelta(days=options.sync_retention_days))
        },
    }
    results = []
    for name in jobs:
        if stop is not None and stop.is_set():
            break
        result = JobResult(name, dict.fromkeys(JOBS[name], 0))
        try:
            if name == "files":  # reads only, and deletes files: no write transaction
                with sessions() as session:
                    root = options.attachments_root
                    result.counts["removed"] = (
                        remove_orphan_files(session, Path(root), now) if root else 0
                    )
            elif name in simple_jobs:
                counts = in_write_transaction(sessions, simple_jobs[name])
                result.counts.update(counts)
            else:
                _run_batches(sessions, batch_jobs[name], now, batch_size, result, stop)
        except Exception:  # the database went away, or a job's own bug: the others still run
            log.exception("%s job failed; the next run tries again", name)
            result.errors += 1
        results.append(result)
    return results


def _run_batches(
    sessions: Sessions,
    job: Callable[..., Batch],
    now: datetime,
    batch_size: int,
    result: JobResult,
    stop: threading.Event | None,
) -> None:
    after = 0
    while True:
        batch = in_write_transaction(
            sessions, partial(job, now=now, after_id=after, limit=batch_size)
        )
        result.checked += batch.checked
        result.errors += batch.errors
        for key, value in batch.counts.items():
            result.counts[key] = result.counts.get(key, 0) + value
        # Fewer than asked: nothing is left (SKIP LOCKED applies before LIMIT).
        if batch.last_id is None or batch.checked < batch_size:
            return
        if stop is not None and stop.is_set():
            return
        after = batch.last_id


def warn_of_calendar(bind: Engine | Sessions, now: datetime, timezone: str) -> str | None:
    """Log (logger ``gridapi.worker``) and return what is wrong with the working calendar
    where deadlines counted from ``now`` may reach, or None; never raises."""
    from .calendar import calendar_problem

    try:
        with sessions_of(bind)() as session:
            problem = calendar_problem(session, now.astimezone(ZoneInfo(timezone)).date())
    except Exception:  # the database went away: the jobs' own errors say so
        log.exception("the working calendar could not be checked")
        return None
    if problem:
        logging.getLogger("gridapi.worker").warning(problem)
    return problem


def run_forever(
    bind: Engine | Sessions,
    options: JobOptions,
    *,
    interval: float,
    stop: threading.Event,
    clock: Callable[[], datetime] = utcnow,
    batch_size: int = BATCH_SIZE,
) -> None:
    """Run the jobs every ``interval`` seconds until ``stop`` is set (the removal of
    unreferenced files, and the warning of a calendar that is not official, once a day);
    never raises."""
    sessions = sessions_of(bind)
    files_due = calendar_due = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        if started >= calendar_due:
            calendar_due = started + CALENDAR_EVERY_SECONDS
            warn_of_calendar(sessions, clock(), options.timezone)
        names = JOB_NAMES
        if started < files_due:
            names = tuple(n for n in JOB_NAMES if n != "files")
        else:
            files_due = started + FILES_EVERY_SECONDS
        try:
            results = run_jobs(
                sessions, clock(), options, jobs=names, batch_size=batch_size, stop=stop
            )
        except Exception:  # keep the loop alive: the next run tries again
            log.exception("background jobs failed")
        else:
            for result in results:
                level = logging.INFO if result.changed or result.errors else logging.DEBUG
                log.log(level, "%s", result.summary())
        stop.wait(max(0.0, interval - (time.monotonic() - started)))
