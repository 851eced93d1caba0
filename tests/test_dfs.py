"""Depth-first sampling returns exactly the continuations above the threshold, checked by brute force.

A tiny Llama over a 6-token vocabulary (two of them stop tokens) has 426 continuations of at most
4 tokens; each one's exact probability comes from a full forward pass without a cache. In ARC
inference, a tiny Llama trained to answer either of two grids gives both from every prompt.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import pytest
import torch

from helpers import arc_model_answering, make_tiny_model, two_demo_task  # tests/ is on sys.path under pytest
from testtime.arc.decoding import AnswerPaths, AnswerShape
from testtime.arc.format import TokenCounter
from testtime.arc.predict import end_token_id, predict_task
from testtime.arc.settings import InferArgs
from testtime.arc.task import grids_equal
from testtime.arc.transforms import geometric_part, parse_transform
from testtime.arc.vote import vote
from testtime.config import problems
from testtime.decode import dfs, greedy

VOCAB, STOPS, MAX_NEW = 6, frozenset({2, 5}), 4
PROMPTS = ([1, 3, 4], [1, 0, 0, 3], [4, 4], [1, 3, 3, 0, 4], [0], [3, 1, 4, 0])


def ends(tokens: list[int]) -> bool:
    return tokens[-1] in STOPS


@pytest.fixture(scope="module")
def model():
    """Embeddings of std 0.1: the best continuation of a prompt has probability 0.25 to 0.6."""
    m = make_tiny_model(vocab_size=VOCAB, seed=0)
    with torch.no_grad():
        m.get_input_embeddings().weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    return m


def every_continuation() -> list[list[int]]:
    """All token sequences that end at a stop token or at MAX_NEW tokens, with no stop token before."""
    out: list[list[int]] = []

    def grow(prefix: list[int]) -> None:
        for t in range(VOCAB):
            seq = prefix + [t]
            if t in STOPS or len(seq) == MAX_NEW:
                out.append(seq)
            else:
                grow(seq)
    grow([])
    return out


@torch.no_grad()
def exact_logprobs(model, prompt: list[int]) -> dict[tuple[int, ...], float]:
    """Each continuation's summed log-probability, from full forward passes (no cache), by length."""
    found = {}
    by_length: dict[int, list[list[int]]] = {}
    for seq in every_continuation():
        by_length.setdefault(len(seq), []).append(seq)
    for seqs in by_length.values():
        ids = torch.tensor([prompt + s for s in seqs])
        logp = model(input_ids=ids).logits.float().log_softmax(-1)[:, len(prompt) - 1:-1]  # (B, n, V)
        picked = logp.gather(-1, ids[:, len(prompt):, None])[..., 0].double().sum(-1)
        found.update({tuple(s): float(lp) for s, lp in zip(seqs, picked, strict=True)})
    return found


def thresholds(probs: list[float]) -> list[tuple[float, int]]:
    """(threshold, how many continuations reach it): geometric midpoints between well-separated
    neighbours, so float rounding cannot move a continuation across."""
    probs = sorted(probs, reverse=True)
    out = []
    for k in (1, 2, 3, 7, 20, 60, 200):
        while k < len(probs) and probs[k - 1] < probs[k] * 1.001:
            k += 1
        out.append((math.sqrt(probs[k - 1] * probs[k]), k))
    return out


@pytest.mark.parametrize("prompt", PROMPTS[:3])
def test_dfs_returns_exactly_the_continuations_above_the_threshold(model, prompt):
    exact = exact_logprobs(model, prompt)
    assert len(exact) == 426 and math.fsum(math.exp(v) for v in exact.values()) == pytest.approx(1.0, abs=1e-5)
    for min_prob, count in thresholds([math.exp(v) for v in exact.values()]):
        want = {s for s, lp in exact.items() if lp >= math.log(min_prob)}
        got = dfs(model, prompt, min_prob=min_prob, max_new_tokens=MAX_NEW, stop=ends, max_candidates=1000)
        assert len(want) == count and {tuple(c.token_ids) for c in got} == want, min_prob
        for c in got:
            assert c.logprob == pytest.approx(exact[tuple(c.token_ids)], abs=1e-5)
            assert c.logprob == pytest.approx(math.fsum(c.logprobs), abs=1e-9) and c.logprob >= math.log(min_prob)
        assert [c.logprob for c in got] == sorted((c.logprob for c in got), reverse=True)


