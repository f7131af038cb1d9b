"""Patrols, track points, check-ins, findings and presence; the field-work permissions.

Revision ID: 0008
Revises: 0007
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

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


# Frozen copy of the patrol and presence permissions each stock role gains here (see
# gridapi.security.permissions): a county's own roles and changes are left alone.
_WORKER = ["patrols:write"]
_CHIEF = [*_WORKER, "patrols:read", "presence:read"]
GRANTS = {
    "grid_worker": _WORKER,
    "grid_chief": _CHIEF,
    "community_officer": _CHIEF,
    "township_office": _CHIEF,
    "county_centre": _CHIEF,
    "city_centre": _CHIEF,
    "admin": _CHIEF,
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
    op.create_geospatial_table(
        "patrols",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("region_code", sa.String(length=12), nullable=False),
        sa.Column("worker_id", sa.Integer(), nullable=False),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("started_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("length_m", sa.Float(), nullable=False),
        sa.Column("duration_s", sa.Integer(), nullable=False),
        sa.Column("grids_crossed", sa.JSON(), nullable=False),
        sa.Column(
            "track",
            Geometry(
                geometry_type="LINESTRING",
                srid=4326,
                dimension=2,
                spatial_index=False,
                from_text="ST_GeomFromEWKT",
                name="geometry",
            ),
            nullable=True,
        ),
        sa.Column("point_count", sa.Integer(), nullable=False),
        sa.Column("thinned_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.CheckConstraint("status IN ('active', 'ended')", name=op.f("ck_patrols_status")),
        sa.CheckConstraint(
            "ended_at IS NULL OR ended_at >= started_at", name=op.f("ck_patrols_period")
        ),
        sa.ForeignKeyConstraint(
            ["worker_id"], ["users.id"], name=op.f("fk_patrols_worker_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrols")),
    )
    op.create_index("ix_patrols_ended_at", "patrols", ["ended_at"], unique=False)
    op.create_index(
        "ix_patrols_grid_code_started_at", "patrols", ["grid_code", "started_at"], unique=False
    )
    op.create_index(
        "ix_patrols_one_active",
        "patrols",
        ["worker_id"],
        unique=True,
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.create_index(
        "ix_patrols_region_code_started_at", "patrols", ["region_code", "started_at"], unique=False
    )
    op.create_index(
        "ix_patrols_worker_id_started_at", "patrols", ["worker_id", "started_at"], unique=False
    )

    op.create_table(
        "patrol_points",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patrol_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("recorded_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("accuracy_m", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["patrol_id"],
            ["patrols.id"],
            name=op.f("fk_patrol_points_patrol_id_patrols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrol_points")),
        sa.UniqueConstraint(
            "patrol_id", "recorded_at", name=op.f("uq_patrol_points_patrol_id_recorded_at")
        ),
    )

    op.create_table(
        "patrol_checkins",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patrol_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("house_id", sa.Integer(), nullable=True),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("place", sa.String(length=300), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["house_id"],
            ["houses.id"],
            name=op.f("fk_patrol_checkins_house_id_houses"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["patrol_id"],
            ["patrols.id"],
            name=op.f("fk_patrol_checkins_patrol_id_patrols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrol_checkins")),
        sa.UniqueConstraint("patrol_id", "at", name=op.f("uq_patrol_checkins_patrol_id_at")),
    )
    op.create_index(
        "ix_patrol_checkins_house_id_at", "patrol_checkins", ["house_id", "at"], unique=False
    )

    op.create_table(
        "patrol_findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patrol_id", sa.Integer(), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_patrol_findings_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["patrol_id"],
            ["patrols.id"],
            name=op.f("fk_patrol_findings_patrol_id_patrols"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patrol_findings")),
        sa.UniqueConstraint("case_id", name=op.f("uq_patrol_findings_case_id")),
    )
    op.create_index("ix_patrol_findings_patrol_id", "patrol_findings", ["patrol_id"], unique=False)

    op.create_table(
        "presence",
        sa.Column("user_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=False),
        sa.Column("lon", sa.Float(), nullable=True),
        sa.Column("lat", sa.Float(), nullable=True),
        sa.Column("accuracy_m", sa.Float(), nullable=True),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("battery", sa.Integer(), nullable=True),
        sa.CheckConstraint(
            "battery IS NULL OR battery BETWEEN 0 AND 100", name=op.f("ck_presence_battery")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_presence_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_presence")),
    )
    op.create_index("ix_presence_grid_code_at", "presence", ["grid_code", "at"], unique=False)

    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    op.drop_index("ix_presence_grid_code_at", table_name="presence")
    op.drop_table("presence")
    op.drop_index("ix_patrol_findings_patrol_id", table_name="patrol_findings")
    op.drop_table("patrol_findings")
    op.drop_index("ix_patrol_checkins_house_id_at", table_name="patrol_checkins")
    op.drop_table("patrol_checkins")
    op.drop_table("patrol_points")
    op.drop_index("ix_patrols_worker_id_started_at", table_name="patrols")
    op.drop_index("ix_patrols_region_code_started_at", table_name="patrols")
    op.drop_index(
        "ix_patrols_one_active",
        table_name="patrols",
        postgresql_where=sa.text("status = 'active'"),
        sqlite_where=sa.text("status = 'active'"),
    )
    op.drop_index("ix_patrols_grid_code_started_at", table_name="patrols")
    op.drop_index("ix_patrols_ended_at", table_name="patrols")
    op.drop_geospatial_table("patrols")
