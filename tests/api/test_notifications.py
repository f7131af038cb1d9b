"""GET /api/v1/me/notifications: what the workflow and the worker queued for a person."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gridapi.models.base import utcnow
from gridapi.services.jobs import run_jobs

from ..factories import COMMUNITY_B, COUNTY, TOWNSHIP
from .test_case_workflow import desk, ok  # noqa: F401  (the fixture)

B1 = COMMUNITY_B + "001"
SOON = {"amount": 3, "unit": "days"}
#: An inbox with nothing after ``after``, nothing marked read and nothing unread.
NOTHING = {"items": [], "last_id": None, "read_up_to": 0, "unread": 0}


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
    assert inbox(d.worker) == NOTHING
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    first = inbox(d.worker)
    (item,) = first["items"]
    assert (item["kind"], item["case_id"], item["case_number"]) == ("dispatched", cid, number)
    assert item["message"] == f"事件 {number} 派遣给您" and item["created_at"]
    assert first["last_id"] == item["id"]
    # Listing moves no mark: the notice is still unread on the server.
    assert inbox(d.worker, after=first["last_id"]) == {**NOTHING, "unread": 1}

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
    assert inbox(d.office, after=last) == {**NOTHING, "unread": 2}
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
    assert inbox(d.worker) == NOTHING


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
        "sent_at": None,
    }
    assert tasks["last_id"] == item["id"]
    both = inbox(d.worker, about="case,task")
    assert [(i["about"], i["case_id"], i["task_id"]) for i in both["items"]] == [
        ("case", cid, None),
        ("task", None, task["id"]),
    ]
    # Nothing comes after the last id; both are unread until marked.
    assert inbox(d.worker, after=both["last_id"], about="case,task") == {**NOTHING, "unread": 2}
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
    assert inbox(d.worker, about="task") == NOTHING
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
    # Nor has an app a read mark.
    mark = app.put("/api/v1/me/notifications/read", json={"up_to": 1}, headers={"X-API-Key": key})
    assert mark.status_code == 403 and "webhooks" in mark.get_json()["message"]
    assert app.put("/api/v1/me/notifications/read", json={"up_to": 1}).status_code == 401


# --- the read mark kept on the server -------------------------------------------------------


def mark(who: Any, up_to: Any, about: str | None = None) -> dict[str, Any]:
    query = f"?about={about}" if about else ""
    return ok(who.put(f"/api/v1/me/notifications/read{query}", json={"up_to": up_to}))


def dispatch(d: Any, col: int = 0) -> int:
    """Report a case in grid A1 (``col``), dispatch it to the worker; return its id."""
    cid = d.report(col=col)["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "dispatch", assignee_id=d.id("worker"))
    return cid


def test_the_read_mark_moves_forward_only_and_every_device_reads_it(desk, accounts):  # noqa: F811
    """There was no mark on the server: a worker who read on the phone saw the notices as
    new on the web. The mark moves to the id sent, never back, the same id twice answers
    the same, and a second device (another sign-in) reads it with the unread count."""
    d = desk
    dispatch(d)
    dispatch(d)
    first, second = (i["id"] for i in inbox(d.worker)["items"])
    assert inbox(d.worker)["read_up_to"] == 0 and inbox(d.worker)["unread"] == 2

    assert mark(d.worker, first) == {"read_up_to": first, "unread": 1}
    assert mark(d.worker, first) == {"read_up_to": first, "unread": 1}  # idempotent
    assert mark(d.worker, 0) == {"read_up_to": first, "unread": 1}  # never backwards
    web = accounts.client("worker")  # the same account on another device
    seen = inbox(web)
    assert (seen["read_up_to"], seen["unread"]) == (first, 1)
    assert [i["id"] for i in inbox(web, after=seen["read_up_to"])["items"]] == [second]

    assert mark(web, second) == {"read_up_to": second, "unread": 0}
    assert mark(d.worker, first) == {"read_up_to": second, "unread": 0}  # the phone, late
    third = dispatch(d)
    after = inbox(d.worker)
    assert (after["read_up_to"], after["unread"]) == (second, 1)  # a new notice is unread
    assert after["items"][-1]["case_id"] == third


def test_the_mark_moves_only_to_a_notification_of_the_caller(desk):  # noqa: F811
    """An id beyond the caller's own (another's notice, or one not yet queued) is clamped to
    the last notification the caller may read at or below it: nobody marks rows they do
    not know of, and what comes later to them is unread."""
    d = desk
    cid = dispatch(d)
    (own,) = (i["id"] for i in inbox(d.worker)["items"])
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "request_extension", amount=1, unit_of_time="days", comment="材料未到")
    (office_notice,) = (i["id"] for i in inbox(d.office)["items"])
    assert office_notice > own

    assert mark(d.worker, office_notice) == {"read_up_to": own, "unread": 0}
    assert mark(d.worker, 2**31 - 1) == {"read_up_to": own, "unread": 0}
    assert inbox(d.office)["read_up_to"] == 0  # the worker's mark is theirs alone
    d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    assert inbox(d.worker)["unread"] == 1
    # Nothing of the office's own lies at or below the worker's id: its mark stays.
    assert mark(d.office, own) == {"read_up_to": 0, "unread": 2}
    assert mark(d.office, 2**31 - 1) == {"read_up_to": inbox(d.office)["last_id"], "unread": 0}


def test_a_units_notice_is_unread_for_each_of_its_members(desk, accounts):  # noqa: F811
    """An extension asked of the township reaches every office member of it: each counts it
    unread until they themselves mark it."""
    d = desk
    colleague = accounts.client("office2", "township_office", scope_region=TOWNSHIP)
    cid = dispatch(d)
    d.act(d.worker, cid, "sign")
    d.act(d.worker, cid, "request_extension", amount=1, unit_of_time="days", comment="材料未到")
    assert inbox(d.office)["unread"] == 1 and inbox(colleague)["unread"] == 1
    (notice,) = (i["id"] for i in inbox(colleague)["items"])
    assert mark(d.office, notice) == {"read_up_to": notice, "unread": 0}
    assert (inbox(colleague)["read_up_to"], inbox(colleague)["unread"]) == (0, 1)
    assert inbox(d.county)["unread"] == 0  # the office above is not the unit asked


def test_unread_counts_only_what_the_list_shows(desk, accounts):  # noqa: F811
    """``unread`` follows the list's rule: a notice of a case the caller may no longer read
    is not counted, nor a task's unless ``about`` names tasks, nor one of a task handed out
    of reach; the mark's answer counts by the ``about`` it is sent."""
    d = desk
    assert d.admin.patch("/api/v1/categories/0101", json={"sensitive": True}).status_code == 200
    cid = dispatch(d)
    assert inbox(d.worker)["unread"] == 1
    d.act(d.worker, cid, "return", comment="不属于本网格")
    assert d.worker.get(f"/api/v1/cases/{cid}").status_code == 404
    assert inbox(d.worker)["unread"] == 0

    other = accounts.client("other", "grid_worker", grids=[B1])
    body = {"title": "走访独居老人", "assignee_id": d.id("worker"), "due_in": SOON, "grid": B1}
    task = ok(d.office.post("/api/v1/tasks", json=body), 201)
    assert inbox(d.worker)["unread"] == 0  # cases' only, as the list
    assert inbox(d.worker, about="task")["unread"] == 1
    assert inbox(d.worker, about="case,task")["unread"] == 1
    assert mark(d.worker, 0, about="task") == {"read_up_to": 0, "unread": 1}
    etag = d.office.get(f"/api/v1/tasks/{task['id']}").headers["ETag"]
    moved = d.office.post(
        f"/api/v1/tasks/{task['id']}/reassign",
        json={"assignee_id": accounts.ids["other"]},
        headers={"If-Match": etag},
    )
    assert moved.status_code == 200, moved.get_json()
    assert d.worker.get(f"/api/v1/tasks/{task['id']}").status_code == 404
    assert inbox(d.worker, about="case,task")["unread"] == 0
    assert inbox(other, about="task")["unread"] == 1


