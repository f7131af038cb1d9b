"""Exports over HTTP: cases, tasks, visits and residents as CSV, XLSX or GeoJSON, streamed."""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from flask import Response, request, send_file
from flask.views import MethodView
from marshmallow import ValidationError

from ..auditing import audit, request_actor
from ..auth import Forbidden, Principal, current_principal
from ..config import private_directory
from ..db import writes
from ..errors import Conflict, NotFound, Unprocessable
from ..extensions import commit, db_session, state
from ..jsonio import dumps_bytes
from ..limits import count_lookup
from ..models.base import utcnow
from ..phone import STREAMED
from ..purposes import purpose_summary, stored_purpose, summary_of_stored
from ..schemas.exports import (
    CaseExportArgsSchema,
    ExportJobCreateSchema,
    ExportJobSchema,
    PersonExportArgsSchema,
    TaskExportArgsSchema,
    VisitExportArgsSchema,
    job_filters_schema,
)
from ..services import cases as cases_svc
from ..services import exports as svc
from ..services import register as register_svc
from ..services.register import Keys
from .blueprint import Blueprint, _ref

log = logging.getLogger(__name__)

blp = Blueprint(
    "exports",
    __name__,
    url_prefix="/api/v1/exports",
    description="Cases, tasks, visits and residents as CSV, XLSX or GeoJSON, streamed: the "
    "filters and the scope of the list of each kind; residents masked unless unmasked with a "
    "purpose. Every export is audited before its first byte is sent.",
)

# --- the spec's examples: one row of each export, as it writes it ---------------------------

_AT = "2026-11-28T01:30:00.000000+00:00"
_POINT = {"type": "Point", "coordinates": [120.605, 31.305]}
_GRID = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[120.6, 31.3], [120.61, 31.3], [120.61, 31.31], [120.6, 31.31], [120.6, 31.3]]]
    ],
}
_PLACE = {"grid": "320508001001001", "region_code": "320508001001", "county_code": "320508"}

#: One row of each kind keyed by its columns (residents masked, as exported by default), and
#: its GeoJSON geometry. Each example is built from the export's own columns: one added to an
#: export and not here stops the import (KeyError), so the spec never shows another's columns.
_EXAMPLE_ROWS: dict[str, tuple[tuple[tuple[str, str], ...], dict[str, Any], dict[str, Any]]] = {
    "cases": (
        svc.CASE_COLUMNS,
        {
            "id": 1,
            "number": "320508-20261128-0001",
            "status": "dispatched",
            "status_name": "已派遣",
            "category": "0101",
            "description": "楼道堆放杂物",
            "source": "phone",
            "urgent": False,
            "severity": "general",
            "address": "平江路100号",
            "lon": 120.605,
            "lat": 31.305,
            "occurred_at": None,
            "reported_at": _AT,
            "updated_at": "2026-11-28T02:05:00.000000+00:00",
            **_PLACE,
            "responsible_unit": "320508001001",
            "assignee_id": 7,
            "handle_due_at": "2026-11-30T01:30:00.000000+00:00",
            "overdue": False,
            "supervision": "normal",
            "rework_count": 0,
            "extension_count": 0,
            "closed_at": None,
            "satisfaction": None,
        },
        _POINT,
    ),
    "tasks": (
        svc.TASK_COLUMNS,
        {
            "id": 1,
            "title": "走访独居老人",
            "description": "每月上门一次",
            "category": None,
            "status": "pending",
            "status_name": "待接收",
            "campaign_id": None,
            **_PLACE,
            "assignee_id": 7,
            "due_at": "2026-12-03T09:30:00.000000+00:00",
            "overdue": False,
            "comment": "",
            "created_by": "user:2",
            "created_at": _AT,
            "accepted_at": None,
            "completed_at": None,
            "cancelled_at": None,
            "updated_at": _AT,
        },
        _GRID,
    ),
    "visits": (
        svc.VISIT_COLUMNS,
        {
            "id": 1,
            "worker_id": 7,
            "visited_at": _AT,
            "place": "",
            "lon": 120.605,
            "lat": 31.305,
            "household_id": 3,
            "person_id": 12,
            "findings": "身体状况良好",
            "follow_up": "",
            "case_id": None,
            "grid": _PLACE["grid"],
            "region_code": _PLACE["region_code"],
            "created_by": "user:7",
            "created_at": _AT,
        },
        _POINT,
    ),
    "persons": (
        svc.PERSON_COLUMNS,
        {
            "id": 12,
            "name": "张*",
            "id_number": "3205**********1234",
            "phone": "138****5678",
            "gender": "male",
            "age": 36,
            "ethnicity": "汉族",
            "population_type": "registered",
            "current_address": "姑苏区平江路100号3幢2单元501室",
            "registered_address": None,
            "household_id": 3,
            "house_id": 5,
            "relation": "head",
            **_PLACE,
            "created_at": _AT,
            "updated_at": _AT,
        },
        _POINT,
    ),
}


