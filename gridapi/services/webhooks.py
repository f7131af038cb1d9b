"""Webhook subscriptions and the delivery of the outbox: fan-out, signing, retries, order.

Events are written by triggers (see ``gridapi.models.webhooks``). The worker, every
``GRIDAPI_WEBHOOK_POLL_SECONDS``:

1. fans each new event out to the active subscriptions whose event types, area (region
   code prefixes) and categories match: one ``pending`` delivery per subscription;
2. claims due deliveries in a short write transaction (``FOR UPDATE SKIP LOCKED`` on
   PostgreSQL, BEGIN IMMEDIATE on SQLite), pushing their ``next_attempt_at`` one lease ahead
   so no other worker takes them meanwhile, and never a delivery while an earlier one of the
   same case (``ordering_key``) to the same subscription is still pending;
3. POSTs them, outside any transaction, signed (``Webhook-Signature: v1=<hex HMAC-SHA256 of
   "<timestamp>.<body>">``; for ``GRIDAPI_WEBHOOK_SECRET_GRACE_HOURS`` after a rotation also
   ``Webhook-Signature-Previous`` with the secret it replaced) through ``gridapi.outbound``;
4. records each answer: 2xx → ``delivered``; anything else → retried after an exponential
   backoff with full jitter (or, on a 429 or 503 with ``Retry-After``, no sooner than the
   receiver asked, up to ``GRIDAPI_WEBHOOK_BACKOFF_MAX_SECONDS``), and ``dead`` after
   ``GRIDAPI_WEBHOOK_MAX_ATTEMPTS``.

A worker that dies between 2 and 4 leaves its claims to expire: they are sent again
(at-least-once; receivers deduplicate on ``Webhook-Id``).
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import json
import logging
import math
import random
import re
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, exists, func, or_, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, aliased

from .. import __version__, clock
from ..codes import InvalidCode, region_level, subtree_prefix
from ..db import Sessions, in_write_transaction, sessions_of
from ..errors import Conflict, NotFound, Unprocessable
from ..models.base import utcnow
from ..models.categories import Category
from ..models.regions import Region
from ..models.webhooks import (
    PING,
    WebhookDelivery,
    WebhookEvent,
    WebhookSubscription,
)
from ..outbound import OutboundFailed, OutboundPolicy, OutboundRefused, check_url, post
from ..security.fields import CiphertextError, FieldCipher
from .cursors import one_page, page_by_id
from .regions import valid_on

if TYPE_CHECKING:
    from ..auth import Principal

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"
FAN_OUT_BATCH = 500
CLAIM_BATCH = 50
PRUNE_INTERVAL_SECONDS = 3600.0
# The PostgreSQL advisory lock (two-key form, first key) held while fanning out.
_FAN_OUT_LOCK = 2270


# --- signing --------------------------------------------------------------------------------


def new_secret() -> str:
    """Return a fresh signing secret, ``whsec_`` and 43 URL-safe characters (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Return the hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under the secret's UTF-8 bytes."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


#: The header of the previous secret's signature, sent during the grace after a rotation.
PREVIOUS_SIGNATURE_HEADER = "Webhook-Signature-Previous"


def signed_headers(
    secret: str, event_id: str, body: bytes, timestamp: int, previous: str | None = None
) -> dict[str, str]:
    """Return the headers of one attempt: id, timestamp, signature and the content type, and
    with ``previous`` (a rotated-out secret still in its grace) its signature too.

    ``Webhook-Signature`` holds the current secret's signature alone, as it always has: a
    receiver that compares the whole value with the one signature it computes (the code our
    docs gave) goes on working with the new secret. Several values in that header (Stripe's
    way) would have made every such receiver refuse every event of the grace period, the new
    secret's included; the previous secret's signature goes in a header of its own, for
    receivers that check it too (docs/webhooks.md)."""
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"gridapi-webhooks/{__version__}",
        "Webhook-Id": event_id,
        "Webhook-Timestamp": str(timestamp),
        "Webhook-Signature": f"{SIGNATURE_VERSION}={sign(secret, timestamp, body)}",
    }
    if previous is not None:
        headers[PREVIOUS_SIGNATURE_HEADER] = (
            f"{SIGNATURE_VERSION}={sign(previous, timestamp, body)}"
        )
    return headers


def event_id(event: WebhookEvent) -> str:
    return f"evt_{event.id}"


