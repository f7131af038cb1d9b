"""Open311 GeoReport v2: discovery, services, service definitions, posting a request through
the native report path, reading requests back (keyed and public), tokens, errors; JSON and XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import text

from gridapi import clock
from gridapi.geo.geodesy import distance_m
from gridapi.services.open311 import snap

from ..factories import COMMUNITY_A, LAT0, LON0, STEP
from .test_auth import make_key
from .test_cases import center, report_body

BASE = "/open311/v2"
PHONE = "13812345678"


@pytest.fixture
def key(app, world) -> str:  # type: ignore[no-untyped-def]
    return make_key(app, name="12345 热线", scopes=["cases:read", "cases:write"])["api_key"]


@pytest.fixture
def public_read(app):  # type: ignore[no-untyped-def]
    app.extensions["gridapi"].settings.open311_public_read = True
    yield
    app.extensions["gridapi"].settings.open311_public_read = False


def form(lon: float, lat: float, **extra: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "service_code": "0101",
        "lat": repr(lat),
        "long": repr(lon),
        "description": "小区门口垃圾堆放",
        "address_string": "平江路 1 号",
    }
    values.update(extra)
    return values


def post(anon_client: Any, key: str | None, values: dict[str, Any], fmt: str = "json", **kw: Any):  # type: ignore[no-untyped-def]
    if key is not None:
        values = {**values, "api_key": key}
    return anon_client.post(f"{BASE}/requests.{fmt}", data=values, **kw)


def one_error(r: Any, status: int) -> str:
    assert r.status_code == status, r.get_data(as_text=True)
    body = r.get_json()
    assert isinstance(body, list) and len(body) == 1, body
    assert body[0]["code"] == status
    return body[0]["description"]


def scalar(session: Any, sql: str, **params: Any) -> Any:
    session.rollback()
    return session.execute(text(sql), params).scalar()


def xml_error(r: Any, status: int) -> str:
    """Return the description of a well-formed Open311 XML error answer."""
    assert r.status_code == status, r.get_data(as_text=True)
    root = ET.fromstring(r.data)
    assert root.tag == "errors" and root.findtext("error/code") == str(status)
    return root.findtext("error/description")


def other_digits(number: str, zero: str) -> str:
    """Return ``number`` written with the digits that start at ``zero`` (e.g. "٠", "０")."""
    return number.translate({ord("0") + d: ord(zero) + d for d in range(10)})


# --- discovery and services -------------------------------------------------------------------


def test_discovery_names_the_endpoint_and_formats(anon_client):
    r = anon_client.get(f"{BASE}/discovery.json")
    assert r.status_code == 200
    endpoint = r.get_json()["endpoints"][0]
    assert endpoint["url"].endswith("/open311/v2/")
    assert endpoint["specification"] == "http://wiki.open311.org/GeoReport_v2"
    assert set(endpoint["formats"]) == {"application/json", "text/xml"}
    root = ET.fromstring(anon_client.get(f"{BASE}/discovery.xml").data)
    assert root.tag == "discovery"
    assert [f.text for f in root.findall("endpoints/endpoint/formats/format")] == [
        "application/json",
        "text/xml",
    ]


def test_services_are_public_categories_in_json_and_xml(anon_client, world):
    r = anon_client.get(f"{BASE}/services.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    items = {s["service_code"]: s for s in r.get_json()}
    assert items["0101"] == {
        "service_code": "0101",
        "service_name": "暴露垃圾",
        "description": items["0101"]["description"],
        "metadata": False,
        "type": "realtime",
        "keywords": "市容环境,暴露垃圾",
        "group": "市容环境",
    }
    assert items["5301"]["metadata"] is True
    assert "01" not in items  # a class with subclasses is a group, not a service
    r = anon_client.get(f"{BASE}/services.xml")
    assert r.status_code == 200 and r.mimetype == "text/xml"
    root = ET.fromstring(r.data)
    assert root.tag == "services"
    xml_items = {s.findtext("service_code"): s for s in root.findall("service")}
    assert set(xml_items) == set(items)
    assert xml_items["5301"].findtext("metadata") == "true"
    assert xml_items["0101"].findtext("group") == "市容环境"


def test_a_service_definition_is_the_category_attribute_schema(anon_client, world):
    body = anon_client.get(f"{BASE}/services/5301.json").get_json()
    assert body["service_code"] == "5301"
    attrs = {a["code"]: a for a in body["attributes"]}
    assert attrs["hazard"]["datatype"] == "multivaluelist"
    assert attrs["hazard"]["required"] is True and attrs["hazard"]["variable"] is True
    assert {"key": "灭火器缺失", "name": "灭火器缺失"} in attrs["hazard"]["values"]
    assert attrs["place_type"]["datatype"] == "singlevaluelist"
    assert [a["order"] for a in body["attributes"]] == [1, 2]
    root = ET.fromstring(anon_client.get(f"{BASE}/services/5301.xml").data)
    assert root.tag == "service_definition"
    keys = [v.text for v in root.findall("attributes/attribute/values/value/key")]
    assert "电动车违规充电" in keys
    assert "9999" in one_error(anon_client.get(f"{BASE}/services/9999.json"), 404)
    r = anon_client.get(f"{BASE}/services/9999.xml")
    assert r.status_code == 404
    # a class with subclasses is no service: services.json leaves it out, and its
    # definition answered 200 with the class's (empty) attributes
    assert "01" in one_error(anon_client.get(f"{BASE}/services/01.json"), 404)
    error = ET.fromstring(r.data)
    assert error.tag == "errors" and error.findtext("error/code") == "404"
    assert "9999" in error.findtext("error/description")


def test_service_xml_replaces_characters_xml_cannot_carry(client, anon_client, world):
    # The admin API takes C0 controls in names and labels; services.xml and the definition
    # were not well-formed XML then (no parser could read them).
    r = client.post(
        "/api/v1/categories",
        json={
            "code": "5309",
            "name": "燃气\u0002安全",
            "attributes": [{"code": "supplier", "label": "供气\u0001单位\u001f", "type": "string"}],
        },
    )
    assert r.status_code == 201, r.get_json()
    definition = anon_client.get(f"{BASE}/services/5309.xml")
    assert definition.status_code == 200
    root = ET.fromstring(definition.data)
    # (a control character at either end of a label is taken off, as blank, when stored)
    assert root.findtext("attributes/attribute/description") == "供气\ufffd单位"
    services = ET.fromstring(anon_client.get(f"{BASE}/services.xml").data)
    names = {s.findtext("service_code"): s.findtext("service_name") for s in services}
    assert names["5309"] == "燃气\ufffd安全"
    # JSON carries the text as stored
    as_json = anon_client.get(f"{BASE}/services/5309.json").get_json()
    assert as_json["attributes"][0]["description"] == "供气\u0001单位"


def test_xml_errors_replace_characters_xml_cannot_carry(anon_client):
    # an unknown path is named in the error: its control character made the XML ill-formed
    assert "\ufffd" in xml_error(anon_client.get(f"{BASE}/no%01where.xml"), 404)
    from gridapi.resources.open311 import _xml

    body = [{"code": 400, "description": "a\x00b\x08c\ufffed\uffffe\ud800f\tg\nh"}]
    parsed = ET.fromstring(_xml("errors", body))
    assert parsed.findtext("error/description") == "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf\tg\nh"


# --- posting --------------------------------------------------------------------------------


def test_post_creates_a_routed_case_through_the_native_path(anon_client, key, client, session):
    values = form(
        *center(0),
        first_name="三",
        last_name="张",
        phone=PHONE,
        email="zhangsan@example.com",
        media_url="https://img.example.com/1.jpg",
    )
    r = post(anon_client, key, values)
    assert r.status_code == 201, r.get_data(as_text=True)
    [answer] = r.get_json()
    number = answer["service_request_id"]
    assert answer["case_number"].startswith("320508-")
    assert answer["case_number"] in answer["service_notice"]
    case_id = scalar(session, "SELECT id FROM cases WHERE id = :n", n=int(number))
    native = client.get(f"/api/v1/cases/{case_id}").get_json()
    assert native["source"] == "open311"
    assert native["grid"]["code"] == COMMUNITY_A + "001"
    assert native["status"] == "reported" and native["reporter"].startswith("client:")
    assert native["address"] == "平江路 1 号"
    assert native["parties"] == [
        {"role": "报告人", "name": "张*", "note": "电话 138****5678；邮箱 z***@example.com"}
    ]  # masked in every answer; GET /cases/{id}/parties reads 张三
    # The contact is kept masked only: the full number is nowhere in the case.
    row = scalar(
        session,
        "SELECT count(*) FROM cases WHERE CAST(parties AS TEXT) || description || address "
        "|| CAST(attributes AS TEXT) LIKE :p",
        p=f"%{PHONE}%",
    )
    assert row == 0
    assert scalar(session, "SELECT count(*) FROM cases WHERE CAST(parties AS TEXT) LIKE '%5678%'")
    assert scalar(session, "SELECT count(*) FROM case_events WHERE case_id = :i", i=case_id) == 1
    audit = scalar(
        session,
        "SELECT count(*) FROM audit_log WHERE action = 'case.report' AND object_id = :i",
        i=str(case_id),
    )
    assert audit == 1
    # Read back with the key: the whole request, media_url split from the description.
    got = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()
    assert got[0]["description"] == "小区门口垃圾堆放"
    assert got[0]["media_url"] == "https://img.example.com/1.jpg"
    assert PHONE not in anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").text


def test_a_description_of_the_longest_length_may_come_with_a_media_url(anon_client, key, client):
    """The media_url, kept on the description, counted against the description's 5000
    characters: a description of 4990 with a link was refused as "longer than 5000"."""
    description = "描" * 5000
    link = "https://img.example.com/1.jpg"
    r = post(anon_client, key, form(*center(0), description=description, media_url=link))
    assert r.status_code == 201, r.get_data(as_text=True)
    number = r.get_json()[0]["service_request_id"]
    [got] = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()
    assert got["description"] == description and got["media_url"] == link
    assert client.get(f"/api/v1/cases/{number}").status_code == 200
    longer = form(*center(0), description=description + "述", media_url=link)
    assert "description" in one_error(post(anon_client, key, longer), 400)


def test_post_answers_xml(anon_client, key, session):
    r = post(anon_client, key, form(*center(1)), fmt="xml")
    assert r.status_code == 201 and r.mimetype == "text/xml"
    root = ET.fromstring(r.data)
    assert root.tag == "service_requests"
    number = root.findtext("request/service_request_id")
    assert scalar(session, "SELECT count(*) FROM cases WHERE id = :n", n=int(number)) == 1


def test_a_retry_with_the_same_idempotency_key_creates_nothing(anon_client, key, session):
    values = form(*center(0))
    first = post(anon_client, key, values, headers={"Idempotency-Key": "hotline-77"})
    again = post(anon_client, key, values, headers={"Idempotency-Key": "hotline-77"})
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    as_xml = post(anon_client, key, values, "xml", headers={"Idempotency-Key": "hotline-77"})
    assert (
        ET.fromstring(as_xml.data).findtext("request/service_request_id")
        == (first.get_json()[0]["service_request_id"])
    )
    assert scalar(session, "SELECT count(*) FROM cases") == 1
    other = post(anon_client, key, form(*center(1)), headers={"Idempotency-Key": "hotline-77"})
    assert "different request" in one_error(other, 400)
    assert scalar(session, "SELECT count(*) FROM cases") == 1


def test_posting_needs_a_key_with_cases_write(app, anon_client, key, session):
    assert "api_key" in one_error(post(anon_client, None, form(*center(0))), 403)
    one_error(post(anon_client, "gk_nope_nope", form(*center(0))), 403)
    reader = make_key(app, name="reader", scopes=["cases:read"])["api_key"]
    assert "cases:write" in one_error(post(anon_client, reader, form(*center(0))), 403)
    r = post(anon_client, None, form(*center(0)), fmt="xml")
    assert r.status_code == 403
    assert ET.fromstring(r.data).findtext("error/code") == "403"
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_an_api_key_in_the_query_and_the_form_is_400(app, anon_client, key, session):
    """A key in the query and another in the form: the query's won and the form's was
    dropped (a read-only key in the form and a writing one in the query made a case), as
    if one key had been sent. Which client meant to act cannot be told: 400, as for any
    single-value field sent twice."""
    reader = make_key(app, name="reader", scopes=["cases:read"])["api_key"]
    for query, sent in ((key, reader), (reader, key), (key, key)):
        r = anon_client.post(
            f"{BASE}/requests.json?api_key={query}", data={**form(*center(0)), "api_key": sent}
        )
        assert one_error(r, 400) == "api_key was sent 2 times: send it once"
        r = anon_client.get(f"{BASE}/requests.json?api_key={query}&api_key={sent}")
        assert one_error(r, 400) == "api_key was sent 2 times: send it once"
    assert scalar(session, "SELECT count(*) FROM cases") == 0


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"lat": "north"}, "lat must be a number"),
        ({"lat": "95", "long": "120.6"}, "lat must be in -90..90"),
        ({"lat": "", "long": ""}, "address_string alone cannot be routed"),
        ({"long": ""}, "together"),
        ({"service_code": ""}, "service_code is required"),
        ({"crs": "wgs72"}, "crs must be one of"),
        ({"media_url": "javascript:alert(1)"}, "media_url"),
    ],
)
def test_bad_posts_are_400_in_open311_shape(anon_client, key, session, change, words):
    assert words in one_error(post(anon_client, key, {**form(*center(0)), **change}), 400)
    assert scalar(session, "SELECT count(*) FROM cases") == 0


@pytest.mark.parametrize(
    "field",
    [
        "description",
        "media_url",
        "first_name",
        "last_name",
        "phone",
        "email",
        "address_string",
        "service_code",
        "lat",
        "crs",
        "source",
        "jurisdiction_id",
        "device_id",
        "attribute[place_type]",
    ],
)
def test_nul_in_any_posted_field_is_400_naming_it(anon_client, key, session, field):
    # PostgreSQL cannot store U+0000 in text (500), SQLite stored it (201): now one 400
    values = form(*center(0), media_url="https://img.example.com/1.jpg")
    values[field] = (values.get(field) or "x") + "\x00b"
    message = one_error(post(anon_client, key, values), 400)
    assert field in message and "NUL" in message
    assert field in xml_error(post(anon_client, key, values, fmt="xml"), 400)
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_nul_in_a_field_name_or_the_key_is_refused(anon_client, key, session):
    values = {**form(*center(0)), "attribute[a\x00b]": "x"}
    assert "NUL" in one_error(post(anon_client, key, values), 400)
    one_error(post(anon_client, key + "\x00", form(*center(0))), 403)
    one_error(anon_client.get(f"{BASE}/requests.json?api_key=gk_%00%00%00%00%00%00%00%00_x"), 403)
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_unknown_service_is_404_and_attributes_are_checked(anon_client, key, client, session):
    one_error(post(anon_client, key, form(*center(0), service_code="9999")), 404)
    one_error(post(anon_client, key, form(*center(0), service_code="01")), 404)
    missing = one_error(post(anon_client, key, form(*center(0), service_code="5301")), 400)
    assert "hazard" in missing and "required" in missing
    values = {
        **form(*center(0), service_code="5301"),
        "attribute[hazard][]": ["电动车违规充电", "灭火器缺失"],
        "attribute[place_type]": "出租房",
    }
    r = post(anon_client, key, values)
    assert r.status_code == 201, r.get_data(as_text=True)
    number = r.get_json()[0]["service_request_id"]
    case_id = scalar(session, "SELECT id FROM cases WHERE id = :n", n=int(number))
    native = client.get(f"/api/v1/cases/{case_id}").get_json()
    assert native["attributes"] == {
        "hazard": ["电动车违规充电", "灭火器缺失"],
        "place_type": "出租房",
    }
    bad = {**values, "attribute[place_type]": "宫殿"}
    assert "place_type" in one_error(post(anon_client, key, bad), 400)


def _text_number_forms(value: str) -> list[str]:
    """Return ``value`` (ASCII digits) as the text forms float() and int() read but an
    Open311 number is not: underscores, full-width and Arabic-Indic digits, padding."""
    return [
        value[0] + "_" + value[1:],
        other_digits(value, "０"),
        other_digits(value, "٠"),
        f" {value}",
        f"{value} ",
        f"{value}\n",
    ]


@pytest.mark.parametrize("name", ["lat", "long"])
def test_coordinates_must_be_plain_ascii_numbers(anon_client, key, session, name):
    values = form(*center(0))
    for bad in [*_text_number_forms(values[name]), "nan", "inf", "-Infinity", "0x1f"]:
        message = one_error(post(anon_client, key, {**values, name: bad}), 400)
        assert f"{name} must be a" in message, bad
    assert scalar(session, "SELECT count(*) FROM cases") == 0
    # a sign and an exponent are still numbers
    whole, _, fraction = values[name].partition(".")
    exponent = f"+{whole}{fraction}e-{len(fraction)}"
    assert post(anon_client, key, {**values, name: exponent}).status_code == 201


def test_paging_must_be_plain_ascii_whole_numbers(anon_client, key):
    post(anon_client, key, form(*center(0)))
    url = f"{BASE}/requests.json?api_key={key}"
    for name in ("page", "page_size"):
        for bad in [*_text_number_forms("10"), "1.0", "1e1"]:
            message = one_error(anon_client.get(f"{url}&{name}={quote(bad)}"), 400)
            assert f"{name} must be a whole number" in message, bad
    assert len(_numbers(anon_client.get(f"{url}&page_size=%2B10&page=1"))) == 1


def test_number_attributes_must_be_plain_ascii_numbers(client, anon_client, key, world):
    r = client.post(
        "/api/v1/categories",
        json={
            "code": "5309",
            "name": "燃气安全隐患",
            "attributes": [{"code": "floors", "label": "楼层数", "type": "number"}],
        },
    )
    assert r.status_code == 201, r.get_json()
    values = form(*center(0), service_code="5309")
    for bad in [*_text_number_forms("12"), "nan"]:
        message = one_error(post(anon_client, key, {**values, "attribute[floors]": bad}), 400)
        assert "floors" in message and "number" in message, bad
    r = post(anon_client, key, {**values, "attribute[floors]": "12"})
    assert r.status_code == 201, r.get_data(as_text=True)
    case_id = r.get_json()[0]["service_request_id"]
    assert client.get(f"/api/v1/cases/{case_id}").get_json()["attributes"] == {"floors": 12}
    # whole numbers past what JSON holds exactly: 500 on PostgreSQL past 64 bits, a case on
    # SQLite its own GET could not show; 2**63 - 1 went through a float and became 2**63
    for big in ("99999999999999999999999", "9223372036854775807", "-9007199254740992"):
        message = one_error(post(anon_client, key, {**values, "attribute[floors]": big}), 400)
        assert "floors" in message and "9007199254740991" in message, big
    r = post(anon_client, key, {**values, "attribute[floors]": "1e20"})  # a number, not whole
    case_id = r.get_json()[0]["service_request_id"]
    assert client.get(f"/api/v1/cases/{case_id}").get_json()["attributes"] == {"floors": 1e20}
    body = {**report_body(*center(0), category="5309"), "attributes": {"floors": 2**64}}
    native = client.post("/api/v1/cases", data=json.dumps(body), content_type="application/json")
    # natively, the JSON reader takes a whole number past 64 bits as a float: stored, shown
    assert native.status_code == 201, native.get_json()
    shown = client.get(f"/api/v1/cases/{native.get_json()['id']}")
    assert shown.status_code == 200 and shown.get_json()["attributes"] == {"floors": 2.0**64}


def test_a_date_attribute_sent_as_a_datetime_is_the_county_s_date(client, anon_client, key):
    """The date part of an Open311 datetime was kept as sent: 2026-11-27T20:00:00Z is the
    28th in the county (UTC+8), as JavaScript's toISOString() writes it, and was stored as
    the 27th."""
    r = client.post(
        "/api/v1/categories",
        json={
            "code": "5308",
            "name": "施工扰民",
            "attributes": [{"code": "since", "label": "开始日期", "type": "date"}],
        },
    )
    assert r.status_code == 201, r.get_json()
    values = form(*center(0), service_code="5308")
    for sent, stored in [
        ("2026-11-27T20:00:00Z", "2026-11-28"),
        ("2026-11-27T20:00:00.000Z", "2026-11-28"),
        ("2026-11-28T01:00:00-05:00", "2026-11-28"),
        ("2026-11-28T22:00:00-05:00", "2026-11-29"),
        ("2026-11-28T07:30:00+08:00", "2026-11-28"),
        ("2026-11-28T07:30:00", "2026-11-28"),  # no offset: the county's own time
        ("2026-11-28", "2026-11-28"),
    ]:
        r = post(anon_client, key, {**values, "attribute[since]": sent})
        assert r.status_code == 201, (sent, r.get_data(as_text=True))
        case_id = r.get_json()[0]["service_request_id"]
        attributes = client.get(f"/api/v1/cases/{case_id}").get_json()["attributes"]
        assert attributes == {"since": stored}, sent
    # A date attribute lies in the years 1900-2100: year 9999 (past the last day in UTC+8,
    # so judged as sent) was stored.
    # An ISO-week datetime was read by fromisoformat and stored as the date it names.
    for bad in ("2026-13-01", "9999-12-31T23:00:00-05:00", "2026W48", "2026-W48-1T08:00"):
        message = one_error(post(anon_client, key, {**values, "attribute[since]": bad}), 400)
        assert "since" in message, bad


def test_gcj02_points_are_converted_before_routing(anon_client, key, client, session):
    from gridapi.geo.crs import wgs84_to_gcj02

    lon, lat = center(0)
    glon, glat = wgs84_to_gcj02(lon, lat)
    r = post(anon_client, key, form(glon, glat, crs="gcj02"))
    number = r.get_json()[0]["service_request_id"]
    got = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()[0]
    assert distance_m(got["long"], got["lat"], lon, lat) < 1


# --- reading --------------------------------------------------------------------------------


def _utc(value: Any) -> datetime:
    """Return a timestamp column read back raw (text on SQLite) as an aware UTC datetime."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _reject(client: Any, session: Any, number: str) -> None:
    case_id = scalar(session, "SELECT id FROM cases WHERE id = :n", n=int(number))
    etag = client.get(f"/api/v1/cases/{case_id}").headers["ETag"]
    r = client.post(
        f"/api/v1/cases/{case_id}/transitions",
        json={"action": "reject", "comment": "不属于受理范围"},
        headers={"If-Match": etag},
    )
    assert r.status_code == 200, r.get_json()


