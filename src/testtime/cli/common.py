"""What every command shares: the console, errors and Ctrl-C, options, --config, progress, summaries.

A command reads: parse (typer) -> build its config from the flags (`build`, validated once by
the dataclasses, problems named by flag) -> run (the library) -> print (`summary`).
"""

from __future__ import annotations

import functools
import inspect
import json
import tomllib
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from testtime.config import Option, Problem, flags, options, problems, with_value

console = Console()
"""The one console every command prints to."""


def fail(message: str, code: int = 2) -> NoReturn:
    """Print `error: message` (never read as markup) and exit with `code` (2: bad input)."""
    console.print(Text.assemble(("error: ", "bold red"), message))
    raise typer.Exit(code=code)


def warn(message: str) -> None:
    console.print(Text.assemble(("warning: ", "yellow"), message))


def interrupted(out: Path | None, noun: str, detail: str = "") -> NoReturn:
    """Ctrl-C: say what was kept and how to resume, exit 130."""
    saved = (f"finished {noun}s are saved in {out}; run the same command again to resume" if out
             else "nothing was saved (no --out)")
    console.print(Text.assemble(("interrupted: ", "bold yellow"), saved + detail))
    raise typer.Exit(code=130)


def safe(value: Any) -> str:
    """A user-supplied value ready to go inside a markup string."""
    return escape(str(value).replace("\x00", "\\0"))


def summary(title: str, rows: list[tuple[str, str]]) -> None:
    """The two-column table every command ends with."""
    table = Table(title=title)
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


# --- options shared by several commands --------------------------------------------------------

def _load_config(ctx: typer.Context, _param: typer.CallbackParam, value: Path | None) -> Path | None:
    """--config FILE: its keys (long option names) become the command's defaults; flags still win."""
    if value is None:
        return None
    try:
        text = value.read_text(encoding="utf-8")
        data = tomllib.loads(text) if value.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise typer.BadParameter(f"{value}: cannot read it as {'TOML' if value.suffix == '.toml' else 'JSON'} "
                                 f"({err})") from None
    if isinstance(data, dict) and isinstance(data.get("options"), dict):  # a run directory's config.json
        data = data["options"]
    if not isinstance(data, dict):
        raise typer.BadParameter(f"{value}: expected a table of option names and values")
    names = {long_name(p): p.name for p in ctx.command.params} | {p.name: p.name for p in ctx.command.params}
    unknown = sorted(k for k in data if k not in names or names[k] in ("config", "restart", "retry_failed"))
    if unknown:
        raise typer.BadParameter(f"{value}: no option {', '.join(unknown)} in `{ctx.command_path}` "
                                 "(keys are long option names, e.g. ttt-sequences)")
    ctx.default_map = {**(ctx.default_map or {}), **{names[k]: v for k, v in data.items()}}
    return value


