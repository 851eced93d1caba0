"""Augmented inference: transforms, batched greedy decoding, early stop, mapping answers back.

The mapping test uses a tiny Llama trained (full parameters, ~40 steps) to answer every prompt
with the fixed grid [[1, 2]]: under transform t that answer is in t's frame, so each candidate
must be t.inverse() of it, which differs per symmetry (rot90 vs rot270 catches forward/inverse
mix-ups) and per colour permutation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import arc_model_answering, make_tiny_model, two_demo_task
from helpers import grid as g  # tests/ is on sys.path under pytest
from testtime.arc.decoding import AnswerShape, generate
from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, encode, format_answer
from testtime.arc.predict import (
    InferArgs,
    end_token_id,
    inference_transforms,
    predict_task,
    predict_test,
)
from testtime.arc.task import Example, Task, grids_equal
from testtime.arc.transforms import (
    GEOMETRIC_NAMES,
    ColorPermutation,
    Compose,
    DemoOrder,
    geometric_part,
    parse_transform,
)
from testtime.config import problems

VOCAB = 8192  # every id the ARC format uses (digits, "\n", ".", "input", "output") is below 5000
ANSWER = np.array([[1, 2]], dtype=np.int8)


TASK = two_demo_task("identity")


@pytest.fixture(scope="module")
def counter(tokenizer):
    return TokenCounter(tokenizer)


@pytest.fixture(scope="module")
def fixed_model(tokenizer):
    """A tiny Llama that answers [[1, 2]] to any prompt of TASK's kind, whatever the transform."""
    model, stats = arc_model_answering(tokenizer, TASK, (ANSWER,), vocab_size=VOCAB, prompts=32, steps=40)
    assert stats.losses[-1] < 0.05
    return model


@pytest.fixture(scope="module")
def random_model():
    return make_tiny_model(vocab_size=VOCAB, seed=1)


# --- transforms and arguments -------------------------------------------------------------------

def test_inference_transforms_cover_the_symmetries_with_shuffled_orders():
    plain = inference_transforms(InferArgs(demo_order=False), 3, np.random.default_rng(0))
    assert [t.name for t in plain] == list(GEOMETRIC_NAMES)

    colored = inference_transforms(InferArgs(transforms="geometric+color", n_color=2), 3, np.random.default_rng(0))
    assert len(colored) == 24
    assert [geometric_part(t).name for t in colored] == [name for name in GEOMETRIC_NAMES for _ in range(3)]
    for i, t in enumerate(colored):
        leaves = t.parts if isinstance(t, Compose) else (t,)
        perms = [p.perm for p in leaves if isinstance(p, ColorPermutation)]
        assert len(perms) == (0 if i % 3 == 0 else 1)  # the plain symmetry first, then its colourings
        assert all(perm[0] == 0 for perm in perms)
        orders = [p.order for p in leaves if isinstance(p, DemoOrder)]
        assert all(sorted(order) == [0, 1, 2] for order in orders)
    names = [t.name for t in colored]
    assert names == [t.name for t in inference_transforms(InferArgs(transforms="geometric+color", n_color=2), 3,
                                                          np.random.default_rng(0))]
    assert any("order:" in name for name in names)


def test_infer_args_name_every_bad_field():
    from testtime.config import ConfigError, validate

    found = {p.field: p.message for p in problems(InferArgs(transforms="colour", batch_size=0))}  # type: ignore[arg-type]
    assert found == {"transforms": "must be one of geometric, geometric+color, not 'colour'",
                     "batch_size": "must be at least 1, not 0"}
    with pytest.raises(ConfigError, match="^transforms must be one of .*; batch_size must be at least 1, not 0$"):
        validate(InferArgs(transforms="colour", batch_size=0))  # type: ignore[arg-type]


def test_end_token_is_the_end_marker(tokenizer):
    stop = end_token_id(tokenizer)
    assert tokenizer.decode([stop]) == DEFAULT_FORMAT.end_marker
    with pytest.raises(ValueError, match="end marker"):
        end_token_id(tokenizer, TextFormat(end_marker="<answer-ends-here>"))


# --- the early-stop criterion -------------------------------------------------------------------

