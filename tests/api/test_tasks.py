"""Tasks and campaigns: fan-out, the worker's steps, the office's, progress, overdue flags.

Every operation × role × scope is in test_authorization_matrix.py; out-of-scope ids answering
like random ones in test_scope_probing.py.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from sqlalchemy import select, text, update

from gridapi.cli import main
from gridapi.models import Task
from gridapi.services.calendar import working_calendar
from gridapi.services.cases import add_limit
from gridapi.services.jobs import run_jobs
from gridapi.services.tasks import flag_overdue_tasks

from ..factories import (
    CITY,
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    TOWNSHIP,
    collection,
    feature,
    rectangle,
)

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1, B2 = COMMUNITY_B + "001", COMMUNITY_B + "002"
SHANGHAI = ZoneInfo("Asia/Shanghai")
HAZARD_FORM = [
    {
        "code": "hazard",
        "label": "是否有隐患",
        "type": "single_choice",
        "values": ["有", "无"],
        "required": True,
    },
    {"code": "extinguishers", "label": "灭火器数量", "type": "number"},
]
SOON = {"amount": 3, "unit": "days"}


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def audit_rows(engine, action: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    """Return (object_id, actor_id, region_code, summary) of the audit rows of ``action``."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT object_id, actor_id, region_code, summary FROM audit_log "
                "WHERE action = :a ORDER BY id"
            ),
            {"a": action},
        )
        return [(o, a, r, json.loads(s) if isinstance(s, str) else s) for o, a, r, s in rows]


@pytest.fixture
def people(accounts, world) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """An office over the township, and a worker on each of A1, A2 and B1 (B2 has nobody)."""
    clients = {
        "office": accounts.client("office", "township_office", scope_region=TOWNSHIP),
        "worker1": accounts.client("worker1", "grid_worker", grids=[A1]),
        "worker2": accounts.client("worker2", "grid_worker", grids=[A2]),
        "worker3": accounts.client("worker3", "grid_worker", grids=[B1]),
    }
    return {**clients, "ids": accounts.ids}


