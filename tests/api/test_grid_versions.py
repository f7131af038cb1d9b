"""Grid versions over HTTP: import report, activation rules, history, GeoJSON export."""

from __future__ import annotations

import json

from sqlalchemy import func, select, text

from gridapi.models import Grid, GridVersion

from ..factories import (
    COMMUNITY_A,
    COMMUNITY_B,
    COUNTY,
    LAT0,
    LON0,
    STEP,
    TOWNSHIP,
    clean_tiling,
    collection,
    feature,
    rectangle,
    square,
    to_multi,
)

A1, A2, B1, B2 = COMMUNITY_A + "001", COMMUNITY_A + "002", COMMUNITY_B + "001", COMMUNITY_B + "002"
COMMUNITY_C = "320508001003"
C1 = COMMUNITY_C + "001"
CELL_M2 = 1.058e6  # a 0.01° cell at lat 31.3: about 950.6 m × 1,113 m


def _problems(report: dict, code: str) -> dict[str, dict]:
    for grid in report["grids"]:
        if grid["code"] == code:
            return {p["kind"]: p for p in grid["problems"]}
    return {}


def test_clean_import_has_no_errors_and_is_a_draft(factory, client):
    factory.regions()
    r = client.post("/api/v1/grid-versions?label=2026%E7%89%88", json=clean_tiling())
    assert r.status_code == 201
    version = r.get_json()
    assert version["status"] == "draft"
    assert version["region_code"] == TOWNSHIP
    assert (version["grid_count"], version["error_count"]) == (4, 0)
    assert version["report"]["ok"] is True
    assert version["label"] == "2026版"
    # A draft routes nothing.
    assert factory.locate(120.605, 31.305)["grid"] is None


def test_report_lists_overlap_gap_self_intersection_and_outside(factory, client, session):
    factory.regions()
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [[120.62, 31.30], [120.63, 31.31], [120.63, 31.30], [120.62, 31.31], [120.62, 31.30]]
        ],
    }
    fc = collection(
        feature(A1, square(0, 0)),
        feature(A2, square(0.75, 0)),  # overlaps A1 by a quarter cell
        feature(B1, bowtie),  # self-intersecting ring
        feature(B2, square(3, 0, 1.5)),  # half a cell sticks out of community B
    )
    r = client.post("/api/v1/grid-versions", json=fc)
    assert r.status_code == 201
    version = r.get_json()
    report = version["report"]
    assert version["error_count"] > 0 and report["ok"] is False

    overlap = _problems(report, A2)["overlap"]
    assert overlap["with"] == A1
    assert 0.24 * CELL_M2 < overlap["area_m2"] < 0.28 * CELL_M2

    invalid = _problems(report, B1)["invalid_geometry"]
    assert "Self-intersection" in invalid["message"]

    outside = _problems(report, B2)["outside_community"]
    assert 1.22 * CELL_M2 < outside["area_m2"] < 1.28 * CELL_M2  # 2.25 cells, 1 inside B

    gaps = {c["code"]: c for c in report["communities"]}
    # A2 shifted left by a quarter cell leaves a quarter cell of community A uncovered.
    assert 0.24 * CELL_M2 < gaps[COMMUNITY_A]["gap_area_m2"] < 0.26 * CELL_M2
    # Community B (2 cells): the bow-tie covers half of cell 2, B2 covers cell 3 → ½ cell gap.
    assert 0.45 * CELL_M2 < gaps[COMMUNITY_B]["gap_area_m2"] < 0.56 * CELL_M2

    # Nothing is activated: 409 with the count, the version stays a draft.
    r = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={})
    assert r.status_code == 409
    assert "error" in r.get_json()["message"]
    assert (
        session.scalar(select(GridVersion.status).where(GridVersion.id == version["id"])) == "draft"
    )
    assert session.scalar(select(func.count()).select_from(Grid).where(Grid.in_service)) == 0

    # Forced, it goes into service, and the repaired bow-tie still routes.
    r = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={"force": True})
    assert r.status_code == 200
    assert r.get_json()["forced"] is True
    assert factory.locate(120.6225, 31.3025)["grid"]["code"] == B1


