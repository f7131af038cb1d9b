"""Webhooks on both engines: subscriptions, the outbox, signed delivery, retries, order, SSRF."""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import os
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from gridapi import create_app
from gridapi.models import Case, CaseEvent, WebhookEvent, WebhookSubscription
from gridapi.models.base import utcnow
from gridapi.outbound import (
    OutboundFailed,
    OutboundPolicy,
    address_refusal,
    parse_allowlist,
    post,
)
from gridapi.security.fields import FieldCipher
from gridapi.services import webhooks as svc
from gridapi.services.cases import add_event
from gridapi.services.keys import rotate_all
from gridapi.services.register import Keys

from ..factories import COMMUNITY_A, COMMUNITY_B, TOWNSHIP
from .test_cases import center, report_body

LATER = timedelta(days=2)


# --- a receiver with its own signature check --------------------------------------------------


def verify_signature(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """An implementation independent of gridapi's: HMAC-SHA256 of "<timestamp>.<body>"."""
    timestamp = headers["Webhook-Timestamp"]
    scheme, _, signature = headers["Webhook-Signature"].partition("=")
    expected = hmac.new(
        secret.encode("utf-8"), timestamp.encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    fresh = abs(time.time() - int(timestamp)) < 300
    return scheme == "v1" and fresh and hmac.compare_digest(expected, signature)


class Receiver:
    """An HTTP server on 127.0.0.1 that records what it gets and answers ``status``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.status = 200
        self.location: str | None = None
        self.extra_headers: dict[str, str] = {}
        self.reply = b"ok"
        self.on_request: Any = None  # called with each request before it is answered
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        self.lock = threading.Lock()

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers), "body": body}
                    )
                    status = receiver.status
                if receiver.on_request is not None:
                    receiver.on_request(receiver.requests[-1])
                self.send_response(status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(receiver.reply)))
                self.end_headers()
                self.wfile.write(receiver.reply)

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        ).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(r["body"]) for r in self.requests]

    def ids(self) -> list[str]:
        return [r["headers"]["Webhook-Id"] for r in self.requests]


@pytest.fixture
def receiver():  # type: ignore[no-untyped-def]
    r = Receiver()
    r.start()
    yield r
    if r.server is not None:
        r.stop()


@pytest.fixture
def settings(settings):  # type: ignore[no-untyped-def]
    return replace(
        settings,
        webhook_allow_private="127.0.0.1/32",
        webhook_backoff_base_seconds=60.0,
        webhook_backoff_max_seconds=600.0,
        webhook_max_attempts=4,
        webhook_timeout_seconds=5.0,
    )


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def subscribe(client: Any, url: str, **body: Any) -> dict[str, Any]:
    data = {"url": url, "events": ["case.created", "case.transitioned"], **body}
    return ok(client.post("/api/v1/webhooks", json=data), 201)


def report(client: Any, col: int = 0, category: str = "0101") -> tuple[int, str]:
    r = client.post("/api/v1/cases", json=report_body(*center(col), category=category))
    assert r.status_code == 201, r.get_json()
    return r.get_json()["id"], r.headers["ETag"]


def act(client: Any, case_id: int, etag: str, action: str) -> str:
    r = client.post(
        f"/api/v1/cases/{case_id}/transitions", json={"action": action}, headers={"If-Match": etag}
    )
    assert r.status_code == 200, r.get_json()
    return r.headers["ETag"]


def deliver(app: Any, at: Any = None, **options: Any) -> svc.RoundResult:
    """One delivery round of the worker, at ``at`` (default now)."""
    st = app.extensions["gridapi"]
    opts = replace(svc.DeliveryOptions.from_settings(st.settings), **options)
    return svc.deliver_round(st.sessions, st.cipher, opts, now=(lambda: at) if at else utcnow)


def outbox(engine: Any, event_type: str | None = None) -> list[int]:
    with engine.connect() as conn:
        stmt = select(WebhookEvent.id).order_by(WebhookEvent.id)
        if event_type:
            stmt = stmt.where(WebhookEvent.event_type == event_type)
        return list(conn.scalars(stmt))


def deliveries(client: Any, sub_id: int, **args: Any) -> list[dict[str, Any]]:
    query = "&".join(f"{k}={v}" for k, v in args.items())
    return ok(client.get(f"/api/v1/webhooks/{sub_id}/deliveries?{query}"))["items"]


# --- subscriptions ----------------------------------------------------------------------------


def test_a_subscription_is_created_read_changed_and_deleted(client, world, engine, receiver):
    created = subscribe(client, receiver.url, categories=["01"], description="热线")
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 40
    assert created["events"] == ["case.created", "case.transitioned"]
    assert created["region_codes"] == [] and created["categories"] == ["01"]
    assert created["deliveries"] == {"pending": 0, "dead": 0}
    sub_id = created["id"]

    got = ok(client.get(f"/api/v1/webhooks/{sub_id}"))
    assert "secret" not in got and got["url"] == receiver.url
    assert [s["id"] for s in ok(client.get("/api/v1/webhooks"))["items"]] == [sub_id]
    with engine.connect() as conn:
        stored = conn.scalar(select(WebhookSubscription.secret_enc))
        audit = conn.execute(
            text("SELECT object_id FROM audit_log WHERE action = 'webhook.create'")
        ).all()
    assert stored.startswith("v1:") and secret not in stored  # encrypted at rest
    assert audit == [(str(sub_id),)]

    changed = ok(
        client.patch(
            f"/api/v1/webhooks/{sub_id}",
            json={"events": ["task.created"], "active": False, "region_codes": [TOWNSHIP]},
        )
    )
    assert changed["events"] == ["task.created"] and changed["active"] is False
    assert changed["region_codes"] == [TOWNSHIP]

    rotated = ok(client.post(f"/api/v1/webhooks/{sub_id}/rotate-secret"))
    assert rotated["secret"].startswith("whsec_") and rotated["secret"] != secret

    assert client.delete(f"/api/v1/webhooks/{sub_id}").status_code == 204
    assert client.get(f"/api/v1/webhooks/{sub_id}").status_code == 404
    # past the 32-bit ids: 422 "out of range" on PostgreSQL, 404 on SQLite
    for path in ("", "/deliveries", "/ping", "/rotate-secret"):
        method = client.get if path in ("", "/deliveries") else client.post
        assert method(f"/api/v1/webhooks/{2**31}{path}").status_code == 404, path
    assert client.patch(f"/api/v1/webhooks/{2**31}", json={"active": False}).status_code == 404
    assert ok(client.get("/api/v1/webhooks"))["items"] == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"events": ["case.exploded"]}, "events"),
        ({"events": []}, "events"),
        ({"url": "ftp://127.0.0.1/x"}, "url"),
        ({"url": "http://user:pw@127.0.0.1/x"}, "url"),
        ({"url": "not a url at all"}, "url"),
        ({"categories": ["1"]}, "categories"),
        ({"region_codes": ["12345"]}, "region_codes"),
        ({"region_codes": ["320508009001"]}, "region_codes"),  # well-formed, no such region
        ({"colour": "blue"}, "colour"),
        ({"url": None}, "url"),  # missing (a KeyError, 500, before it was required)
        ({"categories": ["9999"]}, "categories"),  # well-formed, no such category
        ({"url": "http://127.0.0.1:0/hook"}, "url"),  # taken for port 80
    ],
)
def test_bad_subscriptions_are_refused_naming_the_field(client, world, receiver, body, field):
    data = {"url": receiver.url, "events": ["case.created"], **body}
    data = {key: value for key, value in data.items() if value is not None}
    r = client.post("/api/v1/webhooks", json=data)
    assert r.status_code == 422, r.get_json()
    assert field in r.get_json()["errors"]["json"]


def test_only_webhook_managers_may_subscribe(accounts, world, receiver):
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    r = office.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["case.created"]})
    assert r.status_code == 403


def api_client(app: Any, client: Any, region: str) -> Any:
    created = ok(
        client.post(
            "/api/v1/clients",
            json={
                "name": "12345 热线",
                "scopes": ["webhooks:manage", "cases:read"],
                "scope_region": region,
            },
        ),
        201,
    )
    app_client = app.test_client()
    app_client.environ_base["HTTP_X_API_KEY"] = created["api_key"]
    return app_client


def test_an_app_subscribes_inside_its_area_and_gets_only_its_events(app, client, world, receiver):
    hotline = api_client(app, client, COMMUNITY_A)
    r = hotline.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["case.created"], "region_codes": [COMMUNITY_B]},
    )
    assert r.status_code == 422 and "region_codes" in r.get_json()["errors"]["json"]
    mine = subscribe(hotline, receiver.url, events=["case.created"])
    assert mine["region_codes"] == [COMMUNITY_A]
    assert mine["owner"]["kind"] == "client"
    theirs = subscribe(client, receiver.url, events=["case.created"])
    # The app sees its own subscription only; the admin sees both.
    assert [s["id"] for s in ok(hotline.get("/api/v1/webhooks"))["items"]] == [mine["id"]]
    assert hotline.get(f"/api/v1/webhooks/{theirs['id']}").status_code == 404
    assert len(ok(client.get("/api/v1/webhooks"))["items"]) == 2

    in_a, _ = report(client, col=0)
    in_b, _ = report(client, col=3)
    deliver(app)
    got = [(e["type"], e["data"]["case_id"]) for e in receiver.events()]
    # The admin's subscription gets both cases; the app's only the case in its community.
    assert sorted(got) == sorted(
        [("case.created", in_a), ("case.created", in_a), ("case.created", in_b)]
    )
    assert [d["case_id"] for d in deliveries(hotline, mine["id"])] == [in_a]


def test_an_owner_hears_only_of_what_it_may_read(app, client, world, receiver, engine):
    """Task events (a title written by an office, an assignee) went to every subscriber of
    the area, an app without tasks:read included; case events went to
    an owner without cases:read. Such events are refused when subscribing (422 naming
    events), and a subscription made before hears nothing of them."""
    hotline = api_client(app, client, COMMUNITY_A)
    r = hotline.post(
        "/api/v1/webhooks",
        json={"url": receiver.url, "events": ["case.created", "task.created"]},
    )
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["events"] == [
        "task.created needs tasks:read, which the subscription's owner does not hold"
    ]
    blind = ok(
        client.post(
            "/api/v1/clients",
            json={"name": "地图服务", "scopes": ["webhooks:manage"], "scope_region": COMMUNITY_A},
        ),
        201,
    )
    mapper = app.test_client()
    mapper.environ_base["HTTP_X_API_KEY"] = blind["api_key"]
    r = mapper.post("/api/v1/webhooks", json={"url": receiver.url, "events": ["case.created"]})
    assert r.status_code == 422 and "events" in r.get_json()["errors"]["json"]

    mine = subscribe(hotline, receiver.url, events=["case.created"])
    refused = hotline.patch(f"/api/v1/webhooks/{mine['id']}", json={"events": ["task.created"]})
    assert refused.status_code == 422
    with engine.begin() as conn:  # as a subscription made before the rule holds them
        conn.execute(
            text("UPDATE webhook_subscriptions SET events = :e WHERE id = :id"),
            {"e": json.dumps(["case.created", "task.created"]), "id": mine["id"]},
        )
    case_id, _ = report(client, col=0)
    body = {
        "title": "走访独居老人",
        "grid": COMMUNITY_A + "001",
        "due_in": {"amount": 3, "unit": "days"},
    }
    ok(client.post("/api/v1/tasks", json=body), 201)
    deliver(app)
    assert [(e["type"], e["data"].get("case_id")) for e in receiver.events()] == [
        ("case.created", case_id)
    ]


def test_a_revoked_key_s_subscription_hears_nothing_more(app, client, world, receiver):
    """Revoking a key (it may have leaked, and been used to point a subscription elsewhere)
    stopped the key at once but not its subscriptions: events kept arriving."""
    made = ok(
        client.post(
            "/api/v1/clients",
            json={
                "name": "热线",
                "scopes": ["webhooks:manage", "cases:read"],
                "scope_region": TOWNSHIP,
            },
        ),
        201,
    )
    hotline = app.test_client()
    hotline.environ_base["HTTP_X_API_KEY"] = made["api_key"]
    mine = subscribe(hotline, receiver.url, events=["case.created"])
    before, _ = report(client, col=0)
    with app.extensions["gridapi"].sessions.begin() as session:
        assert svc.fan_out(session, utcnow()) == 1  # queued while the key was good
    ok(client.delete(f"/api/v1/clients/{made['id']}"))
    after, _ = report(client, col=0)
    deliver(app)
    assert receiver.events() == []  # the pending one is held, the new one never queued
    held = ok(client.get(f"/api/v1/webhooks/{mine['id']}/deliveries"))["items"]
    assert [(d["case_id"], d["status"], d["attempts"]) for d in held] == [(before, "pending", 0)]
    assert after != before


def test_an_account_s_subscription_follows_its_access_today(app, client, accounts, world, receiver):
    """A deactivated account, or one moved to a role without webhooks:manage or to a smaller
    area, kept hearing of every case of the area it had when it subscribed."""
    admin2 = accounts.client("admin2", "admin", scope_region=TOWNSHIP)
    user_id = accounts.ids["admin2"]
    subscribe(admin2, receiver.url, events=["case.created"])

    def heard_of(col: int) -> bool:
        case_id, _ = report(client, col=col)
        deliver(app)
        return case_id in [e["data"]["case_id"] for e in receiver.events()]

    assert heard_of(0) and heard_of(3)  # communities A and B of the township
    ok(client.patch(f"/api/v1/users/{user_id}", json={"scope_region": COMMUNITY_A}))
    assert heard_of(0) and not heard_of(3)
    ok(client.patch(f"/api/v1/users/{user_id}", json={"is_active": False}))
    assert not heard_of(0)
    ok(client.patch(f"/api/v1/users/{user_id}", json={"is_active": True}))
    assert heard_of(0)
    ok(client.patch(f"/api/v1/users/{user_id}", json={"role": "township_office"}))
    assert not heard_of(0)


def test_events_of_a_sensitive_case_go_only_to_those_who_may_read_it(app, client, world, receiver):
    """A family dispute (5103, sensitive) in community A: an app of that community hears
    of it only if it reported it (an admin's subscription does: it may read every case).
    Its events told every app of the area where and when such a case was."""
    made = ok(
        client.post(
            "/api/v1/clients",
            json={
                "name": "12345 热线",
                "scopes": ["webhooks:manage", "cases:read", "cases:write"],
                "scope_region": COMMUNITY_A,
            },
        ),
        201,
    )
    hotline = app.test_client()
    hotline.environ_base["HTTP_X_API_KEY"] = made["api_key"]
    mine = subscribe(hotline, receiver.url, events=["case.created"])
    admins = subscribe(client, receiver.url, events=["case.created"])
    theirs, _ = report(client, col=0, category="5103")
    plain, _ = report(client, col=0)
    own, _ = report(hotline, col=0, category="5103")
    deliver(app)
    assert sorted(d["case_id"] for d in deliveries(hotline, mine["id"])) == sorted([plain, own])
    assert sorted(d["case_id"] for d in deliveries(client, admins["id"])) == sorted(
        [theirs, plain, own]
    )
    assert hotline.get(f"/api/v1/cases/{theirs}").status_code == 404  # the rule it follows


def test_category_filters_by_class_or_category(app, client, world, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"], categories=["05"])
    report(client, col=0, category="0101")
    wanted, _ = report(client, col=0, category="0501")
    deliver(app)
    assert [e["data"]["case_id"] for e in receiver.events()] == [wanted]
    assert len(deliveries(client, sub["id"])) == 1


# --- signed delivery --------------------------------------------------------------------------


def test_events_arrive_signed_in_order_and_once(app, client, world, engine, receiver):
    sub = subscribe(client, receiver.url)
    secret = sub["secret"]
    case_id, etag = report(client)
    etag = act(client, case_id, etag, "accept")
    act(client, case_id, etag, "file")
    result = deliver(app)
    assert result.delivered == 3 and result.dead == 0

    assert len(receiver.requests) == 3
    for request in receiver.requests:
        assert verify_signature(secret, request["headers"], request["body"])
        assert not verify_signature("whsec_wrong", request["headers"], request["body"])
        assert request["headers"]["Content-Type"] == "application/json"
    events = receiver.events()
    assert [e["type"] for e in events] == ["case.created", "case.transitioned", "case.transitioned"]
    assert [e["data"]["to_status"] for e in events] == ["reported", "accepted", "filed"]
    assert [e["data"]["seq"] for e in events] == [1, 2, 3]
    assert {e["data"]["case_id"] for e in events} == {case_id}
    assert receiver.ids() == [e["id"] for e in events]
    assert receiver.ids() == [f"evt_{i}" for i in outbox(engine)]
    # A tampered body fails the receiver's check.
    first = receiver.requests[0]
    assert not verify_signature(secret, first["headers"], first["body"] + b" ")

    log = deliveries(client, sub["id"])
    assert [d["status"] for d in log] == ["delivered"] * 3
    assert all(d["attempts"] == 1 and d["last_status_code"] == 200 for d in log)
    assert deliver(app).attempted == 0  # nothing sent twice
    assert len(receiver.requests) == 3


def _documented_verify(doc: str) -> Any:
    """Return the ``verify`` function of a document's Python example, as a receiver would
    copy it."""
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / doc).read_text(encoding="utf-8")
    [code] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "def verify" in b]
    namespace: dict[str, Any] = {}
    exec(compile(code, doc, "exec"), namespace)  # noqa: S102 - our own document
    return namespace["verify"]


@pytest.mark.engines("sqlite")
@pytest.mark.parametrize("doc", ["webhooks.md", "integration.md"])
def test_the_documented_verification_accepts_deliveries_and_refuses_forgeries(
    app, client, world, receiver, doc
):
    verify = _documented_verify(doc)
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    receiver.status = 500
    deliver(app)
    receiver.status = 200
    deliver(app, utcnow() + LATER)  # a retry: signed again, with its own timestamp
    assert len(receiver.requests) == 2
    for request in receiver.requests:
        headers, body = request["headers"], request["body"]
        assert verify(sub["secret"], headers, body)
        assert not verify("whsec_other", headers, body)
        assert not verify(sub["secret"], headers, body.replace(b"case.created", b"case.rated"))
        old = str(int(headers["Webhook-Timestamp"]) - 301)
        replayed = {**headers, "Webhook-Timestamp": old}
        assert not verify(sub["secret"], replayed, body)  # and its signature is not for it
        resigned = {
            **replayed,
            "Webhook-Signature": "v1=" + svc.sign(sub["secret"], int(old), body),
        }
        assert not verify(sub["secret"], resigned, body)  # signed, but too old: a replay
    first, retry = receiver.requests
    assert first["headers"]["Webhook-Id"] == retry["headers"]["Webhook-Id"]
    assert [r["headers"]["Webhook-Attempt"] for r in receiver.requests] == ["1", "2"]


@pytest.mark.engines("sqlite")
@pytest.mark.parametrize("doc", ["webhooks.md", "integration.md"])
def test_the_documented_verification_takes_either_secret_during_the_grace(
    app, client, world, receiver, doc
):
    """The documented code took ``Webhook-Signature`` alone: a receiver that copied it could
    not use the grace period after a rotation."""
    verify = _documented_verify(doc)
    sub = subscribe(client, receiver.url, events=["case.created"])
    new = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))["secret"]
    report(client)
    deliver(app)
    headers, body = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    assert verify(new, headers, body) and verify(sub["secret"], headers, body)
    assert not verify("whsec_other", headers, body)
    assert not verify(sub["secret"], headers, body.replace(b"case.created", b"case.rated"))
    old = str(int(headers["Webhook-Timestamp"]) - 301)
    assert not verify(sub["secret"], {**headers, "Webhook-Timestamp": old}, body)


def test_task_events_are_delivered(app, client, world, receiver):
    subscribe(client, receiver.url, events=["task.created", "task.cancelled"])
    task = ok(
        client.post(
            "/api/v1/tasks",
            json={
                "title": "走访独居老人",
                "grid": COMMUNITY_A + "001",
                "due_in": {"amount": 3, "unit": "days"},
            },
        ),
        201,
    )
    etag = client.get(f"/api/v1/tasks/{task['id']}").headers["ETag"]
    r = client.post(
        f"/api/v1/tasks/{task['id']}/cancel", json={"reason": "重复"}, headers={"If-Match": etag}
    )
    assert r.status_code == 200, r.get_json()
    deliver(app)
    events = receiver.events()
    assert [(e["type"], e["data"]["task_id"]) for e in events] == [
        ("task.created", task["id"]),
        ("task.cancelled", task["id"]),
    ]
    assert events[1]["data"]["previous_status"] == "pending"


def test_a_receiver_down_for_a_while_gets_every_event_with_the_same_ids(
    app, client, world, engine, receiver
):
    sub = subscribe(client, receiver.url)
    receiver.stop()  # refused connections
    for col in (0, 1, 2):
        report(client, col=col)
    first = deliver(app)
    assert first.attempted == 3 and first.delivered == 0 and first.retrying == 3
    log = deliveries(client, sub["id"])
    assert all(d["status"] == "pending" and d["last_error"] for d in log)

    receiver.start()  # up again, but failing
    receiver.status = 503
    deliver(app, utcnow() + LATER)
    assert len(receiver.requests) == 3
    receiver.status = 200
    later = deliver(app, utcnow() + 2 * LATER)
    assert later.delivered == 3
    events = outbox(engine)
    assert len(events) == 3
    # At least once, with the same id each time: after dedup, exactly the outbox.
    assert sorted(set(receiver.ids())) == sorted(f"evt_{i}" for i in events)
    assert len(receiver.requests) == 6
    assert [d["attempts"] for d in deliveries(client, sub["id"])] == [3, 3, 3]


@pytest.mark.parametrize(
    ("status", "retry_after", "waits"),
    [
        (503, "300", 300.0),
        (429, "http-date 400 s ahead", 400.0),
        (503, "86400", 600.0),  # no longer than our own longest wait
        (500, "300", None),  # only 429 and 503 carry a wish to honour
        (503, "soon", None),  # unreadable: our backoff
        # Latin-1 digits that str.isdigit() takes and float() refuses: the round crashed,
        # nothing was recorded and the delivery was tried again every lease, never dead.
        (429, "\u00b2", None),
        (503, "1\u00b9", None),
    ],
)
def test_a_receiver_s_retry_after_is_honoured(
    app, client, world, receiver, status, retry_after, waits
):
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    receiver.status = status
    if retry_after.startswith("http-date"):
        receiver.extra_headers["Retry-After"] = email.utils.formatdate(
            time.time() + 400, usegmt=True
        )
    else:
        receiver.extra_headers["Retry-After"] = retry_after
    moment = utcnow()
    assert deliver(app, moment).retrying == 1
    (delivery,) = deliveries(client, sub["id"])
    due = datetime.fromisoformat(delivery["next_attempt_at"]) - moment
    if waits is None:  # full jitter under the first ceiling (60 s in these settings)
        assert timedelta(0) <= due <= timedelta(seconds=60)
    else:
        assert timedelta(seconds=waits - 2) <= due <= timedelta(seconds=waits + 1)
        receiver.status = 200
        assert deliver(app, moment + due - timedelta(seconds=3)).attempted == 0
        assert deliver(app, moment + due + timedelta(seconds=1)).delivered == 1


def test_a_delivery_dies_after_the_last_attempt_and_can_be_redelivered(
    app, client, world, receiver
):
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    receiver.status = 500
    moment = utcnow()
    deliver(app, moment)
    # still retrying: a redelivery would reset its attempts and skip the backoff (over and
    # over, it was never dead-lettered)
    (retrying,) = deliveries(client, sub["id"])
    refused = client.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{retrying['id']}/redeliver")
    assert refused.status_code == 409 and refused.get_json()["code"] == 409
    assert deliveries(client, sub["id"])[0]["attempts"] == 1
    for _ in range(3):
        moment += LATER
        deliver(app, moment)
    moment += LATER
    log = deliveries(client, sub["id"])
    assert [d["status"] for d in log] == ["dead"] and log[0]["attempts"] == 4
    assert log[0]["last_status_code"] == 500 and log[0]["last_error"].startswith("HTTP 500")
    assert deliver(app, moment).attempted == 0  # dead letters are not retried
    assert deliveries(client, sub["id"], status="dead")[0]["id"] == log[0]["id"]
    assert deliveries(client, sub["id"], status="pending") == []
    assert ok(client.get(f"/api/v1/webhooks/{sub['id']}"))["deliveries"]["dead"] == 1

    receiver.status = 200
    again = ok(
        client.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{log[0]['id']}/redeliver"), 202
    )
    assert again["status"] == "pending" and again["attempts"] == 0
    assert deliver(app).delivered == 1
    assert len(set(receiver.ids())) == 1 and len(receiver.ids()) == 5
    assert deliveries(client, sub["id"])[0]["status"] == "delivered"
    missing = client.post(f"/api/v1/webhooks/{sub['id']}/deliveries/999999/redeliver")
    assert missing.status_code == 404
    huge = client.post(f"/api/v1/webhooks/{sub['id']}/deliveries/{2**63}/redeliver")
    assert huge.status_code == 404 and huge.get_json()["code"] == 404


def test_events_of_one_case_wait_for_the_earlier_ones(app, client, world, receiver):
    subscribe(client, receiver.url)
    first_case, etag = report(client, col=0)
    etag = act(client, first_case, etag, "accept")
    act(client, first_case, etag, "file")
    receiver.status = 500
    moment = utcnow() + timedelta(seconds=1)
    deliver(app, moment)
    # Only the head of the case was tried; its later events wait behind it.
    assert len(receiver.requests) == 1
    receiver.status = 200
    other_case, _ = report(client, col=3)
    deliver(app, moment)  # the failed one is not due yet: the other case goes, the first waits
    assert [e["data"]["case_id"] for e in receiver.events()[1:]] == [other_case]
    deliver(app, utcnow() + LATER)
    seqs = [e["data"]["seq"] for e in receiver.events() if e["data"]["case_id"] == first_case]
    assert seqs == [1, 1, 2, 3]


def test_a_change_rolled_back_emits_no_event(app, client, world, engine, session):
    case_id, _ = report(client)
    before = outbox(engine)
    assert len(before) == 1

    case_obj = session.get(Case, case_id)
    seq = session.scalar(select(func.max(CaseEvent.seq)).where(CaseEvent.case_id == case_id)) + 1
    case_obj.status = "accepted"
    add_event(session, case_obj, seq, "accept", "reported", "user:1", "测试", utcnow())
    session.flush()
    # Written in the same transaction as the change…
    assert session.scalar(select(func.count()).select_from(WebhookEvent)) == 2
    session.rollback()
    # …and gone with it.
    assert outbox(engine) == before
    # A refused request leaves none either.
    r = client.post(
        f"/api/v1/cases/{case_id}/transitions", json={"action": "close"}, headers={"If-Match": "x"}
    )
    assert r.status_code >= 400
    assert outbox(engine) == before


def test_ping_reaches_the_receiver_and_an_inactive_subscription_refuses_it(
    app, client, world, receiver
):
    sub = subscribe(client, receiver.url)
    queued = ok(client.post(f"/api/v1/webhooks/{sub['id']}/ping"), 202)
    assert queued["event_type"] == "ping" and queued["status"] == "pending"
    deliver(app)
    assert [e["type"] for e in receiver.events()] == ["ping"]
    assert verify_signature(
        sub["secret"], receiver.requests[0]["headers"], receiver.requests[0]["body"]
    )
    # pings wait for no other ping: two to a receiver that fails are both tried at once
    receiver.status = 500
    for _ in range(2):
        ok(client.post(f"/api/v1/webhooks/{sub['id']}/ping"), 202)
    assert deliver(app).attempted == 2
    client.patch(f"/api/v1/webhooks/{sub['id']}", json={"active": False})
    assert client.post(f"/api/v1/webhooks/{sub['id']}/ping").status_code == 409
    with app.extensions["gridapi"].engine.connect() as conn:  # the one ping is audited
        pings = conn.execute(
            text("SELECT object_id FROM audit_log WHERE action = 'webhook.ping'")
        ).scalars()
        assert list(pings) == [str(sub["id"])] * 3


def test_the_delivery_log_pages_newest_first_and_takes_its_cursors(app, client, world, receiver):
    """The log pages by id, newest first, through ``page_by_id``; a ``next_cursor`` handed
    out is the last id shown, so one from before still pages on from there."""
    sub = subscribe(client, receiver.url)
    ids = [ok(client.post(f"/api/v1/webhooks/{sub['id']}/ping"), 202)["id"] for _ in range(5)]
    path = f"/api/v1/webhooks/{sub['id']}/deliveries"
    seen: list[int] = []
    query: dict[str, Any] = {"limit": 2}
    while True:
        page = ok(client.get(path, query_string=query))
        seen += [d["id"] for d in page["items"]]
        if page["next_cursor"] is None:
            break
        assert page["next_cursor"] == page["items"][-1]["id"]
        query["cursor"] = page["next_cursor"]
    assert seen == sorted(ids, reverse=True)
    assert [d["id"] for d in ok(client.get(path, query_string={"cursor": ids[3]}))["items"]] == (
        ids[2::-1]
    )
    deliver(app)  # all delivered; a filter pages the same way
    page = ok(client.get(path, query_string={"status": "delivered", "limit": 4}))
    assert [d["id"] for d in page["items"]] == ids[:0:-1] and page["next_cursor"] == ids[1]
    # A full last page answers null: it named a next page, and that page was empty.
    page = ok(client.get(path, query_string={"status": "delivered", "limit": 5}))
    assert len(page["items"]) == 5 and page["next_cursor"] is None
    assert ok(client.get(path, query_string={"status": "pending"})) == {
        "items": [],
        "next_cursor": None,
    }


def test_an_inactive_subscription_holds_its_deliveries_and_gets_no_new_ones(
    app, client, world, receiver
):
    sub = subscribe(client, receiver.url, events=["case.created"])
    held, _ = report(client)
    with app.extensions["gridapi"].sessions.begin() as s:
        assert svc.fan_out(s, utcnow()) == 1  # its delivery is queued
    client.patch(f"/api/v1/webhooks/{sub['id']}", json={"active": False})
    report(client)  # while inactive: not for this subscription
    deliver(app)
    assert receiver.requests == []
    client.patch(f"/api/v1/webhooks/{sub['id']}", json={"active": True})
    deliver(app)
    assert [e["data"]["case_id"] for e in receiver.events()] == [held]


def test_a_rotated_secret_signs_the_next_deliveries(app, client, world, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"])
    new = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))["secret"]
    report(client)
    deliver(app)
    request = receiver.requests[0]
    assert verify_signature(new, request["headers"], request["body"])
    assert not verify_signature(sub["secret"], request["headers"], request["body"])


def test_a_secret_rotated_during_a_round_signs_the_attempts_sent_after_it(
    app, client, world, receiver
):
    """The secret was read when a batch was claimed: the attempts sent after a rotation in
    the same round carried the old secret's signature, which the docs say stops at once."""
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client, col=0)
    report(client, col=1)
    rotated: list[str] = []

    def rotate_on_first(_request: Any) -> None:
        if not rotated:
            answer = client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret")
            rotated.append(ok(answer)["secret"])

    receiver.on_request = rotate_on_first
    result = deliver(app, concurrency=1)  # one batch, sent one after the other
    assert result.attempted == 2 and result.delivered == 2
    first, second = receiver.requests
    assert verify_signature(sub["secret"], first["headers"], first["body"])
    assert verify_signature(rotated[0], second["headers"], second["body"])
    assert not verify_signature(sub["secret"], second["headers"], second["body"])


def verify_previous(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """The check of a receiver that takes the previous secret's signature too."""
    if "Webhook-Signature-Previous" not in headers:
        return False
    return verify_signature(
        secret, {**headers, "Webhook-Signature": headers["Webhook-Signature-Previous"]}, body
    )


def stored_secrets(engine: Any, sub_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            select(
                WebhookSubscription.secret_enc,
                WebhookSubscription.previous_secret_enc,
                WebhookSubscription.previous_secret_expires_at,
            ).where(WebhookSubscription.id == sub_id)
        ).one()


def test_a_rotated_out_secret_signs_too_for_the_grace_period_then_is_erased(
    app, client, world, engine, receiver
):
    """A rotation was a hard cut-over: a receiver that had not deployed the new secret yet
    refused every event until it had. For GRIDAPI_WEBHOOK_SECRET_GRACE_HOURS (24 by
    default) the old secret's signature goes along in a header of its own; then it stops,
    and the old secret is erased."""
    sub = subscribe(client, receiver.url, events=["case.created"])
    old = sub["secret"]
    assert sub["previous_secret_expires_at"] is None
    before = utcnow()
    rotated = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))
    new = rotated["secret"]
    until = datetime.fromisoformat(rotated["previous_secret_expires_at"])
    assert before + timedelta(hours=24) <= until <= utcnow() + timedelta(hours=24)
    shown = ok(client.get(f"/api/v1/webhooks/{sub['id']}"))
    assert shown["previous_secret_expires_at"] == rotated["previous_secret_expires_at"]
    listed = client.get("/api/v1/webhooks").get_data(as_text=True)
    assert old not in json.dumps(shown) and old not in listed and new not in listed
    current, previous, expires = stored_secrets(engine, sub["id"])
    assert previous is not None and old not in previous and previous.startswith("v")
    assert expires == until

    report(client, col=0)
    deliver(app)
    headers, body = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    # Webhook-Signature is the new secret's alone, as before: a receiver that checks the one
    # signature with the new secret works; one that checks both works with either.
    assert verify_signature(new, headers, body)
    assert not verify_signature(old, headers, body)
    assert verify_previous(old, headers, body)
    assert not verify_previous(new, headers, body)

    report(client, col=1)
    deliver(app, until + timedelta(seconds=1))  # the grace is over
    headers, body = receiver.requests[1]["headers"], receiver.requests[1]["body"]
    assert "Webhook-Signature-Previous" not in headers
    assert verify_signature(new, headers, body) and not verify_signature(old, headers, body)
    assert stored_secrets(engine, sub["id"])[1:] == (None, None)  # erased
    after = ok(client.get(f"/api/v1/webhooks/{sub['id']}"))
    assert after["previous_secret_expires_at"] is None
    assert after["updated_at"] == shown["updated_at"]  # by nobody: the subscription is the same


def test_a_second_rotation_keeps_only_the_secret_it_replaced(app, client, world, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"])
    first = sub["secret"]
    second = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))["secret"]
    third = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))["secret"]
    report(client)
    deliver(app)
    headers, body = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    assert verify_signature(third, headers, body) and verify_previous(second, headers, body)
    assert not verify_signature(first, headers, body) and not verify_previous(first, headers, body)


