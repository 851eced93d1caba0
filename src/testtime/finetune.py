"""THE fine-tuning loop, used by ARC test-time training, pretraining and LM test-time fine-tuning.

    host = AdapterHost(model, LoraArgs(r=16))        # testtime.lora: the base wrapped once
    host.fresh(seed=0)                               # a new task adapter; only it trains
    stats = train(host.model, sequences, TrainArgs(lr=1e-4, epochs=2))

`train` is one plain loop: right-padded micro-batches, `grad_accum` of them per optimizer step, the
loss a mean over every labelled token of the step (labels are -100 where there is no loss). Data
is a list of sequences (shuffled into batches, epoch after epoch) or a stream of ready
micro-batches (pretraining). A run can stop after any step and resume from `start_step` with the
optimizer state: the learning rate and the dropout seed are functions of the step alone.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import numpy as np
import torch

from testtime.batching import TrainingSequence, collate, labelled_tokens, micro_batches, usable_sequences
from testtime.config import validate
from testtime.logprob import eval_mode, labelled_logprob
from testtime.precision import model_device
from testtime.settings import TrainArgs

log = logging.getLogger(__name__)

@dataclass
class StepInfo:
    """What `train` reports to `on_step` after each optimizer step."""

    step: int
    """1-based step number."""
    total_steps: int
    """Steps this call will take."""
    loss: float
    """Mean loss over the step's labelled tokens."""
    lr: float
    """Learning rate used for this step."""
    tokens: int
    """Input tokens of the step, padding excluded."""
    ms: float
    """Wall time of the step in milliseconds."""
    tokens_per_s: float
    """`tokens` / step time."""
    optimizer: Any = field(default=None, repr=False)
    """The live optimizer (its `state_dict()` is what a checkpoint needs to resume)."""


@dataclass
class TrainStats:
    """Summary of one `train` call."""

    steps: int
    """Optimizer steps taken by this call."""
    tokens: int
    """Input tokens processed, padding excluded."""
    losses: list[float]
    """Loss of every step."""
    seconds: float
    """Wall time of the loop."""
    tokens_per_s: float
    """`tokens` / `seconds`."""
    skipped: int = 0
    """Sequences dropped because no token in them carries a loss."""


# ---------------------------------------------------------------- optimisation


def total_steps(n_sequences: int, args: TrainArgs) -> int:
    """Optimizer steps for `n_sequences`: `max_steps` if set, else what `epochs` passes take."""
    if args.max_steps is not None:
        return args.max_steps
    n_micro = math.ceil(n_sequences / args.batch_size) * args.epochs
    return math.ceil(n_micro / args.grad_accum)


def lr_factor(step: int, total: int, args: TrainArgs, ramp_from: int | None = None) -> float:
    """Multiplier of `args.lr` at 0-based `step`: linear warm-up, then the decay of `args.schedule`.
    `ramp_from`: a continuation that starts mid-schedule with a fresh optimizer; the scheduled value is
    ramped up again over the `warmup_steps` steps after that step, so Adam's first (sign-sized) updates
    are small."""
    if ramp_from is not None and step - ramp_from < args.warmup_steps:
        return lr_factor(step, total, args) * (step - ramp_from + 1) / (args.warmup_steps + 1)
    if step < args.warmup_steps:
        return (step + 1) / (args.warmup_steps + 1)
    progress = (step - args.warmup_steps) / max(1, total - args.warmup_steps)  # in [0, 1), never 0 lr
    if args.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if args.schedule == "linear":
        return 1.0 - progress
    return 1.0


def make_optimizer(params: list[torch.nn.Parameter], args: TrainArgs) -> torch.optim.Optimizer:
    if args.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.lr, weight_decay=args.weight_decay)
    return torch.optim.SGD(params, lr=args.lr, weight_decay=args.weight_decay)


# ---------------------------------------------------------------- the loop


