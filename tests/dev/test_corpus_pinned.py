"""dev/corpus's pinned domains (issue 32): archives checked by SHA-256 and extracted safely, the files each new domain
reads, the per-domain byte cap, and pins.json naming what pins each domain. No network: pip is never run."""

from __future__ import annotations

import hashlib
import io
import json
import platform
import subprocess
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from dev.corpus import CorpusArgs, build_corpus, compare_pins, corpus_pins, default_domains, domain_pins, normalise
from dev.corpus import archives as archives_module
from dev.corpus import build as build_module
from dev.corpus import pins as pins_module
from dev.corpus.__main__ import main
from dev.corpus.archives import STAMP, Archive, prepare_archive

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def prose(tag: str, n_lines: int) -> str:
    """n_lines distinct lines of ~60 bytes, unique to `tag`."""
    return "\n".join(f"{tag} line {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8))
                     for i in range(n_lines)) + "\n"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def pinned(path: Path, kind: str, requirement: str = "pkg==1.0") -> Archive:
    """An Archive pinning the file at `path` (its real SHA-256)."""
    return Archive(path.stem, requirement, hashlib.sha256(path.read_bytes()).hexdigest(), kind, path.name)


def make_wheel(folder: Path, files: dict[str, str], name: str = "pkg-1.0-py3-none-any.whl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / name, "w") as zf:
        for member, text in files.items():
            zf.writestr(member, text)
    return folder / name


def make_sdist(folder: Path, files: dict[str, str], name: str = "pkg-1.0.tar.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / name, "w:gz") as tf:
        for member, text in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(text.encode())
            tf.addfile(info, io.BytesIO(text.encode()))
    return folder / name


@pytest.fixture
def no_pip(monkeypatch):
    """Fail the test if anything runs a subprocess (pip download)."""
    def run(*args, **kw):
        raise AssertionError(f"subprocess.run called: {args}")
    monkeypatch.setattr(archives_module.subprocess, "run", run)


WHEEL = {"pkg/__init__.py": "VERSION = '1.0'\n", "pkg/core.py": "def run():\n    return 1\n",
         "pkg-1.0.dist-info/METADATA": "Name: pkg\n"}
SDIST = {"pkg-1.0/docs/index.txt": "Index\n=====\n", "pkg-1.0/docs/releases/1.0.txt": "Release 1.0\n",
         "pkg-1.0/setup.py": "\n"}


def test_archives_in_the_cache_are_checked_and_extracted_without_pip(tmp_path, no_pip):
    wheel = pinned(make_wheel(tmp_path / "archives", WHEEL), "wheel")
    sdist = pinned(make_sdist(tmp_path / "archives", SDIST), "sdist")
    root = prepare_archive(tmp_path, wheel)
    assert root == tmp_path / "archives" / "pkg-1.0-py3-none-any"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) == sorted(
        [*WHEEL, STAMP])
    assert (root / "pkg" / "core.py").read_text() == WHEEL["pkg/core.py"]
    assert (root / STAMP).read_text().strip() == wheel.sha256
    root = prepare_archive(tmp_path, sdist)
    assert root == tmp_path / "archives" / "pkg-1.0" / "pkg-1.0"   # an sdist's one NAME-VERSION/ folder
    assert (root / "docs" / "releases" / "1.0.txt").read_text() == "Release 1.0\n"
    assert not list((tmp_path / "archives").glob(".*.tmp"))


def test_a_stamped_extraction_is_not_redone(tmp_path, no_pip, monkeypatch):
    archive = pinned(make_sdist(tmp_path / "archives", SDIST), "sdist")
    root = prepare_archive(tmp_path, archive)
    (root / "marker").write_text("kept")
    (tmp_path / "archives" / archive.filename).unlink()     # not even needed any more
    monkeypatch.setattr(archives_module, "extract", lambda *a: pytest.fail("extracted again"))
    assert prepare_archive(tmp_path, archive) == root and (root / "marker").read_text() == "kept"


def test_a_wrong_hash_names_the_file_and_both_hashes(tmp_path, no_pip):
    good = pinned(make_wheel(tmp_path / "archives", WHEEL), "wheel")
    bad = Archive(good.name, good.requirement, "0" * 64, "wheel", good.filename)
    with pytest.raises(RuntimeError) as err:
        prepare_archive(tmp_path, bad)
    message = str(err.value)
    assert str(tmp_path / "archives" / good.filename) in message
    assert good.sha256 in message and "0" * 64 in message and "delete" in message
    assert not (tmp_path / "archives" / "pkg-1.0-py3-none-any").exists()


@pytest.mark.parametrize("member", ["pkg-1.0/../../evil.txt", "/tmp/evil.txt"])
def test_members_outside_the_folder_are_refused(tmp_path, no_pip, member):
    archive = pinned(make_sdist(tmp_path / "archives", {"pkg-1.0/ok.txt": "ok\n", member: "evil\n"}), "sdist")
    with pytest.raises(ValueError, match="outside the folder"):
        prepare_archive(tmp_path, archive)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "archives" / "pkg-1.0").exists()
    wheel = pinned(make_wheel(tmp_path / "w", {"../evil.py": "x\n"}), "wheel")
    (tmp_path / "w" / wheel.filename).rename(tmp_path / "archives" / wheel.filename)
    with pytest.raises(ValueError, match="outside the folder"):
        prepare_archive(tmp_path, wheel)


