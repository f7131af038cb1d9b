"""Offline sync for phones: what changed in the caller's world since their cursor.

A sync starts with an empty cursor: the **snapshot** phase pages through everything the phone
keeps — households of the caller's grids (residents masked), the caller's tasks, the cases
they reported or hold — after noting the change-log position at its start (the
*watermark*). Then the **log** phase hands out, page by page, the rows of ``sync_log``
(written by triggers, see ``gridapi.models.sync``) after that position which may concern
the caller; each becomes the object's current state (``upsert``) if the caller may still
see it, else a tombstone (``delete``). A phone keeps the last ``next_cursor`` and asks again.

Why nothing is skipped: on PostgreSQL only rows of transactions older than every transaction
still running (``pg_snapshot_xmin``, over the whole cluster: a long transaction anywhere
delays deliveries, never loses them; the answer says ``pending`` meanwhile) are handed out, and a row's position is its
transaction's id, so a transaction that commits late still sorts after every cursor handed
out before it committed; on SQLite writers are serialised, so the AUTOINCREMENT id is the
commit order. Why nothing is repeated: each log row sorts after the cursor exactly once,
and older rows of an object are deleted when a newer one is written. The snapshot may
already show a change the log then repeats (the state is the same; applying it twice is a
no-op for the phone) — never the reverse.

Categories, the working calendar and the grid boundaries are small: each is sent whole
whenever its digest differs from the one in the cursor.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    Date,
    Integer,
    String,
    and_,
    cast,
    false,
    func,
    literal,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from ..errors import DomainError, Unprocessable
from ..models import CalendarDay, Case, Category, SyncLog, Task
from ..models.base import UTCDateTime, utcnow
from ..models.cases import TERMINAL
from ..models.register import Household
from ..models.tasks import OPEN_TASK_STATUSES
from .cases import Caller
from .register import in_scope
from .tasks import unassigned_held

ENTITIES = ("household", "task", "case")


class CursorExpired(DomainError):
    """The change log no longer reaches back to the cursor: sync again from empty."""

    status = 410


@dataclass
class Cursor:
    """Where a phone is: snapshot (entity index, last id) or log (txid, id); reference digests."""

    actor: str
    phase: str = "snap"
    txid: int = 0
    id: int = 0
    entity: int = 0
    last: int = 0
    refs: dict[str, str] = field(default_factory=dict)
    issued: int = 0
    # What the phone keeps (``keeps``) when the sync began: the log cannot tell a phone that
    # a grid left its roster or joined it, so a cursor of another one is gone (410).
    keeps: str = ""

    def _check(self) -> None:
        """Raise ValueError unless every field has the type and range ``encode`` writes: a
        cursor edited by hand (a number as text, refs null) reached the queries (500)."""

        def count(value: Any) -> bool:
            return type(value) is int and value >= 0

        if not isinstance(self.actor, str) or not isinstance(self.keeps, str):
            raise ValueError("actor or keeps")
        if self.phase not in ("snap", "log"):
            raise ValueError("actor or phase")
        if not all(count(v) for v in (self.txid, self.id, self.last, self.issued)):
            raise ValueError("positions")
        if not count(self.entity) or self.entity > len(ENTITIES):
            raise ValueError("entity")
        if not isinstance(self.refs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.refs.items()
        ):
            raise ValueError("refs")
        if self.issued > time.time() + 300:  # issued in the future: not by this server
            raise ValueError("issued")

    def encode(self, key: bytes) -> str:
        """Return the cursor as text: its fields, and a MAC of them with ``key`` (an edited
        cursor passed: its age, its place in the log, even its caller)."""
        raw = base64.urlsafe_b64encode(orjson.dumps({**asdict(self), "v": 2})).rstrip(b"=")
        return f"{raw.decode()}.{_mac(key, raw)}"

    @classmethod
    def decode(cls, text_: str, actor: str, max_age_s: float, key: bytes) -> Cursor:
        """Return the cursor ``encode`` wrote. Raises Unprocessable for anything else or one
        of another caller, CursorExpired for one older than ``max_age_s`` (in any phase: a
        first sync resumed after its tombstones were pruned lost them) and for one written
        before cursors were signed (sync again without a cursor)."""
        raw, dot, mac = text_.partition(".")
        if not dot and _unsigned(raw):
            raise CursorExpired("The cursor is of an earlier version: sync again without a cursor.")
        try:
            if not hmac.compare_digest(mac, _mac(key, raw.encode("ascii"))):
                raise ValueError("mac")
            data = _read(raw)
            if data.pop("v") != 2:
                raise ValueError("another version")
            cursor = cls(**data)
            cursor._check()
        except (binascii.Error, ValueError, TypeError, KeyError, AttributeError):
            raise Unprocessable(
                "Invalid sync cursor.", errors={"query": {"cursor": ["not a cursor of ours"]}}
            ) from None
        if cursor.actor != actor:
            raise Unprocessable(
                "Invalid sync cursor.", errors={"query": {"cursor": ["issued to another caller"]}}
            )
        if time.time() - cursor.issued > max_age_s:
            raise CursorExpired(
                "The cursor is older than the change log kept (GRIDAPI_SYNC_RETENTION_DAYS): "
                "sync again without a cursor."
            )
        return cursor


def _mac(key: bytes, raw: bytes) -> str:
    digest = hmac.new(key, b"gridapi sync cursor\0" + raw, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _read(raw: str) -> Any:
    """Return the JSON a cursor's unpadded base64 part holds (raises as its decoders do)."""
    return orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))


