"""The memory SIFT selects from: a corpus cut into chunks, embedded, stored on disk, searched.

Reading and chunking the corpus is `testtime.lm.corpus`; this module embeds the chunks and
stores and searches them.

An index directory, built by streaming the corpus through `build_index`:

    config.json        what the index is built with: written first, a rerun must match it
                       (embed_tokens: the most tokens of its own the embedder reads; chunks are
                       cut to fit it, so the embedder reads each chunk whole)
    shard-00000.jsonl  one line per chunk: {"text", "source", "domain"}
    shard-00000.npy    (n, d) float16 unit-norm embeddings of those chunks, same order
    index.faiss        faiss IndexFlatIP over all chunks, positions in shard order
    meta.json          written last: config, counts, shard list; present = finished

Every file is written to a temporary name and renamed into place (`testtime.atomic`), so an
interrupted build leaves whole shards only; a rerun re-chunks the corpus (cheap), checks the
finished shards hold the same chunks and embeds only the rest.

SIFT is blind to sign (-x tells as much about x* as x does), so `Memory.search` ranks by
|<x, x*>|: it asks faiss for the top of q and of -q and merges, exactly as the brute-force
`testtime.lm.select.preselect` ranks (ties: smaller position).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from testtime.atomic import atomic_path, read_json, write_json_atomic, write_text_atomic
from testtime.lm.corpus import MIN_CHUNK_TOKENS, Chunk, Corpus, CorpusError, Document, chunk_text, iter_chunks
from testtime.lm.embed import Embedder

logger = logging.getLogger(__name__)

__all__ = ["MIN_CHUNK_TOKENS", "Chunk", "Corpus", "CorpusError", "Document", "IndexReport", "Memory",
           "MemoryIndexError", "build_index", "chunk_text", "finished_shards",
           "iter_chunks"]  # corpus names re-exported

FORMAT = 2
"""2: chunks are cut to what the embedder reads whole (`embed_tokens`); 1 let MiniLM truncate them."""
FAISS_INSTALL = "pip install faiss-cpu"


class MemoryIndexError(RuntimeError):
    """An index directory is unfinished, corrupt, or was started with other options."""


# --- building an index -----------------------------------------------------------------------


@dataclass
class IndexReport:
    """What one `build_index` run did."""

    out_dir: Path
    documents: int = 0
    chunks: int = 0
    shards: int = 0
    reused_shards: int = 0
    """Shards found finished on disk and not embedded again."""
    embedded: int = 0
    """Chunks embedded by this run (chunks minus those in reused shards)."""
    skipped_files: list[str] = field(default_factory=list)
    bad_lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


FLAGS = {"embedder": "--embedder", "dim": "--embedder", "embed_tokens": "--embedder", "chunk_tokens": "--chunk-tokens",
         "tokenizer": "--model", "shard_size": "--shard-size", "corpus": "CORPUS / --text-field",
         "format": "(testtime version)"}


def _shard_name(n: int) -> str:
    return f"shard-{n:05d}"


def finished_shards(out_dir: Path) -> list[str]:
    """Names of the shards with both files on disk (an interrupted write leaves only hidden .tmp files)."""
    return sorted(p.stem for p in Path(out_dir).glob("shard-*.npy") if p.with_suffix(".jsonl").exists())


def _check_config(out: Path, config: dict[str, Any]) -> bool:
    """Write config.json, or check the one there matches; True when resuming a started index."""
    path = out / "config.json"
    if not path.exists():
        if finished_shards(out):
            raise MemoryIndexError(f"{out} holds shards but no config.json: not an index testtime can resume; "
                                   "delete it or pass another --out")
        write_json_atomic(path, config, indent=2)
        return False
    old = read_json(path)
    if not isinstance(old, dict):
        raise MemoryIndexError(f"{path} is damaged; delete {out} (or pass another --out) to start over")
    differ = [k for k in config if old.get(k) != config[k]]
    if differ:
        detail = "; ".join(f"{k} was {old.get(k)!r}, now {config[k]!r} ({FLAGS.get(k, k)})" for k in differ)
        raise MemoryIndexError(f"{out} was started with other options: {detail}. Rerun with the same options to "
                               "resume, or pass another --out (or delete it) to start over")
    return True


def _flush(out: Path, number: int, chunks: list[Chunk], embedder: Embedder, batch_size: int,
           report: IndexReport, on_chunks: Callable[[int, bool], None] | None) -> None:
    """Write one shard, or check and reuse it when a previous run finished it."""
    name = _shard_name(number)
    npy, jsonl = out / f"{name}.npy", out / f"{name}.jsonl"
    texts = [c.text for c in chunks]
    if npy.exists() and jsonl.exists():
        try:
            with jsonl.open(encoding="utf-8") as fh:
                old = [json.loads(line)["text"] for line in fh]
            shape = np.load(npy, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError, TypeError, KeyError) as err:  # a truncated or damaged shard
            raise MemoryIndexError(f"{name} of {out} is damaged ({err}); delete {npy} and {jsonl} and rerun to "
                                   "embed that shard again") from None
        if old != texts or shape != (len(texts), embedder.dim):
            raise MemoryIndexError(f"{npy} holds other chunks than the corpus gives now (did the corpus change "
                                   f"since the index was started?); delete {out} or pass another --out")
        report.reused_shards += 1
        if on_chunks:
            on_chunks(len(chunks), True)
        return
    step = batch_size * 8  # one call sorts 8 batches by length: less padding, still frequent progress
    parts = []
    for i in range(0, len(texts), step):
        parts.append(embedder.embed(texts[i:i + step], batch_size=batch_size))
        if on_chunks:
            on_chunks(len(parts[-1]), False)
    emb = np.concatenate(parts).astype(np.float16)  # (n, d)
    lines = "".join(json.dumps(asdict(c), ensure_ascii=False) + "\n" for c in chunks)
    write_text_atomic(jsonl, lines)
    with atomic_path(npy) as tmp, open(tmp, "wb") as fh:  # last: marks the shard done
        np.save(fh, emb, allow_pickle=False)  # to a file object: given a path, np.save would append .npy
    report.embedded += len(chunks)


def _faiss() -> Any:
    try:
        import faiss  # optional at import time of testtime
    except ImportError as err:
        raise MemoryIndexError(f"the memory index needs faiss: {FAISS_INSTALL}") from err
    return faiss


def build_index(corpus: Corpus, out_dir: str | Path, embedder: Embedder, tokenizer: Any, *,
                chunk_tokens: int = 256, tokenizer_name: str = "embedded", shard_size: int = 2048,
                batch_size: int = 64, on_chunks: Callable[[int, bool], None] | None = None) -> IndexReport:
    """Chunk, embed and store `corpus` in `out_dir`, streaming `shard_size` chunks at a time.

    Resumable: finished shards are checked against the re-chunked corpus and reused, not
    embedded again; options that differ from the run that started `out_dir` raise
    MemoryIndexError. `on_chunks(n, reused)` is called as chunks are embedded or reused.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fit = embedder.text_limit() if callable(getattr(embedder, "text_limit", None)) else None
    config = {"format": FORMAT, "embedder": embedder.name, "dim": int(embedder.dim), "chunk_tokens": chunk_tokens,
              "embed_tokens": fit[1] if fit else None, "tokenizer": tokenizer_name, "shard_size": shard_size,
              "corpus": corpus.describe()}
    _check_config(out, config)
    report = IndexReport(out_dir=out)
    shards: list[dict[str, Any]] = []
    buffer: list[Chunk] = []
    stats: dict[str, int] = {}
    for chunk in iter_chunks(corpus, tokenizer, chunk_tokens, fit, stats):
        buffer.append(chunk)
        if len(buffer) == shard_size:
            _flush(out, len(shards), buffer, embedder, batch_size, report, on_chunks)
            shards.append({"name": _shard_name(len(shards)), "count": len(buffer)})
            buffer = []
    if buffer:
        _flush(out, len(shards), buffer, embedder, batch_size, report, on_chunks)
        shards.append({"name": _shard_name(len(shards)), "count": len(buffer)})
    report.documents, report.shards = corpus.documents, len(shards)
    report.chunks = sum(s["count"] for s in shards)
    report.skipped_files, report.bad_lines = list(corpus.skipped_files), list(corpus.bad_lines)
    if report.chunks == 0:
        raise CorpusError(f"no text to index in {', '.join(map(str, corpus.paths))} ({report.documents} documents, "
                          f"{len(report.skipped_files)} files skipped, {len(report.bad_lines)} bad lines)")

    faiss = _faiss()
    index = faiss.IndexFlatIP(int(embedder.dim))
    for s in shards:  # float16 on disk -> float32 for faiss; positions in shard order
        index.add(np.load(out / f"{s['name']}.npy", allow_pickle=False).astype(np.float32))
    with atomic_path(out / "index.faiss") as tmp:
        faiss.write_index(index, str(tmp))
    report.seconds = time.perf_counter() - start
    dtype = str(getattr(embedder, "dtype", "")).removeprefix("torch.") or None  # informative, not checked
    meta = {**config, "embed_dtype": dtype, "cut_for_embedder": stats.get("cut_for_embedder", 0),
            "count": report.chunks, "documents": report.documents, "shards": shards,
            "skipped_files": len(report.skipped_files), "bad_lines": len(report.bad_lines)}
    write_json_atomic(out / "meta.json", meta, indent=2)
    logger.debug("index %s | %d documents | %d chunks | %d shards (%d reused) | %.1f s", out, report.documents,
                report.chunks, report.shards, report.reused_shards, report.seconds)
    return report


