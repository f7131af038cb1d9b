"""Schemas shared by several resources: pagination, GeoJSON values."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, post_load, validate


class StrictBool(fields.Boolean):
    """A JSON boolean and nothing else: not 0/1, not "yes" (``1 == True`` in Python, hence
    the type check rather than marshmallow's truthy sets)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class StrictFloat(fields.Float):
    """A JSON number and nothing else: not "120.5" (marshmallow's Float reads text, so a
    coordinate sent as a string was taken as if it were a number)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        number = super()._deserialize(value, attr, data, **kwargs)
        # -0.0 is 0.0: PostgreSQL kept the sign and answered -0.0, SQLite answered 0.0.
        return number + 0.0 if number is not None else None


def distinct(items: list[Any]) -> None:
    """Refuse a list that names an item twice (a set sent as a list)."""
    seen: set[Any] = set()
    repeated = [item for item in items if item in seen or seen.add(item)]
    if repeated:
        raise ValidationError(f"{repeated[0]} is given more than once.")


def _leaves(field: fields.Field, *, keys: bool) -> Iterator[fields.Field]:
    """Yield ``field``, or the fields it contains when it is a list, a tuple or a dict (the
    dict's values, and its keys too with ``keys``), all the way down."""
    if isinstance(field, fields.List):
        yield from _leaves(field.inner, keys=keys)
    elif isinstance(field, fields.Tuple):
        for inner in field.tuple_fields:
            yield from _leaves(inner, keys=keys)
    elif isinstance(field, fields.Dict):
        for inner in (field.key_field if keys else None, field.value_field):
            if inner is not None:
                yield from _leaves(inner, keys=keys)
    else:
        yield field


def _strict_json(field: fields.Field) -> None:
    """Make ``field`` (and the fields it contains) take JSON types as they are: integers
    that are JSON integers (not 1.0 or 2.5, which marshmallow would truncate), numbers that
    are JSON numbers (not "2.5") and booleans that are JSON booleans."""
    for leaf in _leaves(field, keys=False):
        if isinstance(leaf, fields.Integer):
            leaf.strict = True
        elif type(leaf) is fields.Float:
            leaf.__class__ = StrictFloat
        elif type(leaf) is fields.Boolean:
            leaf.__class__ = StrictBool


INT64 = validate.Range(min=-(2**63), max=2**63 - 1)
#: The ids of every table but the sync log and the webhook outbox are 32-bit on PostgreSQL
#: (the path's ``id`` converter says the same): a larger one was a field-less 422 "out of
#: range" there and a plain miss on SQLite.
ID32 = validate.Range(min=-(2**31), max=2**31 - 1)  # (a negative one was out of range too)
#: The ids of the sync log and of webhook events and deliveries (64-bit).
BIG_ID = validate.Range(min=1, max=2**63 - 1)


def user_ref(value: str) -> None:
    """Validate a user named as text in a query, ``me`` or an id (after its pattern): an id
    a column can hold (a 12-digit one was a field-less 422 on PostgreSQL, a plain miss on
    SQLite, and broke a streamed export halfway)."""
    if value.isascii() and value.isdigit() and int(value) > ID32.max:
        raise ValidationError(f"a user id is at most {ID32.max}")


def _is_id(name: str) -> bool:
    return name in ("id", "after", "before", "cursor", "version", "evidence") or name.endswith(
        ("_id", "_of")
    )


def _bounded(field: fields.Field, name: str = "") -> None:
    """Give an integer without an upper bound the bound its column holds, so a number past
    it is 422 naming the field on both engines (SQLite overflows past 64 bits, PostgreSQL
    refuses past 32 bits in an id column): 32 bits for an id, a cursor or a version (one
    over a 64-bit id declares its own bound), else 64."""
    if isinstance(field, fields.List):
        _bounded(field.inner, name)
    elif isinstance(field, fields.Integer) and not any(
        isinstance(v, validate.Range) and v.max is not None for v in field.validators
    ):
        field.validators = [*field.validators, ID32 if _is_id(name) else INT64]


def _no_nul(value: Any) -> None:
    if isinstance(value, str) and "\x00" in value:
        raise ValidationError("Must not contain NUL characters (U+0000).")


def _text(field: fields.Field) -> None:
    """Refuse the NUL character in ``field``'s text (and in the text of the fields it
    contains, dict keys included): PostgreSQL cannot store it in text and SQLite would, so
    both engines answer the same 422 naming the field."""
    for leaf in _leaves(field, keys=True):
        if isinstance(leaf, fields.String):
            leaf.validators = [*leaf.validators, _no_nul]


FIRST_YEAR, LAST_YEAR = 1900, 2100


def instant_problem(value: date) -> str | None:
    """Return why a date, or a date and time, cannot be stored or compared, or None: its
    year as written (the client's local date) lies outside 1900-2100.

    In UTC a time with a zone may lie a day outside (1900-01-01T00:00+08:00 is 1899-12-31
    in UTC), which both engines store, compare and answer alike; checked in UTC, such times
    were refused though they lie in the years. The years keep every value far from what
    Python cannot convert to UTC (0001-01-01T00:00+14:00 raised OverflowError when a query
    bound it: 500), and the conversion is checked all the same."""
    if not FIRST_YEAR <= value.year <= LAST_YEAR:
        return f"Must lie between the years {FIRST_YEAR} and {LAST_YEAR}."
    if isinstance(value, datetime) and value.tzinfo is not None:
        try:
            value.astimezone(UTC)
        except OverflowError:  # pragma: no cover - not within the years
            return f"Must lie between the years {FIRST_YEAR} and {LAST_YEAR}."
    return None


def in_years(month: str) -> None:
    """Refuse a "YYYY-MM" (or any text starting with a year) outside the years every date
    may take: month 9999-12 ends in a year Python cannot hold (500)."""
    if month[:4].isdigit() and not FIRST_YEAR <= int(month[:4]) <= LAST_YEAR:
        raise ValidationError(f"Must lie between the years {FIRST_YEAR} and {LAST_YEAR}.")


def _storable(value: Any) -> None:
    if isinstance(value, date) and (problem := instant_problem(value)):
        raise ValidationError(problem)


def _dated(field: fields.Field) -> None:
    """Keep every date, and date and time (and those in lists), inside the years both
    engines and Python's UTC arithmetic hold: a 422 naming the field, not an OverflowError
    (indicators from 0001-01-01 answered "A number is too large." naming nothing)."""
    for leaf in _leaves(field, keys=False):
        if isinstance(leaf, (fields.DateTime, fields.Date)):
            leaf.validators = [*leaf.validators, _storable]


def stated(text: str) -> str:
    """Return ``text`` without the blank at either end: white space, and the characters that
    show nothing (zero-width spaces and joiners, a byte-order mark: Unicode's format
    characters), which ``str.strip`` leaves. A reason of one zero-width space was a reason."""
    start, end = 0, len(text)
    while start < end and _blank(text[start]):
        start += 1
    while end > start and _blank(text[end - 1]):
        end -= 1
    return text[start:end]


def _blank(ch: str) -> bool:
    return ch.isspace() or unicodedata.category(ch) in ("Cf", "Cc", "Zs", "Zl", "Zp")


def something_to_find(compared: Callable[[str], str]) -> Callable[[str], None]:
    """Return a validator of a search text that refuses one which is nothing once made into
    the form the search compares (``compared``, e.g. an address without whitespace): white
    space alone found every row, as if no text had been given."""

    def check(value: str) -> None:
        if not compared(value):
            raise ValidationError("Must contain more than white space: it would match everything.")

    return check


class Stated(fields.String):
    """Text a person states (a purpose, a reason, a name), stripped before it is validated:
    four spaces are no purpose, though they pass a length check of four. Its length limits
    hold for the text as sent, too (the spec's maxLength): text over the limit that
    stripping brought under it (leading control characters count as spaces) was taken."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        for check in self.validators:
            if isinstance(check, validate.Length):
                check(text)
        return stated(text)


class StrictSchema(Schema):
    """Base schema: unknown fields are an error, not silently dropped.

    A JSON body schema takes strict JSON integers and booleans; the ``*Args*`` schemas of
    query strings and those that set ``TEXT_VALUES`` (form fields) read text and stay
    lenient. Every integer is at most 64-bit.
    """

    TEXT_VALUES = False

    class Meta:
        unknown = RAISE

    def on_bind_field(self, field_name: str, field_obj: fields.Field) -> None:
        super().on_bind_field(field_name, field_obj)
        _bounded(field_obj, field_name)
        _text(field_obj)
        _dated(field_obj)
        if not self.TEXT_VALUES and "Args" not in type(self).__name__:
            _strict_json(field_obj)


class PageArgsSchema(StrictSchema):
    limit = fields.Integer(
        load_default=100,
        validate=validate.Range(min=1, max=1000),
        metadata={"description": "Page size (1-1000)."},
    )


class GeoJSONGeometry(fields.Dict):
    """A GeoJSON geometry object; its shape is checked by the service that uses it."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        value = super()._deserialize(value, attr, data, **kwargs)
        if "type" not in value or "coordinates" not in value:
            raise ValidationError("must be a GeoJSON geometry with 'type' and 'coordinates'")
        return value


class PointSchema(StrictSchema):
    """A GeoJSON Point. A position may carry an altitude as its third element (RFC 7946
    §3.1.1: phones' location APIs and GeoJSON writers add it); it is read and dropped, the
    point is [lon, lat]. Four elements or more are refused (their meaning is unspecified)."""

    type = fields.String(required=True, validate=validate.Equal("Point"))
    coordinates = fields.List(
        fields.Float(allow_nan=False),
        required=True,
        validate=validate.Length(min=2, max=3),
        metadata={
            "description": "[lon, lat] in WGS-84 (EPSG:4326); an altitude given as a third "
            "element is accepted and ignored."
        },
    )

    @post_load
    def _without_altitude(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if len(data["coordinates"]) > 2:
            data["coordinates"] = data["coordinates"][:2]
        return data
