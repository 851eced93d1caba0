"""Benchmark: seconds per TTT step, training and decoding tokens/s, peak memory, by sequence length.

Uses the embedded model (or --model) with the default LoRA of `testtime arc solve`, on real ARC
text (ARC-AGI-1 training demonstrations in the default format, cut to exactly L tokens).

    .venv/bin/python bench/arc_ttt.py                       # L = 1024, 2048, 4096
    .venv/bin/python bench/arc_ttt.py --lengths 1024 --steps 3 --decode 64
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from testtime.arc.format import DEFAULT_FORMAT, format_demo
from testtime.arc.task import load_tasks
from testtime.batching import TrainingSequence
from testtime.finetune import LoraArgs, TrainArgs, train
from testtime.lora import AdapterHost
from testtime.models import load_model


def arc_tokens(tokenizer, n: int) -> list[int]:
    """At least n tokens of ARC demonstrations in the default text format, cut to n."""
    ids: list[int] = []
    for task in load_tasks("arc-agi-1/training").tasks:
        for ex in task.train:
            ids += tokenizer(format_demo(ex, DEFAULT_FORMAT), add_special_tokens=False)["input_ids"]
            if len(ids) >= n:
                return ids[:n]
    raise ValueError(f"not enough ARC text for {n} tokens")


def reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return peak_rss_mib()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M GGUF")
    parser.add_argument("--lengths", default="1024,2048,4096", help="comma-separated sequence lengths")
    parser.add_argument("--steps", type=int, default=3, help="timed TTT steps per length (after 1 warm-up)")
    parser.add_argument("--decode", type=int, default=64, help="tokens decoded per length (greedy, KV cache)")
    parser.add_argument("--lora-rank", type=int, default=16)
    args = parser.parse_args()

    loaded = load_model(args.model)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    host = AdapterHost(model, LoraArgs(r=args.lora_rank, alpha=2 * args.lora_rank))
    threads = torch.get_num_threads()
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores, "
          f"torch {torch.__version__} {threads} threads | {device} {loaded.dtype} | model {loaded.name} "
          f"| LoRA r={args.lora_rank} | {time.strftime('%Y-%m-%d')}")
    header = "| tokens | s / TTT step | train tok/s | decode tok/s | prefill s | peak memory (MiB) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for n in (int(x) for x in args.lengths.split(",")):
        ids = arc_tokens(tok, n)
        seq = TrainingSequence(input_ids=ids, labels=list(ids))
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        host.fresh(0)
        train(host.model, [seq], TrainArgs(max_steps=1, lr=1e-4, log_every=10**9))  # warm-up
        stats = train(host.model, [seq], TrainArgs(max_steps=args.steps, lr=1e-4, log_every=10**9))
        step_s = stats.seconds / stats.steps
        host.drop()
        prompt = torch.tensor([ids], device=device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model(prompt)  # prefill alone, to separate it from per-token decoding
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.decode,
                           min_new_tokens=args.decode, do_sample=False, pad_token_id=tok.pad_token_id)
            decode_s = time.perf_counter() - t0 - prefill
        print(f"| {n:,} | {step_s:.2f} | {stats.tokens / stats.seconds:,.0f} | {args.decode / decode_s:,.1f} "
              f"| {prefill:.2f} | {peak_mib(device):,.0f} |", flush=True)


if __name__ == "__main__":
    main()
