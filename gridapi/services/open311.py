"""Open311 GeoReport v2 mapping: categories as services, cases as service requests, and an
Open311 form as the arguments of a native report.

Pure mapping and queries: takes a Session, never commits, imports nothing from Flask. The
HTTP side (formats, keys, the one transaction) is ``gridapi.resources.open311``.
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any
from urllib.parse import unquote_to_bytes

from sqlalchemy import ColumnElement, or_, select, text
from sqlalchemy.orm import Session

from ..errors import DomainError
from ..geo.crs import SUPPORTED_CRS
from ..geo.shapes import geojson_point
from ..models import Case, Category, Department
from ..models.cases import TERMINAL
from ..numbers import MAX_EXACT, PLAIN_DECIMAL, PLAIN_WHOLE
from ..personal import NUMBER_IN_NAME, InvalidValue, mask_phone, number_in_name, parse_phone
from ..schemas.common import ID32, instant_problem
from .cases import STATUS_NAMES, SUBCLASS_SQL, Caller, region_names, visible_condition
from .categories import in_display_order

# Open311 knows two states; the detailed state travels in status_notes and detailed_status.
CLOSED_STATES = TERMINAL
OPEN311_STATUS = {s: ("closed" if s in CLOSED_STATES else "open") for s in STATUS_NAMES}
DATATYPES = {
    "string": "string",
    "text": "text",
    "number": "number",
    "date": "datetime",
    "single_choice": "singlevaluelist",
    "multiple_choice": "multivaluelist",
}
SOURCES = ("open311", "hotline", "web", "third_party")
MAX_PAGE_SIZE = 1000
DEFAULT_WINDOW_DAYS = 90
REPORTER_ROLE = "报告人"
_CODE = re.compile(r"[0-9]{2}(?:[0-9]{2})?")
_ATTRIBUTE_KEY = re.compile(r"attribute\[([^\[\]]+)\](\[\])?")
#: The date part of an Open311 datetime given for a date attribute (as the categories take).
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MEDIA_LINE = "\n\n图片 media_url: "
_CJK = re.compile(r"[\u3400-\u9fff]")
# A case id is ASCII digits: str.isdigit() also takes "²", which int() refuses, and "١",
# which int() reads as 1.
_DIGITS = re.compile(r"[0-9]+")
#: W3C-DTF (www.w3.org/TR/NOTE-datetime): YYYY, YYYY-MM, YYYY-MM-DD, then hh:mm, :ss, .s and
#: a zone (gridapi reads a time without one in its own zone).
_W3C = re.compile(
    r"[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]+)?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
NUL_MESSAGE = "Must not contain NUL characters (U+0000)."
#: The fields of a posted request that are read as one value. Sent twice, which was meant
#: cannot be told: the first was taken and the other dropped without a word.
#: (`jurisdiction_id`, `device_id` and `account_id` are not read, so not among them.)
SINGLE_FIELDS = frozenset(
    {
        "api_key",
        "service_code",
        "lat",
        "long",
        "crs",
        "address_string",
        "description",
        "media_url",
        "first_name",
        "last_name",
        "phone",
        "email",
        "source",
    }
)
#: The longest reporter's name a case party holds (the native API's, PartySchema's).
MAX_NAME_LENGTH = 100
#: Text on either side of one @: what an e-mail address is at the least.
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


class BadRequest(DomainError):
    """Open311's 400: a field is missing or invalid."""

    status = 400


class ServiceNotFound(DomainError):
    status = 404


class NotAForm(DomainError):
    """A body Open311 does not read: requests are posted form-encoded (GeoReport v2)."""

    status = 415


#: The bodies a POST of a service request may have (none at all, with the query, too).
FORM_TYPES = frozenset({"", "application/x-www-form-urlencoded", "multipart/form-data"})


# --- services -----------------------------------------------------------------------------


def service_categories(session: Session) -> list[Category]:
    """Return the categories offered as services: active subclasses, and active classes
    without active subclasses (a report may name either)."""
    rows = list(
        session.scalars(in_display_order(select(Category).where(Category.is_active.is_(True))))
    )
    parents = {c.parent_code for c in rows if c.parent_code}
    return [c for c in rows if c.parent_code or c.code not in parents]


