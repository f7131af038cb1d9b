"""Case categories, seeded from gridapi/data/categories_cn.json.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SEED = Path(__file__).resolve().parents[2] / "gridapi" / "data" / "categories_cn.json"


def seed_rows() -> list[dict]:
    """Rows of the category seed (the file as it was when this revision was applied)."""
    data = json.loads(SEED.read_text(encoding="utf-8"))
    now = datetime.now(UTC)
    rows: list[dict] = []
    for order, parent in enumerate(data["categories"]):
        rows.append(_row(parent, None, order * 100, now))
        for sub_order, child in enumerate(parent.get("children", [])):
            rows.append(_row(child, parent["code"], order * 100 + sub_order + 1, now))
    return rows


def _row(item: dict, parent: str | None, order: int, now: datetime) -> dict:
    handle = item.get("handle", [5, "days"])
    return {
        "code": item["code"],
        "name": item["name"],
        "parent_code": parent,
        "accept_limit": 1 if item.get("urgent") else 2,
        "accept_unit": "hours",
        "handle_limit": handle[0],
        "handle_unit": handle[1],
        "verify_limit": 4 if item.get("urgent") else 1,
        "verify_unit": "hours" if item.get("urgent") else "days",
        "default_handler": item.get("handler", "township"),
        "intake_standard": item.get("intake_standard", ""),
        "closure_standard": item.get("closure_standard", ""),
        "sensitive": bool(item.get("sensitive")),
        "urgent": bool(item.get("urgent")),
        "duplicate_radius_m": float(item.get("duplicate_radius_m", 50)),
        "attributes": item.get("attributes", []),
        "is_active": True,
        "sort_order": order,
        "updated_at": now,
    }


def upgrade() -> None:
    categories = op.create_table(
        "categories",
        sa.Column("code", sa.String(length=4), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("parent_code", sa.String(length=4), nullable=True),
        sa.Column("accept_limit", sa.Integer(), nullable=False),
        sa.Column("accept_unit", sa.String(length=8), nullable=False),
        sa.Column("handle_limit", sa.Integer(), nullable=False),
        sa.Column("handle_unit", sa.String(length=8), nullable=False),
        sa.Column("verify_limit", sa.Integer(), nullable=False),
        sa.Column("verify_unit", sa.String(length=8), nullable=False),
        sa.Column("default_handler", sa.String(length=64), nullable=False),
        sa.Column("intake_standard", sa.Text(), nullable=False),
        sa.Column("closure_standard", sa.Text(), nullable=False),
        sa.Column("sensitive", sa.Boolean(), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("duplicate_radius_m", sa.Float(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("sort_order", sa.Integer(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "accept_unit IN ('hours', 'days') AND handle_unit IN ('hours', 'days') "
            "AND verify_unit IN ('hours', 'days')",
            name=op.f("ck_categories_units"),
        ),
        sa.CheckConstraint(
            "accept_limit > 0 AND handle_limit > 0 AND verify_limit > 0",
            name=op.f("ck_categories_limits"),
        ),
        sa.CheckConstraint("duplicate_radius_m >= 0", name=op.f("ck_categories_radius")),
        sa.CheckConstraint("length(code) IN (2, 4)", name=op.f("ck_categories_code_length")),
        sa.ForeignKeyConstraint(
            ["parent_code"], ["categories.code"], name=op.f("fk_categories_parent_code_categories")
        ),
        sa.PrimaryKeyConstraint("code", name=op.f("pk_categories")),
    )
    op.bulk_insert(categories, seed_rows())
    _grant_admin("categories:write")


def _grant_admin(permission: str) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    current = bind.execute(sa.select(roles.c.permissions).where(roles.c.name == "admin")).scalar()
    if current is not None and permission not in current:
        bind.execute(
            roles.update()
            .where(roles.c.name == "admin")
            .values(permissions=sorted([*current, permission]))
        )


def downgrade() -> None:
    op.drop_table("categories")