def event_body(event: WebhookEvent) -> bytes:
    """Return the JSON body of an event: the same bytes on every attempt."""
    envelope = {
        "id": event_id(event),
        "type": event.event_type,
        "created_at": event.created_at.isoformat().replace("+00:00", "Z"),
        "data": event.payload if isinstance(event.payload, dict) else json.loads(event.payload),
    }
    return json.dumps(envelope, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


def _seal(cipher: FieldCipher, sub: WebhookSubscription, secret: str) -> str:
    return cipher.encrypt(secret, table="webhook_subscriptions", column="secret", row=sub.uid)


def open_secret(cipher: FieldCipher, uid: str, stored: str) -> str:
    """Return a subscription's secret. Raises CiphertextError."""
    return cipher.decrypt(stored, table="webhook_subscriptions", column="secret", row=uid)


def _seal_previous(cipher: FieldCipher, sub: WebhookSubscription, secret: str) -> str:
    return cipher.encrypt(
        secret, table="webhook_subscriptions", column="previous_secret", row=sub.uid
    )


def open_previous_secret(cipher: FieldCipher, uid: str, stored: str) -> str:
    """Return a subscription's previous secret. Raises CiphertextError."""
    return cipher.decrypt(stored, table="webhook_subscriptions", column="previous_secret", row=uid)


def previous_secret_until(sub: WebhookSubscription, now: datetime) -> datetime | None:
    """Return until when the secret a rotation replaced still signs deliveries (None when
    there is none, or its grace is over)."""
    until = sub.previous_secret_expires_at
    if sub.previous_secret_enc is None or until is None or until <= now:
        return None
    return until


# --- subscriptions --------------------------------------------------------------------------


def _invalid(name: str, reason: str) -> Unprocessable:
    return Unprocessable(f"Invalid {name}.", errors={"json": {name: [reason]}})


def _not_found() -> NotFound:
    return NotFound("The webhook subscription does not exist or is outside your scope.")


def _check_url(url: str, policy: OutboundPolicy) -> None:
    try:
        check_url(url, policy)
    except OutboundRefused as exc:
        raise _invalid("url", str(exc)) from None


def _regions(session: Session, principal: Principal, codes: list[str] | None) -> list[str]:
    """Return the subscription's region codes: given ones (current regions inside the
    caller's scope), or the caller's whole area. Raises Unprocessable."""
    if not codes:
        if principal.scope.unrestricted:
            return []
        if principal.region_code:
            return [principal.region_code]
        raise _invalid("region_codes", "give the regions (your scope is a set of grids)")
    result = []
    for code in dict.fromkeys(codes):
        try:
            region_level(code)
        except InvalidCode as exc:
            raise _invalid("region_codes", f"{code}: {exc}") from None
        if not principal.scope.covers_region(code):
            raise _invalid("region_codes", f"{code} is outside your scope")
        result.append(code)
    known = set(
        session.scalars(select(Region.code).where(Region.code.in_(result), valid_on(clock.today())))
    )
    unknown = [code for code in result if code not in known]
    if unknown:
        raise _invalid("region_codes", f"no such region: {', '.join(unknown)}")
    return result


def _categories(session: Session, codes: list[str] | None) -> list[str]:
    """Return the subscription's category codes (classes or subclasses), each once. Raises
    Unprocessable for a code no category has (a filter that could never match)."""
    result = list(dict.fromkeys(codes or []))
    known = set(session.scalars(select(Category.code).where(Category.code.in_(result))))
    unknown = [code for code in result if code not in known]
    if unknown:
        raise _invalid("categories", f"no such category: {', '.join(unknown)}")
    return result


def _visible(sub: WebhookSubscription, principal: Principal) -> bool:
    """A client sees its own subscriptions; a user those whose whole area is in scope."""
    if principal.kind == "client":
        return sub.owner_client_id == principal.id
    if principal.scope.unrestricted:
        return True
    if sub.owner_user_id == principal.id:
        return True
    return bool(sub.region_codes) and all(
        principal.scope.covers_region(c) for c in sub.region_codes
    )


#: What an owner must be able to read to hear of events of each kind: a task's title and
#: assignee went to every subscriber of the area, an app without tasks:read included, and
#: a case's events to an owner that may not read cases. Who is notified of
#: what, and when, is for the gateways that relay it (SMS, app push) alone.
EVENT_PERMISSIONS = {
    "case": "cases:read",
    "task": "tasks:read",
    "campaign": "tasks:read",
    "notification": "notifications:relay",
}


def _needs(event_type: str) -> str | None:
    return EVENT_PERMISSIONS.get(event_type.split(".", 1)[0])


def _check_events(principal: Principal | None, events: list[str]) -> None:
    """Refuse events the subscription's owner may not hear of (422 naming ``events``)."""
    if principal is None:  # revoked or stripped: it hears nothing anyway
        return
    missing = [
        f"{e} needs {need}, which the subscription's owner does not hold"
        for e in events
        if (need := _needs(e)) is not None and need not in principal.permissions
    ]
    if missing:
        raise Unprocessable(
            "The subscription's owner may not read what some of these events tell.",
            errors={"json": {"events": missing}},
        )


def create_subscription(
    session: Session,
    principal: Principal,
    data: dict[str, Any],
    *,
    cipher: FieldCipher,
    policy: OutboundPolicy,
) -> tuple[WebhookSubscription, str]:
    """Create a subscription; return it and its secret (shown once). Raises Unprocessable."""
    _check_url(data["url"], policy)
    _check_events(principal, data["events"])
    sub = WebhookSubscription(
        owner_user_id=principal.id if principal.kind == "user" else None,
        owner_client_id=principal.id if principal.kind == "client" else None,
        url=data["url"],
        events=list(dict.fromkeys(data["events"])),
        region_codes=_regions(session, principal, data.get("region_codes")),
        categories=_categories(session, data.get("categories")),
        description=data.get("description", ""),
        active=data.get("active", True),
        created_by=principal.actor_id,
        secret_enc="",
    )
    sub.uid = secrets.token_hex(16)
    secret = new_secret()
    sub.secret_enc = _seal(cipher, sub, secret)
    session.add(sub)
    session.flush()
    return sub, secret


def list_subscriptions(session: Session, principal: Principal) -> list[WebhookSubscription]:
    """Return the subscriptions the caller may see, by id."""
    stmt = select(WebhookSubscription).order_by(WebhookSubscription.id)
    if principal.kind == "client":
        stmt = stmt.where(WebhookSubscription.owner_client_id == principal.id)
    return [s for s in session.scalars(stmt) if _visible(s, principal)]


def get_subscription(session: Session, sub_id: int, principal: Principal) -> WebhookSubscription:
    """Return a subscription the caller may see. Raises NotFound (also when out of scope)."""
    sub = session.get(WebhookSubscription, sub_id)
    if sub is None or not _visible(sub, principal):
        raise _not_found()
    return sub


def _check_redirects(sub: WebhookSubscription, principal: Principal, what: str) -> None:
    """Refuse (403) a change of where another owner's events go, or of the secret they are
    signed with, to any caller but an unrestricted one.

    An admin restricted to an area sees the subscriptions of that area, an app's too, and
    may pause or narrow them; pointing a hotline's subscription at another URL, or giving
    it a new secret only the admin then knew, took the app's events away from it."""
    from ..auth import Forbidden

    if principal.kind == "client" or principal.scope.unrestricted:
        return  # a client sees only its own
    if sub.owner_user_id == principal.id:
        return
    raise Forbidden(
        f"Only the subscription's owner, or an administrator of the whole system, may {what}."
    )


def update_subscription(
    session: Session,
    sub_id: int,
    principal: Principal,
    data: dict[str, Any],
    *,
    policy: OutboundPolicy,
) -> WebhookSubscription:
    """Change url, events, area, categories, description or active. Raises NotFound,
    Unprocessable."""
    sub = get_subscription(session, sub_id, principal)
    if "url" in data and data["url"] != sub.url:
        _check_redirects(sub, principal, "change its url")
        _check_url(data["url"], policy)
        sub.url = data["url"]
    if "events" in data:
        _check_events(_owner_now(session, sub), data["events"])
        sub.events = list(dict.fromkeys(data["events"]))
    if "region_codes" in data:
        sub.region_codes = _regions(session, principal, data["region_codes"])
    if "categories" in data:
        sub.categories = _categories(session, data["categories"])
    for name in ("description", "active"):
        if name in data:
            setattr(sub, name, data[name])
    sub.updated_at = utcnow()
    session.flush()
    return sub


def delete_subscription(session: Session, sub_id: int, principal: Principal) -> None:
    """Delete a subscription with its delivery log. Raises NotFound."""
    sub = get_subscription(session, sub_id, principal)
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.subscription_id == sub.id))
    session.execute(delete(WebhookEvent).where(WebhookEvent.subscription_id == sub.id))
    session.delete(sub)
    session.flush()


