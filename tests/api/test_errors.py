"""One error body everywhere: 400, 404, 405, 413, 422 and 500 without a traceback."""

from __future__ import annotations

from datetime import datetime

import pytest

from gridapi import create_app

from ..factories import COMMUNITY_A, LAT0, LON0, STEP, Accounts

A1 = COMMUNITY_A + "001"
CENTRE = [round(LON0 + 0.5 * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]
CENTRE_POINT = {"type": "Point", "coordinates": CENTRE}
ERROR_KEYS = {"code", "status", "message", "errors"}


def _assert_error(response, status: int) -> dict:
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == status
    return body


def test_422_names_every_bad_field_and_its_location(client):
    body = _assert_error(client.get("/api/v1/locate?lon=181&lat=-91&crs=utm&x=1"), 422)
    assert set(body["errors"]["query"]) == {"lon", "lat", "crs", "x"}
    assert body["errors"]["query"]["x"] == ["Unknown field."]
    body = _assert_error(client.get("/api/v1/locate?lat=31"), 422)
    assert body["errors"]["query"]["lon"] == ["Missing data for required field."]
    body = _assert_error(client.get("/api/v1/locate?lon=nan&lat=31"), 422)
    assert "lon" in body["errors"]["query"]


def test_every_422_has_a_message_and_the_same_one(client):
    """/locate parses its query by hand and answered "message": "" (Python gives 422 no
    description); the schema-checked endpoints the werkzeug sentence."""
    answers = [
        client.get("/api/v1/locate?lon=200&lat=31"),
        client.post("/api/v1/cases", json={}),
        client.post("/api/v1/locate/batch", json={"points": "x"}),
    ]
    messages = set()
    for r in answers:
        assert r.status_code == 422, r.get_json()
        body = r.get_json()
        assert set(body) == {"code", "status", "message", "errors"} and body["errors"]
        messages.add(body["message"])
    assert len(messages) == 1 and messages.pop().strip()


@pytest.mark.parametrize(
    "points, index",
    [
        ([[120.6, 31.3], [120.6]], "1"),
        ([[120.6, 31.3], [120.6, 95]], "1"),
        ([[200, 31.3]], "0"),
        ([["a", 31.3]], "0"),
        ([[True, 31.3]], "0"),
        ([[120.6, 31.3], ["120.6", 31.3]], "1"),  # numpy read the text as a number
        ([[120.6, "31.3"]], "0"),
    ],
)
def test_batch_points_errors_point_at_the_item(client, points, index):
    body = _assert_error(client.post("/api/v1/locate/batch", json={"points": points}), 422)
    assert index in body["errors"]["json"]["points"]


def test_batch_limits_and_unknown_crs(client):
    too_many = [[120.6, 31.3]] * 10_001
    body = _assert_error(client.post("/api/v1/locate/batch", json={"points": too_many}), 422)
    assert "at most 10000" in str(body["errors"]["json"]["points"])
    body = _assert_error(
        client.post("/api/v1/locate/batch", json={"points": [], "crs": "gcj-02"}), 422
    )
    assert "crs" in body["errors"]["json"]
    assert client.post("/api/v1/locate/batch", json={"points": []}).get_json() == {"results": []}


def test_malformed_json_is_400(client):
    body = _assert_error(
        client.post("/api/v1/locate/batch", data='{"points": [', content_type="application/json"),
        400,
    )
    assert "JSON" in body["message"]


@pytest.mark.parametrize(
    "method,path,content_type",
    [
        ("patch", "/api/v1/categories/0101", "text/plain"),
        ("post", "/api/v1/cases", "application/x-www-form-urlencoded"),
        ("post", "/api/v1/locate/batch", None),
    ],
)
def test_a_body_that_is_not_json_is_400_and_changes_nothing(
    client, world, method, path, content_type
):
    """webargs read a body of another type as no body: a PATCH sent as text/plain answered
    200 and changed nothing, a report sent as a form 422 "Missing data"."""
    name = client.get("/api/v1/categories/0101").get_json()["name"]
    headers = {"Content-Type": content_type} if content_type else {}
    r = getattr(client, method)(path, data=b'{"name": "ignored?"}', headers=headers)
    body = _assert_error(r, 400)
    assert "Content-Type: application/json" in body["errors"]["json"][0]
    assert client.get("/api/v1/categories/0101").get_json()["name"] == name


# A lone UTF-16 surrogate: the standard library's parser takes it, orjson refuses it. The
# report was parsed by both (webargs, then the view for its idempotency hash) and answered a
# bare 400 "The browser (or proxy) sent a request that this server could not understand."
LONE_SURROGATE = (
    b'{"category": "0101", "description": "\\ud800",'
    b' "location": {"type": "Point", "coordinates": [120.62, 31.31]}}'
)


@pytest.mark.parametrize("path", ["/api/v1/cases", "/api/v1/locate/batch"])
def test_a_body_one_json_parser_would_take_is_400_invalid_json(client, world, path):
    body = _assert_error(
        client.post(path, data=LONE_SURROGATE, content_type="application/json"), 400
    )
    assert body["message"] == "The request body is not valid JSON."
    assert body["errors"] == {"json": ["Invalid JSON body."]}


def test_an_empty_json_body_is_read_as_no_body(client):
    body = _assert_error(
        client.post("/api/v1/cases", data=b"", content_type="application/json"), 422
    )
    assert "category" in body["errors"]["json"]


def test_a_nul_character_is_422_naming_the_field_on_both_engines(client, world, engine):
    # PostgreSQL cannot store U+0000 in text (it answered 422 without a field); SQLite stored it.
    from sqlalchemy import text

    report = {
        "category": "0101",
        "description": "垃圾\u0000堆放",
        "location": {"type": "Point", "coordinates": [120.62, 31.31]},
        "parties": [{"name": "张\u0000三", "role": "reporter"}],
    }
    body = _assert_error(client.post("/api/v1/cases", json=report), 422)
    assert body["errors"]["json"]["description"] == ["Must not contain NUL characters (U+0000)."]
    assert body["errors"]["json"]["parties"] == {
        "0": {"name": ["Must not contain NUL characters (U+0000)."]}
    }
    listed = _assert_error(client.get("/api/v1/cases?q=a%00b"), 422)
    assert listed["errors"]["query"]["q"] == ["Must not contain NUL characters (U+0000)."]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 0


def test_unknown_route_and_code_are_404_and_wrong_method_405(client):
    _assert_error(client.get("/api/v1/nothing-here"), 404)
    body = _assert_error(client.get("/api/v1/regions/320508999000"), 404)
    assert body["message"] == "The region does not exist or is outside your scope."
    _assert_error(client.delete("/api/v1/locate"), 405)


def test_oversized_body_is_413(settings):
    small = create_app(settings.__class__(**{**settings.__dict__, "max_body_mb": 0.001}))
    body = _assert_error(
        Accounts(small)
        .client("admin")
        .post("/api/v1/locate/batch", json={"points": [[120.6, 31.3]] * 200}),
        413,
    )
    assert "GRIDAPI_MAX_BODY_MB" in body["message"]
    small.extensions["gridapi"].engine.dispose()


def test_unexpected_error_is_500_without_internals(app, client, monkeypatch):
    from gridapi.services import routing

    def explode(*_args):
        raise RuntimeError("secret internal detail SELECT * FROM grids")

    monkeypatch.setattr(routing.IndexSnapshot, "locate", explode)
    response = client.get("/api/v1/locate?lon=120.6&lat=31.3")
    body = _assert_error(response, 500)
    text = response.get_data(as_text=True)
    assert "secret" not in text and "Traceback" not in text and "SELECT" not in text
    assert response.headers["X-Request-ID"] in body["message"]


def test_no_free_database_connection_is_503_with_retry_after(app, client, engine):
    """Every pooled connection busy (a burst of requests waiting on locks): the request gets
    503 and Retry-After in the one error body, not a 500."""
    held = []
    engine.pool._timeout = 0.2  # the wait for a connection, shortened for the test
    try:
        while True:
            try:
                held.append(engine.connect())
            except Exception:
                break
            assert len(held) <= 50, "the engine's pool never runs out"
        body = _assert_error(client.get("/api/v1/categories"), 503)
        assert "retry" in body["message"]
    finally:
        for conn in held:
            conn.close()


def test_an_audit_time_without_its_offset_is_422_naming_it(client, world):
    """`since=2026-11-29T00:00:00` was a 500 (a naive time compared with aware ones); a
    time says its offset, as the case list's `from` and `to` do."""
    for name in ("since", "until"):
        r = client.get(f"/api/v1/audit?{name}=2026-11-29T00:00:00")
        assert r.status_code == 422, r.get_json()
        assert list(r.get_json()["errors"]["query"]) == [name]
        assert client.get(f"/api/v1/audit?{name}=2026-11-29T00:00:00%2B08:00").status_code == 200


@pytest.mark.parametrize(
    "method,url,body,field",
    [
        ("get", "/api/v1/users?after=2147483648", None, "after"),
        ("get", "/api/v1/audit?before=2147483648", None, "before"),
        ("get", "/api/v1/households?house_id=2147483648", None, "house_id"),
        ("post", "/api/v1/users", {"username": "big", "department_id": 2**31}, "department_id"),
    ],
)
def test_an_id_past_32_bits_is_422_naming_it_on_both_engines(
    client, world, method, url, body, field
):
    """Ids are 32-bit columns: 2147483648 was a field-less 422 'out of range' on PostgreSQL
    and a plain miss (200, or 'unknown department') on SQLite."""
    r = getattr(client, method)(url, json=body) if body else getattr(client, method)(url)
    assert r.status_code == 422, r.get_json()
    where = "json" if body else "query"
    assert r.get_json()["errors"][where][field] == [
        "Must be greater than or equal to -2147483648 and less than or equal to 2147483647."
    ]
    if not body:
        assert getattr(client, method)(url.replace("2147483648", "2147483647")).status_code == 200


@pytest.mark.parametrize(
    "url,field",
    [
        ("/api/v1/users?after=-1", "after"),
        ("/api/v1/grid-versions?after=-1", "after"),
        ("/api/v1/audit?before=-1", "before"),
        ("/api/v1/tasks?cursor=-1", "cursor"),
        ("/api/v1/patrols?cursor=-1", "cursor"),
        ("/api/v1/me/notifications?after=-1", "after"),
    ],
)
def test_a_negative_page_cursor_is_422_naming_it_on_every_list(client, world, url, field):
    """`after=-1` listed the first page of users and grid versions (and `before=-1` an empty
    audit page) with 200, where every other list refused a negative cursor with 422."""
    body = _assert_error(client.get(url), 422)
    assert body["errors"]["query"] == {field: ["Must be greater than or equal to 0."]}
    assert client.get(url.replace("=-1", "=0")).status_code == 200


NO_PROVINCE = "999999999999"  # 12 digits, but 99 is no GB/T 2260 province code
NOT_A_PROVINCE = ["province digits 99 are not a GB/T 2260 province code"]


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/cases",
        "/api/v1/persons",
        "/api/v1/households",
        "/api/v1/houses",
        "/api/v1/visits",
        "/api/v1/special-groups",
        "/api/v1/tasks",
        "/api/v1/campaigns",
        "/api/v1/departments",
        "/api/v1/users",
        "/api/v1/exports/cases?format=csv",
        "/api/v1/exports/tasks?format=csv",
        "/api/v1/exports/visits?format=csv",
        "/api/v1/exports/persons?format=csv",
    ],
)
def test_a_region_that_is_no_division_code_is_422_naming_it_on_every_list(client, world, url):
    """`region=999999999999` answered 422 with `"errors": {}` on the register's lists and
    the exports of residents and visits (a service's bare code error), where the cases
    named `errors.query.region`."""
    joined = "&" if "?" in url else "?"
    body = _assert_error(client.get(f"{url}{joined}region={NO_PROVINCE}"), 422)
    assert body["errors"] == {"query": {"region": NOT_A_PROVINCE}}, body
    assert client.get(f"{url}{joined}region=320508001000").status_code == 200


