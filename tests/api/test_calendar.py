"""The working calendar as data: seeded, read, edited and imported by admins."""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from gridapi.cli import main
from gridapi.services.calendar import calendar_problem, working_calendar

SHANGHAI = ZoneInfo("Asia/Shanghai")
#: What an edit answers when it moved no deadline.
NOTHING_MOVED = {"cases_moved": 0, "tasks_moved": 0, "campaigns_moved": 0}


def test_the_seeded_2026_arrangement_is_served(accounts, anon_client):
    worker = accounts.client("reader1", "admin")
    r = worker.get("/api/v1/calendar?year=2026")
    assert r.status_code == 200
    body = r.get_json()
    assert body["working_hours"] == "08:30-12:00,13:30-17:30"
    days = {d["date"]: d["kind"] for d in body["items"]}
    assert days["2026-10-01"] == "holiday" and days["2026-10-10"] == "workday"
    assert days["2026-02-14"] == "workday"
    assert anon_client.get("/api/v1/calendar").status_code == 401


def test_admin_edits_days_and_deadlines_follow(client, accounts, session, factory):
    factory.regions()
    # Friday 2026-12-04 16:30 + 4 working hours is Monday 11:30 ...
    start = datetime(2026, 12, 4, 16, 30, tzinfo=SHANGHAI)
    cal = working_calendar(session, "08:30-12:00,13:30-17:30", "Asia/Shanghai")
    assert cal.add_working_hours(start, 4) == datetime(2026, 12, 7, 11, 30, tzinfo=SHANGHAI)
    # ... until Saturday is worked in exchange and Monday is a holiday.
    assert (
        client.put(
            "/api/v1/calendar/2026-12-05", json={"kind": "workday", "name": "调休"}
        ).status_code
        == 200
    )
    assert client.put("/api/v1/calendar/2026-12-07", json={"kind": "holiday"}).status_code == 200
    session.rollback()
    cal = working_calendar(session, "08:30-12:00,13:30-17:30", "Asia/Shanghai")
    assert cal.add_working_hours(start, 4) == datetime(2026, 12, 5, 11, 30, tzinfo=SHANGHAI)
    # A weekday cannot be a workday in exchange; removing returns the day to the rule.
    r = client.put("/api/v1/calendar/2026-12-08", json={"kind": "workday"})
    assert r.status_code == 422 and "kind" in r.get_json()["errors"]["json"]
    assert client.delete("/api/v1/calendar/2026-12-07").status_code == 204
    assert client.delete("/api/v1/calendar/2026-12-07").status_code == 404
    county = accounts.client("county1", "county_centre", scope_region="320508000000")
    assert county.put("/api/v1/calendar/2026-12-12", json={"kind": "workday"}).status_code == 403
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions.count("calendar.set") == 2 and actions.count("calendar.remove") == 1


