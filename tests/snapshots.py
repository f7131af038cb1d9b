"""Snapshots of test worlds: the rows a fixture's build wrote through the API, copied back
for later tests whose database is in the state that build began from.

A world built through HTTP for every test (regions, grid versions, accounts) was most of an
API test's set-up. The first test of a process (per engine and settings) builds it; the
later ones get its rows back in one transaction, and the fixture's own Python state as it
kept it. A database in another state (a fixture before it wrote something) builds again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from datetime import date
from typing import Any

from sqlalchemy.engine import Connection, Engine

from gridapi import clock
from gridapi.config import Settings

#: engine, settings digest, day
WorldKey = tuple[str, str, date]


def world_key(engine_name: str, settings: Settings) -> WorldKey:
    """What a world's build may depend on: the engine, the settings but the test's own
    paths, and the day (regions and rosters are valid from today)."""
    kept = dataclasses.asdict(settings)
    del kept["database_url"], kept["data_dir"]
    digest = hashlib.sha256(repr(sorted(kept.items())).encode()).hexdigest()
    return engine_name, digest, clock.today()


def _tables() -> list[str]:
    from gridapi.models import Base

    return [t.name for t in Base.metadata.sorted_tables]  # parents before children


@dataclasses.dataclass(frozen=True)
class State:
    """Every table's rows (as sortable text) and, on PostgreSQL, every sequence's position."""

    rows: dict[str, list[str]]
    sequences: dict[str, tuple[int, bool]]

    @classmethod
    def read(cls, engine: Engine) -> State:
        with engine.connect() as conn:
            rows = {
                t: sorted(map(repr, conn.exec_driver_sql(f'SELECT * FROM "{t}"').all()))
                for t in _tables()
            }
            return cls(rows, _sequences(conn))


def _sequences(conn: Connection) -> dict[str, tuple[int, bool]]:
    if conn.dialect.name != "postgresql":
        return {}
    names = conn.exec_driver_sql(
        "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.relkind = 'S' AND n.nspname = 'public'"
    ).scalars()
    return {
        name: tuple(conn.exec_driver_sql(f"SELECT last_value, is_called FROM {name}").one())
        for name in names
    }


@dataclasses.dataclass
class Snapshot:
    """What building a world wrote: the tables it changed, their rows after it (on SQLite
    as values; on PostgreSQL in a schema of their own), and the sequences it moved."""

    counts: dict[str, int]  # every table's row count before the build
    changed: list[str]
    schema: str
    rows: dict[str, list[tuple[Any, ...]]]
    sequences: dict[str, tuple[int, bool]]

    @classmethod
    def save(cls, engine: Engine, before: State, after: State, number: int) -> Snapshot:
        changed = [t for t in _tables() if before.rows[t] != after.rows[t]]
        sequences = {
            name: value
            for name, value in after.sequences.items()
            if before.sequences.get(name) != value
        }
        schema = f"snapshot_{number}"
        rows: dict[str, list[tuple[Any, ...]]] = {}
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
                for t in changed:
                    conn.exec_driver_sql(f'CREATE TABLE "{schema}"."{t}" AS TABLE "{t}"')
            else:
                rows = {
                    t: [tuple(r) for r in conn.exec_driver_sql(f'SELECT * FROM "{t}"')]
                    for t in changed
                }
        counts = {t: len(before.rows[t]) for t in _tables()}
        return cls(counts, changed, schema, rows, sequences)

    def restore(self, engine: Engine) -> bool:
        """Write the world's rows when the database is as it was before the build (only the
        rows the fixtures before it made); return False, writing nothing, when it is not."""
        tables = list(self.counts)
        counts = "SELECT " + ", ".join(f'(SELECT count(*) FROM "{t}")' for t in tables)
        with engine.begin() as conn:
            if list(conn.exec_driver_sql(counts).one()) != list(self.counts.values()):
                return False
            postgres = conn.dialect.name == "postgresql"
            if postgres:
                # Rows as they were written: no trigger (sync log, foreign keys) runs again.
                conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
            else:
                conn.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
            for t in self.changed:
                if self.counts[t]:
                    conn.exec_driver_sql(f'DELETE FROM "{t}"')
                if postgres:
                    conn.exec_driver_sql(f'INSERT INTO "{t}" SELECT * FROM "{self.schema}"."{t}"')
                elif self.rows[t]:
                    marks = ", ".join("?" * len(self.rows[t][0]))
                    conn.exec_driver_sql(f'INSERT INTO "{t}" VALUES ({marks})', self.rows[t])
            for name, (value, called) in self.sequences.items():
                conn.exec_driver_sql(f"SELECT setval('{name}', {value}, {called})")
        return True


_NUMBERS = itertools.count()


def take(engine: Engine, before: State) -> Snapshot:
    """Return the snapshot of what was written since ``before`` was read."""
    return Snapshot.save(engine, before, State.read(engine), next(_NUMBERS))
