"""Open311 client libraries nobody in this project wrote, against a real HTTP server.

* ``georeport`` 0.3.1 (PyPI, Python 3) lists services, reads a service definition and reads
  requests back, in JSON and in XML, unchanged. It cannot post and sends no api_key when
  reading, so it reads with GRIDAPI_OPEN311_PUBLIC_READ on.
* ``three`` 0.8.0 (PyPI, written for Python 2) posts. Its one Python 3 problem is an import
  (``itertools.ifilter``), shimmed below with the built-in ``filter``; its XML parsing is
  Python 2 only (``dict.keys()[0]``), so it is used with JSON.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from typing import Any

import georeport  # type: ignore[import-untyped]
import pytest
from werkzeug.serving import make_server

from .test_auth import make_key
from .test_cases import center

if not hasattr(itertools, "ifilter"):
    itertools.ifilter = filter  # type: ignore[attr-defined]  # three 0.8.0's only Py3 fix

import three  # type: ignore[import-untyped]  # noqa: E402  (after the shim it needs)


@pytest.fixture
def server(app, factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Serve the test app over HTTP on 127.0.0.1; return the Open311 root URL."""
    factory.regions()
    factory.grid_version()
    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{http.server_port}/open311/v2"
    http.shutdown()
    thread.join(5)


@pytest.fixture
def key(app) -> str:  # type: ignore[no-untyped-def]
    return make_key(app, name="12345 热线", scopes=["cases:read", "cases:write"])["api_key"]


def _three(server: str, key: str) -> Any:
    return three.Three(server, api_key=key, format="json")


def test_three_lists_services_posts_and_reads_back(server, key):
    t = _three(server, key)
    services = {s["service_code"]: s for s in t.services()}
    assert services["0101"]["service_name"] == "暴露垃圾"
    definition = t.services("5301")
    assert {a["code"] for a in definition["attributes"]} == {"hazard", "place_type"}
    lon, lat = center(0)
    answer = t.post(
        "0101",
        lat=lat,
        long=lon,
        address="平江路 1 号",
        name="San Zhang",
        phone="13812345678",
        description="小区门口垃圾堆放",
    )
    assert t.post_response.status_code == 201, answer
    number = answer[0]["service_request_id"]
    [got] = t.request(number, api_key=key)
    assert got["service_request_id"] == number
    assert got["status"] == "open" and got["service_code"] == "0101"
    assert got["description"] == "小区门口垃圾堆放"
    assert got["agency_responsible"] == "平江社区"
    assert number in [r["service_request_id"] for r in t.requests(api_key=key)]
    assert t.token(number, api_key=key)[0]["service_request_id"] == number


def test_three_sees_errors_in_open311_shape(server, key):
    t = _three(server, "gk_not_a_key")
    answer = t.post("0101", lat=31.3, long=120.6, description="x")
    assert t.post_response.status_code == 403
    assert answer[0]["code"] == 403


@pytest.mark.parametrize("fmt", ["json", "xml"])
def test_georeport_reads_services_and_requests(app, server, key, fmt):
    lon, lat = center(1)
    posted = _three(server, key).post("0101", lat=lat, long=lon, description="垃圾桶满溢")
    number = posted[0]["service_request_id"]
    app.extensions["gridapi"].settings.open311_public_read = True
    client = georeport.GeoReport(server, output_format=fmt)
    services = client.get_service_list()
    assert "0101" in [s["service_code"] for s in services]
    definition = client.get_service_definition("5301")
    attrs = definition["attributes"]["attribute"] if fmt == "xml" else definition["attributes"]
    assert {a["code"] for a in attrs} == {"hazard", "place_type"}
    listed = client.get_service_requests(service_code="0101", status="open")
    if fmt == "xml" and isinstance(listed, dict):  # xmltodict: one element is not a list
        listed = [listed]
    assert [r["service_request_id"] for r in listed] == [number]
    one = client.get_service_request(number)
    assert one["service_request_id"] == number and one["status"] == "open"
    assert "description" not in one  # a public answer: free text withheld
    assert float(one["lat"]) == pytest.approx(lat, abs=0.0005)
