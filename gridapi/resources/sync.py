"""Offline sync over HTTP: changes since a cursor, and a batch of actions queued offline."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
from flask import Response, current_app, request
from flask.views import MethodView
from marshmallow import fields, validate
from sqlalchemy import func, select
from werkzeug.test import EnvironBuilder

from ..auth import current_principal
from ..db import sqlite_write_intent
from ..errors import Unprocessable
from ..extensions import db_session, state
from ..jsonio import dumps_bytes
from ..models import CalendarDay, Category
from ..models.tasks import TaskItem
from ..schemas.calendar import CalendarDaySchema
from ..schemas.categories import CategorySchema
from ..schemas.common import StrictSchema
from ..services import calendar as calendar_svc
from ..services import cases as cases_svc
from ..services import categories as categories_svc
from ..services import grids as grids_svc
from ..services import idempotency
from ..services import sync as svc
from ..services import tasks as tasks_svc
from .blueprint import Blueprint
from .cases import _category_names, _names_for, case_view
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
    """Digest and builder of each reference set (digests are one aggregate query each)."""

    def categories():  # type: ignore[no-untyped-def]
        stamp = session.execute(select(func.count(), func.max(Category.updated_at))).one()

        def full() -> list[dict[str, Any]]:
            rows = categories_svc.list_categories(session, include_inactive=True)
            return CategorySchema(many=True).dump(rows)

        return svc.digest([stamp[0], str(stamp[1])]), full

    def calendar():  # type: ignore[no-untyped-def]
        stamp = session.execute(select(func.count(), func.max(CalendarDay.updated_at))).one()

        def full() -> list[dict[str, Any]]:
            return CalendarDaySchema(many=True).dump(calendar_svc.list_days(session))

        return svc.digest([stamp[0], str(stamp[1])]), full

    def grids():  # type: ignore[no-untyped-def]
        query = grids_svc.grids_query(scope=scope).subquery()
        stamp = session.execute(
            select(func.count(), func.max(query.c.version_id), func.max(query.c.code))
        ).one()

        def full() -> dict[str, Any]:
            return orjson.loads(b"".join(grids_svc.iter_geojson(session, scope=scope)))

        return svc.digest(list(stamp)), full

    return {"categories": categories, "calendar": calendar, "grids": grids}


def render(session, caller, changes: list[svc.Change]) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    cases = [c.obj for c in changes if c.entity == "case" and c.obj is not None]
    names = _names_for(session, cases) if cases else {}
    category_names = _category_names(session, cases) if cases else {}
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
                c, caller, names, category_name=category_names.get(c.category_code)
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
        while you page is never skipped; a cursor older than GRIDAPI_SYNC_RETENTION_DAYS
        answers 410 (sync again from empty).
        """
        principal = current_principal()
        session = db_session()
        st = state()
        caller = cases_svc.caller_of(session, principal)
        cursor = None
        if args.get("cursor"):
            max_age = st.settings.sync_retention_days * 86400
            cursor = svc.Cursor.decode(args["cursor"], principal.actor_id, max_age)
        limit = args.get("limit") or st.settings.sync_page_size
        page = svc.page(session, caller, cursor, limit=limit)
        body: dict[str, Any] = {"changes": render(session, caller, page.changes)}
        if principal.can("grids:read") or principal.can("cases:read"):
            body.update(svc.changed_references(page.cursor, _references(session, principal.scope)))
        body["next_cursor"] = page.cursor.encode()
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
# Actions whose endpoint needs If-Match: the payload's `if_match`, else "*" (the state
# machine still refuses what the current state does not allow).
_IF_MATCH = {"case.transition", "task.accept", "task.complete"}
BATCH_MAX = 500
REF_PREFIX = "ref:"


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
            '`"ref:<key>"`: the id created by an earlier action of the batch.'
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
    id = fields.Integer(allow_none=True, required=True)
    error = fields.Dict(allow_none=True, required=True)
    replayed = fields.Boolean(required=True, metadata={"description": "Applied before."})


class BatchResultSchema(StrictSchema):
    results = fields.List(fields.Nested(ResultSchema), required=True)


def _resolve(payload: dict[str, Any], created: dict[str, int | None]) -> dict[str, Any]:
    out = {}
    for name, value in payload.items():
        if isinstance(value, str) and value.startswith(REF_PREFIX):
            ref = value[len(REF_PREFIX) :]
            if created.get(ref) is None:
                raise ValueError(f"{name}: no earlier action {ref!r} created an object")
            value = created[ref]
        out[name] = value
    return out


