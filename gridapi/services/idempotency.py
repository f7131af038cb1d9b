"""Idempotent writes: a retried request gets the first answer, never a second effect.

A request names itself with an ``Idempotency-Key`` header (and, for case reports, with the
phone's own ``client_id``). Keys are scoped to the caller. The flow, inside the request's one
transaction:

1. ``claim``: on PostgreSQL take a transaction-level advisory lock per key without waiting;
   a key whose lock is held belongs to a request still in flight → 409 (retry later). (The
   sync batch waits for the lock instead, then finds the first answer.) On SQLite the write
   transaction (BEGIN IMMEDIATE) already serialises writers.
2. ``find``: a stored answer for any of the keys is returned for replay, if the request
   is the same (same hash); the same key with a different request → 422.
3. the work, then ``remember`` writes the key rows, and the request commits once: the key
   exists exactly when its effect does. The unique (caller, key) constraint is the last guard.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

import orjson
from marshmallow import Schema, fields, missing
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.orm import Session

from ..errors import Conflict, Unprocessable
from ..models import IdempotencyKey

MAX_KEY_LENGTH = 200
#: Where two quoted values meet in a header sent twice ('"a", "b"').
_QUOTED_LIST = re.compile(r'"\s*,\s*"')


def parse_header(value: str | None) -> str | None:
    """Return the key of an ``Idempotency-Key`` header, quoted (RFC 8941 string) or bare."""
    if value is None:
        return None
    key = value.strip()
    quoted = len(key) >= 2 and key[0] == key[-1] == '"'
    if quoted:
        key = key[1:-1]
    # Two header lines reach the app joined by a comma ("a, b", '"a", "b"'): stored as one
    # new key, a retry sending either line alone made a second case.
    if _QUOTED_LIST.search(key) if quoted else "," in key:
        raise Unprocessable(
            "Send one Idempotency-Key: this one holds several values.",
            errors={
                "headers": {
                    "Idempotency-Key": [
                        "one key: several header lines, or a comma in a bare key (quote it)"
                    ]
                }
            },
        )
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise Unprocessable(
            "Invalid Idempotency-Key.",
            errors={
                "headers": {
                    "Idempotency-Key": [
                        f"1 to {MAX_KEY_LENGTH} printable characters, quoted or bare"
                    ]
                }
            },
        )
    return key


class RequestHash:
    """What tells a retry from a different request: ``value``, the hash kept with a new key
    (of the canonical body, ``canonical_body``), and the hashes earlier releases kept, which
    a key they stored and that is still kept (``GRIDAPI_IDEMPOTENCY_DAYS``) carries:
    ``previous`` (before nulls and date-times were read by their meaning, 2026-12-03: the
    nulls kept, the date-times as written) and ``legacy`` (of the body's JSON as sent,
    sorted). Each older one is computed only when the stored hash is none of the newer: a
    retry of a request made since costs one hash."""

    __slots__ = (
        "value",
        "_method",
        "_path",
        "_body",
        "_defaults",
        "_with_altitude",
        "_previous",
        "_legacy",
        "as_sent",
    )

    def __init__(
        self,
        value: str,
        method: str = "",
        path: str = "",
        body: Any = ...,
        defaults: dict[str, Any] | None = None,
        with_altitude: str | None = None,
    ) -> None:
        self.value = value
        self._method, self._path, self._body = method, path, body
        self._defaults = defaults
        # The hash of the same canonical body with its location's altitude, which keys
        # stored before altitudes were left out (2026-12-03) kept: the same as ``value``
        # for a body without one.
        self._with_altitude = value if with_altitude is None else with_altitude
        no_body = body is ...  # nothing older
        self._previous: str | None = value if no_body else None
        self._legacy: str | None = value if no_body else None
        #: The hash of the body as sent, when the view read it otherwise before hashing it
        #: (a report's nil client_id as none): keys stored before it did still match.
        self.as_sent: RequestHash | None = None

    @property
    def previous(self) -> str:
        if self._previous is None:
            kept = {k: v for k, v in (self._defaults or {}).items() if v is not None}
            canonical = canonical_body(self._body, kept)
            self._previous = _hash_of(self._method, self._path, canonical)
        return self._previous

    @property
    def legacy(self) -> str:
        if self._legacy is None:
            as_sent = json.dumps(
                self._body, sort_keys=True, ensure_ascii=False, separators=(",", ":")
            )
            self._legacy = _digest(self._method, self._path, as_sent.encode())
        return self._legacy

    def matches(self, stored: str) -> bool:
        return (
            stored == self.value
            or stored == self._with_altitude
            or stored == self.previous
            or stored == self.legacy
            or (self.as_sent is not None and self.as_sent.matches(stored))
        )

    def __repr__(self) -> str:
        return f"RequestHash({self.value!r})"


#: The hash of a request that sends no key (nothing is looked up or stored under it).
UNKEYED = RequestHash("")


def _digest(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()


def canonical_body(
    body: Any, defaults: dict[str, Any] | None = None, instants: frozenset[str] = frozenset()
) -> Any:
    """Return ``body`` as a request hash sees it: a number by its value (``12.0`` is ``12``,
    as JSON has one kind of number and an app re-encoding its queue may write either), text
    in its composed form (NFC), the top-level members equal to what leaving them out
    means (``defaults``: a schema's defaults as JSON, ``schema_defaults``; ``null`` for a
    member that may be null and has no other default) left out, and the top-level
    date-times named in ``instants`` by the instant they name (``…T10:00:00+08:00``,
    ``…T02:00:00Z`` and ``…T02:00:00.000Z`` are one). A retry that says the same thing is
    the same request, whatever its encoder's habits; one that says something else is not."""
    body = _by_value(body)
    if instants and isinstance(body, dict):
        body = {k: _instant(v) if k in instants else v for k, v in body.items()}
    if defaults and isinstance(body, dict):
        body = {
            k: v
            for k, v in body.items()
            if k not in defaults or v != defaults[k] or type(v) is not type(defaults[k])
        }
    return body