def preset_option(presets: Mapping[str, Mapping[str, Any]], opts: list[Option]) -> Any:
    """--preset NAME: a named partial override of settings (dotted field paths -> values) whose values become
    the command's defaults.

    Eager, like --config, and below it: a key --config sets keeps the config's value whatever the order
    on the command line, and an explicit flag beats both.
    """
    by_path = {o.path: o for o in opts}

    def apply(ctx: typer.Context, _param: typer.CallbackParam, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in presets:
            raise typer.BadParameter(f"no preset {value!r}; choose one of {', '.join(presets)}")
        defaults = {by_path[k].name: _cli_value(v) for k, v in presets[value].items()}
        ctx.default_map = {**defaults, **(ctx.default_map or {})}
        return value

    return typer.Option(None, "--preset", is_eager=True, callback=apply,
                        help=f"Named settings ({', '.join(presets)}) used as defaults; --config and flags override "
                             "them. The resolved values are printed and saved in the run config.")


def preset_line(name: str, preset: Mapping[str, Any], params: Mapping[str, Any], opts: list[Option]) -> Text:
    """`preset paper: lora-rank 128, ..., ttt-lr 0.0001 (flag; preset 5e-05)`, every value as resolved."""
    by_path = {o.path: o for o in opts}
    parts = []
    for path, value in preset.items():
        flag, want = by_path[path].flag, _cli_value(value)
        got = params[flag]
        parts.append(f"{flag} {got}" if got == want else f"{flag} {got} (overridden; preset {want})")
    return Text.assemble((f"preset {name}: ", "bold"), ", ".join(parts) or "the defaults")


CONFIG = typer.Option(None, "--config", is_eager=True, callback=_load_config, dir_okay=False,
                      help="TOML (or a run's config.json) whose keys are long option names; flags override it.")
LIMIT = typer.Option(None, "--limit", "-n", help="Only the first N items (tasks or prompts).")
RESTART = typer.Option(False, "--restart", help="Discard the results in --out and start over there.",
                       rich_help_panel="Run directory")  # one of PANELS
RETRY_FAILED = typer.Option(False, "--retry-failed", help="Run again the items recorded as failed in --out.",
                            rich_help_panel="Run directory")
RAY = typer.Option(False, "--ray", help="Run items on a pool of Ray actors (needs the `ray` extra); the Ray options "
                   "below apply only with it.", rich_help_panel="Scale-out")


def scale_options() -> list[Option]:
    """The Ray options (the runtime settings of `ScaleArgs`)."""
    from testtime.jobs.ray_pool import ScaleArgs

    return options(ScaleArgs())


def runtime_flags(opts: list[Option]) -> tuple[str, ...]:
    """The long names of the options that are no result-affecting setting (where and how items run; how long
    a run may take, where each record says which path made it), so they may differ on a rerun: the shared
    ones, `--time-budget` and the runtime settings of `opts`."""
    return ("config", "restart", "retry-failed", "ray", "time-budget", *(o.flag for o in opts if o.runtime))


def long_name(param: click.Parameter) -> str:
    """`ttt-sequences` for --ttt-sequences; an argument's own name."""
    longs = [o[2:] for o in getattr(param, "opts", []) if o.startswith("--")]
    return longs[0] if longs else str(param.name)


def options_of(ctx: typer.Context) -> dict[str, Any]:
    """Every option of this invocation by long name, as JSON values (what `--config` reads back)."""
    out = {}
    for param in ctx.command.params:
        name = long_name(param)
        if name in ("config", "restart", "retry-failed") or param.name not in ctx.params:
            continue
        value = ctx.params[param.name]
        out[name] = json.loads(json.dumps(value, default=str))
    return out


def scale_of(params: Mapping[str, Any]) -> tuple[Any, list[str]]:
    """(ScaleArgs or None, problems) from the Ray options; Ray flags without --ray only warn."""
    from testtime.jobs.ray_pool import ScaleArgs, ScaleError, require_ray

    opts = scale_options()
    scale, found = build(ScaleArgs(), params, opts)
    if not params["ray"]:
        if scale != ScaleArgs():
            warn(", ".join(f"--{o.flag}" for o in opts) + " are ignored without --ray")
        return None, []
    try:
        require_ray()
    except ScaleError as err:
        found.append(str(err))
    return scale, found


# --- settings as options: generated from the settings dataclasses --------------------------------

def with_settings(opts: list[Option]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command decorator: each setting of `opts` (`config.options` of a config instance, whose values are
    the defaults) becomes a typer option after the command's own parameters, in its help panel. The
    command reads them by long name from `options_of(ctx)` and builds its config with `build`."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = inspect.signature(command)
        hints = typing.get_type_hints(command)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in own.parameters.values()]
        clash = [o.flag for o in opts if o.name in own.parameters]
        if clash:
            raise TypeError(f"{command.__name__}: parameters named like settings: {', '.join(clash)}")
        params += [inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=_typer_option(o),
                                     annotation=_cli_type(o.hint)) for o in opts]
        head = params[:1] if params and params[0].annotation is typer.Context else []
        rest = sorted(params[len(head):], key=lambda p: PANELS.index(_panel(p)))  # --help: sections in PANELS order
        params = head + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in rest]
        names = {o.name for o in opts}

        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            return command(*args, **{k: v for k, v in kwargs.items() if k not in names})

        run.__signature__ = own.replace(parameters=params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run

    return decorate


PANELS = (None, "Model", "Data", "TTT", "LoRA", "Inference", "Selection", "Fine-tuning", "Training", "Validation",
          "Run directory", "Scale-out")
"""The --help sections of every command, in order: the command's own options (no panel) first."""


def _panel(param: inspect.Parameter) -> str | None:
    return getattr(param.default, "rich_help_panel", None)


def _typer_option(o: Option) -> Any:
    names = [f"--{o.flag}/--no-{o.flag}"] if _cli_type(o.hint) is bool else [f"--{o.flag}"]
    if o.short:
        names.append(f"-{o.short}")
    return typer.Option(_cli_value(o.default), *names, help=o.help, rich_help_panel=o.panel)


def _cli_type(hint: Any) -> Any:
    """The type typer parses for a setting: Literal choices and comma lists as str (the dataclass checks them)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Literal, tuple, list):
        return str
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _cli_type(inner[0]) | None
    return hint


def _cli_value(value: Any) -> Any:
    """A setting's value as its option takes it: a tuple as a comma list."""
    return ",".join(value) if isinstance(value, tuple | list) else value


def build(config: Any, params: Mapping[str, Any], opts: list[Option],
          parse: Mapping[str, Callable[[Any], Any]] | None = None) -> tuple[Any, list[str]]:
    """(config with every option of `opts` set from `params` (long name -> value), problems named by flag);
    comma lists become tuples, `parse` (long name -> function) converts others; dataclasses validate
    themselves."""
    named = flags(opts)
    for o in opts:
        value = params[o.flag]
        if o.flag in (parse or {}):
            value = parse[o.flag](value)
        elif isinstance(value, str) and typing.get_origin(o.hint) is tuple:
            value = comma_list(value)
        for path in (o.path, *o.also):
            try:
                config = with_value(config, path, value)
            except (ValueError, TypeError) as err:  # a dataclass that checks itself on construction
                return config, [Problem(path, str(err)).named(named)]
    return config, [p.named(named) for p in problems(config)]


def concrete_dtype(value: str) -> str:
    """`auto` resolved for this machine, so the run directory records what really ran."""
    from testtime.models import DTYPES, resolve_dtype

    return resolve_dtype(value) if value in DTYPES else value  # a bad value is left for the config check


def comma_list(value: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in value.split(",") if s.strip())


# --- progress: one view, fed by job events ---------------------------------------------------

@contextmanager
def progress_view(noun: str, line: Callable[[dict, bool], str]) -> Iterator[Callable[[Any], None]]:
    """A bar over the items run now (ok, failed, retried, running, ETA), a training-step bar, a line
    per finished item (`line(record, resumed)`); yields the `emit` to hand to the job layer."""
    from testtime.jobs import Finished, Notice, Started, Status, Step

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[counts]}"),
                        console=console)
    current = {"id": ""}
    with progress:
        bar = progress.add_task(f"{noun}s", total=None, counts="")
        steps = progress.add_task("  TTT", total=None, counts="", visible=False)

        def emit(event: Any) -> None:
            if isinstance(event, Started):
                current["id"] = event.item_id
                progress.update(steps, visible=False)
            elif isinstance(event, Step):
                info = event.info
                progress.update(steps, visible=True, total=info.total_steps, completed=info.step,
                                counts=f"| {safe(event.item_id)} | loss {info.loss:.3f} | "
                                       f"{info.tokens_per_s:,.0f} tok/s")
            elif isinstance(event, Finished):
                progress.update(steps, visible=False)
                progress.console.print(Text(line(event.record, event.resumed)))
            elif isinstance(event, Notice):
                progress.console.print(Text("  " + event.message, style="yellow"))
            elif isinstance(event, Status):
                progress.update(bar, total=event.total, completed=event.done,
                                counts=f"| {event.done - event.failed} ok, {event.failed} failed, "
                                       f"{event.retried} retried, {event.running} running")

        yield emit


