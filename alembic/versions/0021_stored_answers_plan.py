"""The stored answers of idempotency keys are read with a plan kept per connection.

``gridapi_stored_answers(caller, keys)`` (revision 0014) is called twice by every report on
PostgreSQL (gridapi.services.intake). As a SQL-language function it was parsed, analysed
and planned at each call: sampled with perf during reports, that was ≈ 16 % of PostgreSQL's
CPU, against ≈ 1 % for the index scan itself. In PL/pgSQL the query's plan is made once
per connection and kept.

A plan kept must be right for the table as it will be, not as it was when the plan was
made: the earlier query (``caller = $1 AND key = ANY($2)``), planned generically while the
table was small, read the caller's keys through the index and filtered the keys out of
them, a scan that grows with the caller's keys (measured: PostgreSQL's CPU per report from
1 to 25 ms within a minute). So each key is looked up by equality on both columns of the
unique index, a plan with no other shape, and the function plans with ``enable_seqscan``
off, so that not even an empty table's plan is a sequential scan. It stays VOLATILE: each
look-up takes a snapshot of its own, and sees a request with the same key that committed
while the report waited for its locks. The answer is the same JSON array, in the order the
keys were stored.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-29
"""

from __future__ import annotations

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

_NEW = """
CREATE OR REPLACE FUNCTION gridapi_stored_answers(p_caller text, p_keys text[]) RETURNS json
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
  k text;
  found_id integer;
  found_item json;
  ids integer[] := '{}';
  items json[] := '{}';
BEGIN
  FOREACH k IN ARRAY coalesce(p_keys, '{}') LOOP
    SELECT i.id, json_build_array(i.key, i.request_hash, i.status_code, i.response,
                                  i.resource_id)
      INTO found_id, found_item
      FROM idempotency_keys AS i WHERE i.caller = p_caller AND i.key = k;
    IF FOUND THEN
      ids := ids || found_id;
      items := items || found_item;
    END IF;
  END LOOP;
  IF cardinality(ids) = 0 THEN
    RETURN NULL;
  END IF;
  RETURN (SELECT json_agg(t.item ORDER BY t.id) FROM unnest(ids, items) AS t(id, item));
END $$;
"""

# As revision 0014 created it.
_OLD = """
CREATE OR REPLACE FUNCTION gridapi_stored_answers(p_caller text, p_keys text[]) RETURNS json
LANGUAGE sql VOLATILE AS $$
  SELECT json_agg(json_build_array(key, request_hash, status_code, response, resource_id)
                  ORDER BY id)
  FROM idempotency_keys WHERE caller = p_caller AND key = ANY(p_keys)
$$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_NEW)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_OLD)