def _csv_example(kind: str) -> str:
    """Return the example row of ``kind`` as its export writes CSV (BOM, CRLF, Chinese
    headers, booleans as true/false, null as an empty cell)."""
    columns, row, _ = _EXAMPLE_ROWS[kind]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([header for _, header in columns])
    cells = [row[key] for key, _ in columns]
    writer.writerow([("true" if v else "false") if isinstance(v, bool) else v for v in cells])
    return "\ufeff" + out.getvalue()


def _geojson_example(kind: str) -> dict[str, Any]:
    """Return the example row of ``kind`` as its export writes GeoJSON."""
    columns, row, geometry = _EXAMPLE_ROWS[kind]
    properties = {key: row[key] for key, _ in columns}
    feature = {"type": "Feature", "id": row["id"], "properties": properties, "geometry": geometry}
    return {"type": "FeatureCollection", "features": [feature]}


def _file_content(kind: str) -> dict[str, Any]:
    """Return the media types of an export file of ``kind``, with its examples."""
    return {
        "text/csv": {"schema": {"type": "string"}, "example": _csv_example(kind)},
        svc.MEDIA_TYPES["xlsx"]: {"schema": {"type": "string", "format": "binary"}},
        "application/geo+json": {"schema": {"type": "object"}, "example": _geojson_example(kind)},
    }


def _streamed(kind: str) -> dict[str, Any]:
    """Return the 200 of the streamed export of ``kind``."""
    return {
        "200": {
            "description": "The export, streamed: `format=csv` (default), `xlsx` or `geojson`. "
            "`Content-Disposition` names the file.",
            "content": _file_content(kind),
        }
    }


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


# The file of a done job is sent as a file (``send_file``): conditional, and in ranges, so
# that a large export cut off on a bad network is resumed rather than downloaded again.
_FILE_HEADERS = {
    "ETag": _text("The file's entity tag: `If-None-Match` → 304, `If-Range` to resume it."),
    "Last-Modified": _text("When the file was written (`If-Modified-Since` → 304)."),
    "Accept-Ranges": _text("`bytes`: send `Range` to get a part of the file (206)."),
    "Content-Disposition": _text("`attachment` with the file's name."),
    "Cache-Control": _text("`private, no-store`."),
    "Expires": _text("The time of the answer: it is not to be reused."),
}


