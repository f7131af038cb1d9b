"""The audit log refuses TRUNCATE (PostgreSQL) and INSERT OR REPLACE of a row (SQLite).

Migration 0002's triggers refuse UPDATE and DELETE, row by row. Two statements went round
them: on PostgreSQL ``TRUNCATE audit_log`` fires no row trigger and emptied the log; on
SQLite ``INSERT OR REPLACE`` (or ``REPLACE INTO``) with the id of an existing row deletes it
without firing its DELETE trigger (SQLite fires those only with recursive triggers on) and
writes another row in its place: any entry could be rewritten.

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # A new row's id is -1 here when the database assigns it: only a row given the id of
        # one that exists (which a plain INSERT refuses anyway) is refused.
        op.execute(
            "CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log "
            "WHEN EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id) "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        )
        return
    # The function of migration 0002 raises whatever fired it.
    op.execute(
        "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_replace")
        return
    op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