def new_task(client, **body: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    data = {"title": "走访独居老人", **body}
    if "due_at" not in data:
        data.setdefault("due_in", SOON)
    return ok(client.post("/api/v1/tasks", json=data), 201)


def etag_of(client, task_id: int, kind: str = "tasks") -> str:  # type: ignore[no-untyped-def]
    return ok_response(client.get(f"/api/v1/{kind}/{task_id}")).headers["ETag"]


def ok_response(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response


def step(client, task_id: int, action: str, body: Any = None, *, etag: str | None = None):  # type: ignore[no-untyped-def]
    """Take ``action`` with the task's current ETag (read by ``client``) unless given."""
    if etag is None:
        etag = etag_of(client, task_id)
    return client.post(f"/api/v1/tasks/{task_id}/{action}", json=body, headers={"If-Match": etag})


def house(client, grid: str, use: str, address: str) -> int:  # type: ignore[no-untyped-def]
    return ok(
        client.post("/api/v1/houses", json={"address": address, "grid": grid, "use": use}), 201
    )["id"]


def campaign_tasks(client, campaign_id: int) -> dict[str, dict[str, Any]]:  # type: ignore[no-untyped-def]
    items = ok(client.get(f"/api/v1/tasks?campaign_id={campaign_id}"))["items"]
    return {t["grid"]["code"]: t for t in items}


# --- campaigns: fan-out -----------------------------------------------------------------------


def test_a_campaign_makes_a_task_per_grid_and_an_item_per_rented_house(client, people, engine):
    rented_a1 = [house(client, A1, "rented", f"平江路{n}号") for n in (1, 2)]
    house(client, A1, "self_occupied", "平江路3号")
    rented_a2 = house(client, A2, "rented", "平江路4号")
    rented_b1 = house(client, B1, "rented", "观前街5号")
    office = people["office"]

    made = ok(
        office.post(
            "/api/v1/campaigns",
            json={
                "title": "出租房屋消防安全大排查",
                "region": TOWNSHIP,
                "due_in": SOON,
                "result_schema": HAZARD_FORM,
                "item_scope": "houses",
                "item_uses": ["rented"],
            },
        ),
        201,
    )
    assert made["fan_out"] == {"tasks": 4, "assigned": 3, "items": 4}
    assert made["status"] == "active" and made["region"]["name"] == "平江街道"

    tasks = campaign_tasks(office, made["id"])
    assert sorted(tasks) == [A1, A2, B1, B2]
    ids = people["ids"]
    assert {g: (t["assignee"] or {}).get("id") for g, t in tasks.items()} == {
        A1: ids["worker1"],
        A2: ids["worker2"],
        B1: ids["worker3"],
        B2: None,  # nobody on B2's roster: the task waits for the grid
    }
    for task in tasks.values():
        assert task["status"] == "pending"
        assert task["due_at"] == made["due_at"]
        assert task["campaign"] == {"id": made["id"], "title": "出租房屋消防安全大排查"}
        assert [a["code"] for a in task["result_schema"]] == ["hazard", "extinguishers"]
    assert {g: t["item_count"] for g, t in tasks.items()} == {A1: 2, A2: 1, B1: 1, B2: 0}

    # The worker sees the houses to inspect: the two rented houses of A1, not the other one.
    a1 = ok(people["worker1"].get(f"/api/v1/tasks/{tasks[A1]['id']}"))
    assert [(i["house_id"], i["label"], i["status"]) for i in a1["items"]] == [
        (rented_a1[0], "平江路1号", "pending"),
        (rented_a1[1], "平江路2号", "pending"),
    ]
    a2 = ok(people["worker2"].get(f"/api/v1/tasks/{tasks[A2]['id']}"))
    assert [i["house_id"] for i in a2["items"]] == [rented_a2]
    b1 = ok(office.get(f"/api/v1/tasks/{tasks[B1]['id']}"))
    assert [i["house_id"] for i in b1["items"]] == [rented_b1]

    [(object_id, actor, region, summary)] = audit_rows(engine, "campaign.create")
    assert (object_id, actor, region) == (str(made["id"]), f"user:{ids['office']}", TOWNSHIP)
    assert summary["tasks"] == 4 and summary["items"] == 4 and summary["assigned"] == 3


def test_a_campaign_of_households_counts_the_households_of_rented_houses(client, people):
    rented = house(client, A1, "rented", "平江路8号")
    own = house(client, A1, "self_occupied", "平江路9号")
    for number, house_id in (("R1", rented), ("R2", rented), ("S1", own)):
        ok(client.post("/api/v1/households", json={"number": number, "house_id": house_id}), 201)
    made = ok(
        people["office"].post(
            "/api/v1/campaigns",
            json={
                "title": "出租户走访",
                "region": COMMUNITY_A,
                "due_in": SOON,
                "item_scope": "households",
                "item_uses": ["rented"],
            },
        ),
        201,
    )
    assert (made["fan_out"]["tasks"], made["fan_out"]["items"]) == (2, 2)
    a1 = campaign_tasks(people["office"], made["id"])[A1]
    labels = [i["label"] for i in ok(people["office"].get(f"/api/v1/tasks/{a1['id']}"))["items"]]
    assert labels == ["R1", "R2"]


def test_a_campaign_needs_a_region_in_scope_with_grids_and_a_valid_form(people, accounts):
    officer = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    body = {"title": "排查", "due_in": SOON}
    r = officer.post("/api/v1/campaigns", json={**body, "region": COMMUNITY_A})
    assert r.status_code == 422 and "region" in r.get_json()["errors"]["json"]
    r = officer.post("/api/v1/campaigns", json={**body, "region": "320508001009"})
    assert r.status_code == 422 and "region" in r.get_json()["errors"]["json"]

    bad_form = [{"code": "Hazard", "label": "", "type": "colour"}]
    r = people["office"].post(
        "/api/v1/campaigns", json={**body, "region": TOWNSHIP, "result_schema": bad_form}
    )
    assert r.status_code == 422
    # By attribute and key, as a category's attributes (it was a list of sentences).
    problems = r.get_json()["errors"]["json"]["result_schema"]
    assert set(problems) == {"0"} and {"code", "label", "type"} <= set(problems["0"])
    twice = [{"code": "hazard", "label": "隐患", "type": "string"}] * 2
    r = people["office"].post(
        "/api/v1/campaigns", json={**body, "region": TOWNSHIP, "result_schema": twice}
    )
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["result_schema"] == {
        "1": {"code": ["duplicate code 'hazard'"]}
    }

    r = people["office"].post("/api/v1/campaigns", json={"title": "排查", "region": TOWNSHIP})
    assert r.status_code == 422 and "due_at" in r.get_json()["errors"]["json"]
    assert ok(people["office"].get("/api/v1/tasks"))["items"] == []  # nothing was made
    assert ok(people["office"].get("/api/v1/campaigns"))["items"] == []


# --- progress ---------------------------------------------------------------------------------

COUNTS = (
    "total",
    "pending",
    "accepted",
    "completed",
    "cancelled",
    "overdue",
    "completed_late",
    "items_total",
    "items_done",
)


def nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    return [tree, *(n for child in tree["children"] for n in nodes(child))]


def test_progress_rolls_up_the_tree_and_every_level_sums_its_parts(client, people, app):
    house(client, A1, "rented", "平江路1号")
    house(client, A1, "rented", "平江路2号")
    office = people["office"]
    county = ok(
        client.post(
            "/api/v1/campaigns",
            json={
                "title": "全区大排查",
                "region": COUNTY,
                "due_in": SOON,
                "result_schema": HAZARD_FORM,
                "item_scope": "houses",
            },
        ),
        201,
    )
    tasks = campaign_tasks(client, county["id"])
    a1_items = ok(people["worker1"].get(f"/api/v1/tasks/{tasks[A1]['id']}"))["items"]
    done = {"id": a1_items[0]["id"], "result": {"hazard": "有", "extinguishers": 0}}
    ok(step(people["worker1"], tasks[A1]["id"], "complete", {"items": [done]}))
    ok(step(people["worker2"], tasks[A2]["id"], "accept"))
    ok(step(office, tasks[B2]["id"], "cancel", {"reason": "网格撤并"}))
    with app.extensions["gridapi"].sessions.begin() as session:  # B1 runs late
        session.execute(
            text("UPDATE tasks SET due_at = :due WHERE id = :id"),
            {"due": datetime.now(UTC) - timedelta(hours=1), "id": tasks[B1]["id"]},
        )
        assert flag_overdue_tasks(session, datetime.now(UTC)) == 1

    progress = ok(client.get(f"/api/v1/campaigns/{county['id']}/progress"))
    tree = progress["tree"]
    assert [(n["level"], n["code"]) for n in nodes(tree)] == [
        ("county", COUNTY),
        ("township", TOWNSHIP),
        ("village", COMMUNITY_A),
        ("grid", A1),
        ("grid", A2),
        ("village", COMMUNITY_B),
        ("grid", B1),
        ("grid", B2),
    ]
    for node in nodes(tree):
        if node["children"]:
            for name in COUNTS:
                assert node[name] == sum(c[name] for c in node["children"]), (node["code"], name)
    by_code = {n["code"]: n for n in nodes(tree)}
    assert {k: by_code[A1][k] for k in ("completed", "items_total", "items_done")} == {
        "completed": 1,
        "items_total": 2,
        "items_done": 1,
    }
    assert by_code[A2]["accepted"] == 1 and by_code[B1]["overdue"] == 1
    assert by_code[B2]["cancelled"] == 1 and by_code[B2]["completion_rate"] is None
    assert {k: tree[k] for k in ("total", "pending", "accepted", "completed", "cancelled")} == {
        "total": 4,
        "pending": 1,
        "accepted": 1,
        "completed": 1,
        "cancelled": 1,
    }
    assert tree["completion_rate"] == round(1 / 3, 4)  # the cancelled task is not due
    assert by_code[COMMUNITY_A]["completion_rate"] == 0.5
    assert (tree["name"], by_code[COMMUNITY_B]["name"]) == ("姑苏区", "观前社区")

    # A worker sees the campaign through its own task, and only that part of the progress.
    mine = ok(people["worker1"].get(f"/api/v1/campaigns/{county['id']}/progress"))["tree"]
    assert [n["code"] for n in nodes(mine)] == [COUNTY, TOWNSHIP, COMMUNITY_A, A1]
    assert mine["total"] == 1 and mine["completed"] == 1


# --- deadlines --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now", "due_in", "expected"),
    [
        # Friday + 1 working day: Monday at closing time.
        (
            datetime(2026, 11, 27, 10, 0),
            {"amount": 1, "unit": "days"},
            datetime(2026, 11, 30, 17, 30),
        ),
        # Friday 16:30 + 2 working hours: one on Friday, one on Monday morning.
        (
            datetime(2026, 11, 27, 16, 30),
            {"amount": 2, "unit": "hours"},
            datetime(2026, 11, 30, 9, 30),
        ),
        # Friday 8 May 2026 + 1: Saturday 9 May is worked in exchange (调休).
        (datetime(2026, 5, 8, 10, 0), {"amount": 1, "unit": "days"}, datetime(2026, 5, 9, 17, 30)),
    ],
    ids=["weekend", "hours-over-weekend", "tiaoxiu-saturday"],
)
def test_due_in_counts_working_time_on_the_calendar(
    client, people, app, monkeypatch, now, due_in, expected
):
    import gridapi.resources.tasks as resource

    start = now.replace(tzinfo=SHANGHAI)
    monkeypatch.setattr(resource, "_now", lambda: start.astimezone(UTC))
    task = new_task(people["office"], grid=A1, due_in=due_in)
    assert when(task["due_at"]) == expected.replace(tzinfo=SHANGHAI)
    with app.extensions["gridapi"].sessions() as session:
        calendar = app.extensions["gridapi"].calendar(session)
        assert when(task["due_at"]) == add_limit(calendar, start, due_in["amount"], due_in["unit"])

    made = ok(
        people["office"].post(
            "/api/v1/campaigns", json={"title": "排查", "region": COMMUNITY_A, "due_in": due_in}
        ),
        201,
    )
    assert when(made["due_at"]) == expected.replace(tzinfo=SHANGHAI)


def test_a_deadline_is_given_once_and_not_in_the_past(people):
    office = people["office"]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    r = office.post("/api/v1/tasks", json={"title": "x", "grid": A1, "due_at": past})
    assert r.status_code == 422 and r.get_json()["errors"]["json"]["due_at"] == ["lies in the past"]
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    both = {"title": "x", "grid": A1, "due_at": future, "due_in": SOON}
    r = office.post("/api/v1/tasks", json=both)
    assert r.status_code == 422 and "due_at" in r.get_json()["errors"]["json"]
    naive = datetime.now().replace(microsecond=0).isoformat()
    r = office.post("/api/v1/tasks", json={"title": "x", "grid": A1, "due_at": naive})
    assert r.status_code == 422 and "due_at" in r.get_json()["errors"]["json"]
    task = new_task(office, grid=A1, due_at=future)
    assert when(task["due_at"]) == datetime.fromisoformat(future)


def test_a_deadline_is_answered_as_every_read_gives_it(people):
    """A deadline given as due_at was echoed with the caller's offset (…+08:00) by the
    answers to creating a task or a campaign and to reassigning a task, where every read
    (and each task the campaign fanned out) gave the stored instant in UTC."""
    office, ids = people["office"], people["ids"]
    due = (datetime.now(SHANGHAI) + timedelta(days=2)).replace(microsecond=0)
    task = new_task(office, grid=A1, due_at=due.isoformat())
    read = ok(office.get(f"/api/v1/tasks/{task['id']}"))
    assert task["due_at"] == read["due_at"] and when(read["due_at"]) == due
    assert task == read

    later = due + timedelta(days=1)
    body = {"assignee_id": ids["worker1"], "due_at": later.isoformat()}
    moved = ok(step(office, task["id"], "reassign", body))
    read = ok(office.get(f"/api/v1/tasks/{task['id']}"))
    assert moved["due_at"] == read["due_at"] and when(read["due_at"]) == later
    assert moved == read

    body = {"title": "排查", "region": COMMUNITY_A, "due_at": due.isoformat()}
    made = ok(office.post("/api/v1/campaigns", json=body), 201)
    read = ok(office.get(f"/api/v1/campaigns/{made['id']}"))
    assert made["due_at"] == read["due_at"] and when(read["due_at"]) == due
    assert {k: v for k, v in made.items() if k != "fan_out"} == read
    assert {t["due_at"] for t in campaign_tasks(office, made["id"]).values()} == {made["due_at"]}


# --- the worker's steps -----------------------------------------------------------------------


def test_a_worker_accepts_a_grid_task_and_completes_it_with_checked_results(people, engine):
    office, worker = people["office"], people["worker1"]
    task = new_task(office, grid=A1, result_schema=HAZARD_FORM, title="检查灭火器")
    assert task["assignee"] is None and task["status"] == "pending"
    assert ok(worker.get(f"/api/v1/tasks/{task['id']}"))["allowed_actions"] == [
        "accept",
        "complete",
    ]

    url = f"/api/v1/tasks/{task['id']}/accept"
    assert worker.post(url).status_code == 428
    stale = worker.post(url, headers={"If-Match": f'"{task["id"]}-99"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == f'"{task["id"]}-1"'
    other = worker.post(url, headers={"If-Match": f'"{task["id"] + 1}-1"'})
    assert other.status_code == 412  # another task's ETag at the same version
    accepted = ok(step(worker, task["id"], "accept"))
    assert (
        accepted["status"] == "accepted" and accepted["assignee"]["id"] == people["ids"]["worker1"]
    )
    assert accepted["version"] == 2 and accepted["accepted_at"]
    again = step(worker, task["id"], "accept")
    assert again.status_code == 409
    assert again.get_json()["errors"]["allowed_actions"] == ["complete"]

    for results, problem in (
        ({}, {"hazard": ["required"]}),
        ({"hazard": "也许"}, {"hazard": ["must be one of: 有, 无"]}),
        ({"hazard": "无", "colour": "red"}, {"colour": ["not a field of the result form"]}),
        ({"hazard": "无", "extinguishers": "two"}, {"extinguishers": ["must be a number"]}),
    ):
        r = step(worker, task["id"], "complete", {"results": results})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"] == {"json": {"results": problem}}
    # evidence is an http(s) address: "javascript:…" was stored, a link in any console
    for url in ("javascript:alert(1)", "file:///sdcard/1.jpg", "data:text/html,x"):
        r = step(
            worker,
            task["id"],
            "complete",
            {"results": {"hazard": "无"}, "evidence": [{"url": url}]},
        )
        assert r.status_code == 422, (url, r.get_json())
        assert r.get_json()["errors"] == {
            "json": {"evidence": {"0": {"url": ["an http(s) address"]}}}
        }, url
    assert ok(worker.get(f"/api/v1/tasks/{task['id']}"))["status"] == "accepted"

    evidence = [
        {"sha256": "a" * 64, "note": "灭火器压力正常"},
        {"url": "https://img.example/1.jpg"},
    ]
    done = ok(
        step(
            worker,
            task["id"],
            "complete",
            {
                "results": {"hazard": "无", "extinguishers": 2},
                "evidence": evidence,
                "comment": "已查",
            },
        )
    )
    assert done["status"] == "completed" and done["completed_at"]
    assert done["results"] == {"hazard": "无", "extinguishers": 2}
    assert done["evidence"] == evidence and done["comment"] == "已查"
    assert done["allowed_actions"] == []
    finished = step(worker, task["id"], "complete", {"results": {"hazard": "无"}})
    assert finished.status_code == 409
    assert finished.get_json()["errors"]["allowed_actions"] == []

    worker_id = f"user:{people['ids']['worker1']}"
    assert [(o, a) for o, a, _, _ in audit_rows(engine, "task.accept")] == [
        (str(task["id"]), worker_id)
    ]
    [(_, actor, region, summary)] = audit_rows(engine, "task.complete")
    assert (actor, region, summary["results"]) == (
        worker_id,
        COMMUNITY_A,
        ["extinguishers", "hazard"],
    )


def test_a_weak_etag_never_matches_a_task_or_a_campaign_and_star_does(people):
    """If-Match compares strongly (RFC 9110 §13.1.1): the weak form of a task's or a
    campaign's current ETag was taken as the ETag itself."""
    office, worker = people["office"], people["worker1"]
    task = new_task(office, grid=A1)
    current = etag_of(worker, task["id"])
    assert current == f'"{task["id"]}-1"'
    stale = step(worker, task["id"], "accept", etag=f'"{task["id"]}-0"')
    for tag in (f"W/{current}", f'W/"{task["id"]}-1:gzip"'):
        weak = step(worker, task["id"], "accept", etag=tag)
        assert weak.status_code == 412, (tag, weak.get_json())
        assert weak.get_json() == stale.get_json()
        assert set(weak.get_json()) == {"code", "status", "message", "errors"}
        assert weak.headers["ETag"] == current
    assert ok(worker.get(f"/api/v1/tasks/{task['id']}"))["status"] == "pending"
    accepted = ok(step(worker, task["id"], "accept", etag="*"))
    assert accepted["status"] == "accepted" and accepted["version"] == 2

    made = ok(
        office.post(
            "/api/v1/campaigns", json={"title": "排查", "region": COMMUNITY_A, "due_in": SOON}
        ),
        201,
    )
    url = f"/api/v1/campaigns/{made['id']}/cancel"
    tag = etag_of(office, made["id"], "campaigns")
    weak = office.post(url, json={"reason": "上级取消"}, headers={"If-Match": f"W/{tag}"})
    assert weak.status_code == 412, weak.get_json()
    assert weak.get_json()["code"] == 412 and weak.headers["ETag"] == tag
    assert ok(office.get(f"/api/v1/campaigns/{made['id']}"))["status"] == "active"
    star = office.post(url, json={"reason": "上级取消"}, headers={"If-Match": "*"})
    assert ok(star)["status"] == "cancelled"


def test_a_pending_task_with_items_is_completed_at_once_item_by_item(client, people):
    house(client, A1, "rented", "平江路1号")
    made = ok(
        people["office"].post(
            "/api/v1/campaigns",
            json={
                "title": "排查",
                "region": COMMUNITY_A,
                "due_in": SOON,
                "result_schema": HAZARD_FORM,
                "item_scope": "houses",
            },
        ),
        201,
    )
    worker = people["worker1"]
    task = campaign_tasks(worker, made["id"])[A1]
    [item] = ok(worker.get(f"/api/v1/tasks/{task['id']}"))["items"]
    r = step(worker, task["id"], "complete", {"items": [{"id": item["id"], "result": {}}]})
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["items"] == {"0": {"result": {"hazard": ["required"]}}}
    r = step(worker, task["id"], "complete", {"results": {"hazard": "无"}})
    assert r.status_code == 422 and "results" in r.get_json()["errors"]["json"]
    r = step(worker, task["id"], "complete", {"items": [{"id": 987654, "result": {}}]})
    assert r.status_code == 422 and "id" in r.get_json()["errors"]["json"]["items"]["0"]

    body = {"items": [{"id": item["id"], "result": {"hazard": "有"}, "note": "楼道堆物"}]}
    done = ok(step(worker, task["id"], "complete", body))
    assert done["status"] == "completed" and done["accepted_at"] == done["completed_at"]
    assert done["items_done"] == 1 == done["item_count"]
    [item] = done["items"]
    assert (item["status"], item["result"], item["note"]) == ("done", {"hazard": "有"}, "楼道堆物")
    assert item["done_by"] == f"user:{people['ids']['worker1']}"


def test_a_worker_cannot_take_another_workers_task(people, accounts):
    office, worker1, worker2 = people["office"], people["worker1"], people["worker2"]
    elsewhere = new_task(office, grid=A2, assignee_id=people["ids"]["worker2"])
    missing = worker1.get("/api/v1/tasks/987654")
    # Out of the worker's grids and not theirs: exactly like a task that does not exist.
    for method, suffix in (("GET", ""), ("POST", "/accept"), ("POST", "/complete")):
        r = worker1.open(
            f"/api/v1/tasks/{elsewhere['id']}{suffix}",
            method=method,
            json={} if suffix == "/complete" else None,
            headers={"If-Match": "*"},
        )
        assert (r.status_code, r.data) == (404, missing.data), suffix
    assert missing.get_json()["message"] == "The task does not exist or is outside your scope."
    assert elsewhere["id"] not in [t["id"] for t in ok(worker1.get("/api/v1/tasks"))["items"]]
    assert ok(worker1.get(f"/api/v1/tasks?grid={A2}"))["items"] == []

    # In the worker's grid but assigned to someone else: readable, not theirs to do (403).
    theirs = new_task(office, grid=A1, assignee_id=people["ids"]["worker2"])
    assert ok(worker1.get(f"/api/v1/tasks/{theirs['id']}"))["allowed_actions"] == []
    for action, body in (("accept", None), ("complete", {})):
        assert step(worker1, theirs["id"], action, body).status_code == 403, action
    # The assignee reads and completes it, though A1 is not one of their grids.
    assert ok(worker2.get(f"/api/v1/tasks/{theirs['id']}"))["allowed_actions"] == [
        "accept",
        "complete",
    ]
    assert ok(step(worker2, theirs["id"], "complete", {}))["status"] == "completed"
    # Offices reassign and cancel: a worker may not (no tasks:write).
    assert step(worker1, theirs["id"], "cancel", {"reason": "x"}).status_code == 403


# --- the office's steps -----------------------------------------------------------------------


def test_an_office_reassigns_and_cancels_tasks_in_its_area(people, accounts, engine):
    office, worker1, worker2 = people["office"], people["worker1"], people["worker2"]
    ids = people["ids"]
    task = new_task(office, assignee_id=ids["worker1"])  # placed in the worker's grid
    assert (task["grid"]["code"], task["region"]["code"]) == (A1, COMMUNITY_A)
    ok(step(worker1, task["id"], "accept"))

    # Nobody, an account that takes no tasks (a department), the assignee already.
    department = accounts.create("dept_user", "department", scope_region=COMMUNITY_A)
    for assignee in (987654, department, ids["worker1"]):
        r = step(office, task["id"], "reassign", {"assignee_id": assignee})
        assert r.status_code == 422 and "assignee_id" in r.get_json()["errors"]["json"], assignee
    moved = ok(
        step(office, task["id"], "reassign", {"assignee_id": ids["worker2"], "due_in": SOON})
    )
    assert moved["status"] == "pending" and moved["assignee"]["id"] == ids["worker2"]
    assert moved["accepted_at"] is None
    assert [t["id"] for t in ok(worker2.get("/api/v1/me/tasks"))["items"]] == [task["id"]]
    assert ok(worker1.get("/api/v1/me/tasks"))["items"] == []
    back = ok(step(office, task["id"], "reassign", {"assignee_id": None}))
    assert back["assignee"] is None  # back to the grid: any worker of A1 may take it
    assert [t["id"] for t in ok(worker1.get("/api/v1/me/tasks"))["items"]] == [task["id"]]
    assert ok(worker2.get("/api/v1/me/tasks"))["items"] == []

    officer_b = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    r = step(officer_b, task["id"], "cancel", {"reason": "x"}, etag=f'"{task["id"]}-4"')
    assert r.status_code == 404
    r = office.post(f"/api/v1/tasks/{task['id']}/cancel", json={}, headers={"If-Match": "*"})
    assert r.status_code == 422 and "reason" in r.get_json()["errors"]["json"]
    cancelled = ok(step(office, task["id"], "cancel", {"reason": "重复下发"}))
    assert cancelled["status"] == "cancelled" and cancelled["cancel_reason"] == "重复下发"
    r = step(office, task["id"], "reassign", {"assignee_id": ids["worker1"]})
    assert r.status_code == 409 and r.get_json()["errors"]["allowed_actions"] == []

    reassigned = audit_rows(engine, "task.reassign")
    assert [(s["from_assignee"], s["to_assignee"]) for _, _, _, s in reassigned] == [
        (ids["worker1"], ids["worker2"]),
        (ids["worker2"], None),
    ]
    assert [s["reason"] for _, _, _, s in audit_rows(engine, "task.cancel")] == ["重复下发"]


def test_a_task_for_a_grid_or_worker_out_of_scope_is_refused(people, accounts):
    officer = accounts.client("officer_a", "community_officer", scope_region=COMMUNITY_A)
    for body, field in (
        ({"grid": B1}, "grid"),
        ({"region": COMMUNITY_B}, "region"),
        ({"assignee_id": people["ids"]["worker3"]}, "assignee_id"),
        ({}, "assignee_id"),
    ):
        r = officer.post("/api/v1/tasks", json={"title": "x", "due_in": SOON, **body})
        assert r.status_code == 422 and field in r.get_json()["errors"]["json"], body
    # A worker out of scope answers exactly like one that does not exist.
    answers = [
        officer.post("/api/v1/tasks", json={"title": "x", "due_in": SOON, "assignee_id": user})
        for user in (people["ids"]["worker3"], 987654)
    ]
    assert answers[0].data == answers[1].data
    task = new_task(officer, region=COMMUNITY_A, title="社区例会")
    assert task["grid"] is None and task["region"]["name"] == "平江社区"


# --- the phone --------------------------------------------------------------------------------


def test_my_tasks_lists_mine_and_my_grids_open_first_by_deadline(people):
    office, worker1 = people["office"], people["worker1"]
    ids = people["ids"]
    later = new_task(
        office, assignee_id=ids["worker1"], title="晚", due_in={"amount": 5, "unit": "days"}
    )
    sooner = new_task(office, grid=A1, title="早", due_in={"amount": 1, "unit": "days"})
    done = new_task(office, assignee_id=ids["worker1"], title="已完成")
    new_task(office, grid=A1, assignee_id=ids["worker2"], title="别人的")
    new_task(office, grid=A2, title="别的网格")
    ok(step(worker1, done["id"], "complete", {}))

    items = ok(worker1.get("/api/v1/me/tasks"))["items"]
    assert [t["title"] for t in items] == ["早", "晚", "已完成"]
    assert [t["id"] for t in items] == [sooner["id"], later["id"], done["id"]]
    assert items[0]["assignee"] is None and items[0]["allowed_actions"] == ["accept", "complete"]
    assert items[0]["items"] == []  # the phone gets the items (none here) and the form
    only_open = ok(worker1.get("/api/v1/me/tasks?days=0"))["items"]
    assert [t["title"] for t in only_open] == ["早", "晚"]
    assert ok(office.get("/api/v1/me/tasks"))["items"] == []


def test_my_tasks_are_paged_with_a_cursor_in_the_same_order(people):
    """/me/tasks answered at most `limit` (200) tasks and no way to the rest: a worker with
    more open tasks never saw the later ones on the phone. Pages follow a cursor through the
    open tasks, then the finished ones, in the order of the whole list."""
    office, worker1 = people["office"], people["worker1"]
    ids = people["ids"]
    for title, days in (("甲", 3), ("乙", 1), ("丙", 3), ("丁", 2)):  # two with one deadline
        new_task(
            office, assignee_id=ids["worker1"], title=title, due_in={"amount": days, "unit": "days"}
        )
    for title in ("戊", "己", "庚"):
        done = new_task(office, grid=A1, title=title)
        ok(step(worker1, done["id"], "complete", {}))
    whole = ok(worker1.get("/api/v1/me/tasks"))
    assert whole["next_cursor"] is None
    expected = [t["id"] for t in whole["items"]]
    assert [t["title"] for t in whole["items"]][:2] == ["乙", "丁"] and len(expected) == 7
    for limit in (1, 2, 3, 4, 7):
        seen, url = [], f"/api/v1/me/tasks?limit={limit}"
        while True:
            page = ok(worker1.get(url))
            assert 0 < len(page["items"]) <= limit
            seen += [t["id"] for t in page["items"]]
            if page["next_cursor"] is None:
                break
            url = f"/api/v1/me/tasks?limit={limit}&cursor={page['next_cursor']}"
        assert seen == expected, limit
    first = ok(worker1.get("/api/v1/me/tasks?limit=2"))
    other = worker1.get(f"/api/v1/me/tasks?limit=2&days=1&cursor={first['next_cursor']}")
    assert other.status_code == 422 and list(other.get_json()["errors"]["query"]) == ["cursor"]
    forged = worker1.get("/api/v1/me/tasks?cursor=WzEsMl0")
    assert forged.status_code == 422 and list(forged.get_json()["errors"]["query"]) == ["cursor"]


# --- overdue ----------------------------------------------------------------------------------


def test_flag_overdue_tasks_marks_open_late_tasks_once(people, app):
    office, worker1 = people["office"], people["worker1"]
    late = new_task(office, grid=A1)
    done = new_task(office, grid=A1)
    fresh = new_task(office, grid=A2, due_in={"amount": 30, "unit": "days"})
    ok(step(worker1, done["id"], "complete", {}))
    later = datetime.now(UTC) + timedelta(days=10)

    sessions = app.extensions["gridapi"].sessions
    with sessions.begin() as session:
        assert flag_overdue_tasks(session, later) == 1
        row = session.get(Task, late["id"])
        assert row is not None and row.overdue and row.overdue_since == row.due_at
    with sessions.begin() as session:
        assert flag_overdue_tasks(session, later) == 0
        versions = dict(session.execute(select(Task.id, Task.version)).all())
    assert versions == {late["id"]: 2, done["id"]: 2, fresh["id"]: 1}

    flagged = office.get(f"/api/v1/tasks/{late['id']}")
    assert flagged.get_json()["overdue"] is True and flagged.headers["ETag"] == f'"{late["id"]}-2"'
    assert step(worker1, late["id"], "accept", etag=f'"{late["id"]}-1"').status_code == 412
    overdue = ok(office.get("/api/v1/tasks?overdue=true"))["items"]
    assert [t["id"] for t in overdue] == [late["id"]]
    finished = ok(step(worker1, late["id"], "complete", {}))
    assert finished["overdue"] is False and finished["overdue_since"] is not None


def task_notices(who: Any) -> list[tuple[str, int, str]]:
    """Return (kind, task id, message) of the task notifications in ``who``'s inbox."""
    items = ok(who.get("/api/v1/me/notifications?about=task"))["items"]
    return [(i["kind"], i["task_id"], i["message"]) for i in items]


def test_a_task_handed_over_while_overdue_tells_its_new_worker_so(people, app):
    """The overdue job tells a late task's worker once per deadline: handed to another
    worker without a new deadline, the task stays overdue and its new worker was told only
    "派给您", as if it were on time. The notice now says it is late; with a new deadline
    it does not."""
    office = people["office"]
    ids = people["ids"]
    late = new_task(office, title="走访独居老人", assignee_id=ids["worker1"])
    on_time = new_task(office, title="排查", assignee_id=ids["worker1"])
    later = datetime.now(UTC) + timedelta(days=10)
    st = app.extensions["gridapi"]
    assert [r.counts for r in run_jobs(st.sessions, later, jobs=["tasks"])] == [{"overdue": 2}]
    ok(step(office, late["id"], "reassign", {"assignee_id": ids["worker2"]}))
    due = (later + timedelta(days=5)).isoformat()
    ok(step(office, on_time["id"], "reassign", {"assignee_id": ids["worker2"], "due_at": due}))
    assert ok(people["worker2"].get(f"/api/v1/tasks/{late['id']}"))["overdue"] is True
    assert task_notices(people["worker2"]) == [
        ("task_assigned", late["id"], "任务「走访独居老人」派给您（已超过期限）"),
        ("task_assigned", on_time["id"], "任务「排查」派给您"),
    ]


def test_an_overdue_task_tells_its_assignee_and_the_office_that_issued_it_once(
    people, accounts, app, engine
):
    """The overdue job flagged a late task and told nobody. Now the assignee and the office
    that issued it (its unit: every account of the township office) are told, once: a
    second run, and a task whose flag is found cleared again, queue nothing more; a task
    given a new deadline is told again when that one passes."""
    office, worker1 = people["office"], people["worker1"]
    colleague = accounts.client("colleague", "township_office", scope_region=TOWNSHIP)
    late = new_task(office, title="走访独居老人", assignee_id=people["ids"]["worker1"])
    for_grid = new_task(office, title="排查", grid=B2)  # nobody on B2: the office alone
    new_task(office, grid=A2, due_in={"amount": 30, "unit": "days"})
    later = datetime.now(UTC) + timedelta(days=10)
    st = app.extensions["gridapi"]
    results = run_jobs(st.sessions, later, jobs=["tasks"])
    assert [r.counts for r in results] == [{"overdue": 2}]
    overdue = ("overdue", late["id"], "任务「走访独居老人」已超过期限")
    assert task_notices(worker1) == [
        ("task_assigned", late["id"], "任务「走访独居老人」派给您"),
        overdue,
    ]
    to_office = [overdue, ("overdue", for_grid["id"], "任务「排查」已超过期限")]
    assert task_notices(office) == task_notices(colleague) == to_office

    assert [r.counts for r in run_jobs(st.sessions, later, jobs=["tasks"])] == [{"overdue": 0}]
    with engine.begin() as conn:  # as if a second worker had not seen the first's flag
        conn.execute(text("UPDATE tasks SET overdue = false"))
    assert [r.counts for r in run_jobs(st.sessions, later, jobs=["tasks"])] == [{"overdue": 2}]
    assert len(task_notices(worker1)) == 2 and task_notices(office) == to_office

    due = (later + timedelta(days=5)).isoformat()
    body = {"assignee_id": people["ids"]["worker2"], "due_at": due}
    ok(step(office, late["id"], "reassign", body))
    run_jobs(st.sessions, later + timedelta(days=6), jobs=["tasks"])
    assert [k for k, t, _ in task_notices(people["worker2"])] == ["task_assigned", "overdue"]
    assert [t for _, t, _ in task_notices(office)] == [late["id"], for_grid["id"], late["id"]]
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT task_id, user_id, region_code, county_code FROM notifications"
                " WHERE kind LIKE 'overdue:%' ORDER BY id"
            )
        ).all()
    ids = people["ids"]
    assert [tuple(r) for r in rows] == [
        (late["id"], ids["worker1"], None, "320508"),
        (late["id"], None, TOWNSHIP, "320508"),
        (for_grid["id"], None, TOWNSHIP, "320508"),
        (late["id"], ids["worker2"], None, "320508"),
        (late["id"], None, TOWNSHIP, "320508"),
    ]


def test_an_overdue_task_left_to_its_grid_tells_the_grids_workers_once(people, accounts, app):
    """A task left to its grid (no assignee) that went overdue told only the office: the
    workers who may take it never heard. Each worker on the grid's roster is told now, once
    per deadline; workers of other grids are not."""
    office, worker1 = people["office"], people["worker1"]
    partner = accounts.client("partner", "grid_worker", grids=[A1])
    task = new_task(office, title="排查", grid=A1)
    later = datetime.now(UTC) + timedelta(days=10)
    sessions = app.extensions["gridapi"].sessions
    assert [r.counts for r in run_jobs(sessions, later, jobs=["tasks"])] == [{"overdue": 1}]
    told = [("overdue", task["id"], "任务「排查」已超过期限")]
    assert task_notices(worker1) == task_notices(partner) == told
    assert task_notices(office) == told
    assert task_notices(people["worker2"]) == []  # A2's worker: not their grid
    with sessions.begin() as session:  # as if a second worker had not seen the first's flag
        session.execute(update(Task).values(overdue=False))
    assert [r.counts for r in run_jobs(sessions, later, jobs=["tasks"])] == [{"overdue": 1}]
    assert task_notices(worker1) == task_notices(partner) == task_notices(office) == told


def test_an_overdue_task_left_to_its_region_tells_the_regions_unit_once(people, accounts, app):
    """A task given to a community (no grid, no worker) that went overdue told only the
    office that issued it: the community's own office, whose people may take it, never
    heard. The unit of the region is told now, once per deadline; a task the unit issued
    itself is told to it once, as the issuer."""
    office, worker1 = people["office"], people["worker1"]
    community = accounts.client("community", "community_officer", scope_region=COMMUNITY_A)
    neighbour = accounts.client("neighbour", "community_officer", scope_region=COMMUNITY_B)
    task = new_task(office, title="排查", region=COMMUNITY_A)
    own = new_task(community, title="走访", region=COMMUNITY_A)
    later = datetime.now(UTC) + timedelta(days=10)
    sessions = app.extensions["gridapi"].sessions
    assert [r.counts for r in run_jobs(sessions, later, jobs=["tasks"])] == [{"overdue": 2}]
    told = ("overdue", task["id"], "任务「排查」已超过期限")
    assert task_notices(community) == [told, ("overdue", own["id"], "任务「走访」已超过期限")]
    assert task_notices(office) == [told]
    assert task_notices(worker1) == task_notices(neighbour) == []
    with sessions.begin() as session:  # as if a second worker had not seen the first's flag
        session.execute(update(Task).values(overdue=False))
    assert [r.counts for r in run_jobs(sessions, later, jobs=["tasks"])] == [{"overdue": 2}]
    assert len(task_notices(community)) == 2 and task_notices(office) == [told]


def test_an_overdue_task_an_unrestricted_account_issued_tells_that_account(people, client, app):
    """An account of no unit (the admin) issued the task: the office's notice goes to it."""
    task = new_task(client, grid=A1)
    run_jobs(app.extensions["gridapi"].sessions, datetime.now(UTC) + timedelta(days=10))
    assert [(k, t) for k, t, _ in task_notices(client)] == [("overdue", task["id"])]
    assert task_notices(people["office"]) == []


@pytest.mark.engines("postgis")
def test_two_overdue_jobs_at_once_tell_a_task_once(people, app):
    """Two workers run the task job at once: the first holds the late tasks it marks, the
    second skips them (and marks nothing); each task is told once."""
    office = people["office"]
    task = new_task(office, assignee_id=people["ids"]["worker1"])
    later = datetime.now(UTC) + timedelta(days=10)
    sessions = app.extensions["gridapi"].sessions
    with sessions.begin() as first:
        assert flag_overdue_tasks(first, later) == 1
        with sessions.begin() as second:
            second.execute(text("SET LOCAL lock_timeout = '3s'"))
            assert flag_overdue_tasks(second, later) == 0
    with sessions.begin() as again:
        assert flag_overdue_tasks(again, later) == 0
    assert [t for k, t, _ in task_notices(office) if k == "overdue"] == [task["id"]]
    overdue = [t for k, t, _ in task_notices(people["worker1"]) if k == "overdue"]
    assert overdue == [task["id"]]


# --- campaigns: cancel and close --------------------------------------------------------------


def test_cancelling_a_campaign_cancels_its_open_tasks_and_the_last_task_closes_one(people, engine):
    office, worker1, worker2 = people["office"], people["worker1"], people["worker2"]
    body = {"title": "排查", "region": COMMUNITY_A, "due_in": SOON}
    made = ok(office.post("/api/v1/campaigns", json=body), 201)
    tasks = campaign_tasks(office, made["id"])
    ok(step(worker1, tasks[A1]["id"], "complete", {}))

    url = f"/api/v1/campaigns/{made['id']}/cancel"
    assert office.post(url, json={"reason": "上级取消"}).status_code == 428
    assert worker1.post(url, json={"reason": "x"}).status_code == 403
    etag = etag_of(office, made["id"], "campaigns")
    cancelled = ok(office.post(url, json={"reason": "上级取消"}, headers={"If-Match": etag}))
    assert cancelled["status"] == "cancelled" and cancelled["allowed_actions"] == []
    statuses = {g: t["status"] for g, t in campaign_tasks(office, made["id"]).items()}
    assert statuses == {A1: "completed", A2: "cancelled"}
    again = office.post(url, json={"reason": "x"}, headers={"If-Match": "*"})
    assert again.status_code == 409
    [(_, _, _, summary)] = audit_rows(engine, "campaign.cancel")
    assert summary["tasks_cancelled"] == 1

    other = ok(office.post("/api/v1/campaigns", json=body), 201)
    tasks = campaign_tasks(office, other["id"])
    ok(step(worker1, tasks[A1]["id"], "complete", {}))
    assert ok(office.get(f"/api/v1/campaigns/{other['id']}"))["status"] == "active"
    ok(step(worker2, tasks[A2]["id"], "complete", {}))
    closed = ok(office.get(f"/api/v1/campaigns/{other['id']}"))
    assert closed["status"] == "closed" and closed["closed_at"]
    assert [c["id"] for c in ok(office.get("/api/v1/campaigns?status=active"))["items"]] == []


def _wait_for_lock(engine, query: str, thread: threading.Thread) -> None:  # type: ignore[no-untyped-def]
    """Wait (up to 20 s) until a session waits for a lock in a statement like ``query``, or
    ``thread`` (the request) has answered without waiting."""
    deadline = time.monotonic() + 20
    while thread.is_alive() and time.monotonic() < deadline:
        with engine.connect() as conn:
            waiting = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database() AND query LIKE :q"
                ),
                {"q": query},
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.05)


