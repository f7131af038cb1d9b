"""The scale-data generator, tiny: ``bench/generate`` builds a city on each engine.

It must produce the counts asked for, rows a server with the printed keys can read (valid ID
numbers whose birth date and sex match the row), and the same rows again for the same seed
(the digest over a sample of every table, decrypted), on SQLite/SpatiaLite and PostGIS.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gridapi.db import make_engine
from gridapi.models.register import address_key
from gridapi.personal import parse_id_number
from gridapi.security.fields import FieldCipher, blind_index, parse_keys

ROOT = Path(__file__).resolve().parent.parent
SIZE = ["--grids", "50", "--persons", "200", "--cases", "200", "--now", "2026-06-01T00:00:00"]


def _run(args: list[str], env_extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDAPI_")}
    env.update(env_extra or {})
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "generate.py"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and re.fullmatch(r"[A-Za-z_]+", key):
            out[key] = value
        elif line.startswith(("counts: ", "check: ")):
            out[line.split(":", 1)[0]] = line.split(": ", 1)[1]
    return out


@pytest.fixture
def target(request: pytest.FixtureRequest, engine_name: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Arguments that put the generated city on this engine (dropped afterwards)."""
    if engine_name == "sqlite":
        yield lambda k: ["--engine", "sqlite", "--sqlite", str(tmp_path / f"city{k}.sqlite3")]
        return
    # Reachable PostGIS or a skip (a failure when GRIDAPI_REQUIRE_POSTGIS=1).
    base = make_url(request.getfixturevalue("postgis_url"))
    admin = base.set(database="postgres").render_as_string(hide_password=False)
    names: list[str] = []

    def args(k: int) -> list[str]:
        names.append(f"gridapi_bench_generate_test_{os.getpid()}_{k}")
        return ["--engine", "postgis", "--admin-url", admin, "--database", names[-1]]

    yield args
    engine = make_engine(admin)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in names:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.mark.engines("sqlite", "postgis")
def test_generates_a_readable_city_deterministically(target, engine_name):  # type: ignore[no-untyped-def]
    first = _run([*target(1), *SIZE, "--seed", "7"])
    counts = dict(pair.split("=") for pair in first["counts"].split())
    assert counts["grids"] == "50"
    assert counts["persons"] == "200"
    assert counts["cases"] == "200"
    houses, households = int(counts["houses"]), int(counts["households"])
    assert 0 < houses <= households <= 200 <= 5 * households
    assert int(counts["regions"]) > 5 and int(counts["case_counters"]) > 0
    # The app, started on the database with the printed keys, read a resident and cases.
    assert re.fullmatch(
        r"app started .*; person \d+ read in \d+ ms \(id_number \d{4}\*{10}[0-9X]{4}\); case list .*",
        first["check"],
    )

    # The rows are readable with the printed keys, and consistent.
    cipher = FieldCipher(parse_keys(first["GRIDAPI_FIELD_KEYS"]))
    blind = first["GRIDAPI_BLIND_INDEX_KEY"].encode()
    engine = make_engine(first["GRIDAPI_DATABASE_URL"])
    try:
        with engine.connect() as conn:
            people = conn.execute(
                text(
                    "SELECT uid, id_number_enc, id_number_hmac, phone_enc, phone_hmac, gender, "
                    "birth_date, population_type FROM persons ORDER BY id"
                )
            ).all()
            heads = conn.execute(
                text("SELECT count(*) FROM persons WHERE relation = 'head'")
            ).scalar_one()
            # The register's addresses are keyed as the API keys them (the search's).
            addresses = conn.execute(
                text(
                    "SELECT current_address, current_address_key, registered_address, "
                    "registered_address_key FROM persons"
                )
            ).all()
            unrouted_houses = conn.execute(
                text(
                    "SELECT count(*) FROM houses h JOIN grids g ON g.code = h.grid_code "
                    "WHERE NOT ST_Intersects(g.geom, h.location)"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    assert heads == households
    assert all(
        (key, other_key)
        == (
            None if current is None else address_key(current),
            None if registered is None else address_key(registered),
        )
        for current, key, registered, other_key in addresses
    )
    assert unrouted_houses == 0
    with_phone = 0
    for uid, id_enc, id_hmac, phone_enc, phone_hmac, gender, born, population in people:
        if population == "foreign":
            assert id_enc is None
            continue
        value = cipher.decrypt(id_enc, table="persons", column="id_number", row=uid)
        parsed = parse_id_number(value)
        assert (str(parsed.birth_date), parsed.gender) == (str(born)[:10], gender)
        assert id_hmac == blind_index("id_number", value, blind)
        if phone_enc is not None:
            phone = cipher.decrypt(phone_enc, table="persons", column="phone", row=uid)
            assert re.fullmatch(r"1[3-9]\d{9}", phone)
            assert phone_hmac == blind_index("phone", phone, blind)
            with_phone += 1
    assert 0 < with_phone < len(people)

    # Same seed, the keys given through the environment: the same rows.
    keys = {k: first[k] for k in ("GRIDAPI_FIELD_KEYS", "GRIDAPI_BLIND_INDEX_KEY")}
    again = _run([*target(2), *SIZE, "--seed", "7", "--keys-from-env", "--no-check"], keys)
    assert again["digest"] == first["digest"]
    assert again["GRIDAPI_FIELD_KEYS"] == first["GRIDAPI_FIELD_KEYS"]
    if engine_name == "sqlite":
        other = _run([*target(3), *SIZE, "--seed", "8", "--no-check"])
        assert other["digest"] != first["digest"]
