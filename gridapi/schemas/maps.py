"""Schemas of the map layers: the case list's filters plus area, zoom and bbox; the answers."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema
from webargs.fields import DelimitedList

from ..services.maps import MAX_CLUSTERS, MAX_GRIDS, MAX_TILES_ACROSS, POINTS_ZOOM
from .cases import CaseQueryArgsSchema

ZOOM = validate.Range(min=0, max=22)


class CaseCountsArgsSchema(CaseQueryArgsSchema):
    """The case list's filters (without paging, grid, bbox and unrouted), the area, and how
    much to simplify the grids' outlines."""

    class Meta(CaseQueryArgsSchema.Meta):
        exclude = ("sort", "cursor", "limit", "grid", "bbox", "unrouted")

    region = fields.String(
        validate=validate.Regexp(r"^[0-9]{12}\Z"),
        metadata={
            "description": "The area to map: the grids of this region's subtree that are in "
            "your scope. Default: your whole scope (required when your scope is everything). "
            f"At most {MAX_GRIDS} grids.",
            "example": "320508001000",
        },
    )
    zoom = fields.Integer(
        validate=ZOOM,
        metadata={
            "description": "Simplify the outlines to a pixel of this Web-Mercator zoom level.",
            "example": 14,
        },
    )
    simplify = fields.Float(
        allow_nan=False,
        validate=validate.Range(min=0, max=0.01),
        metadata={
            "description": "Simplify the outlines with this tolerance in degrees (instead "
            "of `zoom`); 0 keeps them as stored.",
            "example": 0.0001,
        },
    )

    @validates_schema
    def _one_tolerance(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "zoom" in data and "simplify" in data:
            raise ValidationError({"simplify": ["give zoom or simplify, not both"]})


class CaseClustersArgsSchema(CaseQueryArgsSchema):
    """The case list's filters (without paging), a required bbox and the zoom level."""

    class Meta(CaseQueryArgsSchema.Meta):
        exclude = ("sort", "cursor", "limit")

    bbox = DelimitedList(
        fields.Float(allow_nan=False),
        required=True,
        validate=validate.Length(equal=4),
        metadata={
            "description": "The map's view: west,south,east,north in WGS-84, at most "
            f"{MAX_TILES_ACROSS} tiles of the zoom level each way.",
            "example": "120.60,31.30,120.64,31.32",
        },
    )
    zoom = fields.Integer(
        required=True,
        validate=ZOOM,
        metadata={
            "description": "The map's Web-Mercator zoom level (0-22): cases are grouped in "
            f"cells of a quarter tile; from {POINTS_ZOOM} on, each case is its own point.",
            "example": 15,
        },
    )


# --- answers (documentation: the views encode the FeatureCollections directly) ----------------

_POLYGON_EXAMPLE = {
    "type": "MultiPolygon",
    "coordinates": [
        [[[120.6, 31.3], [120.61, 31.3], [120.61, 31.31], [120.6, 31.31], [120.6, 31.3]]]
    ],
}


class GridCountPropertiesSchema(Schema):
    code = fields.String(metadata={"example": "320508001001001"})
    name = fields.String(metadata={"example": "第001网格"})
    community = fields.String(
        metadata={"description": "The grid's community code.", "example": "320508001001"}
    )
    community_name = fields.String(allow_none=True, metadata={"example": "平江社区"})
    count = fields.Integer(
        metadata={"description": "Matching cases located in the grid.", "example": 3}
    )
    open = fields.Integer(metadata={"description": "Of which still open.", "example": 2})
    overdue = fields.Integer(metadata={"description": "Of which overdue.", "example": 1})


class GridCountFeatureSchema(Schema):
    type = fields.String(metadata={"example": "Feature"})
    id = fields.String(metadata={"description": "The grid code.", "example": "320508001001001"})
    properties = fields.Nested(GridCountPropertiesSchema)
    geometry = fields.Dict(
        metadata={
            "description": "The grid's outline (simplified when asked), lon/lat.",
            "example": _POLYGON_EXAMPLE,
        }
    )


class CaseCountsSchema(Schema):
    type = fields.String(metadata={"example": "FeatureCollection"})
    region = fields.String(
        allow_none=True,
        metadata={"description": "The region asked for (null: your scope).", "example": None},
    )
    total = fields.Integer(
        metadata={"description": "Matching cases in the grids shown.", "example": 3}
    )
    features = fields.List(
        fields.Nested(GridCountFeatureSchema),
        metadata={"description": "Every grid in service in the area, by code, with 0 counts."},
    )


class ClusterPropertiesSchema(Schema):
    count = fields.Integer(metadata={"description": "Cases in the cluster.", "example": 1})
    id = fields.Integer(metadata={"description": "A cluster of one: the case.", "example": 42})
    number = fields.String(metadata={"example": "320508-20261128-0001"})
    status = fields.String(metadata={"example": "filed"})
    category = fields.String(metadata={"example": "0101"})


class ClusterFeatureSchema(Schema):
    type = fields.String(metadata={"example": "Feature"})
    properties = fields.Nested(ClusterPropertiesSchema)
    geometry = fields.Dict(
        metadata={
            "description": "A Point at the mean position of the cluster's cases.",
            "example": {"type": "Point", "coordinates": [120.605, 31.305]},
        }
    )


class CaseClustersSchema(Schema):
    type = fields.String(metadata={"example": "FeatureCollection"})
    zoom = fields.Integer(metadata={"example": 15})
    cell_degrees = fields.Float(
        allow_none=True,
        metadata={
            "description": "The cell size the cases were grouped by (null: single points).",
            "example": 0.00274658203125,
        },
    )
    total = fields.Integer(metadata={"description": "Matching cases in the bbox.", "example": 1})
    truncated = fields.Boolean(
        metadata={
            "description": f"More than {MAX_CLUSTERS} clusters: the smallest were left out.",
            "example": False,
        }
    )
    features = fields.List(fields.Nested(ClusterFeatureSchema))
