"""What a rebuilt corpus is checked against: hashes of the memory and the prompt list (pins.json).

The machine image changes (packages, their versions, the documentation they install), so a memory
built on another image may differ. `corpus_pins` hashes what decides a benchmark: each memory
document's id, domain and text, per domain and over all; each prompt's id, domain, prompt and
continuation. Source paths are left out (they name this machine's layout, not the text). It also
records what pins each pinned domain (`pinned_by`): the interpreter's version for `code`, the
requirement and SHA-256 of the archive for `pypi-code`, `django-docs` and `release-notes`, MATH_ENV
for `math`; a domain read from --source, or from the Debian image, has no pin.
Commit the pins.json of the corpus a benchmark used; `python -m dev.corpus ... --check-pins FILE`
rebuilds and names every domain whose memory or prompts came out different.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Iterable
from typing import Any

from .archives import DOMAIN_ARCHIVES, PINNED
from .mathematics import MATH_ENV


def _digest(rows: list[dict], keys: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps([row[k] for k in keys], ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


MEMORY_KEYS = ("id", "domain", "text")
PROMPT_KEYS = ("id", "domain", "prompt", "continuation")


def domain_pins(domains: Iterable[str]) -> dict[str, dict[str, Any]]:
    """What fixes the text of each of these domains (built from their default, pinned roots)."""
    pins: dict[str, dict[str, Any]] = {}
    for name in domains:
        if name == "code":
            pins[name] = {"python": platform.python_version()}
        elif name == "math":
            pins[name] = {"env": list(MATH_ENV)}
        elif name in DOMAIN_ARCHIVES:
            archive = PINNED[DOMAIN_ARCHIVES[name]]
            pins[name] = {"requirement": archive.requirement, "file": archive.filename, "sha256": archive.sha256}
    return pins


def describe_pin(pin: dict[str, Any] | None) -> str:
    """`python 3.11.7`, `Django==4.2.17 (sha256 6b56d834cc94...)`, or `no pin`."""
    if not pin:
        return "no pin"
    if "python" in pin:
        return f"python {pin['python']}"
    if "env" in pin:
        return " ".join(pin["env"])
    return f"{pin.get('requirement')} (sha256 {str(pin.get('sha256'))[:12]}...)"


def pin_change(name: str, was: dict[str, Any] | None, now: dict[str, Any] | None) -> str:
    """`code: python 3.11.7 pinned, 3.12.1 built`."""
    if was and now and "python" in was and "python" in now:
        return f"{name}: python {was['python']} pinned, {now['python']} built"
    return f"{name}: {describe_pin(was)} pinned, {describe_pin(now)} built"


def corpus_pins(memory: list[dict], prompts: list[dict], *, math_env: bool = False,
                pinned_by: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Hashes of the memory and the prompts, over all and per domain, the prompt ids in order, and what
    pins each domain (`domain_pins`)."""
    names = sorted({r["domain"] for r in memory} | {r["domain"] for r in prompts})
    domains = {}
    for name in names:
        mem = [r for r in memory if r["domain"] == name]
        held = [r for r in prompts if r["domain"] == name]
        domains[name] = {"memory": len(mem), "memory_sha256": _digest(mem, MEMORY_KEYS), "prompts": len(held),
                         "prompts_sha256": _digest(held, PROMPT_KEYS)}
    return {"memory_sha256": _digest(memory, MEMORY_KEYS), "prompts_sha256": _digest(prompts, PROMPT_KEYS),
            "domains": domains, "prompt_ids": [r["id"] for r in prompts],
            "math_env": list(MATH_ENV) if math_env else None, "pinned_by": pinned_by or {}}


def compare_pins(pinned: dict[str, Any], built: dict[str, Any]) -> list[str]:
    """What differs between the pinned corpus and the one just built, one line each (empty: the same)."""
    if pinned.get("memory_sha256") == built["memory_sha256"] and \
            pinned.get("prompts_sha256") == built["prompts_sha256"]:
        return []
    lines = []
    if "pinned_by" in pinned:      # pins.json files written before pins were recorded have none
        was, now = pinned["pinned_by"], built.get("pinned_by", {})
        lines += [pin_change(name, was.get(name), now.get(name))
                  for name in sorted(set(was) | set(now)) if was.get(name) != now.get(name)]
    old, new = pinned.get("domains", {}), built["domains"]
    for name in sorted(set(old) | set(new)):
        a, b = old.get(name), new.get(name)
        if a is None or b is None:
            lines.append(f"{name}: only in the {'built' if a is None else 'pinned'} corpus")
            continue
        for part in ("memory", "prompts"):
            if a.get(f"{part}_sha256") != b[f"{part}_sha256"]:
                lines.append(f"{name}: {part} differs ({a.get(part)} pinned, {b[part]} built)")
    if pinned.get("prompt_ids") != built["prompt_ids"]:
        lost = sorted(set(pinned.get("prompt_ids") or []) - set(built["prompt_ids"]))
        lines.append(f"prompt list differs; {len(lost)} pinned prompt(s) missing, e.g. {lost[:3]}")
    return lines or ["the corpus differs in order only"]
