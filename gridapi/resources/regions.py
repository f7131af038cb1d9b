"""The administrative tree over HTTP."""

from __future__ import annotations

from flask import request
from flask.views import MethodView

from ..auditing import audit
from ..auth import current_principal
from ..codes import common_region
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
    RegionPeriodArgsSchema,
    RegionQueryArgsSchema,
    RegionUpdateSchema,
    SubtreeArgsSchema,
)
from ..services import regions as svc
from .blueprint import Blueprint, etag_header, if_match_header

blp = Blueprint(
    "regions",
    __name__,
    url_prefix="/api/v1/regions",
    description="The administrative tree: province → city → county → township → "
    "village/community, keyed by the 12-digit statistical code.",
)


def _scope():  # type: ignore[no-untyped-def]
    return current_principal().scope


_IF_MATCH_HEADER = if_match_header(
    "The ETag of the last read of the region (its GET or PATCH answer, as it came; with `on`, "
    "of that day's period). Sent, the change is made only if nobody changed the period since "
    "(412 otherwise, with the current ETag); not sent, the last writer wins.",
    example='"42-5f1c0a9e2b7d4c18"',
)
_ETAG = etag_header(
    '`"<id>-<digest>"` of the period answered: the value to send as If-Match with a change of it.'
)


def _common_region(rows: list[dict]) -> str | None:
    """Return the deepest code that is an ancestor-or-self of every imported row."""
    return common_region(str(r.get("code")) for r in rows if r.get("code"))


@blp.route("")
class Regions(MethodView):
    @blp.requires("regions:read")
    @blp.arguments(RegionQueryArgsSchema, location="query")
    @blp.response(200, RegionPageSchema)
    def get(self, args):
        """List regions

        Filter by level, direct parent (`parent`), subtree (`within`), part of the name (`q`)
        and validity day (`on`). Ordered by code; keyset pagination with `after`.
        """
        limit = args.pop("limit")
        items = svc.list_regions(db_session(), limit=limit + 1, scope=_scope(), **args)
        return {
            "items": items[:limit],
            "next": items[limit - 1].code if len(items) > limit else None,
        }

    @blp.requires("regions:write")
    @blp.arguments(RegionCreateSchema)
    @blp.response(201, RegionDetailSchema)
    def post(self, data):
        """Create a region

        The level and the parent are derived from the code; when given they must match.
        Cities without counties (东莞 4419) and province-administered county-level cities are
        accepted. The parent must be valid today, or, for a region planned to start later
        (`valid_from`), on that day: a planned township's communities are planned with it.
        """
        region = svc.create_region(db_session(), scope=_scope(), **data)
        audit(
            "region.create",
            "region",
            region.code,
            region_code=region.code,
            summary={k: v for k, v in data.items() if k != "boundary"},
        )
        commit()
        state().routing.invalidate()
        return region


@blp.route("/import")
class RegionsImport(MethodView):
    @blp.requires("regions:write")
    @blp.arguments(RegionImportRowSchema(many=True))
    @blp.response(200, RegionImportResultSchema)
    def post(self, rows):
        """Import regions in bulk

        A JSON list of `{code, name[, level][, boundary]}`. Parents are derived from the
        codes; ancestors must exist or be in the same list. A row renames the region of its
        code valid today, or creates one valid from the beginning; a code with periods but
        none valid today (planned to start later, or ended) is the row's error, naming that
        period. All or nothing: when any row is wrong nothing is written and the 422 lists
        every row's error.
        """
        result = svc.import_regions(db_session(), rows, scope=_scope())
        if result.errors:
            raise Unprocessable(
                f"{len(result.errors)} row(s) have errors; nothing was imported.",
                # Under the field at fault: a bad name or boundary was filed under "code".
                errors={
                    "json": {
                        str(e["row"]): {e.get("field", "code"): [e["message"]]}
                        for e in result.errors
                    }
                },
            )
        audit(
            "region.import",
            "region",
            None,
            region_code=_common_region(rows),
            summary={
                **result.as_dict(),
                "created_codes": result.created[:50],
                "updated_codes": result.updated[:50],
            },
        )
        commit()
        state().routing.invalidate()
        return result.as_dict()


