"""Schemas of grid versions, grids and their GeoJSON."""

from __future__ import annotations

from marshmallow import fields, validate

from ..models.grids import GRID_TYPES, VERSION_STATUSES
from .common import GeoJSONGeometry, PageArgsSchema, StrictSchema
from .regions import CODE12, REGION_CODE


class GridVersionSchema(StrictSchema):
    id = fields.Integer(required=True)
    region_code = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(VERSION_STATUSES))
    label = fields.String(allow_none=True)
    source = fields.String(allow_none=True)
    grid_count = fields.Integer(required=True)
    error_count = fields.Integer(required=True)
    warning_count = fields.Integer(required=True)
    forced = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)
    activated_at = fields.DateTime(allow_none=True)
    retired_at = fields.DateTime(allow_none=True)


class GridVersionDetailSchema(GridVersionSchema):
    report = fields.Dict(
        required=True,
        metadata={
            "description": "The validation report: per grid invalid geometry, overlaps (m²), parts "
            "outside the community (m²); per community the gaps (m²), and every community of the "
            "version's region left without any grid (`community_without_grids`)."
        },
    )


class GridVersionListSchema(StrictSchema):
    items = fields.List(fields.Nested(GridVersionSchema), required=True)
    next = fields.Integer(allow_none=True)


class GridVersionQueryArgsSchema(PageArgsSchema):
    region = fields.String(validate=REGION_CODE)
    status = fields.String(validate=validate.OneOf(VERSION_STATUSES))
    after = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "Cursor: versions older than this id."},
    )


class GridVersionImportArgsSchema(StrictSchema):
    region = fields.String(
        validate=CODE12,
        metadata={
            "description": "The region whose grid set this is (default: the deepest region "
            "containing every grid). Activation replaces its whole grid set, so each of its "
            "communities that the file leaves without a grid is an error in the report."
        },
    )
    label = fields.String(validate=validate.Length(max=200))
    source = fields.String(validate=validate.Length(max=300))


class FeatureCollectionSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.Equal("FeatureCollection"))
    features = fields.List(
        fields.Dict(),
        required=True,
        metadata={
            "description": "Features with a Polygon/MultiPolygon in WGS-84 and properties code "
            "(15 digits), name and optional type (basic|dedicated)."
        },
    )
    name = fields.String()
    bbox = fields.List(fields.Float())
    crs = fields.Dict(metadata={"description": "Ignored: coordinates must be WGS-84/CGCS2000."})


class ActivateSchema(StrictSchema):
    force = fields.Boolean(
        load_default=False, metadata={"description": "Activate even though the report has errors."}
    )


class GridSchema(StrictSchema):
    id = fields.Integer(required=True)
    code = fields.String(required=True, metadata={"example": "320508019044001"})
    name = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(GRID_TYPES))
    community_code = fields.String(required=True)
    county_code = fields.String(required=True)
    version_id = fields.Integer(required=True)
    area_m2 = fields.Float(required=True)
    in_service = fields.Boolean(required=True)


class GridDetailSchema(GridSchema):
    geometry = GeoJSONGeometry(required=True)


class GridPageSchema(StrictSchema):
    items = fields.List(fields.Nested(GridSchema), required=True)
    next = fields.String(allow_none=True)


class GridQueryArgsSchema(PageArgsSchema):
    region = fields.String(validate=REGION_CODE, metadata={"description": "Subtree of a region."})
    community = fields.String(validate=CODE12)
    type = fields.String(validate=validate.OneOf(GRID_TYPES))
    q = fields.String(validate=validate.Length(min=1, max=100))
    version = fields.Integer(
        metadata={"description": "Grids of this version instead of the grids in service."}
    )
    after = fields.String(validate=validate.Regexp(r"^[0-9]{15}\Z"))


class GridExportArgsSchema(StrictSchema):
    region = fields.String(validate=REGION_CODE, metadata={"description": "Subtree of a region."})
    version = fields.Integer(metadata={"description": "A version's grids instead."})


class GridByCodeArgsSchema(StrictSchema):
    version = fields.Integer(metadata={"description": "The grid of this version."})
