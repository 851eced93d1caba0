"""Solve ARC tasks: per-task test-time training, augmented inference, voting, resumable runs.

Per task (Akyurek et al. 2024; Barbadillo's single-task TTT): build leave-one-out training data
from the task's own demonstrations, train a fresh LoRA on it, predict every test input under the
invertible transforms, map back, vote, keep two attempts, drop the LoRA. Each finished task is
written atomically to `RUN_DIR/tasks/TASK_ID.json`; re-running skips finished tasks and rebuilds
`submission.json` from the task files, so a crash loses at most the task in progress.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter
from testtime.arc.likelihood import fresh_views, poe_scores, truth_bits, truth_rows
from testtime.arc.predict import PredictOutcome, predict_task
from testtime.arc.records import record_problems
from testtime.arc.score import build_submission, truth_means, write_submission
from testtime.arc.settings import SolveConfig, TTTArgs
from testtime.arc.task import Task, as_grid, grids_equal
from testtime.arc.ttt_data import build_ttt_data
from testtime.arc.vote import grid_key, selection, vote
from testtime.finetune import StepInfo, train
from testtime.jobs import Counts, Emit, Executor, LocalExecutor, RunDir, Step, ignore, run_items, write_output
from testtime.lora import AdapterHost
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
        """Shared-TTT: one LoRA on the union of every task's TTT data; stays active for all predictions."""
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
        return {"sequences": len(sequences), "steps": stats.steps, "tokens": stats.tokens, "seconds": stats.seconds}

    def solve_task(self, task: Task, on_step: Callable[[StepInfo], None] | None = None) -> dict[str, Any]:
        """Solve one task (a raising task is the job layer's to record); the task's LoRA is dropped after."""
        t0 = time.perf_counter()
        try:
            record = self._solve(task, on_step)
        finally:
            if self.config.ttt and not self.config.shared:
                self.host.drop()
        record = {"task_id": task.id, **record, "seconds": time.perf_counter() - t0}
        _add_correctness(record, task)
        return record

    def _solve(self, task: Task, on_step: Callable[[StepInfo], None] | None) -> dict[str, Any]:
        seed = task_seed(self.config.seed, task.id)
        ttt: dict[str, Any] = {"enabled": self.config.ttt, "shared": self.config.shared}
        before = self._before.get(task.id) if self.config.ttt and self.config.shared else self._truth(task)
        if self.config.ttt and not self.config.shared:
            data_args, train_args = self._ttt_args(seed)
            t0 = time.perf_counter()
            data = build_ttt_data(task, self.tokenizer, data_args, self.fmt, self.counter)
            ttt.update(sequences=len(data.sequences), fits=data.fits, fallback=data.fallback,
                       dropped_demos=data.n_dropped_demos, data_seconds=time.perf_counter() - t0)
            if data.sequences:
                self.host.fresh(seed)
                stats = train(self.host.model, data.sequences, train_args, on_step=on_step)
                ttt.update(steps=stats.steps, tokens=stats.tokens, seconds=stats.seconds,
                           tokens_per_s=stats.tokens_per_s,
                           first_loss=stats.losses[0] if stats.losses else None,
                           final_loss=stats.losses[-1] if stats.losses else None,
                           losses=[float(x) for x in stats.losses])
        infer_args = dataclasses.replace(self.config.infer, seed=seed)
        outcomes = predict_task(self.host.model, self.tokenizer, task, infer_args, counter=self.counter, fmt=self.fmt)
        tests = [self._test_record(task, i, outcome) for i, outcome in enumerate(outcomes)]
        trained = self.config.ttt and (self.config.shared or bool(ttt.get("steps")))
        after = self._truth(task) if trained else before
        if before is not None or after is not None:
            _add_truth(tests, task, before, after)
        predict = {"seconds": sum(o.seconds for o in outcomes), "prompts": sum(o.n_prompts for o in outcomes),
                   "unparsed": sum(o.n_unparsed for o in outcomes), "unfit": sum(o.n_unfit for o in outcomes)}
        fits = ttt.get("fits", True) and predict["unfit"] < max(predict["prompts"], 1)
        return {"status": "ok", "error": None, "fits": fits, "ttt": ttt, "predict": predict, "tests": tests}

    def _test_record(self, task: Task, test_index: int, outcome: PredictOutcome) -> dict[str, Any]:
        """Vote, score by PoE when the selection or --score-views asks, pick the attempts; every score is kept."""
        ranked = vote(outcome.candidates)
        how = self.config.infer.select
        poe, views = self._poe(task, test_index, outcome, [r.grid for r in ranked])
        order = selection(ranked, how, poe)
        index = {grid_key(r.grid): k for k, r in enumerate(ranked)}
        return {
            "attempts": [ranked[k].grid.tolist() for k in order[:2]],
            "selection": order,
            "candidates": [{"grid": r.grid.tolist(), "votes": r.votes, "groups": r.groups, "identity": r.identity,
                            "logprob": r.logprob, "token_logprob": r.token_logprob, "transforms": r.transforms,
                            "poe": None if poe is None else poe[k],
                            **({} if views is None else {"poe_prompts": views["prompts"][k],
                                                         "poe_views": views["views"][k]})}
                           for k, r in enumerate(ranked)],
            **({} if views is None else {"score_views": views["names"]}),
            "predictions": [{"candidate": index[grid_key(c.grid)], "transform": c.transform,
                             "order": c.order, "prompt": c.prompt, "logprob": c.logprob, "tokens": c.tokens,
                             **({} if c.decoding == "greedy" else {"decoding": c.decoding})}  # greedy records as before
                            for c in outcome.candidates],
            "prompts": outcome.n_prompts, "unparsed": outcome.n_unparsed, "unfit": outcome.n_unfit,
        }

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


