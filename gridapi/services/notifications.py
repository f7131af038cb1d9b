"""The notification inbox of a person: what the workflow and the worker queued for them.

Steps of a case and the background jobs queue notifications (``cases.queue_notification``,
``jobs.queue_once``) in the transaction of the change: to one account (``user_id``: a case
dispatched to a worker), to a unit (``region_code``: a case escalated, transferred or
handed down to it, an extension asked of it), or to both in one row (an overdue or
supervision notice: to the assignee and the unit holding the case). A person reads those
addressed to their account and those addressed to the unit of their scope region, whatever
account the row names too: the office of exactly that region, not the offices above it. A
department's member reads, instead of the region's, those addressed to the department (a
case dispatched to it; rework, overdue and supervision notices of one it handles with
nobody of it signed), whose region is its county's, as the county office's is. One row for both keeps the notice once per case and kind (the unique
``(case_id, kind)`` the jobs insert against) and one id in every inbox it reaches. Only notifications of cases the reader may read now are listed (a case moved
out of their reach answers as one that does not exist, here as everywhere). The inbox is a
feed: the phone keeps the last id it has and asks for what came after it.

A task given to a worker (``tasks.assigned_notice``) and a task past its deadline (the overdue
job, to its assignee or, left to its grid, each worker of the grid, left to its region, that
region's unit, and to the office that issued it) and a task whose deadline a calendar edit
brought earlier (``tasks.earlier_notices``, to those doing it) queue notifications naming the
task.
The inbox lists them only when asked (``about`` names ``task``): its items named a case
always, and a phone written for that must not meet one that names none. Only tasks the
reader may read now (``tasks.task_visible``: a task handed to another worker out of their
reach is not listed).

The server keeps one read mark per account (``notification_read_marks``): the highest id
the person marked read, from any device. It moves forward only, and only to the id of a
notification the person may read now (``mark_read``: an id beyond theirs is clamped to the
last of theirs at or below it), so no one marks rows they do not know of. One mark covers
both kinds: a phone that lists only cases' and marks up to its last has read the tasks'
below it too. ``unread`` counts, by the list's own rule and ``about``, the notifications
above the mark, up to ``UNREAD_CAP``: a worker with years of notices never marked costs a
bounded count, not a scan of them all.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from ..errors import Unprocessable
from ..models import Case, Category, Notification, NotificationReadMark, Task, User
from ..models.base import utcnow
from ..scope import Scope
from .cases import Caller, visible_condition
from .patrols import dialect_insert
from .tasks import task_visible

ABOUT = ("case", "task")
#: ``unread`` counts at most this many: the count of a worker who never marked stays cheap.
#: An app shows it as "999+".
UNREAD_CAP = 1000


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
    sent_at: datetime | None  # when a gateway (SMS, push) said it sent it; None: not yet


def base_kind(kind: str) -> str:
    """Return the kind without what made it unique (``overdue:handle:…`` → ``overdue``)."""
    return kind.split(":", 1)[0]


def _feed(session: Session, caller: Caller, about: Collection[str]) -> Select[Any] | None:
    """Return the caller's notifications (with their case's number and task's title) of the
    kinds ``about`` names that they may read now, unordered; None when it names none."""
    principal = caller.principal
    addressed: list[ColumnElement[bool]] = [Notification.user_id == principal.id]
    if caller.department_id is not None:
        # A department's member reads the department's, not those of the office of its
        # region (the county's: escalations and supervision it cannot act on).
        addressed.append(Notification.department_id == caller.department_id)
    else:
        region = session.scalar(select(User.scope_region_code).where(User.id == principal.id))
        if region:
            # Whatever ``user_id`` is: an overdue or supervision notice is one row addressed
            # to the assignee and to the unit holding the case, and reaches both.
            addressed.append(Notification.region_code == region)
    readable = []
    if "case" in about:
        # Outer joins: a task's notice has no case, and the other way round.
        readable.append(and_(Case.id.is_not(None), visible_condition(caller)))
    if "task" in about:
        readable.append(and_(Task.id.is_not(None), task_visible(principal)))
    if not readable:
        return None
    return (
        select(Notification, Case.number, Task.title)
        .outerjoin(Case, Case.id == Notification.case_id)
        .outerjoin(Task, Task.id == Notification.task_id)
        .where(or_(*addressed), or_(*readable))
    )


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
    feed = _feed(session, caller, about)
    if feed is None:
        return []
    rows = session.execute(
        feed.where(Notification.id > after).order_by(Notification.id).limit(limit)
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
            n.sent_at,
        )
        for n, number, title in rows
    ]


def read_mark(session: Session, user_id: int) -> int:
    """Return the highest notification id the account marked read (0: none)."""
    mark = session.scalar(
        select(NotificationReadMark.read_up_to).where(NotificationReadMark.user_id == user_id)
    )
    return mark or 0


def unread(
    session: Session, caller: Caller, *, above: int, about: Collection[str] = ("case",)
) -> int:
    """Return how many of the caller's notifications the inbox would list after ``above``
    (same rule, same ``about``), counted up to ``UNREAD_CAP``."""
    feed = _feed(session, caller, about)
    if feed is None:
        return 0
    ids = (
        feed.with_only_columns(Notification.id)
        .where(Notification.id > above)
        .limit(UNREAD_CAP)
        .subquery()
    )
    return session.scalar(select(func.count()).select_from(ids)) or 0


def mark_read(session: Session, caller: Caller, up_to: int) -> int:
    """Move the caller's read mark up to ``up_to``, clamped to the last notification at or
    below it that they may read now (of cases or tasks); return the mark.

    Never backwards: a mark at or above ``up_to`` stays, also against a concurrent request
    that moved it further (the upsert keeps the higher). Nothing of theirs in between
    leaves it where it is.
    """
    user_id = caller.principal.id
    current = read_mark(session, user_id)
    if up_to <= current:
        return current
    feed = _feed(session, caller, ABOUT)
    assert feed is not None  # ABOUT names every kind
    last = session.scalar(
        feed.with_only_columns(func.max(Notification.id)).where(
            Notification.id > current, Notification.id <= up_to
        )
    )
    if last is None:
        return current
    insert = dialect_insert(session)
    stmt = insert(NotificationReadMark).values(user_id=user_id, read_up_to=last)
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["user_id"],
            set_={"read_up_to": stmt.excluded.read_up_to},
            where=NotificationReadMark.read_up_to < stmt.excluded.read_up_to,
        )
    )
    return read_mark(session, user_id)


# --- the relay queue (SMS and push gateways) ---------------------------------------------------
#
# A gateway that cannot be reached by webhooks (a county's intranet lets nothing in) reads the
# queue instead and says what it sent. What it reads is what ``notification.created`` carries
# (revision 0053): ids, the base kind, the recipients as the row holds them, a case's id and
# number unless its category is sensitive; never the message, which names the case or the
# task's title.

#: How many ids one ``stamp_sent`` takes.
STAMP_MAX = 500


@dataclass(frozen=True)
class Relayed:
    id: int
    kind: str
    about: str  # case | task
    created_at: datetime
    sent_at: datetime | None
    recipients: dict[str, Any]
    case: dict[str, Any] | None
    sensitive: bool
    task_id: int | None


def _relay_rows(scope: Scope) -> Select[Any]:
    """Notifications of the caller's area (by the region of their case or task) with what a
    gateway may read of their case."""
    hidden = and_(
        Notification.case_id.is_not(None),
        or_(Case.sensitive.is_(True), Category.sensitive.is_(True)),
    )
    return (
        select(Notification, Case.number, hidden.label("hidden"))
        .outerjoin(Case, Case.id == Notification.case_id)
        .outerjoin(Category, Category.code == Case.category_code)
        .outerjoin(Task, Task.id == Notification.task_id)
        .where(scope.region_condition(func.coalesce(Case.region_code, Task.region_code)))
    )


def relay_queue(
    session: Session, scope: Scope, *, after: int, limit: int, unsent: bool
) -> list[Relayed]:
    """Return the notifications of ``scope`` above the id ``after``, oldest first; with
    ``unsent`` only those no gateway has said it sent."""
    stmt = _relay_rows(scope).where(Notification.id > after)
    if unsent:
        stmt = stmt.where(Notification.sent_at.is_(None))
    rows = session.execute(stmt.order_by(Notification.id).limit(limit)).all()
    return [
        Relayed(
            id=n.id,
            kind=base_kind(n.kind),
            about="case" if n.case_id is not None else "task",
            created_at=n.created_at,
            sent_at=n.sent_at,
            recipients={
                "user_id": n.user_id,
                "region_code": n.region_code,
                "department_id": n.department_id,
            },
            case=None if n.case_id is None or hidden else {"case_id": n.case_id, "number": number},
            sensitive=bool(hidden),
            task_id=n.task_id,
        )
        for n, number, hidden in rows
    ]


@dataclass(frozen=True)
class Stamped:
    sent: list[int]  # stamped now
    already: list[int]  # stamped before: their time is kept


def stamp_sent(session: Session, scope: Scope, ids: Collection[int]) -> Stamped:
    """Record that a gateway sent the notifications ``ids`` (of ``scope``): ``sent_at`` is
    set once, the first time. Raises Unprocessable, stamping none, when an id is not a
    notification of the caller's area (answered as one that does not exist)."""
    wanted = sorted(set(ids))
    found = {
        n.id: n
        for n, _number, _hidden in session.execute(
            _relay_rows(scope).where(Notification.id.in_(wanted)).with_for_update(of=Notification)
        )
    }
    unknown = [i for i in wanted if i not in found]
    if unknown:
        raise Unprocessable(
            "Some ids are not notifications of your area; none was stamped.",
            errors={"json": {"ids": [f"no such notification: {', '.join(map(str, unknown))}"]}},
        )
    sent = [i for i in wanted if found[i].sent_at is None]
    already = [i for i in wanted if found[i].sent_at is not None]
    if sent:
        session.execute(
            update(Notification)
            .where(Notification.id.in_(sent), Notification.sent_at.is_(None))
            .values(sent_at=utcnow())
        )
    return Stamped(sent=sent, already=already)
