"""Item ids never choose a path: plain names are kept, everything else is hashed, never colliding; record files
are sealed in the envelope of `testtime.records`."""

from __future__ import annotations

import json
import logging

from hypothesis import given
from hypothesis import strategies as st

from testtime.jobs import RunDir, record_name
from testtime.records import SCHEMA


def test_plain_ids_are_their_own_file_names():
    assert record_name("007bbfb7") == "007bbfb7"
    assert record_name("a_b") == "a_b" and record_name("x-1.v2") == "x-1.v2"


def test_hostile_ids_get_safe_hashed_names():
    for hostile in ("../../x", "/abs/path/victim", "../config", "a/b", ".hidden", "", "con\x00fig", "[/]",
                    "config", "SUBMISSION", "é" * 300, "x" * 101):
        name = record_name(hostile)
        assert name.startswith("~") and "/" not in name and "\x00" not in name and len(name) <= 60, hostile


def test_a_b_and_a_slash_b_do_not_share_a_file():
    assert record_name("a_b") != record_name("a/b") != record_name("a\\b")


@given(st.lists(st.text(min_size=0, max_size=120), min_size=2, max_size=20, unique=True))
def test_different_ids_never_share_a_file_and_stay_inside(ids):
    names = [record_name(i) for i in ids]
    assert len(set(names)) == len(names)
    run = RunDir("/tmp/run", records="tasks")
    for i in ids:
        path = run.record_file(i)
        assert path.parent == run.records_dir and path.name not in ("", ".", "..")


def test_the_record_keeps_the_true_id(tmp_path):
    run = RunDir(tmp_path / "run", records="tasks")
    run.open("toy", {})
    run.save({"task_id": "../../evil", "status": "ok"}, "task_id")
    assert run.record("../../evil", "task_id") == {"task_id": "../../evil", "status": "ok"}  # out of its envelope
    assert [p.parent for p in tmp_path.rglob("*.json") if p.name != "config.json"] == [run.records_dir]


def test_record_files_are_sealed_and_read_back_by_their_schema(tmp_path, caplog):
    run = RunDir(tmp_path / "run", records="tasks")
    run.open("toy", {"power": 2})
    run.save({"task_id": "t1", "status": "ok"}, "task_id")
    assert json.loads(run.record_file("t1").read_text()) == {"schema": SCHEMA, "fingerprint": run.fingerprint,
                                                            "task_id": "t1", "status": "ok"}
    old = {"task_id": "t2", "status": "ok", "fingerprint": run.fingerprint}  # written before the envelope
    run.record_file("t2").write_text(json.dumps(old))
    newer = {"schema": SCHEMA + 1, "fingerprint": run.fingerprint, "task_id": "t3", "status": "ok"}
    run.record_file("t3").write_text(json.dumps(newer))
    assert run.record("t2", "task_id") == {"task_id": "t2", "status": "ok"}  # reused under its fingerprint
    with caplog.at_level(logging.WARNING):
        assert run.record("t3", "task_id") is None  # its item is run again
    assert f"{run.record_file('t3')} is not a record this run reads" in caplog.text and "newer testtime" in caplog.text
    assert sorted(run.finished("task_id")) == ["t1", "t2"]
    assert run.finished("task_id", lambda r: r["task_id"] if r["task_id"] != "t1" else int("no")) == {"t2": "t2"}


def old_named_run(path, settings):
    """A run directory as a testtime before a rename left it: config.json and one record under the old keys."""
    run = RunDir(path, records="tasks")
    run.open("toy", settings)
    run.save({"task_id": "t1", "status": "ok", "answer": 4}, "task_id")
    run.close()
    return run.fingerprint


def test_a_run_written_before_a_setting_was_renamed_resumes_under_the_new_name(tmp_path):
    from testtime.jobs import SettingsChanged

    old_fingerprint = old_named_run(tmp_path / "run", {"config": {"ttft": {"n": 2, "lam": 0.01}}})
    renamed = {"config.ttft.": "config.ttt."}
    with RunDir(tmp_path / "run", records="tasks") as plain:  # without the rename: other settings
        try:
            plain.open("toy", {"config": {"ttt": {"n": 2, "lam": 0.01}}})
            raise AssertionError("the old keys were not refused")
        except SettingsChanged as err:
            assert "config.ttft.n" in str(err) and "config.ttt.n" in str(err)
    with RunDir(tmp_path / "run", records="tasks", renamed=renamed) as changed:  # renamed, but n differs
        try:
            changed.open("toy", {"config": {"ttt": {"n": 3, "lam": 0.01}}}, flags={"config.ttt.n": "--steps"})
            raise AssertionError("a changed value was accepted")
        except SettingsChanged as err:
            assert "--steps" in str(err) and "config.ttft" not in str(err)
    assert json.loads(RunDir(tmp_path / "run", records="tasks").record_file("t1").read_text())["fingerprint"] \
        == old_fingerprint  # a refused run leaves the records alone

    with RunDir(tmp_path / "run", records="tasks", renamed=renamed) as run:
        run.open("toy", {"config": {"ttt": {"n": 2, "lam": 0.01}}})
        assert run.fingerprint != old_fingerprint
        assert run.record("t1", "task_id") == {"task_id": "t1", "status": "ok", "answer": 4}  # resumed, not redone
        assert json.loads(run.record_file("t1").read_text())["fingerprint"] == run.fingerprint
        assert json.loads(run.config_file.read_text())["settings"] == {"config.ttt.n": 2, "config.ttt.lam": 0.01}
