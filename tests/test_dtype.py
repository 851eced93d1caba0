"""--dtype: auto is bf16 where the CPU has bf16 units; the LoRA and Adam state stay float32; runs record it."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from testtime import models
from testtime.batching import TrainingSequence
from testtime.cli import app
from testtime.finetune import LoraArgs, TrainArgs, train
from testtime.lora import AdapterHost
from testtime.models import resolve_dtype


def test_auto_follows_the_cpu_and_explicit_values_are_kept(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == "bfloat16" and resolve_dtype(None, cpu) == "bfloat16"
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == "float32"
    assert models.default_dtype(cpu) == torch.float32  # until bf16's quality on the embedded model is measured
    assert resolve_dtype("auto", torch.device("cuda")) == "bfloat16"
    assert resolve_dtype("float32", cpu) == "float32" and resolve_dtype(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of auto, bfloat16, float32, not 'float16'"):
        resolve_dtype("float16", cpu)


def tiny(dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=0)
    return LlamaForCausalLM(config).to(dtype).eval()


def sequences() -> list[TrainingSequence]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(4):
        ids = torch.randint(1, 64, (40,), generator=g).tolist()
        out.append(TrainingSequence(ids, [-100] * 20 + ids[20:]))
    return out


def test_a_bf16_base_trains_a_float32_lora_with_losses_within_1_percent_of_float32():
    losses, kinds = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        host = AdapterHost(tiny(dtype), LoraArgs(r=4, alpha=8))
        host.fresh(seed=1)
        seen = []
        stats = train(host.model, sequences(), TrainArgs(lr=1e-2, epochs=2, seed=0, log_every=0),
                      on_step=lambda info, seen=seen: seen.append(info.optimizer))
        losses[dtype] = stats.losses
        lora = [p for n, p in host.model.named_parameters() if "lora_" in n]
        state = [t for s in seen[-1].state.values() for t in s.values() if torch.is_tensor(t) and t.dim()]
        kinds[dtype] = ({p.dtype for p in lora}, {t.dtype for t in state})
    assert kinds[torch.bfloat16] == ({torch.float32}, {torch.float32})  # adapter and Adam moments in float32
    for a, b in zip(losses[torch.float32], losses[torch.bfloat16]):
        assert b == pytest.approx(a, rel=0.01)


def test_solve_records_the_resolved_dtype_and_refuses_a_bad_one(tmp_path, tiny_model_dir, monkeypatch):
    task = tmp_path / "tasks"
    task.mkdir()
    grid = [[1, 2], [3, 4]]
    (task / "t.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                             "test": [{"input": grid, "output": grid}]}))
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    runner = CliRunner()
    base = ["arc", "solve", str(task), "--model", str(tiny_model_dir), "--no-ttt", "--max-new-tokens", "2"]
    plain = runner.invoke(app, [*base, "--out", str(tmp_path / "plain")], catch_exceptions=False)
    assert plain.exit_code == 0 and json.loads((tmp_path / "plain" / "config.json").read_text())[
        "settings"]["config.dtype"] == "float32"  # the default
    auto = runner.invoke(app, [*base, "--out", str(tmp_path / "auto"), "--dtype", "auto"], catch_exceptions=False)
    assert auto.exit_code == 0, auto.output
    assert "torch.bfloat16" in auto.output
    settings = json.loads((tmp_path / "auto" / "config.json").read_text())["settings"]
    assert settings["config.dtype"] == "bfloat16"
    f32 = runner.invoke(app, [*base, "--out", str(tmp_path / "auto")], catch_exceptions=False)
    assert f32.exit_code == 2 and "--dtype: 'bfloat16' -> 'float32'" in " ".join(f32.output.split())
    bad = runner.invoke(app, [*base, "--dtype", "float16"], catch_exceptions=False)
    assert bad.exit_code == 2 and "--dtype must be one of auto, bfloat16, float32, not 'float16'" in \
        " ".join(bad.output.split())
