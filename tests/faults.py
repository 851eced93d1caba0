"""Faults injected into the job layer by the test suite: a job wrapper that fires inside `job.run`.

    with injected(faults(die_first="/tmp/marker", raise_on=["task1"])):
        invoke("arc", "solve", ...)

The package has no seam for this. While the block runs, the executors (`LocalExecutor`,
`RayExecutor`) are patched in this process to run every job they are given as a `FaultyJob`,
which calls the `Faults` before the real job runs an item. A Ray worker is another process, so it
gets the wrapped job as it gets any job: pickled, this module by value (the workers need not import
it). Each worker unpickles its own copy, so "first" means the first item of that process.

    die_first  a file path: the first process to start its first item exits at once (like an OOM
               kill); once per run, because only the caller that creates the file (O_EXCL) dies
    die_on     item ids: a process exits whenever it starts one of them
    raise_on   item ids: the item raises RuntimeError("fault injected on ID")
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock


@dataclass(frozen=True)
class Faults:
    die_first: str | None = None
    die_on: tuple[str, ...] = ()
    raise_on: tuple[str, ...] = ()

    def __call__(self, item_id: str, first: bool) -> None:
        """Maybe die (hard: no exception, no cleanup) or raise, before `item_id` runs."""
        if first and self.die_first and _claim(self.die_first):
            os._exit(1)
        if item_id in self.die_on:
            os._exit(1)
        if item_id in self.raise_on:
            raise RuntimeError(f"fault injected on {item_id}")


def faults(*, die_first: str | Path | None = None, die_on: list[str] | tuple[str, ...] = (),
           raise_on: list[str] | tuple[str, ...] = ()) -> Faults:
    return Faults(None if die_first is None else str(die_first), tuple(die_on), tuple(raise_on))


@dataclass
class FaultyJob:
    """`job`, with `faults` called at the start of each item it runs; everything else is the job's own."""

    job: Any
    faults: Faults
    first: bool = True
    """No item has run yet in this process."""

    def __getattr__(self, name: str) -> Any:  # noun, id_key, setup, cost, failed, ...: the job's
        if name.startswith("__") or name == "job":  # unpickling asks for these before `job` is set
            raise AttributeError(name)
        return getattr(self.job, name)

    def run(self, item: Any, emit: Any) -> dict[str, Any]:
        first, self.first = self.first, False
        self.faults(self.job.item_id(item), first)
        return self.job.run(item, emit)


@contextlib.contextmanager
def injected(fault: Faults | None) -> Iterator[None]:
    """Every executor run in the block wraps its job in a `FaultyJob` with `fault` (None: nothing changes)."""
    if fault is None:
        yield
        return
    from testtime.jobs import LocalExecutor, RayExecutor

    with contextlib.suppress(ImportError):
        import ray.cloudpickle

        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with contextlib.ExitStack() as patches:
        for executor in (LocalExecutor, RayExecutor):
            patches.enter_context(mock.patch.object(executor, "execute", _with_faults(executor.execute, fault)))
        yield


def _with_faults(execute: Any, fault: Faults) -> Any:
    def faulty_execute(self: Any, job: Any, *rest: Any) -> None:
        return execute(self, FaultyJob(job, fault), *rest)
    return faulty_execute


def _claim(path: str) -> bool:
    """Create `path` if it does not exist yet; True for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
