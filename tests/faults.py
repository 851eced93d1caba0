"""Faults for the job layer's one seam (`testtime.jobs.hooks`), installed by the test suite only.

    with injected(Faults(die_first="/tmp/marker", raise_on=("task1",))):
        CliRunner().invoke(app, [...])

While installed, every executor made (in-process, and each Ray worker, to which the `Faults`
travels pickled by value) calls it before it runs an item:

    die_first  a file path: the first process to start its first item exits at once (like an OOM
               kill); once per run, because only the caller that creates the file (O_EXCL) dies
    die_on     item ids: a process exits whenever it starts one of them
    raise_on   item ids: the item raises RuntimeError("fault injected on ID")

`hook(...)` gives the keyword arguments the tests' `invoke` helpers take (`faults=Faults(...)`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


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


def hook(**arg) -> dict[str, Faults]:
    """`faults=Faults(...)`, for the tests' `invoke(..., **hook(raise_on=[...]))` helpers."""
    return {"faults": faults(**arg)}


@contextlib.contextmanager
def injected(fault: Faults | None) -> Iterator[None]:
    """Install `fault` in the job layer for the block (None: nothing); Ray gets it by value, so its
    workers need not import this file."""
    from testtime.jobs import hooks

    if fault is not None:
        with contextlib.suppress(ImportError):
            import ray.cloudpickle

            ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    hooks.install(fault)
    try:
        yield
    finally:
        hooks.install(None)


def _claim(path: str) -> bool:
    """Create `path` if it does not exist yet; True for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
