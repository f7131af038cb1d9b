"""Exports of cases, tasks, visits and residents as CSV, XLSX or GeoJSON, streamed.

An export is planned first (``plan_*``: the columns and one Core ``SELECT`` built from the
same filter code as the list of its kind, so both answer the same rows), then written by
``iter_csv`` / ``iter_geojson`` / ``iter_xlsx`` from a server-side cursor in batches: a
million rows neither time out nor grow the server's memory. Residents are masked exactly as
``GET /api/v1/persons`` shows them unless the plan says otherwise; special-group data is
never exported.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import shapely
from sqlalchemy import Select, String, and_, delete, func, or_, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement

from .. import clock
from ..config import private_directory
from ..db import sqlite_write_intent, write_transaction
from ..errors import NotFound
from ..geo.shapes import geojson_point
from ..jsonio import dumps_bytes
from ..models import ApiClient, AuditEntry, Grid, User
from ..models.base import UTCDateTime, utcnow
from ..models.cases import Case
from ..models.exports import ExportJob
from ..models.register import House, Person, Visit
from ..models.tasks import Task
from ..personal import age_on, mask_id_number, mask_name, mask_phone
from . import cases as cases_svc
from . import register as register_svc
from . import tasks as tasks_svc
from .identity import principal_of_client, user_principal

if TYPE_CHECKING:
    from ..auth import Principal

log = logging.getLogger(__name__)

KINDS = ("cases", "tasks", "visits", "persons")
FORMATS = ("csv", "xlsx", "geojson")
MEDIA_TYPES = {
    "csv": "text/csv",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "geojson": "application/geo+json",
}
BATCH = 2000
SHEET_TITLES = {"cases": "事件", "tasks": "任务", "visits": "走访", "persons": "实有人口"}
# Rows of one XLSX sheet, the header included (Excel's limit): more go on in the next sheet.
XLSX_MAX_ROWS = 1_048_576
# A cell starting with one of these is a formula to Excel (CSV injection): it is written
# with a leading apostrophe, which Excel shows as text and hides.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_ILLEGAL_XLSX = re.compile(r"[\000-\010]|[\013-\014]|[\016-\037]")


@dataclass(frozen=True)
class ExportPlan:
    """What an export writes: the columns (key, Chinese header), the query, and how a row of
    the query becomes the values of the columns and a GeoJSON geometry."""

    kind: str
    columns: tuple[tuple[str, str], ...]
    statement: Select[Any]
    values: Callable[[Any], list[Any]]
    geometry: Callable[[Sequence[Any]], list[bytes]]

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.columns]

    @property
    def headers(self) -> list[str]:
        return [header for _, header in self.columns]


def _points(lon_index: int, lat_index: int) -> Callable[[Sequence[Any]], list[bytes]]:
    def geometry(rows: Sequence[Any]) -> list[bytes]:
        out = []
        for row in rows:
            lon, lat = row[lon_index], row[lat_index]
            out.append(
                b"null" if lon is None or lat is None else dumps_bytes(geojson_point(lon, lat))
            )
        return out

    return geometry


def _wkb(index: int) -> Callable[[Sequence[Any]], list[bytes]]:
    def geometry(rows: Sequence[Any]) -> list[bytes]:
        shapes = shapely.from_wkb([None if r[index] is None else bytes(r[index]) for r in rows])
        return [b"null" if s is None else s.encode() for s in shapely.to_geojson(shapes)]

    return geometry


class iso_utc(FunctionElement[str]):  # noqa: N801 - an SQL function, named like one
    """A UTC timestamp column as ISO 8601 text (``2026-11-28T09:30:00.000000+00:00``),
    formatted by the database: a million rows of six timestamps each are not turned into
    Python datetimes and back into text one by one."""

    type = String()
    name = "iso_utc"
    inherit_cache = True


@compiles(iso_utc, "postgresql")
def _iso_utc_postgresql(element: iso_utc, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"""to_char(({column}) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""


@compiles(iso_utc, "sqlite")
def _iso_utc_sqlite(element: iso_utc, compiler: Any, **kw: Any) -> str:
    # SQLite keeps UTC timestamps as 'YYYY-MM-DD HH:MM:SS.ffffff' text.
    column = compiler.process(element.clauses, **kw)
    return f"(replace({column}, ' ', 'T') || '+00:00')"


def _texts(*columns: Any) -> list[Any]:
    """Return ``columns`` with every UTC timestamp formatted by the database (``iso_utc``)."""
    return [
        iso_utc(c).label(c.key) if isinstance(getattr(c, "type", None), UTCDateTime) else c
        for c in columns
    ]


# --- plans ------------------------------------------------------------------------------------

CASE_COLUMNS = (
    ("id", "编号"),
    ("number", "事件编号"),
    ("status", "状态"),
    ("status_name", "状态名称"),
    ("category", "事件类别"),
    ("description", "事件描述"),
    ("source", "来源"),
    ("urgent", "紧急"),
    ("severity", "严重程度"),
    ("address", "地址"),
    ("lon", "经度"),
    ("lat", "纬度"),
    ("occurred_at", "发生时间"),
    ("reported_at", "上报时间"),
    ("updated_at", "更新时间"),
    ("grid", "网格编码"),
    ("region_code", "所在区划"),
    ("county_code", "县区代码"),
    ("responsible_unit", "责任单位"),
    ("assignee_id", "处置人"),
    ("handle_due_at", "处置时限"),
    ("overdue", "超期"),
    ("supervision", "督办"),
    ("rework_count", "返工次数"),
    ("extension_count", "延期次数"),
    ("closed_at", "结案时间"),
    ("satisfaction", "满意度"),
)


def plan_cases(caller: cases_svc.Caller, args: dict[str, Any]) -> ExportPlan:
    """Plan an export of the cases the list would show the caller for ``args`` (in its
    order); parties and the reporter's name are left out."""
    conditions = cases_svc.case_conditions(caller, args)
    column, descending = cases_svc.SORTS[args.get("sort") or "-reported_at"]
    order = (column.desc(), Case.id.desc()) if descending else (column.asc(), Case.id.asc())
    stmt = (
        select(
            *_texts(
                Case.id,
                Case.number,
                Case.status,
                Case.category_code,
                Case.description,
                Case.source,
                Case.urgent,
                Case.severity,
                Case.address,
                Case.lon,
                Case.lat,
                Case.occurred_at,
                Case.reported_at,
                Case.updated_at,
                Case.grid_code,
                Case.region_code,
                Case.county_code,
                Case.responsible_region_code,
                Case.assignee_id,
                Case.handle_due_at,
                Case.overdue,
                Case.supervision,
                Case.rework_count,
                Case.extension_count,
                Case.closed_at,
                Case.satisfaction,
            )
        )
        .where(*conditions)
        .order_by(*order)
    )
    names = cases_svc.STATUS_NAMES

    def values(row: Any) -> list[Any]:
        out = list(row)
        out.insert(3, names.get(row[2], row[2]))
        return out

    return ExportPlan("cases", CASE_COLUMNS, stmt, values, _points(9, 10))


TASK_COLUMNS = (
    ("id", "编号"),
    ("title", "任务名称"),
    ("description", "任务内容"),
    ("category", "类别"),
    ("status", "状态"),
    ("status_name", "状态名称"),
    ("campaign_id", "专项行动"),
    ("region_code", "所在区划"),
    ("grid", "网格编码"),
    ("county_code", "县区代码"),
    ("assignee_id", "执行人"),
    ("due_at", "截止时间"),
    ("overdue", "超期"),
    ("comment", "办理说明"),
    ("created_by", "创建人"),
    ("created_at", "创建时间"),
    ("accepted_at", "接收时间"),
    ("completed_at", "完成时间"),
    ("cancelled_at", "撤销时间"),
    ("updated_at", "更新时间"),
)


def plan_tasks(principal: Principal, args: dict[str, Any]) -> ExportPlan:
    """Plan an export of the tasks the list would show the caller for ``args``, by id; the
    GeoJSON geometry is the task's grid (in service), else null."""
    stmt = tasks_svc.task_query(
        principal,
        args,
        select(
            *_texts(
                Task.id,
                Task.title,
                Task.description,
                Task.category_code,
                Task.status,
                Task.campaign_id,
                Task.region_code,
                Task.grid_code,
                Task.county_code,
                Task.assignee_id,
                Task.due_at,
                Task.overdue,
                Task.comment,
                Task.created_by,
                Task.created_at,
                Task.accepted_at,
                Task.completed_at,
                Task.cancelled_at,
                Task.updated_at,
            ),
            func.ST_AsBinary(Grid.geom),
        ).outerjoin(Grid, and_(Grid.code == Task.grid_code, Grid.in_service.is_(True))),
    ).order_by(Task.id)
    names = tasks_svc.STATUS_NAMES

    def values(row: Any) -> list[Any]:
        out = list(row[:-1])
        out.insert(5, names.get(row[4], row[4]))
        return out

    return ExportPlan("tasks", TASK_COLUMNS, stmt, values, _wkb(19))


VISIT_COLUMNS = (
    ("id", "编号"),
    ("worker_id", "走访人"),
    ("visited_at", "走访时间"),
    ("place", "走访地点"),
    ("lon", "经度"),
    ("lat", "纬度"),
    ("household_id", "户编号"),
    ("person_id", "人员编号"),
    ("findings", "走访情况"),
    ("follow_up", "后续跟进"),
    ("case_id", "关联事件"),
    ("grid", "网格编码"),
    ("region_code", "所在区划"),
    ("created_by", "记录人"),
    ("created_at", "记录时间"),
)


def plan_visits(scope: Any, args: dict[str, Any]) -> ExportPlan:
    """Plan an export of the visits the list would show for ``args``, by id."""
    stmt = register_svc.visit_query(
        scope,
        args,
        select(
            *_texts(
                Visit.id,
                Visit.worker_id,
                Visit.visited_at,
                Visit.place,
                Visit.lon,
                Visit.lat,
                Visit.household_id,
                Visit.person_id,
                Visit.findings,
                Visit.follow_up,
                Visit.case_id,
                Visit.grid_code,
                Visit.region_code,
                Visit.created_by,
                Visit.created_at,
            )
        ),
    ).order_by(Visit.id)
    return ExportPlan("visits", VISIT_COLUMNS, stmt, list, _points(4, 5))


PERSON_COLUMNS = (
    ("id", "编号"),
    ("name", "姓名"),
    ("id_number", "公民身份号码"),
    ("phone", "联系电话"),
    ("gender", "性别"),
    ("age", "年龄"),
    ("ethnicity", "民族"),
    ("population_type", "人口类型"),
    ("current_address", "现住址"),
    ("registered_address", "户籍地址"),
    ("household_id", "户编号"),
    ("house_id", "房屋编号"),
    ("relation", "与户主关系"),
    ("grid", "网格编码"),
    ("region_code", "所在区划"),
    ("county_code", "县区代码"),
    ("created_at", "登记时间"),
    ("updated_at", "更新时间"),
)
UNMASKED_PERSON_COLUMNS = (*PERSON_COLUMNS[:5], ("birth_date", "出生日期"), *PERSON_COLUMNS[5:])


def plan_persons(
    scope: Any,
    args: dict[str, Any],
    keys: register_svc.Keys,
    *,
    unmasks: bool,
    unmask: bool = False,
    today: date | None = None,
) -> ExportPlan:
    """Plan an export of the residents the search would show for ``args``, by id: masked as
    ``person_view`` masks them, or (``unmask``: the caller may and said why) in full. ID and
    phone numbers are decrypted row by row. Special-group data is never part of it. The
    GeoJSON geometry is the resident's house, when it has a location. A name matches as the
    search matches it for a caller who ``unmasks`` (holds ``persons:unmask``) or not."""
    stmt = register_svc.person_query(
        scope,
        args,
        keys,
        select(
            *_texts(
                Person.id,
                Person.uid,
                Person.name,
                Person.id_number_enc,
                Person.phone_enc,
                Person.gender,
                Person.birth_date,
                Person.ethnicity,
                Person.population_type,
                Person.current_address,
                Person.registered_address,
                Person.household_id,
                Person.house_id,
                Person.relation,
                Person.grid_code,
                Person.region_code,
                Person.county_code,
                Person.created_at,
                Person.updated_at,
                House.lon,
                House.lat,
            )
        ).outerjoin(House, House.id == Person.house_id),
        unmasks=unmasks,
    ).order_by(Person.id)
    day = today or clock.today()

    def values(row: Any) -> list[Any]:
        uid = row[1]
        id_number = keys.open("persons", "id_number", uid, row[3])
        phone = keys.open("persons", "phone", uid, row[4])
        birth = row[6]
        age = age_on(birth, day) if birth else None
        if unmask:
            head = [row[0], row[2], id_number, phone, row[5], birth, age]
        else:
            head = [
                row[0],
                mask_name(row[2]),
                mask_id_number(id_number) if id_number else None,
                mask_phone(phone) if phone else None,
                row[5],
                age,
            ]
        return [*head, *row[7:19]]

    columns = UNMASKED_PERSON_COLUMNS if unmask else PERSON_COLUMNS
    return ExportPlan("persons", columns, stmt, values, _points(19, 20))


# --- writers ----------------------------------------------------------------------------------


# Columns whose text people type (the only ones a formula can hide in).
FREE_TEXT = frozenset(
    {
        "description",
        "address",
        "title",
        "comment",
        "place",
        "findings",
        "follow_up",
        "name",
        "ethnicity",
        "current_address",
        "registered_address",
    }
)
_FORMULA_CHARS = frozenset(_FORMULA_START)


def cell_converter(plan: ExportPlan) -> Callable[[list[Any]], list[Any]]:
    """Return the function that turns a row's values into CSV/XLSX cells, in place: times in
    ISO 8601, booleans as true/false, typed text that Excel would run as a formula prefixed
    with an apostrophe (None stays None: an empty cell). Column by column from the plan's
    keys rather than value by value: this loop runs for every row of a million."""
    keys = plan.keys
    # Timestamps come formatted from the database (iso_utc); a birth date is a date.
    times = [i for i, key in enumerate(keys) if key == "birth_date"]
    flags = [i for i, key in enumerate(keys) if key in ("urgent", "overdue")]
    texts = [i for i, key in enumerate(keys) if key in FREE_TEXT]

    def convert(values: list[Any]) -> list[Any]:
        for i in times:
            value = values[i]
            if value is not None:
                values[i] = value.isoformat()
        for i in flags:
            value = values[i]
            if value is not None:
                values[i] = "true" if value else "false"
        for i in texts:
            value = values[i]
            if value and value[0] in _FORMULA_CHARS:
                values[i] = "'" + value
        return values

    return convert


def _rows(session: Session, plan: ExportPlan, batch: int | None) -> Iterator[Sequence[Any]]:
    # yield_per streams from a server-side cursor (PostgreSQL) in batches of Core rows.
    size = batch or BATCH
    result = session.execute(plan.statement.execution_options(yield_per=size, stream_results=True))
    yield from result.partitions(size)


def iter_csv(session: Session, plan: ExportPlan, batch: int | None = None) -> Iterator[bytes]:
    """Yield the export as UTF-8 CSV with a BOM (so Excel reads the Chinese headers) and
    CRLF line ends, a batch of rows at a time."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(plan.headers)
    yield ("\ufeff" + out.getvalue()).encode("utf-8")
    convert, values = cell_converter(plan), plan.values
    for part in _rows(session, plan, batch):
        out.seek(0)
        out.truncate()
        writer.writerows(convert(values(row)) for row in part)
        yield out.getvalue().encode("utf-8")


def iter_geojson(session: Session, plan: ExportPlan, batch: int | None = None) -> Iterator[bytes]:
    """Yield the export as a GeoJSON FeatureCollection, feature by feature in batches; the
    properties are the columns (keys in English), the geometry a point, a grid or null."""
    keys = plan.keys
    yield b'{"type":"FeatureCollection","features":['
    first = True
    for part in _rows(session, plan, batch):
        geometries = plan.geometry(part)
        pieces = [
            b'{"type":"Feature","id":'
            + dumps_bytes(row[0])
            + b',"properties":'
            + dumps_bytes(dict(zip(keys, plan.values(row), strict=True)))
            + b',"geometry":'
            + geometry
            + b"}"
            for row, geometry in zip(part, geometries, strict=True)
        ]
        yield (b"" if first else b",") + b",".join(pieces)
        first = False
    yield b"]}"


def write_xlsx(session: Session, plan: ExportPlan, path: str, batch: int | None = None) -> int:
    """Write the export to an XLSX file at ``path`` (openpyxl's write-only mode: rows go to
    disk as they come); return the number of rows."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    title = SHEET_TITLES[plan.kind]

    def new_sheet(number: int) -> Any:
        sheet = book.create_sheet(title if number == 1 else f"{title}({number})")
        sheet.freeze_panes = "A2"
        sheet.append(plan.headers)
        return sheet

    # A sheet holds at most XLSX_MAX_ROWS rows, its header included: the rows go on in the
    # next sheet (openpyxl writes past the limit, and Excel then drops the rows beyond it).
    per_sheet = XLSX_MAX_ROWS - 1
    sheets = 1
    sheet = new_sheet(sheets)
    room = per_sheet
    count = 0
    convert, clean = cell_converter(plan), _ILLEGAL_XLSX.sub
    try:
        for part in _rows(session, plan, batch):
            for row in part:
                if not room:
                    sheets += 1
                    sheet = new_sheet(sheets)
                    room = per_sheet
                cells = convert(plan.values(row))
                # openpyxl refuses control characters: they are dropped.
                sheet.append([clean("", v) if type(v) is str else v for v in cells])
                room -= 1
            count += len(part)
    finally:
        # Saved on failure too: openpyxl's way to close the sheet's writer and remove its
        # temporary file (the caller deletes a file it failed to finish).
        book.save(path)
    return count


def iter_xlsx(
    session: Session, plan: ExportPlan, tmp_dir: str | None = None, chunk: int = 1 << 16
) -> Iterator[bytes]:
    """Yield the export as XLSX: written to a temporary file first (a workbook is a zip
    whose directory comes last), then sent in chunks; the file is removed at the end."""
    handle, path = tempfile.mkstemp(suffix=".xlsx", dir=tmp_dir)
    os.close(handle)
    try:
        write_xlsx(session, plan, path)
        with open(path, "rb") as stream:
            while block := stream.read(chunk):
                yield block
    finally:
        os.unlink(path)


WRITERS: dict[str, Callable[..., Iterator[bytes]]] = {
    "csv": iter_csv,
    "xlsx": iter_xlsx,
    "geojson": iter_geojson,
}


_PERSONAL_FILTERS = frozenset({"id_number", "phone", "name", "address", "q"})
#: Why full values were read: audited apart from the filters (``gridapi.purposes``).
_PURPOSE_KEYS = frozenset({"purpose", "purpose_code", "reference"})


def summary_of(args: dict[str, Any]) -> dict[str, Any]:
    """Return the filters of an export as the audit log keeps them: JSON values, and never
    a person's value searched for — an ID or phone number, a name, an address, a text (only
    that one was given: the log holds ids and field names, and outlives an erasure)."""
    out: dict[str, Any] = {}
    for key, value in sorted(args.items()):
        if value is None or key in _PURPOSE_KEYS:
            continue
        if key in _PERSONAL_FILTERS:
            out[key] = "(given)"
        elif isinstance(value, datetime | date):
            out[key] = value.isoformat()
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def stored_filters(filters: dict[str, Any]) -> dict[str, Any]:
    """Return a job's filters as kept once it no longer runs: a person's value searched for
    (``summary_of``'s) is replaced by "(given)", the rest as sent. What the job's view shows
    is the same either way (it shows ``summary_of`` of them)."""
    return {
        key: "(given)" if key in _PERSONAL_FILTERS and value is not None else value
        for key, value in filters.items()
    }


#: The kinds whose rows an erasure deletes or anonymises (residents; visits' findings).
ERASED_KINDS = ("persons", "visits")
ERASED_ERROR = (
    "A resident this export may hold was erased after it was written: queue the export again."
)


def _may_hold(job_county: str | None, county: str) -> bool:
    """Return whether a job filed under ``job_county`` (a county, or the first six digits of
    a city's or province's code; None: everything) may hold rows of ``county``."""
    if job_county is None:
        return True
    prefix = job_county
    while len(prefix) > 2 and prefix.endswith("00"):
        prefix = prefix[:-2]
    return county.startswith(prefix)


def forget_erased(session: Session, county: str) -> None:
    """Leave nothing of an erased resident (of ``county``) readable through export jobs, in
    the erasure's transaction (flushes, never commits):

    * a written file of residents or visits that may hold them is no longer served: the job
      is failed with the reason (the worker deletes the file at its next round); one being
      written goes back to the queue, to be written without them;
    * no finished job keeps a person's value searched for (a name, an address, a text) in
      its stored filters: those of jobs finished before such values were cleared at the end
      of a run are cleared now. A queued job needs its own until it has run.
    """
    now = utcnow()
    jobs = session.scalars(
        select(ExportJob).where(ExportJob.status != "queued").order_by(ExportJob.id)
    ).all()
    for job in jobs:
        if job.kind in ERASED_KINDS and _may_hold(job.county_code, county):
            if job.status == "done":
                job.status, job.error, job.finished_at = "failed", ERASED_ERROR, now
            elif job.status == "running":
                job.status, job.lease_until = "queued", None
                continue  # it runs again: its filters are needed
        if job.status != "queued" and stored_filters(job.filters) != job.filters:
            job.filters = stored_filters(job.filters)
    session.flush()


# --- one plan for every kind ------------------------------------------------------------------

READ_PERMISSIONS = {
    "cases": "cases:read",
    "tasks": "tasks:read",
    "visits": "persons:read",
    "persons": "persons:read",
}


def plan_for(
    session: Session,
    principal: Principal,
    kind: str,
    args: dict[str, Any],
    keys: register_svc.Keys,
    *,
    unmask: bool = False,
) -> ExportPlan:
    """Return the plan of an export of ``kind`` for ``principal`` (``args`` as the export's
    query schema loads them, without ``format``, ``unmask`` and the purpose)."""
    args = dict(args)
    if "from_" in args:
        args["from"] = args.pop("from_")
    if kind == "cases":
        return plan_cases(cases_svc.caller_of(session, principal), args)
    if kind == "tasks":
        return plan_tasks(principal, args)
    if kind == "visits":
        return plan_visits(principal.scope, args)
    if kind == "persons":
        return plan_persons(
            principal.scope, args, keys, unmasks=principal.can("persons:unmask"), unmask=unmask
        )
    raise ValueError(f"unknown export kind {kind!r}")


# --- export jobs ------------------------------------------------------------------------------

JOB_POLL_SECONDS = 2.0
#: A running job belongs to its worker for this long, renewed while it writes; a job whose
#: lease ran out (its worker was killed, crashed or lost its machine) is taken up again.
JOB_LEASE_SECONDS = 300.0
#: Attempts before a job that keeps losing its worker is failed rather than taken up again.
JOB_MAX_ATTEMPTS = 3
EXTENSIONS = {"csv": "csv", "xlsx": "xlsx", "geojson": "geojson"}


@dataclass(frozen=True)
class JobOptions:
    """What the worker needs to run export jobs: where files go, how long they are kept,
    and the keys that open the residents' encrypted fields."""

    data_dir: str
    retention_hours: float
    keys: register_svc.Keys
    poll_seconds: float = JOB_POLL_SECONDS
    lease_seconds: float = JOB_LEASE_SECONDS
    max_attempts: int = JOB_MAX_ATTEMPTS

    @property
    def directory(self) -> str:
        return os.path.join(self.data_dir, "exports")

    def path_of(self, job: ExportJob) -> str:
        return os.path.join(self.directory, f"{job.id}.{EXTENSIONS[job.format]}")


def create_job(
    session: Session,
    principal: Principal,
    kind: str,
    fmt: str,
    filters: dict[str, Any],
    *,
    unmask: bool = False,
    purpose: str | None = None,
    county_code: str | None = None,
) -> ExportJob:
    """Queue an export job of ``principal``; flushes (the id is known), never commits."""
    job = ExportJob(
        county_code=county_code,
        user_id=principal.id if principal.kind == "user" else None,
        client_id=principal.id if principal.kind == "client" else None,
        kind=kind,
        format=fmt,
        filters=filters,
        unmask=unmask,
        purpose=purpose,
        status="queued",
    )
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, principal: Principal, kind: str, job_id: int) -> ExportJob:
    """Return the caller's own job of ``kind``; anyone else's answers as a missing one."""
    owner = (
        ExportJob.user_id == principal.id
        if principal.kind == "user"
        else ExportJob.client_id == principal.id
    )
    job = session.scalars(
        select(ExportJob).where(
            ExportJob.id == job_id,
            ExportJob.kind == kind,
            owner,
            # A done job whose file was deleted has expired: it is being purged.
            or_(ExportJob.status != "done", ExportJob.file_deleted_at.is_(None)),
        )
    ).first()
    if job is None:
        raise NotFound("The export job does not exist, has expired or is not yours.")
    return job


