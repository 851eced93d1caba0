"""Benchmark: milliseconds per prompt for NN, SIFT and US selection at several K (numpy, CPU).

Each prompt gets its own random L2-normalised candidate set, as after `preselect`; the data is
drawn outside the timed region, and every method sees the same data (same seed). Two NN
figures: `nn` is `select_nn` as `lm eval` runs it (it also computes the posterior sigma of its
picks, for the records), `nn (top-N only)` the bare ranking, which is what SIFT's extra time is
measured against. Prints markdown table rows for BENCHMARKS.md.

    .venv/bin/python bench/select_speed.py                                # K=200,1000,10000, N=50, d=384
    .venv/bin/python bench/select_speed.py --k 1000 --n 100 --prompts 20
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import numpy as np

from testtime.lm.select import select_nn, select_sift, select_us

Select = Callable[[np.ndarray, np.ndarray, int], object]


def top_n(q: np.ndarray, x: np.ndarray, n: int) -> list[int]:
    """Nearest-neighbour selection with nothing else: the n largest <x, x*>."""
    return [int(i) for i in np.argsort(-(x @ q), kind="stable")[:n]]


METHODS: dict[str, Select] = {
    "nn (top-N only)": top_n,
    "nn": select_nn,
    "sift (lam 0.01)": select_sift,
    "us": select_us,
}


def problem(rng: np.random.Generator, k: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    x = rng.standard_normal((k, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal(d)
    return q / np.linalg.norm(q), x


def time_per_prompt(select: Select, k: int, n: int, d: int, prompts: int, seed: int) -> np.ndarray:
    """(prompts,) milliseconds of `select` per prompt; the same data for every method (same seed)."""
    rng = np.random.default_rng(seed)
    ms = np.empty(prompts)
    for p in range(prompts):
        q, x = problem(rng, k, d)
        start = time.perf_counter()
        select(q, x, n)
        ms[p] = 1e3 * (time.perf_counter() - start)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", default="200,1000,10000", help="candidates per prompt, comma-separated")
    parser.add_argument("--n", type=int, default=50, help="picks per prompt")
    parser.add_argument("--d", type=int, default=384, help="embedding dimension")
    parser.add_argument("--prompts", type=int, default=50, help="prompts timed per method and K")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores, "
          f"numpy {np.__version__} {threads} threads | N={args.n} d={args.d} | {args.prompts} prompts per K "
          f"| {time.strftime('%Y-%m-%d')}")
    header = "| method | K | N | d | mean ms | p50 ms | p95 ms | SIFT extra over top-N NN (mean ms) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for k in (int(v) for v in args.k.split(",")):
        means: dict[str, float] = {}
        for name, select in METHODS.items():
            select(*problem(np.random.default_rng(args.seed + 1), k, args.d), min(args.n, k))  # warm-up
            ms = time_per_prompt(select, k, args.n, args.d, args.prompts, args.seed)
            means[name] = float(ms.mean())
            p50, p95 = np.percentile(ms, [50, 95])
            extra = f"{means[name] - means['nn (top-N only)']:+.3f}" if name.startswith("sift") else ""
            print(f"| {name} | {k:,} | {args.n} | {args.d} | {ms.mean():.3f} | {p50:.3f} | {p95:.3f} | {extra} |",
                  flush=True)


if __name__ == "__main__":
    main()
