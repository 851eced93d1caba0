"""Hierarchical voting: hand-built candidate sets whose winners follow from the written rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.arc.vote import Candidate, Ranked, grid_key, pick_attempts, valid, vote, vote_flat

W, X, Y, Z, Q = [[6]], [[5]], [[4]], [[3]], [[1]]


def cand(grid, group: str, logprob: float = -1.0, transform: str | None = None) -> Candidate:
    g = None if grid is None else np.array(grid, dtype=np.int8)
    return Candidate(g, transform or f"{group}+c", group, logprob)


def many(grid, group: str, n: int, logprob: float = -1.0) -> list[Candidate]:
    return [cand(grid, group, logprob, transform=f"{group}+p{i}") for i in range(n)]


def grids(ranked: list[Ranked]) -> list[list[list[int]]]:
    return [r.grid.tolist() for r in ranked]


def by_grid(ranked: list[Ranked], grid) -> Ranked:
    return next(r for r in ranked if r.grid.tolist() == grid)


def test_plain_majority_wins_and_counts_are_reported():
    cands = many(W, "identity", 2) + many(W, "rot90", 1) + many(X, "rot90", 1)
    ranked = vote(cands)
    assert grids(ranked) == [W, X]
    assert (ranked[0].votes, ranked[0].groups) == (3, 2)
    assert (ranked[1].votes, ranked[1].groups) == (1, 1)
    assert ranked[0].transforms == sorted(c.transform for c in cands[:3])


def test_more_votes_in_one_group_beat_fewer_votes_spread_over_three():
    # A: 1 vote in each of 3 groups (3 votes); B: 4 votes in one group -> votes come first
    A, B = [[1, 1]], [[2, 2]]
    cands = [cand(A, g, logprob=0.0) for g in ("identity", "rot90", "flip_h")] + many(B, "identity", 4, -9.0)
    ranked = vote(cands)
    assert grids(ranked) == [B, A]
    assert (ranked[1].votes, ranked[1].groups) == (3, 3)


def test_equal_votes_more_groups_win_before_logprob():
    # A: 2 + 2 votes in two groups; B: 4 votes in one group and a far better logprob
    A, B = [[1]], [[2]]
    cands = many(A, "identity", 2, -5.0) + many(A, "rot90", 2, -5.0) + many(B, "flip_v", 4, -0.1)
    ranked = vote(cands)
    assert grids(ranked) == [A, B]
    assert [(r.votes, r.groups) for r in ranked] == [(4, 2), (4, 1)]


def test_top_per_group_cut_only_kept_votes_count():
    # identity: W x6, X x5, Y x4, Z x3, Q x1 -> keeps W, X, Y; rot90: Z x1 -> keeps Z
    cands = (many(W, "identity", 6) + many(X, "identity", 5) + many(Y, "identity", 4)
             + many(Z, "identity", 3) + many(Q, "identity", 1) + many(Z, "rot90", 1))
    ranked = vote(cands)
    # Z survives only through rot90 (1 vote, 1 group); Q is cut everywhere and comes last
    assert grids(ranked) == [W, X, Y, Z, Q]
    assert (by_grid(ranked, Z).votes, by_grid(ranked, Z).groups) == (1, 1)
    assert (by_grid(ranked, Q).votes, by_grid(ranked, Q).groups) == (1, 0)
    assert len(by_grid(ranked, Z).transforms) == 4  # every candidate that produced it is listed

    # a wider cut keeps Z in both groups: 3 + 1 = 4 votes in 2 groups ties Y's 4 votes and wins on groups
    wide = vote(cands, top_per_group=5)
    assert grids(wide) == [W, X, Z, Y, Q]
    assert (by_grid(wide, Z).votes, by_grid(wide, Z).groups) == (4, 2)

    # top 1: W (identity) and Z (rot90) survive; the cut grids follow by their own votes
    narrow = vote(cands, top_per_group=1)
    assert grids(narrow) == [W, Z, X, Y, Q]
    assert [r.groups for r in narrow] == [1, 1, 0, 0, 0]
    assert [r.votes for r in narrow] == [6, 1, 5, 4, 1]


def test_cut_inside_a_group_breaks_ties_by_logprob_then_text():
    A, B, C = [[7]], [[2]], [[3]]
    # one vote each in one group, top 1: A has the best logprob
    ranked = vote([cand(B, "g", -2.0), cand(A, "g", -1.0), cand(C, "g", -2.0)], top_per_group=1)
    assert grids(ranked) == [A, B, C]  # B before C among the cut: equal logprob, "2" < "3"
    assert [r.groups for r in ranked] == [1, 0, 0]
    # equal logprobs: the smaller text survives
    ranked = vote([cand(A, "g", -1.0), cand(C, "g", -1.0), cand(B, "g", -1.0)], top_per_group=1)
    assert grids(ranked) == [B, C, A]
    assert ranked[0].groups == 1


def test_global_ties_broken_by_mean_logprob_then_text():
    A, B = [[9, 9]], [[1, 1]]
    # same votes and groups; A's mean logprob (-1) beats B's (-3) although B's text is smaller
    cands = [cand(A, "identity", -0.5), cand(A, "identity", -1.5), cand(B, "rot90", -2.0), cand(B, "rot90", -4.0)]
    ranked = vote(cands)
    assert grids(ranked) == [A, B]
    assert ranked[0].logprob == pytest.approx(-1.0)
    assert ranked[1].logprob == pytest.approx(-3.0)
    # same logprob too: the text decides
    same = [cand(A, "identity", -1.0), cand(B, "rot90", -1.0)]
    assert grids(vote(same)) == [B, A]
    assert grids(vote(same[::-1])) == [B, A]


def test_nan_logprob_counts_as_minus_infinity():
    A, B = [[1]], [[2]]
    ranked = vote([cand(A, "g", math.nan), cand(B, "h", -100.0)])
    assert grids(ranked) == [B, A]
    assert ranked[1].logprob == -math.inf


def test_same_cells_different_shape_are_different_grids():
    row, col = [[1, 2]], [[1], [2]]
    assert grid_key(np.array(row)) != grid_key(np.array(col))
    ranked = vote([cand(row, "g"), cand(col, "g"), cand(col, "h")])
    assert grids(ranked) == [col, row]
    assert grid_key(np.array(row, dtype=np.int64)) == grid_key(np.array(row, dtype=np.int8))


def test_valid_drops_failed_parses_and_vote_refuses_them():
    cands = [cand(W, "g"), cand(None, "g"), cand(X, "h")]
    assert valid(cands) == [cands[0], cands[2]]
    with pytest.raises(ValueError, match="valid"):
        vote(cands)
    with pytest.raises(ValueError, match="top_per_group"):
        vote(valid(cands), top_per_group=0)


def test_candidates_compare_and_hash_by_grid_contents():
    a, b = cand(W, "g", -1.0, "t"), cand(W, "g", -1.0, "t")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != cand(X, "g", -1.0, "t") and a != cand(W, "g", -2.0, "t")


def test_pick_attempts_and_empty_input():
    ranked = vote(many(W, "g", 3) + many(X, "g", 2) + many(Y, "g", 1))
    assert [g.tolist() for g in pick_attempts(ranked)] == [W, X]
    assert [g.tolist() for g in pick_attempts(ranked, n=1)] == [W]
    assert [g.tolist() for g in pick_attempts(ranked[:1])] == [W]
    assert vote([]) == [] and pick_attempts([]) == []


def test_vote_flat_is_plain_majority_without_the_cut():
    cands = (many(W, "identity", 6) + many(X, "identity", 5) + many(Y, "identity", 4)
             + many(Z, "identity", 3) + many(Z, "rot90", 1))
    flat = vote_flat(cands)
    # Z: 4 votes over 2 groups ties Y's 4 and wins on groups; hierarchical voting cuts it instead
    assert grids(flat) == [W, X, Z, Y]
    assert (by_grid(flat, Z).votes, by_grid(flat, Z).groups) == (4, 2)
    assert grids(vote(cands)) == [W, X, Y, Z]


# ---- order independence ---------------------------------------------------------------------

POOL = [[[1]], [[2]], [[1, 2]], [[1], [2]], [[0, 0], [0, 0]]]
candidate_st = st.builds(
    lambda g, group, lp, t: cand(POOL[g], group, lp, transform=f"{group}+{t}"),
    st.integers(0, len(POOL) - 1),
    st.sampled_from(["identity", "rot90", "flip_h"]),
    st.sampled_from([-1.0, -2.0, -0.1 - 0.2, -0.3, math.nan]),  # few values: plenty of ties
    st.integers(0, 2),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(candidate_st, max_size=25), st.randoms(use_true_random=False), st.integers(1, 4))
def test_shuffling_candidates_gives_the_same_ranking(cands, rnd, top):
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    ranked = vote(cands, top_per_group=top)
    assert ranked == vote(shuffled, top_per_group=top)
    assert vote_flat(cands) == vote_flat(shuffled)

    # every distinct grid exactly once; survivors first, each block ordered by votes
    keys = [grid_key(r.grid) for r in ranked]
    assert sorted(keys) == sorted({grid_key(c.grid) for c in cands})
    kept = [r for r in ranked if r.groups > 0]
    assert ranked[:len(kept)] == kept
    for block in (kept, ranked[len(kept):]):
        assert [r.votes for r in block] == sorted((r.votes for r in block), reverse=True)
    # each group keeps at most `top` grids, so the kept groups add up to at most that
    assert sum(r.groups for r in ranked) <= top * len({c.group for c in cands})
    assert sum(len(r.transforms) for r in ranked) == len(cands)