def train(
    model: Any,
    data: list[TrainingSequence] | Iterator[list[TrainingSequence]],
    args: TrainArgs,
    *,
    on_step: Callable[[StepInfo], None] | None = None,
    start_step: int = 0,
    optimizer_state: dict | None = None,
    ramp_from: int | None = None,
) -> TrainStats:
    """Train the parameters of `model` that require grad (the LoRA ones) on `data`.

    `data` is a list of sequences, or an iterator of micro-batches (then `args.max_steps` must be
    set, and the iterator must already be positioned at `start_step`). To resume a run stopped
    after step s, pass `start_step=s` and the optimizer state saved then (`StepInfo.optimizer`):
    steps s+1... are then those of the uninterrupted run. `ramp_from` (see `lr_factor`): this stage
    continues a schedule from that step with a fresh optimizer. The model is in train mode during the
    loop and in eval mode afterwards.
    """
    validate(args)
    params, batches, total, skipped = _plan(model, data, args, start_step)
    if total <= start_step:
        return TrainStats(steps=0, tokens=0, losses=[], seconds=0.0, tokens_per_s=0.0, skipped=skipped)
    device = params[0].device
    stepped, masters = master_weights(params)
    optimizer = make_optimizer(stepped, args)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    losses: list[float] = []
    n_tokens = 0
    with torch.random.fork_rng(devices=cuda_indices(device)):  # dropout RNG; callers' RNG left untouched
        model.train()
        if args.gradient_checkpointing:
            _set_checkpointing(model, on=True)
        t_start = time.perf_counter()
        try:
            for step in range(start_step + 1, total + 1):
                info = _step(model, batches, optimizer, stepped, args, step, total, pad_id, device, ramp_from,
                             masters)
                losses.append(info.loss)
                n_tokens += info.tokens
                _log_step(info, args.log_every)
                if on_step is not None:
                    on_step(info)
        finally:
            if args.gradient_checkpointing:
                _set_checkpointing(model, on=False)
            model.eval()
    seconds = time.perf_counter() - t_start
    return TrainStats(steps=len(losses), tokens=n_tokens, losses=losses, seconds=seconds,
                      tokens_per_s=n_tokens / max(seconds, 1e-9), skipped=skipped)


def _plan(model: Any, data: list[TrainingSequence] | Iterator[list[TrainingSequence]], args: TrainArgs,
          start_step: int) -> tuple[list[torch.nn.Parameter], Iterator[list[TrainingSequence]], int, int]:
    """(trainable parameters, the micro-batches from `start_step` on, total steps, sequences skipped)."""
    stream = not isinstance(data, list)
    if stream and args.max_steps is None:
        raise ValueError("training on a stream of batches needs TrainArgs.max_steps")
    usable = [] if stream else usable_sequences(data)
    skipped = 0 if stream else len(data) - len(usable)
    if skipped:
        log.warning("skipping %d of %d sequences: no token in them carries a loss", skipped, len(data))
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters (call AdapterHost.fresh() first)")
    total = total_steps(len(usable), args) if (usable or stream) else 0
    n_total = sum(p.numel() for p in model.parameters())
    log.info("train: %s, %d steps (batch %d x accum %d), %s trainable of %s parameters",
             "a stream of batches" if stream else f"{len(usable)} sequences", total, args.batch_size,
             args.grad_accum, si_format(sum(p.numel() for p in params)), si_format(n_total))
    if stream:
        return params, data, total, skipped  # type: ignore[return-value]
    rng = np.random.default_rng(args.seed)
    batches = micro_batches(usable, args.batch_size, args.group_by_length, rng,
                            epochs=None if args.max_steps is not None else args.epochs)
    return params, islice(batches, start_step * args.grad_accum, None), total, skipped  # skip what steps < start used


LOW_PRECISION = (torch.bfloat16, torch.float16)


def master_weights(params: list[torch.nn.Parameter]) -> tuple[list[torch.Tensor], list[tuple[Any, torch.Tensor]]]:
    """(what the optimizer steps on, (parameter, its float32 master) pairs). A bfloat16/float16 parameter gets a
    float32 master copy that the optimizer updates and that is rounded into the parameter after each step, so
    updates below the weight's resolution add up instead of vanishing (full fine-tuning of a bfloat16 model:
    a bfloat16 weight near 1 moves only in steps of 1/128). peft keeps LoRA weights in float32 already."""
    stepped, pairs = [], []
    for p in params:
        if p.dtype in LOW_PRECISION:
            master = p.detach().float().clone()
            pairs.append((p, master))
            stepped.append(master)
        else:
            stepped.append(p)
    return stepped, pairs


