"""The fast greedy decoder gives the same tokens and log-probabilities as `model.generate`."""

from __future__ import annotations

import torch

from helpers import make_tiny_model
from testtime.decode import greedy


def reference(model, prompts, max_new_tokens, pad_id):
    """`generate`'s greedy search with the default (growing) cache, left padded: tokens and log p per row."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id)
    mask = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        mask[row, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                         min_new_tokens=max_new_tokens, pad_token_id=pad_id, output_logits=True,
                         return_dict_in_generate=True)
    new = out.sequences[:, width:]
    logp = torch.stack([s.log_softmax(-1).gather(-1, new[:, i:i + 1])[:, 0] for i, s in enumerate(out.logits)], 1)
    return new.tolist(), logp.tolist()


def prompts_of_lengths(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def test_same_tokens_and_logprobs_as_generate_with_left_padding():
    model = make_tiny_model(vocab_size=512, seed=3)
    prompts = prompts_of_lengths([7, 19, 12, 3], 512)
    ref_tokens, ref_logp = reference(model, prompts, 24, pad_id=2)
    got = greedy(model, prompts, max_new_tokens=24, pad_id=2)
    assert [d.token_ids for d in got] == ref_tokens
    for d, lp in zip(got, ref_logp, strict=True):
        assert torch.allclose(torch.tensor(d.logprobs), torch.tensor(lp), atol=1e-5)


def test_rows_that_stop_leave_the_batch_and_the_others_are_unchanged():
    model = make_tiny_model(vocab_size=512, seed=4)
    prompts = prompts_of_lengths([5, 9, 14, 8, 11], 512, seed=1)
    full = greedy(model, prompts, max_new_tokens=20, pad_id=2)
    ends = {0: 3, 2: 1, 3: 12}  # row -> the step (1-based) after which the rule says done
    seen: dict[int, int] = {}
    asked: list[list[int]] = []

    def stop(rows, tokens):
        asked.append(list(rows))
        out = []
        for r in rows:
            seen[r] = seen.get(r, 0) + 1
            out.append(ends.get(r) == seen[r])
        return out

    got = greedy(model, prompts, max_new_tokens=20, pad_id=2, stop=stop)
    for r, d in enumerate(got):
        n = ends.get(r, 20)
        assert d.token_ids == full[r].token_ids[:n], r
        assert torch.allclose(torch.tensor(d.logprobs), torch.tensor(full[r].logprobs[:n]), atol=1e-5)
    assert asked[0] == [0, 1, 2, 3, 4]
    assert asked[1] == [0, 1, 3, 4]          # row 2 left after step 1
    assert asked[3] == [1, 3, 4]             # row 0 left after step 3
    assert asked[-1] == [1, 4] and len(asked) == 20


def test_a_stop_rule_that_ends_every_row_ends_the_decoding():
    model = make_tiny_model(vocab_size=256, seed=5)
    calls = []
    got = greedy(model, prompts_of_lengths([4, 6], 256), max_new_tokens=50, pad_id=2,
                 stop=lambda rows, tokens: calls.append(rows) or [True] * len(rows))
    assert len(calls) == 1 and [len(d.token_ids) for d in got] == [1, 1]


def test_nothing_to_decode():
    assert greedy(None, [], max_new_tokens=5, pad_id=0) == []
    model = make_tiny_model(vocab_size=128)
    assert [d.token_ids for d in greedy(model, [[5, 6]], max_new_tokens=0, pad_id=2)] == [[]]
