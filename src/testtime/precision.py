"""The precision a forward pass computes in: bf16 matmuls over a bf16 base, LoRA weights kept in float32.

A LoRA adapter's weights stay float32 (the optimizer's small updates would round away in bf16),
while the base model may be loaded in bf16 (`--dtype auto` on CUDA and on CPUs with AMX or AVX-512
BF16). Left alone, peft then casts every adapted layer's input to float32 and back, and runs the
adapter's two matmuls in float32: on a CPU that is a third of a training step spent in `copy_` and
slow float32 GEMMs. `compute_context(model)` instead runs the forward under bf16 autocast with
peft's input cast turned off, so the adapter's matmuls read bf16 activations and a bf16 copy of
its (small) weights, and the gradients still land on the float32 weights. The output head alone
computes in float32 (from a cached float32 copy of its weight), so log-probabilities, losses and
the scores that rank candidates are not rounded to bf16's 8 significant bits.

Over a float32 base on a CPU it does nothing, so float32 runs are bit-for-bit those of before.
On CUDA a training loss is computed under bf16 autocast whatever the base's dtype, as it always was.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import torch


def base_dtype(model: Any) -> torch.dtype:
    """The dtype of the model's input embedding (peft leaves it alone): the base weights' dtype."""
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and hasattr(embeddings, "weight"):
        return embeddings.weight.dtype
    return next(model.parameters()).dtype


def model_device(model: Any) -> torch.device:
    """The device of the model's (first) parameter: where its inputs go (the one place this is asked)."""
    return next(model.parameters()).device


def autocast_dtype(model: Any, *, train: bool = False) -> torch.dtype | None:
    """The dtype `compute_context` autocasts to for `model`, None where it leaves float32 alone."""
    device = model_device(model)
    if device.type in ("cpu", "cuda") and base_dtype(model) == torch.bfloat16:
        return torch.bfloat16
    if device.type == "cuda" and train:
        return torch.bfloat16
    return None


def compute_context(model: Any, *, train: bool = False, float32_head: bool = True) -> contextlib.AbstractContextManager:
    """Wrap a forward (and its backward) of `model` so it computes in the base weights' precision
    (`train`: a loss to train on; on CUDA it is computed in bf16 autocast over a float32 base too).

    `float32_head=False` leaves the output head in bf16: for greedy decoding, where only the argmax
    is needed and the float32 head would cost a third of a batch-1 decoding step on a CPU."""
    dtype = autocast_dtype(model, train=train)
    if dtype is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(torch.autocast(model_device(model).type, dtype=dtype))
    stack.enter_context(_no_peft_input_cast(model))
    if float32_head:
        stack.enter_context(_float32_head(model))
    return stack


@contextlib.contextmanager
def _float32_head(model: Any):
    """The output head computes float32 logits for the block (from a float32 copy of its weight).

    bf16 logits are rounded to 8 significant bits: 0.125 apart for logits between 16 and 32, so
    every token's log-probability would carry an error of up to ~0.06 nats, enough to reorder
    candidates that PoE or the truth's bits compare. The copy is kept on the module and made
    again whenever the weight changes (its version counter moves). A head that is not a plain
    frozen `nn.Linear` (e.g. peft's trainable-token rows) is left alone."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.requires_grad or head.weight.dtype == torch.float32:
        yield
        return
    head.forward = functools.partial(_head_forward, head)  # an instance attribute shadows Linear.forward
    try:
        yield
    finally:
        del head.forward


def _head_forward(head: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    key = (head.weight.data_ptr(), head.weight._version)
    cached = getattr(head, "_testtime_float32", None)
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # made under inference_mode, it could not serve a training step later
            cached = (key, head.weight.detach().float(), None if head.bias is None else head.bias.detach().float())
        head._testtime_float32 = cached
    with torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.linear(x.float(), cached[1], cached[2])


@contextlib.contextmanager
def _no_peft_input_cast(model: Any):
    """peft's `cast_input_dtype_enabled` off on every LoRA layer for the block (autocast casts instead).

    Not `peft.helpers.disable_input_dtype_casting`: in peft 0.21 it reads the flag without a default and
    fails on trainable-token layers, which never set it (`arc pretrain --train-token-rows`)."""
    layers = [m for m in model.modules() if hasattr(m, "_cast_input_dtype")]
    saved = [getattr(m, "cast_input_dtype_enabled", True) for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for m, flag in zip(layers, saved):
            m.cast_input_dtype_enabled = flag
