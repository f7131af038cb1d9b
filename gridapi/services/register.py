"""The register: houses, households, residents and visits, protected as the law requires.

* ID and phone numbers are encrypted field by field (``gridapi.security.fields``) and found
  by their keyed hashes; plaintext lives only in memory, for the length of a request.
* Every query carries the caller's area scope: an object outside it answers exactly as a
  missing one (404), and a create that points outside it answers 422.
* Views mask by default (``person_view``); full values only through ``reveal`` (the
  resource audits it, with the purpose, in the same transaction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import orjson
from geoalchemy2 import WKTElement
from sqlalchemy import and_, case, delete, func, inspect, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from .. import clock
from ..codes import region_level
from ..errors import Conflict, NotFound, Unprocessable
from ..geo.crs import no_fix, to_wgs84
from ..geo.shapes import geojson_point
from ..models import AuditEntry, Case, Grid, IdempotencyKey
from ..models.register import (
    House,
    Household,
    Person,
    SpecialGroupRecord,
    Visit,
    address_key,
    new_uid,
)
from ..personal import (
    InvalidValue,
    age_on,
    mask_id_number,
    mask_name,
    mask_phone,
    parse_id_number,
    parse_phone,
)
from ..purposes import is_id_number_written_apart, purpose_summary
from ..scope import Scope, starts_with
from ..security.fields import FieldCipher, blind_index
from . import cases as cases_svc
from .audit import Actor, about_person, record
from .cursors import one_page, page_by_id
from .patrols import not_in_future
from .preconditions import check_if_match, flush_versioned
from .regions import get_region
from .routing import IndexSnapshot
from .uniques import add_or_conflict, advisory_key, conflicts_as

if TYPE_CHECKING:
    from ..auth import Principal


@dataclass(frozen=True)
class Keys:
    """What protecting personal values takes: the field cipher and the blind-index key."""

    cipher: FieldCipher
    blind_key: bytes

    def index(self, kind: str, value: str) -> str:
        return blind_index(kind, value, self.blind_key)

    def seal(self, table: str, column: str, uid: str, value: str | None) -> str | None:
        if value is None:
            return None
        return self.cipher.encrypt(value, table=table, column=column, row=uid)

    def open(self, table: str, column: str, uid: str, stored: str | None) -> str | None:
        if stored is None:
            return None
        return self.cipher.decrypt(stored, table=table, column=column, row=uid)


#: Called before an ID number or a household number (户号) is looked up in the register, to
#: refuse the request (it raises) when the caller may look no more up: the resource's check
#: of its lookup allowance (``gridapi.limits.require_lookup_left``), asked hit or miss.
BeforeLookup = Callable[[], None]


def _not_found(kind: str) -> NotFound:
    # One message for missing and out-of-scope objects: the two answer byte for byte alike.
    return NotFound(f"The {kind} does not exist or is outside your scope.")


def _invalid(field: str, reason: str, location: str = "json") -> Unprocessable:
    return Unprocessable(f"Invalid {field}.", errors={location: {field: [reason]}})


def in_scope(scope: Scope, model: Any):  # type: ignore[no-untyped-def]
    """Return the condition 'the row of ``model`` lies in ``scope``' (grid or community)."""
    return scope.grid_condition(model.grid_code, model.region_code)


# --- where an object belongs ------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Where a register object belongs: its community (or smallest region) and grid."""

    region_code: str
    grid_code: str | None
    method: str = "given"

    @property
    def county_code(self) -> str:
        return self.region_code[:6]


def _check_place(place: Place, scope: Scope, field: str) -> Place:
    inside = scope.covers_grid(place.grid_code) if place.grid_code else False
    if not inside and not place.grid_code:
        inside = scope.covers_region(place.region_code)
    if not inside:
        raise _invalid(field, "outside your scope")
    return place


def place_of_grid(session: Session, code: str, scope: Scope, field: str = "grid") -> Place:
    """Return the place of a grid in service inside the scope; 422 otherwise."""
    grid = session.scalars(
        select(Grid).where(
            Grid.code == code,
            Grid.in_service.is_(True),
            scope.grid_condition(Grid.code, Grid.community_code),
        )
    ).first()
    if grid is None:
        raise _invalid(field, f"no grid {code} in service in your scope")
    return Place(grid.community_code, grid.code)


def place_of_region(
    session: Session,
    code: str,
    scope: Scope,
    field: str = "region",
    *,
    above_county: bool = False,
) -> Place:
    """Return the place of a region in the scope, of county level or below unless
    ``above_county`` (a city's campaign and its tasks); 422 otherwise.

    A city or a province is no place of the register: its rows carry a county's code (the
    unit household and ID numbers are unique within, the key rows are distributed by), and
    a house placed at "苏州市" had the county code "320500", no county's."""
    try:
        get_region(session, code, scope=scope)  # the current period of the region
    except NotFound:
        raise _invalid(field, f"no region {code} in your scope") from None
    if not scope.covers_region(code):  # an ancestor is readable, but holds nothing of ours
        raise _invalid(field, f"no region {code} in your scope")
    if not above_county and region_level(code) in ("city", "province"):
        raise _invalid(field, "is a city or a province: name its county, township or community")
    return Place(code, None)


def place_of_point(
    snapshot: IndexSnapshot, location: dict[str, Any], crs: str, scope: Scope | None
) -> tuple[Place, float, float]:
    """Route a GeoJSON point like a case: the grid covering it, else the smallest region
    (checked against ``scope`` unless it is None)."""
    raw_lon, raw_lat = location["coordinates"]
    lon, lat = to_wgs84(raw_lon, raw_lat, crs)
    match = snapshot.locate(lon, lat)
    if match.grid >= 0:
        grid = snapshot.grids[match.grid]
        place = Place(grid["community_code"], grid["code"], match.method)
    else:
        chain = snapshot.regions_for_point(lon, lat)
        if not chain:
            raise _invalid("location", "outside every known region")
        # Held by a city or a province only: the county under it nearest the point takes
        # it, as it takes a case in (cases.in_a_county), so the row carries a county code.
        place = Place(cases_svc.in_a_county(snapshot, lon, lat, chain[0]["code"]), None, "none")
    if scope is not None:
        place = _check_place(place, scope, "location")
    return place, lon, lat


def resolve_place(
    session: Session,
    data: dict[str, Any],
    scope: Scope,
    snapshot: IndexSnapshot | None,
) -> tuple[Place, float | None, float | None]:
    """Return the place named by ``location``, ``grid`` or ``region`` in ``data`` (in that
    order of preference) with the WGS-84 point, if any."""
    if data.get("location") is not None and snapshot is not None:
        place, lon, lat = place_of_point(snapshot, data["location"], data.get("crs", "wgs84"), None)
        if data.get("grid") and place.grid_code != data["grid"]:
            # An explicit grid wins over a point routed to another grid (a house on a boundary
            # belongs where the office says); it must be in scope all the same.
            return place_of_grid(session, data["grid"], scope), lon, lat
        return _check_place(place, scope, "location"), lon, lat
    if data.get("grid"):
        return place_of_grid(session, data["grid"], scope), None, None
    if data.get("region"):
        return place_of_region(session, data["region"], scope), None, None
    raise Unprocessable(
        "Say where: a location, a grid or a region.",
        errors={"json": {"location": ["one of location, grid or region is required"]}},
    )


# --- houses -----------------------------------------------------------------------------------


def _point(lon: float | None, lat: float | None) -> WKTElement | None:
    if lon is None or lat is None:
        return None
    return WKTElement(f"POINT({lon!r} {lat!r})", srid=4326)


class DuplicateHouse(Conflict):
    """A house with the address is registered at the place already. The place is in the
    caller's scope, and so is the house: the answer names it."""

    def __init__(self, house_id: int) -> None:
        super().__init__(
            f"A house with this address is registered at this place already: house {house_id}.",
            errors={"json": {"address": [f"already registered at this place: house {house_id}"]}},
        )
        self.house_id = house_id


