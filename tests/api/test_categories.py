"""Case categories: the seeded taxonomy, admin edits, and attribute validation."""

from __future__ import annotations

import pytest

from gridapi.errors import Unprocessable
from gridapi.models import Category
from gridapi.services.categories import attribute_schema_problems, check_attributes


def test_seeded_taxonomy_is_listed_for_any_signed_in_caller(accounts, anon_client, factory):
    factory.regions()
    factory.grid_version()
    worker = accounts.client("worker1", "grid_worker", grids=["320508001001001"])
    r = worker.get("/api/v1/categories")
    assert r.status_code == 200
    items = {c["code"]: c for c in r.get_json()["items"]}
    assert {
        "01",
        "02",
        "03",
        "04",
        "05",
        "06",
        "51",
        "52",
        "53",
        "54",
        "55",
        "56",
        "57",
        "59",
    } <= set(items)
    assert items["5101"]["name"] == "信访" and items["5101"]["parent_code"] == "51"
    assert items["5101"]["sensitive"] is True
    assert (items["0101"]["handle_limit"], items["0101"]["handle_unit"]) == (4, "hours")
    assert items["51"]["level"] == 1 and items["5102"]["level"] == 2
    fire = items["5301"]
    assert fire["default_handler"] == "department:fire"
    assert {a["code"] for a in fire["attributes"]} == {"hazard", "place_type"}
    codes = [c["code"] for c in r.get_json()["items"]]
    assert codes.index("51") < codes.index("5101") < codes.index("52")
    assert anon_client.get("/api/v1/categories").status_code == 401


def test_admin_edits_and_others_are_refused(client, accounts, factory, session):
    factory.regions()
    r = client.patch("/api/v1/categories/0101", json={"handle_limit": 2, "handle_unit": "days"})
    assert r.status_code == 200 and r.get_json()["handle_limit"] == 2
    session.expire_all()
    assert session.get(Category, "0101").handle_unit == "days"
    r = client.post(
        "/api/v1/categories",
        json={
            "code": "5309",
            "name": "燃气安全隐患",
            "attributes": [
                {"code": "supplier", "label": "供气单位", "type": "string", "required": True}
            ],
        },
    )
    assert r.status_code == 201 and r.get_json()["parent_code"] == "53"
    assert client.post("/api/v1/categories", json={"code": "5309", "name": "x"}).status_code == 409
    r = client.post("/api/v1/categories", json={"code": "7701", "name": "无父类"})
    assert r.status_code == 422 and "code" in r.get_json()["errors"]["json"]
    r = client.patch("/api/v1/categories/0101", json={"attributes": [{"code": "X", "type": "x"}]})
    assert r.status_code == 422 and "attributes" in r.get_json()["errors"]["json"]
    county = accounts.client("county1", "county_centre", scope_region="320508000000")
    assert county.patch("/api/v1/categories/0101", json={"name": "x"}).status_code == 403
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions.count("category.update") == 1 and actions.count("category.create") == 1


def _category(attrs):
    return Category(code="9901", name="t", attributes=attrs)


def test_report_attributes_are_checked_against_the_schema():
    cat = _category(
        [
            {"code": "n", "label": "N", "type": "number", "required": True},
            {"code": "d", "label": "D", "type": "date"},
            {"code": "one", "label": "1", "type": "single_choice", "values": ["a", "b"]},
            {"code": "many", "label": "M", "type": "multiple_choice", "values": ["a", "b"]},
            {"code": "s", "label": "S", "type": "string"},
        ]
    )
    assert check_attributes(
        cat, {"n": 3, "d": "2026-11-28", "one": "a", "many": ["b", "a", "b"], "s": " x "}
    ) == {"n": 3, "d": "2026-11-28", "one": "a", "many": ["b", "a"], "s": "x"}
    with pytest.raises(Unprocessable) as exc:
        check_attributes(cat, {"d": "28/11/2026", "one": "c", "many": "a", "s": 5, "zzz": 1})
    errors = exc.value.errors["json"]["attributes"]
    assert set(errors) == {"n", "d", "one", "many", "s", "zzz"}
    assert errors["n"] == ["required"]
    with pytest.raises(Unprocessable):
        check_attributes(cat, {"n": True})


def test_attribute_schema_problems():
    assert attribute_schema_problems([{"code": "a", "label": "A", "type": "string"}]) == []
    assert attribute_schema_problems("x")
    assert attribute_schema_problems([{"code": "a", "label": "A", "type": "single_choice"}])
    assert attribute_schema_problems(
        [
            {"code": "a", "label": "A", "type": "string"},
            {"code": "a", "label": "B", "type": "string"},
        ]
    )
