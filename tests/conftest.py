"""Shared fixtures: the embedded tokenizer and the tiny randomly initialised causal LM (helpers.make_tiny_model)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

from helpers import make_tiny_model

# GGUF conversions made by tests go to a throwaway folder, never the user's ~/.cache
os.environ["TESTTIME_CACHE"] = tempfile.mkdtemp(prefix="testtime-test-cache-")
atexit.register(shutil.rmtree, os.environ["TESTTIME_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer (read from the GGUF once per test session, ~5 s)."""
    from testtime.models import load_tokenizer

    return load_tokenizer(None)


@pytest.fixture
def tiny_model():
    return make_tiny_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny random model saved like any local model directory (config, safetensors, tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-model")
    make_tiny_model(vocab_size=len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
