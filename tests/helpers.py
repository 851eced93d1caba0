"""Helpers shared by test modules (import as `from helpers import ...`; tests/ is on sys.path): the one
tiny model, ARC tasks, and the LM tests' memory. The CLI runner is in cli_helpers.py, faults in faults.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from testtime.lm.select import preselect


def make_tiny_model(vocab_size: int = 49152, seed: int = 0, **config):
    """A 2-layer Llama with hidden size 32, random weights from `seed`: seconds to train on CPU.

    `config` overrides LlamaConfig fields (`hidden_size=128, tie_word_embeddings=False`, ...)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    fields = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return LlamaForCausalLM(LlamaConfig(**{**fields, **config})).eval()


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


# --- the LM tests' memory ------------------------------------------------------------------------

class LetterEmbedder:
    """Letter counts, L2-normalised: texts sharing words land close together."""

    name, dim = "letters", 26

    def embed(self, texts, batch_size: int = 32):
        out = np.zeros((len(texts), 26), np.float32)
        for i, text in enumerate(texts):
            for ch in text.lower():
                if "a" <= ch <= "z":
                    out[i, ord(ch) - 97] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class ListMemory:
    """The memory interface lm.ttt needs, over a list of texts (brute-force search)."""

    def __init__(self, texts, embedder):
        self._texts = list(texts)
        self.embeddings = embedder.embed(self._texts)

    def search(self, query, k):
        return preselect(query, self.embeddings, k)

    def texts(self, positions):
        return [self._texts[int(i)] for i in positions]


CONTINUATION = "the quick brown fox jumps over the lazy dog"
MEMORY = [CONTINUATION] * 3 + ["zzz yyy xxx www", "mmm nnn ooo ppp", "qqq rrr sss", "kkk jjj iii"]


def letter_index(folder: Path, tokenizer, domain: str | None = None) -> Path:
    """`folder/index`: MEMORY (each text in `domain`, if given) indexed in 32-token chunks by letter counts."""
    from testtime.lm.memory import Corpus, build_index

    memory_file = folder / "memory.jsonl"
    memory_file.write_text("\n".join(json.dumps({"text": t, **({"domain": domain} if domain else {})})
                                     for t in MEMORY))
    build_index(Corpus([memory_file]), folder / "index", LetterEmbedder(), tokenizer, chunk_tokens=32)
    return folder / "index"


def rewrite_settings(out: Path, records: str, change) -> None:
    """Rewrite run directory `out` as an older testtime wrote it: `change(settings)` returns the settings as that
    version named them; config.json gets them with their fingerprint, and every record in `out/records`
    is sealed with it (what a run directory of that version holds)."""
    from testtime.jobs.rundir import fingerprint
    from testtime.records import seal, unseal

    config = json.loads((out / "config.json").read_text())
    config["settings"] = change(config["settings"])
    config["fingerprint"] = fingerprint(config["command"], config["settings"])
    (out / "config.json").write_text(json.dumps(config))
    for path in (out / records).glob("*.json"):
        path.write_text(json.dumps(seal(unseal(json.loads(path.read_text())).record, config["fingerprint"])))
