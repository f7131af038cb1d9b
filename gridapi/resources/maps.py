"""Map layers over HTTP: case counts per grid (GeoJSON choropleth) and clustered case points."""

from __future__ import annotations

from typing import Any

from flask import Response
from flask.views import MethodView

from ..auth import current_principal
from ..extensions import db_session
from ..jsonio import dumps_bytes
from ..schemas.maps import (
    CaseClustersArgsSchema,
    CaseClustersSchema,
    CaseCountsArgsSchema,
    CaseCountsSchema,
)
from ..services import maps as svc
from ..services.cases import caller_of
from .blueprint import Blueprint

blp = Blueprint(
    "maps",
    __name__,
    url_prefix="/api/v1/maps",
    description="Map layers over the cases the caller may see, filtered like the case list: "
    "counts per grid for a choropleth, and clustered points for a map view.",
)

GEOJSON = "application/geo+json"

_COUNTS_EXAMPLE = {
    "type": "FeatureCollection",
    "region": "320508001001",
    "total": 3,
    "features": [
        {
            "type": "Feature",
            "id": "320508001001001",
            "properties": {
                "code": "320508001001001",
                "name": "第001网格",
                "community": "320508001001",
                "community_name": "平江社区",
                "count": 3,
                "open": 2,
                "overdue": 1,
            },
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [
                    [
                        [
                            [120.6, 31.3],
                            [120.61, 31.3],
                            [120.61, 31.31],
                            [120.6, 31.31],
                            [120.6, 31.3],
                        ]
                    ]
                ],
            },
        }
    ],
}
_CLUSTERS_EXAMPLE = {
    "type": "FeatureCollection",
    "zoom": 15,
    "cell_degrees": 0.00274658203125,
    "total": 4,
    "truncated": False,
    "features": [
        {
            "type": "Feature",
            "properties": {"count": 3},
            "geometry": {"type": "Point", "coordinates": [120.6051, 31.3049]},
        },
        {
            "type": "Feature",
            "properties": {
                "count": 1,
                "id": 42,
                "number": "320508-20261128-0001",
                "status": "filed",
                "category": "0101",
            },
            "geometry": {"type": "Point", "coordinates": [120.615, 31.305]},
        },
    ],
}


def _filters(args: dict[str, Any]) -> dict[str, Any]:
    query = dict(args)
    if "from_" in query:
        query["from"] = query.pop("from_")
    return query


def _geojson(body: dict[str, Any]) -> Response:
    return Response(dumps_bytes(body), status=200, mimetype=GEOJSON)


@blp.route("/case-counts")
class CaseCounts(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(CaseCountsArgsSchema, location="query")
    @blp.response(200, CaseCountsSchema, content_type=GEOJSON, example=_COUNTS_EXAMPLE)
    @blp.alt_response(404, response="NOT_FOUND")
    def get(self, args):
        """Count cases per grid, as GeoJSON for a choropleth

        One Feature per grid in service in the area (`region`, else your whole scope) that is
        in your scope, grids without cases included, with its outline and `count`, `open`
        and `overdue`: the cases located in the grid that the case list would show you with
        the same filters (status, category, from/to, overdue, supervision, source, open…;
        sensitive cases only if you hold or reported them). `zoom` or `simplify` thins the
        outlines so that a township's map stays small. A region outside your scope (or
        unknown) → 404; no region when your scope is everything, or more than 5000 grids →
        422. Conditional: send the ETag back in `If-None-Match` for a 304.
        """
        session = db_session()
        caller = caller_of(session, current_principal())
        query = _filters(args)
        zoom, simplify = query.pop("zoom", None), query.pop("simplify", None)
        tolerance = svc.zoom_tolerance(zoom) if zoom is not None else simplify
        return _geojson(svc.case_counts(session, caller, query, tolerance=tolerance))


@blp.route("/case-clusters")
class CaseClusters(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(CaseClustersArgsSchema, location="query")
    @blp.response(200, CaseClustersSchema, content_type=GEOJSON, example=_CLUSTERS_EXAMPLE)
    def get(self, args):
        """Cluster the cases in a map view, as GeoJSON points

        The cases in `bbox` that the case list would show you with the same filters,
        grouped in SQL by cells of a quarter of a Web-Mercator tile at `zoom` (360 / 2^zoom
        / 4 degrees), each at the mean position of its cases with its `count`; a cluster of
        one carries the case's `id`, `number`, `status` and `category` so that the phone
        can open it. From zoom 17 every case is its own point. At most 2000 clusters, the
        biggest first (`truncated` is true when more were left out; `total` still counts
        every case). A bbox wider or taller than 64 tiles of the zoom → 422. A region
        outside your scope filters everything out, as in the case list.
        """
        session = db_session()
        caller = caller_of(session, current_principal())
        return _geojson(svc.case_clusters(session, caller, _filters(args)))
