"""`testtime arc report` and `testtime lm report`: one self-contained HTML file per run (no network).

`arc solve --out DIR` and `arc pretrain --out DIR` also write DIR/report.html when they end
(`after_run`); a report that cannot be made there is a warning, never a failed run.
"""

from __future__ import annotations

from pathlib import Path

import typer

from testtime.cli.common import console, fail, safe


def arc_report(
    run_dir: Path = typer.Argument(..., help="An `arc solve --out` directory (config.json, tasks/)."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default RUN_DIR/report.html)."),
    no_source: bool = typer.Option(False, "--no-source", help="Do not load the run's tasks (no demonstrations "
                                   "or true outputs; only what the records hold)."),
) -> None:
    """Write an HTML report of an ARC run: score, per-task grids, attempts against the truth, candidates.

    The true outputs, demonstrations and test inputs come from the run's source (config.json)
    when it loads here. One file, no network: open it in any browser.

    Example: testtime arc report runs/eval5 --out eval5.html
    """
    from testtime.report import write_arc_report

    try:
        path = write_arc_report(run_dir, out, load_source=not no_source)
    except (FileNotFoundError, OSError) as err:
        fail(str(err))
    console.print(f"report: {safe(path)} ({path.stat().st_size / 1e6:.2f} MB)")


def lm_report(
    run_dirs: list[Path] = typer.Argument(..., help="`lm eval` run directories: OUT/SELECT, or OUT for all of them."),
    out: Path = typer.Option(None, "--out", "-o", help="HTML file to write (default FIRST_RUN_DIR/report.html)."),
) -> None:
    """Write an HTML report comparing LM runs: bits per byte per domain, % of the untouched model, timings.

    Each run is compared with the `select none` run beside it (same OUT) when there is one.

    Example: testtime lm report runs/lm --out lm.html
    """
    from testtime.report import write_lm_report

    try:
        path = write_lm_report(list(run_dirs), out)
    except (FileNotFoundError, OSError) as err:
        fail(str(err))
    console.print(f"report: {safe(path)}")


def register(arc_app: typer.Typer, lm_app: typer.Typer) -> None:
    """Add `report` to the `arc` and `lm` command groups."""
    arc_app.command("report")(arc_report)
    lm_app.command("report")(lm_report)


def after_run(kind: str, out: Path | None) -> None:
    """At the end of `arc solve` / `arc pretrain`: write OUT/report.html and print its path."""
    if out is None:
        return
    from testtime.report import write_quietly

    path = write_quietly(kind, out)
    if path is not None:
        console.print(f"report: {safe(path)}")
