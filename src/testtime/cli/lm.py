"""`testtime lm ...`: test-time fine-tuning of language models on data selected from a memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.table import Table
from rich.text import Text

from testtime.cli import common
from testtime.cli.common import console, fail, safe
from testtime.config import options
from testtime.lm.records import PromptResult
from testtime.lm.settings import EvalConfig

app = typer.Typer(help="LMs: build a memory of text chunks; test-time fine-tuning on SIFT-selected data.",
                  no_args_is_help=True)


@app.command()
def index(
    corpus: list[Path] = typer.Argument(..., help="Text files, directories (read recursively) or .jsonl files."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory (created; an unfinished one is resumed)."),
    embedder: str = typer.Option("minilm", "--embedder", "-e",
                                 help="minilm (all-MiniLM-L6-v2) or lm (mean-pooled hidden states of --model)."),
    model: str = typer.Option("embedded", "--model", "-m",
                              help="LM whose tokenizer measures chunks (and that embeds with --embedder lm)."),
    chunk_tokens: int = typer.Option(256, "--chunk-tokens", "-L", help="Maximum tokens per chunk."),
    embed_dtype: str = typer.Option("auto", "--embed-dtype",
                                    help="minilm precision: auto (bfloat16 on CUDA / AMX CPUs), float32, bfloat16."),
    text_field: str = typer.Option("text", "--text-field", help="JSONL field holding the document text."),
    batch_size: int = typer.Option(64, "--batch-size", help="Chunks embedded together."),
    shard_size: int = typer.Option(2048, "--shard-size", help="Chunks per shard on disk (the unit of resuming)."),
) -> None:
    """Chunk a corpus, embed the chunks and store them with a faiss index: the memory SIFT selects from.

    Writes float16 embeddings and chunk texts in shards, then index.faiss and meta.json.
    Re-running the same command resumes an interrupted build, skipping finished shards.

    Example: testtime lm index docs/ notes.jsonl --out runs/memory
    """
    from transformers.utils import logging as hf_logging

    from testtime.lm.memory import Corpus, CorpusError, MemoryIndexError, build_index, finished_shards

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # one INFO line per CPU flavour it tries
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with ours
    problems = _index_problems(embedder, embed_dtype, chunk_tokens, batch_size, shard_size, text_field, out)
    if problems:
        fail("; ".join(problems))
    if embedder == "lm" and embed_dtype != "auto":
        common.warn(f"--embed-dtype {embed_dtype} is ignored by --embedder lm (the LM runs in the dtype it loads with)")
    try:
        docs = Corpus(list(corpus), text_field=text_field, exclude=[out])  # never the index's own files
    except CorpusError as err:
        fail(str(err))
    emb, tok = _embedder(embedder, model, embed_dtype)
    dtype = str(getattr(emb, "dtype", "float32")).removeprefix("torch.")
    shown = ", ".join(map(str, corpus[:3])) + (f" and {len(corpus) - 3} more" if len(corpus) > 3 else "")
    console.print(f"[bold]testtime lm index[/] {safe(shown)} -> {safe(out)}: embedder {embedder} "
                  f"({emb.dim}-d, {dtype}), tokenizer of {safe(model)}, chunks of at most {chunk_tokens} tokens, "
                  f"shards of {shard_size}")
    done = finished_shards(out) if out.is_dir() else []
    if done:
        console.print(f"resuming: {len(done)} finished shards in {safe(out)} are checked and reused, "
                      "not embedded again")

    try:
        report = _build_with_progress(build_index, docs, out, emb, tok, chunk_tokens=chunk_tokens,
                                      tokenizer_name=model, shard_size=shard_size, batch_size=batch_size)
    except (CorpusError, MemoryIndexError) as err:
        fail(str(err))
    except KeyboardInterrupt:
        common.interrupted(out, "shard")
    _print_summary(report)


def _index_problems(embedder: str, embed_dtype: str, chunk_tokens: int, batch_size: int, shard_size: int,
                    text_field: str, out: Path) -> list[str]:
    from testtime.lm.embed import EMBEDDERS  # heavy imports
    from testtime.lm.memory import MIN_CHUNK_TOKENS

    problems = []
    if embedder not in EMBEDDERS:
        problems.append(f"--embedder must be one of {', '.join(EMBEDDERS)}, not {embedder!r}")
    if embed_dtype not in ("auto", "float32", "bfloat16"):
        problems.append(f"--embed-dtype must be auto, float32 or bfloat16, not {embed_dtype!r}")
    if chunk_tokens < MIN_CHUNK_TOKENS:
        problems.append(f"--chunk-tokens must be at least {MIN_CHUNK_TOKENS}, not {chunk_tokens}")
    for flag, value in (("--batch-size", batch_size), ("--shard-size", shard_size)):
        if value < 1:
            problems.append(f"{flag} must be at least 1, not {value}")
    if not text_field:
        problems.append("--text-field must name a field")
    if out.exists() and not out.is_dir():
        problems.append(f"--out {out} is a file; give a directory")
    return problems


def _embedder(embedder: str, model: str, embed_dtype: str):
    """(embedder, tokenizer that measures chunks); `lm` embeds with the model itself."""
    from testtime.lm.embed import EmbedderError, load_embedder  # heavy imports
    from testtime.models import ModelLoadError, load_model, load_tokenizer

    try:
        if embedder == "lm":
            loaded = load_model(model)
            return load_embedder("lm", lm=loaded.model, tokenizer=loaded.tokenizer), loaded.tokenizer
        return load_embedder("minilm", dtype=embed_dtype), load_tokenizer(model)
    except (ModelLoadError, EmbedderError) as err:
        fail(str(err))


def _build_with_progress(build, *args, **kwargs):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    # the total is unknown until the corpus is read: a spinner and a count, not a bar
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed:,.0f} chunks"),
                        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), console=console)
    start = time.perf_counter()
    counts = {"embedded": 0, "reused": 0}

    def on_chunks(n: int, reused: bool) -> None:
        counts["reused" if reused else "embedded"] += n
        rate = counts["embedded"] / max(time.perf_counter() - start, 1e-9)
        progress.update(bar, advance=n, rate=f"| {rate:,.1f} chunks/s embedded | {counts['reused']:,} reused")

    with progress:
        bar = progress.add_task("embedding", total=None, rate="")
        return build(*args, on_chunks=on_chunks, **kwargs)


def _print_summary(report) -> None:
    rate = report.embedded / report.seconds if report.seconds else 0.0
    common.summary("testtime lm index: summary", [
        ("documents", f"{report.documents:,}"),
        ("chunks", f"{report.chunks:,}"),
        ("shards (reused)", f"{report.shards} ({report.reused_shards})"),
        ("chunks embedded now", f"{report.embedded:,}"),
        ("skipped files", str(len(report.skipped_files))),
        ("bad JSONL lines", str(len(report.bad_lines))),
        ("seconds", f"{report.seconds:.1f}"),
        ("chunks / s", f"{rate:,.1f}"),
    ])
    for line in (report.skipped_files + report.bad_lines)[:10]:
        console.print(Text.assemble(("  skipped ", "yellow"), line))
    more = len(report.skipped_files) + len(report.bad_lines) - 10
    if more > 0:
        console.print(f"  ... and {more} more (each is logged above as a warning)")
    console.print(f"index: {report.out_dir / 'index.faiss'}, meta: {report.out_dir / 'meta.json'}")


OPTIONS = options(EvalConfig())
"""Every setting of `lm eval` as an option (flag, default, help, panel: declared once, on the dataclasses)."""


@app.command("eval")
@common.with_settings(OPTIONS + common.scale_options())
def evaluate(
    ctx: typer.Context,
    prompts: Path = typer.Option(..., "--prompts", "-p", help="JSONL: id, domain, prompt, continuation per line."),
    out: Path = typer.Option(None, "--out", "-o",
                             help="Run directory: OUT/METHOD/ (METHOD: the selector, sift-adaptive) holds one "
                                  "result per prompt."),
    limit: int = common.LIMIT,
    config: Path = common.CONFIG,
    restart: bool = common.RESTART,
    retry_failed: bool = common.RETRY_FAILED,
    ray: bool = common.RAY,
) -> None:
    """Bits per byte of held-out continuations, after test-time fine-tuning on selected chunks.

    For each prompt: select chunks from the memory (SIFT, US, NN, ...), one step per chunk on a
    fresh LoRA (--lora-rank 0: on every weight), score the continuation, drop the LoRA (restore the
    weights). Prints bits per byte per domain and overall. Each method gets its own run directory
    OUT/METHOD/ (resumable; other settings are refused); `testtime lm compare OUT` sets them side by side.
    With --ray, prompts run on a pool of Ray actors and land in the same run directory.

    Example: testtime lm eval --index runs/memory --prompts prompts.jsonl --select sift --out runs/lm
    """
    from testtime.lm.evaluate import read_prompts  # heavy imports

    params = common.options_of(ctx)
    eval_config, problems = common.build(EvalConfig(prompts=str(prompts)), params, OPTIONS,
                                         parse={"dtype": common.concrete_dtype})
    select, index = eval_config.ttt.select, eval_config.index
    scale, scale_problems = common.scale_of(params)
    problems += scale_problems
    if limit is not None and limit < 1:
        problems.append(f"--limit must be at least 1, not {limit}")
    if problems:
        fail("; ".join(problems))
    if eval_config.lora.r == 0 and eval_config.dtype == "bfloat16":
        common.warn("--lora-rank 0 trains the bfloat16 weights themselves (and Adam's state) in bfloat16, where "
                    "small steps round away; --dtype float32 keeps them exact")
    try:
        pf = read_prompts(prompts)
    except ValueError as err:
        fail(str(err))
    for err in pf.errors:
        console.print(f"[yellow]skipped bad prompt line:[/] {safe(err)}")
    todo = pf.prompts[:limit] if limit else pf.prompts
    if not todo:
        fail(f"no usable prompt in {prompts}")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    t = eval_config.ttt
    console.print(f"[bold]testtime lm eval[/]: {len(todo)} prompts, select {safe(select)}"
                  + (f" from {safe(index)} (K={t.k}, N={t.n}, lambda={t.lam})" if index and select != "none" else "")
                  + (f", adaptive alpha={t.adaptive}" if t.adaptive is not None else "")
                  + (", full fine-tuning" if eval_config.lora.r == 0 else f", LoRA rank {eval_config.lora.r}")
                  + f", out {safe(out / t.method if out else '(none)')}")
    results, failures = _run(eval_config, todo, out, params, scale, restart=restart, retry_failed=retry_failed)
    _print_eval_summary(t.method, results, failures, pf.errors)


def _run(eval_config, prompts, out, params, scale, *, restart: bool, retry_failed: bool):
    from testtime.lm.evaluate import LmJob, evaluate, run_settings, select_dir

    run_dir = select_dir(out, eval_config.ttt.method, eval_config) if out else None
    results, failures, counts = common.run_job(
        "lm eval", "prompt", _prompt_line, scale, out, run_dir,
        run_settings(eval_config), params, OPTIONS, weight_paths={"model": eval_config.model},
        restart=restart,
        work=lambda executor, emit: evaluate(LmJob(eval_config), prompts, run_dir, executor=executor,
                                             retry_failed=retry_failed, emit=emit))
    if counts.failed and counts.failed == counts.total:
        _print_eval_summary(eval_config.ttt.method, results, failures, [])
        fail(f"every prompt failed (first: {failures[0].error})", code=1)
    return results, failures


def _prompt_line(data: dict, resumed: bool) -> str:
    """A prompt's line as its record arrives from the job layer (its JSON)."""
    record = PromptResult.from_json(data, trusted=True)  # made by this run, or accepted when resumed
    if not record.ok:
        state = "failed earlier (skipped; --retry-failed runs it again)" if resumed else f"failed: {record.error}"
    else:
        state = "resumed" if resumed else f"{record.bpb:.3f} bpb, {record.steps} steps"
    return f"  {record.prompt_id}: {state}"


