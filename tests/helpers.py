"""Helpers shared by test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA with random (non-zero) B matrices: merging it changes every output of the tiny model."""
    from transformers import AutoModelForCausalLM

    from testtime.finetune import LoraArgs
    from testtime.lora import AdapterHost

    host = AdapterHost(AutoModelForCausalLM.from_pretrained(model_dir), LoraArgs(r=4, alpha=8))
    host.fresh(seed=0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in host.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=generator)
    return host.save(out)
