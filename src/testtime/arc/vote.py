"""Hierarchical voting over augmented predictions (Akyurek et al. 2024, "augmented inference").

A task's test input is predicted under many invertible transforms (and, per transform, several
demonstration orders and leave-one-out prompts); each parsed answer is mapped back to the
original frame and becomes a `Candidate`. Voting then runs in two steps:

1. intra-transformation voting: candidates are grouped by `group` (the geometric transformation
   they were predicted under); within a group identical grids (same shape and cells) are counted
   and only the `top_per_group` most frequent survive (ties: the higher mean per-token
   log-probability, then the grid's text);
2. global voting: a grid's rank is the number of groups that kept it. Ties go to the grid the
   identity transformation predicted more often, then to the higher mean *per-token*
   log-probability of its candidates (per token, so that small grids are not favoured), then to
   the grid's text (digits, rows joined by newlines) in lexicographic order.

The two best grids are attempt 1 and attempt 2. Grids cut in every group (kept by 0 groups)
follow the survivors in the same order. The result never depends on the order of the
candidates: log-probabilities are summed with `math.fsum`, which is exact; NaN counts as -inf.

`vote_flat` is plain majority over all candidates with the same tie rules: the paper's ablation.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from testtime.arc import records
from testtime.arc.task import Grid

log = logging.getLogger(__name__)

GridKey = tuple[int, int, bytes]
"""(rows, columns, int8 cell bytes): a hashable identity for a grid."""

IDENTITY_GROUP = "identity"
"""The group of the untransformed frame: the global tie-break prefers its predictions."""


def grid_key(g: Grid) -> GridKey:
    """Hashable key of a grid: equal keys <=> same shape and same cells (any integer dtype)."""
    rows, cols = g.shape
    return rows, cols, np.ascontiguousarray(g, dtype=np.int8).tobytes()


def grid_text(g: Grid) -> str:
    """Same text as format.grid_to_text; one digit per cell makes it unique per grid."""
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
    tokens: int = 0
    """Generated answer tokens (end marker included); 0 when unknown (per-token = summed then)."""
    order: int = 0
    """Which demonstration order of its transform the prompt used (0-based)."""
    prompt: str = "all"
    """The prompt's demonstrations: `all`, or `loo:J` with demonstration J left out."""
    decoding: str = "greedy"
    """How the prompt's answer was found: `greedy`, or `dfs:K`, the K-th most probable (0-based) of its
    depth-first sampling answers."""

    @property
    def token_logprob(self) -> float:
        """Mean log-probability per generated token."""
        return self.logprob / self.tokens if self.tokens > 0 else self.logprob

    def _identity(self) -> tuple:
        key = None if self.grid is None else grid_key(self.grid)
        return key, self.transform, self.group, self.logprob, self.tokens, self.order, self.prompt, self.decoding

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
    """All the candidates that produced it."""
    groups: int
    """How many groups kept it in their top `top_per_group` (in `vote_flat`: how many groups it appeared in)."""
    identity: int
    """Its candidates in the identity group (the first tie-break)."""
    logprob: float
    """Mean summed log-probability over its candidates."""
    token_logprob: float
    """Mean per-token log-probability over its candidates (the second tie-break)."""
    transforms: list[str]
    """Transform names of all the candidates that produced it, sorted (one per candidate)."""

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Ranked):
            return NotImplemented
        return (grid_key(self.grid) == grid_key(other.grid) and self.votes == other.votes
                and self.groups == other.groups and self.identity == other.identity
                and _same_float(self.logprob, other.logprob)
                and _same_float(self.token_logprob, other.token_logprob) and self.transforms == other.transforms)

    __hash__ = None  # mutable

    @property
    def text(self) -> str:
        return grid_text(self.grid)

    def record(self, poe: float | None = None, parts: tuple[float, float] | None = None) -> records.Candidate:
        """This grid as a task record's candidate, with its PoE score and, with score views, its parts (under the
        prompts that made candidates, under the fresh views)."""
        poe_prompts, poe_views = parts if parts is not None else (None, None)
        return records.Candidate(grid=self.grid.tolist(), votes=self.votes, groups=self.groups, identity=self.identity,
                                 logprob=self.logprob, token_logprob=self.token_logprob, transforms=self.transforms,
                                 poe=poe, poe_prompts=poe_prompts, poe_views=poe_views)


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
    token_logprobs: list[float]
    transforms: list[str]
    by_group: dict[str, int]  # group -> count of candidates in it


