"""What the audit log keeps of a stated purpose: ID numbers never as references."""

from __future__ import annotations

import pytest

from gridapi.purposes import is_id_number_written_apart, reference_problem, summary_of_stored


@pytest.mark.parametrize(
    "reference",
    ["110105-19491231-002X", "110105-491231-002", "110105 491231 002", "1101.0549.1231.002"],
)
def test_an_id_number_written_apart_is_recognised_whatever_its_generation(reference):
    assert is_id_number_written_apart(reference)
    if " " in reference:
        return  # no reference (1-40 letters, digits, '/', '_', '.' or '-') was stored so
    # A job queued before such references were refused: its download's row does not copy it.
    assert summary_of_stored(f"legal_request {reference}") == {
        "purpose_code": "legal_request",
        "reference": "(given)",
    }


@pytest.mark.parametrize(
    "reference",
    [
        "110105491231002",  # no separators: refused as such (reference_problem)
        "110105-491331-002",  # month 13
        "990105-491231-002",  # no province 99
        "2026-1130-0001234",
        "GA-2026/77",
    ],
)
def test_other_references_are_not_taken_for_id_numbers(reference):
    assert not is_id_number_written_apart(reference)


@pytest.mark.parametrize(
    "reference",
    [
        "13951110001",
        "139-5111-0001",
        "TEL13951110001",  # a number inside a longer text: only whole ones were refused
        "13951110001A",
        "8613951110001",
        "TEL-139-5111-0001",
        "ID320508196203150317",
        "320508196203150317A",
        "320508196203150317-1",
        "ID-320508-19620315-0317",
        "12345202612030001",  # 17 digits in a row: no office writes its number so
    ],
)
def test_a_reference_holding_a_phone_or_id_number_is_refused(reference):
    assert reference_problem(reference) is not None


@pytest.mark.parametrize(
    "reference",
    [
        "GA-2026/77",
        "SAR-1",
        "320508-20261130-0001",  # a case number (its ID-number shape is checked against cases)
        "2026",
        "12345-20261203-0001",  # a hotline ticket written with its dashes
        "1390000",  # seven digits: no phone number
        "2026.12.03-13951",
    ],
)
def test_an_office_s_reference_is_taken(reference):
    assert reference_problem(reference) is None
