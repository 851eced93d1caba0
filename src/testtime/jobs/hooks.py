"""The one seam for fault injection, for the test suite only: a callable run before every item, in every process.

    hooks.install(fn)      # fn(item_id, first): may raise (a failed item) or exit (a dead worker)
    hooks.install(None)

Nothing in the package installs one, and nothing in the environment can turn one on (a variable
left set in a shell once made every task of every run fail). `tests/faults.py` installs it
in-process; an executor reads it when it is made, and a Ray executor ships it to its workers
(so it must pickle by value, which the test suite arranges).
"""

from __future__ import annotations

from collections.abc import Callable

BeforeItem = Callable[[str, bool], None]
"""Called with the item id and whether it is the first item of its process, before the item runs."""

_installed: list[BeforeItem] = []


def install(fn: BeforeItem | None) -> None:
    """Make `fn` run before every item of executors made from now on (None: nothing runs)."""
    _installed[:] = [fn] if fn is not None else []


def installed() -> BeforeItem | None:
    return _installed[0] if _installed else None