#: How long one recorded fetch of a job's file stands for its requester's other fetches that
#: resume it (a range not from the first byte).
RESUME_WINDOW = timedelta(hours=1)


def fetch_recorded_since(
    session: Session, actor_type: str, actor_id: str | None, job: ExportJob, since: datetime
) -> bool:
    """Return whether a fetch of ``job``'s file by this actor was recorded (an ``export.file``
    audit row) at ``since`` or later."""
    summaries = session.scalars(
        select(AuditEntry.summary).where(
            AuditEntry.at >= since,
            AuditEntry.action == "export.file",
            AuditEntry.object_type == "export",
            AuditEntry.object_id == job.kind,
            AuditEntry.actor_type == actor_type,
            AuditEntry.actor_id == actor_id,
        )
    )
    return any((summary or {}).get("job_id") == job.id for summary in summaries)


def rows_fingerprint(session: Session, principal: Principal) -> str:
    """Return a digest of everything that decides which rows an export of any kind holds
    for ``principal``: who they are, their role and permissions (a sensitive case is read
    by an office only, a name matches as the caller unmasks or not), their area, and (a
    person) their department, which holds dispatched cases. Equal for callers who would
    get the same rows from the same filters; what an export's file is checked against."""
    caller = cases_svc.caller_of(session, principal)
    parts = [
        principal.kind,
        str(principal.id),
        principal.role or "",
        ",".join(sorted(principal.permissions)),
        principal.scope.fingerprint(),
        "" if caller.department_id is None else str(caller.department_id),
    ]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=12).hexdigest()


