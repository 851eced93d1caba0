"""The "math" domain: DeepMind Mathematics problems generated here, as the Pile's DM Mathematics.

`mathematics-dataset` imports only with sympy 1.5.x, which torch's sympy pin excludes, so it runs in
a virtual environment of its own (`make_env`, under --cache, created once with the versions in
MATH_ENV: newer numpy lacks `ndarray.itemset` and `np.object`, which the package calls). There,
`math_driver.py` writes seeded problems as JSON lines; `parse_problems` reads them and
`write_documents` groups each module's problems, in order, into documents of --math-per-doc
problems ("question\\nanswer" lines), one file each, which the builder reads like any other
domain's files. Documents of one module share their templates: near-duplicates, as in the Pile.

    prepare_math(cache, seed, per_module, modules, per_doc) -> folder of documents (cached)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

from testtime.atomic import write_text_atomic

MATH_ENV = ("mathematics-dataset==1.0.1", "sympy==1.5.1", "mpmath==1.3.0", "numpy==1.23.5", "absl-py==2.1.0",
            "six==1.16.0")
"""What the separate environment holds, every version pinned (checked here: generation is reproducible)."""
MATH_MODULES = ("algebra__linear_1d", "algebra__linear_2d", "algebra__polynomial_roots", "arithmetic__add_or_sub",
                "arithmetic__mixed", "arithmetic__mul", "calculus__differentiate", "comparison__sort",
                "measurement__conversion", "numbers__gcd", "numbers__place_value", "polynomials__collect",
                "polynomials__expand", "probability__swr_p_sequence")
"""Default modules: one or more of each area; no `_composed` module (not reproducible under a seed)."""
DRIVER = Path(__file__).with_name("math_driver.py")


def make_env(env_dir: Path) -> Path:
    """The Python of a virtual environment holding MATH_ENV, created (pip, from PyPI) unless one is there."""
    python = env_dir / "bin" / "python"
    stamp = env_dir / "testtime-pins.txt"
    if python.exists() and stamp.exists() and stamp.read_text().split() == list(MATH_ENV):
        return python
    print(f"math: creating {env_dir} with {' '.join(MATH_ENV)} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(env_dir)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           *MATH_ENV], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"pip could not install {' '.join(MATH_ENV)} into {env_dir}:\n{done.stderr[-2000:]}"
                           "\nbuild without it: --domains without math")
    write_text_atomic(stamp, "\n".join(MATH_ENV) + "\n")
    return python


def run_generator(python: Path, seed: int, per_module: int, modules: tuple[str, ...]) -> str:
    """The driver's JSON lines: per_module problems of each module, seeded (see math_driver.py)."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}  # sympy iterates sets of symbols
    done = subprocess.run([str(python), str(DRIVER), str(seed), str(per_module), ",".join(modules)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"the mathematics generator failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def parse_problems(text: str) -> dict[str, list[tuple[str, str]]]:
    """{module: [(question, answer), ...]} in the order generated, from the driver's JSON lines."""
    problems: dict[str, list[tuple[str, str]]] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            module, question, answer = row["module"], row["question"], row["answer"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"line {lineno} of the generator's output is not a problem ({err}): "
                             f"{line[:80]!r}") from None
        problems.setdefault(module, []).append((" ".join(question.split()), " ".join(answer.split())))
    return problems


def problem_documents(problems: list[tuple[str, str]], per_doc: int) -> list[str]:
    """Consecutive problems grouped per_doc at a time, each problem a question line and an answer line."""
    if per_doc < 1:
        raise ValueError(f"--math-per-doc must be at least 1, not {per_doc}")
    return ["\n".join(f"{q}\n{a}" for q, a in problems[i:i + per_doc]) + "\n"
            for i in range(0, len(problems), per_doc)]


def write_documents(problems: dict[str, list[tuple[str, str]]], root: Path, per_doc: int) -> int:
    """ROOT/MODULE/NNNNN.txt, one document a file; returns how many (ROOT is replaced whole)."""
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    count = 0
    for module, rows in sorted(problems.items()):
        (tmp / module).mkdir(parents=True)
        for i, doc in enumerate(problem_documents(rows, per_doc)):
            (tmp / module / f"{i:05d}.txt").write_text(doc, encoding="utf-8")
            count += 1
    shutil.rmtree(root, ignore_errors=True)
    if count:
        tmp.rename(root)
    else:
        root.mkdir(parents=True)
    return count


def prepare_math(cache: Path, seed: int, per_module: int, modules: tuple[str, ...], per_doc: int) -> Path:
    """The folder of math documents for these settings: CACHE/math/KEY/docs, generated once.

    KEY names the seed, the counts and a crc of the modules; CACHE/math/KEY/problems.jsonl keeps the
    generator's output, done.json (written last) what was generated with what."""
    key = f"seed{seed}-n{per_module}-d{per_doc}-{zlib.crc32(','.join(modules).encode()):08x}"
    folder = cache / "math" / key
    if (folder / "done.json").exists():
        return folder / "docs"
    python = make_env(cache / "mathenv")
    print(f"math: generating {per_module:,} problems of each of {len(modules)} modules (seed {seed})")
    raw = run_generator(python, seed, per_module, modules)
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "problems.jsonl", raw)
    documents = write_documents(parse_problems(raw), folder / "docs", per_doc)
    done = {"seed": seed, "per_module": per_module, "per_doc": per_doc, "modules": list(modules),
            "env": list(MATH_ENV), "documents": documents}
    write_text_atomic(folder / "done.json", json.dumps(done, indent=2) + "\n")
    return folder / "docs"
