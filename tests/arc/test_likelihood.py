"""The true answer's likelihood and product-of-experts scores, against hand computations on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import make_tiny_model
from testtime.arc.format import TokenCounter, encode, format_answer, format_prompt
from testtime.arc.likelihood import poe_scores, score_answers, truth_bits, truth_rows
from testtime.arc.predict import InferArgs, inference_transforms
from testtime.arc.task import Example, Task

VOCAB = 8192  # every id of the ARC format is below it


def g(rows):
    return np.array(rows, dtype=np.int8)


TASK = Task("lik", train=(Example(g([[1, 2], [3, 4]]), g([[4, 3], [2, 1]])), Example(g([[5, 6, 7]]), g([[7, 6, 5]]))),
            test=(Example(g([[1, 0], [2, 3], [4, 5]]), g([[0, 1], [3, 2], [5, 4]])), Example(g([[8]]), g([[8, 8]]))))


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(vocab_size=VOCAB, seed=3)


def by_hand(model, prompt_ids: list[int], answer_ids: list[int]) -> float:
    """log p(answer | prompt) from one unpadded forward pass over the whole sequence, summed in float64."""
    ids = torch.tensor([prompt_ids + answer_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
    start = len(prompt_ids)
    return sum(float(logp[start + k - 1, tok]) for k, tok in enumerate(answer_ids))


def tokens(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_score_answers_batched_equals_one_sequence_at_a_time(model, tokenizer):
    rows = []
    for demos, query, answer in ((TASK.train, TASK.test[0].input, TASK.test[0].output),
                                 (TASK.train[:1], TASK.test[1].input, TASK.test[1].output),
                                 ((), TASK.train[0].input, TASK.train[0].output)):
        prompt, ans = tokens(tokenizer, format_prompt(demos, query)), tokens(tokenizer, format_answer(answer))
        rows.append((prompt + ans, len(ans), by_hand(model, prompt, ans)))
    batched = score_answers(model, [(ids, n) for ids, n, _ in rows], batch_size=3)  # three lengths, padded
    one = [score_answers(model, [(ids, n)], batch_size=1)[0] for ids, n, _ in rows]
    assert batched == pytest.approx([h for _, _, h in rows], abs=1e-4)
    assert one == pytest.approx(batched, abs=1e-5)
    with pytest.raises(ValueError, match="answer tokens"):
        score_answers(model, [([1, 2], 2)])


def test_truth_bits_are_the_hand_computed_nll_of_the_true_output(model, tokenizer):
    counter = TokenCounter(tokenizer)
    rows = truth_rows(tokenizer, TASK, counter=counter, max_len=4096, seed=0)
    bits = truth_bits(model, TASK, rows, batch_size=2)
    for ex, measured in zip(TASK.test, bits, strict=True):
        # the identity prompt: every demonstration in the task's order, then the test input
        prompt = tokens(tokenizer, format_prompt(TASK.train, ex.input))
        ans = tokens(tokenizer, format_answer(ex.output))
        nll_bits = -by_hand(model, prompt, ans) / math.log(2)
        assert measured["bits_per_token"] == pytest.approx(nll_bits / len(ans), rel=1e-5)
        assert measured["bits_per_cell"] == pytest.approx(nll_bits / ex.output.size, rel=1e-5)
        assert len(ans) == ex.output.shape[0] * (ex.output.shape[1] + 1) - 1 + 2  # grid, "\n", end marker
    # no output known, or nothing fits: no measurement
    blind = Task("b", TASK.train, (Example(TASK.test[0].input), TASK.test[1]))
    rows = truth_rows(tokenizer, blind, counter=counter, max_len=4096, seed=0)
    assert rows[0] is None and rows[1] is not None
    assert truth_bits(model, blind, rows)[0] is None
    assert truth_rows(tokenizer, TASK, counter=counter, max_len=10, seed=0) == [None, None]


def test_poe_is_the_hand_sum_over_the_transformed_views(model, tokenizer):
    transforms = inference_transforms(InferArgs(), len(TASK.train), np.random.default_rng(0))  # 8 views, shuffled
    query = TASK.test[0].input
    experts = []
    for t in transforms:
        moved = t.task(Task("v", TASK.train, (Example(query),)))
        ids, _ = encode(tokenizer, moved.train, moved.test[0].input, None)
        experts.append((t, ids))
    candidates = [TASK.test[0].output, g([[1, 2]]), g([[3], [3]])]
    scores = poe_scores(model, tokenizer, candidates, experts, batch_size=5)
    for grid, score in zip(candidates, scores, strict=True):
        # each view sees the prompt and the candidate in its own frame
        hand = math.fsum(by_hand(model, ids, tokens(tokenizer, format_answer(t.grid(grid)))) for t, ids in experts)
        assert score == pytest.approx(hand, abs=1e-3)
    rot = [t.name for t in transforms].index(next(t.name for t in transforms if t.name.startswith("rot90")))
    one_view = poe_scores(model, tokenizer, candidates[:1], experts[rot:rot + 1])[0]
    unrotated = by_hand(model, experts[rot][1], tokens(tokenizer, format_answer(candidates[0])))
    assert one_view != pytest.approx(unrotated, abs=1e-3)  # the candidate really is rotated with the prompt
    assert poe_scores(model, tokenizer, candidates, []) == [-math.inf] * 3
