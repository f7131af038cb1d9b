"""Point routing over HTTP: which grid and which regions answer for a point."""

from __future__ import annotations

import math

from flask import Response, request
from flask.views import MethodView

from ..auth import current_principal
from ..errors import Unprocessable
from ..extensions import state
from ..geo.crs import SUPPORTED_CRS, to_wgs84, to_wgs84_many
from ..numbers import PLAIN_DECIMAL
from ..schemas.locate import (
    CRS_FIELD_DOC,
    LocateBatchResultSchema,
    LocateBatchSchema,
    LocateResultSchema,
)
from .blueprint import Blueprint

blp = Blueprint(
    "locate",
    __name__,
    url_prefix="/api/v1/locate",
    description="Which grid, and which regions, are responsible for a point.",
)

_QUERY_PARAMETERS = [
    {
        "name": "lon",
        "in": "query",
        "required": True,
        "description": "Longitude, -180..180.",
        "schema": {"type": "number", "minimum": -180, "maximum": 180, "example": 120.62},
    },
    {
        "name": "lat",
        "in": "query",
        "required": True,
        "description": "Latitude, -90..90.",
        "schema": {"type": "number", "minimum": -90, "maximum": 90, "example": 31.31},
    },
    {
        "name": "crs",
        "in": "query",
        "required": False,
        "description": CRS_FIELD_DOC,
        "schema": {"type": "string", "enum": list(SUPPORTED_CRS), "default": "wgs84"},
    },
]


def _coordinate(args, name: str, limit: float, errors: dict) -> float:  # type: ignore[no-untyped-def]
    raw = args.get(name)
    if raw is None:
        errors[name] = ["Missing data for required field."]
        return 0.0
    if not PLAIN_DECIMAL.fullmatch(raw.strip(" ")):  # float() reads "1_20" as 120
        errors[name] = ["Not a valid number."]
        return 0.0
    value = float(raw)
    if not math.isfinite(value) or not -limit <= value <= limit:
        errors[name] = [
            f"Must be greater than or equal to {-limit} and less than or equal to {limit}."
        ]
    return value


def parse_locate_query(args) -> tuple[float, float, str]:  # type: ignore[no-untyped-def]
    """Return (lon, lat, crs) from the query string.

    Parsed by hand because this is the hottest endpoint: a schema per request costs more
    than the lookup. Raises Unprocessable in the same shape as schema errors.
    """
    errors: dict[str, list[str]] = {}
    lon = _coordinate(args, "lon", 180, errors)
    lat = _coordinate(args, "lat", 90, errors)
    crs = args.get("crs", "wgs84")
    if crs not in SUPPORTED_CRS:
        errors["crs"] = [f"Must be one of: {', '.join(SUPPORTED_CRS)}."]
    for name in args:
        if name == "fields":  # sparse fieldsets, applied after the view (gridapi.phone)
            continue
        if name not in ("lon", "lat", "crs"):
            errors[name] = ["Unknown field."]
        elif len(args.getlist(name)) > 1:
            errors[name] = ["Given more than once."]
    if errors:
        raise Unprocessable("", errors={"query": errors})  # the one default message
    return lon, lat, crs


def _json(body: bytes) -> Response:
    return Response(body, mimetype="application/json")


ROUTING_DOC = """
Answers are limited to the caller's scope: a point whose grid lies outside it answers like a
point outside every grid, and only regions the caller may see are listed.

Semantics: a grid *covers* a point inside it or on its edge; where several grids cover it, a
grid whose interior holds the point beats grids it only touches, then the lowest grid code
wins. A point in a gap snaps to the nearest grid within `GRIDAPI_ROUTING_SNAP_METERS`
(method `snapped`, with `distance_m`); otherwise `grid` is null (method `none`) and `regions`
is the smallest region whose boundary covers the point, if any.
"""


@blp.route("")
class Locate(MethodView):
    @blp.requires("grids:read")
    @blp.doc(parameters=_QUERY_PARAMETERS)
    @blp.alt_response(422, description="Invalid query: `errors.query` names each field.")
    @blp.response(200, LocateResultSchema)
    def get(self):
        """Route one point to its grid"""
        lon, lat, crs = parse_locate_query(request.args)
        lon, lat = to_wgs84(lon, lat, crs)
        snap = state().routing.snapshot()
        scope = current_principal().scope
        return _json(snap.encode_answer(snap.locate(lon, lat), lon, lat, scope))

    get.__doc__ = (get.__doc__ or "") + "\n" + ROUTING_DOC


@blp.route("/batch")
class LocateBatch(MethodView):
    @blp.requires("grids:read")
    @blp.arguments(LocateBatchSchema())
    @blp.response(200, LocateBatchResultSchema)
    def post(self, data):
        """Route up to 10,000 points; results in the same order"""
        lons, lats = data["points"]
        if data["crs"] not in ("wgs84", "cgcs2000") and len(lons):
            lons, lats = to_wgs84_many(lons, lats, data["crs"])
        snap = state().routing.snapshot()
        scope = current_principal().scope
        return _json(snap.encode_answers(lons, lats, scope))

    post.__doc__ = (post.__doc__ or "") + "\n" + ROUTING_DOC
