"""Cases over HTTP: report (idempotent), read, list, queues, workflow transitions, timeline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from flask.views import MethodView
from sqlalchemy.exc import IntegrityError

from ..auditing import audit, request_actor
from ..auth import Forbidden, current_principal
from ..db import writes
from ..extensions import commit, commit_adds_nothing, db_session, state
from ..geo.geodesy import distance_m
from ..geo.shapes import geojson_point
from ..jsonio import dumps_bytes
from ..limits import count_lookup
from ..models import Case, Category
from ..phone import DATE_HEADER
from ..purposes import purpose_summary
from ..schemas.cases import (
    CaseCreateSchema,
    CaseListSchema,
    CasePartiesSchema,
    CaseQueryArgsSchema,
    CaseSchema,
    QueuesSchema,
    RatingSchema,
    TimelineSchema,
    TransitionSchema,
)
from ..schemas.register import PurposeArgsSchema
from ..services import cases as svc
from ..services import idempotency, intake
from ..services import register as register_svc
from ..services.audit import record
from ..services.preconditions import etag
from .blueprint import (
    IDEMPOTENCY_HEADER,
    NO_STORE,
    NO_STORE_HEADER,
    Blueprint,
    etag_header,
    if_match_header,
    routing_snapshot,
)
from .retries import Keyed, replayed, replays_before_validation, with_version_etag

blp = Blueprint(
    "cases",
    __name__,
    url_prefix="/api/v1/cases",
    description="Cases (事件): report from a phone or an app, route to a grid, and carry "
    "through filing, dispatch, handling, verification and closure on working-day deadlines.",
)

_IF_MATCH_HEADER = if_match_header(
    "The case's ETag from the last read, as it came (a compressed answer's ends in `:gzip`). "
    "Without it → 428; stale → 412, unless the only changes since were other reports attached "
    "to the case as its duplicates: then the step is taken, judged on the case as it is now "
    "(a reject or cancel refused for those duplicates, 409).",
    example='"42-3"',
    required=True,
)
_ETAG = etag_header(
    '`"<id>-<version>"`: the value to send as If-Match with the next change of the case '
    "(required there: 428 without it, 412 when the case changed since)."
)


# What a phone gets back for a report (the answer of POST /api/v1/cases; a read and a step
# answer the same shape, without possible_duplicates).
CASE_EXAMPLE: dict[str, Any] = {
    "id": 812,
    "number": "320508-20261128-0042",
    "status": "reported",
    "status_name": "已上报",
    "category": {"code": "0101", "name": "暴露垃圾"},
    "description": "小区门口垃圾堆放，已有异味",
    "source": "phone",
    "urgent": False,
    "severity": "general",
    "sensitive": False,
    "parties": [],
    "attributes": {},
    "location": {"type": "Point", "coordinates": [120.6279, 31.3245]},
    "reported_location": {"coordinates": [120.63234, 31.32246], "crs": "gcj02"},
    "accuracy_m": 8.5,
    "address": "平江路 118 号东侧",
    "occurred_at": "2026-11-28T09:12:00+08:00",
    "reported_at": "2026-11-28T09:30:05+08:00",
    "updated_at": "2026-11-28T09:30:05+08:00",
    "grid": {"code": "320508001001003", "name": "平江社区第三网格", "version_id": 3},
    "community": {"code": "320508001001", "name": "平江社区"},
    "township": {"code": "320508001000", "name": "平江街道"},
    "county_code": "320508",
    "region_code": "320508001001",
    "routing": {"method": "inside", "distance_m": None, "unrouted": False, "grid_version_id": 3},
    "responsible": {
        "unit": {"code": "320508001001", "name": "平江社区"},
        "assignee_id": None,
        "department_id": None,
    },
    "deadlines": {"accept": "2026-11-28T11:30:05+08:00", "handle": None, "verify": None},
    "overdue": False,
    "overdue_since": None,
    "supervision": "normal",
    "rework_count": 0,
    "extension_count": 0,
    "escalation_count": 0,
    "reopen_count": 0,
    "extension_request": None,
    "duplicate_of": None,
    "duplicates": [],
    "satisfaction": None,
    "client_id": "3f0c9a52-6d1e-4a8b-9c1d-2b7e5f4a9e10",
    "reporter": "user:17",
    "version": 1,
    "allowed_actions": [],
    "possible_duplicates": [
        {
            "id": 809,
            "number": "320508-20261128-0039",
            "status": "accepted",
            "distance_m": 12.4,
            "reported_at": "2026-11-28T08:51:40+08:00",
        }
    ],
}


def _now() -> datetime:
    return datetime.now(UTC)


#: What a report's members left out mean: a retry that sends them is the same request.
REPORT_DEFAULTS = idempotency.schema_defaults(CaseCreateSchema)
#: A report's date-times (``occurred_at``): the same instant written otherwise is the same.
REPORT_INSTANTS = idempotency.schema_instants(CaseCreateSchema)

#: The columns ``case_view`` reads (every one but the geometry: ``lon`` and ``lat`` say where).
_VIEWED = frozenset(c.key for c in Case.__table__.columns) - {"location"}


def _as_read(case_obj: Any) -> Any:
    """Return the case's columns as a plain object when every one the view reads is loaded
    (a list's cases, a case just read): reading a plain attribute costs a tenth of what the
    ORM's descriptor does, 55 times per case. A case with a column expired (after a flush
    that the database filled in) is returned as it is, to load it."""
    loaded = case_obj.__dict__
    return intake.Row(loaded) if loaded.keys() >= _VIEWED else case_obj


def case_view(
    case_obj: Case,
    caller: svc.Caller,
    names: dict[str, str],
    *,
    category_name: str | None = None,
    links: svc.DuplicateLinks,
    with_duplicates: bool = True,
) -> dict[str, Any]:
    """Return the API representation of a case for ``caller``.

    ``links``: the duplicate links of the answer's cases (``svc.duplicate_links``). The
    actions offered depend on all the reports closed as duplicates of the case; the view
    names only the linked cases the caller may read (``duplicate_of`` is null for an
    original it may not read) and lists the duplicates unless ``with_duplicates`` is false
    (a list's items).
    """
    c = _as_read(case_obj)
    community = c.region_code if c.grid_code or len(c.region_code) == 12 else None
    if community and community[9:] == "000":
        community = None  # an intake region above the community level
    township = c.township_code
    grid = None
    if c.grid_code:
        grid = {
            "code": c.grid_code,
            "name": names.get(grid_key(c.grid_code, c.grid_version_id)),
            "version_id": c.grid_version_id,
        }
    satisfaction = None
    if c.satisfaction is not None:
        satisfaction = {
            "score": c.satisfaction,
            "comment": c.satisfaction_comment,
            "rated_at": c.rated_at,
        }
    view = {
        "id": c.id,
        "number": c.number,
        "status": c.status,
        "status_name": svc.STATUS_NAMES[c.status],
        "category": {"code": c.category_code, "name": category_name},
        "description": c.description,
        "source": c.source,
        "urgent": c.urgent,
        "severity": c.severity,
        "sensitive": c.sensitive,
        "parties": svc.masked_parties(c.parties),
        "attributes": c.attributes or {},
        "location": geojson_point(c.lon, c.lat),
        "reported_location": {"coordinates": [c.raw_lon, c.raw_lat], "crs": c.crs},
        "accuracy_m": c.accuracy_m,
        "address": c.address,
        "occurred_at": c.occurred_at,
        "reported_at": c.reported_at,
        "updated_at": c.updated_at,
        "grid": grid,
        "community": {"code": community, "name": names.get(community)} if community else None,
        "township": {"code": township, "name": names.get(township)} if township else None,
        "county_code": c.county_code,
        "region_code": c.region_code,
        "routing": {
            "method": c.routing_method,
            "distance_m": c.snap_distance_m,
            "unrouted": c.unrouted,
            "grid_version_id": c.grid_version_id,
        },
        "responsible": {
            "unit": {
                "code": c.responsible_region_code,
                "name": names.get(c.responsible_region_code),
            },
            "department_id": c.department_id,
            "assignee_id": c.assignee_id,
        },
        "deadlines": {
            "accept": c.accept_due_at,
            "handle": c.handle_due_at,
            "verify": c.verify_due_at,
        },
        "overdue": c.overdue,
        "overdue_since": c.overdue_since,
        "supervision": c.supervision,
        "rework_count": c.rework_count,
        "extension_count": c.extension_count,
        "escalation_count": c.escalation_count,
        "reopen_count": c.reopen_count,
        "extension_request": c.extension_request,
        "duplicate_of": links.shown_original(c),
        "satisfaction": satisfaction,
        "client_id": c.client_id,
        "reporter": c.reporter,
        "version": c.version,
        "allowed_actions": svc.allowed_actions(caller, case_obj, links.duplicates(c.id)),
    }
    if with_duplicates:
        view["duplicates"] = links.shown_duplicates(c.id)
    return view


# What the answer of a step that leaves the case out of the caller's reach withholds, and
# the value it shows instead (of the documented type: the schema's fields stay present).
WITHHELD: dict[str, Any] = {
    "description": "",
    "parties": [],
    "attributes": {},
    "location": geojson_point(0.0, 0.0),
    "reported_location": {"coordinates": [0.0, 0.0], "crs": "wgs84"},
    "accuracy_m": None,
    "address": "",
    "occurred_at": None,
    "extension_request": None,
    "satisfaction": None,
    "client_id": None,
    "reporter": "",
}


def out_of_reach_view(view: dict[str, Any]) -> dict[str, Any]:
    """Return the answer of a step after which the caller may no longer read the case (a
    handler returning or escalating a sensitive case, an office escalating one above its
    area): the workflow facts the step made (status, the unit holding it now, deadlines,
    counters, version), and the case's contents withheld as ``WITHHELD`` says, named in
    ``withheld``. Its read now answers 404; the full case in this answer was kept on a phone
    that may not read it."""
    return {**view, **WITHHELD, "duplicates": [], "withheld": sorted(WITHHELD)}


blp.takes_routing_snapshot()


def _names_for(session, cases: list[Case]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Return the names of the regions and grids the cases mention, by code."""
    codes: set[str | None] = set()
    for c in cases:
        codes.update((c.region_code, c.township_code, c.responsible_region_code))
    snapshot = routing_snapshot()
    # Region names come from the routing snapshot's copy of the tree (refreshed with it);
    # only codes it does not know are read from the database.
    names: dict[str, str] = {}
    for code in codes:
        known = snapshot.regions.get(code) if code else None
        if known is not None:
            names[code] = known["api"]["name"]
    missing = {c for c in codes if c and c not in names}
    if missing:
        names.update(svc.region_names(session, missing))
    # A grid's name is its version's: a code reissued by a later version names another area
    # (an old case showed the new grid's name). The grids in service answer most of them.
    older: set[tuple[str, int]] = set()
    for c in cases:
        if c.grid_code:
            name = snapshot.grid_name(c.grid_code, c.grid_version_id)
            if name:
                names[grid_key(c.grid_code, c.grid_version_id)] = name
            elif c.grid_version_id is not None:
                older.add((c.grid_code, c.grid_version_id))
    for (code, version_id), name in svc.grid_names(session, older).items():
        names[grid_key(code, version_id)] = name
    return names


def grid_key(code: str, version_id: int | None) -> str:
    """The key of a grid's name in ``_names_for``'s answer: its code in its version."""
    return f"grid:{code}:{version_id}"


def _category_names(session, cases: list[Case]) -> dict[str, str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    codes = sorted({c.category_code for c in cases})
    if not codes:
        return {}
    return dict(
        session.execute(select(Category.code, Category.name).where(Category.code.in_(codes))).all()
    )


def render(  # type: ignore[no-untyped-def]
    session,
    caller: svc.Caller,
    case_obj: Case,
    *,
    full: bool = True,
    category_name: str | None = None,
    originals: frozenset[int] | None = None,
    duplicates: list[int] | None = None,
) -> dict[str, Any]:
    """Return the case's view. ``category_name`` and its duplicates are read unless given:
    ``originals`` says whether it has some (``svc.read_case``), ``duplicates`` which
    (``svc.transition``)."""
    names = _names_for(session, [case_obj])
    if category_name is None:
        # By its key: no statement when the request has read the category already.
        category = session.get(Category, case_obj.category_code)
        category_name = category.name if category is not None else None
    return case_view(
        case_obj,
        caller,
        names,
        category_name=category_name,
        links=svc.duplicate_links(
            session,
            caller,
            [case_obj],
            originals=originals,
            known=None if duplicates is None else {case_obj.id: duplicates},
        ),
        with_duplicates=full,
    )


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps_bytes(body), status=status, mimetype="application/json", headers=headers)


def _report_hash(body: Any, client_id: uuid.UUID | None) -> idempotency.RequestHash:
    """Return the hash of a report's body with its ``client_id`` as read: the UUID in its
    canonical form (iOS writes upper case, the answer gives it back in lower case, and a
    replay may send either), the nil UUID as none (as leaving it out: a retry that wrote it
    otherwise was 422 "reused"). Keys stored before the nil UUID was read so still match
    (``RequestHash.as_sent``)."""
    if not isinstance(body, dict) or body.get("client_id") is None:
        return idempotency.request_hash(
            "POST", request.path, body, defaults=REPORT_DEFAULTS, instants=REPORT_INSTANTS
        )
    read = {**body, "client_id": str(client_id) if client_id else None}
    found = idempotency.request_hash(
        "POST", request.path, read, defaults=REPORT_DEFAULTS, instants=REPORT_INSTANTS
    )
    if client_id is None:
        found.as_sent = idempotency.request_hash(
            "POST", request.path, body, defaults=REPORT_DEFAULTS, instants=REPORT_INSTANTS
        )
    return found


def _report_of_request() -> Keyed | None:
    """Return a report's keys and hash read from its body as sent, as ``Cases.post`` makes
    them from the body as read (``replays_before_validation``); None when it sent none."""
    key = idempotency.parse_header(request.headers.get("Idempotency-Key"))
    keys = [f"key:{key}"] if key else []
    body = request.get_json(silent=True)
    sent = body.get("client_id") if isinstance(body, dict) else None
    try:
        client_id = uuid.UUID(sent) if isinstance(sent, str) else None
    except ValueError:
        return None  # no UUID: the body's error is the answer
    if client_id is not None and not client_id.int:
        client_id = None  # the nil UUID: none
    if client_id is not None:
        keys.append(f"client_id:{client_id}")
    return Keyed(keys, _report_hash(body, client_id)) if keys else None


@blp.route("")
class Cases(MethodView):
    @blp.requires("cases:write")
    @replays_before_validation(_report_of_request, with_version_etag)
    @blp.arguments(CaseCreateSchema)
    @blp.doc(parameters=[IDEMPOTENCY_HEADER, DATE_HEADER])
    @blp.response(201, CaseSchema, headers=_ETAG, example=CASE_EXAMPLE)
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="A request with the same Idempotency-Key or client_id is still running: "
        "retry after Retry-After seconds (the retry gets its answer).",
    )
    @blp.alt_response(
        200,
        schema=CaseSchema,
        description="The caller reported this client_id before, longer ago than its answer is "
        "kept (GRIDAPI_IDEMPOTENCY_DAYS): the case as it is now, with "
        "`Idempotent-Replayed: true` and its ETag; nothing is created.",
        headers=_ETAG,
    )
    def post(self, data):
        """Report a case

        Routed to the grid covering the point (GCJ-02 and BD-09 converted first); a point no
        grid covers is never rejected: it goes to the intake queue of the smallest region
        holding it (or the reporter's community), flagged `unrouted`. The answer carries the
        readable number, the grid and its version, the community and township, how it was
        routed, the acceptance deadline and any `possible_duplicates` nearby.

        Safe to retry: send an `Idempotency-Key` header and/or the phone's `client_id`.
        """
        principal = current_principal()
        assert principal is not None
        session = db_session()
        st = state()
        key = idempotency.parse_header(request.headers.get("Idempotency-Key"))
        keys = [f"key:{key}"] if key else []
        if data.get("client_id"):
            keys.append(f"client_id:{data['client_id']}")
        caller = svc.Caller(principal)

        def respond(case, duplicates, category) -> str:  # type: ignore[no-untyped-def]
            # A new report: no other report is a duplicate of it yet.
            view = case_view(
                case,
                caller,
                _names_for(session, [case]),
                category_name=category.name,
                links=svc.DuplicateLinks(),
            )
            view["possible_duplicates"] = [
                {
                    "id": d.id,
                    "number": d.number,
                    "status": d.status,
                    "distance_m": round(distance_m(case.lon, case.lat, d.lon, d.lat), 1),
                    "reported_at": d.reported_at,
                }
                for d in duplicates
            ]
            # The view is in the documented shape (tests load it with CaseSchema): encoded as is.
            return dumps_bytes(view).decode()

        try:
            taken = intake.report_once(
                session,
                data,
                principal=principal,
                actor=request_actor(),
                keys=keys,
                body_hash=_report_hash(request.get_json(), data.get("client_id")),
                path=request.path,
                snapshot=routing_snapshot(),
                calendar=st.calendar(session),
                now=_now(),
                duplicate_window_hours=st.settings.duplicate_window_hours,
                keep_days=st.settings.idempotency_days,
                respond=respond,
                alone=commit_adds_nothing(),
            )
        except IntegrityError:
            session.rollback()
            earlier = svc.reported_with_client_id(session, principal, data.get("client_id"))
            if earlier is None:
                raise
            # The client_id is the caller's for ever; its stored answer is kept
            # GRIDAPI_IDEMPOTENCY_DAYS. A phone replaying an older queue gets the case as it
            # is now, never a second one, nor a bare 409.
            caller = svc.caller_of(session, principal)
            headers = {"Idempotent-Replayed": "true", "ETag": etag(earlier)}
            return _json(render(session, caller, earlier), 200, headers)
        if taken.replayed:
            session.rollback()
            return with_version_etag(replayed(taken.payload, taken.status_code))
        commit()
        return Response(
            taken.payload,
            status=taken.status_code,
            mimetype="application/json",
            headers={"ETag": taken.etag},
        )

    @blp.requires("cases:read")
    @blp.arguments(CaseQueryArgsSchema, location="query")
    @blp.response(200, CaseListSchema)
    def get(self, args):
        """List cases

        Only cases the caller may see (by area scope, or that they reported or hold). Keyset
        pagination: pass `next_cursor` back as `cursor`. `queue` opens a count of
        `GET /api/v1/cases/queues` as the list of exactly the cases it counts.
        """
        principal = current_principal()
        session = db_session()
        caller = svc.caller_of(session, principal)
        if "from_" in args:
            args["from"] = args.pop("from_")
        page = svc.list_cases(session, caller, args)
        names = _names_for(session, page.cases)
        links = svc.duplicate_links(session, caller, page.cases, originals=page.originals)
        items = [
            case_view(
                c,
                caller,
                names,
                category_name=page.category_names.get(c.category_code),
                links=links,
                with_duplicates=False,
            )
            for c in page.cases
        ]
        # The view dicts are in the documented shape already: encoded directly, a page costs
        # a third of what a schema dump of 50 cases does.
        return _json({"items": items, "next_cursor": page.cursor}, 200)


