"""Self-contained HTML reports of run directories: ARC solves, LM evaluations, pretraining.

    from testtime.report import write_arc_report, write_lm_report, write_pretrain_report
    write_arc_report("runs/eval5")                     # runs/eval5/report.html
    write_lm_report(["runs/lm/none", "runs/lm/sift"], "runs/lm/report.html")

One HTML file each: inline CSS, inline SVG (grids, curves, bars), a little inline JavaScript, no
network. They read the records the commands write (JSON) and import no model code.
"""

from __future__ import annotations

import logging
from pathlib import Path

from testtime.report.arc import write_arc_report
from testtime.report.lm import write_lm_report
from testtime.report.pretrain import write_pretrain_report

__all__ = ["write_arc_report", "write_lm_report", "write_pretrain_report", "write_quietly"]

log = logging.getLogger(__name__)

WRITERS = {"arc": write_arc_report, "pretrain": write_pretrain_report}


def write_quietly(kind: str, run_dir: str | Path) -> Path | None:
    """The report written at the end of a command: a report that cannot be made is a warning, never a
    failed run (the results are already on disk). Returns the path written, or None."""
    try:
        return WRITERS[kind](run_dir)
    except Exception as err:  # noqa: BLE001 - any rendering problem must not fail a finished run
        log.warning("could not write the %s report of %s: %s", kind, run_dir, err)
        return None
