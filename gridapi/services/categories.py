"""Case categories: reading the taxonomy, editing it, and checking a report's attributes."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import date
from typing import Any

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session, aliased

from ..errors import Conflict, NotFound, Unprocessable
from ..models import Case, Category
from ..models.categories import ATTRIBUTE_TYPES
from ..numbers import MAX_EXACT
from ..schemas.common import FIRST_YEAR, LAST_YEAR, stated
from .preconditions import check_if_match, flush_versioned
from .uniques import add_or_conflict

# fullmatch, not ``$``: ``$`` also matches before a final newline ("community\n").
_HANDLER_RE = re.compile(r"community|township|county|department:[A-Za-z0-9_.\-]{2,32}")
_ATTR_CODE_RE = re.compile(r"[a-z][a-z0-9_]{0,39}")
ATTRIBUTE_KEYS = (
    "code",
    "label",
    "type",
    "required",
    "values",
    "description",
    "minimum",
    "maximum",
    "integer",
)
#: The keys only a number attribute takes: its bounds (inclusive) and whether it counts.
NUMBER_KEYS = ("minimum", "maximum", "integer")
MAX_ATTRIBUTES = 50
MAX_LABEL = 100
MAX_DESCRIPTION = 1000
MAX_VALUES = 200
MAX_VALUE = 100
NUL_MESSAGE = "Must not contain NUL characters (U+0000)."
# ASCII: \d alone matches any Unicode digit (full-width ２０２６), which date() reads.
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)


#: The gap between two classes' display orders in the seed (a class at 100 × n, its
#: subclasses at 100 × n + 1, + 2, …); a class created later is put after every family.
FAMILY_GAP = 100


def in_display_order(stmt: Select[Any]) -> Select[Any]:
    """Return ``stmt`` (over Category) ordered for display: each class followed by its own
    subclasses, families and members by their display order, then by code.

    Ordered by ``sort_order`` alone, a family stayed together only while every row had an
    order of its place: a subclass or class created without one (0) was listed first, under
    the first class (5309 between 01 and 0101)."""
    parent = aliased(Category)
    return stmt.outerjoin(parent, Category.parent_code == parent.code).order_by(
        func.coalesce(parent.sort_order, Category.sort_order),
        func.coalesce(parent.code, Category.code),
        Category.parent_code.is_not(None),
        Category.sort_order,
        Category.code,
    )


def list_categories(session: Session, *, include_inactive: bool = False) -> list[Category]:
    """Return categories in display order: each class followed by its subclasses."""
    stmt = select(Category)
    if not include_inactive:
        stmt = stmt.where(Category.is_active.is_(True))
    return list(session.scalars(in_display_order(stmt)))


def _new_sort_order(session: Session, class_code: str | None) -> int:
    """Return the display order of a new category: after the last of its class's family
    for a subclass, after every family for a class."""
    if class_code is not None:
        last = session.scalar(
            select(func.max(Category.sort_order)).where(
                (Category.code == class_code) | (Category.parent_code == class_code)
            )
        )
        return (last or 0) + 1
    last = session.scalar(select(func.max(Category.sort_order)))
    return 0 if last is None else (last // FAMILY_GAP + 1) * FAMILY_GAP


def get_category(session: Session, code: str, *, lock: bool = False) -> Category:
    """Return a category (locked for update with ``lock``, on PostgreSQL). Raises NotFound."""
    category = session.get(Category, code, with_for_update=lock or None)
    if category is None:
        raise NotFound("The category does not exist.")
    return category


def attribute_schema_errors(attributes: Any) -> list[str] | dict[int, dict[str, list[str]]]:
    """Return what is wrong with an attribute schema, shaped as marshmallow shapes a list's
    errors: problems of the whole list, or each attribute's problems by index and key
    (``_schema`` for the attribute as a whole). Empty when it is fine."""
    if not isinstance(attributes, list):
        return ["must be a list of attribute definitions"]
    if len(attributes) > MAX_ATTRIBUTES:
        return [f"at most {MAX_ATTRIBUTES} attributes"]
    errors: dict[int, dict[str, list[str]]] = {}
    seen: set[str] = set()
    for i, attr in enumerate(attributes):
        problems = _definition_problems(attr, seen)
        if problems:
            errors[i] = problems
    return errors


def _definition_problems(attr: Any, seen: set[str]) -> dict[str, list[str]]:
    """Return one attribute definition's problems by key; adds its code to ``seen``."""
    if not isinstance(attr, dict):
        return {"_schema": ["must be an object"]}
    problems: dict[str, list[str]] = {}
    for key in attr:
        if key not in ATTRIBUTE_KEYS:
            problems[str(key)] = ["Unknown field."]
    code = attr.get("code")
    if not isinstance(code, str) or not _ATTR_CODE_RE.fullmatch(code):
        problems["code"] = ["must be 1-40 lower-case letters, digits and _, from a letter"]
    elif code in seen:
        problems["code"] = [f"duplicate code {code!r}"]
    else:
        seen.add(code)
    if problem := _text_problem(attr.get("label"), MAX_LABEL, required=True):
        problems["label"] = [problem]
    if "description" in attr and (
        problem := _text_problem(attr["description"], MAX_DESCRIPTION, required=False)
    ):
        problems["description"] = [problem]
    kind = attr.get("type")
    if kind not in ATTRIBUTE_TYPES:
        problems["type"] = [f"must be one of {', '.join(ATTRIBUTE_TYPES)}"]
    values = attr.get("values")
    if kind in ("single_choice", "multiple_choice"):
        if problem := _choices_problem(values):
            problems["values"] = [problem]
    elif values is not None:
        problems["values"] = ["values are only for choices"]
    if "required" in attr and not isinstance(attr["required"], bool):
        problems["required"] = ["must be true or false"]
    problems.update(_number_problems(attr, kind))
    return problems