def check_still_theirs(session: Session, principal: Principal, job: ExportJob) -> None:
    """Raise Forbidden unless the caller may still have the file: unmasked residents need
    ``persons:unmask`` now, and the file's rows were chosen for the caller as they are now
    (``rows_fingerprint``: the same role, permissions, area and department). A file of a
    community the requester has since left, or of the sensitive cases of an office they no
    longer work in, is no longer theirs."""
    from ..auth import Forbidden

    if job.unmask and not principal.can("persons:unmask"):
        raise Forbidden(
            "Unmasked exports need the permission persons:unmask, which you no longer hold."
        )
    if job.built_for != rows_fingerprint(session, principal):
        raise Forbidden(
            "Your role, permissions or area have changed since this export was written: "
            "queue the export again."
        )


def _requester(session: Session, job: ExportJob) -> Principal | None:
    """Return the requester as they are now (a disabled account, a revoked app: None)."""
    if job.user_id is not None:
        user = session.get(User, job.user_id)
        if user is None:
            return None
        return user_principal(session, user.id, user.token_version)
    client = session.get(ApiClient, job.client_id)
    if client is None or client.revoked_at is not None:
        return None
    return principal_of_client(client)


def _abandoned(now: datetime) -> Any:
    """Jobs running under a lease that ran out: their worker stopped."""
    return and_(ExportJob.status == "running", ExportJob.lease_until < now)