def char_ids(tokenizer, text: str) -> list[int]:
    """One token per character (digits, newline, ".", letters are single tokens in SmolLM2)."""
    ids = [tokenizer(ch, add_special_tokens=False)["input_ids"] for ch in text]
    assert all(len(i) == 1 for i in ids)
    return [i[0] for i in ids]


def run_shape(tokenizer, texts: list[str]) -> AnswerShape:
    """Feed the texts, one row each, one token per step, padding rows that are done (as generate does)."""
    stop = end_token_id(tokenizer)
    rows = [char_ids(tokenizer, text) for text in texts]
    shape = AnswerShape(tokenizer, len(rows), stop)
    seen = torch.zeros((len(rows), 1), dtype=torch.long)
    for step in range(max(len(r) for r in rows)):
        done = [n is not None for n in shape.length]
        column = [[stop if d or step >= len(r) else r[step]] for r, d in zip(rows, done, strict=True)]
        seen = torch.cat([seen, torch.tensor(column)], dim=1)
        flags = shape(seen, None)
        assert flags.tolist() == [n is not None for n in shape.length]
    return shape


def test_answer_shape_stops_each_row_where_it_stops_being_an_answer(tokenizer):
    cases = {  # text -> (tokens when its row ends, reached the end marker)
        "12\n34\n.": (7, True),
        "1234a56": (5, False),  # a letter
        "1" * 31: (31, False),  # a row of 31 cells
        "1\n" * 30 + "1": (61, False),  # a 31st row
        "\n" * 40: (31, False),  # blank lines forever
        "12\n345": (6, False),  # a row longer than the first
        "12\n3\n45": (5, False),  # a row shorter than the first
        "1\n" * 30 + ".": (61, True),  # 30 rows is fine
    }
    shape = run_shape(tokenizer, list(cases))
    assert list(zip(shape.length, shape.stopped, strict=True)) == list(cases.values())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 30), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_answer_shape_never_stops_a_valid_answer_early(tokenizer, rows, cols, seed):
    grid = np.random.default_rng(seed).integers(0, 10, (rows, cols)).astype(np.int8)
    text = format_answer(grid)
    shape = run_shape(tokenizer, [text])
    assert shape.length == [len(text)] and shape.stopped == [True]


# --- decoding -------------------------------------------------------------------------------------

def some_prompts(tokenizer) -> list[list[int]]:
    """Prompts of different lengths: several demo subsets and queries."""
    out = []
    for demos in (TASK.train, TASK.train[:1], TASK.train[1:], TASK.train * 2):
        for ex in TASK.test:
            out.append(encode(tokenizer, demos, ex.input, None)[0])
    assert len({len(p) for p in out}) > 3
    return out


def test_batched_generation_equals_one_prompt_at_a_time(random_model, tokenizer):
    prompts = some_prompts(tokenizer)
    kwargs = dict(stop_id=end_token_id(tokenizer), max_new_tokens=12, check_answer=False)
    batched = generate(random_model, tokenizer, prompts, batch_size=3, **kwargs)
    alone = [generate(random_model, tokenizer, [p], batch_size=1, **kwargs)[0] for p in prompts]
    assert len(batched) == len(prompts)
    assert len({tuple(b.token_ids) for b in batched}) > 1  # the prompts really lead to different outputs
    for b, a in zip(batched, alone, strict=True):
        assert b.token_ids == a.token_ids
        assert b.text == tokenizer.decode(b.token_ids)
        assert b.logprob == pytest.approx(a.logprob, rel=1e-4, abs=1e-4)
        assert b.logprob <= 0.0


def test_early_stop_cuts_garbage_to_a_prefix(random_model, tokenizer):
    letters = char_ids(tokenizer, "the quick brown fox jumps over the lazy dog\n")  # single characters: ids < VOCAB
    prompts = [letters, *some_prompts(tokenizer)[:3]]
    kwargs = dict(stop_id=end_token_id(tokenizer), max_new_tokens=40, batch_size=4)
    checked = generate(random_model, tokenizer, prompts, **kwargs)
    full = generate(random_model, tokenizer, prompts, check_answer=False, **kwargs)
    for cut, whole in zip(checked, full, strict=True):
        assert not whole.stopped and len(whole.token_ids) == 40  # the random model never ends an answer
        assert not cut.stopped and len(cut.token_ids) < 40
        assert whole.token_ids[:len(cut.token_ids)] == cut.token_ids  # same greedy path, only cut
        assert cut.logprob <= 0.0 and cut.logprob >= whole.logprob


