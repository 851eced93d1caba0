"""The one way a per-item seed is derived from a run's seed and an item's name (task or prompt id).

    seed = derive_seed(args.seed, task.id)                      # an int for torch.manual_seed & co.
    rng = np.random.default_rng([args.seed, name_key(task.id)])  # a numpy stream of its own

Both depend on the name's bytes alone (CRC-32, not Python's salted `hash`), so every process and
every rerun draws the same numbers for the same item, whatever order the items run in.
"""

from __future__ import annotations

import zlib

SEED_MULTIPLIER = 1_000_003
"""A prime: seeds s and s+1 give item seeds far apart."""


def name_key(name: str) -> int:
    """A stable 32-bit integer for `name`: the CRC-32 of its UTF-8 bytes (a lone surrogate, which JSON
    can spell as an escape, passes through rather than failing the item)."""
    return zlib.crc32(name.encode("utf-8", "surrogatepass"))


def derive_seed(seed: int, name: str) -> int:
    """The seed of item `name` in a run seeded with `seed`, in [0, 2**31)."""
    return (seed * SEED_MULTIPLIER + name_key(name)) % 2**31
