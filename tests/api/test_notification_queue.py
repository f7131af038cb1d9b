"""The notification queue for a gateway that polls (``GET /notifications``) and says what it
sent (``POST /notifications/sent``): what ``notification.created`` carries, no personal data,
of the gateway's area only, ``sent_at`` stamped once; on both engines."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from gridapi.models import AuditEntry, Notification
from gridapi.models.base import utcnow
from gridapi.services.jobs import run_jobs

from ..factories import COMMUNITY_B, COUNTY
from .test_case_workflow import desk  # noqa: F401  (the fixture)
from .test_notification_relay import PAYLOAD_KEYS
from .test_notification_relay import gateway as relay_client
from .test_webhooks import ok

QUEUE = "/api/v1/notifications"
SENT = "/api/v1/notifications/sent"


def gateway(
    d: Any, scopes: tuple[str, ...] = ("notifications:relay",), region: str = COUNTY
) -> Any:
    """An SMS gateway's API client that polls (no webhooks)."""
    return relay_client(d, scopes, region)


def rows(engine: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(select(Notification).order_by(Notification.id)))


def overdue_case(d: Any, **report: Any) -> tuple[dict[str, Any], Any]:
    """A case in handling gone overdue: its report, and its overdue notice's row."""
    case = d.report(**report)
    d.to_handling(case["id"])
    run_jobs(d.app.extensions["gridapi"].sessions, utcnow() + timedelta(days=60), jobs=["overdue"])
    with d.app.extensions["gridapi"].engine.connect() as conn:
        row = conn.execute(
            select(Notification).where(
                Notification.case_id == case["id"], Notification.kind.like("overdue:%")
            )
        ).one()
    return case, row


def test_a_gateway_reads_the_queue_and_stamps_what_it_sent(desk, engine):  # noqa: F811
    d = desk
    case, row = overdue_case(d, description="张三家门口 13800138000 垃圾堆放")
    relay = gateway(d)

    queued = ok(relay.get(QUEUE, query_string={"unsent": "true"}))
    ids = [item["notification_id"] for item in queued["items"]]
    assert ids == [n.id for n in rows(engine)] and row.id in ids
    assert queued["last_id"] == ids[-1]
    (item,) = [i for i in queued["items"] if i["notification_id"] == row.id]
    assert set(item) == PAYLOAD_KEYS | {"sent_at"}
    assert datetime.fromisoformat(item["created_at"]) == row.created_at
    assert {**item, "created_at": row.created_at} == {
        "notification_id": row.id,
        "kind": "overdue",
        "about": "case",
        "created_at": row.created_at,
        "sent_at": None,
        "recipients": {
            "user_id": d.id("worker"),
            "region_code": row.region_code,
            "department_id": None,
        },
        "case": {"case_id": case["id"], "number": case["number"]},
        "sensitive": False,
        "task_id": None,
    }
    raw = relay.get(QUEUE).get_data(as_text=True)
    for personal in ("张三", "13800138000", row.message):
        assert personal not in raw, personal

    # Keyset: after the first id, the rest.
    rest = ok(relay.get(QUEUE, query_string={"after": ids[0]}))["items"]
    assert [i["notification_id"] for i in rest] == ids[1:]

    answer = ok(relay.post(SENT, json={"ids": [row.id]}))
    assert answer == {"sent": [row.id], "already": []}
    (stamped,) = [n for n in rows(engine) if n.id == row.id]
    assert stamped.sent_at is not None
    assert [n.id for n in rows(engine) if n.sent_at is None] == [i for i in ids if i != row.id]
    unsent = ok(relay.get(QUEUE, query_string={"unsent": "true"}))["items"]
    assert row.id not in [i["notification_id"] for i in unsent]
    (listed,) = [i for i in ok(relay.get(QUEUE))["items"] if i["notification_id"] == row.id]
    assert listed["sent_at"] is not None

    # A retry (or a second gateway) changes nothing: the first time is kept.
    again = ok(relay.post(SENT, json={"ids": [row.id]}))
    assert again == {"sent": [], "already": [row.id]}
    (kept,) = [n for n in rows(engine) if n.id == row.id]
    assert kept.sent_at == stamped.sent_at

    with engine.connect() as conn:
        audits = list(
            conn.execute(
                select(AuditEntry)
                .where(AuditEntry.action == "notifications.sent")
                .order_by(AuditEntry.id)
            )
        )
    assert [a.actor_type for a in audits] == ["client", "client"]
    assert audits[0].summary == {"sent": [row.id], "already": 0}


