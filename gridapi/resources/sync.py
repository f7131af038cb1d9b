"""Offline sync over HTTP: changes since a cursor, and a batch of actions queued offline."""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from flask import Response, current_app, g, request
from flask.views import MethodView
from marshmallow import ValidationError, fields, validate
from sqlalchemy import Connection, select
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session
from werkzeug.test import EnvironBuilder

from ..auth import current_principal
from ..errors import Unprocessable, error_body
from ..extensions import AppState, db_session, state, use_session
from ..jsonio import dumps_bytes
from ..models.tasks import TaskItem
from ..phone import DATE_HEADER
from ..schemas.calendar import CalendarDaySchema
from ..schemas.cases import CaseCreateSchema
from ..schemas.categories import CategorySchema
from ..schemas.common import StrictSchema
from ..services import calendar as calendar_svc
from ..services import cases as cases_svc
from ..services import categories as categories_svc
from ..services import grids as grids_svc
from ..services import idempotency
from ..services import sync as svc
from ..services import tasks as tasks_svc
from .blueprint import MAX_ID, Blueprint
from .cases import REPORT_DEFAULTS, REPORT_INSTANTS, _category_names, _names_for, case_view
from .register import households_body

blp = Blueprint(
    "sync",
    __name__,
    url_prefix="/api/v1/sync",
    description="Offline sync for phones: everything the phone keeps that changed since its "
    "cursor (with tombstones), and a batch of actions queued offline, each applied once.",
)


class SyncArgsSchema(StrictSchema):
    cursor = fields.String(
        validate=validate.Length(max=2000),
        metadata={"description": "`next_cursor` of the last answer; none for a first sync."},
    )
    limit = fields.Integer(
        validate=validate.Range(min=1, max=2000),
        metadata={"description": "Changes per page (default GRIDAPI_SYNC_PAGE_SIZE)."},
    )


class ChangeSchema(StrictSchema):
    type = fields.String(required=True, metadata={"description": "household, task or case"})
    id = fields.Integer(required=True)
    op = fields.String(
        required=True,
        metadata={"description": "upsert (keep `data`) or delete (deleted, or out of reach)."},
    )
    data = fields.Dict(metadata={"description": "The object as its own GET answers it."})


class SyncPageSchema(StrictSchema):
    changes = fields.List(fields.Nested(ChangeSchema), required=True)
    categories = fields.List(
        fields.Dict(), metadata={"description": "All categories, when they changed."}
    )
    calendar = fields.List(
        fields.Dict(), metadata={"description": "All calendar days, when they changed."}
    )
    grids = fields.Dict(
        metadata={
            "description": "Grids of your scope as a GeoJSON FeatureCollection, when "
            "they changed (replace the phone's copy)."
        }
    )
    next_cursor = fields.String(required=True)
    has_more = fields.Boolean(required=True, metadata={"description": "Ask again at once."})
    pending = fields.Boolean(
        required=True,
        metadata={
            "description": "Changes are being committed by transactions still running: ask "
            "again in a second or two (they are never skipped, only held back until then)."
        },
    )


