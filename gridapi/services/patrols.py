"""Patrols (巡查): start and end, track points in batches, check-ins, findings, statistics,
and the retention of tracks.

Points arrive late, twice and out of order from phones that were offline: a timestamp is
stored once per patrol (``INSERT … ON CONFLICT DO NOTHING`` on both engines), and after every
batch the line, length, duration and grids crossed are rebuilt from all the points ordered
by time, so the answer does not depend on the order or the number of uploads.

Who reads a patrol: its worker (with ``patrols:write``), and callers with ``patrols:read``
whose scope covers the patrol's grid or community. To everyone else it does not exist.
Only its worker writes to a patrol.

Services take a Session and never commit: the request commits once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from geographiclib.geodesic import Geodesic
from shapely.geometry import LineString
from sqlalchemy import Select, and_, delete, false, func, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql import ColumnElement

from ..codes import InvalidCode, subtree_prefix
from ..errors import Conflict, NotFound, Unprocessable
from ..geo.crs import no_fix, to_wgs84
from ..geo.geodesy import local_distance_m, metres_per_degree
from ..geo.shapes import from_db, geojson_point, to_db
from ..models import (
    GridAssignment,
    House,
    Household,
    Patrol,
    PatrolCheckin,
    PatrolFinding,
    PatrolPoint,
    User,
    Visit,
)
from ..scope import Scope, starts_with
from .cursors import one_page, page_by_id
from .identity import assignment_holds_on
from .routing import IndexSnapshot
from .uniques import add_or_conflict

if TYPE_CHECKING:
    from ..auth import Principal

MAX_POINTS = 5000
# How far a point's or check-in's time may lie outside the patrol (phone clocks drift).
TOLERANCE = timedelta(minutes=5)
# Tracks are simplified to within about this many metres when their raw points go.
SIMPLIFY_METRES = 5.0
# Segments shorter than this are measured on the local ellipsoid (under 1e-8 relative error
# against the geodesic; numpy, fast), longer ones by geographiclib's geodesic.
_SHORT_SEGMENT_M = 1000.0
# A fix is part of the line only if the walk can reach it: at most this speed (a patrol on
# foot, by bicycle or by car; 180 km/h), give or take the slack for two fixes' error.
MAX_SPEED_M_S = 50.0
SLACK_M = 100.0
# Fixes the phone itself says are coarser than this (cell towers: 500 m and more) are no
# part of the line; a run of this many bad fixes in a row is the most the walk skips.
MAX_ACCURACY_M = 200.0
LOOKBACK = 32
# GPS jitter (see walked_line). A fix is uncertain by the accuracy_m it states (the radius
# phones give), by DEFAULT_ACCURACY_M when it states none, and by no less than
# MIN_ACCURACY_M (a phone claiming 1 m still wanders by metres).
DEFAULT_ACCURACY_M = 10.0
MIN_ACCURACY_M = 5.0
# A stop: fixes over at least STOP_SECONDS that each lie within STOP_SPREAD times their
# accuracy of the stop's middle.
STOP_SECONDS = 60.0
STOP_SPREAD = 2.0
# A moving fix is averaged with the fixes up to SMOOTH_NEAR_SECONDS before and after it, and
# at least with its two neighbours when both lie within SMOOTH_SECONDS.
SMOOTH_NEAR_SECONDS = 3.0
SMOOTH_SECONDS = 20.0


def _not_found() -> NotFound:
    # One message for missing, out-of-scope and someone else's patrols: byte for byte alike.
    return NotFound("The patrol does not exist or is outside your scope.")


def _invalid(field: str, reason: str) -> Unprocessable:
    return Unprocessable(f"Invalid {field}.", errors={"json": {field: [reason]}})


def dialect_insert(session: Session):  # type: ignore[no-untyped-def]
    """Return the INSERT construct of the session's dialect (for ON CONFLICT)."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


# --- geometry ---------------------------------------------------------------------------------


