"""Pretraining: the in-context task stream, its examples, checkpoints and resume, the adapter and its card."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable

import numpy as np
import pytest
import torch

from helpers import make_tiny_model
from testtime.arc import pretrain as pretrain_module
from testtime.arc.format import TokenCounter
from testtime.arc.pretrain import default_adapter, format_token_ids, pretrain
from testtime.arc.pretrain_data import InContextSampler, evaluation_ids, load_examples, split_validation
from testtime.arc.settings import PretrainConfig, SamplerArgs
from testtime.arc.task import Example, TaskError, as_grid, grids_equal
from testtime.arc.transforms import parse_transform
from testtime.config import problems
from testtime.lora import AdapterHost
from testtime.models import LoadedModel
from testtime.settings import LoraArgs, TrainArgs


def random_tasks(n_tasks: int = 6, per_task: int = 8, seed: int = 0) -> dict[str, list[Example]]:
    """Tasks whose output is the input's transpose + 1 (mod 10): any transform mix-up shows."""
    rng = np.random.default_rng(seed)
    tasks = {}
    for t in range(n_tasks):
        examples = []
        for _ in range(per_task):
            g = as_grid(rng.integers(0, 10, tuple(rng.integers(1, 6, 2))).tolist())
            examples.append(Example(g, as_grid(((g.T + 1) % 10).tolist())))
        tasks[f"task{t:02d}"] = examples
    return tasks


def test_sampled_tasks_have_k_demos_fit_and_share_one_transform(tokenizer):
    tasks = random_tasks()
    args = SamplerArgs(min_demos=2, max_demos=4, max_len=160, seed=3)
    sampler = InContextSampler(tasks, tokenizer, args)
    counter = TokenCounter(tokenizer)
    dropped = 0
    for i in range(60):
        drawn = sampler.draw(i)
        assert drawn is not None
        k = len(drawn.picked) - 1
        assert 2 <= k <= 4 and 1 <= len(drawn.demos) <= k
        dropped += k - len(drawn.demos)
        assert counter.sequence(drawn.demos, drawn.query.input, drawn.query.output) <= args.max_len
        seq = sampler.sequence(i)
        assert len(seq.input_ids) <= args.max_len
        # undoing the one transform gives back the task's own examples, inputs and outputs alike
        inverse = parse_transform(drawn.transform).inverse()
        originals = [tasks[drawn.task_id][j] for j in drawn.picked]
        query = originals[-1]
        assert grids_equal(inverse.grid(drawn.query.input), query.input)
        assert grids_equal(inverse.grid(drawn.query.output), query.output)
        for demo in drawn.demos:
            back = Example(inverse.grid(demo.input), inverse.grid(demo.output))
            assert any(grids_equal(back.input, o.input) and grids_equal(back.output, o.output)
                       for o in originals[:-1])
    assert dropped > 0  # max_len=160 forces some demos out
    assert len({sampler.draw(i).transform for i in range(60)}) > 10


def test_the_stream_is_a_function_of_seed_and_position(tokenizer):
    tasks = random_tasks()
    args = SamplerArgs(max_len=400, seed=1)
    a, b = InContextSampler(tasks, tokenizer, args), InContextSampler(tasks, tokenizer, args)
    assert a.sequence(17).input_ids == b.sequence(17).input_ids
    full = a.batches(3, group=4)
    first = [next(full) for _ in range(11)]
    resumed = b.batches(3, start_batch=5, group=4)
    assert [[s.input_ids for s in batch] for batch in first[5:]] == \
        [[s.input_ids for s in next(resumed)] for _ in range(6)]
    other = InContextSampler(tasks, tokenizer, SamplerArgs(max_len=400, seed=2))
    assert other.sequence(17).input_ids != a.sequence(17).input_ids


