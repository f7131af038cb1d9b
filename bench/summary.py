"""The summary of a ``bench/run``: every benchmark's headline figures in one table.

Each benchmark calls ``record(...)`` for its headline figures (already formatted, as it
prints them); when ``GRIDAPI_BENCH_SUMMARY`` names a file, every call appends one JSON object
to it (JSON Lines), otherwise nothing happens. ``bench/run`` sets the variable, runs the
benchmarks and ends with ``python bench/summary.py FILE``, which prints a Markdown section:
the machine in one line, then one row per recorded figure (in the order recorded) with its
reference of the same run, the ratio, the target and whether it was met.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

ENV = "GRIDAPI_BENCH_SUMMARY"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
COLUMNS = ("benchmark", "measure", "value", "reference", "ratio", "target", "met")


def record(
    benchmark: str,
    measure: str,
    value: str,
    reference: str = "",
    ratio: str = "",
    target: str = "",
    met: bool | None = None,
) -> None:
    """Append one figure to the file named by ``GRIDAPI_BENCH_SUMMARY`` (if it is set)."""
    path = os.environ.get(ENV)
    if not path:
        return
    row = {
        "benchmark": str(benchmark),
        "measure": str(measure),
        "value": str(value),
        "reference": str(reference),
        "ratio": str(ratio),
        "target": str(target),
        "met": None if met is None else bool(met),
    }
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def cpu_model() -> str:
    """The CPU's model name (bench/routing.py and bench/load.py describe the machine with it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def ram_gib() -> str:
    """The machine's memory, as "24 GiB"."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def _postgres() -> str | None:
    """The PostgreSQL server's version, or None when it cannot be asked."""
    url = os.environ.get("GRIDAPI_BENCH_ADMIN_URL") or ADMIN_URL
    url = url.replace("postgresql+psycopg://", "postgresql://")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SELECT version()").fetchone()
    except Exception:  # no server, no driver, no access: the summary goes without it
        return None
    return str(row[0]).split(" on ")[0] if row else None


def machine() -> str:
    """One line: date (UTC), CPU and usable cores, RAM, Python, PostgreSQL."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parts = [
        datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        f"{cpu_model()}, {cores} cores usable ({os.cpu_count()} online)",
        f"{ram_gib()} RAM",
        f"{platform.python_implementation()} {platform.python_version()}",
    ]
    server = _postgres()
    if server:
        parts.append(server)
    return "; ".join(parts)


def read(path: str) -> list[dict]:
    """The recorded rows of a JSON Lines file (missing file: none; bad lines skipped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            print(f"summary: skipped a malformed line: {line[:80]!r}", file=sys.stderr)
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _met(value: object) -> str:
    if value is None:
        return ""
    return "met" if value else "**missed**"


def table(rows: list[dict]) -> str:
    """The Markdown table of the rows, in their order."""
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [_cell(row.get(c, "")) for c in COLUMNS[:-1]] + [_met(row.get("met"))]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``summary.py FILE``: print the ``## Summary`` section of the figures in FILE."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: summary.py FILE (JSON Lines written by record())", file=sys.stderr)
        return 2
    rows = read(args[0])
    print("## Summary\n")
    if not rows:
        print(f"No figures were recorded (nothing in {args[0]}).")
        return 1
    print(f"Machine: {machine()}.\n")
    print(
        "Each headline figure of the benchmarks above, with its reference measured in the "
        "same run. Ratio: the figure ÷ the reference, as each benchmark prints it "
        "('faster': the reference's time ÷ this time).\n"
    )
    sys.stdout.write(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
