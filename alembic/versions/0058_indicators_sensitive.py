"""The covering indicator index carries ``sensitive``: indicators leave out sensitive cases.

The indicators and the bulletin count a sensitive case (special groups, petitions, family
disputes) only for an office over the unit holding it (``services.indicators.counted``): they
now read ``cases.sensitive``, which ``ix_cases_indicators`` (0013) did not include, so every
such query would have fetched each county's cases from the table again. The index is built
again with the column (PostgreSQL INCLUDE), and the queries stay index-only scans. On SQLite
the index is the plain (county_code, filed_at) one and stays as it is.

Revision ID: 0058
Revises: 0057
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0058"
down_revision = "0057"
branch_labels = None
depends_on = None

# Frozen copy of the columns of 0013's index.
BEFORE = [
    "closed_at",
    "handle_due_at",
    "feedback_at",
    "dispatched_at",
    "status",
    "rework_count",
    "extension_count",
    "satisfaction",
    "handling_hours",
    "category_code",
    "source",
    "region_code",
    "township_code",
    "responsible_region_code",
    "department_id",
    "id",
]
# Frozen copy of gridapi.models.cases.INDICATOR_COLUMNS as of this revision.
AFTER = [*BEFORE, "sensitive"]


def _rebuild(include: list[str]) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.drop_index("ix_cases_indicators", table_name="cases")
    op.create_index(
        "ix_cases_indicators",
        "cases",
        ["county_code", "filed_at"],
        postgresql_include=include,
        postgresql_where=sa.text("filed_at IS NOT NULL"),
    )


def upgrade() -> None:
    _rebuild(AFTER)


def downgrade() -> None:
    _rebuild(BEFORE)
