"""Methods side by side: bits per byte as % of the untouched model, per domain, with standard errors.

The paper's table shape (Hübotter et al., 2025): one row per domain, one column per method, each
cell the mean over the domain's prompts of 100 x bpb(method) / bpb(none) for the same prompt, with
the standard error of that mean across prompts; an "All" row over every prompt; the mean steps
each method took. A prompt counts in a column only where both the method and `none` scored it.

Under each cell, 95% paired-bootstrap intervals of the method's difference from `none` and from
`nn`, in percentage points of none (the cell's own unit). Per prompt i scored by the method M,
the reference R and none: d_i = 100 x (bpb_M(i) - bpb_R(i)) / bpb_none(i), so that mean(d) is
exactly cell(M) - cell(R) over those prompts (against none, R = none and mean(d) = cell(M) - 100).
The prompts are resampled with replacement `samples` times; each resample's mean of d is one
draw, and the interval is the 2.5th and 97.5th percentile of the draws (numpy's linear
interpolation). An interval below 0 says M needs fewer bits than R on that domain's prompts.
Prompts R lacks are left out of that interval (and counted in `Comparison.unpaired`).

Beside it, the paper's second claim, that the surrogate's uncertainty predicts the gain: over the
paired prompts, Spearman's rank correlation between the uncertainty reduction
sigma_0^2 - sigma_n^2 (`var_before - var_after` in each record) and the realised gain
bpb(none) - bpb(method).

    runs = find_runs(["runs/lm"])              # OUT/<method>/ directories written by `lm eval`
    table = compare(runs)                       # baseline: the run labelled `none`
    print("\\n".join(markdown(table)))
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from testtime.lm.records import PromptResult
from testtime.records import RecordError, load_record

__all__ = ["Cell", "Comparison", "Run", "adaptive_curve", "adaptive_steps", "as_json", "bootstrap_ci", "compare",
           "find_runs", "markdown", "rank", "resamples", "spearman"]

ALL = "All"
NN = "nn"
"""The second reference of the intervals: the run labelled `nn` (nearest neighbours), where there is one."""


@dataclass
class Run:
    """One method's finished prompts, read from its run directory."""

    label: str
    """Column name: the run directory's name (with its parent's when two runs share a name)."""
    path: Path
    results: dict[str, PromptResult]
    """prompt id -> its record (status ok only)."""
    unusable: int = 0
    """Records that failed or could not be read."""


@dataclass
class Cell:
    """One method in one domain: % of none over the paired prompts."""

    pct: float
    """Mean of 100 x bpb(method) / bpb(none) over the paired prompts."""
    se: float
    """Standard error of that mean (NaN for a single prompt)."""
    n: int
    """Paired prompts."""
    ci: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    """reference (`none`, `nn`) -> 95% bootstrap interval of cell(method) - cell(reference) in percentage
    points, and the prompts it pairs; absent where under 2 prompts pair."""


@dataclass
class Comparison:
    baseline: str
    methods: list[str]
    domains: list[str]
    """Domains in order, "All" last."""
    base: dict[str, tuple[int, float]] = field(default_factory=dict)
    """domain -> (prompts, bpb of the baseline: total bits / total bytes)."""
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    """(domain, method) -> Cell; absent where no prompt pairs."""
    steps: dict[str, float] = field(default_factory=dict)
    """method -> mean steps per prompt."""
    rho: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    """method -> (Spearman rho of uncertainty reduction vs gain, prompts with both), rho None if undefined."""
    missing: dict[str, int] = field(default_factory=dict)
    """method -> baseline prompts the method has no result for."""
    references: list[str] = field(default_factory=list)
    """What the intervals compare each method against: the baseline, then `nn` where there is one."""
    unpaired: dict[str, int] = field(default_factory=dict)
    """method -> its prompts (paired with the baseline) that `nn` has no result for: left out of `vs nn`."""
    samples: int = 2000
    """Bootstrap resamples behind each interval."""
    seed: int = 0
    """numpy seed of the resamples."""


def find_runs(paths: Iterable[str | Path]) -> list[Run]:
    """The runs in `paths`: each a run directory (config.json, results/) or a directory of them (OUT)."""
    dirs: list[Path] = []
    for p in map(Path, paths):
        if _is_run(p):
            dirs.append(p)
        elif p.is_dir() and (found := sorted(d for d in p.iterdir() if _is_run(d))):
            dirs.extend(found)
        else:
            raise ValueError(f"{p}: not a run directory of `testtime lm eval` (no config.json and results/ in it "
                             "or its subdirectories); give OUT or OUT/METHOD")
    names = [d.name for d in dirs]
    runs = []
    for d in dirs:
        label = d.name if names.count(d.name) == 1 else f"{d.parent.name}/{d.name}"
        runs.append(_read_run(d, label))
    return runs


def _is_run(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "results").is_dir()