def _numbers(r: Any) -> list[str]:
    assert r.status_code == 200, r.get_data(as_text=True)
    return [item["service_request_id"] for item in r.get_json()]


def test_requests_filter_page_and_map_states(anon_client, key, client, session):
    numbers = []
    for i, code in enumerate(["0101", "0101", "0103"]):
        r = post(anon_client, key, form(*center(i % 2), service_code=code))
        numbers.append(r.get_json()[0]["service_request_id"])
    _reject(client, session, numbers[0])
    url = f"{BASE}/requests.json?api_key={key}"
    assert _numbers(anon_client.get(url)) == numbers[::-1]  # newest first
    closed = anon_client.get(f"{url}&status=closed").get_json()
    assert [c["service_request_id"] for c in closed] == [numbers[0]]
    assert closed[0]["status"] == "closed"
    assert closed[0]["status_notes"] == "不予受理 (rejected)"
    assert closed[0]["gridapi_status"] == "rejected"
    assert closed[0]["gridapi_status_name"] == "不予受理"
    assert _numbers(anon_client.get(f"{url}&status=open")) == numbers[:0:-1]
    assert _numbers(anon_client.get(f"{url}&status=open,closed")) == numbers[::-1]
    assert _numbers(anon_client.get(f"{url}&service_code=0103")) == [numbers[2]]
    assert _numbers(anon_client.get(f"{url}&service_code=01")) == numbers[::-1]
    ids = f"{numbers[0]},{numbers[2]}"
    assert sorted(_numbers(anon_client.get(f"{url}&service_request_id={ids}"))) == sorted(
        [numbers[0], numbers[2]]
    )
    # service_request_id overrides the other arguments, paging included: asked for by id,
    # the cases past the first page were left out without a word
    every = ",".join(numbers)
    for paging in ("page_size=2", "page_size=1&page=2", "page=5"):
        got = _numbers(anon_client.get(f"{url}&service_request_id={every}&{paging}"))
        assert got == numbers[::-1], paging
    assert _numbers(anon_client.get(f"{url}&page_size=2")) == numbers[:0:-1]
    assert _numbers(anon_client.get(f"{url}&page_size=2&page=2")) == [numbers[0]]
    assert _numbers(anon_client.get(f"{url}&page_size=2&page=3")) == []
    future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat(timespec="seconds")
    assert _numbers(anon_client.get(f"{url}&start_date={future}")) == []
    assert len(_numbers(anon_client.get(f"{url}&start_date={past.replace('+', '%2B')}"))) == 3
    assert _numbers(anon_client.get(f"{url}&end_date={past.replace('+', '%2B')}")) == []
    assert _numbers(anon_client.get(f"{url}&updated_after={future}")) == []
    assert len(_numbers(anon_client.get(f"{url}&updated_before={future}"))) == 3
    assert len(_numbers(anon_client.get(f"{url}&jurisdiction_id=320508"))) == 3
    assert _numbers(anon_client.get(f"{url}&jurisdiction_id=320505")) == []
    assert len(_numbers(anon_client.get(f"{url}&jurisdiction_id=320508000000"))) == 3
    # a township's code is no county's: it was read as its county (a filter silently wider
    # than asked for)
    for township in ("320508001000", "320508000001"):
        message = one_error(anon_client.get(f"{url}&jurisdiction_id={township}"), 400)
        assert "jurisdiction_id" in message
    for bad in ("status=pending", "start_date=yesterday", "page=0", "page_size=5000"):
        one_error(anon_client.get(f"{url}&{bad}"), 400)
    # dates Python cannot take to UTC (or that no column holds) were 500s
    for name, value in (
        ("start_date", "9999-12-31T23:59:59-12:00"),
        ("updated_before", "0001-01-01T00:00:00%2B14:00"),
        ("end_date", "1850-01-01"),
    ):
        assert name in one_error(anon_client.get(f"{url}&{name}={value}"), 400)


