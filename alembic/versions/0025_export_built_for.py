"""An export job remembers the area its file was written for.

A finished file of unmasked residents stayed downloadable for its whole retention after its
requester lost ``persons:unmask``, or was moved to another area: the download checked only
that the job was theirs. The file is now served only while the requester's area is the one
it was written for (``built_for``, a digest of the scope) and, for unmasked residents, while
they hold ``persons:unmask``. Files written before this have no ``built_for``: queue them
again.

Revision ID: 0025
Revises: 0024
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("export_jobs", sa.Column("built_for", sa.String(length=32), nullable=True))


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("export_jobs", "built_for")