def test_unknown_community_and_bad_features_are_reported(factory, client):
    factory.regions(with_boundaries=False)
    fc = collection(
        feature(A1, square(0, 0)),
        feature("320508001099001", square(1, 0)),  # community 099 not in the tree
        feature("32050800100", square(2, 0)),  # 11 digits
        {
            "type": "Feature",
            "properties": {"code": A2, "name": "线"},
            "geometry": {"type": "LineString", "coordinates": [[120.6, 31.3], [120.7, 31.4]]},
        },
    )
    version = client.post("/api/v1/grid-versions", json=fc).get_json()
    kinds = {p["kind"] for p in version["report"]["feature_problems"]}
    assert {"code_format", "geometry_type"} <= kinds
    assert "unknown_community" in _problems(version["report"], "320508001099001")
    assert version["grid_count"] == 1  # the grid of the unknown community is left out
    grids = client.get(f"/api/v1/grids?version={version['id']}").get_json()["items"]
    assert [g["code"] for g in grids] == [A1]


def test_a_grid_with_nothing_left_is_reported_not_stored_and_routing_stands(
    factory, client, engine
):
    """A ring of too few points (nothing left after make_valid) or of zero area: reported
    as empty_geometry and left out of the version on both engines (SQLite answered a bare
    409, PostGIS stored an empty grid whose forced activation made every locate, batch and
    report 500: NaN bounds in the routing lattice)."""
    factory.regions()
    factory.grid_version()  # A1, A2, B1, B2 in service
    x, y = 120.58, 31.38
    fc = collection(
        feature(A1, square(0, 0)),
        feature(A2, {"type": "Polygon", "coordinates": [[[x, y], [x + 0.01, y], [x, y]]]}),
        feature(
            B1, {"type": "Polygon", "coordinates": [[[x, y], [x + 0.01, y], [x + 0.02, y], [x, y]]]}
        ),
    )
    r = client.post("/api/v1/grid-versions", json=fc)
    assert r.status_code == 201, r.get_json()
    version = r.get_json()
    assert version["grid_count"] == 1 and version["error_count"] >= 2
    assert "empty_geometry" in _problems(version["report"], A2)
    assert "empty_geometry" in _problems(version["report"], B1)
    grids = client.get(f"/api/v1/grids?version={version['id']}").get_json()["items"]
    assert [g["code"] for g in grids] == [A1]
    done = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={"force": True})
    assert done.status_code == 200, done.get_json()
    assert factory.locate(120.605, 31.305)["grid"]["code"] == A1
    assert factory.locate(120.615, 31.305)["grid"] is None  # A2 left service with nothing
    if engine.dialect.name != "postgresql":
        return  # SQLite cannot store an empty geometry at all
    # A version stored before this change may hold an empty grid: routing leaves it out.
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE grids SET geom = ST_GeomFromText('MULTIPOLYGON EMPTY', 4326) "
                "WHERE code = :c AND version_id = :v"
            ),
            {"c": A1, "v": version["id"]},
        )
        conn.execute(
            text("UPDATE index_generations SET generation = generation + 1 WHERE name = 'grids'")
        )
    client.application.extensions["gridapi"].routing.refresh()  # changed behind its back
    assert factory.locate(120.605, 31.305)["grid"] is None  # was 500
    assert (
        client.post("/api/v1/locate/batch", json={"points": [[120.605, 31.305]]}).status_code == 200
    )


def test_activation_keeps_history_and_versions_stay_queryable(factory, client):
    factory.regions()
    first = factory.grid_version()
    redrawn = collection(feature(A1, to_multi(square(0, 0, 2))), feature(B1, square(2, 0, 2)))
    second = factory.grid_version(redrawn, force=True)  # gaps are fine for this test
    assert factory.locate(120.615, 31.305)["grid"]["version_id"] == second["id"]

    old = client.get(f"/api/v1/grid-versions/{first['id']}").get_json()
    assert old["status"] == "retired" and old["retired_at"] is not None
    # The retired version's grids are still there, by version.
    grids = client.get(f"/api/v1/grids?version={first['id']}").get_json()["items"]
    assert [g["code"] for g in grids] == [A1, A2, B1, B2]
    assert all(not g["in_service"] for g in grids)
    one = client.get(f"/api/v1/grids/{A2}?version={first['id']}")
    assert one.status_code == 200 and one.get_json()["geometry"]["type"] == "MultiPolygon"
    # A2 is not in service any more.
    assert client.get(f"/api/v1/grids/{A2}").status_code == 404
    fc = json.loads(client.get(f"/api/v1/grid-versions/{first['id']}/grids", buffered=True).data)
    assert len(fc["features"]) == 4