def _file_answers(kind: str) -> dict[str, Any]:
    """Return the answers of the download of an export job's file of ``kind``."""
    return {
        "200": {
            "description": "The file.",
            "headers": _FILE_HEADERS,
            "content": _file_content(kind),
        },
        "206": {
            "description": "The part of the file the `Range` header asked for.",
            "headers": {
                **_FILE_HEADERS,
                "Content-Range": _text("The part sent: `bytes <first>-<last>/<size>`."),
            },
            "content": _file_content(kind),
        },
        "304": {
            "description": "Not modified: the `If-None-Match` ETag is current (no body).",
            "headers": _FILE_HEADERS,
        },
        "416": {
            "description": "The `Range` lies outside the file.",
            "headers": {"Content-Range": _text("`bytes */<size>`: the file's size.")},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        },
    }


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _stream(plan: svc.ExportPlan, fmt: str, region_code: str | None) -> Response:
    """Return the streaming response of ``plan``: the body is produced after the view has
    returned, so it reads through a session of its own, closed when the body ends (or the
    client goes away).

    A body that fails midway (the database gone, a statement cancelled) is logged, audited
    (``export.failed``) and then raised again, so that the server aborts the transfer: no
    terminating chunk, which curl, requests and browsers report as a failed download
    (docs/exports.md, "When a streamed export fails"). Swallowed, the body would end
    looking complete, its rows cut short."""
    st = state()
    sessions = st.sessions
    tmp_dir = os.path.join(st.settings.data_dir, "exports", "tmp")
    writer = svc.WRITERS[fmt]
    actor = request_actor()  # the body runs after the request's context is gone

    def body() -> Iterator[bytes]:
        sent = 0
        try:
            with sessions() as session:
                if fmt == "xlsx":
                    private_directory(tmp_dir)
                    blocks = writer(session, plan, tmp_dir)
                else:
                    blocks = writer(session, plan)
                for block in blocks:
                    sent += len(block)
                    yield block
        except Exception as exc:  # not GeneratorExit: a client gone away is no failure
            log.exception("streamed export of %s (%s) failed after %d bytes", plan.kind, fmt, sent)
            svc.record_stream_failure(sessions, actor, plan.kind, fmt, sent, exc, region_code)
            raise

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    response = Response(body(), mimetype=svc.MEDIA_TYPES[fmt])
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{plan.kind}-{stamp}.{svc.EXTENSIONS[fmt]}"'
    )
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _audit_region(region: str | None) -> str | None:
    """The region an export's audit row is filed under: the region exported when it lies in
    the exporter's scope, else the exporter's own. Filed under none, only admins saw it,
    never the centre over the officer who took every resident of a community out unmasked;
    filed under a region above the exporter's (a township naming its county or province),
    the rows, all of the township, were filed where the county centre never looked."""
    principal = current_principal()
    if region and principal.scope.covers_region(region):
        return region
    return principal.region_code


def _audited(
    plan: svc.ExportPlan, args: dict[str, Any], fmt: str, *, masked: bool | None = None
) -> Response:
    """Write the export's audit row and commit it, then stream: the row exists even if the
    download is cut (how many rows went out is not known before the end)."""
    summary: dict[str, Any] = {
        "kind": plan.kind,
        "format": fmt,
        "filters": svc.summary_of(args),
    }
    if masked is not None:
        summary["masked"] = masked
    summary.update(purpose_summary(args))
    audit(
        "export.download",
        "export",
        plan.kind,
        summary=summary,
        region_code=_audit_region(args.get("region")),
    )
    commit()
    return _stream(plan, fmt, _audit_region(args.get("region")))


