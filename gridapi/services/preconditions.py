"""ETags and If-Match: optimistic concurrency for every object that carries a ``version``.

An object's entity tag is ``"<id>-<version>"``; ``version`` is the row's version counter
(SQLAlchemy's ``version_id_col``), bumped by every change, so an update that read a stale
version changes nothing. Cases, tasks and campaigns require If-Match on every change (428
without it); houses, households and residents check it when it is sent (412 when stale) and
otherwise let the last writer win, as they did before they had versions; so do categories,
whose ETag is ``"<code>-<version>"``.

Where an answer shows more than its row (a household's members, a resident's age on the day
asked), its tag is ``"<id>-<version>-<digest>"``: the digest of the answer keeps conditional
GETs (If-None-Match → 304) true when only those parts change, and If-Match compares the
``<id>-<version>`` part, the state a change would overwrite.

If-Match compares strongly (RFC 9110 §13.1.1): a weak tag (``W/"12-3"``) never matches, as
if it named another version (412), and ``*`` matches whatever version the object is at. The
server sends no weak tags: a weak one was made by something between, which may have changed
the bytes (and no version may be inferred from it).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from ..errors import DomainError


class PreconditionFailed(DomainError):
    status = 412


class PreconditionRequired(DomainError):
    status = 428


# What Flask-Compress appends to the ETag of an answer it compressed ("12-3" → "12-3:gzip"):
# the tag of those bytes, but the same version of the object.
_CODING_SUFFIXES = (":gzip", ":br", ":deflate", ":zstd")


def parse_etag(header: str | None) -> list[str] | str | None:
    """Return the strong entity tags (``<id>-<version>``, unquoted) an If-Match header names,
    ``"*"``, or None if absent. Quoted and bare tags are read, and so is the tag of a
    compressed answer (``"12-3:gzip"``): every phone asks for compression, and the tag it was
    given names the version it read. Weak tags (``W/"…"``) are left out: If-Match compares
    strongly, so one never matches (a header naming only weak tags names none: 412)."""
    if header is None or not header.strip():
        return None
    value = header.strip()
    if value == "*":
        return "*"
    tags = []
    for part in value.split(","):
        part = part.strip()
        if part.startswith("W/"):
            continue
        tag = part.strip('"')
        for suffix in _CODING_SUFFIXES:
            tag = tag.removesuffix(suffix)
        tags.append(tag)
    return tags


def etag(obj: Any, view: dict[str, Any] | None = None) -> str:
    """The ETag header of a row with ``id`` and ``version``; with ``view`` (the answer's
    body), followed by a digest of it."""
    if view is None:
        return f'"{obj.id}-{obj.version}"'
    body = orjson.dumps(view, option=orjson.OPT_SORT_KEYS, default=str)
    return f'"{obj.id}-{obj.version}-{hashlib.blake2b(body, digest_size=6).hexdigest()}"'


def _stale(noun: str) -> str:
    return f"The {noun} changed since you read it: read it again and retry."


def check_if_match(
    obj: Any,
    if_match: str | None,
    *,
    noun: str,
    path: str = "",
    required: bool = True,
    current: str | None = None,
) -> None:
    """Enforce If-Match on ``obj`` (any row with ``id`` and ``version``): without it 428 when
    ``required`` (else nothing to check), and 412 unless it names the current version. The
    words name the ``noun`` and where to read its ETag (``path``, e.g. ``/api/v1/cases/{id}``).
    ``current``: the object's ETag when it is not ``etag(obj)`` (a region's digest).
    """
    wanted = parse_etag(if_match)
    if wanted is None:
        if required:
            where = f" (from GET {path})" if path else ""
            raise PreconditionRequired(f"Send If-Match with the {noun}'s ETag{where}.")
        return
    if wanted == "*":
        return
    # The whole "<id>-<version>": another object's ETag at the same version is not this one's.
    header = current or etag(obj)
    named = header.strip('"')
    if not any(tag == named or tag.startswith(named + "-") for tag in wanted):
        raise PreconditionFailed(_stale(noun), headers={"ETag": header})


def flush_versioned(session: Session, noun: str) -> None:
    """Flush, answering 412 when a versioned row changed under this transaction (its UPDATE
    named a version another transaction had already replaced)."""
    try:
        session.flush()
    except StaleDataError:
        raise PreconditionFailed(_stale(noun)) from None
