"""The change log phones sync from (``GET /api/v1/sync``).

Written by database triggers (migration 0009) on every insert, update and delete of the
tables phones keep — cases, tasks, households (and residents, which touch their household)
— so that no code path, ORM or bulk UPDATE, can change a row without logging it. One
update is left out: a resident's that rewrites nothing but ciphertexts and keyed hashes (a
key rotation, migration 0044), which changes nothing a phone is sent.

One ``upsert`` row per live object (older ones are deleted when a newer one is written), a
``leave`` row with the old keys when an object moves out of a grid, region or assignee, and a
``delete`` row when it is deleted. Rows are read in ``(txid, id)`` order: on PostgreSQL
``txid`` is the writing transaction's id (``pg_current_xact_id()``) and only rows of
transactions older than every transaction still running are handed out, so a change
committed late is never skipped; on SQLite writers are serialised and ``txid`` is 0, and
``id`` (AUTOINCREMENT, never reused) is the commit order.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import Base, UTCDateTime, utcnow

SYNCED_ENTITIES = ("case", "task", "household")


class SyncLog(Base):
    __tablename__ = "sync_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    txid: Mapped[int] = mapped_column(BigInteger, default=0)
    entity: Mapped[str] = mapped_column(String(16))
    entity_id: Mapped[int] = mapped_column(Integer)
    op: Mapped[str] = mapped_column(String(8))
    county_code: Mapped[str | None] = mapped_column(String(6))
    region_code: Mapped[str | None] = mapped_column(String(12))
    grid_code: Mapped[str | None] = mapped_column(String(15))
    # The people with a direct interest: a case's reporting user (user1) and the assignee of a
    # case or task (user2).
    user1: Mapped[int | None] = mapped_column(Integer)
    user2: Mapped[int | None] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        Index("ix_sync_log_txid_id", "txid", "id"),
        Index("ix_sync_log_entity", "entity", "entity_id"),
        Index("ix_sync_log_grid_code", "grid_code", "txid"),
        Index("ix_sync_log_region_code", "region_code", "txid"),
        Index("ix_sync_log_user1", "user1", "txid"),
        Index("ix_sync_log_user2", "user2", "txid"),
        Index("ix_sync_log_at", "at"),
        {"sqlite_autoincrement": True},
    )
