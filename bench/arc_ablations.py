"""Benchmark: the ARC ablation table on this machine's CPU (issue #15 item 7).

Runs `testtime arc solve` once per arm on the 20 smallest ARC-AGI-1 evaluation tasks
(`EVAL_TASKS` of bench/arc_tasks.py) with the embedded model, each arm into `OUT/ARM` (a run
directory: rerunning this script resumes every arm; a changed setting is refused by `arc solve`, and
an arm that fails stops the script with the end of its log, OUT/logs/ARM.log).
Arms: `no-ttt`; `ttt` (leave-one-out in context, the default); `ttt-e2e`; `ttt-no-aug` (no
geometric, colour or demo-order augmentation of the TTT data); `shared` (one LoRA on all the
tasks' TTT data); with `--adapter DIR` the same five again on the fine-tuned adapter (`ft-...`).
Base arms run with `--no-adapter`. Every arm uses `--rank vote+poe`, so each record holds the
PoE score of every candidate, and the table compares three selections on the same candidates.

    .venv/bin/python bench/arc_ablations.py --out runs/ablations                           # 5 arms, 20 tasks
    .venv/bin/python bench/arc_ablations.py --out runs/ablations --adapter runs/pretrain   # and the 5 ft- arms
    .venv/bin/python bench/arc_ablations.py --out runs/ablations --parallel 2 --threads 16 # 2 arms x 8 threads
    .venv/bin/python bench/arc_ablations.py --out runs/ablations-bf16 --dtype bfloat16      # bf16 weights (AMX CPUs)
    OMP_NUM_THREADS=1 .venv/bin/python bench/arc_ablations.py --smoke --out /tmp/ablate-smoke \\
        --arms no-ttt,ttt,shared --threads 1                                              # minutes: 2 tasks

Columns: bits = mean over test outputs of the true output's bits per answer cell (`tests[i].truth`,
identity prompt) before and after TTT; score = the Kaggle score of the arm's submission.json
(vote+poe); pass@1 = attempt 1 alone; oracle = the truth among any candidate; rank = mean rank of
the truth in the vote+poe order over the outputs where it is a candidate (unranked truths are left
out of the mean; `found` counts them). vote / PoE / identity: scores of the top-2 by the
hierarchical vote, by PoE score, and of the identity view's own predictions alone (voted among
themselves). A task without a finished record scores 0. Writes OUT/ablations.json and OUT/ablations.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arc_tasks import EVAL_TASKS, tuning_tasks
from testtime.arc.records import TestResult

BASE_ARMS = {"no-ttt": ["--no-ttt"], "ttt": [], "ttt-e2e": ["--ttt-format", "e2e"],
             "ttt-no-aug": ["--no-ttt-geometric", "--no-ttt-colors", "--no-ttt-demo-order"],
             "shared": ["--shared"]}
ARMS = [*BASE_ARMS, *(f"ft-{a}" for a in BASE_ARMS)]
"""The seed's arms (the default --arms)."""
RECIPE_ARMS = {"ttt-loo-infer": ["--infer-prompts", "leave-one-out"], "ttt-both-infer": ["--infer-prompts", "both"],
               "ttt-orders2": ["--orders", "2"], "ttt-outputs-loss": ["--ttt-loss-on", "outputs"],
               "ttt-epochs4": ["--ttt-epochs", "4"], "shared-then-task": ["--shared-then-task"],
               "ttt-score-views8": ["--score-views", "8"]}
"""Recipe choices for the default TTT and inference (issue 30 item 3), each one change from `ttt` (its flags
come after the common ones, so they win); given by name in --arms, alone or with the ft- prefix."""
BASE_ARMS.update(RECIPE_ARMS)
ALL_ARMS = [*ARMS, *RECIPE_ARMS, *(f"ft-{a}" for a in RECIPE_ARMS)]
DEMO = {"ttt_sequences": 24, "ttt_epochs": 2, "ttt_max_len": 1024, "max_new_tokens": 931}
"""The budget of `make demo` (max_new_tokens: arc solve's default, a 30x30 answer)."""
SMOKE = {"ttt_sequences": 2, "ttt_epochs": 1, "ttt_max_len": 512, "max_new_tokens": 64}
PREDICTED = [("no-ttt", "ttt", "TTT < no TTT"), ("shared", "ttt", "per-task < shared"),
             ("ttt-e2e", "ttt", "leave-one-out < end-to-end"), ("ttt-no-aug", "ttt", "augmented < not")]