def _print_eval_summary(select: str, results: list[PromptResult], failures: list[PromptResult],
                        bad_lines: list[str]) -> None:
    from testtime.lm.ttt import summarize

    for f in failures:
        console.print(Text.assemble(("failed: ", "yellow"), f"{f.prompt_id}: {f.error}"))
    table = Table(title=f"testtime lm eval: bits per byte, select {safe(select)}")
    for col in ("domain", "prompts", "bits/byte", "select ms", "NN select ms", "steps"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for domain, row in summarize(results).items():
        if domain is None:  # the total: its own section and style, so a domain named "all" stays a domain
            table.add_section()
        table.add_row(Text(domain) if domain is not None else Text("every prompt", style="bold"), str(row["prompts"]),
                      f"{row['bpb']:.4f}", f"{row['select_ms']:.2f}", f"{row['nn_select_ms']:.2f}",
                      f"{row['steps']:.1f}")
    console.print(table)
    console.print(f"{len(results)} scored, {len(failures)} failed, {len(bad_lines)} bad lines")


@app.command()
def compare(
    runs: list[Path] = typer.Argument(..., help="Run directories of `lm eval`: OUT (every OUT/METHOD/ in it) or "
                                                "OUT/METHOD; one of them the `none` run."),
    baseline: str = typer.Option("none", "--baseline", help="The run the others are measured against."),
    markdown: bool = typer.Option(False, "--markdown", help="Print a markdown table (for BENCHMARKS.md)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the comparison, intervals included, "
                                                              "as JSON to this file."),
    bootstrap_samples: int = typer.Option(2000, "--bootstrap-samples", help="Resamples behind each 95% interval."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="numpy seed of the bootstrap resamples."),
) -> None:
    """Methods side by side: bits per byte as % of the untouched model per domain, with standard errors.

    Each cell is the mean over the domain's prompts of 100 x bpb(method) / bpb(none) on the same
    prompt, with the standard error across prompts; "All" pools every prompt. Under each domain,
    `vs none` and `vs nn`: the 95% paired-bootstrap interval of the method's % minus the
    reference's, in points of none (prompts resampled with replacement; below 0: fewer bits than
    the reference). Below: the mean steps taken, and Spearman's rank correlation between the
    uncertainty reduction (sigma_0^2 - sigma_n^2) and the realised gain bpb(none) - bpb(method).

    Example: testtime lm compare runs/lm            # runs/lm/none, runs/lm/nn, runs/lm/sift, ...
    """
    from testtime.lm import compare as comparison  # heavy imports (numpy)

    try:
        found = comparison.find_runs(runs)
        table = comparison.compare(found, baseline, samples=bootstrap_samples, seed=bootstrap_seed)
    except ValueError as err:
        fail(str(err))
    for run in found:
        if run.unusable:
            common.warn(f"{run.path}: {run.unusable} failed or unreadable records left out")
    if markdown:
        console.print("\n".join(comparison.markdown(table)), markup=False, highlight=False, soft_wrap=True)
    else:
        cells = comparison.rows(table)
        shown = Table(title=f"testtime lm compare: bits per byte as % of {safe(baseline)} (standard error)",
                      caption=f"vs REF: 95% paired-bootstrap interval of % minus REF's %, in points of "
                              f"{safe(baseline)} ({bootstrap_samples} resamples, seed {bootstrap_seed})")
        for i, col in enumerate(cells[0]):
            shown.add_column(Text(col), justify="left" if i == 0 else "right")
        for row in cells[1:]:
            shown.add_row(*map(Text, row))
        console.print(shown)
    for method, n in table.missing.items():
        if n:
            console.print(f"[yellow]{safe(method)}:[/] {n} of the {table.base['All'][0]} {safe(baseline)} prompts "
                          "have no result there (left out of its cells)")
    for method, n in table.unpaired.items():
        if n:
            console.print(f"[yellow]{safe(method)}:[/] {n} of its prompts have no {comparison.NN} result "
                          f"(left out of its vs {comparison.NN} intervals)")
    if json_out is not None:
        from testtime.atomic import write_json_atomic

        try:
            write_json_atomic(json_out, comparison.as_json(table), indent=1)
        except OSError as err:
            fail(f"--json {json_out}: cannot write it ({err.strerror or err}); give a writable file path")
        console.print(f"wrote {safe(json_out)}")
