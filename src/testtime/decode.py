"""Greedy decoding with a preallocated KV cache: the decoder of ARC inference.

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
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import StaticCache

StopRule = Callable[[list[int], list[int]], list[bool]]
"""(row indices in the caller's order, each row's new token) -> whether that row is done."""


@dataclass
class Decoded:
    """One row's continuation: its tokens (the one that ended it included) and their log-probabilities."""

    token_ids: list[int]
    logprobs: list[float]


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
    device = next(model.parameters()).device
    batch, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    mask = torch.zeros((batch, width + max_new_tokens), dtype=torch.long)  # grows one column per step
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p):width] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask[:, :width].cumsum(-1) - 1).clamp(min=0)
    cache = {_cache_keyword(model): StaticCache(config=model.config, max_cache_len=width + max_new_tokens)}
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
