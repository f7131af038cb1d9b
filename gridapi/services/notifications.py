"""The notification inbox of a person: what the workflow and the worker queued for them.

Steps of a case and the background jobs queue notifications (``cases.queue_notification``,
``jobs.queue_once``) in the transaction of the change: to one account (``user_id``: a case
dispatched to a worker), to a unit (``region_code``: a case escalated, transferred or
handed down to it, an extension asked of it), or to both in one row (an overdue or
supervision notice: to the assignee and the unit holding the case). A person reads those
addressed to their account and those addressed to the unit of their scope region, whatever
account the row names too: the office (or department) of exactly that region, not the
offices above it. One row for both keeps the notice once per case and kind (the unique
``(case_id, kind)`` the jobs insert against) and one id in every inbox it reaches. Only notifications of cases the reader may read now are listed (a case moved
out of their reach answers as one that does not exist, here as everywhere). The inbox is a
feed: the phone keeps the last id it has and asks for what came after it.

A task given to a worker (``tasks.assigned_notice``) and a task past its deadline (the overdue
job, to its assignee or, left to its grid, each worker of the grid, and to the office that
issued it) queue notifications naming the task.
The inbox lists them only when asked (``about`` names ``task``): its items named a case
always, and a phone written for that must not meet one that names none. Only tasks the
reader may read now (``tasks.task_visible``: a task handed to another worker out of their
reach is not listed).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..models import Case, Notification, Task, User
from .cases import Caller, visible_condition
from .tasks import task_visible

ABOUT = ("case", "task")


@dataclass(frozen=True)
class Item:
    id: int
    kind: str
    about: str  # case | task
    case_id: int | None
    case_number: str | None
    task_id: int | None
    task_title: str | None
    message: str
    created_at: datetime


def base_kind(kind: str) -> str:
    """Return the kind without what made it unique (``overdue:handle:…`` → ``overdue``)."""
    return kind.split(":", 1)[0]


def inbox(
    session: Session,
    caller: Caller,
    *,
    after: int,
    limit: int,
    about: Collection[str] = ("case",),
) -> list[Item]:
    """Return the caller's notifications with an id above ``after``, oldest first: those of
    cases, and of tasks when ``about`` names them (each only of what the caller may read)."""
    principal = caller.principal
    addressed = [Notification.user_id == principal.id]
    region = session.scalar(select(User.scope_region_code).where(User.id == principal.id))
    if region:
        # Whatever ``user_id`` is: an overdue or supervision notice is one row addressed to
        # the assignee and to the unit holding the case, and reaches both.
        addressed.append(Notification.region_code == region)
    readable = []
    if "case" in about:
        # Outer joins: a task's notice has no case, and the other way round.
        readable.append(and_(Case.id.is_not(None), visible_condition(caller)))
    if "task" in about:
        readable.append(and_(Task.id.is_not(None), task_visible(principal)))
    if not readable:
        return []
    rows = session.execute(
        select(Notification, Case.number, Task.title)
        .outerjoin(Case, Case.id == Notification.case_id)
        .outerjoin(Task, Task.id == Notification.task_id)
        .where(or_(*addressed), Notification.id > after, or_(*readable))
        .order_by(Notification.id)
        .limit(limit)
    ).all()
    return [
        Item(
            n.id,
            base_kind(n.kind),
            "case" if n.case_id is not None else "task",
            n.case_id,
            number,
            n.task_id,
            title,
            n.message,
            n.created_at,
        )
        for n, number, title in rows
    ]
