"""ARC data model and loaders: every bad input names file, task and field; every source loads."""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from testtime.arc.task import (
    Example,
    Task,
    TaskError,
    as_grid,
    dataset_names,
    grids_equal,
    load_solutions,
    load_task,
    load_tasks,
)


def good_task() -> dict[str, Any]:
    """A valid task: two demonstrations, one test input with its output."""
    return {
        "train": [
            {"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]},
            {"input": [[0]], "output": [[9]]},
        ],
        "test": [{"input": [[5, 6, 7]], "output": [[7, 6, 5]]}],
    }


def write(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


# --- bad input: every error names the file, the task id and the field ----------------------


def _set(part: str, i: int, key: str, value: Any) -> Callable[[dict], None]:
    def edit(task: dict) -> None:
        task[part][i][key] = value
    return edit


def _drop(*keys: str | int) -> Callable[[dict], None]:
    def edit(task: dict) -> None:
        target = task
        for k in keys[:-1]:
            target = target[k]
        del target[keys[-1]]
    return edit


BAD_CASES = {
    "ragged rows": (_set("train", 1, "output", [[1, 2], [3]]), "train[1].output", "ragged rows"),
    "negative value": (_set("train", 0, "input", [[1, -1]]), "train[0].input", "value -1 outside 0-9"),
    "value above 9": (_set("test", 0, "input", [[0], [12]]), "test[0].input", "row 1 column 0: value 12"),
    "float": (_set("train", 1, "output", [[1.5]]), "train[1].output", "1.5 is not an integer"),
    "whole float": (_set("train", 1, "output", [[3.0]]), "train[1].output", "3.0 is not an integer"),
    "string": (_set("train", 0, "output", [["3"]]), "train[0].output", "'3' is not an integer"),
    "bool": (_set("test", 0, "output", [[1, True]]), "test[0].output", "True is not an integer"),
    "no rows": (_set("train", 0, "input", []), "train[0].input", "empty grid"),
    "empty row": (_set("train", 0, "input", [[]]), "train[0].input", "empty grid"),
    "31 rows": (_set("train", 1, "input", [[0]] * 31), "train[1].input", "31 rows"),
    "31 columns": (_set("test", 0, "input", [[0] * 31]), "test[0].input", "31 columns"),
    "not a grid": (_set("train", 0, "input", 7), "train[0].input", "expected a list of rows"),
    "missing train": (_drop("train"), "train", "missing key 'train'"),
    "missing test": (_drop("test"), "test", "missing key 'test'"),
    "missing input": (_drop("train", 1, "input"), "train[1]", "missing key 'input'"),
    "missing train output": (_drop("train", 1, "output"), "train[1]", "missing key 'output'"),
    "null train output": (_set("train", 0, "output", None), "train[0]", "output is null"),
    "empty test list": (lambda t: t.update(test=[]), "test", "non-empty list"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_task_error_names_file_task_and_field(tmp_path: Path, case: str) -> None:
    edit, where, reason = BAD_CASES[case]
    data = good_task()
    edit(data)
    path = write(tmp_path / "abc123.json", data)
    with pytest.raises(TaskError) as info:
        load_task(path)
    err = info.value
    assert (err.file, err.task_id, err.field) == (str(path), "abc123", where)
    assert str(err).startswith(f"{path}: task 'abc123': {where}: ")
    assert reason in str(err)


def test_invalid_json_names_file_task_and_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"train": [\n  {"input": [[1]], }\n]}')
    with pytest.raises(TaskError) as info:
        load_task(path)
    assert info.value.file == str(path) and info.value.task_id == "broken"
    assert "invalid JSON at line 2 column" in str(info.value)


def test_missing_file_is_a_task_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(TaskError, match="nowhere.json"):
        load_task(path)


def test_test_outputs_may_be_absent_or_null(tmp_path: Path) -> None:
    data = good_task()
    data["test"] = [{"input": [[1]]}, {"input": [[2]], "output": None}, {"input": [[3]], "output": [[3]]}]
    task = load_task(write(tmp_path / "t.json", data))
    assert [ex.output is None for ex in task.test] == [True, True, False]
    assert not task.has_solutions
    assert load_task(write(tmp_path / "u.json", good_task())).has_solutions


# --- grids --------------------------------------------------------------------------------


def test_as_grid_returns_int8_with_the_right_shape() -> None:
    grid = as_grid([[1, 2, 3], [4, 5, 9]])
    assert grid.dtype == np.int8 and grid.shape == (2, 3)
    assert grid.tolist() == [[1, 2, 3], [4, 5, 9]]
    from_array = as_grid(np.array([[0], [7]], dtype=np.int64))
    assert from_array.dtype == np.int8 and from_array.shape == (2, 1)
    assert as_grid([[0] * 30] * 30).shape == (30, 30)


@pytest.mark.parametrize("data", [np.zeros((2, 2, 2), dtype=int), np.array([[1.5]]), [1, 2], "12", None])
def test_as_grid_rejects_non_grids_with_the_given_field(data: Any) -> None:
    with pytest.raises(TaskError) as info:
        as_grid(data, where="test[3].output")
    assert info.value.field == "test[3].output"


grid_lists = st.integers(1, 30).flatmap(
    lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w), min_size=1, max_size=30))


@given(grid_lists)
def test_as_grid_keeps_every_cell(rows: list[list[int]]) -> None:
    grid = as_grid(rows)
    assert grid.shape == (len(rows), len(rows[0])) and grid.tolist() == rows


def test_grids_equal() -> None:
    a = as_grid([[1, 2]])
    assert grids_equal(a, as_grid([[1, 2]]))
    assert not grids_equal(a, as_grid([[1], [2]]))
    assert not grids_equal(a, as_grid([[1, 3]]))
    assert not grids_equal(None, None) and not grids_equal(a, None)


def _example(out: bool) -> st.SearchStrategy[Example]:
    grids = grid_lists.map(as_grid)
    return st.builds(Example, grids, grids if out else st.none() | grids)


tasks = st.builds(Task, st.text("0123456789abcdef", min_size=1, max_size=8),
                  st.lists(_example(True), min_size=1, max_size=3).map(tuple),
                  st.lists(_example(False), min_size=1, max_size=2).map(tuple))


@given(tasks)
def test_to_json_from_json_round_trip(task: Task) -> None:
    data = json.loads(json.dumps(task.to_json()))  # through real JSON text
    back = Task.from_json(data, task_id=task.id)
    assert back.id == task.id and len(back.train) == len(task.train) and len(back.test) == len(task.test)
    for mine, theirs in zip(task.train + task.test, back.train + back.test):
        assert grids_equal(mine.input, theirs.input)
        assert (mine.output is None and theirs.output is None) or grids_equal(mine.output, theirs.output)
    for ex, pair in zip(task.test, data["test"]):
        assert ("output" in pair) == (ex.output is not None)


# --- sources ------------------------------------------------------------------------------


def test_directory_loads_the_good_files_and_reports_the_bad(tmp_path: Path, caplog) -> None:
    write(tmp_path / "b2.json", good_task())
    write(tmp_path / "a1.json", good_task())
    bad = good_task()
    bad["train"][1]["output"] = [[1, 2], [3]]
    write(tmp_path / "c3.json", bad)
    (tmp_path / "d4.json").write_text("{not json")
    (tmp_path / "notes.txt").write_text("not a task")
    with caplog.at_level(logging.DEBUG, logger="testtime.arc.task"):
        loaded = load_tasks(tmp_path)
    assert [t.id for t in loaded.tasks] == ["a1", "b2"]
    assert [(Path(e.file).name, e.field) for e in loaded.errors] == [("c3.json", "train[1].output"), ("d4.json", None)]
    assert "task 'c3'" in str(loaded.errors[0]) and "invalid JSON" in str(loaded.errors[1])
    # logged once, at debug level only: the caller prints the errors (a CLI printed them twice before)
    assert [r.levelno for r in caplog.records if "c3.json" in r.getMessage()] == [logging.DEBUG]


def test_duplicate_ids_in_a_directory_keep_the_first(tmp_path: Path) -> None:
    first = good_task()
    second = good_task()
    second["train"] = second["train"][:1]
    write(tmp_path / "a_many.json", {"t1": first, "t2": first})
    write(tmp_path / "t1.json", second)
    loaded = load_tasks(tmp_path)
    assert [t.id for t in loaded.tasks] == ["t1", "t2"]
    assert len(loaded.tasks[0].train) == 2  # from a_many.json, the first file
    [err] = loaded.errors
    assert err.task_id == "t1" and Path(err.file).name == "t1.json" and "duplicate" in str(err)


def test_multi_task_file_sorts_and_collects_errors(tmp_path: Path) -> None:
    bad = good_task()
    del bad["test"][0]["input"]
    path = write(tmp_path / "many.json", {"zz": good_task(), "aa": good_task(), "mm": bad})
    loaded = load_tasks(path)
    assert [t.id for t in loaded.tasks] == ["aa", "zz"]
    [err] = loaded.errors
    assert (err.file, err.task_id, err.field) == (str(path), "mm", "test[0]")


def test_single_task_file(tmp_path: Path) -> None:
    loaded = load_tasks(write(tmp_path / "solo.json", good_task()))
    assert [t.id for t in loaded.tasks] == ["solo"] and loaded.errors == []


def test_unknown_source_lists_the_data_sets(tmp_path: Path) -> None:
    with pytest.raises(TaskError) as info:
        load_tasks(tmp_path / "missing")
    assert all(name in str(info.value) for name in dataset_names())


def _kaggle_pair(tmp_path: Path, *, solutions: bool = True) -> tuple[Path, dict]:
    one = good_task()
    two = good_task()
    two["test"].append({"input": [[8, 8]], "output": [[1, 1]]})
    answers = {"t1": [t["output"] for t in one["test"]], "t2": [t["output"] for t in two["test"]]}
    for task in (one, two):
        for pair in task["test"]:
            del pair["output"]  # Kaggle challenges hide the answers
    path = write(tmp_path / "arc-agi_evaluation_challenges.json", {"t2": two, "t1": one})
    if solutions:
        write(tmp_path / "arc-agi_evaluation_solutions.json", answers)
    return path, answers


def test_kaggle_solutions_fill_the_test_outputs(tmp_path: Path) -> None:
    path, answers = _kaggle_pair(tmp_path)
    for source in (path, tmp_path):  # the file, or the directory holding the pair
        loaded = load_tasks(source)
        assert [t.id for t in loaded.tasks] == ["t1", "t2"] and loaded.errors == []
        for task in loaded.tasks:
            assert task.has_solutions
            assert [ex.output.tolist() for ex in task.test] == answers[task.id]
    solutions = load_solutions(tmp_path / "arc-agi_evaluation_solutions.json")
    assert {k: [g.tolist() for g in v] for k, v in solutions.items()} == answers
    assert all(g.dtype == np.int8 for grids in solutions.values() for g in grids)


def test_kaggle_without_solutions_leaves_outputs_unknown(tmp_path: Path) -> None:
    path, _ = _kaggle_pair(tmp_path, solutions=False)
    loaded = load_tasks(path)
    assert len(loaded.tasks) == 2 and loaded.errors == []
    assert all(not t.has_solutions and all(ex.output is None for ex in t.test) for t in loaded.tasks)


@pytest.mark.parametrize(("entry", "field", "reason"), [
    ([[[1, 1]], [[1, 10]]], "solutions[1]", "value 10 outside 0-9"),
    ([[[1, 1]]], "solutions", "1 output grids for 2 test inputs"),
    (None, "solutions", "no entry"),
])
def test_a_bad_kaggle_solution_leaves_that_task_unscored_not_dropped(tmp_path: Path, entry: Any, field: str,
                                                                      reason: str) -> None:
    path, answers = _kaggle_pair(tmp_path)
    answers = copy.deepcopy(answers)
    if entry is None:
        del answers["t2"]
    else:
        answers["t2"] = entry
    solutions = write(tmp_path / "arc-agi_evaluation_solutions.json", answers)
    loaded = load_tasks(path)
    # a challenge must still be solved and submitted: it stays, without outputs, and is reported unscored
    assert [t.id for t in loaded.tasks] == ["t1", "t2"] and not loaded.errors
    assert loaded.tasks[0].has_solutions and not loaded.tasks[1].has_solutions
    [err] = loaded.unscored
    assert (err.file, err.task_id, err.field) == (str(solutions), "t2", field)
    assert reason in str(err) and "solved but not scored" in str(err)
    if field == "solutions[1]":  # load_solutions alone checks the grids, not their count
        with pytest.raises(TaskError, match=re.escape("task 't2': solutions[1]: row 0 column 1")):
            load_solutions(solutions)


def test_directory_with_two_challenges_files_asks_for_one(tmp_path: Path) -> None:
    _kaggle_pair(tmp_path)
    write(tmp_path / "arc-agi_training_challenges.json", {"t9": good_task()})
    with pytest.raises(TaskError, match="pass the one to load"):
        load_tasks(tmp_path)


DATASET_SIZES = {
    "arc-agi-1/training": 400, "arc-agi-1/evaluation": 400,
    "arc-agi-2/training": 1000, "arc-agi-2/evaluation": 120,
    "kaggle-2024/training": 400, "kaggle-2024/evaluation": 400,
    "kaggle-2025/training": 1000, "kaggle-2025/evaluation": 120,
}


def test_dataset_names() -> None:
    assert dataset_names() == list(DATASET_SIZES)


@pytest.mark.parametrize("name", list(DATASET_SIZES))
def test_every_dataset_loads(name: str) -> None:
    loaded = load_tasks(name)
    assert loaded.name == name and loaded.errors == []
    assert len(loaded.tasks) == DATASET_SIZES[name]
    ids = [t.id for t in loaded.tasks]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(t.has_solutions for t in loaded.tasks)
    if name == "arc-agi-1/training":
        assert ids[0] == "007bbfb7"
