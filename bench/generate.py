"""Scale data: a synthetic city of any size, straight into PostGIS or SpatiaLite.

``bench/generate --engine postgis --grids 50000 --persons 1000000 --cases 1000000`` builds:

1. the grid set and its regions of every level (``bench/synthetic.py``), migrated and loaded;
2. houses (a few per grid, each at a point inside its grid), households (1–3 per house) and
   residents (1–5 per household: a head, a spouse, children, parents … with a realistic age
   and sex mix; valid ID numbers whose birth date and sex digit match the row; phones for most
   adults), ID and phone numbers encrypted per field under ``GRIDAPI_FIELD_KEYS`` and indexed
   under ``GRIDAPI_BLIND_INDEX_KEY`` exactly as ``gridapi.services.register`` writes them;
3. cases with realistic timelines (``bench/cases.py``: ``generate_cases`` with
   ``generate_lifecycle``), through COPY + INSERT … SELECT on PostgreSQL and the same
   columns, computed here, through ``executemany`` on SQLite.

Loading is bulk: COPY on PostgreSQL with the secondary indexes dropped and rebuilt, and
big ``executemany`` transactions with ``PRAGMA synchronous=OFF`` on SQLite. The same seed
(and ``--now``) gives the same rows: the digest printed at the end covers a sample of every
table, decrypted, so it does not depend on the keys or on the fresh nonce of each
ciphertext. Finally the app is started in process on the new database with the same keys,
and a resident (masked) and a case list are read through the API.

Progress and timings go to stderr; the keys, counts, digest and check go to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import shapely
from sqlalchemy import text
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cases as bench_cases  # noqa: E402
import synthetic  # noqa: E402

from gridapi.db import make_engine  # noqa: E402
from gridapi.models.register import address_key  # noqa: E402
from gridapi.personal import age_on, check_digit, mask_id_number, parse_id_number  # noqa: E402
from gridapi.security.fields import (  # noqa: E402
    FieldCipher,
    blind_index,
    new_key_text,
    parse_keys,
)

DEFAULT_DATABASE = "gridapi_bench_generate"
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
ACTOR = "bench:generate"
CHUNK = 50_000
TZ = ZoneInfo(bench_cases.TZ)

# Household sizes 1–5 (mean ≈ 2.6, as in a Chinese city), households per house 1–3.
HOUSEHOLD_SIZES = (0.22, 0.30, 0.24, 0.15, 0.09)
HOUSEHOLDS_PER_HOUSE = (0.72, 0.20, 0.08)
EMPTY_HOUSE_SHARE = 0.08  # vacant or commercial units without a household
PHONE_SHARE = 0.8  # of residents aged 16 or more

SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超兰霞平刚桂英华建国文辉玉梅红鹏飞宇浩然子轩欣怡雨涵梓萱思远佳琪晨曦俊杰嘉怡博文一鸣诗雨"
FOREIGN_NAMES = ("JOHN SMITH", "MARIA GARCIA", "KIM MINJUN", "NGUYEN VAN AN", "ANNA MÜLLER")
ETHNICITIES = {
    "汉族": 0.915,
    "壮族": 0.013,
    "回族": 0.011,
    "满族": 0.011,
    "苗族": 0.009,
    "土家族": 0.009,
    "彝族": 0.008,
    "蒙古族": 0.006,
    "维吾尔族": 0.006,
    "侗族": 0.005,
    "瑶族": 0.007,
}
# Birthplace counties of floating residents (real county codes of other provinces).
ORIGINS = {
    "510104": "四川省成都市锦江区",
    "511602": "四川省广安市广安区",
    "500101": "重庆市万州区",
    "430104": "湖南省长沙市岳麓区",
    "431102": "湖南省永州市零陵区",
    "420102": "湖北省武汉市江岸区",
    "410102": "河南省郑州市中原区",
    "411502": "河南省信阳市浉河区",
    "360102": "江西省南昌市东湖区",
    "340104": "安徽省合肥市蜀山区",
    "341202": "安徽省阜阳市颍州区",
    "370102": "山东省济南市历下区",
    "450102": "广西壮族自治区南宁市兴宁区",
    "520102": "贵州省贵阳市南明区",
    "130102": "河北省石家庄市长安区",
}
ROADS = "人民解放建设中山和平胜利新华幸福文化工业"
RELATIONS_SECOND = {"spouse": 0.85, "child": 0.09, "parent": 0.03, "sibling": 0.02, "other": 0.01}
RELATIONS_LATER = {"child": 0.7, "parent": 0.12, "grandchild": 0.08, "sibling": 0.04, "other": 0.06}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _pick(rng: np.random.Generator, weights: dict[str, float], n: int) -> np.ndarray:
    keys = list(weights)
    p = np.array([weights[k] for k in keys])
    return np.array(keys, dtype=object)[rng.choice(len(keys), n, p=p / p.sum())]


def _cut(sizes: np.ndarray, total: int) -> np.ndarray:
    """Return the shortest prefix of ``sizes`` summing to ``total`` (the last one trimmed)."""
    cum = np.cumsum(sizes)
    k = int(np.searchsorted(cum, total))
    out = sizes[: k + 1].copy()
    out[-1] -= int(cum[k]) - total
    return out


def _points_in(
    geoms: np.ndarray, gi: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return uniform random points inside ``geoms[gi]`` (rejection sampling in the bbox)."""
    shapely.prepare(geoms)
    bounds = shapely.bounds(geoms)
    n = len(gi)
    xs, ys = np.empty(n), np.empty(n)
    todo = np.arange(n)
    while len(todo):
        b = bounds[gi[todo]]
        cx = b[:, 0] + rng.random(len(todo)) * (b[:, 2] - b[:, 0])
        cy = b[:, 1] + rng.random(len(todo)) * (b[:, 3] - b[:, 1])
        ok = shapely.contains_xy(geoms[gi[todo]], cx, cy)
        xs[todo[ok]], ys[todo[ok]] = cx[ok], cy[ok]
        todo = todo[~ok]
    return xs, ys


