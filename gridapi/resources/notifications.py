"""A person's notification inbox (for the phone)."""

from __future__ import annotations

from dataclasses import asdict

from flask.views import MethodView
from marshmallow import fields, validate
from webargs.fields import DelimitedList

from ..auth import Forbidden, current_principal
from ..extensions import db_session
from ..schemas.common import StrictSchema
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


class InboxArgsSchema(StrictSchema):
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


class NotificationSchema(StrictSchema):
    id = fields.Integer(required=True)
    kind = fields.String(
        required=True,
        metadata={
            "description": "What happened: dispatched, overdue, supervision, escalated, "
            "transferred, rework, extension_requested, … (a task's: task_assigned, "
            "overdue)",
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


class InboxSchema(StrictSchema):
    items = fields.List(fields.Nested(NotificationSchema), required=True)
    last_id = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The id to send as `after` next (null: nothing new)."},
    )


@blp.route("/me/notifications")
class Inbox(MethodView):
    @blp.requires("cases:read")
    @blp.arguments(InboxArgsSchema, location="query")
    @blp.response(200, InboxSchema)
    def get(self, args):
        """List my notifications (for the phone)

        What the workflow and the background worker queued for you: addressed to your
        account (a case dispatched to you, its overdue and supervision notices, a rework),
        or to the unit of your scope region (a case escalated, transferred or handed down to
        it, an extension asked of it). Only cases you may read now. Oldest first, after the
        id `after`: keep the last id you have (`last_id`) and ask for what came after it;
        what you have read is what lies up to it.

        With `about=case,task` (or `task`), also those of tasks you may read now: a task
        given to you (`task_assigned`), a task of yours, or one your unit issued, past its
        deadline (`overdue`). Their items name the task (`task_id`, `task_title`) and no
        case (`case_id` null); without `about` only cases' are listed, as before.
        For people's accounts; an app (API key) subscribes to webhooks instead (403).
        """
        principal = current_principal()
        if principal.kind != "user":
            raise Forbidden(
                "Notifications are for people's accounts; an app subscribes to webhooks "
                "(docs/webhooks.md)."
            )
        session = db_session()
        caller = cases_svc.caller_of(session, principal)
        items = svc.inbox(
            session,
            caller,
            after=args["after"],
            limit=args["limit"],
            about=args.get("about", ["case"]),
        )
        return {
            "items": [asdict(item) for item in items],
            "last_id": items[-1].id if items else None,
        }