def test_import_replaces_a_year_all_or_nothing(client, database_url, settings, tmp_path):
    year = {"holidays": ["2027-01-01", "2027-02-06", "2027-02-07"], "workdays": ["2027-02-13"]}
    r = client.post("/api/v1/calendar/import", json={"version": 1, "years": {"2027": year}})
    assert r.status_code == 200 and r.get_json() == {
        "years": 1,
        "holidays": 3,
        "workdays": 1,
        **NOTHING_MOVED,
    }
    days = {d["date"] for d in client.get("/api/v1/calendar?year=2027").get_json()["items"]}
    assert days == {"2027-01-01", "2027-02-06", "2027-02-07", "2027-02-13"}
    bad = {
        "version": 1,
        "years": {"2027": {"holidays": ["2027-01-01"], "workdays": ["2027-02-10"]}},
    }
    assert client.post("/api/v1/calendar/import", json=bad).status_code == 422  # a Wednesday
    assert {d["date"] for d in client.get("/api/v1/calendar?year=2027").get_json()["items"]} == days
    # The command line takes the same file.
    path = tmp_path / "2028.json"
    path.write_text(json.dumps({"version": 1, "years": {"2028": {"holidays": ["2028-10-02"]}}}))
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(main, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert [d["date"] for d in client.get("/api/v1/calendar?year=2028").get_json()["items"]] == [
        "2028-10-02"
    ]
    assert date(2028, 10, 2).weekday() == 0


def _dates(client, year: int) -> list[str]:  # type: ignore[no-untyped-def]
    r = client.get(f"/api/v1/calendar?year={year}")
    assert r.status_code == 200, r.get_json()
    return [d["date"] for d in r.get_json()["items"]]


def test_import_refuses_year_keys_of_non_ascii_digits_and_keeps_the_year(client):
    ok = {"version": 1, "years": {"2031": {"holidays": ["2031-01-01"]}}}
    assert client.post("/api/v1/calendar/import", json=ok).status_code == 200
    # Full-width ２０３１ read as 2031 by int(): the import answered 200 and emptied 2031.
    for key in ("２０３１", "٢٠٣١"):
        r = client.post("/api/v1/calendar/import", json={"version": 1, "years": {key: {}}})
        assert r.status_code == 422, r.get_json()
        body = r.get_json()
        assert (body["code"], body["status"]) == (422, "Unprocessable Entity")
        assert "year keys must be 4-digit strings" in body["message"]
        assert any("4-digit" in m for m in body["errors"]["json"]["years"])
    assert _dates(client, 2031) == ["2031-01-01"]
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions.count("calendar.import") == 1


def test_import_takes_exactly_the_years_the_calendar_lists(client):
    # GET ?year= lists 2000-2100; a year imported outside could never be read back.
    for year in (1999, 2101):
        assert client.get(f"/api/v1/calendar?year={year}").status_code == 422
    for key, day in (("1999", "1999-01-01"), ("2101", "2101-01-03"), ("0001", "0001-01-01")):
        r = client.post(
            "/api/v1/calendar/import", json={"version": 1, "years": {key: {"holidays": [day]}}}
        )
        assert r.status_code == 422, r.get_json()
        # "0001" was refused, but as "0001-01-01 belongs to another year".
        problems = r.get_json()["errors"]["json"]["years"]
        assert problems == [f"years must lie between 2000 and 2100, got {key}"]
    for key, day in (("2000", "2000-01-01"), ("2100", "2100-01-01")):
        r = client.post(
            "/api/v1/calendar/import", json={"version": 1, "years": {key: {"holidays": [day]}}}
        )
        assert r.status_code == 200, r.get_json()
        assert _dates(client, int(key)) == [day]


def test_a_day_that_cannot_be_set_is_422_naming_it(client, engine):
    """2026-02-30 answered 404 naming nothing; 9999-12-31 and 1999-12-04 were stored, and
    no read by year could show them."""
    for day in ("2026-02-30", "2026-13-01", "9999-12-31", "1999-12-04", "0001-01-01"):
        r = client.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"})
        assert r.status_code == 422, (day, r.get_json())
        assert r.get_json()["errors"] == {
            "path": {"day": ["a date (YYYY-MM-DD) of the years 2000-2100"]}
        }, day
    with engine.connect() as conn:
        years = conn.execute(text("SELECT day FROM calendar_days")).scalars().all()
    assert all((d if isinstance(d, date) else date.fromisoformat(d)).year >= 2000 for d in years)
    assert client.put("/api/v1/calendar/2100-12-31", json={"kind": "holiday"}).status_code == 200


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("working_hours", "17:30-08:30", "GRIDAPI_WORKING_HOURS: working period 17:30-08:30"),
        ("supervision_red_hours", float("inf"), "GRIDAPI_SUPERVISION_RED_HOURS=inf"),
        ("supervision_yellow_hours", float("nan"), "GRIDAPI_SUPERVISION_YELLOW_HOURS=nan"),
        ("supervision_yellow_hours", 1e9, "GRIDAPI_SUPERVISION_YELLOW_HOURS=1000000000.0"),
    ],
)
def test_working_hours_and_thresholds_that_cannot_be_stop_start_up(settings, name, value, message):
    """A period ending before it starts made every report a 500 and the worker die; an
    infinite threshold made the supervision job overflow and the run stop."""
    from dataclasses import replace

    with pytest.raises(ValueError, match=re.escape(message)):
        replace(settings, **{name: value})


