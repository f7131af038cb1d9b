"""An account as a caller sees it (``identity.user_view``): every member the schema shows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

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
        department_id=3,
        is_active=True,
        created_at=datetime(2026, 11, 30, tzinfo=UTC),
    )


def test_the_view_carries_every_member_of_the_accounts_schema():
    """``user_view`` lists the account's members beside ``UserSchema``: a member added to
    the schema and not to the view would be left out of every account answer, silently."""
    shown = UserSchema().dump(user_view(_user(), Scope.everything(), {3: "320508001000"}))
    assert set(shown) == set(UserSchema().fields), set(UserSchema().fields) - set(shown)
    assert shown["region_code"] == "320508001001" and shown["department_id"] == 3


def test_a_region_outside_the_scope_is_null():
    shown = UserSchema().dump(user_view(_user(), Scope.of_region("320508002000"), {}))
    assert shown["region_code"] is None and shown["username"] == "wang"


@pytest.mark.parametrize(
    ("department_region", "shown"),
    [
        ("320508002000", 3),  # the caller's township
        ("320508002001", 3),  # a community in it
        ("320508000000", 3),  # the county above it: its departments are the caller's to read
        ("320508001000", None),  # another township
        ("320509000000", None),  # another county
        (None, None),  # not known: never shown
    ],
)
def test_a_department_outside_the_scope_is_null(department_region, shown):
    """The department id told a township which office of another township or county an
    account on one of its grids belongs to, where that department answers it 404."""
    departments = {} if department_region is None else {3: department_region}
    view = user_view(_user(), Scope.of_region("320508002000"), departments)
    assert UserSchema().dump(view)["department_id"] == shown
