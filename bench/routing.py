"""Routing benchmarks: the in-process index, a PostGIS ST_Covers reference and the HTTP API."""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import os
import platform
import pstats
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
import summary
import synthetic
from sqlalchemy.engine import Engine, make_url

from gridapi.db import make_engine
from gridapi.scope import Scope
from gridapi.services.routing import IndexSnapshot, build_snapshot, current_generation

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SNAP_METERS = 50.0  # the default of GRIDAPI_ROUTING_SNAP_METERS
TARGET_P99_US = 30.0
TARGET_BATCH_PPS = 100_000.0
TARGET_LOCATE_OVER_LIVE = 1.3
TARGET_P99_SIZE = 200_000
REFERENCE_SQL = (
    "SELECT id, code FROM grids WHERE in_service AND "
    "ST_Covers(geom, ST_SetSRID(ST_MakePoint(%s, %s), 4326))"
)
# SpatiaLite has no planner use of its R*Tree, so the reference asks the index explicitly.
REFERENCE_SQL_SQLITE = (
    "SELECT id, code FROM grids WHERE in_service AND id IN (SELECT pkid FROM idx_grids_geom "
    "WHERE xmin <= ?1 AND xmax >= ?1 AND ymin <= ?2 AND ymax >= ?2) AND "
    "ST_Covers(geom, MakePoint(?1, ?2, 4326))"
)


@dataclass
class Latencies:
    """Per-call latencies in nanoseconds and the wall time they were measured over."""

    ns: np.ndarray
    wall_s: float
    items_per_call: int = 1
    server_cpu_s: float = float("nan")  # CPU time of the server's workers over the run
    client_cpu_s: float = float("nan")  # CPU time of this (client) process over the run

    @property
    def p50_us(self) -> float:
        return float(np.percentile(self.ns, 50)) / 1e3

    @property
    def p99_us(self) -> float:
        return float(np.percentile(self.ns, 99)) / 1e3

    @property
    def mean_us(self) -> float:
        return float(self.ns.mean()) / 1e3

    @property
    def server_cpu_us(self) -> float:
        """Server CPU per call, in µs (user + system time of all workers)."""
        return self.server_cpu_s / len(self.ns) * 1e6

    @property
    def client_cpu_us(self) -> float:
        """Client CPU per call, in µs (this process, all threads)."""
        return self.client_cpu_s / len(self.ns) * 1e6

    @property
    def per_s(self) -> float:
        """Items (points or requests) per second of wall time."""
        return len(self.ns) * self.items_per_call / self.wall_s


@dataclass
class SizeResult:
    """Everything measured for one grid-set size."""

    size: int
    setup: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    single: Latencies | None = None
    bulk: Latencies | None = None
    reference: Latencies | None = None
    batch: Latencies | None = None
    get_locate: Latencies | None = None
    get_live: Latencies | None = None


# --------------------------------------------------------------------------------------------
# The machine.
# --------------------------------------------------------------------------------------------


# Every routing call is authenticated like a third-party app's: an API key with grids:read.
AUTH: dict[str, str] = {}


def create_bench_key(engine: Engine) -> str:
    """Register an API client in the bench database and return its key."""
    from sqlalchemy.orm import Session

    from gridapi.services.identity import create_client

    with Session(engine) as session, session.begin():
        _, key = create_client(
            session,
            name="bench",
            scopes=["grids:read"],
            scope_region=None,
            rate_limit="1000000 per second",  # the most a key may have: no limit here
            created_by="bench",
        )
    return key


def machine(engine: Engine | None) -> list[tuple[str, str]]:
    """Return (label, value) pairs describing the machine and the software versions."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        (
            "cpu",
            f"{summary.cpu_model()}, {cores} cores usable ({os.cpu_count()} online), "
            f"{summary.ram_gib()} RAM",
        ),
        ("os", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("shapely / GEOS", f"shapely {shapely.__version__}, GEOS {shapely.geos_version_string}"),
        (
            "numpy, psycopg, gunicorn",
            f"numpy {np.__version__}, psycopg {version('psycopg')}, gunicorn {version('gunicorn')}",
        ),
    ]
    if engine is not None and engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            server = conn.exec_driver_sql("SELECT version()").scalar_one()
            postgis = conn.exec_driver_sql(
                "SELECT postgis_lib_version() || ' (GEOS ' || postgis_geos_version() || ')'"
            ).scalar_one()
        rows.append(("PostgreSQL", str(server).split(" on ")[0]))
        rows.append(("PostGIS", str(postgis)))
    elif engine is not None:
        with engine.connect() as conn:
            row = conn.exec_driver_sql(
                "SELECT sqlite_version(), spatialite_version(), geos_version()"
            ).one()
        rows.append(
            ("SQLite / SpatiaLite", f"SQLite {row[0]}, SpatiaLite {row[1]} (GEOS {row[2]})")
        )
    return rows


# --------------------------------------------------------------------------------------------
# In-process and reference measurements.
# --------------------------------------------------------------------------------------------


def random_points(
    bounds: tuple[float, float, float, float], n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return n points uniformly distributed over the covered rectangle."""
    minx, miny, maxx, maxy = bounds
    return rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)


