"""dev/corpus (the benchmark corpus builder) on a fake source tree: the split, deduplication, prompt cuts, determinism,
the converters and the command line."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dev.corpus import (
    CorpusArgs,
    DomainCounts,
    build_corpus,
    drop_leaks,
    html_to_text,
    normalise,
    read_text,
    roff_to_text,
    split_prompt,
    truncate,
)
from dev.corpus.__main__ import main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def prose(tag: str, n_lines: int) -> str:
    """n_lines distinct lines of ~60 bytes, unique to `tag`."""
    return "\n".join(f"{tag} line {i}: " + " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(8))
                     for i in range(n_lines))


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, list[Path]]:
    """Fake roots for code and changelogs: 12 long and 6 short documents each, plus copies."""
    code, doc = tmp_path / "src" / "python3.11", tmp_path / "src" / "doc"
    for i in range(12):
        write(code / f"mod{i}.py", prose(f"def f{i}()", 40))           # ~2.4 KB: prompt-able
        write(doc / f"pkg{i}" / "changelog.Debian.gz", prose(f"pkg{i} (1.{i}-1) unstable", 40))
    for i in range(6):
        write(code / "pkg" / f"small{i}.py", prose(f"small{i}", 6))     # ~360 B: memory only
        write(doc / f"lib{i}" / "changelog.gz", prose(f"lib{i}", 6))
    write(code / "tests" / "test_x.py", prose("excluded test module", 40))
    # the same text once whitespace and case are normalised
    write(code / "copy_of_mod3.py", prose("def f3()", 40).upper().replace("\n", "\n\n  "))
    for name in ("pkg0-dev", "pkg0-doc"):    # binary packages of one source share its changelog
        write(doc / name / "changelog.Debian.gz", prose("pkg0 (1.0-1) unstable", 40))
    return {"code": [code], "changelogs": [doc]}


def build(out: Path, sources: dict[str, list[Path]], **kw) -> dict:
    args = CorpusArgs(out=out, sources=sources, domains=tuple(sources), prompts_per_domain=4, **kw)
    return build_corpus(args)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_document_in_both_memory_and_prompts(tree, tmp_path):
    counts = build(tmp_path / "out", tree)
    memory, prompts = rows(tmp_path / "out" / "memory.jsonl"), rows(tmp_path / "out" / "prompts.jsonl")
    assert {d: (c.prompts, c.memory, c.leaks) for d, c in counts.items()} == {
        "code": (4, 14, 0), "changelogs": (4, 14, 0)}
    assert len(prompts) == 8 and len(memory) == 28
    assert not {r["id"] for r in memory} & {r["id"] for r in prompts}
    assert not {r["source"] for r in memory} & {r["source"] for r in prompts}
    for p in prompts:
        assert p["domain"] in p["id"] and p["id"].startswith(p["domain"] + "/")
        assert not any((p["prompt"] + p["continuation"]).strip() in m["text"] for m in memory)
    assert not any("tests/test_x.py" in r["source"] for r in memory + prompts)
    saved = json.loads((tmp_path / "out" / "corpus.json").read_text())
    assert saved["seed"] == 0 and saved["domains"]["code"]["prompts"] == 4 and saved["memory"] == 28
    assert not list((tmp_path / "out").glob("*.tmp"))


def test_duplicates_collapsed_before_the_split(tree, tmp_path):
    counts = build(tmp_path / "out", tree)
    texts = rows(tmp_path / "out" / "memory.jsonl") + rows(tmp_path / "out" / "prompts.jsonl")
    sources = [r["source"] for r in texts]
    # mod3.py and its reformatted copy: one kept; pkg0's changelog in three packages: one kept
    assert sum(s.endswith(("mod3.py", "copy_of_mod3.py")) for s in sources) == 1
    assert sum("/pkg0" in s for s in sources) == 1
    assert counts["code"].duplicates == 1 and counts["changelogs"].duplicates == 2


def test_prompt_and_continuation_cut_at_boundaries(tree, tmp_path):
    build(tmp_path / "out", tree, prompt_bytes=300, continuation_bytes=200)
    for p in rows(tmp_path / "out" / "prompts.jsonl"):
        document = normalise(read_text(Path(p["source"])))
        assert document.startswith(p["prompt"] + p["continuation"])
        assert 150 <= len(p["prompt"].encode()) <= 300 and 100 <= len(p["continuation"].encode()) <= 200
        assert p["continuation"][0] == "\n"      # lines of ~60 bytes: always a line break in reach
        assert document[len(p["prompt"]) + len(p["continuation"])] == "\n"


def test_cut_falls_back_to_spaces_then_characters():
    text = "word " * 100                                   # no line breaks
    prompt, continuation = split_prompt(text, 62, 62)
    assert len(prompt) == 59 and prompt.endswith("word") and continuation.startswith(" word")
    prompt, continuation = split_prompt("é" * 100, 9, 9)   # no whitespace: 2-byte characters
    assert prompt == "é" * 4 and continuation == "é" * 4
    assert truncate("ab\n" * 100, 10) == "ab\nab\nab"
    assert split_prompt("short", 768, 768) == ("short", "")


def test_same_seed_same_files_other_seed_other_split(tree, tmp_path):
    build(tmp_path / "a", tree, seed=7)
    build(tmp_path / "b", tree, seed=7)
    build(tmp_path / "c", tree, seed=8)
    for name in ("memory.jsonl", "prompts.jsonl", "corpus.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    def held_out(d):
        return [r["id"] for r in rows(tmp_path / d / "prompts.jsonl")]
    assert held_out("a") != held_out("c")


def test_missing_domain_is_skipped_with_the_package_to_install(tree, tmp_path, capsys):
    main(["--out", str(tmp_path / "out"), "--domains", "code,docs", "--prompts-per-domain", "4",
                 "--source", f"code={tree['code'][0]}", "--source", f"docs={tmp_path / 'no-such-dir'}"])
    printed = capsys.readouterr().out
    assert "skipping domain 'docs'" in printed and "apt-get install python3.11-doc" in printed
    assert {r["domain"] for r in rows(tmp_path / "out" / "prompts.jsonl")} == {"code"}
    assert "| code | 19 |" in printed        # the summary table: 19 files listed (tests/ excluded)


def test_memory_documents_quoting_a_continuation_are_dropped():
    prompts = [{"domain": "licenses", "continuation": "\nthe exact held-out words\n"}]
    memory = [{"domain": "licenses", "text": "preamble\nthe exact held-out words\nmore"},
              {"domain": "licenses", "text": "unrelated text"}]
    counts = {"licenses": DomainCounts("base-files", [], memory=2, memory_bytes=50)}
    kept = drop_leaks(prompts, memory, counts)
    assert kept == memory[1:] and counts["licenses"].leaks == 1 and counts["licenses"].memory == 1


def test_no_held_out_continuation_survives_in_memory(tree, tmp_path):
    code = tree["code"][0]
    write(code / "bundle.py", "# all modules in one file\n" + "\n".join(
        (code / f"mod{i}.py").read_text() for i in range(12)))
    counts = build(tmp_path / "out", {"code": tree["code"]})
    memory = rows(tmp_path / "out" / "memory.jsonl")
    assert counts["code"].leaks >= 1
    for p in rows(tmp_path / "out" / "prompts.jsonl"):
        assert not any(p["continuation"].strip() in m["text"] for m in memory)


def test_exclude_and_unknown_domains(tree, tmp_path):
    counts = build(tmp_path / "out", tree, exclude=(r"/mod\d+\.py$",))
    assert counts["code"].excluded == 12 and counts["code"].files == 7
    with pytest.raises(ValueError, match="--source: unknown domain"):
        build_corpus(CorpusArgs(out=tmp_path / "out", sources={"nope": [tmp_path]}))


def test_roff_to_text():
    page = "\n".join([
        '.\\" a comment', ".de XX", "macro body, not text", "..", ".TH LS 1 2024", ".SH NAME",
        "ls \\- list directory contents", ".SH DESCRIPTION", "List \\fBinformation\\fR about",
        "the FILEs\\(emall of them.", ".TP", ".BR \\-a , \\-\\-all", "do not ignore entries",
        "starting with .", ".PP", ".nf", "kept  as", "  is", ".fi", ".if n \\{\\", "hidden", ".\\}",
        "See", ".BR dir (1).",
    ])
    assert roff_to_text(page) == (
        "LS(1)\n\nNAME\nls - list directory contents\n\nDESCRIPTION\nList information about the "
        "FILEs—all of them.\n\n-a,--all\ndo not ignore entries starting with .\n\nkept  as\n  is\n"
        "See dir(1).")
    mdoc = (".Dd 2024\n.Sh NAME\n.Nm ssh\n.Nd remote login\n.Sh SYNOPSIS\n.Nm\n.Op Fl v\nsee\n"
            ".Xr ssh-agent 1 .")
    assert roff_to_text(mdoc) == "\nNAME\nssh - remote login\n\nSYNOPSIS\nssh -v see ssh-agent(1)."


def test_html_to_text_keeps_the_sphinx_body():
    page = ("<html><head><style>p {}</style></head><body><div class='nav'>Navigation</div>"
            "<div class='body' role='main'><h1>json<a class='headerlink' href='#'>¶</a></h1>"
            "<p>Encode  and\n decode &amp; more.</p><div class='highlight'><pre>x = 1\n    y</pre></div>"
            "</div><div>Footer</div></body></html>")
    assert normalise(html_to_text(page)) == "json\n\nEncode and decode & more.\n\nx = 1\n    y"


def test_command_line_writes_what_build_corpus_writes(tree, tmp_path, capsys):
    main(["--out", str(tmp_path / "cli"), "--seed", "5", "--domains", "changelogs,code",
          "--prompts-per-domain", "3", "--max-memory-docs-per-domain", "6", "--prompt-bytes", "300",
          "--continuation-bytes", "200", "--min-memory-bytes", "100", "--max-doc-bytes", "2000",
          "--exclude", r"/small[0-2]\.py$", "--exclude", "/lib5/",
          "--source", f"code={tree['code'][0]}", "--source", f"changelogs={tree['changelogs'][0]}"])
    printed = capsys.readouterr().out
    assert printed.startswith("# corpus | out ") and "| seed 5 | 3 prompts/domain" in printed
    assert "| changelogs | 19 |" in printed and "| code | 16 |" in printed
    assert printed.splitlines()[-1].startswith("# 12 memory documents, 6 prompts, ")
    build_corpus(CorpusArgs(out=tmp_path / "lib", seed=5, domains=("changelogs", "code"), prompts_per_domain=3,
                            max_memory_docs_per_domain=6, prompt_bytes=300, continuation_bytes=200,
                            min_memory_bytes=100, max_doc_bytes=2000, exclude=(r"/small[0-2]\.py$", "/lib5/"),
                            sources={"code": tree["code"], "changelogs": tree["changelogs"]}))
    for name in ("memory.jsonl", "prompts.jsonl", "corpus.json"):
        assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "lib" / name).read_bytes()
    assert [r["domain"] for r in rows(tmp_path / "cli" / "prompts.jsonl")] == ["changelogs"] * 3 + ["code"] * 3
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "bad"), "--source", "code"])
    assert "expected DOMAIN=PATH" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_python_m_help():
    done = subprocess.run([sys.executable, "-m", "dev.corpus", "--help"], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: python -m dev.corpus")
    assert "Build an offline multi-domain benchmark corpus" in done.stdout
    for flag in ("--out", "--seed", "--prompts-per-domain", "--max-memory-docs-per-domain",
                 "--max-memory-mb-per-domain", "--prompt-bytes", "--continuation-bytes", "--max-doc-bytes",
                 "--min-memory-bytes", "--domains", "--source", "--exclude", "--cache"):
        assert flag in done.stdout
