"""Benchmark: loading a memory index built by `testtime lm index`, and the top-K search per prompt.

Times `Memory.load` (shards, texts and index.faiss), then embeds the prompts with the index's own
embedder and times `Memory.search` alone, one prompt at a time, as `testtime lm eval` calls it.

    .venv/bin/python bench/memory_search.py --index /work/scratch/index-full \
        --prompts /work/scratch/corpus/prompts.jsonl --k 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", type=Path, required=True, help="an index directory (meta.json, index.faiss)")
    parser.add_argument("--prompts", type=Path, required=True, help="JSONL with a `prompt` field per line")
    parser.add_argument("--k", type=int, default=200, help="candidates per prompt")
    parser.add_argument("--limit", type=int, default=100, help="prompts timed at most")
    args = parser.parse_args()

    from testtime.lm.embed import load_embedder  # heavy imports after argument errors
    from testtime.lm.memory import Memory

    t0 = time.perf_counter()
    memory = Memory.load(args.index)
    load_s = time.perf_counter() - t0
    with args.prompts.open(encoding="utf-8") as fh:
        prompts = [json.loads(line)["prompt"] for line in fh if line.strip()][:args.limit]
    embedder = load_embedder(memory.meta.get("embedder", "minilm"))
    queries = embedder.embed(prompts)
    times = []
    for q in queries:
        t0 = time.perf_counter()
        memory.search(q, args.k)
        times.append((time.perf_counter() - t0) * 1000)
    ms = np.array(times)
    print(f"# bench/memory_search.py on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d')}; index {args.index}: {len(memory):,} chunks of dimension {memory.dim}\n")
    print("| measure | value |\n|---|---:|")
    print(f"| Memory.load | {load_s:.2f} s |")
    print(f"| search, K = {args.k}, {len(ms)} prompts: mean / p50 / p95 | "
          f"{ms.mean():.1f} / {np.percentile(ms, 50):.1f} / {np.percentile(ms, 95):.1f} ms |")


if __name__ == "__main__":
    main()
