"""What makes the API kind to phones on slow, metered networks.

* **Compression**: gzip (or brotli, zstd) of JSON and GeoJSON answers, by Flask-Compress,
  when the client sends ``Accept-Encoding``.
* **Conditional GETs**: every JSON answer to a GET carries an ``ETag`` (the case's own
  ``"<id>-<version>"`` where an operation sets one, else a digest of the body); a request
  with a matching ``If-None-Match`` gets ``304 Not Modified`` and no body.
* **Sparse fieldsets**: ``fields=id,status,deadlines`` keeps only those members of each
  object (of each item of a list answer, or of the answer itself); nested members are named
  with dots (``grid.code``). ``id`` is always kept.
* **Compressed requests**: a body sent with ``Content-Encoding: gzip`` (or ``deflate``) is
  decoded before anything reads it (``DecodedRequestBody``); another coding answers 415.

The ``fields`` query parameter and the 304 answer are added to the spec of every GET that
answers JSON or GeoJSON, unless streamed (``FieldsPlugin``).
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from apispec import BasePlugin
from flask import Flask, Response, g, has_request_context, request
from flask_compress import Compress
from werkzeug.http import parse_date

from .errors import BODY_TOO_LARGE, DomainError, Unprocessable

compress = Compress()
FIELDS_PARAMETER = {
    "name": "fields",
    "in": "query",
    "required": False,
    "description": "Sparse fieldset: comma-separated members to keep in each object of the "
    "answer (dots for nested members, e.g. `id,status,grid.code`); `id` is always kept. "
    "With `fields`, only the members named (and `id`) are present, so the members the "
    "answer's schema marks required are required only without `fields`. In a list "
    "(`items`) each item is cut so and the list's own members (`next`…) stay. A name the "
    "answer does not hold is ignored, not an error.",
    "schema": {"type": "string", "maxLength": 1000},  # MAX_FIELDS_LENGTH
}
MAX_FIELDS_LENGTH = 1000
#: The Cache-Control of every JSON answer to a GET (unless the view sets another).
CACHE_CONTROL_HEADER = {
    "description": "`private, no-cache`: a cache may keep the answer for this caller only, "
    "and asks again (`If-None-Match`) before reusing it.",
    "schema": {"type": "string"},
}
NOT_MODIFIED = {
    "description": "Not modified: the `If-None-Match` ETag is current (no body).",
    "headers": {
        "ETag": {"description": "The current entity tag.", "schema": {"type": "string"}},
        "Cache-Control": CACHE_CONTROL_HEADER,
    },
}
#: The 304 answer, a shared component (``NOT_MODIFIED``) of the spec.
NOT_MODIFIED_REF = {"$ref": "#/components/responses/NOT_MODIFIED"}
#: The ETag every JSON answer to a GET carries (``_phone_after_request``), documented on each.
ETAG_HEADER = {
    "description": "The answer's entity tag: send it back as `If-None-Match` to get 304 while "
    "it is current (and, where the operation says so, as `If-Match` with a change).",
    "schema": {"type": "string"},
}
_JSON_TYPES = ("application/json", "application/geo+json")
# Answers larger than this are not filtered or digested in memory (streamed exports).
_MAX_BODY = 32 * 1024 * 1024


#: Marks an operation whose answer is streamed or sent from a file (``blp.doc(**STREAMED)``):
#: the after-request filter never sees its body, so neither ``fields`` nor 304 apply to it,
#: whatever its type. The marker itself is not published.
STREAMED = {"x-gridapi-streamed": True}


class FieldsPlugin(BasePlugin):
    """Documents ``fields``, 304 and the ``ETag`` and ``Cache-Control`` of the 200 answer on every GET operation that
    answers JSON or GeoJSON (as ``_phone_after_request`` applies them), except those marked
    ``STREAMED``."""

    def operation_helper(self, path: str | None = None, operations: Any = None, **_: Any) -> None:
        for method, operation in (operations or {}).items():
            streamed = operation.pop(*STREAMED, False)
            if method != "get" or streamed:
                continue
            responses = operation.get("responses", {})
            ok = responses.get(200) or responses.get("200") or {}
            content = ok.get("content", {}) if isinstance(ok, dict) else {}
            if not any(media_type in content for media_type in _JSON_TYPES):
                continue
            operation.setdefault("parameters", []).append(FIELDS_PARAMETER)
            responses.setdefault(304, NOT_MODIFIED_REF)
            # Every such answer has one (a digest of the body where the view sets none): a
            # client generated from the spec otherwise never learns it may ask for a 304.
            headers = ok.setdefault("headers", {})
            named = {name.lower() for name in headers}
            if "etag" not in named:
                headers["ETag"] = ETAG_HEADER
            if "cache-control" not in named:
                headers["Cache-Control"] = CACHE_CONTROL_HEADER


#: A phone's clock within this of the server's is taken as right: the ``Date`` header's
#: one-second resolution and an upload over a slow network never move a report's time.
CLOCK_SLACK = timedelta(seconds=60)
#: A clock off by more than this is not corrected (its times are judged as they are).
CLOCK_MAX = timedelta(days=366)
_NO_OFFSET = timedelta(0)

DATE_HEADER = {
    "name": "Date",
    "in": "header",
    "required": False,
    "description": "When the request was sent, by the sender's own clock (RFC 9110 §6.6.1, "
    "e.g. `Sat, 28 Nov 2026 01:12:00 GMT`). A phone whose clock is off by more than a minute "
    "(and less than a year) has the times it reports (`occurred_at`, `visited_at`, a "
    "heartbeat's `at`) moved by that much to the server's clock before they are checked and "
    "stored, so that a fast clock's report is not refused as lying in the future. Send it "
    "again with each retry: it is read, never stored (except by a patrol's start, which "
    "keeps it as `clock_offset_s` for the patrol's later times). Without it (or unreadable) "
    "the times are taken as written.",
    "schema": {"type": "string", "example": "Sat, 28 Nov 2026 01:12:00 GMT"},
}


def clock_offset() -> timedelta:
    """Return how far the sender's clock is behind the server's (negative: ahead), read from
    the request's ``Date`` header; zero outside a request, without the header or with one
    that cannot be read, within ``CLOCK_SLACK`` or beyond ``CLOCK_MAX``.

    The offset of a report queued offline is the clock's error when it was sent, which is
    its error when it was written (a clock drifts seconds a day): the offline time is not in
    it, since the header is the time of sending. Sentry corrects its events' times by the
    envelope's ``sent_at`` the same way.
    """
    if not has_request_context():
        return _NO_OFFSET
    offset = g.get("_clock_offset")
    if offset is None:
        offset = _NO_OFFSET
        sent = parse_date(request.headers.get("Date"))
        if sent is not None:
            # Subtracted as it is: in UTC, 9999-12-31 23:59:59 -12:00 lies past the last
            # instant Python can hold (astimezone raised OverflowError: a 500).
            ahead = datetime.now(UTC) - sent
            if CLOCK_SLACK < abs(ahead) <= CLOCK_MAX:
                offset = ahead
        g._clock_offset = offset
    return offset


def in_server_time(data: dict[str, Any], name: str) -> dict[str, Any]:
    """Return ``data`` (a loaded body) with its date-time ``name``, written by the phone's
    clock, moved by ``clock_offset`` to the server's; as it is without an offset or a value."""
    offset = clock_offset()
    if offset and data.get(name) is not None:
        data[name] = data[name] + offset
    return data


