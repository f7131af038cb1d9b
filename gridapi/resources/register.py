"""The register over HTTP: houses, households, residents (masked by default) and visits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, request
from flask.views import MethodView
from sqlalchemy.exc import IntegrityError

from ..auditing import audit, request_actor
from ..auth import Unauthorized, current_principal
from ..db import writes, writes_when
from ..errors import Conflict, DomainError, Unprocessable
from ..extensions import commit, db_session, state
from ..geo.crs import no_fix
from ..geo.shapes import geojson_point
from ..jsonio import dumps_bytes
from ..limits import count_lookup, require_lookup_left
from ..models import AuditEntry, House, Household
from ..models.register import ERASE_REASONS
from ..phone import DATE_HEADER
from ..purposes import coded_summary, purpose_summary
from ..schemas.register import (
    AccessExportSchema,
    EraseArgsSchema,
    HouseArgsSchema,
    HouseCreateSchema,
    HouseholdArgsSchema,
    HouseholdCreateSchema,
    HouseholdListSchema,
    HouseholdSchema,
    HouseholdUpdateSchema,
    HouseListSchema,
    HouseSchema,
    HouseUpdateSchema,
    PersonArgsSchema,
    PersonCreateSchema,
    PersonListSchema,
    PersonSchema,
    PersonUpdateSchema,
    PurposeArgsSchema,
    SensitivePersonSchema,
    VisitArgsSchema,
    VisitCreateSchema,
    VisitListSchema,
    VisitSchema,
)
from ..services import cases as cases_svc
from ..services import idempotency, intake
from ..services import register as svc
from ..services.audit import record
from ..services.cursors import Page
from ..services.preconditions import etag
from .blueprint import (
    IDEMPOTENCY_HEADER,
    NO_STORE,
    NO_STORE_HEADER,
    Blueprint,
    etag_header,
    if_match_header,
    routing_snapshot,
)
from .retries import Keyed, replayed

houses_blp = Blueprint(
    "houses",
    __name__,
    url_prefix="/api/v1/houses",
    description="Houses and building units (实有房屋), routed to their grid by location.",
)
households_blp = Blueprint(
    "households",
    __name__,
    url_prefix="/api/v1/households",
    description="Households (户): number, house, type, head and members (masked).",
)
persons_blp = Blueprint(
    "persons",
    __name__,
    url_prefix="/api/v1/persons",
    description="Residents (实有人口). ID and phone numbers are encrypted at rest and "
    "answered masked; full values need `persons:unmask` and a stated purpose, and are audited.",
)
visits_blp = Blueprint(
    "visits",
    __name__,
    url_prefix="/api/v1/visits",
    description="Home visits (走访) by grid workers, optionally raising a case.",
)


def keys() -> svc.Keys:
    st = state()
    return svc.Keys(st.cipher, st.phone_key)


houses_blp.takes_routing_snapshot()
visits_blp.takes_routing_snapshot()


def _page(items: list[Any], rows: Page) -> int | None:
    """Return the next cursor of a page: its last id when more rows follow, else None."""
    return items[-1]["id"] if rows.more else None


def _args(args: dict[str, Any]) -> dict[str, Any]:
    args["after"] = args.pop("cursor", None)
    return args


def _audit_changes(noun: str, obj: Any, changed: list[str]) -> None:
    """Write ``<noun>.update`` naming the fields that changed (never their values); a PATCH
    that changed nothing writes no row."""
    if changed:
        audit(
            f"{noun}.update",
            noun,
            obj.id,
            summary={"fields": changed},
            region_code=obj.region_code,
        )


def _actor() -> str:
    return current_principal().actor_id


def lookup_left() -> None:
    """Refuse (429) a request about to look an ID number or a household number (户号) up
    in the register once the caller's lookup allowance is spent, hit or miss (a hit's 409
    counts; a miss counts nothing, but past the allowance is refused too, else the 429
    itself told that the number is registered)."""
    require_lookup_left(state().settings.person_lookup_rate, _actor())


_IF_MATCH_HEADER = if_match_header(
    "The ETag of the last read (of this object's GET, POST or PATCH answer, as it came; or "
    '`"<id>-<version>"` from its body). Sent, the change is made only if nobody changed the '
    "object since (412 otherwise, with the current ETag); not sent, the last writer wins.",
    example='"42-3-5f1c0a9e2b7d"',
)
_ETAG = etag_header(
    '`"<id>-<version>-<digest>"`: the value to send as If-Match with a change (and as '
    "If-None-Match for a 304)."
)


def _tagged(obj: Any, view: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """The answer and its headers: the ETag names the object's version and the answer."""
    return view, {"ETag": etag(obj, view)}