def segment_lengths_m(lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    """Return the geodesic lengths in metres of the segments between consecutive points."""
    if len(lons) < 2:
        return np.zeros(0)
    lengths = local_distance_m(lons[:-1], lats[:-1], lons[1:], lats[1:])
    for i in np.flatnonzero(lengths > _SHORT_SEGMENT_M):
        lengths[i] = Geodesic.WGS84.Inverse(
            lats[i], lons[i], lats[i + 1], lons[i + 1], Geodesic.DISTANCE
        )["s12"]
    return lengths


def track_length_m(lons: np.ndarray, lats: np.ndarray) -> float:
    """Return the geodesic length in metres of the line through the points, in order."""
    return float(segment_lengths_m(lons, lats).sum())


def plausible(
    seconds: np.ndarray,
    lons: np.ndarray,
    lats: np.ndarray,
    accuracy: np.ndarray | None = None,
) -> np.ndarray:
    """Return which points (in time order) a walk passes through: a mask.

    A phone's fix now and then lands kilometres away (a cell-tower fix, a stale position,
    New York): one such point added 23,767 km to a township walk. A fix whose stated
    accuracy is worse than ``MAX_ACCURACY_M`` is left out. Of the rest, the walk is the
    longest sequence of fixes in which each can be reached from the one before it — at
    most ``MAX_SPEED_M_S`` in the time between, give or take ``SLACK_M`` for the fixes'
    error — skipping at most ``LOOKBACK - 1`` fixes in a row. So a bad fix next to a gap
    without fixes (reachable from before the gap, not from what follows) is skipped, and
    both halves of the walk are kept; ten minutes without a fix, then 1.5 km further on, is
    still the walk. Raw points are kept whatever this says.
    """
    n = len(lons)
    keep = np.ones(n, dtype=bool)
    if accuracy is not None:
        keep &= ~(accuracy > MAX_ACCURACY_M)  # NaN (not given) is no reason
    index = np.flatnonzero(keep)
    if len(index) < 2:
        return keep
    t, x, y = seconds[index], lons[index], lats[index]
    steps = local_distance_m(x[:-1], y[:-1], x[1:], y[1:])
    if (steps <= MAX_SPEED_M_S * np.diff(t) + SLACK_M).all():
        return keep  # the common case: nothing to judge
    m = len(index)
    depth = min(LOOKBACK, m - 1)
    # reach[k - 1, i]: fix i can be reached from fix i - k
    reach = np.zeros((depth, m), dtype=bool)
    for k in range(1, depth + 1):
        far = local_distance_m(x[:-k], y[:-k], x[k:], y[k:])
        reach[k - 1, k:] = far <= MAX_SPEED_M_S * (t[k:] - t[:-k]) + SLACK_M
    best = np.ones(m, dtype=np.int64)  # the longest walk ending at each fix
    before = np.full(m, -1, dtype=np.int64)
    for i in range(1, m):
        k = min(depth, i)
        options = np.where(reach[:k, i], best[i - 1 :: -1][:k], 0)  # from i-1, i-2, …
        j = int(options.argmax())  # the nearest of the longest
        if options[j]:
            best[i], before[i] = options[j] + 1, i - 1 - j
    chain = np.zeros(m, dtype=bool)
    i = int(best.argmax())
    while i >= 0:
        chain[i], i = True, int(before[i])
    keep[index[~chain]] = False
    return keep


def _wrap(dlon: np.ndarray) -> np.ndarray:
    return (dlon + 180.0) % 360.0 - 180.0


def walked_line(
    seconds: np.ndarray,
    lons: np.ndarray,
    lats: np.ndarray,
    accuracy: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return the line of a walk through fixes (in time order, outliers left out) with the
    GPS jitter taken out: the lon and lat of its vertices.

    Summed fix to fix, jitter adds to the length whenever the worker moves by no more than
    the fixes' error between two of them: a 2 km walk with a fix every 5-10 s and 5-15 m of
    jitter measured 2.6 km, standing still for half an hour 3.6 km. So, with a fix's
    uncertainty its ``accuracy_m`` (``DEFAULT_ACCURACY_M`` when not given, at least
    ``MIN_ACCURACY_M``), as trackers do with a "minimum displacement":

    1. a stop — fixes over at least ``STOP_SECONDS`` each within ``STOP_SPREAD`` times its
       uncertainty of the stop's middle (their weighted mean; one fix astray at a time is
       skipped) — is one vertex, its middle;
    2. a fix on the move is averaged (weights 1/accuracy²) with as many fixes before as
       after it: those within ``SMOOTH_NEAR_SECONDS``, at least its two neighbours when both
       lie within ``SMOOTH_SECONDS``; symmetric, so a steady walk keeps its place;
    3. a vertex counts only once it lies farther from the last one counted than the larger
       of their uncertainties; the last vertex always counts.

    The price: averaging and the minimum step round corners, about 5 m of length at each
    right-angle turn of a walk; a gap without fixes is still a straight step across it.
    """
    n = len(lons)
    if n < 2:
        return lons.copy(), lats.copy()
    given = np.full(n, np.nan) if accuracy is None else accuracy
    sigma = np.maximum(np.where(np.isnan(given), DEFAULT_ACCURACY_M, given), MIN_ACCURACY_M)
    weight = 1.0 / sigma**2
    # Decisions are taken on a local plane in metres; the length is then measured
    # geodesically on the vertices.
    lat0 = float(np.median(lats))
    kx, ky = metres_per_degree(lat0)
    dlon = _wrap(lons - lons[0])
    x, y = dlon * kx, (lats - lat0) * ky
    stop = _stops(seconds, x, y, sigma)

    # Each fix is averaged with as many fixes before as after it: those within
    # SMOOTH_NEAR_SECONDS, at least its two neighbours when they lie within SMOOTH_SECONDS.
    line_lon, line_lat = lons.copy(), lats.copy()
    fix = np.arange(n)
    before = fix - np.searchsorted(seconds, seconds - SMOOTH_NEAR_SECONDS, "left")
    after = np.searchsorted(seconds, seconds + SMOOTH_NEAR_SECONDS, "right") - 1 - fix
    neighbours = np.zeros(n, dtype=bool)
    neighbours[1:-1] = (seconds[2:] - seconds[1:-1] <= SMOOTH_SECONDS) & (
        seconds[1:-1] - seconds[:-2] <= SMOOTH_SECONDS
    )
    half = np.where(neighbours, np.maximum(np.minimum(before, after), 1), 0)
    sums = [np.concatenate([[0.0], np.cumsum(v)]) for v in (weight, weight * dlon, weight * y)]
    total, east, north = (s[fix + half + 1] - s[fix - half] for s in sums)
    moved = half > 0
    # Positions worked out are rounded to 1e-7° (1 cm), not to print as 120.59517699999998.
    line_lon[moved] = np.round(_wrap(lons[0] + east[moved] / total[moved]), 7)
    line_lat[moved] = np.round(lat0 + north[moved] / total[moved] / ky, 7)

    vertex = stop == -1
    members = stop >= 0
    if members.any():
        label = stop[members]
        mass = np.bincount(label, weights=weight[members])
        mid_lon = np.bincount(label, weights=weight[members] * dlon[members]) / mass
        mid_lat = np.bincount(label, weights=weight[members] * lats[members]) / mass
        _, first = np.unique(label, return_index=True)
        at = np.flatnonzero(members)[first]
        line_lon[at] = np.round(_wrap(lons[0] + mid_lon), 7)
        line_lat[at] = np.round(mid_lat, 7)
        sigma = sigma.copy()
        sigma[at] = MIN_ACCURACY_M
        vertex[at] = True
    index = np.flatnonzero(vertex)
    px = (_wrap(line_lon[index] - lons[0]) * kx).tolist()
    py = ((line_lat[index] - lat0) * ky).tolist()
    ps = sigma[index].tolist()
    counted = [0]
    j = 0
    for k in range(1, len(index)):
        if math.hypot(px[k] - px[j], py[k] - py[j]) > max(ps[j], ps[k]):
            counted.append(k)
            j = k
    if counted[-1] != len(index) - 1:
        counted.append(len(index) - 1)
    chosen = index[counted]
    return line_lon[chosen], line_lat[chosen]


def _stops(seconds: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Return, for each fix, the number of the stop it belongs to; -1 for a fix on the move,
    -2 for one astray inside a stop (left out). ``x`` and ``y`` are metres on a local plane.

    A stop grows from a fix while the next fix lies within ``STOP_SPREAD`` times its
    uncertainty of the stop's weighted middle (a single fix beyond, the one after back
    within, is skipped); it counts when it lasts ``STOP_SECONDS``. A walk does not stay that
    long near its middle (at 1.4 m/s a candidate fails within half a minute), and the next
    candidate starts at the fix that ended the last: one pass over the fixes.
    """
    n = len(x)
    label = np.full(n, -1, dtype=np.int64)
    t, xs, ys, reach = seconds.tolist(), x.tolist(), y.tolist(), (STOP_SPREAD * sigma).tolist()
    w = (1.0 / sigma**2).tolist()
    count = 0
    i = 0
    while i < n - 1:
        mass, mx, my = w[i], w[i] * xs[i], w[i] * ys[i]
        taken = [i]
        j = i + 1
        while j < n:
            cx, cy = mx / mass, my / mass
            if math.hypot(xs[j] - cx, ys[j] - cy) <= reach[j]:
                mass, mx, my = mass + w[j], mx + w[j] * xs[j], my + w[j] * ys[j]
                taken.append(j)
            elif not (j + 1 < n and math.hypot(xs[j + 1] - cx, ys[j + 1] - cy) <= reach[j + 1]):
                break
            j += 1
        last = taken[-1]
        if t[last] - t[i] >= STOP_SECONDS:
            label[i : last + 1] = -2
            label[taken] = count
            count += 1
            i = last + 1
        else:
            i = j  # one pass: the next candidate starts where this one failed
    return label


def grids_crossed(snapshot: IndexSnapshot, lons: np.ndarray, lats: np.ndarray) -> list[str]:
    """Return the codes of the grids the points fall in, in the order first entered."""
    if not len(lons):
        return []
    index, _, _ = snapshot.locate_many(lons, lats)
    codes: list[str] = []
    seen: set[int] = set()
    for i in index.tolist():
        if i >= 0 and i not in seen:
            seen.add(i)
            codes.append(snapshot.grids[i]["code"])
    return codes


# --- who may read and write -------------------------------------------------------------------


def readable(principal: Principal) -> ColumnElement[bool]:
    """Return the condition 'the caller may read this patrol' (its track included)."""
    parts = []
    if principal.kind == "user" and principal.can("patrols:write"):
        parts.append(Patrol.worker_id == principal.id)
    if principal.can("patrols:read"):
        parts.append(principal.scope.grid_condition(Patrol.grid_code, Patrol.region_code))
    return or_(*parts) if parts else false()


def get_readable(session: Session, patrol_id: int, principal: Principal) -> Patrol:
    """Return a patrol the caller may read; NotFound otherwise (as for a missing one)."""
    found = session.scalars(
        select(Patrol).where(Patrol.id == patrol_id, readable(principal))
    ).first()
    if found is None:
        raise _not_found()
    return found


def get_own(session: Session, patrol_id: int, principal: Principal) -> Patrol:
    """Return the caller's own patrol, locked for the change (PostgreSQL); NotFound for any
    other, in scope or not: only its worker writes to a patrol."""
    if principal.kind != "user":
        raise _not_found()
    stmt = select(Patrol).where(Patrol.id == patrol_id, Patrol.worker_id == principal.id)
    if session.get_bind().dialect.name == "postgresql":
        # Batches of one patrol queue here, so each rebuild sees the points of the last.
        stmt = stmt.with_for_update()
    found = session.scalars(stmt).first()
    if found is None:
        raise _not_found()
    return found


# --- start and end ----------------------------------------------------------------------------


def primary_grid(session: Session, user_id: int, on: date) -> str | None:
    """Return the worker's primary grid on the roster on ``on`` (else their first), or None."""
    return session.scalars(
        select(GridAssignment.grid_code)
        .where(GridAssignment.user_id == user_id, assignment_holds_on(on))
        .order_by(GridAssignment.is_primary.desc(), GridAssignment.valid_from, GridAssignment.id)
        .limit(1)
    ).first()


def active_patrol(session: Session, worker_id: int) -> Patrol | None:
    return session.scalars(
        select(Patrol).where(Patrol.worker_id == worker_id, Patrol.status == "active")
    ).first()


def by_server_clock(patrol: Patrol, value: datetime) -> datetime:
    """Return ``value``, a time the patrol's phone wrote by its own clock, on the server's:
    moved by the clock error measured when the patrol started (``Patrol.clock_offset_s``).
    The same figure for every request of the patrol: a point or check-in sent again (a later
    retry, whose Date header says a few seconds more or less) is moved to the same instant,
    and stays the one it was."""
    return value + timedelta(seconds=patrol.clock_offset_s) if patrol.clock_offset_s else value


def not_in_future(value: datetime, now: datetime, field: str) -> datetime:
    """Return ``value`` in UTC; raises Unprocessable naming ``field`` when it lies more than
    ``TOLERANCE`` (a phone's clock running ahead) after ``now``."""
    if value > now + TOLERANCE:
        raise _invalid(field, "lies in the future")
    return value.astimezone(UTC)


def start_patrol(
    session: Session,
    principal: Principal,
    data: dict[str, Any],
    *,
    snapshot: IndexSnapshot,
    now: datetime,
    tz: tzinfo,
    kept_days: float | None = None,
    clock: timedelta = timedelta(0),
) -> Patrol:
    """Start a patrol of the caller. Raises Conflict (with the active patrol's id) while one
    is active, Unprocessable when nothing says where the patrol belongs or when it started
    before the ``kept_days`` tracks are kept (the retention job would delete it at once).

    ``clock`` is how far the phone's clock is behind the server's (``phone.clock_offset``):
    kept in whole seconds, it moves ``started_at`` and every time the phone sends for the
    patrol later (``by_server_clock``).

    Its grid is the worker's primary grid on the roster of the day it started (in ``tz``):
    a start made offline before midnight and uploaded after a change of roster belongs to
    the grid walked, not to the one of the day it was uploaded."""
    if principal.kind != "user":
        raise Unprocessable("Only a person patrols.", errors={"json": {"worker": ["not a user"]}})
    offset_s = round(clock.total_seconds())
    given = data.get("started_at")
    if given is not None:
        given += timedelta(seconds=offset_s)
    started_at = not_in_future(given or now, now, "started_at")
    if kept_days is not None and started_at < now - timedelta(days=kept_days):
        raise _invalid("started_at", f"lies before the {kept_days:g} days tracks are kept")

    def one_active() -> Conflict | None:
        active = active_patrol(session, principal.id)
        if active is None:
            return None
        return Conflict(
            "You have an active patrol: end it before starting another.",
            errors={"active_patrol_id": active.id},
        )

    if (error := one_active()) is not None:
        raise error
    grid = primary_grid(session, principal.id, started_at.astimezone(tz).date())
    region = grid[:12] if grid else principal.region_code
    if region is None and data.get("location") is not None:
        lon, lat = to_wgs84(*data["location"]["coordinates"], data.get("crs", "wgs84"))
        match = snapshot.locate(lon, lat)
        if match.grid >= 0:
            region = snapshot.grids[match.grid]["community_code"]
        else:
            chain = snapshot.regions_for_point(lon, lat)
            region = chain[0]["code"] if chain else None
    if region is None:
        raise _invalid("location", "your account has no grid or region: say where you patrol")
    patrol = Patrol(
        county_code=region[:6],
        region_code=region,
        worker_id=principal.id,
        grid_code=grid,
        started_at=started_at,
        status="active",
        length_m=0.0,
        duration_s=0,
        grids_crossed=[],
        point_count=0,
        clock_offset_s=offset_s,
        version=1,
    )
    # One started by another request between the look-up and the insert: the same answer,
    # naming it, as when it came first.
    add_or_conflict(session, patrol, one_active)
    return patrol


def end_patrol(
    session: Session, patrol: Patrol, ended_at: datetime | None, *, now: datetime
) -> bool:
    """End the patrol at ``ended_at`` (default now, or its start or the walk's latest point,
    outliers left out, if later).

    Returns False when it had ended already at that time (a retry: nothing changes).
    Raises Conflict when it ended at another time, Unprocessable for an ``ended_at`` before
    its start or more than ``TOLERANCE`` before the walk's latest point. ``ended_at`` is by
    the phone's clock (``by_server_clock``).
    """
    if ended_at is not None:
        ended_at = by_server_clock(patrol, ended_at)
    if patrol.status == "ended":
        if ended_at is None or ended_at == patrol.ended_at:
            return False
        raise Conflict(
            "The patrol has ended already.", errors={"json": {"ended_at": ["ended already"]}}
        )
    # The walk's last point, not an outlier's: a cell-tower fix stamped minutes ahead ended
    # a patrol there, and made its duration.
    last = last_walked_at(session, patrol)
    if ended_at is None:
        # A start a few minutes ahead (the phone's clock) is taken; ending it at once ends it
        # at its start: a refusal here left the worker a patrol they could neither end nor
        # replace.
        end = max(now, patrol.started_at, *([last] if last is not None else []))
    else:
        end = not_in_future(ended_at, now, "ended_at")
        if last is not None and end + TOLERANCE < last:
            raise _invalid("ended_at", "lies before the last point of the track")
        # The end given is the end, whether the last points came before it or after (an
        # offline upload): points within TOLERANCE past it are part of the line either way.
        if end < patrol.started_at:
            raise _invalid("ended_at", "lies before the start of the patrol")
    patrol.ended_at = end
    patrol.status = "ended"
    patrol.duration_s = _duration(patrol, last)
    patrol.version += 1
    session.flush()
    return True


def _duration(patrol: Patrol, last_point: datetime | None) -> int:
    """Start to end for an ended patrol; start to the walk's latest point while it is
    active."""
    end = patrol.ended_at or last_point
    if end is None:
        return 0
    return max(0, round((end - patrol.started_at).total_seconds()))


# --- track points -----------------------------------------------------------------------------


def window(patrol: Patrol, now: datetime) -> tuple[datetime, datetime]:
    """Return the times a point or check-in of the patrol may carry."""
    return patrol.started_at - TOLERANCE, (patrol.ended_at or now) + TOLERANCE


def add_points(
    session: Session,
    patrol: Patrol,
    points: list[dict[str, Any]],
    *,
    snapshot: IndexSnapshot,
    now: datetime,
    crs: str = "wgs84",
) -> dict[str, Any]:
    """Store a batch of points; return {accepted, duplicates, rejected, point_count,
    length_m, duration_s}. A point outside the patrol's time window is rejected (counted, not
    an error), and so is a point at 0°, 0° (what a phone sends without a fix: one made a
    township walk 12,887 km long); a timestamp already stored (or repeated in the batch) is a
    duplicate."""
    if patrol.thinned_at is not None:
        raise Conflict(
            "The patrol's raw points were deleted after the retention period; it takes no "
            "more points.",
            errors={"json": {"points": ["the patrol's track was thinned"]}},
        )
    low, high = window(patrol, now)
    rows: list[dict[str, Any]] = []
    seen: set[datetime] = set()
    rejected = repeated = 0
    for point in points:
        at = by_server_clock(patrol, point["t"]).astimezone(UTC)
        if not low <= at <= high or no_fix(point["lon"], point["lat"]):
            rejected += 1
            continue
        if at in seen:
            repeated += 1
            continue
        seen.add(at)
        lon, lat = to_wgs84(point["lon"], point["lat"], point.get("crs") or crs)
        rows.append(
            {
                "patrol_id": patrol.id,
                "county_code": patrol.county_code,
                "recorded_at": at,
                "lon": lon,
                "lat": lat,
                "accuracy_m": point.get("accuracy_m"),
            }
        )
    accepted = 0
    if rows:
        insert = dialect_insert(session)
        stmt = (
            insert(PatrolPoint)
            .on_conflict_do_nothing(index_elements=["patrol_id", "recorded_at"])
            .returning(PatrolPoint.id)
        )
        accepted = len(session.execute(stmt, rows).all())
    if accepted:
        rebuild(session, patrol, snapshot)
    return {
        "accepted": accepted,
        "duplicates": repeated + len(rows) - accepted,
        "rejected": rejected,
        "point_count": patrol.point_count,
        "outlier_count": patrol.outlier_count,
        "length_m": patrol.length_m,
        "duration_s": patrol.duration_s,
    }


def _fixes(
    session: Session, patrol: Patrol
) -> tuple[list[Any], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the patrol's stored points in time order, their seconds from the first, their
    coordinates (n × 2) and accuracy (NaN: not given), and which of them the walk passes
    through (``plausible``)."""
    rows = session.execute(
        select(PatrolPoint.recorded_at, PatrolPoint.lon, PatrolPoint.lat, PatrolPoint.accuracy_m)
        .where(PatrolPoint.patrol_id == patrol.id)
        .order_by(PatrolPoint.recorded_at)
    ).all()
    coords = np.array([(r.lon, r.lat) for r in rows], dtype=np.float64).reshape(-1, 2)
    accuracy = np.array(
        [np.nan if r.accuracy_m is None else r.accuracy_m for r in rows], dtype=np.float64
    )
    start = rows[0].recorded_at if rows else None
    seconds = np.array([(r.recorded_at - start).total_seconds() for r in rows], dtype=np.float64)
    keep = plausible(seconds, coords[:, 0], coords[:, 1], accuracy)
    return list(rows), seconds, coords, accuracy, keep


def _last_walked(rows: list[Any], keep: np.ndarray) -> datetime | None:
    kept = np.flatnonzero(keep)
    return rows[int(kept[-1])].recorded_at if len(kept) else None


def last_walked_at(session: Session, patrol: Patrol) -> datetime | None:
    """Return the time of the walk's latest point: the latest that is no outlier (for a walk
    ending at a stop, the stop's last fix); None when there is none."""
    rows, _, _, _, keep = _fixes(session, patrol)
    return _last_walked(rows, keep)


def _walk(session: Session, patrol: Patrol) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """Return the patrol's stored points in time order, which of them the walk passes
    through (``plausible``), and the walk's line (``walked_line``: an array of n × 2)."""
    rows, seconds, coords, accuracy, keep = _fixes(session, patrol)
    lons, lats = walked_line(seconds[keep], coords[keep, 0], coords[keep, 1], accuracy[keep])
    return rows, keep, np.column_stack([lons, lats])


def _figures(session: Session, patrol: Patrol, snapshot: IndexSnapshot) -> dict[str, Any]:
    """Return the statistics and the line (shapely, or None) of the patrol from all its
    stored points: the line is the walk's (``walked_line``: outliers and GPS jitter left
    out), the length and the grids crossed are its own."""
    rows, keep, line = _walk(session, patrol)
    lons, lats = line[:, 0], line[:, 1]
    return {
        "point_count": len(rows),
        "outlier_count": int(len(rows) - keep.sum()),
        "length_m": round(track_length_m(lons, lats), 1),
        "duration_s": _duration(patrol, _last_walked(rows, keep)),
        "grids_crossed": grids_crossed(snapshot, lons, lats),
        "track": LineString(line) if len(lons) >= 2 else None,
    }


def _store(patrol: Patrol, figures: dict[str, Any]) -> None:
    for name in ("point_count", "outlier_count", "length_m", "duration_s", "grids_crossed"):
        setattr(patrol, name, figures[name])
    patrol.track = to_db(figures["track"])
    patrol.version += 1


def rebuild(session: Session, patrol: Patrol, snapshot: IndexSnapshot) -> None:
    """Recompute the line, length, duration and grids crossed from all stored points
    (``_figures``)."""
    _store(patrol, _figures(session, patrol, snapshot))
    session.flush()


def _differs(patrol: Patrol, figures: dict[str, Any]) -> bool:
    """Whether the stored figures of the patrol are not ``figures``."""
    for name in ("point_count", "outlier_count", "length_m", "duration_s"):
        if getattr(patrol, name) != figures[name]:
            return True
    if list(patrol.grids_crossed or []) != figures["grids_crossed"]:
        return True
    stored, line = from_db(patrol.track), figures["track"]
    if stored is None or line is None:
        return (stored is None) != (line is None)
    # Within 1e-9° (0.1 mm): the same vertices, however an engine's round trip printed them.
    return not stored.equals_exact(line, 1e-9)


@dataclass
class Recomputed:
    """What ``recompute_patrols`` read and changed: patrols, and their total length in metres
    before and after (over the patrols recomputed, not the thinned ones)."""

    read: int = 0
    changed: int = 0
    thinned: int = 0
    length_before_m: float = 0.0
    length_after_m: float = 0.0
    last_id: int | None = None

    def add(self, other: Recomputed) -> None:
        self.read += other.read
        self.changed += other.changed
        self.thinned += other.thinned
        self.length_before_m += other.length_before_m
        self.length_after_m += other.length_after_m
        self.last_id = other.last_id if other.last_id is not None else self.last_id


def recompute_patrols(
    session: Session,
    snapshot: IndexSnapshot,
    *,
    after: int = 0,
    limit: int = 200,
    region: str | None = None,
    since: datetime | None = None,
    write: bool = True,
) -> Recomputed:
    """Recompute the stored figures of up to ``limit`` patrols with ids above ``after`` (of
    ``region``'s subtree, started at or after ``since``) from their raw points with the
    current code: line, length, grids crossed (routed with ``snapshot``), point and outlier
    counts, duration (``_figures``, as after a batch of points). A patrol whose figures
    differ is written, its version + 1, when ``write``; the others are left alone, so a
    second run changes nothing. Patrols whose raw points were thinned keep their figures:
    there is nothing to recompute them from (counted as ``thinned``).

    Returns what was read and changed; ``last_id`` is the last patrol looked at (None: no
    patrol was left). Flushes, never commits.
    """
    stmt = select(Patrol).where(Patrol.id > after)
    if region:
        stmt = stmt.where(region_condition(region, Patrol.region_code))
    if since is not None:
        stmt = stmt.where(Patrol.started_at >= since)
    stmt = stmt.order_by(Patrol.id).limit(limit)
    if write and session.get_bind().dialect.name == "postgresql":
        # A batch of points rebuilding one of them meanwhile waits, then rebuilds from ours.
        stmt = stmt.with_for_update()
    patrols = list(session.scalars(stmt))
    result = Recomputed(last_id=patrols[-1].id if patrols else None)
    for patrol in patrols:
        if patrol.thinned_at is not None:
            result.thinned += 1
            continue
        figures = _figures(session, patrol, snapshot)
        result.read += 1
        result.length_before_m += patrol.length_m
        result.length_after_m += figures["length_m"]
        if _differs(patrol, figures):
            result.changed += 1
            if write:
                _store(patrol, figures)
    session.flush()
    return result


def points_of(session: Session, patrol: Patrol) -> list[PatrolPoint]:
    return list(
        session.scalars(
            select(PatrolPoint)
            .where(PatrolPoint.patrol_id == patrol.id)
            .order_by(PatrolPoint.recorded_at)
        )
    )


# --- check-ins and findings -------------------------------------------------------------------


def add_checkin(
    session: Session,
    patrol: Patrol,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot,
    now: datetime,
) -> tuple[PatrolCheckin, bool]:
    """Check in on the patrol at a house in scope, a point, or a named place.

    Returns the check-in and whether it is new (a repeat of the same time returns the first).
    """
    from .register import get_house

    at = (by_server_clock(patrol, data["at"]) if data.get("at") else now).astimezone(UTC)
    low, high = window(patrol, now)
    if not low <= at <= high:
        raise _invalid("at", "lies outside the patrol's time")
    house = None
    if data.get("house_id") is not None:
        house = get_house(session, data["house_id"], scope, field="house_id")
    lon = lat = None
    given = data["location"]["coordinates"] if data.get("location") is not None else None
    if given is not None and not no_fix(*given):
        lon, lat = to_wgs84(*given, data.get("crs", "wgs84"))
    elif house is not None and house.lon is not None:
        lon, lat = house.lon, house.lat
    place = (data.get("place") or "").strip()
    if house is None and lon is None and not place:
        raise Unprocessable(
            "Say where: a house, a location or a place.",
            errors={"json": {"house_id": ["one of house_id, location or place is required"]}},
        )
    grid = house.grid_code if house is not None else None
    if grid is None and lon is not None:
        match = snapshot.locate(lon, lat)
        grid = snapshot.grids[match.grid]["code"] if match.grid >= 0 else None
    insert = dialect_insert(session)
    stmt = (
        insert(PatrolCheckin)
        .values(
            patrol_id=patrol.id,
            county_code=patrol.county_code,
            at=at,
            lon=lon,
            lat=lat,
            house_id=house.id if house is not None else None,
            grid_code=grid,
            place=place,
            note=data.get("note", ""),
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["patrol_id", "at"])
        .returning(PatrolCheckin.id)
    )
    new_id = session.execute(stmt).scalar()
    checkin = session.scalars(
        select(PatrolCheckin).where(PatrolCheckin.patrol_id == patrol.id, PatrolCheckin.at == at)
    ).one()
    return checkin, new_id is not None


def checkins_of(session: Session, patrol: Patrol) -> list[PatrolCheckin]:
    return list(
        session.scalars(
            select(PatrolCheckin)
            .where(PatrolCheckin.patrol_id == patrol.id)
            .order_by(PatrolCheckin.at)
        )
    )


def last_point(session: Session, patrol: Patrol) -> tuple[float, float] | None:
    """Return where the worker was last: the end of the line (a bad fix, left out of it,
    placed a finding in another township), else (a walk of one place has no line) that place:
    its latest point that is no outlier, or the stop it ended in; None when there is none."""
    stored = from_db(patrol.track)
    if stored is not None:
        lon, lat = stored.coords[-1][:2]
        return (lon, lat)
    _, _, line = _walk(session, patrol)
    if not len(line):
        return None
    return (float(line[-1, 0]), float(line[-1, 1]))


def place_finding(session: Session, patrol: Patrol, data: dict[str, Any]) -> dict[str, Any]:
    """Return the case report of a finding with its place: the location given, else where
    the worker was last (``last_point``, in WGS-84). A location of 0°, 0° is a phone without
    a fix, as for points and check-ins: no location (a finding was filed at Null Island, in
    no grid). Raises Unprocessable when it has none: no points yet, or only outliers (a
    cell-tower fix is no place for a case)."""
    given = data.get("location")
    if given and not no_fix(*given["coordinates"][:2]):
        return data
    last = last_point(session, patrol)
    if last is None:
        raise Unprocessable(
            "The case needs a location: the patrol has no usable points yet.",
            errors={"json": {"location": ["required: the track has no usable points"]}},
        )
    return {**data, "location": geojson_point(*last), "crs": "wgs84"}


def record_finding(session: Session, patrol: Patrol, case_id: int, now: datetime) -> None:
    """Link a case reported on the patrol to it."""
    session.add(
        PatrolFinding(
            patrol_id=patrol.id, county_code=patrol.county_code, case_id=case_id, created_at=now
        )
    )
    session.flush()


def findings_of(session: Session, patrol: Patrol) -> list[int]:
    return list(
        session.scalars(
            select(PatrolFinding.case_id)
            .where(PatrolFinding.patrol_id == patrol.id)
            .order_by(PatrolFinding.id)
        )
    )


def finding_of_client_id(
    session: Session, patrol: Patrol, reporter: str, client_id: str
) -> int | None:
    """Return the case a repeated finding (same reporter and ``client_id``) made on this
    patrol; Conflict when that client_id made a case elsewhere."""
    from ..models import Case

    case_id = session.scalar(
        select(Case.id).where(Case.reporter == reporter, Case.client_id == client_id)
    )
    if case_id is None:
        return None
    linked = session.scalar(select(PatrolFinding.patrol_id).where(PatrolFinding.case_id == case_id))
    if linked != patrol.id:
        raise Conflict(
            "This client_id reported another case already.",
            errors={"json": {"client_id": ["used for another case"]}},
        )
    return case_id


# --- lists ------------------------------------------------------------------------------------


def region_condition(code: str, column: Any) -> ColumnElement[bool]:
    try:
        prefix = subtree_prefix(code)
    except InvalidCode as exc:
        raise Unprocessable("Invalid region.", errors={"query": {"region": [str(exc)]}}) from None
    return starts_with(column, prefix)


def list_patrols(session: Session, principal: Principal, args: dict[str, Any]) -> list[Patrol]:
    """Return a page of the patrols the caller may read, newest first (cursor: an id)."""
    stmt = select(Patrol).where(readable(principal))
    if args.get("worker_id") is not None:
        stmt = stmt.where(Patrol.worker_id == args["worker_id"])
    if args.get("grid"):
        stmt = stmt.where(Patrol.grid_code == args["grid"])
    if args.get("region"):
        stmt = stmt.where(region_condition(args["region"], Patrol.region_code))
    if args.get("status"):
        stmt = stmt.where(Patrol.status == args["status"])
    if args.get("from_"):
        stmt = stmt.where(Patrol.started_at >= args["from_"])
    if args.get("to"):
        stmt = stmt.where(Patrol.started_at < args["to"])
    limit = args.get("limit", 50)
    page = page_by_id(stmt, Patrol.id, args.get("cursor"), limit, newest_first=True)
    return one_page(session.scalars(page), limit)


def worker_names(session: Session, ids: set[int]) -> dict[int, str]:
    if not ids:
        return {}
    rows = session.execute(select(User.id, User.display_name).where(User.id.in_(sorted(ids))))
    return {r.id: r.display_name for r in rows}


# --- views ------------------------------------------------------------------------------------


def patrol_view(patrol: Patrol, names: dict[int, str]) -> dict[str, Any]:
    """Return the summary of a patrol (no track: that is in the detail only)."""
    return {
        "id": patrol.id,
        "worker": {"id": patrol.worker_id, "name": names.get(patrol.worker_id)},
        "status": patrol.status,
        "started_at": patrol.started_at,
        "ended_at": patrol.ended_at,
        "grid": patrol.grid_code,
        "region_code": patrol.region_code,
        "county_code": patrol.county_code,
        "length_m": patrol.length_m,
        "duration_s": patrol.duration_s,
        "point_count": patrol.point_count,
        "outlier_count": patrol.outlier_count,
        "grids_crossed": list(patrol.grids_crossed or []),
        "thinned_at": patrol.thinned_at,
        "clock_offset_s": patrol.clock_offset_s,
        "created_at": patrol.created_at,
        "updated_at": patrol.updated_at,
        "version": patrol.version,
    }


def checkin_view(checkin: PatrolCheckin) -> dict[str, Any]:
    location = None
    if checkin.lon is not None:
        location = geojson_point(checkin.lon, checkin.lat)
    return {
        "id": checkin.id,
        "patrol_id": checkin.patrol_id,
        "at": checkin.at,
        "house_id": checkin.house_id,
        "place": checkin.place,
        "note": checkin.note,
        "location": location,
        "grid": checkin.grid_code,
        "created_at": checkin.created_at,
    }


def detail_view(
    session: Session, patrol: Patrol, names: dict[int, str], *, with_points: bool
) -> dict[str, Any]:
    """Return a patrol with its line (GeoJSON), check-ins, findings and, when asked, points."""
    line = from_db(patrol.track)
    view = patrol_view(patrol, names)
    view["track"] = shapely.geometry.mapping(line) if line is not None else None
    view["checkins"] = [checkin_view(c) for c in checkins_of(session, patrol)]
    view["findings"] = findings_of(session, patrol)
    if with_points:
        view["points"] = [
            {"t": p.recorded_at, "lon": p.lon, "lat": p.lat, "accuracy_m": p.accuracy_m}
            for p in points_of(session, patrol)
        ]
    return view


# --- statistics -------------------------------------------------------------------------------


def month_bounds(month: str | None, tz: tzinfo, now: datetime) -> tuple[str, datetime, datetime]:
    """Return ("YYYY-MM", start, end) of a calendar month in ``tz`` (default this month)."""
    if month is None:
        local = now.astimezone(tz)
        year, number = local.year, local.month
    else:
        year, number = int(month[:4]), int(month[5:7])
    start = datetime(year, number, 1, tzinfo=tz)
    end = datetime(year + number // 12, number % 12 + 1, 1, tzinfo=tz)
    return f"{year:04d}-{number:02d}", start.astimezone(UTC), end.astimezone(UTC)


def _share(visited: int, households: int) -> float | None:
    return round(visited / households, 4) if households else None


def monthly_stats(
    session: Session,
    principal: Principal,
    args: dict[str, Any],
    *,
    tz: tzinfo,
    now: datetime,
) -> dict[str, Any]:
    """Return the month's patrol figures per worker, per worker and grid, and per grid.

    A patrol counts in the month it started, for its worker, and for every grid it crossed
    (and its worker's primary grid). A household counts as visited when a visit
    (``visits.visited_at`` in the month) or a patrol check-in at its house falls in the
    month. Rows are for grids in the caller's scope only; a worker without ``patrols:read``
    sees their own figures.
    """
    label, start, end = month_bounds(args.get("month"), tz, now)
    scope = principal.scope
    reader = principal.can("patrols:read")
    grid_filter, region_filter = args.get("grid"), args.get("region")
    worker_filter = args.get("worker_id")

    stmt = select(Patrol).where(
        readable(principal), Patrol.started_at >= start, Patrol.started_at < end
    )
    if worker_filter is not None:
        stmt = stmt.where(Patrol.worker_id == worker_filter)
    if region_filter:
        stmt = stmt.where(region_condition(region_filter, Patrol.region_code))
    patrols = list(session.scalars(stmt))

    def wanted_grid(code: str | None) -> bool:
        if not code or not scope.covers_grid(code):
            return False
        if grid_filter and code != grid_filter:
            return False
        return not (region_filter and not code.startswith(subtree_prefix(region_filter)))

    workers: dict[int, dict[str, Any]] = {}
    pairs: dict[tuple[int, str], dict[str, Any]] = {}
    for p in patrols:
        crossed = [g for g in dict.fromkeys([p.grid_code, *(p.grids_crossed or [])]) if g]
        if grid_filter and grid_filter not in crossed:
            continue
        total = workers.setdefault(p.worker_id, {"patrols": 0, "length_m": 0.0, "duration_s": 0})
        total["patrols"] += 1
        total["length_m"] += p.length_m
        total["duration_s"] += p.duration_s
        for code in crossed:
            if not wanted_grid(code):
                continue
            row = pairs.setdefault(
                (p.worker_id, code), {"patrols": 0, "length_m": 0.0, "duration_s": 0}
            )
            row["patrols"] += 1
            row["length_m"] += p.length_m
            row["duration_s"] += p.duration_s

    # Workers on the roster of a grid count there even in a month without patrols (0 %).
    roster = select(GridAssignment.user_id, GridAssignment.grid_code).where(
        assignment_holds_on(now.astimezone(tz).date())
    )
    if reader:
        roster = roster.where(
            scope.grid_condition(GridAssignment.grid_code, GridAssignment.grid_code)
        )
    else:
        roster = roster.where(GridAssignment.user_id == principal.id)
    if worker_filter is not None:
        roster = roster.where(GridAssignment.user_id == worker_filter)
    if grid_filter:
        roster = roster.where(GridAssignment.grid_code == grid_filter)
    for user_id, code in session.execute(roster).all():
        if wanted_grid(code):
            pairs.setdefault((user_id, code), {"patrols": 0, "length_m": 0.0, "duration_s": 0})
            workers.setdefault(user_id, {"patrols": 0, "length_m": 0.0, "duration_s": 0})

    grids = sorted({code for _, code in pairs} | ({grid_filter} if grid_filter else set()))
    grids = [g for g in grids if wanted_grid(g)]
    households, visited = _households_visited(session, grids, start, end)
    by_grid: dict[str, set[int]] = defaultdict(set)
    for (_, code), ids in visited.items():
        by_grid[code] |= ids
    names = worker_names(session, set(workers))
    items = []
    for (worker_id, code), row in sorted(pairs.items()):
        done = len(visited.get((worker_id, code), set()))
        items.append(
            {
                "worker_id": worker_id,
                "worker_name": names.get(worker_id),
                "grid": code,
                "patrols": row["patrols"],
                "length_m": round(row["length_m"], 1),
                "duration_s": row["duration_s"],
                "households": households.get(code, 0),
                "households_visited": done,
                "visited_share": _share(done, households.get(code, 0)),
            }
        )
    grid_rows = []
    for code in grids:
        count = households.get(code, 0)
        grid_rows.append(
            {
                "grid": code,
                "patrols": len(
                    {
                        p.id
                        for p in patrols
                        if code in (p.grids_crossed or []) or p.grid_code == code
                    }
                ),
                "households": count,
                "households_visited": len(by_grid[code]),
                "visited_share": _share(len(by_grid[code]), count),
            }
        )
    return {
        "month": label,
        "from": start,
        "to": end,
        "workers": [
            {
                "worker_id": worker_id,
                "worker_name": names.get(worker_id),
                "patrols": total["patrols"],
                "length_m": round(total["length_m"], 1),
                "duration_s": total["duration_s"],
            }
            for worker_id, total in sorted(workers.items())
        ],
        "items": items,
        "grids": grid_rows,
    }


def _households_visited(
    session: Session, grids: list[str], start: datetime, end: datetime
) -> tuple[dict[str, int], dict[tuple[int | None, str], set[int]]]:
    """Return the number of households per grid, and the households of those grids visited
    in [start, end) per (worker, grid): by a visit, or a check-in at their house."""
    if not grids:
        return {}, {}
    counts = dict(
        session.execute(
            select(Household.grid_code, func.count(Household.id))
            .where(Household.grid_code.in_(grids))
            .group_by(Household.grid_code)
        ).all()
    )
    visited: dict[tuple[int | None, str], set[int]] = defaultdict(set)
    by_visit = session.execute(
        select(Visit.worker_id, Household.grid_code, Household.id)
        .join(Household, Household.id == Visit.household_id)
        .where(Household.grid_code.in_(grids), Visit.visited_at >= start, Visit.visited_at < end)
    ).all()
    by_checkin = session.execute(
        select(Patrol.worker_id, Household.grid_code, Household.id)
        .join(PatrolCheckin, PatrolCheckin.patrol_id == Patrol.id)
        .join(House, House.id == PatrolCheckin.house_id)
        .join(Household, Household.house_id == House.id)
        .where(
            Household.grid_code.in_(grids),
            PatrolCheckin.at >= start,
            PatrolCheckin.at < end,
        )
    ).all()
    for worker_id, code, household_id in [*by_visit, *by_checkin]:
        visited[(worker_id, code)].add(household_id)
    return counts, visited


# --- retention --------------------------------------------------------------------------------


def simplified(track: Any) -> Any:
    """Return the stored line simplified to within about ``SIMPLIFY_METRES``."""
    line = from_db(track)
    if line is None:
        return None
    lat = line.centroid.y
    # Degrees of longitude shrink with latitude: scale x so the tolerance is metric-ish.
    scale = max(math.cos(math.radians(lat)), 1e-6)
    stretched = shapely.transform(line, lambda c: np.column_stack([c[:, 0] * scale, c[:, 1]]))
    tolerance = SIMPLIFY_METRES / 111_320.0
    thin = shapely.simplify(stretched, tolerance, preserve_topology=False)
    back = shapely.transform(thin, lambda c: np.column_stack([c[:, 0] / scale, c[:, 1]]))
    if back.is_empty or len(back.coords) < 2:
        return track
    return to_db(back)


def thin_tracks(
    session: Session, now: datetime, raw_days: float, retention_days: float
) -> dict[str, int]:
    """Apply the retention of tracks (whereabouts); return what was done, by count.

    * patrols still active that have heard nothing (no point recorded, no check-in) for
      ``raw_days`` are ended at their walk's last point (``ended``), and thinned next;
    * patrols ended more than ``raw_days`` ago lose their raw points; their line is
      simplified (about 5 m) and their statistics kept (``thinned``);
    * patrols that ended (or, never ended, started) more than ``retention_days`` ago are
      deleted with their points, check-ins and finding links; the cases stay (``deleted``);
    * heartbeats older than ``raw_days`` lose their coordinates; the time stays as "last
      seen" (``presence_cleared``).

    Idempotent, and done once by workers running at once; flushes, never commits.
    """
    from ..models import Presence

    keep_from = now - timedelta(days=retention_days)
    # Another worker at the same moment takes the patrols this one has not locked (on
    # PostgreSQL; SQLite's write transaction excludes it): read unlocked, it deleted or thinned
    # them again after this one, and counted them twice.
    postgres = session.get_bind().dialect.name == "postgresql"
    old = select(Patrol.id).where(
        or_(
            Patrol.ended_at < keep_from,
            and_(Patrol.ended_at.is_(None), Patrol.started_at < keep_from),
        )
    )
    if postgres:
        old = old.with_for_update(skip_locked=True)
    doomed = list(session.scalars(old))
    if doomed:
        # Children first, by statement (the foreign keys cascade too; this does not rely on it).
        for model in (PatrolPoint, PatrolCheckin, PatrolFinding, Patrol):
            column = model.id if model is Patrol else model.patrol_id
            session.execute(
                delete(model).where(column.in_(doomed)).execution_options(synchronize_session=False)
            )

    raw_from = now - timedelta(days=raw_days)
    # A patrol never ended (the phone died, the worker left) kept its raw points, a worker's
    # exact whereabouts, until it was deleted at ``retention_days``: 180 days, not 30. One
    # that has heard nothing since ``raw_from`` (no point recorded, no check-in) is ended
    # at its walk's last point (else its start), and is thinned below like any other.
    heard = or_(
        select(PatrolPoint.id)
        .where(PatrolPoint.patrol_id == Patrol.id, PatrolPoint.recorded_at >= raw_from)
        .exists(),
        select(PatrolCheckin.id)
        .where(PatrolCheckin.patrol_id == Patrol.id, PatrolCheckin.created_at >= raw_from)
        .exists(),
    )
    silent: Select[Any] = select(Patrol).where(
        Patrol.status == "active", Patrol.started_at < raw_from, ~heard
    )
    if postgres:
        silent = silent.with_for_update(skip_locked=True)
    ended = 0
    for patrol in session.scalars(silent).all():
        last = last_walked_at(session, patrol)
        ended += end_patrol(
            session, patrol, max(patrol.started_at, last or patrol.started_at), now=now
        )

    due: Select[Any] = select(Patrol).where(
        Patrol.status == "ended", Patrol.ended_at < raw_from, Patrol.thinned_at.is_(None)
    )
    if postgres:
        due = due.with_for_update(skip_locked=True)
    thinning = list(session.scalars(due))
    if thinning:
        session.execute(
            delete(PatrolPoint)
            .where(PatrolPoint.patrol_id.in_([p.id for p in thinning]))
            .execution_options(synchronize_session=False)
        )
    for patrol in thinning:
        patrol.track = simplified(patrol.track)
        patrol.thinned_at = now
        patrol.version += 1
    cleared = session.execute(
        update(Presence)
        .where(Presence.at < raw_from, Presence.lon.is_not(None))
        .values(lon=None, lat=None, accuracy_m=None)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.flush()
    return {
        "ended": ended,
        "thinned": len(thinning),
        "deleted": len(doomed),
        "presence_cleared": cleared or 0,
    }
