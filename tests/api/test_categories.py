"""Case categories: the seeded taxonomy, admin edits, and attribute validation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, update

from gridapi.errors import Unprocessable
from gridapi.models import Case, Category
from gridapi.services.categories import (
    attribute_schema_errors,
    check_attributes,
)

from ..factories import COMMUNITY_A
from .test_cases import center, report_body

NUL = "Must not contain NUL characters (U+0000)."


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
    r = client.post("/api/v1/categories", json={"code": "5309", "name": "x"})
    assert r.status_code == 409 and r.get_json()["message"] == "Category 5309 exists."
    assert r.get_json()["errors"] == {"json": {"code": ["a category has this code"]}}
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


def test_attribute_schema_errors_name_the_attribute_and_the_key():
    assert attribute_schema_errors([{"code": "a", "label": "A", "type": "string"}]) == {}
    assert attribute_schema_errors("x") == ["must be a list of attribute definitions"]
    good = {"code": "a", "label": "A", "type": "string"}
    errors = attribute_schema_errors(
        [
            {**good, "description": {"k": 1}},
            {**good, "code": "b", "label": "x\x00y", "hint": "?"},
            {**good, "code": "a", "label": "  "},
            {"code": "c", "label": "C", "type": "single_choice", "values": ["ok", 1]},
            {"code": "d", "label": "D", "type": "multiple_choice", "values": ["ok", "x" * 101]},
            {**good, "code": "e\n", "label": "L" * 101, "required": "yes"},
            "x",
        ]
    )
    assert errors == {
        0: {"description": ["must be text"]},
        1: {"label": [NUL], "hint": ["Unknown field."]},
        2: {"code": ["duplicate code 'a'"], "label": ["required"]},
        3: {"values": ["value 1: must be text"]},
        4: {"values": ["value 1: at most 100 characters"]},
        5: {
            "code": ["must be 1-40 lower-case letters, digits and _, from a letter"],
            "label": ["at most 100 characters"],
            "required": ["must be true or false"],
        },
        6: {"_schema": ["must be an object"]},
    }
    assert attribute_schema_errors([{**good, "type": "single_choice"}]) == {
        0: {"values": ["a choice needs a list of distinct non-empty values"]}
    }


GOOD_ATTRIBUTE = {"code": "a", "label": "x", "type": "string"}


@pytest.mark.parametrize(
    ("definition", "key"),
    [
        ({"description": {"k": 1}}, "description"),  # stored and shown as "{'k': 1}"
        ({"description": "d\x00"}, "description"),
        ({"description": "d" * 1001}, "description"),
        ({"label": ["x"]}, "label"),
        ({"label": "x\x00"}, "label"),
        ({"label": "x" * 100_000}, "label"),
        ({"label": "   "}, "label"),
        ({"code": "a\n"}, "code"),
        ({"required": "yes"}, "required"),
        ({"hint": "?"}, "hint"),
        ({"values": ["v"]}, "values"),  # values are for choices
        ({"type": "single_choice"}, "values"),
        ({"type": "single_choice", "values": ["v", {"k": 1}]}, "values"),
        ({"type": "single_choice", "values": ["v", "w\x00"]}, "values"),
        ({"type": "single_choice", "values": ["v", "w" * 101]}, "values"),
        ({"type": "multiple_choice", "values": ["v", " "]}, "values"),
        ({"type": "multiple_choice", "values": ["v", "v"]}, "values"),
    ],
)
def test_a_malformed_attribute_definition_is_refused_naming_index_and_key(
    client, factory, session, definition, key
):
    factory.regions()
    attributes = [
        {"code": "first", "label": "第一", "type": "number"},
        {**GOOD_ATTRIBUTE, **definition},
    ]
    r = client.post(
        "/api/v1/categories", json={"code": "5309", "name": "燃气", "attributes": attributes}
    )
    assert r.status_code == 422, r.get_json()
    body = r.get_json()
    assert (body["code"], body["status"]) == (422, "Unprocessable Entity")
    assert list(body["errors"]["json"]["attributes"]) == ["1"]
    assert list(body["errors"]["json"]["attributes"]["1"]) == [key]
    assert session.get(Category, "5309") is None
    before = client.get("/api/v1/categories/0101").get_json()["attributes"]
    r = client.patch("/api/v1/categories/0101", json={"attributes": attributes})
    assert r.status_code == 422, r.get_json()
    assert list(r.get_json()["errors"]["json"]["attributes"]["1"]) == [key]
    assert client.get("/api/v1/categories/0101").get_json()["attributes"] == before


def test_duplicate_attribute_codes_are_named_at_the_second(client, factory):
    factory.regions()
    attributes = [GOOD_ATTRIBUTE, {**GOOD_ATTRIBUTE, "label": "again"}]
    r = client.patch("/api/v1/categories/0101", json={"attributes": attributes})
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["attributes"] == {"1": {"code": ["duplicate code 'a'"]}}


def test_valid_attribute_definitions_still_pass_as_they_are_read(client, factory, session):
    factory.regions()
    items = client.get("/api/v1/categories").get_json()["items"]
    seeded = {c["code"]: c["attributes"] for c in items if c["attributes"]}
    assert set(seeded) >= {"5102", "5104", "5301"}
    for code, attributes in seeded.items():  # values: null for the non-choices
        r = client.patch(f"/api/v1/categories/{code}", json={"attributes": attributes})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["attributes"] == attributes
    limits = {
        "code": "z" * 40,
        "label": "L" * 100,
        "type": "single_choice",
        "required": False,
        "values": ["v" * 100, "w"],
        "description": "D" * 1000,
    }
    r = client.patch("/api/v1/categories/0101", json={"attributes": [limits]})
    assert r.status_code == 200, r.get_json()
    session.expire_all()
    assert session.get(Category, "0101").attributes == [limits]


def test_a_handler_with_a_trailing_newline_is_refused(client, factory, session):
    factory.regions()
    r = client.patch("/api/v1/categories/0101", json={"default_handler": "community\n"})
    assert r.status_code == 422
    assert list(r.get_json()["errors"]["json"]) == ["default_handler"]
    session.expire_all()
    assert session.get(Category, "0101").default_handler == "township"


def _report(client, attributes):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/cases", json=report_body(*center(0), attributes=attributes))


def _cases(session) -> int:  # type: ignore[no-untyped-def]
    session.rollback()
    return session.scalar(select(func.count()).select_from(Case))


REPORT_FORM = [
    {"code": "note", "label": "备注", "type": "string"},
    {"code": "detail", "label": "详情", "type": "text"},
    {"code": "pick", "label": "选项", "type": "single_choice", "values": ["a", "b"]},
    {"code": "tags", "label": "标签", "type": "multiple_choice", "values": ["a", "b"]},
]


@pytest.mark.parametrize(
    ("code", "value"),
    [("note", "a\u0000b"), ("detail", "\u0000"), ("pick", "a\u0000"), ("tags", ["a", "b\u0000"])],
)
def test_a_nul_in_a_report_attribute_is_refused_on_both_engines(
    client, world, session, code, value
):
    # PostgreSQL answered "A value is out of range" naming nothing; SQLite stored the NUL.
    r = client.patch("/api/v1/categories/0101", json={"attributes": REPORT_FORM})
    assert r.status_code == 200, r.get_json()
    r = _report(client, {code: value})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"] == {"json": {"attributes": {code: [NUL]}}}
    assert _cases(session) == 0


def test_blanks_do_not_answer_a_required_text_attribute(client, world, session):
    form = [
        {"code": "note", "label": "备注", "type": "string", "required": True},
        {"code": "detail", "label": "详情", "type": "text"},
    ]
    assert client.patch("/api/v1/categories/0101", json={"attributes": form}).status_code == 200
    missing = _report(client, {})
    assert missing.status_code == 422
    for blank in ("   ", "\t\n", "\u3000"):  # the last an ideographic space
        r = _report(client, {"note": blank})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"] == missing.get_json()["errors"]
        assert r.get_json()["errors"]["json"]["attributes"]["note"] == ["required"]
    assert _cases(session) == 0
    r = _report(client, {"note": " 燃气 ", "detail": "  "})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attributes"] == {"note": "燃气"}


def test_a_category_made_sensitive_hides_its_cases_already_filed(client, accounts, world):
    """The flag reached only cases reported after it: a worker of the grid went on reading
    a case of a category made sensitive, in lists, maps and exports too."""
    chief = accounts.client("chief_s", "grid_chief", grids=[COMMUNITY_A + "001"])
    neighbour = accounts.client("worker_s", "grid_worker", grids=[COMMUNITY_A + "001"])
    case_id = chief.post("/api/v1/cases", json=report_body(*center(0))).get_json()["id"]
    assert neighbour.get(f"/api/v1/cases/{case_id}").status_code == 200
    r = client.patch("/api/v1/categories/0101", json={"sensitive": True})
    assert r.status_code == 200, r.get_json()
    assert neighbour.get(f"/api/v1/cases/{case_id}").status_code == 404
    assert neighbour.get("/api/v1/cases?category=0101").get_json()["items"] == []
    assert chief.get(f"/api/v1/cases/{case_id}").get_json()["sensitive"] is True  # reporter
    assert client.patch("/api/v1/categories/0101", json={"sensitive": False}).status_code == 200
    assert neighbour.get(f"/api/v1/cases/{case_id}").status_code == 200


def test_a_class_is_retired_after_its_subclasses_and_takes_no_new_ones(client, world):
    """A retired class kept live, reportable subclasses, and took new ones."""
    r = client.patch("/api/v1/categories/01", json={"is_active": False})
    assert r.status_code == 409 and "0101" in r.get_json()["errors"]["active_subclasses"]
    subclasses = [
        c["code"]
        for c in client.get("/api/v1/categories").get_json()["items"]
        if c["code"].startswith("01") and len(c["code"]) == 4
    ]
    for code in subclasses:
        r = client.patch(f"/api/v1/categories/{code}", json={"is_active": False})
        assert r.status_code == 200, r.get_json()
    assert client.patch("/api/v1/categories/01", json={"is_active": False}).status_code == 200
    r = client.post("/api/v1/categories", json={"code": "0199", "name": "新小类"})
    assert r.status_code == 422 and "code" in r.get_json()["errors"]["json"]
    r = client.patch("/api/v1/categories/0101", json={"is_active": True})
    assert r.status_code == 422 and "is_active" in r.get_json()["errors"]["json"]


def test_a_name_of_spaces_and_a_missing_handler_department_are_refused(client, world):
    """ "   " was a category's name, and department:nope its default handler (its cases then
    filed to the township without a word)."""
    from ..factories import COUNTY

    r = client.post("/api/v1/categories", json={"code": "5805", "name": "   "})
    assert r.status_code == 422 and "name" in r.get_json()["errors"]["json"]
    r = client.patch("/api/v1/categories/0101", json={"name": " \t "})
    assert r.status_code == 422 and "name" in r.get_json()["errors"]["json"]
    body = {"code": "0198", "name": "消防通道", "default_handler": "department:nope"}
    r = client.post("/api/v1/categories", json=body)
    assert r.status_code == 422
    assert r.get_json()["errors"]["json"]["default_handler"] == ["no department nope"]
    made = client.post(
        "/api/v1/departments", json={"code": "gusu-fire", "name": "消防", "region_code": COUNTY}
    )
    assert made.status_code == 201, made.get_json()
    body["default_handler"] = "department:gusu-fire"
    assert client.post("/api/v1/categories", json=body).status_code == 201
    r = client.patch("/api/v1/categories/0101", json={"default_handler": "department:nope"})
    assert r.status_code == 422


def test_a_code_taken_meanwhile_answers_as_one_taken_before(client, app, engine):
    """Two admins create category 5309 at once: both looked before either committed, and on
    PostgreSQL the second insert waited in the primary key for the first, then answered the
    generic 409 naming nothing. It answers as when the other came first now: the 409 naming
    `code`, the one row the other's, and no audit row of its own."""
    from gridapi.services import categories as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    with st.sessions() as session:  # another admin's category, inserted, not committed
        svc.create_category(session, {"code": "5309", "name": "燃气安全隐患"})
        r = send_while_uncommitted(
            engine,
            session,
            "categories",
            lambda: client.post("/api/v1/categories", json={"code": "5309", "name": "燃气"}),
            # It waits for the other in the look-up of the parent row its insert locked.
            waits_in="SELECT categories.",
        )
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["message"] == "Category 5309 exists."
    assert r.get_json()["errors"] == {"json": {"code": ["a category has this code"]}}
    with st.sessions() as session:
        names = session.scalars(select(Category.name).where(Category.code == "5309")).all()
        assert names == ["燃气安全隐患"]
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert "category.create" not in actions