def test_a_request_carries_the_mapped_fields(anon_client, key, session):
    r = post(anon_client, key, form(*center(0)))
    number = r.get_json()[0]["service_request_id"]
    [got] = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()
    assert got["status"] == "open" and got["status_notes"] == "已上报 (reported)"
    assert got["service_code"] == "0101" and got["service_name"] == "暴露垃圾"
    assert got["agency_responsible"] == "平江社区"
    assert got["jurisdiction_id"] == "320508"
    assert got["requested_datetime"].endswith("+08:00")
    # Before filing, the deadline of the current stage is the acceptance deadline.
    accept_due = scalar(session, "SELECT accept_due_at FROM cases WHERE id = :i", i=int(number))
    expected = datetime.fromisoformat(got["expected_datetime"])
    assert expected.utcoffset() == timedelta(hours=8)
    assert abs(expected - _utc(accept_due)) < timedelta(seconds=1)
    assert got["address"] == "平江路 1 号"
    assert (got["long"], got["lat"]) == pytest.approx(center(0))
    root = ET.fromstring(anon_client.get(f"{BASE}/requests/{number}.xml?api_key={key}").data)
    assert root.tag == "service_requests"
    assert root.findtext("request/service_request_id") == number
    assert root.findtext("request/status") == "open"
    assert root.findtext("request/overdue") == "false"
    case_number = got["case_number"]
    tokens = anon_client.get(f"{BASE}/tokens/{case_number}.json?api_key={key}").get_json()
    assert tokens == [{"service_request_id": number, "token": case_number}]
    # The readable case number works wherever a service_request_id does.
    by_number = anon_client.get(f"{BASE}/requests/{case_number}.json?api_key={key}")
    assert by_number.get_json() == [got]
    one_error(anon_client.get(f"{BASE}/requests/320508-19990101-0001.json?api_key={key}"), 404)
    one_error(anon_client.get(f"{BASE}/tokens/nope.json?api_key={key}"), 404)


