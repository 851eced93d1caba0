"""Typed run records (dataclasses that write and read themselves as JSON) and the envelope of a record file.

A record type is a dataclass deriving `Record`. Its fields and their type hints are the record's JSON
keys and types, declared once: `to_json` writes them, and `from_json` checks a parsed object against
them (in the `testtime.schema` language) and builds the record, or raises RecordError naming the
fields that do not fit (`record.tests[0].attempts: expected a list, got str 'x'`).

    @dataclass(kw_only=True)
    class Cut(Record):
        at: str
        seconds: float

    Cut.from_json({"at": "training", "seconds": 3.5}) == Cut(at="training", seconds=3.5)

The JSON, field by field:
- a field without a default is a key every file holds. A field with a default may be absent (it reads
  as the default) unless it is `required(...)`, or named in the class's `required_when` for the
  record's `status`;
- a field with a default whose value is None is not written (absent and null read the same);
- hints: str, int, bool, float (a finite number, an int too), `X | None`, `list[X]`, `dict` (any
  object), `Literal[...]`, `Any`, and other Record types (nested objects). Other keys are ignored.

The envelope. A record file is the record's JSON object with the file's own two keys at the top, beside
the record's keys rather than around them, so that every file written before there was an envelope
reads as one:

    {"schema": 2, "fingerprint": "0eb901e772f377a6", "task_id": "007bbfb7", "status": "ok", ...}

`schema` is the version of the record formats (SCHEMA); a file without it is of schema 1 (before the
envelope: the same keys, with its fingerprint already at the top) and reads the same. A file of a
newer schema is not read. `fingerprint` is that of the settings that made the record
(`jobs.rundir.fingerprint`): a run directory reuses a record only under its own. `seal` writes the
envelope and `unseal` reads it: no other code knows its keys.

Light on purpose (no numpy, no torch): the reports import it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

from testtime.atomic import read_json
from testtime.schema import Maybe, Number, OneOf, mismatches

SCHEMA = 2
"""The version of the record formats this testtime writes; it reads files of schema 1 to SCHEMA. Raise it
when a record type changes in a way an older reader would misread."""

_ENVELOPE = ("schema", "fingerprint")
_REQUIRED = "testtime.record.required"

R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A JSON value that is not a record of the type asked for; the message names the fields."""


def required(default: Any) -> Any:
    """A field every record file holds, with a default for the code that builds the record in steps."""
    return dataclasses.field(default=default, metadata={_REQUIRED: True})


class Record:
    """The base of a record dataclass: JSON out (`to_json`) and checked JSON in (`from_json`)."""

    required_when: ClassVar[dict[str, tuple[str, ...]]] = {}
    """A `status` value -> the fields that a file of a record with that status must hold."""

    def to_json(self) -> dict[str, Any]:
        """The record as JSON data; a None field that has a default is left out."""
        out = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None and _optional(f):
                continue
            out[f.name] = _dump(value)
        return out

    @classmethod
    def from_json(cls, data: Any, *, trusted: bool = False) -> Self:
        """The record in `data` (parsed JSON); RecordError names the fields that do not fit. `trusted`: JSON
        that this code's `to_json` just made (a job's record handed back by the job layer), built unchecked:
        a value the check refuses (a NaN loss) must not stop the run that made it."""
        if not trusted:
            problems = cls.problems(data)
            if problems:
                raise RecordError("; ".join(problems))
        return cls._build(data)

    @classmethod
    def problems(cls, data: Any) -> list[str]:
        """Why `data` is not a record of this type (up to 3 lines, each naming a field), or []."""
        status = data.get("status") if isinstance(data, dict) else None
        found = mismatches(data, _schema(cls, status if isinstance(status, str) else None))
        return found or cls.more_problems(data)

    @classmethod
    def more_problems(cls, data: dict[str, Any]) -> list[str]:
        """A subclass's checks beyond the types (e.g. grids rectangular), on data that has the types."""
        return []

    @classmethod
    def _build(cls, data: dict[str, Any]) -> Self:
        hints = _hints(cls)
        return cls(**{f.name: _load(data[f.name], hints[f.name])  # type: ignore[arg-type]
                      for f in dataclasses.fields(cls) if f.name in data})  # type: ignore[arg-type]


