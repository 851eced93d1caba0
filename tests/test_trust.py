"""Run directories you can trust (issue 28), each defect driven through the CLI as a careless or hostile user would.

Data loss: --restart checks before it deletes (1); a rerun on a subset keeps every task in the submission (2).
Mixed results: fingerprints, not config.json, decide what is reused (3); one writer per --out (4); a restart
that cannot delete says so (5); weights are identified by content (6, 7); prompt files split on \\n only (8);
no environment variable injects faults (9). Outcomes, not tracebacks: damaged records (10), `arc report` (11),
write errors and damaged safetensors (12). Bits per byte on non-ASCII text (13).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cli_helpers import flat, invoke  # tests/ is on sys.path under pytest

N_TASKS = 3


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tasks")
    for i in range(N_TASKS):
        grid = [[(r + c + i) % 10 for c in range(2)] for r in range(2)]
        (folder / f"t{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 2,
                                                        "test": [{"input": grid, "output": grid}]}))
    return folder


def solve(tasks_dir, model, out, *extra, **env):
    return invoke("arc", "solve", tasks_dir, "--model", model, "--no-ttt", "--max-new-tokens", "2", "--out", out,
                  *extra, **env)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tasks_dir, tiny_model_dir):
    """A finished 3-task run directory, copied by each test that damages it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert solve(tasks_dir, tiny_model_dir, out).exit_code == 0
    return out


def copy_of(run: Path, where: Path) -> Path:
    shutil.copytree(run, where, ignore=shutil.ignore_patterns(".lock", "report.html"))
    return where


def read(path: Path):
    return json.loads(path.read_text())


# --- data loss ------------------------------------------------------------------------------------

def test_1_restart_validates_sources_and_the_command_before_it_deletes(tmp_path, finished, tasks_dir,
                                                                       tiny_model_dir):
    out = copy_of(finished, tmp_path / "run")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    missing = invoke("arc", "pretrain", tmp_path / "missing.json", "--out", out, "--restart", "--model",
                     tiny_model_dir)
    assert missing.exit_code == 2
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before
    other = invoke("arc", "pretrain", tasks_dir, "--out", out, "--restart", "--model", tiny_model_dir, "--steps", "1",
                   "--val-tasks", "1", "--val-sequences", "1", "--max-len", "200", "--lora-rank", "2")
    assert other.exit_code == 2 and "holds a run of `arc solve`" in flat(other) and "nothing was deleted" in flat(other)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"} == before


def test_2_a_rerun_on_a_subset_keeps_every_finished_task_in_the_submission(tmp_path, finished, tasks_dir,
                                                                           tiny_model_dir):
    out = copy_of(finished, tmp_path / "run")
    for extra in (("--tasks", "t1"), ("--limit", "1")):
        again = solve(tasks_dir, tiny_model_dir, out, *extra)
        assert again.exit_code == 0
        assert sorted(read(out / "submission.json")) == ["t0", "t1", "t2"]
        assert "(3 tasks: every task finished" in flat(again)


# --- silently mixed or mislabelled results ---------------------------------------------------------

def test_3_records_are_reused_only_under_their_own_fingerprint(tmp_path, finished, tasks_dir, tiny_model_dir, caplog):
    out = copy_of(finished, tmp_path / "run")
    (out / "config.json").unlink()
    refused = solve(tasks_dir, tiny_model_dir, out, "--seed", "5")
    assert refused.exit_code == 2 and "holds 3 records but no config.json" in flat(refused)
    assert all(read(p)["fingerprint"] for p in (out / "tasks").iterdir())

    # config.json copied from a seed-5 run: it says seed 5, the records still say seed 0
    seed5 = tmp_path / "seed5"
    assert solve(tasks_dir, tiny_model_dir, seed5, "--seed", "5", "--tasks", "t0").exit_code == 0
    shutil.copy(seed5 / "config.json", out / "config.json")
    rerun = solve(tasks_dir, tiny_model_dir, out, "--seed", "5")
    assert rerun.exit_code == 0 and ": resumed" not in rerun.output
    assert caplog.text.count("was made with other settings") == N_TASKS  # warnings (logged), naming each file
    assert "t0.json was made with other settings" in caplog.text
    want = read(seed5 / "config.json")["fingerprint"]
    assert {read(p)["fingerprint"] for p in (out / "tasks").iterdir()} == {want}


HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())
print("held", flush=True)
time.sleep(60)
"""


def test_4_a_second_writer_is_refused_naming_the_holder(tmp_path, finished, tasks_dir, tiny_model_dir):
    out = copy_of(finished, tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = solve(tasks_dir, tiny_model_dir, out, "--restart", "--seed", "5")
        assert refused.exit_code == 2 and f"process {holder.pid}" in flat(refused)
        assert read(out / "config.json")["settings"]["config.seed"] == 0
    finally:
        holder.kill()
        holder.wait()
    assert solve(tasks_dir, tiny_model_dir, out, "--tasks", "t0").exit_code == 0  # the lock died with it


def test_5_restart_never_resumes_what_it_could_not_delete(tmp_path, finished, tasks_dir, tiny_model_dir, monkeypatch):
    out = copy_of(finished, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    shutil.move(out / "tasks", elsewhere)
    (out / "tasks").symlink_to(elsewhere, target_is_directory=True)
    kept = {p.name: p.read_bytes() for p in elsewhere.iterdir()}
    restarted = solve(tasks_dir, tiny_model_dir, out, "--restart", "--seed", "3")
    assert restarted.exit_code == 0 and ": resumed" not in restarted.output
    assert not (out / "tasks").is_symlink() and len(list((out / "tasks").iterdir())) == N_TASKS
    assert {p.name: p.read_bytes() for p in elsewhere.iterdir()} == kept  # the link was removed, not followed

    import testtime.jobs.rundir as rundir

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(rundir.shutil, "rmtree", refuse)
    loud = solve(tasks_dir, tiny_model_dir, out, "--restart")
    assert loud.exit_code == 2 and "cannot delete" in flat(loud) and "Permission denied" in flat(loud)


def perturb_weights(folder: Path, name: str) -> None:
    """The same file, same size, other values (every tensor doubled)."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v * 2 + 0.01 for k, v in load_file(str(folder / name)).items()}
    save_file(tensors, str(folder / name), metadata={"format": "pt"})


def test_6_new_weights_at_the_same_path_are_a_changed_setting(tmp_path, tasks_dir, tiny_model_dir):
    from helpers import save_random_adapter

    adapter = save_random_adapter(tiny_model_dir, tmp_path / "adapter")
    out = tmp_path / "run"
    assert solve(tasks_dir, tiny_model_dir, out, "--adapter", adapter, "--tasks", "t0").exit_code == 0
    perturb_weights(adapter, "adapter_model.safetensors")
    refused = solve(tasks_dir, tiny_model_dir, out, "--adapter", adapter)
    assert refused.exit_code == 2 and "--adapter (its weights):" in flat(refused)

    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    out = tmp_path / "run2"
    assert solve(tasks_dir, model, out, "--tasks", "t0").exit_code == 0
    perturb_weights(model, "model.safetensors")
    refused = solve(tasks_dir, model, out)
    assert refused.exit_code == 2 and "--model (its weights):" in flat(refused)


def test_7_a_damaged_cached_conversion_is_never_loaded(tmp_path, tasks_dir, tiny_model_dir, caplog):
    """A GGUF's conversion in the cache, damaged in one byte (same size): caught by its manifest, converted again
    (here the GGUF is a stand-in that cannot convert, so the run stops with the reason instead of using it)."""
    from testtime.models import converted_dir, load_model, save_converted

    gguf = tmp_path / "stand-in.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    folder = converted_dir(str(tmp_path), {"gguf_file": gguf.name})
    loaded = load_model(str(tiny_model_dir))
    save_converted(loaded.model, loaded.tokenizer, folder)
    assert solve(tasks_dir, gguf, tmp_path / "ok", "--tasks", "t0").exit_code == 0  # loads the conversion

    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x40
    weights.write_bytes(bytes(data))
    damaged = solve(tasks_dir, gguf, tmp_path / "damaged", "--tasks", "t0")
    assert "is damaged (model.safetensors has other bytes" in caplog.text and "converting the GGUF again" in caplog.text
    assert damaged.exit_code == 2 and "could not load model" in flat(damaged)


# --- lm eval: prompt files, hooks ------------------------------------------------------------------

def lm_eval(prompts: Path, model, out, *extra, **env):
    return invoke("lm", "eval", "--prompts", prompts, "--select", "none", "--model", model, "--out", out, *extra,
                  **env)


