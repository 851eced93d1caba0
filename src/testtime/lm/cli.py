"""`testtime lm ...`: test-time fine-tuning of language models on data selected from a memory."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from testtime.scale import GPUS_PER_WORKER_OPTION, RAY_ADDRESS_OPTION, THREADS_PER_WORKER_OPTION

app = typer.Typer(help="LMs: build a memory of text chunks; test-time fine-tuning on SIFT-selected data.",
                  no_args_is_help=True)
console = Console()


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/] {message}")


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


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
    from testtime.lm.embed import EMBEDDERS, EmbedderError, load_embedder  # noqa: PLC0415 - heavy imports
    from testtime.lm.memory import (
        MIN_CHUNK_TOKENS,
        Corpus,
        CorpusError,
        MemoryIndexError,
        build_index,
        finished_shards,
    )
    from testtime.models import ModelLoadError, load_model, load_tokenizer

    from transformers.utils import logging as hf_logging

    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # one INFO line per CPU flavour it tries
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with ours

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
    if problems:
        _fail("; ".join(problems))
    if embedder == "lm" and embed_dtype != "auto":
        console.print(f"[yellow]warning:[/] --embed-dtype {embed_dtype} is ignored by --embedder lm "
                      "(the LM runs in the dtype it loads with)")
    try:
        docs = Corpus(list(corpus), text_field=text_field)
    except CorpusError as err:
        _fail(str(err))

    try:
        if embedder == "lm":
            loaded = load_model(model)
            tok = loaded.tokenizer
            emb = load_embedder("lm", lm=loaded.model, tokenizer=tok)
        else:
            tok = load_tokenizer(model)
            emb = load_embedder("minilm", dtype=embed_dtype)
    except (ModelLoadError, EmbedderError) as err:
        _fail(str(err))
    dtype = str(getattr(emb, "dtype", "float32")).removeprefix("torch.")
    shown = ", ".join(map(str, corpus[:3])) + (f" and {len(corpus) - 3} more" if len(corpus) > 3 else "")
    console.print(f"[bold]testtime lm index[/] {shown} -> {out}: embedder {embedder} "
                  f"({emb.dim}-d, {dtype}), tokenizer of {model}, chunks of at most {chunk_tokens} tokens, "
                  f"shards of {shard_size}")
    done = finished_shards(out) if out.is_dir() else []
    if done:
        console.print(f"resuming: {len(done)} finished shards in {out} are checked and reused, not embedded again")

    try:
        report = _build_with_progress(build_index, docs, out, emb, tok, chunk_tokens=chunk_tokens,
                                      tokenizer_name=model, shard_size=shard_size, batch_size=batch_size)
    except (CorpusError, MemoryIndexError) as err:
        _fail(str(err))
    except KeyboardInterrupt:
        console.print(f"[bold yellow]interrupted:[/] finished shards are saved in {out}; "
                      "run the same command again to resume")
        raise typer.Exit(code=130) from None
    _print_summary(report)


def _build_with_progress(build, *args, **kwargs):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415

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
    table = Table(title="testtime lm index: summary")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("documents", f"{report.documents:,}"),
        ("chunks", f"{report.chunks:,}"),
        ("shards (reused)", f"{report.shards} ({report.reused_shards})"),
        ("chunks embedded now", f"{report.embedded:,}"),
        ("skipped files", str(len(report.skipped_files))),
        ("bad JSONL lines", str(len(report.bad_lines))),
        ("seconds", f"{report.seconds:.1f}"),
        ("chunks / s", f"{rate:,.1f}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for line in (report.skipped_files + report.bad_lines)[:10]:
        console.print(f"  [yellow]skipped[/] {line}")
    more = len(report.skipped_files) + len(report.bad_lines) - 10
    if more > 0:
        console.print(f"  ... and {more} more (each is logged above as a warning)")
    console.print(f"index: {report.out_dir / 'index.faiss'}, meta: {report.out_dir / 'meta.json'}")


@app.command("eval")
def evaluate(
    prompts: Path = typer.Option(..., "--prompts", "-p", help="JSONL: id, domain, prompt, continuation per line."),
    index: Path = typer.Option(None, "--index", "-i", help="Memory built by `testtime lm index` (not for none)."),
    select: str = typer.Option("sift", "--select", "-s", help="none, nn, sift, nn-repeats or random."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory: one result file per prompt (resumable)."),
    model: str = typer.Option("embedded", "--model", "-m", help="Base model: `embedded`, HF id or local dir."),
    steps: int = typer.Option(50, "--steps", "-n", help="Chunks selected = optimizer steps per prompt."),
    k: int = typer.Option(200, "--k", help="Candidates faiss hands to the selector."),
    lam: float = typer.Option(0.01, "--lam", help="SIFT's lambda (large: NN with repeats; small: no duplicates)."),
    stop_below: float = typer.Option(None, "--stop-below", help="Adaptive: stop once sigma_n < this."),
    min_gain: float = typer.Option(None, "--min-gain", help="Adaptive: stop once a pick cuts sigma by < this share."),
    lr: float = typer.Option(5e-4, "--lr", help="Learning rate of the per-prompt Adam steps."),
    lora_rank: int = typer.Option(16, "--lora-rank", help="Rank of the per-prompt LoRA."),
    chunk_tokens: int = typer.Option(1024, "--chunk-tokens", help="A selected chunk is cut to this many tokens."),
    context: int = typer.Option(2048, "--context", help="Most tokens of prompt + continuation when scoring."),
    limit: int = typer.Option(None, "--limit", help="Only the first N prompts."),
    seed: int = typer.Option(0, "--seed", help="Adapter init and random selection."),
    ray: bool = typer.Option(False, "--ray", help="Spread prompts over a pool of Ray actors (needs the `ray` extra)."),
    workers: int = typer.Option(2, "--workers", help="Ray: actors, each loading the model and memory once."),
    gpus_per_worker: float = GPUS_PER_WORKER_OPTION,
    threads_per_worker: int = THREADS_PER_WORKER_OPTION,
    ray_address: str = RAY_ADDRESS_OPTION,
    max_retries: int = typer.Option(2, "--max-retries", help="Ray: retries of a prompt whose worker died."),
) -> None:
    """Bits per byte of held-out continuations, after test-time fine-tuning on selected chunks.

    For each prompt: select chunks from the memory (SIFT, NN, ...), one step per chunk on a fresh
    LoRA, score the continuation, drop the LoRA. Prints bits per byte per domain and overall.
    With --ray, prompts run on a pool of Ray actors and land in the same run directory.

    Example: testtime lm eval --index runs/memory --prompts prompts.jsonl --select sift --out runs/sift
    """
    from testtime.finetune import LoraArgs  # noqa: PLC0415 - heavy imports
    from testtime.lm.embed import EmbedderError
    from testtime.lm.evaluate import load_memory, read_prompts, run_eval
    from testtime.lm.memory import MemoryIndexError
    from testtime.lm.ttft import METHODS, TTFTArgs
    from testtime.lora import AdapterHost
    from testtime.models import ModelLoadError, load_model

    problems = []
    if select not in METHODS:
        problems.append(f"--select must be one of {', '.join(METHODS)}, not {select!r}")
    if select != "none" and index is None:
        problems.append(f"--select {select} needs --index (a memory from `testtime lm index`)")
    for flag, value in (("--steps", steps), ("--k", k), ("--lora-rank", lora_rank), ("--chunk-tokens", chunk_tokens),
                        ("--context", context)):
        if value < 1:
            problems.append(f"{flag} must be at least 1, not {value}")
    if lam <= 0:
        problems.append(f"--lam must be positive, not {lam}")
    from testtime.scale import scale_flags  # noqa: PLC0415 - ray itself is imported only when used

    scale = scale_flags(problems, _warn, ray, workers, gpus_per_worker, threads_per_worker, ray_address,
                        max_retries)
    if problems:
        _fail("; ".join(problems))
    try:
        pf = read_prompts(prompts)
    except ValueError as err:
        _fail(str(err))
    for err in pf.errors:
        console.print(f"[yellow]skipped bad prompt line:[/] {err}")
    todo = pf.prompts[:limit] if limit else pf.prompts
    if not todo:
        _fail(f"no usable prompt in {prompts}")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    args = TTFTArgs(select=select, n=steps, k=k, lam=lam, stop_below=stop_below, min_gain=min_gain, lr=lr,
                    chunk_tokens=chunk_tokens, context=context, seed=seed)
    config = {"model": model, "index": str(index) if index else None, "prompts": str(prompts)}
    if scale is not None:
        console.print(f"[bold]testtime lm eval[/]: {len(todo)} prompts, select {select}"
                      + (f" from {index} (K={k}, N={steps}, lambda={lam})" if index and select != "none" else "")
                      + f", out {out or '(none)'}")
        results, failures = _eval_on_ray(model, index, lora_rank, todo, args, out, config, scale)
        _print_eval_summary(select, results, failures, pf.errors)
        return
    try:
        loaded = load_model(model)
        memory, embedder = load_memory(index, select, loaded)
    except (MemoryIndexError, ModelLoadError, EmbedderError) as err:
        _fail(str(err))
    host = AdapterHost(loaded.model, LoraArgs(r=lora_rank, alpha=2 * lora_rank))
    console.print(f"[bold]testtime lm eval[/]: {len(todo)} prompts, select {select}"
                  + (f" from {len(memory):,} chunks (K={k}, N={steps}, lambda={lam})" if memory else "")
                  + f", out {out or '(none)'}")
    try:
        results, failures = _eval_with_progress(
            lambda on_prompt: run_eval(host, loaded.tokenizer, memory, embedder, todo, args, out, config=config,
                                       on_prompt=on_prompt), len(todo))
    except KeyboardInterrupt:
        saved = f"finished prompts are saved in {out}; run the same command again to resume" if out else \
            "nothing was saved (no --out)"
        console.print(f"[bold yellow]interrupted:[/] {saved}")
        raise typer.Exit(code=130) from None
    _print_eval_summary(select, results, failures, pf.errors)


def _print_eval_summary(select: str, results: list[dict], failures: list[dict], bad_lines: list[str]) -> None:
    from testtime.lm.ttft import summarize  # noqa: PLC0415

    for f in failures:
        console.print(f"[yellow]failed:[/] {f['prompt_id']}: {f['error']}")
    table = Table(title=f"testtime lm eval: bits per byte, select {select}")
    for col in ("domain", "prompts", "bits/byte", "select ms", "NN select ms", "steps"):
        table.add_column(col, justify="left" if col == "domain" else "right")
    for domain, row in summarize(results).items():
        table.add_row(domain, str(row["prompts"]), f"{row['bpb']:.4f}", f"{row['select_ms']:.2f}",
                      f"{row['nn_select_ms']:.2f}", f"{row['steps']:.1f}")
    console.print(table)
    console.print(f"{len(results)} scored, {len(failures)} failed, {len(bad_lines)} bad lines")


def _eval_on_ray(model, index, lora_rank, prompts, args, out, config, scale):
    from rich.markup import escape  # noqa: PLC0415

    from testtime.scale import ScaleError, eval_on_ray, progress_view, ray_session

    def on_prompt(p, row, resumed):
        state = "resumed" if resumed else (f"{row['bpb']:.3f} bpb, {row['steps']} steps" if "bpb" in row
                                           else f"failed: {row.get('error')}")
        console.print(f"  {p.id}: {escape(state)}")

    try:
        with ray_session(scale) as where:
            console.print(f"Ray: {where}; {scale.workers} workers x {scale.threads_per_worker} threads, "
                          f"{scale.gpus_per_worker:g} GPU each, up to {scale.max_retries} retries per prompt")
            with progress_view(console, "prompts") as on_event:
                return eval_on_ray(model, index, lora_rank, prompts, args, out, scale, config=config,
                                   on_prompt=on_prompt, on_event=on_event)
    except ScaleError as err:
        _fail(escape(str(err)))
    except KeyboardInterrupt:
        saved = f"finished prompts are saved in {out}; run the same command again to resume" if out else \
            "nothing was saved (no --out)"
        console.print(f"[bold yellow]interrupted:[/] {saved} (its Ray workers were stopped)")
        raise typer.Exit(code=130) from None


def _eval_with_progress(run, total: int):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    progress = Progress(TextColumn("prompts"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[status]}"), console=console)
    with progress:
        bar = progress.add_task("prompts", total=total, status="")

        def on_prompt(p, row, resumed):
            state = "resumed" if resumed else (f"{row['bpb']:.3f} bpb, {row['steps']} steps" if "bpb" in row
                                               else "failed")
            progress.update(bar, advance=1, status=f"{p.id}: {state}")

        return run(on_prompt)
