"""The corpus's domains: where each kind of text lives on a Debian system and how a file is read."""

from __future__ import annotations

import gzip
import re
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .html import html_to_text
from .roff import roff_to_text


@dataclass(frozen=True)
class Domain:
    """One kind of text: where its files live and how a file becomes plain text."""

    name: str
    """Label written to every row ("code", "man", ...)."""
    package: str
    """What to `apt-get install` when the files are missing."""
    roots: tuple[Path, ...]
    """Directories searched; missing ones are ignored, all missing skips the domain."""
    files: Callable[[Path], Iterator[Path]]
    """The documents under one root."""
    read: Callable[[Path], str]
    """A document's plain text."""


def read_text(path: Path) -> str:
    """A file's text, gunzipped if it ends in .gz; UTF-8, else Latin-1."""
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    if b"\x00" in data:
        raise ValueError(f"{path} holds binary data")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


_LICENSE_NAME = re.compile(r"(copyright|licen[cs]e|copying)([-._].*)?", re.IGNORECASE)
_DOC_INDEX_PAGES = re.compile(r"(genindex.*|search|py-modindex)\.html")


def _python_files(root: Path) -> Iterator[Path]:
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    return (p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))


def _man_pages(root: Path) -> Iterator[Path]:
    for section in root.glob("man*"):   # man1 ... man9; translations live in /usr/share/man/<lang>
        if section.is_dir():
            yield from (p for p in section.iterdir() if p.is_file() and not p.is_symlink())


def _licence_files(root: Path) -> Iterator[Path]:
    for p in root.rglob("*"):
        if p.is_file() and (root.name == "common-licenses" or _LICENSE_NAME.fullmatch(p.name)) \
                and p.suffix not in {".py", ".pyc", ".so", ".html", ".json"}:
            yield p


def _changelogs(root: Path) -> Iterator[Path]:
    return (p for p in root.glob("*/changelog*") if p.is_file())


def _html_pages(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*.html")
            if not p.relative_to(root).parts[0].startswith("_") and not _DOC_INDEX_PAGES.fullmatch(p.name))


def _text_files(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*.txt") if p.is_file())


def _read_man(path: Path) -> str:
    return roff_to_text(read_text(path))


def _read_html(path: Path) -> str:
    return html_to_text(read_text(path))


def default_domains(sources: dict[str, list[Path]] | None = None) -> dict[str, Domain]:
    """The seven domains with this machine's default roots; `sources` replaces a domain's roots."""
    purelib = Path(sysconfig.get_paths()["purelib"])
    site = {Path("/usr/lib/python3/dist-packages"), purelib}
    domains = [
        Domain("code", "libpython3.11-stdlib", (Path("/usr/lib/python3.11"),), _python_files, read_text),
        Domain("pypi-code", "the project's own .venv (pip install -e .[dev])", (purelib,), _python_files, read_text),
        Domain("math", "mathematics-dataset (generated into --cache by dev/corpus/mathematics.py)",
               (Path(".bench-data/math"),), _text_files, read_text),
        Domain("man", "manpages manpages-dev", (Path("/usr/share/man"),), _man_pages, _read_man),
        Domain("licenses", "base-files (any Debian system)",
               (Path("/usr/share/common-licenses"), Path("/usr/share/doc"), *sorted(site)),
               _licence_files, read_text),
        Domain("changelogs", "any Debian package (changelog.Debian.gz)", (Path("/usr/share/doc"),),
               _changelogs, read_text),
        Domain("docs", "python3.11-doc", (Path("/usr/share/doc/python3.11/html"),), _html_pages,
               _read_html),
    ]
    sources = sources or {}
    return {d.name: Domain(d.name, d.package, tuple(sources[d.name]), d.files, d.read)
            if d.name in sources else d for d in domains}
