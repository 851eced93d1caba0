"""The loss on labelled positions only equals the full-logits loss, in value and in gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import make_tiny_model
from testtime.batching import IGNORE_INDEX
from testtime.finetune import labelled_loss
from testtime.lora import AdapterHost
from testtime.settings import LoraArgs


def tiny(vocab: int = 97):
    return make_tiny_model(vocab_size=vocab, pad_token_id=0)


def batch(vocab: int = 97):
    g = torch.Generator().manual_seed(1)
    input_ids = torch.randint(1, vocab, (3, 17), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 12:] = 0  # a right-padded row
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, 9:] = input_ids[0, 9:]  # answers at the end, as TTT and pretraining label them
    labels[1, 3:6] = input_ids[1, 3:6]
    labels[2, 5:12] = input_ids[2, 5:12]
    return input_ids, attention_mask, labels


def full(model, input_ids, attention_mask, labels):
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_labelled_only_loss_and_gradients_match_the_full_computation():
    model = tiny()
    host = AdapterHost(model, LoraArgs(r=4, alpha=8, target_modules=("q_proj", "v_proj")))
    host.fresh(seed=3)
    with torch.no_grad():  # a non-zero LoRA B so its gradient path is exercised
        for name, p in host.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    args = batch()
    reference = full(host.model, *args)
    reference.backward()
    expected = grads(host.model)
    host.model.zero_grad(set_to_none=True)
    value = labelled_loss(host.model, *args)
    value.backward()
    assert value.item() == pytest.approx(reference.item(), rel=1e-5)
    got = grads(host.model)
    assert got.keys() == expected.keys() and any("lora_A" in n for n in got)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)


def test_a_model_with_logit_softcapping_takes_the_full_path(monkeypatch):
    model = tiny()
    model.config.final_logit_softcapping = 30.0
    called = []
    original = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: called.append(1) or original(*a, **k))
    labelled_loss(model, *batch())
    assert called  # the whole model ran, head included


def test_the_head_never_sees_unlabelled_positions(monkeypatch):
    model = tiny()
    seen = []
    model.get_output_embeddings().register_forward_hook(lambda _m, inp, _out: seen.append(tuple(inp[0].shape[:2])))
    input_ids, attention_mask, labels = batch()
    labelled_loss(model, input_ids, attention_mask, labels)
    wanted = int((labels[:, 1:] != IGNORE_INDEX).any(dim=0).sum())  # positions 2..15 predict a label in some row
    assert seen == [(3, wanted)] and wanted < 16
