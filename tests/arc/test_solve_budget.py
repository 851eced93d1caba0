"""`arc solve` under a time budget: a fallback for every task, then TTT on as many as fit, on a tiny model.

Library tests run on virtual time (`helpers.VirtualClock`): every TTT step "takes" STEP seconds and
nothing else takes any, so which tasks fit is exact. The CLI tests run on the real clock.
"""

from __future__ import annotations

import json
import time

import pytest

from cli_helpers import flat, invoke  # tests/ is on sys.path under pytest
from helpers import VirtualClock, make_tiny_model
from testtime.arc.fallback import fallback_record
from testtime.arc.format import TokenCounter
from testtime.arc.records import TaskRecord, TestResult
from testtime.arc.settings import InferArgs, SolveConfig, TTTArgs
from testtime.arc.solve import ArcJob, Solver, solve_tasks
from testtime.arc.task import Example, Task, as_grid
from testtime.jobs import Budget, Finished, RunDir, TimeUp
from testtime.lora import AdapterHost
from testtime.settings import LoraArgs, TrainArgs

STEP = 10.0
"""Virtual seconds per TTT step; a task trains 2 steps (4 sequences, batch 2): 20 s."""
LORA = LoraArgs(r=2, alpha=4, target_modules=("q_proj", "v_proj"))


def square_task(task_id: str, side: int, colour: int) -> Task:
    """Three demonstrations and a test input of side x side grids; every output is filled with `colour`."""
    def grid(k: int) -> list:
        return [[(r + c + k) % 10 for c in range(side)] for r in range(side)]
    answer = as_grid([[colour] * side] * side)
    demos = tuple(Example(as_grid(grid(k)), answer) for k in range(3))
    return Task(task_id, demos, (Example(as_grid(grid(7)), answer),))


def config(n_sequences: int = 4) -> SolveConfig:
    return SolveConfig(lora=LORA, train=TrainArgs(lr=1e-2, epochs=1, batch_size=2, log_every=0),
                       data=TTTArgs(n_sequences=n_sequences, colors=False), infer=InferArgs(max_new_tokens=8))


@pytest.fixture(scope="module")
def host(tokenizer):
    return AdapterHost(make_tiny_model(vocab_size=len(tokenizer)), LORA)


@pytest.fixture
def clock(monkeypatch):
    """Virtual time in which each TTT step takes STEP seconds."""
    import testtime.finetune as finetune

    clock = VirtualClock().install(monkeypatch)
    real = finetune._step

    def step(*args, **kwargs):
        info = real(*args, **kwargs)
        clock.sleep(STEP)
        return info
    monkeypatch.setattr(finetune, "_step", step)
    return clock


def solve(host, tokenizer, tasks, seconds, run_dir=None, emit=lambda event: None, n_sequences=4):
    """(records by id, submission, counts, budget) of a run with a budget of `seconds`, from now."""
    budget = Budget.starting_now(seconds) if seconds is not None else None
    job = ArcJob(config(n_sequences), solver=Solver(host, tokenizer, config(n_sequences)))
    run_dir = RunDir(run_dir, records="tasks") if run_dir is not None else None
    records, submission, counts = solve_tasks(job, tasks, run_dir, emit=emit, budget=budget)
    return {r.task_id: r for r in records}, submission, counts, budget


def complete(submission: dict, tasks: list[Task]) -> bool:
    """Every task and test input has two valid grids (non-empty, rectangular, colours 0-9)."""
    def valid(grid) -> bool:
        return bool(grid) and bool(grid[0]) and all(len(row) == len(grid[0]) and all(0 <= v <= 9 for v in row)
                                                    for row in grid)
    return list(submission) == [t.id for t in tasks] and all(
        len(submission[t.id]) == len(t.test) and all(valid(e["attempt_1"]) and valid(e["attempt_2"])
                                                     for e in submission[t.id]) for t in tasks)


