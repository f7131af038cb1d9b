"""Case benchmarks: reporting throughput over HTTP, and case lists and queues at scale.

Against ``gridapi serve`` (gunicorn) on a scratch PostGIS database holding a synthetic grid set
(``bench/synthetic.py``):

1. ``POST /api/v1/cases`` (routing, numbering, idempotency, audit, commit) from several client
   connections, beside ``GET /api/v1/health/live`` measured the same way in the same run; the
   ratio of their throughputs is the figure the issue sets a target for. Every 201 must have
   made exactly one case row (checked and printed).
2. ``--cases`` cases bulk-generated straight into PostgreSQL (deterministic by seed, spread over
   every township of the grid set), then the open-case list of a township (first page and deep
   keyset pages), the same list without a region, and the work queues of a township office,
   each as latency percentiles over sequential requests; reporting throughput again on the
   loaded table.
3. ``EXPLAIN (ANALYZE, BUFFERS)`` of the list and queue queries exactly as
   ``gridapi.services.cases`` builds them, and a cProfile of report requests in process.

Prints a Markdown report on stdout (progress on stderr); never asserts timings.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import http.client
import io
import itertools
import os
import pstats
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import routing
import shapely
import summary
import synthetic
from routing import Latencies, _merge, server, workers_cpu_s
from sqlalchemy import event, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from gridapi.db import make_engine

DB_NAME = "gridapi_bench_cases"
TARGET_RATIO = 0.3
FLOOR_RATIO = 0.2
TARGET_LIST_P99_MS = 30.0
TARGET_LIST_CASES = 1_000_000
PASSWORD = "Bench-Township-2024!"
TZ = "Asia/Shanghai"

# Descriptions and addresses of the generated cases (the text only pads the rows).
DESCRIPTIONS = (
    "小区门口垃圾堆放，影响通行",
    "路灯不亮已有三天",
    "人行道井盖缺失，存在安全隐患",
    "施工噪音扰民，夜间仍在施工",
    "非法小广告张贴在公交站台",
    "绿化带被占用堆放杂物",
    "道路积水严重，车辆无法通行",
    "共享单车乱停放堵塞盲道",
)
OPEN_WEIGHTS = {
    "reported": 0.15,
    "accepted": 0.10,
    "filed": 0.15,
    "dispatched": 0.15,
    "handling": 0.25,
    "feedback": 0.10,
    "verified": 0.10,
}
TERMINAL_WEIGHTS = {"closed": 0.92, "rejected": 0.04, "cancelled": 0.04}
SOURCE_WEIGHTS = {
    "phone": 0.35,
    "hotline": 0.20,
    "patrol": 0.20,
    "worker": 0.10,
    "web": 0.10,
    "third_party": 0.05,
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# The world: grids, the bench county, an API client and township-office accounts.
# --------------------------------------------------------------------------------------------


@dataclass
class World:
    url: str
    gs: synthetic.GridSet
    county: str  # 6 digits: the county the reports land in and the client is scoped to
    county_geom: Any
    townships: list[str]  # 12-digit codes of the bench county's townships
    all_townships: list[str]
    categories: list[dict[str, Any]]  # active subclasses: code, handler, required attrs
    client_key: str = ""
    client_actor: str = ""
    open_key: str = ""  # an unrestricted client (reports spread over every county)
    open_actor: str = ""
    office_count: int = 12  # township-office accounts to create (spread over the county)
    users: dict[str, tuple[str, int]] = field(default_factory=dict)  # township → (name, id)
    tokens: dict[str, str] = field(default_factory=dict)  # township → access token


def build_world(args: argparse.Namespace, log_dir: Path) -> tuple[World, dict[str, float]]:
    setup: dict[str, float] = {}
    t0 = time.perf_counter()
    gs = synthetic.build(args.grids, args.seed)
    setup["generate grids (s)"] = time.perf_counter() - t0
    url = synthetic.create_postgres_database(args.admin_url, DB_NAME)
    engine = make_engine(url)
    t0 = time.perf_counter()
    synthetic.load(engine, gs)  # gridapi.migrations.upgrade (= gridapi db upgrade), then COPY
    setup["migrate and load grids (s)"] = time.perf_counter() - t0
    counties = Counter(c[:6] for c in gs.codes)
    county = counties.most_common(1)[0][0]
    by_code = {r["code"]: r for r in gs.regions}
    townships = sorted({c[:9] + "000" for c in gs.codes if c.startswith(county)})
    all_townships = sorted({c[:9] + "000" for c in gs.codes})
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT code, default_handler, attributes FROM categories "
                "WHERE is_active AND parent_code IS NOT NULL ORDER BY code"
            )
        ).all()
    categories = [
        {
            "code": code,
            "handler": (handler or "township").split(":", 1)[0],
            "required": any(a.get("required") for a in (attrs or [])),
        }
        for code, handler, attrs in rows
    ]
    world = World(
        url=url,
        gs=gs,
        county=county,
        county_geom=by_code[county.ljust(12, "0")]["boundary"],
        townships=townships,
        all_townships=all_townships,
        categories=categories,
        office_count=args.township_users,
    )
    t0 = time.perf_counter()
    _create_callers(engine, world)
    setup["create client and users (s)"] = time.perf_counter() - t0
    engine.dispose()
    return world, setup


def _create_callers(engine: Engine, world: World) -> None:
    from gridapi.scope import Scope
    from gridapi.services.identity import create_client, create_user

    with Session(engine) as session, session.begin():
        client, key = create_client(
            session,
            name="bench county app",
            scopes=["cases:read", "cases:write"],
            scope_region=world.county.ljust(12, "0"),
            rate_limit="1000000 per second",  # the most a key may have: no limit here
            created_by="bench",
        )
        world.client_key, world.client_actor = key, f"client:{client.id}"
        client, key = create_client(
            session,
            name="bench province app",
            scopes=["cases:read", "cases:write"],
            scope_region=None,
            rate_limit="1000000 per second",  # the most a key may have: no limit here
            created_by="bench",
        )
        world.open_key, world.open_actor = key, f"client:{client.id}"
        step = max(1, len(world.townships) // max(1, world.office_count))
        for i, township in enumerate(world.townships[::step][: world.office_count]):
            name = f"bench_town_{i:02d}"
            user = create_user(
                session,
                scope=Scope.everything(),
                actor_rank=None,
                username=name,
                password=PASSWORD,
                role="township_office",
                scope_region=township,
                phone_key=b"bench-blind-index-key",
            )
            world.users[township] = (name, user.id)


def sign_in(host: str, port: int, world: World) -> None:
    """Get an access token for every township-office account (POST /api/v1/auth/token)."""
    for township, (name, _) in world.users.items():
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request(
            "POST",
            "/api/v1/auth/token",
            body=orjson.dumps({"username": name, "password": PASSWORD}),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
        if resp.status != 200:
            raise RuntimeError(f"sign-in failed: HTTP {resp.status} {body[:200]!r}")
        world.tokens[township] = orjson.loads(body)["access_token"]


# --------------------------------------------------------------------------------------------
# Load generation over HTTP.
# --------------------------------------------------------------------------------------------

Request = tuple[str, str, bytes | None, dict[str, str]]


def postgres_cpu_s(database: str) -> float:
    """CPU seconds (user + system) of the PostgreSQL processes serving ``database``, plus the
    server's background processes (WAL writer, checkpointer...)."""
    ticks = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if (proc / "comm").read_text().strip() != "postgres":
                continue
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        background = "(" not in cmdline  # backends show "user db host(port) state"
        if background or f" {database} " in cmdline:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def busy_cpu_s() -> float:
    """CPU seconds spent by every process on the machine so far (all cores, /proc/stat)."""
    parts = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(x) for x in parts]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


QUIET: dict[str, float] = {"max_wait_s": 0.0}


def wait_for_quiet(threshold: float = 0.15) -> None:
    """Wait (up to ``--wait-quiet`` seconds) until other processes use less than
    ``threshold`` of the machine's cores, sampled over 2 s (call it while the bench is idle)."""
    deadline = time.monotonic() + QUIET["max_wait_s"]
    cores = len(os.sched_getaffinity(0))
    while time.monotonic() < deadline:
        busy, mine = busy_cpu_s(), time.process_time()
        time.sleep(2.0)
        share = (busy_cpu_s() - busy - (time.process_time() - mine)) / (2.0 * cores)
        if share < threshold:
            return
        _log(f"    waiting for a quieter machine (others use {share:.0%} of the cores)")


@dataclass
class Run:
    lat: Latencies
    statuses: Counter
    pg_cpu_s: float = float("nan")
    busy_s: float = float("nan")  # CPU used by every process on the machine over the run

    @property
    def other_cpu_share(self) -> float:
        """Share of the machine's cores used by processes other than server, database and
        client over the run (other people's work on a shared machine)."""
        ours = self.lat.server_cpu_s + self.pg_cpu_s + self.lat.client_cpu_s
        cores = len(os.sched_getaffinity(0))
        return max(0.0, self.busy_s - ours) / (self.lat.wall_s * cores)

    @property
    def pg_cpu_us(self) -> float:
        return self.pg_cpu_s / len(self.lat.ns) * 1e6