def test_unread_is_counted_up_to_a_thousand(desk, engine):  # noqa: F811
    """A worker with years of notices never marked: the count stops at 1000 (shown
    "999+") rather than counting them all; below the cap it is exact."""
    d = desk
    cid = dispatch(d)
    with engine.begin() as conn:
        county = conn.execute(
            text("SELECT county_code FROM cases WHERE id = :id"), {"id": cid}
        ).scalar_one()
        conn.execute(
            text(
                "INSERT INTO notifications (county_code, case_id, kind, user_id, message,"
                " created_at) VALUES (:county, :cid, :kind, :uid, 'x', :at)"
            ),
            [
                {
                    "county": county,
                    "cid": cid,
                    "kind": f"test:{n}",
                    "uid": d.id("worker"),
                    "at": utcnow(),
                }
                for n in range(1005)
            ],
        )
    assert inbox(d.worker)["unread"] == 1000
    ids = [i["id"] for i in inbox(d.worker, after=0)["items"]]
    assert mark(d.worker, ids[9]) == {"read_up_to": ids[9], "unread": 996}


@pytest.mark.parametrize(
    "body,field,query",
    [
        ({}, "up_to", ""),
        ({"up_to": "5"}, "up_to", ""),
        ({"up_to": 1.5}, "up_to", ""),
        ({"up_to": -1}, "up_to", ""),
        ({"up_to": 2**31}, "up_to", ""),
        ({"up_to": None}, "up_to", ""),
        ({"up_to": 1, "all": True}, "all", ""),
        ({"up_to": 1}, "about", "?about=tasks"),
    ],
)
def test_a_bad_mark_is_422_naming_the_field(desk, body, field, query):  # noqa: F811
    d = desk
    r = d.worker.put(f"/api/v1/me/notifications/read{query}", json=body)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()
    assert set(error) == {"code", "status", "message", "errors"} and error["code"] == 422
    where = "query" if query else "json"
    assert list(error["errors"][where]) == [field]
    assert inbox(d.worker)["read_up_to"] == 0