def test_no_grace_period_is_a_hard_cut_over(app, client, world, engine, receiver, settings):
    st = app.extensions["gridapi"]
    st.settings = replace(settings, webhook_secret_grace_hours=0)
    sub = subscribe(client, receiver.url, events=["case.created"])
    rotated = ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))
    assert rotated["previous_secret_expires_at"] is None
    assert stored_secrets(engine, sub["id"])[1:] == (None, None)
    report(client)
    deliver(app)
    headers, body = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    assert "Webhook-Signature-Previous" not in headers
    assert verify_signature(rotated["secret"], headers, body)
    assert not verify_signature(sub["secret"], headers, body)


def test_key_rotation_re_encrypts_the_previous_webhook_secret(app, client, world, engine, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"])
    ok(client.post(f"/api/v1/webhooks/{sub['id']}/rotate-secret"))
    st = app.extensions["gridapi"]
    newer = FieldCipher({**st.cipher.keys, st.cipher.current_version + 1: os.urandom(32)})
    totals = rotate_all(st.sessions, Keys(newer, st.phone_key))
    assert totals["webhook_subscriptions"].reencrypted == 2
    assert stored_secrets(engine, sub["id"])[1].startswith(f"v{newer.current_version}:")
    st.cipher = newer  # a server restarted with the new keys
    report(client)
    deliver(app)
    headers, body = receiver.requests[0]["headers"], receiver.requests[0]["body"]
    assert verify_previous(sub["secret"], headers, body)


def test_key_rotation_re_encrypts_webhook_secrets(app, client, world, engine, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"])
    st = app.extensions["gridapi"]
    newer = FieldCipher({**st.cipher.keys, st.cipher.current_version + 1: os.urandom(32)})
    totals = rotate_all(st.sessions, Keys(newer, st.phone_key))
    assert totals["webhook_subscriptions"].reencrypted == 1
    with engine.connect() as conn:
        stored = conn.scalar(select(WebhookSubscription.secret_enc))
    assert stored.startswith(f"v{newer.current_version}:")
    st.cipher = newer  # a server restarted with the new keys
    report(client)
    deliver(app)
    request = receiver.requests[0]
    assert verify_signature(sub["secret"], request["headers"], request["body"])


def test_a_secret_that_cannot_be_decrypted_holds_back_only_its_subscription(
    app, client, world, engine, receiver
):
    broken = subscribe(client, receiver.url, events=["case.created"])
    healthy = subscribe(client, receiver.url, events=["case.created"])
    with engine.begin() as conn:
        conn.execute(
            update(WebhookSubscription)
            .where(WebhookSubscription.id == broken["id"])
            .values(secret_enc=healthy_secret_enc(conn, healthy["id"]))
        )
    report(client)
    result = deliver(app)
    assert result.delivered == 1
    assert len(receiver.requests) == 1
    assert verify_signature(
        healthy["secret"], receiver.requests[0]["headers"], receiver.requests[0]["body"]
    )
    failed = deliveries(client, broken["id"])[0]
    assert failed["status"] == "pending" and "decrypted" in failed["last_error"]


def healthy_secret_enc(conn: Any, sub_id: int) -> str:
    """Another row's ciphertext: bound to that row, so it fails to decrypt here."""
    return conn.scalar(
        select(WebhookSubscription.secret_enc).where(WebhookSubscription.id == sub_id)
    )


def test_two_workers_deliver_each_event_once(app, client, world, engine, receiver):
    subscribe(client, receiver.url, events=["case.created"])
    for i in range(24):
        report(client, col=i % 4)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            deliver(app)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    deliver(app)
    assert sorted(receiver.ids()) == sorted(f"evt_{i}" for i in outbox(engine))
    assert len(receiver.ids()) == 24


@pytest.mark.engines("postgis")
def test_a_case_s_events_stay_in_order_while_another_worker_fans_out(app, client, world, receiver):
    """A worker fanning out holds the case's first event; meanwhile the case's next event
    commits and a second worker runs a round. It skipped the held event (SKIP LOCKED),
    fanned out the next one, found no earlier delivery pending and sent it first."""
    subscribe(client, receiver.url)
    case_id, etag = report(client)
    st = app.extensions["gridapi"]
    first = st.sessions()
    assert svc.fan_out(first, utcnow()) == 1  # the report, held until this commits
    act(client, case_id, etag, "accept")
    second = threading.Thread(target=deliver, args=(app,))
    second.start()
    second.join(timeout=2)  # with fan-out one at a time, it waits for the first worker
    first.commit()
    first.close()
    second.join(timeout=30)
    assert not second.is_alive()
    deliver(app)
    assert [e["data"]["seq"] for e in receiver.events()] == [1, 2]


def test_a_claimed_batch_is_not_taken_by_another_worker_while_it_may_still_be_sent(
    app, client, world, receiver
):
    """A worker sends its claimed batch ``concurrency`` at a time, each attempt up to the
    connect and read timeouts: the claims were leased for one attempt's time, so the later
    ones of a batch ran out while the worker could still be sending them, and a second
    worker sent them too."""
    subscribe(client, receiver.url, events=["case.created"])
    for col in range(8):
        report(client, col=col)
    st = app.extensions["gridapi"]
    one_at_a_time = replace(svc.DeliveryOptions.from_settings(st.settings), concurrency=1)
    moment = utcnow()
    with st.sessions.begin() as session:
        svc.fan_out(session, moment)
    with st.sessions.begin() as session:  # the first worker takes the batch, sends it slowly
        claims = svc.claim_due(session, moment, st.cipher, one_at_a_time)
    assert len(claims) == 8
    attempt = one_at_a_time.policy.connect_timeout + one_at_a_time.policy.read_timeout
    # While the first worker may still be on its sixth attempt, a second one finds nothing.
    assert deliver(app, moment + timedelta(seconds=5.5 * attempt)).attempted == 0
    assert receiver.requests == []
    # Once the whole batch could have been sent (the first worker died), it is sent again.
    assert deliver(app, moment + timedelta(seconds=8 * attempt + 31)).delivered == 8


def test_old_finished_deliveries_and_events_are_pruned(app, client, world, engine, receiver):
    subscribe(client, receiver.url, events=["case.created"])
    report(client)
    deliver(app)
    st = app.extensions["gridapi"]
    with st.sessions.begin() as s:
        assert svc.prune(s, utcnow() - timedelta(days=1)) == 0
    with st.sessions.begin() as s:
        assert svc.prune(s, utcnow() + timedelta(days=1)) == 1
    assert outbox(engine) == []


# --- SSRF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.2/hook",  # loopback, but only 127.0.0.1/32 is allowed
        "http://10.0.0.1/hook",
        "http://192.168.1.10:8080/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:10.0.0.1]/hook",
        "http://[::ffff:127.0.0.2]/hook",
        "http://[fe80::1]/hook",
        "http://0.0.0.0/hook",
        "http://100.64.0.1/hook",
        "http://224.0.0.1/hook",
    ],
)
@pytest.mark.engines("sqlite")
def test_private_targets_are_refused_at_subscription(client, url):
    r = client.post("/api/v1/webhooks", json={"url": url, "events": ["case.created"]})
    assert r.status_code == 422, r.get_json()
    assert "not allowed" in r.get_json()["errors"]["json"]["url"][0]


