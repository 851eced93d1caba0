"""`lm compare`: % of none per domain with standard errors, mean steps, Spearman's rho; reading run dirs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from testtime.lm.compare import Run, compare, find_runs, markdown, rank, spearman


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
    r = {"prompt_id": pid, "domain": domain, "bits": bpb * 100, "bytes": 100, "bpb": bpb, "steps": steps,
         "status": "ok"}
    if var is not None:
        r["var_before"], r["var_after"] = var
    return r


def run(label, records):
    return Run(label, None, {r["prompt_id"]: r for r in records})  # type: ignore[arg-type]


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
            (results / f"p{i}.json").write_text(json.dumps(rec(f"p{i}", "d", b)))
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
