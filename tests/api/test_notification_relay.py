"""``notification.created``: the notifications queued for people, as webhook events for an SMS
or push gateway (``notifications:relay``), with no personal data, on both engines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, text

from gridapi.models import Notification, WebhookEvent
from gridapi.models.base import utcnow
from gridapi.services.jobs import run_jobs

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY, TOWNSHIP
from .test_case_workflow import desk  # noqa: F401  (the fixture)
from .test_webhooks import deliver, deliveries, ok, receiver, settings  # noqa: F401

B2 = COMMUNITY_B + "002"  # a grid with nobody on its roster
EVENT = "notification.created"
#: Every key of the event's ``data``, and nothing else (no message, name, phone, address).
PAYLOAD_KEYS = {
    "notification_id",
    "kind",
    "about",
    "created_at",
    "recipients",
    "case",
    "sensitive",
    "task_id",
}


def gateway(
    d: Any,
    scopes: tuple[str, ...] = ("webhooks:manage", "notifications:relay"),
    region: str = COUNTY,
) -> Any:
    """An SMS gateway's API client over ``region`` (the county), with ``scopes``."""
    body = {"name": "短信网关", "scopes": list(scopes), "scope_region": region}
    key = ok(d.admin.post("/api/v1/clients", json=body), 201)["api_key"]
    client = d.app.test_client()
    client.environ_base["HTTP_X_API_KEY"] = key
    return client


def subscribe(who: Any, url: str, events: list[str]) -> int:
    return ok(who.post("/api/v1/webhooks", json={"url": url, "events": events}), 201)["id"]


def relayed(got: Any) -> list[dict[str, Any]]:
    """The ``data`` of the notification events the receiver ``got``, in order."""
    return [e["data"] for e in got.events() if e["type"] == EVENT]


def notices(engine: Any, kind: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(Notification)
                .where(Notification.kind.like(f"{kind}:%"))
                .order_by(Notification.id)
            )
        )


def at(data: dict[str, Any], row: Any) -> dict[str, Any]:
    """Return ``data`` with ``created_at`` checked against the row's (to the millisecond,
    as every event's times: SQLite's strftime rounds, PostgreSQL's to_char truncates) and
    replaced by the row's."""
    sent = datetime.fromisoformat(data["created_at"].replace("Z", "+00:00"))
    assert data["created_at"].endswith("Z") and abs(sent - row.created_at) <= timedelta(
        milliseconds=1
    ), (data["created_at"], row.created_at)
    return {**data, "created_at": row.created_at}


def test_a_task_overdue_notice_goes_to_the_subscribers_of_the_event(desk, engine, receiver):  # noqa: F811
    """A task left to a grid nobody works is overdue: the office that issued it is told
    (one row). The gateway subscribed to ``notification.created`` gets it once, naming the
    task and the unit; a subscription to the task's own events gets none of it."""
    d = desk
    relay = gateway(d)
    relay_sub = subscribe(relay, receiver.url, [EVENT])
    task_sub = subscribe(d.admin, receiver.url, ["task.overdue"])
    body = {
        "title": "走访独居老人 张三 13800138000",
        "grid": B2,
        "due_in": {"amount": 3, "unit": "days"},
    }
    task = ok(d.office.post("/api/v1/tasks", json=body), 201)

    later = utcnow() + timedelta(days=10)
    run_jobs(d.app.extensions["gridapi"].sessions, later, jobs=["tasks"])
    deliver(d.app)

    (row,) = notices(engine, "overdue")
    assert (row.task_id, row.user_id, row.region_code) == (task["id"], None, TOWNSHIP)
    assert [at(data, row) for data in relayed(receiver)] == [
        {
            "notification_id": row.id,
            "kind": "overdue",
            "about": "task",
            "created_at": row.created_at,
            "recipients": {"user_id": None, "region_code": TOWNSHIP, "department_id": None},
            "case": None,
            "sensitive": False,
            "task_id": task["id"],
        }
    ]
    (delivered,) = deliveries(relay, relay_sub)
    assert (delivered["event_type"], delivered["task_id"]) == (EVENT, task["id"])
    assert [x["event_type"] for x in deliveries(d.admin, task_sub)] == ["task.overdue"]
    # The title (written by the office: a name, a phone number) is not relayed.
    raw = b"".join(r["body"] for r in receiver.requests if json.loads(r["body"])["type"] == EVENT)
    assert "张三".encode() not in raw and b"13800138000" not in raw


def test_a_case_overdue_notice_goes_to_the_subscribers_of_the_event(desk, engine, receiver):  # noqa: F811
    """A case in handling goes overdue: one notice to its worker and the unit holding it.
    The gateway gets it once, with the case's id and number and both recipients, and no
    word of the case's description, the message, or anyone's name; a subscription to
    ``case.overdue`` alone gets no notification event."""
    d = desk
    case = d.report(description="张三家门口 13800138000 垃圾堆放")
    cid = d.to_handling(case["id"])["id"]
    relay = gateway(d)
    relay_sub = subscribe(relay, receiver.url, [EVENT])
    case_sub = subscribe(d.admin, receiver.url, ["case.overdue"])

    later = utcnow() + timedelta(days=30)
    run_jobs(d.app.extensions["gridapi"].sessions, later, jobs=["overdue"])
    deliver(d.app)

    (row,) = notices(engine, "overdue")
    assert (row.case_id, row.user_id) == (cid, d.id("worker")) and row.region_code
    got = relayed(receiver)
    assert [at(data, row) for data in got] == [
        {
            "notification_id": row.id,
            "kind": "overdue",
            "about": "case",
            "created_at": row.created_at,
            "recipients": {
                "user_id": d.id("worker"),
                "region_code": row.region_code,
                "department_id": None,
            },
            "case": {"case_id": cid, "number": case["number"]},
            "sensitive": False,
            "task_id": None,
        }
    ]
    assert set(got[0]) == PAYLOAD_KEYS
    assert [(x["event_type"], x["case_id"]) for x in deliveries(relay, relay_sub)] == [(EVENT, cid)]
    assert [x["event_type"] for x in deliveries(d.admin, case_sub)] == ["case.overdue"]
    raw = b"".join(r["body"] for r in receiver.requests if json.loads(r["body"])["type"] == EVENT)
    for personal in ("张三", "13800138000", "平江路", row.message, "worker", "office"):
        assert personal.encode() not in raw, personal


