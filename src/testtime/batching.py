"""Training data for the one loop: labelled sequences, micro-batches, padding.

A `TrainingSequence` is labelled the Hugging Face way: `labels[i]` is `input_ids[i]` where token
i is to be predicted (from tokens < i) and IGNORE_INDEX (-100) where it carries no loss; the
shift happens inside the loss. Batches are right-padded.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100
"""Label of a token that carries no loss (the value `torch.nn.functional.cross_entropy` skips)."""


@dataclass
class TrainingSequence:
    """One training sequence, labelled the Hugging Face way (the shift happens inside `train`)."""

    input_ids: list[int]
    """Token ids."""
    labels: list[int]
    """Same length: `input_ids[i]` where token i is to be predicted (from tokens < i), else IGNORE_INDEX."""


def labelled_tokens(seq: TrainingSequence) -> int:
    """Tokens that carry a loss: labels[0] never does (nothing comes before it to predict it)."""
    return sum(1 for label in seq.labels[1:] if label != IGNORE_INDEX)


def make_batches(
    sequences: list[TrainingSequence], batch_size: int, group_by_length: bool, rng: np.random.Generator
) -> list[list[TrainingSequence]]:
    """One epoch of micro-batches, every sequence exactly once, in an order drawn from `rng`.

    With `group_by_length` the shuffled sequences are sorted by length (stable, so ties stay in
    random order), cut into runs of `batch_size`, and the runs are shuffled: little padding, and
    the order of batches is still random. Batch composition then varies only among equal lengths.
    """
    order = [int(i) for i in rng.permutation(len(sequences))]
    if group_by_length and batch_size > 1:
        order.sort(key=lambda i: len(sequences[i].input_ids))
    batches = [[sequences[i] for i in order[k : k + batch_size]] for k in range(0, len(order), batch_size)]
    if group_by_length and batch_size > 1:
        batches = [batches[int(i)] for i in rng.permutation(len(batches))]
    return batches


def collate(batch: list[TrainingSequence], pad_id: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Right-pad to the longest sequence: (input_ids, attention_mask, labels), each (B, T)."""
    width = max(len(s.input_ids) for s in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, seq in enumerate(batch):
        n = len(seq.input_ids)
        input_ids[row, :n] = torch.tensor(seq.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(seq.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    return input_ids.to(device), attention_mask.to(device), labels.to(device)


def micro_batches(
    sequences: list[TrainingSequence], batch_size: int, group_by_length: bool, rng: np.random.Generator,
    epochs: int | None,
) -> Iterator[list[TrainingSequence]]:
    """Micro-batches epoch after epoch, reshuffled each epoch; forever when `epochs` is None."""
    epoch = 0
    while epochs is None or epoch < epochs:
        yield from make_batches(sequences, batch_size, group_by_length, rng)
        epoch += 1


def usable_sequences(sequences: list[TrainingSequence]) -> list[TrainingSequence]:
    """The sequences with at least one labelled token; raises on malformed ones."""
    for i, seq in enumerate(sequences):
        if not seq.input_ids or len(seq.input_ids) != len(seq.labels):
            raise ValueError(f"sequence {i}: input_ids ({len(seq.input_ids)}) and labels ({len(seq.labels)}) "
                             "must be non-empty and of the same length")
    return [s for s in sequences if labelled_tokens(s) > 0]
