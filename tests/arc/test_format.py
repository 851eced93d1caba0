"""The ARC text format: grid text round trips, strict parsing, token counts and loss masks."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from testtime.arc.format import (
    DEFAULT_FORMAT,
    TextFormat,
    TokenCounter,
    count_tokens,
    encode,
    format_answer,
    format_demo,
    format_prompt,
    grid_to_text,
    parse_answer,
    task_prompts,
    text_to_grid,
)
from testtime.arc.task import Example, Task
from testtime.batching import IGNORE_INDEX


@st.composite
def grids(draw, max_side: int = 30):
    rows = draw(st.integers(1, max_side))
    cols = draw(st.integers(1, max_side))
    return draw(arrays(np.int8, (rows, cols), elements=st.integers(0, 9)))


@st.composite
def tasks(draw, max_side: int = 8):
    """(demos, query, answer) with small grids: the tokenizer is the slow part."""
    n = draw(st.integers(0, 3))
    demos = [Example(draw(grids(max_side)), draw(grids(max_side))) for _ in range(n)]
    return demos, draw(grids(max_side)), draw(grids(max_side))


def ids_of(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


G = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.int8)


# --- grid text --------------------------------------------------------------------------------

def test_grid_text_layout():
    assert grid_to_text(G) == "012\n345"
    assert grid_to_text(np.array([[7]])) == "7"


def test_round_trip_every_shape():
    rng = np.random.default_rng(0)
    for rows in range(1, 31):
        for cols in range(1, 31):
            g = rng.integers(0, 10, (rows, cols), dtype=np.int8)
            back = text_to_grid(grid_to_text(g))
            assert back is not None and back.dtype == np.int8 and np.array_equal(back, g), (rows, cols)


@given(grids())
def test_round_trip_property(g):
    back = text_to_grid(grid_to_text(g))
    assert back is not None and back.shape == g.shape and np.array_equal(back, g)


def test_tolerates_surrounding_blank_lines():
    for text in ["012\n345\n", "\n012\n345", "\n \n012\n345\n\n", "012\n345\n  \n"]:
        assert np.array_equal(text_to_grid(text), G), repr(text)


@pytest.mark.parametrize("text", [
    "", "\n", "  \n ",                 # empty
    "012\n34", "01\n345",             # ragged
    "012\n\n345",                     # blank line inside
    "0 12\n345", " 012\n345", "012 \n345", "01\t2\n345",  # whitespace in a row
    "0a2\n345", "input\n012",         # letters
    "0-2\n345", "-12\n345", "0.2\n345",  # signs and dots
    "01\u0663\n345",                  # Arabic-Indic digit three
    "012\r\n345\r\n",                 # carriage returns are not digits
    "\n".join(["0"] * 31),            # 31 rows
    "0" * 31,                         # 31 columns
])
def test_malformed_text_is_none(text):
    assert text_to_grid(text) is None


def test_max_size():
    assert text_to_grid("\n".join(["0"] * 30)).shape == (30, 1)
    assert text_to_grid("0" * 30).shape == (1, 30)
    assert text_to_grid("000\n000", max_size=2) is None
    assert text_to_grid("00\n00", max_size=2).shape == (2, 2)


def test_grid_to_text_rejects_non_grids():
    for bad, message in [(np.zeros((0, 3), np.int8), r"non-empty 2-D grid, got shape \(0, 3\)"),
                         (np.zeros(3, np.int8), r"non-empty 2-D grid, got shape \(3,\)"),
                         (np.array([[10]]), r"values must be 0-9, got 10\.\.10"),
                         (np.array([[-1]]), r"values must be 0-9, got -1\.\.-1")]:
        with pytest.raises(ValueError, match=message):
            grid_to_text(bad)


def test_text_format_rejects_markers_that_break_the_layout():
    for kwargs in [{"end_marker": ""}, {"input_marker": "in\nput"}, {"output_marker": "out1"},
                   {"end_marker": " ."}]:
        ((name, value),) = kwargs.items()
        with pytest.raises(ValueError, match=re.escape(f"TextFormat.{name}={value!r}: must be non-empty, one line")):
            TextFormat(**kwargs)


# --- prompts and answers ----------------------------------------------------------------------

def test_prompt_layout():
    demo = Example(G, np.array([[9]], np.int8))
    assert format_demo(demo) == "input\n012\n345\noutput\n9\n.\n"
    assert format_answer(G) == "012\n345\n."
    assert format_prompt([demo, demo], np.array([[1, 2]])) == format_demo(demo) * 2 + "input\n12\noutput\n"
    fmt = TextFormat("I", "O", "E")
    assert format_prompt([demo], G, fmt) == "I\n012\n345\nO\n9\nE\nI\n012\n345\nO\n"


def test_demo_without_output_is_an_error():
    with pytest.raises(ValueError, match="output"):
        format_prompt([Example(G)], G)


def test_task_prompts_one_per_test_input():
    demo = Example(G, G)
    task = Task("t", train=(demo, demo), test=(Example(G[:1]), Example(G[:, :1], G)))
    assert task_prompts(task) == [format_prompt([demo, demo], G[:1]), format_prompt([demo, demo], G[:, :1])]


@given(grids(), st.text(max_size=40))
def test_parse_answer_ignores_what_follows_the_end_marker(g, garbage):
    text = format_answer(g) + "\n" + garbage
    assert np.array_equal(parse_answer(text), g)


def test_parse_answer_cases():
    assert np.array_equal(parse_answer("012\n345\n.\ninput\n11\noutput\n"), G)
    assert np.array_equal(parse_answer("012\n345\n."), G)
    assert np.array_equal(parse_answer("012\n345\n .\n"), G)       # stray spaces around the marker
    assert np.array_equal(parse_answer("\n012\n345\n.\n"), G)      # a leading newline
    assert parse_answer("012\n345\n") is None                      # cut off: no end marker
    assert parse_answer("012\n345") is None
    assert parse_answer("012\n345.\n") is None                     # marker glued to a row
    assert parse_answer(".\n012\n.") is None                       # nothing before the first marker
    assert parse_answer("012\n34\n.") is None                      # ragged
    assert parse_answer("") is None
    fmt = TextFormat(end_marker="END")
    assert np.array_equal(parse_answer("012\n345\nEND\n.", fmt), G)
    assert parse_answer("012\n345\n.", fmt) is None


# --- tokens -----------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(g=grids())
def test_every_cell_and_newline_is_one_token(tokenizer, g):
    text = grid_to_text(g)
    ids = ids_of(tokenizer, text)
    assert len(ids) == g.size + g.shape[0] - 1
    assert "".join(tokenizer.decode([i]) for i in ids) == text
    assert all(len(tokenizer.decode([i])) == 1 for i in ids)


def test_markers_are_one_token_each(tokenizer):
    for marker in ("input", "output", "."):
        assert len(ids_of(tokenizer, marker)) == 1
    assert count_tokens(tokenizer, "input\n0\noutput\n1\n.\n") == 10


@settings(max_examples=25, deadline=None)
@given(tasks())
def test_token_counter_matches_the_tokenizer(tokenizer, task):
    demos, query, answer = task
    counter = TokenCounter(tokenizer)
    prompt, answer_text = format_prompt(demos, query), format_answer(answer)
    assert counter.prompt(demos, query) == count_tokens(tokenizer, prompt)
    assert counter.answer(answer) == count_tokens(tokenizer, answer_text)
    assert counter.sequence(demos, query, answer) == count_tokens(tokenizer, prompt + answer_text)
    assert counter.grid(query) == count_tokens(tokenizer, grid_to_text(query))
    for ex in demos:
        assert counter.example(ex) == count_tokens(tokenizer, format_demo(ex))


def test_token_counter_with_other_markers(tokenizer):
    fmt = TextFormat("Input grid:", "Output grid:", "Done")
    counter = TokenCounter(tokenizer, fmt)
    demos = [Example(G, G.T)]
    text = format_prompt(demos, G, fmt) + format_answer(G, fmt)
    assert counter.sequence(demos, G, G) == count_tokens(tokenizer, text)


class CharPairTokenizer:
    """A tokenizer that merges pairs of characters: the ARC format cannot be counted with it."""

    name_or_path = "pairs-tokenizer"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(text[i]) for i in range(0, len(text), 2)]}


def test_token_counter_rejects_merging_tokenizer():
    with pytest.raises(ValueError, match="pairs-tokenizer"):
        TokenCounter(CharPairTokenizer())


@settings(max_examples=25, deadline=None)
@given(tasks(), st.sampled_from(["answer", "outputs"]))
def test_encode_matches_whole_text_and_masks(tokenizer, task, loss_on):
    demos, query, answer = task
    ids, labels = encode(tokenizer, demos, query, answer, loss_on=loss_on)
    prompt, answer_text = format_prompt(demos, query), format_answer(answer)
    assert ids == ids_of(tokenizer, prompt + answer_text)
    assert len(labels) == len(ids)
    n_answer = TokenCounter(tokenizer).answer(answer)
    # the answer is the last n_answer tokens, all labelled with their own ids
    assert labels[-n_answer:] == ids[-n_answer:]
    assert tokenizer.decode(ids[-n_answer:]) == answer_text
    labelled = [i for i, lab in enumerate(labels) if lab != IGNORE_INDEX]
    assert all(labels[i] == ids[i] for i in labelled)
    if loss_on == "answer":
        assert labelled == list(range(len(ids) - n_answer, len(ids)))
    else:
        # every demo output (grid + "\n" + end marker) and the answer, nothing else
        expected = "".join(format_answer(ex.output) for ex in demos) + answer_text
        assert tokenizer.decode([ids[i] for i in labelled]) == expected


def test_encode_labelled_spans_are_exact(tokenizer):
    demo = Example(G, np.array([[9]], np.int8))
    ids, labels = encode(tokenizer, [demo], G, G, loss_on="outputs")
    marked = "".join("^" if lab != IGNORE_INDEX else "_" for lab in labels)
    # input \n 0 1 2 \n 3 4 5 \n output \n | 9 \n . | \n | input ... output \n | 0 1 2 \n 3 4 5 \n .
    assert marked == "_" * 12 + "^^^" + "_" + "_" * 12 + "^" * 9


def test_encode_prompt_only(tokenizer):
    demos = [Example(G, G)]
    ids, labels = encode(tokenizer, demos, G, None)
    assert ids == ids_of(tokenizer, format_prompt(demos, G))
    assert labels == [IGNORE_INDEX] * len(ids)
    ids_outputs, labels_outputs = encode(tokenizer, demos, G, None, loss_on="outputs")
    assert ids_outputs == ids and sum(lab != IGNORE_INDEX for lab in labels_outputs) == 9


def test_encode_rejects_unknown_loss_on(tokenizer):
    with pytest.raises(ValueError, match="loss_on"):
        encode(tokenizer, [], G, G, loss_on="everything")  # type: ignore[arg-type]


def test_default_format_is_the_contract():
    assert (DEFAULT_FORMAT.input_marker, DEFAULT_FORMAT.output_marker, DEFAULT_FORMAT.end_marker) == (
        "input", "output", ".")
