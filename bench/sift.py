"""Benchmark: bits per byte after test-time fine-tuning with none / NN / SIFT selection, per domain.

Needs the offline corpus and an index of its memory:

    .venv/bin/python -m testtime.tools.corpus --out runs/corpus
    .venv/bin/testtime lm index runs/corpus/memory.jsonl --out runs/corpus-index
    .venv/bin/python bench/sift.py --corpus runs/corpus --index runs/corpus-index --out runs/sift-bench

For each held-out prompt (the first --prompts-per-domain of each domain, by id) it measures the
continuation's bits per byte with the untouched embedded model ("none"), and after one Adam step
per selected chunk on a fresh LoRA, for nearest-neighbour and SIFT selection. Selection time is
measured separately at K=--k, N=--select-n for both selectors on the same candidates (median of
--repeats runs), so the speed figure uses the paper's N=50 even when fewer training steps are
taken on a CPU. Results are resumable (one file per prompt and method under --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from testtime.finetune import LoraArgs
from testtime.jobs import Finished
from testtime.lm.embed import load_embedder
from testtime.lm.evaluate import EvalConfig, read_prompts, run_eval
from testtime.lm.memory import Memory
from testtime.lm.select import select_nn, select_sift
from testtime.lm.ttft import TTFTArgs, summarize
from testtime.lora import AdapterHost
from testtime.models import load_model


def pick_prompts(path: Path, per_domain: int) -> list:
    pf = read_prompts(path)
    for err in pf.errors:
        print(f"skipped: {err}")
    by_domain: dict[str, list] = {}
    for p in sorted(pf.prompts, key=lambda p: p.id):
        by_domain.setdefault(p.domain, []).append(p)
    return [p for d in sorted(by_domain) for p in by_domain[d][:per_domain]]


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True,
                    help="Directory written by python -m testtime.tools.corpus.")
    ap.add_argument("--index", type=Path, required=True, help="Index of the corpus memory (testtime lm index).")
    ap.add_argument("--out", type=Path, default=Path("runs/sift-bench"))
    ap.add_argument("--prompts-per-domain", type=int, default=20)
    ap.add_argument("--methods", default="none,nn,sift")
    ap.add_argument("--n", type=int, default=50, help="Chunks selected = training steps per prompt.")
    ap.add_argument("--k", type=int, default=200)
    ap.add_argument("--select-n", type=int, default=50, help="N for the selection-speed measurement.")
    ap.add_argument("--lam", type=float, default=0.01)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--chunk-tokens", type=int, default=256, help="Training tokens per selected chunk.")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default).")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    prompts = pick_prompts(args.corpus / "prompts.jsonl", args.prompts_per_domain)
    memory = Memory.load(args.index)
    loaded = load_model("embedded")
    embedder = load_embedder(memory.meta.get("embedder", "minilm"), lm=loaded.model, tokenizer=loaded.tokenizer) \
        if memory.meta.get("embedder") == "lm" else load_embedder("minilm")
    print(f"{len(prompts)} prompts, memory of {len(memory):,} chunks (d={memory.dim}), "
          f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")

    speed = selection_speed(prompts, memory, embedder, args.k, args.select_n, args.lam, args.repeats)
    print(f"selection at K={args.k}, N={args.select_n}: NN {speed['nn_ms']:.2f} ms, SIFT {speed['sift_ms']:.2f} ms "
          f"(+{speed['sift_ms'] - speed['nn_ms']:.2f} ms); faiss search {speed['search_ms']:.2f} ms")

    host = AdapterHost(loaded.model, LoraArgs(r=args.lora_rank, alpha=2 * args.lora_rank))
    tables, seconds = {}, {}
    for method in args.methods.split(","):
        ttft = TTFTArgs(select=method, n=args.n, k=args.k, lam=args.lam, lr=args.lr, chunk_tokens=args.chunk_tokens)
        t0 = time.perf_counter()
        done = {"n": 0}

        def progress(event, method=method, done=done):
            if not isinstance(event, Finished):
                return
            done["n"] += 1
            tag = "resumed" if event.resumed else f"{event.record.get('bpb', float('nan')):.3f} bpb"
            print(f"  {method:>5} {done['n']:3d}/{len(prompts)} {event.item_id}: {tag}", flush=True)

        config = EvalConfig(index=str(args.index), prompts=str(args.corpus / "prompts.jsonl"),
                            lora=LoraArgs(r=args.lora_rank, alpha=2 * args.lora_rank))
        results, failures = run_eval(host, loaded.tokenizer, memory, embedder, prompts, ttft, args.out,
                                     config=config, emit=progress)
        seconds[method] = time.perf_counter() - t0
        tables[method] = summarize(results)
        if failures:
            print(f"  {method}: {len(failures)} prompts failed: {failures[0]['error']}")

    domains = sorted({d for t in tables.values() for d in t if d != "all"}) + ["all"]
    methods = list(tables)
    print("\n| domain | prompts | " + " | ".join(f"{m} bpb" for m in methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for d in domains:
        n = next(t[d]["prompts"] for t in tables.values() if d in t)
        print(f"| {d} | {n} | " + " | ".join(f"{tables[m][d]['bpb']:.4f}" if d in tables[m] else "-"
                                            for m in methods) + " |")
    summary = {"speed": speed, "bpb": tables, "seconds": seconds, "args": {k: str(v) for k, v in vars(args).items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nseconds per method: {', '.join(f'{m} {s:.0f}' for m, s in seconds.items())}; "
          f"summary in {args.out / 'summary.json'}")


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
