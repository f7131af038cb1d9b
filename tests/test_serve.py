"""`gridapi serve` under gunicorn on both engines: several workers answer correctly and live."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from gridapi.services.identity import create_client

from .factories import COMMUNITY_A, LAT0, LON0, STEP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(
    port: int, path: str, body: dict | None = None, key: str = "", **sent: str
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"X-API-Key": key} if key else {}
    headers.update(sent)
    if body is None:
        conn.request("GET", path, headers=headers)
    else:
        headers["Content-Type"] = "application/json"
        conn.request("POST", path, json.dumps(body), headers)
    response = conn.getresponse()
    data = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, data


def _wait_until_live(port: int, log: Path, seconds: float = 30) -> None:
    """Wait until the server on ``port`` answers its liveness check; fail with its log."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if _get(port, "/api/v1/health/live")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@contextlib.contextmanager
def _serving(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run `gridapi serve` with ``env`` (output to ``log``) until it is live; stop it after."""
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridapi.cli", "serve"], env=env, stdout=out, stderr=out
        )
    try:
        _wait_until_live(int(env["GRIDAPI_PORT"]), log)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def _sqlite_env(sqlite_template: Path, tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of one `gridapi serve` on a copy of the SQLite template, on a free
    port, one worker, no jobs; ``settings`` are further GRIDAPI_* values."""
    database = tmp_path / "gridapi.sqlite3"
    shutil.copy(sqlite_template, database)
    return {
        **os.environ,
        "GRIDAPI_DATABASE_URL": f"sqlite:///{database}",
        "GRIDAPI_DATA_DIR": str(tmp_path / "data"),
        "GRIDAPI_PORT": str(_free_port()),
        "GRIDAPI_WORKERS": "1",
        "GRIDAPI_WORKER_IN_SERVE": "off",
        **settings,
    }


def _raw(port: int, request: bytes) -> tuple[int, str, int]:
    """Send ``request`` as bytes; return the status, the content type and the body's code."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        response = http.client.HTTPResponse(sock)
        response.begin()
        body = json.loads(response.read())
    assert set(body) == {"code", "status", "message", "errors"} and body["message"], body
    return response.status, response.getheader("Content-Type"), body["code"]


def _grids_key(app) -> str:
    """An API key that may locate points and read cases (grids:read, cases:read), for
    requests to a served app."""
    with app.extensions["gridapi"].sessions.begin() as session:
        _, key = create_client(
            session,
            name="serve test",
            scopes=["grids:read", "cases:read"],
            scope_region=None,
            rate_limit="1000 per minute",
            created_by=None,
        )
    return key


def test_serve_runs_workers_that_route(factory, app, accounts, database_url, tmp_path: Path):
    factory.regions()
    factory.grid_version()
    key = _grids_key(app)
    port = _free_port()
    log = tmp_path / "serve.log"
    request_ids: list[str | None] = []
    env = {
        **os.environ,
        "GRIDAPI_DATABASE_URL": database_url,
        "GRIDAPI_DATA_DIR": app.extensions["gridapi"].settings.data_dir,
        "GRIDAPI_PORT": str(port),
        "GRIDAPI_WORKERS": "2",
        "GRIDAPI_LOG_LEVEL": "WARNING",
        "GRIDAPI_PROXY_HOPS": "1",  # as behind nginx (docs/deploy/nginx.conf)
        "HOME": str(tmp_path / "home"),  # gunicorn's control socket went to ~/.gunicorn
    }
    env.pop("XDG_RUNTIME_DIR", None)
    with _serving(env, log):
        point = (LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)
        for _ in range(20):  # enough requests to reach both workers
            status, answer = _get(port, f"/api/v1/locate?lon={point[0]}&lat={point[1]}", key=key)
            assert status == 200, answer
            assert answer["grid"]["code"] == COMMUNITY_A + "001"
        status, batch = _get(port, "/api/v1/locate/batch", {"points": [list(point)] * 50}, key)
        assert _get(port, "/api/v1/locate?lon=1&lat=1")[0] == 401
        assert status == 200 and len(batch["results"]) == 50
        status, health = _get(port, "/api/v1/health")
        assert status == 200 and health["grids_in_service"] == 4
        # a search by ID number: the access log keeps the parameter, never the value
        status, _ = _get(port, f"/api/v1/persons?id_number={SECRET_ID}&limit=5", key=key)
        assert status == 403  # the key may not read the register; the request is logged
        # a phone number given as the reference of an unmasked read: refused, still logged
        status, refused = _get(
            port,
            f"/api/v1/persons/1/sensitive?purpose_code=other&reference={REFERENCE}",
            Authorization=f"Bearer {accounts.token('admin')}",
        )
        assert status == 422 and "reference" in refused["errors"]["query"], refused
        # Open311 takes the API key in the query: logged without it (it was in clear)
        _get(port, f"/open311/v2/requests.json?jurisdiction_id=320508&api_key={key}")
        # the request id: the one nginx sent, else the one gridapi made, ends the log line
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        for n, sent in enumerate(({"X-Request-ID": "nginx-0f3a9c"}, {})):
            # Each its own query: the two may be answered by two workers, whose log lines
            # can reach the file in either order (CI, a4933a2..3c0f0e1).
            conn.request("GET", f"/api/v1/health/live?rid=1{'ab'[n]}", headers=sent)
            answer = conn.getresponse()
            answer.read()
            request_ids.append(answer.getheader("X-Request-ID"))
        # a page of a search as the referer: its values are cut out as the request line's
        conn.request("GET", "/api/v1/health/live?rid=2", headers={"Referer": REFERER})
        conn.getresponse().read()
        conn.close()
        # an Open311 read of 1000 ids (of six digits) reaches the app: a request line of
        # 7,000 bytes, beyond gunicorn's default limit (4094), which answered 414
        many = ",".join(str(100_000 + i) for i in range(1000))
        status, found = _get(
            port,
            f"/open311/v2/requests.json?jurisdiction_id=320508&service_request_id={many}",
            key=key,
        )
        assert (status, found) == (200, []), (status, found)
        # through a proxy: the access log names the client the proxy saw, not what it sent
        forwarded = {"X-Forwarded-For": "10.1.2.3, 203.0.113.7"}
        assert _get(port, "/api/v1/health/live?via=proxy", **forwarded)[0] == 200
        # requests gunicorn refuses before the app sees them: the one error format too
        for raw, status in (
            (b"GET /api/v1/health/live HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\n\r\n", 400),
            (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431),
        ):
            assert _raw(port, raw) == (status, "application/json", status), raw[:60]
    text = log.read_text()
    assert "SIGSEGV" not in text and "Traceback" not in text, text
    assert "GET /api/v1/persons?id_number=***&limit=5" in text, text
    assert "GET /api/v1/persons/1/sensitive?purpose_code=other&reference=*** " in text, text
    assert SECRET_ID not in text and "13812345678" not in text and REFERENCE not in text
    assert key not in text and "requests.json?jurisdiction_id=320508&api_key=*** " in text
    assert request_ids[0] == "nginx-0f3a9c" and request_ids[1], request_ids
    for query, request_id in zip(("?rid=1a ", "?rid=1b "), request_ids, strict=True):
        (line,) = [line for line in text.splitlines() if query in line]
        assert line.rsplit(" ", 1)[-1] == request_id, line
    (referred,) = [line for line in text.splitlines() if "?rid=2 " in line]
    assert '"https://grid.example.cn/search?phone=***&limit=5"' in referred, referred
    via = [line for line in text.splitlines() if "via=proxy" in line]
    assert len(via) == 1 and via[0].startswith("203.0.113.7 "), text
    assert "WARNING: Serving" not in text  # on 127.0.0.1: no warning about exposure
    # no key set: on PostgreSQL they come from files in the data directory, and serve says so
    keys = "WARNING: GRIDAPI_SECRET_KEY, GRIDAPI_BLIND_INDEX_KEY, GRIDAPI_FIELD_KEYS not set"
    assert (keys in text) == database_url.startswith("postgresql"), text
    assert not (tmp_path / "home" / ".gunicorn").exists()  # no control socket left behind


SECRET_ID = "320508199001011232"
REFERENCE = "13951110001"
REFERER = "https://grid.example.cn/search?phone=13812345678&limit=5"


def test_redact_query_hides_personal_values_only():
    from gridapi.serving import redact_query

    assert redact_query("name=%E5%BC%A0&limit=5&phone=138&grid=1") == (
        "name=***&limit=5&phone=***&grid=1"
    )
    assert redact_query("") == ""
    assert redact_query("flag&q=x") == "flag&q=***"
    assert redact_query("api_key=gk_1234abcd_secret&a=1") == "api_key=***&a=1"
    # the deprecated free-text erasure reason, a 户号, and where a worker stands
    assert redact_query("reason=%E5%BC%A0%E4%B8%89&reason_code=duplicate") == (
        "reason=***&reason_code=duplicate"
    )
    assert redact_query("number=0012&lon=120.6&lat=31.3&crs=wgs84") == (
        "number=***&lon=***&lat=***&crs=wgs84"
    )
    # a purpose's or an erasure's reference is typed by people: a phone number refused (422)
    assert redact_query("purpose_code=other&reference=13951110001") == (
        "purpose_code=other&reference=***"
    )
    assert redact_query("reason_code=duplicate&reference=MZJ-2026%2F0412") == (
        "reason_code=duplicate&reference=***"
    )


#: Query parameters of the spec whose values the access log may keep: codes, ids, flags,
#: dates, bounds and paging. A new parameter must be put here or in
#: ``PERSONAL_QUERY_PARAMETERS`` (redacted): the test below fails until it is.
HARMLESS_QUERY_PARAMETERS = frozenset(
    [
        "about",
        "action",
        "actor_id",
        "after",
        "assignee",
        "attention_level",
        "bbox",
        "before",
        "by",
        "campaign_id",
        "category",
        "community",
        "crs",
        "cursor",
        "days",
        "department",
        "fields",
        "format",
        "from",
        "grid",
        "helper_id",
        "house_id",
        "household_id",
        "include_inactive",
        "label",
        "level",
        "limit",
        "max_level",
        "month",
        "object_id",
        "object_type",
        "on",
        "on_duty",
        "open",
        "overdue",
        "parent",
        "person_id",
        "points",
        "population_type",
        "purpose_code",
        "queue",
        "reason_code",
        "region",
        "role",
        "simplify",
        "since",
        "sort",
        "source",
        "status",
        "supervision",
        "to",
        "type",
        "unit",
        "unmask",
        "unrouted",
        "unsent",
        "until",
        "use",
        "version",
        "within",
        "worker_id",
        "year",
        "zoom",
    ]
)


def test_every_query_parameter_of_the_spec_is_redacted_or_named_harmless():
    """The access log keeps the query string: a parameter added to the API must be judged
    (``erasure?reason=张三 …`` was logged in full, its free text named people)."""
    from gridapi.serving import PERSONAL_QUERY_PARAMETERS

    spec = json.loads((Path(__file__).parent.parent / "openapi" / "openapi.json").read_text())
    names = {
        p["name"]
        for operations in spec["paths"].values()
        for operation in operations.values()
        if isinstance(operation, dict)
        for p in operation.get("parameters", [])
        if isinstance(p, dict) and p.get("in") == "query"
    }
    assert names - PERSONAL_QUERY_PARAMETERS - HARMLESS_QUERY_PARAMETERS == set()
    assert set() == PERSONAL_QUERY_PARAMETERS & HARMLESS_QUERY_PARAMETERS


@pytest.mark.parametrize(
    ("host", "hops", "warned"),
    [
        ("127.0.0.1", 0, False),
        ("::1", 0, False),
        ("[::1]", 0, False),
        ("localhost", 0, False),
        ("0.0.0.0", 0, True),
        ("10.20.0.5", 0, True),
        ("grid.example.cn", 0, True),
        ("0.0.0.0", 1, False),
    ],
)
def test_serving_beyond_this_machine_without_a_proxy_is_warned(host, hops, warned):
    from gridapi.config import Settings
    from gridapi.serving import exposure_warning

    warning = exposure_warning(host, Settings(proxy_hops=hops))
    assert (warning is not None) == warned
    if warned:
        assert host in warning and "docs/deploy.md" in warning


@pytest.mark.parametrize(
    ("url", "keys", "named"),
    [
        ("postgresql+psycopg:///gridapi", {}, ["SECRET_KEY", "BLIND_INDEX_KEY", "FIELD_KEYS"]),
        (
            "postgresql+psycopg:///gridapi",
            {"secret_key": "k" * 32},
            ["BLIND_INDEX_KEY", "FIELD_KEYS"],
        ),
        (
            "postgresql+psycopg:///gridapi",
            {"field_keys": "1:x", "blind_index_key": "b"},
            ["SECRET_KEY"],
        ),
        (
            "postgresql+psycopg:///gridapi",
            {"secret_key": "k" * 32, "blind_index_key": "b" * 32, "field_keys": "1:x"},
            [],
        ),
        ("sqlite:///var/gridapi.sqlite3", {}, []),  # the zero-set-up default, silently
    ],
    ids=["none-set", "secret-set", "secret-unset", "all-set", "sqlite"],
)
def test_keys_kept_in_the_data_directory_on_postgresql_are_warned(url, keys, named, tmp_path):
    """On PostgreSQL with no key set, serve silently generated the keys into GRIDAPI_DATA_DIR,
    the photo store that is backed up and shared, where the field key must not be."""
    from gridapi.config import Settings
    from gridapi.serving import keys_warning

    data = tmp_path / "photos"
    warning = keys_warning(Settings(database_url=url, data_dir=str(data), **keys))
    if not named:
        assert warning is None
        return
    assert warning is not None
    assert warning.startswith(", ".join(f"GRIDAPI_{name}" for name in named) + " not set")
    files = {"SECRET_KEY": "secret.key", "BLIND_INDEX_KEY": "blind_index.key"}
    files["FIELD_KEYS"] = "field.key"
    for name in named:
        assert str(data / files[name]) in warning
    for name in set(files) - set(named):
        assert f"GRIDAPI_{name}" not in warning and files[name] not in warning


@pytest.mark.parametrize(
    "workers,redis,warned",
    [(1, "", False), (3, "", True), (3, "redis://127.0.0.1:6379/0", False)],
)
def test_several_workers_counting_limits_on_their_own_are_warned(workers, redis, warned):
    """Without Redis each worker process counts the request limits of API keys on its own
    (the sign-in and lookup limits are shared through the database)."""
    from gridapi.config import Settings
    from gridapi.serving import limits_warning

    warning = limits_warning(workers, Settings(redis_url=redis))
    assert (warning is not None) == warned
    if warned:
        assert f"up to {workers} times its limit" in warning
        assert "GRIDAPI_PERSON_LOOKUP_RATE" not in warning


def test_spatialite_loaded_before_shapely_does_not_break_shapely(tmp_path: Path):
    """SQLite loads mod_spatialite with RTLD_GLOBAL; shapely must still use its own GEOS."""
    script = f"""
from gridapi.db import make_engine
engine = make_engine("sqlite:///{tmp_path / "x.sqlite3"}")
with engine.connect() as conn:
    conn.exec_driver_sql("SELECT spatialite_version()")
import shapely
from shapely.strtree import STRtree
boxes = shapely.box([0, 1, 2], 0, [1, 2, 3], 1)
assert len(shapely.from_wkb(shapely.to_wkb(boxes))) == 3
assert list(STRtree(boxes).query(shapely.points(1.5, 0.5), predicate="intersects")) == [1]
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_a_worker_keeps_its_routing_index_out_of_full_collections(factory, app):
    """A serving worker builds the routing index before its first request and freezes it
    (gc.freeze) so that full garbage collections do not walk it during requests; a rebuild
    (a new grid version) freezes the new index too."""
    import gc
    from types import SimpleNamespace

    from gridapi import serving

    factory.regions()
    factory.grid_version()
    routing = app.extensions["gridapi"].routing
    gc.unfreeze()  # tests/conftest.py froze what the run had loaded
    try:
        assert gc.get_freeze_count() == 0
        serving._post_worker_init(SimpleNamespace(wsgi=app))
        frozen = gc.get_freeze_count()
        assert frozen > 0 and routing.after_rebuild is serving.freeze_long_lived
        assert routing.snapshot().locate(LON0 + STEP / 2, LAT0 + STEP / 2).grid >= 0
        gc.unfreeze()
        factory.grid_version(force=True)  # a new generation: the next snapshot rebuilds
        routing.invalidate()
        routing.snapshot()
        assert gc.get_freeze_count() > 0
        # A rebuild in the background (another process moved the generation) freezes the
        # new index too, once it serves.
        gc.unfreeze()
        old = routing.snapshot()
        with app.extensions["gridapi"].engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE index_generations SET generation = generation + 1 WHERE name = 'grids'"
                )
            )
        assert routing.snapshot() is old  # answered from the old one; the rebuild has begun
        assert routing.wait_for_rebuild(60)
        assert routing.snapshot().generation == old.generation + 1
        assert gc.get_freeze_count() > 0
    finally:
        routing.after_rebuild = None
        gc.unfreeze()
        gc.freeze()  # as tests/conftest.py leaves it for the rest of the run


