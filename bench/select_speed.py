"""Benchmark: milliseconds per prompt for NN and SIFT selection (numpy, CPU).

Each prompt gets its own random L2-normalised candidate set, as after `preselect`; the data is
drawn outside the timed region. Prints markdown table rows for BENCHMARKS.md.

    .venv/bin/python bench/select_speed.py                        # K=200, N=50, d=384, 200 prompts
    .venv/bin/python bench/select_speed.py --k 1000 --n 100 --prompts 50
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from testtime.lm.select import Selection, select_nn, select_sift


def time_per_prompt(select: Callable[[np.ndarray, np.ndarray, int], Selection], k: int, n: int, d: int,
                    prompts: int, seed: int) -> np.ndarray:
    """(prompts,) milliseconds of `select` per prompt; the same data for every method (same seed)."""
    rng = np.random.default_rng(seed)
    ms = np.empty(prompts)
    for p in range(prompts):
        x = rng.standard_normal((k, d))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        q = rng.standard_normal(d)
        q /= np.linalg.norm(q)
        start = time.perf_counter()
        select(q, x, n)
        ms[p] = 1e3 * (time.perf_counter() - start)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=200, help="candidates per prompt")
    parser.add_argument("--n", type=int, default=50, help="picks per prompt")
    parser.add_argument("--d", type=int, default=384, help="embedding dimension")
    parser.add_argument("--prompts", type=int, default=200, help="prompts timed per method")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    methods: dict[str, Callable[[np.ndarray, np.ndarray, int], Selection]] = {
        "nn": select_nn,
        "sift (lam 0.01)": select_sift,
    }
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores, "
          f"numpy {np.__version__} {threads} threads | K={args.k} N={args.n} d={args.d} "
          f"| {args.prompts} prompts | {time.strftime('%Y-%m-%d')}")
    header = "| machine | date | method | K | N | d | mean ms | p50 ms | p95 ms |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, select in methods.items():
        select(np.ones(args.d) / np.sqrt(args.d), np.eye(args.k, args.d), min(args.n, args.k))  # warm-up
        ms = time_per_prompt(select, args.k, args.n, args.d, args.prompts, args.seed)
        p50, p95 = np.percentile(ms, [50, 95])
        print(f"| {platform.node()} | {time.strftime('%Y-%m-%d')} | {name} | {args.k} | {args.n} | {args.d} "
              f"| {ms.mean():.3f} | {p50:.3f} | {p95:.3f} |", flush=True)


if __name__ == "__main__":
    main()