def _expired(now: datetime) -> Any:
    """Jobs whose retention has passed."""
    return and_(ExportJob.expires_at.is_not(None), ExportJob.expires_at < now)


def _takeable(now: datetime, options: JobOptions) -> Any:
    """Jobs a worker may take: queued, or abandoned with attempts left (``_give_up`` fails
    the others)."""
    return or_(
        ExportJob.status == "queued",
        and_(_abandoned(now), ExportJob.attempts < options.max_attempts),
    )


def record_stream_failure(
    sessions: Any,
    actor: Any,
    kind: str,
    fmt: str,
    bytes_sent: int,
    error: BaseException,
    region_code: str | None,
) -> None:
    """Audit a streamed export that failed after its audit row (``export.failed``: the kind,
    the format, the bytes sent, the error's class) in a transaction of its own, the
    request's being long over. Never raises: the database may be what failed (the log then
    keeps the failure)."""
    from .audit import record

    try:
        with write_transaction(sessions) as session:
            record(
                session,
                actor,
                "export.failed",
                "export",
                kind,
                summary={"format": fmt, "bytes_sent": bytes_sent, "error": type(error).__name__},
                region_code=region_code,
            )
    except Exception:
        log.exception("the failure of a streamed %s export could not be audited", kind)


# The job runner writes only in short ``write_transaction``s; everything else it does is a
# plain read (``_reading``): on SQLite no write lock is held while a file is written, so the
# lease's renewal, the other jobs and the server's requests write meanwhile.