def test_only_ascii_digits_are_a_request_id(anon_client, key):
    # "²".isdigit() is true and int() refused it (500); int() read "١" and "１" as 1: the
    # case of another id was answered
    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    url = f"{BASE}/requests.json?api_key={key}"
    for value in ("abc", "²", other_digits(number, "٠"), other_digits(number, "０")):
        quoted = quote(value)
        one_error(anon_client.get(f"{BASE}/requests/{quoted}.json?api_key={key}"), 404)
        xml_error(anon_client.get(f"{BASE}/requests/{quoted}.xml?api_key={key}"), 404)
        one_error(anon_client.get(f"{BASE}/tokens/{quoted}.json?api_key={key}"), 404)
        assert _numbers(anon_client.get(f"{url}&service_request_id={quoted}")) == []
    assert _numbers(anon_client.get(f"{url}&service_request_id={number},%C2%B2")) == [number]
    # past a case id's 32 bits: 400 on PostgreSQL (and the list's other ids unanswered)
    one_error(anon_client.get(f"{BASE}/requests/2147483648.json?api_key={key}"), 404)
    one_error(anon_client.get(f"{BASE}/tokens/2147483648.json?api_key={key}"), 404)
    assert _numbers(anon_client.get(f"{url}&service_request_id={number},2147483648")) == [number]


