"""Case categories: the taxonomy reports are filed under, with limits and attributes."""

from __future__ import annotations

from typing import Any

from flask import request
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
from ..services.preconditions import etag
from .blueprint import Blueprint, etag_header, if_match_header

blp = Blueprint(
    "categories",
    __name__,
    url_prefix="/api/v1/categories",
    description="Two-level case categories (事件分类) with time limits in working "
    "hours or days, standards and extra attributes.",
)

_IF_MATCH_HEADER = if_match_header(
    "Optional, recommended: the ETag of your last read of the category (its GET, POST or PATCH "
    'answer, as it came; or `"<code>-<version>"` from its body). Sent, the change is made only '
    "if nobody changed the category since (412 otherwise, with the current ETag); not sent, "
    "the last writer wins.",
    example='"5301-3"',
)
_ETAG = etag_header(
    '`"<code>-<version>"`: the value to send as If-Match with a change (and as If-None-Match '
    "for a 304)."
)


def _tagged(category: Any) -> dict[str, str]:
    """The headers of an answer showing ``category``: its ETag names its version."""
    return {"ETag": etag(category)}


@blp.route("")
class Categories(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.arguments(CategoryQueryArgsSchema, location="query")
    @blp.response(200, CategoryListSchema)
    def get(self, args):
        """List categories, classes before their subclasses

        Returns the case categories in display order (each class followed by its subclasses), with
        their time limits for acceptance, handling and verification in working hours or days,
        default handler, intake and closure standards, flags and the extra attributes a report of
        that category carries (some required). Inactive categories are left out unless
        `include_inactive=true`. Any valid credential may call it: phone apps and hotline systems
        use it to build their category picker and report forms. Not paged.
        """
        return {
            "items": svc.list_categories(db_session(), include_inactive=args["include_inactive"])
        }

    @blp.requires("categories:write")
    @blp.arguments(CategoryCreateSchema)
    @blp.response(201, CategorySchema, headers=_ETAG)
    @blp.alt_response(409, response="CONFLICT", description="The code is used already.")
    def post(self, data):
        """Create a category (a class of 2 digits or a subclass of 4)

        Adds a class (2 digits, e.g. `53` 安全隐患) or a subclass (4 digits under an existing class,
        e.g. `5301`), with its time limits, default handler (`community`, `township`, `county` or
        `department:<code>`), standards, flags and attribute definitions. Needs `categories:write`.
        A code already used is a 409; a subclass whose class does not exist, a malformed handler or
        attribute definition is a 422. Writes an audit row `category.create`.
        """
        category = svc.create_category(db_session(), data)
        audit("category.create", "category", category.code, summary={"name": category.name})
        commit()
        return category, 201, _tagged(category)


@blp.route("/<digits:code>")
class CategoriesByCode(MethodView):
    @blp.requires(AUTHENTICATED)
    @blp.response(200, CategorySchema, headers=_ETAG)
    def get(self, code):
        """Get a category with its limits, standards and attribute schema

        Returns one category, active or not, with its acceptance, handling and verification limits
        (in working hours or days), its default handler, intake and closure standards, flags
        (`sensitive`, `urgent`, `auto_escalate`, `feedback_evidence`), duplicate radius and attribute definitions. Any
        valid credential may call it; a code that does not exist answers 404. The `ETag` header
        is the value to send as `If-Match` with a change.
        """
        category = svc.get_category(db_session(), code)
        return category, 200, _tagged(category)

    @blp.requires("categories:write")
    @blp.arguments(CategoryUpdateSchema)
    @blp.response(200, CategorySchema, headers=_ETAG)
    @blp.doc(parameters=[_IF_MATCH_HEADER])
    def patch(self, data, code):
        """Change a category's limits, standards, flags or attribute schema

        Changes only the fields sent; deadlines set from then on use the new limits. Set `is_active:
        false` to retire a category: it disappears from the default list, while cases already filed
        under it keep it. Needs `categories:write`; an unknown code is a 404 and a malformed handler
        or attribute definition a 422. Send the ETag of your last read as `If-Match` (optional,
        recommended): when another admin changed the category since, the change is refused with
        412 and the current ETag, rather than undoing theirs. Writes an audit row
        `category.update` with the fields sent.
        """
        category = svc.update_category(
            db_session(), code, data, if_match=request.headers.get("If-Match")
        )
        audit("category.update", "category", code, summary=data)
        commit()
        return category, 200, _tagged(category)