def test_later_outputs_labels_every_output_but_the_first_demos(tokenizer):
    tasks = random_tasks()
    seqs = {mode: InContextSampler(tasks, tokenizer, SamplerArgs(max_len=400, seed=1, loss_on=mode)).sequence(5)
            for mode in ("answer", "outputs", "later-outputs")}
    assert len({tuple(s.input_ids) for s in seqs.values()}) == 1  # the same draw, only the labels differ
    counts = {mode: sum(x != -100 for x in s.labels) for mode, s in seqs.items()}
    assert counts["answer"] < counts["later-outputs"] < counts["outputs"]
    first_labelled = {mode: next(i for i, x in enumerate(s.labels) if x != -100) for mode, s in seqs.items()}
    assert first_labelled["outputs"] < first_labelled["later-outputs"] < first_labelled["answer"]
    wrong = problems(PretrainConfig(sources=["x"], data=SamplerArgs(loss_on="all")))
    assert [p.field for p in wrong] == ["data.loss_on"] and "later-outputs" in wrong[0].message


def _arc_task(rows: int) -> dict:
    pairs = [{"input": [[i % 10] * 2] * rows, "output": [[(i + 1) % 10]]} for i in range(3)]
    return {"train": pairs[:2], "test": pairs[2:]}


def test_evaluation_tasks_are_left_out_unless_allowed(tmp_path):
    eval_id = sorted(evaluation_ids())[0]
    (tmp_path / f"{eval_id}.json").write_text(json.dumps(_arc_task(2)))
    (tmp_path / "mine0001.json").write_text(json.dumps(_arc_task(3)))
    tasks, info = load_examples([str(tmp_path)])
    assert sorted(tasks) == ["mine0001"]
    assert info.sources[str(tmp_path)]["evaluation_tasks_left_out"] == 1
    assert len(tasks["mine0001"]) == 3  # train demos and the solved test
    tasks, _ = load_examples([str(tmp_path)], allow_evaluation=True)
    assert sorted(tasks) == sorted([eval_id, "mine0001"])
    with pytest.raises(TaskError, match="evaluation tasks are left out"):
        load_examples(["arc-agi-1/evaluation"])


def test_rearc_files_merge_by_task_and_count_bad_examples(tmp_path):
    data = {"aaaa0000": [{"input": [[1, 2]], "output": [[2, 1]]}] * 3 + [{"input": [[1]] * 31, "output": [[1]]}],
            "bbbb0000": [{"input": [[3]], "output": [[4]]}, {"input": [[5]]}]}
    path = tmp_path / "re_arc.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    tasks, info = load_examples([str(path), str(path)])
    assert sorted(tasks) == ["aaaa0000"]  # bbbb0000 keeps one good example: too few for a task
    assert len(tasks["aaaa0000"]) == 6  # the same task from two sources is merged
    assert info.sources[str(path)]["bad_examples"] == 2


def test_validation_tasks_are_held_out_whole():
    tasks = random_tasks(n_tasks=10)
    train_tasks, val_tasks = split_validation(tasks, 3, seed=0)
    assert len(val_tasks) == 3 and not set(train_tasks) & set(val_tasks)
    assert set(train_tasks) | set(val_tasks) == set(tasks)
    with pytest.raises(ValueError, match="--val-tasks"):
        split_validation(tasks, 10, seed=0)


def loaded_tiny(tokenizer) -> LoadedModel:
    return LoadedModel(make_tiny_model(vocab_size=len(tokenizer)), tokenizer, "tiny", torch.device("cpu"),
                       torch.float32)


def small_config(steps: int = 6, **overrides) -> PretrainConfig:
    fields = dict(lora=LoraArgs(r=4, alpha=8), val_tasks=2, val_sequences=4, val_every=2, checkpoint_every=2,
                  train=TrainArgs(lr=5e-3, max_steps=steps, warmup_steps=1, batch_size=2, grad_accum=2, log_every=0),
                  data=SamplerArgs(max_len=200))
    fields.update(overrides)
    return PretrainConfig(**fields)


class Stop(Exception):
    pass


