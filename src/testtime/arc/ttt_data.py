"""Per-task test-time-training data (Akyurek et al. 2024), fitted to a maximum sequence length.

For a task with n train demonstrations, the leave-one-out items make each demonstration in turn
the query, with the other n-1 (in their order) as context (the paper's in-context format,
"icl"); the end-to-end items are each demonstration alone ("e2e"). Every item is first used
as it is, then under random invertible transforms (geometric x colour permutation x demo
order, followed with probability `size_augment_prob` by a size change from `augmentations`,
skipped when a grid would exceed 30x30), each fitted to `max_len` tokens by dropping random context demos (Barbadillo's
recipe), encoded, and deduplicated by token ids until the budget is met. With `leave_two_out`,
when the leave-one-out items times the augmentations (8 symmetries x (1 + size changes)) are
fewer than the budget, they get that many sequences and leave-two-out items (n-2 context
demos) fill the rest, as in the paper.

Only `task.train` is ever read: test inputs and outputs never reach the training data.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from testtime.arc.format import DEFAULT_FORMAT, TextFormat, TokenCounter, encode
from testtime.arc.settings import TTTArgs
from testtime.arc.task import Example, Grid, Task
from testtime.arc.transforms import (
    Compose,
    Resize,
    Transform,
    fits_side,
    geometric_transforms,
    random_transform,
)
from testtime.batching import TrainingSequence
from testtime.seeds import name_key

log = logging.getLogger(__name__)

Item = tuple[tuple[Example, ...], Example]
"""(context demos, query demo): one leave-one-out or end-to-end training item."""

DRAWS_PER_SEQUENCE = 20
"""Transform draws allowed per requested sequence: bounds the loop when dedup or fitting rejects."""


@dataclass(frozen=True)
class Origin:
    """Where one training sequence came from."""

    item: int
    """Index of its item in `TTTData.items`."""
    transform: Transform
    """The transform applied to the item's context and query (invert it to map back)."""
    n_demos: int
    """Context demos kept after fitting."""


@dataclass
class TTTData:
    """One task's test-time-training sequences and how they were made."""

    sequences: list[TrainingSequence]
    """Encoded training sequences, each at most `max_len` tokens, no two identical."""
    transforms: list[str]
    """Name of the transform behind each sequence (parallel to `sequences`)."""
    origins: list[Origin]
    """Item, transform and kept demos behind each sequence (parallel to `sequences`)."""
    items: list[Item]
    """The untransformed items the sequences were drawn from (after any fallback)."""
    n_leave_one_out: int
    """Number of items used (leave-one-out items, or e2e pieces after a fallback), leave-two-out ones aside."""
    n_dropped_demos: int
    """Total context demos dropped by fitting, over all sequences."""
    fits: bool
    """True when every requested item fit `max_len` (possibly after dropping context demos)."""
    fallback: str | None
    """None, or what was done when items did not fit: "partial", "e2e" or "skip-ttt"."""
    tokens: int
    """Total tokens over all sequences."""
    format_counts: dict[str, int] = field(default_factory=dict)
    """Sequences per item format ("icl", "e2e")."""
    n_leave_two_out: int = 0
    """Leave-two-out items added by the top-up (after the others in `items`)."""


def leave_one_out(task: Task) -> list[Item]:
    """n items for n demos: item i has demo i as query and the other n-1, in order, as context.

    A task with a single demo gives no items (there would be no context)."""
    train = task.train
    if len(train) < 2:
        return []
    return [(train[:i] + train[i + 1:], train[i]) for i in range(len(train))]


def leave_two_out(task: Task) -> list[Item]:
    """n(n-1) items for n >= 3 demos: demo i as query, every demo but i and j (in order) as context."""
    train = task.train
    if len(train) < 3:
        return []
    return [(tuple(ex for k, ex in enumerate(train) if k not in (i, j)), train[i])
            for i in range(len(train)) for j in range(len(train)) if j != i]


def end_to_end(task: Task) -> list[Item]:
    """Each demo alone, with an empty context."""
    return [((), ex) for ex in task.train]


