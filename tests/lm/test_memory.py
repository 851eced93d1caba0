"""The memory: chunking, corpus readers, build -> load -> search, resuming, the `lm index` command."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.lm.embed import LMEmbedder, MiniLMEmbedder
from testtime.lm.memory import (
    Chunk,
    Corpus,
    CorpusError,
    Memory,
    MemoryIndexError,
    build_index,
    chunk_text,
    iter_chunks,
)
from testtime.lm.select import preselect


class FakeEmbedder:
    """Deterministic unit vectors from a hash of the text; counts the texts it embeds."""

    name = "fake"

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.embedded = 0

    def embed(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        self.embedded += len(texts)
        rows = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(self.dim)
            rows.append(v / np.linalg.norm(v))
        return np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def write_corpus(root, n_files: int = 12, lines: int = 30):
    """Text files of numbered lines, two subfolders, one duplicated file (exact ties in search)."""
    for i in range(n_files):
        sub = root / ("code" if i % 2 else "prose")
        sub.mkdir(parents=True, exist_ok=True)
        body = "".join(f"file {i} line {j}: the quick brown fox {i * j} jumps\n" for j in range(lines))
        (sub / f"doc{i:02d}.txt").write_text(body)
    (root / "prose" / "copy.txt").write_text((root / "prose" / "doc00.txt").read_text())
    return root


# --- chunking --------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(lines=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120),
                      max_size=12),
       max_tokens=st.integers(8, 40))
def test_chunks_join_back_and_fit(tokenizer, lines, max_tokens):
    text = "\n".join(lines)
    pieces = chunk_text(text, tokenizer, max_tokens)
    assert "".join(pieces) == text
    assert all(p and n_tokens(tokenizer, p) <= max_tokens for p in pieces)


def test_chunks_prefer_line_ends(tokenizer):
    text = "".join(f"line number {i} says hello\n" for i in range(60))  # ~7 tokens a line
    pieces = chunk_text(text, tokenizer, 64)
    assert len(pieces) > 5 and "".join(pieces) == text
    assert all(p.endswith("\n") for p in pieces)
    assert all(n_tokens(tokenizer, p) > 32 for p in pieces[:-1])  # line ends in the second half only


def test_a_long_line_is_cut_at_token_boundaries(tokenizer):
    text = "short\n" + "word " * 500 + "é🙂" * 50
    pieces = chunk_text(text, tokenizer, 32)
    assert "".join(pieces) == text
    assert max(n_tokens(tokenizer, p) for p in pieces) <= 32
    assert n_tokens(tokenizer, pieces[0]) > 16  # an early line end does not make a crumb of a chunk
    assert len(pieces) <= n_tokens(tokenizer, text) // 16  # full windows throughout
    with pytest.raises(ValueError, match="max_tokens"):
        chunk_text(text, tokenizer, 4)


# --- readers ---------------------------------------------------------------------------------


def test_directory_reader_walks_in_order_and_counts_skipped_files(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02 binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("hidden")
    (tmp_path / "b" / "rows.jsonl").write_text('{"text": "third", "domain": "web"}\n')
    corpus = Corpus([tmp_path])
    docs = list(corpus)
    assert [d.text for d in docs] == ["first", "third", "second"]  # a.txt, b/rows.jsonl, b/two.txt
    assert docs[1].domain == "web" and docs[1].source.endswith("rows.jsonl:1") and docs[0].domain is None
    assert corpus.documents == 3
    assert sorted(s.split(":")[0].rsplit("/", 1)[-1] for s in corpus.skipped_files) == ["blob.bin", "latin1.txt"]
    list(corpus)  # a second pass counts afresh
    assert corpus.documents == 3 and len(corpus.skipped_files) == 2


def test_jsonl_bad_lines_are_counted_with_file_and_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"body": "one", "domain": "a"}\n'
                    "not json\n"
                    "\n"
                    '[1, 2]\n'
                    '{"title": "no body"}\n'
                    '{"body": 7}\n'
                    '{"body": "two"}\n')
    corpus = Corpus([path], text_field="body")
    assert [(d.text, d.domain) for d in corpus] == [("one", "a"), ("two", None)]
    assert [b.split(": ", 1)[0] for b in corpus.bad_lines] == [f"{path}:{n}" for n in (2, 4, 5, 6)]
    assert "no field 'body'" in corpus.bad_lines[2]


def test_jsonl_wrong_field_is_an_error_naming_file_line_and_flag(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"content": "x"}\n')
    with pytest.raises(CorpusError, match=r"docs\.jsonl line 1: no field 'text' \(fields: 'content'\).*--text-field"):
        list(Corpus([path]))
    with pytest.raises(CorpusError, match="does not exist"):
        Corpus([tmp_path / "missing"])


# --- build, load, search ---------------------------------------------------------------------


def test_build_load_search_matches_brute_force(tmp_path, tokenizer):
    corpus = Corpus([write_corpus(tmp_path / "corpus", n_files=16, lines=40)])
    emb = FakeEmbedder()
    report = build_index(corpus, tmp_path / "idx", emb, tokenizer, chunk_tokens=48, shard_size=64)
    chunks = list(iter_chunks(corpus, tokenizer, 48))
    assert report.chunks == len(chunks) == emb.embedded and report.shards == -(-len(chunks) // 64) > 2
    assert report.documents == 17

    memory = Memory.load(tmp_path / "idx")
    assert memory.texts(range(len(memory))) == [c.text for c in chunks]
    assert memory.meta["count"] == len(memory) and memory.meta["dim"] == 32
    on_disk = np.load(tmp_path / "idx" / "shard-00000.npy", allow_pickle=False)
    assert on_disk.dtype == np.float16
    np.testing.assert_allclose(memory.embeddings, emb.embed([c.text for c in chunks]), atol=1e-3)

    rng = np.random.default_rng(0)
    queries = [rng.standard_normal(32) for _ in range(5)] + [memory.embeddings[3], -memory.embeddings[7]]
    for q in queries:
        q = (q / np.linalg.norm(q)).astype(np.float32)
        for k in (1, 10, 50, len(memory) + 5):
            got = memory.search(q, k)
            np.testing.assert_array_equal(got, preselect(q, memory.embeddings, k))
            np.testing.assert_array_equal(memory.search(-q, k), got)  # blind to sign


def test_search_breaks_wide_ties_by_position(tmp_path, tokenizer):
    docs = tmp_path / "docs.jsonl"
    rows = [{"text": f"unique text {i}"} for i in range(30)] + [{"text": "same"}] * 50
    docs.write_text("".join(json.dumps(r) + "\n" for r in rows[::2] + rows[1::2]))
    build_index(Corpus([docs]), tmp_path / "idx", FakeEmbedder(), tokenizer, chunk_tokens=16, shard_size=20)
    memory = Memory.load(tmp_path / "idx")
    same = [i for i, t in enumerate(memory.texts(range(len(memory)))) if t == "same"]
    q = memory.embeddings[same[-1]]
    np.testing.assert_array_equal(memory.search(q, 5), same[:5])  # 50 exact ties, faiss returns 21 at first
    np.testing.assert_array_equal(memory.search(q, 40), preselect(q, memory.embeddings, 40))


class TiesLastFirst:
    """A stand-in for the faiss index that breaks exact ties the other way (larger position first)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def search(self, queries: np.ndarray, k: int):
        scores = queries @ self.x.T  # (n, M)
        ids = np.stack([np.lexsort((-np.arange(len(s)), -s))[:k] for s in scores])
        return np.take_along_axis(scores, ids, axis=1), ids


