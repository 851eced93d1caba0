"""Item ids never choose a path: plain names are kept, everything else is hashed, never colliding."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from testtime.jobs import RunDir, record_name


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
    assert run.record("../../evil", "task_id") == {"task_id": "../../evil", "status": "ok",
                                                   "fingerprint": run.fingerprint}
    assert [p.parent for p in tmp_path.rglob("*.json") if p.name != "config.json"] == [run.records_dir]