def test_8_prompt_lines_end_at_newline_only_and_domains_are_data(tmp_path, tiny_model_dir):
    rows = [{"id": "sep", "domain": "all", "prompt": "one\u2028two\u0085three", "continuation": " line\u2029end"},
            {"id": "b", "domain": "All", "prompt": "the quick", "continuation": " brown fox"},
            {"id": "c", "domain": "prose", "prompt": "over the", "continuation": " lazy dog"}]
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    lines.insert(1, b'{"id": "bad", "prompt": "\xff", "continuation": "x"}')
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b"\n".join(lines) + b"\n")
    result = lm_eval(prompts, tiny_model_dir, tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "prompts.jsonl:2: not UTF-8" in flat(result) and "3 scored, 0 failed, 1 bad lines" in flat(result)
    assert read(tmp_path / "run" / "none" / "results" / "sep.json")["domain"] == "all"
    table = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in result.output.splitlines()
             if ln.startswith("│")}
    assert table["all"] == "1" and table["All"] == "1" and table["prose"] == "1" and table["every prompt"] == "3"


def test_9_a_stale_test_hook_variable_does_nothing(tmp_path, tasks_dir, tiny_model_dir):
    hook = tmp_path / "stale_hook.py"
    hook.write_text("def boom(item_id, first, arg):\n    raise RuntimeError('stale hook ran on ' + item_id)\n")
    result = solve(tasks_dir, tiny_model_dir, tmp_path / "run", TESTTIME_TEST_HOOK=f"{hook}:boom:x")
    assert result.exit_code == 0 and "stale hook" not in result.output
    assert all(read(p)["status"] == "ok" for p in (tmp_path / "run" / "tasks").iterdir())


# --- tracebacks instead of outcomes ------------------------------------------------------------------

def test_10_a_record_of_the_wrong_shape_is_recomputed_with_a_warning(tmp_path, finished, tasks_dir,
                                                                    tiny_model_dir, caplog):
    out = copy_of(finished, tmp_path / "run")
    damage = {"t0": lambda r: r.update(seconds=None), "t1": lambda r: r.pop("ttt"),
              "t2": lambda r: r["tests"][0].update(correct={})}
    for task_id, change in damage.items():
        record = read(out / "tasks" / f"{task_id}.json")
        change(record)
        (out / "tasks" / f"{task_id}.json").write_text(json.dumps(record))
    again = solve(tasks_dir, tiny_model_dir, out)
    assert again.exit_code == 0 and ": resumed" not in again.output
    for task_id in damage:
        assert f"{task_id}.json is malformed" in caplog.text
        assert read(out / "tasks" / f"{task_id}.json")["status"] == "ok"

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "a", "domain": "d", "prompt": "the quick", "continuation": " brown"}) + "\n")
    assert lm_eval(prompts, tiny_model_dir, tmp_path / "lm").exit_code == 0
    saved = tmp_path / "lm" / "none" / "results" / "a.json"
    saved.write_text(json.dumps({**read(saved), "domain": ["d"]}))
    again = lm_eval(prompts, tiny_model_dir, tmp_path / "lm")
    assert again.exit_code == 0 and "a.json is malformed" in caplog.text and read(saved)["domain"] == "d"


WRONG_RECORDS = {"tests_string": {"tests": "abc"}, "tests_number": {"tests": 3}, "ttt_list": {"ttt": [1]},
                 "test_string": {"tests": ["x"]}, "correct_list": {"tests": [{"attempts": [], "candidates": [],
                                                                                "correct": [1]}]},
                 "predict_list": {"predict": []}, "seconds_string": {"seconds": "1"}, "attempts_number": {
                     "tests": [{"attempts": 5, "candidates": []}]}}
WRONG_CONFIGS = [{"settings": [1], "options": "x"}, {"command": 5, "settings": {"source": 3}, "options": [1]}, [1, 2]]


def test_11_arc_report_lists_wrong_shaped_records_unreadable_and_renders_the_rest(tmp_path, finished):
    for k, config in enumerate(WRONG_CONFIGS):
        out = copy_of(finished, tmp_path / f"run{k}")
        good = read(out / "tasks" / "t0.json")
        for name, change in WRONG_RECORDS.items():
            (out / "tasks" / f"{name}.json").write_text(json.dumps({**good, "task_id": name, **change}))
        (out / "config.json").write_text(json.dumps(config))
        result = invoke("arc", "report", out)
        assert result.exit_code == 0, result.output
        html = (out / "report.html").read_text()
        assert f"unreadable records</td><td class=\"warn\">{len(WRONG_RECORDS)} (" in html
        assert all(f'"t{i}"' in html or f">t{i}<" in html for i in range(N_TASKS))


