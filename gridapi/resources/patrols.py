"""Patrols and presence over HTTP: tracks, check-ins, findings, statistics, who is on duty.

Tracks are whereabouts: a patrol answers only its worker and callers with `patrols:read`
whose scope covers it (everyone else: 404, as for a missing one), reads of someone else's
track are audited before they are answered, and no coordinates go into logs or audit rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from flask import Response
from flask.views import MethodView

from ..auditing import audit
from ..auth import AUTHENTICATED, Forbidden, Principal, current_principal
from ..db import writes
from ..extensions import commit, db_session, reading_session, state
from ..jsonio import dumps_bytes
from ..models import Case, User
from ..phone import DATE_HEADER, clock_offset
from ..schemas.patrols import (
    HeartbeatSchema,
    OnDutySchema,
    PatrolArgsSchema,
    PatrolCheckinCreateSchema,
    PatrolCheckinSchema,
    PatrolDetailSchema,
    PatrolEndSchema,
    PatrolFindingCreateSchema,
    PatrolFindingSchema,
    PatrolGetArgsSchema,
    PatrolListSchema,
    PatrolPointsSchema,
    PatrolSchema,
    PatrolStartSchema,
    PatrolStatsArgsSchema,
    PatrolStatsSchema,
    PointsResultSchema,
    PresenceArgsSchema,
    PresenceListSchema,
    PresenceSchema,
)
from ..services import cases as cases_svc
from ..services import patrols as svc
from ..services import presence as presence_svc
from .blueprint import IDEMPOTENCY_HEADER, NO_STORE, NO_STORE_HEADER, Blueprint, routing_snapshot
from .cases import render as render_case
from .retries import Keyed, replays_before_validation

blp = Blueprint(
    "patrols",
    __name__,
    url_prefix="/api/v1/patrols",
    description="Patrols (巡查): a worker's track uploaded in batches from the phone (late, "
    "repeated and out-of-order points are fine), check-ins at houses and places, findings "
    "reported as cases, and monthly statistics. A track is whereabouts: only its worker and "
    "callers with `patrols:read` over its grid read it, and every read of someone else's "
    "track is audited.",
)
presence_blp = Blueprint(
    "presence",
    __name__,
    url_prefix="/api/v1",
    description="Presence: workers' heartbeats, who is on duty in a grid now, last seen.",
)

_READERS = "This operation needs the permission 'patrols:write' (your own patrols) or "
_READERS += "'patrols:read' (patrols in your scope)."


def _now() -> datetime:
    return datetime.now(UTC)


blp.takes_routing_snapshot()
presence_blp.takes_routing_snapshot()


def _reader() -> Principal:
    """Return the caller if it may read patrols at all (its own, or those in scope)."""
    principal = current_principal()
    assert principal is not None
    if not (principal.can("patrols:write") or principal.can("patrols:read")):
        raise Forbidden(_READERS)
    return principal


def _tz() -> ZoneInfo:
    return ZoneInfo(state().settings.timezone)


def _summary(patrol) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return {"worker_id": patrol.worker_id, "grid": patrol.grid_code}


def _view(session, patrol) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return svc.patrol_view(patrol, svc.worker_names(session, {patrol.worker_id}))


@blp.route("")
class Patrols(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(PatrolArgsSchema, location="query")
    @blp.response(200, PatrolListSchema)
    def get(self, args):
        """List patrols: your own, and (with `patrols:read`) those of workers in your scope

        Needs `patrols:write` or `patrols:read`. Newest first; no tracks here (read one
        patrol for its line). Filter by worker, primary grid, region, status and start time.
        """
        principal = _reader()
        session = db_session()
        rows = svc.list_patrols(session, principal, args)
        names = svc.worker_names(session, {p.worker_id for p in rows})
        items = [svc.patrol_view(p, names) for p in rows]
        next_cursor = items[-1]["id"] if rows.more else None
        return {"items": items, "next_cursor": next_cursor}

    @blp.requires("patrols:write")
    @replays_before_validation(Keyed.of_request)
    @blp.doc(parameters=[IDEMPOTENCY_HEADER, DATE_HEADER])
    @blp.arguments(PatrolStartSchema)
    @blp.response(201, PatrolSchema)
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="You have an active patrol: `errors.active_patrol_id` names it. Or a "
        "request with the same Idempotency-Key is still running: retry after Retry-After "
        "seconds (the retry gets its answer).",
    )
    def post(self, data):
        """Start a patrol

        A worker has at most one active patrol: starting another answers 409 with
        `errors.active_patrol_id`. `started_at` may lie in the past (started offline), within
        the GRIDAPI_TRACK_RETENTION_DAYS tracks are kept. The
        patrol belongs to the worker's primary grid (else their region; an account with
        neither says where with `location`).

        A phone whose clock is off says so with `Date`: the patrol keeps that error
        (`clock_offset_s`) and moves its start, end, points and check-ins by it to the
        server's clock.

        Safe to retry with an `Idempotency-Key`: a retry gets the first answer again
        (`Idempotent-Replayed: true`) and starts nothing, also after that patrol ended.
        """
        principal = current_principal()
        session = db_session()
        now = _now()
        keyed = Keyed.of_request()
        answer = keyed.answered(session, principal.actor_id) if keyed is not None else None
        if answer is not None:
            return answer
        patrol = svc.start_patrol(
            session,
            principal,
            data,
            snapshot=routing_snapshot(),
            now=now,
            tz=_tz(),
            kept_days=state().settings.track_retention_days,
            clock=clock_offset(),
        )
        audit(
            "patrol.start",
            "patrol",
            patrol.id,
            summary=_summary(patrol),
            region_code=patrol.region_code,
        )
        view = _view(session, patrol)
        if keyed is None:
            commit()
            return view
        payload = dumps_bytes(PatrolSchema().dump(view)).decode()  # stored, sent byte for byte
        keyed.remember(session, principal.actor_id, payload, resource_id=patrol.id, now=now)
        commit()
        return Response(payload, status=201, mimetype="application/json")


@blp.route("/stats")
class PatrolStats(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(PatrolStatsArgsSchema, location="query")
    @blp.response(200, PatrolStatsSchema)
    def get(self, args):
        """Monthly patrol statistics per worker, per worker and grid, and per grid

        Needs `patrols:write` (your own figures) or `patrols:read` (workers and grids in
        your scope). Patrols this month, their length and duration, and the share of the
        grid's households visited this month (a visit, or a check-in at their house).
        """
        principal = _reader()
        return svc.monthly_stats(db_session(), principal, args, tz=_tz(), now=_now())


@blp.route("/<id:patrol_id>")
class PatrolById(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(PatrolGetArgsSchema, location="query")
    @blp.response(200, PatrolDetailSchema, headers=NO_STORE_HEADER)
    @writes
    def get(self, args, patrol_id):
        """Get a patrol with its statistics, its line (GeoJSON), check-ins and findings

        Needs `patrols:write` (your own patrols) or `patrols:read` (patrols in your scope);
        any other patrol answers 404. The raw points only with `?points=true`. A read of
        someone else's track is audited (`patrol.read_track`). A track is whereabouts: the
        answer is `Cache-Control: private, no-store`, kept in no cache.
        """
        principal = _reader()
        # Read in a plain read: on SQLite the request's own session begins as a writer (the
        # audit row below), and a phone reading its own patrol held the database's one write
        # lock, and waited for it, for a read that writes nothing.
        with reading_session() as reading:
            patrol = svc.get_readable(reading, patrol_id, principal)
            names = svc.worker_names(reading, {patrol.worker_id})
            view = svc.detail_view(reading, patrol, names, with_points=args["points"])
        if patrol.worker_id != principal.id or principal.kind != "user":
            # Committed before the answer is sent: no audit row, no track.
            audit(
                "patrol.read_track",
                "patrol",
                patrol.id,
                summary={**_summary(patrol), "points": args["points"]},
                region_code=patrol.region_code,
            )
            commit()
        # Whereabouts, as full personal values are: a browser on an office's shared computer
        # kept the line and the raw points on its disk ("private, no-cache").
        return view, 200, NO_STORE


@blp.route("/<id:patrol_id>/end")
class PatrolEnd(MethodView):
    @blp.requires("patrols:write")
    @blp.arguments(PatrolEndSchema)
    @blp.response(200, PatrolSchema)
    @blp.alt_response(
        409, response="CONFLICT", description="Ended already, at another time than `ended_at`."
    )
    def post(self, data, patrol_id):
        """End your patrol (at `ended_at`, default now); a repeat changes nothing

        Closes the caller's active patrol and answers it with its final length, duration, point
        count and grids crossed. Without `ended_at` it ends now, or at its start or its latest
        uploaded point that is no outlier if that is later (a start a few minutes ahead, by the
        phone's clock, ends at its start); an `ended_at` in the future (beyond a few minutes'
        clock skew), before the start, or more than a few minutes before that point is a 422.
        `ended_at` is moved by the patrol's `clock_offset_s` first. Safe to retry: ending an
        ended patrol again without `ended_at`, or at the same time, answers the same patrol and
        writes nothing; at another time it is a 409. Needs `patrols:write`, and only the worker who
        started the patrol may end it: any other patrol answers 404. Writes an audit row
        `patrol.end`.
        """
        session = db_session()
        patrol = svc.get_own(session, patrol_id, current_principal())
        if svc.end_patrol(session, patrol, data.get("ended_at"), now=_now()):
            audit(
                "patrol.end",
                "patrol",
                patrol.id,
                summary={
                    **_summary(patrol),
                    "length_m": patrol.length_m,
                    "duration_s": patrol.duration_s,
                    "points": patrol.point_count,
                },
                region_code=patrol.region_code,
            )
        view = _view(session, patrol)
        commit()
        return view


@blp.route("/<id:patrol_id>/points")
class PatrolPoints(MethodView):
    @blp.requires("patrols:write")
    @blp.arguments(PatrolPointsSchema)
    @blp.response(200, PointsResultSchema)
    def post(self, data, patrol_id):
        """Upload a batch of track points of your patrol

        Up to 5000 per batch, in any order, as often as needed: a time stored already is a
        duplicate, and the line, length, duration and grids crossed are rebuilt from all the
        points ordered by time. Points after the patrol ended are taken if their times lie
        within it (an offline phone uploading late); a time outside the patrol (±5 minutes)
        is rejected and counted. GCJ-02 and BD-09 are converted to WGS-84. Each `t` is moved
        by the patrol's `clock_offset_s` (the phone's clock error when it started) first.
        """
        session = db_session()
        patrol = svc.get_own(session, patrol_id, current_principal())
        result = svc.add_points(
            session,
            patrol,
            data["points"],
            snapshot=routing_snapshot(),
            now=_now(),
            crs=data["crs"],
        )
        commit()
        return result


@blp.route("/<id:patrol_id>/checkins")
class PatrolCheckins(MethodView):
    @blp.requires("patrols:write")
    @blp.arguments(PatrolCheckinCreateSchema)
    @blp.response(201, PatrolCheckinSchema)
    def post(self, data, patrol_id):
        """Check in on your patrol at a house (in your scope), a location or a named place

        A repeat with the same `at` returns the first check-in. A check-in at a house counts
        its households as visited in the monthly statistics. `at` is moved by the patrol's
        `clock_offset_s` (the phone's clock error when it started) first.
        """
        principal = current_principal()
        session = db_session()
        now = _now()
        patrol = svc.get_own(session, patrol_id, principal)
        checkin, new = svc.add_checkin(
            session, patrol, data, scope=principal.scope, snapshot=routing_snapshot(), now=now
        )
        if new:
            audit(
                "patrol.checkin",
                "patrol",
                patrol.id,
                summary={
                    "checkin_id": checkin.id,
                    "house_id": checkin.house_id,
                    "grid": checkin.grid_code,
                },
                region_code=patrol.region_code,
            )
        view = svc.checkin_view(checkin)
        commit()
        return view


@blp.route("/<id:patrol_id>/findings")
class PatrolFindings(MethodView):
    @blp.requires("patrols:write")
    @blp.arguments(PatrolFindingCreateSchema)
    @blp.doc(parameters=[DATE_HEADER])
    @blp.response(201, PatrolFindingSchema)
    def post(self, data, patrol_id):
        """Report a case found on your patrol (source `patrol`)

        The body is a case report as `POST /api/v1/cases` takes it (the location, when none is
        given or it is 0°, 0°, a phone without a fix, defaults to the end of the track's line,
        its latest point that is no outlier or the stop it ended in; without one, no points yet
        or only outliers, a location is required: 422). The case and its link to the patrol
        are made in one transaction: both or neither. Needs `cases:write` too. A repeat with the
        same `client_id` returns the first case.
        """
        principal = current_principal()
        if not principal.can("cases:write"):
            raise Forbidden("Reporting a finding needs the permission 'cases:write'.")
        session = db_session()
        now = _now()
        patrol = svc.get_own(session, patrol_id, principal)
        caller = cases_svc.Caller(principal)
        if data.get("client_id"):
            case_id = svc.finding_of_client_id(
                session, patrol, principal.actor_id, str(data["client_id"])
            )
            if case_id is not None:
                case_obj = session.get(Case, case_id)
                case_view = render_case(session, caller, case_obj, full=False)
                return {"patrol_id": patrol.id, "case": case_view}
        data = svc.place_finding(session, patrol, {**data, "source": "patrol"})
        st = state()
        reported = cases_svc.report(
            session,
            data,
            principal=principal,
            snapshot=routing_snapshot(),
            calendar=st.calendar(session),
            now=now,
            duplicate_window_hours=st.settings.duplicate_window_hours,
        )
        case_obj = reported.case
        svc.record_finding(session, patrol, case_obj.id, now)
        audit(
            "case.report",
            "case",
            case_obj.id,
            summary={"number": case_obj.number, "grid": case_obj.grid_code, "patrol_id": patrol.id},
            region_code=case_obj.region_code,
        )
        audit(
            "patrol.finding",
            "patrol",
            patrol.id,
            summary={"case_id": case_obj.id, "number": case_obj.number},
            region_code=patrol.region_code,
        )
        view = {
            "patrol_id": patrol.id,
            "case": render_case(
                session, caller, case_obj, full=False, category_name=reported.category.name
            ),
        }
        commit()
        return view


# --- presence ---------------------------------------------------------------------------------


def _with_location(principal: Principal) -> bool:
    return principal.can("patrols:read")


@presence_blp.route("/presence/heartbeat")
class Heartbeat(MethodView):
    @presence_blp.requires("patrols:write")
    @presence_blp.doc(parameters=[DATE_HEADER])
    @presence_blp.arguments(HeartbeatSchema)
    @presence_blp.response(200, PresenceSchema)
    def post(self, data):
        """Send a heartbeat: where you are now (routed to a grid), accuracy and battery

        A heartbeat older than the one stored changes nothing. `at` is moved by the
        request's `Date` header, as a report's `occurred_at`. Not audited (one a minute per
        worker); the coordinates are cleared after GRIDAPI_TRACK_RAW_DAYS.
        """
        principal = current_principal()
        session = db_session()
        now = _now()
        row = presence_svc.heartbeat(session, principal, data, snapshot=routing_snapshot(), now=now)
        user = session.get(User, principal.id)
        view = presence_svc.presence_view(
            row, user, now, state().settings.presence_minutes, with_location=True
        )
        commit()
        return view


@presence_blp.route("/grids/<digits:grid_code>/on-duty")
class OnDuty(MethodView):
    @presence_blp.requires("presence:read")
    @presence_blp.response(200, OnDutySchema, headers=NO_STORE_HEADER)
    def get(self, grid_code):
        """Who is on duty in a grid now: on its roster or located in it, seen recently

        A heartbeat within GRIDAPI_PRESENCE_MINUTES counts; the roster's other members are
        listed in `off_duty` with when they were last seen. A worker located in the grid
        is listed only when in your scope (as in `/presence`). A grid out of scope: 404.
        Locations only with `patrols:read`. Where people are now: `Cache-Control: private,
        no-store`, as a track.
        """
        principal = current_principal()
        body = presence_svc.on_duty(
            db_session(),
            grid_code,
            principal.scope,
            now=_now(),
            minutes=state().settings.presence_minutes,
            with_location=_with_location(principal),
        )
        return body, 200, NO_STORE


@presence_blp.route("/presence")
class PresenceList(MethodView):
    @presence_blp.requires("presence:read")
    @presence_blp.arguments(PresenceArgsSchema, location="query")
    @presence_blp.response(200, PresenceListSchema, headers=NO_STORE_HEADER)
    def get(self, args):
        """List when the workers in your scope were last seen, and whether they are on duty

        Workers on a grid's roster now or with a heartbeat; filter by their region, a grid's
        roster, or `on_duty`. Locations only with `patrols:read`. Where people are now:
        `Cache-Control: private, no-store`, as a track.
        """
        principal = current_principal()
        items = presence_svc.list_presence(
            db_session(),
            principal.scope,
            args,
            now=_now(),
            minutes=state().settings.presence_minutes,
            with_location=_with_location(principal),
        )
        next_cursor = items[-1]["user_id"] if items.more else None
        # Whereabouts (the last heartbeat's place): kept in no cache, as a patrol's track.
        return {"items": items, "next_cursor": next_cursor}, 200, NO_STORE