def house_at(
    session: Session, place: Place, address: str, *, other_than: int | None = None
) -> House | None:
    """Return the house with ``address`` at ``place`` (its community and grid), or None.

    A house is its address at its place: the rule the unique indexes of ``houses`` hold,
    by which the API refuses a second one and the import joins the one registered. Addresses
    are compared as ``address_key`` gives them: "３号楼" (full-width, typed with a Chinese
    input method) is "3号楼", "A座" is "a座", and spaces do not count ("3号楼 2单元" is
    "3号楼2单元")."""
    grid = (
        House.grid_code.is_(None) if place.grid_code is None else House.grid_code == place.grid_code
    )
    stmt = select(House).where(
        House.county_code == place.county_code,
        House.region_code == place.region_code,
        grid,
        House.address_key == address_key(address),
    )
    if other_than is not None:
        stmt = stmt.where(House.id != other_than)
    return session.scalars(stmt.order_by(House.id).limit(1)).first()


def _house_taken(
    session: Session, place: Place, address: str, other_than: int | None = None
) -> DuplicateHouse | None:
    """The conflict of ``address`` at ``place`` with a house other than ``other_than``."""
    found = house_at(session, place, address, other_than=other_than)
    return None if found is None else DuplicateHouse(found.id)


#: The longest address a house has (``houses.address`` and ``address_key``).
ADDRESS_MAX = 300


def _check_address(address: str) -> str:
    """Return the address without the spaces around it; 422 when its compared form
    (``address_key``: compatibility characters spelt out, ㈱ is "(株)") outgrows the column."""
    address = address.strip()
    if len(address_key(address)) > ADDRESS_MAX:
        raise _invalid("address", f"longer than {ADDRESS_MAX} characters once normalised")
    return address


def create_house(
    session: Session,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot | None,
    actor: str,
) -> House:
    """Register a house; DuplicateHouse (409) when its address is registered at its place."""
    place, lon, lat = resolve_place(session, data, scope, snapshot)
    address = _check_address(data["address"])
    if (error := _house_taken(session, place, address)) is not None:
        raise error
    house = House(
        county_code=place.county_code,
        region_code=place.region_code,
        grid_code=place.grid_code,
        address=address,
        use=data.get("use", "self_occupied"),
        lon=lon,
        lat=lat,
        location=_point(lon, lat),
        routing_method=place.method,
        created_by=actor,
    )
    # Registered by another request (an import) between the look-up and the insert: the
    # same answer as when it came first, naming that house, not the generic conflict.
    add_or_conflict(session, house, lambda: _house_taken(session, place, address))
    return house


def get_house(
    session: Session,
    house_id: int,
    scope: Scope,
    *,
    field: str | None = None,
    for_update: bool = False,
) -> House:
    """Return a house in scope; NotFound (or 422 naming ``field``, for a reference) otherwise."""
    stmt = select(House).where(House.id == house_id, in_scope(scope, House))
    return _the_one(session, stmt, "house", house_id, field=field, for_update=for_update)


def _the_one(
    session: Session, stmt: Any, noun: str, obj_id: int, *, field: str | None, for_update: bool
) -> Any:
    """Return the object ``stmt`` selects (locked ``for_update``); NotFound, or 422 naming
    ``field`` when it is a reference, when there is none (or it is out of scope)."""
    if for_update:  # locked, and read as it is now (not as the session may hold it)
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    found = session.scalars(stmt).first()
    if found is None:
        if field:
            raise _invalid(field, f"no {noun} {obj_id} in your scope")
        raise _not_found(noun)
    return found


def update_house(
    session: Session,
    house_id: int,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot | None,
    if_match: str | None = None,
) -> tuple[House, list[str]]:
    """Change a house; with ``if_match``, only the version it names (412 otherwise).
    Returns the house and the fields that changed."""
    house = get_house(session, house_id, scope, for_update=True)
    check_if_match(house, if_match, noun="house", required=False)

    written: dict[str, Any] = {}

    def taken() -> DuplicateHouse | None:
        # Its new address or place registered by another request meanwhile (PostgreSQL:
        # the unique index waited for it): the same answer as when it came first. What was
        # written is read from ``written``: the rollback expired the house's attributes.
        if not written:
            return None
        return _house_taken(session, written["place"], written["address"], house_id)

    with conflicts_as(session, taken):
        changed = _update_house(
            session, house, data, scope=scope, snapshot=snapshot, written=written
        )
    return house, changed


def _update_house(
    session: Session,
    house: House,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot | None,
    written: dict[str, Any],
) -> list[str]:
    """Make the changes of ``update_house`` to the locked ``house`` and flush them; return
    the fields that changed. Its place and address are left in ``written`` before the
    flush."""
    if isinstance(data.get("address"), str):
        data = {**data, "address": _check_address(data["address"])}
    # Written by the one flush at the end: an autoflush by the moves' UPDATE statements
    # cleared what changed_fields reads, and a moved house was not audited.
    with session.no_autoflush:
        if any(data.get(k) is not None for k in ("location", "grid", "region")):
            place, lon, lat = resolve_place(session, data, scope, snapshot)
            given = next(k for k in ("location", "grid", "region") if data.get(k) is not None)
            _same_county(house.county_code, place, given)
            before = (house.region_code, house.grid_code)
            moved = (place.region_code, place.grid_code) != before
            house.region_code, house.grid_code = place.region_code, place.grid_code
            house.county_code, house.routing_method = place.county_code, place.method
            if lon is not None:
                house.lon, house.lat, house.location = lon, lat, _point(lon, lat)
            if moved:  # its households, residents and their visits move with it
                _move(session, Household, Household.house_id == house.id, place)
                # Those who live there, at its place: a resident linked to it who had moved
                # alone into another grid (keeping the link, before that was undone) went
                # along. Their ids are read first: the condition holds after the move too.
                elsewhere = session.scalars(
                    select(Person.id).where(
                        Person.house_id == house.id,
                        or_(Person.region_code != before[0], _is_not(Person.grid_code, before[1])),
                    )
                ).all()
                living = Person.house_id == house.id
                if elsewhere:
                    living = living & Person.id.not_in(elsewhere)
                _move_people(session, living, place)
                _move_household_visits(session, Household.house_id == house.id, place)
        for key in ("address", "use"):
            if key in data:
                setattr(house, key, data[key])
        changed = changed_fields(house, _HOUSE_FIELDS, data)
        if {"address", "grid", "region", "location"} & set(changed):
            where = Place(house.region_code, house.grid_code)
            if (error := _house_taken(session, where, house.address, house.id)) is not None:
                raise error
            written.update(place=where, address=house.address)
    flush_versioned(session, "house")
    return changed


def changed_fields(obj: Any, fields: dict[str, tuple[str, ...]], sent: Iterable[str]) -> list[str]:
    """Return the fields sent whose attributes now differ from the stored row (read before
    the flush): a field sent with the value it had is no change, for the version as for the
    audit row (which named every field sent)."""
    state = inspect(obj)
    return sorted(
        name
        for name in sent
        if any(state.attrs[attr].history.has_changes() for attr in fields.get(name, ()))
    )


_HOUSE_FIELDS = {
    "address": ("address",),
    "use": ("use",),
    "location": ("lon", "lat"),
    "grid": ("grid_code",),
    "region": ("region_code",),
}
_HOUSEHOLD_FIELDS = {"type": ("type",), "house_id": ("house_id",)}


def _move(session: Session, model: Any, condition: Any, place: Place) -> None:
    values: dict[str, Any] = {
        "region_code": place.region_code,
        "grid_code": place.grid_code,
        "county_code": place.county_code,
    }
    if hasattr(model, "version"):  # a move is a change: an ETag read before it is stale
        values["version"] = model.version + 1
    session.execute(
        update(model)
        .where(condition)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )


def _same_county(county: str, place: Place, field: str) -> None:
    """Houses and households move within their county: numbers and ID numbers are unique
    per county, and a move across counties is a transfer (register anew, erase the old)."""
    if place.county_code != county:
        raise _invalid(field, "lies in another county: register anew there")


def _is_not(column: Any, value: Any) -> Any:
    """Return 'column differs from value', None included (SQL's != is never true of NULL)."""
    if value is None:
        return column.is_not(None)
    return or_(column.is_(None), column != value)


def _move_people(session: Session, condition: Any, place: Place) -> None:
    """Move residents, and their special-group records and visits with them (which follow
    their person's place so that their scope is the person's)."""
    ids = select(Person.id).where(condition).scalar_subquery()
    # The residents first: their update waits for a visit being recorded to one of them (it
    # locks them), and the visits' update after it then sees that visit (PostgreSQL).
    _move(session, Person, condition, place)
    _move(session, SpecialGroupRecord, SpecialGroupRecord.person_id.in_(ids), place)
    _move(session, Visit, Visit.person_id.in_(ids), place)


