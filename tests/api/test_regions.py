"""The administrative tree over HTTP: create, read, list, navigate, update and import regions."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from gridapi import clock
from gridapi.models import Region

from ..factories import (
    CITY,
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    LAT0,
    LON0,
    PROVINCE,
    STEP,
    TOWNSHIP,
    rectangle,
    region_rows,
    to_multi,
)

TREE = [PROVINCE, CITY, COUNTY, TOWNSHIP, COMMUNITY_A, COMMUNITY_B]
BOWTIE = {
    "type": "Polygon",
    "coordinates": [
        [[120.60, 31.30], [120.61, 31.31], [120.61, 31.30], [120.60, 31.31], [120.60, 31.30]]
    ],
}
POINT = {"type": "Point", "coordinates": [120.60, 31.30]}

# 东莞: a city without counties; 仙桃: a province-administered county-level city; 北京.
GUANGDONG, DONGGUAN, DONGCHENG_DG = "440000000000", "441900000000", "441900003000"
HUBEI, HUBEI_PSEUDO_CITY, XIANTAO = "420000000000", "429000000000", "429004000000"
BEIJING, BEIJING_DISTRICTS, DONGCHENG_BJ = "110000000000", "110100000000", "110101000000"


def create(client: Any, code: str, name: str, **extra: Any) -> Any:
    return client.post("/api/v1/regions", json={"code": code, "name": name, **extra})


def created(client: Any, code: str, name: str, **extra: Any) -> dict[str, Any]:
    r = create(client, code, name, **extra)
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def codes(response: Any) -> list[str]:
    assert response.status_code == 200, response.get_json()
    return [item["code"] for item in response.get_json()["items"]]


def region_count(session: Any) -> int:
    """Rows in the regions table, read in a fresh transaction."""
    session.rollback()
    count = session.scalar(select(func.count()).select_from(Region))
    session.rollback()
    return count


def assert_error(response: Any, status: int, *path: str) -> dict[str, Any]:
    """Check the standard error body and that ``errors`` holds ``path`` (location, field...)."""
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    assert body["code"] == status
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    assert set(body) <= {"code", "status", "message", "errors"}
    node: Any = body.get("errors")
    for key in path:
        assert isinstance(node, dict) and key in node, (path, body)
        node = node[key]
    if path:
        assert node, body
    return body


def test_an_import_row_wholly_outside_its_parents_boundary_is_refused(client, factory, session):
    """Imports took what create and change refuse: a community drawn in Beijing under a
    Suzhou township, the parent's boundary the one in service or the one the file brings.
    Nothing in common with it is a row error under `boundary`, and nothing is written."""
    factory.regions()  # the township is columns 0-4 of row 0
    before = region_count(session)
    beijing = {
        "type": "Polygon",
        "coordinates": [
            [[116.3, 39.9], [116.31, 39.9], [116.31, 39.91], [116.3, 39.91], [116.3, 39.9]]
        ],
    }
    rows = [
        {"code": "320508001071", "name": "边上", "boundary": rectangle(3, 0, 5, 1)},
        {"code": "320508001072", "name": "远方", "boundary": beijing},
        # a new township and its community in one file: judged against the file's boundary
        {"code": "320508009000", "name": "新镇", "boundary": rectangle(10, 0, 12, 1)},
        {"code": "320508009001", "name": "新村", "boundary": rectangle(0, 3, 1, 4)},
    ]
    body = assert_error(client.post("/api/v1/regions/import", json=rows), 422, "json", "1")
    assert {row: list(fields) for row, fields in body["errors"]["json"].items()} == {
        "1": ["boundary"],
        "3": ["boundary"],
    }
    assert "320508001000" in body["errors"]["json"]["1"]["boundary"][0]
    assert "320508009000" in body["errors"]["json"]["3"]["boundary"][0]
    assert region_count(session) == before
    rows[1]["boundary"] = rectangle(1, 0, 2, 1)
    rows[3]["boundary"] = rectangle(11, 0, 12, 1)
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()
    assert region_count(session) == before + 4
    r = client.post("/api/v1/regions/import", json=[{**rows[1], "boundary": beijing}])
    assert_error(r, 422, "json", "0", "boundary")
    stored = client.get("/api/v1/regions/320508001072").get_json()["boundary"]
    assert stored == to_multi(rows[1]["boundary"])


@pytest.fixture
def tree(factory):
    factory.regions()


# ---- create ----------------------------------------------------------------------------------


def test_create_derives_level_and_parent(client):
    expected = [
        (PROVINCE, "江苏省", "province", None),
        (CITY, "苏州市", "city", PROVINCE),
        (COUNTY, "姑苏区", "county", CITY),
        (TOWNSHIP, "平江街道", "township", COUNTY),
        (COMMUNITY_A, "平江社区", "village", TOWNSHIP),
    ]
    for code, name, level, parent in expected:
        body = created(client, code, name)
        assert (body["code"], body["name"], body["level"], body["parent_code"]) == (
            code,
            name,
            level,
            parent,
        )
        assert body["has_boundary"] is False and body["boundary"] is None
        assert body["valid_from"] is None and body["valid_to"] is None
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["parent_code"] == TOWNSHIP


def test_create_accepts_matching_level_and_parent_and_a_boundary(client, factory):
    factory.regions(with_boundaries=False)
    boundary = rectangle(4, 0, 6, 1)
    body = created(
        client,
        "320508001003",
        "新社区",
        level="village",
        parent_code=TOWNSHIP,
        boundary=boundary,
        valid_from="2024-01-01",
    )
    assert (body["level"], body["parent_code"], body["valid_from"]) == (
        "village",
        TOWNSHIP,
        "2024-01-01",
    )
    assert body["has_boundary"] is True
    assert body["boundary"]["type"] == "MultiPolygon"
    assert body["boundary"]["coordinates"] == [boundary["coordinates"]]


def test_a_boundary_wholly_outside_its_parents_is_refused(client, factory):
    """A community drawn in Beijing under a Suzhou township (the township with a boundary)
    was taken, and /locate named the township for points in Beijing. Nothing in common with
    the parent's boundary is a 422 naming boundary, on create and on change; one that only
    spills over the parent's edge is taken (two sources' lines never match exactly)."""
    factory.regions()  # the township is columns 0-4 of row 0
    beijing = {
        "type": "Polygon",
        "coordinates": [
            [[116.3, 39.9], [116.31, 39.9], [116.31, 39.91], [116.3, 39.91], [116.3, 39.9]]
        ],
    }
    r = client.post(
        "/api/v1/regions", json={"code": "320508001062", "name": "远方", "boundary": beijing}
    )
    assert_error(r, 422, "json", "boundary")
    assert client.get("/api/v1/regions/320508001062").status_code == 404
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"boundary": beijing})
    assert_error(r, 422, "json", "boundary")
    spills = rectangle(3, 0, 5, 1)  # half inside the township, half beyond its edge
    r = client.post(
        "/api/v1/regions", json={"code": "320508001063", "name": "边上", "boundary": spills}
    )
    assert r.status_code == 201, r.get_json()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"code": "32050800100", "name": "短"}, "code"),  # 11 digits
        ({"code": "32050800100A", "name": "字母"}, "code"),  # a letter
        ({"code": "990000000000", "name": "无此省"}, "code"),  # province 99
        ({"code": "320001000000", "name": "市00"}, "code"),  # city 00
        ({"code": "320508000001", "name": "乡000"}, "code"),  # township 000
        ({"code": "320508001003", "name": "错级", "level": "township"}, "level"),
        ({"code": "320508001003", "name": "错父", "parent_code": COUNTY}, "parent_code"),
        ({"code": "320508002001", "name": "无父"}, "code"),  # no 320508002000
        ({"code": "320508001003", "name": "多余", "population": 3}, "population"),
        ({"code": "320508001003", "name": "长" * 101}, "name"),
        ({"code": "320508001003", "name": ""}, "name"),
        ({"code": "320508001003"}, "name"),
        ({"code": "320508001003", "name": "点", "boundary": POINT}, "boundary"),
        ({"code": "320508001003", "name": "蝴蝶", "boundary": BOWTIE}, "boundary"),
        ({"code": "320508001003", "name": "无坐标", "boundary": {"type": "Polygon"}}, "boundary"),
    ],
)
def test_create_rejects_bad_input_with_the_field_path(client, factory, session, payload, field):
    factory.regions(with_boundaries=False)
    r = client.post("/api/v1/regions", json=payload)
    assert_error(r, 422, "json", field)
    assert region_count(session) == len(TREE)


def test_create_missing_parent_names_the_parent_to_create(client):
    created(client, PROVINCE, "江苏省")
    body = assert_error(create(client, COUNTY, "姑苏区"), 422, "json", "code")
    assert CITY in body["errors"]["json"]["code"][0]


def test_create_duplicate_current_code_is_409(client, tree):
    r = create(client, COMMUNITY_A, "另一个平江社区")
    body = assert_error(r, 409, "json", "code")
    assert body["message"] == f"Region {COMMUNITY_A} already exists."
    assert body["errors"] == {"json": {"code": ["a current region has this code"]}}
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["name"] == "平江社区"


NEW_VILLAGE = "320508001003"
# A write of periods waits for another's in the lock of the periods (PostgreSQL), first.
WAITS_FOR_PERIODS = "SELECT pg_advisory_xact_lock"


def _uncommitted_region(
    app: Any,
    session: Any,
    name: str,
    valid_from: date | None = None,
    valid_to: date | None = None,
) -> None:
    """Another request's region NEW_VILLAGE in ``session`` (the period given, else from the
    beginning): inserted, not committed."""
    from gridapi.scope import Scope
    from gridapi.services import regions as svc

    svc.create_region(
        session,
        code=NEW_VILLAGE,
        name=name,
        valid_from=valid_from,
        valid_to=valid_to,
        scope=Scope.everything(),
    )


def _names(app: Any, code: str) -> list[str]:
    with app.extensions["gridapi"].sessions() as session:
        return list(session.scalars(select(Region.name).where(Region.code == code)))


def _audited(client: Any, action: str) -> list[dict[str, Any]]:
    r = client.get("/api/v1/audit")
    assert r.status_code == 200, r.get_json()
    return [e for e in r.get_json()["items"] if e["action"] == action]


def test_a_code_created_meanwhile_answers_as_one_created_before(client, tree, app, engine):
    """Two creates of one new code at once: both looked before either committed, and on
    PostgreSQL the second insert waited in the unique index of current codes for the first,
    then answered the generic 409 naming nothing. It answers as when the other came first
    now: the 409 naming `code`, the one region the other's, no audit row of its own."""
    from ..races import send_while_uncommitted

    with app.extensions["gridapi"].sessions() as session:
        _uncommitted_region(app, session, "甲社区")
        r = send_while_uncommitted(
            engine,
            session,
            "regions",
            lambda: create(client, NEW_VILLAGE, "乙社区"),
            waits_in=WAITS_FOR_PERIODS,
        )
    body = assert_error(r, 409, "json", "code")
    assert body["message"] == f"Region {NEW_VILLAGE} already exists."
    assert body["errors"] == {"json": {"code": ["a current region has this code"]}}
    assert _names(app, NEW_VILLAGE) == ["甲社区"]
    assert _audited(client, "region.create") == []