def test_activating_the_active_county_version_again_rolls_a_community_back(
    factory, client, session
):
    """The township's version, still active, activated again answered 200 and changed
    nothing: the community's version (with a gap where A2 was) stayed, and the README's
    way to roll back did not work."""
    factory.regions()
    first = factory.grid_version()
    a2 = (LON0 + 1.5 * STEP, LAT0 + 0.5 * STEP)  # the middle of cell (1, 0)
    assert factory.locate(*a2)["grid"]["code"] == A2
    gap = collection(feature(A1, square(0, 0)))
    community = factory.grid_version(gap, force=True, region=COMMUNITY_A)
    assert factory.locate(*a2)["grid"] is None
    again = client.post(f"/api/v1/grid-versions/{first['id']}/activate", json={})
    assert again.status_code == 200 and again.get_json()["status"] == "active"
    assert factory.locate(*a2)["grid"]["code"] == A2
    status = client.get(f"/api/v1/grid-versions/{community['id']}").get_json()["status"]
    assert status == "retired"
    in_service = client.get("/api/v1/grids").get_json()["items"]
    assert [(g["code"], g["version_id"]) for g in in_service] == [
        (code, first["id"]) for code in (A1, A2, B1, B2)
    ]
    # whole again: activating it once more changes nothing
    generation = session.execute(text("SELECT generation FROM index_generations")).scalar()
    assert client.post(f"/api/v1/grid-versions/{first['id']}/activate", json={}).status_code == 200
    session.rollback()
    assert session.execute(text("SELECT generation FROM index_generations")).scalar() == generation


def test_a_case_shows_the_name_of_its_grid_in_the_version_it_was_routed_with(factory, client):
    """Codes are withdrawn and reissued: after a version that gave A1's code to another
    area under another name, an old case of A1 showed the new grid's name."""
    factory.regions()
    first = factory.grid_version()
    body = {"category": "0101", "description": "井盖缺失", "location": {"type": "Point"}}
    body["location"]["coordinates"] = [LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP]
    old = client.post("/api/v1/cases", json=body)
    assert old.status_code == 201, old.get_json()
    assert old.get_json()["grid"]["name"] == "第001网格"
    swapped = collection(
        feature(A1, square(1, 0), name="新1"),
        feature(A2, square(0, 0), name="新2"),
        feature(B1, square(2, 0)),
        feature(B2, square(3, 0)),
    )
    second = factory.grid_version(swapped)
    case = client.get(f"/api/v1/cases/{old.get_json()['id']}").get_json()
    assert case["grid"] == {"code": A1, "name": "第001网格", "version_id": first["id"]}
    listed = client.get("/api/v1/cases").get_json()["items"]
    assert [c["grid"]["name"] for c in listed] == ["第001网格"]
    new = client.post("/api/v1/cases", json=body).get_json()  # the same place, now A2 "新2"
    assert new["grid"] == {"code": A2, "name": "新2", "version_id": second["id"]}


def test_export_is_geojson_of_grids_in_service(factory, client):
    factory.regions()
    factory.grid_version()
    r = client.get(f"/api/v1/grids/export?region={COMMUNITY_B}", buffered=True)
    assert r.status_code == 200
    assert r.mimetype == "application/geo+json"
    fc = json.loads(r.data)
    assert fc["type"] == "FeatureCollection"
    props = [f["properties"] for f in fc["features"]]
    assert [(p["code"], p["type"]) for p in props] == [(B1, "basic"), (B2, "dedicated")]
    assert all(p["name"] for p in props)
    assert fc["features"][0]["geometry"]["type"] == "MultiPolygon"
    everything = json.loads(client.get("/api/v1/grids/export", buffered=True).data)
    assert len(everything["features"]) == 4


def test_import_needs_regions_and_a_feature_collection(factory, client):
    r = client.post("/api/v1/grid-versions", json=clean_tiling())
    assert r.status_code == 422
    assert "import the regions first" in r.get_json()["message"]
    factory.regions()
    r = client.post("/api/v1/grid-versions", json={"type": "Feature", "features": []})
    assert r.status_code == 422
    assert "type" in r.get_json()["errors"]["json"]
    r = client.post(
        "/api/v1/grid-versions", json={"type": "FeatureCollection", "features": [], "extra": 1}
    )
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["extra"] == ["Unknown field."]
    r = client.post(f"/api/v1/grid-versions?region={COMMUNITY_A}", json=clean_tiling())
    assert r.status_code == 422  # B's grids are not inside community A
    assert client.post("/api/v1/grid-versions/999/activate", json={}).status_code == 404