@blp.route("/queues")
class Queues(MethodView):
    @blp.requires("cases:read")
    @blp.response(200, QueuesSchema)
    def get(self):
        """Count the caller's work queues

        待受理 intake, 待派遣 dispatch, 待处理 handle, 待核查 verify, 待结案 close (each only
        for callers who take that step) and 超期 overdue, over the cases the caller may see.
        `GET /api/v1/cases?queue=<queue>` lists the cases a count counts.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        return {"items": svc.queues(session, caller)}


@blp.route("/<id:case_id>")
class CaseById(MethodView):
    @blp.requires("cases:read")
    @blp.response(200, CaseSchema, headers=_ETAG)
    def get(self, case_id):
        """Get a case, with the actions the caller may take now and its ETag

        Returns the full case: number, status, category, location (canonical WGS-84 and as reported,
        with its system and accuracy), grid and version, community, township, how it was routed, the
        responsible unit, department and assignee, the deadline of each stage, overdue and
        supervision flags, the rework, extension, escalation and reopen counters, the rating and the
        ids of duplicates. `allowed_actions` lists the workflow actions the caller may take now, so
        an app shows only the buttons that will work. The `ETag` header is the value to send as
        `If-Match` with a transition. Needs `cases:read`; a case the caller may not see (outside
        their scope, or sensitive and not theirs) answers 404 exactly like one that does not exist.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        read = svc.read_case(session, case_id, caller)
        view = render(
            session,
            caller,
            read.case,
            category_name=read.category_name,
            originals=read.originals,
        )
        return view, 200, {"ETag": etag(read.case)}


