"""Indicators over HTTP: hand-computed figures for every indicator (a case filed before the
period and closed in it, one overdue across the month boundary, rework, an extension, a
holiday, 调休), roll-up, breakdowns, trends, scope, and equality with a replay of the
timelines."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from gridapi.auth import Principal
from gridapi.models import Case, CaseEvent
from gridapi.scope import Scope
from gridapi.security.permissions import PERMISSIONS
from gridapi.services import cases as case_svc
from gridapi.services import indicators as svc

from ..factories import COMMUNITY_A, COUNTY, LAT0, LON0, STEP, TOWNSHIP, rectangle

SH = ZoneInfo("Asia/Shanghai")
TOWNSHIP_2 = "320508002000"
COMMUNITY_2 = "320508002001"


def at(month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=SH)


# The steps a second admin takes: the handler (the first, dispatched to itself) neither
# verifies its own work nor approves the time it asked for.
CHECKS = frozenset({"approve_extension", "deny_extension", "verify_pass", "verify_fail"})


class Timeline:
    """Moves cases through the real workflow services at chosen moments (a fixed clock)."""

    def __init__(self, app: Any, user_id: int, checker_id: int) -> None:
        self.state = app.extensions["gridapi"]
        self.principal, self.checker = (
            Principal(
                kind="user",
                id=uid,
                name=name,
                role="admin",
                rank=100,
                permissions=frozenset(PERMISSIONS),
                scope=Scope.everything(),
            )
            for uid, name in ((user_id, "admin"), (checker_id, "checker"))
        )

    def report(self, when: datetime, col: float = 0.5, category: str = "0202", **extra: Any) -> int:
        lon, lat = LON0 + col * STEP, LAT0 + 0.5 * STEP
        data = {
            "category": category,
            "description": "占道广告牌",
            "location": {"type": "Point", "coordinates": [lon, lat]},
            **extra,
        }
        with self.state.sessions.begin() as session:
            reported = case_svc.report(
                session,
                data,
                principal=self.principal,
                snapshot=self.state.routing.snapshot(),
                calendar=self.state.calendar(session),
                now=when.astimezone(UTC),
            )
            return reported.case.id

    def act(self, case_id: int, action: str, when: datetime, **data: Any) -> None:
        with self.state.sessions.begin() as session:
            case_svc.transition(
                session,
                case_id,
                {"action": action, "comment": data.pop("comment", "说明"), **data},
                caller=case_svc.Caller(self.checker if action in CHECKS else self.principal),
                calendar=self.state.calendar(session),
                now=when.astimezone(UTC),
                if_match="*",
            )

    def rate(self, case_id: int, score: int, when: datetime) -> None:
        with self.state.sessions.begin() as session:
            case_svc.rate(
                session, case_id, case_svc.Caller(self.principal), score, "", when.astimezone(UTC)
            )

    def filed(self, when: datetime, **report: Any) -> int:
        case_id = self.report(when, **report)
        self.act(case_id, "accept", when)
        self.act(case_id, "file", when)
        return case_id

    def dispatch(self, case_id: int, when: datetime) -> None:
        self.act(case_id, "dispatch", when, assignee_id=self.principal.id)
        self.act(case_id, "sign", when)

    def finish(self, case_id: int, feedback: datetime, closed: datetime) -> None:
        self.act(case_id, "feedback", feedback)
        self.act(case_id, "verify_pass", closed)
        self.act(case_id, "close", closed)


@pytest.fixture
def world(factory, client):  # type: ignore[no-untyped-def]
    """The township of the factories with its grids, and a second township next to it."""
    factory.regions()
    factory.grid_version()
    rows = [
        {"code": TOWNSHIP_2, "name": "观前街道", "boundary": rectangle(4, 0, 8, 1)},
        {"code": COMMUNITY_2, "name": "北局社区", "boundary": rectangle(4, 0, 8, 1)},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()


@pytest.fixture
def cases(app, accounts, world):  # type: ignore[no-untyped-def]
    """The worked example of docs/indicators.md (category 0202: 3 working days to handle).

    A: filed Thu 26 Feb 09:00, due Mon 2 Mar 17:30 (Sat 28 Feb is a 调休 workday), feedback
       and closed 2 Mar, rated 5: closed in March, filed before it; 28 working hours.
    B: filed Tue 24 Mar 10:00, due Fri 27 Mar 17:30, closed Thu 2 Apr 10:00: overdue across
       the month boundary; 52.5 working hours.
    C: filed Mon 2 Mar 09:00, due Thu 5 Mar 17:30, extended 2 days to Mon 9 Mar 17:30, fails
       verification once (rework), closed 9 Mar 10:00, rated 3; 38.5 working hours.
    D: filed Tue 31 Mar 14:00, due Fri 3 Apr 17:30, still open.
    E: filed Thu 2 Apr 09:00, due Wed 8 Apr 17:30 (4-6 Apr are holidays), closed Tue 7 Apr
       10:00; 16 working hours.
    F: filed Tue 10 Mar, cancelled the next day.
    G: in the second township: filed Tue 3 Mar 09:00, handled on the spot, closed 15:00,
       rated 4; 4.5 working hours.
    """
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    ids: dict[str, int] = {}
    ids["A"] = a = t.filed(at(2, 26, 9))
    t.dispatch(a, at(2, 26, 10))
    t.finish(a, at(3, 2, 10), at(3, 2, 16))
    t.rate(a, 5, at(3, 3, 9))

    ids["B"] = b = t.filed(at(3, 24, 10))
    t.dispatch(b, at(3, 24, 11))
    t.finish(b, at(4, 2, 9), at(4, 2, 10))

    ids["C"] = c = t.filed(at(3, 2, 9))
    t.dispatch(c, at(3, 2, 10))
    t.act(c, "request_extension", at(3, 3, 9), amount=2, unit_of_time="days")
    t.act(c, "approve_extension", at(3, 3, 10))
    t.act(c, "feedback", at(3, 6, 10))
    t.act(c, "verify_fail", at(3, 6, 11))
    t.act(c, "sign", at(3, 6, 11, 30))
    t.finish(c, at(3, 9, 9), at(3, 9, 10))
    t.rate(c, 3, at(3, 10, 9))

    ids["D"] = t.filed(at(3, 31, 14))

    ids["E"] = e = t.filed(at(4, 2, 9))
    t.dispatch(e, at(4, 2, 10))
    t.finish(e, at(4, 7, 9), at(4, 7, 10))

    ids["F"] = f = t.filed(at(3, 10, 9))
    t.act(f, "cancel", at(3, 11, 9))

    ids["G"] = g = t.filed(at(3, 3, 9), col=4.5)
    t.finish(g, at(3, 3, 14), at(3, 3, 15))
    t.rate(g, 4, at(3, 4, 9))
    return ids


def get(client: Any, query: str, status: int = 200) -> dict[str, Any]:
    r = client.get(f"/api/v1/indicators?{query}")
    assert r.status_code == status, r.get_json()
    return r.get_json()


def score(rates: dict[str, float | None]) -> float:
    """The default composite score, from the exact rates (docs/indicators.md)."""
    weights = svc.parse_weights(svc.DEFAULT_WEIGHTS)
    total = weight = 0.0
    for name, w in weights.items():
        value = rates.get(name)
        if value is None:
            continue
        total += w * (1 - value if name in ("rework_rate", "extension_rate") else value)
        weight += w
    return round(100 * total / weight, 2)


MARCH_TOWNSHIP = {
    "filed": 4,  # B, C, D, F (A was filed in February; G is in the other township)
    "due": 3,  # A, B, C (D is due in April; F is cancelled)
    "due_closed": 2,  # A, C (B closed in April)
    "closed_on_time": 2,
    "closure_rate": 0.6667,
    "on_time_closure_rate": 0.6667,
    "handled": 2,  # A and C gave feedback in March after a dispatch
    "handled_on_time": 2,
    "on_time_handling_rate": 1.0,
    "closed": 2,
    "reworked": 1,  # C
    "rework_rate": 0.5,
    "extended": 1,  # C
    "extension_rate": 0.3333,
    "overdue_open": 1,  # B at 1 April 00:00
    "closed_late": 0,
    "avg_handling_hours": 33.25,  # (28 + 38.5) / 2
    "median_handling_hours": 33.25,
    "rated": 2,
    "satisfaction": 4.0,
    "satisfaction_rate": 0.5,
    "score": score(
        {
            "closure_rate": 2 / 3,
            "on_time_closure_rate": 2 / 3,
            "on_time_handling_rate": 1.0,
            "rework_rate": 0.5,
            "satisfaction_rate": 0.5,
        }
    ),
}


def test_every_indicator_of_a_month_matches_the_hand_computed_figures(client, cases):
    body = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01")
    assert body["region"] == {"code": TOWNSHIP, "name": "平江街道", "level": "township"}
    assert body["from"] == "2026-03-01" and body["to"] == "2026-04-01"
    assert body["indicators"] == MARCH_TOWNSHIP


def test_the_overdue_case_carries_over_into_the_next_month(client, cases):
    body = get(client, f"region={TOWNSHIP}&from=2026-04-01&to=2026-05-01")
    got = body["indicators"]
    assert got["filed"] == 1  # E
    assert got["due"] == 3  # B carried over, D, E (due 8 April: the holidays moved it)
    assert got["due_closed"] == 2 and got["closed_on_time"] == 1  # B late, E on time
    assert got["closed"] == 2 and got["closed_late"] == 1
    assert got["handled"] == 2 and got["handled_on_time"] == 1
    assert got["overdue_open"] == 1  # D
    assert got["avg_handling_hours"] == 34.25  # (52.5 + 16) / 2
    assert got["median_handling_hours"] == 34.25
    assert got["rated"] == 0 and got["satisfaction"] is None
    assert got["satisfaction_rate"] is None


def test_stored_handling_hours_count_only_working_time(app, cases):
    with app.extensions["gridapi"].sessions() as s:
        rows = dict(s.execute(select(Case.id, Case.handling_hours)).all())
    hours = {name: rows[case_id] for name, case_id in cases.items()}
    assert hours == {
        "A": 28.0,  # Thu 7 + Fri 7.5 + Sat (调休) 7.5 + Mon 6
        "B": 52.5,
        "C": 38.5,
        "D": None,
        "E": 16.0,  # Thu 7 + Fri 7.5 + (holidays) + Tue 1.5
        "F": None,
        "G": 4.5,
    }


def test_a_county_is_the_sum_of_its_townships(client, cases):
    query = "from=2026-03-01&to=2026-04-01"
    county = get(client, f"region={COUNTY}&{query}")["indicators"]
    first = get(client, f"region={TOWNSHIP}&{query}")["indicators"]
    second = get(client, f"region={TOWNSHIP_2}&{query}")["indicators"]
    counts = [k for k, v in county.items() if isinstance(v, int) and not isinstance(v, bool)]
    assert "filed" in counts and "overdue_open" in counts
    for name in counts:
        assert county[name] == first[name] + second[name], name
    assert second["filed"] == 1 and second["closed"] == 1 and second["handled"] == 0
    # Rates are recomputed from the summed counts, not averaged.
    assert county["closure_rate"] == round(3 / 4, 4)
    assert county["avg_handling_hours"] == round((28 + 38.5 + 4.5) / 3, 2)
    assert county["median_handling_hours"] == 28.0
    assert county["satisfaction"] == 4.0  # (5 + 3 + 4) / 3


def test_breakdowns_by_category_source_and_unit(client, cases):
    query = f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01"
    by_category = get(client, f"{query}&by=category")
    assert [i["key"] for i in by_category["items"]] == ["0202"]
    assert by_category["items"][0]["name"] == "违章张贴悬挂广告牌匾"
    assert by_category["items"][0]["indicators"] == MARCH_TOWNSHIP
    by_source = get(client, f"{query}&by=source")
    assert [(i["key"], i["indicators"]["filed"]) for i in by_source["items"]] == [("phone", 4)]
    by_unit = get(client, f"{query}&by=unit")
    assert [(i["key"], i["name"]) for i in by_unit["items"]] == [(TOWNSHIP, "平江街道")]
    unit = get(client, f"unit={TOWNSHIP}&from=2026-03-01&to=2026-04-01")
    assert unit["unit"]["code"] == TOWNSHIP
    assert unit["indicators"]["filed"] == 4  # every case was filed with the township office


def test_trends_by_month_week_and_day_split_the_period(client, cases):
    months = get(client, f"region={TOWNSHIP}&from=2026-02-01&to=2026-05-01&by=month")
    assert [i["key"] for i in months["items"]] == ["2026-02", "2026-03", "2026-04"]
    assert months["items"][1]["indicators"] == MARCH_TOWNSHIP
    assert [i["indicators"]["filed"] for i in months["items"]] == [1, 4, 1]
    weeks = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01&by=week")
    keys = [i["key"] for i in weeks["items"]]
    assert keys[:3] == ["2026-03-01", "2026-03-02", "2026-03-09"]  # Sunday, then Mondays
    assert weeks["items"][0]["to"] == "2026-03-02"
    assert sum(i["indicators"]["filed"] for i in weeks["items"]) == 4
    days = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-03-08&by=day")
    assert len(days["items"]) == 7
    assert [i["indicators"]["closed"] for i in days["items"]][:2] == [0, 1]  # A on 2 March


def test_bad_queries_are_422(client, world):
    assert "region" in get(client, "from=2026-03-01&to=2026-04-01", 422)["errors"]["query"]
    assert (
        "to"
        in get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-03-01", 422)["errors"]["query"]
    )
    get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01&by=year", 422)
    get(client, f"region={TOWNSHIP}&from=2020-01-01&to=2026-01-01&by=day", 422)
    get(client, f"region={TOWNSHIP}&from=2026-13-01&to=2027-01-01", 422)
    get(client, "region=32050800100&from=2026-03-01&to=2026-04-01", 422)
    get(client, "region=320508009000&from=2026-03-01&to=2026-04-01", 404)


def test_scope_limits_who_reads_which_region(client, accounts, cases):
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    query = "from=2026-03-01&to=2026-04-01"
    assert get(office, f"region={TOWNSHIP}&{query}")["indicators"]["filed"] == 4
    # Another township and the county above answer as if they did not exist.
    other = get(office, f"region={TOWNSHIP_2}&{query}", 404)
    assert get(office, f"region=320508009000&{query}", 404) == other
    get(office, f"region={COUNTY}&{query}", 404)
    get(office, f"unit={TOWNSHIP_2}&{query}", 404)
    county = accounts.client("county", "county_centre", scope_region=COUNTY)
    assert get(county, f"region={COUNTY}&{query}")["indicators"]["filed"] == 5
    worker = accounts.client("worker", "grid_worker", grids=[TOWNSHIP[:9] + "001001"])
    get(worker, f"region={TOWNSHIP}&{query}", 403)


def _replay(session: Any, calendar: Any, start: datetime, end: datetime) -> dict[str, int]:
    """Count every indicator by replaying each case's timeline, as docs/indicators.md says."""
    facts: dict[int, dict[str, Any]] = {}
    for e in session.scalars(select(CaseEvent).order_by(CaseEvent.case_id, CaseEvent.seq)):
        f = facts.setdefault(
            e.case_id,
            {
                "filed": None,
                "due": None,
                "dispatched": False,
                "feedback": None,
                "closed": None,
                "rework": 0,
                "extensions": 0,
                "rating": None,
                "status": None,
            },
        )
        f["status"] = e.to_status
        if e.action == "file":
            f["filed"] = e.at
        if "handle_due_at" in e.data:
            f["due"] = datetime.fromisoformat(e.data["handle_due_at"])
        if e.action == "dispatch" and e.to_status == "dispatched":
            f["dispatched"] = True
        if e.action in ("return", "escalate", "reopen"):
            f["dispatched"] = False  # the leg ended: the next dispatch starts one
        if e.action == "feedback":
            f["feedback"] = e.at
        if e.action == "close":
            f["closed"] = e.at
        if e.action == "reopen":
            f["closed"] = None
            f["feedback"] = None  # a new life: not fed back until its own feedback
            f["rating"] = None  # the rating judged the closure the reopen undid
        f["rework"] += e.action == "verify_fail"
        f["extensions"] += e.action == "approve_extension"
        if e.action == "rate":
            f["rating"] = e.data["score"]
    n = {name: 0 for name in svc.COUNTS}
    hours = 0.0
    for f in facts.values():
        if f["filed"] is None:
            continue
        live, due_at, closed, feedback = (
            f["status"] != "cancelled",
            f["due"],
            f["closed"],
            f["feedback"],
        )
        in_period = lambda t: t is not None and start <= t < end  # noqa: E731
        is_due = live and (
            in_period(due_at) or (due_at < start and (closed is None or closed >= start))
        )
        is_closed = in_period(closed)
        n["filed"] += in_period(f["filed"])
        n["due"] += is_due
        n["due_closed"] += is_due and closed is not None and closed < end
        n["closed_on_time"] += is_due and closed is not None and closed < end and closed <= due_at
        handled = live and f["dispatched"] and in_period(feedback)
        n["handled"] += handled
        n["handled_on_time"] += handled and feedback <= due_at
        n["closed"] += is_closed
        n["reworked"] += is_closed and f["rework"] > 0
        n["extended"] += is_due and f["extensions"] > 0
        n["overdue_open"] += (
            live and f["filed"] < end and (closed is None or closed >= end) and due_at < end
        )
        n["closed_late"] += is_closed and closed > due_at
        rated = is_closed and f["rating"] is not None
        n["rated"] += rated
        n["satisfied"] += rated and f["rating"] >= 4
        n["satisfaction_sum"] += f["rating"] if rated else 0
        if is_closed:
            n["timed"] += 1
            hours += calendar.working_hours_between(f["filed"], closed)
    n["hours_sum"] = round(hours, 6)
    return n


