"""Each year of the working calendar says whether it is the State Council's arrangement.

The seed carried 2027 as the fixed-date holidays only (元旦, 劳动节, 国庆节), since the
notice was not out when it was made: no 春节, 清明, 端午 or 中秋 and no 调休. Nothing said
so, and deadlines counted the Spring Festival's weekdays as working days. A year is now
``official`` or ``provisional``; a year without a row has no arrangement. The service warns
while a year deadlines may reach is not official, and an import or an admin makes it so.

Years already stored take the status the seed file gives them while their days are still
exactly the file's (on a new database, all of them), and 2027 is provisional while its days are
still exactly the stand-in first seeded; any other year with days (one an admin imported or
edited) is official.

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from pathlib import Path

import sqlalchemy as sa

from alembic import op
from gridapi.models.base import UTCDateTime

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None

SEED = Path(__file__).resolve().parents[2] / "gridapi" / "data" / "holidays_cn.json"
# What the seed of revision 0004 stored for 2027: its stand-in, holidays only.
STAND_IN_2027 = {
    ("holiday", date(2027, 1, 1)),
    ("holiday", date(2027, 5, 1)),
    ("holiday", date(2027, 5, 2)),
    ("holiday", date(2027, 10, 1)),
    ("holiday", date(2027, 10, 2)),
    ("holiday", date(2027, 10, 3)),
}
SOURCES = {
    "official": "Stored before years carried a status: the seed's State Council notice, or "
    "days an admin imported or set.",
    "provisional": "The seed's stand-in: only the fixed-date statutory holidays (元旦, 劳动节, "
    "国庆节); replace it with the State Council notice when it is published.",
}


def seeded() -> dict[int, tuple[str, set[tuple[str, date]]]]:
    """The seed file's years as it is now: their status and their days."""
    data = json.loads(SEED.read_text(encoding="utf-8"))
    years = {}
    for key, entry in data["years"].items():
        entries = {
            (kind, date.fromisoformat(text))
            for kind, name in (("holiday", "holidays"), ("workday", "workdays"))
            for text in entry.get(name, [])
        }
        years[int(key)] = (entry.get("status", "official"), entries)
    return years


def _status(year: int, entries: set[tuple[str, date]], seed: dict) -> tuple[str, str]:
    """Return the status and the source of a stored year."""
    if year in seed and entries == seed[year][1]:
        status = seed[year][0]
        if status == "official":
            return (
                status,
                "gridapi's seed: the State Council notice (gridapi/data/holidays_cn.json).",
            )
        return status, SOURCES[status]
    status = "provisional" if year == 2027 and entries == STAND_IN_2027 else "official"
    return status, SOURCES[status]


def upgrade() -> None:
    years = op.create_table(
        "calendar_years",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.CheckConstraint(
            "status IN ('official', 'provisional')", name=op.f("ck_calendar_years_status")
        ),
        sa.PrimaryKeyConstraint("year", name=op.f("pk_calendar_years")),
    )
    days = sa.table("calendar_days", sa.column("day", sa.Date), sa.column("kind", sa.String))
    stored: dict[int, set[tuple[str, date]]] = {}
    for day, kind in op.get_bind().execute(sa.select(days.c.day, days.c.kind)):
        if isinstance(day, str):  # SQLite hands back the text when read without the model
            day = date.fromisoformat(day)
        stored.setdefault(day.year, set()).add((kind, day))
    now = datetime.now(UTC)
    seed = seeded()
    rows = []
    for year, entries in sorted(stored.items()):
        status, source = _status(year, entries, seed)
        rows.append({"year": year, "status": status, "source": source, "updated_at": now})
    if rows:
        op.bulk_insert(years, rows)


def downgrade() -> None:
    op.drop_table("calendar_years")