def test_search_widens_until_every_tie_is_seen():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((80, 8)).astype(np.float32)
    x[10:60] = x[10]  # 50 exact ties
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    memory = Memory(x, [Chunk(str(i), "s") for i in range(80)], index=TiesLastFirst(x))
    np.testing.assert_array_equal(memory.search(x[10], 5), np.arange(10, 15))
    np.testing.assert_array_equal(memory.search(-x[10], 52), preselect(-x[10], x, 52))


def test_resume_reuses_finished_shards_and_gives_the_same_index(tmp_path, tokenizer):
    corpus = Corpus([write_corpus(tmp_path / "corpus")])
    full = build_index(corpus, tmp_path / "a", FakeEmbedder(), tokenizer, chunk_tokens=32, shard_size=40)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    last = f"shard-{full.shards - 1:05d}"
    for name in (f"{last}.npy", "meta.json", "index.faiss"):  # interrupted while writing the last shard
        (tmp_path / "b" / name).unlink()
    (tmp_path / "b" / f".{last}.npy.k3x9q1.tmp").write_bytes(b"half a file")  # what testtime.atomic leaves

    emb = FakeEmbedder()
    again = build_index(corpus, tmp_path / "b", emb, tokenizer, chunk_tokens=32, shard_size=40)
    last_count = full.chunks - 40 * (full.shards - 1)
    assert emb.embedded == again.embedded == last_count
    assert again.reused_shards == full.shards - 1 and again.chunks == full.chunks
    a, b = Memory.load(tmp_path / "a"), Memory.load(tmp_path / "b")
    np.testing.assert_array_equal(a.embeddings, b.embeddings)
    assert a.chunks == b.chunks and a.meta == {**b.meta}

    emb = FakeEmbedder()
    build_index(corpus, tmp_path / "b", emb, tokenizer, chunk_tokens=32, shard_size=40)
    assert emb.embedded == 0  # a finished index is all reused


