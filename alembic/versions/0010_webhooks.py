"""Webhooks: subscriptions, the outbox of events (written by triggers), the delivery log.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_EVENT_COLUMNS = (
    "county_code, event_type, case_id, task_id, region_code, grid_code, category_code, "
    "ordering_key, payload, created_at"
)

# --- SQLite ---------------------------------------------------------------------------------

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_iso(expr: str) -> str:
    return f"strftime('%Y-%m-%dT%H:%M:%fZ', {expr})"


_SQLITE_CASE_EVENT = f"""
CREATE TRIGGER webhook_case_events_insert AFTER INSERT ON case_events BEGIN
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  SELECT c.county_code,
         CASE NEW.action WHEN 'report' THEN 'case.created' WHEN 'overdue' THEN 'case.overdue'
                         WHEN 'rate' THEN 'case.rated' ELSE 'case.transitioned' END,
         c.id, NULL, c.region_code, c.grid_code, c.category_code, 'case:' || c.id,
         json_object('case_id', c.id, 'number', c.number, 'seq', NEW.seq,
                     'action', NEW.action, 'from_status', NEW.from_status,
                     'to_status', NEW.to_status, 'at', {_sqlite_iso("NEW.at")},
                     'actor', NEW.actor, 'category_code', c.category_code,
                     'region_code', c.region_code, 'grid_code', c.grid_code,
                     'responsible_region_code', NEW.responsible_region_code,
                     'overdue', json(CASE WHEN c.overdue THEN 'true' ELSE 'false' END),
                     'supervision', c.supervision),
         {_SQLITE_NOW}
  FROM cases c WHERE c.id = NEW.case_id;
END
"""


def _sqlite_task_payload(kind: str) -> str:
    return (
        f"json_object('task_id', NEW.id, 'title', NEW.title, 'status', NEW.status, "
        f"'previous_status', {kind}, 'campaign_id', NEW.campaign_id, "
        f"'assignee_id', NEW.assignee_id, 'region_code', NEW.region_code, "
        f"'grid_code', NEW.grid_code, 'category_code', NEW.category_code, "
        f"'due_at', {_sqlite_iso('NEW.due_at')}, "
        f"'overdue', json(CASE WHEN NEW.overdue THEN 'true' ELSE 'false' END), "
        f"'at', {_sqlite_iso('NEW.updated_at')})"
    )


_SQLITE_TASK_VALUES = (
    "NEW.county_code, {type}, NULL, NEW.id, NEW.region_code, NEW.grid_code, "
    "NEW.category_code, 'task:' || NEW.id, {payload}, " + _SQLITE_NOW
)
_TASK_UPDATE_TYPE = """CASE
    WHEN NEW.status IS NOT OLD.status THEN
      CASE NEW.status WHEN 'pending' THEN 'task.reassigned' ELSE 'task.' || NEW.status END
    WHEN NEW.overdue AND NOT OLD.overdue THEN 'task.overdue'
    ELSE 'task.reassigned' END"""

_SQLITE_TASKS = (
    "CREATE TRIGGER webhook_tasks_insert AFTER INSERT ON tasks BEGIN "
    f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES ("
    + _SQLITE_TASK_VALUES.format(type="'task.created'", payload=_sqlite_task_payload("NULL"))
    + "); END",
    "CREATE TRIGGER webhook_tasks_update AFTER UPDATE ON tasks "
    "WHEN NEW.status IS NOT OLD.status OR (NEW.overdue AND NOT OLD.overdue) "
    "OR NEW.assignee_id IS NOT OLD.assignee_id BEGIN "
    f"INSERT INTO webhook_events ({_EVENT_COLUMNS}) VALUES ("
    + _SQLITE_TASK_VALUES.format(type=_TASK_UPDATE_TYPE, payload=_sqlite_task_payload("OLD.status"))
    + "); END",
)

# --- PostgreSQL -----------------------------------------------------------------------------

_PG_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

_PG_FUNCTIONS = f"""
CREATE FUNCTION gridapi_webhook_case_event() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE c record;
BEGIN
  SELECT * INTO c FROM cases WHERE id = NEW.case_id;
  INSERT INTO webhook_events ({_EVENT_COLUMNS})
  VALUES (c.county_code,
          CASE NEW.action WHEN 'report' THEN 'case.created' WHEN 'overdue' THEN 'case.overdue'
                          WHEN 'rate' THEN 'case.rated' ELSE 'case.transitioned' END,
          c.id, NULL, c.region_code, c.grid_code, c.category_code, 'case:' || c.id,
          json_build_object('case_id', c.id, 'number', c.number, 'seq', NEW.seq,
                            'action', NEW.action, 'from_status', NEW.from_status,
                            'to_status', NEW.to_status, 'at', {_PG_ISO.format("NEW.at")},
                            'actor', NEW.actor, 'category_code', c.category_code,
                            'region_code', c.region_code, 'grid_code', c.grid_code,
                            'responsible_region_code', NEW.responsible_region_code,
                            'overdue', c.overdue, 'supervision', c.supervision),
          now());
  RETURN NULL;
END $$;

