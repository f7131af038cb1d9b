"""Schemas of cases: the report a phone sends, the case, its timeline, lists and queues."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from marshmallow import (
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates,
    validates_schema,
)
from webargs.fields import DelimitedList

from ..geo.crs import SUPPORTED_CRS
from ..models.cases import SEVERITIES, SOURCES, STATUSES, SUPERVISION_LEVELS
from ..personal import number_in_name
from ..phone import clock_offset, in_server_time
from ..services.cases import ACTIONS, QUEUE_NAMES, SORTS
from .common import PointSchema, Stated, StrictSchema, user_ref
from .locate import CRS_FIELD_DOC
from .regions import REGION_CODE

_PARTY_NUMBER = (
    "must not hold an ID or phone number: a party's name and note are kept unencrypted and "
    "shown to whoever reads the case"
)


def _no_number(value: str) -> None:
    if number_in_name(value):
        raise ValidationError(_PARTY_NUMBER)


class PartySchema(StrictSchema):
    role = fields.String(
        required=True,
        validate=validate.Length(min=1, max=50),
        metadata={"description": "e.g. 当事人, 投诉人, 被投诉人, 证人.", "example": "当事人"},
    )
    name = fields.String(
        validate=[validate.Length(max=100), _no_number],
        metadata={
            "description": "Masked in every answer (王*); the full names are read with "
            "`GET /api/v1/cases/{id}/parties`, stating a purpose. Not an ID or phone number.",
            "example": "王某",
        },
    )
    note = fields.String(
        validate=[validate.Length(max=500), _no_number],
        metadata={
            "description": "Not an ID or phone number (11 digits or more in a row, also "
            "written apart or in Chinese digits, 一三八…): it is kept and shown unencrypted. A "
            "number stored before this rule is shown masked (138****5678)."
        },
    )


class ClientId(fields.UUID):
    """A phone's UUID for its report; the nil UUID reads as none. A phone whose library
    writes 00000000-0000-0000-0000-000000000000 for "no id" had its second report, a
    different one, refused as a reuse of the first's client_id (422), and lost."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> Any:
        parsed = super()._deserialize(value, attr, data, **kwargs)
        return None if parsed is not None and parsed.int == 0 else parsed


