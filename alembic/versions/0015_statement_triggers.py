"""New rows logged once per statement on PostgreSQL: sync log and webhook outbox.

The sync log entry of every new case, task or household, and the outbox event of every new
case timeline row, were written by a row trigger: PL/pgSQL called once per row, turning the
whole row into JSON (the case's geometry included) to read five columns from it. In a case
report that was a third of the database's time for the statement (docs/performance.md,
"Reports"); in a bulk load it was most of it. These inserts are now logged by statement
triggers reading the statement's new rows (a transition table) with one ``INSERT … SELECT``,
in the order of their ids, as before. Updates and deletes keep the row triggers. The rows
written are the same, column for column. SQLite's triggers are unchanged.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# (table, entity, user1 expression, user2 expression) as revision 0009 derives them: frozen.
_TABLES = (
    (
        "cases",
        "case",
        "CASE WHEN n.reporter LIKE 'user:%' THEN substr(n.reporter, 6)::bigint END",
        "n.assignee_id",
    ),
    ("tasks", "task", "NULL", "n.assignee_id"),
    ("households", "household", "NULL", "NULL"),
)

_SYNC_INSERT = """
CREATE FUNCTION gridapi_sync_insert_{table}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO sync_log (txid, entity, entity_id, op, county_code, region_code, grid_code,
                        user1, user2, at)
  SELECT pg_current_xact_id()::text::bigint, '{entity}', n.id, 'upsert', n.county_code,
         n.region_code, n.grid_code, {user1}, {user2}, now()
  FROM new_rows AS n ORDER BY n.id;
  RETURN NULL;
END $$;
"""

_ISO = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

# Revision 0010's gridapi_webhook_case_event, set-based.
_WEBHOOK_INSERT = f"""
CREATE FUNCTION gridapi_webhook_case_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO webhook_events (county_code, event_type, case_id, task_id, region_code,
                              grid_code, category_code, ordering_key, payload, created_at)
  SELECT c.county_code,
         CASE e.action WHEN 'report' THEN 'case.created' WHEN 'overdue' THEN 'case.overdue'
                       WHEN 'rate' THEN 'case.rated' ELSE 'case.transitioned' END,
         c.id, NULL, c.region_code, c.grid_code, c.category_code, 'case:' || c.id,
         json_build_object('case_id', c.id, 'number', c.number, 'seq', e.seq,
                           'action', e.action, 'from_status', e.from_status,
                           'to_status', e.to_status, 'at', {_ISO.format("e.at")},
                           'actor', e.actor, 'category_code', c.category_code,
                           'region_code', c.region_code, 'grid_code', c.grid_code,
                           'responsible_region_code', e.responsible_region_code,
                           'overdue', c.overdue, 'supervision', c.supervision),
         now()
  FROM new_rows AS e JOIN cases AS c ON c.id = e.case_id
  ORDER BY e.id;
  RETURN NULL;
END $$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, entity, user1, user2 in _TABLES:
        op.execute(_SYNC_INSERT.format(table=table, entity=entity, user1=user1, user2=user2))
        op.execute(f"DROP TRIGGER sync_{table} ON {table}")
        op.execute(
            f"CREATE TRIGGER sync_{table} AFTER UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION gridapi_sync_row('{entity}')"
        )
        op.execute(
            f"CREATE TRIGGER sync_{table}_insert AFTER INSERT ON {table} "
            f"REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION gridapi_sync_insert_{table}()"
        )
    op.execute(_WEBHOOK_INSERT)
    op.execute("DROP TRIGGER webhook_case_events ON case_events")
    op.execute(
        "CREATE TRIGGER webhook_case_events AFTER INSERT ON case_events "
        "REFERENCING NEW TABLE AS new_rows "
        "FOR EACH STATEMENT EXECUTE FUNCTION gridapi_webhook_case_events()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER webhook_case_events ON case_events")
    op.execute("DROP FUNCTION gridapi_webhook_case_events()")
    op.execute(
        "CREATE TRIGGER webhook_case_events AFTER INSERT ON case_events "
        "FOR EACH ROW EXECUTE FUNCTION gridapi_webhook_case_event()"
    )
    for table, entity, _, _ in _TABLES:
        op.execute(f"DROP TRIGGER sync_{table}_insert ON {table}")
        op.execute(f"DROP FUNCTION gridapi_sync_insert_{table}()")
        op.execute(f"DROP TRIGGER sync_{table} ON {table}")
        op.execute(
            f"CREATE TRIGGER sync_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION gridapi_sync_row('{entity}')"
        )
