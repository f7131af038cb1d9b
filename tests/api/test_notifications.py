"""GET /api/v1/me/notifications: what the workflow and the worker queued for a person."""

from __future__ import annotations

from typing import Any

from ..factories import COUNTY
from .test_case_workflow import desk, ok  # noqa: F401  (the fixture)


def inbox(who: Any, after: int = 0) -> dict[str, Any]:
    return ok(who.get(f"/api/v1/me/notifications?after={after}"))


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
