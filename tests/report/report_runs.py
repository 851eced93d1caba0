"""Synthetic run directories for the report tests, written as JSON the way the commands write them.

Import as `from report_runs import ...` (pytest puts tests/report/ on sys.path). No model runs:
records have the shape of `arc solve` / `lm eval` / `arc pretrain` outputs with made-up numbers.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from pathlib import Path

import numpy as np


def structured_grid(rng: random.Random, height: int, width: int) -> list[list[int]]:
    """A background colour with a few filled rectangles: about as many runs per row as real ARC grids."""
    background = rng.choice([0, 0, 0, 5])
    grid = [[background] * width for _ in range(height)]
    for _ in range(rng.randint(1, 5)):
        y, x = rng.randrange(height), rng.randrange(width)
        h, w, colour = rng.randint(1, max(1, height // 3)), rng.randint(1, max(1, width // 3)), rng.randint(1, 9)
        for yy in range(y, min(height, y + h)):
            for xx in range(x, min(width, x + w)):
                grid[yy][xx] = colour
    return grid


def variant(rng: random.Random, grid: list[list[int]], changes: int) -> list[list[int]]:
    """`grid` with `changes` distinct cells recoloured: exactly that many cells differ from it."""
    out = [row[:] for row in grid]
    cells = rng.sample([(y, x) for y in range(len(grid)) for x in range(len(grid[0]))], changes)
    for y, x in cells:
        out[y][x] = (out[y][x] + 1) % 10
    return out


def write_arc_run(root: Path, n_tasks: int, *, seed: int = 0, max_side: int = 30, source: bool = True,
                  truth: bool = False, failed: tuple[str, ...] = (), losses: bool = False,
                  task_ids: list[str] | None = None) -> tuple[Path, dict[str, dict]]:
    """An `arc solve` run directory ROOT/run made from the source ROOT/tasks.json: (run dir, {id: task json}).

    Task k is solved when k % 3 == 0 (attempt 1), right in attempt 2 when k % 3 == 1, else wrong
    (no candidate is the truth); ids in `failed` get a failed record. `source=False`: the source
    named in config.json does not exist.
    """
    rng = random.Random(seed)
    run = root / "run"
    (run / "tasks").mkdir(parents=True)
    ids = task_ids or [f"{k:08x}" for k in range(n_tasks)]
    tasks = {}
    for k, task_id in enumerate(ids):
        h, w = rng.randint(3, max_side), rng.randint(3, max_side)
        pairs = [{"input": structured_grid(rng, h, w), "output": structured_grid(rng, h, w)} for _ in range(4)]
        tasks[task_id] = {"train": pairs[:3], "test": pairs[3:]}
        record = _arc_record(rng, task_id, k, pairs[3]["output"], truth=truth, losses=losses)
        if task_id in failed:
            record = {"task_id": task_id, "status": "failed", "error": "RuntimeError: boom",
                      "traceback": "Traceback...\nRuntimeError: boom", "seconds": 0.5,
                      "tests": [{"attempts": [], "candidates": [],  # as solve.failed_record scores it
                                 "correct": {"attempt_1": False, "any_attempt": False, "oracle": False}}]}
        (run / "tasks" / f"record{k}.json").write_text(json.dumps(record))
    if source:
        (root / "tasks.json").write_text(json.dumps(tasks))
    config = {"command": "arc solve", "testtime": "0.1.0",
              "settings": {"source": str(root / ("tasks.json" if source else "gone.json")), "config.seed": 0,
                           "config.lora.r": 16, "config.lora.target_modules": ["q_proj", "v_proj"]},
              "options": {"tasks": None, "limit": None}}
    (run / "config.json").write_text(json.dumps(config))
    return run, tasks


def _arc_record(rng: random.Random, task_id: str, k: int, answer: list, *, truth: bool, losses: bool) -> dict:
    wrong = [variant(rng, answer, 1 + j) for j in range(7)]  # 1..7 cells off: all distinct, none the truth
    grids = [answer, *wrong] if k % 3 == 0 else [wrong[0], answer, *wrong[1:]] if k % 3 == 1 else wrong
    candidates = [{"grid": g, "votes": 8 - j, "groups": 1 + (j % 3), "logprob": -0.5 * (j + 1),
                   "transforms": ["identity", "rot90", "flip_h"][: 1 + j % 3]} for j, g in enumerate(grids)]
    test = {"attempts": [grids[0], grids[1]], "candidates": candidates, "prompts": 8, "unparsed": 1, "unfit": 0,
            "correct": {"attempt_1": k % 3 == 0, "any_attempt": k % 3 in (0, 1), "oracle": k % 3 in (0, 1)}}
    if truth:
        test["truth"] = {"bits_per_cell_before": 3.0, "bits_per_cell_after": 1.0, "bits_per_token_before": 2.5,
                         "bits_per_token_after": 0.75, "rank": 1 if k % 3 == 0 else 2 if k % 3 == 1 else None}
        for j, c in enumerate(candidates):
            c["poe"] = -1.0 - j
    ttt = {"enabled": True, "shared": False, "sequences": 32, "fits": True, "steps": 32, "tokens": 5000,
           "seconds": 10.0 + k, "data_seconds": 0.1, "tokens_per_s": 500.0, "first_loss": 1.2, "final_loss": 0.3}
    if losses:
        ttt["losses"] = [1.2 * 0.95 ** s for s in range(32)]
    return {"task_id": task_id, "status": "ok", "error": None, "fits": True, "ttt": ttt,
            "predict": {"seconds": 5.0, "prompts": 8, "unparsed": 1, "unfit": 0}, "tests": [test],
            "seconds": 15.0 + k}


def write_lm_runs(root: Path, *, selects: tuple[str, ...] = ("none", "nn", "sift"), n_prompts: int = 12,
                  sigmas: bool = True, domains: tuple[str, ...] = ("code", "docs", "man")) -> Path:
    """OUT with one `lm eval` run directory per selector (OUT/SELECT/config.json, results/ID.json); prompt p
    is in domain p mod len(domains)."""
    out = root / "lm"
    for s, select in enumerate(selects):
        run = out / select
        (run / "results").mkdir(parents=True)
        (run / "config.json").write_text(json.dumps({"command": "lm eval", "settings": {
            "config.ttt.select": select, "config.ttt.n": 10, "config.ttt.lam": 0.01}}))
        for p in range(n_prompts):
            bits = 1000.0 * (1.0 - 0.05 * s) * (1 + 0.1 * (p % 3))
            record = {"prompt_id": f"p{p}", "domain": domains[p % len(domains)], "select": select, "bits": bits,
                      "bytes": 1000, "picks": [], "stopped": None, "select_ms": 0.5 + s, "nn_select_ms": 0.5,
                      "search_ms": 3.0, "train_s": 1.0, "steps": 0 if select == "none" else 10, "tokens": 500,
                      "bpb": bits / 1000, "status": "ok", "seconds": 2.0}
            if sigmas and select != "none":
                record["sigmas"] = [0.9, 0.5, 0.2 + 0.01 * p]
                record.update(var_before=1.0, var_after=(0.2 + 0.01 * p) ** 2, method=select)
            (run / "results" / f"p{p}.json").write_text(json.dumps(record))
    return out


def write_pretrain_out(root: Path, *, card: bool = True, steps: int = 60) -> Path:
    """An `arc pretrain` OUT: a checkpoint whose state.json holds the loss history, and (if `card`) card.json."""
    out = root / "pretrain"
    ckpt = out / "checkpoints" / f"step-{steps:06d}"
    ckpt.mkdir(parents=True)
    losses = [2.0 * 0.97 ** s + 0.05 * ((s * 7) % 5) / 5 for s in range(steps)]
    val = [[0, 2.1], [steps // 2, 1.2], [steps, 0.9]]
    (ckpt / "state.json").write_text(json.dumps({"step": steps, "optimizer": {},
                                                 "extra": {"losses": losses, "val": val, "tokens": 123456,
                                                           "seconds": 61.7}}))
    (out / "config.json").write_text(json.dumps({"command": "arc pretrain", "settings": {"train.max_steps": steps}}))
    if card:
        (out / "card.json").write_text(json.dumps({
            "kind": "testtime ARC pretraining adapter", "base_model": "embedded", "device": "cpu",
            "data": {"sources": ["re_arc.json.gz"], "validation_tasks": ["a", "b"]}, "steps": steps,
            "tokens_seen": 123456, "seconds": 61.7, "train_loss_first": losses[0], "train_loss_final": losses[-1],
            "val_loss_initial": 2.1, "val_loss_final": 0.9, "val_history": val, "config": {"x": 1}}))
    return out


def read_png(path: Path) -> np.ndarray:
    """The pixels of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes) as (H, W, C) uint8."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 8 + length])
        elif kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    assert depth == 8 and colour in (2, 6) and not interlace, f"unsupported PNG {header}"
    n = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), 1 + width * n
    rows, prev = [], bytearray(width * n)
    for y in range(height):
        kind, line = raw[y * stride], bytearray(raw[y * stride + 1:(y + 1) * stride])
        if kind == 1:
            for x in range(n, len(line)):
                line[x] = (line[x] + line[x - n]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for x in range(len(line)):
                line[x] = (line[x] + ((line[x - n] if x >= n else 0) + prev[x]) // 2) & 255
        elif kind == 4:
            for x in range(len(line)):
                a, b, c = (line[x - n], prev[x], prev[x - n]) if x >= n else (0, prev[x], 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(height, width, n)
