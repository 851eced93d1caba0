"""The record of one prompt of an `lm eval` run (`OUT/METHOD/results/ID.json`): written by `lm.evaluate`, read
by the summary, `lm compare` and the report.

An ok record holds the prompt's bits after fine-tuning and what the selection did; a failed one its
error. A record that parses but does not fit is never read (`PromptResult.from_json` raises RecordError
naming the field; a rerun runs the prompt again, the readers count it unusable). The keys on disk are
the field names, plus `bpb` (bits / bytes) for readers of the files; `testtime.records` has the rules
and the file's envelope. Light on purpose (no numpy, no torch): the report imports it.

    result = load_record(OUT / "sift" / "results" / "p1.json", PromptResult)
    result.bpb, result.var_before - result.var_after
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from testtime.records import Record, required

RENAMED_SETTINGS = {"config.ttft.": "config.ttt."}
"""Keys of an `lm eval` run's settings (config.json) renamed since (old prefix -> new): the run directory
and its records are read as if written with today's names (`jobs.rundir.RunDir(renamed=...)`)."""


@dataclass(kw_only=True)
class PromptResult(Record):
    """One prompt's outcome (`lm.ttt.ttt_prompt`); None where a field does not apply (a failed prompt, or
    `select none`) or a record of an older version lacks it."""

    prompt_id: str
    domain: str
    select: str | None = None
    """The selector (`none`, `nn`, `sift`, ...)."""
    bits: float | None = None
    """-sum log2 p of the continuation after fine-tuning (before, for `none`)."""
    bytes: int | None = None
    """UTF-8 bytes of the continuation."""
    picks: list[int] | None = None
    """Memory positions selected, in order (repeats possible)."""
    sigmas: list[float] | None = None
    """sigma_n after each pick (the prompt's remaining uncertainty)."""
    sigma_before: list[float] | None = None
    """The prompt's sigma before each step: [sigma_0, sigma_1, ..., sigma_{n-1}]."""
    sigma_after: list[float] | None = None
    """The prompt's sigma after each step: [sigma_1, ..., sigma_n] (the same as `sigmas`)."""
    var_before: float | None = None
    """sigma_0^2, the prompt's posterior variance before selection (None for `none`)."""
    var_after: float | None = None
    """sigma_n^2 after the last pick (sigma_0^2 when nothing was picked; None for `none`)."""
    stopped: str | None = None
    """Rule that ended selection early: stop_below, min_gain, adaptive; None if all N were taken."""
    stopped_at: int | None = None
    """Steps taken when a stopping rule fired (the step it stopped at); None if it did not."""
    method: str | None = None
    """`select`, or `sift-adaptive` with --adaptive (the column name in `lm compare`)."""
    select_ms: float | None = None
    """Selection time (the selector on the K candidates; search time excluded)."""
    nn_select_ms: float | None = None
    """Time nearest-neighbour selection takes on the same candidates (the baseline's cost)."""
    search_ms: float | None = None
    """faiss time to find the K candidates."""
    train_s: float | None = None
    steps: int | None = None
    tokens: int | None = None
    bits_at_step: list[float] | None = None
    """With --trace: the continuation's bits after 0, 1, ..., `steps` optimizer steps (the last is `bits`)."""
    status: Literal["ok", "failed"] = required("ok")
    seconds: float = required(0.0)
    """Wall time of the prompt, set by the job that ran it."""
    error: str | None = None
    traceback: str | None = None

    required_when: ClassVar[dict[str, tuple[str, ...]]] = {
        "ok": ("bits", "bytes", "steps", "select_ms", "nn_select_ms"), "failed": ("error",)}

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def bpb(self) -> float:
        """Bits per byte of the continuation (an ok record's)."""
        assert self.bits is not None and self.bytes, f"prompt {self.prompt_id}: no bits per byte ({self.status})"
        return self.bits / self.bytes

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        return {**out, "bpb": self.bpb} if self.bits is not None and self.bytes else out

    @classmethod
    def more_problems(cls, data: dict[str, Any]) -> list[str]:
        if data["status"] == "ok" and data["bytes"] < 1:
            return [f"record.bytes: {data['bytes']}, not a positive count"]
        return []
