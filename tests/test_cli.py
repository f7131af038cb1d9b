"""The `gridapi` command on both engines: region and grid imports, migrations, demo data."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result
from sqlalchemy import func, select

from gridapi import create_app
from gridapi.cli import main
from gridapi.db import make_engine as create_engine_for
from gridapi.migrations import alembic_config
from gridapi.models import GridVersion, Region
from gridapi.security.passwords import verify_password

from .factories import (
    CITY,
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    LAT0,
    LON0,
    PROVINCE,
    STEP,
    TOWNSHIP,
    Accounts,
    collection,
    feature,
    rectangle,
    region_rows,
    square,
)

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
CSV_TEXT = (
    "code,name\n"
    f"{PROVINCE},江苏省\n{CITY},苏州市\n{COUNTY},姑苏区\n{TOWNSHIP},平江街道\n"
    f"{COMMUNITY_A},平江社区\n{COMMUNITY_B},观前社区\n"
)


@pytest.fixture(autouse=True)
def _data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands keep their keys where the test's app does (conftest's ``settings``),
    not in the checkout's ./var."""
    monkeypatch.setenv("GRIDAPI_DATA_DIR", str(tmp_path / "data"))


def run(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        main, list(args), env={"GRIDAPI_DATABASE_URL": database_url}, catch_exceptions=False
    )


def write(tmp_path: Path, name: str, content: str | bytes | Any) -> Path:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return path


def count(session: Any, model: type) -> int:
    """Rows of ``model`` in a fresh transaction (the CLI commits through its own engine)."""
    session.rollback()
    n = session.scalar(select(func.count()).select_from(model))
    session.rollback()
    return n


@pytest.fixture
def api(settings) -> Iterator[Any]:
    """A client of an application created after the CLI ran, like a server started later."""
    made: list[Any] = []

    def make() -> Any:
        application = create_app(settings)
        made.append(application)
        return Accounts(application).client("admin")

    yield make
    for application in made:
        application.extensions["gridapi"].engine.dispose()


# ---- regions import --------------------------------------------------------------------------


def assert_tree(client: Any) -> None:
    items = client.get("/api/v1/regions").get_json()["items"]
    assert [(i["code"], i["name"], i["parent_code"]) for i in items] == [
        (PROVINCE, "江苏省", None),
        (CITY, "苏州市", PROVINCE),
        (COUNTY, "姑苏区", CITY),
        (TOWNSHIP, "平江街道", COUNTY),
        (COMMUNITY_A, "平江社区", TOWNSHIP),
        (COMMUNITY_B, "观前社区", TOWNSHIP),
    ]


@pytest.mark.parametrize(
    "encoded", [CSV_TEXT.encode("utf-8"), CSV_TEXT.encode("utf-8-sig")], ids=["utf8", "utf8-bom"]
)
def test_regions_import_csv(database_url, tmp_path, api, encoded):
    path = write(tmp_path, "regions.csv", encoded)
    result = run(database_url, "regions", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "6 created, 0 updated, 0 unchanged" in result.output
    assert_tree(api())
    again = run(database_url, "regions", "import", str(path))
    assert again.exit_code == 0, again.output
    assert "0 created, 0 updated, 6 unchanged" in again.output


def test_regions_import_csv_with_reordered_columns_and_spaces(database_url, tmp_path, api):
    lines = ["name, code"] + [f"{r['name']}, {r['code']}" for r in reversed(region_rows())]
    path = write(tmp_path, "regions.csv", "\n".join(lines) + "\n")
    result = run(database_url, "regions", "import", str(path))
    assert result.exit_code == 0, result.output
    assert_tree(api())


def test_regions_import_json_list(database_url, tmp_path, api):
    path = write(tmp_path, "regions.json", region_rows(with_boundaries=False))
    result = run(database_url, "regions", "import", str(path))
    assert result.exit_code == 0, result.output
    assert "6 created" in result.output
    assert_tree(api())


def test_regions_import_geojson_stores_boundaries(database_url, tmp_path, api):
    rows = region_rows(with_boundaries=True)
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"code": r["code"], "name": r["name"]},
                "geometry": r.get("boundary"),
            }
            for r in rows
        ],
    }
    path = write(tmp_path, "regions.geojson", fc)
    result = run(database_url, "regions", "import", str(path))
    assert result.exit_code == 0, result.output
    client = api()
    assert_tree(client)
    flags = [i["has_boundary"] for i in client.get("/api/v1/regions").get_json()["items"]]
    assert flags == [False, False, False, True, True, True]
    boundary = client.get(f"/api/v1/regions/{COMMUNITY_B}").get_json()["boundary"]
    assert boundary == {
        "type": "MultiPolygon",
        "coordinates": [rectangle(2, 0, 4, 1)["coordinates"]],
    }


