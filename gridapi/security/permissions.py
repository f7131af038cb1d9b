"""Permissions, the roles that hold them, and the scopes an API client may be given."""

from __future__ import annotations

# Every operation of the API declares one of these (or is public).
PERMISSIONS = {
    "regions:read": "Read the administrative tree",
    "regions:write": "Create, update and import regions",
    "grids:read": "Read grids and grid versions, route points",
    "grids:write": "Import and activate grid versions",
    "users:read": "Read user accounts and grid rosters",
    "users:write": "Create and change user accounts and grid rosters",
    "departments:read": "Read functional departments",
    "departments:write": "Create and change functional departments",
    "clients:manage": "Register and revoke third-party API clients",
    "audit:read": "Read the audit log",
    "cases:read": "Read cases",
    "cases:write": "Report and handle cases",
    "webhooks:manage": "Manage webhook subscriptions",
    "categories:write": "Create and change case categories",
    "calendar:write": "Edit and import the working calendar (holidays, 调休)",
}

# The scopes an admin may grant a third-party client (a subset of the permissions).
CLIENT_SCOPES = frozenset(
    {
        "regions:read",
        "grids:read",
        "cases:read",
        "cases:write",
        "webhooks:manage",
    }
)

_READ = ["regions:read", "grids:read"]
_OFFICE = [*_READ, "users:read", "users:write", "departments:read", "cases:read", "cases:write"]
_CENTRE = [*_OFFICE, "regions:write", "grids:write", "departments:write", "audit:read"]

# (name, Chinese title, rank, permissions). Rank orders who may create whom: a user may give
# other accounts only roles of a lower rank than their own (admins any role).
ROLES: list[tuple[str, str, int, list[str]]] = [
    ("grid_worker", "网格员", 10, [*_READ, "cases:read", "cases:write"]),
    ("grid_chief", "网格长", 20, [*_READ, "users:read", "cases:read", "cases:write"]),
    ("community_officer", "综治专干", 20, [*_READ, "users:read", "cases:read", "cases:write"]),
    ("department", "职能部门", 20, [*_READ, "departments:read", "cases:read", "cases:write"]),
    ("township_office", "乡镇（街道）平安办", 30, _OFFICE),
    ("county_centre", "县级综治中心", 40, _CENTRE),
    ("city_centre", "市级综治中心", 50, _CENTRE),
    ("admin", "系统管理员", 100, sorted(PERMISSIONS)),
]
ROLE_RANK = {name: rank for name, _, rank, _ in ROLES}
