"""Solve ARC tasks: per-task test-time training, augmented inference, voting, resumable runs.

Per task (Akyurek et al. 2024; Barbadillo's single-task TTT): build leave-one-out training data
from the task's own demonstrations, train a fresh LoRA on it, predict every test input under the
invertible transforms, map back, vote, keep two attempts, drop the LoRA. Each finished task is
written atomically to `RUN_DIR/tasks/TASK_ID.json`; re-running skips finished tasks and rebuilds
`submission.json` from the task files, so a crash loses at most the task in progress.

Under a time budget (`jobs.Budget`) every task first gets a fallback record (`arc.fallback`: a
greedy answer, no TTT) and the submission is written; then the full path runs on the tasks while
time allows (`jobs.budget.Plan`), checked at every training step and decoded token: a task cut
by the deadline keeps its fallback.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.arc.fallback import (
    budget_counts,
    copied_input,
    fallback_pass,
    fallback_record,
    pad_attempts,
    provisional,
)
from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, task_tokens
from testtime.arc.likelihood import fresh_views, poe_scores, truth_bits, truth_rows
from testtime.arc.predict import PredictOutcome, predict_stats, predict_task
from testtime.arc.records import FALLBACK, FULL, Cut, Prediction, TaskRecord, TestResult, TTTStats
from testtime.arc.score import add_correctness, add_truth, build_submission, write_submission
from testtime.arc.settings import SolveConfig, TTTArgs
from testtime.arc.task import Task, as_grid
from testtime.arc.ttt_data import build_ttt_data
from testtime.arc.vote import grid_key, selection, vote
from testtime.finetune import StepInfo, train
from testtime.jobs import Counts, Emit, Executor, LocalExecutor, RunDir, Step, ignore, run_items, write_output
from testtime.jobs.budget import Budget, TimeUp, check_deadline, steps_in_time
from testtime.lora import AdapterHost
from testtime.records import RecordError
from testtime.seeds import derive_seed
from testtime.settings import TrainArgs

log = logging.getLogger(__name__)


def task_seed(seed: int, task_id: str) -> int:
    """A per-task seed that depends only on the run seed and the task id."""
    return derive_seed(seed, task_id)


@dataclass
class Solver:
    """Holds the base model once (inside `host`) and solves tasks one after another."""

    host: AdapterHost
    tokenizer: Any
    config: SolveConfig
    fmt: TextFormat = DEFAULT_FORMAT
    counter: TokenCounter = field(init=False)
    _before: dict[str, list[dict | None]] = field(init=False, default_factory=dict)
    """Shared-TTT only: each task's truth bits under the base model, measured before the shared training."""

    def __post_init__(self) -> None:
        self.counter = TokenCounter(self.tokenizer, self.fmt)

    def _truth(self, task: Task) -> list[dict | None] | None:
        """The true outputs' bits under the model as it is now (None when no output is known)."""
        if not task.has_solutions:
            return None
        rows = truth_rows(self.tokenizer, task, counter=self.counter, max_len=self.config.infer.max_len,
                          seed=task_seed(self.config.seed, task.id), fmt=self.fmt)
        return truth_bits(self.host.model, task, rows, batch_size=self.config.infer.batch_size)

    def _ttt_args(self, seed: int) -> tuple[TTTArgs, TrainArgs]:
        return dataclasses.replace(self.config.data, seed=seed), dataclasses.replace(self.config.train, seed=seed)

    def train_shared(self, tasks: Sequence[Task], on_step: Callable[[StepInfo], None] | None = None) -> dict:
        """Shared-TTT: one LoRA on the union of every task's TTT data; it stays active for all predictions, or
        with --shared-then-task is baked into the base for the per-task LoRAs to train on top of."""
        seed = task_seed(self.config.seed, "__shared__")
        sequences = []
        for task in tasks:
            before = self._truth(task)
            if before is not None:
                self._before[task.id] = before
            data_args, _ = self._ttt_args(task_seed(self.config.seed, task.id))
            sequences += build_ttt_data(task, self.tokenizer, data_args, self.fmt, self.counter).sequences
        self.host.fresh(seed)
        stats = train(self.host.model, sequences, self._ttt_args(seed)[1], on_step=on_step)
        if self.config.per_task:
            self.host.bake()
        return {"sequences": len(sequences), "steps": stats.steps, "tokens": stats.tokens, "seconds": stats.seconds}

    def solve_task(self, task: Task, on_step: Callable[[StepInfo], None] | None = None,
                   deadline: float | None = None) -> TaskRecord:
        """Solve one task (a raising task is the job layer's to record); the task's LoRA is dropped after.

        TimeUp once `deadline` (epoch seconds) passes, or once the training steps left cannot end by it."""
        t0 = time.perf_counter()
        try:
            record = self._solve(task, on_step, deadline)
        finally:
            if self.config.per_task:
                self.host.drop()
        record.seconds = time.perf_counter() - t0
        add_correctness(record, task)
        return record

    def fallback(self, task: Task, deadline: float | None = None) -> TaskRecord:
        """The task's fallback record (`arc.fallback`): the greedy answer to its identity prompt."""
        infer = dataclasses.replace(self.config.infer, seed=task_seed(self.config.seed, task.id), sampling="greedy")
        record = fallback_record(self.host.model, self.tokenizer, task, infer, counter=self.counter, fmt=self.fmt,
                                 deadline=deadline)
        add_correctness(record, task)
        return record

    def _solve(self, task: Task, on_step: Callable[[StepInfo], None] | None, deadline: float | None) -> TaskRecord:
        """The task's record, its `seconds` left at 0 for `solve_task` to set."""
        seed = task_seed(self.config.seed, task.id)
        ttt = TTTStats(enabled=self.config.ttt, shared=self.config.trains_shared)
        check_deadline(deadline, "before the task")
        before = self._before.get(task.id) if self.config.trains_shared else self._truth(task)
        if self.config.per_task:
            data_args, train_args = self._ttt_args(seed)
            t0 = time.perf_counter()
            data = build_ttt_data(task, self.tokenizer, data_args, self.fmt, self.counter)
            ttt = dataclasses.replace(ttt, sequences=len(data.sequences), fits=data.fits, fallback=data.fallback,
                                      dropped_demos=data.n_dropped_demos, data_seconds=time.perf_counter() - t0)
            if data.sequences:
                check_deadline(deadline, "before training")
                self.host.fresh(seed)
                stats = train(self.host.model, data.sequences, train_args, on_step=steps_in_time(on_step, deadline))
                ttt = dataclasses.replace(ttt, steps=stats.steps, tokens=stats.tokens, seconds=stats.seconds,
                                          tokens_per_s=stats.tokens_per_s,
                                          first_loss=stats.losses[0] if stats.losses else None,
                                          final_loss=stats.losses[-1] if stats.losses else None,
                                          losses=[float(x) for x in stats.losses])
        infer_args = dataclasses.replace(self.config.infer, seed=seed)
        outcomes = predict_task(self.host.model, self.tokenizer, task, infer_args, counter=self.counter, fmt=self.fmt,
                                deadline=deadline)
        check_deadline(deadline, "before scoring the candidates")
        tests = [self._test_record(task, i, outcome) for i, outcome in enumerate(outcomes)]
        trained = self.config.trains_shared or bool(ttt.steps)
        check_deadline(deadline, "before scoring the true outputs")
        after = self._truth(task) if trained else before
        if before is not None or after is not None:
            add_truth(tests, task, before, after)
        predict = predict_stats(outcomes)
        fits = ttt.fits is not False and predict.unfit < max(predict.prompts, 1)
        return TaskRecord(task_id=task.id, status="ok", path=FULL, fits=fits, ttt=ttt, predict=predict, tests=tests,
                          seconds=0.0)

    def _test_record(self, task: Task, test_index: int, outcome: PredictOutcome) -> TestResult:
        """Vote, score by PoE when the selection or --score-views asks, pick the attempts; every score is kept."""
        ranked = vote(outcome.candidates)
        how = self.config.infer.select
        poe, views = self._poe(task, test_index, outcome, [r.grid for r in ranked])
        order = selection(ranked, how, poe)
        index = {grid_key(r.grid): k for k, r in enumerate(ranked)}
        return TestResult(
            attempts=[ranked[k].grid.tolist() for k in order[:2]],
            selection=order,
            candidates=[r.record(None if poe is None else poe[k],
                                 None if views is None else (views["prompts"][k], views["views"][k]))
                        for k, r in enumerate(ranked)],
            score_views=None if views is None else views["names"],
            predictions=[Prediction(candidate=index[grid_key(c.grid)], transform=c.transform, order=c.order,
                                    prompt=c.prompt, logprob=c.logprob, tokens=c.tokens,
                                    decoding=None if c.decoding == "greedy" else c.decoding)  # greedy as before
                         for c in outcome.candidates],
            prompts=outcome.n_prompts, unparsed=outcome.n_unparsed, unfit=outcome.n_unfit)

    def _poe(self, task: Task, test_index: int, outcome: PredictOutcome,
             grids: list) -> tuple[list[float] | None, dict[str, list] | None]:
        """Each grid's PoE score (None when neither the selection nor --score-views asks for one) and, with
        score views, its parts: under the prompts that made candidates, and under the fresh views."""
        infer = self.config.infer
        if infer.select == "vote" and not infer.score_views:
            return None, None
        model, kw = self.host.model, {"batch_size": infer.batch_size, "fmt": self.fmt}
        prompts = poe_scores(model, self.tokenizer, grids, outcome.experts, **kw)
        if not infer.score_views:
            return prompts, None
        views = fresh_views(self.tokenizer, task, test_index, infer.score_views, counter=self.counter,
                            max_len=infer.max_len, reserve=infer.max_new_tokens,
                            seed=task_seed(self.config.seed, task.id), fmt=self.fmt)
        fresh = poe_scores(model, self.tokenizer, grids, views, **kw) if views else [0.0] * len(grids)
        total = [a + b for a, b in zip(prompts, fresh, strict=True)]
        return total, {"prompts": prompts, "views": fresh, "names": [t.name for t, _ in views]}


