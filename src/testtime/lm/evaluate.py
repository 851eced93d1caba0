"""`lm eval` as a library: held-out prompts in, bits per byte per domain out, one file per prompt.

A prompts file is JSON Lines, one object per held-out document:
`{"id": ..., "domain": ..., "prompt": ..., "continuation": ...}`.
A bad line is counted and reported with its line number; the others run. Each method has its
own run directory `OUT/<method>/` (the selector, `sift-adaptive` with --adaptive; several methods
share one OUT): `config.json` and
`results/<id>.json`, each written atomically when its prompt is done, so a rerun skips finished
prompts, refuses other settings, and an interrupted run loses at most one prompt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testtime.atomic import read_json
from testtime.config import as_json
from testtime.jobs import FAILED, Counts, Emit, Executor, LocalExecutor, RunDir, Step, ignore, run_items
from testtime.lm.records import RENAMED_SETTINGS, PromptResult
from testtime.lm.settings import EvalConfig, PromptTTT
from testtime.lm.ttt import training_cut, ttt_prompt
from testtime.settings import LoraArgs

log = logging.getLogger(__name__)

REQUIRED = ("id", "prompt", "continuation")


@dataclass
class Prompt:
    id: str
    domain: str
    prompt: str
    continuation: str


@dataclass
class PromptFile:
    prompts: list[Prompt]
    errors: list[str]
    """One message per bad line: file, line number, what is wrong."""


def read_prompts(path: str | Path) -> PromptFile:
    """Read a prompts JSONL file; raises ValueError only when the file itself cannot be read.

    Lines end at `\n` only (JSON Lines): U+2028, U+0085 and the like inside a JSON string are text.
    A line that is not UTF-8 is one bad line, like one that is not JSON."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as err:
        raise ValueError(f"cannot read prompts file {path}: {err.strerror or err}") from None
    prompts, errors, seen = [], [], set()
    for n, raw in enumerate(lines, start=1):
        try:
            line = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            errors.append(f"{path}:{n}: not UTF-8 (byte {err.start + 1} of the line)")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"{path}:{n}: not JSON ({err.msg})")
            continue
        missing = [k for k in REQUIRED if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            errors.append(f"{path}:{n}: field {', '.join(missing)} missing or not a string "
                          f"(each line needs {', '.join(REQUIRED)}; domain optional)")
            continue
        if not row["continuation"]:
            errors.append(f"{path}:{n}: empty continuation")
            continue
        if row["id"] in seen:
            errors.append(f"{path}:{n}: duplicate id {row['id']!r}")
            continue
        seen.add(row["id"])
        prompts.append(Prompt(row["id"], str(row.get("domain") or ""), row["prompt"], row["continuation"]))
    return PromptFile(prompts, errors)


def make_host(model: Any, lora: LoraArgs) -> Any:
    """The host that trains per prompt: `FullHost` for rank 0 (full fine-tuning), else an AdapterHost."""
    from testtime.lora import AdapterHost, FullHost  # heavy imports

    return FullHost(model) if lora.r == 0 else AdapterHost(model, lora)


class LmJob:
    """LM prompts as a job: set up loads the model, memory and embedder; an item is a Prompt.

    `parts` = (host, tokenizer, memory, embedder) already loaded skips loading (library use, tests).
    """

    noun = "prompt"
    id_key = "prompt_id"

    def __init__(self, config: EvalConfig, *, parts: tuple[Any, Any, Any, Any] | None = None) -> None:
        self.config = config
        self.parts = parts

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "parts": None}  # a Ray worker loads its own

    def item_id(self, prompt: Prompt) -> str:
        return prompt.id

    def cost(self, prompt: Prompt) -> float:
        return len(prompt.prompt) + len(prompt.continuation)

    def not_parallel(self) -> str | None:
        return None

    def setup(self) -> str:
        if self.parts is not None:
            return ""
        from testtime.models import load_model  # heavy import

        loaded = load_model(self.config.model, dtype=self.config.dtype)
        memory, embedder = load_memory(self.config.index, self.config.ttt.select, loaded)
        if memory is not None and (cut := training_cut(memory.meta, self.config.ttt.chunk_tokens)):
            log.warning("%s: %s", self.config.index, cut)
        self.parts = (make_host(loaded.model, self.config.lora), loaded.tokenizer, memory, embedder)
        size = f", memory of {len(memory):,} chunks" if memory is not None else ""
        return f"model {self.config.model} on {loaded.device} ({loaded.dtype}){size}"

    def run(self, prompt: Prompt, emit: Emit) -> dict[str, Any]:
        self.setup()
        host, tokenizer, memory, embedder = self.parts  # type: ignore[misc]
        t0 = time.perf_counter()
        res = ttt_prompt(host, tokenizer, memory, embedder, prompt.id, prompt.prompt, prompt.continuation,
                          self.config.ttt, domain=prompt.domain, on_step=lambda info: emit(Step(prompt.id, info)))
        return dataclasses.replace(res, seconds=time.perf_counter() - t0).to_json()

    def failed(self, prompt: Prompt, error: str, trace: str, seconds: float) -> dict[str, Any]:
        return PromptResult(prompt_id=prompt.id, domain=prompt.domain, select=self.config.ttt.select,
                            method=self.config.ttt.method, status=FAILED, error=error, traceback=trace,
                            seconds=seconds).to_json()

    def accepts(self, prompt: Prompt, record: dict[str, Any]) -> bool:
        """A record that reads as a PromptResult (`lm.records`): what the summary and the reports read."""
        problems = PromptResult.problems(record)
        if problems:
            log.warning("prompt %s: its record does not fit (%s); the prompt is run again", prompt.id,
                        "; ".join(problems))
        return not problems


