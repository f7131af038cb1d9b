"""A campaign's life as webhook events (revision 0055): created, closed, cancelled, its
deadline moved by a calendar edit; heard only by owners who may read tasks, of their area;
on both engines."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import text

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY
from .test_tasks import A1, A2, SOON, campaign_tasks, etag_of, ok, people, step  # noqa: F401
from .test_webhooks import deliver, receiver, settings  # noqa: F401

EVENTS = ["campaign.created", "campaign.closed", "campaign.cancelled", "campaign.deadline_moved"]
SHANGHAI = ZoneInfo("Asia/Shanghai")


def outbox(engine: Any, campaign_id: int) -> list[tuple[str, dict[str, Any]]]:
    """The campaign's events in the outbox, in order: (type, payload)."""
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT event_type, payload, region_code FROM webhook_events"
                " WHERE ordering_key = :key ORDER BY id"
            ),
            {"key": f"campaign:{campaign_id}"},
        ).all()
    assert all(region for _, _, region in rows)
    return [
        (kind, payload if isinstance(payload, dict) else json.loads(payload))
        for kind, payload, _ in rows
    ]


def test_a_campaign_s_life_is_sent_to_its_subscribers(people, client, app, engine, receiver):  # noqa: F811
    office, worker1, worker2 = people["office"], people["worker1"], people["worker2"]
    sub = ok(client.post("/api/v1/webhooks", json={"url": receiver.url, "events": EVENTS}), 201)
    # Another community's subscription hears of no campaign over A.
    elsewhere = ok(
        client.post(
            "/api/v1/webhooks",
            json={"url": receiver.url, "events": EVENTS, "region_codes": [COMMUNITY_B]},
        ),
        201,
    )

    body = {"title": "燃气安全排查", "region": COMMUNITY_A, "due_in": SOON}
    done = ok(office.post("/api/v1/campaigns", json=body), 201)
    tasks = campaign_tasks(office, done["id"])
    ok(step(worker1, tasks[A1]["id"], "complete", {}))
    ok(step(worker2, tasks[A2]["id"], "complete", {}))  # the last: the campaign closes

    dropped = ok(office.post("/api/v1/campaigns", json=body), 201)
    etag = etag_of(office, dropped["id"], "campaigns")
    url = f"/api/v1/campaigns/{dropped['id']}/cancel"
    ok(office.post(url, json={"reason": "上级取消"}, headers={"If-Match": etag}))

    deliver(app)
    events = [(e["type"], e["data"]) for e in receiver.events()]
    # In order for each campaign (deliveries keep the order of one campaign's events).
    got = {
        c["id"]: [(kind, data) for kind, data in events if data["campaign_id"] == c["id"]]
        for c in (done, dropped)
    }
    assert len(events) == 4
    assert [kind for kind, _ in got[done["id"]]] == ["campaign.created", "campaign.closed"]
    assert [kind for kind, _ in got[dropped["id"]]] == ["campaign.created", "campaign.cancelled"]
    (_, created), (_, closed) = got[done["id"]]
    cancelled = got[dropped["id"]][1][1]
    assert set(created) == {
        "campaign_id",
        "title",
        "status",
        "previous_status",
        "region_code",
        "category_code",
        "due_at",
        "at",
    }
    assert (created["title"], created["status"], created["previous_status"]) == (
        "燃气安全排查",
        "active",
        None,
    )
    assert (created["region_code"], created["category_code"]) == (COMMUNITY_A, None)
    assert datetime.fromisoformat(created["due_at"]) == datetime.fromisoformat(done["due_at"])
    assert (closed["status"], closed["previous_status"]) == ("closed", "active")
    assert (cancelled["status"], cancelled["previous_status"]) == ("cancelled", "active")
    assert ok(client.get(f"/api/v1/webhooks/{elsewhere['id']}/deliveries"))["items"] == []
    assert len(ok(client.get(f"/api/v1/webhooks/{sub['id']}/deliveries"))["items"]) == 4


def test_a_calendar_edit_that_moves_a_campaign_sends_its_deadline(people, client, app, engine):  # noqa: F811
    office = people["office"]
    one_day = {"amount": 1, "unit": "days"}
    made = ok(
        office.post(
            "/api/v1/campaigns", json={"title": "排查", "region": COMMUNITY_A, "due_in": one_day}
        ),
        201,
    )
    due = datetime.fromisoformat(made["due_at"])
    day = due.astimezone(SHANGHAI).date()
    ok(client.put(f"/api/v1/calendar/{day}", json={"kind": "holiday"}))
    moved = ok(office.get(f"/api/v1/campaigns/{made['id']}"))
    assert datetime.fromisoformat(moved["due_at"]) > due

    events = outbox(engine, made["id"])
    assert [kind for kind, _ in events] == ["campaign.created", "campaign.deadline_moved"]
    data = events[1][1]
    assert datetime.fromisoformat(data["due_at"].replace("Z", "+00:00")) == datetime.fromisoformat(
        moved["due_at"]
    )
    assert (data["status"], data["previous_status"]) == ("active", "active")


def test_campaign_events_need_tasks_read(people, client, app):  # noqa: F811
    """An app cannot be given tasks:read: asking for a campaign's events is the 422 naming
    ``events`` that a task's are."""
    body = {"name": "市级平台", "scopes": ["webhooks:manage", "cases:read"], "scope_region": COUNTY}
    key = ok(client.post("/api/v1/clients", json=body), 201)["api_key"]
    app_client = app.test_client()
    app_client.environ_base["HTTP_X_API_KEY"] = key
    refused = app_client.post(
        "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": ["campaign.created"]}
    )
    assert refused.status_code == 422
    assert "tasks:read" in " ".join(refused.get_json()["errors"]["json"]["events"]), (
        refused.get_json()
    )


def test_downgrading_past_0055_forgets_campaign_events(people, client, app, engine, receiver):  # noqa: F811
    """The code before revision 0055 knows no campaign event: going back removes the queued
    ones and the subscriptions' names for them, and no new one is written; upgrading again
    sends them once more."""
    from gridapi import migrations

    office = people["office"]
    events = ["task.created", "campaign.created"]
    sub = ok(client.post("/api/v1/webhooks", json={"url": receiver.url, "events": events}), 201)
    body = {"title": "排查", "region": COMMUNITY_A, "due_in": SOON}
    before = ok(office.post("/api/v1/campaigns", json=body), 201)
    assert [kind for kind, _ in outbox(engine, before["id"])] == ["campaign.created"]

    migrations.downgrade(engine, "0054")
    assert outbox(engine, before["id"]) == []
    assert ok(client.get(f"/api/v1/webhooks/{sub['id']}"))["events"] == ["task.created"]
    during = ok(office.post("/api/v1/campaigns", json=body), 201)
    assert outbox(engine, during["id"]) == []

    migrations.upgrade(engine)
    after = ok(office.post("/api/v1/campaigns", json=body), 201)
    assert [kind for kind, _ in outbox(engine, after["id"])] == ["campaign.created"]
