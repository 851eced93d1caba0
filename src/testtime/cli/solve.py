"""`testtime arc solve`: per-task test-time training, augmented inference and voting, resumable."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from testtime.arc.records import TaskRecord, TestResult
from testtime.arc.settings import SolveConfig
from testtime.cli import common
from testtime.cli.common import console, fail, safe
from testtime.config import options

OPTIONS = options(SolveConfig())
"""Every setting of `arc solve` as an option (flag, default, help, panel: declared once, on the dataclasses)."""

PRESETS: dict[str, dict[str, object]] = {
    # The authors' run (Akyuerek et al. 2024; ekinakyurek/marc: README, configs/ttt, test_time_train.py and
    # predict.py): LoRA r128 / alpha 16 on q, v and the MLP, AdamW lr 5e-5 with weight decay 0.01 and 5
    # warm-up steps, 2 epochs of batch 2, up to 250 sequences (leave-one-out topped up with leave-two-out,
    # size augmentations, a size change for about half of the augmented sequences), loss on every demo output
    # after the first; inference on leave-one-out prompts in 2 demo orders per transform.
    "paper": {
        "lora.r": 128, "lora.alpha": 16,
        "lora.target_modules": ("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"),
        "train.lr": 5e-5, "train.epochs": 2, "train.batch_size": 2, "train.weight_decay": 0.01,
        "train.warmup_steps": 5, "data.n_sequences": 250, "data.leave_two_out": True,
        "data.augmentations": ("upscale", "tile"), "data.loss_on": "outputs",
        "data.max_len": 8192, "infer.orders": 2, "infer.prompts": "leave-one-out",
    },
    # This CPU's budget: the defaults of every setting (a 135M model trains a task in about a minute).
    "small": {},
}
"""`--preset NAME`: a partial override of SolveConfig's fields. Its values become the defaults: `--config` and
flags override them."""


@common.with_settings(OPTIONS + common.scale_options())
def solve(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Data set name, ARC JSON file, directory, or Kaggle *_challenges.json."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory: config, one file per task, submission."),
    limit: int = common.LIMIT,
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated task ids to solve."),
    preset: str = common.preset_option(PRESETS, OPTIONS),
    config: Path = common.CONFIG,
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Use the bare base model, no shipped adapter.",
                                    rich_help_panel="Model"),
    restart: bool = common.RESTART,
    retry_failed: bool = common.RETRY_FAILED,
    ray: bool = common.RAY,
    select: str = typer.Option(None, "--select", hidden=True, help="Old name of --rank."),
    time_budget: str = typer.Option(None, "--time-budget", help="Wall-clock limit of this run, like 90m, 11h30m or "
                                    "45s: first a fallback for every task (a greedy answer without TTT, or the test "
                                    "input itself), then TTT on as many tasks as the time allows, cheapest first when "
                                    "it binds; the run ends a little before it (2%, at most 30 s, kept for the "
                                    "submission) with two attempts for every test input. A rerun redoes the tasks "
                                    "left on their fallback."),
) -> None:
    """Solve ARC tasks with per-task test-time training, augmented inference and voting.

    Writes two attempts per test input (Kaggle submission format); with known solutions it
    prints the score, pass@1 and the oracle over all candidates. Re-running with the same --out
    resumes, skipping finished tasks (and failed ones, unless --retry-failed); a rerun with other
    result-affecting settings is refused. With --ray, tasks run on a pool of Ray actors and land in
    the same run directory (a run started one way resumes the other way).

    Example: testtime arc solve arc-agi-1/evaluation --limit 5 --out runs/eval5
    """
    started = time.time()  # a --time-budget counts from here, model loading included
    params = common.options_of(ctx)
    if select is not None:
        common.warn("--select is now --rank (it ranks the attempts); --select will go in a later release")
        given = ctx.get_parameter_source("rank")  # typer's click may be its own copy: compare by name
        if getattr(given, "name", "DEFAULT") == "DEFAULT":
            params["rank"] = select
    params.pop("select", None)
    solve_config, problems = common.build(SolveConfig(), params, OPTIONS,
                                          parse={"adapter": _resolve_adapter, "dtype": common.concrete_dtype})
    scale, scale_problems = common.scale_of(params)
    problems += scale_problems
    adapter, shared, ttt, model = solve_config.adapter, solve_config.trains_shared, solve_config.ttt, solve_config.model
    if adapter and no_adapter:
        problems.append("--adapter and --no-adapter contradict each other; give one")
    elif adapter and not (Path(adapter) / "adapter_config.json").is_file():
        problems.append(f"--adapter {adapter}: no adapter_config.json there; give a directory written by "
                        "`testtime arc pretrain`")
    if scale is not None and shared:
        problems.append("--shared and --shared-then-task train one LoRA on all tasks and cannot be split over --ray "
                        "workers; drop one")
    budget, budget_problems = _budget(time_budget, started, shared)
    problems += budget_problems
    if problems:
        fail("; ".join(problems))
    if preset:
        console.print(common.preset_line(preset, PRESETS[preset], params, OPTIONS))
    if not adapter and not no_adapter:
        from testtime.arc.pretrain import default_adapter

        shipped = default_adapter(model)
        solve_config.adapter = str(shipped) if shipped else None
    selected = _load(source, tasks, limit)
    console.print(f"[bold]testtime arc solve[/] {safe(source)}: {len(selected)} tasks, model {safe(model)}, "
                  f"adapter {safe(solve_config.adapter or 'none')}, "
                  f"TTT {_ttt_mode(solve_config)}, out {safe(out or '(none)')}"
                  + (f", time budget {safe(time_budget)}" if budget else ""))
    records, submitted, counts = _run(solve_config, selected, source, out, params, scale, restart=restart,
                                      retry_failed=retry_failed, budget=budget)
    _print_summary(records, out, submitted, _budget_rows(budget, records, counts, ttt))


def _ttt_mode(config: SolveConfig) -> str:
    """How the run's TTT goes, in a word or three."""
    if not config.ttt:
        return "off"
    return "shared" if config.shared else "shared, then per task" if config.shared_then_task else "per task"


