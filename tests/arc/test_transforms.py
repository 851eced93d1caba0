"""Invertible augmentations: hand examples, the D4 group laws, inverse round trips, names."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from testtime.arc.task import Example, Task, as_grid
from testtime.arc.transforms import (
    GEOMETRIC_NAMES,
    ColorPermutation,
    Compose,
    DemoOrder,
    Geometric,
    compose,
    geometric_part,
    geometric_transforms,
    parse_transform,
    random_color_permutation,
    random_transform,
)

FAST = settings(max_examples=60, deadline=None)


@st.composite
def grids(draw, max_side: int = 30):
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    return draw(hnp.arrays(np.int8, shape, elements=st.integers(0, 9)))


@st.composite
def tasks(draw):
    """Small tasks: 1-4 train pairs, 1-2 test examples whose outputs may be absent."""
    small = grids(max_side=6)
    train = tuple(Example(draw(small), draw(small)) for _ in range(draw(st.integers(1, 4))))
    test = tuple(Example(draw(small), draw(st.none() | small)) for _ in range(draw(st.integers(1, 2))))
    return Task(id="t0", train=train, test=test)


def tasks_equal(a: Task, b: Task) -> bool:
    def same(x, y):
        return (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))

    pairs = list(zip(a.train, b.train)) + list(zip(a.test, b.test))
    return (a.id == b.id and len(a.train) == len(b.train) and len(a.test) == len(b.test)
            and all(same(x.input, y.input) and same(x.output, y.output) for x, y in pairs))


# 2 x 3 with distinct cells: no symmetry other than identity maps it to itself, so each of the
# 8 elements gives a different image.
PROBE = as_grid([[1, 2, 3], [4, 5, 6]])

HAND = {
    "identity": [[1, 2, 3], [4, 5, 6]],
    "rot90": [[3, 6], [2, 5], [1, 4]],  # counter-clockwise
    "rot180": [[6, 5, 4], [3, 2, 1]],
    "rot270": [[4, 1], [5, 2], [6, 3]],
    "flip_h": [[3, 2, 1], [6, 5, 4]],
    "flip_v": [[4, 5, 6], [1, 2, 3]],
    "transpose": [[1, 4], [2, 5], [3, 6]],
    "antitranspose": [[6, 3], [5, 2], [4, 1]],
}


# --- hand examples and shapes ----------------------------------------------------------------

@pytest.mark.parametrize("name", GEOMETRIC_NAMES)
def test_geometric_hand_examples(name):
    assert np.array_equal(Geometric(name).grid(PROBE), np.array(HAND[name]))


def test_rot90_square_hand_example():
    assert Geometric("rot90").grid(as_grid([[1, 2], [3, 4]])).tolist() == [[2, 4], [1, 3]]
    assert Geometric("antitranspose").grid(as_grid([[1, 2], [3, 4]])).tolist() == [[4, 2], [3, 1]]


@FAST
@given(grids())
def test_shapes(g):
    h, w = g.shape
    for t in geometric_transforms():
        swaps = t.name in ("rot90", "rot270", "transpose", "antitranspose")
        assert t.grid(g).shape == ((w, h) if swaps else (h, w)), t.name


# --- the group D4 ----------------------------------------------------------------------------

def test_geometric_transforms_are_the_eight_identity_first():
    ts = geometric_transforms()
    assert [t.name for t in ts] == list(GEOMETRIC_NAMES) and ts[0].is_identity
    images = {t.grid(PROBE).tobytes() + bytes(t.grid(PROBE).shape) for t in ts}
    assert len(images) == 8


@pytest.mark.parametrize("a", GEOMETRIC_NAMES)
@pytest.mark.parametrize("b", GEOMETRIC_NAMES)
def test_composition_table_matches_applying_in_sequence(a, b):
    first, second = Geometric(a), Geometric(b)
    applied = second.grid(first.grid(PROBE))
    matches = [t for t in geometric_transforms() if np.array_equal(t.grid(PROBE), applied)]
    assert len(matches) == 1  # closure: the composition is exactly one of the 8
    assert first.then(second) == matches[0]


@pytest.mark.parametrize("name", GEOMETRIC_NAMES)
def test_identity_and_inverses(name):
    t, e = Geometric(name), Geometric("identity")
    assert e.then(t) == t and t.then(e) == t
    assert t.then(t.inverse()) == e and t.inverse().then(t) == e
    expected = {"rot90": "rot270", "rot270": "rot90"}.get(name, name)
    assert t.inverse().name == expected


def test_then_is_associative():
    ts = geometric_transforms()
    for a in ts:
        for b in ts:
            for c in ts:
                assert a.then(b).then(c) == a.then(b.then(c))


# --- inverse round trips ---------------------------------------------------------------------

@FAST
@given(grids())
def test_geometric_inverse_round_trip(g):
    for t in geometric_transforms():
        assert np.array_equal(t.inverse().grid(t.grid(g)), g), t.name


@FAST
@given(grids(), st.permutations(range(10)))
def test_color_permutation_round_trip(g, perm):
    t = ColorPermutation(tuple(perm))
    out = t.grid(g)
    assert np.array_equal(out, np.array(perm)[g])  # perm[c] is the new colour of c
    assert np.array_equal(t.inverse().grid(out), g)


@FAST
@given(grids(), st.integers(0, 2**32 - 1), st.booleans())
def test_random_compose_round_trip(g, seed, keep_zero):
    t = random_transform(np.random.default_rng(seed), 3, keep_zero=keep_zero)
    assert np.array_equal(t.inverse().grid(t.grid(g)), g)
    nested = compose(t, Geometric("transpose"), random_color_permutation(np.random.default_rng(seed + 1)))
    assert np.array_equal(nested.inverse().grid(nested.grid(g)), g)


@FAST
@given(tasks(), st.integers(0, 2**32 - 1))
def test_task_round_trip(task, seed):
    t = random_transform(np.random.default_rng(seed), len(task.train))
    moved = t.task(task)
    assert moved.id == task.id
    assert [ex.output is None for ex in moved.test] == [ex.output is None for ex in task.test]
    assert tasks_equal(t.inverse().task(moved), task)


@FAST
@given(tasks(), st.integers(0, 2**32 - 1))
def test_demo_order_reorders_train_only(task, seed):
    order = DemoOrder(tuple(np.random.default_rng(seed).permutation(len(task.train))))
    moved = order.task(task)
    expected = Task(task.id, tuple(task.train[i] for i in order.order), task.test)
    assert tasks_equal(moved, expected)
    assert tasks_equal(order.inverse().task(moved), task)
    assert np.array_equal(order.grid(PROBE), PROBE)


def test_demo_order_inverse_hand_example():
    assert DemoOrder((2, 0, 1)).inverse() == DemoOrder((1, 2, 0))


def test_demo_order_wrong_length_raises():
    task = Task("t", (Example(PROBE, PROBE), Example(PROBE, PROBE)), (Example(PROBE),))
    with pytest.raises(ValueError, match="2 train examples"):
        DemoOrder((0, 1, 2)).task(task)
    with pytest.raises(ValueError, match=r"order must be a permutation of 0..n-1, got \(0, 0\)"):
        DemoOrder((0, 0))
    with pytest.raises(ValueError, match=r"order must be a permutation of 0..n-1, got \(1, 2\)"):
        DemoOrder((1, 2))


# --- outputs are fresh arrays ----------------------------------------------------------------

def _all_kinds():
    return [*geometric_transforms(), ColorPermutation(tuple(range(10))), DemoOrder((0,)),
            Compose(()), random_transform(np.random.default_rng(0), 1)]


@pytest.mark.parametrize("t", _all_kinds(), ids=lambda t: t.name or "empty")
def test_outputs_are_new_contiguous_int8(t):
    g = as_grid([[1, 2, 3], [4, 5, 6]])
    out = t.grid(g)
    assert out.dtype == np.int8 and out.flags.c_contiguous and not np.shares_memory(out, g)
    task = Task("t", (Example(g, g),), (Example(g),))
    ex = t.task(task)
    for grid in (ex.train[0].input, ex.train[0].output, ex.test[0].input):
        assert grid.dtype == np.int8 and grid.flags.c_contiguous and not np.shares_memory(grid, g)
    assert ex.test[0].output is None


# --- colours ---------------------------------------------------------------------------------

def test_keep_zero_keeps_zero_and_off_moves_it():
    kept = [random_color_permutation(np.random.default_rng(s), keep_zero=True) for s in range(50)]
    assert all(p.perm[0] == 0 for p in kept)
    assert all((p.grid(np.zeros((2, 2), np.int8)) == 0).all() for p in kept)
    free = [random_color_permutation(np.random.default_rng(s), keep_zero=False) for s in range(50)]
    assert any(p.perm[0] != 0 for p in free)
    assert len({p.perm for p in kept}) > 40  # actually random


@pytest.mark.parametrize("perm", [tuple(range(9)), (0,) * 10, tuple(range(1, 11)), (1, 0, *range(2, 9), 2)])
def test_bad_color_permutation_raises(perm):
    with pytest.raises(ValueError, match=re.escape(f"colour permutation must be a permutation of 0..9, got {perm!r}")):
        ColorPermutation(perm)


def test_color_permutation_inverse_hand_example():
    t = ColorPermutation((0, 9, 1, 8, 2, 7, 3, 6, 4, 5))
    assert t.name == "colors:0918273645"
    assert t.inverse().perm == (0, 2, 4, 6, 8, 9, 7, 5, 3, 1)


# --- names, parsing, compose, geometric_part --------------------------------------------------

def test_names():
    t = Compose((Geometric("rot90"), ColorPermutation((0, 9, 1, 8, 2, 7, 3, 6, 4, 5)), DemoOrder((2, 0, 1))))
    assert t.name == "rot90|colors:0918273645|order:2-0-1"
    assert parse_transform(t.name) == t
    assert parse_transform("flip_v") == Geometric("flip_v")
    assert parse_transform("order:2-0-1") == DemoOrder((2, 0, 1))
    assert parse_transform("") == Compose(())


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.booleans(), st.booleans(), st.booleans())
def test_name_parse_round_trip(seed, n_train, geometric, colors, demo_order):
    t = random_transform(np.random.default_rng(seed), n_train, geometric=geometric, colors=colors,
                         demo_order=demo_order)
    assert len(t.parts) == geometric + colors + demo_order
    parsed = parse_transform(t.name)
    assert parsed.name == t.name
    # a one-part Compose is named like its part and parses to it
    assert parsed == (t.parts[0] if len(t.parts) == 1 else t)
    assert hash(parsed) == hash(parse_transform(t.name))


@pytest.mark.parametrize("bad", ["rot45", "colors:012345678", "colors:01234567x9", "order:0-0",
                                 "order:1--0", "rot90|", "|rot90", "Rot90"])
def test_parse_rejects_bad_names(bad):
    with pytest.raises(ValueError, match="cannot parse"):
        parse_transform(bad)


def test_compose_flattens_and_drops_identities():
    r, c = Geometric("rot90"), ColorPermutation((0, 2, 1, *range(3, 10)))
    e = Geometric("identity")
    assert compose() == e
    assert compose(e, ColorPermutation(tuple(range(10))), DemoOrder((0, 1))) == e
    assert compose(e, r) == r
    assert compose(Compose((r, Compose((e, c)))), DemoOrder((1, 0))) == Compose((r, c, DemoOrder((1, 0))))


def test_geometric_part():
    c = ColorPermutation((0, 2, 1, *range(3, 10)))
    t = Compose((Geometric("rot90"), c, Compose((Geometric("flip_h"), DemoOrder((1, 0))))))
    assert geometric_part(t) == Geometric("rot90").then(Geometric("flip_h"))
    # by hand on PROBE: rot90 -> [[3,6],[2,5],[1,4]], then flip_h -> [[6,3],[5,2],[4,1]]
    assert geometric_part(t) == Geometric("antitranspose")
    assert Geometric("flip_h").then(Geometric("rot90")) == Geometric("transpose")  # order matters
    assert geometric_part(c) == Geometric("identity")
    assert geometric_part(Geometric("rot180")) == Geometric("rot180")


def test_transforms_are_hashable_values():
    a = {Geometric("rot90"), Geometric("rot90"), ColorPermutation(list(range(10))), DemoOrder([1, 0])}
    assert len(a) == 3 and DemoOrder([1, 0]) in a
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'name'"):
        Geometric("rot90").name = "rot180"


def test_random_transform_covers_all_symmetries():
    names = {geometric_part(random_transform(np.random.default_rng(s), 2)).name for s in range(200)}
    assert names == set(GEOMETRIC_NAMES)


# --- size changes (TTT's extra augmentations) ------------------------------------------------------

def test_upscale_and_tile_by_hand():
    from testtime.arc.transforms import Resize

    g = as_grid([[1, 2], [3, 4]])
    assert Resize("upscale", 2, 1).grid(g).tolist() == [[1, 2], [1, 2], [3, 4], [3, 4]]
    assert Resize("upscale", 1, 2).grid(g).tolist() == [[1, 1, 2, 2], [3, 3, 4, 4]]
    assert Resize("tile", 1, 2).grid(g).tolist() == [[1, 2, 1, 2], [3, 4, 3, 4]]
    assert Resize("tile", 2, 1).grid(g).tolist() == [[1, 2], [3, 4], [1, 2], [3, 4]]
    with pytest.raises(ValueError, match="3x2"):
        Resize("downscale", 2, 2).grid(as_grid([[1, 2], [3, 4], [5, 6]]))
    with pytest.raises(ValueError, match="bad size change"):
        Resize("stretch", 2, 2)
    assert Resize("upscale", 1, 1).is_identity and not Resize("tile", 1, 2).is_identity


@FAST
@given(grids(max_side=15), st.sampled_from(["upscale", "tile"]), st.integers(1, 2), st.integers(1, 2),
       st.sampled_from(GEOMETRIC_NAMES))
def test_size_changes_round_trip_alone_and_composed(g, kind, rows, cols, geo):
    from testtime.arc.transforms import Resize

    r = Resize(kind, rows, cols)
    out = r.grid(g)
    assert out.shape == (g.shape[0] * rows, g.shape[1] * cols)
    assert np.array_equal(r.inverse().grid(out), g)
    t = compose(Geometric(geo), r)
    assert np.array_equal(t.inverse().grid(t.grid(g)), g)
    assert parse_transform(t.name).name == t.name
    assert np.array_equal(parse_transform(t.name).grid(g), t.grid(g))


def test_fits_side_checks_every_grid_of_the_task():
    from testtime.arc.transforms import Resize, fits_side

    small, wide = as_grid([[1] * 15]), as_grid([[1] * 16])
    task = Task("s", train=(Example(small, small),), test=(Example(small),))
    assert fits_side(Resize("upscale", 1, 2).task(task))  # 15 -> 30 columns: fits
    big = Task("b", train=(Example(small, wide),), test=(Example(small),))
    assert not fits_side(Resize("upscale", 1, 2).task(big))  # the 16-column output would be 32
    assert fits_side(Resize("upscale", 2, 1).task(big))
