"""JSON encoding with orjson: the API's responses are large (batches, GeoJSON) and hot."""

from __future__ import annotations

import codecs
import contextlib
import datetime as dt
import decimal
import json
import re
import uuid
from typing import Any

import orjson
from flask import Request
from flask.json.provider import JSONProvider

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_bytes(value: Any) -> bytes:
    """Return ``value`` as compact UTF-8 JSON bytes."""
    return orjson.dumps(value, default=_default, option=_OPTIONS)


#: 19 digits in a row: perhaps an integer beyond 64 bits, which orjson reads as a float.
_LONG_DIGITS = re.compile(r"\d{19}")
_LONG_DIGITS_BYTES = re.compile(rb"\d{19}")


def loads_stored(text: str | bytes) -> Any:
    """Parse the JSON of a database column to what the standard library gives: with orjson
    (a list of 50 cases parses 150 such values), except where 19 digits follow each other
    (in a number or a string). orjson reads an integer beyond 64 bits as a float, losing
    digits, and a column may hold one (an attribute's number, an audit summary)."""
    long = _LONG_DIGITS_BYTES if isinstance(text, bytes) else _LONG_DIGITS
    if long.search(text) is None:  # type: ignore[arg-type]
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library's error, or what it makes of it
    return json.loads(text)


class RepeatedMember(ValueError):
    """A JSON object of a request body names one member twice."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the member {name!r} is given twice")
        self.name = name


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) < len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise RepeatedMember(name)
            seen.add(name)
    return members


def loads_body(data: str | bytes) -> Any:
    """Parse a request body with orjson; raise RepeatedMember when an object in it names a
    member twice (``{"category": "0101", "category": "0902"}``).

    JSON leaves such an object's meaning open (RFC 8259 §4; I-JSON, RFC 7493, forbids it),
    and every parser picks its own: orjson and Python keep the last, others the first. A
    gateway or app that checked the first and a server that stored the last disagree about
    what was reported, so the body is refused, as a query parameter given twice is. orjson
    cannot tell, so a body holding objects is read again by the standard library's parser,
    for its member names only (≈ 10 µs for a report)."""
    value = orjson.loads(data)
    if isinstance(value, (dict, list)) and value:
        # Nested deeper than it reads: no operation's schema takes such a body anyway.
        with contextlib.suppress(RecursionError):
            json.loads(data, object_pairs_hook=_members_once)
    return value


class OrjsonProvider(JSONProvider):
    """Flask JSON provider backed by orjson (UTF-8, Chinese text unescaped)."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return dumps_bytes(obj).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return loads_body(s)

    def response(self, *args: Any, **kwargs: Any):  # type: ignore[no-untyped-def]
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(dumps_bytes(obj), mimetype="application/json")


#: Byte-order marks a JSON text may start with (RFC 8259 §8.1 lets a parser ignore one),
#: with the encoding each names: the longer UTF-32 marks before UTF-16's, which they begin with.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_UTF8 = {"utf-8", "utf8"}


def _as_declared(data: bytes, charset: str | None) -> str | None:
    """Return the text of a body that is not UTF-8 JSON as sent: read by its byte-order
    mark, else by the charset its Content-Type declares (an app on GBK, GB 18030 or
    UTF-16); None when neither says how, or the body is not in that encoding."""
    encoding = next((name for bom, name in _BOMS if data.startswith(bom)), None)
    if encoding is None and charset and charset.strip().lower() not in _UTF8:
        encoding = charset.strip()
    if encoding is None:
        return None
    try:
        return data.decode(encoding)
    except (LookupError, UnicodeDecodeError):
        return None


class ApiRequest(Request):
    """Flask's request, with a body that is not JSON answered as the API answers it: 400,
    ``errors.json`` = ["Invalid JSON body."] (as webargs does), wherever it is read.

    JSON is UTF-8 (RFC 8259), and a UTF-8 body is read as it comes. A body that does not
    parse so is read again by its byte-order mark or its declared charset: a phone that
    sends ``charset=GBK`` (or UTF-16, or a UTF-8 BOM, as .NET writes) was told its JSON was
    invalid, and its report was dropped. A body that parses as sent is never read otherwise,
    whatever charset it declares."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:  # not a JSON content type: Flask's 415
            return super().on_json_loading_failed(e)
        from webargs.flaskparser import abort

        if not isinstance(e, RepeatedMember):
            text = _as_declared(self.get_data(cache=True), self.mimetype_params.get("charset"))
            if text is not None:
                try:
                    return loads_body(text)
                except RepeatedMember as repeated:
                    e = repeated
                except orjson.JSONDecodeError:
                    pass
        if isinstance(e, RepeatedMember):
            abort(400, exc=e, messages={"json": [f"Invalid JSON body: {e}."]})
        abort(400, exc=e, messages={"json": ["Invalid JSON body."]})
