"""The settings of ARC commands: TTT data, inference, pretraining sampling, and the configs of
`arc solve` and `arc pretrain` that mount them (each setting declared once, `testtime.config.setting`).

Kept apart from the code that uses them so that the CLI can build its options without importing torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from testtime.arc.transforms import EXTRA_AUGMENTATIONS, Resize
from testtime.config import Dtype, as_json, at_least, dtype_setting, group, model_setting, setting
from testtime.settings import LoraArgs, TrainArgs


@dataclass
class TTTArgs:
    """How to build one task's test-time-training sequences."""

    n_sequences: int = setting(32, flag="sequences", help="Training sequences per task (leave-one-out x "
                               "transforms).")
    formats: Literal["icl", "e2e", "both"] = setting("icl", flag="format", help="icl (leave-one-out with context "
                                                     "demos), e2e (each demo alone), or both mixed.")
    geometric: bool = setting(True, help="Augment with the 8 rotations/flips.")
    colors: bool = setting(True, help="Augment with random colour permutations.")
    keep_zero: bool = True
    """Colour permutations leave the background colour 0 in place."""
    demo_order: bool = setting(True, help="Augment by shuffling the order of the context demos.")
    loss_on: Literal["answer", "outputs"] = setting("answer", help="Loss on the query's output only (`answer`) or "
                                                    "also on every demo output after the first (`outputs`).")
    leave_two_out: bool = setting(False, help="Top leave-one-out up with leave-two-out tasks when it falls short of "
                                  "the sequences.")
    augmentations: tuple[str, ...] = setting((), flag="augment", help="Size changes drawn besides the symmetries, "
                                             "comma-separated: upscale, tile.")
    size_augment_prob: float = setting(0.5, flag="size-prob", help="With size augmentations: the probability, in "
                                       "[0, 1], that an augmented sequence gets a size change (one of them, "
                                       "uniformly; none when a grid would exceed 30x30). The authors': about half.")
    max_len: int = setting(2048, help="Maximum tokens per training sequence; context demos are dropped to fit.")
    seed: int = 0
    """Seed for transforms and demo dropping (mixed with the task id)."""

    def check(self) -> Iterator[tuple[str, str]]:
        yield from at_least("n_sequences", self.n_sequences, 1)
        yield from at_least("max_len", self.max_len, 1)
        unknown = [a for a in self.augmentations if a not in EXTRA_AUGMENTATIONS]
        if unknown:
            yield "augmentations", f"has no {', '.join(unknown)}; choose from {', '.join(EXTRA_AUGMENTATIONS)}"
        if not 0 <= self.size_augment_prob <= 1:  # also catches NaN
            yield "size_augment_prob", f"must be in [0, 1], not {self.size_augment_prob}"

    def extras(self) -> list[Resize]:
        """Every size change the `augmentations` families hold, in a fixed order."""
        return [r for name in self.augmentations for r in EXTRA_AUGMENTATIONS[name]]

    def n_augmentations(self) -> int:
        """What leave-one-out is multiplied by before a leave-two-out top-up: symmetries x (1 + size changes)."""
        return (8 if self.geometric else 1) * (1 + len(self.extras()))


@dataclass
class InferArgs:
    """How to predict a task's test inputs."""

    transforms: Literal["geometric", "geometric+color"] = setting(
        "geometric", help="`geometric` (the 8 symmetries) or `geometric+color` (also colour-permuted copies, 0 "
        "fixed, of each).")
    n_color: int = 1
    """Random colour permutations per symmetry under geometric+color."""
    demo_order: bool = True
    """Shuffle the demonstrations' order per transform (seeded)."""
    orders: int = setting(1, help="Demonstration orders per transform and left-out demo (each its own prompt; "
                          "beyond the first they are random).")
    prompts: Literal["full", "leave-one-out", "both"] = setting(
        "full", flag="infer-prompts", help="Prompts with every demo (`full`), one per left-out demo "
        "(`leave-one-out`: n-1 demos, the format TTT trains on; a task with one demo keeps it) or `both`.")
    select: Literal["vote", "poe", "vote+poe"] = setting(
        "vote", flag="rank", help="How the two attempts are ranked: `vote` (hierarchical), `poe` (product of "
        "experts over the views) or `vote+poe` (groups first, then PoE).")
    score_views: int = setting(0, help="PoE: also score every candidate under this many fresh views (random "
                               "symmetry, colours and demo order of the whole task), summed into its score; the "
                               "scores are recorded even when ranking by vote.")
    sampling: Literal["greedy", "dfs"] = setting(
        "greedy", help="`greedy` (one answer per prompt) or `dfs` (every answer of probability >= the min-prob, "
        "Franzen et al. 2025; one prompt at a time).")
    min_prob: float = setting(0.1, help="Under dfs sampling: the probability an answer needs, in (0, 1] (at most "
                              "1/min-prob answers per prompt).")
    max_new_tokens: int = setting(931, help="Decoding bound per answer (931: a 30x30 grid, 30 rows x (30 digits + "
                                  "newline) + the end marker).")
    batch_size: int = setting(8, flag="infer-batch-size", help="Prompts decoded together.")
    max_len: int = setting(8192, help="Bound on prompt + answer tokens; random context demos are dropped until a "
                           "prompt fits.")
    seed: int = 0
    """Seeds colour permutations, demonstration orders and demo dropping (mixed with the task id)."""

    def check(self) -> Iterator[tuple[str, str]]:
        for name in ("n_color", "orders", "max_new_tokens", "batch_size", "max_len"):
            yield from at_least(name, getattr(self, name), 1)
        yield from at_least("score_views", self.score_views, 0)
        if not 0 < self.min_prob <= 1:  # also catches NaN
            yield "min_prob", f"must be in (0, 1], not {self.min_prob}"


