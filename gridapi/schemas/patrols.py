"""Schemas of patrols (track points, check-ins, findings, statistics) and of presence."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from ..geo.crs import SUPPORTED_CRS
from ..models.patrols import PATROL_STATUSES
from ..phone import in_server_time
from ..services.patrols import MAX_POINTS
from .cases import CaseCreateSchema, CaseSchema
from .common import PointSchema, StrictSchema, in_years
from .locate import CRS_FIELD_DOC

GRID = validate.Regexp(r"^[0-9]{15}\Z", error="a 15-digit grid code")
REGION = validate.Regexp(r"^[0-9]{12}\Z", error="a 12-digit region code")
_POINT_KEYS = {"t", "lon", "lat", "accuracy_m", "crs"}


def _check_point(data: dict[str, Any]) -> None:
    location = data.get("location")
    if not location:
        return
    lon, lat = location["coordinates"]
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValidationError(
            {"location": {"coordinates": ["lon must be in -180..180 and lat in -90..90"]}}
        )


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _track_point(value: Any) -> tuple[dict[str, Any] | None, dict[str, list[str]]]:
    """Return the parsed point, or the errors of its fields."""
    if not isinstance(value, dict):
        return None, {"_schema": ["must be an object with t, lon and lat"]}
    errors: dict[str, list[str]] = {}
    for key in sorted(set(value) - _POINT_KEYS):
        errors[key] = ["Unknown field."]
    at = None
    raw = value.get("t")
    if not isinstance(raw, str):
        errors["t"] = ["an ISO 8601 time with a time zone is required"]
    else:
        try:
            at = datetime.fromisoformat(raw)
        except ValueError:
            errors["t"] = ["not an ISO 8601 time"]
        else:
            if at.tzinfo is None or at.utcoffset() is None:
                errors["t"] = ["needs a time zone (e.g. +08:00 or Z)"]
            else:
                try:  # 9999-12-31T23:59-23:59 is past the last UTC time (was a field-less 422)
                    at.astimezone(UTC)
                except OverflowError:
                    errors["t"] = ["out of range"]
    lon, lat = value.get("lon"), value.get("lat")
    if not _number(lon) or not -180 <= lon <= 180:
        errors["lon"] = ["a number in -180..180 is required"]
    if not _number(lat) or not -90 <= lat <= 90:
        errors["lat"] = ["a number in -90..90 is required"]
    accuracy = value.get("accuracy_m")
    if accuracy is not None and (not _number(accuracy) or not 0 <= accuracy <= 100_000):
        errors["accuracy_m"] = ["a number in 0..100000"]
    crs = value.get("crs")
    # A list, an object or null is no CRS name (a list would not even hash for the lookup);
    # a point without its own CRS leaves the key out.
    if "crs" in value and (not isinstance(crs, str) or crs not in SUPPORTED_CRS):
        errors["crs"] = [f"one of {', '.join(SUPPORTED_CRS)}"]
    if errors:
        return None, errors
    if accuracy is not None:
        accuracy += 0.0
    # + 0.0: -0.0 is 0.0 (PostgreSQL kept the sign and answered -0.0, SQLite answered 0.0)
    return {"t": at, "lon": lon + 0.0, "lat": lat + 0.0, "accuracy_m": accuracy, "crs": crs}, {}


class TrackPoints(fields.Field):
    """A batch of GPS fixes, checked in one pass (marshmallow per point costs too much at
    thousands of points)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, list):
            raise ValidationError("must be a list of points")
        if not 1 <= len(value) <= MAX_POINTS:
            raise ValidationError(f"1 to {MAX_POINTS} points per batch")
        points, errors = [], {}
        for i, item in enumerate(value):
            point, problems = _track_point(item)
            if problems:
                errors[i] = problems
                if len(errors) >= 20:
                    break
            else:
                points.append(point)
        if errors:
            raise ValidationError(errors)
        return points


