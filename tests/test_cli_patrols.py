"""`gridapi patrols recompute` on both engines: patrols stored with the figures of older code
(GPS jitter summed into their length, grids its scatter fell in) get those of the current
code from their raw points, in batches, audited; a dry run and a second run change nothing.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner, Result
from shapely.geometry import LineString
from sqlalchemy import delete, select, text

from gridapi.cli import main
from gridapi.geo.geodesy import metres_per_degree
from gridapi.geo.shapes import to_db
from gridapi.models import Patrol, PatrolPoint
from gridapi.services.patrols import track_length_m

from .factories import COMMUNITY_A, COMMUNITY_B, LAT0, LON0, STEP

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1, B2 = COMMUNITY_B + "001", COMMUNITY_B + "002"
FIGURES = ("length_m", "grids_crossed", "track", "point_count", "outlier_count", "duration_s")


@pytest.fixture
def cli(settings: Any, database_url: str) -> Any:
    def run(*args: str) -> Result:
        env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
        result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    return run


def ok(response: Any, status: int = 200) -> Any:
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def jittered_walk(began: datetime, col0: float, col1: float, seed: int) -> list[dict]:
    """Five minutes standing in the middle of column ``col0`` (a fix every 5 s, about 8 m of
    scatter), then ten minutes walking to the middle of ``col1`` (a fix every 10 s)."""
    rng = random.Random(seed)
    lat = LAT0 + 0.5 * STEP
    kx, ky = metres_per_degree(lat)
    points = []

    def fix(t: datetime, lon: float) -> None:
        points.append(
            {
                "t": t.isoformat(),
                "lon": round(lon + rng.gauss(0, 8) / kx, 7),
                "lat": round(lat + rng.gauss(0, 8) / ky, 7),
                "accuracy_m": 10,
            }
        )

    t0 = began + timedelta(minutes=1)
    for i in range(60):
        fix(t0 + timedelta(seconds=5 * i), LON0 + (col0 + 0.5) * STEP)
    for i in range(1, 61):
        lon = LON0 + (col0 + 0.5 + (col1 - col0) * i / 60) * STEP
        fix(t0 + timedelta(seconds=300 + 10 * i), lon)
    return points


def walked(accounts: Any, name: str, grid: str, col0: float, col1: float, seed: int) -> dict:
    """A patrol of worker ``name`` (on ``grid``'s roster), walked and ended; its detail."""
    phone = accounts.client(name, "grid_worker", grids=[grid])
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    patrol = ok(phone.post("/api/v1/patrols", json={"started_at": began.isoformat()}), 201)
    points = jittered_walk(began, col0, col1, seed)
    ok(phone.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": points}))
    end = {"ended_at": (began + timedelta(minutes=20)).isoformat()}
    ok(phone.post(f"/api/v1/patrols/{patrol['id']}/end", json=end))
    return {"phone": phone, "points": points, **ok(phone.get(f"/api/v1/patrols/{patrol['id']}"))}


def as_recorded_before(session: Any, patrol: dict, grids: list[str]) -> float:
    """Give the patrol the figures the code before walked_line stored: the line through
    every fix, its summed length (jitter and all), and ``grids`` (where the scatter fell)."""
    coords = np.array([(p["lon"], p["lat"]) for p in patrol["points"]])
    old = round(track_length_m(coords[:, 0], coords[:, 1]), 1)
    row = session.get(Patrol, patrol["id"])
    row.length_m, row.grids_crossed, row.track = old, grids, to_db(LineString(coords))
    session.commit()
    return old


def view(patrol: dict) -> dict:
    return ok(patrol["phone"].get(f"/api/v1/patrols/{patrol['id']}"))


def recompute_audits(engine: Any) -> list[tuple]:
    with engine.connect() as conn:
        found = conn.execute(
            text(
                "SELECT actor_id, object_type, region_code, summary FROM audit_log "
                "WHERE action = 'patrol.recompute' ORDER BY id"
            )
        ).all()
    return [(a, o, r, json.loads(s) if isinstance(s, str) else s) for a, o, r, s in found]


def test_recompute_gives_old_patrols_the_current_figures_once(
    cli, factory, accounts, session, engine
):
    factory.regions()
    factory.grid_version()
    first = walked(accounts, "worker1", A1, 0.0, 1.0, seed=1)
    second = walked(accounts, "worker2", B1, 2.0, 3.0, seed=2)
    thinned = walked(accounts, "worker3", A2, 1.0, 1.4, seed=3)
    assert first["grids_crossed"] == [A1, A2] and second["grids_crossed"] == [B1, B2]
    old_first = as_recorded_before(session, first, [A1, A2, B1])
    old_second = as_recorded_before(session, second, [B1, A2, B2])
    old_thinned = as_recorded_before(session, thinned, [A2, A1])
    assert old_first > first["length_m"] + 300  # five minutes standing: hundreds of metres
    row = session.get(Patrol, thinned["id"])
    row.thinned_at = datetime.now(UTC)
    session.execute(delete(PatrolPoint).where(PatrolPoint.patrol_id == thinned["id"]))
    session.commit()
    versions = {p["id"]: view(p)["version"] for p in (first, second, thinned)}

    # a dry run reports and writes nothing, not even an audit row
    dry = cli("patrols", "recompute", "--dry-run").output
    assert "patrols: 2 recomputed, 2 would change; 1 thinned, kept as they were" in dry
    before, after = old_first + old_second, first["length_m"] + second["length_m"]
    assert f"length: {before:.1f} m before, {after:.1f} m after" in dry
    assert view(first)["length_m"] == old_first and recompute_audits(engine) == []

    # a region's patrols only, one per transaction
    out = cli("patrols", "recompute", "--region", COMMUNITY_A, "--batch", "1").output
    assert "patrols: 1 recomputed, 1 changed; 1 thinned" in out
    now_first = view(first)
    assert {k: now_first[k] for k in FIGURES} == {k: first[k] for k in FIGURES}
    assert now_first["version"] == versions[first["id"]] + 1
    assert view(second)["length_m"] == old_second
    assert view(second)["grids_crossed"] == [B1, A2, B2]

    # the rest; a thinned patrol keeps its figures (no raw points to recompute from)
    out = cli("patrols", "recompute", "--batch", "2").output
    assert "patrols: 2 recomputed, 1 changed; 1 thinned, kept as they were" in out
    before = first["length_m"] + old_second
    assert f"length: {before:.1f} m before, {after:.1f} m after" in out
    now_second = view(second)
    assert {k: now_second[k] for k in FIGURES} == {k: second[k] for k in FIGURES}
    kept = view(thinned)
    assert (kept["length_m"], kept["grids_crossed"]) == (old_thinned, [A2, A1])
    assert kept["version"] == versions[thinned["id"]]

    # a second run changes nothing
    out = cli("patrols", "recompute").output
    assert "patrols: 2 recomputed, 0 changed" in out
    assert f"length: {after:.1f} m before, {after:.1f} m after" in out
    assert [view(p)["version"] for p in (first, second)] == [
        versions[first["id"]] + 1,
        versions[second["id"]] + 1,
    ]
    # nor does one for patrols started from tomorrow on
    tomorrow = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()
    assert (
        "patrols: 0 recomputed, 0 changed"
        in cli("patrols", "recompute", "--since", tomorrow).output
    )

    audits = recompute_audits(engine)
    assert [(a.split(":")[0], o, r) for a, o, r, _ in audits] == [
        ("cli", "patrol", COMMUNITY_A),
        ("cli", "patrol", None),
        ("cli", "patrol", None),
        ("cli", "patrol", None),
    ]
    assert audits[0][3] == {
        "patrols": 1,
        "changed": 1,
        "thinned": 1,
        "length_before_m": old_first,
        "length_after_m": first["length_m"],
        "region": COMMUNITY_A,
        "since": None,
    }
    assert [s["changed"] for *_, s in audits] == [1, 1, 0, 0]
    assert audits[3][3]["since"] == tomorrow
    assert (
        session.scalar(select(Patrol.length_m).where(Patrol.id == second["id"]))
        == (second["length_m"])
    )


def test_recompute_refuses_a_region_or_day_it_cannot_read(database_url, settings):
    env = {"GRIDAPI_DATABASE_URL": database_url, "GRIDAPI_DATA_DIR": settings.data_dir}
    for args, said in (
        (["--region", "3205"], "--region 3205"),
        (["--since", "1850-01-01"], "Must lie between the years 1900 and 2100"),
        (["--since", "2026-13-01"], "--since"),
    ):
        result = CliRunner().invoke(main, ["patrols", "recompute", *args], env=env)
        assert result.exit_code != 0 and said in result.output, (args, result.output)
