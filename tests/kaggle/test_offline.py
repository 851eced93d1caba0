"""Acceptance (slow, minutes): a real bundle built with --with-torch installs into a fresh virtual
environment with `pip --isolated --no-index` (nothing but the bundle reachable), and its notebook, run
headless in that environment on a Kaggle-format challenges file, writes a submission with every task
and every test input, two valid grids each, with `arc solve` ending inside its time budget plus the
allowed margin, max(60 s, 3%).

It prints the bundle's size and the install time (run with -s to see them; BENCHMARKS.md records them).
The fresh environment's Jupyter (ipykernel, nbclient) comes from the ordinary index afterwards, as
Kaggle's image has its own: it is not part of the bundle.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import invoke
from testtime.arc.task import as_grid, load_tasks
from testtime.kaggle import MANIFEST, NOTEBOOK, WHEELS

pytestmark = pytest.mark.slow

TASKS = ("66e6c45b", "be03b35f", "4cd1b7b2")
"""Three of the smallest ARC-AGI-1 evaluation tasks (one test input each)."""
BUDGET, BUDGET_S = "3m", 180
MARGIN_S = max(60.0, 0.03 * BUDGET_S)
TTT = ["--ttt-sequences", "64", "--ttt-max-len", "1024"]
"""64 steps of TTT per task, about a minute each on a 2-core CPU: more than the budget holds for all three
after the fallback pass, so the deadline binds (in the run's own words: tasks with TTT, on fallback)."""

EXECUTE = """
import sys

import nbformat
from nbclient import NotebookClient

notebook, executed, parameters, kernel = sys.argv[1:5]
nb = nbformat.read(notebook, as_version=4)
at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
nb.cells.insert(at + 1, nbformat.v4.new_code_cell(parameters))  # papermill's way: overrides after the defaults
try:
    NotebookClient(nb, timeout=1200, kernel_name=kernel).execute()
finally:
    nbformat.write(nb, executed)
"""
"""Run in the fresh environment: execute the notebook with injected parameters, keep what it printed."""


FRESH_ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
"""The fresh environment sees only what is installed in it (not this checkout's src/, say)."""


def run(*command: str | Path, timeout: float = 1200) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout, env=FRESH_ENV)
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def kaggle_challenges(path: Path) -> dict:
    """The tasks in the competition's format: test inputs without their outputs."""
    tasks = {t.id: t for t in load_tasks("arc-agi-1/evaluation").tasks if t.id in TASKS}
    data = {tid: {"train": [{"input": ex.input.tolist(), "output": ex.output.tolist()} for ex in t.train],
                  "test": [{"input": ex.input.tolist()} for ex in t.test]} for tid, t in tasks.items()}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(data))
    return data


def printed(executed: Path) -> str:
    """What the executed notebook's cells printed (nbformat keeps a stream's text as str or list of lines)."""
    cells = json.loads(executed.read_text())["cells"]
    texts = [o.get("text", "") for c in cells for o in c.get("outputs", []) if o["output_type"] == "stream"]
    return "".join("".join(t) if isinstance(t, list) else t for t in texts)


def test_the_bundle_installs_offline_and_its_notebook_writes_a_complete_submission_in_budget(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()  # an empty folder is written into (replaced), not kept
    built = invoke("kaggle", "bundle", bundle, "--with-torch")
    assert built.exit_code == 0, built.output
    print("\n" + next(line for line in built.output.splitlines() if line.startswith("bundle size:")))
    checked = invoke("kaggle", "check", bundle)
    assert checked.exit_code == 0, checked.output

    env = tmp_path / "env"
    run(sys.executable, "-m", "venv", env)
    python = env / "bin" / "python"
    manifest = json.loads((bundle / MANIFEST).read_text())
    offline = [python, "-m", "pip", "install", "--isolated", "--no-index", "--find-links", bundle / WHEELS, "--quiet"]
    start = time.perf_counter()
    run(*offline, *manifest["install"]["requirements"])
    run(*offline, "--no-deps", *manifest["install"]["no_deps"])
    print(f"offline install into a fresh environment: {time.perf_counter() - start:.1f} s")
    torch_wheel = next(name for name in manifest["wheels"] if name.startswith("torch-"))
    assert run(python, "-c", "import torch; print(torch.__version__)").strip() == torch_wheel.split("-")[1]

    run(python, "-m", "pip", "install", "--quiet", "ipykernel", "nbclient")  # the image's Jupyter, not the bundle's
    run(python, "-m", "ipykernel", "install", "--prefix", env, "--name", "testtime-fresh")
    challenges = kaggle_challenges(tmp_path / "input" / "arc-agi_test_challenges.json")
    submission, run_dir = tmp_path / "working" / "submission.json", tmp_path / "working" / "run"
    submission.parent.mkdir()
    parameters = "\n".join(f"{name} = {value!r}" for name, value in [
        ("CHALLENGES", str(tmp_path / "input" / "arc-agi_test_challenges.json")), ("SUBMISSION", str(submission)),
        ("BUNDLE", str(bundle)), ("RUN_DIR", str(run_dir)), ("TIME_BUDGET", BUDGET), ("EXTRA_FLAGS", TTT)])
    executed = tmp_path / "executed.ipynb"
    run(python, "-c", EXECUTE, bundle / NOTEBOOK, executed, parameters, "testtime-fresh")

    output = printed(executed)
    print(output[-3000:])
    assert re.search(rf"installed testtime \S+ from {re.escape(str(bundle))} in [\d.]+ s", output)
    solved = re.search(r"arc solve: exit (\d+) after ([\d.]+) s", output)
    assert solved and solved[1] == "0", output[-3000:]
    assert float(solved[2]) <= BUDGET_S + MARGIN_S
    with_ttt = re.search(r"tasks with TTT\s*\W\s*(\d+)", output)
    on_fallback = re.search(r"tasks on their fallback\s*\W\s*(\d+)", output)
    assert with_ttt and on_fallback and int(with_ttt[1]) + int(on_fallback[1]) == len(TASKS)
    print(f"arc solve: {solved[2]} s of {BUDGET_S} s; {with_ttt[1]} tasks with TTT, {on_fallback[1]} on their fallback")
    assert "(0 tasks without a complete entry" in output  # the run's own submission was complete
    sub = json.loads(submission.read_text())
    assert sorted(sub) == sorted(challenges)
    for task_id, task in challenges.items():
        assert len(sub[task_id]) == len(task["test"])
        for entry in sub[task_id]:
            assert sorted(entry) == ["attempt_1", "attempt_2"]
            for key in entry:
                as_grid(entry[key], where=f"{task_id}.{key}")  # raises on anything but a valid ARC grid
