"""Benchmark: seconds to load a model in a fresh process, GGUF read directly vs its cached conversion.

Each load runs in its own Python process (as a command or a Ray worker would) and is timed from
interpreter start to a ready model and tokenizer, imports included. The cache lives in a temporary
folder, so the first cached load is the one-time conversion.

    .venv/bin/python bench/model_load.py                  # the embedded SmolLM2-135M GGUF
    .venv/bin/python bench/model_load.py --model x.gguf
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

LOAD = "import torch; torch.set_num_threads({threads}); from testtime.models import load_model; load_model({model!r})"


def timed_load(model: str, cache: str, threads: int) -> float:
    env = {**os.environ, "TESTTIME_CACHE": cache}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", LOAD.format(model=model, threads=threads)], env=env, check=True,
                   capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a Ray worker's default is 1)")
    args = parser.parse_args()
    cache = tempfile.mkdtemp(prefix="testtime-bench-cache-")
    try:
        rows = [("GGUF read directly (TESTTIME_CACHE=off)", timed_load(args.model, "off", args.threads)),
                ("first load: GGUF read and converted into the cache", timed_load(args.model, cache, args.threads)),
                ("later load: the cached safetensors conversion", timed_load(args.model, cache, args.threads))]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"# bench/model_load.py on {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"model {args.model}, {args.threads} torch thread(s)\n")
    print("| load | seconds |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
