"""The append-only audit log: who changed or unmasked what, when, from where."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..models import AuditEntry
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


@dataclass(frozen=True)
class Actor:
    """Who acts: a user, an API client, or the system (CLI, worker)."""

    type: str
    id: str | None
    name: str | None
    request_id: str | None = None
    address: str | None = None


def clean_summary(value: Any) -> Any:
    """Return a summary fit for the log: secrets masked, lists capped, values plain."""
    if isinstance(value, dict):
        return {k: ("***" if k in _SECRET_KEYS else clean_summary(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_summary(v) for v in value][:50]
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
    to nobody.
    """
    stmt = select(AuditEntry)
    hidden = sorted(hidden_types)
    if hidden:
        stmt = stmt.where(AuditEntry.object_type.not_in(hidden))
    if not scope.unrestricted:
        stmt = stmt.where(scope.region_condition(AuditEntry.region_code))
    if action:
        stmt = stmt.where(AuditEntry.action == action)
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
