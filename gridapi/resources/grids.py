"""Grid versions (import, report, activate) and grids (list, get, GeoJSON export)."""

from __future__ import annotations

import hashlib

from flask import Response, request
from flask.views import MethodView
from sqlalchemy import text

from ..auditing import audit
from ..auth import current_principal
from ..codes import subtree_prefix
from ..extensions import commit, db_session, state
from ..phone import NOT_MODIFIED_REF, STREAMED
from ..schemas.grids import (
    ActivateSchema,
    FeatureCollectionSchema,
    GridByCodeArgsSchema,
    GridDetailSchema,
    GridExportArgsSchema,
    GridPageSchema,
    GridQueryArgsSchema,
    GridVersionDetailSchema,
    GridVersionImportArgsSchema,
    GridVersionListSchema,
    GridVersionQueryArgsSchema,
)
from ..services import grids as svc
from .blueprint import Blueprint

versions_blp = Blueprint(
    "grid-versions",
    __name__,
    url_prefix="/api/v1/grid-versions",
    description="A region's grid set is loaded as a version: import → validation report → "
    "activate. Earlier versions are kept.",
)
# The GeoJSON of grids is streamed (no `fields`), with an ETag of its own: 304 on a match.
_STREAMED_GEOJSON = {**STREAMED, "responses": {"304": NOT_MODIFIED_REF}}

blp = Blueprint(
    "grids",
    __name__,
    url_prefix="/api/v1/grids",
    description="The grids (网格) in service, or of a given version.",
)


def _scope():  # type: ignore[no-untyped-def]
    return current_principal().scope


@versions_blp.route("")
class GridVersions(MethodView):
    @versions_blp.requires("grids:read")
    @versions_blp.arguments(GridVersionQueryArgsSchema, location="query")
    @versions_blp.response(200, GridVersionListSchema)
    def get(self, args):
        """List grid versions, newest first

        Returns the grid versions of regions inside the caller's scope, newest first, each with its
        region, status (`draft`, `active` or `retired`), label, source and grid and error counts;
        the validation report itself is on the single version. Filter by `region` (its subtree) and
        `status`. Needs `grids:read`. Paged by id: pass `next` back as `after` to get the older
        versions.
        """
        limit = args.pop("limit")
        items = svc.list_versions(db_session(), limit=limit + 1, scope=_scope(), **args)
        return {"items": items[:limit], "next": items[limit - 1].id if len(items) > limit else None}

    @versions_blp.requires("grids:write")
    @versions_blp.arguments(GridVersionImportArgsSchema, location="query")
    @versions_blp.arguments(FeatureCollectionSchema)
    @versions_blp.response(201, GridVersionDetailSchema)
    def post(self, args, collection):
        """Import a grid set as a draft version

        The body is a GeoJSON FeatureCollection (WGS-84/CGCS2000 lon/lat) whose features carry
        `code` (15 digits), `name` and optionally `type` (basic|dedicated). The answer is the
        draft version with its validation report; activate it to put it in service. The
        version is of `region`, by default the deepest region containing every grid (a file of
        one community is that community's version); activating it replaces the region's whole
        grid set, so every community of the region that the file leaves without a grid is an
        error in the report (`community_without_grids`). A grid whose community is not in the
        administrative tree is reported (`unknown_community`) and left out: it never goes into
        service. A file with no grid of a community of the tree is refused (422).
        """
        version = svc.import_grid_version(
            db_session(),
            collection,
            region_code=args.get("region"),
            label=args.get("label"),
            source=args.get("source"),
            tolerance_m2=state().settings.grid_tolerance_m2,
            scope=_scope(),
        )
        audit(
            "grid_version.import",
            "grid_version",
            version.id,
            region_code=version.region_code,
            summary={
                "grids": version.grid_count,
                "errors": version.error_count,
                "label": version.label,
                "source": version.source,
            },
        )
        commit()
        return version


@versions_blp.route("/<id:version_id>")
class GridVersionsById(MethodView):
    @versions_blp.requires("grids:read")
    @versions_blp.response(200, GridVersionDetailSchema)
    def get(self, version_id):
        """Get a grid version with its validation report

        Returns the version with its validation report: per grid the invalid geometries, the
        overlaps with other grids and the parts outside the community (in m²), and per community the
        gaps the grids leave, including the communities of the version's region it leaves without
        any grid. Read it after an import to decide whether to fix the file or to
        activate. Needs `grids:read`; a version of a region outside the caller's scope answers 404
        like one that does not exist.
        """
        return svc.get_version(db_session(), version_id, scope=_scope())


@versions_blp.route("/<id:version_id>/activate")
class GridVersionActivation(MethodView):
    @versions_blp.requires("grids:write")
    @versions_blp.arguments(ActivateSchema, required=False)
    @versions_blp.response(200, GridVersionDetailSchema)
    @versions_blp.alt_response(
        409,
        response="CONFLICT",
        description="The version's report has errors and `force` is not true: "
        "`errors.report` summarises them.",
    )
    def post(self, data, version_id):
        """Activate a grid version

        Its grids go into service and routing uses them at once in every server process. It
        retires the active versions of its region and of regions inside it; an active
        version activated again takes back the grids such a version replaced (a rollback).
        An older version activated again also retires the version that replaced it, if still
        active, even one of a larger region, and brings back what that one had retired outside
        this version's region, so routing is what it was before; a version of a region beyond
        the caller's scope stays active outside this version's region instead. Grids of a community that is
        not in the administrative tree are never put in service. A version whose report has
        errors is refused (409) unless `force` is true.
        """
        force = bool((data or {}).get("force"))
        version = svc.activate_version(db_session(), version_id, force=force, scope=_scope())
        audit(
            "grid_version.activate",
            "grid_version",
            version.id,
            region_code=version.region_code,
            summary={"force": force},
        )
        commit()
        state().routing.invalidate()
        return version


