"""Case categories (事件分类) with their time limits, and the working calendar they run on."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

LIMIT_UNITS = ("hours", "days")
ATTRIBUTE_TYPES = ("string", "text", "number", "date", "single_choice", "multiple_choice")


class Category(Base):
    """A class (2-digit code) or subclass (4-digit code) of cases.

    Time limits are counted on the working calendar, in working hours or working days.
    ``default_handler`` is ``township``, ``county`` or ``department:<code>``.
    """

    __tablename__ = "categories"

    code: Mapped[str] = mapped_column(String(4), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    parent_code: Mapped[str | None] = mapped_column(ForeignKey("categories.code"))
    accept_limit: Mapped[int] = mapped_column(Integer, default=2)
    accept_unit: Mapped[str] = mapped_column(String(8), default="hours")
    handle_limit: Mapped[int] = mapped_column(Integer, default=5)
    handle_unit: Mapped[str] = mapped_column(String(8), default="days")
    verify_limit: Mapped[int] = mapped_column(Integer, default=1)
    verify_unit: Mapped[str] = mapped_column(String(8), default="days")
    default_handler: Mapped[str] = mapped_column(String(64), default="township")
    intake_standard: Mapped[str] = mapped_column(Text, default="")
    closure_standard: Mapped[str] = mapped_column(Text, default="")
    sensitive: Mapped[bool] = mapped_column(Boolean, default=False)
    urgent: Mapped[bool] = mapped_column(Boolean, default=False)
    # Escalated by ``gridapi worker`` to the parent level's office when overdue.
    auto_escalate: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Feedback (反馈) on a case of the category cites at least one photo (``evidence``).
    feedback_evidence: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    duplicate_radius_m: Mapped[float] = mapped_column(Float, default=50.0)
    attributes: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    sort_order: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Bumped by every change (If-Match, gridapi.services.preconditions): two admins editing
    # one category each overwrote the other's change without a word.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))

    __mapper_args__ = {"version_id_col": version}
    __table_args__ = (
        CheckConstraint("length(code) IN (2, 4)", name="code_length"),
        CheckConstraint(
            "accept_unit IN ('hours', 'days') AND handle_unit IN ('hours', 'days') "
            "AND verify_unit IN ('hours', 'days')",
            name="units",
        ),
        CheckConstraint(
            "accept_limit > 0 AND handle_limit > 0 AND verify_limit > 0", name="limits"
        ),
        CheckConstraint("duplicate_radius_m >= 0", name="radius"),
    )

    @property
    def level(self) -> int:
        return 1 if len(self.code) == 2 else 2

    @property
    def id(self) -> str:
        """The category's code: what names it in its ETag, ``"<code>-<version>"``."""
        return self.code


class CalendarDay(Base):
    """A day that departs from the Monday-Friday rule: a holiday, or a weekend day worked
    in exchange (调休). Deadlines are counted on these rows and the working hours."""

    __tablename__ = "calendar_days"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(50), default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("kind IN ('holiday', 'workday')", name="kind"),)


class CalendarYear(Base):
    """Whether a year's holidays and 调休 days are the State Council's arrangement
    (``official``) or a stand-in until it is published (``provisional``: the fixed-date
    holidays only). A year without a row has no arrangement at all. Deadlines reaching a year
    that is not official count its weekdays as working days; the service says so."""

    __tablename__ = "calendar_years"

    year: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    status: Mapped[str] = mapped_column(String(12))
    source: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (CheckConstraint("status IN ('official', 'provisional')", name="status"),)


class CalendarEdit(Base):
    """An edit of the working calendar that changed a day. Processes keep the calendar
    GRIDAPI_CALENDAR_CACHE_SECONDS: a deadline set meanwhile may be counted on the old one.
    The worker counts again the deadlines set between ``recount_from`` and ``recount_until``
    once that has passed, and then sets ``recounted_at``."""

    __tablename__ = "calendar_edits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    edited_at: Mapped[datetime] = mapped_column(UTCDateTime)
    recount_from: Mapped[datetime] = mapped_column(UTCDateTime)
    recount_until: Mapped[datetime] = mapped_column(UTCDateTime)
    recounted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
