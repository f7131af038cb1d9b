"""Patrols over HTTP: tracks from late, repeated and shuffled uploads, check-ins, findings,
who reads a track, monthly statistics; and the retention of tracks (``thin_tracks``).

Every operation × role × scope is in test_authorization_matrix.py.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from sqlalchemy import text

from gridapi import clock
from gridapi.geo.crs import wgs84_to_gcj02
from gridapi.geo.geodesy import distance_m, metres_per_degree
from gridapi.services.patrols import thin_tracks, track_length_m

from ..factories import COMMUNITY_A, COMMUNITY_B, LAT0, LON0, STEP
from ..races import report_while_held
from .test_case_workflow import race

A1, A2 = COMMUNITY_A + "001", COMMUNITY_A + "002"
B1 = COMMUNITY_B + "001"
OTHER_TOWNSHIP = "320508002000"


def center(col: float) -> list[float]:
    return [round(LON0 + (col + 0.5) * STEP, 6), round(LAT0 + 0.5 * STEP, 6)]


def point(col: float) -> dict:
    return {"type": "Point", "coordinates": center(col)}


def ok(response, status: int = 200) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.get_json())
    return response.get_json()


def iso(moment: datetime) -> str:
    return moment.isoformat()


def walk(start: datetime, n: int = 21, col0: float = 0.0, col1: float = 2.0) -> list[dict]:
    """Return points every 30 s walking east from the middle of column col0 to col1 (A1 →
    A2 → B1 by default), with a little north-south wiggle so the line is no straight one."""
    points = []
    for i in range(n):
        lon, lat = center(col0 + (col1 - col0) * i / (n - 1))
        lat += (i % 3 - 1) * 0.0002
        points.append({"t": iso(start + timedelta(seconds=30 * i)), "lon": lon, "lat": lat})
    return points


def rows(engine, sql: str, **params) -> list[tuple]:  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql), params)]


def audit_rows(engine, action: str) -> list[tuple]:  # type: ignore[no-untyped-def]
    found = rows(
        engine,
        "SELECT actor_id, object_id, summary FROM audit_log WHERE action = :a ORDER BY id",
        a=action,
    )
    return [(a, o, json.loads(s) if isinstance(s, str) else s) for a, o, s in found]


@pytest.fixture
def worker(accounts, world, engine):  # type: ignore[no-untyped-def]
    """The worker of A1, on its roster since yesterday: a patrol started an hour ago belongs
    to the roster of the day it started, which between 00:00 and 01:00 in the county is
    yesterday; on a roster starting today the patrol had no grid, and the tests that read
    it as the grid's chief failed in that hour."""
    client = accounts.client("worker1", "grid_worker", grids=[A1])
    with engine.begin() as conn:
        conn.execute(
            text("UPDATE grid_assignments SET valid_from = :d WHERE user_id = :u"),
            {"d": clock.today() - timedelta(days=1), "u": accounts.ids["worker1"]},
        )
    return client


def start(client, **body) -> dict:  # type: ignore[no-untyped-def]
    return ok(client.post("/api/v1/patrols", json=body), 201)


def started_an_hour_ago(client) -> tuple[dict, datetime]:  # type: ignore[no-untyped-def]
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return start(client, started_at=iso(began)), began


def upload(client, patrol_id: int, points: list[dict], status: int = 200) -> dict:  # type: ignore[no-untyped-def]
    return ok(client.post(f"/api/v1/patrols/{patrol_id}/points", json={"points": points}), status)


# --- tracks -----------------------------------------------------------------------------------


def test_shuffled_repeated_and_overlapping_batches_give_the_track_of_one_upload(
    accounts, world, worker, engine
):
    """The same walk sent once in order, and sent shuffled in overlapping batches, repeated
    and with repeats inside a batch: exactly the distinct points, ordered, the same line."""
    other = accounts.client("worker2", "grid_worker", grids=[A1])
    patrol, began = started_an_hour_ago(worker)
    points = walk(began + timedelta(minutes=1))
    first = upload(worker, patrol["id"], points)
    assert (first["accepted"], first["duplicates"], first["rejected"]) == (21, 0, 0)
    assert first["point_count"] == 21 and first["length_m"] > 1900

    messy, began2 = started_an_hour_ago(other)
    shifted = walk(began2 + timedelta(minutes=1))
    rng = random.Random(7)
    batch_a = shifted[:14]
    rng.shuffle(batch_a)
    batch_b = shifted[9:] + shifted[9:11]  # overlaps a, and repeats two points itself
    rng.shuffle(batch_b)
    answers = [
        upload(other, messy["id"], batch_a),
        upload(other, messy["id"], batch_b),
        upload(other, messy["id"], batch_a),  # the whole batch again (a retry)
    ]
    assert [(a["accepted"], a["duplicates"]) for a in answers] == [(14, 0), (7, 7), (0, 14)]
    assert answers[-1]["point_count"] == 21

    mine = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))
    theirs = ok(other.get(f"/api/v1/patrols/{messy['id']}?points=true"))
    assert theirs["length_m"] == mine["length_m"] == first["length_m"]
    times = [p["t"] for p in theirs["points"]]
    assert len(times) == 21 and times == sorted(times)
    assert [(p["lon"], p["lat"]) for p in theirs["points"]] == [
        (p["lon"], p["lat"]) for p in shifted
    ]
    assert theirs["track"]["type"] == "LineString"
    assert theirs["track"]["coordinates"] == [[p["lon"], p["lat"]] for p in shifted]
    assert theirs["grids_crossed"] == mine["grids_crossed"] == [A1, A2, B1]
    assert theirs["duration_s"] == 60 + 20 * 30  # start to the latest point while active
    count = rows(engine, "SELECT count(*) FROM patrol_points WHERE patrol_id = :p", p=messy["id"])
    assert count == [(21,)]
    # the length is geodesic: the sum of the segments' WGS-84 distances
    lons = [p["lon"] for p in shifted]
    lats = [p["lat"] for p in shifted]
    exact = sum(distance_m(lons[i], lats[i], lons[i + 1], lats[i + 1]) for i in range(20))
    assert theirs["length_m"] == pytest.approx(exact, abs=0.1)


def test_track_length_is_geodesic_for_short_and_long_segments():
    import numpy as np

    lons = np.array([120.6, 120.6005, 120.7, 121.5, 121.5])
    lats = np.array([31.3, 31.3004, 31.35, 31.9, 31.9])
    exact = sum(distance_m(lons[i], lats[i], lons[i + 1], lats[i + 1]) for i in range(4))
    assert track_length_m(lons, lats) == pytest.approx(exact, rel=1e-9)
    assert track_length_m(lons[:1], lats[:1]) == 0.0


def test_fixes_no_walk_can_reach_are_left_out_of_the_line_and_its_length(worker, world):
    """One fix in New York added 23,767 km to a township walk (and to the month's figures
    the township is judged by). Fixes the walk cannot reach — a bad first fix, a lone jump,
    two in a row far away — are counted, kept as raw points, and left out of the line, the
    length and the grids crossed; a walk that resumes after ten minutes without a fix is
    still one walk."""
    patrol, began = started_an_hour_ago(worker)
    points = walk(began + timedelta(minutes=1))
    clean = upload(worker, patrol["id"], points)
    far = [(-74.006, 40.7128), (121.47, 31.23), (121.4701, 31.2301)]  # New York, Shanghai ×2
    t = [datetime.fromisoformat(p["t"]) for p in points]
    spikes = [
        {"t": iso(t[0] - timedelta(seconds=20)), "lon": far[0][0], "lat": far[0][1]},
        {"t": iso(t[5] + timedelta(seconds=10)), "lon": far[0][0], "lat": far[0][1]},
        {"t": iso(t[12] + timedelta(seconds=5)), "lon": far[1][0], "lat": far[1][1]},
        {"t": iso(t[12] + timedelta(seconds=15)), "lon": far[2][0], "lat": far[2][1]},
    ]
    answer = upload(worker, patrol["id"], spikes)
    assert (answer["accepted"], answer["point_count"], answer["outlier_count"]) == (4, 25, 4)
    assert answer["length_m"] == clean["length_m"]
    view = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))
    assert view["outlier_count"] == 4 and view["point_count"] == 25
    assert len(view["points"]) == 25  # the raw points stay as sent
    assert view["track"]["coordinates"] == [[p["lon"], p["lat"]] for p in points]
    assert view["grids_crossed"] == [A1, A2, B1]
    listed = ok(worker.get("/api/v1/patrols"))["items"]
    assert [(p["id"], p["outlier_count"]) for p in listed] == [(patrol["id"], 4)]
    # no fix for ten minutes, then 1.5 km further on: the walk goes on
    later = t[-1] + timedelta(minutes=10)
    lon, lat = points[-1]["lon"] + 0.0158, points[-1]["lat"]  # about 1.5 km east
    resumed = [
        {"t": iso(later + timedelta(seconds=30 * i)), "lon": lon + 0.0003 * i, "lat": lat}
        for i in range(3)
    ]
    after = upload(worker, patrol["id"], resumed)
    assert after["outlier_count"] == 4
    assert after["length_m"] == pytest.approx(clean["length_m"] + 1500 + 57, abs=60)


