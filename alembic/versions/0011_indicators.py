"""Indicators: the working-hours handling time of closed cases; indicators:read for the roles.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# Frozen copy of the permission each stock role gains here (see
# gridapi.security.permissions): a county's own roles and changes are left alone.
GRANTS = {
    name: ["indicators:read"]
    for name in ("community_officer", "township_office", "county_centre", "city_centre", "admin")
}
_BATCH = 1000


def _grant(grants: dict[str, list[str]], revoke: bool = False) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    for name, current in bind.execute(sa.select(roles.c.name, roles.c.permissions)).all():
        extra = set(grants.get(name, []))
        if not extra:
            continue
        new = set(current) - extra if revoke else set(current) | extra
        bind.execute(roles.update().where(roles.c.name == name).values(permissions=sorted(new)))


def _backfill() -> None:
    """Store the handling time of the cases closed before this revision, in batches."""
    from sqlalchemy.orm import Session

    from gridapi.config import Settings
    from gridapi.services.calendar import working_calendar

    ts = gridapi.models.base.UTCDateTime(timezone=True)
    cases = sa.table(
        "cases",
        sa.column("id", sa.Integer),
        sa.column("filed_at", ts),
        sa.column("closed_at", ts),
        sa.column("handling_hours", sa.Float),
    )
    bind = op.get_bind()
    settings = Settings.from_env()
    calendar = working_calendar(Session(bind=bind), settings.working_hours, settings.timezone)
    last = 0
    while True:
        rows = bind.execute(
            sa.select(cases.c.id, cases.c.filed_at, cases.c.closed_at)
            .where(cases.c.closed_at.is_not(None), cases.c.id > last)
            .order_by(cases.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        for case_id, filed_at, closed_at in rows:
            hours = calendar.working_hours_between(filed_at or closed_at, closed_at)
            bind.execute(cases.update().where(cases.c.id == case_id).values(handling_hours=hours))
        last = rows[-1][0]


def upgrade() -> None:
    # A plain ADD COLUMN on both engines: a batch copy would drop the SQLite triggers.
    op.add_column("cases", sa.Column("handling_hours", sa.Float(), nullable=True))
    _backfill()
    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    op.drop_column("cases", "handling_hours")
