"""Tasks and campaigns: campaigns, tasks, task items; the task permissions of the stock roles.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


# Frozen copy of the task permissions each stock role gains here (see
# gridapi.security.permissions): a county's own roles and changes are left alone.
_WORKER = ["tasks:read", "tasks:complete"]
_OFFICE = [*_WORKER, "tasks:write"]
GRANTS = {
    "grid_worker": _WORKER,
    "grid_chief": _WORKER,
    "community_officer": _OFFICE,
    "township_office": _OFFICE,
    "county_centre": _OFFICE,
    "city_centre": _OFFICE,
    "admin": _OFFICE,
}


def _grant(grants: dict[str, list[str]], revoke: bool = False) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    for name, current in bind.execute(sa.select(roles.c.name, roles.c.permissions)).all():
        extra = set(grants.get(name, []))
        if not extra:
            continue
        new = set(current) - extra if revoke else set(current) | extra
        bind.execute(roles.update().where(roles.c.name == name).values(permissions=sorted(new)))


_OPEN = "status IN ('pending', 'accepted')"


def upgrade() -> None:
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category_code", sa.String(length=4), nullable=True),
        sa.Column("due_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("result_schema", sa.JSON(), nullable=False),
        sa.Column("item_scope", sa.String(length=16), nullable=False),
        sa.Column("item_uses", sa.JSON(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("closed_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "item_scope IN ('none', 'houses', 'households')", name=op.f("ck_campaigns_item_scope")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'closed', 'cancelled')", name=op.f("ck_campaigns_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    op.create_index(
        "ix_campaigns_county_code_created_at",
        "campaigns",
        ["county_code", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_campaigns_region_code_created_at",
        "campaigns",
        ["region_code", "created_at"],
        unique=False,
    )

    op.create_table(
        "tasks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("category_code", sa.String(length=4), nullable=True),
        sa.Column("assignee_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("due_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("result_schema", sa.JSON(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("cancel_reason", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_by", sa.String(length=40), nullable=True),
        sa.Column("cancelled_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("overdue", sa.Boolean(), nullable=False),
        sa.Column("overdue_since", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'accepted', 'completed', 'cancelled')",
            name=op.f("ck_tasks_status"),
        ),
        sa.ForeignKeyConstraint(
            ["assignee_id"], ["users.id"], name=op.f("fk_tasks_assignee_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["campaign_id"], ["campaigns.id"], name=op.f("fk_tasks_campaign_id_campaigns")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tasks")),
    )
    op.create_index("ix_tasks_assignee_id_status", "tasks", ["assignee_id", "status"], unique=False)
    op.create_index(
        "ix_tasks_campaign_id_grid_code", "tasks", ["campaign_id", "grid_code"], unique=False
    )
    op.create_index(
        "ix_tasks_county_code_created_at", "tasks", ["county_code", "created_at"], unique=False
    )
    op.create_index("ix_tasks_grid_code_status", "tasks", ["grid_code", "status"], unique=False)
    op.create_index(
        "ix_tasks_open_due",
        "tasks",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text(_OPEN),
        sqlite_where=sa.text(_OPEN),
    )
    op.create_index("ix_tasks_region_code_due_at", "tasks", ["region_code", "due_at"], unique=False)

    op.create_table(
        "task_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("house_id", sa.Integer(), nullable=True),
        sa.Column("household_id", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(length=300), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("done_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("done_by", sa.String(length=40), nullable=True),
        sa.CheckConstraint("status IN ('pending', 'done')", name=op.f("ck_task_items_status")),
        sa.CheckConstraint(
            "house_id IS NOT NULL OR household_id IS NOT NULL", name=op.f("ck_task_items_subject")
        ),
        sa.ForeignKeyConstraint(
            ["house_id"], ["houses.id"], name=op.f("fk_task_items_house_id_houses")
        ),
        sa.ForeignKeyConstraint(
            ["household_id"],
            ["households.id"],
            name=op.f("fk_task_items_household_id_households"),
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_task_items_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_task_items")),
    )
    op.create_index("ix_task_items_house_id", "task_items", ["house_id"], unique=False)
    op.create_index("ix_task_items_household_id", "task_items", ["household_id"], unique=False)
    op.create_index("ix_task_items_task_id", "task_items", ["task_id"], unique=False)

    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    op.drop_index("ix_task_items_task_id", table_name="task_items")
    op.drop_index("ix_task_items_household_id", table_name="task_items")
    op.drop_index("ix_task_items_house_id", table_name="task_items")
    op.drop_table("task_items")

    op.drop_index("ix_tasks_region_code_due_at", table_name="tasks")
    op.drop_index(
        "ix_tasks_open_due",
        table_name="tasks",
        postgresql_where=sa.text(_OPEN),
        sqlite_where=sa.text(_OPEN),
    )
    op.drop_index("ix_tasks_grid_code_status", table_name="tasks")
    op.drop_index("ix_tasks_county_code_created_at", table_name="tasks")
    op.drop_index("ix_tasks_campaign_id_grid_code", table_name="tasks")
    op.drop_index("ix_tasks_assignee_id_status", table_name="tasks")
    op.drop_table("tasks")

    op.drop_index("ix_campaigns_region_code_created_at", table_name="campaigns")
    op.drop_index("ix_campaigns_county_code_created_at", table_name="campaigns")
    op.drop_table("campaigns")
