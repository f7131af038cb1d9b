"""Export jobs: a large export written to a file by the worker, downloaded by its requester."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

EXPORT_JOB_STATUSES = ("queued", "running", "done", "failed")


class ExportJob(Base):
    """One requested export: what (kind, format, filters, unmasked or not), who asked, and
    where the file stands. Deleted with its file ``GRIDAPI_EXPORT_RETENTION_HOURS`` after
    it finished."""

    __tablename__ = "export_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The county of the region filter, else of the requester's area (None: everything).
    county_code: Mapped[str | None] = mapped_column(String(6))
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    client_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(8))
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    unmask: Mapped[bool] = mapped_column(Boolean, default=False)
    # What decided the file's rows when it was written (services.exports.rows_fingerprint:
    # the requester's role, permissions, area, department): served only while unchanged.
    built_for: Mapped[str | None] = mapped_column(String(32))
    purpose: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(12), default="queued")
    row_count: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # While running: the worker holding it renews this; past it, another worker takes the
    # job up again (the attempt count grows; too many and the job fails).
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # When the worker deleted the job's file: a failed job's at its next round, an expired
    # job's just before the row goes. Set, the job has no file to serve or to delete again.
    file_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("user_id IS NOT NULL OR client_id IS NOT NULL", name="has_owner"),
        CheckConstraint("status IN ('queued', 'running', 'done', 'failed')", name="status_known"),
        Index("ix_export_jobs_status_id", "status", "id"),
    )

    @property
    def requester(self) -> str:
        return f"user:{self.user_id}" if self.user_id is not None else f"client:{self.client_id}"