def _walk(n: int, t0: float, lon0: float, lat0: float, v: float = 1.4, dt: float = 5.0):  # type: ignore[no-untyped-def]
    """n fixes every dt seconds from (lon0, lat0) eastwards at v m/s."""
    import numpy as np

    t = t0 + np.arange(n) * dt
    lons = lon0 + np.arange(n) * v * dt / (111_320.0 * np.cos(np.radians(lat0)))
    return t, lons, np.full(n, lat0)


def _track(*parts):  # type: ignore[no-untyped-def]
    import numpy as np

    return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _fix(t: float, lon: float, lat: float):  # type: ignore[no-untyped-def]
    import numpy as np

    return np.array([t]), np.array([lon]), np.array([lat])


def test_the_walk_is_the_longest_chain_of_reachable_fixes():
    """Runs split at impossible steps, judged from their ends, dropped a whole half of a
    walk when a bad fix sat next to a gap without fixes (reachable from before the gap):
    one stale fix after a bus ride erased the walk before it."""
    import numpy as np

    from gridapi.services.patrols import plausible, track_length_m

    lat0 = 31.3
    east_3km = 3000 / (111_320.0 * np.cos(np.radians(lat0)))
    first = _walk(100, 0, 120.60, lat0)
    end_t, end_lon = first[0][-1], first[1][-1]
    # ten minutes without a fix, a bad fix 3 km east, then the walk goes on 200 m further
    bad = _fix(end_t + 600, end_lon + east_3km, lat0)
    second = _walk(150, end_t + 605, end_lon + 200 / 95_000, lat0)
    t, x, y = _track(first, bad, second)
    keep = plausible(t, x, y)
    assert keep.sum() == 250 and not keep[100]
    kept = track_length_m(x[keep], y[keep])
    assert kept == pytest.approx(99 * 7 + 200 + 149 * 7, rel=0.02)
    # the same with fewer fixes after the bad one: still the bad fix alone is left out
    t, x, y = _track(first, bad, _walk(60, end_t + 605, end_lon + 200 / 95_000, lat0))
    assert plausible(t, x, y).tolist() == [True] * 100 + [False] + [True] * 60
    # a stale fix of the last place, 5 s before the walk somewhere 13 km on (a bus ride)
    stale = _fix(end_t + 1195, end_lon, lat0)
    there = _walk(150, end_t + 1200, end_lon + 0.14, lat0)
    t, x, y = _track(first, stale, there)
    assert plausible(t, x, y).tolist() == [True] * 100 + [False] + [True] * 150
    # New York first, twice in the middle, and a single point: as before
    seconds = np.arange(8, dtype=np.float64) * 30
    lons = np.array([-74.0, 120.600, 120.601, 120.602, -74.0, -74.0, 120.605, 120.606])
    lats = np.full(8, lat0)
    lats[[0, 4, 5]] = 40.7
    assert plausible(seconds, lons, lats).tolist() == [0, 1, 1, 1, 0, 0, 1, 1]
    assert plausible(seconds[:1], lons[:1], lats[:1]).tolist() == [1]
    # a fix taken twice in one second, 60 m apart, is the fixes' error, not a jump
    assert plausible(np.array([0.0, 1.0]), np.array([120.6, 120.6006]), lats[1:3]).all()
    # a fix the phone says is coarse (a cell tower's, 1.5 km) is no part of the line
    t, x, y = _walk(8, 0, 120.6, lat0)
    accuracy = np.array([5.0] * 3 + [1500.0] + [np.nan] * 4)
    assert plausible(t, x, y, accuracy).tolist() == [True] * 3 + [False] + [True] * 4


# --- GPS jitter -------------------------------------------------------------------------------

EDGE = LON0 + STEP  # the edge between A1 (west) and A2 (east)
KX, KY = metres_per_degree(LAT0 + STEP / 2)


def at_metres(east: float, north: float) -> tuple[float, float]:
    """The lon/lat ``east`` metres from the A1/A2 edge (negative: in A1), ``north`` metres
    from the grids' south edge."""
    return EDGE + east / KX, LAT0 + north / KY


def jittered_walk(
    rng: random.Random,
    legs: list[tuple[float, float]],
    start: tuple[float, float],
    *,
    t0: float = 0.0,
    jitter: tuple[float, float] | None = (5.0, 15.0),
    speed: float = 1.4,
    every: tuple[float, float] = (5.0, 10.0),
) -> tuple[list[tuple[float, float, float]], float]:
    """Walk ``legs`` (east, north metres each) from ``start`` (metres) at ``speed``, a fix
    every 5-10 s (``every``), each off by up to 5-15 m (the phone's jitter) unless
    ``jitter`` is None. Return the fixes (seconds, lon, lat) and the true length in metres."""
    x, y, t = *start, t0
    truth = [(x, y)]
    times = [t]
    for east, north in legs:
        leg = math.hypot(east, north)
        done = 0.0
        while done < leg - 1e-9:
            dt = rng.uniform(*every)
            step = min(speed * dt, leg - done)
            done += step
            x, y, t = x + east * step / leg, y + north * step / leg, t + dt
            truth.append((x, y))
            times.append(t)
    fixes = []
    for (x, y), t in zip(truth, times, strict=True):
        if jitter is not None:
            off, angle = abs(rng.gauss(0, rng.uniform(*jitter) / 1.25)), rng.uniform(0, 2 * math.pi)
            x, y = x + off * math.cos(angle), y + off * math.sin(angle)
        fixes.append((t, *at_metres(x, y)))
    return fixes, sum(math.dist(a, b) for a, b in itertools.pairwise(truth))


def standing(rng: random.Random, at: tuple[float, float], t0: float, minutes: float, sigma=8.0):  # type: ignore[no-untyped-def]
    """A fix every 5 s for ``minutes`` at ``at`` (metres), each off by about ``sigma`` m."""
    fixes = []
    for i in range(int(minutes * 12)):
        off, angle = abs(rng.gauss(0, sigma)), rng.uniform(0, 2 * math.pi)
        fixes.append(
            (
                t0 + 5 * (i + 1),
                *at_metres(at[0] + off * math.cos(angle), at[1] + off * math.sin(angle)),
            )
        )
    return fixes


def as_arrays(fixes):  # type: ignore[no-untyped-def]
    return tuple(np.array(c, dtype=np.float64) for c in zip(*fixes, strict=True))


def summed_length(fixes) -> float:  # type: ignore[no-untyped-def]
    _, lons, lats = as_arrays(fixes)
    return track_length_m(lons, lats)


def walked_length(fixes, accuracy: float | None = 10.0) -> float:  # type: ignore[no-untyped-def]
    """The length of the walk's line through the fixes, each stating ``accuracy`` (None:
    none stated)."""
    from gridapi.services.patrols import walked_line

    t, lons, lats = as_arrays(fixes)
    stated = None if accuracy is None else np.full(len(t), accuracy)
    return track_length_m(*walked_line(t, lons, lats, stated))


# A 2 km walk in A1: 305 m west, 900 m north, 795 m east to 5 m short of the edge with A2.
LEGS = [(-305.0, 0.0), (0.0, 900.0), (795.0, 0.0)]
FROM = (-495.0, 100.0)
LAST = (-5.0, 1000.0)


def test_gps_jitter_adds_no_length():
    """Summed fix to fix, a phone's jitter made a 2 km walk (a fix every 5-10 s, 5-15 m off)
    about 2.6 km, and half an hour standing still 3.6 km: the length workers are judged by.
    The walk's line averages fixes on the move, makes a stop one point and counts a step
    only beyond the fixes' accuracy; a walk without jitter, or across a gap, keeps its
    length."""
    rng = random.Random(20261130)
    for _ in range(3):
        fixes, truth = jittered_walk(rng, LEGS, FROM)
        assert truth == pytest.approx(2000.0)
        assert summed_length(fixes) > 1.2 * truth  # what the jitter did
        assert walked_length(fixes) == pytest.approx(truth, rel=0.05)
        assert walked_length(fixes, accuracy=None) == pytest.approx(truth, rel=0.05)

        still = standing(rng, LAST, 0.0, 30)
        assert summed_length(still) > 3000
        assert walked_length(still) < 100
        assert walked_length(still, accuracy=None) < 100

        clean, truth = jittered_walk(rng, LEGS, FROM, jitter=None)
        assert walked_length(clean) == pytest.approx(truth, rel=0.01)

        every_second, truth = jittered_walk(rng, LEGS, FROM, every=(1.0, 1.0))
        assert summed_length(every_second) > 5 * truth
        assert walked_length(every_second) == pytest.approx(truth, rel=0.08)

        # 1 km, twenty minutes in the pocket, then 800 m further on and 600 m more: all of it
        first, one = jittered_walk(rng, [(0.0, 1000.0)], (-900.0, 50.0))
        resumed = (-900.0 + 480.0, 1050.0 - 640.0)  # 800 m from where the first walk ended
        after, other = jittered_walk(rng, [(600.0, 0.0)], resumed, t0=first[-1][0] + 1200)
        assert walked_length(first + after) == pytest.approx(one + 800 + other, rel=0.05)


