"""Webhook subscriptions keep their previous signing secret for a grace period.

A ``rotate-secret`` was a hard cut-over: from then on every delivery was signed only with
the new secret, and a receiver that had not yet deployed it refused every event until it
did. For ``GRIDAPI_WEBHOOK_SECRET_GRACE_HOURS`` after a rotation each delivery also carries
the previous secret's signature (``Webhook-Signature-Previous``); the previous secret is
kept encrypted as the current one is (``previous_secret_enc``, bound to its own column) and
erased by the worker once ``previous_secret_expires_at`` has passed. Subscriptions rotated
before the upgrade have none.

Revision ID: 0043
Revises: 0042
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0043"
down_revision = "0042"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("webhook_subscriptions", sa.Column("previous_secret_enc", sa.Text()))
    op.add_column("webhook_subscriptions", sa.Column("previous_secret_expires_at", UTCDateTime()))


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("webhook_subscriptions", "previous_secret_expires_at")
    op.drop_column("webhook_subscriptions", "previous_secret_enc")