def _optional(f: dataclasses.Field) -> bool:
    has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
    return has_default and not f.metadata.get(_REQUIRED, False)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _schema(cls: type[Record], status: str | None) -> dict[str, Any]:
    """The `testtime.schema` schema of `cls`'s JSON for a record with `status` (None: no status rule)."""
    hints, needed = _hints(cls), set(cls.required_when.get(status, ())) if status is not None else set()
    schema = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        entry = _schema_of(hints[f.name])
        if f.name in needed and isinstance(entry, Maybe):  # required for this status: null is not a value
            entry = entry.schema
        schema[f.name + ("?" if _optional(f) and f.name not in needed else "")] = entry
    return schema


def _schema_of(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return object
    if hint is float:
        return Number
    if hint in (str, int, bool, dict) or origin is dict:
        return origin or hint
    if isinstance(hint, type) and issubclass(hint, Record):
        return _schema(hint, None)
    if origin is typing.Literal:
        return OneOf(*args)
    if origin is list:
        return [_schema_of(args[0])]
    if origin in (typing.Union, types.UnionType) and type(None) in args and len(args) == 2:
        return Maybe(_schema_of(next(a for a in args if a is not type(None))))
    raise TypeError(f"a record field of type {hint!r} has no JSON schema")


def _load(value: Any, hint: Any) -> Any:
    """`value` (JSON that fits `hint`) as the field's value: nested records built, lists copied."""
    if value is None:
        return None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _load(value, next(a for a in args if a is not type(None)))
    if isinstance(hint, type) and issubclass(hint, Record):
        return hint._build(value)
    if origin is list:
        return [_load(v, args[0]) for v in value]
    return value


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return value


# --- the envelope ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Sealed:
    """A record file's content: its envelope (schema, fingerprint) and the record's own JSON."""

    schema: int
    fingerprint: str | None
    record: dict[str, Any]


def seal(record: dict[str, Any], fingerprint: str | None) -> dict[str, Any]:
    """The JSON of a record file: the envelope's keys (the fingerprint when there is one), then `record`'s."""
    clash = sorted(set(_ENVELOPE) & set(record))
    if clash:
        raise ValueError(f"a record may not use the envelope's keys ({', '.join(clash)})")
    return {"schema": SCHEMA, **({} if fingerprint is None else {"fingerprint": fingerprint}), **record}


def unseal(data: Any) -> Sealed:
    """The envelope and record of a parsed record file; RecordError for a value that is not one, or a file
    of a schema this testtime does not read."""
    if not isinstance(data, dict):
        raise RecordError(f"record: expected an object, got {type(data).__name__}")
    schema = data.get("schema", 1)
    if type(schema) is not int or schema < 1:
        raise RecordError(f"record.schema: expected a version from 1, got {schema!r}")
    if schema > SCHEMA:
        raise RecordError(f"record.schema: {schema}, written by a newer testtime (this one reads up to {SCHEMA})")
    fingerprint = data.get("fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, str):
        raise RecordError(f"record.fingerprint: expected a string, got {type(fingerprint).__name__}")
    return Sealed(schema, fingerprint, {k: v for k, v in data.items() if k not in _ENVELOPE})


def load_record(path: str | Path, cls: type[R]) -> R:
    """The record of type `cls` in the file at `path`; RecordError says why there is none (the file is
    missing or not JSON, its envelope or a field does not fit)."""
    data = read_json(path)
    if data is None:
        raise RecordError("missing, unreadable or not JSON")
    return cls.from_json(unseal(data).record)