def _budget(text: str | None, started: float, shared: bool) -> tuple[object, list[str]]:
    """(the --time-budget as a `jobs.Budget` from `started`, or None; problems named by flag)."""
    from testtime.jobs import Budget, parse_duration

    if text is None:
        return None, []
    try:
        budget = Budget.starting_now(parse_duration(text), started)
    except ValueError as err:
        return None, [f"--time-budget: {err}"]
    if shared:
        return budget, ["--time-budget runs the tasks' TTT one by one while time allows; --shared and "
                        "--shared-then-task train one LoRA on all of them first: drop one"]
    return budget, []


def _budget_rows(budget, records: list[TaskRecord], counts, ttt: bool) -> list[tuple[str, str]]:
    """Summary rows of a run with a time budget: the budget, the time used, tasks on each path."""
    from testtime.jobs import format_duration

    if budget is None:
        return []
    full = sum(r.ok and not r.is_fallback for r in records)
    fallback = sum(r.is_fallback for r in records)
    cut = fallback - counts.not_started
    return [
        ("time budget", f"{format_duration(budget.seconds)} ({budget.seconds:,.0f} s)"),
        ("time used", f"{format_duration(budget.used())} ({budget.used():,.0f} s)"),
        ("tasks with TTT" if ttt else "tasks with full inference", str(full)),
        ("tasks on their fallback", f"{fallback} ({cut} cut by the deadline, {counts.not_started} not started)"),
    ]


def _resolve_adapter(value: str | None) -> str | None:
    return str(value) if value else None


def _load(source: str, ids: str | None, limit: int | None) -> list:
    from testtime.arc.task import TaskError, load_tasks

    try:
        ts = load_tasks(source)
    except TaskError as err:
        fail(str(err))
    for err in ts.errors:
        console.print(f"[yellow]skipped bad task:[/] {safe(err)}")
    for err in ts.unscored:
        console.print(f"[yellow]unscored:[/] {safe(err)}")
    selected = ts.tasks
    if ids:
        wanted = list(dict.fromkeys(common.comma_list(ids)))
        by_id = {t.id: t for t in selected}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            fail(f"--tasks: no task {', '.join(missing)} in this data set")
        selected = [by_id[w] for w in wanted]
    if limit is not None:
        if limit < 1:
            fail(f"--limit must be at least 1, not {limit}")
        selected = selected[:limit]
    if not selected:
        fail(f"no tasks to solve in {source}")
    return selected


