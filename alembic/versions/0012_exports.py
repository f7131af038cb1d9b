"""Exports: the jobs of large exports, written to files by the worker.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("client_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("format", sa.String(length=8), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("unmask", sa.Boolean(), nullable=False),
        sa.Column("purpose", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "user_id IS NOT NULL OR client_id IS NOT NULL", name=op.f("ck_export_jobs_has_owner")
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed')",
            name=op.f("ck_export_jobs_status_known"),
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["api_clients.id"],
            name=op.f("fk_export_jobs_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_export_jobs_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_export_jobs")),
    )
    op.create_index(op.f("ix_export_jobs_client_id"), "export_jobs", ["client_id"])
    op.create_index(op.f("ix_export_jobs_user_id"), "export_jobs", ["user_id"])
    op.create_index("ix_export_jobs_status_id", "export_jobs", ["status", "id"])


def downgrade() -> None:
    op.drop_index("ix_export_jobs_status_id", table_name="export_jobs")
    op.drop_index(op.f("ix_export_jobs_user_id"), table_name="export_jobs")
    op.drop_index(op.f("ix_export_jobs_client_id"), table_name="export_jobs")
    op.drop_table("export_jobs")
