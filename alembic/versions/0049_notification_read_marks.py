"""A read mark per account for the notification inbox, kept on the server.

The phone kept its own cursor: a second device, or an office's web console, could not tell
how many notices were unread, and what a worker read on the phone was new again on the
web. ``notification_read_marks`` holds one row per account, the highest notification id it
marked read (``PUT /api/v1/me/notifications/read``). An account without a row has read
nothing (mark 0). The table grows with accounts, as ``users`` and ``refresh_tokens`` do,
and carries no county code (docs/scaling.md).

Revision ID: 0049
Revises: 0048
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0049"
down_revision = "0048"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "notification_read_marks",
        sa.Column("user_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("read_up_to", sa.Integer(), nullable=False),
        sa.CheckConstraint("read_up_to >= 0", name=op.f("ck_notification_read_marks_read_up_to")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notification_read_marks_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_notification_read_marks")),
    )


def downgrade() -> None:
    op.drop_table("notification_read_marks")
