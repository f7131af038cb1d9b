"""Map layers: case counts per grid (choropleth) and clustered points, filtered like the case
list and limited to the caller's scope, on both engines."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from gridapi import clock

from ..factories import COMMUNITY_A, COMMUNITY_B, COUNTY, LAT0, LON0, STEP, TOWNSHIP

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1, B2 = COMMUNITY_B + "001", COMMUNITY_B + "002"
GRIDS = (A1, A2, B1, B2)  # columns 0..3 of row 0 (factories.clean_tiling)
COUNTS = "/api/v1/maps/case-counts"
CLUSTERS = "/api/v1/maps/case-clusters"
# The four grids with room around them, small enough for zoom 17 (64 tiles ≈ 0.176°).
VIEW = f"{LON0 - STEP},{LAT0 - STEP},{LON0 + 5 * STEP},{LAT0 + 2 * STEP}"


def center(col: int) -> tuple[float, float]:
    return (round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6))


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def report(client: Any, col: int, category: str = "0101", **extra: Any) -> dict[str, Any]:
    lon, lat = center(col)
    body = {
        "category": category,
        "description": "地图测试",
        "location": {"type": "Point", "coordinates": [lon, lat]},
        **extra,
    }
    return ok(client.post("/api/v1/cases", json=body), 201)


def counts_of(body: dict[str, Any], key: str = "count") -> dict[str, int]:
    return {f["properties"]["code"]: f["properties"][key] for f in body["features"]}


@pytest.fixture
def cases(client, world, session) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """A1: three cases (one closed, one overdue, one of category 0102); A2: one; B1: none;
    B2: two (one of them reported via the hotline)."""
    placed: dict[str, list[int]] = {code: [] for code in GRIDS}
    placed[A1] += [report(client, 0)["id"] for _ in range(2)]
    placed[A1].append(report(client, 0, "0102")["id"])
    placed[A2].append(report(client, 1)["id"])
    placed[B2].append(report(client, 3)["id"])
    placed[B2].append(report(client, 3, source="hotline")["id"])
    closed, overdue = placed[A1][0], placed[A1][1]
    session.execute(text(f"UPDATE cases SET status = 'closed' WHERE id = {closed}"))
    session.execute(text(f"UPDATE cases SET overdue = true WHERE id = {overdue}"))
    session.commit()
    return placed


# --- counts per grid --------------------------------------------------------------------------


def test_counts_equal_the_cases_placed_in_each_grid(client, cases):
    r = client.get(COUNTS, query_string={"region": TOWNSHIP})
    body = ok(r)
    assert r.mimetype == "application/geo+json"
    assert body["type"] == "FeatureCollection"
    assert [f["properties"]["code"] for f in body["features"]] == list(GRIDS)
    assert counts_of(body) == {A1: 3, A2: 1, B1: 0, B2: 2}
    assert counts_of(body, "open") == {A1: 2, A2: 1, B1: 0, B2: 2}
    assert counts_of(body, "overdue") == {A1: 1, A2: 0, B1: 0, B2: 0}
    assert body["total"] == 6
    first = body["features"][0]
    assert first["id"] == A1
    assert first["properties"]["community"] == COMMUNITY_A
    assert first["properties"]["community_name"] == "平江社区"
    assert first["geometry"]["type"] == "MultiPolygon"
    ring = first["geometry"]["coordinates"][0][0]
    corners = [(LON0, LAT0), (LON0 + STEP, LAT0), (LON0 + STEP, LAT0 + STEP), (LON0, LAT0 + STEP)]
    assert {tuple(p) for p in ring} == {(round(x, 6), round(y, 6)) for x, y in corners}
    # The phone's copy is current: 304 without a body; a new case changes the ETag.
    again = client.get(
        COUNTS, query_string={"region": TOWNSHIP}, headers={"If-None-Match": r.headers["ETag"]}
    )
    assert again.status_code == 304
    report(client, 2)
    changed = client.get(
        COUNTS, query_string={"region": TOWNSHIP}, headers={"If-None-Match": r.headers["ETag"]}
    )
    assert counts_of(ok(changed))[B1] == 1


@pytest.mark.parametrize(
    "query",
    [
        {"category": "0102"},
        {"category": "01"},
        {"status": "closed"},
        {"status": "reported,closed"},
        {"open": "true"},
        {"open": "false"},
        {"overdue": "true"},
        {"source": "hotline"},
        {"supervision": "normal"},
        {"from": "2000-01-01T00:00:00+08:00", "to": "2000-01-02T00:00:00+08:00"},
        {"q": "地图"},
    ],
)
def test_counts_match_the_case_list_with_the_same_filters(client, cases, query):
    listed = ok(client.get("/api/v1/cases", query_string={**query, "limit": 500}))["items"]
    expected = Counter(c["grid"]["code"] for c in listed)
    body = ok(client.get(COUNTS, query_string={**query, "region": TOWNSHIP}))
    assert counts_of(body) == {code: expected.get(code, 0) for code in GRIDS}, query
    assert body["total"] == len(listed)


def test_grids_without_cases_are_mapped_with_zero(client, cases):
    body = ok(client.get(COUNTS, query_string={"region": COMMUNITY_B, "category": "0102"}))
    assert counts_of(body) == {B1: 0, B2: 0}
    assert body["total"] == 0


def test_outlines_are_simplified_on_request(client, world):
    # A grid with a ragged edge: 40 tiny steps along its south side.
    steps = [[LON0 + i * STEP / 40, LAT0 + (i % 2) * 1e-6] for i in range(41)]
    ring = [*steps, [LON0 + STEP, LAT0 + STEP], [LON0, LAT0 + STEP], steps[0]]
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"code": A1, "name": "锯齿网格"},
                "geometry": {"type": "Polygon", "coordinates": [ring]},
            }
        ],
    }
    world.grid_version(fc, region=COMMUNITY_A, force=True)

    def points(query: dict[str, Any]) -> int:
        body = ok(client.get(COUNTS, query_string={"region": COMMUNITY_A, **query}))
        (feature,) = [f for f in body["features"] if f["properties"]["code"] == A1]
        return len(feature["geometry"]["coordinates"][0][0])

    full = points({})
    assert full >= 44
    assert points({"simplify": 0.0001}) == 5
    assert points({"zoom": 10}) == 5
    assert points({"zoom": 22}) == full


@pytest.mark.parametrize(
    "query",
    [
        {"region": TOWNSHIP, "zoom": 12, "simplify": 0.001},
        {"region": TOWNSHIP, "zoom": 23},
        {"region": TOWNSHIP, "simplify": 1},
        {"region": "3205"},
        {"region": TOWNSHIP, "sort": "reported_at"},
        {"region": TOWNSHIP, "bbox": "120,31,121,32"},
        {"region": TOWNSHIP, "status": "lost"},
        {},  # an unrestricted caller must name the region
    ],
)
def test_bad_count_queries_are_422(client, world, query):
    body = ok(client.get(COUNTS, query_string=query), 422)
    assert body["code"] == 422 and body["errors"], body


def test_a_township_whose_end_is_planned_is_mapped_until_then(client, world):
    """A township with a planned end (a merger next month: valid_to set, still valid today)
    answered 404 "No such region", as if it had ended already."""
    later = (clock.today() + timedelta(days=30)).isoformat()
    r = client.patch(f"/api/v1/regions/{TOWNSHIP}", json={"valid_to": later})
    assert r.status_code == 200, r.get_json()
    body = ok(client.get(COUNTS, query_string={"region": TOWNSHIP}))
    assert [f["properties"]["code"] for f in body["features"]] == list(GRIDS)
    assert body["region"] == TOWNSHIP


# --- scope ------------------------------------------------------------------------------------


def test_a_township_office_maps_its_grids_only(client, cases, accounts):
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    assert counts_of(ok(office.get(COUNTS))) == {A1: 3, A2: 1, B1: 0, B2: 2}
    # Its county: the part of it in scope. A community officer: their community only.
    assert counts_of(ok(office.get(COUNTS, query_string={"region": COUNTY}))) == {
        A1: 3,
        A2: 1,
        B1: 0,
        B2: 2,
    }
    officer = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    assert counts_of(ok(officer.get(COUNTS))) == {B1: 0, B2: 2}
    assert counts_of(ok(officer.get(COUNTS, query_string={"region": TOWNSHIP}))) == {B1: 0, B2: 2}
    # A region beside the scope answers as one that does not exist.
    missing = officer.get(COUNTS, query_string={"region": "320508009001"})
    beside = officer.get(COUNTS, query_string={"region": COMMUNITY_A})
    assert beside.status_code == missing.status_code == 404
    assert beside.get_json() == missing.get_json()


def test_a_grid_worker_maps_only_their_grids_and_sensitive_cases_stay_hidden(
    client, cases, accounts
):
    report(client, 0, "5103")  # a marriage dispute in A1: sensitive
    worker = accounts.client("worker_a1", "grid_worker", grids=[A1])
    assert counts_of(ok(worker.get(COUNTS))) == {A1: 3}
    assert counts_of(ok(worker.get(COUNTS, query_string={"region": COMMUNITY_A}))) == {A1: 3}
    assert worker.get(COUNTS, query_string={"region": COMMUNITY_B}).status_code == 404
    # The office holding it (the community at intake, inside the township) counts it.
    office = accounts.client("office", "township_office", scope_region=TOWNSHIP)
    assert counts_of(ok(office.get(COUNTS)))[A1] == 4
    clusters = ok(worker.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 17}))
    assert clusters["total"] == 3
    assert {f["properties"]["id"] for f in clusters["features"]} == set(cases[A1])


def test_a_caller_without_cases_read_is_refused(world, accounts, app):
    anonymous = app.test_client()
    assert anonymous.get(COUNTS, query_string={"region": TOWNSHIP}).status_code == 401
    assert anonymous.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14}).status_code == 401


# --- clusters ---------------------------------------------------------------------------------


def test_clusters_sum_to_the_cases_in_the_bbox(client, cases):
    body = ok(client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14}))
    assert body["type"] == "FeatureCollection" and body["truncated"] is False
    assert body["cell_degrees"] == pytest.approx(360 / 2**14 / 4)
    # A cell is ~0.0055°, a grid 0.01°: the cases at each grid's middle make one cluster.
    by_place = {tuple(f["geometry"]["coordinates"]): f["properties"] for f in body["features"]}
    assert {place: p["count"] for place, p in by_place.items()} == {
        center(0): 3,
        center(3): 2,
        center(1): 1,
    }
    assert [f["properties"]["count"] for f in body["features"]] == [3, 2, 1]  # biggest first
    assert sum(p["count"] for p in by_place.values()) == body["total"] == 6
    single = by_place[center(1)]
    (a2_case,) = cases[A2]
    listed = ok(client.get(f"/api/v1/cases/{a2_case}"))
    assert single == {
        "count": 1,
        "id": a2_case,
        "number": listed["number"],
        "status": "reported",
        "category": "0101",
    }
    assert "id" not in by_place[center(0)]
    # Zoomed out, everything falls in one or two cells; still every case once.
    far = ok(client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 8}))
    assert len(far["features"]) <= 2
    assert sum(f["properties"]["count"] for f in far["features"]) == far["total"] == 6


def test_at_high_zoom_every_case_is_a_point(client, cases):
    body = ok(client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 17}))
    assert body["cell_degrees"] is None
    ids = [f["properties"]["id"] for f in body["features"]]
    assert sorted(ids) == sorted(i for placed in cases.values() for i in placed)
    assert all(f["properties"]["count"] == 1 for f in body["features"])


def test_clusters_keep_to_the_bbox_and_the_filters(client, cases):
    west_half = f"{LON0 - STEP},{LAT0 - STEP},{LON0 + 2 * STEP},{LAT0 + 2 * STEP}"
    body = ok(client.get(CLUSTERS, query_string={"bbox": west_half, "zoom": 14}))
    assert body["total"] == 4  # A1 and A2 only
    filtered = ok(
        client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14, "source": "hotline"})
    )
    assert [f["properties"]["count"] for f in filtered["features"]] == [1]
    assert filtered["features"][0]["properties"]["id"] == cases[B2][1]
    open_only = ok(client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14, "open": "true"}))
    assert open_only["total"] == 5


def test_clusters_of_a_region_outside_the_scope_are_empty(client, cases, accounts):
    officer = accounts.client("officer_b", "community_officer", scope_region=COMMUNITY_B)
    mine = ok(officer.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14}))
    assert mine["total"] == 2
    beside = ok(
        officer.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14, "region": COMMUNITY_A})
    )
    assert beside["features"] == [] and beside["total"] == 0


@pytest.mark.parametrize(
    "query,field",
    [
        ({"zoom": 14}, "bbox"),
        ({"bbox": VIEW}, "zoom"),
        ({"bbox": VIEW, "zoom": 23}, "zoom"),
        ({"bbox": VIEW, "zoom": -1}, "zoom"),
        ({"bbox": "120,31,121", "zoom": 14}, "bbox"),
        ({"bbox": "121,31,120,32", "zoom": 14}, "bbox"),
        ({"bbox": "200,31,201,32", "zoom": 14}, "bbox"),
        ({"bbox": "120,-95,121,32", "zoom": 14}, "bbox"),
        ({"bbox": "120,31,nan,32", "zoom": 14}, "bbox"),
        # The whole world at street level: far more than 64 tiles across.
        ({"bbox": "-180,-85,180,85", "zoom": 15}, "bbox"),
        ({"bbox": "120,31,122,32", "zoom": 14}, "bbox"),
        ({"bbox": VIEW, "zoom": 14, "limit": 10}, "limit"),
    ],
)
def test_bad_cluster_queries_are_422(client, world, query, field):
    body = ok(client.get(CLUSTERS, query_string=query), 422)
    assert field in body["errors"]["query"], body


def test_the_whole_world_at_zoom_zero_is_allowed(client, cases):
    body = ok(client.get(CLUSTERS, query_string={"bbox": "-180,-90,180,90", "zoom": 0}))
    assert sum(f["properties"]["count"] for f in body["features"]) == body["total"] == 6


def test_answers_stay_bounded(client, cases, monkeypatch):
    """Past the caps: the biggest clusters are kept and flagged; a map of too many grids is
    refused (the caps lowered so that four grids and six cases reach them)."""
    from gridapi.services import maps

    monkeypatch.setattr(maps, "MAX_CLUSTERS", 2)
    body = ok(client.get(CLUSTERS, query_string={"bbox": VIEW, "zoom": 14}))
    assert body["truncated"] is True
    assert [f["properties"]["count"] for f in body["features"]] == [3, 2]
    assert body["total"] == 6
    monkeypatch.setattr(maps, "MAX_GRIDS", 3)
    refused = ok(client.get(COUNTS, query_string={"region": TOWNSHIP}), 422)
    assert "region" in refused["errors"]["query"]
    assert len(ok(client.get(COUNTS, query_string={"region": COMMUNITY_A}))["features"]) == 2
