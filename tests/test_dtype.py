"""--dtype: auto is bf16 where the CPU has bf16 units; the LoRA and Adam state stay float32; runs record it."""

from __future__ import annotations

import json

import pytest
import torch

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from helpers import make_tiny_model
from testtime import models
from testtime.batching import TrainingSequence
from testtime.finetune import train
from testtime.lora import AdapterHost
from testtime.models import resolve_dtype
from testtime.settings import LoraArgs, TrainArgs


def test_auto_follows_the_cpu_and_explicit_values_are_kept(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert resolve_dtype("auto", cpu) == "bfloat16" and resolve_dtype(None, cpu) == "bfloat16"
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert resolve_dtype("auto", cpu) == "float32"
    assert models.default_dtype(cpu) == torch.float32  # load_model's default is auto's choice
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert models.default_dtype(cpu) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == "bfloat16"
    assert resolve_dtype("float32", cpu) == "float32" and resolve_dtype(torch.bfloat16) == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of auto, bfloat16, float32, not 'float16'"):
        resolve_dtype("float16", cpu)


def tiny(dtype):
    return make_tiny_model(vocab_size=64, pad_token_id=0).to(dtype)


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
    base = ["arc", "solve", str(task), "--model", str(tiny_model_dir), "--no-ttt", "--max-new-tokens", "2"]
    plain = invoke(*base, "--out", tmp_path / "plain", "--dtype", "float32")
    assert plain.exit_code == 0 and json.loads((tmp_path / "plain" / "config.json").read_text())[
        "settings"]["config.dtype"] == "float32"
    auto = invoke(*base, "--out", tmp_path / "auto")  # the default: auto
    assert auto.exit_code == 0, auto.output
    assert "torch.bfloat16" in auto.output
    settings = json.loads((tmp_path / "auto" / "config.json").read_text())["settings"]
    assert settings["config.dtype"] == "bfloat16"
    f32 = invoke(*base, "--out", tmp_path / "auto", "--dtype", "float32")
    assert f32.exit_code == 2 and "--dtype: 'bfloat16' -> 'float32'" in " ".join(f32.output.split())
    bad = invoke(*base, "--dtype", "float16")
    assert bad.exit_code == 2 and "--dtype must be one of auto, bfloat16, float32, not 'float16'" in \
        " ".join(bad.output.split())


@pytest.mark.parametrize("command", [["arc", "solve", "x"], ["arc", "pretrain", "x"], ["lm", "eval"]])
def test_every_command_that_loads_the_lm_defaults_to_auto(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "[default: auto]" in " ".join(result.output.split()).split("--dtype", 1)[1][:400]


def lora_inputs(model) -> tuple[list[torch.dtype], list[torch.dtype]]:
    """Run one forward/backward; (dtypes of the inputs the LoRA A matrices saw, dtypes of their gradients)."""
    from testtime.finetune import labelled_loss

    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(args[0].dtype))
             for n, m in model.named_modules() if n.endswith("lora_A.default")]
    ids = torch.tensor([sequences()[0].input_ids])
    labelled_loss(model, ids, torch.ones_like(ids), torch.tensor([sequences()[0].labels])).backward()
    for h in hooks:
        h.remove()
    return seen, [p.grad.dtype for n, p in model.named_parameters() if "lora_A" in n]


def test_over_a_bf16_base_the_lora_computes_in_bf16_and_its_gradients_stay_float32():
    host = AdapterHost(tiny(torch.bfloat16), LoraArgs(r=4, alpha=8))
    host.fresh(seed=1)
    seen, grads = lora_inputs(host.model)
    assert seen and set(seen) == {torch.bfloat16}  # no cast of the activations to float32 and back
    assert set(grads) == {torch.float32}
    layer = next(m for m in host.model.modules() if hasattr(m, "_cast_input_dtype"))
    assert getattr(layer, "cast_input_dtype_enabled", True)  # peft's own setting is restored afterwards


def test_over_a_float32_base_nothing_changes():
    from testtime.precision import compute_context

    host = AdapterHost(tiny(torch.float32), LoraArgs(r=4, alpha=8))
    host.fresh(seed=1)
    seen, grads = lora_inputs(host.model)
    assert set(seen) == {torch.float32} and set(grads) == {torch.float32}
    ids = torch.tensor([sequences()[1].input_ids])
    with torch.no_grad():
        plain = host.model(input_ids=ids).logits
        with compute_context(host.model):
            wrapped = host.model(input_ids=ids).logits
    assert torch.equal(plain, wrapped)


def test_greedy_over_a_bf16_base_with_a_live_lora_matches_generate_in_the_same_precision():
    from testtime.decode import greedy
    from testtime.precision import compute_context

    host = AdapterHost(tiny(torch.bfloat16), LoraArgs(r=4, alpha=8))
    host.fresh(seed=1)
    train(host.model, sequences(), TrainArgs(lr=1e-2, epochs=2, seed=0, log_every=0))  # B is no longer zero
    for prompt in (sequences()[0].input_ids[:9], sequences()[2].input_ids[:15]):
        with torch.no_grad(), compute_context(host.model, float32_head=False):  # greedy's precision
            out = host.model.generate(input_ids=torch.tensor([prompt]), do_sample=False, max_new_tokens=6,
                                      min_new_tokens=6, pad_token_id=0)
        got = greedy(host.model, [prompt], max_new_tokens=6, pad_id=0)[0].token_ids
        assert got == out[0, len(prompt):].tolist()


def test_threads_follow_omp_num_threads_else_the_affinity_mask(monkeypatch):
    import os

    from testtime.config import default_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert default_threads() == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2}, raising=False)
    assert default_threads() == 1


def test_over_a_bf16_base_the_head_gives_float32_logits_before_and_after_inference_mode():
    from testtime.precision import compute_context

    model = tiny(torch.bfloat16)
    host = AdapterHost(model, LoraArgs(r=4, alpha=8))
    host.fresh(seed=1)
    ids = torch.tensor([sequences()[0].input_ids])
    with torch.inference_mode(), compute_context(host.model):
        host.model(input_ids=ids)  # the float32 copy of the head is made here, under inference_mode
    stats = train(host.model, sequences(), TrainArgs(lr=1e-2, epochs=1, seed=0, log_every=0))  # and used here
    assert stats.steps > 0
    with torch.no_grad(), compute_context(host.model):
        logits = host.model(input_ids=ids).logits
        hidden = host.model.model(input_ids=ids).last_hidden_state
    assert logits.dtype == torch.float32
    want = torch.nn.functional.linear(hidden.float(), model.lm_head.weight.float())
    assert torch.equal(logits, want)  # not bf16 logits cast up: their rounding would show
    assert not torch.equal(logits, want.bfloat16().float())
    assert "forward" not in vars(model.lm_head)  # the head is itself again after the block