def test_the_embedded_database_and_its_key_files_are_the_services_alone(
    tmp_path: Path, usual_umask: None
):
    """Under the usual umask the database (the register's names and addresses in clear),
    its -wal and -shm files and the data directory were readable by every local account;
    a data directory two levels deep got a 0755 parent (mkdir's parents take the umask's
    mode)."""
    from gridapi import migrations
    from gridapi.config import _write_once
    from gridapi.db import make_engine

    data = tmp_path / "srv" / "var"
    engine = make_engine(f"sqlite:///{data / 'gridapi.sqlite3'}")
    migrations.upgrade(engine)
    with engine.connect() as conn:  # an open connection keeps -wal and -shm
        conn.execute(text("SELECT count(*) FROM regions"))
        modes = {p.name: oct(p.stat().st_mode & 0o777) for p in data.iterdir()}
    engine.dispose()
    assert modes == {
        "gridapi.sqlite3": "0o600",
        "gridapi.sqlite3-wal": "0o600",
        "gridapi.sqlite3-shm": "0o600",
    }
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    assert oct(data.parent.stat().st_mode & 0o777) == "0o700"
    _write_once(tmp_path / "keys" / "data" / "secret.key", "k")
    for made in (tmp_path / "keys", tmp_path / "keys" / "data"):
        assert oct(made.stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "keys" / "data" / "secret.key").stat().st_mode & 0o777) == "0o600"


