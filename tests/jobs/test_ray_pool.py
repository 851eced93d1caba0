"""`--ray`: the same run directory as in-process, retries after a dead worker, failures, resume.

One local Ray instance (2 CPUs) serves the whole module; each command starts its own actors on
it with the tiny model. Faults fire inside the job's own `run` in the worker that runs the item:
tests/faults.py wraps the job the executor is given, and the wrapped job travels to every worker
pickled (by value), as any job does. The workers are other processes, so nothing is patched there.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

import pytest
import torch

from cli_helpers import flat, invoke  # tests/ is on sys.path under pytest
from faults import faults
from testtime.arc.format import task_tokens
from testtime.arc.settings import SolveConfig
from testtime.arc.solve import ArcJob, task_cells
from testtime.arc.task import Task
from testtime.cli.common import runtime_flags, scale_of, scale_options
from testtime.jobs import INSTALL, OK, RayExecutor, ScaleArgs

TASKS = ("task0", "task1", "task2")
RUNTIME = runtime_flags(scale_options())


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


def one_thread(fn, *args, **kwargs):
    """Run in-process with 1 torch thread, like each Ray worker (so results match bit for bit)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args, **kwargs)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, tasks_dir, tiny_model_dir):
    """The reference: the same tasks solved in-process with 1 thread, like each Ray worker."""
    out = tmp_path_factory.mktemp("in-process")
    result = one_thread(invoke, *solve_args(tasks_dir, tiny_model_dir, out))
    assert result.exit_code == 0, result.output
    return out


def task_file(out, task_id: str) -> Path:
    return out / "tasks" / f"{task_id}.json"


def task_record(out, task_id: str) -> dict:
    return json.loads(task_file(out, task_id).read_text())


def answers(record: dict) -> list:
    """What a task's record says about its answers (timings differ run to run)."""
    return [{k: t[k] for k in ("attempts", "candidates", "correct")} for t in record["tests"]]


def submission(out) -> dict:
    return json.loads((out / "submission.json").read_text())


def mtimes(files) -> dict:
    return {f: f.stat().st_mtime_ns for f in files}


@pytest.mark.slow
def test_ray_run_matches_the_in_process_run(ray_local, tmp_path, tasks_dir, tiny_model_dir, in_process):
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert "2 workers x 1 threads" in flat(result) and "3 ok, 0 failed, 0 retried" in flat(result)
    assert submission(tmp_path / "ray") == submission(in_process)
    for task_id in TASKS:
        record = task_record(tmp_path / "ray", task_id)
        assert record["status"] == "ok" and answers(record) == answers(task_record(in_process, task_id))
    config = json.loads((tmp_path / "ray" / "config.json").read_text())
    reference = json.loads((in_process / "config.json").read_text())
    assert config["command"] == reference["command"] and config["settings"] == reference["settings"]

    def same(options: dict) -> dict:  # what may differ: where items ran (Ray flags) and the --out directory
        return {k: v for k, v in options.items() if k not in RUNTIME and k != "out"}
    assert same(config["options"]) == same(reference["options"])
    assert config["options"]["ray"] is True and reference["options"]["ray"] is False


@pytest.mark.slow
def test_a_dead_worker_is_replaced_and_a_raising_task_is_recorded_failed(ray_local, tmp_path, tasks_dir,
                                                                         tiny_model_dir, in_process):
    marker = tmp_path / "died"
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray",
                    faults=faults(die_first=str(marker), raise_on=["task1"]))
    assert result.exit_code == 0, result.output
    assert marker.exists()  # a worker did die, exactly once (the marker stops the others)
    assert flat(result).count("worker died (") == 1 and "retry 1/2" in flat(result)
    assert "2 ok, 1 failed, 1 retried" in flat(result)
    failed = task_record(tmp_path / "ray", "task1")
    assert failed["status"] == "failed" and "fault injected on task1" in failed["error"] and failed["traceback"]
    assert failed["tests"][0]["correct"] == {"attempt_1": False, "any_attempt": False, "oracle": False}
    for task_id in ("task0", "task2"):  # nothing lost: the retried task's answers are the in-process ones
        assert answers(task_record(tmp_path / "ray", task_id)) == answers(task_record(in_process, task_id))
    assert list(submission(tmp_path / "ray")) == list(TASKS)


@pytest.mark.slow
def test_a_task_whose_worker_keeps_dying_fails_after_max_retries(ray_local, tmp_path, tasks_dir, tiny_model_dir):
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "ray"), "--ray", "--max-retries", "1",
                    faults=faults(die_on=["task2"]))
    assert result.exit_code == 0, result.output
    record = task_record(tmp_path / "ray", "task2")
    assert record["status"] == "failed" and record["error"].startswith("worker died 2 times")
    assert [task_record(tmp_path / "ray", t)["status"] for t in ("task0", "task1")] == ["ok", "ok"]
    assert "2 ok, 1 failed, 1 retried" in flat(result)