def test_nul_in_a_request_id_matches_nothing(anon_client, key):
    # PostgreSQL refused to compare text holding U+0000 (500); SQLite found nothing
    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    for value in ("%00", f"{number}%00", "320508-20261128-0001%00"):
        one_error(anon_client.get(f"{BASE}/requests/{value}.json?api_key={key}"), 404)
        xml_error(anon_client.get(f"{BASE}/requests/{value}.xml?api_key={key}"), 404)
        one_error(anon_client.get(f"{BASE}/tokens/{value}.json?api_key={key}"), 404)
    url = f"{BASE}/requests.json?api_key={key}&service_request_id="
    assert _numbers(anon_client.get(f"{url}{number}%00")) == []
    assert _numbers(anon_client.get(f"{url}{number}%00,{number}")) == [number]


def test_stored_control_characters_are_replaced_in_xml_only(client, anon_client, key, world):
    # the native API takes C0 controls in text; the XML answer was not well-formed then
    description = "ctrl \u0001\u000b\u001f char"
    r = client.post("/api/v1/cases", json=report_body(*center(0), description=description))
    assert r.status_code == 201, r.get_json()
    case_id = r.get_json()["id"]
    for path in (f"requests/{case_id}.xml", "requests.xml"):
        answer = anon_client.get(f"{BASE}/{path}?api_key={key}")
        assert answer.status_code == 200
        root = ET.fromstring(answer.data)
        assert root.findtext("request/description") == "ctrl \ufffd\ufffd\ufffd char"
    [got] = anon_client.get(f"{BASE}/requests/{case_id}.json?api_key={key}").get_json()
    assert got["description"] == description


