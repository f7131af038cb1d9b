"""Point routing: which grid, and which regions, are responsible for a point.

Answers come from an in-process index over the grids in service (shapely STRtree over
prepared geometries, vectorised for batches). The database stays the source of truth: every
process rebuilds its index when the generation counter in ``index_generations`` moves, and
when the county's date changes (the regions are those valid that day).

Semantics, in order:
1. *covers*: a grid answers for a point inside it or on its boundary (edge or vertex);
2. tie-break when several grids cover the point: a grid whose interior holds the point
   ("inside") beats grids that only touch it ("boundary"); then the lowest grid code wins;
3. a point no grid covers snaps to the nearest grid within the snap distance (geodesic
   metres; ties again to the lowest code), method "snapped";
4. otherwise no grid (method "none") and the regions are the smallest region whose known
   boundary covers the point, and its ancestors.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np
import shapely
from shapely.strtree import STRtree
from sqlalchemy import func, select, text
from sqlalchemy.engine import Engine

from .. import clock
from ..codes import LEVEL_DEPTH, ancestor_prefix_codes, subtree_prefix
from ..db import sqlite_write_intent
from ..geo.geodesy import distance_m, metres_per_degree, metres_to_degrees
from ..jsonio import dumps_bytes
from ..models import Grid, Region
from ..scope import Scope
from .regions import valid_on

log = logging.getLogger(__name__)

INSIDE, BOUNDARY, SNAPPED, NONE = "inside", "boundary", "snapped", "none"
_METHOD_NAMES = (INSIDE, BOUNDARY, SNAPPED, NONE)
_NO_CANDIDATES = np.empty(0, dtype=np.int64)
# Beyond this the ground-nearest grid is not looked for (the local plane no longer holds,
# and every grid of a county may be a candidate): the nearest in degrees answers.
_NEAREST_REFINED_METRES = 50_000.0


@dataclass(frozen=True)
class Match:
    """The answer for one point: grid index (-1 for none), method, snap distance."""

    grid: int
    method: str
    distance_m: float | None = None


class IndexSnapshot:
    """An immutable index of the grids in service at one generation."""

    def __init__(
        self,
        generation: int,
        rows: list[Any],
        regions: dict[str, dict[str, Any]],
        region_shapes: list[tuple[str, Any]],
        snap_meters: float,
        day: date | None = None,
    ) -> None:
        self.generation = generation
        self.snap_meters = snap_meters
        #: The county's date whose regions ``regions`` holds (periods are by day).
        self.day = day
        self.built_at = time.time()
        # Rows arrive ordered by code, so a lower index is a lower code: the tie-break.
        self.geoms = (
            np.array([r[-1] for r in rows], dtype=object) if rows else np.empty(0, dtype=object)
        )
        if len(self.geoms):
            self.geoms = shapely.from_wkb(self.geoms)
            # A grid with an empty geometry covers nothing, and its bounds (NaN) would break
            # the lattice: left out (imports no longer store one; older versions may hold it).
            keep = ~shapely.is_empty(self.geoms)
            if not keep.all():
                rows = [row for row, kept in zip(rows, keep.tolist(), strict=True) if kept]
                self.geoms = self.geoms[keep]
            shapely.prepare(self.geoms)
        self.tree = STRtree(self.geoms)
        self.regions = regions
        chains: dict[str, list[dict[str, Any]]] = {}
        self.grids: list[dict[str, Any]] = []
        self.chains: list[list[dict[str, Any]]] = []
        for grid_id, code, name, gtype, community, version_id, _ in rows:
            self.grids.append(
                {
                    "id": grid_id,
                    "code": code,
                    "name": name,
                    "type": gtype,
                    "community_code": community,
                    "version_id": version_id,
                }
            )
            if community not in chains:
                chains[community] = region_chain(community, regions)
            self.chains.append(chains[community])
        region_shapes.sort(key=lambda item: (-LEVEL_DEPTH[regions[item[0]]["level"]], item[0]))
        self.region_codes = [code for code, _ in region_shapes]
        region_geoms = np.array([g for _, g in region_shapes], dtype=object)
        if len(region_geoms):
            shapely.prepare(region_geoms)
        self.region_geoms = region_geoms
        self.region_tree = STRtree(region_geoms)
        self._encoded: dict[int, bytes] = {}
        self._by_code: dict[str, int] | None = None
        self._build_cells()
        self._build_county_trees()

    def __len__(self) -> int:
        return len(self.grids)

    def grid_name(self, code: str, version_id: int | None = None) -> str | None:
        """Return the name of the grid in service with ``code`` (and of ``version_id``, when
        given), or None."""
        if self._by_code is None:
            self._by_code = {g["code"]: i for i, g in enumerate(self.grids)}
        index = self._by_code.get(code)
        if index is None:
            return None
        grid = self.grids[index]
        if version_id is not None and grid["version_id"] != version_id:
            return None
        return grid["name"]

    def _build_cells(self) -> None:
        """Index grids by a uniform lattice of cells about one grid wide.

        A single lookup then finds its candidates with two divisions and a dictionary
        lookup instead of building a shapely point and walking the STRtree: at 200,000 grids
        that halves the time of a lookup. Candidates are every grid whose bounding box meets
        the point's cell, so the answers are those of the tree.
        """
        self._cells: dict[int, np.ndarray] = {}
        if not len(self.grids):
            return
        bounds = shapely.bounds(self.geoms)
        x0, y0 = float(bounds[:, 0].min()), float(bounds[:, 1].min())
        x1, y1 = float(bounds[:, 2].max()), float(bounds[:, 3].max())
        size = float(
            max(
                np.median(bounds[:, 2] - bounds[:, 0]), np.median(bounds[:, 3] - bounds[:, 1]), 1e-9
            )
        )
        while ((x1 - x0) / size + 1) * ((y1 - y0) / size + 1) > 4_000_000:
            size *= 2  # bound the lattice for very spread-out grid sets
        self._x0, self._y0, self._size = x0, y0, size
        self._nx = int((x1 - x0) // size) + 1
        self._ny = int((y1 - y0) // size) + 1
        ix0 = ((bounds[:, 0] - x0) // size).astype(np.int64)
        ix1 = ((bounds[:, 2] - x0) // size).astype(np.int64)
        iy0 = ((bounds[:, 1] - y0) // size).astype(np.int64)
        iy1 = ((bounds[:, 3] - y0) // size).astype(np.int64)
        cells: dict[int, list[int]] = {}
        for i, (a, b, c, d) in enumerate(
            zip(ix0.tolist(), ix1.tolist(), iy0.tolist(), iy1.tolist(), strict=True)
        ):
            for cy in range(c, d + 1):
                row = cy * self._nx
                for cx in range(a, b + 1):
                    cells.setdefault(row + cx, []).append(i)
        self._cells = {k: np.array(v, dtype=np.int64) for k, v in cells.items()}

    def _candidates(self, lon: float, lat: float) -> np.ndarray:
        if not self._cells:
            return _NO_CANDIDATES
        cx = (lon - self._x0) // self._size
        cy = (lat - self._y0) // self._size
        if cx < 0 or cy < 0 or cx >= self._nx or cy >= self._ny:
            return _NO_CANDIDATES
        return self._cells.get(int(cy) * self._nx + int(cx), _NO_CANDIDATES)

    def locate(self, lon: float, lat: float) -> Match:
        """Return the match for one WGS-84 point."""
        cand = self._candidates(lon, lat)
        if cand.size:
            geoms = self.geoms[cand]
            # Interior first: most points are inside exactly one grid, so one predicate pass
            # usually decides; the boundary pass runs only for points on edges or in gaps.
            inner = shapely.contains_xy(geoms, lon, lat)
            if inner.any():
                return Match(int(cand[inner].min()), INSIDE)
            hit = shapely.intersects_xy(geoms, lon, lat)
            if hit.any():
                return Match(int(cand[hit].min()), BOUNDARY)
        return self._snap(lon, lat)

    def locate_many(
        self, lons: np.ndarray, lats: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (grid index or -1, method code, snap distance or NaN) arrays for points.

        Method codes index ``("inside", "boundary", "snapped", "none")``.
        """
        n = len(lons)
        grid = np.full(n, -1, dtype=np.int64)
        method = np.full(n, 3, dtype=np.int8)
        dist = np.full(n, np.nan)
        if n == 0:
            return grid, method, dist
        if len(self.grids):
            inp, tre = self.tree.query(shapely.points(lons, lats))
            none = len(self.grids)
            for code, predicate in ((0, shapely.contains_xy), (1, shapely.intersects_xy)):
                open_pairs = grid[inp] < 0
                inp, tre = inp[open_pairs], tre[open_pairs]
                if not inp.size:
                    break
                hit = predicate(self.geoms[tre], lons[inp], lats[inp])
                best = np.full(n, none, dtype=np.int64)
                np.minimum.at(best, inp[hit], tre[hit])
                found = best < none
                grid[found] = best[found]
                method[found] = code
        open_points = np.flatnonzero(grid < 0)
        if open_points.size and len(self.grids) and self.snap_meters > 0:
            # One tree query for all of them first: a point with no grid within the snap
            # distance (a batch of fixes at 0°, 0°, far from every grid) needs no search of
            # its own, which cost ≈ 0.1 ms a point (10,000 such points: 1 s of a batch).
            radii = np.array(
                [metres_to_degrees(self.snap_meters, float(lats[i])) for i in open_points]
            )
            near, _ = self.tree.query(
                shapely.points(lons[open_points], lats[open_points]),
                predicate="dwithin",
                distance=radii,
            )
            open_points = open_points[np.unique(near)]
        else:  # no grid, or no snapping: no point snaps
            open_points = open_points[:0]
        for i in open_points:
            match = self._snap(float(lons[i]), float(lats[i]))
            grid[i] = match.grid
            method[i] = _METHOD_NAMES.index(match.method)
            if match.distance_m is not None:
                dist[i] = match.distance_m
        return grid, method, dist

    def _snap(self, lon: float, lat: float) -> Match:
        if not len(self.grids) or self.snap_meters <= 0:
            return Match(-1, NONE)
        point = shapely.points(lon, lat)
        radius = metres_to_degrees(self.snap_meters, lat)
        cand = self.tree.query(point, predicate="dwithin", distance=radius)
        best: tuple[float, int] | None = None
        # The nearest point of a grid, found in degrees, is not the nearest on the ground
        # (a degree of longitude is shorter): on slanted edges the distance came out up to
        # 1.2 % long and points within the snap distance were refused. Found in a local
        # plane of metres around the point instead.
        kx, ky = metres_per_degree(lat)

        def to_plane(c: np.ndarray) -> np.ndarray:
            return np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky])

        origin = shapely.points(0.0, 0.0)
        for i in sorted(int(c) for c in cand):
            nearest = shapely.shortest_line(shapely.transform(self.geoms[i], to_plane), origin)
            px, py = nearest.coords[0]
            x, y = lon + px / kx, lat + py / ky
            d = distance_m(lon, lat, x, y)
            if d <= self.snap_meters and (best is None or d < best[0]):
                best = (d, i)
        if best is None:
            return Match(-1, NONE)
        return Match(best[1], SNAPPED, round(best[0], 2))

    def nearest_grid(self, lon: float, lat: float) -> int:
        """Return the index of the grid nearest to the point on the ground (ties: the lowest
        code), however far; -1 when there is no grid.

        The tree's nearest is nearest in degrees, and a degree of longitude is shorter than
        one of latitude (95 km against 111 km at 31° N). Every grid nearer on the ground than
        the one nearest in degrees lies within that one's distance, so those are compared in
        a local plane of metres, as snapping does. A point thousands of kilometres away (a
        phone without a fix) has no meaningful nearest: the tree's answer stands there.
        """
        if not len(self.grids):
            return -1
        point = shapely.points(lon, lat)
        first = int(self.tree.nearest(point))
        kx, ky = metres_per_degree(lat)

        def to_plane(c: np.ndarray) -> np.ndarray:
            return np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky])

        origin = shapely.points(0.0, 0.0)
        reach = float(shapely.distance(shapely.transform(self.geoms[first], to_plane), origin))
        if reach > _NEAREST_REFINED_METRES:
            return first
        cand = np.sort(
            self.tree.query(point, predicate="dwithin", distance=metres_to_degrees(reach, lat))
        )
        if cand.size <= 1:
            return first
        planar = shapely.transform(self.geoms[cand], to_plane)
        return int(cand[int(np.argmin(shapely.distance(planar, origin)))])

    def _build_county_trees(self) -> None:
        """Index, per city and per province, the grids of the counties under it (a tree each).

        ``nearest_county`` then searches a few grids near the point instead of measuring the
        distance to every grid of the city (O(grids) per city-level report).
        """
        self._county_trees: dict[str, tuple[np.ndarray, STRtree]] = {}
        known = {c for c, r in self.regions.items() if r["level"] == "county"}
        if not known or not len(self.grids):
            return
        county_digits = np.array([g["community_code"] for g in self.grids], dtype="U6")
        placed = np.flatnonzero(np.isin(county_digits, sorted(c[:6] for c in known)))
        for digits in (2, 4):  # a province's subtree prefix, a city's
            keys, group = np.unique(county_digits[placed].astype(f"U{digits}"), return_inverse=True)
            order = np.argsort(group, kind="stable")  # stable: ascending grid indices kept
            bounds = np.searchsorted(group[order], np.arange(len(keys) + 1))
            for k, key in enumerate(keys.tolist()):
                under = placed[order[bounds[k] : bounds[k + 1]]]  # a lower index: a lower code
                self._county_trees[key] = (under, STRtree(self.geoms[under]))

    def nearest_county(self, lon: float, lat: float, code: str) -> str | None:
        """Return the county under region ``code`` (a city or a province) nearest the point:
        the county of the grid in service under ``code`` nearest on the ground (ties to the
        lowest code); without such a grid, the county of the lowest code under it; None when
        no county is under it (a city without counties: 东莞's townships are its own).

        The grids under ``code`` are searched with their tree: the one nearest in degrees
        bounds the ground distance, and only the grids within it are measured in a local
        plane of metres, as ``nearest_grid`` does.
        """
        prefix = subtree_prefix(code)
        counties = sorted(
            c for c, r in self.regions.items() if r["level"] == "county" and c.startswith(prefix)
        )
        if not counties:
            return None
        indexed = self._county_trees.get(prefix)
        if indexed is None:  # not a city's or a province's prefix: measured one by one
            under = self._grids_under_counties(set(counties))
            tree = None
        else:
            under, tree = indexed
        if not under.size:
            return counties[0]
        kx, ky = metres_per_degree(lat)

        def to_plane(c: np.ndarray) -> np.ndarray:
            return np.column_stack([(c[:, 0] - lon) * kx, (c[:, 1] - lat) * ky])

        origin = shapely.points(0.0, 0.0)
        if tree is not None:
            point = shapely.points(lon, lat)
            first = int(under[int(tree.nearest(point))])
            reach = float(shapely.distance(shapely.transform(self.geoms[first], to_plane), origin))
            near = tree.query(point, predicate="dwithin", distance=metres_to_degrees(reach, lat))
            under = under[np.sort(near)] if near.size else np.array([first])
        planar = shapely.transform(self.geoms[under], to_plane)
        nearest = int(under[int(np.argmin(shapely.distance(planar, origin)))])
        return self.grids[nearest]["community_code"][:6].ljust(12, "0")

    def _grids_under_counties(self, known: set[str]) -> np.ndarray:
        """Return the indices of the grids whose county is in ``known``, ascending."""
        return np.array(
            [
                i
                for i, g in enumerate(self.grids)
                if g["community_code"][:6].ljust(12, "0") in known
            ],
            dtype=np.int64,
        )

    def regions_for_point(self, lon: float, lat: float) -> list[dict[str, Any]]:
        """Return the chain of the smallest region whose boundary covers the point, or []."""
        region = self._region_at(lon, lat)
        return region_chain(self.region_codes[region], self.regions) if region >= 0 else []

    def _region_at(self, lon: float, lat: float) -> int:
        """Return the index (into ``region_codes``) of the smallest region whose boundary
        covers the point, or -1."""
        if not self.region_codes:
            return -1
        cand = self.region_tree.query(shapely.points(lon, lat))
        if cand.size:
            cand = np.sort(cand)  # sorted deepest level first, then code
            hit = shapely.intersects_xy(self.region_geoms[cand], lon, lat)
            if hit.any():
                return int(cand[hit][0])
        return -1

    def _regions_at(self, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
        """Return ``_region_at`` for each point, in one tree query and one predicate pass."""
        n = len(lons)
        found = np.full(n, -1, dtype=np.int64)
        if not self.region_codes or n == 0:
            return found
        inp, tre = self.region_tree.query(shapely.points(lons, lats))
        if inp.size:
            hit = shapely.intersects_xy(self.region_geoms[tre], lons[inp], lats[inp])
            none = len(self.region_codes)
            best = np.full(n, none, dtype=np.int64)
            np.minimum.at(best, inp[hit], tre[hit])  # the lowest index: deepest, then code
            covered = best < none
            found[covered] = best[covered]
        return found

    def _grid_head(self, grid: int) -> bytes:
        head = self._encoded.get(grid)
        if head is None:
            head = (
                b'{"grid":'
                + dumps_bytes(self.grids[grid])
                + b',"regions":'
                + dumps_bytes(self.chains[grid])
            )
            self._encoded[grid] = head
        return head

    def _no_grid_head(self, region: int, scope: Scope) -> bytes:
        chain = region_chain(self.region_codes[region], self.regions) if region >= 0 else []
        if not scope.unrestricted:
            chain = [r for r in chain if scope.sees_region(r["code"])]
        return b'{"grid":null,"regions":' + dumps_bytes(chain)

    @staticmethod
    def _tail(lon: float, lat: float, method: str, distance_m: float | None) -> bytes:
        # repr() of a finite float is the shortest round-tripping form, valid JSON.
        tail = (
            b',"point":{"type":"Point","coordinates":['
            + repr(lon).encode()
            + b","
            + repr(lat).encode()
            + b']},"method":"'
            + method.encode()
            + b'"'
        )
        if distance_m is not None:
            tail += b',"distance_m":' + repr(float(distance_m)).encode()
        return tail + b"}"

    def encode_answer(self, match: Match, lon: float, lat: float, scope: Scope) -> bytes:
        """Return the API answer as JSON bytes: grid, regions, point, method[, distance_m].

        A grid outside ``scope`` answers as no grid, with only the regions the scope sees.
        The grid and region part is encoded once per grid and reused: batches answer
        thousands of points with a handful of grids.
        """
        if (
            match.grid >= 0
            and not scope.unrestricted
            and not scope.covers_grid(self.grids[match.grid]["code"])
        ):
            match = Match(-1, NONE)
        if match.grid >= 0:
            head = self._grid_head(match.grid)
        else:
            head = self._no_grid_head(self._region_at(lon, lat), scope)
        return head + self._tail(lon, lat, match.method, match.distance_m)

    def encode_answers(self, lons: np.ndarray, lats: np.ndarray, scope: Scope) -> bytes:
        """Return the batch answer as JSON bytes: ``{"results": [...]}``, one answer per point
        in order, each exactly as ``encode_answer`` gives it for that point alone.

        The regions of the points no grid answers for are looked up for all of them at once:
        one at a time they cost ≈ 30 µs a point, 5 to 10 times a routed point's answer.
        """
        grid, method, dist = self.locate_many(lons, lats)
        if not scope.unrestricted:
            routed = np.unique(grid[grid >= 0])
            seen = np.array(
                [scope.covers_grid(self.grids[g]["code"]) for g in routed.tolist()], dtype=bool
            )
            hidden = routed[~seen]
            if hidden.size:  # a grid outside the scope answers as no grid
                outside = np.isin(grid, hidden)
                grid[outside] = -1
                method[outside] = _METHOD_NAMES.index(NONE)
                dist[outside] = np.nan
        region = np.full(len(grid), -1, dtype=np.int64)
        unrouted = np.flatnonzero(grid < 0)
        if unrouted.size:
            region[unrouted] = self._regions_at(lons[unrouted], lats[unrouted])
        no_grid_heads: dict[int, bytes] = {}
        parts = []
        for g, r, m, d, lon, lat in zip(
            grid.tolist(),
            region.tolist(),
            method.tolist(),
            dist.tolist(),
            lons.tolist(),
            lats.tolist(),
            strict=True,
        ):
            if g >= 0:
                head = self._grid_head(g)
            else:
                head = no_grid_heads.get(r)
                if head is None:
                    head = no_grid_heads[r] = self._no_grid_head(r, scope)
            parts.append(
                head + self._tail(lon, lat, _METHOD_NAMES[m], None if math.isnan(d) else d)
            )
        return b'{"results":[' + b",".join(parts) + b"]}"


def region_chain(code: str, regions: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Return ``code`` and its ancestors as API dicts, smallest first (missing ones skipped)."""
    chain: list[dict[str, Any]] = []
    current: str | None = code if code in regions else None
    if current is None:
        current = next((c for c in ancestor_prefix_codes(code) if c in regions), None)
    seen: set[str] = set()
    while current and current in regions and current not in seen:
        seen.add(current)
        chain.append(regions[current]["api"])
        current = regions[current]["parent_code"]
    return chain


class RoutingIndex:
    """The per-process holder of the current snapshot.

    A request is answered from the snapshot at hand; when the generation has moved (a version
    activated or a region edited by another process) or the county's date has changed
    (midnight), a new snapshot is built in a background thread, one builder at a time, and
    replaces the old one in a single assignment when complete: no request waits for the
    rebuild (≈ 3 s at 200,000 grids) and none sees a half-built index. Only the first build,
    when there is nothing to serve, and a change this process made itself (``invalidate``)
    are waited for.
    """

    def __init__(self, engine: Engine, snap_meters: float, refresh_seconds: float) -> None:
        self.engine = engine
        self.snap_meters = snap_meters
        self.refresh_seconds = refresh_seconds
        self._snapshot: IndexSnapshot | None = None
        self._checked_at = 0.0
        self._check_lock = threading.Lock()  # one generation check at a time
        self._build_lock = threading.Lock()  # one builder at a time
        self._builder: threading.Thread | None = None
        #: Called after each rebuild, once the new snapshot serves (``gridapi serve`` freezes
        #: the garbage collector's view of the new index there: see ``gridapi.serving``).
        self.after_rebuild: Callable[[], None] | None = None
        #: Called with a new, complete snapshot just before it replaces the old one (tests
        #: hold a rebuild there to see requests answered meanwhile).
        self.before_swap: Callable[[IndexSnapshot], None] | None = None

    def invalidate(self) -> None:
        """Bring the index up to date now and wait for it: this process changed what routing
        answers (activated a version, edited a region), and its next request must see it."""
        self.refresh()

    def snapshot(self) -> IndexSnapshot:
        """Return the snapshot to answer with: the current one, while a newer one, if the
        generation or the day has moved, is built in the background."""
        snap = self._snapshot
        if snap is None:
            return self.refresh()  # nothing to serve yet
        if time.monotonic() - self._checked_at < self.refresh_seconds:
            return snap
        if not self._check_lock.acquire(blocking=False):
            return snap  # another request is checking
        try:
            if not self.rebuilding() and self._stale(snap, current_generation_now(self.engine)):
                self._builder = threading.Thread(
                    target=self._rebuild_in_background, name="routing-index", daemon=True
                )
                self._builder.start()
            self._checked_at = time.monotonic()
        finally:
            self._check_lock.release()
        return snap

    def refresh(self) -> IndexSnapshot:
        """Return a snapshot of the generation and the day now, building it if needed and
        waiting for it (and for a background build under way)."""
        with self._build_lock:
            snap = self._snapshot
            generation = current_generation_now(self.engine)
            if snap is None or self._stale(snap, generation):
                snap = self._build(generation)
            self._checked_at = time.monotonic()
            return snap

    def rebuilding(self) -> bool:
        """Return whether a background rebuild is under way."""
        return self._builder is not None and self._builder.is_alive()

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for the background rebuild under way, if any; return whether none is left."""
        builder = self._builder
        if builder is not None:
            builder.join(timeout)
        return not self.rebuilding()

    @staticmethod
    def _stale(snap: IndexSnapshot, generation: int) -> bool:
        # The regions are those valid on the day the snapshot was built: a period that starts
        # (a new name, a new boundary) or ends at midnight changes the answers without any
        # write moving the generation.
        return snap.generation != generation or snap.day != clock.today()

    def _rebuild_in_background(self) -> None:
        try:
            with self._build_lock:
                generation = current_generation_now(self.engine)
                snap = self._snapshot
                if snap is None or self._stale(snap, generation):
                    self._build(generation)
        except Exception:  # the old snapshot keeps serving; the next check tries again
            log.exception("routing index rebuild failed; the previous index still serves")

    def _build(self, generation: int) -> IndexSnapshot:
        """Build the snapshot of ``generation`` and put it in service (the build lock held)."""
        started = time.perf_counter()
        token = sqlite_write_intent.set(False)
        try:
            snap = build_snapshot(self.engine, generation, self.snap_meters)
        finally:
            sqlite_write_intent.reset(token)
        if self.before_swap is not None:
            self.before_swap(snap)
        self._snapshot = snap  # one assignment: a request has the old one or the new one
        self._checked_at = time.monotonic()
        log.info(
            "routing index generation %s: %d grids in %.2f s",
            generation,
            len(snap),
            time.perf_counter() - started,
        )
        if self.after_rebuild is not None:
            self.after_rebuild()
        return snap


def current_generation_now(engine: Engine) -> int:
    """Return ``current_generation`` read on a plain connection of its own: on SQLite a write
    request's BEGIN IMMEDIATE here would wait on the request's own write lock."""
    token = sqlite_write_intent.set(False)
    try:
        return current_generation(engine)
    finally:
        sqlite_write_intent.reset(token)


def current_generation(engine: Engine) -> int:
    """Return the generation of the grids in service."""
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT generation FROM index_generations WHERE name = 'grids'")
        ).scalar()
    return int(value or 0)


def build_snapshot(engine: Engine, generation: int, snap_meters: float) -> IndexSnapshot:
    """Load the grids in service and the regions valid today and index them."""
    today = clock.today()
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Grid.id,
                Grid.code,
                Grid.name,
                Grid.type,
                Grid.community_code,
                Grid.version_id,
                func.ST_AsBinary(Grid.geom),
            )
            .where(Grid.in_service.is_(True))
            .order_by(Grid.code)
        ).all()
        region_rows = conn.execute(
            select(
                Region.code,
                Region.name,
                Region.level,
                Region.parent_code,
                func.ST_AsBinary(Region.boundary),
            ).where(valid_on(today))
        ).all()
    regions: dict[str, dict[str, Any]] = {}
    shapes: list[tuple[str, Any]] = []
    for code, name, level, parent, wkb in region_rows:
        regions[code] = {
            "level": level,
            "parent_code": parent,
            "api": {"code": code, "name": name, "level": level},
        }
        if wkb is not None:
            shapes.append((code, shapely.from_wkb(bytes(wkb))))
    return IndexSnapshot(
        generation,
        [tuple(r[:-1]) + (bytes(r[-1]),) for r in rows],
        regions,
        shapes,
        snap_meters,
        day=today,
    )
