"""Data selection for test-time fine-tuning: SIFT, uncertainty sampling and nearest-neighbour baselines.

SIFT (Hübotter et al., ICLR 2025, "Efficiently Learning at Test-Time: Active Fine-Tuning of
LLMs") treats the prompt embedding x* and the candidate embeddings as points of a Gaussian
process with the linear kernel k(x, x') = <x, x'>. After fine-tuning on the multiset X the
model's remaining uncertainty about the prompt is the posterior variance

    sigma^2_X(x*) = k(x*, x*) - k_X(x*)^T (K_X + lam I)^-1 k_X(x*),

where lam is the observation noise. SIFT greedily picks the candidate that shrinks it most,
repeats allowed; a repeat of a point already picked shrinks it little, so duplicates and
near-duplicates of something already chosen are passed over in favour of new information.

The greedy loop keeps the posterior in product form,
k_n(a, b) = k(a, b) - sum_m u_m(a) u_m(b), with one stored row u_m per pick, so a step costs
O(K d) for the picked point's kernel column and O(K n) for its posterior column: no matrix is
inverted. `posterior_sigma` is the closed form, for tests and reporting.

Inputs are the caller's embeddings, L2-normalised (the maths holds for any vectors, but the
nearest-neighbour baselines then rank by cosine similarity). `preselect` narrows a large memory
to the K candidates handed to the selectors.

Uncertainty sampling (US), the paper's first baseline, uses the same posterior but ignores the
prompt: it picks the candidate whose own variance k_n(x_i, x_i) is largest given the picks so far,
so it spreads out over the candidates (diverse) without asking what is relevant to x*.

Adaptive SIFT (the paper's rule, as activeft's `Retriever(alpha=...)` applies it): pick n
(1-based), which leaves the prompt at sigma_n, is taken only while sigma_n <= 1 / (alpha n).
Prompts the memory explains well (small sigma) get many steps, poorly covered ones few.
"""

from __future__ import annotations

import logging
import math
import numbers
import time
from dataclasses import dataclass, field

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "Selection",
    "posterior_sigma",
    "preselect",
    "select_nn",
    "select_nn_repeats",
    "select_random",
    "select_sift",
    "select_us",
]


@dataclass
class Selection:
    """The candidates chosen for one prompt, in pick order, with the prompt's uncertainty."""

    indices: list[int] = field(default_factory=list)
    """Positions into the candidate set, in pick order; SIFT and NN-with-repeats may repeat one."""
    sigmas: list[float] = field(default_factory=list)
    """sigmas[n - 1] = sigma_n, the prompt's posterior std after the first n picks."""
    stopped: str | None = None
    """Rule that ended selection before n picks ("stop_below", "min_gain" or "adaptive"); None if all n made."""
    sigma0: float = 0.0
    """sigma_0 = sqrt(k(x*, x*)), the prompt's prior std before any pick (1 for a unit-norm prompt)."""
    seconds: float = 0.0
    """Wall-clock seconds the selection took."""


# --- validation -------------------------------------------------------------------------------


