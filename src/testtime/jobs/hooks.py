"""The one test hook: a function of the test suite's, called before every item, in every process.

    TESTTIME_TEST_HOOK=/path/to/faults.py:inject:ARG

makes each executor (in-process, and every Ray worker) call `inject(item_id, first, "ARG")`
before it runs an item (`first`: the first item of that process). Tests use it to make a worker
die or an item raise. It is read once in the driver and shipped to the workers, which import the
file themselves; unset (always, outside tests), it does nothing.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Any

ENV = "TESTTIME_TEST_HOOK"


@dataclass
class TestHook:
    """A `FILE.py:FUNCTION[:ARG]` spec, resolved lazily in the process that calls it."""

    __test__ = False  # not a pytest test class

    spec: str | None = None
    _fn: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def from_env(cls) -> TestHook:
        return cls(os.environ.get(ENV) or None)

    def __getstate__(self) -> dict[str, Any]:
        return {"spec": self.spec, "_fn": None}  # the function is imported again in the worker

    def before(self, item_id: str, first: bool) -> None:
        if self.spec is None:
            return
        if self._fn is None:
            path, name, *arg = self.spec.split(":", 2)
            module_spec = importlib.util.spec_from_file_location("testtime_test_hook", path)
            if module_spec is None or module_spec.loader is None:
                raise RuntimeError(f"{ENV}: cannot import {path}")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            fn = getattr(module, name)
            self._fn = lambda i, f: fn(i, f, arg[0] if arg else "")
        self._fn(item_id, first)
