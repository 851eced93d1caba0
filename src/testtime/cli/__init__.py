"""The `testtime` command: a thin typer app over the library (parse, build the config, run, print).

    cli/common.py    console, errors, Ctrl-C, shared options (--config, Ray), progress, summaries
    cli/arc.py       testtime arc datasets | show | stats | score   (+ solve.py, pretrain.py)
    cli/lm.py        testtime lm index | eval
    cli/report.py    testtime arc report | lm report   (HTML reports of run directories)
    cli/kaggle.py    testtime kaggle bundle | check    (an offline bundle for the ARC Prize on Kaggle)
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from testtime import __version__
from testtime.cli.arc import app as arc_app
from testtime.cli.kaggle import app as kaggle_app
from testtime.cli.lm import app as lm_app
from testtime.cli.report import register as register_reports
from testtime.config import use_default_threads

app = typer.Typer(
    help="Test-time training of language models: ARC by per-task LoRA, and SIFT-selected fine-tuning.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(arc_app, name="arc")
app.add_typer(lm_app, name="lm")
app.add_typer(kaggle_app, name="kaggle")
register_reports(arc_app, lm_app)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"testtime {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug lines (training steps, loading)."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """testtime: build training data from the input, fine-tune a small adapter, predict, throw it away.

    Example: testtime arc stats arc-agi-1/evaluation
    """
    from rich.logging import RichHandler

    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(show_path=False, show_time=False)])
    for noisy in ("transformers", "httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    use_default_threads()  # every allowed CPU unless OMP_NUM_THREADS says otherwise (Ray actors set their own)
    for stream in (sys.stdout, sys.stderr):  # an id or path no encoding can print (a lone surrogate) is escaped,
        if hasattr(stream, "reconfigure"):   # never a crash in the middle of a run
            stream.reconfigure(errors="backslashreplace")


if __name__ == "__main__":
    app()
