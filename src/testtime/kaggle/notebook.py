"""What the notebook `testtime-arc.ipynb` calls once testtime is installed: `arc solve` for the
GPUs there, its output streamed into the notebook, and a submission Kaggle always accepts.

    solved = solve(CHALLENGES, RUN_DIR, "11h15m", EXTRA_FLAGS)   # --ray --workers 4 ... with 4 GPUs
    write_submission(RUN_DIR, CHALLENGES, "/kaggle/working/submission.json")

`arc solve --time-budget` ends with every task's attempts in RUN_DIR/submission.json; the copy to
Kaggle's path still completes anything missing with `[[0]]` (a crash before the first pass ended,
say), since a submission without every task and test input is not scored at all.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from testtime.arc.score import ATTEMPT_KEYS, build_submission, load_submission
from testtime.arc.task import TaskError
from testtime.atomic import write_json_atomic

OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
"""Kaggle's notebooks have no internet: nothing waits on the Hugging Face hub."""
FORCED_COLOR = ("FORCE_COLOR", "CLICOLOR_FORCE")
"""What ipykernel sets for its children: it makes rich redraw progress bars into the notebook's output
(hundreds of lines a minute), so `arc solve` runs without them and prints plain lines into the pipe."""


def gpu_count() -> int:
    """CUDA devices torch sees (0 without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count()


def testtime_command() -> list[str]:
    """The installed `testtime` command (pip's scripts folder of this interpreter, else PATH)."""
    script = Path(sysconfig.get_path("scripts")) / ("testtime.exe" if sys.platform == "win32" else "testtime")
    found = str(script) if script.is_file() else shutil.which("testtime")
    if not found:
        raise FileNotFoundError(f"no `testtime` command in {script.parent} or on PATH: run the notebook's install "
                                "cell first")
    return [found]


def solve_command(challenges: str | Path, run_dir: str | Path, budget: str, extra_flags: Sequence[str] = (),
                  gpus: int = 0) -> list[str]:
    """`testtime arc solve CHALLENGES --out RUN_DIR --time-budget BUDGET`, on a Ray pool of one worker
    per GPU when there are several (one GPU or none: in-process), then `extra_flags`."""
    command = [*testtime_command(), "arc", "solve", str(challenges), "--out", str(run_dir), "--time-budget", budget]
    if gpus > 1:
        command += ["--ray", "--workers", str(gpus), "--gpus-per-worker", "1"]
    return command + list(extra_flags)


@dataclass
class Solved:
    command: list[str]
    returncode: int
    seconds: float


def solve(challenges: str | Path, run_dir: str | Path, budget: str, extra_flags: Sequence[str] = (),
          gpus: int | None = None, echo: Callable[[str], None] = print) -> Solved:
    """Run `solve_command` for the GPUs here (or `gpus`), echoing its output line by line."""
    gpus = gpu_count() if gpus is None else gpus
    command = solve_command(challenges, run_dir, budget, extra_flags, gpus)
    echo(f"{gpus} GPU(s): {shlex.join(command)}")
    env = {k: v for k, v in os.environ.items() if k not in FORCED_COLOR} | OFFLINE_ENV | {"COLUMNS": "120"}
    start = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          bufsize=1) as process:
        for line in process.stdout:
            echo(line.rstrip("\n"))
    seconds = time.perf_counter() - start
    echo(f"arc solve: exit {process.returncode} after {seconds:.1f} s (time budget {budget})")
    return Solved(command, process.returncode, seconds)


def write_submission(run_dir: str | Path, challenges: str | Path, submission: str | Path,
                     echo: Callable[[str], None] = print) -> list[str]:
    """Write `submission` from RUN_DIR/submission.json: every task of `challenges` with two attempts per
    test input; a task the run has no complete entry for gets `[[0]]` placeholders. Returns those tasks."""
    tasks = json.loads(Path(challenges).read_text(encoding="utf-8"))
    counts = {task_id: len(task["test"]) for task_id, task in tasks.items()}
    made = Path(run_dir) / "submission.json"
    try:
        found = load_submission(made) if made.is_file() else {}
    except TaskError as err:
        echo(f"warning: {err}; every task gets placeholders")
        found = {}
    attempts = {task_id: [[entry[key] for key in ATTEMPT_KEYS] for entry in found[task_id]]
                for task_id, n in counts.items() if len(found.get(task_id) or ()) == n}
    write_json_atomic(submission, build_submission(attempts, counts))
    filled = [task_id for task_id in counts if task_id not in attempts]
    echo(f"{submission}: {len(counts)} tasks, {sum(counts.values())} test inputs, two attempts each "
         f"({len(filled)} tasks without a complete entry in {made} got [[0]] placeholders)")
    return filled
