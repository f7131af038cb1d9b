"""Bulk import of residents over HTTP: a CSV or XLSX file as offices keep it."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest.fields import Upload
from marshmallow import fields, validate
from webargs.multidictproxy import MultiDictProxy
from werkzeug.datastructures import CombinedMultiDict

from ..auditing import audit, request_actor
from ..auth import current_principal
from ..errors import Unprocessable
from ..extensions import commit, db_session, state
from ..geo.crs import SUPPORTED_CRS
from ..limits import count_lookup
from ..schemas.common import StrictSchema
from ..services import person_import as svc
from ..services import register as register_svc
from .blueprint import Blueprint, StrictParser, one_file, routing_snapshot
from .register import keys, lookup_left


class MultipartParser(StrictParser):
    """Adds the location ``multipart``: the form fields and the files of one
    ``multipart/form-data`` body, read by one schema (so the spec documents them together)."""

    __location_map__ = {**StrictParser.__location_map__, "multipart": "load_multipart"}
    DEFAULT_UNKNOWN_BY_LOCATION = {**StrictParser.DEFAULT_UNKNOWN_BY_LOCATION, "multipart": None}

    def load_multipart(self, req: Any, schema: Any) -> MultiDictProxy:
        return self._makeproxy(CombinedMultiDict([req.form, req.files]), schema)


class MultipartBlueprint(Blueprint):
    ARGUMENTS_PARSER = MultipartParser()
    DEFAULT_LOCATION_CONTENT_TYPE_MAPPING = {
        **Blueprint.DEFAULT_LOCATION_CONTENT_TYPE_MAPPING,
        "multipart": "multipart/form-data",
    }


blp = MultipartBlueprint(
    "person_import",
    __name__,
    url_prefix="/api/v1/persons",
    description="Bulk import of residents (实有人口) from the CSV and XLSX sheets offices keep: "
    "one row per person, with household and house columns. See docs/register-import.md.",
)


blp.takes_routing_snapshot()


class ImportUploadSchema(StrictSchema):
    TEXT_VALUES = True  # form fields are text: dry_run is "true" or "false"

    file = Upload(
        required=True,
        metadata={
            "description": "CSV (UTF-8 with or without BOM, or GB18030/GBK as Excel saves "
            "'CSV') or XLSX (the first visible sheet). The first row holds the column headers: 姓名 "
            "(required), 身份证号, 联系电话, 民族, 人口类型, 与户主关系, 现住址, 户籍地址, 户号, "
            "户类型, 房屋地址, 房屋用途, 经度, 纬度, 网格编码 (or their English names). At most "
            "GRIDAPI_IMPORT_MAX_ROWS rows."
        },
    )
    mode = fields.String(
        load_default="all",
        validate=validate.OneOf(svc.MODES),
        metadata={
            "description": "all: any row error and nothing is imported (422 with the report). "
            "valid: the valid rows are imported and the others reported (200)."
        },
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={
            "description": "The system of the file's 经度 and 纬度: wgs84 (GPS), cgcs2000, "
            "gcj02 (AMap, Tencent maps), bd09 (Baidu). Converted to WGS-84 before routing."
        },
    )
    dry_run = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Check every row and answer as the import would, with its counts "
            "(imported, houses_created, households_created); write nothing."
        },
    )


class ImportErrorSchema(StrictSchema):
    row = fields.Integer(
        required=True, metadata={"description": "Spreadsheet row number (the headers are row 1)."}
    )
    field = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "The column's header as written in the file, or null."},
    )
    message = fields.String(
        required=True,
        metadata={
            "description": "What is wrong (never the value itself).",
            "example": "身份证号: has a wrong check digit",
        },
    )


class ImportReportSchema(StrictSchema):
    mode = fields.String(required=True, metadata={"enum": list(svc.MODES)})
    dry_run = fields.Boolean(required=True)
    committed = fields.Boolean(
        required=True, metadata={"description": "Whether anything was written."}
    )
    file_type = fields.String(required=True, metadata={"enum": ["csv", "xlsx"]})
    rows = fields.Integer(
        required=True, metadata={"description": "Rows read (blank rows skipped)."}
    )
    valid = fields.Integer(required=True, metadata={"description": "Rows without errors."})
    failed = fields.Integer(required=True, metadata={"description": "Rows with errors."})
    imported = fields.Integer(
        required=True,
        metadata={
            "description": "Residents registered (in a dry run: that the import would "
            "register). 0 when nothing is (or would be) written."
        },
    )
    houses_created = fields.Integer(
        required=True,
        metadata={"description": "Houses created (in a dry run: that the import would create)."},
    )
    households_created = fields.Integer(
        required=True,
        metadata={
            "description": "Households created (in a dry run: that the import would create)."
        },
    )
    error_count = fields.Integer(required=True, metadata={"description": "All errors found."})
    errors_truncated = fields.Boolean(
        required=True, metadata={"description": f"Only the first {svc.MAX_LISTED_ERRORS} listed."}
    )
    errors = fields.List(fields.Nested(ImportErrorSchema), required=True)


@blp.route("/import")
class PersonImport(MethodView):
    @blp.requires("persons:import")
    @blp.arguments(ImportUploadSchema, location="multipart")
    @blp.response(200, ImportReportSchema)
    @blp.alt_response(
        422,
        description="The file cannot be read (encoding, format, unknown or missing columns, "
        "too many rows: `errors.file`), or, in mode `all`, rows have errors: nothing was "
        "imported and `errors` is the report.",
        schema=None,
    )
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="Another import into the caller's area (or one above or below it; on "
        "SQLite any other import) ran longer than this one could wait: nothing was imported; "
        "send the file again after Retry-After seconds.",
    )
    @blp.alt_response(413, response="CONTENT_TOO_LARGE")
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data):
        """Import residents from a CSV or XLSX file

        `multipart/form-data` with the file in `file`. Each row registers a resident; its
        house (by 房屋地址 at the row's place) and household (by 户号 in the county) are
        found or created. Places come from 经度/纬度 (routed like a case) or 网格编码, and
        must be in your scope. An ID number already registered in the county, or twice in
        the file, is a row error; each such row whose resident is outside your scope counts
        as an exact lookup against GRIDAPI_PERSON_LOOKUP_RATE (429 when the allowance is
        spent: nothing imported), as does each row whose 户号 belongs to a household outside
        your scope; other rows count nothing. Once the allowance is spent, a file with any ID
        number or 户号 is a 429 before a number is looked up, registered or not. Dry runs
        count the same.

        One transaction: in mode `all` any row error imports nothing (422 with the report);
        in mode `valid` exactly the rows reported valid are imported; any other failure
        imports nothing. Error messages never repeat a value from the file.
        """
        upload = one_file()
        principal = current_principal()
        session = db_session()
        report = svc.import_persons(
            session,
            upload.read(),
            upload.filename or "",
            scope=principal.scope,
            keys=keys(),
            snapshot=routing_snapshot(),
            actor=principal.actor_id,
            mode=data["mode"],
            dry_run=data["dry_run"],
            max_rows=state().settings.import_max_rows,
            crs=data["crs"],
            before_lookup=lookup_left,
        )
        if report.unseen_duplicates:
            # Each such row told the caller that an ID number or a household number (户号)
            # is registered outside its scope: counted as exact lookups (429, nothing
            # imported, when the allowance is spent).
            count_lookup(
                state().settings.person_lookup_rate,
                principal.actor_id,
                cost=report.unseen_duplicates,
            )
        if not report.committed:
            session.rollback()  # a dry run, or a refused file: only the audit rows are kept
        # Each row refused for an ID number registered outside the caller's scope told them
        # that someone in the county has it: audited as the lookup it was counted as, about
        # that resident, as a create refused so is (dry run or not).
        actor = request_actor()
        for masked, holder_id, region_code in report.unseen_holders:
            register_svc.record_number_holder(
                session, actor, masked, holder_id, region_code, via="import"
            )
        audit(
            "person.import",
            "person_import",
            None,
            summary=report.audit_summary(),
            region_code=report.region_code(principal.scope),
        )
        commit()
        body = report.as_dict()
        if report.mode == "all" and report.failed:
            raise Unprocessable(
                f"{report.failed} of {report.rows} row(s) have errors; nothing was imported.",
                errors=body,
            )
        return body