def test_a_stop_on_a_grid_edge_is_one_place_of_the_walk(worker, world):
    """Half an hour standing 5 m from the edge of the grid, the phone's fixes falling on
    both sides of it: the walk crossed no edge, is as long as it was, and a finding without
    a location goes to the place the worker stood, not to the last fix, in the other grid."""
    rng = random.Random(7)
    walked, truth = jittered_walk(rng, LEGS, FROM, t0=60.0)
    stood = standing(rng, LAST, walked[-1][0], 30)
    assert sum(1 for _, lon, _ in stood if lon > EDGE) > 30  # in A2 by the fixes
    began = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=90)
    patrol = start(worker, started_at=iso(began))
    points = [
        {"t": iso(began + timedelta(seconds=t)), "lon": lon, "lat": lat, "accuracy_m": 10}
        for t, lon, lat in walked + stood
    ]
    answer = upload(worker, patrol["id"], points)
    assert (answer["accepted"], answer["outlier_count"]) == (len(points), 0)
    assert answer["length_m"] == pytest.approx(truth, rel=0.05)

    view = ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))
    assert view["grids_crossed"] == [A1]
    line = view["track"]["coordinates"]
    assert len(line) <= len(walked)  # the half hour standing is one point
    assert distance_m(*line[-1], *at_metres(*LAST)) < 5
    lons, lats = zip(*line, strict=True)
    assert track_length_m(np.array(lons), np.array(lats)) == pytest.approx(
        view["length_m"], abs=0.1
    )

    url = f"/api/v1/patrols/{patrol['id']}/findings"
    case = ok(worker.post(url, json={"category": "0101", "description": "井盖缺失"}), 201)["case"]
    assert case["grid"]["code"] == A1
    assert distance_m(*case["location"]["coordinates"], *at_metres(*LAST)) < 5


def test_points_outside_the_patrol_are_rejected_and_late_uploads_taken(worker, world):
    patrol, began = started_an_hour_ago(worker)
    now = datetime.now(UTC)
    early = {"t": iso(began - timedelta(minutes=30)), "lon": center(0)[0], "lat": center(0)[1]}
    future = {"t": iso(now + timedelta(hours=1)), "lon": center(0)[0], "lat": center(0)[1]}
    inside = {"t": iso(began + timedelta(minutes=2)), "lon": center(0)[0], "lat": center(0)[1]}
    answer = upload(worker, patrol["id"], [early, future, inside])
    assert (answer["accepted"], answer["rejected"], answer["point_count"]) == (1, 2, 1)

    ended_at = began + timedelta(minutes=40)
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={"ended_at": iso(ended_at)}))
    assert ended["status"] == "ended" and ended["duration_s"] == 2400
    # an offline phone uploads after the end: inside the patrol's time it is taken
    late = walk(began + timedelta(minutes=10), n=5, col1=0.5)
    after_end = {"t": iso(now - timedelta(minutes=5)), "lon": center(0)[0], "lat": center(0)[1]}
    answer = upload(worker, patrol["id"], [*late, after_end])
    assert (answer["accepted"], answer["rejected"], answer["point_count"]) == (5, 1, 6)
    assert answer["duration_s"] == 2400  # an ended patrol lasts from start to end

    # a phone without a fix sends 0°, 0°: rejected, the track's length untouched
    length = answer["length_m"]
    no_fix = {"t": iso(began + timedelta(minutes=20)), "lon": 0, "lat": 0.0}
    # Baidu's SDK writes 4.9E-324 (the smallest double) for both: no fix either
    baidu = {"t": iso(began + timedelta(minutes=21)), "lon": 4.9e-324, "lat": 4.9e-324}
    answer = upload(worker, patrol["id"], [no_fix, {**baidu, "crs": "bd09"}])
    assert (answer["accepted"], answer["rejected"], answer["point_count"]) == (0, 2, 6)
    assert answer["length_m"] == length

    # GCJ-02 (AMap) points are converted to WGS-84
    lon, lat = wgs84_to_gcj02(*center(0.25))
    t = iso(began + timedelta(minutes=30))
    body = {"points": [{"t": t, "lon": lon, "lat": lat, "crs": "gcj02", "accuracy_m": 8}]}
    assert ok(worker.post(f"/api/v1/patrols/{patrol['id']}/points", json=body))["accepted"] == 1
    stored = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))["points"]
    gcj = next(p for p in stored if p["accuracy_m"] == 8)
    assert distance_m(gcj["lon"], gcj["lat"], *center(0.25)) < 1.0


def test_the_end_given_is_the_end_whether_the_last_points_came_before_or_after(accounts, world):
    """Points a few minutes past the end moved the end when they were sent before it, and
    did not when sent after (an offline upload): two orders, two patrols."""
    answers = []
    for name, points_first in (("worker1", True), ("worker2", False)):
        phone = accounts.client(name, "grid_worker", grids=[A1])
        patrol, began = started_an_hour_ago(phone)
        ended_at = began + timedelta(minutes=40)
        points = walk(began + timedelta(minutes=36), n=15)  # the last 3 min past the end

        def end(phone=phone, patrol=patrol, ended_at=ended_at):  # type: ignore[no-untyped-def]
            url = f"/api/v1/patrols/{patrol['id']}/end"
            return ok(phone.post(url, json={"ended_at": iso(ended_at)}))

        if points_first:
            upload(phone, patrol["id"], points)
            end()
        else:
            end()
            upload(phone, patrol["id"], points)
        view = ok(phone.get(f"/api/v1/patrols/{patrol['id']}"))
        answers.append((view["ended_at"], view["duration_s"], view["length_m"]))
        assert view["duration_s"] == 2400 and view["point_count"] == 15
        assert end()["ended_at"] == view["ended_at"]  # a retry of the end changes nothing
    assert answers[0][1:] == answers[1][1:]


@pytest.mark.parametrize(
    ("points", "where"),
    [
        ([{"t": "2026-11-28T09:00:00", "lon": 120.6, "lat": 31.3}], "t"),  # no time zone
        ([{"t": "yesterday", "lon": 120.6, "lat": 31.3}], "t"),
        ([{"t": "2026-11-28T09:00:00Z", "lon": 190, "lat": 31.3}], "lon"),
        ([{"t": "2026-11-28T09:00:00Z", "lon": 120.6, "lat": "31.3"}], "lat"),
        ([{"t": "2026-11-28T09:00:00Z", "lon": 120.6, "lat": 31.3, "speed": 3}], "speed"),
        ([{"t": "2026-11-28T09:00:00Z", "lon": 120.6, "lat": 31.3, "crs": "utm"}], "crs"),
        ([{"t": "9999-12-31T23:59:59-23:59", "lon": 120.6, "lat": 31.3}], "t"),  # past UTC
        ([{"t": "0001-01-01T00:00:00+14:00", "lon": 120.6, "lat": 31.3}], "t"),
    ],
)
def test_malformed_points_are_refused_naming_the_point_and_field(worker, world, points, where):
    patrol, _ = started_an_hour_ago(worker)
    body = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": points}), 422)
    assert where in body["errors"]["json"]["points"]["0"], body


def test_a_batch_has_at_most_5000_points(worker, world):
    patrol, began = started_an_hour_ago(worker)
    many = [
        {"t": iso(began + timedelta(seconds=i)), "lon": 120.605, "lat": 31.305} for i in range(5001)
    ]
    body = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": many}), 422)
    assert "points" in body["errors"]["json"]
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": []}), 422)


def test_a_worker_has_one_active_patrol_and_ends_it_once(worker, world, engine):
    patrol = start(worker)
    assert patrol["status"] == "active" and patrol["grid"] == A1
    assert patrol["region_code"] == COMMUNITY_A and patrol["county_code"] == "320508"
    again = ok(worker.post("/api/v1/patrols", json={}), 409)
    assert again["errors"]["active_patrol_id"] == patrol["id"]
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    assert ended["status"] == "ended" and ended["ended_at"]
    assert ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={})) == ended  # a retry
    other_end = {"ended_at": iso(datetime.now(UTC) - timedelta(minutes=1))}
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json=other_end), 409)
    assert start(worker)["id"] != patrol["id"]
    # a start in the future, or an end before the start, makes no sense
    future = {"started_at": iso(datetime.now(UTC) + timedelta(hours=1))}
    assert "started_at" in ok(worker.post("/api/v1/patrols", json=future), 422)["errors"]["json"]
    # nor one before the 180 days tracks are kept (a patrol of 2020 was taken, 6.9 years long,
    # for the retention job to delete at once)
    ancient = {"started_at": iso(datetime.now(UTC) - timedelta(days=181))}
    assert ok(worker.post("/api/v1/patrols", json=ancient), 422)["errors"] == {
        "json": {"started_at": ["lies before the 180 days tracks are kept"]}
    }
    assert [a for a, _, _ in audit_rows(engine, "patrol.start")] == [
        f"user:{worker_id(engine)}"
    ] * 2
    ends = audit_rows(engine, "patrol.end")
    assert len(ends) == 1 and set(ends[0][2]) == {
        "worker_id",
        "grid",
        "length_m",
        "duration_s",
        "points",
    }