@pytest.mark.parametrize("month", [2, 3, 4])
def test_the_sql_equals_a_replay_of_the_timelines(app, cases, month):
    st = app.extensions["gridapi"]
    start, end = at(month, 1, 0).astimezone(UTC), at(month + 1, 1, 0).astimezone(UTC)
    with st.sessions() as s:
        expected = _replay(s, st.calendar(s), start, end)
        period = svc.Period("m", start, end, end)
        got = svc.aggregate(s, [svc.located_in(COUNTY)], [period]).get((0,), {})
    got = {name: got.get(name, 0) for name in svc.COUNTS}
    got["hours_sum"] = round(got["hours_sum"], 6)
    assert got == expected
    assert expected["filed"] + expected["closed"] > 0


def test_a_rating_counts_for_its_own_closure_only(app, client, accounts, world):
    """A case rated 1, reopened and closed again counted the 1 for its new closure, and its
    reporter could not rate that one: the reopen clears it, the next rating counts."""
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    h = t.filed(at(5, 11, 9))
    t.dispatch(h, at(5, 11, 10))
    t.finish(h, at(5, 12, 10), at(5, 12, 16))
    t.rate(h, 1, at(5, 13, 9))
    t.act(h, "reopen", at(5, 13, 10), comment="问题复发")
    t.dispatch(h, at(5, 13, 11))
    t.finish(h, at(5, 14, 10), at(5, 14, 16))
    may = f"region={TOWNSHIP}&from=2026-05-01&to=2026-06-01"
    got = get(client, may)["indicators"]
    assert got["closed"] == 1
    assert (got["rated"], got["satisfaction"], got["satisfaction_rate"]) == (0, None, None)
    t.rate(h, 5, at(5, 15, 9))
    got = get(client, may)["indicators"]
    assert (got["rated"], got["satisfaction"], got["satisfaction_rate"]) == (1, 5.0, 1.0)
    st = app.extensions["gridapi"]
    start, end = at(5, 1, 0).astimezone(UTC), at(6, 1, 0).astimezone(UTC)
    with st.sessions() as s:
        expected = _replay(s, st.calendar(s), start, end)
        period = svc.Period("m", start, end, end)
        counted = svc.aggregate(s, [svc.located_in(COUNTY)], [period]).get((0,), {})
    assert (
        (counted["rated"], counted["satisfaction_sum"])
        == (1, 5)
        == (
            expected["rated"],
            expected["satisfaction_sum"],
        )
    )