# --- houses -----------------------------------------------------------------------------------


@houses_blp.route("")
class Houses(MethodView):
    @houses_blp.requires("persons:read")
    @houses_blp.arguments(HouseArgsSchema, location="query")
    @houses_blp.response(200, HouseListSchema)
    def get(self, args):
        """List houses in your scope (by address text, use, region or grid)

        Returns the houses (实有房屋) in the caller's grids and communities, ordered by id, each with
        its address, use (自住, 出租, 空置, 经营), point, grid, community and how it was placed. Filter by
        part of the `address`, `use`, `region` (subtree) or `grid`. Needs `persons:read`. Pages of
        `limit` (default 50, at most 200): pass `next_cursor` back as `cursor`.
        """
        rows = svc.list_houses(db_session(), current_principal().scope, _args(args))
        items = [svc.house_view(h) for h in rows]
        return {"items": items, "next_cursor": _page(items, rows)}

    @houses_blp.requires("persons:write")
    @houses_blp.arguments(HouseCreateSchema)
    @houses_blp.response(201, HouseSchema, headers=_ETAG)
    @houses_blp.alt_response(
        409,
        response="CONFLICT",
        description="A house with the address is registered at the place (community and "
        "grid) already; the message and `errors.json.address` name it.",
    )
    def post(self, data):
        """Register a house: its location is routed to a grid like a case (or give a grid)

        Creates a house at a `location` (a GeoJSON point in the system named by `crs`, routed to the
        grid covering it, else to the smallest region holding it), in a `grid`, or in a `region`; a
        `grid` given with a point wins over the routed grid, for houses on a boundary. Needs
        `persons:write`. A place outside the caller's scope, a grid not in service there, or no
        place at all is a 422 naming the field. A house is its address at its place: one
        registered there already (through the API or an import) is a 409 naming it. Writes an
        audit row `house.create`.
        """
        session = db_session()
        house = svc.create_house(
            session,
            data,
            scope=current_principal().scope,
            snapshot=routing_snapshot(),
            actor=_actor(),
        )
        audit(
            "house.create",
            "house",
            house.id,
            summary={"grid": house.grid_code, "use": house.use},
            region_code=house.region_code,
        )
        commit()
        body, headers = _tagged(house, svc.house_view(house))
        return body, 201, headers


@houses_blp.route("/<id:house_id>")
class HouseById(MethodView):
    @houses_blp.requires("persons:read")
    @houses_blp.response(200, HouseSchema, headers=_ETAG)
    def get(self, house_id):
        """Get a house

        Returns the house with its address, use, point, grid, community, county and how it was
        placed. Needs `persons:read`; a house outside the caller's grids and communities answers 404
        exactly like one that does not exist.
        """
        house = svc.get_house(db_session(), house_id, current_principal().scope)
        body, headers = _tagged(house, svc.house_view(house))
        return body, 200, headers

    @houses_blp.requires("persons:write")
    @houses_blp.arguments(HouseUpdateSchema)
    @houses_blp.response(200, HouseSchema, headers=_ETAG)
    @houses_blp.doc(parameters=[_IF_MATCH_HEADER])
    @houses_blp.alt_response(
        409,
        response="CONFLICT",
        description="Another house has the new address at the new place; the message and "
        "`errors.json.address` name it.",
    )
    def patch(self, data, house_id):
        """Change a house's address, use or place (its households and residents move along)

        Changes only the fields sent. A new `location`, `grid` or `region` places the house again,
        as on registration; when its grid or community changes, its households, their residents,
        those residents' special-group records and the visits to them move with it, so they stay
        visible to the grid that now holds them, and to it only. A house stays in its county
        (numbers are unique per county): a place in another county is a 422, as is one outside
        the caller's scope. Needs `persons:write`; a house out of scope answers 404. The audit
        row `house.update` names the fields changed.
        """
        session = db_session()
        house, changed = svc.update_house(
            session,
            house_id,
            data,
            scope=current_principal().scope,
            snapshot=routing_snapshot(),
            if_match=request.headers.get("If-Match"),
        )
        _audit_changes("house", house, changed)
        commit()
        body, headers = _tagged(house, svc.house_view(house))
        return body, 200, headers


# --- households -------------------------------------------------------------------------------


def household_body(session, household) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    return households_body(session, [household])[0]


def households_body(session, households) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    """Households with their members (masked), the members read in one query."""
    k = keys()
    by_household = svc.members_of(session, [h.id for h in households])
    return [
        svc.household_view(h, [svc.person_view(p, k) for p in by_household[h.id]])
        for h in households
    ]


