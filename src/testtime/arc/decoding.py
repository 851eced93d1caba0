"""Decoding answer grids: batched greedy continuations that stop once the text cannot be a grid.

`generate` sorts the prompts by length, decodes them `batch_size` at a time with the fast greedy
decoder (`testtime.decode.greedy`: a preallocated KV cache, finished rows leave the batch), and
`AnswerShape` ends a row at the end marker or as soon as its text can no longer be an answer grid
(a letter, a row over 30 cells or unlike the first, a 31st line): garbage costs a few tokens, not
931. `AnswerShape` is also a `transformers` `StoppingCriteria`, so the same rule works with
`model.generate` (the reference decoder of the tests and of `bench/arc_ttt.py`).

`generate_dfs` is the alternative to greedy search: every continuation of probability >=
`min_prob` (`testtime.decode.dfs`), one prompt at a time, each path ended by the same rule
(`AnswerPaths` keeps an `AnswerShape` row per depth of the path being explored).

With a `deadline` (epoch seconds), both check the clock at every decoded token and raise
`TimeUp` once it has passed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria

from testtime.arc.format import MAX_SIDE
from testtime.decode import dfs, greedy
from testtime.jobs.budget import check_deadline

DIGITS = frozenset("0123456789")


@dataclass
class Generation:
    """One decoded continuation."""

    token_ids: list[int]
    """Generated tokens (prompt excluded), through the end-marker token when `stopped`."""
    text: str
    """`token_ids` decoded."""
    logprob: float
    """Sum of the log-probabilities of `token_ids` (the end-marker token included): <= 0."""
    stopped: bool
    """True when the row ended at the end marker (not at the token bound or an invalid token)."""


class AnswerShape(StoppingCriteria):
    """Per-row stop: at the end marker, or once the text can no longer be an answer grid.

    The text can no longer be an answer once it has a character other than a digit, a newline or
    the end marker's, a row of more than `max_side` cells, more than `max_side` lines (blank
    ones included: a model stuck on newlines stops after 31), or a row whose length differs
    from the first row's. With `check=False` only the end marker stops a row. Records each
    row's generated length. `done(rows, tokens)` is the rule for `testtime.decode.greedy`;
    calling the object is the same rule as a `StoppingCriteria` for `model.generate`.
    """

    def __init__(self, tokenizer: Any, batch: int, stop_id: int, *, check: bool = True,
                 max_side: int = MAX_SIDE) -> None:
        self.tokenizer = tokenizer
        self.stop_id = stop_id
        self.end_text = tokenizer.decode([stop_id])
        self.allowed = DIGITS | {"\n"} | set(self.end_text)
        self.check = check
        self.max_side = max_side
        self.steps = [0] * batch  # tokens seen per row
        self.width = [0] * batch  # cells so far in the current line
        self.lines = [0] * batch  # newlines so far
        self.first_width: list[int | None] = [None] * batch  # length of the first non-blank row
        self.length: list[int | None] = [None] * batch  # generated tokens when the row ended
        self.stopped = [False] * batch
        self._texts: dict[int, str] = {}

    def done(self, rows: Sequence[int], tokens: Sequence[int]) -> list[bool]:
        """Feed each row its next token; whether the row has ended (the token that ended it counts)."""
        for row, token in zip(rows, tokens, strict=True):
            if self.length[row] is not None:
                continue
            self.steps[row] += 1
            text = self._text(token)
            if token == self.stop_id or self.end_text in text:
                self.length[row], self.stopped[row] = self.steps[row], True
            elif self.check and not self._extend(row, text):
                self.length[row] = self.steps[row]
        return [self.length[row] is not None for row in rows]

    def copy_row(self, source: int, target: int) -> None:
        """Row `target` takes row `source`'s state (a depth-first search forks a path so)."""
        for state in (self.steps, self.width, self.lines, self.first_width, self.length, self.stopped):
            state[target] = state[source]

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        done = self.done(range(input_ids.shape[0]), input_ids[:, -1].tolist())
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)

    def _text(self, token: int) -> str:
        if token not in self._texts:
            self._texts[token] = self.tokenizer.decode([token])
        return self._texts[token]

    def _extend(self, row: int, text: str) -> bool:
        """Feed `text` to the row's grid state; False once it cannot be (the start of) an answer."""
        for ch in text:
            if ch not in self.allowed:
                return False
            width, first = self.width[row], self.first_width[row]
            if ch == "\n":
                if first is None and width:
                    self.first_width[row] = width
                elif width and width != first:
                    return False  # ragged rows
                self.lines[row] += 1
                self.width[row] = 0
                if self.lines[row] > self.max_side:
                    return False
            elif ch in DIGITS:
                self.width[row] = width = width + 1
                # a digit on line max_side + 1, or past the first row's (or max) width
                if self.lines[row] >= self.max_side or width > (first or self.max_side):
                    return False
        return True