def test_an_interrupted_run_resumes_to_the_same_steps_and_losses(tmp_path, tokenizer):
    tasks = random_tasks()
    whole = pretrain(loaded_tiny(tokenizer), tasks, small_config(), tmp_path / "whole")

    def stop_after_4(p):
        if p.step == 4:
            raise Stop
    with pytest.raises(Stop):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(), tmp_path / "cut", on_progress=stop_after_4)
    assert (tmp_path / "cut" / "checkpoints" / "step-000004").is_dir()
    assert not (tmp_path / "cut" / "card.json").exists()
    seen = []
    resumed = pretrain(loaded_tiny(tokenizer), tasks, small_config(), tmp_path / "cut",
                       on_progress=lambda p: seen.append(p.step))
    assert seen == [5, 6]
    assert resumed["steps"] == whole["steps"] == 6
    assert resumed["tokens_seen"] == whole["tokens_seen"]
    assert resumed["val_history"] == whole["val_history"]
    assert resumed["train_loss_final"] == whole["train_loss_final"]
    with pytest.raises(ValueError, match=r"other settings \(train\.max_steps: 6 -> 8\)"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=8), tmp_path / "cut")


def test_a_run_started_before_a_setting_existed_resumes(tmp_path, tokenizer):
    tasks = random_tasks()

    def stop_after_2(p):
        if p.step == 2:
            raise Stop
    with pytest.raises(Stop):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=4), tmp_path, on_progress=stop_after_2)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["settings"]["extract_rank"]  # as a testtime without full fine-tuning wrote it
    (tmp_path / "config.json").write_text(json.dumps(config))
    seen = []
    card = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=4), tmp_path,
                    on_progress=lambda p: seen.append(p.step))
    assert seen == [3, 4] and card["steps"] == 4  # resumed from its checkpoint, not refused
    with pytest.raises(ValueError, match=r"extract_rank: 64 -> 8"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=4, extract_rank=8), tmp_path)


def test_the_adapter_loads_back_changes_predictions_and_has_a_card(tmp_path, tokenizer):
    card = pretrain(loaded_tiny(tokenizer), random_tasks(), small_config(steps=4, train_token_rows=True), tmp_path)
    assert (tmp_path / "adapter_model.safetensors").is_file() and (tmp_path / "adapter_config.json").is_file()
    on_disk = json.loads((tmp_path / "card.json").read_text())
    assert on_disk == card
    assert card["base_model"] == "embedded" and card["steps"] == 4 and card["tokens_seen"] > 0
    assert [s for s, _ in card["val_history"]] == [0, 2, 4]
    assert card["val_loss_final"] < card["val_loss_initial"]  # lr 5e-3 on a 4-rank adapter learns the format
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == format_token_ids(tokenizer)

    ids = torch.tensor([tokenizer("I\n12\n34\nO\n", add_special_tokens=False)["input_ids"]])
    base = make_tiny_model(vocab_size=len(tokenizer))
    before = base(ids).logits
    host = AdapterHost(make_tiny_model(vocab_size=len(tokenizer)), LoraArgs(r=4, alpha=8), start_adapter=tmp_path)
    after = host.model(ids).logits
    assert not torch.allclose(before, after, atol=1e-4)


def _checkpointing_probe(loaded: LoadedModel) -> tuple[dict, Callable[[object], None]]:
    """Count the MLP forwards of layer 0 in training (a checkpointed layer runs twice: forward and the
    recompute in backward), and record at every step whether the model's layers say checkpointing is on."""
    seen: dict = {"forwards": 0, "on_during": []}

    def count(module, args):  # a pre-hook: the recompute stops early, once it has what backward needs
        if module.training and torch.is_grad_enabled():
            seen["forwards"] += 1
    loaded.model.model.layers[0].mlp.register_forward_pre_hook(count)

    def on_progress(_step) -> None:
        seen["on_during"].append([bool(layer.gradient_checkpointing) for layer in loaded.model.model.layers])
    return seen, on_progress