def test_other_options_or_changed_corpus_refuse_to_resume(tmp_path, tokenizer):
    root = write_corpus(tmp_path / "corpus", n_files=4)
    corpus = Corpus([root])
    build_index(corpus, tmp_path / "idx", FakeEmbedder(), tokenizer, chunk_tokens=32, shard_size=40)
    with pytest.raises(MemoryIndexError, match=r"chunk_tokens was 32, now 64 \(--chunk-tokens\)"):
        build_index(corpus, tmp_path / "idx", FakeEmbedder(), tokenizer, chunk_tokens=64, shard_size=40)
    with pytest.raises(MemoryIndexError, match=r"--embedder"):
        build_index(corpus, tmp_path / "idx", FakeEmbedder(dim=16), tokenizer, chunk_tokens=32, shard_size=40)
    (root / "prose" / "doc00.txt").write_text("changed\n" * 50)
    with pytest.raises(MemoryIndexError, match="other chunks than the corpus"):
        build_index(corpus, tmp_path / "idx", FakeEmbedder(), tokenizer, chunk_tokens=32, shard_size=40)
    (tmp_path / "idx" / "meta.json").unlink()
    with pytest.raises(MemoryIndexError, match="no meta.json.*testtime lm index"):
        Memory.load(tmp_path / "idx")


# --- embedders -------------------------------------------------------------------------------


def test_lm_embedder_pools_only_real_tokens(tiny_model, tokenizer):
    emb = LMEmbedder(tiny_model, tokenizer)
    texts = ["short", "a much longer text that pads the short one in its batch", "mid length text"]
    together = emb.embed(texts, batch_size=3)
    alone = np.concatenate([emb.embed([t]) for t in texts])
    assert together.shape == (3, 32) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_minilm_embeds_similar_texts_closer():
    emb = MiniLMEmbedder(dtype="float32")
    texts = ["How do I open a file in Python?", "Reading a text file with Python's open()", "The cat sat on the mat."]
    x = emb.embed(texts, batch_size=2)
    assert x.shape == (3, 384) and emb.dim == 384
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.3
    np.testing.assert_allclose(x[2], emb.embed([texts[2]])[0], atol=1e-5)  # batch order/padding does not matter


# --- the command -----------------------------------------------------------------------------


def test_cli_index_builds_resumes_and_names_bad_fields(tmp_path, tokenizer, monkeypatch):
    import testtime.lm.embed as embed_mod
    import testtime.models as models_mod
    from cli_helpers import invoke

    made = []
    monkeypatch.setattr(models_mod, "load_tokenizer", lambda *a, **k: tokenizer)
    monkeypatch.setattr(embed_mod, "load_embedder", lambda *a, **k: made.append(FakeEmbedder()) or made[-1])
    root = write_corpus(tmp_path / "corpus", n_files=6)
    (root / "junk.bin").write_bytes(b"\x00" * 10)
    out = tmp_path / "idx"
    args = ["lm", "index", str(root), "--out", str(out), "--chunk-tokens", "32", "--shard-size", "30"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["embedder"] == "fake" and meta["chunk_tokens"] == 32 and meta["skipped_files"] == 1
    summary = {ln.split("│")[1].strip(): ln.split("│")[2].strip() for ln in result.output.splitlines()
               if ln.count("│") == 3}
    assert summary["documents"] == "7" and summary["chunks"] == str(meta["count"]) and summary["skipped files"] == "1"

    result = invoke(*args)
    assert result.exit_code == 0 and "resuming:" in result.output and made[-1].embedded == 0

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "x"}\n')
    result = invoke("lm", "index", bad, "--out", tmp_path / "other")
    assert result.exit_code == 2 and "--text-field" in result.output and "bad.jsonl line 1" in result.output
    result = invoke("lm", "index", root, "--out", out, "--embedder", "bert")
    assert result.exit_code == 2 and "--embedder must be one of minilm, lm" in result.output
