"""The settings of the core: the LoRA's shape and the optimisation of one fine-tuning run.

Kept apart from the code that uses them (`finetune`, `lora`) so that the CLI can build its options
from them without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from testtime.config import at_least, in_range, positive, setting


@dataclass
class LoraArgs:
    """LoRA hyper-parameters (the same for every task adapter)."""

    r: int = setting(16, flag="rank", help="LoRA rank: of the update B @ A.")
    alpha: int = setting(32, help="LoRA alpha: the update is multiplied by alpha / rank.")
    dropout: float = setting(0.0, help="LoRA dropout on the adapter's input during training.")
    target_modules: tuple[str, ...] = setting(
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), flag="targets",
        help="Comma-separated module names that get a LoRA; names the model lacks are skipped with a warning.")

    def check(self) -> Iterator[tuple[str, str]]:
        yield from at_least("r", self.r, 1)
        yield from positive("alpha", self.alpha)
        yield from in_range("dropout", self.dropout, 0.0, 1.0)
        if not self.target_modules:
            yield "target_modules", "names no module"


@dataclass
class TrainArgs:
    """Optimisation settings of one `train` call."""

    lr: float = setting(1e-4, help="Peak learning rate.")
    epochs: int = setting(1, help="Passes over the training sequences (ignored when the steps are set).")
    max_steps: int | None = setting(None, flag="steps", help="Optimizer steps; overrides the epochs (the data is "
                                    "cycled, reshuffled each pass).")
    batch_size: int = setting(1, help="Sequences per micro-batch (one forward/backward; length-grouped).")
    grad_accum: int = setting(1, help="Micro-batches per optimizer step.")
    schedule: Literal["cosine", "linear", "constant"] = setting("cosine", help="Learning-rate decay after warm-up: "
                                                                "cosine, linear or constant.")
    warmup_steps: int = setting(0, flag="warmup", help="Steps of linear warm-up from lr/(warmup+1) to lr.")
    weight_decay: float = setting(0.0, help="Weight decay: decoupled for AdamW, L2 for Adam and SGD.")
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"
    """Optimizer; SGD is plain (no momentum)."""
    seed: int = setting(0, help="Seeds batch order and dropout: same inputs + same seed on CPU give bit-identical "
                        "results.")
    group_by_length: bool = True
    """Batch sequences of similar length together so padding wastes little compute."""
    log_every: int = 10
    """Log one line every this many steps (and at the last step); 0 = never."""
    gradient_checkpointing: bool = setting(False, help="Recompute activations in the backward pass: less memory, "
                                           "about 30% slower.")

    def check(self) -> Iterator[tuple[str, str]]:
        yield from positive("lr", self.lr)
        for name in ("epochs", "batch_size", "grad_accum"):
            yield from at_least(name, getattr(self, name), 1)
        yield from at_least("max_steps", self.max_steps, 1)
        for name in ("warmup_steps", "weight_decay", "max_grad_norm", "log_every"):
            yield from at_least(name, getattr(self, name), 0)
