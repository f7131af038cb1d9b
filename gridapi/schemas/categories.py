"""Schemas of case categories."""

from __future__ import annotations

from marshmallow import fields, validate

from ..models.categories import ATTRIBUTE_TYPES, LIMIT_UNITS
from ..services.categories import (
    MAX_ATTRIBUTES,
    MAX_DESCRIPTION,
    MAX_LABEL,
    MAX_VALUE,
    MAX_VALUES,
)
from .common import Stated, StrictSchema, _no_nul

UNIT = validate.OneOf(LIMIT_UNITS)


class AttributeSchema(StrictSchema):
    code = fields.String(required=True, metadata={"example": "hazard"})
    label = fields.String(required=True, metadata={"example": "隐患类型"})
    type = fields.String(required=True, validate=validate.OneOf(ATTRIBUTE_TYPES))
    required = fields.Boolean()
    # Read with .get(): marshmallow falls back to getattr, and dict.values is a method.
    values = fields.Function(
        lambda attr: attr.get("values"),
        metadata={
            "description": "Choices, for choice types (null for the others).",
            "type": "array",
            "nullable": True,
            "items": {"type": "string"},
        },
    )
    description = fields.String()
    minimum = fields.Float(
        metadata={"description": "A number's least value (inclusive); absent: none."}
    )
    maximum = fields.Float(
        metadata={"description": "A number's greatest value (inclusive); absent: none."}
    )
    integer = fields.Boolean(metadata={"description": "A number that counts: whole numbers only."})


class CategorySchema(StrictSchema):
    code = fields.String(required=True, metadata={"example": "5301"})
    name = fields.String(required=True, metadata={"example": "消防安全隐患"})
    parent_code = fields.String(allow_none=True)
    level = fields.Integer(required=True, metadata={"description": "1 = class, 2 = subclass."})
    accept_limit = fields.Integer(required=True)
    accept_unit = fields.String(required=True, validate=UNIT)
    handle_limit = fields.Integer(required=True)
    handle_unit = fields.String(required=True, validate=UNIT)
    verify_limit = fields.Integer(required=True)
    verify_unit = fields.String(required=True, validate=UNIT)
    default_handler = fields.String(
        required=True,
        metadata={
            "description": "Who handles a filed case: community, township, county or "
            "department:<code> (dispatched by the township office).",
            "example": "township",
        },
    )
    intake_standard = fields.String(required=True)
    closure_standard = fields.String(required=True)
    sensitive = fields.Boolean(required=True)
    urgent = fields.Boolean(required=True)
    auto_escalate = fields.Boolean(
        required=True,
        metadata={"description": "Escalated to the parent level's office when overdue."},
    )
    feedback_evidence = fields.Boolean(
        required=True,
        metadata={
            "description": "Feedback (反馈) on a case of the category must cite at least one "
            "photo of the case as `evidence` (422 without)."
        },
    )
    duplicate_radius_m = fields.Float(required=True)
    attributes = fields.List(fields.Nested(AttributeSchema), required=True)
    is_active = fields.Boolean(required=True)
    version = fields.Integer(
        required=True,
        metadata={
            "description": 'Bumped by every change: `"<code>-<version>"` is the category\'s '
            "ETag, to send as If-Match with a change."
        },
    )


class CategoryListSchema(StrictSchema):
    items = fields.List(fields.Nested(CategorySchema), required=True)


class CategoryQueryArgsSchema(StrictSchema):
    include_inactive = fields.Boolean(load_default=False)


_LIMIT = validate.Range(min=1, max=1000)


class Shown(Stated):
    """A label or choice as a picker shows it (a calendar day's name too): without blank
    ends, white space and the characters that show nothing (" 是" and "是" were two choices
    that showed alike, and a client that sent the one it saw was refused), and refused, not
    stripped, with a NUL in it (stated() takes control characters off)."""

    def _deserialize(self, value, attr, data, **kwargs):  # type: ignore[no-untyped-def]
        _no_nul(value)
        return super()._deserialize(value, attr, data, **kwargs)


class AttributeDefinitionSchema(StrictSchema):
    """One extra attribute as an admin defines it; the service checks the rest (distinct
    codes, values for choices only, no blank label)."""

    code = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^[a-z][a-z0-9_]{0,39}\Z",
            error="1-40 lower-case letters, digits and _, from a letter",
        ),
        metadata={"example": "mediated"},
    )
    label = Shown(
        required=True,
        validate=validate.Length(min=1, max=MAX_LABEL),
        metadata={"example": "是否已调解"},
    )
    type = fields.String(
        required=True,
        validate=validate.OneOf(ATTRIBUTE_TYPES),
        metadata={"example": "single_choice"},
    )
    required = fields.Boolean(metadata={"description": "A report must give it (default false)."})
    values = fields.List(
        Shown(validate=validate.Length(min=1, max=MAX_VALUE)),
        allow_none=True,
        validate=validate.Length(min=1, max=MAX_VALUES),
        metadata={
            "description": "The distinct choices of a choice type; null or absent for the others.",
            "example": ["是", "否"],
        },
    )
    description = fields.String(
        validate=validate.Length(max=MAX_DESCRIPTION),
        metadata={"example": "双方是否已经人民调解"},
    )
    minimum = fields.Float(
        allow_none=True,
        metadata={"description": "For a number: its least value (inclusive).", "example": 1},
    )
    maximum = fields.Float(
        allow_none=True,
        metadata={"description": "For a number: its greatest value (inclusive).", "example": 500},
    )
    integer = fields.Boolean(
        allow_none=True,
        metadata={"description": "For a number: whole numbers only (a count; default false)."},
    )


class CategoryUpdateSchema(StrictSchema):
    name = Stated(validate=validate.Length(min=1, max=100))  # "   " was a name
    accept_limit = fields.Integer(validate=_LIMIT)
    accept_unit = fields.String(validate=UNIT)
    handle_limit = fields.Integer(validate=_LIMIT)
    handle_unit = fields.String(validate=UNIT)
    verify_limit = fields.Integer(validate=_LIMIT)
    verify_unit = fields.String(validate=UNIT)
    default_handler = fields.String(
        validate=validate.Length(max=64),
        metadata={
            "description": "community, township, county or department:<code>.",
            "example": "township",
        },
    )
    intake_standard = fields.String(validate=validate.Length(max=5000))
    closure_standard = fields.String(validate=validate.Length(max=5000))
    sensitive = fields.Boolean()
    urgent = fields.Boolean()
    auto_escalate = fields.Boolean()
    feedback_evidence = fields.Boolean(
        metadata={
            "description": "Feedback on a case of the category must cite a photo (default false)."
        }
    )
    duplicate_radius_m = fields.Float(validate=validate.Range(min=0, max=5000))
    attributes = fields.List(
        fields.Nested(AttributeDefinitionSchema),
        validate=validate.Length(max=MAX_ATTRIBUTES),
        metadata={
            "description": "The extra attributes a report of the category carries; the list "
            "replaces the one stored."
        },
    )
    is_active = fields.Boolean()


class CategoryCreateSchema(CategoryUpdateSchema):
    code = fields.String(
        required=True,
        validate=validate.Regexp(
            r"^([0-9]{2}|[0-9]{4})\Z", error="2 digits for a class, 4 for a subclass"
        ),
    )
    name = Stated(required=True, validate=validate.Length(min=1, max=100))