@pytest.mark.engines("postgis")
def test_cancelling_a_campaign_while_a_worker_completes_a_task_deadlocks_nobody(people, engine):
    """A worker completing a task locks it, then its campaign (to close it when it was the
    last); cancelling the campaign locked the campaign, then its tasks: at the same moment
    the two waited for each other, and PostgreSQL killed one (a 503)."""
    office, worker2 = people["office"], people["worker2"]
    made = ok(
        office.post(
            "/api/v1/campaigns", json={"title": "排查", "region": COMMUNITY_A, "due_in": SOON}
        ),
        201,
    )
    tasks = campaign_tasks(office, made["id"])
    first, second = tasks[A1]["id"], tasks[A2]["id"]
    assert first < second
    campaign_etag = etag_of(office, made["id"], "campaigns")
    task_etag = etag_of(worker2, second)
    answers: dict[str, Any] = {}

    def cancel() -> None:
        answers["cancel"] = office.post(
            f"/api/v1/campaigns/{made['id']}/cancel",
            json={"reason": "上级取消"},
            headers={"If-Match": campaign_etag},
        )

    def complete() -> None:
        answers["complete"] = step(worker2, second, "complete", {}, etag=task_etag)

    # Someone holds A1's task (as a worker completing it would) while the office cancels:
    # the cancellation waits for that task; the worker of A2 then completes theirs.
    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": first})
        cancelling = threading.Thread(target=cancel)
        cancelling.start()
        _wait_for_lock(engine, "% tasks%", cancelling)
        completing = threading.Thread(target=complete)
        completing.start()
        _wait_for_lock(engine, "SELECT campaigns%", completing)
        holder.rollback()
    cancelling.join(30)
    completing.join(30)
    statuses = {k: r.status_code for k, r in answers.items()}
    assert statuses == {"cancel": 200, "complete": 200}, {
        k: r.get_json() for k, r in answers.items()
    }
    after = {g: t["status"] for g, t in campaign_tasks(office, made["id"]).items()}
    assert after == {A1: "cancelled", A2: "completed"}
    assert ok(office.get(f"/api/v1/campaigns/{made['id']}"))["status"] == "cancelled"


