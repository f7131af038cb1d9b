"""Patrols (巡查): the track a worker walks, its check-ins and findings; and presence.

A track is whereabouts, personal information under the PIPL: raw points are kept
``GRIDAPI_TRACK_RAW_DAYS`` and then thinned to the simplified line, and the whole patrol is
deleted after ``GRIDAPI_TRACK_RETENTION_DAYS`` (``services.patrols.thin_tracks``). Every table
carries ``county_code`` (the Citus distribution key).
"""

from __future__ import annotations

from datetime import datetime

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

PATROL_STATUSES = ("active", "ended")


class Patrol(Base):
    """One patrol of one worker: when, where it started (their primary grid), its statistics
    and its line, rebuilt from the points ordered by time after every batch."""

    __tablename__ = "patrols"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    # The community of the worker's primary grid (else the worker's region, else where the
    # patrol started): what area scope is checked against, with ``grid_code``.
    region_code: Mapped[str] = mapped_column(String(12))
    worker_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(8), default="active")
    length_m: Mapped[float] = mapped_column(Float, default=0.0)
    duration_s: Mapped[int] = mapped_column(Integer, default=0)
    grids_crossed: Mapped[list[str]] = mapped_column(JSON, default=list)
    track = mapped_column(Geometry("LINESTRING", srid=4326, spatial_index=False), nullable=True)
    point_count: Mapped[int] = mapped_column(Integer, default=0)
    # Points left out of the line, its length and the grids crossed: jumps no patrol makes.
    outlier_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    thinned_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Seconds added to every time the phone sends for this patrol (its start, end, points and
    # check-ins): how far its clock was behind the server's (negative: ahead) when the patrol
    # started, by the start's Date header (``phone.clock_offset``); 0 when it did not say.
    # One figure for the whole patrol, so that a point sent again is the same point.
    clock_offset_s: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (
        CheckConstraint("status IN ('active', 'ended')", name="status"),
        CheckConstraint("ended_at IS NULL OR ended_at >= started_at", name="period"),
        # At most one active patrol per worker, whoever races to start a second.
        Index(
            "ix_patrols_one_active",
            "worker_id",
            unique=True,
            postgresql_where=text("status = 'active'"),
            sqlite_where=text("status = 'active'"),
        ),
        Index("ix_patrols_worker_id_started_at", "worker_id", "started_at"),
        Index("ix_patrols_region_code_started_at", "region_code", "started_at"),
        Index("ix_patrols_grid_code_started_at", "grid_code", "started_at"),
        Index("ix_patrols_ended_at", "ended_at"),
    )


class PatrolPoint(Base):
    """One GPS fix of a track (WGS-84). A timestamp is recorded once per patrol: a repeated
    upload changes nothing."""

    __tablename__ = "patrol_points"

    id: Mapped[int] = mapped_column(primary_key=True)
    patrol_id: Mapped[int] = mapped_column(ForeignKey("patrols.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    accuracy_m: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("patrol_id", "recorded_at"),)


class PatrolCheckin(Base):
    """A check-in (打卡) on a patrol: at a house of the register, or at a named place."""

    __tablename__ = "patrol_checkins"

    id: Mapped[int] = mapped_column(primary_key=True)
    patrol_id: Mapped[int] = mapped_column(ForeignKey("patrols.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    house_id: Mapped[int | None] = mapped_column(ForeignKey("houses.id", ondelete="SET NULL"))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    place: Mapped[str] = mapped_column(String(300), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("patrol_id", "at"),
        Index("ix_patrol_checkins_house_id_at", "house_id", "at"),
    )


class PatrolFinding(Base):
    """A case reported from a patrol. The case outlives the patrol: deleting the patrol
    (retention) deletes only this link."""

    __tablename__ = "patrol_findings"

    id: Mapped[int] = mapped_column(primary_key=True)
    patrol_id: Mapped[int] = mapped_column(ForeignKey("patrols.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("case_id"),
        Index("ix_patrol_findings_patrol_id", "patrol_id"),
    )


class Presence(Base):
    """The last heartbeat of a user (one row each): where, routed to which grid, and when.

    Coordinates older than ``GRIDAPI_TRACK_RAW_DAYS`` are cleared (whereabouts); the time
    stays, as "last seen".
    """

    __tablename__ = "presence"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    county_code: Mapped[str] = mapped_column(String(6))
    lon: Mapped[float | None] = mapped_column(Float)
    lat: Mapped[float | None] = mapped_column(Float)
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    grid_code: Mapped[str | None] = mapped_column(String(15))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    battery: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint("battery IS NULL OR battery BETWEEN 0 AND 100", name="battery"),
        Index("ix_presence_grid_code_at", "grid_code", "at"),
    )


__all__ = [
    "PATROL_STATUSES",
    "Patrol",
    "PatrolCheckin",
    "PatrolFinding",
    "PatrolPoint",
    "Presence",
]