@contextlib.contextmanager
def _reading(sessions: Any) -> Iterator[Session]:
    """A session whose transaction is a plain read (BEGIN DEFERRED on SQLite, whatever the
    engine's default): a consistent snapshot that holds no lock while the file is written.
    Nothing is written through it."""
    token = sqlite_write_intent.set(False)
    try:
        with sessions() as session:
            yield session
    finally:
        sqlite_write_intent.reset(token)


def _give_up(sessions: Any, options: JobOptions, now: datetime) -> int:
    """Fail the jobs whose lease ran out on their last allowed attempt; return how many."""
    with write_transaction(sessions) as session:
        failed = session.execute(
            update(ExportJob)
            .where(_abandoned(now), ExportJob.attempts >= options.max_attempts)
            .values(
                status="failed",
                error=(
                    f"The export worker stopped while writing this export "
                    f"{options.max_attempts} times."
                ),
                lease_until=None,
                finished_at=now,
                expires_at=now + timedelta(hours=options.retention_hours),
            )
        )
        return int(failed.rowcount or 0)


def _claim(sessions: Any, options: JobOptions, now: datetime) -> tuple[int, int] | None:
    """Take the oldest queued job (or one whose worker stopped: its lease ran out) and
    return (id, attempt); None when there is nothing to take. Two workers never take the
    same job: the update only succeeds while the job is still takeable."""
    with write_transaction(sessions) as session:
        for job_id in session.scalars(
            select(ExportJob.id).where(_takeable(now, options)).order_by(ExportJob.id).limit(5)
        ):
            taken = session.execute(
                update(ExportJob)
                .where(ExportJob.id == job_id, _takeable(now, options))
                .values(
                    status="running",
                    started_at=now,
                    lease_until=now + timedelta(seconds=options.lease_seconds),
                    attempts=ExportJob.attempts + 1,
                )
                .returning(ExportJob.attempts)
            ).scalar_one_or_none()
            if taken is not None:
                return job_id, int(taken)
    return None


