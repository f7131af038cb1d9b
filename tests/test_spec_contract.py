"""The spec says what the code does: the query parameters each operation parses, the answers
it can give. Checked against the views themselves, not a copy of the spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask_smorest.spec.plugins import FlaskPlugin

from gridapi.app import create_app
from gridapi.config import Settings

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> tuple[Any, dict[str, Any]]:
    data_dir = str(tmp_path_factory.mktemp("data"))
    app = create_app(Settings(database_url="sqlite://", data_dir=data_dir), check_database=False)
    with app.app_context():
        return app, app.extensions["gridapi_api"].spec.to_dict()


def operations(app: Any, spec: dict[str, Any]) -> Iterator[tuple[str, str, Any, dict]]:
    """Yield (method, path, view function, spec operation) of every documented operation."""
    for rule in app.url_map.iter_rules():
        path = FlaskPlugin.flaskpath2openapi(rule.rule)
        if path not in spec["paths"]:
            continue
        view = app.view_functions[rule.endpoint]
        view_class = getattr(view, "view_class", None)
        for method in METHODS:
            if method in rule.methods and method.lower() in spec["paths"][path]:
                func = getattr(view_class, method.lower()) if view_class else view
                yield method, path, func, spec["paths"][path][method.lower()]


def _schema_query_names(func: Any) -> set[str] | None:
    """The query parameters the operation's schemas parse (None: it has no query schema)."""
    arguments = getattr(func, "_apidoc", {}).get("arguments", {}).get("parameters", [])
    schemas = [a["schema"] for a in arguments if a.get("in") == "query"]
    if not schemas:
        return None
    names: set[str] = set()
    for schema in schemas:
        instance = schema() if isinstance(schema, type) else schema
        names |= {f.data_key or n for n, f in instance.fields.items() if not f.dump_only}
    return names


def test_the_spec_documents_the_query_parameters_each_operation_parses(served):
    """`doc(parameters=[…])` replaced the generated query parameters of the monthly bulletin
    (its `format` worked but was undocumented)."""
    app, spec = served
    wrong = []
    for method, path, func, op in operations(app, spec):
        documented = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"} - {
            "fields"
        }
        parsed = _schema_query_names(func)
        if parsed is None:
            continue  # parsed by hand (/locate) or none: see the test of unknown parameters
        if documented != parsed:
            wrong.append(f"{method} {path}: spec {sorted(documented)} but parses {sorted(parsed)}")
    assert not wrong, "\n".join(wrong)


def test_the_bulletin_documents_its_format(served):
    _, spec = served
    op = spec["paths"]["/api/v1/bulletins/{region}/{month}"]["get"]
    (fmt,) = [p for p in op["parameters"] if p["name"] == "format"]
    assert fmt["in"] == "query" and fmt["schema"]["enum"] == ["json", "csv", "xlsx"]
    assert [p["name"] for p in op["parameters"] if p["in"] == "path"] == ["month"]


def test_every_get_documents_its_refusal_of_query_parameters(served):
    """A GET refuses a query parameter it does not take (422), those without any too: each
    documents 422 (health probes, which ignore them, excepted)."""
    app, spec = served
    missing = [
        f"{method} {path}"
        for method, path, _func, op in operations(app, spec)
        if method == "GET"
        and not path.startswith("/api/v1/health")
        and "422" not in {str(code) for code in op["responses"]}
    ]
    assert not missing, "\n".join(missing)


def test_every_operation_documents_the_failures_of_its_kind(served):
    """503 (database or Redis unreachable) on every operation; 429 on every operation an API
    key may call (its rate limit); 400 and 413 on every operation with a body (not JSON, too
    large); 409 on every write (a unique or foreign-key conflict answers 409 from any)."""
    app, spec = served
    missing = []
    for method, path, _func, op in operations(app, spec):
        codes = {str(code) for code in op["responses"]}
        wanted = {"503"}
        if any("apiKey" in r for r in op.get("security", [])):
            wanted.add("429")
        if op.get("requestBody"):
            wanted |= {"400", "413"}
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            wanted.add("409")
        if wanted - codes:
            missing.append(f"{method} {path}: {sorted(wanted - codes)}")
    assert not missing, f"{len(missing)} operations:\n" + "\n".join(missing)
    responses = spec["components"]["responses"]
    for name in ("TOO_MANY_REQUESTS", "SERVICE_UNAVAILABLE"):
        assert "Retry-After" in responses[name]["headers"], name
        assert responses[name]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
    assert "JSON" in responses["BAD_REQUEST"]["description"]
    assert responses["TOO_MANY_REQUESTS"]["description"] != "Too Many Requests"
