"""Bits per byte of a continuation given its prompt: the SIFT paper's measure of a language model.

    bits, n_bytes = continuation_bits(model, tokenizer, prompt, continuation)
    bpb = bits / n_bytes        # -sum log2 p(continuation tokens | prompt) / UTF-8 bytes

Per byte rather than per token, so models with different tokenizers compare. The prompt and the
continuation are tokenised separately and concatenated, so the continuation's tokens, and only
those, carry the loss; when the pair exceeds the context, the prompt loses tokens from its left.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from testtime.batching import IGNORE_INDEX, TrainingSequence, collate
from testtime.logprob import eval_mode, labelled_logprob
from testtime.precision import model_device


def encode_pair(tokenizer: Any, prompt: str, continuation: str, max_len: int) -> TrainingSequence:
    """Prompt + continuation token ids, labels on the continuation only, at most `max_len` tokens."""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not c_ids:
        raise ValueError("the continuation is empty: there is nothing to score")
    if len(c_ids) >= max_len:
        raise ValueError(f"the continuation alone is {len(c_ids)} tokens, over the {max_len}-token context; "
                         "shorten it in the prompts file")
    p_ids = p_ids[len(p_ids) + len(c_ids) - max_len:] if len(p_ids) + len(c_ids) > max_len else p_ids
    bos = tokenizer.bos_token_id
    if not p_ids and bos is not None:
        p_ids = [bos]  # the first continuation token needs something to be predicted from
    return TrainingSequence(input_ids=p_ids + c_ids, labels=[IGNORE_INDEX] * len(p_ids) + c_ids)


@torch.no_grad()
def sequence_bits(model: Any, seq: TrainingSequence) -> float:
    """-sum log2 p of the labelled tokens of `seq` under `model` (eval mode; the float32 head run only
    where a continuation token is predicted, `testtime.logprob`)."""
    pad_id = getattr(model.config, "pad_token_id", None) or 0
    with eval_mode(model):
        nats = -labelled_logprob(model, *collate([seq], pad_id, model_device(model)))
    return nats.item() / math.log(2)


def continuation_bits(model: Any, tokenizer: Any, prompt: str, continuation: str,
                      max_len: int = 2048) -> tuple[float, int]:
    """(bits of the continuation given the prompt, UTF-8 bytes of the continuation)."""
    seq = encode_pair(tokenizer, prompt, continuation, max_len)
    return sequence_bits(model, seq), utf8_bytes(continuation)


def utf8_bytes(text: str) -> int:
    """The bytes bits per byte divides by: the text's UTF-8 encoding (the one place they are counted)."""
    return len(text.encode("utf-8"))
