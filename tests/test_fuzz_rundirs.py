"""Fuzzing run directories: random damage to records, config.json and tasks/, then a rerun.

Whatever was done to a finished `arc solve --out` directory (records deleted, truncated, given
wrong types or another run's fingerprint, linked to a file elsewhere; config.json deleted,
truncated, changed or made a folder; tasks/ deleted, made a file, a symlink elsewhere or
read-only), the same command run again (or with --restart) ends with exit 0, 1 or 2 and no
traceback, never reuses a record made under other settings, and writes or deletes nothing
outside --out (the model conversion cache is elsewhere: TESTTIME_CACHE, set by conftest).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from fuzzing import changed_outside, fresh_dir, json_values, run_cli, snapshot  # tests/ is on sys.path

TASKS = ("t0", "t1")
PLANTED = 4242.0
"""`seconds` of a record planted with another run's fingerprint: it must never survive a rerun."""

RECORD_DAMAGE = ["delete", "truncate", "wrong type", "junk", "other settings", "link outside"]
CONFIG_DAMAGE = ["delete", "truncate", "wrong type", "other seed", "folder"]
FOLDER_DAMAGE = ["delete", "file", "link outside", "read-only"]
damages = st.lists(st.one_of(
    st.tuples(st.just("record"), st.sampled_from(RECORD_DAMAGE), st.sampled_from(TASKS), json_values,
              st.sampled_from(["seconds", "ttt", "tests", "status", "task_id", "fingerprint", "predict", "fits"])),
    st.tuples(st.just("config"), st.sampled_from(CONFIG_DAMAGE)),
    st.tuples(st.just("tasks"), st.sampled_from(FOLDER_DAMAGE))), min_size=1, max_size=3)


@pytest.fixture(scope="module")
def source_and_run(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("fuzz-rundir")
    for i, task_id in enumerate(TASKS):
        grid = [[(r + c + i) % 10 for c in range(2)] for r in range(2)]
        (root / f"{task_id}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                                          "test": [{"input": grid, "output": grid}]}))
    run = root / "finished"
    run_cli(*solve_args(root, tiny_model_dir, run))
    return root, run


def solve_args(source: Path, model: Path, out: Path) -> list[str]:
    return ["arc", "solve", str(source), "--model", str(model), "--no-ttt", "--max-new-tokens", "2", "--out", str(out)]


def damage(out: Path, outside: Path, what: tuple) -> None:
    tasks, config = out / "tasks", out / "config.json"
    kind, how = what[0], what[1]
    if kind == "record":
        task_id, value, key = what[2], what[3], what[4]
        path = tasks / f"{task_id}.json"
        if not tasks.is_dir() or not path.is_file():
            return
        try:  # an earlier damage may have left it unparsable or not an object
            record = json.loads(path.read_text())
        except ValueError:
            record = {}
        record = record if isinstance(record, dict) else {}
        if how == "delete":
            path.unlink()
        elif how == "truncate":
            path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        elif how == "wrong type":
            path.write_text(json.dumps({**record, key: value}))
        elif how == "junk":
            path.write_text(json.dumps(value))
        elif how == "other settings":
            path.write_text(json.dumps({**record, "fingerprint": "0123456789abcdef", "seconds": PLANTED}))
        elif how == "link outside":
            target = outside / f"{task_id}-elsewhere.json"
            target.write_text(json.dumps({**record, "fingerprint": "fedcba9876543210", "seconds": PLANTED}))
            path.unlink()
            path.symlink_to(target)
    elif kind == "config":
        if how == "delete":
            shutil.rmtree(config) if config.is_dir() else config.unlink(missing_ok=True)
        elif how == "truncate" and config.is_file():
            config.write_bytes(config.read_bytes()[:40])
        elif how == "wrong type" and not config.is_dir():
            config.write_text(json.dumps({"command": "arc solve", "settings": ["x"], "options": 3}))
        elif how == "other seed" and config.is_file():
            data = json.loads(config.read_text() or "null")
            if isinstance(data, dict) and isinstance(data.get("settings"), dict):
                data["settings"]["config.seed"] = 9
                config.write_text(json.dumps(data))
        elif how == "folder" and not config.is_dir():
            config.unlink(missing_ok=True)
            config.mkdir()
    else:
        if how == "delete" and tasks.is_dir() and not tasks.is_symlink():
            shutil.rmtree(tasks)
        elif how == "file" and tasks.is_dir() and not tasks.is_symlink():
            shutil.rmtree(tasks)
            tasks.write_text("not a folder")
        elif how == "link outside" and tasks.is_dir() and not tasks.is_symlink():
            moved = outside / "tasks-elsewhere"
            shutil.rmtree(moved, ignore_errors=True)
            shutil.move(tasks, moved)
            tasks.symlink_to(moved, target_is_directory=True)
        elif how == "read-only" and tasks.is_dir():
            tasks.chmod(0o555)  # (no effect when the suite runs as root)


@pytest.mark.slow
@settings(max_examples=30, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(what=damages, restart=st.booleans())
@example(what=[("record", "truncate", "t1", None, "seconds"), ("record", "delete", "t1", None, "seconds")],
         restart=False)  # damage on damage: a record truncated, then damaged again
@example(what=[("record", "other settings", "t0", None, "seconds"), ("record", "link outside", "t1", None, "ttt")],
         restart=False)  # records of other settings, one of them outside --out: never reused, never written
def test_fuzz_damaged_run_directories_rerun_cleanly(tmp_path_factory, tiny_model_dir, source_and_run, what, restart):
    source, finished = source_and_run
    work = fresh_dir(tmp_path_factory)
    out, outside = work / "out", work / "outside"
    try:
        shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".lock", "report.html"))
        outside.mkdir()
        for one in what:
            damage(out, outside, one)
        before = snapshot(work)
        result = run_cli(*solve_args(source, tiny_model_dir, out), *(["--restart"] if restart else []))
        event(f"exit {result.exit_code}{' (restart)' if restart else ''}")
        assert changed_outside(before, snapshot(work), out) == []
        if result.exit_code != 0:
            return
        config = json.loads((out / "config.json").read_text())
        assert config["settings"]["config.seed"] == 0
        for task_id in TASKS:
            record = json.loads((out / "tasks" / f"{task_id}.json").read_text())
            assert record["fingerprint"] == config["fingerprint"] and record["seconds"] != PLANTED
        assert sorted(json.loads((out / "submission.json").read_text())) == list(TASKS)
    finally:
        for path in (out / "tasks", outside / "tasks-elsewhere"):
            if path.is_dir() and not path.is_symlink():
                os.chmod(path, 0o755)
        shutil.rmtree(work, ignore_errors=True)