households_blp.takes_routing_snapshot()


@households_blp.route("")
class Households(MethodView):
    @households_blp.requires("persons:read")
    @households_blp.arguments(HouseholdArgsSchema, location="query")
    @households_blp.response(200, HouseholdListSchema)
    def get(self, args):
        """List households in your scope, with their members (masked)

        Returns the households (户) in the caller's grids and communities, ordered by id, each with
        its number (户号), type (户籍户, 流动户, 租住户), house, place and members with masked names and
        numbers. Filter by `house_id`, exact `number`, `type`, `region` (subtree) or `grid`. Needs
        `persons:read`. Pages of `limit` (default 50, at most 200): pass `next_cursor` back as
        `cursor`.
        """
        session = db_session()
        rows = svc.list_households(session, current_principal().scope, _args(args))
        items = households_body(session, rows)
        return {"items": items, "next_cursor": _page(items, rows)}

    @households_blp.requires("persons:write")
    @households_blp.arguments(HouseholdCreateSchema)
    @households_blp.response(201, HouseholdSchema, headers=_ETAG)
    @households_blp.alt_response(
        409, response="CONFLICT", description="The county has a household with the number."
    )
    @households_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data):
        """Register a household in a house (or at a place, a grid or a region)

        Creates a household with its number (户号), unique in the county, and type; it takes the place
        of its `house_id`, or else of a `location`, `grid` or `region` as a house does. Members are
        added by registering residents with this `household_id`. Needs `persons:write`. A number
        already registered in the county is a 409, counted as a lookup against
        GRIDAPI_PERSON_LOOKUP_RATE, as a duplicate ID number is (a new number counts nothing);
        once the allowance is spent, every create is a 429 before the number is looked up,
        registered or not. A house or place outside the caller's scope is a 422. Writes an
        audit row `household.create`.
        """
        session = db_session()
        try:
            household = svc.create_household(
                session,
                data,
                scope=current_principal().scope,
                snapshot=routing_snapshot(),
                actor=_actor(),
                before_lookup=lookup_left,
            )
        except svc.DuplicateHousehold:
            # The 409 tells that the number exists somewhere in the county.
            session.rollback()
            count_lookup(state().settings.person_lookup_rate, _actor())
            raise
        audit(
            "household.create",
            "household",
            household.id,
            summary={"house_id": household.house_id, "type": household.type},
            region_code=household.region_code,
        )
        commit()
        body, headers = _tagged(household, household_body(session, household))
        return body, 201, headers


@households_blp.route("/<id:household_id>")
class HouseholdById(MethodView):
    @households_blp.requires("persons:read")
    @households_blp.response(200, HouseholdSchema, headers=_ETAG)
    def get(self, household_id):
        """Get a household with its head and members (masked)

        Returns the household with its number, type, house, place and members, names and numbers
        masked (张*, 138****5678); full values need `GET /api/v1/persons/{id}/sensitive` with a
        stated purpose. Needs `persons:read`; a household outside the caller's scope answers 404
        like one that does not exist.
        """
        session = db_session()
        household = svc.get_household(session, household_id, current_principal().scope)
        body, headers = _tagged(household, household_body(session, household))
        return body, 200, headers

    @households_blp.requires("persons:write")
    @households_blp.arguments(HouseholdUpdateSchema)
    @households_blp.response(200, HouseholdSchema, headers=_ETAG)
    @households_blp.doc(parameters=[_IF_MATCH_HEADER])
    def patch(self, data, household_id):
        """Change a household's type or house (its members move along)

        Changes the `type` and/or the `house_id`. Moving to another house gives the household and
        its members that house's grid and community (the members' special-group records and the
        visits to the household and its members follow);
        `house_id: null` detaches it from its house and leaves its place as it is. The new house
        must be in the caller's scope and in the same county (else 422). Needs `persons:write`; a
        household out of scope answers 404. The audit row `household.update` names the fields
        changed.
        """
        session = db_session()
        household, changed = svc.update_household(
            session,
            household_id,
            data,
            scope=current_principal().scope,
            if_match=request.headers.get("If-Match"),
        )
        _audit_changes("household", household, changed)
        commit()
        body, headers = _tagged(household, household_body(session, household))
        return body, 200, headers


# --- persons ----------------------------------------------------------------------------------


def _lookups(args: dict[str, Any]) -> None:
    """Count exact lookups (an ID or phone number; a whole name for a caller who sees names
    masked) against the caller's allowance (429 when spent)."""
    if svc.is_lookup(args, unmasks=current_principal().can("persons:unmask")):
        count_lookup(state().settings.person_lookup_rate, _actor())