def fit_demos(demos: Sequence[Example], query_input: Grid, answer: Grid | None, counter: TokenCounter,
              max_len: int, rng: np.random.Generator, *, min_demos: int = 1,
              reserve: int = 0) -> tuple[Example, ...] | None:
    """The context demos that fit `max_len` tokens with the query, dropping random ones.

    The length is the prompt plus, when `answer` is given, the answer (the training sequence),
    plus `reserve` tokens (room left for a generated answer at inference). Demos are dropped
    one at a time at random, never the query, keeping the survivors in order. Returns None when
    even the `min_demos` cheapest demos (all of them when there are fewer) cannot fit, so None
    means no choice of demos would. Counts by TokenCounter arithmetic; no tokenizer calls.
    """
    kept = list(demos)
    min_demos = min(min_demos, len(kept))

    def length(subset: Sequence[Example]) -> int:
        if answer is None:
            return counter.prompt(subset, query_input) + reserve
        return counter.sequence(subset, query_input, answer) + reserve

    costs = [counter.example(ex) for ex in kept]
    cheapest = sorted(sorted(range(len(kept)), key=lambda i: costs[i])[:min_demos])
    if length([kept[i] for i in cheapest]) > max_len:
        return None
    while length(kept) > max_len and len(kept) > min_demos:
        del kept[int(rng.integers(len(kept)))]
    if length(kept) > max_len:
        # random drops left min_demos expensive demos; the cheapest ones are known to fit
        kept = [demos[i] for i in cheapest]
    return tuple(kept)


def build_ttt_data(task: Task, tokenizer, args: TTTArgs, fmt: TextFormat = DEFAULT_FORMAT,
                   counter: TokenCounter | None = None) -> TTTData:
    """Training sequences for one task from its train demos only (never `task.test`).

    Items are visited round-robin so every demo serves as query equally often; each item's
    first visit is untransformed, later visits use a random transform. A task with a single
    demo has no leave-one-out items, so "icl" uses its e2e item instead. Items whose
    untransformed version cannot fit even with one context demo are left out ("partial"); when
    no icl item fits, the e2e pieces that fit are used ("e2e"); when nothing fits there are no
    sequences (fits=False, fallback "skip-ttt") and the caller predicts without TTT. At most
    DRAWS_PER_SEQUENCE * n_sequences draws are made, so duplicates cannot loop forever.
    """
    _validate(args)
    counter = counter if counter is not None else TokenCounter(tokenizer, fmt)
    rng = np.random.default_rng([args.seed, name_key(task.id)])
    requested = _requested_items(task, args.formats)
    viable = [it for it in requested if _fits_untransformed(it, counter, args.max_len)]
    fits = len(viable) == len(requested)
    fallback = None if fits else "partial"
    wanted_icl = any(item_format(it) == "icl" for it in requested)
    if wanted_icl and not any(item_format(it) == "icl" for it in viable):
        viable = [it for it in end_to_end(task) if _fits_untransformed(it, counter, args.max_len)]
        fallback = "e2e"
    if not viable:
        fallback = "skip-ttt"
    topup = []
    budget = args.n_sequences
    if args.leave_two_out and fallback != "e2e" and len(viable) * args.n_augmentations() < budget:
        topup = [it for it in leave_two_out(task) if _fits_untransformed(it, counter, args.max_len)]
        budget = len(viable) * args.n_augmentations() if topup else budget
    data = TTTData(sequences=[], transforms=[], origins=[], items=viable + topup, n_leave_one_out=len(viable),
                   n_dropped_demos=0, fits=fits, fallback=fallback, tokens=0, n_leave_two_out=len(topup))
    if viable:
        _draw(data, range(len(viable)), budget, tokenizer, args, fmt, counter, rng)
    if topup:
        _draw(data, range(len(viable), len(data.items)), args.n_sequences, tokenizer, args, fmt, counter, rng)
    if fallback is not None:
        log.info("task %s: not everything fits max_len=%d; fallback %s", task.id, args.max_len, fallback)
    log.debug("task %s: %d sequences from %d items, %d tokens, %d demos dropped, fallback %s",
              task.id, len(data.sequences), len(viable), data.tokens, data.n_dropped_demos, fallback)
    return data


