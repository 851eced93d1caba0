"""Read a bundle back and say what is missing or mismatched, each problem with its file and fix.

    report = check_bundle(Path("dist/kaggle"), Target.of("3.11", "manylinux_2_35_x86_64"))
    for problem in report.problems:
        print(problem)   # wheels/numpy-...-cp312-....whl: built for cp312-cp312-..., not Python 3.11 ...; fix: ...

What it checks, offline and without installing anything: the manifest and the notebook are there;
every wheel the manifest lists is there with its SHA-256 and nothing else is; every wheel's tags fit
the target; everything the install needs is in the bundle, at a version that meets it, under the
target's markers; the model files and the shipped adapter (card and weights) are the ones recorded.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from testtime.atomic import read_json
from testtime.digest import sha256_file
from testtime.kaggle import FORMAT, KIND, MANIFEST, NOTEBOOK, WHEELS, BundleError
from testtime.kaggle.bundle import PROVIDED_BY_IMAGE
from testtime.kaggle.manifest import adapters, weight_members
from testtime.kaggle.wheels import Dist, Target, closure, member_sha256, wheel_dist

REBUILD = "build the bundle again with `testtime kaggle bundle`"


@dataclass(frozen=True)
class Problem:
    file: str
    """The file at fault, relative to the bundle."""
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}; fix: {self.fix}"


@dataclass
class CheckReport:
    folder: Path
    target: Target
    manifest: dict = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Facts worth knowing that are not faults (torch left to the environment)."""


