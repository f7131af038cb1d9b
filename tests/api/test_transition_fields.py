"""The fields of a transition: the `unit_of_time` a generated client sends with every action."""

from __future__ import annotations

from gridapi.spec import spec_dict

from .test_case_workflow import desk  # noqa: F401  (the fixture)


def test_another_action_takes_unit_of_time_days_as_not_sent(desk):  # noqa: F811
    """The spec declared `"default": "days"`, which generated clients send with every
    action: accept with it answered 422 "not a field of 'accept'"."""
    d = desk
    cid = d.report()["id"]
    accepted = d.act(d.office, cid, "accept", unit_of_time="days")
    assert accepted["status"] == "accepted"
    assert d.timeline(cid)[-1]["action"] == "accept"


def test_another_action_refuses_unit_of_time_hours(desk):  # noqa: F811
    d = desk
    cid = d.report()["id"]
    before = d.get(cid)
    r = d.post(d.office, cid, "accept", unit_of_time="hours")
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["errors"]["json"] == {
        "unit_of_time": ["not a field of 'accept' (only of request_extension)"]
    }
    assert d.get(cid) == before


def test_a_request_extension_without_unit_of_time_asks_for_working_days(desk):  # noqa: F811
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    asked = d.act(d.worker, cid, "request_extension", amount=2, comment="等配件")
    assert (asked["extension_request"]["amount"], asked["extension_request"]["unit"]) == (
        2,
        "days",
    )
    assert d.timeline(cid)[-1]["data"] == {"amount": 2, "unit": "days"}


def test_a_request_extension_keeps_the_unit_it_names(desk):  # noqa: F811
    d = desk
    cid = d.report()["id"]
    d.to_handling(cid)
    days = d.act(d.worker, cid, "request_extension", amount=1, unit_of_time="days", comment="a")
    assert days["extension_request"]["unit"] == "days"
    d.act(d.office, cid, "deny_extension", comment="不予延期")
    hours = d.act(d.worker, cid, "request_extension", amount=3, unit_of_time="hours", comment="b")
    assert hours["extension_request"]["unit"] == "hours"


def test_the_spec_declares_no_default_unit_of_time():
    """A declared default is what generated clients send; the service applies it instead."""
    transition = spec_dict()["components"]["schemas"]["Transition"]["properties"]["unit_of_time"]
    assert "default" not in transition
    assert "working days when not sent" in transition["description"]
