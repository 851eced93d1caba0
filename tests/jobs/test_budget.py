"""The time budget in the job layer: durations, the plan that fits the most items, provisional records.

Time is virtual (`helpers.VirtualClock`): an item "takes" its cost in seconds, so every schedule is exact.
"""

from __future__ import annotations

import pytest

from helpers import VirtualClock  # tests/ is on sys.path under pytest
from testtime.jobs import (
    OK,
    Budget,
    Finished,
    LocalExecutor,
    Plan,
    RunDir,
    TimeUp,
    format_duration,
    parse_duration,
    run_items,
)
from testtime.jobs.budget import steps_in_time


@pytest.mark.parametrize("text,seconds", [("90m", 5400), ("11h30m", 41400), ("45s", 45), ("2h", 7200),
                                          ("1h0m30s", 3630), ("1.5h", 5400), (" 20m ", 1200), ("0h1s", 1)])
def test_durations_read_hours_minutes_and_seconds(text, seconds):
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds  # what the summary prints reads back


@pytest.mark.parametrize("text", ["90", "1d", "m", "", "90 m", "30m1h", "1h 30m", "-5m", "1.h", "5M", "0s", "0h0m",
                                  "1h1h", "inf", "nan"])
def test_anything_else_is_refused_with_the_forms_that_work(text):
    with pytest.raises(ValueError, match="90m") as err:
        parse_duration(text)
    assert repr(text) in str(err.value)


def test_the_budget_keeps_a_little_time_for_the_end_of_the_run():
    assert Budget.starting_now(100, started=0.0).deadline == 98.0  # 2%
    assert Budget.starting_now(12 * 3600, started=0.0).deadline == 12 * 3600 - 30  # at most 30 s


class Timed:
    """Items are (name, cost); running one takes `cost` virtual seconds, or, when that would pass the
    deadline, runs until it and returns the item's provisional record (as a task cut mid-way would)."""

    noun, id_key = "item", "item_id"

    def __init__(self, clock: VirtualClock, deadline: float | None = None) -> None:
        self.clock, self.deadline, self.ran = clock, deadline, []

    def item_id(self, item):
        return item[0]

    def cost(self, item):
        return item[1]

    def not_parallel(self):
        return None

    def accepts(self, item, record):
        return True

    def setup(self):
        return ""

    def run(self, item, emit):
        self.ran.append(item[0])
        if self.deadline is not None and self.clock.now + item[1] > self.deadline:
            self.clock.now = self.deadline
            return {"item_id": item[0], "status": OK, "provisional": True, "cut": True}
        self.clock.sleep(item[1])
        return {"item_id": item[0], "status": OK, "provisional": False}

    def failed(self, item, error, trace, seconds):
        return {"item_id": item[0]}


def provisional(record: dict) -> bool:
    return record.get("provisional") is True


ITEMS = [("e", 5.0), ("a", 1.0), ("c", 3.0), ("b", 2.0), ("h", 8.0)]


def run(clock, budget_seconds, items=ITEMS, run_dir=None, emit=lambda event: None):
    budget = Budget.starting_now(budget_seconds)
    job = Timed(clock, budget.deadline)
    records, counts = run_items(job, items, LocalExecutor(), run_dir, emit=emit, provisional=provisional,
                                budget=budget)
    return job, records, counts, budget


def test_while_the_deadline_binds_the_cheapest_items_run_and_the_rest_do_not_start(monkeypatch):
    clock = VirtualClock().install(monkeypatch)
    # 10 s, 9.8 s of them for items: a (1 s, the rate), then b (2.5 s expected with the 25% margin) and c
    # (3.75 s) fit; e would need 6.25 s with 3.8 s left: the most items that fit, and nothing runs over
    job, records, counts, budget = run(clock, 10)
    assert job.ran == ["a", "b", "c"] and counts.not_started == 2 and counts.ran == 3
    assert set(records) == {"a", "b", "c"}  # the others never had a record
    assert budget.used() == 6.0