def test_a_department_reads_its_own_notices_not_its_countys_office(desk, app, engine):  # noqa: F811
    """A county department's region is the county, whose office a notice to the region
    reaches: the fire brigade read every escalation, return and supervision notice of the
    county office, and a notice to the brigade reached the county office. A notice now
    names the department, which its members read, and they no longer read the region's;
    the gateway's queue names the department among the recipients."""
    from .test_notification_queue import gateway

    d = desk
    body = {"code": "FIRE-C", "name": "区消防大队", "region_code": COUNTY}
    brigade = ok(d.admin.post("/api/v1/departments", json=body), 201)["id"]
    member = d.department_member("firefighter", brigade, COUNTY)
    cid = d.report()["id"]
    d.to_filed(cid)
    d.act(d.office, cid, "escalate", comment="需区级协调")
    assert kinds(d.county) == [("escalated", cid)]
    assert kinds(member) == []

    d.act(d.county, cid, "dispatch", department_id=brigade)
    d.act(d.county, cid, "supervise", level="yellow", comment="请加快")
    later = utcnow() + timedelta(days=30)
    run_jobs(app.extensions["gridapi"].sessions, later, jobs=["overdue"])
    assert kinds(member) == [
        ("dispatched", cid),
        ("supervision_yellow", cid),
        ("overdue", cid),
    ]
    # The county office holds the case: it reads its supervision and overdue notices, not
    # the brigade's dispatch.
    assert kinds(d.county) == [("escalated", cid), ("supervision_yellow", cid), ("overdue", cid)]
    d.act(member, cid, "sign")
    d.act(d.county, cid, "supervise", level="red", comment="立即处置")
    # Signed, the member is the handler: told as such, not the whole brigade again.
    assert kinds(member)[-1] == ("supervision_red", cid)
    with engine.connect() as conn:
        red = conn.execute(
            text(
                "SELECT user_id, region_code, department_id FROM notifications"
                " WHERE case_id = :c AND kind LIKE 'supervision_red:%'"
            ),
            {"c": cid},
        ).one()
    assert tuple(red) == (d.id("firefighter"), COUNTY, None)

    queued = ok(gateway(d).get("/api/v1/notifications"))["items"]
    assert [(i["kind"], i["recipients"]) for i in queued if i["kind"] != "escalated"][:2] == [
        ("dispatched", {"user_id": None, "region_code": None, "department_id": brigade}),
        ("supervision_yellow", {"user_id": None, "region_code": COUNTY, "department_id": brigade}),
    ]
    # The webhook event the trigger wrote with each notice names the same recipients.
    with engine.connect() as conn:
        payloads = conn.execute(
            text(
                "SELECT payload FROM webhook_events WHERE event_type = 'notification.created'"
                " AND case_id = :c ORDER BY id"
            ),
            {"c": cid},
        ).scalars()
        events = [p if isinstance(p, dict) else json.loads(p) for p in payloads]
    by_id = {i["notification_id"]: i["recipients"] for i in queued}
    assert [e["recipients"] for e in events] == [by_id[e["notification_id"]] for e in events]
    assert len(events) == 5
