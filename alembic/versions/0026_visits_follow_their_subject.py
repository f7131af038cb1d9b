"""Visits are put back where the resident or household they are about now lives.

A visit (走访) took its resident's or household's grid when it was recorded and kept it:
after a house, a household or a resident moved to another grid, the grid they had left
still read the visit's findings (health notes among them) and exported them, and the grid
they moved to could not see it. Moves now take the visits along (gridapi.services.register);
this puts the visits moved before in their place: a visit naming a resident where the
resident is, one naming only a household where the household is. Visits naming neither
stay where they were recorded. Nothing to undo on the way down.

Revision ID: 0026
Revises: 0025
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

# Plain correlated subqueries: the same statement on SQLite and PostgreSQL. Only rows whose
# place differs are written (grid_code may be NULL: a place that is a community only).
_FOLLOW = """
UPDATE visits SET
  county_code = (SELECT s.county_code FROM {table} s WHERE s.id = visits.{key}),
  region_code = (SELECT s.region_code FROM {table} s WHERE s.id = visits.{key}),
  grid_code = (SELECT s.grid_code FROM {table} s WHERE s.id = visits.{key})
WHERE {which} AND EXISTS (
  SELECT 1 FROM {table} s WHERE s.id = visits.{key} AND (
    s.county_code <> visits.county_code OR s.region_code <> visits.region_code
    OR COALESCE(s.grid_code, '') <> COALESCE(visits.grid_code, '')))
"""


def upgrade() -> None:
    op.execute(_FOLLOW.format(table="persons", key="person_id", which="person_id IS NOT NULL"))
    op.execute(
        _FOLLOW.format(
            table="households",
            key="household_id",
            which="person_id IS NULL AND household_id IS NOT NULL",
        )
    )


def downgrade() -> None:
    pass  # where the visits were is not kept, and is no place to put them back