def service(category: Category, group: str | None) -> dict[str, Any]:
    """Return a category as an Open311 service."""
    description = (category.intake_standard or "").strip() or category.name
    keywords = [k for k in (group, category.name) if k]
    return {
        "service_code": category.code,
        "service_name": category.name,
        "description": description,
        "metadata": bool(category.attributes),
        "type": "realtime",
        "keywords": ",".join(keywords),
        "group": group or category.name,
    }


def services(session: Session) -> list[dict[str, Any]]:
    """Return every service, in display order."""
    rows = service_categories(session)
    parents = {c.parent_code for c in rows if c.parent_code}
    named = session.execute(select(Category.code, Category.name).where(Category.code.in_(parents)))
    names = {code: name for code, name in named}
    return [service(c, names.get(c.parent_code) if c.parent_code else None) for c in rows]


def service_category(session: Session, code: str) -> Category:
    """Return the active category of a service code: one ``services`` lists, not a class
    with active subclasses (a report names the subclass). Raises ServiceNotFound."""
    category = session.get(Category, code) if _CODE.fullmatch(code or "") else None
    if category is None or not category.is_active or _has_subclasses(session, category):
        raise ServiceNotFound(f"service_code {code!r} not found")
    return category


def _has_subclasses(session: Session, category: Category) -> bool:
    if category.parent_code:
        return False
    return session.execute(text(SUBCLASS_SQL), {"c": category.code}).first() is not None


def service_definition(category: Category) -> dict[str, Any]:
    """Return the category's attribute schema as an Open311 service definition."""
    attributes = []
    for order, attr in enumerate(category.attributes or [], start=1):
        kind = attr["type"]
        item: dict[str, Any] = {
            "variable": True,
            "code": attr["code"],
            "datatype": DATATYPES.get(kind, "string"),
            "required": bool(attr.get("required")),
            "datatype_description": "a date, YYYY-MM-DD" if kind == "date" else None,
            "order": order,
            "description": attr.get("label") or attr["code"],
        }
        if kind in ("single_choice", "multiple_choice"):
            item["values"] = [{"key": v, "name": v} for v in attr.get("values") or []]
        attributes.append(item)
    return {"service_code": category.code, "attributes": attributes}


# --- posting ------------------------------------------------------------------------------


#: Charset labels read as GB 18030, the superset that decodes all of them (as browsers do,
#: WHATWG Encoding: "gb2312" and "gbk" name the GBK decoder, which is GB 18030's).
_GB_LABELS = frozenset({"gbk", "gb2312", "gb_2312", "gb-2312", "x-gbk", "cp936", "gb18030"})


def parse_form(body: bytes, charset: str | None) -> list[tuple[str, str]]:
    """Return the fields (in order) of a form-encoded body read in its declared ``charset`` (UTF-8 when
    none is declared). Raises BadRequest for an unknown charset or bytes that are not text in
    it.

    Werkzeug reads every form as UTF-8 and replaces what is not: a hotline system posting
    GBK (many Chinese city systems still do) got its description stored as mojibake, and
    unescaped GBK bytes lost the field altogether. Fields are percent-decoded to bytes first,
    then decoded, so escaped and raw bytes read alike.
    """
    label = (charset or "utf-8").strip().strip('"').lower()
    encoding = "gb18030" if label in _GB_LABELS else label
    try:
        # A text encoding: hex, base64, rot13 and the like are codecs too, known to
        # codecs.lookup, whose decode of bytes raised LookupError (a 500). The flag is the
        # one bytes.decode itself checks.
        text_codec = getattr(codecs.lookup(encoding), "_is_text_encoding", True)
    except LookupError:
        text_codec = False
    if not text_codec:
        raise BadRequest(
            f"The form's charset {charset!r} is not one this service reads: "
            "post UTF-8 (or declare GBK / GB18030)."
        ) from None
    fields: list[tuple[str, str]] = []
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, _, value = pair.partition(b"=")
        try:
            key, text = (
                unquote_to_bytes(part.replace(b"+", b" ")).decode(encoding)
                for part in (name, value)
            )
        except UnicodeDecodeError:
            raise BadRequest(
                f"The form is not {'UTF-8' if charset is None else charset} text: declare the "
                "charset it is in (Content-Type: application/x-www-form-urlencoded; "
                "charset=GBK), or post UTF-8."
            ) from None
        fields.append((key, text))
    return fields