@blp.route("/<digits:code>")
class RegionsByCode(MethodView):
    @blp.requires("regions:read")
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionDetailSchema, headers=_ETAG)
    def get(self, args, code):
        """Get a region by code, with its boundary

        Returns the region's row valid on `on` (default today), with its level, parent, validity
        period and boundary. Needs `regions:read`; a caller sees the regions inside their scope and
        the ancestors of their scope, so a township officer can read their county and city too. A
        code that does not exist on that day, or lies outside what the caller sees, answers 404 in
        both cases alike. The `ETag` is the one to send as `If-Match` with a change.
        """
        region = svc.get_region(db_session(), code, args.get("on"), scope=_scope())
        return region, 200, {"ETag": svc.region_etag(region)}

    @blp.requires("regions:write")
    @blp.arguments(RegionPeriodArgsSchema, location="query")
    @blp.arguments(RegionUpdateSchema)
    @blp.response(200, RegionDetailSchema, headers=_ETAG)
    @blp.doc(parameters=[_IF_MATCH_HEADER])
    @blp.alt_response(
        409,
        response="CONFLICT",
        description="The periods of the code would overlap; or the region would no longer "
        "be current while grids in it are in service (retire or move them first).",
    )
    def patch(self, args, data, code):
        """Update a region

        Corrects the current row in place, or with `effective_from` starts a new period so
        the old name and boundary stay queryable with `on`. With `on` (today or later) the
        period valid that day is the one changed: a period planned to start later is
        corrected before it starts. A region whose grids are in service cannot end today or
        earlier (409 naming them): every grid belongs to a community of the tree; a later
        end is taken. `If-Match` is optional: sent, it must be the period's current ETag
        (412 otherwise); not sent, the change is made as before.
        """
        summary = {k: v for k, v in data.items() if k != "boundary"}
        if "boundary" in data:
            summary["boundary_changed"] = True
        region = svc.update_region(
            db_session(),
            code,
            data,
            scope=_scope(),
            on=args.get("on"),
            if_match=request.headers.get("If-Match"),
        )
        audit("region.update", "region", code, region_code=code, summary=summary)
        commit()
        state().routing.invalidate()
        return region, 200, {"ETag": svc.region_etag(region)}


@blp.route("/<digits:code>/children")
class RegionChildren(MethodView):
    @blp.requires("regions:read")
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List the direct children of a region

        Returns the regions whose parent is `code`, valid on `on` (default today), ordered by code
        and not paged. Needs `regions:read`. Only children the caller sees are listed: asking for
        the children of the caller's city lists only the counties inside their scope. A region that
        does not exist or that the caller does not see answers 404.
        """
        return {"items": svc.children(db_session(), code, args.get("on"), scope=_scope())}


@blp.route("/<digits:code>/ancestors")
class RegionAncestors(MethodView):
    @blp.requires("regions:read")
    @blp.arguments(OnDateArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List the ancestors of a region, parent first, up to the province

        Returns the chain from the region's parent up to its province, as valid on `on` (default
        today); the region itself is not included and a province answers an empty list. Needs
        `regions:read`, and the region itself must be one the caller sees (else 404); its ancestors
        are then always listed, so a client can show the full administrative path (省 › 市 › 县 › 乡镇)
        of anything in scope.
        """
        return {"items": svc.ancestors(db_session(), code, args.get("on"), scope=_scope())}


@blp.route("/<digits:code>/subtree")
class RegionSubtree(MethodView):
    @blp.requires("regions:read")
    @blp.arguments(SubtreeArgsSchema, location="query")
    @blp.response(200, RegionListSchema)
    def get(self, args, code):
        """List a region and everything under it, by code

        Returns the region and every region below it, valid on `on` (default today), ordered by
        code, so a client can build the whole tree under a county in one call; `max_level` stops at
        a level (e.g. `township` leaves out villages and communities). Not paged. Needs
        `regions:read`; regions outside the caller's scope are left out, and a region the caller
        does not see answers 404.
        """
        return {
            "items": svc.subtree(
                db_session(), code, args.get("on"), args.get("max_level"), scope=_scope()
            )
        }