def warm(snap: IndexSnapshot) -> float:
    """Touch every grid once (GEOS builds a prepared geometry's index on first use)."""
    started = time.perf_counter()
    inside = shapely.get_coordinates(shapely.point_on_surface(snap.geoms))
    for i in range(0, len(inside), 10_000):
        snap.locate_many(inside[i : i + 10_000, 0].copy(), inside[i : i + 10_000, 1].copy())
    return time.perf_counter() - started


def bench_single(
    snap: IndexSnapshot, xs: np.ndarray, ys: np.ndarray, rounds: int = 3
) -> tuple[Latencies, list[float]]:
    """Time each ``IndexSnapshot.locate`` call separately, over ``rounds`` passes of the points.

    Returns the pooled latencies and the p99 of each pass (its spread shows the noise).
    """
    lons, lats = xs.tolist(), ys.tolist()
    for lon, lat in zip(lons[:500], lats[:500], strict=True):
        snap.locate(lon, lat)
    clock = time.perf_counter_ns
    locate = snap.locate
    parts = []
    wall = 0.0
    for _ in range(rounds):
        out = np.empty(len(lons), dtype=np.int64)
        started = time.perf_counter()
        for i, (lon, lat) in enumerate(zip(lons, lats, strict=True)):
            t0 = clock()
            locate(lon, lat)
            out[i] = clock() - t0
        wall += time.perf_counter() - started
        parts.append(out)
    p99s = [float(np.percentile(p, 99)) / 1e3 for p in parts]
    return Latencies(np.concatenate(parts), wall), p99s


def bench_bulk(
    snap: IndexSnapshot, xs: np.ndarray, ys: np.ndarray, batch: int, *, answers: bool = False
) -> Latencies:
    """Time ``locate_many`` over consecutive arrays of ``batch`` points.

    With ``answers``, time ``encode_answers`` instead: the whole body of a
    ``POST /locate/batch`` (grids, regions of the points no grid answers for, JSON).
    """
    everything = Scope.everything()

    def call(lo: np.ndarray, la: np.ndarray) -> None:
        if answers:
            snap.encode_answers(lo, la, everything)
        else:
            snap.locate_many(lo, la)

    call(xs[:batch], ys[:batch])
    out = []
    started = time.perf_counter()
    for i in range(0, len(xs) - batch + 1, batch):
        lo, la = xs[i : i + batch], ys[i : i + batch]
        t0 = time.perf_counter_ns()
        call(lo, la)
        out.append(time.perf_counter_ns() - t0)
    return Latencies(np.array(out), time.perf_counter() - started, items_per_call=batch)


def without_township(snap: IndexSnapshot) -> tuple[IndexSnapshot, Any]:
    """Return the index with the grids of the township holding the most grids left out
    (a township whose grids are not in service yet), and that township's boundary."""
    holding: dict[str, int] = {}
    for g in snap.grids:
        holding[g["code"][:9]] = holding.get(g["code"][:9], 0) + 1
    township = max(sorted(holding), key=lambda t: holding[t])
    keep = [i for i, g in enumerate(snap.grids) if not g["code"].startswith(township)]
    wkb = shapely.to_wkb(snap.geoms[keep])
    rows = [
        (
            snap.grids[i]["id"],
            snap.grids[i]["code"],
            snap.grids[i]["name"],
            snap.grids[i]["type"],
            snap.grids[i]["community_code"],
            snap.grids[i]["version_id"],
            w,
        )
        for i, w in zip(keep, wkb, strict=True)
    ]
    shapes = list(zip(snap.region_codes, snap.region_geoms, strict=True))
    boundary = snap.region_geoms[snap.region_codes.index(township + "000")]
    return IndexSnapshot(snap.generation, rows, snap.regions, shapes, snap.snap_meters), boundary


