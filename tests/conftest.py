"""Fixtures: every engine-marked test runs on SQLite/SpatiaLite and on PostgreSQL/PostGIS.

SQLite tests get a fresh copy of a migrated database file; PostgreSQL tests share one
migrated database that is truncated after each test (the routing index reads through its own
connections, so data must really be committed). Without a reachable PostGIS the PostGIS
half is skipped locally, and fails when GRIDAPI_REQUIRE_POSTGIS=1 (as in CI).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
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


TABLES = (
    "export_jobs",
    "webhook_deliveries",
    "webhook_events",
    "webhook_subscriptions",
    "sync_log",
    "task_items",
    "tasks",
    "campaigns",
    "special_group_records",
    "patrol_findings",
    "patrol_checkins",
    "patrol_points",
    "patrols",
    "presence",
    "visits",
    "persons",
    "households",
    "houses",
    "case_attachments",
    "notifications",
    "case_events",
    "cases",
    "case_counters",
    "idempotency_keys",
    "grids",
    "grid_versions",
    "regions",
    "audit_log",
    "refresh_tokens",
    "grid_assignments",
    "users",
    "departments",
    "api_clients",
)


def _migration_seed(filename: str) -> list[dict]:
    """The seed rows of the migration that creates a seeded table."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "alembic" / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"gridapi_migration_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.seed_rows()


def _truncate(engine: Engine) -> None:
    from gridapi.models import CalendarDay, Category

    with engine.begin() as conn:
        # TRUNCATE fires no row triggers: the audit log stays append-only for the application.
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
        # Categories and calendar days are seed data: put them back as the migrations left them.
        conn.execute(text("UPDATE categories SET parent_code = NULL"))
        conn.execute(text("DELETE FROM categories"))
        conn.execute(Category.__table__.insert(), _migration_seed("0003_categories.py"))
        conn.execute(text("DELETE FROM calendar_days"))
        conn.execute(CalendarDay.__table__.insert(), _migration_seed("0004_calendar.py"))
        conn.execute(text("UPDATE index_generations SET generation = 0"))


@pytest.fixture
def database_url(request: pytest.FixtureRequest, engine_name: str, tmp_path: Path) -> Iterator[str]:
    if engine_name == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "gridapi.sqlite3"
        shutil.copy(template, path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgis_url")
    yield url
    engine = make_engine(url)
    _truncate(engine)
    engine.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=str(tmp_path / "data"),
        routing_refresh_seconds=0.0,
        log_level="WARNING",
    )


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