@pytest.mark.engines("postgis")
def test_flagging_overdue_tasks_leaves_a_task_being_changed_to_the_next_run(people, app, engine):
    """The overdue job locked every late task in the table's order, waiting for any a
    request held: with a campaign being cancelled (its tasks locked by id) the two could
    deadlock. It now takes the late tasks nobody holds, and the others on its next run."""
    office = people["office"]
    held, free = new_task(office, grid=A1), new_task(office, grid=A2)
    later = datetime.now(UTC) + timedelta(days=10)
    sessions = app.extensions["gridapi"].sessions
    with engine.connect() as holder:
        holder.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": held["id"]})
        with sessions.begin() as session:
            session.execute(text("SET LOCAL lock_timeout = '3s'"))
            assert flag_overdue_tasks(session, later) == 1
        holder.rollback()
    flagged = {t["id"]: t["overdue"] for t in ok(office.get("/api/v1/tasks"))["items"]}
    assert flagged == {held["id"]: False, free["id"]: True}
    with sessions.begin() as session:
        assert flag_overdue_tasks(session, later) == 1
    with sessions.begin() as session:
        assert flag_overdue_tasks(session, later) == 0


def test_a_task_or_campaign_is_not_given_a_retired_category(people, client):
    """A task and a campaign took a retired category: its workers were sent to report cases
    of a category every report of which is refused as unknown."""
    office = people["office"]
    r = client.post("/api/v1/categories", json={"code": "5309", "name": "燃气安全隐患"})
    assert r.status_code == 201, r.get_json()
    assert client.patch("/api/v1/categories/5309", json={"is_active": False}).status_code == 200
    expected = {"category": ["no active category 5309"]}
    r = office.post(
        "/api/v1/tasks", json={"title": "燃气排查", "grid": A1, "due_in": SOON, "category": "5309"}
    )
    assert r.status_code == 422 and r.get_json()["errors"]["json"] == expected, r.get_json()
    body = {"title": "燃气排查", "region": TOWNSHIP, "due_in": SOON, "category": "5309"}
    r = office.post("/api/v1/campaigns", json=body)
    assert r.status_code == 422 and r.get_json()["errors"]["json"] == expected, r.get_json()
    assert office.get("/api/v1/tasks").get_json()["items"] == []
    assert client.patch("/api/v1/categories/5309", json={"is_active": True}).status_code == 200
    assert new_task(office, title="燃气排查", grid=A1, category="5309")["category"] == "5309"


