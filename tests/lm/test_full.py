"""`--lora-rank 0`: full fine-tuning per prompt, the base weights restored bit for bit, memory bounded."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch

from helpers import CONTINUATION, MEMORY, LetterEmbedder, ListMemory, make_tiny_model
from testtime.config import problems
from testtime.lm.evaluate import make_host
from testtime.lm.settings import EvalConfig, PromptLora, PromptTTT
from testtime.lm.ttt import ttt_prompt
from testtime.lora import AdapterHost, FullHost
from testtime.settings import LoraArgs


def tiny(tokenizer):
    model = make_tiny_model(vocab_size=len(tokenizer))
    with torch.no_grad():  # logits able to grow: see tests/test_finetune.py::tiny
        model.get_input_embeddings().weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return model


def test_full_fine_tuning_trains_every_weight_and_restores_the_base_bit_for_bit(tokenizer):
    model = tiny(tokenizer)
    host = FullHost(model)
    assert host.trainable_parameters()[0] == 0  # frozen between prompts
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    before = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, PromptTTT(select="none"))

    seen = {}

    def on_step(info):  # during training: every parameter trains, the weights move
        seen.setdefault("trainable", host.trainable_parameters())
        seen["optimizer"] = weakref.ref(info.optimizer)
        seen["moved"] = any(not torch.equal(p, base[n]) for n, p in model.named_parameters())

    args = PromptTTT(select="nn-repeats", n=4, k=7, lr=1e-2)
    after = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, args, on_step=on_step)
    total = sum(p.numel() for p in model.parameters())
    assert seen["trainable"] == (total, total) and seen["moved"]
    assert after.steps == 4 and after.bpb < 0.9 * before.bpb  # full fine-tuning on the continuation's text helps
    now = model.state_dict()
    assert set(now) == set(base) and all(torch.equal(now[k], base[k]) for k in base)  # bit-identical
    assert not host.has_adapter and all(not p.requires_grad and p.grad is None for p in model.parameters())
    again = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, PromptTTT(select="none"))
    assert again.bits == before.bits


def test_full_fine_tuning_keeps_one_copy_of_the_weights_and_frees_the_optimizer(tokenizer):
    model = tiny(tokenizer)
    host = FullHost(model)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    refs = []
    args = PromptTTT(select="sift", n=3, k=7, lr=1e-2)
    ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, args,
                on_step=lambda info: refs.append(weakref.ref(info.optimizer)))
    saved = [id(t) for t in host._saved]
    total = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert host.saved_numel() == total
    ttt_prompt(host, tokenizer, memory, embedder, "p1", "zzz", " yyy xxx", args,
                on_step=lambda info: refs.append(weakref.ref(info.optimizer)))
    assert [id(t) for t in host._saved] == saved and host.saved_numel() == total  # the same copy, reused
    gc.collect()
    assert refs and all(r() is None for r in refs)  # Adam's state went with each prompt's optimizer


def test_a_failed_step_still_restores_the_base(tokenizer):
    model = tiny(tokenizer)
    host = FullHost(model)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)

    def boom(info):
        raise RuntimeError("killed after step 1")

    with pytest.raises(RuntimeError, match="killed after step 1"):
        ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION,
                    PromptTTT(select="nn", n=3, k=7, lr=1e-2), on_step=boom)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items()) and not host.has_adapter


def test_rank_zero_means_full_fine_tuning_in_the_eval_config(tokenizer):
    assert problems(EvalConfig(index="memory", lora=PromptLora(r=0, alpha=0))) == []
    bad = problems(EvalConfig(index="memory", lora=PromptLora(r=-1, alpha=-2)))
    assert [p.field for p in bad][:1] == ["lora.r"] and "0 (full fine-tuning) or at least 1" in bad[0].message
    assert isinstance(make_host(tiny(tokenizer), PromptLora(r=0, alpha=0)), FullHost)
    assert isinstance(make_host(tiny(tokenizer), LoraArgs(r=4, alpha=8)), AdapterHost)
