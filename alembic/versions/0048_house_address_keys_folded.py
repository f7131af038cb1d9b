"""Addresses are compared without spaces and without case.

0046 compared house addresses in Unicode NFKC with runs of whitespace one space: a space
inside an address ("3号楼 2单元" against "3号楼2单元") or the case of a Latin letter ("A座"
against "a座", "B栋" against "b栋") made another house, though in a Chinese address neither
is another place. ``houses.address_key`` is now the address in NFKC, case-folded, without
whitespace; the address stays as typed, for display. Every key is computed again; houses
this reveals as registered twice are merged as 0046 merges them: the lowest id is kept,
the households, residents, task items and patrol check-ins of the others move to it (the
households and residents with a new version), the others are deleted, and a
``house.merge`` audit row on the kept house names them (actor ``migration:0048``).

A key longer than the column (compatibility characters spelt out, case folding "ß" to
"ss") keeps the key it had: that house is compared as before.

Downgrade computes 0046's keys again. Merged houses are not split again: addresses one
under this comparison are one under 0046's, so its indexes hold.

Revision ID: 0048
Revises: 0047
Create Date: 2026-12-01
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from alembic import op

revision = "0048"
down_revision = "0047"
branch_labels = None
depends_on = None

_AUDIT = sa.table(
    "audit_log",
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("actor_type", sa.String),
    sa.column("actor_id", sa.String),
    sa.column("actor_name", sa.String),
    sa.column("action", sa.String),
    sa.column("object_type", sa.String),
    sa.column("object_id", sa.String),
    sa.column("region_code", sa.String),
    sa.column("summary", sa.JSON),
)

_WHITESPACE = re.compile(r"\s+")
_KEY_MAX = 300
_BATCH = 5000


def _address_key(address: str) -> str:
    # As gridapi.models.register.address_key at this revision (a migration keeps its own).
    return _WHITESPACE.sub("", unicodedata.normalize("NFKC", address).casefold())


def _address_key_0046(address: str) -> str:
    # As 0046 computed it (frozen here, not imported: 0046 may change).
    return _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", address)).strip()


def _fill_address_keys(conn: Any, key_of: Callable[[str], str], too_long: str) -> None:
    """Set every house's key to ``key_of(address)``; a key longer than the column leaves
    ``too_long`` ("kept": the key the house has; "address": the address itself)."""
    last = 0
    while True:
        rows = conn.execute(
            sa.text(
                "SELECT id, address, address_key FROM houses WHERE id > :last ORDER BY id LIMIT :n"
            ),
            {"last": last, "n": _BATCH},
        ).all()
        if not rows:
            return
        last = rows[-1].id
        changed = []
        for r in rows:
            key = key_of(r.address)
            if len(key) > _KEY_MAX:
                key = r.address_key if too_long == "kept" else r.address
            if key != r.address_key:
                changed.append({"id": r.id, "key": key})
        if changed:
            conn.execute(sa.text("UPDATE houses SET address_key = :key WHERE id = :id"), changed)


# --- houses registered twice (as 0046 merges them, frozen here) -------------------------------


def _merge_duplicates() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT id, county_code, region_code, grid, address_key FROM ("
            " SELECT id, county_code, region_code, coalesce(grid_code, '') AS grid, address_key,"
            " count(*) OVER (PARTITION BY county_code, region_code, coalesce(grid_code, ''),"
            " address_key) AS n FROM houses) AS h "
            "WHERE n > 1 ORDER BY county_code, region_code, grid, address_key, id"
        )
    ).all()
    keeper: dict[tuple[str, str, str, str], int] = {}
    merged: dict[int, list[int]] = {}
    regions: dict[int, str] = {}
    for row in rows:
        key = (row.county_code, row.region_code, row.grid, row.address_key)
        if key not in keeper:
            keeper[key] = row.id
            regions[row.id] = row.region_code
        else:
            merged.setdefault(keeper[key], []).append(row.id)
    now = datetime.now(UTC)
    expanding = sa.bindparam("others", expanding=True)
    for kept, others in merged.items():
        params = {"kept": kept, "others": others}
        for table, versioned in (
            ("households", True),
            ("persons", True),
            ("task_items", False),
            ("patrol_checkins", False),
        ):
            bump = ", version = version + 1" if versioned else ""
            conn.execute(
                sa.text(
                    f"UPDATE {table} SET house_id = :kept{bump} WHERE house_id IN :others"
                ).bindparams(expanding),
                params,
            )
        conn.execute(
            sa.text("DELETE FROM houses WHERE id IN :others").bindparams(expanding), params
        )
        op.bulk_insert(
            _AUDIT,
            [
                {
                    "at": now,
                    "actor_type": "system",
                    "actor_id": f"migration:{revision}",
                    "actor_name": f"migration {revision}",
                    "action": "house.merge",
                    "object_type": "house",
                    "object_id": str(kept),
                    "region_code": regions[kept],
                    "summary": {
                        "merged": others,
                        "reason": "registered again at the same address (as compared) and place",
                    },
                }
            ],
        )


def _drop_indexes() -> None:
    op.drop_index("ix_houses_one_per_address_key_in_region", table_name="houses")
    op.drop_index("ix_houses_one_per_address_key_in_grid", table_name="houses")


def _create_indexes() -> None:
    op.create_index(
        "ix_houses_one_per_address_key_in_grid",
        "houses",
        ["county_code", "region_code", "grid_code", "address_key"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NOT NULL"),
        sqlite_where=sa.text("grid_code IS NOT NULL"),
    )
    op.create_index(
        "ix_houses_one_per_address_key_in_region",
        "houses",
        ["county_code", "region_code", "address_key"],
        unique=True,
        postgresql_where=sa.text("grid_code IS NULL"),
        sqlite_where=sa.text("grid_code IS NULL"),
    )


def upgrade() -> None:
    _drop_indexes()  # keys made equal collide until their houses are merged
    _fill_address_keys(op.get_bind(), _address_key, too_long="kept")
    _merge_duplicates()
    _create_indexes()


def downgrade() -> None:
    # Merged houses are not split again. Keys one under 0046's comparison were one under
    # this one, so no two houses left share a key of 0046's.
    _drop_indexes()
    _fill_address_keys(op.get_bind(), _address_key_0046, too_long="address")
    _create_indexes()