def test_a_reopened_case_is_not_handled_until_it_is_fed_back_again(app, client, accounts, world):
    """A reopened case kept the feedback of the closure it undid: dispatched again, it
    counted as handled in the month of that feedback, and on time against the new deadline,
    before anybody reported back on it. The reopen ends the leg; its own feedback counts."""
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    h = t.filed(at(5, 11, 9))
    t.dispatch(h, at(5, 11, 10))
    t.finish(h, at(5, 12, 10), at(5, 12, 16))
    may = f"region={TOWNSHIP}&from=2026-05-01&to=2026-06-01"
    june = f"region={TOWNSHIP}&from=2026-06-01&to=2026-07-01"
    assert get(client, may)["indicators"]["handled"] == 1
    t.act(h, "reopen", at(6, 2, 10), comment="问题复发")
    t.dispatch(h, at(6, 2, 11))
    got = get(client, may)["indicators"]
    assert (got["handled"], got["handled_on_time"], got["on_time_handling_rate"]) == (0, 0, None)
    assert get(client, june)["indicators"]["handled"] == 0
    t.act(h, "feedback", at(6, 3, 10))
    got = get(client, june)["indicators"]
    assert (got["handled"], got["handled_on_time"]) == (1, 1)
    st = app.extensions["gridapi"]
    for month in (5, 6):
        start, end = at(month, 1, 0).astimezone(UTC), at(month + 1, 1, 0).astimezone(UTC)
        with st.sessions() as s:
            expected = _replay(s, st.calendar(s), start, end)
            period = svc.Period("m", start, end, end)
            counted = svc.aggregate(s, [svc.located_in(COUNTY)], [period]).get((0,), {})
        assert counted.get("handled", 0) == expected["handled"] == (month == 6)


