"""A LoRA extracted from a fully fine-tuned model: each target module's weight change, truncated by SVD.

Full fine-tuning changes every weight; what ships is an adapter of the usual form (peft's LoRA, B @ A
per target module, alpha = rank so the scale is 1), the best rank-r approximation of each change in
the Frobenius norm. What it loses is measured: the share of each change's squared norm outside the
kept singular values, and the change of the weights no LoRA targets (embeddings, norms), dropped.

    base = snapshot(model)                    # before training
    ...train every weight...
    factors, stats = extract(model, base, ("q_proj", ...), rank=64)   # the model is the base again
    peft_model = attach(model, factors, lora)                           # base + the extracted LoRA
"""

from __future__ import annotations

from typing import Any

import torch

from testtime.lora import ADAPTER_NAME, quiet_peft
from testtime.settings import LoraArgs


def snapshot(model: Any) -> dict[str, torch.Tensor]:
    """A copy of every parameter of `model`, by name."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def lowrank(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(B, A, share of ||delta||^2 kept): B @ A is the best rank-`rank` approximation of `delta` (float32,
    the singular values split evenly between the two factors)."""
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    total = float((s**2).sum())
    kept = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    return u[:, :r] * root, root[:, None] * vh[:r], kept


def extract(model: Any, base: dict[str, torch.Tensor], targets: tuple[str, ...],
            rank: int) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, float]]:
    """(module name -> (B, A) of its weight change, stats) for every linear module of `model` named in
    `targets`; every parameter of `model` is then copied back from `base`. Stats: `kept`, the share of the
    targets' squared change the factors keep; `untargeted`, the share of the whole squared change that lies
    in weights no LoRA targets (dropped)."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    kept_sq = target_sq = 0.0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            delta = module.weight.detach().float() - base[f"{name}.weight"].float()
            b, a, kept = lowrank(delta, rank)
            factors[name] = (b, a)
            norm_sq = float((delta**2).sum())
            target_sq += norm_sq
            kept_sq += kept * norm_sq
    total_sq = 0.0
    with torch.no_grad():
        for name, p in model.named_parameters():
            total_sq += float(((p.detach().float() - base[name].float()) ** 2).sum())
            p.copy_(base[name])
    return factors, {"kept": kept_sq / target_sq if target_sq > 0 else 1.0,
                     "untargeted": (total_sq - target_sq) / total_sq if total_sq > 0 else 0.0}


def attach(model: Any, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], lora: LoraArgs) -> Any:
    """`model` wrapped by peft with a LoRA of rank `lora.r` (alpha = rank: scale 1) on the modules of
    `factors`, its weights the factors (zero-padded where a module's change has lower rank)."""
    from peft import LoraConfig, get_peft_model  # heavy import

    targets = sorted({name.rsplit(".", 1)[-1] for name in factors})
    config = LoraConfig(r=lora.r, lora_alpha=lora.r, lora_dropout=0.0, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    with quiet_peft():
        peft_model = get_peft_model(model, config)
    inner = peft_model.base_model.model
    with torch.no_grad():
        for name, (b, a) in factors.items():
            layer = inner.get_submodule(name)
            layer.lora_A[ADAPTER_NAME].weight.zero_()
            layer.lora_B[ADAPTER_NAME].weight.zero_()
            layer.lora_A[ADAPTER_NAME].weight[: a.shape[0]] = a
            layer.lora_B[ADAPTER_NAME].weight[:, : b.shape[1]] = b
    return peft_model


def refactor(tensors: dict[str, torch.Tensor], config: dict[str, Any],
             rank: int) -> tuple[dict[str, torch.Tensor], dict[str, Any], float]:
    """A saved LoRA (peft's `...lora_A.weight` / `...lora_B.weight` tensors and adapter_config.json) as a LoRA of
    rank `rank`: each module's change scale * B @ A replaced by its best rank-`rank` approximation (alpha = rank,
    scale 1; zero-padded where the change has lower rank), so a smaller file ships what a larger run learned.
    Returns (tensors, config, share of the modules' squared change kept: 1.0 when `rank` >= the LoRA's rank)."""
    if rank < 1:
        raise ValueError(f"rank must be at least 1, not {rank}")
    r = int(config.get("r", 0))
    alpha = float(config.get("lora_alpha", r))
    if r < 1:
        raise ValueError(f"adapter_config.json: r is {config.get('r')!r}, not a LoRA rank")
    scale = alpha / r**0.5 if config.get("use_rslora") else alpha / r
    out: dict[str, torch.Tensor] = {}
    kept_sq = total_sq = 0.0
    for name, a in tensors.items():
        if ".lora_A." not in name:
            if ".lora_B." not in name:
                out[name] = a  # not a LoRA factor (e.g. trained token rows): kept as it is
            continue
        b = tensors[name.replace(".lora_A.", ".lora_B.")]
        delta = scale * (b.float() @ a.float())
        new_b, new_a, kept = lowrank(delta, rank)
        padded_b = torch.zeros(delta.shape[0], rank, dtype=torch.float32)
        padded_a = torch.zeros(rank, delta.shape[1], dtype=torch.float32)
        padded_b[:, : new_b.shape[1]], padded_a[: new_a.shape[0]] = new_b, new_a
        out[name], out[name.replace(".lora_A.", ".lora_B.")] = padded_a.to(a.dtype), padded_b.to(b.dtype)
        norm_sq = float((delta**2).sum())
        total_sq += norm_sq
        kept_sq += kept * norm_sq
    new_config = {**config, "r": rank, "lora_alpha": rank, "use_rslora": False,
                  "rank_pattern": {}, "alpha_pattern": {}}
    return out, new_config, kept_sq / total_sq if total_sq > 0 else 1.0