def test_an_import_of_a_code_created_meanwhile_renames_it_as_after_it(client, tree, app, engine):
    """An import of a code another request was creating: both looked before either
    committed, and on PostgreSQL the import's insert waited for the other's, then answered
    the generic 409 and imported nothing. It imports as when the other came first now: the
    region is renamed (counted as updated), one row, and the import's audit row says so."""
    from ..races import send_while_uncommitted

    rows = [{"code": TOWNSHIP, "name": "平江街道"}, {"code": NEW_VILLAGE, "name": "乙社区"}]
    with app.extensions["gridapi"].sessions() as session:
        _uncommitted_region(app, session, "甲社区")
        r = send_while_uncommitted(
            engine,
            session,
            "regions",
            lambda: client.post("/api/v1/regions/import", json=rows),
            waits_in=WAITS_FOR_PERIODS,
        )
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"created": 0, "updated": 1, "unchanged": 1, "errors": []}
    assert _names(app, NEW_VILLAGE) == ["乙社区"]
    entry = max(_audited(client, "region.import"), key=lambda e: e["id"])  # tree's is first
    assert entry["summary"]["updated_codes"] == [NEW_VILLAGE]
    assert entry["summary"]["created_codes"] == []


def _create_meanwhile(client: Any, engine: Any, session: Any, start: date, end: date) -> Any:
    """POST a period of NEW_VILLAGE while ``session`` holds another write of its periods."""
    from ..races import send_while_uncommitted

    return send_while_uncommitted(
        engine,
        session,
        "regions",
        lambda: create(
            client, NEW_VILLAGE, "乙社区", valid_from=start.isoformat(), valid_to=end.isoformat()
        ),
        waits_in=WAITS_FOR_PERIODS,
    )


def test_a_create_during_a_period_change_answers_as_after_it(client, tree, app, engine):
    """A period with an end created while a change of the code's planned period moved it
    earlier, over it: the create took no lock and checked the periods before the change
    was written, and only the index of current codes guarded, which a period with an end
    passes: both were taken, overlapping. The create waits for the change now and answers
    the overlap 409 naming valid_from, as when it came after it."""
    from gridapi.scope import Scope
    from gridapi.services import regions as svc

    today = date.today()
    later, earlier = today + timedelta(days=400), today + timedelta(days=200)
    created(client, NEW_VILLAGE, "甲社区", valid_from=later.isoformat())
    with app.extensions["gridapi"].sessions() as session:  # another request's, not committed
        svc.update_region(
            session, NEW_VILLAGE, {"valid_from": earlier}, on=later, scope=Scope.everything()
        )
        r = _create_meanwhile(
            client, engine, session, today + timedelta(days=210), today + timedelta(days=220)
        )
    body = assert_error(r, 409, "json", "valid_from")
    assert body["message"] == (
        f"The period overlaps the period of {NEW_VILLAGE} from {earlier} to now; "
        "periods of one code never overlap."
    )
    assert body["errors"] == {
        "json": {"valid_from": [f"overlaps the period from {earlier} to now"]}
    }
    assert _periods(app, NEW_VILLAGE) == [("甲社区", earlier.isoformat(), None)]
    assert [e["summary"]["name"] for e in _audited(client, "region.create")] == ["甲社区"]


def test_two_creates_of_periods_with_an_end_of_one_code_never_overlap(client, tree, app, engine):
    """Two creates of one code, each a period with an end, at once: neither saw the other's
    (no row of the code to lock; the index of current codes takes periods with an end),
    and both were taken, overlapping. The second waits for the first now and answers the
    overlap 409 naming valid_from."""

    with app.extensions["gridapi"].sessions() as session:  # another request's, not committed
        _uncommitted_region(app, session, "甲社区", date(2018, 1, 1), date(2018, 12, 31))
        r = _create_meanwhile(client, engine, session, date(2018, 6, 1), date(2019, 6, 30))
    body = assert_error(r, 409, "json", "valid_from")
    assert body["errors"] == {
        "json": {"valid_from": ["overlaps the period from 2018-01-01 to 2018-12-31"]}
    }
    assert _periods(app, NEW_VILLAGE) == [("甲社区", "2018-01-01", "2018-12-31")]
    assert _audited(client, "region.create") == []


