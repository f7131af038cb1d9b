"""The one migration chain builds both engines, goes down and up, and matches the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from gridapi import migrations
from gridapi.db import make_engine
from gridapi.models import Base

HEAD = ScriptDirectory.from_config(migrations.alembic_config()).get_current_head()
OUR_TABLES = {
    "regions",
    "grid_versions",
    "grids",
    "index_generations",
    "roles",
    "users",
    "grid_assignments",
    "departments",
    "api_clients",
    "refresh_tokens",
    "audit_log",
    "categories",
    "calendar_days",
    "cases",
    "case_events",
    "case_attachments",
    "case_counters",
    "idempotency_keys",
    "notifications",
}


def test_models_and_migrations_agree(database_url):
    engine = make_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"include_object": migrations.include_object, "compare_type": True}
        )
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == []


def test_downgrade_to_base_and_upgrade_again(database_url):
    engine = make_engine(database_url)
    assert migrations.current_revision(engine) == HEAD
    migrations.downgrade(engine, "base")
    assert migrations.current_revision(engine) is None
    assert not OUR_TABLES & set(inspect(engine).get_table_names())
    migrations.upgrade(engine)
    assert migrations.current_revision(engine) == HEAD
    assert set(inspect(engine).get_table_names()) >= OUR_TABLES
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("grids")}
    assert {"idx_grids_geom", "ix_grids_community_code"} <= indexes
    engine.dispose()
