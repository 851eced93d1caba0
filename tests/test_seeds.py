"""Per-item seeds: pinned values, so that no refactor changes which numbers a task or prompt draws."""

from __future__ import annotations

import zlib

import numpy as np

from testtime.seeds import derive_seed, name_key


def test_derive_seed_is_the_documented_formula_with_pinned_values():
    assert derive_seed(0, "007bbfc7") == 421080847
    assert derive_seed(3, "__shared__") == 1505849423
    assert derive_seed(12345, "prompt-1") == 1133055032
    for seed, name in ((0, "a"), (7, "task"), (2**40 + 5, "é-unicode")):
        assert derive_seed(seed, name) == (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31
        assert 0 <= derive_seed(seed, name) < 2**31


def test_name_key_is_crc32_and_gives_the_same_numpy_stream():
    assert name_key("007bbfc7") == 2568564495 == zlib.crc32(b"007bbfc7")
    a = np.random.default_rng([1, name_key("007bbfc7")]).integers(1 << 30, size=4)
    b = np.random.default_rng([1, zlib.crc32("007bbfc7".encode())]).integers(1 << 30, size=4)
    np.testing.assert_array_equal(a, b)
