"""Benchmark: choose the ARC fine-tuning recipe by measurement.

Each arm is one `testtime arc pretrain` run on the same data stream (re-ARC + ARC-AGI-1 training,
seed 0), with the same number of optimizer steps (so the same tokens, except where an arm changes
the sequence length: its steps are scaled to match), `--dtype` pinned. Each arm's adapter is then
scored on the tuning split: the true outputs' bits per cell before TTT (the identity prompt, as
`arc solve` records `bits_per_cell_before`) on the 20 ARC-AGI-1 evaluation tasks that follow the
20 smallest by cells (`arc.solve.task_cells`; the 20 smallest are the reporting set and are not
used here). Two reference rows need no training: `base` (no adapter) and `shipped` (the adapter
in the package).

Results: one JSON line per arm in `bench/results/ft_pilots.jsonl`, appended when the arm is
scored; an arm already there is skipped, and an arm's pretraining resumes from its checkpoints
in `--work`, so the same command continues after an interruption. Run it on one core in the
background (`OMP_NUM_THREADS=1`).

    OMP_NUM_THREADS=1 .venv/bin/python bench/ft_pilots.py                 # every arm not yet scored
    .venv/bin/python bench/ft_pilots.py --arms base,r16 --steps 10         # a quick look
    .venv/bin/python bench/ft_pilots.py --table                            # print the table only
    .venv/bin/python bench/ft_pilots.py --split wide --score NAME=DIR      # on 60 tasks: ranks 20..80

`--split wide` scores on the 60 evaluation tasks ranked 20..80 by cells (the tuning split and the 40
after it, still never the 20 smallest): more power where the 20 disagree task by task. Its rows carry
`"split": "wide"` and are tabled and skipped apart from the tuning split's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from arc_tasks import tuning_tasks  # bench/ is on sys.path when a script in it runs

REARC = "../shared/data/re-arc/re_arc_120.json.gz"
RESULTS = Path(__file__).parent / "results" / "ft_pilots.jsonl"
SPLITS = {"tuning": (20, 20), "wide": (60, 20)}
"""Split name -> (tasks, rank of the first) in the evaluation tasks ordered by cells (`tuning_tasks(n, skip)`)."""

ARMS: dict[str, list[str]] = {
    "base": [],
    "shipped": [],
    "r16": ["--lora-rank", "16", "--lora-alpha", "32"],
    "r64": ["--lora-rank", "64", "--lora-alpha", "128"],
    "r16-lr1e-3": ["--lora-rank", "16", "--lora-alpha", "32", "--lr", "1e-3"],
    "r16-later-outputs": ["--lora-rank", "16", "--lora-alpha", "32", "--loss-on", "later-outputs"],
    "r128": ["--lora-rank", "128", "--lora-alpha", "256"],
    "r16-len2048": ["--lora-rank", "16", "--lora-alpha", "32", "--max-len", "2048"],
    "full-lr5e-5": ["--lora-rank", "0", "--lr", "5e-5", "--extract-rank", "64"],
    "r16-agi2": ["--lora-rank", "16", "--lora-alpha", "32"],
    "r64-lr1e-3": ["--lora-rank", "64", "--lora-alpha", "128", "--lr", "1e-3"],
}
"""Arm name -> the `arc pretrain` flags that differ from the common ones (`base` and `shipped` train
nothing)."""
SOURCES = [REARC, "arc-agi-1/training"]
"""The training data of every arm but those in EXTRA_SOURCES."""
EXTRA_SOURCES = {"r16-agi2": ["arc-agi-2/training"]}
"""Arms that train on more data: ARC-AGI-2's training tasks besides (its tasks that are in an evaluation set
left out, as always; the sampler draws a task uniformly, so new tasks shift the mix towards few-example
tasks). Their validation tasks differ, so compare them on the tuning split's bits, not the validation loss."""
COMMON = ["--lr", "2e-4", "--max-len", "1024", "--val-every", "25", "--checkpoint-every", "25",
          "--seed", "0"]