def _move_household_visits(session: Session, condition: Any, place: Place) -> None:
    """Move the visits to the households matching ``condition`` that named no resident.

    A visit belongs where its subject is: the resident it names (moved with them, by
    ``_move_people``, wherever they live now), else its household. Its findings are about
    them (health, hardship): left behind, the grid they had left kept reading them, and the
    grid they moved to could not.
    """
    ids = select(Household.id).where(condition).scalar_subquery()
    _move(session, Visit, Visit.person_id.is_(None) & Visit.household_id.in_(ids), place)


def _area_filters(stmt, model: Any, args: dict[str, Any]):  # type: ignore[no-untyped-def]
    if args.get("region"):
        from ..codes import subtree_prefix

        stmt = stmt.where(starts_with(model.region_code, subtree_prefix(args["region"])))
    if args.get("grid"):
        stmt = stmt.where(model.grid_code == args["grid"])
    return stmt


def list_houses(session: Session, scope: Scope, args: dict[str, Any]) -> list[House]:
    stmt = _area_filters(select(House).where(in_scope(scope, House)), House, args)
    if args.get("address"):
        # In the form addresses are compared in: "３号楼" finds "3号楼", "a座" finds "A座",
        # "3号楼 2单元" finds "3号楼2单元".
        stmt = stmt.where(House.address_key.contains(address_key(args["address"]), autoescape=True))
    if args.get("use"):
        stmt = stmt.where(House.use == args["use"])
    limit = args.get("limit", 50)
    return one_page(session.scalars(page_by_id(stmt, House.id, args.get("after"), limit)), limit)


# --- households -------------------------------------------------------------------------------


class DuplicateHousehold(Conflict):
    """The household number (户号) is registered in the county already (wherever: the
    answer is the same whether or not the caller could see that household), which tells
    that the number exists: the caller counts it as an exact lookup, as a duplicate ID
    number is counted."""


def create_household(
    session: Session,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot | None,
    actor: str,
    before_lookup: BeforeLookup | None = None,
) -> Household:
    """Register a household; raises DuplicateHousehold when its number is registered in the
    county. ``before_lookup`` is called before the number is looked up."""
    house = None
    if data.get("house_id") is not None:
        # Locked like a move locks it: a household created while its house moves takes the
        # house's new place, never the old one (PostgreSQL; SQLite serialises writers).
        house = get_house(session, data["house_id"], scope, field="house_id", for_update=True)
        place = Place(house.region_code, house.grid_code)
    else:
        place, _, _ = resolve_place(session, data, scope, snapshot)
    number = data["number"].strip()

    def duplicate() -> DuplicateHousehold | None:
        taken = session.scalar(
            select(Household.id).where(
                Household.county_code == place.county_code, Household.number == number
            )
        )
        if taken is None:
            return None
        return DuplicateHousehold(
            "A household with this number (户号) is already registered in the county.",
            errors={"json": {"number": ["already registered in the county"]}},
        )

    if before_lookup is not None:
        before_lookup()
    if (error := duplicate()) is not None:
        raise error
    household = Household(
        county_code=place.county_code,
        region_code=place.region_code,
        grid_code=place.grid_code,
        number=number,
        house_id=house.id if house else None,
        type=data.get("type", "registered"),
        created_by=actor,
    )
    # Registered by another request between the look-up and the insert: the same answer,
    # counted the same, as when it came first, not the generic conflict.
    add_or_conflict(session, household, duplicate)
    return household


def get_household(
    session: Session,
    household_id: int,
    scope: Scope,
    *,
    field: str | None = None,
    for_update: bool = False,
) -> Household:
    stmt = select(Household).where(Household.id == household_id, in_scope(scope, Household))
    return _the_one(session, stmt, "household", household_id, field=field, for_update=for_update)


def update_household(
    session: Session,
    household_id: int,
    data: dict[str, Any],
    *,
    scope: Scope,
    if_match: str | None = None,
) -> tuple[Household, list[str]]:
    """Change a household; with ``if_match``, only the version it names (412 otherwise).
    Returns the household and the fields that changed."""
    household = get_household(session, household_id, scope, for_update=True)
    check_if_match(household, if_match, noun="household", required=False)
    # Written by the one flush at the end, as a house (update_house).
    with session.no_autoflush:
        if "type" in data:
            household.type = data["type"]
        if "house_id" in data and data["house_id"] != household.house_id:
            if data["house_id"] is None:
                household.house_id = None
                session.execute(
                    update(Person)
                    .where(Person.household_id == household.id)
                    .values(house_id=None, version=Person.version + 1)
                    .execution_options(synchronize_session="fetch")
                )
            else:
                house = get_house(
                    session, data["house_id"], scope, field="house_id", for_update=True
                )
                place = Place(house.region_code, house.grid_code)
                _same_county(household.county_code, place, "house_id")
                household.house_id = house.id
                household.region_code, household.grid_code = place.region_code, place.grid_code
                household.county_code = place.county_code
                _move_people(session, Person.household_id == household.id, place)
                _move_household_visits(session, Household.id == household.id, place)
                session.execute(
                    update(Person)
                    .where(Person.household_id == household.id)
                    .values(house_id=house.id, version=Person.version + 1)
                    .execution_options(synchronize_session="fetch")
                )
        changed = changed_fields(household, _HOUSEHOLD_FIELDS, data)
    flush_versioned(session, "household")
    return household, changed


def list_households(session: Session, scope: Scope, args: dict[str, Any]) -> list[Household]:
    stmt = _area_filters(select(Household).where(in_scope(scope, Household)), Household, args)
    if args.get("house_id"):
        stmt = stmt.where(Household.house_id == args["house_id"])
    if args.get("number"):
        stmt = stmt.where(Household.number == args["number"])
    if args.get("type"):
        stmt = stmt.where(Household.type == args["type"])
    limit = args.get("limit", 50)
    page = page_by_id(stmt, Household.id, args.get("after"), limit)
    return one_page(session.scalars(page), limit)


def members_of(session: Session, household_ids: list[int]) -> dict[int, list[Person]]:
    """Return the members of several households in one query, by household id."""
    out: dict[int, list[Person]] = {i: [] for i in household_ids}
    if household_ids:
        for person in session.scalars(
            select(Person).where(Person.household_id.in_(household_ids)).order_by(Person.id)
        ):
            out[person.household_id].append(person)  # type: ignore[index]
    return out


# --- persons ----------------------------------------------------------------------------------


class DuplicatePerson(Conflict):
    """The ID number is registered in the county already (wherever: the answer is the same
    whether or not the caller could see that record). ``holder``: the resident's ``id``,
    ``grid_code`` and ``region_code``, for the caller to count a hit outside its scope and
    for the audit row of the lookup (``record_taken_number``); ``masked``: the number looked
    up, masked."""

    def __init__(
        self, message: str, *, errors: dict[str, Any], holder: Any = None, masked: str = ""
    ) -> None:
        super().__init__(message, errors=errors)
        self.holder = holder
        self.masked = masked


def _check_id(value: str | None, field: str = "id_number", location: str = "json") -> Any:
    if value is None:
        return None
    try:
        return parse_id_number(value)
    except InvalidValue as exc:
        raise _invalid(field, str(exc), location) from None


def _check_phone(value: str | None, field: str = "phone", location: str = "json") -> str | None:
    if value is None:
        return None
    try:
        return parse_phone(value)
    except InvalidValue as exc:
        raise _invalid(field, str(exc), location) from None


def _id_taken(session: Session, person: Person, digest: str, masked: str) -> DuplicatePerson | None:
    """The conflict of ``person``'s ID number (its index ``digest``; ``masked``, the number
    masked) with another resident's in the county, or None."""
    return _id_taken_in(session, person.county_code, digest, person.id, masked)


def _id_taken_in(
    session: Session, county_code: str, digest: str, person_id: int | None, masked: str
) -> DuplicatePerson | None:
    """The conflict of an ID number (its index ``digest``; ``masked``, the number masked)
    with that of a resident of ``county_code`` other than ``person_id``, or None."""
    clash = session.execute(
        select(Person.id, Person.grid_code, Person.region_code).where(
            Person.county_code == county_code,
            Person.id_number_hmac == digest,
            Person.id != (person_id or 0),
        )
    ).first()
    if clash is None:
        return None
    return DuplicatePerson(
        "A resident with this ID number is already registered in the county.",
        errors={"json": {"id_number": ["already registered in the county"]}},
        holder=clash,
        masked=masked,
    )