def test_an_import_during_a_create_of_a_period_with_an_end_answers_as_after_it(
    client, tree, app, engine
):
    """An import of a code another request was creating with an end: the import saw no
    period of it and created it from the beginning, over the other's (the index of current
    codes takes a period with an end): both taken, overlapping. The import waits now and
    answers the row's error, as when it came after it; nothing is written."""

    from ..races import send_while_uncommitted

    rows = [{"code": COMMUNITY_B, "name": "观前新社区"}, {"code": NEW_VILLAGE, "name": "乙社区"}]
    with app.extensions["gridapi"].sessions() as session:  # another request's, not committed
        _uncommitted_region(app, session, "甲社区", date(2018, 1, 1), date(2020, 12, 31))
        r = send_while_uncommitted(
            engine,
            session,
            "regions",
            lambda: client.post("/api/v1/regions/import", json=rows),
            waits_in=WAITS_FOR_PERIODS,
        )
    body = assert_error(r, 422, "json", "1", "code")
    assert set(body["errors"]["json"]) == {"1"}
    assert "its period ended on 2020-12-31" in body["errors"]["json"]["1"]["code"][0]
    assert _periods(app, NEW_VILLAGE) == [("甲社区", "2018-01-01", "2020-12-31")]
    assert _names(app, COMMUNITY_B) == ["观前社区"]


def test_create_with_valid_to_before_valid_from_is_422(client, tree):
    r = create(client, "320508001003", "倒序", valid_from="2021-01-01", valid_to="2020-01-01")
    assert_error(r, 422, "json", "valid_to")


def test_a_planned_township_takes_its_planned_communities(client, tree):
    """A reorganisation loaded ahead of its day: the planned township was created, but its
    planned communities were refused, "create 320508002000 first", as their parent was
    looked for among the regions valid today."""
    later = (clock.today() + timedelta(days=30)).isoformat()
    township, community = "320508002000", "320508002001"
    created(client, township, "新街道", valid_from=later)
    body = created(client, community, "新社区", valid_from=later)
    assert (body["parent_code"], body["valid_from"]) == (township, later)
    assert codes(
        client.get(f"/api/v1/regions/{township}/children", query_string={"on": later})
    ) == [community]
    # From today, or from the beginning, it still needs a parent valid today.
    r = create(client, "320508002002", "今日社区")
    body = assert_error(r, 422, "json", "code")
    assert body["errors"]["json"]["code"] == [
        f"no parent for 320508002002: create {township} first"
    ]
    r = create(
        client,
        "320508002003",
        "早社区",
        valid_from=(clock.today() + timedelta(days=29)).isoformat(),
    )
    body = assert_error(r, 422, "json", "code")
    assert body["errors"]["json"]["code"] == [
        f"no parent for 320508002003: create {township} valid on "
        f"{clock.today() + timedelta(days=29)} first"
    ]


def test_create_code_with_trailing_newline_is_422(client, tree):
    assert_error(create(client, "320508001003\n", "换行"), 422, "json", "code")


def test_create_code_with_full_width_digit_is_422(client, tree):
    assert_error(create(client, "32050800100５", "全角"), 422, "json", "code")


# ---- get -------------------------------------------------------------------------------------


def test_get_region_with_boundary(client, tree):
    r = client.get(f"/api/v1/regions/{COMMUNITY_A}")
    assert r.status_code == 200
    body = r.get_json()
    assert (body["code"], body["name"], body["level"], body["parent_code"]) == (
        COMMUNITY_A,
        "平江社区",
        "village",
        TOWNSHIP,
    )
    assert body["has_boundary"] is True
    assert body["boundary"]["type"] == "MultiPolygon"
    ring = body["boundary"]["coordinates"][0][0]
    lons, lats = [p[0] for p in ring], [p[1] for p in ring]
    assert min(lons) == pytest.approx(LON0) and max(lons) == pytest.approx(LON0 + 2 * STEP)
    assert min(lats) == pytest.approx(LAT0) and max(lats) == pytest.approx(LAT0 + STEP)
    province = client.get(f"/api/v1/regions/{PROVINCE}").get_json()
    assert province["has_boundary"] is False and province["boundary"] is None


def test_get_unknown_code_is_404_with_the_standard_body(client, tree):
    r = client.get("/api/v1/regions/320508009999")
    body = assert_error(r, 404)
    assert body["status"] == "Not Found"
    # The message names no code: an out-of-scope code must answer exactly like this one.
    assert body["message"] == "The region does not exist or is outside your scope."


def test_not_found_body_has_every_key(client, tree):
    body = client.get("/api/v1/regions/320508009999").get_json()
    assert set(body) == {"code", "status", "message", "errors"}


def test_bad_on_date_is_422(client, tree):
    assert_error(client.get(f"/api/v1/regions/{COMMUNITY_A}?on=yesterday"), 422, "query", "on")


# ---- list ------------------------------------------------------------------------------------


def test_list_all_ordered_by_code(client, tree):
    r = client.get("/api/v1/regions")
    assert codes(r) == TREE
    assert r.get_json()["next"] is None
    assert "boundary" not in r.get_json()["items"][0]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("level=village", [COMMUNITY_A, COMMUNITY_B]),
        ("level=province", [PROVINCE]),
        (f"parent={TOWNSHIP}", [COMMUNITY_A, COMMUNITY_B]),
        (f"parent={PROVINCE}", [CITY]),
        (f"within={CITY}", [COUNTY, TOWNSHIP, COMMUNITY_A, COMMUNITY_B]),
        (f"within={TOWNSHIP}", [COMMUNITY_A, COMMUNITY_B]),
        (f"within={COMMUNITY_A}", []),
        (f"within={CITY}&level=township", [TOWNSHIP]),
        ("q=平江", [TOWNSHIP, COMMUNITY_A]),
        ("q=观前", [COMMUNITY_B]),
        ("q=苏", [PROVINCE, CITY, COUNTY]),
        ("q=%25", []),  # '%' is matched literally, not as a wildcard
        ("q=_", []),
        ("q=平江&level=village", [COMMUNITY_A]),
    ],
)
def test_list_filters(client, tree, query, expected):
    assert codes(client.get(f"/api/v1/regions?{query}")) == expected


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("level=town", "level"),
        ("parent=3205", "parent"),
        ("within=320508000001", "within"),  # twelve digits, but not a division code
        ("after=abc", "after"),
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
    ],
)
def test_list_rejects_bad_query_with_the_field_path(client, tree, query, field):
    assert_error(client.get(f"/api/v1/regions?{query}"), 422, "query", field)


def test_list_rejects_an_unknown_query_parameter(client, tree):
    # A misspelt filter must not silently list everything.
    assert_error(client.get(f"/api/v1/regions?parent_code={TOWNSHIP}"), 422, "query", "parent_code")


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 12, 13, 100])
def test_keyset_pagination_returns_every_row_exactly_once(client, factory, limit):
    extra = [{"code": f"320508001{n:03d}", "name": f"社区{n}"} for n in range(3, 10)]
    r = client.post("/api/v1/regions/import", json=region_rows() + extra)
    assert r.status_code == 200, r.get_json()
    everything = codes(client.get("/api/v1/regions?limit=1000"))
    assert len(everything) == 13
    seen: list[str] = []
    url = f"/api/v1/regions?limit={limit}"
    for _ in range(20):
        page = client.get(url)
        items = codes(page)
        assert 0 < len(items) <= limit
        seen += items
        cursor = page.get_json()["next"]
        if cursor is None:
            break
        assert cursor == items[-1]
        url = f"/api/v1/regions?limit={limit}&after={cursor}"
    assert seen == everything


