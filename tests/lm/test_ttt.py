"""LM test-time fine-tuning: bits per byte, per-prompt select -> train -> measure -> reset, the eval run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import CONTINUATION, MEMORY, LetterEmbedder, ListMemory, make_tiny_model
from testtime.batching import IGNORE_INDEX
from testtime.jobs import Finished, record_name
from testtime.lm.bpb import continuation_bits, encode_pair
from testtime.lm.evaluate import Prompt, read_prompts, run_eval
from testtime.lm.settings import PromptTTT
from testtime.lm.ttt import select_chunks, summarize, ttt_prompt
from testtime.lora import AdapterHost
from testtime.settings import LoraArgs


def host_for(tokenizer) -> AdapterHost:
    model = make_tiny_model(vocab_size=len(tokenizer))
    with torch.no_grad():  # logits able to grow: see tests/test_finetune.py::tiny
        model.get_input_embeddings().weight.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return AdapterHost(model, LoraArgs(r=8, alpha=16))


def test_bits_per_byte_is_the_continuation_log_loss_over_utf8_bytes(tokenizer):
    model = make_tiny_model(vocab_size=len(tokenizer))
    prompt, continuation = "Grüße aus", " Zürich, façade"
    bits, n_bytes = continuation_bits(model, tokenizer, prompt, continuation)
    assert n_bytes == len(continuation.encode("utf-8")) > len(continuation)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    c_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p_ids + c_ids])).logits[0].float(), -1)
    manual = -sum(logp[len(p_ids) - 1 + i, t].item() for i, t in enumerate(c_ids)) / math.log(2)
    assert bits == pytest.approx(manual, rel=1e-5)


def test_long_prompts_lose_tokens_from_the_left_and_only_the_continuation_is_labelled(tokenizer):
    seq = encode_pair(tokenizer, "one two three four five six seven", " eight nine", max_len=6)
    c_ids = tokenizer(" eight nine", add_special_tokens=False)["input_ids"]
    assert len(seq.input_ids) == 6 and seq.input_ids[-len(c_ids):] == c_ids
    assert seq.labels == [IGNORE_INDEX] * (6 - len(c_ids)) + c_ids
    with pytest.raises(ValueError, match="over the 2-token context"):
        encode_pair(tokenizer, "a", " eight nine ten", max_len=2)


def test_each_prompt_trains_on_its_picks_in_order_and_leaves_the_base_untouched(tokenizer):
    host = host_for(tokenizer)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    base = {k: v.clone() for k, v in host.model.state_dict().items()}
    before = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, PromptTTT(select="none"))
    assert before.steps == 0 and before.picks == []

    steps = []
    args = PromptTTT(select="nn-repeats", n=6, k=7, lr=3e-2)
    after = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, args,
                        on_step=steps.append)
    assert after.steps == len(steps) == 6 and after.picks == [0] * 6  # the nearest chunk, over and over
    assert after.bpb < 0.8 * before.bpb  # training on the continuation's own text helps
    assert not host.has_adapter
    now = host.model.state_dict()  # the base weights; the (switched-off) adapter's own are not the base's
    assert set(now) == set(base) and all(torch.equal(now[k], base[k]) for k in base if "lora_" not in k)
    again = ttt_prompt(host, tokenizer, memory, embedder, "p0", "a story:", CONTINUATION, PromptTTT(select="none"))
    assert again.bits == before.bits


def test_sift_skips_duplicates_and_adaptive_stopping_saves_steps(tokenizer):
    host = host_for(tokenizer)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    sift = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION,
                       PromptTTT(select="sift", n=3, k=7, lam=1e-4))
    assert sift.picks[0] in (0, 1, 2) and not set(sift.picks[1:]) & {0, 1, 2}  # no second copy of it
    nn = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION,
                     PromptTTT(select="nn", n=3, k=7))
    assert nn.picks == [0, 1, 2]  # nearest neighbours take all three copies
    full = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION,
                       PromptTTT(select="sift", n=6, k=7, lam=1e-4))
    threshold = (full.sigmas[1] + full.sigmas[2]) / 2
    stopped = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION,
                          PromptTTT(select="sift", n=6, k=7, lam=1e-4, stop_below=threshold))
    assert stopped.stopped == "stop_below" and stopped.picks == full.picks[:3] and stopped.steps == 3
    assert full.steps == 6


def test_prompt_files_count_bad_lines_by_number(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": "a", "domain": "code", "prompt": "x", "continuation": "y"}, "not json",
            {"id": "b", "prompt": "x"}, {"id": "a", "prompt": "x", "continuation": "z"},
            {"id": "c", "prompt": "", "continuation": "w"}]
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows))
    pf = read_prompts(path)
    assert [p.id for p in pf.prompts] == ["a", "c"] and pf.prompts[0].domain == "code"
    assert len(pf.errors) == 3
    assert f"{path}:2: not JSON" in pf.errors[0] and ":3: field continuation" in pf.errors[1]
    assert "duplicate id 'a'" in pf.errors[2]
    with pytest.raises(ValueError, match="cannot read prompts file"):
        read_prompts(tmp_path / "missing.jsonl")


def test_eval_writes_one_file_per_prompt_resumes_and_counts_failures(tmp_path, tokenizer):
    host = host_for(tokenizer)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    prompts = [Prompt("p1", "prose", "a story:", CONTINUATION), Prompt("p/2", "noise", "zz", " zzz yyy"),
               Prompt("p3", "prose", "", "word " * 400)]  # p3: continuation longer than the context
    args = PromptTTT(select="sift", n=2, k=7, lr=1e-2, context=64)
    results, failures = run_eval(host, tokenizer, memory, embedder, prompts, args, tmp_path)
    assert [r.prompt_id for r in results] == ["p1", "p/2"]
    assert [f.prompt_id for f in failures] == ["p3"] and "context" in failures[0].error
    run_dir = tmp_path / "sift"  # the selector's own run directory: config.json and results/
    assert (run_dir / "config.json").is_file()
    # an id that is not a plain name gets a hashed file name; the record keeps the id. A failure is saved too.
    assert sorted(p.name for p in (run_dir / "results").iterdir()) == sorted(
        ["p1.json", f"{record_name('p/2')}.json", "p3.json"])
    assert record_name("p/2") != "p_2" and "/" not in record_name("p/2")
    odd = json.loads((run_dir / "results" / f"{record_name('p/2')}.json").read_text())
    assert odd["prompt_id"] == "p/2" and odd["status"] == "ok"
    failed = json.loads((run_dir / "results" / "p3.json").read_text())
    assert failed["status"] == "failed" and "context" in failed["error"] and failed["traceback"]
    assert failed["domain"] == "prose" and failed["select"] == "sift"
    table = summarize(results)
    assert set(table) == {"prose", "noise", None} and table[None]["prompts"] == 2
    assert table[None]["bpb"] == pytest.approx(sum(r.bits for r in results) / sum(r.bytes for r in results))

    finished = []
    again, failed_again = run_eval(host, tokenizer, memory, embedder, prompts, args, tmp_path,
                                   emit=lambda e: finished.append((e.item_id, e.resumed))
                                   if isinstance(e, Finished) else None)
    # every prompt is read back, the failed one included (a rerun skips it), none is run again
    assert finished == [("p1", True), ("p/2", True), ("p3", True)] and again == results
    assert failed_again == failures


def test_records_carry_sigma_before_and_after_each_step_and_where_adaptive_stopped(tokenizer):
    host = host_for(tokenizer)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    args = PromptTTT(select="sift", n=3, k=7, lam=1e-2)
    full = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION, args)
    assert full.sigma_before == pytest.approx([1.0, *full.sigmas[:-1]]) and full.sigma_after == full.sigmas
    assert full.sigma_before[1:] == full.sigmas[:-1]
    assert full.var_before == pytest.approx(1.0) and full.var_after == pytest.approx(full.sigmas[-1] ** 2)
    assert (full.stopped, full.stopped_at, full.method) == (None, None, "sift")
    # alpha between the first two n * sigma_n: exactly one step, recorded as where it stopped
    lo, hi = full.sigmas[0], 2 * full.sigmas[1]
    assert lo < hi
    alpha = 2 / (lo + hi)
    stopped = ttt_prompt(host, tokenizer, memory, embedder, "p1", "the quick brown fox", CONTINUATION,
                          PromptTTT(select="sift", n=3, k=7, lam=1e-2, adaptive=alpha))
    assert (stopped.stopped, stopped.stopped_at, stopped.steps) == ("adaptive", 1, 1)
    assert stopped.picks == full.picks[:1] and stopped.method == "sift-adaptive"
    assert stopped.sigma_before == pytest.approx([1.0]) and stopped.sigma_after == full.sigmas[:1]
    record = stopped.to_json()
    for key in ("sigma_before", "sigma_after", "var_before", "var_after", "stopped_at", "method"):
        assert key in record
    none = ttt_prompt(host, tokenizer, memory, embedder, "p1", "x", CONTINUATION, PromptTTT(select="none"))
    assert (none.var_before, none.var_after, none.sigma_before, none.method) == (None, None, [], "none")


def test_uncertainty_sampling_ignores_the_prompt():
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    query = embedder.embed(["the quick brown fox"])[0]
    us = select_chunks(query, memory.embeddings, PromptTTT(select="us", n=3, k=7), seed=0)
    nn = select_chunks(query, memory.embeddings, PromptTTT(select="nn", n=3, k=7), seed=0)
    # NN takes the three copies of the continuation; US, blind to the prompt, takes three different chunks
    # (each unlike the picks before it), so at most one copy, and the same ones for any other prompt
    assert nn.indices == [0, 1, 2]
    assert len(set(us.indices)) == 3 and len(set(us.indices) & {0, 1, 2}) <= 1
    other = embedder.embed(["kkk jjj"])[0]
    assert select_chunks(other, memory.embeddings, PromptTTT(select="us", n=3, k=7), seed=0).indices == us.indices


def test_stopping_rules_apply_to_sift_only():
    from testtime.config import problems

    found = {p.field: p.message for p in problems(PromptTTT(select="nn", adaptive=1.0, min_gain=0.1))}
    assert "applies to --select sift only" in found["adaptive"] and "min_gain" in found
    assert "positive" in {p.field: p.message for p in problems(PromptTTT(adaptive=-1.0))}["adaptive"]
    assert problems(PromptTTT(select="sift", adaptive=0.5)) == []


def test_a_traced_sift_run_gives_each_adaptive_runs_bits_at_its_step(tokenizer):
    """--trace: bits after 0..n steps; adaptive SIFT at any alpha takes a prefix of the picks, so its bits
    are the trace's at its step count (what `compare.adaptive_curve` reads)."""
    host = host_for(tokenizer)
    embedder = LetterEmbedder()
    memory = ListMemory(MEMORY, embedder)
    ask = "the quick brown fox"
    traced = ttt_prompt(host, tokenizer, memory, embedder, "p1", ask, CONTINUATION,
                        PromptTTT(select="sift", n=4, k=7, lam=1e-2, lr=3e-2, trace=True))
    none = ttt_prompt(host, tokenizer, memory, embedder, "p1", ask, CONTINUATION, PromptTTT(select="none"))
    assert len(traced.bits_at_step) == traced.steps + 1 == 5
    assert traced.bits_at_step[-1] == traced.bits and traced.bits_at_step[0] == pytest.approx(none.bits, rel=1e-5)
    assert len(set(traced.bits_at_step)) == 5  # every step moved the bits
    plain = ttt_prompt(host, tokenizer, memory, embedder, "p1", ask, CONTINUATION,
                       PromptTTT(select="sift", n=4, k=7, lam=1e-2, lr=3e-2))
    assert plain.bits == traced.bits and plain.bits_at_step is None  # tracing changes nothing it measures
    for m in (1, 2, 3):  # alpha between m * sigma_m and (m + 1) * sigma_{m+1}: exactly m steps
        lo, hi = m * traced.sigmas[m - 1], (m + 1) * traced.sigmas[m]
        adaptive = ttt_prompt(host, tokenizer, memory, embedder, "p1", ask, CONTINUATION,
                              PromptTTT(select="sift", n=4, k=7, lam=1e-2, lr=3e-2, adaptive=2 / (lo + hi)))
        assert adaptive.steps == m and adaptive.bits == pytest.approx(traced.bits_at_step[m], rel=1e-6)
    assert none.bits_at_step is None