def test_carriage_returns_survive_xml(client, anon_client, key, world):
    """An XML parser reads a raw CR (and CR LF) as LF: a description typed on Windows came
    back from the XML answer other than it was stored (and than the JSON answer gives)."""
    description = "第一行\r\n第二行\r第三行"
    r = client.post("/api/v1/cases", json=report_body(*center(0), description=description))
    assert r.status_code == 201, r.get_json()
    case_id = r.get_json()["id"]
    answer = anon_client.get(f"{BASE}/requests/{case_id}.xml?api_key={key}")
    assert ET.fromstring(answer.data).findtext("request/description") == description
    [got] = anon_client.get(f"{BASE}/requests/{case_id}.json?api_key={key}").get_json()
    assert got["description"] == description


def test_a_value_the_database_refuses_is_400(anon_client, key, monkeypatch):
    # the last guard: a DataError (a value out of range, text the engine cannot hold) the
    # checks missed is bad input, not a 500
    from sqlalchemy.exc import DataError

    from gridapi.services import open311

    def refused(*args: Any) -> None:
        raise DataError("SELECT …", {}, ValueError("invalid byte sequence"))

    monkeypatch.setattr(open311, "find_request", refused)
    assert "stored" in one_error(anon_client.get(f"{BASE}/requests/1.json?api_key={key}"), 400)
    assert "stored" in xml_error(anon_client.get(f"{BASE}/requests/1.xml?api_key={key}"), 400)


def test_reading_needs_a_key_unless_public_read_is_on(app, anon_client, key):
    post(anon_client, key, form(*center(0)))
    assert "api_key" in one_error(anon_client.get(f"{BASE}/requests.json"), 403)
    one_error(anon_client.get(f"{BASE}/requests.json?api_key=gk_bad_key"), 403)
    writer = make_key(app, name="writer", scopes=["cases:write"])["api_key"]
    assert "cases:read" in one_error(anon_client.get(f"{BASE}/requests.json?api_key={writer}"), 403)
    # services stay public whatever the setting
    assert anon_client.get(f"{BASE}/services.json").status_code == 200


def test_public_answers_carry_no_personal_data_and_snapped_points(
    anon_client, key, public_read, world
):
    lon, lat = center(0)
    values = form(lon, lat, first_name="三", last_name="张", phone=PHONE, email="z@example.com")
    values["description"] = f"张三 {PHONE} 家门口垃圾堆放"
    values["media_url"] = "https://img.example.com/face.jpg"
    number = post(anon_client, key, values).get_json()[0]["service_request_id"]
    nearby = post(anon_client, key, form(lon + 0.00005, lat + 0.00005)).get_json()[0]
    r = anon_client.get(f"{BASE}/requests.json")
    assert r.status_code == 200
    text_body = r.get_data(as_text=True)
    for secret in (PHONE, "张三", "z@example.com", "平江路", "face.jpg", "垃圾堆放"):
        assert secret not in text_body
    items = {i["service_request_id"]: i for i in r.get_json()}
    public = items[number]
    assert "description" not in public and "address" not in public and "media_url" not in public
    assert public["status"] == "open" and public["agency_responsible"] == "平江社区"
    assert (public["long"], public["lat"]) != (lon, lat)
    assert distance_m(public["long"], public["lat"], lon, lat) < 50
    # Points of one ~50 m cell land on the same spot (unless the cell edge runs between).
    expected = snap(lon + 0.00005, lat + 0.00005, 50.0)
    assert (
        items[nearby["service_request_id"]]["long"],
        items[nearby["service_request_id"]]["lat"],
    ) == expected
    xml_text = anon_client.get(f"{BASE}/requests/{number}.xml").get_data(as_text=True)
    assert PHONE not in xml_text and "<description" not in xml_text
    # A key still gets the full answer.
    keyed = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()[0]
    assert keyed["description"].startswith("张三")
    assert (keyed["long"], keyed["lat"]) == pytest.approx((lon, lat))


def test_sensitive_categories_are_not_public(anon_client, key, public_read, world):
    r = post(anon_client, key, form(*center(0), service_code="5101"))
    assert r.status_code == 201, r.get_data(as_text=True)
    number = r.get_json()[0]["service_request_id"]
    assert number not in _numbers(anon_client.get(f"{BASE}/requests.json"))
    one_error(anon_client.get(f"{BASE}/requests/{number}.json"), 404)
    assert number in _numbers(anon_client.get(f"{BASE}/requests.json?api_key={key}"))


def test_the_public_grid_is_configurable(app, anon_client, key, public_read):
    app.extensions["gridapi"].settings.open311_round_m = 500.0
    lon, lat = LON0 + 0.3 * STEP, LAT0 + 0.3 * STEP
    post(anon_client, key, form(lon, lat))
    [item] = anon_client.get(f"{BASE}/requests.json").get_json()
    assert 20 < distance_m(item["long"], item["lat"], lon, lat) < 500
    assert (item["long"], item["lat"]) == snap(lon, lat, 500.0)


