"""The duplicates of a case are read through an index of the duplicate links.

Every case GET lists the reports closed as duplicates of the case (``duplicates``), and a
sync page does so for each of its cases: ``WHERE duplicate_of_id = :id`` had no index, so
PostgreSQL read the whole table for every case answered (at 1 M cases, every GET). The index
holds only the few cases that are duplicates (partial), so a report, which is none, adds no
entry to it.

Revision ID: 0023
Revises: 0022
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

LINKED = "duplicate_of_id IS NOT NULL"


def upgrade() -> None:
    op.create_index(
        "ix_cases_duplicate_of",
        "cases",
        ["duplicate_of_id"],
        unique=False,
        postgresql_where=sa.text(LINKED),
        sqlite_where=sa.text(LINKED),
    )


def downgrade() -> None:
    op.drop_index("ix_cases_duplicate_of", table_name="cases")