@pytest.mark.engines("postgis")
def test_a_database_clock_apart_from_the_servers_is_warned(engine):
    """The change log, webhook events and timelines take PostgreSQL's time, deadlines and
    tokens the server's: a probe with the clocks apart saw a phone miss a change (the log
    pruned early). serve says so when they differ by more than a few seconds."""
    from datetime import UTC, datetime, timedelta

    from gridapi.serving import clock_warning

    assert clock_warning(engine) is None

    def ahead() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=2)

    warning = clock_warning(engine, now=ahead)
    assert warning is not None and "behind this server's" in warning and "NTP" in warning
    assert "120 s" in warning or "119 s" in warning


@pytest.mark.parametrize(
    ("secret", "blind", "refused"),
    [
        ("x", "", "GRIDAPI_SECRET_KEY is too short to be a secret (length 1;"),
        (
            "",
            "short-blind-index-key",
            "GRIDAPI_BLIND_INDEX_KEY is too short to be a secret (length 21;",
        ),
        ("k" * 31, "b" * 32, "GRIDAPI_SECRET_KEY is too short to be a secret (length 31;"),
        ("密" * 11, "", None),  # 33 bytes in UTF-8: key_bytes reads the encoded text
        ("k" * 32, "b" * 32, None),
        ("", "", None),  # generated into GRIDAPI_DATA_DIR, 64 characters (the tests' own)
    ],
    ids=["secret-1", "blind-21", "secret-31", "secret-33-utf8", "both-32", "generated"],
)
def test_keys_too_short_to_be_secrets_are_named(secret, blind, refused):
    from gridapi.config import Settings

    problem = Settings(secret_key=secret, blind_index_key=blind).short_key_problem()
    if refused is None:
        assert problem is None
    else:
        assert (
            problem is not None and problem.startswith(refused) and "at least 32 bytes" in problem
        )