CREATE FUNCTION gridapi_webhook_task() RETURNS trigger LANGUAGE plpgsql AS $$
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
  ELSE
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


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "webhook_subscriptions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("owner_user_id", sa.Integer(), nullable=True),
        sa.Column("owner_client_id", sa.Integer(), nullable=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("events", sa.JSON(), nullable=False),
        sa.Column("region_codes", sa.JSON(), nullable=False),
        sa.Column("categories", sa.JSON(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("secret_enc", sa.Text(), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "owner_user_id IS NOT NULL OR owner_client_id IS NOT NULL",
            name=op.f("ck_webhook_subscriptions_has_owner"),
        ),
        sa.ForeignKeyConstraint(
            ["owner_client_id"],
            ["api_clients.id"],
            name=op.f("fk_webhook_subscriptions_owner_client_id_api_clients"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["owner_user_id"],
            ["users.id"],
            name=op.f("fk_webhook_subscriptions_owner_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_subscriptions")),
        sa.UniqueConstraint("uid", name=op.f("uq_webhook_subscriptions_uid")),
    )
    op.create_index(
        op.f("ix_webhook_subscriptions_owner_client_id"),
        "webhook_subscriptions",
        ["owner_client_id"],
    )
    op.create_index(
        op.f("ix_webhook_subscriptions_owner_user_id"), "webhook_subscriptions", ["owner_user_id"]
    )

    op.create_table(
        "webhook_events",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=True),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.Integer(), nullable=True),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("subscription_id", sa.Integer(), nullable=True),
        sa.Column("region_code", sa.String(length=12), nullable=True),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("category_code", sa.String(length=4), nullable=True),
        sa.Column("ordering_key", sa.String(length=40), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column("fanned_out_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.id"],
            name=op.f("fk_webhook_events_case_id_cases"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["tasks.id"],
            name=op.f("fk_webhook_events_task_id_tasks"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_events_subscription_id_webhook_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_events")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_events_case_id", "webhook_events", ["case_id"])
    op.create_index("ix_webhook_events_task_id", "webhook_events", ["task_id"])
    op.create_index("ix_webhook_events_subscription_id", "webhook_events", ["subscription_id"])
    op.create_index("ix_webhook_events_created_at", "webhook_events", ["created_at"])
    op.create_index(
        "ix_webhook_events_unfanned",
        "webhook_events",
        ["id"],
        postgresql_where=sa.text("fanned_out_at IS NULL"),
        sqlite_where=sa.text("fanned_out_at IS NULL"),
    )

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", _BIG_ID, autoincrement=True, nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=True),
        sa.Column("subscription_id", sa.Integer(), nullable=False),
        sa.Column("event_id", _BIG_ID, nullable=False),
        sa.Column("ordering_key", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column(
            "next_attempt_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_attempt_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_duration_ms", sa.Integer(), nullable=True),
        sa.Column("delivered_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'dead')",
            name=op.f("ck_webhook_deliveries_status"),
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_events.id"],
            name=op.f("fk_webhook_deliveries_event_id_webhook_events"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subscription_id"],
            ["webhook_subscriptions.id"],
            name=op.f("fk_webhook_deliveries_subscription_id_webhook_subscriptions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_deliveries")),
        sa.UniqueConstraint(
            "subscription_id",
            "event_id",
            name=op.f("uq_webhook_deliveries_subscription_id_event_id"),
        ),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_webhook_deliveries_event_id", "webhook_deliveries", ["event_id"])
    op.create_index("ix_webhook_deliveries_created_at", "webhook_deliveries", ["created_at"])
    op.create_index("ix_webhook_deliveries_log", "webhook_deliveries", ["subscription_id", "id"])
    op.create_index(
        "ix_webhook_deliveries_due",
        "webhook_deliveries",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_webhook_deliveries_ordering",
        "webhook_deliveries",
        ["subscription_id", "ordering_key", "event_id"],
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    )

    if _pg():
        op.execute(_PG_FUNCTIONS)
        op.execute(
            "CREATE TRIGGER webhook_case_events AFTER INSERT ON case_events "
            "FOR EACH ROW EXECUTE FUNCTION gridapi_webhook_case_event()"
        )
        op.execute(
            "CREATE TRIGGER webhook_tasks AFTER INSERT OR UPDATE ON tasks "
            "FOR EACH ROW EXECUTE FUNCTION gridapi_webhook_task()"
        )
    else:
        op.execute(_SQLITE_CASE_EVENT)
        for statement in _SQLITE_TASKS:
            op.execute(statement)


def downgrade() -> None:
    if _pg():
        op.execute("DROP TRIGGER IF EXISTS webhook_case_events ON case_events")
        op.execute("DROP TRIGGER IF EXISTS webhook_tasks ON tasks")
        op.execute("DROP FUNCTION IF EXISTS gridapi_webhook_case_event()")
        op.execute("DROP FUNCTION IF EXISTS gridapi_webhook_task()")
    else:
        for name in ("webhook_case_events_insert", "webhook_tasks_insert", "webhook_tasks_update"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_events")
    op.drop_table("webhook_subscriptions")
