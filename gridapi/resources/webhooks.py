"""Webhook subscriptions over HTTP: create (secret shown once), read, change, delete, rotate
the secret, the delivery log, redelivery and ping."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from flask.views import MethodView

from ..auditing import audit
from ..auth import Principal, current_principal
from ..extensions import commit, db_session, state
from ..models.base import utcnow
from ..models.webhooks import WebhookSubscription
from ..outbound import policy_from_settings
from ..schemas.webhooks import (
    DeliveryArgsSchema,
    DeliveryListSchema,
    DeliverySchema,
    WebhookCreatedSchema,
    WebhookCreateSchema,
    WebhookListSchema,
    WebhookSchema,
    WebhookUpdateSchema,
)
from ..services import webhooks as svc
from .blueprint import Blueprint

blp = Blueprint(
    "webhooks",
    __name__,
    url_prefix="/api/v1/webhooks",
    description="Signed webhooks (事件推送) for third-party apps: subscribe to case and task "
    "events of an area (and, with `notifications:relay`, to the notifications queued for "
    "people, for an SMS or push gateway), receive them at-least-once, in order per case, signed with "
    "HMAC-SHA256 (`Webhook-Id`, `Webhook-Timestamp`, `Webhook-Signature`); see the delivery "
    "log, redeliver, ping. Details: docs/webhooks.md.",
)

_INVALID = "Invalid body: `errors.json` names each field (a refused URL under `url`)."


def _principal() -> Principal:
    principal = current_principal()
    assert principal is not None
    return principal


def _body(sub: WebhookSubscription, **extra: Any) -> dict[str, Any]:
    counts = svc.delivery_counts(db_session(), [sub.id])[sub.id]
    return {**svc.subscription_view(sub, counts), **extra}


def _logged_url(url: str) -> str:
    """The URL as the audit log keeps it: without its query, which receivers use for access
    tokens (``?token=…``); the log is append-only and outlives the subscription."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query="")) + ("?…" if parts.query else "")


def _audit(action: str, sub: WebhookSubscription, **summary: Any) -> None:
    audit(
        f"webhook.{action}",
        "webhook",
        sub.id,
        summary={"url": _logged_url(sub.url), "events": sub.events, **summary},
        region_code=sub.region_codes[0] if len(sub.region_codes) == 1 else None,
    )


