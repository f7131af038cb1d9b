"""Patrols keep the phone's clock error, and move the times the phone sends by it.

A phone whose clock ran more than five minutes ahead could not start a patrol (``started_at``
"lies in the future"), and a phone whose clock was set back put its points outside the
patrol's time, where they were rejected: the offline walk was lost either way. A patrol now
records how far the phone's clock was off when it started (``clock_offset_s``, from the
start's ``Date`` header), and its start, end, points and check-ins are moved by that figure to
the server's clock. Patrols started before keep 0: their times are taken as written, as they
were.

Revision ID: 0059
Revises: 0058
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0059"
down_revision = "0058"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "patrols", sa.Column("clock_offset_s", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place, keeping SpatiaLite's
    # registration of the track's geometry (0024 does the same).
    op.drop_column("patrols", "clock_offset_s")
