"""Alembic environment: one migration chain for SQLite/SpatiaLite and PostgreSQL/PostGIS."""

from __future__ import annotations

from geoalchemy2 import alembic_helpers

from alembic import context
from gridapi.config import Settings
from gridapi.db import make_engine
from gridapi.migrations import include_object
from gridapi.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    settings = Settings.from_env()
    url = config.get_main_option("sqlalchemy.url") or settings.database_url
    engine = make_engine(url, spatialite_path=settings.spatialite_path)
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        include_object=include_object,
        process_revision_directives=alembic_helpers.writer,
        render_item=alembic_helpers.render_item,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run gridapi db upgrade")
run_migrations_online()