def _looks_someone_up() -> bool:
    """Whether the search asked for looks a resident up by an exact ID or phone number, or
    by a whole name for a caller who sees names masked (and so writes its audit row:
    ``svc.record_lookup``), read from the query as sent. Called before the view: the caller
    is authenticated here for a whole name (in a session of its own, as the view would, and
    kept for it); a caller whose credentials are refused is answered 401 by the view, which
    writes nothing."""
    args = request.args
    if args.get("id_number") or args.get("phone"):
        return True
    if len(args.get("name", "").strip()) < 2:
        return False
    try:
        principal = current_principal(required=False)
    except Unauthorized:
        return False
    return principal is not None and svc.is_lookup(
        {"name": args["name"]}, unmasks=principal.can("persons:unmask")
    )


def _refused_as_taken(session: Any, error: svc.DuplicatePerson, *, via: str) -> None:
    """Undo a create or change of a resident whose ID number is registered in the county,
    count it as an exact lookup (429 past the allowance: then nothing is told) and commit its
    audit row (``svc.record_taken_number``): the 409 that follows tells the caller that the
    number is someone's."""
    session.rollback()
    count_lookup(state().settings.person_lookup_rate, _actor())
    svc.record_taken_number(session, request_actor(), error, via=via)
    commit()


@persons_blp.route("")
class Persons(MethodView):
    @persons_blp.requires("persons:read")
    @persons_blp.arguments(PersonArgsSchema, location="query")
    @persons_blp.response(200, PersonListSchema)
    @persons_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes_when(_looks_someone_up)
    def get(self, args):
        """Search residents in your scope (masked)

        By name (a prefix for callers holding `persons:unmask`; for others, who see names
        masked, one character starts names and more match whole names only, each such search
        counted as an exact lookup), exact ID number or phone number (matched through keyed
        hashes, never the plain value; rate-limited per caller: GRIDAPI_PERSON_LOOKUP_RATE), address
        text, region, grid, household or house. Residents outside your scope are not found.

        A search by ID or phone number tells whether someone lives in your area, and where:
        it is audited as a read of personal data (`person.lookup`: the kind of number, the
        number masked, how many residents matched and which, and the optional `purpose_code`
        and `reference`), committed with the answer, hit or miss. So is a search by a whole
        name for a caller who sees names masked (`by: ["name"]`, `name_masked` 张*).
        """
        if args.get("reference"):
            _check_reference(args, "query")
        _lookups(args)
        k = keys()
        principal = current_principal()
        session = db_session()
        rows = svc.search_persons(
            session, principal.scope, _args(args), k, unmasks=principal.can("persons:unmask")
        )
        items = [svc.person_view(p, k) for p in rows]
        entry = svc.record_lookup(
            session,
            request_actor(),
            args,
            [(p.id, p.region_code) for p in rows],
            scope=principal.scope,
            home_region=principal.region_code,
            via="search",
            unmasks=principal.can("persons:unmask"),
        )
        if entry is not None:
            commit()
        return {"items": items, "next_cursor": _page(items, rows)}

    @persons_blp.requires("persons:write")
    @persons_blp.arguments(PersonCreateSchema)
    @persons_blp.response(201, PersonSchema, headers=_ETAG)
    @persons_blp.alt_response(
        409,
        response="CONFLICT",
        description="The ID number is registered already, the household has a head, or a "
        "resident of the same name without an ID number lives there already.",
    )
    @persons_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    def post(self, data):
        """Register a resident in a household or a grid

        The ID number is validated (length, province, birth date, check digit) and gives
        the gender and birth date. A number already registered in the county → 409, counted
        as a lookup (GRIDAPI_PERSON_LOOKUP_RATE; a new number counts nothing) and audited as
        one (`person.lookup` about the resident who has it, `via: create`); once the
        allowance is spent, a create with an ID number is a 429 before the number is looked
        up, registered or not, so creation cannot be used to test who is registered. A
        `grid` other than the household's, given with `household_id`, is a 422.
        """
        session = db_session()
        k = keys()
        try:
            person = svc.create_person(
                session,
                data,
                scope=current_principal().scope,
                keys=k,
                actor=_actor(),
                before_lookup=lookup_left,
            )
        except svc.DuplicatePerson as error:
            _refused_as_taken(session, error, via="create")
            raise
        audit(
            "person.create",
            "person",
            person.id,
            summary={"household_id": person.household_id, "grid": person.grid_code},
            region_code=person.region_code,
        )
        commit()
        body, headers = _tagged(person, svc.person_view(person, k))
        return body, 201, headers


