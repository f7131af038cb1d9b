"""User accounts, roles and grid rosters."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from .. import clock
from ..auditing import audit
from ..auth import Forbidden, current_principal
from ..extensions import commit, db_session, state
from ..limits import count_lookup, require_lookup_left
from ..models import Role, User
from ..schemas.identity import (
    AssignmentCreateSchema,
    AssignmentEndSchema,
    AssignmentListSchema,
    AssignmentSchema,
    PasswordResetSchema,
    RoleListSchema,
    RosterArgsSchema,
    RosterSchema,
    UserCreateSchema,
    UserPageSchema,
    UserQueryArgsSchema,
    UserSchema,
    UserUpdateSchema,
)
from ..scope import Scope
from ..security.permissions import ROLE_RANK
from ..services import identity as svc
from .blueprint import Blueprint

blp = Blueprint(
    "users",
    __name__,
    url_prefix="/api/v1",
    description="Accounts of grid workers, officers and centres; who works which "
    "grid, with history.",
)


def _actor_rank() -> int | None:
    return current_principal().rank


def _changed():  # type: ignore[no-untyped-def]
    commit()
    state().principals.clear()


def _username_probed(username: str) -> None:
    """Count and audit an answer that a username is taken (then raised again): the name is
    unique across every scope, so the 409 tells whether an account anywhere has it, also one
    the caller may not see. The request's changes are rolled back; the audit row (filed under
    the caller's region, naming no account) is committed, and outlives the refusal."""
    p = current_principal()
    db_session().rollback()
    count_lookup(state().settings.person_lookup_rate, p.actor_id)
    audit(
        "user.username_taken",
        "user",
        None,
        region_code=p.region_code,
        summary={"username": username},
    )
    commit()


def _view(user: User, scope: Scope) -> dict[str, Any]:
    """Return one account as ``scope`` may see it (``identity.user_view``)."""
    return svc.user_view(user, scope, svc.department_regions(db_session(), [user]))


@blp.route("/roles")
class Roles(MethodView):
    @blp.requires("users:read")
    @blp.response(200, RoleListSchema)
    def get(self):
        """List the roles and their permissions

        Returns every role (grid_worker 网格员, grid_chief 网格长, department, township_office,
        county_centre, city_centre, admin) with its title, its rank and the permissions it grants,
        ordered by rank then name. Needs `users:read`. Use it to fill a role picker: an account can
        only be given a role ranked below the caller's own (administrators excepted).
        """
        from sqlalchemy import select

        return {"items": db_session().scalars(select(Role).order_by(Role.rank, Role.name))}


@blp.route("/users")
class Users(MethodView):
    @blp.requires("users:read")
    @blp.arguments(UserQueryArgsSchema, location="query")
    @blp.response(200, UserPageSchema)
    def get(self, args):
        """List the accounts in your scope

        Returns the accounts whose region lies inside the caller's scope, plus those currently on
        the roster of a grid in it, ordered by id; phone numbers are masked (138****5678) and
        passwords never appear. Filter by `role`, `region` (its subtree) and part of the username or
        display name (`q`). Needs `users:read`. Paged by id: pass `next` back as `after`.
        """
        limit = args.pop("limit")
        scope = current_principal().scope
        session = db_session()
        items = svc.list_users(session, scope, limit=limit + 1, **args)
        departments = svc.department_regions(session, items[:limit])
        return {
            "items": [svc.user_view(user, scope, departments) for user in items[:limit]],
            "next": items[limit - 1].id if len(items) > limit else None,
        }

    @blp.requires("users:write")
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data):
        """Create an account in your scope

        A role below your own; a region inside your scope (`scope_region`) or grids in it
        (`grids`, the roster starting today). The password must meet the policy. A phone
        number of another account, anywhere, is a 409; as that tells whether a number has an
        account, each such answer counts against GRIDAPI_PERSON_LOOKUP_RATE (429 when spent).
        So is a username of another account, anywhere and in any case (usernames are unique
        across every scope): the 409 counts likewise, and writes an audit row
        `user.username_taken` naming the username tried. Once the allowance is spent, every
        create is a 429 before the username and phone number are looked up, taken or not.
        """
        p = current_principal()
        # Refused before anything is looked up, taken or not: refused only when a name or
        # number was taken, the 429 told that it was, and a 201 that it was not.
        require_lookup_left(state().settings.person_lookup_rate, p.actor_id)
        # Hashed before the request's transaction begins: on SQLite it holds the one write
        # lock, and every phone's report waited for argon2 (as for a sign-in).
        password_hash = svc.hash_password(data["password"])
        try:
            user = svc.create_user(
                db_session(),
                scope=p.scope,
                actor_rank=p.rank,
                phone_key=state().phone_key,
                scope_region=data.pop("scope_region", None),
                password_hash=password_hash,
                **data,
            )
        except svc.PhoneTaken:
            # an answer about a number of any account, in scope or not: a counted lookup
            count_lookup(state().settings.person_lookup_rate, p.actor_id)
            raise
        except svc.UsernameTaken:
            _username_probed(data["username"])
            raise
        audit(
            "user.create",
            "user",
            user.id,
            region_code=user.region_code,
            summary={
                "username": user.username,
                "role": user.role_name,
                "scope_region": user.scope_region_code,
                "grids": data.get("grids"),
            },
        )
        _changed()
        return _view(user, p.scope)


