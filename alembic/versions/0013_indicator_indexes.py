"""Indicator indexes: the cases' indicator columns by county and filing time, covering.

The indicators and the bulletin read, for a county (or a city's or province's range of
county codes), every case filed before the period's end and still active in it. The
cases of a county are spread over the whole table (they arrive mixed with every other
county's), so reading them from the table touches nearly every page; this index holds
every column those queries read (PostgreSQL INCLUDE), so they are answered by an
index-only scan of the county's range. On SQLite it is a plain (county_code, filed_at)
index. See docs/performance.md, "Indicators (issue 8)".

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

# Frozen copy of the columns of gridapi.models.cases.INDICATOR_COLUMNS.
INCLUDE = [
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


def upgrade() -> None:
    op.create_index(
        "ix_cases_indicators",
        "cases",
        ["county_code", "filed_at"],
        postgresql_include=INCLUDE,
        postgresql_where=sa.text("filed_at IS NOT NULL"),
        sqlite_where=sa.text("filed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_cases_indicators", table_name="cases")
