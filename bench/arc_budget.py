"""Benchmark: `arc solve --time-budget` against no budget on the N smallest ARC-AGI-1 evaluation tasks.

Runs `testtime arc solve` as a subprocess once per arm, each into `OUT/ARM` from scratch (`--restart`),
and times the whole command (imports and model loading included: what a user waits for). Tasks: the
N smallest by `arc.format.task_tokens` (the budget scheduler's own cost), ties by id. An arm is `none`
(no budget) or a duration (`20m`). Prints one row per arm: tasks with TTT, tasks on their fallback
(cut by the deadline, not started), wall time against the budget and its margin (max(60 s, 3%)), score
and pass@1 from the records. Needs a quiet machine: the budget arm's outcome depends on its speed.

    .venv/bin/python bench/arc_budget.py --out .bench-data/budget                  # 40 tasks: 20m, then none
    .venv/bin/python bench/arc_budget.py --out .bench-data/budget --arms 20m       # one arm
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def smallest(n: int) -> list[str]:
    from testtime.arc.format import task_tokens
    from testtime.arc.task import load_tasks

    tasks = sorted(load_tasks("arc-agi-1/evaluation").tasks, key=lambda t: (task_tokens(t), t.id))
    return [t.id for t in tasks[:n]]


def run_arm(arm: str, tasks: list[str], out: Path, flags: list[str]) -> dict:
    budget = [] if arm == "none" else ["--time-budget", arm]
    cmd = [sys.executable, "-c", "from testtime.cli import app; app()", "arc", "solve", "arc-agi-1/evaluation",
           "--tasks", ",".join(tasks), "--out", str(out), "--restart", *budget, *flags]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"})
    wall = time.perf_counter() - t0
    (out.parent / f"{arm}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"arm {arm} failed (exit {proc.returncode}); see {out.parent / f'{arm}.log'}")
    from testtime.arc.score import run_records, summarize

    records = run_records(out / "submission.json")
    fallback = [r for r in records if r.is_fallback]
    s = summarize(records)
    return {"arm": arm, "tasks": len(records), "full": s["full"], "fallback": len(fallback),
            "cut": sum(r.cut is not None for r in fallback), "failed": s["failed"], "wall_s": wall,
            "score": s["score"], "pass@1": s["pass@1"]}


def within(arm: str, wall: float) -> str:
    if arm == "none":
        return "n/a"
    from testtime.jobs import parse_duration

    seconds = parse_duration(arm)
    return f"{wall - seconds:+.0f} s ({'inside' if wall <= seconds + max(60.0, 0.03 * seconds) else 'OVER'})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the arms' run directories and logs")
    parser.add_argument("--tasks", type=int, default=40, help="the N smallest evaluation tasks")
    parser.add_argument("--arms", default="20m,none", help="comma-separated: `none` or a --time-budget each")
    parser.add_argument("--flags", default="--seed 0", help="further `arc solve` flags, one string")
    args = parser.parse_args()

    tasks = smallest(args.tasks)
    print(f"# bench/arc_budget.py on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(tasks)} tasks: {','.join(tasks)}; flags: {args.flags}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for arm in args.arms.split(","):
        rows.append(run_arm(arm, tasks, args.out / arm, args.flags.split()))
        print(f"  {arm}: {rows[-1]['wall_s']:.0f} s", flush=True)

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1%}"
    print("\n| arm | tasks | with TTT | on fallback (cut, not started) | failed | wall s | vs budget | score | "
          "pass@1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['tasks']} | {r['full']} | {r['fallback']} ({r['cut']}, {r['fallback'] - r['cut']}) "
              f"| {r['failed']} | {r['wall_s']:.0f} | {within(r['arm'], r['wall_s'])} | {pct(r['score'])} | "
              f"{pct(r['pass@1'])} |")


if __name__ == "__main__":
    main()
