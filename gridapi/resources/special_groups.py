"""Special-group records (特殊人群) over HTTP: behind their own permission, every read audited."""

from __future__ import annotations

from flask.views import MethodView

from ..auditing import request_actor
from ..auth import current_principal
from ..db import writes
from ..extensions import commit, db_session, state
from ..limits import count_lookup
from ..schemas.register import (
    SpecialGroupArgsSchema,
    SpecialGroupCreateSchema,
    SpecialGroupListSchema,
    SpecialGroupSchema,
    SpecialGroupUpdateSchema,
)
from ..services import special_groups as svc
from ..services.audit import record
from .blueprint import NO_STORE, NO_STORE_HEADER, Blueprint
from .register import keys

blp = Blueprint(
    "special_groups",
    __name__,
    url_prefix="/api/v1/special-groups",
    description="Special-group records (特殊人群/重点人员). Readable only with "
    "`special_groups:read`; to everyone else they do not exist, in any list, search, count, "
    "export or join. Every record returned is audited.",
)


def _count_read() -> None:
    """Count a read of records (their notes in full) as the caller's unmasked read of
    personal data, as a resident's full values are (GRIDAPI_PERSON_LOOKUP_RATE): 429, and
    nothing read or audited, when the allowance is spent."""
    count_lookup(state().settings.person_lookup_rate, current_principal().actor_id)


def _audit(action: str, records, summary=None) -> None:  # type: ignore[no-untyped-def]
    """One audit row per record, in the request's transaction (committed with the answer)."""
    actor = request_actor()
    session = db_session()
    for r in records:
        record(
            session,
            actor,
            action,
            "special_group",
            r.id,
            summary={"person_id": r.person_id, **(summary or {})},
            region_code=r.region_code,
        )


@blp.route("")
class SpecialGroups(MethodView):
    @blp.requires("special_groups:read")
    @blp.arguments(SpecialGroupArgsSchema, location="query")
    @blp.response(200, SpecialGroupListSchema, headers=NO_STORE_HEADER)
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes
    def get(self, args):
        """List special-group records in your scope (each one returned is audited)

        Returns the special-group records (特殊人群/重点人员) of residents in the caller's grids and
        communities, ordered by id: type, attention level, responsible helper, status, notes
        (decrypted), dates and place, with the resident's name masked. Filter by `type`,
        `attention_level`, `status`, `person_id`, `helper_id`, `region` (subtree) or `grid`. Needs
        `special_groups:read`; each record returned writes an audit row `special_group.read`,
        committed with the answer, so ask only for the page you need. Pages of `limit` (default 50,
        at most 200): pass `next_cursor` back as `cursor`. Each page counts as one unmasked
        read against GRIDAPI_PERSON_LOOKUP_RATE (429 when spent), as a resident's full values do.
        """
        _count_read()
        session = db_session()
        args["after"] = args.pop("cursor", None)
        rows = svc.list_records(session, current_principal().scope, args)
        items = svc.record_views(session, rows, keys())
        _audit("special_group.read", rows)
        commit()
        next_cursor = items[-1]["id"] if rows.more else None
        return {"items": items, "next_cursor": next_cursor}, 200, NO_STORE

    @blp.requires("special_groups:write")
    @blp.arguments(SpecialGroupCreateSchema)
    @blp.response(201, SpecialGroupSchema, headers=NO_STORE_HEADER)
    def post(self, data):
        """Create a special-group record for a resident in your scope

        Opens a record of one `type` (`released_prisoner`, `community_correction`, `drug_user`,
        `severe_mental_disorder`, `at_risk_youth` or `petitioner`) for a registered resident, with
        an attention level (default `medium`), a responsible helper, status (default `active`),
        encrypted notes and dates (`started_on` defaults to today); it takes the resident's place
        and moves with them. Needs `special_groups:write`. A resident outside the caller's scope, or
        a helper who is not an active account in scope holding `special_groups:read`, is a 422; a
        second record of the same type for the resident is a 409. Writes an audit row
        `special_group.create` naming the fields given, never their values.
        """
        session = db_session()
        principal = current_principal()
        row = svc.create_record(
            session, data, scope=principal.scope, keys=keys(), actor=principal.actor_id
        )
        _audit("special_group.create", [row], {"fields": sorted(data)})
        view = svc.record_views(session, [row], keys())[0]
        commit()
        return view, 201, NO_STORE


@blp.route("/<id:record_id>")
class SpecialGroupById(MethodView):
    @blp.requires("special_groups:read")
    @blp.response(200, SpecialGroupSchema, headers=NO_STORE_HEADER)
    @blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes
    def get(self, record_id):
        """Get a special-group record (audited)

        Returns one record with its type, attention level, helper, status, decrypted notes, dates
        and place, the resident's name masked. Needs `special_groups:read`; every read writes an
        audit row `special_group.read` (who, when, which record). A record outside the caller's
        grids and communities answers 404 exactly like one that does not exist. Counted against
        GRIDAPI_PERSON_LOOKUP_RATE as an unmasked read (429 when spent), a 404 too.
        """
        _count_read()
        session = db_session()
        row = svc.get_record(session, record_id, current_principal().scope)
        view = svc.record_views(session, [row], keys())[0]
        _audit("special_group.read", [row])
        commit()
        return view, 200, NO_STORE

    @blp.requires("special_groups:write")
    @blp.arguments(SpecialGroupUpdateSchema)
    @blp.response(200, SpecialGroupSchema, headers=NO_STORE_HEADER)
    def patch(self, data, record_id):
        """Change a record's attention level, helper, status, notes or dates

        Changes only the fields sent; the type and the resident cannot be changed. A new helper must
        be an active account in scope holding `special_groups:read`, and `ended_on` must not be
        before `started_on` (422 otherwise). Needs `special_groups:write`; a record out of scope
        answers 404. The audit row `special_group.update` names the fields changed, never their
        values.
        """
        session = db_session()
        row, changed = svc.update_record(
            session, record_id, data, scope=current_principal().scope, keys=keys()
        )
        _audit("special_group.update", [row], {"fields": changed})
        view = svc.record_views(session, [row], keys())[0]
        commit()
        return view, 200, NO_STORE