def points_inside(boundary: Any, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return n points uniformly distributed inside ``boundary``."""
    minx, miny, maxx, maxy = shapely.bounds(boundary)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    while sum(len(x) for x in xs) < n:
        x, y = rng.uniform(minx, maxx, n), rng.uniform(miny, maxy, n)
        inside = shapely.contains_xy(boundary, x, y)
        xs.append(x[inside])
        ys.append(y[inside])
    return np.concatenate(xs)[:n], np.concatenate(ys)[:n]


def bench_reference(url: str, xs: np.ndarray, ys: np.ndarray) -> tuple[Latencies, dict]:
    """Time one spatial-SQL lookup per point over one connection, same prepared statement."""
    if url.startswith("sqlite"):
        return _bench_reference_sqlite(url, xs, ys)
    import psycopg

    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    facts: dict[str, Any] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor() as cur:
        plan = cur.execute("EXPLAIN " + REFERENCE_SQL, (float(xs[0]), float(ys[0]))).fetchall()
        facts["reference plan"] = (
            "GiST index scan" if any("idx_grids_geom" in r[0] for r in plan) else "no index (!)"
        )
        for x, y in zip(xs[:200].tolist(), ys[:200].tolist(), strict=True):
            cur.execute(REFERENCE_SQL, (x, y), prepare=True).fetchall()
        out = np.empty(len(xs), dtype=np.int64)
        hits = 0
        clock = time.perf_counter_ns
        started = time.perf_counter()
        for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True)):
            t0 = clock()
            rows = cur.execute(REFERENCE_SQL, (x, y), prepare=True).fetchall()
            out[i] = clock() - t0
            hits += bool(rows)
        wall = time.perf_counter() - started
    facts["reference hit rate"] = hits / len(xs)
    return Latencies(out, wall), facts


def _bench_reference_sqlite(url: str, xs: np.ndarray, ys: np.ndarray) -> tuple[Latencies, dict]:
    engine = make_engine(url)
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for x, y in zip(xs[:200].tolist(), ys[:200].tolist(), strict=True):
            cur.execute(REFERENCE_SQL_SQLITE, (x, y)).fetchall()
        out = np.empty(len(xs), dtype=np.int64)
        hits = 0
        started = time.perf_counter()
        for i, (x, y) in enumerate(zip(xs.tolist(), ys.tolist(), strict=True)):
            t0 = time.perf_counter_ns()
            rows = cur.execute(REFERENCE_SQL_SQLITE, (x, y)).fetchall()
            out[i] = time.perf_counter_ns() - t0
            hits += bool(rows)
        wall = time.perf_counter() - started
    finally:
        raw.close()
        engine.dispose()
    return Latencies(out, wall), {
        "reference plan": "SpatiaLite R*Tree + ST_Covers",
        "reference hit rate": hits / len(xs),
    }


# --------------------------------------------------------------------------------------------
# HTTP.
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    url: str, workers: int, log_dir: Path, timeout_s: float = 180.0
) -> Iterator[tuple[str, int, int]]:
    """Run ``gridapi serve`` on a free port until the block ends; yield (host, port, pid)."""
    port = _free_port()
    env = dict(
        os.environ,
        GRIDAPI_DATABASE_URL=url,
        GRIDAPI_HOST="127.0.0.1",
        GRIDAPI_PORT=str(port),
        GRIDAPI_WORKERS=str(workers),
        GRIDAPI_LOG_LEVEL="INFO",
    )
    script = Path(sys.executable).with_name("gridapi")
    cmd = (
        [str(script), "serve"]
        if script.exists()
        else [sys.executable, "-m", "gridapi.cli", "serve"]
    )
    log_path = log_dir / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"gridapi serve exited ({proc.returncode}):\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "gridapi serve did not become ready:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            # Ready when /health/live answers and every worker has built its routing index.
            built = log_path.read_text(errors="replace").count("routing index generation")
            if built >= workers and _status("127.0.0.1", port, "/api/v1/health/live") == 200:
                break
            time.sleep(0.2)
        yield "127.0.0.1", port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _status(host: str, port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection(host, port, timeout=2)
        conn.request("GET", path)
        status = conn.getresponse().status
        conn.close()
        return status
    except OSError:
        return None


def workers_cpu_s(master_pid: int) -> float:
    """Return the CPU seconds (user + system) used so far by the children of ``master_pid``."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                if stat.read_text().rsplit(")", 1)[1].split()[1] == str(master_pid):
                    children.append(stat.parent.name)
            except (OSError, IndexError):
                continue
    ticks = 0
    for pid in children:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / os.sysconf("SC_CLK_TCK")


Request = tuple[str, str, bytes | None]


