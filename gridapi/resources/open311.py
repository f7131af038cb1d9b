"""Open311 GeoReport v2 under /open311/v2/: discovery, services, requests, tokens; JSON and XML.

A plain Flask blueprint, not part of the OpenAPI document: Open311 has its own contract
(docs/open311.md), its own error shape (``[{"code", "description"}]`` or
``<errors><error>``) and its own authentication (``api_key`` in the form or query).
"""

from __future__ import annotations

import logging
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from flask import Blueprint, Response, current_app, g, request
from limits.errors import StorageError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound

from ..auditing import request_actor
from ..auth import Forbidden, Principal, Unauthorized, _authenticate, current_principal
from ..errors import LIMITS_RETRY_AFTER, DomainError
from ..extensions import commit, commit_adds_nothing, db_session, state
from ..jsonio import dumps_bytes
from ..services import cases as cases_svc
from ..services import idempotency, intake
from ..services import open311 as svc

log = logging.getLogger(__name__)

bp = Blueprint("open311", __name__, url_prefix="/open311/v2")

_FORMATS = "<any(json, xml):fmt>"
_MIMETYPES = {"json": "application/json", "xml": "text/xml"}
# Plural XML elements and the element each of their items is written as.
_ITEM_TAGS = {
    "services": "service",
    "service_requests": "request",
    "attributes": "attribute",
    "values": "value",
    "endpoints": "endpoint",
    "formats": "format",
    "errors": "error",
}
_REQUESTS_PATH = "/open311/v2/requests"
# What XML 1.0 cannot carry: C0 controls but tab, newline and carriage return, U+FFFE,
# U+FFFF and lone surrogates. Stored text may hold them (the native API takes them), and
# ElementTree writes them as they are, so no parser could read the answer.
_NOT_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


# --- representation ---------------------------------------------------------------------------


def _xml_text(value: str) -> str:
    """Return text with each character XML 1.0 forbids replaced by U+FFFD."""
    return _NOT_XML.sub("\ufffd", value)


def _xml_value(parent: ET.Element, tag: str, value: Any) -> None:
    element = ET.SubElement(parent, tag)
    if isinstance(value, dict):
        for key, item in value.items():
            _xml_value(element, key, item)
    elif isinstance(value, list):
        for item in value:
            _xml_value(element, _ITEM_TAGS.get(tag, "item"), item)
    elif isinstance(value, bool):
        element.text = "true" if value else "false"
    elif value is not None:
        element.text = _xml_text(str(value))


def _xml(root: str, body: Any) -> bytes:
    """Return ``body`` (a list of items, or one object) as an XML document under ``root``."""
    element = ET.Element(root)
    if isinstance(body, list):
        for item in body:
            _xml_value(element, _ITEM_TAGS.get(root, "item"), item)
    else:
        for key, item in body.items():
            _xml_value(element, key, item)
    # A raw CR is read as LF by every XML parser (end-of-line handling, XML 1.0 §2.11): as a
    # character reference it stays a CR. Only text holds one (the tags are fixed names).
    return ET.tostring(element, encoding="utf-8", xml_declaration=True).replace(b"\r", b"&#13;")


def _answer(
    fmt: str, root: str, body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    data = _xml(root, body) if fmt == "xml" else dumps_bytes(body)
    response = Response(data, status=status, mimetype=_MIMETYPES[fmt], headers=headers)
    if fmt == "xml":
        response.charset = "utf-8"
    return response


def _format_of_path() -> str:
    return "xml" if request.path.rstrip("/").endswith(".xml") else "json"


def _error(status: int, description: str, headers: dict[str, str] | None = None) -> Response:
    return _answer(
        _format_of_path(),
        "errors",
        [{"code": status, "description": description}],
        status,
        headers,
    )


def _describe(exc: DomainError) -> str:
    """Return a domain error's message with its field messages, for one Open311 line."""
    details: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, list):
            details.append(f"{prefix}: {'; '.join(str(v) for v in value)}")
        elif value is not None:
            details.append(f"{prefix}: {value}")

    for location, fields in (exc.errors or {}).items():
        if location in ("json", "form", "query") and isinstance(fields, dict):
            walk("", fields)
        else:
            walk(location, fields)
    return exc.message + (f" ({', '.join(details)})" if details else "")


