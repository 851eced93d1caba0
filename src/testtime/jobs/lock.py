"""One writer per run directory: an OS file lock (`flock`) on `RUN/.lock`, held for the length of a run.

The kernel drops the lock when the holding process ends, however it ends (`kill -9` included), so a
crashed run never leaves a stale lock. The holder writes its pid into the file, so a second writer
is refused with the pid that holds it. Within one process the lock is shared (counted), so library
code may open the same run directory twice; the guard is between processes.

    lock = DirLock(run / ".lock")
    lock.acquire()          # raises Locked(pid) when another process holds it
    ...
    lock.release()
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class Locked(RuntimeError):
    """Another process holds the lock."""

    def __init__(self, path: Path, pid: str) -> None:
        self.path, self.pid = path, pid
        super().__init__(f"{path} is held by process {pid}")


_HELD: dict[str, list[int]] = {}
"""Real path of a lock file -> [descriptor, holders] for the locks this process holds."""


class DirLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.key: str | None = None

    @property
    def held(self) -> bool:
        return self.key is not None

    def acquire(self) -> None:
        """Take the lock now or raise Locked (never waits); OSError when the file cannot be made."""
        if self.key is not None:
            return
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self.key = key
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise Locked(self.path, holder) from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        self.key = key

    def release(self) -> None:
        if self.key is None:
            return
        key, self.key = self.key, None
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] -= 1
            if entry[1] <= 0:
                del _HELD[key]
                os.close(entry[0])  # closing the last descriptor drops the flock

    def __del__(self) -> None:
        self.release()
