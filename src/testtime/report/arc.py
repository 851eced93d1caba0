"""The report of an `arc solve` run directory: summary, then per task the grids, attempts, candidates, loss.

    write_arc_report("runs/eval5")          # -> runs/eval5/report.html

It reads `RUN/config.json` and `RUN/tasks/*.json` (the records `testtime.arc.solve` writes) and,
when the run's source still loads, the tasks themselves, for the demonstrations, test inputs and
true outputs; without them it shows what the records hold. Only light modules are imported
(the task loader, numpy), never the model stack.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testtime.arc.records import TaskRecord, TestResult, TTTStats
from testtime.records import RecordError, load_record
from testtime.report.render import render_to
from testtime.report.svg import GridBank, line_chart, valid_grid

log = logging.getLogger(__name__)

MAX_CANDIDATES = 12
"""Candidates shown per test input (the rest are counted): keeps 400-task reports small."""


@dataclass
class ArcRun:
    """What a run directory holds, read leniently: a damaged record is skipped and counted."""

    path: Path
    config: dict[str, Any]
    records: list[TaskRecord]
    tasks: dict[str, Any] = field(default_factory=dict)
    """Task id -> testtime.arc.task.Task, when the run's source loads."""
    truth_note: str = ""
    """Where the true outputs came from, or why there are none."""
    unreadable: list[str] = field(default_factory=list)


def read_json(path: Path) -> Any:
    """Parsed JSON, or None for a missing or damaged file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None


def load_arc_run(run_dir: str | Path, *, load_source: bool = True) -> ArcRun:
    """Read an `arc solve` run directory; raises FileNotFoundError when it is not one."""
    path = Path(run_dir)
    config = read_json(path / "config.json")
    if not isinstance(config, dict) and not (path / "tasks").is_dir():
        raise FileNotFoundError(f"{path} is not an `arc solve` run directory (no config.json, no tasks/)")
    config = dict(config) if isinstance(config, dict) else {}
    for key in ("settings", "options"):  # a damaged config shows less, never breaks the report
        if not isinstance(config.get(key), dict):
            config[key] = {}
    for key in ("command", "testtime"):
        if not isinstance(config.get(key), str):
            config.pop(key, None)
    run = ArcRun(path, config, [])
    for file in sorted((path / "tasks").glob("*.json")) if (path / "tasks").is_dir() else ():
        try:
            run.records.append(load_record(file, TaskRecord))
        except RecordError as err:  # does not parse, or another shape: listed unreadable, the rest rendered
            log.warning("%s: %s", file, err)
            run.unreadable.append(file.name)
    run.records.sort(key=lambda r: r.task_id)
    if load_source:
        run.tasks, run.truth_note = _load_source(run.config["settings"].get("source"), path)
    else:
        run.truth_note = "the source was not loaded"
    return run


def _load_source(source: Any, run_dir: Path) -> tuple[dict[str, Any], str]:
    if not isinstance(source, str) or not source:
        return {}, "config.json records no source: demonstrations and true outputs are not shown"
    from testtime.arc.task import DATASETS, TaskError, load_tasks

    candidates = [source] if source in DATASETS or Path(source).is_absolute() else [source, run_dir.parent / source]
    for where in candidates:
        try:
            tasks = load_tasks(where).tasks
        except (TaskError, OSError):
            continue
        return {t.id: t for t in tasks}, f"tasks and true outputs from {source}"
    return {}, f"the source {source} does not load here: demonstrations and true outputs are not shown"


def task_status(record: TaskRecord) -> str:
    """failed | solved (every test input right in either attempt) | unsolved | unscored."""
    if not record.ok:
        return "failed"
    if not record.scored:
        return "unscored"
    return "solved" if record.score() == 1 else "unsolved"


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summarize_run(run: ArcRun) -> dict[str, Any]:
    """The figures of `arc solve`'s summary table, plus truth likelihoods where the records hold them."""
    records = run.records
    ok = [r for r in records if r.ok]
    truths = [t.truth for r in ok for t in r.tests if t.truth is not None]
    expected = _expected_tasks(run)
    return {
        "tasks": len(records),
        "failed": len(records) - len(ok),
        "did_not_fit": sum(not r.fits for r in ok),
        "not_finished": None if expected is None else len(expected - {r.task_id for r in records}),
        "unreadable": len(run.unreadable),
        "score": _mean([r.score("any_attempt") for r in records]),
        "pass@1": _mean([r.score("attempt_1") for r in records]),
        "oracle": _mean([r.score("oracle") for r in records]),
        "seconds_per_task": _mean([r.seconds for r in records]),
        "ttt_seconds_per_task": _mean([r.ttt.total_seconds for r in ok]),
        "infer_seconds_per_task": _mean([r.predict.seconds for r in ok]),
        "bits_per_cell_before": _mean([t.bits_per_cell_before for t in truths]),
        "bits_per_cell_after": _mean([t.bits_per_cell_after for t in truths]),
        "bits_per_token_before": _mean([t.bits_per_token_before for t in truths]),
        "bits_per_token_after": _mean([t.bits_per_token_after for t in truths]),
        "truth_found": _mean([float(t.rank is not None) for t in truths]),
        "truth_rank": _mean([t.rank for t in truths]),
        "fallback": sum(r.is_fallback for r in records),
        "cut": sum(r.is_fallback and r.cut is not None for r in records),
    }


def _expected_tasks(run: ArcRun) -> set[str] | None:
    """The task ids the run was asked for (its --tasks, else the loaded source cut by --limit), if known."""
    options = run.config.get("options") or {}
    if isinstance(options.get("tasks"), str) and options["tasks"]:
        wanted = [t.strip() for t in options["tasks"].split(",") if t.strip()]
    elif run.tasks:
        wanted = sorted(run.tasks)
    else:
        return None
    limit = options.get("limit")
    return set(wanted[:limit] if isinstance(limit, int) and limit > 0 else wanted)


