"""Schemathesis against the served spec and the app in process (WSGI), as an admin and as a
grid worker: every default check, the stateful phase included, a fixed seed, zero failures.

The run's settings and the answers it treats as expected are in ``schemathesis.toml`` beside
this file. The full report (the console text, NDJSON and JUnit) is written under the pytest
basetemp, in ``schemathesis-<role>/``; a failing test prints the console report.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import schemathesis

# The console report and its event loop are the CLI's (pinned to schemathesis 4 in pyproject).
from schemathesis.cli.commands.run.executor import _execute
from schemathesis.cli.events import LoadingFinished, LoadingStarted
from schemathesis.config import ReportFormat, SchemathesisConfig
from schemathesis.engine import from_schema
from schemathesis.transport.wsgi import WSGITransport

from ..factories import COMMUNITY_A, LAT0, LON0, STEP, TOWNSHIP

CONFIG = Path(__file__).with_name("schemathesis.toml")
A1 = COMMUNITY_A + "001"
CATEGORY = "0101"

pytestmark = [pytest.mark.engines("sqlite"), pytest.mark.slow]


def _ok(response: Any, status: int = 201) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


@pytest.fixture(autouse=True)
def _in_process_probes(monkeypatch):  # type: ignore[no-untyped-def]
    """Schemathesis 4.32's ``ignored_auth`` probe hands the WSGI transport socket settings
    (``max_redirects``, ``verify``…) that werkzeug's test client refuses; drop them."""
    send = WSGITransport.send

    def send_in_process(self, case, *, session=None, **kwargs):  # type: ignore[no-untyped-def]
        for name in ("max_redirects", "verify", "cert", "proxies"):
            kwargs.pop(name, None)
        return send(self, case, session=session, **kwargs)

    monkeypatch.setattr(WSGITransport, "send", send_in_process)


@pytest.fixture
def demo(app, accounts, factory, client) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """A small town like the demo's: regions, an active grid version, workers, an office,
    cases, a task, a house and a household, so that generated ids often exist."""
    factory.regions()
    factory.grid_version()
    accounts.create("office", "township_office", scope_region=TOWNSHIP)
    accounts.create("worker", "grid_worker", grids=[A1])
    for col in (0.5, 2.5):
        lon, lat = round(LON0 + col * STEP, 6), round(LAT0 + 0.5 * STEP, 6)
        _ok(
            client.post(
                "/api/v1/cases",
                json={
                    "category": CATEGORY,
                    "description": "楼道堆放杂物",
                    "location": {"type": "Point", "coordinates": [lon, lat]},
                    "address": "平江路 1 号",
                },
            )
        )
    _ok(
        client.post(
            "/api/v1/tasks",
            json={"title": "走访独居老人", "grid": A1, "due_in": {"amount": 3, "unit": "days"}},
        )
    )
    house = client.post("/api/v1/houses", json={"grid": A1, "address": "平江路 1 号 2 室"})
    if house.status_code == 201:
        client.post("/api/v1/households", json={"house_id": house.get_json()["id"]})
    return {"admin": "admin", "worker": "worker"}


def _events(schema: Any):  # type: ignore[no-untyped-def]
    started = LoadingStarted(location="/openapi.json")
    yield started
    yield LoadingFinished.from_schema(
        schema,
        location="/openapi.json",
        start_time=started.timestamp,
        base_url=schema.get_base_url(),
    )
    yield from from_schema(schema).execute()


def run_schemathesis(app: Any, token: Callable[[], str], report_dir: Path) -> tuple[int, str]:
    """Run every phase against ``app``, each request with a token from ``token``; return the
    exit code and the console report."""
    config = SchemathesisConfig.from_path(CONFIG)
    config.reports.update(formats=[ReportFormat.NDJSON, ReportFormat.JUNIT], directory=report_dir)
    # werkzeug's test client does not decompress answers, as an HTTP client would.
    config.projects.override.update(headers={"Accept-Encoding": "identity"})
    project = config.projects.get_default()
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=config)

    # A fresh token per request, as a client signs in again: generated requests may change
    # the account's password, which ends the tokens issued before (by design).
    @schema.auth.auth(refresh_interval=None)
    class FreshToken:
        def get(self, case, context):  # type: ignore[no-untyped-def]
            return token()

        def set(self, case, data, context):  # type: ignore[no-untyped-def]
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}

    text = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(text):
        try:
            _execute(_events(schema), config=project, args=[], params={}, startup_warnings=[])
        except SystemExit as exc:
            code = int(exc.code or 0)
    report = text.getvalue()
    (report_dir / "console.txt").write_text(report)
    return code, report


@pytest.mark.parametrize("role", ["admin", "worker"])
def test_schemathesis_finds_nothing(role, app, accounts, demo, tmp_path_factory):  # type: ignore[no-untyped-def]
    report_dir = tmp_path_factory.getbasetemp() / f"schemathesis-{role}"
    report_dir.mkdir(parents=True, exist_ok=True)
    code, report = run_schemathesis(app, lambda: accounts.token(demo[role]), report_dir)
    assert code == 0, f"schemathesis found failures as {role} (report in {report_dir}):\n{report}"
