"""Tasks keep the working time they were given; a moved deadline is a webhook event.

A task given ``due_in`` (so many working hours or days) kept only the moment it came to, so
an edit of the working calendar could not count it again as it counts a case's deadline.
``tasks.due_in_amount`` and ``tasks.due_in_unit`` keep the length, ``tasks.due_in_from`` the
moment it was counted from (the creation, or the reassignment that gave it). Tasks made
before have none of them: their deadlines are kept as the moments they are (nothing tells
whether they were given a length or a moment, and a moment must not move).

The ``tasks`` webhook trigger sends ``task.deadline_moved`` when a task's ``due_at`` changes
and nothing that already sends an event does (only a calendar edit does so): the deadline
moved without a word to the subscribers.

Revision ID: 0050
Revises: 0049
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0050"
down_revision = "0049"
branch_labels = None
depends_on = None

_EVENT_COLUMNS = (
    "county_code, event_type, case_id, task_id, region_code, grid_code, category_code, "
    "ordering_key, payload, created_at"
)

# --- SQLite ---------------------------------------------------------------------------------

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_iso(expr: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {expr})"


_SQLITE_PAYLOAD = (
    "json_object('task_id', NEW.id, 'title', NEW.title, 'status', NEW.status, "
    "'previous_status', OLD.status, 'campaign_id', NEW.campaign_id, "
    "'assignee_id', NEW.assignee_id, 'region_code', NEW.region_code, "
    "'grid_code', NEW.grid_code, 'category_code', NEW.category_code, "
    f"'due_at', {_sqlite_iso('NEW.due_at')}, "
    "'overdue', json(CASE WHEN NEW.overdue THEN 'true' ELSE 'false' END), "
    f"'at', {_sqlite_iso('NEW.updated_at')})"
)


def _sqlite_update_trigger(deadline: bool) -> str:
    when = (
        "NEW.status IS NOT OLD.status OR (NEW.overdue AND NOT OLD.overdue) "
        "OR NEW.assignee_id IS NOT OLD.assignee_id"
    )
    kind = """CASE
    WHEN NEW.status IS NOT OLD.status THEN
      CASE NEW.status WHEN 'pending' THEN 'task.reassigned' ELSE 'task.' || NEW.status END
    WHEN NEW.overdue AND NOT OLD.overdue THEN 'task.overdue'
    {moved}ELSE 'task.reassigned' END"""
    moved = ""
    if deadline:
        when += " OR NEW.due_at IS NOT OLD.due_at"
        moved = (
            "WHEN NEW.assignee_id IS NOT OLD.assignee_id THEN 'task.reassigned'\n    "
            "WHEN NEW.due_at IS NOT OLD.due_at THEN 'task.deadline_moved'\n    "
        )
    return (
        f"CREATE TRIGGER webhook_tasks_update AFTER UPDATE ON tasks WHEN {when} BEGIN "
        f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES ("
        f"NEW.county_code, {kind.format(moved=moved)}, NULL, NEW.id, NEW.region_code, "
        "NEW.grid_code, NEW.category_code, 'task:' || NEW.id, "
        f"{_SQLITE_PAYLOAD}, {_SQLITE_NOW}); END"
    )


# --- PostgreSQL -----------------------------------------------------------------------------

_PG_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"


def _pg_function(deadline: bool) -> str:
    moved = (
        "  ELSIF NEW.due_at IS DISTINCT FROM OLD.due_at THEN\n    kind := 'task.deadline_moved';\n"
        if deadline
        else ""
    )
    return f"""
CREATE OR REPLACE FUNCTION gridapi_webhook_task() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE kind text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    kind := 'task.created';
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    kind := CASE NEW.status WHEN 'pending' THEN 'task.reassigned' ELSE 'task.' || NEW.status END;
  ELSIF NEW.overdue AND NOT OLD.overdue THEN
    kind := 'task.overdue';
  ELSIF NEW.assignee_id IS DISTINCT FROM OLD.assignee_id THEN
    kind := 'task.reassigned';
{moved}  ELSE
    RETURN NULL;
  END IF;
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  VALUES (NEW.county_code, kind, NULL, NEW.id, NEW.region_code, NEW.grid_code,
          NEW.category_code, 'task:' || NEW.id,
          json_build_object('task_id', NEW.id, 'title', NEW.title, 'status', NEW.status,
                            'previous_status',
                            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
                            'campaign_id', NEW.campaign_id, 'assignee_id', NEW.assignee_id,
                            'region_code', NEW.region_code, 'grid_code', NEW.grid_code,
                            'category_code', NEW.category_code,
                            'due_at', {_PG_ISO.format("NEW.due_at")},
                            'overdue', NEW.overdue, 'at', {_PG_ISO.format("NEW.updated_at")}),
          now());
  RETURN NULL;
END $$;
"""


def _set_trigger(deadline: bool) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_pg_function(deadline))
    else:
        op.execute("DROP TRIGGER IF EXISTS webhook_tasks_update")
        op.execute(_sqlite_update_trigger(deadline))


def upgrade() -> None:
    # Plain ADD COLUMN on both engines: a batch copy of ``tasks`` on SQLite would drop its
    # webhook and sync triggers.
    op.add_column("tasks", sa.Column("due_in_amount", sa.Integer(), nullable=True))
    op.add_column("tasks", sa.Column("due_in_unit", sa.String(8), nullable=True))
    op.add_column(
        "tasks", sa.Column("due_in_from", gridapi.models.base.UTCDateTime(), nullable=True)
    )
    _set_trigger(deadline=True)


def downgrade() -> None:
    _set_trigger(deadline=False)
    if op.get_bind().dialect.name == "postgresql":
        for column in ("due_in_from", "due_in_unit", "due_in_amount"):
            op.drop_column("tasks", column)
    else:
        # SQLite drops a column in place (3.35+), keeping the table's triggers.
        for column in ("due_in_from", "due_in_unit", "due_in_amount"):
            op.execute(f"ALTER TABLE tasks DROP COLUMN {column}")