def test_ttt_goes_to_as_many_tasks_as_fit_cheapest_first_the_rest_keep_their_fallback(host, tokenizer, clock):
    tasks = [square_task("big1", 6, 3), square_task("small1", 2, 4), square_task("big2", 6, 5),
             square_task("small2", 2, 6)]
    # 50 s (49 s for tasks) and 20 s per task: two tasks fit, three would not. The first, the cheapest, measures
    # the pace; then small2 (25 s expected with the margin, 29 s left); the big ones would not end in time.
    records, submission, counts, budget = solve(host, tokenizer, tasks, 50)
    assert {t: r.path for t, r in records.items()} == {"big1": "fallback", "small1": "full", "big2": "fallback",
                                                       "small2": "full"}
    assert counts.not_started == 2 and budget.used() == 40.0 <= budget.seconds
    assert all(r.ttt.steps == 2 for t, r in records.items() if t.startswith("small"))
    assert all(r.cut is None and r.tests[0].fallback in ("greedy", "input") for t, r in records.items()
               if t.startswith("big"))
    assert all(len(r.tests[0].attempts) == 2 for r in records.values())  # a full path short of grids is padded
    assert [TaskRecord.problems(r.to_json()) for r in records.values()] == [[]] * 4
    assert complete(submission, tasks)
    assert not host.has_adapter


def test_a_budget_too_small_for_any_ttt_still_gives_every_task_its_fallback(host, tokenizer, clock, tmp_path):
    tasks = [square_task("a", 2, 1), square_task("b", 3, 2)]
    events = []
    records, submission, counts, _ = solve(host, tokenizer, tasks, 15, tmp_path / "run", emit=events.append)
    # a, the cheapest, starts (nothing is measured yet); the deadline (14.7 s) falls inside its second step
    cut = records["a"].cut
    assert cut.at.startswith("training step 1 of 2") or cut.at.startswith("training step 2 of 2"), cut
    assert [r.path for r in records.values()] == ["fallback", "fallback"] and counts.not_started == 1
    assert complete(submission, tasks)
    assert json.loads((tmp_path / "run" / "submission.json").read_text()) == submission
    saved = json.loads((tmp_path / "run" / "tasks" / "a.json").read_text())
    assert saved["path"] == "fallback" and saved["cut"] == cut.to_json()  # the fallback's, saying where TTT stopped
    notices = [e.message for e in events if type(e).__name__ == "Notice"]
    assert any("every task has its fallback" in n for n in notices) and any("1 tasks not started" in n for n in notices)
    assert not host.has_adapter  # the cut task's LoRA was dropped


def test_a_killed_run_resumes_with_the_same_budget_and_keeps_its_finished_ttt(host, tokenizer, clock, tmp_path,
                                                                              monkeypatch):
    tasks = [square_task(f"t{i}", 2, i) for i in range(4)]

    class Killed(Exception):
        pass

    def kill_after_first_ttt(event):
        if isinstance(event, Finished) and event.record.get("path") == "full":
            raise Killed  # like a kill right after a task's TTT record was written
    with pytest.raises(Killed):
        solve(host, tokenizer, tasks, 50, tmp_path / "run", emit=kill_after_first_ttt)
    files = {p.stem: json.loads(p.read_text())["path"] for p in (tmp_path / "run" / "tasks").glob("*.json")}
    assert files == {"t0": "full", "t1": "fallback", "t2": "fallback", "t3": "fallback"}
    kept = (tmp_path / "run" / "tasks" / "t0.json").stat().st_mtime_ns

    ran, fallbacks = [], []
    solve_task, fallback = Solver.solve_task, Solver.fallback
    monkeypatch.setattr(Solver, "solve_task", lambda self, task, *a, **kw: ran.append(task.id)
                        or solve_task(self, task, *a, **kw))
    monkeypatch.setattr(Solver, "fallback", lambda self, task, *a: fallbacks.append(task.id)
                        or fallback(self, task, *a))
    records, submission, counts, _ = solve(host, tokenizer, tasks, 50, tmp_path / "run")
    assert fallbacks == [] and ran == ["t1", "t2"]  # the fallbacks and t0's TTT are resumed; two more fit
    assert (tmp_path / "run" / "tasks" / "t0.json").stat().st_mtime_ns == kept
    assert [r.path for r in records.values()] == ["full", "full", "full", "fallback"]
    assert complete(submission, tasks)

    ran.clear()  # without a budget (or with more time), what is left on its fallback runs in full
    records, _, counts, _ = solve(host, tokenizer, tasks, None, tmp_path / "run")
    assert ran == ["t3"] and counts.resumed == 3 and all(r.path == "full" for r in records.values())