def _rank_within(keys: Sequence[np.ndarray]) -> np.ndarray:
    """Return, for every row, its rank among the rows with the same key (0, 1, …)."""
    order = np.lexsort(tuple(reversed(keys)))
    sorted_keys = [k[order] for k in keys]
    new = np.ones(len(order), dtype=bool)
    new[1:] = np.logical_or.reduce([s[1:] != s[:-1] for s in sorted_keys])
    start = np.maximum.accumulate(np.where(new, np.arange(len(order)), 0))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order)) - start
    return rank


# --------------------------------------------------------------------------------------------
# Houses, households and residents (plaintext columns; encryption happens while loading).
# --------------------------------------------------------------------------------------------


def generate_register(gs: synthetic.GridSet, persons: int, seed: int, today: date) -> dict:
    """Return column arrays of houses, households and residents (deterministic by seed)."""
    rng = np.random.default_rng([seed, 9001])
    ng = len(gs)
    codes = np.array(gs.codes, dtype=object)
    name_of = {r["code"]: r["name"] for r in gs.regions}

    # Households and their sizes; houses holding them, plus empty ones; houses to grids.
    sizes = _cut(rng.choice(5, int(persons / 2.4) + 16, p=HOUSEHOLD_SIZES) + 1, persons)
    n_hh = len(sizes) if persons else 0
    sizes = sizes[:n_hh]
    per_house = _cut(rng.choice(3, n_hh + 16, p=HOUSEHOLDS_PER_HOUSE) + 1, n_hh)
    occupied = len(per_house) if n_hh else 0
    per_house = per_house[:occupied]
    n_houses = occupied + round(occupied * EMPTY_HOUSE_SHARE)
    weight = rng.lognormal(0.0, 0.7, ng)
    grid_raw = rng.choice(ng, n_houses, p=weight / weight.sum())
    order = np.argsort(grid_raw, kind="stable")  # house ids follow the grid codes
    new_index = np.empty(n_houses, dtype=np.int64)
    new_index[order] = np.arange(n_houses)
    house_grid = grid_raw[order]
    lon, lat = _points_in(gs.geoms, house_grid, rng)
    is_occupied = np.zeros(n_houses, dtype=bool)
    is_occupied[new_index[:occupied]] = True
    use = np.where(
        is_occupied,
        _pick(rng, {"self_occupied": 0.72, "rented": 0.28}, n_houses),
        _pick(rng, {"vacant": 0.6, "commercial": 0.4}, n_houses),
    ).astype(object)
    house_code = codes[house_grid]
    roads = rng.integers(0, len(ROADS) // 2, n_houses)
    numbers = rng.integers(1, 300, n_houses)
    buildings = rng.integers(1, 30, n_houses)
    units = rng.integers(1, 5, n_houses)
    rooms = rng.integers(1, 33, n_houses) * 100 + rng.integers(1, 5, n_houses)
    address = np.array(
        [
            f"{name_of[c[:12]]}{ROADS[2 * r : 2 * r + 2]}路{n}号{b}栋{u}单元{m}室"
            for c, r, n, b, u, m in zip(
                house_code.tolist(),
                roads.tolist(),
                numbers.tolist(),
                buildings.tolist(),
                units.tolist(),
                rooms.tolist(),
                strict=True,
            )
        ],
        dtype=object,
    )
    houses = {
        "id": np.arange(1, n_houses + 1),
        "county_code": np.array([c[:6] for c in house_code.tolist()], dtype=object),
        "region_code": np.array([c[:12] for c in house_code.tolist()], dtype=object),
        "grid_code": house_code,
        "address": address,
        "use": use,
        "lon": lon,
        "lat": lat,
    }

    # Households: in house order, typed by the use of their house.
    hh_house = new_index[np.repeat(np.arange(occupied), per_house)]
    hh_order = np.argsort(hh_house, kind="stable")
    hh_house = hh_house[hh_order]
    sizes = sizes[hh_order]
    rented = use[hh_house] == "rented"
    hh_type = np.where(
        rented,
        _pick(rng, {"floating": 0.7, "rental": 0.3}, n_hh),
        _pick(rng, {"registered": 0.9, "floating": 0.1}, n_hh),
    ).astype(object)
    hh_ids = np.arange(1, n_hh + 1)
    households = {
        "id": hh_ids,
        "county_code": houses["county_code"][hh_house],
        "region_code": houses["region_code"][hh_house],
        "grid_code": house_code[hh_house],
        "number": np.array(
            [f"{c}{i:010d}" for c, i in zip(houses["county_code"][hh_house], hh_ids, strict=True)],
            dtype=object,
        ),
        "house_id": hh_house + 1,
        "type": hh_type,
    }

    # Residents: the head first, then a spouse, children, parents …
    n = int(sizes.sum())
    hh_of = np.repeat(np.arange(n_hh), sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    pos = np.arange(n) - starts[hh_of]
    floating_hh = hh_type[hh_of] != "registered"
    relation = np.where(
        pos == 0,
        "head",
        np.where(pos == 1, _pick(rng, RELATIONS_SECOND, n), _pick(rng, RELATIONS_LATER, n)),
    ).astype(object)
    relation = np.where(
        (hh_type[hh_of] == "rental") & (pos > 0) & (rng.random(n) < 0.5), "tenant", relation
    ).astype(object)
    head_age = np.where(
        floating_hh,
        22 + rng.gamma(2.0, 6.0, n_hh)[hh_of],
        rng.normal(50.0, 14.0, n_hh)[hh_of],
    ).clip(20, 92)
    age = np.select(
        [
            relation == "head",
            relation == "spouse",
            relation == "child",
            relation == "grandchild",
            relation == "parent",
            relation == "sibling",
        ],
        [
            head_age,
            head_age + rng.normal(-2.0, 3.0, n),
            head_age - rng.uniform(22.0, 38.0, n),
            head_age - rng.uniform(45.0, 62.0, n),
            head_age + rng.uniform(22.0, 34.0, n),
            head_age + rng.normal(0.0, 6.0, n),
        ],
        rng.uniform(18.0, 70.0, n),
    )
    age = np.where(age < 0, rng.uniform(0.0, 6.0, n), age).clip(0.0, 101.0)
    head_male = (rng.random(n_hh) < 0.72)[hh_of]
    male = np.where(
        relation == "head",
        head_male,
        np.where(relation == "spouse", ~head_male, rng.random(n) < 0.51),
    )
    today_ord = today.toordinal()
    born_ord = (today_ord - age * 365.2425 - rng.uniform(0.0, 365.0, n)).astype(np.int64)
    born_ord = np.clip(born_ord, date(1920, 1, 1).toordinal(), today_ord - 1)
    population = np.where(floating_hh, "floating", "registered").astype(object)
    extra = rng.random(n)
    population = np.where((population == "registered") & (extra < 0.01), "unregistered", population)
    population = np.where(
        (hh_type[hh_of] == "rental") & (extra < 0.02), "foreign", population
    ).astype(object)
    county = households["county_code"][hh_of]
    origin_keys = np.array(list(ORIGINS), dtype=object)
    origin = np.where(
        population == "floating",
        origin_keys[rng.integers(0, len(origin_keys), n)],
        county,
    ).astype(object)
    # ID numbers: birthplace, birth date, a sequence whose parity is the sex, a check digit;
    # the sequence counts up within (birthplace, birth date, sex), so every number is unique.
    origin_id = np.unique(origin, return_inverse=True)[1]
    rank = _rank_within([origin_id, born_ord, male.astype(np.int64)])
    if rank.max(initial=0) > 490:
        raise ValueError("too many residents share a birthplace and birth date")
    seq = 10 + 2 * rank + male
    has_id = population != "foreign"
    id_number = np.empty(n, dtype=object)
    birth_date = np.empty(n, dtype=object)
    for i, (o, b, s, ok) in enumerate(
        zip(origin.tolist(), born_ord.tolist(), seq.tolist(), has_id.tolist(), strict=True)
    ):
        if ok:
            d = date.fromordinal(b)
            first17 = f"{o}{d:%Y%m%d}{s:03d}"
            id_number[i] = first17 + check_digit(first17)
            birth_date[i] = d
    surnames = np.array(list(SURNAMES), dtype=object)
    family = surnames[rng.integers(0, len(surnames), n_hh)][hh_of]
    own = surnames[rng.integers(0, len(surnames), n)]
    shares_name = np.isin(relation, ["head", "child", "grandchild", "sibling"])
    surname = np.where(shares_name, family, own)
    given_pool = np.array(list(GIVEN), dtype=object)
    g1 = given_pool[rng.integers(0, len(given_pool), n)]
    g2 = np.where(rng.random(n) < 0.7, given_pool[rng.integers(0, len(given_pool), n)], "")
    name = (surname + g1 + g2).astype(object)
    foreign_name = np.array(FOREIGN_NAMES, dtype=object)[rng.integers(0, len(FOREIGN_NAMES), n)]
    name = np.where(has_id, name, foreign_name).astype(object)
    adult = age >= 16
    has_phone = adult & (rng.random(n) < PHONE_SHARE)
    prefixes = rng.choice(np.array(list("3456789")), n)
    tails = rng.integers(0, 10**9, n)
    phone = np.array(
        [
            f"1{p}{t:09d}" if ok else None
            for p, t, ok in zip(prefixes.tolist(), tails.tolist(), has_phone.tolist(), strict=True)
        ],
        dtype=object,
    )
    current = houses["address"][hh_house][hh_of]
    registered_address = np.where(
        population == "floating",
        np.array([ORIGINS.get(o, "") for o in origin.tolist()], dtype=object) + "某村",
        np.where(population == "registered", current, None),
    ).astype(object)
    uid = np.frombuffer(rng.bytes(16 * n), dtype="S16") if n else np.array([], dtype="S16")
    persons_cols = {
        "id": np.arange(1, n + 1),
        "uid": np.array([u.hex() for u in uid.tolist()], dtype=object),
        "county_code": county,
        "region_code": households["region_code"][hh_of],
        "grid_code": households["grid_code"][hh_of],
        "household_id": hh_of + 1,
        "house_id": hh_house[hh_of] + 1,
        "relation": relation,
        "name": name,
        "id_number": id_number,
        "phone": phone,
        "gender": np.where(has_id, np.where(male, "male", "female"), None).astype(object),
        "birth_date": birth_date,
        "ethnicity": np.where(has_id, _pick(rng, ETHNICITIES, n), None).astype(object),
        "population_type": population,
        "current_address": current,
        "registered_address": registered_address,
    }
    return {"houses": houses, "households": households, "persons": persons_cols}


# --------------------------------------------------------------------------------------------
# Writing rows: COPY on PostgreSQL, executemany on SQLite.
# --------------------------------------------------------------------------------------------


class Writer:
    """Bulk rows into one table of either engine, with its secondary indexes rebuilt after."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.pg = engine.dialect.name == "postgresql"
        self.raw = engine.raw_connection()
        self.conn = self.raw.driver_connection
        if self.pg:
            # A bulk statement outlasts the app's statement timeout (GRIDAPI_DB_STATEMENT_TIMEOUT_MS).
            self.conn.execute("SET statement_timeout = 0")
        else:
            # The rows are consistent by construction: no per-row foreign-key lookups.
            self.conn.execute("PRAGMA foreign_keys=OFF")
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute("PRAGMA cache_size=-262144")

    def close(self) -> None:
        if not self.pg:
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
        self.raw.close()

    # Values are converted per engine: COPY text, or what pysqlite and SQLAlchemy store.
    @staticmethod
    def _pg_value(v: Any) -> str:
        t = type(v)
        if t is str:
            return v
        if v is None:
            return "\\N"
        if t is bool:
            return "t" if v else "f"
        if t is float:
            return repr(v)
        if t is datetime or t is date:
            return v.isoformat()
        return str(v)

    @staticmethod
    def _sqlite_value(v: Any) -> Any:
        # What SQLAlchemy stores for UTCDateTime and Date on SQLite; booleans go in as ints.
        t = type(v)
        if t is datetime:
            if v.tzinfo is not UTC:
                v = v.astimezone(UTC)
            return v.replace(tzinfo=None).isoformat(" ", "microseconds")
        if t is date:
            return v.isoformat()
        return v

    def drop_indexes(self, table: str) -> list[str]:
        """Drop the secondary indexes of ``table``; return their definitions."""
        if self.pg:
            with self.conn.cursor() as cur:
                rows = cur.execute(
                    "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.tablename = %s "
                    "AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)",
                    (table,),
                ).fetchall()
                for name, _ in rows:
                    cur.execute(f'DROP INDEX "{name}"')
            return [d for _, d in rows]
        rows = self.conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        for name, _ in rows:
            self.conn.execute(f'DROP INDEX "{name}"')
        return [d for _, d in rows]

    def create_indexes(self, definitions: list[str]) -> None:
        if self.pg:
            with self.conn.cursor() as cur:
                cur.execute("SET maintenance_work_mem = '512MB'")
                for d in definitions:
                    cur.execute(d)
        else:
            for d in definitions:
                self.conn.execute(d)

    def write(
        self,
        table: str,
        columns: str | Sequence[str],
        rows: Iterable[Sequence[Any]],
        *,
        point: str | None = None,
    ) -> int:
        """Insert ``rows``; ``point``: a geometry column filled from the last two values
        of each row (lon, lat), which are not columns themselves."""
        if isinstance(columns, str):
            columns = [c.strip() for c in columns.split(",")]
        count = 0
        if self.pg:
            names = [*columns, point] if point else list(columns)
            with (
                self.conn.cursor() as cur,
                cur.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy,
            ):
                buf = io.StringIO()
                for row in rows:
                    values = row
                    if point:
                        *values, x, y = row
                        values = [*values, f"SRID=4326;POINT({x!r} {y!r})"]
                    buf.write("\t".join(map(self._pg_value, values)))
                    buf.write("\n")
                    count += 1
                    if count % CHUNK == 0:
                        copy.write(buf.getvalue())
                        buf = io.StringIO()
                copy.write(buf.getvalue())
            return count
        marks = ["?"] * len(columns)
        names = list(columns)
        if point:
            names.append(point)
            marks.append("MakePoint(?, ?, 4326)")
        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(marks)})"
        batch: list[tuple[Any, ...]] = []
        for row in rows:
            batch.append(tuple(map(self._sqlite_value, row)))
            if len(batch) == CHUNK:
                self.conn.executemany(sql, batch)
                count += len(batch)
                batch = []
        if batch:
            self.conn.executemany(sql, batch)
            count += len(batch)
        return count

    def commit(self) -> None:
        self.conn.commit()

    def reset_sequence(self, table: str) -> None:
        if self.pg:
            with self.conn.cursor() as cur:
                cur.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                )


def load_register(
    engine: Engine, reg: dict, cipher: FieldCipher, blind_key: bytes, now: datetime
) -> dict[str, float]:
    """Write houses, households and residents (encrypting as they go); return timings."""
    timings: dict[str, float] = {}
    w = Writer(engine)
    try:
        dropped: dict[str, list[str]] = {}
        for table in ("houses", "households", "persons"):
            dropped[table] = w.drop_indexes(table)
        t0 = time.perf_counter()
        h = reg["houses"]
        w.write(
            "houses",
            (
                "id, county_code, region_code, grid_code, address, address_key, use, lon, "
                "lat, routing_method, created_by, created_at, updated_at"
            ),
            (
                (i, c, r, g, a, address_key(a), u, x, y, "given", ACTOR, now, now, x, y)
                for i, c, r, g, a, u, x, y in zip(
                    h["id"].tolist(),
                    h["county_code"].tolist(),
                    h["region_code"].tolist(),
                    h["grid_code"].tolist(),
                    h["address"].tolist(),
                    h["use"].tolist(),
                    h["lon"].tolist(),
                    h["lat"].tolist(),
                    strict=True,
                )
            ),
            point="location",
        )
        timings["houses"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        hh = reg["households"]
        w.write(
            "households",
            (
                "id, county_code, region_code, grid_code, number, house_id, type, created_by, "
                "created_at, updated_at"
            ),
            (
                (*row, ACTOR, now, now)
                for row in zip(
                    *(
                        hh[k].tolist()
                        for k in (
                            "id",
                            "county_code",
                            "region_code",
                            "grid_code",
                            "number",
                            "house_id",
                            "type",
                        )
                    ),
                    strict=True,
                )
            ),
        )
        timings["households"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        w.write(
            "persons",
            (
                "id, uid, county_code, region_code, grid_code, household_id, house_id, "
                "relation, name, id_number_enc, id_number_hmac, phone_enc, phone_hmac, gender, "
                "birth_date, ethnicity, population_type, current_address, registered_address, "
                "current_address_key, registered_address_key, created_by, created_at, updated_at"
            ),
            _person_rows(reg["persons"], cipher, blind_key, now),
        )
        timings["persons (with encryption)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        for table in ("houses", "households", "persons"):
            w.create_indexes(dropped[table])
            w.reset_sequence(table)
        w.commit()
        timings["rebuild indexes"] = time.perf_counter() - t0
    finally:
        w.close()
    return timings


def _person_rows(
    p: dict[str, np.ndarray], cipher: FieldCipher, blind_key: bytes, now: datetime
) -> Iterator[tuple[Any, ...]]:
    encrypt = cipher.encrypt
    for (
        pid,
        uid,
        county,
        region,
        grid,
        household,
        house,
        relation,
        name,
        id_number,
        phone,
        gender,
        birth,
        ethnicity,
        population,
        current,
        registered,
    ) in zip(
        *(
            p[k].tolist()
            for k in (
                "id",
                "uid",
                "county_code",
                "region_code",
                "grid_code",
                "household_id",
                "house_id",
                "relation",
                "name",
                "id_number",
                "phone",
                "gender",
                "birth_date",
                "ethnicity",
                "population_type",
                "current_address",
                "registered_address",
            )
        ),
        strict=True,
    ):
        if id_number is None:
            id_enc = id_hmac = None
        else:
            id_enc = encrypt(id_number, table="persons", column="id_number", row=uid)
            id_hmac = blind_index("id_number", id_number, blind_key)
        if phone is None:
            phone_enc = phone_hmac = None
        else:
            phone_enc = encrypt(phone, table="persons", column="phone", row=uid)
            phone_hmac = blind_index("phone", phone, blind_key)
        yield (
            pid,
            uid,
            county,
            region,
            grid,
            household,
            house,
            relation,
            name,
            id_enc,
            id_hmac,
            phone_enc,
            phone_hmac,
            gender,
            birth,
            ethnicity,
            population,
            current,
            registered,
            None if current is None else address_key(current),
            None if registered is None else address_key(registered),
            ACTOR,
            now,
            now,
        )


# --------------------------------------------------------------------------------------------
# Cases on SQLite: the columns of bench/cases.py's INSERT … SELECT (lifecycle timeline),
# computed in Python.
# --------------------------------------------------------------------------------------------

CASE_COLUMNS = (
    "id, number, county_code, category_code, status, description, source, urgent, severity, "
    "sensitive, parties, attributes, lon, lat, raw_lon, raw_lat, crs, accuracy_m, address, "
    "occurred_at, reported_at, grid_code, grid_version_id, routing_method, snap_distance_m, "
    "unrouted, region_code, township_code, reporter, reporter_name, client_id, "
    "responsible_region_code, department_id, assignee_id, accept_due_at, handle_due_at, "
    "verify_due_at, accepted_at, filed_at, dispatched_at, feedback_at, closed_at, overdue, "
    "overdue_since, supervision, rework_count, extension_count, escalation_count, "
    "reopen_count, extension_request, duplicate_of_id, satisfaction, satisfaction_comment, "
    "rated_at, handling_hours, updated_at, version"
)


def sqlite_case_rows(
    engine: Engine, world: bench_cases.World, n: int, seed: int, now: datetime
) -> tuple[list[tuple[Any, ...]], dict[tuple[str, date], int]]:
    """Return the case rows (in the order PostgreSQL inserts them) and the day counters."""
    cols = bench_cases.generate_cases(world, n, seed, now, lifecycle=True)
    with engine.connect() as conn:
        cats = {
            code: (bool(u), bool(s))
            for code, u, s in conn.execute(text("SELECT code, urgent, sensitive FROM categories"))
        }
        versions = dict(
            conn.execute(text("SELECT code, version_id FROM grids WHERE in_service")).all()
        )
    hour = timedelta(hours=1)

    def at(base: datetime, hours: float | None) -> datetime | None:
        return None if hours is None else base + hours * hour

    reported = [now - timedelta(seconds=s) for s in cols["age_s"].tolist()]
    order = sorted(range(n), key=lambda i: (reported[i], i))
    counters: dict[tuple[str, date], int] = {}
    rows: list[tuple[Any, ...]] = []
    c = {k: v.tolist() for k, v in cols.items()}
    for case_id, i in enumerate(order, start=1):
        r = reported[i]
        county = c["county_code"][i]
        day = r.astimezone(TZ).date()
        seq = counters.get((county, day), 0) + 1
        counters[(county, day)] = seq
        status = c["status"][i]
        stage = bench_cases.STAGES[status]
        grid = c["grid_code"][i]
        filed_h = c["filed_h"][i]
        due_h = c["due_h"][i]
        closed_h = c["closed_h"][i]
        satisfaction = int(c["satisfaction"][i])
        if status in ("closed", "rejected", "cancelled"):
            due = None
        elif status in ("reported", "accepted"):
            due = r + 2 * hour
        else:
            due = at(r, due_h)
        overdue = due is not None and due < now
        urgent, sensitive = cats[c["category_code"][i]]
        rows.append(
            (
                case_id,
                f"{county}-{day:%Y%m%d}-{seq:04d}",
                county,
                c["category_code"][i],
                status,
                bench_cases.DESCRIPTIONS[c["description"][i]],
                c["source"][i],
                urgent,
                "general",
                sensitive,
                "[]",
                "{}",
                c["lon"][i],
                c["lat"][i],
                c["lon"][i],
                c["lat"][i],
                "wgs84",
                10.0,
                f"幸福路 {i % 500 + 1} 号",
                None,
                r,
                grid,
                versions.get(grid) if grid else None,
                "none" if grid is None else "inside",
                None,
                grid is None,
                c["region_code"][i],
                c["township_code"][i],
                c["reporter"][i],
                "",
                str(uuid.UUID(hashlib.md5(str(i).encode()).hexdigest()))
                if c["source"][i] == "third_party"
                else None,
                c["responsible_region_code"][i],
                None,
                None,
                r + 2 * hour,
                at(r, due_h),
                r + timedelta(days=3) if stage == 5 else None,
                r + min(timedelta(minutes=20), (1.0 if filed_h is None else filed_h) / 2 * hour)
                if stage >= 1
                else None,
                at(r, filed_h),
                at(r, c["dispatched_h"][i]),
                at(r, c["feedback_h"][i]),
                at(r, closed_h),
                overdue,
                due if overdue else None,
                c["supervision"][i],
                int(c["rework"][i]),
                int(c["extensions"][i]),
                0,
                0,
                None,
                None,
                satisfaction or None,
                None,
                min(now, r + (closed_h + 2) * hour) if satisfaction > 0 else None,
                c["hours"][i],
                min(now, r + stage * 10 * hour),
                1 + stage,
                c["lon"][i],
                c["lat"][i],
            )
        )
    return rows, counters


def load_cases_sqlite(
    engine: Engine, world: bench_cases.World, n: int, seed: int, now: datetime
) -> dict[str, float]:
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rows, counters = sqlite_case_rows(engine, world, n, seed, now)
    timings["generate cases"] = time.perf_counter() - t0
    w = Writer(engine)
    try:
        t0 = time.perf_counter()
        dropped = w.drop_indexes("cases")
        w.write("cases", CASE_COLUMNS, rows, point="location")
        timings["insert cases"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        w.create_indexes(dropped)
        w.write(
            "case_counters",
            ("county_code", "day", "last"),
            ((county, day, last) for (county, day), last in sorted(counters.items())),
        )
        w.commit()
        timings["rebuild indexes, counters"] = time.perf_counter() - t0
    finally:
        w.close()
    return timings


# --------------------------------------------------------------------------------------------
# The sync change log: its row triggers are paused during the load (the persons trigger
# rewrites the household's entry for every resident), and the log is filled once afterwards
# with what the triggers would have left, one upsert per case and household (as migration
# 0009 fills it for existing rows).
# --------------------------------------------------------------------------------------------

SYNC_TABLES = ("cases", "households", "persons")


@contextlib.contextmanager
def sync_paused(engine: Engine) -> Iterator[None]:
    pg = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        if pg:
            triggers = conn.execute(
                text(
                    "SELECT c.relname, t.tgname FROM pg_trigger t "
                    "JOIN pg_class c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal "
                    "AND t.tgname LIKE 'sync%' AND c.relname = ANY(:tables)"
                ),
                {"tables": list(SYNC_TABLES)},
            ).all()
            for table, name in triggers:
                conn.execute(text(f'ALTER TABLE {table} DISABLE TRIGGER "{name}"'))
        else:
            triggers = conn.execute(
                text(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                    f"AND name LIKE 'sync%' AND tbl_name IN {SYNC_TABLES!r}"
                )
            ).all()
            for name, _ in triggers:
                conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
    try:
        yield
    finally:
        with engine.begin() as conn:
            for a, b in triggers:
                if pg:
                    conn.execute(text(f'ALTER TABLE {a} ENABLE TRIGGER "{b}"'))
                else:
                    conn.exec_driver_sql(b)


def fill_sync_log(engine: Engine) -> None:
    pg = engine.dialect.name == "postgresql"
    txid = "pg_current_xact_id()::text::bigint" if pg else "0"
    now = "now()" if pg else "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    user1 = "CASE WHEN reporter LIKE 'user:%' THEN CAST(substr(reporter, 6) AS INTEGER) END"
    w = Writer(engine)
    try:
        dropped = w.drop_indexes("sync_log")
        for table, entity, u1, u2 in (
            ("cases", "case", user1, "assignee_id"),
            ("households", "household", "NULL", "NULL"),
        ):
            w.conn.execute(
                "INSERT INTO sync_log (txid, entity, entity_id, op, county_code, region_code, "
                f"grid_code, user1, user2, at) SELECT {txid}, '{entity}', id, 'upsert', "
                f"county_code, region_code, grid_code, {u1}, {u2}, {now} FROM {table} "
                "ORDER BY id"
            )
        w.create_indexes(dropped)
        w.commit()
    finally:
        w.close()


def analyze(engine: Engine) -> None:
    """Fresh planner statistics (and, on SQLite, the WAL folded into the file)."""
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        if engine.dialect.name == "postgresql":
            conn.autocommit = True
            conn.execute("SET statement_timeout = 0")
            for table in ("houses", "households", "persons", "sync_log"):
                conn.execute(f"VACUUM ANALYZE {table}")
        else:
            conn.execute("ANALYZE")
            conn.commit()
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        raw.close()


def case_world(url: str, gs: synthetic.GridSet) -> bench_cases.World:
    """The part of bench/cases.py's World that generating cases needs (no accounts)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT code, default_handler, attributes FROM categories "
                "WHERE is_active AND parent_code IS NOT NULL ORDER BY code"
            )
        ).all()
    engine.dispose()
    categories = [
        {"code": code, "handler": (handler or "township").split(":", 1)[0]}
        for code, handler, _ in rows
    ]
    townships = sorted({c[:9] + "000" for c in gs.codes})
    return bench_cases.World(
        url=url,
        gs=gs,
        county=gs.codes[0][:6],
        county_geom=None,
        townships=townships,
        all_townships=townships,
        categories=categories,
    )


