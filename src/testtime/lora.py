"""LoRA adapters on a base model loaded once: a fresh one per task, saving, merging a start adapter.

    host = AdapterHost(model, LoraArgs(r=16))        # wrap the base once
    host.fresh(seed=0)                               # a new task adapter; only it trains
    ...train(host.model, ...), generate with host.model...
    host.drop()                                      # outputs are exactly the base model's again

`FullHost` has the same interface for full fine-tuning (LoRA rank 0): every base weight trains
during a task and is copied back from one saved copy afterwards, bit for bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from testtime.finetune import cuda_indices, si_format
from testtime.precision import model_device
from testtime.settings import LoraArgs

log = logging.getLogger(__name__)

ADAPTER_NAME = "default"
"""peft saves the adapter named `default` at the top of the save directory (others go to a subfolder)."""


def lora_config(lora: LoraArgs, model: Any = None, *, trainable_tokens: list[int] | None = None) -> Any:
    """A `peft.LoraConfig` for causal LMs; with `model`, target only the module names it has.

    `trainable_tokens`: ids whose input-embedding rows train too (peft's trainable tokens; with
    tied embeddings the same rows of the output head follow).
    """
    from peft import LoraConfig  # heavy import

    targets = list(lora.target_modules)
    if model is not None:
        targets = present_targets(model, targets)
    extra = {"trainable_token_indices": sorted(set(trainable_tokens))} if trainable_tokens else {}
    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                      bias="none", task_type="CAUSAL_LM", **extra)


def present_targets(model: Any, targets: list[str]) -> list[str]:
    """The names in `targets` that are leaf module names of `model`; warn on missing, raise if none."""
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    found = [t for t in targets if t in names]
    missing = [t for t in targets if t not in names]
    if not found:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ValueError(f"none of the LoRA target modules {targets} is in the model; its linear layers are {linear}")
    if missing:
        log.warning("LoRA target modules not in the model, skipped: %s", ", ".join(missing))
    return found


class AdapterHost:
    """The base model, wrapped by peft once, with at most one task adapter at a time.

    LoRA layers are injected into `base_model` in place; with no adapter they compute exactly
    the base layer. `start_adapter` (a directory written by `save`) is merged into the base
    weights first, so task adapters then train on top of it.
    """

    def __init__(self, base_model: Any, lora: LoraArgs, *, start_adapter: str | Path | None = None) -> None:
        from peft import get_peft_model  # heavy import
        from peft.tuners.lora import LoraLayer

        if start_adapter is not None:
            base_model = merge_adapter(base_model, start_adapter)
        self.lora = lora
        self.config = lora_config(lora, base_model)
        with torch.random.fork_rng(devices=cuda_indices(model_device(base_model))), quiet_peft():
            self._peft = get_peft_model(base_model, self.config, adapter_name=ADAPTER_NAME)  # throwaway init
        self._peft.base_model.disable_adapter_layers()  # off until the first `fresh`
        self._lora_layers = [m for m in self._peft.modules() if isinstance(m, LoraLayer) and ADAPTER_NAME in m.lora_A]
        self._live = False
        self.model = self._peft.base_model.model
        """The transformers model to call forward()/generate() on; the same object for every task."""
        self.model.eval()
        log.info("LoRA r=%d alpha=%d on %s; base model %s parameters", lora.r, lora.alpha,
                 ", ".join(sorted(self.config.target_modules)), si_format(self.trainable_parameters()[1]))

    @property
    def has_adapter(self) -> bool:
        """Whether a task adapter is live (made by `fresh`, not yet dropped)."""
        return self._live

    def fresh(self, seed: int) -> None:
        """Drop any task adapter and start a new one initialised from `seed`; only it trains.

        The LoRA modules are made once (in `__init__`) and re-initialised in place, A from a
        Kaiming-uniform draw seeded by `seed`, B zero, as peft initialises a new adapter: the
        model's modules and parameters stay the same objects from task to task.
        """
        self.drop()
        with torch.random.fork_rng(devices=cuda_indices(model_device(self.model))), torch.no_grad():
            torch.manual_seed(seed)
            for layer in self._lora_layers:
                _reinit(layer)
        self._peft.base_model.enable_adapter_layers()  # active, and its parameters require grad
        self._live = True
        trainable, total = self.trainable_parameters()
        log.debug("fresh adapter (seed %d): %s trainable of %s parameters", seed, si_format(trainable),
                  si_format(total))

    def drop(self) -> None:
        """Switch the task adapter (if any) off: outputs are exactly the base model's again."""
        if not self._live:
            return
        self._peft.base_model.disable_adapter_layers()  # the base layers alone; adapter frozen
        for layer in self._lora_layers:
            for p in (*layer.lora_A[ADAPTER_NAME].parameters(), *layer.lora_B[ADAPTER_NAME].parameters()):
                p.grad = None
        self._live = False

    def bake(self) -> None:
        """Add the live task adapter's weight change into the base weights and drop it: every later adapter
        trains on top of it, and `drop` no longer takes it away (shared-then-per-task TTT)."""
        if not self.has_adapter:
            raise RuntimeError("there is no task adapter to bake in: call fresh() and train first")
        with torch.no_grad():
            for layer in self._lora_layers:
                base = layer.get_base_layer()
                base.weight += layer.get_delta_weight(ADAPTER_NAME).to(base.weight.dtype)
        self.drop()

    def save(self, path: str | Path) -> Path:
        """Write the adapter only (adapter_model.safetensors + adapter_config.json) to directory `path`."""
        if not self.has_adapter:
            raise RuntimeError("there is no task adapter to save: call fresh() and train first")
        self._peft.save_pretrained(str(path), safe_serialization=True)
        return Path(path)

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of `model`, adapter included."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _reinit(layer: Any) -> None:
    """Initialise `layer`'s adapter in place with the random draws peft's `add_adapter` makes, in its
    order: nn.Linear's own init of A, then of B, then A again (Kaiming-uniform) and B zeroed; the
    first two draws are discarded. So a seed gives the adapter a newly added one would have had."""
    a, b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
    for shape in (a.shape, b.shape):
        torch.nn.init.kaiming_uniform_(torch.empty(shape, dtype=a.dtype, device=a.device), a=math.sqrt(5))
    layer.reset_lora_parameters(ADAPTER_NAME, True)


