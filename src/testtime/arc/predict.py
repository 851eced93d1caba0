"""Augmented inference (Akyurek et al. 2024): predict each test input under invertible transforms.

For every transform `t` of `inference_transforms` (the 8 symmetries of the square, optionally
with colour permutations, each with its own shuffled demonstration order) the task becomes
`t.task(task)`; the model answers the transformed test input by greedy decoding; the answer is
parsed and mapped back with `t.inverse().grid`, giving one `vote.Candidate` per transform.

Decoding is batched `model.generate` with a KV cache and left padding. `AnswerShape`, a
`StoppingCriteria`, ends a row as soon as its text can no longer be an answer grid (a letter,
a row over 30 cells or unlike the first, a 31st line): garbage then costs a few tokens, not 931.
Test outputs are never read.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from testtime.arc.format import DEFAULT_FORMAT, MAX_SIDE, TextFormat, TokenCounter, encode, parse_answer
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
from testtime.config import at_least, validate
from testtime.seeds import name_key

log = logging.getLogger(__name__)

DIGITS = frozenset("0123456789")


@dataclass
class InferArgs:
    """How to predict a task's test inputs."""

    transforms: Literal["geometric", "geometric+color"] = "geometric"
    """geometric: the 8 symmetries; geometric+color: also `n_color` colour-permuted copies (0 fixed) of each."""
    n_color: int = 1
    """Random colour permutations per symmetry under geometric+color."""
    demo_order: bool = True
    """Shuffle the demonstrations' order per transform (seeded)."""
    max_new_tokens: int = 931
    """Decoding bound per answer: a 30x30 grid is 30 rows x (30 digits + newline) + the end marker."""
    batch_size: int = 8
    """Prompts decoded together."""
    max_len: int = 8192
    """Bound on prompt + max_new_tokens; random context demos are dropped until a prompt fits."""
    seed: int = 0
    """Seeds colour permutations, demonstration orders and demo dropping (mixed with the task id)."""

    def check(self) -> Iterator[tuple[str, str]]:
        for name in ("n_color", "max_new_tokens", "batch_size", "max_len"):
            yield from at_least(name, getattr(self, name), 1)


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


@dataclass
class PredictOutcome:
    """The predictions for one test input."""

    candidates: list[Candidate]
    """One per prompt whose answer parsed, in the original frame, in transform order."""
    n_prompts: int
    """Prompts decoded (transforms whose prompt fit `max_len`)."""
    n_unparsed: int
    """Decoded answers that were no grid (no end marker, cut short, malformed)."""
    n_unfit: int
    """Transforms skipped: the prompt exceeded `max_len` even with a single demonstration."""
    seconds: float
    """Wall time: an equal share of preparing the prompts plus a share, by prompts, of the batched decoding."""


def inference_transforms(args: InferArgs, n_train: int, rng: np.random.Generator) -> list[Transform]:
    """The 8 symmetries (identity first), each followed by `n_color` colour-permuted copies under
    geometric+color; with `demo_order`, each gets its own random order of the `n_train` demos."""
    out: list[Transform] = []
    for geo in geometric_transforms():
        variants: list[Transform] = [geo]
        if args.transforms == "geometric+color":
            variants += [compose(geo, random_color_permutation(rng, keep_zero=True)) for _ in range(args.n_color)]
        for t in variants:
            if args.demo_order:
                t = compose(t, DemoOrder(tuple(int(i) for i in rng.permutation(n_train))))
            out.append(t)
    return out


# --- decoding -----------------------------------------------------------------------------------

