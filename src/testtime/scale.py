"""Scale-out on Ray: a pool of actors that each load the base model once and solve items one by one.

Per-task test-time training is embarrassingly parallel. Each actor builds its job once (load the
base model, wrap it in an `AdapterHost`) and keeps it; every item (an ARC task, an LM prompt)
then gets a fresh adapter exactly as in-process. The driver submits items, collects results as
they finish (`ray.wait`) and hands them to a callback that writes the run directory, so resume,
scoring and the submission are the same whichever path ran.

Faults: a worker that dies (killed, out of memory) is replaced and its item retried, at most
`max_retries` times; an item whose code raises comes back as a failure at once (it would raise
again). Tests inject faults through environment variables read by the driver:

    TESTTIME_FAULT_DIE_ON_FIRST_TASK=MARKER  the first worker to start an item exits (once per run:
                                             MARKER is a file path, created by the worker that dies)
    TESTTIME_FAULT_DIE_ON_TASK=ID[,ID]       a worker exits whenever it starts one of these items
    TESTTIME_FAULT_RAISE_ON_TASK=ID[,ID]     the worker raises RuntimeError on these items

    with ray_session(ScaleArgs(workers=2)):
        stats = run_pool(functools.partial(arc_job, config), [(t.id, t) for t in tasks], args,
                         on_result=save, on_failure=record_failure)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import typer

log = logging.getLogger(__name__)

INSTALL = "pip install testtime[ray]"
FAULT_DIE_FIRST = "TESTTIME_FAULT_DIE_ON_FIRST_TASK"
FAULT_DIE_ON = "TESTTIME_FAULT_DIE_ON_TASK"
FAULT_RAISE_ON = "TESTTIME_FAULT_RAISE_ON_TASK"


# CLI options that read the same in every command with --ray (`testtime arc solve`, `testtime lm eval`)
GPUS_PER_WORKER_OPTION = typer.Option(0.0, "--gpus-per-worker",
                                      help="Ray: GPUs per actor; fractional (0.25) shares one GPU.")
THREADS_PER_WORKER_OPTION = typer.Option(1, "--threads-per-worker", help="Ray: CPU threads per actor.")
RAY_ADDRESS_OPTION = typer.Option(None, "--ray-address", help="Ray: an existing cluster (default: RAY_ADDRESS, "
                                  "else a local instance started and stopped by this command).")


class ScaleError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or no worker could start; the message says what to do."""