def rotate_secret(
    session: Session,
    sub_id: int,
    principal: Principal,
    *,
    cipher: FieldCipher,
    grace: timedelta = timedelta(0),
    now: datetime | None = None,
) -> tuple[WebhookSubscription, str]:
    """Replace the secret; return the new one. For ``grace`` from ``now`` the old one goes
    on signing deliveries beside it (kept encrypted, never shown); a zero grace stops it at
    once. A rotation during a grace ends the grace of the secret before: only the one just
    replaced is kept. Raises NotFound, and Forbidden for another owner's subscription
    (``_check_redirects``)."""
    sub = get_subscription(session, sub_id, principal)
    _check_redirects(sub, principal, "rotate its secret")
    now = now or utcnow()
    sub.previous_secret_enc = None
    sub.previous_secret_expires_at = None
    if grace > timedelta(0):
        try:
            replaced = open_secret(cipher, sub.uid, sub.secret_enc)
        except CiphertextError:
            # It signs nothing now (its deliveries wait, then die): nothing to keep.
            log.error("webhook subscription %s: its secret could not be decrypted", sub.id)
        else:
            sub.previous_secret_enc = _seal_previous(cipher, sub, replaced)
            sub.previous_secret_expires_at = now + grace
    secret = new_secret()
    sub.secret_enc = _seal(cipher, sub, secret)
    sub.updated_at = now
    session.flush()
    return sub, secret


