"""Fine-tune the base LM on many ARC tasks before test-time training (the paper's "FT" stage).

    examples, info = load_examples(["arc-agi-1/training", "re_arc.json.gz"])
    card = pretrain(load_model(), examples, PretrainConfig(...), out="adapters/arc", info=info)

The output directory becomes a peft adapter (`adapter_model.safetensors`, `adapter_config.json`)
plus `card.json` (base model, data, steps, tokens seen, losses), which `testtime arc solve
--adapter DIR` merges into the base before per-task TTT. Training is the one loop of
`testtime.finetune` on the stream of `InContextSampler`; a held-out set of whole tasks gives the
validation loss, measured before the first step and every `val_every` steps. Checkpoints go to
`OUT/checkpoints/step-N` every `checkpoint_every` steps; running again with the same OUT and
settings resumes from the newest one.

`init_adapter` starts the LoRA from another run's adapter (same rank and targets) with a fresh
optimizer and schedule; the card then holds the lineage (every ancestor's weights hash, steps and
tokens). `max_minutes` ends training early, after the last step that fits in the time, and still
validates, checkpoints and writes the adapter and card; it is not a result-affecting setting (the
schedule and the data stream are those of `train.max_steps`), so the same command run again
resumes from that checkpoint and continues the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testtime import __version__
from testtime.arc.format import DEFAULT_FORMAT, TextFormat, encode
from testtime.arc.pretrain_data import ExampleSources, InContextSampler, TaskExamples, split_validation
from testtime.arc.settings import PretrainConfig
from testtime.arc.task import Example
from testtime.atomic import read_json, write_json_atomic
from testtime.checkpoint import latest_checkpoint, load_checkpoint, load_trainable, save_checkpoint
from testtime.config import as_json, runtime_fields, validate
from testtime.extract import attach, extract, snapshot
from testtime.finetune import StepInfo, evaluate_loss, train
from testtime.jobs import RunDir
from testtime.lora import lora_config, quiet_peft
from testtime.models import machine
from testtime.precision import model_device

log = logging.getLogger(__name__)

SHIPPED_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
"""Adapters shipped inside the package, one directory each."""

DEFAULT_ADAPTER = {"embedded": "smollm2-135m-arc"}
"""Model name -> the shipped adapter `arc solve` merges by default (when its directory exists)."""


PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0,
               "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0, "T4": 65.0}
"""Dense bf16 (fp16 for V100/T4) tensor-core peak TFLOP/s by GPU name, from the vendors' data sheets."""


@dataclass
class PretrainStep:
    """What `pretrain` reports to `on_progress` after every optimizer step."""

    step: int
    total: int
    loss: float
    tokens_per_s: float
    mfu: float | None
    """Model FLOPs utilisation on CUDA (6 * params * tokens/s / peak), else None."""
    val_loss: float | None
    """Set on the steps where validation ran."""
    checkpoint: Path | None
    """Set on the steps where a checkpoint was written."""


def default_adapter(model: str) -> Path | None:
    """The shipped ARC adapter for `model`, if the package has one."""
    name = DEFAULT_ADAPTER.get(model)
    path = SHIPPED_ADAPTERS / name if name else None
    return path if path is not None and (path / "adapter_config.json").is_file() else None


def format_token_ids(tokenizer: Any, fmt: TextFormat = DEFAULT_FORMAT) -> list[int]:
    """Every token id the ARC text format produces: digits, newline and the marker lines."""
    grid = np.arange(10, dtype=np.int8).reshape(2, 5)
    ids, _ = encode(tokenizer, [Example(grid, grid)], grid, grid, fmt)
    return sorted(set(ids))


