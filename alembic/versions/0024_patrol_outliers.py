"""Patrols count the fixes left out of their line (outliers).

A phone's fix now and then lands kilometres away; one point in New York added 23,767 km to a
township walk, and the monthly figures the township is judged by with it. The line, length
and grids crossed now leave out the fixes no walk can reach (``gridapi.services.patrols.
plausible``), and ``outlier_count`` says how many. Patrols recorded before keep their
figures until their next batch of points.

Revision ID: 0024
Revises: 0023
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "patrols", sa.Column("outlier_count", sa.Integer(), server_default="0", nullable=False)
    )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place, keeping SpatiaLite's
    # registration of the track's geometry (a copy of the table failed its foreign keys).
    op.drop_column("patrols", "outlier_count")