def test_categories_created_later_are_listed_within_their_family(client, world, session):
    """A category created by an admin had display order 0, so the list put it first, under
    the first class: a subclass 5309 showed between 01 and 0101, where a picker that groups
    by the class above took it for one of 市容环境's. Each class is followed by its own
    subclasses now, and a new class comes after the families there are."""
    for body in (
        {"code": "5309", "name": "燃气安全隐患"},
        {"code": "58", "name": "新大类"},
        {"code": "5801", "name": "新小类"},
    ):
        r = client.post("/api/v1/categories", json=body)
        assert r.status_code == 201, r.get_json()
    codes = [c["code"] for c in client.get("/api/v1/categories").get_json()["items"]]
    assert codes[:2] == ["01", "0101"]
    fire = [c for c in codes if c.startswith("53")]
    assert codes[codes.index("53") : codes.index("53") + len(fire)] == fire
    assert fire[-1] == "5309"
    assert codes[-2:] == ["58", "5801"]
    for code in codes:  # every subclass after its own class and that class's other members
        if len(code) == 4:
            above = codes[: codes.index(code)]
            assert above[-1][:2] == code[:2], (code, above[-1])
    # A subclass stored with the old default order (0) is listed in its family all the same.
    session.execute(update(Category).where(Category.code == "5309").values(sort_order=0))
    session.commit()
    codes = [c["code"] for c in client.get("/api/v1/categories").get_json()["items"]]
    assert codes[:2] == ["01", "0101"]
    assert codes[codes.index("53") + 1] == "5309"


