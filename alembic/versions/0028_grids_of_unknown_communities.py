"""Grids of a community that is not in the administrative tree leave service.

An import stored a grid whose code named a community missing from the tree (a typo, a
code of another county), derived the version's region from it (a city instead of a
community), and a forced activation put it in service: it answered for points of the
county's own communities (the lowest code wins a tie) and their cases went to a community
that does not exist. Imports now leave such grids out and activation never serves them;
this takes out of service the ones activated before. Only communities with no row in the
tree at all: a community withdrawn since keeps its grids until the next activation.

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

_STRAYS = sa.text(
    "UPDATE grids SET in_service = :off"
    " WHERE in_service = :on"
    " AND community_code NOT IN (SELECT code FROM regions WHERE level = 'village')"
).bindparams(off=False, on=True)
# Every server process rebuilds its routing index when the counter moves.
_BUMP = sa.text("UPDATE index_generations SET generation = generation + 1 WHERE name = 'grids'")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.execute(_STRAYS).rowcount:
        bind.execute(_BUMP)


def downgrade() -> None:
    # Nothing to put back: the earlier code serves the same grids once their version is
    # activated again.
    pass
