"""Schemas of the indicators and the monthly bulletin: query arguments and answers."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from ..services.indicators import BREAKDOWNS, INDICATORS
from .common import StrictSchema

REGION = validate.Regexp(r"^[0-9]{12}\Z", error="a 12-digit region code")
RATE = "A fraction from 0 to 1 (4 decimals); null when its denominator is 0."
# ASCII: \d alone matches any Unicode digit (full-width ２０２６), which date() reads.
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class Day(fields.Date):
    """A local date written YYYY-MM-DD, as every date of the API (the ``<date:day>`` path
    converter, a category's date attribute) and nothing else: ``date.fromisoformat`` also
    reads the basic form and ISO weeks ("20261101", "2026W45"), which were taken as dates."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, str) or not _DAY.fullmatch(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class IndicatorArgsSchema(StrictSchema):
    region = fields.String(
        validate=REGION,
        metadata={
            "description": "Cases located in this region's subtree (any level).",
            "example": "320508001000",
        },
    )
    unit = fields.String(
        validate=REGION,
        metadata={"description": "Cases held by this handling unit (exactly it)."},
    )
    department = fields.Integer(
        validate=validate.Range(min=1, max=2**31 - 1),
        metadata={"description": "Cases dispatched to this functional department."},
    )
    from_ = Day(
        data_key="from",
        required=True,
        metadata={"description": "First day of the period (local date).", "example": "2026-03-01"},
    )
    to = Day(
        required=True,
        metadata={
            "description": "Day after the period's last day: the period is [from, to).",
            "example": "2026-04-01",
        },
    )
    by = fields.String(
        validate=validate.OneOf(BREAKDOWNS),
        metadata={
            "description": "Break down by category, source, unit, or trend by day/week/month."
        },
    )

    @validates_schema
    def _whose(self, data: dict[str, Any], **kwargs: Any) -> None:
        if not data.get("region") and not data.get("unit"):
            raise ValidationError({"region": ["give region or unit"]})
        if data["to"] <= data["from_"]:
            raise ValidationError({"to": ["must be after from"]})


def _indicator_fields() -> dict[str, fields.Field]:
    out: dict[str, fields.Field] = {}
    for key, title in INDICATORS:
        if key.endswith("_rate"):
            out[key] = fields.Float(allow_none=True, metadata={"description": f"{title}. {RATE}"})
        elif key in ("avg_handling_hours", "median_handling_hours", "satisfaction", "score"):
            out[key] = fields.Float(allow_none=True, metadata={"description": title})
        else:
            out[key] = fields.Integer(metadata={"description": title})
    return out


IndicatorValuesSchema = Schema.from_dict(_indicator_fields(), name="IndicatorValuesSchema")


class IndicatorRegionSchema(Schema):
    code = fields.String(metadata={"example": "320508001000"})
    name = fields.String(metadata={"example": "平江街道"})
    level = fields.String(metadata={"example": "township"})


class IndicatorDepartmentSchema(Schema):
    id = fields.Integer()
    name = fields.String()


class IndicatorItemSchema(Schema):
    key = fields.String(
        metadata={
            "description": "The category code, source, unit (`code` or "
            "`code/department:id`), or the first day of the day/week (month: YYYY-MM)."
        }
    )
    name = fields.String(allow_none=True)
    unit = fields.String(allow_none=True)
    department_id = fields.Integer(allow_none=True)
    from_ = fields.String(
        data_key="from", attribute="from", metadata={"description": "Trend part: first day."}
    )
    to = fields.String(metadata={"description": "Trend part: day after the last day."})
    indicators = fields.Nested(IndicatorValuesSchema)


class IndicatorsSchema(Schema):
    region = fields.Nested(IndicatorRegionSchema)
    unit = fields.Nested(IndicatorRegionSchema)
    department = fields.Nested(IndicatorDepartmentSchema)
    from_ = fields.String(data_key="from", attribute="from", metadata={"example": "2026-03-01"})
    to = fields.String(metadata={"example": "2026-04-01"})
    timezone = fields.String(metadata={"example": "Asia/Shanghai"})
    weights = fields.Dict(
        keys=fields.String(),
        values=fields.Float(),
        metadata={"description": "The composite score's weights (GRIDAPI_INDICATOR_WEIGHTS)."},
    )
    indicators = fields.Nested(IndicatorValuesSchema)
    by = fields.String(allow_none=True, metadata={"description": "The breakdown, if any."})
    items = fields.List(
        fields.Nested(IndicatorItemSchema),
        metadata={"description": "The breakdown or the trend; empty without `by`."},
    )


class BulletinArgsSchema(StrictSchema):
    format = fields.String(
        load_default="json",
        validate=validate.OneOf(("json", "csv", "xlsx")),
        metadata={"description": "json, csv (UTF-8 with BOM) or xlsx; files have Chinese headers."},
    )


class BulletinItemSchema(Schema):
    rank = fields.Integer(
        allow_none=True,
        metadata={"description": "By composite score; equal scores share a rank; null: no score."},
    )
    code = fields.String()
    name = fields.String()
    indicators = fields.Nested(IndicatorValuesSchema)
    previous = fields.Nested(IndicatorValuesSchema, metadata={"description": "Last month."})
    change = fields.Nested(
        IndicatorValuesSchema, metadata={"description": "This month minus last month."}
    )


class BulletinSchema(Schema):
    region = fields.Nested(IndicatorRegionSchema)
    month = fields.String(metadata={"example": "2026-03"})
    previous_month = fields.String(metadata={"example": "2026-02"})
    timezone = fields.String()
    weights = fields.Dict(keys=fields.String(), values=fields.Float())
    total = fields.Nested(IndicatorValuesSchema, metadata={"description": "The whole region."})
    previous_total = fields.Nested(IndicatorValuesSchema)
    items = fields.List(fields.Nested(BulletinItemSchema))