# /me/tasks cursors handed out before the phone's list and the case list shared one cursor
# codec, written by that code (``_encode_my_cursor``) and kept here as they were: a phone may
# hold one across an upgrade. ["open", 2099-06-01T00:00Z, id 1, days 7] and ["closed",
# 2100-01-01T00:00Z, id 2**31-1, days 7].
OLD_OPEN = "WyJvcGVuIiwgIjIwOTktMDYtMDFUMDA6MDA6MDArMDA6MDAiLCAxLCA3XQ"
OLD_CLOSED = "WyJjbG9zZWQiLCAiMjEwMC0wMS0wMVQwMDowMDowMCswMDowMCIsIDIxNDc0ODM2NDcsIDdd"


def test_a_my_tasks_cursor_handed_out_before_the_shared_codec_pages_on(people):
    """An open-part cursor goes on with the tasks due after its time, then the finished
    ones; a closed-part one with the finished ones only; under another `days` both are
    refused as another list's."""
    office, worker1 = people["office"], people["worker1"]
    ids = people["ids"]
    due = {}
    for title, when_due in (("早", "2099-01-01"), ("中", "2099-12-01"), ("晚", "2099-12-02")):
        body = {"assignee_id": ids["worker1"], "title": title, "due_at": f"{when_due}T08:00Z"}
        due[title] = new_task(office, **body)["id"]
    done = new_task(office, grid=A1, title="已完成")
    ok(step(worker1, done["id"], "complete", {}))
    page = ok(worker1.get(f"/api/v1/me/tasks?cursor={OLD_OPEN}"))
    assert [t["id"] for t in page["items"]] == [due["中"], due["晚"], done["id"]]
    page = ok(worker1.get(f"/api/v1/me/tasks?cursor={OLD_CLOSED}"))
    assert [t["id"] for t in page["items"]] == [done["id"]]
    for cursor in (OLD_OPEN, OLD_CLOSED):
        other = worker1.get(f"/api/v1/me/tasks?days=1&cursor={cursor}")
        assert other.status_code == 422, other.get_json()
        assert list(other.get_json()["errors"]["query"]) == ["cursor"]


@pytest.mark.parametrize(
    "value",
    [
        ["open", "0001-01-01T00:00:00+14:00", 1, 7],  # before year 1 in UTC
        ["open", "2026-11-19T19:06:37", 1, 7],  # no zone
        ["open", "2026-11-19T19:06:37+00:00", 2**31, 7],
        ["open", "2026-11-19T19:06:37+00:00", "2", 7],
        ["later", "2026-11-19T19:06:37+00:00", 1, 7],
        ["open", "2026-11-19T19:06:37+00:00", 1],
        {"open": 1},
    ],
)
def test_a_forged_my_tasks_cursor_is_422_naming_the_cursor(people, value):
    import base64

    cursor = base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")
    r = people["worker1"].get(f"/api/v1/me/tasks?cursor={cursor}")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {"query": {"cursor": ["not a cursor from this API"]}}


def test_tasks_and_campaigns_page_by_id_to_the_last_page(people):
    """The office's lists of tasks and of campaigns come a page at a time by id, each once,
    and the last page says so (its `next_cursor` is null)."""
    office = people["office"]
    for title in ("甲", "乙", "丙"):
        new_task(office, grid=A1, title=title)
    for title in ("排查一", "排查二"):
        body = {"title": title, "due_in": SOON, "region": TOWNSHIP}
        ok(office.post("/api/v1/campaigns", json=body), 201)
    for path in ("/api/v1/tasks", "/api/v1/campaigns"):
        whole = [row["id"] for row in ok(office.get(path))["items"]]
        assert len(whole) >= 2 and whole == sorted(whole), path
        pages, url = [], f"{path}?limit=1"
        while url:
            page = ok(office.get(url))
            pages.append([row["id"] for row in page["items"]])
            url = page["next_cursor"] and f"{path}?limit=1&cursor={page['next_cursor']}"
        assert pages == [[i] for i in whole], path  # no empty page after the last
        assert ok(office.get(f"{path}?limit={len(whole)}"))["next_cursor"] is None, path


# --- the county of work above a county --------------------------------------------------------

WUZHONG = "320506000000"  # a second county of the city (吴中区)
WZ_TOWNSHIP, WZ_COMMUNITY = "320506001000", "320506001001"
WZ1 = WZ_COMMUNITY + "001"