class _LeaseLost(Exception):
    """Another worker took the job (this one failed to renew its lease in time)."""


class _Lease:
    """The running job's lease, renewed while the worker writes (at most every third of
    its length, in a transaction of its own)."""

    def __init__(self, sessions: Any, options: JobOptions, job_id: int, attempt: int) -> None:
        self.sessions, self.options = sessions, options
        self.job_id, self.attempt = job_id, attempt
        self.every = options.lease_seconds / 3
        self.next = time.monotonic() + self.every

    def mine(self) -> Any:
        return and_(
            ExportJob.id == self.job_id,
            ExportJob.attempts == self.attempt,
            ExportJob.status == "running",
        )

    def renew(self, force: bool = False) -> None:
        if not force and time.monotonic() < self.next:
            return
        until = utcnow() + timedelta(seconds=self.options.lease_seconds)
        with write_transaction(self.sessions) as session:
            kept = session.execute(
                update(ExportJob).where(self.mine()).values(lease_until=until)
            ).rowcount
        if not kept:
            raise _LeaseLost
        self.next = time.monotonic() + self.every


def _counted(plan: ExportPlan, counter: list[int], lease: _Lease) -> ExportPlan:
    def values(row: Any) -> list[Any]:
        counter[0] += 1
        lease.renew()
        return plan.values(row)

    return replace(plan, values=values)


