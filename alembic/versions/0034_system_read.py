"""system:read for the stock admin role: the background worker's backlog.

``GET /api/v1/health/jobs`` shows, job by job, what ``gridapi worker`` has not done yet
(gridapi.services.backlog). It counts over every county, so it is for the people who run
the system: the stock ``admin`` role gains ``system:read``. A county's own roles and
changes are left alone.

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

# Frozen copy of the permission the stock role gains here (see gridapi.security.permissions).
GRANTS = {"admin": ["system:read"]}


def _grant(grants: dict[str, list[str]], revoke: bool = False) -> None:
    roles = sa.table("roles", sa.column("name", sa.String), sa.column("permissions", sa.JSON))
    bind = op.get_bind()
    for name, current in bind.execute(sa.select(roles.c.name, roles.c.permissions)).all():
        extra = set(grants.get(name, []))
        if not extra:
            continue
        new = set(current) - extra if revoke else set(current) | extra
        bind.execute(roles.update().where(roles.c.name == name).values(permissions=sorted(new)))


def upgrade() -> None:
    _grant(GRANTS)


def downgrade() -> None:
    _grant(GRANTS, revoke=True)