def erase_expired_secrets(session: Session, now: datetime) -> int:
    """Erase the previous secrets whose grace is over; return how many. Flushes, never
    commits. (``updated_at`` stays: nobody changed the subscription.)"""
    result = session.execute(
        update(WebhookSubscription)
        .where(WebhookSubscription.previous_secret_expires_at <= now)
        .values(
            previous_secret_enc=None,
            previous_secret_expires_at=None,
            updated_at=WebhookSubscription.updated_at,
        )
        .execution_options(synchronize_session=False)
    )
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def _secrets_to_erase(sessions: Sessions, moment: datetime) -> bool:
    """Return whether a previous secret's grace is over (a plain read)."""
    with sessions() as session:
        stmt = select(WebhookSubscription.id).where(
            WebhookSubscription.previous_secret_expires_at <= moment
        )
        return session.scalar(stmt.limit(1)) is not None


def delivery_counts(session: Session, sub_ids: list[int]) -> dict[int, dict[str, int]]:
    """Return ``{subscription id: {"pending": n, "dead": n}}``."""
    counts: dict[int, dict[str, int]] = {i: {"pending": 0, "dead": 0} for i in sub_ids}
    if not sub_ids:
        return counts
    rows = session.execute(
        select(WebhookDelivery.subscription_id, WebhookDelivery.status, func.count())
        .where(
            WebhookDelivery.subscription_id.in_(sub_ids),
            WebhookDelivery.status.in_(("pending", "dead")),
        )
        .group_by(WebhookDelivery.subscription_id, WebhookDelivery.status)
    ).all()
    for sub_id, status, n in rows:
        counts[sub_id][status] = n
    return counts


def subscription_view(
    sub: WebhookSubscription, counts: dict[str, int] | None = None, now: datetime | None = None
) -> dict[str, Any]:
    return {
        "id": sub.id,
        "url": sub.url,
        "events": sub.events,
        "region_codes": sub.region_codes,
        "categories": sub.categories,
        "description": sub.description,
        "active": sub.active,
        "owner": (
            {"kind": "client", "id": sub.owner_client_id}
            if sub.owner_client_id
            else {"kind": "user", "id": sub.owner_user_id}
        ),
        "created_by": sub.created_by,
        "created_at": sub.created_at,
        "updated_at": sub.updated_at,
        "deliveries": counts or {"pending": 0, "dead": 0},
        "previous_secret_expires_at": previous_secret_until(sub, now or utcnow()),
    }


# --- the delivery log -----------------------------------------------------------------------


def list_deliveries(
    session: Session, sub: WebhookSubscription, args: dict[str, Any]
) -> list[tuple[WebhookDelivery, WebhookEvent]]:
    """Return a page of the subscription's deliveries, newest first."""
    stmt = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.subscription_id == sub.id)
    )
    if args.get("status"):
        stmt = stmt.where(WebhookDelivery.status == args["status"])
    page = page_by_id(
        stmt, WebhookDelivery.id, args.get("cursor"), args["limit"], newest_first=True
    )
    return one_page(((d, e) for d, e in session.execute(page)), args["limit"])


def delivery_view(delivery: WebhookDelivery, event: WebhookEvent) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "event_id": event_id(event),
        "event_type": event.event_type,
        "case_id": event.case_id,
        "task_id": event.task_id,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": delivery.next_attempt_at if delivery.status == "pending" else None,
        "last_attempt_at": delivery.last_attempt_at,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_duration_ms": delivery.last_duration_ms,
        "delivered_at": delivery.delivered_at,
        "created_at": delivery.created_at,
    }


def redeliver(
    session: Session, sub: WebhookSubscription, delivery_id: int, now: datetime
) -> tuple[WebhookDelivery, WebhookEvent]:
    """Queue a delivery again (delivered or dead), due now with a fresh attempt count.

    Raises NotFound; Conflict for a pending one (it is retried on its own: resetting it
    skipped the backoff and, again and again, kept it from ever being dead-lettered).
    """
    row = session.execute(
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id == delivery_id, WebhookDelivery.subscription_id == sub.id)
    ).first()
    if row is None:
        raise NotFound("The delivery does not exist.")
    delivery, event = row
    if delivery.status == "pending":
        raise Conflict(
            "The delivery is still pending: it is tried again on its own "
            "(see next_attempt_at); redeliver a dead or delivered one."
        )
    delivery.status = "pending"
    delivery.attempts = 0
    delivery.next_attempt_at = now
    session.flush()
    return delivery, event


def ping(
    session: Session, sub: WebhookSubscription, now: datetime
) -> tuple[WebhookDelivery, WebhookEvent]:
    """Queue a ``ping`` event to this subscription alone. Raises Conflict when inactive."""
    if not sub.active:
        raise Conflict("The subscription is inactive; activate it first.")
    event = WebhookEvent(
        event_type=PING,
        subscription_id=sub.id,
        ordering_key=f"ping:{sub.id}",
        payload={"subscription_id": sub.id, "message": "pong"},
        created_at=now,
        fanned_out_at=now,
    )
    session.add(event)
    session.flush()
    # A ping belongs to no case or task: it waits for no other ping (ordered by the
    # subscription, each waited for the one before to be delivered or dead).
    event.ordering_key = f"ping:{event.id}"
    delivery = WebhookDelivery(
        subscription_id=sub.id,
        event_id=event.id,
        ordering_key=event.ordering_key,
        status="pending",
        attempts=0,
        next_attempt_at=now,
        created_at=now,
    )
    session.add(delivery)
    session.flush()
    return delivery, event


