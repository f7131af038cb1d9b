"""A house is registered once: one per address at its place (community and grid).

Nothing kept two requests from registering one house twice: ``POST /api/v1/houses`` beside
an import, or two creates at once. Two partial unique indexes now hold the rule the import
matched houses by (the address at the same community and grid; NULLs are distinct in a
unique index, so houses without a grid have their own).

Houses registered twice before are merged first, as the import would have registered them
once: the lowest id is kept (its use and location stay), and the households, residents,
campaign task items and patrol check-ins of the others are moved to it; the others are
deleted. Households and residents moved get a new version (their ``house_id`` changed).
Each merge leaves an audit row, ``house.merge`` on the kept house, naming the ids merged
into it (ids only), so the trail says where a deleted house went.

Revision ID: 0039
Revises: 0038
Create Date: 2026-12-01
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from alembic import op

revision = "0039"
down_revision = "0038"
branch_labels = None
depends_on = None

_AUDIT = sa.table(
    "audit_log",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor_type", sa.String),
    sa.column("actor_id", sa.String),
    sa.column("actor_name", sa.String),
    sa.column("action", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_id", sa.String),
    sa.column("region_code", sa.String),
    sa.column("summary", sa.JSON),
)


def _merge_duplicates() -> None:
    conn = op.get_bind()
    # Only the houses of addresses registered more than once (one pass with a window, both
    # engines): the whole table in Python would be millions of rows.
    rows = conn.execute(
        sa.text(
            "SELECT id, region_code, grid, address FROM ("
            " SELECT id, region_code, coalesce(grid_code, '') AS grid, address,"
            " count(*) OVER (PARTITION BY region_code, coalesce(grid_code, ''), address) AS n"
            " FROM houses) AS h "
            "WHERE n > 1 ORDER BY region_code, grid, address, id"
        )
    ).all()
    keeper: dict[tuple[str, str, str], int] = {}
    merged: dict[int, list[int]] = {}
    regions: dict[int, str] = {}
    for row in rows:
        key = (row.region_code, row.grid, row.address)
        if key not in keeper:
            keeper[key] = row.id
            regions[row.id] = row.region_code
        else:
            merged.setdefault(keeper[key], []).append(row.id)
    now = datetime.now(UTC)
    for kept, others in merged.items():
        params = {"kept": kept, "others": others}
        expanding = sa.bindparam("others", expanding=True)
        for table, versioned in (
            ("households", True),
            ("persons", True),
            ("task_items", False),
            ("patrol_checkins", False),
        ):
            bump = ", version = version + 1" if versioned else ""
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET house_id = :kept{bump} WHERE house_id IN :others"
                ).bindparams(expanding),
                params,
            )
        conn.execute(
            sa.text("DELETE FROM houses WHERE id IN :others").bindparams(expanding), params
        )
        op.bulk_insert(
            _AUDIT,
            [
                {
                    "at": now,
                    "actor_type": "system",
                    "actor_id": "migration:0039",
                    "actor_name": "migration 0039",
                    "action": "house.merge",
                    "object_type": "house",
                    "object_id": str(kept),
                    "region_code": regions[kept],
                    "summary": {
                        "merged": others,
                        "reason": "registered again at the same address and place",
                    },
                }
            ],
        )


def upgrade() -> None:
    _merge_duplicates()
    op.create_index(
        "ix_houses_one_per_address_in_grid",
        "houses",
        ["county_code", "region_code", "grid_code", "address"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NOT NULL"),
        sqlite_where=sa.text("grid_code IS NOT NULL"),
    )
    op.create_index(
        "ix_houses_one_per_address_in_region",
        "houses",
        ["county_code", "region_code", "address"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NULL"),
        sqlite_where=sa.text("grid_code IS NULL"),
    )


def downgrade() -> None:
    # The merged houses are not split again: they were one house.
    op.drop_index("ix_houses_one_per_address_in_region", table_name="houses")
    op.drop_index("ix_houses_one_per_address_in_grid", table_name="houses")
