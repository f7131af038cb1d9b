"""The duplicate search of every report reads an index of the open cases only.

A report looks for open cases of its category in a small box around its point, reported in
the last days (``services.cases.duplicate_search``). ``ix_cases_category_code_lon`` held
every case of every year: at 1 M cases the slice of a category's longitudes holds closed
cases by the hundred, and for one report in seven PostgreSQL instead combined that slice
with every case of the window through ``ix_cases_reported_at`` (a BitmapAnd): median
0.09 ms, p90 0.41 ms, up to 0.7 ms of each report's first statement. The index that replaces
it holds open cases only, with the box's other bounds and the time in its keys, so the
search is decided in the index: median 0.03 ms, p90 0.04 ms over the same 60 reports
(docs/performance.md). Nothing else reads the old index.

Revision ID: 0020
Revises: 0019
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

# A frozen copy of gridapi.models.cases._OPEN_SQL.
OPEN = "status NOT IN ('closed', 'rejected', 'cancelled')"


def upgrade() -> None:
    op.create_index(
        "ix_cases_open_duplicates",
        "cases",
        ["category_code", "lon", "lat", "reported_at"],
        unique=False,
        postgresql_where=sa.text(OPEN),
        sqlite_where=sa.text(OPEN),
    )
    op.drop_index("ix_cases_category_code_lon", table_name="cases")


def downgrade() -> None:
    op.create_index("ix_cases_category_code_lon", "cases", ["category_code", "lon"], unique=False)
    op.drop_index("ix_cases_open_duplicates", table_name="cases")