class FullHost:
    """Full fine-tuning per task with AdapterHost's interface: `fresh` makes every weight trainable,
    `drop` copies the saved base weights back (bit-identical) and freezes them again.

    Memory beyond the model: one copy of its parameters, taken at the first `fresh` and reused for
    every task, plus what `train` holds while it runs (gradients, the optimizer state) and frees
    when it returns. Buffers are never trained, so they are not copied.
    """

    def __init__(self, base_model: Any) -> None:
        self.model = base_model
        """The transformers model trained in place; the same object for every task."""
        self.model.requires_grad_(False)
        self.model.eval()
        self._saved: list[torch.Tensor] | None = None  # one copy of the weights, (param order)
        self._live = False
        log.info("full fine-tuning per task: %s parameters", si_format(self.trainable_parameters()[1]))

    @property
    def has_adapter(self) -> bool:
        """Whether a task's weights are live (trainable, not yet restored)."""
        return self._live

    def fresh(self, seed: int) -> None:
        """Restore the base weights if a task is live, then make every parameter trainable.

        `seed` is accepted for AdapterHost's interface: there is no new weight to initialise."""
        self.drop()
        params = list(self.model.parameters())  # shared (tied) weights appear once
        if self._saved is None:
            with torch.no_grad():
                self._saved = [p.detach().clone() for p in params]
        for p in params:
            p.requires_grad_(p.is_floating_point())
        self._live = True

    def drop(self) -> None:
        """Copy the saved weights back and freeze them: outputs are exactly the base model's again."""
        if not self._live:
            return
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), self._saved):  # type: ignore[arg-type]
                p.copy_(saved)
                p.grad = None
                p.requires_grad_(False)
        self.model.eval()
        self._live = False

    def saved_numel(self) -> int:
        """Elements held in the saved copy (0 before the first task): the model's parameter count."""
        return sum(t.numel() for t in self._saved or [])

    def trainable_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of `model`."""
        params = list(self.model.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def merge_adapter(base_model: Any, path: str | Path) -> Any:
    """Merge the peft adapter in directory `path` into `base_model`'s weights (in place); returns the model."""
    from peft import PeftModel  # heavy import

    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"start adapter {path}: no adapter_config.json there; "
                                "give a directory written by AdapterHost.save")
    with quiet_peft():
        merged = PeftModel.from_pretrained(base_model, str(path)).merge_and_unload()
    log.info("merged start adapter %s into the base weights", path)
    return merged


