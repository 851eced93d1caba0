"""The `testtime` command driven end to end through typer's runner (no model weights needed)."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from testtime.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})
    return result


def _task_json(rows: int, cols: int, colour: int = 1) -> dict:
    grid = [[colour] * cols for _ in range(rows)]
    return {"train": [{"input": grid, "output": grid}, {"input": grid, "output": grid}],
            "test": [{"input": grid, "output": grid}]}


COMMANDS = [("arc", "datasets"), ("arc", "show"), ("arc", "stats"), ("arc", "pretrain"), ("arc", "solve"),
            ("arc", "score"), ("lm", "index"), ("lm", "eval")]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c))
def test_every_command_has_help_with_an_example(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Example: testtime " + " ".join(command) in " ".join(result.output.split())


def test_datasets_lists_names_and_counts():
    result = invoke("arc", "datasets")
    assert result.exit_code == 0
    line = next(ln for ln in result.output.splitlines() if "arc-agi-1/evaluation" in ln)
    assert re.findall(r"\d+", line.split("evaluation")[1])[:1] == ["400"]
    assert "arc-agi-2/evaluation" in result.output and "kaggle-2025/training" in result.output


def test_show_draws_a_task_from_a_file_and_from_a_dataset(tmp_path):
    path = tmp_path / "mytask.json"
    path.write_text(json.dumps(_task_json(3, 4, colour=7)))
    result = invoke("arc", "show", str(path))
    assert result.exit_code == 0
    assert "task mytask: 2 train, 1 test" in result.output
    assert "3x4" in result.output and "7 7 7 7" in result.output
    result = invoke("arc", "show", "arc-agi-1/evaluation/00576224")
    assert result.exit_code == 0 and "00576224" in result.output and "6x6" in result.output


def test_show_names_the_bad_file_and_field(tmp_path):
    bad = _task_json(2, 2)
    bad["train"][1]["output"] = [[1, 2], [3]]
    path = tmp_path / "ragged.json"
    path.write_text(json.dumps(bad))
    result = invoke("arc", "show", str(path))
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "ragged.json" in flat and "train[1].output" in flat and "ragged" in flat


def test_stats_token_figures_match_the_counter(tmp_path, tokenizer):
    from testtime.arc.format import TokenCounter
    from testtime.arc.task import load_tasks

    for name, (rows, cols) in {"small": (2, 3), "mid": (10, 10), "big": (30, 30)}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(_task_json(rows, cols)))
    (tmp_path / "broken.json").write_text("{not json")
    result = invoke("arc", "stats", str(tmp_path))
    assert result.exit_code == 0, result.output
    counter = TokenCounter(tokenizer)
    lengths = sorted(counter.sequence(t.train, t.test[0].input, t.test[0].output) for t in load_tasks(tmp_path).tasks)
    row = next(ln for ln in result.output.splitlines() if "tokens per task" in ln)
    assert [int(x.replace(",", "")) for x in re.findall(r"[\d,]+", row)] == lengths
    assert "3 tasks (1 bad)" in result.output
    over_2k = next(ln for ln in result.output.splitlines() if re.search(r"\b2,048\b", ln))
    assert re.findall(r"\d+(?:\.\d)?%|\b\d\b", over_2k.split("2,048")[1])[0] == str(sum(x > 2048 for x in lengths))


def test_unknown_source_is_a_clear_error():
    result = invoke("arc", "stats", "no-such-dataset")
    assert result.exit_code == 2
    assert "arc-agi-1/evaluation" in result.output  # the message lists the known names


def _write_tasks(folder, n: int = 3):
    folder.mkdir()
    for i in range(n):
        (folder / f"task{i}.json").write_text(json.dumps(_task_json(2, 2, colour=i + 1)))
    (folder / "broken.json").write_text('{"train": []}')
    return folder


def test_solve_writes_a_resumable_run_and_score_reads_it(tmp_path, tiny_model_dir):
    tasks = _write_tasks(tmp_path / "tasks")
    out = tmp_path / "run"
    args = ["arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--out", str(out), "--ttt-sequences", "2",
            "--max-new-tokens", "8", "--lora-rank", "2", "--lora-targets", "q_proj,v_proj",
            "--ttt-schedule", "constant"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "skipped bad task" in flat and "broken.json" in flat
    assert "summary" in flat and "pass@1" in flat and "oracle" in flat and "training tokens / s" in flat
    assert sorted(p.name for p in (out / "tasks").iterdir()) == ["task0.json", "task1.json", "task2.json"]
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "arc solve" and set(config) == {"command", "testtime", "settings", "options"}
    settings = config["settings"]  # the result-affecting settings: the tasks' source and the SolveConfig
    assert settings["source"] == str(tasks) and config["options"]["tasks"] is None  # every task of the source
    assert settings["config.data.n_sequences"] == 2
    assert settings["config.lora.target_modules"] == ["q_proj", "v_proj"]
    assert settings["config.train.schedule"] == "constant"
    assert config["options"]["ttt-sequences"] == 2 and config["options"]["lora-targets"] == "q_proj,v_proj"
    record = json.loads((out / "tasks" / "task1.json").read_text())
    assert record["status"] == "ok" and record["ttt"]["steps"] >= 1 and record["predict"]["prompts"] == 8
    submission = json.loads((out / "submission.json").read_text())
    assert list(submission) == ["task0", "task1", "task2"]
    assert all(set(entry[0]) == {"attempt_1", "attempt_2"} for entry in submission.values())

    again = invoke(*args)
    assert again.exit_code == 0
    assert again.output.count(": resumed") == 3
    assert json.loads((out / "submission.json").read_text()) == submission
    replay = invoke("arc", "solve", "--config", str(out / "config.json"))  # the run's config.json reproduces it
    assert replay.exit_code == 0, replay.output
    assert replay.output.count(": resumed") == 3
    assert json.loads((out / "submission.json").read_text()) == submission

    scored = invoke("arc", "score", str(out / "submission.json"), str(tasks))
    assert scored.exit_code == 0, scored.output
    assert "tasks scored" in scored.output and re.search(r"test outputs solved\s*│?\s*\d/3", scored.output)


def test_solve_reports_every_bad_flag_at_once(tmp_path):
    result = invoke("arc", "solve", "arc-agi-1/evaluation", "--ttt-format", "nope", "--lora-rank", "0",
                    "--ttt-schedule", "steep", "--lora-targets", ",")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    for flag in ("--ttt-format", "--lora-rank", "--ttt-schedule", "--lora-targets"):
        assert flag in flat
    none = invoke("arc", "solve", "arc-agi-1/evaluation", "--limit", "0")
    assert none.exit_code == 2 and "--limit must be at least 1" in " ".join(none.output.split())


def test_missing_model_is_a_clear_error(tmp_path):
    result = invoke("arc", "solve", "arc-agi-1/evaluation", "--limit", "1", "--model", str(tmp_path / "none.gguf"))
    assert result.exit_code == 2
    assert "does not exist" in " ".join(result.output.split())


def test_ctrl_c_exits_cleanly_and_says_how_to_resume(tmp_path, tiny_model_dir, monkeypatch):
    import testtime.arc.solve as solve_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(solve_module.ArcJob, "run", interrupted)  # Ctrl-C while the first task runs
    tasks = _write_tasks(tmp_path / "tasks")
    result = invoke("arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"))
    assert result.exit_code == 130
    assert "run the same command again to resume" in " ".join(result.output.split())
    assert list((tmp_path / "run" / "tasks").iterdir()) == []  # an interrupted task is not a failed record


def test_pretrain_writes_an_adapter_that_solve_merges(tmp_path, tiny_model_dir):
    tasks = _write_tasks(tmp_path / "tasks", n=6)
    out = tmp_path / "pt"
    args = ["arc", "pretrain", str(tasks), "--model", str(tiny_model_dir), "--out", str(out), "--steps", "3",
            "--warmup", "1", "--grad-accum", "1", "--val-tasks", "2", "--val-sequences", "2", "--val-every", "2",
            "--checkpoint-every", "2", "--lora-rank", "2", "--max-len", "200"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "6 tasks" in flat and "validation loss before -> after" in flat
    assert "step 2/3" in flat and "checkpoint step-000002" in flat
    card = json.loads((out / "card.json").read_text())
    assert card["steps"] == 3 and card["config"]["lora"]["r"] == 2
    assert card["data"]["sources"][str(tasks)] == {"tasks": 6, "examples": 18, "bad_examples": 1,
                                                   "evaluation_tasks_left_out": 0}  # broken.json counted
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000003"]

    again = invoke(*args)  # finished: resumes at the last checkpoint and only rewrites the adapter
    assert again.exit_code == 0 and json.loads((out / "card.json").read_text())["steps"] == 3
    changed = invoke(*args[:-2], "--max-len", "300")
    assert changed.exit_code == 2 and "--restart" in " ".join(changed.output.split())

    solved = invoke("arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--adapter", str(out), "--no-ttt",
                    "--max-new-tokens", "4", "--limit", "1")
    assert solved.exit_code == 0, solved.output
    assert f"adapter {out}" in "".join(solved.output.split("\n"))


def test_solve_adapter_flags_are_checked(tmp_path):
    both = invoke("arc", "solve", "arc-agi-1/evaluation", "--adapter", str(tmp_path), "--no-adapter")
    assert both.exit_code == 2 and "contradict" in both.output
    missing = invoke("arc", "solve", "arc-agi-1/evaluation", "--adapter", str(tmp_path))
    assert missing.exit_code == 2 and "adapter_config.json" in " ".join(missing.output.split())


def test_the_shipped_adapter_is_the_default_for_its_model(tmp_path, monkeypatch):
    import testtime.arc.pretrain as pretrain

    monkeypatch.setattr(pretrain, "SHIPPED_ADAPTERS", tmp_path)
    assert pretrain.default_adapter("embedded") is None
    (tmp_path / "smollm2-135m-arc").mkdir()
    (tmp_path / "smollm2-135m-arc" / "adapter_config.json").write_text("{}")
    assert pretrain.default_adapter("embedded") == tmp_path / "smollm2-135m-arc"
    assert pretrain.default_adapter("HuggingFaceTB/SmolLM2-360M") is None