def test_an_end_without_a_time_ends_a_patrol_started_minutes_ahead(worker, world):
    """A start a few minutes ahead is taken (clock skew); ending it at once without a time
    was a 422 on `ended_at`, a field nobody sent, and the worker could then neither end
    that patrol nor start another (409). It ends at its start: nothing was walked yet."""
    for body in ({}, None):  # an empty body, and no body at all
        ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
        patrol = start(worker, started_at=iso(ahead))
        url = f"/api/v1/patrols/{patrol['id']}/end"
        ended = ok(worker.post(url, json=body) if body is not None else worker.post(url))
        assert ended["status"] == "ended"
        assert datetime.fromisoformat(ended["ended_at"]) == ahead
        assert ended["duration_s"] == 0
        assert ok(worker.post(url, json={})) == ended  # a retry changes nothing
    # a point uploaded after that start (the phone's clock) is later still: it is the end
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    patrol = start(worker, started_at=iso(ahead))
    at = ahead + timedelta(minutes=1)
    upload(worker, patrol["id"], [{"t": iso(at), "lon": center(0)[0], "lat": center(0)[1]}])
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    assert (datetime.fromisoformat(ended["ended_at"]), ended["duration_s"]) == (at, 60)
    # an end given before the start is still refused: the end given stays the end
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=2)
    patrol = start(worker, started_at=iso(ahead))
    early = {"ended_at": iso(ahead - timedelta(minutes=1))}
    refused = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json=early), 422)
    assert refused["errors"] == {"json": {"ended_at": ["lies before the start of the patrol"]}}


def test_an_end_without_a_time_is_no_outliers_time(worker, world):
    """Fixes the walk leaves out (New York, a cell tower's 800 m) stamped minutes ahead (a
    phone's clock; points up to 5 minutes ahead are taken) were the end of a patrol ended
    without a time, and its duration: an hour for ten minutes walked. The end is now, or
    the walk's latest point if later; an `ended_at` minutes before such a fix is no end
    before the track either."""
    patrol, began = started_an_hour_ago(worker)
    track = walk(began + timedelta(minutes=1))  # ten minutes, the last at began + 11 min
    upload(worker, patrol["id"], track)
    ahead = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=3)
    far = [
        {"t": iso(ahead), "lon": -74.006, "lat": 40.7128},
        {"t": iso(ahead + timedelta(minutes=1)), "lon": LON0 + 0.04, "lat": LAT0 + 0.03},
    ]
    far[1]["accuracy_m"] = 800
    answer = upload(worker, patrol["id"], far)
    assert (answer["point_count"], answer["outlier_count"]) == (23, 2)
    assert answer["duration_s"] == 11 * 60  # while active: to the walk's latest point
    before = datetime.now(UTC)
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    assert before <= datetime.fromisoformat(ended["ended_at"]) <= datetime.now(UTC)
    assert ended["duration_s"] == pytest.approx(3600, abs=5)
    assert ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))["ended_at"] == ended["ended_at"]

    second, began = started_an_hour_ago(worker)
    upload(worker, second["id"], walk(began + timedelta(minutes=1)))
    upload(worker, second["id"], far)
    end = began + timedelta(minutes=12)
    ended = ok(worker.post(f"/api/v1/patrols/{second['id']}/end", json={"ended_at": iso(end)}))
    assert (datetime.fromisoformat(ended["ended_at"]), ended["duration_s"]) == (end, 12 * 60)


def keyed_start(client, key: str, **body):  # type: ignore[no-untyped-def]
    return client.post("/api/v1/patrols", json=body, headers={"Idempotency-Key": key})


def test_a_start_sent_again_with_its_key_is_the_first_patrol(worker, world, engine):
    """A phone that lost the answer to its start sends it again with the same key: the
    patrol it started (byte for byte, marked as a replay), also after it ended; nothing
    new is started or audited (it was a 409 the phone had to interpret)."""
    began = iso(datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5))
    first = keyed_start(worker, "start-1", started_at=began)
    assert first.status_code == 201, first.get_json()
    assert "Idempotent-Replayed" not in first.headers
    patrol = first.get_json()
    assert patrol["status"] == "active" and patrol["grid"] == A1
    for key in ("start-1", '"start-1"'):  # bare or quoted
        again = keyed_start(worker, key, started_at=began)
        assert again.status_code == 201, again.get_json()
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.data == first.data
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    late = keyed_start(worker, "start-1", started_at=began)
    assert (late.status_code, late.data) == (201, first.data)
    # The same key with another body is refused; a new key starts a new patrol.
    other = keyed_start(worker, "start-1")
    assert other.status_code == 422, other.get_json()
    assert other.get_json()["errors"] == {"headers": {"Idempotency-Key": ["reused"]}}
    assert keyed_start(worker, "\x01").status_code == 422  # not a key
    second = keyed_start(worker, "start-2")
    assert second.status_code == 201 and second.get_json()["id"] != patrol["id"]
    assert rows(engine, "SELECT count(*) FROM patrols") == [(2,)]
    assert len(audit_rows(engine, "patrol.start")) == 2


def test_starts_sent_at_once_with_one_key_start_one_patrol(accounts, world, engine):
    """Eight sends of one start at the same moment: one patrol; every answer is it (201)
    or "still in flight" (409 with Retry-After), never a second patrol or "you have an
    active patrol"; a later retry gets it. On SQLite writers queue: every answer is it."""
    phones = [accounts.client("worker1", "grid_worker", grids=[A1])]
    phones += [accounts.client("worker1") for _ in range(7)]
    answers = race(phones, lambda c: keyed_start(c, "at-once"))
    details = [(a.status_code, a.get_data(as_text=True)[:200]) for a in answers]
    originals = [
        a for a in answers if a.status_code == 201 and "Idempotent-Replayed" not in a.headers
    ]
    assert len(originals) == 1, details
    for a in answers:
        if a.status_code == 409:
            assert a.headers.get("Retry-After") == "1", details
            assert a.get_json()["errors"] == {"headers": {"Idempotency-Key": ["in flight"]}}
        else:
            assert (a.status_code, a.data) == (201, originals[0].data), details
    if engine.dialect.name == "sqlite":
        assert [a.status_code for a in answers] == [201] * 8, details
    later = keyed_start(phones[0], "at-once")
    assert (later.status_code, later.data) == (201, originals[0].data)
    assert rows(engine, "SELECT count(*) FROM patrols") == [(1,)]


def worker_id(engine, username: str = "worker1") -> int:  # type: ignore[no-untyped-def]
    return rows(engine, "SELECT id FROM users WHERE username = :u", u=username)[0][0]


def test_a_patrol_started_meanwhile_is_named_as_one_started_before(app, worker, world, engine):
    """Two starts without a key at once (a double tap): the one whose insert met the
    other's in the one-active-patrol index (PostgreSQL) got the generic 409 with no
    active_patrol_id, so the app could not resume the patrol. It now answers as when the
    other came first, naming it."""
    from gridapi.models import Patrol

    from ..races import send_while_uncommitted

    st = app.extensions["gridapi"]
    with st.sessions() as session:  # another request's start, inserted, not committed
        other = Patrol(
            county_code=COMMUNITY_A[:6],
            region_code=COMMUNITY_A,
            worker_id=worker_id(engine),
            grid_code=A1,
            started_at=datetime.now(UTC),
            status="active",
            length_m=0.0,
            duration_s=0,
            grids_crossed=[],
            point_count=0,
            version=1,
        )
        session.add(other)
        session.flush()
        other_id = other.id
        r = send_while_uncommitted(
            engine, session, "patrols", lambda: worker.post("/api/v1/patrols", json={})
        )
    assert ok(r, 409)["errors"] == {"active_patrol_id": other_id}
    assert [row[0] for row in rows(engine, "SELECT id FROM patrols")] == [other_id]


def test_an_account_without_grid_or_region_says_where_it_patrols(client, world):
    answer = ok(client.post("/api/v1/patrols", json={}), 422)  # the unrestricted admin
    assert "location" in answer["errors"]["json"]
    lon, lat = wgs84_to_gcj02(*center(2))
    patrol = start(client, location={"type": "Point", "coordinates": [lon, lat]}, crs="gcj02")
    assert (patrol["region_code"], patrol["grid"]) == (COMMUNITY_B, None)


# --- check-ins and findings -------------------------------------------------------------------