"""(worse arm, better arm, the seed's claim) in bits per answer cell after TTT (lower is better)."""


@dataclass
class Arm:
    name: str
    flags: list[str]
    out: Path
    log: Path
    total: int = 0
    """Tasks asked for."""
    todo: int = 0
    """Tasks without a record when the arm was started (0: `arc solve` only checks and rebuilds)."""
    proc: subprocess.Popen | None = None
    log_from: int = 0
    """Where this invocation's output starts in `log` (it is appended to)."""
    t0: float = 0.0


def arm_flags(name: str, adapter: str | None) -> list[str]:
    if name.startswith("ft-"):
        return ["--adapter", str(adapter), *BASE_ARMS[name[3:]]]
    return ["--no-adapter", *BASE_ARMS[name]]


def common_flags(args: argparse.Namespace) -> list[str]:
    # e.g. the demo: 24 sequences x 2 epochs = 48 LoRA steps per task (shared: 48 x tasks in one LoRA)
    return ["arc-agi-1/evaluation", "--tasks", ",".join(args.tasks), "--model", args.model, "--seed", "0",
            "--ttt-sequences", str(args.ttt_sequences), "--ttt-epochs", str(args.ttt_epochs),
            "--ttt-max-len", str(args.ttt_max_len), "--max-new-tokens", str(args.max_new_tokens),
            "--rank", "vote+poe", "--dtype", args.dtype]


def finished(out: Path, tasks: list[str]) -> int:
    """Tasks with a record in the run directory (ok or failed: `arc solve` skips both when it resumes)."""
    from testtime.arc.records import TaskRecord
    from testtime.records import RecordError, load_record

    done = 0
    for task_id in tasks:
        try:
            load_record(out / "tasks" / f"{task_id}.json", TaskRecord)
        except RecordError:
            continue
        done += 1
    return done


