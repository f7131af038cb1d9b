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
        """List departments serving your scope or the regions above it"""
        return {
            "items": svc.list_departments(
                db_session(), current_principal().scope, args.get("region")
            )
        }

    @blp.requires("departments:write")
    @blp.arguments(DepartmentCreateSchema)
    @blp.response(201, DepartmentSchema)
    def post(self, data):
        """Create a department serving a region in your scope"""
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
        """Get a department"""
        return svc.get_department(db_session(), dept_id, current_principal().scope)

    @blp.requires("departments:write")
    @blp.arguments(DepartmentUpdateSchema)
    @blp.response(200, DepartmentSchema)
    def patch(self, data, dept_id):
        """Rename or deactivate a department"""
        dept = svc.update_department(db_session(), dept_id, data, scope=current_principal().scope)
        audit(
            "department.update", "department", dept.id, region_code=dept.region_code, summary=data
        )
        commit()
        return dept
