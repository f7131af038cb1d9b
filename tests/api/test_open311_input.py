"""Open311 posts whose input is ambiguous or cannot be kept as sent: 400, nothing stored."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

from gridapi.models import Case

from .test_auth import make_key
from .test_cases import center
from .test_open311 import BASE, PHONE, form, one_error, post, scalar, xml_error


@pytest.fixture
def key(app, world) -> str:  # type: ignore[no-untyped-def]
    return make_key(app, name="12345 热线", scopes=["cases:read", "cases:write"])["api_key"]


def reporter(session: Any, case_id: str) -> list[dict[str, Any]]:
    """Return the parties of a case as stored (answers show names masked)."""
    session.rollback()
    return session.get(Case, int(case_id)).parties


SINGLE = [
    "service_code",
    "lat",
    "long",
    "crs",
    "address_string",
    "description",
    "media_url",
    "first_name",
    "last_name",
    "phone",
    "email",
    "source",
    "api_key",
]


def post_pairs(anon_client: Any, pairs: list[tuple[str, str]], fmt: str = "json") -> Any:
    """Post a URL-encoded form of ``pairs`` as they are (a name may repeat)."""
    return anon_client.post(
        f"{BASE}/requests.{fmt}",
        data=urlencode(pairs),
        content_type="application/x-www-form-urlencoded",
    )


def full_form(key: str) -> dict[str, str]:
    return form(
        *center(0),
        crs="wgs84",
        media_url="https://img.example.com/1.jpg",
        first_name="三",
        last_name="张",
        phone=PHONE,
        email="zhangsan@example.com",
        source="hotline",
        api_key=key,
    )


@pytest.mark.parametrize("field", SINGLE)
def test_a_field_read_as_one_value_sent_twice_is_400_naming_it(anon_client, key, session, field):
    """The first of two values was taken and the other dropped: `lat` sent twice (a hotline
    form's hidden field and the map's) put the case wherever the first one said."""
    values = full_form(key)
    pairs = [*values.items(), (field, values[field])]
    message = one_error(post_pairs(anon_client, pairs), 400)
    assert message == f"{field} was sent 2 times: send it once"
    assert field in xml_error(post_pairs(anon_client, pairs, "xml"), 400)
    assert scalar(session, "SELECT count(*) FROM cases") == 0


@pytest.mark.parametrize("name", ["attribute[place_type]", "attribute[place_type][]"])
def test_an_attribute_of_one_value_sent_twice_is_400_naming_it(anon_client, key, session, name):
    """A singlevaluelist sent twice kept the last value and dropped the other: 出租房 and 企业
    became 企业, whichever the caller meant."""
    values = form(*center(0), service_code="5301", api_key=key)
    pairs = [*values.items(), ("attribute[hazard][]", "其他")]
    pairs += [(name, "出租房"), (name, "企业")]
    message = one_error(post_pairs(anon_client, pairs), 400)
    assert message == "attribute[place_type] was sent 2 times: send it once"
    assert "place_type" in xml_error(post_pairs(anon_client, pairs, "xml"), 400)
    assert scalar(session, "SELECT count(*) FROM cases") == 0
    # a multivaluelist takes several, under either name
    pairs = [*values.items(), ("attribute[hazard]", "其他"), ("attribute[hazard][]", "灭火器缺失")]
    r = post_pairs(anon_client, pairs + [("attribute[place_type]", "企业")])
    assert r.status_code == 201, r.get_data(as_text=True)
    session.rollback()
    case = session.get(Case, int(r.get_json()[0]["service_request_id"]))
    assert case.attributes == {"hazard": ["其他", "灭火器缺失"], "place_type": "企业"}


def test_fields_that_are_not_read_may_repeat_and_the_form_is_taken(anon_client, key, session):
    pairs = [*full_form(key).items(), ("device_id", "a"), ("device_id", "b")]
    pairs += [("jurisdiction_id", "x"), ("jurisdiction_id", "y"), ("account_id", "1")]
    r = post_pairs(anon_client, pairs)
    assert r.status_code == 201, r.get_data(as_text=True)
    assert scalar(session, "SELECT count(*) FROM cases") == 1


@pytest.mark.parametrize(
    ("first", "last"),
    [("丰" * 60, "张" * 41), ("John" * 25, "Smith"), ("a" * 101, "")],
)
def test_a_name_longer_than_a_party_holds_is_400_not_cut(anon_client, key, session, first, last):
    """The name was cut at 100 characters without a word."""
    values = form(*center(0), first_name=first, last_name=last)
    message = one_error(post(anon_client, key, values), 400)
    assert message == "first_name and last_name together are longer than 100 characters"
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_a_name_of_exactly_100_characters_is_kept_whole(anon_client, key, session):
    values = form(*center(0), first_name="丰" * 60, last_name="张" * 40)
    r = post(anon_client, key, values)
    assert r.status_code == 201, r.get_data(as_text=True)
    [party] = reporter(session, r.get_json()[0]["service_request_id"])
    assert party["name"] == "张" * 40 + "丰" * 60


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"first_name": PHONE}, "first_name"),
        ({"last_name": "320508 19900101 1234"}, "last_name"),
        ({"first_name": "张三", "last_name": "１３８１２３４５６７８"}, "last_name"),
        ({"first_name": "138 1234", "last_name": "5678"}, "first_name and last_name together"),
    ],
)
def test_a_name_that_holds_an_id_or_phone_number_is_400(anon_client, key, session, values, field):
    """A hotline that put the caller's number in the name field had it kept in clear,
    where names are kept (and the phone field's number is kept masked only)."""
    message = one_error(post(anon_client, key, form(*center(0), **values)), 400)
    assert message.startswith(f"{field} must not be an ID or phone number")
    assert scalar(session, "SELECT count(*) FROM cases") == 0
    assert (
        scalar(session, "SELECT count(*) FROM cases WHERE CAST(parties AS TEXT) LIKE '%1234%'") == 0
    )


@pytest.mark.parametrize(
    "email", ["zhangsan", "@example.com", "zhang@", "a b@example.com", "a@b@c"]
)
def test_an_email_that_is_not_an_address_is_400(anon_client, key, session, email):
    message = one_error(post(anon_client, key, form(*center(0), email=email)), 400)
    assert message == "email must be an e-mail address (name@example.com)"
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_a_plain_reporter_is_still_kept_as_before(anon_client, key, session):
    values = form(*center(0), first_name="John", last_name="Smith", email="j@example.org")
    r = post(anon_client, key, values)
    assert r.status_code == 201, r.get_data(as_text=True)
    assert reporter(session, r.get_json()[0]["service_request_id"]) == [
        {"role": "报告人", "name": "John Smith", "note": "邮箱 j***@example.org"}
    ]