def run_arms(arms: list[Arm], common: list[str], threads: int, parallel: int) -> None:
    """Up to `parallel` arms at once, each `arc solve` with threads // parallel threads; walls into OUT/walls.json.

    Every arm is started, finished ones too: `arc solve` then only checks the settings (refusing changed
    ones) and rebuilds the submission, without loading the model."""
    exe = Path(sys.executable).with_name("testtime")
    each = max(1, threads // parallel)
    env = {**os.environ, "COLUMNS": "120", "OMP_NUM_THREADS": str(each), "MKL_NUM_THREADS": str(each)}
    waiting, running = list(arms), []
    try:
        _schedule(waiting, running, common, env, parallel, exe)
    finally:  # an arm failed or Ctrl-C: no arm outlives the script
        for arm in running:
            arm.proc.terminate()
            arm.proc.wait()


def _schedule(waiting: list[Arm], running: list[Arm], common: list[str], env: dict, parallel: int, exe: Path) -> None:
    each = env["OMP_NUM_THREADS"]
    while waiting or running:
        while waiting and len(running) < parallel:
            arm = waiting.pop(0)
            cmd = [str(exe), "arc", "solve", *common, "--out", str(arm.out), *arm.flags]
            arm.log.parent.mkdir(parents=True, exist_ok=True)
            arm.log_from = arm.log.stat().st_size if arm.log.is_file() else 0
            with open(arm.log, "ab") as log:
                log.write(f"$ {shlex.join(cmd)}\n".encode())
                log.flush()
                arm.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
            arm.t0 = time.perf_counter()
            print(f"  {arm.name}: started ({arm.todo} of {arm.total} tasks to run, {each} threads, log {arm.log})",
                  flush=True)
            running.append(arm)
        time.sleep(1.0)
        for arm in [a for a in running if a.proc.poll() is not None]:
            running.remove(arm)
            wall = time.perf_counter() - arm.t0
            if arm.todo:
                add_wall(arm.out.parent / "walls.json", arm.name, wall)
            code = arm.proc.returncode
            print(f"  {arm.name}: exit {code} after {wall:.1f} s", flush=True)
            if code != 0:
                raise SystemExit(failure(arm, code))


def failure(arm: Arm, code: int) -> str:
    with open(arm.log, "rb") as log:
        log.seek(arm.log_from)
        tail = log.read().decode(errors="replace")[-3000:]
    hint = ""
    if "holds results made with other settings" in " ".join(tail.split()):  # rich wraps long lines
        hint = (f"\n{arm.out} was made with other settings (other options, or a testtime with other settings): "
                f"rerun with the same options, or give another --out (or delete {arm.out}) to start this arm over")
    return f"arm {arm.name} failed (exit {code}); the end of {arm.log}:\n{tail}{hint}"


def add_wall(path: Path, name: str, wall: float) -> None:
    """Wall seconds per arm, summed over the invocations of this script that ran it (resumes add up)."""
    walls = json.loads(path.read_text()) if path.is_file() else {}
    entry = walls.setdefault(name, {"wall_s": 0.0, "runs": 0})
    entry["wall_s"] += wall
    entry["runs"] += 1
    path.write_text(json.dumps(walls, indent=1))


# ---------------------------------------------------------------- the table, from the task records

def solutions(tasks: list[str]) -> dict[str, list]:
    """The true test outputs, loaded as `testtime arc score RUN arc-agi-1/evaluation` loads them."""
    from testtime.arc.task import load_tasks

    ts = load_tasks("arc-agi-1/evaluation")
    sol = {t.id: [ex.output for ex in t.test] for t in ts.tasks if t.has_solutions}
    return {t: sol[t] for t in tasks}


def candidates_of(test: TestResult) -> list:
    """The record's per-view predictions as `vote.Candidate`s (grids from its candidates)."""
    from testtime.arc.task import as_grid
    from testtime.arc.transforms import geometric_part, parse_transform
    from testtime.arc.vote import Candidate

    grids = [as_grid(c.grid) for c in test.candidates]
    return [Candidate(grid=grids[p.candidate], transform=p.transform,
                      group=geometric_part(parse_transform(p.transform)).name, logprob=p.logprob,
                      tokens=p.tokens, order=p.order, prompt=p.prompt, decoding=p.decoding or "greedy")
            for p in test.predictions or ()]


def identity_view(transform: str) -> bool:
    """The untransformed frame: no symmetry and no colour permutation (a shuffled demo order is allowed)."""
    from testtime.arc.transforms import Compose

    return all(part in ("", "identity") or part.startswith("order:") for part in transform.split(Compose.separator))


def selections(test: TestResult) -> dict[str, list]:
    """Top-2 grids of one test input by vote, by PoE score and from the identity view alone."""
    from testtime.arc.task import as_grid
    from testtime.arc.vote import grid_key, selection, vote

    cands = candidates_of(test)
    if not cands:
        return {"vote": [], "poe": [], "identity": []}
    ranked = vote(cands)  # the order of the record's candidates[]
    poe_by_key = {grid_key(as_grid(c.grid)): c.poe for c in test.candidates}
    poe = [poe_by_key[grid_key(r.grid)] for r in ranked]
    by_poe = selection(ranked, "poe", poe) if all(p is not None for p in poe) else []
    identity = [c for c in cands if identity_view(c.transform)]
    return {"vote": [r.grid for r in ranked[:2]], "poe": [ranked[k].grid for k in by_poe[:2]],
            "identity": [r.grid for r in vote(identity)[:2]] if identity else []}


def arm_row(arm: Arm, sol: dict[str, list], walls: dict) -> dict[str, Any]:
    """Every column of one arm; None where nothing was measured."""
    from testtime.arc.score import fraction_correct, load_submission, run_records, score_submission, truth_means

    submission = arm.out / "submission.json"
    records = [r for r in run_records(submission, list(sol)) if r.ok]
    truth = truth_means(records)
    row: dict[str, Any] = {"arm": arm.name, "ok": len(records), "tasks": len(sol),
                           "bits_before": truth["bits_per_cell_before"], "bits_after": truth["bits_per_cell_after"],
                           "rank": truth["rank"], "found": truth["found"],
                           "wall_s": walls.get(arm.name, {}).get("wall_s"),
                           "task_s": sum(r.seconds for r in records)}
    seqs = [r.ttt.sequences for r in records if r.ttt.sequences is not None]
    row["ttt_sequences"] = sum(seqs) / len(seqs) if seqs else None  # per-task TTT only (shared: in its log)
    row["score"] = score_submission(load_submission(submission), sol).score if submission.is_file() else None
    guesses: dict[str, dict[str, list]] = {k: {} for k in ("pass@1", "oracle", "vote", "poe", "identity")}
    poe_missing = 0
    for r in records:
        tid, tests = r.task_id, r.tests
        guesses["pass@1"][tid] = [t.attempts[:1] for t in tests]
        guesses["oracle"][tid] = [[c.grid for c in t.candidates] for t in tests]
        picked = [selections(t) for t in tests]
        poe_missing += sum(any(c.poe is None for c in t.candidates) for t in tests)
        for how in ("vote", "poe", "identity"):
            guesses[how][tid] = [p[how] for p in picked]
    for name, per_task in guesses.items():
        row[name] = fraction_correct(per_task, sol) if records else None
    if poe_missing:
        row["poe"] = None  # records made without --rank vote+poe: no PoE column rather than a wrong one
    return row


def verdict(better: float | None, worse: float | None, lower: bool) -> str:
    """Whether `better` beats `worse` (lower is better for bits, higher for scores)."""
    if better is None or worse is None:
        return "n/a (not run)"
    if better == worse:
        return "tie"
    return "holds" if (better < worse) == lower else "does not hold"


def directions(rows: dict[str, dict]) -> list[dict[str, str]]:
    """The seed's predicted directions, for the base and the fine-tuned arms, from the numbers."""
    found = []
    for prefix in ("", "ft-"):
        mine = [n for n in rows if n.startswith("ft-") == (prefix == "ft-")]
        if not mine:
            continue
        for worse, better, claim in PREDICTED:
            b, w = (rows.get(prefix + name, {}).get("bits_after") for name in (better, worse))
            found.append({"claim": f"{prefix}{claim} (bits/cell after)", "result": verdict(b, w, lower=True),
                          "numbers": f"{fmt(b)} vs {fmt(w)}"})
        for name in mine:
            for how in ("vote", "poe"):
                b, w = rows[name].get(how), rows[name].get("identity")
                found.append({"claim": f"{name}: {how} > identity alone (score)", "result": verdict(b, w, lower=False),
                              "numbers": f"{fmt(b)} vs {fmt(w)}"})
    return found


def fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


COLUMNS = ["arm", "tasks ok", "TTT seqs/task", "bits/cell before", "bits/cell after", "score", "pass@1", "oracle",
           "truth rank (found)", "vote", "PoE", "identity", "wall s", "sum task s"]
NOTE = ("bits: the true output's bits per answer cell (identity prompt), mean over test outputs; score: the submission "
        "(vote+poe); truth rank: its mean rank in the vote+poe order over the outputs where it is a candidate (found: "
        "their share; the others are left out of the mean); vote / PoE / identity: top-2 of the same candidates by "
        "the vote, by PoE score, and of the identity view alone; TTT seqs/task: the sequences each task trained on "
        "(deduplicated: without augmentation a task has about one per demo, so far fewer steps).")


def markdown(rows: list[dict], not_run: dict[str, str]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows:
        found = "n/a" if r["found"] is None else f"{r['found']:.0%}"
        cells = [r["arm"], f"{r['ok']}/{r['tasks']}", fmt(r["ttt_sequences"], 1), fmt(r["bits_before"]),
                 fmt(r["bits_after"]), fmt(r["score"]), fmt(r["pass@1"]), fmt(r["oracle"]),
                 f"{fmt(r['rank'], 2)} ({found})", fmt(r["vote"]), fmt(r["poe"]), fmt(r["identity"]),
                 fmt(r["wall_s"], 1), f"{r['task_s']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [f"| {name} | not run ({why}) |" + " |" * (len(COLUMNS) - 2) for name, why in not_run.items()]
    return "\n".join(lines) + f"\n\n{NOTE}"


# ---------------------------------------------------------------- the command

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablations"), help="one run directory per arm in it")
    parser.add_argument("--tasks", default=None, help="comma-separated ARC-AGI-1 evaluation task ids, or `tuning` "
                        "(the 20 after the 20 smallest by cells, where recipes are chosen) (default: the 20 of "
                        "EVAL_TASKS; --smoke: the first 2)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of {', '.join(ALL_ARMS)} "
                        "(default: the seed's arms)")
    parser.add_argument("--adapter", default=None, help="fine-tuned peft adapter dir for the ft- arms")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="base model weights of every arm (arc solve's --dtype; bfloat16: the fast path on "
                        "CPUs with AMX / AVX-512 BF16)")
    for name in DEMO:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=None,
                            help=f"default {DEMO[name]} (--smoke: {SMOKE[name]})")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for all arms together")
    parser.add_argument("--parallel", type=int, default=1, help="arms run at once (threads split between them)")
    parser.add_argument("--smoke", action="store_true", help="2 tasks and tiny budgets: a check that it all runs")
    args = parser.parse_args()
    problems = []
    budget = SMOKE if args.smoke else DEMO
    for name, default in budget.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.tasks == "tuning":
        args.tasks = tuning_tasks()
    else:
        args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else \
            list(EVAL_TASKS[:2] if args.smoke else EVAL_TASKS)
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in args.arms if a not in ALL_ARMS]
    if unknown:
        problems.append(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ALL_ARMS)}")
    if args.adapter and not (Path(args.adapter) / "adapter_config.json").is_file():
        problems.append(f"--adapter {args.adapter}: no adapter_config.json there; give a `testtime arc pretrain` dir")
    elif args.adapter:
        args.adapter = str(Path(args.adapter).resolve())  # a setting of the ft- runs: the same from any directory
    if args.parallel < 1 or args.threads < 1:
        problems.append("--parallel and --threads must be at least 1")
    if problems:
        parser.error("; ".join(problems))
    return args