# --- the worker -----------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryOptions:
    """Retries, backoff, the lease of a claim, parallel requests, and the outbound policy."""

    policy: OutboundPolicy = field(default_factory=OutboundPolicy)
    max_attempts: int = 12
    backoff_base_seconds: float = 10.0
    backoff_max_seconds: float = 3600.0
    concurrency: int = 4
    poll_seconds: float = 1.0
    retention_days: float = 30.0

    def lease_seconds(self, claimed: int = 1) -> float:
        """How long a batch of ``claimed`` deliveries is held: longer than the worker can
        take to send them all, ``concurrency`` at a time, each attempt ending by the connect
        and read timeouts together; an expired claim is sent again. (A lease of one
        attempt's time ran out under the later ones of a batch while the worker could still
        be sending them, and another worker sent them too.)"""
        waves = math.ceil(max(1, claimed) / self.concurrency)
        return waves * (self.policy.connect_timeout + self.policy.read_timeout) + 30.0

    @classmethod
    def from_settings(cls, settings: Any) -> DeliveryOptions:
        from ..outbound import policy_from_settings

        return cls(
            policy=policy_from_settings(settings),
            max_attempts=max(1, int(settings.webhook_max_attempts)),
            backoff_base_seconds=float(settings.webhook_backoff_base_seconds),
            backoff_max_seconds=float(settings.webhook_backoff_max_seconds),
            concurrency=max(1, int(settings.webhook_concurrency)),
            poll_seconds=float(settings.webhook_poll_seconds),
            retention_days=float(settings.webhook_retention_days),
        )


def backoff_seconds(
    attempts: int, options: DeliveryOptions, rng: random.Random | None = None
) -> float:
    """Return the wait after ``attempts`` failures: full jitter, uniform in
    [0, min(max, base · 2^(attempts-1))]."""
    ceiling = min(options.backoff_max_seconds, options.backoff_base_seconds * 2 ** (attempts - 1))
    return (rng or random).uniform(0.0, ceiling)


def _matches(sub: WebhookSubscription, event: WebhookEvent) -> bool:
    if event.event_type not in sub.events:
        return False
    if sub.created_at > event.created_at:
        return False  # events from before the subscription are not sent
    if sub.region_codes:
        code = event.region_code or ""
        if not any(code.startswith(subtree_prefix(r)) for r in sub.region_codes):
            return False
    if sub.categories:
        category = event.category_code or ""
        if not any(category.startswith(c) for c in sub.categories):
            return False
    return True


def _owner_now(session: Session, sub: WebhookSubscription) -> Any:
    """Return the subscription's owner as it is now, as a principal: None when its key was
    revoked, its account deactivated or deleted, or it no longer holds ``webhooks:manage``
    (a subscription is only as good as its owner's access today, not the day it was made)."""
    from ..models import ApiClient, User
    from .identity import principal_of_client, user_principal

    principal = None
    if sub.owner_client_id is not None:
        client = session.get(ApiClient, sub.owner_client_id)
        if client is not None and client.revoked_at is None:
            principal = principal_of_client(client)
    elif sub.owner_user_id is not None:
        user = session.get(User, sub.owner_user_id)
        if user is not None:
            principal = user_principal(session, user.id, user.token_version)
    if principal is None or "webhooks:manage" not in principal.permissions:
        return None
    return principal


def _owners_filter(session: Session, events: list[WebhookEvent]) -> Any:
    """Return ``hears(sub, event)``: whether the subscription's owner, as it is now, may
    hear of the event. Nobody, once the owner's key is revoked or its account deactivated
    or stripped of ``webhooks:manage``; only events of what the owner may read
    (``EVENT_PERMISSIONS``); only events inside the owner's current scope (the
    subscription's regions were checked against the scope it had then); and a case of a
    sensitive category only by the offices over the unit holding it, its handler and its
    reporter (``services.cases.may_see``): its events, small as they are, tell where and
    when such a case is."""
    from ..models import Case
    from . import cases as case_rules

    case_ids = {e.case_id for e in events if e.case_id is not None}
    sensitive = (
        {
            c.id: c
            for c in session.scalars(
                select(Case).where(Case.id.in_(case_ids), Case.sensitive.is_(True))
            )
        }
        if case_ids
        else {}
    )
    owners: dict[int, Any] = {}
    callers: dict[int, Any] = {}

    def owner(sub: WebhookSubscription) -> Any:
        if sub.id not in owners:
            owners[sub.id] = _owner_now(session, sub)
        return owners[sub.id]

    def caller(sub: WebhookSubscription) -> Any:
        if sub.id not in callers:
            callers[sub.id] = case_rules.caller_of(session, owner(sub))
        return callers[sub.id]

    def hears(sub: WebhookSubscription, event: WebhookEvent) -> bool:
        principal = owner(sub)
        if principal is None:
            return False
        need = _needs(event.event_type)
        if need is not None and need not in principal.permissions:
            return False
        scope = principal.scope
        if not scope.unrestricted and not (
            event.region_code and scope.covers_region(event.region_code)
        ):
            return False
        case = sensitive.get(event.case_id) if event.case_id is not None else None
        return case is None or case_rules.may_see(caller(sub), case)

    return hears


