"""Schemas of tasks and campaigns: creation, the worker's steps, lists and progress."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import ValidationError, fields, validate, validates_schema

from ..models.register import HOUSE_USES
from ..models.tasks import CAMPAIGN_STATUSES, ITEM_SCOPES, TASK_STATUSES
from ..services.categories import MAX_ATTRIBUTES
from .categories import AttributeDefinitionSchema, AttributeSchema
from .common import StrictSchema, user_ref
from .regions import REGION_CODE
from .register import GRID, REGION

TITLE = validate.Length(min=1, max=200)
CATEGORY = validate.Regexp(r"^([0-9]{2}|[0-9]{4})\Z", error="a category code")
FORM_DOC = (
    "The result form: attribute definitions as a category's `attributes` (code, label, type "
    "string|text|number|date|single_choice|multiple_choice, required, values)."
)


def result_form() -> fields.List:
    """Return the field of a task's or campaign's result form as sent: attribute
    definitions, checked as a category's are."""
    return fields.List(
        fields.Nested(AttributeDefinitionSchema),
        validate=validate.Length(max=MAX_ATTRIBUTES),
        metadata={"description": FORM_DOC},
    )


class DueInSchema(StrictSchema):
    amount = fields.Integer(required=True, validate=validate.Range(min=1, max=1000))
    unit = fields.String(required=True, validate=validate.OneOf(("hours", "days")))


class DueFields(StrictSchema):
    """A deadline: a moment, or an amount of working time on the working calendar."""

    due_at = fields.AwareDateTime(
        metadata={"description": "The deadline (ISO 8601 with a time zone)."}
    )
    due_in = fields.Nested(
        DueInSchema,
        metadata={
            "description": "The deadline in working hours or working days from now, on the "
            "working calendar (holidays and 调休 counted): 1 day on a Friday is Monday 17:30."
        },
    )

    @validates_schema
    def _one_deadline(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("due_at") is not None and data.get("due_in") is not None:
            raise ValidationError({"due_at": ["give due_at or due_in, not both"]})


class TaskCreateSchema(DueFields):
    title = fields.String(required=True, validate=TITLE, metadata={"example": "排查出租房消防隐患"})
    description = fields.String(load_default="", validate=validate.Length(max=5000))
    category = fields.String(validate=CATEGORY, metadata={"description": "A case category."})
    assignee_id = fields.Integer(
        allow_none=True, metadata={"description": "The worker (an account in your scope)."}
    )
    grid = fields.String(validate=GRID, metadata={"description": "The grid the task is for."})
    region = fields.String(
        validate=REGION, metadata={"description": "A region, for a task above the grid level."}
    )
    result_schema = result_form()


class EvidenceSchema(StrictSchema):
    """A piece of evidence the phone refers to: a file by hash or address, and a note."""

    sha256 = fields.String(validate=validate.Regexp(r"^[0-9a-f]{64}\Z", error="64 hex digits"))
    # http(s) only, as Open311's media_url: "javascript:…" was stored, a link in any console
    # that showed the evidence.
    url = fields.String(
        validate=[
            validate.Length(min=1, max=500),
            validate.Regexp(r"^https?://\S+\Z", flags=re.IGNORECASE, error="an http(s) address"),
        ],
        metadata={"example": "https://files.example.cn/evidence/1.jpg"},
    )
    note = fields.String(validate=validate.Length(max=500))

    @validates_schema
    def _something(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data:
            raise ValidationError("give a sha256, a url or a note")


class ItemDoneSchema(StrictSchema):
    id = fields.Integer(required=True, metadata={"description": "The item's id."})
    result = fields.Dict(load_default=dict, metadata={"description": "Values of the form."})
    note = fields.String(load_default="", validate=validate.Length(max=2000))


class TaskCompleteSchema(StrictSchema):
    results = fields.Dict(
        load_default=dict,
        metadata={"description": "Values of the result form, by attribute code."},
    )
    items = fields.List(
        fields.Nested(ItemDoneSchema),
        load_default=list,
        validate=validate.Length(max=5000),
        metadata={"description": "Items done, each with its own results (tasks with items)."},
    )
    evidence = fields.List(
        fields.Nested(EvidenceSchema), load_default=list, validate=validate.Length(max=50)
    )
    comment = fields.String(load_default="", validate=validate.Length(max=5000))


class TaskReassignSchema(DueFields):
    assignee_id = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "The new worker, or null: back to the task's grid."},
    )
    comment = fields.String(load_default="", validate=validate.Length(max=2000))