def _read_run(path: Path, label: str) -> Run:
    run = Run(label, path, {})
    for f in sorted((path / "results").glob("*.json")):
        try:
            record = load_record(f, PromptResult)
        except RecordError:
            run.unusable += 1
            continue
        if record.ok:
            run.results[record.prompt_id] = record
        else:
            run.unusable += 1
    return run


def rank(a: np.ndarray) -> np.ndarray:
    """1-based ranks of `a`, ties sharing their average rank."""
    a = np.asarray(a, dtype=np.float64)
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    for value in np.unique(a):  # average the ranks of tied values
        tied = a == value
        if tied.sum() > 1:
            ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Spearman's rank correlation (Pearson's of the average ranks); None for < 3 pairs or a constant side."""
    x, y = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    if len(x) != len(y):
        raise ValueError(f"spearman needs pairs: {len(x)} x values but {len(y)} y values")
    if len(x) < 3:
        return None
    rx, ry = rank(x) - (len(x) + 1) / 2, rank(y) - (len(y) + 1) / 2
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return None if denom == 0 else float(rx @ ry) / denom


def resamples(n: int, samples: int = 2000, seed: int = 0) -> np.ndarray:
    """(samples, n) prompt indices drawn with replacement; a function of (n, samples, seed) only, so every
    method and reference with the same number of prompts is resampled alike, whatever else is compared."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def bootstrap_ci(diffs: Iterable[float], indices: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of mean(diffs) over the resamples `indices` ((samples, n) rows of
    indices into `diffs`, e.g. `resamples(n)`): the 2.5th and 97.5th percentile of the row means."""
    means = np.asarray(list(diffs), dtype=np.float64)[indices].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def _intervals(cell: Cell, ids: list[str], bpb: dict[str, dict[str, float]], method: str,
               references: list[str], samples: int, seed: int) -> None:
    """Fill `cell.ci`: the method against each reference over the prompts in `ids` both scored."""
    base = references[0]
    for ref in references:
        pairs = [p for p in ids if p in bpb[ref]]
        if len(pairs) > 1 and ref != method:
            diffs = [100 * (bpb[method][p] - bpb[ref][p]) / bpb[base][p] for p in pairs]
            cell.ci[ref] = (*bootstrap_ci(diffs, resamples(len(pairs), samples, seed)), len(pairs))


def _cell(ratios: list[float]) -> Cell:
    r = np.asarray(ratios)
    se = float(r.std(ddof=1) / math.sqrt(len(r))) if len(r) > 1 else float("nan")
    return Cell(float(r.mean()), se, len(r))


def _named(runs: list[Run], name: str) -> list[Run]:
    return [r for r in runs if r.label.rsplit("/", 1)[-1] == name]


def compare(runs: list[Run], baseline: str = "none", *, samples: int = 2000, seed: int = 0) -> Comparison:
    """Every run but the baseline against the baseline run (labelled `baseline`), prompt by prompt, with
    bootstrap intervals (`samples` resamples, numpy seed `seed`) against it and against the one `nn` run."""
    base_runs = _named(runs, baseline)
    if len(base_runs) != 1:
        raise ValueError(f"need exactly one `{baseline}` run to compare against, found {len(base_runs)} "
                         f"(runs: {', '.join(r.label for r in runs)})")
    if samples < 1:
        raise ValueError(f"--bootstrap-samples must be at least 1, not {samples}")
    base = base_runs[0].results
    domain_of = {pid: r.domain or "-" for pid, r in base.items()}
    domains = sorted(set(domain_of.values())) + [ALL]
    methods = [r for r in runs if r is not base_runs[0]]
    nn_runs = _named(methods, NN) if baseline != NN else []
    refs = [base_runs[0]] + (nn_runs if len(nn_runs) == 1 else [])
    out = Comparison(baseline, [r.label for r in methods], domains, references=[r.label for r in refs],
                     samples=samples, seed=seed)
    bpb = {r.label: {p: rec.bpb for p, rec in r.results.items()} for r in runs}
    for d in domains:
        ids = [pid for pid in base if d == ALL or domain_of[pid] == d]
        out.base[d] = (len(ids), sum(base[i].bits for i in ids) / sum(base[i].bytes for i in ids))
    for run in methods:
        paired = [pid for pid in base if pid in run.results]
        out.missing[run.label] = len(base) - len(paired)
        if len(refs) > 1:
            out.unpaired[run.label] = sum(p not in refs[1].results for p in paired)
        for d in domains:
            ids = [p for p in paired if d == ALL or domain_of[p] == d]
            if ids:
                cell = out.cells[(d, run.label)] = _cell([100 * run.results[p].bpb / base[p].bpb for p in ids])
                _intervals(cell, ids, bpb, run.label, out.references, samples, seed)
        out.steps[run.label] = float(np.mean([r.steps for r in run.results.values()])) \
            if run.results else float("nan")
        with_var = [p for p in paired if run.results[p].var_before is not None
                    and run.results[p].var_after is not None]
        reduction = [run.results[p].var_before - run.results[p].var_after for p in with_var]
        gain = [base[p].bpb - run.results[p].bpb for p in with_var]
        out.rho[run.label] = (spearman(reduction, gain), len(with_var))
    return out


def adaptive_steps(sigmas: list[float], alpha: float) -> int:
    """The steps adaptive SIFT with `alpha` takes, read off a plain SIFT run's sigmas (sigma_m after pick m):
    `select_sift`'s rule stops before pick m once alpha * m * sigma_m > 1, so it takes a prefix of the picks."""
    for m, sigma in enumerate(sigmas, start=1):
        if alpha * m * sigma > 1:
            return m - 1
    return len(sigmas)


