"""Schemas of the working calendar."""

from __future__ import annotations

from marshmallow import fields, validate

from ..services.calendar import FIRST_YEAR, LAST_YEAR, SOURCE_MAX
from ..workcalendar import YEAR_STATUSES
from .categories import Shown
from .common import StrictSchema


class CalendarDaySchema(StrictSchema):
    date = fields.Date(attribute="day", required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["holiday", "workday"]))
    name = fields.String(required=True)


_CASES_MOVED = (
    'How many open cases\' deadlines the edit moved (docs/cases.md, "When the calendar changes").'
)
_TASKS_MOVED = (
    "How many open tasks' deadlines, given as working time (`due_in`), the edit moved "
    '(docs/tasks.md, "When the calendar changes").'
)
_CAMPAIGNS_MOVED = (
    "How many active campaigns' deadlines, given as working time (`due_in`), the edit moved "
    "with their tasks'."
)


class CalendarDaySetSchema(CalendarDaySchema):
    cases_moved = fields.Integer(required=True, metadata={"description": _CASES_MOVED})
    tasks_moved = fields.Integer(required=True, metadata={"description": _TASKS_MOVED})
    campaigns_moved = fields.Integer(required=True, metadata={"description": _CAMPAIGNS_MOVED})


class CalendarYearSchema(StrictSchema):
    year = fields.Integer(required=True, metadata={"example": 2027})
    status = fields.String(
        required=True,
        validate=validate.OneOf([*YEAR_STATUSES, "missing"]),
        metadata={
            "description": "`official`: the State Council's arrangement. `provisional`: a "
            "stand-in until it is published (e.g. only the fixed-date holidays), or days set "
            "one by one that nobody has marked official yet. `missing`: no arrangement at "
            "all. Deadlines count the weekdays of a year that is not official as working days, "
            "holidays without fixed dates (春节, 清明, 端午, 中秋) included, unless they are set."
        },
    )
    source = fields.String(required=True, metadata={"description": "Where the days come from."})
    updated_at = fields.AwareDateTime(allow_none=True, required=True)


class CalendarYearUpdateSchema(StrictSchema):
    status = fields.String(required=True, validate=validate.OneOf(YEAR_STATUSES))
    source = fields.String(validate=validate.Length(max=SOURCE_MAX))


class CalendarSchema(StrictSchema):
    working_hours = fields.String(required=True, metadata={"example": "08:30-12:00,13:30-17:30"})
    timezone = fields.String(required=True, metadata={"example": "Asia/Shanghai"})
    years = fields.List(
        fields.Nested(CalendarYearSchema),
        required=True,
        metadata={
            "description": "The status of the year asked for; without `year`, of every year "
            "stored and of the years deadlines counted from today may reach."
        },
    )
    warning = fields.String(
        allow_none=True,
        required=True,
        metadata={
            "description": "Set while a year deadlines counted from today may reach (the next "
            "60 days) is not official: what is wrong and how to put it right."
        },
    )
    items = fields.List(
        fields.Nested(CalendarDaySchema),
        required=True,
        metadata={
            "description": "Days that depart from Monday-Friday: holidays and weekend days "
            "worked in exchange (调休)."
        },
    )


class CalendarQueryArgsSchema(StrictSchema):
    year = fields.Integer(validate=validate.Range(min=FIRST_YEAR, max=LAST_YEAR))


class CalendarDayUpdateSchema(StrictSchema):
    kind = fields.String(required=True, validate=validate.OneOf(["holiday", "workday"]))
    # Cleaned as a category's labels are: "春节" with a zero-width space after it was stored
    # so, and listed as a name unlike "春节"; one of a zero-width space named the day blank.
    name = Shown(load_default="", validate=validate.Length(max=50))


class CalendarImportSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    source = fields.String(validate=validate.Length(max=SOURCE_MAX))
    years = fields.Dict(
        required=True,
        metadata={
            "description": '{"2027": {"status": "official", "holidays": ["2027-01-01", …], '
            '"workdays": [...]}}; the years given replace what is stored for them. `status` '
            "(official, the default, or provisional) says whether they are the State Council's "
            "arrangement; `source` is kept as each year's source."
        },
    )


class CalendarImportResultSchema(StrictSchema):
    years = fields.Integer(required=True)
    holidays = fields.Integer(required=True)
    workdays = fields.Integer(required=True)
    cases_moved = fields.Integer(required=True, metadata={"description": _CASES_MOVED})
    tasks_moved = fields.Integer(required=True, metadata={"description": _TASKS_MOVED})
    campaigns_moved = fields.Integer(required=True, metadata={"description": _CAMPAIGNS_MOVED})