def test_work_over_a_city_lies_in_counties(client, factory, people, accounts, engine):
    """A campaign or a task over a city carried the city's code as its county ("320500"),
    and the items of a city-wide campaign the campaign's, whatever county their house was
    in: the county code the task export shows and the tables are distributed by named no
    county. Each task and item is in its grid's county; the campaign and a task at the
    city's level in a county under the city."""
    rows = [
        {"code": WUZHONG, "name": "吴中区"},
        {"code": WZ_TOWNSHIP, "name": "长桥街道", "boundary": rectangle(10, 0, 12, 1)},
        {"code": WZ_COMMUNITY, "name": "龙桥社区", "boundary": rectangle(10, 0, 12, 1)},
    ]
    ok(client.post("/api/v1/regions/import", json=rows))
    factory.grid_version(collection(feature(WZ1, rectangle(10, 0, 12, 1))))
    house(client, A1, "rented", "平江路1号")
    house(client, WZ1, "rented", "龙桥路2号")
    city = accounts.client("city", "city_centre", scope_region=CITY)
    body = {"title": "出租房屋大排查", "region": CITY, "due_in": SOON, "item_scope": "houses"}
    made = ok(city.post("/api/v1/campaigns", json=body), 201)
    assert made["fan_out"]["tasks"] == 5 and made["fan_out"]["items"] == 2
    assert made["county_code"] == "320506"  # the county of its first grid, not "320500"
    tasks = campaign_tasks(city, made["id"])
    assert {g: t["county_code"] for g, t in tasks.items()} == {
        A1: "320508",
        A2: "320508",
        B1: "320508",
        B2: "320508",
        WZ1: "320506",
    }
    with engine.connect() as conn:
        items = conn.execute(
            text(
                "SELECT t.grid_code, i.county_code FROM task_items i"
                " JOIN tasks t ON t.id = i.task_id ORDER BY t.grid_code"
            )
        ).all()
    assert [tuple(r) for r in items] == [(WZ1, "320506"), (A1, "320508")]
    task = new_task(city, region=CITY)
    assert (task["region"]["code"], task["county_code"]) == (CITY, "320506")
    # Below a county, as before: the region's own county.
    assert new_task(city, region=TOWNSHIP)["county_code"] == "320508"


def test_a_worker_given_a_task_is_notified_as_for_a_case(people, engine):
    """A case dispatched to a worker queues a notification for them; a task given to them
    (by hand, by a campaign's fan-out, by a reassignment) queued nothing, so the delivery
    channels never told them. Each queues one now, for the account it went to, in the
    task's county; a task for the grid alone (nobody on it) tells nobody."""
    office, ids = people["office"], people["ids"]
    given = new_task(office, title="走访独居老人", assignee_id=ids["worker1"])
    made = ok(
        office.post(
            "/api/v1/campaigns", json={"title": "消防大排查", "region": TOWNSHIP, "due_in": SOON}
        ),
        201,
    )
    tasks = campaign_tasks(office, made["id"])
    ok(step(office, given["id"], "reassign", {"assignee_id": ids["worker2"]}))
    ok(step(office, tasks[B2]["id"], "reassign", {"assignee_id": ids["worker3"]}))
    ok(step(office, tasks[A1]["id"], "reassign", {"assignee_id": None}))  # to the grid
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT task_id, user_id, county_code, message FROM notifications"
                " WHERE task_id IS NOT NULL ORDER BY id"
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (given["id"], ids["worker1"], "320508", "任务「走访独居老人」派给您"),
        (tasks[A1]["id"], ids["worker1"], "320508", "任务「消防大排查」派给您"),
        (tasks[A2]["id"], ids["worker2"], "320508", "任务「消防大排查」派给您"),
        (tasks[B1]["id"], ids["worker3"], "320508", "任务「消防大排查」派给您"),
        (given["id"], ids["worker2"], "320508", "任务「走访独居老人」派给您"),
        (tasks[B2]["id"], ids["worker3"], "320508", "任务「消防大排查」派给您"),
    ]


# --- calendar edits ---------------------------------------------------------------------------


def _calendar(app):  # type: ignore[no-untyped-def]
    st = app.extensions["gridapi"]
    with st.sessions() as session:
        return working_calendar(session, st.settings.working_hours, st.settings.timezone)


def _webhook_events(engine, task_id: int) -> list[str]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT event_type FROM webhook_events WHERE task_id = :t ORDER BY id"),
                {"t": task_id},
            ).scalars()
        )


