"""A write sent again with its ``Idempotency-Key`` is answered once (a phone on a bad network).

For endpoints whose only retry key is the header (``POST /patrols``): the first request
stores its answer under the key in its own transaction; a retry with the same key and body
gets that answer again with ``Idempotent-Replayed: true`` and changes nothing, one with
another body is 422, one while the first is still running 409 with Retry-After
(``services.idempotency``). Reports and visits also take the phone's ``client_id`` and have
their own paths (``services.intake``, ``resources.register``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flask import Response, request
from sqlalchemy.orm import Session

from ..extensions import state
from ..services import idempotency


def replayed(payload: str, status: int) -> Response:
    """Return a stored answer as it was first sent, marked as a replay."""
    return Response(
        payload, status=status, mimetype="application/json", headers={"Idempotent-Replayed": "true"}
    )


@dataclass(frozen=True)
class Keyed:
    """The request's ``Idempotency-Key`` (as the caller's key) and the hash of the request."""

    keys: list[str]
    body_hash: idempotency.RequestHash

    @classmethod
    def of_request(cls) -> Keyed | None:
        """Return the request's key, or None when it sent none (422 for a malformed one)."""
        key = idempotency.parse_header(request.headers.get("Idempotency-Key"))
        if key is None:
            return None
        body = request.get_json(silent=True)
        return cls([f"key:{key}"], idempotency.request_hash(request.method, request.path, body))

    def answered(self, session: Session, caller: str) -> Response | None:
        """Return the answer stored under the key (the transaction rolled back), or None.

        The key is taken for this transaction first (PostgreSQL: 409 while a request with
        it runs), then read: a request with it that committed meanwhile is seen. 422 when
        the answer stored was for another request."""
        idempotency.claim(session, caller, self.keys)
        stored = idempotency.find(session, caller, self.keys, self.body_hash)
        if stored is None:
            return None
        session.rollback()
        return replayed(stored.response, stored.status_code)

    def remember(
        self,
        session: Session,
        caller: str,
        payload: str,
        *,
        resource_id: int | None,
        now: datetime,
        status_code: int = 201,
    ) -> None:
        """Store the answer under the key, in the request's transaction."""
        idempotency.remember(
            session,
            caller,
            self.keys,
            hash_=self.body_hash,
            method=request.method,
            path=request.path,
            status_code=status_code,
            response=payload,
            resource_id=resource_id,
            now=now,
            keep_days=state().settings.idempotency_days,
        )
