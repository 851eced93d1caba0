"""Inline SVG for the reports: ARC grids in the standard palette, line charts, grouped bars, scatter plots.

Everything here returns markup strings (already escaped; the templates mark them safe) and needs
nothing but the standard library, so a report renders without numpy-heavy or plotting imports.
A grid is drawn once per report as a `<symbol>` (one path per colour, run-length encoded rows)
and shown anywhere, at any size, by a tiny `<use>` reference: `GridBank.show(grid)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")
"""The ARC colours 0-9 as the ARC testing interface draws them: black, blue, red, green, yellow,
grey, magenta, orange, light blue, maroon."""

SERIES = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
"""Colours of the runs / curves in charts (not grid colours)."""

Grid = Sequence[Sequence[int]]


def valid_grid(grid: object) -> bool:
    """A non-empty rectangular list of lists of ints 0-9 (what a record's grid should be)."""
    if not isinstance(grid, list) or not grid or not all(isinstance(r, list) and r for r in grid):
        return False
    width = len(grid[0])
    return all(len(r) == width and all(isinstance(v, int) and 0 <= v <= 9 for v in r) for r in grid)


def grid_paths(grid: Grid) -> str:
    """The cells of `grid` as one `<path>` per colour (horizontal runs), the commonest colour as a background."""
    height, width = len(grid), len(grid[0])
    counts = [0] * 10
    for row in grid:
        for v in row:
            counts[v] += 1
    background = counts.index(max(counts))
    runs: dict[int, list[str]] = {}
    for y, row in enumerate(grid):
        x = 0
        while x < width:
            v, start = row[x], x
            while x < width and row[x] == v:
                x += 1
            if v != background:
                runs.setdefault(v, []).append(f"M{start} {y}h{x - start}v1h{start - x}z")
    parts = [f'<rect width="{width}" height="{height}" fill="{PALETTE[background]}"/>']
    parts += [f'<path fill="{PALETTE[v]}" d="{"".join(d)}"/>' for v, d in sorted(runs.items())]
    parts.append(f'<rect width="{width}" height="{height}" fill="url(#gridlines)"/>')
    return "".join(parts)


def diff_outline(attempt: Grid, truth: Grid) -> str:
    """A path outlining every cell where `attempt` differs from `truth` (same shape), or ''."""
    d = "".join(f"M{x}.12 {y}.12h.76v.76h-.76z" for y, (ra, rt) in enumerate(zip(attempt, truth))
                for x, (a, t) in enumerate(zip(ra, rt)) if a != t)
    # a black line under a white one: visible on every colour of the palette
    return f'<path class="diff-o" d="{d}"/><path class="diff-i" d="{d}"/>' if d else ""


class GridBank:
    """Each distinct grid of a report drawn once as a `<symbol>`; `show` returns an `<svg><use>` of it."""

    def __init__(self) -> None:
        self._ids: dict[tuple, str] = {}
        self._symbols: list[str] = []

    def ref(self, grid: Grid) -> str:
        key = tuple(map(tuple, grid))
        if key not in self._ids:
            self._ids[key] = f"g{len(self._ids)}"
            w, h = len(grid[0]), len(grid)
            self._symbols.append(f'<symbol id="{self._ids[key]}" viewBox="0 0 {w} {h}">{grid_paths(grid)}</symbol>')
        return self._ids[key]

    def show(self, grid: object, *, cls: str = "grid", outline: Grid | None = None, title: str = "") -> str:
        """An inline `<svg>` showing `grid` (an 'invalid grid' note for anything else); `outline`: the truth,
        whose differing cells are outlined."""
        if not valid_grid(grid):
            return '<span class="bad-grid">no valid grid</span>'
        assert isinstance(grid, list)
        w, h = len(grid[0]), len(grid)
        extra = ""
        if outline is not None and valid_grid(outline) and (len(outline), len(outline[0])) == (h, w):
            extra = diff_outline(grid, outline)
        tip = f"<title>{escape(title)}</title>" if title else ""
        return (f'<svg class="{cls}" viewBox="0 0 {w} {h}" style="--w:{w};--h:{h}">{tip}'
                f'<use href="#{self.ref(grid)}"/>{extra}</svg>')

    def defs(self) -> str:
        """The hidden `<svg>` holding every symbol and the grid-line pattern; put it once in the page."""
        return ('<svg class="defs" width="0" height="0" aria-hidden="true"><defs>'
                '<pattern id="gridlines" width="1" height="1" patternUnits="userSpaceOnUse">'
                '<path d="M1 0V1H0" fill="none" stroke="#555" stroke-width="0.05"/></pattern>'
                + "".join(self._symbols) + "</defs></svg>")

    def __len__(self) -> int:
        return len(self._symbols)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About `n` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    step = 10 ** math.floor(math.log10(raw))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class _Frame:
    """Axes of a chart: data coordinates -> SVG pixels, with ticks, labels and a legend."""

    def __init__(self, xs: Sequence[float], ys: Sequence[float], *, width: int, height: int,
                 zero_y: bool = False, legend: int = 0, left: int = 56, bottom: int = 34) -> None:
        """`legend`: entries of the legend, drawn in a right margin outside the plot; `left`, `bottom`: margins."""
        self.w, self.h, self.left, self.top, self.bottom = width, height, left, 14, bottom
        self.right = 12 + (min(150, width // 4) if legend else 0)
        self.x0, self.x1 = min(xs), max(xs)
        self.y0, self.y1 = (min(0.0, min(ys)) if zero_y else min(ys)), max(ys)
        if self.x1 == self.x0:
            self.x0, self.x1 = self.x0 - 0.5, self.x1 + 0.5
        if self.y1 == self.y0:
            pad = abs(self.y0) * 0.05 or 0.5
            self.y0, self.y1 = self.y0 - pad, self.y1 + pad
        self.y1 += 0.04 * (self.y1 - self.y0)  # headroom above the highest point

    def px(self, x: float) -> float:
        return self.left + (x - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def py(self, y: float) -> float:
        return self.h - self.bottom - (y - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self, xlabel: str, ylabel: str, *, x_ticks: bool = True) -> str:
        out = [f'<line class="axis" x1="{self.left}" y1="{self.py(self.y0):.1f}" x2="{self.w - self.right}" '
               f'y2="{self.py(self.y0):.1f}"/>',
               f'<line class="axis" x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.h - self.bottom}"/>']
        for t in _ticks(self.y0, self.y1):
            y = self.py(t)
            out.append(f'<line class="gridline" x1="{self.left}" y1="{y:.1f}" x2="{self.w - self.right}" y2="{y:.1f}"/>'
                       f'<text class="tick" x="{self.left - 4}" y="{y + 3:.1f}" text-anchor="end">{_fmt(t)}</text>')
        if x_ticks:
            for t in _ticks(self.x0, self.x1):
                out.append(f'<text class="tick" x="{self.px(t):.1f}" y="{self.h - self.bottom + 13}" '
                           f'text-anchor="middle">{_fmt(t)}</text>')
        out.append(f'<text class="label" x="{(self.left + self.w - self.right) / 2:.0f}" y="{self.h - 4}" '
                   f'text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text class="label" transform="translate(12 {(self.top + self.h - self.bottom) / 2:.0f}) '
                   f'rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
        return "".join(out)

    def svg(self, body: str, legend: Sequence[tuple[str, str]] = ()) -> str:
        keys = "".join(f'<g transform="translate({self.w - self.right + 10} {self.top + 4 + 14 * i})">'
                       f'<rect width="10" height="10" fill="{c}"/>'
                       f'<text class="tick" x="14" y="9">{escape(n)}</text></g>'
                       for i, (n, c) in enumerate(legend))
        return (f'<svg class="chart" viewBox="0 0 {self.w} {self.h}" width="{self.w}" height="{self.h}" '
                f'role="img">{body}{keys}</svg>')


def _finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]


def _finite_series(series: Sequence[tuple[str, Sequence[tuple[float, float]]]]) -> list[tuple[str, list]]:
    """Each named series' finite (x, y) points; series left without any are dropped."""
    clean = [(name, [(float(x), float(y)) for x, y in pts if len(_finite([x, y])) == 2]) for name, pts in series]
    return [(n, p) for n, p in clean if p]


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, xlabel: str, ylabel: str,
               width: int = 480, height: int = 220) -> str:
    """Curves of (x, y) points, one colour each, with a legend; '' when no series has a finite point."""
    clean = _finite_series(series)
    if not clean:
        return ""
    frame = _Frame([x for _, p in clean for x, _ in p], [y for _, p in clean for _, y in p], width=width, height=height,
                   legend=len(clean))
    body = [frame.axes(xlabel, ylabel)]
    for i, (_, pts) in enumerate(clean):
        colour = SERIES[i % len(SERIES)]
        coords = " ".join(f"{frame.px(x):.1f},{frame.py(y):.1f}" for x, y in pts)
        body.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" points="{coords}"/>')
        if len(pts) <= 40:
            body += [f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="2.2" fill="{colour}"/>' for x, y in pts]
    return frame.svg("".join(body), [(n, SERIES[i % len(SERIES)]) for i, (n, _) in enumerate(clean)])


TICK_PX = 10
"""Font size of tick labels (svg.chart in base.html); a character is taken as 0.6 of it wide."""


def text_width(text: str, size: float = TICK_PX) -> float:
    """Estimated width in pixels of `text` at font size `size`."""
    return len(text) * size * 0.6


def _group_labels(frame: _Frame, groups: Sequence[str], rotate: bool) -> list[str]:
    """Labels under the groups: centred, or rotated 45 degrees and ending at the group's centre."""
    out = []
    for g, name in enumerate(groups):
        x, y = frame.px(g + 0.5), frame.h - frame.bottom + 13
        turn = f' transform="rotate(-45 {x:.1f} {y - 4})" text-anchor="end"' if rotate else ' text-anchor="middle"'
        out.append(f'<text class="tick group" x="{x:.1f}" y="{y}"{turn}>{escape(name)}</text>')
    return out


def grouped_bars(groups: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]], *, ylabel: str,
                 width: int = 640, height: int = 260) -> str:
    """One group of bars per entry of `groups`, one bar per series (None: no bar); '' when nothing is finite.

    Many groups widen the chart (at least 12 px per bar); labels wider than their group are rotated
    45 degrees, with the bottom (and, for the first labels, the left) margin grown to hold them.
    """
    values = _finite([v for _, vs in series for v in vs])
    if not groups or not values:
        return ""
    legend = min(150, width // 4) if series else 0
    width = max(width, 56 + 12 + legend + len(groups) * max(24, 12 * len(series)))
    group_px = (width - 56 - 12 - legend) / len(groups)
    longest = max(text_width(g) for g in groups)
    rotate = longest > 0.9 * group_px
    drop = math.ceil(longest * math.sqrt(0.5)) if rotate else 0  # 45 degrees: as far down as across
    left = max(56, drop - int(group_px / 2) + 4)
    frame = _Frame([0, len(groups)], values, width=width + left - 56, height=height + drop, zero_y=True,
                   legend=len(series), left=left, bottom=34 + drop)
    body = [frame.axes("", ylabel, x_ticks=False), *_group_labels(frame, groups, rotate)]
    slot = (frame.px(1) - frame.px(0)) * 0.8 / max(len(series), 1)
    for g, name in enumerate(groups):
        for s, (label, vs) in enumerate(series):
            v = vs[g] if g < len(vs) else None
            if not _finite([v]):
                continue
            x = frame.px(g + 0.1) + s * slot
            top, base = frame.py(float(v)), frame.py(0.0)
            body.append(f'<rect x="{x:.1f}" y="{min(top, base):.1f}" width="{slot * 0.92:.1f}" '
                        f'height="{abs(base - top):.1f}" fill="{SERIES[s % len(SERIES)]}">'
                        f'<title>{escape(label)} / {escape(name)}: {v:.4f}</title></rect>')
    return frame.svg("".join(body), [(n, SERIES[i % len(SERIES)]) for i, (n, _) in enumerate(series)])


def scatter(series: Sequence[tuple[str, Sequence[tuple[float, float]]]], *, xlabel: str, ylabel: str,
            width: int = 480, height: int = 260) -> str:
    """Points, one colour per series, with a dashed y = 0 line when 0 is in range; '' without finite points."""
    clean = _finite_series(series)
    if not clean:
        return ""
    frame = _Frame([x for _, p in clean for x, _ in p], [y for _, p in clean for _, y in p], width=width, height=height,
                   legend=len(clean))
    body = [frame.axes(xlabel, ylabel)]
    if frame.y0 < 0 < frame.y1:
        body.append(f'<line class="zero" x1="{frame.left}" x2="{frame.w - frame.right}" '
                    f'y1="{frame.py(0):.1f}" y2="{frame.py(0):.1f}"/>')
    for i, (_, pts) in enumerate(clean):
        colour = SERIES[i % len(SERIES)]
        body += [f'<circle cx="{frame.px(x):.1f}" cy="{frame.py(y):.1f}" r="3" fill="{colour}" fill-opacity="0.7"/>'
                 for x, y in pts]
    return frame.svg("".join(body), [(n, SERIES[i % len(SERIES)]) for i, (n, _) in enumerate(clean)])