def parse_fields(value: str | None) -> list[list[str]] | None:
    if not value:
        return None
    paths = [p.strip().split(".") for p in value.split(",") if p.strip()]
    return paths or None


def _keep(obj: Any, paths: list[list[str]]) -> Any:
    if isinstance(obj, list):
        return [_keep(item, paths) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out: dict[str, Any] = {}
    if "id" in obj:
        out["id"] = obj["id"]
    for path in paths:
        head = path[0]
        if head not in obj:
            continue
        if len(path) == 1:
            out[head] = obj[head]
        else:
            nested = _keep(obj[head], [path[1:]])
            if isinstance(out.get(head), dict) and isinstance(nested, dict):
                out[head].update(nested)
            else:
                out[head] = nested
    return out


def sparse(body: Any, paths: list[list[str]]) -> Any:
    """Keep ``paths`` in each item of a list answer (``items``, ``changes``…) or in the
    object itself."""
    if isinstance(body, dict) and isinstance(body.get("items"), list):
        return {**body, "items": _keep(body["items"], paths)}
    return _keep(body, paths)


def _check_fields() -> Response | None:
    """Refuse a ``fields`` list longer than the spec allows (422, the one error body)."""
    value = request.args.get("fields")
    if value is not None and len(value) > MAX_FIELDS_LENGTH:
        raise Unprocessable(
            "The fields list is too long.",
            errors={"query": {"fields": [f"at most {MAX_FIELDS_LENGTH} characters"]}},
        )
    return None


def _phone_after_request(response: Response) -> Response:
    if request.method not in ("GET", "HEAD") or response.status_code != 200:
        return response
    if response.is_streamed or response.direct_passthrough:
        return response
    if response.mimetype not in _JSON_TYPES or response.content_length is None:
        return response
    if response.content_length > _MAX_BODY:
        return response
    paths = parse_fields(request.args.get("fields"))
    if paths:
        body = orjson.loads(response.get_data())
        response.set_data(orjson.dumps(sparse(body, paths)))
    if "ETag" not in response.headers:
        digest = hashlib.blake2b(response.get_data(), digest_size=16).hexdigest()
        response.set_etag(digest)
    response.headers.setdefault("Cache-Control", "private, no-cache")
    return response.make_conditional(request)


#: Content codings a request body may carry, with the zlib window bits that read them
#: (47: gzip or zlib, told by the header; 15: zlib, HTTP's "deflate").
REQUEST_CODINGS = {"gzip": 47, "x-gzip": 47, "deflate": 15}
ACCEPTED_REQUEST_CODINGS = "gzip, deflate, identity"
#: Where the middleware leaves a body it could not decode, for the request to refuse.
_BODY_ERROR = "gridapi.request_body_error"
#: The environ key of how many bytes a compressed request body took to send (before it was
#: decoded): an upload judged by its size is judged by what it cost to send.
SENT_BODY_BYTES = "gridapi.sent_body_bytes"


class BodyNotDecoded(DomainError):
    """A request body the server cannot decode: its coding is unknown (415), its bytes are
    not of the coding named (400), or decoded it is over GRIDAPI_MAX_BODY_MB (413)."""

    def __init__(self, status: int, message: str, errors: dict[str, Any] | None = None):
        super().__init__(message, errors=errors)
        self.status = status
        if status == 415:  # RFC 7694: say which codings are taken
            self.headers = {"Accept-Encoding": ACCEPTED_REQUEST_CODINGS}


def _inflate(data: bytes, coding: str, max_bytes: int) -> bytes:
    """Return ``data`` decoded from ``coding``; BodyNotDecoded when it is not of that coding
    or decodes to more than ``max_bytes`` (a small body that inflates to gigabytes)."""
    attempts = [REQUEST_CODINGS[coding]] + ([-15] if coding == "deflate" else [])
    for wbits in attempts:  # "deflate" is zlib by the RFC, raw deflate by some clients
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(data, max_bytes + 1)
        except zlib.error:
            continue
        if len(out) > max_bytes:
            raise BodyNotDecoded(413, BODY_TOO_LARGE)
        if inflater.eof:
            return out
    raise BodyNotDecoded(
        400,
        f"The request body is not {coding} data, as its Content-Encoding says (or it is cut off).",
        {"headers": {"Content-Encoding": [f"the body is not {coding} data"]}},
    )


def _read_body(environ: dict[str, Any], max_bytes: int) -> bytes | None:
    """Return the body as sent, at most ``max_bytes`` + 1 bytes; None when it has none."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    if stream is None:
        return None
    if length:
        try:
            size = int(length)
        except ValueError:
            return None
        if size <= 0:
            return None
        if size > max_bytes:
            raise BodyNotDecoded(413, BODY_TOO_LARGE)
        return stream.read(size)
    if environ.get("wsgi.input_terminated"):  # chunked: the server ends the stream
        data = stream.read(max_bytes + 1)
        if len(data) > max_bytes:  # not a cut-off gzip (400): a body over the limit
            raise BodyNotDecoded(413, BODY_TOO_LARGE)
        return data or None
    return None


def _decode_body(environ: dict[str, Any], max_bytes: int) -> None:
    header = environ.get("HTTP_CONTENT_ENCODING", "")
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return
    unknown = [c for c in codings if c not in REQUEST_CODINGS]
    if unknown:
        if _read_body(environ, max_bytes) is None:
            return  # no body: nothing is coded (a GET that copies its headers)
        raise BodyNotDecoded(
            415,
            f"A request body coded {unknown[0]!r} is not taken: send it gzip, deflate or as is.",
            {"headers": {"Content-Encoding": [f"one of {ACCEPTED_REQUEST_CODINGS}"]}},
        )
    data = _read_body(environ, max_bytes)
    if data is None:
        return
    environ[SENT_BODY_BYTES] = len(data)
    for coding in reversed(codings):  # applied in the order listed, undone last first
        data = _inflate(data, coding, max_bytes)
    environ["wsgi.input"] = io.BytesIO(data)
    environ["wsgi.input_terminated"] = False
    environ["CONTENT_LENGTH"] = str(len(data))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    del environ["HTTP_CONTENT_ENCODING"]


class DecodedRequestBody:
    """WSGI middleware: a request body sent with ``Content-Encoding: gzip`` or ``deflate``
    (an app that compresses its offline queue) reaches the application decoded, so that
    JSON, forms, idempotency (which compares the JSON, not the bytes) and the body limit see
    what was meant. It was read as JSON as sent: "not valid JSON", and a phone that drops a
    report refused 400 lost it; a body in a coding the server does not know was taken as
    plain. A body that cannot be decoded is refused by the request it came with
    (``refuse_undecoded_body``), with the one error body."""

    def __init__(self, app: Callable[..., Iterable[bytes]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if "HTTP_CONTENT_ENCODING" in environ:
            try:
                _decode_body(environ, self.max_bytes)
            except BodyNotDecoded as exc:
                environ[_BODY_ERROR] = exc
                environ["wsgi.input"] = io.BytesIO(b"")
                environ["CONTENT_LENGTH"] = "0"
                environ.pop("HTTP_CONTENT_ENCODING", None)
        return self.app(environ, start_response)


def refuse_undecoded_body() -> None:
    """Raise the error the middleware found in the request's body, before a view runs."""
    error = request.environ.get(_BODY_ERROR)
    if error is not None:
        raise error


def init_app(app: Flask) -> None:
    """Compression first, so that conditional GETs and sparse fields see the plain body
    (Flask runs after-request functions in reverse order of registration). Compressed
    request bodies are decoded below Flask (``DecodedRequestBody``)."""
    app.wsgi_app = DecodedRequestBody(  # type: ignore[method-assign]
        app.wsgi_app, int(app.config["MAX_CONTENT_LENGTH"])
    )
    app.before_request(refuse_undecoded_body)
    app.config.setdefault("COMPRESS_MIMETYPES", list(_JSON_TYPES))
    app.config.setdefault("COMPRESS_MIN_SIZE", 1024)
    app.config.setdefault("COMPRESS_ALGORITHM", ["gzip", "br", "deflate"])
    app.config.setdefault("COMPRESS_STREAMS", False)
    compress.init_app(app)
    app.before_request(_check_fields)
    app.after_request(_phone_after_request)