@pytest.mark.engines("sqlite")
def test_the_migration_back_fills_the_handling_hours_of_closed_cases(app, engine, cases):
    from gridapi import migrations

    def stored() -> dict[int, float | None]:
        with app.extensions["gridapi"].sessions() as s:
            return dict(s.execute(select(Case.id, Case.handling_hours)).all())

    before = stored()
    engine.dispose()
    migrations.downgrade(engine, "0010")
    migrations.upgrade(engine)
    assert stored() == before
    assert before[cases["A"]] == 28.0 and before[cases["D"]] is None


def test_a_township_whose_end_is_planned_has_indicators_until_then(client, cases):
    """A township with a planned end (a merger next month: valid_to set, still valid today)
    answered 404 "No such region", as if it had ended already; a rename planned for later
    gave the new name already. It answers as what it is today."""
    from datetime import timedelta

    from gridapi import clock

    later = clock.today() + timedelta(days=30)
    r = client.patch(f"/api/v1/regions/{TOWNSHIP}", json={"valid_to": later.isoformat()})
    assert r.status_code == 200, r.get_json()
    body = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01")
    assert body["region"]["code"] == TOWNSHIP
    assert body["indicators"] == MARCH_TOWNSHIP


def test_a_merged_townships_past_months_still_answer(app, client, cases):
    """A township merged away last month (its period ended) answered 404 "No such region"
    for the months it existed, although the county centre must still read them: the region
    is looked up as it was in the period asked. A period after its end is still a 404."""
    from datetime import timedelta

    from sqlalchemy import update

    from gridapi import clock
    from gridapi.models import Region

    ended = clock.today().replace(day=1) - timedelta(days=1)
    with app.extensions["gridapi"].sessions.begin() as session:
        session.execute(update(Region).where(Region.code == TOWNSHIP).values(valid_to=ended))
    body = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01")
    assert body["region"] == {"code": TOWNSHIP, "name": "平江街道", "level": "township"}
    assert body["indicators"] == MARCH_TOWNSHIP
    body = get(client, f"unit={TOWNSHIP}&from=2026-03-01&to=2026-04-01")
    assert body["unit"]["code"] == TOWNSHIP
    body = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=2026-04-01&by=unit")
    names = {i["unit"]: i["name"] for i in body["items"] if i["department_id"] is None}
    assert names[TOWNSHIP] == "平江街道"  # its name then, not "" for a region gone today
    # A period reaching past its end still has its months; one wholly after it has not.
    get(client, f"region={TOWNSHIP}&from=2026-03-01&to={clock.today().isoformat()}")
    after = ended + timedelta(days=1)
    r = client.get(
        f"/api/v1/indicators?region={TOWNSHIP}&from={after.isoformat()}"
        f"&to={(after + timedelta(days=1)).isoformat()}"
    )
    assert r.status_code == 404, r.get_json()
    r = client.get(f"/api/v1/bulletins/{TOWNSHIP}/2026-03")
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["region"]["code"] == TOWNSHIP
    assert r.get_json()["total"] == MARCH_TOWNSHIP
    r = client.get(f"/api/v1/bulletins/{TOWNSHIP}/{clock.today().isoformat()[:7]}")
    assert r.status_code == 404, r.get_json()


