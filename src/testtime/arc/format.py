"""ARC tasks as text for a language model, parsed back, tokenised and counted.

Layout (one digit per cell, rows joined by "\\n", no trailing newline in a grid's text):

    input            <- one demonstration: f"{input}\\n{grid}\\n{output}\\n{grid}\\n{end}\\n"
    012
    340
    output
    21
    .
    input            <- the query: f"{input}\\n{grid}\\n{output}\\n"; the prompt ends here
    05
    output
    13               <- the answer: f"{grid}\\n{end}"
    .

With the SmolLM2 tokenizer every digit, "\\n" and marker is one token and nothing merges across
them, so a grid of r rows and c columns costs r*(c+1)-1 tokens. `TokenCounter` checks that once
per tokenizer and then counts arithmetically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from testtime.arc.task import MAX_SIDE, Example, Grid, Task
from testtime.batching import IGNORE_INDEX

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextFormat:
    input_marker: str = "input"
    """Line before an input grid."""
    output_marker: str = "output"
    """Line before an output grid (the prompt ends with it)."""
    end_marker: str = "."
    """Line after an output grid; generation stops at it."""

    def __post_init__(self) -> None:
        for name in ("input_marker", "output_marker", "end_marker"):
            value = getattr(self, name)
            # a marker must be a line of its own that can never be read as a grid row
            if not value or value != value.strip() or "\n" in value or any(ch.isdigit() for ch in value):
                raise ValueError(f"TextFormat.{name}={value!r}: must be non-empty, one line, "
                                 "no surrounding whitespace and no digits")


DEFAULT_FORMAT = TextFormat()


# --- grids <-> text ---------------------------------------------------------------------------

def grid_to_text(g: Grid) -> str:
    """Rows of digits joined by "\\n", no trailing newline; ValueError if `g` is not a grid."""
    a = np.asarray(g)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"expected a non-empty 2-D grid, got shape {a.shape}")
    if a.min() < 0 or a.max() > 9:
        raise ValueError(f"grid values must be 0-9, got {a.min()}..{a.max()}")
    rows, _ = a.shape
    # (rows, cols+1) bytes: the digits' ASCII codes and a "\n" column; drop the last "\n"
    chars = np.concatenate([a.astype(np.uint8) + ord("0"), np.full((rows, 1), ord("\n"), np.uint8)], axis=1)
    return chars.tobytes()[:-1].decode("ascii")


def text_to_grid(text: str, *, max_size: int = MAX_SIDE) -> Grid | None:
    """Parse grid text; None (never an exception) for anything that is not a well-formed grid.

    Blank lines before and after the grid are ignored (so a trailing newline is fine). Every other
    line must be ASCII digits only (no spaces, signs, "\\r" or other scripts' digits), all lines the
    same length, at most `max_size` rows and columns.
    """
    if not isinstance(text, str):
        return None
    lines = text.split("\n")
    start, stop = 0, len(lines)
    while start < stop and not lines[start].strip():
        start += 1
    while stop > start and not lines[stop - 1].strip():
        stop -= 1
    rows = lines[start:stop]
    if not rows or len(rows) > max_size:
        return None
    width = len(rows[0])
    if not 1 <= width <= max_size or any(len(row) != width for row in rows):
        return None
    cells = "".join(rows)
    if not (cells.isascii() and cells.isdigit()):  # ASCII-only isdigit is exactly "0".."9"
        return None
    digits = np.frombuffer(cells.encode("ascii"), dtype=np.uint8) - ord("0")
    return digits.reshape(len(rows), width).astype(np.int8)


# --- prompts and answers ----------------------------------------------------------------------

def _query_text(g: Grid, fmt: TextFormat) -> str:
    return f"{fmt.input_marker}\n{grid_to_text(g)}\n{fmt.output_marker}\n"


def _demo_output(ex: Example) -> Grid:
    if ex.output is None:
        raise ValueError("a demonstration needs an output grid (got a test example without one)")
    return ex.output


def format_answer(g: Grid, fmt: TextFormat = DEFAULT_FORMAT) -> str:
    """What the model should generate after a prompt: the grid, a newline, the end marker."""
    return f"{grid_to_text(g)}\n{fmt.end_marker}"


def format_demo(ex: Example, fmt: TextFormat = DEFAULT_FORMAT) -> str:
    """One demonstration block, ending with a newline after the end marker."""
    return _query_text(ex.input, fmt) + format_answer(_demo_output(ex), fmt) + "\n"


def format_prompt(demos: Sequence[Example], query: Grid, fmt: TextFormat = DEFAULT_FORMAT) -> str:
    """The demonstrations, then the query input, ending right after the output marker line."""
    return "".join(format_demo(ex, fmt) for ex in demos) + _query_text(query, fmt)


def task_prompts(task: Task, fmt: TextFormat = DEFAULT_FORMAT) -> list[str]:
    """One prompt per test input, each with all the task's train pairs as demonstrations."""
    return [format_prompt(task.train, ex.input, fmt) for ex in task.test]


def parse_answer(text: str, fmt: TextFormat = DEFAULT_FORMAT) -> Grid | None:
    """Generated text -> grid: the lines before the first end-marker line, parsed.

    Whatever follows the end marker is ignored. Returns None when the text has no end-marker line
    (the generation ran into its token bound, so the grid may be cut short: a plausible-looking
    prefix is not an answer) or when the lines before it are not a grid.
    """
    lines = text.split("\n")
    for i, line in enumerate(lines):
        if line.strip() == fmt.end_marker:
            return text_to_grid("\n".join(lines[:i]))
    return None


# --- tokens -----------------------------------------------------------------------------------

def _tokenizer_name(tokenizer: Any) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def count_tokens(tokenizer: Any, text: str) -> int:
    """Number of tokens of `text` without special tokens (plain lists, no tensors)."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


class TokenCounter:
    """Token counts of grids, demonstrations, prompts and answers, by arithmetic.

    The marker lines are measured once with the real tokenizer; the construction checks that
    every digit and "\\n" is one token and that a sample sequence counts the same both ways
    (ValueError naming the tokenizer otherwise). After that no tokenizer call is made, so
    counting a task costs O(number of grids).
    """

    def __init__(self, tokenizer: Any, fmt: TextFormat = DEFAULT_FORMAT) -> None:
        self.fmt = fmt
        self.name = _tokenizer_name(tokenizer)
        # the fixed text around the grids, in the order it appears in a demonstration
        self._before_input = count_tokens(tokenizer, f"{fmt.input_marker}\n")
        self._before_output = count_tokens(tokenizer, f"\n{fmt.output_marker}\n")
        self._after_answer = count_tokens(tokenizer, f"\n{fmt.end_marker}")
        self._after_demo = count_tokens(tokenizer, f"\n{fmt.end_marker}\n")
        self._check(tokenizer)

    def _check(self, tokenizer: Any) -> None:
        def fail(what: str) -> ValueError:
            return ValueError(f"tokenizer {self.name!r} cannot be counted arithmetically: {what}; "
                              "the ARC text format needs one token per digit and per newline")

        for ch in "0123456789\n":
            if count_tokens(tokenizer, ch) != 1:
                raise fail(f"{ch!r} is {count_tokens(tokenizer, ch)} tokens")
        rng = np.random.default_rng(0)
        # repeated digits included: some tokenizers merge runs like "00"
        sample = np.concatenate([np.zeros((1, 7), np.int8), rng.integers(0, 10, (4, 7), dtype=np.int8)])
        n = count_tokens(tokenizer, grid_to_text(sample))
        if n != self.grid(sample):
            raise fail(f"a 5x7 grid is {n} tokens, not 5*(7+1)-1 = {self.grid(sample)}")
        demos = [Example(sample, sample[:2, :3]), Example(sample[:3], sample.T)]
        text = format_prompt(demos, sample[1:], self.fmt) + format_answer(sample[:1], self.fmt)
        n = count_tokens(tokenizer, text)
        if n != self.sequence(demos, sample[1:], sample[:1]):
            raise fail(f"a sample task is {n} tokens, not {self.sequence(demos, sample[1:], sample[:1])} "
                       "(markers merge with their neighbours)")

    def grid(self, g: Grid) -> int:
        """Tokens of `grid_to_text(g)`: one per cell and per newline between rows."""
        rows, cols = np.shape(g)
        return rows * (cols + 1) - 1

    def example(self, ex: Example) -> int:
        """Tokens of `format_demo(ex)`, a whole demonstration block."""
        out = _demo_output(ex)
        return (self._before_input + self.grid(ex.input) + self._before_output + self.grid(out)
                + self._after_demo)

    def prompt(self, demos: Sequence[Example], query: Grid) -> int:
        """Tokens of `format_prompt(demos, query)`."""
        return (sum(self.example(ex) for ex in demos) + self._before_input + self.grid(query)
                + self._before_output)

    def answer(self, g: Grid) -> int:
        """Tokens of `format_answer(g)`."""
        return self.grid(g) + self._after_answer

    def sequence(self, demos: Sequence[Example], query: Grid, answer: Grid) -> int:
        """Tokens of a training sequence: the prompt, then the answer."""
        return self.prompt(demos, query) + self.answer(answer)


def encode(
    tokenizer: Any,
    demos: Sequence[Example],
    query: Grid,
    answer: Grid | None,
    fmt: TextFormat = DEFAULT_FORMAT,
    *,
    loss_on: Literal["answer", "outputs"] = "answer",
    first_output: bool = True,
) -> tuple[list[int], list[int]]:
    """Token ids and labels of `format_prompt(demos, query) + format_answer(answer)`.

    Labels are the ids on the answer's tokens (grid, "\\n", end marker) and -100 elsewhere; with
    `loss_on="outputs"` the demonstrations' output grids and end markers are labelled too (with
    `first_output=False` not the first demonstration's: nothing before it shows the rule, as in
    the paper's TTT).
    `answer=None` gives the prompt alone, all -100. No special tokens are added. The pieces are
    tokenised separately (one batched call) and concatenated: in this layout nothing merges
    across them, which the tests check against tokenising the whole text.
    """
    if loss_on not in ("answer", "outputs"):
        raise ValueError(f"loss_on must be 'answer' or 'outputs', got {loss_on!r}")
    pieces: list[tuple[str, bool]] = []  # (text, carries loss)
    for k, ex in enumerate(demos):
        labelled = loss_on == "outputs" and (k > 0 or first_output)
        pieces.append((_query_text(ex.input, fmt), False))
        pieces.append((format_answer(_demo_output(ex), fmt), labelled))
        pieces.append(("\n", False))
    pieces.append((_query_text(query, fmt), False))
    if answer is not None:
        pieces.append((format_answer(answer, fmt), True))
    batch = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, (_, loss) in zip(batch, pieces, strict=True):
        input_ids.extend(ids)
        labels.extend(ids if loss else [IGNORE_INDEX] * len(ids))
    return input_ids, labels


def task_tokens(task: Task) -> int:
    """About the tokens of a task's prompts and answers in the default format, by arithmetic (no tokenizer):
    every demonstration and test input, and per test input an answer the size of the largest demonstration
    output (the hidden answer is never read). A grid of r rows, c columns: r * (c + 1) - 1 tokens, plus
    its marker line and newline."""
    def tokens(grid: Any) -> int:
        rows, cols = grid.shape
        return rows * (cols + 1) + 2
    answer = max((tokens(ex.output) for ex in task.train), default=0)
    return sum(tokens(ex.input) + tokens(ex.output) for ex in task.train) + \
        sum(tokens(ex.input) + answer for ex in task.test)