def _by_value(value: Any) -> Any:
    """Return ``value`` with whole floats as integers and text in Unicode's composed form
    (NFC: "é" typed as e and an accent is the "é" another keyboard sends)."""
    if isinstance(value, str):
        return (
            value
            if unicodedata.is_normalized("NFC", value)
            else unicodedata.normalize("NFC", value)
        )
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:  # finite, whole
        return int(value)
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


@cache
def schema_defaults(schema: type[Schema]) -> dict[str, Any]:
    """Return the JSON values a schema's fields take when left out (by their names in the
    body): the ``load_default`` of each field that has a plain one (a string, number or
    boolean) or makes an empty list or object, and ``None`` for a field that may be null and
    has no other default."""
    found: dict[str, Any] = {}
    for name, field in schema().fields.items():
        default = field.load_default
        if field.dump_only:
            continue
        if default is missing or default is None:
            if field.allow_none:  # null says what leaving it out says
                found[field.data_key or name] = None
            continue
        if default in (list, dict):
            default = default()
        if isinstance(default, str | int | float | bool | list | dict):
            found[field.data_key or name] = _by_value(default)
    return found


@cache
def schema_instants(schema: type[Schema]) -> frozenset[str]:
    """Return the names in the body of a schema's date-time fields."""
    return frozenset(
        field.data_key or name
        for name, field in schema().fields.items()
        if isinstance(field, fields.DateTime) and not field.dump_only
    )


def _instant(value: Any) -> Any:
    """Return a date-time with an offset as its instant in UTC (ISO 8601, microseconds
    always written); anything else (a date-time without an offset, which is refused) as is."""
    if not isinstance(value, str):
        return value
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    if moment.tzinfo is None or moment.utcoffset() is None:
        return value
    try:
        return moment.astimezone(UTC).isoformat(timespec="microseconds")
    except OverflowError:  # 0001-01-01T00:00+14:00, before the first instant in UTC
        return value


