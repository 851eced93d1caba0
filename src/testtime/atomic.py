"""The one way files are written: a unique temporary name beside the target, fsync, rename.

A reader never sees a half-written file, a crash leaves at most a hidden `.NAME.*.tmp` beside
it, and two writers racing each leave a whole file (the last rename wins). Files get the mode
the process umask gives (as `open` would), not mkstemp's 0600.

    write_json_atomic(run / "tasks" / "x.json", record)
    with atomic_path(out / "index.faiss") as tmp:      # for libraries that want a path to write
        faiss.write_index(index, str(tmp))
    with atomic_dir(cache / key) as tmp:               # a whole folder appears at once, or not at all
        model.save_pretrained(tmp)
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path beside `path`; on success it is fsynced and renamed over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o666))
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path`, all or nothing."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path`, all or nothing."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any, *, indent: int | None = None) -> None:
    """Write `data` as JSON to `path`, all or nothing (compact unless `indent`)."""
    separators = (",", ":") if indent is None else None
    write_text_atomic(path, json.dumps(data, indent=indent, separators=separators))


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it is renamed to `path`.

    If `path` exists by then (another process got there first) the new folder is dropped, unless
    `replace`, which removes the old one first. The temporary folder never outlives the block.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, _umask_mode(0o777))
        if replace and path.exists():
            shutil.rmtree(path)
        try:
            os.rename(tmp, path)
        except OSError:
            if replace or not path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str | Path) -> Any | None:
    """The JSON in `path`, or None if it is missing or does not parse."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
