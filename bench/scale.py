"""Benchmark: ARC tasks per hour in-process vs on a local Ray pool, on this machine's CPU (or GPU).

Runs `testtime arc solve` as a subprocess once per setting, each into a fresh run directory, and
times the whole command (model loading and Ray start-up included: what a user waits for). The
model's one-time GGUF conversion (see `testtime.models`) is done before the first setting.
Default settings: (a) in-process, 2 threads; (b) Ray, 1 worker x 1 thread; (c) Ray, 2 workers x
1 thread, on the five small tasks of the Makefile's demo with small TTT settings.

    .venv/bin/python bench/scale.py                              # the three CPU settings
    .venv/bin/python bench/scale.py --gpu-workers 1,2,4          # GPU: 1, 2, 4 workers sharing one GPU
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DEMO_TASKS = "66e6c45b,00576224,be03b35f,4cd1b7b2,ca8de6ea"


@dataclass
class Setting:
    name: str
    flags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


def cpu_settings() -> list[Setting]:
    return [
        Setting("(a) in-process, 2 threads", env={"OMP_NUM_THREADS": "2"}),
        Setting("(b) Ray, 1 worker x 1 thread", ["--ray", "--workers", "1", "--threads-per-worker", "1"]),
        Setting("(c) Ray, 2 workers x 1 thread", ["--ray", "--workers", "2", "--threads-per-worker", "1"]),
    ]


def gpu_settings(workers: list[int]) -> list[Setting]:
    # n workers share one GPU: each asks for 1/n of it, so Ray places all n on it
    return [Setting(f"Ray, {n} worker(s) on 1 GPU", ["--ray", "--workers", str(n), "--gpus-per-worker",
                                                      f"{1 / n:.4f}", "--threads-per-worker", "1"]) for n in workers]


def run_setting(setting: Setting, common: list[str], out: Path) -> dict:
    exe = Path(sys.executable).with_name("testtime")
    cmd = [str(exe), "arc", "solve", *common, "--out", str(out), *setting.flags]
    env = {**os.environ, "COLUMNS": "120", **setting.env}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{setting.name} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                         f"{proc.stderr[-3000:]}")
    from testtime.arc.score import run_records

    records = run_records(out / "submission.json")
    ok = sum(r.ok for r in records)
    return {"setting": setting.name, "tasks": len(records), "ok": ok, "wall_s": wall,
            "task_s": sum(r.seconds for r in records), "tasks_per_h": len(records) / wall * 3600,
            "submission": json.loads((out / "submission.json").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=DEMO_TASKS, help="ARC-AGI-1 evaluation task ids")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--ttt-sequences", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--gpu-workers", default=None, help="comma-separated worker counts sharing one GPU")
    args = parser.parse_args()

    # 8 sequences x 1 epoch = 8 LoRA steps per task; 8 geometric transforms x <= 64 new tokens to decode
    common = ["arc-agi-1/evaluation", "--tasks", args.tasks, "--model", args.model, "--ttt-sequences",
              str(args.ttt_sequences), "--ttt-max-len", "1024", "--max-new-tokens", str(args.max_new_tokens),
              "--seed", "0"]
    settings = gpu_settings([int(n) for n in args.gpu_workers.split(",")]) if args.gpu_workers else cpu_settings()
    print(f"# bench/scale.py on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"tasks {args.tasks}; --ttt-sequences {args.ttt_sequences} --max-new-tokens {args.max_new_tokens}")
    # a GGUF's first load converts it into the model cache (once per machine): do it before timing
    subprocess.run([sys.executable, "-c", f"from testtime.models import load_model; load_model({args.model!r})"],
                   check=True, capture_output=True)
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="testtime-bench-scale-"))
    try:
        for i, setting in enumerate(settings):
            rows.append(run_setting(setting, common, scratch / f"run{i}"))
            r = rows[-1]
            print(f"  {r['setting']}: {r['tasks']} tasks in {r['wall_s']:.1f} s", flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    base = rows[0]["tasks_per_h"]
    print("\n| setting | tasks (ok) | wall s | sum of task s | tasks / h | vs first |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['setting']} | {r['tasks']} ({r['ok']}) | {r['wall_s']:.1f} | {r['task_s']:.1f} | "
              f"{r['tasks_per_h']:.1f} | {r['tasks_per_h'] / base:.2f}x |")
    same = all(r["submission"] == rows[0]["submission"] for r in rows)
    print(f"\nsame submission in every setting: {same}")
    if not args.gpu_workers and len(rows) == 3:
        b, c = rows[1]["tasks_per_h"], rows[2]["tasks_per_h"]
        print(f"(c)/(b) = {c / b:.2f}x (target >= 1.7x); (c)/(a) = {c / base:.2f}x (target >= 1.1x)")


if __name__ == "__main__":
    main()
