"""A corpus for the memory: documents read from text files, directories and JSONL, cut into chunks.

A corpus is text files (a directory is read recursively; hidden files and folders are skipped;
binary or non-UTF-8 files are skipped and counted) and JSONL files with one document per line
in a text field (a "domain" field, when present, is kept with each chunk). Each document is
cut into contiguous chunks of at most L tokens of the LM's tokenizer, at a line boundary where
one falls in the second half of the window, otherwise at a token boundary; the chunks of a
document join back to its text exactly. Whitespace-only chunks are dropped.

What is embedded is what is trained: a chunk that the embedder would truncate (MiniLM reads 254
word pieces of its own, and code or numbers take more word pieces than LM tokens) is cut again,
with the embedder's tokenizer, until every piece fits both limits (`fit_pieces`). The embedder then
reads every token of a chunk, and a fine-tuning step on it (`lm.ttt.chunk_sequence`, with
`--chunk-tokens` at least the index's) trains on every token of the same text.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MIN_CHUNK_TOKENS = 8
"""A character can take up to 4 byte-level tokens, so a chunk must hold a few of them."""
BLOCK_CHARS = 1_000_000
"""Documents longer than this are tokenised a block at a time, cut at a line end (chunks do not span blocks)."""


class CorpusError(ValueError):
    """The corpus cannot be read as asked; the message names the path (and line) and the fix."""


@dataclass(frozen=True)
class Document:
    text: str
    source: str
    """Where it came from: the file path, or `path:line` for a JSONL line."""
    domain: str | None = None
    """The JSONL "domain" field, if any (e.g. code, manpages)."""


@dataclass(frozen=True)
class Chunk:
    text: str
    """At most L tokens of the LM tokenizer; a contiguous piece of its document."""
    source: str
    domain: str | None = None


# --- reading a corpus ------------------------------------------------------------------------


@dataclass
class Corpus:
    """Documents from text files, directories and JSONL files, with counts of what was skipped."""

    paths: list[Path]
    """Files or directories; a `.jsonl` file (also inside a directory) holds one JSON document a line."""
    text_field: str = "text"
    """The JSONL field holding the document text (`--text-field`)."""
    exclude: list[Path] = field(default_factory=list)
    """Directories never read (the index being written, when it lies inside the corpus)."""
    documents: int = 0
    """Documents yielded by the last pass."""
    skipped_files: list[str] = field(default_factory=list)
    """`path: reason` for each binary or undecodable file of the last pass."""
    bad_lines: list[str] = field(default_factory=list)
    """`path:line: reason` for each JSONL line that was not a document."""

    def __post_init__(self) -> None:
        self.paths = [Path(p).expanduser() for p in self.paths]
        missing = [str(p) for p in self.paths if not p.exists()]
        if not self.paths:
            raise CorpusError("no corpus given: pass text files, directories or .jsonl files")
        if missing:
            raise CorpusError(f"corpus path does not exist: {', '.join(missing)}")

    def describe(self) -> dict[str, Any]:
        """What identifies this corpus in an index's config (absolute paths and the text field)."""
        return {"paths": [str(p.resolve()) for p in self.paths], "text_field": self.text_field}  # not `exclude`

    def files(self) -> Iterator[Path]:
        """Every file, in a fixed order: the given order, directories walked in sorted order."""
        for root in self.paths:
            if root.is_file():
                yield root
                continue
            skip = [e.resolve() for e in self.exclude]
            found = (p for p in root.rglob("*") if p.is_file()
                     and not (skip and any(p.resolve().is_relative_to(e) for e in skip)))
            visible = (p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))
            yield from sorted(visible, key=lambda p: p.relative_to(root).as_posix())

    def __iter__(self) -> Iterator[Document]:
        self.documents, self.skipped_files, self.bad_lines = 0, [], []
        for path in self.files():
            docs = self._read_jsonl(path) if path.suffix == ".jsonl" else self._read_text(path)
            for doc in docs:
                self.documents += 1
                yield doc

    def _skip(self, path: Path, reason: str) -> None:
        logger.warning("skipped %s: %s", path, reason)
        self.skipped_files.append(f"{path}: {reason}")

    def _read_text(self, path: Path) -> Iterator[Document]:
        try:
            raw = path.read_bytes()
        except OSError as err:
            self._skip(path, f"unreadable ({err.strerror})")
            return
        if b"\0" in raw[:8192]:
            self._skip(path, "binary (NUL bytes)")
            return
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            self._skip(path, f"not UTF-8 text (byte {err.start})")
            return
        yield Document(text, str(path))

    def _read_jsonl(self, path: Path) -> Iterator[Document]:
        seen_object = False
        with path.open("rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    obj = json.loads(raw)
                except ValueError as err:  # also UnicodeDecodeError
                    self._bad(f"{where}: not valid JSON ({err})")
                    continue
                if not isinstance(obj, dict):
                    self._bad(f"{where}: a JSON {type(obj).__name__}, not an object")
                    continue
                if self.text_field not in obj:
                    if not seen_object:  # the field name is wrong, not one line
                        raise CorpusError(f"{path} line {lineno}: no field {self.text_field!r} (fields: "
                                          f"{', '.join(map(repr, obj)) or 'none'}); pass --text-field with "
                                          "the field that holds the text")
                    self._bad(f"{where}: no field {self.text_field!r}")
                    continue
                seen_object = True
                text = obj[self.text_field]
                if not isinstance(text, str):
                    self._bad(f"{where}: field {self.text_field!r} is a {type(text).__name__}, not a string")
                    continue
                domain = obj.get("domain")
                yield Document(text, where, None if domain is None else str(domain))

    def _bad(self, message: str) -> None:
        logger.warning("skipped line %s", message)
        self.bad_lines.append(message)


# --- chunking --------------------------------------------------------------------------------


def _count(tokenizer: Any, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _blocks(text: str, limit: int = BLOCK_CHARS) -> Iterator[str]:
    """Pieces of at most `limit` characters, cut after a newline where there is one."""
    start = 0
    while len(text) - start > limit:
        nl = text.rfind("\n", start, start + limit)
        cut = nl + 1 if nl >= start else start + limit
        yield text[start:cut]
        start = cut
    yield text[start:]


def chunk_text(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    """Contiguous pieces of `text`, each at most `max_tokens` tokens; `"".join(pieces) == text`.

    A piece ends at the last line end of its token window if that keeps at least half the
    window, otherwise at a token boundary. Token counts are of each piece tokenised on its own
    (no special tokens), checked, so a cut inside a merged token (e.g. "\\n   ") cannot overflow.
    """
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < MIN_CHUNK_TOKENS:
        raise ValueError(f"max_tokens must be an integer >= {MIN_CHUNK_TOKENS}, got {max_tokens!r}")
    pieces: list[str] = []
    for block in _blocks(text):
        pieces.extend(_chunk_block(block, tokenizer, max_tokens))
    return pieces


def _chunk_block(text: str, tokenizer: Any, max_tokens: int) -> list[str]:
    if not text:
        return []
    starts = [a for a, _ in tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    if len(starts) <= max_tokens:
        return [text]
    pieces, s = [], 0
    while s < len(text):
        t0 = max(bisect.bisect_right(starts, s) - 1, 0)  # the token holding character s
        budget = max_tokens
        while True:
            end = t0 + budget
            if end >= len(starts):
                cut = len(text)
            else:
                cut = starts[end]
                nl = text.rfind("\n", s, cut)
                if nl >= 0 and bisect.bisect_left(starts, nl + 1) - t0 >= budget // 2:
                    cut = nl + 1
                if cut <= s:  # overlapping offsets (one character, several byte tokens)
                    cut = next((a for a in starts[t0:] if a > s), len(text))
            count = _count(tokenizer, text[s:cut])
            if count <= max_tokens:
                break
            if budget == 1:
                raise ValueError(f"cannot cut {text[s:s + 40]!r}... into pieces of {max_tokens} tokens")
            budget = max(1, budget - (count - max_tokens))
        pieces.append(text[s:cut])
        s = cut
    return pieces


def fit_pieces(pieces: Iterable[str], limits: list[tuple[Any, int]]) -> tuple[list[str], int]:
    """(pieces, cut): every piece of more than max_tokens tokens of one of the `limits`' (tokenizer,
    max_tokens) cut again with `chunk_text` until each fits all of them; `cut` counts the pieces
    that had to be. The result joins back to the same text."""
    out: list[str] = []
    cut = 0
    work = list(reversed(list(pieces)))
    while work:
        piece = work.pop()
        over = next(((tok, most) for tok, most in limits if _count(tok, piece) > most), None)
        if over is None:
            out.append(piece)
            continue
        cut += 1  # more than `most` tokens of `tok`: chunk_text gives >= 2 shorter pieces
        work.extend(reversed(chunk_text(piece, *over)))
    return out, cut


def iter_chunks(documents: Iterable[Document], tokenizer: Any, chunk_tokens: int,
                fit: tuple[Any, int] | None = None, stats: dict[str, int] | None = None) -> Iterator[Chunk]:
    """The non-blank chunks of every document, in order; with `fit` = (embedder tokenizer, most
    tokens it reads), chunks are cut again until the embedder reads each whole (`fit_pieces`), and
    `stats["cut_for_embedder"]` counts the pieces that were cut again."""
    limits = [(fit[0], fit[1]), (tokenizer, chunk_tokens)] if fit is not None else []
    for doc in documents:
        pieces = chunk_text(doc.text, tokenizer, chunk_tokens)
        if limits:
            pieces, cut = fit_pieces(pieces, limits)
            if stats is not None:
                stats["cut_for_embedder"] = stats.get("cut_for_embedder", 0) + cut
        for piece in pieces:
            if piece.strip():
                yield Chunk(piece, doc.source, doc.domain)