def test_generate_nothing():
    assert generate(None, None, [], stop_id=0, max_new_tokens=5, batch_size=2) == []


# --- prediction ---------------------------------------------------------------------------------

def test_predictions_map_back_to_the_original_frame(fixed_model, tokenizer, counter):
    args = InferArgs(transforms="geometric+color", n_color=1, batch_size=5)
    outcomes = predict_task(fixed_model, tokenizer, TASK, args, counter=counter)
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert (outcome.n_prompts, outcome.n_unparsed, outcome.n_unfit) == (16, 0, 0)
        assert outcome.seconds > 0
        assert sorted(c.group for c in outcome.candidates) == sorted(GEOMETRIC_NAMES * 2)
        for c in outcome.candidates:
            t = parse_transform(c.transform)
            assert grids_equal(t.grid(c.grid), ANSWER), c.transform  # the model's answer, in t's frame
            assert c.group == geometric_part(t).name
            assert -1.0 < c.logprob <= 0.0
        plain = {c.group: c.grid.tolist() for c in outcome.candidates if "colors" not in c.transform}
        # rot90 is counter-clockwise: the original-frame grid whose rot90 is [[1, 2]] is the column [1, 2]
        assert plain == {"identity": [[1, 2]], "rot90": [[1], [2]], "rot180": [[2, 1]], "rot270": [[2], [1]],
                         "flip_h": [[2, 1]], "flip_v": [[1, 2]], "transpose": [[1], [2]],
                         "antitranspose": [[2], [1]]}


def test_test_outputs_are_never_read(fixed_model, tokenizer, counter):
    solved = Task(id=TASK.id, train=TASK.train, test=(Example(TASK.test[0].input, g([[7, 7], [7, 7]])),))
    blind = Task(id=TASK.id, train=TASK.train, test=(Example(TASK.test[0].input),))
    transforms = inference_transforms(InferArgs(), len(TASK.train), np.random.default_rng(3))
    a = predict_test(fixed_model, tokenizer, solved, 0, transforms, InferArgs(), counter=counter)
    b = predict_test(fixed_model, tokenizer, blind, 0, transforms, InferArgs(), counter=counter)
    assert a.candidates == b.candidates and len(a.candidates) == 8


def test_a_prompt_that_cannot_fit_is_counted_not_decoded(random_model, tokenizer, counter):
    transforms = inference_transforms(InferArgs(), len(TASK.train), np.random.default_rng(0))

    def one_demo(t) -> int:  # the shortest prompt under t: its cheapest demo and test input 1
        moved = t.task(TASK)
        return min(counter.prompt([ex], moved.test[1].input) for ex in moved.train)

    shortest = [one_demo(t) for t in transforms]
    args = InferArgs(max_len=min(shortest) + 4, max_new_tokens=5)  # no room for 5 answer tokens
    outcome = predict_test(random_model, tokenizer, TASK, 1, transforms, args, counter=counter)
    assert (outcome.n_prompts, outcome.n_unfit, outcome.candidates) == (0, 8, [])

    roomy = InferArgs(max_len=max(shortest) + 5, max_new_tokens=5)
    outcome = predict_test(random_model, tokenizer, TASK, 1, transforms, roomy, counter=counter)
    assert (outcome.n_prompts, outcome.n_unfit) == (8, 0)
    assert outcome.n_unparsed == 8 - len(outcome.candidates)


def test_several_demo_orders_and_leave_one_out_prompts_each_give_a_kept_prediction(fixed_model, tokenizer, counter):
    args = InferArgs(orders=3, prompts="both", batch_size=8)
    outcomes = predict_task(fixed_model, tokenizer, TASK, args, counter=counter)
    n = len(TASK.train)
    for outcome in outcomes:
        assert outcome.n_prompts == 8 * (3 + n) and outcome.n_unfit == 0
        assert len(outcome.experts) == 8 * 3  # PoE views: the prompts with every demonstration
        kinds = {(c.prompt, c.order) for c in outcome.candidates}
        assert kinds <= {("all", k) for k in range(3)} | {(f"loo:{j}", 0) for j in range(n)}
        assert {p for p, _ in kinds} == {"all", "loo:0", "loo:1"}
        for c in outcome.candidates:
            t = parse_transform(c.transform)
            assert grids_equal(t.grid(c.grid), ANSWER), c.transform
            assert c.group == geometric_part(t).name and c.tokens == 4  # "1", "2", "\n", "."
    names = [t.name for t, _ in outcomes[0].experts]
    assert len(set(names)) > 8  # the orders differ (2 demos: both orders of each symmetry)