def test_a_sensitive_case_s_notice_names_no_case(desk, engine, receiver):  # noqa: F811
    """A family dispute (5103, a sensitive category) goes overdue: the gateway is told that
    someone is to be notified, not of which case: no id, no number, no category, in the
    payload and in its delivery log alike."""
    d = desk
    case = d.report(category="5103")
    cid = d.to_handling(case["id"])["id"]
    relay = gateway(d)
    relay_sub = subscribe(relay, receiver.url, [EVENT])

    run_jobs(d.app.extensions["gridapi"].sessions, utcnow() + timedelta(days=60), jobs=["overdue"])
    deliver(d.app)

    (row,) = notices(engine, "overdue")
    assert row.case_id == cid
    (data,) = relayed(receiver)
    assert data["case"] is None and data["sensitive"] is True and data["task_id"] is None
    assert (data["about"], data["kind"], data["notification_id"]) == ("case", "overdue", row.id)
    assert data["recipients"] == {
        "user_id": d.id("worker"),
        "region_code": row.region_code,
        "department_id": None,
    }
    raw = receiver.requests[0]["body"]
    assert case["number"].encode() not in raw and b"5103" not in raw
    (delivered,) = deliveries(relay, relay_sub)
    assert delivered["case_id"] is None
    with engine.connect() as conn:
        key = WebhookEvent.ordering_key == f"notification:{row.id}"
        event = conn.execute(select(WebhookEvent).where(key)).one()
    assert (event.case_id, event.category_code) == (None, None)


def test_only_owners_holding_notifications_relay_may_subscribe(desk, engine, receiver):  # noqa: F811
    """An app without ``notifications:relay`` is refused the event (422 naming ``events``),
    when subscribing and when changing its events; a subscription that names it all the
    same (made by hand in the database) is sent none."""
    d = desk
    hotline = gateway(d, scopes=("webhooks:manage", "cases:read"))
    r = hotline.post("/api/v1/webhooks", json={"url": receiver.url, "events": [EVENT]})
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["events"] == [
        f"{EVENT} needs notifications:relay, which the subscription's owner does not hold"
    ]
    mine = subscribe(hotline, receiver.url, ["case.overdue"])
    r = hotline.patch(f"/api/v1/webhooks/{mine}", json={"events": ["case.overdue", EVENT]})
    assert r.status_code == 422 and "events" in r.get_json()["errors"]["json"]
    assert ok(hotline.get(f"/api/v1/webhooks/{mine}"))["events"] == ["case.overdue"]
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE webhook_subscriptions SET events = :e WHERE id = :id"),
            {"e": json.dumps(["case.overdue", EVENT]), "id": mine},
        )
    cid = d.to_handling(d.report()["id"])["id"]
    run_jobs(d.app.extensions["gridapi"].sessions, utcnow() + timedelta(days=30), jobs=["overdue"])
    deliver(d.app)
    assert [(e["type"], e["data"]["case_id"]) for e in receiver.events()] == [("case.overdue", cid)]
    # Giving an app the scope takes it holding it: an admin may (the migration gave the
    # stock admin role the permission).
    admin_sub = subscribe(d.admin, receiver.url, [EVENT])
    assert ok(d.admin.get(f"/api/v1/webhooks/{admin_sub}"))["events"] == [EVENT]


def test_the_event_is_written_with_the_notification_or_not_at_all(desk, app, engine):  # noqa: F811
    """The trigger writes the event in the notification's transaction: an insert rolled
    back leaves none, one committed leaves exactly one per row, however it was inserted."""
    d = desk
    cid = d.report(col=0)["id"]
    sessions = app.extensions["gridapi"].sessions
    row = {"county_code": TOWNSHIP[:6], "case_id": cid, "kind": "test:1", "message": "张三"}
    with sessions() as session:
        session.add(Notification(**row, region_code=COMMUNITY_A))
        session.flush()
        session.rollback()
    with engine.connect() as conn:
        assert conn.scalar(select(WebhookEvent.id).where(WebhookEvent.event_type == EVENT)) is None
    with sessions.begin() as session:
        session.execute(
            Notification.__table__.insert(),
            [{**row, "kind": f"test:{i}", "region_code": COMMUNITY_A} for i in (2, 3)],
        )
    with engine.connect() as conn:
        events = conn.execute(
            select(WebhookEvent.ordering_key, WebhookEvent.payload)
            .where(WebhookEvent.event_type == EVENT)
            .order_by(WebhookEvent.id)
        ).all()
    ids = [n.id for n in notices(engine, "test")]
    assert [key for key, _ in events] == [f"notification:{i}" for i in ids]
    assert [p["notification_id"] for _, p in events] == ids
