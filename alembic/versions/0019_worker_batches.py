"""The worker finds its cases through two small indexes instead of reading every case.

The overdue job asks for open cases not yet overdue whose current deadline has passed, in
id order, 200 at a time; supervision and escalation ask for overdue open cases. With no
index for either set, PostgreSQL walked the primary key through every case of every year
to find the few that matched: 600-780 ms a run at 1 M cases for the overdue job, 358 ms for
supervision, every minute. Two partial indexes on ``id`` hold just those sets (the open
cases not overdue, the open cases overdue: a few thousand rows each); the batches read them
in id order (6 ms and 1.5 ms). ``ix_cases_open_due`` (0005, narrowed in 0018) served only
the overdue job, which now uses the first of them: it is dropped. See docs/performance.md.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

# Frozen copies of gridapi.models.cases._DEADLINE_STATUSES and _SUPERVISED_STATUSES.
DEADLINE = "'reported', 'accepted', 'filed', 'dispatched', 'handling', 'feedback', 'verified'"
SUPERVISED = "'accepted', 'filed', 'dispatched', 'handling', 'feedback', 'verified'"
OPEN = "status NOT IN ('closed', 'rejected', 'cancelled')"


def upgrade() -> None:
    op.drop_index("ix_cases_open_due", table_name="cases")
    op.create_index(
        "ix_cases_open_not_overdue",
        "cases",
        ["id"],
        unique=False,
        postgresql_where=sa.text(f"overdue IS false AND status IN ({DEADLINE})"),
        sqlite_where=sa.text(f"overdue = 0 AND status IN ({DEADLINE})"),
    )
    op.create_index(
        "ix_cases_open_overdue",
        "cases",
        ["id"],
        unique=False,
        postgresql_where=sa.text(f"overdue IS true AND status IN ({SUPERVISED})"),
        sqlite_where=sa.text(f"overdue = 1 AND status IN ({SUPERVISED})"),
    )


def downgrade() -> None:
    op.drop_index("ix_cases_open_overdue", table_name="cases")
    op.drop_index("ix_cases_open_not_overdue", table_name="cases")
    where = f"{OPEN} AND handle_due_at IS NOT NULL"
    op.create_index(
        "ix_cases_open_due",
        "cases",
        ["handle_due_at"],
        unique=False,
        postgresql_where=sa.text(where),
        sqlite_where=sa.text(where),
    )
