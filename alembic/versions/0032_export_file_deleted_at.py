"""An export job records when its file was deleted.

The worker deleted the file of every failed job at every round (every 2 s), the same files
again and again for as long as the jobs were kept; and it deleted an expired job's file
inside the transaction that deleted the job, so a transaction that then failed left the job
listed as done with its file gone. The worker now records the deletion
(``file_deleted_at``): a failed job's file is deleted once, then marked; an expired job is
marked first (from then on it is not served), its file deleted, then its row
(gridapi.services.exports). Failed jobs kept at the upgrade have no mark: their files are
deleted, once more, at the worker's next round.

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("export_jobs", sa.Column("file_deleted_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("export_jobs", "file_deleted_at")
