"""A campaign's life is told by webhook events: created, closed, cancelled, its deadline moved.

Subscribers heard of every task a campaign made (``task.created``), but not of the campaign:
a city system following a township's campaigns could not tell that one began, ended (its
last task done) or was cancelled, and a deadline a calendar edit moved (revision 0054) was an
audit row only. A trigger on ``campaigns`` now writes ``campaign.created`` (insert),
``campaign.closed`` and ``campaign.cancelled`` (its status changed) and
``campaign.deadline_moved`` (its ``due_at`` changed, which only a calendar edit does) to the
outbox, in the transaction of the change, as ``tasks``' trigger does (revisions 0010, 0050).

The payload: ``campaign_id``, ``title``, ``status``, ``previous_status``, ``region_code``,
``category_code``, ``due_at``, ``at``. The event's ``region_code`` is the campaign's region
(area filters and the owner's scope apply to it) and its ordering key ``campaign:<id>``.
Hearing of a campaign needs ``tasks:read``, as its tasks' events do
(``services.webhooks.EVENT_PERMISSIONS``).

Revision ID: 0055
Revises: 0054
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0055"
down_revision = "0054"
branch_labels = None
depends_on = None

EVENTS = ("campaign.created", "campaign.closed", "campaign.cancelled", "campaign.deadline_moved")

_EVENT_COLUMNS = (
    "county_code, event_type, case_id, task_id, region_code, grid_code, category_code, "
    "ordering_key, payload, created_at"
)

# --- SQLite ---------------------------------------------------------------------------------

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_iso(expr: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {expr})"


def _sqlite_payload(previous: str) -> str:
    return (
        "json_object('campaign_id', NEW.id, 'title', NEW.title, 'status', NEW.status, "
        f"'previous_status', {previous}, 'region_code', NEW.region_code, "
        "'category_code', NEW.category_code, "
        f"'due_at', {_sqlite_iso('NEW.due_at')}, 'at', {_sqlite_iso('NEW.updated_at')})"
    )


def _sqlite_values(kind: str, previous: str) -> str:
    return (
        f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES ("
        f"NEW.county_code, {kind}, NULL, NULL, NEW.region_code, NULL, NEW.category_code, "
        f"'campaign:' || NEW.id, {_sqlite_payload(previous)}, {_SQLITE_NOW});"
    )


_SQLITE_INSERT = (
    "CREATE TRIGGER webhook_campaigns_insert AFTER INSERT ON campaigns BEGIN "
    + _sqlite_values("'campaign.created'", "NULL")
    + " END"
)
_SQLITE_UPDATE = (
    "CREATE TRIGGER webhook_campaigns_update AFTER UPDATE ON campaigns "
    "WHEN NEW.status IS NOT OLD.status OR NEW.due_at IS NOT OLD.due_at BEGIN "
    + _sqlite_values(
        "CASE WHEN NEW.status IS NOT OLD.status THEN 'campaign.' || NEW.status "
        "ELSE 'campaign.deadline_moved' END",
        "OLD.status",
    )
    + " END"
)

# --- PostgreSQL -----------------------------------------------------------------------------

_PG_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
_PG_FUNCTION = f"""
CREATE FUNCTION gridapi_webhook_campaign() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE kind text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    kind := 'campaign.created';
  ELSIF NEW.status IS DISTINCT FROM OLD.status THEN
    kind := 'campaign.' || NEW.status;
  ELSIF NEW.due_at IS DISTINCT FROM OLD.due_at THEN
    kind := 'campaign.deadline_moved';
  ELSE
    RETURN NULL;
  END IF;
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  VALUES (NEW.county_code, kind, NULL, NULL, NEW.region_code, NULL, NEW.category_code,
          'campaign:' || NEW.id,
          json_build_object('campaign_id', NEW.id, 'title', NEW.title, 'status', NEW.status,
                            'previous_status',
                            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END,
                            'region_code', NEW.region_code,
                            'category_code', NEW.category_code,
                            'due_at', {_PG_ISO.format("NEW.due_at")},
                            'at', {_PG_ISO.format("NEW.updated_at")}),
          now());
  RETURN NULL;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER webhook_campaigns AFTER INSERT OR UPDATE ON campaigns "
            "FOR EACH ROW EXECUTE FUNCTION gridapi_webhook_campaign()"
        )
    else:
        op.execute(_SQLITE_INSERT)
        op.execute(_SQLITE_UPDATE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS webhook_campaigns ON campaigns")
        op.execute("DROP FUNCTION IF EXISTS gridapi_webhook_campaign()")
    else:
        op.execute("DROP TRIGGER IF EXISTS webhook_campaigns_insert")
        op.execute("DROP TRIGGER IF EXISTS webhook_campaigns_update")
    # The code before this revision knows no such events: their queued events and deliveries
    # go, and the subscriptions no longer name them.
    names = ", ".join(f"'{e}'" for e in EVENTS)
    op.execute(
        "DELETE FROM webhook_deliveries WHERE event_id IN "
        f"(SELECT id FROM webhook_events WHERE event_type IN ({names}))"
    )
    op.execute(f"DELETE FROM webhook_events WHERE event_type IN ({names})")
    subs = sa.table(
        "webhook_subscriptions", sa.column("id", sa.Integer), sa.column("events", sa.JSON)
    )
    bind = op.get_bind()
    for sub_id, events in bind.execute(sa.select(subs.c.id, subs.c.events)).all():
        kept = [e for e in events or [] if e not in EVENTS]
        if kept != list(events or []):
            bind.execute(subs.update().where(subs.c.id == sub_id).values(events=kept))
