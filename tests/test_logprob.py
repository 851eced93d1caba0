"""The labelled tokens' log-probability: every caller against a hand computation, batching against one at a time."""

from __future__ import annotations

import math

import pytest
import torch

import testtime.logprob as logprob
from helpers import make_tiny_model
from testtime.arc.likelihood import score_answers
from testtime.batching import IGNORE_INDEX, TrainingSequence, collate, labelled_tokens
from testtime.finetune import evaluate_loss, labelled_loss
from testtime.lm.bpb import sequence_bits
from testtime.logprob import eval_mode, labelled_logprob, sequence_logprobs

VOCAB = 97
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(vocab_size=VOCAB, seed=5)


def sequences() -> list[TrainingSequence]:
    """Four lengths, each with its answer at the end (as ARC rows and LM continuations are labelled)."""
    g = torch.Generator().manual_seed(2)
    out = []
    for n, answer in ((23, 6), (9, 8), (31, 17), (16, 1)):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        out.append(TrainingSequence(ids, [IGNORE_INDEX] * (n - answer) + ids[n - answer:]))
    return out


def by_hand(model, seq: TrainingSequence) -> float:
    """sum log p(labelled token | tokens before it), one unpadded forward, the head everywhere, float64."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([seq.input_ids])).logits[0].double(), dim=-1)  # (T, V)
    return sum(float(logp[t - 1, tok]) for t, tok in enumerate(seq.labels) if t > 0 and tok != IGNORE_INDEX)


def test_the_four_callers_agree_with_the_hand_computation(model):
    seqs = sequences()
    hand = [by_hand(model, s) for s in seqs]
    n_labelled = sum(labelled_tokens(s) for s in seqs)
    with torch.no_grad():
        train_loss = labelled_loss(model, *collate(seqs, 0, CPU)).item()  # one padded batch
    assert train_loss == pytest.approx(-sum(hand), rel=1e-5)
    assert evaluate_loss(model, seqs, batch_size=3) == pytest.approx(-sum(hand) / n_labelled, rel=1e-5)
    rows = [(s.input_ids, labelled_tokens(s)) for s in seqs]
    assert score_answers(model, rows, batch_size=3) == pytest.approx(hand, rel=1e-5)
    assert [sequence_bits(model, s) for s in seqs] == pytest.approx([-h / math.log(2) for h in hand], rel=1e-5)


def test_a_padded_batch_gives_each_sequence_the_sum_it_has_alone(model):
    seqs = sequences()
    alone = [sequence_logprobs(model, [s])[0] for s in seqs]
    assert sequence_logprobs(model, seqs, batch_size=3) == pytest.approx(alone, rel=1e-6)  # sorted, two batches
    with torch.no_grad():
        batch = collate(seqs, 0, CPU)
        rows, total = labelled_logprob(model, *batch, per_row=True), labelled_logprob(model, *batch)
    assert rows.dtype == torch.float64 and total.dtype == torch.float32 and total.dim() == 0
    assert rows.tolist() == pytest.approx(alone, rel=1e-6)
    assert total.item() == pytest.approx(sum(alone), rel=1e-6)
    assert sequence_logprobs(model, []) == []


def test_a_model_without_logits_to_keep_runs_the_head_everywhere_for_the_same_sums(model, monkeypatch):
    seqs = sequences()
    with torch.no_grad():
        batch = collate(seqs, 0, CPU)
        kept = labelled_logprob(model, *batch, per_row=True), labelled_logprob(model, *batch)
        seen = []
        hook = model.get_output_embeddings().register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].shape[:2]))
        monkeypatch.setattr(logprob, "takes_logits_to_keep", lambda _model: False)
        full = labelled_logprob(model, *batch, per_row=True), labelled_logprob(model, *batch)
        hook.remove()
    assert seen == [batch[0].shape] * 2  # every position of every row
    assert full[0].tolist() == pytest.approx(kept[0].tolist(), rel=1e-6)
    assert full[1].item() == pytest.approx(kept[1].item(), rel=1e-6)


def test_over_a_bf16_base_the_sums_read_float32_logits_and_the_mode_is_restored():
    model = make_tiny_model(vocab_size=VOCAB, seed=5).to(torch.bfloat16)
    model.requires_grad_(False)  # frozen, as the base under a LoRA is: only then is the head copied to float32
    dtypes = []
    model.get_output_embeddings().register_forward_hook(lambda _m, _inp, out: dtypes.append(out.dtype))
    model.train()
    sums = sequence_logprobs(model, sequences(), batch_size=2)
    assert model.training and dtypes == [torch.float32] * 2  # the head's float32 copy, not bf16 logits cast up
    assert all(math.isfinite(s) and s < 0 for s in sums)
    with eval_mode(model):
        assert not model.training
    assert model.training
