"""Each setting is declared once, on its dataclass field (`testtime.config.setting`), and every command's
options are generated from those fields: the CLI's defaults are the dataclasses' defaults, every option
is documented in --help, every setting has the flag a refused rerun names, and no default is restated."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import click
import pytest
import typer
import typer.main

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from testtime.arc.settings import PretrainConfig, SolveConfig
from testtime.cli import app, common
from testtime.config import as_json, flags, group, options, runtime_fields, setting
from testtime.lm.settings import EvalConfig
from testtime.models import resolve_dtype

SRC = Path(__file__).resolve().parents[1] / "src" / "testtime"

COMMANDS = {
    # command path -> (arguments that must be given, the library's config for the same run)
    ("arc", "solve"): (["somewhere"], SolveConfig()),
    ("arc", "pretrain"): (["data.json", "--out", "out"], PretrainConfig(sources=["data.json"])),
    ("lm", "eval"): (["--prompts", "p.jsonl", "--index", "mem"], EvalConfig(prompts="p.jsonl", index="mem")),
}


def command(path: tuple[str, ...]) -> click.Command:
    group_ = typer.main.get_command(app)
    for name in path:
        group_ = group_.commands[name]
    return group_


def parsed(path: tuple[str, ...], args: list[str]) -> dict:
    """The options of `testtime PATH ARGS` by long name, as the command reads them (`options_of`)."""
    cmd = command(path)
    with cmd.make_context(cmd.name, list(args)) as ctx:
        return common.options_of(ctx)


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_parsing_no_flags_gives_the_library_config(path):
    args, library = COMMANDS[path]
    opts = options(library)
    built, problems = common.build(library, parsed(path, args), opts, parse={"dtype": common.concrete_dtype})
    assert not problems
    assert as_json(built) == as_json(dataclasses.replace(library, dtype=resolve_dtype("auto")))


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_option_is_documented_in_help(path):
    result = invoke(*path, "--help", columns=300)
    assert result.exit_code == 0, result.output
    shown = [p for p in command(path).params if isinstance(p, click.Option) and not p.hidden]
    for param in shown:
        assert param.help and len(param.help) > 10, f"{param.opts} has no help"
        for name in param.opts:
            assert name in result.output, f"{name} missing from --help"
    panels = [line.split("─ ", 1)[1].split(" ─")[0] for line in result.output.splitlines() if line.startswith("╭─ ")]
    panels = [p for p in panels if p != "Arguments"]
    assert panels[0] == "Options"  # the command's own options first, then the sections in the one order
    assert panels[1:] == [p for p in common.PANELS if p in panels[1:]]


@pytest.mark.parametrize("path", list(COMMANDS), ids=" ".join)
def test_every_setting_is_an_option_with_one_flag_and_refusals_name_it(path):
    _, library = COMMANDS[path]
    opts = options(library)
    names = {n for p in command(path).params for n in getattr(p, "opts", [])}
    named = flags(opts)
    assert len({o.flag for o in opts}) == len(opts)  # no flag for two settings
    for o in opts:
        assert f"--{o.flag}" in names and named[o.path] == f"--{o.flag}"
    # every leaf of the saved config that an option sets is named by that option's flag in a refusal
    assert {o.path for o in opts} | {a for o in opts for a in o.also} == set(named)


def test_the_renamed_and_shared_flags():
    solve = {o.path: o.flag for o in options(SolveConfig())}
    assert solve["infer.select"] == "rank" and solve["lora.r"] == "lora-rank" and solve["train.lr"] == "ttt-lr"
    assert solve["data.n_sequences"] == "ttt-sequences" and solve["train.grad_accum"] == "ttt-grad-accum"
    pretrain = {o.path: o for o in options(PretrainConfig())}
    assert pretrain["train.max_steps"].flag == "steps" and pretrain["train.seed"].also == ("data.seed",)
    assert runtime_fields(PretrainConfig()) == ("max_minutes",)
    assert {o.flag for o in common.scale_options() if o.runtime} == {
        "workers", "gpus-per-worker", "threads-per-worker", "ray-address", "max-retries"}
    assert EvalConfig().lora.alpha == 2 * EvalConfig().lora.r  # PromptLora: alpha follows the rank


@dataclasses.dataclass
class Inner:
    a: int = setting(1, help="A.")
    b_c: str = setting("x", flag="bee", help="B.")
    hidden: int = 3


@dataclasses.dataclass
class Outer:
    top: bool = setting(False, short="t", panel="Main", help="Top.")
    inner: Inner = group(lambda: Inner(a=7), prefix="in-", panel="Inner", expose=("a",))
    seedless: float = setting(0.5, runtime=True, help="Runtime.")


def test_groups_prefix_expose_and_take_their_defaults_from_the_factory():
    opts = options(Outer())
    assert [(o.path, o.flag, o.default, o.panel) for o in opts] == [
        ("top", "top", False, "Main"), ("inner.a", "in-a", 7, "Inner"), ("seedless", "seedless", 0.5, None)]
    assert opts[0].short == "t" and runtime_fields(Outer()) == ("seedless",)


def _settings_classes() -> dict[str, dict[str, object]]:
    """Settings dataclass name -> {field: default} for every class in src with a `setting(...)` field."""
    from testtime import settings as core_settings
    from testtime.arc import settings as arc_settings
    from testtime.jobs import ray_pool
    from testtime.lm import settings as lm_settings

    found = {}
    for module in (core_settings, arc_settings, lm_settings, ray_pool):
        for name, cls in vars(module).items():
            if (dataclasses.is_dataclass(cls) and isinstance(cls, type) and cls.__module__ == module.__name__
                    and any(f.metadata for f in dataclasses.fields(cls))):
                found[name] = {f.name: f.default for f in dataclasses.fields(cls)
                               if f.default is not dataclasses.MISSING}
    return found


def test_no_default_is_restated_in_src():
    """A group factory or preset may override a field, never repeat its default (that is how defaults
    drifted)."""
    classes = _settings_classes()
    assert {"LoraArgs", "TrainArgs", "TTTArgs", "InferArgs", "SamplerArgs", "PromptTTT", "ScaleArgs"} <= set(classes)
    restated = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in classes:
                for kw in node.keywords:
                    default = classes[node.func.id].get(kw.arg, dataclasses.MISSING)
                    if isinstance(kw.value, ast.Constant) and kw.value.value == default:
                        restated.append(f"{path.name}:{node.lineno} {node.func.id}({kw.arg}={default!r})")
    assert not restated
    from testtime.cli.solve import PRESETS

    defaults = {o.path: o.default for o in options(SolveConfig())}
    assert not [k for k, v in PRESETS["paper"].items() if v == defaults[k]]


def test_a_command_cannot_declare_a_setting_by_hand():
    def solve(ctx: typer.Context, ttt_lr: float = typer.Option(1e-3, "--ttt-lr")) -> None: ...

    with pytest.raises(TypeError, match="parameters named like settings: ttt-lr"):
        common.with_settings(options(SolveConfig()))(solve)
