"""Sync benchmark: a grid worker's full scope from an empty cursor, and an incremental sync
with nothing new.

The issue's scope: 1 grid, 300 households, 50 open tasks, 100 cases, beside ``--noise``
cases and households in other grids of the county (so the change log holds more than the
worker's rows). Built through the application (HTTP for tasks and cases, the register service
for households with two residents each, their ID and phone numbers encrypted), on a scratch
database of each engine. Requests run in process through Flask's test client: the figure is
server time (routing, queries, rendering, encryption), with ``GET /api/v1/health/live``
measured the same way as the reference.

Prints a Markdown table on stdout; never asserts timings.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import summary  # noqa: E402
from sqlalchemy import text  # noqa: E402

from gridapi.personal import check_digit  # noqa: E402

TARGET_FULL_MS = 150.0
TARGET_INCREMENTAL_MS = 10.0
PG_ADMIN = os.environ.get(
    "GRIDAPI_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
DB_NAME = "gridapi_bench_sync"
LON0, LAT0, STEP = 120.60, 31.30, 0.01
COUNTY, TOWNSHIP = "320508000000", "320508001000"


def square(col: int, row: int) -> dict[str, Any]:
    x0, y0 = LON0 + col * STEP, LAT0 + row * STEP
    x1, y1 = x0 + STEP, y0 + STEP
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def ok(response: Any, status: int = 200) -> Any:
    if response.status_code != status:
        raise SystemExit(f"{response.status_code}: {response.get_data(as_text=True)[:400]}")
    return response.get_json()


def build(app: Any, *, grids: int, noise: int) -> tuple[Any, int]:
    """Return a signed-in client of the worker of grid 1, and the id of that worker."""
    from gridapi.scope import Scope
    from gridapi.services import register
    from gridapi.services.identity import create_user

    st = app.extensions["gridapi"]
    with st.sessions.begin() as session:
        create_user(
            session,
            scope=Scope.everything(),
            actor_rank=None,
            username="benchadmin",
            password="Bench-Admin-2024!",
            role="admin",
            phone_key=st.phone_key,
        )

    def client_for(username: str) -> Any:
        from gridapi.models import User

        with st.sessions() as session:
            user = session.query(User).filter_by(username=username).one()
            token = st.tokens.issue(
                subject=str(user.id), claims={"ver": user.token_version, "role": user.role_name}
            )
        c = app.test_client()
        c.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
        return c

    admin = client_for("benchadmin")
    max(1, grids // 10)
    regions = [
        {"code": "320000000000", "name": "江苏省"},
        {"code": "320500000000", "name": "苏州市"},
        {"code": COUNTY, "name": "姑苏区"},
        {"code": TOWNSHIP, "name": "平江街道"},
    ]
    features = []
    for n in range(grids):
        community = f"320508001{n // 10 + 1:03d}"
        if n % 10 == 0:
            regions.append({"code": community, "name": f"社区{n // 10 + 1}"})
        props = {"code": f"{community}{n % 10 + 1:03d}", "name": f"网格{n}"}
        features.append({"type": "Feature", "properties": props, "geometry": square(n, 0)})
    ok(admin.post("/api/v1/regions/import", json=regions))
    version = ok(
        admin.post(
            "/api/v1/grid-versions", json={"type": "FeatureCollection", "features": features}
        ),
        201,
    )
    ok(admin.post(f"/api/v1/grid-versions/{version['id']}/activate", json={"force": True}))
    own = features[0]["properties"]["code"]
    with st.sessions.begin() as session:
        worker_id = create_user(
            session,
            scope=Scope.everything(),
            actor_rank=None,
            username="benchworker",
            password="Bench-Worker-2024!",
            role="grid_worker",
            grids=[own],
            phone_key=st.phone_key,
        ).id
    worker_client = client_for("benchworker")

    keys = register.Keys(st.cipher, st.phone_key)
    serial = iter(range(10**6))

    def households(grid: str, count: int) -> None:
        with st.sessions.begin() as session:
            for _ in range(count):
                n = next(serial)
                household = register.create_household(
                    session,
                    {"number": f"B{n:07d}", "grid": grid},
                    scope=Scope.everything(),
                    snapshot=None,
                    actor="bench",
                )
                for m in range(2):
                    # Unique per county: the birth date and sequence come from the serial.
                    born = f"{1950 + n // 1000 % 50}{1 + m:02d}{1 + n // 50000 % 28:02d}"
                    first = f"320508{born}{n % 1000:03d}"
                    register.create_person(
                        session,
                        {
                            "name": "测试居民",
                            "id_number": first + check_digit(first),
                            "phone": f"139{n:08d}"[:11],
                            "household_id": household.id,
                            "relation": "head" if m == 0 else "spouse",
                        },
                        scope=Scope.everything(),
                        keys=keys,
                        actor="bench",
                    )

    households(own, 300)
    for n in range(noise):
        households(features[1 + n % (grids - 1)]["properties"]["code"], 1)
    for n in range(50):
        ok(
            admin.post(
                "/api/v1/tasks",
                json={
                    "title": f"走访任务{n}",
                    "assignee_id": worker_id,
                    "grid": own,
                    "due_in": {"amount": 5, "unit": "days"},
                },
            ),
            201,
        )
    centre = [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]
    for n in range(100):
        body = {
            "category": "0101",
            "description": f"事件{n}",
            "location": {"type": "Point", "coordinates": centre},
        }
        ok(worker_client.post("/api/v1/cases", json=body), 201)
    for n in range(noise):
        point = [LON0 + (1 + n % (grids - 1) + 0.5) * STEP, LAT0 + 0.5 * STEP]
        body = {
            "category": "0101",
            "description": f"噪声{n}",
            "location": {"type": "Point", "coordinates": point},
        }
        ok(admin.post("/api/v1/cases", json=body), 201)
    return worker_client, worker_id


def timed(fn: Any, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def full_sync(client: Any) -> tuple[str, int, int]:
    cursor, pages, changes = None, 0, 0
    while True:
        query = {"cursor": cursor} if cursor else {}
        body = ok(client.get("/api/v1/sync", query_string=query))
        pages += 1
        changes += len(body["changes"])
        cursor = body["next_cursor"]
        if not body["has_more"] and not body["pending"]:
            return cursor, pages, changes


def run(engine_name: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    from gridapi import create_app, migrations
    from gridapi.config import Settings
    from gridapi.db import make_engine

    engine = make_engine(url)
    migrations.upgrade(engine)
    engine.dispose()
    data_dir = tempfile.mkdtemp(prefix="gridapi-bench-sync-")
    app = create_app(
        Settings(
            database_url=url,
            data_dir=data_dir,
            routing_refresh_seconds=0.0,
            log_level="WARNING",
            argon2_time_cost=1,
            argon2_memory_kib=1024,
        )
    )
    t0 = time.perf_counter()
    client, _ = build(app, grids=args.grids, noise=args.noise)
    built_s = time.perf_counter() - t0
    cursor, pages, changes = full_sync(client)
    full = timed(lambda: full_sync(client), args.repeat)
    incremental = timed(
        lambda: ok(client.get("/api/v1/sync", query_string={"cursor": cursor})), args.repeat * 10
    )
    live = timed(lambda: ok(client.get("/api/v1/health/live")), args.repeat * 10)
    invalid = invalid_creates(client, max(3, args.repeat // 2))
    with app.extensions["gridapi"].engine.connect() as conn:
        log_rows = conn.execute(text("SELECT count(*) FROM sync_log")).scalar()
    app.extensions["gridapi"].engine.dispose()
    return {
        "engine": engine_name,
        "built_s": built_s,
        "pages": pages,
        "changes": changes,
        "log_rows": log_rows,
        "full": full,
        "incremental": incremental,
        "live": live,
        "invalid": invalid,
    }


INVALID_BATCH = 500
#: Invalid reports a phone's queue may hold: the category does not exist; the category's
#: required attribute (当事人数 of 邻里纠纷) is missing.
INVALID_REPORTS = {
    "unknown category": {"category": "9999"},
    "required attribute missing": {"category": "5102", "attributes": {}},
}


def _invalid_batch(client: Any, report: dict[str, Any], keys: Any) -> None:
    actions = [
        {"key": f"bench-{next(keys)}", "type": "case.create", "payload": report}
        for _ in range(INVALID_BATCH)
    ]
    results = ok(client.post("/api/v1/sync/batch", json={"actions": actions}))["results"]
    if {r["status"] for r in results} != {422}:
        raise SystemExit(f"expected 422 for every action, got {results[0]}")


def _invalid_direct(client: Any, report: dict[str, Any], keys: Any) -> None:
    for _ in range(INVALID_BATCH):
        headers = {"Idempotency-Key": f"bench-{next(keys)}"}
        r = client.post("/api/v1/cases", json=report, headers=headers)
        if r.status_code != 422:
            raise SystemExit(f"expected 422, got {r.status_code}: {r.get_data(as_text=True)}")


def invalid_creates(client: Any, repeat: int) -> dict[str, dict[str, list[float]]]:
    """Time ``INVALID_BATCH`` invalid ``case.create`` actions in one ``POST /sync/batch``
    against the same reports sent one by one to ``POST /api/v1/cases`` (each with its own
    Idempotency-Key, as a phone online would); ms per action, ``repeat`` rounds each."""
    centre = {"type": "Point", "coordinates": [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]}
    keys = iter(range(10**9))
    out: dict[str, dict[str, list[float]]] = {}
    for label, fields in INVALID_REPORTS.items():
        report = {"description": "离线上报", "location": centre, **fields}
        ways = {"batch": _invalid_batch, "direct": _invalid_direct}
        for send in ways.values():  # warm
            send(client, report, keys)
        rounds: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(repeat):  # interleaved, so drift hits both alike
            for name, send in ways.items():
                started = time.perf_counter()
                send(client, report, keys)
                rounds[name].append((time.perf_counter() - started) * 1000 / INVALID_BATCH)
        out[label] = rounds
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def record_summary(results: list[dict[str, Any]]) -> None:
    """Record the p50 figures of the table for bench/summary.py, per engine."""
    for r in results:
        live = statistics.median(r["live"])
        full = statistics.median(r["full"])
        incremental = statistics.median(r["incremental"])
        summary.record(
            "sync",
            f"full sync p50 ({r['pages']} pages, {r['changes']} changes), {r['engine']}",
            f"{full:.1f} ms",
            f"`GET /health/live` p50 {live:.2f} ms",
            f"{full / live:,.0f}×",
            f"≤ {TARGET_FULL_MS:.0f} ms",
            full <= TARGET_FULL_MS,
        )
        summary.record(
            "sync",
            f"incremental sync p50 (nothing new), {r['engine']}",
            f"{incremental:.2f} ms",
            f"`GET /health/live` p50 {live:.2f} ms",
            f"{incremental / live:.1f}×",
            f"≤ {TARGET_INCREMENTAL_MS:.0f} ms",
            incremental <= TARGET_INCREMENTAL_MS,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["sqlite", "postgis", "both"], default="both")
    parser.add_argument("--grids", type=int, default=40)
    parser.add_argument("--noise", type=int, default=400, help="cases and households elsewhere")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument(
        "--pg-database",
        default=DB_NAME,
        help="scratch PostgreSQL database, dropped and created (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    results = []
    engines = ["sqlite", "postgis"] if args.engine == "both" else [args.engine]
    for name in engines:
        print(f"building the {name} world…", file=sys.stderr)
        if name == "sqlite":
            url = f"sqlite:///{tempfile.mkdtemp(prefix='gridapi-bench-')}/sync.sqlite3"
            results.append(run(name, url, args))
        else:
            from sqlalchemy import create_engine
            from sqlalchemy.engine import make_url

            admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)'))
                conn.execute(text(f'CREATE DATABASE "{args.pg_database}"'))
            url = (
                make_url(PG_ADMIN)
                .set(database=args.pg_database)
                .render_as_string(hide_password=False)
            )
            try:
                results.append(run(name, url, args))
            finally:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{args.pg_database}" WITH (FORCE)'))
                admin.dispose()
    print("## Sync (issue 6)")
    print()
    print(
        f"A worker's scope: 1 grid, 300 households (600 residents, encrypted), 50 tasks, 100 "
        f"cases; {args.noise} cases and households in {args.grids - 1} other grids. In-process "
        f"server time, {args.repeat} full syncs and {args.repeat * 10} incremental ones."
    )
    print()
    print(
        "| engine | full sync p50 / p95 ms (pages, changes) | target | incremental p50 / p95 ms "
        "| target | /health/live p50 ms | incremental ÷ live | sync_log rows |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['engine']} | {statistics.median(r['full']):.1f} / {pct(r['full'], 95):.1f} "
            f"({r['pages']}, {r['changes']}) | ≤ {TARGET_FULL_MS:.0f} | "
            f"{statistics.median(r['incremental']):.2f} / {pct(r['incremental'], 95):.2f} | "
            f"≤ {TARGET_INCREMENTAL_MS:.0f} | {statistics.median(r['live']):.2f} | "
            f"{statistics.median(r['incremental']) / statistics.median(r['live']):.1f} | "
            f"{r['log_rows']} |"
        )
    print()
    print(f"### Invalid reports queued offline ({INVALID_BATCH} `case.create` actions, all 422)")
    print()
    print(
        "Each action of `POST /api/v1/sync/batch` is its own transaction (its key locked and "
        "looked up, the endpoint in a savepoint, all rolled back); the same invalid reports sent "
        "one by one to `POST /api/v1/cases` are the reference. Median of the rounds."
    )
    print()
    print("| engine | report | batch actions/s (ms each) | direct requests/s (ms each) | ratio |")
    print("|---|---|---|---|---|")
    for r in results:
        for label, rounds in r["invalid"].items():
            b, d = statistics.median(rounds["batch"]), statistics.median(rounds["direct"])
            print(
                f"| {r['engine']} | {label} | {1000 / b:,.0f} ({b:.2f}) | {1000 / d:,.0f} "
                f"({d:.2f}) | {b / d:.1f}× |"
            )
    record_summary(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
