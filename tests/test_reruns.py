"""One run-directory policy for every command, in-process (the --ray side is in tests/jobs/test_ray_pool.py).

A rerun with another result-affecting setting is refused, naming the setting with its old and
new value and the two ways out; `--restart` and a new `--out` work; a failed item is recorded,
skipped on rerun and run again with `--retry-failed`; `--config` reproduces a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli_helpers import flat, invoke  # tests/ is on sys.path under pytest
from faults import faults
from helpers import LetterEmbedder, letter_index, rewrite_settings


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for i in range(2):
        grid = [[(r + c + i) % 10 for c in range(2)] for r in range(2)]
        (folder / f"t{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                                        "test": [{"input": grid, "output": grid}]}))
    return folder


def solve(tasks_dir, model, out, *extra, **env):
    return invoke("arc", "solve", str(tasks_dir), "--model", str(model), "--out", str(out), "--ttt-sequences", "2",
                  "--max-new-tokens", "4", "--lora-rank", "2", "--lora-targets", "q_proj", *extra, **env)


def record(out: Path, folder: str, item: str) -> dict:
    return json.loads((out / folder / f"{item}.json").read_text())


@pytest.mark.slow
def test_arc_solve_refuses_changed_settings_and_restart_or_new_out_work(tmp_path, tasks_dir, tiny_model_dir):
    out = tmp_path / "run"
    assert solve(tasks_dir, tiny_model_dir, out).exit_code == 0
    first = record(out, "tasks", "t0")
    changed = solve(tasks_dir, tiny_model_dir, out, "--seed", "5", "--ttt-lr", "0.001")
    assert changed.exit_code == 2
    text = flat(changed)
    assert "--seed: 0 -> 5" in text and "--ttt-lr: 0.0001 -> 0.001" in text
    assert "--out NEW_DIR" in text and "--restart" in text
    assert record(out, "tasks", "t0") == first  # nothing was touched

    # settings that cannot change results may differ; so may the selection of tasks
    same = solve(tasks_dir, tiny_model_dir, out, "--workers", "4", "--limit", "1")
    assert same.exit_code == 0 and ": resumed" in same.output

    other = solve(tasks_dir, tiny_model_dir, tmp_path / "other", "--seed", "5")
    assert other.exit_code == 0 and json.loads((tmp_path / "other" / "config.json").read_text())[
        "settings"]["config.seed"] == 5
    restarted = solve(tasks_dir, tiny_model_dir, out, "--seed", "5", "--restart")
    assert restarted.exit_code == 0 and ": resumed" not in restarted.output
    assert json.loads((out / "config.json").read_text())["settings"]["config.seed"] == 5


def as_if_written_before(out: Path, key: str) -> None:
    """Rewrite run directory `out` as a testtime that did not have setting `key` yet wrote it: the key left out
    of config.json, every record sealed with the fingerprint of those settings."""
    rewrite_settings(out, "tasks", lambda settings: {k: v for k, v in settings.items() if k != key})


@pytest.mark.slow
def test_a_run_made_before_a_setting_existed_resumes_as_if_at_its_default(tmp_path, tasks_dir, tiny_model_dir):
    out = tmp_path / "run"
    assert solve(tasks_dir, tiny_model_dir, out, "--no-ttt").exit_code == 0
    as_if_written_before(out, "config.shared_then_task")
    again = solve(tasks_dir, tiny_model_dir, out, "--no-ttt")
    assert again.exit_code == 0 and flat(again).count(": resumed") == 2, flat(again)
    assert json.loads((out / "config.json").read_text())["settings"]["config.shared_then_task"] is False
    as_if_written_before(out, "config.shared_then_task")
    changed = solve(tasks_dir, tiny_model_dir, out, "--shared-then-task")
    assert changed.exit_code == 2 and "--shared-then-task: False -> True" in flat(changed)


@pytest.mark.slow
def test_arc_solve_failed_task_is_recorded_skipped_and_retried(tmp_path, tasks_dir, tiny_model_dir):
    out = tmp_path / "run"
    result = solve(tasks_dir, tiny_model_dir, out, faults=faults(raise_on=["t1"]))
    assert result.exit_code == 0, result.output
    failed = record(out, "tasks", "t1")
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: fault injected on t1"
    assert "Traceback" in failed["traceback"] and failed["tests"][0]["correct"]["any_attempt"] is False
    assert "1 ok, 1 failed" in flat(result)
    json.loads((out / "submission.json").read_text())["t1"]  # still submitted, as Kaggle requires

    # a rerun skips it: the hook would now fail every task that runs
    skipped = solve(tasks_dir, tiny_model_dir, out, faults=faults(raise_on=["t0", "t1"]))
    assert skipped.exit_code == 0 and "t1: failed earlier" in flat(skipped)
    assert record(out, "tasks", "t1") == failed and record(out, "tasks", "t0")["status"] == "ok"

    retried = solve(tasks_dir, tiny_model_dir, out, "--retry-failed")
    assert retried.exit_code == 0 and record(out, "tasks", "t1")["status"] == "ok"
    assert "t0: resumed" in flat(retried)  # only the failed one ran again


@pytest.mark.slow
def test_every_task_failing_exits_nonzero(tmp_path, tasks_dir, tiny_model_dir):
    result = solve(tasks_dir, tiny_model_dir, tmp_path / "run", faults=faults(raise_on=["t0", "t1"]))
    assert result.exit_code == 1 and "every task failed" in flat(result)


@pytest.mark.slow
def test_a_run_config_reproduces_the_run_and_toml_sets_options(tmp_path, tasks_dir, tiny_model_dir):
    out = tmp_path / "run"
    assert solve(tasks_dir, tiny_model_dir, out, "--seed", "2").exit_code == 0
    again = invoke("arc", "solve", "--config", str(out / "config.json"), "--out", str(tmp_path / "copy"))
    assert again.exit_code == 0, again.output
    assert (json.loads((tmp_path / "copy" / "submission.json").read_text())
            == json.loads((out / "submission.json").read_text()))
    assert (json.loads((tmp_path / "copy" / "config.json").read_text())["settings"]
            == json.loads((out / "config.json").read_text())["settings"])

    toml = tmp_path / "run.toml"
    toml.write_text(f'source = "{tasks_dir}"\nmodel = "{tiny_model_dir}"\nttt = false\nmax-new-tokens = 4\n'
                    f'limit = 1\nseed = 7\n')
    from_toml = invoke("arc", "solve", "--config", str(toml), "--seed", "8", "--out", str(tmp_path / "toml"))
    assert from_toml.exit_code == 0, from_toml.output
    settings = json.loads((tmp_path / "toml" / "config.json").read_text())["settings"]
    assert settings["config.ttt"] is False and settings["config.infer.max_new_tokens"] == 4
    assert settings["config.seed"] == 8  # the flag wins over the file

    toml.write_text('no-such-option = 1\n')
    bad = invoke("arc", "solve", "--config", str(toml))
    assert bad.exit_code == 2 and "no option no-such-option" in flat(bad)


@pytest.fixture(scope="module")
def memory_index(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("memory")
    letter_index(folder, tokenizer)
    prompts = folder / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "domain": "d", "prompt": p, "continuation": " over it"})
                                 for i, p in (("a", "the quick brown"), ("b", "zzz"))))
    return folder / "index", prompts


def lm_eval(index_and_prompts, model, out, *extra, **env):
    index, prompts = index_and_prompts
    return invoke("lm", "eval", "--prompts", str(prompts), "--index", str(index), "--model", str(model),
                  "--select", "sift", "--steps", "2", "--k", "4", "--lora-rank", "2", "--out", str(out), *extra,
                  **env)


@pytest.mark.slow
def test_lm_eval_refuses_changed_settings_and_keeps_the_failure_policy(tmp_path, memory_index, tiny_model_dir,
                                                                        monkeypatch):
    import testtime.lm.embed as embed

    monkeypatch.setattr(embed, "load_embedder", lambda *a, **k: LetterEmbedder())
    out = tmp_path / "run"
    result = lm_eval(memory_index, tiny_model_dir, out, faults=faults(raise_on=["b"]))
    assert result.exit_code == 0, result.output
    failed = record(out / "sift", "results", "b")
    assert failed["status"] == "failed" and "fault injected on b" in failed["error"]

    changed = lm_eval(memory_index, tiny_model_dir, out, "--lam", "0.5", "--lora-rank", "4")
    assert changed.exit_code == 2
    assert "--lam: 0.01 -> 0.5" in flat(changed) and "--lora-rank: 2 -> 4" in flat(changed)

    skipped = lm_eval(memory_index, tiny_model_dir, out, faults=faults(raise_on=["a", "b"]))
    assert skipped.exit_code == 0 and record(out / "sift", "results", "b") == failed
    retried = lm_eval(memory_index, tiny_model_dir, out, "--retry-failed")
    assert retried.exit_code == 0 and record(out / "sift", "results", "b")["status"] == "ok"

    # another selector is its own run directory beside it; --restart and a new --out work
    none = invoke("lm", "eval", "--prompts", str(memory_index[1]), "--model", str(tiny_model_dir), "--select",
                  "none", "--out", str(out))
    assert none.exit_code == 0 and (out / "none" / "results" / "a.json").is_file()
    assert lm_eval(memory_index, tiny_model_dir, out, "--lam", "0.5", "--restart").exit_code == 0
    assert lm_eval(memory_index, tiny_model_dir, tmp_path / "new", "--lam", "0.5").exit_code == 0


@pytest.mark.slow
def test_arc_pretrain_refuses_changed_settings_and_restart_or_new_out_work(tmp_path, tiny_model_dir):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for i in range(4):
        grid = [[(r + c + i) % 10 for c in range(2)] for r in range(2)]
        (tasks / f"p{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 3,
                                                       "test": [{"input": grid, "output": grid}]}))
    out = tmp_path / "pt"
    args = ["arc", "pretrain", str(tasks), "--model", str(tiny_model_dir), "--steps", "2", "--warmup", "0",
            "--grad-accum", "1", "--val-tasks", "1", "--val-sequences", "1", "--val-every", "2",
            "--checkpoint-every", "2", "--lora-rank", "2", "--max-len", "200"]
    assert invoke(*args, "--out", str(out)).exit_code == 0
    changed = invoke(*args, "--out", str(out), "--lr", "0.001")
    assert changed.exit_code == 2
    assert "--lr: 0.0002 -> 0.001" in flat(changed) and "--restart" in flat(changed)
    restarted = invoke(*args, "--out", str(out), "--lr", "0.001", "--restart")
    assert restarted.exit_code == 0 and json.loads((out / "card.json").read_text())["config"]["train"]["lr"] == 0.001
    assert invoke(*args, "--out", str(tmp_path / "pt2"), "--lr", "0.003").exit_code == 0