def refuse_nul(items: Iterable[tuple[str, list[str]]]) -> None:
    """Raise BadRequest naming the first form field whose name or value holds NUL.

    PostgreSQL cannot store U+0000 in text (the insert failed with 500) and SQLite would
    keep it, so both engines answer the same 400, as the native API does.
    """
    for key, values in items:
        if "\x00" in key:
            raise BadRequest(f"form field names must not contain NUL characters: {key!r}")
        if any("\x00" in value for value in values):
            raise BadRequest(f"{key}: {NUL_MESSAGE}")


def refuse_repeated(items: Iterable[tuple[str, list[str]]]) -> None:
    """Raise BadRequest naming the first of the `SINGLE_FIELDS` sent more than once."""
    for key, values in items:
        if key in SINGLE_FIELDS and len(values) > 1:
            raise BadRequest(f"{key} was sent {len(values)} times: send it once")


def _decimal(raw: str) -> float | None:
    """Return a plain ASCII decimal number (sign, fraction, exponent allowed), else None."""
    return float(raw) + 0.0 if PLAIN_DECIMAL.fullmatch(raw) else None  # -0.0 is 0.0


def _float(form: Mapping[str, str], name: str) -> float | None:
    raw = form.get(name) or ""
    if not raw.strip():
        return None
    value = _decimal(raw)
    if value is None:
        raise BadRequest(f"{name} must be a number (decimal degrees)")
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number")
    return value


def _attribute_value(attr: dict[str, Any] | None, values: list[str], tz: tzinfo) -> Any:
    """Return a form value converted to what the category's schema expects (a date sent as
    an Open311 datetime with an offset is the date it is in ``tz``, the county's zone)."""
    kind = attr["type"] if attr else "string"
    if kind == "multiple_choice":
        return [v for v in values if v != ""]
    value = values[-1] if values else ""
    if kind == "number" and value.strip():
        number = _decimal(value)
        if number is None:
            return value  # check_attributes names it: "must be a number"
        if PLAIN_WHOLE.fullmatch(value):
            return int(value)  # exact (through a float 2**63 - 1 became 2**63)
        return int(number) if number.is_integer() and abs(number) <= MAX_EXACT else number
    if kind == "date" and len(value) > 10 and value[10] in "T " and _DAY.fullmatch(value[:10]):
        # An Open311 datetime: the schema holds its date where the county is (what
        # JavaScript's toISOString() writes, 2026-11-27T20:00:00Z, is the 28th in UTC+8).
        # Only one whose date is YYYY-MM-DD, as check_attributes takes: fromisoformat also
        # reads ISO weeks (2026-W48-1T08:00), which became a date nobody had written.
        try:
            moment = datetime.fromisoformat(value)
            return (moment.astimezone(tz) if moment.tzinfo else moment).date().isoformat()
        except (ValueError, OverflowError):  # not a datetime, or past year 9999 there
            return value[:10]  # check_attributes judges the date part
    return value


def attributes_from_form(
    category: Category, items: Iterable[tuple[str, list[str]]], tz: tzinfo
) -> dict:
    """Return ``attribute[code]`` / ``attribute[code][]`` form fields as attribute values.

    Raises BadRequest naming an attribute of one value (any but a multivaluelist) sent more
    than once: keeping one of them would drop what the caller may have meant.
    """
    schema = {a["code"]: a for a in category.attributes or []}
    values: dict[str, list[str]] = {}
    for key, found in items:
        match = _ATTRIBUTE_KEY.fullmatch(key)
        if match:
            values.setdefault(match.group(1), []).extend(found)
    for code, found in values.items():
        attr = schema.get(code)
        if attr and attr["type"] != "multiple_choice" and len(found) > 1:
            raise BadRequest(f"attribute[{code}] was sent {len(found)} times: send it once")
    return {code: _attribute_value(schema.get(code), found, tz) for code, found in values.items()}


def mask_contact_phone(raw: str) -> str:
    """Return a phone number masked (138****5678); numbers we cannot parse keep 2+2 digits."""
    try:
        return mask_phone(parse_phone(raw))
    except InvalidValue:
        digits = re.sub(r"\D", "", raw)
        if len(digits) < 6:
            return "*" * len(digits)
        return digits[:2] + "*" * (len(digits) - 4) + digits[-2:]


