"""The log-probability of labelled tokens: the one place a loss or a likelihood score is computed.

    input_ids, attention_mask, labels = collate(batch, pad_id, device)
    total = labelled_logprob(model, input_ids, attention_mask, labels)                # 0-d float32, nats
    rows = labelled_logprob(model, input_ids, attention_mask, labels, per_row=True)   # (B,) float64
    sums = sequence_logprobs(model, sequences, batch_size=8)                          # a float per sequence

Labels are those of `testtime.batching` (position t predicts token t+1; IGNORE_INDEX carries
nothing). The head runs only at the positions that predict a labelled token in some row of the
batch, through the model's own `logits_to_keep`, and computes float32 logits there
(`testtime.precision`). On it rest the training and evaluation losses (`finetune`), ARC's truth
bits and product-of-experts scores, and bits per byte.

Two reductions: over the whole batch, `F.cross_entropy(reduction="sum")` in float32 (the training
loss is exactly its negative, and its gradient the loop's); per row, the float32 log-probabilities
summed in float64, for scores that rank candidates and are themselves summed over many views.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from testtime.batching import IGNORE_INDEX, TrainingSequence, collate
from testtime.precision import compute_context, model_device


def labelled_logprob(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                     *, per_row: bool = False, train: bool = False) -> torch.Tensor:
    """Summed natural log-probability of the labelled tokens of a right-padded batch, each (B, T).

    One 0-d float32 tensor over the whole batch, or with `per_row` a (B,) float64 one. `train`: a
    loss to train on (its precision is `compute_context(train=True)`'s); gradients flow either way.
    """
    with compute_context(model, train=train):
        logits, targets = _labelled_logits(model, input_ids, attention_mask, labels)  # (B, P, V), (B, P)
        if not per_row:
            return -F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum")
    logp = F.log_softmax(logits.float(), dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(targets != IGNORE_INDEX, logp, 0.0).double().sum(dim=1)


def _labelled_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the token each predicts or IGNORE_INDEX), (B, P, V) and (B, P).

    P is the positions that predict a labelled token in some row (a few hundred of a TTT sequence's
    ~1,000): the same logits as the full computation's there, without the (B, T, V) tensor. A model
    whose forward has no `logits_to_keep` computes them all, and every position is kept.
    """
    targets = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    if not takes_logits_to_keep(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
        return logits[:, :-1], targets
    positions = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(1)  # (P,) positions t < T-1
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                   logits_to_keep=positions).logits  # (B, P, V)
    return logits, targets[:, positions]


def takes_logits_to_keep(model: Any) -> bool:
    """Whether the (peft-wrapped) model's forward takes `logits_to_keep` (asked once per model class)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_takes_logits_to_keep(type(base))


@functools.lru_cache(maxsize=None)
def _forward_takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def sequence_logprobs(model: Any, sequences: Sequence[TrainingSequence], *, batch_size: int = 8) -> list[float]:
    """Per sequence, the summed log-probability (nats) of its labelled tokens, in the order given.

    Eval mode, no gradient. Sequences are sorted by length (longest first) and right-padded per
    batch; position t predicts token t+1, so the padding after a row is never attended to.
    """
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i].input_ids))
    out = [0.0] * len(sequences)
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    with torch.inference_mode(), eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            batch = collate([sequences[i] for i in chunk], pad_id, model_device(model))
            sums = labelled_logprob(model, *batch, per_row=True).tolist()  # note: a sync point
            for r, i in enumerate(chunk):
                out[i] = float(sums[r])
    return out


@contextlib.contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """The model in eval mode (no dropout) for the block, its own mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