def _hash_of(method: str, path: str, canonical: Any) -> str:
    try:
        text_ = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits (the body's parser makes none): as text
        text_ = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return _digest(method, path, text_)


def request_hash(
    method: str,
    path: str,
    body: Any,
    *,
    defaults: dict[str, Any] | None = None,
    instants: frozenset[str] = frozenset(),
) -> RequestHash:
    """Return the hash that tells a retry from a different request: of the canonical JSON of
    the body (``canonical_body``; orjson, keys sorted) without its location's altitude
    (``without_altitude``), and lazily the ones kept before."""
    canonical = canonical_body(body, defaults, instants)
    flat = without_altitude(canonical)
    value = _hash_of(method, path, flat)
    before = None if flat is canonical else _hash_of(method, path, canonical)
    return RequestHash(value, method, path, body, defaults, with_altitude=before)


def without_altitude(body: Any) -> Any:
    """Return ``body`` with the altitude of its ``location`` (a GeoJSON position's third
    element) left out; ``body`` itself when it has none. The point is read and stored as
    [lon, lat] (``PointSchema``): a retry whose phone added the altitude of a later fix, or
    an app that writes it since an update, says the same thing and gets its answer."""
    if not isinstance(body, dict):
        return body
    location = body.get("location")
    if not isinstance(location, dict):
        return body
    position = location.get("coordinates")
    if not isinstance(position, list) or len(position) != 3:
        return body
    return {**body, "location": {**location, "coordinates": position[:2]}}


@dataclass(frozen=True)
class Stored:
    status_code: int
    response: str
    resource_id: int | None


def lock_id(caller: str, key: str) -> int:
    """Return the advisory lock number of a caller's key (PostgreSQL)."""
    digest = hashlib.sha256(f"{caller}\x00{key}".encode()).digest()
    return struct.unpack(">q", digest[:8])[0]


def claim(session: Session, caller: str, keys: list[str], *, wait: bool = False) -> None:
    """Take the keys for this transaction; 409 when a request with one is in flight, or,
    with ``wait``, wait until it ends (bounded by the statement timeout)."""
    if not keys or session.get_bind().dialect.name != "postgresql":
        return
    if wait:
        # In one order, whatever order the keys come in: two waiters never hold one each.
        locks = sorted({lock_id(caller, key) for key in keys})
        waits = ", ".join(f"pg_advisory_xact_lock(:k{i})" for i in range(len(locks)))
        session.execute(text(f"SELECT {waits}"), {f"k{i}": lock for i, lock in enumerate(locks)})
        return
    params = {f"k{i}": lock_id(caller, key) for i, key in enumerate(keys)}
    # Every lock tried (not AND, which stops at the first held): the 409 names those held.
    probes = ", ".join(f"pg_try_advisory_xact_lock(:k{i})" for i in range(len(keys)))
    taken = session.execute(text(f"SELECT {probes}"), params).one()
    if not all(taken):
        raise_in_flight(keys, [k for k, ok in zip(keys, taken, strict=True) if not ok])


def raise_in_flight(keys: list[str], held: list[str] | None = None) -> None:
    """Refuse a request whose key is held by one still in flight: 409, retry shortly.

    The error names what is in flight: the Idempotency-Key header, the body's client_id, or
    both (``held``: the keys whose locks another request holds; unknown, every key sent).
    It named the header when a request with a new key clashed on its client_id, and inside
    a sync batch, whose actions send no header."""
    named = held or keys
    errors: dict[str, Any] = {}
    if any(k.startswith("key:") for k in named):
        errors["headers"] = {"Idempotency-Key": ["in flight"]}
    if any(k.startswith("client_id:") for k in named):
        errors["json"] = {"client_id": ["in flight"]}
    what = " and ".join(
        name
        for name, where in (("Idempotency-Key", "headers"), ("client_id", "json"))
        if where in errors
    )
    raise Conflict(
        f"A request with this {what} is still being processed; retry shortly to get its answer.",
        errors=errors,
        headers={"Retry-After": "1"},
    )


def find(session: Session, caller: str, keys: list[str], hash_: RequestHash) -> Stored | None:
    """Return the stored answer for any of the keys, or None; 422 if it was another request."""
    if not keys:
        return None
    rows = session.execute(
        select(
            IdempotencyKey.key,
            IdempotencyKey.request_hash,
            IdempotencyKey.status_code,
            IdempotencyKey.response,
            IdempotencyKey.resource_id,
        )
        .where(IdempotencyKey.caller == caller, IdempotencyKey.key.in_(keys))
        .order_by(IdempotencyKey.id)
    ).all()
    return choose([Found(*row) for row in rows], hash_)


class Found(NamedTuple):
    """A stored key row, in the order of the columns read."""

    key: str
    request_hash: str
    status_code: int
    response: str
    resource_id: int | None


def choose(rows: list[Found], hash_: RequestHash) -> Stored | None:
    """Return the answer stored under the first of the keys found, or None; 422 if one of
    them was used for another request."""
    for row in rows:
        if not hash_.matches(row.request_hash):
            field = "client_id" if row.key.startswith("client_id:") else "Idempotency-Key"
            raise Unprocessable(
                f"This {field} was used for a different request.",
                errors={"headers" if field == "Idempotency-Key" else "json": {field: ["reused"]}},
            )
    if rows:
        return Stored(rows[0].status_code, rows[0].response, rows[0].resource_id)
    return None


def resource_ids(session: Session, caller: str, keys: list[str]) -> dict[str, int | None]:
    """Return the id stored with each of the keys that is kept (None: it created nothing)."""
    return {key: found for key, (found, _) in resources(session, caller, keys).items()}


def resources(session: Session, caller: str, keys: list[str]) -> dict[str, tuple[int | None, str]]:
    """Return the id stored with each of the keys that is kept, and the path of the request
    it answered (what the id names)."""
    if not keys:
        return {}
    rows = session.execute(
        select(IdempotencyKey.key, IdempotencyKey.resource_id, IdempotencyKey.path).where(
            IdempotencyKey.caller == caller, IdempotencyKey.key.in_(keys)
        )
    ).all()
    return {key: (resource_id, path) for key, resource_id, path in rows}


def remember(
    session: Session,
    caller: str,
    keys: list[str],
    *,
    hash_: RequestHash,
    method: str,
    path: str,
    status_code: int,
    response: str,
    resource_id: int | None,
    now: datetime,
    keep_days: int,
) -> None:
    """Store the answer under every key, in the request's transaction."""
    if not keys:
        return
    expires = now + timedelta(days=keep_days)
    session.execute(
        insert(IdempotencyKey),
        [
            {
                "caller": caller,
                "key": key,
                "request_hash": hash_.value,
                "method": method,
                "path": path[:255],
                "status_code": status_code,
                "response": response,
                "resource_id": resource_id,
                "created_at": now,
                "expires_at": expires,
            }
            for key in keys
        ],
    )


def fill_in(
    session: Session,
    caller: str,
    key: str,
    *,
    status_code: int,
    response: str,
    resource_id: int | None,
) -> bool:
    """Store the answer under a key remembered earlier in the same transaction; return
    whether there was such a key."""
    result = session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.caller == caller, IdempotencyKey.key == key)
        .values(status_code=status_code, response=response, resource_id=resource_id)
    )
    return bool(result.rowcount)


def purge(session: Session, now: datetime) -> int:
    """Delete keys past their retention; return how many."""
    from sqlalchemy import delete

    result = session.execute(delete(IdempotencyKey).where(IdempotencyKey.expires_at < now))
    return int(result.rowcount or 0)


def count(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)