def test_once_everything_left_fits_the_largest_go_first(monkeypatch):
    clock = VirtualClock().install(monkeypatch)
    job, _, counts, budget = run(clock, 100)
    assert job.ran == ["a", "h", "e", "c", "b"]  # the cheapest measures the rate, then the largest first
    assert counts.not_started == 0 and budget.used() == 19.0


def test_a_provisional_record_stays_the_result_until_its_item_runs_again(monkeypatch, tmp_path):
    clock = VirtualClock().install(monkeypatch)
    run_dir = RunDir(tmp_path / "run", records="items")
    run_dir.open("toy", {"power": 2})
    for name, _ in ITEMS:
        run_dir.save({"item_id": name, "status": OK, "provisional": True, "old": True}, "item_id")
    events = []
    job, records, counts, _ = run(clock, 10, run_dir=run_dir, emit=events.append)
    assert job.ran == ["a", "b", "c"] and counts.not_started == 2
    assert [records[n]["provisional"] for n in "ecbha"] == [True, False, False, True, False]
    assert records["e"]["old"] and records["h"]["old"]  # not run: their saved provisional records are the result
    assert [e.item_id for e in events if isinstance(e, Finished)] == ["a", "b", "c"]  # only what ran is announced
    assert run_dir.record("a", "item_id")["provisional"] is False  # the new record replaced the saved one

    again = Timed(clock)  # no budget: every provisional record's item runs again; a finished one is resumed
    records, counts = run_items(again, ITEMS, LocalExecutor(), run_dir, provisional=provisional)
    assert again.ran == ["e", "h"] and counts.resumed == 3 and counts.not_started == 0
    assert not any(provisional(r) for r in records.values())


def test_an_item_cut_by_the_deadline_keeps_its_provisional_record_and_teaches_the_plan(monkeypatch):
    clock = VirtualClock().install(monkeypatch)
    budget = Budget.starting_now(10.0)
    plan = Plan(budget, cost=lambda item: item[1], provisional=provisional)
    pending = [("x", 4.0), ("y", 2.0)]
    assert plan.take(pending) == ("y", 2.0) and plan.rate() is None  # nothing measured: the cheapest
    clock.sleep(4.0)  # cut after 4 s: its steps could not end in the 9.8 s it had when it started
    plan.done(("y", 2.0), {"status": OK, "provisional": True}, 4.0)
    assert plan.rate() == pytest.approx(9.8 / 2.0)  # so its 2 units need more than 9.8 s
    assert plan.take(pending) is None and pending == [("x", 4.0)]  # 4 units at >= 4.9 s do not fit in 5.8 s
    plan.done(("z", 1.0), {"status": "failed"}, 100.0)  # a failure says nothing about time
    assert plan.rate() == pytest.approx(4.9)


def test_training_stops_once_its_steps_cannot_end_by_the_deadline(monkeypatch):
    clock = VirtualClock().install(monkeypatch)
    seen = []

    class Info:
        def __init__(self, step):
            self.step, self.total_steps = step, 10

    def steps(deadline):
        on_step = steps_in_time(seen.append, deadline)
        for k in range(1, 11):
            clock.sleep(1.0)  # every step takes 1 s
            on_step(Info(k))

    steps(deadline=clock.now + 30)  # ten steps in 10 s: no stop
    assert len(seen) == 10
    seen.clear()
    with pytest.raises(TimeUp, match="training step 2 of 10: the 8 steps left") as up:
        steps(deadline=clock.now + 8.5)  # after step 2 (t=2), 8 more at step 2's pace (1 s) end at 10 > 8.5
    assert up.value.at.startswith("training step 2 of 10") and len(seen) == 2
    seen.clear()
    with pytest.raises(TimeUp, match=r"\(training step 1 of 10\)$"):
        steps(deadline=clock.now + 0.5)  # the first step ends past the deadline itself
    assert len(seen) == 1
    callback = seen.append  # a bound method is a new object at each attribute access
    assert steps_in_time(callback, None) is callback  # no deadline: the callback itself