def _references(session, scope) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Digest and builder of each reference set, by name. The digests are taken of each row's key and
    stamp (``svc.reference_stamps``, one statement for the three sets): the categories' and
    the calendar's codes or days and ``updated_at`` (their count and latest ``updated_at``
    stayed the same when an edit stamped before another one committed after it, and phones
    kept the old row), the code and version of each grid in service in the scope (their
    count, highest version and highest code stayed the same when a community rolled back to
    its older version while another's later one served)."""
    stamps = svc.reference_stamps(session, grids_svc.grids_query(scope=scope))

    def categories() -> list[dict[str, Any]]:
        rows = categories_svc.list_categories(session, include_inactive=True)
        return CategorySchema(many=True).dump(rows)

    def calendar() -> list[dict[str, Any]]:
        return CalendarDaySchema(many=True).dump(calendar_svc.list_days(session))

    def grids() -> dict[str, Any]:
        return orjson.loads(b"".join(grids_svc.iter_geojson(session, scope=scope)))

    full = {"categories": categories, "calendar": calendar, "grids": grids}
    return {name: (svc.digest(stamps[name]), build) for name, build in full.items()}


def render(session, caller, changes: list[svc.Change]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    cases = [c.obj for c in changes if c.entity == "case" and c.obj is not None]
    names = _names_for(session, cases) if cases else {}
    category_names = _category_names(session, cases) if cases else {}
    links = cases_svc.duplicate_links(session, caller, cases)
    households = [c.obj for c in changes if c.entity == "household" and c.obj is not None]
    household_views = {
        h.id: view for h, view in zip(households, households_body(session, households), strict=True)
    }
    tasks = [c.obj for c in changes if c.entity == "task" and c.obj is not None]
    task_views = _task_views(session, tasks, caller.principal)
    out = []
    for change in changes:
        item: dict[str, Any] = {"type": change.entity, "id": change.id}
        if change.obj is None:
            item["op"] = "delete"
        elif change.entity == "case":
            c = change.obj
            item["op"] = "upsert"
            item["data"] = case_view(
                c,
                caller,
                names,
                category_name=category_names.get(c.category_code),
                links=links,
            )
        elif change.entity == "household":
            item["op"] = "upsert"
            item["data"] = household_views[change.id]
        else:
            item["op"] = "upsert"
            item["data"] = task_views[change.id]
        out.append(item)
    return out


def _task_views(session, tasks, principal) -> dict[int, dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Tasks with their items (houses or households to go through), items in one query."""
    if not tasks:
        return {}
    items: dict[int, list[Any]] = {t.id: [] for t in tasks}
    for item in session.scalars(
        select(TaskItem).where(TaskItem.task_id.in_(list(items))).order_by(TaskItem.id)
    ):
        items[item.task_id].append(item)
    names = tasks_svc.names_for(session, tasks)
    return {t.id: tasks_svc.task_view(t, principal, names, items=items[t.id]) for t in tasks}


# A page of cases names their regions from the routing snapshot: checked (when due) on a
# connection of its own, it is taken before the page's session holds one.
blp.takes_routing_snapshot()


@blp.route("")
class Sync(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(SyncArgsSchema, location="query")
    @blp.response(200, SyncPageSchema)
    def get(self, args):
        """Changes since a cursor, for a phone's offline copy

        Households of your grids (residents masked, with `persons:read`), your tasks (with
        `tasks:read`), the cases you reported or hold; each `upsert` carries the object as
        its own GET answers it, each `delete` says it was deleted or left your reach. Without
        a cursor the first pages are a snapshot of everything; afterwards only changes.
        Categories, the calendar and your grids' boundaries come whole whenever they changed.
        Keep `next_cursor` and ask again (at once while `has_more`). A change committed
        while you page is never skipped. A cursor older than GRIDAPI_SYNC_RETENTION_DAYS,
        or issued before your grids, area or permissions changed, answers 410: sync again
        from empty and keep only what that sync sends.
        """
        principal = current_principal()
        session = db_session()
        st = state()
        caller = cases_svc.caller_of(session, principal)
        cursor = None
        if args.get("cursor"):
            max_age = st.settings.sync_retention_days * 86400
            cursor = svc.Cursor.decode(args["cursor"], principal.actor_id, max_age, _cursor_key(st))
        limit = args.get("limit") or st.settings.sync_page_size
        page = svc.page(
            session, caller, cursor, limit=limit, history_days=st.settings.sync_history_days
        )
        body: dict[str, Any] = {"changes": render(session, caller, page.changes)}
        if principal.can("grids:read") or principal.can("cases:read"):
            body.update(svc.changed_references(page.cursor, _references(session, principal.scope)))
        body["next_cursor"] = page.cursor.encode(_cursor_key(st))
        body["has_more"] = page.has_more
        body["pending"] = page.pending
        return Response(dumps_bytes(body), status=200, mimetype="application/json")


# --- the batch --------------------------------------------------------------------------------

# Action type → (method, path template, path parameters taken from the payload).
ACTIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "case.create": ("POST", "/api/v1/cases", ()),
    "case.transition": ("POST", "/api/v1/cases/{case_id}/transitions", ("case_id",)),
    "case.rating": ("POST", "/api/v1/cases/{case_id}/rating", ("case_id",)),
    "visit.create": ("POST", "/api/v1/visits", ()),
    "patrol.start": ("POST", "/api/v1/patrols", ()),
    "patrol.points": ("POST", "/api/v1/patrols/{patrol_id}/points", ("patrol_id",)),
    "patrol.checkin": ("POST", "/api/v1/patrols/{patrol_id}/checkins", ("patrol_id",)),
    "patrol.finding": ("POST", "/api/v1/patrols/{patrol_id}/findings", ("patrol_id",)),
    "patrol.end": ("POST", "/api/v1/patrols/{patrol_id}/end", ("patrol_id",)),
    "task.accept": ("POST", "/api/v1/tasks/{task_id}/accept", ("task_id",)),
    "task.complete": ("POST", "/api/v1/tasks/{task_id}/complete", ("task_id",)),
    "presence.heartbeat": ("POST", "/api/v1/presence/heartbeat", ()),
}
# What the id in an action's answer names: a "ref:" to its key stands for that kind of object
# only (a patrol's id given as a case_id rated whichever case had that number).
_NAMES = {
    "case.create": "case",
    "case.transition": "case",
    "case.rating": "case",
    "visit.create": "visit",
    "patrol.start": "patrol",
    "patrol.end": "patrol",
    "patrol.checkin": "checkin",
    "patrol.finding": "case",
    "task.accept": "task",
    "task.complete": "task",
}
# The path an action's key was kept with → its type (a key kept online: its endpoint's).
_PATHS = [
    (re.compile("^" + re.sub(r"\{[a-z_]+\}", "[0-9]+", template) + "$"), kind)
    for kind, (_, template, _) in ACTIONS.items()
]


def _named_by(path: str) -> str | None:
    """Return what the id kept with a request to ``path`` names (``_NAMES``), or None."""
    for pattern, kind in _PATHS:
        if pattern.match(path):
            return _NAMES.get(kind)
    return None


# Actions whose endpoint needs If-Match: the payload's `if_match`, else "*" (the state
# machine still refuses what the current state does not allow).
_IF_MATCH = {"case.transition", "task.accept", "task.complete"}
# Actions whose endpoint reads a case report, with the phone's `client_id`: a UUID, in
# whatever letter case it comes.
_REPORTS = {"case.create", "patrol.finding"}
# Actions whose endpoint takes an Idempotency-Key: the action's key goes with it, so an
# action tried online first (with the key as its header) is answered as a replay. The
# key of any other action, once used as such a header, is a key used for another action.
_KEYED = {"case.create", "patrol.start", "visit.create"}
_CLIENT_ID = CaseCreateSchema().fields["client_id"]
BATCH_MAX = 500
REF_PREFIX = "ref:"
KEY_PREFIX = "batch:"  # an action's key as kept among the caller's idempotency keys
_KEY_REUSED = {"json": {"key": ["reused"]}}
_HEADER_REUSED = {"headers": {"Idempotency-Key": ["reused"]}}


class ActionSchema(StrictSchema):
    key = fields.String(
        required=True,
        validate=validate.Length(min=1, max=200),
        metadata={"description": "The action's idempotency key (unique per phone)."},
    )
    type = fields.String(
        required=True, validate=validate.OneOf(sorted(ACTIONS)), metadata={"example": "case.create"}
    )
    payload = fields.Dict(
        load_default=dict,
        metadata={
            "description": "The body the matching endpoint takes, plus its path parameters "
            "(`case_id`, `patrol_id`, `task_id`) and optionally `if_match`. An id may be "
            '`"ref:<key>"`: the id created by the action with that key, earlier in the batch '
            "or in an earlier batch."
        },
    )


class BatchSchema(StrictSchema):
    actions = fields.List(
        fields.Nested(ActionSchema),
        required=True,
        validate=validate.Length(min=1, max=BATCH_MAX),
    )


class ResultSchema(StrictSchema):
    key = fields.String(required=True)
    status = fields.Integer(required=True, metadata={"description": "The HTTP status."})
    id = fields.Integer(
        allow_none=True,
        required=True,
        metadata={
            "description": "The id of what the action created or acted on (a finding's: the "
            "case it reported); null when it failed or names nothing (points, a heartbeat)."
        },
    )
    error = fields.Dict(
        allow_none=True,
        required=True,
        metadata={"description": "The error body (`code`, `status`, `message`, `errors`)."},
    )
    replayed = fields.Boolean(required=True, metadata={"description": "Applied before."})


class BatchResultSchema(StrictSchema):
    results = fields.List(fields.Nested(ResultSchema), required=True)


@blp.route("/batch")
class SyncBatch(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(BatchSchema)
    @blp.doc(parameters=[DATE_HEADER])
    @blp.response(200, BatchResultSchema)
    def post(self, data):
        """Apply actions queued offline, in order, each in its own transaction, each once

        Each action is sent to the endpoint its `type` names (as if called directly, with
        your credentials): `case.create`, `case.transition`, `case.rating`, `visit.create`,
        `patrol.start|points|checkin|finding|end`, `task.accept|complete`,
        `presence.heartbeat`. Its `key` is an idempotency key kept with the change and its
        answer in the same transaction: sending the batch again (or any part, in any order,
        also while the first send still runs) applies nothing twice and answers what the
        first time did (`replayed`). The key of a `case.create`, `visit.create` or
        `patrol.start` is also its endpoint's Idempotency-Key: one tried online first with
        that key is a replay. An action that fails does not stop the others; each result has
        the status and the error body.
        """
        principal = current_principal()
        st = state()
        # The credentials, and the phone's clock at sending (its Date moves the times its
        # reports were written at to the server's clock: phone.clock_offset).
        forwarded = ("Authorization", "X-Api-Key", "Date")
        headers = {k: v for k, v in request.headers.items() if k in forwarded}
        in_batch = {action["key"] for action in data["actions"]}
        # Each applied key: the id its answer carries, and what that id names.
        created: dict[str, tuple[int | None, str | None]] = {}
        results = []
        for action in data["actions"]:
            result = _apply(st, principal.actor_id, action, headers, created, in_batch)
            # A key given again for another action (422) leaves what its applied action
            # created: "ref:" to it answered that the action had failed.
            if action["key"] not in created or 200 <= result["status"] < 300:
                created[action["key"]] = (result["id"], _NAMES.get(action["type"]))
            results.append(result)
        return {"results": results}


def _cursor_key(st: AppState) -> bytes:
    """The key sync cursors are signed with: derived from the blind-index key (a secret of
    the deployment, never in the database), for this use only."""
    return hmac.new(st.phone_key, b"gridapi sync cursor key", hashlib.sha256).digest()


def _apply(
    st: AppState,
    caller: str,
    action: dict[str, Any],
    headers: dict[str, str],
    created: dict[str, tuple[int | None, str | None]],
    in_batch: set[str],
) -> dict[str, Any]:
    """Apply one action in a transaction of its own; return its result.

    Whatever the action raises is its own result, answered by the application's error
    handlers as its endpoint would answer it (an unexpected error is logged, and a 500 in
    the one error body), and its transaction is rolled back. Only the database being out of
    reach (a lock waited for too long, no connection) answers for the whole batch: 503,
    send it again.
    """
    try:
        return _apply_in_transaction(st, caller, action, headers, created, in_batch)
    except (OperationalError, PoolTimeout):
        raise
    except Exception as exc:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            raise
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        return _result(action["key"], app.make_response(app.handle_user_exception(exc)))


def _apply_in_transaction(
    st: AppState,
    caller: str,
    action: dict[str, Any],
    headers: dict[str, str],
    created: dict[str, tuple[int | None, str | None]],
    in_batch: set[str],
) -> dict[str, Any]:
    """Apply one action in a transaction of its own; return its result.

    The transaction first takes the action's key (on PostgreSQL its advisory lock, waited
    for; on SQLite the write lock, BEGIN IMMEDIATE), then looks for the key's answer. The
    endpoint's code runs inside it (its commit ends a savepoint and adds the key), the
    answer is filled in after, and all of it commits at once: the same action sent again
    while this one runs waits, then finds the key with its status and id.
    """
    key, kind = action["key"], action["type"]
    method, template, params = ACTIONS[kind]
    stored_key = f"{KEY_PREFIX}{key}"
    read = _as_read(kind, action["payload"])
    # The action as the phone wrote it (references unresolved) is what its key names:
    # a replay is recognised before anything is resolved, in whatever order it comes.
    body_hash = idempotency.request_hash(
        "BATCH",
        kind,
        read,
        defaults=REPORT_DEFAULTS if kind == "case.create" else None,
        instants=REPORT_INSTANTS if kind == "case.create" else frozenset(),
    )
    # Checked before the transaction, the action's request finds the snapshot fresh and
    # needs no second connection while this one is held (Blueprint.takes_routing_snapshot).
    st.routing.snapshot()
    with (
        st.engine.connect() as connection,
        connection.begin() as transaction,
        st.sessions(bind=connection, join_transaction_mode="rollback_only") as session,
    ):
        idempotency.claim(session, caller, _waited_for(stored_key, key, kind, read), wait=True)
        try:
            found = idempotency.find(session, caller, [stored_key], body_hash)
        except Unprocessable:
            return _failed(key, 422, "This key was used for another action.", _KEY_REUSED)
        if found is not None:
            return _replayed(key, found)
        # Checked after the lookup: a key applied before this rule answers as it did.
        key_header = _idempotency_header(key)
        if key_header is None:
            return _failed(
                key,
                422,
                f"The key must be 1 to {idempotency.MAX_KEY_LENGTH} printable characters.",
                {"json": {"key": [f"1 to {idempotency.MAX_KEY_LENGTH} printable characters"]}},
            )
        if kind not in _KEYED and idempotency.resource_ids(session, caller, [f"key:{key}"]):
            # sent before as the Idempotency-Key of a report, a visit or a patrol
            return _failed(key, 422, "This key was used for another action.", _KEY_REUSED)
        try:
            payload = _resolve(session, caller, action["payload"], created, in_batch)
        except Unprocessable as exc:
            return _failed(key, exc.status, exc.message, exc.errors)
        missing = [p for p in params if p not in payload]
        if missing:
            return _failed(
                key,
                422,
                f"The payload needs {', '.join(missing)}.",
                {"json": {"payload": {p: ["Missing data for required field."] for p in missing}}},
            )
        not_ids = [p for p in params if not _is_id(payload[p])]
        if not_ids:
            return _failed(
                key,
                422,
                f"The payload's {', '.join(not_ids)} must be an id.",
                {"json": {"payload": {p: ["Not a valid integer."] for p in not_ids}}},
            )
        # Absent or null: "*". An empty string, a number or a list is no ETag: taking it
        # for "*" (as it was) changed a case whatever its version.
        if_match = payload.get("if_match")
        if_match = "*" if if_match is None else if_match
        if kind in _IF_MATCH and not (
            isinstance(if_match, str) and if_match.strip() and if_match.isprintable()
        ):
            return _failed(
                key,
                422,
                "The payload's if_match must be an ETag, or *.",
                {"json": {"payload": {"if_match": ["an ETag as read, or *"]}}},
            )
        body = {k: v for k, v in payload.items() if k not in params and k != "if_match"}
        path = template.format(**{p: payload[p] for p in params})
        extra = dict(headers)
        if kind in _KEYED:
            extra["Idempotency-Key"] = key_header
        if kind in _IF_MATCH:
            extra["If-Match"] = if_match
        kept_as = {
            "caller": caller,
            "key": stored_key,
            "body_hash": body_hash,
            "method": method,
            "path": path,
            "now": datetime.now(UTC),
            "keep_days": st.settings.idempotency_days,
        }
        response = _dispatch(
            method, path, body, extra, connection, partial(_remember_applied, **kept_as)
        )
        result = _result(key, response)
        if not 200 <= result["status"] < 300:
            transaction.rollback()  # a failed action leaves nothing, however far it got
            if (result["error"] or {}).get("errors") == _HEADER_REUSED:
                # the endpoint's own check of the key, sent as its Idempotency-Key
                return _failed(key, 422, "This key was used for another action.", _KEY_REUSED)
            return result
        answer = {
            "status_code": result["status"],
            "response": orjson.dumps({"status": result["status"], "id": result["id"]}).decode(),
            "resource_id": result["id"],
        }
        if not idempotency.fill_in(session, caller, stored_key, **answer):
            # Answered with no commit: the endpoint replayed what it did before with this key
            # as its Idempotency-Key (a report, a visit, a patrol tried online first). The
            # key is kept all the same, for references.
            _remember_applied(session, **kept_as, **answer)
        return result


def _resolve(
    session: Session,
    caller: str,
    payload: dict[str, Any],
    created: dict[str, tuple[int | None, str | None]],
    in_batch: set[str],
) -> dict[str, Any]:
    """Return the payload with each `"ref:<key>"` replaced by the id the action with that key
    created: earlier in this batch, else as kept with its key by an earlier batch. The id
    must name what the field does (a ``case_id`` a case): a patrol's id taken as a case's
    rated whichever case had that number.

    Raises Unprocessable naming each field whose reference has no id, or one of another kind.
    """
    refs = {
        name: value[len(REF_PREFIX) :]
        for name, value in payload.items()
        # ids only: a description that began with "ref:" was taken for a reference (and
        # its action failed on every resend, never leaving the phone's queue)
        if name.endswith("_id") and isinstance(value, str) and value.startswith(REF_PREFIX)
    }
    if not refs:
        return payload
    # A NUL is in no key (the batch refuses it), and PostgreSQL cannot even compare it.
    looked_up = [ref for ref in refs.values() if ref not in created and "\x00" not in ref]
    kept = idempotency.resources(session, caller, [f"{KEY_PREFIX}{ref}" for ref in looked_up])
    resolved, problems = dict(payload), {}
    for name, ref in refs.items():
        wanted = name.removesuffix("_id")
        if ref in created:
            ident, named = created[ref]
            problem = f"the action {ref!r} of this batch failed or created nothing"
        elif f"{KEY_PREFIX}{ref}" in kept:
            ident, path = kept[f"{KEY_PREFIX}{ref}"]
            named = _named_by(path)
            problem = f"the action {ref!r} created nothing"
        elif ref in in_batch:
            # Later in the batch, and not applied by an earlier send (it would be kept).
            ident = None
            problem = f"the action {ref!r} is not before this one in the batch"
        else:
            ident = None
            problem = f"no action {ref!r} was applied"
        if ident is not None and named != wanted:
            ident = None
            problem = f"the action {ref!r} made a {named or 'record'} id, not a {wanted} id"
        if ident is None:
            problems[name] = [problem]
        else:
            resolved[name] = ident
    if problems:
        raise Unprocessable(
            "; ".join(f"{name}: {messages[0]}" for name, messages in problems.items()),
            errors={"json": {"payload": problems}},
        )
    return resolved


def _waited_for(stored_key: str, key: str, kind: str, read: dict[str, Any]) -> list[str]:
    """Return the keys an action's transaction waits for before it looks for its answer:
    its own, and those its endpoint takes without waiting (the key as its Idempotency-Key,
    a report's client_id). A phone whose report timed out online and which sent it again in
    its queue while the first was still being written got 409 "in flight" for the action
    from the endpoint; it now waits for that request, then finds its answer."""
    keys = [stored_key]
    if kind in _KEYED and _idempotency_header(key) is not None:
        keys.append(f"key:{key}")
    client_id = read.get("client_id") if kind == "case.create" else None
    if isinstance(client_id, str):
        keys.append(f"client_id:{client_id}")
    return keys


def _as_read(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Return the payload with a report's ``client_id`` as its endpoint reads it (the UUID
    in its canonical, lower-case form), when it is one: upper and lower case name the same
    report. A payload whose client_id was canonical already is returned as it came, so its
    hash is the one kept by earlier batches."""
    if kind not in _REPORTS or payload.get("client_id") is None:
        return payload
    try:
        client_id = _CLIENT_ID.deserialize(payload["client_id"])
    except ValidationError:
        return payload  # the endpoint refuses it
    if client_id is None:  # the nil UUID: none, as the endpoint reads it
        return {**payload, "client_id": None}
    return {**payload, "client_id": str(client_id)}


def _idempotency_header(key: str) -> str | None:
    """Return the ``Idempotency-Key`` header that names exactly ``key`` (quoted: spaces and
    quotes around it are part of the key), or None when no header can (a key that is not 1
    to 200 printable characters)."""
    header = f'"{key}"'
    try:
        named = idempotency.parse_header(header)
    except Unprocessable:
        return None
    return header if named == key else None


def _is_id(value: Any) -> bool:
    """Whether a path parameter is an id (a number, or its digits, of the ids' range),
    nothing else for the path to carry. One beyond the range (the paths' converter refuses
    it) answered the router's "URL not found"."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()):
            return False
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def _dispatch(
    method: str, path: str, body: Any, headers: dict[str, str], connection: Connection, hook: Any
) -> Response:
    """Run one request through the application, in its own contexts, inside the transaction
    of ``connection``: the request's commit ends a savepoint, ``hook`` runs just before it."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = EnvironBuilder(
        path=path,
        method=method,
        json=body,
        headers=headers,
        environ_base={"REMOTE_ADDR": request.remote_addr or ""},
    ).get_environ()
    with app.app_context(), app.request_context(environ):
        # The request's session (extensions.db_session), in the action's transaction.
        use_session(state().sessions(bind=connection, join_transaction_mode="create_savepoint"))
        g.before_commit = hook
        return app.full_dispatch_request()


def _remember_applied(  # type: ignore[no-untyped-def]
    session, status_code: int = 0, response: str = "", resource_id: int | None = None, **kw: Any
) -> None:
    """Add the action's key to the action's own transaction (called just before the
    endpoint's commit: the key exists exactly when the change does). The answer is filled in
    after that commit, in the same transaction (status 0 is never committed)."""
    idempotency.remember(
        session,
        kw["caller"],
        [kw["key"]],
        hash_=kw["body_hash"],
        method=kw["method"],
        path=kw["path"],
        status_code=status_code,
        response=response,
        resource_id=resource_id,
        now=kw["now"],
        keep_days=kw["keep_days"],
    )


def _failed(
    key: str, status: int, message: str, errors: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "key": key,
        "status": status,
        "id": None,
        "error": error_body(status, message, errors),
        "replayed": False,
    }


def _replayed(key: str, found: idempotency.Stored) -> dict[str, Any]:
    return {
        "key": key,
        # 0: kept by a version that filled the answer in after the commit, and lost it
        "status": found.status_code or 200,
        "id": found.resource_id,
        "error": None,
        "replayed": True,
    }


def _result(key: str, response: Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.get_data()) if response.get_data() else None
    except orjson.JSONDecodeError:
        body = None
    ok = 200 <= response.status_code < 300
    ident = body.get("id") if ok and isinstance(body, dict) else None
    if ok and ident is None and isinstance(body, dict) and isinstance(body.get("case"), dict):
        # A patrol's finding answers its patrol and the case it reported: the id is the
        # case's (a "ref:" to the finding is a case_id). It was null: the phone could not
        # learn the case's id from its queue, nor refer to it.
        ident = body["case"].get("id")
    return {
        "key": key,
        "status": response.status_code,
        "id": ident if isinstance(ident, int) else None,
        "error": None if ok else body,
        # the endpoint's own key found it done before (case.create: the action's key)
        "replayed": response.headers.get("Idempotent-Replayed") == "true",
    }
