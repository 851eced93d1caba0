"""Items on a pool of Ray actors: each sets its job up once (loads the model), then runs items.

Per-item test-time training is embarrassingly parallel. Items go out largest first (the job's
`cost`), so the last ones, which decide how long the other workers sit idle, are the small ones;
under a time budget they go out in the order of its `Plan`, which stops handing them out once
none would end in time.
A worker that dies (killed, out of memory) is replaced and its item retried, at most
`max_retries` times; an item whose code raises is a failed record at once (`run_one` catches it
inside the worker, as in-process). Results do not depend on where or in which order items ran.

    with ray_session(ScaleArgs(workers=2)):
        RayExecutor(ScaleArgs(workers=2)).execute(job, items, keep, emit)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from testtime.config import at_least, setting
from testtime.jobs.budget import Plan
from testtime.jobs.job import OK, Emit, Job, Notice, Status, failure, ignore, run_one

log = logging.getLogger(__name__)

INSTALL = "pip install testtime[ray]"


class ScaleError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or no worker could start; the message says what to do."""


_PANEL = "Scale-out"


@dataclass
class ScaleArgs:
    """How work is spread over Ray actors (none of it changes results: every field is a runtime setting)."""

    workers: int = setting(2, runtime=True, panel=_PANEL, help="Ray: actors, each loading the base model once.")
    gpus_per_worker: float = setting(0.0, runtime=True, panel=_PANEL, help="Ray: GPUs per actor; fractional (0.25) "
                                     "lets several small-model actors share one GPU.")
    threads_per_worker: int = setting(1, runtime=True, panel=_PANEL, help="Ray: CPU threads per actor (torch "
                                      "intra-op threads, and the CPUs Ray reserves for it).")
    address: str | None = setting(None, runtime=True, panel=_PANEL, flag="ray-address", help="Ray: an existing "
                                  "cluster (`ray start --head` prints it; default: RAY_ADDRESS, else a local "
                                  "instance started and stopped by this command).")
    max_retries: int = setting(2, runtime=True, panel=_PANEL, help="Ray: retries of an item whose worker died, "
                               "before it is recorded as failed.")

    def check(self) -> Iterator[tuple[str, str]]:
        yield from at_least("workers", self.workers, 1)
        yield from at_least("gpus_per_worker", self.gpus_per_worker, 0)
        yield from at_least("threads_per_worker", self.threads_per_worker, 1)
        yield from at_least("max_retries", self.max_retries, 0)




def require_ray() -> Any:
    """The `ray` module, or a ScaleError saying how to install it."""
    try:
        import ray  # optional dependency
    except ImportError:
        raise ScaleError(f"--ray needs the optional dependency ray: install it with `{INSTALL}`") from None
    return ray


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
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            where = f"Ray cluster at {address}"
        else:
            cpus = args.workers * args.threads_per_worker  # exactly one actor per reserved slot
            ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
            where = f"local Ray instance ({cpus} CPUs)"
    except (ConnectionError, ValueError, RuntimeError) as err:
        raise ScaleError(f"--ray-address {address}: cannot connect ({_first_line(err)}); start one with "
                         "`ray start --head` or leave --ray-address and RAY_ADDRESS unset for a local "
                         "instance") from None
    try:
        yield where
    finally:
        ray.shutdown()  # a local instance: stops its processes; a cluster: disconnects this driver