@blp.route("/users/<id:user_id>")
class UsersById(MethodView):
    @blp.requires("users:read")
    @blp.response(200, UserSchema)
    def get(self, user_id):
        """Get an account

        Returns the account with its role, region, scope region, department, active flag and masked
        phone number. Needs `users:read`; an account outside the caller's scope (neither living in
        it nor on the roster of one of its grids) answers 404 exactly like one that does not exist.
        An account read through a grid's roster that lives outside the caller's scope shows
        `region_code` and `scope_region` as null: those regions answer the caller 404. Its
        `department_id` is null likewise where the department answers the caller 404.
        """
        scope = current_principal().scope
        return _view(svc.get_user(db_session(), user_id, scope), scope)

    @blp.requires("users:write")
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    def patch(self, data, user_id):
        """Change an account's name, role, scope or whether it is active

        Disabling an account or changing its role or scope ends its sessions. You cannot
        change your own role or scope, rename or disable yourself (422): another
        administrator must. A new `username` (not another account's, in any case: 409, counted
        and audited as on create; 429 before it is looked up once the allowance is spent) is
        the one the account signs in by from then on, the old
        one no longer; its sessions go on (they name the account by id, and its rights are
        unchanged). A rename writes an audit row `user.rename` with the old and the new name.
        Nor the role, name, activity or scope of an account that works outside your scope (a
        grid of another township on its roster, the region it sees, its department: 422 naming
        the field; an office over all of it may; its display name you may), and an
        unrestricted admin answers a restricted caller 404. Your own account, below an
        administrator, is changed by an office above you (403; it answered 404, where `GET`
        answers 200).
        """
        p = current_principal()
        if p.kind == "user" and p.id == user_id and p.rank < ROLE_RANK["admin"]:
            raise Forbidden(
                "Your own account is changed by an office above you; change your password "
                "with POST /api/v1/auth/password."
            )
        session = db_session()
        before = svc.get_user(session, user_id, p.scope).username if "username" in data else None
        if before is not None and data["username"] != before:
            # A new name is looked up: refused before, taken or not, once the allowance is
            # spent (as on create).
            require_lookup_left(state().settings.person_lookup_rate, p.actor_id)
        try:
            user = svc.update_user(
                session,
                user_id,
                data,
                scope=p.scope,
                actor_rank=p.rank,
                actor_id=p.id if p.kind == "user" else None,
            )
        except svc.UsernameTaken:
            _username_probed(data["username"])
            raise
        changes = {k: v for k, v in data.items() if k != "username"}
        if before is not None and before != user.username:
            audit(
                "user.rename",
                "user",
                user.id,
                region_code=user.region_code,
                summary={"from": before, "to": user.username},
            )
        if changes or before is None or before == user.username:
            audit("user.update", "user", user.id, region_code=user.region_code, summary=changes)
        _changed()
        return _view(user, p.scope)


@blp.route("/users/<id:user_id>/password")
class UserPassword(MethodView):
    @blp.requires("users:write")
    @blp.arguments(PasswordResetSchema)
    @blp.response(204)
    def post(self, data, user_id):
        """Reset an account's password (its sessions end)

        Sets a new password chosen by an administrator, e.g. for a grid worker who has forgotten
        theirs, and answers 204. Needs `users:write`, and the account must be in the caller's scope
        and of a lower rank than the caller (administrators may reset any); otherwise 404. A
        password that fails the policy (at least 10 characters of three kinds, not a common one,
        without the username or phone number) is refused with 422 naming the problems, and so is
        an account that works outside the caller's scope (a grid of another township on its
        roster, the region it sees, its department): an office over all of it resets it. On
        success every access and refresh token of the account stops working, and an audit row
        `user.password_reset` is written (without the password).
        """
        p = current_principal()
        if p.kind == "user" and p.id == user_id:
            # A stolen access token reset its admin's password without knowing it.
            raise Forbidden(
                "Change your own password with POST /api/v1/auth/password: it asks for the "
                "current one."
            )
        new_hash = svc.hash_password(data["new_password"])  # before the write lock (POST)
        session = db_session()
        user = svc.get_user(session, user_id, p.scope)
        svc.changeable_user(session, user_id, scope=p.scope, actor_rank=p.rank)
        svc.check_whole_account(session, user, p.scope, "new_password", "password")
        svc.set_password(
            session, user, data["new_password"], phone_key=state().phone_key, new_hash=new_hash
        )
        audit("user.password_reset", "user", user.id, region_code=user.region_code)
        _changed()


