"""Schemas of the register: houses, households, residents, visits, special-group records."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, post_load, validate, validates_schema

from ..geo.crs import SUPPORTED_CRS
from ..models.register import (
    ATTENTION_LEVELS,
    ERASE_REASONS,
    HOUSE_USES,
    HOUSEHOLD_TYPES,
    POPULATION_TYPES,
    RELATIONS,
    SPECIAL_GROUP_STATUSES,
    SPECIAL_GROUP_TYPES,
    address_key,
)
from ..personal import NUMBER_IN_NAME, NUMBER_IN_TEXT, number_in_name
from ..phone import in_server_time
from ..purposes import PURPOSES, reference_problem
from .cases import CaseCreateSchema
from .common import PointSchema, Stated, StrictSchema, something_to_find
from .locate import CRS_FIELD_DOC
from .regions import REGION_CODE

GRID = validate.Regexp(r"^[0-9]{15}\Z", error="a 15-digit grid code")
REGION = validate.Regexp(r"^[0-9]{12}\Z", error="a 12-digit region code")
ID_NUMBER_DOC = (
    "居民身份证号码: 18 characters, a known province prefix, a real birth date and the "
    "ISO 7064 MOD 11-2 check digit (a lower-case x is accepted). Stored encrypted; "
    "answered masked (3201**********1234)."
)
PHONE_DOC = (
    "Mainland mobile number (11 digits starting 13-19; spaces, dashes and +86 are dropped). "
    "Stored encrypted; answered masked (138****5678)."
)


def _check_point(data: dict[str, Any]) -> None:
    location = data.get("location")
    if not location:
        return
    lon, lat = location["coordinates"]
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValidationError(
            {"location": {"coordinates": ["lon must be in -180..180 and lat in -90..90"]}}
        )


class PlaceFields(StrictSchema):
    """Where an object is: a point (routed to its grid like a case), a grid or a region."""

    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={"description": "GeoJSON Point in the system named by `crs`, routed to a grid."},
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    grid = fields.String(
        validate=GRID, metadata={"description": "The grid (wins over a routed point)."}
    )
    region = fields.String(
        validate=REGION,
        metadata={
            "description": "A community, when no grid is known (a township or a county "
            "will do; a city or a province is a 422: rows lie in a county)."
        },
    )

    @validates_schema
    def _point(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_point(data)


class PageArgs(StrictSchema):
    cursor = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "`next_cursor` of the previous page."},
    )
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=200))


class AreaArgs(PageArgs):
    region = fields.String(validate=REGION_CODE, metadata={"description": "A region's subtree."})
    grid = fields.String(validate=GRID)


# --- houses -----------------------------------------------------------------------------------


class HouseCreateSchema(PlaceFields):
    address = fields.String(
        required=True,
        validate=validate.Length(min=1, max=300),
        metadata={
            "example": "姑苏区平江路100号3幢2单元501室",
            "description": "Kept as typed, but for the spaces around it. Compared with the "
            "addresses registered at the place in Unicode NFKC, case-folded, without "
            "whitespace: 3号楼 and ３号楼 (full-width), A座 and a座, 3号楼 2单元 and "
            "3号楼2单元 are one house.",
        },
    )
    use = fields.String(
        load_default="self_occupied",
        validate=validate.OneOf(HOUSE_USES),
        metadata={"description": "self_occupied 自住, rented 出租, vacant 空置, commercial 经营"},
    )


class HouseUpdateSchema(PlaceFields):
    crs = fields.String(validate=validate.OneOf(SUPPORTED_CRS))
    address = fields.String(validate=validate.Length(min=1, max=300))
    use = fields.String(validate=validate.OneOf(HOUSE_USES))


class HouseSchema(StrictSchema):
    id = fields.Integer(required=True)
    address = fields.String(required=True)
    use = fields.String(required=True)
    location = fields.Nested(PointSchema, allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    region_code = fields.String(required=True)
    county_code = fields.String(required=True)
    routing_method = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(
        required=True,
        metadata={
            "description": 'Bumped by every change. The ETag is `"<id>-<version>"`: send it '
            "as If-Match with a PATCH to be told (412) when someone changed it since."
        },
    )


class HouseListSchema(StrictSchema):
    items = fields.List(fields.Nested(HouseSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class HouseArgsSchema(AreaArgs):
    address = fields.String(
        validate=[validate.Length(min=1, max=100), something_to_find(address_key)],
        metadata={
            "description": "Part of the address, matched as addresses are compared (Unicode "
            "NFKC, case-folded, without whitespace): ３号楼 finds 3号楼, a座 finds A座, "
            "3号楼 2单元 finds 3号楼2单元. White space alone is a 422 (it would match "
            "every house)."
        },
    )
    use = fields.String(validate=validate.OneOf(HOUSE_USES))


def reference_field(what: str = "read") -> fields.Field:
    """The ``reference`` of a read of personal data: the case, file or request number it is
    for (checked by :class:`ReferenceChecked`)."""
    return fields.String(
        metadata={
            "description": f"The case, file or request number the {what} is for (1-40 "
            "letters, digits, '/', '_', '.' or '-'; not an ID or phone number, also not "
            "written with separators, unless it is the number of a case you can read). "
            "Audited.",
            "example": "MZJ-2026/0412",
        },
    )


class ReferenceChecked(StrictSchema):
    """Refuses a ``reference`` that cannot be one: never a resident's ID or phone number,
    since the audit log keeps it for good."""

    @validates_schema
    def _a_reference(self, data: dict[str, Any], **_: Any) -> None:
        if "reference" in data and (problem := reference_problem(data["reference"])):
            raise ValidationError({"reference": [problem]})


def purpose_code_field(description: str, after: str = "") -> fields.Field:
    """A ``purpose_code``: one of :data:`PURPOSES`, described as ``description``, the codes,
    then ``after``."""
    codes = ", ".join(f"`{c}`" for c in PURPOSES)
    return fields.String(
        validate=validate.OneOf(PURPOSES),
        metadata={
            "description": f"{description}: {codes}.{after}",
            "example": "identity_verification",
        },
    )


# --- persons ----------------------------------------------------------------------------------


def _a_name(value: str) -> None:
    """Refuse a name that is an ID or phone number (a misplaced column): names are kept in
    clear, numbers only encrypted."""
    if number_in_name(value):
        raise ValidationError(NUMBER_IN_NAME)


def _no_number(value: str | None) -> None:
    """Refuse a free text about a resident holding an ID or phone number (an address, an
    ethnicity, a visit's findings): "住户电话13712345001" was stored in clear, listed and
    exported to grid workers, where the phone field shows 137****5001."""
    if value and number_in_name(value):
        raise ValidationError(NUMBER_IN_TEXT)


class PersonCreateSchema(StrictSchema):
    # Stripped before the length check: a name of spaces was stored as "".
    name = Stated(
        required=True,
        validate=[validate.Length(min=1, max=100), _a_name],
        metadata={"example": "张三"},
    )
    id_number = fields.String(
        allow_none=True,
        validate=validate.Length(max=40),
        metadata={"description": ID_NUMBER_DOC + " Required except for foreign residents."},
    )
    phone = fields.String(
        allow_none=True, validate=validate.Length(max=40), metadata={"description": PHONE_DOC}
    )
    household_id = fields.Integer(
        allow_none=True, metadata={"description": "The household (its place is the resident's)."}
    )
    grid = fields.String(
        validate=GRID,
        metadata={
            "description": "When not in a household (given with `household_id`, it must be "
            "the household's grid: 422 otherwise)."
        },
    )
    relation = fields.String(
        allow_none=True,
        validate=validate.OneOf(RELATIONS),
        metadata={"description": "Relation to the head of the household (head = 户长)."},
    )
    ethnicity = fields.String(
        allow_none=True,
        validate=[validate.Length(max=32), _no_number],
        metadata={"example": "汉族"},
    )
    population_type = fields.String(
        load_default="registered",
        validate=validate.OneOf(POPULATION_TYPES),
        metadata={
            "description": "registered 户籍, floating 流动, unregistered 未落户, foreign 境外"
        },
    )
    current_address = fields.String(
        allow_none=True, validate=[validate.Length(max=300), _no_number]
    )
    registered_address = fields.String(
        allow_none=True, validate=[validate.Length(max=300), _no_number]
    )


class PersonUpdateSchema(StrictSchema):
    name = Stated(validate=[validate.Length(min=1, max=100), _a_name])
    id_number = fields.String(
        allow_none=True, validate=validate.Length(max=40), metadata={"description": ID_NUMBER_DOC}
    )
    phone = fields.String(
        allow_none=True, validate=validate.Length(max=40), metadata={"description": PHONE_DOC}
    )
    household_id = fields.Integer(allow_none=True)
    grid = fields.String(validate=GRID)
    relation = fields.String(allow_none=True, validate=validate.OneOf(RELATIONS))
    ethnicity = fields.String(allow_none=True, validate=[validate.Length(max=32), _no_number])
    population_type = fields.String(validate=validate.OneOf(POPULATION_TYPES))
    current_address = fields.String(
        allow_none=True, validate=[validate.Length(max=300), _no_number]
    )
    registered_address = fields.String(
        allow_none=True, validate=[validate.Length(max=300), _no_number]
    )


class PersonSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(required=True, metadata={"description": "Masked: 张*.", "example": "张*"})
    id_number = fields.String(
        allow_none=True, required=True, metadata={"example": "3201**********1234"}
    )
    phone = fields.String(allow_none=True, required=True, metadata={"example": "138****5678"})
    gender = fields.String(allow_none=True, required=True, metadata={"description": "From the ID."})
    age = fields.Integer(
        allow_none=True,
        required=True,
        metadata={"description": "Whole years, from the ID (the birth date is not shown)."},
    )
    ethnicity = fields.String(allow_none=True, required=True)
    population_type = fields.String(required=True)
    current_address = fields.String(allow_none=True, required=True)
    registered_address = fields.String(allow_none=True, required=True)
    household_id = fields.Integer(allow_none=True, required=True)
    house_id = fields.Integer(allow_none=True, required=True)
    relation = fields.String(allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    region_code = fields.String(required=True)
    county_code = fields.String(required=True)
    masked = fields.Boolean(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(
        required=True,
        metadata={
            "description": 'Bumped by every change. The ETag is `"<id>-<version>"`: send it '
            "as If-Match with a PATCH to be told (412) when someone changed it since."
        },
    )


class PersonListSchema(StrictSchema):
    items = fields.List(fields.Nested(PersonSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class PersonArgsSchema(AreaArgs, ReferenceChecked):
    name = fields.String(
        validate=[validate.Length(min=1, max=100), something_to_find(str.strip)],
        metadata={
            "description": "Names starting with this, for callers holding `persons:unmask`. "
            "Callers without it see names masked (张*): for them one character finds the names "
            "starting with it and more find whole names only, so that the mask cannot be read "
            "back a character at a time. Results are masked. Spaces around it are dropped; "
            "white space alone is a 422 (it would match every resident)."
        },
    )
    id_number = fields.String(
        validate=validate.Length(max=40),
        metadata={
            "description": "Exact ID number (via its keyed hash); rate-limited per user and "
            "audited (`person.lookup`: the number masked, how many residents matched)."
        },
    )
    phone = fields.String(
        validate=validate.Length(max=40),
        metadata={
            "description": "Exact phone number (via its keyed hash); rate-limited per user and "
            "audited (`person.lookup`: the number masked, how many residents matched)."
        },
    )
    address = fields.String(
        validate=[validate.Length(min=1, max=100), something_to_find(address_key)],
        metadata={
            "description": "Part of the current or registered address, matched as addresses "
            "are compared (Unicode NFKC, case-folded, without whitespace): ３号楼 finds 3号楼, "
            "a座 finds A座, 3号楼 2单元 finds 3号楼2单元. White space alone is a 422 (it "
            "would match every resident with an address)."
        },
    )
    household_id = fields.Integer()
    house_id = fields.Integer()
    population_type = fields.String(validate=validate.OneOf(POPULATION_TYPES))
    purpose_code = purpose_code_field(
        "Optional: why an ID or phone number is looked up, kept in the lookup's audit row "
        "(`person.lookup`, written for every search by `id_number` or `phone`; a search "
        "without either writes none and keeps no purpose)"
    )
    reference = reference_field("lookup")


class PurposeFields(ReferenceChecked):
    """Why full values are read: a `purpose_code` and an optional `reference`, kept in the
    append-only audit log; the free-text `purpose` (deprecated) is accepted but not kept.
    ``PURPOSE_ALWAYS``: a purpose is required, else only with ``unmask``."""

    PURPOSE_ALWAYS = True

    purpose_code = purpose_code_field(
        "Why the full values are needed (kept in the audit log)",
        " Required unless the deprecated `purpose` is given.",
    )
    reference = reference_field()
    purpose = Stated(
        validate=validate.Length(min=4, max=200),
        metadata={
            "description": "Deprecated: free text, accepted but not kept (it could name "
            "people, and the audit log keeps what it is given for good): one of the "
            "`purpose_code` values is taken as that code, any other text as `other`. Send "
            "`purpose_code` and `reference` instead.",
            "deprecated": True,
        },
    )

    @validates_schema
    def _a_purpose(self, data: dict[str, Any], **_: Any) -> None:
        needed = self.PURPOSE_ALWAYS or data.get("unmask")
        if needed and "purpose_code" not in data and "purpose" not in data:
            message = "say why the full values are needed (purpose_code)"
            if not self.PURPOSE_ALWAYS:
                message = "is required with unmask=true (purpose_code)"
            raise ValidationError({"purpose_code": [message]})


class PurposeArgsSchema(PurposeFields):
    pass


class SensitivePersonSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    id_number = fields.String(allow_none=True, required=True)
    phone = fields.String(allow_none=True, required=True)
    gender = fields.String(allow_none=True, required=True)
    birth_date = fields.Date(allow_none=True, required=True)
    masked = fields.Boolean(required=True)
    purpose = fields.String(
        required=True,
        metadata={
            "description": "Deprecated: the `purpose` as sent, else the `purpose_code`.",
            "deprecated": True,
        },
    )
    purpose_code = fields.String(required=True, validate=validate.OneOf(PURPOSES))
    reference = fields.String(allow_none=True, required=True)
    audit_id = fields.Integer(required=True, metadata={"description": "The audit row written."})


def _reference_problem(value: str) -> str | None:
    """Return why ``value`` cannot be an erasure's reference number, or None."""
    return reference_problem(value)


class EraseArgsSchema(StrictSchema):
    reason_code = fields.String(
        validate=validate.OneOf(ERASE_REASONS),
        metadata={
            "description": "Why: `moved_away`, `deceased`, `subject_request`, `duplicate`, "
            "`entered_in_error`, `retention_expired` or `other`. Audited. Required unless "
            "`reason` is given."
        },
    )
    reference = fields.String(
        metadata={
            "description": "The office's file or ticket number of the erasure (1-40 letters, "
            "digits, '/', '_', '.' or '-'; not an ID or phone number, also not written with "
            "separators, unless it is the number of a case you can read). Audited."
        },
    )
    reason = Stated(
        validate=validate.Length(min=4, max=200),
        metadata={
            "description": "Deprecated: free text, accepted but not kept (it could name people, "
            "and the audit log outlives the erased record): one of the `reason_code` values "
            "is taken as that code, any other text as `other`. Send `reason_code` and "
            "`reference` instead.",
            "deprecated": True,
        },
    )

    @validates_schema
    def _a_reason(self, data: dict[str, Any], **_: Any) -> None:
        if "reason_code" not in data and "reason" not in data:
            raise ValidationError({"reason_code": ["say why the resident is erased (reason_code)"]})
        if "reference" in data and (problem := _reference_problem(data["reference"])):
            raise ValidationError({"reference": [problem]})


# --- households -------------------------------------------------------------------------------


class HouseholdCreateSchema(PlaceFields):
    number = fields.String(
        required=True,
        validate=validate.Length(min=1, max=32),
        metadata={"description": "户号, unique in the county.", "example": "3205080010010001"},
    )
    house_id = fields.Integer(
        allow_none=True, metadata={"description": "The house (its place is the household's)."}
    )
    type = fields.String(
        load_default="registered",
        validate=validate.OneOf(HOUSEHOLD_TYPES),
        metadata={"description": "registered 户籍户, floating 流动户, rental 租住户"},
    )


class HouseholdUpdateSchema(StrictSchema):
    house_id = fields.Integer(allow_none=True)
    type = fields.String(validate=validate.OneOf(HOUSEHOLD_TYPES))


class MemberRefSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)