def _set_id_number(
    session: Session,
    person: Person,
    parsed: Any,
    keys: Keys,
    before_lookup: BeforeLookup | None = None,
) -> None:
    """Give ``person`` the ID number ``parsed``; raises DuplicatePerson when another resident
    of its county has it. ``before_lookup`` is called before the number is looked up."""
    digest = keys.index("id_number", parsed.value)
    if before_lookup is not None:
        before_lookup()
    if (error := _id_taken(session, person, digest, mask_id_number(parsed.value))) is not None:
        raise error
    if person.id_number_enc is not None and person.id_number_hmac == digest:
        return  # the same number: sealed again it would be a change that is none
    person.id_number_enc = keys.seal("persons", "id_number", person.uid, parsed.value)
    person.id_number_hmac = digest
    person.birth_date = parsed.birth_date
    person.gender = parsed.gender


def _set_phone(person: Person, phone: str | None, keys: Keys) -> None:
    digest = keys.index("phone", phone) if phone else None
    if person.phone_enc is not None and digest is not None and person.phone_hmac == digest:
        return  # the same number (see _set_id_number)
    person.phone_enc = keys.seal("persons", "phone", person.uid, phone)
    person.phone_hmac = digest


def _check_head(session: Session, household_id: int | None, person_id: int | None) -> None:
    if (error := _head_taken(session, household_id, person_id)) is not None:
        raise error


def _head_taken(
    session: Session, household_id: int | None, person_id: int | None
) -> Conflict | None:
    """The conflict of a resident (``person_id``) as head of ``household_id`` with its
    head, or None."""
    if household_id is None:
        return None
    head = session.scalar(
        select(Person.id).where(
            Person.household_id == household_id,
            Person.relation == "head",
            Person.id != (person_id or 0),
        )
    )
    if head is None:
        return None
    return Conflict(
        "The household has a head (户长) already.",
        errors={"json": {"relation": ["the household has a head already"]}},
    )


def _check_namesake(
    session: Session,
    name: str,
    household_id: int | None,
    place: Place,
    scope: Scope,
    *,
    other_than: int | None = None,
    wait: bool = False,
) -> None:
    """Raise Conflict when a resident named ``name`` without an ID number lives in the
    household ``household_id``, or, without one, in the place's grid outside any household.

    A resident without an ID number (境外人员) is known by name where they live: the API
    and the import registered them again beside each other (the import checked only what
    earlier imports and its own rows had written through it).

    No unique index holds the rule: two namesakes registered at once both looked before
    either had committed, and both went through. On PostgreSQL the place checked (the
    household, else the grid) is locked first, to the end of the transaction, so the
    second waits for the first and then sees it (SQLite serialises writers already).
    ``wait``: as long as it takes (an import); else NAMESAKE_LOCK_WAIT_MS, then
    NamesakePlaceBusy (see _lock_namesakes_of)."""
    _lock_namesakes_of(session, household_id, place, wait=wait)
    same = select(Person.id).where(
        Person.name == name, Person.id_number_hmac.is_(None), in_scope(scope, Person)
    )
    if other_than is not None:  # a resident changed: not a namesake of themselves
        same = same.where(Person.id != other_than)
    if household_id is not None:
        same = same.where(Person.household_id == household_id)
    else:
        same = same.where(Person.household_id.is_(None), _is(Person.grid_code, place.grid_code))
    if session.scalar(same.limit(1)) is not None:
        raise Conflict(
            "A resident of this name without an ID number is already registered here.",
            errors={"json": {"name": ["already registered here (same name, no ID number)"]}},
        )


# PostgreSQL advisory locks, two-key form: this first key, then a place's (below).
_NAMESAKE_LOCK = 2281


#: How long a request waits for the namesake lock of a place before it is answered 409.
NAMESAKE_LOCK_WAIT_MS = 2000
#: The SQLSTATEs of a wait cut short: lock_timeout (lock_not_available), or the statement
#: timeout (query_canceled).
_WAIT_ENDED = frozenset({"55P03", "57014"})


class NamesakePlaceBusy(Conflict):
    """The household or grid a registration checks for namesakes is held by an import of
    residents into it (which holds it until it commits): 409 with Retry-After, as an
    import refused for another import is (person_import.ImportAreaBusy). The request waited
    for the whole import before, and died on the statement timeout with a generic 503."""

    def __init__(self, where: str) -> None:
        from .person_import import IMPORT_BUSY_RETRY_AFTER

        super().__init__(
            f"Residents are being imported into this {where}; nothing was changed. "
            "Send it again when the import has finished.",
            errors={"json": {"name": [f"an import into this {where} is running"]}},
            headers={"Retry-After": str(IMPORT_BUSY_RETRY_AFTER)},
        )


def _lock_namesakes_of(
    session: Session, household_id: int | None, place: Place, *, wait: bool = False
) -> None:
    """Wait until no other transaction is checking namesakes where a namesake check reads
    (the household, else the grid), and keep any other from doing so until this
    transaction ends (PostgreSQL; a no-op on SQLite).

    An import holds the lock of each place it registers such a resident in until it
    commits: a request waits NAMESAKE_LOCK_WAIT_MS at most (lock_timeout, in a savepoint
    that restores it) and is then answered NamesakePlaceBusy; the import (``wait``) waits
    as long as its statement timeout allows."""
    if session.get_bind().dialect.name != "postgresql":
        return
    where = f"household:{household_id}" if household_id is not None else f"grid:{place.grid_code}"
    lock = text("SELECT pg_advisory_xact_lock(:namesakes, :place)")
    params = {"namesakes": _NAMESAKE_LOCK, "place": advisory_key(where)}
    if wait:
        session.execute(lock, params)
        return
    # A savepoint of its own (not session.begin_nested, which would flush the change under
    # way before its version check): the wait cut short aborts only it, and lock_timeout
    # set in it is undone with it.
    was = session.scalar(text("SELECT current_setting('lock_timeout')"))
    session.execute(text("SAVEPOINT namesake_lock"))
    try:
        session.execute(
            text("SELECT set_config('lock_timeout', :wait, true)"),
            {"wait": f"{NAMESAKE_LOCK_WAIT_MS}ms"},
        )
        session.execute(lock, params)
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) not in _WAIT_ENDED:
            raise
        session.execute(text("ROLLBACK TO SAVEPOINT namesake_lock"))
        raise NamesakePlaceBusy("household" if household_id is not None else "grid") from None
    # Kept: the lock (the transaction's now) and the setting, undone by hand.
    session.execute(text("RELEASE SAVEPOINT namesake_lock"))
    session.execute(text("SELECT set_config('lock_timeout', :was, true)"), {"was": was})


def _is(column: Any, value: Any) -> Any:
    """Return 'column equals value', None included."""
    return column.is_(None) if value is None else column == value


#: Why a grid is refused for a resident who lives in a household (it is the household's).
_IN_A_HOUSEHOLD = "the resident lives in a household: move the household"