def test_pagination_combines_with_filters(client, factory):
    extra = [{"code": f"320508001{n:03d}", "name": f"社区{n}"} for n in range(3, 8)]
    client.post("/api/v1/regions/import", json=region_rows() + extra)
    first = client.get(f"/api/v1/regions?parent={TOWNSHIP}&limit=4").get_json()
    assert [i["code"] for i in first["items"]] == [f"320508001{n:03d}" for n in range(1, 5)]
    second = client.get(f"/api/v1/regions?parent={TOWNSHIP}&limit=4&after={first['next']}")
    assert codes(second) == [f"320508001{n:03d}" for n in range(5, 8)]
    assert second.get_json()["next"] is None


# ---- children, ancestors, subtree ------------------------------------------------------------


def test_children(client, tree):
    assert codes(client.get(f"/api/v1/regions/{TOWNSHIP}/children")) == [COMMUNITY_A, COMMUNITY_B]
    assert codes(client.get(f"/api/v1/regions/{PROVINCE}/children")) == [CITY]
    assert codes(client.get(f"/api/v1/regions/{COMMUNITY_A}/children")) == []


def test_ancestors_parent_first_up_to_the_province(client, tree):
    r = client.get(f"/api/v1/regions/{COMMUNITY_A}/ancestors")
    assert codes(r) == [TOWNSHIP, COUNTY, CITY, PROVINCE]
    assert [i["level"] for i in r.get_json()["items"]] == ["township", "county", "city", "province"]
    assert codes(client.get(f"/api/v1/regions/{PROVINCE}/ancestors")) == []


def test_subtree_with_and_without_max_level(client, tree):
    assert codes(client.get(f"/api/v1/regions/{COUNTY}/subtree")) == TREE[2:]
    assert codes(client.get(f"/api/v1/regions/{PROVINCE}/subtree")) == TREE
    assert codes(client.get(f"/api/v1/regions/{PROVINCE}/subtree?max_level=county")) == TREE[:3]
    assert codes(client.get(f"/api/v1/regions/{CITY}/subtree?max_level=township")) == [
        CITY,
        COUNTY,
        TOWNSHIP,
    ]
    assert codes(client.get(f"/api/v1/regions/{COMMUNITY_B}/subtree")) == [COMMUNITY_B]
    r = client.get(f"/api/v1/regions/{CITY}/subtree?max_level=street")
    assert_error(r, 422, "query", "max_level")


@pytest.mark.parametrize("path", ["children", "ancestors", "subtree"])
def test_navigation_of_an_unknown_code_is_404(client, tree, path):
    body = assert_error(client.get(f"/api/v1/regions/320508009000/{path}"), 404)
    assert body["message"] == "The region does not exist or is outside your scope."


# ---- special shapes of the tree --------------------------------------------------------------


def test_dongguan_township_directly_under_the_city(client):
    created(client, GUANGDONG, "广东省")
    assert created(client, DONGGUAN, "东莞市")["parent_code"] == GUANGDONG
    township = created(client, DONGCHENG_DG, "东城街道")
    assert (township["level"], township["parent_code"]) == ("township", DONGGUAN)
    community = created(client, "441900003001", "东城社区")
    assert community["parent_code"] == DONGCHENG_DG
    assert codes(client.get(f"/api/v1/regions/{DONGGUAN}/children")) == [DONGCHENG_DG]
    assert codes(client.get("/api/v1/regions/441900003001/ancestors")) == [
        DONGCHENG_DG,
        DONGGUAN,
        GUANGDONG,
    ]


def test_dongguan_township_without_the_city_is_refused(client):
    created(client, GUANGDONG, "广东省")
    body = assert_error(create(client, DONGCHENG_DG, "东城街道"), 422, "json", "code")
    assert DONGGUAN in body["errors"]["json"]["code"][0]


def test_xiantao_under_the_pseudo_city(client):
    created(client, HUBEI, "湖北省")
    created(client, HUBEI_PSEUDO_CITY, "省直辖县级行政区划")
    body = created(client, XIANTAO, "仙桃市")
    assert (body["level"], body["parent_code"]) == ("county", HUBEI_PSEUDO_CITY)
    assert codes(client.get(f"/api/v1/regions/{XIANTAO}/ancestors")) == [HUBEI_PSEUDO_CITY, HUBEI]


def test_xiantao_directly_under_the_province_without_the_pseudo_city(client):
    created(client, HUBEI, "湖北省")
    body = created(client, XIANTAO, "仙桃市")
    assert (body["level"], body["parent_code"]) == ("county", HUBEI)
    assert codes(client.get(f"/api/v1/regions/{HUBEI}/children")) == [XIANTAO]
    assert codes(client.get(f"/api/v1/regions/{XIANTAO}/ancestors")) == [HUBEI]
    assert created(client, "429004001000", "沙嘴街道")["parent_code"] == XIANTAO
    assert codes(client.get(f"/api/v1/regions/{HUBEI}/subtree")) == [HUBEI, XIANTAO, "429004001000"]
    r = create(client, "429005000000", "潜江市", parent_code=HUBEI_PSEUDO_CITY)
    assert_error(r, 422, "json", "parent_code")


@pytest.mark.parametrize("how", ["create", "import"])
def test_xiantao_moves_under_the_pseudo_city_when_it_comes(client, how):
    """仙桃, created while 4290 was missing, hung under the province and stayed there when
    4290 came: a national file imported afterwards put 潜江 under 4290 and left 仙桃 under
    湖北, so 4290's children lacked it and its ancestors skipped 4290."""
    created(client, HUBEI, "湖北省")
    created(client, XIANTAO, "仙桃市")
    qianjiang = "429005000000"
    if how == "create":
        created(client, HUBEI_PSEUDO_CITY, "省直辖县级行政区划")
        created(client, qianjiang, "潜江市")
    else:
        rows = [
            {"code": HUBEI_PSEUDO_CITY, "name": "省直辖县级行政区划"},
            {"code": XIANTAO, "name": "仙桃市"},
            {"code": qianjiang, "name": "潜江市"},
        ]
        r = client.post("/api/v1/regions/import", json=rows)
        assert r.status_code == 200, r.get_json()
    assert codes(client.get(f"/api/v1/regions/{HUBEI_PSEUDO_CITY}/children")) == [
        XIANTAO,
        qianjiang,
    ]
    assert codes(client.get(f"/api/v1/regions/{HUBEI}/children")) == [HUBEI_PSEUDO_CITY]
    for county in (XIANTAO, qianjiang):
        assert codes(client.get(f"/api/v1/regions/{county}/ancestors")) == [
            HUBEI_PSEUDO_CITY,
            HUBEI,
        ]
    assert client.get(f"/api/v1/regions/{XIANTAO}").get_json()["parent_code"] == HUBEI_PSEUDO_CITY


def test_beijing_districts_under_shixiaqu(client):
    created(client, BEIJING, "北京市")
    assert created(client, BEIJING_DISTRICTS, "市辖区")["level"] == "city"
    district = created(client, DONGCHENG_BJ, "东城区")
    assert (district["level"], district["parent_code"]) == ("county", BEIJING_DISTRICTS)
    assert codes(client.get(f"/api/v1/regions/{DONGCHENG_BJ}/ancestors")) == [
        BEIJING_DISTRICTS,
        BEIJING,
    ]
    assert codes(client.get(f"/api/v1/regions?within={BEIJING}")) == [
        BEIJING_DISTRICTS,
        DONGCHENG_BJ,
    ]


# ---- update ----------------------------------------------------------------------------------


def test_patch_renames_in_place(client, tree, session):
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"name": "平江路社区"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["name"], r.get_json()["valid_from"]) == ("平江路社区", None)
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["name"] == "平江路社区"
    # A correction rewrites the row: no history, the old name is gone on every day.
    old = client.get(f"/api/v1/regions/{COMMUNITY_A}?on=2000-01-01").get_json()
    assert old["name"] == "平江路社区"
    assert region_count(session) == len(TREE)
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["has_boundary"] is True