@dataclass
class SamplerArgs:
    """How in-context pretraining tasks are drawn."""

    min_demos: int = setting(2, help="Fewest demonstrations before the query (fewer only when the task has too "
                             "few examples).")
    max_demos: int = setting(5, help="Most demonstrations before the query.")
    max_len: int = setting(2048, help="Maximum tokens per sequence: demonstrations are dropped until it fits (at "
                           "least one stays).")
    geometric: bool = True
    """Augment with the 8 rotations/flips."""
    colors: bool = setting(True, help="Augment with random colour permutations.")
    keep_zero: bool = True
    """Colour permutations leave the background colour 0 in place."""
    loss_on: Literal["answer", "outputs", "later-outputs"] = setting(
        "outputs", help="Loss on every demo's output too (`outputs`), on every output after the first demo's "
        "(`later-outputs`: nothing before the first shows the rule, as in the TTT paper's training), or on the "
        "query's output only (`answer`).")
    seed: int = 0
    """Sequence i is drawn from numpy's generator seeded with (seed, i)."""


@dataclass
class SolveConfig:
    model: str = model_setting()
    adapter: str | None = setting(None, panel="Model", help="Peft adapter dir merged into the base before TTT "
                                  "(default: the adapter shipped for the model, if any).")
    dtype: Dtype = dtype_setting()
    seed: int = setting(0, panel="Model", help="Run seed: each task's seed derives from it and the task id, so "
                        "order and resume don't matter.")
    ttt: bool = setting(True, panel="TTT", help="Test-time train a LoRA per task.")
    shared: bool = setting(False, panel="TTT", help="Train ONE LoRA on all tasks' TTT data instead of one per task "
                           "(the paper's Shared-TTT baseline).")
    shared_then_task: bool = setting(False, panel="TTT", help="Shared-then-per-task: ONE LoRA on all tasks' TTT data "
                                     "first (transductive), merged into the base, then a fresh LoRA per task on top.")
    lora: LoraArgs = group(LoraArgs, prefix="lora-", panel="LoRA")
    """The LoRA trained at test time."""
    train: TrainArgs = group(TrainArgs, prefix="ttt-", panel="TTT",
                             expose=("lr", "epochs", "batch_size", "grad_accum", "schedule", "warmup_steps",
                                     "weight_decay", "gradient_checkpointing"))
    """The optimiser and schedule of test-time training (its seed is the task's)."""
    data: TTTArgs = group(TTTArgs, prefix="ttt-", panel="TTT")
    """How TTT sequences are built from a task."""
    infer: InferArgs = group(InferArgs, panel="Inference")
    """Augmented inference: transforms, prompts, decoding, ranking."""

    @property
    def trains_shared(self) -> bool:
        """Whether one LoRA is trained on every task's data first (--shared, --shared-then-task)."""
        return self.ttt and (self.shared or self.shared_then_task)

    @property
    def per_task(self) -> bool:
        """Whether each task trains its own LoRA (the default, and after the shared one with --shared-then-task)."""
        return self.ttt and not self.shared

    def check(self) -> Iterator[tuple[str, str]]:
        if self.shared and self.shared_then_task:
            yield "shared_then_task", "trains the shared LoRA first itself, then one per task; give it without " \
                                      "--shared (which trains the shared one only)"

    def to_json(self) -> dict[str, Any]:
        return as_json(self)


@dataclass
class PretrainLora(LoraArgs):
    """The pretraining adapter: a LoRA, or with rank 0 full fine-tuning, shipped as a LoRA extracted from the
    weight change (`testtime.extract`)."""

    r: int = setting(16, flag="rank", help="LoRA rank; 0 = full fine-tuning of every weight, shipped as a LoRA of "
                     "rank --extract-rank (a truncated SVD of each target module's change).")

    def check(self) -> Iterator[tuple[str, str]]:
        for name, message in super().check():
            if name != "r" or self.r != 0:
                yield name, (f"must be 0 (full fine-tuning) or at least 1, not {self.r}" if name == "r" else message)