def create_person(
    session: Session,
    data: dict[str, Any],
    *,
    scope: Scope,
    keys: Keys,
    actor: str,
    wait_for_imports: bool = False,
    before_lookup: BeforeLookup | None = None,
) -> Person:
    """Register a resident in a household (taking its place) or directly in a grid.

    ``wait_for_imports``: wait for an import holding the place's namesake lock as long as
    it takes (an import's own rows); a request is answered NamesakePlaceBusy instead.
    ``before_lookup`` is called before the ID number is looked up in the register."""
    parsed = _check_id(data.get("id_number"))
    if parsed is None and data.get("population_type", "registered") != "foreign":
        raise _invalid("id_number", "is required (except for foreign residents)")
    phone = _check_phone(data.get("phone"))
    household = None
    if data.get("household_id") is not None:
        # Locked as a move of the household locks it: see create_household.
        household = get_household(
            session, data["household_id"], scope, field="household_id", for_update=True
        )
        place = Place(household.region_code, household.grid_code)
        if data.get("grid") and data["grid"] != household.grid_code:
            # As a change of their grid is refused (update_person): it was dropped without a
            # word, the resident registered in the household's grid, whatever grid was sent
            # (one outside the caller's scope too).
            raise _invalid("grid", _IN_A_HOUSEHOLD)
    elif data.get("grid"):
        place = place_of_grid(session, data["grid"], scope)
    else:
        raise Unprocessable(
            "Say where the resident lives: a household or a grid.",
            errors={"json": {"household_id": ["household_id or grid is required"]}},
        )
    relation = data.get("relation") or ("other" if household else None)
    if relation == "head":
        _check_head(session, household.id if household else None, None)
    if parsed is None:
        _check_namesake(
            session,
            data["name"].strip(),
            household.id if household else None,
            place,
            scope,
            wait=wait_for_imports,
        )
    person = Person(
        county_code=place.county_code,
        region_code=place.region_code,
        grid_code=place.grid_code,
        household_id=household.id if household else None,
        house_id=household.house_id if household else None,
        relation=relation,
        name=data["name"].strip(),
        ethnicity=data.get("ethnicity"),
        population_type=data.get("population_type", "registered"),
        current_address=data.get("current_address"),
        registered_address=data.get("registered_address"),
        created_by=actor,
    )
    person.uid = new_uid()
    if parsed is not None:
        _set_id_number(session, person, parsed, keys, before_lookup)
    _set_phone(person, phone, keys)
    # An ID number registered by another request between the look-up and the insert: the
    # same answer, counted the same, as when it came first (a second head cannot race: the
    # household is locked above).
    add_or_conflict(
        session,
        person,
        lambda: (
            _id_taken(session, person, person.id_number_hmac, mask_id_number(parsed.value))
            if parsed
            else None
        ),
    )
    return person


def persons_query(scope: Scope):  # type: ignore[no-untyped-def]
    return select(Person).where(in_scope(scope, Person))


def get_person(
    session: Session,
    person_id: int,
    scope: Scope,
    *,
    field: str | None = None,
    for_update: bool = False,
) -> Person:
    stmt = persons_query(scope).where(Person.id == person_id)
    return _the_one(session, stmt, "resident", person_id, field=field, for_update=for_update)


def update_person(
    session: Session,
    person_id: int,
    data: dict[str, Any],
    *,
    scope: Scope,
    keys: Keys,
    if_match: str | None = None,
    before_lookup: BeforeLookup | None = None,
) -> tuple[Person, list[str]]:
    """Change a resident; return it and the names of the fields that changed. With
    ``if_match``, only the version it names (412 otherwise). ``before_lookup`` is called
    before an ID number is looked up in the register (one sent, or theirs in the county
    they move to)."""
    person = get_person(session, person_id, scope, for_update=True)
    check_if_match(person, if_match, noun="resident", required=False)
    county_before = person.county_code
    written: dict[str, Any] = {}

    def masked_number() -> str:
        value = keys.open("persons", "id_number", person.uid, person.id_number_enc)
        return mask_id_number(value) if value else ""

    def taken() -> Conflict | None:
        # An ID number registered, or a head given to the household, by another request
        # between the look-up and the write (PostgreSQL: the unique index waited for it):
        # the same answer, counted the same, as when it came first.
        if not written:
            return None
        if written["digest"] and (
            error := _id_taken_in(
                session, written["county"], written["digest"], person_id, masked_number()
            )
        ):
            return error
        return _head_taken(session, written["household_id"], person_id)

    # The savepoint opens before the first change: opened after, it would flush them
    # outside it, and a clash would be the generic 409, counted as no lookup.
    with conflicts_as(session, taken):
        # Nothing is written before every field is set: the moves below are UPDATE statements,
        # and an autoflush before them wrote the resident half-changed (a head moving in as a
        # tenant was a second head of the household, refused by ix_persons_one_head) and
        # cleared what changed_fields reads (a move was neither audited nor named).
        with session.no_autoflush:
            changed: list[str] = []
            relation = data.get("relation", person.relation)
            household_id = data.get("household_id", person.household_id)
            if data.get("household_id") not in (None, person.household_id):
                # In scope first: the head check below answered 409 for a household out of scope
                # that has a head, and 422 for one without (telling the two apart).
                get_household(session, data["household_id"], scope, field="household_id")
            if relation == "head" and (relation, household_id) != (
                person.relation,
                person.household_id,
            ):
                _check_head(session, household_id, person.id)  # before any change is flushed
            if "household_id" in data and data["household_id"] != person.household_id:
                if data["household_id"] is None:
                    person.household_id = person.house_id = None
                else:
                    household = get_household(
                        session, data["household_id"], scope, field="household_id", for_update=True
                    )
                    person.household_id, person.house_id = household.id, household.house_id
                    person.region_code, person.grid_code = (
                        household.region_code,
                        household.grid_code,
                    )
                    person.county_code = household.county_code
                changed.append("household_id")
            # The relation goes with the household: both are written in the one UPDATE below.
            if "relation" in data:
                person.relation = data["relation"]
                changed.append("relation")
            elif "household_id" in changed and person.household_id is None:
                person.relation = None  # out of a household: related to nobody in it
            if data.get("grid") and data["grid"] != person.grid_code:
                if person.household_id is not None:
                    raise _invalid("grid", _IN_A_HOUSEHOLD)
                place = place_of_grid(session, data["grid"], scope)
                person.region_code, person.grid_code = place.region_code, place.grid_code
                person.county_code = place.county_code
                if person.house_id is not None and (
                    session.scalar(select(House.grid_code).where(House.id == person.house_id))
                    != place.grid_code
                ):
                    # Moved into another grid they have left their house (a house lies in one
                    # grid): kept, the link took them back along when the house moved later.
                    person.house_id = None
                changed.append("grid")
            if "household_id" in changed or "grid" in changed:
                # What is about them goes with them: their records, and their visits (also those
                # made at the household they leave, which stay that household's by id only).
                place = Place(person.region_code, person.grid_code)
                _move(session, SpecialGroupRecord, SpecialGroupRecord.person_id == person.id, place)
                _move(session, Visit, Visit.person_id == person.id, place)
            if "id_number" in data:
                parsed = _check_id(data["id_number"])
                if parsed is None:
                    person.id_number_enc = person.id_number_hmac = None
                    person.birth_date = person.gender = None
                else:
                    _set_id_number(session, person, parsed, keys, before_lookup)
                changed.append("id_number")
            elif person.county_code != county_before and person.id_number_enc:
                # Moved into another county: the ID number must be unique in it too (in the
                # county they leave, the unique index held it already).
                value = keys.open("persons", "id_number", person.uid, person.id_number_enc)
                _set_id_number(session, person, _check_id(value), keys, before_lookup)
            if "phone" in data:
                _set_phone(person, _check_phone(data["phone"]), keys)
                changed.append("phone")
            for key in (
                "name",
                "ethnicity",
                "population_type",
                "current_address",
                "registered_address",
            ):
                if key in data:
                    setattr(person, key, data[key].strip() if key == "name" else data[key])
                    changed.append(key)
            if person.id_number_enc is None and person.population_type != "foreign":
                raise _invalid("id_number", "is required (except for foreign residents)")
            if person.id_number_hmac is None and {
                "name",
                "household_id",
                "grid",
                "id_number",
            } & set(changed):
                # Renamed, moved, or their ID number cleared: a second record of a namesake
                # without an ID number where they now live, as a create would make.
                _check_namesake(
                    session,
                    person.name,
                    person.household_id,
                    Place(person.region_code, person.grid_code),
                    scope,
                    other_than=person.id,
                )
            changed = changed_fields(person, _PERSON_FIELDS, changed)
            written.update(
                county=person.county_code,
                digest=person.id_number_hmac,
                household_id=person.household_id if person.relation == "head" else None,
            )
        flush_versioned(session, "resident")
    return person, changed


_PERSON_FIELDS = {
    "household_id": ("household_id",),
    "grid": ("grid_code",),
    "relation": ("relation",),
    "id_number": ("id_number_hmac",),
    "phone": ("phone_hmac",),
    "name": ("name",),
    "ethnicity": ("ethnicity",),
    "population_type": ("population_type",),
    "current_address": ("current_address",),
    "registered_address": ("registered_address",),
}