def test_regions_import_missing_ancestor_writes_nothing(database_url, tmp_path, session):
    lines = CSV_TEXT.splitlines()
    del lines[4]  # 平江街道 320508001000, the parent of both communities
    path = write(tmp_path, "regions.csv", "\n".join(lines) + "\n")
    result = run(database_url, "regions", "import", str(path))
    assert result.exit_code != 0
    assert TOWNSHIP in result.output
    assert "nothing was imported" in result.output
    assert count(session, Region) == 0


def test_regions_import_of_a_planned_code_names_its_period_and_writes_nothing(
    database_url, tmp_path, api, session
):
    """A code planned to start later (POST with a future valid_from) was refused by the
    index of current codes: the command failed with a database error naming no row. It
    names the row and the planned period now, and writes nothing."""
    from datetime import date, timedelta

    path = write(tmp_path, "regions.csv", CSV_TEXT)
    assert run(database_url, "regions", "import", str(path)).exit_code == 0
    planned, later = "320508001003", (date.today() + timedelta(days=400)).isoformat()
    client = api()
    r = client.post(
        "/api/v1/regions", json={"code": planned, "name": "规划社区", "valid_from": later}
    )
    assert r.status_code == 201, r.get_json()
    renamed = CSV_TEXT.replace("观前社区", "观前新社区") + f"{planned},导入社区\n"
    result = run(database_url, "regions", "import", str(write(tmp_path, "next.csv", renamed)))
    assert result.exit_code != 0
    assert f"row 6 ({planned}): not valid today but planned from {later}" in result.output
    assert "1 row(s) have errors; nothing was imported." in result.output
    assert count(session, Region) == 7
    assert_tree(client)
    assert client.get(f"/api/v1/regions/{planned}?on={later}").get_json()["name"] == "规划社区"


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("regions.csv", "id,title\n1,x\n"),
        ("regions.json", "[{"),
        ("regions.json", {"code": PROVINCE, "name": "江苏省"}),
    ],
)
def test_regions_import_unreadable_file_fails(database_url, tmp_path, session, name, content):
    result = run(database_url, "regions", "import", str(write(tmp_path, name, content)))
    assert result.exit_code != 0
    assert "Error" in result.output
    assert count(session, Region) == 0


# ---- grids import ----------------------------------------------------------------------------


def _version_id(output: str) -> int:
    match = re.search(r"version (\d+) \(region", output)
    assert match, output
    return int(match.group(1))


def test_grids_import_activate_routes_points(database_url, tmp_path, factory, api):
    factory.regions(with_boundaries=False)
    path = write(
        tmp_path, "grids.geojson", collection(feature(A1, square(0, 0)), feature(A2, square(1, 0)))
    )
    result = run(database_url, "grids", "import", str(path), "--activate", "--label", "2026版")
    assert result.exit_code == 0, result.output
    vid = _version_id(result.output)
    assert "2 grids, 0 error(s)" in result.output
    assert f"version {vid} activated" in result.output

    client = api()
    version = client.get(f"/api/v1/grid-versions/{vid}").get_json()
    assert (version["status"], version["label"], version["grid_count"]) == ("active", "2026版", 2)
    for lon, code in ((LON0 + 0.5 * STEP, A1), (LON0 + 1.5 * STEP, A2)):
        answer = client.get(f"/api/v1/locate?lon={lon!r}&lat={LAT0 + 0.5 * STEP!r}").get_json()
        assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (code, vid)


