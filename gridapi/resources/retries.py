"""A write sent again with its ``Idempotency-Key`` is answered once (a phone on a bad network).

For endpoints whose only retry key is the header (``POST /patrols``): the first request
stores its answer under the key in its own transaction; a retry with the same key and body
gets that answer again with ``Idempotent-Replayed: true`` and changes nothing, one with
another body is 422, one while the first is still running 409 with Retry-After
(``services.idempotency``). Reports and visits also take the phone's ``client_id`` and have
their own paths (``services.intake``, ``resources.register``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from flask import Response, request
from sqlalchemy.orm import Session
from werkzeug.exceptions import UnprocessableEntity

from ..auth import current_principal
from ..errors import Unprocessable
from ..extensions import reading_session, state
from ..services import idempotency


def with_version_etag(answer: Response) -> Response:
    """A replayed creation with the ETag of the version it shows (when it shows one): a
    phone whose first answer was lost sends it as If-Match with its next step (stale by
    then: 412)."""
    shown = orjson.loads(answer.get_data())
    if isinstance(shown, dict) and isinstance(shown.get("version"), int):
        answer.headers["ETag"] = f'"{shown["id"]}-{shown["version"]}"'
    return answer


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

    def stored_answer(self, caller: str) -> idempotency.Stored | None:
        """Return the answer stored for this request (its keys and body), read in a session
        of its own, or None: none is stored, or what is was for another request."""
        with reading_session() as session:
            try:
                return idempotency.find(session, caller, self.keys, self.body_hash)
            except Unprocessable:
                return None


def replays_before_validation(
    of_request: Callable[[], Keyed | None],
    respond: Callable[[Response], Response] | None = None,
) -> Callable[[Any], Any]:
    """Decorate a keyed write, between its permission and its arguments: a retry whose body
    no longer validates gets the answer stored for it all the same.

    What a body is checked against moves: the server's clock (an ``occurred_at`` five
    minutes ahead, and a phone whose clock was corrected since its first send no longer says
    by ``Date`` how far off the body's times are), the categories and their attributes, the
    caller's area. A phone that never got the answer to a report the server took, and sent
    it again, got 422 "lies in the future" for a report that exists: it could never learn
    its number. The arguments' 422 is answered by the stored answer when ``of_request``
    (the request's keys and hash, read from the body as sent) finds one, with
    ``Idempotent-Replayed: true`` (``respond`` adds what the view's replay adds); otherwise
    it stands."""

    def decorator(view: Any) -> Any:
        @functools.wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                return view(*args, **kwargs)
            except UnprocessableEntity as exc:  # webargs': the arguments did not validate
                if not isinstance(getattr(exc, "data", None), dict) or "messages" not in exc.data:
                    raise
                principal = current_principal()
                try:
                    keyed = of_request() if principal is not None else None
                except Unprocessable:  # a malformed key: the body's errors say more
                    keyed = None
                stored = keyed.stored_answer(principal.actor_id) if keyed and principal else None
                if stored is None:
                    raise
                answer = replayed(stored.response, stored.status_code)
                return respond(answer) if respond is not None else answer

        return checked

    return decorator
