"""Tasks and campaigns over HTTP: create, read, the worker's steps, progress, the phone's list."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from flask.views import MethodView

from ..auditing import audit
from ..auth import Forbidden, Principal, current_principal
from ..extensions import commit, db_session, state
from ..jsonio import dumps_bytes
from ..models.tasks import Campaign, Task
from ..schemas.tasks import (
    CampaignArgsSchema,
    CampaignCreateSchema,
    CampaignListSchema,
    CampaignSchema,
    CancelSchema,
    MyTasksArgsSchema,
    MyTasksSchema,
    ProgressSchema,
    TaskArgsSchema,
    TaskCompleteSchema,
    TaskCreateSchema,
    TaskListSchema,
    TaskReassignSchema,
    TaskSchema,
)
from ..services import tasks as svc
from ..services.cases import region_names
from ..services.cursors import Page
from ..services.preconditions import etag
from .blueprint import IDEMPOTENCY_HEADER, Blueprint, etag_header, if_match_header
from .retries import Keyed, replays_before_validation, with_version_etag

blp = Blueprint(
    "tasks",
    __name__,
    url_prefix="/api/v1",
    description="Tasks (任务) for a worker or a grid: accept and complete them with results "
    "and evidence on the phone (`/me/tasks`), reassign and cancel them from the office.",
)
campaigns_blp = Blueprint(
    "campaigns",
    __name__,
    url_prefix="/api/v1/campaigns",
    description="Campaigns (专项行动) over a region: one task per grid (and optionally one "
    "item per house or household), progress rolled up the tree.",
)

_IF_MATCH = if_match_header(
    "The ETag from the last read, as it came (a compressed answer's ends in `:gzip`). "
    "Without it → 428; stale → 412.",
    example='"42-3"',
    required=True,
)
_ETAG = etag_header(
    '`"<id>-<version>"`: the value to send as If-Match with the next change of the task '
    "(required there: 428 without it, 412 when the task changed since)."
)


def _now() -> datetime:
    return datetime.now(UTC)


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _task_body(session, task: Task, principal: Principal) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Return the full view of one task, with its items."""
    names = svc.names_for(session, [task])
    return svc.task_view(task, principal, names, items=svc.task_items(session, task))


def _tasks_body(session, tasks: list[Task], principal: Principal, *, items: bool) -> list[Any]:  # type: ignore[no-untyped-def]
    names = svc.names_for(session, tasks)
    if items:
        return [svc.task_view(t, principal, names, items=svc.task_items(session, t)) for t in tasks]
    counts = svc.item_counts(session, [t.id for t in tasks])
    return [svc.task_view(t, principal, names, counts=counts.get(t.id)) for t in tasks]


def _campaign_body(session, campaign: Campaign, principal: Principal) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return svc.campaign_view(campaign, principal, region_names(session, [campaign.region_code]))


def _next(rows: Page) -> int | None:
    return rows[-1].id if rows.more else None


def _audit_task(action: str, task: Task, **summary: Any) -> None:
    audit(
        f"task.{action}",
        "task",
        task.id,
        summary={"status": task.status, "grid": task.grid_code, **summary},
        region_code=task.region_code,
    )


# --- tasks ------------------------------------------------------------------------------------


@blp.route("/tasks")
class Tasks(MethodView):
    @blp.requires("tasks:read")
    @blp.arguments(TaskArgsSchema, location="query")
    @blp.response(200, TaskListSchema)
    def get(self, args):
        """List tasks

        Tasks in your scope or assigned to you, by id; filter by region, grid, campaign,
        status, open, overdue or assignee (`me` for yourself). Pass `next_cursor` back as
        `cursor` for the next page.
        """
        principal = _principal()
        session = db_session()
        rows = svc.list_tasks(session, principal, args)
        return {
            "items": _tasks_body(session, rows, principal, items=False),
            "next_cursor": _next(rows),
        }

    @blp.requires("tasks:write")
    @replays_before_validation(Keyed.of_request, with_version_etag)
    @blp.arguments(TaskCreateSchema)
    @blp.doc(parameters=[IDEMPOTENCY_HEADER])
    @blp.response(201, TaskSchema, headers=_ETAG)
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="A request with the same Idempotency-Key is still running: retry after "
        "Retry-After seconds (the retry gets its answer).",
    )
    def post(self, data):
        """Create a task for a worker or a grid

        Give `assignee_id` (a worker in your scope), `grid` (any worker of the grid may
        accept it) or both; `region` for a task above the grid level. The deadline is
        `due_at`, or `due_in` working hours or days on the working calendar. An optional
        `result_schema` is the form the task is completed with. A grid, region or worker
        outside your scope → 422.

        Safe to retry with an `Idempotency-Key`: a retry gets the first answer again
        (`Idempotent-Replayed: true`) and creates nothing.
        """
        principal = _principal()
        session = db_session()
        now = _now()
        keyed = Keyed.of_request()
        answer = keyed.answered(session, principal.actor_id) if keyed is not None else None
        if answer is not None:
            return with_version_etag(answer)
        task = svc.create_task(
            session, data, principal=principal, calendar=state().calendar(session), now=now
        )
        _audit_task("create", task, assignee_id=task.assignee_id, due_at=task.due_at.isoformat())
        body = _task_body(session, task, principal)
        return _created(keyed, session, principal, TaskSchema().dump(body), task, now)