@contextlib.contextmanager
def quiet_peft() -> Iterator[None]:
    """Around a peft call (wrap, load, save), hide the peft warnings with nothing for our users to act
    on: a FutureWarning peft 0.21 triggers in transformers 5, and on saving, the GGUF model's folder
    having no config.json to compare vocabularies."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing", category=FutureWarning)
        warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
        yield


def export_adapter(src: str | Path, dst: str | Path, dtype: str = "bfloat16", rank: int | None = None) -> dict:
    """Copy the adapter in `src` to `dst` with its weights cast to `dtype` (half the bytes in bfloat16), and with
    `rank`, each module's change re-factored to its best rank-`rank` approximation (`extract.refactor`; the
    export entry records the ranks and the share of the squared change kept).

    `dst` gets `adapter_config.json`, `adapter_model.safetensors` and `card.json`: the source's card
    plus an `export` entry (the source directory, its weights' SHA-256, the dtype, the largest
    absolute change the cast made and the SHA-256 of the weights written, `weights_sha256`), so a
    shipped adapter says what it was made from and a check can tell its weights from others. Returns
    the card.
    Raises ValueError naming the file when `src` is not an adapter directory.
    """
    import hashlib
    from datetime import datetime, timezone

    from safetensors.torch import save_file

    from testtime.atomic import atomic_path, read_json, write_json_atomic
    from testtime.checkpoint import read_safetensors

    src, dst = Path(src), Path(dst)
    weights = src / "adapter_model.safetensors"
    if not (src / "adapter_config.json").is_file() or not weights.is_file():
        raise ValueError(f"{src}: no adapter_config.json and adapter_model.safetensors there; give a directory "
                         "written by `testtime arc pretrain`")
    config = read_json(src / "adapter_config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{src / 'adapter_config.json'}: not a JSON object; the adapter directory is damaged")
    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be bfloat16 or float32, not {dtype!r}")
    target = getattr(torch, dtype)
    tensors = read_safetensors(weights)
    refactored = None
    if rank is not None:
        from testtime.extract import refactor

        original = config.get("r")
        tensors, config, kept = refactor(tensors, config, rank)
        refactored = {"from": original, "to": rank, "kept": kept}
    cast = {name: t.to(target).contiguous() for name, t in tensors.items()}
    change = max((float((cast[n].float() - t.float()).abs().max()) for n, t in tensors.items() if t.numel()),
                 default=0.0)
    card = read_json(src / "card.json")
    card = dict(card) if isinstance(card, dict) else {}
    card["export"] = {"from": str(src), "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "dtype": dtype,
                      "max_abs_change": change, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if refactored is not None:
        card["export"]["rank"] = refactored
    with atomic_path(dst / "adapter_model.safetensors") as tmp:
        save_file(cast, str(tmp), metadata={"format": "pt"})
        card["export"]["weights_sha256"] = hashlib.sha256(Path(tmp).read_bytes()).hexdigest()
    write_json_atomic(dst / "adapter_config.json", config)
    write_json_atomic(dst / "card.json", card)
    return card
