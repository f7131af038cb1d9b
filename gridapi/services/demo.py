"""Loading the deterministic demo county through the same services as real imports."""

from __future__ import annotations

from shapely.geometry import mapping
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..demo import build_demo_county
from ..errors import Unprocessable
from ..models import GridVersion
from .grids import activate_version, import_grid_version
from .regions import import_regions


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
    result = import_regions(session, rows)
    if result.errors:
        raise Unprocessable(f"demo regions failed: {result.errors[:3]}")
    existing = session.scalars(
        select(GridVersion).where(GridVersion.label == label).order_by(GridVersion.id.desc())
    ).first()
    if existing is None:
        version = import_grid_version(
            session, county.grids, label=label, source="demo", tolerance_m2=tolerance_m2
        )
    else:
        version = existing
    activate_version(session, version.id)
    return (
        f"demo county {county.regions[2]['name']} ({county.regions[2]['code']}): "
        f"{len(county.regions)} regions ({len(result.created)} new), grid version "
        f"{version.id} with {version.grid_count} grids, {version.error_count} errors, active"
    )