def _created(  # type: ignore[no-untyped-def]
    keyed: Keyed | None,
    session,
    principal: Principal,
    view: dict[str, Any],
    obj: Any,
    now: datetime,
) -> Response:
    """Commit a creation and answer it (201, its ETag); with an Idempotency-Key, the answer
    is stored under it in the same transaction, and sent byte for byte as stored."""
    payload = dumps_bytes(view).decode()
    if keyed is not None:
        keyed.remember(session, principal.actor_id, payload, resource_id=obj.id, now=now)
    commit()
    return Response(payload, status=201, mimetype="application/json", headers={"ETag": etag(obj)})


@blp.route("/tasks/<id:task_id>")
class TaskById(MethodView):
    @blp.requires("tasks:read")
    @blp.response(200, TaskSchema, headers=_ETAG)
    def get(self, task_id):
        """Get a task, with its items, the actions you may take now and its ETag

        Returns the task with its campaign, region, grid, assignee, due time and overdue flag, the
        result form to fill in, the results and evidence so far, every item (a house or household to
        visit, with its own status and result) and the timestamps of each step. `allowed_actions`
        lists what the caller may do now (accept, complete, reassign, cancel), and the `ETag` header
        is the value to send as `If-Match` with any of them. Needs `tasks:read`; a task neither in
        the caller's scope nor assigned to them answers 404 exactly like one that does not exist.
        """
        principal = _principal()
        session = db_session()
        task = svc.get_task(session, task_id, principal)
        return _task_body(session, task, principal), 200, {"ETag": etag(task)}  # type: ignore[arg-type]


@blp.route("/tasks/<id:task_id>/accept")
class AcceptTask(MethodView):
    @blp.requires("tasks:complete")
    @blp.doc(parameters=[_IF_MATCH])
    @blp.response(200, TaskSchema, headers=_ETAG)
    def post(self, task_id):
        """Accept a task (接收)

        Yours, or an unassigned task of your grid (it becomes yours). Someone else's task →
        403; not pending → 409 with `errors.allowed_actions`. Needs `If-Match`.
        """
        principal = _principal()
        session = db_session()
        task = svc.accept_task(
            session,
            task_id,
            principal=principal,
            now=_now(),
            if_match=request.headers.get("If-Match"),
        )
        _audit_task("accept", task, assignee_id=task.assignee_id)
        body = _task_body(session, task, principal)
        commit()
        return body, 200, {"ETag": etag(task)}  # type: ignore[arg-type]


@blp.route("/tasks/<id:task_id>/complete")
class CompleteTask(MethodView):
    @blp.requires("tasks:complete")
    @blp.arguments(TaskCompleteSchema)
    @blp.doc(parameters=[_IF_MATCH])
    @blp.response(200, TaskSchema, headers=_ETAG)
    def post(self, data, task_id):
        """Complete a task with results and evidence (完成)

        `results` are checked against the task's result form (its campaign's): a missing,
        unknown or wrong attribute → 422 naming it. A task with items takes the results per
        item in `items` instead. Pending tasks are accepted on the way. Someone else's task
        → 403; finished → 409 with `errors.allowed_actions`. Needs `If-Match`.
        """
        principal = _principal()
        session = db_session()
        task = svc.complete_task(
            session,
            task_id,
            data,
            principal=principal,
            now=_now(),
            if_match=request.headers.get("If-Match"),
        )
        _audit_task(
            "complete",
            task,
            results=sorted(task.results or {}),
            items=[i["id"] for i in data.get("items") or []],
            evidence=len(task.evidence or []),
        )
        body = _task_body(session, task, principal)
        commit()
        return body, 200, {"ETag": etag(task)}  # type: ignore[arg-type]


