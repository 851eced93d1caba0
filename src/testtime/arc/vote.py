"""Hierarchical voting over augmented predictions (Akyurek et al. 2024, "augmented inference").

A task's test input is predicted under many invertible transforms; each parsed answer is mapped
back to the original frame and becomes a `Candidate`. Voting then runs in two steps:

1. intra-transformation voting: candidates are grouped by `group` (the geometric transformation
   they were predicted under); within a group identical grids (same shape and cells) are counted
   and only the `top_per_group` most frequent survive;
2. global voting: a surviving grid's `votes` are its counts summed over the groups that kept it;
   the two best grids are attempt 1 and attempt 2.

Ties are broken deterministically, so the result never depends on the order of the candidates:
more votes, then more groups, then the higher mean log-probability of the grid's candidates (the
mean, not the sum, so that this key does not just repeat the vote count), then the grid's text
(digits, rows joined by newlines) in lexicographic order. Log-probabilities are summed with
`math.fsum`, which is exact, so their mean too is independent of order; NaN counts as -inf.

`vote_flat` is plain majority over all candidates with the same tie rules: the paper's ablation.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from testtime.arc.task import Grid

log = logging.getLogger(__name__)

GridKey = tuple[int, int, bytes]
"""(rows, columns, int8 cell bytes): a hashable identity for a grid."""


def grid_key(g: Grid) -> GridKey:
    """Hashable key of a grid: equal keys <=> same shape and same cells (any integer dtype)."""
    rows, cols = g.shape
    return rows, cols, np.ascontiguousarray(g, dtype=np.int8).tobytes()


def _grid_text(g: Grid) -> str:
    # same text as format.grid_to_text; one digit per cell makes it unique per grid
    return "\n".join("".join(str(int(v)) for v in row) for row in g)


@dataclass(frozen=True, eq=False)
class Candidate:
    """One parsed prediction, already mapped back to the original frame.

    Equality and hashing go through `grid_key` (numpy arrays are not hashable). A prediction
    that failed to parse may be built with grid None, but must be dropped with `valid` before
    voting; `vote` raises ValueError on it.
    """

    grid: Grid
    """The predicted output grid in the task's own frame."""
    transform: str
    """Transform.name of the augmentation it was predicted under."""
    group: str
    """Name of that transform's geometric part: the paper's "transformation" for voting."""
    logprob: float
    """Summed token log-probability of the generated answer."""

    def _identity(self) -> tuple:
        key = None if self.grid is None else grid_key(self.grid)
        return key, self.transform, self.group, self.logprob

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Candidate):
            return NotImplemented
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash(self._identity())


