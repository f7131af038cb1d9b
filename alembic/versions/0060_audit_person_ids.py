"""An index of the lookups that found several residents, by resident (PostgreSQL).

A search by a phone number a family shares writes one ``person.lookup`` row naming all the
residents it found in ``summary.person_ids``, with no ``object_id``; since 2dd25c1 a
resident's history and access export read such rows too. Without an index PostgreSQL read
every row of the log to answer one resident's history (a backward scan of the primary key,
filtering: 580 ms on a log of 1.5 million rows, 0.15 ms with this index). A partial GIN
index of those rows' ``person_ids`` (jsonb_path_ops: containment only) answers them
directly. SQLite has no index on a JSON array's members; nothing changes there.

Building it reads the log once (the index holds the few rows it covers), under a lock that
holds writes to the log meanwhile.

Revision ID: 0060
Revises: 0059
Create Date: 2026-12-03
"""

from __future__ import annotations

from alembic import op

revision = "0060"
down_revision = "0059"
branch_labels = None
depends_on = None

# Frozen copies of gridapi.models.identity's texts as of this revision.
PERSON_IDS_SQL = "((summary -> 'person_ids')::jsonb)"
SHARED_ROWS_SQL = "object_id IS NULL AND action = 'person.lookup'"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"CREATE INDEX ix_audit_log_person_ids ON audit_log "
        f"USING gin ({PERSON_IDS_SQL} jsonb_path_ops) WHERE {SHARED_ROWS_SQL}"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX ix_audit_log_person_ids")
