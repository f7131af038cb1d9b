"""The Blueprint every resource uses: strict query parsing and declared permissions."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import flask_smorest
from flask import Flask, g, request
from marshmallow import ValidationError, fields, missing
from webargs.fields import DelimitedList, DelimitedTuple
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.routing import BaseConverter, IntegerConverter

from ..auth import requires_permission
from ..numbers import PLAIN_DECIMAL, PLAIN_WHOLE
from ..spec import RATE_LIMIT_REFS

SECURITY = [{"bearerAuth": []}, {"apiKey": []}]
ERROR_RESPONSES = {
    "UNAUTHORIZED": "Not authenticated: no, an invalid or an expired credential",
    "FORBIDDEN": "Authenticated, but the permission is missing",
    "NOT_FOUND": "Does not exist, or is outside the caller's scope (the two look the same)",
    "CONFLICT": "Conflicts with the current state",
    "PRECONDITION_FAILED": "The If-Match ETag is stale: read the object again",
    "PRECONDITION_REQUIRED": "If-Match is required: send the ETag of your last read",
    "TOO_MANY_REQUESTS": "Rate limit reached; see Retry-After",
    "BAD_REQUEST": "The body is not valid JSON (an object naming a member twice included), "
    "or not of the type the operation takes",
    "CONTENT_TOO_LARGE": "The request body is larger than GRIDAPI_MAX_BODY_MB",
    "SERVICE_UNAVAILABLE": "The database or the rate-limit storage cannot be reached; "
    "retry after Retry-After",
}


#: The answers that ask the client to wait, with the Retry-After header.
WAIT_RESPONSES = ("TOO_MANY_REQUESTS", "SERVICE_UNAVAILABLE")
RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 1},
}


#: Headers some error answers carry, by their shared response (each may be absent).
ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "UNAUTHORIZED": {
        "WWW-Authenticate": {
            "description": 'The scheme to authenticate with: `Bearer realm="gridapi"`.',
            "schema": {"type": "string"},
        }
    },
    "CONFLICT": {
        "Retry-After": {
            "description": "Seconds to wait before retrying, when the conflict passes by itself: "
            "the same `Idempotency-Key` (or `client_id`) is still in flight.",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "PRECONDITION_FAILED": {
        "ETag": {
            "description": "The object's current ETag. Read the object again before retrying "
            "with it: your change was meant for the version you read.",
            "schema": {"type": "string"},
        }
    },
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


#: What answers carrying full personal values (ID and phone numbers, special-group notes)
#: send: kept in no cache. "private, no-cache", every other GET's, let a browser on an
#: office's shared computer keep them on its disk.
NO_STORE = {"Cache-Control": "private, no-store"}
NO_STORE_HEADER = {
    "Cache-Control": {
        "description": "`private, no-store`: full personal values are kept in no cache.",
        "schema": {"type": "string", "example": "private, no-store"},
    }
}


# The Idempotency-Key request header of the operations that take one (reports, visits).
IDEMPOTENCY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Any string of 1-200 printable characters, quoted or bare, unique per "
    "request of this caller; one key (two header lines, or a comma in a bare key, → 422), "
    "compared exactly (upper and lower case are two keys). A retry with the same key and body returns the first answer "
    "(with `Idempotent-Replayed: true` and the ETag of the version it shows) and creates "
    "nothing; the same key with another body "
    "→ 422; while the first request is still running → 409 with Retry-After. Kept at least "
    "GRIDAPI_IDEMPOTENCY_DAYS (7) days.",
    "schema": {"type": "string", "maxLength": 202},
}


def if_match_header(description: str, *, example: str, required: bool = False) -> dict[str, Any]:
    """Return the If-Match header parameter of an operation that changes a versioned object:
    ``required``, a change without it is refused (428); otherwise the last writer wins."""
    return {
        "name": "If-Match",
        "in": "header",
        "required": required,
        "description": description,
        "schema": {"type": "string", "example": example},
    }


def etag_header(description: str | None = None) -> dict[str, dict[str, Any]]:
    """Return the ETag response header of an answer showing a versioned object, for
    ``response(..., headers=...)``: ``description`` says what the tag is made of."""
    header: dict[str, Any] = {"schema": {"type": "string"}}
    if description is not None:
        header["description"] = description
    return {"ETag": header}


class StrictParser(FlaskParser):
    # webargs ignores unknown query parameters by default; None defers to the schema (RAISE).
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": None,
        "querystring": None,
        # An upload's other form fields and files are refused as unknown (422), not ignored.
        "files": None,
    }

    def _raw_load_json(self, req: Any) -> Any:
        """Parse the body with the application's JSON parser (orjson), once: a view that
        reads ``request.get_json()`` again gets the object parsed here (Flask keeps it), and
        a body one parser refuses the other refuses too (the standard library's parser,
        webargs' own, takes a lone UTF-16 surrogate that orjson refuses)."""
        if not req.get_data(cache=True):
            return missing  # as webargs: no body (the schema says what is missing)
        if not is_json_request(req):
            # webargs read a body of another type as no body: a PATCH sent as text/plain
            # answered 200 and changed nothing, a report sent as a form "missing data".
            from webargs.flaskparser import abort

            abort(
                400,
                messages={
                    "json": [
                        f"The body must be JSON (Content-Type: application/json), not "
                        f"{req.mimetype or 'a body without a Content-Type'}."
                    ]
                },
            )
        return req.get_json(cache=True)  # a bad body: 400 (ApiRequest.on_json_loading_failed)

    def load_files(self, req: Any, schema: Any) -> Any:
        parts = MultiDict(req.form)
        parts.update(req.files)
        return self._makeproxy(parts, schema)

    def load_querystring(self, req: Any, schema: Any) -> Any:
        # ``fields`` (sparse fieldsets) applies to every GET and is handled after the view
        # (gridapi.phone), so operation schemas neither declare nor refuse it.
        args = req.args.copy()
        args.pop("fields", None)
        # A parameter given twice that takes one value: webargs would keep the first and
        # drop the rest (status=filed&status=dispatched listed only filed cases).
        proxy = self._makeproxy(args, schema)
        known = {f.data_key or name for name, f in schema.fields.items()}
        repeated = {
            name: ["Given more than once: send one value (a list comma-separated)."]
            for name, values in args.lists()
            if len(values) > 1 and name in known and name not in proxy.multiple_keys
        }
        if repeated:
            raise ValidationError(repeated)
        not_numbers = _not_plain_numbers(args, schema)
        if not_numbers:
            raise ValidationError(not_numbers)
        return proxy


def _number_rule(field: Any) -> tuple[re.Pattern[str], str] | None:
    """Return the text a number field takes in a query string, and the error otherwise."""
    if isinstance(field, fields.Integer):
        return PLAIN_WHOLE, "Not a valid integer."
    if isinstance(field, fields.Number):
        return PLAIN_DECIMAL, "Not a valid number."
    return None


def _not_plain_numbers(args: MultiDict, schema: Any) -> dict[str, list[str]]:
    """Return the query parameters whose numbers are not plain ASCII decimals, by name (a
    list given comma-separated is checked item by item; spaces around an item are fine)."""
    errors: dict[str, list[str]] = {}
    for name, field in schema.fields.items():
        key = field.data_key or name
        if key not in args:
            continue
        for raw in args.getlist(key):
            if isinstance(field, DelimitedTuple):
                parts = raw.split(field.delimiter)
                rules = [_number_rule(f) for f in field.tuple_fields]
            elif isinstance(field, DelimitedList):
                parts = raw.split(field.delimiter)
                rules = [_number_rule(field.inner)] * len(parts)
            elif isinstance(field, fields.List):
                parts, rules = [raw], [_number_rule(field.inner)]
            else:
                parts, rules = [raw], [_number_rule(field)]
            for part, rule in zip(parts, rules, strict=False):
                if rule is not None and not rule[0].fullmatch(part.strip(" ")):
                    errors[key] = [rule[1]]
    return errors


def _takes_query(apidoc: dict[str, Any]) -> bool:
    """Whether an operation (by its ``_apidoc``) takes query parameters: a query schema, or
    ones it documents by hand and parses itself (/locate)."""
    parsed = apidoc.get("arguments", {}).get("parameters", [])
    manual = apidoc.get("manual_parameters", [])
    return any(p.get("in") == "query" for p in [*parsed, *manual])


def _refuse_query_of_a_get_without_one() -> None:
    """Refuse the query parameters of a GET that takes none (422, as a query schema refuses
    an unknown one): /roles?bogus=1 and /clients?limit=-1 answered 200 as if understood.
    ``fields`` (sparse fieldsets, every JSON GET) is always allowed."""
    if request.method not in ("GET", "HEAD") or not request.args or request.url_rule is None:
        return
    from flask import current_app

    view = current_app.view_functions.get(request.endpoint or "")
    view_class = getattr(view, "view_class", None)
    func = getattr(view_class, "get", None) if view_class else view
    if func is None or _takes_query(getattr(func, "_apidoc", {})):
        return
    unknown = {name: ["Unknown field."] for name in request.args if name != "fields"}
    if unknown:
        from ..errors import Unprocessable

        raise Unprocessable("", errors={"query": unknown})


def _has_required_field(schema: Any) -> bool:
    instance = schema() if isinstance(schema, type) else schema
    return any(field.required for field in instance.fields.values())


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = StrictParser()

    def __init__(self, *args: Any, strict_query: bool = True, **kwargs: Any) -> None:
        """``strict_query``: a GET without query parameters refuses any (422); health
        probes (``strict_query=False``) ignore them, as monitors may add some."""
        super().__init__(*args, **kwargs)
        self._strict_query = strict_query
        self._prepare_doc_cbks.append(self._prepare_manual_parameters_doc)
        if strict_query:
            self._prepare_doc_cbks.append(self._prepare_no_query_doc)

    @staticmethod
    def doc(**kwargs: Any) -> Callable[[Any], Any]:
        """As flask-smorest's, but ``parameters`` are added to those the operation's
        ``arguments`` generate rather than replacing them: ``doc(parameters=[a path value])``
        on an operation with a query schema dropped every query parameter from the spec
        (``format`` of the monthly bulletin)."""
        parameters = kwargs.pop("parameters", None)
        decorator = flask_smorest.Blueprint.doc(**kwargs)
        if not parameters:
            return decorator

        def add_parameters(func: Any) -> Any:
            wrapper = decorator(func)  # a copy of the wrapped function's doc
            wrapper._apidoc["manual_parameters"] = [
                *wrapper._apidoc.get("manual_parameters", []),
                *parameters,
            ]
            return wrapper

        return add_parameters

    @staticmethod
    def _prepare_no_query_doc(
        doc: dict[str, Any], doc_info: dict[str, Any], *, method: str = "", **_: Any
    ) -> dict[str, Any]:
        """A GET that takes no query parameters refuses any (422): document it."""
        checked = "x-permission" in doc_info.get("manual_doc", {})  # requires() or public()
        if method == "get" and checked and not _takes_query(doc_info):
            doc.setdefault("responses", {}).setdefault("422", _ref("UNPROCESSABLE_ENTITY"))
        return doc

    @staticmethod
    def _prepare_manual_parameters_doc(
        doc: dict[str, Any], doc_info: dict[str, Any], **_: Any
    ) -> dict[str, Any]:
        manual = doc_info.get("manual_parameters")
        if manual:
            doc.setdefault("parameters", []).extend(deepcopy(manual))
        return doc

    def alt_response(
        self, status_code: Any, response: Any = None, *, description: Any = None, **kwargs: Any
    ) -> Callable[[Any], Any]:
        """As flask-smorest's, but a shared error answer given a ``description`` of its own
        (``alt_response(409, response="CONFLICT", description="…")``) is published with that
        description: flask-smorest kept the bare reference and dropped it, so the spec never
        said which conflict an operation answers (a report's in-flight retry, a transition
        not allowed now)."""
        if response in ERROR_RESPONSES and description is not None:
            headers = ERROR_HEADERS.get(response)
            if response in WAIT_RESPONSES:
                headers = {"Retry-After": RETRY_AFTER_HEADER}
            if response == "TOO_MANY_REQUESTS":
                headers = {**headers, **RATE_LIMIT_REFS}
            return super().alt_response(
                status_code, schema="Error", description=description, headers=headers, **kwargs
            )
        return super().alt_response(status_code, response, description=description, **kwargs)

    def arguments(self, schema: Any, *, location: str = "json", **kwargs: Any) -> Any:
        """As flask-smorest's, but a JSON body whose schema requires nothing is published as
        optional: the request may leave it out (it then reads as ``{}``)."""
        if location == "json" and "required" not in kwargs:
            kwargs["required"] = _has_required_field(schema)
        # One instance per operation: given a class, webargs builds a schema (deep-copying
        # every field, nested schemas again) on every request. Schemas hold no request state.
        if isinstance(schema, type):
            schema = schema()
        return super().arguments(schema, location=location, **kwargs)

    def requires(self, permission: str) -> Callable[[Any], Any]:
        """Decorate an operation: the caller must hold ``permission`` (published as
        ``x-permission`` with the security requirement and the 401/403 answers)."""

        def decorator(func: Any) -> Any:
            wrapped = requires_permission(permission)(self._checks_query(func))
            return self.doc(
                **{
                    "x-permission": permission,
                    "security": SECURITY,
                    "responses": {"401": _ref("UNAUTHORIZED"), "403": _ref("FORBIDDEN")},
                }
            )(wrapped)

        return decorator

    def public(self, func: Any) -> Any:
        """Decorate an operation that needs no credentials."""
        return self.doc(**{"x-permission": None, "security": []})(self._checks_query(func))

    def _checks_query(self, func: Any) -> Any:
        """Refuse the query parameters of a GET that takes none, once the caller is known
        (so an unknown parameter answers as a known one would: 401 first, then 422)."""
        if not self._strict_query:
            return func

        @functools.wraps(func)
        def checked(*args: Any, **kwargs: Any) -> Any:
            _refuse_query_of_a_get_without_one()
            return func(*args, **kwargs)

        return checked

    def takes_routing_snapshot(self) -> None:
        """Take the routing snapshot at the start of each request of this blueprint, before
        its transaction (``routing_snapshot()`` returns it).

        Checking the snapshot may read on a connection of its own. Taken later, a write
        request would hold its connection (on SQLite, the write lock) while waiting for a
        second one, and with as many writers queued as the pool has connections nobody gets
        one: 20 retries of one report at once answered 500 (pool timeout) and 503 (database
        is locked) after 30 s.
        """
        self.before_request(_take_routing_snapshot)


def _take_routing_snapshot() -> None:
    from ..extensions import state

    g.routing_snapshot = state().routing.snapshot()


def routing_snapshot() -> Any:
    """Return the request's routing snapshot (``Blueprint.takes_routing_snapshot``)."""
    from ..extensions import state

    return g.get("routing_snapshot") or state().routing.snapshot()


def one_file(field: str = "file") -> FileStorage:
    """Return the file sent in the multipart field ``field``.

    Raises Unprocessable (``errors.files.<field>``, where the schema puts a missing file)
    when the field is text rather than a file, or holds several files: the schema keeps the
    first value only, so the others would be dropped while the client believed them sent.
    """
    from ..errors import Unprocessable

    files = request.files.getlist(field)
    if field in request.form or not files:
        message = f"The field {field} must be a file (a part with a file name), not text."
        raise Unprocessable(message, errors={"files": {field: [message]}})
    if len(files) > 1:
        message = f"Send one file per request: {len(files)} were sent, none was stored."
        raise Unprocessable(message, errors={"files": {field: [message]}})
    return files[0]


# --- path converters: the router refuses what the spec says is out of range ----------------

MAX_ID = 2**31 - 1


class IdConverter(IntegerConverter):
    """A row id in a path: a positive 32-bit integer (``<id:case_id>``); anything else is 404."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(map, min=1, max=MAX_ID)


MAX_BIG_ID = 2**63 - 1


class BigIdConverter(IntegerConverter):
    """The id of a row of a table that grows with events (``<bigid:delivery_id>``): a
    positive 64-bit integer; anything else is 404."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:  # noqa: A002
        super().__init__(map, min=1, max=MAX_BIG_ID)


class DigitsConverter(BaseConverter):
    """A region, grid or category code in a path (``<digits:code>``): 1-20 ASCII digits."""

    regex = r"[0-9]{1,20}"


class DateConverter(BaseConverter):
    """A calendar day in a path (``<date:day>``): ``YYYY-MM-DD``, passed on as text."""

    regex = r"[0-9]{4}-[0-9]{2}-[0-9]{2}"


def install_converters(app: Flask, api: Any) -> None:
    """Register the path converters with the router and their schemas with the spec."""
    app.url_map.converters.update(
        id=IdConverter, bigid=BigIdConverter, digits=DigitsConverter, date=DateConverter
    )
    api.register_converter(
        IdConverter,
        lambda _c: {"type": "integer", "format": "int32", "minimum": 1, "maximum": MAX_ID},
    )
    api.register_converter(
        BigIdConverter,
        lambda _c: {"type": "integer", "format": "int64", "minimum": 1, "maximum": MAX_BIG_ID},
    )
    api.register_converter(
        DigitsConverter, lambda _c: {"type": "string", "pattern": "^[0-9]{1,20}$"}
    )
    api.register_converter(DateConverter, lambda _c: {"type": "string", "format": "date"})