def test_the_inbox_says_when_a_gateway_sent_a_notice(desk, engine):  # noqa: F811
    """The phone's inbox item carries ``sent_at``: null until a gateway stamps it, then the
    time stamped (a worker sees that the SMS went out, and when)."""
    d = desk
    _case, row = overdue_case(d)

    def item() -> dict[str, Any]:
        listed = ok(d.worker.get("/api/v1/me/notifications?after=0"))["items"]
        (found,) = [i for i in listed if i["id"] == row.id]
        return found

    assert item()["sent_at"] is None
    ok(gateway(d).post(SENT, json={"ids": [row.id]}))
    (stamped,) = [n for n in rows(engine) if n.id == row.id]
    assert datetime.fromisoformat(item()["sent_at"]) == stamped.sent_at


def test_a_sensitive_case_s_notice_names_no_case_in_the_queue(desk, engine):  # noqa: F811
    d = desk
    case, row = overdue_case(d, category="5103")
    relay = gateway(d)
    response = relay.get(QUEUE)
    (item,) = [i for i in ok(response)["items"] if i["notification_id"] == row.id]
    assert (item["case"], item["sensitive"], item["about"]) == (None, True, "case")
    assert case["number"] not in response.get_data(as_text=True)


def test_a_gateway_reads_and_stamps_only_its_area(desk, engine):  # noqa: F811
    """A gateway of another community sees none of this one's notices, and stamping one of
    them is a 422 naming ``ids`` that stamps nothing, the ids of its own area included."""
    d = desk
    _case, row = overdue_case(d)
    other = gateway(d, region=COMMUNITY_B)
    assert ok(other.get(QUEUE))["items"] == []
    refused = other.post(SENT, json={"ids": [row.id]})
    assert refused.status_code == 422
    assert str(row.id) in json.dumps(refused.get_json()["errors"]["json"]["ids"])

    relay = gateway(d)
    mixed = relay.post(SENT, json={"ids": [row.id, 999999]})
    assert mixed.status_code == 422
    assert "999999" in json.dumps(mixed.get_json()["errors"]["json"]["ids"])
    assert all(n.sent_at is None for n in rows(engine))


def test_the_queue_needs_notifications_relay(desk, engine):  # noqa: F811
    d = desk
    _case, row = overdue_case(d)
    hotline = gateway(d, scopes=("cases:read",))
    assert hotline.get(QUEUE).status_code == 403
    assert hotline.post(SENT, json={"ids": [row.id]}).status_code == 403
    # An office worker reads their own inbox, not the queue.
    assert d.office.get(QUEUE).status_code == 403
    assert d.app.test_client().get(QUEUE).status_code == 401
    assert all(n.sent_at is None for n in rows(engine))
    # The stock admin role holds it.
    assert row.id in [i["notification_id"] for i in ok(d.admin.get(QUEUE))["items"]]


def test_bad_queue_requests_are_422_naming_the_field(desk):  # noqa: F811
    d = desk
    relay = gateway(d)
    for query, field in (({"unsent": "maybe"}, "unsent"), ({"limit": 0}, "limit")):
        response = relay.get(QUEUE, query_string=query)
        assert response.status_code == 422 and field in response.get_json()["errors"]["query"]
    for body in ({"ids": []}, {"ids": list(range(1, 502))}, {"ids": ["x"]}, {}):
        response = relay.post(SENT, json=body)
        assert response.status_code == 422 and "ids" in response.get_json()["errors"]["json"]


def test_two_gateways_stamping_one_notice_at_once_stamp_it_once(desk, engine, session):  # noqa: F811
    """Another gateway's stamp of the same notice is not yet committed when this one's
    request reads it: the request waits for it and answers the notice as ``already`` sent,
    not as sent by itself (PostgreSQL; SQLite runs the two one after the other)."""
    from sqlalchemy import update

    from ..races import send_while_uncommitted

    d = desk
    _case, row = overdue_case(d)
    relay = gateway(d)
    session.execute(update(Notification).where(Notification.id == row.id).values(sent_at=utcnow()))
    answer = send_while_uncommitted(
        engine,
        session,
        "notifications",
        lambda: relay.post(SENT, json={"ids": [row.id]}),
        waits_in="SELECT notifications.",
    )
    assert ok(answer) == {"sent": [], "already": [row.id]}


def test_the_stamped_ids_are_answered_once_each_in_id_order(desk, engine):  # noqa: F811
    d = desk
    overdue_case(d)
    relay = gateway(d)
    ids = [n.id for n in rows(engine)]
    assert len(ids) >= 2
    answer = ok(relay.post(SENT, json={"ids": [ids[-1], ids[0], ids[-1]]}))
    assert answer == {"sent": [ids[0], ids[-1]], "already": []}
    assert [n.id for n in rows(engine) if n.sent_at is not None] == [ids[0], ids[-1]]