def test_12_write_errors_and_damaged_files_end_the_run_cleanly(tmp_path, finished, tasks_dir, tiny_model_dir,
                                                               monkeypatch):
    import testtime.arc.solve as solve_module
    import testtime.jobs.rundir as rundir

    real = rundir.write_json_atomic
    writes = []

    def full_disk(path, data, **kwargs):
        writes.append(path)
        if len(writes) > 1:
            raise OSError(28, "No space left on device", str(path))
        real(path, data, **kwargs)

    out = tmp_path / "run"
    assert solve(tasks_dir, tiny_model_dir, out, "--tasks", "t0").exit_code == 0  # config.json and t0 are written
    monkeypatch.setattr(rundir, "write_json_atomic", full_disk)
    stopped = solve(tasks_dir, tiny_model_dir, out)
    assert stopped.exit_code == 1 and "No space left on device" in flat(stopped) and "t1.json" in flat(stopped)
    assert read(out / "tasks" / "t0.json")["status"] == "ok" and not (out / "tasks" / "t1.json").exists()
    monkeypatch.undo()

    def no_submission(path, submission):
        raise OSError(30, "Read-only file system", str(path))
    monkeypatch.setattr(solve_module, "write_submission", no_submission)
    stopped = solve(tasks_dir, tiny_model_dir, out)
    assert stopped.exit_code == 1 and "submission.json" in flat(stopped) and "Read-only" in flat(stopped)
    assert len(list((out / "tasks").iterdir())) == N_TASKS  # every finished record kept
    monkeypatch.undo()

    shutil.rmtree(out / "tasks")
    (out / "config.json").unlink()
    (out / "config.json").mkdir()  # refused as damaged, and --restart (as the error says) clears it
    assert "use --restart" in flat(solve(tasks_dir, tiny_model_dir, out))
    assert solve(tasks_dir, tiny_model_dir, out, "--restart").exit_code == 0


def test_12_truncated_safetensors_name_the_file_and_the_fix(tmp_path, tiny_model_dir):
    from helpers import save_random_adapter

    adapter = save_random_adapter(tiny_model_dir, tmp_path / "adapter")
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    export = invoke("arc", "export-adapter", adapter, tmp_path / "copy")
    assert export.exit_code == 2 and "adapter_model.safetensors is not a readable safetensors file" in flat(export)

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for i in range(3):
        grid = [[(r + c + i) % 10 for c in range(2)] for r in range(2)]
        (tasks / f"p{i}.json").write_text(json.dumps({"train": [{"input": grid, "output": grid}] * 3,
                                                       "test": [{"input": grid, "output": grid}]}))
    args = ["arc", "pretrain", tasks, "--model", tiny_model_dir, "--steps", "2", "--warmup", "0", "--grad-accum", "1",
            "--val-tasks", "1", "--val-sequences", "1", "--val-every", "2", "--checkpoint-every", "1",
            "--lora-rank", "2", "--max-len", "200", "--out", tmp_path / "pt"]
    assert invoke(*args).exit_code == 0
    ckpt = tmp_path / "pt" / "checkpoints" / "step-000002" / "weights.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:64])
    again = invoke(*args)
    assert again.exit_code == 2 and "weights.safetensors" in flat(again) and "delete it" in flat(again)


# --- the measure itself ------------------------------------------------------------------------------

def test_13_bits_per_byte_divides_by_utf8_bytes_of_a_non_ascii_continuation(tmp_path, tiny_model_dir):
    continuation = " naïve café — 東京 ☃"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"id": "u", "domain": "d", "prompt": "Straße", "continuation": continuation}) + "\n")
    assert lm_eval(prompts, tiny_model_dir, tmp_path / "run").exit_code == 0
    record = read(tmp_path / "run" / "none" / "results" / "u.json")
    assert len(continuation) < len(continuation.encode("utf-8")) == record["bytes"]
    assert record["bpb"] == pytest.approx(record["bits"] / record["bytes"])

    from testtime.lm.bpb import continuation_bits
    from testtime.models import load_model

    loaded = load_model(str(tiny_model_dir))
    bits, n_bytes = continuation_bits(loaded.model, loaded.tokenizer, "Straße", continuation)
    assert n_bytes == record["bytes"] and bits == pytest.approx(record["bits"], rel=1e-5)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    os.environ.pop("TESTTIME_TEST_HOOK", None)