"""Flags of every arm (an arm's own flags come after these and win)."""
STEP_SCALE = {"r16-len2048": 0.75}
"""Arms whose sequences are longer: fewer steps for the same tokens (measured: see the jsonl's tokens)."""


def truth_bits_per_cell(adapter: str | None, task_ids: list[str], dtype: str) -> dict[str, float | None]:
    """Per task: the mean over its test inputs of the true output's bits per cell, identity prompt, max 8192
    tokens (`arc solve`'s default inference length), the base model with `adapter` merged."""
    from testtime.arc.format import DEFAULT_FORMAT, TokenCounter
    from testtime.arc.likelihood import truth_bits, truth_rows
    from testtime.arc.solve import task_seed
    from testtime.arc.task import load_tasks
    from testtime.lora import AdapterHost
    from testtime.models import load_model
    from testtime.settings import LoraArgs

    loaded = load_model(None, dtype=dtype)
    host = AdapterHost(loaded.model, LoraArgs(), start_adapter=adapter)
    counter = TokenCounter(loaded.tokenizer, DEFAULT_FORMAT)
    tasks = {t.id: t for t in load_tasks("arc-agi-1/evaluation").tasks}
    out: dict[str, float | None] = {}
    for tid in task_ids:
        task = tasks[tid]
        rows = truth_rows(loaded.tokenizer, task, counter=counter, max_len=8192, seed=task_seed(0, tid))
        bits = [b["bits_per_cell"] for b in truth_bits(host.model, task, rows, batch_size=1) if b]
        out[tid] = sum(bits) / len(bits) if bits else None
    return out


