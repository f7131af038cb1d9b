"""The append-only audit log: who changed or unmasked what, when, from where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, and_, or_, select, text
from sqlalchemy.orm import Session

from ..models import AuditEntry
from ..models.identity import PERSON_IDS_SQL, SHARED_ROWS_SQL
from ..scope import Scope

# Never copied into a summary, whatever a caller passes.
_SECRET_KEYS = {
    "password",
    "new_password",
    "current_password",
    "refresh_token",
    "key",
    "api_key",
    "access_token",
    "phone",
    "id_number",
}


# Whether a row about several residents names :person_id in ``summary.person_ids``, per
# engine: the rows ``SHARED_ROWS_SQL`` selects (a search by a phone number a family shares,
# ``register.record_lookup``), written out rather than bound so that PostgreSQL's partial
# index of them (``ix_audit_log_person_ids``, on ``PERSON_IDS_SQL``) serves every plan,
# generic ones too. On SQLite, json_each reads the array of each such row.
_NAMES_PERSON = {
    "postgresql": f"(audit_log.object_type = 'person' AND {SHARED_ROWS_SQL} "
    f"AND {PERSON_IDS_SQL} @> jsonb_build_array(:person_id))",
    # json_array_length first: most such rows found nobody (a miss), and it is cheaper than
    # json_each (80 against 190 ms over 300,000 of them; SQLite has no index for either).
    "sqlite": f"(audit_log.object_type = 'person' AND {SHARED_ROWS_SQL} "
    "AND json_array_length(audit_log.summary, '$.person_ids') > 0 "
    "AND EXISTS (SELECT 1 FROM json_each(audit_log.summary, '$.person_ids') AS j "
    "WHERE j.value = :person_id))",
}


def about_person(session: Session, person_id: int) -> ColumnElement[bool]:
    """Return the condition of the rows about the resident ``person_id``: those whose object
    they are, and those about several residents that name them among ``person_ids`` (a
    lookup that matched a mother and her child is in the history of both, and in each one's
    access export)."""
    names = text(_NAMES_PERSON[session.get_bind().dialect.name]).bindparams(person_id=person_id)
    return or_(
        and_(AuditEntry.object_type == "person", AuditEntry.object_id == str(person_id)),
        names,
    )


@dataclass(frozen=True)
class Actor:
    """Who acts: a user, an API client, or the system (CLI, worker)."""

    type: str
    id: str | None
    name: str | None
    request_id: str | None = None
    address: str | None = None


#: Lists a summary keeps whole where others keep their first 50: the residents a lookup
#: found, each of whom reads it in their history and access export (``about_person``).
_WHOLE_LISTS = {"person_ids"}


def clean_summary(value: Any, *, whole: bool = False) -> Any:
    """Return a summary fit for the log: secrets masked, lists capped (but those named in
    ``_WHOLE_LISTS``), values plain."""
    if isinstance(value, dict):
        return {
            k: "***" if k in _SECRET_KEYS else clean_summary(v, whole=k in _WHOLE_LISTS)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        kept = value if whole else value[:50]
        return [clean_summary(v) for v in kept]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def record(
    session: Session,
    actor: Actor,
    action: str,
    object_type: str,
    object_id: Any = None,
    *,
    summary: dict[str, Any] | None = None,
    region_code: str | None = None,
) -> AuditEntry:
    """Add an audit row to the session's transaction (committed with the change)."""
    entry = AuditEntry(
        actor_type=actor.type,
        actor_id=actor.id,
        actor_name=actor.name,
        action=action,
        object_type=object_type,
        object_id=None if object_id is None else str(object_id),
        region_code=region_code,
        summary=clean_summary(summary or {}),
        request_id=actor.request_id,
        client_address=actor.address,
    )
    session.add(entry)
    return entry


def _an_id(value: str | None) -> bool:
    return bool(value) and value.isascii() and value.isdigit() and len(value) <= 18  # type: ignore[union-attr]


def list_entries(
    session: Session,
    scope: Scope,
    *,
    action: str | None = None,
    object_type: str | None = None,
    object_id: str | None = None,
    actor_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before: int | None = None,
    limit: int = 100,
    hidden_types: Iterable[str] = (),
) -> list[AuditEntry]:
    """Return audit rows inside the scope, newest first (keyset on id with ``before``).

    Rows without a region (sign-ins, system changes) are visible only to unrestricted callers;
    rows about ``hidden_types`` (special-group records, for callers who may not read them)
    to nobody. The rows of a resident (``object_type`` person and their id) include those
    that name them among several (``about_person``).
    """
    stmt = select(AuditEntry)
    hidden = sorted(hidden_types)
    if hidden:
        stmt = stmt.where(AuditEntry.object_type.not_in(hidden))
    if not scope.unrestricted:
        stmt = stmt.where(scope.region_condition(AuditEntry.region_code))
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if object_type == "person" and _an_id(object_id):
        stmt = stmt.where(about_person(session, int(object_id)))
    else:
        if object_type:
            stmt = stmt.where(AuditEntry.object_type == object_type)
        if object_id:
            stmt = stmt.where(AuditEntry.object_id == object_id)
    if actor_id:
        stmt = stmt.where(AuditEntry.actor_id == actor_id)
    if since:
        stmt = stmt.where(AuditEntry.at >= since)
    if until:
        stmt = stmt.where(AuditEntry.at < until)
    if before is not None:  # 0 is a cursor (before every row), not a missing one
        stmt = stmt.where(AuditEntry.id < before)
    return list(session.scalars(stmt.order_by(AuditEntry.id.desc()).limit(limit)))