def test_a_task_whose_full_path_fails_keeps_its_fallback_attempts(host, tokenizer, clock, monkeypatch):
    import testtime.arc.fallback as fallback_module
    import testtime.arc.solve as solve_module

    real_predict, real_fallback = solve_module.predict_task, fallback_module.fallback_record

    def predict(model, tok, task, *args, **kw):
        if task.id == "bad-full":
            raise RuntimeError("injected failure")
        return real_predict(model, tok, task, *args, **kw)

    def fallback(model, tok, task, *args, **kw):
        if task.id == "bad-fallback":
            raise RuntimeError("injected failure")
        return real_fallback(model, tok, task, *args, **kw)
    monkeypatch.setattr(solve_module, "predict_task", predict)
    monkeypatch.setattr(solve_module, "fallback_record", fallback)
    tasks = [square_task("bad-full", 2, 1), square_task("bad-fallback", 3, 2), square_task("ok", 2, 3)]
    records, submission, counts, _ = solve(host, tokenizer, tasks, 1000)
    assert [r.status for r in records.values()] == ["failed", "failed", "ok"] and counts.failed == 2
    assert [r.path for r in records.values()] == ["fallback", "fallback", "full"]
    query = tasks[1].test[0].input.tolist()
    assert submission["bad-fallback"][0] == {"attempt_1": query, "attempt_2": query}  # its test input, twice
    assert records["bad-full"].tests[0].fallback in ("greedy", "input")  # the fallback made before it failed
    assert complete(submission, tasks)


def test_shared_ttt_under_a_budget_is_refused_before_anything_runs(host, tokenizer, tmp_path):
    cfg = config()
    cfg.shared = True
    job = ArcJob(cfg, solver=Solver(host, tokenizer, cfg))
    with pytest.raises(ValueError, match="one LoRA on all"):
        solve_tasks(job, [square_task("a", 2, 1)], RunDir(tmp_path / "run", records="tasks"),
                    budget=Budget.starting_now(60))
    assert not (tmp_path / "run").exists()


def test_the_deadline_is_checked_at_every_decoded_token(host, tokenizer, monkeypatch):
    from testtime.arc.decoding import AnswerShape, generate

    clock = VirtualClock().install(monkeypatch)
    done = AnswerShape.done
    monkeypatch.setattr(AnswerShape, "done", lambda self, rows, tokens: clock.sleep(1.0) or done(self, rows, tokens))
    prompts = [[10, 11, 12], [13, 14]]
    full = generate(host.model, tokenizer, prompts, stop_id=0, max_new_tokens=6, batch_size=2, check_answer=False)
    assert [len(g.token_ids) for g in full] == [6, 6] and clock.now == 1_000_006.0  # one check per token
    with pytest.raises(TimeUp, match="decoding"):
        generate(host.model, tokenizer, prompts, stop_id=0, max_new_tokens=6, batch_size=2, check_answer=False,
                 deadline=clock.now + 3.5)
    assert clock.now == 1_000_010.0  # the 5th token found the deadline passed

    task = square_task("late", 2, 1)  # the fallback pass: the test input itself once decoding runs out of time
    record = fallback_record(host.model, tokenizer, task, InferArgs(max_new_tokens=8), counter=TokenCounter(tokenizer),
                             deadline=clock.now - 1)
    assert record.tests[0] == TestResult(attempts=[task.test[0].input.tolist()] * 2, candidates=[], fallback="input")


def test_the_deadline_inside_decoding_cuts_the_full_path_and_the_task_keeps_its_fallback(host, tokenizer, clock,
                                                                                         monkeypatch):
    import testtime.arc.solve as solve_module

    real = solve_module.predict_task

    def predict(*args, deadline=None, **kw):  # the full path's decoding: up to the deadline, then TimeUp
        clock.now = max(clock.now, deadline)
        return real(*args, deadline=deadline, **kw)
    monkeypatch.setattr(solve_module, "predict_task", predict)
    records, _, counts, _ = solve(host, tokenizer, [square_task("a", 2, 1)], 1000)
    assert records["a"].path == "fallback" and records["a"].cut.at == "decoding"


# --- the command line: real time ---------------------------------------------------------------



