"""What a file or a folder of weights is, by content: SHA-256, remembered per (inode, size, mtime).

    sha256_file(path, store=cache / "sha256.json")   # hashed once; later calls (any process) stat it
    weights_digest(Path("adapters/arc"))              # one hash over the files that decide the outputs
    write_manifest(folder); manifest_problems(folder) # a folder checked against its sizes and hashes

Hashing a multi-GB model on every command would cost seconds, so a file's hash is remembered
in-process and, with a `store`, in a JSON file keyed by the real path and checked against the
file's device, inode, size and modification time: any write (a one-byte flip included) changes
the modification time and makes it hash again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path

from testtime.atomic import read_json, write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth")
CONFIG_NAMES = ("config.json", "adapter_config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt")
"""Besides the weights, the files of a model or adapter folder that change what it computes."""


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


@functools.lru_cache(maxsize=64)
def _hash(path: str, stamp: tuple[int, ...]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_file(path: str | Path, store: Path | None = None) -> str:
    """SHA-256 of a file's bytes; raises OSError when it cannot be read."""
    real = os.path.realpath(path)
    stamp = _stamp(os.stat(real))
    known = read_json(store) if store is not None else None
    entry = known.get(real) if isinstance(known, dict) else None
    if isinstance(entry, list) and len(entry) == 5 and entry[:4] == stamp and isinstance(entry[4], str):
        return entry[4]
    digest = _hash(real, tuple(stamp))
    if store is not None:
        table = known if isinstance(known, dict) else {}
        table[real] = [*stamp, digest]
        try:
            write_json_atomic(store, table)
        except OSError as err:  # only costs time: the next process hashes it again
            log.debug("cannot remember the hash in %s: %s", store, err)
    return digest


def weight_files(folder: Path) -> list[Path]:
    """The files of a model or adapter folder that decide its outputs (weights, configs, tokenizer)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in CONFIG_NAMES))


def weights_digest(path: str | Path, store: Path | None = None) -> str:
    """A SHA-256 naming the content of a weights file, or of a folder's `weight_files` (names and bytes)."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path, store)
    h = hashlib.sha256()
    for file in weight_files(path):
        h.update(f"{file.name}\0{sha256_file(file, store)}\n".encode())
    return h.hexdigest()


def write_manifest(folder: Path, store: Path | None = None) -> None:
    """`folder/manifest.json`: the size and SHA-256 of every file in `folder` (subfolders included)."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p, store)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1))


def manifest_problems(folder: Path, store: Path | None = None) -> list[str]:
    """What differs between `folder` and its manifest (missing, other size, other hash); [] when whole."""
    manifest = read_json(folder / MANIFEST)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return [f"{folder / MANIFEST} is missing or damaged"]
    problems = []
    for name, want in files.items():
        path = folder / name
        if not isinstance(want, dict) or not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != want.get("size"):
            problems.append(f"{name} has {path.stat().st_size} bytes, not {want.get('size')}")
        elif sha256_file(path, store) != want.get("sha256"):
            problems.append(f"{name} has other bytes than when it was written")
    return problems
