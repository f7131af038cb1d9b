"""Working calendar days (holidays and 调休 workdays), seeded from holidays_cn.json.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEED = Path(__file__).resolve().parents[2] / "gridapi" / "data" / "holidays_cn.json"


def seed_rows() -> list[dict]:
    """Rows of the calendar seed (the file as it was when this revision was applied)."""
    data = json.loads(SEED.read_text(encoding="utf-8"))
    now = datetime.now(UTC)
    rows = []
    for year in data["years"].values():
        for kind, key in (("holiday", "holidays"), ("workday", "workdays")):
            for text in year.get(key, []):
                rows.append(
                    {"day": date.fromisoformat(text), "kind": kind, "name": "", "updated_at": now}
                )
    return rows


def upgrade() -> None:
    days = op.create_table(
        "calendar_days",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint("kind IN ('holiday', 'workday')", name=op.f("ck_calendar_days_kind")),
        sa.PrimaryKeyConstraint("day", name=op.f("pk_calendar_days")),
    )
    op.bulk_insert(days, seed_rows())
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    current = bind.execute(sa.select(roles.c.permissions).where(roles.c.name == "admin")).scalar()
    if current is not None and "calendar:write" not in current:
        bind.execute(
            roles.update()
            .where(roles.c.name == "admin")
            .values(permissions=sorted([*current, "calendar:write"]))
        )


def downgrade() -> None:
    op.drop_table("calendar_days")
