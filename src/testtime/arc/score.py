"""Kaggle ARC Prize submissions and the official score.

A submission maps each task id to one entry per test input, in order:
`{"attempt_1": grid, "attempt_2": grid}` with grids as lists of lists of ints. Kaggle requires
every task, every test input and both keys, so a missing prediction is written as `[[0]]`.

The official rule: a test output is solved if either attempt equals it exactly (shape and
cells); a task scores the fraction of its test outputs solved; the data set score is the mean
over the tasks of the solutions. `fraction_correct` applies the same averaging to any number of
guesses per output: pass@1 with `[attempt_1]`, the oracle with every candidate. A run's task
records are marked against the known outputs (`add_correctness`, `add_truth`) and summed up
(`summarize`: the figures of `arc solve`'s summary).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.arc.records import FALLBACK, Correct, TaskRecord, TestResult, Truth
from testtime.arc.task import Grid, Task, TaskError, as_grid, grids_equal
from testtime.atomic import write_json_atomic
from testtime.records import RecordError, load_record

log = logging.getLogger(__name__)

ATTEMPT_KEYS = ("attempt_1", "attempt_2")
PLACEHOLDER: list[list[int]] = [[0]]
"""What Kaggle gets for an attempt that has no prediction."""


# ---- writing and reading submissions ---------------------------------------------------------

def submission_entry(attempts: Sequence[Grid | None]) -> dict[str, list[list[int]]]:
    """`{"attempt_1": ..., "attempt_2": ...}` for one test input; absent attempts become [[0]]."""
    if len(attempts) > len(ATTEMPT_KEYS):
        raise ValueError(f"at most {len(ATTEMPT_KEYS)} attempts per test input, got {len(attempts)}")
    entry = {}
    for i, key in enumerate(ATTEMPT_KEYS):
        g = attempts[i] if i < len(attempts) else None
        entry[key] = as_grid(g, where=key).tolist() if g is not None else [row[:] for row in PLACEHOLDER]
    return entry


def build_submission(task_attempts: Mapping[str, Sequence[Sequence[Grid | None]]],
                     test_counts: Mapping[str, int]) -> dict[str, list[dict[str, list[list[int]]]]]:
    """A complete submission: every task of `test_counts` with one entry per test input, in order.

    `task_attempts[task_id][i]` are the attempts for test input i; tasks or inputs without any
    (failed or never run) get placeholders. Attempts for a task or input that `test_counts`
    does not have are a caller bug and raise ValueError.
    """
    unknown = sorted(set(task_attempts) - set(test_counts))
    if unknown:
        raise ValueError(f"attempts for tasks without a test count: {', '.join(unknown)}")
    submission = {}
    for task_id, n_test in test_counts.items():
        per_test = task_attempts.get(task_id, ())
        if len(per_test) > n_test:
            raise ValueError(f"task {task_id!r}: attempts for {len(per_test)} test inputs, it has {n_test}")
        submission[task_id] = [submission_entry(per_test[i] if i < len(per_test) else ())
                               for i in range(n_test)]
    missing = [t for t in test_counts if t not in task_attempts]
    if missing:
        log.info("submission: %d of %d tasks have no attempts, written as [[0]]", len(missing), len(test_counts))
    return submission


def write_submission(path: str | Path, submission: Mapping[str, Any]) -> None:
    """Write `submission` as compact JSON, all or nothing (`testtime.atomic.write_json_atomic`)."""
    write_json_atomic(path, submission)


def load_submission(path: str | Path) -> dict[str, list[dict[str, list[list[int]]]]]:
    """Read and validate a submission file; raises TaskError naming the file, task and field."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaskError(f"cannot read submission: {err}", file=path) from None
    if not isinstance(data, dict):
        raise TaskError(f"expected an object of task ids, got {type(data).__name__}", file=path)
    for task_id, entries in data.items():
        try:
            _check_entries(entries)
        except TaskError as err:
            raise err.located(file=path, task_id=task_id) from None
    return data