@persons_blp.route("/<id:person_id>")
class PersonById(MethodView):
    @persons_blp.requires("persons:read")
    @persons_blp.response(200, PersonSchema, headers=_ETAG)
    def get(self, person_id):
        """Get a resident (masked)

        Returns the resident with name, ID number and phone number masked (张*, 3201**********1234,
        138****5678), the gender and age derived from the ID number, population type, addresses,
        household, relation to its head and place; `masked` is always true here. Full values need
        `GET /api/v1/persons/{id}/sensitive` with the `persons:unmask` permission and a stated
        purpose. Needs `persons:read`; a resident outside the caller's scope answers 404 exactly
        like one that does not exist.
        """
        person = svc.get_person(db_session(), person_id, current_principal().scope)
        body, headers = _tagged(person, svc.person_view(person, keys()))
        return body, 200, headers

    @persons_blp.requires("persons:write")
    @persons_blp.arguments(PersonUpdateSchema)
    @persons_blp.response(200, PersonSchema, headers=_ETAG)
    @persons_blp.alt_response(
        409,
        response="CONFLICT",
        description="The ID number is registered already, or the household has a head.",
    )
    @persons_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @persons_blp.doc(parameters=[_IF_MATCH_HEADER])
    def patch(self, data, person_id):
        """Change a resident (the audit log names the fields changed, never their values)

        Changes only the fields sent. Joining a household gives the resident its house and place;
        `grid` moves a resident who lives in no household (one in a household moves with it: 422)
        out of the house they were linked to, unless it lies in that grid (`house_id` null);
        special-group records and the visits naming the resident follow them. A new ID number
        is validated and re-derives gender and birth date, and only a foreign resident may have
        none (422). Needs `persons:write`; a resident out of scope answers 404. An ID number
        already registered in the county, or a second head (户长) for the household, is a 409; a
        duplicate ID number also counts against the caller's lookup allowance and is audited
        as a lookup (`person.lookup`, `via: update`), and once it is
        spent a change that would look an ID number up (one sent, or theirs in the county
        they move to) is a 429 before it looks, registered or not. The audit row
        `person.update` names the fields changed.
        """
        session = db_session()
        k = keys()
        try:
            person, changed = svc.update_person(
                session,
                person_id,
                data,
                scope=current_principal().scope,
                keys=k,
                if_match=request.headers.get("If-Match"),
                before_lookup=lookup_left,
            )
        except svc.DuplicatePerson as error:
            _refused_as_taken(session, error, via="update")
            raise
        _audit_changes("person", person, changed)
        commit()
        body, headers = _tagged(person, svc.person_view(person, k))
        return body, 200, headers

    @persons_blp.requires("persons:erase")
    @persons_blp.arguments(EraseArgsSchema, location="query")
    @persons_blp.response(204)
    def delete(self, args, person_id):
        """Erase a resident

        Deletes the resident and their special-group records, and anonymises visits that
        were about them alone; the audit trail (ids and field names, never values) stays.
        Say why with `reason_code` and, optionally, the office's file number (`reference`):
        the audit row keeps those. A free-text `reason` (deprecated) is accepted but not
        kept, since the log outlives the erased record and text can name people.
        """
        session = db_session()
        _check_reference(args, "query")
        person = svc.erase_person(session, person_id, current_principal().scope)
        audit(
            "person.erase",
            "person",
            person_id,
            summary=erasure_summary(args),
            region_code=person.region_code,
        )
        commit()


def _check_reference(args: dict[str, Any], location: str) -> None:
    """Refuse (422) a ``reference`` that is a resident's ID number written with separators
    and no case's number (``svc.check_reference``)."""
    session = db_session()
    caller = cases_svc.caller_of(session, current_principal())
    svc.check_reference(session, caller, args.get("reference"), location=location)


def erasure_summary(args: dict[str, Any]) -> dict[str, Any]:
    """Return what the audit log keeps of an erasure's reason: its code and reference, never
    free text (``coded_summary``: the free text stayed in the append-only log for good,
    beside the ids of the resident it could name)."""
    return coded_summary(args, "reason_code", "reason", ERASE_REASONS)


def _unmask_audit(action: str, person, args: dict[str, Any]) -> AuditEntry:  # type: ignore[no-untyped-def]
    """The audit row of a read of full values: the purpose's code and reference, never the
    free text of a deprecated ``purpose`` (see :mod:`gridapi.purposes`)."""
    return record(
        db_session(),
        request_actor(),
        action,
        "person",
        person.id,
        summary={
            **purpose_summary(args),
            "fields": ["name", "id_number", "phone", "birth_date"],
        },
        region_code=person.region_code,
    )