class CaseCreateSchema(StrictSchema):
    category = fields.String(
        required=True,
        validate=validate.Regexp(r"^([0-9]{2}|[0-9]{4})\Z", error="a category code"),
        metadata={"description": "Category code (a subclass, or a class).", "example": "0101"},
    )
    description = Stated(  # "   " was a description, where "" was refused
        required=True,
        validate=validate.Length(min=1, max=5000),
        metadata={"example": "小区门口垃圾堆放"},
    )
    location = fields.Nested(
        PointSchema,
        required=True,
        metadata={"description": "GeoJSON Point [lon, lat] in the system named by `crs`."},
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    accuracy_m = fields.Float(
        allow_none=True,
        validate=validate.Range(min=0, max=100_000),
        metadata={"description": "The phone's reported horizontal accuracy, metres."},
    )
    address = fields.String(load_default="", validate=validate.Length(max=500))
    occurred_at = fields.AwareDateTime(
        allow_none=True,
        metadata={
            "description": "When it happened (ISO 8601 with a time zone), by the phone's clock: "
            "moved to the server's clock when the request's `Date` header says that clock is "
            "off by more than a minute. At most 10 minutes ahead of the server's clock."
        },
    )
    source = fields.String(validate=validate.OneOf(SOURCES), metadata={"example": "phone"})
    urgent = fields.Boolean(load_default=False)
    severity = fields.String(load_default="general", validate=validate.OneOf(SEVERITIES))
    parties = fields.List(
        fields.Nested(PartySchema), load_default=list, validate=validate.Length(max=50)
    )
    attributes = fields.Dict(
        load_default=dict,
        metadata={"description": "Values of the category's extra attributes, by code."},
    )
    client_id = ClientId(
        allow_none=True,
        metadata={
            "description": "The phone's own id for this report: a repeat from the same caller "
            "returns the first answer and creates nothing. The nil UUID (all zeros), which "
            "some phone libraries write for none, is taken as none."
        },
    )

    @validates_schema
    def _coordinates(self, data: dict[str, Any], **kwargs: Any) -> None:
        location = data.get("location")
        if not location:
            return
        lon, lat = location["coordinates"]
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValidationError(
                {"location": {"coordinates": ["lon must be in -180..180 and lat in -90..90"]}}
            )

    @validates("occurred_at")
    def _not_future(self, value: datetime | None, **kwargs: Any) -> None:
        if value is None:
            return
        # The year first: 0001-01-01T00:00+14:00 cannot even be compared (it lies before
        # the first instant Python can hold in UTC).
        if value.year < 2000:
            raise ValidationError("lies before the year 2000")
        # Checked as stored, in server time: 2000-01-01T00:30Z from a phone 300 days fast
        # was stored as 1999-03-07.
        moved = value + clock_offset()
        if moved.year < 2000:
            raise ValidationError("lies before the year 2000")
        if moved > datetime.now(UTC) + timedelta(minutes=10):
            raise ValidationError("lies in the future")

    @post_load
    def _in_server_time(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """A time the phone wrote by a clock its Date header says is off, in server time."""
        return in_server_time(data, "occurred_at")


class NamedCodeSchema(StrictSchema):
    code = fields.String(required=True)
    name = fields.String(allow_none=True)


class CaseGridSchema(StrictSchema):
    code = fields.String(required=True, metadata={"example": "320508001001001"})
    name = fields.String(allow_none=True)
    version_id = fields.Integer(required=True)


class RoutingInfoSchema(StrictSchema):
    method = fields.String(
        required=True,
        metadata={"description": "inside, boundary, snapped, or none (unrouted)."},
    )
    distance_m = fields.Float(allow_none=True)
    unrouted = fields.Boolean(required=True)
    grid_version_id = fields.Integer(allow_none=True)


class ResponsibleSchema(StrictSchema):
    unit = fields.Nested(NamedCodeSchema, required=True)
    department_id = fields.Integer(allow_none=True)
    assignee_id = fields.Integer(allow_none=True)


class DeadlinesSchema(StrictSchema):
    accept = fields.DateTime(allow_none=True, metadata={"description": "Acceptance deadline."})
    handle = fields.DateTime(
        allow_none=True, metadata={"description": "Handling (closure) deadline, set on filing."}
    )
    verify = fields.DateTime(
        allow_none=True, metadata={"description": "Verification deadline, set on feedback."}
    )


class SatisfactionSchema(StrictSchema):
    score = fields.Integer(required=True)
    comment = fields.String(allow_none=True)
    rated_at = fields.DateTime(required=True)


class PossibleDuplicateSchema(StrictSchema):
    id = fields.Integer(required=True)
    number = fields.String(required=True)
    status = fields.String(required=True)
    distance_m = fields.Float(required=True)
    reported_at = fields.DateTime(required=True)


class ReportedLocationSchema(StrictSchema):
    coordinates = fields.List(fields.Float(), required=True)
    crs = fields.String(required=True)


class CaseSchema(StrictSchema):
    id = fields.Integer(required=True)
    number = fields.String(required=True, metadata={"example": "320508-20261128-0001"})
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))
    status_name = fields.String(required=True, metadata={"example": "已上报"})
    category = fields.Nested(NamedCodeSchema, required=True)
    description = fields.String(required=True)
    source = fields.String(required=True)
    urgent = fields.Boolean(required=True)
    severity = fields.String(required=True)
    sensitive = fields.Boolean(
        required=True,
        metadata={"description": "Seen only by the unit holding it, its handler and reporter."},
    )
    parties = fields.List(fields.Nested(PartySchema), required=True)
    attributes = fields.Dict(required=True)
    location = fields.Nested(PointSchema, required=True, metadata={"description": "WGS-84."})
    reported_location = fields.Nested(ReportedLocationSchema, required=True)
    accuracy_m = fields.Float(allow_none=True)
    address = fields.String(required=True)
    occurred_at = fields.DateTime(allow_none=True)
    reported_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)
    grid = fields.Nested(CaseGridSchema, allow_none=True, required=True)
    community = fields.Nested(NamedCodeSchema, allow_none=True, required=True)
    township = fields.Nested(NamedCodeSchema, allow_none=True, required=True)
    county_code = fields.String(
        required=True,
        metadata={
            "description": "The county's six-digit code (the first six of its 12), e.g. 320508."
        },
    )
    region_code = fields.String(
        required=True, metadata={"description": "The community, or the intake region."}
    )
    routing = fields.Nested(RoutingInfoSchema, required=True)
    responsible = fields.Nested(ResponsibleSchema, required=True)
    deadlines = fields.Nested(DeadlinesSchema, required=True)
    overdue = fields.Boolean(required=True)
    overdue_since = fields.DateTime(allow_none=True)
    supervision = fields.String(required=True, validate=validate.OneOf(SUPERVISION_LEVELS))
    rework_count = fields.Integer(required=True)
    extension_count = fields.Integer(required=True)
    escalation_count = fields.Integer(required=True)
    reopen_count = fields.Integer(required=True)
    extension_request = fields.Dict(allow_none=True)
    duplicate_of = fields.Integer(
        allow_none=True,
        metadata={
            "description": "The case this one was closed as a duplicate of; null when it is "
            "none, or a case you may not read (the timeline's `duplicate` row still says it "
            "was closed as a duplicate)."
        },
    )
    duplicates = fields.List(
        fields.Integer(),
        metadata={
            "description": "The reports closed as duplicates of this case that you may read "
            "(`allowed_actions` counts them all: an original with duplicates is neither "
            "rejected nor cancelled)."
        },
    )
    satisfaction = fields.Nested(SatisfactionSchema, allow_none=True)
    client_id = fields.String(allow_none=True)
    reporter = fields.String(required=True, metadata={"description": "user:<id> or client:<id>"})
    version = fields.Integer(required=True, metadata={"description": "Also the ETag."})
    allowed_actions = fields.List(
        fields.String(), required=True, metadata={"description": "What the caller may do now."}
    )
    possible_duplicates = fields.List(
        fields.Nested(PossibleDuplicateSchema),
        metadata={"description": "On report: open cases that may be the same thing."},
    )
    withheld = fields.List(
        fields.String(),
        metadata={
            "description": "Only in the answer of a step after which you may no longer read "
            "the case: the fields whose values are withheld (shown empty, the location as "
            "0, 0).",
            "example": [],
        },
    )


