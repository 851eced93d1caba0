"""The fast first pass of a run under a time budget: two attempts for every test input, cheaply.

Per test input, attempt 1 is the model's greedy answer to the identity prompt (every demonstration
that fits, the base model with its start adapter, no TTT, no augmentation) and attempt 2 the test
input itself; where no grid comes back (the answer does not parse, the prompt does not fit, the
deadline passes first), both attempts are the test input. A task's record then says
`path="fallback"` (a full record says `"full"`) and each test result says what made its attempt 1
(`fallback="greedy"` or `"input"`). A fallback record is the task's result until a run gets its
full path done: every later run (with a budget, while time allows; without one, always) tries again.
Where the full path parses fewer than two grids for a test input, its record takes the missing
attempts from the fallback's (`pad_attempts`).

    record = fallback_record(model, tokenizer, task, infer_args, counter=counter, deadline=deadline)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter
from testtime.arc.predict import PredictOutcome, predict_stats, predict_test
from testtime.arc.records import FALLBACK, TaskRecord, TestResult, TTTStats
from testtime.arc.settings import InferArgs
from testtime.arc.task import Grid, Task
from testtime.arc.transforms import geometric_transforms
from testtime.arc.vote import vote
from testtime.jobs import Counts, Emit, Executor, Notice, RunDir, run_items
from testtime.jobs.budget import Budget, TimeUp, check_deadline, format_duration


def provisional(data: dict[str, Any]) -> bool:
    """Whether a record's JSON, as the job layer hands it back, is a finished fallback record (a result that a
    run with time for the full path replaces)."""
    return TaskRecord.from_json(data, trusted=True).is_fallback


def copied_input(grid: Grid) -> TestResult:
    """A test result whose two attempts are the test input itself (the answer of last resort)."""
    return TestResult(attempts=[grid.tolist(), grid.tolist()], candidates=[], fallback="input")


def pad_attempts(record: TaskRecord, fallback: TaskRecord) -> None:
    """Fill each test input's attempts in a full `record` up to two from its `fallback` record's, where the
    full path parsed fewer grids (`padded`: how many came from the fallback)."""
    for test, kept in zip(record.tests, fallback.tests):
        extra = [a for a in kept.attempts if a not in test.attempts][:max(0, 2 - len(test.attempts))]
        if extra:
            test.attempts = test.attempts + extra
            test.padded = len(extra)


def fallback_record(model: Any, tokenizer: Any, task: Task, args: InferArgs, *, counter: TokenCounter,
                    fmt: TextFormat = DEFAULT_FORMAT, deadline: float | None = None) -> TaskRecord:
    """The task's fallback record (see the module docstring); `args.seed` should be the task's seed.

    Once `deadline` (epoch seconds) passes, the test inputs not answered yet get their own grid."""
    t0 = time.perf_counter()
    identity = geometric_transforms()[0]
    tests, outcomes = [], []
    for i, example in enumerate(task.test):
        try:
            check_deadline(deadline, "decoding")
            outcome = predict_test(model, tokenizer, task, i, [identity], args, counter=counter, fmt=fmt,
                                   deadline=deadline)
        except TimeUp:
            tests.append(copied_input(example.input))
            continue
        outcomes.append(outcome)
        tests.append(_greedy_entry(example.input, outcome))
    predict = predict_stats(outcomes)
    return TaskRecord(task_id=task.id, status="ok", path=FALLBACK, fits=predict.unfit < max(predict.prompts, 1),
                      ttt=TTTStats(enabled=False, shared=False), predict=predict, tests=tests,
                      seconds=time.perf_counter() - t0)


def _greedy_entry(query: Grid, outcome: PredictOutcome) -> TestResult:
    """Attempt 1 the greedy answer (when it parsed), attempt 2 the test input."""
    counts = {"prompts": outcome.n_prompts, "unparsed": outcome.n_unparsed, "unfit": outcome.n_unfit}
    if not outcome.candidates:
        return TestResult(attempts=[query.tolist(), query.tolist()], candidates=[], fallback="input", **counts)
    (best,) = vote(outcome.candidates)  # one prompt: one candidate
    return TestResult(attempts=[best.grid.tolist(), query.tolist()], candidates=[best.record()],
                      fallback="greedy", **counts)


def fallback_pass(job: Any, tasks: Sequence[Task], executor: Executor, run_dir: RunDir | None, budget: Budget, *,
                  retry_failed: bool, emit: Emit) -> tuple[dict[str, TaskRecord], Counts]:
    """The first pass of a run under `budget`: a fallback record for every task without a record (finished
    ones are resumed); `job` (an `ArcJob`) gets the budget's deadline and keeps every fallback record."""
    job.deadline = budget.deadline
    found, counts = run_items(FallbackJob(job), tasks, executor, run_dir, retry_failed=retry_failed, emit=emit)
    first = {tid: TaskRecord.from_json(data, trusted=True) for tid, data in found.items()}  # resumed ones accepted
    job.kept = {tid: r for tid, r in first.items() if r.is_fallback}
    emit(Notice(f"time budget {format_duration(budget.seconds)}: every task has its fallback after "
                f"{format_duration(budget.used())}; {format_duration(max(budget.left(), 0))} left for the full "
                f"path of {len(job.kept)} tasks"))
    return first, counts


def budget_counts(first: Counts, then: Counts, records: dict[str, TaskRecord], emit: Emit) -> Counts:
    """The counts of a run under a budget, from its fallback pass (`first`) and its full pass (`then`):
    `resumed` records read back, `ran` records made (a task's fallback and its full record are two)."""
    failed = [tid for tid, r in records.items() if not r.ok]
    if then.not_started:
        emit(Notice(f"{then.not_started} tasks not started: the time left would not cover them; they keep their "
                    "fallback"))
    return Counts(total=len(records), resumed=first.resumed, ran=first.ran + then.ran, failed=len(failed),
                  failed_ids=failed, not_started=then.not_started)


class FallbackJob:
    """The fallback pass as a job over the same tasks, model and run directory as `job` (an `ArcJob`, whose
    solver makes the records and whose `deadline` cuts the decoding)."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.noun, self.id_key = job.noun, job.id_key

    def item_id(self, task: Task) -> str:
        return self.job.item_id(task)

    def cost(self, task: Task) -> float:
        return self.job.cost(task)

    def not_parallel(self) -> str | None:
        return None

    def setup(self) -> str:
        return self.job.setup()

    def run(self, task: Task, emit: Emit) -> dict[str, Any]:
        self.job.setup()
        return self.job.solver.fallback(task, self.job.deadline).to_json()

    def failed(self, task: Task, error: str, trace: str, seconds: float) -> dict[str, Any]:
        return self.job.failed(task, error, trace, seconds)

    def accepts(self, task: Task, record: dict[str, Any]) -> bool:
        return self.job.accepts(task, record)