def _check_entries(entries: Any) -> None:
    if not isinstance(entries, list) or not entries:
        raise TaskError("expected a non-empty list with one entry per test input")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise TaskError(f"expected an object, got {type(entry).__name__}", field=f"[{i}]")
        for key in ATTEMPT_KEYS:
            if key not in entry:
                raise TaskError(f"missing key {key!r}", field=f"[{i}]")
            as_grid(entry[key], where=f"[{i}].{key}")


# ---- scoring --------------------------------------------------------------------------------

@dataclass
class Score:
    """The official score of a submission and where it came from."""

    score: float
    """Mean over tasks of the fraction of each task's test outputs solved (0..1)."""
    n_tasks: int
    """Tasks in the solutions (the denominator)."""
    per_task: dict[str, float] = field(default_factory=dict)
    """Task id -> fraction of its test outputs solved."""
    outputs_solved: int = 0
    """Test outputs solved, over all tasks."""
    outputs_total: int = 0
    """Test outputs in the solutions."""
    missing: list[str] = field(default_factory=list)
    """Tasks of the solutions absent from the submission (sorted); each scores 0."""
    extra: int = 0
    """How many tasks of the submission are not in the solutions (ignored)."""


Guesses = Sequence[Sequence[Any]]
"""Per test output, the grids guessed for it (lists of lists, arrays, or None)."""


def score_submission(submission: Mapping[str, Sequence[Mapping[str, Any]]],
                     solutions: Mapping[str, Sequence[Any]]) -> Score:
    """Official score: a test output counts if attempt_1 or attempt_2 is exactly right."""
    def guesses(task_id: str) -> Guesses | None:
        if task_id not in submission:
            return None
        return [[entry.get(key) for key in ATTEMPT_KEYS] for entry in submission[task_id]]

    score = _score_tasks(guesses, solutions)
    score.extra = len(set(submission) - set(solutions))
    if score.missing or score.extra:
        log.info("score: %d tasks missing from the submission, %d extra ignored", len(score.missing), score.extra)
    return score


def fraction_correct(per_task_guesses: Mapping[str, Guesses], solutions: Mapping[str, Sequence[Any]]) -> float:
    """Same averaging as the official score for any guesses per output.

    pass@1: `{task: [[attempt_1] for each test output]}`; oracle: every candidate per output.
    """
    return _score_tasks(per_task_guesses.get, solutions).score


def _score_tasks(guesses_for: Callable[[str], Guesses | None], solutions: Mapping[str, Sequence[Any]]) -> Score:
    per_task: dict[str, float] = {}
    missing: list[str] = []
    solved_total = outputs_total = 0
    for task_id, outputs in solutions.items():
        if len(outputs) == 0:
            raise TaskError("no test outputs in the solutions", task_id=task_id)
        guesses = guesses_for(task_id)
        if guesses is None:
            missing.append(task_id)
            guesses = []
        solved = 0
        for i, raw in enumerate(outputs):
            try:
                truth = as_grid(raw, where=f"test[{i}].output")
            except TaskError as err:
                raise err.located(task_id=task_id) from None
            tries = guesses[i] if i < len(guesses) else ()
            solved += any(grids_equal(_maybe_grid(g), truth) for g in tries)
        per_task[task_id] = solved / len(outputs)
        solved_total += solved
        outputs_total += len(outputs)
    mean = sum(per_task.values()) / len(per_task) if per_task else 0.0
    return Score(mean, len(per_task), per_task, solved_total, outputs_total, sorted(missing))


def _maybe_grid(g: Any) -> Grid | None:
    """A guess as a grid; a guess that is not a valid grid is simply wrong."""
    if g is None:
        return None
    try:
        return as_grid(g)
    except TaskError:
        return None


# ---- the true answers' likelihood, from a run's task records ---------------------------------

TRUTH_KEYS = ("bits_per_token_before", "bits_per_cell_before", "bits_per_token_after", "bits_per_cell_after",
              "rank")
"""The fields of a test result's `truth` (written by `arc solve` when the outputs are known)."""