def failed_record(task: Task, error: str, trace: str = "", seconds: float = 0.0, *, fallback: bool = False,
                  kept: TaskRecord | None = None) -> TaskRecord:
    """The record of a task that raised, or whose Ray worker kept dying. With `fallback` (the task has its
    fallback record `kept`, or runs under a budget before it has one) its attempts are the fallback's, or the
    test inputs copied: a run with a budget always ends with two attempts per test input."""
    tests = [TestResult(attempts=[], candidates=[]) for _ in task.test]
    if fallback:
        tests = kept.tests if kept is not None and kept.tests else [copied_input(ex.input) for ex in task.test]
    record = TaskRecord(task_id=task.id, status="failed", error=error, traceback=trace,
                        path=FALLBACK if fallback else None, tests=tests, seconds=seconds)
    add_correctness(record, task)
    return record


def submission_of(tasks: Sequence[Task], records: dict[str, TaskRecord]) -> dict:
    """The Kaggle submission of a run's task records (every task and test input present)."""
    attempts = {tid: [[as_grid(a) for a in t.attempts] for t in r.tests] for tid, r in records.items()}
    return build_submission(attempts, {t.id: len(t.test) for t in tasks})


def task_cells(task: Task) -> int:
    """What a task's prompts hold: cells of its demonstrations and test inputs (not the hidden answers)."""
    return sum(ex.input.size + ex.output.size for ex in task.train) + sum(ex.input.size for ex in task.test)


