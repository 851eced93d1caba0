"""What every command shares: the console, errors and Ctrl-C, options, --config, progress, summaries.

A command reads: parse (typer) -> build its config from the flags (`build`, validated once by
the dataclasses, problems named by flag) -> run (the library) -> print (`summary`).
"""

from __future__ import annotations

import json
import tomllib
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

from testtime.config import Problem, problems, with_value

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


def preset_option(presets: Mapping[str, Mapping[str, Any]]) -> Any:
    """--preset NAME: a named set of option values (long names) that become the command's defaults.

    Eager, like --config, and below it: a key --config sets keeps the config's value whatever the order
    on the command line, and an explicit flag beats both.
    """
    def apply(ctx: typer.Context, _param: typer.CallbackParam, value: str | None) -> str | None:
        if value is None:
            return None
        if value not in presets:
            raise typer.BadParameter(f"no preset {value!r}; choose one of {', '.join(presets)}")
        names = {long_name(p): p.name for p in ctx.command.params}
        ctx.default_map = {**{names[k]: v for k, v in presets[value].items()}, **(ctx.default_map or {})}
        return value

    return typer.Option(None, "--preset", is_eager=True, callback=apply,
                        help=f"Named settings ({', '.join(presets)}) used as defaults; --config and flags override "
                             "them. The resolved values are printed and saved in the run config.")


def preset_line(name: str, preset: Mapping[str, Any], params: Mapping[str, Any]) -> Text:
    """`preset paper: lora-rank 128, ..., ttt-lr 0.0001 (flag; preset 5e-05)`, every value as resolved."""
    parts = []
    for key, want in preset.items():
        got = params[key]
        parts.append(f"{key} {got}" if got == want else f"{key} {got} (overridden; preset {want})")
    return Text.assemble((f"preset {name}: ", "bold"), ", ".join(parts))


DTYPE = typer.Option("auto", "--dtype", help="Base model weights: auto (bfloat16 on CUDA and on CPUs with AMX or "
                     "AVX-512 BF16, else float32), bfloat16 or float32; the resolved one is saved in config.json. "
                     "LoRA weights and optimizer state stay float32. Pin it for runs resumed on other machines.")
CONFIG = typer.Option(None, "--config", is_eager=True, callback=_load_config, dir_okay=False,
                      help="TOML (or a run's config.json) whose keys are long option names; flags override it.")
LIMIT = typer.Option(None, "--limit", "-n", help="Only the first N items (tasks or prompts).")
RESTART = typer.Option(False, "--restart", help="Discard the results in --out and start over there.")
RETRY_FAILED = typer.Option(False, "--retry-failed", help="Run again the items recorded as failed in --out.")
RAY = typer.Option(False, "--ray", help="Run items on a pool of Ray actors (needs the `ray` extra).")
WORKERS = typer.Option(2, "--workers", help="Ray: actors, each loading the base model once.")
GPUS_PER_WORKER = typer.Option(0.0, "--gpus-per-worker", help="Ray: GPUs per actor; fractional (0.25) shares one.")
THREADS_PER_WORKER = typer.Option(1, "--threads-per-worker", help="Ray: CPU threads per actor.")
RAY_ADDRESS = typer.Option(None, "--ray-address", help="Ray: an existing cluster (default: RAY_ADDRESS, else a "
                           "local instance started and stopped by this command).")
MAX_RETRIES = typer.Option(2, "--max-retries", help="Ray: retries of an item whose worker died.")

RUNTIME = ("config", "restart", "retry-failed", "ray", "workers", "gpus-per-worker", "threads-per-worker",
           "ray-address", "max-retries", "time-budget")
"""Options that are no result-affecting setting (where and how items run; how long a run may take, where each
record says which path made it), so they may differ on a rerun."""


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
    from testtime.jobs.ray_pool import SCALE_FLAGS, ScaleArgs, ScaleError, require_ray

    scale = ScaleArgs(workers=params["workers"], gpus_per_worker=params["gpus-per-worker"],
                      threads_per_worker=params["threads-per-worker"], address=params["ray-address"],
                      max_retries=params["max-retries"])
    if not params["ray"]:
        if scale != ScaleArgs():
            warn("--workers, --gpus-per-worker, --threads-per-worker, --ray-address and --max-retries are "
                 "ignored without --ray")
        return None, []
    found = [p.named(SCALE_FLAGS) for p in problems(scale)]
    try:
        require_ray()
    except ScaleError as err:
        found.append(str(err))
    return scale, found


# --- building a config from flags --------------------------------------------------------------

Fields = Mapping[str, "str | tuple[str, ...]"]
"""Option long name -> the dotted config field(s) it sets."""


def flags_of(fields: Fields) -> dict[str, str]:
    """Dotted config field -> `--flag`, for naming problems and changed settings."""
    out = {}
    for option, paths in fields.items():
        for path in (paths,) if isinstance(paths, str) else paths:
            out.setdefault(path, f"--{option}")
    return out


def build(config: Any, params: Mapping[str, Any], fields: Fields,
          parse: Mapping[str, Callable[[Any], Any]] | None = None) -> tuple[Any, list[str]]:
    """(config with every mapped option set, problems named by flag); dataclasses validate themselves."""
    flags = flags_of(fields)
    for option, paths in fields.items():
        value = (parse or {}).get(option, lambda v: v)(params[option])
        for path in (paths,) if isinstance(paths, str) else paths:
            try:
                config = with_value(config, path, value)
            except (ValueError, TypeError) as err:  # a dataclass that checks itself on construction
                return config, [Problem(path, str(err)).named(flags)]
    return config, [p.named(flags) for p in problems(config)]


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
            run_dir: Any, settings: dict[str, Any], params: Mapping[str, Any], fields: Fields, *,
            restart: bool, work: Callable[[Any, Callable[[Any], None]], Any],
            weight_paths: Mapping[str, Any] | None = None) -> Any:
    """The shape of every item command: open the run directory (locked; refusing changed settings), pick
    the executor, show progress, call `work(executor, emit)`; turn the job layer's errors and Ctrl-C into
    one message each (a write that failed: exit 1, every finished record kept). `settings` is what goes
    into config.json, with the content hashes of `weight_paths` (`weights`) once --out is known usable;
    its `config` part is named by `fields`."""
    from testtime.jobs import RunDirError, ScaleError, SetupError, WriteFailed, describe, executor_for

    flags = {"source": "SOURCE", **WEIGHT_FLAGS, **{f"config.{k}": v for k, v in flags_of(fields).items()}}
    try:
        if run_dir is not None:
            run_dir.check_path()  # --out before the model: its problems are named first
            settings = {**settings, "weights": weights(**(weight_paths or {}))}
            run_dir.open(command, settings, dict(params), restart=restart, flags=flags)
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


WEIGHT_FLAGS = {"weights.model": "--model (its weights)", "weights.adapter": "--adapter (its weights)"}


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
