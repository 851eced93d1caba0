"""dev/corpus's redundant domains (issue 32): DeepMind Mathematics from a checked-in sample of the generator's
output (no separate sympy environment here), code with near-duplicates, leaks, pins and the redundancy figure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dev.corpus import CorpusArgs, DomainCounts, build_corpus, drop_leaks, split_prompt
from dev.corpus.__main__ import main
from dev.corpus.mathematics import parse_problems, problem_documents, write_documents
from dev.corpus.pins import compare_pins, corpus_pins
from dev.corpus.redundancy import near_duplicates, redundancy
from testtime.lm.corpus import Chunk

SAMPLE = Path(__file__).parent / "data" / "math_sample.jsonl"
"""math_driver.py's output for seed 0, 30 problems of 4 modules (`python dev/corpus/math_driver.py 0 30
algebra__linear_1d,arithmetic__mul,numbers__gcd,polynomials__expand` in the environment make_env creates)."""


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def math_root(tmp_path: Path) -> Path:
    write_documents(parse_problems(SAMPLE.read_text()), tmp_path / "math", per_doc=6)
    return tmp_path / "math"


def build(out: Path, sources: dict[str, list[Path]], **kw) -> dict[str, DomainCounts]:
    kw = {"prompts_per_domain": 4, "prompt_bytes": 120, "continuation_bytes": 120, "min_memory_bytes": 50, **kw}
    return build_corpus(CorpusArgs(out=out, sources=sources, domains=tuple(sources), **kw))


def test_generator_lines_become_problems_in_order():
    problems = parse_problems(SAMPLE.read_text())
    assert sorted(problems) == ["algebra__linear_1d", "arithmetic__mul", "numbers__gcd", "polynomials__expand"]
    assert all(len(v) == 30 for v in problems.values())
    assert problems["algebra__linear_1d"][0] == ("Solve -7*j + 100*j = -93 for j.", "-1")
    assert parse_problems('{"module": "m", "question": " a \\n  b ", "answer": "1"}\n\n') == {"m": [("a b", "1")]}
    with pytest.raises(ValueError, match="line 2 of the generator's output"):
        parse_problems('{"module": "m", "question": "q", "answer": "1"}\nTraceback (most recent call last):\n')


def test_documents_group_consecutive_problems_as_question_and_answer_lines(math_root):
    docs = problem_documents([("Solve x = 1 for x.", "1"), ("Solve 2*y = 4 for y.", "2"), ("What is 3*3?", "9")], 2)
    assert docs == ["Solve x = 1 for x.\n1\nSolve 2*y = 4 for y.\n2\n", "What is 3*3?\n9\n"]
    files = sorted(p.relative_to(math_root).as_posix() for p in math_root.rglob("*.txt"))
    assert len(files) == 20 and files[0] == "algebra__linear_1d/00000.txt"  # 4 modules x 30 / 6
    with pytest.raises(ValueError, match="--math-per-doc"):
        problem_documents([], 0)


def test_math_domain_is_deterministic_given_the_seed(math_root, tmp_path):
    for out, seed in (("a", 3), ("b", 3), ("c", 4)):
        build(tmp_path / out, {"math": [math_root]}, seed=seed)
    for name in ("memory.jsonl", "prompts.jsonl", "pins.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    held = {d: [r["id"] for r in rows(tmp_path / d / "prompts.jsonl")] for d in "ac"}
    assert held["a"] != held["c"] and len(held["a"]) == 4


def test_near_duplicates_of_held_out_problems_stay_in_the_memory(math_root, tmp_path):
    counts = build(tmp_path / "out", {"math": [math_root]})
    memory, prompts = rows(tmp_path / "out" / "memory.jsonl"), rows(tmp_path / "out" / "prompts.jsonl")
    assert counts["math"].memory == 16 and counts["math"].duplicates == 0 and counts["math"].leaks == 0
    def module(row: dict) -> str:
        return row["id"].split("/")[2]   # math/math/MODULE/NNNNN.txt
    for name in {module(p) for p in prompts}:  # the same templates, other numbers: every other document kept
        assert sum(module(m) == name for m in memory) == 5 - sum(module(p) == name for p in prompts)


def test_a_leak_is_dropped_and_a_near_duplicate_kept():
    held_doc = "Solve 3*x = 9 for x.\n3\nSolve 5*q = 20 for q.\n4\nSolve 7*k = 14 for k.\n2\n"
    prompt, continuation = split_prompt(held_doc, 22, 60)
    prompts = [{"domain": "math", "prompt": prompt, "continuation": continuation}]
    leak = {"domain": "math", "text": "What is 2*2?\n4\n" + held_doc}   # the held-out text, verbatim
    near = {"domain": "math", "text": held_doc.replace("20", "25").replace("4\n", "5\n")}  # one problem changed
    counts = {"math": DomainCounts("mathematics-dataset", [], memory=2, memory_bytes=200)}
    assert drop_leaks(prompts, [leak, near], counts) == [near]
    assert counts["math"].leaks == 1 and counts["math"].memory == 1


def test_code_near_duplicates_are_kept_and_exact_copies_dropped(tmp_path):
    def body(i: int) -> str:  # the same code, another constant on every line
        return "".join(f"    x{j} = compute(x{j - 1}, {j + i})  # step {j}\n" for j in range(1, 40))
    site = tmp_path / "site-packages"
    for i in range(8):  # vendored variants: near-duplicates, no line of a continuation in another
        (site / f"pkg{i}").mkdir(parents=True)
        (site / f"pkg{i}" / "core.py").write_text(f"def run(x0):\n{body(i * 100)}    return x39\n")
    (site / "pkg0" / "tests").mkdir()
    (site / "pkg0" / "tests" / "test_core.py").write_text(body(1))
    (site / "pkg7" / "copy.py").write_text((site / "pkg7" / "core.py").read_text())  # an exact copy
    counts = build(tmp_path / "out", {"pypi-code": [site]}, prompts_per_domain=2)
    c = counts["pypi-code"]
    assert (c.files, c.duplicates, c.prompts, c.memory, c.leaks) == (9, 1, 2, 6, 0)


def test_pins_name_the_domain_that_changed(math_root, tmp_path):
    build(tmp_path / "a", {"math": [math_root]})
    pinned = json.loads((tmp_path / "a" / "pins.json").read_text())
    assert pinned["prompt_ids"] == [r["id"] for r in rows(tmp_path / "a" / "prompts.jsonl")]
    assert compare_pins(pinned, pinned) == []
    memory, prompts = rows(tmp_path / "a" / "memory.jsonl"), rows(tmp_path / "a" / "prompts.jsonl")
    memory[0]["text"] += "Solve 1 = x for x.\n1\n"
    other = corpus_pins(memory, prompts)
    assert compare_pins(pinned, other) == ["math: memory differs (16 pinned, 16 built)"]
    assert main(["--out", str(tmp_path / "b"), "--domains", "math", "--source", f"math={math_root}",
                 "--prompts-per-domain", "4", "--prompt-bytes", "120", "--continuation-bytes", "120",
                 "--check-pins", str(tmp_path / "a" / "pins.json")]) == 1  # other settings: min memory bytes
    assert main(["--out", str(tmp_path / "c"), "--domains", "math", "--source", f"math={math_root}",
                 "--prompts-per-domain", "4", "--prompt-bytes", "120", "--continuation-bytes", "120",
                 "--min-memory-bytes", "50", "--check-pins", str(tmp_path / "a" / "pins.json")]) == 0


def test_redundancy_counts_chunks_with_a_neighbour_above_cosine_0_9():
    angles = np.radians([0.0, 20.0, 60.0, 120.0, 180.0])  # neighbours 20 deg apart: cos 0.94; 40 deg: 0.77
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert near_duplicates(x, block=2).tolist() == [True, True, False, False, False]

    class Memory:
        embeddings = x
        chunks = [Chunk("a", "s", "math"), Chunk("b", "s", "math"), Chunk("c", "s", "code"),
                  Chunk("c", "s", "code"), Chunk("d", "s", None)]

    table = redundancy(Memory())
    assert table["math"] == {"chunks": 2, "near": 1.0, "exact": 0.0}
    assert table["code"] == {"chunks": 2, "near": 0.0, "exact": 1.0}
    assert table["all"]["chunks"] == 5 and table["all"]["near"] == pytest.approx(0.4)
