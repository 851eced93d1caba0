"""A LoRA extracted from full fine-tuning: the truncated SVD of each weight change, against hand computations."""

from __future__ import annotations

import pytest
import torch

from helpers import make_tiny_model
from testtime.extract import attach, extract, lowrank, snapshot
from testtime.settings import LoraArgs


def test_lowrank_is_exact_for_a_low_rank_change_and_keeps_the_top_singular_values():
    gen = torch.Generator().manual_seed(0)
    b, a = torch.randn(12, 3, generator=gen), torch.randn(3, 10, generator=gen)
    B, A, kept = lowrank(b @ a, rank=5)
    assert B.shape == (12, 5) and A.shape == (5, 10)  # columns beyond the change's rank are (near) zero
    assert torch.allclose(B @ A, b @ a, atol=1e-4) and kept == pytest.approx(1.0)

    delta = torch.diag(torch.tensor([4.0, 3.0, 1.0]))  # singular values 4, 3, 1: rank 2 keeps 16 + 9 of 26
    B, A, kept = lowrank(delta, rank=2)
    assert torch.allclose(B @ A, torch.diag(torch.tensor([4.0, 3.0, 0.0])), atol=1e-6)
    assert kept == pytest.approx(25 / 26)
    assert torch.allclose(B.abs().sum(0), A.abs().sum(1))  # the singular values split evenly


def test_extract_then_attach_reproduces_a_change_of_the_targets_and_restores_the_base():
    model = make_tiny_model(vocab_size=64, seed=2)
    base = snapshot(model)
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        before = model(ids).logits
        for layer in model.model.layers:  # a rank-2 change of every q_proj, and a change of a norm
            w = layer.self_attn.q_proj.weight
            w += 0.05 * torch.randn(w.shape[0], 2, generator=gen) @ torch.randn(2, w.shape[1], generator=gen)
        model.model.norm.weight += 0.1
        model.model.norm.weight -= 0.1  # back where it was, so only the targets changed
        model.model.layers[0].input_layernorm.weight += 0.01  # a change no LoRA targets
        changed = model(ids).logits
    factors, stats = extract(model, base, ("q_proj", "v_proj"), rank=4)
    assert sorted(factors) == [f"model.layers.{i}.self_attn.{m}" for i in range(len(model.model.layers))
                               for m in ("q_proj", "v_proj")]
    assert stats["kept"] == pytest.approx(1.0) and 0 < stats["untargeted"] < 0.05
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters())  # the model is the base again
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
        lora = attach(model, factors, LoraArgs(r=4, alpha=4))
        restored = lora(ids).logits
        without_norm = (changed - restored).abs().max().item()
    assert 0 < without_norm < 0.05  # the q_proj changes are back; only the dropped norm change is missing
    assert not torch.allclose(restored, before, atol=1e-3)
