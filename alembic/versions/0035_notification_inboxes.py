"""Indexes for the notification inboxes (GET /api/v1/me/notifications).

Notifications were queued and never read: the inbox lists a person's own and their unit's,
after an id, by account and by region (gridapi.services.notifications).

Revision ID: 0035
Revises: 0034
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0035"
down_revision = "0034"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_notifications_user_id_id", "notifications", ["user_id", "id"])
    op.create_index("ix_notifications_region_code_id", "notifications", ["region_code", "id"])


def downgrade() -> None:
    op.drop_index("ix_notifications_region_code_id", table_name="notifications")
    op.drop_index("ix_notifications_user_id_id", table_name="notifications")