@bp.errorhandler(Exception)
def _open311_error(exc: Exception) -> Response:
    """Answer every failure of this blueprint in the Open311 error shape."""
    if isinstance(exc, DomainError):
        # Open311 knows 400 for bad input: a native 422 (unknown attribute, no region) is one.
        status = 400 if exc.status == 422 else exc.status
        if isinstance(exc, Unauthorized):
            status = 403  # Open311 answers a missing or bad api_key with 403
        headers = {k: v for k, v in exc.headers.items() if k.lower() != "www-authenticate"}
        return _error(status, _describe(exc), headers)
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        # Its own headers: a 405's Allow (RFC 9110 requires it), a 429's Retry-After.
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return _error(status, exc.description or "error", headers)
    if isinstance(exc, IntegrityError):
        return _error(409, "The change conflicts with existing data.")
    if isinstance(exc, DataError):
        # The database refused a value (out of range for its column, text it cannot hold):
        # bad input the checks above missed, as the native API answers it (there 422).
        log.info("Open311 data error: %s", exc.orig)
        return _error(400, "A value is out of range for what can be stored.")
    if isinstance(exc, OperationalError | PoolTimeout):
        return _error(
            503, "The database is busy or unavailable; retry shortly.", {"Retry-After": "2"}
        )
    if isinstance(exc, StorageError):
        # Redis (GRIDAPI_REDIS_URL) counts the keys' requests: refused while it cannot, as
        # on the native API (this catch-all answered it as an unexpected 500).
        log.warning("rate-limit storage unavailable: %s", exc.storage_error)
        return _error(
            503,
            "The rate-limit storage is unavailable; retry shortly.",
            {"Retry-After": str(LIMITS_RETRY_AFTER)},
        )
    log.exception("unhandled Open311 error (request %s)", g.get("request_id"))
    return _error(500, f"An unexpected error occurred (request id {g.get('request_id', '-')}).")


# --- who asks -----------------------------------------------------------------------------


def _caller(required: bool) -> Principal | None:
    """Return the caller named by ``api_key`` (form or query), or by the native headers.

    Raises Unauthorized (answered 403) when a key is required and missing, or is invalid.
    """
    given = request.args.getlist("api_key") + (
        request.form.getlist("api_key") if request.method == "POST" else []
    )
    if len(given) > 1:
        # In the query and in the form (or twice in either): the query's won and the form's
        # was dropped, so which client acted could not be told from the request.
        raise svc.BadRequest(f"api_key was sent {len(given)} times: send it once")
    key = (given[0] if given else "").strip()
    if "\x00" in key:  # no key holds it, and PostgreSQL cannot look it up (500)
        raise Unauthorized("The API key is invalid or revoked.")
    if key:
        principal = _authenticate("key", key)
        g.principal = principal
        return principal
    principal = current_principal(required=False)
    if principal is None and required:
        raise Unauthorized("api_key is required: send the key of an API client (gk_…).")
    return principal


def _reader() -> cases_svc.Caller | None:
    """Return the keyed reader, or None for a public read (when configured); else 403."""
    settings = state().settings
    principal = _caller(required=not settings.open311_public_read)
    if principal is None:
        return None
    if not principal.can("cases:read"):
        raise Forbidden("This api_key may not read service requests (it lacks cases:read).")
    return cases_svc.caller_of(db_session(), principal)


def _tz() -> ZoneInfo:
    return ZoneInfo(state().settings.timezone)


# --- discovery and services ---------------------------------------------------------------