def _mean(values: list[float]) -> float:
    finite = [-math.inf if math.isnan(v) else v for v in values]
    return math.fsum(finite) / len(finite)


def _finite(x: float) -> float:
    return -math.inf if math.isnan(x) else x


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
            tally = tallies[key] = _Tally(grid, grid_text(grid), [], [], [], defaultdict(int))
        tally.logprobs.append(c.logprob)
        tally.token_logprobs.append(c.token_logprob)
        tally.transforms.append(c.transform)
        tally.by_group[c.group] += 1
    return tallies


def _kept_groups(candidates: Sequence[Candidate], tallies: dict[GridKey, _Tally],
                 top_per_group: int) -> dict[GridKey, int]:
    """Step 1: for each grid, in how many groups it is among the `top_per_group` most frequent."""
    # group -> grid key -> per-token log-probabilities of its candidates in that group
    in_group: dict[str, dict[GridKey, list[float]]] = defaultdict(lambda: defaultdict(list))
    for c in candidates:
        in_group[c.group][grid_key(c.grid)].append(c.token_logprob)
    kept: dict[GridKey, int] = defaultdict(int)
    for grids in in_group.values():
        order = sorted(grids, key=lambda k: (-len(grids[k]), -_finite(_mean(grids[k])), tallies[k].text))
        for key in order[:top_per_group]:
            kept[key] += 1
    return kept


def rank_key(r: Ranked) -> tuple:
    """Ascending sort key of the global vote: more groups, more identity predictions, higher
    per-token log-probability, then the smaller text."""
    return -r.groups, -r.identity, -_finite(r.token_logprob), r.text


def vote(candidates: Sequence[Candidate], *, top_per_group: int = 3) -> list[Ranked]:
    """Every distinct grid, best first by `rank_key` after the per-group cut. Deterministic and
    independent of the order of `candidates`."""
    if top_per_group < 1:
        raise ValueError(f"top_per_group must be at least 1, got {top_per_group}")
    tallies = _tally(candidates)
    kept = _kept_groups(candidates, tallies, top_per_group)
    ranked = [_ranked(tally, kept.get(key, 0)) for key, tally in tallies.items()]
    log.debug("vote: %d candidates, %d distinct grids, %d survive the per-group cut",
              len(candidates), len(tallies), sum(r.groups > 0 for r in ranked))
    return sorted(ranked, key=rank_key)


def vote_flat(candidates: Sequence[Candidate]) -> list[Ranked]:
    """Plain majority over all candidates (no per-group cut), then the same tie rules."""
    ranked = [_ranked(t, len(t.by_group)) for t in _tally(candidates).values()]
    return sorted(ranked, key=lambda r: (-r.votes, *rank_key(r)[1:]))


def _ranked(tally: _Tally, groups: int) -> Ranked:
    return Ranked(tally.grid, len(tally.logprobs), groups, tally.by_group.get(IDENTITY_GROUP, 0),
                  _mean(tally.logprobs), _mean(tally.token_logprobs), sorted(tally.transforms))


def selection(ranked: Sequence[Ranked], how: str = "vote", poe: Sequence[float] | None = None) -> list[int]:
    """Indices into `ranked` (a `vote` result) in the order attempts are taken.

    vote: the vote's order; poe: the higher product-of-experts score first (`poe[i]` for
    `ranked[i]`), ties in the vote's order; vote+poe: more groups first, then the PoE score.
    """
    if how == "vote":
        return list(range(len(ranked)))
    if poe is None or len(poe) != len(ranked):
        raise ValueError(f"selection {how!r} needs one PoE score per ranked grid")
    if how == "poe":
        return sorted(range(len(ranked)), key=lambda i: (-_finite(poe[i]), i))
    if how == "vote+poe":
        return sorted(range(len(ranked)), key=lambda i: (-ranked[i].groups, -_finite(poe[i]), i))
    raise ValueError(f"unknown selection {how!r}; expected vote, poe or vote+poe")


def pick_attempts(ranked: Sequence[Ranked], n: int = 2) -> list[Grid]:
    """The grids of the first `n` ranked entries (fewer when there are fewer)."""
    return [r.grid for r in ranked[:n]]