def test_pip_downloads_a_missing_archive_and_a_failure_says_the_fix(tmp_path, monkeypatch):
    source = make_wheel(tmp_path / "pypi", WHEEL)
    archive = pinned(source, "wheel", "transformers==4.46.3")
    calls = []
    def pip(cmd, **kw):
        calls.append(cmd)
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / archive.filename).write_bytes(source.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "", "")
    monkeypatch.setattr(archives_module.subprocess, "run", pip)
    assert (prepare_archive(tmp_path / "cache", archive) / "pkg" / "core.py").exists()
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "--only-binary",
                            ":all:", "transformers==4.46.3", "-d", str(tmp_path / "cache" / "archives")]
    monkeypatch.setattr(archives_module.subprocess, "run",
                        lambda cmd, **kw: subprocess.CompletedProcess(cmd, 1, "", "ERROR: no network"))
    sdist = Archive("django", "Django==4.2.17", "0" * 64, "sdist", "Django-4.2.17.tar.gz")
    with pytest.raises(RuntimeError) as err:
        prepare_archive(tmp_path / "cache", sdist)
    message = str(err.value)
    assert "Django==4.2.17" in message and "ERROR: no network" in message and "PyPI" in message
    assert "--domains without django-docs, release-notes" in message


def tree_files(domain: str, root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in default_domains({domain: [root]})[domain].files(root))


def test_the_files_each_pinned_domain_reads(tmp_path):
    stdlib, wheel, django = tmp_path / "python3.11", tmp_path / "wheel", tmp_path / "Django-4.2.17"
    for name in ("json/decoder.py", "os.py", "pydoc_data/topics.py", "test/test_os.py", "site-packages/x/y.py",
                 "idlelib/idle_test/t.py", "json/README"):
        write(stdlib / name, "x = 1\n")
    for name in ("transformers/models/bert/modeling_bert.py", "transformers/testing_utils.py",
                 "transformers/tests/test_bert.py", "transformers/kernels/k.cu",
                 "transformers-4.46.3.dist-info/RECORD"):
        write(wheel / name, "x = 1\n")
    for name in ("docs/index.txt", "docs/ref/models/fields.txt", "docs/releases/4.2.txt", "docs/releases/index.txt",
                 "docs/_theme/djangodocs/LICENSE.txt", "docs/conf.py", "docs/releases/old/1.0.txt", "README.rst",
                 "django/contrib/admin/static/LICENSE.txt"):
        write(django / name, "Text\n")
    assert tree_files("code", stdlib) == ["json/decoder.py", "os.py"]
    assert tree_files("pypi-code", wheel) == ["transformers/models/bert/modeling_bert.py",
                                              "transformers/testing_utils.py"]
    assert tree_files("django-docs", django) == ["docs/index.txt", "docs/ref/models/fields.txt"]
    assert tree_files("release-notes", django) == ["docs/releases/4.2.txt", "docs/releases/index.txt"]
    defaults = default_domains()
    assert defaults["code"].roots == (Path(sysconfig.get_paths()["stdlib"]),)
    assert platform.python_version() in defaults["code"].package
    assert "Django==4.2.17" in defaults["release-notes"].package and "man" in defaults
    assert CorpusArgs(out=tmp_path).domains == ("math", "code", "pypi-code", "django-docs", "release-notes")