@blp.route("")
class Webhooks(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(200, WebhookListSchema)
    def get(self):
        """List webhook subscriptions

        An app sees its own subscriptions; a user those whose whole area lies in their
        scope. Each carries how many of its deliveries are pending and dead now.
        """
        session = db_session()
        subs = svc.list_subscriptions(session, _principal())
        counts = svc.delivery_counts(session, [s.id for s in subs])
        return {"items": [svc.subscription_view(s, counts[s.id]) for s in subs]}

    @blp.requires("webhooks:manage")
    @blp.arguments(WebhookCreateSchema)
    @blp.response(201, WebhookCreatedSchema)
    @blp.alt_response(422, schema="Error", description=_INVALID)
    def post(self, data):
        """Subscribe a URL to events; the answer shows the signing secret once

        `events` from the list of event types; `region_codes` (inside your scope; default
        your whole area) and `categories` (2- or 4-digit codes; default all) filter them.
        The URL must be http(s) and must not resolve to a loopback, private, link-local or
        reserved address (unless the server allows it) → 422 otherwise. Events are sent
        from the moment of subscription on.
        """
        principal = _principal()
        st = state()
        sub, secret = svc.create_subscription(
            db_session(),
            principal,
            data,
            cipher=st.cipher,
            policy=policy_from_settings(st.settings),
        )
        _audit("create", sub, region_codes=sub.region_codes, categories=sub.categories)
        body = _body(sub, secret=secret)
        commit()
        return body


@blp.route("/<id:webhook_id>")
class WebhookById(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(200, WebhookSchema)
    def get(self, webhook_id):
        """Get a webhook subscription

        Returns the subscription with its URL, event types, area (`region_codes`), categories,
        description, active flag, owner and how many of its deliveries are pending and dead now;
        never the signing secret (rotate it to get a new one). Needs `webhooks:manage`. An app sees
        only its own subscriptions, a user those whose whole area lies in their scope (and their
        own); any other id answers 404 like one that does not exist.
        """
        return _body(svc.get_subscription(db_session(), webhook_id, _principal()))

    @blp.requires("webhooks:manage")
    @blp.arguments(WebhookUpdateSchema)
    @blp.response(200, WebhookSchema)
    @blp.alt_response(422, schema="Error", description=_INVALID)
    def patch(self, data, webhook_id):
        """Change a webhook subscription

        Any of `url`, `events`, `region_codes`, `categories`, `description`, `active`.
        An inactive subscription keeps its pending deliveries and gets no new ones; they
        go out when it is active again. A new `url` of a subscription another account or an
        app owns is the owner's to set, or an administrator's of the whole system: an admin
        restricted to an area may pause or narrow such a subscription, not redirect it (403).
        """
        st = state()
        sub = svc.update_subscription(
            db_session(),
            webhook_id,
            _principal(),
            data,
            policy=policy_from_settings(st.settings),
        )
        _audit("update", sub, changed=sorted(data))
        body = _body(sub)
        commit()
        return body

    @blp.requires("webhooks:manage")
    @blp.response(204)
    def delete(self, webhook_id):
        """Delete a webhook subscription and its delivery log

        Removes the subscription at once, with its delivery log and any deliveries still pending,
        and answers 204: no further events are sent to its URL, and the log can no longer be read or
        redelivered. To pause deliveries instead, set `active: false` with a PATCH. Needs
        `webhooks:manage`; a subscription the caller cannot see answers 404. Writes an audit row
        `webhook.delete`.
        """
        session = db_session()
        sub = svc.get_subscription(session, webhook_id, _principal())
        _audit("delete", sub)
        svc.delete_subscription(session, webhook_id, _principal())
        commit()


@blp.route("/<id:webhook_id>/rotate-secret")
class RotateWebhookSecret(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(200, WebhookCreatedSchema)
    def post(self, webhook_id):
        """Replace the signing secret; the answer shows the new one once

        Deliveries from now on (retries included) are signed with the new one in
        `Webhook-Signature`. The old one goes on signing them too, in
        `Webhook-Signature-Previous`, until `previous_secret_expires_at` (the server's
        grace period after a rotation, 24 hours by default; `null` when it has none), so a
        receiver that checks both headers may deploy the new secret meanwhile; it is then
        erased. Rotating again ends that grace: only the secret just replaced is kept. Only
        the subscription's owner, or an administrator of the whole system, may rotate it
        (403 for an admin restricted to an area: the owner would be left without the secret).
        """
        st = state()
        sub, secret = svc.rotate_secret(
            db_session(),
            webhook_id,
            _principal(),
            cipher=st.cipher,
            grace=timedelta(hours=st.settings.webhook_secret_grace_hours),
            now=utcnow(),
        )
        until = sub.previous_secret_expires_at
        _audit(
            "rotate_secret",
            sub,
            previous_secret_expires_at=until.isoformat() if until is not None else None,
        )
        body = _body(sub, secret=secret)
        commit()
        return body


@blp.route("/<id:webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.requires("webhooks:manage")
    @blp.arguments(DeliveryArgsSchema, location="query")
    @blp.response(200, DeliveryListSchema)
    def get(self, args, webhook_id):
        """List a subscription's deliveries, newest first

        Each: the event (`event_id` is the `Webhook-Id` sent), status (`pending`,
        `delivered`, `dead`), attempts, the last answer's status code, error and duration,
        and when a pending one is tried next. Filter by `status`; pass `next_cursor` back as
        `cursor` for the next page.
        """
        session = db_session()
        sub = svc.get_subscription(session, webhook_id, _principal())
        rows = svc.list_deliveries(session, sub, args)
        return {
            "items": [svc.delivery_view(d, e) for d, e in rows],
            "next_cursor": rows[-1][0].id if rows.more else None,
        }


@blp.route("/<id:webhook_id>/deliveries/<bigid:delivery_id>/redeliver")
class Redeliver(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(202, DeliverySchema)
    @blp.alt_response(409, response="CONFLICT")
    def post(self, webhook_id, delivery_id):
        """Send a delivery again (a dead letter, or one delivered)

        It becomes pending, due now, with a fresh count of attempts, and keeps its
        `Webhook-Id`, so a receiver that has it already can drop it. A delivery still
        pending → 409 (it is retried on its own).
        """
        session = db_session()
        sub = svc.get_subscription(session, webhook_id, _principal())
        delivery, event = svc.redeliver(session, sub, delivery_id, utcnow())
        _audit("redeliver", sub, delivery_id=delivery.id, event_id=svc.event_id(event))
        body = svc.delivery_view(delivery, event)
        commit()
        return body


@blp.route("/<id:webhook_id>/ping")
class PingWebhook(MethodView):
    @blp.requires("webhooks:manage")
    @blp.response(202, DeliverySchema)
    @blp.alt_response(409, response="CONFLICT")
    def post(self, webhook_id):
        """Send a `ping` event to this subscription, to test the receiver

        Queued like any event; follow it in the delivery log; audited. An inactive
        subscription → 409.
        """
        session = db_session()
        sub = svc.get_subscription(session, webhook_id, _principal())
        delivery, event = svc.ping(session, sub, utcnow())
        _audit("ping", sub, delivery_id=delivery.id, event_id=svc.event_id(event))
        body = svc.delivery_view(delivery, event)
        commit()
        return body
