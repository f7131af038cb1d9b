"""Categories carry a version counter, for If-Match.

Two admins editing one category (its limits, its attribute schema) each read it and sent
their change; the second silently undid the first. Every change now bumps ``version``
(SQLAlchemy's ``version_id_col``), answers carry it as the ETag ``"<code>-<version>"``, and a
PATCH that sends If-Match with a stale one is refused (412). Existing rows start at 1.

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "categories",
        sa.Column("version", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("categories", "version")