def _unsigned(raw: str) -> bool:
    """Whether ``raw`` is a cursor of the first version (unsigned JSON)."""
    try:
        return _read(raw).get("v") == 1
    except (binascii.Error, ValueError, TypeError, AttributeError):
        return False


# --- positions in the log ---------------------------------------------------------------------


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def horizon(session: Session) -> int | None:
    """Return the txid below which every transaction has finished (PostgreSQL), else None."""
    if not _pg(session):
        return None
    return int(
        session.execute(
            text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        ).scalar_one()
    )


def watermark(session: Session) -> tuple[int, int]:
    """Return the log position a snapshot read from now on is complete up to."""
    if _pg(session):
        return (horizon(session) or 0, 0)
    return (0, int(session.scalar(select(func.max(SyncLog.id))) or 0))


# --- what a caller keeps ----------------------------------------------------------------------


def _user_id(caller: Caller) -> int | None:
    return caller.principal.id if caller.principal.kind == "user" else None


def kept_entities(caller: Caller) -> tuple[str, ...]:
    p = caller.principal
    kept = []
    if p.can("persons:read"):
        kept.append("household")
    if p.can("tasks:read") and p.kind == "user":  # an app has no tasks of its own to keep
        kept.append("task")
    if p.can("cases:read"):
        kept.append("case")
    return tuple(e for e in ENTITIES if e in kept)


def keeps(caller: Caller, entities: tuple[str, ...]) -> str:
    """Return a digest of what the caller's phone keeps: the sets, the account, the area.

    A grid taken off a worker's roster leaves no row in the log for its households (they did
    not change), nor does a grid added, or a permission gained or lost; so a cursor carries
    this digest, and one of another is refused (410) for a sync from empty, whose copy then
    replaces the phone's."""
    return digest(
        {"sets": list(entities), "user": _user_id(caller), "area": caller.scope.fingerprint()}
    )


def visible(entity: str, caller: Caller, since: datetime | None = None):  # type: ignore[no-untyped-def]
    """Return (model, condition): the objects of ``entity`` the caller's phone keeps.

    Cases and tasks that ended (closed, rejected, cancelled; completed, cancelled) and have
    not changed since ``since`` are not kept (None: all are). A worker reports about ten
    cases a day: a sync from empty sent every case they ever reported or handled, years of
    them, to a phone on a bad network."""
    uid = _user_id(caller)
    scope = caller.scope
    if entity == "case":
        own = [Case.reporter == caller.actor]
        if uid is not None:
            own.append(Case.assignee_id == uid)
        if since is None:
            return Case, or_(*own)
        return Case, and_(or_(*own), or_(Case.status.not_in(TERMINAL), Case.updated_at >= since))
    if entity == "task":
        # As GET /api/v1/me/tasks: assigned to the caller, or unassigned in their grids or
        # given to their own region.
        mine = Task.assignee_id == uid if uid is not None else false()
        held = and_(Task.assignee_id.is_(None), unassigned_held(scope.grid_codes, scope))
        kept = or_(mine, held)
        if since is None:
            return Task, kept
        return Task, and_(kept, or_(Task.status.in_(OPEN_TASK_STATUSES), Task.updated_at >= since))
    return Household, in_scope(scope, Household)


