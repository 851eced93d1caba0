"""Faults for the job layer's one test hook, `TESTTIME_TEST_HOOK=FILE.py:FUNCTION:ARG`.

    TESTTIME_TEST_HOOK=/path/to/tests/faults.py:inject:{"die_first": "/tmp/marker", "raise_on": ["task1"]}

Every executor (in-process, and each Ray worker, which imports this file itself) calls
`inject(item_id, first, ARG)` before it runs an item. ARG is a JSON object:

    die_first  a file path: the first process to start its first item exits at once (like an OOM
               kill); once per run, because only the caller that creates the file (O_EXCL) dies
    die_on     item ids: a process exits whenever it starts one of them
    raise_on   item ids: the item raises RuntimeError("fault injected on ID")

Use `hook(...)` to build the environment variable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ENV = "TESTTIME_TEST_HOOK"


def hook(*, die_first: str | Path | None = None, die_on: list[str] | tuple[str, ...] = (),
         raise_on: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """The environment (for CliRunner's `env=`) that makes every executor call `inject` with these faults."""
    arg = {"die_first": None if die_first is None else str(die_first), "die_on": list(die_on),
           "raise_on": list(raise_on)}
    return {ENV: f"{Path(__file__).resolve()}:inject:{json.dumps(arg)}"}


def inject(item_id: str, first: bool, arg: str) -> None:
    """Maybe die (hard: no exception, no cleanup) or raise, before `item_id` runs."""
    faults = json.loads(arg) if arg else {}
    marker = faults.get("die_first")
    if first and marker and _claim(marker):
        os._exit(1)
    if item_id in faults.get("die_on", ()):
        os._exit(1)
    if item_id in faults.get("raise_on", ()):
        raise RuntimeError(f"fault injected on {item_id}")


def _claim(path: str) -> bool:
    """Create `path` if it does not exist yet; True for the one caller that created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
