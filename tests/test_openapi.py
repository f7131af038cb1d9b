"""The committed OpenAPI document is the contract: it must match the code and be valid."""

from __future__ import annotations

import json
from pathlib import Path

from openapi_spec_validator import validate

from gridapi.spec import spec_dict, spec_json

SPEC_PATH = Path(__file__).resolve().parent.parent / "openapi" / "openapi.json"


def test_committed_spec_is_current():
    assert SPEC_PATH.read_text() == spec_json(), (
        "openapi/openapi.json is stale: run `gridapi openapi write openapi/openapi.json`"
    )


def test_spec_is_valid_openapi():
    validate(json.loads(SPEC_PATH.read_text()))


def test_every_operation_is_documented():
    spec = spec_dict()
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            assert op.get("summary"), f"{method.upper()} {path} has no summary"
            assert op.get("tags"), f"{method.upper()} {path} has no tag"
            assert "default" in op["responses"] or any(
                code.startswith(("4", "5")) for code in op["responses"]
            ), path


def test_spec_is_served_and_docs_need_no_network(client):
    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert served.get_json()["paths"].keys() == spec_dict()["paths"].keys()
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "http://" not in html and "https://" not in html
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        r = client.get(f"/docs/static/{asset}")
        assert r.status_code == 200 and len(r.data) > 1000, asset
    # the standalone layout fetches a badge from validator.swagger.io unless told not to
    init = client.get("/docs/init.js").get_data(as_text=True)
    assert "validatorUrl: null" in init and "http" not in init


def test_the_spec_is_built_once_when_first_asked_for_by_many_at_once(app):
    """The application documents its operations on the first read of the spec (not at
    start-up): requests arriving together all get the whole document, each operation once."""
    from concurrent.futures import ThreadPoolExecutor

    committed = json.loads(SPEC_PATH.read_text())
    assert app.test_client().get("/api/v1/health/live").status_code == 200

    def fetch(_: int) -> dict:
        response = app.test_client().get("/openapi.json")
        assert response.status_code == 200
        return response.get_json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        documents = list(pool.map(fetch, range(8)))
    for document in documents:
        assert document["paths"] == committed["paths"]
        assert [tag["name"] for tag in document["tags"]] == [
            tag["name"] for tag in committed["tags"]
        ]


def test_an_application_documents_nothing_until_its_spec_is_read(app):
    """Starting an application (one per test, one per server worker) registers routes and
    documents nothing: flask-smorest's default answers, its ETag and pagination headers and
    the operations wait for the first read of the spec. Two of its start-up steps read the
    spec and so ran all of it at every start, undoing the deferral."""
    api = app.extensions["gridapi_api"]
    assert api._spec.to_dict()["paths"] == {}
    assert api._spec.to_dict().get("components", {}).get("responses", {}) == {}
    assert api._deferred and api._undocumented
    document = api.spec.to_dict()
    assert "NOT_FOUND" in document["components"]["responses"]
    assert not api._deferred and not api._undocumented