def test_check_in_at_a_house_a_place_or_a_point(client, worker, world, engine):
    house = ok(
        client.post("/api/v1/houses", json={"address": "平江路9号", "location": point(0)}), 201
    )
    house_b = ok(client.post("/api/v1/houses", json={"address": "观前街1号", "grid": B1}), 201)
    patrol, began = started_an_hour_ago(worker)
    url = f"/api/v1/patrols/{patrol['id']}/checkins"
    at = iso(began + timedelta(minutes=5))
    checkin = ok(
        worker.post(url, json={"at": at, "house_id": house["id"], "note": "门窗完好"}), 201
    )
    assert checkin["house_id"] == house["id"] and checkin["grid"] == A1
    assert checkin["location"]["coordinates"] == house["location"]["coordinates"]
    assert ok(worker.post(url, json={"at": at, "house_id": house["id"]}), 201) == checkin
    at_place = ok(worker.post(url, json={"place": "农贸市场", "location": point(1)}), 201)
    assert at_place["grid"] == A2 and at_place["house_id"] is None

    # a phone without a fix sends 0°, 0°: the place named counts, not that point
    no_fix = {"type": "Point", "coordinates": [0, 0]}
    named = ok(worker.post(url, json={"place": "村口", "location": no_fix}), 201)
    assert (named["location"], named["grid"], named["place"]) == (None, None, "村口")
    baidu = {"type": "Point", "coordinates": [4.9e-324, 4.9e-324]}  # Baidu's "no fix"
    body = {"place": "桥头", "location": baidu, "crs": "bd09"}
    bridge = ok(worker.post(url, json=body), 201)
    assert (bridge["location"], bridge["grid"], bridge["place"]) == (None, None, "桥头")

    # a house out of the worker's scope, nowhere, or a time outside the patrol: 422
    for body, field in (
        ({"house_id": house_b["id"]}, "house_id"),
        ({"note": "无处"}, "house_id"),
        ({"location": no_fix}, "house_id"),  # no fix is nowhere
        ({"place": "x", "at": iso(began - timedelta(hours=1))}, "at"),
    ):
        assert field in ok(worker.post(url, json=body), 422)["errors"]["json"], body
    detail = ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))
    assert [c["id"] for c in detail["checkins"]] == [
        checkin["id"],
        at_place["id"],
        named["id"],
        bridge["id"],
    ]
    audited = audit_rows(engine, "patrol.checkin")
    assert len(audited) == 4
    for _, _, summary in audited:  # never coordinates in the audit trail
        assert set(summary) == {"checkin_id", "house_id", "grid"}


def test_a_finding_becomes_a_case_of_the_patrol_both_or_neither(client, worker, world, engine):
    patrol, began = started_an_hour_ago(worker)
    track = walk(began + timedelta(minutes=1), n=3, col1=0.4)
    upload(worker, patrol["id"], track)
    url = f"/api/v1/patrols/{patrol['id']}/findings"
    body = {"category": "0101", "description": "巡查发现垃圾堆放", "location": point(0)}
    found = ok(worker.post(url, json=body), 201)
    case = found["case"]
    assert found["patrol_id"] == patrol["id"]
    assert case["source"] == "patrol" and case["grid"]["code"] == A1
    assert ok(client.get(f"/api/v1/cases/{case['id']}"))["source"] == "patrol"
    # without a location: the track's latest point
    nearby = ok(worker.post(url, json={"category": "0101", "description": "井盖缺失"}), 201)
    latest = [track[-1]["lon"], track[-1]["lat"]]
    assert nearby["case"]["location"]["coordinates"] == pytest.approx(latest, abs=1e-9)
    # a repeat with the same client_id returns the first case
    with_id = {**body, "client_id": "6f1c9a4e-0b8d-4f57-9d3c-1f2e3d4c5b6a"}
    first = ok(worker.post(url, json=with_id), 201)
    assert ok(worker.post(url, json=with_id), 201)["case"]["id"] == first["case"]["id"]
    detail = ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))
    assert detail["findings"] == [case["id"], nearby["case"]["id"], first["case"]["id"]]

    before = rows(engine, "SELECT count(*) FROM cases")[0][0]
    for bad, field in (
        ({**body, "category": "9999"}, "category"),  # parses, but no such category
        ({**body, "source": "hotline"}, "source"),  # always "patrol"
        ({"description": "没有类别"}, "category"),
    ):
        assert field in ok(worker.post(url, json=bad), 422)["errors"]["json"], bad
    assert rows(engine, "SELECT count(*) FROM cases")[0][0] == before
    assert rows(engine, "SELECT count(*) FROM patrol_findings")[0][0] == 3
    assert len(audit_rows(engine, "patrol.finding")) == 3
    # a bad last fix (kilometres off, 5 s later) is no place for a finding: it went to the
    # bad fix, in another township
    far = {"t": iso(began + timedelta(seconds=125)), "lon": LON0 + 0.04, "lat": LAT0 + 0.03}
    assert upload(worker, patrol["id"], [far])["outlier_count"] == 1
    placed = ok(worker.post(url, json={"category": "0101", "description": "路灯损坏"}), 201)
    assert placed["case"]["location"]["coordinates"] == pytest.approx(latest, abs=1e-9)


NO_PLACE = {"json": {"location": ["required: the track has no usable points"]}}


def test_a_finding_without_location_is_never_placed_at_an_outlier(worker, world, engine):
    """A patrol whose only fix was a cell tower's (accuracy 500 m) placed a finding without
    a location there, though that fix is no part of the walk: as for a patrol without points
    it needs a location. With one usable fix (too few for a line) and a later bad one, the
    finding goes to the usable one."""
    patrol, began = started_an_hour_ago(worker)
    url = f"/api/v1/patrols/{patrol['id']}/findings"
    report = {"category": "0101", "description": "井盖缺失"}
    no_points = ok(worker.post(url, json=report), 422)
    assert "location" in no_points["errors"]["json"]
    tower = {"t": iso(began + timedelta(minutes=1)), "lon": center(1)[0], "lat": center(1)[1]}
    answer = upload(worker, patrol["id"], [{**tower, "accuracy_m": 500}])
    assert (answer["point_count"], answer["outlier_count"]) == (1, 1)
    assert ok(worker.post(url, json=report), 422) == no_points
    assert no_points["errors"] == NO_PLACE
    assert rows(engine, "SELECT count(*) FROM cases") == [(0,)]

    good = {"t": iso(began + timedelta(seconds=30)), "lon": center(0)[0], "lat": center(0)[1]}
    late = {"t": iso(began + timedelta(minutes=2)), "lon": LON0 + 0.04, "lat": LAT0 + 0.03}
    answer = upload(worker, patrol["id"], [good, {**late, "accuracy_m": 800}])
    assert (answer["point_count"], answer["outlier_count"]) == (3, 2)
    placed = ok(worker.post(url, json=report), 201)["case"]
    assert placed["location"]["coordinates"] == pytest.approx(center(0), abs=1e-9)
    assert placed["grid"]["code"] == A1


def test_a_finding_at_0_0_is_a_finding_without_a_fix(worker, world, engine):
    """0°, 0° is what a phone sends without a fix (points and check-ins treat it so): a
    finding there was filed at Null Island, in no grid. It goes where the walk ended, as a
    finding without a location, and needs a location when the patrol has none."""
    patrol, began = started_an_hour_ago(worker)
    url = f"/api/v1/patrols/{patrol['id']}/findings"
    no_fix = {"type": "Point", "coordinates": [0, 0]}
    report = {"category": "0101", "description": "路灯损坏", "location": no_fix}
    for crs in ("wgs84", "gcj02"):
        refused = ok(worker.post(url, json={**report, "crs": crs}), 422)
        assert refused["errors"] == NO_PLACE, crs
    assert rows(engine, "SELECT count(*) FROM cases") == [(0,)]
    track = walk(began + timedelta(minutes=1), n=3, col1=0.4)
    upload(worker, patrol["id"], track)
    latest = [track[-1]["lon"], track[-1]["lat"]]
    for crs in ("wgs84", "gcj02"):
        case = ok(worker.post(url, json={**report, "crs": crs}), 201)["case"]
        assert case["location"]["coordinates"] == pytest.approx(latest, abs=1e-9), crs
        assert case["grid"]["code"] == A1


def test_a_finding_with_location_null_is_a_finding_without_a_location(worker, world, engine):
    """`"location": null` was a 422 ("Field may not be null.") where leaving the key out
    placed the finding where the walk ended: a phone's JSON without a fix writes null."""
    patrol, began = started_an_hour_ago(worker)
    url = f"/api/v1/patrols/{patrol['id']}/findings"
    report = {"category": "0101", "description": "路灯损坏", "location": None}
    assert ok(worker.post(url, json=report), 422)["errors"] == NO_PLACE
    assert rows(engine, "SELECT count(*) FROM cases") == [(0,)]
    track = walk(began + timedelta(minutes=1), n=3, col1=0.4)
    upload(worker, patrol["id"], track)
    case = ok(worker.post(url, json=report), 201)["case"]
    latest = [track[-1]["lon"], track[-1]["lat"]]
    assert case["location"]["coordinates"] == pytest.approx(latest, abs=1e-9)
    assert case["grid"]["code"] == A1
    assert ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))["findings"] == [case["id"]]


def test_only_its_worker_writes_to_a_patrol(accounts, worker, world):
    patrol, began = started_an_hour_ago(worker)
    chief = accounts.client("chief1", "grid_chief", grids=[A1, A2])
    point_body = {"points": walk(began, n=2)}
    for action, body in (
        ("points", point_body),
        ("checkins", {"place": "x"}),
        ("end", {}),
        ("findings", {"category": "0101", "description": "x", "location": point(0)}),
    ):
        mine = chief.post(f"/api/v1/patrols/{patrol['id']}/{action}", json=body)
        missing = chief.post(f"/api/v1/patrols/987654/{action}", json=body)
        assert mine.status_code == 404 and mine.data == missing.data, action
    assert ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))["status"] == "active"


