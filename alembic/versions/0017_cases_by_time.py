"""The newest cases first, from an index: cases by (reported_at, id).

A case list without a region filter (an unrestricted admin, a city centre, a township office
opening its list) is ordered by ``reported_at DESC, id DESC``. No index gave that order
across regions, so the database read every case (or every open case) and sorted them: at
1 M cases ≈ 0.3 s on PostgreSQL and seconds on SQLite for an admin, and ≈ 0.2 s for the
township offices whose area the planner misjudged (a full scan of the open cases instead
of the few thousand of the township). With this index the first page is the first rows of
the index, walked backwards, and keyset pages continue from the cursor (≈ 0.1-2 ms).
One more index entry per new case. See docs/performance.md, "Lists without a region".

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_cases_reported_at", "cases", ["reported_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_cases_reported_at", table_name="cases")
