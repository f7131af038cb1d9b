"""The calendar edits the worker finishes.

Other processes keep the working calendar GRIDAPI_CALENDAR_CACHE_SECONDS: a case reported or
a stage started there just after an edit got a deadline counted on the old calendar, and
nobody counted it again. Each edit that changes a day now writes a row here; the worker,
once the window has passed, counts again the deadlines set in it and marks the row done.

Revision ID: 0052
Revises: 0051
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0052"
down_revision = "0051"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calendar_edits",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("edited_at", UTCDateTime(), nullable=False),
        sa.Column("recount_from", UTCDateTime(), nullable=False),
        sa.Column("recount_until", UTCDateTime(), nullable=False),
        sa.Column("recounted_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calendar_edits")),
    )


def downgrade() -> None:
    op.drop_table("calendar_edits")
