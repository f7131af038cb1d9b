"""The sync change log for phones, written by triggers on cases, tasks, households, persons.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa

import gridapi.models.base
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# (table, entity, how a user id is derived for user1, user2): frozen here.
_TABLES = (
    ("cases", "case", "reporter", "assignee_id"),
    ("tasks", "task", None, "assignee_id"),
    ("households", "household", None, None),
)


def _sqlite_keys(row: str, user1: str | None, user2: str | None) -> str:
    u1 = (
        f"CASE WHEN {row}.{user1} LIKE 'user:%' THEN CAST(substr({row}.{user1}, 6) AS INTEGER) END"
        if user1
        else "NULL"
    )
    u2 = f"{row}.{user2}" if user2 else "NULL"
    return f"{row}.county_code, {row}.region_code, {row}.grid_code, {u1}, {u2}"


_COLUMNS = "txid, entity, entity_id, op, county_code, region_code, grid_code, user1, user2, at"
_NOW_SQLITE = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_upsert(entity: str, id_expr: str, keys: str, source: str = "") -> str:
    return (
        f"DELETE FROM sync_log WHERE entity = '{entity}' AND entity_id = {id_expr} "
        f"AND op = 'upsert'; "
        f"INSERT INTO sync_log ({_COLUMNS}) SELECT 0, '{entity}', {id_expr}, 'upsert', "
        f"{keys}, {_NOW_SQLITE}{source};"
    )


def _sqlite_triggers() -> None:
    for table, entity, user1, user2 in _TABLES:
        new_keys = _sqlite_keys("NEW", user1, user2)
        old_keys = _sqlite_keys("OLD", user1, user2)
        moved = " OR ".join(
            f"OLD.{c} IS NOT NEW.{c}"
            for c in ("region_code", "grid_code", *(c for c in (user1, user2) if c))
        )
        op.execute(
            f"CREATE TRIGGER sync_{table}_insert AFTER INSERT ON {table} BEGIN "
            f"{_sqlite_upsert(entity, 'NEW.id', new_keys)} END"
        )
        op.execute(
            f"CREATE TRIGGER sync_{table}_update AFTER UPDATE ON {table} BEGIN "
            f"INSERT INTO sync_log ({_COLUMNS}) SELECT 0, '{entity}', OLD.id, 'leave', "
            f"{old_keys}, {_NOW_SQLITE} WHERE {moved}; "
            f"{_sqlite_upsert(entity, 'NEW.id', new_keys)} END"
        )
        op.execute(
            f"CREATE TRIGGER sync_{table}_delete AFTER DELETE ON {table} BEGIN "
            f"DELETE FROM sync_log WHERE entity = '{entity}' AND entity_id = OLD.id "
            f"AND op = 'upsert'; "
            f"INSERT INTO sync_log ({_COLUMNS}) VALUES (0, '{entity}', OLD.id, 'delete', "
            f"{old_keys}, {_NOW_SQLITE}); END"
        )
    # A resident's change is a change of their household (phones keep households with members).
    household = (
        "h.county_code, h.region_code, h.grid_code, NULL, NULL",
        " FROM households h WHERE h.id = {row}.household_id",
    )
    for event, rows in (("INSERT", ("NEW",)), ("UPDATE", ("NEW", "OLD")), ("DELETE", ("OLD",))):
        body = " ".join(
            _sqlite_upsert(
                "household",
                f"{row}.household_id",
                household[0],
                household[1].format(row=row),
            )
            for row in rows
        )
        op.execute(
            f"CREATE TRIGGER sync_persons_{event.lower()} AFTER {event} ON persons "
            f"WHEN {' OR '.join(f'{r}.household_id IS NOT NULL' for r in rows)} BEGIN {body} END"
        )


_PG_FUNCTIONS = r"""
CREATE FUNCTION gridapi_sync_keys(r jsonb, OUT county text, OUT region text, OUT grid text,
                                  OUT user1 bigint, OUT user2 bigint) LANGUAGE sql IMMUTABLE AS $$
  SELECT r->>'county_code', r->>'region_code', r->>'grid_code',
         CASE WHEN r->>'reporter' LIKE 'user:%' THEN substr(r->>'reporter', 6)::bigint END,
         (r->>'assignee_id')::bigint
$$;

