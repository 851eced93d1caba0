"""Greedy decoding with a preallocated KV cache, and depth-first search for every likely continuation.

`greedy` continues a batch of prompts (token ids) one token per step. Three things make it faster
than `model.generate` on a small model, where the per-step overhead, not the arithmetic, dominates:

- the KV cache is allocated once for prompt + answer (`transformers.StaticCache`) and written in
  place, where the default cache concatenates every layer's keys and values at every step (on the
  embedded model at batch 8 after 1,024 tokens, a third to a half of a decoding step was `cat`);
- a row that is done (its stop rule said so) leaves the batch: the cache, the mask and the
  positions are compacted, so the remaining rows decode at a smaller batch instead of carrying it;
- tokens and log-probabilities stay on the device in preallocated buffers: the one host copy per
  step is the new token of each live row, which the stop rule reads.

Left padding, positions counted from each row's first real token, and the chosen token's
log-probability (log-softmax in float32) match `generate`'s greedy search; `tests/test_decode.py`
checks that the tokens are identical to it.

`dfs` is the depth-first sampling of Franzen et al. 2025 ("Product of Experts with LLMs: Boosting
Performance on ARC Is a Matter of Perspective"): every continuation whose probability is at least
`min_prob`, found by expanding only the branches still above it (a prefix's probability bounds
every continuation of it, so what is pruned never comes back above the threshold).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache, StaticCache

from testtime.precision import compute_context, model_device

log = logging.getLogger(__name__)

StopRule = Callable[[list[int], list[int]], list[bool]]
"""(row indices in the caller's order, each row's new token) -> whether that row is done."""

PathStop = Callable[[list[int]], bool]
"""A continuation so far (prompt excluded, its newest token last) -> whether it ends there."""


@dataclass
class Decoded:
    """One row's continuation: its tokens (the one that ended it included) and their log-probabilities."""

    token_ids: list[int]
    logprobs: list[float]


@dataclass
class Completion:
    """One continuation found by `dfs`."""

    token_ids: list[int]
    """Its tokens, the one that ended it included."""
    logprobs: list[float]
    """Each token's log-probability (log-softmax in float32)."""
    logprob: float
    """Their sum, accumulated token by token: the value compared with log(min_prob)."""


@torch.inference_mode()
def greedy(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int, pad_id: int,
           stop: StopRule | None = None) -> list[Decoded]:
    """Greedy continuations of `prompts`, at most `max_new_tokens` each, in the order given.

    After each step `stop(rows, tokens)` is asked about the rows still decoding; a row it marks
    done keeps the token that ended it and leaves the batch. Without `stop`, every row decodes
    `max_new_tokens` tokens.
    """
    if not prompts:
        return []
    if max_new_tokens < 1:
        return [Decoded([], []) for _ in prompts]
    device = model_device(model)
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width + max_new_tokens), dtype=torch.long)  # grows one column per step
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):width] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    cache = {_cache_keyword(model): StaticCache(config=model.config, max_cache_len=width + max_new_tokens)}
    with compute_context(model, float32_head=False):  # the argmax needs no float32 logits
        return _greedy_loop(model, ids, mask, positions, cache, max_new_tokens, stop)


def _greedy_loop(model, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: dict,
                 max_new_tokens: int, stop: StopRule | None) -> list[Decoded]:
    """`greedy` after the prompts are laid out: the prefill, then one token per step."""
    device, (batch, width) = ids.device, ids.shape
    out = model(input_ids=ids, attention_mask=mask[:, :width], position_ids=positions, use_cache=True,
                logits_to_keep=1, **cache)
    tokens = torch.zeros((batch, max_new_tokens), dtype=torch.long, device=device)
    logprobs = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    lengths = [max_new_tokens] * batch
    rows = list(range(batch))  # the caller's index of each live row
    live = torch.arange(batch, device=device)
    next_position = positions[:, -1] + 1
    for step in range(max_new_tokens):
        scores = out.logits[:, -1].float()
        token = scores.argmax(-1)
        tokens[live, step] = token
        logprobs[live, step] = scores.gather(-1, token[:, None])[:, 0] - torch.logsumexp(scores, -1)
        done = stop(rows, token.tolist()) if stop is not None else [False] * len(rows)
        if step == max_new_tokens - 1:
            break
        if any(done):
            keep = [i for i, d in enumerate(done) if not d]
            for i, d in enumerate(done):
                if d:
                    lengths[rows[i]] = step + 1
            if not keep:
                break
            index = torch.tensor(keep, device=device)
            rows = [rows[i] for i in keep]
            live, token, mask, next_position = live[index], token[index], mask[index], next_position[index]
            next(iter(cache.values())).reorder_cache(index)
        mask[:, width + step] = 1
        out = model(input_ids=token[:, None], attention_mask=mask[:, :width + step + 1],
                    position_ids=next_position[:, None], use_cache=True, **cache)
        next_position = next_position + 1
    tokens_host, logprobs_host = tokens.tolist(), logprobs.tolist()
    return [Decoded(tokens_host[r][:n], logprobs_host[r][:n]) for r, n in enumerate(lengths)]


