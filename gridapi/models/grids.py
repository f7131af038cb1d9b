"""Grids (网格) and the versions of a region's grid set they are loaded in."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .base import Base, UTCDateTime, utcnow

VERSION_STATUSES = ("draft", "active", "retired")
GRID_TYPES = ("basic", "dedicated")


class GridVersion(Base):
    """One loaded grid set of a region: draft → active → retired; never deleted."""

    __tablename__ = "grid_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    region_code: Mapped[str] = mapped_column(String(12))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    label: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str | None] = mapped_column(String(300))
    grid_count: Mapped[int] = mapped_column(Integer, default=0)
    error_count: Mapped[int] = mapped_column(Integer, default=0)
    warning_count: Mapped[int] = mapped_column(Integer, default=0)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The version whose activation retired this one: activating this one again undoes that
    # one (a rollback). No foreign key: versions are never deleted, and SQLite cannot add
    # one to an existing table.
    retired_by_id: Mapped[int | None] = mapped_column(Integer)

    grids: Mapped[list[Grid]] = relationship(back_populates="version", lazy="raise")

    __table_args__ = (
        CheckConstraint("status IN ('draft', 'active', 'retired')", name="status"),
        Index("ix_grid_versions_region_code_status", "region_code", "status"),
    )


class Grid(Base):
    """A grid of one version; ``in_service`` marks the grids that routing answers with.

    A version for a region shadows an active version of an ancestor region inside its subtree,
    so ``in_service`` is kept on activation rather than derived on every lookup.
    """

    __tablename__ = "grids"

    id: Mapped[int] = mapped_column(primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("grid_versions.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(15))
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(16), default="basic")
    community_code: Mapped[str] = mapped_column(String(12))
    # Carried for distribution by county (Citus) and for county-level filters.
    county_code: Mapped[str] = mapped_column(String(6))
    area_m2: Mapped[float] = mapped_column(Float)
    in_service: Mapped[bool] = mapped_column(Boolean, default=False)
    geom = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=True), nullable=False)

    version: Mapped[GridVersion] = relationship(back_populates="grids", lazy="raise")

    __table_args__ = (
        UniqueConstraint("version_id", "code"),
        CheckConstraint("type IN ('basic', 'dedicated')", name="type"),
        CheckConstraint("length(code) = 15", name="code_length"),
        Index("ix_grids_community_code", "community_code"),
        Index("ix_grids_code_in_service", "code", "in_service"),
    )

    @property
    def geometry(self) -> dict[str, Any] | None:
        from ..geo.shapes import from_db, to_geojson

        return to_geojson(from_db(self.geom))


class IndexGeneration(Base):
    """A counter bumped whenever the grids in service change, so every process can refresh."""

    __tablename__ = "index_generations"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
