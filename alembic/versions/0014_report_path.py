"""The report path on PostgreSQL: sync log entries of new rows in one INSERT, and a function
reading the stored answers of idempotency keys with a snapshot of its own.

Every new case, task or household was logged by deleting its earlier ``upsert`` entry
(there is none for a new row: ids are never reused) and inserting the new one, through a
nested function; about a third of the statement's time in a case report
(docs/performance.md, "Reports"). Updates and deletes are logged as before. SQLite's
triggers are unchanged.

``gridapi_stored_answers(caller, keys)`` returns the answers stored under a caller's keys as
a JSON array. It is VOLATILE so that its query takes a fresh snapshot: called after the
keys' advisory locks in the same statement (gridapi.services.intake), it sees a request
with the same key that committed while this one waited for its locks.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_NEW = """
CREATE OR REPLACE FUNCTION gridapi_sync_row() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ent text := TG_ARGV[0];
  n jsonb; o jsonb; k record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    -- A new row (ids are never reused): nothing logged for it yet to replace.
    n := to_jsonb(NEW);
    INSERT INTO sync_log (txid, entity, entity_id, op, county_code, region_code, grid_code,
                          user1, user2, at)
    SELECT pg_current_xact_id()::text::bigint, ent, (n->>'id')::bigint, 'upsert',
           s.county, s.region, s.grid, s.user1, s.user2, now()
    FROM gridapi_sync_keys(n) AS s;
    RETURN NULL;
  END IF;
  IF TG_OP <> 'DELETE' THEN n := to_jsonb(NEW); END IF;
  o := to_jsonb(OLD);
  IF TG_OP = 'DELETE' OR (
       o->>'region_code' IS DISTINCT FROM n->>'region_code'
    OR o->>'grid_code' IS DISTINCT FROM n->>'grid_code'
    OR o->>'assignee_id' IS DISTINCT FROM n->>'assignee_id'
    OR o->>'reporter' IS DISTINCT FROM n->>'reporter') THEN
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
"""

_STORED = """
CREATE FUNCTION gridapi_stored_answers(p_caller text, p_keys text[]) RETURNS json
LANGUAGE sql VOLATILE AS $$
  SELECT json_agg(json_build_array(key, request_hash, status_code, response, resource_id)
                  ORDER BY id)
  FROM idempotency_keys WHERE caller = p_caller AND key = ANY(p_keys)
$$;
"""

# As revision 0009 created it.
_OLD = """
CREATE OR REPLACE FUNCTION gridapi_sync_row() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NEW)
        op.execute(_STORED)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION gridapi_stored_answers(text, text[])")
        op.execute(_OLD)
