"""Fixtures shared by the API tests."""

from __future__ import annotations

import pytest

from ..snapshots import Snapshot, State, WorldKey, take, world_key


@pytest.fixture
def world(factory, app, settings, engine_name):  # type: ignore[no-untyped-def]
    """The factories' regions (province to the township's two communities) and an active
    grid version tiling them; modules that need more override it.

    Built through the HTTP API (regions import, grid version, activation) by the first test
    of a process for an engine and settings; later tests get its rows back (tests/snapshots.py):
    ~40 ms less set-up for each of the ~2,000 tests that use it."""
    engine = app.extensions["gridapi"].engine
    key = world_key(engine_name, settings)
    built = _WORLDS.get(key)
    if built is not None and built.restore(engine):
        return factory
    before = State.read(engine) if built is None else None
    factory.regions()
    factory.grid_version()
    if before is not None:
        _WORLDS[key] = take(engine, before)
    return factory


_WORLDS: dict[WorldKey, Snapshot] = {}