@versions_blp.route("/<id:version_id>/grids")
class GridVersionGrids(MethodView):
    @versions_blp.requires("grids:read")
    @versions_blp.response(200, {"type": "object"}, content_type="application/geo+json")
    @versions_blp.doc(**_STREAMED_GEOJSON)
    def get(self, version_id):
        """Get a version's grids as a GeoJSON FeatureCollection

        Streams every grid of the version, draft, active or retired, ordered by code, as
        `application/geo+json` in WGS-84 with the properties `code`, `name`, `type`,
        `community_code` and `version_id`, so a draft can be reviewed on a map before activation.
        Needs `grids:read`; only grids inside the caller's scope are included: a township office or
        a grid worker reads its own grids of the county's version. A version of which the caller
        sees neither the region nor any grid answers 404. The answer carries an ETag; send it as
        `If-None-Match` to get 304 while nothing has changed.
        """
        svc.check_version_seen(db_session(), version_id, scope=_scope())
        return _geojson_response(version_id=version_id)


@blp.route("")
class Grids(MethodView):
    @blp.requires("grids:read")
    @blp.arguments(GridQueryArgsSchema, location="query")
    @blp.response(200, GridPageSchema)
    def get(self, args):
        """List grids in service (or of a version), by code

        Returns the grids in service inside the caller's scope, ordered by code, each with its name,
        type, community, version and area (no geometry); with `version` the grids of that version
        are listed instead (e.g. a draft being checked). Filter by `region` (subtree), `community`,
        `type` and part of the name (`q`). Needs `grids:read`. Paged by code: pass `next` back as
        `after`. Use `/api/v1/grids/export` for geometries in bulk.
        """
        limit = args.pop("limit")
        filters = {
            "region": args.get("region"),
            "community": args.get("community"),
            "grid_type": args.get("type"),
            "q": args.get("q"),
            "version_id": args.get("version"),
            "scope": _scope(),
        }
        items = svc.list_grids(db_session(), after=args.get("after"), limit=limit + 1, **filters)
        return {
            "items": items[:limit],
            "next": items[limit - 1].code if len(items) > limit else None,
        }


@blp.route("/export")
class GridsExport(MethodView):
    @blp.requires("grids:read")
    @blp.arguments(GridExportArgsSchema, location="query")
    @blp.response(200, {"type": "object"}, content_type="application/geo+json")
    @blp.doc(**_STREAMED_GEOJSON)
    @blp.alt_response(
        404,
        response="NOT_FOUND",
        description="The `version` does not exist or is outside your scope (the two look "
        "the same).",
    )
    def get(self, args):
        """Export grids in service as GeoJSON (for the phones' offline maps)

        A region's subtree, or every grid in service; with `version` the grids of that
        version instead. Properties: `code`, `name`, `type`, `community_code`, `version_id`.
        Streamed. A `version` that does not exist, or of which the caller sees nothing,
        answers 404 (no empty collection, whose ETag would still match once it exists).
        """
        if args.get("version") is not None:
            svc.check_version_seen(db_session(), args["version"], scope=_scope())
        return _geojson_response(region=args.get("region"), version_id=args.get("version"))


@blp.route("/<digits:code>")
class GridsByCode(MethodView):
    @blp.requires("grids:read")
    @blp.arguments(GridByCodeArgsSchema, location="query")
    @blp.response(200, GridDetailSchema)
    def get(self, args, code):
        """Get a grid in service (or of a version) by its 15-digit code, with its geometry

        Returns the grid currently in service with this code, with its name, type, community,
        version and boundary in WGS-84; pass `version` to read the grid of that version instead,
        e.g. of a draft or of the version a case was routed with. Needs `grids:read`. A code with no
        grid in service (or none in that version), or a grid outside the caller's scope, answers
        404.
        """
        return svc.get_grid(db_session(), code, args.get("version"), scope=_scope())


def _geojson_response(**filters) -> Response:  # type: ignore[no-untyped-def]
    # The body is produced after the view returns, so it gets a session of its own that the
    # generator closes, rather than the request's (already torn down by then).
    sessions = state().sessions
    filters["scope"] = _scope()
    if filters.get("region"):
        # An ill-formed code is refused now (422): once streaming, only a cut body is left.
        subtree_prefix(filters["region"])
    # The grids in service change only with the routing generation (activations, region
    # edits): a phone whose copy is current gets 304 without the body being built.
    generation = db_session().scalar(
        text("SELECT generation FROM index_generations WHERE name = 'grids'")
    )
    scope = filters["scope"]
    key = (
        generation,
        filters.get("region"),
        filters.get("version_id"),
        scope.unrestricted,
        scope.prefixes,
        sorted(scope.grid_codes),
    )
    tag = hashlib.blake2b(repr(key).encode(), digest_size=12).hexdigest()
    if request.if_none_match.contains(tag):
        response = Response(status=304)
        response.set_etag(tag)
        return response

    def chunks():  # type: ignore[no-untyped-def]
        with sessions() as session:
            yield from svc.iter_geojson(session, **filters)

    response = Response(chunks(), mimetype="application/geo+json")
    response.set_etag(tag)
    response.headers["Cache-Control"] = "private, no-cache"
    return response
