"""The job layer on a toy job (no model): resume, one failure policy, settings refused, events."""

from __future__ import annotations

import json
import os

import pytest

from testtime.jobs import (
    FAILED,
    OK,
    Finished,
    LocalExecutor,
    Notice,
    RunDir,
    SettingsChanged,
    SetupError,
    Started,
    Status,
    run_items,
)
from testtime.records import unseal


class Squares:
    """Items are ints; the record holds the square; items in `bad` raise."""

    noun, id_key = "number", "n_id"

    def __init__(self, bad=(), setup_error=None):
        self.bad, self.setup_error = set(bad), setup_error
        self.ran, self.setups = [], 0

    def item_id(self, n):
        return f"n{n}"

    def cost(self, n):
        return n

    def not_parallel(self):
        return None

    def accepts(self, item, record):
        return True

    def setup(self):
        self.setups += 1
        if self.setup_error:
            raise self.setup_error
        return "toy ready"

    def run(self, n, emit):
        self.ran.append(n)
        if n in self.bad:
            raise TypeError(f"cannot square {n}")  # not a ValueError/RuntimeError: every exception is caught
        return {"n_id": f"n{n}", "status": OK, "square": n * n}

    def failed(self, n, error, trace, seconds):
        return {"n_id": f"n{n}", "partial": True}


def opened(tmp_path, **settings) -> RunDir:
    run_dir = RunDir(tmp_path / "run", records="items")
    run_dir.open("toy", {"power": 2, **settings}, {"power": 2})
    return run_dir


def test_records_come_back_in_item_order_and_resume_skips_them(tmp_path):
    job, events = Squares(), []
    records, counts = run_items(job, [3, 1, 2], LocalExecutor(), opened(tmp_path), emit=events.append)
    assert list(records) == ["n3", "n1", "n2"] and records["n2"]["square"] == 4
    assert (counts.total, counts.ran, counts.resumed, counts.failed) == (3, 3, 0, 0)
    assert [e.item_id for e in events if isinstance(e, Started)] == ["n3", "n1", "n2"]
    assert [type(e).__name__ for e in events][:3] == ["Notice", "Status", "Started"]
    assert isinstance(events[-1], Status) and events[-1].done == 3 and events[-1].running == 0

    again, events = Squares(), []
    records2, counts2 = run_items(again, [1, 2, 3, 4], LocalExecutor(), opened(tmp_path), emit=events.append)
    assert again.ran == [4] and again.setups == 1  # only the new item ran
    assert (counts2.resumed, counts2.ran) == (3, 1) and records2["n1"] == records["n1"]
    assert [e.item_id for e in events if isinstance(e, Finished) and e.resumed] == ["n1", "n2", "n3"]


def test_a_fully_resumed_run_sets_nothing_up(tmp_path):
    run_items(Squares(), [1], LocalExecutor(), opened(tmp_path))
    job = Squares(setup_error=OSError("no model here"))
    records, counts = run_items(job, [1], LocalExecutor(), opened(tmp_path))
    assert job.setups == 0 and counts.resumed == 1


def test_a_failed_item_is_recorded_skipped_on_rerun_and_retried_on_request(tmp_path):
    job = Squares(bad={2})
    records, counts = run_items(job, [1, 2, 3], LocalExecutor(), opened(tmp_path))
    failed = records["n2"]
    assert failed["status"] == FAILED and failed["error"] == "TypeError: cannot square 2"
    assert "Traceback" in failed["traceback"] and "cannot square 2" in failed["traceback"]
    assert failed["partial"] and counts.failed == 1 and counts.failed_ids == ["n2"]
    saved = json.loads((tmp_path / "run" / "items" / "n2.json").read_text())
    assert unseal(saved).record == failed  # saved like any record, in the envelope

    rerun = Squares()
    _, counts = run_items(rerun, [1, 2, 3], LocalExecutor(), opened(tmp_path))
    assert rerun.ran == [] and counts.failed == 1  # skipped, still counted as failed

    retry = Squares()
    records, counts = run_items(retry, [1, 2, 3], LocalExecutor(), opened(tmp_path), retry_failed=True)
    assert retry.ran == [2] and records["n2"]["square"] == 4 and counts.failed == 0


