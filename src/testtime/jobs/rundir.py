"""A run directory: the settings that made it, one record per finished item, one writer at a time.

    RUN/config.json          {"command", "testtime", "settings", "fingerprint", "options"}
    RUN/<records>/<name>.json one record per item, written atomically when the item ends
    RUN/.lock                 flock'ed by the one process writing there (holds its pid)

`settings` are the result-affecting settings (flattened, dotted keys; weights hashes included);
a later run into the same directory must have the same ones, or it is refused with every
difference named (a sweep never mixes results made with different settings). Every record file
is sealed in the envelope of `testtime.records` (the record formats' schema version and the
`fingerprint` of the settings and command that made it), and a record is reused only when its
envelope reads and its fingerprint is this run's, whatever config.json says. `options` are every
command-line option of the run; `testtime ... --config RUN/config.json` reproduces it. An item id
never chooses a path: ids that are not plain names get a hashed file name, and the record keeps
the true id. A setting renamed since a directory was written (`renamed`: old key prefix -> new) is
read under its new name, and a setting added since is read as its default (`defaults`); when nothing
else differs, the directory's records are resealed with this run's fingerprint before config.json is
rewritten, so they are resumed, not redone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from testtime import __version__
from testtime.atomic import read_json, write_json_atomic
from testtime.config import flatten, rename_keys
from testtime.jobs.job import FAILED, OK
from testtime.jobs.lock import DirLock, Locked
from testtime.records import RecordError, seal, unseal

log = logging.getLogger(__name__)

_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_RESERVED = {"config", "submission", "report"}


class RunDirError(ValueError):
    """The run directory cannot be used as asked; the message names it and the way out."""


class WriteFailed(RunDirError):
    """A record or an output could not be written (full disk, read-only folder): the run stops cleanly."""


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



def fingerprint(command: str, settings: Mapping[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the command and its flattened result-affecting settings."""
    text = json.dumps({"command": command, "settings": flatten(dict(settings))}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class RunDir:
    """Config and per-item records of one run; see the module docstring for the layout.

    `open` takes the lock and `close` (or the process ending) drops it; use it as a context manager.
    """

    def __init__(self, path: str | Path, *, records: str = "records", renamed: Mapping[str, str] | None = None,
                 defaults: Mapping[str, Any] | None = None) -> None:
        self.path = Path(path)
        self.records_dir = self.path / records
        self.renamed = dict(renamed or {})
        """Settings keys renamed since older run directories were written (old prefix -> new)."""
        self.defaults = flatten(dict(defaults or {}))
        """Every setting's default (nested or dotted keys): what a directory written before a setting existed
        made its results with."""
        self.opened = False
        """Set by `open`: the settings were checked and config.json written."""
        self.fingerprint: str | None = None
        """Of this run's settings, set by `open`; saved records carry it, resumed ones must match it."""
        self._lock = DirLock(self.path / ".lock")

    @property
    def config_file(self) -> Path:
        return self.path / "config.json"

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop the lock (the records and config stay)."""
        self._lock.release()

    def check_path(self) -> None:
        """Raise RunDirError when the directory cannot be made: it is a file, or lies under one."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"--out {self.path} is a file; give a directory (it is created if missing)")
        blocker = next((p for p in self.path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise RunDirError(f"--out {self.path}: cannot write there ({blocker} is a file); "
                              "give a writable directory")

    def open(self, command: str, settings: Mapping[str, Any], options: Mapping[str, Any] | None = None, *,
             restart: bool = False, flags: Mapping[str, str] | None = None) -> None:
        """Lock the directory, refuse other settings (or, with `restart`, delete this command's results
        once everything else checked out), then write config.json."""
        self.check_path()
        settings = flatten(dict(settings))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Locked as err:
            raise RunDirError(f"--out {self.path} is being written by another run (process {err.pid}); wait for it "
                              "to end, or use --out NEW_DIR") from None
        except OSError as err:
            raise RunDirError(f"--out {self.path}: cannot write there ({err.strerror or err}); "
                              "give a writable directory") from None
        written_as: str | None = None
        try:
            if restart:
                self._check_command(command)
                self.clear()
            else:
                written_as = self.check(command, settings, flags)
            self.fingerprint = fingerprint(command, settings)
            if written_as is not None:
                self._reseal(written_as, self.fingerprint)
            self.records_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.config_file, {"command": command, "testtime": __version__, "settings": settings,
                                                 "fingerprint": self.fingerprint, "options": dict(options or {})},
                              indent=1)
        except OSError as err:
            self.close()
            raise RunDirError(f"--out {self.path}: cannot write there ({err.strerror or err}); "
                              "give a writable directory") from None
        except BaseException:
            self.close()
            raise
        self.opened = True

    def _read_config(self) -> tuple[Any, bool]:
        """(parsed config.json or None, whether something is there)."""
        return read_json(self.config_file), self.config_file.exists() or self.config_file.is_symlink()

    def _check_command(self, command: str) -> None:
        """`--restart` deletes only this command's results: refuse a directory another command made."""
        old, _ = self._read_config()
        made_by = old.get("command") if isinstance(old, dict) else None
        if isinstance(made_by, str) and made_by != command:
            raise RunDirError(f"--restart: {self.path} holds a run of `{made_by}`, not `{command}`; nothing was "
                              "deleted. Give this command its own --out")

    def check(self, command: str, settings: Mapping[str, Any], flags: Mapping[str, str] | None = None) -> str | None:
        """Raise SettingsChanged when the directory holds a run with other result-affecting settings. Returns
        the fingerprint its records carry when it was written under renamed settings keys or before a setting
        existed (else None)."""
        old, there = self._read_config()
        if old is None:
            if there:
                raise RunDirError(f"{self.config_file} is not readable JSON; use --restart to start over there "
                                  "or --out NEW_DIR")
            n = sum(1 for _ in self._record_files())
            if n:
                raise RunDirError(f"{self.path} holds {n} records but no config.json, so the settings that made them "
                                  "are unknown and they would be mixed with these; use --out NEW_DIR, or --restart "
                                  f"to discard {self.path}'s results and start over there")
            return None
        if not isinstance(old, dict) or not isinstance(old.get("settings"), dict) or old.get("command") != command:
            raise RunDirError(f"{self.path} holds a run of another command or testtime version "
                              f"({old.get('command', 'unknown') if isinstance(old, dict) else 'unknown'}); "
                              "use --out NEW_DIR, or --restart to start over there")
        current = rename_keys(old["settings"], self.renamed)
        current.update({k: self.defaults[k] for k in settings if k not in current and k in self.defaults})
        changes = changed_settings(current, settings, flags)
        if changes:
            raise SettingsChanged(self.path, changes)
        if current == old["settings"]:
            return None
        written = old.get("fingerprint")
        return written if isinstance(written, str) else fingerprint(command, old["settings"])

    def _reseal(self, old: str, new: str) -> None:
        """Give the records sealed with fingerprint `old` (settings since renamed, same values) the fingerprint
        `new`; each file is rewritten atomically, so an interrupted pass is finished by the next run."""
        n = 0
        for path in self._record_files():
            try:
                sealed = unseal(read_json(path))
            except RecordError:
                continue
            if sealed.fingerprint == old:
                write_output(path, lambda p, r=sealed.record: write_json_atomic(p, seal(r, new)))
                n += 1
        if n:
            log.info("%s: %d records made under the old names of renamed settings now carry this run's fingerprint",
                     self.path, n)

    def clear(self) -> None:
        """Delete this run's config and records (other files in the directory are left alone).

        A symlink is removed, never followed; whatever cannot be deleted is an error, so no old
        record is ever resumed after a restart."""
        for target in (self.records_dir, self.config_file):
            try:
                if target.is_symlink() or (target.exists() and not target.is_dir()):
                    target.unlink()
                elif target.is_dir():
                    shutil.rmtree(target)
            except OSError as err:
                raise RunDirError(f"--restart: cannot delete {err.filename or target} ({err.strerror or err}); "
                                  "delete it by hand, or use --out NEW_DIR") from None
        left = [str(p) for p in (self.records_dir, self.config_file) if p.exists() or p.is_symlink()]
        if left:
            raise RunDirError(f"--restart: {', '.join(left)} still there after deleting; delete it by hand, or use "
                              "--out NEW_DIR")

    def record_file(self, item_id: str) -> Path:
        return self.records_dir / f"{record_name(item_id)}.json"

    def _record_files(self) -> Iterator[Path]:
        if self.records_dir.is_dir():
            yield from (p for p in sorted(self.records_dir.glob("*.json")) if not p.name.startswith("."))

    def record(self, item_id: str, id_key: str) -> dict[str, Any] | None:
        """The saved record of `item_id` (its JSON, out of the envelope), or None (missing, unreadable, of a
        newer schema, someone else's or made under other settings: then redone, with a warning naming the file)."""
        path = self.record_file(item_id)
        data = read_json(path)
        if data is None:
            if path.exists():
                log.warning("%s does not parse; its item is run again", path)
            return None
        try:
            sealed = unseal(data)
        except RecordError as err:
            log.warning("%s is not a record this run reads (%s); its item is run again", path, err)
            return None
        record = sealed.record
        if record.get(id_key) != item_id or record.get("status") not in (OK, FAILED):
            log.warning("%s is not a record of %s; its item is run again", path, item_id)
            return None
        if self.fingerprint is not None and sealed.fingerprint != self.fingerprint:
            log.warning("%s was made with other settings (fingerprint %s, this run's %s); its item is run again",
                        path, sealed.fingerprint, self.fingerprint)
            return None
        return record

    def finished(self, id_key: str, load: Callable[[dict[str, Any]], Any] = dict) -> dict[str, Any]:
        """Every record in the directory made under this run's settings, by id, as `load(json)`; a record that
        `load` refuses (ValueError) is left out."""
        found: dict[str, Any] = {}
        for path in self._record_files():
            try:
                sealed = unseal(read_json(path))
            except RecordError:
                continue
            record = sealed.record
            if sealed.fingerprint != self.fingerprint or not isinstance(record.get(id_key), str) or \
                    record.get("status") not in (OK, FAILED) or path.name != f"{record_name(record[id_key])}.json":
                continue
            try:
                found[record[id_key]] = load(record)
            except ValueError:
                continue
        return found

    def save(self, record: dict[str, Any], id_key: str) -> None:
        """Write a record (its JSON), sealed with this run's fingerprint; WriteFailed names the file and the OS
        error."""
        data = seal(record, self.fingerprint)
        write_output(self.record_file(record[id_key]), lambda path: write_json_atomic(path, data))


def write_output(path: Path, write: Callable[[Path], None]) -> None:
    """`write(path)`, with an OSError turned into WriteFailed naming the file and what the system said."""
    try:
        write(path)
    except OSError as err:
        raise WriteFailed(f"cannot write {path} ({err.strerror or err}); every record finished before it is kept: "
                          "free space or fix the permissions, then run the same command again") from None
