"""The true answer's likelihood and product-of-experts scores, against hand computations on a tiny model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import make_tiny_model
from testtime.arc.format import TokenCounter, encode, format_answer, format_prompt
from testtime.arc.likelihood import poe_scores, score_answers, truth_bits, truth_rows
from testtime.arc.predict import inference_transforms
from testtime.arc.settings import InferArgs
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


def test_score_views_add_each_candidates_hand_computed_log_probs_under_fresh_views(tokenizer, monkeypatch):
    """--score-views K: every candidate is also read under K fresh views of the whole task; the record
    keeps both parts and the PoE score the selection uses is their sum."""
    import testtime.arc.solve as solve_module
    from testtime.arc.likelihood import fresh_views
    from testtime.arc.settings import SolveConfig
    from testtime.arc.solve import Solver, task_seed
    from testtime.arc.task import as_grid
    from testtime.arc.transforms import ColorPermutation, Compose, DemoOrder, Geometric, parse_transform
    from testtime.arc.vote import Candidate
    from testtime.lora import AdapterHost
    from testtime.settings import LoraArgs

    real = solve_module.predict_task

    def with_planted(*args, **kw):  # a random model parses little: plant three candidates per test input
        outcomes = real(*args, **kw)
        for o in outcomes:
            o.candidates += [Candidate(g(grid), "identity", "identity", -1.0, 4)
                             for grid in ([[1]], [[2, 2]], [[3], [4]])]
        return outcomes
    monkeypatch.setattr(solve_module, "predict_task", with_planted)
    host = AdapterHost(make_tiny_model(vocab_size=VOCAB, seed=4), LoraArgs(r=4, alpha=8))

    def solve(**infer):
        config = SolveConfig(ttt=False, infer=InferArgs(max_new_tokens=4, **infer))
        return Solver(host, tokenizer, config).solve_task(TASK).tests

    scored, plain = solve(select="poe", score_views=3), solve(select="poe")
    for i, (test, before) in enumerate(zip(scored, plain, strict=True)):
        views = [parse_transform(name) for name in test.score_views]
        assert len(views) == 3 and len({t.name for t in views}) == 3
        for t in views:  # a symmetry, a colour permutation and an order of every demonstration
            assert isinstance(t, Compose) and [type(p) for p in t.parts] == [Geometric, ColorPermutation, DemoOrder]
            assert sorted(t.parts[2].order) == [0, 1]
        query = Task(TASK.id, TASK.train, (Example(TASK.test[i].input),))
        for c, c0 in zip(test.candidates, before.candidates, strict=True):
            hand = 0.0
            for t in views:  # the whole task and the candidate, both in the view's frame
                moved = t.task(query)
                prompt = tokens(tokenizer, format_prompt(moved.train, moved.test[0].input))
                hand += by_hand(host.model, prompt, tokens(tokenizer, format_answer(t.grid(as_grid(c.grid)))))
            assert c.poe_views == pytest.approx(hand, abs=1e-3)
            assert c.grid == c0.grid and c.poe_prompts == pytest.approx(c0.poe, abs=1e-6)  # K=0's score
            assert c.poe == pytest.approx(c.poe_prompts + c.poe_views, abs=1e-9)
        poe = [c.poe for c in test.candidates]
        assert [poe[k] for k in test.selection] == sorted(poe, reverse=True)  # picked by the sum
        assert before.score_views is None and all(c.poe_views is None for c in before.candidates)
    assert scored[0].score_views != scored[1].score_views  # drawn per test input
    counter = TokenCounter(tokenizer)
    again = fresh_views(tokenizer, TASK, 1, 3, counter=counter, max_len=8192, reserve=4, seed=task_seed(0, TASK.id))
    assert [t.name for t, _ in again] == scored[1].score_views  # from the seed and the task alone
    # with score views the scores are kept under the vote too, which still picks the attempts
    voted = solve(select="vote", score_views=3)[0]
    assert voted.selection == list(range(len(voted.candidates)))
    assert [c.poe for c in voted.candidates] == pytest.approx([c.poe for c in scored[0].candidates])
    assert solve()[0].candidates[0].poe is None  # K=0 under the vote: no scoring, as before
