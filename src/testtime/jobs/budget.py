"""A run's time budget: a wall-clock deadline, the check items make inside their work, and which item
to start next so that the most items finish in time.

    budget = Budget.starting_now(parse_duration("11h30m"))
    run_items(job, items, executor, run_dir, budget=budget, provisional=is_fallback)

The deadline is epoch seconds (`time.time()`), so it means the same in every process of a run
(a Ray worker gets it with its job). An item checks it inside its own work (between training
steps, between decoded tokens) and raises `TimeUp`; the domain decides what the item keeps then
(an ARC task keeps its fallback record). `Plan` starts the next item only when its expected time,
its `Job.cost` times the seconds per unit of cost measured on the items finished so far, fits in
what is left: the cheapest first while the deadline binds (the most items finish), the largest
first once everything left is expected to fit (the shortest tail over several workers).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, MutableSequence
from dataclasses import dataclass
from typing import Any

from testtime.jobs.job import OK

SAFETY = 1.25
"""An item starts only if this many times its expected time fits in what is left."""

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds of `90m`, `11h30m`, `45s`, `2h`, `1h0m30s`, `1.5h`: hours, minutes, seconds in that order,
    each at most once, each with its unit. ValueError for anything else (a bare number, other units,
    spaces inside, zero)."""
    match = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration; write it like 90m, 11h30m, 45s or 2h")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = 3600 * h + 60 * m + s
    if seconds <= 0:
        raise ValueError(f"{text!r} is no time at all; give a duration over zero, like 90m")
    return seconds


def format_duration(seconds: float) -> str:
    """`1h30m`, `45s`, `2h0m5s`: what `parse_duration` reads back (to the second)."""
    total = round(seconds)
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    parts = ([f"{h}h"] if h else []) + ([f"{m}m"] if m or (h and s) else []) + ([f"{s}s"] if s or not total else [])
    return "".join(parts)


class TimeUp(Exception):
    """Raised inside an item when the deadline has passed (or its work can no longer end before it)."""

    def __init__(self, at: str) -> None:
        super().__init__(f"the time budget ran out ({at})")
        self.at = at
        """Where the item was: `training step 3 of 8`, `decoding`."""


def check_deadline(deadline: float | None, at: str) -> None:
    """Raise TimeUp(at) once `deadline` (epoch seconds; None: no deadline) has passed."""
    if deadline is not None and time.time() >= deadline:
        raise TimeUp(at)


def steps_in_time(on_step: Callable[[Any], None] | None, deadline: float | None) -> Callable[[Any], None] | None:
    """A training loop's `on_step` (`finetune.StepInfo`: `step`, `total_steps`) that calls `on_step`, then raises
    TimeUp once the deadline has passed or, from the second step on, once the steps left at the pace of
    those after the first cannot end before it. Without a deadline: `on_step` itself."""
    if deadline is None:
        return on_step
    first_end: list[float] = []

    def step(info: Any) -> None:
        if on_step is not None:
            on_step(info)
        now = time.time()
        at = f"training step {info.step} of {info.total_steps}"
        if now >= deadline:
            raise TimeUp(at)
        if not first_end:
            first_end.append(now)  # the first step pays one-off costs: the pace is measured after it
        elif now + (now - first_end[0]) / (info.step - 1) * (info.total_steps - info.step) > deadline:
            raise TimeUp(f"{at}: the {info.total_steps - info.step} steps left would end past the deadline")
    return step


@dataclass(frozen=True)
class Budget:
    """The wall-clock time a run may take, from `started` (epoch seconds)."""

    seconds: float
    """The budget as given."""
    started: float
    """When it started (epoch seconds)."""
    reserve: float = 0.0
    """Seconds kept at the end for what follows the items (the submission, the summary, shutting Ray down)."""

    @classmethod
    def starting_now(cls, seconds: float, started: float | None = None) -> Budget:
        """A budget from now (or `started`) that keeps 2% of itself, at most 30 s, for the end of the run."""
        return cls(seconds, time.time() if started is None else started, min(30.0, 0.02 * seconds))

    @property
    def deadline(self) -> float:
        """Epoch seconds by which every item must have ended."""
        return self.started + self.seconds - self.reserve

    def left(self) -> float:
        return self.deadline - time.time()

    def used(self) -> float:
        return time.time() - self.started


class Plan:
    """Which item an executor starts next under a budget, learning seconds per unit of cost as items end.

    `take` returns the next item (removed from `pending`) or None when none is expected to finish in
    time: then nothing more starts. `done` reports how an item went: a finished record adds to the
    measured rate; a provisional one (the item was cut by the deadline) says the item needed more
    than the time it had, a floor under the rate.
    """

    def __init__(self, budget: Budget, cost: Callable[[Any], float],
                 provisional: Callable[[dict[str, Any]], bool]) -> None:
        self.budget, self.cost, self.provisional = budget, cost, provisional
        self.seconds = 0.0
        """Time of the items finished so far."""
        self.units = 0.0
        """Their cost."""
        self.floor = 0.0
        """Seconds per unit the items cut by the deadline needed at least."""
        self._left: dict[int, float] = {}

    def rate(self) -> float | None:
        """Seconds per unit of cost, or None before anything was learnt."""
        measured = self.seconds / self.units if self.units else 0.0
        return max(measured, self.floor) or None

    def expected(self, item: Any) -> float | None:
        rate = self.rate()
        return None if rate is None else SAFETY * rate * max(self.cost(item), 1e-9)

    def exhausted(self) -> bool:
        """No time is left: nothing will start (an executor need not even set up)."""
        return self.budget.left() <= 0

    def take(self, pending: MutableSequence[Any], workers: int = 1) -> Any | None:
        left = self.budget.left()
        if not pending or left <= 0:
            return None
        order = sorted(range(len(pending)), key=lambda k: self.cost(pending[k]))  # stable: ties keep their order
        pick = order[0]  # while nothing is measured, or the deadline binds: the cheapest
        rate = self.rate()
        if rate is not None:
            largest = max(order, key=lambda k: self.cost(pending[k]))
            everything = SAFETY * rate * sum(max(self.cost(p), 1e-9) for p in pending) / max(workers, 1)
            if everything <= left and self.expected(pending[largest]) <= left:
                pick = largest
            expected = self.expected(pending[pick])
            if expected is not None and expected > left:
                return None
        item = pending[pick]
        del pending[pick]
        self._left[id(item)] = left
        return item

    def done(self, item: Any, record: dict[str, Any], seconds: float) -> None:
        left = self._left.pop(id(item), None)
        if record.get("status") != OK:
            return  # a failure says nothing about how long the item takes
        if self.provisional(record):
            if left is not None:
                self.floor = max(self.floor, left / max(self.cost(item), 1e-9))
            return
        self.seconds += seconds
        self.units += max(self.cost(item), 1e-9)