# --------------------------------------------------------------------------------------------
# Counting, the digest, and the check through the API.
# --------------------------------------------------------------------------------------------

COUNTED = (
    "regions",
    "grids",
    "houses",
    "households",
    "persons",
    "cases",
    "case_counters",
    "sync_log",
)


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one() for t in COUNTED}


def _norm(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.6f}"
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if isinstance(v, bool):
        return "1" if v else "0"
    return str(v)


def digest(engine: Engine, cipher: FieldCipher, samples: int = 500) -> str:
    """Return a SHA-256 over a sample of every generated table (ID and phone decrypted)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from gridapi.models import Case, Grid, House, Household, Person

    h = hashlib.sha256()
    picks = {
        Grid: ("code", "name", "type", "community_code", "area_m2"),
        House: ("county_code", "region_code", "grid_code", "address", "use", "lon", "lat"),
        Household: ("number", "house_id", "type", "region_code", "grid_code"),
        Person: (
            "uid",
            "household_id",
            "house_id",
            "relation",
            "name",
            "gender",
            "birth_date",
            "ethnicity",
            "population_type",
            "registered_address",
        ),
        Case: (
            "number",
            "status",
            "category_code",
            "grid_code",
            "region_code",
            "responsible_region_code",
            "lon",
            "lat",
            "reported_at",
            "filed_at",
            "closed_at",
            "handle_due_at",
            "satisfaction",
            "rework_count",
        ),
    }
    with Session(engine) as session:
        for model, fields in picks.items():
            total = session.scalar(text(f"SELECT max(id) FROM {model.__tablename__}")) or 0
            step = max(1, total // samples)
            rows = session.scalars(
                select(model).where(model.id % step == 0).order_by(model.id)
            ).all()
            h.update(f"{model.__tablename__}:{len(rows)}\n".encode())
            for row in rows:
                values = [_norm(getattr(row, f)) for f in fields]
                if model is Person:
                    for column in ("id_number", "phone"):
                        stored = getattr(row, f"{column}_enc")
                        values.append(
                            "-"
                            if stored is None
                            else cipher.decrypt(stored, table="persons", column=column, row=row.uid)
                        )
                h.update(("|".join([str(row.id), *values]) + "\n").encode())
    return h.hexdigest()


def check_api(url: str, field_keys: str, blind_key: str) -> str:
    """Start the app on the database with the keys; read a resident and a case list."""
    from sqlalchemy import delete, select

    from gridapi import create_app
    from gridapi.config import Settings
    from gridapi.models import Person, User
    from gridapi.scope import Scope
    from gridapi.security.passwords import random_password
    from gridapi.services.identity import create_user

    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(
            database_url=url,
            data_dir=data_dir,
            field_keys=field_keys,
            blind_index_key=blind_key,
            routing_refresh_seconds=0.0,
            log_level="WARNING",
        )
        t0 = time.perf_counter()
        app = create_app(settings)
        st = app.extensions["gridapi"]
        username = "generate_check"
        started = f"app started in {time.perf_counter() - t0:.1f} s"
        try:
            with st.sessions.begin() as session:
                user = create_user(
                    session,
                    scope=Scope.everything(),
                    actor_rank=None,
                    username=username,
                    password=random_password(),
                    role="admin",
                    phone_key=st.phone_key,
                )
                token = st.tokens.issue(
                    subject=str(user.id), claims={"ver": user.token_version, "role": "admin"}
                )
                person = session.scalars(
                    select(Person)
                    .where(Person.id_number_enc.is_not(None))
                    .order_by(Person.id)
                    .limit(1)
                ).first()
                person_id = person.id if person else None
                plain = (
                    st.cipher.decrypt(
                        person.id_number_enc, table="persons", column="id_number", row=person.uid
                    )
                    if person
                    else None
                )
            client = app.test_client()
            headers = {"Authorization": f"Bearer {token}"}
            parts = [started]
            if person_id is not None:
                t0 = time.perf_counter()
                resp = client.get(f"/api/v1/persons/{person_id}", headers=headers)
                ms = (time.perf_counter() - t0) * 1000
                body = resp.get_json()
                if resp.status_code != 200:
                    raise RuntimeError(f"GET person: HTTP {resp.status_code} {body}")
                parsed = parse_id_number(plain)
                if body.get("id_number") != mask_id_number(plain):
                    raise RuntimeError(f"GET person: id_number {body.get('id_number')!r}")
                expected = (age_on(parsed.birth_date, date.today()), parsed.gender)
                if (body.get("age"), body.get("gender")) != expected:
                    raise RuntimeError(
                        f"GET person: age, gender {body.get('age')!r}, {body.get('gender')!r}"
                    )
                parts.append(
                    f"person {person_id} read in {ms:.0f} ms (id_number {body['id_number']})"
                )
            t0 = time.perf_counter()
            resp = client.get("/api/v1/cases?limit=20", headers=headers)
            ms = (time.perf_counter() - t0) * 1000
            body = resp.get_json()
            if resp.status_code != 200:
                raise RuntimeError(f"GET cases: HTTP {resp.status_code} {body}")
            items = body if isinstance(body, list) else body.get("items", body.get("data", []))
            parts.append(f"case list read in {ms:.0f} ms ({len(items)} cases on the first page)")
            return "; ".join(parts)
        finally:
            with contextlib.suppress(Exception), st.sessions.begin() as session:
                session.execute(delete(User).where(User.username == username))
            st.engine.dispose()


# --------------------------------------------------------------------------------------------
# Main.
# --------------------------------------------------------------------------------------------


def _keys(from_env: bool) -> tuple[str, str]:
    if from_env:
        field_keys = os.environ.get("GRIDAPI_FIELD_KEYS", "")
        blind = os.environ.get("GRIDAPI_BLIND_INDEX_KEY", "")
        if not field_keys or not blind:
            raise SystemExit(
                "--keys-from-env needs GRIDAPI_FIELD_KEYS and GRIDAPI_BLIND_INDEX_KEY set"
            )
        parse_keys(field_keys)  # fail early on a malformed value
        return field_keys, blind
    return new_key_text(1), secrets.token_urlsafe(48)


def _stage(timings: dict[str, float], name: str) -> Callable[[], None]:
    t0 = time.perf_counter()

    def done() -> None:
        timings[name] = time.perf_counter() - t0
        _log(f"  {name}: {timings[name]:.1f} s")

    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Build a synthetic city (grids, regions, houses, households, residents, "
        "cases) into PostGIS or SpatiaLite."
    )
    parser.add_argument("--engine", choices=("postgis", "sqlite"), default="postgis")
    parser.add_argument("--grids", type=int, default=50_000)
    parser.add_argument("--persons", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        help="PostGIS: the database to (re)create, named gridapi_bench_* "
        f"(default {DEFAULT_DATABASE})",
    )
    parser.add_argument(
        "--sqlite",
        default="var/generate.sqlite3",
        help="SQLite: the file to (re)create (default var/generate.sqlite3)",
    )
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("GRIDAPI_BENCH_ADMIN_URL", ADMIN_URL),
        help="PostGIS: a server URL to create the database on (GRIDAPI_BENCH_ADMIN_URL)",
    )
    parser.add_argument(
        "--keys-from-env",
        action="store_true",
        help="encrypt under GRIDAPI_FIELD_KEYS / GRIDAPI_BLIND_INDEX_KEY instead of new keys",
    )
    parser.add_argument(
        "--now",
        default=None,
        help="ISO moment case ages and birth dates count back from (default: today 00:00 "
        "UTC, so runs on the same day give the same rows)",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the check through the API")
    args = parser.parse_args(argv)
    if args.grids < 1 or args.persons < 0 or args.cases < 0:
        parser.error("--grids must be at least 1, --persons and --cases not negative")
    if args.engine == "postgis" and not args.database.startswith("gridapi_bench_"):
        parser.error("--database must be named gridapi_bench_* (it is dropped and recreated)")
    if args.now:
        now = datetime.fromisoformat(args.now)
        now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    else:
        now = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    field_keys, blind = _keys(args.keys_from_env)
    cipher = FieldCipher(parse_keys(field_keys))
    timings: dict[str, float] = {}
    started = time.perf_counter()
    _log(
        f"generate: {args.engine}, {args.grids} grids, {args.persons} persons, "
        f"{args.cases} cases, seed {args.seed}, now {now.isoformat()}"
    )

    done = _stage(timings, "create database")
    if args.engine == "postgis":
        url = synthetic.create_postgres_database(args.admin_url, args.database)
    else:
        path = Path(args.sqlite).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{path}"
    done()
    engine = make_engine(url)
    try:
        done = _stage(timings, "build grids")
        gs = synthetic.build(args.grids, args.seed)
        done()
        done = _stage(timings, "migrate, load grids and regions")
        synthetic.load(engine, gs)
        done()
        done = _stage(timings, "generate register")
        reg = generate_register(gs, args.persons, args.seed, now.date())
        done()
        with sync_paused(engine):
            done = _stage(timings, "load register (encrypting)")
            sub = load_register(engine, reg, cipher, blind.encode(), now)
            done()
            del reg
            _log(f"    {', '.join(f'{k} {v:.1f} s' for k, v in sub.items())}")
            done = _stage(timings, "cases")
            if args.cases:
                world = case_world(url, gs)
                if args.engine == "postgis":
                    sub = bench_cases.load_cases(
                        world, args.cases, args.seed, lifecycle=True, now=now
                    )
                else:
                    sub = load_cases_sqlite(engine, world, args.cases, args.seed, now)
                _log(f"    {', '.join(f'{k} {v:.1f}' for k, v in sub.items())}")
            done()
            done = _stage(timings, "sync log")
            fill_sync_log(engine)
            done()
        done = _stage(timings, "analyze")
        analyze(engine)
        done()
        total = time.perf_counter() - started
        done = _stage(timings, "count and digest")
        found = counts(engine)
        sample_digest = digest(engine, cipher)
        done()
    finally:
        engine.dispose()
    check = "skipped"
    if not args.no_check:
        done = _stage(timings, "check through the API")
        check = check_api(url, field_keys, blind)
        done()

    print(f"database: {url}")
    print(f"GRIDAPI_DATABASE_URL={url}")
    print(f"GRIDAPI_FIELD_KEYS={field_keys}")
    print(f"GRIDAPI_BLIND_INDEX_KEY={blind}")
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"generated in {total:.1f} s")
    print("counts: " + " ".join(f"{k}={v}" for k, v in found.items()))
    print(f"check: {check}")
    print(f"digest={sample_digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
