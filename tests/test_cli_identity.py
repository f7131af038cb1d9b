"""Accounts and API clients made on the command line, used through the API (both engines).

The command line and the application share the database and the keys (the `settings`
fixture), as an operator's shell and a running server would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from gridapi import create_app
from gridapi.cli import main
from gridapi.config import Settings
from gridapi.models import AuditEntry, User

from .factories import (
    COMMUNITY_A,
    COMMUNITY_B,
    PASSWORD,
    TOWNSHIP,
    clean_tiling,
    collection,
    feature,
    rectangle,
    region_rows,
    square,
)
from .races import report_while_held

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1, B2 = COMMUNITY_B + "001", COMMUNITY_B + "002"
TOWNSHIP_2, COMMUNITY_C = "320508002000", "320508002001"
C1 = COMMUNITY_C + "001"
TOWNSHIP_GRIDS = [A1, A2, B1, B2]
NEW_PASSWORD = "Brand-New-Pa55!"


@pytest.fixture
def cli_env(settings: Settings, database_url: str) -> dict[str, str]:
    """The environment of `gridapi ...`: the test database with the application's keys."""
    return {
        "GRIDAPI_DATABASE_URL": database_url,
        "GRIDAPI_SECRET_KEY": settings.key_bytes("secret_key").decode(),
        "GRIDAPI_BLIND_INDEX_KEY": settings.key_bytes("blind_index_key").decode(),
        "GRIDAPI_ARGON2_TIME_COST": str(settings.argon2_time_cost),
        "GRIDAPI_ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
        "GRIDAPI_DATA_DIR": settings.data_dir,
    }


@pytest.fixture
def cli(cli_env: dict[str, str]) -> Any:
    """Run `gridapi ...` against the test database; ``stdin`` is its standard input (not a
    terminal)."""

    def run(*args: str, stdin: str | None = None) -> Result:
        return CliRunner().invoke(
            main, list(args), env=cli_env, input=stdin, catch_exceptions=False
        )

    return run


