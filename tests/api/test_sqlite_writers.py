"""SQLite: a read that writes (an audit row of what was read), a command and the job
runner begin as writers, so they wait for a request that writes instead of failing.

SQLite refuses at once ("database is locked", whatever the busy timeout) a transaction
begun as a reader that writes after another commit: under one phone reporting, 70–85 % of
the audited reads (exports, a resident's full record, special groups, a patrol's track)
answered 503, and `gridapi users create` failed with a traceback.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from gridapi.db import view_writes

from ..factories import COMMUNITY_A, PASSWORD, TOWNSHIP
from ..test_cli_identity import cli, cli_env  # noqa: F401  (the fixtures: `gridapi …` on this database)

HOLD_S = 1.5


def holding_the_write_lock(engine: Any) -> threading.Thread:
    """Start a writer that takes SQLite's write lock, holds it HOLD_S seconds, commits."""
    taken = threading.Event()

    def write() -> None:
        with engine.connect() as conn:
            conn.execute(text("UPDATE regions SET name = name WHERE code = :c"), {"c": TOWNSHIP})
            taken.set()
            time.sleep(HOLD_S)
            conn.commit()

    writer = threading.Thread(target=write)
    writer.start()
    assert taken.wait(10)
    return writer


@pytest.mark.engines("sqlite")
def test_an_audited_read_waits_for_a_writer(client, world, engine):
    writer = holding_the_write_lock(engine)
    began = time.monotonic()
    r = client.get("/api/v1/exports/cases")
    writer.join()
    assert r.status_code == 200, r.get_json()
    assert time.monotonic() - began >= HOLD_S * 0.5  # it waited, then answered
    with engine.connect() as conn:
        audited = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE action = 'export.download'")
        ).scalar()
    assert audited == 1


@pytest.mark.engines("sqlite")
def test_a_command_waits_for_a_writer(cli, world, engine):  # noqa: F811 (the fixture)
    args = ["users", "create", "--username", "w09", "--password", PASSWORD]
    args += ["--role", "grid_worker", "--grids", COMMUNITY_A + "001"]
    writer = holding_the_write_lock(engine)
    result = cli(*args)
    writer.join()
    assert result.exit_code == 0, result.output
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users WHERE username = 'w09'")).scalar()


def _calls(function: Any) -> set[str]:
    """Return the names a function calls, and those its module's own helpers call."""
    function = inspect.unwrap(function)
    module = inspect.getmodule(function)
    seen: set[str] = set()
    todo = [function]
    done: set[Any] = set()
    while todo:
        f = todo.pop()
        if f in done:
            continue
        done.add(f)
        tree = ast.parse(textwrap.dedent(inspect.getsource(f)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                if name:
                    seen.add(name)
                    helper = getattr(module, name, None)
                    if inspect.isfunction(helper) and inspect.getmodule(helper) is module:
                        todo.append(helper)
    return seen


def test_every_read_that_commits_is_marked_as_one_that_writes(app):
    """A GET view that commits what it did (an audit row of the read) must begin as a
    writer on SQLite: marked with gridapi.db.writes."""
    unmarked, marked = [], []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods or rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        cls = getattr(view, "view_class", None)
        get = getattr(cls, "get", None) if cls is not None else view
        if get is None:
            continue
        try:
            commits = "commit" in _calls(get)
        except (OSError, TypeError):  # no source: a library's view
            continue
        if commits and not view_writes(get):
            unmarked.append(rule.rule)
        elif commits:
            marked.append(rule.rule)
    assert unmarked == []
    assert "/api/v1/persons/<id:person_id>/sensitive" in marked  # the scan finds them


@pytest.mark.engines("sqlite")
def test_the_wal_file_shrinks_back_after_a_large_write(engine):
    """SQLite reuses its -wal file from the start after a checkpoint but never shortened it:
    one large write (a grid set, a resident import) left a -wal file of its size beside the
    database for as long as the server ran. It is cut back to SQLITE_WAL_KEEP_BYTES now."""
    from gridapi.db import SQLITE_WAL_KEEP_BYTES

    wal = Path(engine.url.database + "-wal")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE scratch (id INTEGER PRIMARY KEY, b BLOB)")
    burst = 2 * SQLITE_WAL_KEEP_BYTES
    with engine.begin() as conn:
        for _ in range(burst // 100_000):
            conn.exec_driver_sql("INSERT INTO scratch (b) VALUES (randomblob(100000))")
    assert wal.stat().st_size > burst  # the large write went through the -wal file
    for _ in range(3):  # the next writes, once it was checkpointed
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO scratch (b) VALUES (randomblob(100))")
    assert wal.stat().st_size <= SQLITE_WAL_KEEP_BYTES


@pytest.mark.engines("sqlite")
def test_a_commit_is_on_disk_before_the_answer(client, engine):
    """In WAL mode synchronous=NORMAL syncs the WAL at checkpoints only: a power cut lost
    the last reports a phone had been answered 201 for (and had taken off its queue). Every
    connection the server opens syncs at each commit (FULL = 2), its requests' included."""
    assert client.get("/api/v1/health/live").status_code == 200
    with engine.connect() as first, engine.connect() as second:  # two of the pool
        for conn in (first, second):
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2