def load_test(
    host: str,
    port: int,
    make: Callable[[int], Request],
    *,
    clients: int,
    seconds: float,
    min_requests: int = 1,
    items: int = 1,
    server_pid: int | None = None,
) -> tuple[Latencies, dict]:
    """Run ``clients`` threads, each with its own HTTPConnection, for about ``seconds``.

    Connections are reused whenever the server keeps them open; http.client reconnects by
    itself after a ``Connection: close``, and the reconnections are counted. With
    ``server_pid`` the server workers' CPU time over the run is recorded too.
    """
    barrier = threading.Barrier(clients + 1)
    results: list[list[int]] = [[] for _ in range(clients)]
    reconnects = [0] * clients
    errors: list[str] = []
    stop_at = [0.0]
    headers = {"Content-Type": "application/json", "Connection": "keep-alive", **AUTH}

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        mine = results[k]
        i = k
        barrier.wait()
        while time.monotonic() < stop_at[0] or len(mine) * clients < min_requests:
            method, path, body = make(i)
            t0 = time.perf_counter_ns()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn.close()
                if len(errors) > 10:
                    return
                continue
            mine.append(time.perf_counter_ns() - t0)
            if resp.status != 200:
                errors.append(f"HTTP {resp.status} for {method} {path[:60]}")
                return
            if resp.will_close:
                reconnects[k] += 1
            i += clients
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    server_cpu = workers_cpu_s(server_pid) if server_pid else float("nan")
    client_cpu = time.process_time()
    stop_at[0] = time.monotonic() + seconds
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    if server_pid:
        server_cpu = workers_cpu_s(server_pid) - server_cpu
    if errors:
        raise RuntimeError(f"HTTP errors: {errors[:3]}")
    ns = np.array([x for r in results for x in r], dtype=np.int64)
    return Latencies(ns, wall, items, server_cpu, client_cpu), {
        "requests": len(ns),
        "connection closed by server": sum(reconnects) / max(1, len(ns)),
    }


def bench_http(
    url: str,
    bounds: tuple[float, float, float, float],
    rng: np.random.Generator,
    *,
    workers: int,
    clients: int,
    batch: int,
    seconds: float,
    log_dir: Path,
) -> dict[str, Any]:
    """Measure POST /locate/batch, GET /locate and GET /health/live against ``gridapi serve``."""
    bodies = []
    for _ in range(4):
        xs, ys = random_points(bounds, batch, rng)
        bodies.append(orjson.dumps({"points": np.column_stack([xs, ys]).tolist()}))
    gx, gy = random_points(bounds, 50_000, rng)
    paths = [f"/api/v1/locate?lon={x:.7f}&lat={y:.7f}" for x, y in zip(gx, gy, strict=True)]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    with server(url, workers, log_dir) as (host, port, pid):
        out["server start (s)"] = time.perf_counter() - started
        conn = http.client.HTTPConnection(host, port, timeout=120)
        conn.request(
            "POST",
            "/api/v1/locate/batch",
            body=bodies[0],
            headers={"Content-Type": "application/json", **AUTH},
        )
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        results = orjson.loads(payload)["results"]
        if resp.status != 200 or len(results) != batch:
            raise RuntimeError(f"unexpected batch answer: HTTP {resp.status}")
        out["batch response (MB)"] = len(payload) / 1e6
        out["batch grids found"] = sum(r["grid"] is not None for r in results) / batch
        del results, payload

        def batch_req(i: int) -> Request:
            return "POST", "/api/v1/locate/batch", bodies[i % len(bodies)]

        def locate_req(i: int) -> Request:
            return "GET", paths[i % len(paths)], None

        def live_req(i: int) -> Request:
            return "GET", "/api/v1/health/live", None

        out["batch"], facts = load_test(
            host,
            port,
            batch_req,
            clients=clients,
            seconds=seconds,
            min_requests=2 * clients,
            items=batch,
            server_pid=pid,
        )
        out["batch requests"] = facts["requests"]
        out["connection closed by server"] = facts["connection closed by server"]
        # Interleaved rounds, so drift (other load, CPU frequency) hits both endpoints alike.
        load_test(host, port, live_req, clients=clients, seconds=0.5)
        load_test(host, port, locate_req, clients=clients, seconds=0.5)
        live, locate = [], []
        for _ in range(2):
            live.append(
                load_test(
                    host, port, live_req, clients=clients, seconds=seconds / 2, server_pid=pid
                )[0]
            )
            locate.append(
                load_test(
                    host, port, locate_req, clients=clients, seconds=seconds / 2, server_pid=pid
                )[0]
            )
        out["get_live"] = _merge(live)
        out["get_locate"] = _merge(locate)
    return out


def _merge(parts: list[Latencies]) -> Latencies:
    return Latencies(
        np.concatenate([p.ns for p in parts]),
        sum(p.wall_s for p in parts),
        parts[0].items_per_call,
        sum(p.server_cpu_s for p in parts),
        sum(p.client_cpu_s for p in parts),
    )


# --------------------------------------------------------------------------------------------
# Profiles (optional): where the time goes in the single lookup and in the batch endpoint.
# --------------------------------------------------------------------------------------------


