"""Schemas of the administrative tree."""

from __future__ import annotations

from marshmallow import ValidationError, fields, validate

from ..codes import LEVELS, InvalidCode, region_level
from .common import GeoJSONGeometry, PageArgsSchema, Stated, StrictSchema

CODE12 = validate.Regexp(r"^[0-9]{12}\Z", error="must be a 12-digit statistical division code")


def division_code(value: str) -> None:
    """Refuse 12 digits that are no division code (province 99, township 000 under a
    village…), naming the field: a service refused them later with a 422 naming nothing."""
    try:
        region_level(value)
    except InvalidCode as exc:
        raise ValidationError(str(exc)) from None


#: A well-formed statistical division code (the pattern, then its structure).
REGION_CODE = [CODE12, division_code]


class RegionSchema(StrictSchema):
    code = fields.String(required=True, metadata={"example": "320508019044"})
    name = fields.String(required=True, metadata={"example": "平江社区"})
    level = fields.String(required=True, validate=validate.OneOf(LEVELS))
    parent_code = fields.String(allow_none=True)
    valid_from = fields.Date(allow_none=True)
    valid_to = fields.Date(allow_none=True)
    has_boundary = fields.Boolean()


class RegionDetailSchema(RegionSchema):
    boundary = GeoJSONGeometry(
        allow_none=True,
        attribute="boundary_geojson",
        data_key="boundary",
        metadata={"description": "MultiPolygon, WGS-84 [lon, lat]."},
    )


class RegionPageSchema(StrictSchema):
    items = fields.List(fields.Nested(RegionSchema), required=True)
    next = fields.String(
        allow_none=True,
        metadata={"description": "Pass as `after` to get the next page; null on the last page."},
    )


class RegionListSchema(StrictSchema):
    items = fields.List(fields.Nested(RegionSchema), required=True)


class RegionQueryArgsSchema(PageArgsSchema):
    level = fields.String(validate=validate.OneOf(LEVELS))
    parent = fields.String(validate=CODE12, metadata={"description": "Direct children of."})
    within = fields.String(validate=CODE12, metadata={"description": "Whole subtree of."})
    q = fields.String(
        validate=validate.Length(min=1, max=100), metadata={"description": "Part of the name."}
    )
    on = fields.Date(metadata={"description": "Regions valid on this day (default today)."})
    after = fields.String(validate=CODE12, metadata={"description": "Cursor: codes after."})


class OnDateArgsSchema(StrictSchema):
    on = fields.Date(metadata={"description": "The version valid on this day (default today)."})


class RegionPeriodArgsSchema(StrictSchema):
    on = fields.Date(
        metadata={
            "description": "The period to change: the one valid on this day, today or later "
            "(default today; a period that has ended is history and stays as it was)."
        }
    )


class SubtreeArgsSchema(OnDateArgsSchema):
    max_level = fields.String(
        validate=validate.OneOf(LEVELS), metadata={"description": "Stop at this level."}
    )


class RegionCreateSchema(StrictSchema):
    code = fields.String(required=True, validate=CODE12)
    name = Stated(required=True, validate=validate.Length(min=1, max=100))  # not "   "
    level = fields.String(
        validate=validate.OneOf(LEVELS), metadata={"description": "Optional; must match the code."}
    )
    parent_code = fields.String(
        validate=CODE12, metadata={"description": "Optional; must match the code."}
    )
    boundary = GeoJSONGeometry(allow_none=True)
    valid_from = fields.Date(allow_none=True)
    valid_to = fields.Date(allow_none=True)


class RegionUpdateSchema(StrictSchema):
    name = Stated(validate=validate.Length(min=1, max=100))
    boundary = GeoJSONGeometry(allow_none=True)
    valid_from = fields.Date(allow_none=True)
    valid_to = fields.Date(allow_none=True)
    effective_from = fields.Date(
        metadata={
            "description": "Start a new period on this day instead of correcting the current one; "
            "the current row then ends the day before (history is kept). A `valid_from` "
            "given with it may not be later (422: the code would have no period in between)."
        }
    )


class RegionImportRowSchema(StrictSchema):
    code = fields.String(required=True)
    name = fields.String(required=True)
    level = fields.String(validate=validate.OneOf(LEVELS))
    boundary = GeoJSONGeometry(allow_none=True)


class RegionImportResultSchema(StrictSchema):
    created = fields.Integer(required=True)
    updated = fields.Integer(required=True)
    unchanged = fields.Integer(required=True)
    errors = fields.List(fields.Dict(), required=True)