@pytest.fixture
def world(client: Any, factory: Any) -> None:
    """Two townships of one county; grids A1, A2, B1, B2 in the first and C1 in the second."""
    rows = [
        *region_rows(),
        {"code": TOWNSHIP_2, "name": "双塔街道", "boundary": rectangle(4, 0, 5, 1)},
        {"code": COMMUNITY_C, "name": "双塔社区", "boundary": rectangle(4, 0, 5, 1)},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()
    factory.grid_version(collection(*clean_tiling()["features"], feature(C1, square(4, 0))))


@pytest.fixture
def other_server(settings: Settings) -> Iterator[Any]:
    """A test client of a second application on the same database: another server process,
    with its own (empty) cache of signed-in callers."""
    made: list[Any] = []

    def make() -> Any:
        made.append(create_app(settings))
        return made[-1].test_client()

    yield make
    for application in made:
        application.extensions["gridapi"].engine.dispose()


def add_user(cli: Any, username: str, role: str, *extra: str) -> str:
    """Run `gridapi users create` with the test password; return what it printed."""
    args = ["--username", username, "--password", PASSWORD, "--role", role, *extra]
    return ok(cli("users", "create", *args))


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def refused(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def sign_in(client: Any, login: str, password: str = PASSWORD) -> Any:
    return client.post("/api/v1/auth/token", json={"username": login, "password": password})


def tokens(client: Any, login: str, password: str = PASSWORD) -> dict[str, Any]:
    r = sign_in(client, login, password)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def grid_codes(client: Any, headers: dict[str, str]) -> list[str]:
    r = client.get("/api/v1/grids", headers=headers)
    assert r.status_code == 200, r.get_json()
    return [g["code"] for g in r.get_json()["items"]]


# ---- users create ----------------------------------------------------------------------------


def test_a_worker_created_on_the_command_line_signs_in(
    cli: Any, world: None, anon_client: Any, session: Any
) -> None:
    out = add_user(cli, "w01", "grid_worker", "--grids", A1, "--phone", "13812345678")
    assert re.fullmatch(r"user \d+ w01 \(grid_worker\) created\n", out), out
    assert sign_in(anon_client, "w01").status_code == 200
    assert sign_in(anon_client, "13812345678").status_code == 200
    assert sign_in(anon_client, "w01", PASSWORD + "x").status_code == 401
    user = session.scalars(select(User).where(User.username == "w01")).one()
    assert user.phone_masked == "138****5678" and user.region_code == COMMUNITY_A
    (row,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.create"))
    assert row.actor_type == "cli" and row.object_id == str(user.id)
    assert "13812345678" not in str(row.summary) and PASSWORD not in str(row.summary)


def test_workers_and_an_officer_from_the_command_line_each_see_only_their_grids(
    cli: Any, world: None, anon_client: Any
) -> None:
    """The scenario the issue is judged by: two workers in different communities and a
    township officer, all created on the command line, each sees only its own grids."""
    add_user(cli, "worker-a", "grid_worker", "--grids", A1)
    add_user(cli, "worker-b", "grid_worker", "--grids", f"{B1}, {B2}")
    add_user(cli, "officer", "township_office", "--scope", TOWNSHIP, "--name", "平江街道平安办")

    seen = {}
    for username in ("worker-a", "worker-b", "officer"):
        headers = bearer(tokens(anon_client, username)["access_token"])
        seen[username] = grid_codes(anon_client, headers)
        for code in [*TOWNSHIP_GRIDS, C1]:
            r = anon_client.get(f"/api/v1/grids/{code}", headers=headers)
            assert r.status_code == (200 if code in seen[username] else 404), (username, code)
    assert seen == {"worker-a": [A1], "worker-b": [B1, B2], "officer": TOWNSHIP_GRIDS}

    headers = bearer(tokens(anon_client, "officer")["access_token"])
    me = anon_client.get("/api/v1/me", headers=headers).get_json()
    assert me["role"] == "township_office" and "users:write" in me["permissions"]
    names = {
        u["username"] for u in anon_client.get("/api/v1/users", headers=headers).get_json()["items"]
    }
    assert names == {"worker-a", "worker-b", "officer"}


def test_users_list_prints_every_account(cli: Any, world: None) -> None:
    add_user(cli, "worker-a", "grid_worker", "--grids", f"{A1},{A2}")
    add_user(cli, "officer", "township_office", "--scope", TOWNSHIP)
    lines = [line.split("\t") for line in ok(cli("users", "list")).splitlines()]
    by_name = {cols[1]: cols for cols in lines}
    assert set(by_name) == {"admin", "worker-a", "officer"}
    role, grids, active = by_name["worker-a"][2:]
    assert (role, sorted(grids.split(",")), active) == ("grid_worker", [A1, A2], "active")
    assert by_name["officer"][2:] == ["township_office", TOWNSHIP, "active"]
    assert all(cols[0].isdigit() for cols in lines)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "emperor", "--scope", TOWNSHIP], "role"),
        (["--role", "grid_worker", "--scope", TOWNSHIP, "--password", "short"], "password"),
        (["--role", "grid_worker", "--grids", A1, "--password", "Xx-w01-2024!"], "username"),
        (["--role", "grid_worker", "--grids", "320508001001999"], "320508001001999"),
        (["--role", "grid_worker"], "scope_region"),
        (["--role", "grid_worker", "--scope", TOWNSHIP, "--phone", "12345"], "phone"),
    ],
)
def test_users_create_refuses_bad_input_with_a_clear_message(
    cli: Any, world: None, session: Any, args: list[str], message: str
) -> None:
    base = ["users", "create", "--username", "w01"]
    if "--password" not in args:
        base += ["--password", PASSWORD]
    output = refused(cli(*base, *args))
    assert "Error:" in output and message in output, output
    assert session.scalars(select(User).where(User.username == "w01")).first() is None


