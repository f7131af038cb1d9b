"""What the background worker has not done yet: its backlog, job by job.

``gridapi worker`` (or the worker inside ``gridapi serve``) marks cases overdue, flags
overdue tasks, purges idempotency keys, thins old tracks (whereabouts), delivers webhooks
and writes export files. When it stops, or falls behind, nothing fails: deadlines pass
unmarked, webhooks wait, tracks are kept past their retention. ``backlogs`` makes that
visible without the worker's help: for each job, the items already due that it has not
handled, and since when the oldest has waited. A worker that runs has nothing due for long;
one that is down shows it in the first minutes of work. Reads only.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, union_all
from sqlalchemy.orm import Session

from ..models import Case, ExportJob, IdempotencyKey, Patrol, Task, WebhookDelivery
from ..models.tasks import OPEN_TASK_STATUSES
from .cases import STAGE_DUE

#: What an export job may wait in the queue behind others before it counts as late.
EXPORT_WAIT_SECONDS = 900.0


@dataclass(frozen=True)
class Backlog:
    """One job's backlog: ``due`` items it has not handled, the oldest due since
    ``oldest_due_at`` (None when there are none), and how long it may wait in a worker that
    keeps up (``expected_within`` seconds)."""

    job: str
    description: str
    due: int
    oldest_due_at: datetime | None
    expected_within: float

    def waited(self, now: datetime) -> float | None:
        """Seconds the oldest item has waited (None: nothing is due)."""
        if self.oldest_due_at is None:
            return None
        return max(0.0, (now - self.oldest_due_at).total_seconds())

    def behind(self, now: datetime) -> bool:
        waited = self.waited(now)
        return waited is not None and waited > self.expected_within


@dataclass(frozen=True)
class Expectations:
    """How often the worker's loops run (the settings the worker runs with)."""

    worker_interval_seconds: float = 60.0
    webhook_poll_seconds: float = 1.0
    track_raw_days: float = 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> Expectations:
        return cls(
            float(settings.worker_interval_seconds),
            float(settings.webhook_poll_seconds),
            float(settings.track_raw_days),
        )


def _due(session: Session, moments: Any) -> tuple[int, datetime | None]:
    """Return how many rows ``moments`` (a select of one column ``due``) gives and the
    earliest."""
    sub = moments.subquery()
    count, oldest = session.execute(select(func.count(), func.min(sub.c.due))).one()
    return int(count or 0), oldest


def _cases_due(now: datetime) -> Any:
    """The moments the current stage deadlines of cases not yet marked overdue passed, one
    select per deadline column (as ``jobs.mark_overdue`` finds them)."""
    groups: dict[str, list[str]] = {}
    for status, column in STAGE_DUE.items():
        groups.setdefault(column, []).append(status)
    parts = []
    for column, statuses in groups.items():
        due = getattr(Case, column)
        parts.append(
            select(due.label("due")).where(
                Case.overdue.is_(False), Case.status.in_(statuses), due < now
            )
        )
    return union_all(*parts)


def backlogs(session: Session, now: datetime, expect: Expectations) -> list[Backlog]:
    """Return the backlog of each job at ``now``, in the order the worker runs them."""
    round_ = 2 * expect.worker_interval_seconds + 60.0
    raw_from = now - timedelta(days=expect.track_raw_days)
    raw_age = timedelta(days=expect.track_raw_days)
    queries: list[tuple[str, str, Any, float, timedelta]] = [
        (
            "overdue",
            "cases whose current stage deadline passed, not yet marked overdue",
            _cases_due(now),
            round_,
            timedelta(0),
        ),
        (
            "tasks",
            "open tasks past their deadline, not yet marked overdue",
            select(Task.due_at.label("due")).where(
                Task.status.in_(OPEN_TASK_STATUSES), Task.due_at < now, Task.overdue.is_(False)
            ),
            round_,
            timedelta(0),
        ),
        (
            "idempotency",
            "idempotency keys past their retention, not yet deleted",
            select(IdempotencyKey.expires_at.label("due")).where(IdempotencyKey.expires_at < now),
            round_,
            timedelta(0),
        ),
        (
            "tracks",
            "patrols ended longer ago than GRIDAPI_TRACK_RAW_DAYS whose raw points are kept",
            select(Patrol.ended_at.label("due")).where(
                Patrol.status == "ended", Patrol.ended_at < raw_from, Patrol.thinned_at.is_(None)
            ),
            round_,
            raw_age,  # due raw_days after the end
        ),
        (
            "webhooks",
            "webhook deliveries due, not yet attempted",
            select(WebhookDelivery.next_attempt_at.label("due")).where(
                WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now
            ),
            2 * expect.webhook_poll_seconds + 60.0,
            timedelta(0),
        ),
        (
            "exports",
            "export jobs queued, not yet started",
            select(ExportJob.created_at.label("due")).where(ExportJob.status == "queued"),
            EXPORT_WAIT_SECONDS,
            timedelta(0),
        ),
    ]
    found = []
    for job, description, moments, expected, offset in queries:
        count, oldest = _due(session, moments)
        found.append(
            Backlog(
                job,
                description,
                count,
                oldest + offset if oldest is not None else None,
                expected,
            )
        )
    return found


__all__ = ["EXPORT_WAIT_SECONDS", "Backlog", "Expectations", "backlogs"]
