"""`gridapi worker` on both engines: overdue cases, supervision, escalation, purges, races."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from gridapi.cli import main
from gridapi.config import Settings
from gridapi.db import make_engine
from gridapi.models import Case, CaseEvent, IdempotencyKey, Notification
from gridapi.services import cases as cases_svc
from gridapi.services import idempotency, jobs
from gridapi.services.calendar import working_calendar
from gridapi.serving import jobs_in_serve

from ..factories import CITY, COMMUNITY_A, COMMUNITY_B, COUNTY, TOWNSHIP
from ..sqlite_locks import writes_begun_as_reads
from .test_cases import center, report_body

LATER = timedelta(days=60)


def report(client: Any, col: int = 0, category: str = "0101") -> tuple[int, str]:
    r = client.post("/api/v1/cases", json=report_body(*center(col), category=category))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"], r.headers["ETag"]


def act(client: Any, case_id: int, etag: str, action: str, **data: Any) -> str:
    r = client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": action, **data},
        headers={"If-Match": etag},
    )
    assert r.status_code == 200, r.get_json()
    return r.headers["ETag"]


def filed(client: Any, col: int = 0, category: str = "0101") -> tuple[int, str]:
    case_id, etag = report(client, col, category)
    etag = act(client, case_id, etag, "accept")
    return case_id, act(client, case_id, etag, "file")


def run(app: Any, now: datetime, batch_size: int = 200, **options: Any) -> dict[str, Any]:
    st = app.extensions["gridapi"]
    opts = replace(jobs.JobOptions.from_settings(st.settings), **options)
    results = jobs.run_jobs(st.sessions, now, opts, batch_size=batch_size)
    assert [r.name for r in results] == list(jobs.JOB_NAMES)
    assert all(r.errors == 0 for r in results), [r.summary() for r in results]
    return {r.name: r for r in results}


def changes(results: dict[str, Any]) -> dict[str, int]:
    return {k: v for r in results.values() for k, v in r.counts.items() if v}


def get_case(app: Any, case_id: int) -> Case:
    with app.extensions["gridapi"].sessions() as s:
        found = s.get(Case, case_id)
        assert found is not None
        return found


def events(app: Any, case_id: int) -> list[CaseEvent]:
    with app.extensions["gridapi"].sessions() as s:
        stmt = select(CaseEvent).where(CaseEvent.case_id == case_id).order_by(CaseEvent.seq)
        return list(s.scalars(stmt))


def notices(app: Any, case_id: int) -> dict[str, tuple[int | None, str | None]]:
    with app.extensions["gridapi"].sessions() as s:
        rows = s.execute(
            select(Notification.kind, Notification.user_id, Notification.region_code).where(
                Notification.case_id == case_id
            )
        ).all()
    return {kind: (user_id, region) for kind, user_id, region in rows}


def snapshot(app: Any) -> tuple[Any, ...]:
    """Everything a run may change: the rows it adds and every case's version and state."""
    with app.extensions["gridapi"].sessions() as s:
        return (
            s.scalar(select(func.count()).select_from(CaseEvent)),
            s.scalar(select(func.count()).select_from(Notification)),
            s.execute(
                select(
                    Case.id,
                    Case.version,
                    Case.status,
                    Case.overdue,
                    Case.supervision,
                    Case.responsible_region_code,
                ).order_by(Case.id)
            ).all(),
        )


