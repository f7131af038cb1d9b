"""Schemas of sign-in, users, rosters, departments, API clients and the audit log."""

from __future__ import annotations

from marshmallow import fields, validate

from ..security.permissions import CLIENT_SCOPES, ROLE_RANK
from .common import PageArgsSchema, StrictSchema, distinct
from .regions import CODE12, REGION_CODE

GRID15 = validate.Regexp(r"^[0-9]{15}\Z", error="must be a 15-digit grid code")
ROLE = validate.OneOf(sorted(ROLE_RANK))


class LoginSchema(StrictSchema):
    username = fields.String(
        required=True,
        validate=validate.Length(min=1, max=64),
        metadata={"description": "Username or mainland mobile number."},
    )
    password = fields.String(
        required=True, validate=validate.Length(min=1, max=256), load_only=True
    )
    device_token = fields.String(
        load_only=True,
        allow_none=True,
        validate=validate.Length(max=200),
        metadata={
            "description": "The `device_token` the last successful sign-in on this device "
            "answered, if any. While it is valid (180 days, for this account) the device is "
            "trusted: failed sign-ins on it are counted on it alone, so the account is not "
            "locked for it when others have spent the allowance of every address "
            "(GRIDAPI_LOGIN_RATE_ACCOUNT) guessing. Anything else is ignored."
        },
    )


class RefreshSchema(StrictSchema):
    refresh_token = fields.String(required=True, validate=validate.Length(min=10, max=200))


class TokenSchema(StrictSchema):
    access_token = fields.String(required=True)
    refresh_token = fields.String(
        required=True,
        metadata={
            "description": "Single use: each refresh returns a new one. Presenting a used one "
            "revokes the whole family (every token descended from the sign-in)."
        },
    )
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "Seconds."})
    device_token = fields.String(
        metadata={
            "description": "Sign-in only (not refresh): keep it on the device and send it with "
            "the next sign-in (`device_token`). It is no credential: it signs nothing in and "
            "is refused as a bearer token. The one sent is answered back while valid."
        }
    )


#: A password is at most this long (a 5 MB one took seconds and 400 MB to check against a
#: phone number, 11 characters at a time), as the sign-in's.
PASSWORD = validate.Length(min=1, max=256)


class PasswordChangeSchema(StrictSchema):
    current_password = fields.String(required=True, load_only=True, validate=PASSWORD)
    new_password = fields.String(required=True, load_only=True, validate=PASSWORD)


class PasswordResetSchema(StrictSchema):
    new_password = fields.String(required=True, load_only=True, validate=PASSWORD)


class RoleSchema(StrictSchema):
    name = fields.String(required=True)
    title = fields.String(required=True)
    rank = fields.Integer(required=True)
    permissions = fields.List(fields.String(), required=True)


class RoleListSchema(StrictSchema):
    items = fields.List(fields.Nested(RoleSchema), required=True)


class UserSchema(StrictSchema):
    id = fields.Integer(required=True)
    username = fields.String(required=True)
    display_name = fields.String(required=True)
    phone = fields.String(
        attribute="phone_masked",
        allow_none=True,
        metadata={"description": "Masked: 138****5678.", "example": "138****5678"},
    )
    role = fields.String(attribute="role_name", required=True)
    scope_region = fields.String(
        attribute="scope_region_code",
        allow_none=True,
        metadata={
            "description": "The region the account sees (null: its grids, or everything for "
            "an admin). Also null where that region is outside your scope (it answers you 404): "
            "an account of another township on the roster of one of your grids."
        },
    )
    region_code = fields.String(
        allow_none=True,
        metadata={
            "description": "Where the account lives in the tree (its region or its community). "
            "Null where that region is outside your scope (it answers you 404): an account of "
            "another township on the roster of one of your grids."
        },
    )
    department_id = fields.Integer(
        allow_none=True,
        metadata={
            "description": "The functional department the account belongs to (null: none). "
            "Also null where that department is outside your scope (it answers you 404): an "
            "account of another township's or county's department, on the roster of one of "
            "your grids or living in your area."
        },
    )
    is_active = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)


class UserPageSchema(StrictSchema):
    items = fields.List(fields.Nested(UserSchema), required=True)
    next = fields.Integer(allow_none=True)


class UserQueryArgsSchema(PageArgsSchema):
    role = fields.String(validate=ROLE)
    region = fields.String(validate=REGION_CODE)
    q = fields.String(validate=validate.Length(min=1, max=64))
    after = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "`next` of the previous page."},
    )


class UserCreateSchema(StrictSchema):
    username = fields.String(required=True)
    password = fields.String(required=True, load_only=True, validate=PASSWORD)
    role = fields.String(required=True, validate=ROLE)
    display_name = fields.String(validate=validate.Length(min=1, max=100))
    phone = fields.String(load_only=True)
    scope_region = fields.String(
        validate=CODE12, metadata={"description": "A region: the account sees its whole subtree."}
    )
    grids = fields.List(
        fields.String(validate=GRID15),
        validate=distinct,
        metadata={"description": "Or a set of grids (a worker's roster, starting today)."},
    )
    primary_grid = fields.String(validate=GRID15)
    department_id = fields.Integer()


class UserUpdateSchema(StrictSchema):
    username = fields.String(
        metadata={
            "description": "A new username: 3-64 letters, digits, '_', '.' or '-', not another "
            "account's in any case (409). The account signs in by it from now on, no longer by "
            "the old one; its sessions go on."
        }
    )
    display_name = fields.String(validate=validate.Length(min=1, max=100))
    role = fields.String(validate=ROLE)
    is_active = fields.Boolean()
    scope_region = fields.String(validate=CODE12)


