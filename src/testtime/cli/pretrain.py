"""`testtime arc pretrain`: fine-tune the base model on many ARC tasks (parse, build, run, print)."""

from __future__ import annotations

from pathlib import Path

import typer

from testtime.arc.settings import PretrainConfig
from testtime.cli import common
from testtime.cli.common import console, fail, safe
from testtime.config import flags, options

OPTIONS = options(PretrainConfig())
"""Every setting of `arc pretrain` as an option (flag, default, help, panel: declared once, on the dataclasses)."""


@common.with_settings(OPTIONS)
def pretrain(
    ctx: typer.Context,
    sources: list[str] = typer.Argument(..., help="re-ARC files (.json/.json.gz), data set names, ARC files or dirs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output adapter directory (checkpoints go inside)."),
    restart: bool = typer.Option(False, "--restart", help="Delete OUT's checkpoints and config and start over.",
                                 rich_help_panel="Run directory"),
    config: Path = common.CONFIG,
) -> None:
    """Fine-tune the base model on in-context ARC tasks before test-time training.

    Samples k demonstrations + a query from each training task under random invertible transforms,
    trains a LoRA, checkpoints every N steps (re-run to resume; other settings are refused) and
    writes a peft adapter plus card.json to OUT, ready for `testtime arc solve --adapter OUT`.

    Example: testtime arc pretrain ../shared/data/re-arc/re_arc_120.json.gz arc-agi-1/training --steps 20 --out runs/pt
    """
    from testtime.arc.pretrain import pretrain as run_pretrain  # heavy imports
    from testtime.arc.pretrain_data import load_examples
    from testtime.arc.task import TaskError
    from testtime.jobs import WriteFailed
    from testtime.models import ModelLoadError, load_model

    params = common.options_of(ctx)
    settings, problems = common.build(PretrainConfig(sources=list(sources)), params, OPTIONS,
                                      parse={"dtype": common.concrete_dtype})
    model, init_adapter, max_minutes = settings.model, settings.init_adapter, settings.max_minutes
    steps, batch_size, grad_accum = settings.train.max_steps, settings.train.batch_size, settings.train.grad_accum
    if problems:
        fail("; ".join(problems))
    if out.exists() and not out.is_dir():
        fail(f"--out {out} is a file; give a directory")
    try:
        examples, info = load_examples(list(sources), allow_evaluation=settings.allow_evaluation)
    except TaskError as err:
        fail(str(err))
    # the arithmetic of one step, as recipes show it
    console.print(f"[bold]testtime arc pretrain[/]: {len(examples)} tasks, "
                  f"{sum(len(v) for v in examples.values()):,} examples; {steps} steps x {batch_size} seq x "
                  f"{grad_accum} accum (<= {settings.data.max_len} tokens each) -> out {safe(out)}"
                  + (f"; LoRA from {safe(init_adapter)}" if init_adapter else "")
                  + (f"; at most {max_minutes:g} minutes" if max_minutes else ""))
    weights = common.weights(model=model)  # before anything is deleted or loaded
    try:
        loaded = load_model(model, dtype=settings.dtype)
    except ModelLoadError as err:
        fail(str(err))
    try:
        card = _run(run_pretrain, loaded, examples, settings, out, info, params, restart, weights)
    except WriteFailed as err:
        fail(str(err), code=1)
    except ValueError as err:  # RunDirError (changed settings, --out in use), a damaged checkpoint, ...
        fail(str(err))
    except OSError as err:  # a checkpoint, the adapter or the card could not be written
        fail(f"cannot write {err.filename or out} ({err.strerror or err}); the checkpoints written so far are kept: "
             "free space or fix the permissions, then run the same command again", code=1)
    except KeyboardInterrupt:
        console.print(f"[bold yellow]interrupted:[/] checkpoints are in {safe(out / 'checkpoints')}; "
                      "run the same command again to resume")
        raise typer.Exit(code=130) from None
    _summary(card, out)
    from testtime.cli.report import after_run
    after_run("pretrain", out)  # OUT/report.html: loss curves, tokens/s, the card


def _run(run_pretrain, loaded, examples, config, out, info, params, restart, weights) -> dict:
    progress = common.bar()
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

        return run_pretrain(loaded, examples, config, out, info=info, on_progress=on_progress,
                            flags=flags(OPTIONS), options=params, restart=restart, weights=weights)


def _summary(card: dict, out: Path) -> None:
    common.summary("testtime arc pretrain: summary", [
        ("steps", str(card["steps"])),
        ("tokens seen", f"{card['tokens_seen']:,}"),
        ("seconds", f"{card['seconds']:.0f}"),
        ("train loss first -> last 10", f"{card['train_loss_first']:.4f} -> {card['train_loss_final']:.4f}"
         if card["train_loss_first"] is not None else "n/a"),
        ("validation loss before -> after", f"{card['val_loss_initial']:.4f} -> {card['val_loss_final']:.4f}"),
        *([("stopped by --max-minutes", f"after step {card['steps']} of {card['steps_planned']}; run again to go on")]
          if card.get("stopped_by") == "max-minutes" else []),
        *([("started from", f"{safe(card['lineage'][-1]['adapter'])} ({card['steps_with_lineage']} steps in all)")]
          if card.get("lineage") else []),
    ])
    console.print(f"adapter: {safe(out)} (use it with: testtime arc solve ... --adapter {safe(out)})")


def export_adapter(
    src: Path = typer.Argument(..., help="An adapter directory written by `testtime arc pretrain`."),
    dst: Path = typer.Argument(..., help="Where the copy goes (created; files in it are replaced)."),
    dtype: str = typer.Option("bfloat16", "--dtype", help="Weights of the copy: bfloat16 (half the bytes) or float32."),
    rank: int = typer.Option(None, "--rank", help="Re-factor each module's change to its best approximation of "
                             "this rank (a smaller file; the card records the share of the change kept)."),
) -> None:
    """Copy a pretrained adapter with its weights cast (bfloat16 by default) and its card kept.

    The copy's card.json adds an `export` entry: the source, its weights' SHA-256, the dtype and the
    largest change the cast made. Put the copy at src/testtime/adapters/NAME to ship it with the package.

    Example: testtime arc export-adapter runs/pt src/testtime/adapters/smollm2-135m-arc
    """
    from testtime.lora import export_adapter as run_export

    if dst.resolve() == src.resolve():
        fail(f"{safe(dst)} is the source directory; give another destination")
    try:
        card = run_export(src, dst, dtype, rank=rank)
    except ValueError as err:
        fail(str(err))
    size = (dst / "adapter_model.safetensors").stat().st_size
    console.print(f"wrote {safe(dst)}: {size / 1e6:.1f} MB of {dtype} weights "
                  f"(largest change {card['export']['max_abs_change']:.2g}), card.json with its export entry")
    if "rank" in card["export"]:
        r = card["export"]["rank"]
        console.print(f"rank {r['from']} -> {r['to']}: {100 * r['kept']:.1f}% of the squared change kept")