class CaseListSchema(StrictSchema):
    items = fields.List(fields.Nested(CaseSchema), required=True)
    next_cursor = fields.String(allow_none=True, required=True)


def _comma_list(choices: tuple[str, ...]) -> fields.Field:
    return DelimitedList(
        fields.String(validate=validate.OneOf(choices)),
        validate=validate.Length(min=1, error="name at least one"),  # status= filtered nothing
        metadata={"description": "Comma-separated: " + ", ".join(choices)},
    )


class CaseQueryArgsSchema(StrictSchema):
    status = _comma_list(STATUSES)
    open = fields.Boolean(metadata={"description": "Only open (true) or finished (false)."})
    category = fields.String(
        validate=validate.Regexp(r"^([0-9]{2}|[0-9]{4})\Z"),
        metadata={"description": "A subclass, or a class with all its subclasses."},
    )
    region = fields.String(
        validate=REGION_CODE,
        metadata={"description": "Cases located in this region's subtree."},
    )
    grid = fields.String(validate=validate.Regexp(r"^[0-9]{15}\Z"))
    from_ = fields.AwareDateTime(data_key="from", metadata={"description": "Reported at or after."})
    to = fields.AwareDateTime(metadata={"description": "Reported before."})
    overdue = fields.Boolean()
    supervision = fields.String(validate=validate.OneOf(SUPERVISION_LEVELS))
    assignee = fields.String(
        validate=[validate.Regexp(r"^(me|[0-9]{1,10})\Z"), user_ref],
        metadata={"description": "A user id, or `me`."},
    )
    unrouted = fields.Boolean()
    source = fields.String(validate=validate.OneOf(SOURCES))
    bbox = DelimitedList(
        fields.Float(allow_nan=False),
        validate=validate.Length(equal=4),
        metadata={"description": "west,south,east,north in WGS-84."},
    )
    q = fields.String(
        validate=validate.Length(min=1, max=100),
        metadata={
            "description": "Text in the description, address or number, as written (`%` and "
            "`_` are characters to find), in upper or lower case."
        },
    )
    queue = fields.String(
        validate=validate.OneOf(QUEUE_NAMES),
        metadata={
            "description": "The cases of one of your work queues, exactly those its count in "
            "`GET /api/v1/cases/queues` counts: " + ", ".join(QUEUE_NAMES) + ". A queue you "
            "do not work (not among your counts) holds no cases.",
            "example": "dispatch",
        },
    )
    sort = fields.String(load_default="-reported_at", validate=validate.OneOf(sorted(SORTS)))
    cursor = fields.String(validate=validate.Length(max=200))
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))

    @validates_schema
    def _bbox(self, data: dict[str, Any], **kwargs: Any) -> None:
        box = data.get("bbox")
        if box and not (box[0] <= box[2] and box[1] <= box[3]):
            raise ValidationError({"bbox": ["west <= east and south <= north"]})
        if box and not (min(box[0], box[1] * 2) >= -180 and max(box[2], box[3] * 2) <= 180):
            raise ValidationError({"bbox": ["longitudes within ±180, latitudes within ±90"]})

    @validates_schema
    def _range(self, data: dict[str, Any], **kwargs: Any) -> None:
        since, until = data.get("from_"), data.get("to")
        if since is not None and until is not None and since >= until:
            raise ValidationError({"to": ["must lie after from"]})


