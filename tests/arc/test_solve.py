"""The solver end to end on tiny random models: TTT works mechanically, no leak, resume, failures."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from transformers import LlamaForCausalLM

from helpers import make_tiny_model
from testtime.arc.records import TaskRecord
from testtime.arc.score import summarize
from testtime.arc.settings import InferArgs, SolveConfig, TTTArgs
from testtime.arc.solve import ArcJob, Solver, solve_tasks
from testtime.arc.task import Example, Task, as_grid
from testtime.jobs import Finished, RunDir, ignore
from testtime.lora import AdapterHost
from testtime.settings import LoraArgs, TrainArgs


def run(solver, tasks, run_dir, emit=ignore):
    """Solve in-process through the job layer, as `arc solve` does; (records, submission)."""
    job = ArcJob(solver.config, solver=solver, shared_tasks=tasks)
    records, submission, _ = solve_tasks(job, tasks, None if run_dir is None else RunDir(run_dir, records="tasks"),
                                         emit=emit)
    return records, submission


def learnable_model(vocab_size: int, hidden: int = 128, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama whose LoRA can learn a short answer in ~60 steps.

    The untied head at std 0.5 lets logits grow large enough to beat 49k random competitors;
    embeddings at std 0.1 keep the residual stream from copying the input token.
    """
    model = make_tiny_model(vocab_size, seed, hidden_size=hidden, intermediate_size=2 * hidden,
                            num_key_value_heads=4, tie_word_embeddings=False)
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0.0, 0.1)
        model.lm_head.weight.normal_(0.0, 0.5)
    return model.eval()


def constant_task(task_id: str, colour: int, seed: int, n_train: int = 6) -> Task:
    """A task family the random model cannot solve: whatever the input, the output is [[colour]]."""
    rng = np.random.default_rng(seed)
    inputs = [as_grid(rng.integers(0, 10, tuple(rng.integers(1, 4, 2))).tolist()) for _ in range(n_train + 1)]
    answer = as_grid([[colour]])
    return Task(task_id, tuple(Example(g, answer) for g in inputs[:n_train]), (Example(inputs[-1], answer),))


def config(ttt: bool, **train) -> SolveConfig:
    return SolveConfig(
        ttt=ttt, seed=0, lora=LoraArgs(r=8, alpha=16),
        train=TrainArgs(**{"lr": 1e-2, "epochs": 8, "batch_size": 4, **train}),
        data=TTTArgs(n_sequences=32, colors=False),  # a colour permutation would change the constant
        infer=InferArgs(transforms="geometric", max_new_tokens=8, batch_size=8),
    )


@pytest.fixture(scope="module")
def host(tokenizer):
    return AdapterHost(learnable_model(len(tokenizer)), LoraArgs(r=8, alpha=16))


def solved(record: TaskRecord) -> bool:
    return all(t.correct.any_attempt for t in record.tests)


@pytest.mark.slow
def test_ttt_solves_tasks_the_base_model_cannot_and_nothing_leaks(host, tokenizer):
    tasks = [constant_task("aaa", 5, seed=1), constant_task("bbb", 7, seed=2)]
    base_weights = {k: v.clone() for k, v in host.model.state_dict().items()}

    before, _ = run(Solver(host, tokenizer, config(ttt=False)), tasks, None)
    assert not any(solved(r) for r in before)

    # 16 epochs: at 8, task bbb stopped at loss 0.44 on an AVX2-only CPU (float32 sums differ by CPU)
    after, submission = run(Solver(host, tokenizer, config(ttt=True, epochs=16)), tasks, None)
    assert all(r.status == "ok" and r.ttt.steps > 0 for r in after)
    assert [solved(r) for r in after] == [True, True]  # bbb answers 7, not aaa's 5: A's LoRA did not leak
    assert all(r.tests[0].candidates for r in after)
    assert [TaskRecord.problems(r.to_json()) for r in after] == [[], []]  # real records with candidates read back
    assert submission["aaa"][0]["attempt_1"] == [[5]] and submission["bbb"][0]["attempt_1"] == [[7]]
    assert summarize(after)["score"] == 1.0 and summarize(before)["score"] == 0.0

    # the LoRA is off after each task: the base model predicts exactly as before TTT, from the same weights
    again, _ = run(Solver(host, tokenizer, config(ttt=False)), tasks, None)
    assert [r.tests for r in again] == [r.tests for r in before]
    assert not host.has_adapter and host.trainable_parameters()[0] == 0
    for name, tensor in host.model.state_dict().items():
        if "lora_" not in name:  # the adapter's modules stay, switched off, for the next task
            assert torch.equal(tensor, base_weights[name]), name


def small_tasks() -> list[Task]:
    return [constant_task(f"t{i}", i, seed=i, n_train=3) for i in range(1, 5)]