# --- who reads a track ------------------------------------------------------------------------


def test_a_track_is_read_by_its_worker_their_chief_and_offices_in_scope(
    client, accounts, worker, world, engine
):
    ok(client.post("/api/v1/regions", json={"code": OTHER_TOWNSHIP, "name": "双塔街道"}), 201)
    patrol, began = started_an_hour_ago(worker)
    upload(worker, patrol["id"], walk(began + timedelta(minutes=1), n=4))
    url = f"/api/v1/patrols/{patrol['id']}"
    readers = {
        "worker1": worker,
        "chief1": accounts.client("chief1", "grid_chief", grids=[A1, A2]),
        "office1": accounts.client(
            "office1", "township_office", scope_region=COMMUNITY_A[:9] + "000"
        ),
    }
    strangers = {
        "worker_a2": accounts.client("worker_a2", "grid_worker", grids=[A2]),
        "chief_b": accounts.client("chief_b", "grid_chief", grids=[B1]),
        "office2": accounts.client("office2", "township_office", scope_region=OTHER_TOWNSHIP),
    }
    for name, reader in readers.items():
        body = ok(reader.get(url + "?points=true"))
        assert body["track"]["type"] == "LineString" and len(body["points"]) == 4, name
        listed = ok(reader.get("/api/v1/patrols"))["items"]
        assert patrol["id"] in [p["id"] for p in listed], name
        assert "track" not in listed[0]
    missing = strangers["worker_a2"].get("/api/v1/patrols/987654")
    for name, stranger in strangers.items():
        r = stranger.get(url)
        assert (r.status_code, r.data) == (404, missing.data), name
        assert patrol["id"] not in [p["id"] for p in ok(stranger.get("/api/v1/patrols"))["items"]]
    department = accounts.client("dept1", "department", scope_region=COMMUNITY_A)
    assert department.get(url).status_code == 403
    assert department.get("/api/v1/patrols").status_code == 403

    # reads of someone else's track are audited (the worker's own are not), no coordinates
    audited = audit_rows(engine, "patrol.read_track")
    readers_ids = [a for a, _, _ in audited]
    assert readers_ids == [
        f"user:{worker_id(engine, 'chief1')}",
        f"user:{worker_id(engine, 'office1')}",
    ]
    assert all(
        s == {"worker_id": patrol_worker(engine), "grid": A1, "points": True} for *_, s in audited
    )


def test_a_track_is_kept_in_no_cache(accounts, worker, world):
    """A track (the walk's line, and its raw points with ?points=true) is whereabouts,
    sensitive personal information, but answered "private, no-cache", which lets a browser
    on an office's shared computer keep it on disk, where full personal values answer
    "private, no-store". Now no-store too, for its worker and any other reader, also when
    the answer is a 304."""
    # Started now: started an hour ago, shortly after midnight in GRIDAPI_TIMEZONE, it fell
    # on the day before the worker's roster began, in no grid the chief reads.
    patrol = start(worker)
    upload(worker, patrol["id"], walk(datetime.fromisoformat(patrol["started_at"]), n=4))
    chief = accounts.client("chief1", "grid_chief", grids=[A1, A2])
    url = f"/api/v1/patrols/{patrol['id']}"
    for reader in (worker, chief):
        for query in ("?points=true", "", "?points=false"):
            r = reader.get(url + query)
            assert r.status_code == 200, r.get_json()
            assert r.get_json()["track"]["type"] == "LineString"
            assert r.headers["Cache-Control"] == "private, no-store", query
            again = reader.get(url + query, headers={"If-None-Match": r.headers["ETag"]})
            assert again.status_code == 304 and again.headers["Cache-Control"] == (
                "private, no-store"
            )
    # lists carry no track: as every other GET
    assert worker.get("/api/v1/patrols").headers["Cache-Control"] == "private, no-cache"


@pytest.mark.parametrize("reader", ["worker1", "chief1"])
def test_reading_a_patrol_does_not_hold_the_write_lock(
    client, accounts, worker, engine, monkeypatch, reader
):
    """On SQLite GET /patrols/{id} began as a writer (BEGIN IMMEDIATE: the view may write an
    audit row), so a worker reading their own patrol, which writes nothing, held the
    database's one write lock for the whole read: every phone's report waited for it. The
    patrol is read in a plain read now; only someone else's read writes, its audit row,
    afterwards."""
    from gridapi.services import patrols as svc

    patrol, began = started_an_hour_ago(worker)
    upload(worker, patrol["id"], walk(began + timedelta(minutes=1), n=4))
    who = worker if reader == "worker1" else accounts.client(reader, "grid_chief", grids=[A1])
    url = f"/api/v1/patrols/{patrol['id']}?points=true"
    answer = report_while_held(client, monkeypatch, svc, "detail_view", lambda: who.get(url))
    assert answer.status_code == 200, answer.get_json()
    assert len(answer.get_json()["points"]) == 4
    audited = [a for a, *_ in audit_rows(engine, "patrol.read_track")]
    assert audited == ([] if reader == "worker1" else [f"user:{worker_id(engine, reader)}"])


def patrol_worker(engine) -> int:  # type: ignore[no-untyped-def]
    return worker_id(engine, "worker1")


def test_list_filters(client, accounts, worker, world):
    other = accounts.client("worker_a2", "grid_worker", grids=[A2])
    mine = start(worker)
    theirs = start(other)
    ok(worker.post(f"/api/v1/patrols/{mine['id']}/end", json={}))
    ids = lambda r: [p["id"] for p in ok(r)["items"]]  # noqa: E731
    assert ids(client.get("/api/v1/patrols")) == [theirs["id"], mine["id"]]
    assert ids(client.get(f"/api/v1/patrols?grid={A2}")) == [theirs["id"]]
    assert ids(client.get("/api/v1/patrols?status=ended")) == [mine["id"]]
    assert ids(client.get(f"/api/v1/patrols?worker_id={mine['worker']['id']}")) == [mine["id"]]
    assert ids(client.get(f"/api/v1/patrols?region={COMMUNITY_B}")) == []
    assert ids(client.get("/api/v1/patrols?limit=1")) == [theirs["id"]]
    page = ok(client.get("/api/v1/patrols?limit=1"))
    assert ids(client.get(f"/api/v1/patrols?limit=1&cursor={page['next_cursor']}")) == [mine["id"]]
    later = iso(datetime.now(UTC) + timedelta(minutes=10))
    assert ids(client.get("/api/v1/patrols", query_string={"from": later})) == []
    ok(client.get("/api/v1/patrols?nonsense=1"), 422)


# --- statistics -------------------------------------------------------------------------------


def test_monthly_statistics_per_worker_and_grid(client, accounts, worker, world):
    houses = [
        ok(client.post("/api/v1/houses", json={"address": f"平江路{i}号", "grid": A1}), 201)
        for i in range(4)
    ]
    households = [
        ok(client.post("/api/v1/households", json={"number": f"H{i}", "house_id": h["id"]}), 201)
        for i, h in enumerate(houses)
    ]
    patrol, began = started_an_hour_ago(worker)
    upload(worker, patrol["id"], walk(began + timedelta(minutes=1)))  # A1 → A2 → B1
    at = iso(began + timedelta(minutes=3))
    visit = {"household_id": households[0]["id"], "findings": "正常", "visited_at": at}
    ok(worker.post("/api/v1/visits", json=visit), 201)
    # a check-in at a house counts its households; a second visit to one counts once
    checkin = {"house_id": houses[1]["id"], "at": at}
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/checkins", json=checkin), 201)
    ok(worker.post("/api/v1/visits", json={**visit, "household_id": households[1]["id"]}), 201)
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    idle = accounts.client("idle1", "grid_worker", grids=[A1])  # on the roster, did nothing
    month = began.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")

    stats = ok(client.get(f"/api/v1/patrols/stats?month={month}"))
    me = worker_row = next(w for w in stats["workers"] if w["worker_name"] == "worker1")
    assert worker_row["patrols"] == 1 and worker_row["length_m"] > 1900
    by_pair = {(i["worker_name"], i["grid"]): i for i in stats["items"]}
    a1 = by_pair[("worker1", A1)]
    assert (a1["patrols"], a1["households"], a1["households_visited"]) == (1, 4, 2)
    assert a1["visited_share"] == 0.5
    assert by_pair[("worker1", B1)]["households"] == 0
    assert by_pair[("worker1", B1)]["visited_share"] is None
    idle_row = by_pair[("idle1", A1)]
    assert (idle_row["patrols"], idle_row["households_visited"], idle_row["visited_share"]) == (
        0,
        0,
        0.0,
    )
    grids = {g["grid"]: g for g in stats["grids"]}
    assert (grids[A1]["patrols"], grids[A1]["visited_share"]) == (1, 0.5)

    # the worker sees their own figures, only in their own grid; the idle worker theirs
    own = ok(worker.get(f"/api/v1/patrols/stats?month={month}"))
    assert [w["worker_name"] for w in own["workers"]] == ["worker1"]
    assert [(i["grid"], i["households_visited"]) for i in own["items"]] == [(A1, 2)]
    assert own["workers"][0]["length_m"] == me["length_m"]
    idle_own = ok(idle.get(f"/api/v1/patrols/stats?month={month}"))
    assert [(i["worker_name"], i["patrols"]) for i in idle_own["items"]] == [("idle1", 0)]

    # filters, another month, bad input
    only = ok(client.get(f"/api/v1/patrols/stats?month={month}&grid={A2}"))
    assert {i["grid"] for i in only["items"]} == {A2} and only["grids"][0]["patrols"] == 1
    by_worker = ok(client.get(f"/api/v1/patrols/stats?month={month}&worker_id={me['worker_id']}"))
    assert {i["worker_name"] for i in by_worker["items"]} == {"worker1"}
    empty = ok(client.get("/api/v1/patrols/stats?month=2001-01"))
    assert empty["workers"][0]["patrols"] == 0 if empty["workers"] else True
    assert all(i["patrols"] == 0 for i in empty["items"])
    assert "month" in ok(client.get("/api/v1/patrols/stats?month=2026-13"), 422)["errors"]["query"]
    for month in ("9999-12", "0000-01", "0001-01", "1899-12"):  # 9999-12 and 0000-01 were 500
        refused = ok(client.get(f"/api/v1/patrols/stats?month={month}"), 422)
        assert refused["errors"] == {
            "query": {"month": ["Must lie between the years 1900 and 2100."]}
        }, month
    assert ok(client.get("/api/v1/patrols/stats?month=2100-12"))["month"] == "2100-12"