def _step(model: Any, batches: Iterator[list[TrainingSequence]], optimizer: torch.optim.Optimizer,
          params: list[torch.Tensor], args: TrainArgs, step: int, total: int, pad_id: int,
          device: torch.device, ramp_from: int | None = None,
          masters: list[tuple[torch.Tensor, torch.Tensor]] = ()) -> StepInfo:
    """One optimizer step (1-based `step`) over the next `grad_accum` micro-batches; `params` are what the
    optimizer steps on (`master_weights`)."""
    t0 = time.perf_counter()
    lr = args.lr * lr_factor(step - 1, total, args, ramp_from)
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.manual_seed(args.seed * 1_000_003 + step)  # dropout of step s is the same after a resume
    step_batches = list(islice(batches, args.grad_accum))
    if not step_batches:
        raise ValueError(f"the stream of batches ended before step {step} of {total}")
    loss = _accumulate(model, step_batches, pad_id, device)
    for p, master in masters:
        master.grad = None if p.grad is None else p.grad.float()
        p.grad = None
    if args.max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for p, master in masters:
            p.copy_(master)
    tokens = sum(len(s.input_ids) for b in step_batches for s in b)
    seconds = time.perf_counter() - t0
    return StepInfo(step, total, loss, lr, tokens, 1000 * seconds, tokens / max(seconds, 1e-9), optimizer)


@torch.no_grad()
def evaluate_loss(model: Any, sequences: list[TrainingSequence], batch_size: int = 1) -> float:
    """Mean loss per labelled token of `sequences` (no gradient, eval mode, the mode restored after)."""
    usable = usable_sequences(sequences)
    if not usable:
        raise ValueError("no sequence has a labelled token to evaluate")
    device = model_device(model)
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    total, n = 0.0, 0
    with eval_mode(model):
        for k in range(0, len(usable), batch_size):
            batch = usable[k : k + batch_size]
            input_ids, attention_mask, labels = collate(batch, pad_id, device)
            total += labelled_loss(model, input_ids, attention_mask, labels).item()
            n += sum(labelled_tokens(s) for s in batch)
    return total / n


def _accumulate(model: Any, step_batches: list[list[TrainingSequence]], pad_id: int, device: torch.device) -> float:
    """Forward+backward every micro-batch; gradients end up those of the mean over the step's labelled tokens."""
    n_labelled = sum(labelled_tokens(s) for b in step_batches for s in b)
    loss_sum = 0.0
    for batch in step_batches:
        input_ids, attention_mask, labels = collate(batch, pad_id, device)
        # summed here, divided by the whole step's count (not a mean of means)
        loss = labelled_loss(model, input_ids, attention_mask, labels)
        (loss / n_labelled).backward()
        loss_sum += loss.item()  # note: a CPU-GPU sync point
    return loss_sum / n_labelled


def labelled_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of the labelled tokens (position t predicts token t+1), a 0-d float32 tensor:
    `testtime.logprob.labelled_logprob` negated (exactly), in the precision of a loss to train on."""
    return -labelled_logprob(model, input_ids, attention_mask, labels, train=True)


def cuda_indices(device: torch.device) -> list[int]:
    """The CUDA device indices `torch.random.fork_rng(devices=...)` must save for `device` ([] on CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _set_checkpointing(model: Any, *, on: bool) -> None:
    """Turn activation checkpointing (non-reentrant) on or off, across transformers versions."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
    if hasattr(model, "disable_input_require_grads"):
        with contextlib.suppress(AttributeError, RuntimeError):  # no hook registered
            model.disable_input_require_grads()


def _log_step(info: StepInfo, every: int) -> None:
    if every <= 0 or (info.step % every and info.step != info.total_steps):
        return
    width = len(str(info.total_steps))
    log.info("step %0*d/%d | loss %.3f | %.0f ms | %s tok/s",
             width, info.step, info.total_steps, info.loss, info.ms, si_format(info.tokens_per_s))


def si_format(x: float) -> str:
    """`x` short, with an SI suffix, for log lines: 850 -> '850', 3100 -> '3.1k', 1.2e6 -> '1.2M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.1f}{unit}"
    return f"{x:.0f}"