def test_users_create_refuses_a_taken_username(cli: Any, world: None) -> None:
    add_user(cli, "w01", "grid_worker", "--grids", A1)
    args = ["--username", "w01", "--password", PASSWORD, "--role", "grid_worker", "--grids", A2]
    output = refused(cli("users", "create", *args))
    assert "taken" in output


# ---- users reset-password --------------------------------------------------------------------


def test_reset_password_works_and_old_tokens_die(
    cli: Any, world: None, anon_client: Any, other_server: Any
) -> None:
    add_user(cli, "w01", "grid_worker", "--grids", A1)
    pair = tokens(anon_client, "w01")
    assert anon_client.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 200

    out = ok(cli("users", "reset-password", "--username", "w01", "--password", NEW_PASSWORD))
    assert "password of w01 reset" in out

    # A server process that has not seen the token refuses it at once (a process that has
    # refuses it when its short cache of callers expires, GRIDAPI_AUTH_CACHE_SECONDS).
    later = other_server()
    assert later.get("/api/v1/me", headers=bearer(pair["access_token"])).status_code == 401
    r = anon_client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 401
    assert sign_in(anon_client, "w01").status_code == 401
    fresh = tokens(anon_client, "w01", NEW_PASSWORD)
    assert anon_client.get("/api/v1/me", headers=bearer(fresh["access_token"])).status_code == 200


def test_reset_password_refuses_unknown_users_and_weak_passwords(
    cli: Any, world: None, anon_client: Any
) -> None:
    assert "no user 'ghost'" in refused(
        cli("users", "reset-password", "--username", "ghost", "--password", NEW_PASSWORD)
    )
    add_user(cli, "w01", "grid_worker", "--grids", A1)
    output = refused(cli("users", "reset-password", "--username", "w01", "--password", "weak"))
    assert "password" in output and "policy" in output
    assert sign_in(anon_client, "w01").status_code == 200


# ---- users rename, and migration 0031 (usernames regardless of case) -------------------------


def test_users_rename_gives_a_new_username_unless_another_account_has_it(
    cli: Any, world: None, anon_client: Any, session: Any
) -> None:
    add_user(cli, "w01", "grid_worker", "--grids", A1)
    add_user(cli, "w02", "grid_worker", "--grids", A2)
    assert "taken" in refused(cli("users", "rename", "--username", "w01", "--to", "W02"))
    assert "no user 'ghost'" in refused(cli("users", "rename", "--username", "ghost", "--to", "x1"))
    assert "3-64" in refused(cli("users", "rename", "--username", "w01", "--to", "a b"))
    assert "renamed W01" in ok(cli("users", "rename", "--username", "w01", "--to", "W01"))
    assert sign_in(anon_client, "w01").status_code == 200  # sign-in ignores case
    ok(cli("users", "rename", "--username", "W01", "--to", "zhang.san"))
    assert sign_in(anon_client, "w01").status_code == 401
    assert sign_in(anon_client, "zhang.san").status_code == 200
    renames = session.scalars(select(AuditEntry).where(AuditEntry.action == "user.rename")).all()
    assert [e.summary for e in renames] == [
        {"from": "w01", "to": "W01"},
        {"from": "W01", "to": "zhang.san"},
    ]