def search_persons(
    session: Session, scope: Scope, args: dict[str, Any], keys: Keys, *, unmasks: bool
) -> list[Person]:
    """Return residents in scope matching every filter given, ordered by id.

    ``id_number`` and ``phone`` are matched exactly through their keyed hashes (validated
    first: a malformed value is a 422, not an empty answer); ``name`` as ``name_condition``
    says for a caller who ``unmasks`` or not; ``address`` anywhere in the current or
    registered address, both compared as ``address_key`` gives them.
    """
    stmt = person_query(scope, args, keys, unmasks=unmasks)
    limit = args.get("limit", 50)
    return one_page(session.scalars(page_by_id(stmt, Person.id, args.get("after"), limit)), limit)


def name_condition(name: str, *, unmasks: bool):  # type: ignore[no-untyped-def]
    """Return the condition of a name search: names starting with ``name`` for a caller who
    may see full names (``persons:unmask``); for one who sees them masked (张*), the one
    character the mask shows starts names and anything longer matches whole names only.

    A prefix search let a caller without ``persons:unmask`` rebuild a masked name a
    character at a time (王, then 王建, 王建国: each answer says whether a resident's name
    goes on so), which is what the mask is for."""
    name = name.strip()
    if unmasks:
        return Person.name.startswith(name, autoescape=True)
    if len(name) <= 1:
        # Not a name of that one character: its mask (*) shows nothing of it, and the
        # search, uncounted, named it in full.
        return and_(Person.name.startswith(name, autoescape=True), func.length(Person.name) > 1)
    return Person.name == name


def is_lookup(args: dict[str, Any], *, unmasks: bool) -> bool:
    """Return whether a search (or an export) with the filters in ``args`` is an exact
    lookup, counted against the caller's allowance (GRIDAPI_PERSON_LOOKUP_RATE): an ID or
    phone number, and, for a caller who sees names masked, a whole name. Such a caller sees
    张* and may search 张三: a test of one guess at the hidden part, and, uncounted, a loop
    over the few thousand characters a given name is written with read every two-character
    name back in full."""
    if args.get("id_number") or args.get("phone"):
        return True
    return _name_looked_up(args, unmasks=unmasks) is not None


def _name_looked_up(args: dict[str, Any], *, unmasks: bool) -> str | None:
    """Return the whole name a caller who sees names masked searches for (``is_lookup``),
    else None."""
    name = (args.get("name") or "").strip()
    return name if not unmasks and len(name) > 1 else None


def looked_up(args: dict[str, Any], *, unmasks: bool) -> dict[str, str]:
    """Return what a search (or an export) of residents looks someone up by, each kind masked
    as answers mask it: the numbers (``numbers_searched``) and, for a caller who sees names
    masked, a whole name (张三 → 张*). Empty when it looks nobody up."""
    found = numbers_searched(args)
    name = _name_looked_up(args, unmasks=unmasks)
    if name is not None:
        found["name"] = mask_name(name)
    return found


def person_query(  # type: ignore[no-untyped-def]
    scope: Scope, args: dict[str, Any], keys: Keys, stmt=None, *, unmasks: bool
):
    """Return ``stmt`` (default: select the residents) restricted to the residents in scope
    matching the search filters in ``args`` (shared by the search and the export); a name
    as ``name_condition`` matches it for a caller who ``unmasks`` or not."""
    stmt = select(Person) if stmt is None else stmt
    stmt = _area_filters(stmt.where(in_scope(scope, Person)), Person, args)
    if args.get("id_number"):
        parsed = _check_id(args["id_number"], location="query")  # a search's filter
        stmt = stmt.where(Person.id_number_hmac == keys.index("id_number", parsed.value))
    if args.get("phone"):
        phone = _check_phone(args["phone"], location="query")
        stmt = stmt.where(Person.phone_hmac == keys.index("phone", phone))
    if args.get("name"):
        stmt = stmt.where(name_condition(args["name"], unmasks=unmasks))
    if args.get("address"):
        # Compared as house addresses are (``address_key``): "3号楼 2单元" finds
        # "3号楼2单元", "a座" finds "A座", "３号楼" finds "3号楼", on both engines alike.
        compared = address_key(args["address"])
        stmt = stmt.where(
            or_(
                Person.current_address_key.contains(compared, autoescape=True),
                Person.registered_address_key.contains(compared, autoescape=True),
            )
        )
    for key in ("household_id", "house_id"):
        if args.get(key):
            stmt = stmt.where(getattr(Person, key) == args[key])
    if args.get("population_type"):
        stmt = stmt.where(Person.population_type == args["population_type"])
    return stmt


#: The audit action of a search of residents by an exact ID or phone number.
LOOKUP_ACTION = "person.lookup"


def numbers_searched(args: dict[str, Any]) -> dict[str, str]:
    """Return the exact numbers a search (or an export) of residents looks up — ``id_number``
    and ``phone``, each the kind of number — masked as every answer masks them
    (``3205**********1234``, ``138****5678``): what its audit row keeps. Empty when it looks
    up none. A malformed number is a 422 naming it (``errors.query``), as the search says."""
    numbers: dict[str, str] = {}
    if args.get("id_number"):
        numbers["id_number"] = mask_id_number(_check_id(args["id_number"], location="query").value)
    if args.get("phone"):
        phone = _check_phone(args["phone"], location="query")
        if phone:
            numbers["phone"] = mask_phone(phone)
    return numbers


def lookup_matches(
    session: Session, scope: Scope, args: dict[str, Any], keys: Keys, *, unmasks: bool
) -> list[tuple[int, str]]:
    """Return (id, region code) of every resident in scope an export of residents with the
    filters ``args`` holds, by id (of a lookup by number: a few rows at most)."""
    stmt = person_query(
        scope, args, keys, select(Person.id, Person.region_code), unmasks=unmasks
    ).order_by(Person.id)
    return [(person_id, region) for person_id, region in session.execute(stmt)]


def record_lookup(
    session: Session,
    actor: Actor,
    args: dict[str, Any],
    matches: Iterable[tuple[int, str]],
    *,
    scope: Scope,
    home_region: str | None,
    via: str,
    unmasks: bool,
) -> AuditEntry | None:
    """Add the audit row of a search of residents by an exact ID or phone number, or by a
    whole name for a caller who sees names masked (``person.lookup``), to the session's
    transaction, or nothing when ``args`` look nobody up (``looked_up``). Such a search
    tells whether a given person lives in the caller's area, and where: a read of sensitive
    personal information (PIPL; DOMAIN.md §7), audited as an unmasked read is, hit or miss.
    A whole name tested by a caller shown 张* is a guess at the hidden part, counted against
    the lookup allowance as a number is (``is_lookup``), and audited as one.

    The row keeps the kinds searched (``by``), each masked (``id_number_masked``,
    ``phone_masked``, ``name_masked``: never in clear), how many residents ``matched``
    (those answered: a page of the search, every row of an export) and their ids, the
    purpose code and reference when stated, and ``via`` (``search``, ``export``). It is about
    the resident when exactly one matched (``object_id``), and filed under that resident's
    region, or the one region of all that matched; otherwise (none, or several regions) under
    the region or grid searched when it lies in the scope, else the caller's ``home_region``.
    """
    numbers = looked_up(args, unmasks=unmasks)
    if not numbers:
        return None
    found = list(matches)
    ids = [person_id for person_id, _ in found]
    regions = {region for _, region in found}
    if len(regions) == 1:
        region_code: str | None = next(iter(regions))
    elif args.get("region") and scope.covers_region(args["region"]):
        region_code = args["region"]
    elif args.get("grid") and scope.covers_grid(args["grid"]):
        region_code = args["grid"][:12]
    else:
        region_code = home_region
    return _lookup_row(
        session, actor, numbers, ids, region_code, via=via, purpose=purpose_summary(args)
    )


def _lookup_row(
    session: Session,
    actor: Actor,
    numbers: dict[str, str],
    ids: list[int],
    region_code: str | None,
    *,
    via: str,
    purpose: dict[str, Any] | None = None,
) -> AuditEntry:
    """Add a ``person.lookup`` row: the numbers looked up (kind → masked), the residents
    matched (about the one when exactly one did), filed under ``region_code``."""
    summary: dict[str, Any] = {
        "by": sorted(numbers),
        **{f"{kind}_masked": masked for kind, masked in sorted(numbers.items())},
        "matched": len(ids),
        # All of them: each one's history and access export (查阅复制) reads them here. A
        # lookup is of one number or whole name within the caller's scope, so few match.
        "person_ids": ids,
        "via": via,
        **(purpose or {}),
    }
    return record(
        session,
        actor,
        LOOKUP_ACTION,
        "person",
        ids[0] if len(ids) == 1 else None,
        summary=summary,
        region_code=region_code,
    )


