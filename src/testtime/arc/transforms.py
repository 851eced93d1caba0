"""Invertible augmentations of ARC tasks: the 8 symmetries of the square, colour permutations,
reorderings of the train demonstrations, size changes (upscaling cells into blocks, tiling the
grid; the paper's extra TTT augmentations) and compositions of them.

Every transform has a readable `name` ("rot90", "colors:0918273645", "order:2-0-1",
"rot90|colors:0918273645|order:2-0-1") and `parse_transform(name)` rebuilds it, so results on
disk can say which augmentation a prediction was made under. A prediction made on `t.task(task)`
is mapped back to the original frame with `t.inverse().grid(prediction)`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from testtime.arc.task import MAX_SIDE, Example, Grid, Task

log = logging.getLogger(__name__)

GEOMETRIC_NAMES = ("identity", "rot90", "rot180", "rot270", "flip_h", "flip_v", "transpose", "antitranspose")

# Each symmetry of the square as (k, reflect): g -> np.rot90(np.fliplr(g) if reflect else g, k),
# rot90 being counter-clockwise. Writing every element as R^k F^reflect makes composition and
# inversion arithmetic (F R^k = R^-k F) instead of a case analysis.
_DIHEDRAL: dict[str, tuple[int, bool]] = {
    "identity": (0, False),
    "rot90": (1, False),
    "rot180": (2, False),
    "rot270": (3, False),
    "flip_h": (0, True),  # mirror left-right
    "flip_v": (2, True),  # mirror top-bottom = rot180 of flip_h
    "transpose": (1, True),  # out[i, j] = g[j, i]
    "antitranspose": (3, True),  # out[i, j] = g[h-1-j, w-1-i] for g of shape (h, w)
}
_BY_ELEMENT = {element: name for name, element in _DIHEDRAL.items()}

_COLORS = 10
_COLORS_PREFIX = "colors:"
_ORDER_PREFIX = "order:"
_SIZE_KINDS = ("upscale", "downscale", "tile", "untile")


def _fresh(g: Grid) -> Grid:
    """A new C-contiguous int8 copy: never a view sharing memory with `g`."""
    return np.array(g, dtype=np.int8, order="C", copy=True)


def _example(ex: Example, fn: Callable[[Grid], Grid]) -> Example:
    return Example(fn(ex.input), None if ex.output is None else fn(ex.output))


def _copy_task(t: Task) -> Task:
    return Task(id=t.id, train=tuple(_example(ex, _fresh) for ex in t.train),
                test=tuple(_example(ex, _fresh) for ex in t.test))


class Transform(ABC):
    """An invertible augmentation of a grid and of a whole task."""

    name: str
    """Stable readable name; `parse_transform(t.name)` rebuilds it."""

    @abstractmethod
    def grid(self, g: Grid) -> Grid:
        """Apply to one grid; returns a new contiguous int8 array."""

    @abstractmethod
    def inverse(self) -> Transform:
        """The transform that undoes this one."""

    @property
    def is_identity(self) -> bool:
        """True when the transform changes nothing."""
        return False

    def task(self, t: Task) -> Task:
        """Apply to every grid of the task (absent test outputs stay None); same task id."""
        return Task(id=t.id, train=tuple(_example(ex, self.grid) for ex in t.train),
                    test=tuple(_example(ex, self.grid) for ex in t.test))

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Geometric(Transform):
    """One of the 8 symmetries of the square (the dihedral group D4)."""

    name: str
    """One of GEOMETRIC_NAMES."""

    def __post_init__(self) -> None:
        if self.name not in _DIHEDRAL:
            raise ValueError(f"unknown geometric transform {self.name!r}; expected one of {', '.join(GEOMETRIC_NAMES)}")

    def grid(self, g: Grid) -> Grid:
        k, reflect = _DIHEDRAL[self.name]
        return _fresh(np.rot90(np.fliplr(g) if reflect else g, k))

    def inverse(self) -> Geometric:
        k, reflect = _DIHEDRAL[self.name]
        # reflections are their own inverse; (R^k)^-1 = R^-k
        return Geometric(_BY_ELEMENT[(k if reflect else -k % 4, reflect)])

    def then(self, other: Geometric) -> Geometric:
        """The element equal to applying `self` first and `other` second."""
        k1, f1 = _DIHEDRAL[self.name]
        k2, f2 = _DIHEDRAL[other.name]
        # R^k2 F^f2 R^k1 F^f1 = R^(k2 -+ k1) F^(f1 xor f2), the sign flipping when f2 moves F past R^k1
        k = (k2 - k1 if f2 else k2 + k1) % 4
        return Geometric(_BY_ELEMENT[(k, f1 != f2)])

    @property
    def is_identity(self) -> bool:
        return self.name == "identity"


@dataclass(frozen=True)
class ColorPermutation(Transform):
    """Recolour every cell: colour c becomes perm[c]."""

    perm: tuple[int, ...]
    """A permutation of 0..9; perm[c] is the new colour of c."""

    def __post_init__(self) -> None:
        perm = tuple(int(c) for c in self.perm)
        if sorted(perm) != list(range(_COLORS)):
            raise ValueError(f"colour permutation must be a permutation of 0..9, got {self.perm!r}")
        object.__setattr__(self, "perm", perm)  # lists/arrays in, hashable tuple kept

    @property
    def name(self) -> str:
        return _COLORS_PREFIX + "".join(str(c) for c in self.perm)

    def grid(self, g: Grid) -> Grid:
        # fancy indexing builds a new C-contiguous array of g's shape
        return _fresh(np.asarray(self.perm, dtype=np.int8)[np.asarray(g)])

    def inverse(self) -> ColorPermutation:
        inv = [0] * _COLORS
        for c, new in enumerate(self.perm):
            inv[new] = c
        return ColorPermutation(tuple(inv))

    @property
    def is_identity(self) -> bool:
        return self.perm == tuple(range(_COLORS))


@dataclass(frozen=True)
class DemoOrder(Transform):
    """Reorder the train demonstrations: train' = [train[i] for i in order]; grids are unchanged."""

    order: tuple[int, ...]
    """A permutation of range(len(train))."""

    def __post_init__(self) -> None:
        order = tuple(int(i) for i in self.order)
        if sorted(order) != list(range(len(order))):
            raise ValueError(f"demonstration order must be a permutation of 0..n-1, got {self.order!r}")
        object.__setattr__(self, "order", order)

    @property
    def name(self) -> str:
        return _ORDER_PREFIX + "-".join(str(i) for i in self.order)

    def grid(self, g: Grid) -> Grid:
        return _fresh(g)

    def task(self, t: Task) -> Task:
        if len(self.order) != len(t.train):
            raise ValueError(f"task {t.id!r} has {len(t.train)} train examples; "
                             f"{self.name} needs {len(self.order)}")
        copy = _copy_task(t)
        return Task(id=t.id, train=tuple(copy.train[i] for i in self.order), test=copy.test)

    def inverse(self) -> DemoOrder:
        inv = [0] * len(self.order)
        for new_pos, old_pos in enumerate(self.order):
            inv[old_pos] = new_pos
        return DemoOrder(tuple(inv))

    @property
    def is_identity(self) -> bool:
        return self.order == tuple(range(len(self.order)))