@blp.route("/<id:case_id>/transitions")
class Transitions(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(TransitionSchema)
    @blp.doc(parameters=[_IF_MATCH_HEADER])
    @blp.response(200, CaseSchema, headers=_ETAG)
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="The current state does not allow the action: `errors.allowed_actions` "
        "lists those the caller may take now. A reject or cancel refused because other "
        "reports are closed as duplicates of the case: `errors.duplicates` (those you may "
        "read), `errors.hidden_duplicates` (how many you may not) and, when there are such, "
        "`errors.ask_unit` (the unit whose office reads them all).",
    )
    def post(self, data, case_id):
        """Take a workflow action on a case

        Each action needs its own permission (`cases:<action>`; approve/deny_extension need
        `cases:decide_extension`, verify_pass/verify_fail `cases:verify`) and a case the
        caller may act on: office steps need the unit holding the case in the caller's
        scope; sign, return, feedback and request_extension also suit its assignee or a
        member of its department. The handler does not verify its own work, an extension
        is approved by someone other than who asked for it, and a supervision level is
        lowered only by an office above the unit holding the case (403 otherwise). An
        action the current state does not allow → 409 with
        `errors.allowed_actions`. A field only another action takes (not null) → 422 naming
        it. Needs `If-Match` (428 without, 412 when stale; stale only by other reports attached
        to the case as its duplicates since, it is taken, and the answer's `ETag` is the new
        version).

        A step after which the caller may no longer read the case (a handler returning or
        escalating a sensitive case, an office escalating one above its area) answers 200
        with the workflow facts it made (status, the unit holding the case, deadlines,
        counters, version) and the case's contents withheld: `withheld` names those fields,
        shown empty (the location as 0, 0). The case then answers 404 to the caller, as
        `GET` does for any case it may not read.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        now = _now()
        case_obj, event, duplicates = svc.transition(
            session,
            case_id,
            data,
            caller=caller,
            calendar=state().calendar(session),
            now=now,
            if_match=request.headers.get("If-Match"),
        )
        audit(
            f"case.{data['action']}",
            "case",
            case_obj.id,
            summary={"from": event.from_status, "to": event.to_status, **event.data},
            region_code=case_obj.region_code,
        )
        view = render(session, caller, case_obj, duplicates=duplicates)
        if not svc.may_see(caller, case_obj):
            view = out_of_reach_view(view)
        commit()
        return view, 200, {"ETag": etag(case_obj)}


@blp.route("/<id:case_id>/timeline")
class Timeline(MethodView):
    @blp.requires("cases:read")
    @blp.response(200, TimelineSchema)
    def get(self, case_id):
        """List every step of a case: who, when, from which state to which, why, evidence

        Returns the case's timeline in order (`seq`), one entry per step since it was reported: the
        action, the state before and after, who took it (actor and name), when, the comment, the
        unit holding the case then, extra data of the step (e.g. the department dispatched to, a new
        deadline, a rating score) and the ids of attached evidence photos. Statistics and the
        monthly bulletin are computed from these rows. Needs `cases:read`; a case the caller may not
        see answers 404.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        case_obj = svc.get_case(session, case_id, caller)
        return {
            "case_id": case_obj.id,
            "number": case_obj.number,
            "items": svc.timeline(session, case_obj, caller),
        }