class ArcJob:
    """ARC tasks as a job: set up loads the base model (and trains the shared LoRA); an item is a Task.

    `solver` (already holding a model) skips loading, for library use and tests.
    """

    noun = "task"
    id_key = "task_id"

    def __init__(self, config: SolveConfig, *, solver: Solver | None = None,
                 shared_tasks: Sequence[Task] | None = None) -> None:
        self.config = config
        self.solver = solver
        self.shared_tasks = list(shared_tasks or [])
        """Shared-TTT only: the tasks whose data the one LoRA is trained on."""
        self.deadline: float | None = None
        """Epoch seconds by which every task must end (a run's time budget), else None."""
        self.kept: dict[str, TaskRecord] = {}
        """Task id -> its fallback record: what the task keeps when its full path fails or runs out of time."""
        self._ready = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "solver": None, "_ready": False}  # a Ray worker loads its own model

    def item_id(self, task: Task) -> str:
        return task.id

    def cost(self, task: Task) -> float:
        return task_tokens(task)

    def not_parallel(self) -> str | None:
        if self.config.trains_shared:
            return "--shared and --shared-then-task train one LoRA on all tasks, which does not split over workers"
        return None

    def setup(self) -> str:
        if self._ready:
            return ""
        self._ready = True
        message = ""
        if self.solver is None:
            from testtime.models import load_model  # heavy import, in the process that runs

            loaded = load_model(self.config.model, dtype=self.config.dtype)
            host = AdapterHost(loaded.model, self.config.lora, start_adapter=self.config.adapter)
            self.solver = Solver(host, loaded.tokenizer, self.config)
            total = host.trainable_parameters()[1]
            message = (f"model: {total / 1e6:.1f}M parameters on {loaded.device} ({loaded.dtype}); "
                       f"LoRA rank {self.config.lora.r}")
        if self.config.trains_shared:
            log.info("shared TTT: %s", self.solver.train_shared(self.shared_tasks))
        return message

    def run(self, task: Task, emit: Emit) -> dict[str, Any]:
        """The task's full record; its fallback record, saying where the deadline cut it, when time ran out."""
        self.setup()
        assert self.solver is not None
        t0, kept = time.perf_counter(), self.kept.get(task.id)
        try:
            record = self.solver.solve_task(task, on_step=lambda info: emit(Step(task.id, info)),
                                            deadline=self.deadline)
        except TimeUp as up:
            if kept is None:
                raise
            return dataclasses.replace(kept, cut=Cut(at=up.at, seconds=time.perf_counter() - t0)).to_json()
        if kept is not None:
            pad_attempts(record, kept)
            add_correctness(record, task)
        return record.to_json()

    def failed(self, task: Task, error: str, trace: str, seconds: float) -> dict[str, Any]:
        kept = self.kept.get(task.id)
        return failed_record(task, error, trace, seconds, fallback=kept is not None or self.deadline is not None,
                             kept=kept).to_json()

    def accepts(self, task: Task, record: dict[str, Any]) -> bool:
        """A record that reads as a TaskRecord (`arc.records`), with one result per test input of the task."""
        try:
            tests = len(TaskRecord.from_json(record).tests)
            problem = None if tests == len(task.test) else \
                f"record.tests: {tests} entries, the task has {len(task.test)} test inputs"
        except RecordError as err:
            problem = str(err)
        if problem:
            log.warning("task %s: its record does not fit (%s); the task is run again", task.id, problem)
        return not problem