def test_characters_that_show_nothing_do_not_answer_or_label_an_attribute(client, world, session):
    """A required attribute answered with a zero-width space (or a byte-order mark) was
    answered, and an attribute labelled or offered as one was defined: a phone showed an
    empty label, an empty choice, a report with nothing in its required field."""
    form = [{"code": "note", "label": "备注", "type": "string", "required": True}]
    assert client.patch("/api/v1/categories/0101", json={"attributes": form}).status_code == 200
    for blank in ("\u200b", "\ufeff", " \u200b\u2060 "):
        r = _report(client, {"note": blank})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"]["json"]["attributes"] == {"note": ["required"]}
    assert _cases(session) == 0
    r = _report(client, {"note": "\u200b燃气 "})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attributes"] == {"note": "燃气"}
    for bad, key in (
        ({"code": "x", "label": "\u200b", "type": "string"}, "label"),
        (
            {"code": "x", "label": "类型", "type": "single_choice", "values": ["是", "\ufeff"]},
            "values",
        ),
    ):
        r = client.patch("/api/v1/categories/0101", json={"attributes": [bad]})
        assert r.status_code == 422, r.get_json()
        assert key in r.get_json()["errors"]["json"]["attributes"]["0"]
    session.rollback()
    assert session.get(Category, "0101").attributes == form


