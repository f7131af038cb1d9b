"""Webhook subscriptions, the transactional outbox of events, and the delivery log.

``webhook_events`` is written by database triggers (migration 0010) on ``case_events``
inserts, on ``tasks`` inserts and updates, and on ``notifications`` inserts (0053), in the transaction of the change itself: a
change that commits has its event, one rolled back has none, whatever code path made it.
The worker fans each event out to the matching subscriptions (one ``webhook_deliveries`` row
per subscription and event) and delivers them signed, with retries, in order per case.
"""

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
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow
from .register import new_uid

# Every event type a subscription may ask for (the triggers of migrations 0010, 0050, 0053
# and 0055 write them).
EVENT_TYPES = (
    "case.created",
    "case.transitioned",
    "case.overdue",
    "case.rated",
    "task.created",
    "task.accepted",
    "task.completed",
    "task.cancelled",
    "task.reassigned",
    "task.overdue",
    "task.deadline_moved",
    # A campaign made, closed (its last task done), cancelled, its deadline moved by a
    # calendar edit (migration 0055).
    "campaign.created",
    "campaign.closed",
    "campaign.cancelled",
    "campaign.deadline_moved",
    # A row of ``notifications`` inserted (migration 0053): for SMS and push gateways, with
    # no personal data (docs/webhooks.md).
    "notification.created",
)
# Sent only by POST /webhooks/{id}/ping, to that subscription.
PING = "ping"
DELIVERY_STATUSES = ("pending", "delivered", "dead")

_BIG_ID = BigInteger().with_variant(Integer, "sqlite")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class WebhookSubscription(Base):
    """An app's (or an office's) subscription: where to send which events of which area."""

    __tablename__ = "webhook_subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The row identity bound into the secret's ciphertext.
    uid: Mapped[str] = mapped_column(String(32), unique=True, default=new_uid)
    owner_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    owner_client_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_clients.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Region codes whose subtrees the subscription covers; empty: everything (admins only).
    region_codes: Mapped[list[str]] = mapped_column(JSON, default=list)
    # Category code prefixes ("53" or "5301"); empty: every category.
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    description: Mapped[str] = mapped_column(Text, default="")
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # The signing secret, encrypted with the field cipher (see gridapi.security.fields).
    secret_enc: Mapped[str] = mapped_column(Text)
    # The secret a rotation replaced, encrypted alike, and when it stops signing deliveries
    # (GRIDAPI_WEBHOOK_SECRET_GRACE_HOURS after the rotation; the worker then erases both).
    previous_secret_enc: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    __table_args__ = (
        CheckConstraint(
            "owner_user_id IS NOT NULL OR owner_client_id IS NOT NULL", name="has_owner"
        ),
    )


class WebhookEvent(Base):
    """One event of the outbox, written by a trigger in the transaction of its change."""

    __tablename__ = "webhook_events"

    # AUTOINCREMENT on SQLite: ids are never reused, so ``Webhook-Id`` stays unique.
    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    county_code: Mapped[str | None] = mapped_column(String(6))
    event_type: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    # A ping is addressed to one subscription; the others are fanned out by area.
    subscription_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    region_code: Mapped[str | None] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    category_code: Mapped[str | None] = mapped_column(String(4))
    # Deliveries of one key to one subscription go out in event order ("case:42").
    ordering_key: Mapped[str] = mapped_column(String(40))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    fanned_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "ix_webhook_events_unfanned",
            "id",
            postgresql_where=text("fanned_out_at IS NULL"),
            sqlite_where=text("fanned_out_at IS NULL"),
        ),
        Index("ix_webhook_events_created_at", "created_at"),
        Index("ix_webhook_events_case_id", "case_id"),
        Index("ix_webhook_events_task_id", "task_id"),
        Index("ix_webhook_events_subscription_id", "subscription_id"),
        {"sqlite_autoincrement": True},
    )


class WebhookDelivery(Base):
    """One event to one subscription: its attempts, its last answer, its state."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(_BIG_ID, primary_key=True, autoincrement=True)
    county_code: Mapped[str | None] = mapped_column(String(6))
    subscription_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_subscriptions.id", ondelete="CASCADE")
    )
    event_id: Mapped[int] = mapped_column(
        _BIG_ID, ForeignKey("webhook_events.id", ondelete="CASCADE")
    )
    ordering_key: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_duration_ms: Mapped[int | None] = mapped_column(Integer)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("subscription_id", "event_id"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        # The worker's queue: pending deliveries by when they are due.
        Index(
            "ix_webhook_deliveries_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        # Order per case: is an earlier delivery of this key to this subscription pending?
        Index(
            "ix_webhook_deliveries_ordering",
            "subscription_id",
            "ordering_key",
            "event_id",
            postgresql_where=text("status = 'pending'"),
            sqlite_where=text("status = 'pending'"),
        ),
        Index("ix_webhook_deliveries_log", "subscription_id", "id"),
        Index("ix_webhook_deliveries_event_id", "event_id"),
        Index("ix_webhook_deliveries_created_at", "created_at"),
        {"sqlite_autoincrement": True},
    )


__all__ = [
    "DELIVERY_STATUSES",
    "EVENT_TYPES",
    "PING",
    "WebhookDelivery",
    "WebhookEvent",
    "WebhookSubscription",
]