def test_grid_list_filters_and_pagination(factory, client):
    factory.regions()
    factory.grid_version()
    seen, after = [], ""
    while True:
        page = client.get(f"/api/v1/grids?limit=3{after}").get_json()
        seen += [g["code"] for g in page["items"]]
        if not page["next"]:
            break
        after = f"&after={page['next']}"
    assert seen == [A1, A2, B1, B2]
    assert [
        g["code"] for g in client.get(f"/api/v1/grids?community={COMMUNITY_A}").get_json()["items"]
    ] == [A1, A2]
    assert [g["code"] for g in client.get("/api/v1/grids?type=dedicated").get_json()["items"]] == [
        B2
    ]
    assert client.get("/api/v1/grids/320508001001999").status_code == 404


def test_a_code_in_full_width_digits_is_reported_not_the_whole_import_refused(factory, client):
    """ "３２０５…" passed str.isdigit(): the version's region was derived from it with the
    others, none was found, and the whole file was refused naming nothing."""
    factory.regions()
    wide = A1.translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    fc = collection(feature(wide, square(0, 0)), feature(A2, square(1, 0)))
    r = client.post("/api/v1/grid-versions", json=fc)
    assert r.status_code == 201, r.get_json()
    version = r.get_json()
    assert "code_format" in {p["kind"] for p in version["report"]["feature_problems"]}
    assert version["grid_count"] == 1


def _left_without_grids(report: dict) -> list[str]:
    return [
        c["code"]
        for c in report["communities"]
        if any(p["kind"] == "community_without_grids" for p in c["problems"])
    ]


def test_a_file_of_some_communities_names_those_it_leaves_without_grids(factory, client):
    """The grids of two communities of a township, imported without a region, became the
    township's version with no error; activated without force, they took the third
    community's grids out of service and cases there went unrouted."""
    factory.regions()
    r = client.post(
        "/api/v1/regions/import",
        json=[{"code": COMMUNITY_C, "name": "双塔社区", "boundary": rectangle(4, 0, 5, 1)}],
    )
    assert r.status_code == 200, r.get_json()
    factory.grid_version(collection(*clean_tiling()["features"], feature(C1, square(4, 0))))
    in_c = (LON0 + 4.5 * STEP, LAT0 + 0.5 * STEP)
    assert factory.locate(*in_c)["grid"]["code"] == C1

    r = client.post("/api/v1/grid-versions", json=clean_tiling())  # A and B, not C
    assert r.status_code == 201, r.get_json()
    version = r.get_json()
    assert version["region_code"] == TOWNSHIP
    assert (version["error_count"], version["report"]["ok"]) == (1, False)
    entry = {c["code"]: c for c in version["report"]["communities"]}[COMMUNITY_C]
    assert entry["grid_count"] == 0
    assert 0.95 * CELL_M2 < entry["gap_area_m2"] < 1.05 * CELL_M2
    [problem] = entry["problems"]
    assert (problem["severity"], problem["kind"]) == ("error", "community_without_grids")
    assert COMMUNITY_C in problem["message"] and "双塔社区" in problem["message"]
    r = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={})
    assert r.status_code == 409
    assert factory.locate(*in_c)["grid"]["code"] == C1
    assert len(client.get(f"/api/v1/grids?region={TOWNSHIP}").get_json()["items"]) == 5

    # Naming the township for one community's file: both others are named.
    r = client.post(
        f"/api/v1/grid-versions?region={TOWNSHIP}",
        json=collection(feature(A1, square(0, 0)), feature(A2, square(1, 0))),
    )
    assert r.status_code == 201, r.get_json()
    assert _left_without_grids(r.get_json()["report"]) == [COMMUNITY_B, COMMUNITY_C]
    assert r.get_json()["error_count"] == 2

    # One community's file alone is that community's version: nothing else is replaced.
    r = client.post(
        "/api/v1/grid-versions",
        json=collection(feature(A1, square(0, 0)), feature(A2, square(1, 0))),
    )
    version = r.get_json()
    assert (version["region_code"], version["error_count"]) == (COMMUNITY_A, 0)
    r = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={})
    assert r.status_code == 200
    assert factory.locate(*in_c)["grid"]["code"] == C1
    assert len(client.get(f"/api/v1/grids?region={TOWNSHIP}").get_json()["items"]) == 5