class AnswerShape(StoppingCriteria):
    """Per-row stop: at the end marker, or once the text can no longer be an answer grid.

    The text can no longer be an answer once it has a character other than a digit, a newline or
    the end marker's, a row of more than `max_side` cells, more than `max_side` lines (blank
    ones included: a model stuck on newlines stops after 31), or a row whose length differs
    from the first row's. With `check=False` only the end marker stops a row. Records each
    row's generated length.
    """

    def __init__(self, tokenizer: Any, batch: int, stop_id: int, *, check: bool = True,
                 max_side: int = MAX_SIDE) -> None:
        self.tokenizer = tokenizer
        self.stop_id = stop_id
        self.end_text = tokenizer.decode([stop_id])
        self.allowed = DIGITS | {"\n"} | set(self.end_text)
        self.check = check
        self.max_side = max_side
        self.steps = 0
        self.width = [0] * batch  # cells so far in the current line
        self.lines = [0] * batch  # newlines so far
        self.first_width: list[int | None] = [None] * batch  # length of the first non-blank row
        self.length: list[int | None] = [None] * batch  # generated tokens when the row ended
        self.stopped = [False] * batch
        self._texts: dict[int, str] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        self.steps += 1
        for row, token in enumerate(input_ids[:, -1].tolist()):  # host sync: one small copy per step
            if self.length[row] is not None:
                continue
            text = self._text(token)
            if token == self.stop_id or self.end_text in text:
                self.length[row], self.stopped[row] = self.steps, True
            elif self.check and not self._extend(row, text):
                self.length[row] = self.steps
        done = [n is not None for n in self.length]
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


class GreedyLogprob(LogitsProcessor):
    """Records log p(argmax token) per step without changing the scores.

    Greedy decoding picks the argmax, so this is the chosen token's log-probability; keeping a
    (B,) tensor per step instead of `output_scores`' (B, vocab) saves ~1.5 GB at 931 steps x 8.
    """

    def __init__(self) -> None:
        self.steps: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(scores.max(dim=-1).values - torch.logsumexp(scores, dim=-1))
        return scores


@torch.inference_mode()
def generate(model: Any, tokenizer: Any, prompts: Sequence[list[int]], *, stop_id: int, max_new_tokens: int,
             batch_size: int, check_answer: bool = True) -> list[Generation]:
    """Greedy continuations of `prompts` (token ids), in the order given.

    Prompts are sorted by length (longest first: memory errors show at once, and batches pad
    little) and decoded `batch_size` at a time with left padding. A row ends at `stop_id`, at
    `max_new_tokens`, or (with `check_answer`) as soon as its text cannot be an answer grid.
    """
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        batch = _generate_batch(model, tokenizer, [prompts[i] for i in chunk], stop_id=stop_id,
                                max_new_tokens=max_new_tokens, check_answer=check_answer)
        for i, gen in zip(chunk, batch, strict=True):
            results[i] = gen
    return [gen for gen in results if gen is not None]


def _generate_batch(model: Any, tokenizer: Any, prompts: list[list[int]], *, stop_id: int, max_new_tokens: int,
                    check_answer: bool) -> list[Generation]:
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_id
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)  # (B, T), left padded
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, p in enumerate(prompts):
        input_ids[row, width - len(p):] = torch.tensor(p, dtype=torch.long)
        attention_mask[row, width - len(p):] = 1
    device = next(model.parameters()).device
    shape = AnswerShape(tokenizer, len(prompts), stop_id, check=check_answer)
    scorer = GreedyLogprob()
    sequences = model.generate(
        input_ids=input_ids.to(device), attention_mask=attention_mask.to(device),
        do_sample=False, num_beams=1, repetition_penalty=1.0, max_new_tokens=max_new_tokens,
        eos_token_id=[stop_id], pad_token_id=pad_id, use_cache=True,
        stopping_criteria=StoppingCriteriaList([shape]), logits_processor=LogitsProcessorList([scorer]),
    )
    new = sequences[:, width:].tolist()  # (B, steps)
    logprobs = torch.stack(scorer.steps, dim=1).double().cumsum(dim=1).tolist() if scorer.steps else None  # (B, steps)
    out = []
    for row, tokens in enumerate(new):
        n = shape.length[row] if shape.length[row] is not None else len(tokens)
        ids = tokens[:n]
        logprob = logprobs[row][n - 1] if n and logprobs is not None else 0.0
        out.append(Generation(token_ids=ids, text=tokenizer.decode(ids), logprob=float(logprob),
                              stopped=shape.stopped[row]))
    return out


# --- prediction ---------------------------------------------------------------------------------

@dataclass
class _Prompt:
    test_index: int
    transform: Transform
    token_ids: list[int]