@persons_blp.route("/<id:person_id>/sensitive")
class PersonSensitive(MethodView):
    @persons_blp.requires("persons:unmask")
    @persons_blp.arguments(PurposeArgsSchema, location="query")
    @persons_blp.response(200, SensitivePersonSchema, headers=NO_STORE_HEADER)
    @persons_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes
    def get(self, args, person_id):
        """Read a resident's full name, ID and phone number, stating a purpose

        The audit row (who, when, from where, which resident, the `purpose_code` and
        `reference`) is committed before the values are sent. Counted against
        GRIDAPI_PERSON_LOOKUP_RATE. A free-text `purpose` (deprecated) is accepted but not
        kept: the log is append-only and the text could name people.
        """
        _check_reference(args, "query")
        count_lookup(state().settings.person_lookup_rate, _actor())
        session = db_session()
        person = svc.get_person(session, person_id, current_principal().scope)
        body = svc.reveal(person, keys())
        entry = _unmask_audit("person.unmask", person, args)
        session.flush()
        audit_id = entry.id
        commit()
        code = entry.summary["purpose_code"]
        stated = {
            "purpose": args.get("purpose") or code,
            "purpose_code": code,
            "reference": args.get("reference"),
        }
        return {**body, **stated, "audit_id": audit_id}, 200, NO_STORE


@persons_blp.route("/<id:person_id>/export")
class PersonExport(MethodView):
    @persons_blp.requires("persons:erase")
    @persons_blp.arguments(PurposeArgsSchema, location="query")
    @persons_blp.response(200, AccessExportSchema, headers=NO_STORE_HEADER)
    @persons_blp.alt_response(429, response="TOO_MANY_REQUESTS")
    @writes
    def get(self, args, person_id):
        """Export everything held about one resident (personal-information access request)

        Full values, household, house, visits, who processed the record and why (from the
        audit log), and special-group records when the caller may read them. Audited with
        the `purpose_code` and `reference` before it is sent. Counted against GRIDAPI_PERSON_LOOKUP_RATE, as an
        unmasked read.
        """
        _check_reference(args, "query")
        count_lookup(state().settings.person_lookup_rate, _actor())
        session = db_session()
        principal = current_principal()
        person = svc.get_person(session, person_id, principal.scope)
        with_groups = principal.can("special_groups:read")
        body = svc.access_export(session, person, keys(), with_special_groups=with_groups)
        _unmask_audit("person.export", person, args)
        for group in body.get("special_groups", []):  # a read of each record: audited
            record(
                session,
                request_actor(),
                "special_group.read",
                "special_group",
                group["id"],
                summary={"person_id": person.id, "via": "export"},
                region_code=person.region_code,
            )
        commit()
        return body, 200, NO_STORE


# --- visits -----------------------------------------------------------------------------------


@visits_blp.route("")
class Visits(MethodView):
    @visits_blp.requires("persons:read")
    @visits_blp.arguments(VisitArgsSchema, location="query")
    @visits_blp.response(200, VisitListSchema)
    def get(self, args):
        """List visits in your scope (by household, resident, worker, time, region, grid)

        Returns the home visits (走访) in the caller's grids and communities, ordered by id, each with
        the worker, time, place, point, household or resident visited, findings, follow-up and the
        case raised from it, if any. Filter by `household_id`, `person_id`, `worker_id`, a time
        window (`since` inclusive, `until` exclusive), `region` (subtree) or `grid`. Needs
        `persons:read`. Pages of `limit` (default 50, at most 200): pass `next_cursor` back as
        `cursor`.
        """
        rows = svc.list_visits(db_session(), current_principal().scope, _args(args))
        items = [svc.visit_view(v) for v in rows]
        return {"items": items, "next_cursor": _page(items, rows)}

    @visits_blp.requires("persons:write")
    @visits_blp.arguments(VisitCreateSchema)
    @visits_blp.doc(parameters=[IDEMPOTENCY_HEADER, DATE_HEADER])
    @visits_blp.response(201, VisitSchema)
    @visits_blp.alt_response(
        200,
        schema=VisitSchema,
        description="The caller reported the case's client_id with a visit before, longer ago "
        "than its answer is kept (GRIDAPI_IDEMPOTENCY_DAYS): that visit as it is now, with "
        "`Idempotent-Replayed: true`; nothing is created. A visit that has since left the "
        "caller's scope (its resident or household moved) answers 404 instead, as its GET "
        "does.",
    )
    @visits_blp.alt_response(
        409,
        response="CONFLICT",
        description="A request with the same Idempotency-Key or case client_id is still "
        "running: retry after "
        "Retry-After seconds (the retry gets its answer). Or the client_id reported a case "
        "other than a visit's (`POST /api/v1/cases`, a patrol finding).",
    )
    def post(self, data):
        """Record a visit to a household or a resident, optionally reporting a case found

        The case (as `POST /api/v1/cases` takes it; the location defaults to the visit's,
        then the house's) is reported in the same transaction: both or neither.

        Safe to retry with an `Idempotency-Key`, or when the case carries the phone's
        `client_id`: a retry gets the first answer again (`Idempotent-Replayed: true`) and
        creates nothing; the same key or client_id with another body is 422, and a retry
        while the first is still running 409 with Retry-After. A visit sent with neither is
        recorded again when sent again (the sync batch's key makes a queued one once).
        """
        session = db_session()
        principal = current_principal()
        now = datetime.now(UTC)
        retry = _Retry.of(data)
        # Answered before anything is checked again: a retry gets its answer also when the
        # rules changed since (the household moved to another grid), as a report does.
        try:
            answer = retry.answered(session, principal) if retry is not None else None
        except (Unprocessable, Conflict) as error:
            raise _under_case(error) from None
        if answer is not None:
            return answer
        visit = svc.create_visit(
            session,
            data,
            scope=principal.scope,
            snapshot=routing_snapshot(),
            actor=principal.actor_id,
            worker_id=principal.id if principal.kind == "user" else None,
            now=now,
        )
        if data.get("case"):
            return _visit_with_case(session, visit, data["case"], retry, now)
        _audit_visit(visit)
        session.flush()
        if retry is None:
            commit()
            return svc.visit_view(visit)
        payload = _visit_answer(visit, None)  # stored with the visit, sent byte for byte
        Keyed(retry.keys, retry.body_hash).remember(
            session, principal.actor_id, payload, resource_id=visit.id, now=now
        )
        commit()
        return Response(payload, status=201, mimetype="application/json")


