"""Loading the deterministic demo county through the same services as real imports."""

from __future__ import annotations

from shapely.geometry import mapping
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..demo import build_demo_county
from ..errors import Unprocessable
from ..models import GridVersion
from ..scope import Scope
from .grids import activate_version, import_grid_version
from .regions import import_regions

EVERYTHING = Scope.everything()


def load_demo_county(session: Session, *, seed: int = 2024, tolerance_m2: float = 1.0) -> str:
    """Import the demo county's regions and grids and activate them; return a summary line.

    Loading the same seed again changes nothing.
    """
    label = f"demo county (seed {seed})"
    county = build_demo_county(seed=seed)
    rows = [
        {
            "code": r["code"],
            "name": r["name"],
            "level": r["level"],
            "boundary": None if r.get("boundary") is None else mapping(r["boundary"]),
        }
        for r in county.regions
    ]
    result = import_regions(session, rows, scope=EVERYTHING)
    if result.errors:
        raise Unprocessable(f"demo regions failed: {result.errors[:3]}")
    existing = session.scalars(
        select(GridVersion).where(GridVersion.label == label).order_by(GridVersion.id.desc())
    ).first()
    if existing is None:
        version = import_grid_version(
            session,
            county.grids,
            label=label,
            source="demo",
            tolerance_m2=tolerance_m2,
            scope=EVERYTHING,
        )
    else:
        version = existing
    activate_version(session, version.id, scope=EVERYTHING)
    return (
        f"demo county {county.regions[2]['name']} ({county.regions[2]['code']}): "
        f"{len(county.regions)} regions ({len(result.created)} new), grid version "
        f"{version.id} with {version.grid_count} grids, {version.error_count} errors, active"
    )


DEMO_PASSWORD = "Gridapi-Demo-2026"


def load_demo_users(
    session: Session, password: str, phone_key: bytes
) -> list[tuple[str, str, str]]:
    """Create one account of every role with a realistic scope; return (username, role, where).

    Existing accounts are left alone, so loading twice changes nothing.
    """
    from sqlalchemy import select as _select

    from ..models import Department, Grid, Region, User
    from .identity import create_department, create_user

    county = "320508000000"
    township = session.scalars(
        _select(Region.code)
        .where(Region.level == "township", Region.parent_code == county)
        .order_by(Region.code)
    ).first()
    communities = list(
        session.scalars(
            _select(Region.code)
            .where(Region.level == "village", Region.parent_code == township)
            .order_by(Region.code)
        )
    )
    other_township = session.scalars(
        _select(Region.code)
        .where(Region.level == "township", Region.parent_code == county)
        .order_by(Region.code.desc())
    ).first()
    other_community = session.scalars(
        _select(Region.code).where(Region.parent_code == other_township).order_by(Region.code)
    ).first()

    def grids_of(community: str, n: int) -> list[str]:
        return list(
            session.scalars(
                _select(Grid.code)
                .where(Grid.community_code == community, Grid.in_service.is_(True))
                .order_by(Grid.code)
                .limit(n)
            )
        )

    dept = session.scalars(_select(Department).where(Department.code == "demo-fire")).first()
    if dept is None:
        dept = create_department(
            session,
            scope=EVERYTHING,
            code="demo-fire",
            name="姑苏区消防救援大队",
            region_code=county,
        )
    plan = [
        ("admin", "admin", {}),
        ("city", "city_centre", {"scope_region": "320500000000"}),
        ("county", "county_centre", {"scope_region": county}),
        ("township", "township_office", {"scope_region": township}),
        ("officer", "community_officer", {"scope_region": communities[0]}),
        ("chief", "grid_chief", {"grids": grids_of(communities[0], 4)}),
        ("worker", "grid_worker", {"grids": grids_of(communities[0], 1)}),
        ("worker2", "grid_worker", {"grids": grids_of(communities[1], 1)}),
        ("worker3", "grid_worker", {"grids": grids_of(other_community, 1)}),
        ("fire", "department", {"scope_region": county, "department_id": dept.id}),
    ]
    out = []
    for username, role, kwargs in plan:
        exists = session.scalars(_select(User.id).where(User.username == username)).first()
        if exists is None:
            create_user(
                session,
                scope=EVERYTHING,
                actor_rank=None,
                username=username,
                password=password,
                role=role,
                phone_key=phone_key,
                display_name=f"演示{username}",
                **kwargs,
            )
        where = kwargs.get("scope_region") or ",".join(kwargs.get("grids", [])) or "everything"
        out.append((username, role, where))
    return out
