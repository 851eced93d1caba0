"""A run directory: the settings that made it, and one record per finished item.

    RUN/config.json          {"command", "testtime", "settings", "options"}
    RUN/<records>/<name>.json one record per item, written atomically when the item ends

`settings` are the result-affecting settings (flattened, dotted keys); a later run into the
same directory must have the same ones, or it is refused with every difference named (a sweep
never mixes results made with different settings). `options` are every command-line option of
the run; `testtime ... --config RUN/config.json` reproduces it. An item id never chooses a
path: ids that are not plain names get a hashed file name, and the record keeps the true id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from testtime import __version__
from testtime.atomic import read_json, write_json_atomic
from testtime.config import flatten
from testtime.jobs.job import FAILED, OK

log = logging.getLogger(__name__)

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RESERVED = {"config", "submission", "report"}


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message names it and the way out."""


class SettingsChanged(RunDirError):
    """A rerun into a directory made with other result-affecting settings."""

    def __init__(self, path: Path, changes: list[tuple[str, Any, Any]]) -> None:
        self.changes = changes
        listed = "; ".join(f"{name}: {_show(old)} -> {_show(new)}" for name, old, new in changes)
        super().__init__(f"{path} holds results made with other settings ({listed}); its results would be "
                         f"mixed with these. Use --out NEW_DIR for a new run, or --restart to discard {path}'s "
                         "results and start over there")


def _show(value: Any) -> str:
    return "(unset)" if value is _MISSING else repr(value)


_MISSING = object()


def record_name(item_id: str) -> str:
    """A file name for an item id: the id itself when it is a plain name, else a hashed safe one.

    Plain: letters, digits, `.`, `_`, `-`, not starting with a dot, at most 100 characters, and
    no reserved name. Others become `~` + a sanitised prefix + 16 hex digits of the id's SHA-256;
    plain names never contain `~`, so two different ids never share a file.
    """
    if _PLAIN.fullmatch(item_id) and item_id.lower() not in _RESERVED:
        return item_id
    digest = hashlib.sha256(item_id.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", item_id)[:40].lstrip(".")
    return f"~{stem}-{digest}"


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any],
                     flags: Mapping[str, str] | None = None) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for each differing setting; `flags` maps dotted keys to the command's flag."""
    changes, seen = [], set()
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before == after:
            continue
        name = (flags or {}).get(key, key)
        if name in seen:  # one flag that sets several fields (e.g. --seed)
            continue
        seen.add(name)
        changes.append((name, before, after))
    return changes


class RunDir:
    """Config and per-item records of one run; see the module docstring for the layout."""

    def __init__(self, path: str | Path, *, records: str = "records") -> None:
        self.path = Path(path)
        self.records_dir = self.path / records
        self.opened = False
        """Set by `open`: the settings were checked and config.json written."""

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def open(self, command: str, settings: Mapping[str, Any], options: Mapping[str, Any] | None = None, *,
             restart: bool = False, flags: Mapping[str, str] | None = None) -> None:
        """Make the directory ready: refuse other settings (unless `restart`), then write config.json."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file; give a directory (it is created if missing)")
        settings = flatten(dict(settings))
        if restart:
            self.clear()
        else:
            self.check(command, settings, flags)
        try:
            self.records_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config_file, {"command": command, "testtime": __version__,
                                                 "settings": settings, "options": dict(options or {})}, indent=1)
        except OSError as err:
            raise RunDirError(f"--out {self.path}: cannot write there ({err.strerror or err}); "
                              "give a writable directory") from None
        self.opened = True

    def check(self, command: str, settings: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> None:
        """Raise SettingsChanged when the directory holds a run with other result-affecting settings."""
        old = read_json(self.config_file)
        if old is None:
            if self.config_file.exists():
                raise RunDirError(f"{self.config_file} is not readable JSON; use --restart to start over there "
                                  "or --out NEW_DIR")
            return
        if not isinstance(old, dict) or not isinstance(old.get("settings"), dict) or old.get("command") != command:
            raise RunDirError(f"{self.path} holds a run of another command or testtime version "
                              f"({old.get('command', 'unknown') if isinstance(old, dict) else 'unknown'}); "
                              "use --out NEW_DIR, or --restart to start over there")
        changes = changed_settings(old["settings"], settings, flags)
        if changes:
            raise SettingsChanged(self.path, changes)

    def clear(self) -> None:
        """Delete this run's config and records (other files in the directory are left alone)."""
        shutil.rmtree(self.records_dir, ignore_errors=True)
        self.config_file.unlink(missing_ok=True)

    def record_file(self, item_id: str) -> Path:
        return self.records_dir / f"{record_name(item_id)}.json"

    def record(self, item_id: str, id_key: str) -> dict[str, Any] | None:
        """The saved record of `item_id`, or None (missing, unreadable or someone else's: then redone)."""
        path = self.record_file(item_id)
        data = read_json(path)
        if data is None:
            if path.exists():
                log.warning("%s does not parse; its item is run again", path)
            return None
        if not isinstance(data, dict) or data.get(id_key) != item_id or data.get("status") not in (OK, FAILED):
            log.warning("%s is not a record of %s; its item is run again", path, item_id)
            return None
        return data

    def save(self, record: dict[str, Any], id_key: str) -> None:
        write_json_atomic(self.record_file(record[id_key]), record)