@pytest.mark.slow
def test_a_raising_task_is_saved_failed_skipped_on_a_rerun_and_retried_on_request(ray_local, tmp_path, tasks_dir,
                                                                                 tiny_model_dir, in_process):
    out = tmp_path / "run"
    args = [*solve_args(tasks_dir, tiny_model_dir, out), "--tasks", "task0,task1", "--ray"]
    first = invoke(*args, faults=faults(raise_on=["task1"]))
    assert first.exit_code == 0, first.output  # not every task failed
    assert "1 ok, 1 failed" in flat(first)
    failed = task_record(out, "task1")
    assert failed["status"] == "failed" and "fault injected on task1" in failed["error"]
    before = mtimes([task_file(out, "task0"), task_file(out, "task1")])
    saved = task_file(out, "task1").read_text()

    # a rerun skips the failed task: were it run again, its worker would die (and the record change)
    skipped = invoke(*args, faults=faults(die_on=["task0", "task1"]))
    assert skipped.exit_code == 0, skipped.output
    assert "task1: failed earlier (skipped; --retry-failed runs it again)" in flat(skipped)
    assert "task0: resumed" in flat(skipped) and "worker died" not in flat(skipped)
    assert mtimes(before) == before and task_file(out, "task1").read_text() == saved

    retried = invoke(*args, "--retry-failed")  # the fault is gone: the task now succeeds
    assert retried.exit_code == 0, retried.output
    assert "task0: resumed" in flat(retried) and "1 ok, 0 failed" in flat(retried)
    record = task_record(out, "task1")
    assert record["status"] == "ok" and answers(record) == answers(task_record(in_process, "task1"))
    assert task_file(out, "task0").stat().st_mtime_ns == before[task_file(out, "task0")]  # not recomputed


@pytest.mark.slow
def test_an_interrupted_run_resumes_on_ray_and_back_without_recomputing(ray_local, tmp_path, tasks_dir,
                                                                        tiny_model_dir, in_process):
    out = tmp_path / "run"
    shutil.copytree(in_process, out)
    task_file(out, "task1").unlink()  # as if Ctrl-C came during task1
    (out / "submission.json").unlink()
    kept = mtimes([task_file(out, t) for t in ("task0", "task2")])
    # a finished task that were recomputed would kill its worker (and end up failed)
    result = invoke(*solve_args(tasks_dir, tiny_model_dir, out), "--ray", faults=faults(die_on=["task0", "task2"]))
    assert result.exit_code == 0, result.output
    assert result.output.count(": resumed") == 2 and "1 ok, 0 failed" in flat(result)
    assert "worker died" not in flat(result)
    assert mtimes(kept) == kept
    assert answers(task_record(out, "task1")) == answers(task_record(in_process, "task1"))
    assert submission(out) == submission(in_process)

    task_file(out, "task0").unlink()  # and a Ray run resumes in-process
    kept = mtimes([task_file(out, t) for t in ("task1", "task2")])
    again = one_thread(invoke, *solve_args(tasks_dir, tiny_model_dir, out),
                       faults=faults(raise_on=["task1", "task2"]))  # recomputing either would record it failed
    assert again.exit_code == 0 and again.output.count(": resumed") == 2, again.output
    assert mtimes(kept) == kept and all(task_record(out, t)["status"] == "ok" for t in TASKS)
    assert submission(out) == submission(in_process)


@pytest.mark.slow
def test_a_time_budget_on_ray_gives_ttt_while_there_is_time_and_every_task_its_fallback(ray_local, tmp_path, tasks_dir,
                                                                                      tiny_model_dir, in_process):
    roomy = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "roomy"), "--ray", "--time-budget", "5m")
    assert roomy.exit_code == 0, roomy.output
    assert "every task has its fallback" in flat(roomy)
    for task_id in TASKS:  # the workers' TTT under a budget: the in-process answers, short attempts padded
        record, reference = task_record(tmp_path / "roomy", task_id), task_record(in_process, task_id)
        assert record["path"] == "full" and record["tests"][0]["candidates"] == reference["tests"][0]["candidates"]
        attempts = reference["tests"][0]["attempts"]
        assert record["tests"][0]["attempts"][:len(attempts)] == attempts and len(record["tests"][0]["attempts"]) == 2

    t0 = time.time()
    tight = invoke(*solve_args(tasks_dir, tiny_model_dir, tmp_path / "tight"), "--ray", "--time-budget", "2s")
    took = time.time() - t0
    assert tight.exit_code == 0, tight.output
    assert took <= 2 + 60  # starting the workers alone may take longer than 2 s; the margin is max(60 s, 3%)
    assert [task_record(tmp_path / "tight", t)["path"] for t in TASKS] == ["fallback"] * 3
    assert list(submission(tmp_path / "tight")) == list(TASKS)
    assert all(entry[0]["attempt_1"] and entry[0]["attempt_2"] for entry in submission(tmp_path / "tight").values())


