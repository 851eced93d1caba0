"""How redundant a memory is: the share of its chunks with a neighbour above cosine 0.9.

SIFT's advantage over nearest neighbours comes from memories with near-duplicates (NN picks the
same information again and again, SIFT does not), so a benchmark memory reports how many it has,
with the embedder the index uses (its rows are unit-norm: inner product = cosine). `index_memory`
builds the index of a corpus's memory.jsonl exactly as `testtime lm index` does (`--index DIR`
of `python -m dev.corpus`); `redundancy` reads it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

THRESHOLD = 0.9


def near_duplicates(embeddings: np.ndarray, threshold: float = THRESHOLD, block: int = 1024) -> np.ndarray:
    """(M,) bool: row i has another row j with <x_i, x_j> > threshold (exact, in blocks of rows)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)  # (M, d), unit rows
    found = np.zeros(len(x), dtype=bool)
    for start in range(0, len(x), block):
        sims = x[start:start + block] @ x.T  # (b, M)
        rows = np.arange(sims.shape[0])
        sims[rows, start + rows] = -np.inf  # not itself
        found[start:start + block] = (sims > threshold).any(axis=1)
    return found


def redundancy(memory: Any, threshold: float = THRESHOLD) -> dict[str, dict[str, float]]:
    """Per domain and over all ("all"): chunks, the share with a neighbour (any domain) above
    `threshold`, and the share whose text another chunk repeats exactly."""
    near = near_duplicates(memory.embeddings, threshold)
    texts = [c.text for c in memory.chunks]
    seen: dict[str, int] = {}
    for t in texts:
        seen[t] = seen.get(t, 0) + 1
    exact = np.array([seen[t] > 1 for t in texts], dtype=bool)
    domains = np.array([c.domain or "-" for c in memory.chunks])
    table = {}
    for name in [*sorted(set(domains)), "all"]:
        mask = np.ones(len(texts), dtype=bool) if name == "all" else domains == name
        table[name] = {"chunks": int(mask.sum()), "near": float(near[mask].mean()),
                       "exact": float(exact[mask].mean())}
    return table


def chunks_sha256(memory: Any) -> str:
    """Hash of the index's chunk texts in order: equal on two machines = the same chunks were embedded."""
    h = hashlib.sha256()
    for c in memory.chunks:
        h.update(c.text.encode("utf-8") + b"\x00")
    return h.hexdigest()


def index_memory(memory_jsonl: Path, out: Path, *, embedder: str = "minilm", model: str = "embedded",
                 chunk_tokens: int = 256) -> Any:
    """Chunk, embed and index memory.jsonl into `out` (resumable, as `testtime lm index`); the Memory."""
    from testtime.lm.embed import load_embedder  # heavy imports: only with --index
    from testtime.lm.memory import Corpus, Memory, build_index
    from testtime.models import load_model, load_tokenizer

    if embedder == "lm":
        loaded = load_model(model)
        emb, tokenizer = load_embedder("lm", lm=loaded.model, tokenizer=loaded.tokenizer), loaded.tokenizer
    else:
        emb, tokenizer = load_embedder(embedder), load_tokenizer(model)
    build_index(Corpus([memory_jsonl]), out, emb, tokenizer, chunk_tokens=chunk_tokens, tokenizer_name=model)
    return Memory.load(out)


def print_redundancy(table: dict[str, dict[str, float]], threshold: float = THRESHOLD) -> None:
    """The redundancy as a Markdown table."""
    print(f"| domain | chunks | with a neighbour > cos {threshold:g} | exact repeats |")
    print("|---|---|---|---|")
    for name, row in table.items():
        print(f"| {name} | {row['chunks']:,} | {100 * row['near']:.1f}% | {100 * row['exact']:.1f}% |")
