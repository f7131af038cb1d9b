"""Cases: report (route, number, deadlines), the workflow, the timeline, lists and queues.

The state machine follows DOMAIN.md §4, with a ``verified`` state (核查通过, 待结案) between a
passed verification and closure:

    reported → accepted → filed → dispatched → handling → feedback → verified → closed
                                  filed → feedback (resolved on the spot)
                                  dispatched/handling → filed (return 回退, escalate 上报)
                                  filed → filed (return of a case handed down 交办)
                                  feedback → dispatched (verification failed: rework 返工)
                                  closed → filed (reopen, with a reason)
    reported/accepted → rejected; any open state → cancelled (cancel, duplicate)

Every action needs its own permission (``cases:<action>``) and a case the caller may act on:
office steps need the unit holding the case (``responsible_region_code``) in the caller's
scope; handler steps (sign, return, feedback, extension requests) need the caller to be the
assignee, a member of the assigned department, or an office over the holding unit.

Services take a Session and never commit: the request commits once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

from geoalchemy2.elements import WKTElement
from sqlalchemy import (
    Select,
    and_,
    bindparam,
    case,
    false,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased, defer, object_session
from sqlalchemy.sql import ColumnElement

from .. import clock
from ..codes import (
    InvalidCode,
    ancestor_prefix_codes,
    parent_candidates,
    region_level,
    subtree_prefix,
)
from ..errors import Conflict, NotFound, Unprocessable
from ..geo.crs import no_fix, to_wgs84
from ..geo.geodesy import distance_m, metres_to_degrees, metres_to_latitude_degrees
from ..models import (
    Case,
    CaseAttachment,
    CaseCounter,
    CaseEvent,
    Category,
    Department,
    Grid,
    Region,
    User,
)
from ..models.cases import OPEN_STATUSES, TERMINAL
from ..personal import mask_name, mask_numbers_in
from ..schemas.common import stated
from ..scope import Scope
from ..workcalendar import WorkingCalendar
from .categories import check_attributes
from .cursors import another_list, decode_cursor, encode_cursor
from .preconditions import (
    PreconditionFailed,
    check_if_match,
    etag,
    flush_versioned,
    parse_etag,
)
from .regions import valid_on
from .routing import NONE, IndexSnapshot

if TYPE_CHECKING:
    from ..auth import Principal

STATUS_NAMES = {
    "reported": "已上报",
    "accepted": "已受理",
    "filed": "已立案",
    "dispatched": "已派遣",
    "handling": "处置中",
    "feedback": "待核查",
    "verified": "待结案",
    "closed": "已结案",
    "rejected": "不予受理",
    "cancelled": "已撤销",
}

# action → (states it may start from, permission, who may do it): "office" = an office over
# the unit holding the case; "handler" = that office, the assignee or the assigned
# department; "verifier" = that office, or a grid chief whose grids hold the case.
ACTIONS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "accept": (("reported",), "cases:accept", "office"),
    "reject": (("reported", "accepted"), "cases:reject", "office"),
    "file": (("accepted",), "cases:file", "office"),
    "dispatch": (("filed",), "cases:dispatch", "office"),
    "sign": (("dispatched",), "cases:sign", "handler"),
    # From filed: a case handed down (交办) goes back to the unit that handed it down.
    "return": (("filed", "dispatched", "handling"), "cases:return", "handler"),
    "escalate": (("accepted", "filed", "handling"), "cases:escalate", "handler"),
    "transfer": (("filed",), "cases:transfer", "office"),
    "request_extension": (("dispatched", "handling"), "cases:request_extension", "handler"),
    "approve_extension": (("dispatched", "handling"), "cases:decide_extension", "office"),
    "deny_extension": (("dispatched", "handling"), "cases:decide_extension", "office"),
    "feedback": (("filed", "handling"), "cases:feedback", "handler"),
    "verify_pass": (("feedback",), "cases:verify", "verifier"),
    "verify_fail": (("feedback",), "cases:verify", "verifier"),
    "close": (("verified",), "cases:close", "office"),
    "reopen": (("closed",), "cases:reopen", "office"),
    "supervise": (
        ("accepted", "filed", "dispatched", "handling", "feedback", "verified"),
        "cases:supervise",
        "office",
    ),
    "duplicate": (OPEN_STATUSES, "cases:duplicate", "office"),
    "cancel": (("reported", "accepted", "filed"), "cases:cancel", "office"),
}
# Actions that must say why.
NEEDS_COMMENT = {
    "reject",
    "return",
    "escalate",
    "transfer",
    "request_extension",
    "deny_extension",
    "feedback",
    "verify_fail",
    "reopen",
    "cancel",
}
# The deadline a state runs against.
STAGE_DUE = {
    "reported": "accept_due_at",
    "accepted": "accept_due_at",
    "filed": "handle_due_at",
    "dispatched": "handle_due_at",
    "handling": "handle_due_at",
    "feedback": "verify_due_at",
    "verified": "verify_due_at",
}
QUEUES = (
    ("intake", "待受理", ("reported", "accepted"), "cases:accept"),
    ("dispatch", "待派遣", ("filed",), "cases:dispatch"),
    ("handle", "待处理", ("dispatched", "handling"), "cases:feedback"),
    ("verify", "待核查", ("feedback",), "cases:verify"),
    ("close", "待结案", ("verified",), "cases:close"),
)
# Every queue GET /cases/queues may answer, in its order: the work queues and 超期.
QUEUE_NAMES = (*(name for name, *_ in QUEUES), "overdue")
OPEN_SQL = "cases.status NOT IN ('closed', 'rejected', 'cancelled')"
SUPERVISION_RANK = {"normal": 0, "yellow": 1, "red": 2}
LEVEL_PREFIX = {"province": 2, "city": 4, "county": 6, "township": 9, "village": 12}


@dataclass(frozen=True)
class Caller:
    """Who acts: the principal, and (for people) their department."""

    principal: Principal
    department_id: int | None = None

    @property
    def actor(self) -> str:
        return self.principal.actor_id

    @property
    def scope(self) -> Scope:
        return self.principal.scope


def caller_of(session: Session, principal: Principal) -> Caller:
    department = None
    if principal.kind == "user":
        department = session.scalar(select(User.department_id).where(User.id == principal.id))
    return Caller(principal, department)


# --- time limits ------------------------------------------------------------------------------


def add_limit(calendar: WorkingCalendar, start: datetime, amount: int, unit: str) -> datetime:
    """Return the deadline ``amount`` working hours or days after ``start`` (in UTC)."""
    if unit == "hours":
        due = calendar.add_working_hours(start, amount)
    else:
        due = calendar.add_working_days(start, amount)
    return due.astimezone(UTC)


# --- reporting --------------------------------------------------------------------------------


@dataclass
class Routed:
    """Where a point belongs: grid (or none), the region that takes the case, and how."""

    lon: float
    lat: float
    grid: dict[str, Any] | None
    method: str
    distance_m: float | None
    region_code: str


def route_point(
    snapshot: IndexSnapshot, lon: float, lat: float, fallback_region: str | None
) -> Routed:
    """Return the grid and region for a WGS-84 point; never fails while any region is known.

    No grid covers (or is near) the point: the smallest region whose boundary covers it
    takes it; else the reporter's own region; else the community of the grid nearest on the
    ground (``IndexSnapshot.nearest_grid``). A city or a province does not: the county under
    it nearest the point does (``IndexSnapshot.nearest_county``), so every case lies in a
    county and its ``county_code`` is a county's (the Citus distribution key).
    """
    match = snapshot.locate(lon, lat)
    if match.grid >= 0:
        grid = snapshot.grids[match.grid]
        return Routed(lon, lat, grid, match.method, match.distance_m, grid["community_code"])
    chain = snapshot.regions_for_point(lon, lat)
    if chain:
        return Routed(lon, lat, None, NONE, None, in_a_county(snapshot, lon, lat, chain[0]["code"]))
    if fallback_region:
        return Routed(lon, lat, None, NONE, None, in_a_county(snapshot, lon, lat, fallback_region))
    if len(snapshot.grids):
        nearest = snapshot.nearest_grid(lon, lat)
        return Routed(lon, lat, None, NONE, None, snapshot.grids[nearest]["community_code"])
    raise Unprocessable(
        "No region can take this case: the point is outside every known region and grid.",
        errors={"json": {"location": ["outside every known region"]}},
    )


def in_a_county(snapshot: IndexSnapshot, lon: float, lat: float, code: str) -> str:
    """Return ``code``, or for a city or a province the county under it nearest the point.

    A case taken in at a city's level had the county code "320500", no county's: its
    number, its export and the county it is distributed by named a county that is none.
    """
    try:
        level = region_level(code)
    except InvalidCode:
        return code
    if level not in ("city", "province"):
        return code
    return snapshot.nearest_county(lon, lat, code) or code


def _level_code(code: str, level: str) -> str:
    """Return the ancestor of ``code`` at ``level`` (or ``code`` when it is not below it)."""
    try:
        own = region_level(code)
    except InvalidCode:
        return code
    if LEVEL_PREFIX[own] <= LEVEL_PREFIX[level]:
        return code
    return code[: LEVEL_PREFIX[level]].ljust(12, "0")


def handling_unit(category: Category, region_code: str) -> str:
    """Return the unit that handles a filed case of ``category`` located at ``region_code``.

    ``default_handler``: ``community`` keeps it with the community, ``county`` sends it to
    the county centre, anything else (``township``, ``department:<code>``) to the township
    office, which dispatches it (to the department, a worker, or down to the community).
    """
    handler = (category.default_handler or "township").split(":", 1)[0]
    if handler in ("community", "village"):
        return region_code
    if handler == "county":
        return _level_code(region_code, "county")
    return _level_code(region_code, "township")


def township_of(code: str) -> str | None:
    try:
        level = region_level(code)
    except InvalidCode:
        return None
    if level in ("township", "village"):
        return code[:9] + "000"
    return None


def next_number(session: Session, county_code: str, now: datetime, tz: Any) -> str:
    """Return the next readable case number of the county for today: 320508-20261128-0001.

    One row per county and day, incremented in the reporting transaction (so numbers have no
    gaps from rolled-back reports, and two reports never share one).
    """
    day = now.astimezone(tz).date()
    stmt = (
        update(CaseCounter)
        .where(CaseCounter.county_code == county_code, CaseCounter.day == day)
        .values(last=CaseCounter.last + 1)
        .returning(CaseCounter.last)
    )
    last = session.execute(stmt).scalar()
    if last is None:
        dialect = session.get_bind().dialect.name
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as upsert
        else:
            from sqlalchemy.dialects.sqlite import insert as upsert
        ins = upsert(CaseCounter).values(county_code=county_code, day=day, last=1)
        ins = ins.on_conflict_do_update(
            index_elements=["county_code", "day"], set_={"last": CaseCounter.last + 1}
        ).returning(CaseCounter.last)
        last = session.execute(ins).scalar_one()
    return f"{county_code}-{day:%Y%m%d}-{last:04d}"


def active_category(session: Session, code: str) -> Category:
    category = session.get(Category, code)
    if category is None or not category.is_active:
        raise Unprocessable(
            "Unknown category.",
            errors={"json": {"category": [f"no active category {code}"]}},
        )
    if category.parent_code is None:
        refuse_a_class(category, session.execute(text(SUBCLASS_SQL), {"c": code}).first())
    return category


# Whether a class has an active subclass (asked only when a report names a class).
SUBCLASS_SQL = "SELECT 1 FROM categories WHERE parent_code = :c AND is_active LIMIT 1"


def refuse_a_class(category: Any, subclass: Any) -> None:
    """A report names a subclass (0101 暴露垃圾), not its class (01 市容环境): the limits,
    handler and attributes are the subclass's. A class without active subclasses is
    reported as itself (as Open311 lists it)."""
    if subclass is not None:
        raise Unprocessable(
            "Report a subclass of the category.",
            errors={
                "json": {"category": [f"{category.code} is a class: name one of its subclasses"]}
            },
        )


@dataclass(frozen=True)
class Located:
    """Where a report is: the point as sent, in WGS-84, and the grid and region it falls in."""

    raw_lon: float
    raw_lat: float
    crs: str
    routed: Routed

    @property
    def county_code(self) -> str:
        return self.routed.region_code[:6]


def locate_report(data: dict[str, Any], principal: Principal, snapshot: IndexSnapshot) -> Located:
    """Convert the report's point to WGS-84 and route it (floats, as the database gives
    them back)."""
    raw_lon, raw_lat = (float(v) for v in data["location"]["coordinates"])
    crs = data.get("crs", "wgs84")
    lon, lat = (float(v) for v in to_wgs84(raw_lon, raw_lat, crs))
    return Located(raw_lon, raw_lat, crs, route_point(snapshot, lon, lat, principal.region_code))


def new_case_row(
    data: dict[str, Any],
    category: Category,
    *,
    principal: Principal,
    located: Located,
    calendar: WorkingCalendar,
    now: datetime,
) -> dict[str, Any]:
    """Return the columns of a new case reported with ``data`` (without id and number).

    The attribute values are checked against the category's schema; ``location`` is left
    out: the point is ``lon``/``lat`` (WGS-84), each engine's insert builds the geometry.
    """
    attributes = check_attributes(category, data.get("attributes"))
    # As the database gives them back: floats, and timestamps in UTC.
    accuracy, occurred = data.get("accuracy_m"), data.get("occurred_at")
    raw_lon, raw_lat, crs, routed = located.raw_lon, located.raw_lat, located.crs, located.routed
    lon, lat = routed.lon, routed.lat
    grid = routed.grid
    # The community is the first line of intake (综治专干); the township office, whose area
    # holds the community, may take the case in as well. Filing moves it to the handler.
    return {
        "county_code": routed.region_code[:6],
        "category_code": category.code,
        "status": "reported",
        "description": data["description"],
        "source": data.get("source") or ("third_party" if principal.kind == "client" else "phone"),
        "urgent": bool(data.get("urgent", False) or category.urgent),
        "severity": data.get("severity", "general"),
        "sensitive": category.sensitive,
        "parties": data.get("parties", []),
        "attributes": attributes,
        "lon": lon,
        "lat": lat,
        "raw_lon": raw_lon,
        "raw_lat": raw_lat,
        "crs": crs,
        "accuracy_m": None if accuracy is None else float(accuracy),
        "address": data.get("address", ""),
        "occurred_at": None if occurred is None else occurred.astimezone(UTC),
        "reported_at": now,
        "grid_code": grid["code"] if grid else None,
        "grid_version_id": grid["version_id"] if grid else None,
        "routing_method": routed.method,
        "snap_distance_m": routed.distance_m,
        "unrouted": grid is None,
        "region_code": routed.region_code,
        "township_code": township_of(routed.region_code),
        "reporter": principal.actor_id,
        "reporter_name": principal.name,
        "client_id": str(data["client_id"]) if data.get("client_id") else None,
        "responsible_region_code": routed.region_code,
        "accept_due_at": add_limit(calendar, now, category.accept_limit, category.accept_unit),
        "updated_at": now,
        "version": 1,
    }


def first_event_data(case_row: dict[str, Any], category: Category) -> dict[str, Any]:
    """Return the ``data`` of a case's first timeline row (``report``), with the limit its
    acceptance deadline was counted with (``accept_limit``, ``accept_unit``: a calendar
    edit counts it again so, whatever the category says by then)."""
    return {
        "grid": case_row["grid_code"],
        "method": case_row["routing_method"],
        "source": case_row["source"],
        "accept_limit": category.accept_limit,
        "accept_unit": category.accept_unit,
    }


def report(
    session: Session,
    data: dict[str, Any],
    *,
    principal: Principal,
    snapshot: IndexSnapshot,
    calendar: WorkingCalendar,
    now: datetime,
    duplicate_window_hours: float = 72.0,
) -> Reported:
    """File a report: route it, number it, set its acceptance deadline, start its timeline.

    Returns the case, the open cases that may report the same thing, and the category.
    (``gridapi.services.intake.report_once`` does the same, with idempotency and audit, in
    three round trips on PostgreSQL.)
    """
    category = active_category(session, data["category"])
    located = locate_report(data, principal, snapshot)
    case_row = new_case_row(
        data, category, principal=principal, located=located, calendar=calendar, now=now
    )
    lon, lat, county = case_row["lon"], case_row["lat"], case_row["county_code"]
    case_row["location"] = WKTElement(f"POINT({lon!r} {lat!r})", srid=4326)
    duplicates = possible_duplicates(
        session, Caller(principal), category, lon, lat, now, window_hours=duplicate_window_hours
    )
    # The number last, just before the insert: reports of one county and day queue on its
    # counter row from here until the transaction commits.
    case_row["number"] = next_number(session, county, now, calendar.tz)
    # Inserted and returned in one statement (no second read of the new row).
    case_obj = session.scalars(insert(Case).returning(Case), [case_row]).one()
    session.execute(
        insert(CaseEvent).values(
            case_id=case_obj.id,
            county_code=county,
            seq=1,
            action="report",
            from_status=None,
            to_status="reported",
            actor=principal.actor_id,
            actor_name=principal.name,
            at=now,
            comment="",
            responsible_region_code=case_row["responsible_region_code"],
            data=first_event_data(case_row, category),
            evidence=[],
        )
    )
    return Reported(case_obj, duplicates, category)


@dataclass(frozen=True)
class Reported:
    """What a report made: the case, possible duplicates, and its category (kept: the
    session's identity map holds objects weakly, and the answer needs the name)."""

    case: Case
    duplicates: list[Case]
    category: Category


DUPLICATE_CANDIDATES = 50  # read per report, nearest in time first; 10 are answered


def duplicate_box(radius_m: float, lat: float) -> tuple[float, float]:
    """Return (dlon, dlat): the half-sides in degrees of a box holding the radius."""
    # Not radius / 111,000: a degree of latitude is shorter than that south of 45° N, and
    # reports due north or south near the radius fell outside the box.
    return metres_to_degrees(radius_m, lat), metres_to_latitude_degrees(radius_m)


def duplicate_bounds(radius_m: float, lon: float, lat: float, since: datetime) -> dict[str, Any]:
    """Return the parameters of ``duplicate_search`` but the category: the box around the
    point holding the radius, and the earliest report time."""
    dlon, dlat = duplicate_box(radius_m, lat)
    return {
        "lon0": lon - dlon,
        "lon1": lon + dlon,
        "lat0": lat - dlat,
        "lat1": lat + dlat,
        "since": since,
    }


def duplicate_search(*columns: Any) -> Select[Any]:
    """Return the search for duplicate candidates, selecting ``columns``: the open cases of
    a category (parameter ``category``) in a box (``lon0``, ``lon1``, ``lat0``, ``lat1``)
    reported since ``since``, newest first, at most ``DUPLICATE_CANDIDATES``.

    Written once for both report paths: ``possible_duplicates`` runs it through the ORM, and
    the PostgreSQL path compiles it into its first statement (``services.intake``)."""
    return (
        select(*columns)
        .where(
            Case.category_code == bindparam("category"),
            Case.lon.between(bindparam("lon0"), bindparam("lon1")),
            Case.lat.between(bindparam("lat0"), bindparam("lat1")),
            Case.reported_at >= bindparam("since"),
            text(OPEN_SQL),
        )
        .order_by(Case.reported_at.desc())
        .limit(DUPLICATE_CANDIDATES)
    )


#: What ``nearest_duplicates`` reads of each candidate: where it is and when it was reported,
#: what the answer shows, and what ``may_see`` decides by.
DUPLICATE_COLUMNS = (
    "id",
    "number",
    "status",
    "lon",
    "lat",
    "reported_at",
    "sensitive",
    "reporter",
    "assignee_id",
    "department_id",
    "responsible_region_code",
    "region_code",
    "grid_code",
)


def nearest_duplicates(
    caller: Caller, candidates: Iterable[Any], lon: float, lat: float, radius_m: float
) -> list:
    """Keep the candidates (from the box, newest first) within the radius that the caller
    may read (a case it may not read is not named, nor is its distance); at most 10. None
    for a point at 0°, 0° (``no_fix``): a phone without a fix, whose reports from anywhere
    would all be duplicates of each other; none to a caller without ``cases:read`` (an app
    that only reports reads no case, in its area or not)."""
    if no_fix(lon, lat) or not caller.principal.can("cases:read"):
        return []
    return [
        c
        for c in candidates
        if distance_m(lon, lat, c.lon, c.lat) <= radius_m and may_see(caller, c)
    ][:10]


def possible_duplicates(
    session: Session,
    caller: Caller,
    category: Category,
    lon: float,
    lat: float,
    now: datetime,
    *,
    window_hours: float = 72.0,
    exclude: int | None = None,
) -> list[Case]:
    """Return open cases of the category within its duplicate radius, reported recently,
    that the caller may read."""
    radius = category.duplicate_radius_m
    if radius <= 0 or no_fix(lon, lat):
        return []
    stmt = duplicate_search(Case)
    if exclude is not None:
        stmt = stmt.where(Case.id != exclude)
    since = now - timedelta(hours=window_hours)
    params = {"category": category.code, **duplicate_bounds(radius, lon, lat, since)}
    return nearest_duplicates(caller, session.scalars(stmt, params), lon, lat, radius)


# --- visibility -------------------------------------------------------------------------------


def reads_sensitive_by_unit(caller: Caller) -> bool:
    """Return whether the caller reads the sensitive cases of the units in its area: an
    office (it dispatches), the unit holding such a case or one above it. A department
    member, a grid worker or an app reads only those it reported, holds or handles."""
    return caller.principal.can("cases:dispatch")


def only_its_own(caller: Caller) -> bool:
    """Return whether the caller reads only the cases it reported, holds or handles, whatever
    its area: a department member (职能部门 receive dispatched cases and report back). By
    its area (a county's), the fire brigade read every complaint of the county, parties,
    timeline and photos, exported them and saw them on its maps: more than its work needs
    (DOMAIN.md §7, minimum necessary)."""
    return caller.department_id is not None and not reads_sensitive_by_unit(caller)


def reads_every_case(caller: Caller) -> bool:
    """Return whether the caller may read every case (an office with no area limit)."""
    return caller.scope.unrestricted and reads_sensitive_by_unit(caller)


def visible_condition(caller: Caller, *, location_in_scope: bool = False) -> ColumnElement[bool]:
    """Return the condition 'the caller may read this case'.

    In scope by location (grid, community or intake region), or held by a unit in scope; and,
    whatever the scope, the cases one reported or holds. A sensitive case (its category says
    so: petitions, family disputes, special groups) is not seen by location, nor by a unit in
    scope unless the caller is an office (``reads_sensitive_by_unit``): only the offices
    over the unit holding it, its handler and its reporter see it. ``may_see`` is the same
    rule for rows already read.

    ``location_in_scope``: the query already keeps only cases located inside the scope (a
    region filter the scope covers), so the location test is left out; the planner then
    reads the region's index in order instead of every open case of the area.
    """
    scope = caller.scope
    office = reads_sensitive_by_unit(caller)
    if reads_every_case(caller):
        return literal(True) == literal(True)
    not_sensitive = Case.sensitive.is_(False)
    own: list[ColumnElement[bool]] = [Case.reporter == caller.actor]
    if caller.principal.kind == "user":
        own.append(Case.assignee_id == caller.principal.id)
        if caller.department_id is not None:
            own.append(Case.department_id == caller.department_id)
    if only_its_own(caller):
        return or_(*own)
    held = scope.region_condition(Case.responsible_region_code)
    own.append(held if office else and_(not_sensitive, held))
    if location_in_scope:
        by_location: ColumnElement[bool] = not_sensitive
    else:
        by_location = and_(not_sensitive, scope.grid_condition(Case.grid_code, Case.region_code))
    return or_(by_location, *own)


def may_see(caller: Caller, case: Any) -> bool:
    """``visible_condition`` in Python, for rows already read (a case, or any object with
    its ``sensitive``, ``reporter``, ``assignee_id``, ``department_id``,
    ``responsible_region_code``, ``region_code`` and ``grid_code``)."""
    scope = caller.scope
    office = reads_sensitive_by_unit(caller)
    if reads_every_case(caller):
        return True
    if case.reporter == caller.actor or holds(caller, case):
        return True
    if only_its_own(caller):
        return False
    if case.sensitive:
        return office and scope.covers_region(case.responsible_region_code)
    return (
        scope.covers_region(case.responsible_region_code)
        or scope.covers_region(case.region_code)
        or (case.grid_code is not None and case.grid_code in scope.grid_codes)
    )


def masked_parties(parties: Sequence[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Return a case's parties as every answer shows them (DOMAIN.md §7): names masked (王*),
    and any ID or phone number in a note masked (stored before notes refused them). The
    people a case names (the one complained about, witnesses) were shown in full to every
    caller who reads the case by its place, a county department among them."""
    if not parties:
        return []
    shown = []
    for party in parties:
        party = dict(party)
        if party.get("name"):
            party["name"] = mask_name(party["name"])
        if party.get("note"):
            party["note"] = mask_numbers_in(party["note"])
        shown.append(party)
    return shown


def may_read_parties(caller: Caller, case_obj: Case) -> bool:
    """Whether the caller, who reads the case, may read its parties' full names: its office
    (``is_office``), its handler (``holds``: who must reach the people it names), its
    reporter (who named them), or a caller who may unmask residents (``persons:unmask``)."""
    return works_on(caller, case_obj) or caller.principal.can("persons:unmask")


def works_on(caller: Caller, case_obj: Case) -> bool:
    """Whether the caller works the case: its reporter, its handler (``holds``) or its
    office (``is_office``)."""
    return (
        case_obj.reporter == caller.actor or holds(caller, case_obj) or is_office(caller, case_obj)
    )


def may_attach(caller: Caller, case_obj: Case) -> bool:
    """Whether the caller, who reads the case, may add evidence to it: its reporter, its
    handler (``holds``), its office (``is_office``), or a worker or chief of the grid it lies
    in (who may be sent to look). A reader by area alone (an app of the county, a worker of
    another grid of the community) may not: a photo is evidence the office judges the case
    by, and the timeline names who added it."""
    grid = case_obj.grid_code
    return works_on(caller, case_obj) or (grid is not None and grid in caller.scope.grid_codes)


def readable_cases(session: Session, caller: Caller, case_ids: Iterable[int]) -> set[int]:
    """Return those of ``case_ids`` the caller may read, by the rule of ``get_case``
    (``visible_condition``): one query for all of them, none when there is nothing to ask
    or the caller reads every case."""
    wanted = set(case_ids)
    if not wanted or reads_every_case(caller):
        return wanted
    stmt = select(Case.id).where(Case.id.in_(sorted(wanted)), visible_condition(caller))
    return set(session.scalars(stmt))


def get_case(session: Session, case_id: int, caller: Caller, *, for_update: bool = False) -> Case:
    stmt = select(Case).where(Case.id == case_id, visible_condition(caller))
    if for_update and session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    found = session.scalars(stmt).first()
    if found is None:
        raise NotFound("No such case.")
    return found


class Read(NamedTuple):
    """A case read for an answer (``read_case``): the case, its category's name and the ids
    of those of the cases read that have reports closed as their duplicates
    (``duplicate_links``' ``originals``)."""

    case: Case
    category_name: str | None
    originals: frozenset[int]


def read_case(session: Session, case_id: int, caller: Caller) -> Read:
    """Return the case the caller may see, for its answer, as ``get_case`` does; its
    category's name and whether it has duplicates come in the same statement (as a list's
    do), where they took two more round trips. Raises NotFound like ``get_case``."""
    found = session.execute(
        select(Case, _CATEGORY_NAME, _HAS_DUPLICATES).where(
            Case.id == case_id, visible_condition(caller)
        )
    ).first()
    if found is None:
        raise NotFound("No such case.")
    case_obj, name, has_duplicates = found
    return Read(case_obj, name, frozenset((case_obj.id,)) if has_duplicates else frozenset())


def lock_cases(session: Session, case_ids: Iterable[int]) -> None:
    """Lock the rows of the cases in the order of their ids, whoever may read them (on
    PostgreSQL; SQLite has one writer at a time). Two transactions that lock the same
    cases this way never wait for each other in a circle."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for case_id in sorted(set(case_ids)):
        session.execute(select(Case.id).where(Case.id == case_id).with_for_update())


# --- the workflow -----------------------------------------------------------------------------


def holds(caller: Caller, case_obj: Case) -> bool:
    """Return whether the caller holds the case as its handler."""
    p = caller.principal
    if p.kind == "user" and case_obj.assignee_id == p.id:
        return True
    return bool(caller.department_id is not None and case_obj.department_id == caller.department_id)


def is_office(caller: Caller, case_obj: Case) -> bool:
    """Return whether the caller is an office over the unit holding the case.

    An office dispatches (``cases:dispatch``) and its area covers the unit. A department
    member or a worker whose area covers the unit reads the case but is not its office: it
    acts only on what was dispatched to it.
    """
    return caller.principal.can("cases:dispatch") and caller.scope.covers_region(
        case_obj.responsible_region_code
    )


def may_act(caller: Caller, case_obj: Case, action: str) -> bool:
    """Return whether the caller may take ``action`` on the case now (state aside)."""
    states, permission, who = ACTIONS[action]
    if not caller.principal.can(permission):
        return False
    office = is_office(caller, case_obj)
    if action == "return" and case_obj.status == "filed":
        # 回退 of a case handed down: the office of the unit it was handed down to, not one
        # over the unit that handed it down (which takes it back by transferring it).
        upper = case_obj.handed_down_from
        return office and not (upper is not None and caller.scope.covers_region(upper))
    if action == "approve_extension":
        # Time is granted by someone other than who asked for it: an office that asked on
        # its handler's behalf (or a handler who is also an office) approved its own request.
        # It may still withdraw it (deny_extension).
        return office and not _requested_by(caller, case_obj)
    if who == "office":
        return office
    if who == "verifier":
        # A grid chief (网格长) verifies the results in the grids they oversee; the case's
        # handler does not check its own work (核查 is the check on the handler). The office
        # that resolved it on the spot, with no handler, checks it as before.
        grids = caller.scope.grid_codes
        verifier = office or (case_obj.grid_code is not None and case_obj.grid_code in grids)
        return verifier and not holds(caller, case_obj)
    return office or holds(caller, case_obj)


def _requested_by(caller: Caller, case_obj: Case) -> bool:
    """Return whether the extension request waiting on the case is the caller's own."""
    request = case_obj.extension_request or {}
    return request.get("requested_by") == caller.actor


def is_office_above(caller: Caller, case_obj: Case) -> bool:
    """Return whether the caller is an office above the unit holding the case: an office
    (``is_office``) whose area is larger than that unit's (a township over a community's
    case, a county over a township's), or unrestricted. The office of the unit itself is
    not: it is the one supervised (督办)."""
    if not is_office(caller, case_obj):
        return False
    scope = caller.scope
    if scope.unrestricted:
        return True
    code = case_obj.responsible_region_code
    own = subtree_prefix(code)
    return any(code.startswith(p) and p != own for p in scope.prefixes)


def escalation_target(session: Session | None, code: str) -> str | None:
    """Return the office a case held by ``code`` escalates to, or None when there is none
    below the province (a city, or a province-administered county without its pseudo-city).

    The parent level, preferring a parent that exists as a region valid today: a
    province-administered county (仙桃 429004) has the pseudo-city (429000) above it when
    the regions hold one (also one whose end is planned; not one planned to start later),
    else the province, which no case goes up to. The escalate step, its ``READY`` test and
    the worker's automatic escalation all ask this. Only such a county has two candidate
    parents, so only its cases cost a query.
    """
    try:
        if region_level(code) in ("province", "city"):
            return None
        parents = parent_candidates(code)
    except InvalidCode:
        return None
    if not parents:
        return None
    upper = parents[0]
    if len(parents) > 1 and session is not None:
        existing = set(
            session.scalars(
                select(Region.code).where(Region.code.in_(parents), valid_on(clock.today()))
            )
        )
        upper = next((p for p in parents if p in existing), upper)
    return None if region_level(upper) == "province" else upper


def _at_the_top(c: Case) -> bool:
    return escalation_target(object_session(c), c.responsible_region_code) is None


class Needs(NamedTuple):
    """What an action needs besides a state it is taken in: the test (of the case and the ids
    of the reports closed as its duplicates), and the message and the reason of the 409 when
    the case fails it."""

    test: Callable[[Case, Sequence[int]], bool]
    message: str
    reason: str
    names_duplicates: bool = False


FOLLOWED_UP = "Other reports are closed as duplicates of this case: it is followed up for them."

# One rule for both: allowed_actions leaves out what would fail (a phone shows only the
# buttons that work), and the step refuses it with the same allowed_actions listed.
READY: dict[str, Needs] = {
    "request_extension": Needs(
        lambda c, _: not c.extension_request,
        "An extension request is already waiting for a decision.",
        "extension already requested",
    ),
    "approve_extension": Needs(
        lambda c, _: bool(c.extension_request),
        "No extension request is waiting.",
        "no extension requested",
    ),
    "deny_extension": Needs(
        lambda c, _: bool(c.extension_request),
        "No extension request is waiting.",
        "no extension requested",
    ),
    "return": Needs(
        lambda c, _: c.status != "filed" or c.handed_down_from is not None,
        "The case was not handed down to the unit holding it: there is nobody to return it to.",
        "not handed down",
    ),
    "escalate": Needs(
        lambda c, _: not _at_the_top(c),
        "The case is already held at the top level.",
        "nothing above the unit holding the case",
    ),
    # Reports closed as its duplicates rely on the case being followed up: ending it would
    # leave them with nobody following them up (its own `duplicate` hands them on instead).
    "reject": Needs(lambda _, dups: not dups, FOLLOWED_UP, "the case has duplicates", True),
    "cancel": Needs(lambda _, dups: not dups, FOLLOWED_UP, "the case has duplicates", True),
}


def _ready(case_obj: Case, action: str, duplicates: Sequence[int]) -> bool:
    check = READY.get(action)
    return check is None or check.test(case_obj, duplicates)


def allowed_actions(caller: Caller, case_obj: Case, duplicates: Sequence[int]) -> list[str]:
    """Return the actions the caller may take on the case now: in its state, with what else
    the action needs (``READY``; ``duplicates``: the ids of the reports closed as duplicates
    of the case, ``duplicates_of``), and the caller's permission and place."""
    can = caller.principal.can
    return [
        name
        for name in _ACTIONS_IN.get(case_obj.status, ())
        if can(ACTIONS[name][1])
        and _ready(case_obj, name, duplicates)
        and may_act(caller, case_obj, name)
    ]


#: The actions taken in each state, in the order of ``ACTIONS`` (what ``allowed_actions``
#: offers, every case of a list asks).
_ACTIONS_IN: dict[str, tuple[str, ...]] = {
    state: tuple(name for name, (states, _, _) in ACTIONS.items() if state in states)
    for state in {state for states, _, _ in ACTIONS.values() for state in states}
}


def _check_feedback_evidence(session: Session, case_obj: Case) -> None:
    """Refuse feedback without a photo on a case whose category asks for one."""
    category = session.get(Category, case_obj.category_code)
    if category is not None and category.feedback_evidence:
        raise Unprocessable(
            f"Feedback on a case of category {category.code} ({category.name}) needs a photo "
            "of the result.",
            errors={
                "json": {
                    "evidence": [
                        "upload a photo to the case (POST /api/v1/cases/{id}/attachments) "
                        "and cite its id"
                    ]
                }
            },
        )


def state_actions(status: str) -> list[str]:
    return [name for name, (states, _, _) in ACTIONS.items() if status in states]


def with_departments(units: Iterable[str]) -> list[str]:
    """Return those of ``units`` whose departments the units below them dispatch to: up to
    a county (its fire brigade serves every township), not a city or province, whose
    departments a case reaches by escalating."""
    return sorted(u for u in set(units) if region_level(u) not in ("city", "province"))


class Notice(NamedTuple):
    """A notification a step queues: to an account, a unit (the office of exactly that
    region) and/or a department."""

    kind: str
    message: str
    user_id: int | None = None
    region: str | None = None
    department_id: int | None = None


def those_handling(c: Case) -> dict[str, Any]:
    """The recipients of a notice about a case's deadline or supervision: its handler and
    the unit holding it, and the department it was dispatched to while nobody of it has
    signed (a member who signs is its handler)."""
    return {
        "user_id": c.assignee_id,
        "region": c.responsible_region_code,
        "department_id": c.department_id if c.assignee_id is None else None,
    }


@dataclass
class TransitionContext:
    session: Session
    caller: Caller
    calendar: WorkingCalendar
    now: datetime
    data: dict[str, Any]
    comment: str = ""  # the step's comment as the timeline keeps it (stripped)
    event_data: dict[str, Any] = field(default_factory=dict)
    notify: list[Notice] = field(default_factory=list)


class Stepped(NamedTuple):
    """What ``transition`` did: the case after the step, its timeline row, and the ids of
    the reports closed as duplicates of the case now (its answer shows them)."""

    case: Case
    event: CaseEvent
    duplicates: list[int]


def transition(
    session: Session,
    case_id: int,
    data: dict[str, Any],
    *,
    caller: Caller,
    calendar: WorkingCalendar,
    now: datetime,
    if_match: str | None,
) -> Stepped:
    """Apply one workflow action to a case and add its timeline row.

    Raises NotFound (not visible), PreconditionRequired/PreconditionFailed (If-Match),
    Forbidden-like 403 (no permission or not the caller's case), Conflict 409 (not allowed in
    this state; ``errors.allowed_actions`` lists what is), Unprocessable (bad details).
    """
    from ..auth import Forbidden

    if data["action"] == "duplicate" and isinstance(data.get("duplicate_of"), int):
        # The step locks the original too. Two offices closing two cases as duplicates of
        # each other at once each locked its own case and waited for the other's: a
        # deadlock (503). Locked in the order of their ids, the second waits for the first
        # and then finds the pair linked already (409, or 422 when it read it so), or its
        # case changed only by that step attaching duplicates to it (taken all the same).
        lock_cases(session, [case_id, data["duplicate_of"]])
    case_obj = get_case(session, case_id, caller, for_update=True)
    try:
        check_if_match(case_obj, if_match, noun="case", path="/api/v1/cases/{id}")
    except PreconditionFailed:
        if data["action"] == "duplicate":
            _check_not_linked_meanwhile(session, caller, case_obj, data.get("duplicate_of"))
        # Residents' reports attached to the case as its duplicates meanwhile are no change
        # the step would overwrite: taken, judged below on the case as it is now (a reject
        # or cancel is refused for those duplicates, 409, as if they had been read).
        if not _changed_only_by_attachments(session, case_obj, if_match):
            raise
    # Read after the lock: the duplicates attached since the caller's read count too.
    duplicates = duplicates_of(session, case_obj)
    action = data["action"]
    states, permission, _ = ACTIONS[action]
    if not caller.principal.can(permission):
        raise Forbidden(f"Taking '{action}' needs the permission {permission}.")
    if case_obj.status not in states:
        raise Conflict(
            f"'{action}' is not possible while the case is {case_obj.status}.",
            errors={
                "action": [f"not allowed in state {case_obj.status}"],
                "allowed_actions": allowed_actions(caller, case_obj, duplicates),
            },
        )
    if not may_act(caller, case_obj, action):
        if action == "approve_extension" and _requested_by(caller, case_obj):
            raise Forbidden("An extension is approved by someone other than who asked for it.")
        if ACTIONS[action][2] == "verifier" and holds(caller, case_obj):
            raise Forbidden("The case's handler does not verify its own work.")
        raise Forbidden(
            f"'{action}' is for the unit holding the case"
            + (" or its handler." if ACTIONS[action][2] == "handler" else ".")
        )
    if not _ready(case_obj, action, duplicates):
        needs = READY[action]
        errors: dict[str, Any] = {"action": [needs.reason]}
        message = needs.message
        if needs.names_duplicates:
            # Named only when the caller may read them; the refusal itself stands for all.
            shown = readable_cases(session, caller, duplicates)
            errors["duplicates"] = [d for d in duplicates if d in shown]
            hidden = [d for d in duplicates if d not in shown]
            errors["hidden_duplicates"] = len(hidden)
            if hidden:
                # Refused for reports it cannot see, the office had nothing to go on: it is
                # told how many, and the office that sees them all (over its own unit, so
                # no other unit is named).
                unit = office_over_duplicates(session, case_obj, hidden)
                errors["ask_unit"] = unit
                name = region_names(session, [unit]).get(unit)
                message += (
                    f" {len(hidden)} of them are held where you cannot read them; the office "
                    f"of {name or unit} ({unit}) reads them all."
                )
        errors["allowed_actions"] = allowed_actions(caller, case_obj, duplicates)
        raise Conflict(message, errors=errors)
    comment = stated(data.get("comment") or "")
    if action in NEEDS_COMMENT and not comment:
        raise Unprocessable("Say why.", errors={"json": {"comment": [f"required for '{action}'"]}})
    from .attachments import check_evidence

    evidence = check_evidence(session, case_obj.id, data.get("evidence") or [])
    if action == "feedback" and not evidence:
        _check_feedback_evidence(session, case_obj)
    ctx = TransitionContext(session, caller, calendar, now, data, comment)
    before = case_obj.status
    # No flush while the step looks things up half-way: one step, one version bump.
    with session.no_autoflush:
        after = APPLY[action](ctx, case_obj)
    case_obj.status = after
    due_name = STAGE_DUE.get(after)
    due = getattr(case_obj, due_name) if due_name else None
    overdue_now = False
    if after in TERMINAL or due is None or due >= now:
        case_obj.overdue = False
        case_obj.overdue_since = None
    elif not (
        case_obj.overdue and case_obj.overdue_since == due and STAGE_DUE.get(before) == due_name
    ):
        # e.g. rework after the handling deadline: overdue at once, against that deadline,
        # with the row and the notice the worker would have written (one overdue against
        # the verification deadline does not keep that one: wrong stage, also when both
        # deadlines fell on one instant)
        overdue_now = True
        # Flagged now, with the step's other changes: the row below reads the timeline,
        # which flushes them, and flagging after it was a second update (two versions
        # for one step). mark_case_overdue then finds the flag set.
        case_obj.overdue, case_obj.overdue_since = True, due
    case_obj.updated_at = now
    event = add_event(
        session,
        case_obj,
        next_seq(session, case_obj.id),
        action,
        before,
        caller.actor,
        caller.principal.name,
        now,
        comment=comment,
        data=ctx.event_data,
        evidence=evidence,
    )
    for notice in ctx.notify:
        queue_notification(session, case_obj, notice)
    if overdue_now:
        from .jobs import mark_case_overdue

        mark_case_overdue(session, case_obj, event.seq + 1, now)
    flush_versioned(session, "case")
    if evidence:  # photos uploaded for this step belong to it (the first step that cites them)
        session.execute(
            update(CaseAttachment)
            .where(CaseAttachment.id.in_(evidence), CaseAttachment.event_id.is_(None))
            .values(event_id=event.id)
        )
    # A step closing the case as a duplicate moved its own duplicates to the original; no
    # other step links or unlinks any (and the lock keeps other steps from doing so).
    return Stepped(case_obj, event, [] if action == "duplicate" else duplicates)


def _check_not_linked_meanwhile(
    session: Session, caller: Caller, case_obj: Case, other_id: Any
) -> None:
    """Raise Conflict (409) when the case a duplicate step names was closed as a duplicate of
    this one since the caller read it.

    Two offices closing two cases as duplicates of each other at once: the step taken first
    attached its case to the other, which is a change of the other (its ``duplicates``, its
    version), and the second caller got 412 "the case changed since you read it" for an
    If-Match that was current when sent; read again and sent again, the step was refused
    anyway (422). The conflict is named at once instead. Only to a caller who may read the
    other case; to any other the stale If-Match stands (412)."""
    if not isinstance(other_id, int) or other_id == case_obj.id:
        return
    linked = session.scalar(select(Case.duplicate_of_id).where(Case.id == other_id))
    if linked != case_obj.id or other_id not in readable_cases(session, caller, [other_id]):
        return
    duplicates = duplicates_of(session, case_obj)
    raise Conflict(
        f"Case {other_id} was closed as a duplicate of this case meanwhile.",
        errors={
            "json": {"duplicate_of": [f"case {other_id} is a duplicate of this case"]},
            "allowed_actions": allowed_actions(caller, case_obj, duplicates),
        },
        headers={"ETag": etag(case_obj)},
    )


ATTACHMENT_ROWS = frozenset({"duplicates_attached", "duplicate_moved"})


def _changed_only_by_attachments(session: Session, case_obj: Case, if_match: str | None) -> bool:
    """Return whether the case's If-Match names an earlier version of it and every change
    since was another step attaching duplicates to it (or moving it on as one).

    Case A closed as a duplicate of B while another office closes B as a duplicate of C: the
    step taken first attached A to B, a new version of B, and the second caller was answered
    412 "the case changed since you read it" for an If-Match that was current when sent;
    sent again, the step was taken (A moving on to C with B). A duplicate step carries B's
    duplicates along, whatever they are, so it is taken at once. Each such change is one
    version and one timeline row of its own: the last (current - sent) rows are those changes
    exactly, and any other step among them (any row of its own) leaves the 412.

    Any other step of the case is let through the same way: in a busy township (a burst pipe
    reported by ten residents) the office's every accept, dispatch or close was answered 412
    while reports kept being attached to the case, changes it did not make and which leave
    the case's state as it read it."""
    tags = parse_etag(if_match)
    if not isinstance(tags, list):
        return False
    sent = []
    for tag in tags:
        parts = tag.split("-")
        if len(parts) >= 2 and parts[0] == str(case_obj.id) and parts[1].isdigit():
            sent.append(int(parts[1]))
    if not sent:
        return False
    missed = case_obj.version - max(sent)
    if not 0 < missed <= 50:
        return False
    rows = session.execute(
        select(CaseEvent.action, CaseEvent.at)
        .where(CaseEvent.case_id == case_obj.id)
        .order_by(CaseEvent.seq.desc())
        .limit(missed)
    ).all()
    # A change that writes no row of its own (a category made sensitive: a new version of
    # each of its cases) would leave rows written before the read to be counted: the last
    # change was an attachment only when it also set the case's updated_at, to its row's time.
    return (
        len(rows) == missed
        and all(r.action in ATTACHMENT_ROWS for r in rows)
        and rows[0].at == case_obj.updated_at
    )


def next_seq(session: Session, case_id: int) -> int:
    """Return the number of the case's next timeline row."""
    last = session.scalar(select(func.max(CaseEvent.seq)).where(CaseEvent.case_id == case_id))
    return (last or 0) + 1


def add_event(
    session: Session,
    case_obj: Case,
    seq: int,
    action: str,
    before: str | None,
    actor: str,
    actor_name: str,
    now: datetime,
    *,
    comment: str = "",
    data: dict[str, Any] | None = None,
    evidence: list[int] | None = None,
) -> CaseEvent:
    """Add the timeline row of a step that took the case from ``before`` to its status."""
    event = CaseEvent(
        case_id=case_obj.id,
        county_code=case_obj.county_code,
        seq=seq,
        action=action,
        from_status=before,
        to_status=case_obj.status,
        actor=actor,
        actor_name=actor_name,
        at=now,
        comment=comment,
        responsible_region_code=case_obj.responsible_region_code,
        data=data or {},
        evidence=evidence or [],
    )
    session.add(event)
    return event


def queue_notification(session: Session, case_obj: Case, notice: Notice) -> None:
    from ..models import Notification

    to = notice.user_id or notice.region or f"department:{notice.department_id}"
    session.add(
        Notification(
            county_code=case_obj.county_code,
            case_id=case_obj.id,
            kind=f"{notice.kind}:{case_obj.version}:{to}"[:64],
            user_id=notice.user_id,
            region_code=notice.region,
            department_id=notice.department_id,
            message=notice.message,
        )
    )


def _unit_in_scope(ctx: TransitionContext, code: str, name: str) -> str:
    try:
        region_level(code)
    except InvalidCode as exc:
        raise Unprocessable("Invalid unit.", errors={"json": {name: [str(exc)]}}) from None
    # Valid today, not open-ended: a community whose end is planned (a merger next month)
    # was an "Unknown unit" already.
    exists = ctx.session.scalar(
        select(Region.id).where(Region.code == code, valid_on(clock.today())).limit(1)
    )
    # One answer for a unit that does not exist and one outside the caller's scope (the
    # county above a township office, which exists: "no region" was untrue of it).
    if exists is None or not ctx.caller.scope.covers_region(code):
        raise Unprocessable(
            "Unknown unit.", errors={"json": {name: [f"no region {code} in your scope"]}}
        )
    return code


def _accept(ctx: TransitionContext, c: Case) -> str:
    c.accepted_at = ctx.now
    return "accepted"


def _reject(ctx: TransitionContext, c: Case) -> str:
    return "rejected"


def _file(ctx: TransitionContext, c: Case) -> str:
    category = ctx.session.get(Category, c.category_code)
    assert category is not None
    c.filed_at = ctx.now
    c.handle_due_at = add_limit(ctx.calendar, ctx.now, category.handle_limit, category.handle_unit)
    ctx.event_data.update(
        handle_due_at=c.handle_due_at.isoformat(),
        handle_limit=category.handle_limit,
        handle_unit=category.handle_unit,
    )
    unit = handling_unit(category, c.region_code)
    # Filed with the category's handling unit, unless the case was escalated above it already.
    if unit != c.responsible_region_code and c.responsible_region_code.startswith(
        subtree_prefix(unit)
    ):
        ctx.event_data.update(from_unit=c.responsible_region_code, to_unit=unit)
        c.responsible_region_code, c.handed_down_from = unit, None
    return "filed"


def _dispatch(ctx: TransitionContext, c: Case) -> str:
    d = ctx.data
    targets = [k for k in ("assignee_id", "department_id", "unit") if d.get(k) is not None]
    if len(targets) != 1:
        raise Unprocessable(
            "Dispatch to exactly one of a worker, a department or a lower unit.",
            errors={"json": {"assignee_id": ["give one of assignee_id, department_id, unit"]}},
        )
    if "unit" in targets:  # 交办: the lower unit takes the case and dispatches it itself
        unit = _unit_in_scope(ctx, d["unit"], "unit")
        if unit == c.responsible_region_code or not unit.startswith(
            subtree_prefix(c.responsible_region_code)
        ):
            raise Unprocessable(
                "Not a lower unit.",
                errors={"json": {"unit": ["must lie below the unit holding the case"]}},
            )
        ctx.event_data["from_unit"] = c.handed_down_from = c.responsible_region_code
        c.responsible_region_code = unit
        c.assignee_id = c.department_id = None
        ctx.event_data["unit"] = unit
        ctx.notify.append(Notice("dispatched", f"事件 {c.number} 已交办", region=unit))
        return "filed"
    c.dispatched_at = ctx.now
    if "assignee_id" in targets:
        user = ctx.session.scalar(
            select(User).where(
                User.id == d["assignee_id"],
                User.is_active.is_(True),
                ctx.caller.scope.region_condition(User.region_code),
            )
        )
        if user is None:
            raise Unprocessable(
                "Unknown worker.",
                errors={"json": {"assignee_id": ["no active user in your scope"]}},
            )
        c.assignee_id, c.department_id = user.id, None
        ctx.event_data["assignee_id"] = user.id
        ctx.notify.append(Notice("dispatched", f"事件 {c.number} 派遣给您", user_id=user.id))
    else:
        # A department of the caller's area, or of the county holding the case: the county's
        # fire brigade serves every township, whose office dispatches to it (a category's
        # handler department:<code>). A city's department is reached by escalating.
        unit = c.responsible_region_code
        serving = with_departments([unit, *ancestor_prefix_codes(unit)])
        dept = ctx.session.scalar(
            select(Department).where(
                Department.id == d["department_id"],
                Department.is_active.is_(True),
                or_(
                    ctx.caller.scope.region_condition(Department.region_code),
                    Department.region_code.in_(serving),
                ),
            )
        )
        if dept is None:
            raise Unprocessable(
                "Unknown department.",
                errors={
                    "json": {"department_id": ["no active department in your scope or your county"]}
                },
            )
        c.department_id, c.assignee_id = dept.id, None
        ctx.event_data["department_id"] = dept.id
        ctx.notify.append(
            Notice("dispatched", f"事件 {c.number} 派遣至{dept.name}", department_id=dept.id)
        )
    return "dispatched"


def _sign(ctx: TransitionContext, c: Case) -> str:
    caller = ctx.caller
    if (
        caller.principal.kind == "user"
        and c.department_id is not None
        and caller.department_id == c.department_id
    ):
        # A department member signs for the department and becomes the handler, also when
        # the case came back for rework with another member as its handler (whoever signs
        # does the work, and is told of its deadline); an office signing on its behalf does
        # not (it was made the handler of the department's case).
        if c.assignee_id not in (None, caller.principal.id):
            ctx.event_data["previous_assignee_id"] = c.assignee_id
        c.assignee_id = caller.principal.id
    return "handling"


def _withdraw_extension_request(ctx: TransitionContext, c: Case) -> None:
    """Drop the extension request still waiting, if any, and name it in the step's row: the
    step (return, escalate, feedback, duplicate) ends the handling it asked time for, so
    nobody decides it. The timeline shows where the request went (it had only the request's
    row), and a cancelled case no longer shows a request waiting."""
    req = c.extension_request
    if req:
        ctx.event_data["withdrawn_extension"] = {"amount": req["amount"], "unit": req["unit"]}
    c.extension_request = None


def _return(ctx: TransitionContext, c: Case) -> str:
    if c.status == "filed":
        # 回退 of a case handed down (交办): back to the unit that handed it down, with its
        # deadline; not an escalation (no escalation_count), and no handling leg it ends.
        upper = c.handed_down_from
        assert upper is not None  # READY: handed down
        ctx.event_data.update(from_unit=c.responsible_region_code, to_unit=upper)
        # Handed down twice (county → township → community): back at the township, it may
        # return the case to the county in turn. Cleared, the township had nobody to return
        # it to, and the county's hand-down was lost.
        chain = hand_down_chain(ctx.session, c.id)
        below = chain[-2] if len(chain) > 1 and chain[-1] == upper else None
        c.responsible_region_code, c.handed_down_from = upper, below
        ctx.notify.append(Notice("returned", f"事件 {c.number} 已回退", region=upper))
        return "filed"
    # Who held it: the handler (a user id) and, when dispatched to one, the department (a
    # department id); one key for either read a department's id as a user's.
    if c.assignee_id is not None:
        ctx.event_data["returned_by"] = c.assignee_id
    if c.department_id is not None:
        ctx.event_data["department_id"] = c.department_id
    c.assignee_id = c.department_id = None
    # The dispatch it ends is no leg of handling (dispatch → feedback) any more: the next
    # dispatch starts one, and feedback by the office itself is handling on the spot.
    c.dispatched_at = None
    _withdraw_extension_request(ctx, c)
    return "filed"


def hand_down_chain(session: Session, case_id: int) -> list[str]:
    """Return the units that handed the case down (交办) to the unit holding it, level by
    level: the first handed it down first, the last to the unit holding it now
    (``handed_down_from``); empty when it was not handed down to it.

    Read from the timeline: a hand-down (a ``dispatch`` from filed to filed) adds the unit
    it left, a return of a case handed down (``return`` from filed) takes off the last one,
    and any other step that moves the case to another unit (filing to its handler,
    escalation, transfer, the worker's escalation) starts afresh, as it clears
    ``handed_down_from``.
    """
    rows = session.execute(
        select(
            CaseEvent.action,
            CaseEvent.from_status,
            CaseEvent.to_status,
            CaseEvent.responsible_region_code,
        )
        .where(CaseEvent.case_id == case_id)
        .order_by(CaseEvent.seq)
    ).all()
    chain: list[str] = []
    unit: str | None = None
    for action, before, after, held_by in rows:
        if action == "dispatch" and before == "filed" and after == "filed" and unit:
            chain.append(unit)
        elif action == "return" and before == "filed":
            if chain:
                chain.pop()
        elif held_by is not None and unit is not None and held_by != unit:
            chain.clear()
        if held_by is not None:
            unit = held_by
    return chain


def _escalate(ctx: TransitionContext, c: Case) -> str:
    upper = escalation_target(ctx.session, c.responsible_region_code)
    assert upper is not None  # READY: not at the top
    ctx.event_data["from_unit"] = c.responsible_region_code
    ctx.event_data["to_unit"] = upper
    c.responsible_region_code, c.handed_down_from = upper, None
    c.assignee_id = c.department_id = None
    c.dispatched_at = None  # as a return: the upper level dispatches it anew, or handles it
    _withdraw_extension_request(ctx, c)
    c.escalation_count += 1
    ctx.notify.append(Notice("escalated", f"事件 {c.number} 已上报", region=upper))
    return "accepted" if c.status == "accepted" else "filed"


def _transfer(ctx: TransitionContext, c: Case) -> str:
    unit = ctx.data.get("unit")
    if not unit:
        raise Unprocessable("Transfer to a unit.", errors={"json": {"unit": ["required"]}})
    unit = _unit_in_scope(ctx, unit, "unit")
    if unit == c.responsible_region_code:
        raise Unprocessable(
            "The case is already there.", errors={"json": {"unit": ["already holds the case"]}}
        )
    ctx.event_data["from_unit"] = c.responsible_region_code
    ctx.event_data["to_unit"] = unit
    c.responsible_region_code, c.handed_down_from = unit, None
    c.assignee_id = c.department_id = None
    ctx.notify.append(Notice("transferred", f"事件 {c.number} 转办至本单位", region=unit))
    return "filed"


def _extension_amount(ctx: TransitionContext) -> tuple[int, str]:
    """Return the time a request_extension asks for: its amount and its unit, working days
    when not sent (the schema declares no default, which clients would send with every
    action); raise `Unprocessable` without a positive amount."""
    amount, unit = ctx.data.get("amount"), ctx.data.get("unit_of_time") or "days"
    if not isinstance(amount, int) or amount < 1:
        raise Unprocessable(
            "How much more time?", errors={"json": {"amount": ["a positive whole number"]}}
        )
    return amount, unit


def _request_extension(ctx: TransitionContext, c: Case) -> str:
    amount, unit = _extension_amount(ctx)
    c.extension_request = {
        "amount": amount,
        "unit": unit,
        "reason": ctx.comment,
        "requested_by": ctx.caller.actor,
        "requested_at": ctx.now.isoformat(),
    }
    ctx.event_data.update(amount=amount, unit=unit)
    ctx.notify.append(
        Notice("extension_requested", f"事件 {c.number} 申请延期", region=c.responsible_region_code)
    )
    return c.status


def _pending_extension(c: Case) -> dict[str, Any]:
    assert c.extension_request  # READY: one is waiting
    return c.extension_request


def _approve_extension(ctx: TransitionContext, c: Case) -> str:
    req = _pending_extension(c)
    before = c.handle_due_at or ctx.now
    c.handle_due_at = add_limit(ctx.calendar, before, int(req["amount"]), req["unit"])
    c.extension_count += 1
    c.extension_request = None
    ctx.event_data.update(
        amount=req["amount"],
        unit=req["unit"],
        handle_due_before=before.isoformat(),
        handle_due_at=c.handle_due_at.isoformat(),
    )
    return c.status


def _deny_extension(ctx: TransitionContext, c: Case) -> str:
    req = _pending_extension(c)
    ctx.event_data.update(amount=req["amount"], unit=req["unit"])
    c.extension_request = None
    return c.status


def _feedback(ctx: TransitionContext, c: Case) -> str:
    category = ctx.session.get(Category, c.category_code)
    assert category is not None
    c.feedback_at = ctx.now
    _withdraw_extension_request(ctx, c)
    c.verify_due_at = add_limit(ctx.calendar, ctx.now, category.verify_limit, category.verify_unit)
    ctx.event_data.update(
        verify_due_at=c.verify_due_at.isoformat(),
        verify_limit=category.verify_limit,
        verify_unit=category.verify_unit,
    )
    if c.status == "filed":
        ctx.event_data["on_the_spot"] = True
    return "feedback"


def _verify_pass(ctx: TransitionContext, c: Case) -> str:
    return "verified"


def _verify_fail(ctx: TransitionContext, c: Case) -> str:
    c.rework_count += 1
    c.verify_due_at = None
    ctx.event_data["rework"] = c.rework_count
    if c.assignee_id is None and c.department_id is None:
        return "filed"  # handled on the spot by the office: back to the office
    message = f"事件 {c.number} 核查未通过，请返工"
    if c.assignee_id is not None:
        ctx.notify.append(Notice("rework", message, user_id=c.assignee_id))
    else:
        # Dispatched to a department that nobody of it signed for (its office signed on its
        # behalf): the department is told, as it was of the dispatch.
        ctx.notify.append(Notice("rework", message, department_id=c.department_id))
    return "dispatched"


def _close(ctx: TransitionContext, c: Case) -> str:
    c.closed_at = ctx.now
    c.handling_hours = ctx.calendar.working_hours_between(c.filed_at or ctx.now, ctx.now)
    # The evaluation snapshot (DOMAIN §4): the closure as the indicators judge it, kept in
    # its timeline row; a reopen clears the case's columns, never this row.
    due = c.handle_due_at
    ctx.event_data.update(
        handling_hours=c.handling_hours,
        handle_due_at=due.isoformat() if due is not None else None,
        on_time=None if due is None else ctx.now <= due,
        rework_count=c.rework_count,
        extension_count=c.extension_count,
        supervision=c.supervision,
    )
    return "closed"


def _reopen(ctx: TransitionContext, c: Case) -> str:
    category = ctx.session.get(Category, c.category_code)
    assert category is not None
    c.reopen_count += 1
    c.closed_at = None
    c.handling_hours = None
    c.verify_due_at = None
    c.assignee_id = c.department_id = None
    # A new life: its handling leg starts at its own dispatch (the first life's is in the
    # timeline), and it is supervised afresh. The level the closure had stays in the close
    # row and, named here, in this one; left on the case, the reopened case showed the first
    # life's red card, and the worker never gave a card for its own overdue (only raises).
    c.dispatched_at = None
    # Nor has it been fed back: the first life's feedback (in its ``feedback`` row) left on
    # the case counted the redispatched case as handled in that feedback's period, judged
    # against the new deadline, before anybody reported back on it.
    c.feedback_at = None
    if c.supervision != "normal":
        ctx.event_data["earlier_supervision"] = c.supervision
        c.supervision = "normal"
    c.handle_due_at = add_limit(ctx.calendar, ctx.now, category.handle_limit, category.handle_unit)
    ctx.event_data.update(
        handle_due_at=c.handle_due_at.isoformat(),
        handle_limit=category.handle_limit,
        handle_unit=category.handle_unit,
    )
    if c.satisfaction is not None:
        # The rating judged the closure this undoes: it stays in the timeline (its rate row,
        # and here), and the reporter rates the next closure (the indicators count a
        # closure's own rating only).
        ctx.event_data["earlier_score"] = c.satisfaction
        c.satisfaction = c.satisfaction_comment = c.rated_at = None
    return "filed"


def _supervise(ctx: TransitionContext, c: Case) -> str:
    level = ctx.data.get("level")
    if level not in ("normal", "yellow", "red"):
        raise Unprocessable(
            "Which supervision level?",
            errors={"json": {"level": ["one of normal, yellow, red"]}},
        )
    if SUPERVISION_RANK[level] < SUPERVISION_RANK[c.supervision]:
        from ..auth import Forbidden

        # A card (督办) judges the unit holding the case: that unit lifting it, or lowering
        # the worker's automatic one, undid the county's sanction on itself.
        if not is_office_above(ctx.caller, c):
            raise Forbidden(
                "A supervision level is lowered by an office above the unit holding the case."
            )
        # Nor does an office lift the card of one above it (the county the city's): every
        # card the lowering lifts must have been given inside the caller's area.
        for area in _card_givers_areas(ctx.session, c, above=SUPERVISION_RANK[level]):
            if area is not None and not ctx.caller.scope.covers_region(area or None):
                raise Forbidden(
                    "A supervision level is lowered by the office that set it or one above it."
                )
    ctx.event_data.update(level=level, previous=c.supervision)
    c.supervision = level
    if level != "normal":
        ctx.notify.append(
            Notice(f"supervision_{level}", f"事件 {c.number} 被督办", **those_handling(c))
        )
    return c.status


def _card_givers_areas(session: Session, c: Case, *, above: int) -> list[str | None]:
    """Return the areas of the accounts that gave the cards standing on the case above the
    rank ``above`` (what a lowering to that level lifts): each one's region, "" for an
    unrestricted account, None when no account gave it (the worker's automatic card, an
    app) or the account is gone.

    The cards are read from the timeline: a ``supervise`` step that raises the level gives
    a card, one that lowers it lifts those above its level (what is left of the card it
    lowers stays its giver's), one that keeps it changes nothing (a county that set the city's red card again did not make it its own to lift),
    and a reopen lifts them all. Only the last step was read: any office could take a card
    over so, and the county lift the city's."""
    events = session.execute(
        select(CaseEvent.action, CaseEvent.actor, CaseEvent.data)
        .where(CaseEvent.case_id == c.id, CaseEvent.action.in_(("supervise", "reopen")))
        .order_by(CaseEvent.seq)
    ).all()
    standing: list[tuple[int, str | None]] = []  # (rank, actor), lowest first
    for action, actor, data in events:
        if action == "reopen":
            standing.clear()
            continue
        rank = SUPERVISION_RANK.get((data or {}).get("level"), 0)
        if rank > (standing[-1][0] if standing else 0):
            standing.append((rank, actor))
            continue
        lifted = None
        while standing and standing[-1][0] > rank:
            lifted = standing.pop()
        if lifted is not None and rank > (standing[-1][0] if standing else 0):
            # A red card lowered to yellow: the yellow left is still its giver's.
            standing.append((rank, lifted[1]))
    givers = [
        int(actor[5:]) if actor and actor.startswith("user:") and actor[5:].isdigit() else None
        for rank, actor in standing
        if rank > above
    ]
    users = {user_id for user_id in givers if user_id is not None}
    regions: dict[int, str | None] = {}
    if users:
        rows = session.execute(select(User.id, User.region_code).where(User.id.in_(users)))
        regions = {user_id: region for user_id, region in rows}
    return [
        None if user_id is None or user_id not in regions else regions[user_id] or ""
        for user_id in givers
    ]


def _duplicate(ctx: TransitionContext, c: Case) -> str:
    other_id = ctx.data.get("duplicate_of")
    if not isinstance(other_id, int) or other_id == c.id:
        raise Unprocessable(
            "Duplicate of which case?",
            errors={"json": {"duplicate_of": ["the id of another case"]}},
        )
    try:
        # Locked as the case itself is: the worker (or another step) changing the original
        # meanwhile is waited for, and its timeline is counted on after it (read unlocked,
        # the step's update of the original met the worker's version: a 500).
        other = get_case(ctx.session, other_id, ctx.caller, for_update=True)
    except NotFound:
        raise Unprocessable(
            "Unknown case.", errors={"json": {"duplicate_of": [f"no case {other_id}"]}}
        ) from None
    if other.duplicate_of_id == c.id:
        raise Unprocessable(
            "That case is a duplicate of this one.",
            errors={"json": {"duplicate_of": [f"case {other.id} is a duplicate of this case"]}},
        )
    if other.duplicate_of_id is not None:
        # The case to use instead, named only to a caller who may read it.
        original = other.duplicate_of_id
        named = original in readable_cases(ctx.session, ctx.caller, [original])
        hint = f"use case {original}" if named else f"case {other.id} is itself a duplicate"
        raise Unprocessable(
            "That case is itself a duplicate.", errors={"json": {"duplicate_of": [hint]}}
        )
    if other.status in ("rejected", "cancelled"):
        # Nobody follows it up: the report would be closed on a case that is not handled.
        raise Unprocessable(
            f"That case is {other.status}.",
            errors={"json": {"duplicate_of": [f"case {other.id} is {other.status}"]}},
        )
    c.duplicate_of_id = other.id
    # Cancelled: nobody decides a request for more time on it.
    _withdraw_extension_request(ctx, c)
    # The original answers a new list of duplicates: a new version (ETag), so a phone that
    # holds it gets it again on its next sync.
    other.updated_at = ctx.now
    ctx.event_data["duplicate_of"] = other.id
    ctx.event_data["duplicate_of_number"] = other.number
    moved = ctx.session.execute(
        select(
            Case.id,
            Case.number,
            Case.county_code,
            Case.status,
            Case.responsible_region_code,
            select(func.max(CaseEvent.seq))
            .where(CaseEvent.case_id == Case.id)
            .scalar_subquery()
            .label("last_seq"),
        )
        .where(Case.duplicate_of_id == c.id)
        .order_by(Case.id)
    ).all()
    if moved:
        # The reports closed as duplicates of this case now repeat the case it repeats:
        # they pointed at a cancelled case nobody follows up, out of the original's reach.
        ctx.session.execute(
            update(Case)
            .where(Case.duplicate_of_id == c.id)
            .values(duplicate_of_id=other.id, version=Case.version + 1, updated_at=ctx.now)
        )
        ctx.event_data["moved_duplicates"] = [m.id for m in moved]
        # Each moved report's timeline says so (every change is a row): who, when, from
        # which original to which.
        ctx.session.execute(
            insert(CaseEvent),
            [
                {
                    "case_id": m.id,
                    "county_code": m.county_code,
                    "seq": (m.last_seq or 0) + 1,
                    "action": "duplicate_moved",
                    "from_status": m.status,
                    "to_status": m.status,
                    "actor": ctx.caller.actor,
                    "actor_name": ctx.caller.principal.name,
                    "at": ctx.now,
                    "comment": "",
                    "responsible_region_code": m.responsible_region_code,
                    "data": {
                        "from_original": c.id,
                        "from_original_number": c.number,
                        "duplicate_of": other.id,
                        "duplicate_of_number": other.number,
                    },
                    "evidence": [],
                }
                for m in moved
            ],
        )
    # And the original's: the reports now closed as its duplicates, this one first.
    add_event(
        ctx.session,
        other,
        next_seq(ctx.session, other.id),
        "duplicates_attached",
        other.status,
        ctx.caller.actor,
        ctx.caller.principal.name,
        ctx.now,
        data={
            "attached": [c.id, *(m.id for m in moved)],
            "attached_numbers": [c.number, *(m.number for m in moved)],
        },
    )
    return "cancelled"


def _cancel(ctx: TransitionContext, c: Case) -> str:
    return "cancelled"


APPLY = {
    "accept": _accept,
    "reject": _reject,
    "file": _file,
    "dispatch": _dispatch,
    "sign": _sign,
    "return": _return,
    "escalate": _escalate,
    "transfer": _transfer,
    "request_extension": _request_extension,
    "approve_extension": _approve_extension,
    "deny_extension": _deny_extension,
    "feedback": _feedback,
    "verify_pass": _verify_pass,
    "verify_fail": _verify_fail,
    "close": _close,
    "reopen": _reopen,
    "supervise": _supervise,
    "duplicate": _duplicate,
    "cancel": _cancel,
}
assert set(APPLY) == set(ACTIONS)


def reported_with_client_id(session: Session, principal: Principal, client_id: Any) -> Case | None:
    """Return the case the caller reported with ``client_id`` (a phone's UUID), if any."""
    if not client_id:
        return None
    return session.scalars(
        select(Case).where(Case.reporter == principal.actor_id, Case.client_id == str(client_id))
    ).first()


def timeline(session: Session, case_obj: Case, caller: Caller) -> list[dict[str, Any]]:
    """Return the case's timeline rows in order, as the caller is shown them: a case the
    rows' data name that the caller may not read is left out (``shown_event_data``), with
    one query for all the rows."""
    events = list(
        session.scalars(
            select(CaseEvent).where(CaseEvent.case_id == case_obj.id).order_by(CaseEvent.seq)
        )
    )
    readable = readable_cases(
        session, caller, (i for e in events for i in cases_named_in(e.data or {}))
    )
    return [
        {
            "seq": e.seq,
            "action": e.action,
            "from_status": e.from_status,
            "to_status": e.to_status,
            "actor": e.actor,
            "actor_name": e.actor_name,
            "at": e.at,
            "comment": e.comment,
            "responsible_region_code": e.responsible_region_code,
            "data": shown_event_data(e.data or {}, readable),
            "evidence": e.evidence,
        }
        for e in events
    ]


# Where a timeline row's data names other cases (the duplicate links): keys of one case's
# id, with the key of its number; keys of a list of ids, with the key of their numbers.
NAMES_A_CASE = {"duplicate_of": "duplicate_of_number", "from_original": "from_original_number"}
NAMES_CASES = {"attached": "attached_numbers", "moved_duplicates": None}


def cases_named_in(data: dict[str, Any]) -> set[int]:
    """Return the ids of the cases a timeline row's data names."""
    named = {data[key] for key in NAMES_A_CASE if isinstance(data.get(key), int)}
    for key in NAMES_CASES:
        named.update(i for i in data.get(key) or () if isinstance(i, int))
    return named


def shown_event_data(data: dict[str, Any], readable: Container[int]) -> dict[str, Any]:
    """Return a timeline row's data without the cases the caller may not read: such a
    case's id and number become null, and it leaves a list with its number. The same keys
    stay, so a row keeps its shape; the stored row is not changed."""
    if all(i in readable for i in cases_named_in(data)):
        return data
    shown = dict(data)
    for key, number_key in NAMES_A_CASE.items():
        if key in shown and shown[key] not in readable:
            shown[key] = None
            if number_key in shown:
                shown[number_key] = None
    for key, numbers_key in NAMES_CASES.items():
        ids = shown.get(key)
        if not isinstance(ids, list):
            continue
        keep = [n for n, i in enumerate(ids) if i in readable]
        shown[key] = [ids[n] for n in keep]
        numbers = shown.get(numbers_key) if numbers_key else None
        if numbers_key and isinstance(numbers, list):
            shown[numbers_key] = [numbers[n] for n in keep if n < len(numbers)]
    return shown


def office_over_duplicates(session: Session, case_obj: Case, duplicate_ids: list[int]) -> str:
    """Return the lowest unit over the one holding the case and those holding the reports
    closed as its duplicates (``duplicate_ids``): its office reads them all. It is the unit
    holding the case or one above it, never another unit."""
    own = case_obj.responsible_region_code
    codes = set(
        session.scalars(select(Case.responsible_region_code).where(Case.id.in_(duplicate_ids)))
    )
    for level in ("village", "township", "county", "city", "province"):
        width = LEVEL_PREFIX[level]
        prefix = own[:width]
        if all(code[:width] == prefix for code in codes):
            return prefix.ljust(12, "0")
    return own[:2].ljust(12, "0")


def duplicates_of(session: Session, case_obj: Case) -> list[int]:
    """Return the ids of the reports closed as duplicates of the case, in id order."""
    return duplicates_by_original(session, [case_obj.id])[case_obj.id]


@dataclass(frozen=True)
class DuplicateLinks:
    """The duplicate links of the cases of one answer, and which linked cases the caller
    may read.

    The workflow counts every report closed as a duplicate of a case (``READY``: such an
    original is not rejected or cancelled); an answer names only the linked cases the
    caller may read: a link to any other is left out, as a link to a case that does not
    exist would be.
    """

    by_original: dict[int, list[int]] = field(default_factory=dict)
    readable: frozenset[int] = frozenset()

    def duplicates(self, case_id: int) -> list[int]:
        """Return every report closed as a duplicate of the case (what the workflow counts)."""
        return self.by_original.get(case_id, [])

    def shown_duplicates(self, case_id: int) -> list[int]:
        """Return the reports closed as duplicates of the case that the caller may read."""
        return [d for d in self.duplicates(case_id) if d in self.readable]

    def shown_original(self, case_obj: Case) -> int | None:
        """Return the case this one repeats, if the caller may read it (else None)."""
        original = case_obj.duplicate_of_id
        return original if original in self.readable else None


def duplicate_links(
    session: Session,
    caller: Caller,
    cases: Sequence[Case],
    *,
    originals: Container[int] | None = None,
    known: dict[int, list[int]] | None = None,
) -> DuplicateLinks:
    """Return the duplicate links of the cases and which of the linked cases the caller may
    read: the duplicates in one query, their readability and that of the originals in one
    more, only when there are links at all.

    ``originals``: the cases known to be the only ones with duplicates (a page of
    ``list_cases`` says which); the duplicates are then read for those alone, and not at
    all when there are none. ``known``: the duplicates of every one of the cases, read
    already (a step's, ``Stepped``), not read again."""
    ids = [c.id for c in cases]
    if known is not None:
        by_original = {i: list(known[i]) for i in ids}
    elif originals is not None:
        with_some = [i for i in ids if i in originals]
        by_original = {i: [] for i in ids} | duplicates_by_original(session, with_some)
    else:
        by_original = duplicates_by_original(session, ids)
    linked = {d for found in by_original.values() for d in found}
    linked.update(c.duplicate_of_id for c in cases if c.duplicate_of_id is not None)
    return DuplicateLinks(by_original, frozenset(readable_cases(session, caller, linked)))


def duplicates_by_original(session: Session, case_ids: list[int]) -> dict[int, list[int]]:
    """Return the duplicates of each case (``duplicates_of``), for many cases in one query."""
    found: dict[int, list[int]] = {case_id: [] for case_id in case_ids}
    if not found:
        return found
    rows = session.execute(
        select(Case.id, Case.duplicate_of_id)
        .where(Case.duplicate_of_id.in_(list(found)))
        .order_by(Case.id)
    )
    for duplicate_id, original_id in rows:
        found[original_id].append(duplicate_id)
    return found


def rate(
    session: Session, case_id: int, caller: Caller, score: int, comment: str, now: datetime
) -> Case:
    """Record the reporter's satisfaction (1-5) with a closed case, once per closure (a
    reopen clears it). Raises Forbidden (not the reporter or an app of their area) and
    Conflict (not closed, or rated already)."""
    from ..auth import Forbidden

    case_obj = get_case(session, case_id, caller, for_update=True)
    reporter = case_obj.reporter == caller.actor
    hotline = caller.principal.kind == "client" and caller.scope.covers_region(case_obj.region_code)
    if not (reporter or hotline):
        raise Forbidden("Only the reporter, or an app on their behalf, rates a case.")
    if case_obj.status != "closed":
        raise Conflict("Only a closed case can be rated.", errors={"status": [case_obj.status]})
    if case_obj.satisfaction is not None:
        raise Conflict("The case has been rated already.", errors={"satisfaction": ["rated"]})
    case_obj.satisfaction = score
    case_obj.satisfaction_comment = comment
    case_obj.rated_at = now
    case_obj.updated_at = now
    add_event(
        session,
        case_obj,
        next_seq(session, case_obj.id),
        "rate",
        "closed",
        caller.actor,
        caller.principal.name,
        now,
        comment=comment,
        data={"score": score},
    )
    session.flush()
    return case_obj


# --- lists and queues -------------------------------------------------------------------------

SORTS = {
    "-reported_at": (Case.reported_at, True),
    "reported_at": (Case.reported_at, False),
    "-updated_at": (Case.updated_at, True),
    "updated_at": (Case.updated_at, False),
}


#: What a cursor does not depend on: the page's size and the fields shown.
_NOT_OF_THE_QUERY = frozenset({"cursor", "limit", "fields"})


def query_tag(args: dict[str, Any]) -> str:
    """Return a short digest of the sort and the filters of a list query: a cursor carries
    it, and is refused under another (a cursor of ``sort=reported_at`` used with
    ``sort=-reported_at`` answered an empty page, and one of ``status=closed`` paged
    ``status=reported`` from a place in another list)."""
    named = {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in args.items()
        if k not in _NOT_OF_THE_QUERY and v is not None
    }
    named.setdefault("sort", "-reported_at")
    raw = json.dumps(named, sort_keys=True, default=str).encode()
    return hashlib.blake2b(raw, digest_size=6).hexdigest()


def region_filter(code: str) -> ColumnElement[bool]:
    """Return the condition 'located in the subtree of region ``code``'."""
    try:
        level = region_level(code)
    except InvalidCode as exc:
        raise Unprocessable("Invalid region.", errors={"query": {"region": [str(exc)]}}) from None
    if level == "township":
        return Case.township_code == code
    if level == "county":
        return Case.county_code == code[:6]
    if level == "village":
        return Case.region_code == code
    return Case.region_code.startswith(subtree_prefix(code), autoescape=True)


def case_conditions(caller: Caller, args: dict[str, Any]) -> list[ColumnElement[bool]]:
    """Return the conditions 'visible to the caller and matching the list filters in
    ``args``' (shared by the list and the export, so both answer the same rows)."""
    region = args.get("region")
    inside = bool(region) and caller.scope.covers_region(region)
    conditions: list[ColumnElement[bool]] = [visible_condition(caller, location_in_scope=inside)]
    if args.get("status"):
        conditions.append(Case.status.in_(args["status"]))
    if args.get("open") is True:
        conditions.append(text(OPEN_SQL))
    elif args.get("open") is False:
        conditions.append(Case.status.in_(TERMINAL))
    if args.get("category"):
        code = args["category"]
        conditions.append(
            Case.category_code == code
            if len(code) == 4
            else Case.category_code.startswith(code, autoescape=True)
        )
    if args.get("region"):
        conditions.append(region_filter(args["region"]))
    if args.get("grid"):
        conditions.append(Case.grid_code == args["grid"])
    if args.get("from"):
        conditions.append(Case.reported_at >= args["from"])
    if args.get("to"):
        conditions.append(Case.reported_at < args["to"])
    if args.get("overdue") is not None:
        conditions.append(Case.overdue.is_(args["overdue"]))
    if args.get("supervision"):
        conditions.append(Case.supervision == args["supervision"])
    if args.get("assignee") is not None:
        assignee = args["assignee"]
        if assignee == "me":
            assignee = caller.principal.id if caller.principal.kind == "user" else -1
        conditions.append(Case.assignee_id == int(assignee))
    if args.get("unrouted") is not None:
        conditions.append(Case.unrouted.is_(args["unrouted"]))
    if args.get("source"):
        conditions.append(Case.source == args["source"])
    if args.get("bbox"):
        west, south, east, north = args["bbox"]
        conditions.append(and_(Case.lon.between(west, east), Case.lat.between(south, north)))
    if args.get("queue"):
        # Exactly the cases the queue's count counts (``queue_conditions``); a queue the
        # caller does not work (it is not among their counts) holds nothing for them.
        worked = queue_conditions(caller)
        conditions.append(
            and_(text(OPEN_SQL), worked[args["queue"]][1]) if args["queue"] in worked else false()
        )
    if args.get("q"):
        # The text as written: % and _ are characters to find, not LIKE's wildcards. The
        # words are lowered by the database, as the columns are: Python's lower() is not
        # PostgreSQL's ("ΟΔΟΣ" ends in ς in one and σ in the other, "İ" is i with a dot or
        # i), and a text lowered by one was not found in a column lowered by the other.
        q = args["q"]
        pattern = func.lower(literal(f"%{_like_escaped(q)}%"))
        conditions.append(
            or_(
                func.lower(Case.description).like(pattern, escape=LIKE_ESCAPE),
                func.lower(Case.address).like(pattern, escape=LIKE_ESCAPE),
                Case.number.contains(q, autoescape=True),
            )
        )
    return conditions


#: The escape character of the text search's patterns (SQLAlchemy's ``autoescape`` uses it).
LIKE_ESCAPE = "/"


def _like_escaped(text_as_written: str) -> str:
    """Return ``text_as_written`` for a LIKE pattern escaped with ``LIKE_ESCAPE``: its
    ``%``, ``_`` and escape characters are characters to find (lowering leaves them so)."""
    return "".join(LIKE_ESCAPE + ch if ch in "%_" + LIKE_ESCAPE else ch for ch in text_as_written)


class Page(NamedTuple):
    """A page of ``list_cases``: the cases, the cursor of the next page (None on the last),
    the names of their categories by code, and the ids of those of them that have reports
    closed as their duplicates (``duplicate_links``' ``originals``)."""

    cases: list[Case]
    cursor: str | None
    category_names: dict[str, str]
    originals: frozenset[int]


def list_cases(session: Session, caller: Caller, args: dict[str, Any]) -> Page:
    """Return a page of visible cases matching the filters (``Page``).

    One statement: the page's cases (without their geometry, which a case's view does not
    read: its ``lon`` and ``lat`` say where it is), the name of each one's category and
    whether it has duplicates, each by a subquery per row of the page (a primary-key and a
    partial-index probe), where two more round trips asked for them by the page's ids.
    """
    conditions = case_conditions(caller, args)
    column, descending = SORTS[args.get("sort") or "-reported_at"]
    tag = query_tag(args)
    if args.get("cursor"):
        place = decode_cursor(args["cursor"])
        # A cursor written before cursors carried the tag is taken.
        if place.tag not in (None, tag):
            raise another_list("another sort or filters")
        value, last_id = place.moment, place.row_id
        # A row comparison: one index range, however deep the page.
        if descending:
            conditions.append(tuple_(column, Case.id) < tuple_(value, last_id))
        else:
            conditions.append(tuple_(column, Case.id) > tuple_(value, last_id))
    order = (column.desc(), Case.id.desc()) if descending else (column.asc(), Case.id.asc())
    limit = args.get("limit", 50)
    stmt = (
        select(Case, _CATEGORY_NAME, _HAS_DUPLICATES)
        .options(defer(Case.location))
        .where(*conditions)
        .order_by(*order)
        .limit(limit + 1)
    )
    found = session.execute(stmt).all()
    cursor = None
    if len(found) > limit:
        found = found[:limit]
        last = found[-1][0]
        cursor = encode_cursor(getattr(last, column.key), last.id, tag=tag)
    return Page(
        [c for c, _, _ in found],
        cursor,
        {c.category_code: name for c, name, _ in found if name is not None},
        frozenset(c.id for c, _, has in found if has),
    )


_DUPLICATE = aliased(Case, name="duplicate")
#: A listed case's category name, and whether reports were closed as its duplicates.
_CATEGORY_NAME = (
    select(Category.name)
    .where(Category.code == Case.category_code)
    .correlate(Case)
    .scalar_subquery()
    .label("category_name")
)
# A scalar subquery, not EXISTS: PostgreSQL may run an EXISTS as a hash of every case's
# duplicate_of_id, built by reading the whole table (70 ms at 100,000 cases), where this is a
# probe of the partial index ix_cases_duplicate_of per row of the page.
_HAS_DUPLICATES = (
    select(_DUPLICATE.id)
    .where(_DUPLICATE.duplicate_of_id == Case.id, _DUPLICATE.duplicate_of_id.is_not(None))
    .correlate(Case)
    .limit(1)
    .scalar_subquery()
    .is_not(None)
    .label("has_duplicates")
)


def queue_conditions(caller: Caller) -> dict[str, tuple[str, ColumnElement[bool]]]:
    """Return the queues the caller works, in order, each with its title and the condition
    'an open case the caller may see is in it' (open and visible are the caller's to add).

    One definition for the counts (``queues``) and the list filter (``queue``), so a count
    opened as a list shows exactly the cases counted. Office queues need an office (an area
    covering the unit holding the case, and ``cases:dispatch``): a department member or a
    worker holds only what was dispatched to them; a grid chief verifies in their grids.
    Each work queue only for callers with the permission of its next step; 超期 for all.
    """
    scope = caller.scope
    office: ColumnElement[bool] = false()
    if caller.principal.can("cases:dispatch"):
        office = scope.region_condition(Case.responsible_region_code)
    holder_parts: list[ColumnElement[bool]] = [office]
    if caller.principal.kind == "user":
        holder_parts.append(Case.assignee_id == caller.principal.id)
    if caller.department_id is not None:
        holder_parts.append(Case.department_id == caller.department_id)
    holder = or_(*holder_parts)
    verifier = office
    if scope.grid_codes:
        verifier = or_(office, Case.grid_code.in_(sorted(scope.grid_codes)))
    # Not the cases the caller handled: a handler does not verify its own work (may_act).
    # (Compared with 0 for none, so that a case without a handler is not left out.)
    if caller.principal.kind == "user":
        verifier = and_(verifier, func.coalesce(Case.assignee_id, 0) != caller.principal.id)
    if caller.department_id is not None:
        verifier = and_(verifier, func.coalesce(Case.department_id, 0) != caller.department_id)
    found: dict[str, tuple[str, ColumnElement[bool]]] = {}
    for name, title, statuses, permission in QUEUES:
        if not caller.principal.can(permission):
            continue
        where = {"handle": holder, "verify": verifier}.get(name, office)
        found[name] = (title, and_(Case.status.in_(statuses), where))
    found["overdue"] = ("超期", Case.overdue.is_(True))
    return found


def queues(session: Session, caller: Caller) -> list[dict[str, Any]]:
    """Return the caller's work queues with their counts (only queues the caller works)."""
    worked = queue_conditions(caller)
    columns = [func.sum(case((where, 1), else_=0)) for _, where in worked.values()]
    row = session.execute(select(*columns).where(text(OPEN_SQL), visible_condition(caller))).one()
    return [
        {"queue": name, "name": title, "count": int(count or 0)}
        for (name, (title, _)), count in zip(worked.items(), row, strict=True)
    ]


def grid_names(session: Session, grids: Iterable[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Return the names of grids by (code, version id)."""
    wanted = sorted(set(grids))
    if not wanted:
        return {}
    rows = session.execute(
        select(Grid.code, Grid.version_id, Grid.name).where(
            tuple_(Grid.code, Grid.version_id).in_(wanted)
        )
    ).all()
    return {(code, version_id): name for code, version_id, name in rows}


def region_names(session: Session, codes: Iterable[str | None]) -> dict[str, str]:
    """Return the names of the regions ``codes`` as they are called today; a region that
    has ended keeps its last name (an old case's community), one not begun its first.

    Not the period without an end: a region renamed from a later day (``effective_from``)
    has that one already, and one with a planned end has none."""
    wanted = sorted({c for c in codes if c})
    if not wanted:
        return {}
    rows = session.execute(
        select(Region.code, Region.name, Region.valid_from, Region.valid_to).where(
            Region.code.in_(wanted)
        )
    ).all()
    today = clock.today()
    best: dict[str, tuple[tuple[int, int], str]] = {}
    for code, name, start, end in rows:
        if (start is None or start <= today) and (end is None or end >= today):
            rank = (0, 0)
        elif end is not None and end < today:
            rank = (1, -end.toordinal())  # ended: the latest period
        else:
            rank = (2, start.toordinal())  # not begun: the earliest
        if code not in best or rank < best[code][0]:
            best[code] = (rank, name)
    return {code: name for code, (_, name) in best.items()}