@pytest.mark.parametrize(
    ("name", "variable"), [("secret", "SECRET"), ("blind_index", "BLIND_INDEX")]
)
def test_a_short_key_in_the_key_file_is_named_too(tmp_path, name, variable):
    """A key left unset is read from its file in GRIDAPI_DATA_DIR; one an operator wrote there
    ("changeme", to share it between servers) signed every token, checked by nobody."""
    from gridapi.config import Settings

    settings = Settings(data_dir=str(tmp_path))
    (tmp_path / f"{name}.key").write_text("changeme\n")
    problem = settings.short_key_problem()
    assert problem is not None
    assert problem.startswith(f"GRIDAPI_{variable}_KEY is not set and {tmp_path / name}.key")
    assert "too short to be a secret (length 8;" in problem and "changeme" not in problem
    (tmp_path / f"{name}.key").write_text("k" * 32)
    assert settings.short_key_problem() is None


def test_serve_and_the_worker_refuse_a_key_too_short_to_be_a_secret(
    sqlite_template: Path, tmp_path: Path
):
    """With GRIDAPI_SECRET_KEY=x, serve started, and a JWT the operator signed himself
    (HS256, key "x", sub 1) was an admin's. serve refuses such a key, and the worker a short
    blind-index key (its export jobs look residents up under it)."""
    from click.testing import CliRunner

    from gridapi.cli import main

    env = _sqlite_env(sqlite_template, tmp_path, GRIDAPI_SECRET_KEY="x")
    port = int(env["GRIDAPI_PORT"])
    try:  # without the check it serves (and the timeout ends it)
        served = subprocess.run(
            [sys.executable, "-m", "gridapi.cli", "serve"],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"serve started with GRIDAPI_SECRET_KEY=x: {exc.stderr}")
    assert served.returncode != 0
    assert "GRIDAPI_SECRET_KEY is too short to be a secret (length 1;" in served.stderr, (
        served.stderr
    )
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()

    env = {k: v for k, v in env.items() if k.startswith("GRIDAPI_")}
    env.update(GRIDAPI_SECRET_KEY="", GRIDAPI_BLIND_INDEX_KEY="short")
    result = CliRunner().invoke(main, ["worker", "--once"], env=env)
    assert result.exit_code == 1 and "GRIDAPI_BLIND_INDEX_KEY is too short" in result.output
    assert "overdue:" not in result.output  # no job ran
    env.update(GRIDAPI_BLIND_INDEX_KEY="b" * 32)
    result = CliRunner().invoke(main, ["worker", "--once"], env=env)
    assert result.exit_code == 0 and "overdue:" in result.output, result.output