@visits_blp.route("/<id:visit_id>")
class VisitById(MethodView):
    @visits_blp.requires("persons:read")
    @visits_blp.response(200, VisitSchema)
    def get(self, visit_id):
        """Get a visit

        Returns the visit with its worker, time, place and point, the household or resident visited,
        findings, follow-up, the id of the case raised from it (if any) and who recorded it when.
        Needs `persons:read`; a visit outside the caller's scope answers 404 like one that does not
        exist.
        """
        return svc.visit_view(svc.get_visit(db_session(), visit_id, current_principal().scope))


def _audit_visit(visit) -> None:  # type: ignore[no-untyped-def]
    audit(
        "visit.create",
        "visit",
        visit.id,
        summary={"household_id": visit.household_id, "case_id": visit.case_id},
        region_code=visit.region_code,
    )


def _visit_answer(visit, case_id: int | None) -> str:  # type: ignore[no-untyped-def]
    """Return the answer for ``visit`` raising case ``case_id``, encoded as VisitSchema
    encodes it (what a replay sends again, byte for byte)."""
    return dumps_bytes(VisitSchema().dump({**svc.visit_view(visit), "case_id": case_id})).decode()


@dataclass(frozen=True)
class _Retry:
    """What names a visit that may be sent again: its ``Idempotency-Key`` and the phone's
    ``client_id`` of its case, as the caller's keys, and the request's hash (a retry is the
    same request; another one with a key, 422)."""

    client_id: str | None
    keys: list[str]
    body_hash: idempotency.RequestHash

    @classmethod
    def of(cls, data: dict[str, Any]) -> _Retry | None:
        header = idempotency.parse_header(request.headers.get("Idempotency-Key"))
        client_id = (data.get("case") or {}).get("client_id")
        if not client_id and not header:
            return None
        body = request.get_json()
        if client_id and isinstance(body, dict) and isinstance(body.get("case"), dict):
            # The UUID as read: upper and lower case name the same one (as POST /cases).
            body = {**body, "case": {**body["case"], "client_id": str(client_id)}}
        keys = [f"key:{header}"] if header else []
        if client_id:
            keys.append(f"{svc.VISIT_CASE_KEY}{client_id}")
        return cls(
            str(client_id) if client_id else None,
            keys,
            idempotency.request_hash("POST", request.path, body),
        )

    def answered(self, session, principal) -> Response | None:  # type: ignore[no-untyped-def]
        """Return the answer of the visit this request made already: the answer stored
        under its Idempotency-Key, else that of the visit its case's client_id made (the
        stored answer, else the visit as it is now, 200); None when there is none. 422 when
        a stored answer was for another request, 409 while a request with the key is still
        running, or when the client_id reported a case other than a visit's."""
        caller = principal.actor_id
        header_keys = [k for k in self.keys if k.startswith("key:")]
        if header_keys:
            answer = Keyed(header_keys, self.body_hash).answered(session, caller)
            if answer is not None:
                return answer
        if self.client_id is None:
            return None
        # The case first: its key commits with it, so a statement after one that saw the
        # case sees the key too (the other way round, a visit committed in between would be
        # answered as an old one).
        earlier = svc.visit_of_reported_case(session, principal, self.client_id)
        if earlier is None:
            return None
        stored = idempotency.find(session, principal.actor_id, self.keys, self.body_hash)
        if stored is not None:
            answer = replayed(stored.response, stored.status_code)
        else:
            # The client_id is the caller's for ever, its stored answer is kept
            # GRIDAPI_IDEMPOTENCY_DAYS: an older retry gets the visit as it is now, read as
            # GET /visits/{id} reads it. A visit whose resident has since moved out of the
            # caller's scope answers 404 like a missing one: as it is now, it told the grid
            # they had moved to (their whereabouts, outside the caller's scope).
            now = svc.get_visit(session, earlier.id, principal.scope)
            answer = replayed(_visit_answer(now, now.case_id), 200)
        session.rollback()
        return answer


