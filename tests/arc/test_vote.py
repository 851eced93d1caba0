"""Hierarchical voting: hand-built candidate sets whose winners follow from the written rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.arc.vote import Candidate, Ranked, grid_key, pick_attempts, valid, vote, vote_flat

W, X, Y, Z, Q = [[6]], [[5]], [[4]], [[3]], [[1]]
GROUPS = ["identity", "rot90", "rot180", "flip_h"]


def cand(grid, group: str, logprob: float = -1.0, transform: str | None = None, tokens: int = 0) -> Candidate:
    g = None if grid is None else np.array(grid, dtype=np.int8)
    return Candidate(g, transform or f"{group}+c", group, logprob, tokens)


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
    assert (ranked[0].votes, ranked[0].groups, ranked[0].identity) == (3, 2, 2)
    assert (ranked[1].votes, ranked[1].groups, ranked[1].identity) == (1, 1, 0)
    assert ranked[0].transforms == sorted(c.transform for c in cands[:3])


def test_groups_that_keep_a_grid_beat_its_candidate_count():
    # A: kept by 3 groups (one candidate each); B: 9 candidates, all in the identity group
    A, B = [[1, 1]], [[2, 2]]
    cands = [cand(A, g, logprob=-9.0) for g in ("rot90", "rot180", "flip_h")] + many(B, "identity", 9, -0.1)
    ranked = vote(cands)
    assert grids(ranked) == [A, B]
    assert [(r.votes, r.groups) for r in ranked] == [(3, 3), (9, 1)]
    assert grids(vote_flat(cands)) == [B, A]  # plain majority counts candidates


def test_ties_go_to_the_identity_transform_before_logprob():
    # one group each, one candidate each; B has the far better log-probability, A is the identity's
    A, B = [[7]], [[2]]
    cands = [cand(A, "identity", -50.0), cand(B, "rot90", -0.1)]
    assert grids(vote(cands)) == [A, B]
    assert [r.identity for r in vote(cands)] == [1, 0]
    # both kept by two groups; A predicted twice by identity, B once: A wins despite B's log-probability
    cands = (many(A, "identity", 2, -50.0) + many(A, "rot90", 1, -50.0)
             + many(B, "identity", 1, -0.1) + many(B, "flip_h", 1, -0.1))
    ranked = vote(cands)
    assert grids(ranked) == [A, B] and [r.groups for r in ranked] == [2, 2] and [r.identity for r in ranked] == [2, 1]


def test_then_the_higher_mean_per_token_logprob_wins():
    # same groups, no identity: the big grid's summed logprob is lower, but its per-token one higher
    small, big = [[1]], [[2, 2, 2], [2, 2, 2], [2, 2, 2]]
    cands = [cand(small, "rot90", -2.0, tokens=3), cand(big, "flip_h", -5.0, tokens=13)]
    ranked = vote(cands)
    assert grids(ranked) == [big, small]
    assert ranked[0].token_logprob == pytest.approx(-5.0 / 13) and ranked[0].logprob == -5.0
    assert ranked[1].token_logprob == pytest.approx(-2.0 / 3)
    # mean over candidates of the per-token values
    two = vote([cand(small, "rot90", -2.0, tokens=2), cand(small, "rot90", -4.0, tokens=2)])
    assert two[0].token_logprob == pytest.approx(-1.5)
    # equal on everything: the smaller text
    same = [cand(W, "rot90", -1.0), cand(X, "flip_h", -1.0)]
    assert grids(vote(same)) == [X, W] and grids(vote(same[::-1])) == [X, W]


def test_top_per_group_cut():
    # identity: W x6, X x5, Y x4, Z x3, Q x1 -> keeps W, X, Y; rot90: Z x1 -> keeps Z
    cands = (many(W, "identity", 6) + many(X, "identity", 5) + many(Y, "identity", 4)
             + many(Z, "identity", 3) + many(Q, "identity", 1) + many(Z, "rot90", 1))
    ranked = vote(cands)
    # W, X, Y, Z each kept by one group; ordered by their identity predictions; Q, cut everywhere, last
    assert grids(ranked) == [W, X, Y, Z, Q]
    assert [r.groups for r in ranked] == [1, 1, 1, 1, 0]
    assert (by_grid(ranked, Z).votes, by_grid(ranked, Z).identity) == (4, 3)
    assert len(by_grid(ranked, Z).transforms) == 4  # every candidate that produced it is listed

    wide = vote(cands, top_per_group=5)  # Z kept by both groups now
    assert grids(wide) == [Z, W, X, Y, Q] and by_grid(wide, Z).groups == 2
    narrow = vote(cands, top_per_group=1)  # W (identity) and Z (rot90) survive
    assert grids(narrow) == [W, Z, X, Y, Q] and [r.groups for r in narrow] == [1, 1, 0, 0, 0]


def test_cut_inside_a_group_breaks_ties_by_per_token_logprob_then_text():
    A, B, C = [[7]], [[2]], [[3]]
    ranked = vote([cand(B, "g", -2.0), cand(A, "g", -1.0), cand(C, "g", -2.0)], top_per_group=1)
    assert grids(ranked)[0] == A and [r.groups for r in ranked] == [1, 0, 0]
    ranked = vote([cand(A, "g", -1.0), cand(C, "g", -1.0), cand(B, "g", -1.0)], top_per_group=1)
    assert grids(ranked)[0] == B and ranked[0].groups == 1


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
    assert a != cand(W, "g", -1.0, "t", tokens=3)


def test_pick_attempts_and_empty_input():
    ranked = vote(many(W, "identity", 3) + many(X, "identity", 2) + many(Y, "identity", 1))
    assert [g.tolist() for g in pick_attempts(ranked)] == [W, X]
    assert [g.tolist() for g in pick_attempts(ranked, n=1)] == [W]
    assert vote([]) == [] and pick_attempts([]) == []


# ---- properties -------------------------------------------------------------------------------

POOL = [[[1]], [[2]], [[1, 2]], [[1], [2]], [[0, 0], [0, 0]]]
candidate_st = st.builds(
    lambda g, group, lp, t, n: cand(POOL[g], group, lp, transform=f"{group}+{t}", tokens=n),
    st.integers(0, len(POOL) - 1),
    st.sampled_from(GROUPS),
    st.sampled_from([-1.0, -2.0, -0.1 - 0.2, -0.3, math.nan]),  # few values: plenty of ties
    st.integers(0, 2),
    st.sampled_from([0, 3, 5]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(candidate_st, max_size=25), st.randoms(use_true_random=False), st.integers(1, 4))
def test_shuffling_candidates_gives_the_same_ranking(cands, rnd, top):
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    ranked = vote(cands, top_per_group=top)
    assert ranked == vote(shuffled, top_per_group=top)
    assert vote_flat(cands) == vote_flat(shuffled)
    keys = [grid_key(r.grid) for r in ranked]
    assert sorted(keys) == sorted({grid_key(c.grid) for c in cands})  # every distinct grid exactly once
    assert [r.groups for r in ranked] == sorted((r.groups for r in ranked), reverse=True)
    assert sum(r.groups for r in ranked) <= top * len({c.group for c in cands})
    assert sum(r.votes for r in ranked) == len(cands)


@settings(max_examples=150, deadline=None)
@given(st.lists(candidate_st, max_size=25), st.randoms(use_true_random=False), st.integers(1, 3))
def test_a_planted_majority_in_every_group_always_wins(noise, rnd, top):
    # the planted grid is the strict majority of every group (identity included): it is kept by
    # every group, and no other grid has as many identity predictions
    planted = [[9, 9], [9, 8]]
    cands = list(noise)
    for group in GROUPS:
        others = [c for c in noise if c.group == group]
        most = max([sum(grid_key(c.grid) == grid_key(o.grid) for c in others) for o in others], default=0)
        cands += [cand(planted, group, -40.0, transform=f"{group}+planted{i}") for i in range(most + 1)]
    rnd.shuffle(cands)
    ranked = vote(cands, top_per_group=top)
    assert ranked[0].grid.tolist() == planted and ranked[0].groups == len(GROUPS)
    assert pick_attempts(ranked, 1)[0].tolist() == planted
    assert vote_flat(cands)[0].grid.tolist() == planted


@settings(max_examples=100, deadline=None)
@given(st.lists(candidate_st, max_size=20), st.randoms(use_true_random=False))
def test_the_identity_tie_break_decides_between_equally_kept_grids(noise, rnd):
    # A and B are each kept by exactly the same groups (the only candidates there, top 3); A has one
    # more identity prediction than B and the worst log-probability: A ranks above B
    A, B = [[3, 3, 3]], [[4, 4, 4]]
    noise = [c for c in noise if c.group == "rot90"]  # other grids live in a group A and B avoid
    cands = noise + many(A, "identity", 2, -90.0) + many(B, "identity", 1, -0.01)
    cands += many(A, "flip_h", 1, -90.0) + many(B, "flip_h", 1, -0.01)
    rnd.shuffle(cands)
    ranked = vote(cands)
    order = [r.grid.tolist() for r in ranked]
    assert order.index(A) < order.index(B)
    assert by_grid(ranked, A).groups == by_grid(ranked, B).groups == 2


def test_selection_orders_by_vote_poe_or_both():
    from testtime.arc.vote import selection

    # A: 2 groups; B, C: 1 group each
    ranked = vote(many(W, "identity", 1) + many(W, "rot90", 1) + many(X, "flip_h", 2) + many(Y, "rot180", 1))
    assert grids(ranked) == [W, Y, X]  # Y and X tie: the smaller text
    poe = [-9.0, -1.0, -0.5]
    assert selection(ranked) == [0, 1, 2]
    assert selection(ranked, "poe", poe) == [2, 1, 0]
    assert selection(ranked, "vote+poe", poe) == [0, 2, 1]  # groups first, then PoE
    assert selection(ranked, "poe", [-1.0, math.nan, -1.0]) == [0, 2, 1]  # ties keep the vote's order
    with pytest.raises(ValueError, match="PoE"):
        selection(ranked, "poe")
