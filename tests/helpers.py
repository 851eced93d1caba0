"""Helpers shared by test modules (import as `from helpers import ...`; tests/ is on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def save_random_adapter(model_dir: Path, out: Path) -> Path:
    """A LoRA with random (non-zero) B matrices: merging it changes every output of the tiny model."""
    from transformers import AutoModelForCausalLM

    from testtime.lora import AdapterHost
    from testtime.settings import LoraArgs

    host = AdapterHost(AutoModelForCausalLM.from_pretrained(model_dir), LoraArgs(r=4, alpha=8))
    host.fresh(seed=0)
    with torch.no_grad():
        generator = torch.Generator().manual_seed(1)
        for name, param in host.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5, generator=generator)
    return host.save(out)


def grid(rows: list[list[int]]) -> np.ndarray:
    """An ARC grid (int8) from nested lists."""
    return np.array(rows, dtype=np.int8)


def two_demo_task(task_id: str):
    """Two identity demonstrations (2x2 and 1x3) and two test inputs (3x2 and 1x3)."""
    from testtime.arc.task import Example, Task

    return Task(
        id=task_id,
        train=(Example(grid([[1, 2], [3, 4]]), grid([[1, 2], [3, 4]])), Example(grid([[5, 6, 7]]), grid([[5, 6, 7]]))),
        test=(Example(grid([[1, 0], [2, 3], [4, 5]])), Example(grid([[6, 0, 8]]))),
    )


def arc_model_answering(tokenizer, task, answers, *, vocab_size: int, prompts: int, steps: int):
    """A tiny Llama trained to answer each of `answers` to `prompts` randomly transformed prompts of
    `task` (the answers kept in the prompt's frame). Returns (model, training stats)."""
    from conftest import make_tiny_model
    from testtime.arc.format import encode
    from testtime.arc.transforms import random_transform
    from testtime.batching import TrainingSequence
    from testtime.finetune import train
    from testtime.settings import TrainArgs

    model = make_tiny_model(vocab_size=vocab_size, seed=0)
    with torch.no_grad():  # larger tied embeddings, so logits can become confident in few steps
        model.get_input_embeddings().weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    sequences = []
    for k in range(prompts):
        moved = random_transform(rng, len(task.train)).task(task)
        for answer in answers:
            ids, labels = encode(tokenizer, moved.train, moved.test[k % 2].input, answer)
            sequences.append(TrainingSequence(input_ids=ids, labels=labels))
    stats = train(model, sequences, TrainArgs(lr=1e-2, max_steps=steps, batch_size=4, schedule="constant", log_every=0))
    return model, stats


class VirtualClock:
    """Time that passes only when a test says so (`sleep`), for the job layer's budget: `install` makes it the
    `time` module of `testtime.jobs.budget` (deadlines, plans) and `testtime.jobs.run` (item timings)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    perf_counter = time

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def install(self, monkeypatch) -> VirtualClock:
        for module in ("testtime.jobs.budget", "testtime.jobs.run"):
            monkeypatch.setattr(f"{module}.time", self)
        return self