def truth_means(records: Sequence[TaskRecord]) -> dict[str, float | None]:
    """Means over test outputs of each `TRUTH_KEYS` value that was measured (None where none was);
    `found` is the share of measured outputs that are among the candidates (a rank)."""
    truths = [t.truth for r in records for t in r.tests if t.truth is not None]
    out: dict[str, float | None] = {}
    for key in TRUTH_KEYS:
        values = [getattr(t, key) for t in truths if getattr(t, key) is not None]
        out[key] = sum(values) / len(values) if values else None
    out["found"] = sum(t.rank is not None for t in truths) / len(truths) if truths else None
    return out


def run_records(submission: str | Path, task_ids: Sequence[str] | None = None) -> list[TaskRecord]:
    """The task records beside a run's submission (`RUN/tasks/*.json`), those of `task_ids` only when
    given; unreadable ones are skipped with a warning. [] when the submission is not in a run directory."""
    folder = Path(submission).parent / "tasks"
    records = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            record = load_record(path, TaskRecord)
        except RecordError as err:
            log.warning("skipping unreadable task record %s (%s)", path, err)
            continue
        if task_ids is None or record.task_id in task_ids:
            records.append(record)
    return records


# ---- a run's records against the known outputs ---------------------------------------------

def add_correctness(record: TaskRecord, task: Task) -> None:
    """With known test outputs: was attempt 1 / either attempt / any candidate right, per test input."""
    if not task.has_solutions:
        return
    for i, ex in enumerate(task.test):
        if i >= len(record.tests):
            record.tests.append(TestResult(attempts=[], candidates=[]))
        test = record.tests[i]
        attempts = [as_grid(a) for a in test.attempts]
        cands = [as_grid(c.grid) for c in test.candidates]
        test.correct = Correct(attempt_1=bool(attempts) and grids_equal(attempts[0], ex.output),
                               any_attempt=any(grids_equal(a, ex.output) for a in attempts[:2]),
                               oracle=any(grids_equal(c, ex.output) for c in cands))


def add_truth(tests: list[TestResult], task: Task, before: list | None, after: list | None) -> None:
    """tests[i].truth: the true output's bits before and after TTT and its rank in the selection."""
    for i, ex in enumerate(task.test):
        if ex.output is None or i >= len(tests):
            continue
        test = tests[i]
        grids = [as_grid(test.candidates[k].grid) for k in test.selection or ()]
        bits = {when: (measured[i] if measured else None) or {} for when, measured in (("before", before),
                                                                                       ("after", after))}
        test.truth = Truth(bits_per_token_before=bits["before"].get("bits_per_token"),
                           bits_per_cell_before=bits["before"].get("bits_per_cell"),
                           bits_per_token_after=bits["after"].get("bits_per_token"),
                           bits_per_cell_after=bits["after"].get("bits_per_cell"),
                           rank=next((n + 1 for n, g in enumerate(grids) if grids_equal(g, ex.output)), None))


def summarize(records: Sequence[TaskRecord]) -> dict[str, Any]:
    """Score, pass@1 and oracle (when outputs are known), failures, fits and timings over a run; `truth`:
    the true outputs' mean bits before/after TTT and mean rank (`score.truth_means`)."""
    def task_mean(key: str) -> float | None:
        scored = [r for r in records if r.scored]
        return sum(r.score(key) for r in scored) / len(scored) if scored else None

    ok = [r for r in records if r.ok]
    trained = [r.ttt for r in ok if r.ttt.steps]
    tokens = sum(t.tokens or 0 for t in trained)
    train_s = sum(t.seconds or 0.0 for t in trained)
    return {
        "tasks": len(records),
        "failed": len(records) - len(ok),
        "full": sum(r.path != FALLBACK for r in ok),
        "fallback": sum(r.path == FALLBACK for r in ok),
        "did_not_fit": sum(not r.fits for r in ok),
        "score": task_mean("any_attempt"),
        "pass@1": task_mean("attempt_1"),
        "oracle": task_mean("oracle"),
        "ttt_seconds_per_task": sum(r.ttt.total_seconds for r in ok) / len(ok) if ok else 0.0,
        "infer_seconds_per_task": sum(r.predict.seconds for r in ok) / len(ok) if ok else 0.0,
        "train_tokens_per_s": tokens / train_s if train_s else None,
        "truth": truth_means(ok),
    }
