"""A case's dispatch and supervision from before its last return, escalation or reopen are
cleared from the case.

A return (回退), an escalation (上报) or a reopen left ``dispatched_at`` set: the indicators
then counted feedback the office gave on the spot as the dispatch → feedback leg of the
dispatch it ended (按期处置率). A reopen left the supervision level (督办) of the case's
first life: the reopened case showed its red card, and the worker gave no card for its new
overdue (it only raises). The workflow now clears both; this clears them from the cases
that went through those steps before. The supervision is shown, so those cases get a new
version (phones read them again); ``dispatched_at`` is not. The timeline keeps both: the
``dispatch``, ``supervise`` and ``close`` rows.

Revision ID: 0038
Revises: 0037
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0038"
down_revision = "0037"
branch_labels = None
depends_on = None


def _last(actions: str, extra: str = "") -> str:
    return (
        "(SELECT coalesce(max(e.seq), 0) FROM case_events e"
        f" WHERE e.case_id = cases.id AND e.action IN ({actions}){extra})"
    )


# No dispatch (to a worker or a department: into ``dispatched``) since the last step that
# ended the handling leg.
_LAST_END = _last("'return', 'escalate', 'reopen'")
_LAST_DISPATCH = _last("'dispatch'", " AND e.to_status = 'dispatched'")
_ENDED_DISPATCH = sa.text(
    "UPDATE cases SET dispatched_at = NULL"
    f" WHERE dispatched_at IS NOT NULL AND {_LAST_END} > {_LAST_DISPATCH}"
)

# No supervision step (by hand or by the worker) since the last reopen.
_LAST_REOPEN = _last("'reopen'")
_LAST_SUPERVISION = _last("'supervise'")
_FIRST_LIFE_SUPERVISION = sa.text(
    "UPDATE cases SET supervision = 'normal', version = version + 1"
    f" WHERE supervision <> 'normal' AND {_LAST_REOPEN} > {_LAST_SUPERVISION}"
)


def upgrade() -> None:
    op.execute(_ENDED_DISPATCH)
    op.execute(_FIRST_LIFE_SUPERVISION)


def downgrade() -> None:
    # Nothing to put back: the earlier code reads both as a case not dispatched and not
    # supervised, and the cleared values are in the timeline.
    pass
