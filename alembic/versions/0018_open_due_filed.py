"""The open cases' handling-deadline index holds only cases that have one.

``ix_cases_open_due`` (handle_due_at, over open cases) let PostgreSQL read every open case
of every county in deadline order, and the planner took that path for some township
offices' work-queue counts: the deadlines follow the table's physical order almost exactly
(correlation ≈ 1.0), so the planner priced the scan as sequential, while it fetched and
filtered ≈ 100,000 open cases to count ≈ 1,500 (p99 ≈ 175-250 ms at 1 M cases, against
2-15 ms through the township's own indexes). Built over ``handle_due_at IS NOT NULL`` as
well, the index serves only queries that compare the deadline (the overdue job's
``handle_due_at < now`` implies it), and no longer stands for "every open case".
See docs/performance.md, "Lists without a region".

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

OPEN = "status NOT IN ('closed', 'rejected', 'cancelled')"


def _create(where: str) -> None:
    op.create_index(
        "ix_cases_open_due",
        "cases",
        ["handle_due_at"],
        unique=False,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    op.drop_index("ix_cases_open_due", table_name="cases")
    _create(f"{OPEN} AND handle_due_at IS NOT NULL")


def downgrade() -> None:
    op.drop_index("ix_cases_open_due", table_name="cases")
    _create(OPEN)
