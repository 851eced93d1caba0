"""The fine-tuning loop and the adapter host, on a 2-layer random Llama (vocab 64) on CPU."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import make_tiny_model
from testtime.batching import IGNORE_INDEX, TrainingSequence, make_batches
from testtime.finetune import StepInfo, lr_factor, total_steps, train
from testtime.lora import AdapterHost, lora_config
from testtime.settings import LoraArgs, TrainArgs

VOCAB = 64
LORA = LoraArgs(r=8, alpha=16)


def tiny():
    """The conftest model with embeddings (tied to the LM head) at std 0.3 instead of 0.02: its logits
    can then grow large enough to memorise a sequence (at 0.02 no logit can exceed ~0.6)."""
    model = make_tiny_model(vocab_size=VOCAB, seed=0)
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return model


def full(ids: list[int]) -> TrainingSequence:
    """A sequence trained on every token."""
    return TrainingSequence(input_ids=list(ids), labels=list(ids))


def span(ids: list[int], start: int, stop: int) -> TrainingSequence:
    """A sequence trained only on positions start..stop-1."""
    labels = [t if start <= i < stop else IGNORE_INDEX for i, t in enumerate(ids)]
    return TrainingSequence(input_ids=list(ids), labels=labels)


def random_ids(n: int, seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, VOCAB, size=n)]


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def fresh_host(seed: int = 0) -> AdapterHost:
    host = AdapterHost(tiny(), LORA)
    host.fresh(seed)
    return host


# ---------------------------------------------------------------- learning and the loss


def test_memorises_a_repeated_sequence():
    host = AdapterHost(tiny(), LoraArgs(r=16, alpha=32))
    host.fresh(0)
    seq = full(random_ids(20, seed=1))
    stats = train(host.model, [seq] * 20, TrainArgs(lr=1e-2, epochs=3))
    assert stats.steps == 60 and len(stats.losses) == 60
    assert stats.losses[-1] < 0.1 * stats.losses[0] and stats.losses[-1] < 0.5  # p(next token) > 0.6 on average
    assert stats.tokens == 60 * 20 and stats.tokens_per_s > 0
    assert not host.model.training  # back in eval mode


def test_first_step_loss_is_token_weighted_mean_over_the_step():
    host = fresh_host()
    a, b = span(random_ids(12, 2), 2, 5), span(random_ids(12, 3), 1, 12)  # 3 and 11 labelled tokens
    base = host.model
    expected_sum = 0.0
    for seq in (a, b):
        out = logits(base, seq.input_ids)[0, :-1]
        expected_sum += F.cross_entropy(out, torch.tensor(seq.labels[1:]), reduction="sum").item()
    stats = train(base, [a, b], TrainArgs(max_steps=1, batch_size=1, grad_accum=2))
    # fresh LoRA has B = 0, so step 1 sees the base model; a mean of means would weight a 11/3 as much
    assert stats.losses[0] == pytest.approx(expected_sum / 14, rel=1e-5)


def test_unlabelled_suffix_does_not_change_the_trajectory():
    ids = random_ids(16, 4)
    changed = ids[:10] + random_ids(6, 5)
    runs = []
    for seq in (span(ids, 3, 10), span(changed, 3, 10), full(ids)):
        host = fresh_host()
        runs.append((train(host.model, [seq], TrainArgs(lr=1e-2, epochs=5)).losses, lora_state(host.model)))
    (loss_a, w_a), (loss_b, w_b), (loss_full, _) = runs
    assert loss_a == loss_b
    assert all(torch.equal(w_a[n], w_b[n]) for n in w_a)
    assert loss_full != loss_a  # the mask matters


def test_fully_masked_sequences_are_skipped():
    good = span(random_ids(10, 6), 2, 10)
    masked = TrainingSequence(input_ids=random_ids(10, 7), labels=[IGNORE_INDEX] * 10)
    # labels[0] predicts nothing
    first_only = TrainingSequence(input_ids=random_ids(10, 8), labels=[5] + [IGNORE_INDEX] * 9)
    host = fresh_host()
    alone = train(host.model, [good], TrainArgs(epochs=3, lr=1e-2))
    host.fresh(0)
    mixed = train(host.model, [masked, good, first_only], TrainArgs(epochs=3, lr=1e-2))
    assert mixed.skipped == 2 and alone.skipped == 0
    assert mixed.losses == alone.losses and mixed.steps == 3
    none = train(host.model, [masked], TrainArgs(epochs=3))
    assert none.steps == 0 and none.losses == [] and none.skipped == 1


def test_grad_accumulation_matches_a_bigger_batch():
    seqs = [full(random_ids(12, 10)), span(random_ids(12, 11), 4, 12)]
    results = []
    for batch_size, grad_accum in ((2, 1), (1, 2)):
        host = fresh_host()
        args = TrainArgs(max_steps=1, batch_size=batch_size, grad_accum=grad_accum, optimizer="sgd", lr=1.0)
        results.append((train(host.model, seqs, args).losses[0], lora_state(host.model)))
    (loss_a, w_a), (loss_b, w_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert all(torch.allclose(w_a[n], w_b[n], atol=1e-6) for n in w_a)


# ---------------------------------------------------------------- determinism


def run_once(train_seed: int, adapter_seed: int = 0):
    host = fresh_host(adapter_seed)
    seqs = [full(random_ids(8 + i, 20 + i)) for i in range(6)]
    stats = train(host.model, seqs, TrainArgs(lr=1e-2, epochs=2, batch_size=2, seed=train_seed))
    return stats.losses, lora_state(host.model)


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    losses_a, w_a = run_once(train_seed=0)
    losses_b, w_b = run_once(train_seed=0)
    assert losses_a == losses_b
    assert w_a.keys() == w_b.keys() and all(torch.equal(w_a[n], w_b[n]) for n in w_a)
    losses_c, _ = run_once(train_seed=1)  # another batch order
    assert losses_c != losses_a
    _, w_d = run_once(train_seed=0, adapter_seed=1)  # another adapter init
    assert not all(torch.equal(w_a[n], w_d[n]) for n in w_a)


def test_train_leaves_the_global_rng_alone():
    host = fresh_host()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(host.model, [full(random_ids(10, 1))], TrainArgs(epochs=2))
    host.fresh(5)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- the adapter host


def test_base_is_bit_identical_after_a_task():
    model = tiny()
    ids = random_ids(15, 30)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    reference = logits(model, ids)
    host = AdapterHost(model, LORA)
    host.fresh(0)
    train(host.model, [full(ids)], TrainArgs(lr=1e-2, epochs=5))
    assert not torch.equal(logits(host.model, ids), reference)  # the adapter did learn something
    host.drop()
    after = {n.replace(".base_layer", ""): t for n, t in host.model.state_dict().items() if "lora_" not in n}
    assert after.keys() == before.keys()  # the adapter's modules stay (switched off) for the next task
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert torch.equal(logits(host.model, ids), reference)
    assert host.trainable_parameters()[0] == 0


def test_fresh_adapter_is_deterministic_trainable_and_does_not_leak():
    host = AdapterHost(tiny(), LORA)
    ids = random_ids(12, 40)
    reference = logits(host.model, ids)
    host.fresh(7)
    init = lora_state(host.model)
    untrained = logits(host.model, ids)
    assert torch.equal(untrained, reference)  # default init: B = 0
    trainable, total = host.trainable_parameters()
    assert trainable == sum(t.numel() for t in init.values()) and 0 < trainable < total
    assert all(p.requires_grad == ("lora_" in n) for n, p in host.model.named_parameters())
    train(host.model, [full(ids)], TrainArgs(lr=1e-2, epochs=5))  # task A
    host.fresh(7)  # task B
    again = lora_state(host.model)
    assert again.keys() == init.keys() and all(torch.equal(init[n], again[n]) for n in init)
    assert torch.equal(logits(host.model, ids), untrained)
    host.fresh(8)
    assert not all(torch.equal(init[n], t) for n, t in lora_state(host.model).items())


def test_save_then_start_adapter_reproduces_the_trained_model(tmp_path):
    host = fresh_host()
    ids = random_ids(14, 50)
    train(host.model, [full(ids)], TrainArgs(lr=1e-2, epochs=10))
    trained = logits(host.model, ids)
    saved = host.save(tmp_path / "adapter")
    files = {p.name for p in saved.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not any(name.endswith(".bin") for name in files)
    merged = AdapterHost(tiny(), LORA, start_adapter=saved)
    assert torch.allclose(logits(merged.model, ids), trained, atol=1e-5)
    assert not torch.allclose(logits(tiny(), ids), trained, atol=1e-3)
    merged.fresh(0)  # a task adapter on top of the merged start adapter starts from it
    assert torch.allclose(logits(merged.model, ids), trained, atol=1e-5)


def test_save_without_adapter_and_bad_start_adapter_raise(tmp_path):
    host = AdapterHost(tiny(), LORA)
    with pytest.raises(RuntimeError, match="fresh"):
        host.save(tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        AdapterHost(tiny(), LORA, start_adapter=tmp_path)


def test_target_modules_keep_only_present_names(caplog):
    model = tiny()
    with caplog.at_level(logging.WARNING, logger="testtime.finetune"):
        config = lora_config(LoraArgs(target_modules=("q_proj", "c_attn")), model)
    assert set(config.target_modules) == {"q_proj"} and "c_attn" in caplog.text
    with pytest.raises(ValueError, match="q_proj"):  # the message lists what the model has
        lora_config(LoraArgs(target_modules=("c_attn",)), model)
    assert config.task_type == "CAUSAL_LM"


def test_train_without_trainable_parameters_raises():
    with pytest.raises(ValueError, match="fresh"):
        train(AdapterHost(tiny(), LORA).model, [full(random_ids(5, 1))], TrainArgs())


# ---------------------------------------------------------------- batching, schedule, reporting


def padding(batches: list[list[TrainingSequence]]) -> int:
    return sum(len(b) * max(len(s.input_ids) for s in b) - sum(len(s.input_ids) for s in b) for b in batches)


def test_group_by_length_reduces_padding():
    seqs = [full(random_ids(int(n), i)) for i, n in enumerate(np.random.default_rng(0).integers(5, 200, 64))]
    grouped = make_batches(seqs, 8, True, np.random.default_rng(0))
    mixed = make_batches(seqs, 8, False, np.random.default_rng(0))
    assert padding(grouped) < 0.3 * padding(mixed)
    other = make_batches(seqs, 8, True, np.random.default_rng(1))
    assert [len(b[0].input_ids) for b in other] != [len(b[0].input_ids) for b in grouped]  # order is random


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(1, 30), max_size=40), st.integers(1, 9), st.booleans(), st.integers(0, 2**32 - 1))
def test_make_batches_is_a_partition(lengths, batch_size, group, seed):
    seqs = [full([i % VOCAB] * n) for i, n in enumerate(lengths)]
    batches = make_batches(seqs, batch_size, group, np.random.default_rng(seed))
    flat = [id(s) for b in batches for s in b]
    assert sorted(flat) == sorted(id(s) for s in seqs)
    assert all(1 <= len(b) <= batch_size for b in batches)
    assert len(batches) == math.ceil(len(seqs) / batch_size)


def test_padded_batch_matches_single_sequences():
    short, long = full(random_ids(6, 60)), full(random_ids(15, 61))
    losses = []
    for batch_size, group in ((2, True), (1, False)):
        host = fresh_host()
        args = TrainArgs(max_steps=1, batch_size=batch_size, grad_accum=3 - batch_size, group_by_length=group)
        losses.append(train(host.model, [short, long], args).losses[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # padding carries no loss and changes nothing


def test_steps_from_epochs_and_max_steps():
    assert total_steps(5, TrainArgs(epochs=2, batch_size=2, grad_accum=1)) == 6
    assert total_steps(5, TrainArgs(epochs=2, batch_size=1, grad_accum=4)) == 3
    assert total_steps(5, TrainArgs(epochs=2, max_steps=7)) == 7
    host = fresh_host()
    stats = train(host.model, [full(random_ids(6, 1))] * 3, TrainArgs(max_steps=7))  # cycles the data
    assert stats.steps == 7 and stats.tokens == 7 * 6


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_decays(schedule):
    args = TrainArgs(schedule=schedule, warmup_steps=4)
    factors = [lr_factor(s, 20, args) for s in range(20)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(f > 0 for f in factors)
    if schedule == "constant":
        assert factors[4:] == [1.0] * 16
    else:
        assert all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[-1] < 0.1


def test_on_step_and_log_lines(caplog):
    host = fresh_host()
    infos: list[StepInfo] = []
    args = TrainArgs(epochs=5, log_every=2, warmup_steps=2, lr=1e-3)
    with caplog.at_level(logging.INFO, logger="testtime.finetune"):
        stats = train(host.model, [full(random_ids(10, 1))], args, on_step=infos.append)
    assert [i.step for i in infos] == [1, 2, 3, 4, 5] and {i.total_steps for i in infos} == {5}
    assert [i.loss for i in infos] == stats.losses
    assert infos[0].lr == pytest.approx(1e-3 / 3) and infos[2].lr == pytest.approx(1e-3)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line[:8] for line in lines] == ["step 2/5", "step 4/5", "step 5/5"]
    assert all(" | loss " in line and " ms | " in line and line.endswith("tok/s") for line in lines)


def test_gradient_checkpointing_gives_the_same_losses():
    seqs = [full(random_ids(12, 70))]
    plain = train(fresh_host().model, seqs, TrainArgs(lr=1e-2, epochs=3)).losses
    host = fresh_host()
    on: list[bool] = []

    def record(_: StepInfo) -> None:
        on.append(any(getattr(m, "gradient_checkpointing", False) for m in host.model.modules()))

    args = TrainArgs(lr=1e-2, epochs=3, gradient_checkpointing=True)
    checkpointed = train(host.model, seqs, args, on_step=record).losses
    assert on == [True] * 3
    assert checkpointed == pytest.approx(plain, rel=1e-5)
    assert not any(getattr(m, "gradient_checkpointing", False) for m in host.model.modules())  # off again


def test_bad_arguments_are_named_together():
    with pytest.raises(ValueError, match="batch_size.*grad_accum.*schedule"):
        train(fresh_host().model, [], TrainArgs(batch_size=0, grad_accum=0, schedule="step"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sequence 0"):
        train(fresh_host().model, [TrainingSequence(input_ids=[1, 2], labels=[1])], TrainArgs())


# ---------------------------------------------------------------- streams, resume, checkpoints


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_resume_from_a_checkpoint_continues_the_same_trajectory(tmp_path, grad_accum):
    """A list of sequences resumed at step s skips s x grad_accum micro-batches (issue 28: with grad_accum 1
    only, skipping s micro-batches passed too)."""
    from testtime.checkpoint import load_checkpoint, load_trainable, save_checkpoint

    data = [full(random_ids(n, seed=n)) for n in range(5, 12)]
    args = TrainArgs(lr=1e-2, max_steps=8, batch_size=2, warmup_steps=2, seed=3, grad_accum=grad_accum)
    host = fresh_host()
    whole = train(host.model, data, args).losses

    host = fresh_host()
    saved = {}

    def save_at_3(info):
        if info.step == 3:
            saved["path"] = save_checkpoint(tmp_path, 3, host.model, info.optimizer, {"note": "x"})
    first = train(host.model, data, TrainArgs(**{**args.__dict__, "max_steps": 8}), on_step=save_at_3).losses
    assert first == whole
    ckpt = load_checkpoint(saved["path"])
    assert ckpt.step == 3 and ckpt.extra == {"note": "x"}
    assert any(k.endswith("exp_avg_sq") for k in [f"{i}.{n}" for i, s in ckpt.optimizer["state"].items() for n in s])

    host = fresh_host()  # a new process: fresh adapter, then the checkpoint's weights and optimizer
    load_trainable(host.model, ckpt.weights)
    rest = train(host.model, data, args, start_step=3, optimizer_state=ckpt.optimizer)
    assert rest.steps == 5 and rest.losses == whole[3:]


def test_a_stream_of_batches_needs_max_steps_and_is_consumed_in_order():
    from testtime.finetune import evaluate_loss

    batches = [[full(random_ids(6 + i, seed=i))] for i in range(10)]
    with pytest.raises(ValueError, match="max_steps"):
        train(fresh_host().model, iter(batches), TrainArgs())
    host = fresh_host()
    # step 1 sees batches 0 and 1 at the initial weights: its loss is their token-weighted loss now
    expected = evaluate_loss(host.model, batches[0] + batches[1])
    stats = train(host.model, iter(batches), TrainArgs(lr=1e-2, max_steps=5, grad_accum=2))
    assert stats.steps == 5 and stats.losses[0] == pytest.approx(expected, rel=1e-5)
    assert stats.tokens == sum(len(b[0].input_ids) for b in batches)
    with pytest.raises(ValueError, match="ended before step 2"):
        train(fresh_host().model, iter(batches[:2]), TrainArgs(max_steps=2, grad_accum=2))


def test_checkpoints_keep_the_newest_and_reject_a_mismatched_model(tmp_path):
    from testtime.checkpoint import checkpoints, latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint

    host = fresh_host()
    opt = torch.optim.AdamW([p for p in host.model.parameters() if p.requires_grad])
    for step in (2, 4, 6):
        save_checkpoint(tmp_path, step, host.model, opt, keep=2)
    (tmp_path / ".step-000008.k3x9q1.tmp").mkdir()  # a crash mid-write (testtime.atomic's temporary): ignored
    assert [p.name for p in checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert latest_checkpoint(tmp_path).name == "step-000006"
    other = AdapterHost(tiny(), LoraArgs(r=4, alpha=8, target_modules=("q_proj",)))
    other.fresh(0)
    with pytest.raises(ValueError, match="does not match the model"):
        load_trainable(other.model, load_checkpoint(tmp_path / "step-000006").weights)


def test_fresh_adapter_is_the_one_peft_adds_under_the_same_seed():
    """`fresh` re-initialises the adapter in place; a seed still gives what a newly added adapter had."""
    from peft import get_peft_model

    from testtime.lora import lora_config

    host = AdapterHost(tiny(), LORA)
    host.fresh(3)
    train(host.model, [full(random_ids(12, 20))], TrainArgs(lr=1e-2, epochs=2))  # a task in between
    host.fresh(7)
    ours = lora_state(host.model)
    other = tiny()
    peft = get_peft_model(other, lora_config(LORA, other))
    peft.delete_adapter("default")
    torch.manual_seed(7)
    peft.add_adapter("default", lora_config(LORA, other))
    theirs = lora_state(peft.base_model.model)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)


def test_a_baked_adapter_stays_in_the_base_and_the_next_one_trains_on_top(tokenizer):
    host = AdapterHost(make_tiny_model(len(tokenizer), seed=3), LoraArgs(r=4, alpha=8))
    ids = torch.tensor([[1, 5, 9, 14, 2]])
    with torch.no_grad():
        base = host.model(ids).logits
        host.fresh(seed=0)
        for name, p in host.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)  # a trained adapter: B away from zero
        tuned = host.model(ids).logits
        assert not torch.allclose(tuned, base, atol=1e-4)
        host.bake()
        assert not host.has_adapter
        assert torch.allclose(host.model(ids).logits, tuned, atol=1e-4)  # the change is in the base now
        host.fresh(seed=1)  # a new adapter starts at zero on top of it
        assert torch.allclose(host.model(ids).logits, tuned, atol=1e-4)
        host.drop()
        assert torch.allclose(host.model(ids).logits, tuned, atol=1e-4)
    with pytest.raises(RuntimeError, match="no task adapter to bake"):
        host.bake()


def test_bf16_weights_train_through_float32_masters(tokenizer):
    """Adam moves a weight by about lr per step; a bfloat16 weight of 1.0 can only move in steps of 1/128, so
    without float32 masters every 1e-3 update rounds away and the norm weights stay exactly 1."""
    model = make_tiny_model(len(tokenizer), seed=4).to(torch.bfloat16)
    model.requires_grad_(False)
    norm = model.model.norm.weight
    norm.requires_grad_(True)
    assert torch.equal(norm, torch.ones_like(norm))
    seqs = [TrainingSequence(input_ids=[1, 5, 9, 14, 2, 7], labels=[1, 5, 9, 14, 2, 7])]
    train(model, seqs * 4, TrainArgs(lr=1e-3, epochs=5, batch_size=1, max_grad_norm=0.0))
    moved = (norm.detach().float() - 1.0).abs()
    assert moved.max().item() >= 1 / 128  # 20 steps of ~1e-3 added up past one bfloat16 step
    assert norm.dtype == torch.bfloat16 and norm.grad is None