def adaptive_curve(run: Run, base: Run, alphas: Iterable[float]) -> list[dict[str, float]]:
    """The compute-gain curve of adaptive SIFT from one plain SIFT run with `--trace` (every prompt's bits after
    each step): per alpha, over the prompts both runs scored, the mean steps adaptive SIFT takes and the mean of
    100 x its bits / none's bits (% of none, as the table). Needs the run's `bits_at_step` and `sigmas`."""
    ids = [p for p, rec in run.results.items() if p in base.results and rec.bits_at_step and rec.sigmas is not None]
    if not ids:
        raise ValueError(f"{run.label}: no prompt has bits_at_step (run `lm eval --select sift --trace`)")
    curve = []
    for alpha in alphas:
        steps = [min(adaptive_steps(run.results[p].sigmas or [], alpha), len(run.results[p].bits_at_step or []) - 1)
                 for p in ids]
        pct = [100 * (run.results[p].bits_at_step or [])[k] / (base.results[p].bits or math.nan)
               for p, k in zip(ids, steps, strict=True)]
        curve.append({"alpha": alpha, "prompts": len(ids), "steps": float(np.mean(steps)), "pct": float(np.mean(pct))})
    return curve


def format_cell(cell: Cell | None) -> str:
    """`96.7 (1.2)`: % of none and its standard error; `-` where no prompt pairs."""
    if cell is None:
        return "-"
    return f"{cell.pct:.1f} ({cell.se:.1f})" if math.isfinite(cell.se) else f"{cell.pct:.1f} (-)"


def format_ci(cell: Cell | None, reference: str) -> str:
    """`[-1.2, +0.4]`: the cell's 95% interval against `reference` in percentage points; `-` where there is none."""
    if cell is None or reference not in cell.ci:
        return "-"
    lo, hi, _ = cell.ci[reference]
    return f"[{lo:+.1f}, {hi:+.1f}]"


def rows(table: Comparison) -> list[list[str]]:
    """The table as text cells: header, a row per domain ("All" last), each followed by a `vs REF` row per
    reference with the bootstrap intervals; then mean steps and the correlation."""
    out = [["domain", "prompts", f"{table.baseline} bpb", *table.methods]]
    for d in table.domains:
        n, bpb = table.base[d]
        out.append([d, str(n), f"{bpb:.4f}", *(format_cell(table.cells.get((d, m))) for m in table.methods)])
        for ref in table.references:
            out.append([f"  vs {ref}", "", "", *(format_ci(table.cells.get((d, m)), ref) for m in table.methods)])
    out.append(["mean steps", "", "0", *(f"{table.steps[m]:.1f}" for m in table.methods)])
    rho = [table.rho[m] for m in table.methods]
    out.append(["Spearman ρ(Δσ², gain)", "", "",
                *("-" if r is None else f"{r:+.3f} (n={n})" for r, n in rho)])
    return out


def as_json(table: Comparison) -> dict:
    """The comparison as plain JSON data: per domain and method the %, its standard error, the prompts
    and the intervals `{reference: [lo, hi, prompts]}`."""
    cells = [{"domain": d, "method": m, "pct": c.pct, "se": c.se if math.isfinite(c.se) else None, "n": c.n,
              "ci": {ref: list(ci) for ref, ci in c.ci.items()}} for (d, m), c in table.cells.items()]
    steps = {m: v if math.isfinite(v) else None for m, v in table.steps.items()}
    return {"baseline": table.baseline, "methods": table.methods, "domains": table.domains,
            "references": table.references, "bootstrap": {"samples": table.samples, "seed": table.seed,
                                                          "interval": 0.95, "unit": f"points of {table.baseline}"},
            "base": {d: {"prompts": n, "bpb": b} for d, (n, b) in table.base.items()},
            "cells": cells, "steps": steps, "missing": table.missing, "unpaired": table.unpaired,
            "rho": {m: {"rho": r, "n": n} for m, (r, n) in table.rho.items()}}


def markdown(table: Comparison) -> list[str]:
    """The comparison as markdown table lines (BENCHMARKS.md)."""
    cells = rows(table)
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return lines + ["| " + " | ".join(r) + " |" for r in cells[1:]]