@blp.route("/<id:case_id>/parties")
class Parties(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(PurposeArgsSchema, location="query")
    @blp.response(200, CasePartiesSchema, headers=NO_STORE_HEADER)
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes
    def get(self, args, case_id):
        """Read the full names of the people a case names, stating a purpose

        Every answer shows a case's parties masked (王*). Their full names are for the
        case's office, its handler (the assignee, or the members of the department it was
        dispatched to), its reporter and callers holding `persons:unmask`; anyone else who
        reads the case gets 403, and a case the caller may not read answers 404. The audit
        row (who, when, from where, which case, the `purpose_code` and `reference`) is
        committed before the names are sent. Counted against GRIDAPI_PERSON_LOOKUP_RATE, as
        an unmasked read of a resident.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        register_svc.check_reference(session, caller, args.get("reference"), location="query")
        case_obj = svc.get_case(session, case_id, caller)
        if not svc.may_read_parties(caller, case_obj):
            raise Forbidden(
                "A case's parties are read in full by its office, its handler, its reporter "
                "and callers holding persons:unmask."
            )
        count_lookup(state().settings.person_lookup_rate, caller.actor)
        entry = record(
            session,
            request_actor(),
            "case.parties_read",
            "case",
            case_obj.id,
            summary={**purpose_summary(args), "fields": ["parties"]},
            region_code=case_obj.region_code,
        )
        session.flush()
        audit_id = entry.id
        body = {
            "case_id": case_obj.id,
            "number": case_obj.number,
            "parties": list(case_obj.parties or []),
        }
        commit()
        code = entry.summary["purpose_code"]
        stated = {
            "purpose": args.get("purpose") or code,
            "purpose_code": code,
            "reference": args.get("reference"),
        }
        return {**body, **stated, "audit_id": audit_id}, 200, NO_STORE


@blp.route("/<id:case_id>/rating")
class Rating(MethodView):
    @blp.requires("cases:write")
    @blp.arguments(RatingSchema)
    @blp.response(200, CaseSchema, headers=_ETAG)
    @blp.alt_response(
        409, response="CONFLICT", description="The case is not closed, or is rated already."
    )
    def post(self, data, case_id):
        """Rate a closed case 1-5 (满意度), once: by its reporter, or an app on their behalf

        Records the reporter's satisfaction `score` (1-5) with an optional `comment`, adds a `rate`
        step to the timeline, emits the webhook event `case.rated` and answers the updated case.
        Only the account or app that reported the case, or an API client whose area covers the case
        (a hotline calling the resident back), may rate it: anyone else gets 403. A case that is not
        closed, or is rated already, is a 409: a rating cannot be changed. A reopen clears the
        rating (the timeline keeps it), and the next closure is rated anew. The rating is a new
        version of the case: the answer's `ETag` is the one to send as `If-Match` next. Needs
        `cases:write`; a case the caller may not see answers 404. Writes an audit row
        `case.rate`.
        """
        session = db_session()
        caller = svc.caller_of(session, current_principal())
        case_obj = svc.rate(session, case_id, caller, data["score"], data["comment"], _now())
        audit("case.rate", "case", case_obj.id, summary={"score": data["score"]})
        view = render(session, caller, case_obj)
        commit()
        return view, 200, {"ETag": etag(case_obj)}
