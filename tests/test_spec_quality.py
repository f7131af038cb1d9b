"""The spec is one third parties can build on: every operation says what it does, who may call
it, what it takes and answers (with examples) and how it fails; the committed copy validates."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate

from gridapi.spec import spec_dict

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"
METHODS = ("get", "post", "put", "patch", "delete")


def _resolve(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def _has_example(spec: dict[str, Any], schema: Any, depth: int = 0) -> bool:
    """True when the schema carries an example, or an object's every property does."""
    schema = _resolve(spec, schema)
    if not isinstance(schema, dict) or depth > 8:
        return False
    if "example" in schema or "examples" in schema:
        return True
    if schema.get("type") == "array" and "items" in schema:
        return _has_example(spec, schema["items"], depth + 1)
    for combinator in ("allOf", "oneOf", "anyOf"):
        if combinator in schema:
            return all(_has_example(spec, s, depth + 1) for s in schema[combinator])
    properties = schema.get("properties")
    if properties:
        return all(_has_example(spec, p, depth + 1) for p in properties.values())
    return False


def _media_has_example(spec: dict[str, Any], media: dict[str, Any]) -> bool:
    return "example" in media or "examples" in media or _has_example(spec, media.get("schema"))


def operation_problems(spec: dict[str, Any]) -> list[str]:
    """Return one line per missing piece, naming the operation."""
    problems: list[str] = []
    for path, item in spec["paths"].items():
        shared = item.get("parameters", [])
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            name = f"{method.upper()} {path}"
            missing = [key for key in ("summary", "description", "tags") if not op.get(key)]
            if missing:
                problems.append(f"{name}: no {', '.join(missing)}")
            responses = {str(code): r for code, r in op.get("responses", {}).items()}
            if "security" not in op:
                problems.append(f"{name}: no security requirement (or explicit `security: []`)")
            elif op["security"]:
                for code in ("401", "403"):
                    if code not in responses:
                        problems.append(f"{name}: secured but {code} is not documented")
            parameters = [_resolve(spec, p) for p in [*shared, *op.get("parameters", [])]]
            # A path value the router cannot match is a 404, so only query, header and body
            # input must document 422 (``fields`` is filtered after the view, never refused).
            inputs = [p for p in parameters if p["in"] == "query" and p["name"] != "fields"]
            body = op.get("requestBody")
            if (inputs or body) and "422" not in responses:
                problems.append(f"{name}: takes input but 422 is not documented")
            if_match = [
                p for p in parameters if p["in"] == "header" and p["name"].lower() == "if-match"
            ]
            if if_match:
                # 428 only where it is required (the register's is optional: no 428)
                required = any(p.get("required") for p in if_match)
                for code in ("412", "428") if required else ("412",):
                    if code not in responses:
                        problems.append(f"{name}: takes If-Match but {code} is not documented")
                if not required and "428" in responses:
                    problems.append(f"{name}: If-Match is optional but 428 is documented")
            if any(p["in"] == "path" for p in parameters) and "404" not in responses:
                problems.append(f"{name}: has a path id but 404 is not documented")
            if body:
                for media_type, media in _resolve(spec, body).get("content", {}).items():
                    if "json" in media_type and not _media_has_example(spec, media):
                        problems.append(f"{name}: request body {media_type} has no example")
            for code, response in responses.items():
                if not code.startswith("2"):
                    continue
                for media_type, media in _resolve(spec, response).get("content", {}).items():
                    if "json" in media_type and not _media_has_example(spec, media):
                        problems.append(f"{name}: {code} {media_type} has no example")
    return problems


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    return spec_dict()


def test_every_operation_is_fully_documented(generated):
    problems = operation_problems(generated)
    assert not problems, f"{len(problems)} gaps in the spec:\n" + "\n".join(problems)


def test_every_example_matches_its_schema(generated):
    """An example a client copies must be one the server would accept (or send)."""
    wrong = []
    for path, item in generated["paths"].items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            media = [("request", m) for m in op.get("requestBody", {}).get("content", {}).values()]
            for code, response in op.get("responses", {}).items():
                if str(code).startswith("2"):
                    media += [(str(code), m) for m in response.get("content", {}).values()]
            for where, item_media in media:
                if "example" not in item_media or "schema" not in item_media:
                    continue
                schema = {**item_media["schema"], "components": generated["components"]}
                for err in OAS30Validator(schema).iter_errors(item_media["example"]):
                    at = "/".join(map(str, err.absolute_path))
                    wrong.append(f"{method.upper()} {path} {where} example at /{at}: {err.message}")
    assert not wrong, "\n".join(wrong)


#: The answers that give a resident's full numbers (with a purpose, audited).
REVEALING = {"/api/v1/persons/{person_id}/sensitive", "/api/v1/persons/{person_id}/export"}
FULL_NUMBER = re.compile(r"1[3-9][0-9]{9}|[0-9]{17}[0-9Xx]")


def _numbers(node: Any, where: str) -> Iterator[str]:
    """Yield where in ``node`` a phone or ID number is written in full."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("phone", "id_number") and isinstance(value, str):
                if FULL_NUMBER.fullmatch(value):
                    yield f"{where}/{key}: {value}"
            else:
                yield from _numbers(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _numbers(value, f"{where}/{index}")


def test_answers_examples_show_phone_and_id_numbers_masked_as_the_answers_do(generated):
    """The users' examples (GET/POST /users, GET/PATCH /users/{id}, a roster's user) showed
    13800138000 where the schema says, and the API sends, 138****5678. Only the answers that
    reveal a resident's numbers show them in full; requests take them in full."""
    shown = []
    for path, item in generated["paths"].items():
        for method in METHODS:
            responses = item.get(method, {}).get("responses", {})
            for code, response in responses.items():
                for media_type, media in response.get("content", {}).items():
                    if path not in REVEALING and "example" in media:
                        where = f"{method.upper()} {path} {code} {media_type}"
                        shown += _numbers(media["example"], where)
    assert not shown, "\n".join(shown)


def test_committed_spec_equals_the_generated_one(generated):
    committed = json.loads(SPEC_PATH.read_text())
    assert committed == json.loads(json.dumps(generated)), (
        "openapi/openapi.json is stale: run `gridapi openapi write openapi/openapi.json`"
    )


def test_committed_spec_validates():
    validate(json.loads(SPEC_PATH.read_text()))


def test_the_checker_names_what_is_missing():
    spec = {
        "paths": {
            "/things/{thing_id}": {
                "patch": {
                    "parameters": [{"name": "thing_id", "in": "path", "required": True}],
                    "requestBody": {
                        "content": {"application/json": {"schema": {"type": "object"}}}
                    },
                    "security": [{"bearerAuth": []}],
                    "responses": {
                        "200": {
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {"id": {"type": "integer", "example": 1}},
                                    }
                                }
                            }
                        }
                    },
                }
            },
            "/health": {"get": {"summary": "s", "description": "d", "tags": ["t"]}},
        }
    }
    problems = operation_problems(spec)
    assert problems == [
        "PATCH /things/{thing_id}: no summary, description, tags",
        "PATCH /things/{thing_id}: secured but 401 is not documented",
        "PATCH /things/{thing_id}: secured but 403 is not documented",
        "PATCH /things/{thing_id}: takes input but 422 is not documented",
        "PATCH /things/{thing_id}: has a path id but 404 is not documented",
        "PATCH /things/{thing_id}: request body application/json has no example",
        "GET /health: no security requirement (or explicit `security: []`)",
    ]
