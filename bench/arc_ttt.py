"""Benchmark: seconds per TTT step, peak memory, and greedy decoding tokens/s, old code beside new.

Uses the embedded model (or --model) with the default LoRA of `testtime arc solve`, on real ARC
text (ARC-AGI-1 training demonstrations in the default format, cut to exactly L tokens). The loss
is on the last quarter of each sequence (`--labelled`), as TTT puts it on the answer alone.

Each code version runs in its own process (fresh peak memory): the working tree, and with
`--baseline REV` also the package as it was at git revision REV (its `src/` extracted to a
temporary folder and put first on PYTHONPATH), so the two are measured in one run on one machine.
Decoding: the new code's `testtime.decode.greedy` where it exists, else `model.generate`.

    .venv/bin/python bench/arc_ttt.py --baseline 5c28eb8        # old beside new, each at its default dtype
    .venv/bin/python bench/arc_ttt.py --baseline 5c28eb8 --dtypes float32,bfloat16 --lengths 1024,4096
    .venv/bin/python bench/arc_ttt.py --lengths 1024 --steps 2 --profile
    .venv/bin/python bench/arc_ttt.py --lengths 1024 --steps 3 --batches "" --compile   # torch.compile's step

The roofline. Before the code versions run, this process measures the machine's matmul rate in
float32 and in bfloat16 on the step's own shapes (every projection of one decoder layer, forward
x @ W.T and the backward's input gradient dy @ W, at the step's token count), and each step row
is reported as a multiple of its arithmetic floor: FLOPs / rate of the row's dtype. The FLOPs of
one LoRA step on T tokens with P labelled positions (c = hidden size, H query heads of size d,
V vocabulary, W = the decoder layers' projection weights, A = the LoRA matrices' entries, n layers):

    projections   2 * T * W   forward   + 2 * T * W   input gradient (the base is frozen)
    LoRA          3 * 2 * T * A         (forward, input gradient, weight gradient)
    output head   2 * P * c * V forward + 2 * P * c * V input gradient (logits at P positions only)
    attention     n * 6 * T * (T + 1) * H * d   (causal: T(T+1)/2 query-key pairs, each 2 * d FLOPs
                  in each of 6 matmuls: Q K^T and P V forward, dP, dV, dQ and dK backward)

Embedding look-ups, norms, activations and the optimizer are not counted (no matmul). The floor
is what a step would take if every FLOP ran at the measured matmul rate: the figure that compares
across CPUs, and across dtypes on one CPU.
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
    from testtime.finetune import train
    from testtime.lora import AdapterHost
    from testtime.models import load_model
    try:
        from testtime.settings import LoraArgs, TrainArgs
    except ImportError:  # before the settings were declared once they lived in finetune
        from testtime.finetune import LoraArgs, TrainArgs

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
        trained = torch.compile(host.model) if args.compile else host.model  # inductor, default mode
        t0 = time.perf_counter()
        train(trained, [seq], TrainArgs(max_steps=1, lr=1e-4, log_every=10**9, **extra))  # warm-up (compiles)
        first = time.perf_counter() - t0
        stats = train(trained, [seq], TrainArgs(max_steps=args.steps, lr=1e-4, log_every=10**9, **extra))
        rows.append({"kind": "step", "tokens": n, "step_s": stats.seconds / stats.steps, "first_s": first,
                     "peak_mib": peak_mib(device), "dtype": str(loaded.dtype).removeprefix("torch."),
                     "checkpointing": args.checkpointing, "compile": "on" if args.compile else "off"})
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


def model_shapes(model_name: str | None) -> dict:
    """The numbers the FLOP count needs, read from the model's config (no weights loaded)."""
    from testtime.models import load_model

    loaded = load_model(model_name, dtype="float32")
    cfg = loaded.model.config
    layer = loaded.model.model.layers[0]
    projections = [(m.in_features, m.out_features) for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    return {"layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "heads": cfg.num_attention_heads,
            "head_dim": getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads,
            "vocab": cfg.vocab_size, "projections": projections}


def step_flops(shapes: dict, tokens: int, labelled: int, rank: int) -> float:
    """The matmul FLOPs of one LoRA step (the module docstring's formula)."""
    n, t = shapes["layers"], tokens
    weights = n * sum(i * o for i, o in shapes["projections"])
    lora = n * sum(rank * (i + o) for i, o in shapes["projections"])
    head = 2 * labelled * shapes["hidden"] * shapes["vocab"]
    attention = n * 6 * t * (t + 1) * shapes["heads"] * shapes["head_dim"]
    return 4 * t * weights + 6 * t * lora + 2 * head + attention


def matmul_rate(shapes: dict, tokens: int, dtype: torch.dtype, repeats: int = 5) -> float:
    """FLOP/s of this process's matmuls on one decoder layer's projections at `tokens` rows, forward
    (x @ W.T) and input gradient (dy @ W), in `dtype`: the best of `repeats` timed passes."""
    gen = torch.Generator().manual_seed(0)
    mats = [(torch.randn(tokens, i, generator=gen).to(dtype), torch.randn(o, i, generator=gen).to(dtype),
             torch.randn(tokens, o, generator=gen).to(dtype)) for i, o in shapes["projections"]]
    flops = sum(2 * 2 * tokens * i * o for i, o in shapes["projections"])

    def one_pass() -> float:
        t0 = time.perf_counter()
        for x, w, dy in mats:
            torch.nn.functional.linear(x, w)
            dy @ w
        return time.perf_counter() - t0

    one_pass()  # warm-up (oneDNN primitive creation)
    return flops / min(one_pass() for _ in range(repeats))


def roofline(args: argparse.Namespace) -> dict:
    """{(dtype, tokens): matmul FLOP/s} for float32 and bfloat16 at every benchmarked length."""
    shapes = model_shapes(args.model)
    rates = {(str(dt).removeprefix("torch."), n): matmul_rate(shapes, n, dt)
             for dt in (torch.float32, torch.bfloat16) for n in lengths(args)}
    return {"shapes": shapes, "rates": rates}


def lengths(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in args.lengths.split(",") if x]


def run_version(label: str, src: Path, argv: list[str]) -> list[dict]:
    """This script in a fresh process with `src` first on the import path; its rows, labelled."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, __file__, "--json", *argv], env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{label} failed:\n{out.stderr[-3000:]}")
    sys.stderr.write(out.stderr if "# profile" in out.stderr else "")
    return [{**row, "code": label} for row in json.loads(out.stdout.splitlines()[-1])]


def drop_flag(argv: list[str], name: str) -> list[str]:
    return [a for a in argv if a != name]


def drop_option(argv: list[str], name: str) -> list[str]:
    """`argv` without `name VALUE` (or `name=VALUE`)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == name:
            skip = True
        elif not a.startswith(name + "="):
            out.append(a)
    return out


def extract(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def print_tables(rows: list[dict], roof: dict, args: argparse.Namespace) -> None:
    print("| tokens | float32 matmul GFLOP/s | bfloat16 matmul GFLOP/s | step TFLOP | floor f32 (s) | floor bf16 (s) |")
    print("|---|---|---|---|---|---|")
    for n in lengths(args):
        flops = step_flops(roof["shapes"], n, int(n * args.labelled), args.lora_rank)
        f32, bf16 = roof["rates"][("float32", n)], roof["rates"][("bfloat16", n)]
        print(f"| {n:,} | {f32 / 1e9:,.0f} | {bf16 / 1e9:,.0f} | {flops / 1e12:.3f} | {flops / f32:.2f} "
              f"| {flops / bf16:.2f} |")
    print()
    print("| code | tokens | dtype | checkpointing | compile | first step s | s / TTT step | x floor "
          "| peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in (r for r in rows if r["kind"] == "step"):
        ckpt = "on" if r.get("checkpointing") else "off"
        n = r["tokens"]
        floor = step_flops(roof["shapes"], n, int(n * args.labelled), args.lora_rank) / \
            roof["rates"][(r["dtype"], n)]
        first = f"{r['first_s']:.2f}" if "first_s" in r else "-"
        print(f"| {r['code']} | {n:,} | {r['dtype']} | {ckpt} | {r.get('compile', 'off')} | {first} "
              f"| {r['step_s']:.2f} | {r['step_s'] / floor:.1f} | {r['peak_mib']:,.0f} |")
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
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated dtypes: old and new code each measured at every one (default: each "
                             "version's own default dtype)")
    parser.add_argument("--lengths", default="1024,2048,4096", help="comma-separated TTT sequence lengths")
    parser.add_argument("--labelled", type=float, default=0.25, help="fraction of each sequence carrying loss")
    parser.add_argument("--steps", type=int, default=2, help="timed TTT steps per length (after 1 warm-up)")
    parser.add_argument("--decode", type=int, default=32, help="tokens decoded per row")
    parser.add_argument("--decode-prompt", type=int, default=1024, help="prompt tokens before decoding")
    parser.add_argument("--batches", default="1,8", help="comma-separated decoding batch sizes ('' for none)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--checkpointing", action="store_true", help="TTT steps with activation checkpointing")
    parser.add_argument("--compile", action="store_true",
                        help="train through torch.compile(model) (new code only; the first step's time, compile "
                             "included, is reported apart)")
    parser.add_argument("--baseline", default=None, help="also measure the code at this git revision")
    parser.add_argument("--profile", action="store_true", help="print torch.profiler's top ops (stderr)")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args, argv = parser.parse_args(), sys.argv[1:]
    if args.json:
        import testtime
        print(f"# {testtime.__file__}", file=sys.stderr)
        print(json.dumps(measure(args)))
        return
    own = drop_option(argv, "--baseline")
    print(f"# {platform.node()} | {platform.processor() or platform.machine()} | {os.cpu_count()} cores | "
          f"torch {torch.__version__} {torch.get_num_threads()} threads | LoRA r={args.lora_rank} | "
          f"loss on {args.labelled:.0%} of tokens | {time.strftime('%Y-%m-%d')}", flush=True)
    roof = roofline(args)
    rows = []
    own = drop_option(drop_option(own, "--dtype"), "--dtypes")
    runs = [["--dtype", d] for d in args.dtypes.split(",")] if args.dtypes else [[]]
    with tempfile.TemporaryDirectory() as tmp:
        old_src = extract(args.baseline, Path(tmp)) if args.baseline else None
        for dtype in runs:
            if old_src is not None:  # each version at its own default dtype unless --dtypes names them
                rows += run_version(f"old ({args.baseline})", old_src, drop_flag(own, "--compile") + dtype)
            rows += run_version("new", ROOT / "src", own + (dtype or (["--dtype", args.dtype] if args.dtype else [])))
    print_tables(rows, roof, args)


if __name__ == "__main__":
    main()