def test_usernames_equal_but_for_case_stop_migration_0031_until_one_is_renamed(
    cli: Any, world: None, anon_client: Any, database_url: str
) -> None:
    """A database from before 0031 may hold "alice" and "Alice": the upgrade changes nothing
    and says which accounts clash and how to rename one; renamed, it goes through."""
    from sqlalchemy import inspect, text

    from gridapi import migrations
    from gridapi.db import make_engine

    add_user(cli, "alice", "grid_worker", "--grids", A1)
    engine = make_engine(database_url)
    migrations.downgrade(engine, "0030")
    with engine.begin() as conn:  # as two creates at once could leave it before 0031
        conn.execute(
            text(
                "INSERT INTO users (username, display_name, password_hash, role_name,"
                " scope_region_code, region_code, is_active, token_version,"
                " password_changed_at, created_at, updated_at)"
                " SELECT 'Alice', display_name, password_hash, role_name, scope_region_code,"
                " region_code, is_active, token_version, password_changed_at, created_at,"
                " updated_at FROM users WHERE username = 'alice'"
            )
        )
        ids = dict(conn.execute(text("SELECT username, id FROM users")).all())

    output = refused(cli("db", "upgrade"))
    assert f"'alice' (id {ids['alice']}), 'Alice' (id {ids['Alice']})" in output
    assert "gridapi users rename --username Alice --to alice2" in output
    assert migrations.current_revision(engine) == "0030"
    indexes = {ix["name"] for ix in inspect(engine).get_indexes("users")}
    assert "uq_users_username_lower" not in indexes

    ok(cli("users", "rename", "--username", "Alice", "--to", "alice2"))
    ok(cli("db", "upgrade"))
    assert migrations.current_revision(engine) == migrations.head_revision()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT username FROM users ORDER BY id")).scalars().all() == [
            "admin",
            "alice",
            "alice2",
        ]
    engine.dispose()
    assert sign_in(anon_client, "ALICE").status_code == 200
    assert sign_in(anon_client, "Alice2").status_code == 200


# ---- passwords without --password ------------------------------------------------------------


def test_a_password_comes_from_standard_input_instead_of_the_command_line(
    cli: Any, world: None, anon_client: Any
) -> None:
    """--password shows the password to every account on the machine (ps) and leaves it in
    the shell's history: it is read from standard input instead, with --password-stdin or
    whenever standard input is not a terminal (a pipe, a file)."""
    args = ["--username", "w01", "--role", "grid_worker", "--grids", A1]
    assert "created" in ok(cli("users", "create", *args, "--password-stdin", stdin=PASSWORD))
    assert sign_in(anon_client, "w01").status_code == 200
    reset = ["users", "reset-password", "--username", "w01"]
    assert "reset" in ok(cli(*reset, stdin=f"{NEW_PASSWORD}\nignored\n"))  # a pipe, no option
    assert sign_in(anon_client, "w01", NEW_PASSWORD).status_code == 200
    assert "reset" in ok(cli(*reset, "--password-stdin", stdin=f"{PASSWORD}\r\n"))
    assert sign_in(anon_client, "w01").status_code == 200
    # the policy still applies; nothing on the line, or two sources, are refused
    assert "policy" in refused(cli(*reset, "--password-stdin", stdin="weak\n"))
    assert "standard input" in refused(cli(*reset, stdin=""))
    assert "not both" in refused(cli(*reset, "--password", NEW_PASSWORD, "--password-stdin"))
    assert sign_in(anon_client, "w01").status_code == 200