def test_grids_import_without_activate_leaves_a_draft(database_url, tmp_path, factory, api):
    factory.regions(with_boundaries=False)
    path = write(tmp_path, "grids.geojson", collection(feature(A1, square(0, 0))))
    result = run(database_url, "grids", "import", str(path))
    assert result.exit_code == 0, result.output
    vid = _version_id(result.output)
    client = api()
    assert client.get(f"/api/v1/grid-versions/{vid}").get_json()["status"] == "draft"
    answer = client.get(f"/api/v1/locate?lon={LON0 + 0.5 * STEP!r}&lat={LAT0 + 0.5 * STEP!r}")
    assert answer.get_json()["grid"] is None


def test_grids_import_overlap_needs_force(database_url, tmp_path, factory, api, session):
    factory.regions(with_boundaries=False)
    path = write(
        tmp_path,
        "grids.geojson",
        collection(feature(A1, square(0, 0)), feature(A2, square(0.5, 0))),
    )
    refused = run(database_url, "grids", "import", str(path), "--activate")
    assert refused.exit_code != 0
    vid = _version_id(refused.output)
    assert "not activated" in refused.output and "--force" in refused.output
    assert "overlap" in refused.output.lower()
    client = api()
    assert client.get(f"/api/v1/grid-versions/{vid}").get_json()["status"] == "draft"
    point = f"lon={LON0 + 0.25 * STEP!r}&lat={LAT0 + 0.5 * STEP!r}"
    assert client.get(f"/api/v1/locate?{point}").get_json()["grid"] is None

    forced = run(database_url, "grids", "import", str(path), "--activate", "--force")
    assert forced.exit_code == 0, forced.output
    forced_id = _version_id(forced.output)
    assert forced_id != vid
    assert f"version {forced_id} activated" in forced.output
    client = api()
    version = client.get(f"/api/v1/grid-versions/{forced_id}").get_json()
    assert version["status"] == "active" and version["forced"] is True
    answer = client.get(f"/api/v1/locate?{point}").get_json()
    assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A1, forced_id)
    assert count(session, GridVersion) == 2


def test_grids_import_writes_the_report(database_url, tmp_path, factory):
    factory.regions(with_boundaries=False)
    path = write(
        tmp_path,
        "grids.geojson",
        collection(feature(A1, square(0, 0)), feature(A2, square(0.5, 0))),
    )
    report_path = tmp_path / "out" / "report.json"
    report_path.parent.mkdir()
    result = run(database_url, "grids", "import", str(path), "--report", str(report_path))
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["ok"] is False and report["error_count"] >= 1
    assert report["grid_count"] == 2
    kinds = {p["kind"] for g in report["grids"] for p in g["problems"]}
    assert "overlap" in kinds
    assert {g["code"] for g in report["grids"]} <= {A1, A2}


def test_grids_import_with_a_report_it_cannot_write_imports_nothing(
    database_url, tmp_path, factory, session
):
    """--report into a directory that does not exist: the version was imported (committed),
    then writing the report failed with a traceback and --activate was never reached, so a
    draft was left behind that the operator had not been told about."""
    factory.regions(with_boundaries=False)
    path = write(
        tmp_path, "grids.geojson", collection(feature(A1, square(0, 0)), feature(A2, square(1, 0)))
    )
    report_path = tmp_path / "missing" / "report.json"
    result = run(
        database_url, "grids", "import", str(path), "--activate", "--report", str(report_path)
    )
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: --report {report_path}: the directory {report_path.parent} does not exist\n"
    )
    assert count(session, GridVersion) == 0


def test_grids_import_without_regions_fails(database_url, tmp_path, session):
    path = write(tmp_path, "grids.geojson", collection(feature(A1, square(0, 0))))
    result = run(database_url, "grids", "import", str(path), "--activate")
    assert result.exit_code != 0
    assert "regions import" in result.output
    assert count(session, GridVersion) == 0


def test_grids_import_not_json_fails(database_url, tmp_path):
    result = run(database_url, "grids", "import", str(write(tmp_path, "g.geojson", "{nope")))
    assert result.exit_code != 0
    assert "not valid JSON" in result.output


# ---- database and demo -----------------------------------------------------------------------


