"""SIFT and the nearest-neighbour baselines: reference figures, closed form, limits, stopping."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.lm.select import (
    posterior_sigma,
    preselect,
    select_nn,
    select_nn_repeats,
    select_random,
    select_sift,
    select_us,
)


def normalised(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def random_problem(seed: int, k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((k, d))
    q = rng.standard_normal(d)
    return normalised(q), normalised(x)


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    """The acceptance problem: 300 candidates and a prompt in 32 dimensions, drawn in this order."""
    return random_problem(seed=0, k=300, d=32)


# --- reference figures ----------------------------------------------------------------------


def test_sift_matches_reference_figures(reference):
    # from activeft 0.1.1 and a closed-form greedy over all 300 candidates
    q, x = reference
    sel = select_sift(q, x, 10, lam=0.01)
    assert sel.indices == [0, 67, 33, 234, 293, 118, 72, 148, 114, 198]
    expected = [0.82261, 0.72155, 0.63076, 0.54189, 0.46937, 0.42227, 0.38132, 0.32626, 0.26997, 0.23301]
    assert [round(s, 5) for s in sel.sigmas] == expected
    assert sel.stopped is None
    assert sel.seconds > 0


# --- rank-one updates against the closed form -----------------------------------------------

problems = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 8))
noises = st.sampled_from([1e-3, 1e-2, 0.1, 1.0, 10.0])


@settings(max_examples=60, deadline=None)
@given(problem=problems, lam=noises, n=st.integers(1, 10))
def test_sift_updates_agree_with_closed_form_and_are_greedy(problem, lam, n):
    q, x = random_problem(*problem)
    sel = select_sift(q, x, n, lam=lam)
    assert len(sel.indices) == len(sel.sigmas) == n
    for m in range(n):
        prefix = sel.indices[:m]
        assert sel.sigmas[m] == pytest.approx(posterior_sigma(q, x, prefix + [sel.indices[m]], lam), abs=1e-9)
        # the pick is the closed-form greedy choice: no candidate would have done better
        best = min(posterior_sigma(q, x, prefix + [j], lam) for j in range(len(x)))
        assert sel.sigmas[m] <= best + 1e-9


@settings(max_examples=40, deadline=None)
@given(problem=problems, lam=noises, n=st.integers(1, 12))
def test_sift_sigma_is_non_increasing(problem, lam, n):
    q, x = random_problem(*problem)
    sigmas = [1.0] + select_sift(q, x, n, lam=lam).sigmas  # sigma_0 = ||x*|| = 1
    assert all(b <= a + 1e-12 for a, b in zip(sigmas, sigmas[1:]))


@settings(max_examples=30, deadline=None)
@given(problem=problems, lam=noises, seed=st.integers(0, 1000))
def test_baseline_sigmas_agree_with_closed_form(problem, lam, seed):
    q, x = random_problem(*problem)
    n = min(len(x), 5)
    for sel in (select_nn(q, x, n, lam=lam), select_nn_repeats(q, x, n, lam=lam), select_us(q, x, n, lam=lam),
                select_random(q, x, n, np.random.default_rng(seed), lam=lam)):
        for m in range(n):
            assert sel.sigmas[m] == pytest.approx(posterior_sigma(q, x, sel.indices[: m + 1], lam), abs=1e-9)


def test_posterior_sigma_of_nothing_is_the_prior(reference):
    q, x = reference
    assert posterior_sigma(q, x, [], 0.01) == pytest.approx(1.0)


# --- the two limits of lambda -----------------------------------------------------------------


def test_large_lambda_degenerates_to_nn_with_repeats(reference):
    q, x = reference
    nearest = int(np.argmax(np.abs(x @ q)))
    assert select_nn_repeats(q, x, 8).indices == [nearest] * 8
    assert select_sift(q, x, 8, lam=1e4).indices == [nearest] * 8
    # whereas small noise never repeats here: each pick brings something new
    assert len(set(select_sift(q, x, 8, lam=0.01).indices)) == 8


def test_nn_repeats_is_sign_blind_like_sift():
    q = np.array([1.0, 0.0, 0.0])
    x = normalised(np.array([[0.8, 0.6, 0.0], [-0.9, 0.0, np.sqrt(0.19)], [0.0, 1.0, 0.0]]))
    assert select_nn_repeats(q, x, 3).indices == [1, 1, 1]
    assert select_sift(q, x, 3, lam=1e4).indices == [1, 1, 1]
    assert select_nn(q, x, 1).indices == [0]  # plain NN ranks by signed similarity


def test_small_lambda_skips_an_exact_duplicate():
    # x* = e0; a near neighbour a stored twice (positions 0 and 1); b is a little further from
    # x* but with a and b together x* is explained exactly; the rest is noise away from x*
    d = 8
    q = np.eye(d)[0]
    a = normalised(np.array([1.0, 0.3, 0, 0, 0, 0, 0, 0]))
    b = normalised(np.array([1.0, -0.35, 0, 0, 0, 0, 0, 0]))
    away = np.array([0.1] + [1.0] * (d - 1))  # little of e0 in the noise
    noise = normalised(np.random.default_rng(1).standard_normal((20, d)) * away)
    x = np.vstack([a, a, b, noise])
    nn = select_nn(q, x, 2)
    sift = select_sift(q, x, 2, lam=0.01)
    assert sorted(nn.indices) == [0, 1]  # NN takes both copies
    assert sift.indices[0] in (0, 1) and sift.indices[1] == 2  # SIFT takes one, then b
    assert sift.sigmas[1] < 0.2 < nn.sigmas[1]  # and learns far more about x*


# --- adaptive stopping ------------------------------------------------------------------------


def test_stop_below_ends_once_sigma_is_small_enough(reference):
    q, x = reference
    full = select_sift(q, x, 10)
    sel = select_sift(q, x, 10, stop_below=0.5)
    assert sel.stopped == "stop_below"
    assert sel.indices == full.indices[:5]  # sigma_4 = 0.54189 >= 0.5 > sigma_5 = 0.46937
    assert sel.sigmas[-1] < 0.5 <= sel.sigmas[-2]


def test_stop_below_above_the_prior_picks_nothing(reference):
    q, x = reference
    sel = select_sift(q, x, 10, stop_below=1.5)
    assert (sel.indices, sel.sigmas, sel.stopped) == ([], [], "stop_below")


def test_min_gain_ends_once_the_next_pick_gains_too_little(reference):
    q, x = reference
    full = select_sift(q, x, 10)
    sel = select_sift(q, x, 10, min_gain=0.11)
    assert sel.stopped == "min_gain"
    m = len(sel.indices)
    assert 0 < m < 10 and sel.indices == full.indices[:m]
    sigmas = [1.0] + full.sigmas
    gains = [(a - b) / a for a, b in zip(sigmas, sigmas[1:])]
    assert all(g >= 0.11 for g in gains[:m])  # every pick made was worth it
    assert gains[m] < 0.11  # and the one it declined was not


def test_no_stopping_rule_makes_all_picks_even_beyond_the_candidates():
    q, x = random_problem(3, 4, 6)
    sel = select_sift(q, x, 9)  # repeats allowed: more picks than candidates
    assert len(sel.indices) == 9 and sel.stopped is None


# --- uncertainty sampling against NN and SIFT on planted embeddings ---------------------------


def planted() -> tuple[np.ndarray, np.ndarray]:
    """x* = e0; 0: its nearest neighbour a; 1: a near-copy of a; 2: b, less similar but what a leaves
    unexplained of x*; 3: e2, orthogonal to x* and to everything else."""
    q = np.eye(4)[0]
    x = normalised(np.array([[1.0, 0.1, 0, 0], [1.0, 0.12, 0, 0], [0.8, -0.6, 0, 0], [0, 0, 1.0, 0]]))
    return q, x


def test_us_nn_and_sift_take_different_known_second_points():
    q, x = planted()
    assert select_nn(q, x, 2).indices == [0, 1]  # NN: the two most similar, the copy included
    assert select_sift(q, x, 2).indices == [0, 2]  # SIFT: what explains the rest of x*
    assert select_us(q, x, 2).indices == [0, 3]  # US: what the pick so far explains least, relevant or not
    # US's pick 2 teaches nothing about x*; SIFT's the most
    us, sift = select_us(q, x, 2), select_sift(q, x, 2)
    assert us.sigmas[1] == pytest.approx(us.sigmas[0]) and sift.sigmas[1] < select_nn(q, x, 2).sigmas[1]


def own_variance(x: np.ndarray, picked: list[int], lam: float) -> np.ndarray:
    """(K,) k(x_i, x_i) - k_X(x_i)^T (K_X + lam I)^-1 k_X(x_i) in closed form, X = x[picked]."""
    prior = np.einsum("kd,kd->k", x, x)
    if not picked:
        return prior
    xs = x[picked]  # (m, d)
    k_x = x @ xs.T  # (K, m)
    return prior - np.einsum("km,mk->k", k_x, np.linalg.solve(xs @ xs.T + lam * np.eye(len(xs)), k_x.T))


def test_us_picks_the_largest_own_posterior_variance_whatever_the_prompt():
    q, x = planted()
    lam = 0.01
    sel = select_us(q, x, 4, lam=lam)
    assert sel.indices == [0, 3, 2, 1]
    for m, j in enumerate(sel.indices):
        assert j == int(np.argmax(own_variance(x, sel.indices[:m], lam)))
    other = normalised(np.array([0.0, 0.3, 0.2, 1.0]))
    assert select_us(other, x, 4).indices == sel.indices  # the prompt plays no part in the choice
    assert select_us(q, np.array([[0.5, 0, 0, 0], [0, 2.0, 0, 0]]), 1).indices == [1]  # largest norm first


# --- adaptive SIFT (the paper's rule) ------------------------------------------------------------


def test_adaptive_stops_where_alpha_n_sigma_n_first_exceeds_one(reference):
    q, x = reference
    full = select_sift(q, x, 10)  # n sigma_n: 0.82, 1.44, 1.89, 2.17, 2.35, 2.53, 2.67, 2.61, 2.43, 2.33
    sel = select_sift(q, x, 10, alpha=0.5)  # stop once n sigma_n > 2: before pick 4
    assert (sel.indices, sel.stopped, sel.sigma0) == (full.indices[:3], "adaptive", 1.0)
    assert select_sift(q, x, 10, alpha=1 / 2.7).stopped is None  # n sigma_n stays below 2.7
    assert select_sift(q, x, 10, alpha=1.3).indices == []  # 1.3 x 0.82 > 1: not even one step


def test_adaptive_spends_steps_where_the_memory_explains_the_prompt():
    # prompt A has an exact copy in the memory (sigma_n ~ 0.1 / sqrt(n)): it takes every step;
    # prompt B is nearly orthogonal to all of it (sigma_1 ~ 0.95): one step, then 2 x sigma_2 > 1
    d = 6
    memory = np.vstack([np.eye(d)[0], normalised(np.array([[0.3, 0, 1.0, 0, 0, 0], [0, 0.3, 0, 1.0, 0, 0]]))])
    a = select_sift(np.eye(d)[0], memory, 10, alpha=1.0)
    b = select_sift(normalised(np.array([0, 1.0, 0, 0, 0, 0.5])), memory, 10, alpha=1.0)
    assert len(a.indices) == 10 and a.stopped is None
    assert len(b.indices) == 1 and b.stopped == "adaptive"
    assert b.sigmas[0] <= 1.0 < 2 * select_sift(normalised(np.array([0, 1.0, 0, 0, 0, 0.5])), memory, 2).sigmas[1]


@settings(max_examples=40, deadline=None)
@given(problem=problems, lam=noises, alpha=st.floats(0.05, 3.0))
def test_adaptive_takes_a_prefix_of_the_plain_run_up_to_its_first_violation(problem, lam, alpha):
    q, x = random_problem(*problem)
    full = select_sift(q, x, 12, lam=lam)
    sel = select_sift(q, x, 12, lam=lam, alpha=alpha)
    m = len(sel.indices)
    assert sel.indices == full.indices[:m]
    assert all(alpha * (i + 1) * s <= 1 + 1e-12 for i, s in enumerate(sel.sigmas))
    if m < 12:
        assert sel.stopped == "adaptive" and alpha * (m + 1) * full.sigmas[m] > 1 - 1e-12


# --- baselines and preselection ---------------------------------------------------------------


def test_nn_is_the_top_n_by_inner_product(reference):
    q, x = reference
    sel = select_nn(q, x, 10)
    assert sel.indices == [int(i) for i in np.argsort(-(x @ q))[:10]]
    assert len(set(sel.indices)) == 10


def test_random_is_distinct_and_reproducible(reference):
    q, x = reference
    a = select_random(q, x, 50, np.random.default_rng(7))
    b = select_random(q, x, 50, np.random.default_rng(7))
    assert a.indices == b.indices
    assert len(set(a.indices)) == 50 and all(0 <= i < 300 for i in a.indices)


def test_preselect_takes_the_top_k_by_absolute_inner_product(reference):
    q, x = reference
    x = x.copy()
    x[5] = -q  # anti-aligned: as informative as x* itself
    top = preselect(q, x, 20)
    score = np.abs(x @ q)
    assert top[0] == 5
    assert list(top) == [int(i) for i in np.argsort(-score, kind="stable")[:20]]
    assert list(preselect(q, x.astype(np.float32), 20)) == list(top)
    assert sorted(preselect(q, x, 1000)) == list(range(300))


def test_preselect_ties_go_to_the_smaller_position():
    q = np.array([1.0, 0.0])
    x = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [1.0, 0.0]])
    assert list(preselect(q, x, 2)) == [1, 3]


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "candidates", "kwargs", "message"),
    [
        (np.ones((1, 4)), np.ones((3, 4)), {}, r"query must be one embedding of shape \(d,\)"),
        (np.ones(4), np.ones(4), {}, r"candidates must have shape \(K, d\)"),
        (np.ones(4), np.ones((3, 5)), {}, "query has dimension 4 but candidates have dimension 5"),
        (np.ones(4), np.ones((0, 4)), {}, "candidates is empty"),
        (np.ones(4), np.full((3, 4), np.nan), {}, "must be finite"),
        (np.ones(4), np.ones((3, 4)), {"lam": 0.0}, "lam .* must be a positive finite number"),
        (np.ones(4), np.ones((3, 4)), {"min_gain": 1.0}, "min_gain"),
        (np.ones(4), np.ones((3, 4)), {"stop_below": -1.0}, "stop_below"),
        (np.ones(4), np.ones((3, 4)), {"alpha": 0.0}, "alpha .* positive"),
    ],
)
def test_sift_rejects_bad_inputs(query, candidates, kwargs, message):
    with pytest.raises(ValueError, match=message):
        select_sift(query, candidates, 2, **kwargs)


def test_distinct_baselines_reject_more_picks_than_candidates(reference):
    q, x = reference
    with pytest.raises(ValueError, match="n=301 distinct picks"):
        select_nn(q, x, 301)
    with pytest.raises(ValueError, match="n=301 distinct picks"):
        select_random(q, x, 301, np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-negative integer"):
        select_sift(q, x, -1)