def test_patch_boundary_in_place(client, tree):
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"boundary": rectangle(0, 0, 1, 1)})
    assert r.status_code == 200, r.get_json()
    ring = client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["boundary"]["coordinates"]
    assert max(p[0] for p in ring[0][0]) == pytest.approx(LON0 + STEP)


def test_patch_with_effective_from_keeps_the_old_period(client, tree, session):
    r = client.patch(
        f"/api/v1/regions/{COMMUNITY_A}",
        json={"name": "新平江社区", "effective_from": "2020-01-01"},
    )
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert (body["name"], body["valid_from"], body["valid_to"]) == (
        "新平江社区",
        "2020-01-01",
        None,
    )
    assert body["parent_code"] == TOWNSHIP and body["has_boundary"] is True

    current = client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()
    assert current["name"] == "新平江社区"
    old = client.get(f"/api/v1/regions/{COMMUNITY_A}?on=2019-06-01").get_json()
    assert (old["name"], old["valid_to"]) == ("平江社区", "2019-12-31")
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}?on=2020-01-01").get_json()["name"] == (
        "新平江社区"
    )
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}?on=2019-12-31").get_json()["name"] == (
        "平江社区"
    )

    names = {
        i["code"]: i["name"]
        for i in client.get(f"/api/v1/regions?parent={TOWNSHIP}&on=2019-06-01").get_json()["items"]
    }
    assert names == {COMMUNITY_A: "平江社区", COMMUNITY_B: "观前社区"}
    assert codes(client.get("/api/v1/regions?q=新平江")) == [COMMUNITY_A]
    assert codes(client.get(f"/api/v1/regions/{TOWNSHIP}/children")) == [COMMUNITY_A, COMMUNITY_B]
    assert region_count(session) == len(TREE) + 1


def test_a_period_planned_for_later_is_corrected_before_it_starts(client, tree):
    """A planned period (a reorganisation imported ahead of its day) could not be
    corrected until it began: PATCH found only today's period (404 or today's changed)."""

    url = f"/api/v1/regions/{COMMUNITY_A}"
    later = (date.today() + timedelta(days=400)).isoformat()
    planned = client.patch(url, json={"name": "规划社区", "effective_from": later})
    assert planned.status_code == 200, planned.get_json()
    r = client.patch(url, query_string={"on": later}, json={"name": "规划新社区"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["name"], r.get_json()["valid_from"]) == ("规划新社区", later)
    assert client.get(url, query_string={"on": later}).get_json()["name"] == "规划新社区"
    assert client.get(url).get_json()["name"] == "平江社区"  # today's period as it was
    r = client.patch(url, query_string={"on": "2020-01-01"}, json={"name": "改写历史"})
    assert r.status_code == 422 and r.get_json()["errors"] == {"query": {"on": ["today or later"]}}


def test_second_period_must_start_later(client, tree):
    url = f"/api/v1/regions/{COMMUNITY_A}"
    assert client.patch(url, json={"name": "一", "effective_from": "2020-01-01"}).status_code == 200
    assert_error(client.patch(url, json={"name": "二", "effective_from": "2020-01-01"}), 409)
    assert client.get(url).get_json()["name"] == "一"


def test_periods_of_a_code_never_overlap(client, tree):
    url = f"/api/v1/regions/{COMMUNITY_A}"
    assert client.patch(url, json={"name": "新", "effective_from": "2020-01-01"}).status_code == 200
    client.patch(url, json={"valid_from": "2019-01-01"})  # into the previous period
    listed = codes(client.get(f"/api/v1/regions?parent={TOWNSHIP}&on=2019-06-01"))
    assert listed == [COMMUNITY_A, COMMUNITY_B]


def _periods(app: Any, code: str) -> list[tuple[str, str | None, str | None]]:
    with app.extensions["gridapi"].sessions() as session:
        rows = session.execute(
            select(Region.name, Region.valid_from, Region.valid_to)
            .where(Region.code == code)
            .order_by(Region.valid_from.nulls_first())
        )
        return [
            (name, start and start.isoformat(), end and end.isoformat())
            for name, start, end in rows
        ]


def test_a_new_period_never_overlaps_one_planned(client, tree, app):
    """With a period planned to start later, a second new period from a later day answered
    the generic 409 (the index of current codes refused it); one with an end was taken:
    today's period was stretched over the planned one, and the new one lay inside it. Both
    are the overlap 409 naming effective_from now, as is today's period made open-ended in
    place (the generic 409 too), and the periods stay as they were."""

    url = f"/api/v1/regions/{COMMUNITY_A}"
    later = (date.today() + timedelta(days=400)).isoformat()
    later2 = (date.today() + timedelta(days=500)).isoformat()
    planned = client.patch(url, json={"name": "规划社区", "effective_from": later})
    assert planned.status_code == 200, planned.get_json()
    before = _periods(app, COMMUNITY_A)
    assert [name for name, _, _ in before] == ["平江社区", "规划社区"]
    overlap = (
        f"The period overlaps the period of {COMMUNITY_A} from {later} to now; "
        "periods of one code never overlap."
    )
    for extra in ({}, {"valid_to": later2}):
        r = client.patch(url, json={"name": "二", "effective_from": later2, **extra})
        body = assert_error(r, 409, "json", "effective_from")
        assert body["message"] == overlap
    body = assert_error(client.patch(url, json={"valid_to": None}), 409, "json", "valid_to")
    assert body["message"] == overlap
    assert _periods(app, COMMUNITY_A) == before
    assert [e["summary"]["name"] for e in _audited(client, "region.update")] == ["规划社区"]


def test_a_new_period_given_an_earlier_valid_from_does_not_overlap_the_one_it_ends(
    client, tree, app
):
    """effective_from with a valid_from before it was taken: today's period ended the day
    before effective_from, and the new one started years earlier, inside it."""
    url = f"/api/v1/regions/{COMMUNITY_A}"
    before = _periods(app, COMMUNITY_A)
    r = client.patch(
        url, json={"name": "新", "effective_from": "2030-01-01", "valid_from": "2020-01-01"}
    )
    body = assert_error(r, 409, "json", "valid_from")
    assert body["errors"]["json"]["valid_from"] == [
        "overlaps the period from the beginning to 2029-12-31"
    ]
    assert _periods(app, COMMUNITY_A) == before


def test_a_new_period_given_a_later_valid_from_is_422_and_leaves_no_gap(client, tree, app):
    """effective_from with a valid_from after it was taken: today's period ended the day
    before effective_from and the new one started later, leaving the code without a period
    in between (a community missing from the tree and from routing meanwhile). It is the
    422 naming valid_from now, and nothing changes."""
    url = f"/api/v1/regions/{COMMUNITY_A}"
    before = _periods(app, COMMUNITY_A)
    r = client.patch(
        url, json={"name": "新", "effective_from": "2030-01-01", "valid_from": "2030-03-01"}
    )
    body = assert_error(r, 422, "json", "valid_from")
    assert body["message"] == (
        f"The new period would start on 2030-03-01, leaving {COMMUNITY_A} without a period "
        "from 2030-01-01 to 2030-02-28."
    )
    assert _periods(app, COMMUNITY_A) == before
    assert _audited(client, "region.update") == []
    same = client.patch(
        url, json={"name": "新", "effective_from": "2030-01-01", "valid_from": "2030-01-01"}
    )
    assert same.status_code == 200
    assert _periods(app, COMMUNITY_A) == [
        ("平江社区", None, "2029-12-31"),
        ("新", "2030-01-01", None),
    ]


def test_a_period_started_meanwhile_answers_as_one_started_before(client, tree, app, engine):
    """Two new periods of one code from one day at once: both read today's period before
    either wrote, and on PostgreSQL the second waited for the first's lock on it, then
    ended it again and failed on the index of current codes: the generic 409. A period
    change locks the periods of its code first now: the second waits, then answers as
    when the first came first (the overlap 409 naming effective_from)."""

    from gridapi.scope import Scope
    from gridapi.services import regions as svc

    from ..races import send_while_uncommitted

    url = f"/api/v1/regions/{COMMUNITY_A}"
    later = date.today() + timedelta(days=400)
    with app.extensions["gridapi"].sessions() as session:  # another request's, not committed
        svc.update_region(
            session,
            COMMUNITY_A,
            {"name": "一", "effective_from": later},
            scope=Scope.everything(),
        )
        r = send_while_uncommitted(
            engine,
            session,
            "regions",
            lambda: client.patch(url, json={"name": "二", "effective_from": later.isoformat()}),
            waits_in="",  # any statement of the request's waiting for the other's locks
        )
    body = assert_error(r, 409, "json", "effective_from")
    assert body["message"] == (
        f"The period overlaps the period of {COMMUNITY_A} from {later} to now; "
        "periods of one code never overlap."
    )
    day_before = (later - timedelta(days=1)).isoformat()
    assert _periods(app, COMMUNITY_A) == [
        ("平江社区", None, day_before),
        ("一", later.isoformat(), None),
    ]
    assert _audited(client, "region.update") == []


def test_patch_valid_to_before_valid_from_is_422_and_changes_nothing(client, tree):
    url = f"/api/v1/regions/{COMMUNITY_A}"
    r = client.patch(
        url, json={"name": "倒序", "valid_from": "2021-01-01", "valid_to": "2020-01-01"}
    )
    assert_error(r, 422, "json", "valid_to")
    body = client.get(url).get_json()
    assert (body["name"], body["valid_from"], body["valid_to"]) == ("平江社区", None, None)


def test_a_community_with_grids_in_service_cannot_end_now(client, factory):
    """DOMAIN §2: every grid belongs to a community. Ending one whose grids are in service
    left them routed with a region chain starting at the township: 409 naming them, and
    nothing changes; a future end is taken."""
    factory.regions()
    factory.grid_version()  # A1, A2 of COMMUNITY_A, B1, B2 of COMMUNITY_B in service
    url = f"/api/v1/regions/{COMMUNITY_A}"
    for change in ({"valid_to": "2020-01-01"}, {"valid_from": "2099-01-01"}):
        r = client.patch(url, json=change)
        (field,) = change
        body = assert_error(r, 409, "json", field)
        assert f"{COMMUNITY_A}001" in body["errors"]["json"][field][0]
        assert client.get(url).status_code == 200
    town = client.patch(f"/api/v1/regions/{TOWNSHIP}", json={"valid_to": "2020-01-01"})
    assert_error(town, 409, "json", "valid_to")
    assert client.patch(url, json={"valid_to": "2099-12-31"}).status_code == 200
    located = client.get("/api/v1/locate?lon=120.605&lat=31.305").get_json()
    assert located["regions"][0]["code"] == COMMUNITY_A


def test_patch_effective_from_after_valid_to_is_422(client, tree):
    r = client.patch(
        f"/api/v1/regions/{COMMUNITY_A}",
        json={"effective_from": "2021-01-01", "valid_to": "2020-01-01"},
    )
    assert_error(r, 422, "json", "valid_to")


def test_a_new_period_ending_before_its_valid_from_is_422_and_changes_nothing(client, tree, app):
    """effective_from with a valid_from after valid_to was checked only against
    effective_from; the database's check of the period refused the new row: the generic
    409 naming nothing. It is the 422 naming valid_to, as for a period corrected in place."""
    url = f"/api/v1/regions/{COMMUNITY_A}"
    before = _periods(app, COMMUNITY_A)
    r = client.patch(
        url,
        json={
            "name": "倒序",
            "effective_from": "2030-01-01",
            "valid_from": "2031-01-01",
            "valid_to": "2030-06-30",
        },
    )
    body = assert_error(r, 422, "json", "valid_to")
    assert body["message"] == "valid_to is before valid_from."
    assert body["errors"] == {"json": {"valid_to": ["must not be before valid_from (2031-01-01)"]}}
    assert _periods(app, COMMUNITY_A) == before
    assert _audited(client, "region.update") == []


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"code": "320508001009"}, "code"),  # the code cannot be changed
        ({"level": "township"}, "level"),
        ({"boundary": BOWTIE}, "boundary"),
        ({"boundary": POINT}, "boundary"),
        ({"effective_from": "soon"}, "effective_from"),
    ],
)
def test_patch_rejects_bad_input(client, tree, payload, field):
    url = f"/api/v1/regions/{COMMUNITY_A}"
    assert_error(client.patch(url, json=payload), 422, "json", field)
    assert client.get(url).get_json()["name"] == "平江社区"