@pytest.mark.slow
def test_lm_eval_on_ray_writes_the_in_process_results_and_saves_skips_and_retries_failures(ray_local, tmp_path,
                                                                                           tiny_model_dir):
    memory = tmp_path / "memory.jsonl"
    memory.write_text("\n".join(json.dumps({"text": t}) for t in ["the quick brown fox jumps"] * 3 +
                                ["zzz yyy xxx", "mmm nnn ooo", "kkk jjj iii"]))
    index = invoke("lm", "index", str(memory), "--out", str(tmp_path / "index"), "--embedder", "lm", "--model",
                   str(tiny_model_dir), "--chunk-tokens", "32")
    assert index.exit_code == 0, index.output
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"id": i, "domain": "d", "prompt": p, "continuation": " over the dog"})
                                 for i, p in (("a", "the quick brown"), ("b", "zzz"), ("c", "kkk"))))

    def run(out, *extra, faults=None):
        return one_thread(invoke, "lm", "eval", "--prompts", str(prompts), "--index", str(tmp_path / "index"),
                          "--model", str(tiny_model_dir), "--select", "sift", "--steps", "2", "--k", "4",
                          "--lora-rank", "2", "--out", str(out), *extra, faults=faults)

    def result(out, pid: str) -> dict:
        return json.loads((out / "sift" / "results" / f"{pid}.json").read_text())

    local, remote = run(tmp_path / "local"), run(tmp_path / "ray", "--ray", faults=faults(raise_on=["b"]))
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert "2 scored, 1 failed" in flat(remote)
    for pid in ("a", "c"):
        mine, theirs = result(tmp_path / "ray", pid), result(tmp_path / "local", pid)
        assert mine["status"] == theirs["status"] == OK
        assert mine["picks"] == theirs["picks"] and mine["bits"] == pytest.approx(theirs["bits"], rel=1e-5)
    failed = result(tmp_path / "ray", "b")  # a failure is saved, but it is not a result
    assert failed["status"] == "failed" and "fault injected on b" in failed["error"] and "bits" not in failed
    files = sorted((tmp_path / "ray" / "sift" / "results").iterdir())
    before, saved = mtimes(files), failed

    skipped = run(tmp_path / "ray", "--ray", faults=faults(die_on=["a", "b", "c"]))  # a prompt run kills a worker
    assert skipped.exit_code == 0, skipped.output
    assert "b: failed earlier (skipped; --retry-failed runs it again)" in flat(skipped)
    assert "2 scored, 1 failed" in flat(skipped) and "worker died" not in flat(skipped)
    assert mtimes(files) == before and result(tmp_path / "ray", "b") == saved

    retried = run(tmp_path / "ray", "--ray", "--retry-failed", faults=faults(die_on=["a", "c"]))
    assert retried.exit_code == 0, retried.output
    assert "3 scored, 0 failed" in flat(retried) and "worker died" not in flat(retried)
    mine, theirs = result(tmp_path / "ray", "b"), result(tmp_path / "local", "b")
    assert mine["status"] == OK and mine["picks"] == theirs["picks"]
    assert mine["bits"] == pytest.approx(theirs["bits"], rel=1e-5)
    assert {f: t for f, t in mtimes(files).items() if f.name != "b.json"} == \
        {f: t for f, t in before.items() if f.name != "b.json"}  # a and c are not recomputed


@pytest.mark.slow
def test_a_model_that_cannot_load_is_one_clear_error(ray_local, tmp_path, tasks_dir):
    missing = invoke(*solve_args(tasks_dir, tmp_path / "none.gguf", tmp_path / "ray"), "--ray")
    assert missing.exit_code == 2 and "none.gguf does not exist" in flat(missing)  # found before Ray starts
    (tmp_path / "broken.gguf").write_bytes(b"GGUF" + bytes(60))  # there, but no worker can load it
    result = invoke(*solve_args(tasks_dir, tmp_path / "broken.gguf", tmp_path / "ray"), "--ray")
    assert result.exit_code == 2
    assert "Ray workers could not start" in flat(result) and "broken.gguf" in flat(result)
    assert list((tmp_path / "ray" / "tasks").iterdir()) == []  # no task was recorded (failed or not)


