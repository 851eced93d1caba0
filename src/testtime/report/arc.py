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

from testtime.arc.records import record_problems
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
    records: list[dict[str, Any]]
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
        record = read_json(file)
        problems = record_problems(record)
        if problems:  # parses but has another shape: listed unreadable, the rest rendered
            log.warning("%s: %s", file, "; ".join(problems))
            run.unreadable.append(file.name)
        else:
            run.records.append(record)
    run.records.sort(key=lambda r: r["task_id"])
    if load_source:
        run.tasks, run.truth_note = _load_source(run.config.get("settings", {}).get("source"), path)
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


def task_status(record: dict[str, Any]) -> str:
    """failed | solved (every test input right in either attempt) | unsolved | unscored."""
    if record.get("status") != "ok":
        return "failed"
    tests = record.get("tests") or []
    if not tests or not all(isinstance(t.get("correct"), dict) for t in tests):
        return "unscored"
    return "solved" if all(t["correct"].get("any_attempt") for t in tests) else "unsolved"


def task_score(record: dict[str, Any], key: str = "any_attempt") -> float | None:
    """The task's share of test inputs right by `key` (ARC's per-task score), None when unscored."""
    tests = record.get("tests") or []
    if not tests or not all(isinstance(t.get("correct"), dict) for t in tests):
        return None
    return sum(bool(t["correct"].get(key)) for t in tests) / len(tests)


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def summarize_run(run: ArcRun) -> dict[str, Any]:
    """The figures of `arc solve`'s summary table, plus truth likelihoods where the records hold them."""
    records = run.records
    ok = [r for r in records if r.get("status") == "ok"]

    def over_tasks(key: str) -> float | None:
        return _mean([task_score(r, key) for r in records if task_score(r, key) is not None])

    truths = [t.get("truth") for r in ok for t in r.get("tests") or [] if isinstance(t.get("truth"), dict)]
    expected = _expected_tasks(run)
    return {
        "tasks": len(records),
        "failed": len(records) - len(ok),
        "did_not_fit": sum(not r.get("fits", True) for r in ok),
        "not_finished": None if expected is None else len(expected - {r["task_id"] for r in records}),
        "unreadable": len(run.unreadable),
        "score": over_tasks("any_attempt"),
        "pass@1": over_tasks("attempt_1"),
        "oracle": over_tasks("oracle"),
        "seconds_per_task": _mean([r.get("seconds") for r in records]),
        "ttt_seconds_per_task": _mean([(r.get("ttt") or {}).get("seconds", 0.0)
                                       + (r.get("ttt") or {}).get("data_seconds", 0.0) for r in ok]),
        "infer_seconds_per_task": _mean([(r.get("predict") or {}).get("seconds") for r in ok]),
        "bits_per_cell_before": _mean([t.get("bits_per_cell_before") for t in truths]),
        "bits_per_cell_after": _mean([t.get("bits_per_cell_after") for t in truths]),
        "bits_per_token_before": _mean([t.get("bits_per_token_before") for t in truths]),
        "bits_per_token_after": _mean([t.get("bits_per_token_after") for t in truths]),
        "truth_found": _mean([float(t.get("rank") is not None) for t in truths]),
        "truth_rank": _mean([t.get("rank") for t in truths]),
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


def _attempt_views(test: dict[str, Any], truth: list | None, bank: GridBank) -> list[dict[str, Any]]:
    """Each attempt with its right/wrong mark: the record's `correct` when present, else a comparison."""
    correct = test.get("correct") if isinstance(test.get("correct"), dict) else None
    views = []
    for k, grid in enumerate((test.get("attempts") or [])[:2]):
        if correct is not None and k == 0:
            right = bool(correct.get("attempt_1"))
        elif correct is not None and truth is None:  # attempt 2 is right when either is but attempt 1 is not
            right = bool(correct.get("any_attempt")) and not correct.get("attempt_1")
        else:
            right = None if truth is None else grid == truth
        shape = f"{len(grid)}x{len(grid[0])}" if valid_grid(grid) else "?"
        same_shape = truth is not None and valid_grid(grid) and shape == f"{len(truth)}x{len(truth[0])}"
        views.append({"label": f"attempt {k + 1}", "right": right, "shape": shape,
                      "shape_differs": truth is not None and not same_shape,
                      "svg": bank.show(grid, outline=truth if right is False else None)})
    return views


def _candidate_views(test: dict[str, Any], truth: list | None, bank: GridBank) -> list[dict[str, Any]]:
    rows = []
    attempts = (test.get("attempts") or [])[:2]
    for c in (test.get("candidates") or [])[:MAX_CANDIDATES]:
        if not isinstance(c, dict):
            continue
        transforms = c.get("transforms") if isinstance(c.get("transforms"), list) else []
        pick = next((k + 1 for k, a in enumerate(attempts) if a == c.get("grid")), None)
        rows.append({"svg": bank.show(c.get("grid"), cls="thumb"), "votes": c.get("votes"), "groups": c.get("groups"),
                     "logprob": c.get("logprob"), "poe": c.get("poe"), "pick": pick,
                     "right": None if truth is None else c.get("grid") == truth,
                     "transforms": ", ".join(map(str, transforms[:4]))
                     + (f" +{len(transforms) - 4}" if len(transforms) > 4 else ""),
                     "all_transforms": ", ".join(map(str, transforms))})
    return rows


def _test_views(record: dict[str, Any], task: Any, bank: GridBank) -> list[dict[str, Any]]:
    tests = [t for t in (record.get("tests") or []) if isinstance(t, dict)]
    n = max(len(tests), len(task.test) if task is not None else 0)
    views = []
    for i in range(n):
        test = tests[i] if i < len(tests) else {}
        example = task.test[i] if task is not None and i < len(task.test) else None
        truth = example.output.tolist() if example is not None and example.output is not None else None
        candidates = test.get("candidates") or []
        views.append({
            "index": i, "input": bank.show(example.input.tolist()) if example is not None else "",
            "truth": bank.show(truth) if truth is not None else "",
            "attempts": _attempt_views(test, truth, bank), "candidates": _candidate_views(test, truth, bank),
            "more_candidates": max(0, len(candidates) - MAX_CANDIDATES), "n_candidates": len(candidates),
            "likelihood": test.get("truth") if isinstance(test.get("truth"), dict) else None,
            "correct": test.get("correct") if isinstance(test.get("correct"), dict) else None,
            "prompts": test.get("prompts"), "unparsed": test.get("unparsed"), "unfit": test.get("unfit"),
        })
    return views


def loss_curve(ttt: dict[str, Any]) -> str:
    """The TTT loss per step as inline SVG, when the record holds per-step losses (`ttt.losses`)."""
    losses = ttt.get("losses")
    if not isinstance(losses, list) or not losses:
        return ""
    return line_chart([("TTT loss", list(enumerate(losses, start=1)))], xlabel="step", ylabel="loss",
                      width=360, height=180)


def task_view(record: dict[str, Any], task: Any, bank: GridBank, index: int) -> dict[str, Any]:
    """Everything the template shows of one task."""
    ttt = record.get("ttt") if isinstance(record.get("ttt"), dict) else {}
    demos = [{"input": bank.show(ex.input.tolist()), "output": bank.show(ex.output.tolist())}
             for ex in (task.train if task is not None else ())]
    score = task_score(record)
    return {
        "anchor": f"t{index}", "id": record["task_id"], "status": task_status(record), "score": score,
        "pass1": task_score(record, "attempt_1"), "seconds": record.get("seconds"),
        "error": record.get("error"), "traceback": record.get("traceback"), "fits": record.get("fits", True),
        "ttt": ttt, "predict": record.get("predict") if isinstance(record.get("predict"), dict) else {},
        "loss_svg": loss_curve(ttt), "demos": demos, "has_task": task is not None,
        "tests": _test_views(record, task, bank),
    }


def arc_context(run: ArcRun) -> dict[str, Any]:
    """The template context of a run: summary, config and one view per task (grids drawn once each)."""
    bank = GridBank()
    views = [task_view(r, run.tasks.get(r["task_id"]), bank, i) for i, r in enumerate(run.records)]
    statuses = [v["status"] for v in views]
    settings = run.config.get("settings") if isinstance(run.config.get("settings"), dict) else {}
    has_losses = any(v["loss_svg"] for v in views)
    trained = any((r.get("ttt") or {}).get("steps") for r in run.records)
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