@bp.get(f"/discovery.{_FORMATS}")
def discovery(fmt: str) -> Response:
    """The discovery document: where the endpoint is, its formats and how to get a key."""
    base = request.url_root.rstrip("/") + bp.url_prefix + "/"
    body = {
        "changeset": "2026-11-28T00:00:00+08:00",
        "contact": "The operator of this gridapi instance (county governance centre 综治中心).",
        "key_service": "Ask the operator for an API client key (gk_…) with cases:write.",
        "endpoints": [
            {
                "specification": "http://wiki.open311.org/GeoReport_v2",
                "url": base,
                "changeset": "2026-11-28T00:00:00+08:00",
                "type": "production",
                "formats": ["application/json", "text/xml"],
            }
        ],
    }
    return _answer(fmt, "discovery", body)


@bp.get(f"/services.{_FORMATS}")
def services(fmt: str) -> Response:
    """Every active category as a service; always public."""
    return _answer(fmt, "services", svc.services(db_session()))


@bp.get(f"/services/<code>.{_FORMATS}")
def service_definition(code: str, fmt: str) -> Response:
    """A category's attribute schema as a service definition; always public."""
    category = svc.service_category(db_session(), code)
    return _answer(fmt, "service_definition", svc.service_definition(category))


# --- requests -----------------------------------------------------------------------------


def _views(session, cases: list, *, public: bool) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    settings = state().settings
    agencies = svc.agency_names(session, cases)
    categories = svc.category_names(session, cases)
    return [
        svc.request_view(
            c,
            agencies=agencies,
            categories=categories,
            tz=_tz(),
            public=public,
            round_m=settings.open311_round_m,
        )
        for c in cases
    ]


@bp.get(f"/requests.{_FORMATS}")
def requests_list(fmt: str) -> Response:
    """Service requests: filters of the standard plus page/page_size, updated_after/_before."""
    caller = _reader()
    session = db_session()
    query = svc.parse_request_query(request.args, _tz(), state().settings.open311_page_size)
    rows = svc.find_requests(session, caller, query, datetime.now(UTC))
    return _answer(fmt, "service_requests", _views(session, rows, public=caller is None))


@bp.get(f"/requests/<request_id>.{_FORMATS}")
def request_detail(request_id: str, fmt: str) -> Response:
    """One service request, as a list of one (as the standard says)."""
    caller = _reader()
    session = db_session()
    case_obj = svc.find_request(session, caller, request_id)
    return _answer(fmt, "service_requests", _views(session, [case_obj], public=caller is None))


@bp.get(f"/tokens/<token>.{_FORMATS}")
def token(token: str, fmt: str) -> Response:
    """The request id of a token. Requests are created at once (POST answers the id), so a
    token is simply a case id or number, for clients that always ask."""
    caller = _reader()
    case_obj = svc.find_request(db_session(), caller, token)
    body = [{"service_request_id": str(case_obj.id), "token": token}]
    return _answer(fmt, "service_requests", body)


def _form_items() -> list[tuple[str, list[str]]]:
    return [(key, request.form.getlist(key)) for key in request.form]


