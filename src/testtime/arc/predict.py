"""Augmented inference (Akyurek et al. 2024): predict each test input under invertible transforms.

For every transform `t` of `inference_transforms` (the 8 symmetries of the square, optionally
with colour permutations) and each of `orders` demonstration orders, the task becomes
`t.task(task)`. `prompts` says which demonstrations a prompt holds: all n ("full"), all but one,
each demonstration left out in turn ("leave-one-out": the format TTT trains on, n-1
demonstrations), or both kinds. The model answers the transformed test input by greedy
decoding; the answer is parsed and mapped back with `t.inverse().grid`, giving one
`vote.Candidate` per prompt, with its transform, order, prompt kind and log-probability. With
`sampling="dfs"` (Franzen et al. 2025) a prompt gives every answer of probability >= `min_prob`
instead, each its own candidate (`decoding` "dfs:K", K its rank among the prompt's answers).

Decoding (`arc/decoding.py`) is batched greedy search with a preallocated KV cache, or a
depth-first search per prompt; a row or path ends as soon as its text can no longer be an answer grid.
Test outputs are never read.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from testtime.arc.decoding import Generation, generate, generate_dfs
from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, encode, parse_answer
from testtime.arc.records import PredictStats
from testtime.arc.settings import InferArgs
from testtime.arc.task import Example, Task
from testtime.arc.transforms import (
    DemoOrder,
    Transform,
    compose,
    geometric_part,
    geometric_transforms,
    random_color_permutation,
)
from testtime.arc.ttt_data import fit_demos
from testtime.arc.vote import Candidate
from testtime.config import validate
from testtime.seeds import name_key

log = logging.getLogger(__name__)

Plan = list[tuple[Transform, int, int | None]]
"""(transform, order index, left-out demonstration or None) per prompt of a test input."""


@dataclass
class PredictOutcome:
    """The predictions for one test input."""

    candidates: list[Candidate]
    """One per parsed answer (greedy: one per prompt at most), in the original frame, in transform order."""
    n_prompts: int
    """Prompts decoded (transforms whose prompt fit `max_len`)."""
    n_unparsed: int
    """Prompts that gave no candidate: no answer was a grid (no end marker, cut short, malformed), or
    under dfs no answer reached `min_prob`."""
    n_unfit: int
    """Prompts skipped: the prompt exceeded `max_len` even with a single demonstration."""
    seconds: float
    """Wall time: an equal share of preparing the prompts plus a share, by prompts, of the batched decoding."""
    experts: list[tuple[Transform, list[int]]] = dataclasses.field(default_factory=list)
    """(transform, prompt token ids) of each decoded full prompt (every fitted demonstration), or of each
    leave-one-out prompt when there is no full one: the views product-of-experts scoring re-reads a
    candidate under."""


def predict_stats(outcomes: Sequence[PredictOutcome]) -> PredictStats:
    """A task's inference for its record: the sums over its test inputs' outcomes."""
    return PredictStats(seconds=sum(o.seconds for o in outcomes), prompts=sum(o.n_prompts for o in outcomes),
                        unparsed=sum(o.n_unparsed for o in outcomes), unfit=sum(o.n_unfit for o in outcomes))


def inference_transforms(args: InferArgs, n_train: int, rng: np.random.Generator) -> list[Transform]:
    """The 8 symmetries (identity first), each followed by `n_color` colour-permuted copies under
    geometric+color; each repeated for `orders` demo orders (with `demo_order` every order is a
    random permutation of the `n_train` demos, else the first keeps the task's order)."""
    return [t for t, _ in inference_plan(_variants(args, rng), args, n_train, rng)]


def _variants(args: InferArgs, rng: np.random.Generator) -> list[Transform]:
    """The symmetries, each followed by its colour-permuted copies under geometric+color."""
    out: list[Transform] = []
    for geo in geometric_transforms():
        out.append(geo)
        if args.transforms == "geometric+color":
            out += [compose(geo, random_color_permutation(rng, keep_zero=True)) for _ in range(args.n_color)]
    return out


def inference_plan(variants: Sequence[Transform], args: InferArgs, n_train: int,
                   rng: np.random.Generator) -> list[tuple[Transform, int]]:
    """Each variant under `args.orders` demo orders: (transform, order index)."""
    out: list[tuple[Transform, int]] = []
    for t in variants:
        for k in range(args.orders):
            if args.demo_order or k > 0:
                out.append((compose(t, DemoOrder(tuple(int(i) for i in rng.permutation(n_train)))), k))
            else:
                out.append((t, k))
    return out


def leave_one_out_plan(variants: Sequence[Transform], args: InferArgs, n_train: int,
                       rng: np.random.Generator) -> list[tuple[Transform, int, int]]:
    """(transform over the n-1 remaining demos, order index, the left-out demo) per variant, left-out demo
    and demo order (`args.orders`, at most the (n-1)! distinct ones); [] when the task has fewer than two
    demos."""
    if n_train < 2:
        return []
    out = []
    for t in variants:
        for j in range(n_train):
            for k in range(min(args.orders, math.factorial(n_train - 1))):
                order = rng.permutation(n_train - 1) if args.demo_order or k > 0 else range(n_train - 1)
                out.append((compose(t, DemoOrder(tuple(int(i) for i in order))), k, j))
    return out


def task_plan(args: InferArgs, n_train: int, rng: np.random.Generator) -> Plan:
    """Every prompt of a task under `args.prompts`: full prompts first, then leave-one-out ones (the rng
    is drawn in that order, so "both" starts with "full"'s prompts)."""
    variants = _variants(args, rng)
    loo_only = args.prompts == "leave-one-out" and n_train >= 2  # one demonstration: nothing to leave out
    plan: Plan = [] if loo_only else [(t, k, None) for t, k in inference_plan(variants, args, n_train, rng)]
    if args.prompts != "full":
        plan += leave_one_out_plan(variants, args, n_train, rng)
    return plan


# --- prediction ---------------------------------------------------------------------------------

@dataclass
class _Prompt:
    test_index: int
    transform: Transform
    token_ids: list[int]
    order: int = 0
    label: str = "all"  # "all" demonstrations, or "loo:J" with demonstration J left out


def predict_test(model: Any, tokenizer: Any, task: Task, test_index: int, transforms: Sequence[Transform],
                 args: InferArgs, *, counter: TokenCounter, fmt: TextFormat = DEFAULT_FORMAT,
                 deadline: float | None = None) -> PredictOutcome:
    """Candidates for `task.test[test_index]`, one per transform whose prompt fits and answer parses;
    TimeUp once `deadline` (epoch seconds) passes during decoding."""
    plan: Plan = [(t, 0, None) for t in transforms]
    return _predict(model, tokenizer, task, [test_index], plan, args, counter, fmt, deadline)[0]


def predict_task(model: Any, tokenizer: Any, task: Task, args: InferArgs, *, counter: TokenCounter,
                 fmt: TextFormat = DEFAULT_FORMAT, deadline: float | None = None) -> list[PredictOutcome]:
    """One outcome per test input; every prompt of the task goes through one batched decoding (TimeUp once
    `deadline`, epoch seconds, passes)."""
    validate(args)
    rng = np.random.default_rng([args.seed, name_key(task.id)])
    plan = task_plan(args, len(task.train), rng)
    return _predict(model, tokenizer, task, range(len(task.test)), plan, args, counter, fmt, deadline)


def end_token_id(tokenizer: Any, fmt: TextFormat = DEFAULT_FORMAT) -> int:
    """The token an answer ends with (the end marker after a newline); ValueError if it is not one token."""
    ids = tokenizer(f"\n{fmt.end_marker}", add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids[-1:]) != fmt.end_marker:
        raise ValueError(f"the end marker {fmt.end_marker!r} is not a single token after a newline in this "
                         f"tokenizer (got {ids}); choose another TextFormat.end_marker")
    return ids[-1]


def _prompts(tokenizer: Any, task: Task, test_indices: Sequence[int], plan: Plan, args: InferArgs,
             counter: TokenCounter, fmt: TextFormat) -> tuple[list[_Prompt], dict[int, int]]:
    """Every fitting prompt of the plan for each test input, and how many did not fit per input."""
    # the model never sees a test output: strip them before any transform touches the task
    blind = dataclasses.replace(task, test=tuple(Example(ex.input) for ex in task.test))
    prompts: list[_Prompt] = []
    unfit = {i: 0 for i in test_indices}
    for i in test_indices:
        rng = np.random.default_rng([args.seed, name_key(task.id), i])
        for t, order, left_out in plan:
            source = blind if left_out is None else dataclasses.replace(
                blind, train=blind.train[:left_out] + blind.train[left_out + 1:])
            moved = t.task(source)
            query = moved.test[i].input
            demos = fit_demos(moved.train, query, None, counter, args.max_len, rng, reserve=args.max_new_tokens)
            if demos is None:
                unfit[i] += 1
                continue
            ids, _ = encode(tokenizer, demos, query, None, fmt)
            prompts.append(_Prompt(i, t, ids, order, "all" if left_out is None else f"loo:{left_out}"))
    return prompts, unfit


def _predict(model: Any, tokenizer: Any, task: Task, test_indices: Sequence[int], plan: Plan,
             args: InferArgs, counter: TokenCounter, fmt: TextFormat,
             deadline: float | None = None) -> list[PredictOutcome]:
    t0 = time.perf_counter()
    stop_id = end_token_id(tokenizer, fmt)
    prompts, unfit = _prompts(tokenizer, task, test_indices, plan, args, counter, fmt)
    prep = time.perf_counter() - t0

    t1 = time.perf_counter()
    gens = _decode(model, tokenizer, [p.token_ids for p in prompts], stop_id, args, deadline)
    decode_seconds = time.perf_counter() - t1

    outcomes = []
    for i in test_indices:
        mine = [(p, answers) for p, answers in zip(prompts, gens, strict=True) if p.test_index == i]
        per_prompt = [_candidates(p, answers, fmt, args.sampling) for p, answers in mine]
        candidates = [c for found in per_prompt for c in found]
        share = len(mine) / len(prompts) if prompts else 0.0
        seconds = prep / len(unfit) + decode_seconds * share
        outcome = PredictOutcome(candidates=candidates, n_prompts=len(mine), n_unparsed=per_prompt.count([]),
                                 n_unfit=unfit[i], seconds=seconds,
                                 experts=_experts([p for p, _ in mine]))
        log.debug("task %s test %d: %d prompts, %d candidates, %d unparsed, %d unfit, %.2f s", task.id, i,
                  outcome.n_prompts, len(candidates), outcome.n_unparsed, outcome.n_unfit, outcome.seconds)
        outcomes.append(outcome)
    return outcomes


def _experts(prompts: Sequence[_Prompt]) -> list[tuple[Transform, list[int]]]:
    """The PoE views: the full prompts; under leave-one-out only (no full prompt), the leave-one-out ones."""
    full = [p for p in prompts if p.label == "all"]
    return [(p.transform, p.token_ids) for p in full or prompts]


def _decode(model: Any, tokenizer: Any, prompts: list[list[int]], stop_id: int, args: InferArgs,
            deadline: float | None = None) -> list[list[Generation]]:
    """Each prompt's answers: greedy's one, or under dfs every one of probability >= min_prob."""
    if args.sampling == "dfs":
        return generate_dfs(model, tokenizer, prompts, stop_id=stop_id, max_new_tokens=args.max_new_tokens,
                            min_prob=args.min_prob, deadline=deadline)
    gens = generate(model, tokenizer, prompts, stop_id=stop_id, max_new_tokens=args.max_new_tokens,
                    batch_size=args.batch_size, deadline=deadline)
    return [[gen] for gen in gens]


def _candidates(p: _Prompt, answers: Sequence[Generation], fmt: TextFormat, sampling: str) -> list[Candidate]:
    """The prompt's answers that reached the end marker and parsed, in the original frame."""
    out = []
    for rank, gen in enumerate(answers):
        grid = parse_answer(gen.text, fmt) if gen.stopped else None
        if grid is None:
            continue
        t = p.transform
        out.append(Candidate(grid=t.inverse().grid(grid), transform=t.name, group=geometric_part(t).name,
                             logprob=gen.logprob, tokens=len(gen.token_ids), order=p.order, prompt=p.label,
                             decoding="greedy" if sampling == "greedy" else f"dfs:{rank}"))
    return out
