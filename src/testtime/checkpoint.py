"""Training checkpoints without pickle: trainable weights and optimizer state as safetensors.

A checkpoint is a directory `step-000100/` holding

    weights.safetensors     the trainable parameters, by name (the adapter; the base is not saved)
    optimizer.safetensors   every tensor of the optimizer state, keyed `state.<param index>.<name>`
    state.json              step, the optimizer's param groups and non-tensor state, caller extras

It is written to a temporary directory and renamed into place (`testtime.atomic.atomic_dir`), so
a crash leaves either the whole checkpoint or none. `latest_checkpoint` finds the newest complete
one to resume from.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from testtime.atomic import atomic_dir

log = logging.getLogger(__name__)

PREFIX = "step-"


@dataclass
class Checkpoint:
    """What `load_checkpoint` read back."""

    path: Path
    step: int
    """Optimizer steps taken when it was written."""
    weights: dict[str, torch.Tensor]
    """Trainable parameters by name."""
    optimizer: dict
    """An optimizer `state_dict`, ready for `load_state_dict`."""
    extra: dict
    """Whatever the caller stored (loss history, tokens seen...)."""


def optimizer_to_tensors(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer `state_dict` into safetensors-storable tensors and JSON-storable rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in state_dict["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def tensors_to_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    """Inverse of `optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad, by name, detached on CPU."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy `weights` into the model's trainable parameters; the names must match exactly."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(f"checkpoint does not match the model: missing {missing[:3]}, unexpected {unexpected[:3]} "
                         "(was it written with other LoRA settings or another base model?)")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name].to(p.device, p.dtype))


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict | None = None, *, keep: int = 2) -> Path:
    """Write checkpoint `root/step-NNNNNN` atomically and delete all but the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    for stale in root.glob(f".{final.name}.*.tmp"):  # left by a run killed while writing this step
        shutil.rmtree(stale, ignore_errors=True)
    with atomic_dir(final, replace=True) as tmp:  # the folder appears whole, so its files are written plainly
        save_file(trainable_weights(model), str(tmp / "weights.safetensors"))
        tensors, meta = optimizer_to_tensors(optimizer.state_dict())
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        state = {"step": step, "optimizer": meta, "extra": extra or {}}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
    for old in checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    log.debug("checkpoint %s", final)
    return final


def checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.glob(f"{PREFIX}*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint directory written by `save_checkpoint` (tensors on CPU)."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        weights = read_safetensors(path / "weights.safetensors")
        optimizer = tensors_to_optimizer(read_safetensors(path / "optimizer.safetensors"), state["optimizer"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"checkpoint {path} is unreadable ({err}); delete it to resume from the one before") from err
    return Checkpoint(path=path, step=int(state["step"]), weights=weights, optimizer=optimizer,
                      extra=state.get("extra", {}))


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or damaged one is a ValueError naming the file
    and the fix (safetensors' own SafetensorError names neither)."""
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it is damaged or incomplete: "
                         "write it again (rerun what made it), or delete it") from None
