"""Cases, their timeline, attachments, idempotency keys, notifications; case permissions.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from geoalchemy2 import (
    Geometry,
    alembic_helpers,  # noqa: F401  (registers the geospatial operations)
)

import gridapi.models.base
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


# Frozen copy of the case permissions each stock role gains here (see
# gridapi.security.permissions): a county's own roles and changes are left alone.
_HANDLER = ["cases:sign", "cases:return", "cases:feedback", "cases:request_extension"]
_WORKER = [*_HANDLER, "cases:escalate"]
_CHIEF = [*_WORKER, "cases:verify", "cases:evidence_location"]
_COMMUNITY = [
    *_CHIEF,
    "cases:accept",
    "cases:reject",
    "cases:file",
    "cases:dispatch",
    "cases:duplicate",
    "cases:close",
    "cases:cancel",
]
_ALL = [
    *_COMMUNITY,
    "cases:transfer",
    "cases:decide_extension",
    "cases:reopen",
    "cases:supervise",
]
GRANTS = {
    "grid_worker": _WORKER,
    "grid_chief": _CHIEF,
    "community_officer": _COMMUNITY,
    "department": _HANDLER,
    "township_office": _ALL,
    "county_centre": _ALL,
    "city_centre": _ALL,
    "admin": _ALL,
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


def upgrade() -> None:
    op.create_table(
        "case_counters",
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("last", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("county_code", "day", name=op.f("pk_case_counters")),
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("caller", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=8), nullable=False),
        sa.Column("path", sa.String(length=255), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=True),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_keys")),
        sa.UniqueConstraint("caller", "key", name=op.f("uq_idempotency_keys_caller_key")),
    )
    op.create_index(
        "ix_idempotency_keys_expires_at", "idempotency_keys", ["expires_at"], unique=False
    )
    op.create_geospatial_table(
        "cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("number", sa.String(length=24), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("category_code", sa.String(length=4), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("urgent", sa.Boolean(), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("sensitive", sa.Boolean(), nullable=False),
        sa.Column("parties", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column(
            "location",
            Geometry(
                geometry_type="POINT",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
                nullable=False,
            ),
            nullable=False,
        ),
        sa.Column("raw_lon", sa.Float(), nullable=False),
        sa.Column("raw_lat", sa.Float(), nullable=False),
        sa.Column("crs", sa.String(length=8), nullable=False),
        sa.Column("accuracy_m", sa.Float(), nullable=True),
        sa.Column("address", sa.Text(), nullable=False),
        sa.Column("occurred_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reported_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("grid_version_id", sa.Integer(), nullable=True),
        sa.Column("routing_method", sa.String(length=10), nullable=False),
        sa.Column("snap_distance_m", sa.Float(), nullable=True),
        sa.Column("unrouted", sa.Boolean(), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("township_code", sa.String(length=12), nullable=True),
        sa.Column("reporter", sa.String(length=40), nullable=False),
        sa.Column("reporter_name", sa.String(length=100), nullable=False),
        sa.Column("client_id", sa.String(length=36), nullable=True),
        sa.Column("responsible_region_code", sa.String(length=12), nullable=False),
        sa.Column("department_id", sa.Integer(), nullable=True),
        sa.Column("assignee_id", sa.Integer(), nullable=True),
        sa.Column("accept_due_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("handle_due_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("verify_due_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("accepted_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("filed_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("dispatched_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("feedback_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("closed_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("overdue", sa.Boolean(), nullable=False),
        sa.Column("overdue_since", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("supervision", sa.String(length=8), nullable=False),
        sa.Column("rework_count", sa.Integer(), nullable=False),
        sa.Column("extension_count", sa.Integer(), nullable=False),
        sa.Column("escalation_count", sa.Integer(), nullable=False),
        sa.Column("reopen_count", sa.Integer(), nullable=False),
        sa.Column("extension_request", sa.JSON(), nullable=True),
        sa.Column("duplicate_of_id", sa.Integer(), nullable=True),
        sa.Column("satisfaction", sa.Integer(), nullable=True),
        sa.Column("satisfaction_comment", sa.Text(), nullable=True),
        sa.Column("rated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "severity IN ('general', 'major', 'critical')", name=op.f("ck_cases_severity")
        ),
        sa.CheckConstraint(
            "status IN ('reported', 'accepted', 'filed', 'dispatched', 'handling', 'feedback', 'verified', 'closed', 'rejected', 'cancelled')",
            name=op.f("ck_cases_status"),
        ),
        sa.CheckConstraint(
            "supervision IN ('normal', 'yellow', 'red')", name=op.f("ck_cases_supervision")
        ),
        sa.CheckConstraint(
            "satisfaction IS NULL OR satisfaction BETWEEN 1 AND 5",
            name=op.f("ck_cases_satisfaction"),
        ),
        sa.ForeignKeyConstraint(
            ["assignee_id"], ["users.id"], name=op.f("fk_cases_assignee_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["category_code"], ["categories.code"], name=op.f("fk_cases_category_code_categories")
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_cases_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["duplicate_of_id"], ["cases.id"], name=op.f("fk_cases_duplicate_of_id_cases")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cases")),
        sa.UniqueConstraint("number", name=op.f("uq_cases_number")),
        sa.UniqueConstraint("reporter", "client_id", name=op.f("uq_cases_reporter_client_id")),
    )
    op.create_geospatial_index(
        "idx_cases_location",
        "cases",
        ["location"],
        unique=False,
        postgresql_using="gist",
        postgresql_ops={},
    )
    op.create_index("ix_cases_assignee_id", "cases", ["assignee_id"], unique=False)
    op.create_index("ix_cases_category_code_lon", "cases", ["category_code", "lon"], unique=False)
    op.create_index(
        "ix_cases_county_code_reported_at", "cases", ["county_code", "reported_at"], unique=False
    )
    op.create_index(
        "ix_cases_grid_code_reported_at", "cases", ["grid_code", "reported_at"], unique=False
    )
    op.create_index(
        "ix_cases_open_due",
        "cases",
        ["handle_due_at"],
        unique=False,
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.create_index(
        "ix_cases_open_region",
        "cases",
        ["region_code", "reported_at"],
        unique=False,
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.create_index(
        "ix_cases_open_responsible",
        "cases",
        ["responsible_region_code", "status"],
        unique=False,
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.create_index(
        "ix_cases_open_township",
        "cases",
        ["township_code", "reported_at", "id"],
        unique=False,
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.create_index(
        "ix_cases_region_code_reported_at", "cases", ["region_code", "reported_at"], unique=False
    )
    op.create_index("ix_cases_reporter", "cases", ["reporter", "reported_at"], unique=False)
    op.create_table(
        "case_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=24), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=40), nullable=False),
        sa.Column("actor_name", sa.String(length=100), nullable=False),
        sa.Column("at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("responsible_region_code", sa.String(length=12), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.id"], name=op.f("fk_case_events_case_id_cases"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_events")),
        sa.UniqueConstraint("case_id", "seq", name=op.f("uq_case_events_case_id_seq")),
    )
    op.create_index(
        "ix_case_events_county_code_at", "case_events", ["county_code", "at"], unique=False
    )
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("region_code", sa.String(length=12), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_notifications_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_notifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("case_id", "kind", name=op.f("uq_notifications_case_id_kind")),
    )
    op.create_index("ix_notifications_unsent", "notifications", ["sent_at", "id"], unique=False)
    op.create_table(
        "case_attachments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("upload_sha256", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("thumbnail_sha256", sa.String(length=64), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("taken_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("gps_lon", sa.Float(), nullable=True),
        sa.Column("gps_lat", sa.Float(), nullable=True),
        sa.Column("uploaded_by", sa.String(length=40), nullable=False),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_case_attachments_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"], ["case_events.id"], name=op.f("fk_case_attachments_event_id_case_events")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_case_attachments")),
        sa.UniqueConstraint(
            "case_id", "upload_sha256", name=op.f("uq_case_attachments_case_id_upload_sha256")
        ),
    )
    # A plain ADD COLUMN (with a default for the rows there): a batch copy of categories
    # on SQLite would trip over its self-reference.
    op.add_column(
        "categories",
        sa.Column("auto_escalate", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    op.drop_column("categories", "auto_escalate")
    op.drop_table("case_attachments")
    op.drop_index("ix_notifications_unsent", table_name="notifications")
    op.drop_table("notifications")
    op.drop_index("ix_case_events_county_code_at", table_name="case_events")
    op.drop_table("case_events")
    op.drop_index("ix_cases_reporter", table_name="cases")
    op.drop_index("ix_cases_region_code_reported_at", table_name="cases")
    op.drop_index(
        "ix_cases_open_township",
        table_name="cases",
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.drop_index("ix_cases_open_region", table_name="cases")
    op.drop_index(
        "ix_cases_open_responsible",
        table_name="cases",
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.drop_index(
        "ix_cases_open_due",
        table_name="cases",
        postgresql_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
        sqlite_where=sa.text("status NOT IN ('closed', 'rejected', 'cancelled')"),
    )
    op.drop_index("ix_cases_grid_code_reported_at", table_name="cases")
    op.drop_index("ix_cases_county_code_reported_at", table_name="cases")
    op.drop_index("ix_cases_category_code_lon", table_name="cases")
    op.drop_index("ix_cases_assignee_id", table_name="cases")
    op.drop_geospatial_index(
        "idx_cases_location", table_name="cases", postgresql_using="gist", column_name="location"
    )
    op.drop_geospatial_table("cases")
    op.drop_index("ix_idempotency_keys_expires_at", table_name="idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_table("case_counters")