def _log_condition(caller: Caller, entities: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """Log rows that may concern the caller (a superset; each object is checked exactly)."""
    uid = _user_id(caller)
    scope = caller.scope
    area = scope.grid_condition(SyncLog.grid_code, SyncLog.region_code)
    parts = []
    if "case" in entities and uid is not None:
        parts.append(
            and_(SyncLog.entity == "case", or_(SyncLog.user1 == uid, SyncLog.user2 == uid))
        )
    elif "case" in entities:
        # An app (API key) keeps the cases it reported, but the log names only a reporting
        # user (user1): its snapshot was never followed by a change. A case's reporter never
        # changes and cases are not deleted, so its rows are found by the case's id.
        reported = select(Case.id).where(Case.reporter == caller.actor)
        parts.append(and_(SyncLog.entity == "case", SyncLog.entity_id.in_(reported)))
    if "task" in entities:
        mine = SyncLog.user2 == uid if uid is not None else false()
        held = unassigned_held(scope.grid_codes, scope, SyncLog.grid_code, SyncLog.region_code)
        parts.append(and_(SyncLog.entity == "task", or_(mine, held)))
    if "household" in entities:
        parts.append(and_(SyncLog.entity == "household", area))
    return or_(*parts) if parts else false()


# --- a page -----------------------------------------------------------------------------------


@dataclass
class Change:
    entity: str
    id: int
    obj: Any | None  # None: a tombstone


@dataclass
class Page:
    changes: list[Change]
    cursor: Cursor
    has_more: bool
    # Changes exist that transactions still running may precede: ask again shortly.
    pending: bool = False


def page(
    session: Session,
    caller: Caller,
    cursor: Cursor | None,
    *,
    limit: int,
    history_days: int = 0,
) -> Page:
    """Return the next page of changes for the caller after ``cursor`` (None: from empty).

    Cases and tasks that ended and have not changed for ``history_days`` are not kept
    (``visible``; 0: all are): a sync from empty leaves them out, and a change of one that
    does not touch its ``updated_at`` is sent as a tombstone.

    Raises CursorExpired when what the caller's phone keeps is no longer what it kept when
    the cursor's sync began (``keeps``)."""
    entities = kept_entities(caller)
    now = keeps(caller, entities)
    started = int(time.time())
    if cursor is None:
        txid, id_ = watermark(session)
        cursor = Cursor(
            actor=caller.actor, phase="snap", txid=txid, id=id_, keeps=now, issued=started
        )
    elif cursor.keeps != now:
        raise CursorExpired(
            "What your phone keeps has changed since this cursor (your grids, area or "
            "permissions): sync again without a cursor and keep only what that sync sends."
        )
    since = utcnow() - timedelta(days=history_days) if history_days else None
    if cursor.phase == "snap":
        result = _snapshot_page(session, caller, cursor, entities, limit, since)
    else:
        result = _log_page(session, caller, cursor, entities, limit, since)
    # A cursor's age is that of the oldest row it still has to hand out: the start of a
    # first sync (its position is the watermark, whatever pages of the snapshot followed),
    # else the last page that left nothing more (nor held back). Refreshed at every page, a
    # sync paged over more than the retention (a snapshot, or pages of changes with
    # has_more) kept its position while the tombstones after it were pruned: the phone kept
    # what it had lost.
    if not result.has_more and not result.pending:
        result.cursor.issued = started
    return result


def _snapshot_page(
    session: Session,
    caller: Caller,
    cursor: Cursor,
    entities: tuple[str, ...],
    limit: int,
    since: datetime | None = None,
) -> Page:
    changes: list[Change] = []
    while cursor.entity < len(ENTITIES) and len(changes) < limit:
        entity = ENTITIES[cursor.entity]
        if entity not in entities:
            cursor.entity, cursor.last = cursor.entity + 1, 0
            continue
        model, condition = visible(entity, caller, since)
        rows = session.scalars(
            select(model)
            .where(condition, model.id > cursor.last)
            .order_by(model.id)
            .limit(limit - len(changes))
        ).all()
        changes.extend(Change(entity, r.id, r) for r in rows)
        if len(changes) < limit:  # this entity is done
            cursor.entity, cursor.last = cursor.entity + 1, 0
        else:
            cursor.last = rows[-1].id
    if cursor.entity >= len(ENTITIES):
        cursor.phase, cursor.entity, cursor.last = "log", 0, 0
        return Page(changes, cursor, has_more=True)  # the log since the watermark follows
    return Page(changes, cursor, has_more=True)


def _log_page(
    session: Session,
    caller: Caller,
    cursor: Cursor,
    entities: tuple[str, ...],
    limit: int,
    since: datetime | None = None,
) -> Page:
    stmt = select(SyncLog.txid, SyncLog.id, SyncLog.entity, SyncLog.entity_id).where(
        tuple_(SyncLog.txid, SyncLog.id) > tuple_(cursor.txid, cursor.id),
        _log_condition(caller, entities),
    )
    upper = horizon(session)
    held = None
    if upper is not None:
        held = stmt.where(SyncLog.txid >= upper).limit(1)
        stmt = stmt.where(SyncLog.txid < upper)
    rows = session.execute(stmt.order_by(SyncLog.txid, SyncLog.id).limit(limit)).all()
    pending = held is not None and len(rows) < limit and session.execute(held).first() is not None
    if not rows:
        return Page([], cursor, has_more=False, pending=pending)
    cursor.txid, cursor.id = rows[-1].txid, rows[-1].id
    # The latest row of each object decides; its current state is what the phone needs.
    order: dict[tuple[str, int], int] = {}
    for n, row in enumerate(rows):
        order[(row.entity, row.entity_id)] = n
    found: dict[tuple[str, int], Any] = {}
    for entity in entities:
        ids = sorted({i for e, i in order if e == entity})
        if not ids:
            continue
        model, condition = visible(entity, caller, since)
        for obj in session.scalars(select(model).where(condition, model.id.in_(ids))):
            found[(entity, obj.id)] = obj
    changes = [
        Change(entity, id_, found.get((entity, id_)))
        for (entity, id_), _ in sorted(order.items(), key=lambda kv: kv[1])
        if entity in entities
    ]
    return Page(changes, cursor, has_more=len(rows) == limit, pending=pending)


# --- reference data ---------------------------------------------------------------------------


def digest(payload: Any) -> str:
    return hashlib.blake2b(
        orjson.dumps(payload, option=orjson.OPT_SORT_KEYS), digest_size=12
    ).hexdigest()


def reference_stamps(session: Session, grids: Any) -> dict[str, list[list[Any]]]:
    """Return what each reference set's digest is taken of, from one statement: each
    category's code and ``updated_at``, each calendar day's date and ``updated_at``, each
    grid's (of the select ``grids``: the caller's in service) code and version, in order of
    code or day. It took a statement per set (three round trips on every sync); the stamps,
    and so the digests phones keep in their cursors, are the same."""
    found = grids.subquery()
    # Each null cast to its column's type: PostgreSQL types a union's columns from its
    # branches, and untyped nulls made the grids' versions text.
    stmt = union_all(
        select(
            literal("categories", String).label("kind"),
            Category.code.label("name"),
            cast(null(), Date).label("day"),
            Category.updated_at.label("at"),
            cast(null(), Integer).label("version_id"),
        ),
        select(
            literal("calendar", String),
            cast(null(), String),
            CalendarDay.day,
            CalendarDay.updated_at,
            cast(null(), Integer),
        ),
        select(
            literal("grids", String),
            found.c.code,
            cast(null(), Date),
            cast(null(), UTCDateTime),
            found.c.version_id,
        ),
    ).order_by(text("kind"), text("name"), text("day"))
    stamps: dict[str, list[list[Any]]] = {"categories": [], "calendar": [], "grids": []}
    for kind, name, day, at, version_id in session.execute(stmt):
        if kind == "categories":
            stamps[kind].append([name, str(at)])
        elif kind == "calendar":
            stamps[kind].append([str(day), str(at)])
        else:
            stamps[kind].append([name, version_id])
    return stamps


def changed_references(
    cursor: Cursor, references: dict[str, tuple[str, Callable[[], Any]]]
) -> dict[str, Any]:
    """Return the reference sets whose digest differs from the cursor's (and note the new
    digests in it). Each set comes as (its digest, a function building it whole)."""
    out: dict[str, Any] = {}
    for name, (stamp, full) in references.items():
        if cursor.refs.get(name) != stamp:
            out[name] = full()
            cursor.refs[name] = stamp
    return out


#: How much older than the cursors' retention a tombstone is before it is pruned. A row's
#: time is the database's clock (its triggers write it), a cursor's age this server's: with
#: the database's clock behind, a tombstone written after a cursor was issued looked older
#: than the cursor, was pruned while the cursor was still taken, and the phone never heard
#: that the object had left it. ``gridapi serve`` warns when the two clocks differ by more
#: than a few seconds; this covers any difference short of a day.
PRUNE_MARGIN = timedelta(days=1)


def prune(session: Session, before: Any) -> int:
    """Delete ``leave`` and ``delete`` rows older than ``before`` (the cursors' retention:
    older cursors are refused with 410) by more than ``PRUNE_MARGIN``, so that nothing a
    cursor still taken needs is lost, whatever the clocks."""
    from sqlalchemy import delete

    result = session.execute(
        delete(SyncLog).where(SyncLog.op != "upsert", SyncLog.at < before - PRUNE_MARGIN)
    )
    return int(result.rowcount or 0)