# --- who counts which case, the period, the parameters ----------------------------------------

MAY_11 = "from=2026-05-11&to=2026-05-12"


def _filed_by_category(who: Any, region: str) -> tuple[int, dict[str, int]]:
    body = get(who, f"region={region}&{MAY_11}&by=category")
    items = {i["key"]: i["indicators"]["filed"] for i in body["items"]}
    assert sum(items.values()) == body["indicators"]["filed"]  # the parts sum to the total
    return body["indicators"]["filed"], items


def test_a_sensitive_case_counts_only_for_the_offices_over_its_holder(app, accounts, world):
    """A special-group case (5401, sensitive) the township files in community A answered
    the community officer 404, yet the officer's indicators showed its 5401 row with filed 1
    (DOMAIN §7: special-group matters are left out of the counts of all who may not read
    them). It counts for the offices over the unit holding it: the township's and the
    county's; the community's once handed down to it, when the officer reads it too."""
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    special = t.filed(at(5, 11, 9), category="5401")
    t.filed(at(5, 11, 10), category="0202")
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    county = accounts.client("county", "county_centre", scope_region=COUNTY)
    assert officer.get(f"/api/v1/cases/{special}").status_code == 404
    assert _filed_by_category(officer, COMMUNITY_A) == (1, {"0202": 1})
    for who in (office, county):
        assert _filed_by_category(who, COMMUNITY_A) == (2, {"0202": 1, "5401": 1})
    by_unit = get(office, f"region={COMMUNITY_A}&{MAY_11}&by=unit")
    assert [(i["key"], i["indicators"]["filed"]) for i in by_unit["items"]] == [(TOWNSHIP, 2)]
    # The bulletins agree: the officer's community total, the township's row for it.
    r = officer.get(f"/api/v1/bulletins/{COMMUNITY_A}/2026-05")
    assert r.status_code == 200 and r.get_json()["total"]["filed"] == 1, r.get_json()
    rows = office.get(f"/api/v1/bulletins/{TOWNSHIP}/2026-05").get_json()["items"]
    assert {i["code"]: i["indicators"]["filed"] for i in rows}[COMMUNITY_A] == 2
    # Handed down to the community: its officer is now an office over the unit holding it.
    t.act(special, "dispatch", at(5, 11, 11), unit=COMMUNITY_A)
    assert officer.get(f"/api/v1/cases/{special}").status_code == 200
    assert _filed_by_category(officer, COMMUNITY_A) == (2, {"0202": 1, "5401": 1})
    # A role that reads indicators but dispatches nothing is nobody's office: no sensitive
    # case counts for it, whatever its area.
    reader = case_svc.Caller(
        Principal(
            kind="user",
            id=0,
            name="analyst",
            role="analyst",
            rank=30,
            permissions=frozenset({"indicators:read", "cases:read"}),
            scope=Scope.of_region(COUNTY),
        )
    )
    st = app.extensions["gridapi"]
    args = {"region": COMMUNITY_A, "from": at(5, 11, 0).date(), "to": at(5, 12, 0).date()}
    with st.sessions() as session:
        body = svc.indicators(
            session, reader, args, weights={"closure_rate": 1.0}, tz=SH, now=datetime.now(UTC)
        )
    assert body["indicators"]["filed"] == 1


