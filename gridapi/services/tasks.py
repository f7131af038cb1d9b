"""Tasks and campaigns (任务/专项行动): creation, fan-out, the worker's steps, progress, overdue.

A task is for a worker (``assignee_id``) or for a grid (unassigned: any worker of the grid
may accept it, which assigns it to them). Its states:

    pending ──accept──▶ accepted ──complete──▶ completed
    pending ──complete──▶ completed        (done at once, accepted on the way)
    pending/accepted ──reassign──▶ pending (another worker, or back to the grid)
    pending/accepted ──cancel──▶ cancelled

accept and complete (``tasks:complete``) are the assignee's, or for an unassigned task of
anyone whose scope covers its grid; reassign and cancel (``tasks:write``) are an office's
whose scope covers the task. A campaign over a region makes one task per grid in service in
the region's subtree, in one transaction; it closes itself when no task is left open.

Every read carries the caller's scope: a task outside it (and not assigned to the caller)
answers exactly like a missing one. Services take a Session and never commit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, exists, false, func, insert, or_, select, true, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from .. import clock
from ..codes import InvalidCode, region_level, subtree_prefix
from ..errors import Conflict, NotFound, Unprocessable
from ..models import (
    ApiClient,
    Category,
    Grid,
    GridAssignment,
    House,
    Household,
    Notification,
    Region,
    Role,
    User,
)
from ..models.tasks import OPEN_TASK_STATUSES, Campaign, Task, TaskItem
from ..scope import Scope, starts_with
from ..workcalendar import WorkingCalendar
from .audit import Actor, record
from .calendar import changed_days, working_calendar
from .cases import add_limit, region_names
from .categories import attribute_schema_errors, check_attributes
from .cursors import (
    Place,
    another_list,
    decode_cursor,
    encode_cursor,
    invalid_cursor,
    one_page,
    page_by_id,
)
from .identity import assignment_holds_on, current_grids, users_query
from .preconditions import check_if_match, flush_versioned
from .regions import valid_on
from .register import place_of_grid, place_of_region

if TYPE_CHECKING:
    from ..auth import Principal

STATUS_NAMES = {
    "pending": "待接收",
    "accepted": "已接收",
    "completed": "已完成",
    "cancelled": "已取消",
}
# action → (states it may start from, permission, who): "doer" = the assignee, or for an
# unassigned task anyone whose scope covers it; "office" = an office whose scope covers it.
ACTIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "accept": (("pending",), "tasks:complete", "doer"),
    "complete": (("pending", "accepted"), "tasks:complete", "doer"),
    "reassign": (OPEN_TASK_STATUSES, "tasks:write", "office"),
    "cancel": (OPEN_TASK_STATUSES, "tasks:write", "office"),
}
CAMPAIGN_ACTIONS = {"cancel": (("active",), "tasks:write")}
# Levels of the progress tree below a campaign's region, by the length of their prefix.
_LEVELS = (("province", 2), ("city", 4), ("county", 6), ("township", 9), ("village", 12))
_COUNTS = (
    "total",
    "pending",
    "accepted",
    "completed",
    "cancelled",
    "overdue",
    "completed_late",
    "items_total",
    "items_done",
)


def _not_found(kind: str) -> NotFound:
    # One message for missing and out-of-scope objects: the two answer byte for byte alike.
    return NotFound(f"The {kind} does not exist or is outside your scope.")


def _invalid(field: str, reason: str, message: str | None = None) -> Unprocessable:
    return Unprocessable(message or f"Invalid {field}.", errors={"json": {field: [reason]}})


# --- scope ------------------------------------------------------------------------------------


def task_visible(principal: Principal) -> ColumnElement[bool]:
    """Return the condition 'the caller may read this task': its grid or region lies in the
    caller's scope, or it is assigned to the caller."""
    scope = principal.scope
    if scope.unrestricted:
        return true()
    parts = [scope.grid_condition(Task.grid_code, Task.region_code)]
    if principal.kind == "user":
        parts.append(Task.assignee_id == principal.id)
    return or_(*parts)


def campaign_visible(principal: Principal) -> ColumnElement[bool]:
    """Return the condition 'the caller may read this campaign': its region lies in the
    caller's scope, or one of its tasks is visible to the caller (a worker sees the campaigns
    it has tasks in, a township office a county campaign through its townships' tasks)."""
    scope = principal.scope
    if scope.unrestricted:
        return true()
    has_task = exists(
        select(Task.id).where(Task.campaign_id == Campaign.id, task_visible(principal))
    )
    return or_(scope.region_condition(Campaign.region_code), has_task)


def covers(scope: Scope, task: Task) -> bool:
    """Return whether the task's place (its grid, else its region) lies in ``scope``."""
    if task.grid_code:
        return scope.covers_grid(task.grid_code)
    return scope.covers_region(task.region_code)


def may_act(principal: Principal, task: Task, action: str) -> bool:
    """Return whether the caller may take ``action`` on the task (its state aside)."""
    _, permission, who = ACTIONS[action]
    if not principal.can(permission):
        return False
    if who == "office":
        return covers(principal.scope, task)
    if principal.kind != "user":
        return False
    if task.assignee_id is not None:
        return task.assignee_id == principal.id
    return covers(principal.scope, task)


def allowed_actions(principal: Principal, task: Task) -> list[str]:
    """Return the actions the caller may take on the task in its current state."""
    return [
        name
        for name, (states, _, _) in ACTIONS.items()
        if task.status in states and may_act(principal, task, name)
    ]


def campaign_office(principal: Principal, campaign: Campaign) -> bool:
    """Return whether the caller is an office over the campaign's whole region."""
    return principal.can("tasks:write") and principal.scope.covers_region(campaign.region_code)


def campaign_allowed_actions(principal: Principal, campaign: Campaign) -> list[str]:
    return [
        name
        for name, (states, _) in CAMPAIGN_ACTIONS.items()
        if campaign.status in states and campaign_office(principal, campaign)
    ]


# --- deadlines and forms ----------------------------------------------------------------------


def due_date(
    data: dict[str, Any], calendar: WorkingCalendar, now: datetime, *, required: bool = True
) -> datetime | None:
    """Return the deadline ``data`` asks for, in UTC (as the database gives it back, so an
    answer and every read say the same): ``due_at``, or ``due_in`` working hours or days from
    ``now`` on the working calendar. Raises Unprocessable for a past deadline or, when
    ``required``, for none."""
    if data.get("due_at") is not None:
        if data["due_at"] <= now:
            raise _invalid("due_at", "lies in the past")
        return data["due_at"].astimezone(UTC)
    if data.get("due_in") is not None:
        due_in = data["due_in"]
        return add_limit(calendar, now, due_in["amount"], due_in["unit"])
    if required:
        raise _invalid("due_at", "give due_at or due_in", "When is it due?")
    return None