def test_the_byte_cap_stops_the_memory_at_the_first_document_past_it(tmp_path):
    root = tmp_path / "python3.11"
    for i in range(10):
        write(root / f"m{i}.py", prose(f"module {i}", 10))   # ~630 bytes: memory only (the window is 1536)
    size = len(normalise(prose("module 0", 10)).encode())   # every document's size, as read
    def build(out: str, **kw):
        args = CorpusArgs(out=tmp_path / out, domains=("code",), sources={"code": [root]}, prompts_per_domain=0,
                          max_memory_docs_per_domain=0, **kw)
        return build_corpus(args)["code"]
    assert (build("all").memory, build("all").memory_bytes) == (10, 10 * size)
    capped = build("capped", max_memory_bytes_per_domain=3 * size + size // 2)
    assert (capped.memory, capped.memory_bytes, capped.read, capped.too_short) == (3, 3 * size, 4, 1)
    assert build("exact", max_memory_bytes_per_domain=3 * size).memory == 3
    main(["--out", str(tmp_path / "cli"), "--domains", "code", "--source", f"code={root}", "--prompts-per-domain",
          "0", "--max-memory-mb-per-domain", str((3 * size + size // 2) / 1e6)])
    assert (tmp_path / "cli" / "memory.jsonl").read_bytes() == (tmp_path / "capped" / "memory.jsonl").read_bytes()
    assert json.loads((tmp_path / "cli" / "corpus.json").read_text())["args"]["max_memory_bytes_per_domain"] == \
        3 * size + size // 2
    with pytest.raises(ValueError, match="--max-memory-mb-per-domain"):
        build("bad", max_memory_bytes_per_domain=-1)


@pytest.fixture
def fake_pins(tmp_path, monkeypatch, no_pip) -> dict[str, Archive]:
    """PINNED replaced by a tiny wheel and a tiny Django-like sdist, both already in CACHE/archives."""
    wheel = make_wheel(tmp_path / "cache" / "archives", {
        f"transformers/m{i}.py": prose(f"def model_{i}()", 40) for i in range(6)}, "transformers-9.9-py3-none-any.whl")
    sdist = make_sdist(tmp_path / "cache" / "archives", {
        **{f"Django-9.9/docs/topics/t{i}.txt": prose(f"topic {i}", 40) for i in range(6)},
        **{f"Django-9.9/docs/releases/9.{i}.txt": prose(f"Django 9.{i} release notes", 40) for i in range(6)}},
        "Django-9.9.tar.gz")
    fake = {"transformers": pinned(wheel, "wheel", "transformers==9.9"),
            "django": pinned(sdist, "sdist", "Django==9.9")}
    for module in (build_module, pins_module):
        monkeypatch.setattr(module, "PINNED", fake)
    return fake


def test_build_prepares_only_the_requested_archives_and_pins_them(tmp_path, fake_pins):
    args = CorpusArgs(out=tmp_path / "out", domains=("code", "django-docs", "release-notes"), prompts_per_domain=2,
                      max_memory_docs_per_domain=3, cache=tmp_path / "cache", sources={"code": [tmp_path / "none"]})
    counts = build_corpus(args)
    assert (counts["django-docs"].prompts, counts["django-docs"].memory) == (2, 3)
    assert (counts["release-notes"].prompts, counts["release-notes"].memory) == (2, 3)
    assert counts["code"].skipped   # --source: nothing to read, and no interpreter pin either
    assert not (tmp_path / "cache" / "archives" / "transformers-9.9-py3-none-any").exists()
    assert {r["id"].split("/")[1] for r in rows(tmp_path / "out" / "prompts.jsonl")} == {"Django-9.9"}
    pins = json.loads((tmp_path / "out" / "pins.json").read_text())
    django = {"requirement": "Django==9.9", "file": "Django-9.9.tar.gz", "sha256": fake_pins["django"].sha256}
    assert pins["pinned_by"] == {"django-docs": django, "release-notes": django}


def test_sources_given_on_the_command_line_download_nothing(tmp_path, fake_pins):
    prepare_archive(tmp_path / "cache", fake_pins["django"])
    extracted = tmp_path / "cache" / "archives" / "Django-9.9" / "Django-9.9"
    wheel_tree = tmp_path / "wheel"
    zipfile.ZipFile(tmp_path / "cache" / "archives" / "transformers-9.9-py3-none-any.whl").extractall(wheel_tree)
    cache = tmp_path / "empty-cache"
    assert main(["--out", str(tmp_path / "out"), "--domains", "pypi-code,django-docs,release-notes", "--cache",
                 str(cache), "--prompts-per-domain", "2", "--source", f"pypi-code={wheel_tree}",
                 "--source", f"django-docs={extracted}", "--source", f"release-notes={extracted}"]) == 0
    assert not cache.exists()
    assert {r["domain"] for r in rows(tmp_path / "out" / "prompts.jsonl")} == {
        "pypi-code", "django-docs", "release-notes"}
    assert json.loads((tmp_path / "out" / "pins.json").read_text())["pinned_by"] == {}


def test_pins_name_what_pins_each_domain_and_a_pin_that_changed(monkeypatch):
    pins = domain_pins(["math", "code", "pypi-code", "man"])
    assert pins["code"] == {"python": platform.python_version()}
    assert pins["pypi-code"]["requirement"] == "transformers==4.46.3"
    assert pins["pypi-code"]["sha256"] == "a12ef6f52841fd190a3e5602145b542d03507222f2c64ebb7ee92e8788093aef"
    assert pins["math"]["env"][0] == "mathematics-dataset==1.0.1" and "man" not in pins
    memory = [{"id": "code/a.py", "domain": "code", "text": "x = 1\n"}]
    prompts = [{"id": "code/b.py", "domain": "code", "prompt": "def f(", "continuation": "):\n"}]
    old = corpus_pins(memory, prompts, pinned_by={"code": {"python": "3.11.7"}, "pypi-code": pins["pypi-code"]})
    monkeypatch.setattr(pins_module.platform, "python_version", lambda: "3.12.1")
    new = corpus_pins([{**memory[0], "text": "x = 2\n"}], prompts, pinned_by=domain_pins(["code"]))
    assert compare_pins(old, new) == [
        "code: python 3.11.7 pinned, 3.12.1 built",
        "pypi-code: transformers==4.46.3 (sha256 a12ef6f52841...) pinned, no pin built",
        "code: memory differs (1 pinned, 1 built)"]
    assert compare_pins(old, old) == []