def test_a_calendar_edit_moves_the_deadlines_of_tasks_given_in_working_time(
    people, client, app, engine
):
    """The day a task given 1 working day falls due on becomes a holiday: the task is now
    due a working day later, with a new version, an audit row and a webhook event, as a
    case's deadline moves. A task given that moment itself, one made before the length was
    kept, one completed and one already overdue keep theirs; back to a working day, the
    deadline comes back."""
    office, worker1 = people["office"], people["worker1"]
    one_day = {"amount": 1, "unit": "days"}
    moving = new_task(office, title="走访", grid=A1, due_in=one_day)
    assert moving["due_in"] == one_day
    due = when(moving["due_at"])
    moment = new_task(office, grid=A1, due_at=moving["due_at"])
    assert moment["due_in"] is None
    older = new_task(office, grid=A2, due_in=one_day)
    done = new_task(office, grid=A1, due_in=one_day)
    late = new_task(office, grid=A2, due_in=one_day)
    campaign = ok(
        office.post(
            "/api/v1/campaigns",
            json={"title": "排查", "region": COMMUNITY_B, "due_in": one_day},
        ),
        201,
    )
    fanned = campaign_tasks(office, campaign["id"])  # B1's and B2's
    ok(step(worker1, done["id"], "complete", {}))
    with engine.begin() as conn:
        # A task made before 0050 kept nothing; a task flagged overdue (as if by the job).
        conn.execute(
            update(Task)
            .where(Task.id == older["id"])
            .values(due_in_amount=None, due_in_unit=None, due_in_from=None)
        )
        conn.execute(
            update(Task)
            .where(Task.id == late["id"])
            .values(overdue=True, overdue_since=due, version=Task.version + 1)
        )
    kept = (moment, older, done, late)
    before = {t["id"]: ok(office.get(f"/api/v1/tasks/{t['id']}")) for t in kept}
    events = {t["id"]: _webhook_events(engine, t["id"]) for t in (*kept, moving)}

    day = due.astimezone(SHANGHAI).date()
    answer = ok(client.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    # The answer says how many moved: this one and the campaign's two, and the campaign.
    assert (answer["cases_moved"], answer["tasks_moved"], answer["campaigns_moved"]) == (0, 3, 1)
    expected = add_limit(_calendar(app), when(moving["created_at"]), 1, "days")
    assert expected > due
    after = ok_response(office.get(f"/api/v1/tasks/{moving['id']}"))
    body = after.get_json()
    assert when(body["due_at"]) == expected and body["overdue"] is False
    assert body["version"] == moving["version"] + 1
    assert after.headers["ETag"] == f'"{moving["id"]}-{moving["version"] + 1}"'
    for t in fanned.values():
        assert when(ok(office.get(f"/api/v1/tasks/{t['id']}"))["due_at"]) == expected
    assert {t["id"]: ok(office.get(f"/api/v1/tasks/{t['id']}")) for t in kept} == before
    assert {t["id"]: _webhook_events(engine, t["id"]) for t in kept} == {
        i: e for i, e in events.items() if i != moving["id"]
    }
    assert _webhook_events(engine, moving["id"]) == [*events[moving["id"]], "task.deadline_moved"]
    rows = [r for r in audit_rows(engine, "task.deadline_moved") if r[0] == str(moving["id"])]
    assert len(rows) == 1
    (_, actor, region, summary) = rows[0]
    assert actor == f"user:{people['ids']['admin']}"  # the admin who set the day
    assert region == COMMUNITY_A
    assert when(summary["due_before"]) == due and when(summary["due_at"]) == expected
    moved_ids = {int(r[0]) for r in audit_rows(engine, "task.deadline_moved")}
    assert moved_ids == {moving["id"], *(t["id"] for t in fanned.values())}

    # Returned to a working day, the deadline comes back.
    assert client.delete(f"/api/v1/calendar/{day}").status_code == 204
    back = ok(office.get(f"/api/v1/tasks/{moving['id']}"))
    assert when(back["due_at"]) == add_limit(_calendar(app), when(moving["created_at"]), 1, "days")
    if day.weekday() < 5:  # not a 调休 Saturday: the deadline it had
        assert when(back["due_at"]) == due
    assert back["version"] == moving["version"] + 2


def test_a_reassignment_keeps_the_kind_of_deadline_it_gives(people, client, app):
    """A task given working time, reassigned with a moment, keeps that moment through a
    calendar edit; one reassigned with working time moves, counted from the reassignment."""
    office, ids = people["office"], people["ids"]
    fixed = new_task(office, grid=A1, due_in=SOON)
    counted = new_task(office, grid=A1, due_at=(datetime.now(UTC) + timedelta(days=30)).isoformat())
    one_day = {"amount": 1, "unit": "days"}
    fixed = ok(
        step(
            office,
            fixed["id"],
            "reassign",
            {"assignee_id": ids["worker1"], "due_at": counted["due_at"]},
        )
    )
    counted = ok(
        step(office, counted["id"], "reassign", {"assignee_id": ids["worker1"], "due_in": one_day})
    )
    assert (fixed["due_in"], counted["due_in"]) == (None, one_day)
    day = when(counted["due_at"]).astimezone(SHANGHAI).date()
    other = when(fixed["due_at"]).astimezone(SHANGHAI).date()
    for d in (day, other):
        ok(client.put(f"/api/v1/calendar/{d}", json={"kind": "holiday"}))
    assert ok(office.get(f"/api/v1/tasks/{fixed['id']}"))["due_at"] == fixed["due_at"]
    assert (
        when(ok(office.get(f"/api/v1/tasks/{counted['id']}"))["due_at"])
        == add_limit(_calendar(app), when(counted["updated_at"]), 1, "days")
        > when(counted["due_at"])
    )


def test_a_calendar_edit_does_not_make_a_task_overdue(people, client, app, engine):
    """A holiday removed that a task counted: counted again, its deadline would already
    have passed. It stays as it was (nobody was warned of the earlier one)."""
    office = people["office"]
    task = new_task(office, grid=A1, due_in={"amount": 1, "unit": "days"})
    now = datetime.now(UTC)
    start = (now - timedelta(days=20)).astimezone(SHANGHAI)
    past = [
        start.date() + timedelta(days=n)
        for n in range(1, (now.astimezone(SHANGHAI).date() - start.date()).days + 1)
        if (start.date() + timedelta(days=n)).weekday() < 5
    ]
    for day in past:  # every weekday since the start, today too, a holiday
        ok(client.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    due = add_limit(_calendar(app), start, 1, "days")
    assert due > now
    with engine.begin() as conn:
        conn.execute(
            update(Task)
            .where(Task.id == task["id"])
            .values(due_in_from=start, due_at=due, version=Task.version + 1)
        )
    before = ok(office.get(f"/api/v1/tasks/{task['id']}"))
    assert client.delete(f"/api/v1/calendar/{past[0]}").status_code == 204
    assert ok(office.get(f"/api/v1/tasks/{task['id']}")) == before
    assert audit_rows(engine, "task.deadline_moved") == []


def test_a_calendar_import_by_the_command_line_moves_task_deadlines(
    people, app, database_url, settings, tmp_path
):
    """`gridapi calendar import`: the task and campaign deadlines the notice changes move in
    its transaction, and the command says how many of each."""
    office = people["office"]
    task = new_task(office, grid=A1, due_in={"amount": 1, "unit": "days"})
    campaign = _campaign(office, COMMUNITY_B, due_in={"amount": 1, "unit": "days"})
    due = when(task["due_at"])
    day = due.astimezone(SHANGHAI).date()
    assert when(campaign["due_at"]).astimezone(SHANGHAI).date() == day
    cal = _calendar(app)
    year = {
        "holidays": [str(d) for d in sorted(cal.holidays) if d.year == day.year] + [str(day)],
        "workdays": [str(d) for d in sorted(cal.workdays) if d.year == day.year],
    }
    path = tmp_path / "notice.json"
    path.write_text(json.dumps({"version": 1, "years": {str(day.year): year}}))
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    result = CliRunner().invoke(main, ["calendar", "import", str(path)], env=env)
    assert result.exit_code == 0, result.output
    # The task, the campaign's two (B1, B2) and the campaign.
    assert "3 open task deadline(s) moved; 1 campaign deadline(s) moved" in result.output
    assert when(ok(office.get(f"/api/v1/tasks/{task['id']}"))["due_at"]) > due


def _free_weekend_day(app, start: datetime, due: datetime) -> Any:
    """Return the first Saturday or Sunday after the day of ``start`` and before the day of
    ``due`` that the calendar holds nothing for: worked in exchange, it brings earlier a
    deadline counted in working days across it."""
    cal = _calendar(app)
    day = start.astimezone(SHANGHAI).date() + timedelta(days=1)
    while day < due.astimezone(SHANGHAI).date():
        if day.weekday() >= 5 and day not in cal.holidays and day not in cal.workdays:
            return day
        day += timedelta(days=1)
    raise AssertionError("no free weekend day in the deadline's span")


def _earlier_notices(who: Any) -> list[tuple[int, str]]:
    return [(t, m) for k, t, m in task_notices(who) if k == "deadline_earlier"]


def test_a_deadline_a_calendar_edit_brings_earlier_tells_those_doing_the_task_once(
    people, accounts, client, app
):
    """A Saturday worked in exchange (调休) inside a task's seven working days brings its
    deadline a day earlier: those doing it had planned for the old one, and the phone shows
    the new one only at its next sync. They are told: the assignee, the workers of the grid
    a task is left to, the unit of the community a task is left to; a worker of another
    grid, and the office that issued them, are not. A later deadline (the Saturday given
    back) tells nobody; the same earlier deadline again (an import of the same notice) is
    not told twice."""
    office, worker1, ids = people["office"], people["worker1"], people["ids"]
    partner = accounts.client("partner", "grid_worker", grids=[A1])
    community = accounts.client("community", "community_officer", scope_region=COMMUNITY_A)
    week = {"amount": 7, "unit": "days"}
    assigned = new_task(office, title="走访", assignee_id=ids["worker1"], due_in=week)
    for_grid = new_task(office, title="排查", grid=A1, due_in=week)
    for_region = new_task(office, title="宣传", region=COMMUNITY_A, due_in=week)
    old_due = when(assigned["due_at"])
    saturday = _free_weekend_day(app, when(assigned["created_at"]), old_due)

    answer = ok(client.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
    assert (answer["cases_moved"], answer["tasks_moved"], answer["campaigns_moved"]) == (0, 3, 0)
    moved = {
        t["id"]: when(ok(office.get(f"/api/v1/tasks/{t['id']}"))["due_at"])
        for t in (assigned, for_grid, for_region)
    }
    for t in (assigned, for_grid, for_region):
        expected = add_limit(_calendar(app), when(t["created_at"]), 7, "days")
        assert moved[t["id"]] == expected < when(t["due_at"])
    local = moved[assigned["id"]].astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")

    def told(task: dict[str, Any]) -> tuple[int, str]:
        return (task["id"], f"任务「{task['title']}」的期限因工作日历调整提前至{local}")

    assert _earlier_notices(worker1) == [told(assigned), told(for_grid)]
    assert _earlier_notices(partner) == [told(for_grid)]
    assert _earlier_notices(community) == [told(for_region)]
    assert _earlier_notices(people["worker2"]) == _earlier_notices(office) == []

    # Given back: the deadlines come back, later, and nobody is told.
    assert client.delete(f"/api/v1/calendar/{saturday}").status_code == 204
    assert ok(office.get(f"/api/v1/tasks/{assigned['id']}"))["due_at"] == assigned["due_at"]
    assert len(_earlier_notices(worker1)) == 2
    # The same notice imported: the same earlier deadlines, told once already.
    cal = _calendar(app)
    year = {
        "holidays": [str(d) for d in sorted(cal.holidays) if d.year == saturday.year],
        "workdays": [str(d) for d in sorted(cal.workdays) if d.year == saturday.year]
        + [str(saturday)],
    }
    notice = {"version": 1, "years": {str(saturday.year): year}}
    answer = ok(client.post("/api/v1/calendar/import", json=notice))
    assert (answer["cases_moved"], answer["tasks_moved"], answer["campaigns_moved"]) == (0, 3, 0)
    assert (
        when(ok(office.get(f"/api/v1/tasks/{assigned['id']}"))["due_at"]) == moved[assigned["id"]]
    )
    assert _earlier_notices(worker1) == [told(assigned), told(for_grid)]
    assert _earlier_notices(partner) == [told(for_grid)]
    assert _earlier_notices(community) == [told(for_region)]


def _other_process(app, settings, who: Any) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    """Return another app on the same database (its own calendar cache) and a client of it
    signed in as ``who``."""
    from gridapi import create_app

    other = create_app(settings)
    there = other.test_client()
    there.environ_base["HTTP_AUTHORIZATION"] = who.environ_base["HTTP_AUTHORIZATION"]
    return other, there


def _close(other) -> None:  # type: ignore[no-untyped-def]
    other.extensions["gridapi"].routing.wait_for_rebuild(60)
    other.extensions["gridapi"].engine.dispose()


def test_the_worker_moves_a_task_deadline_counted_on_the_calendar_another_process_held(
    people, client, app, settings, engine
):
    """Another process keeps the calendar it read for GRIDAPI_CALENDAR_CACHE_SECONDS: a task
    given working time there just after an edit got its deadline on the old calendar, and
    the edit, committed before, did not see it. Once the window has passed the worker counts
    it again, as the cases': it moves (a new version, an audit row by the worker, its
    assignee told, the deadline being earlier); a task counted on the new calendar stays; a
    second run does nothing."""
    office, ids = people["office"], people["ids"]
    week = {"amount": 7, "unit": "days"}
    other, there = _other_process(app, settings, office)
    try:
        # The other process reads the calendar, and keeps it.
        first = new_task(there, title="走访", assignee_id=ids["worker1"], due_in=week)
        saturday = _free_weekend_day(app, when(first["created_at"]), when(first["due_at"]))
        ok(client.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
        moved_by_edit = ok(office.get(f"/api/v1/tasks/{first['id']}"))
        stale = new_task(there, title="排查", assignee_id=ids["worker2"], due_in=week)
    finally:
        _close(other)
    fresh = new_task(office, grid=A1, due_in=week)  # this process: the new calendar
    expected = add_limit(_calendar(app), when(stale["created_at"]), 7, "days")
    assert when(stale["due_at"]) > expected  # counted on the old calendar
    assert when(fresh["due_at"]) == add_limit(_calendar(app), when(fresh["created_at"]), 7, "days")
    kept = {t["id"]: ok(office.get(f"/api/v1/tasks/{t['id']}")) for t in (first, fresh)}
    assert kept[first["id"]] == moved_by_edit
    assert _earlier_notices(people["worker2"]) == []

    later = datetime.now(UTC) + timedelta(minutes=2)
    results = run_jobs(engine, later, jobs=["calendar"])
    assert [(r.name, r.counts) for r in results] == [("calendar", {"moved": 0, "tasks_moved": 1})]
    after = ok(office.get(f"/api/v1/tasks/{stale['id']}"))
    assert when(after["due_at"]) == expected and after["version"] == stale["version"] + 1
    assert {t: ok(office.get(f"/api/v1/tasks/{t}")) for t in kept} == kept
    rows = [r for r in audit_rows(engine, "task.deadline_moved") if r[0] == str(stale["id"])]
    assert [(r[1], when(r[3]["due_before"]), when(r[3]["due_at"])) for r in rows] == [
        ("system:worker", when(stale["due_at"]), expected)
    ]
    local = expected.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M")
    told = [(stale["id"], f"任务「排查」的期限因工作日历调整提前至{local}")]
    assert _earlier_notices(people["worker2"]) == told

    # Done once: a second run (or a second worker) moves nothing, tells nobody again.
    again = run_jobs(engine, later + timedelta(minutes=1), jobs=["calendar"])
    assert again[0].counts == {"moved": 0, "tasks_moved": 0}
    assert ok(office.get(f"/api/v1/tasks/{stale['id']}")) == after
    assert _earlier_notices(people["worker2"]) == told


@pytest.mark.engines("postgis")
def test_two_workers_at_once_count_a_stale_task_deadline_again_once(people, client, app, settings):
    """Two workers finish the same calendar edit at once: the first holds the edit, the
    second skips it (and moves nothing); the task moves once, its assignee is told once."""
    from gridapi.services.calendar import recount_after_cache

    office, ids = people["office"], people["ids"]
    week = {"amount": 7, "unit": "days"}
    other, there = _other_process(app, settings, office)
    try:
        first = new_task(there, assignee_id=ids["worker1"], due_in=week)
        saturday = _free_weekend_day(app, when(first["created_at"]), when(first["due_at"]))
        ok(client.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
        stale = new_task(there, title="排查", assignee_id=ids["worker2"], due_in=week)
    finally:
        _close(other)
    st = app.extensions["gridapi"]
    hours, zone = st.settings.working_hours, st.settings.timezone
    later = datetime.now(UTC) + timedelta(minutes=2)
    with st.sessions.begin() as one:
        assert recount_after_cache(one, hours, zone, later).tasks == [stale["id"]]
        with st.sessions.begin() as two:
            two.execute(text("SET LOCAL lock_timeout = '3s'"))
            assert recount_after_cache(two, hours, zone, later).tasks == []
    with st.sessions.begin() as again:
        assert recount_after_cache(again, hours, zone, later).tasks == []
    assert ok(office.get(f"/api/v1/tasks/{stale['id']}"))["version"] == stale["version"] + 1
    assert len(_earlier_notices(people["worker2"])) == 1


def _campaign(office, region: str, **deadline: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return ok(
        office.post("/api/v1/campaigns", json={"title": "排查", "region": region, **deadline}), 201
    )


def test_a_calendar_edit_moves_a_campaign_given_working_time_with_its_tasks(
    people, client, app, engine
):
    """The day a campaign given 1 working day falls due on becomes a holiday: its tasks are
    due a working day later, and so is the campaign (a new version, an audit row
    ``campaign.deadline_moved``), whose view shows the deadline its tasks show. A campaign
    given that moment itself, and a cancelled one, keep theirs; back to a working day, the
    deadline comes back."""
    office = people["office"]
    one_day = {"amount": 1, "unit": "days"}
    counted = _campaign(office, COMMUNITY_B, due_in=one_day)
    assert counted["due_in"] == one_day
    due = when(counted["due_at"])
    moment = _campaign(office, COMMUNITY_A, due_at=counted["due_at"])
    assert moment["due_in"] is None
    dropped = _campaign(office, COMMUNITY_A, due_in=one_day)
    etag = etag_of(office, dropped["id"], "campaigns")
    url = f"/api/v1/campaigns/{dropped['id']}/cancel"
    ok(office.post(url, json={"reason": "上级取消"}, headers={"If-Match": etag}))
    kept = {c["id"]: ok(office.get(f"/api/v1/campaigns/{c['id']}")) for c in (moment, dropped)}

    day = due.astimezone(SHANGHAI).date()
    answer = ok(client.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    assert answer["tasks_moved"] == 2  # the counted campaign's, on B1 and B2
    assert answer["campaigns_moved"] == 1  # the counted campaign; not the moment, not dropped
    expected = add_limit(_calendar(app), when(counted["created_at"]), 1, "days")
    assert expected > due
    after = ok_response(office.get(f"/api/v1/campaigns/{counted['id']}"))
    body = after.get_json()
    tasks = campaign_tasks(office, counted["id"]).values()
    assert {when(t["due_at"]) for t in tasks} == {when(body["due_at"])} == {expected}
    assert body["due_in"] == one_day and body["status"] == "active"
    assert body["version"] == counted["version"] + 1
    assert after.headers["ETag"] == f'"{counted["id"]}-{counted["version"] + 1}"'
    assert {c: ok(office.get(f"/api/v1/campaigns/{c}")) for c in kept} == kept
    assert {t["due_at"] for t in campaign_tasks(office, moment["id"]).values()} == {
        moment["due_at"]
    }
    [(campaign_id, actor, region, summary)] = audit_rows(engine, "campaign.deadline_moved")
    assert (campaign_id, actor, region) == (
        str(counted["id"]),
        f"user:{people['ids']['admin']}",
        COMMUNITY_B,
    )
    assert when(summary["due_before"]) == due and when(summary["due_at"]) == expected

    # Returned to a working day, the deadline comes back, with its tasks'.
    assert client.delete(f"/api/v1/calendar/{day}").status_code == 204
    back = ok(office.get(f"/api/v1/campaigns/{counted['id']}"))
    tasks = campaign_tasks(office, counted["id"]).values()
    assert {when(t["due_at"]) for t in tasks} == {when(back["due_at"])}
    assert when(back["due_at"]) == add_limit(_calendar(app), when(counted["created_at"]), 1, "days")
    assert back["version"] == counted["version"] + 2
    assert len(audit_rows(engine, "campaign.deadline_moved")) == 2


def test_the_worker_moves_a_campaign_deadline_counted_on_the_calendar_another_process_held(
    people, client, app, settings, engine
):
    """A campaign given working time in another process just after an edit was counted on
    the calendar that process still held, its tasks too: once the window has passed the
    worker counts them again, the campaign with its tasks (an audit row by the worker); a
    second run does nothing."""
    office = people["office"]
    week = {"amount": 7, "unit": "days"}
    other, there = _other_process(app, settings, office)
    try:
        first = new_task(there, assignee_id=people["ids"]["worker1"], due_in=week)
        saturday = _free_weekend_day(app, when(first["created_at"]), when(first["due_at"]))
        ok(client.put(f"/api/v1/calendar/{saturday}", json={"kind": "workday"}))
        stale = _campaign(there, COMMUNITY_B, due_in=week)
    finally:
        _close(other)
    expected = add_limit(_calendar(app), when(stale["created_at"]), 7, "days")
    assert when(stale["due_at"]) > expected  # counted on the old calendar

    later = datetime.now(UTC) + timedelta(minutes=2)
    results = run_jobs(engine, later, jobs=["calendar"])
    assert results[0].counts == {"moved": 0, "tasks_moved": 2}
    after = ok(office.get(f"/api/v1/campaigns/{stale['id']}"))
    tasks = campaign_tasks(office, stale["id"]).values()
    assert {when(t["due_at"]) for t in tasks} == {when(after["due_at"])} == {expected}
    assert after["version"] == stale["version"] + 1
    rows = audit_rows(engine, "campaign.deadline_moved")
    assert [(r[0], r[1], when(r[3]["due_before"]), when(r[3]["due_at"])) for r in rows] == [
        (str(stale["id"]), "system:worker", when(stale["due_at"]), expected)
    ]

    again = run_jobs(engine, later + timedelta(minutes=1), jobs=["calendar"])
    assert again[0].counts == {"moved": 0, "tasks_moved": 0}
    assert ok(office.get(f"/api/v1/campaigns/{stale['id']}")) == after


def test_a_task_or_campaign_sent_again_with_its_key_is_made_once(people, engine):
    """POST /tasks and /campaigns dropped the Idempotency-Key: an office on a bad network
    that sent a campaign again made every task, notice and webhook event of it twice."""
    office, ids = people["office"], people["ids"]

    def count(table: str) -> int:
        with engine.connect() as conn:
            return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()

    body = {"title": "检查", "assignee_id": ids["worker1"], "due_in": SOON}
    first = office.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "t-1"})
    assert first.status_code == 201, first.get_json()
    again = office.post("/api/v1/tasks", json=body, headers={"Idempotency-Key": "t-1"})
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.data == first.data and again.headers["ETag"] == first.headers["ETag"]
    other = office.post(
        "/api/v1/tasks", json={**body, "title": "另一件"}, headers={"Idempotency-Key": "t-1"}
    )
    assert other.status_code == 422, other.get_json()
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert count("tasks") == 1

    sweep = {"title": "大排查", "region": TOWNSHIP, "due_in": SOON}
    made = office.post("/api/v1/campaigns", json=sweep, headers={"Idempotency-Key": "c-1"})
    assert made.status_code == 201, made.get_json()
    tasks = count("tasks")
    assert tasks == 1 + made.get_json()["fan_out"]["tasks"]
    resent = office.post("/api/v1/campaigns", json=sweep, headers={"Idempotency-Key": "c-1"})
    assert resent.status_code == 201 and resent.headers["Idempotent-Replayed"] == "true"
    assert resent.data == made.data
    assert (count("campaigns"), count("tasks")) == (1, tasks)
    # without a key, each request is a new one, as before
    assert office.post("/api/v1/tasks", json=body).status_code == 201
    assert count("tasks") == tasks + 1


def test_an_office_extends_a_task_without_giving_it_away(people):
    """A new deadline came only with a new assignee: to extend an overdue task an office
    gave it away and back, and the worker's acceptance was lost. The same assignee with a
    new deadline changes the deadline alone; without one it is still refused."""
    office, worker1, ids = people["office"], people["worker1"], people["ids"]
    task = new_task(office, assignee_id=ids["worker1"])
    accepted = ok(step(worker1, task["id"], "accept"))
    later = {"amount": 10, "unit": "days"}
    r = step(office, task["id"], "reassign", {"assignee_id": ids["worker1"], "due_in": later})
    extended = ok(r)
    assert extended["assignee"]["id"] == ids["worker1"] and extended["status"] == "accepted"
    assert extended["accepted_at"] == accepted["accepted_at"]
    assert extended["due_at"] > task["due_at"]
    assert extended["version"] == accepted["version"] + 1
    same = step(office, task["id"], "reassign", {"assignee_id": ids["worker1"]})
    assert same.status_code == 422, same.get_json()
    assert "assignee_id" in same.get_json()["errors"]["json"]


def test_an_app_reads_the_tasks_and_campaigns_of_its_area(app, client, people):
    """A city system may be given tasks:read (it could not): it lists and reads the tasks
    and campaigns of its area and exports them, as an office's account would; a task
    outside its area answers as one that does not exist. It has no tasks of its own:
    /me/tasks is a 403 saying where to look, and a sync keeps none, not even one given to
    its region without a grid (which a sync keeps for the unit of that region)."""
    from .test_sync import Phone

    office = people["office"]
    in_a = new_task(office, grid=A1)
    in_b = new_task(office, grid=B1)
    to_region = new_task(office, region=COMMUNITY_A)
    body = {"title": "消防排查", "region": COMMUNITY_A, "due_in": SOON}
    campaign = ok(office.post("/api/v1/campaigns", json=body), 201)
    key = ok(
        client.post(
            "/api/v1/clients",
            json={
                "name": "城运中心",
                "scopes": ["cases:read", "tasks:read"],
                "scope_region": COMMUNITY_A,
            },
        ),
        201,
    )["api_key"]
    city = app.test_client()
    city.environ_base["HTTP_X_API_KEY"] = key
    listed = {t["id"] for t in ok(city.get("/api/v1/tasks?limit=100"))["items"]}
    assert {in_a["id"], to_region["id"]} <= listed and in_b["id"] not in listed
    assert ok(city.get(f"/api/v1/tasks/{in_a['id']}"))["title"] == "走访独居老人"
    assert city.get(f"/api/v1/tasks/{in_b['id']}").status_code == 404
    assert ok(city.get(f"/api/v1/campaigns/{campaign['id']}"))["id"] == campaign["id"]
    mine = city.get("/api/v1/me/tasks")
    assert mine.status_code == 403 and "GET /api/v1/tasks" in mine.get_json()["message"]
    exported = city.get("/api/v1/exports/tasks?format=csv")
    assert exported.status_code == 200
    assert exported.get_data(as_text=True).count("\n") == len(listed) + 1  # header + rows
    phone = Phone(city)
    phone.pull()
    assert phone.ids("task") == set()
    # Granted nothing it does not need: a step on a task is still refused.
    assert step(city, in_a["id"], "cancel", {"reason": "x"}).status_code == 403
