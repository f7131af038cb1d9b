"""What the spec says of `fields` (sparse fieldsets) is what an answer with it holds."""

from __future__ import annotations

from gridapi.spec import spec_dict

from .test_phone_friendly import report


def fields_description() -> str:
    op = spec_dict()["paths"]["/api/v1/cases/{case_id}"]["get"]
    (parameter,) = [p for p in op["parameters"] if p["name"] == "fields"]
    return parameter["description"]


def test_the_spec_says_required_members_are_required_only_without_fields():
    """The answer's schema marks members required that an answer with `fields` leaves out:
    a client validating answers against the spec refused every sparse one."""
    description = fields_description()
    assert "only the members named (and `id`) are present" in description
    assert "required only without `fields`" in description
    assert "A name the answer does not hold is ignored" in description


def test_an_answer_with_fields_holds_only_those_named_and_ignores_the_others(client, world):
    case = report(client)
    one = client.get(f"/api/v1/cases/{case['id']}?fields=status,no_such_member")
    assert one.status_code == 200
    assert one.get_json() == {"id": case["id"], "status": "reported"}
