"""What the fuzz tests share (tests/test_fuzz.py, tests/test_fuzz_rundirs.py): JSON values, the CLI as
they run it, and a check that nothing outside --out changed."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import strategies as st

from cli_helpers import invoke

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 12) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8)


def run_cli(*args: str):
    """The CLI on a console wide enough for any id; it ends in exit 0, 1 or 2, never a traceback."""
    result = invoke(*args, columns=1000)
    assert result.exit_code in (0, 1, 2), result.output
    return result


def snapshot(root: Path) -> dict[Path, bytes | None]:
    return {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


def changed_outside(before: dict, after: dict, out: Path) -> list[Path]:
    touched = {p for p in set(before) | set(after) if before.get(p, b"<absent>") != after.get(p, b"<absent>")}
    # inside `out`, or a folder on the way to it (created with it)
    return sorted(p for p in touched if not p.is_relative_to(out) and not (out.is_relative_to(p) and p.is_dir()))


def fresh_dir(factory) -> Path:
    return Path(tempfile.mkdtemp(prefix="fuzz-", dir=factory.getbasetemp()))
