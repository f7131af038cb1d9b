"""GET /api/v1/me/notifications: what the workflow and the worker queued for a person."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from gridapi.models.base import utcnow
from gridapi.services.jobs import run_jobs

from ..factories import COMMUNITY_B, COUNTY
from .test_case_workflow import desk, ok  # noqa: F401  (the fixture)

B1 = COMMUNITY_B + "001"
SOON = {"amount": 3, "unit": "days"}


def inbox(who: Any, after: int = 0, about: str | None = None) -> dict[str, Any]:
    query = f"after={after}" + (f"&about={about}" if about else "")
    return ok(who.get(f"/api/v1/me/notifications?{query}"))


def kinds(who: Any) -> list[tuple[str, int]]:
    return [(n["kind"], n["case_id"]) for n in inbox(who)["items"]]


def test_a_person_reads_their_own_and_their_units_notifications(desk):  # noqa: F811
    """A dispatch reaches the worker's inbox; an extension asked reaches the office of the
    unit holding the case (scope region exactly that unit), not the county centre above
    it; an escalation reaches the county's. The inbox is a feed after the last id."""
    d = desk
    case = d.report()
    cid, number = case["id"], case["number"]
    assert inbox(d.worker) == {"items": [], "last_id": None}
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    first = inbox(d.worker)
    (item,) = first["items"]
    assert (item["kind"], item["case_id"], item["case_number"]) == ("dispatched", cid, number)
    assert item["message"] == f"事件 {number} 派遣给您" and item["created_at"]
    assert first["last_id"] == item["id"]
    assert inbox(d.worker, after=first["last_id"]) == {"items": [], "last_id": None}

    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "request_extension", amount=1, unit_of_time="days", comment="材料未到")
    assert kinds(d.office) == [("extension_requested", cid)]
    assert kinds(d.county) == []  # the office above is not the unit asked
    d.act(d.office, cid, "escalate", comment="需区级协调")
    assert kinds(d.county) == [("escalated", cid)]
    assert kinds(d.worker) == [("dispatched", cid)]


def test_an_overdue_or_supervision_notice_reaches_the_assignee_and_the_unit(desk, app):  # noqa: F811
    """Overdue and supervision notices are one row addressed to the assignee and to the unit
    holding the case: the unit's members read only rows addressed to no account, so the
    office never heard that its case was overdue or supervised. Both read it now, once."""
    d = desk
    cid = d.to_handling(d.report()["id"])["id"]
    d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    assert kinds(d.worker) == [("dispatched", cid), ("supervision_yellow", cid)]
    assert kinds(d.office) == [("supervision_yellow", cid)]

    later = utcnow() + timedelta(days=30)
    run_jobs(app.extensions["gridapi"].sessions, later, jobs=["overdue"])
    assert kinds(d.worker)[2:] == [("overdue", cid)]
    assert kinds(d.office) == [("supervision_yellow", cid), ("overdue", cid)]
    assert kinds(d.county) == []  # the office above is not the unit holding it
    # A second run queues nothing more; the feed after the office's last id is empty.
    run_jobs(app.extensions["gridapi"].sessions, later, jobs=["overdue"])
    last = inbox(d.office)["last_id"]
    assert inbox(d.office, after=last) == {"items": [], "last_id": None}
    assert len(kinds(d.office)) == 2


def test_notifications_of_a_case_out_of_reach_are_not_listed(desk):  # noqa: F811
    """A sensitive case dispatched to a worker, then returned: the worker no longer reads
    it, and its notification is not listed (the case answers 404 to them)."""
    d = desk
    assert d.admin.patch("/api/v1/categories/0101", json={"sensitive": True}).status_code == 200
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    assert kinds(d.worker) == [("dispatched", cid)]
    d.act(d.worker, cid, "return", comment="不属于本网格")
    assert d.worker.get(f"/api/v1/cases/{cid}").status_code == 404
    assert inbox(d.worker) == {"items": [], "last_id": None}


def test_a_worker_reads_the_notices_of_their_tasks_when_asking_for_them(desk):  # noqa: F811
    """A task given to a worker queued a notification nothing listed: the inbox joined
    every notification to its case. They are listed now when asked (``about=task``, or
    ``case,task`` for both in one feed), naming the task and no case; without ``about`` the
    inbox is as it was, every item naming a case."""
    d = desk
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    body = {"title": "走访独居老人", "assignee_id": d.id("worker"), "due_in": SOON}
    task = ok(d.office.post("/api/v1/tasks", json=body), 201)

    assert kinds(d.worker) == [("dispatched", cid)]  # as before: only cases'
    assert all(i["case_id"] is not None for i in inbox(d.worker)["items"])
    tasks = inbox(d.worker, about="task")
    (item,) = tasks["items"]
    assert {k: v for k, v in item.items() if k not in ("id", "created_at")} == {
        "kind": "task_assigned",
        "about": "task",
        "case_id": None,
        "case_number": None,
        "task_id": task["id"],
        "task_title": "走访独居老人",
        "message": "任务「走访独居老人」派给您",
    }
    assert tasks["last_id"] == item["id"]
    both = inbox(d.worker, about="case,task")
    assert [(i["about"], i["case_id"], i["task_id"]) for i in both["items"]] == [
        ("case", cid, None),
        ("task", None, task["id"]),
    ]
    # What the phone has read lies up to the last id: nothing comes after it.
    assert inbox(d.worker, after=both["last_id"], about="case,task") == {
        "items": [],
        "last_id": None,
    }
    assert inbox(d.office, about="case,task")["items"] == []  # the worker's, not the office's
    wrong = d.worker.get("/api/v1/me/notifications?about=tasks")
    assert wrong.status_code == 422 and list(wrong.get_json()["errors"]["query"]) == ["about"]


def test_the_notice_of_a_task_handed_out_of_reach_is_not_listed(desk, accounts):  # noqa: F811
    """A task handed to a worker of another grid: the first worker no longer reads it (404),
    and its notice to them is not listed, as a case's."""
    d = desk
    other = accounts.client("other", "grid_worker", grids=[B1])
    body = {"title": "走访独居老人", "assignee_id": d.id("worker"), "due_in": SOON, "grid": B1}
    task = ok(d.office.post("/api/v1/tasks", json=body), 201)
    assert [i["task_id"] for i in inbox(d.worker, about="task")["items"]] == [task["id"]]
    etag = d.office.get(f"/api/v1/tasks/{task['id']}").headers["ETag"]
    moved = d.office.post(
        f"/api/v1/tasks/{task['id']}/reassign",
        json={"assignee_id": accounts.ids["other"]},
        headers={"If-Match": etag},
    )
    assert moved.status_code == 200, moved.get_json()
    assert d.worker.get(f"/api/v1/tasks/{task['id']}").status_code == 404
    assert inbox(d.worker, about="task") == {"items": [], "last_id": None}
    assert [i["task_id"] for i in inbox(other, about="task")["items"]] == [task["id"]]


def test_apps_subscribe_to_webhooks_instead(desk, accounts):  # noqa: F811
    d = desk
    key = ok(
        d.admin.post(
            "/api/v1/clients",
            json={"name": "12345热线", "scopes": ["cases:read"], "scope_region": COUNTY},
        ),
        201,
    )["api_key"]
    app = d.admin.application.test_client()
    r = app.get("/api/v1/me/notifications", headers={"X-API-Key": key})
    assert r.status_code == 403
    assert "webhooks" in r.get_json()["message"]
    assert app.get("/api/v1/me/notifications").status_code == 401
