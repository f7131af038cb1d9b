"""Foundation: spatial extension, administrative tree, grid versions and grids.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from datetime import UTC, datetime

import geoalchemy2
import sqlalchemy as sa
from geoalchemy2 import alembic_helpers  # noqa: F401  (registers the geospatial operations)

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        if not bind.exec_driver_sql("SELECT CheckSpatialMetaData()").scalar():
            # 'WGS84_ONLY' keeps spatial_ref_sys small; 4326 is all we store.
            bind.exec_driver_sql("SELECT InitSpatialMetadata(0, 'WGS84_ONLY')")
    else:
        op.execute("CREATE EXTENSION IF NOT EXISTS postgis")

    op.create_geospatial_table(
        "regions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(12), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("parent_code", sa.String(12), nullable=True),
        sa.Column(
            "boundary",
            geoalchemy2.Geometry("MULTIPOLYGON", srid=4326, spatial_index=False),
            nullable=True,
        ),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_to", sa.Date(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "level IN ('province', 'city', 'county', 'township', 'village')",
            name=op.f("ck_regions_level"),
        ),
        sa.CheckConstraint("length(code) = 12", name=op.f("ck_regions_code_length")),
        sa.CheckConstraint(
            "valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from",
            name=op.f("ck_regions_validity"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_regions")),
    )
    op.create_geospatial_index(
        "idx_regions_boundary",
        "regions",
        ["boundary"],
        unique=False,
        postgresql_using="gist",
        postgresql_ops={},
    )
    op.create_index(
        "ix_regions_code_current",
        "regions",
        ["code"],
        unique=True,
        sqlite_where=sa.text("valid_to IS NULL"),
        postgresql_where=sa.text("valid_to IS NULL"),
    )
    op.create_index("ix_regions_parent_code", "regions", ["parent_code"])
    op.create_index("ix_regions_code_valid_from", "regions", ["code", "valid_from"])

    op.create_table(
        "grid_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("region_code", sa.String(12), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=True),
        sa.Column("source", sa.String(300), nullable=True),
        sa.Column("grid_count", sa.Integer(), nullable=False),
        sa.Column("error_count", sa.Integer(), nullable=False),
        sa.Column("warning_count", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("activated_at", UTCDateTime(), nullable=True),
        sa.Column("retired_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('draft', 'active', 'retired')", name=op.f("ck_grid_versions_status")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grid_versions")),
    )
    op.create_index(
        "ix_grid_versions_region_code_status", "grid_versions", ["region_code", "status"]
    )

    op.create_geospatial_table(
        "grids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(15), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("community_code", sa.String(12), nullable=False),
        sa.Column("county_code", sa.String(6), nullable=False),
        sa.Column("area_m2", sa.Float(), nullable=False),
        sa.Column("in_service", sa.Boolean(), nullable=False),
        sa.Column(
            "geom",
            geoalchemy2.Geometry("MULTIPOLYGON", srid=4326, spatial_index=False),
            nullable=False,
        ),
        sa.CheckConstraint("type IN ('basic', 'dedicated')", name=op.f("ck_grids_type")),
        sa.CheckConstraint("length(code) = 15", name=op.f("ck_grids_code_length")),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["grid_versions.id"],
            ondelete="CASCADE",
            name=op.f("fk_grids_version_id_grid_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_grids")),
        sa.UniqueConstraint("version_id", "code", name=op.f("uq_grids_version_id_code")),
    )
    op.create_geospatial_index(
        "idx_grids_geom",
        "grids",
        ["geom"],
        unique=False,
        postgresql_using="gist",
        postgresql_ops={},
    )
    op.create_index("ix_grids_community_code", "grids", ["community_code"])
    op.create_index("ix_grids_code_in_service", "grids", ["code", "in_service"])

    op.create_table(
        "index_generations",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("changed_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_index_generations")),
    )
    generations = sa.table(
        "index_generations",
        sa.column("name", sa.String),
        sa.column("generation", sa.Integer),
        sa.column("changed_at", UTCDateTime()),
    )
    op.bulk_insert(
        generations, [{"name": "grids", "generation": 0, "changed_at": datetime.now(UTC)}]
    )


def downgrade() -> None:
    op.drop_table("index_generations")
    op.drop_index("ix_grids_code_in_service", table_name="grids")
    op.drop_index("ix_grids_community_code", table_name="grids")
    op.drop_geospatial_index("idx_grids_geom", table_name="grids", column_name="geom")
    op.drop_geospatial_table("grids")
    op.drop_index("ix_grid_versions_region_code_status", table_name="grid_versions")
    op.drop_table("grid_versions")
    op.drop_index("ix_regions_code_valid_from", table_name="regions")
    op.drop_index("ix_regions_parent_code", table_name="regions")
    op.drop_index("ix_regions_code_current", table_name="regions")
    op.drop_geospatial_index("idx_regions_boundary", table_name="regions", column_name="boundary")
    op.drop_geospatial_table("regions")