def _cache_keyword(model) -> str:
    """`cache` in transformers >= 5.24 (where `past_key_values` is deprecated), `past_key_values` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes it on
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


@torch.inference_mode()
def dfs(model, prompt: Sequence[int], *, min_prob: float, max_new_tokens: int, stop: PathStop | None = None,
        max_candidates: int = 64) -> list[Completion]:
    """Every continuation of `prompt` with probability >= `min_prob`, the most probable first.

    A continuation ends where `stop(tokens)` says so (the token that ended it included) or after
    `max_new_tokens` tokens. Continuations are prefix-free, so they are disjoint events: at most
    1/min_prob of them exist, and at most 1/min_prob prefixes of each length are expanded (at
    most max_new_tokens / min_prob one-token forward passes). Children are explored most probable
    first, so the first continuation found is greedy's whenever greedy's has probability >=
    min_prob. `stop` is asked about each prefix once, in depth-first order: the prefix without its
    last token was asked about before, or is empty (a rule can keep its state per depth).

    The prompt runs once into a `DynamicCache`; a branch crops the cache back to its parent's
    length and feeds one token, so no prefix is computed twice. One prompt at a time (batch 1).
    After `max_candidates` continuations the search stops with a warning: those returned are the
    first found, greedy's among them when it qualifies, not necessarily the most probable.
    """
    if not 0 < min_prob <= 1:
        raise ValueError(f"min_prob must be in (0, 1], got {min_prob}")
    if max_new_tokens < 1 or not prompt or max_candidates < 1:
        return []
    with compute_context(model):
        return _dfs(model, prompt, min_prob, max_new_tokens, stop, max_candidates)


def _dfs(model, prompt: Sequence[int], min_prob: float, max_new_tokens: int, stop: PathStop | None,
         max_candidates: int) -> list[Completion]:
    floor = math.log(min_prob)
    device = model_device(model)
    cache = DynamicCache()
    keyword = _cache_keyword(model)
    out = model(input_ids=torch.as_tensor([list(prompt)], device=device), use_cache=True, logits_to_keep=1,
                **{keyword: cache})
    stack = _children([], [], 0.0, out.logits[0, -1], floor)
    found: list[Completion] = []
    while stack and len(found) < max_candidates:
        node = stack.pop()
        ended = stop is not None and stop(node.token_ids)
        if ended or len(node.token_ids) == max_new_tokens:
            found.append(node)
            continue
        excess = cache.get_seq_length() - (len(prompt) + len(node.token_ids) - 1)
        if excess > 0:  # the cache holds a deeper branch: back to this node's parent
            cache.crop(-excess)
        out = model(input_ids=torch.tensor([[node.token_ids[-1]]], device=device), use_cache=True,
                    **{keyword: cache})
        stack += _children(node.token_ids, node.logprobs, node.logprob, out.logits[0, -1], floor)
    if stack:
        log.warning("dfs stopped at max_candidates=%d with branches left above min_prob=%g; "
                    "raise max_candidates or min_prob", max_candidates, min_prob)
    return sorted(found, key=lambda c: -c.logprob)  # stable: ties stay in the order found


def _children(tokens: list[int], logprobs: list[float], logprob: float, scores: torch.Tensor,
              floor: float) -> list[Completion]:
    """The one-token extensions whose summed log-probability is >= `floor`, the most probable last
    (the stack pops it first); ties between tokens go to the lower id, as argmax does."""
    scores = scores.float()
    token_logp = torch.log_softmax(scores, -1)
    total = token_logp.double() + logprob  # float64: the same sums as Python's, so the threshold test is exact
    ids = torch.nonzero(total >= floor)[:, 0].tolist()
    if not ids:
        return []
    raw, lps, totals = scores[ids].tolist(), token_logp[ids].tolist(), total[ids].tolist()
    order = sorted(range(len(ids)), key=lambda k: (-raw[k], ids[k]))  # greedy's argmax order
    return [Completion(tokens + [ids[k]], logprobs + [lps[k]], totals[k]) for k in reversed(order)]
