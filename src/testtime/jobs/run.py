"""Run a job's items into a run directory: resume, execute (here or on Ray), record, count.

    executor = LocalExecutor() if scale is None else RayExecutor(scale)
    records, counts = run_items(job, items, executor, RunDir("runs/x", records="tasks"))

One failure policy for every command: an item that raised is recorded failed (error and
traceback summary) like any other record; a rerun skips it, `retry_failed=True` runs it again.

A provisional record (`provisional(record)`: e.g. an ARC task's fallback) is a result until its item
runs in full: the item is run again, and keeps that record if it does not run. With a `Budget`, the
executor starts items in the order of a `budget.Plan` and leaves unstarted those that would not end
in time.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from testtime.jobs.budget import Budget, Plan
from testtime.jobs.job import FAILED, OK, Counts, Emit, Finished, Job, Notice, Started, Status, ignore, run_one
from testtime.jobs.rundir import RunDir

log = logging.getLogger(__name__)


class SetupError(RuntimeError):
    """A job could not set up (e.g. its model does not load): no item can run."""


class Executor(Protocol):
    """Where items run. `keep` is called once per item run with its record, in completion order; with a
    `plan`, items start in the plan's order and those it does not hand out are not run."""

    def execute(self, job: Job, items: Sequence[Any], keep: Callable[[dict[str, Any]], None], emit: Emit,
                plan: Plan | None = None) -> None:
        ...


class LocalExecutor:
    """Items one after another in this process, in the order given (or the plan's); the job is set up
    at the first."""

    def execute(self, job: Job, items: Sequence[Any], keep: Callable[[dict[str, Any]], None], emit: Emit,
                plan: Plan | None = None) -> None:
        if not items or (plan is not None and plan.exhausted()):
            return
        try:
            message = job.setup()
        except Exception as err:  # reported once, as the reason nothing ran
            raise SetupError(f"{type(err).__name__}: {err}" if not str(err) else str(err)) from err
        if message:
            emit(Notice(message))
        status = Status(total=len(items), running=1)
        emit(status)
        pending = list(items)
        while pending:
            item = pending.pop(0) if plan is None else plan.take(pending)
            if item is None:
                break
            emit(Started(job.item_id(item)))
            t0 = time.perf_counter()
            record = run_one(job, item, emit)
            if plan is not None:
                plan.done(item, record, time.perf_counter() - t0)
            status.done += 1
            status.failed += record.get("status") != OK
            status.running = int(status.done < status.total and bool(pending))
            keep(record)
            emit(status)
        if status.running:
            status.running = 0
            emit(status)


def run_items(job: Job, items: Sequence[Any], executor: Executor, run_dir: RunDir | None = None, *,
              retry_failed: bool = False, emit: Emit = ignore,
              provisional: Callable[[dict[str, Any]], bool] | None = None,
              budget: Budget | None = None) -> tuple[dict[str, dict[str, Any]], Counts]:
    """Records of every item (by id, in the order of `items`), finished ones read back from `run_dir`.

    `run_dir` must be opened (`RunDir.open`) by the caller, who knows the settings. A saved record
    that is `provisional` stays the item's result, unannounced, until the item's new record replaces
    it; with a `budget`, the items that would not end in time are not started (`Counts.not_started`).
    """
    ids = [job.item_id(item) for item in items]
    if len(set(ids)) != len(ids):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"duplicate {job.noun} ids: {', '.join(map(repr, dupes[:5]))}")
    records: dict[str, dict[str, Any]] = {}
    counts = Counts(total=len(items))
    todo = []
    for item, item_id in zip(items, ids):
        done = run_dir.record(item_id, job.id_key) if run_dir is not None else None
        if done is not None and not job.accepts(item, done):
            log.warning("%s is malformed; %s %s is run again", run_dir.record_file(item_id), job.noun, item_id)
            done = None
        if done is not None and provisional is not None and provisional(done):
            records[item_id] = done  # a result until the item's new record replaces it
            todo.append(item)
            continue
        if done is None or (retry_failed and done.get("status") == FAILED):
            todo.append(item)
            continue
        records[item_id] = done
        counts.resumed += 1
        emit(Finished(item_id, done, resumed=True))

    ran: set[str] = set()

    def keep(record: dict[str, Any]) -> None:
        item_id = record[job.id_key]
        if run_dir is not None:
            run_dir.save(record, job.id_key)
        records[item_id] = record
        ran.add(item_id)
        counts.ran += 1
        emit(Finished(item_id, record))

    if todo:
        plan = None if budget is None else Plan(budget, job.cost, provisional or (lambda _record: False))
        executor.execute(job, todo, keep, emit, plan)
        counts.not_started = sum(job.item_id(item) not in ran for item in todo)
    ordered = {i: records[i] for i in ids if i in records}
    counts.failed_ids = [i for i, r in ordered.items() if r.get("status") == FAILED]
    counts.failed = len(counts.failed_ids)
    return ordered, counts


@contextlib.contextmanager
def executor_for(scale: Any | None) -> Iterator[Executor]:
    """A LocalExecutor, or (with Ray settings) a RayExecutor inside a Ray session, shut down on exit."""
    if scale is None:
        yield LocalExecutor()
        return
    from testtime.jobs.ray_pool import RayExecutor, ray_session  # ray imported only when used

    with ray_session(scale) as where:
        executor = RayExecutor(scale)
        executor.where = where
        yield executor


def describe(executor: Executor) -> str | None:
    """A line saying where items run, for executors that are not this process."""
    return getattr(executor, "describe", lambda: None)()


__all__ = ["Executor", "LocalExecutor", "SetupError", "describe", "executor_for", "run_items", "Notice"]