def test_a_threshold_below_every_continuation_returns_all_of_them(model):
    exact = exact_logprobs(model, PROMPTS[3])
    lowest = math.exp(min(exact.values()))
    got = dfs(model, PROMPTS[3], min_prob=lowest / 2, max_new_tokens=MAX_NEW, stop=ends, max_candidates=1000)
    assert sorted(tuple(c.token_ids) for c in got) == sorted(exact)
    assert dfs(model, PROMPTS[3], min_prob=1.0, max_new_tokens=MAX_NEW, stop=ends) == []


def test_without_a_stop_rule_every_continuation_has_max_new_tokens(model):
    got = dfs(model, PROMPTS[0], min_prob=0.002, max_new_tokens=3)
    assert got and all(len(c.token_ids) == 3 for c in got)
    assert any(t in STOPS for c in got for t in c.token_ids[:-1])  # a stop token no longer ends one


def greedy_of(model, prompt):
    return greedy(model, [prompt], max_new_tokens=MAX_NEW, pad_id=0,
                  stop=lambda rows, tokens: [t in STOPS for t in tokens])[0]


@pytest.mark.parametrize("min_prob", [0.501, 0.53, 0.57])  # greedy: 0.24 to 0.575
def test_above_one_half_dfs_returns_at_most_greedys_answer(model, min_prob):
    kinds = set()
    for prompt in PROMPTS:
        best = greedy_of(model, prompt)
        got = dfs(model, prompt, min_prob=min_prob, max_new_tokens=MAX_NEW, stop=ends)
        qualifies = math.fsum(best.logprobs) >= math.log(min_prob)
        kinds.add(qualifies)
        assert len(got) == int(qualifies), prompt
        if got:
            assert got[0].token_ids == best.token_ids
            assert got[0].logprob == pytest.approx(math.fsum(best.logprobs), abs=1e-5)
    assert kinds == {True, False}  # both cases occur at each threshold


def test_greedys_answer_is_the_first_found_and_survives_the_candidate_cap(model, caplog):
    for prompt in PROMPTS:
        best = greedy_of(model, prompt)
        wide = dfs(model, prompt, min_prob=0.01, max_new_tokens=MAX_NEW, stop=ends, max_candidates=1000)
        assert best.token_ids in [c.token_ids for c in wide]
        with caplog.at_level(logging.WARNING, logger="testtime.decode"):
            capped = dfs(model, prompt, min_prob=0.01, max_new_tokens=MAX_NEW, stop=ends, max_candidates=2)
        assert len(wide) > 2 and len(capped) == 2 and best.token_ids in [c.token_ids for c in capped]
        assert "max_candidates=2" in caplog.text


def test_the_stop_rule_sees_each_prefix_once_after_its_parent(model):
    asked: list[tuple[int, ...]] = []

    def rule(tokens):
        asked.append(tuple(tokens))
        return ends(tokens)
    got = dfs(model, PROMPTS[1], min_prob=0.003, max_new_tokens=MAX_NEW, stop=rule, max_candidates=1000)
    assert len(set(asked)) == len(asked) > len(got) > 5
    for k, prefix in enumerate(asked):
        assert len(prefix) == 1 or prefix[:-1] in asked[:k]


def test_a_peft_wrapped_model_gives_the_same_continuations(model):
    from peft import LoraConfig, get_peft_model

    plain = dfs(model, PROMPTS[2], min_prob=0.01, max_new_tokens=MAX_NEW, stop=ends)
    wrapped = get_peft_model(copy.deepcopy(model), LoraConfig(r=2, target_modules=["q_proj"]))  # B = 0: same function
    again = dfs(wrapped, PROMPTS[2], min_prob=0.01, max_new_tokens=MAX_NEW, stop=ends)
    assert [c.token_ids for c in again] == [c.token_ids for c in plain] and len(plain) > 1


def test_bad_thresholds_are_refused(model):
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="min_prob"):
            dfs(model, [1], min_prob=bad, max_new_tokens=2)


# --- ARC inference: every answer above the threshold is a candidate -------------------------------

ARC_VOCAB = 8192  # every id the ARC format uses is below 5000
A, B = np.array([[1, 2]], dtype=np.int8), np.array([[3, 4]], dtype=np.int8)


