"""Fixtures shared by the API tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def world(factory):  # type: ignore[no-untyped-def]
    """The factories' regions (province to the township's two communities) and an active
    grid version tiling them; modules that need more override it."""
    factory.regions()
    factory.grid_version()
    return factory
