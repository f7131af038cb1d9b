"""GeoJSON ⇄ shapely ⇄ database values, with the checks every incoming geometry gets."""

from __future__ import annotations

from typing import Any

import shapely
from geoalchemy2.elements import WKBElement
from geoalchemy2.shape import from_shape, to_shape
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry


class GeometryError(ValueError):
    """A geometry that cannot be used; the message says why."""


def multipolygon_from_geojson(obj: Any) -> MultiPolygon:
    """Return a 2-D MultiPolygon from a GeoJSON Polygon/MultiPolygon object.

    Raises GeometryError for other types, unreadable coordinates or lon/lat out of range.
    The geometry may still be invalid (self-intersections are reported, not refused here).
    """
    if not isinstance(obj, dict) or "type" not in obj:
        raise GeometryError("must be a GeoJSON geometry object with a 'type'")
    if obj["type"] not in ("Polygon", "MultiPolygon"):
        raise GeometryError(f"must be a Polygon or MultiPolygon, not {obj['type']}")
    try:
        geom = shape(obj)
    except Exception as exc:  # shapely raises several types for malformed coordinates
        raise GeometryError(f"coordinates are not readable: {exc}") from exc
    geom = shapely.force_2d(geom)
    if geom.is_empty:
        raise GeometryError("is empty")
    minx, miny, maxx, maxy = geom.bounds
    if minx < -180 or maxx > 180 or miny < -90 or maxy > 90:
        raise GeometryError("coordinates must be [lon, lat] within ±180 and ±90 degrees")
    return as_multipolygon(geom)


def as_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """Return ``geom`` as a MultiPolygon (polygonal parts only)."""
    if isinstance(geom, MultiPolygon):
        return geom
    if isinstance(geom, Polygon):
        return MultiPolygon([geom])
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    polys: list[Polygon] = []
    for part in parts:
        polys.extend(part.geoms if isinstance(part, MultiPolygon) else [part])
    return MultiPolygon(polys)


def to_db(geom: BaseGeometry | None) -> WKBElement | None:
    """Return a value for a Geometry(srid=4326) column."""
    return None if geom is None else from_shape(geom, srid=4326)


def from_db(value: Any) -> BaseGeometry | None:
    """Return the shapely geometry of a Geometry column value."""
    return None if value is None else to_shape(value)


def to_geojson(geom: BaseGeometry | None) -> dict[str, Any] | None:
    """Return the GeoJSON mapping of ``geom`` with lon/lat coordinates."""
    return None if geom is None else mapping(geom)


def geojson_point(lon: float, lat: float) -> dict[str, Any]:
    """Return the GeoJSON Point at ``lon``, ``lat`` (GeoJSON order), the numbers as given:
    ``{"type": "Point", "coordinates": [lon, lat]}``, its keys in that order."""
    return {"type": "Point", "coordinates": [lon, lat]}