def _add_truth(tests: list[dict[str, Any]], task: Task, before: list | None, after: list | None) -> None:
    """tests[i]["truth"]: the true output's bits before and after TTT and its rank in the selection."""
    for i, ex in enumerate(task.test):
        if ex.output is None or i >= len(tests):
            continue
        test = tests[i]
        grids = [as_grid(test["candidates"][k]["grid"]) for k in test["selection"]]
        truth: dict[str, Any] = {}
        for when, bits in (("before", before), ("after", after)):
            measured = (bits[i] if bits else None) or {}
            for unit in ("token", "cell"):
                truth[f"bits_per_{unit}_{when}"] = measured.get(f"bits_per_{unit}")
        truth["rank"] = next((n + 1 for n, g in enumerate(grids) if grids_equal(g, ex.output)), None)
        test["truth"] = truth


def _add_correctness(record: dict[str, Any], task: Task) -> None:
    """With known test outputs: was attempt 1 / either attempt / any candidate right, per test input."""
    if not task.has_solutions:
        return
    for i, ex in enumerate(task.test):
        if i >= len(record["tests"]):
            record["tests"].append({"attempts": [], "candidates": []})
        test = record["tests"][i]
        attempts = [as_grid(a) for a in test["attempts"]]
        cands = [as_grid(c["grid"]) for c in test["candidates"]]
        test["correct"] = {
            "attempt_1": bool(attempts) and grids_equal(attempts[0], ex.output),
            "any_attempt": any(grids_equal(a, ex.output) for a in attempts[:2]),
            "oracle": any(grids_equal(c, ex.output) for c in cands),
        }


def failed_record(task: Task, error: str, trace: str = "", seconds: float = 0.0) -> dict[str, Any]:
    """The record of a task that failed outside `Solver.solve_task` (e.g. its Ray worker kept dying)."""
    record = {"task_id": task.id, "status": "failed", "error": error, "traceback": trace,
              "tests": [{"attempts": [], "candidates": []} for _ in task.test], "seconds": seconds}
    _add_correctness(record, task)
    return record


