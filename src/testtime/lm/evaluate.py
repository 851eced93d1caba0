"""`lm eval` as a library: held-out prompts in, bits per byte per domain out, one file per prompt.

A prompts file is JSON Lines, one object per held-out document:
`{"id": ..., "domain": ..., "prompt": ..., "continuation": ...}` (what bench/corpus.py writes).
A bad line is counted and reported with its line number; the others run. The run directory
holds `config.json` and `results/<select>/<id>.json`, each written atomically when its prompt
is done, so a rerun skips finished prompts and an interrupted run loses at most one prompt.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from testtime.lm.ttft import PromptResult, TTFTArgs, ttft_prompt
from testtime.runs import read_json, write_json_atomic

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
    """Read a prompts JSONL file; raises ValueError only when the file itself cannot be read."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read prompts file {path}: {err}") from None
    prompts, errors, seen = [], [], set()
    for n, line in enumerate(lines, start=1):
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


def result_path(out: Path, select: str, prompt_id: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", prompt_id)
    return out / "results" / select / f"{safe}.json"


def run_eval(host: Any, tokenizer: Any, memory: Any, embedder: Any, prompts: list[Prompt], args: TTFTArgs,
             out: str | Path | None, *, config: dict | None = None,
             on_prompt: Callable[[Prompt, dict, bool], None] | None = None,
             on_step: Callable | None = None) -> tuple[list[dict], list[dict]]:
    """Evaluate every prompt (skipping those with a result in `out`); returns (results, failures).

    A prompt that raises is recorded as a failure with its error and the run goes on.
    """
    out = Path(out) if out is not None else None
    if out is not None:
        save_eval_config(out, args, config)
    results, failures = [], []
    for p in resume_prompts(prompts, out, args.select, results, on_prompt):
        row = evaluate_prompt(host, tokenizer, memory, embedder, p, args=args, on_step=on_step)
        record_result(row, p, out, args.select, results, failures, on_prompt)
    return results, failures


def resume_prompts(prompts: list[Prompt], out: Path | None, select: str, results: list[dict],
                   on_prompt: Callable[[Prompt, dict, bool], None] | None) -> list[Prompt]:
    """Append the saved results of finished prompts to `results` (reported as resumed); return the others."""
    todo = []
    for p in prompts:
        done = finished_result(out, select, p.id)
        if done is None:
            todo.append(p)
            continue
        results.append(done)
        if on_prompt is not None:
            on_prompt(p, done, True)
    return todo


def record_result(row: dict, prompt: Prompt, out: Path | None, select: str, results: list[dict],
                  failures: list[dict], on_prompt: Callable[[Prompt, dict, bool], None] | None) -> bool:
    """File one prompt's outcome: a result is saved atomically, a failure only counted. True for a result."""
    ok = "error" not in row
    if ok:
        results.append(row)
        if out is not None:
            write_json_atomic(result_path(out, select, prompt.id), row)
    else:
        failures.append(row)
    if on_prompt is not None:
        on_prompt(prompt, row, False)
    return ok


def save_eval_config(out: Path, args: TTFTArgs, config: dict | None) -> None:
    """Write `out/config.json` (warning when a finished run of the same selector had other settings)."""
    record = {"args": asdict(args), **(config or {})}
    old = read_json(out / "config.json")
    if old is not None and old.get("args", {}).get("select") == args.select and old != record:
        log.warning("%s/config.json differs from this run's settings; finished prompts are kept", out)
    write_json_atomic(out / "config.json", record)


def finished_result(out: Path | None, select: str, prompt_id: str) -> dict | None:
    """The saved result of a prompt, or None when it has not finished (or there is no run directory)."""
    done = read_json(result_path(out, select, prompt_id)) if out is not None else None
    return done if done is not None and "bits" in done else None


def evaluate_prompt(host: Any, tokenizer: Any, memory: Any, embedder: Any, p: Prompt, *, args: TTFTArgs,
                    on_step: Callable | None = None) -> dict:
    """One prompt's result row; a prompt that raises ValueError/RuntimeError gives a row with `error`."""
    t0 = time.perf_counter()
    try:
        res: PromptResult = ttft_prompt(host, tokenizer, memory, embedder, p.id, p.prompt, p.continuation,
                                        args, domain=p.domain, on_step=on_step)
    except (ValueError, RuntimeError) as err:
        log.warning("prompt %s failed: %s", p.id, err)
        return {"prompt_id": p.id, "domain": p.domain, "select": args.select, "error": str(err)}
    return {**res.to_json(), "seconds": time.perf_counter() - t0}


def load_memory(index: str | Path | None, select: str, loaded: Any) -> tuple[Any, Any]:
    """(memory, embedder) for `select`: (None, None) for "none"; else the index and the embedder it was
    built with (the LM's own hidden states reuse `loaded`). Raises MemoryIndexError / EmbedderError."""
    if index is None or select == "none":
        return None, None
    from testtime.lm.embed import load_embedder  # noqa: PLC0415 - heavy imports
    from testtime.lm.memory import Memory

    memory = Memory.load(index)
    name = memory.meta.get("embedder", "minilm")
    own = name == "lm"
    embedder = load_embedder(name, lm=loaded.model if own else None, tokenizer=loaded.tokenizer if own else None,
                             dtype=memory.meta.get("embed_dtype", "auto"))
    return memory, embedder
