"""The package's shape: imports point one way (CLI -> domains -> jobs -> core), modules stay small, and
nothing in it is a switch for the test suite."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "testtime"

CORE = {"atomic", "batching", "checkpoint", "config", "decode", "digest", "extract", "finetune", "logprob", "lora",
        "models", "precision", "records", "schema", "seeds", "settings"}
LAYER_OF = {"jobs": 1, "arc": 2, "lm": 2, "report": 3, "kaggle": 3, "cli": 4}
"""Package part -> layer; the core modules (and the package root) are layer 0. `report` renders the
domains' records (JSON) as HTML, so it sits above them and below the CLI; so does `kaggle`, which
bundles the domains' models and runs `arc solve` from a notebook."""
MAY_NOT_IMPORT = {
    "arc": {"lm"},   # the two domains are independent of each other
    "lm": {"arc"},
    "report": {"jobs"},
    "kaggle": {"report", "jobs"},  # packaging: it names the domains' models, writes submissions
}
REPORT_READS = {"testtime.arc.records", "testtime.arc.task", "testtime.lm.records"}
"""All the report may import of the domains: their record types and the task loader (light modules)."""
LIGHT = ("testtime.records", "testtime.arc.records", "testtime.lm.records")
"""Record modules every reader imports, the report included: no numerics, no model code."""

SWITCH_WORDS = {"TEST", "TESTS", "TESTING", "PYTEST", "FAULT", "FAULTS", "INJECT", "HOOK", "HOOKS", "MOCK"}
"""Words of an environment variable that would be a switch for the test suite (TESTTIME_TEST_HOOK)."""
ENV_NAME = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")

MAX_FILE_LINES = 400
MAX_BODY_LINES = 60
"""A function's statements after its docstring: a typer command's long option list is its signature."""


def modules() -> list[tuple[str, Path]]:
    def name(p: Path) -> str:
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return [(name(p), p) for p in sorted(PACKAGE.rglob("*.py"))]


def part_of(module: str) -> str:
    """`testtime.arc.solve` -> arc; `testtime.finetune` -> finetune (a core module)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_of(module: str) -> int:
    return LAYER_OF.get(part_of(module), 0)


def imported(path: Path, module: str) -> set[str]:
    """Every testtime module `path` imports, at the top or inside functions, relative imports resolved."""
    found = set()
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("testtime")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            if base.startswith("testtime"):
                found.add(base)
                for alias in node.names:  # `from testtime.jobs import run` imports a module too
                    path = PACKAGE.parent / f"{base}.{alias.name}".replace(".", "/")
                    if path.with_suffix(".py").is_file() or path.is_dir():
                        found.add(f"{base}.{alias.name}")
    return found


def arrows() -> list[tuple[str, str]]:
    return [(m, target) for m, path in modules() for target in sorted(imported(path, m))]


def test_the_layer_table_covers_every_part_of_the_package():
    parts = {part_of(m) for m, _ in modules()} - {""}
    assert parts <= CORE | set(LAYER_OF), f"put the new part(s) in a layer: {parts - CORE - set(LAYER_OF)}"


def test_imports_point_from_the_cli_to_the_domains_to_the_jobs_to_the_core():
    wrong = [f"{a} imports {b}" for a, b in arrows()
             if part_of(a) != part_of(b) and part_of(b) and layer_of(b) > layer_of(a)]
    assert not wrong, "an arrow points up a layer:\n" + "\n".join(wrong)


def test_the_core_and_the_job_layer_know_no_domain():
    domains = {"arc", "lm", "cli"}
    wrong = [f"{a} imports {b}" for a, b in arrows() if layer_of(a) <= 1 and part_of(b) in domains]
    assert not wrong, "\n".join(wrong)


def test_domains_do_not_import_each_other():
    wrong = [f"{a} imports {b}" for a, b in arrows() if part_of(b) in MAY_NOT_IMPORT.get(part_of(a), ())]
    assert not wrong, "\n".join(wrong)


def test_the_report_reads_only_the_domains_records_and_tasks():
    wrong = [f"{a} imports {b}" for a, b in arrows()
             if part_of(a) == "report" and part_of(b) in ("arc", "lm") and b not in REPORT_READS]
    assert not wrong, "\n".join(wrong)


def test_the_record_modules_import_no_numerics_or_model_code():
    code = (f"import sys; import {', '.join(LIGHT)}; heavy = [m for m in ('numpy', 'torch', 'transformers', "
            "'peft') if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})


def test_the_checker_sees_an_arrow_pointing_the_wrong_way(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from testtime.arc.solve import ArcJob\n    from .cli import common\n")
    assert imported(bad, "testtime.jobs.bad") == {"testtime.arc.solve", "testtime.jobs.cli"}
    assert layer_of("testtime.arc.solve") > layer_of("testtime.jobs.bad") > layer_of("testtime.finetune")


def switch_names(source: str) -> set[str]:
    """Every string constant of `source` named like an environment variable (FOO_BAR) with a test word in it."""
    return {node.value for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Constant)
            and isinstance(node.value, str) and ENV_NAME.fullmatch(node.value)
            and SWITCH_WORDS & set(node.value.split("_"))}


def test_no_environment_variable_is_a_test_switch():
    """Faults are injected by the test suite wrapping jobs (tests/faults.py), never by the package reading
    a variable: one left set in a shell once made every task of every run fail."""
    wrong = [f"{module}: {name}" for module, path in modules() for name in sorted(switch_names(path.read_text()))]
    assert not wrong, "\n".join(wrong)


def test_the_switch_checker_sees_one():
    source = 'import os\nHOOK = "TESTTIME_TEST_HOOK"\nos.environ.get(HOOK) or os.getenv("MY_FAULTS")\n'
    assert switch_names(source) == {"TESTTIME_TEST_HOOK", "MY_FAULTS"}
    assert switch_names('os.environ.get("TESTTIME_CACHE"), os.environ["OMP_NUM_THREADS"]') == set()


@pytest.mark.parametrize("module,path", modules(), ids=[m for m, _ in modules()])
def test_modules_and_functions_stay_small(module, path):
    source = path.read_text()
    assert len(source.splitlines()) <= MAX_FILE_LINES, f"{module} has {len(source.splitlines())} lines"
    long = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                body = body[1:]
            if node.end_lineno - body[0].lineno + 1 > MAX_BODY_LINES:
                long.append(f"{node.name}: {node.end_lineno - body[0].lineno + 1} lines")
    assert not long, f"{module}: " + ", ".join(long)