@dataclass
class PretrainConfig:
    """Everything that determines a pretraining run (saved as OUT/config.json)."""

    model: str = model_setting()
    dtype: Dtype = dtype_setting()
    init_adapter: str | None = setting(None, panel="Model", help="Start the LoRA from this adapter directory (same "
                                       "rank, alpha and targets); fresh optimizer and schedule; its lineage goes in "
                                       "card.json.")
    continue_schedule: bool = setting(False, panel="Model", help="With --init-adapter: carry on the planned "
                                      "schedule. --steps is then the total of every stage; this stage starts at "
                                      "the step its lineage reached, on the data stream's next sequences, with a "
                                      "fresh optimizer whose learning rate ramps up again over --warmup steps.")
    allow_evaluation: bool = setting(False, panel="Data", help="Allow ARC evaluation-set tasks in the training data.")
    sources: list[str] = field(default_factory=list)
    """Where the training examples came from (recorded; `load_examples` reads them)."""
    lora: LoraArgs = group(PretrainLora, prefix="lora-", panel="LoRA", expose=("r", "alpha", "target_modules"))
    """Adapter shape (rank 16 on every projection of SmolLM2-135M is 4.9M parameters, 19.5 MB in float32)."""
    extract_rank: int = setting(64, panel="LoRA", help="Full fine-tuning (--lora-rank 0): the rank of the LoRA "
                                "extracted from the weight change, which is what the run writes.")
    train_token_rows: bool = setting(False, panel="LoRA", help="Also train the embedding rows (and, when tied, head "
                                     "rows) of the tokens the ARC format uses.")
    train: TrainArgs = group(lambda: TrainArgs(lr=2e-4, max_steps=1000, warmup_steps=50, grad_accum=4, log_every=0),
                             panel="Training", also={"seed": ("data.seed",)},
                             expose=("max_steps", "lr", "warmup_steps", "batch_size", "grad_accum", "seed",
                                     "gradient_checkpointing"))
    """Optimisation: `max_steps` is the length of the run; `--seed` also seeds the data stream."""
    data: SamplerArgs = group(SamplerArgs, panel="Data", expose=("min_demos", "max_demos", "max_len", "colors",
                                                                 "loss_on"))
    """How in-context tasks are sampled."""
    val_tasks: int = setting(8, panel="Validation", help="Whole tasks held out of training for the validation loss.")
    val_sequences: int = setting(32, panel="Validation", help="Validation sequences, drawn once from the held-out "
                                 "tasks.")
    val_every: int = setting(100, panel="Validation", help="Validation loss every N steps (and at the last step).")
    checkpoint_every: int = setting(100, panel="Run directory", help="Checkpoint every N steps (and at the last "
                                    "step).")
    keep_checkpoints: int = 2
    """Newest checkpoints kept on disk."""
    max_minutes: float | None = setting(None, runtime=True, panel="Run directory", help="Stop after the last step "
                                        "that ends within M minutes; the adapter and card are still written (run "
                                        "again to continue).")

    def check(self) -> Iterator[tuple[str, str]]:
        if self.train.max_steps is None:
            yield "train.max_steps", "must be set (the length of the run)"
        if self.init_adapter is not None and not (Path(self.init_adapter) / "adapter_config.json").is_file():
            yield "init_adapter", f"{self.init_adapter}: no adapter_config.json there; give a directory written by " \
                                  "`testtime arc pretrain`"
        if self.continue_schedule and self.init_adapter is None:
            yield "continue_schedule", "needs --init-adapter (the adapter whose schedule goes on)"
        yield from at_least("extract_rank", self.extract_rank, 1)
        if self.lora.r == 0 and self.init_adapter is not None:
            yield "init_adapter", "full fine-tuning (--lora-rank 0) starts from the base model; give a LoRA rank " \
                                  "to continue an adapter"
        if self.lora.r == 0 and self.train_token_rows:
            yield "train_token_rows", "applies to a LoRA; full fine-tuning (--lora-rank 0) trains every weight"
        if self.max_minutes is not None and not (self.max_minutes > 0 and self.max_minutes < float("inf")):
            yield "max_minutes", f"must be a positive number of minutes, not {self.max_minutes}"
        for name in ("val_every", "checkpoint_every", "val_tasks", "val_sequences"):
            yield from at_least(name, getattr(self, name), 1)
        yield from at_least("data.min_demos", self.data.min_demos, 1)
        if self.data.max_demos < self.data.min_demos:
            yield "data.max_demos", f"must be at least the fewest demonstrations ({self.data.min_demos}), " \
                                    f"not {self.data.max_demos}"