# --- retention --------------------------------------------------------------------------------


def test_thin_tracks_thins_then_deletes_and_is_idempotent(app, client, worker, world, engine):
    patrol, began = started_an_hour_ago(worker)
    points = walk(began + timedelta(minutes=1), n=41)
    upload(worker, patrol["id"], points)
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/checkins", json={"place": "市场"}), 201)
    body = {"category": "0101", "description": "巡查发现"}
    case_id = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/findings", json=body), 201)["case"][
        "id"
    ]
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    ok(worker.post("/api/v1/presence/heartbeat", json={"location": point(0)}))
    # never ended (the admin has no grid: it says where): ended by the job once it has heard
    # nothing for the raw period, then thinned like the others
    active = start(client, location=point(1), started_at=iso(began))
    sessions = app.extensions["gridapi"].sessions
    now = datetime.now(UTC)

    def run(at: datetime) -> dict:
        with sessions.begin() as session:
            return thin_tracks(session, at, 30, 180)

    assert run(now) == {"ended": 0, "thinned": 0, "deleted": 0, "presence_cleared": 0}
    assert run(now + timedelta(days=31)) == {
        "ended": 1,
        "thinned": 2,
        "deleted": 0,
        "presence_cleared": 1,
    }
    left = ok(client.get(f"/api/v1/patrols/{active['id']}?points=true"))
    assert left["status"] == "ended" and left["thinned_at"] and left["points"] == []
    assert datetime.fromisoformat(left["ended_at"]) == began  # its start: it walked nowhere
    thinned = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))
    assert thinned["points"] == [] and thinned["thinned_at"]
    assert 2 <= len(thinned["track"]["coordinates"]) < len(points)
    for key in ("length_m", "duration_s", "point_count", "grids_crossed"):
        assert thinned[key] == ended[key], key
    late = {"t": iso(began + timedelta(minutes=2)), "lon": 120.605, "lat": 31.305}
    ok(worker.post(f"/api/v1/patrols/{patrol['id']}/points", json={"points": [late]}), 409)
    seen = rows(engine, "SELECT lon, at FROM presence")
    assert seen[0][0] is None and seen[0][1] is not None  # last seen stays, the place goes
    nothing = {"ended": 0, "thinned": 0, "deleted": 0, "presence_cleared": 0}
    assert run(now + timedelta(days=32)) == nothing
    assert run(now + timedelta(days=181)) == {**nothing, "deleted": 2}
    ok(worker.get(f"/api/v1/patrols/{patrol['id']}"), 404)
    ok(client.get(f"/api/v1/patrols/{active['id']}"), 404)
    for table in ("patrols", "patrol_points", "patrol_checkins", "patrol_findings"):
        assert rows(engine, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert ok(client.get(f"/api/v1/cases/{case_id}"))["source"] == "patrol"  # the case stays
    assert run(now + timedelta(days=182)) == nothing


def test_a_patrol_never_ended_is_ended_at_its_last_point_once_it_has_gone_silent(
    app, worker, world, engine
):
    """A patrol never ended (the phone died, the worker left) kept its raw points, the
    worker's exact whereabouts, for the 180 days of retention instead of the 30 of raw
    tracks. One that has heard nothing for the raw period is ended at its walk's last point
    and thinned; one still heard from is left alone."""
    patrol, began = started_an_hour_ago(worker)
    points = walk(began + timedelta(minutes=1), n=41)  # its last point at began + 21 min
    upload(worker, patrol["id"], points)
    sessions = app.extensions["gridapi"].sessions
    now = datetime.now(UTC)
    last = began + timedelta(minutes=21)

    def run(at: datetime, raw_days: float) -> dict:
        with sessions.begin() as session:
            return thin_tracks(session, at, raw_days, 180)

    # heard from within the raw period (its last point 39 minutes ago, the period an hour)
    assert run(now, 1 / 24)["ended"] == 0
    assert ok(worker.get(f"/api/v1/patrols/{patrol['id']}"))["status"] == "active"
    assert rows(engine, "SELECT count(*) FROM patrol_points") == [(41,)]
    # silent for longer than the period: ended where the walk stopped, raw points gone
    assert run(now + timedelta(days=31), 30) == {
        "ended": 1,
        "thinned": 1,
        "deleted": 0,
        "presence_cleared": 0,
    }
    got = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))
    assert got["status"] == "ended" and got["thinned_at"] and got["points"] == []
    assert datetime.fromisoformat(got["ended_at"]) == last
    assert got["duration_s"] == 21 * 60
    assert rows(engine, "SELECT count(*) FROM patrol_points") == [(0,)]
    # the worker may start another
    assert start(worker)["status"] == "active"