def profile(
    url: str,
    snap: IndexSnapshot,
    bounds: tuple[float, float, float, float],
    rng: np.random.Generator,
    batch: int,
) -> str:
    """Return cProfile summaries of 20,000 single lookups, 200 GET /locate and one batch."""
    from gridapi.app import create_app

    buf = io.StringIO()
    xs, ys = random_points(bounds, 20_000, rng)
    prof = cProfile.Profile()
    prof.enable()
    for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
        snap.locate(x, y)
    prof.disable()
    buf.write("### IndexSnapshot.locate × 20,000\n\n```\n")
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    buf.write("```\n\n")
    app = create_app({"database_url": url, "log_level": "WARNING"})
    client = app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = AUTH["X-API-Key"]
    client.get("/api/v1/health/live")
    client.get("/api/v1/locate?lon=117&lat=27")
    for name, calls in (
        ("GET /api/v1/health/live × 2,000", [("get", "/api/v1/health/live", None)] * 2000),
        (
            "GET /api/v1/locate × 2,000",
            [
                ("get", f"/api/v1/locate?lon={x:.7f}&lat={y:.7f}", None)
                for x, y in zip(xs[:2000], ys[:2000], strict=True)
            ],
        ),
        (
            f"POST /api/v1/locate/batch ({batch:,} points) × 3",
            [
                (
                    "post",
                    "/api/v1/locate/batch",
                    orjson.dumps({"points": np.column_stack([xs[:batch], ys[:batch]]).tolist()}),
                )
            ]
            * 3,
        ),
    ):
        prof = cProfile.Profile()
        prof.enable()
        for method, path, body in calls:
            resp = getattr(client, method)(path, data=body, content_type="application/json")
            assert resp.status_code == 200, resp.data[:200]
        prof.disable()
        buf.write(f"### {name} (Flask test client, no HTTP server)\n\n```\n")
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        buf.write("```\n\n")
    app.extensions["gridapi"].engine.dispose()
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# One size, and the report.
# --------------------------------------------------------------------------------------------


def run_size(size: int, args: argparse.Namespace, log_dir: Path) -> tuple[SizeResult, str]:
    """Build, load and measure one grid set; return its results and the database URL used."""
    res = SizeResult(size)
    rng = np.random.default_rng(args.seed + size)
    t0 = time.perf_counter()
    gs = synthetic.build(size, args.seed)
    res.setup["generate (s)"] = time.perf_counter() - t0
    res.facts["regions"] = len(gs.regions)
    res.facts["vertices per grid"] = gs.vertices / len(gs)
    if args.engine == "postgis":
        url = synthetic.create_postgres_database(args.admin_url, f"gridapi_bench_{size}")
    else:
        url = f"sqlite:///{log_dir / f'gridapi_bench_{size}.sqlite3'}"
    engine = make_engine(url)
    t0 = time.perf_counter()
    synthetic.load(engine, gs)
    AUTH["X-API-Key"] = create_bench_key(engine)
    res.setup["load into database (s)"] = time.perf_counter() - t0
    bounds = gs.bounds
    del gs
    t0 = time.perf_counter()
    snap = build_snapshot(engine, current_generation(engine), SNAP_METERS)
    res.setup["build index in process (s)"] = time.perf_counter() - t0
    res.setup["warm every grid (s)"] = warm(snap)
    res.facts["machine"] = machine(engine)
    engine.dispose()
    _log(
        f"  {size:,} grids: generated, loaded and indexed "
        f"({', '.join(f'{k} {v:.1f}' for k, v in res.setup.items())})"
    )

    xs, ys = random_points(bounds, args.points, rng)
    res.single, p99s = bench_single(snap, xs, ys, args.rounds)
    res.facts["in-process p99 per pass (µs)"] = ", ".join(f"{v:.1f}" for v in p99s)
    bx, by = random_points(bounds, args.batch * args.bulk_batches, rng)
    res.bulk = bench_bulk(snap, bx, by, args.batch)
    # Fixes far from every grid (a phone without a fix sends 0°, 0°): each was searched for
    # a grid to snap to on its own, 10,000 of them ≈ 1 s of a batch.
    far = bench_bulk(snap, bx + (bounds[2] - bounds[0]) + 1.0, by, args.batch)
    res.facts["in-process arrays, points 1° east of every grid"] = (
        f"{_fmt_rate(far.per_s, 'pts')} ({_x(far.per_s / res.bulk.per_s)} the covered area's)"
    )
    # Whole answers (the body of POST /locate/batch): a point no grid answers for is answered
    # with the regions covering it, which were looked up one point at a time.
    answers = bench_bulk(snap, bx, by, args.batch, answers=True)
    res.facts["in-process answers (`encode_answers`), covered area"] = _fmt_rate(
        answers.per_s, "pts"
    )
    holed, township = without_township(snap)
    tx, ty = points_inside(township, args.batch * args.bulk_batches, rng)
    in_township = bench_bulk(holed, tx, ty, args.batch, answers=True)
    del holed
    res.facts["in-process answers, points inside a township but outside its grids"] = (
        f"{_fmt_rate(in_township.per_s, 'pts')} "
        f"({_x(in_township.per_s / answers.per_s)} the covered area's)"
    )
    far_answers = bench_bulk(snap, bx + (bounds[2] - bounds[0]) + 1.0, by, args.batch, answers=True)
    res.facts["in-process answers, points 1° east of every grid"] = (
        f"{_fmt_rate(far_answers.per_s, 'pts')} "
        f"({_x(far_answers.per_s / answers.per_s)} the covered area's)"
    )
    rx, ry = random_points(bounds, args.reference_points, rng)
    res.reference, facts = bench_reference(url, rx, ry)
    res.facts.update(facts)
    _log(f"  {size:,} grids: in-process and reference done")
    if args.profile and size == max(args.sizes):
        res.facts["profile"] = profile(url, snap, bounds, rng, args.batch)
    del snap
    if not args.skip_http:
        out = bench_http(
            url,
            bounds,
            rng,
            workers=args.workers,
            clients=args.clients,
            batch=args.batch,
            seconds=args.http_seconds,
            log_dir=log_dir,
        )
        res.batch, res.get_locate, res.get_live = (
            out.pop("batch"),
            out.pop("get_locate"),
            out.pop("get_live"),
        )
        res.setup["server start, 2 workers (s)"] = out.pop("server start (s)")
        res.facts.update(out)
        _log(f"  {size:,} grids: HTTP done")
    return res, url


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _fmt_us(v: float) -> str:
    return f"{v:,.0f} µs" if v >= 100 else f"{v:.1f} µs"


