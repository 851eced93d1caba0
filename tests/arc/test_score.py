"""Kaggle submissions and the official score, checked against scores computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.arc.score import (
    Score,
    build_submission,
    fraction_correct,
    load_submission,
    score_submission,
    submission_entry,
    write_submission,
)
from testtime.arc.task import TaskError
from testtime.arc.vote import Candidate, pick_attempts, vote

G1 = [[1, 2], [3, 4]]
G2 = [[5]]
G3 = [[0, 7, 7]]
G4 = [[8], [8]]
WRONG = [[9, 9], [9, 9]]


def arr(g) -> np.ndarray:
    return np.array(g, dtype=np.int8)


def entry(a1, a2=None) -> dict:
    return {"attempt_1": a1, "attempt_2": a2 if a2 is not None else [[0]]}


# ---- building, writing, reading -------------------------------------------------------------

def test_submission_entry_fills_missing_attempts_with_placeholders():
    assert submission_entry([arr(G1), arr(G2)]) == {"attempt_1": G1, "attempt_2": G2}
    assert submission_entry([arr(G1)]) == {"attempt_1": G1, "attempt_2": [[0]]}
    assert submission_entry([None, arr(G2)]) == {"attempt_1": [[0]], "attempt_2": G2}
    assert submission_entry([]) == {"attempt_1": [[0]], "attempt_2": [[0]]}
    e = submission_entry([arr(G1)])
    assert type(e["attempt_1"][0][0]) is int  # plain ints: json.dump must not see numpy scalars
    with pytest.raises(ValueError, match="at most 2"):
        submission_entry([arr(G1)] * 3)
    with pytest.raises(TaskError, match="attempt_1"):
        submission_entry([np.array([[12]])])


def test_build_submission_covers_every_task_and_test_input_in_order():
    attempts = {"a": [[arr(G1), arr(G2)]], "b": [[arr(G3)]]}  # b has 3 test inputs, only the first predicted
    sub = build_submission(attempts, {"a": 1, "b": 3, "c": 2})
    assert list(sub) == ["a", "b", "c"]
    assert sub["a"] == [{"attempt_1": G1, "attempt_2": G2}]
    assert sub["b"] == [entry(G3), entry([[0]]), entry([[0]])]
    assert sub["c"] == [entry([[0]]), entry([[0]])]  # task never predicted
    with pytest.raises(ValueError, match="zzz"):
        build_submission({"zzz": [[]]}, {"a": 1})
    with pytest.raises(ValueError, match="'a'"):
        build_submission({"a": [[], []]}, {"a": 1})


def test_write_and_load_round_trip(tmp_path):
    sub = build_submission({"a": [[arr(G1), arr(G2)], [None]]}, {"a": 2, "b": 1})
    path = tmp_path / "out" / "submission.json"
    write_submission(path, sub)
    assert load_submission(path) == sub
    assert json.loads(path.read_text()) == sub
    # overwrite in place; the temporary file is gone
    write_submission(path, {"a": [entry(G4)]})
    assert load_submission(path) == {"a": [entry(G4)]}
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "submission.json"
    write_submission(path, {"a": [entry(G1)]})
    with pytest.raises(TypeError, match="Object of type object is not JSON serializable"):
        write_submission(path, {"a": [{"attempt_1": object()}]})
    assert load_submission(path) == {"a": [entry(G1)]}
    assert [p.name for p in tmp_path.iterdir()] == ["submission.json"]


@pytest.mark.parametrize("data, message", [
    ({"t1": [{"attempt_1": G1}]}, "t1'.*\\[0\\].*attempt_2"),
    ({"t1": [entry(G1), entry([[1, 2], [3]])]}, "t1'.*\\[1\\].attempt_1.*ragged"),
    ({"t1": [entry(G1, [[10]])]}, "t1'.*\\[0\\].attempt_2.*outside 0-9"),
    ({"t1": []}, "t1'.*non-empty"),
    ({"t1": ["x"]}, "t1'.*\\[0\\]"),
    ([entry(G1)], "object of task ids"),
])
def test_load_submission_errors_name_file_task_and_field(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TaskError, match=message) as info:
        load_submission(path)
    assert str(path) in str(info.value)


def test_load_submission_rejects_broken_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"a": [')
    with pytest.raises(TaskError, match="broken.json: cannot read"):
        load_submission(path)
    with pytest.raises(TaskError, match="missing.json"):
        load_submission(tmp_path / "missing.json")


# ---- the official score ---------------------------------------------------------------------

SOLUTIONS = {"a": [G1], "b": [G2, G3], "c": [G4]}


def test_official_score_by_hand():
    sub = {
        "a": [entry(WRONG, G1)],                # attempt_2 right -> 1
        "b": [entry(G2, WRONG), entry(WRONG)],  # one of two outputs -> 0.5
        # c missing -> 0
        "d": [entry(G1)],                       # not in the solutions: ignored
    }
    s = score_submission(sub, SOLUTIONS)
    assert isinstance(s, Score)
    assert s.score == pytest.approx((1 + 0.5 + 0) / 3)
    assert s.per_task == {"a": 1.0, "b": 0.5, "c": 0.0}
    assert (s.n_tasks, s.outputs_solved, s.outputs_total) == (3, 2, 4)
    assert s.missing == ["c"] and s.extra == 1


def test_wrong_shape_is_wrong_even_with_matching_cells():
    solutions = {"a": [[[1, 1]]]}
    assert score_submission({"a": [entry([[1], [1]])]}, solutions).score == 0.0
    assert score_submission({"a": [entry([[1, 1], [1, 1]])]}, solutions).score == 0.0
    assert score_submission({"a": [entry([[1, 1]])]}, solutions).score == 1.0


def test_placeholders_and_short_or_invalid_entries_score_zero():
    sub = build_submission({"b": [[arr(G2)]]}, {"a": 1, "b": 2})
    s = score_submission(sub, {"a": [G1], "b": [G2, G3]})
    assert s.per_task == {"a": 0.0, "b": 0.5}
    assert s.missing == []  # placeholders are present, just wrong
    # an entry list shorter than the outputs, and attempts that are not grids, are simply wrong
    s = score_submission({"b": [{"attempt_1": "junk", "attempt_2": [[]]}]}, {"b": [G2, G3]})
    assert s.per_task == {"b": 0.0} and s.outputs_solved == 0
    # the rule is exact equality, so a [[0]] placeholder does match a [[0]] answer
    assert score_submission(build_submission({}, {"z": 1}), {"z": [[[0]]]}).score == 1.0


def test_solutions_as_arrays_or_lists_score_the_same():
    sub = {"a": [entry(G1)], "b": [entry(G2), entry(G3)], "c": [entry(WRONG)]}
    as_arrays = {k: [arr(g) for g in v] for k, v in SOLUTIONS.items()}
    assert score_submission(sub, as_arrays) == score_submission(sub, SOLUTIONS)
    assert score_submission(sub, SOLUTIONS).score == pytest.approx(2 / 3)


def test_bad_solutions_raise_and_empty_solutions_score_zero():
    with pytest.raises(TaskError, match="task 'a'.*test\\[0\\].output"):
        score_submission({}, {"a": [[[11]]]})
    with pytest.raises(TaskError, match="no test outputs"):
        score_submission({}, {"a": []})
    assert score_submission({"a": [entry(G1)]}, {}) == Score(0.0, 0, {}, 0, 0, [], 1)


def test_fraction_correct_pass_at_1_and_oracle():
    candidates = {"a": [[arr(WRONG), arr(G2), arr(G1)]], "b": [[arr(G2)], [arr(WRONG), None]]}
    pass_at_1 = {t: [guesses[:1] for guesses in per_test] for t, per_test in candidates.items()}
    # pass@1: a 0, b 0.5, c missing 0 -> 0.5 / 3 ; oracle: a 1, b 0.5, c 0 -> 1.5 / 3
    assert fraction_correct(pass_at_1, SOLUTIONS) == pytest.approx(0.5 / 3)
    assert fraction_correct(candidates, SOLUTIONS) == pytest.approx(1.5 / 3)
    assert fraction_correct({}, SOLUTIONS) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3), min_size=1, max_size=4), st.integers(0, 2**31))
def test_submitting_the_solutions_scores_one(test_counts, seed):
    rng = np.random.default_rng(seed)
    solutions = {f"t{i}": [rng.integers(0, 10, size=rng.integers(1, 4, size=2)).astype(np.int8) for _ in range(n)]
                 for i, n in enumerate(test_counts)}
    # the right answer as attempt_2 behind a wrong attempt_1
    attempts = {t: [[(g + 1) % 10, g] for g in grids] for t, grids in solutions.items()}
    sub = build_submission(attempts, {t: len(g) for t, g in solutions.items()})
    s = score_submission(sub, solutions)
    assert s.score == 1.0 and s.outputs_solved == s.outputs_total == sum(test_counts)
    # dropping one task costs exactly its share
    first = next(iter(solutions))
    del sub[first]
    assert score_submission(sub, solutions).score == pytest.approx(1 - 1 / len(solutions))


def test_vote_to_submission_to_score():
    # G2 is kept by two groups, WRONG by one (the identity's): groups decide first
    cands = [Candidate(arr(G2), f"{g}+c{i}", g, -1.0) for i, g in enumerate(("rot90", "flip_h", "rot90"))]
    cands += [Candidate(arr(WRONG), "identity", "identity", -0.5)]
    attempts = pick_attempts(vote(cands))
    sub = build_submission({"b": [attempts]}, {"b": 2})
    assert sub["b"][0] == {"attempt_1": G2, "attempt_2": WRONG}
    assert score_submission(sub, SOLUTIONS).per_task["b"] == 0.5
