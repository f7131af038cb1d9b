"""The notification inbox of a person: what the workflow and the worker queued for them.

Steps of a case and the background jobs queue notifications (``cases.queue_notification``,
``jobs.queue_once``) in the transaction of the change: to one account (``user_id``: a case
dispatched to a worker, its overdue notice) or to a unit (``region_code``: a case
escalated, transferred or handed down to it, an extension asked of it). A person reads
those addressed to their account and, unaddressed to any account, those to the unit of
their scope region: the office (or department) of exactly that region, not the offices
above it. Only notifications of cases the reader may read now are listed (a case moved
out of their reach answers as one that does not exist, here as everywhere). The inbox is a
feed: the phone keeps the last id it has and asks for what came after it. A task given to a
worker (``tasks.assigned_notice``) queues one naming the task, for the delivery channels; the
inbox lists those of cases (its items name a case), and the phone has its tasks from
``GET /me/tasks``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from ..models import Case, Notification, User
from .cases import Caller, visible_condition


@dataclass(frozen=True)
class Item:
    id: int
    kind: str
    case_id: int
    case_number: str
    message: str
    created_at: datetime


def base_kind(kind: str) -> str:
    """Return the kind without what made it unique (``overdue:handle:…`` → ``overdue``)."""
    return kind.split(":", 1)[0]


def inbox(session: Session, caller: Caller, *, after: int, limit: int) -> list[Item]:
    """Return the caller's notifications with an id above ``after``, oldest first."""
    principal = caller.principal
    addressed = [Notification.user_id == principal.id]
    region = session.scalar(select(User.scope_region_code).where(User.id == principal.id))
    if region:
        addressed.append(and_(Notification.user_id.is_(None), Notification.region_code == region))
    rows = session.execute(
        select(Notification, Case.number)
        .join(Case, Case.id == Notification.case_id)
        .where(or_(*addressed), Notification.id > after, visible_condition(caller))
        .order_by(Notification.id)
        .limit(limit)
    ).all()
    return [
        Item(n.id, base_kind(n.kind), n.case_id, number, n.message, n.created_at)
        for n, number in rows
    ]