def _fmt_rate(v: float, unit: str) -> str:
    return f"{v:,.0f} {unit}/s"


def _x(v: float) -> str:
    if v < 1:
        return f"{v:.2g}×"
    return f"{v:,.1f}×" if v < 100 else f"{v:,.0f}×"


def report(results: list[SizeResult], args: argparse.Namespace) -> str:
    """Return the Markdown report: machine, figures with ratios, targets, setup."""
    out = io.StringIO()
    w = out.write
    w("## Machine\n\n| | |\n|---|---|\n")
    for label, value in results[0].facts["machine"]:
        w(f"| {label} | {value} |\n")
    engine_label = "PostGIS ST_Covers" if args.engine == "postgis" else "SpatiaLite ST_Covers"
    sizes = [r.size for r in results]
    w(f"\n## Routing ({args.engine}; uniform random points over the covered area)\n\n")
    w(
        f"Each cell: the figure, then in brackets the speed-up over the {engine_label} reference "
        "of the same run (reference cost ÷ this cost; > 1 is faster than the database).\n\n"
    )
    w("| measure | " + " | ".join(f"{s:,} grids" for s in sizes) + " | target |\n")
    w("|---|" + "---|" * len(sizes) + "---|\n")

    def row(label: str, cell: Callable[[SizeResult], str | None], target: str = "") -> None:
        cells = [cell(r) or "–" for r in results]
        w(f"| {label} | " + " | ".join(cells) + f" | {target} |\n")

    def ref_pps(r: SizeResult) -> float:
        assert r.reference is not None
        return 1e6 / r.reference.mean_us

    row(
        "in-process `locate` p50",
        lambda r: (
            r.single and f"{_fmt_us(r.single.p50_us)} ({_x(r.reference.p50_us / r.single.p50_us)})"
        ),
    )
    row(
        "in-process `locate` p99",
        lambda r: (
            r.single and f"{_fmt_us(r.single.p99_us)} ({_x(r.reference.p99_us / r.single.p99_us)})"
        ),
        f"≤ {TARGET_P99_US:.0f} µs at {TARGET_P99_SIZE:,}",
    )
    row(
        f"in-process `locate_many` ({args.batch:,}-point arrays)",
        lambda r: r.bulk and f"{_fmt_rate(r.bulk.per_s, 'pts')} ({_x(r.bulk.per_s / ref_pps(r))})",
    )
    row(
        f"reference: {engine_label} p50, 1 connection",
        lambda r: r.reference and f"{_fmt_us(r.reference.p50_us)} (1×)",
    )
    row(
        f"reference: {engine_label} p99",
        lambda r: r.reference and f"{_fmt_us(r.reference.p99_us)} (1×)",
    )
    row(
        "reference: sequential throughput",
        lambda r: r.reference and f"{_fmt_rate(ref_pps(r), 'pts')} (1×)",
    )
    if not args.skip_http:
        row(
            f"HTTP `POST /locate/batch` ({args.batch:,} points, {args.clients} clients)",
            lambda r: (
                r.batch and f"{_fmt_rate(r.batch.per_s, 'pts')} ({_x(r.batch.per_s / ref_pps(r))})"
            ),
            f"≥ {TARGET_BATCH_PPS:,.0f} pts/s",
        )
        row(
            "HTTP `POST /locate/batch` latency p50",
            lambda r: r.batch and f"{r.batch.p50_us / 1e3:,.0f} ms",
        )
        row(
            f"HTTP `GET /locate` ({args.clients} clients)",
            lambda r: (
                r.get_locate
                and f"{_fmt_rate(r.get_locate.per_s, 'req')} ({_x(r.get_locate.per_s / ref_pps(r))})"
            ),
        )
        row(
            "HTTP `GET /locate` latency p50 / p99",
            lambda r: (
                r.get_locate
                and f"{_fmt_us(r.get_locate.p50_us)} / {_fmt_us(r.get_locate.p99_us)} "
                f"({_x(r.reference.p50_us / r.get_locate.p50_us)})"
            ),
        )
        row(
            f"HTTP `GET /health/live` ({args.clients} clients)",
            lambda r: (
                r.get_live
                and f"{_fmt_rate(r.get_live.per_s, 'req')} ({_x(r.get_live.per_s / ref_pps(r))})"
            ),
        )
        row(
            "HTTP `GET /health/live` latency p50 / p99",
            lambda r: (
                r.get_live
                and f"{_fmt_us(r.get_live.p50_us)} / {_fmt_us(r.get_live.p99_us)} "
                f"({_x(r.reference.p50_us / r.get_live.p50_us)})"
            ),
        )
        row(
            "cost of `GET /locate` ÷ `GET /health/live` (by throughput)",
            lambda r: r.get_live and f"{r.get_live.per_s / r.get_locate.per_s:.2f}×",
            f"≤ {TARGET_LOCATE_OVER_LIVE}×",
        )
        row(
            "… (by mean latency)",
            lambda r: r.get_live and f"{r.get_locate.mean_us / r.get_live.mean_us:.2f}×",
        )
        row(
            "… (by server CPU per request)",
            lambda r: (
                r.get_live and f"{r.get_locate.server_cpu_us / r.get_live.server_cpu_us:.2f}×"
            ),
        )
        row(
            "CPU per `GET /locate`: server / client",
            lambda r: (
                r.get_locate
                and f"{_fmt_us(r.get_locate.server_cpu_us)} / {_fmt_us(r.get_locate.client_cpu_us)}"
            ),
        )
        row(
            "CPU per `GET /health/live`: server / client",
            lambda r: (
                r.get_live
                and f"{_fmt_us(r.get_live.server_cpu_us)} / {_fmt_us(r.get_live.client_cpu_us)}"
            ),
        )
        row(
            "CPU per `POST /locate/batch`: server / client",
            lambda r: (
                r.batch
                and f"{r.batch.server_cpu_us / 1e3:,.0f} ms / {r.batch.client_cpu_us / 1e3:,.0f} ms"
            ),
        )

    w("\n## Targets\n\n| target | " + " | ".join(f"{s:,}" for s in sizes) + " |\n")
    w("|---|" + "---|" * len(sizes) + "\n")
    p99_size = TARGET_P99_SIZE if TARGET_P99_SIZE in sizes else max(sizes)
    w(
        f"| in-process p99 ≤ {TARGET_P99_US:.0f} µs (judged at {p99_size:,}) | "
        + " | ".join(
            _verdict(r.single.p99_us <= TARGET_P99_US)
            if r.size == p99_size and r.single
            else (f"({r.single.p99_us:.1f} µs)" if r.single else "–")
            for r in results
        )
        + " |\n"
    )
    if not args.skip_http:
        w(
            f"| `locate/batch` ≥ {TARGET_BATCH_PPS:,.0f} points/s over HTTP | "
            + " | ".join(
                _verdict(r.batch.per_s >= TARGET_BATCH_PPS) if r.batch else "–" for r in results
            )
            + " |\n"
        )
        w(
            f"| `GET /locate` ≤ {TARGET_LOCATE_OVER_LIVE}× the cost of `/health/live` | "
            + " | ".join(
                _verdict(r.get_live.per_s / r.get_locate.per_s <= TARGET_LOCATE_OVER_LIVE)
                if r.get_live
                else "–"
                for r in results
            )
            + " |\n"
        )

    w("\n## Setup and sample sizes\n\n| | " + " | ".join(f"{s:,}" for s in sizes) + " |\n")
    w("|---|" + "---|" * len(sizes) + "\n")
    keys: list[str] = []
    for r in results:
        keys += [k for k in r.setup if k not in keys]
    for k in keys:
        w(
            f"| {k} | "
            + " | ".join(f"{r.setup[k]:.1f}" if k in r.setup else "–" for r in results)
            + " |\n"
        )
    fact_keys: list[str] = []
    for r in results:
        fact_keys += [k for k in r.facts if k not in fact_keys and k not in ("machine", "profile")]
    for k in fact_keys:
        w(f"| {k} | " + " | ".join(_fmt_fact(r.facts.get(k)) for r in results) + " |\n")
    w(
        "| timed calls: single / bulk arrays / reference | "
        + " | ".join(
            f"{len(r.single.ns):,} / {len(r.bulk.ns)} / {len(r.reference.ns):,}"
            if r.single and r.bulk and r.reference
            else "–"
            for r in results
        )
        + " |\n"
    )
    if not args.skip_http:
        w(
            "| HTTP requests: batch / locate / live | "
            + " | ".join(
                f"{len(r.batch.ns)} / {len(r.get_locate.ns):,} / {len(r.get_live.ns):,}"
                if r.batch and r.get_locate and r.get_live
                else "–"
                for r in results
            )
            + " |\n"
        )
    for r in results:
        if "profile" in r.facts:
            w(f"\n## Profiles at {r.size:,} grids\n\n{r.facts['profile']}")
    return out.getvalue()


