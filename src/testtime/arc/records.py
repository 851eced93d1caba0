"""The record of one task of an `arc solve` run (`RUN/tasks/ID.json`): written by `arc.solve`, read by every reader.

A record that parses but does not fit (a field missing or of another type, a grid empty or ragged) is
never read: `TaskRecord.from_json` raises RecordError naming the field, a rerun recomputes the task
with a warning naming the file, and `arc report` lists the file unreadable. The keys on disk are the
field names (`testtime.records` has the rules and the file's envelope). Light on purpose (no numpy,
no torch): the report imports it.

    record = load_record(RUN / "tasks" / "007bbfb7.json", TaskRecord)
    record.tests[0].truth.bits_per_cell_after, record.tests[0].candidates[0].poe
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from testtime.records import Record

Grid = list[list[int]]
"""A grid as JSON: rows of colours 0-9."""

FULL, FALLBACK = "full", "fallback"
"""The values of a record's `path`: what produced its attempts."""


@dataclass(kw_only=True)
class Candidate(Record):
    """One distinct answer grid to a test input, with its support in the vote (`arc.vote.Ranked`) and its
    product-of-experts scores. The counts and scores may be absent in records of older versions."""

    grid: Grid
    votes: int | None = None
    """Predictions that gave this grid."""
    groups: int | None = None
    """Transform groups that kept it in their top (the vote's first key)."""
    identity: int | None = None
    """Its predictions under the identity transform (the first tie-break)."""
    logprob: float | None = None
    """Mean summed log-probability over its predictions."""
    token_logprob: float | None = None
    """Mean per-token log-probability over its predictions (the second tie-break)."""
    transforms: list[str] | None = None
    """The transform of each of its predictions, sorted."""
    poe: float | None = None
    """Its product-of-experts score (`--rank poe` or `--score-views`), else None."""
    poe_prompts: float | None = None
    """With `--score-views`: the part of `poe` under the prompts that made candidates..."""
    poe_views: float | None = None
    """...and the part under the fresh views."""


@dataclass(kw_only=True)
class Prediction(Record):
    """One parsed answer to one prompt, mapped back to the original frame."""

    candidate: int
    """Index into the test input's `candidates`."""
    transform: str
    order: int
    """The prompt's demonstration order (index)."""
    prompt: str
    """Which prompt: `all` demonstrations, or the one left out."""
    logprob: float
    tokens: int
    decoding: str | None = None
    """How it was decoded; None for greedy."""


@dataclass(kw_only=True)
class Correct(Record):
    """Against the known output: attempt 1 right, either attempt right, any candidate right."""

    attempt_1: bool
    any_attempt: bool
    oracle: bool


@dataclass(kw_only=True)
class Truth(Record):
    """The known output's bits under the model before and after TTT (None where not measured), and its rank
    among the ranked candidates (None when it is not one)."""

    bits_per_token_before: float | None
    bits_per_cell_before: float | None
    bits_per_token_after: float | None
    bits_per_cell_after: float | None
    rank: int | None


@dataclass(kw_only=True)
class TestResult(Record):
    """One test input's attempts (at most two, best first), candidates and what made them."""

    __test__: ClassVar[bool] = False  # not a pytest test class

    attempts: list[Grid]
    selection: list[int] | None = None
    """Candidate indices in the ranked order the attempts were taken from."""
    candidates: list[Candidate]
    score_views: list[str] | None = None
    """With `--score-views`: the fresh views every candidate was scored under."""
    predictions: list[Prediction] | None = None
    prompts: int | None = None
    unparsed: int | None = None
    unfit: int | None = None
    truth: Truth | None = None
    correct: Correct | None = None
    fallback: Literal["greedy", "input"] | None = None
    """On a fallback record: what made attempt 1 (`arc.fallback`)."""
    padded: int | None = None
    """Attempts a full record took from its task's fallback, having parsed fewer than two grids."""


@dataclass(kw_only=True)
class TTTStats(Record):
    """A task's test-time training: its data and its run (the counts absent when there was none)."""

    enabled: bool
    shared: bool
    sequences: int | None = None
    fits: bool | None = None
    fallback: str | None = None
    """What the data builder fell back to when the demonstrations did not fit (`arc.ttt_data`)."""
    dropped_demos: int | None = None
    data_seconds: float | None = None
    steps: int | None = None
    tokens: int | None = None
    seconds: float | None = None
    tokens_per_s: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    losses: list[float] | None = None

    @property
    def total_seconds(self) -> float:
        """Training and building its data; 0 without TTT."""
        return (self.seconds or 0.0) + (self.data_seconds or 0.0)


@dataclass(kw_only=True)
class PredictStats(Record):
    """A task's inference, over its test inputs."""

    seconds: float
    prompts: int
    unparsed: int
    unfit: int


@dataclass(kw_only=True)
class Cut(Record):
    """On a fallback record: where the deadline cut the task's full path, and after how long."""

    at: str
    seconds: float


@dataclass(kw_only=True)
class TaskRecord(Record):
    """One task of a run: `ok` (TTT, inference and its tests' results) or `failed` (its error; its tests
    hold the fallback's attempts under a time budget, else none)."""

    task_id: str
    status: Literal["ok", "failed"]
    error: str | None = None
    traceback: str | None = None
    path: Literal["full", "fallback"] | None = None
    """What made the attempts (`arc.fallback`); None in records from before there was a fallback (full)."""
    fits: bool | None = None
    """Whether the task's prompts fit the context (ok records)."""
    ttt: TTTStats | None = None
    predict: PredictStats | None = None
    tests: list[TestResult]
    seconds: float
    cut: Cut | None = None

    required_when: ClassVar[dict[str, tuple[str, ...]]] = {"ok": ("fits", "ttt", "predict"),
                                                            "failed": ("error", "traceback")}

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def is_fallback(self) -> bool:
        """A finished fallback record: a result that a run with time for the full path replaces."""
        return self.ok and self.path == FALLBACK

    @property
    def scored(self) -> bool:
        """Every test input was marked against a known output."""
        return bool(self.tests) and all(t.correct is not None for t in self.tests)

    def score(self, key: str = "any_attempt") -> float | None:
        """The share of test inputs right by `key` (a `Correct` field; ARC's task score), None when unscored."""
        if not self.scored:
            return None
        return sum(bool(getattr(t.correct, key)) for t in self.tests) / len(self.tests)

    @classmethod
    def more_problems(cls, data: dict[str, Any]) -> list[str]:
        return [f"record.tests[{i}]: a grid is empty or ragged" for i, test in enumerate(data["tests"])
                if not all(_rectangular(g) for g in test["attempts"] + [c["grid"] for c in test["candidates"]])][:1]


def _rectangular(grid: list[list[int]]) -> bool:
    return bool(grid) and bool(grid[0]) and all(len(row) == len(grid[0]) for row in grid)