def _run(solve_config, tasks, source, out, params, scale, *, restart: bool,
         retry_failed: bool, budget=None) -> tuple[list[TaskRecord], int, object]:
    """(this run's records, the tasks submission.json holds: every finished one in --out, the counts)."""
    from testtime.arc.solve import ArcJob, solve_tasks
    from testtime.jobs import RunDir

    run_dir = RunDir(out, records="tasks", defaults={"config": SolveConfig().to_json()}) if out else None
    job = ArcJob(solve_config, shared_tasks=tasks if solve_config.trains_shared else None)
    records, submission, counts = common.run_job(
        "arc solve", "task", _task_line, scale, out, run_dir,
        {"source": source, "config": solve_config.to_json()}, params, OPTIONS, restart=restart,
        weight_paths={"model": solve_config.model, "adapter": solve_config.adapter},
        work=lambda executor, emit: solve_tasks(job, tasks, run_dir, executor=executor, retry_failed=retry_failed,
                                                emit=emit, budget=budget))
    if counts.failed and counts.failed == counts.total:
        _print_summary(records, out, len(submission))
        fail(f"every task failed (first: {records[0].error})", code=1)
    return records, len(submission), counts


def _task_line(data: dict, resumed: bool) -> str:
    """A task's line as its record arrives from the job layer (its JSON)."""
    record = TaskRecord.from_json(data, trusted=True)  # made by this run, or accepted when resumed
    mark = ""
    if record.scored:
        mark = " solved" if record.score() == 1 else " wrong"
    state = "resumed" if resumed else record.status
    if resumed and not record.ok:
        state = "failed earlier (skipped; --retry-failed runs it again)"
    elif record.is_fallback:
        cut = record.cut if not resumed else None
        state = ("resumed (fallback)" if resumed else "fallback" if cut is None else
                 f"fallback kept, the deadline cut its TTT ({cut.at}, after {cut.seconds:.1f}s)")
    return f"  {record.task_id}: {state}{mark} ({record.seconds:.1f}s){_bits(record.tests)}"


def _bits(tests: list[TestResult]) -> str:
    """` | bits/cell 3.20 -> 1.05 | truth rank 2`: the true outputs' mean bits per answer cell before and
    after TTT, and their best rank among the candidates; empty when the outputs are unknown."""
    truths = [t.truth for t in tests if t.truth is not None]

    def mean(key: str) -> str:
        values = [getattr(t, key) for t in truths if getattr(t, key) is not None]
        return f"{sum(values) / len(values):.2f}" if values else "n/a"
    if not truths:
        return ""
    ranks = [t.rank for t in truths if t.rank is not None]
    rank = f"truth rank {min(ranks)}" if ranks else "truth not a candidate"
    return f" | bits/cell {mean('bits_per_cell_before')} -> {mean('bits_per_cell_after')} | {rank}"


def truth_rows(truth: dict) -> list[tuple[str, str]]:
    """Summary rows of `score.truth_means`: bits of the true outputs before -> after TTT, their rank."""
    def num(x: float | None, fmt: str = ".3f") -> str:
        return "n/a" if x is None else format(x, fmt)
    if truth["found"] is None:
        return []
    return [
        ("truth bits / cell (before -> after TTT)",
         f"{num(truth['bits_per_cell_before'])} -> {num(truth['bits_per_cell_after'])}"),
        ("truth bits / token (before -> after TTT)",
         f"{num(truth['bits_per_token_before'])} -> {num(truth['bits_per_token_after'])}"),
        ("truth among candidates", common.pct(truth["found"])),
        ("mean rank of the truth (when there)", num(truth["rank"], ".2f")),
    ]


def _print_summary(records: list[TaskRecord], out: Path | None, submitted: int = 0,
                   extra: list[tuple[str, str]] | None = None) -> None:
    from testtime.arc.score import summarize

    s = summarize(records)
    tok_s = "n/a" if s["train_tokens_per_s"] is None else f"{s['train_tokens_per_s']:,.0f}"
    common.summary("testtime arc solve: summary", [
        ("tasks", str(s["tasks"])),
        ("failed", str(s["failed"])),
        ("did not fit", str(s["did_not_fit"])),
        ("score (either attempt)", common.pct(s["score"])),
        ("pass@1", common.pct(s["pass@1"])),
        ("oracle (any candidate)", common.pct(s["oracle"])),
        ("TTT seconds / task", f"{s['ttt_seconds_per_task']:.1f}"),
        ("inference seconds / task", f"{s['infer_seconds_per_task']:.1f}"),
        ("training tokens / s", tok_s),
        *truth_rows(s["truth"]),
        *(extra or []),
    ])
    if out:
        console.print(f"submission: {safe(out / 'submission.json')} ({submitted} tasks: every task finished in "
                      f"{safe(out)}, {len(records)} of them in this run's selection)")
        from testtime.cli.report import after_run
        after_run("arc", out)  # OUT/report.html
