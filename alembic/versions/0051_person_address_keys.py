"""Residents are found by their addresses as compared, as houses are.

The search's ``address`` filter matched ``persons.current_address`` and
``registered_address`` as typed: "3号楼2单元" missed "3号楼 2单元", "A座" missed "a座" (on
PostgreSQL; SQLite's LIKE ignores ASCII case), "３号楼" (full-width) missed "3号楼", though
houses have been compared without any of these since 0048. ``persons.current_address_key``
and ``registered_address_key`` hold the addresses as compared (Unicode NFKC, case-folded,
without whitespace); the addresses stay as typed, for display. Every key is computed here.

The keys are derived from columns a phone is sent, as the keyed hashes are from the ID and
phone numbers: computing them is no change of the resident, and a change of them alone is
not logged for sync (PostgreSQL's trigger leaves them out as 0044 leaves out the
ciphertexts; SQLite's names the columns it compares, and these are not among them), or
every phone's next sync downloaded the whole register.

Downgrade drops the keys (and gives PostgreSQL's trigger 0044's body).

Revision ID: 0051
Revises: 0050
Create Date: 2026-12-01
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0051"
down_revision = "0050"
branch_labels = None
depends_on = None

_WHITESPACE = re.compile(r"\s+")
_BATCH = 5000

# Columns a change of which alone is not logged for sync: 0044's, and the keys (frozen here).
_KEY_COLUMNS_0044 = ("id_number_enc", "id_number_hmac", "phone_enc", "phone_hmac")
_KEY_COLUMNS = (*_KEY_COLUMNS_0044, "current_address_key", "registered_address_key")

# The PostgreSQL trigger function as 0044 wrote it, the columns left out given: frozen.
_PG_BODY = """
CREATE OR REPLACE FUNCTION gridapi_sync_person() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE h record;
BEGIN
  -- A re-encryption (gridapi keys rotate), or keys computed again: the same resident,
  -- nothing a phone is sent.
  IF TG_OP = 'UPDATE'
     AND to_jsonb(NEW) - {keys}::text[] = to_jsonb(OLD) - {keys}::text[] THEN
    RETURN NULL;
  END IF;
  FOR h IN SELECT * FROM households
           WHERE id IN ((CASE WHEN TG_OP <> 'DELETE' THEN NEW.household_id END),
                        (CASE WHEN TG_OP <> 'INSERT' THEN OLD.household_id END)) LOOP
    PERFORM gridapi_sync_upsert('household', h.id, to_jsonb(h));
  END LOOP;
  RETURN NULL;
END $$;
"""


def _array(columns: tuple[str, ...]) -> str:
    return "ARRAY[" + ", ".join(f"'{c}'" for c in columns) + "]"


def _address_key(address: str | None) -> str | None:
    # As gridapi.models.register.address_key at this revision (a migration keeps its own).
    if address is None:
        return None
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", address).casefold())


def _fill_address_keys(conn: Any) -> None:
    last = 0
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, current_address, registered_address FROM persons"
                " WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": _BATCH},
        ).all()
        if not rows:
            return
        last = rows[-1].id
        keyed = [
            {
                "id": r.id,
                "current": _address_key(r.current_address),
                "registered": _address_key(r.registered_address),
            }
            for r in rows
            if r.current_address is not None or r.registered_address is not None
        ]
        if keyed:
            conn.execute(
                sa.text(
                    "UPDATE persons SET current_address_key = :current,"
                    " registered_address_key = :registered WHERE id = :id"
                ),
                keyed,
            )


def upgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute(_PG_BODY.format(keys=_array(_KEY_COLUMNS)))
    # Not batch mode: SQLite adds a column in place, keeping the table's triggers.
    op.add_column("persons", sa.Column("current_address_key", sa.Text(), nullable=True))
    op.add_column("persons", sa.Column("registered_address_key", sa.Text(), nullable=True))
    _fill_address_keys(conn)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_BODY.format(keys=_array(_KEY_COLUMNS_0044)))
    # SQLite (3.35+) drops a column in place, keeping the triggers (which name neither).
    op.drop_column("persons", "registered_address_key")
    op.drop_column("persons", "current_address_key")
