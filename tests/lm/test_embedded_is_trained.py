"""What is embedded is what is trained: an index chunk, the text its embedding reads and the sequence a
fine-tuning step trains on are the same tokens (issue 32, item 3)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.lm.corpus import chunk_text, fit_pieces
from testtime.lm.embed import MiniLMEmbedder
from testtime.lm.memory import Corpus, Memory, build_index
from testtime.lm.ttt import chunk_sequence, training_cut

CHUNK_TOKENS = 24
MINILM_READS = 16
"""MiniLM cut to 16 word pieces ([CLS] and [SEP] included): far fewer than a chunk of 24 LM tokens holds."""


@pytest.fixture(scope="module")
def minilm():
    return MiniLMEmbedder(dtype="float32", max_tokens=MINILM_READS)


def text_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def trained_ids(tokenizer, text: str, chunk_tokens: int) -> list[int]:
    """The chunk's own tokens in its training sequence (BOS, which is not the chunk's, dropped)."""
    ids = chunk_sequence(tokenizer, text, chunk_tokens).input_ids
    if tokenizer.bos_token_id is not None:
        assert ids[0] == tokenizer.bos_token_id
        ids = ids[1:]
    return ids


def test_every_chunk_is_read_whole_by_the_embedder_and_trained_whole(tmp_path, tokenizer, minilm):
    docs = [{"text": "".join(f"def handler_{i}_{j}(request, *args): return cache.get('key/{i}/{j}')\n"
                             for j in range(6)), "domain": "code"} for i in range(3)]
    docs.append({"text": "Solve 13*x + 7 = -32 for x.\n-3\nWhat is the gcd of 1332 and 1872?\n36\n", "domain": "math"})
    (tmp_path / "memory.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    build_index(Corpus([tmp_path / "memory.jsonl"]), tmp_path / "index", minilm, tokenizer,
                chunk_tokens=CHUNK_TOKENS, shard_size=8)
    memory = Memory.load(tmp_path / "index")
    assert memory.meta["embed_tokens"] == MINILM_READS - 2 and memory.meta["cut_for_embedder"] > 0
    by_doc: dict[str, str] = {}
    for chunk in memory.chunks:
        embedded = minilm._ids([chunk.text])[0]  # what the encoder reads, [CLS] ... [SEP]
        assert embedded[1:-1] == text_ids(minilm.tokenizer, chunk.text)  # nothing truncated
        assert trained_ids(tokenizer, chunk.text, CHUNK_TOKENS) == text_ids(tokenizer, chunk.text)
        assert tokenizer.decode(trained_ids(tokenizer, chunk.text, CHUNK_TOKENS)) == chunk.text
        by_doc[chunk.source] = by_doc.get(chunk.source, "") + chunk.text
    assert sorted(by_doc.values()) == sorted(d["text"] for d in docs)  # cut again, nothing lost
    # the same corpus without the fit: chunks of 24 LM tokens that MiniLM would have read only in part
    lm_chunks = [c for d in docs for c in chunk_text(d["text"], tokenizer, CHUNK_TOKENS)]
    assert any(len(text_ids(minilm.tokenizer, c)) > MINILM_READS - 2 for c in lm_chunks)


@settings(max_examples=25, deadline=None)
@given(lines=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=90),
                      max_size=8))
def test_fitted_pieces_join_back_and_fit_both_tokenizers(tokenizer, minilm, lines):
    text = "\n".join(lines)
    limits = [(minilm.tokenizer, 14), (tokenizer, CHUNK_TOKENS)]
    pieces, _ = fit_pieces([text] if text else [], limits)
    assert "".join(pieces) == text
    assert all(len(text_ids(tok, p)) <= most for p in pieces for tok, most in limits)


def test_a_chunk_of_exactly_chunk_tokens_keeps_its_last_token(tokenizer):
    text = " ".join(f"word{i}" for i in range(40))
    ids = text_ids(tokenizer, text)[:CHUNK_TOKENS]
    piece = tokenizer.decode(ids)
    assert text_ids(tokenizer, piece) == ids
    assert trained_ids(tokenizer, piece, CHUNK_TOKENS) == ids  # BOS takes no token's place


def test_a_memory_whose_chunks_outgrow_the_training_cut_is_named():
    assert training_cut({"chunk_tokens": 256, "embedder": "minilm", "embed_tokens": 254}, 1024) is None
    assert training_cut({"chunk_tokens": 256, "embedder": "lm", "embed_tokens": 2048}, 256) is None
    cut = training_cut({"chunk_tokens": 256, "embedder": "minilm", "embed_tokens": 254}, 128)
    assert cut is not None and "--chunk-tokens 256" in cut
    old = training_cut({"chunk_tokens": 256, "embedder": "minilm"}, 1024)  # a format-1 index
    assert old is not None and "rebuild" in old
