"""Benchmark: bits per byte after test-time fine-tuning, per domain, as % of the untouched model.

The paper's comparison (Hübotter et al., ICLR 2025): none, US, NN, NN-F (NN with repeats), SIFT and
adaptive SIFT, N = 50 steps, K = 200. Needs the offline corpus and an index of its memory (the
full memory: all documents, not the --max-memory-docs-per-domain cut):

    .venv/bin/python -m dev.corpus --out runs/corpus          # dev/README.md
    .venv/bin/testtime lm index runs/corpus/memory.jsonl --out runs/corpus-index
    .venv/bin/python bench/sift.py --corpus runs/corpus --index runs/corpus-index --out runs/sift-bench \
        --n 50 --k 200 --lr LR --methods none,us,nn,nn-f,sift,sift-adaptive --alpha ALPHA

For each held-out prompt (the first --prompts-per-domain of each domain, by id) it measures the
continuation's bits per byte with the untouched embedded model ("none"), and after one Adam step
per selected chunk on a fresh LoRA (--lora-rank 0: full fine-tuning, the weights restored after
each prompt) for each selector. The table is `testtime lm compare`'s: per domain, each method as
% of none (standard error across prompts), the mean steps, and Spearman's rank correlation between
the uncertainty reduction sigma_0^2 - sigma_n^2 and the realised gain. Selection time is measured
separately at K=--k, N=--select-n for NN and SIFT on the same candidates (median of --repeats runs).
Results are resumable: OUT/METHOD/results/ID.json, one file per prompt, exactly as `lm eval` writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from testtime.jobs import Finished
from testtime.lm import compare
from testtime.lm.embed import load_embedder
from testtime.lm.evaluate import make_host, read_prompts, run_eval
from testtime.lm.memory import Memory
from testtime.lm.records import PromptResult
from testtime.lm.select import select_nn, select_sift
from testtime.lm.settings import EvalConfig, PromptLora, PromptTTT
from testtime.models import load_model

ALIASES = {"nn-f": "nn-repeats", "adaptive": "sift-adaptive", "adaptive-sift": "sift-adaptive"}
"""The paper's names for methods -> the run directory names `lm eval` uses."""


def pick_prompts(path: Path, per_domain: int, skip: int = 0, order: str = "id") -> list:
    """Each domain's prompts in `order` (`id`: sorted by id; `hash`: by the SHA-256 of the id, which mixes the
    sources of a domain, e.g. math modules or code packages, whose ids sort together), then [skip:skip+per_domain]."""
    pf = read_prompts(path)
    for err in pf.errors:
        print(f"skipped: {err}")
    by_domain: dict[str, list] = {}
    key = (lambda p: p.id) if order == "id" else (lambda p: hashlib.sha256(p.id.encode("utf-8")).hexdigest())
    for p in sorted(pf.prompts, key=key):
        by_domain.setdefault(p.domain, []).append(p)
    return [p for d in sorted(by_domain) for p in by_domain[d][skip:skip + per_domain]]


def selection_speed(prompts, memory, embedder, k: int, n: int, lam: float, repeats: int) -> dict:
    """Median milliseconds per prompt of NN and SIFT on the same K candidates (search excluded)."""
    queries = embedder.embed([p.prompt for p in prompts])
    nn_ms, sift_ms, search_ms = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        cand = memory.embeddings[memory.search(q, k)]
        search_ms.append(1000 * (time.perf_counter() - t0))
        nn_ms.append(min(select_nn(q, cand, min(n, len(cand)), lam=lam).seconds for _ in range(repeats)) * 1000)
        sift_ms.append(min(select_sift(q, cand, n, lam=lam).seconds for _ in range(repeats)) * 1000)
    return {"nn_ms": statistics.median(nn_ms), "sift_ms": statistics.median(sift_ms),
            "search_ms": statistics.median(search_ms), "prompts": len(queries), "k": k, "n": n}


