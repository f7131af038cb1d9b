"""Point routing over HTTP: which grid and which regions answer for a point."""

from __future__ import annotations

import numpy as np
from flask import Response
from flask.views import MethodView

from ..extensions import state
from ..geo.crs import to_wgs84, to_wgs84_many
from ..jsonio import dumps_bytes
from ..schemas.locate import (
    LocateArgsSchema,
    LocateBatchResultSchema,
    LocateBatchSchema,
    LocateResultSchema,
)
from ..services.routing import _METHOD_NAMES, Match
from .blueprint import Blueprint

blp = Blueprint(
    "locate",
    __name__,
    url_prefix="/api/v1/locate",
    description="Which grid, and which regions, are responsible for a point.",
)

ROUTING_DOC = """
Semantics: a grid *covers* a point inside it or on its edge; where several grids cover it, a
grid whose interior holds the point beats grids it only touches, then the lowest grid code
wins. A point in a gap snaps to the nearest grid within `GRIDAPI_ROUTING_SNAP_METERS`
(method `snapped`, with `distance_m`); otherwise `grid` is null (method `none`) and `regions`
is the smallest region whose boundary covers the point, if any.
"""


def _json(body: object) -> Response:
    return Response(dumps_bytes(body), mimetype="application/json")


@blp.route("")
class Locate(MethodView):
    @blp.arguments(LocateArgsSchema, location="query")
    @blp.response(200, LocateResultSchema)
    def get(self, args):
        """Route one point to its grid"""
        lon, lat = to_wgs84(args["lon"], args["lat"], args["crs"])
        snap = state().routing.snapshot()
        return _json(snap.answer(snap.locate(lon, lat), lon, lat))

    get.__doc__ = (get.__doc__ or "") + "\n" + ROUTING_DOC


@blp.route("/batch")
class LocateBatch(MethodView):
    @blp.arguments(LocateBatchSchema)
    @blp.response(200, LocateBatchResultSchema)
    def post(self, data):
        """Route up to 10,000 points; results in the same order"""
        lons, lats = data["points"]
        if data["crs"] not in ("wgs84", "cgcs2000") and len(lons):
            lons, lats = to_wgs84_many(lons, lats, data["crs"])
        snap = state().routing.snapshot()
        grid, method, dist = snap.locate_many(lons, lats)
        lon_list, lat_list = lons.tolist(), lats.tolist()
        results = []
        for i, g in enumerate(grid.tolist()):
            d = dist[i]
            match = Match(g, _METHOD_NAMES[method[i]], None if np.isnan(d) else float(d))
            results.append(snap.answer(match, lon_list[i], lat_list[i]))
        return _json({"results": results})

    post.__doc__ = (post.__doc__ or "") + "\n" + ROUTING_DOC