@blp.route("/tasks/<id:task_id>/reassign")
class ReassignTask(MethodView):
    @blp.requires("tasks:write")
    @blp.arguments(TaskReassignSchema)
    @blp.doc(parameters=[_IF_MATCH])
    @blp.response(200, TaskSchema, headers=_ETAG)
    def post(self, data, task_id):
        """Reassign a task (改派)

        To another worker in your scope (`assignee_id`), or back to its grid (null); it is
        pending again. Optionally a new deadline (`due_at` or `due_in`); the same assignee
        with a new deadline changes the deadline alone (accepted stays accepted; the same
        assignee without one → 422). For an office whose area holds the task (403 otherwise);
        finished → 409. Needs `If-Match`.
        """
        principal = _principal()
        session = db_session()
        task, previous = svc.reassign_task(
            session,
            task_id,
            data,
            principal=principal,
            calendar=state().calendar(session),
            now=_now(),
            if_match=request.headers.get("If-Match"),
        )
        _audit_task(
            "reassign",
            task,
            from_assignee=previous,
            to_assignee=task.assignee_id,
            due_at=task.due_at.isoformat(),
            comment=data.get("comment", ""),
        )
        body = _task_body(session, task, principal)
        commit()
        return body, 200, {"ETag": etag(task)}  # type: ignore[arg-type]


@blp.route("/tasks/<id:task_id>/cancel")
class CancelTask(MethodView):
    @blp.requires("tasks:write")
    @blp.arguments(CancelSchema)
    @blp.doc(parameters=[_IF_MATCH])
    @blp.response(200, TaskSchema, headers=_ETAG)
    def post(self, data, task_id):
        """Cancel a task, saying why (取消)

        For an office whose area holds the task (403 otherwise); finished → 409. Needs
        `If-Match`.
        """
        principal = _principal()
        session = db_session()
        task = svc.cancel_task(
            session,
            task_id,
            data["reason"],
            principal=principal,
            now=_now(),
            if_match=request.headers.get("If-Match"),
        )
        _audit_task("cancel", task, reason=data["reason"])
        body = _task_body(session, task, principal)
        commit()
        return body, 200, {"ETag": etag(task)}  # type: ignore[arg-type]


@blp.route("/me/tasks")
class MyTasks(MethodView):
    @blp.requires("tasks:read")
    @blp.arguments(MyTasksArgsSchema, location="query")
    @blp.response(200, MyTasksSchema)
    def get(self, args):
        """List my tasks (for the phone)

        Assigned to you, or unassigned in the grids you are on the roster of or given to
        your own region without a grid (a community's task to its officer): open ones
        first, by deadline, with their items and result form; then those completed or
        cancelled in the last `days` days. Pass `next_cursor` back as `cursor` (with the
        same `days`) for the next page; it is null on the last. For people's accounts: an
        app (API key with `tasks:read`) lists the tasks of its area at `GET /api/v1/tasks`
        (403).
        """
        principal = _principal()
        if principal.kind != "user":
            raise Forbidden(
                "An app has no tasks of its own: list those of its area at GET /api/v1/tasks."
            )
        session = db_session()
        rows, next_cursor = svc.my_tasks(
            session,
            principal,
            now=_now(),
            days=args["days"],
            limit=args["limit"],
            cursor=args.get("cursor"),
        )
        return {
            "items": _tasks_body(session, rows, principal, items=True),
            "next_cursor": next_cursor,
        }


# --- campaigns --------------------------------------------------------------------------------


