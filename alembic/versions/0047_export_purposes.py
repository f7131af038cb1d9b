"""Export jobs keep no free-text purpose.

Before purposes were codes (``gridapi.purposes``), an unmasked export's job kept the purpose
as typed in ``export_jobs.purpose`` until its file was fetched, and the free text could name
residents. A job now keeps ``code`` or ``code reference`` (``purposes.stored_purpose``);
``summary_of_stored`` kept older free text out of the audit log, but not out of the table.
Every stored purpose that is not ``code`` or ``code reference`` (by the rule
``summary_of_stored`` reads them with) becomes ``other``, what a free-text purpose is
recorded as. NULL and an empty purpose (an export that stated none) stay.

The downgrade leaves the rows as they are: the free text is gone.

Revision ID: 0047
Revises: 0046
Create Date: 2026-12-01
"""

from __future__ import annotations

import re

import sqlalchemy as sa

from alembic import op

revision = "0047"
down_revision = "0046"
branch_labels = None
depends_on = None

# The codes and the reference rule of gridapi.purposes at this revision, kept here so that the
# migration does the same thing whatever the module becomes.
PURPOSES = (
    "case_handling",
    "identity_verification",
    "public_service",
    "subject_access",
    "legal_request",
    "emergency",
    "statistics",
    "audit",
    "other",
)
_REFERENCE = re.compile(r"[A-Za-z0-9][A-Za-z0-9/_.\-]{0,39}")
_ID_OR_PHONE = re.compile(r"[0-9]{15}|[0-9]{17}[0-9X]|1[3-9][0-9]{9}")

jobs = sa.table("export_jobs", sa.column("id", sa.Integer), sa.column("purpose", sa.String))


def is_code(stored: str) -> bool:
    """Return whether ``stored`` is ``code`` or ``code reference`` (``summary_of_stored``)."""
    code, _, reference = stored.partition(" ")
    if code not in PURPOSES:
        return False
    if not reference:
        return True
    return bool(_REFERENCE.fullmatch(reference)) and not _ID_OR_PHONE.fullmatch(reference.upper())


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(jobs.c.id, jobs.c.purpose).where(
            jobs.c.purpose.is_not(None), jobs.c.purpose != ""
        )
    ).all()
    free = [job_id for job_id, purpose in rows if not is_code(purpose)]
    for start in range(0, len(free), 500):
        conn.execute(
            sa.update(jobs).where(jobs.c.id.in_(free[start : start + 500])).values(purpose="other")
        )


def downgrade() -> None:
    pass  # the free text is gone for good
