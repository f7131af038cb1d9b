"""Webhook subscriptions and their delivery log: requests and answers."""

from __future__ import annotations

from marshmallow import fields, validate

from ..models.webhooks import DELIVERY_STATUSES, EVENT_TYPES
from .common import BIG_ID, StrictSchema
from .regions import CODE12

CATEGORY_PREFIX = validate.Regexp(
    r"^([0-9]{2}|[0-9]{4})\Z", error="must be a 2- or 4-digit category code"
)


def _url(required: bool) -> fields.String:
    return fields.String(
        required=required,
        validate=validate.Length(min=8, max=2000),
        metadata={
            "description": "An http(s) URL that accepts POST. Loopback, private, link-local "
            "and reserved addresses are refused unless GRIDAPI_WEBHOOK_ALLOW_PRIVATE allows "
            "them.",
            "example": "https://hotline.example.org/gridapi/events",
        },
    )


def _events(required: bool) -> fields.List:
    return fields.List(
        fields.String(validate=validate.OneOf(EVENT_TYPES)),
        required=required,
        validate=validate.Length(min=1, max=len(EVENT_TYPES)),
        metadata={
            "description": "The event types to receive.",
            "example": ["case.created", "case.transitioned"],
        },
    )


_REGIONS = fields.List(
    fields.String(validate=CODE12),
    validate=validate.Length(max=100),
    metadata={
        "description": "Regions whose subtrees the events come from, each inside your scope; "
        "empty or absent: your whole area.",
        "example": ["320508019000"],
    },
)
_CATEGORIES = fields.List(
    fields.String(validate=CATEGORY_PREFIX),
    validate=validate.Length(max=100),
    metadata={
        "description": "Category codes (2-digit class or 4-digit category) to receive; "
        "empty or absent: every category. Task events without a category pass only "
        "when this is empty.",
        "example": ["53"],
    },
)
_DESCRIPTION = fields.String(
    validate=validate.Length(max=500), metadata={"example": "12345 热线事件回传"}
)


class WebhookCreateSchema(StrictSchema):
    url = _url(True)
    events = _events(True)
    region_codes = _REGIONS
    categories = _CATEGORIES
    description = _DESCRIPTION
    active = fields.Boolean(load_default=True)


class WebhookUpdateSchema(StrictSchema):
    url = _url(False)
    events = _events(False)
    region_codes = _REGIONS
    categories = _CATEGORIES
    description = _DESCRIPTION
    active = fields.Boolean()


class WebhookOwnerSchema(StrictSchema):
    kind = fields.String(required=True, metadata={"enum": ["user", "client"]})
    id = fields.Integer(required=True)


class WebhookDeliveryCountsSchema(StrictSchema):
    pending = fields.Integer(required=True)
    dead = fields.Integer(required=True)


class WebhookSchema(StrictSchema):
    id = fields.Integer(required=True)
    url = fields.String(required=True, metadata={"example": "https://hotline.example.org/hook"})
    events = fields.List(
        fields.String(metadata={"enum": list(EVENT_TYPES)}),
        required=True,
        metadata={"example": ["case.created"]},
    )
    region_codes = fields.List(fields.String(), required=True)
    categories = fields.List(fields.String(), required=True)
    description = fields.String(required=True)
    active = fields.Boolean(required=True)
    owner = fields.Nested(WebhookOwnerSchema, required=True)
    created_by = fields.String(required=True, metadata={"example": "client:3"})
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    deliveries = fields.Nested(
        WebhookDeliveryCountsSchema,
        required=True,
        metadata={"description": "How many deliveries are pending and dead now."},
    )
    previous_secret_expires_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "Until when the secret the last `rotate-secret` replaced still "
            "signs deliveries (in `Webhook-Signature-Previous`, beside the new secret's "
            "`Webhook-Signature`); null when no replaced secret signs any more. The secret "
            "itself is never shown."
        },
    )


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(
        required=True,
        metadata={
            "description": "The signing secret, shown once, now. Verify "
            "`Webhook-Signature: v1=<hex HMAC-SHA256 of '<Webhook-Timestamp>.<body>'>` with "
            "the UTF-8 bytes of this whole string as the key (after a rotation, the old "
            "secret's signature is in `Webhook-Signature-Previous` until "
            "`previous_secret_expires_at`).",
            "example": "whsec_8Jk2m9QnV4xR7tY1uI0oP3aS6dF5gH2jK4lZ8xC1vB0",
        },
    )


class WebhookListSchema(StrictSchema):
    items = fields.List(fields.Nested(WebhookSchema), required=True)


class DeliveryArgsSchema(StrictSchema):
    status = fields.String(validate=validate.OneOf(DELIVERY_STATUSES))
    cursor = fields.Integer(
        validate=BIG_ID,  # deliveries have 64-bit ids
        metadata={"description": "`next_cursor` of the previous page."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class DeliverySchema(StrictSchema):
    id = fields.Integer(required=True, validate=BIG_ID)
    event_id = fields.String(
        required=True,
        metadata={
            "description": "Sent as `Webhook-Id`; the same on every attempt.",
            "example": "evt_42",
        },
    )
    event_type = fields.String(
        required=True, metadata={"enum": [*EVENT_TYPES, "ping"], "example": "case.created"}
    )
    case_id = fields.Integer(allow_none=True)
    task_id = fields.Integer(allow_none=True)
    status = fields.String(required=True, metadata={"enum": list(DELIVERY_STATUSES)})
    attempts = fields.Integer(required=True)
    next_attempt_at = fields.DateTime(
        allow_none=True, metadata={"description": "When a pending delivery is tried next."}
    )
    last_attempt_at = fields.DateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True)
    last_error = fields.String(allow_none=True, metadata={"example": "HTTP 503: busy"})
    last_duration_ms = fields.Integer(allow_none=True)
    delivered_at = fields.DateTime(allow_none=True)
    created_at = fields.DateTime(required=True)


class DeliveryListSchema(StrictSchema):
    items = fields.List(fields.Nested(DeliverySchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True, validate=BIG_ID)
