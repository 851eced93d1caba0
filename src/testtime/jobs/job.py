"""What a job is, what it reports, and the one place an item's exception is caught.

A job turns items (ARC tasks, LM prompts) into JSON-able records. The job layer never looks
inside an item or a record beyond the record's id and `status`.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger(__name__)

OK, FAILED = "ok", "failed"
"""The two values of a record's `status`."""


class Job(Protocol):
    """Runs items one at a time in one process; a Ray worker holds one job for its whole life."""

    noun: str
    """What an item is called in messages: `task`, `prompt`."""
    id_key: str
    """The record field holding the item id: `task_id`, `prompt_id`."""

    def item_id(self, item: Any) -> str:
        """The item's id, unique within a run."""

    def cost(self, item: Any) -> float:
        """Relative work of an item; a pool starts the largest first so the tail is short."""

    def setup(self) -> str:
        """Load what every item needs (the base model), once per process; returns a line for the user."""

    def run(self, item: Any, emit: Emit) -> dict[str, Any]:
        """One item's record (`status` "ok"); raising makes a failed record."""

    def failed(self, item: Any, error: str, trace: str, seconds: float) -> dict[str, Any]:
        """The record of an item that raised, or whose worker kept dying."""

    def not_parallel(self) -> str | None:
        """Why the items cannot be split over processes, or None when they can."""

    def accepts(self, item: Any, record: dict[str, Any]) -> bool:
        """Whether a saved record is whole enough to reuse (a malformed one is run again)."""


# --- events: what a run reports while it goes ---------------------------------------------------

@dataclass
class Started:
    item_id: str


@dataclass
class Finished:
    item_id: str
    record: dict[str, Any]
    resumed: bool = False
    """True for a record found in the run directory (not run now)."""


@dataclass
class Step:
    """A training step inside an item (in-process only: Ray workers do not stream steps)."""

    item_id: str
    info: Any


@dataclass
class Notice:
    """A line for the user: a model loaded, a worker died and its item is retried."""

    message: str


@dataclass
class Status:
    """Counts over the items run now (resumed ones excluded), sent whenever one changes."""

    total: int
    done: int = 0
    failed: int = 0
    retried: int = 0
    running: int = 0


Event = Started | Finished | Step | Notice | Status
Emit = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """An `emit` that drops everything."""


@dataclass
class Counts:
    """What a run did, for its summary and exit code."""

    total: int = 0
    resumed: int = 0
    ran: int = 0
    failed: int = 0
    """Items whose record (new or resumed) says failed."""
    failed_ids: list[str] = field(default_factory=list)
    not_started: int = 0
    """Items a time budget left unrun (each keeps its earlier record, if any)."""


def failure(job: Job, item: Any, err: BaseException | str, trace: str = "", seconds: float = 0.0) -> dict[str, Any]:
    """A failed record: the job's own fields plus status, error and a traceback summary."""
    error = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    record = job.failed(item, error, trace, seconds)
    record.update({job.id_key: job.item_id(item), "status": FAILED, "error": error, "traceback": trace,
                   "seconds": seconds})
    return record


def run_one(job: Job, item: Any, emit: Emit) -> dict[str, Any]:
    """Run one item; an exception becomes a failed record (the only place items' errors are caught)."""
    t0 = time.perf_counter()
    try:
        return job.run(item, emit)
    except Exception as err:  # one bad item must not stop the batch
        log.warning("%s %s failed: %s: %s", job.noun, job.item_id(item), type(err).__name__, err)
        trace = "".join(traceback.format_exception(err, limit=-6))
        return failure(job, item, err, trace, time.perf_counter() - t0)