def _remove_parts(path: str) -> None:
    """Delete the partial files of every attempt at the job whose file is ``path``."""
    directory, name = os.path.split(path)
    if not os.path.isdir(directory):
        return
    for entry in os.listdir(directory):
        if entry.startswith(name + ".") and entry.endswith(".part"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, entry))


def run_job(
    sessions: Any, options: JobOptions, job_id: int, now: datetime, attempt: int = 1
) -> str:
    """Write the file of one running job (its ``attempt``-th) and record the outcome;
    return the status ("lost" when another worker took the job over meanwhile)."""
    from ..schemas.exports import job_filters_schema

    lease = _Lease(sessions, options, job_id, attempt)
    # A plain read while the file is written: on SQLite a write transaction here held the
    # database's one write lock for the whole file, so the lease's renewal (on a connection
    # of its own) waited out the busy timeout and failed the job, and every request that
    # wrote meanwhile waited or answered 503.
    with _reading(sessions) as session:
        job = session.get(ExportJob, job_id)
        assert job is not None
        kept_filters = stored_filters(job.filters)
        principal = _requester(session, job)
        problem = None
        built_for = rows_fingerprint(session, principal) if principal is not None else None
        if principal is None:
            problem = "The requester's account is no longer active."
        elif not principal.can(READ_PERMISSIONS[job.kind]) or (
            job.unmask and not principal.can("persons:unmask")
        ):
            problem = "The requester no longer holds the permission this export needs."
        path = options.path_of(job)
        part = f"{path}.{attempt}.part"
        rows = [0]
        if problem is None:
            assert principal is not None
            try:
                args = job_filters_schema(job.kind)().load(job.filters)
                plan = _counted(
                    plan_for(session, principal, job.kind, args, options.keys, unmask=job.unmask),
                    rows,
                    lease,
                )
                private_directory(options.directory)
                # Readable by the service's user alone, from the first byte (a file of
                # unmasked residents was left 0644 in a 0755 directory).
                os.close(os.open(part, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600))
                if job.format == "xlsx":
                    write_xlsx(session, plan, part)
                else:
                    with open(part, "wb") as out:
                        for chunk in WRITERS[job.format](session, plan):
                            out.write(chunk)
                lease.renew(force=True)  # still ours: only then does the file replace
                os.replace(part, path)
            except _LeaseLost:
                log.warning("export job %s was taken over by another worker", job_id)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part)
                return "lost"
            except Exception as exc:  # the job fails; the worker goes on with the next
                log.exception("export job %s failed", job_id)
                problem = f"The export could not be written ({type(exc).__name__})."
            _remove_parts(path)  # this attempt's, and any an earlier worker left behind
        session.rollback()  # end the read; the outcome is written under the lease
    finished = utcnow()
    outcome: dict[str, Any] = {
        "finished_at": finished,
        "expires_at": finished + timedelta(hours=options.retention_hours),
        "lease_until": None,
        # Run, it needs no person's value searched for: kept, one would outlive an erasure.
        "filters": kept_filters,
    }
    if problem is None:
        outcome.update(
            status="done",
            row_count=rows[0],
            size_bytes=os.path.getsize(path),
            built_for=built_for,
        )
    else:
        outcome.update(status="failed", error=problem)
    with write_transaction(sessions) as session:
        written = session.execute(update(ExportJob).where(lease.mine()).values(**outcome))
    if not written.rowcount:
        log.warning("export job %s was taken over by another worker", job_id)
        return "lost"
    return str(outcome["status"])