def quick_config() -> SolveConfig:
    cfg = config(ttt=True)
    cfg.train = TrainArgs(lr=1e-2, epochs=1, batch_size=2)
    cfg.data = TTTArgs(n_sequences=4, colors=False)
    return cfg


class Interrupt(Exception):
    pass


def test_resume_after_interrupt_gives_the_same_submission(host, tokenizer, tmp_path, monkeypatch):
    tasks = small_tasks()
    solver = Solver(host, tokenizer, quick_config())
    full, full_submission = run(solver, tasks, tmp_path / "full")

    def stop_after_two(event):
        if isinstance(event, Finished) and len(list((tmp_path / "part" / "tasks").glob("*.json"))) == 2:
            raise Interrupt  # like Ctrl-C between tasks
    with pytest.raises(Interrupt):
        run(solver, tasks, tmp_path / "part", emit=stop_after_two)
    finished = sorted(p.stem for p in (tmp_path / "part" / "tasks").glob("*.json"))
    assert finished == ["t1", "t2"] and not (tmp_path / "part" / "submission.json").exists()
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "part" / "tasks").glob("*.json")}

    computed = []
    original = Solver.solve_task
    monkeypatch.setattr(Solver, "solve_task", lambda self, task, on_step=None, **kw: computed.append(task.id)
                        or original(self, task, on_step, **kw))
    records, submission = run(solver, tasks, tmp_path / "part")
    assert computed == ["t3", "t4"]  # finished tasks were not recomputed
    assert all(p.stat().st_mtime_ns == t for p, t in mtimes.items())
    assert submission == full_submission
    on_disk = json.loads((tmp_path / "part" / "submission.json").read_text())
    assert on_disk == json.loads((tmp_path / "full" / "submission.json").read_text())
    assert [r.tests for r in records] == [r.tests for r in full]


def test_a_failing_task_is_recorded_and_the_run_goes_on(host, tokenizer, tmp_path, monkeypatch):
    import testtime.arc.solve as solve_module

    real = solve_module.predict_task

    def flaky(model, tok, task, args, **kw):
        if task.id == "t2":
            raise RuntimeError("injected failure")
        return real(model, tok, task, args, **kw)
    monkeypatch.setattr(solve_module, "predict_task", flaky)
    records, submission = run(Solver(host, tokenizer, quick_config()), small_tasks(), tmp_path)
    status = {r.task_id: r.status for r in records}
    assert status == {"t1": "ok", "t2": "failed", "t3": "ok", "t4": "ok"}
    assert "injected failure" in records[1].error
    assert submission["t2"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]  # present, as Kaggle requires
    assert summarize(records)["failed"] == 1
    assert not host.has_adapter  # the failed task's LoRA was dropped too