def test_a_period_that_has_not_begun_is_422_naming_from(client, world):
    """A period wholly in the future answered 200 with every open case overdue and a score
    of 0, while the bulletin of a month that has not begun was a 422."""
    from datetime import timedelta

    from gridapi import clock

    r = client.get(f"/api/v1/indicators?region={TOWNSHIP}&from=2030-01-01&to=2030-02-01")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["message"] == "The period has not begun."
    assert list(r.get_json()["errors"]) == ["query"]
    assert "begun" in r.get_json()["errors"]["query"]["from"][0]
    today = clock.today()
    tomorrow, after = today + timedelta(days=1), today + timedelta(days=2)
    get(client, f"region={TOWNSHIP}&from={tomorrow}&to={after}", 422)
    get(client, f"region={TOWNSHIP}&from={today}&to={tomorrow}")  # today so far
    get(client, f"region={TOWNSHIP}&from={today}&to={after}&by=day")  # reaching ahead


def test_an_unknown_region_unit_or_department_is_a_404_naming_it(client, accounts, world):
    """The 404s named nothing ({}): which of region, unit and department was it? Out of
    scope and unknown still look the same."""
    query = "from=2026-03-01&to=2026-04-01"
    for params, name in (
        (f"region=320508009000&{query}", "region"),
        (f"unit=320508009000&{query}", "unit"),
        (f"region={TOWNSHIP}&unit=320508009000&{query}", "unit"),
        (f"region={TOWNSHIP}&department=999999&{query}", "department"),
    ):
        body = get(client, params, 404)
        assert list(body["errors"]) == ["query"] and list(body["errors"]["query"]) == [name], (
            params,
            body,
        )
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    assert get(office, f"region={TOWNSHIP_2}&{query}", 404) == get(
        office, f"region=320508009000&{query}", 404
    )
    assert get(office, f"region={TOWNSHIP}&unit={TOWNSHIP_2}&{query}", 404) == get(
        office, f"region={TOWNSHIP}&unit=320508009000&{query}", 404
    )


