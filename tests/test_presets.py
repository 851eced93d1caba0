"""`arc solve --preset paper|small` (named settings below --config and flags, printed and saved), and the
flags that only reach the config: augmentation switches, gradient checkpointing, DFS sampling."""

from __future__ import annotations

import json

import pytest

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from testtime.cli.solve import PRESETS


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    grid = [[1, 2], [3, 4]]
    (folder / "t0.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 3,
                                                 "test": [{"input": grid, "output": grid}]}))
    return folder


def solve(tasks_dir, model_dir, out, *flags: str):
    result = invoke("arc", "solve", str(tasks_dir), "--model", str(model_dir), "--no-ttt", "--max-new-tokens", "4",
                    "--out", str(out), *flags)
    assert result.exit_code == 0, result.output
    return result, json.loads((out / "config.json").read_text())


def test_small_is_the_defaults_and_paper_overrides_real_settings():
    from testtime.arc.settings import SolveConfig
    from testtime.cli.solve import OPTIONS
    from testtime.config import as_json, flatten

    assert PRESETS["small"] == {}  # today's CPU budget: the dataclass defaults, not a copy of them
    defaults = flatten(as_json(SolveConfig()))
    paper = {k: list(v) if isinstance(v, tuple) else v for k, v in PRESETS["paper"].items()}
    assert set(paper) <= {o.path for o in OPTIONS}  # every key is a setting with a flag
    assert {k for k in paper if paper[k] != defaults[k]} >= {
        "lora.r", "lora.alpha", "lora.target_modules", "train.lr", "train.epochs", "train.batch_size",
        "train.weight_decay", "data.n_sequences", "data.leave_two_out", "data.augmentations", "data.loss_on",
        "infer.orders", "infer.prompts"}


@pytest.mark.slow
def test_paper_preset_is_resolved_printed_saved_and_flags_override_it(tmp_path, tasks_dir, tiny_model_dir):
    result, config = solve(tasks_dir, tiny_model_dir, tmp_path / "paper", "--preset", "paper", "--ttt-lr", "0.001")
    s = config["settings"]
    assert (s["config.lora.r"], s["config.lora.alpha"], s["config.lora.target_modules"]) == (
        128, 16, ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"])
    assert (s["config.train.epochs"], s["config.train.batch_size"], s["config.train.weight_decay"]) == (2, 2, 0.01)
    assert s["config.train.lr"] == 0.001  # the flag beats the preset's 5e-5
    assert (s["config.data.n_sequences"], s["config.data.leave_two_out"], s["config.data.loss_on"]) == (
        250, True, "outputs")
    assert s["config.data.augmentations"] == ["upscale", "tile"]
    assert (s["config.infer.orders"], s["config.infer.prompts"]) == (2, "leave-one-out")
    assert config["options"]["preset"] == "paper" and config["options"]["lora-rank"] == 128
    text = " ".join(result.output.split())
    assert "preset paper: lora-rank 128" in text and "ttt-lr 0.001 (overridden; preset 5e-05)" in text
    record = json.loads((tmp_path / "paper" / "tasks" / "t0.json").read_text())
    # 8 symmetries x 3 left-out demos x 2 orders of the other two, not one prompt per symmetry
    assert record["predict"]["prompts"] == 48

    _, plain = solve(tasks_dir, tiny_model_dir, tmp_path / "plain")
    assert (plain["settings"]["config.train.gradient_checkpointing"], plain["settings"]["config.data.colors"]) == (
        False, True)
    _, other = solve(tasks_dir, tiny_model_dir, tmp_path / "other", "--ttt-gradient-checkpointing",
                     "--no-ttt-geometric", "--no-ttt-colors", "--no-ttt-demo-order")
    assert [other["settings"][f"config.{k}"] for k in ("train.gradient_checkpointing", "data.geometric",
                                                       "data.colors", "data.demo_order")] == [True, False, False, False]
    _, small = solve(tasks_dir, tiny_model_dir, tmp_path / "small", "--preset", "small")
    assert small["settings"] == plain["settings"]


@pytest.mark.slow
@pytest.mark.parametrize("order", ["preset-first", "config-first"])
def test_a_config_file_beats_the_preset_in_either_order(tmp_path, tasks_dir, tiny_model_dir, order):
    toml = tmp_path / "run.toml"
    toml.write_text("ttt-sequences = 7\norders = 1\n")
    flags = [["--preset", "paper"], ["--config", str(toml)]]
    _, config = solve(tasks_dir, tiny_model_dir, tmp_path / "run", *sum(flags if order == "preset-first"
                                                                           else flags[::-1], []))
    s = config["settings"]
    assert (s["config.data.n_sequences"], s["config.infer.orders"]) == (7, 1)  # from the file
    assert s["config.lora.r"] == 128 and s["config.infer.prompts"] == "leave-one-out"  # from the preset


def test_an_unknown_preset_names_the_choices():
    result = invoke("arc", "solve", "somewhere", "--preset", "huge")
    assert result.exit_code == 2
    assert "no preset 'huge'; choose one of paper, small" in " ".join(result.output.split())


@pytest.mark.slow
def test_sampling_flags_reach_the_config_and_a_bad_threshold_names_the_flag(tmp_path, tasks_dir, tiny_model_dir):
    _, config = solve(tasks_dir, tiny_model_dir, tmp_path / "dfs", "--sampling", "dfs", "--min-prob", "0.3")
    assert (config["settings"]["config.infer.sampling"], config["settings"]["config.infer.min_prob"]) == ("dfs", 0.3)
    record = json.loads((tmp_path / "dfs" / "tasks" / "t0.json").read_text())
    assert record["status"] == "ok"
    bad = invoke("arc", "solve", str(tasks_dir), "--model", str(tiny_model_dir), "--sampling", "dfs",
                 "--min-prob", "0")
    assert bad.exit_code == 2 and "--min-prob" in " ".join(bad.output.split())


def test_bad_prompts_score_views_and_size_probability_each_name_their_flag(tasks_dir):
    bad = invoke("arc", "solve", str(tasks_dir), "--no-ttt", "--infer-prompts", "some", "--score-views", "-1",
                 "--ttt-size-prob", "1.5")
    text = " ".join(bad.output.split())
    assert bad.exit_code == 2
    assert "--infer-prompts must be one of full, leave-one-out, both" in text
    assert "--score-views must be at least 0" in text and "--ttt-size-prob must be in [0, 1]" in text


def test_select_is_the_old_name_of_rank_and_warns(tmp_path, tasks_dir, tiny_model_dir):
    result, config = solve(tasks_dir, tiny_model_dir, tmp_path / "old", "--select", "poe")
    assert "--select is now --rank" in " ".join(result.output.split())
    assert config["settings"]["config.infer.select"] == "poe"
    result, config = solve(tasks_dir, tiny_model_dir, tmp_path / "new", "--rank", "vote+poe")
    assert "--select" not in result.output and config["settings"]["config.infer.select"] == "vote+poe"
