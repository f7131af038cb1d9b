"""Schemas shared by several resources: pagination, GeoJSON values."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate


class StrictSchema(Schema):
    """Base schema: unknown fields are an error, not silently dropped."""

    class Meta:
        unknown = RAISE


class PageArgsSchema(StrictSchema):
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "Page size (1-1000)."},
    )


class GeoJSONGeometry(fields.Dict):
    """A GeoJSON geometry object; its shape is checked by the service that uses it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        value = super()._deserialize(value, attr, data, **kwargs)
        if "type" not in value or "coordinates" not in value:
            raise ValidationError("must be a GeoJSON geometry with 'type' and 'coordinates'")
        return value


class PointSchema(StrictSchema):
    type = fields.String(required=True, validate=validate.Equal("Point"))
    coordinates = fields.List(
        fields.Float(allow_nan=False),
        required=True,
        validate=validate.Length(equal=2),
        metadata={"description": "[lon, lat] in WGS-84 (EPSG:4326)."},
    )
