"""What the audit log keeps of a stated purpose: ID numbers never as references."""

from __future__ import annotations

import pytest

from gridapi.purposes import is_id_number_written_apart, summary_of_stored


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