def alpha_stops(prompts, memory, embedder, k: int, n: int, lam: float, alphas: list[float]) -> dict:
    """Steps adaptive SIFT takes (of n) on these prompts for each alpha: selection only, no training.

    For choosing alpha by the compute it spends, before any bits per byte are seen.
    """
    queries = embedder.embed([p.prompt for p in prompts])
    cands = [memory.embeddings[memory.search(q, k)] for q in queries]
    out = {}
    for a in alphas:
        steps = sorted(len(select_sift(q, c, n, lam=lam, alpha=a).indices) for q, c in zip(queries, cands))
        out[a] = {"min": steps[0], "median": statistics.median(steps), "mean": statistics.fmean(steps),
                  "max": steps[-1], "at_n": sum(s == n for s in steps)}
        print(f"alpha {a:g}: steps min {steps[0]}, median {out[a]['median']:g}, mean {out[a]['mean']:.1f}, "
              f"max {steps[-1]}; {out[a]['at_n']}/{len(steps)} prompts take all {n}")
    return out


def method_args(method: str, args: argparse.Namespace) -> PromptTTT:
    """The per-prompt TTT settings of one method name (`sift-adaptive`: SIFT with --alpha)."""
    select, adaptive = ("sift", args.alpha) if method == "sift-adaptive" else (method, None)
    return PromptTTT(select=select, n=args.n, k=args.k, lam=args.lam, lr=args.lr, chunk_tokens=args.chunk_tokens,
                     adaptive=adaptive, trace=args.trace and method == "sift")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True,
                    help="Directory written by python -m dev.corpus.")
    ap.add_argument("--index", type=Path, required=True, help="Index of the corpus memory (testtime lm index).")
    ap.add_argument("--out", type=Path, default=Path("runs/sift-bench"))
    ap.add_argument("--prompts-per-domain", type=int, default=20)
    ap.add_argument("--order", choices=("id", "hash"), default="id",
                    help="Order of each domain's prompts before --skip/--prompts-per-domain: by id, or by the SHA-256 "
                         "of the id (a split that mixes a domain's sources; the issue-32 splits).")
    ap.add_argument("--skip-per-domain", type=int, default=0,
                    help="Skip each domain's first S prompts (by id): e.g. a development split for choosing lr.")
    ap.add_argument("--methods", default="none,us,nn,nn-f,sift,sift-adaptive",
                    help="Comma-separated: none, us, nn, nn-f (= nn-repeats), sift, sift-adaptive, random.")
    ap.add_argument("--n", type=int, default=50, help="Chunks selected = training steps per prompt.")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=1.0, help="Adaptive SIFT's alpha (for sift-adaptive).")
    ap.add_argument("--alpha-stops", default="",
                    help="Comma-separated alphas: print the steps adaptive SIFT would take for each, then exit.")
    ap.add_argument("--select-n", type=int, default=50, help="N for the selection-speed measurement.")
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-rank", type=int, default=16, help="0 = full fine-tuning per prompt.")
    ap.add_argument("--chunk-tokens", type=int, default=256, help="Training tokens per selected chunk.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
    ap.add_argument("--trace", action="store_true",
                    help="sift: also measure the bits after every step, and print adaptive SIFT's compute-gain curve "
                         "(steps taken vs %% of none at each of --curve-alphas) read off that trace.")
    ap.add_argument("--curve-alphas", default="0.5,1,1.5,2,3,5,10", help="with --trace: comma-separated alphas")
    args = ap.parse_args()
    args.methods = [ALIASES.get(m.strip(), m.strip()) for m in args.methods.split(",") if m.strip()]
    if "none" not in args.methods:
        ap.error("--methods must include none: every method is measured as % of it")
    return args


def run_method(method: str, args: argparse.Namespace, parts: tuple, prompts: list) -> float:
    """Run (or resume) one method into OUT/METHOD/; returns the wall seconds."""
    host, tokenizer, memory, embedder = parts
    ttt = method_args(method, args)
    done = {"n": 0}

    def progress(event):
        if not isinstance(event, Finished):
            return
        done["n"] += 1
        record = PromptResult.from_json(event.record, trusted=True)  # the job layer hands records on as JSON
        tag = "resumed" if event.resumed else f"{record.bpb:.3f} bpb" if record.ok else "failed"
        print(f"  {method:>13} {done['n']:3d}/{len(prompts)} {event.item_id}: {tag}", flush=True)

    config = EvalConfig(index=str(args.index), prompts=str(args.corpus / "prompts.jsonl"),
                        lora=PromptLora(r=args.lora_rank, alpha=2 * args.lora_rank))
    t0 = time.perf_counter()
    _, failures = run_eval(host, tokenizer, memory, embedder, prompts, ttt, args.out, config=config, emit=progress)
    if failures:
        print(f"  {method}: {len(failures)} prompts failed: {failures[0].error}")
    return time.perf_counter() - t0


def print_curve(runs: list, args: argparse.Namespace) -> list[dict] | None:
    """Adaptive SIFT's compute-gain curve from the traced sift run (None without one)."""
    by = {r.label: r for r in runs}
    if "sift" not in by or "none" not in by:
        return None
    curve = compare.adaptive_curve(by["sift"], by["none"], [float(a) for a in args.curve_alphas.split(",")])
    print(f"\nadaptive SIFT read off the sift run's trace ({curve[0]['prompts']} prompts): alpha -> mean steps, "
          "% of none")
    for point in curve:
        print(f"  alpha {point['alpha']:g}: {point['steps']:.1f} steps, {point['pct']:.1f}%")
    return curve


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = pick_prompts(args.corpus / "prompts.jsonl", args.prompts_per_domain, args.skip_per_domain, args.order)
    memory = Memory.load(args.index)
    loaded = load_model("embedded")
    embedder = load_embedder(memory.meta.get("embedder", "minilm"), lm=loaded.model, tokenizer=loaded.tokenizer) \
        if memory.meta.get("embedder") == "lm" else load_embedder("minilm")
    print(f"{len(prompts)} prompts, memory of {len(memory):,} chunks (d={memory.dim}), "
          f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"N={args.n} K={args.k} lr={args.lr} " + ("full fine-tuning" if args.lora_rank == 0
                                                     else f"LoRA rank {args.lora_rank}"))
    if args.alpha_stops:
        alpha_stops(prompts, memory, embedder, args.k, args.n, args.lam,
                    [float(a) for a in args.alpha_stops.split(",")])
        return
    speed = selection_speed(prompts, memory, embedder, args.k, args.select_n, args.lam, args.repeats)
    print(f"selection at K={args.k}, N={args.select_n}: NN {speed['nn_ms']:.2f} ms, SIFT {speed['sift_ms']:.2f} ms "
          f"(+{speed['sift_ms'] - speed['nn_ms']:.2f} ms); faiss search {speed['search_ms']:.2f} ms")

    parts = (make_host(loaded.model, PromptLora(r=args.lora_rank, alpha=2 * args.lora_rank)), loaded.tokenizer,
             memory, embedder)
    seconds = {m: run_method(m, args, parts, prompts) for m in args.methods}
    runs = [r for r in compare.find_runs([args.out]) if r.label in args.methods]
    runs.sort(key=lambda r: args.methods.index(r.label))
    wanted = {p.id for p in prompts}
    for r in runs:  # only this invocation's prompts (OUT may hold more from a larger earlier run)
        r.results = {pid: rec for pid, rec in r.results.items() if pid in wanted}
    table = compare.compare(runs)
    print("\n" + "\n".join(compare.markdown(table)))
    curve = print_curve(runs, args) if args.trace else None
    summary = {"speed": speed, "seconds": seconds, "args": {k: str(v) for k, v in vars(args).items()}, "curve": curve,
               "comparison": {"base": table.base, "steps": table.steps, "rho": table.rho, "missing": table.missing,
                              "cells": {f"{d}|{m}": dataclasses.asdict(c) for (d, m), c in table.cells.items()}}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nseconds per method: {', '.join(f'{m} {s:.0f}' for m, s in seconds.items())}; "
          f"summary in {args.out / 'summary.json'}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
