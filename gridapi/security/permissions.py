"""Permissions, the roles that hold them, and the scopes an API client may be given."""

from __future__ import annotations

# The actions of the case workflow, each with its own permission (cases:<name>), so a county
# can decide per role who accepts, dispatches, verifies and closes.
CASE_ACTION_PERMISSIONS = {
    "cases:accept": "Accept a reported case (受理)",
    "cases:reject": "Reject a reported case as invalid (不予受理)",
    "cases:file": "File an accepted case; its handling deadline starts (立案)",
    "cases:dispatch": "Dispatch a case to a worker, a department or a lower unit (派遣/交办)",
    "cases:sign": "Sign for a dispatched case (签收)",
    "cases:return": "Return a dispatched case to the dispatcher (回退)",
    "cases:escalate": "Escalate a case to the parent level's office (上报)",
    "cases:transfer": "Transfer a case to another unit (转办)",
    "cases:request_extension": "Ask for more time on a case (申请延期)",
    "cases:decide_extension": "Approve or deny an extension (审批延期)",
    "cases:feedback": "Report a case handled, with evidence (反馈)",
    "cases:verify": "Verify a handled case: pass, or fail for rework (核查)",
    "cases:close": "Close a verified case (结案)",
    "cases:reopen": "Reopen a closed case, with a reason (重新办理)",
    "cases:supervise": "Set a case's supervision level: normal, yellow or red card (督办)",
    "cases:duplicate": "Close a case as a duplicate of another (重复件)",
    "cases:cancel": "Cancel a case (撤销)",
}

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
    "cases:write": "Report cases, attach evidence, rate one's own closed cases",
    "cases:evidence_location": "See where and when evidence photos were taken (EXIF)",
    **CASE_ACTION_PERMISSIONS,
    "persons:read": "Read houses, households, residents (masked) and visits",
    "persons:write": "Register and change houses, households and residents; record visits",
    "persons:import": "Bulk-import residents from CSV or XLSX",
    "persons:unmask": "See full ID and phone numbers, stating a purpose (audited)",
    "persons:erase": "Delete a resident's data, export all held about one (access request)",
    "special_groups:read": "Read special-group records (特殊人群); every read is audited",
    "special_groups:write": "Create and change special-group records",
    "tasks:read": "Read tasks and campaigns (one's own, or in scope)",
    "tasks:write": "Create, reassign and cancel tasks and campaigns",
    "tasks:complete": "Accept and complete one's own tasks, with evidence and results",
    "patrols:write": "Record one's own patrols, track points, check-ins and heartbeats",
    "patrols:read": "Read the patrols and tracks (whereabouts) of workers in scope",
    "presence:read": "See who is on duty in a grid and when workers were last seen",
    "webhooks:manage": "Manage webhook subscriptions",
    "notifications:relay": "Receive the notifications queued for people as webhook events "
    "(notification.created, no personal data), or read their queue and say which were sent, "
    "to relay them by SMS or app push",
    "categories:write": "Create and change case categories",
    "calendar:write": "Edit and import the working calendar (holidays, 调休)",
    "indicators:read": "Read indicators and monthly bulletins (考核指标, 月度通报) in scope",
    "system:read": "See the background worker's backlog, job by job (operations)",
}

# The scopes an admin may grant a third-party client (a subset of the permissions).
CLIENT_SCOPES = frozenset(
    {
        "regions:read",
        "grids:read",
        "cases:read",
        "cases:write",
        "tasks:read",
        "webhooks:manage",
        "notifications:relay",
    }
)

# Who does what with cases: the handler's steps, the community's intake, the offices' all.
HANDLER_ACTIONS = [
    "cases:sign",
    "cases:return",
    "cases:feedback",
    "cases:request_extension",
]
WORKER_CASES = ["cases:read", "cases:write", *HANDLER_ACTIONS, "cases:escalate"]
# A grid chief oversees grids and their workers and verifies results in those grids.
CHIEF_CASES = [*WORKER_CASES, "cases:verify", "cases:evidence_location"]
# The community officer is the first line of intake, and handles what is handed down.
COMMUNITY_CASES = [
    *CHIEF_CASES,
    "cases:accept",
    "cases:reject",
    "cases:file",
    "cases:dispatch",
    "cases:duplicate",
    "cases:close",
    "cases:cancel",
]
DEPARTMENT_CASES = ["cases:read", "cases:write", *HANDLER_ACTIONS]
OFFICE_CASES = ["cases:read", "cases:write", "cases:evidence_location", *CASE_ACTION_PERMISSIONS]

# The register: grid workers keep their households; unmasking, imports and special groups
# belong to the community officer (综治专干) and the offices above; erasure to the centres.
REGISTER = ["persons:read", "persons:write"]
REGISTER_OFFICE = [
    *REGISTER,
    "persons:import",
    "persons:unmask",
    "special_groups:read",
    "special_groups:write",
]

# Field work: workers patrol and complete tasks; chiefs and offices see tracks and presence;
# offices assign tasks and campaigns.
FIELD_WORKER = ["tasks:read", "tasks:complete", "patrols:write"]
FIELD_CHIEF = [*FIELD_WORKER, "patrols:read", "presence:read"]
FIELD_OFFICE = [*FIELD_CHIEF, "tasks:write"]

_READ = ["regions:read", "grids:read"]
_OFFICE = [
    *_READ,
    "users:read",
    "users:write",
    "departments:read",
    *OFFICE_CASES,
    *REGISTER_OFFICE,
    *FIELD_OFFICE,
    "indicators:read",
]
_CENTRE = [
    *_OFFICE,
    "regions:write",
    "grids:write",
    "departments:write",
    "audit:read",
    "persons:erase",
]

# (name, Chinese title, rank, permissions). Rank orders who may create whom: a user may give
# other accounts only roles of a lower rank than their own (admins any role).
ROLES: list[tuple[str, str, int, list[str]]] = [
    ("grid_worker", "网格员", 10, [*_READ, *WORKER_CASES, *REGISTER, *FIELD_WORKER]),
    ("grid_chief", "网格长", 20, [*_READ, "users:read", *CHIEF_CASES, *REGISTER, *FIELD_CHIEF]),
    (
        "community_officer",
        "综治专干",
        20,
        [
            *_READ,
            "users:read",
            *COMMUNITY_CASES,
            *REGISTER_OFFICE,
            *FIELD_OFFICE,
            "indicators:read",
        ],
    ),
    ("department", "职能部门", 20, [*_READ, "departments:read", *DEPARTMENT_CASES]),
    ("township_office", "乡镇（街道）平安办", 30, _OFFICE),
    ("county_centre", "县级综治中心", 40, _CENTRE),
    ("city_centre", "市级综治中心", 50, _CENTRE),
    ("admin", "系统管理员", 100, sorted(PERMISSIONS)),
]
ROLE_RANK = {name: rank for name, _, rank, _ in ROLES}