def peak_flops(device: torch.device) -> float | None:
    """Peak FLOP/s of a known CUDA device, else None (no MFU on CPU or unknown GPUs)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    log.warning("unknown GPU %r: no MFU (known: %s)", name, ", ".join(PEAK_TFLOPS))
    return None


def wrap_model(model: Any, tokenizer: Any, config: PretrainConfig) -> Any:
    """The base model with a trainable LoRA (and token rows) of `config`, initialised from its seed; under
    full fine-tuning (rank 0) the model itself, every floating-point weight trainable."""
    from peft import get_peft_model  # heavy import

    if config.lora.r == 0:
        for p in model.parameters():
            p.requires_grad_(p.is_floating_point())
        return model

    tokens = format_token_ids(tokenizer) if config.train_token_rows else None
    peft_config = lora_config(config.lora, model, trainable_tokens=tokens)
    with torch.random.fork_rng(devices=[]), quiet_peft():
        torch.manual_seed(config.train.seed)
        peft_model = get_peft_model(model, peft_config)
    if config.train.gradient_checkpointing:
        peft_model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    return peft_model


def pretrain(loaded: Any, examples: TaskExamples, config: PretrainConfig, out: str | Path, *,
             info: ExampleSources | None = None, on_progress: Callable[[PretrainStep], None] | None = None,
             flags: Mapping[str, str] | None = None, options: Mapping[str, Any] | None = None,
             clock: Callable[[], float] = time.monotonic, restart: bool = False,
             weights: Mapping[str, Any] | None = None) -> dict:
    """Fine-tune `loaded.model` on in-context tasks drawn from `examples`; write the adapter and card to `out`.

    Resumes from the newest checkpoint under `out` when `out/config.json` holds the same
    settings; raises SettingsChanged (naming each setting, by `flags` where given) when it holds
    another run's, and ConfigError for settings that cannot run. `clock` (seconds) times the run
    and its `max_minutes`. `restart` discards an earlier run of this command in `out` first;
    `weights` (the base model's content hash) joins the settings. `out` stays locked until it returns.
    """
    t_called = clock()
    validate(config, flags)
    out = Path(out)
    lineage = adapter_lineage(config.init_adapter) if config.init_adapter else []
    run_dir = RunDir(out, records="checkpoints", defaults=run_settings(PretrainConfig(), []))  # locked till return
    run_dir.open("arc pretrain", {**run_settings(config, lineage), **({"weights": dict(weights)} if weights else {})},
                 options, restart=restart, flags={**(flags or {}), **LINEAGE_FLAGS})

    train_examples, val_examples = split_validation(examples, config.val_tasks, config.train.seed)
    tokenizer = loaded.tokenizer
    sampler = InContextSampler(train_examples, tokenizer, config.data)
    val_args = dataclasses.replace(config.data, seed=config.data.seed + 1)
    val_seqs = InContextSampler(val_examples, tokenizer, val_args).sequences(0, config.val_sequences)
    base = snapshot(loaded.model) if config.lora.r == 0 else None  # full fine-tuning: what the change is from
    model = wrap_model(loaded.model, tokenizer, config)
    if config.init_adapter:
        load_init_adapter(model, config.init_adapter)
    n_params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("pretraining %s: %.1fM parameters, %.2fM trainable; %d training tasks, %d validation tasks",
             config.model, n_params / 1e6, trainable / 1e6, len(train_examples), len(val_examples))

    history: dict[str, Any] = {"losses": [], "val": [], "tokens": 0, "seconds": 0.0}
    offset = continued_steps(config, lineage, flags)  # this stage's first step in the planned schedule
    start_step, optimizer_state = offset, None
    ckpt_path = latest_checkpoint(out / "checkpoints")
    if ckpt_path is not None:
        ckpt = load_checkpoint(ckpt_path)
        load_trainable(model, ckpt.weights)
        start_step, optimizer_state, history = ckpt.step, ckpt.optimizer, ckpt.extra
        log.info("resuming from %s (step %d)", ckpt_path, start_step)
    if not history["val"]:
        history["val"].append([0, evaluate_loss(model, val_seqs)])
    deadline = t_called + 60 * config.max_minutes if config.max_minutes else None
    handler = _StepHandler(model, config, out, val_seqs, history, n_params, peak_flops(model_device(model)),
                           on_progress, clock, clock() - history["seconds"], deadline)
    batches = sampler.batches(config.train.batch_size, start_batch=start_step * config.train.grad_accum)
    stopped_by = "steps"
    try:
        train(model, batches, config.train, on_step=handler, start_step=start_step, optimizer_state=optimizer_state,
              ramp_from=offset if offset else None)
    except _TimeUp:
        stopped_by = "max-minutes"
        log.info("stopped by --max-minutes %g after step %d of %d", config.max_minutes, len(history["losses"]),
                 config.train.max_steps)

    extracted = None
    if base is not None:
        model, extracted = _extracted(model, base, config, val_seqs)
    with quiet_peft():
        model.save_pretrained(str(out), safe_serialization=True)
    (out / "README.md").unlink(missing_ok=True)  # peft's template card; ours is card.json
    card = _card(config, info, history, sorted(val_examples), sampler, loaded)
    if extracted is not None:
        card["extracted"] = extracted
    card.update(stopped_by=stopped_by, steps_planned=config.train.max_steps, schedule_from=offset, lineage=lineage,
                steps_with_lineage=card["steps"] + sum(a.get("steps") or 0 for a in lineage))
    write_json_atomic(out / "card.json", card)
    run_dir.close()
    return card


def _extracted(model: Any, base: dict, config: PretrainConfig, val_seqs: list) -> tuple[Any, dict]:
    """Full fine-tuning's adapter: the base model with a LoRA of rank `extract_rank` extracted from the weight
    change, and what the extraction kept (`testtime.extract`; the validation loss before and after it)."""
    val_full = evaluate_loss(model, val_seqs)
    factors, stats = extract(model, base, config.lora.target_modules, config.extract_rank)
    adapter = attach(model, factors, dataclasses.replace(config.lora, r=config.extract_rank,
                                                         alpha=config.extract_rank))
    val_extracted = evaluate_loss(adapter, val_seqs)
    log.info("full fine-tuning: a rank-%d LoRA keeps %.1f%% of the target modules' change (%.1f%% of the change, "
             "in untargeted weights, dropped); validation loss %.4f -> %.4f", config.extract_rank,
             100 * stats["kept"], 100 * stats["untargeted"], val_full, val_extracted)
    return adapter, {"rank": config.extract_rank, **stats, "val_loss_full": val_full,
                     "val_loss_extracted": val_extracted}


def continued_steps(config: PretrainConfig, lineage: list[dict], flags: Mapping[str, str] | None = None) -> int:
    """Where this stage starts in the planned schedule: 0, or under `continue_schedule` the steps of
    every stage before it (the init adapter's lineage), which must leave steps to take."""
    if not config.continue_schedule:
        return 0
    done = sum(stage.get("steps") or 0 for stage in lineage)
    if done >= (config.train.max_steps or 0):
        name = (flags or {}).get("train.max_steps", "train.max_steps")
        raise ValueError(f"{name} {config.train.max_steps} is the planned total of every stage, and the stages of "
                         f"--init-adapter {config.init_adapter} took {done} already; give a larger total")
    return done


class _TimeUp(Exception):
    """Raised by the step handler after the last step that fits in `max_minutes` (caught in `pretrain`)."""


@dataclass
class _StepHandler:
    """What runs after every optimizer step: history, validation, checkpoints, progress, the time limit."""

    model: Any
    config: PretrainConfig
    out: Path
    val_seqs: list
    history: dict
    n_params: int
    peak: float | None
    on_progress: Callable[[PretrainStep], None] | None
    clock: Callable[[], float]
    t_start: float
    """The clock reading that `history["seconds"]` counts from (earlier for a resumed run)."""
    deadline: float | None
    """Clock reading by which training should end (`max_minutes`), else None."""
    last_end: float = field(init=False)

    def __post_init__(self) -> None:
        self.last_end = self.clock()

    def __call__(self, step: StepInfo) -> None:
        now = self.clock()
        took, self.last_end = now - self.last_end, now
        total = self.config.train.max_steps
        # stop now if another step like this one would end past the deadline
        time_up = self.deadline is not None and step.step < total and now + took > self.deadline
        self.history["losses"].append(step.loss)
        self.history["tokens"] += step.tokens
        self.history["seconds"] = now - self.t_start
        last = step.step == total or time_up
        val = ckpt_written = None
        if step.step % self.config.val_every == 0 or last:
            val = evaluate_loss(self.model, self.val_seqs)
            self.history["val"].append([step.step, val])
        if step.step % self.config.checkpoint_every == 0 or last:
            ckpt_written = save_checkpoint(self.out / "checkpoints", step.step, self.model, step.optimizer,
                                           self.history, keep=self.config.keep_checkpoints)
        mfu = 6 * self.n_params * step.tokens_per_s / self.peak if self.peak else None
        if self.on_progress is not None:
            self.on_progress(PretrainStep(step.step, total, step.loss, step.tokens_per_s, mfu, val, ckpt_written))
        if time_up:
            raise _TimeUp


# ---------------------------------------------------------------- starting from an adapter

LINEAGE_FLAGS = {"init_adapter_sha256": "--init-adapter (its weights)", "weights.model": "--model (its weights)"}
"""The run-directory setting that `run_settings` adds for an init adapter, named for a refused rerun."""


def run_settings(config: PretrainConfig, lineage: list[dict]) -> dict[str, Any]:
    """The result-affecting settings of a run, for OUT/config.json.

    The config without its runtime fields, and without `init_adapter` when unset (so run
    directories made before it existed still resume); with an init adapter, the hash of its
    weights too, so a rerun after that adapter has changed is refused rather than mixed.
    """
    runtime = runtime_fields(config)  # when a run pauses, not what it computes: a rerun may change them
    settings = {k: v for k, v in as_json(config).items() if k not in runtime}
    if config.init_adapter is None:
        del settings["init_adapter"]
    else:
        settings["init_adapter_sha256"] = lineage[-1]["sha256"]
    return settings


def adapter_lineage(path: str | Path) -> list[dict]:
    """The ancestry of adapter directory `path`: its card's own lineage, then `path` itself.

    Each entry: the directory, the SHA-256 of its weights, and from its card.json (when it has
    one) the stage's data sources, base model, steps, tokens seen, losses, machine and creation time.
    """
    path = Path(path)
    weights = path / "adapter_model.safetensors"
    try:
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    except OSError as err:
        raise ValueError(f"--init-adapter {path}: cannot read {weights.name} ({err.strerror or err})") from None
    card = read_json(path / "card.json")
    card = card if isinstance(card, dict) else {}
    data = card.get("data") if isinstance(card.get("data"), dict) else {}
    entry = {"adapter": str(path), "sha256": digest, "base_model": card.get("base_model"),
             "data": data.get("sources"), "steps": card.get("steps"), "tokens_seen": card.get("tokens_seen"),
             **{k: card.get(k) for k in ("train_loss_first", "train_loss_final", "val_loss_initial", "val_loss_final")},
             "machine": card.get("machine") or card.get("device"), "created": card.get("created")}
    earlier = card.get("lineage") if isinstance(card.get("lineage"), list) else []
    return [*earlier, entry]


def load_init_adapter(model: Any, path: str | Path) -> None:
    """Copy the weights of the adapter in `path` into `model`'s LoRA, which must have the same shape.

    Raises ValueError naming the flags to change when rank, alpha, targets or trained token rows
    differ, or when the weights do not cover every trainable parameter.
    """
    from peft.utils import set_peft_model_state_dict  # heavy import

    from testtime.checkpoint import read_safetensors

    path = Path(path)
    theirs = read_json(path / "adapter_config.json") or {}
    ours = model.peft_config["default"]
    mine = {"rank (--lora-rank)": ours.r, "alpha (--lora-alpha)": ours.lora_alpha,
            "targets (--lora-targets)": sorted(ours.target_modules),
            "token rows (--train-token-rows)": bool(getattr(ours, "trainable_token_indices", None))}
    given = {"rank (--lora-rank)": theirs.get("r"), "alpha (--lora-alpha)": theirs.get("lora_alpha"),
             "targets (--lora-targets)": sorted(theirs.get("target_modules") or []),
             "token rows (--train-token-rows)": bool(theirs.get("trainable_token_indices"))}
    differ = [f"{name}: {given[name]} there, {mine[name]} here" for name in mine if mine[name] != given[name]]
    if differ:
        raise ValueError(f"--init-adapter {path} has another LoRA shape ({'; '.join(differ)}); give the same "
                         "settings as the run that wrote it")
    result = set_peft_model_state_dict(model, read_safetensors(path / "adapter_model.safetensors"))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    missing = sorted(trainable & set(result.missing_keys))
    if missing or result.unexpected_keys:
        raise ValueError(f"--init-adapter {path}: its weights do not match this model (missing {missing[:2]}, "
                         f"unexpected {list(result.unexpected_keys)[:2]}); was it trained on another base model?")
    log.info("LoRA initialised from %s", path)


def _card(config: PretrainConfig, info: ExampleSources | None, history: dict, val_ids: list[str],
          sampler: InContextSampler, loaded: Any) -> dict:
    losses = history["losses"]
    tail = losses[-10:]
    return {
        "kind": "testtime ARC pretraining adapter",
        "base_model": config.model,
        "testtime_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(getattr(loaded, "device", "")),
        "machine": machine(getattr(loaded, "device", None)),
        "data": {"sources": info.sources if info else config.sources, "validation_tasks": val_ids,
                 "draws_too_long": sampler.too_long},
        "steps": len(losses),
        "tokens_seen": history["tokens"],
        "seconds": round(history["seconds"], 1),
        "train_loss_first": losses[0] if losses else None,
        "train_loss_final": sum(tail) / len(tail) if tail else None,
        "val_loss_initial": history["val"][0][1],
        "val_loss_final": history["val"][-1][1],
        "val_history": history["val"],
        "config": json.loads(json.dumps(dataclasses.asdict(config))),
    }