def record_taken_number(
    session: Session, actor: Actor, error: DuplicatePerson, *, via: str
) -> AuditEntry:
    """Add the audit row of a create or change of a resident refused because its ID number
    is registered in the county (``error``): ``person.lookup`` as a search by that number
    writes it, ``via`` ``create`` or ``update``. The 409 tells the caller that someone in the
    county has the number, wherever they live, so it is a lookup of them: about that
    resident (``object_id``; it shows in their access export), filed under their region,
    with the number masked."""
    holder = error.holder
    return record_number_holder(
        session, actor, error.masked, holder.id, holder.region_code, via=via
    )


def record_number_holder(
    session: Session, actor: Actor, masked: str, holder_id: int, region_code: str, *, via: str
) -> AuditEntry:
    """Add the ``person.lookup`` row of a write refused because the ID number (``masked``)
    is the resident ``holder_id``'s: about them, filed under their ``region_code``
    (``record_taken_number``; an import's rows, ``via`` ``import``)."""
    numbers = {"id_number": masked}
    return _lookup_row(session, actor, numbers, [holder_id], region_code, via=via)


def person_view(person: Person, keys: Keys, today: date | None = None) -> dict[str, Any]:
    """Return the masked representation of a resident (what every list and read shows)."""
    id_number = keys.open("persons", "id_number", person.uid, person.id_number_enc)
    phone = keys.open("persons", "phone", person.uid, person.phone_enc)
    return {
        "id": person.id,
        "name": mask_name(person.name),
        "id_number": mask_id_number(id_number) if id_number else None,
        "phone": mask_phone(phone) if phone else None,
        "gender": person.gender,
        "age": age_on(person.birth_date, today or clock.today()) if person.birth_date else None,
        "ethnicity": person.ethnicity,
        "population_type": person.population_type,
        "current_address": person.current_address,
        "registered_address": person.registered_address,
        "household_id": person.household_id,
        "house_id": person.house_id,
        "relation": person.relation,
        "grid": person.grid_code,
        "region_code": person.region_code,
        "county_code": person.county_code,
        "masked": True,
        "created_at": person.created_at,
        "updated_at": person.updated_at,
        "version": person.version,
    }


def reveal(person: Person, keys: Keys) -> dict[str, Any]:
    """Return the full personal values of a resident (for the audited ``/sensitive`` read)."""
    return {
        "id": person.id,
        "name": person.name,
        "id_number": keys.open("persons", "id_number", person.uid, person.id_number_enc),
        "phone": keys.open("persons", "phone", person.uid, person.phone_enc),
        "gender": person.gender,
        "birth_date": person.birth_date,
        "masked": False,
    }


# --- retention --------------------------------------------------------------------------------


def _answer_id(response: Any) -> Any:
    """Return the ``id`` of a stored answer's JSON body (None when it has none)."""
    try:
        body = orjson.loads(response) if response else None
    except orjson.JSONDecodeError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def check_reference(
    session: Session, caller: cases_svc.Caller, reference: str | None, *, location: str
) -> None:
    """Raise Unprocessable (naming ``reference`` under ``location``) when the reference of
    a purpose or an erasure is a resident's ID number written with separators
    (``110105-19491231-002X``, or a first-generation 15-digit one: ``110105-491231-002``;
    ``purposes.is_id_number_written_apart``), unless a case the caller may read has that number: a case
    number (``320508-20261130-0001``) has the same shape, and one in eleven a valid check
    digit. The schema refuses the rest (``purposes.reference_problem``); this needs the
    cases, so it is one look-up, made only for such a reference (unmasked reads, exports
    and erasures are rare requests)."""
    if not reference or not is_id_number_written_apart(reference, clock.today()):
        return
    if session.scalar(
        select(Case.id).where(Case.number == reference.strip(), cases_svc.visible_condition(caller))
    ):
        return
    raise Unprocessable(
        "The reference is a resident's ID number; the audit log keeps it for good.",
        errors={
            location: {
                "reference": [
                    "must not be an ID number (written with separators or not): the audit log "
                    "keeps it for good; a case number of that shape is taken when it is the "
                    "number of a case you can read"
                ]
            }
        },
    )


def erase_person(session: Session, person_id: int, scope: Scope) -> Person:
    """Delete a resident and what is theirs; anonymise the visits that were about them.

    Kept: the audit trail (which holds ids and field names, never values), the household
    and house (other people's too), visits to the household that named no resident; the
    visits that named them keep only their household (and go where it is), time and case.
    """
    # Locked first, as a visit or a record being made for them locks them: one recorded
    # meanwhile is committed before (and anonymised below) or finds them gone. Unlocked, a
    # visit committed after the anonymising UPDATE kept its findings, place and point on
    # PostgreSQL, the resident's deletion only setting its person_id to NULL.
    person = get_person(session, person_id, scope, for_update=True)
    session.execute(delete(SpecialGroupRecord).where(SpecialGroupRecord.person_id == person.id))
    # A visit naming them is about them, also when it carries their household (filled in
    # from the resident when the phone sent only person_id: such visits kept their findings
    # after the erasure). The stored answers of those visits repeat what is cleared below:
    # gone, a retry of such a visit gets it as it is now.
    alone = select(Visit.case_id).where(Visit.person_id == person.id, Visit.case_id.is_not(None))
    session.execute(
        delete(IdempotencyKey)
        .where(
            IdempotencyKey.key.startswith(VISIT_CASE_KEY, autoescape=True),
            IdempotencyKey.resource_id.in_(alone),
        )
        .execution_options(synchronize_session=False)
    )
    # The answers stored under the visits' own Idempotency-Keys (POST /visits, and a batch's
    # visit.create, which sends its key as one) hold the findings, place and person in full:
    # a retry answered them after the erasure. A batch's own key row keeps only status and
    # id, and stays for references.
    # A visit that reported a case keeps them under the case's id, one without under its own:
    # the rows are those whose answer is one of these visits (ids of cases and visits
    # overlap, and another visit's answer must stay, or its retry records it twice).
    theirs = session.execute(
        select(Visit.id, Visit.case_id).where(Visit.person_id == person.id)
    ).all()
    if theirs:
        visit_ids = {v.id for v in theirs}
        stored = session.execute(
            select(IdempotencyKey.id, IdempotencyKey.response).where(
                IdempotencyKey.path == VISITS_PATH,
                IdempotencyKey.resource_id.in_(
                    sorted(visit_ids | {v.case_id for v in theirs if v.case_id is not None})
                ),
                ~IdempotencyKey.key.startswith("batch:", autoescape=True),
            )
        ).all()
        doomed = [r.id for r in stored if _answer_id(r.response) in visit_ids]
        if doomed:
            session.execute(
                delete(IdempotencyKey)
                .where(IdempotencyKey.id.in_(doomed))
                .execution_options(synchronize_session=False)
            )

    # Anonymised, a visit that carried a household is that household's: it goes where the
    # household is (the resident may have moved away from it, taking the visit along).
    def household_place(column: Any) -> Any:
        at_home = select(column).where(Household.id == Visit.household_id).scalar_subquery()
        return case((Visit.household_id.is_(None), getattr(Visit, column.key)), else_=at_home)

    session.execute(
        update(Visit)
        .where(Visit.person_id == person.id)
        .values(
            findings="",
            follow_up="",
            place="",
            lon=None,
            lat=None,
            person_id=None,
            county_code=household_place(Household.county_code),
            region_code=household_place(Household.region_code),
            grid_code=household_place(Household.grid_code),
        )
        .execution_options(synchronize_session=False)
    )
    session.delete(person)
    from .exports import forget_erased  # exports builds on this module

    forget_erased(session, person.county_code)
    session.flush()
    return person


def _purpose_of(summary: dict[str, Any]) -> dict[str, Any]:
    """Why an audited processing was done: its purpose code and reference; the free text of
    a row written before purposes were codes, as it was kept (``purpose``)."""
    stated = summary.get("purpose")
    return {
        "purpose_code": summary.get("purpose_code"),
        "reference": summary.get("reference"),
        "purpose": None if "purpose_code" in summary else stated,
    }


