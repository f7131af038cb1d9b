"""Crash safety: keyed case reports at concurrency 8 while the server and the database die.

``bench/crash --reports N [--engine postgis|sqlite] [--kills K] [--seed S]``

1. Builds a throwaway database: on PostGIS a PostgreSQL cluster of its own (``initdb`` in a
   temporary directory, its own port — never the machine's cluster), on SQLite a file;
   migrates it, loads the demo county and registers an API client.
2. Starts ``gridapi serve`` (gunicorn, 2 workers) and 8 client threads. Every report has its
   own ``Idempotency-Key`` and ``client_id``; a client sends it until it is acknowledged (201,
   or 200 replaying the first answer), retrying with the same key after a refused
   connection, a timeout, a 409 (in flight) or a 5xx.
3. Meanwhile, at random moments, ``--kills`` times: SIGKILLs the whole server (master and
   workers) and starts it again, or — on PostGIS — stops PostgreSQL with
   ``pg_ctl stop -m immediate`` (a crash: no checkpoint, recovery from WAL on start) and
   starts it again while the server keeps running, or both.
4. Checks the database: every acknowledged report exists exactly once, with the id it was
   acknowledged with; no ``client_id`` twice; every case has exactly one ``report`` timeline
   row, one ``case.created`` outbox event and one sync-log entry; on SQLite
   ``PRAGMA integrity_check`` is ``ok``. Every 503 must carry Retry-After, and no answer may
   be 500 (an unhandled error: the client retries it, and the run fails).

The last line is ``acknowledged=A present=P duplicates=D lost=L``; the exit status is 0 only
when A = N = P and D = L = 0 and every other check holds.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRIDAPI = str(ROOT / ".venv" / "bin" / "gridapi")
COUNTY = "320508000000"  # the demo county (姑苏区)
# A box inside the demo county: most points fall in a grid, a few in gaps (unrouted is fine).
BOX = (120.58, 31.28, 120.65, 31.33)
CATEGORY = "0101"
CLIENTS = 8


def log(message: str) -> None:
    print(f"[crash {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the database ---------------------------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of our own, so that crashing it harms nobody else."""

    def __init__(self, workdir: Path) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
        if not bins:
            raise SystemExit("PostgreSQL server binaries not found (scripts/setup --postgis)")
        self.bin = Path(bins[-1]).parent
        self.data = workdir / "pgdata"
        self.port = free_port()
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_postgres, *args], check=check, capture_output=True, text=True
        )

    def init(self) -> None:
        self.data.mkdir(parents=True)
        if self.as_postgres:
            shutil.chown(self.data.parent, "postgres")
            shutil.chown(self.data, "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=on"
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-w",
            "-t",
            "120",
            "-l",
            str(self.data / "server.log"),
            "start",
        )

    def crash(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop")

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop", check=False)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


# --- the server -----------------------------------------------------------------------------


class Server:
    def __init__(self, env: dict[str, str], port: int, workdir: Path) -> None:
        self.env = env
        self.port = port
        self.logfile = open(workdir / "serve.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [GRIDAPI, "serve", "--port", str(self.port), "--workers", "2"],
            env=self.env,
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status, _ = request(self.port, "GET", "/api/v1/health/live", None, {}, 2)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("gridapi serve did not start; see serve.log")

    def kill(self) -> None:
        """SIGKILL the master and every worker at once (its own process group)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                self.kill()
        self.logfile.close()


def request(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, bytes]:
    status, raw, _ = request_with_headers(port, method, path, body, headers, timeout)
    return status, raw


def request_with_headers(
    port: int, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout: float
) -> tuple[int, bytes, http.client.HTTPMessage]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read(), response.headers
    finally:
        conn.close()


# --- the clients ----------------------------------------------------------------------------


@dataclass
class Tally:
    acknowledged: dict[str, int] = field(default_factory=dict)  # client_id -> case id
    statuses: dict[str, int] = field(default_factory=dict)
    retry_after_missing: int = 0  # 503 answers without Retry-After
    server_errors: list[str] = field(default_factory=list)  # 500 answers: unhandled errors
    unexpected: list[str] = field(default_factory=list)  # answers no retry can change
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, what: str) -> None:
        with self.lock:
            self.statuses[what] = self.statuses.get(what, 0) + 1


def report_body(rng: random.Random, client_id: str) -> bytes:
    lon = rng.uniform(BOX[0], BOX[2])
    lat = rng.uniform(BOX[1], BOX[3])
    return json.dumps(
        {
            "category": CATEGORY,
            "description": "压测事件：路面破损",
            "location": {"type": "Point", "coordinates": [lon, lat]},
            "client_id": client_id,
        }
    ).encode()


def client_loop(
    port: int, key: str, queue: list[tuple[str, bytes]], tally: Tally, stop: threading.Event
) -> None:
    while not stop.is_set():
        with tally.lock:
            if not queue:
                return
            client_id, body = queue.pop()
        headers = {
            "Content-Type": "application/json",
            "X-API-Key": key,
            "Idempotency-Key": f"crash-{client_id}",
        }
        delay = 0.05
        while not stop.is_set():
            try:
                status, raw, answer_headers = request_with_headers(
                    port, "POST", "/api/v1/cases", body, headers, 15
                )
            except (OSError, http.client.HTTPException) as exc:
                # Refused, reset, timed out, or cut off mid-answer (IncompleteRead,
                # BadStatusLine are HTTPException, not OSError): the answer may be lost.
                tally.saw(type(exc).__name__)
            else:
                tally.saw(str(status))
                if status == 503 and not answer_headers.get("Retry-After"):
                    with tally.lock:
                        tally.retry_after_missing += 1
                if status == 500:  # retried (the report must still arrive), and the run fails
                    with tally.lock:
                        tally.server_errors.append(raw[:300].decode("utf-8", "replace"))
                if status in (200, 201):
                    try:
                        case_id = json.loads(raw)["id"]
                    except (ValueError, KeyError):  # a body cut short: not acknowledged
                        tally.saw("truncated body")
                    else:
                        with tally.lock:
                            tally.acknowledged[client_id] = case_id
                        break
                elif status not in (409, 500, 502, 503, 504):
                    # A refusal no retry can change: counted, and the run fails.
                    with tally.lock:
                        tally.unexpected.append(f"{status}: {raw[:300]!r}")
                    break
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


# --- the run --------------------------------------------------------------------------------


def prepare(engine: str, workdir: Path) -> tuple[dict[str, str], Cluster | None]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith("GRIDAPI_"):
            del env[name]
    cluster = None
    if engine == "postgis":
        cluster = Cluster(workdir)
        cluster.init()
        cluster.start()
        env["GRIDAPI_DATABASE_URL"] = cluster.url
    else:
        env["GRIDAPI_DATABASE_URL"] = f"sqlite:///{workdir / 'crash.sqlite3'}"
    env.update(
        GRIDAPI_DATA_DIR=str(workdir / "data"),
        GRIDAPI_LOG_LEVEL="WARNING",
        GRIDAPI_ARGON2_TIME_COST="1",
        GRIDAPI_ARGON2_MEMORY_KIB="8192",
        GRIDAPI_DB_STATEMENT_TIMEOUT_MS="10000",
    )
    for args in (["db", "upgrade"], ["demo-data"]):
        subprocess.run([GRIDAPI, *args], env=env, check=True, capture_output=True)
    return env, cluster


def create_key(env: dict[str, str]) -> str:
    out = subprocess.run(
        [
            GRIDAPI,
            "clients",
            "create",
            "--name",
            "crash",
            "--scopes",
            "cases:read,cases:write",
            "--scope",
            COUNTY,
            "--rate-limit",
            "1000000 per minute",
        ],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.strip().splitlines()[-1]


def check(engine: str, url: str, tally: Tally, sent: set[str]) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    if engine == "sqlite":
        from gridapi.db import make_engine

        db = make_engine(url)
    else:
        db = create_engine(url)
    with db.connect() as conn:
        rows = conn.execute(text("SELECT client_id, id FROM cases WHERE client_id IS NOT NULL"))
        ours = [(cid, case_id) for cid, case_id in rows if cid in sent]
        per_client: dict[str, list[int]] = {}
        for client_id, case_id in ours:
            per_client.setdefault(client_id, []).append(case_id)
        ids = [case_id for _, case_id in ours]
        facts: dict[str, Any] = {}
        for name, sql in (
            (
                "report_rows",
                "SELECT case_id, count(*) FROM case_events WHERE action = 'report' "
                "GROUP BY case_id",
            ),
            (
                "outbox_events",
                "SELECT case_id, count(*) FROM webhook_events "
                "WHERE event_type = 'case.created' GROUP BY case_id",
            ),
            (
                "sync_entries",
                "SELECT entity_id, count(*) FROM sync_log WHERE entity = 'case' GROUP BY entity_id",
            ),
        ):
            try:
                counts = dict(conn.execute(text(sql)).all())
            except Exception as exc:  # a schema this script does not know: say so
                facts[name] = f"not checked ({type(exc).__name__})"
                conn.rollback()
                continue
            wrong = [i for i in ids if counts.get(i) != 1]
            facts[name] = (
                "one per case" if not wrong else f"{len(wrong)} case(s) without exactly one"
            )
        if engine == "sqlite":
            facts["integrity_check"] = conn.execute(text("PRAGMA integrity_check")).scalar()
    db.dispose()
    acknowledged = tally.acknowledged
    present = sum(1 for cid in acknowledged if cid in per_client)
    duplicates = sum(len(v) - 1 for v in per_client.values() if len(v) > 1)
    lost = sum(1 for cid, case_id in acknowledged.items() if case_id not in per_client.get(cid, []))
    facts.update(
        reports=len(sent),
        acknowledged=len(acknowledged),
        present=present,
        duplicates=duplicates,
        lost=lost,
        rows=len(ours),
    )
    return facts


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    workdir = Path(tempfile.mkdtemp(prefix="gridapi-crash-"))
    log(f"work directory {workdir}")
    cluster: Cluster | None = None
    server: Server | None = None
    try:
        env, cluster = prepare(args.engine, workdir)
        key = create_key(env)
        port = free_port()
        server = Server(env, port, workdir)
        server.start()
        client_ids = [
            str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.reports)
        ]
        queue = [(cid, report_body(rng, cid)) for cid in client_ids]
        tally = Tally()
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(port, key, queue, tally, stop), daemon=True)
            for _ in range(CLIENTS)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        # The faults, spread over the run: wait until a share of the reports is acknowledged.
        for k in range(args.kills):
            target = int(args.reports * (k + 1) / (args.kills + 1) * rng.uniform(0.7, 1.1))
            while len(tally.acknowledged) < target and any(t.is_alive() for t in threads):
                time.sleep(0.01)
            kinds = ["server"] if cluster is None else ["server", "database", "both"]
            kind = kinds[k % len(kinds)] if args.kills >= len(kinds) else rng.choice(kinds)
            log(f"fault {k + 1}/{args.kills}: {kind} at {len(tally.acknowledged)} acknowledged")
            if kind in ("server", "both"):
                server.kill()
            if kind in ("database", "both") and cluster is not None:
                t0 = time.monotonic()
                cluster.crash()
                time.sleep(rng.uniform(0.2, 1.5))
                cluster.start()
            if kind in ("server", "both"):
                server.start()
            if kind == "database":
                # The server was not restarted: it must recover by itself.
                while request(port, "GET", "/api/v1/health", None, {}, 5)[0] != 200:
                    time.sleep(0.1)
                    if time.monotonic() - t0 > 60:
                        raise SystemExit("the server did not recover from the database restart")
                log(f"server healthy again {time.monotonic() - t0:.1f} s after the crash")
        for t in threads:
            t.join(timeout=max(60.0, args.reports / 5))
        stop.set()
        elapsed = time.monotonic() - started
        facts = check(args.engine, env["GRIDAPI_DATABASE_URL"], tally, set(client_ids))
        facts["seconds"] = round(elapsed, 1)
        facts["answers"] = dict(sorted(tally.statuses.items()))
        facts["503_without_retry_after"] = tally.retry_after_missing
        facts["500_answers"] = len(tally.server_errors)
        facts["unexpected_answers"] = tally.unexpected[:5] or "none"
        for name, value in facts.items():
            log(f"{name}: {value}")
        good = (
            facts["acknowledged"] == args.reports == facts["present"] == facts["rows"]
            and facts["duplicates"] == 0
            and facts["lost"] == 0
            and all(
                facts.get(n) in (None, "one per case")
                for n in ("report_rows", "outbox_events", "sync_entries")
            )
            and facts.get("integrity_check", "ok") == "ok"
            and tally.retry_after_missing == 0
            and not tally.server_errors
            and not tally.unexpected
        )
        print(
            f"acknowledged={facts['acknowledged']} present={facts['present']} "
            f"duplicates={facts['duplicates']} lost={facts['lost']}",
            flush=True,
        )
        return 0 if good else 1
    finally:
        if server is not None:
            server.stop()
        if cluster is not None:
            cluster.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=2000, help="keyed reports to send")
    parser.add_argument("--engine", choices=("postgis", "sqlite"), default="postgis")
    parser.add_argument("--kills", type=int, default=4, help="faults to inject")
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