def test_the_leave_one_out_plan_leaves_every_demonstration_out_once_per_transform_and_order():
    from testtime.arc.predict import task_plan

    def plan(prompts: str, n_train: int = 3, **kw):
        return task_plan(InferArgs(prompts=prompts, orders=2, **kw), n_train, np.random.default_rng(7))

    loo = plan("leave-one-out")
    assert len(loo) == 8 * 3 * 2  # symmetries x left-out demo x orders
    for t, k, j in loo:
        assert j in (0, 1, 2) and k in (0, 1)
        orders = [p.order for p in (t.parts if isinstance(t, Compose) else (t,)) if isinstance(p, DemoOrder)]
        assert len(orders) <= 1 and all(sorted(o) == [0, 1] for o in orders)  # of the n-1 demos (compose drops
        # the identity order)
    for geo in GEOMETRIC_NAMES:  # per symmetry: each demo left out once in each order
        assert sorted((j, k) for t, k, j in loo if geometric_part(t).name == geo) == [
            (j, k) for j in range(3) for k in range(2)]
    full, both = plan("full"), plan("both")
    assert len(full) == 16 and all(j is None for _, _, j in full)
    assert [(t.name, k, j) for t, k, j in both[:16]] == [(t.name, k, j) for t, k, j in full]  # "both" adds to "full"
    assert sorted((k, j) for _, k, j in both[16:]) == sorted((k, j) for _, k, j in loo)
    # n-1 = 1 demo has one order; one demo has nothing to leave out, so its prompts stay full
    assert len(plan("leave-one-out", 2)) == 8 * 2 and {k for _, k, _ in plan("leave-one-out", 2)} == {0}
    assert [j for _, _, j in plan("leave-one-out", 1)] == [None] * 16


def test_leave_one_out_prompts_alone_predict_and_map_back(fixed_model, tokenizer, counter):
    outcomes = predict_task(fixed_model, tokenizer, TASK, InferArgs(prompts="leave-one-out"), counter=counter)
    for outcome in outcomes:
        assert outcome.n_prompts == 8 * 2 and outcome.n_unfit == 0
        assert outcome.candidates
        assert {c.prompt for c in outcome.candidates} <= {"loo:0", "loo:1"}
        for c in outcome.candidates:  # the answer in the prompt's frame, mapped back to the task's
            assert grids_equal(parse_transform(c.transform).grid(c.grid), ANSWER), c.transform
        assert len(outcome.experts) == 16  # PoE re-reads candidates under the prompts that made them
    assert {c.prompt for o in outcomes for c in o.candidates} == {"loo:0", "loo:1"}
    assert problems(InferArgs(prompts="some"))[0].field == "prompts"  # type: ignore[arg-type]


def test_a_leave_one_out_prompt_holds_the_other_demonstrations(tokenizer, counter):
    from testtime.arc.predict import _prompts
    from testtime.arc.transforms import Geometric

    three = Task("t3", train=(*TASK.train, Example(g([[9]]), g([[9]]))), test=TASK.test[:1])
    plan = [(Geometric("identity"), 0, None)] + [(DemoOrder((1, 0)), 0, j) for j in range(3)]
    prompts, unfit = _prompts(tokenizer, three, [0], plan, InferArgs(), counter, DEFAULT_FORMAT)
    assert unfit == {0: 0} and [p.label for p in prompts] == ["all", "loo:0", "loo:1", "loo:2"]
    from testtime.arc.format import format_prompt
    assert tokenizer.decode(prompts[0].token_ids) == format_prompt(three.train, three.test[0].input)
    for j, p in enumerate(prompts[1:]):
        others = [ex for k, ex in enumerate(three.train) if k != j]
        assert tokenizer.decode(p.token_ids) == format_prompt(others[::-1], three.test[0].input)


def test_infer_args_check_orders():
    assert {p.field for p in problems(InferArgs(orders=0, select="best"))} == {"orders", "select"}  # type: ignore[arg-type]
