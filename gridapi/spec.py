"""The OpenAPI document, generated from the code."""

from __future__ import annotations

import json
import re
import tempfile
import threading
from collections.abc import Callable
from typing import Any

import flask_smorest
from apispec import BasePlugin

from .config import Settings


class Api(flask_smorest.Api):
    """flask-smorest's Api that documents its blueprints when the spec is first read.

    Documenting the API's ~110 paths takes ≈ 0.1 s of CPU, and the spec is read only by
    /openapi.json, the docs page and ``gridapi openapi``: a server pays it on the first such
    request, not at start-up, and the test suite (an application per test) not at all unless a
    test reads the spec. Routes are registered at once, so requests never wait for it; the
    document is the same as flask-smorest's, built in the order the blueprints were registered.
    The shared answers are deferred the same way (``defer``): flask-smorest's default answer
    for each HTTP status and the ones the application puts in their place took ≈ 16 ms of
    every application's start, a tenth of an API test's set-up.

    While the application is being built (until ``built``), reading ``spec`` gives the
    document as it stands and runs nothing: flask-smorest reads it as it sets up (its ETag
    headers, ``register_converter`` asking ``self.spec is not None``), and each such read
    ran every deferred step at every start.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._undocumented: list[tuple[Any, str, Any]] = []
        self._deferred: list[Callable[[], None]] = []
        self._documenting = False
        self._building = True
        self._doc_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def defer(self, step: Callable[[], None]) -> None:
        """Run ``step`` (a change to the spec) when the spec is first read, after the steps
        deferred before it and before the blueprints are documented."""
        self._deferred.append(step)

    def _register_responses(self) -> None:
        self.defer(super()._register_responses)

    def built(self) -> None:
        """Say the application is built: the first read of ``spec`` from now on documents
        what is pending."""
        self._building = False

    @property
    def spec(self) -> Any:
        if not self._building and (self._undocumented or self._deferred):
            with self._doc_lock:
                if not self._documenting:  # not re-entered from a documenting callback
                    self._document_pending()
        return self._spec

    @spec.setter
    def spec(self, value: Any) -> None:
        self._spec = value

    def register_blueprint(self, blp: Any, *, parameters: Any = None, **options: Any) -> None:
        name = options.get("name", blp.name)
        self._app.extensions["flask-smorest"]["blp_name_to_api"][name] = self
        self._app.register_blueprint(blp, **options)
        self._undocumented.append((blp, name, parameters))

    def _document_pending(self) -> None:
        self._documenting = True
        try:
            while self._deferred:
                self._deferred.pop(0)()
            while self._undocumented:
                blp, name, parameters = self._undocumented[0]
                blp.register_views_in_doc(
                    self, self._app, self._spec, name=name, parameters=parameters
                )
                self._spec.tag({"name": name, "description": blp.description})
                self._undocumented.pop(0)
            # The shared answers (errors, 304) the operations refer to, now all registered;
            # any of them may answer a request an API key authenticated.
            for response in self._spec.components.responses.values():
                with_request_id(response)
                with_rate_limit(response)
        finally:
            self._documenting = False


def spec_dict() -> dict:
    """Return the OpenAPI document of the application."""
    from .app import create_app

    # The app made for its spec generates keys it never uses: in a directory of its own, not
    # in the working directory's ./var (where `gridapi openapi write` and the tests ran).
    with tempfile.TemporaryDirectory(prefix="gridapi-spec-") as data_dir:
        app = create_app(
            Settings(database_url="sqlite://", data_dir=data_dir), check_database=False
        )
        with app.app_context():
            return app.extensions["gridapi_api"].spec.to_dict()


def spec_json() -> str:
    """Return the OpenAPI document as stable, reviewable JSON text."""
    return json.dumps(spec_dict(), ensure_ascii=False, indent=2, sort_keys=True) + "\n"


# --- what every operation of the served spec carries, added in one place -------------------

_NOT_FOUND = {"$ref": "#/components/responses/NOT_FOUND"}


def _response_ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


def _is_if_match(parameter: Any) -> bool:
    return (
        isinstance(parameter, dict)
        and parameter.get("in") == "header"
        and str(parameter.get("name", "")).lower() == "if-match"
    )


def _is_idempotency_key(parameter: Any) -> bool:
    return (
        isinstance(parameter, dict)
        and parameter.get("in") == "header"
        and str(parameter.get("name", "")).lower() == "idempotency-key"
    )


#: On every success of an operation that takes Idempotency-Key: the answer is a replay.
IDEMPOTENT_REPLAYED_HEADER = {
    "description": "`true` when the answer is the one first given to this `Idempotency-Key` "
    "(or `client_id`) and nothing was done now; absent on a first answer.",
    "schema": {"type": "string", "enum": ["true"]},
}

#: Every answer carries the request's id (``app._request_context``): the caller's own when it
#: sent a usable one, else one the server made. Documented once as a component.
REQUEST_ID = "X-Request-ID"
REQUEST_ID_HEADER = {
    "description": "The request's id, as in the server's logs and audit rows: the "
    "`X-Request-ID` the request sent when it was 1-64 characters of `A-Z a-z 0-9 . _ -`, "
    "else one the server made. Quote it when reporting a problem.",
    "schema": {"type": "string", "example": "3f9a1c2b7d4e00000000002a"},
}
REQUEST_ID_REF = {"$ref": f"#/components/headers/{REQUEST_ID}"}
REQUEST_ID_PARAMETER = {
    "name": REQUEST_ID,
    "in": "header",
    "required": False,
    "description": "An id of your own for this request, to find it in the server's logs and "
    "audit rows; echoed in the answer's `X-Request-ID`. Kept when 1-64 characters of "
    "`A-Z a-z 0-9 . _ -`; anything else is replaced by an id the server makes (never refused).",
    "schema": {"type": "string", "example": "phone-7f3a-000123"},
}


#: The headers of a rate limit's window (``limits.RateWindow``), on every answer to a request
#: an API key authenticated (the key's own limit), on every answer of the sign-in (its
#: limits, flask-limiter's) and on every 429 (the limit that refused). Components, named by
#: reference.
RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "X-RateLimit-Limit": {
        "description": "The requests the limit allows per window: the API key's own limit "
        "on an answer to a key, the limit that refused on a 429. Absent on answers to a "
        "person's access token (but for a sign-in's).",
        "schema": {"type": "integer", "minimum": 1, "example": 600},
    },
    "X-RateLimit-Remaining": {
        "description": "The requests left in the current window (0 on a 429).",
        "schema": {"type": "integer", "minimum": 0, "example": 599},
    },
    "X-RateLimit-Reset": {
        "description": "When the current window ends, in seconds since the Unix epoch (UTC).",
        "schema": {"type": "integer", "example": 1796281785},
    },
}
RATE_LIMIT_REFS = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}


def with_rate_limit(response: dict[str, Any]) -> None:
    """Name the ``X-RateLimit-*`` headers in ``response`` (a new headers mapping)."""
    response["headers"] = {**response.get("headers", {}), **RATE_LIMIT_REFS}


def with_request_id(response: dict[str, Any]) -> None:
    """Name the ``X-Request-ID`` header in ``response`` (a new headers mapping: the one it
    has may be shared with other answers)."""
    response["headers"] = {**response.get("headers", {}), REQUEST_ID: REQUEST_ID_REF}


_PATH_PARAMETER = re.compile(r"{[^}]+}")
# Examples of values whose shape a pattern fixes (a pattern cannot be inverted in general).
_PATTERN_EXAMPLES = {
    r"^[0-9]{15}$": "110101001001001",
    r"^[0-9]{12}$": "110101001001",
    r"^[A-Za-z0-9_.\-]{2,32}$": "wang.li",
    r"^[0-9a-f]{64}$": "9f2c" * 16,
    r"^([0-9]{2}|[0-9]{4})$": "0101",
    r"^[0-9]{4}-(0[1-9]|1[0-2])$": "2026-11",
    r"^(me|[0-9]{1,12})$": "me",
}
_FORMAT_EXAMPLES = {
    "date-time": "2026-11-28T09:30:00+08:00",
    "date": "2026-11-28",
    "time": "09:30:00",
    "email": "wang.li@example.org",
    "uri": "https://example.org/",
    "url": "https://example.org/",
    "uuid": "5f0c2a4e-8d1b-4a8e-9a53-0f6e3c1b7d21",
    "binary": "…",
}
_NAME_EXAMPLES = {
    "code": "110101001001",
    "name": "东华门社区",
    "title": "楼道堆物清理",
    "phone": "13800138000",
    "username": "wang.li",
    "password": "correct horse battery staple",
    "token": "eyJhbGciOiJIUzI1NiJ9.e30.sig",
    "refresh_token": "rt_3q2r1s",
    "grid": "110101001001001",
    "grid_code": "110101001001001",
    "region": "110101001001",
    "region_code": "110101001001",
    "category": "0101",
    "reason": "重复上报",
    "note": "已现场核实",
}


def ecma_pattern(_converter: Any, _field: Any, ret: dict[str, Any], **__: Any) -> dict[str, Any]:
    """Publish Python's end-of-text ``\\Z`` as ECMA-262's ``$`` (the spec's regex dialect)."""
    pattern = ret.get("pattern")
    if isinstance(pattern, str) and pattern.endswith("\\Z"):
        return {"pattern": pattern[:-2] + "$"}
    return {}


class ExampleBuilder:
    """Builds an example value from a JSON schema, from its own and its members' examples,
    enums, defaults, formats and bounds; ``reading`` keeps read-only members, else
    write-only ones."""

    def __init__(self, components: dict[str, Any]) -> None:
        self.components = components

    def _resolve(self, schema: Any) -> Any:
        seen = 0
        while isinstance(schema, dict) and "$ref" in schema and seen < 20:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.components.get(name, {})
            seen += 1
        return schema

    def build(self, schema: Any, *, reading: bool, name: str = "", depth: int = 0) -> Any:
        schema = self._resolve(schema)
        if not isinstance(schema, dict) or depth > 6:
            return None
        for key in ("example", "default"):
            if key in schema and schema[key] is not None:
                return schema[key]
        if schema.get("enum"):
            return next((v for v in schema["enum"] if v is not None), None)
        for combinator in ("allOf", "anyOf", "oneOf"):
            if combinator in schema:
                options = [self._resolve(s) for s in schema[combinator]]
                # Prefer a concrete member to the bare ``{"type": "object", "nullable": true}``.
                options.sort(key=lambda s: not (isinstance(s, dict) and s.get("properties")))
                return self.build(options[0], reading=reading, name=name, depth=depth + 1)
        kind = schema.get("type")
        if kind == "object" or "properties" in schema:
            out = {}
            for member, sub in schema.get("properties", {}).items():
                resolved = self._resolve(sub)
                if resolved.get("readOnly" if not reading else "writeOnly"):
                    continue
                out[member] = self.build(sub, reading=reading, name=member, depth=depth + 1)
            return out
        if kind == "array":
            item = self.build(schema.get("items", {}), reading=reading, name=name, depth=depth + 1)
            return [] if item is None else [item] * max(1, schema.get("minItems", 1))
        if kind == "boolean":
            return True
        if kind in ("integer", "number"):
            low = schema.get("minimum", 1)
            high = schema.get("maximum", max(low, 1))
            value = min(max(low, 1), high)
            return value if kind == "integer" else float(value)
        if kind == "string":
            pattern = schema.get("pattern")
            if pattern in _PATTERN_EXAMPLES:
                return _PATTERN_EXAMPLES[pattern]
            if schema.get("format") in _FORMAT_EXAMPLES:
                return _FORMAT_EXAMPLES[schema["format"]]
            text = _NAME_EXAMPLES.get(name, "示例")
            low, high = schema.get("minLength", 0), schema.get("maxLength", 1000)
            if len(text) < low:
                text = text + "x" * (low - len(text))
            return text[:high]
        return None


class SpecPlugin(BasePlugin):
    """Makes every operation complete for third parties: a 404 where the path names a
    resource, a description (the permission it needs) where the docstring has none, and an
    example for each JSON request body and success answer that has none of its own."""

    def init_spec(self, spec: Any) -> None:
        super().init_spec(spec)
        self.spec = spec
        # (path, 201 response, its members) of creating operations; (path, method) of those
        # that take a path value. Links are added as both sides appear, in any order.
        self._creators: list[tuple[str, dict[str, Any], set[str]]] = []
        self._users: list[tuple[str, str]] = []

    def operation_helper(self, path: str | None = None, operations: Any = None, **_: Any) -> None:
        builder = ExampleBuilder(self.spec.components.schemas)
        has_path_id = bool(path and _PATH_PARAMETER.search(path))
        for method, operation in (operations or {}).items():
            responses = operation.setdefault("responses", {})
            codes = {str(code) for code in responses}
            if has_path_id and "404" not in codes:
                responses["404"] = _NOT_FOUND
            if_match = [p for p in operation.get("parameters", []) if _is_if_match(p)]
            if if_match:
                responses.setdefault("412", _response_ref("PRECONDITION_FAILED"))
                if any(p.get("required") for p in if_match):  # optional: no 428
                    responses.setdefault("428", _response_ref("PRECONDITION_REQUIRED"))
            _add_common_failures(method, operation, responses)
            parameters = operation.setdefault("parameters", [])
            if not any(isinstance(p, dict) and p.get("name") == REQUEST_ID for p in parameters):
                parameters.append(dict(REQUEST_ID_PARAMETER))
            by_key = any("apiKey" in r for r in operation.get("security") or [])
            for response in responses.values():
                if isinstance(response, dict) and "$ref" not in response:
                    with_request_id(response)  # shared ones: Api._document_pending
                    if by_key:  # the key's own limit, on every answer to it
                        with_rate_limit(response)
            if any(_is_idempotency_key(p) for p in operation.get("parameters", [])):
                for code, response in responses.items():
                    if str(code).startswith("2") and isinstance(response, dict):
                        response.setdefault("headers", {}).setdefault(
                            "Idempotent-Replayed", IDEMPOTENT_REPLAYED_HEADER
                        )
            if not operation.get("description"):
                operation["description"] = _default_description(operation)
            body = operation.get("requestBody") or {}
            for media_type, media in body.get("content", {}).items():
                _add_example(builder, media_type, media, reading=False)
            for code, response in responses.items():
                if str(code).startswith("2") and isinstance(response, dict):
                    for media_type, media in response.get("content", {}).items():
                        _add_example(builder, media_type, media, reading=True)
        if path:
            self._link(path, operations or {}, builder)

    def _link(self, path: str, operations: dict[str, Any], builder: ExampleBuilder) -> None:
        """Publish OpenAPI links from each creating operation (POST answering 201 with the new
        object) to the operations on the path of that object, so clients and stateful tests
        can follow the new id."""
        created = operations.get("post", {}).get("responses", {})
        created = created.get(201) or created.get("201")
        if isinstance(created, dict):
            schema = created.get("content", {}).get("application/json", {}).get("schema")
            members = set(builder._resolve(schema).get("properties", {})) if schema else set()
            if members:
                self._creators.append((path, created, members))
                for user_path, method in self._users:
                    _add_link(path, created, members, user_path, method)
        if _PATH_PARAMETER.search(path):
            for method in operations:
                self._users.append((path, method))
                for creator_path, response, members in self._creators:
                    _add_link(creator_path, response, members, path, method)


_WRITES = ("post", "put", "patch", "delete")


def _add_common_failures(method: str, operation: dict[str, Any], responses: dict) -> None:
    """Document the failures any operation of its kind can answer, whatever its view does:

    * 503 on every operation (the database or the rate-limit storage unreachable);
    * 429 on every operation an API key may call (the key's own rate limit);
    * 400 and 413 on every operation that takes a body (not JSON / not the type it takes;
      larger than GRIDAPI_MAX_BODY_MB);
    * 409 on every write (a unique or foreign-key conflict, e.g. with a concurrent request,
      answers 409 from any write, besides the conflicts views raise themselves).
    """

    def add(code: str, name: str) -> None:
        if code not in {str(c) for c in responses}:
            responses[code] = _response_ref(name)

    add("503", "SERVICE_UNAVAILABLE")
    if any("apiKey" in requirement for requirement in operation.get("security") or []):
        add("429", "TOO_MANY_REQUESTS")
    if operation.get("requestBody"):
        add("400", "BAD_REQUEST")
        add("413", "CONTENT_TOO_LARGE")
    if method in _WRITES:
        add("409", "CONFLICT")


def _add_link(
    creator: str, response: dict[str, Any], members: set[str], target: str, method: str
) -> None:
    prefix = creator + "/{"
    if not target.startswith(prefix):
        return
    name, _, rest = target[len(prefix) :].partition("}")
    if "{" in rest:  # it needs another value the new object does not give
        return
    member = name if name in members else "id" if "id" in members else None
    if member is None:
        return
    parameters = {p[1:-1]: f"$request.path.{p[1:-1]}" for p in _PATH_PARAMETER.findall(creator)}
    parameters[name] = f"$response.body#/{member}"
    pointer = target.replace("~", "~0").replace("/", "~1")
    label = re.sub(r"[^A-Za-z0-9]+", "_", f"{method} {target[len(creator) :]}").strip("_")
    response.setdefault("links", {})[label] = {
        "operationRef": f"#/paths/{pointer}/{method}",
        "parameters": parameters,
    }


def _default_description(operation: dict[str, Any]) -> str:
    summary = (operation.get("summary") or "").rstrip(".")
    if "x-permission" in operation and operation["x-permission"] is None:
        who = "Public: needs no credentials."
    elif operation.get("x-permission") == "authenticated":
        who = "Needs a valid credential, of any role."
    elif operation.get("x-permission"):
        who = f"Needs the `{operation['x-permission']}` permission, within your scope."
    else:
        who = "Needs a valid credential."
    return f"{summary}. {who}" if summary else who


def _add_example(builder: ExampleBuilder, media_type: str, media: Any, *, reading: bool) -> None:
    if "json" not in media_type or not isinstance(media, dict):
        return
    if "example" in media or "examples" in media or "schema" not in media:
        return
    example = builder.build(media["schema"], reading=reading)
    if example is not None:
        media["example"] = example


def install(api: Any) -> None:
    """Add the spec plugin and the ECMA-262 pattern dialect to ``api`` (before any blueprint
    is registered)."""
    plugin = SpecPlugin()
    plugin.init_spec(api.spec)
    api.spec.components.header(REQUEST_ID, REQUEST_ID_HEADER)
    for name, header in RATE_LIMIT_HEADERS.items():
        api.spec.components.header(name, header)
    api.spec.plugins.append(plugin)
    api.ma_plugin.converter.add_attribute_function(ecma_pattern)
