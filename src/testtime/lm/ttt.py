"""Test-time fine-tuning of an LM per prompt on data selected from a memory (Hubotter et al., 2025).

For each prompt: embed it, let faiss narrow the memory to the K chunks of largest |<x, x*>|,
select up to N of them (SIFT, uncertainty sampling, nearest neighbours, ...), take one optimizer
step per selected chunk in selection order on a fresh LoRA (or on every base weight, with a
`FullHost`), measure the continuation's bits per byte, and drop the adapter (restore the weights),
so every prompt starts from the same base model.

    host = AdapterHost(model, LoraArgs(r=64, alpha=64))      # or FullHost(model): full fine-tuning
    result = ttt_prompt(host, tokenizer, memory, embedder, prompt, continuation, PromptTTT(select="sift"))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from testtime.batching import TrainingSequence
from testtime.finetune import StepInfo, train
from testtime.lm.bpb import encode_pair, sequence_bits, utf8_bytes
from testtime.lm.records import PromptResult
from testtime.lm.select import Selection, select_nn, select_nn_repeats, select_random, select_sift, select_us
from testtime.lm.settings import PromptTTT
from testtime.lora import AdapterHost, FullHost
from testtime.seeds import derive_seed
from testtime.settings import TrainArgs

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("none", "nn", "sift", "nn-repeats", "random", "us")


def select_chunks(query: np.ndarray, candidates: np.ndarray, args: PromptTTT, seed: int) -> Selection:
    """Run the selector of `args.select` on the candidate embeddings (indices into `candidates`)."""
    n = min(args.n, len(candidates)) if args.select in ("nn", "random") else args.n
    if args.select == "sift":
        return select_sift(query, candidates, n, lam=args.lam, stop_below=args.stop_below, min_gain=args.min_gain,
                           alpha=args.adaptive)
    if args.select == "us":
        return select_us(query, candidates, n, lam=args.lam)
    if args.select == "nn":
        return select_nn(query, candidates, n, lam=args.lam)
    if args.select == "nn-repeats":
        return select_nn_repeats(query, candidates, n, lam=args.lam)
    if args.select == "random":
        return select_random(query, candidates, n, lam=args.lam, rng=np.random.default_rng(seed))
    raise ValueError(f"select must be one of {', '.join(METHODS)}, got {args.select!r}")


def chunk_sequence(tokenizer: Any, text: str, max_tokens: int) -> TrainingSequence:
    """A memory chunk as a training sequence with a loss on every token: its first `max_tokens` tokens
    (all of them when the index's chunks are at most `max_tokens` long), after BOS if the tokenizer has one."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens]
    bos = tokenizer.bos_token_id
    if bos is not None:
        ids = [bos, *ids]  # BOS is not the chunk's: it takes none of its tokens' places
    return TrainingSequence(input_ids=ids, labels=list(ids))


def training_cut(meta: dict[str, Any], chunk_tokens: int) -> str | None:
    """Why what is trained differs from what was embedded, for an index's meta.json, else None."""
    problems = []
    indexed = meta.get("chunk_tokens")
    if isinstance(indexed, int) and indexed > chunk_tokens:
        problems.append(f"its chunks hold up to {indexed} tokens but --chunk-tokens {chunk_tokens} trains on the "
                        f"first {chunk_tokens} of each only (pass --chunk-tokens {indexed})")
    if meta.get("embed_tokens") is None and meta.get("embedder") == "minilm":
        problems.append("it was built before testtime cut chunks to what MiniLM reads (256 word pieces): the "
                        "embeddings of longer chunks saw only their start (rebuild it with `testtime lm index`)")
    return "the memory's kernel does not describe what is trained: " + "; ".join(problems) if problems else None


def ttt_prompt(host: AdapterHost | FullHost, tokenizer: Any, memory: Any, embedder: Any, prompt_id: str,
                prompt: str, continuation: str, args: PromptTTT, *, domain: str = "",
                on_step: Callable[[StepInfo], None] | None = None) -> PromptResult:
    """Select, fine-tune a fresh adapter (or every weight), measure, drop it: the base model ends unchanged."""
    seed = derive_seed(args.seed, prompt_id)
    scored = encode_pair(tokenizer, prompt, continuation, args.context)  # too long: fails now, not after training
    picks: list[int] = []
    sel = Selection()
    search_ms = nn_ms = 0.0
    steps = tokens = 0
    train_s = 0.0
    trace: list[float] | None = None
    if args.select != "none":
        query = embedder.embed([prompt])[0]
        t0 = time.perf_counter()
        positions = memory.search(query, args.k)  # (K,) memory positions, most similar first
        search_ms = 1000 * (time.perf_counter() - t0)
        candidates = memory.embeddings[positions]
        sel = select_chunks(query, candidates, args, seed)
        picks = [int(positions[i]) for i in sel.indices]
        nn_ms = 1000 * select_nn(query, candidates, min(args.n, len(candidates))).seconds
    try:
        if picks:
            host.fresh(seed)
            texts = memory.texts(picks)
            seqs = [chunk_sequence(tokenizer, t, args.chunk_tokens) for t in texts]
            step_hook = on_step
            if args.trace:
                trace = [sequence_bits(host.model, scored)]
                step_hook = _tracing(host.model, scored, trace, on_step)
            stats = train(host.model, iter([[s] for s in seqs]),  # one step per chunk, in selection order
                          TrainArgs(lr=args.lr, max_steps=len(seqs), optimizer=args.optimizer, schedule="constant",
                                    seed=seed, log_every=0),
                          on_step=step_hook)
            steps, tokens, train_s = stats.steps, stats.tokens, stats.seconds
        bits, n_bytes = sequence_bits(host.model, scored), utf8_bytes(continuation)
        if args.trace and trace is None:
            trace = [bits]
    finally:
        host.drop()
    sigmas = [float(s) for s in sel.sigmas]
    before = [float(sel.sigma0), *sigmas[:-1]] if sigmas else []
    var_before, var_after = None, None
    if args.select != "none":
        var_before, var_after = float(sel.sigma0) ** 2, (sigmas[-1] if sigmas else float(sel.sigma0)) ** 2
    return PromptResult(prompt_id=prompt_id, domain=domain, select=args.select, bits=bits, bytes=n_bytes,
                        picks=picks, sigmas=sigmas, sigma_before=before, sigma_after=list(sigmas),
                        var_before=var_before, var_after=var_after, stopped=sel.stopped,
                        stopped_at=len(picks) if sel.stopped else None, method=args.method,
                        select_ms=1000 * sel.seconds, nn_select_ms=nn_ms, search_ms=search_ms, train_s=train_s,
                        steps=steps, tokens=tokens, bits_at_step=trace)


def _tracing(model: Any, scored: Any, trace: list[float],
             on_step: Callable[[StepInfo], None] | None) -> Callable[[StepInfo], None]:
    """An `on_step` that appends the continuation's bits after each step to `trace`, then calls `on_step`."""
    def hook(info: StepInfo) -> None:
        trace.append(sequence_bits(model, scored))
        if on_step is not None:
            on_step(info)
    return hook


def summarize(results: list[PromptResult]) -> dict[str | None, dict[str, float]]:
    """Bits per byte per domain (by name, "-" for none) and over every prompt (the key None, so that no
    domain name, `all` included, can merge into it): total bits / total bytes, prompts, mean selection ms.
    `results`: ok records."""
    groups: dict[str | None, list[PromptResult]] = {}
    for r in results:
        groups.setdefault(r.domain or "-", []).append(r)
    groups[None] = list(results)
    table = {}
    for name, rs in groups.items():
        if not rs:
            continue
        table[name] = {"prompts": len(rs), "bpb": sum(r.bits for r in rs) / sum(r.bytes for r in rs),
                       "select_ms": float(np.mean([r.select_ms for r in rs])),
                       "nn_select_ms": float(np.mean([r.nn_select_ms for r in rs])),
                       "steps": float(np.mean([r.steps for r in rs]))}
    return table