@blp.route("/cases")
class CaseExport(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(CaseExportArgsSchema, location="query")
    @blp.doc(**STREAMED, responses=_streamed("cases"))
    @blp.response(200)
    @writes
    def get(self, args):
        """Export cases (CSV, XLSX or GeoJSON)

        The cases `GET /api/v1/cases` would list for the same filters and `sort`, all of
        them, streamed: one row per case with Chinese headers (parties and the reporter's name
        are left out). GeoJSON: one Point feature per case (WGS-84). Audited.
        """
        fmt = args.pop("format")
        if "from_" in args:
            args["from"] = args.pop("from_")
        caller = cases_svc.caller_of(db_session(), _principal())
        return _audited(svc.plan_cases(caller, args), args, fmt)


@blp.route("/tasks")
class TaskExport(MethodView):
    @blp.requires("tasks:read")
    @blp.arguments(TaskExportArgsSchema, location="query")
    @blp.doc(**STREAMED, responses=_streamed("tasks"))
    @blp.response(200)
    @writes
    def get(self, args):
        """Export tasks (CSV, XLSX or GeoJSON)

        The tasks `GET /api/v1/tasks` would list for the same filters, all of them, by id,
        streamed. GeoJSON: the geometry is the task's grid (in service), else null. Audited.
        """
        fmt = args.pop("format")
        return _audited(svc.plan_tasks(_principal(), args), args, fmt)


@blp.route("/visits")
class VisitExport(MethodView):
    @blp.requires("persons:read")
    @blp.arguments(VisitExportArgsSchema, location="query")
    @blp.doc(**STREAMED, responses=_streamed("visits"))
    @blp.response(200)
    @writes
    def get(self, args):
        """Export visits (CSV, XLSX or GeoJSON)

        The visits `GET /api/v1/visits` would list for the same filters, all of them, by id,
        streamed. GeoJSON: the point where the visit was recorded, else null. Audited.
        """
        fmt = args.pop("format")
        return _audited(svc.plan_visits(_principal().scope, args), args, fmt)


@blp.route("/persons")
class PersonExport(MethodView):
    @blp.requires("persons:read")
    @blp.arguments(PersonExportArgsSchema, location="query")
    @blp.doc(**STREAMED, responses={**_streamed("persons"), "429": _ref("TOO_MANY_REQUESTS")})
    @blp.response(200)
    @writes
    def get(self, args):
        """Export residents (CSV, XLSX or GeoJSON), masked unless unmasked with a purpose

        The residents `GET /api/v1/persons` would find for the same filters, all of them, by
        id, streamed, masked as that search masks them (张*, 138****5678, 3201**********1234).
        `unmask=true` with a `purpose_code` (and optionally a `reference`) gives full names, ID
        and phone numbers and birth dates: it needs `persons:unmask` (403 otherwise), counts
        against GRIDAPI_PERSON_LOOKUP_RATE as do ID or phone filters (and a whole name from a
        caller who sees names masked), and the audit row names the purpose code and
        reference (a deprecated free-text `purpose` is accepted, not kept). Special-group data is
        never exported. GeoJSON: the resident's house, else null. Audited. An `id_number` or
        `phone` (or a whole `name`, for a caller who sees names masked) is also audited as the
        search's is (`person.lookup`, `via: export`: the kind of number, masked, how many
        residents the file holds and which).
        """
        principal = _principal()
        _check_reference(principal, args, "query")
        fmt = args.pop("format")
        unmask = args.pop("unmask")
        st = state()
        if unmask and not principal.can("persons:unmask"):
            raise Forbidden("Unmasked exports need the permission persons:unmask.")
        unmasks = principal.can("persons:unmask")
        if unmask or register_svc.is_lookup(args, unmasks=unmasks):
            count_lookup(st.settings.person_lookup_rate, principal.actor_id)
        keys = Keys(st.cipher, st.phone_key)
        plan = svc.plan_persons(principal.scope, args, keys, unmasks=unmasks, unmask=unmask)
        _record_lookup(db_session(), principal, args, keys, unmasks=unmasks, via="export")
        return _audited(plan, args, fmt, masked=not unmask)


def _record_lookup(
    session: Any, principal: Any, args: dict[str, Any], keys: Keys, *, unmasks: bool, via: str
) -> None:
    """Audit an export of residents that looks someone up (a whole name from a caller shown
    names masked, a number) as the search's lookup is, with the residents it matches."""
    if not register_svc.looked_up(args, unmasks=unmasks):
        return
    register_svc.record_lookup(
        session,
        request_actor(),
        args,
        register_svc.lookup_matches(session, principal.scope, args, keys, unmasks=unmasks),
        scope=principal.scope,
        home_region=principal.region_code,
        via=via,
        unmasks=unmasks,
    )


# --- export jobs ------------------------------------------------------------------------------

_JOB_EXAMPLE = {
    "id": 12,
    "kind": "cases",
    "format": "xlsx",
    "status": "done",
    "filters": {"region": "320508001000", "open": True},
    "masked": True,
    "row_count": 184223,
    "size_bytes": 9123456,
    "error": None,
    "created_at": "2026-11-28T09:30:00+00:00",
    "started_at": "2026-11-28T09:30:01+00:00",
    "finished_at": "2026-11-28T09:30:40+00:00",
    "expires_at": "2026-12-01T09:30:40+00:00",
    "download": "/api/v1/exports/cases/jobs/12/file",
}


def _job_view(job: Any) -> dict[str, Any]:
    done = job.status == "done"
    return {
        "id": job.id,
        "kind": job.kind,
        "format": job.format,
        "status": job.status,
        "filters": svc.summary_of(job.filters),
        "masked": not job.unmask,
        "row_count": job.row_count,
        "size_bytes": job.size_bytes,
        "error": job.error,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "expires_at": job.expires_at,
        "download": f"/api/v1/exports/{job.kind}/jobs/{job.id}/file" if done else None,
    }


def job_options() -> svc.JobOptions:
    st = state()
    return svc.JobOptions(
        st.settings.data_dir, st.settings.export_retention_hours, Keys(st.cipher, st.phone_key)
    )


def _check_reference(principal: Principal, args: dict[str, Any], location: str) -> None:
    """Refuse (422) a ``reference`` that is a resident's ID number written with separators
    and no case's number (``register_svc.check_reference``)."""
    session = db_session()
    caller = cases_svc.caller_of(session, principal)
    register_svc.check_reference(session, caller, args.get("reference"), location=location)


def _queue(kind: str, data: dict[str, Any]) -> Response:
    principal = _principal()
    session = db_session()
    _check_reference(principal, data, "json")
    try:
        args = job_filters_schema(kind)().load(data["filters"])
    except ValidationError as exc:
        raise Unprocessable(
            "Invalid filters.", errors={"json": {"filters": exc.messages}}
        ) from None
    unmask = bool(data.get("unmask"))
    if unmask and kind != "persons":
        raise Unprocessable(
            "Only residents are masked.", errors={"json": {"unmask": ["residents only"]}}
        )
    if unmask and not principal.can("persons:unmask"):
        raise Forbidden("Unmasked exports need the permission persons:unmask.")
    st = state()
    # Planned now so that a bad filter is a 422 here, not a failed job later.
    svc.plan_for(session, principal, kind, args, Keys(st.cipher, st.phone_key), unmask=unmask)
    unmasks = principal.can("persons:unmask")
    if kind == "persons" and (unmask or register_svc.is_lookup(args, unmasks=unmasks)):
        count_lookup(st.settings.person_lookup_rate, principal.actor_id)
    region = args.get("region") or principal.region_code
    job = svc.create_job(
        session,
        principal,
        kind,
        data["format"],
        data["filters"],
        unmask=unmask,
        purpose=stored_purpose(data),
        county_code=region[:6] if region else None,
    )
    summary: dict[str, Any] = {
        "kind": kind,
        "format": data["format"],
        "filters": svc.summary_of(args),
        "job_id": job.id,
    }
    if kind == "persons":
        summary["masked"] = not unmask
    summary.update(purpose_summary(data))
    audit(
        "export.queue",
        "export",
        kind,
        summary=summary,
        region_code=_audit_region(args.get("region")),
    )
    if kind == "persons":
        # A whole name from a caller shown names masked: a lookup, audited as the streamed
        # export's and the search's are (counted above, it wrote no person.lookup row, and
        # the residents' histories and access exports did not show it). The residents it
        # matches now: those the file will hold, unless the register changes meanwhile.
        keys = Keys(st.cipher, st.phone_key)
        _record_lookup(session, principal, args, keys, unmasks=unmasks, via="export_job")
    commit()
    body = _job_view(job)
    response = Response(dumps_bytes(body), status=202, mimetype="application/json")
    response.headers["Location"] = f"/api/v1/exports/{kind}/jobs/{job.id}"
    return response


def _download(kind: str, job_id: int) -> Response:
    session = db_session()
    job = svc.get_job(session, _principal(), kind, job_id)
    if job.status != "done":
        raise Conflict(f"The export is {job.status}: download it once its status is done.")
    svc.check_still_theirs(session, _principal(), job)
    path = job_options().path_of(job)
    if not os.path.exists(path):
        raise NotFound("The export job does not exist, has expired or is not yours.")
    # Built first (nothing is sent yet; a range outside the file raises 416 here): whether
    # the answer is a download is known only once its conditions and range are weighed.
    response = send_file(
        path,
        mimetype=svc.MEDIA_TYPES[job.format],
        as_attachment=True,
        download_name=f"{kind}-{job.id}.{svc.EXTENSIONS[job.format]}",
        max_age=0,
    )
    response.headers["Cache-Control"] = "private, no-store"  # as the streamed export's
    if _is_recorded(session, response, job):
        summary: dict[str, Any] = {"job_id": job.id, "format": job.format, "rows": job.row_count}
        if kind == "persons":  # as export.queue and export.download say: full values, and why
            summary["masked"] = not job.unmask
            summary.update(summary_of_stored(job.purpose))
        audit(
            "export.file",
            "export",
            kind,
            summary=summary,
            region_code=_audit_region(job.filters.get("region")),
        )
        try:
            commit()  # the row is committed before a byte of the file is sent
        except BaseException:
            response.close()
            raise
    return response


def _is_recorded(session: Any, response: Response, job: Any) -> bool:
    """Return whether an answer of an export's file is audited (``export.file``): every GET
    that sends bytes of it (200, 206) is a fetch, and is recorded when it sends the whole file
    or a range from its first byte, or else (a range resuming a download) when no fetch of
    this file by the same caller was recorded in the last ``RESUME_WINDOW``. A 304, a 416
    and a HEAD send nothing and write none.

    Ranges not from the first byte wrote no row at all: ``bytes=1-`` took a resident's file
    (all but its first byte) unrecorded, and ``bytes=0-0`` then ``bytes=1-`` left only the
    one-byte fetch. Now each fetch lies within the window after a recorded one."""
    if request.method != "GET" or response.status_code not in (200, 206):
        return False
    if response.status_code == 200 or response.content_range.start == 0:
        return True
    actor = request_actor()
    since = utcnow() - svc.RESUME_WINDOW
    return not svc.fetch_recorded_since(session, actor.type, actor.id, job, since)


_NOUNS = {"cases": "cases", "tasks": "tasks", "visits": "visits", "persons": "residents"}


#: The 202 of a queued export names the job to poll.
_JOB_LOCATION = {
    "description": "The job's path (`/api/v1/exports/{kind}/jobs/{id}`): poll it until its "
    "status is `done`.",
    "schema": {"type": "string"},
}


def _register_jobs(kind: str) -> None:
    """Add the job operations of ``kind``: queue, status, file (each needing the kind's
    read permission, and each job only its requester's)."""
    permission = svc.READ_PERMISSIONS[kind]
    noun = _NOUNS[kind]
    title = kind.capitalize()

    def post(self, data):  # type: ignore[no-untyped-def]
        return _queue(kind, data)

    post.__doc__ = f"""Queue an export of {noun} as a job (for large exports)

        `filters` are those of the list of {noun} (as JSON). The worker (`gridapi worker`)
        writes the file; poll the job (`Location`) until its status is `done`, then download
        it from `download`. Only you can see the job and its file; both are deleted
        GRIDAPI_EXPORT_RETENTION_HOURS after it finished. Audited when queued and when
        downloaded.{" `unmask` as for the streamed export of residents." if kind == "persons" else ""}
        """
    post = blp.requires(permission)(
        blp.arguments(ExportJobCreateSchema, example={"format": "xlsx", "filters": {}})(
            blp.doc(responses={"429": _ref("TOO_MANY_REQUESTS")} if kind == "persons" else {})(
                blp.response(
                    202,
                    ExportJobSchema,
                    example={**_JOB_EXAMPLE, "kind": kind},
                    headers={"Location": _JOB_LOCATION},
                )(post)
            )
        )
    )

    def get(self, job_id):  # type: ignore[no-untyped-def]
        return _job_view(svc.get_job(db_session(), _principal(), kind, job_id))

    get.__doc__ = f"""Get an export job of {noun} (status and download link)

        Only your own jobs: anyone else's answers 404, as does an expired one. `filters`
        show a person's value searched for (a name, an address, a text) as "(given)". A job
        of residents or visits fails once a resident it may hold is erased (queue it again).
        """
    get = blp.requires(permission)(
        blp.doc(responses={"404": _ref("NOT_FOUND")})(
            blp.response(200, ExportJobSchema, example={**_JOB_EXAMPLE, "kind": kind})(get)
        )
    )

    @writes
    def download(self, job_id):  # type: ignore[no-untyped-def]
        return _download(kind, job_id)

    download.__doc__ = f"""Download the file of an export job of {noun}

        Only your own, done jobs: a job still queued or running answers 409; anyone else's
        or an expired one 404; 403 once your role, permissions or area have changed since
        the file was written (queue it again), or (unmasked residents) you no longer hold
        `persons:unmask`. A download cut off is resumed with `Range` (206; 416 for a range
        outside the file) and `If-Range`; `If-None-Match` answers 304. Audited (`export.file`)
        for the whole file (200) or a range from its first byte, and for any other range
        unless your fetch of the file was recorded in the last hour; not for a 304 or a HEAD.
        """
    download = blp.requires(permission)(
        blp.doc(
            **STREAMED,
            responses={**_file_answers(kind), "404": _ref("NOT_FOUND"), "409": _ref("CONFLICT")},
        )(blp.response(200)(download))
    )

    blp.route(f"/{kind}/jobs")(type(f"{title}ExportJobs", (MethodView,), {"post": post}))
    blp.route(f"/{kind}/jobs/<id:job_id>")(
        type(f"{title}ExportJobById", (MethodView,), {"get": get})
    )
    blp.route(f"/{kind}/jobs/<id:job_id>/file")(
        type(f"{title}ExportJobFile", (MethodView,), {"get": download})
    )


for _kind in svc.KINDS:
    _register_jobs(_kind)