def test_unknown_paths_and_methods_answer_in_open311_shape(anon_client):
    one_error(anon_client.get(f"{BASE}/nothing.json"), 404)
    r = anon_client.get(f"{BASE}/nothing.xml")
    assert r.status_code == 404 and ET.fromstring(r.data).tag == "errors"
    one_error(anon_client.delete(f"{BASE}/requests.json"), 405)
    one_error(anon_client.post(f"{BASE}/services.json"), 405)
    # a 405 says what is allowed (RFC 9110); the Open311 answer dropped the header
    allowed = anon_client.delete(f"{BASE}/requests.json").headers.get("Allow", "")
    assert {"GET", "POST"} <= {m.strip() for m in allowed.split(",")}
    # OPTIONS names what is answered (it listed PUT, PATCH and DELETE, which are 405)
    options = anon_client.options(f"{BASE}/requests.json")
    assert options.status_code == 204 and "Content-Type" not in options.headers
    assert {m.strip() for m in options.headers["Allow"].split(",")} == {
        "GET",
        "HEAD",
        "POST",
        "OPTIONS",
    }
    assert {
        m.strip() for m in anon_client.options(f"{BASE}/services.json").headers["Allow"].split(",")
    } == {"GET", "HEAD", "OPTIONS"}
    one_error(anon_client.options(f"{BASE}/nothing.json"), 404)


def test_the_base_path_without_its_slash_is_an_open311_404_not_an_html_redirect(anon_client):
    """``/open311/v2`` (the discovery URL without its slash) answered a 308 with an HTML page:
    a client reading JSON errors met HTML, and a POST was sent elsewhere."""
    for method in ("get", "post", "delete"):
        r = getattr(anon_client, method)(BASE)
        assert "html" not in r.content_type, (method, r.get_data(as_text=True))
        assert "not an Open311 GeoReport v2 resource" in one_error(r, 404)
        assert "Location" not in r.headers


def test_a_json_post_is_told_to_send_a_form(anon_client, key, session):
    """A JSON body was answered "service_code is required" (or "api_key is required")."""
    r = anon_client.post(f"{BASE}/requests.json?api_key={key}", json=form(*center(0)))
    message = one_error(r, 415)
    assert "form-encoded" in message
    assert scalar(session, "SELECT count(*) FROM cases") == 0


def test_dates_are_w3c_datetimes_and_nothing_else(anon_client, key):
    """2026-W48, 20261130 and 2026-11-28T09 were taken; 2026-11 and 2026 refused."""
    url = f"{BASE}/requests.json?api_key={key}&start_date="
    for good in ("2026", "2026-11", "2026-11-28", "2026-11-28T09:30%2B08:00"):
        assert anon_client.get(url + good).status_code == 200, good
    for bad in ("2026-W48", "20261130", "2026-11-28T09", "2026-13"):
        assert "W3C" in one_error(anon_client.get(url + bad), 400), bad


def test_a_range_that_ends_before_it_starts_is_400_naming_it(anon_client, key):
    """start_date after end_date answered [] (as if nothing had been filed), where the native
    list answers 422: a consumer with the dates swapped saw an empty city."""
    url = f"{BASE}/requests.json?api_key={key}"
    post(anon_client, key, form(*center(0)))
    message = one_error(anon_client.get(f"{url}&start_date=2026-12-01&end_date=2026-11-01"), 400)
    assert "end_date" in message and "start_date" in message
    message = one_error(
        anon_client.get(f"{url}&updated_after=2026-12-01&updated_before=2026-11-30"), 400
    )
    assert "updated_before" in message and "updated_after" in message
    # One day given as both ends is that whole day, not an empty range.
    today = clock.today().isoformat()
    assert len(anon_client.get(f"{url}&start_date={today}&end_date={today}").get_json()) == 1


def test_snap_is_stable_within_a_cell():
    a = snap(120.6051, 31.3051, 50.0)
    assert snap(*a, 50.0) == a
    assert distance_m(*a, 120.6051, 31.3051) < 36  # at most half the cell's diagonal


def test_a_key_reads_only_its_own_area(app, anon_client, key):
    from ..factories import COMMUNITY_B

    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    other = make_key(app, name="B app", scopes=["cases:read"], scope_region=COMMUNITY_B)
    url = f"{BASE}/requests/{number}.json?api_key={other['api_key']}"
    one_error(anon_client.get(url), 404)  # out of scope answers like a request that does not exist
    assert _numbers(anon_client.get(f"{BASE}/requests.json?api_key={other['api_key']}")) == []


def test_public_read_is_configured_from_the_environment():
    from gridapi.config import Settings

    assert Settings.from_env({}).open311_public_read is False
    assert Settings.from_env({"GRIDAPI_OPEN311_PUBLIC_READ": "true"}).open311_public_read is True
    assert Settings.from_env({"GRIDAPI_OPEN311_PUBLIC_READ": "Off"}).open311_public_read is False
    assert Settings.from_env({"GRIDAPI_OPEN311_ROUND_M": "100"}).open311_round_m == 100.0
    with pytest.raises(ValueError, match="GRIDAPI_OPEN311_PUBLIC_READ"):
        Settings.from_env({"GRIDAPI_OPEN311_PUBLIC_READ": "maybe"})


def test_the_unit_holding_a_request_is_named_as_it_is_called_today(anon_client, key, client):
    """A community renamed from tomorrow (a new period with effective_from) was named by its
    new name at once: the names of regions the routing snapshot does not serve were read
    from the period without an end, which is the planned one."""
    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    tomorrow = clock.today() + timedelta(days=1)
    r = client.patch(
        f"/api/v1/regions/{COMMUNITY_A}",
        json={"name": "新平江社区", "effective_from": tomorrow.isoformat()},
    )
    assert r.status_code == 200, r.get_json()
    [got] = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()
    assert got["agency_responsible"] == "平江社区"


def test_a_case_its_category_makes_visible_again_is_updated_after(
    anon_client, key, public_read, client, engine
):
    """A category made sensitive and back left its cases' updated_datetime as it was: a
    consumer polling with updated_after never learnt that a case had become visible again
    (or, keyed, that it had become sensitive)."""
    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    long_ago = datetime.now(UTC) - timedelta(days=2)
    with engine.begin() as conn:
        conn.execute(text("UPDATE cases SET updated_at = :t"), {"t": long_ago})
    since = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    url = f"{BASE}/requests.json?updated_after={since}"
    assert _numbers(anon_client.get(url)) == []
    assert client.patch("/api/v1/categories/0101", json={"sensitive": True}).status_code == 200
    assert _numbers(anon_client.get(url)) == []  # hidden from the public
    assert client.patch("/api/v1/categories/0101", json={"sensitive": False}).status_code == 200
    assert _numbers(anon_client.get(url)) == [number]