def _number_problems(attr: dict[str, Any], kind: Any) -> dict[str, list[str]]:
    """Return the problems of a definition's bounds and ``integer`` (numbers only)."""
    problems: dict[str, list[str]] = {}
    given = [k for k in NUMBER_KEYS if attr.get(k) is not None]
    if kind != "number":
        for key in given:
            problems[key] = [f"{key} is only for numbers"]
        return problems
    bounds = {}
    for key in ("minimum", "maximum"):
        value = attr.get(key)
        if value is None:
            continue
        if _finite(value) and abs(value) <= MAX_EXACT:
            bounds[key] = value
        else:
            problems[key] = [f"must be a number of at most {MAX_EXACT} in magnitude"]
    if len(bounds) == 2 and bounds["minimum"] > bounds["maximum"]:
        problems["maximum"] = ["must not be less than minimum"]
    if "integer" in attr and not isinstance(attr["integer"], bool | None):
        problems["integer"] = ["must be true or false"]
    elif (
        attr.get("integer") is True
        and len(bounds) == 2
        and "maximum" not in problems
        and math.ceil(bounds["minimum"]) > math.floor(bounds["maximum"])
    ):
        # 0.5 to 0.7, whole: no report could give a value (made required, none at all).
        problems["integer"] = ["no whole number lies between minimum and maximum"]
    return problems