def _visit_with_case(  # type: ignore[no-untyped-def]
    session, visit, case_data: dict[str, Any], retry: _Retry | None, now: datetime
) -> Response:
    """Report the case found on ``visit`` as ``POST /api/v1/cases`` does
    (``services.intake.report_once``), once per case client_id, and answer the visit.

    The answer is stored under the client_id's key with the case: a retry that comes while
    this one runs gets it (or 409, retry shortly) and the new visit is rolled back; one
    that raced a report with the same client_id on another path gets the answer of
    ``_Retry.answered``.
    """
    principal = current_principal()
    st = state()
    case_data = _case_of_visit(session, visit, case_data)  # its errors name json.case already
    try:
        taken = intake.report_once(
            session,
            case_data,
            principal=principal,
            actor=request_actor(),
            keys=retry.keys if retry else [],
            body_hash=retry.body_hash if retry else idempotency.UNKEYED,
            path=request.path,
            snapshot=routing_snapshot(),
            calendar=st.calendar(session),
            now=now,
            duplicate_window_hours=st.settings.duplicate_window_hours,
            keep_days=st.settings.idempotency_days,
            respond=lambda case, duplicates, category: _visit_answer(visit, case.id),
            audit_summary={"visit_id": visit.id},
        )
    except IntegrityError:
        session.rollback()
        try:
            answer = retry.answered(session, principal) if retry else None
        except (Unprocessable, Conflict) as error:
            raise _under_case(error) from None
        if answer is None:
            raise
        return answer
    except (Unprocessable, Conflict) as error:  # the case's fields are under `case` here
        raise _under_case(error) from None
    if taken.replayed:
        session.rollback()  # the visit made for this request
        return replayed(taken.payload, taken.status_code)
    visit.case_id = taken.case_id
    _audit_visit(visit)
    session.flush()
    commit()
    return Response(taken.payload, status=201, mimetype="application/json")


def _under_case(error: DomainError) -> DomainError:
    """Return an error of the visit's case (its report, its client_id) with the body's
    fields named where the visit's body has them: ``json.case.category``, not
    ``json.category`` as ``POST /api/v1/cases`` names them."""
    errors = dict(error.errors or {})
    if "json" in errors:
        errors["json"] = {"case": errors["json"]}
    return type(error)(error.message, errors=errors, headers=error.headers)


def _case_of_visit(session, visit, case_data: dict[str, Any]) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Return the case report of a visit: source `visit`, located where given, else at the
    visit, else at its house (422 when neither has a location). A location of 0°, 0° is a
    phone without a fix (``no_fix``) and counts as none, as for a patrol's finding: such a
    case went to the intake queue as unrouted, where the visit's house placed it."""
    case_data = {**case_data}
    case_data.setdefault("source", "visit")
    given = case_data.get("location")
    if not given or no_fix(*given["coordinates"][:2]):
        lon, lat = visit.lon, visit.lat
        if lon is None and visit.household_id:
            household = session.get(Household, visit.household_id)
            house = session.get(House, household.house_id) if household.house_id else None
            if house is not None and house.lon is not None:
                lon, lat = house.lon, house.lat
        if lon is None:
            raise Unprocessable(
                "The case needs a location: the visit and its house have none.",
                errors={"json": {"case": {"location": ["required: the visit has no location"]}}},
            )
        case_data["location"] = geojson_point(lon, lat)
        case_data["crs"] = "wgs84"
    return case_data
