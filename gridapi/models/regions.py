"""The administrative tree: regions keyed by the 12-digit statistical division code."""

from __future__ import annotations

from datetime import date, datetime

from geoalchemy2 import Geometry
from sqlalchemy import CheckConstraint, Date, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

LEVELS = ("province", "city", "county", "township", "village")


class Region(Base):
    """One administrative division over one period of validity.

    A code withdrawn and later reissued gets a new row; at most one row per code is current
    (``valid_to`` is null), which a partial unique index enforces on both engines.
    """

    __tablename__ = "regions"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(12))
    level: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(100))
    parent_code: Mapped[str | None] = mapped_column(String(12))
    boundary = mapped_column(Geometry("MULTIPOLYGON", srid=4326, spatial_index=True), nullable=True)
    valid_from: Mapped[date | None] = mapped_column(Date)
    valid_to: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(
            "level IN ('province', 'city', 'county', 'township', 'village')", name="level"
        ),
        CheckConstraint("length(code) = 12", name="code_length"),
        CheckConstraint(
            "valid_to IS NULL OR valid_from IS NULL OR valid_to >= valid_from", name="validity"
        ),
        Index(
            "ix_regions_code_current",
            "code",
            unique=True,
            sqlite_where=text("valid_to IS NULL"),
            postgresql_where=text("valid_to IS NULL"),
        ),
        Index("ix_regions_parent_code", "parent_code"),
        Index("ix_regions_code_valid_from", "code", "valid_from"),
    )

    @property
    def has_boundary(self) -> bool:
        return self.boundary is not None

    @property
    def boundary_geojson(self) -> dict | None:
        from ..geo.shapes import from_db, to_geojson

        return to_geojson(from_db(self.boundary))