class PatrolStartSchema(StrictSchema):
    started_at = fields.AwareDateTime(
        metadata={"description": "When the patrol started (offline starts); default now."}
    )
    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={
            "description": "Where it starts; places the patrol only for an account without a "
            "grid or region."
        },
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )

    @validates_schema
    def _point(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_point(data)


class PatrolEndSchema(StrictSchema):
    ended_at = fields.AwareDateTime(
        metadata={
            "description": "When it ended (points up to 5 minutes later still join the line); "
            "default now, or its start or its latest point that is no outlier, if later."
        }
    )


class PatrolPointsSchema(StrictSchema):
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC + " A point's own `crs` wins."},
    )
    points = TrackPoints(
        required=True,
        metadata={
            "description": f"1 to {MAX_POINTS} fixes, in any order; a time already stored "
            "is a duplicate. `t`: ISO 8601 with a time zone; `accuracy_m`, `crs` optional.",
            "type": "array",
            "maxItems": MAX_POINTS,
            "items": {
                "type": "object",
                "required": ["t", "lon", "lat"],
                "additionalProperties": False,
                "properties": {
                    "t": {"type": "string", "format": "date-time"},
                    "lon": {"type": "number", "minimum": -180, "maximum": 180},
                    "lat": {"type": "number", "minimum": -90, "maximum": 90},
                    "accuracy_m": {"type": "number", "minimum": 0, "nullable": True},
                    "crs": {"type": "string", "enum": list(SUPPORTED_CRS)},
                },
            },
            "example": [{"t": "2026-11-28T09:00:00+08:00", "lon": 120.605, "lat": 31.305}],
        },
    )


class PointsResultSchema(StrictSchema):
    accepted = fields.Integer(required=True, metadata={"description": "New points stored."})
    duplicates = fields.Integer(
        required=True, metadata={"description": "Times stored already (or repeated)."}
    )
    rejected = fields.Integer(
        required=True,
        metadata={"description": "Points outside the patrol's time (±5 minutes)."},
    )
    point_count = fields.Integer(required=True)
    outlier_count = fields.Integer(
        required=True,
        metadata={
            "description": "Points left out of the line, its length and the grids crossed: "
            "fixes the walk cannot reach (faster than 180 km/h from the rest)."
        },
    )
    length_m = fields.Float(required=True)
    duration_s = fields.Integer(required=True)


class PatrolCheckinCreateSchema(StrictSchema):
    at = fields.AwareDateTime(metadata={"description": "Default now."})
    house_id = fields.Integer(
        allow_none=True, metadata={"description": "A house of the register, in your scope."}
    )
    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={"description": "When absent or null: the house's location."},
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    place = fields.String(
        load_default="",
        validate=validate.Length(max=300),
        metadata={"description": "A named place (a market, a building site)."},
    )
    note = fields.String(load_default="", validate=validate.Length(max=2000))

    @validates_schema
    def _point(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_point(data)


class PatrolCheckinSchema(StrictSchema):
    id = fields.Integer(required=True)
    patrol_id = fields.Integer(required=True)
    at = fields.AwareDateTime(required=True)
    house_id = fields.Integer(allow_none=True, required=True)
    place = fields.String(required=True)
    note = fields.String(required=True)
    location = fields.Nested(PointSchema, allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    created_at = fields.AwareDateTime(required=True)


class PatrolFindingCreateSchema(CaseCreateSchema):
    """A case found on the patrol: as ``POST /api/v1/cases`` takes it, without ``source``
    (always ``patrol``); the location defaults to the end of the track's line."""

    class Meta(CaseCreateSchema.Meta):
        exclude = ("source",)

    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={
            "description": "GeoJSON Point in `crs`; when absent or null (also for 0°, 0°, no "
            "fix): the end of the track's line, its latest point that is no outlier or the "
            "stop it ended in."
        },
    )


class PatrolFindingSchema(StrictSchema):
    patrol_id = fields.Integer(required=True)
    case = fields.Nested(CaseSchema, required=True)


class WorkerRefSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(allow_none=True, required=True)


class PatrolSchema(StrictSchema):
    id = fields.Integer(required=True)
    worker = fields.Nested(WorkerRefSchema, required=True)
    status = fields.String(required=True, validate=validate.OneOf(PATROL_STATUSES))
    started_at = fields.AwareDateTime(required=True)
    ended_at = fields.AwareDateTime(allow_none=True, required=True)
    grid = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "The worker's primary grid when the patrol started."},
    )
    region_code = fields.String(required=True)
    county_code = fields.String(required=True)
    length_m = fields.Float(
        required=True,
        metadata={
            "description": "Geodesic (WGS-84) length of the walk's line: GPS jitter, stops "
            "and outliers left out."
        },
    )
    duration_s = fields.Integer(
        required=True,
        metadata={
            "description": "Start to end; while active, start to the latest point that is no "
            "outlier."
        },
    )
    point_count = fields.Integer(
        required=True, metadata={"description": "Points recorded (kept after thinning)."}
    )
    outlier_count = fields.Integer(
        required=True,
        metadata={
            "description": "Points left out of the line, its length and the grids crossed: "
            "fixes the walk cannot reach (faster than 180 km/h from the rest)."
        },
    )
    grids_crossed = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The grids the walk's line passes, in the order first entered."},
    )
    clock_offset_s = fields.Integer(
        required=True,
        metadata={
            "description": "Seconds the patrol's times were moved by: how far the phone's "
            "clock was behind the server's (negative: ahead) when the patrol started, by that "
            "request's `Date` header; its start, end, points and check-ins, written by the "
            "phone's clock, are stored on the server's. 0 when the clock was within a minute "
            "or the start sent no `Date`."
        },
    )
    thinned_at = fields.AwareDateTime(
        allow_none=True,
        required=True,
        metadata={"description": "When the raw points were deleted (retention)."},
    )
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(required=True)