def check_bundle(folder: Path, target: Target | None = None) -> CheckReport:
    """Check the bundle in `folder` for `target` (default: the target it was built for)."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    if not (isinstance(manifest, dict) and manifest.get("kind") == KIND):
        missing = not (folder / MANIFEST).is_file()
        return CheckReport(folder, target or Target.here(), problems=[Problem(
            MANIFEST, "missing" if missing else f"not a {KIND} manifest (unreadable JSON or another kind)",
            f"{REBUILD}; {folder} is not a bundle, or it was cut short" if missing else REBUILD)])
    report = CheckReport(folder, target or Target.from_json(manifest.get("target")) or Target.here(), manifest)
    if manifest.get("format") != FORMAT:
        report.problems.append(Problem(MANIFEST, f"format {manifest.get('format')!r}, this testtime reads "
                                       f"format {FORMAT}", f"{REBUILD} (with this testtime)"))
        return report
    if not (folder / NOTEBOOK).is_file():
        report.problems.append(Problem(NOTEBOOK, "missing", f"{REBUILD} (it writes the notebook)"))
    whole = _files(folder, manifest, report.problems)
    named = {_dist_key(name) for name in manifest.get("wheels") or {}} - {_dist_key(p.name) for p in whole}
    named |= _tags(whole, report)
    dists = _read(whole, named, report)
    _requirements(dists, named, report)
    readable = {p.name: p for p in whole if _dist_key(p.name) not in named}
    _models(readable, manifest, report.problems)
    _adapters(readable, manifest, report.problems)
    return report


def _files(folder: Path, manifest: dict, problems: list[Problem]) -> list[Path]:
    """Every listed wheel there with its hash, nothing unlisted; the wheels that are whole."""
    listed = manifest.get("wheels") if isinstance(manifest.get("wheels"), dict) else {}
    wheels = folder / WHEELS
    present = {p.name for p in wheels.glob("*.whl")} if wheels.is_dir() else set()
    whole = []
    for name, want in sorted(listed.items()):
        path = wheels / name
        if name not in present:
            problems.append(Problem(f"{WHEELS}/{name}", f"missing (listed in {MANIFEST})",
                                    f"copy it back from where the bundle was built, or {REBUILD}"))
        elif not isinstance(want, dict) or sha256_file(path) != want.get("sha256"):
            problems.append(Problem(f"{WHEELS}/{name}", f"its SHA-256 is not the one in {MANIFEST} (damaged in "
                                    "the upload or replaced)", f"copy it again, or {REBUILD}"))
        else:
            whole.append(path)
    for name in sorted(present - set(listed)):
        problems.append(Problem(f"{WHEELS}/{name}", f"not in {MANIFEST}: pip could install it instead of the "
                                "bundled one", f"remove it, or {REBUILD}"))
    return whole


def _dist_key(wheel: str) -> str:
    """The canonical distribution name of a wheel file name (the file name itself when it is not one)."""
    try:
        return canonicalize_name(str(parse_wheel_filename(wheel)[0]))
    except InvalidWheelFilename:
        return wheel


def _tags(wheels: list[Path], report: CheckReport) -> set[str]:
    """Name each wheel whose tags do not fit the target; their distributions."""
    target = report.target
    misfits = set()
    fix = (f"build the bundle for it: testtime kaggle bundle OUT --python-version {target.python_version} "
           f"--platform {target.platform}")
    for path in wheels:
        try:
            fits = target.accepts(path)
        except InvalidWheelFilename as err:
            report.problems.append(Problem(f"{WHEELS}/{path.name}", f"not a wheel file name ({err})", REBUILD))
            misfits.add(path.name)
            continue
        if not fits:
            tags = "-".join(path.name[:-len(".whl")].split("-")[-3:])  # python-abi-platform
            report.problems.append(Problem(f"{WHEELS}/{path.name}", f"built for {tags}, not for {target}", fix))
            misfits.add(_dist_key(path.name))
    return misfits


def _read(wheels: list[Path], named: set[str], report: CheckReport) -> dict[str, Dist]:
    """The distributions of the whole wheels for the target, by canonical name; a wheel that does not
    open is named here, and its distribution added to `named`."""
    dists = {}
    for path in wheels:
        key = _dist_key(path.name)
        if key in named:
            continue
        try:
            dists[key] = wheel_dist(path)
        except BundleError as err:
            report.problems.append(Problem(f"{WHEELS}/{path.name}", str(err).split(": ", 1)[-1], REBUILD))
            named.add(key)
    return dists


def _requirements(dists: dict[str, Dist], named: set[str], report: CheckReport) -> None:
    """Everything `pip install` of the manifest's requirements needs, found in the bundle at a version
    that meets it. A requirement on a distribution whose wheel is already `named` (missing, damaged,
    unreadable, for another target) is not named twice."""
    install = report.manifest.get("install") if isinstance(report.manifest.get("install"), dict) else {}
    provided = () if report.manifest.get("with_torch") else PROVIDED_BY_IMAGE
    if provided:
        report.notes.append(f"built without --with-torch: the environment must have {', '.join(provided)} "
                            "(Kaggle's images do)")
    env = report.target.environment()
    _, unmet = closure(install.get("requirements") or [], dists, env, provided)
    bare = {k: Dist(d.name, d.version) for k, d in dists.items()}  # installed with --no-deps: no requirements
    unmet += closure(install.get("no_deps") or [], bare, env)[1]
    fix = (f"{REBUILD} for {report.target} (--python-version {report.target.python_version} --platform "
           f"{report.target.platform})")
    for key, line in unmet:
        if key not in named:
            report.problems.append(Problem(WHEELS, f"nothing in the bundle meets {line}", fix))


def _models(whole: dict[str, Path], manifest: dict, problems: list[Problem]) -> None:
    """Each model package's weight files: there, and with the SHA-256 recorded at bundling. Only whole
    wheels are opened (`_files` names the others)."""
    for model in manifest.get("models") or []:
        wheel = whole.get(str(model.get("wheel")))
        files = model.get("files") if isinstance(model.get("files"), dict) else {}
        if not files:
            problems.append(Problem(MANIFEST, f"no model file recorded for {model.get('package')}", REBUILD))
        if wheel is None:
            continue
        where = f"{WHEELS}/{wheel.name}"
        try:
            found = set(weight_members(wheel))
            changed = [m for m, digest in sorted(files.items()) if m in found and member_sha256(wheel, m) != digest]
        except (OSError, zipfile.BadZipFile) as err:
            problems.append(Problem(where, f"not a readable wheel ({err})", REBUILD))
            continue
        for member in sorted(set(files) - found):
            problems.append(Problem(where, f"the model file {member} is not in it", REBUILD))
        for member in changed:
            problems.append(Problem(where, f"the model file {member} is not the one bundled (its SHA-256 differs "
                                    f"from {MANIFEST})", f"{REBUILD}, or reinstall {model.get('package')}"))


def _adapters(whole: dict[str, Path], manifest: dict, problems: list[Problem]) -> None:
    """The shipped adapters in testtime's wheel: card and weights as recorded, and their base model bundled."""
    models = {canonicalize_name(str(m.get("package"))) for m in manifest.get("models") or []}
    for want in manifest.get("adapters") or []:
        wheel = whole.get(str(want.get("wheel")))
        if wheel is None:
            continue
        where = f"{WHEELS}/{wheel.name}"
        try:
            have = {a["name"]: a for a in adapters(wheel)}.get(want.get("name"))
        except (OSError, zipfile.BadZipFile) as err:
            problems.append(Problem(where, f"not a readable wheel ({err})", REBUILD))
            continue
        if have is None:
            problems.append(Problem(where, f"no adapter {want.get('name')} (no {want.get('card')})", REBUILD))
            continue
        if have["card_sha256"] != want.get("card_sha256"):
            problems.append(Problem(where, f"the adapter card {have['card']} is not the one bundled (created "
                                    f"{have['created']}, the manifest's {want.get('created')})",
                                    f"{REBUILD} from the testtime tree that ships this adapter"))
        if have["weights"] != want.get("weights"):
            problems.append(Problem(where, f"the weights of adapter {have['name']} are not the ones its card "
                                    f"was bundled with", REBUILD))
        described = have["card_weights_sha256"]
        if described is not None and described not in have["weights"].values():
            problems.append(Problem(where, f"{have['card']} describes other weights (export.weights_sha256 "
                                    f"{described[:12]}...) than the adapter's", "ship the card `testtime arc "
                                    "export-adapter` wrote beside these weights, then build the bundle again"))
        package = have["model_package"]
        if package is None:
            problems.append(Problem(where, f"{have['card']} names base model {have['base_model']!r}, which no "
                                    "bundled package ships", "ship an adapter for the embedded model, or "
                                    "pass --model and --adapter to `arc solve` in the notebook's EXTRA_FLAGS"))
        elif canonicalize_name(package) not in models:
            problems.append(Problem(where, f"adapter {have['name']} is for the model of {package}, which the "
                                    "bundle lacks", REBUILD))