def make_overdue(app: Any, case_id: int, ago: timedelta = timedelta(days=1)) -> datetime:
    """Move a case's handling deadline back by ``ago``, as if filed long ago; return it."""
    due = datetime.now(UTC) - ago
    with app.extensions["gridapi"].sessions.begin() as s:
        s.execute(update(Case).where(Case.id == case_id).values(handle_due_at=due))
    return due


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def test_overdue_cases_are_marked_once_with_a_timeline_row_and_a_notification(client, world, app):
    reported, _ = report(client, 0)
    handling, _ = filed(client, 1)
    rejected, etag = report(client, 2)
    act(client, rejected, etag, "reject", comment="重复上报")
    before = {i: get_case(app, i) for i in (reported, handling, rejected)}

    # Before any deadline nothing happens.
    assert changes(run(app, datetime.now(UTC))) == {}
    results = run(app, datetime.now(UTC) + LATER)
    assert changes(results) == {"marked": 2, "red": 1}
    assert results["overdue"].summary() == "overdue: checked=2 marked=2 errors=0"

    case = get_case(app, reported)
    assert case.overdue is True
    assert case.overdue_since == before[reported].accept_due_at
    assert case.supervision == "normal"  # not supervised before acceptance, as by hand
    assert case.version == before[reported].version + 1
    last = events(app, reported)[-1]
    assert (last.action, last.from_status, last.to_status, last.actor, last.actor_name) == (
        "overdue",
        "reported",
        "reported",
        "system:worker",
        "系统",
    )
    assert last.data == {"stage": "accept", "due_at": case.overdue_since.isoformat()}
    assert notices(app, reported) == {
        # a reported case is held by its community, the first line of intake
        f"overdue:accept:{stamp(case.overdue_since)}": (None, COMMUNITY_A)
    }

    case = get_case(app, handling)
    assert case.overdue is True and case.status == "filed"
    assert case.overdue_since == before[handling].handle_due_at
    assert case.supervision == "red"  # 60 days late: straight to red
    assert case.version == before[handling].version + 2
    overdue, supervise = events(app, handling)[-2:]
    assert overdue.action == "overdue" and overdue.data["stage"] == "handle"
    assert supervise.action == "supervise"
    assert (supervise.from_status, supervise.to_status) == ("filed", "filed")
    assert supervise.data["overdue_hours"] >= 24
    assert {k: supervise.data[k] for k in ("level", "previous", "automatic")} == {
        "level": "red",
        "previous": "normal",
        "automatic": True,
    }
    assert set(notices(app, handling)) == {
        f"overdue:handle:{stamp(case.overdue_since)}",
        f"supervision_red:auto:{stamp(case.overdue_since)}",
    }
    # The timeline through the API shows the worker's rows.
    items = client.get(f"/api/v1/cases/{handling}/timeline").get_json()["items"]
    assert [i["action"] for i in items] == ["report", "accept", "file", "overdue", "supervise"]
    assert items[-1]["actor_name"] == "系统"
    listed = client.get("/api/v1/cases?overdue=true").get_json()["items"]
    assert {c["id"] for c in listed} == {reported, handling}

    rejected_now = get_case(app, rejected)
    assert rejected_now.overdue is False and rejected_now.version == before[rejected].version

    # A second run, even later, changes nothing.
    state = snapshot(app)
    again = run(app, datetime.now(UTC) + 2 * LATER)
    assert changes(again) == {}
    assert snapshot(app) == state


def test_supervision_rises_at_the_thresholds_and_is_never_lowered(client, world, app, settings):
    case_id, _ = filed(client)
    # A deadline in the past also for the API's clock, which the office acts on below.
    due = make_overdue(app, case_id, timedelta(days=30))
    with app.extensions["gridapi"].sessions() as s:
        calendar = working_calendar(s, settings.working_hours, settings.timezone)
    thresholds = {"yellow_hours": 2.0, "red_hours": 24.0}

    assert changes(run(app, due, **thresholds)) == {}  # due, not yet overdue
    assert changes(run(app, due + timedelta(minutes=1), **thresholds)) == {"marked": 1}
    assert get_case(app, case_id).supervision == "normal"
    yellow_at = calendar.add_working_hours(due, 2)
    assert changes(run(app, yellow_at - timedelta(minutes=1), **thresholds)) == {}
    assert changes(run(app, yellow_at, **thresholds)) == {"yellow": 1}
    assert get_case(app, case_id).supervision == "yellow"
    red_at = calendar.add_working_hours(due, 24)
    assert changes(run(app, red_at - timedelta(minutes=1), **thresholds)) == {}
    assert changes(run(app, red_at, **thresholds)) == {"red": 1}
    rows = [e for e in events(app, case_id) if e.action == "supervise"]
    assert [(e.data["previous"], e.data["level"], e.data["automatic"]) for e in rows] == [
        ("normal", "yellow", True),
        ("yellow", "red", True),
    ]
    assert [e.at for e in rows] == [yellow_at, red_at]

    # An office lowers it by hand: the worker does not overrule it.
    etag = client.get(f"/api/v1/cases/{case_id}").headers["ETag"]
    act(client, case_id, etag, "supervise", level="normal")
    assert changes(run(app, red_at + LATER, **thresholds)) == {}
    assert get_case(app, case_id).supervision == "normal"