def solve_tasks(job: ArcJob, tasks: Sequence[Task], run_dir: RunDir | None = None, *,
                executor: Executor | None = None, retry_failed: bool = False, emit: Emit = ignore,
                budget: Budget | None = None) -> tuple[list[TaskRecord], dict, Counts]:
    """Solve `tasks`, resuming from `run_dir`; returns the records, the submission and the counts.

    An unopened `run_dir` is opened with the job's settings (the CLI opens it first, with its
    flags and options). The submission covers every task, failed ones included, and with a run
    directory every task finished there under these settings, whatever subset `tasks` is. A
    fallback record (`arc.fallback`) is never a finished task: its task runs again, and keeps it
    when it does not get to the end. With a `budget`, every task without a record first gets its
    fallback and the submission is written; then the tasks on their fallback run in the order of the
    budget's `Plan`, their deadline the budget's (`Counts.not_started`: those left on their fallback
    without a start).
    """
    if budget is not None and job.config.trains_shared:
        raise ValueError("a time budget runs the tasks' TTT one by one; shared TTT trains one LoRA on all first")
    if run_dir is not None and not run_dir.opened:
        run_dir.open("arc solve", {"config": job.config.to_json()})
    executor = executor or LocalExecutor()
    first, before = {}, None
    if budget is not None:
        first, before = fallback_pass(job, tasks, executor, run_dir, budget, retry_failed=retry_failed, emit=emit)
        write_run_submission(tasks, first, run_dir)  # whole from here on, whatever happens next
    else:  # fallbacks of an earlier run with a budget: what their tasks keep if they fail now
        saved = run_dir.finished("task_id", TaskRecord.from_json) if run_dir is not None else {}
        job.kept = {tid: r for tid, r in saved.items() if r.is_fallback}
    todo = [t for t in tasks if t.id in job.kept] if budget is not None else list(tasks)
    found, counts = run_items(job, todo, executor, run_dir, retry_failed=retry_failed and budget is None, emit=emit,
                              provisional=provisional, budget=budget)
    records = {t.id: TaskRecord.from_json(found[t.id], trusted=True) if t.id in found else first[t.id]
               for t in tasks}  # found: resumed records the job accepted, and new ones it made
    if before is not None:
        counts = budget_counts(before, counts, records, emit)
    return list(records.values()), write_run_submission(tasks, records, run_dir), counts


def write_run_submission(tasks: Sequence[Task], records: dict[str, TaskRecord], run_dir: RunDir | None) -> dict:
    """The submission of `records`, and with a run directory of every other task finished there under its
    settings, written to RUN_DIR/submission.json."""
    submission = submission_of(tasks, records)
    if run_dir is not None:
        every = run_dir.finished("task_id", TaskRecord.from_json)
        others = {tid: r for tid, r in every.items() if tid not in records}
        submission.update(build_submission(
            {tid: [[as_grid(a) for a in t.attempts] for t in r.tests] for tid, r in others.items()},
            {tid: len(r.tests) for tid, r in others.items()}))
        write_output(run_dir.path / "submission.json", lambda path: write_submission(path, submission))
    return submission
