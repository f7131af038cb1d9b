"""Presence: workers' heartbeats, who is on duty in a grid now, and when each was last seen.

One row per user, upserted by every heartbeat (a late heartbeat older than the stored one
changes nothing). "On duty" means a heartbeat within ``GRIDAPI_PRESENCE_MINUTES``.
Coordinates are whereabouts: answered only to callers who also hold ``patrols:read``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from .. import clock
from ..errors import Unprocessable
from ..geo.crs import no_fix, to_wgs84
from ..geo.shapes import geojson_point
from ..models import GridAssignment, Presence, User
from ..scope import Scope
from .cursors import Page, one_page, page_by_id
from .identity import assignment_holds_on, roster, users_query
from .patrols import TOLERANCE, dialect_insert, region_condition
from .routing import IndexSnapshot

if TYPE_CHECKING:
    from ..auth import Principal


def heartbeat(
    session: Session,
    principal: Principal,
    data: dict[str, Any],
    *,
    snapshot: IndexSnapshot,
    now: datetime,
) -> Presence:
    """Record the caller's heartbeat (routed to a grid); return their presence row."""
    if principal.kind != "user":
        raise Unprocessable("Only a person reports presence.", errors={"json": {"user": ["-"]}})
    at = (data.get("at") or now).astimezone(UTC)
    if at > now + TOLERANCE:
        raise Unprocessable("Invalid at.", errors={"json": {"at": ["lies in the future"]}})
    given = data["location"]["coordinates"]
    lon: float | None = None
    lat: float | None = None
    grid = region = None
    if not no_fix(*given):
        lon, lat = to_wgs84(*given, data.get("crs", "wgs84"))
        match = snapshot.locate(lon, lat)
        grid = snapshot.grids[match.grid] if match.grid >= 0 else None
        region = grid["community_code"] if grid else None
        if region is None:
            chain = snapshot.regions_for_point(lon, lat)
            region = chain[0]["code"] if chain else None
    # else no fix: the time and battery count; the place is unknown
    region = region or principal.region_code
    if region is None:
        raise Unprocessable(
            "Invalid location.", errors={"json": {"location": ["outside every known region"]}}
        )
    row = {
        "user_id": principal.id,
        "county_code": region[:6],
        "lon": lon,
        "lat": lat,
        "accuracy_m": data.get("accuracy_m"),
        "grid_code": grid["code"] if grid else None,
        "at": at,
        "battery": data.get("battery"),
    }
    insert = dialect_insert(session)
    stmt = insert(Presence).values(**row)
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"],
        set_={k: stmt.excluded[k] for k in row if k != "user_id"},
        where=Presence.at <= stmt.excluded.at,
    )
    session.execute(stmt)
    session.expire_all()
    return session.get(Presence, principal.id)  # type: ignore[return-value]


def presence_view(
    row: Presence | None, user: User, now: datetime, minutes: float, *, with_location: bool
) -> dict[str, Any]:
    """Return a user's last seen (and, for ``with_location``, where)."""
    location = None
    if row is not None and with_location and row.lon is not None:
        location = geojson_point(row.lon, row.lat)
    return {
        "user_id": user.id,
        "username": user.username,
        "name": user.display_name,
        "role": user.role_name,
        "last_seen": row.at if row else None,
        "on_duty": bool(row and row.at >= now - timedelta(minutes=minutes)),
        "grid": row.grid_code if row else None,
        "location": location,
        "accuracy_m": row.accuracy_m if row and with_location else None,
        "battery": row.battery if row else None,
    }


def on_duty(
    session: Session,
    grid_code: str,
    scope: Scope,
    *,
    now: datetime,
    minutes: float,
    with_location: bool,
) -> dict[str, Any]:
    """Return who is on duty in a grid now: on its roster, or in scope and located in it,
    with a heartbeat within ``minutes``; and the roster's members who are not, with when
    they were last seen. A worker from outside the caller's scope passing through the grid
    is left out, as from ``/presence``: their whereabouts are not the caller's to read.

    Raises NotFound for a grid not in service or outside the scope.
    """
    # A deactivated account still on the roster is nobody's colleague on duty: it was
    # listed off duty, as if it might come.
    members = {user.id: user for _, user in roster(session, grid_code, scope) if user.is_active}
    since = now - timedelta(minutes=minutes)
    in_scope = users_query(scope).with_only_columns(User.id)
    fresh = session.execute(
        select(Presence, User)
        .join(User, User.id == Presence.user_id)
        .where(
            Presence.at >= since,
            User.is_active.is_(True),
            or_(
                and_(Presence.grid_code == grid_code, User.id.in_(in_scope)),
                Presence.user_id.in_(sorted(members) or [-1]),
            ),
        )
        .order_by(Presence.at.desc(), User.id)
    ).all()
    items = []
    for row, user in fresh:
        view = presence_view(row, user, now, minutes, with_location=with_location)
        view["on_roster"] = user.id in members
        view["in_grid"] = row.grid_code == grid_code
        items.append(view)
    present = {row.user_id for row, _ in fresh}
    absent_ids = sorted(set(members) - present)
    rows = {
        p.user_id: p
        for p in session.scalars(select(Presence).where(Presence.user_id.in_(absent_ids or [-1])))
    }
    off_duty = []
    for user_id in absent_ids:
        view = presence_view(
            rows.get(user_id), members[user_id], now, minutes, with_location=with_location
        )
        view["on_roster"], view["in_grid"] = True, False
        off_duty.append(view)
    return {"grid": grid_code, "since": since, "items": items, "off_duty": off_duty}


def list_presence(
    session: Session,
    scope: Scope,
    args: dict[str, Any],
    *,
    now: datetime,
    minutes: float,
    with_location: bool,
) -> list[dict[str, Any]]:
    """Return the last seen of the workers in scope (on a roster now, or with a heartbeat),
    by user id (cursor: the last id of the previous page)."""
    # The county's date, as rosters are kept (a roster starting today was not yet on from
    # 16:00 to 24:00 UTC, when the UTC date is still yesterday's in Asia/Shanghai).
    today = clock.date_of(now)
    on_roster = select(GridAssignment.user_id).where(assignment_holds_on(today))
    stmt = (
        users_query(scope)
        .add_columns(Presence)
        .outerjoin(Presence, Presence.user_id == User.id)
        .where(
            User.is_active.is_(True),
            or_(Presence.user_id.is_not(None), User.id.in_(on_roster)),
        )
    )
    if args.get("region"):
        stmt = stmt.where(region_condition(args["region"], User.region_code))
    if args.get("grid"):
        stmt = stmt.where(
            User.id.in_(
                select(GridAssignment.user_id).where(
                    GridAssignment.grid_code == args["grid"], assignment_holds_on(today)
                )
            )
        )
    if args.get("on_duty") is True:
        stmt = stmt.where(Presence.at >= now - timedelta(minutes=minutes))
    elif args.get("on_duty") is False:
        stmt = stmt.where(
            or_(Presence.at.is_(None), Presence.at < now - timedelta(minutes=minutes))
        )
    limit = args.get("limit", 50)
    rows = one_page(session.execute(page_by_id(stmt, User.id, args.get("cursor"), limit)), limit)
    views = Page(
        presence_view(row, user, now, minutes, with_location=with_location) for user, row in rows
    )
    views.more = rows.more
    return views
