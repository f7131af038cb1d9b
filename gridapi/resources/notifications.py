"""A person's notification inbox (for the phone)."""

from __future__ import annotations

from dataclasses import asdict

from flask.views import MethodView
from marshmallow import fields, validate
from webargs.fields import DelimitedList

from ..auditing import audit
from ..auth import Forbidden, Principal, current_principal
from ..extensions import commit, db_session
from ..schemas.common import ID32, StrictSchema
from ..services import cases as cases_svc
from ..services import notifications as svc
from .blueprint import Blueprint

blp = Blueprint(
    "notifications",
    __name__,
    url_prefix="/api/v1",
    description="Notifications (通知) for a person: cases dispatched to them, overdue notices, "
    "supervision, escalations to their unit.",
)


class AboutArgsSchema(StrictSchema):
    about = DelimitedList(
        fields.String(validate=validate.OneOf(svc.ABOUT)),
        # No load_default: the spec would show it joined ("case"), not as the array it is.
        validate=validate.Length(min=1, error="name at least one"),
        metadata={
            "description": "Comma-separated: what the notifications are about, case, task "
            "(default case). Those of tasks (a task given to you, a task past its deadline) "
            "are listed only when asked: their items name a task, and no case "
            "(`case_id` null).",
            "example": ["case", "task"],
        },
    )


class InboxArgsSchema(AboutArgsSchema):
    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0),
        metadata={"description": "The last id the phone has: only later notifications."},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=500),
        metadata={"description": "At most this many (1-500)."},
    )


class ReadMarkArgsSchema(AboutArgsSchema):
    """The kinds the answer's ``unread`` counts (as the inbox's ``about``)."""


class MarkReadSchema(StrictSchema):
    up_to = fields.Integer(
        required=True,
        # An id: 32 bits, as the column (a larger one was a field-less 422 on PostgreSQL).
        validate=validate.Range(min=0, max=ID32.max),
        metadata={
            "description": "The id of the last notification read (an item's `id`, or the "
            "list's `last_id`). The mark moves to the last of your notifications at or "
            "below it (a larger id marks all you have; never one you cannot read), and never "
            "backwards.",
            "example": 42,
        },
    )


_READ_UP_TO = {
    "description": "Your read mark, kept by the server for every device: the id of the "
    "last notification you marked read (0: none). `after=read_up_to` lists the unread.",
    "example": 42,
}
_UNREAD = {
    "description": f"How many of your notifications the inbox lists with this `about` "
    f"(default case; only of what you may read now) lie above `read_up_to`, counted up to "
    f"{svc.UNREAD_CAP}: {svc.UNREAD_CAP} means that many or more (show "
    f'"{svc.UNREAD_CAP - 1}+").',
    "example": 3,
}


class NotificationSchema(StrictSchema):
    id = fields.Integer(required=True)
    kind = fields.String(
        required=True,
        metadata={
            "description": "What happened: dispatched, overdue, supervision, escalated, "
            "transferred, rework, extension_requested, deadline_earlier (a calendar edit "
            "brought the deadline earlier), … (a task's: task_assigned, "
            "overdue, deadline_earlier)",
            "example": "dispatched",
        },
    )
    about = fields.String(
        required=True,
        metadata={
            "description": "What it is about: case, or task (only with `about=task`).",
            "example": "case",
        },
    )
    case_id = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The case; null on a task's (listed only with `about=task`)."},
    )
    case_number = fields.String(
        required=True, allow_none=True, metadata={"example": "320508-20261130-0003"}
    )
    task_id = fields.Integer(
        required=True, allow_none=True, metadata={"description": "The task; null on a case's."}
    )
    task_title = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The task's title; null on a case's."},
    )
    message = fields.String(
        required=True, metadata={"example": "事件 320508-20261130-0003 派遣给您"}
    )
    created_at = fields.DateTime(required=True)
    sent_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={
            "description": "When a gateway (SMS, push) reported it sent it "
            "(`POST /notifications/sent`); null until then."
        },
    )


class InboxSchema(StrictSchema):
    items = fields.List(fields.Nested(NotificationSchema), required=True)
    last_id = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The id to send as `after` next (null: nothing new)."},
    )
    read_up_to = fields.Integer(required=True, metadata=_READ_UP_TO)
    unread = fields.Integer(required=True, metadata=_UNREAD)


