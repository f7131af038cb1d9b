"""Notifications to a department are addressed to the department, not to its region.

A department (the county's fire brigade, 城管, …) has the county's code as its region, and a
notice to it was addressed by that code (``region_code``): to "the unit of exactly that
region", which is also the county's office. So a department's members read every notice
addressed to the county office (escalations, returns, supervision of the county's cases),
none of which they can act on, and an SMS gateway relayed them to their phones. A notice
now names the department (``department_id``): a case dispatched to it, rework of one it
handles, and the overdue, supervision and earlier-deadline notices of a case it handles with
nobody of it signed; department members read those and the ones addressed to their
account, never the region's. The webhook event ``notification.created`` and the gateway's
queue name it among the recipients (``recipients.department_id``, additive).

The notices queued before are moved where the rule puts them now: a ``dispatched`` notice
whose text names a department of its region ("派遣至<name>"), and a ``rework`` notice
addressed to a region while its case was with a department nobody of it had signed for,
name that department instead of the region.

No foreign key (a key added to an existing table is a table rebuild on SQLite, and
departments are deactivated, never deleted), as ``task_id`` (0040).

Revision ID: 0057
Revises: 0056
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0057"
down_revision = "0056"
branch_labels = None
depends_on = None

_EVENT_COLUMNS = (
    "county_code, event_type, case_id, task_id, region_code, grid_code, category_code, "
    "ordering_key, payload, created_at"
)
_OLD_RECIPIENTS = "'user_id', {n}.user_id, 'region_code', {n}.region_code"
_NEW_RECIPIENTS = _OLD_RECIPIENTS + ", 'department_id', {n}.department_id"

# Revision 0053's trigger of each engine, the recipients given: a frozen copy.
_SQLITE_HIDDEN = (
    "(NEW.case_id IS NOT NULL AND (COALESCE(c.sensitive, 0) OR COALESCE(g.sensitive, 0)))"
)


def _sqlite_trigger(recipients: str) -> str:
    return f"""
CREATE TRIGGER webhook_notifications_insert AFTER INSERT ON notifications BEGIN
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  SELECT NEW.county_code, 'notification.created',
         CASE WHEN {_SQLITE_HIDDEN} THEN NULL ELSE c.id END, t.id,
         COALESCE(c.region_code, t.region_code), COALESCE(c.grid_code, t.grid_code),
         CASE WHEN {_SQLITE_HIDDEN} THEN NULL ELSE COALESCE(c.category_code, t.category_code) END,
         'notification:' || NEW.id,
         json_object(
           'notification_id', NEW.id,
           'kind', CASE WHEN instr(NEW.kind, ':') > 0
                        THEN substr(NEW.kind, 1, instr(NEW.kind, ':') - 1) ELSE NEW.kind END,
           'about', CASE WHEN NEW.case_id IS NOT NULL THEN 'case'
                         WHEN NEW.task_id IS NOT NULL THEN 'task' END,
           'created_at', strftime('%Y-%m-%dT%H:%M:%fZ', NEW.created_at),
           'recipients', json_object({recipients.format(n="NEW")}),
           'case', json(CASE WHEN NEW.case_id IS NULL OR {_SQLITE_HIDDEN} THEN 'null'
                             ELSE json_object('case_id', c.id, 'number', c.number) END),
           'sensitive', json(CASE WHEN {_SQLITE_HIDDEN} THEN 'true' ELSE 'false' END),
           'task_id', NEW.task_id),
         strftime('%Y-%m-%d %H:%M:%f', 'now')
  FROM (SELECT 1) AS one
  LEFT JOIN cases c ON c.id = NEW.case_id
  LEFT JOIN categories g ON g.code = c.category_code
  LEFT JOIN tasks t ON t.id = NEW.task_id;
END
"""


_PG_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"


def _pg_function(recipients: str) -> str:
    return f"""
CREATE OR REPLACE FUNCTION gridapi_webhook_notifications() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  SELECT n.county_code, 'notification.created',
         CASE WHEN h.hidden THEN NULL ELSE c.id END, t.id,
         COALESCE(c.region_code, t.region_code), COALESCE(c.grid_code, t.grid_code),
         CASE WHEN h.hidden THEN NULL ELSE COALESCE(c.category_code, t.category_code) END,
         'notification:' || n.id,
         json_build_object(
           'notification_id', n.id,
           'kind', split_part(n.kind, ':', 1),
           'about', CASE WHEN n.case_id IS NOT NULL THEN 'case'
                         WHEN n.task_id IS NOT NULL THEN 'task' END,
           'created_at', {_PG_ISO.format("n.created_at")},
           'recipients', json_build_object({recipients.format(n="n")}),
           'case', CASE WHEN n.case_id IS NULL OR h.hidden THEN NULL
                        ELSE json_build_object('case_id', c.id, 'number', c.number) END,
           'sensitive', h.hidden,
           'task_id', n.task_id),
         now()
  FROM new_rows AS n
  LEFT JOIN cases AS c ON c.id = n.case_id
  LEFT JOIN categories AS g ON g.code = c.category_code
  LEFT JOIN tasks AS t ON t.id = n.task_id
  CROSS JOIN LATERAL (
    SELECT n.case_id IS NOT NULL
           AND (COALESCE(c.sensitive, false) OR COALESCE(g.sensitive, false)) AS hidden
  ) AS h
  ORDER BY n.id;
  RETURN NULL;
END $$;
"""


def _trigger(recipients: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_pg_function(recipients))
    else:
        op.execute("DROP TRIGGER IF EXISTS webhook_notifications_insert")
        op.execute(_sqlite_trigger(recipients))


# The notices of before, moved to the department they were meant for.
_DISPATCHED = """
UPDATE notifications SET
  department_id = (SELECT min(d.id) FROM departments d
                   WHERE d.region_code = notifications.region_code
                     AND notifications.message LIKE '%派遣至' || d.name),
  region_code = NULL
WHERE kind LIKE 'dispatched:%' AND user_id IS NULL AND region_code IS NOT NULL
  AND EXISTS (SELECT 1 FROM departments d
              WHERE d.region_code = notifications.region_code
                AND notifications.message LIKE '%派遣至' || d.name)
"""
_REWORK = """
UPDATE notifications SET
  department_id = (SELECT c.department_id FROM cases c WHERE c.id = notifications.case_id),
  region_code = NULL
WHERE kind LIKE 'rework:%' AND user_id IS NULL AND region_code IS NOT NULL
  AND EXISTS (SELECT 1 FROM cases c JOIN departments d ON d.id = c.department_id
              WHERE c.id = notifications.case_id AND d.region_code = notifications.region_code)
"""


def upgrade() -> None:
    op.add_column("notifications", sa.Column("department_id", sa.Integer(), nullable=True))
    op.create_index("ix_notifications_department_id_id", "notifications", ["department_id", "id"])
    op.execute(_DISPATCHED)
    op.execute(_REWORK)
    _trigger(_NEW_RECIPIENTS)


def downgrade() -> None:
    # The code before this revision addresses a department by its region.
    op.execute(
        "UPDATE notifications SET region_code = (SELECT d.region_code FROM departments d"
        " WHERE d.id = notifications.department_id) WHERE department_id IS NOT NULL"
    )
    _trigger(_OLD_RECIPIENTS)
    op.drop_index("ix_notifications_department_id_id", table_name="notifications")
    op.drop_column("notifications", "department_id")