TASK = two_demo_task("two-answers")


@pytest.fixture(scope="module")
def torn_model(tokenizer):
    """A tiny Llama that answers [[1, 2]] or [[3, 4]] (in the prompt's frame), each about half the time."""
    # the same prompts with either answer: the model cannot prefer one
    model, _ = arc_model_answering(tokenizer, TASK, (A, B), vocab_size=ARC_VOCAB, prompts=16, steps=60)
    return model


def test_dfs_gives_each_prompt_both_answers_mapped_back_and_counted(torn_model, tokenizer):
    counter = TokenCounter(tokenizer)
    args = InferArgs(sampling="dfs", min_prob=0.2)
    outcomes = predict_task(torn_model, tokenizer, TASK, args, counter=counter)
    greedy_outcomes = predict_task(torn_model, tokenizer, TASK, InferArgs(), counter=counter)
    for outcome, greedy_outcome in zip(outcomes, greedy_outcomes, strict=True):
        assert outcome.n_prompts == 8 and outcome.n_unparsed == 0
        by_prompt: dict[str, list] = {}
        for c in outcome.candidates:
            by_prompt.setdefault(c.transform, []).append(c)
        assert len(by_prompt) == 8 and len(outcome.candidates) == 16  # two answers per prompt
        for name, found in by_prompt.items():
            t = parse_transform(name)
            assert [c.decoding for c in found] == ["dfs:0", "dfs:1"]
            assert found[0].logprob >= found[1].logprob > math.log(0.2)
            # each answer is A or B in the prompt's frame, stored in the task's own frame
            assert sorted(t.grid(c.grid).tolist() for c in found) == [A.tolist(), B.tolist()]
            assert {c.group for c in found} == {geometric_part(t).name}
        ranked = vote(outcome.candidates)
        assert sum(r.votes for r in ranked) == 16  # vote sees every candidate
        assert len(greedy_outcome.candidates) == 8 and {c.decoding for c in greedy_outcome.candidates} == {"greedy"}
        for g in greedy_outcome.candidates:  # greedy's answer (p >= 0.2) is among the prompt's dfs answers
            same = [c for c in by_prompt[g.transform] if grids_equal(c.grid, g.grid)]
            assert len(same) == 1 and same[0].logprob == pytest.approx(g.logprob, abs=1e-4)


def test_greedy_ignores_min_prob_and_dfs_refuses_a_bad_one(torn_model, tokenizer):
    counter = TokenCounter(tokenizer)
    plain = predict_task(torn_model, tokenizer, TASK, InferArgs(), counter=counter)
    other = predict_task(torn_model, tokenizer, TASK, InferArgs(sampling="greedy", min_prob=0.9), counter=counter)
    assert [o.candidates for o in plain] == [o.candidates for o in other]
    strict = predict_task(torn_model, tokenizer, TASK, InferArgs(sampling="dfs", min_prob=0.9), counter=counter)
    assert all(o.candidates == [] and o.n_unparsed == o.n_prompts == 8 for o in strict)  # no answer reaches 0.9
    found = {p.field: p.message for p in problems(InferArgs(sampling="beam", min_prob=0.0))}  # type: ignore[arg-type]
    assert found == {"sampling": "must be one of greedy, dfs, not 'beam'", "min_prob": "must be in (0, 1], not 0.0"}
    assert {p.field for p in problems(InferArgs(min_prob=float("nan")))} == {"min_prob"}
    assert problems(InferArgs(sampling="dfs", min_prob=1.0)) == []


def test_answer_paths_agree_with_a_fresh_answer_shape_in_any_order(tokenizer):
    stop = end_token_id(tokenizer)
    alphabet = [tokenizer(ch, add_special_tokens=False)["input_ids"][0] for ch in "12\n"] + [stop]
    rng = np.random.default_rng(0)
    paths = AnswerPaths(tokenizer, stop, 12)
    for _ in range(300):  # random paths and prefixes: the fallback of a non-depth-first order too
        tokens = [int(t) for t in rng.choice(alphabet, size=int(rng.integers(1, 13)))]
        fresh = AnswerShape(tokenizer, 1, stop)
        ended = [fresh.done([0], [t])[0] for t in tokens]
        assert paths(tokens) == ended[-1]