def mask_email(raw: str) -> str:
    """Return z***@example.com for zhang@example.com."""
    local, _, domain = raw.strip().partition("@")
    return (local[:1] + "***@" + domain) if domain else "***"


def reporter_party(form: Mapping[str, str]) -> dict[str, str] | None:
    """Return the reporter as a case party: the name as given, contact masked.

    Full phone numbers and e-mail addresses are not kept: the hotline that posts holds its
    caller's contact, and no function here calls a reporter back (DOMAIN.md §7: collect
    nothing no function needs).

    Raises BadRequest for a name that is an ID or phone number (a party's name is kept
    unencrypted) or longer than a party's name may be, and for an e-mail that is no address.
    """
    first = (form.get("first_name") or "").strip()
    last = (form.get("last_name") or "").strip()
    phone = (form.get("phone") or "").strip()
    email = (form.get("email") or "").strip()
    if not (first or last or phone or email):
        return None
    for field, value in (("first_name", first), ("last_name", last)):
        if number_in_name(value):
            raise BadRequest(f"{field} {NUMBER_IN_NAME}")
    # 张 + 三: a Chinese name is family name first, without a space.
    name = last + first if _CJK.search(first + last) else " ".join(p for p in (first, last) if p)
    if number_in_name(name):  # a number split between the two
        raise BadRequest(f"first_name and last_name together {NUMBER_IN_NAME}")
    if len(name) > MAX_NAME_LENGTH:  # it was cut there without a word
        raise BadRequest(
            f"first_name and last_name together are longer than {MAX_NAME_LENGTH} characters"
        )
    if email and not _EMAIL.fullmatch(email):
        raise BadRequest("email must be an e-mail address (name@example.com)")
    notes = []
    if phone:
        notes.append(f"电话 {mask_contact_phone(phone)}")
    if email:
        notes.append(f"邮箱 {mask_email(email)}")
    party = {"role": REPORTER_ROLE, "name": name or "（未留姓名）"}
    if notes:
        party["note"] = "；".join(notes)[:500]
    return party


def report_arguments(
    category: Category,
    form: Mapping[str, str],
    items: Iterable[tuple[str, list[str]]],
    tz: tzinfo,
) -> dict[str, Any]:
    """Return the arguments of ``cases.report`` for an Open311 POST form (dates of
    attributes in ``tz``, the county's zone).

    Raises BadRequest for a missing or invalid location, description or extension field.
    """
    lat, lon = _float(form, "lat"), _float(form, "long")
    address = (form.get("address_string") or "").strip()
    if (lat is None) != (lon is None):
        raise BadRequest("lat and long must be sent together")
    if lat is None:
        if address:
            raise BadRequest(
                "lat and long are required: address_string alone cannot be routed to a grid "
                "(no geocoder is configured); send the point, address_string is kept as text"
            )
        raise BadRequest("lat and long are required")
    assert lon is not None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise BadRequest("lat must be in -90..90 and long in -180..180")
    crs = (form.get("crs") or "wgs84").strip().lower()
    if crs not in SUPPORTED_CRS:
        raise BadRequest(f"crs must be one of {', '.join(SUPPORTED_CRS)}")
    source = (form.get("source") or "open311").strip()
    if source not in SOURCES:
        raise BadRequest(f"source must be one of {', '.join(SOURCES)}")
    description = (form.get("description") or "").strip() or category.name
    if len(description) > 5000:  # the description as sent: the media_url line is ours
        raise BadRequest("description is longer than 5000 characters")
    media_url = (form.get("media_url") or "").strip()
    if media_url:
        if not re.fullmatch(r"https?://\S{1,2000}", media_url):
            raise BadRequest("media_url must be an http(s) URL")
        description += _MEDIA_LINE + media_url
    if len(address) > 500:
        raise BadRequest("address_string is longer than 500 characters")
    party = reporter_party(form)
    return {
        "category": category.code,
        "description": description,
        "location": geojson_point(lon, lat),
        "crs": crs,
        "accuracy_m": None,
        "address": address,
        "occurred_at": None,
        "source": source,
        "urgent": False,
        "severity": "general",
        "parties": [party] if party else [],
        "attributes": attributes_from_form(category, items, tz),
        "client_id": None,
    }


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestQuery:
    ids: list[str]
    service_codes: list[str]
    start: datetime | None
    end: datetime | None
    statuses: list[str]
    updated_after: datetime | None
    updated_before: datetime | None
    jurisdiction: str | None
    page: int
    page_size: int


