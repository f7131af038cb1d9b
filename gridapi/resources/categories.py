"""Case categories: the taxonomy reports are filed under, with limits and attributes."""

from __future__ import annotations

from flask.views import MethodView

from ..auditing import audit
from ..auth import AUTHENTICATED
from ..extensions import commit, db_session
from ..schemas.categories import (
    CategoryCreateSchema,
    CategoryListSchema,
    CategoryQueryArgsSchema,
    CategorySchema,
    CategoryUpdateSchema,
)
from ..services import categories as svc
from .blueprint import Blueprint

blp = Blueprint(
    "categories",
    __name__,
    url_prefix="/api/v1/categories",
    description="Two-level case categories (事件分类) with time limits in working "
    "hours or days, standards and extra attributes.",
)


@blp.route("")
class Categories(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(CategoryQueryArgsSchema, location="query")
    @blp.response(200, CategoryListSchema)
    def get(self, args):
        """List categories, classes before their subclasses"""
        return {
            "items": svc.list_categories(db_session(), include_inactive=args["include_inactive"])
        }

    @blp.requires("categories:write")
    @blp.arguments(CategoryCreateSchema)
    @blp.response(201, CategorySchema)
    def post(self, data):
        """Create a category (a class of 2 digits or a subclass of 4)"""
        category = svc.create_category(db_session(), data)
        audit("category.create", "category", category.code, summary={"name": category.name})
        commit()
        return category


@blp.route("/<digits:code>")
class CategoriesByCode(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.response(200, CategorySchema)
    def get(self, code):
        """Get a category with its limits, standards and attribute schema"""
        return svc.get_category(db_session(), code)

    @blp.requires("categories:write")
    @blp.arguments(CategoryUpdateSchema)
    @blp.response(200, CategorySchema)
    def patch(self, data, code):
        """Change a category's limits, standards, flags or attribute schema"""
        category = svc.update_category(db_session(), code, data)
        audit("category.update", "category", code, summary=data)
        commit()
        return category