def test_setup_failure_is_one_error_and_writes_no_record(tmp_path):
    run_dir = opened(tmp_path)
    with pytest.raises(SetupError, match="no model here"):
        run_items(Squares(setup_error=OSError("no model here")), [1, 2], LocalExecutor(), run_dir)
    assert list(run_dir.records_dir.iterdir()) == []


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError, match="duplicate number ids: 'n1'"):
        run_items(Squares(), [1, 1], LocalExecutor())


def test_changed_settings_are_refused_naming_each_and_restart_clears(tmp_path):
    run_items(Squares(), [1], LocalExecutor(), opened(tmp_path))
    run_dir = RunDir(tmp_path / "run", records="items")
    with pytest.raises(SettingsChanged) as err:
        run_dir.open("toy", {"power": 3, "mod": {"base": 7}}, flags={"power": "--power"})
    message = str(err.value)
    assert "--power: 2 -> 3" in message and "mod.base: (unset) -> 7" in message
    assert "--out NEW_DIR" in message and "--restart" in message
    assert sorted(c[0] for c in err.value.changes) == ["--power", "mod.base"]
    with pytest.raises(SettingsChanged, match=r"extra: \(unset\) -> 1"):  # a setting the run lacked is a change too
        RunDir(tmp_path / "run", records="items").open("toy", {"power": 2, "extra": 1})
    run_dir.open("toy", {"power": 3}, restart=True)
    assert list(run_dir.records_dir.iterdir()) == []
    config = json.loads(run_dir.config_file.read_text())
    assert config["command"] == "toy" and config["settings"] == {"power": 3}


def test_identical_settings_rerun_quietly_even_with_tuples(tmp_path, caplog):
    RunDir(tmp_path / "r").open("toy", {"targets": ("q", "v"), "nested": {"a": 1}})
    RunDir(tmp_path / "r").open("toy", {"targets": ["q", "v"], "nested": {"a": 1}})  # as read back: no change
    assert not caplog.records


def test_another_command_or_a_damaged_config_is_refused(tmp_path):
    RunDir(tmp_path / "r").open("toy", {"a": 1})
    with pytest.raises(ValueError, match="another command"):
        RunDir(tmp_path / "r").open("other", {"a": 1})
    (tmp_path / "r" / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match="not readable JSON.*--restart"):
        RunDir(tmp_path / "r").open("toy", {"a": 1})
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        RunDir(tmp_path / "file").open("toy", {})


def test_a_record_that_is_not_this_items_is_redone(tmp_path, caplog):
    run_dir = opened(tmp_path)
    run_items(Squares(), [1, 2], LocalExecutor(), run_dir)
    (run_dir.records_dir / "n1.json").write_text('{"n_id": "n9", "status": "ok"}')
    (run_dir.records_dir / "n2.json").write_text('{"n_id": "n2"')
    job = Squares()
    run_items(job, [1, 2], LocalExecutor(), run_dir)
    assert sorted(job.ran) == [1, 2]
    assert "not a record of n1" in caplog.text and "does not parse" in caplog.text


def test_an_injected_fault_fails_its_item_inside_the_failure_policy(tmp_path):
    from faults import faults, injected

    execute, job = LocalExecutor.execute, Squares()
    with injected(faults(raise_on=["n2"])):
        records, counts = run_items(job, [1, 2], LocalExecutor(), opened(tmp_path))
    assert records["n1"]["square"] == 1 and job.ran == [1]  # the fault fires before the job's own run
    assert records["n2"]["status"] == FAILED and "fault injected on n2" in records["n2"]["error"]
    assert records["n2"]["partial"]  # the job's own failed record: all but `run` is the job's
    assert counts.failed_ids == ["n2"]
    assert LocalExecutor.execute is execute  # patched only while the block runs


def test_events_announce_setup(tmp_path):
    events = []
    run_items(Squares(), [5], LocalExecutor(), emit=events.append)
    assert Notice("toy ready") in events
    assert not os.listdir(tmp_path)  # no run directory: nothing written
