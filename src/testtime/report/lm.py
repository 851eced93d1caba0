"""The report of `lm eval` runs: bits per byte per domain, % of the untouched model, steps, selection time.

    write_lm_report(["runs/lm"], "runs/lm/report.html")   # every OUT/SELECT/ inside runs/lm

A run is one selector's directory (`OUT/SELECT/config.json`, `OUT/SELECT/results/*.json`, what
`testtime.lm.evaluate` writes); a directory holding several of them stands for all of them. The
base of a run is the `select none` run beside it (same OUT), else the only `none` run given.
A record that does not read (`lm.records.PromptResult`) counts as failed, never fails the report; keys
that older versions did not write leave cells empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testtime.config import rename_keys
from testtime.lm.records import RENAMED_SETTINGS, PromptResult
from testtime.records import RecordError, load_record
from testtime.report.arc import read_json
from testtime.report.render import render_to
from testtime.report.svg import grouped_bars, scatter


@dataclass
class LmRun:
    path: Path
    label: str
    select: str
    settings: dict[str, Any]
    results: list[PromptResult]
    """Records with status ok (their bits and bytes usable)."""
    failed: int


def _number(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _run_dirs(paths: list[Path]) -> list[Path]:
    found = []
    for path in paths:
        if (path / "config.json").is_file() or (path / "results").is_dir():
            found.append(path)
        elif path.is_dir():
            found += [p for p in sorted(path.iterdir()) if (p / "config.json").is_file() or (p / "results").is_dir()]
    return found


def load_lm_runs(paths: list[str | Path]) -> list[LmRun]:
    """The `lm eval` runs in `paths`; raises FileNotFoundError when there is none."""
    dirs = _run_dirs([Path(p) for p in paths])
    if not dirs:
        raise FileNotFoundError("no `lm eval` run directory (config.json or results/) in "
                                + ", ".join(map(str, paths)))
    runs = []
    for path in dirs:
        config = read_json(path / "config.json")
        settings = config.get("settings") if isinstance(config, dict) else None
        settings = rename_keys(settings, RENAMED_SETTINGS) if isinstance(settings, dict) else {}
        results, failed = [], 0
        for file in sorted((path / "results").glob("*.json")):
            try:
                record = load_record(file, PromptResult)
            except RecordError:
                failed += 1
                continue
            if record.ok:
                results.append(record)
            else:
                failed += 1
        select = str(settings.get("config.ttt.select") or (results[0].select if results else None) or path.name)
        method = str(results[0].method or select) if results else select  # e.g. sift-adaptive
        runs.append(LmRun(path, method, select, settings, results, failed))
    runs.sort(key=lambda r: (r.select != "none", str(r.path)))  # the base first
    _name_apart(runs)
    return runs


def _name_apart(runs: list[LmRun]) -> None:
    """The same selector twice (two seeds, two OUTs): add the shortest tail of OUT's path that tells them apart."""
    for name in {r.label for r in runs}:
        same = [r for r in runs if r.label == name]
        for depth in range(1, 1 + max(len(r.path.parent.parts) for r in same)):
            tails = ["/".join(r.path.parent.parts[-depth:]) for r in same]
            if len(same) == 1 or len(set(tails)) == len(tails):
                break
        if len(same) > 1:
            for run, tail in zip(same, tails):
                run.label = f"{name} ({tail})"


def domain_bpb(results: list[PromptResult]) -> dict[str, float]:
    """Bits per byte per domain and over all prompts ("all"): total bits over total bytes."""
    groups: dict[str, list[PromptResult]] = {}
    for r in results:
        groups.setdefault(r.domain or "-", []).append(r)
    groups = dict(sorted(groups.items()))
    if results:
        groups["all"] = results
    return {d: sum(float(r.bits) for r in rs) / sum(float(r.bytes) for r in rs) for d, rs in groups.items()}


def base_of(run: LmRun, runs: list[LmRun]) -> LmRun | None:
    """The `none` run beside `run` (same OUT), else the only `none` run; None if there is no such run."""
    if run.select == "none":
        return None
    nones = [r for r in runs if r.select == "none"]
    beside = [r for r in nones if r.path.parent == run.path.parent]
    return (beside or (nones if len(nones) == 1 else [None]))[0]


def domain_name(domain: str) -> str:
    """How a domain key is shown: the pooled "all" as "All"."""
    return "All" if domain == "all" else domain