def due_in_record(data: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Return the columns that keep a deadline given as working time (``due_in``): its
    amount, unit and the moment it was counted from (``now``), so that a calendar edit can
    count it again (``move_task_deadlines``); all None for a moment (``due_at``)."""
    due_in = data.get("due_in") if data.get("due_at") is None else None
    if due_in is None:
        return {"due_in_amount": None, "due_in_unit": None, "due_in_from": None}
    return {
        "due_in_amount": due_in["amount"],
        "due_in_unit": due_in["unit"],
        "due_in_from": now.astimezone(UTC),
    }


def check_result_schema(schema: Any, field: str = "result_schema") -> list[dict[str, Any]]:
    """Return a result form (a category-style attribute schema) or raise Unprocessable
    naming each attribute's problems by index and key, as a category's attributes are (the
    request's schema checks each definition; this adds the rules across them)."""
    schema = [] if schema is None else schema
    problems = attribute_schema_errors(schema)
    if problems:
        raise Unprocessable("Invalid result form.", errors={"json": {field: problems}})
    return schema


def check_results(schema: list[dict[str, Any]] | None, values: Any) -> dict[str, Any]:
    """Return results cleaned against the form, with the checks of a category's attributes.

    Raises Unprocessable whose ``errors`` map each attribute code (missing, unknown or of the
    wrong type) to its problems, under ``json.results``; the caller may re-nest them.
    """
    form = Category(code="", attributes=schema or [])
    try:
        return check_attributes(form, values)
    except Unprocessable as exc:
        problems = (exc.errors or {}).get("json", {}).get("attributes")
        if isinstance(problems, dict):
            problems = {
                code: [
                    "not a field of the result form" if p.startswith("unknown attribute") else p
                    for p in messages
                ]
                for code, messages in problems.items()
            }
        raise Unprocessable("Invalid results.", errors={"json": {"results": problems}}) from None


def _category(session: Session, code: str | None) -> str | None:
    if code is None:
        return None
    category = session.get(Category, code)
    # A retired one was taken: its tasks (a campaign's, each) sent workers to report cases
    # of a category every report of it is refused (as unknown, as here now).
    if category is None or not category.is_active:
        raise _invalid("category", f"no active category {code}", "Unknown category.")
    return code


# --- who may take a task ----------------------------------------------------------------------


def _can_take_tasks(role: Role | None) -> bool:
    return role is not None and "tasks:complete" in (role.permissions or [])


def assignee_in_scope(session: Session, user_id: int, scope: Scope, field: str) -> User:
    """Return an active user in ``scope`` whose role completes tasks; 422 naming ``field``
    otherwise (the same answer for a user out of scope and one that does not exist)."""
    row = session.execute(
        users_query(scope)
        .add_columns(Role)
        .join(Role, Role.name == User.role_name)
        .where(User.id == user_id, User.is_active.is_(True))
    ).first()
    if row is None or not _can_take_tasks(row[1]):
        raise _invalid(field, "no active worker in your scope who takes tasks", "Unknown worker.")
    return row[0]


def _rosters(
    session: Session, day: Any, where: ColumnElement[bool]
) -> list[tuple[str, bool, int, int]]:
    """Return (grid, primary, user id, role rank) of every assignment of the grids ``where``
    selects that holds on ``day``, of an active account in a role that completes tasks: the
    workers who may take a task left to the grid."""
    rows = session.execute(
        select(
            GridAssignment.grid_code,
            GridAssignment.is_primary,
            User.id,
            Role.rank,
            Role.permissions,
        )
        .join(User, User.id == GridAssignment.user_id)
        .join(Role, Role.name == User.role_name)
        .where(where, assignment_holds_on(day), User.is_active.is_(True))
    ).all()
    return [
        (grid, primary, user_id, rank)
        for grid, primary, user_id, rank, permissions in rows
        if "tasks:complete" in (permissions or [])
    ]


def grid_workers(session: Session, region: str, grids: set[str], day: Any) -> dict[str, int]:
    """Return, for each grid of ``grids`` (all below ``region``), the worker a campaign task
    goes to: on the grid's roster on ``day``, active, in a role that completes tasks; the
    one whose primary grid it is first, then the lowest role (a worker before a chief), then
    the oldest account. Grids with nobody are left out."""
    in_region = starts_with(GridAssignment.grid_code, subtree_prefix(region))
    best: dict[str, tuple[tuple[int, int, int], int]] = {}
    for grid, primary, user_id, rank in _rosters(session, day, in_region):
        if grid not in grids:
            continue
        key = (0 if primary else 1, rank, user_id)
        if grid not in best or key < best[grid][0]:
            best[grid] = (key, user_id)
    return {grid: user_id for grid, (_, user_id) in best.items()}


def grid_rosters(session: Session, grids: Iterable[str], day: Any) -> dict[str, list[int]]:
    """Return, for each grid of ``grids``, the workers on its roster on ``day`` (active, in a
    role that completes tasks: those who may take a task left to the grid), by id. Grids
    with nobody are left out."""
    grids = sorted(set(grids))
    rosters: dict[str, set[int]] = defaultdict(set)
    for start in range(0, len(grids), 1000):
        chunk = GridAssignment.grid_code.in_(grids[start : start + 1000])
        for grid, _, user_id, _ in _rosters(session, day, chunk):
            rosters[grid].add(user_id)
    return {grid: sorted(ids) for grid, ids in rosters.items()}


# --- tasks ------------------------------------------------------------------------------------


def assigned_notice(
    task_id: int,
    version: int,
    county_code: str,
    title: str,
    user_id: int,
    *,
    overdue: bool = False,
) -> dict[str, Any]:
    """Return the notification row telling ``user_id`` a task is theirs (a task given or
    handed to them, a campaign's task on their grid), as a case dispatched to a worker
    queues one: in the transaction of the change, for the delivery channels. A task handed
    over already ``overdue`` says so: the overdue job told its earlier worker, and tells
    nobody again until a new deadline passes."""
    late = "（已超过期限）" if overdue else ""
    return {
        "county_code": county_code,
        "task_id": task_id,
        "kind": f"task_assigned:{task_id}:{version}:{user_id}"[:64],
        "user_id": user_id,
        "message": f"任务「{title[:100]}」派给您{late}",
    }


def county_of(session: Session, region: str) -> str:
    """Return the county code (six digits) of work in ``region``: its own county; for a city
    or a province, the county under it of the lowest code, as a case taken in there without
    a grid near it (a city without counties, 东莞, keeps its own).

    The county code is what a task's export and the tables' distribution read: "320500", a
    city's, named a county that is none.
    """
    try:
        level = region_level(region)
    except InvalidCode:
        return region[:6]
    if level not in ("city", "province"):
        return region[:6]
    county = session.scalar(
        select(func.min(Region.code)).where(
            Region.level == "county",
            starts_with(Region.code, subtree_prefix(region)),
            valid_on(clock.today()),
        )
    )
    return (county or region)[:6]


def create_task(
    session: Session,
    data: dict[str, Any],
    *,
    principal: Principal,
    calendar: WorkingCalendar,
    now: datetime,
) -> Task:
    """Create a task for a worker (``assignee_id``) and/or a grid, or a region.

    Where it is: the grid if given, else the region, else the worker's grid (their primary
    one in the caller's scope) or community. Raises Unprocessable for a place, a worker or
    a form the caller may not use.
    """
    scope = principal.scope
    assignee = None
    if data.get("assignee_id") is not None:
        assignee = assignee_in_scope(session, data["assignee_id"], scope, "assignee_id")
    if data.get("grid"):
        place = place_of_grid(session, data["grid"], scope)
        region, grid = place.region_code, place.grid_code
    elif data.get("region"):
        place = place_of_region(session, data["region"], scope, above_county=True)
        region, grid = place.region_code, None
    elif assignee is not None:
        region, grid = _place_of_worker(session, assignee, scope, now, calendar)
    else:
        raise _invalid(
            "assignee_id", "give assignee_id, grid or region", "Say for whom: a worker or a grid."
        )
    task = Task(
        county_code=county_of(session, region),
        region_code=region,
        grid_code=grid,
        title=data["title"],
        description=data.get("description", ""),
        category_code=_category(session, data.get("category")),
        assignee_id=assignee.id if assignee else None,
        status="pending",
        due_at=due_date(data, calendar, now),
        **due_in_record(data, now),
        result_schema=check_result_schema(data.get("result_schema")),
        results={},
        evidence=[],
        comment="",
        created_by=principal.actor_id,
        created_at=now,
        updated_at=now,
    )
    session.add(task)
    session.flush()
    if task.assignee_id is not None:
        notice = assigned_notice(task.id, 1, task.county_code, task.title, task.assignee_id)
        session.add(Notification(**notice))
    return task


def _place_of_worker(
    session: Session, user: User, scope: Scope, now: datetime, calendar: WorkingCalendar
) -> tuple[str, str | None]:
    day = now.astimezone(calendar.tz).date()
    rows = session.execute(
        select(GridAssignment.grid_code)
        .where(GridAssignment.user_id == user.id, assignment_holds_on(day))
        .order_by(GridAssignment.is_primary.desc(), GridAssignment.grid_code)
    ).all()
    for (code,) in rows:
        if scope.covers_grid(code):
            return code[:12], code
    if user.region_code and scope.covers_region(user.region_code):
        return user.region_code, None
    raise _invalid("grid", "the worker has no grid or community in your scope: give one")


def get_task(
    session: Session, task_id: int, principal: Principal, *, for_update: bool = False
) -> Task:
    """Return a task the caller may read. Raises NotFound otherwise."""
    stmt = select(Task).where(Task.id == task_id, task_visible(principal))
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    task = session.scalars(stmt).first()
    if task is None:
        raise _not_found("task")
    return task


def _take(
    session: Session, task_id: int, action: str, principal: Principal, if_match: str | None
) -> Task:
    """Return the task locked for ``action``, or raise: 404 (not visible), 428/412
    (If-Match), 409 (not in this state; ``errors.allowed_actions``), 403 (not the caller's)."""
    from ..auth import Forbidden

    task = get_task(session, task_id, principal, for_update=True)
    check_if_match(task, if_match, noun="task", path="/api/v1/tasks/{id}")
    states, permission, who = ACTIONS[action]
    if not principal.can(permission):
        raise Forbidden(f"'{action}' needs the permission {permission}.")
    if task.status not in states:
        raise Conflict(
            f"'{action}' is not possible while the task is {task.status}.",
            errors={
                "action": [f"not allowed in state {task.status}"],
                "allowed_actions": allowed_actions(principal, task),
            },
        )
    if not may_act(principal, task, action):
        if who == "office":
            raise Forbidden(f"'{action}' is for an office whose area holds the task.")
        raise Forbidden(f"'{action}' is for the task's assignee (or, unassigned, its grid).")
    return task


def accept_task(
    session: Session, task_id: int, *, principal: Principal, now: datetime, if_match: str | None
) -> Task:
    """Accept a task: it becomes the caller's (an unassigned task is assigned to them)."""
    task = _take(session, task_id, "accept", principal, if_match)
    task.assignee_id = principal.id
    task.status = "accepted"
    task.accepted_at = now
    task.updated_at = now
    flush_versioned(session, "task")
    return task


def complete_task(
    session: Session,
    task_id: int,
    data: dict[str, Any],
    *,
    principal: Principal,
    now: datetime,
    if_match: str | None,
) -> Task:
    """Complete a task with its results, evidence and comment (and its items done).

    The results are checked against the form (the campaign's ``result_schema``, or the
    task's own): on a task with items, each item's ``result`` is; otherwise ``results``.
    Raises Unprocessable naming each attribute that is missing, unknown or wrong.
    """
    task = _take(session, task_id, "complete", principal, if_match)
    schema = result_form(session, task)
    items = {i.id: i for i in task_items(session, task)}
    reported = data.get("items") or []
    if items:
        if data.get("results"):
            raise _invalid("results", "this task records results per item: use items")
        errors: dict[str, Any] = {}
        seen: set[int] = set()
        for n, entry in enumerate(reported):
            item = items.get(entry["id"])
            if item is None or entry["id"] in seen:
                errors[str(n)] = {
                    "id": [f"not an item of this task, or given twice: {entry['id']}"]
                }
                continue
            seen.add(item.id)
            try:
                result = check_results(schema, entry.get("result"))
            except Unprocessable as exc:
                errors[str(n)] = {"result": (exc.errors or {})["json"]["results"]}
                continue
            item.status = "done"
            item.result = result
            item.note = entry.get("note", "")
            item.done_at = now
            item.done_by = principal.actor_id
        if errors:
            raise Unprocessable("Invalid items.", errors={"json": {"items": errors}})
    else:
        if reported:
            raise _invalid("items", "this task has no items")
        task.results = check_results(schema, data.get("results"))
    if task.assignee_id is None:
        task.assignee_id = principal.id
    if task.accepted_at is None:
        task.accepted_at = now
    task.status = "completed"
    task.completed_at = now
    task.completed_by = principal.actor_id
    task.evidence = data.get("evidence") or []
    task.comment = (data.get("comment") or "").strip()
    task.overdue = False  # overdue_since stays: it tells a late completion
    task.updated_at = now
    flush_versioned(session, "task")
    close_campaign_if_done(session, task.campaign_id, now)
    return task


def reassign_task(
    session: Session,
    task_id: int,
    data: dict[str, Any],
    *,
    principal: Principal,
    calendar: WorkingCalendar,
    now: datetime,
    if_match: str | None,
) -> tuple[Task, int | None]:
    """Give a task to another worker in the caller's scope (``assignee_id``), or back to its
    grid (null), optionally with a new deadline; it is pending again. The same assignee with
    a new deadline changes the deadline alone (an overdue task was given away and back to
    extend it, and its acceptance lost). Returns the task and the previous assignee."""
    task = _take(session, task_id, "reassign", principal, if_match)
    previous = task.assignee_id
    new_id = data["assignee_id"]
    if new_id is None:
        if task.grid_code is None:
            raise _invalid("assignee_id", "a task without a grid needs a worker")
    else:
        new_id = assignee_in_scope(session, new_id, principal.scope, "assignee_id").id
    moved = new_id != previous
    if not moved and data.get("due_at") is None and data.get("due_in") is None:
        raise _invalid("assignee_id", "the task is assigned so already (give a new deadline)")
    if moved:
        task.assignee_id = new_id
        task.status = "pending"
        task.accepted_at = None
    due = due_date(data, calendar, now, required=False)
    if due is not None:
        task.due_at = due
        for column, value in due_in_record(data, now).items():
            setattr(task, column, value)
        task.overdue = False
        task.overdue_since = None
    task.updated_at = now
    flush_versioned(session, "task")
    if new_id is not None and moved:
        notice = assigned_notice(
            task.id, task.version, task.county_code, task.title, new_id, overdue=task.overdue
        )
        session.add(Notification(**notice))
    return task, previous


def cancel_task(
    session: Session,
    task_id: int,
    reason: str,
    *,
    principal: Principal,
    now: datetime,
    if_match: str | None,
) -> Task:
    """Cancel an open task, saying why."""
    task = _take(session, task_id, "cancel", principal, if_match)
    task.status = "cancelled"
    task.cancelled_at = now
    task.cancel_reason = reason
    task.overdue = False
    task.updated_at = now
    flush_versioned(session, "task")
    close_campaign_if_done(session, task.campaign_id, now)
    return task


def result_form(session: Session, task: Task) -> list[dict[str, Any]]:
    """Return the form a task is completed with: its campaign's, or its own."""
    if task.campaign_id is not None:
        campaign = session.get(Campaign, task.campaign_id)
        return campaign.result_schema if campaign else []
    return task.result_schema or []


def task_items(session: Session, task: Task) -> list[TaskItem]:
    return list(
        session.scalars(select(TaskItem).where(TaskItem.task_id == task.id).order_by(TaskItem.id))
    )


def item_counts(session: Session, task_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
    """Return (items, items done) per task id, for tasks that have items."""
    ids = sorted(set(task_ids))
    if not ids:
        return {}
    rows = session.execute(
        select(
            TaskItem.task_id,
            func.count(TaskItem.id),
            func.sum(case((TaskItem.status == "done", 1), else_=0)),
        )
        .where(TaskItem.task_id.in_(ids))
        .group_by(TaskItem.task_id)
    ).all()
    return {task_id: (int(total), int(done or 0)) for task_id, total, done in rows}


def _area_filter(stmt, model: Any, args: dict[str, Any]):  # type: ignore[no-untyped-def]
    if args.get("region"):
        try:
            prefix = subtree_prefix(args["region"])
        except InvalidCode as exc:
            raise Unprocessable(
                "Invalid region.", errors={"query": {"region": [str(exc)]}}
            ) from None
        stmt = stmt.where(starts_with(model.region_code, prefix))
    return stmt


def task_query(principal: Principal, args: dict[str, Any], stmt=None):  # type: ignore[no-untyped-def]
    """Return ``stmt`` (default: select the tasks) restricted to the tasks visible to the
    caller and matching the list filters in ``args`` (shared by the list and the export)."""
    stmt = select(Task) if stmt is None else stmt
    stmt = _area_filter(stmt.where(task_visible(principal)), Task, args)
    if args.get("grid"):
        stmt = stmt.where(Task.grid_code == args["grid"])
    if args.get("campaign_id"):
        stmt = stmt.where(Task.campaign_id == args["campaign_id"])
    if args.get("status"):
        stmt = stmt.where(Task.status.in_(args["status"]))
    if args.get("open") is True:
        stmt = stmt.where(Task.status.in_(OPEN_TASK_STATUSES))
    elif args.get("open") is False:
        stmt = stmt.where(Task.status.not_in(OPEN_TASK_STATUSES))
    if args.get("overdue") is not None:
        stmt = stmt.where(Task.overdue.is_(args["overdue"]))
    if args.get("assignee"):
        assignee = args["assignee"]
        if assignee == "me":
            assignee = principal.id if principal.kind == "user" else -1
        stmt = stmt.where(Task.assignee_id == int(assignee))
    return stmt


def list_tasks(session: Session, principal: Principal, args: dict[str, Any]) -> list[Task]:
    """Return a page of visible tasks matching the filters, by id."""
    stmt = task_query(principal, args)
    limit = args.get("limit", 50)
    return one_page(session.scalars(page_by_id(stmt, Task.id, args.get("cursor"), limit)), limit)


def own_regions(scope: Scope) -> list[str]:
    """Return the regions a scope names itself (the community of an officer, the township of
    an office), by code: the unit an unassigned task given to a region is for."""
    return sorted(prefix.ljust(12, "0") for prefix in scope.prefixes)


def unassigned_held(
    grid_codes: Iterable[str],
    scope: Scope,
    grid: Any = Task.grid_code,
    region: Any = Task.region_code,
) -> ColumnElement[bool]:
    """Return the condition on a task (or its change-log row: ``grid``, ``region``) of an
    unassigned one the caller holds: of a grid on its roster, or given to a region without a
    grid, to the very region of its area (a community's officer holds its community's; an
    office its township's). A region's task reached nobody's phone nor list of work, though
    its officer could accept it and its overdue notice went to that officer."""
    parts: list[ColumnElement[bool]] = []
    grids = sorted(grid_codes)
    if grids:
        parts.append(grid.in_(grids))
    if regions := own_regions(scope):
        parts.append(and_(grid.is_(None), region.in_(regions)))
    return or_(*parts) if parts else false()


def my_tasks(
    session: Session,
    principal: Principal,
    *,
    now: datetime,
    days: int,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Task], str | None]:
    """Return a page of the caller's tasks for the phone, and the cursor of the next page
    (None on the last): assigned to them, or unassigned in the grids on their roster. Open
    ones first, by deadline; then those completed or cancelled in the last ``days`` days,
    latest first. Raises Unprocessable for a cursor this function did not write."""
    if principal.kind != "user":
        return [], None
    after = _my_tasks_place(cursor, days) if cursor else None
    held = unassigned_held(current_grids(session, principal.id), principal.scope)
    mine: ColumnElement[bool] = or_(
        Task.assignee_id == principal.id, and_(Task.assignee_id.is_(None), held)
    )
    rows: list[Task] = []
    if after is None or after.part == "open":
        stmt = select(Task).where(mine, Task.status.in_(OPEN_TASK_STATUSES))
        if after is not None:
            due, last_id = after.moment, after.row_id
            stmt = stmt.where(or_(Task.due_at > due, and_(Task.due_at == due, Task.id > last_id)))
        rows = list(session.scalars(stmt.order_by(Task.due_at, Task.id).limit(limit + 1)))
    if len(rows) <= limit and days > 0:
        closed_at = func.coalesce(Task.completed_at, Task.cancelled_at)
        stmt = select(Task).where(
            mine, Task.status.not_in(OPEN_TASK_STATUSES), closed_at >= now - timedelta(days=days)
        )
        if after is not None and after.part == "closed":
            closed, last_id = after.moment, after.row_id
            stmt = stmt.where(or_(closed_at < closed, and_(closed_at == closed, Task.id < last_id)))
        stmt = stmt.order_by(closed_at.desc(), Task.id.desc()).limit(limit + 1 - len(rows))
        rows += list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    if last.status in OPEN_TASK_STATUSES:
        return rows[:limit], _my_tasks_cursor("open", last.due_at, last.id, days)
    closed = last.completed_at or last.cancelled_at
    assert closed is not None  # a closed task within ``days`` has its time
    return rows[:limit], _my_tasks_cursor("closed", closed, last.id, days)


def _my_tasks_cursor(part: str, moment: datetime, task_id: int, days: int) -> str:
    return encode_cursor(moment.astimezone(UTC), task_id, part=part, tag=days)


def _my_tasks_place(cursor: str, days: int) -> Place:
    """Return the place a page of ``my_tasks`` ended on: its part (open, closed), sort time
    and id. Raises Unprocessable (naming ``cursor``) for anything else, and for a cursor of
    another ``days`` (a place in another list)."""
    place = decode_cursor(cursor, parts=("open", "closed"), id_below=2**31)
    if place.tag is None:
        raise invalid_cursor()  # every cursor of this list names its days
    if place.tag != days:
        raise another_list("another `days`")
    return place


# --- overdue ----------------------------------------------------------------------------------


def flag_overdue_tasks(session: Session, now: datetime) -> int:
    """Mark overdue every open task whose deadline is before ``now``: ``overdue``,
    ``overdue_since`` (the deadline), a new version; and tell its assignee (or, left to its
    grid, the grid's workers; left to its region, the region's unit) and the office that issued it (``overdue_notices``). Returns how many were marked; a second run marks
    none. Flushes, never commits.

    On PostgreSQL a task another transaction holds at that moment (a worker completing it, an
    office reassigning it or cancelling its campaign) is left to the next run: the job's
    UPDATE locked the late tasks in the table's order, cancelling a campaign locks its tasks
    by id, and the two could deadlock (PostgreSQL then kills one of them).

    Only the tasks this run marks are told (a task marked before the notices existed is not
    told now, long after). Two workers at once: PostgreSQL's UPDATE checks ``overdue`` again
    on the locked row, so one of them marks it; SQLite's write transaction serialises them;
    and a notice of a kind is queued once per task (``uq_notifications_task_id_kind``).
    """
    late = select(Task.id).where(
        Task.status.in_(OPEN_TASK_STATUSES),
        Task.due_at < now,
        Task.overdue.is_(False),
    )
    if session.get_bind().dialect.name == "postgresql":
        late = late.with_for_update(skip_locked=True)
    ids = list(session.scalars(late.order_by(Task.id)))
    marked: list[Any] = []
    for start in range(0, len(ids), 1000):
        rows = session.execute(
            update(Task)
            .where(Task.id.in_(ids[start : start + 1000]), Task.overdue.is_(False))
            .values(
                overdue=True,
                overdue_since=Task.due_at,
                version=Task.version + 1,
                updated_at=now,
            )
            .returning(
                Task.id,
                Task.county_code,
                Task.title,
                Task.due_at,
                Task.assignee_id,
                Task.grid_code,
                Task.region_code,
                Task.created_by,
            )
            .execution_options(synchronize_session="fetch")
        ).all()
        marked += rows
    # In the tasks' order: RETURNING gives the rows in the order the UPDATE found them
    # (PostgreSQL's, not the ids'), and the inboxes list the notices in the order queued.
    marked.sort(key=lambda row: row.id)
    notices = overdue_notices(session, marked, now)
    for start in range(0, len(notices), 1000):
        _queue_once(session, notices[start : start + 1000])
    session.flush()
    return len(marked)


def _issuing_offices(session: Session, issuers: Iterable[str]) -> dict[str, tuple[str, Any]]:
    """Return, per issuer (``user:12``, ``client:3``), where a notice to its office goes:
    ``("region", code)`` to the unit of its scope region; for a person of no unit (an
    unrestricted account) ``("user", id)`` to them; an app of no unit is left out."""
    ids: dict[str, set[int]] = defaultdict(set)
    for issuer in issuers:
        kind, _, number = issuer.partition(":")
        if number.isdigit():
            ids[kind].add(int(number))
    where: dict[str, tuple[str, Any]] = {}
    if ids["user"]:
        for user_id, region in session.execute(
            select(User.id, User.scope_region_code).where(User.id.in_(sorted(ids["user"])))
        ):
            where[f"user:{user_id}"] = ("region", region) if region else ("user", user_id)
    if ids["client"]:
        for client_id, region in session.execute(
            select(ApiClient.id, ApiClient.scope_region_code).where(
                ApiClient.id.in_(sorted(ids["client"]))
            )
        ):
            if region:
                where[f"client:{client_id}"] = ("region", region)
    return where


def overdue_notices(session: Session, tasks: Iterable[Any], now: datetime) -> list[dict[str, Any]]:
    """Return the notification rows telling that each task (rows with ``id``,
    ``county_code``, ``title``, ``due_at``, ``assignee_id``, ``grid_code``,
    ``region_code``, ``created_by``) passed its deadline: one to its assignee (kind
    ``overdue:assignee:<deadline>``); for a task left to its grid, one to each worker on
    the grid's roster on the day of ``now`` (``overdue:grid:<deadline>:<user id>``, as a
    task given to a worker tells their account); for a task left to its region (no grid,
    no assignee), one to the unit of that region (``overdue:region:<deadline>``: every
    account whose scope region it is, those who may take it), unless that unit issued it;
    and one to the office that issued it (``overdue:office:<deadline>``: the unit of the
    issuer's scope region, or an unrestricted issuer's own account). The kinds name the
    deadline: a task given a new deadline is told again when that passes."""
    tasks = list(tasks)
    offices = _issuing_offices(session, {t.created_by for t in tasks})
    left_to_grid = {t.grid_code for t in tasks if t.assignee_id is None and t.grid_code}
    rosters = grid_rosters(session, left_to_grid, clock.date_of(now)) if left_to_grid else {}
    rows = []
    for t in tasks:
        stamp = t.due_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        message = f"任务「{t.title[:100]}」已超过期限"
        base = {
            "county_code": t.county_code,
            "task_id": t.id,
            "message": message,
            "created_at": now,
        }
        office = offices.get(t.created_by)
        # Left to its region: its unit (the office of exactly that region, whose people may
        # take it) is told, unless it issued the task and hears of it below.
        unit_told = office != ("region", t.region_code)
        rows.extend(_to_those_doing(t, base, f"overdue:{{}}:{stamp}", rosters, unit_told))
        if office is not None:
            kind, to = office
            to_office = {
                "kind": f"overdue:office:{stamp}",
                "user_id": to if kind == "user" else None,
                "region_code": to if kind == "region" else None,
            }
            rows.append({**base, **to_office})
    return rows


def _queue_once(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert task notices, skipping any whose task has one of that kind already."""
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert
    where = Notification.task_id.is_not(None)
    session.execute(
        upsert(Notification)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["task_id", "kind"], index_where=where)
    )


# --- calendar edits --------------------------------------------------------------------------

#: The ids of tasks locked and moved per statement (the IN lists stay short on both engines).
_MOVE_CHUNK = 500


@dataclass(frozen=True)
class DeadlinesMoved:
    """What an edit of the calendar moved: the ids of the tasks and of the campaigns, each
    in id order."""

    tasks: list[int]
    campaigns: list[int]


def move_task_deadlines(
    session: Session,
    before: WorkingCalendar,
    after: WorkingCalendar,
    now: datetime,
    actor: Actor,
) -> DeadlinesMoved:
    """Count again, on ``after``, the deadlines of open tasks given as working time
    (``due_in``) that are still ahead and that ``before`` counted across a day the edit
    changed; return the ids of the tasks and of the campaigns whose deadline moved.

    Each keeps its start and its length (``due_in_from``, ``due_in_amount`` working
    ``due_in_unit``, counted by ``add_limit`` as when it was given). A task given a moment
    (``due_at``), or made before the length was kept, keeps its deadline; so does one
    flagged overdue, or whose deadline has passed (it was told), and one the new count
    would put at or before ``now`` (an edit makes no task overdue, unwarned). Each task
    moved gets a new version and ``updated_at`` (the phone's sync sees it, the webhook
    trigger sends ``task.deadline_moved``) and an audit row ``task.deadline_moved``
    (``due_before``, ``due_at``) by ``actor``, in the edit's transaction; one moved earlier
    tells those doing it (``earlier_notices``). An active campaign given working time moves
    alike, after its tasks (``_count_campaigns_again``). Flushes, never commits."""
    days = changed_days(before, after)
    if not days:
        return DeadlinesMoved([], [])
    # A deadline before the first day changed counted none of them, nor one counted from
    # after the last.
    first = datetime.combine(min(days), time(0), tzinfo=before.tz)
    last_end = datetime.combine(max(days) + timedelta(days=1), time(0), tzinfo=before.tz)
    bound = max(now, first.astimezone(UTC))
    ids = list(
        session.scalars(
            select(Task.id)
            .where(
                Task.status.in_(OPEN_TASK_STATUSES),
                Task.overdue.is_(False),
                Task.due_in_unit.is_not(None),
                Task.due_at > bound,
                Task.due_in_from < last_end.astimezone(UTC),
            )
            .order_by(Task.id)
        )
    )

    campaign_ids = list(
        session.scalars(
            select(Campaign.id)
            .where(
                Campaign.status == "active",
                Campaign.due_in_unit.is_not(None),
                Campaign.due_at > bound,
                Campaign.due_in_from < last_end.astimezone(UTC),
            )
            .order_by(Campaign.id)
        )
    )

    def spans_a_changed_day(given: Task | Campaign) -> bool:
        if given.due_at <= bound:
            return False
        assert given.due_in_from is not None  # checked before
        first_day = given.due_in_from.astimezone(before.tz).date()
        last_day = given.due_at.astimezone(before.tz).date()
        return any(first_day <= day <= last_day for day in days)

    tasks = _count_tasks_again(session, ids, after, now, actor, spans_a_changed_day)
    campaigns = _count_campaigns_again(
        session, campaign_ids, after, now, actor, spans_a_changed_day
    )
    return DeadlinesMoved(tasks, campaigns)


def recount_stale_task_deadlines(
    session: Session,
    calendar: WorkingCalendar,
    since: datetime,
    until: datetime,
    now: datetime,
    actor: Actor,
) -> list[int]:
    """Count again on ``calendar`` the deadlines of the open tasks given working time
    (``due_in``) between ``since`` and ``until`` (``due_in_from``: their creation, or the
    reassignment that gave it), by another process perhaps on the calendar it still held
    after an edit; move each that differs, still ahead and staying ahead of ``now``, as
    ``move_task_deadlines`` does, by ``actor``, and so the active campaigns given working
    time in that window. Returns the ids of the tasks moved, in id order.

    Idempotent: a deadline counted on ``calendar`` already is left as it is."""
    ids = list(
        session.scalars(
            select(Task.id)
            .where(
                Task.status.in_(OPEN_TASK_STATUSES),
                Task.overdue.is_(False),
                Task.due_in_unit.is_not(None),
                Task.due_in_from >= since,
                Task.due_in_from <= until,
                Task.due_at > now,
            )
            .order_by(Task.id)
        )
    )

    campaign_ids = list(
        session.scalars(
            select(Campaign.id)
            .where(
                Campaign.status == "active",
                Campaign.due_in_unit.is_not(None),
                Campaign.due_in_from >= since,
                Campaign.due_in_from <= until,
                Campaign.due_at > now,
            )
            .order_by(Campaign.id)
        )
    )

    def given_in_window(given: Task | Campaign) -> bool:
        return given.due_in_from is not None and since <= given.due_in_from <= until

    moved = _count_tasks_again(session, ids, calendar, now, actor, given_in_window)
    _count_campaigns_again(session, campaign_ids, calendar, now, actor, given_in_window)
    return moved


def _count_tasks_again(
    session: Session,
    ids: list[int],
    calendar: WorkingCalendar,
    now: datetime,
    actor: Actor,
    concerned: Callable[[Task], bool],
) -> list[int]:
    """Lock the tasks ``ids`` (by id, in chunks) and move the deadline of each still open,
    not overdue, given working time, ahead of ``now`` and ``concerned`` (a test of the
    task) to its count on ``calendar``, unless that is the same or at or before ``now``;
    one brought earlier tells those doing it. Returns the ids moved, in id order."""
    moved = _count_again_locked(
        session,
        Task,
        ids,
        calendar,
        now,
        actor,
        concerned,
        # Moved on meanwhile (the lock waited for a step: completed, given a moment).
        still_open=lambda task: task.status in OPEN_TASK_STATUSES and not task.overdue,
        summary=lambda task: {"status": task.status, "grid": task.grid_code},
    )
    earlier = [task for task, due_before in moved if task.due_at < due_before]
    notices = earlier_notices(session, earlier, now, calendar)
    for start in range(0, len(notices), 1000):
        _queue_once(session, notices[start : start + 1000])
    return [task.id for task, _ in moved]


def _count_campaigns_again(
    session: Session,
    ids: list[int],
    calendar: WorkingCalendar,
    now: datetime,
    actor: Actor,
    concerned: Callable[[Campaign], bool],
) -> list[int]:
    """Lock the campaigns ``ids`` (by id, after the tasks: the order completing a task and
    cancelling a campaign take) and move the deadline of each still active, given working
    time, ahead of ``now`` and ``concerned`` to its count on ``calendar``, as its tasks'
    (``_count_tasks_again``). A campaign given a moment keeps it. Returns the ids moved, in
    id order."""
    moved = _count_again_locked(
        session,
        Campaign,
        ids,
        calendar,
        now,
        actor,
        concerned,
        # Closed or cancelled meanwhile (the lock waited for its last task's step).
        still_open=lambda campaign: campaign.status == "active",
    )
    return [campaign.id for campaign, _ in moved]


def _count_again_locked(
    session: Session,
    model: Any,
    ids: list[int],
    calendar: WorkingCalendar,
    now: datetime,
    actor: Actor,
    concerned: Callable[[Any], bool],
    *,
    still_open: Callable[[Any], bool],
    summary: Callable[[Any], dict[str, Any]] = lambda _: {},
) -> list[tuple[Any, datetime]]:
    """Lock the rows ``ids`` of ``model`` (a task or a campaign: ``due_at`` and the
    ``due_in_*`` it was given) by id, in chunks, and move the deadline of each
    ``still_open``, given working time, ahead of ``now`` and ``concerned`` to its count on
    ``calendar`` (``add_limit`` from ``due_in_from``), unless that is the same or at or
    before ``now``: a new version, ``updated_at`` and an audit row
    ``<task|campaign>.deadline_moved`` (``due_before``, ``due_at``, and ``summary`` of the
    row) by ``actor``. Returns each row moved with its deadline before, in id order."""
    kind = model.__tablename__.removesuffix("s")
    moved: list[tuple[Any, datetime]] = []
    for start in range(0, len(ids), _MOVE_CHUNK):
        rows = session.scalars(
            select(model)
            .where(model.id.in_(ids[start : start + _MOVE_CHUNK]))
            .order_by(model.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        ).all()
        for given in rows:
            due, counted_from = given.due_at, given.due_in_from
            if (
                not still_open(given)
                or given.due_in_unit is None
                or given.due_in_amount is None
                or counted_from is None
                or due <= now
                or not concerned(given)
            ):
                continue
            new_due = add_limit(calendar, counted_from, given.due_in_amount, given.due_in_unit)
            if new_due == due or new_due <= now:
                continue
            given.due_at = new_due
            given.updated_at = now
            record(
                session,
                actor,
                f"{kind}.deadline_moved",
                kind,
                given.id,
                summary={
                    **summary(given),
                    "due_before": due.isoformat(),
                    "due_at": new_due.isoformat(),
                },
                region_code=given.region_code,
            )
            moved.append((given, due))
        session.flush()
    return moved


def earlier_notices(
    session: Session, tasks: Iterable[Any], now: datetime, calendar: WorkingCalendar
) -> list[dict[str, Any]]:
    """Return the notification rows telling those doing each task (rows with ``id``,
    ``county_code``, ``title``, ``due_at``: the new deadline, ``assignee_id``,
    ``grid_code``, ``region_code``) that a calendar edit brought its deadline earlier: its
    assignee (kind ``deadline_earlier:assignee:<deadline>``); left to its grid, each worker
    on the grid's roster on the day of ``now`` (``deadline_earlier:grid:<deadline>:<user
    id>``); left to its region, the unit of that region (``deadline_earlier:region:
    <deadline>``). The kinds name the new deadline: queued once per task and deadline (a
    second worker, an edit undone and made again), told again for another. A later
    deadline tells nobody: the phone shows it at its next sync."""
    tasks = list(tasks)
    left_to_grid = {t.grid_code for t in tasks if t.assignee_id is None and t.grid_code}
    rosters = grid_rosters(session, left_to_grid, clock.date_of(now)) if left_to_grid else {}
    rows = []
    for t in tasks:
        stamp = t.due_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        local = t.due_at.astimezone(calendar.tz).strftime("%Y-%m-%d %H:%M")
        base = {
            "county_code": t.county_code,
            "task_id": t.id,
            "message": f"任务「{t.title[:100]}」的期限因工作日历调整提前至{local}",
            "created_at": now,
        }
        rows.extend(_to_those_doing(t, base, f"deadline_earlier:{{}}:{stamp}", rosters))
    return rows


def _to_those_doing(
    task: Any,
    base: dict[str, Any],
    kind: str,
    rosters: dict[str, list[int]],
    unit_told: bool = True,
) -> list[dict[str, Any]]:
    """Return ``base`` addressed to those doing ``task``: its assignee (``kind`` with
    ``assignee`` for ``{}``); left to its grid, each worker on the grid's roster
    (``grid``, then ``:<user id>``); left to its region, that region's unit (``region``),
    when ``unit_told``."""
    if task.assignee_id is not None:
        to = {"kind": kind.format("assignee"), "user_id": task.assignee_id}
        return [{**base, **to, "region_code": None}]
    if task.grid_code:
        grid = kind.format("grid")
        return [
            {**base, "kind": f"{grid}:{user_id}", "user_id": user_id, "region_code": None}
            for user_id in rosters.get(task.grid_code, [])
        ]
    if not unit_told:
        return []
    return [
        {**base, "kind": kind.format("region"), "user_id": None, "region_code": task.region_code}
    ]


def recount_tasks_after_edit(
    session: Session,
    before: WorkingCalendar,
    working_hours: str,
    timezone: str,
    now: datetime,
    actor: Actor,
) -> DeadlinesMoved:
    """Move the task and campaign deadlines an edit of the calendar changes
    (``move_task_deadlines``, in the edit's transaction, next to the cases'
    ``recount_after_edit``). Returns their ids."""
    after = working_calendar(session, working_hours, timezone)
    return move_task_deadlines(session, before, after, now, actor)


# --- campaigns --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FannedOut:
    """What a campaign made: the campaign, its tasks (assigned or not) and items."""

    campaign: Campaign
    tasks: int
    assigned: int
    items: int


def create_campaign(
    session: Session,
    data: dict[str, Any],
    *,
    principal: Principal,
    calendar: WorkingCalendar,
    now: datetime,
) -> FannedOut:
    """Create a campaign over a region in the caller's scope and fan it out: one task per
    grid in service in the region's subtree, for the grid's worker on today's roster (else
    unassigned, for the grid), and with ``item_scope`` one item per house or household of
    the grid (of the given house uses). Raises Unprocessable for a region out of scope or
    without grids, and for an invalid form."""
    scope = principal.scope
    region = place_of_region(session, data["region"], scope, above_county=True).region_code
    schema = check_result_schema(data.get("result_schema"))
    prefix = subtree_prefix(region)
    grids = session.execute(
        select(Grid.code, Grid.community_code)
        .where(
            Grid.in_service.is_(True),
            starts_with(Grid.community_code, prefix),
            scope.grid_condition(Grid.code, Grid.community_code),
        )
        .order_by(Grid.code)
    ).all()
    if not grids:
        raise _invalid("region", "has no grid in service", "Nothing to fan out to.")
    due = due_date(data, calendar, now)
    assert due is not None
    item_scope = data.get("item_scope", "none")
    uses = data.get("item_uses") or None
    # Over a city, the campaign's tasks lie in several counties (each in its grid's): the
    # campaign row goes with those of the first grid, a county it has work in.
    county = region[:6] if region_level(region) not in ("city", "province") else grids[0][1][:6]
    due_in = due_in_record(data, now)
    campaign = Campaign(
        county_code=county,
        region_code=region,
        title=data["title"],
        description=data.get("description", ""),
        category_code=_category(session, data.get("category")),
        due_at=due,
        **due_in,
        result_schema=schema,
        item_scope=item_scope,
        item_uses=uses,
        status="active",
        created_by=principal.actor_id,
        created_at=now,
        updated_at=now,
    )
    session.add(campaign)
    session.flush()
    workers = grid_workers(
        session, region, {code for code, _ in grids}, now.astimezone(calendar.tz).date()
    )
    rows = [
        {
            "county_code": community[:6],
            "region_code": community,
            "grid_code": code,
            "campaign_id": campaign.id,
            "title": campaign.title,
            "description": campaign.description,
            "category_code": campaign.category_code,
            "assignee_id": workers.get(code),
            "status": "pending",
            "due_at": due,
            **due_in,
            "results": {},
            "evidence": [],
            "comment": "",
            "overdue": False,
            "created_by": principal.actor_id,
            "created_at": now,
            "updated_at": now,
            "version": 1,
        }
        for code, community in grids
    ]
    made = session.execute(insert(Task).returning(Task.id, Task.grid_code), rows).all()
    task_of = {grid: task_id for task_id, grid in made}
    notices = [
        assigned_notice(task_id, 1, grid[:6], campaign.title, workers[grid])
        for task_id, grid in sorted(made)
        if grid in workers
    ]
    if notices:
        session.execute(insert(Notification), notices)
    items = _fan_out_items(session, campaign, prefix, task_of) if item_scope != "none" else 0
    return FannedOut(campaign, len(made), len(workers), items)


def _fan_out_items(
    session: Session, campaign: Campaign, prefix: str, task_of: dict[str, int]
) -> int:
    uses = campaign.item_uses
    if campaign.item_scope == "houses":
        stmt = select(House.id, House.grid_code, House.address).where(
            starts_with(House.region_code, prefix), House.grid_code.is_not(None)
        )
        if uses:
            stmt = stmt.where(House.use.in_(uses))
        key = "house_id"
    else:
        stmt = (
            select(Household.id, Household.grid_code, Household.number)
            .outerjoin(House, House.id == Household.house_id)
            .where(starts_with(Household.region_code, prefix), Household.grid_code.is_not(None))
        )
        if uses:
            stmt = stmt.where(House.use.in_(uses))
        key = "household_id"
    rows = [
        {
            "task_id": task_of[grid],
            # The task's county (its grid's), not the campaign's: a city-wide campaign's
            # items named one county for the houses of every county.
            "county_code": grid[:6],
            key: subject_id,
            "label": (label or "")[:300],
            "status": "pending",
            "result": {},
            "note": "",
        }
        for subject_id, grid, label in session.execute(stmt.order_by(stmt.selected_columns[0]))
        if grid in task_of
    ]
    for start in range(0, len(rows), 1000):
        session.execute(insert(TaskItem), rows[start : start + 1000])
    return len(rows)


def get_campaign(
    session: Session, campaign_id: int, principal: Principal, *, for_update: bool = False
) -> Campaign:
    """Return a campaign the caller may read. Raises NotFound otherwise."""
    stmt = select(Campaign).where(Campaign.id == campaign_id, campaign_visible(principal))
    if for_update and session.get_bind().dialect.name == "postgresql":
        # Read again under the lock: a campaign read before (unlocked) may have changed.
        stmt = stmt.with_for_update(of=Campaign).execution_options(populate_existing=True)
    campaign = session.scalars(stmt).first()
    if campaign is None:
        raise _not_found("campaign")
    return campaign


def list_campaigns(session: Session, principal: Principal, args: dict[str, Any]) -> list[Campaign]:
    """Return a page of visible campaigns (a region filter keeps those whose region lies in
    its subtree), by id."""
    stmt = _area_filter(select(Campaign).where(campaign_visible(principal)), Campaign, args)
    if args.get("status"):
        stmt = stmt.where(Campaign.status.in_(args["status"]))
    limit = args.get("limit", 50)
    return one_page(
        session.scalars(page_by_id(stmt, Campaign.id, args.get("cursor"), limit)), limit
    )


def cancel_campaign(
    session: Session,
    campaign_id: int,
    reason: str,
    *,
    principal: Principal,
    now: datetime,
    if_match: str | None,
) -> tuple[Campaign, int]:
    """Cancel an active campaign and every open task of it. Returns the campaign and how
    many tasks were cancelled. 404/428/412/409 as for tasks; 403 unless the caller is an
    office over the campaign's whole region.

    Locks are taken in the order completing a task takes them: its open tasks (by id) first,
    then the campaign. Completing locks the task, then the campaign (to close it); cancelling
    locked the campaign, then the tasks, and a worker completing a task at that moment
    deadlocked with the office (PostgreSQL killed one of them: a 503).
    """
    from ..auth import Forbidden

    campaign = get_campaign(session, campaign_id, principal)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            select(Task.id)
            .where(Task.campaign_id == campaign.id, Task.status.in_(OPEN_TASK_STATUSES))
            .order_by(Task.id)
            .with_for_update()
        )
    campaign = get_campaign(session, campaign_id, principal, for_update=True)
    check_if_match(campaign, if_match, noun="campaign", path="/api/v1/campaigns/{id}")
    if campaign.status != "active":
        raise Conflict(
            f"'cancel' is not possible while the campaign is {campaign.status}.",
            errors={"action": [f"not allowed in state {campaign.status}"], "allowed_actions": []},
        )
    if not campaign_office(principal, campaign):
        raise Forbidden("'cancel' is for an office whose area holds the campaign's whole region.")
    campaign.status = "cancelled"
    campaign.cancelled_at = now
    campaign.cancel_reason = reason
    campaign.updated_at = now
    flush_versioned(session, "campaign")
    result = session.execute(
        update(Task)
        .where(Task.campaign_id == campaign.id, Task.status.in_(OPEN_TASK_STATUSES))
        .values(
            status="cancelled",
            cancelled_at=now,
            cancel_reason=reason,
            overdue=False,
            version=Task.version + 1,
            updated_at=now,
        )
        .execution_options(synchronize_session="fetch")
    )
    return campaign, int(result.rowcount or 0)  # type: ignore[attr-defined]


def close_campaign_if_done(session: Session, campaign_id: int | None, now: datetime) -> None:
    """Close an active campaign once none of its tasks is open.

    The campaign row is locked first (PostgreSQL), so that two workers completing its last
    two tasks at once see each other's work and one of them closes it.
    """
    if campaign_id is None:
        return
    stmt = select(Campaign).where(Campaign.id == campaign_id, Campaign.status == "active")
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    campaign = session.scalars(stmt).first()
    if campaign is None:
        return
    still_open = session.scalar(
        select(Task.id)
        .where(Task.campaign_id == campaign_id, Task.status.in_(OPEN_TASK_STATUSES))
        .limit(1)
    )
    if still_open is None:
        campaign.status = "closed"
        campaign.closed_at = now
        campaign.updated_at = now
        flush_versioned(session, "campaign")


# --- progress ---------------------------------------------------------------------------------


def _level(code: str) -> tuple[str, int]:
    level = region_level(code)
    return level, dict(_LEVELS)[level]


def _path(root_length: int, region: str, grid: str | None) -> list[tuple[str, str]]:
    """Return the (level, code) nodes from just below the root (whose prefix is
    ``root_length`` digits long) down to a task's region and grid."""
    try:
        own = dict(_LEVELS)[region_level(region)]
    except InvalidCode:
        own = 12
    path = []
    for level, length in _LEVELS:
        if root_length < length <= own:
            code = region[:length].ljust(12, "0")
            try:
                if region_level(code) == level:  # a city without counties has none
                    path.append((level, code))
            except InvalidCode:
                continue
    if grid:
        path.append(("grid", grid))
    return path


def _rate(counts: dict[str, Any]) -> float | None:
    due = counts["total"] - counts["cancelled"]
    return round(counts["completed"] / due, 4) if due else None


def campaign_progress(session: Session, campaign: Campaign, principal: Principal) -> dict[str, Any]:
    """Return the campaign's progress as a tree from its region down to the grids: per node
    the tasks (total, pending, accepted, completed, cancelled, overdue, completed late), the
    items (total, done) and the completion rate, over the tasks the caller may read.

    Every count of a node is the sum of its children's; the rate is completed / (total -
    cancelled), computed from the sums (never an average of rates), None when nothing is due.
    """
    done = case((TaskItem.status == "done", 1), else_=0)
    items = (
        select(
            TaskItem.task_id.label("task_id"),
            func.count(TaskItem.id).label("items_total"),
            func.sum(done).label("items_done"),
        )
        .group_by(TaskItem.task_id)
        .subquery()
    )

    def count(condition: ColumnElement[bool]) -> Any:
        return func.sum(case((condition, 1), else_=0))

    late = and_(Task.status == "completed", Task.completed_at > Task.due_at)
    rows = session.execute(
        select(
            Task.region_code,
            Task.grid_code,
            func.count(Task.id),
            count(Task.status == "pending"),
            count(Task.status == "accepted"),
            count(Task.status == "completed"),
            count(Task.status == "cancelled"),
            count(and_(Task.status.in_(OPEN_TASK_STATUSES), Task.overdue.is_(True))),
            count(late),
            func.coalesce(func.sum(items.c.items_total), 0),
            func.coalesce(func.sum(items.c.items_done), 0),
        )
        .outerjoin(items, items.c.task_id == Task.id)
        .where(Task.campaign_id == campaign.id, task_visible(principal))
        .group_by(Task.region_code, Task.grid_code)
    ).all()
    root_level, root_length = _level(campaign.region_code)
    nodes: dict[str, dict[str, Any]] = {}
    children: dict[str, list[str]] = defaultdict(list)

    def node(code: str, level: str) -> dict[str, Any]:
        if code not in nodes:
            nodes[code] = {"code": code, "level": level, **dict.fromkeys(_COUNTS, 0)}
        return nodes[code]

    root = node(campaign.region_code, root_level)
    for region, grid, *values in rows:
        parent = root["code"]
        chain = [root]
        for level, code in _path(root_length, region, grid):
            child = node(code, level)
            if code not in children[parent]:
                children[parent].append(code)
            chain.append(child)
            parent = code
        for n in chain:
            for name, value in zip(_COUNTS, values, strict=True):
                n[name] += int(value or 0)
    names = region_names(session, [c for c, n in nodes.items() if n["level"] != "grid"])
    grid_codes = [c for c, n in nodes.items() if n["level"] == "grid"]
    if grid_codes:
        names.update(
            session.execute(
                select(Grid.code, Grid.name).where(
                    Grid.code.in_(grid_codes), Grid.in_service.is_(True)
                )
            ).all()
        )

    def render(code: str) -> dict[str, Any]:
        n = nodes[code]
        return {
            **n,
            "name": names.get(code),
            "completion_rate": _rate(n),
            "children": [render(c) for c in sorted(children[code])],
        }

    return {"campaign_id": campaign.id, "status": campaign.status, "tree": render(root["code"])}


# --- views ------------------------------------------------------------------------------------


def names_for(session: Session, tasks: list[Task]) -> dict[str, Any]:
    """Return what views of the tasks name: regions, grids, assignees, campaign titles."""
    regions = region_names(session, [t.region_code for t in tasks])
    grid_codes = sorted({t.grid_code for t in tasks if t.grid_code})
    grids: dict[str, str] = {}
    if grid_codes:
        grids = dict(
            session.execute(
                select(Grid.code, Grid.name).where(
                    Grid.code.in_(grid_codes), Grid.in_service.is_(True)
                )
            ).all()
        )
    user_ids = sorted({t.assignee_id for t in tasks if t.assignee_id})
    users: dict[int, str] = {}
    if user_ids:
        users = dict(
            session.execute(select(User.id, User.display_name).where(User.id.in_(user_ids))).all()
        )
    campaign_ids = sorted({t.campaign_id for t in tasks if t.campaign_id})
    campaigns: dict[int, tuple[str, list[dict[str, Any]]]] = {}
    if campaign_ids:
        campaigns = {
            cid: (title, schema)
            for cid, title, schema in session.execute(
                select(Campaign.id, Campaign.title, Campaign.result_schema).where(
                    Campaign.id.in_(campaign_ids)
                )
            ).all()
        }
    return {"regions": regions, "grids": grids, "users": users, "campaigns": campaigns}


def item_view(item: TaskItem) -> dict[str, Any]:
    return {
        "id": item.id,
        "house_id": item.house_id,
        "household_id": item.household_id,
        "label": item.label,
        "status": item.status,
        "result": item.result or {},
        "note": item.note,
        "done_at": item.done_at,
        "done_by": item.done_by,
    }


def task_view(
    task: Task,
    principal: Principal,
    names: dict[str, Any],
    *,
    counts: tuple[int, int] | None = None,
    items: list[TaskItem] | None = None,
) -> dict[str, Any]:
    """Return the API representation of a task for the caller (with its items if given)."""
    campaign = names["campaigns"].get(task.campaign_id) if task.campaign_id else None
    form = campaign[1] if campaign else (task.result_schema or [])
    if items is not None:
        counts = (len(items), sum(1 for i in items if i.status == "done"))
    view: dict[str, Any] = {
        "id": task.id,
        "title": task.title,
        "description": task.description,
        "category": task.category_code,
        "status": task.status,
        "status_name": STATUS_NAMES[task.status],
        "campaign": {"id": task.campaign_id, "title": campaign[0]} if campaign else None,
        "region": {"code": task.region_code, "name": names["regions"].get(task.region_code)},
        "grid": (
            {"code": task.grid_code, "name": names["grids"].get(task.grid_code)}
            if task.grid_code
            else None
        ),
        "county_code": task.county_code,
        "assignee": (
            {"id": task.assignee_id, "name": names["users"].get(task.assignee_id)}
            if task.assignee_id
            else None
        ),
        "due_at": task.due_at,
        "due_in": (
            {"amount": task.due_in_amount, "unit": task.due_in_unit}
            if task.due_in_unit is not None
            else None
        ),
        "overdue": task.overdue,
        "overdue_since": task.overdue_since,
        "result_schema": form,
        "results": task.results or {},
        "evidence": task.evidence or [],
        "comment": task.comment,
        "cancel_reason": task.cancel_reason,
        "item_count": counts[0] if counts else 0,
        "items_done": counts[1] if counts else 0,
        "created_by": task.created_by,
        "created_at": task.created_at,
        "accepted_at": task.accepted_at,
        "completed_at": task.completed_at,
        "completed_by": task.completed_by,
        "cancelled_at": task.cancelled_at,
        "updated_at": task.updated_at,
        "version": task.version,
        "allowed_actions": allowed_actions(principal, task),
    }
    view["items"] = None if items is None else [item_view(i) for i in items]
    return view


def campaign_view(
    campaign: Campaign, principal: Principal, names: dict[str, str]
) -> dict[str, Any]:
    return {
        "id": campaign.id,
        "title": campaign.title,
        "description": campaign.description,
        "category": campaign.category_code,
        "region": {"code": campaign.region_code, "name": names.get(campaign.region_code)},
        "county_code": campaign.county_code,
        "due_at": campaign.due_at,
        "due_in": (
            {"amount": campaign.due_in_amount, "unit": campaign.due_in_unit}
            if campaign.due_in_unit is not None
            else None
        ),
        "result_schema": campaign.result_schema or [],
        "item_scope": campaign.item_scope,
        "item_uses": campaign.item_uses,
        "status": campaign.status,
        "cancel_reason": campaign.cancel_reason,
        "created_by": campaign.created_by,
        "created_at": campaign.created_at,
        "closed_at": campaign.closed_at,
        "cancelled_at": campaign.cancelled_at,
        "updated_at": campaign.updated_at,
        "version": campaign.version,
        "allowed_actions": campaign_allowed_actions(principal, campaign),
    }