def main() -> None:
    args = parse_args()
    out = args.out.resolve()
    runnable = [a for a in args.arms if args.adapter or not a.startswith("ft-")]
    not_run = {a: "no --adapter" if a.startswith("ft-") and not args.adapter else "not in --arms"
               for a in ARMS if a not in runnable}
    arms = [Arm(a, arm_flags(a, args.adapter), out / a, out / "logs" / f"{a}.log") for a in runnable]
    for arm in arms:
        arm.total = len(args.tasks)
        arm.todo = arm.total - finished(arm.out, args.tasks)
    common = common_flags(args)
    machine = {"processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
               "platform": platform.platform()}
    print(f"# bench/arc_ablations.py on {machine['processor']}, {machine['cpus']} CPUs; {len(args.tasks)} tasks; "
          f"arms {', '.join(runnable)}; --threads {args.threads} --parallel {args.parallel}")
    print(f"  common: {shlex.join(common)}")
    if any(a.todo for a in arms):
        # a GGUF's first load converts it into the model cache (once per machine): not inside an arm's wall time
        loaded = subprocess.run([sys.executable, "-c", f"from testtime.models import load_model; "
                                 f"load_model({args.model!r})"], capture_output=True, text=True)
        if loaded.returncode != 0:
            raise SystemExit(f"--model {args.model} does not load:\n{loaded.stderr[-3000:]}")
    run_arms(arms, common, args.threads, args.parallel)
    walls_file = out / "walls.json"
    walls = json.loads(walls_file.read_text()) if walls_file.is_file() else {}
    sol = solutions(args.tasks)
    rows = [arm_row(arm, sol, walls) for arm in arms]
    found = directions({r["arm"]: r for r in rows})
    table = markdown(rows, not_run)
    checks = "\n".join(f"- {d['claim']}: **{d['result']}** ({d['numbers']})" for d in found)
    command = shlex.join([Path(sys.executable).name, *sys.argv])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    head = (f"`{command}` on {machine['processor']}, {machine['cpus']} CPUs, {date}; {len(args.tasks)} tasks; "
            f"`{shlex.join(common)}`")
    text = f"{head}\n\n{table}\n\nThe seed's predicted directions at this scale:\n\n{checks}\n"
    print("\n" + text)
    (out / "ablations.md").write_text(text)
    (out / "ablations.json").write_text(json.dumps({"command": command, "machine": machine, "date": date,
                                                    "tasks": args.tasks, "common_flags": common,
                                                    "arm_flags": {a.name: a.flags for a in arms}, "rows": rows,
                                                    "not_run": not_run, "directions": found}, indent=1))
    print(f"wrote {out / 'ablations.md'} and {out / 'ablations.json'}")


if __name__ == "__main__":
    main()
