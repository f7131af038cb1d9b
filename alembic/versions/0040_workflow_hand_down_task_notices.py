"""Cases: the unit that handed a case down, the feedback of a reopened case's earlier life;
notifications of tasks.

``cases.handed_down_from``: the unit that handed the case down (交办) to the one holding it.
The receiving unit had no 回退 for a case handed down wrongly, only 上报, which counted as an
escalation; now it returns the case to the unit that handed it down, which this column names.
It is filled for the open cases held now by a unit that got them by a hand-down: the
timeline's last row before that ``dispatch`` names the unit that handed it down.

A reopen left ``feedback_at`` set until the next feedback: once the reopened case was
dispatched again, the indicators counted it as handled (处置反馈数) in the period of the
earlier life's feedback, judged against the new deadline (按期处置数), before anybody
reported back on it. The workflow now clears it on reopen, as it clears ``dispatched_at``
(0038); this clears it from the cases reopened before and not fed back since. It is not
shown, so those cases keep their version. The timeline keeps the ``feedback`` row.

A campaign over a city carried the city's code as its county, and its task items the
campaign's whatever county their house was in: the items get their task's county, the
campaign its first grid's (a new version: it is shown).

``notifications.task_id``: a task given to a worker queues a notification for them, as a
case dispatched to a worker does; it names the task.

Revision ID: 0040
Revises: 0039
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0040"
down_revision = "0039"
branch_labels = None
depends_on = None


def _last(action: str) -> str:
    return (
        "(SELECT coalesce(max(e.seq), 0) FROM case_events e"
        f" WHERE e.case_id = cases.id AND e.action = '{action}')"
    )


# No feedback since the last reopen.
_FIRST_LIFE_FEEDBACK = sa.text(
    "UPDATE cases SET feedback_at = NULL"
    f" WHERE feedback_at IS NOT NULL AND {_last('reopen')} > {_last('feedback')}"
)


# The row that brought the case to the unit holding it (the one after the last row of
# another unit) is a hand-down (交办: a ``dispatch`` that leaves it filed); the row before it
# names the unit that handed it down.
_HANDED_DOWN_FROM = sa.text(
    "UPDATE cases SET handed_down_from = ("
    " SELECT k.responsible_region_code FROM case_events k"
    " JOIN case_events a ON a.case_id = k.case_id AND a.seq = k.seq + 1"
    " WHERE k.case_id = cases.id AND a.action = 'dispatch' AND a.to_status = 'filed'"
    " AND k.seq = (SELECT max(e.seq) FROM case_events e WHERE e.case_id = cases.id"
    " AND e.responsible_region_code <> cases.responsible_region_code))"
    " WHERE status NOT IN ('closed', 'rejected', 'cancelled')"
)


_ITEMS_IN_THEIR_TASKS_COUNTY = sa.text(
    "UPDATE task_items SET county_code ="
    " (SELECT t.county_code FROM tasks t WHERE t.id = task_items.task_id)"
    " WHERE county_code <> (SELECT t.county_code FROM tasks t WHERE t.id = task_items.task_id)"
)
# A campaign over a city or a province (its county digits 00): its first grid's county.
_FIRST_GRID = (
    "(SELECT substr(min(t.grid_code), 1, 6) FROM tasks t WHERE t.campaign_id = campaigns.id)"
)
_CAMPAIGNS_IN_A_COUNTY = sa.text(
    f"UPDATE campaigns SET county_code = {_FIRST_GRID}, version = version + 1"
    " WHERE substr(region_code, 5, 2) = '00'"
    f" AND {_FIRST_GRID} IS NOT NULL AND county_code <> {_FIRST_GRID}"
)


def upgrade() -> None:
    op.add_column("cases", sa.Column("handed_down_from", sa.String(12), nullable=True))
    op.execute(_HANDED_DOWN_FROM)
    op.execute(_FIRST_LIFE_FEEDBACK)
    op.execute(_ITEMS_IN_THEIR_TASKS_COUNTY)
    op.execute(_CAMPAIGNS_IN_A_COUNTY)
    # No foreign key: tasks are never deleted (cancelled), and a key added to an existing
    # table is a table rebuild on SQLite.
    op.add_column("notifications", sa.Column("task_id", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM notifications WHERE task_id IS NOT NULL")
    op.drop_column("notifications", "task_id")
    # Not batch mode: SQLite (3.35+) drops a column in place. Nothing to put back of
    # ``feedback_at``: the earlier code reads it as a case not fed back since its reopen,
    # and the cleared moment is in the timeline.
    op.drop_column("cases", "handed_down_from")