CREATE FUNCTION gridapi_sync_upsert(p_entity text, p_id bigint, r jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE k record;
BEGIN
  DELETE FROM sync_log s WHERE s.entity = p_entity AND s.entity_id = p_id AND s.op = 'upsert';
  SELECT * INTO k FROM gridapi_sync_keys(r);
  INSERT INTO sync_log (txid, entity, entity_id, op, county_code, region_code, grid_code,
                        user1, user2, at)
  VALUES (pg_current_xact_id()::text::bigint, p_entity, p_id, 'upsert', k.county, k.region,
          k.grid, k.user1, k.user2, now());
END $$;

CREATE FUNCTION gridapi_sync_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ent text := TG_ARGV[0];
  n jsonb; o jsonb; k record;
BEGIN
  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
  IF TG_OP <> 'INSERT' THEN o := to_jsonb(OLD); END IF;
  IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (
       o->>'region_code' IS DISTINCT FROM n->>'region_code'
    OR o->>'grid_code' IS DISTINCT FROM n->>'grid_code'
    OR o->>'assignee_id' IS DISTINCT FROM n->>'assignee_id'
    OR o->>'reporter' IS DISTINCT FROM n->>'reporter')) THEN
    SELECT * INTO k FROM gridapi_sync_keys(o);
    IF TG_OP = 'DELETE' THEN
      DELETE FROM sync_log s WHERE s.entity = ent AND s.entity_id = (o->>'id')::bigint
        AND s.op = 'upsert';
    END IF;
    INSERT INTO sync_log (txid, entity, entity_id, op, county_code, region_code, grid_code,
                          user1, user2, at)
    VALUES (pg_current_xact_id()::text::bigint, ent, (o->>'id')::bigint,
            CASE WHEN TG_OP = 'DELETE' THEN 'delete' ELSE 'leave' END,
            k.county, k.region, k.grid, k.user1, k.user2, now());
  END IF;
  IF TG_OP <> 'DELETE' THEN
    PERFORM gridapi_sync_upsert(ent, (n->>'id')::bigint, n);
  END IF;
  RETURN NULL;
END $$;

CREATE FUNCTION gridapi_sync_person() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN
  FOR h IN SELECT * FROM households
           WHERE id IN ((CASE WHEN TG_OP <> 'DELETE' THEN NEW.household_id END),
                        (CASE WHEN TG_OP <> 'INSERT' THEN OLD.household_id END)) LOOP
    PERFORM gridapi_sync_upsert('household', h.id, to_jsonb(h));
  END LOOP;
  RETURN NULL;
END $$;
"""


def _pg_triggers() -> None:
    op.execute(_PG_FUNCTIONS)
    for table, entity, _, _ in _TABLES:
        op.execute(
            f"CREATE TRIGGER sync_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION gridapi_sync_row('{entity}')"
        )
    op.execute(
        "CREATE TRIGGER sync_persons AFTER INSERT OR UPDATE OR DELETE ON persons "
        "FOR EACH ROW EXECUTE FUNCTION gridapi_sync_person()"
    )


def _backfill() -> None:
    """One upsert row for every object that exists already (phones sync them all once)."""
    txid = "pg_current_xact_id()::text::bigint" if _pg() else "0"
    now = "now()" if _pg() else _NOW_SQLITE
    user1 = "CASE WHEN reporter LIKE 'user:%' THEN CAST(substr(reporter, 6) AS INTEGER) END"
    for table, entity, u1, u2 in _TABLES:
        op.execute(
            f"INSERT INTO sync_log ({_COLUMNS}) SELECT {txid}, '{entity}', id, 'upsert', "
            f"county_code, region_code, grid_code, {user1 if u1 else 'NULL'}, "
            f"{u2 or 'NULL'}, {now} FROM {table} ORDER BY id"
        )


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.create_table(
        "sync_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("txid", sa.BigInteger(), nullable=False),
        sa.Column("entity", sa.String(length=16), nullable=False),
        sa.Column("entity_id", sa.Integer(), nullable=False),
        sa.Column("op", sa.String(length=8), nullable=False),
        sa.Column("county_code", sa.String(length=6), nullable=True),
        sa.Column("region_code", sa.String(length=12), nullable=True),
        sa.Column("grid_code", sa.String(length=15), nullable=True),
        sa.Column("user1", sa.Integer(), nullable=True),
        sa.Column("user2", sa.Integer(), nullable=True),
        sa.Column("at", gridapi.models.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_log")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sync_log_at", "sync_log", ["at"], unique=False)
    op.create_index("ix_sync_log_entity", "sync_log", ["entity", "entity_id"], unique=False)
    op.create_index("ix_sync_log_grid_code", "sync_log", ["grid_code", "txid"], unique=False)
    op.create_index("ix_sync_log_region_code", "sync_log", ["region_code", "txid"], unique=False)
    op.create_index("ix_sync_log_txid_id", "sync_log", ["txid", "id"], unique=False)
    op.create_index("ix_sync_log_user1", "sync_log", ["user1", "txid"], unique=False)
    op.create_index("ix_sync_log_user2", "sync_log", ["user2", "txid"], unique=False)
    _backfill()
    if _pg():
        _pg_triggers()
    else:
        _sqlite_triggers()


def downgrade() -> None:
    if _pg():
        for table, _, _, _ in _TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS sync_{table} ON {table}")
        op.execute("DROP TRIGGER IF EXISTS sync_persons ON persons")
        for fn in ("gridapi_sync_person()", "gridapi_sync_row()"):
            op.execute(f"DROP FUNCTION IF EXISTS {fn}")
        op.execute("DROP FUNCTION IF EXISTS gridapi_sync_upsert(text, bigint, jsonb)")
        op.execute("DROP FUNCTION IF EXISTS gridapi_sync_keys(jsonb)")
    else:
        for table in ("cases", "tasks", "households", "persons"):
            for event in ("insert", "update", "delete"):
                op.execute(f"DROP TRIGGER IF EXISTS sync_{table}_{event}")
    op.drop_table("sync_log")