# --- the memory at search time ---------------------------------------------------------------


class Memory:
    """Chunk embeddings (float32, in RAM), their texts, and a faiss index over them."""

    def __init__(self, embeddings: np.ndarray, chunks: list[Chunk], meta: dict[str, Any] | None = None,
                 index: Any = None) -> None:
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)  # (M, d)
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(chunks):
            raise ValueError(f"need embeddings (M, d) for M={len(chunks)} chunks, got {self.embeddings.shape}")
        self.chunks = chunks
        self.meta = meta or {}
        if index is None:
            index = _faiss().IndexFlatIP(self.embeddings.shape[1])
            index.add(self.embeddings)
        self.index = index

    @classmethod
    def load(cls, directory: str | Path) -> Memory:
        """Read a finished index directory written by `build_index` (no pickle anywhere)."""
        out = Path(directory)
        meta_path = out / "meta.json"
        if not meta_path.exists():
            raise MemoryIndexError(f"{out} has no meta.json: not a finished index; build it (or finish it) with "
                                   f"`testtime lm index CORPUS --out {out}`")
        meta = read_json(meta_path)
        if not isinstance(meta, dict) or not isinstance(meta.get("shards"), list) or \
                not all(isinstance(meta.get(k), int) for k in ("count", "dim")):
            raise MemoryIndexError(f"{meta_path} is damaged (not the JSON `testtime lm index` writes); rebuild the "
                                   f"index with `testtime lm index CORPUS --out {out}` after deleting {out}")
        parts, chunks = [], []
        for s in meta["shards"]:
            npy, jsonl = out / f"{s['name']}.npy", out / f"{s['name']}.jsonl"
            try:
                emb = np.load(npy, allow_pickle=False)
                with jsonl.open(encoding="utf-8") as fh:
                    rows = [json.loads(line) for line in fh]
            except (OSError, ValueError, TypeError, KeyError) as err:
                raise MemoryIndexError(f"cannot read shard {s.get('name') if isinstance(s, dict) else s} of {out}: "
                                       f"{err}; rebuild the index") from err
            if emb.shape != (s["count"], meta["dim"]) or len(rows) != s["count"]:
                raise MemoryIndexError(f"shard {s['name']} of {out} has {len(rows)} texts and embeddings of shape "
                                       f"{emb.shape}, but meta.json says {s['count']}; rebuild the index")
            parts.append(emb)
            chunks.extend(Chunk(r["text"], r["source"], r.get("domain")) for r in rows)
        faiss = _faiss()
        if not (out / "index.faiss").is_file():
            raise MemoryIndexError(f"{out}/index.faiss is missing; rebuild the index (delete {out}, then "
                                   f"`testtime lm index CORPUS --out {out}`)")
        try:
            index = faiss.read_index(str(out / "index.faiss"))
        except RuntimeError as err:
            raise MemoryIndexError(f"{out}/index.faiss cannot be read ({str(err).splitlines()[0]}); rebuild the "
                                   "index") from None
        if index.ntotal != meta["count"] or index.d != meta["dim"]:
            raise MemoryIndexError(f"{out}/index.faiss holds {index.ntotal} vectors of dimension {index.d}, meta.json "
                                   f"{meta['count']} of {meta['dim']}; rebuild the index")
        return cls(np.concatenate(parts).astype(np.float32), chunks, meta, index)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """Positions of the k chunks of largest |<x, q>|, most similar first (ties: smaller position).

        faiss finds the top of q and of -q; their union is rescored exactly and, while items
        tied with the k-th score could lie beyond what faiss returned, the search widens.
        """
        q = np.asarray(query, dtype=np.float32)
        if q.ndim != 1 or q.shape[0] != self.dim:
            raise ValueError(f"query must have shape ({self.dim},) like the memory's embeddings, got {q.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), len(self))
        fetch = min(len(self), k + 16)
        both = np.stack([q, -q])  # (2, d)
        while True:
            scores, ids = self.index.search(both, fetch)  # (2, fetch) each, descending
            cand = np.unique(ids[ids >= 0])
            score = np.abs(self.embeddings[cand] @ q)
            order = np.lexsort((cand, -score))[:k]
            kth = score[order[-1]]
            # anything faiss did not return has |<x, q>| <= max of the two last returned scores
            if fetch == len(self) or max(scores[0, -1], scores[1, -1]) < kth - 1e-5:
                return cand[order]
            fetch = min(len(self), 2 * fetch)

    def texts(self, positions: Iterable[int]) -> list[str]:
        return [self.chunks[int(i)].text for i in positions]

    def sources(self, positions: Iterable[int]) -> list[str]:
        return [self.chunks[int(i)].source for i in positions]

    def domains(self, positions: Iterable[int]) -> list[str | None]:
        return [self.chunks[int(i)].domain for i in positions]
