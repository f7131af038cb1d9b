"""`gridapi keys`: generate, status and rotate, checked through SQL and the API (both engines).

Residents are registered by a server running on key version 1; the operator adds version 2,
rotates, and a server configured with version 2 alone still reads and finds everyone.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, text, update

from gridapi import create_app
from gridapi.cli import main
from gridapi.config import ExposedKeyFile, Settings
from gridapi.models import AuditEntry
from gridapi.personal import check_digit
from gridapi.security.fields import new_key_text, parse_keys

from .factories import COMMUNITY_A, Accounts, Factory

A1 = COMMUNITY_A + "001"
KEY1, KEY2 = new_key_text(1), new_key_text(2)
PURPOSE = "核实低保申请人身份"
NOTES = "社区矫正期间每周报到"


def make_id(prefix: str = "320508", born: str = "19900101", seq: str = "123") -> str:
    first = prefix + born + seq
    return first + check_digit(first)


PEOPLE = [  # name, ID number, phone (None: not given)
    ("张三", make_id(seq="123"), "13812345678"),
    ("李四", make_id(born="19751231", seq="456"), "13900112233"),
    ("王五", make_id(prefix="110105", born="20000229", seq="042"), None),
    ("赵六", make_id(prefix="440305", born="19481107", seq="871"), "18600001111"),
]
ENCRYPTED = [
    ("persons", "id_number_enc"),
    ("persons", "phone_enc"),
    ("special_group_records", "notes_enc"),
]


@pytest.fixture
def cli(settings: Settings, database_url: str) -> Any:
    """Run `gridapi ...` against the test database, with the field keys given per call."""

    def run(*args: str, keys: str = "", blind: str | None = None) -> Result:
        env = {
            "GRIDAPI_DATABASE_URL": database_url,
            "GRIDAPI_DATA_DIR": settings.data_dir,
            "GRIDAPI_FIELD_KEYS": keys,
            "GRIDAPI_BLIND_INDEX_KEY": blind or settings.key_bytes("blind_index_key").decode(),
            "GRIDAPI_ARGON2_TIME_COST": str(settings.argon2_time_cost),
            "GRIDAPI_ARGON2_MEMORY_KIB": str(settings.argon2_memory_kib),
        }
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    return run


@pytest.fixture
def server(settings: Settings) -> Iterator[Any]:
    """Start an application (a server) with the given field keys and blind-index key."""
    made: list[Any] = []

    def start(keys: str, blind: str | None = None) -> Any:
        overrides: dict[str, Any] = {"field_keys": keys, "person_lookup_rate": "1000 per hour"}
        if blind is not None:
            overrides["blind_index_key"] = blind
        application = create_app(replace(settings, **overrides))
        application.config["TESTING"] = True
        made.append(application)
        return Accounts(application).client("admin")

    yield start
    for application in made:
        application.extensions["gridapi"].engine.dispose()


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.stdout


def refused(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    return result.output


def register(client: Any) -> dict[str, int]:
    """Regions, a grid, the residents and a special-group record with notes; name → id."""
    factory = Factory(client)
    factory.regions()
    factory.grid_version()
    ids: dict[str, int] = {}
    for name, id_number, phone in PEOPLE:
        body = {"name": name, "id_number": id_number, "grid": A1}
        if phone:
            body["phone"] = phone
        r = client.post("/api/v1/persons", json=body)
        assert r.status_code == 201, r.get_json()
        ids[name] = r.get_json()["id"]
    r = client.post(
        "/api/v1/special-groups",
        json={"person_id": ids["李四"], "type": "community_correction", "notes": NOTES},
    )
    assert r.status_code == 201, r.get_json()
    ids["record"] = r.get_json()["id"]
    return ids


def stored(engine: Any) -> dict[tuple[str, str], list[str]]:
    with engine.connect() as conn:
        return {
            (table, column): list(
                conn.execute(
                    text(f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY id")
                ).scalars()
            )
            for table, column in ENCRYPTED
        }


def engine_of(client: Any) -> Any:
    return client.application.extensions["gridapi"].engine


def assert_readable(client: Any, ids: dict[str, int]) -> None:
    """Full values through /sensitive, exact searches by ID and phone, the notes."""
    for name, id_number, phone in PEOPLE:
        r = client.get(f"/api/v1/persons/{ids[name]}/sensitive", query_string={"purpose": PURPOSE})
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        assert (body["name"], body["id_number"], body["phone"]) == (name, id_number, phone)
        found = client.get("/api/v1/persons", query_string={"id_number": id_number})
        assert [p["id"] for p in found.get_json()["items"]] == [ids[name]]
        if phone:
            found = client.get("/api/v1/persons", query_string={"phone": phone})
            assert [p["id"] for p in found.get_json()["items"]] == [ids[name]]
    r = client.get(f"/api/v1/special-groups/{ids['record']}")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["notes"] == NOTES


def status_lines(output: str) -> dict[str, str]:
    return dict(
        line.split(": ", 1)
        for line in output.splitlines()
        if re.match(r"^[a-z_]+\.[a-z_]+: ", line)
    )


# --- generate ---------------------------------------------------------------------------------


def test_generate_prints_a_key_line_that_parses(cli):
    first = ok(cli("keys", "generate", keys=KEY1))
    assert first.count("\n") == 1  # the key line alone on standard output
    keys = parse_keys(first.strip())
    assert list(keys) == [2]  # one more than the highest configured
    assert len(keys[2]) == 32
    assert list(parse_keys(ok(cli("keys", "generate", keys=f"{KEY1},{KEY2}")))) == [3]
    assert list(parse_keys(ok(cli("keys", "generate", "--version", "7", keys=KEY1)))) == [7]
    # The printed line extends the configuration as it is.
    combined = f"{KEY1},{first.strip()}"
    assert list(parse_keys(combined)) == [1, 2]
    assert ok(cli("keys", "generate", keys=KEY1)) != first


def test_generate_without_configured_keys(cli, settings):
    # No GRIDAPI_FIELD_KEYS and no development key file yet: version 1, and no file is made.
    assert list(parse_keys(ok(cli("keys", "generate")))) == [1]
    assert not (Path(settings.data_dir) / "field.key").exists()
    # Once a server has made its development key (version 1), the next is version 2.
    settings.field_key_text()
    assert (Path(settings.data_dir) / "field.key").exists()
    assert list(parse_keys(ok(cli("keys", "generate")))) == [2]


def test_generate_refuses_a_configured_version_and_bad_configuration(cli):
    assert "configured already" in refused(cli("keys", "generate", "--version", "1", keys=KEY1))
    assert "--version" in refused(cli("keys", "generate", "--version", "0", keys=KEY1))
    secret = KEY1.partition(":")[2]
    message = refused(cli("keys", "generate", keys=f"1:{secret[:-4]}"))
    assert "GRIDAPI_FIELD_KEYS" in message
    assert secret[:-4] not in message


# --- status and rotate ------------------------------------------------------------------------


def test_rotate_re_encrypts_everything_under_the_newest_key(cli, server):
    old = server(KEY1)
    ids = register(old)
    engine = engine_of(old)
    before = stored(engine)
    assert all(v.startswith("v1:") for values in before.values() for v in values)
    assert [len(before[c]) for c in ENCRYPTED] == [4, 3, 1]

    lines = status_lines(ok(cli("keys", "status", keys=KEY1)))
    assert lines == {
        "persons.id_number": "v1: 4",
        "persons.phone": "v1: 3",
        "special_group_records.notes": "v1: 1",
        "webhook_subscriptions.secret": "no values",
        "webhook_subscriptions.previous_secret": "no values",
    }
    out = ok(cli("keys", "status", keys=f"{KEY1},{KEY2}"))
    assert "current key version 2" in out
    assert "8 value(s) under older keys" in out

    out = ok(cli("keys", "rotate", "--batch", "3", keys=f"{KEY1},{KEY2}"))
    assert "persons: 4 row(s) read, 7 value(s) re-encrypted, 0 blind index(es)" in out
    assert "special_group_records: 1 row(s) read, 1 value(s) re-encrypted" in out
    for value in (NOTES, *(p[1] for p in PEOPLE), *(p[2] for p in PEOPLE if p[2])):
        assert value not in out

    after = stored(engine)
    assert all(v.startswith("v2:") for values in after.values() for v in values)
    assert [len(after[c]) for c in ENCRYPTED] == [4, 3, 1]
    lines = status_lines(ok(cli("keys", "status", keys=f"{KEY1},{KEY2}")))
    assert lines == {
        "persons.id_number": "v2: 4",
        "persons.phone": "v2: 3",
        "special_group_records.notes": "v2: 1",
        "webhook_subscriptions.secret": "no values",
        "webhook_subscriptions.previous_secret": "no values",
    }
    assert "every value is under key version 2" in ok(cli("keys", "status", keys=KEY2))

    # A server with only the new key reads and finds everyone.
    assert_readable(server(KEY2), ids)
    # One still on the old key alone cannot read the rotated values: 500, not garbage.
    r = server(KEY1).get(f"/api/v1/persons/{ids['张三']}")
    assert r.status_code == 500
    assert set(r.get_json()) == {"code", "status", "message", "errors"}

    # Rotating again changes nothing.
    out = ok(cli("keys", "rotate", keys=KEY2))
    assert "persons: 4 row(s) read, 0 value(s) re-encrypted, 0 blind index(es)" in out
    assert stored(engine) == after

    with engine.connect() as conn:
        audit = conn.execute(
            select(AuditEntry.actor_type, AuditEntry.object_id).where(
                AuditEntry.action == "keys.rotate"
            )
        ).all()
    assert audit == [("cli", "2"), ("cli", "2")]


def test_a_server_writing_under_both_versions_meanwhile(cli, server):
    """Values written by the old server, then by one that knows both keys, then rotated."""
    old = server(KEY1)
    ids = register(old)
    both = server(f"{KEY1},{KEY2}")
    r = both.patch(f"/api/v1/persons/{ids['王五']}", json={"phone": "17722334455"})
    assert r.status_code == 200, r.get_json()
    lines = status_lines(ok(cli("keys", "status", keys=f"{KEY1},{KEY2}")))
    assert lines["persons.phone"] == "v1: 3, v2: 1"
    ok(cli("keys", "rotate", keys=f"{KEY1},{KEY2}"))
    lines = status_lines(ok(cli("keys", "status", keys=KEY2)))
    assert lines["persons.phone"] == "v2: 4"
    new = server(KEY2)
    r = new.get(f"/api/v1/persons/{ids['王五']}/sensitive", query_string={"purpose": PURPOSE})
    assert r.get_json()["phone"] == "17722334455"


def test_rotate_recomputes_the_blind_indexes_under_a_new_blind_key(cli, server):
    old = server(KEY1, blind="the-old-blind-index-key-of-this-test")
    ids = register(old)
    new_blind = "the-new-blind-index-key-of-this-test"
    out = ok(cli("keys", "rotate", keys=f"{KEY1},{KEY2}", blind=new_blind))
    assert "persons: 4 row(s) read, 7 value(s) re-encrypted, 7 blind index(es)" in out
    assert_readable(server(KEY2, blind=new_blind), ids)
    # A server still on the old blind-index key finds no one by ID any more.
    stale = server(KEY2, blind="the-old-blind-index-key-of-this-test")
    found = stale.get("/api/v1/persons", query_string={"id_number": PEOPLE[0][1]})
    assert found.get_json()["items"] == []
    # A blind-key change alone (no new field key) is rolled out the same way.
    out = ok(cli("keys", "rotate", keys=KEY2, blind="a-third-blind-index-key"))
    assert "persons: 4 row(s) read, 0 value(s) re-encrypted, 7 blind index(es)" in out
    assert_readable(server(KEY2, blind="a-third-blind-index-key"), ids)


def test_rotate_help_documents_the_account_phones():
    result = CliRunner().invoke(main, ["keys", "rotate", "--help"])
    assert result.exit_code == 0
    assert "users.phone_hmac" in result.output


def test_rotate_stops_at_a_bad_value_and_a_rerun_continues(cli, server):
    old = server(KEY1)
    ids = register(old)
    engine = engine_of(old)
    victim = ids["李四"]
    with engine.connect() as conn:
        original = conn.execute(
            text("SELECT phone_enc FROM persons WHERE id = :id"), {"id": victim}
        ).scalar_one()
    middle = len(original) // 2
    tampered = (
        original[:middle] + ("B" if original[middle] != "B" else "C") + original[middle + 1 :]
    )
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE persons SET phone_enc = :v WHERE id = :id"), {"v": tampered, "id": victim}
        )

    message = refused(cli("keys", "rotate", "--batch", "1", keys=f"{KEY1},{KEY2}"))
    assert f"persons.phone_enc of row id {victim}" in message
    assert "integrity check" in message
    for value in ("13900112233", tampered, original, tampered[3:20]):
        assert value not in message
    # The batches before it were committed; the failing one and those after were not.
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT id, id_number_enc FROM persons ORDER BY id")).all())
    assert rows[ids["张三"]].startswith("v2:")
    assert rows[victim].startswith("v1:") and rows[ids["赵六"]].startswith("v1:")
    # What was committed before it stopped is in the audit log, with where it stopped.
    with engine.connect() as conn:
        (summary,) = conn.execute(
            select(AuditEntry.summary).where(AuditEntry.action == "keys.rotate")
        ).scalars()
    assert summary["persons"]["reencrypted"] == 2 and summary["persons"]["rows"] == 1
    assert f"persons.phone_enc of row id {victim}" in summary["stopped"]
    for value in ("13900112233", tampered, original):
        assert value not in str(summary)

    # Put the value back: the rerun continues and finishes.
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE persons SET phone_enc = :v WHERE id = :id"), {"v": original, "id": victim}
        )
    out = ok(cli("keys", "rotate", "--batch", "1", keys=f"{KEY1},{KEY2}"))
    assert "persons: 4 row(s) read, 5 value(s) re-encrypted" in out
    assert all(v.startswith("v2:") for values in stored(engine).values() for v in values)
    assert_readable(server(KEY2), ids)


def test_status_and_rotate_make_no_key_the_servers_lack(server, settings, database_url, tmp_path):
    """Run where neither variable nor key file is (another working directory: the data
    directory's default, var, is relative), `keys rotate` generated a blind-index key and
    re-indexed every resident under it: the servers then found no one by ID or phone."""
    ids = register(server(KEY1))
    engine = engine_of(server(KEY1))
    before = stored(engine)
    with engine.connect() as conn:
        hashes = conn.execute(text("SELECT id_number_hmac FROM persons ORDER BY id")).all()
    elsewhere = tmp_path / "elsewhere"

    def run(*args: str, keys: str, blind: str) -> Result:
        env = {
            "GRIDAPI_DATABASE_URL": database_url,
            "GRIDAPI_DATA_DIR": str(elsewhere),
            "GRIDAPI_FIELD_KEYS": keys,
            "GRIDAPI_BLIND_INDEX_KEY": blind,
        }
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    message = refused(run("keys", "rotate", keys=f"{KEY1},{KEY2}", blind=""))
    assert "GRIDAPI_BLIND_INDEX_KEY is not set" in message
    blind = settings.key_bytes("blind_index_key").decode()
    for command in ("rotate", "status"):
        message = refused(run("keys", command, keys="", blind=blind))
        assert "GRIDAPI_FIELD_KEYS is not set" in message
    assert not elsewhere.exists()
    assert stored(engine) == before
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id_number_hmac FROM persons ORDER BY id")).all() == hashes
    assert_readable(server(KEY1), ids)


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("field.key", "GRIDAPI_FIELD_KEYS"),
        ("blind_index.key", "GRIDAPI_BLIND_INDEX_KEY"),
        ("secret.key", "GRIDAPI_SECRET_KEY"),
    ],
)
def test_a_key_file_other_users_may_read_is_refused(server, settings, database_url, name, variable):
    """A key file group or others may read (copied in 0644) was used silently: commands,
    the worker and the application refuse it, naming the file and the fix; 0600, it is
    used again."""
    server(settings.field_key_text())  # the data directory's three key files, made 0600
    settings.key_bytes("blind_index_key")
    env = {
        "GRIDAPI_DATABASE_URL": database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,
        "GRIDAPI_FIELD_KEYS": "",
        "GRIDAPI_BLIND_INDEX_KEY": "",
        "GRIDAPI_SECRET_KEY": "",
    }

    def run(*args: str) -> Result:
        return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)

    assert "current key version 1" in ok(run("keys", "status"))
    path = Path(settings.data_dir) / name
    path.chmod(0o644)
    for command in (("keys", "status"), ("keys", "rotate"), ("worker", "--once")):
        message = refused(run(*command))
        assert f"{variable} is not set and its key file {path} is open to other users" in message
        assert "mode 0644" in message and f"chmod 600 {path}" in message
    assert settings.key_file_problem() == str(ExposedKeyFile(variable, path, 0o644))
    with pytest.raises(ExposedKeyFile, match="chmod 600"):
        create_app(settings)
    path.chmod(0o640)  # the group alone is too many
    assert "mode 0640" in refused(run("keys", "status"))
    path.chmod(0o600)
    assert settings.key_file_problem() is None
    assert "current key version 1" in ok(run("keys", "status"))


def test_status_and_rotate_name_values_under_an_unconfigured_version(cli, server):
    old = server(f"{KEY1},{KEY2}")
    ids = register(old)
    out = status_lines(ok(cli("keys", "status", keys=f"{KEY1},{KEY2}")))
    assert out["persons.id_number"] == "v2: 4"
    out = ok(cli("keys", "status", keys=KEY1))
    assert "v2: 4 (no key configured!)" in out
    assert "cannot be decrypted" in out
    message = refused(cli("keys", "rotate", keys=KEY1))
    assert f"persons.id_number_enc of row id {ids['张三']}" in message
    assert "key version 2, not configured" in message


def test_status_of_an_empty_register(cli, server):
    server(KEY1)
    out = ok(cli("keys", "status", keys=KEY1))
    assert "persons.id_number: no values" in out
    assert "every value is under key version 1" in out
    out = ok(cli("keys", "rotate", keys=KEY1))
    assert "persons: 0 row(s) read" in out


def test_a_row_changed_during_its_batch_is_left_for_the_next_run(server, settings):
    """Compare and swap: a resident changed by a server while its batch runs keeps the
    change; the rotation counts it and the next run re-encrypts what is left."""
    from gridapi.db import make_sessionmaker
    from gridapi.models.register import Person
    from gridapi.security.fields import FieldCipher
    from gridapi.services.keys import rotate_batch
    from gridapi.services.register import Keys

    old = server(KEY1)
    ids = register(old)
    engine = engine_of(old)
    keys = Keys(FieldCipher(parse_keys(f"{KEY1},{KEY2}")), settings.key_bytes("blind_index_key"))
    sessions = make_sessionmaker(engine)
    with sessions() as session:
        victim_uid = session.get(Person, ids["李四"]).uid
    new_phone = "17722334455"

    with sessions.begin() as session:

        class MeddlingKeys(Keys):
            def open(self, table: str, column: str, uid: str, value: str | None) -> str | None:
                if (table, column, uid) == ("persons", "phone", victim_uid):
                    session.execute(  # what a request would write meanwhile
                        update(Person)
                        .where(Person.uid == uid)
                        .values(
                            phone_enc=keys.seal("persons", "phone", uid, new_phone),
                            phone_hmac=keys.index("phone", new_phone),
                        )
                    )
                return super().open(table, column, uid, value)

        result = rotate_batch(session, MeddlingKeys(keys.cipher, keys.blind_key), "persons")
    assert result.rows == 4
    assert result.changed_meanwhile == 1
    assert result.reencrypted == 5  # 7 values less the victim's two
    assert result.last_id is None

    with sessions.begin() as session:
        again = rotate_batch(session, keys, "persons")
    assert (again.reencrypted, again.changed_meanwhile) == (1, 0)  # the victim's ID number
    now = stored(engine)
    assert all(v.startswith("v2:") for column in ENCRYPTED[:2] for v in now[column])
    client = server(f"{KEY1},{KEY2}")
    r = client.get(f"/api/v1/persons/{ids['李四']}/sensitive", query_string={"purpose": PURPOSE})
    assert r.get_json()["phone"] == new_phone
    found = client.get("/api/v1/persons", query_string={"phone": new_phone}).get_json()["items"]
    assert [p["id"] for p in found] == [ids["李四"]]


def test_a_server_and_an_import_refuse_keys_that_are_not_the_databases(
    cli, server, settings, tmp_path
):
    """A server started with another GRIDAPI_DATA_DIR generated new keys without a word:
    every resident read failed its integrity check (500) and residents registered meanwhile
    were sealed under the wrong key. Serving and importing now refuse, naming the key."""
    from gridapi.serving import preflight

    register(server(KEY1, blind="the-blind-index-key-of-this-test"))
    engine = engine_of(server(KEY1, blind="the-blind-index-key-of-this-test"))

    def problem(keys: str, blind: str) -> str | None:
        return preflight(engine, replace(settings, field_keys=keys, blind_index_key=blind))

    assert problem(KEY1, "the-blind-index-key-of-this-test") is None
    assert problem(f"{KEY1},{KEY2}", "the-blind-index-key-of-this-test") is None  # rotating
    assert "field keys" in problem(KEY2, "the-blind-index-key-of-this-test")
    assert "blind-index key" in problem(KEY1, "another-blind-index-key")
    sheet = tmp_path / "people.csv"
    sheet.write_text("name,id_number,grid\n王五," + make_id(seq="777") + f",{A1}\n")
    before = stored(engine)
    out = refused(cli("persons", "import", str(sheet), keys=KEY2, blind="x" * 32))
    assert "field keys" in out
    assert stored(engine) == before  # nothing sealed under the wrong key


def test_a_server_refuses_a_database_of_another_revision(tmp_path):
    from gridapi import migrations
    from gridapi.db import make_engine

    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    assert "no gridapi tables" in migrations.schema_problem(engine)
    migrations.upgrade(engine, "0023")
    message = migrations.schema_problem(engine)
    assert "revision 0023" in message and migrations.head_revision() in message
    assert "gridapi db upgrade" in message
    migrations.upgrade(engine)
    assert migrations.schema_problem(engine) is None
    engine.dispose()


# --- what phones sync -------------------------------------------------------------------------


def synced(client: Any, cursor: str | None, patience: float = 60) -> tuple[list[dict], str]:
    """Sync until nothing more (waiting while PostgreSQL says changes are pending); return
    the changes received and the cursor to keep."""
    import time

    changes: list[dict] = []
    deadline = time.monotonic() + patience
    while True:
        query = {"cursor": cursor} if cursor else {}
        r = client.get("/api/v1/sync", query_string=query)
        assert r.status_code == 200, r.get_json()
        body = r.get_json()
        changes += body["changes"]
        cursor = body["next_cursor"]
        if body["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)  # a transaction anywhere on the server holds the horizon back
            continue
        assert not body["pending"], "still pending"
        if not body["has_more"]:
            return changes, cursor


def test_a_rotation_is_no_change_a_phone_syncs(cli, server):
    """Rotating rewrote every resident, and the sync log's triggers logged every household
    with a resident as changed: every phone's next sync downloaded the whole register,
    though nothing it is sent had changed."""
    old = server(KEY1)
    factory = Factory(old)
    factory.regions()
    factory.grid_version()
    homes = []
    for n, (name, id_number, phone) in enumerate(PEOPLE):
        if n % 2 == 0:
            r = old.post("/api/v1/households", json={"number": f"R{n}", "grid": A1})
            assert r.status_code == 201, r.get_json()
            homes.append(r.get_json()["id"])
        body = {"name": name, "id_number": id_number, "household_id": homes[-1]}
        if phone:
            body["phone"] = phone
        r = old.post("/api/v1/persons", json=body)
        assert r.status_code == 201, r.get_json()
    someone = r.get_json()
    phone_before = Accounts(old.application).client("worker", "grid_worker", grids=[A1])
    first, cursor = synced(phone_before, None)
    assert {(c["type"], c["id"]) for c in first} == {("household", h) for h in homes}
    kept = {c["id"]: c["data"] for c in first}

    out = ok(cli("keys", "rotate", "--batch", "3", keys=f"{KEY1},{KEY2}"))
    assert "persons: 4 row(s) read, 7 value(s) re-encrypted" in out
    new = server(KEY2)
    worker = Accounts(new.application).client("worker", "grid_worker", grids=[A1])
    changes, cursor = synced(worker, cursor)
    assert changes == []
    # The residents are as they were: the same version (an ETag read before still names
    # them) and time of their last change, the same masked values.
    after = new.get(f"/api/v1/persons/{someone['id']}").get_json()
    assert (after["version"], after["updated_at"], after["phone"]) == (
        someone["version"],
        someone["updated_at"],
        someone["phone"],
    )
    for home in homes:
        assert new.get(f"/api/v1/households/{home}").get_json()["members"] == kept[home]["members"]

    # A change of a resident is still one of their household, sent at the next sync.
    r = new.patch(f"/api/v1/persons/{someone['id']}", json={"phone": "17722334455"})
    assert r.status_code == 200, r.get_json()
    changes, _ = synced(worker, cursor)
    assert [(c["type"], c["id"]) for c in changes] == [("household", homes[-1])]
    members = {m["id"]: m for m in changes[0]["data"]["members"]}
    assert members[someone["id"]]["phone"] == r.get_json()["phone"] != someone["phone"]


def test_a_resident_changed_in_any_other_column_is_synced(server):
    """Only the ciphertexts, keyed hashes and address keys (each derived from a column
    that is compared) may change unlogged: a change of any other column, even by SQL that
    bumps no version, is a change of the household. SQLite's trigger names the columns it
    compares: one added to persons must be added to it."""
    from gridapi.models.register import Person

    client = server(KEY1)
    ids = register(client)
    r = client.post("/api/v1/households", json={"number": "R1", "grid": A1})
    home = r.get_json()["id"]
    engine = engine_of(client)
    key_columns = {
        "id_number_enc",
        "id_number_hmac",
        "phone_enc",
        "phone_hmac",
        "current_address_key",
        "registered_address_key",
    }
    with engine.begin() as conn:
        conn.execute(update(Person).where(Person.id == ids["张三"]).values(household_id=home))

    def logged(statement: str) -> bool:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM sync_log"))
            conn.execute(text(statement), {"id": ids["张三"]})
            return bool(conn.execute(text("SELECT count(*) FROM sync_log")).scalar_one())

    assert not logged("UPDATE persons SET phone_hmac = 'x', id_number_enc = 'v9:x' WHERE id = :id")
    assert not logged("UPDATE persons SET current_address_key = 'x' WHERE id = :id")
    assert logged("UPDATE persons SET name = name || '某' WHERE id = :id")
    assert logged(
        "UPDATE persons SET current_address = 'x', current_address_key = 'x' WHERE id = :id"
    )
    assert logged("UPDATE persons SET ethnicity = 'hui', phone_enc = NULL WHERE id = :id")
    assert logged("UPDATE persons SET version = version + 1 WHERE id = :id")
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            trigger = conn.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'sync_persons_update'")
            ).scalar_one()
        for column in Person.__table__.columns:
            if column.name not in key_columns:
                assert f"OLD.{column.name} IS NOT NEW.{column.name}" in trigger, column.name