@bp.post(f"/requests.{_FORMATS}")
def requests_create(fmt: str) -> Response:
    """Create a service request: the same report as POST /api/v1/cases (routing, numbering,
    deadlines, duplicates, idempotency, audit), from a form-encoded Open311 post."""
    if request.mimetype not in svc.FORM_TYPES:
        # A JSON body was answered "service_code is required" (or "api_key is required").
        raise svc.NotAForm(
            f"The body is {request.mimetype}: post the request form-encoded "
            "(application/x-www-form-urlencoded or multipart/form-data), as GeoReport v2 does."
        )
    if request.mimetype == "application/x-www-form-urlencoded":
        # Read in the charset the client declares (werkzeug reads UTF-8 only).
        request.form = ImmutableMultiDict(  # type: ignore[misc]
            svc.parse_form(request.get_data(cache=True), request.mimetype_params.get("charset"))
        )
    principal = _caller(required=True)
    assert principal is not None
    if not principal.can("cases:write"):
        raise Forbidden("This api_key may not create service requests (it lacks cases:write).")
    svc.refuse_nul(_form_items())
    svc.refuse_repeated(_form_items())
    snapshot = (
        state().routing.snapshot()
    )  # before the transaction (Blueprint.takes_routing_snapshot)
    session = db_session()
    st = state()
    code = (request.form.get("service_code") or "").strip()
    if not code:
        raise svc.BadRequest("service_code is required")
    category = svc.service_category(session, code)
    data = svc.report_arguments(category, request.form, _form_items(), _tz())
    key = idempotency.parse_header(request.headers.get("Idempotency-Key"))
    keys = [f"key:{key}"] if key else []
    form = {k: v for k, v in _form_items() if k != "api_key"}
    body_hash = idempotency.request_hash("POST", _REQUESTS_PATH, form)

    def respond(case, duplicates, category) -> str:  # type: ignore[no-untyped-def]
        unit = case.grid_code and snapshot.grid_name(case.grid_code)
        unit = unit or svc.region_names(session, [case.region_code]).get(case.region_code)
        notice = f"已登记，案件编号 {case.number}，由{unit or case.region_code}受理。"
        if duplicates:
            notice += f" 附近已有 {len(duplicates)} 件同类未结案件，可能重复。"
        body = [
            {
                "service_request_id": str(case.id),
                "service_notice": notice,
                "account_id": None,
                "case_number": case.number,
            }
        ]
        return dumps_bytes(body).decode()

    taken = intake.report_once(
        session,
        data,
        principal=principal,
        actor=request_actor(),
        keys=keys,
        body_hash=body_hash,
        path=_REQUESTS_PATH,
        snapshot=snapshot,
        calendar=st.calendar(session),
        now=datetime.now(UTC),
        duplicate_window_hours=st.settings.duplicate_window_hours,
        keep_days=st.settings.idempotency_days,
        respond=respond,
        audit_summary={"via": "open311"},
        alone=commit_adds_nothing(),
    )
    if taken.replayed:
        session.rollback()
        headers = {"Idempotent-Replayed": "true"}
    else:
        commit()
        headers = {}
    return _answer(fmt, "service_requests", orjson.loads(taken.payload), taken.status_code, headers)


# Not strict about the slash: Werkzeug redirected /open311/v2 to /open311/v2/ with an HTML page.
@bp.route(
    "/",
    defaults={"rest": ""},
    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    strict_slashes=False,
)
@bp.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown(rest: str) -> Response:
    """Anything else under /open311/v2/: 404, or 405 for a known path and another method."""
    allowed = [m for m in _methods_of(request.path) if m != request.method]
    if allowed:  # a 405 names what is allowed (Allow, RFC 9110)
        raise MethodNotAllowed(valid_methods=[*allowed, *(["HEAD"] if "GET" in allowed else [])])
    raise NotFound(f"{request.path} is not an Open311 GeoReport v2 resource")


def _methods_of(path: str) -> list[str]:
    """Return the methods (GET, POST) an Open311 resource answers at ``path`` (none for a
    path that is not one)."""
    adapter = current_app.url_map.bind("localhost")
    found = []
    for method in ("GET", "POST"):
        try:
            endpoint, _ = adapter.match(path, method=method)
        except HTTPException:
            continue
        if endpoint != "open311.unknown":
            found.append(method)
    return found


@bp.before_request
def _options() -> Response | None:
    """Answer OPTIONS with the methods the resource answers: Flask's own listed the
    catch-all's too (PUT, PATCH, DELETE, which then answered 405)."""
    if request.method != "OPTIONS":
        return None
    methods = _methods_of(request.path)
    if not methods:
        raise NotFound(f"{request.path} is not an Open311 GeoReport v2 resource")
    response = current_app.response_class(status=204)  # as every other path: no body
    del response.headers["Content-Type"]
    response.headers["Allow"] = ", ".join([*methods, *(["HEAD"] if "GET" in methods else [])])
    response.headers["Allow"] += ", OPTIONS"
    return response