def _mean(values: list[Any]) -> float | None:
    numbers = [v for v in map(_number, values) if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def uncertainty(record: PromptResult, kind: str) -> float | None:
    """`reduction`: sigma_0^2 - sigma_n^2 (`var_before - var_after`); `remaining`: the last sigma_n."""
    if kind == "reduction":
        before, after = record.var_before, record.var_after
        return None if before is None or after is None else before - after
    return record.sigmas[-1] if record.sigmas else None


def paired_pct(run: LmRun, base: LmRun, domains: list[str]) -> dict[str, tuple[float, float | None, int]]:
    """Per domain: the mean over prompts scored in both runs of 100 x bpb(run) / bpb(base), its standard
    error, and the prompts paired (the paper's table; `testtime.lm.compare` computes the same)."""
    base_bpb = {r.prompt_id: r.bpb for r in base.results}
    out = {}
    for d in domains:
        ratios = [100 * r.bpb / base_bpb[r.prompt_id] for r in run.results
                  if base_bpb.get(r.prompt_id) and (d == "all" or (r.domain or "-") == d)]
        if ratios:
            mean = sum(ratios) / len(ratios)
            var = sum((x - mean) ** 2 for x in ratios) / (len(ratios) - 1) if len(ratios) > 1 else None
            out[d] = (mean, None if var is None else math.sqrt(var / len(ratios)), len(ratios))
    return out


def gain_points(run: LmRun, base: LmRun, kind: str) -> list[tuple[float, float]]:
    """(uncertainty of `kind`, base bpb - run bpb) per prompt scored in both runs."""
    base_bpb = {r.prompt_id: r.bpb for r in base.results}
    points = []
    for r in run.results:
        u = uncertainty(r, kind)
        if u is not None and r.prompt_id in base_bpb:
            points.append((u, base_bpb[r.prompt_id] - r.bpb))
    return points


def lm_context(runs: list[LmRun]) -> dict[str, Any]:
    """The template context: per-run tables, the % of base table, grouped bars and the gain scatter."""
    bpb = {id(r): domain_bpb(r.results) for r in runs}
    domains = ["all"] + sorted({d for table in bpb.values() for d in table if d != "all"})  # All first: in sight
    rows = []
    for run in runs:
        base = base_of(run, runs)
        pct = paired_pct(run, base, domains) if base is not None else {}
        rows.append({"label": run.label, "path": str(run.path), "prompts": len(run.results), "failed": run.failed,
                     "bpb": bpb[id(run)], "pct": pct, "base": base.label if base is not None else None,
                     "steps": _mean([r.steps for r in run.results]),
                     "select_ms": _mean([r.select_ms for r in run.results]),
                     "nn_select_ms": _mean([r.nn_select_ms for r in run.results]),
                     "search_ms": _mean([r.search_ms for r in run.results]),
                     "train_s": _mean([r.train_s for r in run.results]),
                     "settings": run.settings})
    series = [(r["label"], [r["bpb"].get(d) for d in domains]) for r in rows]
    names = [domain_name(d) for d in domains]
    kind = "reduction" if any(uncertainty(r, "reduction") is not None for run in runs for r in run.results) \
        else "remaining"
    gains = [(run.label, gain_points(run, base, kind)) for run in runs if (base := base_of(run, runs)) is not None]
    return {
        "title": "testtime lm report", "domains": domains, "domain_names": dict(zip(domains, names)), "runs": rows,
        "bars": grouped_bars(names, series, ylabel="bits per byte (lower is better)"),
        "has_base": any(r["base"] for r in rows),
        "scatter": scatter([g for g in gains if g[1]], ylabel="gain: base bpb - bpb",
                           xlabel="uncertainty reduction sigma_0^2 - sigma_n^2" if kind == "reduction"
                           else "remaining uncertainty sigma_n after selection"),
        "scatter_note": "" if any(g[1] for g in gains) else
        ("no run beside a `select none` run records sigmas: no uncertainty / gain plot" if gains else
         "no `select none` run among these: no % of base table and no gain plot"),
    }


def write_lm_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Render the report of `run_dirs` to `out` (default FIRST_RUN_DIR/report.html); returns the path."""
    runs = load_lm_runs(list(run_dirs))
    return render_to("lm.html", out or Path(run_dirs[0]) / "report.html", **lm_context(runs))
