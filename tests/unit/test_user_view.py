"""An account as a caller sees it (``identity.user_view``): every member the schema shows."""

from __future__ import annotations

from datetime import UTC, datetime

from gridapi.models import User
from gridapi.schemas.identity import UserSchema
from gridapi.scope import Scope
from gridapi.services.identity import user_view


def _user() -> User:
    return User(
        id=7,
        username="wang",
        display_name="王网格员",
        phone_masked="138****5678",
        role_name="grid_worker",
        scope_region_code=None,
        region_code="320508001001",
        department_id=None,
        is_active=True,
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
    )


def test_the_view_carries_every_member_of_the_accounts_schema():
    """``user_view`` lists the account's members beside ``UserSchema``: a member added to
    the schema and not to the view would be left out of every account answer, silently."""
    shown = UserSchema().dump(user_view(_user(), Scope.everything()))
    assert set(shown) == set(UserSchema().fields), set(UserSchema().fields) - set(shown)
    assert shown["region_code"] == "320508001001"


def test_a_region_outside_the_scope_is_null():
    shown = UserSchema().dump(user_view(_user(), Scope.of_region("320508002000")))
    assert shown["region_code"] is None and shown["username"] == "wang"