def _insert_ignore(session: Session, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(WebhookDelivery).on_conflict_do_nothing(
        index_elements=["subscription_id", "event_id"]
    )
    session.execute(stmt, rows)


def fan_out(session: Session, now: datetime, *, limit: int = FAN_OUT_BATCH) -> int:
    """Give the next ``limit`` new events a pending delivery per matching subscription;
    return how many events were fanned out. Flushes, never commits."""
    if session.get_bind().dialect.name == "postgresql":
        # One fan-out at a time (SQLite writers are one at a time already). With SKIP LOCKED
        # a second worker passed over the events a first one was fanning out and fanned out
        # a later event of the same case; no earlier delivery of the case existed yet to
        # wait for, so the later event was sent first.
        session.execute(text("SELECT pg_advisory_xact_lock(:k, 0)"), {"k": _FAN_OUT_LOCK})
    stmt = (
        select(WebhookEvent)
        .where(WebhookEvent.fanned_out_at.is_(None))
        .order_by(WebhookEvent.id)
        .limit(limit)
    )
    events = list(session.scalars(stmt))
    if not events:
        return 0
    subs = list(session.scalars(select(WebhookSubscription).where(WebhookSubscription.active)))
    hears = _owners_filter(session, events)
    rows = [
        {
            "county_code": event.county_code,
            "subscription_id": sub.id,
            "event_id": event.id,
            "ordering_key": event.ordering_key,
            "status": "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for event in events
        for sub in subs
        if _matches(sub, event) and hears(sub, event)
    ]
    _insert_ignore(session, rows)
    session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_([e.id for e in events]))
        .values(fanned_out_at=now)
    )
    session.flush()
    return len(events)


@dataclass(frozen=True)
class Claim:
    """One delivery taken by this worker: what to send, and where."""

    delivery_id: int
    attempts: int
    url: str
    secret: str  # as at the claim; ``send_signed_now`` signs with the one current then
    event_id: str
    body: bytes
    subscription_id: int
    subscription_uid: str
    previous_secret: str | None = None  # a rotated-out secret in its grace, signing too