class HouseholdSchema(StrictSchema):
    id = fields.Integer(required=True)
    number = fields.String(required=True)
    type = fields.String(required=True)
    house_id = fields.Integer(allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    region_code = fields.String(required=True)
    county_code = fields.String(required=True)
    head = fields.Nested(MemberRefSchema, allow_none=True, required=True)
    members = fields.List(fields.Nested(PersonSchema), required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)
    version = fields.Integer(
        required=True,
        metadata={
            "description": 'Bumped by every change. The ETag is `"<id>-<version>"`: send it '
            "as If-Match with a PATCH to be told (412) when someone changed it since."
        },
    )


class HouseholdListSchema(StrictSchema):
    items = fields.List(fields.Nested(HouseholdSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class HouseholdArgsSchema(AreaArgs):
    house_id = fields.Integer()
    number = fields.String(validate=validate.Length(min=1, max=32))
    type = fields.String(validate=validate.OneOf(HOUSEHOLD_TYPES))


# --- visits -----------------------------------------------------------------------------------


class VisitCaseSchema(CaseCreateSchema):
    """A case raised from the visit: as ``POST /api/v1/cases`` takes it; the location may be
    left out (the visit's, else the house's, is used)."""

    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={"description": "When absent or null: the visit's, else its house's."},
    )


class VisitCreateSchema(StrictSchema):
    household_id = fields.Integer(allow_none=True)
    person_id = fields.Integer(allow_none=True)
    visited_at = fields.AwareDateTime(metadata={"description": "Default: now."})
    place = fields.String(load_default="", validate=validate.Length(max=300))
    location = fields.Nested(
        PointSchema,
        allow_none=True,
        metadata={
            "description": "Where the visit was made. Exactly 0°, 0° (a phone without a fix) "
            "counts as none."
        },
    )
    crs = fields.String(
        load_default="wgs84",
        validate=validate.OneOf(SUPPORTED_CRS),
        metadata={"description": CRS_FIELD_DOC},
    )
    findings = fields.String(
        load_default="",
        validate=[validate.Length(max=5000), _no_number],
        metadata={"description": "Not an ID or phone number: kept and shown unencrypted."},
    )
    follow_up = fields.String(
        load_default="",
        validate=[validate.Length(max=5000), _no_number],
        metadata={"description": "Not an ID or phone number: kept and shown unencrypted."},
    )
    case = fields.Nested(
        VisitCaseSchema,
        allow_none=True,
        metadata={
            "description": "Report a case found on the visit, in the same transaction. "
            "Without a location (absent, null or 0°, 0°) it is placed at the visit, else at "
            "its house."
        },
    )

    @validates_schema
    def _point(self, data: dict[str, Any], **kwargs: Any) -> None:
        _check_point(data)

    @post_load
    def _in_server_time(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        """``visited_at`` by a clock the Date header says is off, in server time (as its
        case's ``occurred_at``, CaseCreateSchema)."""
        return in_server_time(data, "visited_at")


class VisitSchema(StrictSchema):
    id = fields.Integer(required=True)
    worker_id = fields.Integer(allow_none=True, required=True)
    visited_at = fields.AwareDateTime(required=True)
    place = fields.String(required=True)
    location = fields.Nested(PointSchema, allow_none=True, required=True)
    household_id = fields.Integer(allow_none=True, required=True)
    person_id = fields.Integer(allow_none=True, required=True)
    findings = fields.String(required=True)
    follow_up = fields.String(required=True)
    case_id = fields.Integer(allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    region_code = fields.String(required=True)
    created_by = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)


class VisitListSchema(StrictSchema):
    items = fields.List(fields.Nested(VisitSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class VisitArgsSchema(AreaArgs):
    household_id = fields.Integer()
    person_id = fields.Integer()
    worker_id = fields.Integer()
    since = fields.AwareDateTime()
    until = fields.AwareDateTime()


# --- special groups ---------------------------------------------------------------------------


class SpecialGroupCreateSchema(StrictSchema):
    person_id = fields.Integer(required=True)
    type = fields.String(
        required=True,
        validate=validate.OneOf(SPECIAL_GROUP_TYPES),
        metadata={
            "description": "released_prisoner 刑满释放人员, community_correction 社区矫正对象, "
            "drug_user 吸毒人员, severe_mental_disorder 严重精神障碍患者, at_risk_youth "
            "重点青少年, petitioner 信访重点人员"
        },
    )
    attention_level = fields.String(
        load_default="medium", validate=validate.OneOf(ATTENTION_LEVELS)
    )
    helper_id = fields.Integer(
        allow_none=True,
        metadata={"description": "The responsible helper (an account holding the permission)."},
    )
    status = fields.String(load_default="active", validate=validate.OneOf(SPECIAL_GROUP_STATUSES))
    notes = fields.String(
        allow_none=True,
        validate=validate.Length(max=5000),
        metadata={"description": "Stored encrypted."},
    )
    started_on = fields.Date(allow_none=True)
    ended_on = fields.Date(allow_none=True)


class SpecialGroupUpdateSchema(StrictSchema):
    attention_level = fields.String(validate=validate.OneOf(ATTENTION_LEVELS))
    helper_id = fields.Integer(allow_none=True)
    status = fields.String(validate=validate.OneOf(SPECIAL_GROUP_STATUSES))
    notes = fields.String(allow_none=True, validate=validate.Length(max=5000))
    started_on = fields.Date(allow_none=True)
    ended_on = fields.Date(allow_none=True)


class SpecialGroupSchema(StrictSchema):
    id = fields.Integer(required=True)
    person = fields.Nested(MemberRefSchema, required=True)
    type = fields.String(required=True)
    type_name = fields.String(required=True)
    attention_level = fields.String(required=True)
    helper_id = fields.Integer(allow_none=True, required=True)
    status = fields.String(required=True)
    notes = fields.String(allow_none=True, required=True)
    started_on = fields.Date(allow_none=True, required=True)
    ended_on = fields.Date(allow_none=True, required=True)
    grid = fields.String(allow_none=True, required=True)
    region_code = fields.String(required=True)
    created_at = fields.AwareDateTime(required=True)
    updated_at = fields.AwareDateTime(required=True)


class SpecialGroupListSchema(StrictSchema):
    items = fields.List(fields.Nested(SpecialGroupSchema), required=True)
    next_cursor = fields.Integer(allow_none=True, required=True)


class SpecialGroupArgsSchema(AreaArgs):
    type = fields.String(validate=validate.OneOf(SPECIAL_GROUP_TYPES))
    attention_level = fields.String(validate=validate.OneOf(ATTENTION_LEVELS))
    status = fields.String(validate=validate.OneOf(SPECIAL_GROUP_STATUSES))
    person_id = fields.Integer()
    helper_id = fields.Integer()


class AccessExportSchema(StrictSchema):
    """Everything held about one resident (full values), for an access request."""

    person = fields.Dict(required=True, metadata={"description": "Full, unmasked values."})
    household = fields.Dict(allow_none=True, required=True)
    house = fields.Dict(allow_none=True, required=True)
    visits = fields.List(fields.Dict(), required=True)
    processing = fields.List(
        fields.Dict(),
        required=True,
        metadata={"description": "Who processed the record, when, why (from the audit log)."},
    )
    special_groups = fields.List(
        fields.Dict(),
        metadata={"description": "Only for callers holding special_groups:read."},
    )