@pytest.mark.parametrize("kind", ["cases", "tasks", "visits", "persons"])
def test_a_region_that_is_no_division_code_in_a_jobs_filters_is_422_naming_it(client, world, kind):
    """In an export job's filters (JSON), the region was named as a query parameter (cases,
    tasks) or not at all (visits, residents)."""
    body = {"format": "csv", "filters": {"region": NO_PROVINCE}}
    answer = _assert_error(client.post(f"/api/v1/exports/{kind}/jobs", json=body), 422)
    assert answer["errors"] == {"json": {"filters": {"region": NOT_A_PROVINCE}}}, answer


def test_a_query_parameter_given_twice_is_422_not_half_read(client, world):
    """status=filed&status=dispatched listed only the filed cases (webargs kept the first
    value of a parameter that takes one); the comma-separated list is the documented form."""
    r = client.get("/api/v1/cases?status=filed&status=dispatched")
    assert r.status_code == 422
    assert list(r.get_json()["errors"]["query"]) == ["status"]
    assert client.get("/api/v1/cases?status=filed,dispatched").status_code == 200
    assert client.get("/api/v1/cases?limit=5&limit=6").status_code == 422
    assert client.get("/api/v1/grids?limit=5&limit=6").status_code == 422


@pytest.mark.parametrize(
    "query,field",
    [
        ("/api/v1/locate?lon=1_20&lat=31.31", "lon"),  # float() reads 120
        ("/api/v1/locate?lon=120.61&lat=%EF%BC%93%EF%BC%91", "lat"),  # fullwidth 31
        ("/api/v1/locate?lon=120.61%0B&lat=31.31", "lon"),  # a vertical tab around it
        ("/api/v1/cases?limit=1_0", "limit"),
        ("/api/v1/cases?bbox=120.5,31.2,120_7,31.4", "bbox"),
    ],
)
def test_numbers_in_a_query_are_plain_ascii_decimals(client, world, query, field):
    """A malformed number is 422 naming it, not read as another number: `lon=1_20` was
    routed as 120 (Python's float() takes digit-group underscores and any Unicode digit)."""
    r = client.get(query)
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]["query"]) == [field]