def test_serve_with_redis_unreachable_warns_and_answers_503(sqlite_template: Path, tmp_path: Path):
    """GRIDAPI_REDIS_URL pointing at nothing: serve started without a word, /api/v1/health said
    ok and every sign-in answered 500. It now warns at start, readiness fails with 503 (not
    liveness), and a sign-in answers 503 with Retry-After."""
    nothing = _free_port()
    env = _sqlite_env(sqlite_template, tmp_path, GRIDAPI_REDIS_URL=f"redis://127.0.0.1:{nothing}/0")
    port, log = int(env["GRIDAPI_PORT"]), tmp_path / "serve.log"
    with _serving(env, log):
        status, body = _get(port, "/api/v1/health")
        assert status == 503 and "GRIDAPI_REDIS_URL" in body["message"], body
        status, body = _get(port, "/api/v1/auth/token", {"username": "a", "password": "b"})
        assert status == 503 and set(body) == {"code", "status", "message", "errors"}, body
    text = log.read_text()
    assert f"WARNING: GRIDAPI_REDIS_URL (redis://127.0.0.1:{nothing}/0) cannot be reached" in text
    assert "Traceback" not in text, text


class _Switch:
    """A TCP relay to PostgreSQL that can be cut: the database, as the server sees it, goes
    away (connection refused, open connections dropped) and comes back on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = _free_port()
        self.listener: socket.socket | None = None
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self.lock:
            if self.listener is not None:  # shutdown wakes the accept() blocked on it
                with contextlib.suppress(OSError):
                    self.listener.shutdown(socket.SHUT_RDWR)
                self.listener.close()
                self.listener = None
            for sock in self.open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self.open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            server = socket.create_connection(self.upstream)
            with self.lock:
                self.open += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


BOOTED_WITHOUT_INDEX = "routing index not built at worker start, the database cannot be reached"


@pytest.mark.engines("postgis")
def test_a_worker_respawned_while_the_database_is_down_keeps_the_api_up(
    factory, app, database_url: str, tmp_path: Path
):
    """CI, bench/crash: the server was restarted, PostgreSQL crashed 3 s later, and from then
    on every request was refused: a worker booting during the outage raised in
    post_worker_init (building the routing index), which gunicorn takes for "Worker failed to
    boot" and halts the master. A worker now boots without the index, the API answers 503
    while the database is away and routes again when it is back."""
    factory.regions()
    factory.grid_version()
    key = _grids_key(app)
    url = make_url(database_url)
    switch = _Switch((url.host or "127.0.0.1", url.port or 5432))
    switch.up()
    port = _free_port()
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "GRIDAPI_DATABASE_URL": url.set(host="127.0.0.1", port=switch.port).render_as_string(
            hide_password=False
        ),
        "GRIDAPI_DATA_DIR": str(tmp_path / "data"),
        "GRIDAPI_PORT": str(port),
        "GRIDAPI_WORKERS": "2",
        "GRIDAPI_WORKER_IN_SERVE": "off",
        "GRIDAPI_LOG_LEVEL": "WARNING",
    }
    try:
        with _serving(env, log) as proc:
            assert _get(port, "/api/v1/health")[0] == 200
            switch.down()
            (first, *_) = _children(proc.pid)
            os.kill(first, signal.SIGKILL)  # the OOM killer, say, while PostgreSQL restarts
            deadline = time.monotonic() + 30
            while first in _children(proc.pid) or len(_children(proc.pid)) < 2:
                assert proc.poll() is None, log.read_text()  # the master halted
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            # The new worker's boot, which used to halt the master. Waited for by its line in
            # the log, not for a fixed time: a boot slower than that (CI, both cores busy)
            # reached the database after it was back, and the line was never written.
            deadline = time.monotonic() + 60
            while BOOTED_WITHOUT_INDEX not in log.read_text():
                assert proc.poll() is None, log.read_text()  # the master halted
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            assert proc.poll() is None, log.read_text()
            status, body = _get(port, "/api/v1/health")
            assert status == 503, body
            switch.up()
            point = (LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)
            deadline, routed = time.monotonic() + 30, 0
            while routed < 20:  # in a row, enough to reach both workers
                path = f"/api/v1/locate?lon={point[0]}&lat={point[1]}"
                status, answer = _get(port, path, key=key)
                assert status in (200, 503), answer
                routed = routed + 1 if status == 200 else 0
                if status == 200:
                    assert answer["grid"]["code"] == COMMUNITY_A + "001", answer
                assert time.monotonic() < deadline, log.read_text()
    finally:
        switch.down()
    text = log.read_text()
    assert "Worker failed to boot" not in text, text
