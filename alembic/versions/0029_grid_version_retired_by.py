"""A grid version records the version whose activation retired it.

Activating an older version again is how a rollback is done, but when the version that
replaced it was of a larger region (a city's, over a county's), that one stayed active
outside the county: a stray grid of it kept taking the county's points. Activation now
undoes the version that retired the one activated, when it is still active, and brings
back what that one retired; for that it has to know who retired whom.

Versions retired before this migration get it where their history says so unambiguously:
an activation stamps the versions it retires with its own activation time, so the one
version of an enclosing region activated at that very time retired it. Others stay
unknown, and activating them again works as before.

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def _subtree_prefix(code: str) -> str:
    # A division code is zero-padded below its level: its subtree shares the unpadded part.
    for n in (2, 4, 6, 9):
        if code[n:] == "0" * (12 - n):
            return code[:n]
    return code


def upgrade() -> None:
    op.add_column("grid_versions", sa.Column("retired_by_id", sa.Integer(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text("SELECT id, region_code, status, activated_at, retired_at FROM grid_versions")
    ).all()
    activated: dict[object, list[tuple[int, str]]] = {}
    for vid, region, _, activated_at, _ in rows:
        if activated_at is not None:
            activated.setdefault(activated_at, []).append((vid, _subtree_prefix(region)))
    for vid, region, status, _, retired_at in rows:
        if status != "retired" or retired_at is None:
            continue
        own = _subtree_prefix(region)
        by = [
            other
            for other, prefix in activated.get(retired_at, [])
            if other != vid and own.startswith(prefix)
        ]
        if len(by) == 1:
            bind.execute(
                sa.text("UPDATE grid_versions SET retired_by_id = :by WHERE id = :id"),
                {"by": by[0], "id": vid},
            )


def downgrade() -> None:
    # Not batch mode: SQLite (3.35+) drops a column in place.
    op.drop_column("grid_versions", "retired_by_id")
