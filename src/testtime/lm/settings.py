"""The settings of `lm eval`: selection and per-prompt fine-tuning (each declared once,
`testtime.config.setting`), kept apart from the code that uses them so that the CLI can build its
options without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from testtime.config import Dtype, at_least, dtype_setting, group, in_range, model_setting, positive, setting
from testtime.settings import LoraArgs

Method = Literal["none", "nn", "sift", "nn-repeats", "random", "us"]
"""The selectors of `lm eval --select`."""


@dataclass
class PromptTTT:
    """Selection and fine-tuning settings for every prompt."""

    select: Method = setting("sift", short="s", panel="Selection", help="How chunks are picked: none (the untouched "
                             "model), nn, sift, nn-repeats (NN-F), us (uncertainty sampling) or random.")
    n: int = setting(50, flag="steps", panel="Selection", help="Chunks selected = optimizer steps per prompt (the "
                     "paper: 50).")
    k: int = setting(200, panel="Selection", help="Candidates faiss hands to the selector (top-K by |<x, x*>|).")
    lam: float = setting(0.01, panel="Selection", help="SIFT's lambda (large: nearest neighbours with repeats; "
                         "small: never a duplicate).")
    stop_below: float | None = setting(None, panel="Selection", help="Adaptive SIFT: no more picks (nor steps) once "
                                       "sigma_n < this.")
    min_gain: float | None = setting(None, panel="Selection", help="Adaptive SIFT: stop once a pick would cut sigma "
                                     "by less than this share.")
    adaptive: float | None = setting(None, panel="Selection", help="Adaptive SIFT's alpha (the paper's rule): take "
                                     "step n only while sigma_n <= 1/(alpha n).")
    lr: float = setting(5e-4, panel="Fine-tuning", help="Learning rate of the per-prompt steps (constant).")
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimizer of the per-prompt steps (the paper: Adam)."""
    chunk_tokens: int = setting(1024, panel="Fine-tuning", help="A selected chunk is cut to this many tokens before "
                                "its step.")
    context: int = setting(2048, panel="Fine-tuning", help="Most tokens of prompt + continuation when measuring bits "
                           "per byte.")
    seed: int = setting(0, panel="Fine-tuning", help="Adapter init and random selection (mixed with the prompt id).")
    trace: bool = setting(False, panel="Fine-tuning", help="Also measure the continuation's bits after every step "
                          "(the record's bits_at_step): with --select sift, what adaptive SIFT reaches at any alpha "
                          "(its steps are a prefix of these). One more forward pass per step.")

    def check(self) -> Iterator[tuple[str, str]]:
        for name in ("n", "k", "chunk_tokens", "context"):
            yield from at_least(name, getattr(self, name), 1)
        yield from positive("lam", self.lam)
        yield from positive("lr", self.lr)
        yield from at_least("stop_below", self.stop_below, 0)
        yield from in_range("min_gain", 0.0 if self.min_gain is None else self.min_gain, 0.0, 1.0)
        yield from positive("adaptive", self.adaptive)
        for name in ("stop_below", "min_gain", "adaptive"):
            if getattr(self, name) is not None and self.select != "sift":
                yield name, f"applies to --select sift only, not {self.select}"

    @property
    def method(self) -> str:
        """The method's name in tables and run directories: the selector, `sift-adaptive` with alpha."""
        return f"{self.select}-adaptive" if self.adaptive is not None else self.select


@dataclass
class PromptLora(LoraArgs):
    """The per-prompt fine-tuning: a LoRA of rank r and alpha 2r, or with r = 0 every base weight (full
    fine-tuning)."""

    r: int = setting(16, flag="rank", help="Rank of the per-prompt LoRA (alpha = 2 x rank); 0 = full fine-tuning, "
                     "the base weights restored after each prompt.")

    def __post_init__(self) -> None:
        self.alpha = 2 * self.r

    def check(self) -> Iterator[tuple[str, str]]:
        if self.r == 0:  # full fine-tuning: alpha, dropout and the target modules do not apply
            return
        for name, message in super().check():
            yield name, (f"must be 0 (full fine-tuning) or at least 1, not {self.r}" if name == "r" else message)


@dataclass
class EvalConfig:
    """Everything that determines one selector's results (saved in its run directory)."""

    model: str = model_setting()
    dtype: Dtype = dtype_setting()
    index: str | None = setting(None, short="i", panel="Selection", help="Memory built by `testtime lm index` (not "
                                "for --select none).")
    prompts: str = ""
    """The prompts file."""
    lora: LoraArgs = group(PromptLora, prefix="lora-", panel="Fine-tuning", expose=("r",))
    """The per-prompt LoRA (alpha = 2 x rank); rank 0 = full fine-tuning (PromptLora)."""
    ttt: PromptTTT = group(PromptTTT)
    """Selection and fine-tuning per prompt."""

    def check(self) -> Iterator[tuple[str, str]]:
        if self.ttt.select != "none" and self.index is None:
            yield "index", f"is needed by --select {self.ttt.select} (a memory from `testtime lm index`)"