def test_overdue_cases_of_auto_escalate_categories_go_to_the_parent_office_once(
    client, world, app, accounts
):
    r = client.patch("/api/v1/categories/0101", json={"auto_escalate": True})
    assert r.status_code == 200, r.get_json()
    worker_id = accounts.create("w_a1", "grid_worker", grids=[COMMUNITY_A + "001"])
    dispatched, etag = filed(client, 0)
    act(client, dispatched, etag, "dispatch", assignee_id=worker_id)
    other_category, _ = filed(client, 1, category="0102")
    at_city, etag = filed(client, 2)
    act(client, at_city, etag, "transfer", unit=CITY, comment="市级统筹")
    not_filed, _ = report(client, 3)
    before = get_case(app, dispatched)
    assert before.assignee_id == worker_id

    results = run(app, datetime.now(UTC) + LATER)
    assert results["escalation"].counts == {"escalated": 1}

    case = get_case(app, dispatched)
    assert (case.status, case.responsible_region_code) == ("filed", COUNTY)
    assert case.assignee_id is None and case.department_id is None
    assert case.escalation_count == 1
    assert case.version == before.version + 3  # overdue, supervision, escalation
    last = events(app, dispatched)[-1]
    assert (last.action, last.from_status, last.to_status, last.actor) == (
        "escalate",
        "dispatched",
        "filed",
        "system:worker",
    )
    assert last.responsible_region_code == COUNTY
    assert {k: last.data[k] for k in ("automatic", "from_unit", "to_unit")} == {
        "automatic": True,
        "from_unit": TOWNSHIP,
        "to_unit": COUNTY,
    }
    sent = notices(app, dispatched)
    due = stamp(before.handle_due_at)
    # Overdue went to the worker who held it, escalation to the county office.
    assert sent[f"overdue:handle:{due}"] == (worker_id, TOWNSHIP)
    assert sent[f"escalated:auto:{due}"] == (None, COUNTY)
    shown = client.get(f"/api/v1/cases/{dispatched}").get_json()
    assert shown["responsible"]["unit"]["code"] == COUNTY

    for case_id, unit in ((other_category, TOWNSHIP), (at_city, CITY), (not_filed, COMMUNITY_B)):
        unchanged = get_case(app, case_id)
        assert unchanged.overdue is True
        assert (unchanged.escalation_count, unchanged.responsible_region_code) == (0, unit)

    # Still overdue at the county on the same deadline: not escalated again.
    state = snapshot(app)
    assert changes(run(app, datetime.now(UTC) + 3 * LATER)) == {}
    assert snapshot(app) == state


def test_an_automatic_escalation_says_it_withdrew_a_waiting_extension_request(
    client, world, app, accounts
):
    """As the escalate step does: the request waiting for the township is dropped, and the
    escalation's row names it (it vanished without a word)."""
    assert client.patch("/api/v1/categories/0101", json={"auto_escalate": True}).status_code == 200
    worker_id = accounts.create("w_a1", "grid_worker", grids=[COMMUNITY_A + "001"])
    case_id, etag = filed(client, 0)
    etag = act(client, case_id, etag, "dispatch", assignee_id=worker_id)
    act(client, case_id, etag, "request_extension", amount=2, comment="等配件")

    assert run(app, datetime.now(UTC) + LATER)["escalation"].counts == {"escalated": 1}
    case = get_case(app, case_id)
    assert (case.status, case.extension_request) == ("filed", None)
    last = events(app, case_id)[-1]
    assert last.action == "escalate"
    assert last.data["withdrawn_extension"] == {"amount": 2, "unit": "days"}


def test_the_indexed_status_lists_are_the_ones_the_jobs_use() -> None:
    from gridapi.models import cases as model

    assert ", ".join(f"'{s}'" for s in cases_svc.STAGE_DUE) == model._DEADLINE_STATUSES
    assert ", ".join(f"'{s}'" for s in jobs.SUPERVISED_STATUSES) == model._SUPERVISED_STATUSES