class Terminal:
    """A command run at a terminal of its own (a pseudo-terminal), as an operator types it."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        import os
        import pty
        import subprocess

        self.fd, tty = pty.openpty()
        self.proc = subprocess.Popen(
            command,
            stdin=tty,
            stdout=tty,
            stderr=tty,
            env=env,
            start_new_session=True,  # no controlling terminal but this one: getpass reads it
        )
        os.close(tty)
        self.seen = bytearray()
        self.read_to = 0

    def expect(self, text: bytes) -> None:
        """Read the output until ``text`` comes after what was expected before."""
        import os
        import select
        import time

        deadline = time.monotonic() + 60
        while text not in self.seen[self.read_to :]:
            assert time.monotonic() < deadline, bytes(self.seen)
            if select.select([self.fd], [], [], 1)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the command ended and closed the terminal
                    chunk = b""
                assert chunk, bytes(self.seen)
                self.seen += chunk
        self.read_to = self.seen.index(text, self.read_to) + len(text)

    def type(self, line: str) -> None:
        import os

        os.write(self.fd, line.encode() + b"\n")

    def close(self) -> int:
        import os

        try:
            return self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
            os.close(self.fd)


def test_at_a_terminal_the_password_is_asked_twice_and_never_shown(
    cli_env: dict[str, str], world: None, anon_client: Any
) -> None:
    import os
    import sys

    command = [sys.executable, "-m", "gridapi.cli", "users", "create", "--username", "w01"]
    terminal = Terminal(
        [*command, "--role", "grid_worker", "--grids", A1], {**os.environ, **cli_env}
    )
    try:
        terminal.expect(b"Password: ")
        terminal.type(PASSWORD)
        terminal.expect(b"Repeat for confirmation: ")
        terminal.type("a-typing-error")
        terminal.expect(b"do not match")
        terminal.expect(b"Password: ")
        terminal.type(PASSWORD)
        terminal.expect(b"Repeat for confirmation: ")
        terminal.type(PASSWORD)
        terminal.expect(b"created")
    finally:
        status = terminal.close()
    assert status == 0, bytes(terminal.seen)
    shown = bytes(terminal.seen)
    assert PASSWORD.encode() not in shown and b"a-typing-error" not in shown, shown
    assert sign_in(anon_client, "w01").status_code == 200


# ---- clients create --------------------------------------------------------------------------


def test_clients_create_prints_the_key_alone_and_it_sees_only_its_township(
    cli: Any, world: None, app: Any, session: Any
) -> None:
    args = ["--name", "hotline", "--scopes", "cases:read,grids:read", "--scope", TOWNSHIP]
    out = ok(cli("clients", "create", *args))
    *before, last = out.rstrip("\n").split("\n")
    assert re.fullmatch(r"gk_[0-9a-f]{8}_[A-Za-z0-9_\-]{40}", last), out
    assert last not in "\n".join(before)  # shown once, and only on its own line
    prefix = last.split("_")[1]
    assert prefix in before[-1]

    anon = app.test_client()
    for headers in ({"X-API-Key": last}, {"Authorization": f"Bearer {last}"}):
        assert grid_codes(anon, headers) == TOWNSHIP_GRIDS
        assert anon.get(f"/api/v1/grids/{C1}", headers=headers).status_code == 404
    me = anon.get("/api/v1/me", headers={"X-API-Key": last}).get_json()
    assert (me["kind"], me["name"], me["permissions"]) == (
        "client",
        "hotline",
        ["cases:read", "grids:read"],
    )
    assert anon.get("/api/v1/regions", headers={"X-API-Key": last}).status_code == 403
    (row,) = session.scalars(select(AuditEntry).where(AuditEntry.action == "client.create"))
    assert "gk_" not in str(row.summary) and row.region_code == TOWNSHIP


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scopes", "users:write"], "scopes"),
        (["--scopes", "grids:read", "--rate-limit", "lots"], "rate_limit"),
        (["--scopes", "grids:read", "--scope", "320508999000"], "region"),
    ],
)
def test_clients_create_refuses_bad_input(
    cli: Any, world: None, args: list[str], message: str
) -> None:
    output = refused(cli("clients", "create", "--name", "hotline", *args))
    assert message in output, output
    assert "gk_" not in output


@pytest.mark.parametrize("command", ["create", "reset-password"])
def test_a_report_does_not_wait_for_the_command_line_to_hash_a_password(
    cli: Any, client: Any, world: None, anon_client: Any, monkeypatch: Any, command: str
) -> None:
    """`users create` and `users reset-password` hashed the password (argon2) inside their
    transaction, which on SQLite begins holding the one write lock: a running server's
    reports waited for it. The hash is made before the transaction begins."""
    from gridapi.services import identity as svc

    if command == "reset-password":
        add_user(cli, "w01", "grid_worker", "--grids", A1)
        args = ["users", "reset-password", "--username", "w01", "--password", NEW_PASSWORD]
    else:
        args = ["users", "create", "--username", "w01", "--password", NEW_PASSWORD]
        args += ["--role", "grid_worker", "--grids", A1]
    result = report_while_held(client, monkeypatch, svc, "hash_password", lambda: cli(*args))
    ok(result)
    assert sign_in(anon_client, "w01", NEW_PASSWORD).status_code == 200