def run_job(command: str, noun: str, line: Callable[[dict, bool], str], scale: Any, out: Path | None,
            run_dir: Any, settings: dict[str, Any], params: Mapping[str, Any], opts: list[Option], *,
            restart: bool, work: Callable[[Any, Callable[[Any], None]], Any],
            weight_paths: Mapping[str, Any] | None = None) -> Any:
    """The shape of every item command: open the run directory (locked; refusing changed settings), pick
    the executor, show progress, call `work(executor, emit)`; turn the job layer's errors and Ctrl-C into
    one message each (a write that failed: exit 1, every finished record kept). `settings` is what goes
    into config.json, with the content hashes of `weight_paths` (`weights`) once --out is known usable;
    its `config` part is named by the flags of `opts`."""
    from testtime.jobs import RunDirError, ScaleError, SetupError, WriteFailed, describe, executor_for

    named = {"source": "SOURCE", **WEIGHT_FLAGS, **{f"config.{k}": v for k, v in flags(opts).items()}}
    try:
        if run_dir is not None:
            run_dir.check_path()  # --out before the model: its problems are named first
            settings = {**settings, "weights": weights(**(weight_paths or {}))}
            run_dir.open(command, settings, dict(params), restart=restart, flags=named)
        with executor_for(scale) as executor:
            where = describe(executor)
            if where:
                console.print(safe(where))
            with progress_view(noun, line) as emit:
                return work(executor, emit)
    except WriteFailed as err:
        fail(str(err), code=1)
    except (RunDirError, ScaleError, SetupError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        interrupted(out, noun, " (its Ray workers were stopped)" if scale is not None else "")
    finally:
        if run_dir is not None:
            run_dir.close()


WEIGHT_FLAGS = {"weights.model": "--model (its weights)", "weights.adapter": "--adapter (its weights)",
                "index_sha256": "--index (its chunks and embeddings)"}


def weights(**paths: Any) -> dict[str, str | None]:
    """`{"model": sha256, ...}`: what the weights that `--model` (any local file, folder or cached hub id)
    and `--adapter` name are, by content, so that new files at the same path count as a changed setting.
    Hashes are remembered in the model cache (per inode, size and mtime), so a file is read once."""
    from testtime.digest import weights_digest
    from testtime.models import ModelLoadError, cache_root, model_source

    root = cache_root()
    store = root / "sha256.json" if root is not None else None
    out: dict[str, str | None] = {}
    for name, value in paths.items():
        try:
            source = model_source(value) if name == "model" else Path(value) if value else None
            out[name] = weights_digest(source, store) if source is not None else None
        except ModelLoadError as err:
            fail(str(err))
        except OSError as err:
            fail(f"--{name} {value}: cannot read {err.filename or value} ({err.strerror or err})")
    return out


def bar(label: str = "{task.description}") -> Progress:
    """The step bar of commands that are not item runs (pretrain, lm index): label, bar, ETA, status."""
    return Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console)