def _encoded(values: dict[str, Any], encoding: str, raw: bool = False) -> bytes:
    """A form body in ``encoding``: percent-escaped (as browsers send), or raw bytes."""
    if raw:
        return b"&".join(
            k.encode(encoding) + b"=" + str(v).encode(encoding) for k, v in values.items()
        )
    return urlencode(values, encoding=encoding).encode("ascii")


@pytest.mark.parametrize("raw", [False, True], ids=["escaped", "raw"])
@pytest.mark.parametrize("label", ["GBK", "gb2312", "GB18030"])
def test_a_gbk_form_is_read_in_its_declared_charset(anon_client, key, label, raw):
    """Werkzeug reads forms as UTF-8 only: a hotline system posting GBK had its
    description stored as mojibake (escaped bytes), or lost the field (raw bytes, 400
    "service_code is required" for a form that had one)."""
    values = {**form(*center(0), description="路灯不亮，请派人维修"), "api_key": key}
    r = anon_client.post(
        f"{BASE}/requests.json",
        data=_encoded(values, "gbk", raw),
        content_type=f"application/x-www-form-urlencoded; charset={label}",
    )
    assert r.status_code == 201, r.get_data(as_text=True)
    number = r.get_json()[0]["service_request_id"]
    [got] = anon_client.get(f"{BASE}/requests/{number}.json?api_key={key}").get_json()
    assert got["description"] == "路灯不亮，请派人维修"
    assert got["address"] == "平江路 1 号"


@pytest.mark.parametrize(
    ("content_type", "words"),
    [
        ("application/x-www-form-urlencoded", "not UTF-8"),
        ("application/x-www-form-urlencoded; charset=klingon", "klingon"),
        # codecs of bytes, not of text: a 500 ("'hex' is not a text encoding")
        ("application/x-www-form-urlencoded; charset=hex", "hex"),
        ("application/x-www-form-urlencoded; charset=base64", "base64"),
        ("application/x-www-form-urlencoded; charset=rot13", "rot13"),
    ],
)
def test_a_form_not_in_its_charset_is_400_and_stores_nothing(
    anon_client, key, session, content_type, words
):
    """GBK posted without its charset was read as UTF-8 with replacement characters and
    stored: now it is refused, naming how to declare it."""
    before = scalar(session, "SELECT count(*) FROM cases")
    values = {**form(*center(0), description="路灯不亮"), "api_key": key}
    r = anon_client.post(
        f"{BASE}/requests.json", data=_encoded(values, "gbk"), content_type=content_type
    )
    assert words in one_error(r, 400)
    assert "charset" in one_error(r, 400)
    assert scalar(session, "SELECT count(*) FROM cases") == before


def test_a_minute_or_second_as_an_upper_bound_takes_in_the_whole_of_it(anon_client, key, engine):
    """Answers give times to the second, but an upper bound was its first instant: a
    request answered as ``requested_datetime`` 09:30:15 was left out of
    ``end_date=…09:30:15`` (it was filed at 09:30:15.5), as of ``…09:30``, and so of
    ``updated_before``. A minute or a second as an upper bound now ends with it."""
    number = post(anon_client, key, form(*center(0))).get_json()[0]["service_request_id"]
    at = datetime(2026, 11, 28, 1, 30, 15, 500000, tzinfo=UTC)  # 09:30:15.5 in Shanghai
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE cases SET reported_at = :t, updated_at = :t WHERE id = :id"),
            {"t": at, "id": int(number)},
        )
    url = f"{BASE}/requests.json?api_key={key}"
    [got] = anon_client.get(f"{url}&service_request_id={number}").get_json()
    shown = got["requested_datetime"]
    assert shown == got["updated_datetime"] == "2026-11-28T09:30:15+08:00"
    for bound in (shown, "2026-11-28T09:30+08:00", "2026-11-28T01:30:15Z", "2026-11-28T09:30"):
        q = quote(bound)
        assert _numbers(anon_client.get(f"{url}&start_date={q}&end_date={q}")) == [number], bound
        assert _numbers(anon_client.get(f"{url}&updated_after={q}&updated_before={q}")) == [
            number
        ], bound
    # a fraction is an exact instant, and the bound before the second still leaves it out
    for bound in ("2026-11-28T09:30:15.4+08:00", "2026-11-28T09:30:14+08:00"):
        q = quote(bound)
        assert _numbers(anon_client.get(f"{url}&start_date=2026&end_date={q}")) == [], bound
        assert _numbers(anon_client.get(f"{url}&updated_before={q}")) == [], bound


def test_a_day_month_or_year_alone_as_an_upper_bound_takes_in_the_whole_period(anon_client, key):
    """``end_date=<today>`` meant today's midnight: a query for one day
    (``start_date=D&end_date=D``) found nothing, and the requests filed today were left
    out of ``end_date=<today>``. A day, month or year alone as ``end_date`` or
    ``updated_before`` now ends with its period."""
    r = post(anon_client, key, form(*center(0)))
    number = r.get_json()[0]["service_request_id"]
    url = f"{BASE}/requests.json?api_key={key}"
    [got] = anon_client.get(f"{url}&service_request_id={number}").get_json()
    # the day it was filed on, in GRIDAPI_TIMEZONE (not "now": midnight may fall between)
    filed = datetime.fromisoformat(got["requested_datetime"])
    today = filed.astimezone(ZoneInfo("Asia/Shanghai")).date()
    for bound in (today.isoformat(), today.isoformat()[:7], today.isoformat()[:4]):
        assert _numbers(anon_client.get(f"{url}&start_date={today}&end_date={bound}")) == [
            number
        ], bound
        assert _numbers(anon_client.get(f"{url}&updated_before={bound}")) == [number], bound
    yesterday = (today - timedelta(days=1)).isoformat()
    assert _numbers(anon_client.get(f"{url}&end_date={yesterday}")) == []
    assert _numbers(anon_client.get(f"{url}&updated_before={yesterday}")) == []
    # a lower bound still starts at its period's first instant
    assert _numbers(anon_client.get(f"{url}&start_date={today.isoformat()[:4]}")) == [number]