@blp.route("/users/<id:user_id>/assignments")
class UserAssignments(MethodView):
    @blp.requires("users:read")
    @blp.response(200, AssignmentListSchema)
    def get(self, user_id):
        """An account's grid assignments, with history

        Returns the account's roster assignments to grids in the caller's scope, newest first:
        current ones (no `valid_to`) and ended ones, each with its grid, first day, first day off
        and whether it is the primary grid. Assignments to grids outside the caller's scope are
        left out, as those grids answer 404. Needs `users:read`; an account outside the caller's
        scope answers 404. Not paged: the history of one person is short.
        """
        session = db_session()
        scope = current_principal().scope
        svc.get_user(session, user_id, scope)
        return {"items": svc.assignments_of(session, user_id, scope)}

    @blp.requires("users:write")
    @blp.arguments(AssignmentCreateSchema)
    @blp.response(201, AssignmentSchema)
    def post(self, data, user_id):
        """Put an account on a grid's roster

        Makes the account responsible for a grid in service from `valid_from` (default today); with
        `is_primary` it becomes the account's primary grid and any other assignment loses that flag.
        Needs `users:write`; the account must be in scope and of a lower rank (else 404), and a grid
        not in service in the caller's scope is a 422. Being on the roster of that grid already, for
        an overlapping period, is a 409. For an account whose scope follows its grids (no scope
        region) the new grid joins its scope and its access tokens must be refreshed. Writes an
        audit row `user.assign_grid`.
        """
        row = svc.assign_grid(
            db_session(),
            user_id,
            data["grid"],
            scope=current_principal().scope,
            actor_rank=current_principal().rank,
            valid_from=data.get("valid_from"),
            is_primary=data["is_primary"],
        )
        audit(
            "user.assign_grid",
            "user",
            user_id,
            region_code=row.grid_code[:12],
            summary={
                "grid": row.grid_code,
                "valid_from": row.valid_from,
                "is_primary": row.is_primary,
            },
        )
        _changed()
        return row


@blp.route("/users/<id:user_id>/assignments/<digits:grid_code>/end")
class UserAssignmentEnd(MethodView):
    @blp.requires("users:write")
    @blp.arguments(AssignmentEndSchema, required=False)
    @blp.response(200, AssignmentSchema)
    def post(self, data, user_id, grid_code):
        """Take an account off a grid's roster from a day (default today)

        Ends the account's current assignment to the grid: `valid_to` is the first day the grid is
        no longer theirs, so the default (today) takes effect at once and a later day schedules the
        end; an end scheduled before may be brought forward (not put back: a 422). Needs
        `users:write`; an account out of scope or not of a lower rank, a grid outside the
        caller's scope, or no current assignment to the grid answers 404, and a day before the
        assignment began is a 422. The account's access tokens must be refreshed to pick up the new
        scope; an audit row `user.end_assignment` is written. The assignment stays in the history.
        """
        row = svc.end_assignment(
            db_session(),
            user_id,
            grid_code,
            scope=current_principal().scope,
            actor_rank=current_principal().rank,
            valid_to=(data or {}).get("valid_to"),
        )
        audit(
            "user.end_assignment",
            "user",
            user_id,
            region_code=grid_code[:12],
            summary={"grid": grid_code, "valid_to": row.valid_to},
        )
        _changed()
        return row


@blp.route("/grids/<digits:grid_code>/roster")
class GridRoster(MethodView):
    @blp.requires("users:read")
    @blp.arguments(RosterArgsSchema, location="query")
    @blp.response(200, RosterSchema)
    def get(self, args, grid_code):
        """Who was responsible for a grid on a day

        Returns the accounts on the grid's roster on `on` (default today), the primary one first,
        each with their assignment period; past days answer from the history, so this tells who held
        the grid when a case was reported. Needs `users:read`; a grid not in service or outside the
        caller's scope answers 404. Phone numbers in the answer are masked.
        """
        day = args.get("on") or clock.today()  # the county's today, as the roster's
        scope = current_principal().scope
        session = db_session()
        rows = svc.roster(session, grid_code, scope, day)
        departments = svc.department_regions(session, [user for _, user in rows])
        return {
            "grid_code": grid_code,
            "on": day,
            "items": [
                {
                    "user": svc.user_view(user, scope, departments),
                    "is_primary": a.is_primary,
                    "valid_from": a.valid_from,
                    "valid_to": a.valid_to,
                }
                for a, user in rows
            ],
        }
