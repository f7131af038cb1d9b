"""Map layers over the cases: counts per grid (a choropleth) and clustered points.

Both count exactly the cases the case list would show the caller with the same filters
(``cases.case_conditions``: visibility first, sensitive cases included only for those who
hold or reported them), aggregated in SQL.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping
from sqlalchemy import Integer, case, cast, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from .. import clock
from ..codes import InvalidCode, region_level
from ..errors import NotFound, Unprocessable
from ..geo.shapes import as_multipolygon, geojson_point
from ..models import Case, Grid, Region
from .cases import OPEN_SQL, Caller, case_conditions, region_names
from .grids import grids_query
from .regions import valid_on

# A choropleth larger than this is refused (422): ask for a smaller region.
MAX_GRIDS = 5000
# At most this many clusters (or points) in one answer; the biggest are kept.
MAX_CLUSTERS = 2000
# A bbox may span at most this many Web-Mercator tiles of the zoom, each way.
MAX_TILES_ACROSS = 64
# From this zoom on, every case is its own point.
POINTS_ZOOM = 17
# Clusters snap to cells this many to a tile, each way.
CELLS_PER_TILE = 4
# Coordinates are rounded to 6 decimals (~0.1 m): shared edges stay equal, answers small.
DECIMALS = 6


def tile_degrees(zoom: int) -> float:
    """Return the width in degrees of a Web-Mercator tile at ``zoom``."""
    return 360.0 / 2**zoom


def zoom_tolerance(zoom: int) -> float:
    """Return the simplification tolerance (degrees) of one 256-pixel tile's pixel."""
    return tile_degrees(zoom) / 256


# --- counts per grid --------------------------------------------------------------------------


def _check_area(session: Session, caller: Caller, region: str | None) -> None:
    """Refuse a missing area (422 for an unrestricted caller) or one the caller may not see
    (404, like a region that does not exist)."""
    scope = caller.scope
    if region is None:
        if scope.unrestricted:
            raise Unprocessable(
                "Name the region to map.",
                errors={"query": {"region": ["required for a caller whose scope is everything"]}},
            )
        return
    try:
        region_level(region)
    except InvalidCode as exc:
        raise Unprocessable("Invalid region.", errors={"query": {"region": [str(exc)]}}) from None
    # Valid today, not open-ended: a township whose merger is planned (an end next month)
    # is mapped until then.
    exists = session.scalar(
        select(Region.id).where(Region.code == region, valid_on(clock.today())).limit(1)
    )
    # A region above the scope (the county of a township office, the community of a grid
    # worker) maps the part of it in scope; one beside it answers as a missing one.
    if exists is None or not scope.sees_region(region):
        raise NotFound("No such region.")


def case_counts(
    session: Session, caller: Caller, args: dict[str, Any], *, tolerance: float | None = None
) -> dict[str, Any]:
    """Return a GeoJSON FeatureCollection: every grid in service in the area and the caller's
    scope, with the number of matching cases located in it (all, open, overdue).

    The area is ``args["region"]``, else the caller's scope. Raises NotFound for a region
    outside the scope or unknown, Unprocessable when no area is named by an unrestricted
    caller or the area holds more than MAX_GRIDS grids.
    """
    region = args.get("region")
    _check_area(session, caller, region)
    grid_stmt = (
        grids_query(region=region, scope=caller.scope)
        .with_only_columns(Grid.code, Grid.name, Grid.community_code, func.ST_AsBinary(Grid.geom))
        .order_by(Grid.code)
        .limit(MAX_GRIDS + 1)
    )
    grids = session.execute(grid_stmt).all()
    if len(grids) > MAX_GRIDS:
        raise Unprocessable(
            "Too many grids for one map.",
            errors={"query": {"region": [f"more than {MAX_GRIDS} grids: map a smaller region"]}},
        )
    counts: dict[str, tuple[int, int, int]] = {}
    if grids:
        is_open: ColumnElement[Any] = case((text(OPEN_SQL), 1), else_=0)
        is_overdue: ColumnElement[Any] = case((Case.overdue.is_(True), 1), else_=0)
        count_stmt = (
            select(Case.grid_code, func.count(), func.sum(is_open), func.sum(is_overdue))
            .where(*case_conditions(caller, args), Case.grid_code.is_not(None))
            .group_by(Case.grid_code)
        )
        counts = {
            code: (int(n), int(n_open or 0), int(n_overdue or 0))
            for code, n, n_open, n_overdue in session.execute(count_stmt)
        }
    shapes = shapely.from_wkb([bytes(row[3]) for row in grids])
    if tolerance:
        # GEOS may hand a one-part MultiPolygon back as a Polygon: the type stays as stored.
        shapes = [
            as_multipolygon(s) for s in shapely.simplify(shapes, tolerance, preserve_topology=True)
        ]
    shapes = shapely.transform(shapes, lambda xy: np.round(xy, DECIMALS))
    names = region_names(session, (row[2] for row in grids))
    features = []
    for (code, name, community, _), geometry in zip(grids, shapes, strict=True):
        total, n_open, n_overdue = counts.get(code, (0, 0, 0))
        features.append(
            {
                "type": "Feature",
                "id": code,
                "properties": {
                    "code": code,
                    "name": name,
                    "community": community,
                    "community_name": names.get(community),
                    "count": total,
                    "open": n_open,
                    "overdue": n_overdue,
                },
                "geometry": mapping(geometry),
            }
        )
    return {
        "type": "FeatureCollection",
        "region": region,
        "total": sum(f["properties"]["count"] for f in features),
        "features": features,
    }


