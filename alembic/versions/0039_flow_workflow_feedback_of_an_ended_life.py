"""The feedback of a reopened case's earlier life is cleared from the case.

A reopen left ``feedback_at`` set until the next feedback: once the reopened case was
dispatched again, the indicators counted it as handled (处置反馈数) in the period of the
earlier life's feedback, judged against the new deadline (按期处置数), before anybody
reported back on it. The workflow now clears it on reopen, as it clears ``dispatched_at``
(0038); this clears it from the cases reopened before and not fed back since. It is not
shown, so those cases keep their version. The timeline keeps the ``feedback`` row.

Revision ID: 0039_flow
Revises: 0038
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0039_flow"
down_revision = "0038"
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


def upgrade() -> None:
    op.execute(_FIRST_LIFE_FEEDBACK)


def downgrade() -> None:
    # Nothing to put back: the earlier code reads it as a case not fed back since its
    # reopen, and the cleared moment is in the timeline.
    pass