STRAY = "320506001001001"  # a community of another county, not in the tree
A2_MIDDLE = (LON0 + 1.5 * STEP, LAT0 + 0.5 * STEP)


def _copy_grid(engine, code: str, version_id: int, new_code: str, in_service: bool) -> None:
    """Store a grid of ``new_code``'s community as imports before the rule did."""
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO grids (version_id, code, name, type, community_code, county_code,"
                " area_m2, in_service, geom)"
                " SELECT version_id, :new, name, type, :community, :county, area_m2, :on, geom"
                " FROM grids WHERE code = :code AND version_id = :v"
            ),
            {
                "new": new_code,
                "community": new_code[:12],
                "county": new_code[:6],
                "on": in_service,
                "code": code,
                "v": version_id,
            },
        )
        conn.execute(
            text("UPDATE index_generations SET generation = generation + 1 WHERE name = 'grids'")
        )


def test_a_grid_of_a_community_not_in_the_tree_is_left_out_and_never_served(factory, client):
    """A community's file with one code of another county became a version of the city (the
    common ancestor); forced and then rolled back by activating the township's version
    again, the stray grid stayed in service, won the points of A2 (lowest code) and sent
    their cases to a community that does not exist."""
    factory.regions()
    first = factory.grid_version()
    fc = collection(feature(A1, square(0, 0)), feature(STRAY, square(1, 0)))
    r = client.post("/api/v1/grid-versions", json=fc)
    assert r.status_code == 201, r.get_json()
    version = r.get_json()
    assert version["region_code"] == COMMUNITY_A  # not the city
    assert version["grid_count"] == 1
    assert "unknown_community" in _problems(version["report"], STRAY)
    assert version["error_count"] == 2  # the unknown community, and the gap where A2 was
    grids = client.get(f"/api/v1/grids?version={version['id']}").get_json()["items"]
    assert [g["code"] for g in grids] == [A1]

    r = client.post(f"/api/v1/grid-versions/{version['id']}/activate", json={"force": True})
    assert r.status_code == 200, r.get_json()
    assert client.get(f"/api/v1/grids/{STRAY}").status_code == 404
    assert factory.locate(*A2_MIDDLE)["grid"] is None

    r = client.post(f"/api/v1/grid-versions/{first['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    answer = factory.locate(*A2_MIDDLE)
    assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A2, first["id"])
    in_service = client.get("/api/v1/grids").get_json()["items"]
    assert [(g["code"], g["version_id"]) for g in in_service] == [
        (code, first["id"]) for code in (A1, A2, B1, B2)
    ]


def test_a_file_of_unknown_communities_only_is_refused(factory, client):
    factory.regions()
    r = client.post("/api/v1/grid-versions", json=collection(feature(STRAY, square(0, 0))))
    assert r.status_code == 422
    assert "import the regions first" in r.get_json()["message"]
    assert r.get_json()["errors"]["json"]["features"] == [
        "community 320506001001 is not in the tree"
    ]


def test_activation_never_serves_a_stored_grid_of_a_community_not_in_the_tree(
    factory, client, engine, session
):
    """A version stored before imports left such grids out, activated (with force), put
    them in service."""
    factory.regions()
    factory.grid_version()
    second = factory.grid_version(activate=False)
    _copy_grid(engine, A1, second["id"], STRAY, in_service=False)
    r = client.post(f"/api/v1/grid-versions/{second['id']}/activate", json={"force": True})
    assert r.status_code == 200, r.get_json()
    assert client.get(f"/api/v1/grids/{STRAY}").status_code == 404
    answer = factory.locate(LON0 + 0.5 * STEP, LAT0 + 0.5 * STEP)  # A1 and its copy
    assert (answer["grid"]["code"], answer["grid"]["version_id"]) == (A1, second["id"])
    # All its grids of the tree are in service: activating it again changes nothing.
    generation = session.execute(text("SELECT generation FROM index_generations")).scalar()
    r = client.post(f"/api/v1/grid-versions/{second['id']}/activate", json={"force": True})
    assert r.status_code == 200
    session.rollback()
    assert session.execute(text("SELECT generation FROM index_generations")).scalar() == generation


MIDDLES = {  # the middle of each cell of the township, A1 A2 B1 B2 of the clean tiling
    code: (LON0 + (col + 0.5) * STEP, LAT0 + 0.5 * STEP)
    for col, code in enumerate((A1, A2, B1, B2))
}


