"""The Jinja2 environment of the reports: packaged templates, autoescaping, number filters, atomic writes."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

from markupsafe import Markup

from testtime.atomic import write_text_atomic


@functools.lru_cache(maxsize=1)
def environment() -> Any:
    import jinja2  # only the commands that render pay for it

    env = jinja2.Environment(loader=jinja2.PackageLoader("testtime.report", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True,
                             undefined=jinja2.StrictUndefined)
    env.filters.update(num=num, pct=pct, svg=Markup, short=short)
    return env


def num(value: Any, digits: int = 3) -> str:
    """A number for a table cell: `digits` decimals, thousands separators for big ones, '–' for none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def pct(value: Any, digits: int = 1) -> str:
    """A share in [0, 1] as a percentage; '–' when unknown."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "–"
    return f"{100 * value:.{digits}f}%"


def short(value: Any, limit: int = 80) -> str:
    """Any config value as short text (JSON for lists and objects), cut at `limit` characters."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render_to(template: str, path: str | Path, /, **context: Any) -> Path:
    """Render `template` with `context` and write it to `path` atomically; returns the path written."""
    html = environment().get_template(template).render(**context)
    path = Path(path)
    write_text_atomic(path, html)
    return path
