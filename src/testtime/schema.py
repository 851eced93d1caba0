"""The shape a JSON record must have before anything reads it: a tiny schema language, no dependencies.

    GRID = [[int]]
    TEST = {"attempts": [GRID], "correct?": {"attempt_1": bool}, "truth?": Maybe({"rank": Maybe(int)})}
    mismatches(record, {"task_id": str, "seconds": Number, "tests": [TEST]})   # [] when it fits

A schema is a Python type (`str`, `int`, `bool`, `dict`, `list`; `int` never matches a bool), `Number`
(an int or a finite float, never a bool), `Maybe(schema)` (None too), `OneOf(values...)`, a list
`[schema]` (a list whose every element fits) or a dict of key -> schema (a JSON object holding each
key; a key ending in `?` may be absent; other keys are allowed). Readers validate a record once and
may then index it without a guard.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


class _Number:
    def __repr__(self) -> str:
        return "a number"


Number = _Number()
"""An int or a finite float (not a bool)."""


@dataclass(frozen=True)
class Maybe:
    """`schema`, or None."""

    schema: Any


class OneOf:
    """One of the given JSON values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def __repr__(self) -> str:
        return " or ".join(map(repr, self.values))


def _is(value: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, kind)


def mismatches(value: Any, schema: Any, where: str = "record", limit: int = 3) -> list[str]:
    """Up to `limit` lines `where.field: expected ..., got ...`; empty when `value` fits `schema`."""
    found: list[str] = []
    _walk(value, schema, where, found, limit)
    return found


def _walk(value: Any, schema: Any, where: str, found: list[str], limit: int) -> None:
    if len(found) >= limit:
        return
    if isinstance(schema, Maybe):
        if value is not None:
            _walk(value, schema.schema, where, found, limit)
        return
    ok = True
    if schema is Number:
        ok = _is(value, float)
    elif isinstance(schema, OneOf):
        ok = any(value == v and type(value) is type(v) for v in schema.values)
    elif isinstance(schema, type):
        ok = _is(value, schema)
    elif isinstance(schema, list):
        if not isinstance(value, list):
            ok = False
        else:
            for i, item in enumerate(value):
                _walk(item, schema[0], f"{where}[{i}]", found, limit)
            return
    elif isinstance(schema, dict):
        if not isinstance(value, dict):
            ok = False
        else:
            for key, sub in schema.items():
                name = key.removesuffix("?")
                if name in value:
                    _walk(value[name], sub, f"{where}.{name}", found, limit)
                elif not key.endswith("?"):
                    found.append(f"{where}.{name}: missing")
            return
    if not ok:
        found.append(f"{where}: expected {_describe(schema)}, got {type(value).__name__} {_short(value)}")


def _describe(schema: Any) -> str:
    if isinstance(schema, type):
        return {"str": "a string", "int": "an integer", "bool": "true/false", "dict": "an object",
                "list": "a list", "float": "a number"}.get(schema.__name__, schema.__name__)
    if isinstance(schema, list):
        return "a list"
    if isinstance(schema, dict):
        return "an object"
    return repr(schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
