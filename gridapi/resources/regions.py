"""The administrative tree over HTTP."""

from __future__ import annotations

from flask.views import MethodView

from ..errors import Unprocessable
from ..extensions import commit, db_session, state
from ..schemas.regions import (
    OnDateArgsSchema,
    RegionCreateSchema,
    RegionDetailSchema,
    RegionImportResultSchema,
    RegionImportRowSchema,
    RegionListSchema,
    RegionPageSchema,
    RegionQueryArgsSchema,
    RegionUpdateSchema,
    SubtreeArgsSchema,
)
from ..services import regions as svc
from .blueprint import Blueprint

blp = Blueprint(
    "regions",
    __name__,
    url_prefix="/api/v1/regions",
    description="The administrative tree: province → city → county → township → "
    "village/community, keyed by the 12-digit statistical code.",
)


@blp.route("")
class Regions(MethodView):
    @blp.arguments(RegionQueryArgsSchema, location="query")
    @blp.response(200, RegionPageSchema)
    def get(self, args):
        """List regions

        Filter by level, direct parent (`parent`), subtree (`within`), part of the name (`q`)
        and validity day (`on`). Ordered by code; keyset pagination with `after`.
        """
        limit = args.pop("limit")
        items = svc.list_regions(db_session(), limit=limit + 1, **args)
        return {
            "items": items[:limit],
            "next": items[limit - 1].code if len(items) > limit else None,
        }

    @blp.arguments(RegionCreateSchema)
    @blp.response(201, RegionDetailSchema)
    def post(self, data):
        """Create a region

        The level and the parent are derived from the code; when given they must match.
        Cities without counties (东莞 4419) and province-administered county-level cities are
        accepted.
        """
        region = svc.create_region(db_session(), **data)
        commit()
        state().routing.invalidate()
        return region


@blp.route("/import")
class RegionsImport(MethodView):
    @blp.arguments(RegionImportRowSchema(many=True))
    @blp.response(200, RegionImportResultSchema)
    def post(self, rows):
        """Import regions in bulk

        A JSON list of `{code, name[, level][, boundary]}`. Parents are derived from the
        codes; ancestors must exist or be in the same list. All or nothing: when any row is
        wrong nothing is written and the 422 lists every row's error.
        """
        result = svc.import_regions(db_session(), rows)
        if result.errors:
            raise Unprocessable(
                f"{len(result.errors)} row(s) have errors; nothing was imported.",
                errors={"json": {str(e["row"]): {"code": [e["message"]]} for e in result.errors}},
            )
        commit()
        state().routing.invalidate()
        return result.as_dict()


@blp.route("/<string:code>")
class RegionsByCode(MethodView):
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionDetailSchema)
    def get(self, args, code):
        """Get a region by code, with its boundary"""
        return svc.get_region(db_session(), code, args.get("on"))

    @blp.arguments(RegionUpdateSchema)
    @blp.response(200, RegionDetailSchema)
    def patch(self, data, code):
        """Update a region

        Corrects the current row in place, or with `effective_from` starts a new period so
        the old name and boundary stay queryable with `on`.
        """
        region = svc.update_region(db_session(), code, data)
        commit()
        state().routing.invalidate()
        return region


@blp.route("/<string:code>/children")
class RegionChildren(MethodView):
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List the direct children of a region"""
        return {"items": svc.children(db_session(), code, args.get("on"))}


@blp.route("/<string:code>/ancestors")
class RegionAncestors(MethodView):
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List the ancestors of a region, parent first, up to the province"""
        return {"items": svc.ancestors(db_session(), code, args.get("on"))}


@blp.route("/<string:code>/subtree")
class RegionSubtree(MethodView):
    @blp.arguments(SubtreeArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List a region and everything under it, by code"""
        return {"items": svc.subtree(db_session(), code, args.get("on"), args.get("max_level"))}