# The fields of a transition that only some actions take (comment and evidence suit all).
ACTION_FIELDS: dict[str, frozenset[str]] = {
    "assignee_id": frozenset({"dispatch"}),
    "department_id": frozenset({"dispatch"}),
    "unit": frozenset({"dispatch", "transfer"}),
    "amount": frozenset({"request_extension"}),
    "unit_of_time": frozenset({"request_extension"}),
    "level": frozenset({"supervise"}),
    "duplicate_of": frozenset({"duplicate"}),
}


class TransitionSchema(StrictSchema):
    action = fields.String(
        required=True,
        validate=validate.OneOf(sorted(ACTIONS)),
        metadata={"example": "accept"},
    )
    comment = fields.String(
        load_default="",
        allow_none=True,
        validate=validate.Length(max=5000),
        metadata={
            "description": "Required for reject, return, escalate, transfer, "
            "request_extension, deny_extension, feedback, verify_fail, reopen and cancel."
        },
    )
    assignee_id = fields.Integer(allow_none=True, metadata={"description": "dispatch: the worker."})
    department_id = fields.Integer(
        allow_none=True, metadata={"description": "dispatch: the department."}
    )
    unit = fields.String(
        allow_none=True,
        validate=validate.Regexp(r"^[0-9]{12}\Z"),
        metadata={"description": "dispatch (交办, a lower unit) or transfer: a region code."},
    )
    amount = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "request_extension: how much more time."},
    )
    # No load_default: a default in the spec is sent by generated clients with every action,
    # and answered 422 for all but request_extension. Its service counts days when not sent.
    unit_of_time = fields.String(
        allow_none=True,
        validate=validate.OneOf(("hours", "days")),
        metadata={
            "description": "request_extension: working hours or working days; working days "
            "when not sent. Another action takes `days` as not sent (clients generated "
            "from an older spec send it), and refuses `hours`."
        },
    )
    level = fields.String(
        allow_none=True,
        validate=validate.OneOf(SUPERVISION_LEVELS),
        metadata={"description": "supervise: normal, yellow or red."},
    )
    duplicate_of = fields.Integer(
        allow_none=True, metadata={"description": "duplicate: the case this one repeats."}
    )
    evidence = fields.List(
        fields.Integer(),
        load_default=list,
        allow_none=True,
        validate=validate.Length(max=20),
        metadata={"description": "Ids of attachments of this case that support the step."},
    )

    @pre_load
    def _null_is_not_sent(self, data: Any, **kwargs: Any) -> Any:
        """A field sent as null counts as not sent (docs/cases.md; a form sends every
        field): ``comment`` and ``evidence`` take their defaults, as the other fields take
        no value. They answered 422 "Field may not be null". So does ``unit_of_time``
        ``days`` with another action than request_extension (see `_sent_as_no_value`)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not _sent_as_no_value(data, k)}
        return data

    @validates_schema(pass_original=True)
    def _fields_of_the_action(
        self, data: dict[str, Any], original_data: Any, **kwargs: Any
    ) -> None:
        """A field only another action takes is refused, not dropped: `approve_extension`
        with `amount` 1 approved the 3 days asked for, `transfer` with an `assignee_id`
        left it unassigned. A field sent as null is no value (a form sends every field)."""
        action = data.get("action")
        if not isinstance(original_data, dict) or action not in ACTIONS:
            return
        foreign = {
            name: [f"not a field of '{action}' (only of {', '.join(sorted(takers))})"]
            for name, takers in ACTION_FIELDS.items()
            if action not in takers
            and name in original_data
            and not _sent_as_no_value(original_data, name)
        }
        if foreign:
            raise ValidationError(foreign)


def _sent_as_no_value(data: dict[str, Any], name: str) -> bool:
    """Return whether the field ``name`` of a transition ``data`` counts as not sent: null
    (but for ``action``), or ``unit_of_time`` ``days`` with another action than
    request_extension, the default an older spec declared, which generated clients send
    with every action (``accept`` with it answered 422)."""
    value = data.get(name)
    if value is None:
        return name != "action"
    return name == "unit_of_time" and value == "days" and data.get("action") != "request_extension"


class CasePartiesSchema(StrictSchema):
    case_id = fields.Integer(required=True)
    number = fields.String(required=True)
    parties = fields.List(
        fields.Nested(PartySchema),
        required=True,
        metadata={"description": "As reported, names in full."},
    )
    purpose = fields.String(
        required=True, metadata={"description": "Deprecated: the same as `purpose_code`."}
    )
    purpose_code = fields.String(required=True)
    reference = fields.String(allow_none=True, required=True)
    audit_id = fields.Integer(
        required=True, metadata={"description": "The audit row of this read, committed first."}
    )


class TimelineEntrySchema(StrictSchema):
    seq = fields.Integer(required=True)
    action = fields.String(required=True)
    from_status = fields.String(allow_none=True, required=True)
    to_status = fields.String(required=True)
    actor = fields.String(required=True)
    actor_name = fields.String(required=True)
    at = fields.DateTime(required=True)
    comment = fields.String(required=True)
    unit = fields.String(allow_none=True, attribute="responsible_region_code")
    data = fields.Dict(
        required=True,
        metadata={
            "description": "Details of the step. A case it names that you may not read (a "
            "duplicate link) is left out: its id and number are null, or it is dropped from "
            "a list with its number. The rows that start a stage's clock name the limit its "
            "deadline was counted with (`report`: `accept_limit`, `accept_unit`; `file`, "
            "`reopen`: `handle_limit`, `handle_unit`; `feedback`: `verify_limit`, "
            "`verify_unit`), which a calendar edit counts again (`deadline_moved`: `stage`, "
            "`due_before`, `due_at`)."
        },
    )
    evidence = fields.List(fields.Integer(), required=True)


class TimelineSchema(StrictSchema):
    case_id = fields.Integer(required=True)
    number = fields.String(required=True)
    items = fields.List(fields.Nested(TimelineEntrySchema), required=True)


class RatingSchema(StrictSchema):
    score = fields.Integer(required=True, validate=validate.Range(min=1, max=5))
    comment = fields.String(load_default="", validate=validate.Length(max=2000))


class QueueSchema(StrictSchema):
    queue = fields.String(required=True, metadata={"example": "intake"})
    name = fields.String(required=True, metadata={"example": "待受理"})
    count = fields.Integer(required=True)


class QueuesSchema(StrictSchema):
    items = fields.List(fields.Nested(QueueSchema), required=True)