def test_plain_numbers_in_a_query_still_read(client, world):
    for query in (
        "/api/v1/locate?lon=120.615&lat=31.305",
        "/api/v1/locate?lon=+120.615&lat=3.1305e1",  # "+" reads as a space: trimmed
        "/api/v1/cases?limit=5&bbox=120.5,%2031.2,120.7,31.4",
    ):
        assert client.get(query).status_code == 200, (query, client.get(query).get_json())


@pytest.mark.parametrize(
    "url,field",
    [
        ("/api/v1/cases?from=9999-12-31T23:59:59-12:00", "from"),
        ("/api/v1/cases?to=0001-01-01T00:00:00%2B14:00", "to"),
        ("/api/v1/cases?from=1850-01-01T00:00:00%2B08:00", "from"),
        ("/api/v1/indicators?region=320508000000&from=0001-01-01&to=2026-01-01", "from"),
        ("/api/v1/audit?since=0001-01-01T00:00:00%2B14:00", "since"),
        ("/api/v1/audit?until=9999-12-31T23:59:59-12:00", "until"),
    ],
)
def test_a_date_outside_what_can_be_stored_is_422_naming_it(client, world, url, field):
    """0001-01-01T00:00+14:00 lies before the first instant Python holds in UTC: binding it
    raised OverflowError (500 in lists and Open311; 422 naming nothing elsewhere)."""
    r = client.get(url)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["query"][field] == ["Must lie between the years 1900 and 2100."]


