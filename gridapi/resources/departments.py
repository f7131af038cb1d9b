"""Functional departments (职能部门), the units cases can be dispatched to."""

from __future__ import annotations

from flask.views import MethodView

from ..auditing import audit
from ..auth import current_principal
from ..extensions import commit, db_session
from ..schemas.identity import (
    DepartmentCreateSchema,
    DepartmentListSchema,
    DepartmentQueryArgsSchema,
    DepartmentSchema,
    DepartmentUpdateSchema,
)
from ..services import identity as svc
from .blueprint import Blueprint

blp = Blueprint(
    "departments",
    __name__,
    url_prefix="/api/v1/departments",
    description="Functional departments (fire safety, market supervision, …) that serve a region.",
)


@blp.route("")
class Departments(MethodView):
    @blp.requires("departments:read")
    @blp.arguments(DepartmentQueryArgsSchema, location="query")
    @blp.response(200, DepartmentListSchema)
    def get(self, args):
        """List departments serving your scope or the regions above it

        Returns the functional departments (fire safety, market supervision, …) that serve a region
        inside the caller's scope or one of the regions above it, i.e. the departments the caller
        can dispatch cases to, ordered by code; inactive ones are included with `is_active: false`.
        `region` narrows the list to departments serving that region's subtree. Needs
        `departments:read`. Not paged.
        """
        return {
            "items": svc.list_departments(
                db_session(), current_principal().scope, args.get("region")
            )
        }

    @blp.requires("departments:write")
    @blp.arguments(DepartmentCreateSchema)
    @blp.response(201, DepartmentSchema)
    def post(self, data):
        """Create a department serving a region in your scope

        Registers a functional department with a short unique `code` (letters, digits, `_.-`), a
        name and the region it serves; cases can then be dispatched to it. Needs
        `departments:write`; a region that does not exist or is outside the caller's scope is a 422,
        and a code already taken is a 409. Writes an audit row `department.create`.
        """
        dept = svc.create_department(db_session(), scope=current_principal().scope, **data)
        audit(
            "department.create", "department", dept.id, region_code=dept.region_code, summary=data
        )
        commit()
        return dept


@blp.route("/<id:dept_id>")
class DepartmentsById(MethodView):
    @blp.requires("departments:read")
    @blp.response(200, DepartmentSchema)
    def get(self, dept_id):
        """Get a department

        Returns the department with its code, name, region served and active flag. Needs
        `departments:read`; departments serving the caller's scope or a region above it are visible,
        any other answers 404 like one that does not exist.
        """
        return svc.get_department(db_session(), dept_id, current_principal().scope)

    @blp.requires("departments:write")
    @blp.arguments(DepartmentUpdateSchema)
    @blp.response(200, DepartmentSchema)
    def patch(self, data, dept_id):
        """Rename or deactivate a department

        Changes the department's `name` and/or `is_active`; a deactivated department keeps its cases
        and history. Only departments serving a region inside the caller's scope can be changed
        (`departments:write`): one serving a region above it, though readable, answers 404 here.
        Writes an audit row `department.update` with the fields sent.
        """
        dept = svc.update_department(db_session(), dept_id, data, scope=current_principal().scope)
        audit(
            "department.update", "department", dept.id, region_code=dept.region_code, summary=data
        )
        commit()
        return dept