def test_gradient_checkpointing_trains_the_same_adapter(tmp_path, tokenizer):
    tasks = random_tasks()
    plain_model = loaded_tiny(tokenizer)
    plain_seen, plain_probe = _checkpointing_probe(plain_model)
    plain = pretrain(plain_model, tasks, small_config(steps=2), tmp_path / "plain", on_progress=plain_probe)
    config = small_config(steps=2)
    config.train.gradient_checkpointing = True
    gc_model = loaded_tiny(tokenizer)
    gc_seen, gc_probe = _checkpointing_probe(gc_model)
    checkpointed = pretrain(gc_model, tasks, config, tmp_path / "gc", on_progress=gc_probe)
    assert [v for _, v in checkpointed["val_history"]] == pytest.approx([v for _, v in plain["val_history"]], rel=1e-5)
    assert checkpointed["train_loss_final"] == pytest.approx(plain["train_loss_final"], rel=1e-5)
    # it really was on: every layer checkpointed at every step, each training forward recomputed in backward ...
    assert plain_seen["on_during"] == [[False, False]] * 2 and gc_seen["on_during"] == [[True, True]] * 2
    micro_batches = 2 * config.train.grad_accum  # 2 steps x grad_accum micro-batches, one forward each
    assert plain_seen["forwards"] == micro_batches and gc_seen["forwards"] == 2 * micro_batches
    # ... and off again afterwards
    assert not gc_model.model.is_activation_checkpointing
    assert not any(layer.gradient_checkpointing for layer in gc_model.model.model.layers)


def test_the_shipped_adapter_is_the_default_for_its_model(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrain_module, "SHIPPED_ADAPTERS", tmp_path)
    assert default_adapter("embedded") is None
    (tmp_path / "smollm2-135m-arc").mkdir()
    (tmp_path / "smollm2-135m-arc" / "adapter_config.json").write_text("{}")
    assert default_adapter("embedded") == tmp_path / "smollm2-135m-arc"
    assert default_adapter("HuggingFaceTB/SmolLM2-360M") is None


# --- --max-minutes and --init-adapter ------------------------------------------------------------