# --- clusters ---------------------------------------------------------------------------------


def check_view(bbox: list[float], zoom: int) -> None:
    """Refuse a bbox spanning more than MAX_TILES_ACROSS tiles of ``zoom`` either way (422)."""
    west, south, east, north = bbox
    limit = MAX_TILES_ACROSS * tile_degrees(zoom)
    if east - west > limit or north - south > limit:
        raise Unprocessable(
            "The bbox is too large for the zoom level.",
            errors={
                "query": {
                    "bbox": [
                        f"at zoom {zoom} at most {limit:g}° each way "
                        f"({MAX_TILES_ACROSS} tiles): zoom out or send a smaller bbox"
                    ]
                }
            },
        )


def _cell(column: ColumnElement[float], origin: float, size: float, dialect: str) -> Any:
    """Return the SQL index of the cell of ``size`` degrees holding ``column``'s value.

    The value minus ``origin`` is never negative, so truncation is the floor; PostgreSQL
    rounds a cast to integer, hence its ``floor``.
    """
    shifted = (column - origin) / size
    if dialect == "postgresql":
        return cast(func.floor(shifted), Integer)
    return cast(shifted, Integer)


def case_clusters(session: Session, caller: Caller, args: dict[str, Any]) -> dict[str, Any]:
    """Return a GeoJSON FeatureCollection of Points: the matching cases inside ``args["bbox"]``
    grouped into cells of a quarter tile of ``args["zoom"]`` (each case alone from zoom
    POINTS_ZOOM), at the mean position of each cell's cases, biggest first, at most
    MAX_CLUSTERS (``truncated`` says when more were left out).

    A cluster of one carries the case's id, number, status and category.
    """
    zoom = args["zoom"]
    check_view(args["bbox"], zoom)
    conditions = case_conditions(caller, args)
    dialect = session.get_bind().dialect.name
    n = func.count().label("n")
    if zoom >= POINTS_ZOOM:
        key: list[Any] = [Case.id]
        cell = None
    else:
        cell = tile_degrees(zoom) / CELLS_PER_TILE
        key = [
            _cell(Case.lon, -180.0, cell, dialect).label("cx"),
            _cell(Case.lat, -90.0, cell, dialect).label("cy"),
        ]
    stmt = (
        select(
            n,
            func.avg(Case.lon),
            func.avg(Case.lat),
            func.min(Case.id),
            func.min(Case.number),
            func.min(Case.status),
            func.min(Case.category_code),
        )
        .where(*conditions)
        .group_by(*key)
        .order_by(n.desc(), func.min(Case.id))
        .limit(MAX_CLUSTERS + 1)
    )
    rows = session.execute(stmt).all()
    truncated = len(rows) > MAX_CLUSTERS
    rows = rows[:MAX_CLUSTERS]
    total = sum(int(r[0]) for r in rows)
    if truncated:
        total = int(session.scalar(select(func.count()).select_from(Case).where(*conditions)))
    features = []
    for count, lon, lat, case_id, number, status, category in rows:
        properties: dict[str, Any] = {"count": int(count)}
        if count == 1:
            properties.update(
                {"id": case_id, "number": number, "status": status, "category": category}
            )
        features.append(
            {
                "type": "Feature",
                "properties": properties,
                "geometry": geojson_point(round(float(lon), DECIMALS), round(float(lat), DECIMALS)),
            }
        )
    return {
        "type": "FeatureCollection",
        "zoom": zoom,
        "cell_degrees": cell,
        "total": total,
        "truncated": truncated,
        "features": features,
    }