def item_format(item: Item) -> str:
    """The item's format: "icl" when it has context demos, "e2e" for a demo alone."""
    return "icl" if item[0] else "e2e"


def _validate(args: TTTArgs) -> None:
    problems = []
    if args.n_sequences < 0:
        problems.append(f"n_sequences must be >= 0, got {args.n_sequences}")
    if args.max_len < 1:
        problems.append(f"max_len must be >= 1, got {args.max_len}")
    if args.formats not in ("icl", "e2e", "both"):
        problems.append(f"formats must be icl, e2e or both, got {args.formats!r}")
    if args.loss_on not in ("answer", "outputs"):
        problems.append(f"loss_on must be answer or outputs, got {args.loss_on!r}")
    if problems:
        raise ValueError("bad TTTArgs: " + "; ".join(problems))


def _requested_items(task: Task, formats: str) -> list[Item]:
    icl = leave_one_out(task)
    if formats == "e2e" or not icl:
        return end_to_end(task)
    if formats == "both":
        return icl + end_to_end(task)
    return icl


def _fits_untransformed(item: Item, counter: TokenCounter, max_len: int) -> bool:
    context, query = item
    # the check picks the cheapest demos, so the rng is never drawn from
    unused = np.random.default_rng(0)
    return fit_demos(context, query.input, query.output, counter, max_len, unused,
                     min_demos=1 if context else 0) is not None


def _draw(data: TTTData, indices: range, budget: int, tokenizer, args: TTTArgs, fmt: TextFormat,
          counter: TokenCounter, rng: np.random.Generator) -> None:
    """Fill `data` round-robin over its items `indices` until it holds `budget` sequences or the draw limit."""
    identity = geometric_transforms()[0]
    seen = {tuple(s.input_ids) for s in data.sequences}
    extras = args.extras()
    for draw in range(DRAWS_PER_SEQUENCE * max(budget - len(data.sequences), 0)):
        if len(data.sequences) >= budget:
            break
        index = indices[draw % len(indices)]
        context, query = data.items[index]
        item = Task(id="ttt", train=context, test=(query,))
        if draw < len(indices):
            transform: Transform = identity
        else:
            transform = random_transform(rng, len(context), geometric=args.geometric, colors=args.colors,
                                         keep_zero=args.keep_zero, demo_order=args.demo_order)
            if extras:
                transform = with_size_change(transform, extras, item, rng, args.size_augment_prob)
        small = transform.task(item)
        moved = small.test[0]
        kept = fit_demos(small.train, moved.input, moved.output, counter, args.max_len, rng,
                         min_demos=1 if context else 0)
        if kept is None:
            continue  # a rotation can add rows; this draw does not fit
        input_ids, labels = encode(tokenizer, kept, moved.input, moved.output, fmt, loss_on=args.loss_on,
                                   first_output=False)
        key = tuple(input_ids)
        if key in seen:
            continue
        seen.add(key)
        data.sequences.append(TrainingSequence(input_ids=list(input_ids), labels=list(labels)))
        data.transforms.append(transform.name)
        data.origins.append(Origin(item=index, transform=transform, n_demos=len(kept)))
        data.n_dropped_demos += len(context) - len(kept)
        data.tokens += len(input_ids)
        kind = item_format(data.items[index])
        data.format_counts[kind] = data.format_counts.get(kind, 0) + 1


def with_size_change(transform: Compose, extras: Sequence[Resize], item: Task, rng: np.random.Generator,
                     prob: float) -> Transform:
    """`transform`, followed with probability `prob` by one of `extras` drawn uniformly; `transform`
    alone otherwise, or when the change would make any grid of the item exceed 30x30."""
    if not extras or rng.random() >= prob:  # prob 0: never; prob 1: always (random() < 1)
        return transform
    grown = Compose((*transform.parts, extras[int(rng.integers(len(extras)))]))
    return grown if fits_side(grown.task(item)) else transform
