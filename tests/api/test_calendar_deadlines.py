"""A calendar edit moves the deadlines still ahead that it changes, in the same
transaction: open cases count again from the same start on the new calendar, with a timeline
row and an audit row; deadlines already passed stay (docs/cases.md, "Deadlines and overdue
cases")."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from gridapi.cli import main
from gridapi.models import Case, CaseEvent, Category
from gridapi.services.calendar import working_calendar
from gridapi.services.cases import add_limit

from ..statements import statements_sent
from .test_case_workflow import Desk, ok, when

HOURS, ZONE = "08:30-12:00,13:30-17:30", "Asia/Shanghai"


@pytest.fixture
def desk(app, accounts, client, world) -> Desk:  # type: ignore[no-untyped-def]
    return Desk(app, accounts, client)


def _audited(client, action: str) -> list[dict]:  # type: ignore[no-untyped-def]
    return [e for e in ok(client.get("/api/v1/audit"))["items"] if e["action"] == action]


def test_a_holiday_set_moves_the_open_deadlines_that_count_it(desk, session, engine):
    """The State Council's notice makes the day a case is due on a holiday: the case is
    now due a working day later, told in its timeline (and the audit log). A case already
    overdue keeps the deadline it missed, a closed case its own, and a case whose clock
    started after the day changed is not touched."""
    d = desk
    moving = d.report(category="0102")["id"]  # handled within 1 working day
    filed = d.to_filed(moving)
    due = when(filed["deadlines"]["handle"])
    assert due is not None and due > datetime.now(UTC)
    overdue = d.report(category="0102")["id"]
    d.to_filed(overdue)
    closed = d.report(category="0102")["id"]
    d.to_closed(closed)
    now = datetime.now(UTC)
    missed = now - timedelta(days=1)
    with engine.begin() as conn:
        conn.execute(
            update(Case)
            .where(Case.id == overdue)
            .values(
                filed_at=now - timedelta(days=10),
                handle_due_at=missed,
                overdue=True,
                overdue_since=missed,
                version=Case.version + 1,
            )
        )
    before = {cid: d.get(cid) for cid in (moving, overdue, closed)}
    steps = {cid: len(d.timeline(cid)) for cid in (moving, overdue, closed)}

    # A day in the overdue case's span, before the others started: nothing moves.
    past = (now - timedelta(days=5)).astimezone(working_calendar(session, HOURS, ZONE).tz)
    ok(d.admin.put(f"/api/v1/calendar/{past.date()}", json={"kind": "holiday"}))
    assert {cid: d.get(cid) for cid in before} == before
    assert _audited(d.admin, "calendar.deadlines_moved") == []

    # The day the first case is due on becomes a holiday.
    day = due.astimezone(working_calendar(session, HOURS, ZONE).tz).date()
    answer = ok(d.admin.put(f"/api/v1/calendar/{day}", json={"kind": "holiday", "name": "元旦"}))
    moved = (answer["cases_moved"], answer["tasks_moved"], answer["campaigns_moved"])
    assert moved == (1, 0, 0)  # the answer says so
    session.rollback()
    cal = working_calendar(session, HOURS, ZONE)
    filed_at = next(when(r["at"]) for r in d.timeline(moving) if r["action"] == "file")
    expected = cal.add_working_days(filed_at, 1).astimezone(UTC)
    after = d.get(moving)
    assert when(after["deadlines"]["handle"]) == expected > due
    assert after["version"] == before[moving]["version"] + 1  # a new ETag: the case changed
    assert after["overdue"] is False
    row = d.timeline(moving)[-1]
    assert len(d.timeline(moving)) == steps[moving] + 1
    assert (row["action"], row["from_status"], row["to_status"]) == (
        "deadline_moved",
        "filed",
        "filed",
    )
    entry = _audited(d.admin, "calendar.deadlines_moved")
    assert row["actor"] == entry[0]["actor_id"]  # the admin who set the day
    assert row["data"]["stage"] == "handle"
    assert when(row["data"]["due_before"]) == due
    assert when(row["data"]["due_at"]) == expected
    # The overdue case and the closed one are as they were.
    for cid in (overdue, closed):
        assert d.get(cid) == before[cid]
        assert len(d.timeline(cid)) == steps[cid]
    entry = _audited(d.admin, "calendar.deadlines_moved")
    assert [(e["summary"]["cases"], e["summary"]["case_ids"]) for e in entry] == [(1, [moving])]

    # Returned to a working day, the deadline comes back (a second row), and setting the
    # same day again moves nothing.
    assert d.admin.delete(f"/api/v1/calendar/{day}").status_code == 204
    session.rollback()
    back = working_calendar(session, HOURS, ZONE).add_working_days(filed_at, 1)
    assert when(d.get(moving)["deadlines"]["handle"]) == back.astimezone(UTC)
    if day.weekday() < 5:  # not a 调休 Saturday: the deadline it had
        assert back == due
    assert [r["action"] for r in d.timeline(moving)[-2:]] == ["deadline_moved"] * 2
    assert d.admin.delete(f"/api/v1/calendar/{day}").status_code == 404
    assert len(d.timeline(moving)) == steps[moving] + 2


def test_an_import_moves_deadlines_as_a_day_set_does(
    desk, session, database_url, settings, tmp_path
):
    """The year's notice imported by the command line (or the API): the deadlines it
    changes move, in the import's transaction."""
    d = desk
    cid = d.report(category="0102")["id"]
    due = when(d.to_filed(cid)["deadlines"]["handle"])
    assert due is not None
    day = due.astimezone(working_calendar(session, HOURS, ZONE).tz).date()
    year = {
        "holidays": [
            str(r["date"])
            for r in ok(d.admin.get(f"/api/v1/calendar?year={day.year}"))["items"]
            if r["kind"] == "holiday"
        ]
        + [str(day)],
        "workdays": [
            str(r["date"])
            for r in ok(d.admin.get(f"/api/v1/calendar?year={day.year}"))["items"]
            if r["kind"] == "workday"
        ],
    }
    path = tmp_path / "notice.json"
    path.write_text(json.dumps({"version": 1, "years": {str(day.year): year}}))
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(main, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert "1 open case deadline(s) moved" in result.output
    moved = when(d.get(cid)["deadlines"]["handle"])
    assert moved is not None and moved > due
    row = d.timeline(cid)[-1]
    assert row["action"] == "deadline_moved" and row["actor"].startswith("cli:")


def test_an_edit_does_not_make_a_case_overdue(desk, session, engine):
    """A holiday removed that a case counted: counted again, its deadline would already
    have passed. It stays as it was (nobody was warned of the earlier deadline); no row."""
    d = desk
    cid = d.report(category="0102")["id"]
    d.to_filed(cid)
    now = datetime.now(UTC)
    tz = working_calendar(session, HOURS, ZONE).tz
    start = (now - timedelta(days=20)).astimezone(tz)
    # Every weekday since the start a holiday, today too: with today a working day the
    # deadline fell at its 17:30 and the test failed when run after that (09:30 UTC).
    past = [
        start.date() + timedelta(days=n)
        for n in range(1, (now.astimezone(tz).date() - start.date()).days + 1)
        if (start.date() + timedelta(days=n)).weekday() < 5
    ]
    for day in past:
        ok(d.admin.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    session.rollback()
    due = working_calendar(session, HOURS, ZONE).add_working_days(start, 1).astimezone(UTC)
    assert due > now
    with engine.begin() as conn:
        conn.execute(
            update(Case)
            .where(Case.id == cid)
            .values(filed_at=start, handle_due_at=due, version=Case.version + 1)
        )
    before, steps = d.get(cid), len(d.timeline(cid))
    assert d.admin.delete(f"/api/v1/calendar/{past[0]}").status_code == 204
    assert d.get(cid) == before
    assert len(d.timeline(cid)) == steps
    assert _audited(d.admin, "calendar.deadlines_moved") == []


def test_the_audit_row_of_a_large_move_names_only_the_first_cases(desk, session, monkeypatch):
    """The audit row counts every case an edit moved and names only the first
    ``AUDITED_CASE_IDS`` of them (each has its own timeline row): a holiday set over a
    county's year of open cases wrote one row holding every id."""
    from gridapi.services import calendar as calendar_service

    monkeypatch.setattr(calendar_service, "AUDITED_CASE_IDS", 1)
    d = desk
    ids = [d.report(category="0102")["id"] for _ in range(2)]
    dues = [when(d.to_filed(cid)["deadlines"]["handle"]) for cid in ids]
    tz = working_calendar(session, HOURS, ZONE).tz
    days = sorted({due.astimezone(tz).date() for due in dues if due is not None})
    for day in days:  # one day, unless the two were filed either side of a day's end
        ok(d.admin.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    entry = _audited(d.admin, "calendar.deadlines_moved")
    assert sum(e["summary"]["cases"] for e in entry) == 2
    assert all(len(e["summary"]["case_ids"]) == 1 for e in entry)
    assert {i for e in entry for i in e["summary"]["case_ids"]} <= set(ids)
    if len(days) == 1:
        assert [(e["summary"]["cases"], e["summary"]["case_ids"]) for e in entry] == [(2, ids[:1])]
    assert all(d.timeline(cid)[-1]["action"] == "deadline_moved" for cid in ids)


def test_an_edit_reads_the_timelines_of_the_cases_it_moves_per_batch_not_per_case(
    desk, session, app
):
    """Each moved case's timeline row took a statement of its own to number it (and the
    row's flush with it): a holiday set over a county's open cases sent three statements a
    case, a hundred thousand cases held the edit's transaction for minutes. The rows are
    numbered by one read per batch of cases, as the overdue job numbers its rows."""

    d = desk
    ids = [d.report(category="0102")["id"] for _ in range(3)]
    dues = [when(d.to_filed(cid)["deadlines"]["handle"]) for cid in ids]
    tz = working_calendar(session, HOURS, ZONE).tz
    days = sorted({due.astimezone(tz).date() for due in dues if due is not None})
    engine = app.extensions["gridapi"].engine
    with statements_sent(engine, lambda s: "max(case_events.seq)" in s) as numbered:
        for day in days:  # one day, unless the cases were filed either side of a day's end
            ok(d.admin.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    assert all(d.timeline(cid)[-1]["action"] == "deadline_moved" for cid in ids)
    assert [[r["seq"] for r in d.timeline(cid)] for cid in ids] == [
        list(range(1, len(d.timeline(cid)) + 1)) for cid in ids
    ]
    assert len(numbered) == len(days), numbered


# A week no calendar row touches (the seeded years end earlier): Monday to Friday working.
MONDAY = date(2030, 1, 7)


def _local(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, dtime(hour, minute), tzinfo=ZoneInfo(ZONE)).astimezone(UTC)


def _clock_started(engine, cid: int, action: str, at: datetime, due: datetime, **data) -> None:  # type: ignore[no-untyped-def]
    """Move the case's handling clock to ``at`` (its ``action`` row too, with ``data``)."""
    with engine.begin() as conn:
        conn.execute(
            update(Case)
            .where(Case.id == cid)
            .values(filed_at=at, handle_due_at=due, version=Case.version + 1)
        )
        row = conn.execute(
            select(CaseEvent.id, CaseEvent.data).where(
                CaseEvent.case_id == cid, CaseEvent.action == action
            )
        ).one()
        conn.execute(
            update(CaseEvent).where(CaseEvent.id == row.id).values(at=at, data={**row.data, **data})
        )


def test_a_deadline_with_an_extension_in_the_other_unit_is_counted_again_exactly(desk, engine):
    """A handling limit of 3 working hours, filed on Monday at 10:00 (due at 14:30), then
    a day's extension: due on Tuesday at 17:30. Monday becomes a holiday: the 3 hours end on Tuesday at 11:30, and a
    day more is Wednesday at 17:30. Counted again all in hours (14 working hours from
    Monday 10:00), it was Wednesday at 16:00, an hour and a half short of the extension."""
    d = desk
    with engine.begin() as conn:
        conn.execute(
            update(Category)
            .where(Category.code == "0102")
            .values(handle_limit=3, handle_unit="hours")
        )
    cid = d.report(category="0102")["id"]
    d.to_handling(cid)
    d.act(d.worker, cid, "request_extension", amount=1, unit_of_time="days", comment="雨天")
    d.act(d.office, cid, "approve_extension")
    assert MONDAY.weekday() == 0
    due = _local(MONDAY + timedelta(days=1), 17, 30)
    _clock_started(engine, cid, "file", _local(MONDAY, 10), due)
    with engine.begin() as conn:  # the extension approved on Monday, from that deadline
        conn.execute(
            update(CaseEvent)
            .where(CaseEvent.case_id == cid, CaseEvent.action == "approve_extension")
            .values(at=_local(MONDAY, 10, 30))
        )
    steps = len(d.timeline(cid))
    ok(d.admin.put(f"/api/v1/calendar/{MONDAY}", json={"kind": "holiday"}))
    expected = _local(MONDAY + timedelta(days=2), 17, 30)
    assert when(d.get(cid)["deadlines"]["handle"]) == expected
    row = d.timeline(cid)[-1]
    assert len(d.timeline(cid)) == steps + 1 and row["action"] == "deadline_moved"
    assert (when(row["data"]["due_before"]), when(row["data"]["due_at"])) == (due, expected)


def test_a_deadline_keeps_the_unit_it_was_counted_in_when_its_category_changes(desk, engine):
    """Filed on Monday with a limit of 1 working day: due on Tuesday at 17:30. The category
    is then given 14 working hours instead. Monday becomes a holiday: a day counted after
    Monday is still Tuesday, so the deadline stays. It was counted again in the category's
    new unit: 14 working hours from Monday 10:00, Wednesday at 16:00."""
    d = desk
    cid = d.report(category="0102")["id"]  # handled within 1 working day
    d.to_filed(cid)
    assert d.timeline(cid)[-1]["data"]["handle_unit"] == "days"  # the file row says so
    due = _local(MONDAY + timedelta(days=1), 17, 30)
    _clock_started(engine, cid, "file", _local(MONDAY, 10), due)
    with engine.begin() as conn:
        conn.execute(
            update(Category)
            .where(Category.code == "0102")
            .values(handle_limit=14, handle_unit="hours")
        )
    before, steps = d.get(cid), len(d.timeline(cid))
    ok(d.admin.put(f"/api/v1/calendar/{MONDAY}", json={"kind": "holiday"}))
    assert d.get(cid) == before
    assert len(d.timeline(cid)) == steps
    # A holiday the day counts: one working day after Monday is Wednesday, end of day.
    ok(d.admin.put(f"/api/v1/calendar/{MONDAY + timedelta(days=1)}", json={"kind": "holiday"}))
    assert when(d.get(cid)["deadlines"]["handle"]) == _local(MONDAY + timedelta(days=2), 17, 30)


def test_the_worker_moves_a_deadline_counted_on_the_calendar_another_process_still_held(
    desk, session, settings, engine
):
    """Another process keeps the calendar it read for GRIDAPI_CALENDAR_CACHE_SECONDS: a case
    reported there just after an edit got its deadline on the old calendar, and the edit,
    committed before, did not see it. Once the window has passed the worker counts the
    deadlines set in it again: that one moves (a ``deadline_moved`` row by the worker, an
    audit row), the others, counted on the new calendar, stay; a second run does nothing."""
    from gridapi import create_app
    from gridapi.services import jobs

    d = desk
    other = create_app(settings)
    try:
        reporter = other.test_client()
        reporter.environ_base["HTTP_AUTHORIZATION"] = d.admin.environ_base["HTTP_AUTHORIZATION"]
        first = d.report(reporter, category="0102")  # the other process reads the calendar
        due = when(first["deadlines"]["accept"])
        assert due is not None
        tz = working_calendar(session, HOURS, ZONE).tz
        day = due.astimezone(tz).date()
        ok(d.admin.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
        moved_by_edit = when(d.get(first["id"])["deadlines"]["accept"])
        stale = d.report(reporter, category="0102")  # on the calendar it still holds
    finally:
        other.extensions["gridapi"].routing.wait_for_rebuild(60)
        other.extensions["gridapi"].engine.dispose()
    session.rollback()
    calendar = working_calendar(session, HOURS, ZONE)
    category = session.get(Category, "0102")
    assert category is not None
    reported_at = when(stale["reported_at"])
    assert reported_at is not None
    expected = add_limit(calendar, reported_at, category.accept_limit, category.accept_unit)
    stale_due = when(stale["deadlines"]["accept"])
    assert stale_due is not None and stale_due != expected  # counted on the old calendar
    steps = len(d.timeline(stale["id"]))

    later = datetime.now(UTC) + timedelta(minutes=2)
    results = jobs.run_jobs(engine, later, jobs=["calendar"])
    assert [(r.name, r.counts) for r in results] == [("calendar", {"moved": 1, "tasks_moved": 0})]
    assert when(d.get(stale["id"])["deadlines"]["accept"]) == expected
    assert when(d.get(first["id"])["deadlines"]["accept"]) == moved_by_edit
    timeline = d.timeline(stale["id"])
    assert len(timeline) == steps + 1
    assert (timeline[-1]["action"], timeline[-1]["actor"]) == ("deadline_moved", "system:worker")
    assert (when(timeline[-1]["data"]["due_before"]), when(timeline[-1]["data"]["due_at"])) == (
        stale_due,
        expected,
    )
    entry = _audited(d.admin, "calendar.deadlines_moved")
    assert [e["summary"]["case_ids"] for e in entry if e["actor_type"] == "system"] == [
        [stale["id"]]
    ]
    # Done once: a second run (or a second worker) moves nothing.
    again = jobs.run_jobs(engine, later + timedelta(minutes=1), jobs=["calendar"])
    assert again[0].counts == {"moved": 0, "tasks_moved": 0}
    assert len(d.timeline(stale["id"])) == steps + 1


def _earlier(who) -> list[tuple[int, str]]:  # type: ignore[no-untyped-def]
    items = ok(who.get("/api/v1/me/notifications"))["items"]
    return [(i["case_id"], i["message"]) for i in items if i["kind"] == "deadline_earlier"]


def test_a_deadline_a_calendar_edit_brings_earlier_tells_the_assignee_and_the_unit_once(
    desk, engine, session
):
    """A Saturday worked in exchange (调休) inside a case's seven working days of handling
    brings its deadline a day earlier: the worker handling it and the unit holding it had
    planned for the old one, and are told (as of an overdue case). Given back (a later
    deadline), nobody is told; the same earlier deadline again is not told twice."""
    d = desk
    with engine.begin() as conn:
        conn.execute(
            update(Category)
            .where(Category.code == "0102")
            .values(handle_limit=7, handle_unit="days")
        )
    case = d.report(category="0102")
    handling = d.to_handling(case["id"])
    due = when(handling["deadlines"]["handle"])
    filed_at = next(when(r["at"]) for r in d.timeline(case["id"]) if r["action"] == "file")
    cal = working_calendar(session, HOURS, ZONE)
    saturday = filed_at.astimezone(cal.tz).date() + timedelta(days=1)
    while saturday.weekday() < 5 or saturday in cal.holidays or saturday in cal.workdays:
        saturday += timedelta(days=1)
    assert saturday < due.astimezone(cal.tz).date()

    answer = ok(d.admin.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
    assert answer["cases_moved"] == 1
    session.rollback()
    expected = working_calendar(session, HOURS, ZONE).add_working_days(filed_at, 7)
    assert when(d.get(case["id"])["deadlines"]["handle"]) == expected.astimezone(UTC) < due
    local = expected.astimezone(ZoneInfo(ZONE)).strftime("%Y-%m-%d %H:%M")
    told = [(case["id"], f"事件 {case['number']} 的处置期限因工作日历调整提前至{local}")]
    assert _earlier(d.worker) == _earlier(d.office) == told

    assert d.admin.delete(f"/api/v1/calendar/{saturday}").status_code == 204
    assert when(d.get(case["id"])["deadlines"]["handle"]) == due
    ok(d.admin.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
    assert when(d.get(case["id"])["deadlines"]["handle"]) == expected.astimezone(UTC)
    assert _earlier(d.worker) == _earlier(d.office) == told


def test_two_edits_of_one_day_at_once_move_a_deadline_once(desk, app, engine):
    """Two admins make the same Tuesday a holiday at once, inside a case's three working
    days (filed Monday 10:00, due Thursday 10:00). The second edit read the calendar before
    the first committed; once the first's locks were released it counted the deadline
    again, already Friday, as if the day had only now become a holiday: Monday, a working
    day lost. Edits now take turns (on PostgreSQL a lock before the read; SQLite writers are
    one at a time): the second sees the day set, changes no day, and moves nothing."""
    import threading

    from gridapi.services.audit import Actor
    from gridapi.services.calendar import calendar_for_edit, recount_after_edit, set_day

    from ..races import wait_until_waiting

    d = desk
    with engine.begin() as conn:
        conn.execute(
            update(Category)
            .where(Category.code == "0102")
            .values(handle_limit=3, handle_unit="days")
        )
    cid = d.report(category="0102")["id"]
    d.to_filed(cid)
    _clock_started(engine, cid, "file", _local(MONDAY, 10), _local(MONDAY + timedelta(days=3), 10))
    tuesday = MONDAY + timedelta(days=1)
    friday = _local(MONDAY + timedelta(days=4), 10)

    answers: list = []
    with app.extensions["gridapi"].sessions() as first:
        before = calendar_for_edit(first, HOURS, ZONE)
        set_day(first, tuesday, "holiday")
        now = datetime.now(UTC)
        moved = recount_after_edit(first, before, HOURS, ZONE, now, Actor("user", "1", "甲"))
        assert moved == [cid]  # to Friday 10:00, not yet committed
        second = threading.Thread(
            target=lambda: answers.append(
                d.admin.put(f"/api/v1/calendar/{tuesday}", json={"kind": "holiday", "name": "假"})
            )
        )
        second.start()
        wait_until_waiting(engine, second, "")
        first.commit()
    second.join(30)
    assert answers and answers[0].status_code == 200, answers
    assert when(d.get(cid)["deadlines"]["handle"]) == friday
    moves = [r for r in d.timeline(cid) if r["action"] == "deadline_moved"]
    assert [when(r["data"]["due_at"]) for r in moves] == [friday]
