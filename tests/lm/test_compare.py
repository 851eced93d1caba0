"""`lm compare`: % of none per domain with standard errors and bootstrap intervals, mean steps, Spearman's rho."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from testtime.lm.compare import (
    Run,
    adaptive_curve,
    adaptive_steps,
    as_json,
    bootstrap_ci,
    compare,
    find_runs,
    markdown,
    rank,
    resamples,
    spearman,
)
from testtime.lm.records import PromptResult


def test_spearman_matches_hand_computed_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 4, 9, 100]) == pytest.approx(1.0)  # ranks only: any monotone map
    # ties share their average rank: y ranks 1, 2, 3.5, 5, 3.5 -> rho = 8 / sqrt(10 x 9.5)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert list(rank(np.array([3.0, 1.0, 3.0, 2.0]))) == [3.5, 1.0, 3.5, 2.0]
    assert spearman([1, 2], [2, 1]) is None and spearman([1, 2, 3], [5, 5, 5]) is None
    with pytest.raises(ValueError, match="pairs"):
        spearman([1, 2, 3], [1, 2])


def rec(pid, domain, bpb, steps=0, var=None):
    """An ok record of `bpb` bits per byte (over 1 byte: bits / bytes is `bpb` exactly)."""
    before, after = var if var is not None else (None, None)
    return PromptResult(prompt_id=pid, domain=domain, bits=bpb, bytes=1, steps=steps, select_ms=0.0, nn_select_ms=0.0,
                        var_before=before, var_after=after)


def run(label, records):
    return Run(label, None, {r.prompt_id: r for r in records})  # type: ignore[arg-type]


def test_cells_are_means_of_per_prompt_ratios_with_standard_errors():
    none = run("none", [rec("a", "code", 1.0), rec("b", "code", 2.0), rec("c", "docs", 0.5)])
    sift = run("sift", [rec("a", "code", 0.9, 3, (1.0, 0.2)), rec("b", "code", 1.0, 5, (1.0, 0.5)),
                        rec("c", "docs", 0.5, 1, (1.0, 0.9))])
    nn = run("nn", [rec("a", "code", 1.1, 2)])  # b and c missing
    table = compare([sift, none, nn])
    assert table.methods == ["sift", "nn"] and table.domains == ["code", "docs", "All"]
    code = table.cells[("code", "sift")]
    assert (code.pct, code.n) == (pytest.approx(70.0), 2)  # ratios 90 and 50
    assert code.se == pytest.approx(np.std([90, 50], ddof=1) / math.sqrt(2))
    assert table.cells[("All", "sift")].pct == pytest.approx((90 + 50 + 100) / 3)
    assert math.isnan(table.cells[("docs", "sift")].se)
    assert ("docs", "nn") not in table.cells and table.missing == {"sift": 0, "nn": 2}
    assert table.base["code"] == (2, pytest.approx(1.5)) and table.base["All"] == (3, pytest.approx(3.5 / 3))
    assert table.steps == {"sift": 3.0, "nn": 2.0}
    # reductions 0.8, 0.5, 0.1 against gains 0.1, 1.0, 0.0: ranks (3, 2, 1) vs (2, 3, 1) -> rho = 0.5
    assert table.rho["sift"] == (pytest.approx(0.5), 3) and table.rho["nn"] == (None, 0)
    lines = markdown(table)
    assert lines[0] == "| domain | prompts | none bpb | sift | nn |"
    assert lines[2] == f"| code | 2 | 1.5000 | 70.0 ({code.se:.1f}) | 110.0 (-) |"
    lo, hi, n = code.ci["none"]  # sift's per-prompt differences from none: -10 and -50 points
    assert n == 2 and lines[3] == f"|   vs none |  |  | [{lo:+.1f}, {hi:+.1f}] | - |"  # nn: 1 prompt, no interval
    assert lines[-2] == "| mean steps |  | 0 | 3.0 | 2.0 |"
    assert lines[-1] == "| Spearman ρ(Δσ², gain) |  |  | +0.500 (n=3) | - |"


def test_needs_exactly_one_baseline():
    with pytest.raises(ValueError, match="exactly one `none` run"):
        compare([run("sift", [rec("a", "x", 1.0)])])


def test_runs_are_read_from_out_or_method_dirs_and_bad_records_counted(tmp_path):
    for method, bpbs in (("none", [1.0, 2.0]), ("sift", [0.5, 1.0])):
        results = tmp_path / "out" / method / "results"
        results.mkdir(parents=True)
        (tmp_path / "out" / method / "config.json").write_text("{}")
        for i, b in enumerate(bpbs):
            (results / f"p{i}.json").write_text(json.dumps(rec(f"p{i}", "d", b).to_json()))
    (tmp_path / "out" / "sift" / "results" / "bad.json").write_text("{not json")
    (tmp_path / "out" / "sift" / "results" / "failed.json").write_text(json.dumps({"prompt_id": "p9",
                                                                                   "status": "failed"}))
    runs = find_runs([tmp_path / "out"])
    assert [r.label for r in runs] == ["none", "sift"] and runs[1].unusable == 2 and len(runs[1].results) == 2
    assert compare(runs).cells[("All", "sift")].pct == pytest.approx(50.0)
    other = tmp_path / "other" / "sift"
    (other / "results").mkdir(parents=True)
    (other / "config.json").write_text("{}")
    labels = [r.label for r in find_runs([tmp_path / "out", other])]
    assert labels == ["none", "out/sift", "other/sift"]  # two runs of one name: their parents tell them apart
    with pytest.raises(ValueError, match="not a run directory"):
        find_runs([tmp_path / "nowhere"])


def test_the_bootstrap_interval_matches_a_hand_computation_over_every_resample():
    # differences -3, 0, 6: all 27 resamples of 3 prompts, their means sorted are -3 (once), -2 (x3), ...,
    # 4 (x3), 6 (once). numpy's linear percentile: 2.5% sits at rank 26 x 0.025 = 0.65 between -3 and -2,
    # 97.5% at rank 25.35 between 4 and 6.
    every = np.array(list(itertools.product(range(3), repeat=3)))
    assert bootstrap_ci([-3.0, 0.0, 6.0], every) == (pytest.approx(-2.35), pytest.approx(4.7))
    # hand-chosen resamples: means 3, 0, -1 -> percentiles at ranks 0.05 and 1.95 of (-1, 0, 3)
    assert bootstrap_ci([-3.0, 0.0, 6.0], np.array([[0, 2, 2], [1, 1, 1], [0, 1, 1]])) == \
        (pytest.approx(-0.95), pytest.approx(2.85))
    # random resamples follow the exact bootstrap distribution, the 27 equally likely means: it puts
    # 1/27 = 3.7% > 2.5% on -3 and on 6, so those are its 2.5% and 97.5% quantiles; 20000 draws land on them
    means = np.sort(np.array([-3.0, 0.0, 6.0])[every].mean(axis=1))
    exact = means[math.ceil(0.025 * 27) - 1], means[math.ceil(0.975 * 27) - 1]
    assert exact == (-3.0, 6.0) and bootstrap_ci([-3.0, 0.0, 6.0], resamples(3, 20000, seed=1)) == exact


def test_resamples_depend_on_seed_and_size_only():
    assert np.array_equal(resamples(5, 100, seed=3), resamples(5, 100, seed=3))
    assert not np.array_equal(resamples(5, 100, seed=3), resamples(5, 100, seed=4))
    assert resamples(5, 100).shape == (100, 5) and resamples(5, 100).max() == 4


def test_intervals_pair_prompts_against_none_and_nn():
    bpbs = {"none": [1.0, 2.0, 1.0, 2.0, 1.0], "nn": [0.96, 1.9, 0.97, None, 0.95],
            "sift": [0.9, 1.86, 0.93, 1.8, 0.91]}  # sift beats both on every prompt; nn lacks p3
    runs = [run(m, [rec(f"p{i}", "code" if i < 3 else "docs", b) for i, b in enumerate(bs) if b is not None])
            for m, bs in bpbs.items()]
    table = compare(runs, samples=500, seed=7)
    assert table.references == ["none", "nn"] and table.unpaired == {"nn": 0, "sift": 1}
    cell = table.cells[("All", "sift")]
    none_ids, nn_ids = [0, 1, 2, 3, 4], [0, 1, 2, 4]  # the interval vs nn leaves p3 out
    by_none = [100 * (bpbs["sift"][i] - bpbs["none"][i]) / bpbs["none"][i] for i in none_ids]
    by_nn = [100 * (bpbs["sift"][i] - bpbs["nn"][i]) / bpbs["none"][i] for i in nn_ids]
    assert cell.ci["none"] == (*bootstrap_ci(by_none, resamples(5, 500, 7)), 5)
    assert cell.ci["nn"] == (*bootstrap_ci(by_nn, resamples(4, 500, 7)), 4)
    assert np.mean(by_none) == pytest.approx(cell.pct - 100)  # the interval is around the cell's own statistic
    assert cell.ci["none"][1] < 0 and cell.ci["nn"][1] < 0  # uniformly better: both exclude zero
    assert min(by_none) <= cell.ci["none"][0] and cell.ci["nn"][1] <= max(by_nn)
    assert "nn" not in table.cells[("All", "nn")].ci and "nn" not in table.cells[("docs", "sift")].ci  # 1 pair
    assert compare(runs, samples=500, seed=7).cells[("All", "sift")].ci == cell.ci  # deterministic
    assert compare(runs, samples=500, seed=8).cells[("All", "sift")].ci != cell.ci
    data = json.loads(json.dumps(as_json(table)))
    assert data["bootstrap"]["samples"] == 500 and data["unpaired"]["sift"] == 1
    assert {"domain": "All", "method": "sift", "pct": cell.pct, "se": cell.se, "n": 5,
            "ci": {k: list(v) for k, v in cell.ci.items()}} in data["cells"]
    text = "\n".join(markdown(table))
    assert f"|   vs nn |  |  | - | [{cell.ci['nn'][0]:+.1f}, {cell.ci['nn'][1]:+.1f}] |" in text
    with pytest.raises(ValueError, match="--bootstrap-samples"):
        compare(runs, samples=0)


def test_the_cli_prints_and_writes_the_intervals(tmp_path):
    from cli_helpers import invoke

    for method, scale in (("none", 1.0), ("nn", 0.97), ("sift", 0.9)):
        (tmp_path / method / "results").mkdir(parents=True)
        (tmp_path / method / "config.json").write_text("{}")
        for i in range(6):
            (tmp_path / method / "results" / f"p{i}.json").write_text(
                json.dumps(rec(f"p{i}", "code", (1 + i / 10) * scale * (1 + (i % 2) / 50)).to_json()))
    args = ["lm", "compare", str(tmp_path), "--bootstrap-seed", "3", "--bootstrap-samples", "200"]
    result = invoke(*args, "--json", tmp_path / "cmp.json")
    assert result.exit_code == 0, result.output
    cell = compare(find_runs([tmp_path]), samples=200, seed=3).cells[("All", "sift")]
    lines = result.output.splitlines()
    vs_nn = [ln.split("│")[-2].strip() for ln in lines if ln.startswith("│   vs nn ")]
    assert vs_nn == [f"[{cell.ci['nn'][0]:+.1f}, {cell.ci['nn'][1]:+.1f}]"] * 2  # code, then All
    assert "200 resamples, seed 3" in " ".join(result.output.split())
    saved = json.loads((tmp_path / "cmp.json").read_text())
    assert saved["bootstrap"] == {"samples": 200, "seed": 3, "interval": 0.95, "unit": "points of none"}
    bad = invoke(*args[:-1], "0")
    assert bad.exit_code == 2 and "--bootstrap-samples" in bad.output


def test_adaptive_curve_reads_each_alphas_steps_and_bits_off_the_trace():
    """Adaptive SIFT stops before pick m once alpha * m * sigma_m > 1; its bits are the trace's at that step."""
    sigmas = [0.5, 0.3, 0.25]  # m * sigma_m: 0.5, 0.6, 0.75
    assert [adaptive_steps(sigmas, a) for a in (0.5, 1.0, 1.5, 1.9, 2.5)] == [3, 3, 2, 1, 0]
    assert adaptive_steps(sigmas, 1.7) == 1 and adaptive_steps(sigmas, 1.4) == 2
    a = PromptResult(prompt_id="a", domain="code", bits=6.0, bytes=3, steps=3, select_ms=0.0, nn_select_ms=0.0,
                     sigmas=sigmas, bits_at_step=[10.0, 9.0, 7.0, 6.0])
    b = PromptResult(prompt_id="b", domain="code", bits=4.0, bytes=2, steps=2, select_ms=0.0, nn_select_ms=0.0,
                     sigmas=[0.9, 0.1], bits_at_step=[5.0, 4.5, 4.0])  # m * sigma_m: 0.9, 0.2
    none = run("none", [PromptResult(prompt_id=p, domain="code", bits=bits, bytes=1, steps=0, select_ms=0.0,
                                     nn_select_ms=0.0) for p, bits in (("a", 10.0), ("b", 5.0), ("c", 1.0))])
    curve = adaptive_curve(run("sift", [a, b]), none, [1.0, 1.4, 2.5])
    # alpha 1: a takes 3 (6/10), b takes 2 (4/5); 1.4: a 2 (7/10), b 1 (0.9 * 1.4 > 1: 0 steps, 5/5)
    assert curve[0] == {"alpha": 1.0, "prompts": 2, "steps": 2.5, "pct": pytest.approx((60 + 80) / 2)}
    assert curve[1]["steps"] == 1.0 and curve[1]["pct"] == pytest.approx((70 + 100) / 2)
    assert curve[2]["steps"] == 0.0 and curve[2]["pct"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="--trace"):
        adaptive_curve(run("sift", [rec("a", "code", 0.5)]), none, [1.0])