def test_db_current_prints_the_revision(database_url):
    result = run(database_url, "db", "current")
    assert result.exit_code == 0, result.output
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert result.output.strip() == head


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite database: the demo data is checked on SQLite only (it is slow)."""
    path = tmp_path / "demo.sqlite3"
    shutil.copy(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.mark.parametrize(
    ("password", "problem"),
    [
        ("short", "for the account 'admin': must have at least 10 characters"),
        ("county-Gridapi-2026", "for the account 'county': must not contain the username"),
    ],
)
def test_a_demo_password_the_policy_refuses_is_named_before_anything_is_built(
    sqlite_url, password, problem
):
    """GRIDAPI_DEMO_PASSWORD=short stopped `gridapi demo-data` with a traceback (the policy's
    Unprocessable), after building the county."""
    result = CliRunner().invoke(
        main,
        ["demo-data"],
        env={"GRIDAPI_DATABASE_URL": sqlite_url, "GRIDAPI_DEMO_PASSWORD": password},
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: GRIDAPI_DEMO_PASSWORD does not meet the password policy, {problem}"
    ), result.output
    engine = create_engine_for(sqlite_url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM regions").scalar_one() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM users").scalar_one() == 0
    engine.dispose()


def test_demo_data_loads_once(sqlite_url):
    first = run(sqlite_url, "demo-data")
    assert first.exit_code == 0, first.output
    summary = re.search(
        r"(\d+) regions \((\d+) new\), grid version (\d+) with (\d+) grids, "
        r"(\d+) errors, active",
        first.output,
    )
    assert summary, first.output
    regions, new, version, grids, errors = map(int, summary.groups())
    assert regions == new > 100
    assert grids > 800 and errors == 0
    assert "姑苏区" in first.output

    assert "Demo accounts, password Gridapi-Demo-2026; set GRIDAPI_DEMO_PASSWORD" in first.output

    # Another password the second time (set after the first run): the accounts keep theirs,
    # and the output says so rather than printing the new one as theirs.
    second = CliRunner().invoke(
        main,
        ["demo-data"],
        env={"GRIDAPI_DATABASE_URL": sqlite_url, "GRIDAPI_DEMO_PASSWORD": "Other-Pass-2027"},
        catch_exceptions=False,
    )
    assert second.exit_code == 0, second.output
    assert "Other-Pass-2027" not in second.output
    assert (
        "Demo accounts, made before: each keeps the password it had (`gridapi users "
        "reset-password --username NAME` sets another):\n  admin "
    ) in second.output
    engine = create_engine_for(sqlite_url)
    with engine.connect() as conn:
        admin_hash = conn.exec_driver_sql(
            "SELECT password_hash FROM users WHERE username = 'admin'"
        ).scalar_one()
    engine.dispose()
    assert verify_password(admin_hash, "Gridapi-Demo-2026")
    again = re.search(
        r"(\d+) regions \((\d+) new\), grid version (\d+) with (\d+) grids", second.output
    )
    assert again, second.output
    assert (int(again.group(1)), int(again.group(2)), int(again.group(3)), int(again.group(4))) == (
        regions,
        0,
        version,
        grids,
    )


@pytest.mark.parametrize(
    "command", [("db", "upgrade"), ("db", "current"), ("worker", "--once"), ("serve",)]
)
def test_a_database_that_cannot_be_reached_is_named_without_a_traceback(tmp_path, command):
    """Every command stopped with SQLAlchemy's traceback when PostgreSQL was down (or the
    database not created yet, or the password wrong); the message hides the password."""
    url = "postgresql+psycopg://gridapi:s3cret@127.0.0.1:1/gridapi"
    env = {"GRIDAPI_DATABASE_URL": url, "GRIDAPI_DATA_DIR": str(tmp_path / "data")}
    result = CliRunner().invoke(main, list(command), env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert result.output.startswith(
        "Error: the database postgresql+psycopg://gridapi:***@127.0.0.1:1/gridapi cannot be "
        'used: connection failed: connection to server at "127.0.0.1", port 1 failed'
    ), result.output
    assert "s3cret" not in result.output and len(result.output.splitlines()) == 1


def _a_write_transaction_is_open(database_url: str) -> bool:
    """Whether another connection holds a writing transaction on the database now: SQLite's
    one write lock (a ``BEGIN IMMEDIATE`` that may not wait is refused), or on PostgreSQL a
    backend whose transaction has written (it has a transaction id)."""
    if database_url.startswith("sqlite"):
        # The engine's own SQLite library: another one in the process, closing its handle,
        # dropped the engine's locks (POSIX locks are the process's) and took the WAL away.
        from gridapi.db import sqlite_dbapi

        sqlite3 = sqlite_dbapi()
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=0)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.rollback()
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            conn.close()
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            return bool(
                conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND backend_xid IS NOT NULL"
                ).scalar_one()
            )
    finally:
        engine.dispose()


def test_demo_accounts_are_hashed_before_the_transaction(database_url, monkeypatch):
    """`gridapi demo-data` hashed each demo account's password (argon2) inside the write
    transaction that builds the county: on SQLite that holds the one write lock, and a running
    server's reports waited for every hash. It hashes once, before the transaction."""
    from gridapi.services import identity

    hashed_holding: list[bool] = []
    real = identity.hash_password

    def recording(password: str) -> str:
        hashed_holding.append(_a_write_transaction_is_open(database_url))
        return real(password)

    monkeypatch.setattr(identity, "hash_password", recording)
    result = run(database_url, "demo-data")
    assert result.exit_code == 0, result.output
    assert hashed_holding == [False]
    engine = create_engine_for(database_url)
    with engine.connect() as conn:
        hashes = conn.exec_driver_sql("SELECT password_hash FROM users").scalars().all()
    engine.dispose()
    assert len(hashes) == 10
    assert all(verify_password(h, "Gridapi-Demo-2026") for h in hashes)


