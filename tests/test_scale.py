"""`--ray`: the same run directory as in-process, retries after a dead worker, failures, resume.

One local Ray instance (2 CPUs) serves the whole module; each command starts its own 2 actors
on it with the tiny model. Faults are injected through the environment variables that
`testtime.scale` reads, never by patching code (the workers are other processes).
"""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from typer.testing import CliRunner

from testtime.cli import app
from testtime.arc.task import Task
from testtime.scale import FAULT_DIE_FIRST, FAULT_DIE_ON, FAULT_RAISE_ON, INSTALL, ScaleArgs, check_flags, longest_first

TASKS = ("task0", "task1", "task2")


def invoke(*args: str, **env: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200", **env})


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray", reason=f"the --ray tests need the optional extra: {INSTALL}")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for i, task_id in enumerate(TASKS):  # task i has (i + 2)^2 cells: Ray runs them largest first
        grid = [[(r + c + i) % 10 for c in range(i + 2)] for r in range(i + 2)]
        task = {"train": [{"input": grid, "output": grid}] * 2, "test": [{"input": grid, "output": grid}]}
        (folder / f"{task_id}.json").write_text(json.dumps(task))
    return folder


def solve_args(tasks_dir, model_dir, out) -> list[str]:
    return ["arc", "solve", str(tasks_dir), "--model", str(model_dir), "--out", str(out), "--ttt-sequences", "2",
            "--max-new-tokens", "8", "--lora-rank", "2", "--lora-targets", "q_proj,v_proj", "--ttt-schedule",
            "constant", "--seed", "3"]


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, tasks_dir, tiny_model_dir):
    """The reference: the same tasks solved in-process with 1 thread, like each Ray worker."""
    out = tmp_path_factory.mktemp("in-process")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke(*solve_args(tasks_dir, tiny_model_dir, out))
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return out


def task_record(out, task_id: str) -> dict:
    return json.loads((out / "tasks" / f"{task_id}.json").read_text())


def answers(record: dict) -> list:
    """What a task's record says about its answers (timings differ run to run)."""
    return [{k: t[k] for k in ("attempts", "candidates", "correct")} for t in record["tests"]]


def submission(out) -> dict:
    return json.loads((out / "submission.json").read_text())


@pytest.mark.slow
def test_ray_run_matches_the_in_process_run(ray_local, tmp_path, tasks_dir, tiny_model_dir, in_process):
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "2 workers x 1 threads" in flat and "3 ok, 0 failed, 0 retried" in flat
    assert submission(tmp_path / "ray") == submission(in_process)
    for task_id in TASKS:
        record = task_record(tmp_path / "ray", task_id)
        assert record["status"] == "ok" and answers(record) == answers(task_record(in_process, task_id))
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    assert config == json.loads((in_process / "config.json").read_text())


@pytest.mark.slow
def test_a_dead_worker_is_replaced_and_a_raising_task_is_recorded_failed(ray_local, tmp_path, tasks_dir,
                                                                         tiny_model_dir, in_process):
    marker = tmp_path / "died"
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray",
                    **{FAULT_DIE_FIRST: str(marker), FAULT_RAISE_ON: "task1"})
    assert result.exit_code == 0, result.output
    assert marker.exists()  # a worker did die, exactly once (the marker stops the others)
    flat = " ".join(result.output.split())
    assert flat.count("worker died (") == 1 and "retry 1/2" in flat and "2 ok, 1 failed, 1 retried" in flat
    failed = task_record(tmp_path / "ray", "task1")
    assert failed["status"] == "failed" and "fault injected" in failed["error"]
    assert failed["tests"][0]["correct"] == {"attempt_1": False, "any_attempt": False, "oracle": False}
    for task_id in ("task0", "task2"):  # nothing lost: the retried task's answers are the in-process ones
        assert answers(task_record(tmp_path / "ray", task_id)) == answers(task_record(in_process, task_id))
    assert list(submission(tmp_path / "ray")) == list(TASKS)


@pytest.mark.slow
def test_a_task_whose_worker_keeps_dying_fails_after_max_retries(ray_local, tmp_path, tasks_dir, tiny_model_dir):
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray", "--max-retries", "1",
                    **{FAULT_DIE_ON: "task2"})
    assert result.exit_code == 0, result.output
    record = task_record(tmp_path / "ray", "task2")
    assert record["status"] == "failed" and record["error"].startswith("worker died 2 times")
    assert [task_record(tmp_path / "ray", t)["status"] for t in ("task0", "task1")] == ["ok", "ok"]
    assert "2 ok, 1 failed, 1 retried" in " ".join(result.output.split())


