"""Export benchmark: a streamed CSV (and GeoJSON) export of ``--cases`` cases over HTTP.

On a scratch PostGIS database (``gridapi_bench_exports``) holding a synthetic grid set, the
cases are bulk-generated and COPY-loaded by ``bench/cases.py`` (``build_world`` and
``load_cases``, reused as they are). Then ``gridapi serve`` (one gunicorn worker, so its
memory is the export's) answers ``GET /api/v1/exports/cases?format=csv`` to an unrestricted
API client, read in 64 KiB chunks and counted. Printed: rows/s, MB/s, the worker's peak RSS
(VmHWM of /proc/<pid>/status) before and after each export, and the ratio of the export's
rate to a reference measured in the same run: PostgreSQL's own ``COPY (SELECT …) TO STDOUT
(FORMAT csv)`` of the same rows in the same order, read through psycopg.

Prints a Markdown report on stdout (progress on stderr); never asserts timings.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import cases as case_bench
import routing
import summary
import synthetic
from routing import server

DB_NAME = "gridapi_bench_exports"
TARGET_ROWS_PER_S = 20_000.0
CHUNK = 1 << 16


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process, in KiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            out[key] = int(value.split()[0])
    return out


def gunicorn_workers(master_pid: int) -> list[int]:
    """Return the pids of the gunicorn workers of ``master_pid`` (not the jobs worker)."""
    try:
        children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    except OSError:
        children = []
    pids = []
    for pid in map(int, children):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"--parent-pid" not in cmdline:
            pids.append(pid)
    return pids


@dataclass
class Download:
    label: str
    rows: int
    bytes: int
    seconds: float
    first_byte_s: float
    hwm_before_kib: int
    hwm_after_kib: int
    rss_after_kib: int

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def download(host: str, port: int, path: str, key: str, worker: int, label: str) -> Download:
    """GET ``path``, reading it in chunks; count rows (CSV lines less the header, or
    GeoJSON features) and bytes; the worker's memory before and after."""
    before = _status(worker)
    conn = http.client.HTTPConnection(host, port, timeout=600)
    started = time.perf_counter()
    conn.request("GET", path, headers={"X-API-Key": key})
    response = conn.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{path}: HTTP {response.status} {response.read()[:300]!r}")
    first = None
    lines = features = size = 0
    marker, tail = b'{"type":"Feature"', b""
    while chunk := response.read(CHUNK):
        if first is None:
            first = time.perf_counter() - started
        size += len(chunk)
        lines += chunk.count(b"\n")
        # A feature's start may straddle two chunks: the end of the last one is kept.
        data = tail + chunk
        features += data.count(marker)
        tail = data[-(len(marker) - 1) :]
    seconds = time.perf_counter() - started
    conn.close()
    after = _status(worker)
    rows = features if "geojson" in path else lines - 1
    return Download(
        label,
        rows,
        size,
        seconds,
        first or seconds,
        before["VmHWM"],
        after["VmHWM"],
        after["VmRSS"],
    )


def copy_reference(url: str) -> tuple[int, int, float]:
    """PostgreSQL's COPY of the same cases in the same order, as CSV, through psycopg;
    return (rows, bytes, seconds)."""
    import psycopg

    query = (
        "COPY (SELECT id, number, status, category_code, description, source, urgent, "
        "severity, address, lon, lat, occurred_at, reported_at, updated_at, grid_code, "
        "region_code, county_code, responsible_region_code, assignee_id, handle_due_at, "
        "overdue, supervision, rework_count, extension_count, closed_at, satisfaction "
        "FROM cases ORDER BY reported_at DESC, id DESC) TO STDOUT (FORMAT csv)"
    )
    rows = size = 0
    started = time.perf_counter()
    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur, cur.copy(query) as copy:
        for block in copy:
            size += len(block)
            rows += bytes(block).count(b"\n")
    return rows, size, time.perf_counter() - started


def report(args: argparse.Namespace, results: list[Download], reference: tuple) -> str:
    ref_rows, ref_bytes, ref_s = reference
    ref_rate = ref_rows / ref_s
    lines = [
        "## Exports (streamed, one gunicorn worker)",
        "",
        f"{args.cases:,} cases generated; an unrestricted API key; each export read in "
        f"{CHUNK // 1024} KiB chunks. Reference: `COPY (SELECT the same columns ORDER BY "
        f"the same keys) TO STDOUT (FORMAT csv)` through psycopg, same run: "
        f"{ref_rows:,} rows, {ref_bytes / 1e6:,.1f} MB in {ref_s:.1f} s = "
        f"{ref_rate:,.0f} rows/s. Load average before the exports: {args.load_before}.",
        "",
        "| export | rows | MB | s | first byte s | rows/s | ratio to COPY | worker peak RSS "
        "before → after (MiB) | RSS after (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {r.rows:,} | {r.bytes / 1e6:,.1f} | {r.seconds:.1f} | "
            f"{r.first_byte_s:.2f} | {r.rows_per_s:,.0f} | {r.rows_per_s / ref_rate:.2f} | "
            f"{r.hwm_before_kib / 1024:,.0f} → {r.hwm_after_kib / 1024:,.0f} | "
            f"{r.rss_after_kib / 1024:,.0f} |"
        )
    csv = results[0]
    verdict = "met" if csv.rows_per_s >= TARGET_ROWS_PER_S else "NOT met"
    lines += [
        "",
        f"Target: a 1 M-row CSV export streams at ≥ {TARGET_ROWS_PER_S:,.0f} rows/s with flat "
        f"server memory. CSV here: {csv.rows_per_s:,.0f} rows/s ({verdict}); the worker's "
        f"peak RSS grew by {(csv.hwm_after_kib - csv.hwm_before_kib) / 1024:,.1f} MiB over "
        f"{csv.rows:,} rows.",
    ]
    return "\n".join(lines) + "\n"


