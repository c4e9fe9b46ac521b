"""What the API accepts: bounded strings without control characters, and bounded JSON values.

Every string, list and object of a request body, path or query has a limit here, written
into the OpenAPI schema (``maxLength``, ``pattern``, ``maxItems``, ``maxProperties``) and
enforced by the same definitions, so the documented constraints are the enforced ones.
Control characters are refused before PostgreSQL sees them (it refuses NUL in ``text`` and
``\\u0000`` in ``jsonb``), and so are lone surrogates (not UTF-8).

>>> from pydantic import TypeAdapter
>>> TypeAdapter(Annotated[str, identifier(8)]).validate_python("store-1")
'store-1'
>>> TypeAdapter(Properties).validate_python({"sku": "A1", "items": [{"qty": 2}]})
{'sku': 'A1', 'items': [{'qty': 2}]}
>>> try:
...     TypeAdapter(Properties).validate_python({"note": "a\\x00"})
... except ValueError as exc:
...     print(exc.errors()[0]["msg"])
Value error, note: must not contain control characters (found U+0000)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler, StringConstraints
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

#: No C0 or C1 control character, DEL included: ids, names, codes, keys.
NO_CONTROL = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: Free text may hold tabs and line breaks, no other control character.
TEXT = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
#: The reason given for either pattern (``service.http.errors`` words the 422 with it).
CONTROL_REASON = "must not contain control characters"
KEY = r"^[A-Za-z_][A-Za-z0-9_.-]*$"

MAX_TEXT = 1_000
MAX_ITEMS = 100
MAX_KEYS = 50
MAX_KEY_LENGTH = 64
#: Numbers in stored JSON: exact as doubles, so every JSON reader gets the same value.
MAX_NUMBER = 2**53 - 1

_BAD_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_KEY_RE = re.compile(KEY)


def identifier(max_length: int, min_length: int = 1) -> StringConstraints:
    """``Annotated[str, identifier(n)]``: 1 to ``n`` characters, no control characters."""
    return StringConstraints(min_length=min_length, max_length=max_length, pattern=NO_CONTROL)


# --- JSON values the API stores (event properties, user attributes) -----------------

_KEY_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": MAX_KEY_LENGTH, "pattern": KEY}
# maxLength and pattern apply to strings only; minimum and maximum to numbers only.
_SCALAR_SCHEMA: dict[str, Any] = {
    "type": ["string", "number", "boolean", "null"],
    "maxLength": MAX_TEXT,
    "pattern": TEXT,
    "minimum": -MAX_NUMBER,
    "maximum": MAX_NUMBER,
}


def _list_of(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "maxItems": MAX_ITEMS, "items": items}


def _object_of(values: dict[str, Any], max_keys: int = MAX_KEYS) -> dict[str, Any]:
    return {
        "type": "object",
        "maxProperties": max_keys,
        "propertyNames": _KEY_SCHEMA,
        "additionalProperties": values,
    }


def _value_schema(depth: int, objects: bool) -> dict[str, Any]:
    """A scalar, or (``depth`` > 1) a list or an object of values one level shallower."""
    if depth <= 1:
        return _SCALAR_SCHEMA
    inner = _value_schema(depth - 1, objects)
    return {"anyOf": [_SCALAR_SCHEMA, _list_of(inner), *([_object_of(inner)] if objects else [])]}


def _problem(value: Any, depth: int, objects: bool = True) -> tuple[str, str] | None:
    """``(path, reason)`` of the first thing wrong in a JSON value, or None."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        if not -MAX_NUMBER <= value <= MAX_NUMBER:  # NaN fails this too
            return "", f"numbers are between -{MAX_NUMBER} and {MAX_NUMBER}"
        return None
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            return "", f"at most {MAX_TEXT} characters"
        bad = _BAD_TEXT.search(value)
        if bad is not None:
            return "", f"{CONTROL_REASON} (found U+{ord(bad[0]):04X})"
        return None
    if (
        depth <= 1
        or not isinstance(value, list | dict)
        or (not objects and isinstance(value, dict))
    ):
        kinds = (
            ""
            if depth <= 1
            else ", or a list or object of those"
            if objects
            else ", or a list of those"
        )
        return "", f"must be a string, number, boolean or null{kinds}"
    if isinstance(value, list):
        if len(value) > MAX_ITEMS:
            return "", f"at most {MAX_ITEMS} items"
        for i, item in enumerate(value):
            if (found := _problem(item, depth - 1, objects)) is not None:
                return f"[{i}]{found[0]}", found[1]
        return None
    return _object_problem(value, depth - 1, objects)


def _object_problem(
    value: dict[Any, Any], depth: int, objects: bool = True, max_keys: int = MAX_KEYS
) -> tuple[str, str] | None:
    if len(value) > max_keys:
        return "", f"at most {max_keys} keys"
    for key, item in value.items():
        if not isinstance(key, str) or not _KEY_RE.match(key) or len(key) > MAX_KEY_LENGTH:
            return f".{key}", f"keys match {KEY} and have at most {MAX_KEY_LENGTH} characters"
        if (found := _problem(item, depth, objects)) is not None:
            return f".{key}{found[0]}", found[1]
    return None


@dataclass(frozen=True)
class JsonObject:
    """``Annotated[dict[str, Any], JsonObject(depth)]``: an object of JSON values nested at
    most ``depth`` levels (1: scalars only; without ``objects``, lists only), bounded as the
    module says, documented as such; errors name the path inside it (``items[3].sku: …``).
    """

    depth: int
    objects: bool = True
    min_keys: int = 0
    max_keys: int = MAX_KEYS

    def check(self, value: dict[str, Any]) -> dict[str, Any]:
        if len(value) < self.min_keys:
            raise ValueError(f"send at least {self.min_keys} key(s)")
        found = _object_problem(value, self.depth, self.objects, self.max_keys)
        if found is not None:
            path = found[0].lstrip(".")
            raise ValueError(f"{path}: {found[1]}" if path else found[1])
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        out = _object_of(_value_schema(self.depth, self.objects), self.max_keys)
        return out | ({"minProperties": self.min_keys} if self.min_keys else {})


#: An event's ``properties``: scalars, lists and objects of them, lists and objects of those
#: (``{"items": [{"sku": "A1", "qty": 2}]}``).
Properties = Annotated[dict[str, Any], JsonObject(3)]
