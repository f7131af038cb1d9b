"""Fixtures: every engine-marked test runs on SQLite/SpatiaLite and on PostgreSQL/PostGIS.

SQLite tests get a fresh copy of a migrated database file; PostgreSQL tests share one
migrated database that is emptied after each test (the routing index reads through its own
connections, so data must really be committed); emptying it switches triggers off, which
takes a superuser. Without a reachable PostGIS the PostGIS
half is skipped locally, and fails when GRIDAPI_REQUIRE_POSTGIS=1 (as in CI).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData, Table, select, text
from sqlalchemy.engine import Engine, make_url

from gridapi.config import Settings
from gridapi.db import make_engine

from .factories import Accounts, Factory

ENGINES = ("sqlite", "postgis")
_PG_BASE = make_url(
    os.environ.get(
        "GRIDAPI_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/gridapi_test"
    )
)
# One database per test session, so concurrent runs on one server never see each other.
PG_URL = _PG_BASE.set(database=f"{_PG_BASE.database}_{os.getpid()}").render_as_string(
    hide_password=False
)
REQUIRE_POSTGIS = os.environ.get("GRIDAPI_REQUIRE_POSTGIS") == "1" or os.environ.get("CI") == "true"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine_name" in metafunc.fixturenames:
        # @pytest.mark.engines("postgis"): a test of behaviour only one engine can show
        # (it is then not run, rather than skipped, on the other).
        marker = metafunc.definition.get_closest_marker("engines")
        engines = marker.args if marker and marker.args else ENGINES
        metafunc.parametrize("engine_name", engines, scope="session")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gridapi import migrations

    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    migrations.upgrade(engine)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return path


def _pg_admin(url: str, *statements: str) -> None:
    target = make_url(url)
    admin = make_engine(target.set(database="postgres").render_as_string(hide_password=False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for statement in statements:
            conn.execute(text(statement.format(db=target.database)))
    admin.dispose()


@pytest.fixture(scope="session")
def postgis_url() -> Iterator[str]:
    from gridapi import migrations

    try:
        _pg_admin(PG_URL, 'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)', 'CREATE DATABASE "{db}"')
        engine = make_engine(PG_URL)
        migrations.upgrade(engine)
        engine.dispose()
    except Exception as exc:  # pragma: no cover - depends on the machine
        message = f"PostGIS not available at {PG_URL}: {exc}"
        if REQUIRE_POSTGIS:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    yield PG_URL
    _pg_admin(PG_URL, 'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


# Tables the migrations seed (and their bookkeeping): put back as the migrations left them.
SEEDED = ("categories", "calendar_days", "calendar_years", "roles")
KEPT = ("alembic_version", "index_generations", "spatial_ref_sys")

_SEED_DIGEST = text(
    "SELECT (SELECT md5(string_agg(c::text, '|' ORDER BY c.code)) FROM categories c)"
    " || (SELECT md5(string_agg(d::text, '|' ORDER BY d.day)) FROM calendar_days d)"
    " || (SELECT md5(string_agg(y::text, '|' ORDER BY y.year)) FROM calendar_years y)"
    " || (SELECT md5(string_agg(r::text, '|' ORDER BY r.name)) FROM roles r)"
)


@dataclasses.dataclass(frozen=True)
class _Reset:
    """Empties the PostgreSQL test database again after a test, read once after migrating."""

    statements: str  # empties every table the migrations do not seed, restarts their ids
    seed_digest: str
    seeds: dict[str, list[dict[str, Any]]]

    @classmethod
    def read(cls, engine: Engine) -> _Reset:
        metadata = MetaData()
        with engine.connect() as conn:
            tables = conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                    " AND tablename <> ALL(:kept) ORDER BY tablename"
                ),
                {"kept": [*SEEDED, *KEPT]},
            ).scalars()
            tables = list(tables)
            sequences = conn.execute(
                text(
                    "SELECT s.oid::regclass::text FROM pg_class s"
                    " JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = s.oid"
                    " AND d.deptype IN ('a', 'i')"
                    " JOIN pg_class t ON t.oid = d.refobjid"
                    " WHERE s.relkind = 'S' AND t.relname = ANY(:tables)"
                ),
                {"tables": tables},
            ).scalars()
            statements = (
                # DELETE with triggers (the audit log's append-only guard, the sync log, foreign
                # keys) off for the transaction. TRUNCATE of ~35 tables took ≈ 0.35 s a test:
                # it makes new files for every table and index; this takes a few milliseconds.
                "SET LOCAL session_replication_role = replica;"
                + "".join(f'DELETE FROM "{table}";' for table in tables)
                + "UPDATE index_generations SET generation = 0;"
                + "SELECT "
                + ", ".join(f"setval('{sequence}', 1, false)" for sequence in sequences)
            )
            seeds = {
                name: [
                    dict(row)
                    for row in conn.execute(
                        select(Table(name, metadata, autoload_with=conn))
                    ).mappings()
                ]
                for name in SEEDED
            }
            digest = conn.execute(_SEED_DIGEST).scalar_one()
        return cls(statements=statements, seed_digest=digest, seeds=seeds)

    def __call__(self, engine: Engine) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(self.statements)
            if conn.execute(_SEED_DIGEST).scalar_one() == self.seed_digest:
                return
            # A test changed seed data (categories, the calendar): put the seeds back.
            metadata = MetaData()
            for name, rows in self.seeds.items():
                table = Table(name, metadata, autoload_with=conn)
                conn.execute(table.delete())
                conn.execute(table.insert(), rows)


@pytest.fixture(scope="session")
def postgis_reset(postgis_url: str) -> _Reset:
    engine = make_engine(postgis_url)
    reset = _Reset.read(engine)
    engine.dispose()
    return reset


@pytest.fixture
def database_url(request: pytest.FixtureRequest, engine_name: str, tmp_path: Path) -> Iterator[str]:
    if engine_name == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "gridapi.sqlite3"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgis_url")
    reset = request.getfixturevalue("postgis_reset")
    yield url
    engine = make_engine(url)
    reset(engine)
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        routing_refresh_seconds=0.0,
        log_level="WARNING",
        # Cheap password hashing: tests sign in thousands of people. The production cost is
        # the default; test_auth checks a sign-in rehashes to the configured parameters.
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )


@pytest.fixture
def usual_umask() -> Iterator[None]:
    """Run the test under umask 022, the one most services get: what the service creates
    must be its own without a stricter umask's help."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    from gridapi import create_app

    application = create_app(settings)
    application.config["TESTING"] = True
    yield application
    application.extensions["gridapi"].engine.dispose()


@pytest.fixture
def anon_client(app):  # type: ignore[no-untyped-def]
    """A client that sends no credentials."""
    return app.test_client()


@pytest.fixture
def client(app, accounts):  # type: ignore[no-untyped-def]
    """A client signed in as an unrestricted admin."""
    return accounts.client("admin")


@pytest.fixture
def accounts(app) -> Accounts:  # type: ignore[no-untyped-def]
    return Accounts(app)


@pytest.fixture
def engine(app) -> Engine:  # type: ignore[no-untyped-def]
    return app.extensions["gridapi"].engine


@pytest.fixture
def session(app):  # type: ignore[no-untyped-def]
    with app.extensions["gridapi"].sessions() as s:
        yield s


@pytest.fixture
def factory(client) -> Factory:  # type: ignore[no-untyped-def]
    return Factory(client)