def _finite(value: Any) -> bool:
    """Whether ``value`` is a JSON number (not a boolean), neither NaN nor infinite."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value == value and value not in (float("inf"), float("-inf"))


def _text_problem(value: Any, limit: int, *, required: bool) -> str | None:
    if not isinstance(value, str):
        return "must be text"
    if "\x00" in value:
        return NUL_MESSAGE
    if required and not stated(value):  # a zero-width space shows nothing either
        return "required"
    if len(value) > limit:
        return f"at most {limit} characters"
    return None


def _choices_problem(values: Any) -> str | None:
    if not isinstance(values, list) or not values:
        return "a choice needs a list of distinct non-empty values"
    if len(values) > MAX_VALUES:
        return f"at most {MAX_VALUES} values"
    for j, value in enumerate(values):
        if problem := _text_problem(value, MAX_VALUE, required=True):
            return f"value {j}: {problem}"
    # Compared as shown: é written precomposed or as e and a combining accent is one choice.
    if len({unicodedata.normalize("NFC", v) for v in values}) != len(values):
        return "a choice needs a list of distinct non-empty values"
    return None


def check_attributes(category: Category, values: Any) -> dict[str, Any]:
    """Return the report's attribute values, cleaned, for ``category``'s schema.

    Raises Unprocessable naming each attribute that is missing, unknown or of the wrong type.
    """
    values = {} if values is None else values
    if not isinstance(values, dict):
        raise Unprocessable(
            "Invalid attributes.",
            errors={"json": {"attributes": ["must be an object of attribute codes to values"]}},
        )
    if len(values) > MAX_ATTRIBUTES:
        # More than any schema defines, so some are unknown: said once, not echoed by the
        # hundred thousand.
        raise Unprocessable(
            "Invalid attributes.",
            errors={"json": {"attributes": [f"at most {MAX_ATTRIBUTES} attributes"]}},
        )
    schema = {a["code"]: a for a in category.attributes or []}
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for code in values:
        if code not in schema:
            errors[code] = [f"unknown attribute for category {category.code}"]
    for code, attr in schema.items():
        value = values.get(code)
        if isinstance(value, list) and len(value) > MAX_VALUES:
            # No choice has more values. Each item was looked for in the list of choices:
            # two million of them (16 MB) held a report for 37 seconds before it was taken.
            many = attr["type"] == "multiple_choice"
            errors[code] = [f"at most {MAX_VALUES} choices" if many else _check_value(attr, [])[0]]
            continue
        if _has_nul(value):  # before the blanks are taken off: NUL is one of them
            errors[code] = [NUL_MESSAGE]
            continue
        if isinstance(value, str) and attr["type"] in ("string", "text"):
            # Blanks are no answer, to a required attribute neither: white space, and the
            # characters that show nothing (a zero-width space answered "required").
            value = stated(value)
        if value is None or value == "" or value == []:
            if attr.get("required"):
                errors[code] = ["required"]
            continue
        problem, clean = _check_value(attr, value)
        if problem:
            errors[code] = [problem]
        else:
            cleaned[code] = clean
    if errors:
        raise Unprocessable("Invalid attributes.", errors={"json": {"attributes": errors}})
    return cleaned


def _check_value(attr: dict[str, Any], value: Any) -> tuple[str | None, Any]:
    """Return (problem, None) or (None, the value as stored) for a non-empty value."""
    kind = attr["type"]
    if kind in ("string", "text"):
        limit = 200 if kind == "string" else 5000
        if not isinstance(value, str):
            return "must be text", None
        if len(value) > limit:
            return f"at most {limit} characters", None
        return None, value
    if kind == "number":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "must be a number", None
        if value != value or value in (float("inf"), float("-inf")):
            return "must be a finite number", None
        if isinstance(value, int) and abs(value) > MAX_EXACT:
            # past 64 bits a 500 on PostgreSQL, and a case SQLite stored but could not show
            return f"a whole number of at most {MAX_EXACT} in magnitude", None
        return _bounded(attr, value)
    if kind == "date":
        # Only YYYY-MM-DD: fromisoformat also reads ISO weeks and the basic form ("2026W48",
        # "20261130"), which a report then kept as a date nobody had written.
        problem = f"must be a date (YYYY-MM-DD) of the years {FIRST_YEAR}-{LAST_YEAR}"
        if not isinstance(value, str) or not _DATE_RE.fullmatch(value):
            return problem, None
        try:
            day = date.fromisoformat(value)
        except ValueError:
            return problem, None
        if not FIRST_YEAR <= day.year <= LAST_YEAR:  # the years every date of the API lies in
            return problem, None
        return None, day.isoformat()
    if kind == "single_choice":
        if value not in attr["values"]:
            return f"must be one of: {', '.join(attr['values'])}", None
        return None, value
    allowed = set(attr["values"])
    if not isinstance(value, list) or not all(isinstance(v, str) and v in allowed for v in value):
        return f"must be a list of: {', '.join(attr['values'])}", None
    return None, list(dict.fromkeys(value))


def _bounded(attr: dict[str, Any], value: float) -> tuple[str | None, Any]:
    """Check a number against its definition's ``integer``, ``minimum`` and ``maximum``
    (a count of people was taken as -5, 2.5 or 1e308); a whole number sent as 3.0 is
    stored as 3."""
    if attr.get("integer") and isinstance(value, float):
        if not value.is_integer():
            return "must be a whole number", None
        if abs(value) > MAX_EXACT:
            return f"a whole number of at most {MAX_EXACT} in magnitude", None
        value = int(value)
    low, high = attr.get("minimum"), attr.get("maximum")
    if low is not None and value < low:
        return f"must be at least {_shown(low)}", None
    if high is not None and value > high:
        return f"must be at most {_shown(high)}", None
    return None, value


def _shown(bound: float) -> float | int:
    """A bound as a person writes it: 1, not 1.0."""
    return int(bound) if isinstance(bound, float) and bound.is_integer() else bound


def _has_nul(value: Any) -> bool:
    """Whether a value holds NUL: PostgreSQL cannot store it in JSON text and SQLite would,
    so it is refused on both alike."""
    if isinstance(value, list):
        return any(isinstance(v, str) and "\x00" in v for v in value)
    return isinstance(value, str) and "\x00" in value


def _check_definition(data: dict[str, Any]) -> None:
    errors: dict[str, Any] = {}
    if "attributes" in data:
        problems = attribute_schema_errors(data["attributes"])
        if problems:
            errors["attributes"] = problems
    handler = data.get("default_handler")
    if handler is not None and not _HANDLER_RE.fullmatch(handler):
        errors["default_handler"] = ["community, township, county or department:<code>"]
    if errors:
        raise Unprocessable("Invalid category.", errors={"json": errors})


def _check_department(session: Session, data: dict[str, Any]) -> None:
    """A default handler ``department:<code>`` names a department that exists (a missing one
    was taken, and its cases filed to the township without a word)."""
    from ..models import Department

    handler = data.get("default_handler") or ""
    if handler.startswith("department:"):
        code = handler.partition(":")[2]
        if session.scalar(select(Department.id).where(Department.code == code)) is None:
            raise Unprocessable(
                "Invalid category.",
                errors={"json": {"default_handler": [f"no department {code}"]}},
            )


def create_category(session: Session, data: dict[str, Any]) -> Category:
    """Create a class (2 digits) or a subclass (4 digits under an existing class). Raises
    Unprocessable, or Conflict naming ``code`` when a category has it."""
    code = data["code"]
    _check_definition(data)
    _check_department(session, data)

    def taken() -> Conflict | None:
        if session.get(Category, code) is None:
            return None
        return Conflict(
            f"Category {code} exists.", errors={"json": {"code": ["a category has this code"]}}
        )

    if (error := taken()) is not None:
        raise error
    parent = None
    if len(code) == 4:
        # Locked (PostgreSQL), as update_category locks a class it retires: a class retired
        # meanwhile is waited for and refuses the subclass (both committed, an active
        # subclass lived under a retired class; each had checked before the other wrote).
        parent = session.get(Category, code[:2], with_for_update=True)
        if parent is None:
            raise Unprocessable(
                "The class does not exist.",
                errors={"json": {"code": [f"create the class {code[:2]} first"]}},
            )
        if not parent.is_active and data.get("is_active", True):
            raise Unprocessable(
                "The class is retired.",
                errors={"json": {"code": [f"the class {code[:2]} is retired: reactivate it"]}},
            )
    category = Category(
        **data,
        parent_code=parent.code if parent else None,
        sort_order=_new_sort_order(session, parent.code if parent else None),
    )
    # Created by another request between the look-up and the insert: the same answer as
    # when it came first, not the generic conflict.
    add_or_conflict(session, category, taken)
    return category


def update_category(
    session: Session, code: str, changes: dict[str, Any], *, if_match: str | None = None
) -> Category:
    """Change a category's limits, standards, flags or attribute schema; with ``if_match``,
    only the version it names (PreconditionFailed, 412, otherwise).

    The sensitive flag applies to the cases already filed under the category too (a case
    of a category made sensitive stayed visible by place alone, in lists, maps and exports).
    A class is retired only when none of its subclasses is active (a retired class kept live,
    reportable subclasses), and a subclass is activated only under an active class."""
    # Locked (PostgreSQL): a subclass created or activated meanwhile under a class retired
    # here, or the class of one activated here retired meanwhile, is waited for and then
    # seen (create_category locks the class too).
    category = get_category(session, code, lock=True)
    # Optional, as before versions: a client that sends none still has the last word.
    check_if_match(category, if_match, noun="category", required=False)
    _check_definition(changes)
    _check_department(session, changes)
    if changes.get("is_active") is False and category.is_active and len(code) == 2:
        active = session.scalars(
            select(Category.code).where(Category.parent_code == code, Category.is_active)
        ).all()
        if active:
            raise Conflict(
                f"Category {code} has active subclasses: retire them first.",
                errors={"active_subclasses": sorted(active)},
            )
    if changes.get("is_active") is True and len(code) == 4 and not category.is_active:
        parent = session.get(Category, code[:2], with_for_update=True)
        if parent is not None and not parent.is_active:
            raise Unprocessable(
                "The class is retired.",
                errors={"json": {"is_active": [f"the class {code[:2]} is retired"]}},
            )
    flagged = "sensitive" in changes and changes["sensitive"] != category.sensitive
    for key, value in changes.items():
        setattr(category, key, value)
    flush_versioned(session, "category")
    if flagged:
        # Each case changed gets a new updated_at too (the column's onupdate): Open311's
        # updated_after, and sync through the cases' trigger, learn it became visible.
        session.execute(
            update(Case)
            .where(Case.category_code == code, Case.sensitive.is_not(changes["sensitive"]))
            .values(sensitive=changes["sensitive"], version=Case.version + 1)
            .execution_options(synchronize_session=False)
        )
    session.flush()
    return category