def test_two_workers_at_once_change_each_case_exactly_once(client, world, app, settings):
    assert client.patch("/api/v1/categories/0101", json={"auto_escalate": True}).status_code == 200
    ids = [filed(client, i % 4)[0] for i in range(30)]
    versions = {i: get_case(app, i).version for i in ids}
    now = datetime.now(UTC) + LATER
    options = jobs.JobOptions.from_settings(settings)
    barrier = threading.Barrier(2)
    results: list[list[jobs.JobResult]] = []
    failures: list[BaseException] = []

    def worker() -> None:
        engine = make_engine(settings.database_url)  # its own connections, as another process
        try:
            barrier.wait(timeout=30)
            results.append(jobs.run_jobs(engine, now, options, batch_size=4))
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    assert len(results) == 2
    totals: dict[str, int] = {}
    for run_results in results:
        for r in run_results:
            assert r.errors == 0, r.summary()
            for key, value in r.counts.items():
                totals[key] = totals.get(key, 0) + value
    assert totals == {
        "moved": 0,
        "tasks_moved": 0,
        "marked": 30,
        "yellow": 0,
        "red": 30,
        "escalated": 30,
        "purged": 0,
        "overdue": 0,
        "ended": 0,
        "thinned": 0,
        "deleted": 0,
        "presence_cleared": 0,
        "pruned": 0,
        "removed": 0,
    }

    with app.extensions["gridapi"].sessions() as s:
        per_case = s.execute(
            select(CaseEvent.case_id, CaseEvent.action, func.count())
            .where(CaseEvent.actor == jobs.SYSTEM_ACTOR)
            .group_by(CaseEvent.case_id, CaseEvent.action)
        ).all()
        notes = s.execute(
            select(Notification.case_id, func.count()).group_by(Notification.case_id)
        ).all()
    assert sorted(per_case) == sorted(
        (i, action, 1) for i in ids for action in ("overdue", "supervise", "escalate")
    )
    assert sorted(notes) == [(i, 3) for i in ids]  # overdue, red card, escalation
    for i in ids:
        case = get_case(app, i)
        assert case.version == versions[i] + 3
        assert (case.escalation_count, case.responsible_region_code) == (1, COUNTY)


def test_expired_idempotency_keys_are_purged_and_fresh_ones_kept(client, world, app):
    body = report_body(*center(0))
    first = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "fresh-1"})
    assert first.status_code == 201
    with app.extensions["gridapi"].sessions.begin() as s:
        idempotency.remember(
            s,
            "user:0",
            ["key:old"],
            hash_=idempotency.RequestHash("0" * 64),
            method="POST",
            path="/api/v1/cases",
            status_code=201,
            response="{}",
            resource_id=None,
            now=datetime.now(UTC) - timedelta(days=30),
            keep_days=7,
        )
    results = run(app, datetime.now(UTC))
    assert results["idempotency"].counts == {"purged": 1}
    assert results["idempotency"].summary() == "idempotency: purged=1 errors=0"
    with app.extensions["gridapi"].sessions() as s:
        assert s.scalars(select(IdempotencyKey.key)).all() == ["key:fresh-1"]
    replay = client.post("/api/v1/cases", json=body, headers={"Idempotency-Key": "fresh-1"})
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.get_json()["id"] == first.get_json()["id"]
    assert run(app, datetime.now(UTC))["idempotency"].counts == {"purged": 0}


