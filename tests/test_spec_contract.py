"""The spec says what the code does: the query parameters each operation parses, the answers
it can give. Checked against the views themselves, not a copy of the spec."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask_smorest.spec.plugins import FlaskPlugin
from openapi_schema_validator import OAS30Validator

from gridapi.app import create_app
from gridapi.config import Settings

from .factories import LAT0, LON0, PASSWORD, STEP

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


def test_every_answer_of_every_operation_names_the_request_id(served):
    """Every answer carries X-Request-ID, and a caller may send its own: the spec said
    neither, so a client generated from it could not read the id to quote in a report."""
    app, spec = served
    missing = []
    for method, path, _func, op in operations(app, spec):
        sent = [p for p in op.get("parameters", []) if p.get("name") == "X-Request-ID"]
        if [(p["in"], p["required"]) for p in sent] != [("header", False)]:
            missing.append(f"{method} {path}: the request header")
        for code, response in op["responses"].items():
            if "X-Request-ID" not in _resolved(spec, response).get("headers", {}):
                missing.append(f"{method} {path} → {code}")
    assert not missing, f"{len(missing)} without X-Request-ID:\n" + "\n".join(missing)
    header = spec["components"]["headers"]["X-Request-ID"]
    assert header["schema"]["type"] == "string"


# --- real answers against the spec ------------------------------------------------------------

# Headers of HTTP itself, which no operation need name.
_TRANSPORT_HEADERS = frozenset(
    {"content-type", "content-length", "content-encoding", "date", "vary"}
)


def _resolved(spec: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        node = target
    return node


def answer_problems(app: Any, spec: dict[str, Any], method: str, url: str, response: Any) -> list:
    """Return what a real answer does that the spec does not say: a status the operation does
    not document, a header its answer does not name, a JSON body its schema refuses."""
    path = url.split("?", 1)[0]
    rule, _ = app.url_map.bind("localhost").match(path, method=method, return_rule=True)
    name = f"{method} {FlaskPlugin.flaskpath2openapi(rule.rule)} → {response.status_code}"
    operation = spec["paths"][FlaskPlugin.flaskpath2openapi(rule.rule)][method.lower()]
    documented = _resolved(spec, operation["responses"].get(str(response.status_code)))
    if documented is None:
        return [f"{name}: the status is not documented"]
    problems = []
    names = {header.lower() for header in documented.get("headers", {})}
    for header, _value in response.headers:  # werkzeug Headers yield pairs
        if header.lower() not in names | _TRANSPORT_HEADERS:
            problems.append(f"{name}: header {header} is not documented")
    content = documented.get("content", {})
    if not content:
        if response.data:
            problems.append(f"{name}: a body, documented as none")
        return problems
    media = content.get(response.mimetype)
    if media is None:
        return [*problems, f"{name}: {response.mimetype} is not documented"]
    if "json" in response.mimetype and "schema" in media:
        schema = {**media["schema"], "components": spec["components"]}
        for err in OAS30Validator(schema).iter_errors(response.get_json()):
            at = "/".join(map(str, err.absolute_path))
            problems.append(f"{name}: body at /{at}: {err.message}")
    return problems


class Checked:
    """A test client whose every answer is checked against the spec (``problems``)."""

    def __init__(self, app: Any, client: Any) -> None:
        self.app, self.client, self.problems = app, client, []
        with app.app_context():
            self.spec = app.extensions["gridapi_api"].spec.to_dict()

    def __call__(self, method: str, url: str, **kwargs: Any) -> Any:
        response = self.client.open(url, method=method, **kwargs)
        self.problems += answer_problems(self.app, self.spec, method, url, response)
        return response


def _report_a_case(checked: Checked, **kwargs: Any) -> Any:
    point = [round(LON0 + 0.5 * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]
    body = {"category": "0101", "description": "楼道堆放杂物", "address": "平江路 1 号"}
    response = checked(
        "POST",
        "/api/v1/cases",
        json={**body, "location": {"type": "Point", "coordinates": point}},
        **kwargs,
    )
    assert response.status_code == 201, response.get_json()
    return response


def test_real_answers_say_what_the_spec_says(app, client, factory):
    """Answers, as a client generated from the spec reads them: every status, header and
    body documented (an ETag on every JSON GET was not)."""
    factory.regions()
    factory.grid_version()
    checked = Checked(app, client)
    case = _report_a_case(checked).get_json()
    for url in (
        "/api/v1/cases",
        f"/api/v1/cases/{case['id']}",
        f"/api/v1/cases/{case['id']}/timeline",
        "/api/v1/regions",
        "/api/v1/grids",
        "/api/v1/me",
        "/api/v1/categories",
        "/api/v1/users",
    ):
        etag = checked("GET", url).headers["ETag"]
        assert checked("GET", url, headers={"If-None-Match": etag}).status_code == 304
    assert not checked.problems, "\n".join(checked.problems)


def test_error_answers_name_their_headers(app, client, anon_client, factory):
    """401 says how to authenticate (WWW-Authenticate) and 412 which version is current
    (ETag): headers the shared error answers did not name."""
    factory.regions()
    factory.grid_version()
    checked = Checked(app, client)
    response = _report_a_case(checked)
    case_id, current = response.get_json()["id"], response.headers["ETag"]
    url = f"/api/v1/cases/{case_id}/transitions"
    stale = checked("POST", url, json={"action": "accept"}, headers={"If-Match": f'"{case_id}-0"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == current
    assert checked("POST", url, json={"action": "accept"}).status_code == 428
    refused = checked("POST", url, json={"action": "close"}, headers={"If-Match": current})
    assert refused.status_code == 409
    anonymous = Checked(app, anon_client)
    assert anonymous("GET", "/api/v1/cases").headers["WWW-Authenticate"]
    assert not checked.problems + anonymous.problems, "\n".join(
        checked.problems + anonymous.problems
    )


def test_rate_limited_answers_name_their_headers(app, client, anon_client, factory, accounts):
    """Every answer to an API key carries its limit's X-RateLimit-* headers, its 429 with
    Retry-After, and so do the sign-in's answers (flask-limiter's): all named in the spec."""
    factory.regions()
    body = {"name": "hotline", "scopes": ["grids:read"], "rate_limit": "2 per minute"}
    key = {"X-API-Key": client.post("/api/v1/clients", json=body).get_json()["api_key"]}
    by_key = Checked(app, anon_client)
    assert by_key("GET", "/api/v1/grids", headers=key).status_code == 200
    assert by_key("GET", "/api/v1/regions", headers=key).status_code == 403
    refused = by_key("GET", "/api/v1/grids", headers=key)
    assert refused.status_code == 429 and refused.headers["X-RateLimit-Remaining"] == "0"
    accounts.create("signer", "admin")
    signing = Checked(app, app.test_client())
    assert signing("POST", "/api/v1/auth/token", json=_login("signer")).status_code == 200
    for _ in range(5):
        signing("POST", "/api/v1/auth/token", json=_login("signer", "wrong"))
    throttled = signing("POST", "/api/v1/auth/token", json=_login("signer"))
    assert throttled.status_code == 429 and throttled.headers["X-RateLimit-Limit"]
    assert not by_key.problems + signing.problems, "\n".join(by_key.problems + signing.problems)


def _login(username: str, password: str | None = None) -> dict[str, str]:
    return {"username": username, "password": password or PASSWORD}


def test_a_shared_error_answer_keeps_the_description_an_operation_gives_it(served):
    """``alt_response(409, response="CONFLICT", description=…)`` published the bare shared
    answer: which conflict a report or a transition answers was lost."""
    _, spec = served
    conflicts = {
        ("/api/v1/cases", "post"): "still running",
        ("/api/v1/cases/{case_id}/transitions", "post"): "allowed_actions",
        ("/api/v1/categories", "post"): "used already",
        ("/api/v1/visits", "post"): "still running",
    }
    for (path, method), words in conflicts.items():
        answer = spec["paths"][path][method]["responses"]["409"]
        assert words in answer.get("description", ""), (path, answer)
        assert answer["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"
        }
        assert "Retry-After" in answer["headers"]


def test_a_replayed_answer_names_its_header(app, client, factory):
    """A retry with the same Idempotency-Key answers `Idempotent-Replayed: true`, a header
    no answer of the operations that take the key named."""
    factory.regions()
    factory.grid_version()
    checked = Checked(app, client)
    key = {"Idempotency-Key": "5f0c2a4e-8d1b-4a8e-9a53-0f6e3c1b7d21"}
    first = _report_a_case(checked, headers=key)
    again = _report_a_case(checked, headers=key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert not checked.problems, "\n".join(checked.problems)


def test_a_queued_export_names_the_job_to_poll(app, client):
    """The 202 of a queued export carries Location (the job to poll), which it did not name."""
    checked = Checked(app, client)
    queued = checked("POST", "/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
    assert queued.status_code == 202, queued.get_json()
    job = checked("GET", queued.headers["Location"])
    assert job.get_json()["id"] == queued.get_json()["id"]
    assert not checked.problems, "\n".join(checked.problems)


def test_indicators_of_a_region_nobody_may_see_answer_a_documented_404(app, client, factory):
    """GET /indicators has no path id, so its 404 (a region, unit or department that does
    not exist or lies outside the caller's scope) was not documented."""
    factory.regions()
    checked = Checked(app, client)
    period = "from=2026-03-01&to=2026-04-01"
    for query in ("region=320508009000", "unit=320508009000", "region=320508001000&department=9"):
        assert checked("GET", f"/api/v1/indicators?{query}&{period}").status_code == 404
    assert not checked.problems, "\n".join(checked.problems)


def test_an_export_file_is_resumed_as_the_spec_says(app, client):
    """The file of an export job is sent in ranges and conditionally: 206, 304 and 416 and
    their headers (Content-Range, Accept-Ranges, Last-Modified…) were all undocumented."""
    from .api.test_exports import run_jobs

    checked = Checked(app, client)
    queued = checked("POST", "/api/v1/exports/cases/jobs", json={"format": "csv", "filters": {}})
    assert run_jobs(app)["done"] == 1
    url = f"{queued.headers['Location']}/file"
    whole = checked("GET", url)
    assert whole.status_code == 200 and whole.headers["Accept-Ranges"] == "bytes"
    part = checked("GET", url, headers={"Range": "bytes=0-2"})
    assert part.status_code == 206 and part.data == whole.data[:3]
    beyond = checked("GET", url, headers={"Range": f"bytes={len(whole.data) + 10}-"})
    assert beyond.status_code == 416
    assert checked("GET", url, headers={"If-None-Match": whole.headers["ETag"]}).status_code == 304
    assert not checked.problems, "\n".join(checked.problems)


def test_a_photo_is_served_as_the_spec_says(app, client, factory):
    """A photo and its thumbnail carry Content-Security-Policy, which the spec did not name."""
    from .api.test_attachments import jpeg, upload

    factory.regions()
    factory.grid_version()
    checked = Checked(app, client)
    case_id = _report_a_case(checked).get_json()["id"]
    sent = upload(client, case_id, jpeg())
    assert sent.status_code == 201, sent.get_json()
    checked.problems += answer_problems(
        app, checked.spec, "POST", f"/api/v1/cases/{case_id}/attachments", sent
    )
    photo = f"/api/v1/cases/{case_id}/attachments/{sent.get_json()['id']}"
    for url in (f"{photo}/content", f"{photo}/thumbnail"):
        served = checked("GET", url)
        assert served.status_code == 200 and served.headers["Content-Security-Policy"]
        assert (
            checked("GET", url, headers={"If-None-Match": served.headers["ETag"]}).status_code
            == 304
        )
    assert not checked.problems, "\n".join(checked.problems)
