"""Benchmark: seconds per TTT step, peak memory, and greedy decoding tokens/s, old code beside new.

Uses the embedded model (or --model) with the default LoRA of `testtime arc solve`, on real ARC
text (ARC-AGI-1 training demonstrations in the default format, cut to exactly L tokens). The loss
is on the last quarter of each sequence (`--labelled`), as TTT puts it on the answer alone.

Each code version runs in its own process (fresh peak memory): the working tree, and with
`--baseline REV` also the package as it was at git revision REV (its `src/` extracted to a
temporary folder and put first on PYTHONPATH), so the two are measured in one run on one machine.
Decoding: the new code's `testtime.decode.greedy` where it exists, else `model.generate`.

    .venv/bin/python bench/arc_ttt.py --baseline 9777c77        # old beside new
    .venv/bin/python bench/arc_ttt.py --lengths 1024 --steps 2 --profile
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def arc_tokens(tokenizer, n: int) -> list[int]:
    """At least n tokens of ARC demonstrations in the default text format, cut to n."""
    from testtime.arc.format import DEFAULT_FORMAT, format_demo
    from testtime.arc.task import load_tasks

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


def peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def decoder():
    """(name, fn(model, prompt_ids, n) -> None): the fast decoder where this code has one, else generate."""
    try:
        from testtime.decode import greedy
    except ImportError:
        def hf(model, ids, n):
            x = torch.tensor(ids, device=model.device)
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        return "generate", hf
    return "greedy", lambda model, ids, n: greedy(model, ids, max_new_tokens=n, pad_id=0)


def measure(args: argparse.Namespace) -> list[dict]:
    """This process's code: one row per length (TTT step, memory) and per decoding batch."""
    try:
        from testtime.batching import TrainingSequence
    except ImportError:  # before the job-layer redesign it lived in finetune
        from testtime.finetune import Sequence as TrainingSequence
    from testtime.finetune import LoraArgs, TrainArgs, train
    from testtime.lora import AdapterHost
    from testtime.models import load_model

    kwargs = {"dtype": args.dtype} if args.dtype else {}
    loaded = load_model(args.model, **kwargs)
    model, tok, device = loaded.model, loaded.tokenizer, loaded.device
    host = AdapterHost(model, LoraArgs(r=args.lora_rank, alpha=2 * args.lora_rank))
    rows = []
    for n in (int(x) for x in args.lengths.split(",")):
        ids = arc_tokens(tok, n)
        start = n - int(n * args.labelled)
        seq = TrainingSequence(input_ids=ids, labels=[-100] * start + ids[start:])
        reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        host.fresh(0)
        extra = {"gradient_checkpointing": True} if args.checkpointing else {}
        train(host.model, [seq], TrainArgs(max_steps=1, lr=1e-4, log_every=10**9, **extra))  # warm-up
        stats = train(host.model, [seq], TrainArgs(max_steps=args.steps, lr=1e-4, log_every=10**9, **extra))
        rows.append({"kind": "step", "tokens": n, "step_s": stats.seconds / stats.steps,
                     "peak_mib": peak_mib(device), "dtype": str(loaded.dtype).removeprefix("torch."),
                     "checkpointing": args.checkpointing})
        if args.profile:
            profile_step(host.model, seq, train, TrainArgs)
        host.drop()
    name, decode = decoder()
    ids = arc_tokens(tok, args.decode_prompt)
    for batch in (int(b) for b in args.batches.split(",") if b):
        prompts = [ids] * batch
        with torch.inference_mode():
            decode(model, prompts, 2)  # warm-up
            t0 = time.perf_counter()
            decode(model, prompts, 1)  # the prefill and the first token
            prefill = time.perf_counter() - t0
            t0 = time.perf_counter()
            decode(model, prompts, args.decode + 1)
            seconds = time.perf_counter() - t0 - prefill  # args.decode tokens after the first
        rows.append({"kind": "decode", "decoder": name, "batch": batch, "prompt": args.decode_prompt,
                     "tok_s": batch * args.decode / seconds, "prefill_s": prefill})
        if args.profile:
            profile_decode(model, prompts, decode)
    return rows


def profile_step(model, seq, train, TrainArgs) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train(model, [seq], TrainArgs(max_steps=1, lr=1e-4, log_every=10**9))
    print(f"# profile: one TTT step on {len(seq.input_ids)} tokens", file=sys.stderr)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10), file=sys.stderr)


def profile_decode(model, prompts, decode) -> None:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(model, prompts, 16)
    print(f"# profile: prefill + 16 decoded tokens at batch {len(prompts)}", file=sys.stderr)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10), file=sys.stderr)


def run_version(label: str, src: Path, argv: list[str]) -> list[dict]:
    """This script in a fresh process with `src` first on the import path; its rows, labelled."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, __file__, "--json", *argv], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    sys.stderr.write(out.stderr if "# profile" in out.stderr else "")
    return [{**row, "code": label} for row in json.loads(out.stdout.splitlines()[-1])]


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def print_tables(rows: list[dict]) -> None:
    print("| code | tokens | dtype | checkpointing | s / TTT step | peak memory (MiB) |")
    print("|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "step"):
        ckpt = "on" if r.get("checkpointing") else "off"
        print(f"| {r['code']} | {r['tokens']:,} | {r['dtype']} | {ckpt} | {r['step_s']:.2f} | {r['peak_mib']:,.0f} |")
    print()
    print("| code | decoder | batch | prompt tokens | decode tok/s (all rows) | prefill s |")
    print("|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "decode"):
        print(f"| {r['code']} | {r['decoder']} | {r['batch']} | {r['prompt']:,} | {r['tok_s']:,.1f} "
              f"| {r['prefill_s']:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="default: the embedded SmolLM2-135M GGUF")
    parser.add_argument("--dtype", default=None, help="float32|bfloat16|auto (new code only; default: its default)")
    parser.add_argument("--lengths", default="1024,2048,4096", help="comma-separated TTT sequence lengths")
    parser.add_argument("--labelled", type=float, default=0.25, help="fraction of each sequence carrying loss")
    parser.add_argument("--steps", type=int, default=2, help="timed TTT steps per length (after 1 warm-up)")
    parser.add_argument("--decode", type=int, default=32, help="tokens decoded per row")
    parser.add_argument("--decode-prompt", type=int, default=1024, help="prompt tokens before decoding")
    parser.add_argument("--batches", default="1,8", help="comma-separated decoding batch sizes ('' for none)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--checkpointing", action="store_true", help="TTT steps with activation checkpointing")
    parser.add_argument("--baseline", default=None, help="also measure the code at this git revision")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops (stderr)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.json:
        import testtime
        print(f"# {testtime.__file__}", file=sys.stderr)
        print(json.dumps(measure(args)))
        return
    own = [a for i, a in enumerate(argv) if a != "--baseline" and (i == 0 or argv[i - 1] != "--baseline")]
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
          f"torch {torch.__version__} {torch.get_num_threads()} threads | LoRA r={args.lora_rank} | "
          f"loss on {args.labelled:.0%} of tokens | {time.strftime('%Y-%m-%d')}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.baseline:
            old_argv = [a for i, a in enumerate(own) if a != "--dtype" and (i == 0 or own[i - 1] != "--dtype")]
            rows += run_version(f"old ({args.baseline})", extract(args.baseline, Path(tmp)), old_argv)
        rows += run_version("new", ROOT / "src", own)
    print_tables(rows)


if __name__ == "__main__":
    main()
