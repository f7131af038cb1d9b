"""Grid versions: import with a validation report, activation, and reading grids back."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

import shapely
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from .. import clock
from ..codes import InvalidCode, ancestor_prefix_codes, normalize_code, subtree_prefix
from ..errors import Conflict, NotFound, Unprocessable
from ..geo.shapes import to_db
from ..geo.validation import validate_grid_features
from ..jsonio import dumps_bytes
from ..models import Grid, GridVersion, IndexGeneration, Region
from ..models.base import utcnow
from ..scope import Scope
from .regions import valid_on

MAX_FEATURES = 250_000


def import_grid_version(
    session: Session,
    collection: Any,
    *,
    region_code: str | None = None,
    label: str | None = None,
    source: str | None = None,
    tolerance_m2: float = 1.0,
    scope: Scope,
) -> GridVersion:
    """Store a FeatureCollection as a draft version of a region's grid set, with its report.

    The region defaults to the deepest existing region that contains every grid's community.
    Features that cannot be read at all, whose geometry is empty (after repair) or whose
    community is not in the tree are left out and reported; so is every community of the region the file leaves without a grid.
    The version then has errors and can only be activated with force.
    Raises Unprocessable for input that is not a FeatureCollection of grids or when no region
    covers the grids.
    """
    if (
        not isinstance(collection, dict)
        or collection.get("type") != "FeatureCollection"
        or not isinstance(collection.get("features"), list)
    ):
        raise Unprocessable(
            "Expected a GeoJSON FeatureCollection.",
            errors={"json": {"type": ["must be 'FeatureCollection' with a 'features' list"]}},
        )
    features = collection["features"]
    if not features:
        raise Unprocessable(
            "The FeatureCollection has no features.",
            errors={"json": {"features": ["must not be empty"]}},
        )
    if len(features) > MAX_FEATURES:
        raise Unprocessable(
            f"At most {MAX_FEATURES} grids per version.",
            errors={"json": {"features": ["too many features"]}},
        )
    communities = _community_codes(features)
    boundaries: dict[str, Any] = {}
    if communities:
        for code, wkb in session.execute(
            select(Region.code, func.ST_AsBinary(Region.boundary)).where(
                Region.code.in_(sorted(communities)),
                Region.level == "village",
                valid_on(clock.today()),
                scope.region_condition(Region.code),
            )
        ):
            boundaries[code] = None if wkb is None else shapely.from_wkb(bytes(wkb))
    # A grid of a community missing from the tree is reported (unknown_community) and left
    # out: it neither widens the derived region nor can it ever be put in service. So is one
    # of a community outside the caller's scope, alike: the answer told which of another
    # area's community codes exist (a region out of reach, or "outside region" with one).
    region = _version_region(session, region_code, set(boundaries), communities, scope)
    prefix = subtree_prefix(region)
    # Activation takes every grid of the region out of service: a community of it that the
    # file leaves without grids would be left without any.
    required: dict[str, str | None] = {}
    for code, name, wkb in session.execute(
        select(Region.code, Region.name, func.ST_AsBinary(Region.boundary)).where(
            Region.code.startswith(prefix),
            Region.level == "village",
            valid_on(clock.today()),
        )
    ):
        required[code] = name
        if code not in boundaries:
            boundaries[code] = None if wkb is None else shapely.from_wkb(bytes(wkb))
    report = validate_grid_features(
        features, boundaries, tolerance_m2=tolerance_m2, required=required
    )
    outside = sorted(
        {
            g.code
            for g in report.grids
            if g.community_code in boundaries and not g.community_code.startswith(prefix)
        }
    )
    if outside:
        raise Unprocessable(
            f"Grids outside region {region}.",
            errors={
                "json": {
                    "region": [f"grid {c} is not in the subtree of {region}" for c in outside[:20]]
                }
            },
        )
    version = GridVersion(
        region_code=region,
        status="draft",
        label=label,
        source=source,
        grid_count=len(report.grids),
        error_count=report.error_count,
        warning_count=report.warning_count,
        report=report.as_dict(),
        forced=False,
    )
    session.add(version)
    session.flush()
    seen: set[str] = set()
    rows = []
    for g in report.grids:
        if g.code in seen:  # duplicates are reported; the first copy is kept, or none
            continue
        seen.add(g.code)  # the first copy, also when it is left out below (as validated)
        if g.community_code not in boundaries:
            continue
        if g.geometry.is_empty:
            # Nothing left of it (a ring of too few points, a line repaired away): reported
            # as empty_geometry and, like an unreadable feature, not a grid. SQLite cannot
            # store it, and routing has no place for it.
            continue
        rows.append(
            {
                "version_id": version.id,
                "code": g.code,
                "name": g.name,  # at most 200 characters (longer: a feature error)
                "type": g.type,
                "community_code": g.community_code,
                "county_code": g.community_code[:6],
                "area_m2": g.area_m2,
                "in_service": False,
                "geom": to_db(g.geometry),
            }
        )
    version.grid_count = len(rows)
    for i in range(0, len(rows), 1000):
        session.execute(insert(Grid), rows[i : i + 1000])
    session.flush()
    return version


def _community_codes(features: list[Any]) -> set[str]:
    out = set()
    for f in features:
        props = (f or {}).get("properties") if isinstance(f, dict) else None
        code = normalize_code((props or {}).get("code"))
        if isinstance(code, str) and len(code) == 15 and code.isascii() and code.isdigit():
            out.add(code[:12])
    return out


def _version_region(
    session: Session,
    region_code: str | None,
    known: set[str],
    communities: set[str],
    scope: Scope,
) -> str:
    # A region outside the caller's scope is treated exactly like a missing one.
    if region_code:
        exists = scope.covers_region(region_code) and session.scalar(
            select(func.count())
            .select_from(Region)
            .where(Region.code == region_code, valid_on(clock.today()))
        )
        if not exists:
            raise Unprocessable(
                "Unknown region.",
                errors={"json": {"region": [f"no region with code {region_code}"]}},
            )
        try:
            subtree_prefix(region_code)
        except InvalidCode as exc:
            raise Unprocessable("Invalid region.", errors={"json": {"region": [str(exc)]}})
        return region_code
    if not communities:
        raise Unprocessable(
            "No feature has a well-formed grid code, so the version's region cannot be derived.",
            errors={"json": {"features": ["no feature with a 15-digit code"]}},
        )
    if not known:
        raise Unprocessable(
            "No grid belongs to a community of the administrative tree, so the version's "
            "region cannot be derived: import the regions first (gridapi regions import).",
            errors={
                "json": {
                    "features": [
                        f"community {c} is not in the tree" for c in sorted(communities)[:20]
                    ]
                }
            },
        )
    first = sorted(known)[0]
    candidates = [first, *ancestor_prefix_codes(first)]  # deepest first
    common = [c for c in candidates if all(x.startswith(subtree_prefix(c)) for x in known)]
    existing = set(
        session.scalars(select(Region.code).where(Region.code.in_(common), valid_on(clock.today())))
    )
    for code in common:
        if code in existing and scope.covers_region(code):
            return code
    raise Unprocessable(
        "No region in the tree contains these grids: import the regions first "
        "(gridapi regions import).",
        errors={"json": {"features": [f"none of {', '.join(common)} exists"]}},
    )


def get_version(session: Session, version_id: int, *, scope: Scope) -> GridVersion:
    """Return a version of a region inside ``scope``. Raises NotFound."""
    version = session.scalars(
        select(GridVersion).where(
            GridVersion.id == version_id, scope.region_condition(GridVersion.region_code)
        )
    ).first()
    if version is None:
        raise NotFound("The grid version does not exist or is outside your scope.")
    return version


def check_version_seen(session: Session, version_id: int, *, scope: Scope) -> None:
    """Raise NotFound unless version ``version_id`` exists and ``scope`` sees its region or
    one of its grids (a township reads its grids of the county's version; a worker those of
    its own grids): a version with nothing in scope answers like one that does not exist."""
    grid_seen = (
        select(Grid.id)
        .where(
            Grid.version_id == GridVersion.id,
            scope.grid_condition(Grid.code, Grid.community_code),
        )
        .exists()
    )
    seen = session.scalar(
        select(GridVersion.id).where(
            GridVersion.id == version_id,
            or_(scope.region_condition(GridVersion.region_code), grid_seen),
        )
    )
    if seen is None:
        raise NotFound("The grid version does not exist or is outside your scope.")


def list_versions(
    session: Session,
    *,
    region: str | None = None,
    status: str | None = None,
    limit: int = 100,
    after: int | None = None,
    scope: Scope,
) -> list[GridVersion]:
    """Return versions inside ``scope``, newest first, optionally of a subtree and status."""
    stmt = select(GridVersion).where(scope.region_condition(GridVersion.region_code))
    if region:
        stmt = stmt.where(GridVersion.region_code.startswith(subtree_prefix(region)))
    if status:
        stmt = stmt.where(GridVersion.status == status)
    if after is not None:
        stmt = stmt.where(GridVersion.id < after)
    return list(session.scalars(stmt.order_by(GridVersion.id.desc()).limit(limit)))


def activate_version(
    session: Session, version_id: int, *, force: bool = False, scope: Scope
) -> GridVersion:
    """Put a version's grids in service, retiring the versions it replaces.

    A version of region R replaces every active version of R or of a region inside R; an
    active version of an ancestor of R stays active but its grids inside R leave service.
    So among active versions an inner region's is always the later one, and each community
    is served by the active version of the deepest region that holds it.

    Activating an older version again rolls back: when the version that replaced it (the
    one whose activation retired it) is still active, that one is undone too, even when it
    is of a larger region. It is retired, and the versions it retired outside R come back,
    unless a version activated since replaced them, so outside R service is what it was
    before it; inside R this version's grids serve. Only when ``scope`` covers that
    version's region: otherwise it stays active outside R (the caller may not change
    routing beyond their scope). Activating an active version again is a
    no-op while all its grids are in service; when a version of a region inside it replaced
    some of them, it is how that one is rolled back (the county's version activated again
    retires the community's). Grids of a community that is not in the tree on the
    activation date are never put in service, even with force.
    Raises NotFound; Conflict when the version has errors and ``force`` is false.
    """
    version = get_version(session, version_id, scope=scope)
    if version.status == "active" and not _replaced_in_part(session, version):
        return version
    if version.error_count and not force:
        raise Conflict(
            f"Grid version {version_id} has {version.error_count} validation "
            "error(s); fix the file or activate with force=true.",
            errors={
                "report": version.report.get("summary") or {"error_count": version.error_count}
            },
        )
    # Serialises activations: the generation row is locked until this transaction ends.
    session.execute(
        update(IndexGeneration)
        .where(IndexGeneration.name == "grids")
        .values(generation=IndexGeneration.generation + 1, changed_at=utcnow())
    )
    prefix = subtree_prefix(version.region_code)
    now = utcnow()
    changed = prefix
    replacer = _active_replacer(session, version)
    if replacer is not None and not scope.covers_region(replacer.region_code):
        # A version of a region beyond the caller's (the city's over a county centre's
        # county) is not theirs to undo: undoing it retired it everywhere and brought back
        # the versions it had replaced in other counties. It stays active, shadowed inside
        # this version's region, as when a new version of the region is activated.
        replacer = None
    if replacer is not None:
        # Usually of a larger region; of a smaller one when a rollback is itself rolled back.
        changed = min(prefix, subtree_prefix(replacer.region_code), key=len)
        _undo(session, replacer, version, now)
    session.execute(
        update(GridVersion)
        .where(
            GridVersion.status == "active",
            GridVersion.id != version.id,
            GridVersion.region_code.startswith(prefix),
        )
        .values(status="retired", retired_at=now, retired_by_id=version.id)
    )
    version.status = "active"
    version.activated_at = now
    version.retired_at = None
    version.retired_by_id = None
    version.forced = bool(force and version.error_count)
    session.flush()
    _serve(session, changed)
    return version


def _active_replacer(session: Session, version: GridVersion) -> GridVersion | None:
    """Return the version whose activation retired ``version``, if it is still active."""
    if version.status != "retired" or version.retired_by_id is None:
        return None
    return session.scalars(
        select(GridVersion).where(
            GridVersion.id == version.retired_by_id, GridVersion.status == "active"
        )
    ).first()


def _undo(session: Session, replacer: GridVersion, version: GridVersion, now: datetime) -> None:
    """Retire ``replacer`` and bring back the versions it retired outside ``version``'s
    region that no version activated since has replaced."""
    replacer.status = "retired"
    replacer.retired_at = now
    replacer.retired_by_id = version.id
    outer = subtree_prefix(replacer.region_code)
    inner = subtree_prefix(version.region_code)
    # Active versions inside the replacer's region came after it: what they hold stays.
    later = [
        subtree_prefix(code)
        for code in session.scalars(
            select(GridVersion.region_code).where(
                GridVersion.status == "active",
                GridVersion.id.not_in((replacer.id, version.id)),
                GridVersion.region_code.startswith(outer),
            )
        )
    ]
    later = [p for p in later if not p.startswith(inner)]  # this activation retires those
    for retired in session.scalars(
        select(GridVersion)
        .where(
            GridVersion.retired_by_id == replacer.id,
            GridVersion.status == "retired",
            GridVersion.id != version.id,
        )
        .order_by(GridVersion.id)
    ):
        own = subtree_prefix(retired.region_code)
        if own.startswith(inner) or any(own.startswith(p) for p in later):
            continue
        retired.status = "active"
        retired.retired_at = None
        retired.retired_by_id = None
    session.flush()


def _serve(session: Session, prefix: str) -> None:
    """Put in service, under ``prefix``, the grids of the active version of the deepest region
    holding each community (nested active versions: the inner one is the later)."""
    session.execute(
        update(Grid)
        .where(Grid.in_service.is_(True), Grid.community_code.startswith(prefix))
        .values(in_service=False)
    )
    covering: tuple[int, int] | None = None  # (depth, id) of the deepest holding all of it
    inside: list[tuple[str, int]] = []
    for vid, code in session.execute(
        select(GridVersion.id, GridVersion.region_code).where(GridVersion.status == "active")
    ):
        own = subtree_prefix(code)
        if prefix.startswith(own):
            if covering is None or len(own) > covering[0]:
                covering = (len(own), vid)
        elif own.startswith(prefix):
            inside.append((own, vid))
    # Shallow first: a deeper version then takes its region back from a shallower one.
    layers = [(prefix, covering[1])] if covering else []
    layers += sorted(inside, key=lambda item: len(item[0]))
    for n, (under, vid) in enumerate(layers):
        if n:  # take back what a shallower layer put in service
            session.execute(
                update(Grid)
                .where(Grid.in_service.is_(True), Grid.community_code.startswith(under))
                .values(in_service=False)
            )
        session.execute(
            update(Grid)
            .where(
                Grid.version_id == vid,
                Grid.community_code.startswith(under),
                _in_the_tree(Grid.community_code),
            )
            .values(in_service=True)
        )


def _replaced_in_part(session: Session, version: GridVersion) -> bool:
    """Return whether an active version's grids are partly out of service (a version of a
    region inside its own replaced them)."""
    return (
        session.scalar(
            select(Grid.code)
            .where(
                Grid.version_id == version.id,
                Grid.in_service.is_(False),
                _in_the_tree(Grid.community_code),
            )
            .limit(1)
        )
        is not None
    )


def _in_the_tree(community_code):  # type: ignore[no-untyped-def]
    """Return the SQL condition 'a community of the tree today'.

    Only such grids go into service: routing a case to a community that does not exist sends
    it nowhere (versions imported before this rule may hold grids of unknown communities).
    """
    return community_code.in_(
        select(Region.code).where(Region.level == "village", valid_on(clock.today()))
    )


def grids_query(
    *,
    region: str | None = None,
    community: str | None = None,
    version_id: int | None = None,
    grid_type: str | None = None,
    q: str | None = None,
    scope: Scope,
):  # type: ignore[no-untyped-def]
    """Return a select of grids inside ``scope``: in service, or of one version."""
    stmt = select(Grid).where(scope.grid_condition(Grid.code, Grid.community_code))
    # ``version=0`` names a version (none has that id), not "the grids in service".
    stmt = (
        stmt.where(Grid.version_id == version_id)
        if version_id is not None
        else stmt.where(Grid.in_service.is_(True))
    )
    if region:
        stmt = stmt.where(Grid.community_code.startswith(subtree_prefix(region)))
    if community:
        stmt = stmt.where(Grid.community_code == community)
    if grid_type:
        stmt = stmt.where(Grid.type == grid_type)
    if q:
        stmt = stmt.where(Grid.name.contains(q, autoescape=True))
    return stmt


def list_grids(
    session: Session, *, after: str | None = None, limit: int = 100, **filters: Any
) -> list[Grid]:
    """Return grids ordered by code after the cursor ``after``."""
    stmt = grids_query(**filters)
    if after:
        stmt = stmt.where(Grid.code > after)
    return list(session.scalars(stmt.order_by(Grid.code).limit(limit)))


def get_grid(session: Session, code: str, version_id: int | None = None, *, scope: Scope) -> Grid:
    """Return the grid in service with ``code`` (or of a version). Raises NotFound."""
    grid = session.scalars(
        grids_query(version_id=version_id, scope=scope).where(Grid.code == code)
    ).first()
    if grid is None:
        raise NotFound("The grid does not exist or is outside your scope.")
    return grid


def iter_geojson(session: Session, chunk: int = 500, **filters: Any) -> Iterator[bytes]:
    """Yield a GeoJSON FeatureCollection of grids in pieces, so memory stays flat."""
    stmt = (
        grids_query(**filters)
        .with_only_columns(
            Grid.code,
            Grid.name,
            Grid.type,
            Grid.community_code,
            Grid.version_id,
            func.ST_AsBinary(Grid.geom),
        )
        .order_by(Grid.code)
    )
    yield b'{"type":"FeatureCollection","features":['
    first = True
    result = session.execute(stmt.execution_options(yield_per=chunk))
    for part in result.partitions(chunk):
        geoms = shapely.to_geojson(shapely.from_wkb([bytes(r[-1]) for r in part]))
        pieces = []
        for row, geom in zip(part, geoms, strict=True):
            props = dumps_bytes(
                {
                    "code": row[0],
                    "name": row[1],
                    "type": row[2],
                    "community_code": row[3],
                    "version_id": row[4],
                }
            )
            pieces.append(
                b'{"type":"Feature","properties":' + props + b',"geometry":' + geom.encode() + b"}"
            )
        yield (b"" if first else b",") + b",".join(pieces)
        first = False
    yield b"]}"
