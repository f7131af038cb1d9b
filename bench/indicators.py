"""Indicators benchmark: a county's indicators and a city's monthly bulletin at a million cases.

Against ``gridapi serve`` (gunicorn) on a scratch PostGIS database holding the synthetic grid
set of ``bench/cases.py`` and ``--cases`` cases bulk-loaded by it, each with a generated
timeline (``cases.generate_lifecycle``: filing delays, deadlines by category, extensions,
feedback before or after the deadline, rework, ratings, working-hour handling times):

1. ``GET /api/v1/indicators?region=<busiest county>&from=<month start>&to=<next month>``
   plain, ``by=category`` and ``by=day``, over several months, as a city-centre user;
2. ``GET /api/v1/bulletins/<its city>/<yyyy-mm>`` and the county's bulletin;
3. ``GET /api/v1/health/live`` on the same server as the reference, and the ratios;
4. ``EXPLAIN (ANALYZE, BUFFERS)`` of the SQL ``gridapi.services.indicators`` sends.

Latencies are percentiles over sequential requests of one client (cycling over the months).
Prints a Markdown report on stdout (progress on stderr); never asserts timings.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import cases
import numpy as np
import orjson
import routing
import summary
import synthetic
from cases import (
    QUIET,
    Request,
    _exec_ms,
    _inline,
    _log,
    _ms,
    busy_cpu_s,
    postgres_cpu_s,
    sequential,
    wait_for_quiet,
)
from routing import Latencies, server, workers_cpu_s
from sqlalchemy import event, text
from sqlalchemy.orm import Session

from gridapi.db import make_engine

# Its own database, so that it never meets a bench/cases.py run (cases.build_world and
# cases.load_test read this module global of bench/cases.py when called).
DB_NAME = "gridapi_bench_indicators"
cases.DB_NAME = DB_NAME
TARGET_COUNTY_MS = 300.0
TARGET_BULLETIN_MS = 1000.0
TARGET_CASES = 1_000_000
PASSWORD = "Bench-City-Centre-2024!"


@dataclass
class Timed:
    label: str
    lat: Latencies
    other_share: float
    target_ms: float | None = None


def months_before(today: date, k: int) -> list[date]:
    """The first days of the ``k`` complete months before ``today``'s month, oldest first."""
    first = today.replace(day=1)
    out = []
    for _ in range(k):
        first = (first - timedelta(days=1)).replace(day=1)
        out.append(first)
    return out[::-1]


def next_month(first: date) -> date:
    return (first.replace(day=28) + timedelta(days=4)).replace(day=1)