def index_digest(index: str | Path) -> str | None:
    """A SHA-256 naming what an index is: its chunks (text and domain, in order) and how they were embedded
    (embedder, its precision, dimension and token limits), so that an index rebuilt at the same path from
    another corpus or with another embedder counts as a changed setting of the run. Not the embedding values:
    the same settings give values that differ in their last bits from one CPU to another (as the model's
    outputs do), and a rebuild on another machine should resume. None when it is not a finished index."""
    root = Path(index)
    meta = read_json(root / "meta.json")
    if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list):
        return None
    h = hashlib.sha256()
    h.update(json.dumps([meta.get(k) for k in INDEX_IDENTITY]).encode() + b"\n")
    try:
        for shard in meta["shards"]:
            with (root / f"{shard['name']}.jsonl").open(encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    h.update(json.dumps([row["text"], row.get("domain")], ensure_ascii=False).encode() + b"\n")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return h.hexdigest()


INDEX_IDENTITY = ("embedder", "embed_dtype", "dim", "chunk_tokens", "embed_tokens", "tokenizer", "count")
"""The fields of an index's meta.json that `index_digest` hashes besides the chunks."""


def run_settings(config: EvalConfig) -> dict[str, Any]:
    """What an `lm eval` run directory is opened with: the settings, and the content of the index they read."""
    uses_index = config.index is not None and config.ttt.select != "none"
    return {"config": as_json(config), "index_sha256": index_digest(config.index) if uses_index else None}


def select_dir(out: str | Path, method: str, config: EvalConfig | None = None) -> RunDir:
    """One method's run directory inside `out`: `out/METHOD/config.json`, `out/METHOD/results/`
    (METHOD: `PromptTTT.method`, the selector or `sift-adaptive`). A directory written before its index's
    content was recorded is taken to have used `config`'s index as it is now."""
    defaults = {"config": as_json(EvalConfig())}
    if config is not None:
        defaults["index_sha256"] = run_settings(config)["index_sha256"]
    return RunDir(Path(out) / method, records="results", renamed=RENAMED_SETTINGS, defaults=defaults)


def evaluate(job: LmJob, prompts: list[Prompt], run_dir: RunDir | None = None, *,
             executor: Executor | None = None, retry_failed: bool = False,
             emit: Emit = ignore) -> tuple[list[PromptResult], list[PromptResult], Counts]:
    """(results, failures, counts) of every prompt, resuming from `run_dir` (see `select_dir`).

    The run directory is opened with the job's settings unless the caller opened it.
    """
    if run_dir is not None and not run_dir.opened:
        run_dir.open("lm eval", run_settings(job.config))
    found, counts = run_items(job, prompts, executor or LocalExecutor(), run_dir, retry_failed=retry_failed,
                              emit=emit)
    records = [PromptResult.from_json(r, trusted=True) for r in found.values()]  # accepted when resumed
    return [r for r in records if r.ok], [r for r in records if not r.ok], counts


def run_eval(host: Any, tokenizer: Any, memory: Any, embedder: Any, prompts: list[Prompt], args: PromptTTT,
             out: str | Path | None = None, *, config: EvalConfig | None = None,
             emit: Emit = ignore) -> tuple[list[PromptResult], list[PromptResult]]:
    """`evaluate` with an already loaded model, memory and embedder; returns (results, failures)."""
    config = dataclasses.replace(config or EvalConfig(), ttt=args)
    run_dir = select_dir(out, args.method, config) if out is not None else None
    results, failures, _ = evaluate(LmJob(config, parts=(host, tokenizer, memory, embedder)), prompts, run_dir,
                                    emit=emit)
    return results, failures


def load_memory(index: str | Path | None, select: str, loaded: Any) -> tuple[Any, Any]:
    """(memory, embedder) for `select`: (None, None) for "none"; else the index and the embedder it was
    built with (the LM's own hidden states reuse `loaded`). Raises MemoryIndexError / EmbedderError."""
    if index is None or select == "none":
        return None, None
    from testtime.lm.embed import load_embedder  # heavy imports
    from testtime.lm.memory import Memory

    memory = Memory.load(index)
    name = memory.meta.get("embedder", "minilm")
    own = name == "lm"
    embedder = load_embedder(name, lm=loaded.model if own else None, tokenizer=loaded.tokenizer if own else None,
                             dtype=memory.meta.get("embed_dtype", "auto"))
    return memory, embedder