def cli(settings: Settings, *args: str, **env: str) -> Any:
    """Run the command line on the test's database, its key files in the test's data
    directory (the default, ./var, is the checkout's)."""
    env = {
        "GRIDAPI_DATABASE_URL": settings.database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,
        **env,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_worker_once_prints_a_line_per_job(client, world, app, settings):
    case_id, _ = filed(client)
    make_overdue(app, case_id)
    with writes_begun_as_reads() as unsafe:
        result = cli(settings, "worker", "--once")
    assert result.exit_code == 0, result.output
    # Its engine begins plain reads (it reads while it writes export files): every job that
    # writes says so, and on SQLite begins as a writer.
    assert unsafe == []
    lines = result.output.strip().splitlines()
    assert lines[0] == "calendar: moved=0 tasks_moved=0 errors=0"  # no calendar edit to finish
    assert lines[1] == "overdue: checked=1 marked=1 errors=0"
    assert lines[2] == "supervision: checked=1 yellow=1 red=0 errors=0"
    assert lines[3:] == [
        "escalation: checked=0 escalated=0 errors=0",
        "idempotency: purged=0 errors=0",
        "tasks: overdue=0 errors=0",
        "tracks: ended=0 thinned=0 deleted=0 presence_cleared=0 errors=0",
        "sync: pruned=0 errors=0",
        "files: removed=0 errors=0",
        lines[9],
        "exports: done=0 failed=0 purged=0",
    ]
    # The outbox events of the report and the steps are fanned out; nobody subscribed.
    assert re.fullmatch(
        r"webhooks: fanned_out=\d+ attempted=0 delivered=0 retrying=0 dead=0", lines[9]
    ), lines[9]
    assert get_case(app, case_id).overdue is True
    again = cli(settings, "worker", "--once")
    assert again.exit_code == 0, again.output
    first, second = again.output.splitlines()[1:3]
    assert first == "overdue: checked=0 marked=0 errors=0"
    # A yellow case a day overdue is looked at again for red, and left yellow.
    assert re.fullmatch(r"supervision: checked=\d+ yellow=0 red=0 errors=0", second), second


def wait_for(condition: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_worker_loop_runs_every_interval_and_stops_on_sigterm(
    client, world, app, settings, tmp_path: Path
):
    first, _ = filed(client, 0)
    make_overdue(app, first)
    env = {
        **os.environ,
        "GRIDAPI_DATABASE_URL": settings.database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,
        "GRIDAPI_WORKER_INTERVAL_SECONDS": "0.2",
        "GRIDAPI_LOG_LEVEL": "INFO",
    }
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridapi.cli", "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: get_case(app, first).overdue, "the first case to be marked")
        second, _ = filed(client, 1)  # a later run picks up a case made overdue meanwhile
        make_overdue(app, second)
        wait_for(lambda: get_case(app, second).overdue, "the second case to be marked")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    assert "overdue: checked=1 marked=1 errors=0" in text
    assert [e.action for e in events(app, first)].count("overdue") == 1


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_serve_runs_exactly_one_worker_beside_its_web_workers(
    client, world, app, settings, tmp_path: Path
):
    case_id, _ = filed(client)
    make_overdue(app, case_id)
    env = {
        **os.environ,
        "GRIDAPI_DATABASE_URL": settings.database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,
        "GRIDAPI_PORT": str(_free_port()),
        "GRIDAPI_WORKERS": "3",
        "GRIDAPI_WORKER_IN_SERVE": "on",
        "GRIDAPI_WORKER_INTERVAL_SECONDS": "0.3",
        "GRIDAPI_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridapi.cli", "serve"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: get_case(app, case_id).overdue, "the server's worker to mark the case")
        wait_for(lambda: len(_children(proc.pid)) == 4, "three web workers and the job worker")
        children = _children(proc.pid)
        job_workers = [pid for pid, cmd in children.items() if "gridapi.cli worker" in cmd]
        assert len(job_workers) == 1, children
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text, text
    wait_for(lambda: not Path(f"/proc/{job_workers[0]}").exists(), "the job worker to stop", 20)
    assert [e.action for e in events(app, case_id)].count("overdue") == 1


@pytest.mark.parametrize(
    "url,mode,expected",
    [
        ("sqlite:///x.sqlite3", "auto", True),
        ("postgresql+psycopg:///gridapi", "auto", False),
        ("postgresql+psycopg:///gridapi", "on", True),
        ("sqlite:///x.sqlite3", "off", False),
        ("sqlite:///x.sqlite3", " ON ", True),
    ],
)
def test_serve_runs_the_jobs_with_sqlite_unless_told_otherwise(url, mode, expected):
    assert jobs_in_serve(Settings(database_url=url, worker_in_serve=mode)) is expected


def test_an_invalid_worker_in_serve_setting_stops_serve_with_a_message():
    with pytest.raises(ValueError, match="GRIDAPI_WORKER_IN_SERVE"):
        jobs_in_serve(Settings(worker_in_serve="sometimes"))
    result = CliRunner().invoke(main, ["serve"], env={"GRIDAPI_WORKER_IN_SERVE": "sometimes"})
    assert result.exit_code != 0
    assert "auto, on or off" in result.output


def test_a_rework_overdue_again_is_overdue_against_the_handling_deadline(client, world, app):
    """Overdue against verification, sent back for rework after the handling deadline too:
    overdue_since kept the verification deadline (the stage the case had left)."""
    case_id, etag = filed(client, 0)
    etag = act(client, case_id, etag, "feedback", comment="已处理")
    now = datetime.now(UTC)
    handle_due, verify_due = now - timedelta(days=2), now - timedelta(days=3)
    with app.extensions["gridapi"].sessions.begin() as s:
        s.execute(
            update(Case)
            .where(Case.id == case_id)
            .values(handle_due_at=handle_due, verify_due_at=verify_due)
        )
    run(app, now)
    assert get_case(app, case_id).overdue_since == verify_due
    etag = client.get(f"/api/v1/cases/{case_id}").headers["ETag"]
    act(client, case_id, etag, "verify_fail", comment="仍有垃圾")
    case = get_case(app, case_id)
    assert case.status == "filed" and case.overdue is True
    assert case.overdue_since == handle_due
    # The step marked it as the worker would have: the timeline row and the notice of the
    # handling deadline (it wrote neither, and the next run saw a case already overdue).
    last = events(app, case_id)[-2:]
    assert [(e.action, e.seq - last[0].seq) for e in last] == [("verify_fail", 0), ("overdue", 1)]
    assert last[1].data == {"stage": "handle", "due_at": handle_due.isoformat()}
    assert f"overdue:handle:{stamp(handle_due)}" in notices(app, case_id)
    before = snapshot(app)
    run(app, datetime.now(UTC))
    assert snapshot(app) == before  # nothing left for the worker


def test_a_job_that_fails_for_any_reason_leaves_the_others_to_run(app, monkeypatch):
    """Only database errors were caught: an OverflowError in the supervision job (an
    infinite threshold) ended the run, and the idempotency, task, track, sync and file jobs
    never ran."""

    def broken(*args: Any, **kwargs: Any) -> int:
        raise OverflowError("date value out of range")

    monkeypatch.setattr(jobs, "flag_overdue_tasks", broken)
    st = app.extensions["gridapi"]
    results = jobs.run_jobs(st.sessions, jobs.utcnow(), jobs.JobOptions.from_settings(st.settings))
    assert [r.name for r in results] == list(jobs.JOB_NAMES)
    assert {r.name: r.errors for r in results if r.errors} == {"tasks": 1}


def test_a_report_closed_onto_a_case_the_worker_is_changing_waits_for_the_worker(
    client, world, app, engine
):
    """The `duplicate` step read the original unlocked: while a worker marked the original
    overdue (row locked, its timeline row not yet committed), the step numbered the original's
    `duplicates_attached` row from what was committed, and its update of the original met
    another version: a 500 (PostgreSQL)."""
    from ..races import send_while_uncommitted

    original, _ = filed(client, 0)
    duplicate, etag = report(client, 1)
    make_overdue(app, original)
    with app.extensions["gridapi"].sessions() as session:  # the worker's batch, not committed
        batch = jobs.mark_overdue(session, datetime.now(UTC))
        assert batch.counts == {"marked": 1}
        r = send_while_uncommitted(
            engine,
            session,
            "cases",
            lambda: client.post(
                f"/api/v1/cases/{duplicate}/transitions",
                json={"action": "duplicate", "duplicate_of": original, "comment": "同一处"},
                headers={"If-Match": etag},
            ),
            waits_in="",  # any statement of the step waiting for the worker's lock
        )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "cancelled"
    rows = events(app, original)
    assert [e.action for e in rows][-2:] == ["overdue", "duplicates_attached"]
    assert [e.seq for e in rows] == list(range(1, len(rows) + 1))
    assert rows[-1].data["attached"] == [duplicate]
    case = get_case(app, original)
    assert case.overdue is True and case.duplicate_of_id is None
