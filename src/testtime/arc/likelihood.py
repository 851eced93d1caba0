"""The likelihood of given answers: the true output's bits, and product-of-experts scores.

`score_answers` returns each (prompt + answer) sequence's summed natural log-probability of the
answer, batched, the output head run only where an answer token is predicted
(`testtime.logprob`). On it rest:

- `truth_bits`: the true test output's negative log-likelihood in bits, per answer token and per
  cell, under the identity prompt (the task's demonstrations in their order, fitted to
  `max_len`). The solver measures it before and after test-time training; it is read only after
  the predictions are made and never reaches them.
- `poe_scores` (Franzen, Disselhoff, Hartmann 2025, "Product of Experts with LLMs"): a candidate's
  score is the sum of its log-likelihoods under every inference view, the prompt and the
  candidate transformed together (a product of the views' probabilities).
- `fresh_views`: K further views for that score, as the ARChitects score every candidate: each a
  random symmetry, colour permutation and demonstration order of the whole task, drawn from the
  seed and the task id alone, so every candidate is read under views that did not generate it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, encode, format_answer
from testtime.arc.task import Example, Grid, Task
from testtime.arc.transforms import Transform, random_transform
from testtime.arc.ttt_data import fit_demos
from testtime.batching import IGNORE_INDEX, TrainingSequence
from testtime.logprob import sequence_logprobs
from testtime.seeds import name_key

log = logging.getLogger(__name__)

Row = tuple[list[int], int]
"""(token ids of prompt + answer, how many of the last ids are the answer)."""

View = tuple[Transform, list[int]]
"""(transform of the task, token ids of the prompt it gives): one product-of-experts view."""

VIEWS_STREAM = 1
"""Mixed into the fresh views' seed, so their draws never repeat those of the inference prompts."""


def score_answers(model: Any, rows: Sequence[Row], *, batch_size: int = 8) -> list[float]:
    """Summed log-probability (nats) of each row's answer tokens given the tokens before them, in the
    order given (batched by `testtime.logprob.sequence_logprobs`)."""
    sequences = []
    for i, (ids, n) in enumerate(rows):
        if not 0 < n < len(ids):
            raise ValueError(f"row {i}: {n} answer tokens in a sequence of {len(ids)}")
        sequences.append(TrainingSequence(list(ids), [IGNORE_INDEX] * (len(ids) - n) + list(ids[len(ids) - n:])))
    return sequence_logprobs(model, sequences, batch_size=batch_size)


def answer_ids(tokenizer: Any, grid: Grid, fmt: TextFormat = DEFAULT_FORMAT) -> list[int]:
    """Token ids of `format_answer(grid)`, as `encode` tokenises an answer."""
    return list(tokenizer(format_answer(grid, fmt), add_special_tokens=False)["input_ids"])


def truth_rows(tokenizer: Any, task: Task, *, counter: TokenCounter, max_len: int, seed: int,
               fmt: TextFormat = DEFAULT_FORMAT) -> list[Row | None]:
    """Per test input: the identity prompt with its true output as the answer; None when the output is
    unknown or even one demonstration and the answer do not fit `max_len`."""
    rows: list[Row | None] = []
    for i, ex in enumerate(task.test):
        if ex.output is None:
            rows.append(None)
            continue
        rng = np.random.default_rng([seed, name_key(task.id), i])
        demos = fit_demos(task.train, ex.input, ex.output, counter, max_len, rng)
        if demos is None:
            rows.append(None)
            continue
        ids, labels = encode(tokenizer, demos, ex.input, ex.output, fmt)
        rows.append((ids, sum(lab != IGNORE_INDEX for lab in labels)))
    return rows


def truth_bits(model: Any, task: Task, rows: Sequence[Row | None], *, batch_size: int = 8) -> list[dict | None]:
    """Per test input: {"bits_per_token", "bits_per_cell"} of the true output, or None without a row."""
    present = [r for r in rows if r is not None]
    logprobs = iter(score_answers(model, present, batch_size=batch_size))
    out: list[dict | None] = []
    for ex, row in zip(task.test, rows, strict=True):
        if row is None:
            out.append(None)
            continue
        bits = -next(logprobs) / math.log(2)
        out.append({"bits_per_token": bits / row[1], "bits_per_cell": bits / ex.output.size})
    return out


def poe_scores(model: Any, tokenizer: Any, grids: Sequence[Grid], experts: Sequence[View],
               *, batch_size: int = 8, fmt: TextFormat = DEFAULT_FORMAT) -> list[float]:
    """Per grid (in the task's frame): the sum over the views of log p(t(grid) | view t's prompt);
    -inf for every grid when there is no view."""
    if not experts:
        return [-math.inf] * len(grids)
    rows: list[Row] = []
    for g in grids:
        for t, prompt_ids in experts:
            answer = answer_ids(tokenizer, t.grid(g), fmt)
            rows.append((list(prompt_ids) + answer, len(answer)))
    scores = score_answers(model, rows, batch_size=batch_size)
    n = len(experts)
    return [math.fsum(scores[k * n:(k + 1) * n]) for k in range(len(grids))]


def fresh_views(tokenizer: Any, task: Task, test_index: int, k: int, *, counter: TokenCounter, max_len: int,
                reserve: int, seed: int, fmt: TextFormat = DEFAULT_FORMAT) -> list[View]:
    """`k` views of `task.test[test_index]` for product-of-experts scoring, drawn from (seed, task id, test
    index) alone: each a random symmetry, colour permutation (0 kept) and order of every demonstration,
    applied to the whole task, its demos fitted to `max_len` with `reserve` tokens left for the answer.
    A view whose prompt cannot fit is left out. Test outputs are never read."""
    rng = np.random.default_rng([seed, name_key(task.id), test_index, VIEWS_STREAM])
    query = Task(task.id, task.train, (Example(task.test[test_index].input),))  # the test input alone
    views: list[View] = []
    for _ in range(k):
        t = random_transform(rng, len(task.train))
        moved = t.task(query)
        demos = fit_demos(moved.train, moved.test[0].input, None, counter, max_len, rng, reserve=reserve)
        if demos is not None:
            views.append((t, encode(tokenizer, demos, moved.test[0].input, None, fmt)[0]))
    return views
