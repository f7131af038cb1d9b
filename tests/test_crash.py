"""The crash script, small: keyed reports while the server (and PostgreSQL) are killed.

``bench/crash`` builds its own database (on PostGIS a throwaway cluster on its own port, so
crashing it harms nobody), and its last line must read ``acknowledged=N present=N
duplicates=0 lost=0``. The full run (thousands of reports) is ``bench/crash --reports 5000``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize(
    ("engine_kind", "reports", "kills"),
    [("sqlite", 120, 2), ("postgis", 160, 3)],
)
def test_every_acknowledged_report_exists_exactly_once_after_crashes(engine_kind, reports, kills):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRIDAPI_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "crash.py"),
            "--reports",
            str(reports),
            "--engine",
            engine_kind,
            "--kills",
            str(kills),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, f"{last}\n{done.stderr[-3000:]}"
    assert re.fullmatch(rf"acknowledged={reports} present={reports} duplicates=0 lost=0", last), (
        done.stderr[-3000:]
    )
    # The faults really happened and were survived by retrying.
    assert done.stderr.count("fault ") == kills
