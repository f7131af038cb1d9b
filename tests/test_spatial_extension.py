"""A missing spatial extension stops start-up with a message that says what to do."""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gridapi import create_app
from gridapi.cli import main
from gridapi.config import Settings
from gridapi.db import SpatialExtensionMissing, make_engine, spatial_extension_version


def test_missing_spatialite_stops_app_and_cli(tmp_path):
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'x.sqlite3'}",
        spatialite_path="/nonexistent/mod_spatialite",
    )
    with pytest.raises(SpatialExtensionMissing, match="apt-get install libsqlite3-mod-spatialite"):
        create_app(settings)
    result = CliRunner().invoke(
        main,
        ["db", "upgrade"],
        env={
            "GRIDAPI_DATABASE_URL": settings.database_url,
            "GRIDAPI_SPATIALITE_PATH": "/nonexistent/mod_spatialite",
        },
    )
    assert result.exit_code != 0
    assert "libsqlite3-mod-spatialite" in result.output


def test_postgis_not_enabled_says_to_upgrade(postgis_url):
    bare = make_url(postgis_url).set(database=make_url(postgis_url).database + "_bare")
    admin = make_engine(make_url(postgis_url).set(database="postgres").render_as_string(False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{bare.database}"'))
        conn.execute(text(f'CREATE DATABASE "{bare.database}"'))
    try:
        engine = make_engine(bare.render_as_string(hide_password=False))
        with pytest.raises(SpatialExtensionMissing, match="gridapi db upgrade"):
            spatial_extension_version(engine)
        engine.dispose()
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{bare.database}" WITH (FORCE)'))
        admin.dispose()
