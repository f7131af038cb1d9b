"""Schemas of point routing; the batch's points are checked with numpy, not per value."""

from __future__ import annotations

from typing import Any

import numpy as np
from marshmallow import ValidationError, fields, validate

from ..geo.crs import SUPPORTED_CRS
from .common import StrictSchema
from .grids import GridSchema
from .regions import RegionSchema

MAX_BATCH = 10_000

CRS_FIELD_DOC = (
    "Coordinate system of the input: wgs84 (GPS, default), cgcs2000 (= WGS-84 "
    "within centimetres), gcj02 (AMap/Tencent), bd09 (Baidu). GCJ-02 and BD-09 "
    "are converted to WGS-84 with the iterative inverse (sub-metre)."
)


class PointArray(fields.Field):
    """A list of [lon, lat] pairs, returned as two float arrays; validated in one pass."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise ValidationError("must be a list of [lon, lat] pairs")
        if len(value) > MAX_BATCH:
            raise ValidationError(f"at most {MAX_BATCH} points per request")
        try:
            arr = np.array(value, dtype=np.float64)
        except (TypeError, ValueError):
            arr = None
        if (
            arr is None
            or (len(value) and (arr.ndim != 2 or arr.shape[1] != 2))
            # numpy reads "120.5" as a number: only JSON numbers are (and no booleans)
            or any(
                type(v) is not float and type(v) is not int
                for pair in value
                if isinstance(pair, list)
                for v in pair
            )
        ):
            bad = next((i for i, p in enumerate(value) if not _is_pair(p)), 0)
            raise ValidationError({str(bad): ["must be [lon, lat] with two numbers"]})
        if len(value) == 0:
            return np.empty(0), np.empty(0)
        lons, lats = arr[:, 0], arr[:, 1]
        bad_mask = ~(
            np.isfinite(lons) & np.isfinite(lats) & (np.abs(lons) <= 180) & (np.abs(lats) <= 90)
        )
        if bad_mask.any():
            errors = {
                str(int(i)): ["lon must be within ±180 and lat within ±90"]
                for i in np.flatnonzero(bad_mask)[:20]
            }
            raise ValidationError(errors)
        return lons.copy(), lats.copy()

    def _jsonschema_type_mapping(self) -> dict[str, Any]:  # pragma: no cover - docs only
        return {}


def _is_pair(p: Any) -> bool:
    return (
        isinstance(p, list)
        and len(p) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p)
    )


class LocateBatchSchema(StrictSchema):
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    points = PointArray(
        required=True,
        metadata={
            "description": f"Up to {MAX_BATCH} points as [lon, lat].",
            "type": "array",
            "maxItems": MAX_BATCH,
            "items": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "example": [[120.62, 31.31], [120.6, 31.3]],
        },
    )


class LocatedGridSchema(StrictSchema):
    id = fields.Integer(required=True)
    code = fields.String(required=True)
    name = fields.String(required=True)
    type = fields.String(required=True)
    community_code = fields.String(required=True)
    version_id = fields.Integer(
        required=True, metadata={"description": "The grid version this answer was routed with."}
    )


class RegionRefSchema(StrictSchema):
    code = fields.String(required=True)
    name = fields.String(required=True)
    level = fields.String(required=True)


class LocateResultSchema(StrictSchema):
    grid = fields.Nested(LocatedGridSchema, allow_none=True, required=True)
    regions = fields.List(
        fields.Nested(RegionRefSchema),
        required=True,
        metadata={"description": "Community (or the smallest region found) up to the province."},
    )
    point = fields.Dict(
        required=True, metadata={"description": "The canonical WGS-84 point as a GeoJSON Point."}
    )
    method = fields.String(
        required=True, validate=validate.OneOf(["inside", "boundary", "snapped", "none"])
    )
    distance_m = fields.Float(metadata={"description": "Distance to the grid when snapped."})


class LocateBatchResultSchema(StrictSchema):
    results = fields.List(fields.Nested(LocateResultSchema), required=True)


__all__ = ["GridSchema", "RegionSchema"]