def _routing(factory) -> dict[str, tuple[str, int] | None]:
    answers = {code: factory.locate(*point)["grid"] for code, point in MIDDLES.items()}
    return {code: g and (g["code"], g["version_id"]) for code, g in answers.items()}


def _in_service(client) -> list[tuple[str, int]]:
    return [(g["code"], g["version_id"]) for g in client.get("/api/v1/grids").get_json()["items"]]


def _status(client, version: dict) -> str:
    return client.get(f"/api/v1/grid-versions/{version['id']}").get_json()["status"]


def test_rolling_back_undoes_the_version_of_a_larger_region_that_replaced_it(factory, client):
    """A version of a larger region (a city's over a county's: here the township's over a
    community's) retired the smaller one; activating the smaller one again answered 200 but
    left the larger one active outside it, so its grids kept serving there and routing was
    not what it had been before."""
    factory.regions()
    first = factory.grid_version()  # the township: A1 A2 B1 B2
    community = factory.grid_version(collection(feature(A1, rectangle(0, 0, 2, 1))))
    assert community["region_code"] == COMMUNITY_A
    before = _routing(factory)
    assert before[A2] == (A1, community["id"]) and before[B2] == (B2, first["id"])
    redrawn = collection(
        feature(A1, square(0, 0)), feature(A2, square(1, 0)), feature(B1, rectangle(2, 0, 4, 1))
    )
    township = factory.grid_version(redrawn)
    assert township["error_count"] == 0 and township["region_code"] == TOWNSHIP
    assert _routing(factory)[B2] == (B1, township["id"])

    r = client.post(f"/api/v1/grid-versions/{community['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    assert _routing(factory) == before
    assert _in_service(client) == [(A1, community["id"]), (B1, first["id"]), (B2, first["id"])]
    assert [_status(client, v) for v in (first, community, township)] == [
        "active",
        "active",
        "retired",
    ]

    # And forward again: the township's version replaces both once more.
    r = client.post(f"/api/v1/grid-versions/{township['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    assert _in_service(client) == [(code, township["id"]) for code in (A1, A2, B1)]
    assert [_status(client, v) for v in (first, community, township)] == [
        "retired",
        "retired",
        "active",
    ]


def test_a_rollback_keeps_what_was_activated_since_outside_the_region(factory, client):
    factory.regions()
    first = factory.grid_version()
    community_a = factory.grid_version(collection(feature(A1, rectangle(0, 0, 2, 1))))
    township = factory.grid_version(clean_tiling())
    community_b = factory.grid_version(collection(feature(B1, rectangle(2, 0, 4, 1))))
    r = client.post(f"/api/v1/grid-versions/{community_a['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    assert _in_service(client) == [(A1, community_a["id"]), (B1, community_b["id"])]
    assert _routing(factory)[B2] == (B1, community_b["id"])
    assert [_status(client, v) for v in (first, community_a, township, community_b)] == [
        "active",
        "active",
        "retired",
        "active",
    ]


def test_a_county_centre_rolling_back_leaves_the_other_counties_grids_alone(
    factory, client, accounts
):
    """A county centre activating its county's old version again, after the city's version
    had replaced it, retired the city's version everywhere and put another county's old
    version back in service: routing changed outside the centre's scope."""
    factory.regions()
    other = "320505001001"  # 虎丘区 狮山街道 狮山社区, a row above the clean tiling
    r = client.post(
        "/api/v1/regions/import",
        json=[
            {"code": "320505000000", "name": "虎丘区"},
            {"code": "320505001000", "name": "狮山街道", "boundary": rectangle(0, 1, 2, 2)},
            {"code": other, "name": "狮山社区", "boundary": rectangle(0, 1, 2, 2)},
        ],
    )
    assert r.status_code == 200, r.get_json()
    county = factory.grid_version()  # 姑苏区's township
    huqiu = factory.grid_version(collection(feature(other + "001", rectangle(0, 1, 2, 2))))
    city = factory.grid_version(
        collection(
            *clean_tiling()["features"],
            feature(other + "001", square(0, 1)),
            feature(other + "002", square(1, 1)),
        )
    )
    assert (city["region_code"], city["error_count"]) == ("320500000000", 0)
    centre = accounts.client("gusu", "county_centre", scope_region="320508000000")

    r = centre.post(f"/api/v1/grid-versions/{county['id']}/activate", json={})
    assert r.status_code == 200, r.get_json()
    assert [_status(client, v) for v in (county, huqiu, city)] == ["active", "retired", "active"]
    assert _in_service(client) == [
        (other + "001", city["id"]),
        (other + "002", city["id"]),
        *[(code, county["id"]) for code in (A1, A2, B1, B2)],
    ]
    assert factory.locate(LON0 + 1.5 * STEP, LAT0 + 1.5 * STEP)["grid"]["code"] == other + "002"


def test_a_malformed_region_code_is_422_naming_the_field(factory, client):
    """12 digits that are no division code (province 99; township digits 000 under a
    village) passed the pattern and were refused later with a 422 naming no field."""
    factory.regions()
    factory.grid_version()
    for path in ("/api/v1/grids", "/api/v1/grid-versions", "/api/v1/grids/export"):
        for code in ("990000000000", "320508000001"):
            r = client.get(path, query_string={"region": code})
            assert r.status_code == 422, (path, r.get_json())
            assert list(r.get_json()["errors"]) == ["query"], (path, r.get_json())
            assert list(r.get_json()["errors"]["query"]) == ["region"], (path, r.get_json())


def test_version_zero_is_a_version_with_no_grids_not_the_grids_in_service(factory, client):
    """?version=0 was taken as no version at all: the grids in service came back as if they
    were version 0's (and ?after=0 listed every version, not those older than 0)."""
    factory.regions()
    factory.grid_version()
    assert client.get("/api/v1/grids", query_string={"version": 0}).get_json()["items"] == []
    assert client.get(f"/api/v1/grids/{A1}", query_string={"version": 0}).status_code == 404
    r = client.get("/api/v1/grids/export", query_string={"version": 0})
    assert r.status_code == 404, r.get_data(as_text=True)  # no version 0 to export
    assert client.get("/api/v1/grid-versions", query_string={"after": 0}).get_json()["items"] == []
    # Without it, the grids in service as before.
    assert len(client.get("/api/v1/grids").get_json()["items"]) == 4


def test_a_grid_name_with_a_nul_is_a_feature_problem_on_both_engines(factory, client):
    """A name with U+0000 (a shapefile's padded text field) was stored on SQLite and made
    PostgreSQL refuse the whole import; it is the feature's problem, as a missing name is."""
    factory.regions()
    fc = clean_tiling()
    fc["features"][1]["properties"]["name"] = "第002网格\x00\x00"
    fc["features"][2]["properties"]["type"] = "basic\x00"  # reported as it came
    fc["features"][3]["geometry"]["type"] = "Polygon\x00"
    r = client.post("/api/v1/grid-versions", json=fc)
    assert r.status_code == 201, r.get_json()
    version = r.get_json()
    assert version["grid_count"] == 1
    problems = {p["code"]: p for p in version["report"]["feature_problems"]}
    assert [problems[c]["kind"] for c in (A2, B1, B2)] == [
        "name_invalid",
        "type_invalid",
        "geometry_type",
    ]
    assert "U+0000" in problems[A2]["message"]
    stored = client.get(f"/api/v1/grid-versions/{version['id']}").get_json()["report"]
    assert stored == version["report"]


def test_the_export_of_a_version_not_imported_yet_is_404_not_an_empty_tagged_body(
    factory, client, accounts
):
    """/grids/export?version=N before version N existed answered 200, an empty collection
    and an ETag, which still matched once N was imported: a phone that asked early kept
    its empty map (304). A missing version, and one of which the caller sees nothing,
    answer 404 alike, as /grid-versions/{id}/grids does."""
    factory.regions()
    first = factory.grid_version()["id"]
    later = first + 1
    early = client.get("/api/v1/grids/export", query_string={"version": later})
    assert early.status_code == 404, early.get_data(as_text=True)
    assert "ETag" not in early.headers
    assert set(early.get_json()) == {"code", "status", "message", "errors"}
    assert factory.grid_version(activate=False)["id"] == later
    r = client.get(
        "/api/v1/grids/export",
        query_string={"version": later},
        headers={"If-None-Match": early.headers.get("ETag", '"never-given"')},
    )
    assert r.status_code == 200
    assert len(json.loads(r.get_data())["features"]) == 4
    # Out of scope like missing: an office of another township; a worker sees its own grid.
    ok_ = client.post("/api/v1/regions", json={"code": "320508002000", "name": "观前街道"})
    assert ok_.status_code == 201, ok_.get_json()
    other = accounts.client("other", "township_office", scope_region="320508002000")
    hidden = other.get("/api/v1/grids/export", query_string={"version": first})
    missing = other.get("/api/v1/grids/export", query_string={"version": later + 1})
    assert (hidden.status_code, hidden.get_json()) == (404, missing.get_json())
    worker = accounts.client("worker", "grid_worker", grids=[A1])
    mine = worker.get("/api/v1/grids/export", query_string={"version": first})
    assert [f["properties"]["code"] for f in json.loads(mine.get_data())["features"]] == [A1]


OTHER_COUNTY = "320505000000"


def test_an_import_answers_alike_for_a_community_out_of_scope_and_a_missing_one(
    factory, client, accounts
):
    """A county centre importing grids of another county's community got another answer
    than for a community that does not exist (a 422 "no region contains these grids" or
    "grid … is not in the subtree of …" against a report of an unknown community): the
    import told which of another area's community codes exist. Now both are reported as
    unknown communities and left out, byte for byte alike but for the code."""
    factory.regions()
    rows = [
        {"code": OTHER_COUNTY, "name": "虎丘区"},
        {"code": "320505001000", "name": "枫桥街道"},
        {"code": "320505001001", "name": "枫桥社区", "boundary": rectangle(0, 1, 2, 2)},
    ]
    assert client.post("/api/v1/regions/import", json=rows).status_code == 200
    centre = accounts.client("centre", "county_centre", scope_region=COUNTY)
    theirs, nobodys = "320505001001", "320505001009"

    def answer(community: str, fc: dict, **query: str) -> tuple[int, str]:
        r = centre.post("/api/v1/grid-versions", json=fc, query_string=query)
        body = r.get_json()
        for key in ("id", "created_at", "activated_at"):
            body.pop(key, None)
        return r.status_code, json.dumps(body, sort_keys=True).replace(community, "C")

    def with_one_of(community: str) -> dict:
        fc = clean_tiling()
        fc["features"].append(feature(community + "001", square(0, 1)))
        return fc

    def only_one_of(community: str) -> dict:
        return collection(feature(community + "001", square(0, 1)))

    for fc, query in (
        (with_one_of, {}),
        (with_one_of, {"region": TOWNSHIP}),
        (only_one_of, {}),
    ):
        out_of_scope, missing = (
            answer(theirs, fc(theirs), **query),
            answer(nobodys, fc(nobodys), **query),
        )
        assert out_of_scope == missing, (query, out_of_scope, missing)
    assert answer(nobodys, with_one_of(nobodys))[0] == 201


def test_a_narrower_caller_reads_its_own_grids_of_a_larger_regions_version(
    factory, client, accounts
):
    """/grid-versions/{id}/grids admitted only callers whose scope covered the version's whole
    region: a community officer, or a grid worker, of the township's version got 404 for its
    own grids, which /grids/export?version= gave it. It now gets the grids inside its scope,
    and a caller who sees none of them still gets 404, as for a version that does not exist."""
    factory.regions()
    version = factory.grid_version()
    assert version["region_code"] == TOWNSHIP
    path = f"/api/v1/grid-versions/{version['id']}/grids"

    def codes(caller) -> list[str]:  # type: ignore[no-untyped-def]
        r = caller.get(path, buffered=True)
        assert r.status_code == 200, r.get_data(as_text=True)
        return [f["properties"]["code"] for f in json.loads(r.get_data())["features"]]

    assert codes(client) == [A1, A2, B1, B2]
    officer = accounts.client("officer", "community_officer", scope_region=COMMUNITY_A)
    assert codes(officer) == [A1, A2]
    worker = accounts.client("worker", "grid_worker", grids=[B2])
    assert codes(worker) == [B2]
    ok_ = client.post("/api/v1/regions", json={"code": "320508002000", "name": "观前街道"})
    assert ok_.status_code == 201, ok_.get_json()
    other = accounts.client("other", "township_office", scope_region="320508002000")
    hidden = other.get(path)
    missing = other.get(f"/api/v1/grid-versions/{version['id'] + 1}/grids")
    assert hidden.status_code == 404, hidden.get_data(as_text=True)
    assert hidden.get_json() == missing.get_json()
    # The version itself (its report covers the whole township) stays the region's.
    assert worker.get(f"/api/v1/grid-versions/{version['id']}").status_code == 404
