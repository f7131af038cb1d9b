"""What makes the API kind to phones on slow, metered networks.

* **Compression**: gzip (or brotli, zstd) of JSON and GeoJSON answers, by Flask-Compress,
  when the client sends ``Accept-Encoding``.
* **Conditional GETs**: every JSON answer to a GET carries an ``ETag`` (the case's own
  ``"<id>-<version>"`` where an operation sets one, else a digest of the body); a request
  with a matching ``If-None-Match`` gets ``304 Not Modified`` and no body.
* **Sparse fieldsets**: ``fields=id,status,deadlines`` keeps only those members of each
  object (of each item of a list answer, or of the answer itself); nested members are named
  with dots (``grid.code``). ``id`` is always kept.

The ``fields`` query parameter and the 304 answer are added to the spec of every GET that
answers JSON or GeoJSON, unless streamed (``FieldsPlugin``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from apispec import BasePlugin
from flask import Flask, Response, request
from flask_compress import Compress

from .errors import Unprocessable

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


def init_app(app: Flask) -> None:
    """Compression first, so that conditional GETs and sparse fields see the plain body
    (Flask runs after-request functions in reverse order of registration)."""
    app.config.setdefault("COMPRESS_MIMETYPES", list(_JSON_TYPES))
    app.config.setdefault("COMPRESS_MIN_SIZE", 1024)
    app.config.setdefault("COMPRESS_ALGORITHM", ["gzip", "br", "deflate"])
    app.config.setdefault("COMPRESS_STREAMS", False)
    compress.init_app(app)
    app.before_request(_check_fields)
    app.after_request(_phone_after_request)
