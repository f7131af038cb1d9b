"""Cases (事件): reports from phones, hotlines and apps, their timeline, idempotency keys."""

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
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

STATUSES = (
    "reported",
    "accepted",
    "filed",
    "dispatched",
    "handling",
    "feedback",
    "closed",
    "rejected",
    "cancelled",
)
SOURCES = ("phone", "hotline", "web", "patrol", "third_party", "open311", "visit")
SUPERVISION_LEVELS = ("none", "normal", "yellow", "red")


class Case(Base):
    """One reported case and its current state; the timeline is in ``case_events``.

    ``county_code`` is on every row so the table can be distributed by county (Citus).
    ``version`` is the optimistic-lock counter behind ETag/If-Match.
    """

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    county_code: Mapped[str] = mapped_column(String(6))
    category_code: Mapped[str] = mapped_column(ForeignKey("categories.code"))
    description: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16))
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    parties: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where: the raw value as sent, the canonical WGS-84 point, the phone's accuracy.
    raw_lon: Mapped[float] = mapped_column(Float)
    raw_lat: Mapped[float] = mapped_column(Float)
    raw_crs: Mapped[str] = mapped_column(String(16))
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    location = mapped_column(Geometry("POINT", srid=4326, spatial_index=True), nullable=False)
    address: Mapped[str | None] = mapped_column(String(300))
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # How it was routed.
    grid_code: Mapped[str | None] = mapped_column(String(15))
    grid_version_id: Mapped[int | None] = mapped_column(Integer)
    routing_method: Mapped[str] = mapped_column(String(16))
    routing_distance_m: Mapped[float | None] = mapped_column(Float)
    region_code: Mapped[str] = mapped_column(String(12))
    unrouted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Who reported it.
    reporter: Mapped[str] = mapped_column(String(64))
    client_id: Mapped[str | None] = mapped_column(String(36))
    # Where it is now.
    status: Mapped[str] = mapped_column(String(16), default="reported")
    responsible: Mapped[str] = mapped_column(String(64))
    assignee_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    accept_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handle_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verify_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    filed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    supervision: Mapped[str] = mapped_column(String(8), default="none")
    rework_count: Mapped[int] = mapped_column(Integer, default=0)
    extension_count: Mapped[int] = mapped_column(Integer, default=0)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    satisfaction_comment: Mapped[str | None] = mapped_column(Text)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        UniqueConstraint("reporter", "client_id"),
        CheckConstraint(
            "status IN ('reported', 'accepted', 'filed', 'dispatched', 'handling', 'feedback', "
            "'closed', 'rejected', 'cancelled')",
            name="status",
        ),
        CheckConstraint("supervision IN ('none', 'normal', 'yellow', 'red')", name="supervision"),
        CheckConstraint(
            "satisfaction IS NULL OR satisfaction BETWEEN 1 AND 5", name="satisfaction"
        ),
        Index("ix_cases_region_code_status", "region_code", "status"),
        Index("ix_cases_county_code_status", "county_code", "status"),
        Index("ix_cases_grid_code", "grid_code"),
        Index("ix_cases_category_code", "category_code"),
        Index("ix_cases_reported_at", "reported_at"),
        Index("ix_cases_assignee_user_id", "assignee_user_id"),
    )


class CaseEvent(Base):
    """One row of a case's timeline: who, when, from, to, comment, evidence."""

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(64))
    actor_name: Mapped[str | None] = mapped_column(String(100))
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_case_events_case_id_at", "case_id", "at"),)


class IdempotencyKey(Base):
    """A request key a caller sent, the hash of its body and the answer it got.

    Written in the same transaction as the case it created, so a key exists exactly when
    its case does; the unique constraint makes a concurrent duplicate fail, not double.
    """

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    caller: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("caller", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )
