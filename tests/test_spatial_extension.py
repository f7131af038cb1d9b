"""A missing spatial extension stops start-up with a message that says what to do, and one
lost while serving answers 503 with Retry-After and says so in the log."""

from __future__ import annotations

import json
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from gridapi import create_app
from gridapi.cli import main
from gridapi.config import Settings
from gridapi.db import SpatialExtensionMissing, make_engine, spatial_extension_version
from gridapi.errors import SPATIAL_RETRY_AFTER


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


def _loaded_spatialite(engine) -> Path:  # type: ignore[no-untyped-def]
    """Return the file of the mod_spatialite this process loaded for ``engine``."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT spatialite_version()")
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "mod_spatialite" in line:
            return Path(line.split()[-1])
    raise AssertionError("mod_spatialite is not mapped in this process")


def _assert_spatial_503(response, caplog) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 503, response.get_json()
    assert response.headers["Retry-After"] == str(SPATIAL_RETRY_AFTER)
    body = response.get_json()
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 503
    assert "spatial extension" in body["message"]
    logged = [r for r in caplog.records if "spatial extension unavailable" in r.getMessage()]
    assert logged and logged[-1].levelno == logging.ERROR
    assert response.headers["X-Request-ID"] in logged[-1].getMessage()


# Run in a process of its own: glibc's dlopen answers a name it has loaded before from its
# own list, without the file, while the library stays loaded. In a test process where other
# tests' engines keep SpatiaLite loaded, the removed link kept loading (CI saw 200).
_LOST_WHILE_SERVING = """
import dataclasses, json, logging, pickle, sys
from pathlib import Path

from gridapi import create_app
from tests.factories import Accounts

settings, linked = pickle.loads(Path(sys.argv[1]).read_bytes())
app = create_app(dataclasses.replace(settings, spatialite_path=linked))
client = Accounts(app).client("admin")
first = client.get("/api/v1/categories").status_code
Path(linked).unlink()
app.extensions["gridapi"].engine.dispose()  # the next request opens a new connection
logged = []


class Kept(logging.Handler):
    def emit(self, record):
        logged.append([record.levelno, record.getMessage()])


logging.getLogger("gridapi.errors").addHandler(Kept(logging.ERROR))
r = client.get("/api/v1/categories")
print(json.dumps({"first": first, "status": r.status_code, "headers": dict(r.headers),
                  "body": r.get_json(), "logged": logged}))
"""


@pytest.mark.engines("sqlite")
def test_spatialite_lost_while_serving_is_503_with_retry_after(settings, tmp_path):
    """Checked at start-up only: a connection opened later that could not load SpatiaLite
    (the package removed or upgraded under the running server) raised past every handler,
    and the request answered 500 "unexpected error" with a traceback in the log."""
    linked = tmp_path / "lib" / "mod_spatialite.so"
    linked.parent.mkdir()
    engine = make_engine(settings.database_url)
    linked.symlink_to(_loaded_spatialite(engine))
    engine.dispose()
    given = tmp_path / "given.pickle"
    given.write_bytes(pickle.dumps((settings, str(linked))))
    done = subprocess.run(
        [sys.executable, "-c", _LOST_WHILE_SERVING, str(given)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["first"] == 200
    assert seen["status"] == 503, seen["body"]
    assert seen["headers"]["Retry-After"] == str(SPATIAL_RETRY_AFTER)
    body = seen["body"]
    assert set(body) == {"code", "status", "message", "errors"} and body["code"] == 503
    assert "spatial extension" in body["message"]
    logged = [m for level, m in seen["logged"] if "spatial extension unavailable" in m]
    assert logged and seen["headers"]["X-Request-ID"] in logged[-1]
    assert "libsqlite3-mod-spatialite" in logged[-1]


@pytest.mark.engines("sqlite")
def test_a_spatial_function_missing_on_a_connection_is_503_with_retry_after(app, caplog):
    """A connection without SpatiaLite's functions ("no such function: ST_Covers") was
    logged as a database outage like any other; it now says what is missing."""
    bare = create_engine("sqlite://")  # a real SQLite without the extension

    def covers():  # type: ignore[no-untyped-def]
        with bare.connect() as conn:
            conn.exec_driver_sql("SELECT ST_Covers(NULL, NULL)")

    app.add_url_rule("/spatial-probe", view_func=covers)
    caplog.set_level(logging.ERROR, logger="gridapi.errors")
    r = app.test_client().get("/spatial-probe")
    _assert_spatial_503(r, caplog)
    assert "GRIDAPI_SPATIALITE_PATH" in caplog.records[-1].getMessage()


@pytest.fixture
def scratch_postgis_url(postgis_url):  # type: ignore[no-untyped-def]
    """A migrated PostgreSQL database of this test's own, to take PostGIS away from (never
    the shared test database)."""
    from gridapi import migrations

    scratch = make_url(postgis_url).set(database=make_url(postgis_url).database + "_nopostgis")
    admin = make_engine(make_url(postgis_url).set(database="postgres").render_as_string(False))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{scratch.database}"'))
    url = scratch.render_as_string(hide_password=False)
    try:
        engine = make_engine(url)
        migrations.upgrade(engine)
        engine.dispose()
        yield url
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)'))
        admin.dispose()


def test_postgis_dropped_while_serving_is_503_with_retry_after(
    scratch_postgis_url, tmp_path, caplog
):
    """DROP EXTENSION postgis CASCADE (an operator's mistake, a failed upgrade) takes the
    geometry columns with it: every spatial request answered 500 with a traceback."""
    from tests.api.test_cases import center, report_body
    from tests.factories import Accounts, Factory

    settings = Settings(
        database_url=scratch_postgis_url,
        data_dir=str(tmp_path / "data"),
        routing_refresh_seconds=0.0,
        argon2_time_cost=1,
        argon2_memory_kib=1024,
    )
    app = create_app(settings)
    app.config["TESTING"] = True
    try:
        client = Accounts(app).client("admin")
        factory = Factory(client)
        factory.regions()
        factory.grid_version()
        assert client.get("/api/v1/grids").status_code == 200
        engine = app.extensions["gridapi"].engine
        with engine.begin() as conn:
            conn.execute(text("DROP EXTENSION postgis CASCADE"))
        caplog.set_level(logging.ERROR, logger="gridapi.errors")
        for method, path, body in (
            ("get", "/api/v1/grids", None),
            ("get", "/api/v1/regions", None),
            ("post", "/api/v1/cases", report_body(*center(0))),
        ):
            _assert_spatial_503(client.open(path, method=method, json=body), caplog)
            logged = caplog.records[-1].getMessage()
            assert "CREATE EXTENSION postgis" in logged and "backup" in logged
    finally:
        app.extensions["gridapi"].engine.dispose()


@pytest.mark.engines("postgis")
def test_a_postgis_function_failing_is_503_and_another_undefined_one_500(app, caplog):
    """A PostGIS function missing (its library half-upgraded) is an outage to tell the
    operator about; an undefined function that is not PostGIS's stays a bug (500)."""

    def probe(sql: str):  # type: ignore[no-untyped-def]
        def view():  # type: ignore[no-untyped-def]
            with app.extensions["gridapi"].engine.connect() as conn:
                conn.exec_driver_sql(sql)

        return view

    app.add_url_rule("/postgis-probe", "postgis", probe("SELECT ST_CoversNoMore(NULL, NULL)"))
    app.add_url_rule("/other-probe", "other", probe("SELECT no_such_function(1)"))
    caplog.set_level(logging.ERROR, logger="gridapi.errors")
    r = app.test_client().get("/postgis-probe")
    _assert_spatial_503(r, caplog)
    assert "ALTER EXTENSION postgis UPDATE" in caplog.records[-1].getMessage()
    r = app.test_client().get("/other-probe")
    assert r.status_code == 500 and "Retry-After" not in r.headers