@dataclass(frozen=True)
class Compose(Transform):
    """Several transforms applied left to right."""

    parts: tuple[Transform, ...]
    """The transforms, first applied first."""

    separator: ClassVar[str] = "|"

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))

    @property
    def name(self) -> str:
        # the empty composition is named "" (parse_transform("") gives it back)
        return self.separator.join(p.name for p in self.parts)

    def grid(self, g: Grid) -> Grid:
        out = _fresh(g)
        for part in self.parts:
            out = part.grid(out)
        return out

    def task(self, t: Task) -> Task:
        out = _copy_task(t)  # so even the empty composition never hands back the input's arrays
        for part in self.parts:
            out = part.task(out)
        return out

    def inverse(self) -> Compose:
        return Compose(tuple(p.inverse() for p in reversed(self.parts)))

    @property
    def is_identity(self) -> bool:
        return all(p.is_identity for p in self.parts)


@dataclass(frozen=True)
class Resize(Transform):
    """A size change by whole factors (`rows` x `cols`), undone by its inverse kind.

    upscale: every cell becomes a rows x cols block (the paper's IncreaseResolution/Height/Width);
    tile: the grid repeated rows x cols times (its Repeat); downscale and untile undo them and
    raise ValueError on a grid whose sides are not multiples of the factors. The result may
    exceed 30x30: check `fits_side` before using a task made with it.
    """

    kind: str
    """One of upscale, downscale, tile, untile."""
    rows: int
    """Factor along the rows."""
    cols: int
    """Factor along the columns."""

    def __post_init__(self) -> None:
        if self.kind not in _SIZE_KINDS or self.rows < 1 or self.cols < 1:
            raise ValueError(f"bad size change {self.kind}:{self.rows}x{self.cols}; kinds: {', '.join(_SIZE_KINDS)}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.rows}x{self.cols}"

    def grid(self, g: Grid) -> Grid:
        a = np.asarray(g)
        if self.kind == "upscale":
            return _fresh(np.repeat(np.repeat(a, self.rows, axis=0), self.cols, axis=1))
        if self.kind == "tile":
            return _fresh(np.tile(a, (self.rows, self.cols)))
        h, w = a.shape
        if h % self.rows or w % self.cols:
            raise ValueError(f"{self.name}: a {h}x{w} grid is not made of {self.rows}x{self.cols} parts")
        if self.kind == "downscale":
            return _fresh(a[::self.rows, ::self.cols])
        return _fresh(a[:h // self.rows, :w // self.cols])

    def inverse(self) -> Resize:
        pairs = {"upscale": "downscale", "downscale": "upscale", "tile": "untile", "untile": "tile"}
        return Resize(pairs[self.kind], self.rows, self.cols)

    @property
    def is_identity(self) -> bool:
        return self.rows == self.cols == 1


EXTRA_AUGMENTATIONS: dict[str, tuple[Resize, ...]] = {
    "upscale": (Resize("upscale", 2, 2), Resize("upscale", 2, 1), Resize("upscale", 1, 2)),
    "tile": (Resize("tile", 2, 2), Resize("tile", 2, 1), Resize("tile", 1, 2)),
}
"""The size augmentations TTT can add, by family name (the paper's size and repeat augmenters)."""


def fits_side(t: Task, limit: int = MAX_SIDE) -> bool:
    """Whether every grid of the task (absent outputs aside) has at most `limit` rows and columns."""
    grids = [g for ex in (*t.train, *t.test) for g in (ex.input, ex.output) if g is not None]
    return all(max(g.shape) <= limit for g in grids)


def geometric_transforms() -> list[Geometric]:
    """The 8 symmetries of the square, identity first, in GEOMETRIC_NAMES order."""
    return [Geometric(name) for name in GEOMETRIC_NAMES]


def compose(*parts: Transform) -> Transform:
    """Compose left to right, flattening nested Compose and dropping identities.

    Returns the identity Geometric when nothing is left and the part itself when one is.
    """
    flat = [leaf for part in parts for leaf in _flatten(part) if not leaf.is_identity]
    if not flat:
        return Geometric("identity")
    return flat[0] if len(flat) == 1 else Compose(tuple(flat))


def _flatten(t: Transform) -> list[Transform]:
    if isinstance(t, Compose):
        return [leaf for p in t.parts for leaf in _flatten(p)]
    return [t]


def geometric_part(t: Transform) -> Geometric:
    """The composed geometric element of `t` (identity if it has none).

    Colour permutations and demonstration orders commute with the symmetries, so this is the
    spatial frame a prediction made under `t` lives in; voting groups candidates by it.
    """
    out = Geometric("identity")
    for leaf in _flatten(t):
        if isinstance(leaf, Geometric):
            out = out.then(leaf)
    return out


def parse_transform(name: str) -> Transform:
    """Rebuild a transform from its `name`; raises ValueError for anything else.

    A name with "|" gives a Compose of the parsed parts; "" gives the empty Compose.
    """
    if name == "":
        return Compose(())
    pieces = name.split(Compose.separator)
    if len(pieces) > 1:
        return Compose(tuple(_parse_one(piece, name) for piece in pieces))
    return _parse_one(name, name)


def _parse_one(piece: str, whole: str) -> Transform:
    try:
        if piece.startswith(_COLORS_PREFIX):
            digits = piece[len(_COLORS_PREFIX):]
            if not digits.isdigit():
                raise ValueError("colours must be 10 digits")
            return ColorPermutation(tuple(int(c) for c in digits))
        if piece.startswith(_ORDER_PREFIX):
            body = piece[len(_ORDER_PREFIX):]
            return DemoOrder(tuple(int(i) for i in body.split("-")) if body else ())
        kind, _, factors = piece.partition(":")
        if kind in _SIZE_KINDS:
            rows, _, cols = factors.partition("x")
            return Resize(kind, int(rows), int(cols))
        return Geometric(piece)
    except ValueError as err:
        raise ValueError(f"cannot parse transform {whole!r}: part {piece!r}: {err}") from None


def random_color_permutation(rng: np.random.Generator, keep_zero: bool = True) -> ColorPermutation:
    """A uniformly random permutation of the colours; with keep_zero, 0 (the usual background) stays 0."""
    if keep_zero:
        return ColorPermutation((0, *(int(c) + 1 for c in rng.permutation(_COLORS - 1))))
    return ColorPermutation(tuple(int(c) for c in rng.permutation(_COLORS)))


def random_transform(rng: np.random.Generator, n_train: int, *, geometric: bool = True, colors: bool = True,
                     keep_zero: bool = True, demo_order: bool = True) -> Compose:
    """One uniformly random element of each enabled kind, composed as geometric|colors|order.

    Identity draws are kept, so the name always has one part per enabled kind.
    """
    parts: list[Transform] = []
    if geometric:
        parts.append(Geometric(GEOMETRIC_NAMES[int(rng.integers(len(GEOMETRIC_NAMES)))]))
    if colors:
        parts.append(random_color_permutation(rng, keep_zero=keep_zero))
    if demo_order:
        parts.append(DemoOrder(tuple(int(i) for i in rng.permutation(n_train))))
    return Compose(tuple(parts))
