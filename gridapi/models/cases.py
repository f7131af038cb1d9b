"""Cases (事件), their timeline, evidence, idempotency keys and the notifications they raise.

Tables that grow with cases carry ``county_code``: the distribution key when one PostgreSQL
is no longer enough (Citus), and the filter of every county-level query.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from geoalchemy2 import Geometry
from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
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

STATUSES = (
    "reported",
    "accepted",
    "filed",
    "dispatched",
    "handling",
    "feedback",
    "verified",
    "closed",
    "rejected",
    "cancelled",
)
TERMINAL = ("closed", "rejected", "cancelled")
OPEN_STATUSES = tuple(s for s in STATUSES if s not in TERMINAL)
SUPERVISION_LEVELS = ("normal", "yellow", "red")
SOURCES = ("phone", "hotline", "web", "patrol", "visit", "third_party", "open311", "worker")
SEVERITIES = ("general", "major", "critical")

_OPEN_SQL = "status NOT IN ('closed', 'rejected', 'cancelled')"
# The states that run against a deadline (services.cases.STAGE_DUE), and those of them a
# case can be supervised in (services.jobs.SUPERVISED_STATUSES); tests check they agree.
_DEADLINE_STATUSES = (
    "'reported', 'accepted', 'filed', 'dispatched', 'handling', 'feedback', 'verified'"
)
_SUPERVISED_STATUSES = "'accepted', 'filed', 'dispatched', 'handling', 'feedback', 'verified'"
# Every column the indicator queries read (gridapi.services.indicators), carried by
# ix_cases_indicators so that they are index-only scans (migrations 0013, 0058).
INDICATOR_COLUMNS = (
    "closed_at",
    "handle_due_at",
    "feedback_at",
    "dispatched_at",
    "status",
    "rework_count",
    "extension_count",
    "satisfaction",
    "handling_hours",
    "category_code",
    "source",
    "region_code",
    "township_code",
    "responsible_region_code",
    "department_id",
    "id",
    # Who may count a case (migration 0058): a sensitive one only for its offices.
    "sensitive",
)


class Case(Base):
    """One reported case: where and what, who holds it, its deadlines and its counters.

    ``version`` is the optimistic-concurrency counter: every change bumps it, and an update
    that names a stale version changes nothing (HTTP 412).
    """

    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(24), unique=True)
    county_code: Mapped[str] = mapped_column(String(6))
    category_code: Mapped[str] = mapped_column(ForeignKey("categories.code"))
    status: Mapped[str] = mapped_column(String(16), default="reported")
    description: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(String(16), default="phone")
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    severity: Mapped[str] = mapped_column(String(16), default="general")
    # From the category at report time: sensitive cases (petitions, special groups) are seen
    # only by the unit holding them, their handler and their reporter, not the whole area.
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    parties: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Where: the canonical WGS-84 point (also as plain columns, for portable bbox and
    # distance filters), what the phone sent, how precise it was, and the address text.
    lon: Mapped[float] = mapped_column(Float)
    lat: Mapped[float] = mapped_column(Float)
    location = mapped_column(Geometry("POINT", srid=4326, spatial_index=True), nullable=False)
    raw_lon: Mapped[float] = mapped_column(Float)
    raw_lat: Mapped[float] = mapped_column(Float)
    crs: Mapped[str] = mapped_column(String(8), default="wgs84")
    accuracy_m: Mapped[float | None] = mapped_column(Float)
    address: Mapped[str] = mapped_column(Text, default="")
    occurred_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Routing: the grid (and its version) the point fell in, or none (unrouted: the case
    # waits in the intake queue of ``region_code``).
    grid_code: Mapped[str | None] = mapped_column(String(15))
    grid_version_id: Mapped[int | None] = mapped_column(Integer)
    routing_method: Mapped[str] = mapped_column(String(10))
    snap_distance_m: Mapped[float | None] = mapped_column(Float)
    unrouted: Mapped[bool] = mapped_column(Boolean, default=False)
    region_code: Mapped[str] = mapped_column(String(12))  # the community, or the intake region
    township_code: Mapped[str | None] = mapped_column(String(12))
    # Who: the reporter (an account or an app), its own id for the report, and who holds it.
    reporter: Mapped[str] = mapped_column(String(40))
    reporter_name: Mapped[str] = mapped_column(String(100), default="")
    client_id: Mapped[str | None] = mapped_column(String(36))
    responsible_region_code: Mapped[str] = mapped_column(String(12))
    # The unit that handed the case down (交办) to the one holding it, which may return it
    # there (回退). A return sets it to the unit that handed the case down to that one, if
    # any (services.cases.hand_down_chain); every other move to another unit clears it.
    handed_down_from: Mapped[str | None] = mapped_column(String(12))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    # When: the deadline of each stage on the working calendar, and the stage moments.
    accept_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    handle_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verify_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    filed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    overdue_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    supervision: Mapped[str] = mapped_column(String(8), default="normal")
    rework_count: Mapped[int] = mapped_column(Integer, default=0)
    extension_count: Mapped[int] = mapped_column(Integer, default=0)
    escalation_count: Mapped[int] = mapped_column(Integer, default=0)
    reopen_count: Mapped[int] = mapped_column(Integer, default=0)
    extension_request: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"))
    satisfaction: Mapped[int | None] = mapped_column(Integer)
    satisfaction_comment: Mapped[str | None] = mapped_column(Text)
    rated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Working hours from filing to closing on the working calendar, stored at closing (and
    # cleared by a reopen) so the indicators average and rank it in SQL.
    handling_hours: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(
            "status IN ('reported', 'accepted', 'filed', 'dispatched', 'handling', 'feedback', "
            "'verified', 'closed', 'rejected', 'cancelled')",
            name="status",
        ),
        CheckConstraint("supervision IN ('normal', 'yellow', 'red')", name="supervision"),
        CheckConstraint(
            "satisfaction IS NULL OR satisfaction BETWEEN 1 AND 5", name="satisfaction"
        ),
        CheckConstraint("severity IN ('general', 'major', 'critical')", name="severity"),
        UniqueConstraint("reporter", "client_id"),
        # The newest cases first without a region filter (and its keyset pages): migration 0017.
        Index("ix_cases_reported_at", "reported_at", "id"),
        Index("ix_cases_county_code_reported_at", "county_code", "reported_at"),
        Index("ix_cases_region_code_reported_at", "region_code", "reported_at"),
        Index("ix_cases_grid_code_reported_at", "grid_code", "reported_at"),
        Index("ix_cases_reporter", "reporter", "reported_at"),
        Index("ix_cases_assignee_id", "assignee_id"),
        # The duplicates of a case (every GET, every sync page): the few links, not every
        # case (migration 0023).
        Index(
            "ix_cases_duplicate_of",
            "duplicate_of_id",
            postgresql_where=text("duplicate_of_id IS NOT NULL"),
            sqlite_where=text("duplicate_of_id IS NOT NULL"),
        ),
        # The duplicate search of each report: open cases of a category in a box, recently
        # (migration 0020; an index of every case's longitude read closed ones by the hundred).
        Index(
            "ix_cases_open_duplicates",
            "category_code",
            "lon",
            "lat",
            "reported_at",
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        # The work queues and the "open cases of a township" list read only open cases.
        Index(
            "ix_cases_open_township",
            "township_code",
            "reported_at",
            "id",
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        Index(
            "ix_cases_open_region",
            "region_code",
            "reported_at",
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        Index(
            "ix_cases_open_responsible",
            "responsible_region_code",
            "status",
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
        # The worker's batches, in id order: the open cases not yet overdue (the overdue job)
        # and the overdue ones (supervision, escalation). A few thousand rows each, where a
        # scan in id order read every case (migration 0019).
        Index(
            "ix_cases_open_not_overdue",
            "id",
            postgresql_where=text(f"overdue IS false AND status IN ({_DEADLINE_STATUSES})"),
            sqlite_where=text(f"overdue = 0 AND status IN ({_DEADLINE_STATUSES})"),
        ),
        Index(
            "ix_cases_open_overdue",
            "id",
            postgresql_where=text(f"overdue IS true AND status IN ({_SUPERVISED_STATUSES})"),
            sqlite_where=text(f"overdue = 1 AND status IN ({_SUPERVISED_STATUSES})"),
        ),
        # The indicators and the bulletin: a county's (or a range of counties') filed cases.
        Index(
            "ix_cases_indicators",
            "county_code",
            "filed_at",
            postgresql_include=list(INDICATOR_COLUMNS),
            postgresql_where=text("filed_at IS NOT NULL"),
            sqlite_where=text("filed_at IS NOT NULL"),
        ),
    )


class CaseEvent(Base):
    """One row of a case's timeline: who did what, when, from which state to which.

    Indicators are computed from these rows, so they are never changed or deleted.
    """

    __tablename__ = "case_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    seq: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(24))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(40))
    actor_name: Mapped[str] = mapped_column(String(100), default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    comment: Mapped[str] = mapped_column(Text, default="")
    # The unit that held the case after this step, and action details (assignee,
    # department, deadline changes, supervision level, reason...).
    responsible_region_code: Mapped[str | None] = mapped_column(String(12))
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evidence: Mapped[list[int]] = mapped_column(JSON, default=list)

    __table_args__ = (
        UniqueConstraint("case_id", "seq"),
        Index("ix_case_events_county_code_at", "county_code", "at"),
    )


class CaseAttachment(Base):
    """A photo attached to a case, stored re-encoded (no metadata) and named by its hash.

    ``upload_sha256`` is the hash of the bytes as uploaded: the same upload to the same case
    is one attachment. The EXIF capture time and position are kept here, readable only with
    ``cases:evidence_location``; the served file carries neither.
    """

    __tablename__ = "case_attachments"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    upload_sha256: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    thumbnail_sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255), default="")
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    uploaded_by: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[int | None] = mapped_column(ForeignKey("case_events.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("case_id", "upload_sha256"),)


class CaseCounter(Base):
    """The last case number given out per county and day (numbers read 320508-20261128-0001)."""

    __tablename__ = "case_counters"

    county_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    last: Mapped[int] = mapped_column(Integer, default=0)


class IdempotencyKey(Base):
    """A request already answered, by caller and key: a retry gets the stored answer.

    Written in the same transaction as what the request created, so a key exists exactly
    when its effect does. ``request_hash`` tells a retry from a different request reusing
    the key. Kept at least ``GRIDAPI_IDEMPOTENCY_DAYS``; ``gridapi worker`` removes older rows.
    """

    __tablename__ = "idempotency_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    caller: Mapped[str] = mapped_column(String(40))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(255))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("caller", "key"),
        Index("ix_idempotency_keys_expires_at", "expires_at"),
    )


class Notification(Base):
    """A message queued for a person or a unit (overdue, supervision, escalation, a task
    given to a worker...).

    Queued in the transaction of the change that raised it; delivery channels (SMS, app
    push) hear of each row by the webhook event ``notification.created``, which a trigger
    on this table writes in that transaction (migration 0053; no personal data), or read the
    queue (``GET /notifications``) and stamp ``sent_at`` (``POST /notifications/sent``,
    ``services.notifications.stamp_sent``).
    """

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    # A task's notification (a task given to a worker) names the task instead of a case.
    task_id: Mapped[int | None] = mapped_column(Integer)  # tasks are never deleted
    kind: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    region_code: Mapped[str | None] = mapped_column(String(12))
    # A department (its region is its county's, whose office the region code names): a
    # case dispatched to it, and the notices of one it handles with nobody of it signed.
    # No foreign key, as task_id (migration 0057).
    department_id: Mapped[int | None] = mapped_column(Integer)
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("case_id", "kind"),
        Index("ix_notifications_unsent", "sent_at", "id"),
        # The inboxes (services.notifications): a person's, and their unit's.
        Index("ix_notifications_user_id_id", "user_id", "id"),
        Index("ix_notifications_region_code_id", "region_code", "id"),
        Index("ix_notifications_department_id_id", "department_id", "id"),
        # What (case_id, kind) is for a case's: a task's notice of a kind is queued once
        # (the overdue job inserts it with ON CONFLICT DO NOTHING).
        Index(
            "uq_notifications_task_id_kind",
            "task_id",
            "kind",
            unique=True,
            sqlite_where=text("task_id IS NOT NULL"),
            postgresql_where=text("task_id IS NOT NULL"),
        ),
    )


class NotificationReadMark(Base):
    """How far a person has read their inbox: the highest notification id they marked read
    (``PUT /me/notifications/read``), one mark for every device and the web console, which
    only moves forward. An account that never marked has no row (mark 0).

    One row per account, read and written by ``user_id`` alone, never by county: like
    ``users`` and ``refresh_tokens`` it grows with accounts, not with people or cases, and
    has no county code (an account of a city, or of the whole system, has none); see
    docs/scaling.md. No time of reading is kept: when a worker read their notices is
    nothing a function needs.
    """

    __tablename__ = "notification_read_marks"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    read_up_to: Mapped[int] = mapped_column(Integer)

    __table_args__ = (CheckConstraint("read_up_to >= 0", name="read_up_to"),)