def busiest_county(url: str) -> str:
    engine = make_engine(url)
    with engine.connect() as conn:
        county = conn.execute(
            text("SELECT county_code FROM cases GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
        ).scalar_one()
    engine.dispose()
    return str(county)


def create_city_user(url: str, city: str) -> str:
    """A city-centre account (indicators:read over the city); return its username."""
    from gridapi.scope import Scope
    from gridapi.services.identity import create_user

    engine = make_engine(url)
    with Session(engine) as session, session.begin():
        create_user(
            session,
            scope=Scope.everything(),
            actor_rank=None,
            username="bench_city_centre",
            password=PASSWORD,
            role="city_centre",
            scope_region=city,
            phone_key=b"bench-blind-index-key",
        )
    engine.dispose()
    return "bench_city_centre"


def sign_in(host: str, port: int, username: str) -> dict[str, str]:
    import http.client

    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.request(
        "POST",
        "/api/v1/auth/token",
        body=orjson.dumps({"username": username, "password": PASSWORD}),
        headers={"Content-Type": "application/json"},
    )
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    if resp.status != 200:
        raise RuntimeError(f"sign-in failed: HTTP {resp.status} {body[:200]!r}")
    return {"Authorization": f"Bearer {orjson.loads(body)['access_token']}"}


def data_facts(url: str, county: str, city_prefix: str, months: list[date]) -> dict[str, Any]:
    engine = make_engine(url)
    tz = ZoneInfo(cases.TZ)
    with engine.connect() as conn:
        first = datetime.combine(months[0], datetime.min.time(), tzinfo=tz)
        last = datetime.combine(next_month(months[-1]), datetime.min.time(), tzinfo=tz)
        row = conn.execute(
            text(
                "SELECT count(*) FILTER (WHERE county_code = :county), "
                "count(*) FILTER (WHERE county_code >= :lo AND county_code < :hi), "
                "count(*) FILTER (WHERE county_code = :county AND filed_at >= :a "
                "AND filed_at < :b), "
                "count(DISTINCT county_code) FILTER (WHERE county_code >= :lo "
                "AND county_code < :hi), "
                "count(*) FILTER (WHERE handling_hours IS NOT NULL), "
                "count(*) FILTER (WHERE rework_count > 0), "
                "count(*) FILTER (WHERE extension_count > 0), "
                "count(*) FILTER (WHERE satisfaction IS NOT NULL) FROM cases"
            ),
            {
                "county": county,
                "lo": city_prefix,
                "hi": city_prefix[:-1] + chr(ord(city_prefix[-1]) + 1),
                "a": first,
                "b": last,
            },
        ).one()
    engine.dispose()
    return {
        "cases of the bench county": int(row[0]),
        "cases of its city / counties in the city": f"{int(row[1]):,} / {int(row[3])}",
        f"cases of the county filed in the {len(months)} measured months": int(row[2]),
        "cases with handling_hours / rework / extension / rating": (
            f"{int(row[4]):,} / {int(row[5]):,} / {int(row[6]):,} / {int(row[7]):,}"
        ),
    }


def timed(
    label: str,
    host: str,
    port: int,
    pid: int,
    reqs: list[Request],
    target_ms: float | None = None,
) -> Timed:
    wait_for_quiet()
    busy, srv, pg, mine = (
        busy_cpu_s(),
        workers_cpu_s(pid),
        postgres_cpu_s(DB_NAME),
        time.process_time(),
    )
    lat = sequential(host, port, reqs)
    ours = workers_cpu_s(pid) - srv + postgres_cpu_s(DB_NAME) - pg + time.process_time() - mine
    other = max(0.0, busy_cpu_s() - busy - ours) / (lat.wall_s * len(os.sched_getaffinity(0)))
    _log(f"    {label}: p50 {np.percentile(lat.ns, 50) / 1e6:.1f} ms")
    return Timed(label, lat, other, target_ms)


def bench_http(
    host: str,
    port: int,
    pid: int,
    auth: dict[str, str],
    county12: str,
    city12: str,
    months: list[date],
    n: int,
) -> tuple[list[Timed], dict[str, Any]]:
    def ind(first: date, extra: str = "") -> Request:
        path = (
            f"/api/v1/indicators?region={county12}&from={first.isoformat()}"
            f"&to={next_month(first).isoformat()}{extra}"
        )
        return "GET", path, None, auth

    def bulletin(region: str, first: date) -> Request:
        return "GET", f"/api/v1/bulletins/{region}/{first:%Y-%m}", None, auth

    def cycle(k: int) -> list[date]:
        return list(itertools.islice(itertools.cycle(months), k))

    # Warm every worker: connection pools, statement caches, the principal cache.
    sequential(host, port, [ind(m) for m in cycle(2 * len(months))])
    sequential(host, port, [bulletin(city12, m) for m in cycle(len(months))])
    sequential(host, port, [("GET", "/api/v1/health/live", None, {})] * 50)
    out = [
        timed(
            "reference: `GET /health/live`",
            host,
            port,
            pid,
            [("GET", "/api/v1/health/live", None, {})] * max(n, 200),
        ),
        timed(
            "county indicators for a month: `/indicators?region=<county>&from=&to=`",
            host,
            port,
            pid,
            [ind(m) for m in cycle(n)],
            TARGET_COUNTY_MS,
        ),
        timed(
            "same, `&by=category`",
            host,
            port,
            pid,
            [ind(m, "&by=category") for m in cycle(n)],
        ),
        timed("same, `&by=day`", host, port, pid, [ind(m, "&by=day") for m in cycle(n)]),
        timed(
            "city bulletin: `/bulletins/<city>/<yyyy-mm>`",
            host,
            port,
            pid,
            [bulletin(city12, m) for m in cycle(n)],
            TARGET_BULLETIN_MS,
        ),
        timed(
            "county bulletin: `/bulletins/<county>/<yyyy-mm>`",
            host,
            port,
            pid,
            [bulletin(county12, m) for m in cycle(n)],
        ),
        timed(
            "reference again: `GET /health/live`",
            host,
            port,
            pid,
            [("GET", "/api/v1/health/live", None, {})] * max(n, 200),
        ),
    ]
    facts: dict[str, Any] = {}
    body, _ = cases.get_json(host, port, ind(months[-1])[1], auth)
    shown = ("filed", "due", "closure_rate", "on_time_closure_rate", "on_time_handling_rate")
    shown += ("rework_rate", "extension_rate", "overdue_open", "avg_handling_hours")
    shown += ("median_handling_hours", "satisfaction_rate", "score")
    facts[f"the county's indicators for {months[-1]:%Y-%m} (plausibility)"] = ", ".join(
        f"{k} {body['indicators'][k]}" for k in shown
    )
    body, _ = cases.get_json(host, port, bulletin(city12, months[-1])[1], auth)
    facts[f"city bulletin {months[-1]:%Y-%m}: rows, scores"] = (
        f"{len(body['items'])}: "
        + ", ".join(f"{i['indicators']['score']}" for i in body["items"][:8])
        + (" …" if len(body["items"]) > 8 else "")
    )
    return out, facts


def explain(url: str, county12: str, city12: str, month: date) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of every cases query gridapi.services.indicators sends for
    the county's month (plain and by category) and the city's bulletin, asked as the
    city-centre user of the HTTP requests (its scope, and the sensitive cases' condition)."""
    from gridapi.auth import Principal
    from gridapi.scope import Scope
    from gridapi.security.permissions import ROLES
    from gridapi.services import indicators as svc
    from gridapi.services.cases import Caller

    engine = make_engine(url)
    captured: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    tz = ZoneInfo(cases.TZ)
    weights = svc.parse_weights(svc.DEFAULT_WEIGHTS)
    now = datetime.now(UTC)
    role, _, rank, permissions = next(r for r in ROLES if r[0] == "city_centre")
    caller = Caller(
        Principal(
            kind="user",
            id=0,
            name="bench",
            role=role,
            rank=rank,
            permissions=frozenset(permissions),
            scope=Scope.of_region(city12),
        )
    )
    base = {"region": county12, "from": month, "to": next_month(month)}
    calls = [
        (
            "county month",
            lambda s: svc.indicators(s, caller, base, weights=weights, tz=tz, now=now),
        ),
        (
            "county month by category",
            lambda s: svc.indicators(
                s, caller, dict(base, by="category"), weights=weights, tz=tz, now=now
            ),
        ),
        (
            "county month by day",
            lambda s: svc.indicators(
                s, caller, dict(base, by="day"), weights=weights, tz=tz, now=now
            ),
        ),
        (
            "city bulletin",
            lambda s: svc.bulletin(
                s, caller, city12, f"{month:%Y-%m}", weights=weights, tz=tz, now=now
            ),
        ),
    ]
    out = io.StringIO()
    summary = io.StringIO()
    summary.write("| request | query | execution |\n|---|---|---|\n")
    with Session(engine) as session:
        for label, call in calls:
            captured.clear()
            call(session)
            statements = [(st, p) for st, p in captured if "cases" in st]
            for k, (statement, params) in enumerate(statements, start=1):
                kind = "median" if "row_number()" in statement else "counts"
                plan = [
                    r[0]
                    for r in session.connection()
                    .exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, params)
                    .all()
                ]
                name = f"{label}, query {k} ({kind})"
                summary.write(f"| {label} | {k} ({kind}) | {_exec_ms(plan)} |\n")
                out.write(
                    f"#### {name}\n\n```sql\n{_inline(statement, params)}\n```\n\n"
                    "```\n" + "\n".join(plan) + "\n```\n\n"
                )
        session.rollback()
    engine.dispose()
    return summary.getvalue() + "\n" + out.getvalue()


def _pct(lat: Latencies, q: float) -> float:
    return float(np.percentile(lat.ns, q)) / 1e6


def report(
    args: argparse.Namespace,
    machine: list[tuple[str, str]],
    setup: dict[str, float],
    facts: dict[str, Any],
    rows: list[Timed],
    plans: str,
) -> str:
    out = io.StringIO()
    w = out.write
    w("## Indicators: machine\n\n| | |\n|---|---|\n")
    for label, value in machine:
        w(f"| {label} | {value} |\n")
    live = [r for r in rows if "health/live" in r.label]
    live_p50 = float(np.median(np.concatenate([r.lat.ns for r in live]))) / 1e6 if live else 1.0
    w(
        f"\n## Indicators: latency at {facts.get('cases', 0):,} cases "
        f"(gunicorn, {args.workers} sync workers; one client, sequential requests cycling over "
        f"{args.months} months; a city-centre user's bearer token)\n\n"
        "| request | requests | p50 | p95 | p99 | max | p50 ÷ live p50 | cores used by others "
        "| target |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        target = f"≤ {r.target_ms:,.0f} ms" if r.target_ms else ""
        w(
            f"| {r.label} | {len(r.lat.ns):,} | {_ms(_pct(r.lat, 50) * 1e6)} | "
            f"{_ms(_pct(r.lat, 95) * 1e6)} | {_ms(_pct(r.lat, 99) * 1e6)} | "
            f"{_ms(float(r.lat.ns.max()))} | {_pct(r.lat, 50) / live_p50:,.0f} | "
            f"{r.other_share:.0%} | {target} |\n"
        )
    w(
        "\n'p50 ÷ live p50' is the request's median over the median of `/health/live` on the "
        "same server in the same run (both reference rounds): the figure to compare between "
        "machines. 'Cores used by others': CPU this benchmark cannot attribute to the server, "
        "PostgreSQL backends or itself (other work on a shared machine, PostgreSQL's parallel "
        "workers).\n"
    )
    w("\n## Indicators: targets\n\n| target | result |\n|---|---|\n")
    judged = facts.get("cases", 0) >= TARGET_CASES
    for r in rows:
        if r.target_ms:
            p95 = _pct(r.lat, 95)
            verdict = ("met" if p95 <= r.target_ms else "**missed**") if judged else "(not at 1 M)"
            w(
                f"| {r.label.split(':')[0]} ≤ {r.target_ms:,.0f} ms (p95) at 1 M cases | "
                f"p95 {p95:,.0f} ms, p99 {_pct(r.lat, 99):,.0f} ms: {verdict} |\n"
            )
    w("\n## Indicators: setup and facts\n\n| | |\n|---|---|\n")
    for k, v in setup.items():
        w(f"| {k} | {v:.1f} |\n")
    for k, v in facts.items():
        if isinstance(v, float):
            v = f"{v:,.2f}"
        elif isinstance(v, int):
            v = f"{v:,}"
        w(f"| {k} | {v} |\n")
    if plans:
        w(f"\n## Indicators: query plans\n\n{plans}")
    return out.getvalue()


def record_summary(facts: dict[str, Any], rows: list[Timed]) -> None:
    """Record the targeted figures of the report for bench/summary.py."""
    live = [r for r in rows if "health/live" in r.label]
    if not live:
        return
    live_p50 = float(np.median(np.concatenate([r.lat.ns for r in live]))) / 1e6
    judged = facts.get("cases", 0) >= TARGET_CASES
    for r in rows:
        if not r.target_ms:
            continue
        p50, p95 = _pct(r.lat, 50), _pct(r.lat, 95)
        summary.record(
            "indicators",
            f"{r.label.split(':')[0]} p50 / p95, {facts.get('cases', 0):,} cases",
            f"{_ms(p50 * 1e6)} / {_ms(p95 * 1e6)}",
            f"`GET /health/live` p50 {_ms(live_p50 * 1e6)}",
            f"{p50 / live_p50:,.0f}× (p50)",
            f"p95 ≤ {r.target_ms:,.0f} ms at 1 M cases",
            (p95 <= r.target_ms) if judged else None,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grids", type=int, default=20_000, help="grid set size")
    parser.add_argument("--cases", type=int, default=1_000_000, help="cases to bulk-load")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GRIDAPI_BENCH_ADMIN_URL", routing.ADMIN_URL),
        help=f"a PostgreSQL database to create {DB_NAME} from",
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--workers", type=int, default=0, help="gunicorn workers (0: gridapi's default)"
    )
    parser.add_argument(
        "--requests", type=int, default=60, help="requests per measured kind (≥ 30)"
    )
    parser.add_argument("--months", type=int, default=6, help="complete months to cycle over")
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each timed block, wait up to this long for other processes to use "
        "< 15%% of the cores; 0: never wait (default)",
    )
    parser.add_argument("--no-explain", dest="explain", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)
    args.township_users = 0  # cases.build_world's township-office accounts: none needed
    QUIET["max_wait_s"] = args.wait_quiet
    if args.workers <= 0:
        from gridapi.config import Settings
        from gridapi.serving import default_workers

        args.workers = default_workers(Settings(database_url="postgresql://x/y"))
    log_dir = Path(tempfile.mkdtemp(prefix="gridapi-bench-indicators-"))
    os.environ.update(
        GRIDAPI_SECRET_KEY="bench-secret-key-" + "x" * 32,
        GRIDAPI_BLIND_INDEX_KEY="bench-blind-index-key-" + "x" * 32,
        GRIDAPI_DATA_DIR=str(log_dir),
        GRIDAPI_TIMEZONE=cases.TZ,
    )
    os.environ.pop("GRIDAPI_REDIS_URL", None)
    os.environ.pop("GRIDAPI_INDICATOR_WEIGHTS", None)
    started = time.perf_counter()
    facts: dict[str, Any] = {}
    rows: list[Timed] = []
    plans = ""
    try:
        _log(f"indicators benchmark: {args.grids:,} grids, {args.cases:,} cases")
        world, setup = cases.build_world(args, log_dir)
        machine = cases.machine_rows(world.url)
        _log(f"  generating and loading {args.cases:,} cases with timelines …")
        setup.update(cases.load_cases(world, args.cases, args.seed, lifecycle=True))
        facts.update(cases.table_facts(world.url))
        world.county = busiest_county(world.url)  # by cases, not by grids
        county12 = world.county.ljust(12, "0")
        city12 = world.county[:4].ljust(12, "0")
        facts["bench county (most cases) / its city"] = f"{county12} / {city12}"
        t0 = time.perf_counter()
        username = create_city_user(world.url, city12)
        setup["create city-centre user (s)"] = time.perf_counter() - t0
        today = datetime.now(ZoneInfo(cases.TZ)).date()
        months = months_before(today, args.months)
        facts["months measured"] = f"{months[0]:%Y-%m} … {months[-1]:%Y-%m}"
        facts.update(data_facts(world.url, world.county, world.county[:4], months))
        _log(f"  loaded ({', '.join(f'{k} {v:.1f}' for k, v in setup.items())})")
        t0 = time.perf_counter()
        with server(world.url, args.workers, log_dir) as (host, port, pid):
            setup["server start (s)"] = time.perf_counter() - t0
            auth = sign_in(host, port, username)
            rows, http_facts = bench_http(
                host, port, pid, auth, county12, city12, months, args.requests
            )
            facts.update(http_facts)
        if args.explain:
            _log("  explain …")
            plans = explain(world.url, county12, city12, months[-1])
    finally:
        if not args.keep:
            synthetic.drop_postgres_database(args.admin_url, DB_NAME)
            shutil.rmtree(log_dir, ignore_errors=True)
    facts["total run time (s)"] = time.perf_counter() - started
    _log(f"indicators benchmark finished in {facts['total run time (s)']:.0f} s")
    sys.stdout.write(report(args, machine, setup, facts, rows, plans))
    record_summary(facts, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
