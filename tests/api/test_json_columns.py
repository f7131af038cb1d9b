"""JSON columns read back as written, on both engines.

A list of 50 cases parses about 150 JSON values; they are parsed with orjson
(``gridapi.jsonio.loads_stored``), which refuses integers beyond 64 bits. A column may hold
one (an attribute's number, an audit summary), and then the standard library parses it.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

BIG = 2**70 + 1  # beyond 64 bits


@pytest.mark.parametrize(
    "stored",
    [
        {"count": BIG, "list": [BIG, -BIG], "text": "网格"},
        {"count": 12, "f": 0.1, "none": None, "nested": {"a": [1, 2.5, "x"]}},
        {"count": [BIG]},
    ],
)
def test_a_json_column_reads_back_what_was_stored(session, stored):
    from gridapi.models import AuditEntry

    entry = AuditEntry(
        actor_type="system", actor_id="system:test", action="test.json", object_type="x"
    )
    entry.summary = stored  # as written, not cleaned as services.audit.record does
    session.add(entry)
    session.commit()
    session.expire_all()
    value = session.scalars(select(AuditEntry.summary).where(AuditEntry.id == entry.id)).one()
    assert value == stored
    assert json.dumps(value) == json.dumps(stored)  # ints stay ints, floats floats