def _in_time(rule: Callable[..., Any], deadline: float | None) -> Callable[..., Any]:
    """`rule`, after raising TimeUp once `deadline` has passed (asked once per decoded token)."""
    if deadline is None:
        return rule

    def checked(*args: Any) -> Any:
        check_deadline(deadline, "decoding")
        return rule(*args)
    return checked


def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, stop_id: int, max_new_tokens: int,
             batch_size: int, check_answer: bool = True, deadline: float | None = None) -> list[Generation]:
    """Greedy continuations of `prompts` (token ids), in the order given.

    Prompts are sorted by length (longest first: memory errors show at once, and batches pad
    little) and decoded `batch_size` at a time with left padding. A row ends at `stop_id`, at
    `max_new_tokens`, or (with `check_answer`) as soon as its text cannot be an answer grid.
    TimeUp once `deadline` (epoch seconds) passes.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else stop_id
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        shape = AnswerShape(tokenizer, len(chunk), stop_id, check=check_answer)
        check_deadline(deadline, "decoding")
        decoded = greedy(model, [prompts[i] for i in chunk], max_new_tokens=max_new_tokens, pad_id=pad_id,
                         stop=_in_time(shape.done, deadline))
        for row, (i, d) in enumerate(zip(chunk, decoded, strict=True)):
            results[i] = Generation(token_ids=d.token_ids, text=tokenizer.decode(d.token_ids),
                                    logprob=float(sum(d.logprobs)), stopped=shape.stopped[row])
    return [gen for gen in results if gen is not None]


class AnswerPaths:
    """`AnswerShape` as a `testtime.decode.PathStop`: whether a path (its newest token last) has ended.

    Row k holds the state after the path's first k tokens. `dfs` asks about a path after asking
    about its parent, so a call usually feeds one token; in general it re-feeds the tokens past
    the longest prefix shared with the previous path.
    """

    def __init__(self, tokenizer: Any, stop_id: int, max_new_tokens: int, *, check: bool = True) -> None:
        self.shape = AnswerShape(tokenizer, max_new_tokens + 1, stop_id, check=check)
        self.path: list[int] = []

    def __call__(self, tokens: Sequence[int]) -> bool:
        tokens, n = list(tokens), len(tokens)
        if self.path[:n - 1] == tokens[:n - 1]:
            shared = n - 1
        else:
            shared = next((k for k, (a, b) in enumerate(zip(self.path, tokens)) if a != b),
                          min(len(self.path), n))
        for k in range(shared, n):
            self.shape.copy_row(k, k + 1)
            self.shape.done([k + 1], [tokens[k]])
        self.path = tokens
        return self.shape.length[n] is not None


def generate_dfs(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, stop_id: int, max_new_tokens: int,
                 min_prob: float, check_answer: bool = True, max_candidates: int = 64,
                 deadline: float | None = None) -> list[list[Generation]]:
    """Per prompt, every continuation of probability >= `min_prob`, the most probable first.

    A path ends where `generate`'s rows end (at `stop_id`, at `max_new_tokens`, or with
    `check_answer` once its text cannot be an answer grid); pruned branches cost no more decoding.
    """
    out = []
    for prompt in prompts:
        check_deadline(deadline, "decoding")
        rule = AnswerPaths(tokenizer, stop_id, max_new_tokens, check=check_answer)
        found = dfs(model, prompt, min_prob=min_prob, max_new_tokens=max_new_tokens, stop=_in_time(rule, deadline),
                    max_candidates=max_candidates)
        gens = []
        for c in found:
            shape = AnswerShape(tokenizer, 1, stop_id, check=check_answer)
            for token in c.token_ids:
                shape.done([0], [token])
            gens.append(Generation(token_ids=c.token_ids, text=tokenizer.decode(c.token_ids), logprob=c.logprob,
                                   stopped=shape.stopped[0]))
        out.append(gens)
    return out
