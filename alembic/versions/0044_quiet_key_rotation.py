"""A re-encryption of residents is no change a phone syncs.

``gridapi keys rotate`` rewrites the ciphertexts (and recomputes the keyed hashes) of every
resident, and the triggers on ``persons`` logged each household with a resident as changed:
every phone's next sync downloaded the whole register, though nothing it is sent (masked
values) had changed. An update of a resident that changes nothing but
``id_number_enc``, ``id_number_hmac``, ``phone_enc`` and ``phone_hmac`` is no longer logged.
Any other change is, as before: every change made by the service also bumps ``version`` and
``updated_at``, which a rotation keeps as they were.

PostgreSQL compares the whole row but those columns (a column added later counts without
a word); SQLite's trigger names the columns compared, as they are at this revision (a
column added later must be added to it: ``tests/test_cli_keys.py`` checks).

Revision ID: 0044
Revises: 0043
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0044"
down_revision = "0043"
branch_labels = None
depends_on = None

# The columns a re-encryption rewrites: frozen here.
_KEY_COLUMNS = ("id_number_enc", "id_number_hmac", "phone_enc", "phone_hmac")
# Every other column of persons at this revision (SQLite compares them one by one): frozen.
_COMPARED = (
    "id",
    "uid",
    "county_code",
    "region_code",
    "grid_code",
    "household_id",
    "house_id",
    "relation",
    "name",
    "gender",
    "birth_date",
    "ethnicity",
    "population_type",
    "current_address",
    "registered_address",
    "created_by",
    "created_at",
    "updated_at",
    "version",
)

_PG_BODY = """
CREATE OR REPLACE FUNCTION gridapi_sync_person() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN
{skip}  FOR h IN SELECT * FROM households
           WHERE id IN ((CASE WHEN TG_OP <> 'DELETE' THEN NEW.household_id END),
                        (CASE WHEN TG_OP <> 'INSERT' THEN OLD.household_id END)) LOOP
    PERFORM gridapi_sync_upsert('household', h.id, to_jsonb(h));
  END LOOP;
  RETURN NULL;
END $$;
"""
_KEYS_ARRAY = "ARRAY[" + ", ".join(f"'{c}'" for c in _KEY_COLUMNS) + "]"
_PG_SKIP = f"""  -- A re-encryption (gridapi keys rotate): the same resident, nothing a phone is sent.
  IF TG_OP = 'UPDATE'
     AND to_jsonb(NEW) - {_KEYS_ARRAY}::text[] = to_jsonb(OLD) - {_KEYS_ARRAY}::text[] THEN
    RETURN NULL;
  END IF;
"""

# Revision 0009's SQLite trigger, as it wrote it: frozen.
_COLUMNS = "txid, entity, entity_id, op, county_code, region_code, grid_code, user1, user2, at"
_NOW_SQLITE = "strftime('%Y-%m-%d %H:%M:%f', 'now')"


def _sqlite_upsert(row: str) -> str:
    return (
        f"DELETE FROM sync_log WHERE entity = 'household' AND entity_id = {row}.household_id "
        f"AND op = 'upsert'; "
        f"INSERT INTO sync_log ({_COLUMNS}) SELECT 0, 'household', {row}.household_id, "
        f"'upsert', h.county_code, h.region_code, h.grid_code, NULL, NULL, {_NOW_SQLITE} "
        f"FROM households h WHERE h.id = {row}.household_id;"
    )


def _sqlite_update_trigger(compare: bool) -> str:
    when = "NEW.household_id IS NOT NULL OR OLD.household_id IS NOT NULL"
    if compare:
        changed = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in _COMPARED)
        when = f"({when}) AND ({changed})"
    body = " ".join(_sqlite_upsert(row) for row in ("NEW", "OLD"))
    return (
        f"CREATE TRIGGER sync_persons_update AFTER UPDATE ON persons WHEN {when} BEGIN {body} END"
    )


def _pg() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    if _pg():
        op.execute(_PG_BODY.format(skip=_PG_SKIP))
    else:
        op.execute("DROP TRIGGER sync_persons_update")
        op.execute(_sqlite_update_trigger(compare=True))


def downgrade() -> None:
    if _pg():
        op.execute(_PG_BODY.format(skip=""))
    else:
        op.execute("DROP TRIGGER sync_persons_update")
        op.execute(_sqlite_update_trigger(compare=False))