def test_choices_that_show_alike_are_one_choice(client, world, session):
    """ " 是" and "是" (or é precomposed and decomposed) were two choices that a picker showed
    alike; a hotline system that sent the one it saw was refused. Labels and choices are
    taken without blank ends now, and choices that show alike are refused as repeated."""
    form = [
        {
            "code": "mediated",
            "label": " 是否已调解 ",
            "type": "single_choice",
            "values": [" 是", "否 "],
        }
    ]
    r = client.patch("/api/v1/categories/0101", json={"attributes": form})
    assert r.status_code == 200, r.get_json()
    [stored] = r.get_json()["attributes"]
    assert (stored["label"], stored["values"]) == ("是否已调解", ["是", "否"])
    r = _report(client, {"mediated": "是"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attributes"] == {"mediated": "是"}
    for values in (["是", " 是"], ["\u00e9", "e\u0301"]):
        bad = [{"code": "x", "label": "类型", "type": "single_choice", "values": values}]
        r = client.patch("/api/v1/categories/0101", json={"attributes": bad})
        assert r.status_code == 422, r.get_json()
        assert r.get_json()["errors"]["json"]["attributes"] == {
            "0": {"values": ["a choice needs a list of distinct non-empty values"]}
        }
    session.rollback()
    assert session.get(Category, "0101").attributes[0]["values"] == ["是", "否"]


def _meanwhile(app, engine, change, send):  # type: ignore[no-untyped-def]
    """Answer ``send`` while another admin's ``change`` (of the category service) is
    written and not committed, committing it once the request waits for it."""
    from gridapi.services import categories as svc

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    with st.sessions() as session:
        change(svc, session)
        return send_while_uncommitted(
            engine, session, "categories", send, waits_in="SELECT categories."
        )


def _active(app, code: str) -> bool | None:  # type: ignore[no-untyped-def]
    with app.extensions["gridapi"].sessions() as session:
        return session.scalar(select(Category.is_active).where(Category.code == code))


def test_a_class_retired_meanwhile_takes_no_new_subclass(client, world, app, engine):
    """An admin retired class 58 while another created 5801 under it: each checked before
    the other wrote, and both committed, a live subclass under a retired class (reportable,
    offered by Open311). The subclass now waits for the class and is refused."""
    assert (
        client.post("/api/v1/categories", json={"code": "58", "name": "新大类"}).status_code == 201
    )
    r = _meanwhile(
        app,
        engine,
        lambda svc, s: svc.update_category(s, "58", {"is_active": False}),
        lambda: client.post("/api/v1/categories", json={"code": "5801", "name": "新小类"}),
    )
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["code"] == ["the class 58 is retired: reactivate it"]
    assert (_active(app, "58"), _active(app, "5801")) == (False, None)


def test_a_class_is_not_retired_under_a_subclass_created_meanwhile(client, world, app, engine):
    """The other order: 5801 created (not yet committed) while class 58 was retired; the
    retirement now waits for it and answers the 409 naming the subclass."""
    assert (
        client.post("/api/v1/categories", json={"code": "58", "name": "新大类"}).status_code == 201
    )
    r = _meanwhile(
        app,
        engine,
        lambda svc, s: svc.create_category(s, {"code": "5801", "name": "新小类"}),
        lambda: client.patch("/api/v1/categories/58", json={"is_active": False}),
    )
    assert r.status_code == 409, r.get_json()
    assert r.get_json()["errors"]["active_subclasses"] == ["5801"]
    assert (_active(app, "58"), _active(app, "5801")) == (True, True)


def test_a_subclass_is_not_activated_under_a_class_retired_meanwhile(client, world, app, engine):
    for body in ({"code": "58", "name": "新大类"}, {"code": "5801", "name": "新小类"}):
        assert client.post("/api/v1/categories", json=body).status_code == 201
    r = client.patch("/api/v1/categories/5801", json={"is_active": False})
    assert r.status_code == 200, r.get_json()
    r = _meanwhile(
        app,
        engine,
        lambda svc, s: svc.update_category(s, "58", {"is_active": False}),
        lambda: client.patch("/api/v1/categories/5801", json={"is_active": True}),
    )
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["is_active"] == ["the class 58 is retired"]
    assert (_active(app, "58"), _active(app, "5801")) == (False, False)


def test_an_oversized_attribute_payload_is_refused_at_once(client, world, session):
    """A multiple choice sent as a list of two million picks (16 MB, within the body limit)
    was checked item by item against the choices and taken after 37 seconds of the
    worker's time; an object of a hundred thousand unknown codes was echoed code by code.
    No choice has more than 200 values and no form more than 50 attributes: beyond those
    the report is refused with one message."""
    form = [
        {"code": "hazards", "label": "隐患", "type": "multiple_choice", "values": ["电", "气"]},
        {"code": "note", "label": "备注", "type": "string"},
    ]
    assert client.patch("/api/v1/categories/0101", json={"attributes": form}).status_code == 200
    r = _report(client, {"hazards": ["电"] * 201, "note": ["x"] * 201})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["attributes"] == {
        "hazards": ["at most 200 choices"],
        "note": ["must be text"],
    }
    r = _report(client, {f"unknown_{i}": 1 for i in range(51)})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["attributes"] == ["at most 50 attributes"]
    assert _cases(session) == 0
    r = _report(client, {"hazards": ["电", "气"] * 100})  # repeats within the bound: one each
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attributes"] == {"hazards": ["电", "气"]}


def test_a_change_sent_with_a_stale_etag_is_refused_not_overwriting(client, accounts, world):
    """Two admins editing one category: the last one's change undid the first's without a
    word. A change sent with the ETag of an older read is now a 412; one sent without
    If-Match is still taken, as before."""
    other = accounts.client("admin2", "admin")
    read = client.get("/api/v1/categories/0101")
    tag = read.headers["ETag"]
    assert tag == f'"0101-{read.get_json()["version"]}"'
    theirs = other.patch(
        "/api/v1/categories/0101", json={"handle_limit": 6}, headers={"If-Match": tag}
    )
    assert theirs.status_code == 200, theirs.get_json()
    assert theirs.headers["ETag"] != tag
    assert theirs.headers["ETag"] == other.get("/api/v1/categories/0101").headers["ETag"]
    mine = client.patch(
        "/api/v1/categories/0101", json={"handle_limit": 2}, headers={"If-Match": tag}
    )
    assert mine.status_code == 412
    body = mine.get_json()
    assert set(body) <= {"code", "status", "message", "errors"} and body["code"] == 412
    assert mine.headers["ETag"] == theirs.headers["ETag"]
    assert client.get("/api/v1/categories/0101").get_json()["handle_limit"] == 6
    # Read again, the change is taken; and without If-Match, the last writer still wins.
    fresh = client.patch(
        "/api/v1/categories/0101",
        json={"handle_limit": 2},
        headers={"If-Match": mine.headers["ETag"]},
    )
    assert fresh.status_code == 200 and fresh.get_json()["handle_limit"] == 2
    blind = other.patch("/api/v1/categories/0101", json={"handle_limit": 3})
    assert blind.status_code == 200 and blind.get_json()["handle_limit"] == 3
    actions = [e["action"] for e in client.get("/api/v1/audit").get_json()["items"]]
    assert actions.count("category.update") == 3


def test_a_date_attribute_takes_only_a_calendar_date_of_sane_years(client, world, session):
    """An ISO week ("2026W48"), the basic form ("20261130") and year 1 were taken as dates
    and stored as days nobody had written (2026-11-23 for the week)."""
    form = [{"code": "found_on", "label": "发现日期", "type": "date"}]
    assert client.patch("/api/v1/categories/0101", json={"attributes": form}).status_code == 200
    for bad in (
        "2026W48",
        "2026-W48-1",
        "20261130",
        "2026-11-30T08:00",
        "0001-01-01",
        "1899-12-31",
        "2101-01-01",
        "２０２６-11-30",
        "2026-02-30",
        20261130,
    ):
        r = _report(client, {"found_on": bad})
        assert r.status_code == 422, (bad, r.get_json())
        errors = r.get_json()["errors"]["json"]["attributes"]
        assert errors == {"found_on": ["must be a date (YYYY-MM-DD) of the years 1900-2100"]}
    assert _cases(session) == 0
    for good in ("2026-11-30", "1900-01-01", "2100-12-31"):
        r = _report(client, {"found_on": good})
        assert r.status_code == 201, (good, r.get_json())
        assert r.get_json()["attributes"] == {"found_on": good}


def test_a_number_attribute_keeps_to_its_bounds(client, world, session):
    """A count of people was taken as -5, 2.5 or 1e308: a number's definition may say its
    least and greatest values and that it counts (whole numbers only)."""
    form = [
        {"code": "people", "label": "人数", "type": "number", "minimum": 1, "integer": True},
        {"code": "depth", "label": "深度（米）", "type": "number", "minimum": 0, "maximum": 2.5},
    ]
    r = client.patch("/api/v1/categories/0101", json={"attributes": form})
    assert r.status_code == 200, r.get_json()
    shown = {a["code"]: a for a in r.get_json()["attributes"]}
    assert (shown["people"]["minimum"], shown["people"]["integer"]) == (1, True)
    assert (shown["depth"]["minimum"], shown["depth"]["maximum"]) == (0, 2.5)
    assert "maximum" not in shown["people"] and "integer" not in shown["depth"]
    for values, errors in (
        ({"people": 0}, {"people": ["must be at least 1"]}),
        ({"people": -5}, {"people": ["must be at least 1"]}),
        ({"people": 2.5}, {"people": ["must be a whole number"]}),
        (
            {"people": 1e308},
            {"people": ["a whole number of at most 9007199254740991 in magnitude"]},
        ),
        ({"depth": 2.6}, {"depth": ["must be at most 2.5"]}),
        ({"depth": -0.1, "people": 3}, {"depth": ["must be at least 0"]}),
    ):
        r = _report(client, values)
        assert r.status_code == 422, (values, r.get_json())
        assert r.get_json()["errors"]["json"]["attributes"] == errors, values
    assert _cases(session) == 0
    r = _report(client, {"people": 3.0, "depth": 2.5})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["attributes"] == {"people": 3, "depth": 2.5}


@pytest.mark.parametrize(
    ("definition", "errors"),
    [
        ({"type": "string", "minimum": 1}, {"minimum": ["minimum is only for numbers"]}),
        ({"type": "date", "integer": True}, {"integer": ["integer is only for numbers"]}),
        (
            {"type": "number", "minimum": 5, "maximum": 1},
            {"maximum": ["must not be less than minimum"]},
        ),
        (
            {"type": "number", "maximum": 1e300},
            {"maximum": ["must be a number of at most 9007199254740991 in magnitude"]},
        ),
        ({"type": "number", "minimum": "1"}, {"minimum": ["Not a valid number."]}),
        (  # whole numbers between 0.5 and 0.7: none; made required, no report could be made
            {"type": "number", "integer": True, "minimum": 0.5, "maximum": 0.7},
            {"integer": ["no whole number lies between minimum and maximum"]},
        ),
    ],
)
def test_bounds_that_cannot_be_are_refused_naming_them(client, world, definition, errors):
    attribute = {"code": "x", "label": "某项", **definition}
    r = client.patch("/api/v1/categories/0101", json={"attributes": [attribute]})
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"]["attributes"] == {"0": errors}
    assert client.get("/api/v1/categories/0101").get_json()["attributes"] == []