class AssignmentSchema(StrictSchema):
    id = fields.Integer(required=True)
    user_id = fields.Integer(required=True)
    grid_code = fields.String(required=True)
    is_primary = fields.Boolean(required=True)
    valid_from = fields.Date(required=True)
    valid_to = fields.Date(
        allow_none=True,
        metadata={"description": "The first day the assignment no longer holds (null: open)."},
    )


class AssignmentListSchema(StrictSchema):
    items = fields.List(fields.Nested(AssignmentSchema), required=True)


class AssignmentCreateSchema(StrictSchema):
    grid = fields.String(required=True, validate=GRID15)
    valid_from = fields.Date()
    is_primary = fields.Boolean(load_default=False)


class AssignmentEndSchema(StrictSchema):
    valid_to = fields.Date(
        metadata={
            "description": "The first day the grid is no longer the account's (default today: "
            "at once)."
        }
    )


class RosterEntrySchema(StrictSchema):
    user = fields.Nested(UserSchema, required=True)
    is_primary = fields.Boolean(required=True)
    valid_from = fields.Date(required=True)
    valid_to = fields.Date(allow_none=True)


class RosterSchema(StrictSchema):
    grid_code = fields.String(required=True)
    on = fields.Date(required=True)
    items = fields.List(fields.Nested(RosterEntrySchema), required=True)


class RosterArgsSchema(StrictSchema):
    on = fields.Date(metadata={"description": "Who was responsible on this day (default today)."})


class DepartmentSchema(StrictSchema):
    id = fields.Integer(required=True)
    code = fields.String(required=True)
    name = fields.String(required=True)
    region_code = fields.String(required=True)
    is_active = fields.Boolean(required=True)


class DepartmentListSchema(StrictSchema):
    items = fields.List(fields.Nested(DepartmentSchema), required=True)


class DepartmentQueryArgsSchema(StrictSchema):
    region = fields.String(validate=REGION_CODE)


class DepartmentCreateSchema(StrictSchema):
    code = fields.String(required=True, validate=validate.Regexp(r"^[A-Za-z0-9_.\-]{2,32}\Z"))
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    region_code = fields.String(required=True, validate=CODE12)


class DepartmentUpdateSchema(StrictSchema):
    name = fields.String(validate=validate.Length(min=1, max=100))
    is_active = fields.Boolean()


class ClientSchema(StrictSchema):
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    key_prefix = fields.String(
        required=True,
        metadata={"description": "The visible part of the key (gk_<prefix>_…), to recognise it."},
    )
    scopes = fields.List(fields.String(), required=True)
    scope_region = fields.String(attribute="scope_region_code", allow_none=True)
    rate_limit = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    created_by = fields.String(allow_none=True)
    revoked_at = fields.DateTime(allow_none=True)


class ClientCreatedSchema(ClientSchema):
    api_key = fields.String(
        required=True, metadata={"description": "Shown once, now: only a digest is kept."}
    )


class ClientListSchema(StrictSchema):
    items = fields.List(fields.Nested(ClientSchema), required=True)


class ClientCreateSchema(StrictSchema):
    name = fields.String(required=True, validate=validate.Length(min=1, max=100))
    scopes = fields.List(
        fields.String(validate=validate.OneOf(sorted(CLIENT_SCOPES))),
        required=True,
        validate=validate.Length(min=1),
    )
    scope_region = fields.String(
        validate=CODE12, metadata={"description": "The area the app may see (default: everything)."}
    )
    rate_limit = fields.String(
        validate=validate.Length(min=3, max=40),
        metadata={
            "description": "One limit, e.g. '600 per minute' or '10/second' (default "
            "GRIDAPI_CLIENT_RATE_LIMIT): 1 to 1000000 requests per 1 to 1000 of a unit "
            "(second, minute, hour, day, month, year), the period at most a year (366 days)."
        },
    )


class AuditEntrySchema(StrictSchema):
    id = fields.Integer(required=True)
    at = fields.DateTime(required=True)
    actor_type = fields.String(required=True)
    actor_id = fields.String(allow_none=True)
    actor_name = fields.String(allow_none=True)
    action = fields.String(required=True)
    object_type = fields.String(required=True)
    object_id = fields.String(allow_none=True)
    region_code = fields.String(allow_none=True)
    summary = fields.Dict(required=True)
    request_id = fields.String(allow_none=True)
    client_address = fields.String(allow_none=True)


class AuditPageSchema(StrictSchema):
    items = fields.List(fields.Nested(AuditEntrySchema), required=True)
    next = fields.Integer(allow_none=True, metadata={"description": "Pass as `before`."})


class AuditQueryArgsSchema(PageArgsSchema):
    action = fields.String()
    object_type = fields.String()
    object_id = fields.String()
    actor_id = fields.String()
    since = fields.AwareDateTime(
        metadata={"description": "At or after; with its offset (Z or +08:00)."}
    )
    until = fields.AwareDateTime(metadata={"description": "Before; with its offset."})
    before = fields.Integer(
        validate=validate.Range(min=0),
        metadata={"description": "`next` of the previous page."},
    )


class MeSchema(StrictSchema):
    kind = fields.String(required=True)
    id = fields.Integer(required=True)
    name = fields.String(required=True)
    role = fields.String(allow_none=True)
    permissions = fields.List(fields.String(), required=True)
    scope = fields.Dict(required=True)
