"""A username is unique regardless of case: a unique index on lower(username).

Sign-in matches usernames regardless of case and creating an account refuses a name taken
in another case, but the unique index was on the name as written: two creates of "Alice"
and "alice" at once (PostgreSQL) both succeeded, and sign-in as either then reached
whichever the database returned first. The index ``uq_users_username_lower`` makes the
database refuse the second, on both engines (SQLite indexes expressions too).

A database that already holds names equal but for case cannot take the index. The upgrade
then changes nothing and stops (``gridapi.migrations.MigrationRefused``, which ``gridapi db
upgrade`` prints), listing each group of names with the accounts' ids and the command that
renames one: ``gridapi users rename --username Alice --to alice2``. Rename all but one of
each group, then run ``gridapi db upgrade`` again. The old case-sensitive constraint
``uq_users_username`` stays (the new index implies it).

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op
from gridapi.migrations import MigrationRefused

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None


def clashes(conn: sa.Connection) -> list[list[tuple[int, str]]]:
    """Groups of accounts (id, username) whose usernames are equal but for case."""
    users = sa.table("users", sa.column("id", sa.Integer), sa.column("username", sa.String))
    rows = conn.execute(sa.select(users.c.id, users.c.username).order_by(users.c.id)).all()
    groups: dict[str, list[tuple[int, str]]] = {}
    for user_id, username in rows:
        # lower() of both engines folds ASCII only; usernames are ASCII (the service checks).
        groups.setdefault(username.lower(), []).append((user_id, username))
    return [group for group in groups.values() if len(group) > 1]


def message(groups: list[list[tuple[int, str]]]) -> str:
    lines = [
        "Migration 0031 makes usernames unique regardless of case, but these accounts' "
        "usernames differ only in case (nothing was changed):"
    ]
    for group in groups:
        lines.append("  " + ", ".join(f"{name!r} (id {user_id})" for user_id, name in group))
    keep, other = groups[0][0][1], groups[0][1][1]
    lines.append(
        "Rename all but one of each group, e.g. "
        f"`gridapi users rename --username {other} --to {other.lower()}2` "
        f"(keeping {keep!r}), then run `gridapi db upgrade` again."
    )
    return "\n".join(lines)


def upgrade() -> None:
    groups = clashes(op.get_bind())
    if groups:
        raise MigrationRefused(message(groups))
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)


def downgrade() -> None:
    op.drop_index("uq_users_username_lower", table_name="users")
