"""User accounts, roles and grid rosters."""

from __future__ import annotations

from datetime import date

from flask.views import MethodView

from ..auditing import audit
from ..auth import current_principal
from ..extensions import commit, db_session, state
from ..models import Role
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


@blp.route("/roles")
class Roles(MethodView):
    @blp.requires("users:read")
    @blp.response(200, RoleListSchema)
    def get(self):
        """List the roles and their permissions"""
        from sqlalchemy import select

        return {"items": db_session().scalars(select(Role).order_by(Role.rank, Role.name))}


@blp.route("/users")
class Users(MethodView):
    @blp.requires("users:read")
    @blp.arguments(UserQueryArgsSchema, location="query")
    @blp.response(200, UserPageSchema)
    def get(self, args):
        """List the accounts in your scope"""
        limit = args.pop("limit")
        items = svc.list_users(db_session(), current_principal().scope, limit=limit + 1, **args)
        return {"items": items[:limit], "next": items[limit - 1].id if len(items) > limit else None}

    @blp.requires("users:write")
    @blp.arguments(UserCreateSchema)
    @blp.response(201, UserSchema)
    def post(self, data):
        """Create an account in your scope

        A role below your own; a region inside your scope (`scope_region`) or grids in it
        (`grids`, the roster starting today). The password must meet the policy.
        """
        p = current_principal()
        user = svc.create_user(
            db_session(),
            scope=p.scope,
            actor_rank=p.rank,
            phone_key=state().phone_key,
            scope_region=data.pop("scope_region", None),
            **data,
        )
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
        return user


@blp.route("/users/<id:user_id>")
class UsersById(MethodView):
    @blp.requires("users:read")
    @blp.response(200, UserSchema)
    def get(self, user_id):
        """Get an account"""
        return svc.get_user(db_session(), user_id, current_principal().scope)

    @blp.requires("users:write")
    @blp.arguments(UserUpdateSchema)
    @blp.response(200, UserSchema)
    def patch(self, data, user_id):
        """Change an account's name, role, scope or whether it is active

        Disabling an account or changing its role or scope ends its sessions. You cannot
        change your own role or disable yourself (422): another administrator must.
        """
        p = current_principal()
        user = svc.update_user(
            db_session(),
            user_id,
            data,
            scope=p.scope,
            actor_rank=p.rank,
            actor_id=p.id if p.kind == "user" else None,
        )
        audit("user.update", "user", user.id, region_code=user.region_code, summary=data)
        _changed()
        return user


@blp.route("/users/<id:user_id>/password")
class UserPassword(MethodView):
    @blp.requires("users:write")
    @blp.arguments(PasswordResetSchema)
    @blp.response(204)
    def post(self, data, user_id):
        """Reset an account's password (its sessions end)"""
        p = current_principal()
        session = db_session()
        user = svc.get_user(session, user_id, p.scope)
        svc.changeable_user(session, user_id, scope=p.scope, actor_rank=p.rank)
        svc.set_password(session, user, data["new_password"], phone_key=state().phone_key)
        audit("user.password_reset", "user", user.id, region_code=user.region_code)
        _changed()


@blp.route("/users/<id:user_id>/assignments")
class UserAssignments(MethodView):
    @blp.requires("users:read")
    @blp.response(200, AssignmentListSchema)
    def get(self, user_id):
        """An account's grid assignments, with history"""
        session = db_session()
        svc.get_user(session, user_id, current_principal().scope)
        return {"items": svc.assignments_of(session, user_id)}

    @blp.requires("users:write")
    @blp.arguments(AssignmentCreateSchema)
    @blp.response(201, AssignmentSchema)
    def post(self, data, user_id):
        """Put an account on a grid's roster"""
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
        """Take an account off a grid's roster from a day (default today)"""
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
        """Who was responsible for a grid on a day"""
        day = args.get("on") or date.today()
        rows = svc.roster(db_session(), grid_code, current_principal().scope, day)
        return {
            "grid_code": grid_code,
            "on": day,
            "items": [
                {
                    "user": user,
                    "is_primary": a.is_primary,
                    "valid_from": a.valid_from,
                    "valid_to": a.valid_to,
                }
                for a, user in rows
            ],
        }
