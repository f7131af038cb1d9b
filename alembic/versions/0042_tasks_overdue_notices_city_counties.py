"""Tasks: a task's notice of a kind is queued once; tasks given to a city move into a county.

``uq_notifications_task_id_kind``: what the unique (case_id, kind) is for a case's
notifications, for a task's (``task_id`` set; the rows of cases have it null, and the
constraint leaves them alone). The overdue job queues a task's overdue notices with ON
CONFLICT DO NOTHING on it, so a second run, or a second worker, queues nothing. The task
notices queued so far (``task_assigned:<task>:<version>:<user>``) are unique already.

A task given to a city (or a province) itself carried the city's code as its county
("320500") until the last stop; since then one is placed in the county under the city of
the lowest code (``tasks.county_of``, as a case taken in there without a grid near it).
0040 moved the campaigns and their items; the tasks given to a city by hand kept the
city's code, and the task export's 县区代码 and the county the tables are distributed by
named no county. They get the county a task given there now gets (a new version: it is
shown), and the notices queued for them their task's county. A city without counties
(东莞) keeps its own code, as it does now.

Revision ID: 0042
Revises: 0041
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0042"
down_revision = "0041"
branch_labels = None
depends_on = None


# The county of the lowest code under the task's city (digits 1-4) or province (1-2),
# valid today: ``tasks.county_of``.
_COUNTY_UNDER = (
    "(SELECT substr(min(r.code), 1, 6) FROM regions r WHERE r.level = 'county'"
    " AND substr(r.code, 1, CASE WHEN substr(tasks.region_code, 3, 2) = '00' THEN 2 ELSE 4 END)"
    " = substr(tasks.region_code, 1,"
    " CASE WHEN substr(tasks.region_code, 3, 2) = '00' THEN 2 ELSE 4 END)"
    " AND (r.valid_from IS NULL OR r.valid_from <= CURRENT_DATE)"
    " AND (r.valid_to IS NULL OR r.valid_to >= CURRENT_DATE))"
)
# A task whose region is a city or a province (digits 5-12 zero) and whose county is that
# region's own code.
_TASKS_IN_A_COUNTY = sa.text(
    f"UPDATE tasks SET county_code = {_COUNTY_UNDER}, version = version + 1"
    " WHERE region_code LIKE '____00000000' AND region_code <> '000000000000'"
    " AND county_code = substr(region_code, 1, 6)"
    f" AND {_COUNTY_UNDER} IS NOT NULL"
)
_TASK = "(SELECT t.county_code FROM tasks t WHERE t.id = notifications.task_id)"
_NOTICES_IN_THEIR_TASKS_COUNTY = sa.text(
    f"UPDATE notifications SET county_code = {_TASK}"
    f" WHERE task_id IS NOT NULL AND county_code <> {_TASK}"
)


def upgrade() -> None:
    op.execute(_TASKS_IN_A_COUNTY)
    op.execute(_NOTICES_IN_THEIR_TASKS_COUNTY)
    op.create_index(
        "uq_notifications_task_id_kind",
        "notifications",
        ["task_id", "kind"],
        unique=True,
        sqlite_where=sa.text("task_id IS NOT NULL"),
        postgresql_where=sa.text("task_id IS NOT NULL"),
    )


def downgrade() -> None:
    # Nothing to put back of the counties: the earlier code reads any county code, and a
    # task given to a city now gets the one this gave.
    op.drop_index("uq_notifications_task_id_kind", table_name="notifications")