def claim_due(
    session: Session,
    now: datetime,
    cipher: FieldCipher,
    options: DeliveryOptions,
    *,
    limit: int = CLAIM_BATCH,
) -> list[Claim]:
    """Take up to ``limit`` due deliveries, each the earliest pending one of its case for its
    subscription; push them one lease ahead and count the attempt. Flushes, never commits."""
    earlier = aliased(WebhookDelivery)
    blocked = exists().where(
        earlier.subscription_id == WebhookDelivery.subscription_id,
        earlier.ordering_key == WebhookDelivery.ordering_key,
        earlier.status == "pending",
        earlier.event_id < WebhookDelivery.event_id,
    )
    from ..models import ApiClient, User

    # A revoked key's or a deactivated account's subscriptions hold their deliveries, as an
    # inactive subscription does (they go on if the account is activated again).
    owner_current = or_(
        exists().where(
            ApiClient.id == WebhookSubscription.owner_client_id, ApiClient.revoked_at.is_(None)
        ),
        exists().where(User.id == WebhookSubscription.owner_user_id, User.is_active),
    )
    stmt = (
        select(WebhookDelivery)
        .join(WebhookSubscription, WebhookSubscription.id == WebhookDelivery.subscription_id)
        .where(
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            WebhookSubscription.active,
            owner_current,
            ~blocked,
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=WebhookDelivery)
    deliveries = list(session.scalars(stmt))
    if not deliveries:
        return []
    subs = {
        s.id: s
        for s in session.scalars(
            select(WebhookSubscription).where(
                WebhookSubscription.id.in_({d.subscription_id for d in deliveries})
            )
        )
    }
    events = {
        e.id: e
        for e in session.scalars(
            select(WebhookEvent).where(WebhookEvent.id.in_({d.event_id for d in deliveries}))
        )
    }
    lease_until = now + timedelta(seconds=options.lease_seconds(len(deliveries)))
    claims = []
    for delivery in deliveries:
        sub, event = subs[delivery.subscription_id], events[delivery.event_id]
        delivery.attempts += 1
        delivery.last_attempt_at = now
        delivery.next_attempt_at = lease_until
        try:
            secret = open_secret(cipher, sub.uid, sub.secret_enc)
        except CiphertextError:
            # Not sent unsigned, and not allowed to stop the others: retried later (a key
            # missing from GRIDAPI_FIELD_KEYS may come back), then dead.
            log.error("webhook subscription %s: its secret could not be decrypted", sub.id)
            delivery.last_error = "the subscription's secret could not be decrypted"
            delivery.last_status_code = None
            if delivery.attempts >= options.max_attempts:
                delivery.status = "dead"
            else:
                delivery.next_attempt_at = now + timedelta(
                    seconds=backoff_seconds(delivery.attempts, options)
                )
            continue
        claims.append(
            Claim(
                delivery_id=delivery.id,
                attempts=delivery.attempts,
                url=sub.url,
                secret=secret,
                event_id=event_id(event),
                body=event_body(event),
                subscription_id=sub.id,
                subscription_uid=sub.uid,
            )
        )
    session.flush()
    return claims


@dataclass(frozen=True)
class Outcome:
    """What one attempt gave: an HTTP status (None when no answer), an error text, and the
    wait the receiver asked for (``Retry-After`` on a 429 or 503), in seconds."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: int | None
    retry_after_s: float | None = None


#: The answers whose ``Retry-After`` a delivery honours (RFC 9110 §10.2.3, RFC 6585 §4).
RETRY_AFTER_STATUSES = frozenset({429, 503})
_ASCII_DIGITS = re.compile(r"[0-9]+")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Return the wait a ``Retry-After`` value asks for, in seconds from ``now`` (a Unix
    time): delay-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    # delay-seconds is ASCII digits (RFC 9110 §10.2.3): str.isdigit() also took "²" (a
    # Latin-1 byte a header may carry), which float() refuses, and the whole round crashed.
    if _ASCII_DIGITS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a zone-less one is read as such
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def send(
    claim: Claim, policy: OutboundPolicy, *, clock: Callable[[], float] = time.time
) -> Outcome:
    """POST one claimed delivery, signed with a fresh timestamp; never raises."""
    headers = signed_headers(
        claim.secret, claim.event_id, claim.body, int(clock()), claim.previous_secret
    )
    headers["Webhook-Attempt"] = str(claim.attempts)
    started = time.monotonic()
    try:
        response = post(claim.url, claim.body, headers, policy)
    except OutboundRefused as exc:
        return Outcome(False, None, f"refused: {exc}", None)
    except OutboundFailed as exc:
        return Outcome(False, None, str(exc), int((time.monotonic() - started) * 1000))
    except Exception as exc:  # a receiver must never be able to stop the worker
        log.exception("webhook delivery %s failed unexpectedly", claim.delivery_id)
        return Outcome(False, None, type(exc).__name__, None)
    if 200 <= response.status < 300:
        return Outcome(True, response.status, None, response.duration_ms)
    # The start of the answer, for the log; U+0000 as U+FFFD (PostgreSQL cannot store it in
    # text: the log row failed, and the whole round with it).
    text = response.body[:200].decode("utf-8", "replace").replace("\x00", "\ufffd")
    wait = None
    if response.status in RETRY_AFTER_STATUSES:
        wait = parse_retry_after(response.retry_after, clock())
    return Outcome(
        False,
        response.status,
        f"HTTP {response.status}: {text}".strip(),
        response.duration_ms,
        wait,
    )


def send_signed_now(
    sessions: Sessions,
    cipher: FieldCipher,
    claim: Claim,
    policy: OutboundPolicy,
    now: datetime | None = None,
) -> Outcome:
    """Send a claimed delivery signed with its subscription's secret as it is now (and the
    previous one while its grace lasts at ``now``); never raises.

    A batch is claimed at once and sent a few at a time, each attempt taking up to the
    timeouts: signed with the secret read at the claim, attempts sent after a
    ``rotate-secret`` carried the old secret's signature alone, which a receiver that had
    switched to the new one refused.
    """
    now = now or utcnow()
    try:
        with sessions() as session:
            row = session.execute(
                select(
                    WebhookSubscription.secret_enc,
                    WebhookSubscription.previous_secret_enc,
                    WebhookSubscription.previous_secret_expires_at,
                ).where(WebhookSubscription.id == claim.subscription_id)
            ).first()
        if row is None:  # deleted since the claim: its deliveries went with it
            return Outcome(False, None, "the subscription was deleted", None)
        secret = open_secret(cipher, claim.subscription_uid, row.secret_enc)
        previous = None
        if row.previous_secret_enc is not None and (
            row.previous_secret_expires_at is not None and row.previous_secret_expires_at > now
        ):
            try:
                previous = open_previous_secret(
                    cipher, claim.subscription_uid, row.previous_secret_enc
                )
            except CiphertextError:  # the new secret's signature goes out all the same
                log.error(
                    "webhook subscription %s: its previous secret could not be decrypted",
                    claim.subscription_id,
                )
    except CiphertextError:
        log.error(
            "webhook subscription %s: its secret could not be decrypted", claim.subscription_id
        )
        return Outcome(False, None, "the subscription's secret could not be decrypted", None)
    except Exception as exc:  # the database gone for a moment: retried as any failure
        log.exception("webhook delivery %s: the secret could not be read", claim.delivery_id)
        return Outcome(False, None, type(exc).__name__, None)
    return send(replace(claim, secret=secret, previous_secret=previous), policy)


def record(
    session: Session, claim: Claim, outcome: Outcome, now: datetime, options: DeliveryOptions
) -> str | None:
    """Store an attempt's outcome; return the new status, or None when the claim was lost
    (its lease ran out and another worker took it)."""
    values: dict[str, Any] = {
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
        "last_duration_ms": outcome.duration_ms,
    }
    if outcome.ok:
        values.update(status="delivered", delivered_at=now)
    elif claim.attempts >= options.max_attempts:
        values.update(status="dead")
    else:
        wait = backoff_seconds(claim.attempts, options)
        if outcome.retry_after_s is not None:  # the receiver's wish, within our longest wait
            wait = max(wait, min(outcome.retry_after_s, options.backoff_max_seconds))
        values.update(next_attempt_at=now + timedelta(seconds=wait))
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == claim.delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.attempts == claim.attempts,
        )
        .values(**values)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        return None
    return values.get("status", "pending")


@dataclass
class RoundResult:
    """What one delivery round did."""

    fanned_out: int = 0
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    def summary(self) -> str:
        return (
            f"webhooks: fanned_out={self.fanned_out} attempted={self.attempted} "
            f"delivered={self.delivered} retrying={self.retrying} dead={self.dead}"
        )


def _record_all(
    session: Session,
    *,
    claims: list[Claim],
    outcomes: list[Outcome],
    now: Callable[[], datetime],
    options: DeliveryOptions,
) -> list[str | None]:
    moment = now()
    return [record(session, c, o, moment, options) for c, o in zip(claims, outcomes, strict=True)]


def _work_waiting(sessions: Sessions, moment: datetime) -> bool:
    """Return whether an event waits for fan-out or a delivery is due (a plain read)."""
    with sessions() as session:
        new_event = select(WebhookEvent.id).where(WebhookEvent.fanned_out_at.is_(None))
        due = select(WebhookDelivery.id).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= moment
        )
        return (
            session.scalar(new_event.limit(1)) is not None
            or session.scalar(due.limit(1)) is not None
        )


def deliver_round(
    bind: Engine | Sessions,
    cipher: FieldCipher,
    options: DeliveryOptions,
    *,
    now: Callable[[], datetime] = utcnow,
    max_batches: int = 100,
) -> RoundResult:
    """Erase the previous secrets whose grace is over, fan out the new events, then claim,
    send and record due deliveries until none is due (at most ``max_batches`` claims: each
    takes the next event of every case); return the counts."""
    sessions = sessions_of(bind)
    result = RoundResult()
    if _secrets_to_erase(sessions, now()):
        in_write_transaction(sessions, lambda s: erase_expired_secrets(s, now()))
    if not _work_waiting(sessions, now()):
        return result  # the usual case: no write transaction (no SQLite write lock) taken
    while True:
        fanned = in_write_transaction(sessions, lambda s: fan_out(s, now()))
        result.fanned_out += fanned
        if fanned < FAN_OUT_BATCH:
            break
    with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        for _ in range(max_batches):
            claims = in_write_transaction(sessions, lambda s: claim_due(s, now(), cipher, options))
            if not claims:
                break
            outcomes = list(
                pool.map(
                    lambda c: send_signed_now(sessions, cipher, c, options.policy, now()), claims
                )
            )
            result.attempted += len(claims)

            store = partial(_record_all, claims=claims, outcomes=outcomes, now=now, options=options)
            for status in in_write_transaction(sessions, store):
                if status == "delivered":
                    result.delivered += 1
                elif status == "dead":
                    result.dead += 1
                elif status == "pending":
                    result.retrying += 1
    return result


def run_forever(
    bind: Engine | Sessions,
    cipher: FieldCipher,
    options: DeliveryOptions,
    *,
    stop: threading.Event,
) -> None:
    """Deliver every ``poll_seconds`` until ``stop`` is set, and prune the log older than
    ``retention_days`` once an hour; never raises."""
    sessions = sessions_of(bind)
    next_prune = 0.0
    while not stop.is_set():
        try:
            result = deliver_round(sessions, cipher, options)
            if time.monotonic() >= next_prune:
                before = utcnow() - timedelta(days=options.retention_days)
                pruned = in_write_transaction(sessions, partial(prune, before=before))
                next_prune = time.monotonic() + PRUNE_INTERVAL_SECONDS
                if pruned:
                    log.info("webhooks: pruned=%s", pruned)
        except Exception:  # keep the loop alive: the next round tries again
            log.exception("webhook delivery round failed")
        else:
            if result.attempted or result.fanned_out:
                log.info("%s", result.summary())
        stop.wait(options.poll_seconds)


def prune(session: Session, before: datetime) -> int:
    """Delete finished deliveries (delivered or dead) created before ``before``, and the
    events before it that have none left; return how many events were deleted."""
    session.execute(
        delete(WebhookDelivery).where(
            WebhookDelivery.status.in_(("delivered", "dead")),
            WebhookDelivery.created_at < before,
        )
    )
    remaining = exists().where(WebhookDelivery.event_id == WebhookEvent.id)
    result = session.execute(
        delete(WebhookEvent).where(
            and_(
                WebhookEvent.created_at < before,
                WebhookEvent.fanned_out_at.is_not(None),
                ~remaining,
            )
        )
    )
    session.flush()
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
