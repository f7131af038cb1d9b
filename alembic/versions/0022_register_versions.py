"""Houses, households and residents carry a version counter, for If-Match.

Two grid workers correcting the same household from two phones, or a worker and the
community office, each read it and send their change; without a version the second write
silently undid the first. Every change now bumps ``version`` (SQLAlchemy's
``version_id_col``: an UPDATE names the version it read, and changes nothing when another
transaction replaced it), answers carry it as the ETag ``"<id>-<version>"``, and a PATCH
that sends If-Match with a stale one is refused (412). Existing rows start at 1; adding a
column with a constant default rewrites no table on PostgreSQL 11 and later.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

TABLES = ("houses", "households", "persons")


def upgrade() -> None:
    for table in TABLES:
        op.add_column(
            table, sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False)
        )


def downgrade() -> None:
    for table in TABLES:
        # Not batch mode: SQLite (3.35+) drops a column in place, keeping the table's
        # triggers and SpatiaLite's registration of its geometry.
        op.drop_column(table, "version")