@campaigns_blp.route("")
class Campaigns(MethodView):
    @campaigns_blp.requires("tasks:read")
    @campaigns_blp.arguments(CampaignArgsSchema, location="query")
    @campaigns_blp.response(200, CampaignListSchema)
    def get(self, args):
        """List campaigns

        Campaigns over a region in your scope, or with a task you may read; by id.
        """
        principal = _principal()
        session = db_session()
        rows = svc.list_campaigns(session, principal, args)
        names = region_names(session, [c.region_code for c in rows])
        return {
            "items": [svc.campaign_view(c, principal, names) for c in rows],
            "next_cursor": _next(rows),
        }

    @campaigns_blp.requires("tasks:write")
    @replays_before_validation(Keyed.of_request, with_version_etag)
    @campaigns_blp.arguments(CampaignCreateSchema)
    @campaigns_blp.doc(parameters=[IDEMPOTENCY_HEADER])
    @campaigns_blp.response(201, CampaignSchema, headers=_ETAG)
    @campaigns_blp.alt_response(
        409,
        response="CONFLICT",
        description="A request with the same Idempotency-Key is still running: retry after "
        "Retry-After seconds (the retry gets its answer).",
    )
    def post(self, data):
        """Create a campaign over a region

        One transaction makes one task per grid in service in the region's subtree, for the
        grid's worker on today's roster (else unassigned, for the grid), all due at the
        campaign's deadline; with `item_scope` one item per house or household of the grid
        (only of `item_uses`, e.g. `["rented"]`). A region outside your scope, or with no
        grid in service → 422.

        Safe to retry with an `Idempotency-Key`: a retry gets the first answer again
        (`Idempotent-Replayed: true`) and creates nothing (a campaign sent twice made every
        task, notice and webhook event twice).
        """
        principal = _principal()
        session = db_session()
        now = _now()
        keyed = Keyed.of_request()
        answer = keyed.answered(session, principal.actor_id) if keyed is not None else None
        if answer is not None:
            return with_version_etag(answer)
        made = svc.create_campaign(
            session, data, principal=principal, calendar=state().calendar(session), now=now
        )
        campaign = made.campaign
        audit(
            "campaign.create",
            "campaign",
            campaign.id,
            summary={
                "region": campaign.region_code,
                "tasks": made.tasks,
                "assigned": made.assigned,
                "items": made.items,
                "due_at": campaign.due_at.isoformat(),
            },
            region_code=campaign.region_code,
        )
        body = {
            **_campaign_body(session, campaign, principal),
            "fan_out": {"tasks": made.tasks, "assigned": made.assigned, "items": made.items},
        }
        return _created(keyed, session, principal, CampaignSchema().dump(body), campaign, now)


@campaigns_blp.route("/<id:campaign_id>")
class CampaignById(MethodView):
    @campaigns_blp.requires("tasks:read")
    @campaigns_blp.response(200, CampaignSchema, headers=_ETAG)
    def get(self, campaign_id):
        """Get a campaign, with its result form and ETag

        Returns the campaign (e.g. a hazard sweep 大排查) with its title, description, category,
        region, due time, the result form every task of it fills in, how items are generated
        (`item_scope`, `item_uses`), status and timestamps. `allowed_actions` says whether the
        caller may cancel it now, and the `ETag` header is the value to send as `If-Match` when
        cancelling. Needs `tasks:read`; a campaign is visible when its region is in the caller's
        scope or when one of its tasks is visible to them, otherwise it answers 404. Use `/progress`
        for the counts.
        """
        principal = _principal()
        session = db_session()
        campaign = svc.get_campaign(session, campaign_id, principal)
        return _campaign_body(session, campaign, principal), 200, {"ETag": etag(campaign)}  # type: ignore[arg-type]


@campaigns_blp.route("/<id:campaign_id>/progress")
class CampaignProgress(MethodView):
    @campaigns_blp.requires("tasks:read")
    @campaigns_blp.response(200, ProgressSchema)
    def get(self, campaign_id):
        """Get a campaign's progress rolled up the tree

        From the campaign's region down through townships and communities to the grids:
        tasks by status, overdue, completed late, items done and the completion rate, over
        the tasks you may read. Each node's counts are the sums of its children's.
        """
        principal = _principal()
        session = db_session()
        campaign = svc.get_campaign(session, campaign_id, principal)
        return svc.campaign_progress(session, campaign, principal)


@campaigns_blp.route("/<id:campaign_id>/cancel")
class CancelCampaign(MethodView):
    @campaigns_blp.requires("tasks:write")
    @campaigns_blp.arguments(CancelSchema)
    @campaigns_blp.doc(parameters=[_IF_MATCH])
    @campaigns_blp.response(200, CampaignSchema, headers=_ETAG)
    def post(self, data, campaign_id):
        """Cancel a campaign and its open tasks, saying why

        For an office whose area holds the campaign's whole region (403 otherwise); not
        active → 409. Needs `If-Match`.
        """
        principal = _principal()
        session = db_session()
        campaign, cancelled = svc.cancel_campaign(
            session,
            campaign_id,
            data["reason"],
            principal=principal,
            now=_now(),
            if_match=request.headers.get("If-Match"),
        )
        audit(
            "campaign.cancel",
            "campaign",
            campaign.id,
            summary={"reason": data["reason"], "tasks_cancelled": cancelled},
            region_code=campaign.region_code,
        )
        body = _campaign_body(session, campaign, principal)
        commit()
        return body, 200, {"ETag": etag(campaign)}  # type: ignore[arg-type]