class FakeClock:
    """Seconds that pass only when a test says so (here: a fixed time per optimizer step)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_max_minutes_stops_cleanly_and_the_same_command_continues_the_same_run(tmp_path, tokenizer):
    tasks = random_tasks()
    whole = pretrain(loaded_tiny(tokenizer), tasks, small_config(), tmp_path / "whole")
    clock, seen = FakeClock(), []

    def thirty_seconds_a_step(p):
        seen.append(p)
        clock.now += 30.0
    # steps end at 0, 30, 60 s: after step 3 (60 s) a fourth would end at 90 s > 80 s, so it stops there,
    # validating and checkpointing at step 3 although val_every = checkpoint_every = 2
    card = pretrain(loaded_tiny(tokenizer), tasks, small_config(max_minutes=80 / 60), tmp_path / "cut",
                    on_progress=thirty_seconds_a_step, clock=clock)
    assert [p.step for p in seen] == [1, 2, 3]
    assert card["stopped_by"] == "max-minutes" and card["steps"] == 3 and card["steps_planned"] == 6
    assert seen[-1].val_loss is not None and seen[-1].checkpoint.name == "step-000003"
    assert (tmp_path / "cut" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "cut" / "card.json").read_text())["stopped_by"] == "max-minutes"
    assert card["seconds"] == 60.0  # timed by the given clock
    # not a result-affecting setting: a rerun without it resumes and ends where the uninterrupted run ends
    settings = json.loads((tmp_path / "cut" / "config.json").read_text())["settings"]
    assert "max_minutes" not in settings and "init_adapter" not in settings
    steps = []
    resumed = pretrain(loaded_tiny(tokenizer), tasks, small_config(), tmp_path / "cut",
                       on_progress=lambda p: steps.append(p.step))
    assert steps == [4, 5, 6] and resumed["stopped_by"] == "steps"
    assert resumed["val_history"][-1] == whole["val_history"][-1]
    assert resumed["train_loss_final"] == whole["train_loss_final"]
    with pytest.raises(ValueError, match="max_minutes must be a positive number"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(max_minutes=0), tmp_path / "bad")


def test_a_time_limit_longer_than_the_run_changes_nothing(tmp_path, tokenizer):
    tasks = random_tasks()
    plain = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=3), tmp_path / "plain")
    clock = FakeClock()
    timed = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=3, max_minutes=10), tmp_path / "timed",
                     on_progress=lambda p: setattr(clock, "now", clock.now + 30.0), clock=clock)
    assert timed["stopped_by"] == "steps" and timed["steps"] == 3
    assert timed["val_history"] == plain["val_history"]


def test_init_adapter_starts_from_its_weights_with_a_fresh_schedule_and_keeps_the_lineage(tmp_path, tokenizer):
    import hashlib

    tasks = random_tasks()
    parent = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=4), tmp_path / "parent")
    steps = []
    child = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=2, init_adapter=str(tmp_path / "parent")),
                     tmp_path / "child", on_progress=lambda p: steps.append(p.step))
    assert steps == [1, 2]  # a schedule of its own, from step 1
    # the child starts where the parent ended: the same validation loss on the same held-out sequences
    assert child["val_loss_initial"] == pytest.approx(parent["val_loss_final"], rel=1e-5)
    fresh = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=2), tmp_path / "fresh")
    assert fresh["val_loss_initial"] == pytest.approx(parent["val_loss_initial"], rel=1e-6)
    assert child["val_loss_initial"] < fresh["val_loss_initial"]
    digest = hashlib.sha256((tmp_path / "parent" / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert [(a["sha256"], a["steps"], a["base_model"]) for a in child["lineage"]] == [(digest, 4, "embedded")]
    assert child["steps_with_lineage"] == 6
    grandchild = pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=1, init_adapter=str(tmp_path / "child")),
                          tmp_path / "grandchild")
    assert [a["steps"] for a in grandchild["lineage"]] == [4, 2] and grandchild["steps_with_lineage"] == 7
    # result-affecting: the same OUT with another start (or a changed start adapter) is refused
    settings = json.loads((tmp_path / "child" / "config.json").read_text())["settings"]
    assert settings["init_adapter"] == str(tmp_path / "parent") and settings["init_adapter_sha256"] == digest
    with pytest.raises(ValueError, match=r"other settings \(init_adapter: .*fresh"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=2, init_adapter=str(tmp_path / "fresh")),
                 tmp_path / "child")


def test_init_adapter_of_another_shape_or_missing_is_named(tmp_path, tokenizer):
    tasks = random_tasks()
    pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=1), tmp_path / "r4")
    with pytest.raises(ValueError, match=r"another LoRA shape \(rank \(--lora-rank\): 4 there, 8 here"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=1, lora=LoraArgs(r=8, alpha=8),
                                                             init_adapter=str(tmp_path / "r4")), tmp_path / "r8")
    with pytest.raises(ValueError, match="init_adapter .*no adapter_config.json there"):
        pretrain(loaded_tiny(tokenizer), tasks, small_config(steps=1, init_adapter=str(tmp_path / "nowhere")),
                 tmp_path / "x")


def test_the_cli_maps_the_new_flags_and_names_them(tmp_path, tiny_model_dir):
    from cli_helpers import invoke
    from testtime.cli.pretrain import OPTIONS
    from testtime.config import flags

    assert flags(OPTIONS)["init_adapter"] == "--init-adapter" and flags(OPTIONS)["max_minutes"] == "--max-minutes"
    assert {o.path for o in OPTIONS if o.runtime} == {"max_minutes"}  # left out of the settings a rerun compares
    data = tmp_path / "tasks.json.gz"
    with gzip.open(data, "wt") as f:
        json.dump({tid: [{"input": ex.input.tolist(), "output": ex.output.tolist()} for ex in exs]
                   for tid, exs in random_tasks().items()}, f)
    common = ["arc", "pretrain", str(data), "--model", str(tiny_model_dir), "--steps", "2", "--warmup", "0",
              "--grad-accum", "1", "--val-tasks", "2", "--val-sequences", "2", "--lora-rank", "2", "--max-len", "200"]
    bad = invoke(*common, "--out", tmp_path / "a", "--max-minutes", "-1", "--init-adapter", tmp_path)
    assert bad.exit_code == 2
    assert "--max-minutes must be a positive number" in " ".join(bad.output.split())
    assert "--init-adapter" in bad.output and "no adapter_config.json" in " ".join(bad.output.split())
    first = invoke(*common, "--out", tmp_path / "a", "--max-minutes", "30")
    assert first.exit_code == 0, first.output
    child = invoke(*common, "--out", tmp_path / "b", "--init-adapter", tmp_path / "a")
    assert child.exit_code == 0, child.output
    assert "started from" in child.output and "4 steps in all" in " ".join(child.output.split())


def test_export_casts_to_bf16_keeps_the_card_and_loads_as_the_source_does(tmp_path, tokenizer):
    from safetensors.torch import load_file

    from testtime.lora import export_adapter

    src, dst = tmp_path / "pt", tmp_path / "shipped"
    card = pretrain(loaded_tiny(tokenizer), random_tasks(), small_config(steps=2), src)
    exported = export_adapter(src, dst)
    theirs, ours = load_file(str(src / "adapter_model.safetensors")), load_file(str(dst / "adapter_model.safetensors"))
    assert set(ours) == set(theirs) and all(t.dtype == torch.bfloat16 for t in ours.values())
    change = max(float((ours[n].float() - theirs[n]).abs().max()) for n in theirs)
    assert 0 < change == exported["export"]["max_abs_change"]
    assert (dst / "adapter_model.safetensors").stat().st_size < 0.6 * (src / "adapter_model.safetensors").stat().st_size
    on_disk = json.loads((dst / "card.json").read_text())
    assert on_disk == exported and {k: v for k, v in on_disk.items() if k != "export"} == card
    assert on_disk["export"]["dtype"] == "bfloat16" and len(on_disk["export"]["sha256"]) == 64
    assert on_disk["export"]["weights_sha256"] == sha256_of(dst / "adapter_model.safetensors") != sha256_of(
        src / "adapter_model.safetensors")
    assert on_disk["machine"] and "cores" in on_disk["machine"]  # what ran the stage
    configs = [json.loads((d / "adapter_config.json").read_text()) for d in (src, dst)]
    assert configs[0] == configs[1]

    ids = torch.tensor([tokenizer("I\n12\n34\nO\n", add_special_tokens=False)["input_ids"]])
    logits = [AdapterHost(make_tiny_model(vocab_size=len(tokenizer)), LoraArgs(r=4, alpha=8),
                          start_adapter=path).model(ids).logits for path in (src, dst)]
    base = make_tiny_model(vocab_size=len(tokenizer))(ids).logits
    assert torch.allclose(logits[0], logits[1], atol=1e-2)  # the bf16 copy predicts as the source does
    assert not torch.allclose(logits[1], base, atol=1e-4)  # and is not the bare model


def sha256_of(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_shipped_adapter_is_what_its_card_says():
    """The card in the package describes these weights (its export entry's hash) and lists every stage."""
    from testtime.arc.pretrain import default_adapter

    shipped = default_adapter("embedded")
    card = json.loads((shipped / "card.json").read_text())
    assert card["export"]["weights_sha256"] == sha256_of(shipped / "adapter_model.safetensors")
    stages = [*card["lineage"], card]
    assert card["steps_with_lineage"] == sum(stage["steps"] for stage in stages)
    for stage in stages:
        assert stage["tokens_seen"] > 0 and stage["val_loss_final"] is not None
        assert (stage.get("data") or {}).get("sources") or stage.get("data"), "a stage without its data"


def test_export_at_a_lower_rank_ships_each_changes_best_approximation(tmp_path, tiny_model_dir):
    """--rank R: every module's change scale * B @ A becomes its truncated SVD (what torch's SVD gives, by hand);
    at the adapter's own rank the change is the same; the card records the ranks and the share kept."""
    from safetensors.torch import load_file

    from helpers import save_random_adapter
    from testtime.lora import export_adapter

    src = save_random_adapter(tiny_model_dir, tmp_path / "r4")  # rank 4, alpha 8: scale 2
    theirs = load_file(str(src / "adapter_model.safetensors"))
    pairs = [(n, n.replace(".lora_A.", ".lora_B.")) for n in theirs if ".lora_A." in n]

    def changes(tensors, scale):
        return {a: scale * (tensors[b].float() @ tensors[a].float()) for a, b in pairs}

    before = changes(theirs, 2.0)
    same = export_adapter(src, tmp_path / "r4-again", "float32", rank=4)
    again = changes(load_file(str(tmp_path / "r4-again" / "adapter_model.safetensors")), 1.0)
    assert same["export"]["rank"] == {"from": 4, "to": 4, "kept": pytest.approx(1.0)}
    assert all(torch.allclose(again[n], before[n], atol=1e-5) for n in before)
    low = export_adapter(src, tmp_path / "r2", "float32", rank=2)
    config = json.loads((tmp_path / "r2" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 2)
    after = changes(load_file(str(tmp_path / "r2" / "adapter_model.safetensors")), 1.0)
    kept_sq = total_sq = 0.0
    for name, delta in before.items():
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        assert after[name].shape == delta.shape
        assert torch.allclose(after[name], (u[:, :2] * s[:2]) @ vh[:2], atol=1e-5)
        kept_sq, total_sq = kept_sq + float((s[:2] ** 2).sum()), total_sq + float((s**2).sum())
    assert low["export"]["rank"] == {"from": 4, "to": 2, "kept": pytest.approx(kept_sq / total_sq, rel=1e-5)}
    assert low["export"]["rank"]["kept"] < 0.99


def test_export_names_a_directory_that_is_not_an_adapter(tmp_path):
    from cli_helpers import invoke

    (tmp_path / "adapter_config.json").write_text("[")
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    result = invoke("arc", "export-adapter", tmp_path, tmp_path / "out")
    assert result.exit_code != 0 and "adapter_config.json" in result.output and "damaged" in result.output
    missing = invoke("arc", "export-adapter", tmp_path / "nope", tmp_path / "o2")
    assert missing.exit_code != 0 and "arc pretrain" in " ".join(missing.output.split())
    assert not (tmp_path / "out").exists() and not (tmp_path / "o2").exists()


def test_the_shipped_embedded_adapter_fits_smollm2_135m_and_has_its_card():
    from safetensors.torch import load_file

    shipped = default_adapter("embedded")
    assert shipped is not None and shipped.name == "smollm2-135m-arc"
    weights = shipped / "adapter_model.safetensors"
    assert weights.stat().st_size < 16 * 2**20
    config = json.loads((shipped / "adapter_config.json").read_text())
    r = config["r"]
    assert config["peft_type"] == "LORA" and r >= 1 and config["lora_alpha"] > 0
    # SmolLM2-135M: 30 layers, hidden 576, MLP 1536, 9 query heads and 3 key/value heads of 64
    out_dim = {"q_proj": 576, "k_proj": 192, "v_proj": 192, "o_proj": 576, "gate_proj": 1536, "up_proj": 1536,
               "down_proj": 576}
    in_dim = {name: 1536 if name == "down_proj" else 576 for name in out_dim}
    assert sorted(config["target_modules"]) == sorted(out_dim)
    tensors = load_file(str(weights))
    assert len(tensors) == 30 * len(out_dim) * 2
    for name, t in tensors.items():
        module = name.split(".")[-3]
        assert t.dtype == torch.bfloat16, name
        assert tuple(t.shape) == ((r, in_dim[module]) if ".lora_A." in name else (out_dim[module], r)), name
    assert any(float(t.abs().max()) > 0 for n, t in tensors.items() if ".lora_B." in n)  # trained, not the init
    card = json.loads((shipped / "card.json").read_text())
    assert card["base_model"] == "embedded" and card["steps"] > 0 and card["tokens_seen"] > 0
    assert card["val_loss_final"] < card["val_loss_initial"]
    assert card["export"]["dtype"] == "bfloat16" and set(card["data"]["sources"])
    # the weights' rank is the trained one, or a re-factored export's (`export-adapter --rank`), which says so
    trained = card["config"]["lora"]["r"]
    assert card["export"].get("rank", {"from": trained, "to": trained}) == {**card["export"].get("rank", {}),
                                                                           "from": trained, "to": r}
    assert card["config"]["allow_evaluation"] is False  # no ARC evaluation task in its training data


def test_a_continuation_carries_on_the_planned_schedule(tmp_path, tokenizer):
    from testtime.finetune import lr_factor

    first = pretrain(loaded_tiny(tokenizer), random_tasks(), small_config(steps=2), tmp_path / "a")
    planned = small_config(steps=5, init_adapter=str(tmp_path / "a"), continue_schedule=True)
    second = pretrain(loaded_tiny(tokenizer), random_tasks(), planned, tmp_path / "b")
    assert (first["steps"], second["steps"], second["schedule_from"], second["steps_with_lineage"]) == (2, 3, 2, 5)
    assert second["lineage"][-1]["steps"] == 2 and second["lineage"][-1]["machine"] == first["machine"]
    # the learning rate: the cosine of the 5-step plan from step 2 on, ramped over the 1 warm-up step
    args = planned.train
    assert lr_factor(2, 5, args, ramp_from=2) == pytest.approx(lr_factor(2, 5, args) / 2)
    assert lr_factor(3, 5, args, ramp_from=2) == lr_factor(3, 5, args) < lr_factor(2, 5, args)
    with pytest.raises(ValueError, match="planned total of every stage"):
        pretrain(loaded_tiny(tokenizer), random_tasks(),
                 small_config(steps=2, init_adapter=str(tmp_path / "a"), continue_schedule=True), tmp_path / "c")
    assert [name for name, _ in PretrainConfig(continue_schedule=True).check()] == ["continue_schedule"]


def test_full_fine_tuning_writes_an_extracted_lora_and_says_what_it_kept(tmp_path, tokenizer):
    from testtime.arc.settings import PretrainLora
    from testtime.config import problems

    config = small_config(steps=4, lora=PretrainLora(r=0), extract_rank=8)
    card = pretrain(loaded_tiny(tokenizer), random_tasks(), config, tmp_path)
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter["r"] == 8 and adapter["lora_alpha"] == 8  # what ships: a LoRA of the extract rank, scale 1
    extracted = card["extracted"]
    assert extracted["rank"] == 8 and 0 < extracted["kept"] < 1 and 0 < extracted["untargeted"] < 1
    assert extracted["val_loss_full"] < card["val_loss_initial"]  # every weight trained
    assert card["val_loss_final"] == pytest.approx(extracted["val_loss_full"])

    ids = torch.tensor([tokenizer("I\n12\n34\nO\n", add_special_tokens=False)["input_ids"]])
    host = AdapterHost(make_tiny_model(vocab_size=len(tokenizer)), LoraArgs(r=4, alpha=8), start_adapter=tmp_path)
    assert not torch.allclose(make_tiny_model(vocab_size=len(tokenizer))(ids).logits, host.model(ids).logits,
                              atol=1e-4)  # the extracted change is in the weights `arc solve` starts from

    found = {p.field for p in problems(small_config(lora=PretrainLora(r=0), train_token_rows=True,
                                                    init_adapter=str(tmp_path)))}
    assert found == {"init_adapter", "train_token_rows"}
    assert [p.field for p in problems(small_config(lora=PretrainLora(r=-1)))] == ["lora.r"]
