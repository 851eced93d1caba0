"""Settings as nested dataclasses: declared once, validated once, flattened for run directories, named by flag.

A setting is a dataclass field declared with `setting(default, help=...)`: its default, its help, its
flag (the field name with dashes, unless `flag=` says otherwise), its help panel and whether it is a
runtime option (never changes results) live there and nowhere else. A command's config mounts the
settings dataclasses it uses with `group(factory, prefix=..., panel=..., expose=...)`; `options(config)`
walks an instance and lists every exposed setting with its dotted path (`train.lr`), its flag
(`ttt-lr`) and its default (the instance's value), which is what the CLI turns into typer options.

Every settings dataclass may define `check()`, yielding `(field, message)` for each bad value;
`Literal[...]` fields are checked against their choices here, so no dataclass repeats that.
`problems(config)` walks the nesting and returns every problem with its dotted path; a command
names it by flag (`flags(options(config))`) to say what to fix.

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
from collections.abc import Callable, Iterator, Mapping
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


# --- declaring settings --------------------------------------------------------------------------

_META = "testtime.setting"


@dataclass(frozen=True)
class _Setting:
    help: str
    flag: str | None
    short: str | None
    panel: str | None
    runtime: bool


@dataclass(frozen=True)
class _Group:
    prefix: str
    panel: str | None
    expose: tuple[str, ...] | None
    also: Mapping[str, tuple[str, ...]]


def setting(default: Any = dataclasses.MISSING, *, help: str, flag: str | None = None,  # noqa: A002
            short: str | None = None, panel: str | None = None, runtime: bool = False,
            factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field that is a setting: `help` is its one description (the CLI's too); `flag` its
    long option name below the group's prefix (default: the field name with dashes); `short` a
    one-letter alias (`-m`); `panel` its --help section (default: its group's); `runtime`: it never
    changes results, so a rerun may change it and run directories do not record it as a setting."""
    meta = {_META: _Setting(help, flag, short, panel, runtime)}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def group(factory: Callable[[], Any], *, prefix: str = "", panel: str | None = None,
          expose: tuple[str, ...] | None = None, also: Mapping[str, tuple[str, ...]] | None = None) -> Any:
    """A nested settings dataclass inside a command's config. Its settings get flags `prefix + flag`
    and the --help section `panel`; `expose` names the fields that become options (default: every
    setting; the rest keep the factory's values). `also`: an exposed field whose flag sets other
    fields (dotted paths from the outer config) too, e.g. `{"seed": ("data.seed",)}`."""
    meta = {_META: _Group(prefix, panel, tuple(expose) if expose is not None else None, dict(also or {}))}
    return dataclasses.field(default_factory=factory, metadata=meta)


@dataclass(frozen=True)
class Option:
    """One setting as a command-line option: where it lives, its flag and default, how to show it."""

    path: str
    """Dotted field path in the command's config: `train.lr`."""
    flag: str
    """Long option name without dashes: `ttt-lr`."""
    default: Any
    """The config instance's value: the one default of the option."""
    hint: Any
    """The field's type hint."""
    help: str
    panel: str | None
    short: str | None
    runtime: bool
    also: tuple[str, ...] = ()
    """Other dotted paths the option sets to the same value."""

    @property
    def name(self) -> str:
        """The option's Python parameter name: `ttt_lr`."""
        return self.flag.replace("-", "_")


def options(config: Any, *, _path: str = "", _prefix: str = "", _panel: str | None = None,
            _expose: tuple[str, ...] | None = None, _also: Mapping[str, tuple[str, ...]] | None = None) -> list[Option]:
    """Every exposed setting of the dataclass instance `config` (nested groups included), in field order."""
    hints = typing.get_type_hints(type(config))
    found: list[Option] = []
    for f in dataclasses.fields(config):
        meta = f.metadata.get(_META)
        value = getattr(config, f.name)
        if isinstance(meta, _Group):
            found += options(value, _path=f"{_path}{f.name}.", _prefix=_prefix + meta.prefix,
                             _panel=meta.panel or _panel, _expose=meta.expose, _also=meta.also)
        elif isinstance(meta, _Setting) and (_expose is None or f.name in _expose):
            found.append(Option(f"{_path}{f.name}", _prefix + (meta.flag or f.name.replace("_", "-")), value,
                                hints[f.name], meta.help, meta.panel or _panel, meta.short, meta.runtime,
                                tuple((_also or {}).get(f.name, ()))))
    return found


def flags(opts: list[Option]) -> dict[str, str]:
    """Dotted field path -> `--flag`, for naming problems and changed settings."""
    return {path: f"--{o.flag}" for o in opts for path in (o.path, *o.also)}


def runtime_fields(config: Any) -> tuple[str, ...]:
    """The dotted paths of `config`'s runtime settings (they never change results)."""
    return tuple(o.path for o in options(config) if o.runtime)


Dtype = typing.Literal["auto", "bfloat16", "float32"]


def model_setting() -> Any:
    """The base model setting of every command that loads one."""
    return setting("embedded", short="m", panel="Model",
                   help="Base model: `embedded` (SmolLM2-135M from its GGUF), a Hugging Face id or a local directory.")


def dtype_setting() -> Any:
    """The base model's dtype setting of every command that loads one (commands record the resolved one)."""
    return setting("auto", panel="Model", help="Base model weights: auto (bfloat16 on CUDA and on CPUs with AMX or "
                   "AVX-512 BF16, else float32), bfloat16 or float32; the resolved one is saved in config.json. LoRA "
                   "weights and optimizer state stay float32. Pin it for runs resumed on other machines.")


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


def rename_keys(settings: Mapping[str, Any], renamed: Mapping[str, str]) -> dict[str, Any]:
    """Flattened `settings` with every key that starts with an old prefix of `renamed` (old -> new) given
    the new one: how a run directory written before a setting was renamed is read."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        old = next((o for o in renamed if key.startswith(o)), None)
        out[key if old is None else renamed[old] + key[len(old):]] = value
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
