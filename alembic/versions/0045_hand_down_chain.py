"""Cases handed down twice and returned once: the unit they may be returned to next.

A case handed down county → township → community and returned by the community lost the
county's hand-down (``cases.handed_down_from`` was cleared), so the township could not return
it to the county. The workflow now keeps it (``services.cases.hand_down_chain``); this sets it
for the open cases held, filed, by a unit the timeline shows was handed the case down and got
it back by a return, with nothing set: the units a hand-down left are pushed, a return pops
the last, any other move to another unit starts afresh. ``handed_down_from`` is not shown, so
those cases keep their version.

Revision ID: 0045
Revises: 0044
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0045"
down_revision = "0044"
branch_labels = None
depends_on = None

_CANDIDATES = sa.text(
    "SELECT c.id FROM cases c WHERE c.status NOT IN ('closed', 'rejected', 'cancelled')"
    " AND c.handed_down_from IS NULL"
    " AND EXISTS (SELECT 1 FROM case_events e WHERE e.case_id = c.id"
    " AND e.action = 'return' AND e.from_status = 'filed')"
    " ORDER BY c.id"
)
_EVENTS = sa.text(
    "SELECT action, from_status, to_status, responsible_region_code FROM case_events"
    " WHERE case_id = :case_id ORDER BY seq"
)
_SET = sa.text("UPDATE cases SET handed_down_from = :unit WHERE id = :case_id")


def _chain(rows: list[sa.Row]) -> list[str]:
    chain: list[str] = []
    unit = None
    for action, before, after, held_by in rows:
        if action == "dispatch" and before == "filed" and after == "filed" and unit:
            chain.append(unit)
        elif action == "return" and before == "filed":
            if chain:
                chain.pop()
        elif held_by is not None and unit is not None and held_by != unit:
            chain.clear()
        if held_by is not None:
            unit = held_by
    return chain


def upgrade() -> None:
    conn = op.get_bind()
    for case_id in conn.execute(_CANDIDATES).scalars().all():
        chain = _chain(list(conn.execute(_EVENTS, {"case_id": case_id})))
        if chain:
            conn.execute(_SET, {"unit": chain[-1], "case_id": case_id})


def downgrade() -> None:
    # Nothing to undo: the earlier code returns a case to the unit this names as well.
    pass
