"""Export jobs are leased: a job whose worker stopped is taken up again.

A job was marked running when a worker took it and stayed so for good if that worker was
killed or its machine lost: the requester waited for a file that never came. A running job
now has a lease its worker renews while it writes (``lease_until``); past it, another worker
takes the job up again, counting ``attempts`` (gridapi.services.exports). Jobs running at
the upgrade get no lease: they are taken up again at once (a worker that was still writing
one loses it and discards its file when it next renews).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.add_column(
            sa.Column("lease_until", gridapi.models.base.UTCDateTime(timezone=True), nullable=True)
        )
        batch.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
    op.execute(
        "UPDATE export_jobs SET lease_until = created_at, attempts = 1 WHERE status = 'running'"
    )


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_until")
