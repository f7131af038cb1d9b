"""GET /api/v1/health/jobs: what the background worker has not done yet, job by job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from gridapi.services import jobs

from ..factories import COMMUNITY_A, COUNTY
from .test_cases import center, report_body
from .test_exports import run_jobs as run_export_jobs

JOBS = ["overdue", "tasks", "idempotency", "tracks", "webhooks", "exports"]


def backlog(client: Any) -> tuple[str, dict[str, dict[str, Any]]]:
    r = client.get("/api/v1/health/jobs")
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert [j["job"] for j in body["jobs"]] == JOBS
    return body["status"], {j["job"]: j for j in body["jobs"]}


def run_worker(app: Any) -> None:
    st = app.extensions["gridapi"]
    options = jobs.JobOptions.from_settings(st.settings)
    results = jobs.run_jobs(st.sessions, jobs.utcnow(), options)
    assert not any(r.errors for r in results)


def test_nothing_due_is_ok(client, world):
    status, found = backlog(client)
    assert status == "ok"
    for job in found.values():
        assert (job["due"], job["oldest_due_at"], job["waited_seconds"], job["behind"]) == (
            0,
            None,
            None,
            False,
        )
        assert job["expected_within_seconds"] > 0 and job["description"]


def test_what_the_worker_left_undone_shows_until_it_runs(client, world, app, session):
    """A case past its deadline and an expired idempotency key wait for the worker: they
    show, with how long the oldest waited, and ``behind`` once that is longer than a worker
    that keeps up allows. One run of the worker clears both."""
    r = client.post(
        "/api/v1/cases", json=report_body(*center(0)), headers={"Idempotency-Key": "k-1"}
    )
    assert r.status_code == 201
    case = r.get_json()["id"]
    deadline = datetime.now(UTC) - timedelta(hours=3)
    expired = datetime.now(UTC) - timedelta(seconds=5)
    session.execute(
        text("UPDATE cases SET accept_due_at = :d WHERE id = :id"), {"d": deadline, "id": case}
    )
    session.execute(text("UPDATE idempotency_keys SET expires_at = :e"), {"e": expired})
    session.commit()

    status, found = backlog(client)
    assert status == "behind"
    overdue = found["overdue"]
    assert overdue["due"] == 1 and overdue["behind"] is True
    assert datetime.fromisoformat(overdue["oldest_due_at"]) == deadline
    assert overdue["waited_seconds"] >= 3 * 3600
    keys = found["idempotency"]
    assert keys["due"] == 1 and keys["behind"] is False  # 5 s: within a worker's round
    assert datetime.fromisoformat(keys["oldest_due_at"]) == expired

    run_worker(app)
    status, found = backlog(client)
    assert status == "ok"
    assert found["overdue"]["due"] == found["idempotency"]["due"] == 0
    assert client.get(f"/api/v1/cases/{case}").get_json()["overdue"] is True


def test_a_queued_export_is_late_after_a_quarter_of_an_hour(client, world, app, session):
    r = client.post("/api/v1/exports/cases/jobs", json={"filters": {"region": COMMUNITY_A}})
    assert r.status_code == 202
    status, found = backlog(client)
    assert (status, found["exports"]["due"], found["exports"]["behind"]) == ("ok", 1, False)
    queued = datetime.now(UTC) - timedelta(minutes=16)
    session.execute(text("UPDATE export_jobs SET created_at = :t"), {"t": queued})
    session.commit()
    status, found = backlog(client)
    assert (status, found["exports"]["behind"]) == ("behind", True)
    assert datetime.fromisoformat(found["exports"]["oldest_due_at"]) == queued
    run_export_jobs(app)
    status, found = backlog(client)
    assert (status, found["exports"]["due"]) == ("ok", 0)


def test_a_patrol_is_due_for_thinning_its_raw_days_after_it_ended(
    client, world, app, session, accounts
):
    """The tracks job: raw points of a patrol are due for removal GRIDAPI_TRACK_RAW_DAYS
    after it ended; the backlog dates the patrol from then, not from its end."""
    worker = accounts.client("walker", "grid_worker", grids=[f"{COMMUNITY_A}001"])
    started = worker.post("/api/v1/patrols", json={})
    assert started.status_code == 201, started.get_json()
    patrol = started.get_json()["id"]
    ended = worker.post(f"/api/v1/patrols/{patrol}/end", json={})
    assert ended.status_code == 200, ended.get_json()
    raw_days = app.extensions["gridapi"].settings.track_raw_days
    end = datetime.now(UTC) - timedelta(days=raw_days, hours=2)
    session.execute(
        text("UPDATE patrols SET started_at = :s, ended_at = :e"),
        {"s": end - timedelta(hours=1), "e": end},
    )
    session.commit()
    status, found = backlog(client)
    tracks = found["tracks"]
    assert (status, tracks["due"], tracks["behind"]) == ("behind", 1, True)
    assert datetime.fromisoformat(tracks["oldest_due_at"]) == end + timedelta(days=raw_days)
    run_worker(app)
    assert backlog(client)[1]["tracks"]["due"] == 0


def test_only_those_who_run_the_system_see_it(client, world, accounts):
    centre = accounts.client("centre", "county_centre", scope_region=COUNTY)
    assert centre.get("/api/v1/health/jobs").status_code == 403
    anonymous = client.application.test_client()
    assert anonymous.get("/api/v1/health/jobs").status_code == 401
