"""Test-time-training data: leave-one-out items, fitting to max_len, no test leaks, dedup, budget."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testtime.arc.format import TokenCounter, format_answer, format_prompt, grid_to_text, parse_answer, text_to_grid
from testtime.arc.settings import TTTArgs
from testtime.arc.task import Example, Task, as_grid, grids_equal
from testtime.arc.transforms import parse_transform
from testtime.arc.ttt_data import build_ttt_data, end_to_end, fit_demos, leave_one_out, leave_two_out
from testtime.batching import IGNORE_INDEX


def _random_grid(rng: np.random.Generator, rows: int, cols: int, colors: int = 9) -> np.ndarray:
    return as_grid(rng.integers(0, colors, (rows, cols)).tolist())


def _task(n: int = 4, side: int = 3, seed: int = 0, test: tuple[Example, ...] = ()) -> Task:
    """n demos of side x side grids with colours 0-8 (9 never appears)."""
    rng = np.random.default_rng(seed)
    train = tuple(Example(_random_grid(rng, side, side), _random_grid(rng, side, side)) for _ in range(n))
    return Task(id=f"t{seed}", train=train, test=test)


@pytest.fixture(scope="module")
def counter(tokenizer):
    return TokenCounter(tokenizer)


def _answer_text(tokenizer, input_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, lab in zip(input_ids, labels) if lab != IGNORE_INDEX])


# --- items --------------------------------------------------------------------------------------

def test_leave_one_out_makes_every_demo_the_query_once():
    task = _task(n=4)
    items = leave_one_out(task)
    assert len(items) == 4
    for i, (context, query) in enumerate(items):
        assert query is task.train[i]
        others = [ex for j, ex in enumerate(task.train) if j != i]
        assert len(context) == 3 and all(a is b for a, b in zip(context, others))
    assert leave_one_out(_task(n=1)) == []


def test_end_to_end_is_each_demo_alone():
    task = _task(n=3)
    items = end_to_end(task)
    assert len(items) == 3
    assert all(context == () and query is ex for (context, query), ex in zip(items, task.train))


# --- sequences ------------------------------------------------------------------------------

def test_untransformed_sequences_decode_to_prompt_plus_answer(tokenizer):
    task = _task(n=3)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=6))
    assert data.transforms[:3] == ["identity"] * 3
    for seq, origin in zip(data.sequences[:3], data.origins[:3]):
        context, query = leave_one_out(task)[origin.item]
        expected = format_prompt(context, query.input) + format_answer(query.output)
        assert tokenizer.decode(seq.input_ids) == expected
        assert _answer_text(tokenizer, seq.input_ids, seq.labels) == format_answer(query.output)
    assert data.fits and data.fallback is None and data.n_dropped_demos == 0
    assert data.tokens == sum(len(s.input_ids) for s in data.sequences)


def test_transformed_answers_map_back_to_the_query_output(tokenizer):
    task = _task(n=4, seed=3)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=24))
    assert len(set(data.transforms)) > 10  # really transformed
    for seq, name, origin in zip(data.sequences, data.transforms, data.origins):
        inverse = parse_transform(name).inverse()
        answer = parse_answer(_answer_text(tokenizer, seq.input_ids, seq.labels))
        query = data.items[origin.item][1]
        assert grids_equal(inverse.grid(answer), query.output)
        # the last input grid of the prompt is the query's input, in the same frame
        text = tokenizer.decode(seq.input_ids)
        last_input = text.rsplit("input\n", 1)[1].split("\noutput\n", 1)[0]
        assert grids_equal(inverse.grid(text_to_grid(last_input)), query.input)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 4), seed=st.integers(0, 10_000), rows=st.integers(1, 5), cols=st.integers(1, 5))
def test_every_sequence_inverts_to_a_train_demo(tokenizer, n, seed, rows, cols):
    rng = np.random.default_rng(seed)
    train = tuple(Example(_random_grid(rng, rows, cols), _random_grid(rng, cols, rows)) for _ in range(n))
    task = Task(id="h", train=train, test=())
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=6, seed=seed, formats="both"))
    assert data.sequences and len(data.sequences) <= 6
    for seq, name, origin in zip(data.sequences, data.transforms, data.origins):
        answer = parse_answer(_answer_text(tokenizer, seq.input_ids, seq.labels))
        assert grids_equal(parse_transform(name).inverse().grid(answer), data.items[origin.item][1].output)


def test_loss_on_outputs_labels_the_demo_outputs_after_the_first(tokenizer):
    task = _task(n=3)
    answer_only = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=3))
    outputs = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=3, loss_on="outputs"))
    for a, b, origin in zip(answer_only.sequences, outputs.sequences, outputs.origins, strict=True):
        assert a.input_ids == b.input_ids
        n_a = sum(lab != IGNORE_INDEX for lab in a.labels)
        n_b = sum(lab != IGNORE_INDEX for lab in b.labels)
        assert n_b == n_a * 2  # 3x3 grids: the query answer and the second context output, not the first
        context, query = outputs.items[origin.item]
        assert _answer_text(tokenizer, b.input_ids, b.labels) == format_answer(context[1].output) + format_answer(
            query.output)


# --- the test split is never read -------------------------------------------------------------

def _contains(haystack: list[int], needle: list[int]) -> bool:
    return any(haystack[i:i + len(needle)] == needle for i in range(len(haystack) - len(needle) + 1))


def test_no_test_output_or_input_reaches_the_sequences(tokenizer):
    # 6x6 grids full of colour 9: train grids are 3x3 with colours 0-8, so even a colour
    # permutation cannot produce these token runs from train data
    secret_out = as_grid([[9, 9, 9, 9, 9, 9]] * 6)
    secret_in = as_grid([[9, 0, 9, 0, 9, 0]] * 6)
    task = _task(n=3, test=(Example(secret_in, secret_out),))
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=30, keep_zero=False))
    assert len(data.sequences) == 30
    for grid in (secret_out, secret_in):
        run = tokenizer(grid_to_text(grid), add_special_tokens=False)["input_ids"]
        assert not any(_contains(s.input_ids, run) for s in data.sequences)
    without_test = build_ttt_data(Task(id=task.id, train=task.train, test=()), tokenizer,
                                  TTTArgs(n_sequences=30, keep_zero=False))
    assert [s.input_ids for s in without_test.sequences] == [s.input_ids for s in data.sequences]


# --- fitting -------------------------------------------------------------------------------

def test_max_len_just_below_full_drops_demos_keeps_query(tokenizer, counter):
    task = _task(n=4)
    full = counter.sequence(task.train[1:], task.train[0].input, task.train[0].output)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=16, max_len=full - 1))
    assert len(data.sequences) == 16
    assert all(len(s.input_ids) <= full - 1 for s in data.sequences)
    assert all(o.n_demos == 2 for o in data.origins)  # square grids: every item is `full` long
    assert data.n_dropped_demos == 16 and data.fits and data.fallback is None
    for seq, name, origin in zip(data.sequences, data.transforms, data.origins):
        answer = parse_answer(_answer_text(tokenizer, seq.input_ids, seq.labels))
        assert grids_equal(parse_transform(name).inverse().grid(answer), data.items[origin.item][1].output)


def test_fit_demos_never_needs_the_tokenizer_and_respects_reserve(counter):
    task = _task(n=4)
    demos, query = task.train[1:], task.train[0]
    rng = np.random.default_rng(0)
    full = counter.sequence(demos, query.input, query.output)
    assert fit_demos(demos, query.input, query.output, counter, full, rng) == demos
    prompt = counter.prompt(demos, query.input)
    assert fit_demos(demos, query.input, None, counter, prompt + 5, rng, reserve=5) == demos
    kept = fit_demos(demos, query.input, None, counter, prompt + 4, rng, reserve=5)
    assert kept is not None and len(kept) == 2
    assert list(kept) == [d for d in demos if any(d is k for k in kept)]  # order kept


def test_fit_demos_none_only_when_impossible(counter):
    rng = np.random.default_rng(0)
    small = Example(as_grid([[1]]), as_grid([[2]]))
    big = Example(as_grid([[1] * 10] * 10), as_grid([[2] * 10] * 10))
    query = as_grid([[3]])
    limit = counter.sequence([small], query, query)
    for seed in range(20):  # random drops may remove `small` first; the result must still fit
        kept = fit_demos([big, big, small, big], query, query, counter, limit, np.random.default_rng(seed))
        assert kept == (small,)
    assert fit_demos([big, big], query, query, counter, limit, rng) is None
    assert fit_demos([big], query, query, counter, limit, rng, min_demos=0) == ()
    assert fit_demos([small], query, query, counter, counter.sequence([], query, query) - 1, rng,
                     min_demos=0) is None


def test_nothing_fits_gives_no_sequences_quickly(tokenizer, counter):
    task = _task(n=3, side=8)
    alone = counter.sequence([], task.train[0].input, task.train[0].output)
    start = time.perf_counter()
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=64, max_len=alone - 1))
    assert time.perf_counter() - start < 2.0
    assert data.sequences == [] and data.tokens == 0
    assert not data.fits and data.fallback == "skip-ttt"


def test_icl_too_long_falls_back_to_end_to_end(tokenizer, counter):
    task = _task(n=3, side=6)
    alone = counter.sequence([], task.train[0].input, task.train[0].output)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=10, max_len=alone + 5))
    assert not data.fits and data.fallback == "e2e"
    assert data.sequences and all(o.n_demos == 0 for o in data.origins)
    assert all(len(s.input_ids) <= alone + 5 for s in data.sequences)


def test_items_that_cannot_fit_are_left_out(tokenizer, counter):
    small = _task(n=3, side=2).train
    rng = np.random.default_rng(1)
    huge = Example(_random_grid(rng, 12, 12), _random_grid(rng, 12, 12))
    task = Task(id="p", train=(*small, huge), test=())
    limit = counter.sequence(small[:2], small[2].input, small[2].output)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=12, max_len=limit))
    assert not data.fits and data.fallback == "partial"
    assert len(data.items) == 3 and all(query is not huge for _, query in data.items)
    assert all(len(s.input_ids) <= limit for s in data.sequences)


def test_single_demo_task_uses_end_to_end(tokenizer):
    task = _task(n=1)
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=5))
    assert len(data.items) == 1 and data.items[0][0] == () and data.items[0][1] is task.train[0]
    assert data.fits and data.fallback is None and len(data.sequences) == 5
    assert data.format_counts == {"e2e": 5}


# --- budget, balance, dedup, determinism -----------------------------------------------------

def test_budget_and_round_robin(tokenizer):
    data = build_ttt_data(_task(n=4), tokenizer, TTTArgs(n_sequences=13))
    assert len(data.sequences) == 13
    per_query = np.bincount([o.item for o in data.origins], minlength=4)
    assert per_query.max() - per_query.min() <= 1
    both = build_ttt_data(_task(n=4), tokenizer, TTTArgs(n_sequences=16, formats="both"))
    assert both.format_counts == {"icl": 8, "e2e": 8}


def test_duplicates_are_dropped_and_the_loop_is_bounded(tokenizer):
    zero = Example(as_grid([[0]]), as_grid([[0]]))
    data = build_ttt_data(Task(id="z", train=(zero, zero), test=()), tokenizer, TTTArgs(n_sequences=64))
    assert len(data.sequences) == 1  # every transform of this task gives the same text
    data = build_ttt_data(_task(n=3, side=2), tokenizer, TTTArgs(n_sequences=40))
    assert len({tuple(s.input_ids) for s in data.sequences}) == len(data.sequences) == 40


def test_same_seed_same_data_other_seed_other_data(tokenizer):
    task = _task(n=4)
    a = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=12, seed=1))
    b = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=12, seed=1))
    c = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=12, seed=2))
    assert [s.input_ids for s in a.sequences] == [s.input_ids for s in b.sequences]
    assert a.transforms == b.transforms
    assert a.transforms != c.transforms
    assert [s.input_ids for s in a.sequences] != [s.input_ids for s in c.sequences]


def test_bad_args_are_named():
    with pytest.raises(ValueError, match="n_sequences.*max_len"):
        build_ttt_data(_task(n=2), None, TTTArgs(n_sequences=-1, max_len=0), counter=object())


# --- leave-two-out top-up and size augmentations -------------------------------------------------

def test_leave_two_out_items_drop_the_query_and_one_other_demo():
    task = _task(n=4)
    items = leave_two_out(task)
    assert len(items) == 12
    for context, query in items:
        assert len(context) == 2 and all(ex is not query for ex in context)
        order = [next(k for k, d in enumerate(task.train) if d is ex) for ex in context]
        assert order == sorted(order)
    assert {(q is task.train[0], len({id(ex) for ex in c})) for c, q in items} == {(True, 2), (False, 2)}
    assert leave_two_out(_task(n=2)) == []


def _inverts(tokenizer, data) -> bool:
    for seq, name, origin in zip(data.sequences, data.transforms, data.origins, strict=True):
        answer = parse_answer(_answer_text(tokenizer, seq.input_ids, seq.labels))
        if not grids_equal(parse_transform(name).inverse().grid(answer), data.items[origin.item][1].output):
            return False
    return True


def test_leave_two_out_tops_up_only_what_leave_one_out_cannot_fill(tokenizer):
    task = _task(n=3)  # 3 leave-one-out items x 8 symmetries = 24 < 40
    data = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=40, leave_two_out=True))
    assert (len(data.sequences), data.n_leave_one_out, data.n_leave_two_out) == (40, 3, 6)
    from_loo = [o for o in data.origins if o.item < 3]
    assert len(from_loo) == 24 and all(o.n_demos == 2 for o in from_loo)
    assert all(o.n_demos == 1 for o in data.origins if o.item >= 3)
    assert data.origins[24].item == 3 and data.transforms[24] == "identity"  # each new item first as it is
    assert _inverts(tokenizer, data)
    # no top-up when leave-one-out fills the budget, or when it is off
    enough = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=24, leave_two_out=True))
    assert enough.n_leave_two_out == 0 and all(o.item < 3 for o in enough.origins)
    off = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=40))
    assert off.n_leave_two_out == 0 and len(off.items) == 3
    # size changes multiply the augmentations: 3 x 8 x (1 + 3) = 96 >= 40, no top-up
    grown = build_ttt_data(task, tokenizer, TTTArgs(n_sequences=40, leave_two_out=True, augmentations=("upscale",)))
    assert grown.n_leave_two_out == 0
    assert TTTArgs(augmentations=("upscale", "tile")).n_augmentations() == 56


def _grids_of(tokenizer, seq) -> list[np.ndarray]:
    text = tokenizer.decode(seq.input_ids)
    blocks = [b.split("\n.")[0] for part in text.split("input\n")[1:] for b in part.split("\noutput\n")]
    return [text_to_grid(b) for b in blocks]


def test_size_augmentations_are_used_inverted_and_bounded(tokenizer):
    data = build_ttt_data(_task(n=3, side=3), tokenizer, TTTArgs(n_sequences=40, augmentations=("upscale", "tile")))
    names = "|".join(data.transforms)
    assert "upscale:" in names and "tile:" in names
    assert _inverts(tokenizer, data)
    upscaled = next(i for i, n in enumerate(data.transforms) if "upscale:2x2" in n)
    assert all(g.shape in ((6, 6),) for g in _grids_of(tokenizer, data.sequences[upscaled]))
    # 15x15 grids may double (30 fits); 16x16 ones may not, so no size change is ever drawn for them
    edge = build_ttt_data(_task(n=3, side=15), tokenizer, TTTArgs(n_sequences=12, augmentations=("upscale",)))
    assert any("upscale" in n for n in edge.transforms)
    too_big = build_ttt_data(_task(n=3, side=16), tokenizer, TTTArgs(n_sequences=12, augmentations=("upscale", "tile")))
    assert len(too_big.sequences) == 12 and not any("upscale" in n or "tile" in n for n in too_big.transforms)
    for data in (edge, too_big):
        assert all(max(g.shape) <= 30 for s in data.sequences for g in _grids_of(tokenizer, s))


def _resized(name: str) -> bool:
    return any(kind in name for kind in ("upscale:", "tile:"))


@pytest.mark.parametrize("prob", [0.2, 0.7])
def test_a_size_change_is_drawn_with_the_set_probability(prob):
    from testtime.arc.transforms import EXTRA_AUGMENTATIONS, Compose, random_transform
    from testtime.arc.ttt_data import with_size_change

    extras = [r for family in EXTRA_AUGMENTATIONS.values() for r in family]  # 6 changes, all fit 3x3 grids
    item = Task("i", _task(n=3).train[:2], _task(n=3).train[2:])
    rng = np.random.default_rng(1)
    drawn = [with_size_change(random_transform(rng, 2), extras, item, rng, prob) for _ in range(2000)]
    changed = [t for t in drawn if isinstance(t, Compose) and t.parts[-1] in extras]
    assert len(changed) / len(drawn) == pytest.approx(prob, abs=0.035)  # 3.4 sigma of 2000 draws at p=0.5
    assert {t.parts[-1] for t in changed} == set(extras)  # every change is reachable
    assert all(len(t.parts) == 3 for t in drawn if t not in changed)  # geometric|colors|order, nothing added


def test_size_probability_zero_and_one_are_exact(tokenizer):
    task = _task(n=3, side=3)  # 3x3 grids: every change fits, so p=1 must resize every augmented sequence
    args = TTTArgs(n_sequences=40, augmentations=("upscale", "tile"))
    never = build_ttt_data(task, tokenizer, TTTArgs(**{**vars(args), "size_augment_prob": 0.0}))
    always = build_ttt_data(task, tokenizer, TTTArgs(**{**vars(args), "size_augment_prob": 1.0}))
    for data in (never, always):
        assert len(data.sequences) == 40 and data.transforms[:3] == ["identity"] * 3  # each item first as it is
        assert _inverts(tokenizer, data)
    assert not any(_resized(n) for n in never.transforms)
    assert all(_resized(n) for n in always.transforms[3:])
    # the default is the authors' one in two: about half of the augmented sequences
    half = build_ttt_data(task, tokenizer, args)
    assert 0.25 < sum(_resized(n) for n in half.transforms[3:]) / 37 < 0.75
    assert TTTArgs().size_augment_prob == 0.5


def test_unknown_augmentations_are_named():
    from testtime.config import problems

    assert [p.field for p in problems(TTTArgs(augmentations=("upscale", "warp")))] == ["augmentations"]
    for bad in (-0.1, 1.5, float("nan")):
        assert [p.field for p in problems(TTTArgs(size_augment_prob=bad))] == ["size_augment_prob"]