@dataclass
class ScaleArgs:
    """How work is spread over Ray actors."""

    workers: int = 2
    """Actors, each holding one copy of the base model."""
    gpus_per_worker: float = 0.0
    """GPUs per actor; fractional (0.25) lets several small-model actors share one GPU."""
    threads_per_worker: int = 1
    """CPU threads per actor (torch intra-op threads, and the CPUs Ray reserves for it)."""
    address: str | None = None
    """An existing cluster (`ray start --head` prints it); None: RAY_ADDRESS, else a local instance."""
    max_retries: int = 2
    """Times an item is retried after its worker died, before it is recorded as failed."""

    def problems(self) -> list[str]:
        """One message per bad field, naming the CLI flag."""
        out = []
        if self.workers < 1:
            out.append(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            out.append(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")
        if self.threads_per_worker < 1:
            out.append(f"--threads-per-worker must be at least 1, not {self.threads_per_worker}")
        if self.max_retries < 0:
            out.append(f"--max-retries must be 0 or more, not {self.max_retries}")
        return out


@dataclass
class PoolStats:
    """Counts across the pool, updated as results come back."""

    total: int
    done: int = 0
    """Items finished (ok or failed)."""
    failed: int = 0
    retried: int = 0
    """Retries after a worker died."""
    running: int = 0
    workers_started: int = 0
    """Actors created, replacements included."""


def require_ray() -> Any:
    """The `ray` module, or a ScaleError saying how to install it."""
    try:
        import ray  # noqa: PLC0415 - optional dependency
    except ImportError:
        raise ScaleError(f"--ray needs the optional dependency ray: install it with `{INSTALL}`") from None
    return ray


def check_flags(ray: bool, args: ScaleArgs) -> tuple[list[str], str | None]:
    """(problems, warning) of the CLI's Ray flags: bad values or missing ray; Ray flags given without --ray."""
    if not ray:
        ignored = args != ScaleArgs()
        return [], ("--workers, --gpus-per-worker, --threads-per-worker, --ray-address and --max-retries "
                    "are ignored without --ray") if ignored else None
    problems = args.problems()
    try:
        require_ray()
    except ScaleError as err:
        problems.append(str(err))
    return problems, None


def scale_flags(problems: list[str], warn: Callable[[str], None], ray: bool, workers: int, gpus_per_worker: float,
                threads_per_worker: int, ray_address: str | None, max_retries: int) -> ScaleArgs | None:
    """The CLI's Ray settings when --ray is on, else None; problems are appended, a warning goes to `warn`."""
    from rich.markup import escape  # noqa: PLC0415

    scale = ScaleArgs(workers=workers, gpus_per_worker=gpus_per_worker, threads_per_worker=threads_per_worker,
                      address=ray_address, max_retries=max_retries)
    found, warning = check_flags(ray, scale)
    problems.extend(escape(p) for p in found)  # `testtime[ray]` is not rich markup
    if warning:
        warn(warning)
    return scale if ray else None


@contextlib.contextmanager
def ray_session(args: ScaleArgs) -> Iterator[str]:
    """Connect to `args.address` (or RAY_ADDRESS), or start a local instance; yields a description.

    A local instance started here is shut down on exit, Ctrl-C included, so no Ray process outlives
    the command. An already initialised Ray (a test fixture, a notebook) is used and left running.
    """
    ray = require_ray()
    if ray.is_initialized():
        yield "the Ray instance already connected"
        return
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            where = f"Ray cluster at {address}"
        else:
            cpus = args.workers * args.threads_per_worker  # exactly one actor per reserved slot
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            where = f"local Ray instance ({cpus} CPUs)"
    except ConnectionError as err:
        raise ScaleError(f"--ray-address {address}: cannot connect ({err}); start one with `ray start --head` "
                         "or leave --ray-address and RAY_ADDRESS unset for a local instance") from None
    try:
        yield where
    finally:
        ray.shutdown()  # a local instance: stops its processes; a cluster: disconnects this driver


@dataclass
class Faults:
    """Fault injection for tests, read from the driver's environment and shipped to every worker."""

    die_marker: str | None = None
    die_on: frozenset[str] = frozenset()
    raise_on: frozenset[str] = frozenset()

    @classmethod
    def from_env(cls) -> Faults:
        def ids(name: str) -> frozenset[str]:
            return frozenset(s.strip() for s in os.environ.get(name, "").split(",") if s.strip())
        return cls(os.environ.get(FAULT_DIE_FIRST) or None, ids(FAULT_DIE_ON), ids(FAULT_RAISE_ON))

    def before(self, item_id: str, first: bool) -> None:
        """Called by a worker before each item: maybe die (hard, like an OOM kill) or raise."""
        if first and self.die_marker and _claim(self.die_marker):
            os._exit(1)
        if item_id in self.die_on:
            os._exit(1)
        if item_id in self.raise_on:
            raise RuntimeError(f"fault injected by {FAULT_RAISE_ON} on {item_id}")


def _claim(path: str) -> bool:
    """Create `path` if it does not exist; True for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class Worker:
    """A Ray actor (made remote in `run_pool`): builds its job once, then runs items through it."""

    def __init__(self, make_job: Callable[[], Callable[[Any], Any]], threads: int, faults: Faults) -> None:
        import torch  # noqa: PLC0415 - in the worker process only

        torch.set_num_threads(threads)
        self.job = make_job()
        self.faults = faults
        self.first = True

    def ready(self) -> int:
        return os.getpid()

    def run(self, item_id: str, item: Any) -> Any:
        first, self.first = self.first, False
        self.faults.before(item_id, first)
        return self.job(item)


@dataclass
class _Slot:
    """An item in flight and the actor running it."""

    actor: Any
    item_id: str
    item: Any


def run_pool(make_job: Callable[[], Callable[[Any], Any]], items: list[tuple[str, Any]], args: ScaleArgs, *,
             on_result: Callable[[str, Any], bool],
             on_failure: Callable[[str, str, str], None],
             on_event: Callable[[PoolStats, str | None], None] | None = None) -> PoolStats:
    """Run `make_job()(item)` for every (id, item) on `args.workers` actors; needs Ray initialised.

    `make_job` must pickle (a module-level function or a functools.partial of one); each actor
    calls it once. `on_result(id, result)` returns whether the result is a success;
    `on_failure(id, error, traceback)` records an item that raised or whose workers kept dying.
    `on_event(stats, message)` follows progress (message: a retry or a failure, else None).
    """
    ray = require_ray()
    from ray.exceptions import (  # noqa: PLC0415
        NodeDiedError, OutOfMemoryError, RayActorError, RayTaskError, WorkerCrashedError)

    lost_errors = (RayActorError, WorkerCrashedError, OutOfMemoryError, NodeDiedError)
    stats = PoolStats(total=len(items))
    if not items:
        return stats
    remote = ray.remote(Worker).options(num_cpus=args.threads_per_worker, num_gpus=args.gpus_per_worker,
                                        max_restarts=0, max_task_retries=0)
    faults = Faults.from_env()

    def event(message: str | None = None) -> None:
        if on_event is not None:
            on_event(stats, message)

    def start() -> Any:
        stats.workers_started += 1
        return remote.remote(make_job, args.threads_per_worker, faults)

    pending = deque(items)
    attempts: dict[str, int] = {}
    actors = [start() for _ in range(min(args.workers, len(items)))]
    inflight: dict[Any, _Slot] = {}
    event()
    try:
        try:  # a model that cannot load fails every worker: say so once instead of retrying every item
            ray.get([a.ready.remote() for a in actors])
        except lost_errors as err:
            raise ScaleError(f"Ray workers could not start: {_first_line(err)}") from None
        idle = list(actors)
        while pending or inflight:
            while idle and pending:
                item_id, item = pending.popleft()
                actor = idle.pop()
                inflight[actor.run.remote(item_id, item)] = _Slot(actor, item_id, item)
            stats.running = len(inflight)
            event()
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            slot = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except lost_errors as err:  # the worker is gone: replace it, maybe retry the item elsewhere
                ray.kill(slot.actor, no_restart=True)
                actors.remove(slot.actor)
                actors.append(start())
                idle.append(actors[-1])
                attempts[slot.item_id] = attempts.get(slot.item_id, 0) + 1
                if attempts[slot.item_id] <= args.max_retries:
                    stats.retried += 1
                    pending.appendleft((slot.item_id, slot.item))
                    event(f"{slot.item_id}: worker died ({_first_line(err)}); retry "
                          f"{attempts[slot.item_id]}/{args.max_retries}")
                else:
                    error = f"worker died {attempts[slot.item_id]} times: {_first_line(err)}"
                    stats.done += 1
                    stats.failed += 1
                    event(f"{slot.item_id}: failed, {error}")
                    on_failure(slot.item_id, error, str(err))
                continue
            except RayTaskError as err:  # the item's own code raised: deterministic, so no retry
                cause = err.cause if getattr(err, "cause", None) is not None else err
                error = f"{type(cause).__name__}: {cause}"
                idle.append(slot.actor)
                stats.done += 1
                stats.failed += 1
                event(f"{slot.item_id}: failed, {error}")
                on_failure(slot.item_id, error, str(err))
                continue
            idle.append(slot.actor)
            stats.done += 1
            stats.failed += not on_result(slot.item_id, result)
        stats.running = 0
        event()
        return stats
    finally:  # also on Ctrl-C: no actor keeps running (or holding a GPU) after the driver leaves
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)


def _first_line(err: BaseException) -> str:
    """The line of a Ray error that says what went wrong: the last `SomeError: ...` line, else the first."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return (raised or lines or [type(err).__name__])[-1 if raised else 0][:300]


# --- the two jobs: ARC tasks and LM prompts -------------------------------------------------------

def arc_job(config: Any) -> Callable[[Any], dict]:
    """In a worker: load the base model once and return `Solver.solve_task` (a fresh LoRA per task)."""
    from testtime.arc.solve import Solver  # noqa: PLC0415 - heavy imports in the worker
    from testtime.lora import AdapterHost
    from testtime.models import load_model

    loaded = load_model(config.model)
    host = AdapterHost(loaded.model, config.lora, start_adapter=config.adapter)
    return Solver(host, loaded.tokenizer, config).solve_task


def longest_first(tasks: list) -> list:
    """ARC tasks ordered for a pool, largest first (cells in all grids; ties keep their order).

    Workers take the next task when they finish one, so the last tasks decide how long the others
    sit idle at the end: with the big ones first, the tail is made of the smallest. Results do
    not depend on the order (each task's seed comes from its id).
    """
    def cells(task: Any) -> int:  # what the prompts hold: demonstrations, and test inputs (not their answers)
        return sum(ex.input.size + ex.output.size for ex in task.train) + sum(ex.input.size for ex in task.test)
    return sorted(tasks, key=cells, reverse=True)


def solve_on_ray(config: Any, tasks: list, run_dir: Any, args: ScaleArgs, *,
                 on_task_done: Callable[[dict], None] | None = None,
                 on_event: Callable[[PoolStats, str | None], None] | None = None) -> tuple[list[dict], dict]:
    """`testtime.arc.solve.run` on a Ray pool: the same run directory, resume and submission."""
    from testtime.arc.solve import failed_record, resume_tasks, submission_of  # noqa: PLC0415

    if config.ttt and config.shared:
        raise ScaleError("--shared trains one LoRA for all tasks, which does not split over workers; drop --ray")
    if run_dir is not None:
        run_dir.save_config({"config": config.to_json(), "tasks": [t.id for t in tasks]})
    records: dict[str, dict] = {}
    by_id = {t.id: t for t in tasks}
    todo = [(t.id, t) for t in longest_first(resume_tasks(tasks, run_dir, records, on_task_done))]

    def keep(record: dict) -> bool:
        if run_dir is not None:
            run_dir.save_task(record)
        records[record["task_id"]] = record
        if on_task_done:
            on_task_done(record)
        return record.get("status") == "ok"

    run_pool(functools.partial(arc_job, config), todo, args, on_result=lambda _id, record: keep(record),
             on_failure=lambda tid, error, trace: keep(failed_record(by_id[tid], error, trace)),
             on_event=on_event)
    ordered = {t.id: records[t.id] for t in tasks}
    submission = submission_of(tasks, ordered)
    if run_dir is not None:
        run_dir.write_submission(submission)
    return list(ordered.values()), submission


def lm_job(model: str, index: str | None, lora_rank: int, args: Any) -> Callable[[Any], dict]:
    """In a worker: load the memory, model and embedder once; return a function of one prompt."""
    from testtime.finetune import LoraArgs  # noqa: PLC0415 - heavy imports in the worker
    from testtime.lm.evaluate import evaluate_prompt, load_memory
    from testtime.lora import AdapterHost
    from testtime.models import load_model

    loaded = load_model(model)
    memory, embedder = load_memory(index, args.select, loaded)
    host = AdapterHost(loaded.model, LoraArgs(r=lora_rank, alpha=2 * lora_rank))
    return functools.partial(evaluate_prompt, host, loaded.tokenizer, memory, embedder, args=args)


def eval_on_ray(model: str, index: str | None, lora_rank: int, prompts: list, args: Any, out: Any,
                scale: ScaleArgs, *, config: dict | None = None,
                on_prompt: Callable[[Any, dict, bool], None] | None = None,
                on_event: Callable[[PoolStats, str | None], None] | None = None) -> tuple[list[dict], list[dict]]:
    """`testtime.lm.evaluate.run_eval` on a Ray pool: the same result files, resume and summary."""
    from pathlib import Path  # noqa: PLC0415

    from testtime.lm.evaluate import record_result, resume_prompts, save_eval_config

    out = Path(out) if out is not None else None
    if out is not None:
        save_eval_config(out, args, config)
    results, failures = [], []
    by_id = {p.id: p for p in prompts}
    todo = [(p.id, p) for p in resume_prompts(prompts, out, args.select, results, on_prompt)]

    def keep(row: dict) -> bool:
        return record_result(row, by_id[row["prompt_id"]], out, args.select, results, failures, on_prompt)

    def failed(pid: str, error: str, _trace: str) -> None:
        keep({"prompt_id": pid, "domain": by_id[pid].domain, "select": args.select, "error": error})

    run_pool(functools.partial(lm_job, model, None if index is None else str(index), lora_rank, args), todo, scale,
             on_result=lambda _id, row: keep(row), on_failure=failed, on_event=on_event)
    order = {p.id: i for i, p in enumerate(prompts)}  # results in prompt order, as in-process
    results.sort(key=lambda r: order.get(r["prompt_id"], len(order)))
    return results, failures



@contextlib.contextmanager
def progress_view(console: Any, noun: str = "tasks") -> Iterator[Callable[[PoolStats, str | None], None]]:
    """One rich progress bar across workers (done, failed, retried, running, ETA); yields an `on_event`.

    The bar counts the items that run now (resumed ones are not in it), so the ETA is honest.
    """
    from rich.markup import escape  # noqa: PLC0415
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(TextColumn(noun), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[counts]}"),
                        console=console)
    with progress:
        bar = progress.add_task(noun, total=None, counts="")

        def on_event(stats: PoolStats, message: str | None) -> None:
            if message:
                progress.console.print(f"  [yellow]{escape(message)}[/]")
            progress.update(bar, total=stats.total, completed=stats.done,
                            counts=f"| {stats.done - stats.failed} ok, {stats.failed} failed, "
                                   f"{stats.retried} retried, {stats.running} running")

        yield on_event