def _dispatch(method: str, path: str, body: Any, headers: dict[str, str], hook: Any) -> Response:
    """Run one request through the application, in its own contexts and transaction."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    environ = EnvironBuilder(
        path=path,
        method=method,
        json=body,
        headers=headers,
        environ_base={"REMOTE_ADDR": request.remote_addr or ""},
    ).get_environ()
    with app.app_context(), app.request_context(environ):
        from flask import g

        g.before_commit = hook
        return app.full_dispatch_request()


@blp.route("/batch")
class SyncBatch(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(BatchSchema)
    @blp.response(200, BatchResultSchema)
    def post(self, data):
        """Apply actions queued offline, in order, each in its own transaction, each once

        Each action is sent to the endpoint its `type` names (as if called directly, with
        your credentials): `case.create`, `case.transition`, `case.rating`, `visit.create`,
        `patrol.start|points|checkin|finding|end`, `task.accept|complete`,
        `presence.heartbeat`. Its `key` is an idempotency key kept with the change in the
        same transaction: sending the batch again (or any part, in any order) applies
        nothing twice and answers what the first time did (`replayed`). An action that
        fails does not stop the others; each result has the status and the error body.
        """
        principal = current_principal()
        st = state()
        caller = principal.actor_id
        headers = {k: v for k, v in request.headers.items() if k in ("Authorization", "X-Api-Key")}
        created: dict[str, int | None] = {}
        results = []
        for action in data["actions"]:
            key, kind = action["key"], action["type"]
            method, template, params = ACTIONS[kind]
            stored_key = f"batch:{key}"
            # The action as the phone wrote it (references unresolved) is what its key names:
            # a replay is recognised before anything is resolved, in whatever order it comes.
            body_hash = idempotency.request_hash("BATCH", kind, action["payload"])
            replay = _stored(st, caller, stored_key, body_hash)
            if replay is not None:
                results.append({**replay, "key": key})
                created[key] = replay["id"]
                continue
            try:
                payload = _resolve(action["payload"], created)
            except ValueError as exc:
                results.append(_failed(key, 422, str(exc)))
                created[key] = None
                continue
            body = {k: v for k, v in payload.items() if k not in params and k != "if_match"}
            missing = [p for p in params if p not in payload]
            if missing:
                results.append(_failed(key, 422, f"payload needs {', '.join(missing)}"))
                created[key] = None
                continue
            path = template.format(**{p: payload[p] for p in params})
            extra = dict(headers)
            if kind == "case.create":
                extra["Idempotency-Key"] = key
            if kind in _IF_MATCH:
                extra["If-Match"] = str(payload.get("if_match") or "*")
            remember = partial(
                _remember_applied,
                caller=caller,
                key=stored_key,
                body_hash=body_hash,
                method=method,
                path=path,
                now=datetime.now(UTC),
                keep_days=st.settings.idempotency_days,
            )
            response = _dispatch(method, path, body, extra, remember)
            result = _result(key, response)
            if 200 <= response.status_code < 300:
                _record_answer(st, caller, stored_key, result)
            results.append(result)
            created[key] = result["id"]
        return {"results": results}


def _remember_applied(session, **kw: Any) -> None:  # type: ignore[no-untyped-def]
    """Add the action's key to the action's own transaction (called just before it commits)."""
    idempotency.remember(
        session,
        kw["caller"],
        [kw["key"]],
        hash_=kw["body_hash"],
        method=kw["method"],
        path=kw["path"],
        status_code=0,  # applied; the answer is filled in just after
        response="",
        resource_id=None,
        now=kw["now"],
        keep_days=kw["keep_days"],
    )


def _failed(key: str, status: int, message: str) -> dict[str, Any]:
    return {
        "key": key,
        "status": status,
        "id": None,
        "error": {"code": status, "message": message},
        "replayed": False,
    }


def _result(key: str, response: Response) -> dict[str, Any]:
    try:
        body = orjson.loads(response.get_data()) if response.get_data() else None
    except orjson.JSONDecodeError:
        body = None
    ok = 200 <= response.status_code < 300
    ident = body.get("id") if ok and isinstance(body, dict) else None
    return {
        "key": key,
        "status": response.status_code,
        "id": ident if isinstance(ident, int) else None,
        "error": None if ok else body,
        "replayed": False,
    }


def _stored(st, caller: str, key: str, body_hash: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    token = sqlite_write_intent.set(False)
    try:
        with st.sessions() as session:
            try:
                found = idempotency.find(session, caller, [key], body_hash)
            except Unprocessable:  # the key was used for another action
                return _failed(key, 422, "This key was used for another action.")
    finally:
        sqlite_write_intent.reset(token)
    if found is None:
        return None
    answer = orjson.loads(found.response) if found.response else {}
    return {
        "status": found.status_code or answer.get("status", 200),
        "id": answer.get("id", found.resource_id),
        "error": None,
        "replayed": True,
    }


def _record_answer(st, caller: str, key: str, result: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    """Fill in the answer of an applied action (best effort: the key row itself committed
    with the change, so a crash here costs only the id in a replayed answer)."""
    from sqlalchemy import update

    from ..models import IdempotencyKey

    token = sqlite_write_intent.set(True)
    try:
        with st.sessions.begin() as session:
            session.execute(
                update(IdempotencyKey)
                .where(IdempotencyKey.caller == caller, IdempotencyKey.key == key)
                .values(
                    status_code=result["status"],
                    response=orjson.dumps(
                        {"status": result["status"], "id": result["id"]}
                    ).decode(),
                    resource_id=result["id"],
                )
            )
    finally:
        sqlite_write_intent.reset(token)