def train_arm(name: str, work: Path, steps: int, dtype: str) -> Path:
    out = work / name
    flags = [*COMMON, *ARMS[name], "--steps", str(max(1, round(steps * STEP_SCALE.get(name, 1.0)))),
             "--warmup", str(max(1, steps // 10)), "--dtype", dtype]
    exe = Path(sys.executable).with_name("testtime")
    cmd = [str(exe), "arc", "pretrain", *SOURCES, *EXTRA_SOURCES.get(name, []), "--out", str(out), *flags]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "COLUMNS": "120"})
    return out


def machine() -> str:
    """The CPU's model name and its bf16 matmul features (they decide the speed of every figure)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = sorted({f for f in ("amx_bf16", "avx512_bf16") if f in text.split()})
    return f"{name} ({', '.join(flags) or 'no bf16 matmul'})"


def done_arms(on: str | None = None, split: str = "tuning") -> dict[str, dict]:
    """The arms scored on `split` on the CPU named `on` (default: this one). Figures from another kind of
    CPU or split are kept in the file but never mixed into this machine's table or its skip list."""
    if not RESULTS.exists():
        return {}
    on = on or machine()
    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    return {r["arm"]: r for r in rows if r.get("machine") == on and r.get("split", "tuning") == split}


def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:  # one line, one write: a killed run leaves whole lines
        f.write(json.dumps(row) + "\n")


def table(rows: dict[str, dict]) -> str:
    n = max((len(r["tasks"]) for r in rows.values()), default=20)
    lines = [f"| arm | steps | tokens | minutes | val loss first -> last | truth bits/cell before TTT, mean of {n} "
             "| vs base | tasks better than base |",
             "|---|---|---|---|---|---|---|---|"]
    base = rows.get("base")
    for name, r in rows.items():
        val = f"{r['val_first']:.4f} -> {r['val_last']:.4f}" if r.get("val_first") is not None else "-"
        vs = better = "-"
        if base and name != "base":
            vs = f"{100 * r['mean_bits'] / base['mean_bits']:.1f}%"
            better = str(sum(r["bits"][t] < base["bits"][t] for t in r["bits"] if r["bits"][t] is not None))
        lines.append(f"| {name} | {r.get('steps') or '-'} | {r.get('tokens') or '-'} | "
                     f"{r['minutes']:.1f} | {val} | {r['mean_bits']:.4f} | {vs} | {better} |")
    return "\n".join(lines)


def val_figures(card: dict) -> dict:
    """A card's validation history and its first and last loss (None without one)."""
    hist = card.get("val_history") or []
    return {"val_history": hist, "val_first": hist[0][1] if hist else None, "val_last": hist[-1][1] if hist else None}


def scored(row: dict, adapter: str | None, task_ids: list[str], dtype: str, t0: float) -> None:
    """Score `adapter` on `task_ids` into `row` (per-task bits, their mean, minutes since `t0`) and append it."""
    bits = truth_bits_per_cell(adapter, task_ids, dtype)
    known = [b for b in bits.values() if b is not None]
    row.update(bits=bits, mean_bits=sum(known) / len(known), minutes=(time.time() - t0) / 60)
    append(row)
    print(f"{row['arm']}: mean truth bits/cell {row['mean_bits']:.4f} ({row['minutes']:.1f} min)", flush=True)


def score_adapter(name: str, folder: Path, task_ids: list[str], dtype: str, split: str = "tuning") -> None:
    """Append the row `name`: the adapter in `folder` scored on `split`, with its card's training figures."""
    if name in done_arms(split=split):
        print(f"{name}: already in {RESULTS}, skipped", flush=True)
        return
    t0 = time.time()
    card = json.loads((folder / "card.json").read_text())
    row: dict = {"arm": name, "flags": ["adapter", str(folder)], "dtype": dtype, "tasks": task_ids,
                 "machine": machine(), "threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d"),
                 "steps": card.get("steps_with_lineage") or card.get("steps"), "tokens": card.get("tokens_seen"),
                 **val_figures(card), "export": card.get("export"), "split": split}
    scored(row, str(folder), task_ids, dtype, t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated arm names")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per arm (4 sequences each)")
    parser.add_argument("--dtype", default="bfloat16", help="pinned base-model dtype of training and scoring")
    parser.add_argument("--work", type=Path, default=Path(".bench-data/pilots"), help="adapters and checkpoints")
    parser.add_argument("--table", action="store_true", help="print the results table and stop")
    parser.add_argument("--machine", help="with --table: the CPU whose rows to print (default: this one)")
    parser.add_argument("--score", action="append", default=[], metavar="NAME=DIR",
                        help="score an adapter made elsewhere (a stage of the long run, an export at another rank) "
                             "as the row NAME, with what its card says; repeatable; no training")
    parser.add_argument("--split", choices=sorted(SPLITS), default="tuning",
                        help="tuning: the 20 tasks ranked 20..40 by cells; wide: the 60 ranked 20..80")
    args = parser.parse_args()
    if args.table:
        print(f"machine: {args.machine or machine()}, split: {args.split}")
        print(table(done_arms(args.machine, args.split)))
        return
    task_ids = tuning_tasks(*SPLITS[args.split])
    if args.score:
        for item in args.score:
            name, _, folder = item.partition("=")
            score_adapter(name, Path(folder), task_ids, args.dtype, args.split)
        print(table(done_arms(split=args.split)))
        return
    for name in args.arms.split(","):
        if name not in ARMS:
            raise SystemExit(f"unknown arm {name!r}; known: {', '.join(ARMS)}")
        if name in done_arms(split=args.split):
            print(f"{name}: already in {RESULTS}, skipped", flush=True)
            continue
        t0 = time.time()
        row: dict = {"arm": name, "flags": ARMS[name], "dtype": args.dtype, "tasks": task_ids,
                     "machine": machine(),
                     "threads": os.environ.get("OMP_NUM_THREADS"), "date": time.strftime("%Y-%m-%d"),
                     "split": args.split}
        adapter: str | None = None
        if name == "shipped":
            from testtime.arc.pretrain import default_adapter
            adapter = str(default_adapter("embedded"))
        elif name != "base":
            out = train_arm(name, args.work, args.steps, args.dtype)
            card = json.loads((out / "card.json").read_text())
            row.update(common=COMMON, steps=card["steps"], tokens=card["tokens_seen"],
                       train_seconds=card["seconds"], **val_figures(card))
            adapter = str(out)
        scored(row, adapter, task_ids, args.dtype, t0)
    print(table(done_arms(split=args.split)))


if __name__ == "__main__":
    main()
