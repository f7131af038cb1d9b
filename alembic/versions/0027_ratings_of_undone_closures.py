"""A rating given before a case's last reopen is cleared from the case.

A reopen left the reporter's rating on the case: the next closure could not be rated (409
"rated already") and the satisfaction indicators counted, for the new closure, the score of
the closure the reopen undid. The workflow now clears the rating on reopen; this clears it
from the cases reopened before (a new version each, so phones read them again). The rating
stays in the timeline: its ``rate`` row is kept.

Revision ID: 0027
Revises: 0026
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

# The last rate row comes before the last reopen row (no rate row: nothing to compare).
_UNDONE = sa.text(
    "UPDATE cases SET satisfaction = NULL, satisfaction_comment = NULL, rated_at = NULL,"
    " version = version + 1"
    " WHERE satisfaction IS NOT NULL"
    " AND (SELECT max(e.seq) FROM case_events e"
    "      WHERE e.case_id = cases.id AND e.action = 'reopen')"
    "   > (SELECT max(e.seq) FROM case_events e"
    "      WHERE e.case_id = cases.id AND e.action = 'rate')"
)


def upgrade() -> None:
    op.execute(_UNDONE)


def downgrade() -> None:
    # Nothing to put back: the earlier code reads a case without a rating as not rated, and
    # the cleared scores are in the timeline.
    pass