def test_dates_are_yyyy_mm_dd_of_the_apis_years(client, world):
    """``from=20261101`` (the ISO basic form) and ``2026W45`` (an ISO week) were read as
    dates; every date of the API is YYYY-MM-DD, of the years 1900-2100 (as a month of the
    bulletin now: 9999-12 was "A number is too large." naming nothing)."""
    for day in ("20260301", "2026W10", "2026-3-1", "２０２６-03-01"):
        body = get(client, f"region={TOWNSHIP}&from={day}&to=2026-04-01", 422)
        assert list(body["errors"]["query"]) == ["from"], (day, body)
    body = get(client, f"region={TOWNSHIP}&from=2026-03-01&to=20260401", 422)
    assert list(body["errors"]["query"]) == ["to"]
    get(client, f"region={TOWNSHIP}&from=1900-01-01&to=1900-02-01")
    body = get(client, f"region={TOWNSHIP}&from=1899-12-01&to=1900-01-01", 422)
    assert "1900" in body["errors"]["query"]["from"][0]
    r = client.get(f"/api/v1/bulletins/{TOWNSHIP}/1900-01")
    assert r.status_code == 200, r.get_json()
    for month in ("1899-12", "9999-12"):
        r = client.get(f"/api/v1/bulletins/{TOWNSHIP}/{month}")
        assert r.status_code == 422, r.get_json()
        reason = "a month as YYYY-MM of the years 1900-2100, e.g. 2026-03"
        assert r.get_json()["errors"] == {"path": {"month": [reason]}}, month