def record_summary(results: list[Download], reference: tuple) -> None:
    """Record the headline figures of the report for bench/summary.py."""
    ref_rows, _, ref_s = reference
    ref_rate = ref_rows / ref_s
    for r in results:
        csv = "CSV" in r.label
        summary.record(
            "exports",
            f"{r.label.removeprefix('cases, ')} export of {r.rows:,} cases",
            f"{r.rows_per_s:,.0f} rows/s",
            f"`COPY … TO STDOUT (FORMAT csv)` {ref_rate:,.0f} rows/s",
            f"{r.rows_per_s / ref_rate:.2f}",
            f"≥ {TARGET_ROWS_PER_S:,.0f} rows/s" if csv else "",
            r.rows_per_s >= TARGET_ROWS_PER_S if csv else None,
        )
    if results:
        csv = results[0]
        summary.record(
            "exports",
            f"worker peak RSS before → after the {csv.label.removeprefix('cases, ')} export",
            f"{csv.hwm_before_kib / 1024:,.0f} → {csv.hwm_after_kib / 1024:,.0f} MiB "
            f"(+{(csv.hwm_after_kib - csv.hwm_before_kib) / 1024:,.1f} MiB)",
            target="flat server memory",
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", type=int, default=1_000_000, help="default %(default)s")
    parser.add_argument("--grids", type=int, default=2_000, help="default %(default)s")
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GRIDAPI_BENCH_ADMIN_URL", routing.ADMIN_URL),
        help="a PostgreSQL database to create gridapi_bench_exports from",
    )
    parser.add_argument("--no-geojson", dest="geojson", action="store_false")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = parser.parse_args(argv)
    args.township_users = 1  # what bench/cases.py's build_world reads
    log_dir = Path(tempfile.mkdtemp(prefix="gridapi-bench-exports-"))
    os.environ.update(
        GRIDAPI_SECRET_KEY="bench-secret-key-" + "x" * 32,
        GRIDAPI_BLIND_INDEX_KEY="bench-blind-index-key-" + "x" * 32,
        GRIDAPI_DATA_DIR=str(log_dir),
    )
    os.environ.pop("GRIDAPI_REDIS_URL", None)
    case_bench.DB_NAME = DB_NAME  # build_world creates this database
    _log(f"exports benchmark: {args.grids:,} grids, {args.cases:,} cases")
    try:
        return _run(args, log_dir)
    finally:
        if not args.keep:
            synthetic.drop_postgres_database(args.admin_url, DB_NAME)


def _run(args: argparse.Namespace, log_dir: Path) -> int:
    world, setup = case_bench.build_world(args, log_dir)
    timings = case_bench.load_cases(world, args.cases, args.seed)
    _log(f"  loaded ({', '.join(f'{k} {v:.1f}' for k, v in {**setup, **timings}.items())})")
    results: list[Download] = []
    args.load_before = " ".join(f"{x:.1f}" for x in os.getloadavg())
    with server(world.url, 1, log_dir) as (host, port, pid):
        (worker,) = gunicorn_workers(pid)
        # A small export first: the worker's imports and pools are warm before measuring.
        download(
            host,
            port,
            "/api/v1/exports/cases?grid=000000000000000",
            world.open_key,
            worker,
            "warm-up",
        )
        _log("  CSV export ...")
        results.append(
            download(
                host, port, "/api/v1/exports/cases?format=csv", world.open_key, worker, "cases, CSV"
            )
        )
        if args.geojson:
            _log("  GeoJSON export ...")
            results.append(
                download(
                    host,
                    port,
                    "/api/v1/exports/cases?format=geojson",
                    world.open_key,
                    worker,
                    "cases, GeoJSON",
                )
            )
    _log("  COPY reference ...")
    reference = copy_reference(world.url)
    print(report(args, results, reference))
    record_summary(results, reference)
    return 0


if __name__ == "__main__":
    sys.exit(main())