def _attempt_views(test: TestResult, truth: list | None, bank: GridBank) -> list[dict[str, Any]]:
    """Each attempt with its right/wrong mark: the record's `correct` when present, else a comparison."""
    correct = test.correct
    views = []
    for k, grid in enumerate(test.attempts[:2]):
        if correct is not None and k == 0:
            right = correct.attempt_1
        elif correct is not None and truth is None:  # attempt 2 is right when either is but attempt 1 is not
            right = correct.any_attempt and not correct.attempt_1
        else:
            right = None if truth is None else grid == truth
        shape = f"{len(grid)}x{len(grid[0])}" if valid_grid(grid) else "?"
        same_shape = truth is not None and valid_grid(grid) and shape == f"{len(truth)}x{len(truth[0])}"
        views.append({"label": f"attempt {k + 1}", "right": right, "shape": shape,
                      "shape_differs": truth is not None and not same_shape,
                      "svg": bank.show(grid, outline=truth if right is False else None)})
    return views


def _candidate_views(test: TestResult, truth: list | None, bank: GridBank) -> list[dict[str, Any]]:
    rows = []
    attempts = test.attempts[:2]
    for c in test.candidates[:MAX_CANDIDATES]:
        transforms = c.transforms or []
        more = f" +{len(transforms) - 4}" if len(transforms) > 4 else ""
        pick = next((k + 1 for k, a in enumerate(attempts) if a == c.grid), None)
        rows.append({"svg": bank.show(c.grid, cls="thumb"), "votes": c.votes, "groups": c.groups,
                     "logprob": c.logprob, "poe": c.poe, "pick": pick,
                     "right": None if truth is None else c.grid == truth,
                     "transforms": ", ".join(transforms[:4]) + more, "all_transforms": ", ".join(transforms)})
    return rows


def _test_views(record: TaskRecord, task: Any, bank: GridBank) -> list[dict[str, Any]]:
    n = max(len(record.tests), len(task.test) if task is not None else 0)
    views = []
    for i in range(n):
        test = record.tests[i] if i < len(record.tests) else TestResult(attempts=[], candidates=[])
        example = task.test[i] if task is not None and i < len(task.test) else None
        truth = example.output.tolist() if example is not None and example.output is not None else None
        views.append({
            "index": i, "input": bank.show(example.input.tolist()) if example is not None else "",
            "truth": bank.show(truth) if truth is not None else "",
            "attempts": _attempt_views(test, truth, bank), "candidates": _candidate_views(test, truth, bank),
            "more_candidates": max(0, len(test.candidates) - MAX_CANDIDATES), "n_candidates": len(test.candidates),
            "likelihood": test.truth, "correct": test.correct,
            "prompts": test.prompts, "unparsed": test.unparsed, "unfit": test.unfit,
        })
    return views


def loss_curve(ttt: TTTStats | None) -> str:
    """The TTT loss per step as inline SVG, when the record holds per-step losses (`ttt.losses`)."""
    if ttt is None or not ttt.losses:
        return ""
    return line_chart([("TTT loss", list(enumerate(ttt.losses, start=1)))], xlabel="step", ylabel="loss",
                      width=360, height=180)


def task_view(record: TaskRecord, task: Any, bank: GridBank, index: int) -> dict[str, Any]:
    """Everything the template shows of one task."""
    demos = [{"input": bank.show(ex.input.tolist()), "output": bank.show(ex.output.tolist())}
             for ex in (task.train if task is not None else ())]
    return {
        "anchor": f"t{index}", "id": record.task_id, "status": task_status(record), "score": record.score(),
        "pass1": record.score("attempt_1"), "seconds": record.seconds,
        "error": record.error, "traceback": record.traceback, "fits": record.fits is not False,
        "ttt": record.ttt, "predict": record.predict,
        "loss_svg": loss_curve(record.ttt), "demos": demos, "has_task": task is not None,
        "tests": _test_views(record, task, bank),
    }


def arc_context(run: ArcRun) -> dict[str, Any]:
    """The template context of a run: summary, config and one view per task (grids drawn once each)."""
    bank = GridBank()
    views = [task_view(r, run.tasks.get(r.task_id), bank, i) for i, r in enumerate(run.records)]
    statuses = [v["status"] for v in views]
    settings = run.config.get("settings") if isinstance(run.config.get("settings"), dict) else {}
    has_losses = any(v["loss_svg"] for v in views)
    trained = any(r.ttt is not None and r.ttt.steps for r in run.records)
    return {
        "title": f"testtime arc report: {run.path.name or run.path}", "run_path": str(run.path),
        "command": run.config.get("command", "arc solve"), "version": run.config.get("testtime", "?"),
        "summary": summarize_run(run), "settings": settings, "truth_note": run.truth_note,
        "tasks": views, "counts": {s: statuses.count(s) for s in ("solved", "unsolved", "failed", "unscored")},
        "losses_note": "" if has_losses or not trained else
        "the task records hold no per-step TTT losses (only the first and final loss), so no loss curves are drawn",
        "unreadable": run.unreadable, "defs": bank.defs(),
    }


def write_arc_report(run_dir: str | Path, out: str | Path | None = None, *, load_source: bool = True) -> Path:
    """Render `run_dir`'s report to `out` (default RUN_DIR/report.html); returns the path written."""
    run = load_arc_run(run_dir, load_source=load_source)
    return render_to("arc.html", out or Path(run_dir) / "report.html", **arc_context(run))