def test_a_township_filters_by_a_county_department_it_dispatches_to(app, client, accounts, world):
    """A township office dispatches to the county's fire brigade (docs/cases.md), and its
    breakdown by unit showed the row '<township>/department:<id>', yet department=<id>
    answered 404 "No such department.". Any department it dispatches to is a filter (the
    counts still only of its region); another township's, or the city's, is a 404."""

    def department(code: str, region: str) -> int:
        body = {"code": code, "name": code, "region_code": region}
        r = client.post("/api/v1/departments", json=body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()["id"]

    brigade = department("fire", COUNTY)
    other = department("other", TOWNSHIP_2)
    city = department("city", "320500000000")
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    dispatched = t.filed(at(5, 11, 9))
    t.act(dispatched, "dispatch", at(5, 11, 10), department_id=brigade)
    t.filed(at(5, 11, 11))
    t.act(t.filed(at(5, 11, 12), col=4.5), "dispatch", at(5, 11, 13), department_id=brigade)
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    by_unit = get(office, f"region={TOWNSHIP}&{MAY_11}&by=unit")
    rows = {i["key"]: i["indicators"]["filed"] for i in by_unit["items"]}
    assert rows == {TOWNSHIP: 1, f"{TOWNSHIP}/department:{brigade}": 1}
    body = get(office, f"region={TOWNSHIP}&department={brigade}&{MAY_11}")
    assert body["department"] == {"id": brigade, "name": "fire"}
    assert body["indicators"]["filed"] == 1  # not the other township's case it also has
    for dept in (other, city):
        body = get(office, f"region={TOWNSHIP}&department={dept}&{MAY_11}", 404)
        assert list(body["errors"]["query"]) == ["department"]
    assert get(office, f"region={TOWNSHIP}&department={other}&{MAY_11}", 404) == get(
        office, f"region={TOWNSHIP}&department=999999&{MAY_11}", 404
    )


def test_the_month_so_far_holds_no_deadline_still_ahead_against_a_unit(app, accounts, world):
    """This month's bulletin counted as due a case whose deadline is next week: a township
    whose only case was due later scored 0 on closure and ranked last. A deadline after the
    cut-off (now) is not due yet, unless the case is closed already; once the month is over
    every deadline of it is."""
    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    waiting = t.filed(at(5, 11, 9), col=4.5)  # township 2: due Thu 14 May 17:30
    early = t.filed(at(5, 11, 9))  # township 1: due 14 May too, closed on 12 May
    t.dispatch(early, at(5, 11, 10))
    t.finish(early, at(5, 12, 9), at(5, 12, 10))
    st = app.extensions["gridapi"]
    weights = svc.parse_weights(svc.DEFAULT_WEIGHTS)

    def bulletin(now: datetime) -> dict[str, Any]:
        with st.sessions() as session:
            body = svc.bulletin(
                session,
                case_svc.Caller(t.principal),
                COUNTY,
                "2026-05",
                weights=weights,
                tz=SH,
                now=now.astimezone(UTC),
            )
        return {i["code"]: i for i in body["items"]}

    so_far = bulletin(at(5, 12, 12))
    second, first = so_far[TOWNSHIP_2], so_far[TOWNSHIP]
    assert (second["indicators"]["due"], second["indicators"]["closure_rate"]) == (0, None)
    assert second["indicators"]["overdue_open"] == 0
    assert (first["indicators"]["due"], first["indicators"]["due_closed"]) == (1, 1)
    assert first["indicators"]["on_time_closure_rate"] == 1.0
    assert first["rank"] == 1
    over = bulletin(at(6, 1, 9))
    assert (
        over[TOWNSHIP_2]["indicators"]["due"],
        over[TOWNSHIP_2]["indicators"]["closure_rate"],
    ) == (1, 0.0)
    assert over[TOWNSHIP_2]["indicators"]["overdue_open"] == 1
    assert over[TOWNSHIP]["indicators"]["due"] == 1
    with st.sessions() as session:
        assert session.get(Case, waiting).closed_at is None


def test_the_counts_read_the_covering_index_only(app, client, accounts, world, engine):
    """The sensitive cases' condition reads ``cases.sensitive``, which 0013's covering index
    did not hold: each case counted was fetched from the table again. Migration 0058 builds
    the index again with it, so the indicators of an office (the condition included) are an
    index-only scan on PostgreSQL; down, it is 0013's index again; SQLite's plain
    (county_code, filed_at) index stays as it is."""
    import json

    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from gridapi import migrations

    from ..statements import statements_sent

    def definition() -> str:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                query = "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_cases_indicators'"
            else:
                query = "SELECT sql FROM sqlite_master WHERE name = 'ix_cases_indicators'"
            return conn.execute(text(query)).scalar_one()

    t = Timeline(app, accounts.create("admin", "admin"), accounts.create("checker", "admin"))
    for hour in (9, 10, 11):
        t.filed(at(5, 11, hour), category="5401" if hour == 9 else "0202")
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    with statements_sent(
        engine, lambda s: "sum(CASE" in s and "cases.sensitive" in s, parameters=True
    ) as sent:
        get(office, f"region={TOWNSHIP}&{MAY_11}")
        get(office, f"region={TOWNSHIP}&{MAY_11}&by=category")
        assert office.get(f"/api/v1/bulletins/{TOWNSHIP}/2026-05").status_code == 200
    assert len(sent) >= 3
    now = definition()
    if engine.dialect.name == "postgresql":
        assert "sensitive" in now.split("INCLUDE", 1)[1]
        with engine.connect() as conn:
            # The planner's choice on a table of three rows is no measure: with the table
            # scans priced out, it reads the index alone only if the index holds every
            # column the query reads.
            conn.exec_driver_sql("SET enable_seqscan = off")
            conn.exec_driver_sql("SET enable_bitmapscan = off")
            for statement, parameters in sent:
                plan = json.dumps(
                    conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, parameters).scalar()
                )
                assert '"Index Only Scan"' in plan and "ix_cases_indicators" in plan, plan
                assert '"Index Scan"' not in plan, plan
    previous = ScriptDirectory.from_config(migrations.alembic_config()).get_revision("0058")
    engine.dispose()
    migrations.downgrade(engine, previous.down_revision)
    before = definition()
    migrations.upgrade(engine)
    assert definition() == now
    if engine.dialect.name == "postgresql":
        assert "sensitive" not in before and "responsible_region_code" in before
    else:
        assert (
            before
            == now
            == (
                "CREATE INDEX ix_cases_indicators ON cases (county_code, filed_at) "
                "WHERE filed_at IS NOT NULL"
            )
        )
