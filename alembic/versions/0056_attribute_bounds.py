"""Number attributes take bounds: the seeded counts are whole and at least 1.

A category's number attribute took any finite number: 邻里纠纷's 当事人数 (parties_count) was
reported as -5, 2.5 and 1e308. A number attribute's definition may now say ``minimum``,
``maximum`` (inclusive) and ``integer`` (a count). The seeded ones get theirs, where an admin
has not defined any: parties_count of 5102 and workers of 5104 are whole numbers of at least
1, amount of 5104 (元) is at least 0. Such a category gets a new version and ``updated_at``
(phones download the categories again on their next sync). Reports made before keep their
values.

Revision ID: 0056
Revises: 0055
Create Date: 2026-12-02
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0056"
down_revision = "0055"
branch_labels = None
depends_on = None

#: (category, attribute) → the keys its definition gets.
BOUNDS: dict[tuple[str, str], dict[str, Any]] = {
    ("5102", "parties_count"): {"minimum": 1, "integer": True},
    ("5104", "workers"): {"minimum": 1, "integer": True},
    ("5104", "amount"): {"minimum": 0},
}
_KEYS = ("minimum", "maximum", "integer")

_categories = sa.table(
    "categories",
    sa.column("code", sa.String),
    sa.column("attributes", sa.JSON),
    sa.column("version", sa.Integer),
    sa.column("updated_at", UTCDateTime),
)


def _rewrite(change: Any) -> None:
    """Apply ``change(code, attribute)`` (returns the new definition, or None to keep it)
    to the seeded categories' attributes; a category changed gets a new version."""
    conn = op.get_bind()
    codes = sorted({code for code, _ in BOUNDS})
    rows = conn.execute(
        sa.select(_categories.c.code, _categories.c.attributes).where(_categories.c.code.in_(codes))
    ).all()
    for code, attributes in rows:
        changed = False
        new = []
        for attribute in attributes or []:
            replaced = change(code, attribute) if isinstance(attribute, dict) else None
            changed = changed or replaced is not None
            new.append(attribute if replaced is None else replaced)
        if changed:
            conn.execute(
                _categories.update()
                .where(_categories.c.code == code)
                .values(
                    attributes=new,
                    version=_categories.c.version + 1,
                    updated_at=datetime.now(UTC),
                )
            )


def upgrade() -> None:
    def bounded(code: str, attribute: dict[str, Any]) -> dict[str, Any] | None:
        bounds = BOUNDS.get((code, attribute.get("code")))
        if bounds is None or attribute.get("type") != "number":
            return None
        if any(attribute.get(key) is not None for key in _KEYS):
            return None  # an admin's own bounds stay
        return {**attribute, **bounds}

    _rewrite(bounded)


def downgrade() -> None:
    def unbounded(code: str, attribute: dict[str, Any]) -> dict[str, Any] | None:
        bounds = BOUNDS.get((code, attribute.get("code")))
        if bounds is None or any(attribute.get(k) != v for k, v in bounds.items()):
            return None
        return {k: v for k, v in attribute.items() if k not in _KEYS}

    _rewrite(unbounded)
