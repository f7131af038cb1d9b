"""Query arguments of the exports: the list filters of each kind, a format, and unmasking."""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate
from webargs.fields import DelimitedList

from ..models.exports import EXPORT_JOB_STATUSES
from ..services.exports import FORMATS, KINDS
from .cases import CaseQueryArgsSchema
from .common import StrictSchema
from .register import (
    PersonArgsSchema,
    PurposeFields,
    VisitArgsSchema,
    purpose_code_field,
    reference_field,
)
from .tasks import TaskArgsSchema

_PAGING = ("cursor", "limit")


def _format() -> fields.Field:
    return fields.String(
        load_default="csv",
        validate=validate.OneOf(FORMATS),
        metadata={
            "description": "csv (UTF-8 with BOM, Chinese headers), xlsx, or geojson "
            "(a FeatureCollection).",
            "example": "csv",
        },
    )


class CaseExportArgsSchema(CaseQueryArgsSchema):
    """The filters of `GET /api/v1/cases` (and its `sort`), without paging."""

    class Meta(CaseQueryArgsSchema.Meta):
        exclude = _PAGING

    format = _format()


class TaskExportArgsSchema(TaskArgsSchema):
    """The filters of `GET /api/v1/tasks`, without paging."""

    class Meta(TaskArgsSchema.Meta):
        exclude = _PAGING

    format = _format()


class VisitExportArgsSchema(VisitArgsSchema):
    """The filters of `GET /api/v1/visits`, without paging."""

    class Meta(VisitArgsSchema.Meta):
        exclude = _PAGING

    format = _format()


class PersonExportArgsSchema(PersonArgsSchema, PurposeFields):
    """The filters of `GET /api/v1/persons`, without paging; `unmask` with a `purpose_code`."""

    PURPOSE_ALWAYS = False

    class Meta(PersonArgsSchema.Meta):
        exclude = _PAGING

    format = _format()
    # Not the search's: here it is also why full values are read (required with unmask).
    purpose_code = purpose_code_field(
        "Why the full values are needed, or an ID or phone number looked up (kept in the "
        "audit log)",
        " Required with `unmask=true` unless the deprecated `purpose` is given; optional "
        "otherwise, and kept in the `person.lookup` row of an `id_number` or `phone`.",
    )
    reference = reference_field()
    unmask = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Full names, ID and phone numbers and birth dates: needs "
            "`persons:unmask` and a `purpose_code`; audited and rate-limited.",
        },
    )


# --- export jobs ------------------------------------------------------------------------------


class ListOrDelimited(DelimitedList):
    """A query's comma-separated list, in a job's JSON filters also a JSON array: a bbox
    could be given to a job in no form ("120.5,…" is text where a number is due; an array is
    not a delimited list)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, list):
            return fields.List._deserialize(self, value, attr, data, **kwargs)
        return super()._deserialize(value, attr, data, **kwargs)


class _JobFilters:
    """The filters of a job: a list's query parameters, as JSON."""

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        super().on_bind_field(field_name, field_obj)  # type: ignore[misc]
        if type(field_obj) is DelimitedList:
            field_obj.__class__ = ListOrDelimited


class CaseJobFiltersSchema(_JobFilters, CaseExportArgsSchema):
    class Meta(CaseExportArgsSchema.Meta):
        exclude = (*_PAGING, "format")


class TaskJobFiltersSchema(_JobFilters, TaskExportArgsSchema):
    class Meta(TaskExportArgsSchema.Meta):
        exclude = (*_PAGING, "format")


class VisitJobFiltersSchema(_JobFilters, VisitExportArgsSchema):
    class Meta(VisitExportArgsSchema.Meta):
        exclude = (*_PAGING, "format")


class PersonJobFiltersSchema(_JobFilters, PersonExportArgsSchema):
    # No exact ID or phone number: a job keeps its filters, and those are never stored in
    # plain text (an exact lookup finds one resident: the streamed export serves it).
    class Meta(PersonExportArgsSchema.Meta):
        exclude = (
            *_PAGING,
            "format",
            "unmask",
            "purpose",
            "purpose_code",
            "reference",
            "id_number",
            "phone",
        )


_JOB_FILTERS: dict[str, type[StrictSchema]] = {
    "cases": CaseJobFiltersSchema,
    "tasks": TaskJobFiltersSchema,
    "visits": VisitJobFiltersSchema,
    "persons": PersonJobFiltersSchema,
}


def job_filters_schema(kind: str) -> type[StrictSchema]:
    """Return the schema of the ``filters`` of an export job of ``kind`` (the list's)."""
    return _JOB_FILTERS[kind]


class ExportJobCreateSchema(PurposeFields):
    PURPOSE_ALWAYS = False

    format = fields.String(
        load_default="csv",
        validate=validate.OneOf(FORMATS),
        metadata={"description": "csv, xlsx or geojson.", "example": "xlsx"},
    )
    filters = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={
            "description": "The filters of the list of this kind, as JSON (the query "
            "parameters of the streamed export, without `format`).",
            "example": {"region": "320508001000", "open": True},
        },
    )
    unmask = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Residents only: full values; needs `persons:unmask` and a `purpose_code`.",
            "example": False,
        },
    )


class ExportJobSchema(StrictSchema):
    id = fields.Integer(required=True)
    kind = fields.String(required=True, validate=validate.OneOf(KINDS))
    format = fields.String(required=True, validate=validate.OneOf(FORMATS))
    status = fields.String(
        required=True,
        validate=validate.OneOf(EXPORT_JOB_STATUSES),
        metadata={"description": "queued, running, done or failed."},
    )
    filters = fields.Dict(required=True)
    masked = fields.Boolean(required=True)
    row_count = fields.Integer(allow_none=True, required=True)
    size_bytes = fields.Integer(allow_none=True, required=True)
    error = fields.String(allow_none=True, required=True)
    created_at = fields.DateTime(required=True)
    started_at = fields.DateTime(allow_none=True, required=True)
    finished_at = fields.DateTime(allow_none=True, required=True)
    expires_at = fields.DateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When the file and the job are deleted."},
    )
    download = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "The file's URL once the job is done (only for you)."},
    )