def predict_test(model: Any, tokenizer: Any, task: Task, test_index: int, transforms: Sequence[Transform],
                 args: InferArgs, *, counter: TokenCounter, fmt: TextFormat = DEFAULT_FORMAT) -> PredictOutcome:
    """Candidates for `task.test[test_index]`, one per transform whose prompt fits and answer parses."""
    return _predict(model, tokenizer, task, [test_index], transforms, args, counter, fmt)[0]


def predict_task(model: Any, tokenizer: Any, task: Task, args: InferArgs, *, counter: TokenCounter,
                 fmt: TextFormat = DEFAULT_FORMAT) -> list[PredictOutcome]:
    """One outcome per test input; every prompt of the task goes through one batched decoding."""
    validate(args)
    rng = np.random.default_rng([args.seed, name_key(task.id)])
    transforms = inference_transforms(args, len(task.train), rng)
    return _predict(model, tokenizer, task, range(len(task.test)), transforms, args, counter, fmt)


def end_token_id(tokenizer: Any, fmt: TextFormat = DEFAULT_FORMAT) -> int:
    """The token an answer ends with (the end marker after a newline); ValueError if it is not one token."""
    ids = tokenizer(f"\n{fmt.end_marker}", add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids[-1:]) != fmt.end_marker:
        raise ValueError(f"the end marker {fmt.end_marker!r} is not a single token after a newline in this "
                         f"tokenizer (got {ids}); choose another TextFormat.end_marker")
    return ids[-1]


def _predict(model: Any, tokenizer: Any, task: Task, test_indices: Sequence[int], transforms: Sequence[Transform],
             args: InferArgs, counter: TokenCounter, fmt: TextFormat) -> list[PredictOutcome]:
    t0 = time.perf_counter()
    stop_id = end_token_id(tokenizer, fmt)
    # the model never sees a test output: strip them before any transform touches the task
    blind = dataclasses.replace(task, test=tuple(Example(ex.input) for ex in task.test))
    prompts: list[_Prompt] = []
    unfit = {i: 0 for i in test_indices}
    for i in test_indices:
        rng = np.random.default_rng([args.seed, name_key(task.id), i])
        for t in transforms:
            moved = t.task(blind)
            query = moved.test[i].input
            demos = fit_demos(moved.train, query, None, counter, args.max_len, rng, reserve=args.max_new_tokens)
            if demos is None:
                unfit[i] += 1
                continue
            ids, _ = encode(tokenizer, demos, query, None, fmt)
            prompts.append(_Prompt(i, t, ids))
    prep = time.perf_counter() - t0

    t1 = time.perf_counter()
    gens = generate(model, tokenizer, [p.token_ids for p in prompts], stop_id=stop_id,
                    max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    decode_seconds = time.perf_counter() - t1

    outcomes = []
    for i in test_indices:
        mine = [(p, g) for p, g in zip(prompts, gens, strict=True) if p.test_index == i]
        candidates = [c for c in (_candidate(p.transform, g, fmt) for p, g in mine) if c is not None]
        share = len(mine) / len(prompts) if prompts else 0.0
        seconds = prep / len(unfit) + decode_seconds * share
        outcome = PredictOutcome(candidates=candidates, n_prompts=len(mine), n_unparsed=len(mine) - len(candidates),
                                 n_unfit=unfit[i], seconds=seconds)
        log.debug("task %s test %d: %d prompts, %d candidates, %d unparsed, %d unfit, %.2f s", task.id, i,
                  outcome.n_prompts, len(candidates), outcome.n_unparsed, outcome.n_unfit, outcome.seconds)
        outcomes.append(outcome)
    return outcomes


def _candidate(t: Transform, gen: Generation, fmt: TextFormat) -> Candidate | None:
    """The parsed answer in the original frame; None unless the row reached the end marker and parsed."""
    grid = parse_answer(gen.text, fmt) if gen.stopped else None
    if grid is None:
        return None
    return Candidate(grid=t.inverse().grid(grid), transform=t.name, group=geometric_part(t).name,
                     logprob=gen.logprob)
