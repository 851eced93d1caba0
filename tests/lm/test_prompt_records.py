"""`lm eval` run directories written before typed records still load, compare and report.

The records are what `lm eval` wrote at 51a3f52 (before the envelope), copied from a real run of the tiny
model: prompt `a` under `select none` and under `sift`, and a prompt whose continuation did not fit.
"""

from __future__ import annotations

import json
import re

import pytest

from testtime.lm.compare import compare, find_runs
from testtime.lm.records import PromptResult
from testtime.records import load_record
from testtime.report import write_lm_report

OLD_NONE = {"prompt_id": "a", "domain": "prose", "select": "none", "bits": 140.05119067676097, "bytes": 43,
            "picks": [], "sigmas": [], "sigma_before": [], "sigma_after": [], "var_before": None, "var_after": None,
            "stopped": None, "stopped_at": None, "method": "none", "select_ms": 0.0, "nn_select_ms": 0.0,
            "search_ms": 0.0, "train_s": 0.0, "steps": 0, "tokens": 0, "bpb": 3.2570044343432785, "status": "ok",
            "seconds": 0.04276956200010318, "fingerprint": "52a285c3dbe1017a"}
OLD_SIFT = {"prompt_id": "a", "domain": "prose", "select": "sift", "bits": 139.84578010201525, "bytes": 43,
            "picks": [0, 0], "sigmas": [0.5413178226755498, 0.5380596444559407],
            "sigma_before": [1.000000067179426, 0.5413178226755498],
            "sigma_after": [0.5413178226755498, 0.5380596444559407], "var_before": 1.0000001343588565,
            "var_after": 0.2895081809920533, "stopped": None, "stopped_at": None, "method": "sift",
            "select_ms": 0.26901999990514014, "nn_select_ms": 4.778360999807774, "search_ms": 26.045586000236653,
            "train_s": 0.1582161860001179, "steps": 2, "tokens": 20, "bpb": 3.252227444232913, "status": "ok",
            "seconds": 0.25718046300016795, "fingerprint": "ad0b971c30561f86"}
OLD_FAILED = {"prompt_id": "long", "domain": "noise", "select": "sift", "method": "sift", "status": "failed",
              "error": "ValueError: the continuation alone is 200 tokens, over the 64-token context; shorten it",
              "traceback": "Traceback (most recent call last):\n...\nValueError: the continuation alone is 200 tokens",
              "seconds": 0.0016488009996464825, "fingerprint": "ad0b971c30561f86"}


def write_old_out(root):
    """OUT as `lm eval --out OUT` left it for `select none` and `sift`."""
    for select, records in (("none", [OLD_NONE]), ("sift", [OLD_SIFT, OLD_FAILED])):
        (root / select / "results").mkdir(parents=True)
        (root / select / "config.json").write_text(json.dumps({"command": "lm eval", "testtime": "0.1.0",
                                                               "settings": {"config.ttft.select": select}}))
        for record in records:
            (root / select / "results" / f"{record['prompt_id']}.json").write_text(json.dumps(record))
    return root


def test_an_lm_run_of_today_loads_compares_and_reports(tmp_path):
    out = write_old_out(tmp_path / "out")
    sift = load_record(out / "sift" / "results" / "a.json", PromptResult)
    assert sift.ok and sift.bpb == OLD_SIFT["bpb"]  # bits / bytes, as it was written
    assert sift.var_before - sift.var_after == pytest.approx(0.7105, abs=1e-4) and sift.picks == [0, 0]
    failed = load_record(out / "sift" / "results" / "long.json", PromptResult)
    assert not failed.ok and failed.error.startswith("ValueError") and failed.bits is None
    for old in (OLD_NONE, OLD_SIFT, OLD_FAILED):  # written back: the old file less its fingerprint and its nulls
        kept = {k: v for k, v in old.items() if v is not None and k != "fingerprint"}
        assert PromptResult.from_json(old).to_json() == kept

    runs = find_runs([out])
    assert [(r.label, len(r.results), r.unusable) for r in runs] == [("none", 1, 0), ("sift", 1, 1)]
    cell = compare(runs).cells[("All", "sift")]
    assert cell.pct == pytest.approx(100 * OLD_SIFT["bpb"] / OLD_NONE["bpb"]) and cell.n == 1

    html = write_lm_report([out]).read_text()
    assert re.search(r"<td>sift</td><td>1</td><td>1</td><td>2\.0</td>", html)  # 1 scored, 1 failed, 2 steps
    assert f"{100 * OLD_SIFT['bpb'] / OLD_NONE['bpb']:.1f}%" in html
