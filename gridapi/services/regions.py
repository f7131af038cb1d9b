"""The administrative tree: validate codes, read the tree, create, update and import regions."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import shapely
from sqlalchemy import and_, case, exists, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from .. import clock
from ..codes import (
    LEVEL_DEPTH,
    InvalidCode,
    normalize_code,
    parent_candidates,
    region_level,
    subtree_prefix,
)
from ..errors import Conflict, NotFound, Unprocessable
from ..geo.shapes import GeometryError, from_db, multipolygon_from_geojson, to_db
from ..models import Grid, Region
from ..scope import Scope
from .preconditions import check_if_match
from .uniques import add_or_conflict


def valid_on(day: date):  # type: ignore[no-untyped-def]
    """Return the SQL condition 'valid on ``day``'."""
    return and_(
        or_(Region.valid_from.is_(None), Region.valid_from <= day),
        or_(Region.valid_to.is_(None), Region.valid_to >= day),
    )


def region_etag(region: Region) -> str:
    """Return the ETag of a region's period: ``"<id>-<digest>"``, the digest of everything
    a change may alter (name, parent, boundary, validity), so it moves with every change."""
    geom = from_db(region.boundary)
    state = (
        region.code,
        region.level,
        region.name,
        region.parent_code,
        str(region.valid_from),
        str(region.valid_to),
        None if geom is None else geom.wkb_hex,
    )
    digest = hashlib.blake2b(repr(state).encode(), digest_size=8).hexdigest()
    return f'"{region.id}-{digest}"'


def region_not_found() -> NotFound:
    # One message for missing and out-of-scope regions: the two must answer alike.
    return NotFound("The region does not exist or is outside your scope.")


# PostgreSQL advisory locks in the two-key form (apart from the one-key locks of
# idempotency keys): the periods of one code (second key its hashtext), all of them.
_PERIODS_OF_CODE, _ALL_PERIODS = 2260, 2261


def lock_periods(session: Session, code: str | None = None) -> None:
    """Wait until no other transaction is writing the periods of ``code`` (of every code
    when None, as an import does), and keep the others from writing them until this
    transaction ends.

    Every write of periods (create, change, import) takes it before it reads them: they are
    checked, then written, one write at a time, so two writes at once, both checked before
    either was written, cannot make them overlap; the second waits, then sees the first.
    An advisory lock, not the rows': a code without periods yet has none to lock (two
    creates of one code). SQLite writers are one at a time already.
    """
    if session.get_bind().dialect.name != "postgresql":
        return
    if code is None:
        session.execute(text("SELECT pg_advisory_xact_lock(:all, 0)"), {"all": _ALL_PERIODS})
        return
    session.execute(
        text(
            "SELECT pg_advisory_xact_lock_shared(:all, 0), "
            "pg_advisory_xact_lock(:one, hashtext(:code))"
        ),
        {"all": _ALL_PERIODS, "one": _PERIODS_OF_CODE, "code": code},
    )


def get_region(
    session: Session, code: str, on: date | None = None, *, scope: Scope, lock: bool = False
) -> Region:
    """Return the region with ``code`` valid on ``on`` (default today) that ``scope`` sees.

    With ``lock``, the periods of the code are locked first (``lock_periods``) and the row
    read afresh, as another change may have written it meanwhile.
    Raises NotFound when there is none.
    """
    seen = scope.region_condition(Region.code, with_ancestors=True)
    if lock:
        lock_periods(session, code)
    row = session.scalars(
        select(Region)
        .where(Region.code == code, valid_on(on or clock.today()), seen)
        .order_by(Region.valid_from.desc().nulls_last())
        .limit(1)
        .execution_options(populate_existing=lock)
    ).first()
    if row is None:
        raise region_not_found()
    return row


def list_regions(
    session: Session,
    *,
    level: str | None = None,
    parent: str | None = None,
    within: str | None = None,
    q: str | None = None,
    on: date | None = None,
    after: str | None = None,
    limit: int = 100,
    scope: Scope,
) -> list[Region]:
    """Return regions valid on ``on`` that ``scope`` sees, by code, after the cursor."""
    stmt = select(Region).where(
        valid_on(on or clock.today()), scope.region_condition(Region.code, with_ancestors=True)
    )
    if level:
        stmt = stmt.where(Region.level == level)
    if parent:
        stmt = stmt.where(Region.parent_code == parent)
    if within:
        prefix = _prefix_or_422(within, "within")
        stmt = stmt.where(Region.code.startswith(prefix, autoescape=True), Region.code != within)
    if q:
        stmt = stmt.where(Region.name.contains(q, autoescape=True))
    if after:
        stmt = stmt.where(Region.code > after)
    return list(session.scalars(stmt.order_by(Region.code).limit(limit)))


def _prefix_or_422(code: str, field_name: str) -> str:
    try:
        return subtree_prefix(code)
    except InvalidCode as exc:
        raise Unprocessable(f"Invalid {field_name}.", errors={"query": {field_name: [str(exc)]}})


def children(session: Session, code: str, on: date | None = None, *, scope: Scope) -> list[Region]:
    """Return the direct children of the region ``code`` that ``scope`` sees."""
    get_region(session, code, on, scope=scope)
    return list(
        session.scalars(
            select(Region)
            .where(
                Region.parent_code == code,
                valid_on(on or clock.today()),
                scope.region_condition(Region.code, with_ancestors=True),
            )
            .order_by(Region.code)
        )
    )


def ancestors(session: Session, code: str, on: date | None = None, *, scope: Scope) -> list[Region]:
    """Return the ancestors of ``code``, parent first, up to the province. Raises NotFound."""
    day = on or clock.today()
    region = get_region(session, code, day, scope=scope)
    chain: list[Region] = []
    while region.parent_code:
        parent = session.scalars(
            select(Region).where(Region.code == region.parent_code, valid_on(day))
        ).first()
        if parent is None:
            break
        chain.append(parent)
        region = parent
    return chain


def subtree(
    session: Session,
    code: str,
    on: date | None = None,
    max_level: str | None = None,
    *,
    scope: Scope,
) -> list[Region]:
    """Return the region ``code`` and everything under it that ``scope`` sees, by code."""
    day = on or clock.today()
    get_region(session, code, day, scope=scope)
    stmt = select(Region).where(
        Region.code.startswith(subtree_prefix(code)),
        valid_on(day),
        scope.region_condition(Region.code, with_ancestors=True),
    )
    if max_level:
        stmt = stmt.where(
            Region.level.in_([lv for lv, d in LEVEL_DEPTH.items() if d <= LEVEL_DEPTH[max_level]])
        )
    return list(session.scalars(stmt.order_by(Region.code)))


def current_codes(session: Session, codes: set[str], on: date | None = None) -> set[str]:
    """Return which of ``codes`` are regions valid on ``on`` (default today)."""
    found: set[str] = set()
    items = sorted(codes)
    for i in range(0, len(items), 500):
        found.update(
            session.scalars(
                select(Region.code).where(
                    Region.code.in_(items[i : i + 500]), valid_on(on or clock.today())
                )
            )
        )
    return found


def check_code(code: str, level: str | None = None) -> str:
    """Return the level of ``code``; Unprocessable when malformed or not of ``level``."""
    try:
        implied = region_level(code)
    except InvalidCode as exc:
        raise Unprocessable("Invalid region code.", errors={"json": {"code": [str(exc)]}})
    if level is not None and level != implied:
        raise Unprocessable(
            "Level does not match the code.",
            errors={"json": {"level": [f"the code {code} is a {implied} code, not {level}"]}},
        )
    return implied


def derive_parent(code: str, existing: set[str], on: date | None = None) -> str | None:
    """Return the nearest parent of ``code`` among ``existing`` codes (None for a province),
    those valid on ``on`` (say which day, if not today).

    Raises Unprocessable naming the missing ancestor.
    """
    candidates = parent_candidates(code)
    if not candidates:
        return None
    for candidate in candidates:
        if candidate in existing:
            return candidate
    when = f" valid on {on}" if on is not None else ""
    raise Unprocessable(
        "The parent region does not exist.",
        errors={
            "json": {
                "code": [f"no parent for {code}: create {' or '.join(candidates)}{when} first"]
            }
        },
    )


def create_region(
    session: Session,
    *,
    code: str,
    name: str,
    level: str | None = None,
    parent_code: str | None = None,
    boundary: dict | None = None,
    valid_from: date | None = None,
    valid_to: date | None = None,
    scope: Scope,
) -> Region:
    """Create a region inside ``scope``, deriving its level and parent from the code.

    The parent is the one valid on the region's first day when that is later than today
    (a planned township's planned communities), else today's.
    Raises Unprocessable for a bad code, level, parent or boundary (a parent outside the
    scope counts as missing); Conflict when the code is already current (naming ``code``) or
    the period overlaps another period of the code.
    """
    level = check_code(code, level)
    if not scope.covers_region(code):
        raise Unprocessable(
            "The parent region does not exist.",
            errors={"json": {"code": [f"{code} is not inside your scope"]}},
        )
    _check_period(valid_from, valid_to)
    # A period change of the code, or another create, under way: checked on what it wrote.
    # Only the index of current codes guarded, and a period with an end passed it.
    lock_periods(session, code)
    existing = current_codes(session, {code, *parent_candidates(code)})

    def taken(current: set[str]) -> Conflict | None:
        if code in current:
            return Conflict(
                f"Region {code} already exists.",
                errors={"json": {"code": ["a current region has this code"]}},
            )
        return _overlap(session, code, valid_from, valid_to, field="valid_from")

    if (error := taken(existing)) is not None:
        raise error
    # A region planned to start later hangs under the parent of its first day: one planned
    # too (a new township's communities), which was refused as missing ("create it first").
    start = valid_from if valid_from is not None and valid_from > clock.today() else None
    if start is not None:
        existing = current_codes(session, set(parent_candidates(code)), start)
    parent = derive_parent(code, existing, start)
    if parent_code is not None and parent_code != parent:
        raise Unprocessable(
            "Parent does not match the code.",
            errors={
                "json": {
                    "parent_code": [f"the code {code} implies parent {parent}, not {parent_code}"]
                }
            },
        )
    geom = _boundary_or_422(boundary)
    _inside_parent(session, geom, parent, start or clock.today())
    region = Region(
        code=code,
        name=name,
        level=level,
        parent_code=parent,
        boundary=to_db(geom),
        valid_from=valid_from,
        valid_to=valid_to,
    )
    # Created by another request between the look-up and the insert: the same answer as
    # when it came first (the code current, or the periods overlapping), not the generic one.
    add_or_conflict(session, region, lambda: taken(current_codes(session, {code})))
    _adopt_counties(session, [region])
    routing_changed(session)
    return region


def _adopt_counties(session: Session, created: list[Region]) -> None:
    """Move the counties of each pseudo-city (省直辖县级行政区划, xx90) among ``created``
    that is valid today from under the province to under it.

    Their parent is the nearest of the code's candidates that exists: a county created while
    the pseudo-city was missing hung under the province, and stayed there once the
    pseudo-city came (仙桃 under 湖北 while 潜江, imported with 4290, hung under 4290).
    """
    today = clock.today()
    for city in created:
        if city.level != "city" or city.code[2:4] != "90":
            continue
        if (city.valid_from or date.min) > today or (city.valid_to or date.max) < today:
            continue
        session.execute(
            update(Region)
            .where(
                Region.code.startswith(city.code[:4]),
                Region.level == "county",
                Region.parent_code == city.code[:2].ljust(12, "0"),
                valid_on(today),
            )
            .values(parent_code=city.code)
            .execution_options(synchronize_session="fetch")
        )


def routing_changed(session: Session) -> None:
    """Tell every process's routing index to reload: it holds region names and boundaries
    (for points no grid takes), so a region write moves the generation as activations do."""
    from ..models import IndexGeneration
    from ..models.base import utcnow

    session.execute(
        update(IndexGeneration)
        .where(IndexGeneration.name == "grids")
        .values(generation=IndexGeneration.generation + 1, changed_at=utcnow())
    )


def _check_period(
    valid_from: date | None, valid_to: date | None, start_field: str = "valid_from"
) -> None:
    if valid_from is not None and valid_to is not None and valid_to < valid_from:
        raise Unprocessable(
            f"valid_to is before {start_field}.",
            errors={"json": {"valid_to": [f"must not be before {start_field} ({valid_from})"]}},
        )


def _check_no_overlap(
    session: Session,
    code: str,
    valid_from: date | None,
    valid_to: date | None,
    exclude: int | None = None,
    *,
    field: str,
) -> None:
    """Raise Conflict, naming ``field``, when the period would overlap another period of the
    same code."""
    if (error := _overlap(session, code, valid_from, valid_to, exclude, field=field)) is not None:
        raise error


def _overlap(
    session: Session,
    code: str,
    valid_from: date | None,
    valid_to: date | None,
    exclude: int | None = None,
    *,
    field: str,
) -> Conflict | None:
    """The conflict, naming ``field``, of the period with another period of the same code,
    or None."""
    start, end = valid_from or date.min, valid_to or date.max
    for other in session.scalars(select(Region).where(Region.code == code)):
        if other.id == exclude:
            continue
        if start <= (other.valid_to or date.max) and (other.valid_from or date.min) <= end:
            period = f"{other.valid_from or 'the beginning'} to {other.valid_to or 'now'}"
            return Conflict(
                f"The period overlaps the period of {code} from {period}; "
                "periods of one code never overlap.",
                errors={"json": {field: [f"overlaps the period from {period}"]}},
            )
    return None


def _boundary_or_422(boundary: dict | None, path: tuple[str, ...] = ("json", "boundary")):
    if boundary is None:
        return None
    try:
        geom = multipolygon_from_geojson(boundary)
    except GeometryError as exc:
        raise Unprocessable("Invalid boundary.", errors=_nest(path, [str(exc)]))
    if not geom.is_valid:
        raise Unprocessable(
            "Invalid boundary.",
            errors=_nest(path, [f"invalid geometry: {shapely.is_valid_reason(geom)}"]),
        )
    return geom


def _inside_parent(session: Session, geom: Any, parent: str | None, on: date) -> None:
    """Refuse a boundary that lies wholly outside its parent's (where the parent has one):
    a community drawn in Beijing under a Suzhou township was taken, and /locate named the
    township for points in Beijing. Touching or overlapping its parent's edge is allowed
    (boundaries of two sources never match exactly); nothing in common is a mistake (the
    coordinates swapped, projected, or another place's)."""
    if geom is None or parent is None:
        return
    wkb = session.scalar(
        select(func.ST_AsBinary(Region.boundary)).where(Region.code == parent, valid_on(on))
    )
    if wkb is None:
        return
    if not geom.intersects(shapely.from_wkb(bytes(wkb))):
        raise Unprocessable(
            "The boundary lies wholly outside its parent's.",
            errors={
                "json": {
                    "boundary": [
                        f"nothing in common with the boundary of {parent}: check that "
                        "coordinates are [lon, lat] in WGS-84"
                    ]
                }
            },
        )


def _nest(path: tuple[str, ...], value: Any) -> dict:
    out: Any = value
    for key in reversed(path):
        out = {key: out}
    return out


def update_region(
    session: Session,
    code: str,
    changes: dict[str, Any],
    *,
    scope: Scope,
    on: date | None = None,
    if_match: str | None = None,
) -> Region:
    """Change a region's name, boundary or validity and return the row changed.

    The row is the period valid on ``on`` (default today; never a day before today, as
    history is not rewritten: a period planned to start later is corrected before it
    starts). With ``effective_from`` the change starts a new period: that row ends the day
    before and a new row carries the new values. Without it the row is corrected in place.
    ``if_match``, when sent, must name the period's current ETag (``region_etag``), checked
    under the lock of the code's periods.
    Raises NotFound, Unprocessable, Conflict, PreconditionFailed.
    """
    if on is not None and on < clock.today():
        raise Unprocessable(
            "Only a period valid today or later can be changed; history stays as it was.",
            errors={"query": {"on": ["today or later"]}},
        )
    if not scope.covers_region(code):  # an ancestor is seen, not changed: the same 404
        raise region_not_found()
    region = get_region(session, code, on, scope=scope, lock=True)
    # Optional, as before regions had ETags: a client that sends none has the last word.
    check_if_match(region, if_match, noun="region", required=False, current=region_etag(region))
    effective = changes.pop("effective_from", None)
    if "boundary" in changes:
        geom = _boundary_or_422(changes["boundary"])
        _inside_parent(session, geom, region.parent_code, on or clock.today())
        changes["boundary"] = to_db(geom)
    if effective is None:
        # Checked before the change is written: a period made open-ended over a later one
        # was refused by the index of current codes first, with the generic 409.
        with session.no_autoflush:
            for key, value in changes.items():
                setattr(region, key, value)
            _check_period(region.valid_from, region.valid_to)
            _check_no_overlap(
                session,
                code,
                region.valid_from,
                region.valid_to,
                exclude=region.id,
                field="valid_to" if "valid_to" in changes else "valid_from",
            )
        session.flush()
        changed = "valid_to" if "valid_to" in changes else "valid_from"
        _keep_grids_placed(session, code, changed)
        _keep_children_parented(session, code, changed)
        routing_changed(session)
        return region
    _check_period(effective, changes.get("valid_to"), start_field="effective_from")
    # The new period starts on valid_from when given: one ending before it was refused by
    # the database's check of the period, with the generic 409.
    _check_period(changes.get("valid_from"), changes.get("valid_to"))
    start = changes.get("valid_from")
    if start is not None and start > effective:
        # The period ended the day before effective_from: a later start left the code
        # without a period in between, silently (routing and the tree lost it meanwhile).
        gap_end = start - timedelta(days=1)
        raise Unprocessable(
            f"The new period would start on {start}, leaving {code} without a period "
            f"from {effective} to {gap_end}.",
            errors={
                "json": {
                    "valid_from": [
                        f"must not be after effective_from ({effective}); leave it out "
                        "and the new period starts on effective_from"
                    ]
                }
            },
        )
    if region.valid_from is not None and effective <= region.valid_from:
        raise Conflict(
            f"The current period of {code} starts on {region.valid_from}; a new "
            "period must start later."
        )
    successor = Region(
        code=region.code,
        level=region.level,
        name=region.name,
        parent_code=region.parent_code,
        boundary=region.boundary,
        valid_from=effective,
        valid_to=None,
    )
    for key, value in changes.items():
        setattr(successor, key, value)
    # Neither the period ended the day before (stretched, when it ended earlier) nor the new
    # one (from valid_from, when given too) may overlap another, checked before either is
    # written: one planned to start later was overlapped, or refused by the index of current
    # codes with the generic 409.
    with session.no_autoflush:
        region.valid_to = effective - timedelta(days=1)
        _check_no_overlap(
            session,
            code,
            region.valid_from,
            region.valid_to,
            exclude=region.id,
            field="effective_from",
        )
        _check_no_overlap(  # against the period ended too, as changed above
            session,
            code,
            successor.valid_from,
            successor.valid_to,
            field="valid_from" if "valid_from" in changes else "effective_from",
        )
    session.flush()
    session.add(successor)
    session.flush()
    _keep_grids_placed(session, code, "valid_to")
    _keep_children_parented(session, code, "valid_to")
    routing_changed(session)
    return successor


def _keep_grids_placed(session: Session, code: str, field: str) -> None:
    """Refuse a change that leaves region ``code`` not current today while grids inside it
    are in service, or regions under it are current: every grid belongs to a community of
    the tree (DOMAIN §2), and a grid whose community had ended was still routed, its region
    chain starting above it. The grids are retired or moved first (a grid version without
    them); a future end stays possible (a merger planned with its new grid version)."""
    if session.scalar(select(Region.id).where(Region.code == code, valid_on(clock.today()))):
        return
    placed = select(Grid.code).where(
        Grid.in_service.is_(True), Grid.community_code.startswith(subtree_prefix(code))
    )
    _refuse_ending(
        session,
        placed,
        f"Region {code} would end while grids in it are in service: "
        "retire or move them first (activate a grid version without them).",
        field,
        "grids in service",
    )
    # Nor while regions under it are current: a village of an ended township stayed current
    # and its ancestors came back empty (county, city and province lost with it).
    under = select(Region.code).where(Region.parent_code == code, valid_on(clock.today()))
    _refuse_ending(
        session,
        under,
        f"Region {code} would end while regions under it are current: end or move them first.",
        field,
        "current regions under it",
    )


def _keep_children_parented(session: Session, code: str, field: str) -> None:
    """Refuse a change of region ``code``'s periods that leaves a region under it, current or
    planned, beginning on a day no period of ``code`` covers: a community planned from July
    under a township shortened to end in June was left with no parent (its ancestors came
    back empty, the county and the rest lost), though creating it so is refused."""
    child, period = aliased(Region), aliased(Region)
    today = clock.today()
    begins = case(
        (or_(child.valid_from.is_(None), child.valid_from < today), today),
        else_=child.valid_from,
    )
    parentless = select(child.code).where(
        child.parent_code == code,
        or_(child.valid_to.is_(None), child.valid_to >= today),
        ~exists(
            select(period.id).where(
                period.code == code,
                or_(period.valid_from.is_(None), period.valid_from <= begins),
                or_(period.valid_to.is_(None), period.valid_to >= begins),
            )
        ),
    )
    _refuse_ending(
        session,
        parentless,
        f"Region {code} would not be valid when regions under it begin: end or move them first.",
        field,
        "regions under it beginning outside its periods",
    )


def _refuse_ending(session: Session, codes: Any, message: str, field: str, what: str) -> None:
    """Raise Conflict naming up to ten of the codes ``codes`` selects (nothing if none)."""
    found = session.scalars(codes.order_by(codes.selected_columns[0]).limit(11)).all()
    if found:
        shown = ", ".join(found[:10]) + (", …" if len(found) > 10 else "")
        raise Conflict(message, errors={"json": {field: [f"{what}: {shown}"]}})


@dataclass
class ImportResult:
    """What an import did, or would have done: counts and row-level errors."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": len(self.created),
            "updated": len(self.updated),
            "unchanged": len(self.unchanged),
            "errors": self.errors,
        }


def parse_region_file(
    content: bytes, filename: str = "", *, code_field: str = "code", name_field: str = "name"
) -> list[dict[str, Any]]:
    """Return rows ``{"code", "name", ...}`` from CSV, a JSON list or a GeoJSON FeatureCollection.

    ``code_field`` and ``name_field`` name the columns or properties to read them from.
    Raises Unprocessable when the file is none of these.
    """
    rows = _parse_region_rows(content, filename, code_field, name_field)
    if (code_field, name_field) == ("code", "name"):
        return rows
    renamed = []
    for row in rows:
        if isinstance(row, dict):
            row = dict(row)
            for src, dst in ((code_field, "code"), (name_field, "name")):
                if src in row and src != dst:
                    row[dst] = row.pop(src)
        renamed.append(row)
    return renamed


def _parse_region_rows(
    content: bytes, filename: str, code_field: str, name_field: str
) -> list[Any]:
    text = content.decode("utf-8-sig", errors="strict") if content else ""
    stripped = text.lstrip()
    if stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise Unprocessable(f"{filename or 'file'} is not valid JSON: {exc}")
        if isinstance(data, dict) and data.get("type") == "FeatureCollection":
            rows = []
            for feature in data.get("features") or []:
                props = dict((feature or {}).get("properties") or {})
                if feature.get("geometry") is not None:
                    props["boundary"] = feature["geometry"]
                rows.append(props)
            return rows
        if not isinstance(data, list):
            raise Unprocessable(
                "A JSON region file must be a list of objects with code and "
                "name, or a GeoJSON FeatureCollection."
            )
        return data
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {code_field, name_field} <= {
        f.strip() for f in reader.fieldnames
    }:
        raise Unprocessable(f"A CSV region file needs the columns {code_field},{name_field}.")
    return [
        {k.strip(): (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k}
        for row in reader
    ]


def import_regions(session: Session, rows: list[Any], *, scope: Scope) -> ImportResult:
    """Create or rename regions inside ``scope`` from ``rows``; parents derive from codes.

    All or nothing: when any row has an error, nothing is written and the result lists
    every error (the caller answers 422). Ancestors must exist or be in the same rows. A
    code is renamed in its period valid today, or created valid from the beginning; one with
    periods but none valid today is an error (the new period would overlap them).
    """
    result = ImportResult()
    parsed: dict[str, dict[str, Any]] = {}
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            result.errors.append({"row": index, "code": None, "message": "not an object"})
            continue
        code = normalize_code(row.get("code"))
        code = code if isinstance(code, str) else ""
        name = str(row.get("name") or "").strip()
        try:
            level = region_level(code)
        except InvalidCode as exc:
            result.errors.append({"row": index, "code": code or None, "message": str(exc)})
            continue
        if not scope.covers_region(code):
            result.errors.append({"row": index, "code": code, "message": "not inside your scope"})
            continue
        if row.get("level") and row["level"] != level:
            result.errors.append(
                {
                    "row": index,
                    "code": code,
                    "field": "level",
                    "message": f"level {row['level']} does not match the code ({level})",
                }
            )
            continue
        if not name or len(name) > 100:
            result.errors.append(
                {
                    "row": index,
                    "code": code,
                    "field": "name",
                    "message": "name is required (at most 100 characters)",
                }
            )
            continue
        if code in parsed:
            result.errors.append({"row": index, "code": code, "message": "duplicate code"})
            continue
        boundary = None
        if row.get("boundary") is not None:
            try:
                boundary = multipolygon_from_geojson(row["boundary"])
            except GeometryError as exc:
                result.errors.append(
                    {"row": index, "code": code, "field": "boundary", "message": f"boundary {exc}"}
                )
                continue
            if not boundary.is_valid:
                result.errors.append(
                    {
                        "row": index,
                        "code": code,
                        "field": "boundary",
                        "message": "boundary is an "
                        f"invalid geometry: {shapely.is_valid_reason(boundary)}",
                    }
                )
                continue
        parsed[code] = {
            "row": index,
            "code": code,
            "name": name,
            "level": level,
            "boundary": boundary,
        }

    # The periods of every code, as any code of the rows may be created: a create or change
    # under way is waited for, then seen. The unique index of current codes stays the last
    # guard: if it refuses a code created all the same between the look-up and the insert,
    # the import is planned again on what is there now, as when it came after that request.
    # Each retry finds one more of its codes taken.
    lock_periods(session)
    retries = len(parsed)
    while True:
        try:
            with session.begin_nested():
                _write_import(session, parsed, result)
            break
        except IntegrityError:
            if not retries or not _other_periods(session, set(result.created)):
                raise  # not a code given a period meanwhile
            retries -= 1
    if result.errors:
        result.errors.sort(key=lambda e: e["row"])
        return result
    if result.created or result.updated:
        routing_changed(session)
    return result


def _write_import(
    session: Session, parsed: dict[str, dict[str, Any]], result: ImportResult
) -> None:
    """Create or rename the regions of ``parsed`` (rows checked on their own) on what the
    database holds now, counting them in ``result``; write nothing and add to its errors
    when an ancestor is missing or a code to create has a period not valid today."""
    result.created, result.updated, result.unchanged = [], [], []
    wanted = set(parsed)
    for item in parsed.values():
        wanted.update(parent_candidates(item["code"]))
    existing_rows = {r.code: r for r in _current_rows(session, wanted)}
    known = set(existing_rows) | set(parsed)
    # A code not valid today is created from the beginning, open-ended: over any period it
    # has. One planned to start later was refused by the index of current codes (the generic
    # 409), one ended was overlapped (the code listed twice on a day of its history).
    not_current = _other_periods(session, set(parsed) - set(existing_rows))
    for code in sorted(parsed, key=lambda c: (LEVEL_DEPTH[parsed[c]["level"]], c)):
        item = parsed[code]
        if code in not_current:
            result.errors.append(
                {"row": item["row"], "code": code, "message": _not_current(not_current[code])}
            )
            continue
        candidates = parent_candidates(code)
        parent = next((c for c in candidates if c in known), None)
        if candidates and parent is None:
            result.errors.append(
                {
                    "row": item["row"],
                    "code": code,
                    "message": f"ancestor {' or '.join(candidates)} is neither in the "
                    "database nor in the file",
                }
            )
            continue
        item["parent"] = parent
    for code, item in parsed.items():
        if "parent" in item and (problem := _outside_parent(item, parsed, existing_rows)):
            result.errors.append(
                {"row": item["row"], "code": code, "field": "boundary", "message": problem}
            )
    if result.errors:
        return

    created: list[Region] = []
    for code in sorted(parsed, key=lambda c: (LEVEL_DEPTH[parsed[c]["level"]], c)):
        item = parsed[code]
        current = existing_rows.get(code)
        if current is None:
            region = Region(
                code=code,
                name=item["name"],
                level=item["level"],
                parent_code=item["parent"],
                boundary=to_db(item["boundary"]),
            )
            session.add(region)
            created.append(region)
            result.created.append(code)
        elif current.name != item["name"] or _boundary_changed(current, item["boundary"]):
            current.name = item["name"]
            if item["boundary"] is not None:
                current.boundary = to_db(item["boundary"])
            result.updated.append(code)
        else:
            result.unchanged.append(code)
    session.flush()
    _adopt_counties(session, created)


def _outside_parent(
    item: dict[str, Any], parsed: dict[str, dict[str, Any]], existing: dict[str, Region]
) -> str | None:
    """The import's error for a row whose new boundary has nothing in common with its
    parent's (the parent's in the file where it brings one, else the one in service), as
    ``_inside_parent`` refuses on create and change; ``None`` when it has or cannot tell.
    A boundary the import leaves as it is is not judged again."""
    geom, parent = item["boundary"], item["parent"]
    if geom is None or parent is None:
        return None
    current = existing.get(item["code"])
    if current is not None and not _boundary_changed(current, geom):
        return None
    outer = parsed[parent]["boundary"] if parent in parsed else None
    if outer is None and parent in existing:
        outer = from_db(existing[parent].boundary)
    if outer is None or geom.intersects(outer):
        return None
    return (
        f"boundary has nothing in common with the boundary of {parent}: check that "
        "coordinates are [lon, lat] in WGS-84"
    )


def _other_periods(session: Session, codes: set[str]) -> dict[str, list[Region]]:
    """Return the periods of each of ``codes`` that has any, by code."""
    items = sorted(codes)
    out: dict[str, list[Region]] = {}
    for i in range(0, len(items), 500):
        for row in session.scalars(select(Region).where(Region.code.in_(items[i : i + 500]))):
            out.setdefault(row.code, []).append(row)
    return out


def _not_current(periods: list[Region]) -> str:
    """The import's error for a code whose ``periods`` (none valid today) a new region from
    the beginning would overlap: it names the period planned first, else the last ended."""
    today = clock.today()
    planned = [p for p in periods if p.valid_from is not None and p.valid_from > today]
    if planned:
        first = min(planned, key=lambda p: p.valid_from or date.min)
        start = first.valid_from
        return (
            f"not valid today but planned from {start}: the import would create it valid from "
            "the beginning, overlapping that period; start the planned period earlier "
            f"(PATCH /api/v1/regions/{first.code}?on={start}) or leave the row out"
        )
    end = max(p.valid_to or date.max for p in periods)
    return (
        f"not valid today: its period ended on {end}; the import would create it valid from "
        "the beginning, overlapping that period; reissue the code with POST /api/v1/regions "
        f"and a valid_from after {end}, or leave the row out"
    )


def _boundary_changed(region: Region, boundary: Any) -> bool:
    if boundary is None:
        return False
    stored = from_db(region.boundary)
    return stored is None or not stored.equals(boundary)


def _current_rows(session: Session, codes: set[str]) -> list[Region]:
    items = sorted(codes)
    out: list[Region] = []
    for i in range(0, len(items), 500):
        out.extend(
            session.scalars(
                select(Region).where(Region.code.in_(items[i : i + 500]), valid_on(clock.today()))
            )
        )
    return out
