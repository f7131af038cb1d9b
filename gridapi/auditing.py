"""Writing audit rows from a request: the actor comes from the caller and the request."""

from __future__ import annotations

from typing import Any

from flask import g, has_request_context, request

from .auth import Unauthorized, current_principal
from .extensions import db_session
from .services.audit import Actor, record


def request_actor() -> Actor:
    """Return the actor of the current request (the caller, its request id and address)."""
    try:
        principal = current_principal(required=False) if has_request_context() else None
    except Unauthorized:  # bad credentials on a public operation: act as anonymous
        principal = None
    if principal is None:
        return Actor(
            "anonymous",
            None,
            None,
            g.get("request_id"),
            request.remote_addr if has_request_context() else None,
        )
    return Actor(
        principal.kind, principal.actor_id, principal.name, g.get("request_id"), request.remote_addr
    )


def audit(
    action: str,
    object_type: str,
    object_id: Any = None,
    *,
    summary: dict[str, Any] | None = None,
    region_code: str | None = None,
    actor: Actor | None = None,
) -> None:
    """Add an audit row to the request's transaction (so it commits with the change)."""
    record(
        db_session(),
        actor or request_actor(),
        action,
        object_type,
        object_id,
        summary=summary,
        region_code=region_code,
    )
