"""Settings as nested dataclasses: validated once, flattened for run directories, named by flag.

Every settings dataclass may define `check()`, yielding `(field, message)` for each bad value;
`Literal[...]` fields are checked against their choices here, so no dataclass repeats that.
`problems(config)` walks the nesting and returns every problem with its dotted path
(`train.lr`); a command maps those paths to its own flags (`--ttt-lr`) to say what to fix.

    problems(SolveConfig(train=TrainArgs(lr=-1)))   # [Problem("train.lr", "must be positive, not -1")]
    flatten({"train": {"lr": 1e-4}})                # {"train.lr": 0.0001}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One bad setting: its dotted path in the config and what is wrong with its value."""

    field: str
    message: str

    def named(self, flags: Mapping[str, str] | None = None) -> str:
        """`--flag message` when the command has a flag for the field, else `field message`."""
        return f"{(flags or {}).get(self.field, self.field)} {self.message}"


class ConfigError(ValueError):
    """Settings that cannot run; the message lists every problem, each naming its flag."""

    def __init__(self, problems: list[Problem], flags: Mapping[str, str] | None = None) -> None:
        self.problems = problems
        super().__init__("; ".join(p.named(flags) for p in problems))


def problems(config: Any, prefix: str = "") -> list[Problem]:
    """Every problem of a settings dataclass and the dataclasses nested in it."""
    found: list[Problem] = []
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        choices = _literal_choices(hints.get(f.name))
        if choices and value not in choices:
            found.append(Problem(prefix + f.name, f"must be one of {', '.join(map(str, choices))}, not {value!r}"))
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            found.extend(problems(value, f"{prefix}{f.name}."))
    check = getattr(config, "check", None)
    if callable(check):
        found.extend(Problem(prefix + name, message) for name, message in check())
    order = {f.name: i for i, f in enumerate(dataclasses.fields(config))}
    return sorted(found, key=lambda p: order.get(p.field[len(prefix):].split(".")[0], len(order)))  # field order


def validate(config: Any, flags: Mapping[str, str] | None = None) -> Any:
    """Return `config` unchanged, or raise one ConfigError naming every problem."""
    found = problems(config)
    if found:
        raise ConfigError(found, flags)
    return config


def _literal_choices(hint: Any) -> tuple[Any, ...]:
    """The allowed values of a `Literal[...]` (or `Literal[...] | None`) type hint, else ()."""
    if typing.get_origin(hint) is typing.Literal:
        return typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if typing.get_origin(arg) is typing.Literal:
                return (*typing.get_args(arg), None)
    return ()


# --- small checks, used by the dataclasses' check() ---------------------------------------------

def at_least(name: str, value: float | None, low: float) -> Iterator[tuple[str, str]]:
    if value is not None and not value >= low:  # also catches NaN
        yield name, f"must be at least {low:g}, not {value}"


def positive(name: str, value: float | None) -> Iterator[tuple[str, str]]:
    if value is not None and not (value > 0 and math.isfinite(value)):
        yield name, f"must be a positive number, not {value}"


def in_range(name: str, value: float, low: float, high: float) -> Iterator[tuple[str, str]]:
    """low <= value < high."""
    if not low <= value < high:
        yield name, f"must be in [{low:g}, {high:g}), not {value}"


# --- flattening, for comparing runs ---------------------------------------------------------------

def as_json(config: Any) -> Any:
    """A dataclass (or any nesting of them, tuples, paths) as plain JSON values, as read back from disk."""
    data = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config
    return json.loads(json.dumps(data, default=str))


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted keys; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def with_value(config: Any, path: str, value: Any) -> Any:
    """A copy of nested dataclass `config` with the field at dotted `path` set to `value`."""
    head, _, rest = path.partition(".")
    if not rest:
        return dataclasses.replace(config, **{head: value})
    return dataclasses.replace(config, **{head: with_value(getattr(config, head), rest, value)})


def default_threads() -> int:
    """CPU threads for this process's math: OMP_NUM_THREADS where it is set, else every CPU the process
    may run on (its affinity mask, which a container or `taskset` narrows: not the machine's core count)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def use_default_threads() -> int:
    """Before torch is imported: OMP_NUM_THREADS set to `default_threads()` (so torch, and processes started
    from here, use that many unless they choose otherwise, as Ray's actors do). Returns the number."""
    n = default_threads()
    os.environ["OMP_NUM_THREADS"] = str(n)
    return n