@pytest.mark.slow
def test_an_interrupted_run_resumes_on_ray_and_back_without_recomputing(ray_local, tmp_path, tasks_dir,
                                                                        tiny_model_dir, in_process):
    out = tmp_path / "run"
    shutil.copytree(in_process, out)
    (out / "tasks" / "task1.json").unlink()  # as if Ctrl-C came during task1
    (out / "submission.json").unlink()
    kept = {t: (out / "tasks" / f"{t}.json").stat().st_mtime_ns for t in ("task0", "task2")}
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, out), "--ray")
    assert result.exit_code == 0, result.output
    assert result.output.count(": resumed") == 2 and "1 ok, 0 failed" in " ".join(result.output.split())
    assert {t: (out / "tasks" / f"{t}.json").stat().st_mtime_ns for t in kept} == kept
    assert answers(task_record(out, "task1")) == answers(task_record(in_process, "task1"))
    assert submission(out) == submission(in_process)

    (out / "tasks" / "task0.json").unlink()  # and a Ray run resumes in-process
    again = invoke(*solve_args(tasks_dir, tiny_model_dir, out))
    assert again.exit_code == 0 and again.output.count(": resumed") == 2
    assert submission(out) == submission(in_process)


@pytest.mark.slow
def test_lm_eval_on_ray_writes_the_in_process_results(ray_local, tmp_path, tiny_model_dir):
    memory = tmp_path / "memory.jsonl"
    memory.write_text("\n".join(json.dumps({"text": t}) for t in ["the quick brown fox jumps"] * 3 +
                                ["zzz yyy xxx", "mmm nnn ooo", "kkk jjj iii"]))
    index = invoke("lm", "index", str(memory), "--out", str(tmp_path / "index"), "--embedder", "lm", "--model",
                   str(tiny_model_dir), "--chunk-tokens", "32")
    assert index.exit_code == 0, index.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "domain": "d", "prompt": p, "continuation": " over the dog"})
                                 for i, p in (("a", "the quick brown"), ("b", "zzz"), ("c", "kkk"))))

    def run(out, *extra):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return invoke("lm", "eval", "--prompts", str(prompts), "--index", str(tmp_path / "index"), "--model",
                          str(tiny_model_dir), "--select", "sift", "--steps", "2", "--k", "4", "--lora-rank", "2",
                          "--out", str(out), *extra, **({FAULT_RAISE_ON: "b"} if extra else {}))
        finally:
            torch.set_num_threads(threads)

    local, remote = run(tmp_path / "local"), run(tmp_path / "ray", "--ray")
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert "2 scored, 1 failed" in " ".join(remote.output.split())
    for pid in ("a", "c"):
        mine = json.loads((tmp_path / "ray" / "results" / "sift" / f"{pid}.json").read_text())
        theirs = json.loads((tmp_path / "local" / "results" / "sift" / f"{pid}.json").read_text())
        assert mine["picks"] == theirs["picks"] and mine["bits"] == pytest.approx(theirs["bits"], rel=1e-5)
    assert not (tmp_path / "ray" / "results" / "sift" / "b.json").exists()  # a failure is not a result


@pytest.mark.slow
def test_a_model_that_cannot_load_is_one_clear_error(ray_local, tmp_path, tasks_dir):
    result = invoke(*solve_args(tasks_dir, tmp_path / "none.gguf", tmp_path / "ray"), "--ray")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "Ray workers could not start" in flat and "none.gguf does not exist" in flat
    assert not (tmp_path / "ray" / "tasks").exists()


def test_ray_flags_are_checked_together_and_ignored_without_ray(monkeypatch):
    problems, warning = check_flags(True, ScaleArgs(workers=0, threads_per_worker=0, max_retries=-1))
    assert [p.split()[0] for p in problems[:3]] == ["--workers", "--threads-per-worker", "--max-retries"]
    assert check_flags(False, ScaleArgs(workers=4))[1].endswith("ignored without --ray")
    assert check_flags(False, ScaleArgs()) == ([], None)
    result = invoke("arc", "solve", "arc-agi-1/evaluation", "--ray", "--shared", "--workers", "0")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "--shared" in flat and "--workers must be at least 1" in flat

    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    missing = invoke("lm", "eval", "--prompts", "p.jsonl", "--select", "none", "--ray")
    assert missing.exit_code == 2 and f"`{INSTALL}`" in " ".join(missing.output.split())


def test_tasks_go_to_the_pool_largest_first_counting_what_the_prompt_holds():
    def task(task_id: str, demo: int, test_in: int, test_out: int) -> Task:
        def grid(n: int) -> list:
            return [[1] * n for _ in range(n)]
        return Task.from_json({"train": [{"input": grid(demo), "output": grid(demo)}],
                               "test": [{"input": grid(test_in), "output": grid(test_out)}]}, task_id=task_id)

    small, big, tie = task("small", 2, 2, 2), task("big", 5, 3, 3), task("tie", 2, 2, 2)
    # a large hidden answer is not in the prompt: it does not make a task run longer
    answer_only = task("answer-only", 2, 2, 30)
    assert [t.id for t in longest_first([small, big, answer_only, tie])] == ["big", "small", "answer-only", "tie"]
