"""Benchmark: does a bfloat16 base model lose anything against float32? The check behind `--dtype auto`.

For each of `make demo`'s five tasks (the embedded model with the shipped adapter merged, as
`arc solve` runs it): the task's TTT data as `make demo` builds it (24 sequences, at most 1,024
tokens), a fresh LoRA from the task's seed, and the loss of the first TTT step, once over a float32
base and once over a bfloat16 base (LoRA weights float32 in both). A step is one sequence (batch 1),
so the first step's loss is that of a single sequence; the mean loss over all of the task's TTT
sequences under the fresh LoRA (what the first step's loss estimates) is measured too. Also the
first step's time.

    .venv/bin/python bench/dtype_quality.py
    .venv/bin/python bench/dtype_quality.py --tasks 66e6c45b,00576224 --sequences 8
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import torch

DEMO_TASKS = "66e6c45b,00576224,be03b35f,4cd1b7b2,ca8de6ea"


def first_losses(dtype: str, task_ids: list[str], args: argparse.Namespace) -> dict[str, tuple[float, float, float]]:
    """{task id: (first TTT step's loss, its seconds, mean loss over all TTT sequences before training)}
    over a base loaded in `dtype`."""
    from testtime.arc.format import DEFAULT_FORMAT, TokenCounter
    from testtime.arc.pretrain import default_adapter
    from testtime.arc.settings import TTTArgs
    from testtime.arc.solve import task_seed
    from testtime.arc.task import load_tasks
    from testtime.arc.ttt_data import build_ttt_data
    from testtime.finetune import evaluate_loss, train
    from testtime.lora import AdapterHost
    from testtime.models import load_model
    from testtime.settings import LoraArgs, TrainArgs

    loaded = load_model(None, dtype=dtype)
    host = AdapterHost(loaded.model, LoraArgs(), start_adapter=default_adapter("embedded"))
    tasks = {t.id: t for t in load_tasks("arc-agi-1/evaluation").tasks}
    counter = TokenCounter(loaded.tokenizer, DEFAULT_FORMAT)
    out = {}
    for task_id in task_ids:
        seed = task_seed(0, task_id)
        data_args = dataclasses.replace(TTTArgs(), n_sequences=args.sequences, max_len=args.max_len, seed=seed)
        data = build_ttt_data(tasks[task_id], loaded.tokenizer, data_args, DEFAULT_FORMAT, counter)
        host.fresh(seed)
        mean = evaluate_loss(host.model, data.sequences)
        stats = train(host.model, data.sequences, TrainArgs(max_steps=1, seed=seed, log_every=0))
        out[task_id] = (stats.losses[0], stats.seconds, mean)
        host.drop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default=DEMO_TASKS, help="ARC-AGI-1 evaluation task ids")
    parser.add_argument("--sequences", type=int, default=24, help="TTT sequences per task (make demo: 24)")
    parser.add_argument("--max-len", type=int, default=1024, help="TTT sequence length limit (make demo: 1024)")
    args = parser.parse_args()
    task_ids = args.tasks.split(",")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', '-')}, {time.strftime('%Y-%m-%d')}")
    f32 = first_losses("float32", task_ids, args)
    bf16 = first_losses("bfloat16", task_ids, args)
    print("| task | first TTT step loss float32 | bfloat16 | difference | mean loss of all TTT sequences float32 "
          "| bfloat16 | difference | step s float32 | bfloat16 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for task_id in task_ids:
        (a, ta, ma), (b, tb, mb) = f32[task_id], bf16[task_id]
        print(f"| {task_id} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.2f}% | {ma:.4f} | {mb:.4f} "
              f"| {100 * (mb - ma) / ma:+.2f}% | {ta:.2f} | {tb:.2f} |")
    row = ["mean"]
    for k in (0, 2):
        a = sum(v[k] for v in f32.values()) / len(f32)
        b = sum(v[k] for v in bf16.values()) / len(bf16)
        worst = max(abs(bf16[t][k] - f32[t][k]) / f32[t][k] for t in task_ids)
        row += [f"{a:.4f}", f"{b:.4f}", f"{100 * (b - a) / a:+.2f}% (largest per task {100 * worst:.2f}%)"]
    print("| " + " | ".join(row) + " | | |")

if __name__ == "__main__":
    main()