def test_patch_unknown_code_is_404(client, tree):
    assert_error(client.patch("/api/v1/regions/320508001009", json={"name": "无"}), 404)


# ---- bulk import -----------------------------------------------------------------------------


def test_import_derives_parents_from_rows_in_any_order(client, session):
    rows = list(reversed(region_rows()))  # villages first, the province last
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.status_code == 200, r.get_json()
    assert r.get_json() == {"created": 6, "updated": 0, "unchanged": 0, "errors": []}
    items = client.get("/api/v1/regions").get_json()["items"]
    assert [(i["code"], i["parent_code"]) for i in items] == [
        (PROVINCE, None),
        (CITY, PROVINCE),
        (COUNTY, CITY),
        (TOWNSHIP, COUNTY),
        (COMMUNITY_A, TOWNSHIP),
        (COMMUNITY_B, TOWNSHIP),
    ]
    assert [i["has_boundary"] for i in items] == [False, False, False, True, True, True]
    assert region_count(session) == 6


def test_import_below_existing_ancestors(client, tree):
    rows = [
        {"code": "320508002001", "name": "观前社区二"},
        {"code": "320508002000", "name": "观前街道", "level": "township"},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.get_json()["created"] == 2
    assert codes(client.get(f"/api/v1/regions/{COUNTY}/children")) == [TOWNSHIP, "320508002000"]
    assert codes(client.get("/api/v1/regions/320508002001/ancestors")) == [
        "320508002000",
        COUNTY,
        CITY,
        PROVINCE,
    ]


def test_import_special_shapes(client):
    rows = [
        {"code": DONGCHENG_DG, "name": "东城街道"},
        {"code": DONGGUAN, "name": "东莞市"},
        {"code": GUANGDONG, "name": "广东省"},
        {"code": XIANTAO, "name": "仙桃市"},
        {"code": HUBEI, "name": "湖北省"},
        {"code": DONGCHENG_BJ, "name": "东城区"},
        {"code": BEIJING_DISTRICTS, "name": "市辖区"},
        {"code": BEIJING, "name": "北京市"},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.get_json()["created"] == 8, r.get_json()
    parents = {
        i["code"]: i["parent_code"] for i in client.get("/api/v1/regions").get_json()["items"]
    }
    assert parents[DONGCHENG_DG] == DONGGUAN
    assert parents[XIANTAO] == HUBEI
    assert parents[DONGCHENG_BJ] == BEIJING_DISTRICTS


def test_import_is_all_or_nothing(client, session):
    rows = region_rows()
    rows.insert(2, {"code": "32050800000X", "name": "坏行"})
    r = client.post("/api/v1/regions/import", json=rows)
    body = assert_error(r, 422, "json", "2", "code")
    assert set(body["errors"]["json"]) == {"2"}
    assert "nothing" in body["message"]
    assert region_count(session) == 0
    assert codes(client.get("/api/v1/regions")) == []


def test_import_lists_every_bad_row(client, tree, session):
    rows = [
        {"code": "320508001003", "name": "好行"},
        {"code": "990000000000", "name": "无此省"},
        {"code": "320508001004", "name": ""},
        {"code": "320508001005", "name": "错级", "level": "township"},
        {"code": "320508009001", "name": "无父"},
        {"code": "320508001003", "name": "重复"},
    ]
    r = client.post("/api/v1/regions/import", json=rows)
    errors = assert_error(r, 422, "json")["errors"]["json"]
    assert sorted(errors, key=int) == ["1", "2", "3", "4", "5"]
    assert "320508009000" in errors["4"]["code"][0]  # names the missing ancestor
    assert region_count(session) == len(TREE)
    assert_error(client.get("/api/v1/regions/320508001003"), 404)


def _plan(client: Any, app: Any, how: str) -> tuple[str, str]:
    """Leave a code whose only open-ended period starts later; return it and that day."""

    later = (date.today() + timedelta(days=400)).isoformat()
    if how == "created":  # a new community planned ahead of its day
        created(client, NEW_VILLAGE, "规划社区", valid_from=later)
        return NEW_VILLAGE, later
    # today's period of COMMUNITY_A followed by a planned one, then ended yesterday
    url = f"/api/v1/regions/{COMMUNITY_A}"
    r = client.patch(url, json={"name": "规划社区", "effective_from": later})
    assert r.status_code == 200, r.get_json()
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    assert client.patch(url, json={"valid_to": yesterday}).status_code == 200
    assert [end for _, _, end in _periods(app, COMMUNITY_A)] == [yesterday, None]
    return COMMUNITY_A, later


@pytest.mark.parametrize("how", ["created", "effective_from"])
def test_an_import_of_a_planned_code_is_a_row_error_and_writes_nothing(client, tree, app, how):
    """A code not valid today whose open-ended period starts later: the import created it
    from the beginning, and the index of current codes refused it: the generic 409, no
    row named. It is the row's error now, naming the planned period, and nothing is
    written (all or nothing)."""
    code, later = _plan(client, app, how)
    before = {c: _periods(app, c) for c in (code, COMMUNITY_B)}
    imports = len(_audited(client, "region.import"))
    rows = [{"code": COMMUNITY_B, "name": "观前新社区"}, {"code": code, "name": "导入社区"}]
    r = client.post("/api/v1/regions/import", json=rows)
    body = assert_error(r, 422, "json", "1", "code")
    assert body["message"] == "1 row(s) have errors; nothing was imported."
    assert body["errors"] == {
        "json": {
            "1": {
                "code": [
                    f"not valid today but planned from {later}: the import would create it "
                    "valid from the beginning, overlapping that period; start the planned "
                    f"period earlier (PATCH /api/v1/regions/{code}?on={later}) or leave the "
                    "row out"
                ]
            }
        }
    }
    assert {c: _periods(app, c) for c in (code, COMMUNITY_B)} == before
    assert len(_audited(client, "region.import")) == imports


def test_an_import_of_an_ended_code_is_a_row_error_and_writes_nothing(client, tree, app):
    """A code whose periods have all ended: the import created it from the beginning, over
    its history (listed twice on a day it was valid). It is the row's error now: the code
    is reissued with a valid_from, which an import does not carry."""
    created(client, NEW_VILLAGE, "旧社区", valid_from="2018-01-01", valid_to="2020-12-31")
    before = _periods(app, NEW_VILLAGE)
    r = client.post("/api/v1/regions/import", json=[{"code": NEW_VILLAGE, "name": "新社区"}])
    body = assert_error(r, 422, "json", "0", "code")
    assert body["errors"]["json"]["0"]["code"] == [
        "not valid today: its period ended on 2020-12-31; the import would create it valid "
        "from the beginning, overlapping that period; reissue the code with POST "
        "/api/v1/regions and a valid_from after 2020-12-31, or leave the row out"
    ]
    assert _periods(app, NEW_VILLAGE) == before
    assert codes(client.get(f"/api/v1/regions?parent={TOWNSHIP}&on=2019-06-01")) == [
        COMMUNITY_A,
        COMMUNITY_B,
        NEW_VILLAGE,
    ]


def test_an_import_of_a_code_planned_meanwhile_is_a_row_error(client, tree, app, engine):
    """An import of a code another request was planning (open-ended, from a later day):
    on PostgreSQL the import's insert waited in the index of current codes, then failed:
    the generic 409. It answers as when the other came first: the row's error, nothing
    written."""

    from ..races import send_while_uncommitted

    later = date.today() + timedelta(days=400)
    rows = [{"code": COMMUNITY_B, "name": "观前新社区"}, {"code": NEW_VILLAGE, "name": "乙社区"}]
    with app.extensions["gridapi"].sessions() as session:
        _uncommitted_region(app, session, "甲社区", later)
        r = send_while_uncommitted(
            engine,
            session,
            "regions",
            lambda: client.post("/api/v1/regions/import", json=rows),
            waits_in=WAITS_FOR_PERIODS,
        )
    body = assert_error(r, 422, "json", "1", "code")
    assert f"planned from {later}" in body["errors"]["json"]["1"]["code"][0]
    assert set(body["errors"]["json"]) == {"1"}
    assert _periods(app, NEW_VILLAGE) == [("甲社区", later.isoformat(), None)]
    assert _names(app, COMMUNITY_B) == ["观前社区"]


@pytest.mark.parametrize(
    "row",
    [
        {"code": "320508001003", "name": "多余", "population": 3},
        {"code": "320508001003"},
        {"name": "无码"},
        {"code": "320508001003", "name": "错级", "level": "town"},
    ],
)
def test_import_rejects_malformed_rows_through_the_schema(client, tree, session, row):
    r = client.post("/api/v1/regions/import", json=[{"code": "320508001004", "name": "好"}, row])
    assert_error(r, 422, "json", "1")
    assert region_count(session) == len(TREE)


def test_import_rejects_a_body_that_is_not_a_list(client):
    assert_error(client.post("/api/v1/regions/import", json={"code": PROVINCE}), 422, "json")


def test_reimport_without_boundaries_changes_nothing(client, factory, session):
    factory.regions(with_boundaries=False)
    r = client.post("/api/v1/regions/import", json=region_rows(with_boundaries=False))
    assert r.get_json() == {"created": 0, "updated": 0, "unchanged": 6, "errors": []}
    assert region_count(session) == 6


def test_reimport_with_the_same_boundaries_changes_nothing(client, tree, session):
    r = client.post("/api/v1/regions/import", json=region_rows())
    assert r.status_code == 200
    assert r.get_json() == {"created": 0, "updated": 0, "unchanged": 6, "errors": []}


def test_reimport_renames(client, tree, session):
    rows = region_rows()
    rows[4]["name"] = "平江路社区"
    for row in rows:
        row.pop("boundary", None)  # rows without a boundary keep the stored one
    r = client.post("/api/v1/regions/import", json=rows)
    assert r.get_json() == {"created": 0, "updated": 1, "unchanged": 5, "errors": []}
    body = client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()
    assert (body["name"], body["has_boundary"]) == ("平江路社区", True)
    assert region_count(session) == 6


@pytest.mark.parametrize(
    "boundary",
    [
        POINT,
        {"type": "Polygon", "coordinates": [[[200, 31], [201, 31], [201, 32], [200, 31]]]},
        {"type": "Polygon", "coordinates": [[[120.6]]]},
    ],
)
def test_import_rejects_unusable_boundaries(client, factory, session, boundary):
    rows = region_rows(with_boundaries=False)
    rows[5]["boundary"] = boundary
    r = client.post("/api/v1/regions/import", json=rows)
    assert_error(r, 422, "json", "5")
    assert region_count(session) == 0


def test_import_rejects_a_self_intersecting_boundary(client, session):
    rows = region_rows(with_boundaries=False)
    rows[5]["boundary"] = BOWTIE
    r = client.post("/api/v1/regions/import", json=rows)
    assert_error(r, 422, "json", "5")
    assert region_count(session) == 0


def test_a_region_with_current_regions_under_it_cannot_end_now(client, factory):
    """A township ended while its new village was current: the village stayed current and
    its ancestors came back empty (county, city and province lost)."""
    factory.regions()
    town = "320508088000"
    rows = [{"code": town, "name": "新街道"}, {"code": "320508088001", "name": "新社区"}]
    assert client.post("/api/v1/regions/import", json=rows).status_code == 200
    r = client.patch(f"/api/v1/regions/{town}", json={"valid_to": "2026-01-01"})
    body = assert_error(r, 409, "json", "valid_to")
    assert "320508088001" in body["errors"]["json"]["valid_to"][0]
    ancestors = client.get("/api/v1/regions/320508088001/ancestors").get_json()["items"]
    assert [a["code"] for a in ancestors][:2] == [town, "320508000000"]
    # ended in order, the village first, the township may end too
    assert (
        client.patch("/api/v1/regions/320508088001", json={"valid_to": "2026-01-01"}).status_code
        == 200
    )
    assert (
        client.patch(f"/api/v1/regions/{town}", json={"valid_to": "2026-01-01"}).status_code == 200
    )


def test_a_region_cannot_end_before_a_region_under_it_begins(client, factory):
    """A township planned from next June with a community planned from July: shortened to
    end in mid-June, the township left the community with no parent (its ancestors came
    back empty, the county, city and province lost), though creating the community so
    was refused. Also when the township is current today and only its end moves."""
    from datetime import timedelta

    from gridapi import clock

    factory.regions()
    year = clock.today().year + 1
    town, village = "320508150000", "320508150003"
    later = {"code": town, "name": "未来镇", "valid_from": f"{year}-06-01"}
    assert client.post("/api/v1/regions", json=later).status_code == 201
    body = {"code": village, "name": "晚到社区", "valid_from": f"{year}-07-01"}
    assert (
        client.post("/api/v1/regions", json={**body, "valid_to": f"{year}-08-01"}).status_code
        == 201
    )
    r = client.patch(f"/api/v1/regions/{town}?on={year}-07-01", json={"valid_to": f"{year}-06-15"})
    body409 = assert_error(r, 409, "json", "valid_to")
    assert village in body409["errors"]["json"]["valid_to"][0]
    ancestors = client.get(f"/api/v1/regions/{village}/ancestors?on={year}-07-10").get_json()
    assert [a["code"] for a in ancestors["items"]][:2] == [town, "320508000000"]
    # ending after the community ends is fine
    ok = client.patch(f"/api/v1/regions/{town}?on={year}-07-01", json={"valid_to": f"{year}-09-01"})
    assert ok.status_code == 200, ok.get_json()

    current = "320508151000"
    assert client.post("/api/v1/regions", json={"code": current, "name": "现镇"}).status_code == 201
    planned = {"code": "320508151001", "name": "新社区", "valid_from": f"{year}-03-01"}
    assert client.post("/api/v1/regions", json=planned).status_code == 201
    soon = (clock.today() + timedelta(days=10)).isoformat()
    r = client.patch(f"/api/v1/regions/{current}", json={"valid_to": soon})
    assert (
        "320508151001" in assert_error(r, 409, "json", "valid_to")["errors"]["json"]["valid_to"][0]
    )


def test_a_region_name_of_spaces_is_refused(client, tree):
    r = client.post("/api/v1/regions", json={"code": "320508001088", "name": "   "})
    assert_error(r, 422, "json", "name")
    r = client.patch(f"/api/v1/regions/{COMMUNITY_A}", json={"name": "   "})
    assert_error(r, 422, "json", "name")
    assert client.get(f"/api/v1/regions/{COMMUNITY_A}").get_json()["name"] == "平江社区"


# ---- If-Match on a change ----------------------------------------------------------------


def test_a_change_with_a_stale_etag_is_412_and_changes_nothing(client, tree, session):
    """PATCH took no If-Match: two offices renaming or redrawing one township, each from what
    they had read, silently overwrote each other. The region's GET answers an ETag; a PATCH
    sending it is made only while it is current (412 with the current one otherwise), and a
    PATCH without it is made as before."""
    path = f"/api/v1/regions/{TOWNSHIP}"
    read = client.get(path)
    assert read.status_code == 200
    first = read.headers["ETag"]
    redrawn = {"name": "平江街道", "boundary": rectangle(0, 0, 4, 2)}
    changed = client.patch(path, json=redrawn, headers={"If-Match": first})
    assert changed.status_code == 200, changed.get_json()
    second = changed.headers["ETag"]
    assert second != first
    assert client.get(path).headers["ETag"] == second  # the answer's tag is the GET's
    stale = client.patch(path, json={"name": "旧名"}, headers={"If-Match": first})
    body = assert_error(stale, 412)
    assert "changed since you read it" in body["message"]
    assert stale.headers["ETag"] == second
    assert client.get(path).get_json()["name"] == "平江街道"
    session.rollback()
    assert session.scalar(select(Region.name).where(Region.code == TOWNSHIP)) == "平江街道"
    # A weak form of the current tag never matches (strong comparison, RFC 9110 §13.1.1);
    # "*" is taken; no If-Match is as before.
    weak = client.patch(path, json={"name": "平江街道一"}, headers={"If-Match": "W/" + second})
    assert assert_error(weak, 412)["message"] == stale.get_json()["message"]
    assert weak.headers["ETag"] == second
    assert client.get(path).get_json()["name"] == "平江街道"
    star = client.patch(path, json={"name": "平江街道二"}, headers={"If-Match": "*"})
    assert star.status_code == 200, star.get_json()
    plain = client.patch(path, json={"name": "平江街道"})
    assert plain.status_code == 200, plain.get_json()
    # Another region's tag is not this one's.
    other = client.get(f"/api/v1/regions/{COMMUNITY_A}").headers["ETag"]
    assert_error(client.patch(path, json={"name": "x"}, headers={"If-Match": other}), 412)


def test_the_spec_documents_the_regions_etag_and_an_optional_if_match(client):
    spec = client.get("/openapi.json").get_json()
    op = spec["paths"]["/api/v1/regions/{code}"]
    assert "ETag" in op["get"]["responses"]["200"]["headers"]
    assert "ETag" in op["patch"]["responses"]["200"]["headers"]
    (if_match,) = [p for p in op["patch"]["parameters"] if p["name"] == "If-Match"]
    assert if_match["required"] is False and if_match["in"] == "header"
    assert "412" in op["patch"]["responses"] and "428" not in op["patch"]["responses"]


def test_an_import_row_error_is_filed_under_the_field_at_fault(client, tree):
    """Every row error of an import was filed under `code`: a name missing or a boundary
    that crosses itself read as a wrong code."""
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [[120.0, 31.0], [120.1, 31.1], [120.1, 31.0], [120.0, 31.1], [120.0, 31.0]]
        ],
    }
    rows = [
        {"code": "320508001091", "name": ""},
        {"code": "320508001092", "name": "自交社区", "boundary": bowtie},
        {"code": "320508001093", "name": "错级", "level": "township"},
        {"code": "320508001094x", "name": "坏码"},
    ]
    body = assert_error(client.post("/api/v1/regions/import", json=rows), 422, "json", "0")
    assert {row: list(fields) for row, fields in body["errors"]["json"].items()} == {
        "0": ["name"],
        "1": ["boundary"],
        "2": ["level"],
        "3": ["code"],
    }