class CancelSchema(StrictSchema):
    reason = fields.String(required=True, validate=validate.Length(min=1, max=2000))


class NamedRefSchema(StrictSchema):
    code = fields.String(required=True)
    name = fields.String(allow_none=True)


class AssigneeSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(allow_none=True)


class CampaignRefSchema(StrictSchema):
    id = fields.Integer(required=True)
    title = fields.String(required=True)


class TaskItemSchema(StrictSchema):
    id = fields.Integer(required=True)
    house_id = fields.Integer(allow_none=True, required=True)
    household_id = fields.Integer(allow_none=True, required=True)
    label = fields.String(required=True, metadata={"description": "Address, or 户号."})
    status = fields.String(required=True, metadata={"description": "pending or done."})
    result = fields.Dict(required=True)
    note = fields.String(required=True)
    done_at = fields.AwareDateTime(allow_none=True, required=True)
    done_by = fields.String(allow_none=True, required=True)


class TaskSchema(StrictSchema):
    id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    category = fields.String(allow_none=True, required=True)
    status = fields.String(
        required=True, metadata={"description": "pending, accepted, completed or cancelled."}
    )
    status_name = fields.String(required=True)
    campaign = fields.Nested(CampaignRefSchema, allow_none=True, required=True)
    region = fields.Nested(NamedRefSchema, required=True)
    grid = fields.Nested(NamedRefSchema, allow_none=True, required=True)
    county_code = fields.String(required=True)
    assignee = fields.Nested(AssigneeSchema, allow_none=True, required=True)
    due_at = fields.AwareDateTime(required=True)
    due_in = fields.Nested(
        DueInSchema,
        allow_none=True,
        required=True,
        metadata={
            "description": "The working time the deadline was given as (`due_in`, counted from "
            "the task's creation or the reassignment that gave it): an edit of the working "
            "calendar counts `due_at` again from it while it is ahead. Null for a deadline "
            "given as a moment, and for tasks made before it was kept: `due_at` stays."
        },
    )
    overdue = fields.Boolean(required=True)
    overdue_since = fields.AwareDateTime(allow_none=True, required=True)
    result_schema = fields.List(
        fields.Nested(AttributeSchema), required=True, metadata={"description": FORM_DOC}
    )
    results = fields.Dict(required=True)
    evidence = fields.List(fields.Nested(EvidenceSchema), required=True)
    comment = fields.String(required=True)
    cancel_reason = fields.String(allow_none=True, required=True)
    item_count = fields.Integer(required=True)
    items_done = fields.Integer(required=True)
    items = fields.List(
        fields.Nested(TaskItemSchema),
        allow_none=True,
        required=True,
        metadata={
            "description": "The houses or households to do: in single reads and `/me/tasks`; "
            "null in lists."
        },
    )
    created_by = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    accepted_at = fields.AwareDateTime(allow_none=True, required=True)
    completed_at = fields.AwareDateTime(allow_none=True, required=True)
    completed_by = fields.String(allow_none=True, required=True)
    cancelled_at = fields.AwareDateTime(allow_none=True, required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(required=True)
    allowed_actions = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "What the caller may do now: accept, complete, reassign, cancel."},
    )


class TaskListSchema(StrictSchema):
    items = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class MyTasksSchema(StrictSchema):
    items = fields.List(fields.Nested(TaskSchema), required=True)
    next_cursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Pass back as `cursor` for the next page; null on the last."},
    )


class PageArgs(StrictSchema):
    cursor = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "`next_cursor` of the previous page."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class TaskArgsSchema(PageArgs):
    region = fields.String(validate=REGION_CODE, metadata={"description": "A region's subtree."})
    grid = fields.String(validate=GRID)
    campaign_id = fields.Integer()
    status = fields.List(
        fields.String(validate=validate.OneOf(TASK_STATUSES)),
        metadata={"description": "One or more statuses (repeat the parameter)."},
    )
    open = fields.Boolean(metadata={"description": "Only open (true) or finished (false) tasks."})
    overdue = fields.Boolean()
    assignee = fields.String(
        validate=[
            validate.Regexp(r"^(me|[0-9]{1,10})\Z", error="an account id or 'me'"),
            user_ref,
        ],
    )


class MyTasksArgsSchema(StrictSchema):
    days = fields.Integer(
        load_default=7,
        validate=validate.Range(min=0, max=90),
        metadata={"description": "Also the tasks completed or cancelled in this many days."},
    )
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=200))
    cursor = fields.String(
        validate=validate.Length(max=200),
        metadata={"description": "`next_cursor` of the previous page (with the same `days`)."},
    )


