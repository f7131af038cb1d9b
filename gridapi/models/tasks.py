"""Tasks (任务) for a worker or a grid, campaigns (专项行动) that fan out into one task per grid,
and the items (a house or a household) a campaign task covers.

``tasks`` carries ``county_code``, ``region_code``, ``grid_code``, ``assignee_id``, ``status``,
``updated_at`` and ``version``: scope checks, the phone's sync change log and optimistic
concurrency all read them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

TASK_STATUSES = ("pending", "accepted", "completed", "cancelled")
OPEN_TASK_STATUSES = ("pending", "accepted")
CAMPAIGN_STATUSES = ("active", "closed", "cancelled")
ITEM_SCOPES = ("none", "houses", "households")
ITEM_STATUSES = ("pending", "done")

_OPEN_SQL = "status IN ('pending', 'accepted')"


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Campaign(Base):
    """A campaign over a region: one task per grid in service there (and, when
    ``item_scope`` says so, one item per house or household of the grid).

    ``result_schema`` is an attribute schema in the format of a category's ``attributes``:
    the form each task (or, with items, each item) is completed with.
    """

    __tablename__ = "campaigns"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    category_code: Mapped[str | None] = mapped_column(String(4))
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A deadline given as working time (``due_in``), kept as its tasks keep it (0054): an
    # edit of the calendar moves the campaign's with theirs. None: a moment (``due_at``),
    # or a campaign made before whose tasks did not all keep the same one.
    due_in_amount: Mapped[int | None] = mapped_column(Integer)
    due_in_unit: Mapped[str | None] = mapped_column(String(8))  # hours | days
    due_in_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    result_schema: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    item_scope: Mapped[str] = mapped_column(String(16), default="none")
    # House uses the items are limited to (e.g. ["rented"]); None: every house.
    item_uses: Mapped[list[str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="active")
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(_in("status", CAMPAIGN_STATUSES), name="status"),
        CheckConstraint(_in("item_scope", ITEM_SCOPES), name="item_scope"),
        Index("ix_campaigns_region_code_created_at", "region_code", "created_at"),
        Index("ix_campaigns_county_code_created_at", "county_code", "created_at"),
    )


class Task(Base):
    """A task for a worker (``assignee_id``) or for a grid (unassigned: any of its workers
    may accept it), with its deadline, results, evidence and overdue flag.

    ``version`` is the optimistic-concurrency counter: every change bumps it, and an update
    that names a stale version changes nothing (HTTP 412).
    """

    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    county_code: Mapped[str] = mapped_column(String(6))
    region_code: Mapped[str] = mapped_column(String(12))  # the community, or a larger region
    grid_code: Mapped[str | None] = mapped_column(String(15))
    campaign_id: Mapped[int | None] = mapped_column(ForeignKey("campaigns.id"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    category_code: Mapped[str | None] = mapped_column(String(4))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # A deadline given as working time (``due_in``): its length and the moment it was counted
    # from, so that a calendar edit counts it again. None: a moment (``due_at``), or a task
    # made before these were kept (0050), whose deadline stays the moment it is.
    due_in_amount: Mapped[int | None] = mapped_column(Integer)
    due_in_unit: Mapped[str | None] = mapped_column(String(8))  # hours | days
    due_in_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The result form of a task outside a campaign (a campaign's tasks use the campaign's).
    result_schema: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    results: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    evidence: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    comment: Mapped[str] = mapped_column(Text, default="")
    cancel_reason: Mapped[str | None] = mapped_column(Text)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_by: Mapped[str | None] = mapped_column(String(40))
    cancelled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    overdue: Mapped[bool] = mapped_column(Boolean, default=False)
    overdue_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    version: Mapped[int] = mapped_column(Integer, default=1)

    __mapper_args__ = {"version_id_col": version}

    __table_args__ = (
        CheckConstraint(_in("status", TASK_STATUSES), name="status"),
        Index("ix_tasks_campaign_id_grid_code", "campaign_id", "grid_code"),
        Index("ix_tasks_assignee_id_status", "assignee_id", "status"),
        Index("ix_tasks_grid_code_status", "grid_code", "status"),
        Index("ix_tasks_region_code_due_at", "region_code", "due_at"),
        Index("ix_tasks_county_code_created_at", "county_code", "created_at"),
        # The overdue job reads only open tasks by deadline.
        Index(
            "ix_tasks_open_due",
            "due_at",
            postgresql_where=text(_OPEN_SQL),
            sqlite_where=text(_OPEN_SQL),
        ),
    )


class TaskItem(Base):
    """One house or household a campaign task covers, done or not, with its result."""

    __tablename__ = "task_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    county_code: Mapped[str] = mapped_column(String(6))
    house_id: Mapped[int | None] = mapped_column(ForeignKey("houses.id"))
    household_id: Mapped[int | None] = mapped_column(ForeignKey("households.id"))
    # What the phone shows: the house's address or the household's number (户号).
    label: Mapped[str] = mapped_column(String(300), default="")
    status: Mapped[str] = mapped_column(String(16), default="pending")
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    note: Mapped[str] = mapped_column(Text, default="")
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_by: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (
        CheckConstraint(_in("status", ITEM_STATUSES), name="status"),
        CheckConstraint("house_id IS NOT NULL OR household_id IS NOT NULL", name="subject"),
        Index("ix_task_items_task_id", "task_id"),
        Index("ix_task_items_house_id", "house_id"),
        Index("ix_task_items_household_id", "household_id"),
    )


__all__ = [
    "CAMPAIGN_STATUSES",
    "Campaign",
    "ITEM_SCOPES",
    "ITEM_STATUSES",
    "OPEN_TASK_STATUSES",
    "TASK_STATUSES",
    "Task",
    "TaskItem",
]
