"""`testtime arc pretrain`: fine-tune the base model on many ARC tasks (parse, call, print)."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SHIPPED_ADAPTERS = Path(__file__).resolve().parents[1] / "adapters"
"""Adapters shipped inside the package, one directory each."""

DEFAULT_ADAPTER = {"embedded": "smollm2-135m-arc"}
"""Model name -> the shipped adapter `arc solve` merges by default (when its directory exists)."""


def default_adapter(model: str) -> Path | None:
    """The shipped ARC adapter for `model`, if the package has one."""
    name = DEFAULT_ADAPTER.get(model)
    path = SHIPPED_ADAPTERS / name if name else None
    return path if path is not None and (path / "adapter_config.json").is_file() else None


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def pretrain(
    sources: list[str] = typer.Argument(..., help="re-ARC files (.json/.json.gz), data set names, ARC files or dirs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output adapter directory (checkpoints go inside)."),
    model: str = typer.Option("embedded", "--model", "-m", help="Base model: `embedded`, HF id or local dir."),
    steps: int = typer.Option(1000, help="Optimizer steps."),
    lr: float = typer.Option(2e-4, help="Peak learning rate (cosine decay after warm-up)."),
    warmup: int = typer.Option(50, help="Warm-up steps."),
    batch_size: int = typer.Option(1, help="Sequences per micro-batch (length-grouped)."),
    grad_accum: int = typer.Option(4, help="Micro-batches per optimizer step."),
    max_len: int = typer.Option(2048, help="Maximum tokens per sequence (demos dropped to fit)."),
    min_demos: int = typer.Option(2, help="Fewest demonstrations per sampled task."),
    max_demos: int = typer.Option(5, help="Most demonstrations per sampled task."),
    loss_on: str = typer.Option("outputs", help="Loss on every demo `outputs` or the query `answer` only."),
    colors: bool = typer.Option(True, "--colors/--no-colors", help="Augment with colour permutations."),
    lora_rank: int = typer.Option(16, help="LoRA rank (any; 16 keeps the SmolLM2 adapter under 20 MB)."),
    lora_alpha: int = typer.Option(32, help="LoRA alpha."),
    lora_targets: str = typer.Option("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
                                     help="Comma-separated module names that get a LoRA."),
    train_token_rows: bool = typer.Option(False, "--train-token-rows/--no-train-token-rows",
                                          help="Also train the embedding/head rows of the format's tokens."),
    gradient_checkpointing: bool = typer.Option(False, help="Recompute activations (less memory, slower)."),
    val_tasks: int = typer.Option(8, help="Whole tasks held out for the validation loss."),
    val_sequences: int = typer.Option(32, help="Validation sequences drawn from them."),
    val_every: int = typer.Option(100, help="Validation loss every N steps."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint every N steps."),
    allow_evaluation: bool = typer.Option(False, help="Allow ARC evaluation-set tasks in the training data."),
    seed: int = typer.Option(0, help="Seed of the data stream, validation split and adapter init."),
    restart: bool = typer.Option(False, help="Delete OUT's checkpoints and config and start over."),
) -> None:
    """Fine-tune the base model on in-context ARC tasks before test-time training.

    Samples k demonstrations + a query from each pool task under random invertible transforms,
    trains a LoRA, checkpoints every N steps (re-run to resume) and writes a peft adapter plus
    card.json to OUT, ready for `testtime arc solve --adapter OUT`.

    Example: testtime arc pretrain ../shared/data/re-arc/re_arc_120.json.gz arc-agi-1/training --steps 20 --out runs/pt
    """
    from testtime.arc.pretrain import PretrainConfig, check_config  # noqa: PLC0415 - heavy imports
    from testtime.arc.pretrain import pretrain as run_pretrain
    from testtime.arc.pretrain_data import SamplerArgs, load_pools
    from testtime.arc.task import TaskError
    from testtime.finetune import LoraArgs, TrainArgs
    from testtime.models import ModelLoadError, load_model

    targets = tuple(t.strip() for t in lora_targets.split(",") if t.strip())
    config = PretrainConfig(
        model=model, sources=list(sources), train_token_rows=train_token_rows,
        lora=LoraArgs(r=lora_rank, alpha=lora_alpha, target_modules=targets),
        train=TrainArgs(lr=lr, max_steps=steps, warmup_steps=warmup, batch_size=batch_size, grad_accum=grad_accum,
                        seed=seed, log_every=0, gradient_checkpointing=gradient_checkpointing),
        data=SamplerArgs(min_demos=min_demos, max_demos=max_demos, max_len=max_len, colors=colors,
                         loss_on=loss_on, seed=seed),
        val_tasks=val_tasks, val_sequences=val_sequences, val_every=val_every, checkpoint_every=checkpoint_every,
    )
    problems = check_config(config)
    if loss_on not in ("answer", "outputs"):
        problems.append(f"--loss-on must be answer or outputs, not {loss_on!r}")
    if not targets:
        problems.append("--lora-targets names no module")
    if batch_size < 1 or grad_accum < 1 or lora_rank < 1:
        problems.append("--batch-size, --grad-accum and --lora-rank must be at least 1")
    if problems:
        _fail("; ".join(problems))
    if restart:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        (out / "config.json").unlink(missing_ok=True)
    try:
        pool, info = load_pools(list(sources), allow_evaluation=allow_evaluation)
    except TaskError as err:
        _fail(str(err))
    # the arithmetic of one step, as recipes show it
    console.print(f"[bold]testtime arc pretrain[/]: {len(pool)} tasks, {sum(len(v) for v in pool.values()):,} "
                  f"examples; {steps} steps x {batch_size} seq x {grad_accum} accum (<= {max_len} tokens each) "
                  f"-> out {out}")
    try:
        loaded = load_model(model)
    except ModelLoadError as err:
        _fail(str(err))
    try:
        card = _run(run_pretrain, loaded, pool, config, out, info)
    except ValueError as err:
        _fail(str(err))
    except KeyboardInterrupt:
        console.print(f"[bold yellow]interrupted:[/] checkpoints are in {out / 'checkpoints'}; "
                      "run the same command again to resume")
        raise typer.Exit(code=130) from None
    _summary(card, out)


def _run(run_pretrain, loaded, pool, config, out, info) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("pretrain"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console)
    last_val = {"v": None}
    with progress:
        bar = progress.add_task("pretrain", total=config.train.max_steps, status="")

        def on_progress(p) -> None:
            if p.val_loss is not None:
                last_val["v"] = p.val_loss
            status = f"loss {p.loss:.3f} | {p.tokens_per_s:,.0f} tok/s"
            if p.mfu is not None:
                status += f" | MFU {p.mfu:.1%}"
            if last_val["v"] is not None:
                status += f" | val {last_val['v']:.3f}"
            progress.update(bar, completed=p.step, status=status)
            if p.val_loss is not None or p.checkpoint is not None:
                saved = f", checkpoint {p.checkpoint.name}" if p.checkpoint else ""
                val = f"val loss {p.val_loss:.4f}" if p.val_loss is not None else ""
                progress.console.print(f"  step {p.step:>{len(str(p.total))}}/{p.total}: loss {p.loss:.4f} "
                                       f"{val}{saved}")

        return run_pretrain(loaded, pool, config, out, info=info, on_progress=on_progress)


def _summary(card: dict, out: Path) -> None:
    table = Table(title="testtime arc pretrain: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("steps", str(card["steps"])),
        ("tokens seen", f"{card['tokens_seen']:,}"),
        ("seconds", f"{card['seconds']:.0f}"),
        ("train loss first -> last 10", f"{card['train_loss_first']:.4f} -> {card['train_loss_final']:.4f}"
         if card["train_loss_first"] is not None else "n/a"),
        ("validation loss before -> after", f"{card['val_loss_initial']:.4f} -> {card['val_loss_final']:.4f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"adapter: {out} (use it with: testtime arc solve ... --adapter {out})")
