"""Tasks: a task's notice of a kind is queued once.

``uq_notifications_task_id_kind``: what the unique (case_id, kind) is for a case's
notifications, for a task's (``task_id`` set; the rows of cases have it null, and the
constraint leaves them alone). The overdue job queues a task's overdue notices with ON
CONFLICT DO NOTHING on it, so a second run, or a second worker, queues nothing. The task
notices queued so far (``task_assigned:<task>:<version>:<user>``) are unique already.

Revision ID: 0042_tasks
Revises: 0041
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0042_tasks"
down_revision = "0041"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "uq_notifications_task_id_kind",
        "notifications",
        ["task_id", "kind"],
        unique=True,
        sqlite_where=sa.text("task_id IS NOT NULL"),
        postgresql_where=sa.text("task_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_notifications_task_id_kind", table_name="notifications")