def _delete_file(path: str) -> bool:
    """Delete an export's file and its partial files; return whether none is left (one
    already gone counts). A file that cannot be deleted is logged and left to the next
    round."""
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        _remove_parts(path)
    except OSError:
        log.exception("export file %s could not be deleted; the next round tries again", path)
        return False
    return True


def _delete_failed_files(sessions: Any, options: JobOptions) -> int:
    """Delete the file of every failed job whose file was not deleted yet, and mark the job
    (``file_deleted_at``); return how many jobs were marked. A failed job's file is never
    served, and one written before its job failed (an erased resident's, see
    ``forget_erased``) goes now rather than when the job expires. Each file once: the jobs
    were selected again every round, their files deleted every 2 s for as long as they were
    kept. The file goes before the mark, so a round that stops in between leaves the next
    one a file to delete, never a file nobody deletes; workers doing it at once mark each job
    once. A round with no such job only reads."""
    with _reading(sessions) as session:
        failed = [
            (job.id, options.path_of(job))
            for job in session.scalars(
                select(ExportJob).where(
                    ExportJob.status == "failed", ExportJob.file_deleted_at.is_(None)
                )
            )
        ]
    deleted = [job_id for job_id, path in failed if _delete_file(path)]
    if not deleted:
        return 0
    with write_transaction(sessions) as session:
        marked = session.execute(
            update(ExportJob)
            .where(ExportJob.id.in_(deleted), ExportJob.file_deleted_at.is_(None))
            .values(file_deleted_at=utcnow())
        )
    return int(marked.rowcount or 0)


def _work_waiting(sessions: Any, options: JobOptions, now: datetime) -> bool:
    """Whether a round has anything to write: a job to take or give up, or one expired. A
    plain read, so that an idle worker's rounds (every ``poll_seconds``) take no write lock:
    on SQLite each took the database's one write lock three times."""
    with _reading(sessions) as session:
        found = session.scalar(
            select(ExportJob.id)
            .where(
                or_(
                    _takeable(now, options),
                    _abandoned(now),
                    _expired(now),
                )
            )
            .limit(1)
        )
    return found is not None


def purge_jobs(sessions: Any, options: JobOptions, now: datetime) -> int:
    """Delete the jobs whose retention has passed, and their files; return how many jobs.

    The jobs are marked first (``file_deleted_at``, committed: from then on none is served),
    then their files deleted, then their rows. The files were deleted inside the transaction
    that deleted the rows: when it then failed, the jobs stayed done with their files gone.
    Now a failed transaction leaves every file its job still serves, and a job whose file
    (or row) could not be deleted stays, marked, for the next round to try again."""
    with write_transaction(sessions) as session:
        expired = [
            (job.id, options.path_of(job))
            for job in session.scalars(select(ExportJob).where(_expired(now)))
        ]
        if expired:
            session.execute(
                update(ExportJob)
                .where(
                    ExportJob.id.in_([job_id for job_id, _ in expired]),
                    ExportJob.file_deleted_at.is_(None),
                )
                .values(file_deleted_at=utcnow())
            )
    gone = [job_id for job_id, path in expired if _delete_file(path)]
    if not gone:
        return 0
    with write_transaction(sessions) as session:
        purged = session.execute(
            delete(ExportJob).where(ExportJob.id.in_(gone), ExportJob.file_deleted_at.is_not(None))
        )
    return int(purged.rowcount or 0)


def run_export_jobs(
    sessions: Any, options: JobOptions, now: datetime | None = None
) -> dict[str, int]:
    """Run every queued job (and every job whose worker stopped: its lease ran out), then
    purge the expired ones; return counts by outcome."""
    counts = {"done": 0, "failed": 0, "purged": 0}
    _delete_failed_files(sessions, options)
    if not _work_waiting(sessions, options, now or utcnow()):
        return counts
    counts["failed"] += _give_up(sessions, options, now or utcnow())
    while (taken := _claim(sessions, options, now or utcnow())) is not None:
        status = run_job(sessions, options, taken[0], now or utcnow(), attempt=taken[1])
        if status in counts:
            counts[status] += 1
    counts["purged"] = purge_jobs(sessions, options, now or utcnow())
    return counts


def run_forever(sessions: Any, options: JobOptions, *, stop: threading.Event) -> None:
    """Run export jobs every ``poll_seconds`` until ``stop`` is set; never raises."""
    while not stop.is_set():
        try:
            counts = run_export_jobs(sessions, options)
        except Exception:  # keep the loop alive: the next round tries again
            log.exception("export jobs round failed")
        else:
            if any(counts.values()):
                log.info("exports: %s", " ".join(f"{k}={v}" for k, v in counts.items()))
        stop.wait(options.poll_seconds)