class ReadMarkSchema(StrictSchema):
    read_up_to = fields.Integer(required=True, metadata=_READ_UP_TO)
    unread = fields.Integer(required=True, metadata=_UNREAD)


def _person() -> Principal:
    """Return the caller, a person; raise Forbidden for an app."""
    principal = current_principal()
    if principal.kind != "user":
        raise Forbidden(
            "Notifications are for people's accounts; an app subscribes to webhooks "
            "(docs/webhooks.md)."
        )
    return principal


@blp.route("/me/notifications")
class Inbox(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(InboxArgsSchema, location="query")
    @blp.response(200, InboxSchema)
    def get(self, args):
        """List my notifications (for the phone)

        What the workflow and the background worker queued for you: addressed to your
        account (a case dispatched to you, its overdue and supervision notices, its deadline
        brought earlier by a calendar edit, a rework), or to the unit of your scope region (a
        case escalated, transferred or handed down to it, an extension asked of it). Only cases you may read now. Oldest first, after the
        id `after`: keep the last id you have (`last_id`) and ask for what came after it.

        The answer also says how far you have read on any device (`read_up_to`, the mark
        moved by `PUT /me/notifications/read`) and how many of these notifications lie
        above it (`unread`, counted up to 1000). Listing moves no mark.

        With `about=case,task` (or `task`), also those of tasks you may read now: a task
        given to you (`task_assigned`), a task of yours, or one your unit issued, past its
        deadline (`overdue`), a task of yours whose deadline a calendar edit brought earlier
        (`deadline_earlier`). Their items name the task (`task_id`, `task_title`) and no
        case (`case_id` null); without `about` only cases' are listed, as before.
        For people's accounts; an app (API key) subscribes to webhooks instead (403).
        """
        principal = _person()
        session = db_session()
        caller = cases_svc.caller_of(session, principal)
        about = args.get("about", ["case"])
        items = svc.inbox(session, caller, after=args["after"], limit=args["limit"], about=about)
        mark = svc.read_mark(session, principal.id)
        return {
            "items": [asdict(item) for item in items],
            "last_id": items[-1].id if items else None,
            "read_up_to": mark,
            "unread": svc.unread(session, caller, above=mark, about=about),
        }


@blp.route("/me/notifications/read")
class InboxReadMark(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(ReadMarkArgsSchema, location="query")
    @blp.arguments(MarkReadSchema)
    @blp.response(200, ReadMarkSchema)
    def put(self, args, data):
        """Mark my notifications read up to an id (for every device)

        Moves the read mark the server keeps for your account, which every device and the
        web console read back from the inbox (`read_up_to`, `unread`). The mark moves to the
        last of your notifications (cases' and tasks', of what you may read now) at or below
        `up_to`: an id beyond yours marks all you have, and never a notification you cannot
        read; it never moves backwards (an older id changes nothing, and answers the mark as
        it is). Sending the same id again answers the same. Returns the mark and how many
        notifications of `about` (default case) lie above it. Not audited: a read mark is no
        read of anyone's data. For people's accounts; an app (API key) gets 403.
        """
        principal = _person()
        session = db_session()
        caller = cases_svc.caller_of(session, principal)
        mark = svc.mark_read(session, caller, data["up_to"])
        unread = svc.unread(session, caller, above=mark, about=args.get("about", ["case"]))
        commit()
        return {"read_up_to": mark, "unread": unread}


# --- the relay queue: for a gateway that polls instead of receiving webhooks ------------------


class RelayArgsSchema(StrictSchema):
    after = fields.Integer(
        load_default=0,
        validate=validate.Range(min=0, max=ID32.max),
        metadata={"description": "The last id the gateway has: only later notifications."},
    )
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=500),
        metadata={"description": "At most this many (1-500)."},
    )
    unsent = fields.Boolean(
        load_default=False,
        metadata={
            "description": "Only those no gateway has said it sent (`sent_at` null): the "
            "queue still to relay."
        },
    )