def load_test(
    host: str,
    port: int,
    make: Callable[[int], Request],
    *,
    clients: int,
    seconds: float,
    server_pid: int | None = None,
    expect: int = 200,
) -> Run:
    """Run ``clients`` threads, each with its own HTTPConnection, for about ``seconds``.

    ``make(i)`` gives request i (a global counter, so bodies and keys never repeat). Answers
    other than ``expect`` are counted, and more than a few stop the run.
    """
    barrier = threading.Barrier(clients + 1)
    results: list[list[int]] = [[] for _ in range(clients)]
    counts: list[Counter] = [Counter() for _ in range(clients)]
    errors: list[str] = []
    stop_at = [0.0]
    counter = itertools.count()

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        mine = results[k]
        statuses = counts[k]
        barrier.wait()
        while time.monotonic() < stop_at[0]:
            method, path, body, headers = make(next(counter))
            t0 = time.perf_counter_ns()
            try:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                payload = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                conn.close()
                if len(errors) > 10:
                    return
                continue
            mine.append(time.perf_counter_ns() - t0)
            statuses[resp.status] += 1
            if resp.getheader("Idempotent-Replayed"):
                statuses["replayed"] += 1
            if resp.status != expect:
                errors.append(f"HTTP {resp.status} for {method} {path[:60]}: {payload[:300]!r}")
                if len(errors) > 10:
                    return
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    server_cpu = workers_cpu_s(server_pid) if server_pid else float("nan")
    pg_cpu = postgres_cpu_s(DB_NAME)
    busy = busy_cpu_s()
    client_cpu = time.process_time()
    stop_at[0] = time.monotonic() + seconds
    barrier.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    client_cpu = time.process_time() - client_cpu
    pg_cpu = postgres_cpu_s(DB_NAME) - pg_cpu
    busy = busy_cpu_s() - busy
    if server_pid:
        server_cpu = workers_cpu_s(server_pid) - server_cpu
    statuses: Counter = Counter()
    for c in counts:
        statuses.update(c)
    if len(errors) > 10 or (errors and not statuses):
        raise RuntimeError(f"HTTP errors: {errors[:3]}")
    if errors:
        _log(f"    {len(errors)} unexpected answers, e.g. {errors[0]}")
    ns = np.array([x for r in results for x in r], dtype=np.int64)
    return Run(Latencies(ns, wall, 1, server_cpu, client_cpu), statuses, pg_cpu, busy)


def merge_runs(parts: list[Run]) -> Run:
    statuses: Counter = Counter()
    for p in parts:
        statuses.update(p.statuses)
    return Run(
        _merge([p.lat for p in parts]),
        statuses,
        sum(p.pg_cpu_s for p in parts),
        sum(p.busy_s for p in parts),
    )


def sequential(host: str, port: int, requests: list[Request], expect: int = 200) -> Latencies:
    """Send the requests one after another over one client; return their latencies."""
    conn = http.client.HTTPConnection(host, port, timeout=120)
    out = np.empty(len(requests), dtype=np.int64)
    started = time.perf_counter()
    for i, (method, path, body, headers) in enumerate(requests):
        t0 = time.perf_counter_ns()
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        payload = resp.read()
        out[i] = time.perf_counter_ns() - t0
        if resp.status != expect:
            raise RuntimeError(f"HTTP {resp.status} for {method} {path}: {payload[:300]!r}")
    conn.close()
    return Latencies(out, time.perf_counter() - started)


def get_json(host: str, port: int, path: str, headers: dict[str, str]) -> tuple[Any, float]:
    conn = http.client.HTTPConnection(host, port, timeout=120)
    t0 = time.perf_counter_ns()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    payload = resp.read()
    elapsed = (time.perf_counter_ns() - t0) / 1e6
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status} for GET {path}: {payload[:300]!r}")
    return orjson.loads(payload), elapsed


# --------------------------------------------------------------------------------------------
# Reports.
# --------------------------------------------------------------------------------------------


class ReportMaker:
    """Realistic report bodies: a point inside the area's grids, a category without required
    attributes, a fresh Idempotency-Key and client_id per request."""

    def __init__(self, world: World, area: Any, key: str, seed: int, n: int = 50_000) -> None:
        rng = np.random.default_rng(seed)
        minx, miny, maxx, maxy = shapely.bounds(area)
        shapely.prepare(area)
        xs: list[float] = []
        ys: list[float] = []
        while len(xs) < n:
            cx = rng.uniform(minx, maxx, n)
            cy = rng.uniform(miny, maxy, n)
            ok = shapely.contains_xy(area, cx, cy)
            xs += cx[ok].tolist()
            ys += cy[ok].tolist()
        self.points = list(zip(xs[:n], ys[:n], strict=True))
        cats = [c["code"] for c in world.categories if not c["required"]]
        weights = 1.0 / np.arange(1, len(cats) + 1) ** 0.8
        self.cats = rng.choice(cats, n, p=weights / weights.sum()).tolist()
        self.descriptions = rng.integers(0, len(DESCRIPTIONS), n).tolist()
        self.key = key
        self.run = uuid.uuid4().hex[:8]  # keys never repeat across rounds or runs
        self.run_bits = int(self.run, 16) << 64
        self.counter = itertools.count()  # shared by every round: no key is sent twice

    def __call__(self, _: int) -> Request:
        i = next(self.counter)
        n = len(self.points)
        lon, lat = self.points[i % n]
        body = {
            "category": self.cats[i % n],
            "description": DESCRIPTIONS[self.descriptions[i % n]],
            "location": {"type": "Point", "coordinates": [round(lon, 7), round(lat, 7)]},
            "accuracy_m": 8.0,
            "address": f"幸福路 {i % 500 + 1} 号",
            "client_id": str(uuid.UUID(int=self.run_bits | i)),
        }
        return (
            "POST",
            "/api/v1/cases",
            orjson.dumps(body),
            {
                "Content-Type": "application/json",
                "X-API-Key": self.key,
                "Idempotency-Key": f"bench-{self.run}-{i}",
            },
        )


def live_request(i: int) -> Request:
    return "GET", "/api/v1/health/live", None, {}


@dataclass
class ReportResult:
    label: str
    post: Run
    live: Run
    rows_before: int
    rows_after: int
    created: int  # 201 answers
    waits: dict[str, float] = field(default_factory=dict)  # wait event → share of samples

    @property
    def ratio(self) -> float:
        return self.post.lat.per_s / self.live.lat.per_s


