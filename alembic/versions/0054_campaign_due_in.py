"""Campaigns keep the working time they were given, and move with their tasks.

A campaign given ``due_in`` kept only the moment it came to: its tasks kept the length
(0050) and moved when an admin edited the working calendar, the campaign did not, and its
view showed a deadline different from its tasks'. ``campaigns.due_in_amount``,
``due_in_unit`` and ``due_in_from`` keep it as the tasks do.

Campaigns made before are filled from their tasks: where every task of a campaign kept the
same working time (amount, unit and start), the campaign was given it (its tasks were made
with it); where they differ (a task reassigned with another deadline) or one kept none (a
moment, or a task made before 0050), nothing tells what the campaign was given, and it
keeps its deadline as the moment it is. An active campaign so filled whose open tasks not
flagged overdue all have one deadline, another than its own (a calendar edit moved them,
not it), takes theirs, with a new version (it is shown).

Revision ID: 0054
Revises: 0053
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0054"
down_revision = "0053"
branch_labels = None
depends_on = None

_COLUMNS = ("due_in_amount", "due_in_unit", "due_in_from")

# The campaigns whose tasks all kept one working time, and that working time.
_AGREED = (
    "SELECT t.campaign_id AS id, min(t.due_in_amount) AS amount, min(t.due_in_unit) AS unit,"
    " min(t.due_in_from) AS since FROM tasks t WHERE t.campaign_id IS NOT NULL"
    " GROUP BY t.campaign_id"
    " HAVING count(t.due_in_amount) = count(*) AND count(t.due_in_unit) = count(*)"
    " AND count(t.due_in_from) = count(*)"
    " AND min(t.due_in_amount) = max(t.due_in_amount)"
    " AND min(t.due_in_unit) = max(t.due_in_unit)"
    " AND min(t.due_in_from) = max(t.due_in_from)"
)
_FILL = sa.text(
    "UPDATE campaigns SET"
    f" due_in_amount = (SELECT a.amount FROM ({_AGREED}) a WHERE a.id = campaigns.id),"
    f" due_in_unit = (SELECT a.unit FROM ({_AGREED}) a WHERE a.id = campaigns.id),"
    f" due_in_from = (SELECT a.since FROM ({_AGREED}) a WHERE a.id = campaigns.id)"
    f" WHERE id IN (SELECT a.id FROM ({_AGREED}) a)"
)
# The deadline of an active campaign's open tasks not flagged overdue, when they share one.
_OPEN_TASKS = (
    "FROM tasks t WHERE t.campaign_id = campaigns.id"
    " AND t.status IN ('pending', 'accepted') AND NOT t.overdue"
)
_ALIGN = sa.text(
    f"UPDATE campaigns SET due_at = (SELECT min(t.due_at) {_OPEN_TASKS}),"
    " version = version + 1"
    " WHERE status = 'active' AND due_in_unit IS NOT NULL"
    f" AND (SELECT count(DISTINCT t.due_at) {_OPEN_TASKS}) = 1"
    f" AND due_at <> (SELECT min(t.due_at) {_OPEN_TASKS})"
)


def upgrade() -> None:
    # Plain ADD COLUMN on both engines (no table copy on SQLite).
    op.add_column("campaigns", sa.Column("due_in_amount", sa.Integer(), nullable=True))
    op.add_column("campaigns", sa.Column("due_in_unit", sa.String(8), nullable=True))
    op.add_column(
        "campaigns", sa.Column("due_in_from", gridapi.models.base.UTCDateTime(), nullable=True)
    )
    op.execute(_FILL)
    op.execute(_ALIGN)


def downgrade() -> None:
    # The deadlines moved stay the moments they are: the earlier code keeps only those.
    if op.get_bind().dialect.name == "postgresql":
        for column in reversed(_COLUMNS):
            op.drop_column("campaigns", column)
    else:
        # SQLite drops a column in place (3.35+).
        for column in reversed(_COLUMNS):
            op.execute(f"ALTER TABLE campaigns DROP COLUMN {column}")