@dataclass(eq=False)
class Ranked:
    """One distinct grid with the support it got in voting."""

    grid: Grid
    """The grid."""
    votes: int
    """Candidates behind it in the groups that kept it (for a grid cut in every group: all of
    its candidates, so that the cut grids can still be ordered)."""
    groups: int
    """How many groups kept it in their top `top_per_group` (0 for a grid cut everywhere; in
    `vote_flat`, how many groups it appeared in)."""
    logprob: float
    """Mean log-probability over all the candidates that produced it."""
    transforms: list[str]
    """Transform names of all the candidates that produced it, sorted (one per candidate)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranked):
            return NotImplemented
        return (grid_key(self.grid) == grid_key(other.grid) and self.votes == other.votes
                and self.groups == other.groups and _same_float(self.logprob, other.logprob)
                and self.transforms == other.transforms)

    __hash__ = None  # mutable


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def valid(candidates: Iterable[Candidate]) -> list[Candidate]:
    """The candidates whose grid parsed (grid is not None), in their original order."""
    return [c for c in candidates if c.grid is not None]


@dataclass
class _Tally:
    """Every candidate for one distinct grid."""

    grid: Grid
    text: str
    logprobs: list[float]
    transforms: list[str]
    by_group: dict[str, int]  # group -> count of candidates in it

    @property
    def mean_logprob(self) -> float:
        return _mean(self.logprobs)


def _mean(values: list[float]) -> float:
    finite = [-math.inf if math.isnan(v) else v for v in values]
    return math.fsum(finite) / len(finite)


def _rank_key(votes: int, groups: int, logprob: float, text: str) -> tuple:
    # ascending sort: more votes, more groups, higher logprob, then smaller text first
    lp = -math.inf if math.isnan(logprob) else logprob
    return -votes, -groups, -lp, text


def _tally(candidates: Sequence[Candidate]) -> dict[GridKey, _Tally]:
    tallies: dict[GridKey, _Tally] = {}
    for i, c in enumerate(candidates):
        if c.grid is None:
            raise ValueError(f"candidate {i} ({c.transform}) has no grid; drop failed parses with valid()")
        key = grid_key(c.grid)
        tally = tallies.get(key)
        if tally is None:
            # an int8 copy: the kept grid must not depend on which candidate came first
            grid = np.array(c.grid, dtype=np.int8)
            tally = tallies[key] = _Tally(grid, _grid_text(grid), [], [], defaultdict(int))
        tally.logprobs.append(c.logprob)
        tally.transforms.append(c.transform)
        tally.by_group[c.group] += 1
    return tallies


def _kept_per_group(candidates: Sequence[Candidate], tallies: dict[GridKey, _Tally],
                    top_per_group: int) -> dict[GridKey, list[str]]:
    """Step 1: for each grid, the groups in which it is among the `top_per_group` most frequent."""
    # group -> grid key -> log-probabilities of its candidates in that group
    in_group: dict[str, dict[GridKey, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in candidates:
        in_group[c.group][grid_key(c.grid)].append(c.logprob)
    kept: dict[GridKey, list[str]] = defaultdict(list)
    for group, grids in in_group.items():
        order = sorted(grids, key=lambda k: _rank_key(len(grids[k]), 1, _mean(grids[k]), tallies[k].text))
        for key in order[:top_per_group]:
            kept[key].append(group)
    return kept


def vote(candidates: Sequence[Candidate], *, top_per_group: int = 3) -> list[Ranked]:
    """Every distinct grid, best first: the survivors of hierarchical voting, then the grids cut
    in every group. Deterministic and independent of the order of `candidates`."""
    if top_per_group < 1:
        raise ValueError(f"top_per_group must be at least 1, got {top_per_group}")
    tallies = _tally(candidates)
    kept = _kept_per_group(candidates, tallies, top_per_group)
    survivors, cut = [], []
    for key, tally in tallies.items():
        groups = kept.get(key, [])
        if groups:
            votes = sum(tally.by_group[g] for g in groups)
            survivors.append(_ranked(tally, votes, len(groups)))
        else:
            cut.append(_ranked(tally, len(tally.logprobs), 0))
    log.debug("vote: %d candidates, %d distinct grids, %d survive the per-group cut",
              len(candidates), len(tallies), len(survivors))
    return _sorted(survivors, tallies) + _sorted(cut, tallies)


def vote_flat(candidates: Sequence[Candidate]) -> list[Ranked]:
    """Plain majority over all candidates (no per-group cut), with the same tie rules."""
    tallies = _tally(candidates)
    ranked = [_ranked(t, len(t.logprobs), len(t.by_group)) for t in tallies.values()]
    return _sorted(ranked, tallies)


def _ranked(tally: _Tally, votes: int, groups: int) -> Ranked:
    return Ranked(tally.grid, votes, groups, tally.mean_logprob, sorted(tally.transforms))


def _sorted(ranked: list[Ranked], tallies: dict[GridKey, _Tally]) -> list[Ranked]:
    return sorted(ranked, key=lambda r: _rank_key(r.votes, r.groups, r.logprob, tallies[grid_key(r.grid)].text))


def pick_attempts(ranked: Sequence[Ranked], n: int = 2) -> list[Grid]:
    """The grids of the first `n` ranked entries (fewer when there are fewer)."""
    return [r.grid for r in ranked[:n]]