def submission_of(tasks: Sequence[Task], records: dict[str, dict[str, Any]]) -> dict:
    """The Kaggle submission of a run's task records (every task and test input present)."""
    attempts = {tid: [[as_grid(a) for a in t["attempts"]] for t in r["tests"]] for tid, r in records.items()}
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
        self._ready = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "solver": None, "_ready": False}  # a Ray worker loads its own model

    def item_id(self, task: Task) -> str:
        return task.id

    def cost(self, task: Task) -> float:
        return task_cells(task)

    def not_parallel(self) -> str | None:
        if self.config.ttt and self.config.shared:
            return "--shared trains one LoRA on all tasks, which does not split over workers"
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
        if self.config.ttt and self.config.shared:
            log.info("shared TTT: %s", self.solver.train_shared(self.shared_tasks))
        return message

    def run(self, task: Task, emit: Emit) -> dict[str, Any]:
        self.setup()
        assert self.solver is not None
        return self.solver.solve_task(task, on_step=lambda info: emit(Step(task.id, info)))

    def failed(self, task: Task, error: str, trace: str, seconds: float) -> dict[str, Any]:
        return failed_record(task, error, trace, seconds)

    def accepts(self, task: Task, record: dict[str, Any]) -> bool:
        """A record that fits the schema (`arc.records`), with one entry per test input of the task."""
        problems = record_problems(record)
        if not problems and len(record["tests"]) != len(task.test):
            problems = [f"record.tests: {len(record['tests'])} entries, the task has {len(task.test)} test inputs"]
        if problems:
            log.warning("task %s: its record does not fit (%s); the task is run again", task.id, "; ".join(problems))
        return not problems


def solve_tasks(job: ArcJob, tasks: Sequence[Task], run_dir: RunDir | None = None, *,
                executor: Executor | None = None, retry_failed: bool = False,
                emit: Emit = ignore) -> tuple[list[dict[str, Any]], dict, Counts]:
    """Solve `tasks`, resuming from `run_dir`; returns the records, the submission and the counts.

    An unopened `run_dir` is opened with the job's settings (the CLI opens it first, with its
    flags and options). The submission covers every task, failed ones included, and with a run
    directory every task finished there under these settings, whatever subset `tasks` is.
    """
    if run_dir is not None and not run_dir.opened:
        run_dir.open("arc solve", {"config": job.config.to_json()})
    records, counts = run_items(job, tasks, executor or LocalExecutor(), run_dir, retry_failed=retry_failed,
                                emit=emit)
    submission = submission_of(tasks, records)
    if run_dir is not None:
        every = run_dir.finished("task_id", valid=lambda r: not record_problems(r))
        others = {tid: r for tid, r in every.items() if tid not in records}
        submission.update(build_submission(
            {tid: [[as_grid(a) for a in t["attempts"]] for t in r["tests"]] for tid, r in others.items()},
            {tid: len(r["tests"]) for tid, r in others.items()}))
        write_output(run_dir.path / "submission.json", lambda path: write_submission(path, submission))
    return list(records.values()), submission, counts


def summarize(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Score, pass@1 and oracle (when outputs are known), failures, fits and timings over a run; `truth`:
    the true outputs' mean bits before/after TTT and mean rank (`score.truth_means`)."""
    def task_mean(key: str) -> float | None:
        scored = [r for r in records if r["tests"] and all("correct" in t for t in r["tests"])]
        if not scored:
            return None
        return sum(sum(t["correct"][key] for t in r["tests"]) / len(r["tests"]) for r in scored) / len(scored)

    ok = [r for r in records if r.get("status") == "ok"]
    trained = [r for r in ok if r["ttt"].get("steps")]
    ttt_s = [r["ttt"].get("seconds", 0.0) + r["ttt"].get("data_seconds", 0.0) for r in ok]
    tokens = sum(r["ttt"].get("tokens", 0) for r in trained)
    train_s = sum(r["ttt"].get("seconds", 0.0) for r in trained)
    return {
        "tasks": len(records),
        "failed": len(records) - len(ok),
        "did_not_fit": sum(not r.get("fits", True) for r in ok),
        "score": task_mean("any_attempt"),
        "pass@1": task_mean("attempt_1"),
        "oracle": task_mean("oracle"),
        "ttt_seconds_per_task": sum(ttt_s) / len(ok) if ok else 0.0,
        "infer_seconds_per_task": sum(r["predict"]["seconds"] for r in ok) / len(ok) if ok else 0.0,
        "train_tokens_per_s": tokens / train_s if train_s else None,
        "truth": truth_means(ok),
    }
