"""A category can ask for a photo with every feedback.

DOMAIN §4: a handler reports back "with evidence". Feedback took an empty ``evidence`` list
on every category; for some (rubbish cleared, a sign taken down) a township verifies only
against the photo of the result. ``categories.feedback_evidence`` (default false: the
categories kept at the upgrade behave as before) makes feedback without a photo of the case
a 422 (gridapi.services.cases).

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "categories",
        sa.Column("feedback_evidence", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("categories", "feedback_evidence")