def test_each_year_says_whether_it_is_the_state_councils_arrangement(
    client, accounts, engine, factory
):
    """The seed's 2027 is the fixed-date holidays only (the notice was not out): nothing
    said so, and a case filed before the Spring Festival fell due on its holidays. A year
    now says whether it is official; a provisional or missing one deadlines may reach is
    warned of, and an import or an admin makes it official."""
    body = client.get("/api/v1/calendar").get_json()
    years = {y["year"]: y["status"] for y in body["years"]}
    assert years[2026] == "official" and years[2027] == "provisional"
    one = client.get("/api/v1/calendar?year=2028").get_json()["years"]
    assert [(y["year"], y["status"], y["updated_at"]) for y in one] == [(2028, "missing", None)]
    # What today's deadlines may reach decides the warning.
    with Session(engine) as session:
        assert calendar_problem(session, date(2026, 6, 1)) is None
        warned = calendar_problem(session, date(2026, 11, 30))
        assert warned is not None and "2027 is provisional" in warned
        assert "2028" in calendar_problem(session, date(2027, 12, 1))
    # An import of a year is official unless it says otherwise; its source is kept.
    notice = {
        "version": 1,
        "source": "国务院办公厅关于2027年部分节假日安排的通知",
        "years": {"2027": {"holidays": ["2027-01-01", "2027-02-08"], "workdays": []}},
    }
    assert client.post("/api/v1/calendar/import", json=notice).status_code == 200
    (year,) = client.get("/api/v1/calendar?year=2027").get_json()["years"]
    assert (year["status"], year["source"]) == ("official", notice["source"])
    with Session(engine) as session:
        assert calendar_problem(session, date(2026, 11, 30)) is None
    provisional = {"version": 1, "years": {"2028": {"status": "provisional", "holidays": []}}}
    assert client.post("/api/v1/calendar/import", json=provisional).status_code == 200
    assert client.get("/api/v1/calendar?year=2028").get_json()["years"][0]["status"] == (
        "provisional"
    )
    bad = {"version": 1, "years": {"2029": {"status": "maybe", "holidays": []}}}
    r = client.post("/api/v1/calendar/import", json=bad)
    assert r.status_code == 422 and "status must be one of" in r.get_json()["message"]
    # An admin marks a year set day by day; others may not.
    factory.regions()
    r = client.put("/api/v1/calendar/years/2028", json={"status": "official", "source": "通知"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["status"], r.get_json()["source"]) == ("official", "通知")
    county = accounts.client("county1", "county_centre", scope_region="320508000000")
    assert county.put(
        "/api/v1/calendar/years/2028", json={"status": "provisional"}
    ).status_code == (403)
    for path, body_ in (("/years/1999", {"status": "official"}), ("/years/2028", {"status": "x"})):
        r = client.put(f"/api/v1/calendar{path}", json=body_)
        assert r.status_code == 422, r.get_json()
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions.count("calendar.year") == 1


def test_serve_and_the_worker_warn_of_a_calendar_that_is_not_official(
    client, database_url, settings, engine, caplog
):
    from gridapi.serving import calendar_warning

    with engine.begin() as conn:
        conn.execute(text("UPDATE calendar_years SET status = 'official'"))
        conn.execute(text("DELETE FROM calendar_years WHERE year > 2027"))
    today = datetime.now(SHANGHAI).date()
    for year in {today.year, today.year + 1}:
        client.put(f"/api/v1/calendar/years/{year}", json={"status": "official"})
    assert calendar_warning(engine) is None
    client.put(f"/api/v1/calendar/years/{today.year}", json={"status": "provisional"})
    warning = calendar_warning(engine)
    assert warning is not None and f"{today.year} is provisional" in warning
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    with caplog.at_level("WARNING", logger="gridapi.worker"):
        result = CliRunner().invoke(main, ["worker", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert f"{today.year} is provisional" in caplog.text


def test_a_looping_worker_warns_of_the_calendar_again_each_day(
    app, settings, engine, caplog, monkeypatch
):
    """The worker warned once, when it started: one running since before a year that is not
    official came within reach of deadlines (a worker started in October, the provisional
    next year within 60 days from November) never said so."""
    import threading
    from datetime import UTC

    from gridapi.services import jobs

    with engine.begin() as conn:
        conn.execute(text("DELETE FROM calendar_years"))  # every year missing: no status,
        conn.execute(text("DELETE FROM calendar_days"))  # no day set
    monkeypatch.setattr(
        jobs, "CALENDAR_EVERY_SECONDS", 0.0, raising=False
    )  # "a day" is every round here
    stop = threading.Event()
    rounds = []

    def clock() -> datetime:
        rounds.append(1)
        if len(rounds) == 3:  # the third look at the clock: the second round has begun
            stop.set()
        return datetime.now(UTC)

    options = jobs.JobOptions.from_settings(settings)
    with caplog.at_level("WARNING", logger="gridapi.worker"):
        jobs.run_forever(
            app.extensions["gridapi"].sessions, options, interval=0, stop=stop, clock=clock
        )
    warned = [r for r in caplog.records if r.name == "gridapi.worker"]
    assert len(warned) == 2, caplog.text
    year = datetime.now(SHANGHAI).year
    assert all(f"{year} is missing" in r.getMessage() for r in warned)


# ---- two admins at once ------------------------------------------------------------------------
# Both looked before either committed; on PostgreSQL the second insert waited in the primary
# key for the first, then answered the generic 409 where the same request sent a moment later
# answered 200. The second now writes as when it came second: it replaces the first's values.


def _audited(client, action: str) -> list[dict]:  # type: ignore[no-untyped-def]
    r = client.get("/api/v1/audit")
    assert r.status_code == 200, r.get_json()
    return [e for e in r.get_json()["items"] if e["action"] == action]


def test_a_day_set_meanwhile_by_another_admin_is_set_again_as_after_it(client, app, engine):
    from gridapi.models import CalendarDay
    from gridapi.services import calendar as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    sent = {"kind": "holiday", "name": "端午节"}
    with st.sessions() as session:  # another admin's day, inserted, not committed
        svc.set_day(session, date(2030, 6, 10), "holiday", "端午")
        r = send_while_uncommitted(
            engine,
            session,
            "calendar_days",
            lambda: client.put("/api/v1/calendar/2030-06-10", json=sent),
        )
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"date": "2030-06-10", **sent, **NOTHING_MOVED}
    with st.sessions() as session:
        rows = session.execute(
            select(CalendarDay.kind, CalendarDay.name).where(CalendarDay.day == date(2030, 6, 10))
        ).all()
        assert [tuple(row) for row in rows] == [("holiday", "端午节")]
    [entry] = _audited(client, "calendar.set")
    assert (entry["object_id"], entry["summary"]) == ("2030-06-10", sent)


def test_a_year_set_meanwhile_by_another_admin_is_set_again_as_after_it(client, app, engine):
    from gridapi.models import CalendarYear
    from gridapi.services import calendar as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    sent = {"status": "official", "source": "国务院办公厅通知"}
    with st.sessions() as session:  # another admin's year, inserted, not committed
        svc.set_year(session, 2031, "provisional", "固定节日")
        r = send_while_uncommitted(
            engine,
            session,
            "calendar_years",
            lambda: client.put("/api/v1/calendar/years/2031", json=sent),
        )
    assert r.status_code == 200, r.get_json()
    assert {k: r.get_json()[k] for k in ("year", "status", "source")} == {"year": 2031, **sent}
    with st.sessions() as session:
        rows = session.execute(
            select(CalendarYear.status, CalendarYear.source).where(CalendarYear.year == 2031)
        ).all()
        assert [tuple(row) for row in rows] == [("official", "国务院办公厅通知")]
    [entry] = _audited(client, "calendar.year")
    assert (entry["object_id"], entry["summary"]) == ("2031", {"status": "official"})


def test_a_year_imported_meanwhile_by_another_admin_is_replaced_as_after_it(
    client, app, engine, settings
):
    from gridapi.models import CalendarYear
    from gridapi.services import calendar as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    theirs = {
        "version": 1,
        "years": {"2030": {"status": "provisional", "holidays": ["2030-01-01"]}},
    }
    ours = {
        "version": 1,
        "source": "国办发明电",
        "years": {"2030": {"holidays": ["2030-01-01", "2030-02-04"], "workdays": ["2030-02-09"]}},
    }
    with st.sessions() as session:  # another admin's import, written, not committed
        svc.import_days(session, theirs, settings.working_hours, settings.timezone)
        r = send_while_uncommitted(
            engine,
            session,
            "calendar_days",
            lambda: client.post("/api/v1/calendar/import", json=ours),
        )
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"years": 1, "holidays": 2, "workdays": 1, **NOTHING_MOVED}
    assert _dates(client, 2030) == ["2030-01-01", "2030-02-04", "2030-02-09"]
    with st.sessions() as session:
        rows = session.execute(
            select(CalendarYear.status, CalendarYear.source).where(CalendarYear.year == 2030)
        ).all()
        assert [tuple(row) for row in rows] == [("official", "国办发明电")]
    [entry] = _audited(client, "calendar.import")
    assert entry["summary"] == {"years": 1, "holidays": 2, "workdays": 1}


def test_a_day_removed_meanwhile_is_set_or_not_found_as_after_it(client, app, engine):
    """A day set, or removed, while another admin removed it: the request read the row
    before the other's delete was committed, then changed or deleted a row that was gone.
    It answers as when it came second now: set anew (200), or 404."""
    from gridapi.models import CalendarDay
    from gridapi.services import calendar as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    sent = {"kind": "holiday", "name": "国庆节"}
    requests = {
        "2026-10-01": lambda: client.put("/api/v1/calendar/2026-10-01", json=sent),
        "2026-10-02": lambda: client.delete("/api/v1/calendar/2026-10-02"),
    }
    answers = {}
    for day, send in requests.items():
        with st.sessions() as session:  # another admin's removal, not committed
            svc.remove_day(session, date.fromisoformat(day))
            answers[day] = send_while_uncommitted(
                engine, session, "calendar_days", send, waits_in=""
            )
    assert answers["2026-10-01"].status_code == 200, answers["2026-10-01"].get_json()
    assert answers["2026-10-01"].get_json() == {"date": "2026-10-01", **sent, **NOTHING_MOVED}
    assert answers["2026-10-02"].status_code == 404, answers["2026-10-02"].get_json()
    assert answers["2026-10-02"].get_json()["message"] == "The day is not in the calendar."
    with st.sessions() as session:
        rows = session.execute(
            select(CalendarDay.day, CalendarDay.name).where(
                CalendarDay.day.in_([date(2026, 10, 1), date(2026, 10, 2)])
            )
        ).all()
        assert [tuple(row) for row in rows] == [(date(2026, 10, 1), "国庆节")]
    assert [e["object_id"] for e in _audited(client, "calendar.set")] == ["2026-10-01"]
    assert _audited(client, "calendar.remove") == []


def test_the_command_refuses_a_source_with_a_nul_and_imports_nothing(
    client, database_url, settings, tmp_path
):
    """`gridapi calendar import` of a file whose source held a NUL ended in a traceback on
    PostgreSQL (which cannot store it) and stored the NUL on SQLite; the API refused it."""
    body = {
        "version": 1,
        "source": "国务院办公厅通知\u0000",
        "years": {"2029": {"holidays": ["2029-10-01"]}},
    }
    path = tmp_path / "2029.json"
    path.write_text(json.dumps(body))
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(main, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, no trace
    assert "source" in result.output and "NUL" in result.output
    assert _dates(client, 2029) == []
    assert client.get("/api/v1/calendar?year=2029").get_json()["years"][0]["status"] == "missing"
    r = client.post("/api/v1/calendar/import", json=body)  # the API answers alike
    assert r.status_code == 422 and "source" in r.get_json()["errors"]["json"]


def test_a_calendar_read_before_an_edit_is_not_kept_after_it(client, app):
    """A request that read the days just before an admin's edit committed kept them in the
    process's cache after the edit had emptied it: deadlines went on being counted without
    the new holiday for up to GRIDAPI_CALENDAR_CACHE_SECONDS."""
    from sqlalchemy import event

    from gridapi.db import sqlite_write_intent

    st = app.extensions["gridapi"]
    holiday = date(2030, 6, 12)  # a Wednesday
    edited: list[int] = []

    def edit_once_read(orm_execute_state):  # type: ignore[no-untyped-def]
        # The request's read of the days has its rows; the edit commits before it stores them.
        rows = orm_execute_state.invoke_statement().freeze()
        r = client.put(f"/api/v1/calendar/{holiday}", json={"kind": "holiday", "name": "端午节"})
        edited.append(r.status_code)
        return rows()

    token = sqlite_write_intent.set(False)  # a plain read: the edit may commit meanwhile
    try:
        with st.sessions() as session:
            event.listen(session, "do_orm_execute", edit_once_read)
            assert st.calendar(session).is_working_day(holiday)  # read before the edit
            event.remove(session, "do_orm_execute", edit_once_read)
    finally:
        sqlite_write_intent.reset(token)
    assert edited == [200]
    with st.sessions() as session:
        assert not st.calendar(session).is_working_day(holiday)


def test_an_import_refuses_a_source_too_long_as_a_year_does(
    client, database_url, settings, tmp_path
):
    """PUT /calendar/years/<year> refused a source of more than 2,000 characters; an import
    (the API's or the command's) cut it there and kept the notice without its end."""
    source = "国务院办公厅关于2029年部分节假日安排的通知 " + "x" * 2000
    r = client.put("/api/v1/calendar/years/2029", json={"status": "official", "source": source})
    assert r.status_code == 422 and "source" in r.get_json()["errors"]["json"]
    body = {"version": 1, "source": source, "years": {"2029": {"holidays": ["2029-10-01"]}}}
    r = client.post("/api/v1/calendar/import", json=body)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {"json": {"source": ["Longer than maximum length 2000."]}}
    path = tmp_path / "2029.json"
    path.write_text(json.dumps(body))
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(main, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, no trace
    assert "source" in result.output and "2000" in result.output
    assert _dates(client, 2029) == []
    assert client.get("/api/v1/calendar?year=2029").get_json()["years"][0]["status"] == "missing"
    body["source"] = source[:2000]  # at the limit: taken whole
    assert client.post("/api/v1/calendar/import", json=body).status_code == 200
    assert (
        client.get("/api/v1/calendar?year=2029").get_json()["years"][0]["source"] == source[:2000]
    )


def test_a_year_set_day_by_day_is_not_missing(client, engine):
    """A year whose holidays and 调休 days were all set one by one showed as `missing`, no
    arrangement at all, as if deadlines ignored them: it is provisional until marked."""
    days = {"2031-10-01": "holiday", "2031-10-02": "holiday", "2031-09-28": "workday"}
    for day, kind in days.items():
        assert client.put(f"/api/v1/calendar/{day}", json={"kind": kind}).status_code == 200
    (year,) = client.get("/api/v1/calendar?year=2031").get_json()["years"]
    assert (year["year"], year["status"], year["source"]) == (2031, "provisional", "")
    assert year["updated_at"] is not None
    listed = {y["year"]: y["status"] for y in client.get("/api/v1/calendar").get_json()["years"]}
    assert listed[2031] == "provisional"
    with Session(engine) as session:
        warned = calendar_problem(session, date(2030, 12, 1))
        assert warned is not None and "2031 is provisional" in warned
    # Marked official, it is; every day removed, it has no arrangement again.
    r = client.put("/api/v1/calendar/years/2031", json={"status": "official"})
    assert r.status_code == 200 and r.get_json()["status"] == "official"
    assert client.get("/api/v1/calendar?year=2032").get_json()["years"][0]["status"] == "missing"
    assert client.put("/api/v1/calendar/2032-01-01", json={"kind": "holiday"}).status_code == 200
    assert client.delete("/api/v1/calendar/2032-01-01").status_code == 204
    assert client.get("/api/v1/calendar?year=2032").get_json()["years"][0]["status"] == "missing"


def test_a_days_name_is_cleaned_as_a_category_label_is(client, session):
    """A day's name kept the blanks and the characters that show nothing (a zero-width
    space, a byte-order mark) around it, which a category's labels are cleaned of; a NUL
    is still refused, not stripped off with them."""
    from gridapi.models import CalendarDay

    for sent, kept in (("\u200b春节\ufeff ", "春节"), ("\u200b\u2060", ""), (" 国庆节", "国庆节")):
        r = client.put("/api/v1/calendar/2030-10-01", json={"kind": "holiday", "name": sent})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["name"] == kept
        session.rollback()
        assert session.get(CalendarDay, date(2030, 10, 1)).name == kept
    r = client.put("/api/v1/calendar/2030-10-02", json={"kind": "holiday", "name": "春节\u0000"})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {
        "json": {"name": ["Must not contain NUL characters (U+0000)."]}
    }
    items = client.get("/api/v1/calendar?year=2030").get_json()["items"]
    assert [(d["date"], d["name"]) for d in items] == [("2030-10-01", "国庆节")]