# --- campaigns --------------------------------------------------------------------------------


class CampaignCreateSchema(DueFields):
    title = fields.String(
        required=True, validate=TITLE, metadata={"example": "出租房屋消防安全大排查"}
    )
    description = fields.String(load_default="", validate=validate.Length(max=5000))
    category = fields.String(validate=CATEGORY, metadata={"description": "A case category."})
    region = fields.String(
        required=True,
        validate=REGION,
        metadata={"description": "The region covered: a county, township or community."},
    )
    result_schema = result_form()
    item_scope = fields.String(
        load_default="none",
        validate=validate.OneOf(ITEM_SCOPES),
        metadata={"description": "none, houses (one item per house) or households."},
    )
    item_uses = fields.List(
        fields.String(validate=validate.OneOf(HOUSE_USES)),
        validate=validate.Length(min=1),
        metadata={"description": "Only houses of these uses (or households living in them)."},
    )

    @validates_schema
    def _uses_need_items(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data.get("item_uses") and data.get("item_scope", "none") == "none":
            raise ValidationError({"item_uses": ["only with item_scope houses or households"]})


class FanOutSchema(StrictSchema):
    tasks = fields.Integer(required=True, metadata={"description": "One per grid in service."})
    assigned = fields.Integer(
        required=True, metadata={"description": "Of those, given to a worker on the roster."}
    )
    items = fields.Integer(required=True, metadata={"description": "Houses or households."})


class CampaignSchema(StrictSchema):
    id = fields.Integer(required=True)
    title = fields.String(required=True)
    description = fields.String(required=True)
    category = fields.String(allow_none=True, required=True)
    region = fields.Nested(NamedRefSchema, required=True)
    county_code = fields.String(required=True)
    due_at = fields.AwareDateTime(required=True)
    due_in = fields.Nested(
        DueInSchema,
        allow_none=True,
        required=True,
        metadata={
            "description": "The working time the deadline was given as (`due_in`, counted from "
            "the campaign's creation), as its tasks keep it: an edit of the working calendar "
            "counts `due_at` again from it while the campaign is active and it is ahead, as "
            "its tasks'. Null for a deadline given as a moment, and for campaigns made before "
            "it was kept whose tasks differ: `due_at` stays."
        },
    )
    result_schema = fields.List(fields.Nested(AttributeSchema), required=True)
    item_scope = fields.String(required=True)
    item_uses = fields.List(fields.String(), allow_none=True, required=True)
    status = fields.String(required=True, metadata={"description": "active, closed, cancelled."})
    cancel_reason = fields.String(allow_none=True, required=True)
    created_by = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    closed_at = fields.AwareDateTime(allow_none=True, required=True)
    cancelled_at = fields.AwareDateTime(allow_none=True, required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(required=True)
    allowed_actions = fields.List(fields.String(), required=True)
    fan_out = fields.Nested(
        FanOutSchema,
        metadata={"description": "What the campaign made (in the answer to a create)."},
    )


class CampaignListSchema(StrictSchema):
    items = fields.List(fields.Nested(CampaignSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class CampaignArgsSchema(PageArgs):
    region = fields.String(validate=REGION_CODE, metadata={"description": "A region's subtree."})
    status = fields.List(fields.String(validate=validate.OneOf(CAMPAIGN_STATUSES)))


class ProgressNodeSchema(StrictSchema):
    code = fields.String(required=True)
    name = fields.String(allow_none=True, required=True)
    level = fields.String(
        required=True, metadata={"description": "county, township, village or grid."}
    )
    total = fields.Integer(required=True)
    pending = fields.Integer(required=True)
    accepted = fields.Integer(required=True)
    completed = fields.Integer(required=True)
    cancelled = fields.Integer(required=True)
    overdue = fields.Integer(
        required=True, metadata={"description": "Open and past their deadline."}
    )
    completed_late = fields.Integer(required=True)
    items_total = fields.Integer(required=True)
    items_done = fields.Integer(required=True)
    completion_rate = fields.Float(
        allow_none=True,
        required=True,
        metadata={"description": "completed / (total - cancelled); null when nothing is due."},
    )
    children = fields.List(fields.Nested(lambda: ProgressNodeSchema()), required=True)


class ProgressSchema(StrictSchema):
    campaign_id = fields.Integer(required=True)
    status = fields.String(required=True)
    tree = fields.Nested(ProgressNodeSchema, required=True)
