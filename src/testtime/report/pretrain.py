"""The report of an `arc pretrain` output directory: loss curves, throughput, MFU where known, the card.

    write_pretrain_report("adapters/arc")     # -> adapters/arc/report.html

It reads `OUT/card.json` (written at the end of a run) and the newest checkpoint's `state.json`,
whose history holds the loss of every step (`extra.losses`) and the validation losses
(`extra.val`), so an unfinished run has a report too. Missing fields leave gaps, never errors.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from testtime.report.arc import read_json
from testtime.report.render import render_to
from testtime.report.svg import line_chart


def _history(out: Path) -> dict[str, Any]:
    """The loss history of the newest complete checkpoint under OUT/checkpoints ({} when there is none)."""
    steps = []
    for path in (out / "checkpoints").glob("step-*"):
        match = re.fullmatch(r"step-0*(\d+)", path.name)
        if match and (path / "state.json").is_file():
            steps.append((int(match.group(1)), path))
    for _, path in sorted(steps, reverse=True):
        state = read_json(path / "state.json")
        if isinstance(state, dict) and isinstance(state.get("extra"), dict):
            return state["extra"]
    return {}


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def moving_average(values: list[float], window: int) -> list[float]:
    """The mean of each value and the up to `window - 1` before it."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def pretrain_context(out: str | Path) -> dict[str, Any]:
    """The template context of OUT; raises FileNotFoundError when OUT holds neither a card nor a checkpoint."""
    out = Path(out)
    card = read_json(out / "card.json")
    card = card if isinstance(card, dict) else {}
    history = _history(out)
    if not card and not history:
        raise FileNotFoundError(f"{out} holds no card.json and no checkpoint: not an `arc pretrain` output")
    losses = [v for v in map(_number, history.get("losses") or []) if v is not None]
    val = card.get("val_history") or history.get("val") or []
    val_points = [(p[0], p[1]) for p in val if isinstance(p, list) and len(p) == 2]
    curves = [("train loss", list(enumerate(losses, start=1)))]
    if len(losses) >= 20:
        window = max(5, len(losses) // 50)
        curves.append((f"train, mean of {window}", list(enumerate(moving_average(losses, window), start=1))))
    curves.append(("validation loss", val_points))
    tokens = _number(card.get("tokens_seen", history.get("tokens")))
    seconds = _number(card.get("seconds", history.get("seconds")))
    mfu = _number(card.get("mfu", history.get("mfu")))
    config = read_json(out / "config.json")
    return {
        "title": f"testtime pretrain report: {out.name or out}", "out": str(out), "finished": bool(card),
        "chart": line_chart(curves, xlabel="optimizer step", ylabel="loss", width=720, height=300),
        "n_losses": len(losses), "n_val": len(val_points),
        "steps": card.get("steps", len(losses) or None), "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds if tokens and seconds else None, "mfu": mfu,
        "device": card.get("device"),
        "card": {k: v for k, v in card.items() if k not in ("config", "val_history")},
        "settings": config.get("settings", {}) if isinstance(config, dict) else {},
    }


def write_pretrain_report(out_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of pretraining output `out_dir` to `out` (default OUT_DIR/report.html)."""
    return render_to("pretrain.html", out or Path(out_dir) / "report.html", **pretrain_context(out_dir))
