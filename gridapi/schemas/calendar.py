"""Schemas of the working calendar."""

from __future__ import annotations

from marshmallow import fields, validate

from ..services.calendar import FIRST_YEAR, LAST_YEAR
from .common import StrictSchema


class CalendarDaySchema(StrictSchema):
    date = fields.Date(attribute="day", required=True)
    kind = fields.String(required=True, validate=validate.OneOf(["holiday", "workday"]))
    name = fields.String(required=True)


class CalendarSchema(StrictSchema):
    working_hours = fields.String(required=True, metadata={"example": "08:30-12:00,13:30-17:30"})
    timezone = fields.String(required=True, metadata={"example": "Asia/Shanghai"})
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
    name = fields.String(load_default="", validate=validate.Length(max=50))


class CalendarImportSchema(StrictSchema):
    version = fields.Integer(required=True, validate=validate.Equal(1))
    source = fields.String()
    years = fields.Dict(
        required=True,
        metadata={
            "description": '{"2027": {"holidays": ["2027-01-01", …], "workdays": [...]}}; the '
            "years given replace what is stored for them."
        },
    )


class CalendarImportResultSchema(StrictSchema):
    years = fields.Integer(required=True)
    holidays = fields.Integer(required=True)
    workdays = fields.Integer(required=True)
