"""A new notification is a webhook event, ``notification.created``, for SMS and push gateways.

Nothing sent the notifications the workflow and the worker queue anywhere but the inbox of
``GET /me/notifications``: a gateway relaying them by SMS or app push had nothing to read.
A trigger on ``notifications`` now writes a ``notification.created`` event to the outbox for
every row inserted, in the transaction of the insert (the case step, the overdue job, a
task given), as ``case_events`` and ``tasks`` do (revisions 0010, 0015, 0050). Its payload
carries no personal data: the notification's id, base kind (``overdue``, not
``overdue:handle:…``), time and about (case or task), its recipients as the row holds them
(an account id, a unit code), the task's id, and the case's id and number only when the
case is not of a sensitive category (``"case": null, "sensitive": true`` otherwise; the
event's ``case_id`` and ``category_code``, which the delivery log and category filters
read, are left empty for such a case too). Never the message, which names the case or the
task's title.

Only subscriptions whose owner holds the new permission ``notifications:relay`` may ask
for the event; the stock ``admin`` role gains it here (a county's own roles are left
alone; an app is given it as a scope).

On PostgreSQL the trigger is a statement trigger over the inserted rows (the overdue jobs
insert notices in bulk), like revision 0015's; on SQLite a row trigger.

Revision ID: 0053
Revises: 0052
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0053"
down_revision = "0052"
branch_labels = None
depends_on = None

# Frozen copy of the permission the stock role gains here (see gridapi.security.permissions).
GRANTS = {"admin": ["notifications:relay"]}
EVENT = "notification.created"

_EVENT_COLUMNS = (
    "county_code, event_type, case_id, task_id, region_code, grid_code, category_code, "
    "ordering_key, payload, created_at"
)

# --- SQLite ---------------------------------------------------------------------------------

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
# The case is of a sensitive category (its own flag, or its category's today).
_SQLITE_HIDDEN = (
    "(NEW.case_id IS NOT NULL AND (COALESCE(c.sensitive, 0) OR COALESCE(g.sensitive, 0)))"
)
_SQLITE_TRIGGER = f"""
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
           'recipients', json_object('user_id', NEW.user_id, 'region_code', NEW.region_code),
           'case', json(CASE WHEN NEW.case_id IS NULL OR {_SQLITE_HIDDEN} THEN 'null'
                             ELSE json_object('case_id', c.id, 'number', c.number) END),
           'sensitive', json(CASE WHEN {_SQLITE_HIDDEN} THEN 'true' ELSE 'false' END),
           'task_id', NEW.task_id),
         {_SQLITE_NOW}
  FROM (SELECT 1) AS one
  LEFT JOIN cases c ON c.id = NEW.case_id
  LEFT JOIN categories g ON g.code = c.category_code
  LEFT JOIN tasks t ON t.id = NEW.task_id;
END
"""

# --- PostgreSQL -----------------------------------------------------------------------------

_PG_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
_PG_FUNCTION = f"""
CREATE FUNCTION gridapi_webhook_notifications() RETURNS trigger LANGUAGE plpgsql AS $$
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
           'recipients', json_build_object('user_id', n.user_id, 'region_code', n.region_code),
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


def _grant(grants: dict[str, list[str]], revoke: bool = False) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    for name, current in bind.execute(sa.select(roles.c.name, roles.c.permissions)).all():
        extra = set(grants.get(name, []))
        if not extra:
            continue
        new = set(current) - extra if revoke else set(current) | extra
        bind.execute(roles.update().where(roles.c.name == name).values(permissions=sorted(new)))


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER webhook_notifications AFTER INSERT ON notifications "
            "REFERENCING NEW TABLE AS new_rows "
            "FOR EACH STATEMENT EXECUTE FUNCTION gridapi_webhook_notifications()"
        )
    else:
        op.execute(_SQLITE_TRIGGER)
    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS webhook_notifications ON notifications")
        op.execute("DROP FUNCTION IF EXISTS gridapi_webhook_notifications()")
    else:
        op.execute("DROP TRIGGER IF EXISTS webhook_notifications_insert")
    # The code before this revision knows no such event: its queued events and their
    # deliveries go, and the subscriptions no longer name it.
    op.execute(
        "DELETE FROM webhook_deliveries WHERE event_id IN "
        "(SELECT id FROM webhook_events WHERE event_type = 'notification.created')"
    )
    op.execute("DELETE FROM webhook_events WHERE event_type = 'notification.created'")
    subs = sa.table(
        "webhook_subscriptions", sa.column("id", sa.Integer), sa.column("events", sa.JSON)
    )
    bind = op.get_bind()
    for sub_id, events in bind.execute(sa.select(subs.c.id, subs.c.events)).all():
        if EVENT in (events or []):
            kept = [e for e in events if e != EVENT]
            bind.execute(subs.update().where(subs.c.id == sub_id).values(events=kept))
