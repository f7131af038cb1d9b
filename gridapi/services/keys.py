"""Field-key maintenance: which key version holds each encrypted value, and rotation.

Rotation re-encrypts every value not under the current (highest) key version with the same
associated data (table, column, row uid), and recomputes the residents' blind indexes
(``persons.id_number_hmac``, ``persons.phone_hmac``) under the current blind-index key. It
runs in batches by id, one transaction per batch, so an interrupted rotation loses at most one
batch and a rerun continues: rows already under the current version are left as they are.

A rewritten row keeps its ``updated_at`` and ``version``: the resident, the record, the
subscription did not change, and an ETag read before the rotation still names it. Nor does
a phone sync it again: the triggers of ``sync_log`` leave out an update of a resident that
changes its ciphertexts and keyed hashes alone (migration 0044).

Each row is written back only if it still holds what was read (compare and swap), so a
resident changed by a running server meanwhile is not overwritten with stale values; it is
counted as ``changed meanwhile`` and picked up by the next run.

``users.phone_hmac`` (sign-in by phone) cannot be recomputed here: accounts keep no
ciphertext of their phone number, only its keyed hash.

A value that fails to decrypt stops the rotation (``RotationError``) with its table, column
and row id, never the value; the batch it was in is rolled back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Table, and_, case, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from ..db import write_transaction
from ..models.register import ENCRYPTED_COLUMNS, Person, SpecialGroupRecord
from ..models.webhooks import WebhookSubscription
from ..security.fields import CiphertextError, FieldCipher
from .register import Keys

# The blind indexes recomputed from a column's plaintext (persons only).
BLIND_INDEXES = {("persons", "id_number"): "id_number", ("persons", "phone"): "phone"}
_MODELS: dict[str, Any] = {
    "persons": Person,
    "special_group_records": SpecialGroupRecord,
    "webhook_subscriptions": WebhookSubscription,
}
NOT_A_CIPHERTEXT = "unrecognised"


def keys_problem(session: Session, keys: Keys) -> str | None:
    """Return why the configured keys are not the ones this database's residents were
    stored with (None when they are, or when no resident is stored).

    A server started with another data directory generated new keys without a word: every
    read of a resident failed its integrity check (500), and residents registered meanwhile
    were sealed under the wrong key. One resident is opened and re-indexed to tell.
    """
    row = session.execute(
        select(Person.uid, Person.id_number_enc, Person.id_number_hmac)
        .where(Person.id_number_enc.is_not(None))
        .order_by(Person.id.desc())
        .limit(1)
    ).first()
    if row is None:
        return None
    try:
        plain = keys.open("persons", "id_number", row.uid, row.id_number_enc)
    except CiphertextError:
        return (
            "The field keys (GRIDAPI_FIELD_KEYS, else field.key in GRIDAPI_DATA_DIR) do not "
            "decrypt the residents this database holds: point GRIDAPI_DATA_DIR at the "
            "directory holding the keys the database was written with, or set the variables."
        )
    if plain is not None and keys.index("id_number", plain) != row.id_number_hmac:
        return (
            "The blind-index key (GRIDAPI_BLIND_INDEX_KEY, else blind_index.key in "
            "GRIDAPI_DATA_DIR) is not the one this database's residents were indexed with: "
            "point GRIDAPI_DATA_DIR at the right directory, or set the variable."
        )
    return None


class RotationError(Exception):
    """A stored value could not be decrypted; the message names where, never what.

    ``totals`` (set by ``rotate_all``): what the batches committed before it did.
    """

    totals: dict[str, RotationTotals]


def _table(name: str) -> Table:
    return _MODELS[name].__table__


def _version_expr(column: Any, dialect: str) -> Any:
    """The ``v<version>`` prefix of a stored value, or 'unrecognised' for anything else."""
    if dialect == "postgresql":
        prefix = func.split_part(column, ":", 1)
    else:
        prefix = func.substr(column, 1, func.instr(column, ":") - 1)
    return case((column.like("v%:%"), prefix), else_=NOT_A_CIPHERTEXT)


@dataclass
class ColumnStatus:
    table: str
    column: str
    counts: dict[int | str, int] = field(default_factory=dict)  # version (or 'unrecognised')

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def key_status(session: Session) -> list[ColumnStatus]:
    """Return, per encrypted column, how many values are under each key version."""
    dialect = session.get_bind().dialect.name
    result: list[ColumnStatus] = []
    for table_name, columns in ENCRYPTED_COLUMNS.items():
        table = _table(table_name)
        for name in columns:
            column = table.c[f"{name}_enc"]
            prefix = _version_expr(column, dialect).label("prefix")
            rows = session.execute(
                select(prefix, func.count()).where(column.is_not(None)).group_by(prefix)
            ).all()
            status = ColumnStatus(table_name, name)
            for raw, n in rows:
                version = FieldCipher.version_of(f"{raw}:") if raw != NOT_A_CIPHERTEXT else None
                key: int | str = version if version is not None else NOT_A_CIPHERTEXT
                status.counts[key] = status.counts.get(key, 0) + n
            result.append(status)
    return result


@dataclass
class BatchResult:
    """What one batch of one table did; ``last_id`` is None when the table is done."""

    table: str
    last_id: int | None
    rows: int = 0
    reencrypted: int = 0  # values
    reindexed: int = 0  # blind indexes
    changed_meanwhile: int = 0  # rows


def _stale_condition(table: Table, columns: Iterable[str], version: int) -> Any:
    """Rows with a value not under ``version`` (used where no blind index is recomputed)."""
    current = f"v{version}:%"
    return or_(
        *(
            and_(table.c[f"{c}_enc"].is_not(None), table.c[f"{c}_enc"].not_like(current))
            for c in columns
        )
    )


def rotate_batch(
    session: Session,
    keys: Keys,
    table_name: str,
    *,
    after: int = 0,
    limit: int = 500,
    reindex: bool = True,
) -> BatchResult:
    """Re-encrypt (and reindex) the next ``limit`` rows of ``table_name`` with id > ``after``.

    Flushes, never commits. Raises RotationError when a value fails to decrypt.
    """
    table = _table(table_name)
    columns = ENCRYPTED_COLUMNS[table_name]
    version = keys.cipher.current_version
    indexed = [c for c in columns if (table_name, c) in BLIND_INDEXES] if reindex else []
    selected = [table.c.id, table.c.uid]
    for c in columns:
        selected.append(table.c[f"{c}_enc"])
    for c in indexed:
        selected.append(table.c[f"{c}_hmac"])
    stmt = select(*selected).where(table.c.id > after)
    if not indexed:  # nothing to recompute: only rows holding an older version matter
        stmt = stmt.where(_stale_condition(table, columns, version))
    rows = session.execute(stmt.order_by(table.c.id).limit(limit)).mappings().all()
    result = BatchResult(table_name, rows[-1]["id"] if len(rows) == limit else None, len(rows))
    for row in rows:
        changes: dict[str, Any] = {}
        for c in columns:
            stored = row[f"{c}_enc"]
            if stored is None:
                continue
            needs_new = FieldCipher.version_of(stored) != version
            if not needs_new and c not in indexed:
                continue
            try:
                plain = keys.open(table_name, c, row["uid"], stored)
            except CiphertextError as exc:
                raise RotationError(
                    f"{table_name}.{c}_enc of row id {row['id']} could not be decrypted "
                    f"({exc}); rotation stopped, nothing of this batch was written"
                ) from None
            assert plain is not None
            if needs_new:
                changes[f"{c}_enc"] = keys.seal(table_name, c, row["uid"], plain)
                result.reencrypted += 1
            if c in indexed:
                digest = keys.index(BLIND_INDEXES[(table_name, c)], plain)
                if digest != row[f"{c}_hmac"]:
                    changes[f"{c}_hmac"] = digest
                    result.reindexed += 1
        if not changes:
            continue
        # Compare and swap: write only if the row still holds everything that was read.
        unchanged = [table.c.id == row["id"]]
        for name in row:
            if name not in ("id", "uid"):
                unchanged.append(table.c[name].is_not_distinct_from(row[name]))
        if "updated_at" in table.c:
            # A re-encryption is no change of the row: its time (and its version, which
            # this UPDATE leaves alone) stay, and the sync log's triggers let it pass.
            changes["updated_at"] = table.c.updated_at
        written = session.execute(
            update(table).where(*unchanged).values(**changes),
            execution_options={"synchronize_session": False},
        ).rowcount
        if written != 1:
            result.changed_meanwhile += 1
            result.reencrypted -= sum(1 for n in changes if n.endswith("_enc"))
            result.reindexed -= sum(1 for n in changes if n.endswith("_hmac"))
    session.flush()
    return result


@dataclass
class RotationTotals:
    rows: int = 0
    reencrypted: int = 0
    reindexed: int = 0
    changed_meanwhile: int = 0
    batches: int = 0

    def add(self, batch: BatchResult) -> None:
        self.rows += batch.rows
        self.reencrypted += batch.reencrypted
        self.reindexed += batch.reindexed
        self.changed_meanwhile += batch.changed_meanwhile
        self.batches += 1

    def as_dict(self) -> dict[str, int]:
        return {
            "rows": self.rows,
            "reencrypted": self.reencrypted,
            "reindexed": self.reindexed,
            "changed_meanwhile": self.changed_meanwhile,
            "batches": self.batches,
        }


def rotate_all(
    sessions: sessionmaker,
    keys: Keys,
    *,
    batch: int = 500,
    reindex: bool = True,
    on_batch: Callable[[BatchResult], None] | None = None,
) -> dict[str, RotationTotals]:
    """Rotate every encrypted table, one committed transaction per batch (the driver).

    Returns the totals per table. Raises RotationError (after rolling back the failing
    batch; earlier batches stay committed, their totals in its ``totals``) when a value
    fails to decrypt.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    totals: dict[str, RotationTotals] = {}
    try:
        _rotate_tables(sessions, keys, totals, batch, reindex, on_batch)
    except RotationError as exc:
        exc.totals = totals
        raise
    return totals


def _rotate_tables(
    sessions: sessionmaker,
    keys: Keys,
    totals: dict[str, RotationTotals],
    batch: int,
    reindex: bool,
    on_batch: Callable[[BatchResult], None] | None,
) -> None:
    for table_name in ENCRYPTED_COLUMNS:
        total = totals.setdefault(table_name, RotationTotals())
        after = 0
        while True:
            # A batch reads, then writes what it read: SQLite's write lock is taken at BEGIN.
            with write_transaction(sessions) as session:
                result = rotate_batch(
                    session, keys, table_name, after=after, limit=batch, reindex=reindex
                )
            total.add(result)
            if on_batch is not None:
                on_batch(result)
            if result.last_id is None:
                break
            after = result.last_id
