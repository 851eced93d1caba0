"""Shared fixtures: the embedded tokenizer and a tiny randomly initialised causal LM."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest
import torch

# GGUF conversions made by tests go to a throwaway folder, never the user's ~/.cache
os.environ["TESTTIME_CACHE"] = tempfile.mkdtemp(prefix="testtime-test-cache-")
atexit.register(shutil.rmtree, os.environ["TESTTIME_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def tokenizer():
    """The embedded SmolLM2 tokenizer (read from the GGUF once per test session, ~5 s)."""
    from testtime.models import load_tokenizer

    return load_tokenizer(None)


def make_tiny_model(vocab_size: int = 49152, seed: int = 0):
    """A 2-layer Llama with hidden size 32, random weights: seconds to train on CPU."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    model = LlamaForCausalLM(config)
    model.eval()
    return model


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