@pytest.mark.engines("sqlite")
def test_a_hostname_resolving_to_loopback_is_refused(app, settings):
    strict = create_app(replace(settings, webhook_allow_private=""))
    from ..factories import Accounts

    admin = Accounts(strict).client("admin")
    r = admin.post(
        "/api/v1/webhooks", json={"url": "http://localhost/x", "events": ["case.created"]}
    )
    assert r.status_code == 422
    assert "localhost resolves to" in r.get_json()["errors"]["json"]["url"][0]
    strict.extensions["gridapi"].engine.dispose()


def test_delivery_checks_the_address_again_and_follows_no_redirect(app, client, world, receiver):
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    # The allow list was narrowed after subscribing: refused at delivery too.
    deliver(app, policy=OutboundPolicy())
    log = deliveries(client, sub["id"])
    assert log[0]["status"] == "pending" and log[0]["last_error"].startswith("refused")
    assert receiver.requests == []

    target = Receiver()
    target.start()
    try:
        receiver.status = 302
        receiver.location = target.url
        deliver(app, utcnow() + LATER)
        assert target.requests == [] and len(receiver.requests) == 1
        assert deliveries(client, sub["id"])[0]["last_status_code"] == 302
    finally:
        target.stop()


def test_an_internationalised_host_name_is_called_by_its_ascii_form(receiver, monkeypatch):
    """例子.中国 passed the checks (the resolver takes it) but its Host header could not be
    sent: every attempt failed with UnicodeEncodeError."""
    import socket

    real = socket.getaddrinfo
    seen: list[str] = []

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(host)
        return real("127.0.0.1" if host == "xn--fsqu00a.xn--fiqs8s" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    policy = OutboundPolicy(allow=parse_allowlist("127.0.0.1/32"))
    url = f"http://例子.中国:{receiver.port}/hook"
    answer = post(url, b"{}", {"Content-Type": "application/json"}, policy)
    assert answer.status == 200 and answer.address == "127.0.0.1"
    assert seen[0] == "xn--fsqu00a.xn--fiqs8s"
    assert receiver.requests[0]["headers"]["Host"] == f"xn--fsqu00a.xn--fiqs8s:{receiver.port}"


def test_a_resolver_that_hangs_ends_the_attempt_as_a_retry(
    app, client, world, receiver, monkeypatch
):
    """getaddrinfo has no timeout of its own: a slow DNS server held the delivery (and the
    round, and the lease of its batch) for as long as it took, whatever the timeouts."""
    import socket

    real = socket.getaddrinfo
    slow = threading.Event()
    release = threading.Event()

    def resolver(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "hooks.example.test":
            if slow.is_set():
                release.wait(5)  # then answers: the attempt would have gone through
            return real("127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    sub = subscribe(
        client, f"http://hooks.example.test:{receiver.port}/hook", events=["case.created"]
    )
    report(client)
    slow.set()
    try:
        policy = replace(
            svc.DeliveryOptions.from_settings(app.extensions["gridapi"].settings).policy,
            connect_timeout=0.2,
        )
        result = deliver(app, policy=policy)
    finally:
        release.set()
    assert result.attempted == 1 and result.retrying == 1
    (delivery,) = deliveries(client, sub["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["last_status_code"] is None
    assert delivery["last_error"] == (
        "refused: the host 'hooks.example.test' did not resolve within 0.2 s"
    )
    assert receiver.requests == []


def test_the_answer_read_is_capped_and_logged_short(app, client, world, receiver):
    receiver.reply = b"x" * 200_000
    policy = OutboundPolicy(allow=parse_allowlist("127.0.0.1/32"), max_response_bytes=1024)
    answer = post(receiver.url, b"{}", {"Content-Type": "application/json"}, policy)
    assert answer.status == 200 and len(answer.body) == 1024

    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    receiver.status = 500
    deliver(app)
    error = deliveries(client, sub["id"])[0]["last_error"]
    assert error.startswith("HTTP 500: xxx") and len(error) < 220


def test_an_answer_holding_nul_is_logged_without_it(app, client, world, receiver):
    """PostgreSQL cannot store U+0000 in text: the log row of an answer holding it failed,
    the round with it (nothing of its batch recorded), and the delivery was sent again every
    lease, never dead."""
    sub = subscribe(client, receiver.url, events=["case.created"])
    report(client)
    receiver.status = 500
    receiver.reply = b"bad\x00gateway"
    result = deliver(app)
    assert result.attempted == 1 and result.retrying == 1
    (delivery,) = deliveries(client, sub["id"])
    assert delivery["status"] == "pending" and delivery["attempts"] == 1
    assert delivery["last_status_code"] == 500
    assert delivery["last_error"] == "HTTP 500: bad\ufffdgateway"


@pytest.mark.engines("sqlite")
def test_a_receiver_trickling_its_answer_is_cut_off_at_the_timeouts():
    """A receiver answering 500 at once, then a few bytes every 0.3 s under the read
    timeout, held one attempt (and the delivery round) for half a minute."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nConnection: close\r\n\r\n")
            while not stop.is_set():
                try:
                    conn.sendall(b"slow " * 2)
                except OSError:
                    return
                stop.wait(0.3)

    threading.Thread(target=trickle, daemon=True).start()
    policy = OutboundPolicy(
        allow=parse_allowlist("127.0.0.1/32"), connect_timeout=1.0, read_timeout=1.0
    )
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/hook"
    started = time.monotonic()
    try:
        answer = post(url, b"{}", {"Content-Type": "application/json"}, policy)
    finally:
        stop.set()
        listener.close()
    assert answer.status == 500 and answer.body.startswith(b"slow slow ")
    assert time.monotonic() - started < 6  # connect + read timeouts (2 s); was unbounded


def _cut_off_while_trickling(listener: Any, wrap: Any, scheme: str) -> None:
    """Serve one attempt on ``listener`` (its socket wrapped by ``wrap``) with a header line
    every 0.2 s for 12 s, and check that the attempt fails as a read timeout and that its
    connection was closed before the receiver had finished."""
    cut = threading.Event()

    def trickle() -> None:
        raw, _ = listener.accept()
        with wrap(raw) as conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\n")
                for i in range(60):  # 12 s of headers
                    conn.sendall(b"X-Slow-%d: a\r\n" % i)
                    time.sleep(0.2)
                conn.sendall(b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            except OSError:
                cut.set()

    worker = threading.Thread(target=trickle, daemon=True)
    worker.start()
    policy = OutboundPolicy(
        allow=parse_allowlist("127.0.0.1/32"), connect_timeout=1.0, read_timeout=1.0
    )
    url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}/hook"
    try:
        with pytest.raises(OutboundFailed, match="read timeout"):
            post(url, b"{}", {"Content-Type": "application/json"}, policy)
    finally:
        worker.join(timeout=20)
        listener.close()
    assert cut.is_set()


@pytest.mark.engines("sqlite")
def test_a_receiver_trickling_its_headers_is_cut_off_at_the_timeouts():
    """A receiver sending a header line every 0.2 s, each under the read timeout, held the
    attempt (and the delivery round with it) for as long as it kept sending: the bound on
    the whole answer applied to its body only."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    _cut_off_while_trickling(listener, lambda raw: raw, "http")


def _self_signed(tmp_path: Any) -> tuple[str, str]:
    """Return (certificate, key) files of a certificate for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now().astimezone()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_file), str(key_file)


@pytest.mark.engines("sqlite")
def test_an_https_receiver_trickling_its_headers_is_cut_off_too(tmp_path, monkeypatch):
    """The watchdog shut the plain socket down, which TLS had taken over (and detached):
    over https it did nothing, and a trickling receiver held the attempt as before."""
    import socket
    import ssl

    cert, key = _self_signed(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # the receiver's certificate is trusted
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    _cut_off_while_trickling(
        listener, lambda raw: context.wrap_socket(raw, server_side=True), "https"
    )


@pytest.mark.engines("sqlite")
def test_a_bad_allow_list_stops_start_up(settings, tmp_path):
    with pytest.raises(ValueError, match="GRIDAPI_WEBHOOK_ALLOW_PRIVATE: 'ten.0.0.0/8'"):
        replace(settings, webhook_allow_private="127.0.0.1/32, ten.0.0.0/8")
    # `gridapi serve` stops before listening (its workers failed as they booted, and gunicorn
    # booted them again forever)
    from click.testing import CliRunner

    from gridapi.cli import main

    result = CliRunner().invoke(
        main,
        ["serve", "--port", "1"],
        env={
            "GRIDAPI_DATABASE_URL": f"sqlite:///{tmp_path / 'x.sqlite3'}",
            "GRIDAPI_WEBHOOK_ALLOW_PRIVATE": "notacidr",
        },
    )
    assert result.exit_code == 1
    assert "GRIDAPI_WEBHOOK_ALLOW_PRIVATE: 'notacidr' is not a network" in result.output


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("8.8.8.8", True),
        ("2001:4860:4860::8888", True),
        ("127.0.0.1", True),  # in the allow list below
        ("127.0.0.2", False),
        ("10.1.2.3", False),
        ("172.16.0.1", False),
        ("169.254.169.254", False),
        ("::1", False),
        ("::", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("::ffff:8.8.8.8", True),
        ("64:ff9b::a00:1", False),  # NAT64 of 10.0.0.1
        ("2002:a00:1::1", False),  # 6to4 of 10.0.0.1
        ("ff02::1", False),
        ("240.0.0.1", False),
    ],
)
def test_address_rules(address, allowed):
    import ipaddress

    allow = parse_allowlist("127.0.0.1/32")
    assert (address_refusal(ipaddress.ip_address(address), allow) is None) is allowed


def test_worker_once_delivers_the_waiting_events(client, world, settings, receiver):
    """`gridapi worker --once` (run from cron) sends what is due, as the looping worker does."""
    from click.testing import CliRunner

    from gridapi.cli import main

    subscribe(client, receiver.url, events=["case.created"])
    case_id, _ = report(client)
    env = {
        "GRIDAPI_DATABASE_URL": settings.database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,  # the field keys the secret is sealed with
        "GRIDAPI_WEBHOOK_ALLOW_PRIVATE": "127.0.0.1/32",
    }
    result = CliRunner().invoke(main, ["worker", "--once"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "webhooks: fanned_out=1 attempted=1 delivered=1 retrying=0 dead=0" in result.output
    assert [e["data"]["case_id"] for e in receiver.events()] == [case_id]


def test_a_township_whose_end_is_planned_can_be_subscribed_to(client, world, receiver):
    """A township with a planned end (a merger next month: still valid today) was refused as
    "no such region", as if it had ended already."""
    from gridapi import clock

    later = (clock.today() + timedelta(days=30)).isoformat()
    r = client.patch(f"/api/v1/regions/{TOWNSHIP}", json={"valid_to": later})
    assert r.status_code == 200, r.get_json()
    created = subscribe(client, receiver.url, region_codes=[TOWNSHIP])
    assert created["region_codes"] == [TOWNSHIP]


def test_the_audit_log_keeps_no_token_of_the_receiver_url(client, world, engine, receiver):
    """Receivers often take an access token in the query (`?token=…`). The audit log kept the
    whole URL, for good (it is append-only), readable by every admin over the area."""
    created = subscribe(client, receiver.url + "?token=s3cr3t-t0ken")
    assert created["url"].endswith("?token=s3cr3t-t0ken")  # the owner still sees it
    ok(client.patch(f"/api/v1/webhooks/{created['id']}", json={"active": False}))
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT action, summary FROM audit_log WHERE object_type = 'webhook'")
        ).all()
    assert [r.action for r in rows] == ["webhook.create", "webhook.update"]
    for row in rows:
        summary = row.summary if isinstance(row.summary, dict) else json.loads(row.summary)
        assert summary["url"] == receiver.url + "?…", summary
        assert "s3cr3t" not in json.dumps(summary)


def test_an_area_admin_may_pause_but_not_redirect_an_app_s_subscription(
    app, client, accounts, world, receiver
):
    """An admin restricted to an area sees the subscriptions of its area, an app's too. It
    could point a hotline's subscription at another URL, or rotate its secret (and be the
    only one to know the new one): the app's events were taken from it. Both are 403 now,
    for any owner's subscription but the admin's own; pausing it stays allowed, and the
    administrator of the whole system may still do both."""
    hotline = api_client(app, client, COMMUNITY_A)
    theirs = subscribe(hotline, receiver.url, events=["case.created"])
    area_admin = accounts.client("admin2", "admin", scope_region=TOWNSHIP)
    assert ok(area_admin.get(f"/api/v1/webhooks/{theirs['id']}"))["id"] == theirs["id"]
    elsewhere = receiver.url + "?elsewhere=1"
    r = area_admin.patch(f"/api/v1/webhooks/{theirs['id']}", json={"url": elsewhere})
    assert r.status_code == 403, r.get_json()
    assert "owner" in r.get_json()["message"]
    r = area_admin.post(f"/api/v1/webhooks/{theirs['id']}/rotate-secret")
    assert r.status_code == 403, r.get_json()
    assert ok(hotline.get(f"/api/v1/webhooks/{theirs['id']}"))["url"] == receiver.url
    paused = area_admin.patch(f"/api/v1/webhooks/{theirs['id']}", json={"active": False})
    assert ok(paused)["active"] is False
    # its own subscription, and the unrestricted admin: as before
    own = subscribe(area_admin, receiver.url, events=["case.created"])
    changed = area_admin.patch(f"/api/v1/webhooks/{own['id']}", json={"url": elsewhere})
    assert ok(changed)["url"] == elsewhere
    assert ok(area_admin.post(f"/api/v1/webhooks/{own['id']}/rotate-secret"))["secret"]
    r = client.patch(f"/api/v1/webhooks/{theirs['id']}", json={"url": elsewhere})
    assert ok(r)["url"] == elsewhere
    assert ok(client.post(f"/api/v1/webhooks/{theirs['id']}/rotate-secret"))["secret"]


def test_an_app_given_tasks_read_hears_of_task_events(app, client, world, receiver):
    """An app may be given tasks:read now: it subscribes to task events of its area."""
    created = client.post(
        "/api/v1/clients",
        json={
            "name": "城运中心",
            "scopes": ["tasks:read", "webhooks:manage"],
            "scope_region": COMMUNITY_A,
        },
    )
    assert created.status_code == 201, created.get_json()
    city = app.test_client()
    city.environ_base["HTTP_X_API_KEY"] = created.get_json()["api_key"]
    sub = subscribe(city, receiver.url, events=["task.created"])
    body = {
        "title": "走访独居老人",
        "grid": COMMUNITY_A + "001",
        "due_in": {"amount": 3, "unit": "days"},
    }
    task = ok(client.post("/api/v1/tasks", json=body), 201)
    deliver(app)
    assert [(e["type"], e["data"]["task_id"]) for e in receiver.events()] == [
        ("task.created", task["id"])
    ]
    assert [d["task_id"] for d in deliveries(city, sub["id"])] == [task["id"]]