@pytest.mark.parametrize("value,message", [
    ("90", "'90' is not a duration; write it like 90m, 11h30m, 45s or 2h"),
    ("1d", "'1d' is not a duration"),
    ("0m", "'0m' is no time at all"),
])
def test_a_bad_time_budget_is_one_clear_error_naming_the_option(value, message):
    result = invoke("arc", "solve", "arc-agi-1/evaluation", "--time-budget", value, "--lora-rank", "0")
    assert result.exit_code == 2
    assert f"--time-budget: {message}" in flat(result) and "--lora-rank" in flat(result)  # every problem at once
    shared = invoke("arc", "solve", "arc-agi-1/evaluation", "--time-budget", "1h", "--shared")
    assert shared.exit_code == 2 and "--time-budget runs the tasks' TTT one by one" in flat(shared)
    first = invoke("arc", "solve", "arc-agi-1/evaluation", "--time-budget", "1h", "--shared-then-task")
    assert first.exit_code == 2 and "--shared-then-task train one LoRA on all of them first" in flat(first)


def rows(output: str) -> dict[str, str]:
    """The measure -> value rows of the summary table."""
    found = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("│").split("│")]
        if len(cells) == 2 and cells[0] and cells[1]:
            found[cells[0]] = cells[1]
    return found


def write_tasks(folder, n: int = 3):
    folder.mkdir()
    for i in range(n):
        grid = [[(r + c + i) % 10 for c in range(i + 2)] for r in range(i + 2)]
        (folder / f"task{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                                          "test": [{"input": grid, "output": grid}]}))
    return folder


def test_the_budget_is_a_runtime_option_and_a_tiny_one_ends_in_time_with_a_whole_submission(tmp_path, monkeypatch,
                                                                                         tiny_model_dir):
    import testtime.finetune as finetune

    tasks, out = write_tasks(tmp_path / "tasks"), tmp_path / "run"
    args = ["arc", "solve", str(tasks), "--model", str(tiny_model_dir), "--out", str(out), "--ttt-sequences", "2",
            "--max-new-tokens", "8", "--lora-rank", "2", "--lora-targets", "q_proj,v_proj"]
    real_step = finetune._step
    with monkeypatch.context() as patch:  # a TTT step takes 1.5 s: longer than the whole budget
        patch.setattr(finetune, "_step", lambda *a, **kw: time.sleep(1.5) or real_step(*a, **kw))
        t0 = time.time()
        tiny = invoke(*args, "--time-budget", "1s")
        took = time.time() - t0
    assert tiny.exit_code == 0, tiny.output
    assert took <= 1 + 60  # the acceptance margin: max(60 s, 3% of the budget)
    submission = json.loads((out / "submission.json").read_text())
    assert list(submission) == ["task0", "task1", "task2"]
    assert all(len(e) == 1 and all(e[0][k] and e[0][k][0] for k in ("attempt_1", "attempt_2"))
               for e in submission.values())
    records = [json.loads((out / "tasks" / f"task{i}.json").read_text()) for i in range(3)]
    assert [r["path"] for r in records] == ["fallback"] * 3
    summary = rows(tiny.output)
    assert summary["time budget"] == "1s (1 s)" and summary["tasks with TTT"] == "0"
    assert float(summary["time used"].split("(")[1].split()[0]) <= took + 0.5  # shown to the second
    assert summary["tasks on their fallback"].startswith("3 (")
    config = json.loads((out / "config.json").read_text())
    assert config["options"]["time-budget"] == "1s" and not any("budget" in k for k in config["settings"])

    more = invoke(*args, "--time-budget", "10m")  # another budget is no other setting: the run goes on
    assert more.exit_code == 0, more.output
    assert "holds results made with other settings" not in flat(more)
    records = [json.loads((out / "tasks" / f"task{i}.json").read_text()) for i in range(3)]
    assert [r["path"] for r in records] == ["full"] * 3  # every fallback redone with the time there was
    assert rows(more.output)["tasks with TTT"] == "3"
    assert rows(more.output)["tasks on their fallback"] == "0 (0 cut by the deadline, 0 not started)"
    again = invoke(*args)  # nothing left on a fallback: everything resumes
    assert again.exit_code == 0 and again.output.count(": resumed") == 3
