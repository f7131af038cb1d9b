"""Houses, households and residents have versions: ETags on every answer, If-Match honoured.

Two people correcting one household (a grid worker on a phone, the community office at a
desk) each read it and send their change; before versions the second silently undid the
first. If-Match is optional here (clients written before it keep working: the last writer
wins), and when sent it is enforced like a case's.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import text

from .test_case_workflow import race
from .test_register import A1, add_person, audit_rows, created, make_id, point

KINDS = ("house", "household", "person")
PATH = {"house": "/api/v1/houses", "household": "/api/v1/households", "person": "/api/v1/persons"}
# A change each kind accepts, two values of it (the second read back to tell who won).
CHANGE = {
    "house": ("address", "平江路2号", "平江路3号"),
    "household": ("type", "floating", "rental"),
    "person": ("current_address", "平江路5号", "平江路6号"),
}


# Long enough for every answer to be compressed (Flask-Compress leaves under 1 KiB alone).
LONG = "姑苏区平江街道平江路" * 30


@pytest.fixture
def objects(client, world) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    house = created(client.post("/api/v1/houses", json={"address": LONG, "location": point(0)}))
    hh = created(
        client.post("/api/v1/households", json={"number": "0001", "house_id": house["id"]})
    )
    person = add_person(client, hh["id"], relation="head", current_address=LONG)
    return {
        "house": house,
        "household": client.get(f"/api/v1/households/{hh['id']}").get_json(),
        "person": person,
    }


def url(kind: str, obj: dict) -> str:
    return f"{PATH[kind]}/{obj['id']}"


def patch(client, kind: str, obj: dict, value: str, if_match: str | None = None):  # type: ignore[no-untyped-def]
    headers = {"If-Match": if_match} if if_match is not None else {}
    return client.patch(url(kind, obj), json={CHANGE[kind][0]: value}, headers=headers)


def version_of(engine, kind: str, obj_id: int) -> int:  # type: ignore[no-untyped-def]
    table = {"house": "houses", "household": "households", "person": "persons"}[kind]
    with engine.connect() as conn:
        return conn.execute(
            text(f"SELECT version FROM {table} WHERE id = :i"), {"i": obj_id}
        ).scalar_one()


@pytest.mark.parametrize("kind", KINDS)
def test_answers_carry_the_version_and_an_etag_naming_it(client, engine, objects, kind):
    obj = objects[kind]
    assert obj["version"] == version_of(engine, kind, obj["id"])
    read = client.get(url(kind, obj))
    tag = read.headers["ETag"]
    assert tag.startswith(f'"{obj["id"]}-{obj["version"]}-'), tag
    changed = patch(client, kind, obj, CHANGE[kind][1], if_match=tag)
    assert changed.status_code == 200, changed.get_json()
    assert changed.get_json()["version"] == obj["version"] + 1
    assert changed.headers["ETag"].startswith(f'"{obj["id"]}-{obj["version"] + 1}-')
    assert changed.get_json()[CHANGE[kind][0]] == CHANGE[kind][1]
    assert version_of(engine, kind, obj["id"]) == obj["version"] + 1
    # the created answer has its ETag too
    new = {
        "house": {"address": "新房", "location": point(1)},
        "household": {"number": "0777", "grid": A1},
        "person": {"name": "李四", "id_number": make_id(seq="456"), "grid": A1},
    }[kind]
    created_answer = client.post(PATH[kind], json=new)
    body = created(created_answer)
    assert body["version"] == 1
    assert created_answer.headers["ETag"].startswith(f'"{body["id"]}-1-')


@pytest.mark.parametrize("kind", KINDS)
def test_a_stale_if_match_changes_nothing_and_says_what_is_current(client, engine, objects, kind):
    obj = objects[kind]
    field, first, second = CHANGE[kind]
    tag = client.get(url(kind, obj)).headers["ETag"]
    assert patch(client, kind, obj, first, if_match=tag).status_code == 200
    stale = patch(client, kind, obj, second, if_match=tag)
    assert stale.status_code == 412, stale.get_json()
    body = stale.get_json()
    assert body["code"] == 412 and "changed since you read it" in body["message"]
    assert stale.headers["ETag"] == f'"{obj["id"]}-{obj["version"] + 1}"'
    now = client.get(url(kind, obj)).get_json()
    assert now[field] == first and now["version"] == obj["version"] + 1
    # one change, one audit row: the refused one wrote nothing
    assert [row[1] for row in audit_rows(engine, f"{kind}.update")] == [str(obj["id"])]
    # the tag it was told is current works
    assert patch(client, kind, obj, second, if_match=stale.headers["ETag"]).status_code == 200


@pytest.mark.parametrize("kind", KINDS)
def test_if_match_as_phones_send_it(client, objects, kind):
    """As it came from a gzipped answer, bare, or built from the body's version; `*`; and
    no If-Match at all (the last writer wins, as before versions). A weak tag of the current
    version is no match (412): If-Match compares strongly."""
    obj = objects[kind]
    first, second = CHANGE[kind][1:]
    read = client.get(url(kind, obj), headers={"Accept-Encoding": "gzip"})
    assert read.headers["Content-Encoding"] == "gzip"
    gz_tag = read.headers["ETag"]
    assert gz_tag.endswith(':gzip"'), gz_tag
    v = obj["version"]
    for value, tag in [
        (first, gz_tag),
        (second, f"{obj['id']}-{v + 1}"),
        (first, "*"),
        (second, None),
    ]:
        r = patch(client, kind, obj, value, if_match=tag)
        assert r.status_code == 200, (tag, r.get_json())
    assert client.get(url(kind, obj)).get_json()["version"] == v + 4
    weak = patch(client, kind, obj, first, if_match=f'W/"{obj["id"]}-{v + 4}"')
    assert weak.status_code == 412, weak.get_json()
    assert "changed since you read it" in weak.get_json()["message"]
    assert weak.headers["ETag"] == f'"{obj["id"]}-{v + 4}"'
    # another object's tag at the same version is not this one's
    other = f'"{obj["id"] + 1000}-{v + 4}"'
    assert patch(client, kind, obj, first, if_match=other).status_code == 412
    assert client.get(url(kind, obj)).get_json()["version"] == v + 4
    # a change that changes nothing makes no new version
    assert patch(client, kind, obj, second, if_match=f'"{obj["id"]}-{v + 4}"').status_code == 200
    assert client.get(url(kind, obj)).get_json()["version"] == v + 4


def test_a_conditional_get_sees_a_new_member_and_if_match_still_passes(client, objects):
    """A household's answer shows its members: a new member changes its ETag (no 304 with the
    old one), but not its version, so a change to the household itself still goes through."""
    hh = objects["household"]
    first = client.get(url("household", hh))
    tag = first.headers["ETag"]
    assert client.get(url("household", hh), headers={"If-None-Match": tag}).status_code == 304
    add_person(client, hh["id"], name="王五", id_number=make_id(seq="789"), relation="spouse")
    again = client.get(url("household", hh), headers={"If-None-Match": tag})
    assert again.status_code == 200 and len(again.get_json()["members"]) == 2
    assert again.headers["ETag"] != tag and again.get_json()["version"] == hh["version"]
    assert patch(client, "household", hh, "rental", if_match=tag).status_code == 200


def test_moving_a_house_makes_earlier_tags_of_its_households_and_residents_stale(client, objects):
    hh, person = objects["household"], objects["person"]
    tags = {k: client.get(url(k, objects[k])).headers["ETag"] for k in ("household", "person")}
    moved = client.patch(url("house", objects["house"]), json={"location": point(1)})
    assert moved.status_code == 200, moved.get_json()
    for kind, obj in (("household", hh), ("person", person)):
        now = client.get(url(kind, obj)).get_json()
        assert now["grid"] != obj["grid"] and now["version"] == obj["version"] + 1
        assert patch(client, kind, obj, CHANGE[kind][1], if_match=tags[kind]).status_code == 412


def test_a_household_changing_house_makes_its_members_tags_stale(client, objects):
    hh, person = objects["household"], objects["person"]
    tag = client.get(url("person", person)).headers["ETag"]
    other = created(client.post(PATH["house"], json={"address": "平江路9号", "location": point(1)}))
    r = client.patch(url("household", hh), json={"house_id": other["id"]})
    assert r.status_code == 200, r.get_json()
    assert patch(client, "person", person, "平江路7号", if_match=tag).status_code == 412
    now = client.get(url("person", person)).get_json()
    assert now["house_id"] == other["id"] and now["current_address"] != "平江路7号"


@pytest.mark.parametrize("kind", KINDS)
def test_two_changes_with_one_etag_exactly_one_wins(accounts, engine, objects, kind):
    obj = objects[kind]
    field, first, second = CHANGE[kind]
    clients = [accounts.client("admin"), accounts.client("admin")]
    tag = clients[0].get(url(kind, obj)).headers["ETag"]
    values = iter([first, second])
    pairs = [(c, next(values)) for c in clients]

    def send(pair: tuple[Any, str]) -> Any:
        c, value = pair
        return patch(c, kind, obj, value, if_match=tag)

    answers = race(pairs, send)  # type: ignore[arg-type]
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 412], [(a.status_code, a.get_json()) for a in answers]
    winner = next(a.get_json() for a in answers if a.status_code == 200)
    now = clients[0].get(url(kind, obj)).get_json()
    assert now[field] == winner[field] and now["version"] == obj["version"] + 1
    assert version_of(engine, kind, obj["id"]) == obj["version"] + 1
    assert len(audit_rows(engine, f"{kind}.update")) == 1