class RecipientsSchema(StrictSchema):
    user_id = fields.Integer(
        required=True, allow_none=True, metadata={"description": "An account, or null."}
    )
    region_code = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "A unit (the office of exactly that region), or null."},
    )
    department_id = fields.Integer(
        allow_none=True,
        metadata={
            "description": "A department (its members: a case dispatched to it, notices of "
            "one it handles with nobody of it signed), or null."
        },
    )


class RelayedCaseSchema(StrictSchema):
    case_id = fields.Integer(required=True)
    number = fields.String(required=True, metadata={"example": "320508-20261128-0007"})


class RelayedSchema(StrictSchema):
    notification_id = fields.Integer(required=True, attribute="id")
    kind = fields.String(required=True, metadata={"example": "overdue"})
    about = fields.String(required=True, metadata={"example": "case"})
    created_at = fields.DateTime(required=True)
    sent_at = fields.DateTime(
        required=True,
        allow_none=True,
        metadata={"description": "When a gateway first said it sent it; null: not yet."},
    )
    recipients = fields.Nested(RecipientsSchema, required=True)
    case = fields.Nested(
        RelayedCaseSchema,
        required=True,
        allow_none=True,
        metadata={
            "description": "Null for a task's notice and for a case of a sensitive "
            "category (`sensitive` true)."
        },
    )
    sensitive = fields.Boolean(required=True)
    task_id = fields.Integer(required=True, allow_none=True)


class RelayQueueSchema(StrictSchema):
    items = fields.List(fields.Nested(RelayedSchema), required=True)
    last_id = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The id to send as `after` next (null: nothing more)."},
    )


class StampSchema(StrictSchema):
    ids = fields.List(
        fields.Integer(validate=validate.Range(min=1, max=ID32.max)),
        required=True,
        validate=validate.Length(min=1, max=svc.STAMP_MAX),
        metadata={"description": "The notifications sent (1-500 ids).", "example": [5120]},
    )


class StampedSchema(StrictSchema):
    sent = fields.List(
        fields.Integer(),
        required=True,
        metadata={"description": "Ids stamped by this request, in id order."},
    )
    already = fields.List(
        fields.Integer(),
        required=True,
        metadata={
            "description": "Ids some gateway had stamped before (their time is kept), in id order."
        },
    )


@blp.route("/notifications")
class RelayQueue(MethodView):
    @blp.requires("notifications:relay")
    @blp.arguments(RelayArgsSchema, location="query")
    @blp.response(200, RelayQueueSchema)
    def get(self, args):
        """Read the notification queue (for an SMS or push gateway)

        The notifications queued for people in your area (by where their case or task is),
        oldest first, after the id `after`: what the webhook event `notification.created`
        carries, for a gateway that cannot receive webhooks (a county's intranet) and polls
        instead. Each item names who is to be told (an account id, a unit code) of what kind
        of thing, never what: no message, title, name or phone number; a case of a
        sensitive category is not named (`case` null, `sensitive` true). With `unsent=true`
        only those no gateway has said it sent: read, relay, then
        `POST /notifications/sent`. Needs `notifications:relay` (docs/webhooks.md,
        "Relaying notifications").
        """
        items = svc.relay_queue(
            db_session(),
            current_principal().scope,
            after=args["after"],
            limit=args["limit"],
            unsent=args["unsent"],
        )
        return {"items": items, "last_id": items[-1].id if items else None}


@blp.route("/notifications/sent")
class RelaySent(MethodView):
    @blp.requires("notifications:relay")
    @blp.arguments(StampSchema)
    @blp.response(200, StampedSchema)
    def post(self, data):
        """Say which notifications a gateway sent

        Stamps `sent_at` on each notification of `ids`, once: an id stamped before keeps its
        first time and is answered under `already`, so a gateway that retries, or two
        gateways that relayed the same notice, change nothing. An id that is not a
        notification of your area is a 422 naming `ids`, and then none is stamped.
        One audit row (`notifications.sent`) per request. Needs `notifications:relay`.
        """
        stamped = svc.stamp_sent(db_session(), current_principal().scope, data["ids"])
        audit(
            "notifications.sent",
            "notification",
            summary={"sent": stamped.sent, "already": len(stamped.already)},
        )
        commit()
        return {"sent": stamped.sent, "already": stamped.already}