def _as_inputs(query: np.ndarray, candidates: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Float64 copies of (query (d,), candidates (K, d)); one ValueError lists every problem."""
    q = np.asarray(query, dtype=np.float64)
    x = np.asarray(candidates, dtype=np.float64)
    problems = []
    if q.ndim != 1:
        problems.append(f"query must be one embedding of shape (d,), got shape {q.shape}")
    if x.ndim != 2:
        problems.append(f"candidates must have shape (K, d), got shape {x.shape}")
    elif x.shape[0] == 0:
        problems.append("candidates is empty: pass at least one candidate embedding")
    if q.ndim == 1 and x.ndim == 2 and q.shape[0] != x.shape[1]:
        problems.append(f"query has dimension {q.shape[0]} but candidates have dimension {x.shape[1]}")
    if not (np.all(np.isfinite(q)) and np.all(np.isfinite(x))):
        problems.append("query and candidates must be finite (found NaN or inf)")
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not (math.isfinite(lam) and lam > 0):
        problems.append(f"lam (the observation noise) must be a positive finite number, got {lam!r}")
    if problems:
        raise ValueError("; ".join(problems))
    return q, x


def _check_n(n: int, limit: int | None = None) -> None:
    """n is a count of picks: a non-negative int, at most `limit` when picks must be distinct."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    if limit is not None and n > limit:
        raise ValueError(f"n={n} distinct picks requested but there are only {limit} candidates; "
                         f"lower n or pass more candidates")


# --- the posterior, one observation at a time --------------------------------------------------


class _Posterior:
    """Linear-kernel GP posterior over the prompt and the candidates, updated by rank-one steps."""

    def __init__(self, query: np.ndarray, candidates: np.ndarray, lam: float, capacity: int) -> None:
        self.x = candidates  # (K, d)
        self.lam = lam
        self.s = float(query @ query)  # k_n(x*, x*)
        self.c = candidates @ query  # (K,) k_n(x_i, x*)
        self.v = np.einsum("kd,kd->k", candidates, candidates)  # (K,) k_n(x_i, x_i)
        self.rows = np.empty((capacity, len(candidates)))  # (N, K) u_m(x_i), one row per pick
        self.n = 0

    @property
    def sigma(self) -> float:
        """sigma_n = sqrt(k_n(x*, x*)), the prompt's current posterior std."""
        return math.sqrt(max(self.s, 0.0))

    def scores(self) -> np.ndarray:
        """(K,) the prompt's posterior variance if candidate i were observed next."""
        return self.s - self.c**2 / (self.v + self.lam)

    def observe(self, j: int) -> float:
        """Condition on a noisy observation of candidate j; return the new sigma."""
        u_prev = self.rows[: self.n]  # (n, K)
        col = self.x @ self.x[j] - u_prev.T @ u_prev[:, j]  # (K,) k_n(x_i, x_j)
        scale = 1.0 / math.sqrt(self.v[j] + self.lam)
        u = col * scale  # (K,) u_{n+1}(x_i) = k_n(x_i, x_j) / sqrt(v_j + lam)
        u_q = self.c[j] * scale  # u_{n+1}(x*)
        self.rows[self.n] = u
        self.n += 1
        self.c -= u * u_q
        self.v -= u**2
        np.maximum(self.v, 0.0, out=self.v)  # rounding can dip a variance below zero
        self.s -= u_q**2
        return self.sigma


def _sigmas_of(q: np.ndarray, x: np.ndarray, indices: list[int], lam: float) -> list[float]:
    """sigma_n after each of the given picks, by the same rank-one updates SIFT uses.

    The prompt's posterior depends on the picked points alone, so only they enter: O(n^2 d), not
    O(K n d), whatever the number of candidates K."""
    if not indices:
        return []
    picked, position = np.unique(np.asarray(indices), return_inverse=True)
    post = _Posterior(q, x[picked], lam, len(indices))
    return [post.observe(int(j)) for j in position]


def _log(name: str, sel: Selection, k: int) -> Selection:
    sigma = f"{sel.sigmas[-1]:.4f}" if sel.sigmas else "-"
    logger.debug("%s | K %d | picked %d | sigma %s | %.2f ms | stopped %s",
                 name, k, len(sel.indices), sigma, 1e3 * sel.seconds, sel.stopped)
    return sel


# --- selectors ----------------------------------------------------------------------------------


def select_sift(
    query: np.ndarray,
    candidates: np.ndarray,
    n: int,
    *,
    lam: float = 0.01,
    stop_below: float | None = None,
    min_gain: float | None = None,
    alpha: float | None = None,
) -> Selection:
    """Greedily pick up to n candidates (repeats allowed) that minimise the prompt's uncertainty.

    Pick n+1 is argmin_i sigma^2_{X_n + {x_i}}(x*) (ties: smallest index); `sigmas[n-1]` is
    sigma_n after pick n. Adaptive stopping, checked before every pick, so compute follows what
    is still uncertain:

    - `stop_below`: stop once sigma_n < stop_below (sigma_0 = ||x*|| = 1 counts, so a prompt
      already below it gets no picks);
    - `min_gain`: stop once the best next pick would lower sigma by less than the fraction
      min_gain of what is left, i.e. (sigma_n - sigma_{n+1}) / sigma_n < min_gain, where
      sigma_{n+1} is the exact value that pick would reach (also stops once sigma_n = 0);
    - `alpha` (adaptive SIFT): stop before pick m once the sigma_m it would reach exceeds
      1 / (alpha m), i.e. once alpha * m * sigma_m > 1. activeft drops every such pick from its
      list, also later ones below the line again; here selection, and so training, stops at the
      first one, so the steps taken are always a prefix of the plain run's.

    `stopped` names the rule that fired; the picks made are those the plain run makes first.
    """
    start = time.perf_counter()
    q, x = _as_inputs(query, candidates, lam)
    _check_n(n)
    if stop_below is not None and not stop_below >= 0:
        raise ValueError(f"stop_below must be a std >= 0, got {stop_below!r}")
    if min_gain is not None and not 0 <= min_gain < 1:
        raise ValueError(f"min_gain must be a relative decrease in [0, 1), got {min_gain!r}")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha (adaptive SIFT) must be a positive finite number, got {alpha!r}")

    post = _Posterior(q, x, lam, n)
    sel = Selection(sigma0=post.sigma)
    sigma = post.sigma
    for m in range(1, n + 1):
        if stop_below is not None and sigma < stop_below:
            sel.stopped = "stop_below"
            break
        scores = post.scores()
        j = int(np.argmin(scores))  # first minimum: ties go to the smallest index
        if min_gain is not None:
            gain = (sigma - math.sqrt(max(scores[j], 0.0))) / sigma if sigma > 0 else 0.0
            if gain < min_gain:
                sel.stopped = "min_gain"
                break
        if alpha is not None and alpha * m * math.sqrt(max(scores[j], 0.0)) > 1:
            sel.stopped = "adaptive"
            break
        sigma = post.observe(j)
        sel.indices.append(j)
        sel.sigmas.append(sigma)
    sel.seconds = time.perf_counter() - start
    return _log("sift", sel, len(x))


def select_nn(query: np.ndarray, candidates: np.ndarray, n: int, *, lam: float = 0.01) -> Selection:
    """The n distinct candidates of largest inner product <x, x*> (ties: smallest index).

    `sigmas` reports the SIFT posterior std of the prompt after each pick, with noise `lam`.
    """
    start = time.perf_counter()
    q, x = _as_inputs(query, candidates, lam)
    _check_n(n, limit=len(x))
    order = np.argsort(-(x @ q), kind="stable")[:n]
    indices = [int(i) for i in order]
    sel = Selection(indices, _sigmas_of(q, x, indices, lam), sigma0=math.sqrt(float(q @ q)))
    sel.seconds = time.perf_counter() - start
    return _log("nn", sel, len(x))


def select_nn_repeats(query: np.ndarray, candidates: np.ndarray, n: int, *, lam: float = 0.01) -> Selection:
    """The nearest neighbour n times over: SIFT's limit as lam -> infinity.

    With large noise one observation barely moves the posterior, so every SIFT step scores
    candidate i by about c_i^2 / lam with c_i = <x_i, x*> unchanged, and picks the same
    argmax_i |<x_i, x*>| again and again (sign does not matter to SIFT, nor here; ties:
    smallest index). `sigmas` reports the posterior std with noise `lam`.
    """
    start = time.perf_counter()
    q, x = _as_inputs(query, candidates, lam)
    _check_n(n)
    indices = [int(np.argmax(np.abs(x @ q)))] * n
    sel = Selection(indices, _sigmas_of(q, x, indices, lam), sigma0=math.sqrt(float(q @ q)))
    sel.seconds = time.perf_counter() - start
    return _log("nn_repeats", sel, len(x))


def select_random(
    query: np.ndarray, candidates: np.ndarray, n: int, rng: np.random.Generator, *, lam: float = 0.01
) -> Selection:
    """n distinct candidates drawn uniformly at random; `sigmas` as for `select_nn`."""
    start = time.perf_counter()
    q, x = _as_inputs(query, candidates, lam)
    _check_n(n, limit=len(x))
    indices = [int(i) for i in rng.choice(len(x), size=n, replace=False)]
    sel = Selection(indices, _sigmas_of(q, x, indices, lam), sigma0=math.sqrt(float(q @ q)))
    sel.seconds = time.perf_counter() - start
    return _log("random", sel, len(x))


def select_us(query: np.ndarray, candidates: np.ndarray, n: int, *, lam: float = 0.01) -> Selection:
    """Uncertainty sampling: each pick is the candidate of largest own posterior variance k_n(x_i, x_i).

    The posterior is the one SIFT keeps (noise `lam`, conditioned on the picks so far), but the
    prompt plays no part in the choice: the first pick is the candidate of largest norm (for
    unit vectors a tie, so the smallest index: the nearest neighbour after `preselect`), each
    later one what the picks so far explain least. Repeats are possible once everything is
    explained. `sigmas` reports the prompt's posterior std after each pick.
    """
    start = time.perf_counter()
    q, x = _as_inputs(query, candidates, lam)
    _check_n(n)
    post = _Posterior(q, x, lam, n)
    sel = Selection(sigma0=post.sigma)
    for _ in range(n):
        j = int(np.argmax(post.v))  # first maximum: ties go to the smallest index
        sel.indices.append(j)
        sel.sigmas.append(post.observe(j))
    sel.seconds = time.perf_counter() - start
    return _log("us", sel, len(x))


def posterior_sigma(query: np.ndarray, candidates: np.ndarray, picked: list[int], lam: float) -> float:
    """sigma_X(x*) in closed form, X = candidates[picked] (a multiset), by one linear solve."""
    q, x = _as_inputs(query, candidates, lam)
    if any(not 0 <= i < len(x) for i in picked):
        raise ValueError(f"picked holds positions outside 0..{len(x) - 1}: {list(picked)}")
    if not picked:
        return math.sqrt(float(q @ q))
    xs = x[list(picked)]  # (n, d)
    k_q = xs @ q  # (n,)
    gram = xs @ xs.T + lam * np.eye(len(xs))  # (n, n)
    var = float(q @ q - k_q @ np.linalg.solve(gram, k_q))
    return math.sqrt(max(var, 0.0))


def preselect(query: np.ndarray, embeddings: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k embeddings of largest |<x, x*>|, most similar first (ties: smaller position).

    Absolute value because SIFT is blind to sign: -x informs about x* as much as x does. A
    brute-force scan; an approximate index stands in for it on large memories.
    """
    emb = np.asarray(embeddings)
    q = np.asarray(query)
    if q.ndim != 1 or emb.ndim != 2 or emb.shape[1] != q.shape[0]:
        raise ValueError(f"need query (d,) and embeddings (M, d), got {q.shape} and {emb.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if np.issubdtype(emb.dtype, np.floating):
        q = q.astype(emb.dtype, copy=False)  # a float32 memory stays float32: no copy of it
    score = np.abs(emb @ q)  # (M,)
    if k >= len(score):
        top = np.arange(len(score))
    else:  # O(M): everything above the k-th largest score, then the first positions that tie it
        kth = -np.partition(-score, k - 1)[k - 1]
        above = np.flatnonzero(score > kth)
        top = np.concatenate([above, np.flatnonzero(score == kth)[: k - len(above)]])
    return top[np.lexsort((top, -score[top]))]