def record_summary(results: list[SizeResult], args: argparse.Namespace) -> None:
    """Record the headline figures of the report for bench/summary.py (per size)."""
    engine_label = "PostGIS ST_Covers" if args.engine == "postgis" else "SpatiaLite ST_Covers"
    sizes = [r.size for r in results]
    if not sizes:
        return
    p99_size = TARGET_P99_SIZE if TARGET_P99_SIZE in sizes else max(sizes)
    for r in results:
        grids = f"{r.size:,} grids"
        if r.single and r.reference:
            summary.record(
                "routing",
                f"in-process `locate` p99, {grids}",
                _fmt_us(r.single.p99_us),
                f"{engine_label} p99 {_fmt_us(r.reference.p99_us)}",
                f"{_x(r.reference.p99_us / r.single.p99_us)} faster",
                f"≤ {TARGET_P99_US:.0f} µs at {TARGET_P99_SIZE:,} grids",
                r.single.p99_us <= TARGET_P99_US if r.size == p99_size else None,
            )
        if r.batch and r.reference:
            ref_pps = 1e6 / r.reference.mean_us
            summary.record(
                "routing",
                f"HTTP `POST /locate/batch` ({args.batch:,} points, {args.clients} clients), {grids}",
                _fmt_rate(r.batch.per_s, "pts"),
                f"{engine_label}, sequential, {_fmt_rate(ref_pps, 'pts')}",
                _x(r.batch.per_s / ref_pps),
                f"≥ {TARGET_BATCH_PPS:,.0f} points/s",
                r.batch.per_s >= TARGET_BATCH_PPS,
            )
        if r.get_locate and r.get_live:
            cost = r.get_live.per_s / r.get_locate.per_s
            summary.record(
                "routing",
                f"HTTP `GET /locate` cost ÷ `GET /health/live` (by throughput), {grids}",
                _fmt_rate(r.get_locate.per_s, "req"),
                f"`GET /health/live` {_fmt_rate(r.get_live.per_s, 'req')}",
                f"{cost:.2f}× the cost",
                f"≤ {TARGET_LOCATE_OVER_LIVE}×",
                cost <= TARGET_LOCATE_OVER_LIVE,
            )


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def _fmt_fact(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.0%}" if v <= 1.0 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every size, print the report."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--sizes",
        default="1000,20000,200000",
        help="comma-separated grid counts (default: %(default)s)",
    )
    parser.add_argument("--engine", choices=("postgis", "sqlite"), default="postgis")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GRIDAPI_BENCH_ADMIN_URL", ADMIN_URL),
        help="a PostgreSQL database to create gridapi_bench_* from",
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--points", type=int, default=20_000, help="single in-process lookups to time"
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="passes over the single-lookup points (pooled)"
    )
    parser.add_argument("--batch", type=int, default=10_000, help="points per batch")
    parser.add_argument("--bulk-batches", type=int, default=10)
    parser.add_argument("--reference-points", type=int, default=5_000)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument("--clients", type=int, default=2, help="concurrent HTTP clients")
    parser.add_argument(
        "--http-seconds", type=float, default=8.0, help="seconds per HTTP measurement"
    )
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument(
        "--profile", action="store_true", help="append cProfile summaries for the largest size"
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark databases")
    args = parser.parse_args(argv)
    args.sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    log_dir = Path(tempfile.mkdtemp(prefix="gridapi-bench-"))
    results = []
    started = time.perf_counter()
    try:
        for size in args.sizes:
            _log(f"routing benchmark: {size:,} grids on {args.engine}")
            res, _url = run_size(size, args, log_dir)
            results.append(res)
            if args.engine == "postgis" and not args.keep:
                synthetic.drop_postgres_database(args.admin_url, f"gridapi_bench_{size}")
    finally:
        if args.engine == "postgis" and not args.keep:
            for size in args.sizes:
                synthetic.drop_postgres_database(args.admin_url, f"gridapi_bench_{size}")
        if not args.keep:
            shutil.rmtree(log_dir, ignore_errors=True)
    _log(f"routing benchmark finished in {time.perf_counter() - started:.0f} s")
    sys.stdout.write(report(results, args))
    record_summary(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