def ray_params(ray: bool, **given) -> dict:
    """The Ray options of a command as `scale_of` reads them (long option names), defaults unless given."""
    defaults = {"workers": 2, "gpus-per-worker": 0.0, "threads-per-worker": 1, "ray-address": None, "max-retries": 2}
    return {"ray": ray, **defaults, **{k.replace("_", "-"): v for k, v in given.items()}}


def test_ray_flags_are_checked_together_and_ignored_without_ray(monkeypatch, capsys):
    scale, problems = scale_of(ray_params(True, workers=0, threads_per_worker=0, max_retries=-1))
    assert scale == ScaleArgs(workers=0, threads_per_worker=0, max_retries=-1)
    assert [p.split()[0] for p in problems[:3]] == ["--workers", "--threads-per-worker", "--max-retries"]
    capsys.readouterr()
    assert scale_of(ray_params(False, workers=4)) == (None, [])
    assert " ".join(capsys.readouterr().out.split()).endswith("ignored without --ray")
    assert scale_of(ray_params(False)) == (None, [])
    assert capsys.readouterr().out == ""  # no warning when no Ray flag was given
    if importlib.util.find_spec("ray") is not None:
        assert scale_of(ray_params(True)) == (ScaleArgs(), [])
    result = invoke("arc", "solve", "arc-agi-1/evaluation", "--ray", "--shared", "--workers", "0")
    assert result.exit_code == 2
    assert "--shared" in flat(result) and "--workers must be at least 1" in flat(result)
    then = invoke("arc", "solve", "arc-agi-1/evaluation", "--ray", "--shared-then-task")
    assert then.exit_code == 2 and "cannot be split over --ray workers" in flat(then)
    ignored = invoke("lm", "eval", "--prompts", "p.jsonl", "--select", "none", "--workers", "4")
    assert "ignored without --ray" in flat(ignored)

    monkeypatch.setitem(sys.modules, "ray", None)  # as if ray were not installed
    missing = invoke("lm", "eval", "--prompts", "p.jsonl", "--select", "none", "--ray")
    assert missing.exit_code == 2 and f"`{INSTALL}`" in flat(missing)
    assert scale_of(ray_params(True))[1] == [f"--ray needs the optional dependency ray: install it with `{INSTALL}`"]


def test_tasks_go_to_the_pool_largest_first_counting_what_the_prompt_holds():
    def task(task_id: str, demo: int, test_in: int, test_out: int) -> Task:
        def grid(n: int) -> list:
            return [[1] * n for _ in range(n)]
        return Task.from_json({"train": [{"input": grid(demo), "output": grid(demo)}],
                               "test": [{"input": grid(test_in), "output": grid(test_out)}]}, task_id=task_id)

    small, big, tie = task("small", 2, 2, 2), task("big", 5, 3, 3), task("tie", 2, 2, 2)
    # a large hidden answer is not in the prompt: it does not make a task run longer
    answer_only = task("answer-only", 2, 2, 30)
    assert task_cells(big) == 25 + 25 + 9 and task_cells(small) == task_cells(answer_only) == 4 + 4 + 4
    # the pool's cost: tokens, a grid of r x c being r * (c + 1) + 2 with its marker line, and per test input an
    # answer the size of the largest demonstration output
    assert task_tokens(big) == 32 + 32 + 14 + 32 and task_tokens(small) == task_tokens(answer_only) == 8 * 4
    job = ArcJob(SolveConfig())
    ordered = sorted([small, big, answer_only, tie], key=job.cost, reverse=True)  # how the pool orders them
    assert [t.id for t in ordered] == ["big", "small", "answer-only", "tie"]


@pytest.mark.slow
def test_the_pool_hands_out_items_by_descending_cost(ray_local):
    class Costly:
        """A job with no model: items are (id, cost); a record says in which order its worker ran it."""

        noun, id_key = "item", "item_id"

        def __init__(self):
            self.started = 0

        def item_id(self, item):
            return item[0]

        def cost(self, item):
            return item[1]

        def not_parallel(self):
            return None

        def accepts(self, item, record):
            return True

        def setup(self):
            return ""

        def run(self, item, emit):
            self.started += 1
            return {"item_id": item[0], "status": "ok", "order": self.started}

        def failed(self, item, error, trace, seconds):
            return {"item_id": item[0]}

    items = [("small", 1.0), ("big", 9.0), ("mid", 5.0), ("tie", 1.0), ("huge", 20.0)]
    kept = []
    RayExecutor(ScaleArgs(workers=1)).execute(Costly(), items, kept.append, lambda event: None)
    # one worker: it gets the next item only when it is done, so its order is the pool's hand-out order
    assert [r["item_id"] for r in kept] == ["huge", "big", "mid", "small", "tie"]  # ties keep their order
    assert [r["order"] for r in kept] == [1, 2, 3, 4, 5] and all(r["status"] == "ok" for r in kept)