def test_a_time_in_the_years_as_written_is_taken_and_stored_alike_on_both_engines(client, world):
    """The years were checked in UTC: 1900-01-01T00:00+08:00 (1899-12-31 in UTC) and
    2100-12-31T23:00-08:00 (2101 in UTC) were 422 "Must lie between the years 1900 and 2100",
    which they do, as written. Both engines store, compare and answer them alike."""
    first, last = "1900-01-01T00:00:00+08:00", "2100-12-31T23:00:00-08:00"
    for url in (
        f"/api/v1/cases?from={first.replace('+', '%2B')}",
        f"/api/v1/cases?to={last}",
        "/api/v1/audit?since=1900-01-01T00:00:00%2B14:00",
    ):
        assert client.get(url).status_code == 200, (url, client.get(url).get_json())
    house = client.post(
        "/api/v1/houses",
        json={"address": "平江路1号", "location": {"type": "Point", "coordinates": CENTRE}},
    ).get_json()
    household = client.post(
        "/api/v1/households", json={"number": "0001", "house_id": house["id"]}
    ).get_json()
    # A visit keeps a rule of its own (none before the year 2000, as a case's occurred_at),
    # checked as written too: its first instant lies in 1999 in UTC.
    r = client.post("/api/v1/visits", json={"household_id": household["id"], "visited_at": first})
    assert r.status_code == 422
    assert r.get_json()["errors"] == {"json": {"visited_at": ["lies before the year 2000"]}}
    floor = "2000-01-01T00:00:00+08:00"
    r = client.post("/api/v1/visits", json={"household_id": household["id"], "visited_at": floor})
    assert r.status_code == 201, r.get_json()
    visit = r.get_json()
    assert datetime.fromisoformat(visit["visited_at"]) == datetime.fromisoformat(floor)
    read = client.get(f"/api/v1/visits/{visit['id']}").get_json()
    assert read["visited_at"] == "1999-12-31T16:00:00+00:00"
    since = client.get(f"/api/v1/visits?since={first.replace('+', '%2B')}").get_json()
    until = client.get(f"/api/v1/visits?until={first.replace('+', '%2B')}").get_json()
    assert ([v["id"] for v in since["items"]], until["items"]) == ([visit["id"]], [])
    since = client.get(f"/api/v1/visits?since={floor.replace('+', '%2B')}").get_json()
    until = client.get(f"/api/v1/visits?until={floor.replace('+', '%2B')}").get_json()
    assert ([v["id"] for v in since["items"]], until["items"]) == ([visit["id"]], [])
    r = client.post("/api/v1/tasks", json={"title": "走访独居老人", "grid": A1, "due_at": last})
    assert r.status_code == 201, r.get_json()
    task = r.get_json()
    assert datetime.fromisoformat(task["due_at"]) == datetime.fromisoformat(last)
    read = client.get(f"/api/v1/tasks/{task['id']}").get_json()
    assert read["due_at"] == "2101-01-01T07:00:00+00:00"
    # occurred_at keeps its own rule (no case of the last century), now named as such
    report = {"category": "0101", "description": "x", "location": CENTRE_POINT}
    r = client.post("/api/v1/cases", json={**report, "occurred_at": "1900-01-01T00:00:00+08:00"})
    assert r.status_code == 422
    assert r.get_json()["errors"] == {"json": {"occurred_at": ["lies before the year 2000"]}}