class WaitSampler:
    """Samples pg_stat_activity every 20 ms between ``resume`` and ``pause``: what the bench
    database's backends wait on (a row lock shows as Lock:transactionid or Lock:tuple)."""

    def __init__(self, url: str) -> None:
        self.url = url.replace("postgresql+psycopg://", "postgresql://")
        self.counts: Counter = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self._stop.wait(0.02):
                rows = conn.execute(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                ).fetchall()
                self.samples += 1
                for state, kind, event_ in rows:
                    if state == "active":
                        self.counts[f"{kind}:{event_}" if kind else "on CPU"] += 1

    def resume(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def shares(self) -> dict[str, float]:
        """Mean number of the bench's backends in each state, per sample."""
        return {k: v / max(1, self.samples) for k, v in self.counts.most_common(5)}


def count_cases(url: str, reporter: str) -> int:
    engine = make_engine(url)
    with engine.connect() as conn:
        n = conn.execute(
            text("SELECT count(*) FROM cases WHERE reporter = :r"), {"r": reporter}
        ).scalar_one()
    engine.dispose()
    return int(n)


def bench_reports(
    label: str,
    host: str,
    port: int,
    pid: int,
    world: World,
    make: ReportMaker,
    reporter: str,
    args: argparse.Namespace,
) -> ReportResult:
    """Interleaved rounds of /health/live and POST /cases, so drift hits both alike."""
    before = count_cases(world.url, reporter)
    clients = args.clients
    # Warm every worker (connection pool, SQLAlchemy statement caches, principal cache).
    warm_post = load_test(host, port, make, clients=clients, seconds=args.warmup, expect=201)
    load_test(host, port, live_request, clients=clients, seconds=1.0)
    live, post = [], []
    sampler = WaitSampler(world.url)
    for _ in range(args.rounds):
        wait_for_quiet()
        live.append(
            load_test(
                host, port, live_request, clients=clients, seconds=args.http_seconds, server_pid=pid
            )
        )
        if args.sample_waits:
            sampler.resume()
        post.append(
            load_test(
                host,
                port,
                make,
                clients=clients,
                seconds=args.http_seconds,
                server_pid=pid,
                expect=201,
            )
        )
        if args.sample_waits:
            sampler.pause()
    after = count_cases(world.url, reporter)
    created = warm_post.statuses[201] + sum(p.statuses[201] for p in post)
    replayed = warm_post.statuses["replayed"] + sum(p.statuses["replayed"] for p in post)
    if replayed:
        raise RuntimeError(f"{replayed} reports were idempotent replays: keys repeated")
    return ReportResult(
        label, merge_runs(post), merge_runs(live), before, after, created, sampler.shares()
    )


# --------------------------------------------------------------------------------------------
# Bulk cases.
# --------------------------------------------------------------------------------------------


def _choice(rng: np.random.Generator, weights: dict[str, float], n: int) -> np.ndarray:
    keys = list(weights)
    p = np.array([weights[k] for k in keys])
    return np.array(keys, dtype=object)[rng.choice(len(keys), n, p=p / p.sum())]


def generate_cases(
    world: World, n: int, seed: int, now: datetime, *, lifecycle: bool = False
) -> dict[str, np.ndarray]:
    """Return column arrays for ``n`` cases spread over every grid (deterministic by seed).

    Grids get lognormal weights (busy markets, quiet fields); points fall uniformly inside
    their grid; ``reported_at`` is uniform over two years; a case is open with probability
    0.077 + 0.85·exp(-age/20 days) (≈ 10 % open overall: nearly every case of the last days,
    and a tail of stale ones); 0.3 % are unrouted (intake queue of the township). With ``lifecycle`` (the indicators
    benchmark), every case also gets a plausible timeline (``generate_lifecycle``); the other
    columns stay exactly as without it.
    """
    gs = world.gs
    rng = np.random.default_rng(seed)
    ng = len(gs)
    w = rng.lognormal(0.0, 1.0, ng)
    gi = rng.choice(ng, n, p=w / w.sum())
    geoms = gs.geoms
    shapely.prepare(geoms)
    bounds = shapely.bounds(geoms)
    xs, ys = np.empty(n), np.empty(n)
    todo = np.arange(n)
    while len(todo):
        b = bounds[gi[todo]]
        cx = b[:, 0] + rng.random(len(todo)) * (b[:, 2] - b[:, 0])
        cy = b[:, 1] + rng.random(len(todo)) * (b[:, 3] - b[:, 1])
        ok = shapely.contains_xy(geoms[gi[todo]], cx, cy)
        xs[todo[ok]], ys[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    codes = np.array(gs.codes, dtype=object)[gi]
    age_days = rng.uniform(1 / 24, 730.0, n)
    is_open = rng.random(n) < 0.077 + 0.85 * np.exp(-age_days / 20.0)
    status = np.where(
        is_open, _choice(rng, OPEN_WEIGHTS, n), _choice(rng, TERMINAL_WEIGHTS, n)
    ).astype(object)
    cats = [c["code"] for c in world.categories]
    cw = 1.0 / np.arange(1, len(cats) + 1) ** 0.8
    cat_idx = rng.permutation(len(cats))[rng.choice(len(cats), n, p=cw / cw.sum())]
    category = np.array(cats, dtype=object)[cat_idx]
    handler = np.array([c["handler"] for c in world.categories], dtype=object)[cat_idx]
    unrouted = rng.random(n) < 0.003
    township = np.array([c[:9] + "000" for c in codes], dtype=object)
    community = np.array([c[:12] for c in codes], dtype=object)
    county = np.array([c[:6] for c in codes], dtype=object)
    region = np.where(unrouted, township, community)
    # Held by the community until filed, then by the category's handling unit (as
    # gridapi.services.cases.report and handling_unit do).
    handling = np.where(
        handler == "county",
        np.array([c + "000000" for c in county], dtype=object),
        np.where(np.isin(handler, ["community", "village"]), region, township),
    )
    responsible = np.where(np.isin(status, ["reported", "accepted", "rejected"]), region, handling)
    source = _choice(rng, SOURCE_WEIGHTS, n)
    reporter = np.where(
        source == "third_party",
        "client:9000",
        np.array([f"user:{10_000 + k}" for k in rng.integers(0, 5_000, n).tolist()], dtype=object),
    )
    cols = {
        "grid_code": np.where(unrouted, None, codes),
        "region_code": region,
        "township_code": township,
        "county_code": county,
        "lon": xs,
        "lat": ys,
        "age_s": age_days * 86400.0,
        "status": status,
        "category_code": category,
        "source": source,
        "reporter": reporter,
        "responsible_region_code": responsible,
        "description": rng.integers(0, len(DESCRIPTIONS), n),
        "satisfaction": np.where(
            (status == "closed") & (rng.random(n) < 0.3), rng.integers(3, 6, n), 0
        ),
        "supervision": _choice(rng, {"normal": 0.97, "yellow": 0.02, "red": 0.01}, n),
    }
    if lifecycle:
        cols.update(generate_lifecycle(cols, rng))
    return cols


# Stage of each status in the workflow (as INSERT_CASES numbers them).
STAGES = {
    "reported": 0,
    "accepted": 1,
    "filed": 2,
    "dispatched": 3,
    "handling": 4,
    "feedback": 5,
    "verified": 6,
    "closed": 7,
    "rejected": 1,
    "cancelled": 2,
}


def generate_lifecycle(cols: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, Any]:
    """Return a plausible timeline for the generated cases, as hours after the report.

    Filing after a lognormal delay (median 1.5 h); a handling deadline of the category's
    limit (1, 3, 5, 7 or 15 days) after filing, plus 5 days per extension (7.5 % extended);
    dispatch a median 2 h after filing; feedback after a lognormal share of the time allowed
    (median 45 %, ≈ 10 % late); closing after verification (median 6 h), each rework (7 %)
    adding a day or so; ``handling_hours`` = filing to closing in working hours (40 of the
    168 hours of a week); 60 % of the closed cases rated, mostly 4–5. A timeline longer than
    the case's age is compressed into it. Stages a case has not reached stay NULL. Replaces
    ``satisfaction`` (the other columns are left alone).
    """
    n = len(cols["status"])
    status = cols["status"]
    stage = np.array([STAGES[s] for s in status.tolist()], dtype=np.int64)
    age_h = cols["age_s"] / 3600.0
    live = status != "cancelled"
    closed = status == "closed"
    limit_h = rng.choice([24.0, 72.0, 120.0, 168.0, 360.0], n, p=[0.15, 0.3, 0.3, 0.15, 0.1])
    extensions = rng.choice([0, 1, 2], n, p=[0.925, 0.06, 0.015])
    filed = np.clip(rng.lognormal(np.log(1.5), 1.0, n), 0.1, 72.0)
    dispatched = filed + np.clip(rng.lognormal(np.log(2.0), 1.0, n), 0.05, 48.0)
    allowed = limit_h + 120.0 * extensions
    feedback = dispatched + allowed * np.clip(rng.lognormal(np.log(0.45), 0.55, n), 0.01, 4.0)
    rework = np.where(closed, rng.choice([0, 1, 2], n, p=[0.93, 0.055, 0.015]), 0)
    redo = rng.lognormal(np.log(24.0), 0.6, n) * rework
    close = feedback + redo + np.clip(rng.lognormal(np.log(6.0), 0.8, n), 0.1, 240.0)
    # The last step the case reached must lie before now: compress longer timelines.
    last = np.select(
        [stage >= 7, stage >= 5, stage >= 3, stage >= 2], [close, feedback, dispatched, filed], 0
    )
    factor = np.where(last > 0, np.minimum(1.0, 0.98 * age_h / np.maximum(last, 1e-9)), 1.0)
    filed, dispatched, feedback, close = (x * factor for x in (filed, dispatched, feedback, close))
    has_filed = (stage >= 2) & live
    rated = closed & (rng.random(n) < 0.6)
    stars = rng.choice([1, 2, 3, 4, 5], n, p=[0.03, 0.04, 0.13, 0.3, 0.5])

    def when(mask: np.ndarray, hours: np.ndarray) -> np.ndarray:
        return np.where(mask, np.round(hours, 4), None).astype(object)

    return {
        "filed_h": when(has_filed, filed),
        "dispatched_h": when((stage >= 3) & live, dispatched),
        "feedback_h": when((stage >= 5) & live, feedback),
        "closed_h": when(closed, close),
        "due_h": when(has_filed, filed + allowed),
        "rework": rework,
        "extensions": np.where(has_filed, extensions, 0),
        "hours": when(closed, (close - filed) * 40.0 / 168.0),
        "satisfaction": np.where(rated, stars, 0),
    }


STAGING_COLUMNS = (
    "i int, grid_code text, region_code text, township_code text, county_code text, "
    "lon float8, lat float8, age_s float8, status text, category_code text, source text, "
    "reporter text, responsible_region_code text, description int, satisfaction int, "
    "supervision text"
)
LIFECYCLE_COLUMNS = (
    "filed_h float8, dispatched_h float8, feedback_h float8, closed_h float8, due_h float8, "
    "rework int, extensions int, hours float8"
)

# Stage moments after the report: accepted +20 min, filed +1 h, dispatched +2 h, handling
# +3 h, feedback +2 d, verified +2.5 d, closed +3 d (whatever got that far).
_INSERT_TEMPLATE = """
INSERT INTO cases (
    number, county_code, category_code, status, description, source, urgent, severity,
    sensitive, parties, attributes, lon, lat, location, raw_lon, raw_lat, crs, accuracy_m, address,
    occurred_at, reported_at, grid_code, grid_version_id, routing_method, snap_distance_m,
    unrouted, region_code, township_code, reporter, reporter_name, client_id,
    responsible_region_code, department_id, assignee_id, accept_due_at, handle_due_at,
    verify_due_at, accepted_at, filed_at, dispatched_at, feedback_at, closed_at, overdue,
    overdue_since, supervision, rework_count, extension_count, escalation_count,
    reopen_count, extension_request, duplicate_of_id, satisfaction, satisfaction_comment,
    rated_at, updated_at, version@EXTRA_COLUMNS@)
SELECT
    s.county_code || '-' || to_char(s.reported_at AT TIME ZONE %(tz)s, 'YYYYMMDD') || '-' ||
        lpad((s.seq + coalesce(cc.last, 0))::text,
             greatest(4, length((s.seq + coalesce(cc.last, 0))::text)), '0'),
    s.county_code, s.category_code, s.status, (%(descriptions)s::text[])[s.description + 1],
    s.source, c.urgent, 'general', c.sensitive, '[]', '{}', s.lon, s.lat,
    ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326), s.lon, s.lat, 'wgs84', 10.0,
    '幸福路 ' || (s.i %% 500 + 1) || ' 号', NULL, s.reported_at, s.grid_code, g.version_id,
    CASE WHEN s.grid_code IS NULL THEN 'none' ELSE 'inside' END, NULL,
    s.grid_code IS NULL, s.region_code, s.township_code, s.reporter, '',
    CASE WHEN s.source = 'third_party' THEN md5(s.i::text)::uuid::text END,
    s.responsible_region_code, NULL, NULL,
    s.reported_at + interval '2 hours',
    @HANDLE_DUE_AT@,
    CASE WHEN s.stage = 5 THEN s.reported_at + interval '3 days' END,
    @ACCEPTED_AT@,
    @FILED_AT@,
    @DISPATCHED_AT@,
    @FEEDBACK_AT@,
    @CLOSED_AT@,
    coalesce(s.due < %(now)s, false), CASE WHEN s.due < %(now)s THEN s.due END,
    s.supervision, @REWORK_COUNT@, @EXTENSION_COUNT@, 0, 0, NULL, NULL, NULLIF(s.satisfaction, 0), NULL,
    @RATED_AT@,
    LEAST(%(now)s, s.reported_at + (s.stage * interval '10 hours')), 1 + s.stage@EXTRA_VALUES@
FROM (
    SELECT x.*, r.reported_at,
        row_number() OVER (
            PARTITION BY x.county_code, (r.reported_at AT TIME ZONE %(tz)s)::date
            ORDER BY r.reported_at, x.i) AS seq,
        CASE x.status
            WHEN 'reported' THEN 0 WHEN 'accepted' THEN 1 WHEN 'filed' THEN 2
            WHEN 'dispatched' THEN 3 WHEN 'handling' THEN 4 WHEN 'feedback' THEN 5
            WHEN 'verified' THEN 6 WHEN 'closed' THEN 7 WHEN 'rejected' THEN 1 ELSE 2
        END AS stage,
        @DUE@ AS due
    FROM bench_staging x
    CROSS JOIN LATERAL (SELECT %(now)s - x.age_s * interval '1 second' AS reported_at) r
) s
JOIN categories c ON c.code = s.category_code
LEFT JOIN grids g ON g.code = s.grid_code AND g.in_service
LEFT JOIN case_counters cc  -- numbers the reports of this run took already
    ON cc.county_code = s.county_code AND cc.day = (s.reported_at AT TIME ZONE %(tz)s)::date
ORDER BY s.reported_at, s.i
"""

# What each token of _INSERT_TEMPLATE holds: the fixed timeline of bench/cases.py ...
DEFAULT_TIMELINE = {
    "@EXTRA_COLUMNS@": "",
    "@EXTRA_VALUES@": "",
    "@HANDLE_DUE_AT@": "CASE WHEN s.stage >= 2 THEN s.reported_at + interval '1 hour' + interval '5 days' END",
    "@ACCEPTED_AT@": "CASE WHEN s.stage >= 1 THEN s.reported_at + interval '20 minutes' END",
    "@FILED_AT@": "CASE WHEN s.stage >= 2 AND s.status <> 'cancelled' THEN s.reported_at + interval '1 hour' END",
    "@DISPATCHED_AT@": "CASE WHEN s.stage >= 3 AND s.status <> 'cancelled' THEN s.reported_at + interval '2 hours' END",
    "@FEEDBACK_AT@": "CASE WHEN s.stage >= 5 AND s.status <> 'cancelled' THEN s.reported_at + interval '2 days' END",
    "@CLOSED_AT@": "CASE WHEN s.status = 'closed' THEN s.reported_at + interval '3 days' END",
    "@REWORK_COUNT@": "0",
    "@EXTENSION_COUNT@": "0",
    "@RATED_AT@": "CASE WHEN s.satisfaction > 0 THEN s.reported_at + interval '4 days' END",
    "@DUE@": """CASE
            WHEN x.status IN ('closed', 'rejected', 'cancelled') THEN NULL
            WHEN x.status IN ('reported', 'accepted') THEN r.reported_at + interval '2 hours'
            WHEN x.status = 'feedback' THEN r.reported_at + interval '3 days'
            ELSE r.reported_at + interval '1 hour' + interval '5 days'
        END""",
}
# ... or the generated one (generate_lifecycle: hours after the report, NULL = not reached).
_H = "* interval '1 hour'"
LIFECYCLE_TIMELINE = {
    "@EXTRA_COLUMNS@": ", handling_hours",
    "@EXTRA_VALUES@": ", s.hours",
    "@HANDLE_DUE_AT@": f"s.reported_at + s.due_h {_H}",
    "@ACCEPTED_AT@": "CASE WHEN s.stage >= 1 THEN s.reported_at + "
    f"least(interval '20 minutes', coalesce(s.filed_h, 1) / 2 {_H}) END",
    "@FILED_AT@": f"s.reported_at + s.filed_h {_H}",
    "@DISPATCHED_AT@": f"s.reported_at + s.dispatched_h {_H}",
    "@FEEDBACK_AT@": f"s.reported_at + s.feedback_h {_H}",
    "@CLOSED_AT@": f"s.reported_at + s.closed_h {_H}",
    "@REWORK_COUNT@": "s.rework",
    "@EXTENSION_COUNT@": "s.extensions",
    "@RATED_AT@": "CASE WHEN s.satisfaction > 0 THEN "
    f"LEAST(%(now)s, s.reported_at + (s.closed_h + 2) {_H}) END",
    "@DUE@": """CASE
            WHEN x.status IN ('closed', 'rejected', 'cancelled') THEN NULL
            WHEN x.status IN ('reported', 'accepted') THEN r.reported_at + interval '2 hours'
            ELSE r.reported_at + x.due_h * interval '1 hour'
        END""",
}


def insert_cases_sql(timeline: dict[str, str]) -> str:
    """Return the INSERT … SELECT of the bulk load with ``timeline``'s expressions."""
    sql = _INSERT_TEMPLATE
    for token, expression in timeline.items():
        sql = sql.replace(token, expression)
    return sql


INSERT_CASES = insert_cases_sql(DEFAULT_TIMELINE)


def _copy_value(v: Any) -> str:
    return "\\N" if v is None else str(v)


def load_cases(
    world: World, n: int, seed: int, *, lifecycle: bool = False, now: datetime | None = None
) -> dict[str, float]:
    """Generate ``n`` cases and insert them with COPY + INSERT … SELECT; return timings.

    ``lifecycle``: give the cases generated timelines (``generate_lifecycle``) instead of
    the fixed one (filed +1 h, closed +3 d, deadline +5 d, no rework, no extension).
    ``now``: the moment the case ages count back from (default: five minutes ago), so that
    a fixed value gives the same rows every time (``bench/generate``).

    The secondary indexes of ``cases`` are dropped for the load and rebuilt from their own
    definitions (pg_indexes) afterwards; the case counters are set to the numbers given out.
    """
    import psycopg

    timings: dict[str, float] = {}
    if now is None:
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    t0 = time.perf_counter()
    cols = generate_cases(world, n, seed, now, lifecycle=lifecycle)
    timings["generate cases (s)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    staging = STAGING_COLUMNS + (", " + LIFECYCLE_COLUMNS if lifecycle else "")
    names = [c.split()[0] for c in staging.split(", ")[1:]]
    lists = [list(map(str, range(n)))] + [list(map(_copy_value, cols[k].tolist())) for k in names]
    data = "\n".join(map("\t".join, zip(*lists, strict=True))) + "\n"
    del lists
    timings["encode (s)"] = time.perf_counter() - t0
    conninfo = world.url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn:
        with conn.cursor() as cur:
            t0 = time.perf_counter()
            cur.execute(f"CREATE UNLOGGED TABLE bench_staging ({staging})")
            with cur.copy("COPY bench_staging FROM STDIN") as copy:
                copy.write(data)
            del data
            timings["copy staging (s)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            indexes = cur.execute(
                "SELECT i.indexname, i.indexdef FROM pg_indexes i "
                "WHERE i.tablename = 'cases' AND NOT EXISTS (SELECT 1 FROM pg_constraint c "
                "WHERE c.conname = i.indexname)"
            ).fetchall()
            for name, _ in indexes:
                cur.execute(f'DROP INDEX "{name}"')
            cur.execute("SET LOCAL work_mem = '256MB'")
            cur.execute(
                insert_cases_sql(LIFECYCLE_TIMELINE if lifecycle else DEFAULT_TIMELINE),
                {"tz": TZ, "now": now, "descriptions": list(DESCRIPTIONS)},
            )
            timings["insert cases (s)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
            for _, definition in indexes:
                cur.execute(definition)
            timings[f"rebuild {len(indexes)} indexes (s)"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            cur.execute(
                "INSERT INTO case_counters (county_code, day, last) "
                "SELECT county_code, split_part(number, '-', 2)::date, "
                "max(split_part(number, '-', 3)::int) FROM cases GROUP BY 1, 2 "
                "ON CONFLICT (county_code, day) DO UPDATE "
                "SET last = GREATEST(case_counters.last, excluded.last)"
            )
            cur.execute("DROP TABLE bench_staging")
        conn.commit()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("VACUUM ANALYZE cases")
            cur.execute("VACUUM ANALYZE case_counters")
            # The sync log's million new entries too (the statement trigger wrote them), so
            # that the lists are timed on settled tables, not beside autovacuum.
            cur.execute("VACUUM ANALYZE sync_log")
            with contextlib.suppress(psycopg.Error):
                cur.execute("CHECKPOINT")
        timings["counters, vacuum analyze (s)"] = time.perf_counter() - t0
    return timings


def table_facts(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(*) FILTER (WHERE status NOT IN "
                "('closed', 'rejected', 'cancelled')), "
                "pg_total_relation_size('cases'), pg_relation_size('cases'), "
                "pg_relation_size('ix_cases_open_township') FROM cases"
            )
        ).one()
        per_town = conn.execute(
            text(
                "SELECT percentile_disc(ARRAY[0, 0.5, 1]) WITHIN GROUP (ORDER BY n) FROM ("
                "SELECT count(*) AS n FROM cases WHERE status NOT IN "
                "('closed', 'rejected', 'cancelled') GROUP BY township_code) t"
            )
        ).scalar_one()
    engine.dispose()
    return {
        "cases": int(row[0]),
        "open cases": int(row[1]),
        "cases table + indexes (MB)": row[2] / 2**20,
        "cases heap (MB)": row[3] / 2**20,
        "ix_cases_open_township (MB)": row[4] / 2**20,
        "open cases per township (min / median / max)": " / ".join(f"{v:,}" for v in per_town),
    }


# --------------------------------------------------------------------------------------------
# Lists and queues.
# --------------------------------------------------------------------------------------------


@dataclass
class ListResult:
    label: str
    lat: Latencies
    other_share: float = float("nan")  # cores used by other processes meanwhile (share)


def bench_lists(
    host: str, port: int, pid: int, world: World, requests: int
) -> tuple[list[ListResult], dict[str, Any]]:
    """Time the open-case list of townships: first pages, deep keyset pages, no region,
    queues; sequential requests over one client."""
    facts: dict[str, Any] = {}
    out: list[ListResult] = []
    offices = list(world.users)  # townships with a township-office account
    county_hdr = {"X-API-Key": world.client_key}

    def town_hdr(t: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {world.tokens[t]}"}

    def path(t: str, extra: str = "") -> str:
        return f"/api/v1/cases?region={t}&open=true&limit=50{extra}"

    def cycle(items: list[Any], n: int) -> list[Any]:
        return list(itertools.islice(itertools.cycle(items), n))

    def timed(label: str, reqs: list[Request]) -> ListResult:
        wait_for_quiet()
        busy, server, pg, mine = (
            busy_cpu_s(),
            workers_cpu_s(pid),
            postgres_cpu_s(DB_NAME),
            time.process_time(),
        )
        lat = sequential(host, port, reqs)
        ours = (
            workers_cpu_s(pid) - server + postgres_cpu_s(DB_NAME) - pg + time.process_time() - mine
        )
        other = max(0.0, busy_cpu_s() - busy - ours) / (lat.wall_s * len(os.sched_getaffinity(0)))
        return ListResult(label, lat, other)

    # Warm the connection pools and the principal caches of every worker.
    sequential(host, port, [("GET", path(t), None, town_hdr(t)) for t in offices * 5])
    sequential(host, port, [("GET", path(t), None, county_hdr) for t in world.townships])

    reqs = [("GET", path(t), None, town_hdr(t)) for t in cycle(offices, requests)]
    out.append(
        timed("township office: `?region=<own township>&open=true&limit=50`, first page", reqs)
    )
    reqs = [("GET", path(t), None, county_hdr) for t in cycle(world.townships, requests)]
    out.append(timed("county API client: same, first page (every township of the county)", reqs))

    # Walk every page of the offices' townships (following next_cursor), then re-time the
    # 10th page (or the deepest all have) many times, as the office and as the county client.
    pages: dict[int, list[float]] = {}
    cursors: dict[str, list[str]] = {}
    for t in offices:
        cursor: str | None = None
        k = 0
        cursors[t] = []
        while True:
            body, ms = get_json(
                host, port, path(t, f"&cursor={cursor}" if cursor else ""), town_hdr(t)
            )
            pages.setdefault(k, []).append(ms)
            k += 1
            cursor = body["next_cursor"]
            if not cursor:
                break
            cursors[t].append(cursor)
    counts = sorted(len(c) + 1 for c in cursors.values())
    facts["pages per office township (min / median / max)"] = (
        f"{counts[0]} / {counts[len(counts) // 2]} / {counts[-1]}"
    )
    facts["walk of every page, median latency by page number (ms)"] = ", ".join(
        f"{k + 1}: {np.median(v):.0f}" for k, v in sorted(pages.items()) if k < 30
    )
    depth = 10
    deep = [t for t in offices if len(cursors[t]) >= depth - 1]
    if not deep:
        depth = max(2, min(len(c) + 1 for c in cursors.values()))
        deep = [t for t in offices if len(cursors[t]) >= depth - 1]
    if deep and depth > 1:
        facts[f"townships with ≥ {depth} pages (deep-page sample)"] = len(deep)
        reqs = [
            ("GET", path(t, f"&cursor={cursors[t][depth - 2]}"), None, town_hdr(t))
            for t in cycle(deep, requests)
        ]
        out.append(timed(f"township office: same, page {depth} (keyset `cursor`)", reqs))
        reqs = [
            ("GET", path(t, f"&cursor={cursors[t][depth - 2]}"), None, county_hdr)
            for t in cycle(deep, requests)
        ]
        out.append(timed(f"county API client: same, page {depth} (keyset `cursor`)", reqs))

    # The same list without a region filter (a township office opening its list).
    reqs = [
        ("GET", "/api/v1/cases?open=true&limit=50", None, town_hdr(t))
        for t in cycle(offices, max(50, requests // 3))
    ]
    out.append(timed("township office: `?open=true&limit=50` (no region)", reqs))
    reqs = [
        ("GET", "/api/v1/cases/queues", None, town_hdr(t))
        for t in cycle(offices, max(50, requests // 3))
    ]
    out.append(timed("township office: `GET /cases/queues`", reqs))
    # An unrestricted caller (a province app, an admin) opening the list: every region.
    open_hdr = {"X-API-Key": world.open_key}
    sequential(host, port, [("GET", "/api/v1/cases?limit=50", None, open_hdr)] * 5)
    reqs = [("GET", "/api/v1/cases?limit=50", None, open_hdr)] * max(50, requests // 3)
    out.append(timed("unrestricted client: `?limit=50` (no filter, every county)", reqs))
    reqs = [("GET", "/api/v1/cases?open=true&limit=50", None, open_hdr)] * max(50, requests // 3)
    out.append(timed("unrestricted client: `?open=true&limit=50`", reqs))
    reqs = [("GET", "/api/v1/health/live", None, {}) for _ in range(requests)]
    out.append(timed("reference: `GET /health/live` (same client)", reqs))
    return out, facts


# --------------------------------------------------------------------------------------------
# EXPLAIN, exactly as the service builds the queries.
# --------------------------------------------------------------------------------------------


def explain(world: World) -> str:
    """Return EXPLAIN (ANALYZE, BUFFERS) of the list and queue queries, built by
    gridapi.services.cases for a township office and a county client, and of the worker's
    first batches (gridapi.services.jobs)."""
    from gridapi.auth import Principal
    from gridapi.config import Settings
    from gridapi.scope import Scope
    from gridapi.services import cases as svc
    from gridapi.services import jobs
    from gridapi.services.calendar import working_calendar

    engine = make_engine(world.url)
    captured: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    offices = list(world.users)
    township = offices[len(offices) // 2]
    name, user_id = world.users[township]
    with Session(engine) as session:
        from gridapi.models import Role

        perms = frozenset(session.get(Role, "township_office").permissions)
        officer = svc.Caller(
            Principal(
                kind="user",
                id=user_id,
                name=name,
                role="township_office",
                rank=0,
                permissions=perms,
                scope=Scope.of_region(township),
                region_code=township,
            )
        )
        county = svc.Caller(
            Principal(
                kind="client",
                id=int(world.client_actor.split(":")[1]),
                name="bench county app",
                role=None,
                rank=0,
                permissions=frozenset({"cases:read", "cases:write"}),
                scope=Scope.of_region(world.county.ljust(12, "0")),
                region_code=world.county.ljust(12, "0"),
            )
        )
        cases_: list[tuple[str, Callable[[], Any]]] = []
        base = {"region": township, "open": True, "limit": 50}
        cursor = svc.list_cases(session, officer, dict(base)).cursor
        for _ in range(8):  # a deep page: the 10th
            if not cursor:
                break
            cursor = svc.list_cases(session, officer, dict(base, cursor=cursor)).cursor
        deep_cursor = cursor
        cases_.append(
            (
                "township office, `region=<township>&open=true`, first page",
                lambda: svc.list_cases(session, officer, dict(base)),
            )
        )
        if deep_cursor:
            cases_.append(
                (
                    "township office, same, page 10 (keyset cursor)",
                    lambda: svc.list_cases(session, officer, dict(base, cursor=deep_cursor)),
                )
            )
        cases_.append(
            (
                "county API client, `region=<township>&open=true`, first page",
                lambda: svc.list_cases(session, county, dict(base)),
            )
        )
        cases_.append(
            (
                "township office, `open=true` (no region)",
                lambda: svc.list_cases(session, officer, {"open": True, "limit": 50}),
            )
        )
        cases_.append(("township office, queues", lambda: svc.queues(session, officer)))
        # The worker's first batches, rolled back with the rest.
        now = datetime.now(UTC)
        cases_.append(("worker: overdue job, first batch", lambda: jobs.mark_overdue(session, now)))
        defaults = Settings()
        calendar = working_calendar(session, defaults.working_hours, defaults.timezone)
        cases_.append(
            (
                "worker: supervision job, first batch",
                lambda: jobs.raise_supervision(session, now, calendar),
            )
        )
        out = io.StringIO()
        summaries: list[tuple[str, str, str]] = []
        for label, call in cases_:
            captured.clear()
            call()
            # The worker's batch select (locks with SKIP LOCKED), else the last statement.
            statement, params = next(
                ((st, p) for st, p in captured if "SKIP LOCKED" in st), captured[-1]
            )
            plan = (
                session.connection()
                .exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                .all()
            )
            lines = [r[0] for r in plan]
            summaries.append((label, _plan_shape(lines), _exec_ms(lines)))
            out.write(
                f"#### {label}\n\n{_plan_shape(lines)}. SQL (as SQLAlchemy sends it):\n\n"
                f"```sql\n{_inline(statement, params)}\n```\n\n"
                "```\n" + "\n".join(lines) + "\n```\n\n"
            )
        session.rollback()
    engine.dispose()
    table = io.StringIO()
    table.write("| query | plan | execution |\n|---|---|---|\n")
    for label, shape, ms in summaries:
        table.write(f"| {label} | {shape} | {ms} |\n")
    return table.getvalue() + "\n" + out.getvalue()


def _plan_shape(lines: list[str]) -> str:
    """Say how a plan reads ``ix_cases_open_township`` (or what it reads instead)."""
    text_ = "\n".join(lines)
    if "Index Scan Backward using ix_cases_open_township" in text_ or (
        "Index Scan using ix_cases_open_township" in text_
    ):
        return "`ix_cases_open_township`, ordered scan that stops at the LIMIT"
    if "Bitmap Index Scan on ix_cases_open_township" in text_:
        return (
            "`ix_cases_open_township` as a bitmap: every open case of the township is read, "
            "then sorted (top-N)"
        )
    scans = sorted(
        {
            line.split(" on ")[-1].split()[0] if " on " in line else line.strip()
            for line in lines
            if "Scan" in line and ("using" in line or " on " in line)
        }
    )
    used = [ln.split("using ")[1].split()[0] for ln in lines if "Scan" in ln and "using " in ln]
    bitmap = [ln.split(" on ")[1].split()[0] for ln in lines if "Bitmap Index Scan on" in ln]
    if used or bitmap:
        return "not `ix_cases_open_township`: " + ", ".join(
            f"`{x}`" for x in dict.fromkeys(used + bitmap)
        )
    return "not `ix_cases_open_township`: " + ", ".join(scans)


def _exec_ms(lines: list[str]) -> str:
    for line in lines:
        if line.startswith("Execution Time:"):
            return line.split(":", 1)[1].strip()
    return "?"


def _inline(statement: str, params: Any) -> str:
    """The statement with its parameters written in, for reading (not for running)."""
    if isinstance(params, dict):
        for k in sorted(params, key=len, reverse=True):
            v = params[k]
            lit = f"'{v}'" if isinstance(v, str) else str(v)
            statement = statement.replace(f"%({k})s", lit)
    return statement


# --------------------------------------------------------------------------------------------
# Profile of report requests in process.
# --------------------------------------------------------------------------------------------

# (label, file fragment, function name): cumulative time of each, per request.
REPORT_BREAKDOWN = (
    ("whole request (Flask test client)", "flask/app.py", "wsgi_app"),
    ("authenticate (cached principal)", "gridapi/auth.py", "current_principal"),
    ("parse + validate body (webargs / marshmallow load)", "webargs/core.py", "parse"),
    ("view `Cases.post`", "gridapi/resources/cases.py", "post"),
    ("… idempotency: request hash", "gridapi/services/idempotency.py", "request_hash"),
    ("… `intake.report_once` (all below)", "gridapi/services/intake.py", "report_once"),
    ("…… pool: borrow a connection", "gridapi/services/intake.py", "_borrow"),
    ("…… pool: give it back", "gridapi/services/intake.py", "_give_back"),
    ("…… routing: locate the point", "gridapi/services/cases.py", "locate_report"),
    ("…… the statements (psycopg, incl. waiting)", "gridapi/services/intake.py", "execute"),
    ("…… category kept or read again", "gridapi/services/intake.py", "_category"),
    ("…… the new row, deadlines (working calendar)", "gridapi/services/cases.py", "new_case_row"),
    ("…… possible duplicates (nearest first)", "gridapi/services/cases.py", "nearest_duplicates"),
    ("…… render the answer: view dict + orjson", "gridapi/resources/cases.py", "respond"),
    ("…… first timeline row's data", "gridapi/services/cases.py", "first_event_data"),
    ("… commit (nothing left to commit)", "gridapi/extensions.py", "commit"),
    ("psycopg: execute (all statements, incl. waiting)", "psycopg/connection.py", "execute"),
)
LIST_BREAKDOWN = (
    ("whole request (Flask test client)", "flask/app.py", "wsgi_app"),
    ("authenticate (cached principal)", "gridapi/auth.py", "current_principal"),
    ("parse query (webargs / marshmallow load)", "webargs/core.py", "parse"),
    ("view `Cases.get`", "gridapi/resources/cases.py", "get"),
    ("… `services.cases.list_cases` (query + ORM load)", "gridapi/services/cases.py", "list_cases"),
    ("… region and grid names (1 query)", "gridapi/resources/cases.py", "_names_for"),
    (
        "… duplicate links (a query only for cases that have duplicates)",
        "gridapi/services/cases.py",
        "duplicate_links",
    ),
    ("… `case_view` × 50 (view dicts)", "gridapi/resources/cases.py", "case_view"),
    ("…… `allowed_actions` × 50", "gridapi/services/cases.py", "allowed_actions"),
    ("marshmallow dump of the page (flask-smorest response)", "marshmallow/schema.py", "dump"),
    ("JSON encode", "gridapi/jsonio.py", "dumps_bytes"),
    ("SQLAlchemy: ORM row loading", "sqlalchemy/orm/loading.py", "instances"),
    ("psycopg: execute (all statements, incl. waiting)", "psycopg/cursor.py", "execute"),
)


@dataclass
class Profiled:
    label: str
    ms: float  # per request, no profiler
    cpu_ms: float  # CPU of this process per request, no profiler
    statements: dict[str, list[float]]  # statement → driver times (s), over ``k`` requests
    k: int
    stats: pstats.Stats
    m: int  # requests profiled


def _profile(
    label: str, call: Callable[[int], Any], engine: Engine, n: int, offset: int
) -> Profiled:
    """Time ``n`` calls plainly, count statements over 50 more, cProfile ``n`` more."""
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(offset, offset + n):
        call(i)
    ms = (time.perf_counter() - t0) / n * 1e3
    cpu_ms = (time.process_time() - c0) / n * 1e3
    stmts: list[tuple[str, float]] = []
    started: list[float] = []

    def before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        started.append(time.perf_counter())

    def after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        stmts.append((statement, time.perf_counter() - started.pop()))

    from gridapi.services import intake

    raw_execute = intake._TwoStatements.execute

    def timed_execute(self, sql, params):  # type: ignore[no-untyped-def]
        # A report's statements on PostgreSQL go to the driver, not through the engine.
        t0 = time.perf_counter()
        try:
            return raw_execute(self, sql, params)
        finally:
            stmts.append((sql, time.perf_counter() - t0))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    intake._TwoStatements.execute = timed_execute  # type: ignore[method-assign]
    k = 50
    try:
        for i in range(offset + n, offset + n + k):
            call(i)
    finally:
        intake._TwoStatements.execute = raw_execute  # type: ignore[method-assign]
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)
    by_stmt: dict[str, list[float]] = {}
    for st, dt in stmts:
        by_stmt.setdefault(" ".join(st.split())[:90], []).append(dt)
    prof = cProfile.Profile()
    prof.enable()
    for i in range(offset + n + k, offset + 2 * n + k):
        call(i)
    prof.disable()
    return Profiled(label, ms, cpu_ms, by_stmt, k, pstats.Stats(prof), n)


def _write_profile(
    buf: io.StringIO, p: Profiled, breakdown: tuple[tuple[str, str, str], ...]
) -> None:
    count = sum(len(v) for v in p.statements.values()) / p.k
    total = sum(sum(v) for v in p.statements.values()) / p.k * 1e3
    buf.write(
        f"### {p.label}\n\n{p.ms:.2f} ms per request without profiler ({p.cpu_ms:.2f} ms "
        f"CPU in this process); {count:.1f} SQL "
        f"statements per request (plus BEGIN/COMMIT where a session sends them), {total:.2f} ms in them (driver time, "
        "round trip included).\n\n"
        "| statement | per request | mean ms |\n|---|---|---|\n"
    )
    for key, ds in sorted(p.statements.items(), key=lambda kv: -sum(kv[1])):
        buf.write(f"| `{key}` | {len(ds) / p.k:.1f} | {np.mean(ds) * 1e3:.2f} |\n")
    table = p.stats.stats  # type: ignore[attr-defined]
    buf.write(
        f"\ncProfile over {p.m} requests, cumulative time per request (the profiler inflates "
        "Python-heavy parts; nested rows are part of the row above):\n\n"
        "| part | ms per request | share |\n|---|---|---|\n"
    )
    total_ms = None
    for label, frag, func in breakdown:
        ct = sum(v[3] for (file, _, name), v in table.items() if name == func and frag in file)
        ms = ct / p.m * 1e3
        if total_ms is None:
            total_ms = ms or 1.0
        buf.write(f"| {label} | {ms:.2f} | {ms / total_ms:.0%} |\n")
    s = io.StringIO()
    p.stats.stream = s  # type: ignore[attr-defined]
    p.stats.sort_stats("tottime").print_stats(20)
    text_ = s.getvalue()
    buf.write(
        "\nTop functions by own time:\n\n```\n" + text_[text_.find("   ncalls") :] + "```\n\n"
    )


def profile_requests(world: World, n: int, seed: int) -> tuple[str, dict[str, Any]]:
    """Profile report requests (and, with cases loaded, the township list) in process,
    through the Flask test client against the benchmark database."""
    from gridapi.app import create_app

    facts: dict[str, Any] = {}
    app = create_app({"database_url": world.url, "log_level": "WARNING"})
    engine = app.extensions["gridapi"].engine
    client = app.test_client()
    make = ReportMaker(world, world.county_geom, world.client_key, seed + 7)

    def post(i: int) -> None:
        _, p, body, headers = make(i)
        r = client.post(p, data=body, headers=headers)
        assert r.status_code == 201, r.data[:300]

    def live(i: int) -> None:
        client.get("/api/v1/health/live")

    towns = world.townships
    key = {"X-API-Key": world.client_key}

    def town_list(i: int) -> None:
        t = towns[i % len(towns)]
        r = client.get(f"/api/v1/cases?region={t}&open=true&limit=50", headers=key)
        assert r.status_code == 200, r.data[:300]

    for i in range(100):  # warm: statement caches, routing index, principal
        post(i)
        live(i)
        town_list(i)
    wait_for_quiet()
    buf = io.StringIO()
    p_live = _profile("GET /api/v1/health/live", live, engine, n, 0)
    p_post = _profile("POST /api/v1/cases", post, engine, n, 0)
    p_list = _profile(
        "GET /api/v1/cases?region=<township>&open=true&limit=50 (county API client)",
        town_list,
        engine,
        n,
        0,
    )
    facts["in process: GET /health/live, ms per request (CPU)"] = (
        f"{p_live.ms:.2f} ({p_live.cpu_ms:.2f})"
    )
    facts["in process: POST /cases, ms per request (CPU)"] = (
        f"{p_post.ms:.2f} ({p_post.cpu_ms:.2f})"
    )
    facts["in process: ratio report ÷ live (by wall time)"] = p_live.ms / p_post.ms
    facts["in process: township list, ms per request (CPU)"] = (
        f"{p_list.ms:.2f} ({p_list.cpu_ms:.2f})"
    )
    _write_profile(buf, p_post, REPORT_BREAKDOWN)
    _write_profile(buf, p_list, LIST_BREAKDOWN)
    engine.dispose()
    return buf.getvalue(), facts


# --------------------------------------------------------------------------------------------
# Report.
# --------------------------------------------------------------------------------------------


def _ms(ns_value: float) -> str:
    v = ns_value / 1e6
    return f"{v:.1f} ms" if v < 100 else f"{v:,.0f} ms"


def _pct_ms(lat: Latencies, q: float) -> str:
    return _ms(float(np.percentile(lat.ns, q)))


def machine_rows(url: str) -> list[tuple[str, str]]:
    engine = make_engine(url)
    rows = routing.machine(engine)
    with engine.connect() as conn:
        settings = dict(
            conn.execute(
                text(
                    "SELECT name, setting || coalesce(' ' || unit, '') FROM pg_settings WHERE "
                    "name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'work_mem', "
                    "'jit', 'lc_collate', 'max_parallel_workers_per_gather')"
                )
            ).all()
        )
    engine.dispose()
    rows.append(("PostgreSQL settings", ", ".join(f"{k} {v}" for k, v in sorted(settings.items()))))
    return rows


def report(
    args: argparse.Namespace,
    machine: list[tuple[str, str]],
    setup: dict[str, float],
    facts: dict[str, Any],
    reports: list[ReportResult],
    lists: list[ListResult],
    plans: str,
    profile_text: str,
) -> str:
    out = io.StringIO()
    w = out.write
    w("## Cases: machine\n\n| | |\n|---|---|\n")
    for label, value in machine:
        w(f"| {label} | {value} |\n")
    w(
        f"\n## Cases: reporting, `POST /api/v1/cases` (gunicorn, {args.workers} sync workers, "
        f"{args.clients} client threads)\n\n"
        "Each report: a point inside the county's grids, one of the seeded subclasses, an "
        "`Idempotency-Key` and a `client_id` (two idempotency rows), an API key scoped to the "
        "county (`cases:read`, `cases:write`). Rounds of `/health/live` and reports alternate. "
        "Ratio = report throughput ÷ `/health/live` throughput of the same run.\n\n"
        "| measure | " + " | ".join(r.label for r in reports) + " | target |\n"
        "|---|" + "---|" * len(reports) + "---|\n"
    )

    def row(label: str, cell: Callable[[ReportResult], str], target: str = "") -> None:
        w(f"| {label} | " + " | ".join(cell(r) for r in reports) + f" | {target} |\n")

    row("`POST /cases` throughput", lambda r: f"{r.post.lat.per_s:,.0f} req/s")
    row(
        "`POST /cases` latency p50 / p99",
        lambda r: f"{_pct_ms(r.post.lat, 50)} / {_pct_ms(r.post.lat, 99)}",
    )
    row("`GET /health/live` throughput", lambda r: f"{r.live.lat.per_s:,.0f} req/s")
    row(
        "`GET /health/live` latency p50 / p99",
        lambda r: f"{_pct_ms(r.live.lat, 50)} / {_pct_ms(r.live.lat, 99)}",
    )
    row(
        "**ratio report ÷ live (throughput)**",
        lambda r: f"**{r.ratio:.2f}**",
        f"≥ {TARGET_RATIO} (floor {FLOOR_RATIO})",
    )
    row(
        "CPU per report: gunicorn workers / PostgreSQL / client",
        lambda r: (
            f"{r.post.lat.server_cpu_us / 1e3:.2f} / {r.post.pg_cpu_us / 1e3:.2f} / "
            f"{r.post.lat.client_cpu_us / 1e3:.2f} ms"
        ),
    )
    row(
        "CPU per live: gunicorn workers / PostgreSQL / client",
        lambda r: (
            f"{r.live.lat.server_cpu_us / 1e3:.2f} / {r.live.pg_cpu_us / 1e3:.2f} / "
            f"{r.live.lat.client_cpu_us / 1e3:.2f} ms"
        ),
    )
    row(
        "ratio by server CPU (live worker CPU ÷ report worker + PostgreSQL CPU)",
        lambda r: f"{r.live.lat.server_cpu_us / (r.post.lat.server_cpu_us + r.post.pg_cpu_us):.2f}",
    )
    row(
        "cores used by other processes during reports / live",
        lambda r: f"{r.post.other_cpu_share:.0%} / {r.live.other_cpu_share:.0%}",
        "(0% on a quiet machine)",
    )
    row(
        "PostgreSQL backends of the bench during reports: mean number active, by wait",
        lambda r: ", ".join(f"{k} {v:.2f}" for k, v in r.waits.items()) or "–",
    )
    row("reports answered 201 (all rounds, warm-up included)", lambda r: f"{r.created:,}")
    row(
        "case rows added = 201 answers?",
        lambda r: (
            f"{r.rows_after - r.rows_before:,} rows: "
            + ("yes" if r.rows_after - r.rows_before == r.created else "**NO**")
        ),
    )
    if lists:
        w(
            f"\n## Cases: lists at {facts.get('cases', 0):,} cases (one client, sequential "
            "requests spread over the county's townships; each request opens a new "
            "connection, like every sync-worker request)\n\n"
            "| request | requests | p50 | p99 | max | cores used by others | target |\n"
            "|---|---|---|---|---|---|---|\n"
        )
        for r in lists:
            target = (
                f"p99 ≤ {TARGET_LIST_P99_MS:.0f} ms"
                if "first page" in r.label or "cursor" in r.label
                else ""
            )
            w(
                f"| {r.label} | {len(r.lat.ns):,} | {_pct_ms(r.lat, 50)} | {_pct_ms(r.lat, 99)} | "
                f"{_ms(float(r.lat.ns.max()))} | {r.other_share:.0%} | {target} |\n"
            )
        w(
            "\n'Cores used by others' counts what this benchmark cannot attribute to the "
            "server, PostgreSQL backends or itself: other people's work on a shared machine, "
            "and PostgreSQL's short-lived parallel query workers (the no-region list and the "
            "queues run parallel scans).\n"
        )
    w("\n## Cases: targets\n\n| target | result |\n|---|---|\n")
    for r in reports:
        verdict = (
            "met"
            if r.ratio >= TARGET_RATIO
            else ("above floor" if r.ratio >= FLOOR_RATIO else "**missed**")
        )
        w(
            f"| report ÷ live ≥ {TARGET_RATIO} (floor {FLOOR_RATIO}), {r.label} | {r.ratio:.2f}: {verdict} |\n"
        )
    for r in lists:
        if "first page" in r.label or "cursor" in r.label:
            p99 = float(np.percentile(r.lat.ns, 99)) / 1e6
            judged = facts.get("cases", 0) >= TARGET_LIST_CASES
            verdict = (
                ("met" if p99 <= TARGET_LIST_P99_MS else "**missed**") if judged else "(not at 1 M)"
            )
            w(
                f"| list p99 ≤ {TARGET_LIST_P99_MS:.0f} ms at 1 M cases: {r.label} | {p99:.1f} ms: {verdict} |\n"
            )
    w("\n## Cases: setup and facts\n\n| | |\n|---|---|\n")
    for k, v in setup.items():
        w(f"| {k} | {v:.1f} |\n")
    for k, v in facts.items():
        if isinstance(v, float):
            v = f"{v:,.2f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        w(f"| {k} | {v} |\n")
    if plans:
        w(f"\n## Cases: query plans\n\n{plans}")
    if profile_text:
        w(f"\n## Cases: profiles (in process, Flask test client, same database)\n\n{profile_text}")
    return out.getvalue()


def record_summary(
    facts: dict[str, Any], reports: list[ReportResult], lists: list[ListResult]
) -> None:
    """Record the headline figures of the report for bench/summary.py."""
    for r in reports:
        summary.record(
            "cases",
            f"`POST /cases` throughput (ratio report ÷ live), {r.label}",
            f"{r.post.lat.per_s:,.0f} req/s",
            f"`GET /health/live` {r.live.lat.per_s:,.0f} req/s",
            f"{r.ratio:.2f}",
            f"≥ {TARGET_RATIO} (floor {FLOOR_RATIO})",
            r.ratio >= TARGET_RATIO,
        )
    live = next((r for r in lists if "health/live" in r.label), None)
    live_p99 = float(np.percentile(live.lat.ns, 99)) / 1e6 if live else None
    judged = facts.get("cases", 0) >= TARGET_LIST_CASES
    for r in lists:
        targeted = "first page" in r.label or "cursor" in r.label
        if not targeted and "queues" not in r.label:
            continue
        p99 = float(np.percentile(r.lat.ns, 99)) / 1e6
        summary.record(
            "cases",
            f"p99 at {facts.get('cases', 0):,} cases, {r.label}",
            _ms(p99 * 1e6),
            f"`GET /health/live` p99 {_ms(live_p99 * 1e6)}" if live_p99 else "",
            f"{p99 / live_p99:,.1f}×" if live_p99 else "",
            f"p99 ≤ {TARGET_LIST_P99_MS:.0f} ms at 1 M cases" if targeted else "",
            (p99 <= TARGET_LIST_P99_MS) if targeted and judged else None,
        )


def main(argv: list[str] | None = None) -> int:
    global DB_NAME
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--grids", type=int, default=20_000, help="grid set size (default %(default)s)"
    )
    parser.add_argument(
        "--cases",
        type=int,
        default=1_000_000,
        help="cases to bulk-generate for the list measurements (default %(default)s; 0 skips)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GRIDAPI_BENCH_ADMIN_URL", routing.ADMIN_URL),
        help="a PostgreSQL database to create the benchmark database (--database) from",
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--workers", type=int, default=0, help="gunicorn workers (0: gridapi's default)"
    )
    parser.add_argument("--clients", type=int, default=4, help="concurrent HTTP clients")
    parser.add_argument("--http-seconds", type=float, default=6.0, help="seconds per timed round")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of live / report")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of untimed reports first"
    )
    parser.add_argument("--list-requests", type=int, default=300)
    parser.add_argument(
        "--township-users",
        type=int,
        default=12,
        help="township-office accounts (spread over the bench county's townships)",
    )
    parser.add_argument("--profile-requests", type=int, default=300)
    parser.add_argument(
        "--no-spread",
        dest="spread",
        action="store_false",
        help="skip the reports spread over every county (an unscoped client)",
    )
    parser.add_argument(
        "--no-sample-waits",
        dest="sample_waits",
        action="store_false",
        help="do not sample pg_stat_activity during the report rounds",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed block, wait up to this long for other processes to use "
        "< 15%% of the cores (a shared machine); 0: never wait (default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    parser.add_argument(
        "--database",
        default=DB_NAME,
        help="the database to (re)create, named gridapi_bench_* (default %(default)s): "
        "two runs on one server need one each, since each drops its own",
    )
    args = parser.parse_args(argv)
    if not args.database.startswith("gridapi_bench_"):
        parser.error("--database must be named gridapi_bench_* (it is dropped and recreated)")
    DB_NAME = args.database  # read by the CPU counters and the set-up below
    QUIET["max_wait_s"] = args.wait_quiet
    if args.workers <= 0:
        from gridapi.config import Settings
        from gridapi.serving import default_workers

        args.workers = default_workers(Settings(database_url="postgresql://x/y"))

    # Keys of the bench server: never the working tree's var/ keys.
    log_dir = Path(tempfile.mkdtemp(prefix="gridapi-bench-cases-"))
    os.environ.update(
        GRIDAPI_SECRET_KEY="bench-secret-key-" + "x" * 32,
        GRIDAPI_BLIND_INDEX_KEY="bench-blind-index-key-" + "x" * 32,
        GRIDAPI_DATA_DIR=str(log_dir),
    )
    os.environ.pop("GRIDAPI_REDIS_URL", None)
    started = time.perf_counter()
    reports: list[ReportResult] = []
    lists: list[ListResult] = []
    facts: dict[str, Any] = {}
    plans = profile_text = ""
    try:
        _log(f"cases benchmark: {args.grids:,} grids, {args.cases:,} cases")
        world, setup = build_world(args, log_dir)
        facts["grids / townships / counties"] = (
            f"{len(world.gs):,} / {len(world.all_townships)} / "
            f"{len({c[:6] for c in world.gs.codes})}"
        )
        facts["bench county: grids / townships"] = (
            f"{world.county}: {sum(c.startswith(world.county) for c in world.gs.codes):,} / "
            f"{len(world.townships)}"
        )
        machine = machine_rows(world.url)
        in_county = ReportMaker(world, world.county_geom, world.client_key, args.seed)
        _log(f"  setup done ({', '.join(f'{k} {v:.1f}' for k, v in setup.items())})")
        t0 = time.perf_counter()
        with server(world.url, args.workers, log_dir) as (host, port, pid):
            setup["server start (s)"] = time.perf_counter() - t0
            reports.append(
                bench_reports(
                    "empty table, county key",
                    host,
                    port,
                    pid,
                    world,
                    in_county,
                    world.client_actor,
                    args,
                )
            )
            _log(
                f"  reports on the empty table: {reports[-1].post.lat.per_s:,.0f}/s, ratio {reports[-1].ratio:.2f}"
            )
            if args.spread:
                spread = ReportMaker(
                    world, shapely.box(*world.gs.bounds), world.open_key, args.seed + 1
                )
                reports.append(
                    bench_reports(
                        "empty table, every county (unscoped key)",
                        host,
                        port,
                        pid,
                        world,
                        spread,
                        world.open_actor,
                        args,
                    )
                )
                _log(f"  reports over every county: {reports[-1].post.lat.per_s:,.0f}/s")
        if args.cases > 0:
            _log(f"  generating and loading {args.cases:,} cases …")
            setup.update(load_cases(world, args.cases, args.seed))
            facts.update(table_facts(world.url))
            _log(f"  loaded ({', '.join(f'{k} {v:.1f}' for k, v in setup.items())})")
        if args.cases > 0:
            t0 = time.perf_counter()
            with server(world.url, args.workers, log_dir) as (host, port, pid):
                setup["server start, loaded (s)"] = time.perf_counter() - t0
                sign_in(host, port, world)
                lists, list_facts = bench_lists(host, port, pid, world, args.list_requests)
                facts.update(list_facts)
                _log("  lists done")
                label = f"{facts['cases']:,} cases, county key"
                reports.append(
                    bench_reports(
                        label, host, port, pid, world, in_county, world.client_actor, args
                    )
                )
                _log(
                    f"  reports on the loaded table: {reports[-1].post.lat.per_s:,.0f}/s, ratio {reports[-1].ratio:.2f}"
                )
        if args.cases > 0:
            plans = explain(world)
        if args.profile_requests:
            profile_text, pfacts = profile_requests(world, args.profile_requests, args.seed)
            facts.update(pfacts)
            _log("  profile done")
    finally:
        if not args.keep:
            synthetic.drop_postgres_database(args.admin_url, DB_NAME)
            shutil.rmtree(log_dir, ignore_errors=True)
    facts["total run time (s)"] = time.perf_counter() - started
    _log(f"cases benchmark finished in {facts['total run time (s)']:.0f} s")
    sys.stdout.write(report(args, machine, setup, facts, reports, lists, plans, profile_text))
    record_summary(facts, reports, lists)
    return 0


if __name__ == "__main__":
    sys.exit(main())