def test_demo_data_loads_in_short_transactions_and_a_cut_run_resumes(database_url, monkeypatch):
    """`gridapi demo-data` built the county in one write transaction: about a minute of
    SQLite's one write lock, while a server started beside it waited. It loads in short
    transactions (none open when the next step starts), and a run cut between two is
    resumed by running it again, to the same demo data."""
    from gridapi.services import demo

    held: list[tuple[str, bool]] = []
    cut: set[str] = set()

    def watched(name: str) -> None:
        real = getattr(demo, name)

        def step(*args: Any, **kwargs: Any) -> Any:
            held.append((name, _a_write_transaction_is_open(database_url)))
            if name in cut:
                cut.discard(name)
                raise RuntimeError(f"cut at {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(demo, name, step)

    for name in (  # each the first step of a transaction
        "import_regions",
        "activate_version",
        "load_demo_users",
        "load_demo_register",
    ):
        watched(name)

    def counts() -> dict[str, Any]:
        engine = create_engine_for(database_url)
        try:
            with engine.connect() as conn:
                one = conn.exec_driver_sql
                return {
                    "regions": one("SELECT count(*) FROM regions").scalar_one(),
                    "versions": [
                        tuple(r) for r in one("SELECT grid_count, status FROM grid_versions")
                    ],
                    "users": one("SELECT count(*) FROM users").scalar_one(),
                    "cases": one("SELECT count(*) FROM cases").scalar_one(),
                    "persons": one("SELECT count(*) FROM persons").scalar_one(),
                }
        finally:
            engine.dispose()

    cut.add("activate_version")  # cut after the grids were imported, before activation
    with pytest.raises(RuntimeError, match="cut at activate_version"):
        run(database_url, "demo-data")
    after_cut = counts()
    assert after_cut["regions"] > 100 and after_cut["users"] == 0
    [(grids, status)] = after_cut["versions"]
    assert grids > 800 and status == "draft"  # whole, not in service

    cut.add("load_demo_register")  # cut after the cases, before the register
    with pytest.raises(RuntimeError, match="cut at load_demo_register"):
        run(database_url, "demo-data")
    assert counts() == {**after_cut, "versions": [(grids, "active")], "users": 10, "cases": 11}

    resumed = run(database_url, "demo-data")
    assert resumed.exit_code == 0, resumed.output
    assert f"grid version 1 with {grids} grids, 0 errors, active" in resumed.output
    assert "0 demo cases reported" in resumed.output
    assert "6 demo residents registered" in resumed.output
    assert counts() == {
        **after_cut,
        "versions": [(grids, "active")],
        "users": 10,
        "cases": 11,
        "persons": 6,
    }
    # No step began while an earlier step's transaction held the write lock.
    assert len(held) == 10
    assert [name for name, is_held in held if is_held] == []