def test_a_get_that_takes_no_query_parameters_refuses_them(client, anon_client):
    """/roles?bogus=1 and /clients?limit=-1 answered 200 as if understood, while every list
    with a query schema refuses an unknown parameter: 422, after authentication."""
    for url, name in (("/api/v1/roles?bogus=1", "bogus"), ("/api/v1/clients?limit=-1", "limit")):
        r = client.get(url)
        assert r.status_code == 422, (url, r.get_json())
        body = r.get_json()
        assert set(body) == {"code", "status", "message", "errors"}
        assert body["errors"] == {"query": {name: ["Unknown field."]}}
        assert anon_client.get(url).status_code == 401
    assert client.get("/api/v1/roles").status_code == 200
    assert client.get("/api/v1/roles?fields=name").status_code == 200
    assert client.get("/api/v1/me?x=1").status_code == 422
    assert client.get("/api/v1/health/live?probe=1").status_code == 200  # monitors' own
    spec = client.get("/openapi.json").get_json()
    assert "422" in spec["paths"]["/api/v1/roles"]["get"]["responses"]


def test_head_carries_the_etag_of_get(client):
    got = client.get("/api/v1/roles")
    head = client.head("/api/v1/roles")
    assert head.status_code == 200 and head.get_data() == b""
    assert head.headers["ETag"] == got.headers["ETag"]
    again = client.head("/api/v1/roles", headers={"If-None-Match": got.headers["ETag"]})
    assert again.status_code == 304


REPEATED = (
    b'{"category": "0101", "description": "\xe8\xb7\xaf\xe7\x81\xaf\xe6\x8d\x9f\xe5\x9d\x8f",'
    b' "category": "0902", "location": {"type": "Point", "coordinates": [120.62, 31.31]}}'
)
REPEATED_INSIDE = (
    b'{"category": "0101", "description": "x", "location": {"type": "Point",'
    b' "coordinates": [120.62, 31.31], "coordinates": [121.0, 31.0]}}'
)


@pytest.mark.parametrize(
    "data, name", [(REPEATED, "category"), (REPEATED_INSIDE, "coordinates")], ids=["top", "inside"]
)
def test_a_body_naming_a_member_twice_is_400_naming_it(client, world, engine, data, name):
    """{"category": "0101", ..., "category": "0902"} was read as 0902 (orjson keeps the
    last), where a gateway that checked the first saw 0101: the two disagreed about what was
    reported. Such a body is refused, as a query parameter given twice is, and nothing is
    written."""
    from sqlalchemy import text

    r = client.post(
        "/api/v1/cases",
        data=data,
        content_type="application/json",
        headers={"Idempotency-Key": "twice"},
    )
    body = _assert_error(r, 400)
    assert body["errors"] == {"json": [f"Invalid JSON body: the member '{name}' is given twice."]}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM cases")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM idempotency_keys")).scalar() == 0
    # Declared in another charset, it is refused the same way, not read again as sent.
    gbk = client.post(
        "/api/v1/cases",
        data=data.decode().encode("gbk"),
        content_type="application/json; charset=GBK",
    )
    assert _assert_error(gbk, 400)["errors"] == body["errors"]
    # The same member in two objects is no repetition.
    fine = client.post(
        "/api/v1/sync/batch",
        json={
            "actions": [
                {"key": "a", "type": "case.create", "payload": {"category": "0101"}},
                {"key": "b", "type": "case.create", "payload": {"category": "0101"}},
            ]
        },
    )
    assert fine.status_code == 200, fine.get_json()