def test_a_task_that_never_fits_is_counted_not_crashed(host, tokenizer):
    cfg = quick_config()
    cfg.data = TTTArgs(n_sequences=4, colors=False, max_len=8)  # not even one demo + query fits
    cfg.infer = InferArgs(transforms="geometric", max_new_tokens=8, max_len=16)
    records, submission = run(Solver(host, tokenizer, cfg), small_tasks()[:2], None)
    assert all(r.status == "ok" for r in records)
    assert all(r.ttt.fallback == "skip-ttt" and r.predict.unfit == 8 for r in records)
    assert summarize(records)["did_not_fit"] == 2
    assert submission["t1"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_shared_ttt_trains_one_lora_on_all_tasks_and_keeps_it(host, tokenizer, monkeypatch):
    import testtime.arc.solve as solve_module

    calls = []
    real = solve_module.train
    monkeypatch.setattr(solve_module, "train", lambda model, seqs, args, **kw: calls.append(len(seqs))
                        or real(model, seqs, args, **kw))
    cfg = quick_config()
    cfg.shared = True
    tasks = small_tasks()
    records, _ = run(Solver(host, tokenizer, cfg), tasks, None)
    assert len(calls) == 1 and calls[0] == 4 * len(tasks)  # one LoRA, every task's 4 sequences
    assert all(r.status == "ok" and r.ttt.shared for r in records)
    assert host.has_adapter  # the shared LoRA served every task's predictions
    host.drop()


def test_shared_then_task_bakes_the_shared_lora_in_then_trains_one_per_task(tokenizer, monkeypatch):
    import testtime.arc.solve as solve_module

    host = AdapterHost(learnable_model(len(tokenizer), seed=1), LoraArgs(r=8, alpha=16))  # its base changes
    weight = host.model.model.layers[0].self_attn.q_proj.base_layer.weight
    original = weight.detach().clone()
    calls = []
    real = solve_module.train
    monkeypatch.setattr(solve_module, "train", lambda model, seqs, args, **kw: calls.append(len(seqs))
                        or real(model, seqs, args, **kw))
    cfg = dataclasses.replace(quick_config(), shared_then_task=True)
    tasks = small_tasks()[:2]
    records, _ = run(Solver(host, tokenizer, cfg), tasks, None)
    assert calls == [4 * len(tasks), 4, 4]  # the shared LoRA on every task's sequences, then one per task
    assert not torch.equal(weight, original)  # the shared LoRA lives on in the base weights
    assert not host.has_adapter  # each task's own LoRA was dropped
    for record in records:
        assert record.status == "ok" and record.ttt.shared and record.ttt.steps == 2
        assert all(t.truth.bits_per_cell_before is not None for t in record.tests)
    with torch.no_grad():  # the truth's bits before: measured on the untouched base, before the shared LoRA
        fresh = Solver(AdapterHost(learnable_model(len(tokenizer), seed=1), LoraArgs(r=8, alpha=16)), tokenizer,
                       cfg)
        assert [t["bits_per_cell"] for t in fresh._truth(tasks[0])] == pytest.approx(
            [t.truth.bits_per_cell_before for t in records[0].tests])


def test_shared_then_task_with_shared_is_refused():
    from testtime.config import problems

    found = problems(SolveConfig(shared=True, shared_then_task=True))
    assert [p.field for p in found] == ["shared_then_task"] and "without --shared" in found[0].message
    assert problems(SolveConfig(shared_then_task=True)) == []


def test_records_hold_the_true_outputs_bits_before_and_after_ttt_and_its_rank(host, tokenizer):
    from testtime.arc.format import TokenCounter
    from testtime.arc.likelihood import truth_bits, truth_rows
    from testtime.arc.solve import task_seed

    tasks = small_tasks()[:2]
    cfg = quick_config()
    base, _ = run(Solver(host, tokenizer, dataclasses.replace(cfg, ttt=False)), tasks, None)
    tuned, _ = run(Solver(host, tokenizer, cfg), tasks, None)
    assert not host.has_adapter  # so host.model is the base model again
    for b, t, task in zip(base, tuned, tasks, strict=True):
        rows = truth_rows(tokenizer, task, counter=TokenCounter(tokenizer), max_len=cfg.infer.max_len,
                          seed=task_seed(cfg.seed, task.id))
        expected = truth_bits(host.model, task, rows)[0]
        before, after = b.tests[0].truth, t.tests[0].truth
        # without TTT there is one model: before == after == the base model's bits
        assert before.bits_per_cell_before == before.bits_per_cell_after
        assert before.bits_per_cell_before == pytest.approx(expected["bits_per_cell"])
        assert after.bits_per_cell_before == pytest.approx(expected["bits_per_cell"])
        assert after.bits_per_token_before == pytest.approx(expected["bits_per_token"])
        assert after.bits_per_cell_after < after.bits_per_cell_before  # TTT on the task's demos helps here
        for record in (b, t):
            test = record.tests[0]
            ranked = [test.candidates[k].grid for k in test.selection]
            truth = task.test[0].output.tolist()
            assert test.truth.rank == (ranked.index(truth) + 1 if truth in ranked else None)
    s = summarize(tuned)["truth"]
    cells = [r.tests[0].truth.bits_per_cell_after for r in tuned]
    assert s["bits_per_cell_after"] == pytest.approx(sum(cells) / len(cells))
    assert s["bits_per_cell_after"] < s["bits_per_cell_before"]


def test_select_poe_picks_attempts_by_the_product_of_experts_and_keeps_every_score(host, tokenizer, monkeypatch):
    import numpy as np

    import testtime.arc.solve as solve_module
    from testtime.arc.vote import Candidate

    real = solve_module.predict_task

    def with_planted(model, tok, task, args, **kw):  # the tiny model parses little: plant 3 predictions
        outcomes = real(model, tok, task, args, **kw)
        for o in outcomes:
            o.candidates += [Candidate(np.array(g, dtype=np.int8), "identity", "identity", -1.0, 4)
                             for g in ([[1]], [[2, 2]], [[1]])]
        return outcomes
    monkeypatch.setattr(solve_module, "predict_task", with_planted)
    cfg = quick_config()
    cfg.infer = dataclasses.replace(cfg.infer, select="poe")
    records, _ = run(Solver(host, tokenizer, cfg), small_tasks()[:2], None)
    seen = 0
    for record in records:
        for test in record.tests:
            poe = [c.poe for c in test.candidates]
            assert all(isinstance(p, float) and p <= 0 for p in poe)
            assert [poe[k] for k in test.selection] == sorted(poe, reverse=True)
            assert test.attempts == [test.candidates[k].grid for k in test.selection[:2]]
            for p in test.predictions:  # every parsed prediction points at its candidate
                assert p.transform in test.candidates[p.candidate].transforms
            assert sum(c.votes for c in test.candidates) == len(test.predictions)
            seen += len(poe) > 1
    assert seen  # some test input had several candidates to order
    plain, _ = run(Solver(host, tokenizer, quick_config()), small_tasks()[:1], None)
    assert all(c.poe is None for c in plain[0].tests[0].candidates)