def access_export(
    session: Session,
    person: Person,
    keys: Keys,
    *,
    with_special_groups: bool,
) -> dict[str, Any]:
    """Return everything held about one resident, for an access request (查阅复制)."""
    household = session.get(Household, person.household_id) if person.household_id else None
    house = session.get(House, person.house_id) if person.house_id else None
    visits = session.scalars(
        select(Visit).where(Visit.person_id == person.id).order_by(Visit.visited_at)
    ).all()
    audit_rows = session.scalars(
        select(AuditEntry).where(about_person(session, person.id)).order_by(AuditEntry.id)
    ).all()
    body: dict[str, Any] = {
        "person": {
            **person_view(person, keys),
            **reveal(person, keys),
            "created_by": person.created_by,
        },
        "household": household_view(household, []) if household else None,
        "house": house_view(house) if house else None,
        "visits": [visit_view(v) for v in visits],
        "processing": [
            {
                "at": a.at,
                "action": a.action,
                "actor_type": a.actor_type,
                "actor_name": a.actor_name,
                **_purpose_of(a.summary or {}),
            }
            for a in audit_rows
        ],
    }
    if with_special_groups:
        records = session.scalars(
            select(SpecialGroupRecord).where(SpecialGroupRecord.person_id == person.id)
        ).all()
        body["special_groups"] = [
            {
                "id": r.id,
                "type": r.type,
                "attention_level": r.attention_level,
                "status": r.status,
                "started_on": r.started_on,
                "ended_on": r.ended_on,
                "notes": keys.open("special_group_records", "notes", r.uid, r.notes_enc),
            }
            for r in records
        ]
    return body


# --- visits -----------------------------------------------------------------------------------


#: Visits recorded before this year are refused, as a case that occurred before it is
#: (``schemas.cases``): no visit of the register is older, and such a time is a phone's
#: clock reset or a typing slip (1900, 2000 for 2020), which sorted first in every list.
FIRST_VISIT_YEAR = 2000


def create_visit(
    session: Session,
    data: dict[str, Any],
    *,
    scope: Scope,
    snapshot: IndexSnapshot | None,
    actor: str,
    worker_id: int | None,
    now: datetime,
) -> Visit:
    """Record a visit to a household and/or a resident (their place is the visit's).
    Raises Unprocessable naming ``visited_at`` for a time in the future (beyond a phone's
    clock running ahead, as for a patrol) or before FIRST_VISIT_YEAR."""
    # In UTC as the database gives it back: the answer and every read say the same.
    visited_at = not_in_future(data.get("visited_at") or now, now, "visited_at")
    if data.get("visited_at") is not None and data["visited_at"].year < FIRST_VISIT_YEAR:
        raise _invalid("visited_at", f"lies before the year {FIRST_VISIT_YEAR}")
    household = person = None
    # The subject (the resident, else the household) is locked as a move locks it: a visit
    # recorded while they move takes their new place, never the old one (PostgreSQL; SQLite
    # serialises writers), as the move takes along only the visits it can see.
    if data.get("person_id") is not None:
        person = get_person(session, data["person_id"], scope, field="person_id", for_update=True)
    if data.get("household_id") is not None:
        household = get_household(
            session,
            data["household_id"],
            scope,
            field="household_id",
            for_update=person is None,
        )
    subject = person or household
    if subject is None:
        raise Unprocessable(
            "Say whom the visit was to: a household or a resident.",
            errors={"json": {"household_id": ["household_id or person_id is required"]}},
        )
    if person and household and person.household_id != household.id:
        raise _invalid("person_id", "is not a member of the household")
    lon = lat = None
    # 0°, 0° is a phone without a fix (``no_fix``): a visit made there has no location, as
    # a patrol's check-in; it was kept as a place in the Gulf of Guinea.
    if data.get("location") is not None and not no_fix(*data["location"]["coordinates"][:2]):
        raw_lon, raw_lat = data["location"]["coordinates"]
        lon, lat = to_wgs84(raw_lon, raw_lat, data.get("crs", "wgs84"))
    visit = Visit(
        county_code=subject.county_code,
        region_code=subject.region_code,
        grid_code=subject.grid_code,
        worker_id=worker_id,
        visited_at=visited_at,
        place=data.get("place", ""),
        lon=lon,
        lat=lat,
        household_id=household.id if household else (person.household_id if person else None),
        person_id=person.id if person else None,
        findings=data.get("findings", ""),
        follow_up=data.get("follow_up", ""),
        created_by=actor,
    )
    session.add(visit)
    session.flush()
    return visit


#: The caller's idempotency key of a visit whose case carries the phone's client_id (its
#: own, apart from POST /cases' ``client_id:<uuid>``): ``VISIT_CASE_KEY + client_id``.
VISIT_CASE_KEY = "client_id:visit:"
#: Where visits are recorded (the path their stored answers are kept under).
VISITS_PATH = "/api/v1/visits"


def visit_of_reported_case(session: Session, principal: Principal, client_id: Any) -> Visit | None:
    """Return the visit whose case the caller reported with ``client_id`` (a phone's UUID), or
    None when the caller reported no case with it.

    Raises Conflict when that case was reported otherwise (``POST /api/v1/cases``, a patrol
    finding): the client_id is taken, and there is no visit to answer with.
    """
    case_obj = cases_svc.reported_with_client_id(session, principal, client_id)
    if case_obj is None:
        return None
    visit = session.scalars(select(Visit).where(Visit.case_id == case_obj.id)).first()
    if visit is None:
        raise Conflict(
            "This client_id reported another case already.",
            errors={"json": {"client_id": ["used for another case"]}},
        )
    return visit


def get_visit(session: Session, visit_id: int, scope: Scope) -> Visit:
    visit = session.scalars(
        select(Visit).where(Visit.id == visit_id, in_scope(scope, Visit))
    ).first()
    if visit is None:
        raise _not_found("visit")
    return visit


def list_visits(session: Session, scope: Scope, args: dict[str, Any]) -> list[Visit]:
    stmt = visit_query(scope, args)
    limit = args.get("limit", 50)
    return one_page(session.scalars(page_by_id(stmt, Visit.id, args.get("after"), limit)), limit)


def visit_query(scope: Scope, args: dict[str, Any], stmt=None):  # type: ignore[no-untyped-def]
    """Return ``stmt`` (default: select the visits) restricted to the visits in scope
    matching the list filters in ``args`` (shared by the list and the export)."""
    stmt = select(Visit) if stmt is None else stmt
    stmt = _area_filters(stmt.where(in_scope(scope, Visit)), Visit, args)
    for key in ("household_id", "person_id", "worker_id"):
        if args.get(key):
            stmt = stmt.where(getattr(Visit, key) == args[key])
    if args.get("since"):
        stmt = stmt.where(Visit.visited_at >= args["since"])
    if args.get("until"):
        stmt = stmt.where(Visit.visited_at < args["until"])
    return stmt


# --- views ------------------------------------------------------------------------------------


def house_view(house: House) -> dict[str, Any]:
    location = None
    if house.lon is not None:
        location = geojson_point(house.lon, house.lat)
    return {
        "id": house.id,
        "address": house.address,
        "use": house.use,
        "location": location,
        "grid": house.grid_code,
        "region_code": house.region_code,
        "county_code": house.county_code,
        "routing_method": house.routing_method,
        "created_at": house.created_at,
        "updated_at": house.updated_at,
        "version": house.version,
    }


def household_view(household: Household, people: list[dict[str, Any]]) -> dict[str, Any]:
    head = next((p for p in people if p.get("relation") == "head"), None)
    return {
        "id": household.id,
        "number": household.number,
        "type": household.type,
        "house_id": household.house_id,
        "grid": household.grid_code,
        "region_code": household.region_code,
        "county_code": household.county_code,
        "head": {"id": head["id"], "name": head["name"]} if head else None,
        "members": people,
        "created_at": household.created_at,
        "updated_at": household.updated_at,
        "version": household.version,
    }


def visit_view(visit: Visit) -> dict[str, Any]:
    location = None
    if visit.lon is not None:
        location = geojson_point(visit.lon, visit.lat)
    return {
        "id": visit.id,
        "worker_id": visit.worker_id,
        "visited_at": visit.visited_at,
        "place": visit.place,
        "location": location,
        "household_id": visit.household_id,
        "person_id": visit.person_id,
        "findings": visit.findings,
        "follow_up": visit.follow_up,
        "case_id": visit.case_id,
        "grid": visit.grid_code,
        "region_code": visit.region_code,
        "created_by": visit.created_by,
        "created_at": visit.created_at,
    }
