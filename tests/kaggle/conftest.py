"""The fake bundle fixture (see fakes.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import build_fake_bundle


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A whole fake bundle for Python 3.11 on manylinux_2_35_x86_64, without torch."""
    return build_fake_bundle(tmp_path / "bundle")