@pytest.mark.parametrize("days", ["-1", "0"])
def test_a_retention_that_keeps_no_track_stops_the_worker_before_it_deletes_any(
    app, worker, world, engine, settings, days
):
    """GRIDAPI_TRACK_RETENTION_DAYS=-1 (a typo, or "off" meant as -1) made the worker delete
    every patrol, the one still being walked too; it stops start-up now, naming the variable."""
    from click.testing import CliRunner

    from gridapi.cli import main

    patrol, began = started_an_hour_ago(worker)
    upload(worker, patrol["id"], walk(began + timedelta(minutes=1), n=5))
    env = {
        "GRIDAPI_DATABASE_URL": settings.database_url,
        "GRIDAPI_DATA_DIR": settings.data_dir,
        "GRIDAPI_TRACK_RETENTION_DAYS": days,
    }
    result = CliRunner().invoke(main, ["worker", "--once"], env=env, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert f"GRIDAPI_TRACK_RETENTION_DAYS={days}: at least 1" in result.output
    assert "tracks:" not in result.output  # no job ran
    kept = ok(worker.get(f"/api/v1/patrols/{patrol['id']}?points=true"))
    assert kept["status"] == "active" and len(kept["points"]) == 5


@pytest.mark.parametrize("due", ["thinned", "deleted"])
def test_two_workers_at_once_thin_or_delete_a_track_once(app, worker, world, engine, due):
    """The tracks job read its patrols without a lock: a second worker at the same moment read
    them too (the first had not committed), waited for the first's deletion, then thinned the
    patrol again or counted it deleted again (PostgreSQL): every track counted twice, and a
    thinned patrol written twice."""
    from gridapi.db import in_write_transaction

    from ..races import send_while_uncommitted

    patrol, began = started_an_hour_ago(worker)
    upload(worker, patrol["id"], walk(began + timedelta(minutes=1), n=41))
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    later = datetime.now(UTC) + timedelta(days=31 if due == "thinned" else 181)
    sessions = app.extensions["gridapi"].sessions
    expected = {"ended": 0, "thinned": 0, "deleted": 0, "presence_cleared": 0}
    with sessions() as first:  # a worker's tracks job, not committed
        assert thin_tracks(first, later, 30, 180) == {**expected, due: 1}
        second = send_while_uncommitted(
            engine,
            first,
            "patrol_points",
            lambda: in_write_transaction(sessions, lambda s: thin_tracks(s, later, 30, 180)),
            waits_in="",  # any statement of the second waiting for the first's locks
        )
    assert second == expected
    version = rows(engine, f"SELECT version FROM patrols WHERE id = {patrol['id']}")
    assert version == ([(ended["version"] + 1,)] if due == "thinned" else [])  # thinned once


def test_a_patrol_started_offline_belongs_to_the_grid_of_the_day_it_started(
    accounts, world, engine, app
):
    """`grid_code` is the worker's primary grid *when it started*: a patrol started last
    night offline and uploaded after the roster changed at midnight is A1's, where the
    worker was, not A2's (the roster of the day it was sent)."""
    from gridapi import clock

    mover = accounts.client("mover", "grid_worker", grids=[A1])
    mover_id = accounts.ids["mover"]
    today = clock.today()
    with engine.begin() as conn:  # on A1 for a month until yesterday; on A2 from today
        conn.execute(
            text(
                "UPDATE grid_assignments SET valid_from = :start, valid_to = :end "
                "WHERE user_id = :user"
            ),
            {"start": today - timedelta(days=30), "end": today, "user": mover_id},
        )
        conn.execute(
            text(
                "INSERT INTO grid_assignments "
                "(user_id, grid_code, county_code, is_primary, valid_from) "
                "VALUES (:user, :grid, :county, :primary, :start)"
            ),
            {"user": mover_id, "grid": A2, "county": A2[:6], "primary": True, "start": today},
        )
    zone = ZoneInfo(app.extensions["gridapi"].settings.timezone)
    last_night = datetime.combine(today, datetime.min.time(), tzinfo=zone) - timedelta(hours=1)
    patrol = start(mover, started_at=iso(last_night))
    assert (patrol["grid"], patrol["region_code"]) == (A1, COMMUNITY_A)
    ok(mover.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    assert start(mover)["grid"] == A2  # a patrol started today is A2's


def test_a_finding_from_a_fast_phone_clock_is_corrected_by_its_date_header(worker, world, engine):
    """A finding's occurred_at by a clock 90 minutes fast was refused as lying in the future;
    with the phone's Date header it is moved to the server's clock (docs/cases.md)."""
    from werkzeug.http import http_date

    patrol, _ = started_an_hour_ago(worker)
    url = f"/api/v1/patrols/{patrol['id']}/findings"
    phone_now = datetime.now(UTC) + timedelta(minutes=90)
    report = {
        "category": "0101",
        "description": "路灯损坏",
        "location": point(0.5),
        "occurred_at": iso(phone_now - timedelta(minutes=2)),
    }
    assert "occurred_at" in ok(worker.post(url, json=report), 422)["errors"]["json"]
    case = ok(worker.post(url, json=report, headers={"Date": http_date(phone_now)}), 201)["case"]
    occurred = datetime.fromisoformat(case["occurred_at"])
    assert abs(occurred - (datetime.now(UTC) - timedelta(minutes=2))) < timedelta(seconds=5)
    assert rows(engine, "SELECT count(*) FROM cases") == [(1,)]


def _stored_times(engine, patrol_id: int) -> dict[str, list[datetime]]:  # type: ignore[no-untyped-def]
    def utc(value):  # type: ignore[no-untyped-def]
        value = datetime.fromisoformat(value) if isinstance(value, str) else value  # SQLite
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    points = rows(
        engine, "SELECT recorded_at FROM patrol_points WHERE patrol_id = :p ORDER BY 1", p=patrol_id
    )
    checkins = rows(engine, "SELECT at FROM patrol_checkins WHERE patrol_id = :p", p=patrol_id)
    return {"points": [utc(t) for (t,) in points], "checkins": [utc(t) for (t,) in checkins]}


def test_a_patrol_by_a_phone_two_hours_fast_is_kept_on_the_servers_clock(worker, world, engine):
    """A phone whose clock ran two hours ahead could not start its patrol: `started_at`
    lay in the future (422), and the walk it had recorded offline was lost. Its Date header
    says how fast it is: the patrol keeps that error and moves its start, points, check-ins
    and end by it. Every later request of the patrol is moved by the same figure, whatever
    its own Date says, so that points sent again are the points stored (docs/patrols.md)."""
    from werkzeug.http import http_date

    ahead = timedelta(hours=2)
    now = datetime.now(UTC).replace(microsecond=0)
    phone_began = now + ahead - timedelta(minutes=30)  # by the phone's clock
    body = {"started_at": iso(phone_began)}
    refused = ok(worker.post("/api/v1/patrols", json=body), 422)
    assert "started_at" in refused["errors"]["json"]
    patrol = ok(
        worker.post("/api/v1/patrols", json=body, headers={"Date": http_date(now + ahead)}), 201
    )
    assert abs(patrol["clock_offset_s"] + 7200) <= 2, patrol["clock_offset_s"]
    began = datetime.fromisoformat(patrol["started_at"])
    assert abs(began - (now - timedelta(minutes=30))) <= timedelta(seconds=2)
    pid = patrol["id"]
    url = f"/api/v1/patrols/{pid}"

    points = walk(phone_began + timedelta(minutes=1))
    first = ok(worker.post(f"{url}/points", json={"points": points}))
    assert (first["accepted"], first["rejected"]) == (21, 0)
    # Sent again later, with a Date some seconds on (the network): the same 21 points.
    later = {"Date": http_date(now + ahead + timedelta(seconds=37))}
    again = ok(worker.post(f"{url}/points", json={"points": points}, headers=later))
    assert (again["accepted"], again["duplicates"], again["point_count"]) == (0, 21, 21)
    stored = _stored_times(engine, pid)
    offset = timedelta(seconds=patrol["clock_offset_s"])
    assert stored["points"][0] == datetime.fromisoformat(points[0]["t"]) + offset
    assert stored["points"][-1] < now

    at = {"at": iso(phone_began + timedelta(minutes=20)), "place": "村委会"}
    checkin = ok(worker.post(f"{url}/checkins", json=at), 201)
    assert datetime.fromisoformat(checkin["at"]) == datetime.fromisoformat(at["at"]) + offset
    assert ok(worker.post(f"{url}/checkins", json=at, headers=later), 201)["id"] == checkin["id"]
    assert len(_stored_times(engine, pid)["checkins"]) == 1

    end = {"ended_at": iso(phone_began + timedelta(minutes=29))}
    ended = ok(worker.post(f"{url}/end", json=end))
    assert ended["duration_s"] == 29 * 60
    assert datetime.fromisoformat(ended["ended_at"]) < now
    assert ok(worker.post(f"{url}/end", json=end, headers=later))["ended_at"] == ended["ended_at"]


def test_a_start_retried_after_the_phone_clock_was_corrected_gets_its_answer(worker, world):
    """A phone two hours fast started its patrol (its Date said so), lost the answer and
    sent the start again once its clock was corrected: `started_at` lay in the future by
    the retry's clock, and the 422 left the phone without the patrol it had started (and
    409 "an active patrol" for a new one). The retry gets the first answer."""
    from werkzeug.http import http_date

    now = datetime.now(UTC).replace(microsecond=0)
    body = {"started_at": iso(now + timedelta(hours=2) - timedelta(minutes=30))}
    key = {"Idempotency-Key": "start-1"}
    first = worker.post(
        "/api/v1/patrols", json=body, headers={**key, "Date": http_date(now + timedelta(hours=2))}
    )
    assert first.status_code == 201, first.get_json()
    again = worker.post("/api/v1/patrols", json=body, headers=key)
    assert again.status_code == 201, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    # Without the key it is a new start, checked as one.
    refused = worker.post("/api/v1/patrols", json=body)
    assert refused.status_code == 422 and "started_at" in refused.get_json()["errors"]["json"]


def test_a_patrol_by_a_phone_set_back_lasts_as_long_as_it_was_walked(worker, world, engine):
    """A phone set three hours back started a patrol ten minutes ago by its clock, and the
    worker ended it without a time (now, by the server): it lasted 3 h 10 min in the monthly
    figures, and began at dawn. With the phone's Date it began ten minutes ago."""
    from werkzeug.http import http_date

    behind = timedelta(hours=3)
    now = datetime.now(UTC).replace(microsecond=0)
    phone = {"Date": http_date(now - behind)}
    body = {"started_at": iso(now - behind - timedelta(minutes=10))}
    patrol = ok(worker.post("/api/v1/patrols", json=body, headers=phone), 201)
    assert abs(patrol["clock_offset_s"] - 3 * 3600) <= 2
    ended = ok(worker.post(f"/api/v1/patrols/{patrol['id']}/end", json={}))
    assert 600 <= ended["duration_s"] <= 610, ended["duration_s"]


def test_a_patrol_started_without_a_date_takes_the_phones_times_as_written(worker, world):
    """No Date (or one within a minute of the server's): nothing is moved, as before."""
    from werkzeug.http import http_date

    patrol, began = started_an_hour_ago(worker)
    assert patrol["clock_offset_s"] == 0
    assert datetime.fromisoformat(patrol["started_at"]) == began
    # A Date on a later request does not move the patrol's times: its start's did not.
    points = walk(began + timedelta(minutes=1), n=3)
    fast = {"Date": http_date(datetime.now(UTC) + timedelta(hours=2))}
    url = f"/api/v1/patrols/{patrol['id']}"
    assert ok(worker.post(f"{url}/points", json={"points": points}, headers=fast))["accepted"] == 3
    end = {"ended_at": iso(began + timedelta(minutes=30))}
    ended = ok(worker.post(f"{url}/end", json=end, headers=fast))
    assert (ended["ended_at"], ended["clock_offset_s"]) == (end["ended_at"], 0)