def _list(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_datetime(
    name: str, value: str | None, tz: tzinfo, *, upper: bool = False
) -> datetime | None:
    """Return a W3C datetime (a date alone, or one without an offset, is in ``tz``).

    A year, month or day alone given as an ``upper`` bound (``end_date``,
    ``updated_before``) is its period's last instant: ``end_date=2026-11-30`` meant that
    day's midnight, so a request filed on it was left out of a query for the day. So is a
    time to the minute or the second (answers give times to the second: a request shown
    as filed at 09:30:15 was left out of ``end_date=…09:30:15``); one with a fraction is
    that instant.
    """
    if not value:
        return None
    text = value.strip().replace(" ", "+", 1) if "T" in value else value.strip()
    wrong = BadRequest(f"{name} must be a W3C datetime, e.g. 2026-11-28T09:30:00+08:00")
    # W3C-DTF's forms only (Python reads ISO 8601's others too: 2026-W48, 20261130,
    # 2026-11-28T09), and the year and the month alone, which it refused.
    if not (match := _W3C.fullmatch(text)):
        raise wrong
    period = {4: "year", 7: "month", 10: "day"}.get(len(text))
    if match.group(3) and not match.group(5):  # hh:mm or hh:mm:ss, no fraction
        period = "second" if match.group(4) else "minute"
    if len(text) in (4, 7):
        text = f"{text}-01-01"[:10]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise wrong from None
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
    if problem := instant_problem(parsed):
        raise BadRequest(f"{name}: {problem}")
    return _period_end(parsed, period) if upper and period is not None else parsed


def _period_end(start: datetime, period: str) -> datetime:
    """Return the last microsecond of the year, month, day, minute or second that begins
    at ``start``."""
    if period in ("minute", "second"):
        return start + timedelta(**{f"{period}s": 1}) - timedelta(microseconds=1)
    if period == "day":
        following = start.date() + timedelta(days=1)
    elif period == "month":
        following = (start.date().replace(day=28) + timedelta(days=4)).replace(day=1)
    else:
        following = start.date().replace(year=start.year + 1)
    return datetime.combine(following, start.timetz()) - timedelta(microseconds=1)


def _int(name: str, value: str | None, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        number = int(value) if PLAIN_WHOLE.fullmatch(value) else None
    except ValueError:  # more digits than int() converts
        number = None
    if number is None:
        raise BadRequest(f"{name} must be a whole number")
    if not low <= number <= high:
        raise BadRequest(f"{name} must be in {low}..{high}")
    return number


def parse_request_query(
    args: Mapping[str, str], tz: tzinfo, default_page_size: int
) -> RequestQuery:
    """Return the filters of GET requests. Raises BadRequest naming the bad parameter."""
    statuses = [s.lower() for s in _list(args.get("status"))]
    for s in statuses:
        if s not in ("open", "closed"):
            raise BadRequest("status must be open, closed, or both comma-separated")
    codes = _list(args.get("service_code"))
    for code in codes:
        if not _CODE.fullmatch(code):
            raise BadRequest(f"service_code {code!r} is not a service code")
    jurisdiction = (args.get("jurisdiction_id") or "").strip() or None
    # A county's 12-digit form ends in six zeros: a township's code (320508001000) was read
    # as its county, a filter wider than the one asked for.
    if jurisdiction is not None and not re.fullmatch(r"[0-9]{6}(?:000000)?", jurisdiction):
        raise BadRequest(
            "jurisdiction_id must be a county code (320508, or its 12-digit form 320508000000)"
        )
    query = RequestQuery(
        ids=_list(args.get("service_request_id")),
        service_codes=codes,
        start=parse_datetime("start_date", args.get("start_date"), tz),
        end=parse_datetime("end_date", args.get("end_date"), tz, upper=True),
        statuses=statuses,
        updated_after=parse_datetime("updated_after", args.get("updated_after"), tz),
        updated_before=parse_datetime("updated_before", args.get("updated_before"), tz, upper=True),
        jurisdiction=jurisdiction[:6] if jurisdiction else None,
        page=_int("page", args.get("page"), 1, 1, 1_000_000),
        page_size=_int(
            "page_size",
            args.get("page_size"),
            min(default_page_size, MAX_PAGE_SIZE),
            1,
            MAX_PAGE_SIZE,
        ),
    )
    if len(query.ids) > MAX_PAGE_SIZE:
        raise BadRequest(f"at most {MAX_PAGE_SIZE} service_request_id values")
    # A range that ends before it starts matches nothing: answered [] as if no request had
    # been filed in it, where the native list refuses it (422). Said, as a typo usually is.
    for low, high, start, end in (
        ("start_date", "end_date", query.start, query.end),
        ("updated_after", "updated_before", query.updated_after, query.updated_before),
    ):
        if start is not None and end is not None and end < start:
            raise BadRequest(f"{high} lies before {low}: the range is empty")
    return query


def _id_condition(ids: Sequence[str]) -> ColumnElement[bool]:
    """Return the condition matching cases by id (ASCII digits) or number (anything else).

    A value holding NUL matches nothing: no case number holds it, and PostgreSQL refuses
    to compare it (the query failed with 500).
    """
    usable = [i for i in ids if "\x00" not in i]
    numbers = [i for i in usable if not _DIGITS.fullmatch(i)]
    # Only ids a case can have: past 32 bits PostgreSQL refused the whole query (400, and
    # the other ids of the list went unanswered) where a missing id matches nothing.
    case_ids = [
        n for i in usable if _DIGITS.fullmatch(i) and len(i) < 16 if (n := int(i)) <= ID32.max
    ]
    return or_(Case.number.in_(numbers), Case.id.in_(case_ids))


def visibility(caller: Caller | None) -> ColumnElement[bool]:
    """Return what a caller may read: its scope, or (public) every case not sensitive."""
    if caller is None:
        return Case.sensitive.is_(False)
    return visible_condition(caller)


def find_requests(
    session: Session, caller: Caller | None, query: RequestQuery, now: datetime
) -> list[Case]:
    """Return a page of the cases matching the query that the caller may read, newest first.

    ``service_request_id`` overrides the other filters and paging (as the standard says);
    without any date filter the answer covers the last 90 days.
    """
    conditions: list[ColumnElement[bool]] = [visibility(caller)]
    if query.ids:
        conditions.append(_id_condition(query.ids))
    else:
        if query.service_codes:
            conditions.append(
                or_(
                    *(
                        Case.category_code == code
                        if len(code) == 4
                        else Case.category_code.startswith(code, autoescape=True)
                        for code in query.service_codes
                    )
                )
            )
        if query.statuses and len(set(query.statuses)) == 1:
            closed = Case.status.in_(CLOSED_STATES)
            conditions.append(closed if query.statuses[0] == "closed" else ~closed)
        dated = query.start or query.end or query.updated_after or query.updated_before
        if query.start:
            conditions.append(Case.reported_at >= query.start)
        elif not dated:
            conditions.append(Case.reported_at >= now - timedelta(days=DEFAULT_WINDOW_DAYS))
        if query.end:
            conditions.append(Case.reported_at <= query.end)
        if query.updated_after:
            conditions.append(Case.updated_at >= query.updated_after)
        if query.updated_before:
            conditions.append(Case.updated_at <= query.updated_before)
        if query.jurisdiction:
            conditions.append(Case.county_code == query.jurisdiction)
    stmt = select(Case).where(*conditions).order_by(Case.reported_at.desc(), Case.id.desc())
    if query.ids:
        # Every case asked for (at most MAX_PAGE_SIZE ids): paging applied too, and the
        # cases past the first page were left out without a word.
        stmt = stmt.limit(len(query.ids))
    else:
        stmt = stmt.offset((query.page - 1) * query.page_size).limit(query.page_size)
    return list(session.scalars(stmt))


def find_request(session: Session, caller: Caller | None, request_id: str) -> Case:
    """Return one case by number (or id) that the caller may read. Raises ServiceNotFound."""
    found = session.scalars(
        select(Case).where(_id_condition([request_id]), visibility(caller)).limit(1)
    ).first()
    if found is None:
        raise ServiceNotFound(f"service_request_id {request_id!r} not found")
    return found


def snap(lon: float, lat: float, metres: float) -> tuple[float, float]:
    """Return the point moved to the centre of its cell on a grid of ``metres``.

    The latitude step is fixed; the longitude step is taken at the snapped latitude, so
    every point of a cell lands on the same spot (about ``metres`` apart east-west too).
    """
    if metres <= 0:
        return lon, lat
    dlat = metres / 111_320.0
    lat_s = (math.floor(lat / dlat) + 0.5) * dlat
    dlon = metres / (111_320.0 * max(math.cos(math.radians(lat_s)), 1e-6))
    lon_s = (math.floor(lon / dlon) + 0.5) * dlon
    return round(lon_s, 6), round(lat_s, 6)


def split_media(description: str) -> tuple[str, str | None]:
    """Return the description and the media_url an Open311 post appended to it."""
    text, sep, url = description.rpartition(_MEDIA_LINE)
    if sep and url and " " not in url:
        return text, url
    return description, None


def agency_names(session: Session, cases: Sequence[Case]) -> dict[str, str]:
    """Return the names of the units holding the cases: ``dept:<id>`` or a region code."""
    names = region_names(session, {c.responsible_region_code for c in cases})
    departments = {c.department_id for c in cases if c.department_id}
    if departments:
        rows = session.execute(
            select(Department.id, Department.name).where(Department.id.in_(departments))
        )
        names.update({f"dept:{i}": n for i, n in rows})
    return names


def category_names(session: Session, cases: Sequence[Case]) -> dict[str, str]:
    codes = {c.category_code for c in cases}
    if not codes:
        return {}
    rows = session.execute(select(Category.code, Category.name).where(Category.code.in_(codes)))
    return {code: name for code, name in rows}


def w3c(value: datetime | None, tz: tzinfo) -> str | None:
    """Return a moment as W3C datetime with the offset of ``tz``: 2026-11-28T09:30:00+08:00."""
    return value.astimezone(tz).isoformat(timespec="seconds") if value else None


def stage_deadline(c: Case) -> datetime | None:
    """Return the deadline of the case's current stage: acceptance, handling, verification
    (a closed case keeps its handling deadline, to compare with when it closed)."""
    if c.status in ("feedback", "verified") and c.verify_due_at:
        return c.verify_due_at
    if c.status in ("reported", "accepted") and not c.handle_due_at:
        return c.accept_due_at
    return c.handle_due_at


def request_view(
    c: Case,
    *,
    agencies: dict[str, str],
    categories: dict[str, str],
    tz: tzinfo,
    public: bool,
    round_m: float,
) -> dict[str, Any]:
    """Return a case as an Open311 service request.

    ``public``: an answer to a caller without a key: no description, address, media or
    contact (free text may name people), the location snapped to ``round_m``.
    """
    agency = agencies.get(f"dept:{c.department_id}") if c.department_id else None
    agency = agency or agencies.get(c.responsible_region_code) or c.responsible_region_code
    view: dict[str, Any] = {
        "service_request_id": str(c.id),
        "status": OPEN311_STATUS[c.status],
        "status_notes": f"{STATUS_NAMES[c.status]} ({c.status})",
        "service_name": categories.get(c.category_code, c.category_code),
        "service_code": c.category_code,
    }
    if public:
        lon, lat = snap(c.lon, c.lat, round_m)
    else:
        description, media_url = split_media(c.description)
        lon, lat = c.lon, c.lat
        view["description"] = description
    view.update(
        {
            "agency_responsible": agency,
            "service_notice": None,
            "requested_datetime": w3c(c.reported_at, tz),
            "updated_datetime": w3c(c.updated_at, tz),
            "expected_datetime": w3c(stage_deadline(c), tz),
        }
    )
    if not public:
        view["address"] = c.address or None
    view.update({"address_id": None, "zipcode": None, "lat": lat, "long": lon})
    if not public:
        view["media_url"] = media_url
    view.update(
        {
            "gridapi_status": c.status,
            "gridapi_status_name": STATUS_NAMES[c.status],
            "case_number": c.number,
            "jurisdiction_id": c.county_code,
            "overdue": bool(c.overdue),
        }
    )
    return view