class TrackPointSchema(StrictSchema):
    t = fields.AwareDateTime(required=True)
    lon = fields.Float(required=True)
    lat = fields.Float(required=True)
    accuracy_m = fields.Float(allow_none=True, required=True)


class PatrolDetailSchema(PatrolSchema):
    track = fields.Dict(
        allow_none=True,
        required=True,
        metadata={
            "description": "GeoJSON LineString (WGS-84): the walk's line, the points in time "
            "order with outliers left out, GPS jitter averaged and a stop one point; the "
            "points as sent are `points`."
        },
    )
    checkins = fields.List(fields.Nested(PatrolCheckinSchema), required=True)
    findings = fields.List(
        fields.Integer(), required=True, metadata={"description": "Ids of the cases reported."}
    )
    points = fields.List(
        fields.Nested(TrackPointSchema),
        metadata={"description": "The raw points, with `?points=true` only."},
    )


class PatrolListSchema(StrictSchema):
    items = fields.List(fields.Nested(PatrolSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class PatrolArgsSchema(StrictSchema):
    worker_id = fields.Integer()
    grid = fields.String(validate=GRID, metadata={"description": "The primary grid at start."})
    region = fields.String(validate=REGION, metadata={"description": "A region's subtree."})
    status = fields.String(validate=validate.OneOf(PATROL_STATUSES))
    from_ = fields.AwareDateTime(data_key="from", metadata={"description": "Started at or after."})
    to = fields.AwareDateTime(metadata={"description": "Started before."})
    cursor = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "`next_cursor` of the previous page."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class PatrolGetArgsSchema(StrictSchema):
    points = fields.Boolean(
        load_default=False, metadata={"description": "Include the raw points (audited too)."}
    )


class PatrolStatsArgsSchema(StrictSchema):
    month = fields.String(
        validate=[
            validate.Regexp(r"^[0-9]{4}-(0[1-9]|1[0-2])\Z", error="YYYY-MM"),
            in_years,
        ],
        metadata={"description": "YYYY-MM in the configured time zone; default this month."},
    )
    grid = fields.String(validate=GRID)
    region = fields.String(validate=REGION)
    worker_id = fields.Integer()


class WorkerTotalsSchema(StrictSchema):
    worker_id = fields.Integer(required=True)
    worker_name = fields.String(allow_none=True, required=True)
    patrols = fields.Integer(required=True)
    length_m = fields.Float(required=True)
    duration_s = fields.Integer(required=True)


class WorkerGridStatsSchema(WorkerTotalsSchema):
    grid = fields.String(required=True)
    households = fields.Integer(required=True)
    households_visited = fields.Integer(
        required=True, metadata={"description": "By this worker: a visit or a check-in."}
    )
    visited_share = fields.Float(
        allow_none=True, required=True, metadata={"description": "0..1; null without households."}
    )


class GridStatsSchema(StrictSchema):
    grid = fields.String(required=True)
    patrols = fields.Integer(required=True)
    households = fields.Integer(required=True)
    households_visited = fields.Integer(required=True, metadata={"description": "By anyone."})
    visited_share = fields.Float(allow_none=True, required=True)


class PatrolStatsSchema(StrictSchema):
    month = fields.String(required=True, metadata={"example": "2026-11"})
    from_ = fields.AwareDateTime(data_key="from", attribute="from", required=True)
    to = fields.AwareDateTime(required=True)
    workers = fields.List(
        fields.Nested(WorkerTotalsSchema),
        required=True,
        metadata={"description": "Per worker: each patrol once."},
    )
    items = fields.List(
        fields.Nested(WorkerGridStatsSchema),
        required=True,
        metadata={"description": "Per worker and grid: a patrol counts in every grid it crossed."},
    )
    grids = fields.List(fields.Nested(GridStatsSchema), required=True)


# --- presence ---------------------------------------------------------------------------------


class HeartbeatSchema(StrictSchema):
    location = fields.Nested(
        PointSchema, required=True, metadata={"description": "GeoJSON Point in `crs`."}
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    accuracy_m = fields.Float(allow_none=True, validate=validate.Range(min=0, max=100_000))
    battery = fields.Integer(
        allow_none=True, validate=validate.Range(min=0, max=100), metadata={"description": "%"}
    )
    at = fields.AwareDateTime(metadata={"description": "When the phone took it; default now."})

    @validates_schema
    def _point(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_point(data)

    @post_load
    def _in_server_time(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``at`` by a clock the Date header says is off, in server time (as a report's
        ``occurred_at``, CaseCreateSchema): a fast clock's heartbeat was refused as lying in
        the future, and a slow one's was older than the one stored, and changed nothing."""
        return in_server_time(data, "at")


class PresenceSchema(StrictSchema):
    user_id = fields.Integer(required=True)
    username = fields.String(required=True)
    name = fields.String(required=True)
    role = fields.String(required=True)
    last_seen = fields.AwareDateTime(allow_none=True, required=True)
    on_duty = fields.Boolean(
        required=True, metadata={"description": "A heartbeat within GRIDAPI_PRESENCE_MINUTES."}
    )
    grid = fields.String(
        allow_none=True, required=True, metadata={"description": "Where the last heartbeat was."}
    )
    location = fields.Nested(
        PointSchema,
        allow_none=True,
        required=True,
        metadata={"description": "Only for callers with `patrols:read` (whereabouts)."},
    )
    accuracy_m = fields.Float(allow_none=True, required=True)
    battery = fields.Integer(allow_none=True, required=True)
    on_roster = fields.Boolean(metadata={"description": "On the grid's roster (on-duty list)."})
    in_grid = fields.Boolean(metadata={"description": "Last seen inside the grid."})


class OnDutySchema(StrictSchema):
    grid = fields.String(required=True)
    since = fields.AwareDateTime(
        required=True, metadata={"description": "Heartbeats from this time on count."}
    )
    items = fields.List(
        fields.Nested(PresenceSchema),
        required=True,
        metadata={"description": "On duty: on the roster or in the grid, seen since `since`."},
    )
    off_duty = fields.List(
        fields.Nested(PresenceSchema),
        required=True,
        metadata={"description": "The roster's members not seen since `since`."},
    )


class PresenceArgsSchema(StrictSchema):
    region = fields.String(validate=REGION, metadata={"description": "Accounts of this subtree."})
    grid = fields.String(validate=GRID, metadata={"description": "On this grid's roster now."})
    on_duty = fields.Boolean()
    cursor = fields.Integer(validate=validate.Range(min=0))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class PresenceListSchema(StrictSchema):
    items = fields.List(fields.Nested(PresenceSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)