def _check_reachable(address: str) -> None:
    """Fail in seconds on a HOST:PORT nobody listens on (ray.init retries such an address for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return  # `auto`, `ray://...`: left to ray.init
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ScaleError(f"--ray-address {address}: cannot connect ({err.strerror or err}); start one with "
                         "`ray start --head` or leave --ray-address and RAY_ADDRESS unset for a local "
                         "instance") from None


class Worker:
    """A Ray actor (made remote in `RayExecutor`): sets its job up once, then runs items through it."""

    def __init__(self, job: Job, threads: int) -> None:
        import torch  # in the worker process only

        torch.set_num_threads(threads)
        job.setup()
        self.job = job

    def ready(self) -> int:
        return os.getpid()

    def run(self, item: Any) -> dict[str, Any]:
        return run_one(self.job, item, ignore)


@dataclass
class _Slot:
    """An item in flight, the actor running it, and when it was handed out (perf_counter)."""

    actor: Any
    item: Any
    since: float


class RayExecutor:
    """Runs items on `args.workers` Ray actors; needs Ray initialised (`ray_session`)."""

    def __init__(self, args: ScaleArgs) -> None:
        self.args = args
        self.where = "Ray"

    def describe(self) -> str:
        a = self.args
        return (f"Ray: {self.where}; {a.workers} workers x {a.threads_per_worker} threads, "
                f"{a.gpus_per_worker:g} GPU each, up to {a.max_retries} retries per item")

    def execute(self, job: Job, items: Sequence[Any], keep: Callable[[dict[str, Any]], None], emit: Emit,
                plan: Plan | None = None) -> None:
        reason = job.not_parallel()
        if reason:
            raise ScaleError(f"{reason}; drop --ray")
        if items and (plan is None or not plan.exhausted()):  # out of time: no actor starts
            _Pool(job, self.args, keep, emit, plan).run(sorted(items, key=job.cost, reverse=True))


class _Pool:
    """The driver's side of one `execute`: actors, items in flight, retries."""

    def __init__(self, job: Job, args: ScaleArgs, keep: Callable[[dict[str, Any]], None], emit: Emit,
                 plan: Plan | None = None) -> None:
        self.ray = require_ray()
        from ray.exceptions import NodeDiedError, OutOfMemoryError, RayActorError, WorkerCrashedError

        self.lost = (RayActorError, WorkerCrashedError, OutOfMemoryError, NodeDiedError)
        self.job, self.args, self.keep, self.emit, self.plan = job, args, keep, emit, plan
        self.remote = self.ray.remote(Worker).options(num_cpus=args.threads_per_worker, num_gpus=args.gpus_per_worker,
                                                      max_restarts=0, max_task_retries=0)
        self.actors: list[Any] = []
        self.attempts: dict[str, int] = {}

    def start(self) -> Any:
        actor = self.remote.remote(self.job, self.args.threads_per_worker)
        self.actors.append(actor)
        return actor

    def run(self, items: list[Any]) -> None:
        status = Status(total=len(items))
        pending, inflight = deque(items), {}
        try:
            idle = [self.start() for _ in range(min(self.args.workers, len(items)))]
            try:  # a model that cannot load fails every worker: say so once instead of retrying every item
                self.ray.get([a.ready.remote() for a in idle])
            except self.lost as err:
                raise ScaleError(f"Ray workers could not start: {_first_line(err)}") from None
            self.emit(status)
            while pending or inflight:
                while idle and pending:
                    item = pending.popleft() if self.plan is None else self.plan.take(pending, self.args.workers)
                    if item is None:  # out of time: what is left is not started
                        pending.clear()
                        break
                    slot = _Slot(idle.pop(), item, time.perf_counter())
                    inflight[slot.actor.run.remote(slot.item)] = slot
                if not inflight:
                    break
                status.running = len(inflight)
                self.emit(status)
                (ref,), _ = self.ray.wait(list(inflight), num_returns=1)
                slot = inflight.pop(ref)
                try:
                    record = self.ray.get(ref)
                except self.lost as err:  # the worker is gone: replace it, maybe retry the item elsewhere
                    idle.append(self.replace(slot.actor))
                    record = self.retry_or_fail(slot.item, err, pending, status)
                    if record is None:
                        continue
                else:
                    idle.append(slot.actor)
                if self.plan is not None:
                    self.plan.done(slot.item, record, time.perf_counter() - slot.since)
                status.done += 1
                status.failed += record.get("status") != OK
                self.keep(record)
            status.running = 0
            self.emit(status)
        finally:  # also on Ctrl-C: no actor keeps running (or holding a GPU) after the driver leaves
            for actor in self.actors:
                with contextlib.suppress(Exception):
                    self.ray.kill(actor, no_restart=True)

    def replace(self, actor: Any) -> Any:
        with contextlib.suppress(Exception):
            self.ray.kill(actor, no_restart=True)
        self.actors.remove(actor)
        return self.start()

    def retry_or_fail(self, item: Any, err: BaseException, pending: deque, status: Status) -> dict | None:
        """Put `item` back for another worker (None), or its failed record once retries are spent."""
        item_id = self.job.item_id(item)
        n = self.attempts[item_id] = self.attempts.get(item_id, 0) + 1
        if n <= self.args.max_retries:
            status.retried += 1
            pending.appendleft(item)
            self.emit(Notice(f"{item_id}: worker died ({_first_line(err)}); retry {n}/{self.args.max_retries}"))
            return None
        error = f"worker died {n} times: {_first_line(err)}"
        self.emit(Notice(f"{item_id}: failed, {error}"))
        return failure(self.job, item, error, str(err)[:2000])


def _first_line(err: BaseException) -> str:
    """The line of a Ray error that says what went wrong: the last `SomeError: ...` line, else the first."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    raised = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception): ", ln)]
    return (raised or lines or [type(err).__name__])[-1 if raised else 0][:300]
