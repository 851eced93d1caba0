"""The notebook `testtime-arc.ipynb` and what it calls: its parameters, its install cell, the `arc solve`
command for the GPUs there, and the submission it always completes."""

from __future__ import annotations

import ast
import json
import sys

import pytest

from testtime.arc.score import load_submission
from testtime.kaggle import KIND, MANIFEST, NOTEBOOK_SOURCE
from testtime.kaggle import notebook as nb


def code_cells() -> dict[str, str]:
    cells = json.loads(NOTEBOOK_SOURCE.read_text())["cells"]
    return {c["id"]: "".join(c["source"]) for c in cells if c["cell_type"] == "code"}


def test_the_notebook_is_nbformat_4_and_every_code_cell_parses():
    data = json.loads(NOTEBOOK_SOURCE.read_text())
    assert data["nbformat"] == 4 and data["metadata"]["kernelspec"]["name"] == "python3"
    for source in code_cells().values():
        ast.parse(source)


def test_the_first_code_cell_holds_the_parameters_with_the_arc_prize_defaults():
    cells = [c for c in json.loads(NOTEBOOK_SOURCE.read_text())["cells"] if c["cell_type"] == "code"]
    assert cells[0]["metadata"]["tags"] == ["parameters"]  # papermill and the test inject after it
    params: dict = {}
    exec("".join(cells[0]["source"]), params)
    assert params["CHALLENGES"] == "/kaggle/input/arc-prize-2025/arc-agi_test_challenges.json"
    assert params["SUBMISSION"] == "/kaggle/working/submission.json"
    assert params["TIME_BUDGET"] == "11h15m" and params["EXTRA_FLAGS"] == [] and params["BUNDLE"] == ""


def test_the_install_cell_uses_only_the_bundle():
    source = code_cells()["install"]
    assert '"--isolated", "--no-index", "--find-links"' in source
    assert f'KIND = "{KIND}"' in source  # the same mark as the manifest's (testtime is not importable yet)


def test_the_install_cell_finds_the_bundle_among_the_inputs(tmp_path):
    tree = ast.parse(code_cells()["install"])
    defs = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))
            or (isinstance(node, ast.Assign) and node.targets[0].id == "KIND")]
    scope: dict = {}
    exec(compile(ast.Module(defs, []), "install", "exec"), scope)
    (tmp_path / "arc-prize-2025").mkdir()
    (tmp_path / "arc-prize-2025" / MANIFEST).write_text('{"kind": "something else"}')
    (tmp_path / "my-bundle" / "v2").mkdir(parents=True)
    (tmp_path / "my-bundle" / "v2" / MANIFEST).write_text(json.dumps({"kind": KIND}))
    assert scope["find_bundle"](tmp_path) == tmp_path / "my-bundle" / "v2"
    with pytest.raises(FileNotFoundError, match="no testtime bundle under .*: add the dataset"):
        scope["find_bundle"](tmp_path / "arc-prize-2025")


@pytest.mark.parametrize("gpus,ray", [(0, False), (1, False), (4, True)])
def test_several_gpus_get_one_ray_worker_each(gpus, ray):
    command = nb.solve_command("c.json", "run", "90m", ["--preset", "paper"], gpus=gpus)
    assert command[1:8] == ["arc", "solve", "c.json", "--out", "run", "--time-budget", "90m"]
    assert ("--ray" in command) is ray
    if ray:
        assert command[8:13] == ["--ray", "--workers", "4", "--gpus-per-worker", "1"]
    assert command[-2:] == ["--preset", "paper"]


def test_solve_streams_the_output_and_reports_the_exit_and_time(monkeypatch):
    script = ("import os, sys; print('arc', sys.argv[1:3]); print('offline', os.environ['HF_HUB_OFFLINE']); "
              "print('colour forced', 'FORCE_COLOR' in os.environ); sys.exit(3)")
    monkeypatch.setattr(nb, "testtime_command", lambda: [sys.executable, "-c", script])
    monkeypatch.setenv("FORCE_COLOR", "1")  # as ipykernel sets it: rich would redraw its progress bars
    lines: list[str] = []
    solved = nb.solve("c.json", "run", "2m", gpus=0, echo=lines.append)
    assert solved.returncode == 3 and solved.seconds > 0
    assert lines[1:4] == ["arc ['arc', 'solve']", "offline 1", "colour forced False"]
    assert lines[-1].startswith("arc solve: exit 3 after ") and lines[-1].endswith(" s (time budget 2m)")


def grid(v: int) -> list[list[int]]:
    return [[v, v], [v, v]]


def test_the_submission_keeps_the_runs_attempts_and_completes_the_rest(tmp_path):
    challenges = tmp_path / "arc-agi_test_challenges.json"
    task = {"train": [{"input": grid(1), "output": grid(2)}], "test": [{"input": grid(1)}, {"input": grid(3)}]}
    challenges.write_text(json.dumps({"aaa": task, "bbb": task, "ccc": task}))
    run = tmp_path / "run"
    run.mkdir()
    (run / "submission.json").write_text(json.dumps({
        "aaa": [{"attempt_1": grid(2), "attempt_2": grid(4)}, {"attempt_1": grid(5), "attempt_2": grid(6)}],
        "bbb": [{"attempt_1": grid(2), "attempt_2": grid(4)}],  # one test input short: placeholders
    }))
    lines: list[str] = []
    filled = nb.write_submission(run, challenges, tmp_path / "submission.json", echo=lines.append)
    assert filled == ["bbb", "ccc"]
    sub = load_submission(tmp_path / "submission.json")
    assert sub["aaa"][1] == {"attempt_1": grid(5), "attempt_2": grid(6)}
    assert sub["bbb"] == sub["ccc"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}] * 2
    assert "3 tasks, 6 test inputs, two attempts each (2 tasks without a complete entry" in lines[0]


def test_without_a_run_every_task_gets_placeholders(tmp_path):
    challenges = tmp_path / "c.json"
    challenges.write_text(json.dumps({"aaa": {"train": [], "test": [{"input": grid(1)}]}}))
    assert nb.write_submission(tmp_path / "never-ran", challenges, tmp_path / "s.json", echo=lambda _: None) == ["aaa"]
    assert load_submission(tmp_path / "s.json") == {"aaa": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}
