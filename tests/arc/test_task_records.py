"""Run directories written before typed records still load, score, report and resume.

The records below are what `arc solve` wrote at 51a3f52 (before the envelope), copied from real runs
and trimmed: a full record ranked by PoE with score views, a fallback record whose TTT the deadline cut,
and a failed record. Each carries its fingerprint flat beside its keys, and no schema.
"""

from __future__ import annotations

import json
import re

from cli_helpers import invoke  # tests/ is on sys.path under pytest
from testtime.arc.records import Cut, TaskRecord
from testtime.arc.score import run_records, summarize
from testtime.arc.settings import SolveConfig
from testtime.arc.solve import ArcJob, solve_tasks
from testtime.arc.task import load_tasks
from testtime.jobs import RunDir
from testtime.report import write_arc_report

OLD_FULL = {
    "task_id": "aaa", "status": "ok", "error": None, "path": "full", "fits": True,
    "ttt": {"enabled": True, "shared": False, "sequences": 32, "fits": True, "fallback": None, "dropped_demos": 0,
            "data_seconds": 0.05884272100001908, "steps": 3, "tokens": 45632, "seconds": 12.844359296999755,
            "tokens_per_s": 3552.6879110785176, "first_loss": 24.28045654296875, "final_loss": 8.159258524576822,
            "losses": [24.28045654296875, 11.778602600097656, 8.159258524576822]},
    "predict": {"seconds": 0.1310727869999937, "prompts": 8, "unparsed": 0, "unfit": 0},
    "tests": [{
        "attempts": [[[5]]], "selection": [0],
        "candidates": [{"grid": [[5]], "votes": 2, "groups": 2, "identity": 1, "logprob": -0.00023746490478515625,
                        "token_logprob": -7.915496826171875e-05,
                        "transforms": ["antitranspose|order:5-4-1-0-2-3", "flip_h|order:5-0-3-4-1-2"],
                        "poe": -112.77546264536261, "poe_prompts": -0.0019076058016480602,
                        "poe_views": -112.77355503956096}],
        "score_views": ["flip_h|colors:0812465937|order:4-2-5-1-3-0", "flip_v|colors:0934827651|order:1-3-0-4-5-2"],
        "predictions": [{"candidate": 0, "transform": "order:2-0-3-1-5-4", "order": 0, "prompt": "all",
                         "logprob": -8.0108642578125e-05, "tokens": 3},
                        {"candidate": 0, "transform": "rot90|order:5-4-2-3-0-1", "order": 0, "prompt": "all",
                         "logprob": -9.918212890625e-05, "tokens": 3}],
        "prompts": 8, "unparsed": 0, "unfit": 0,
        "truth": {"bits_per_token_before": 35.10005386969119, "bits_per_cell_before": 105.30016160907357,
                  "bits_per_token_after": 0.00019848967527637417, "bits_per_cell_after": 0.0005954690258291225,
                  "rank": 1},
        "correct": {"attempt_1": True, "any_attempt": True, "oracle": True}}],
    "seconds": 13.242301479999696, "fingerprint": "8192a2baa609a766"}

OLD_FALLBACK = {
    "task_id": "0a1b2c3d", "status": "ok", "error": None, "path": "fallback", "fits": True,
    "ttt": {"enabled": False, "shared": False},
    "predict": {"seconds": 0.045514927999647625, "prompts": 1, "unparsed": 1, "unfit": 0},
    "tests": [{"attempts": [[[4, 4], [4, 4]], [[7, 8], [8, 9]]],
               "candidates": [{"grid": [[4, 4], [4, 4]], "votes": 1, "groups": 1, "identity": 1, "logprob": -0.75,
                               "token_logprob": -0.125, "transforms": ["identity"]}],
               "fallback": "greedy", "prompts": 1, "unparsed": 1, "unfit": 0,
               "correct": {"attempt_1": True, "any_attempt": True, "oracle": True}}],
    "seconds": 0.04585662800036516, "fingerprint": "8d83ce453fb5c2be",
    "cut": {"at": "training step 2 of 4", "seconds": 1.0422000741527881e-05}}

OLD_FAILED = {
    "task_id": "bbb", "status": "failed", "error": "RuntimeError: boom",
    "traceback": "Traceback (most recent call last):\n  File \"/work/scratch/wt-...\nRuntimeError: boom\n",
    "tests": [{"attempts": [], "candidates": [], "correct": {"attempt_1": False, "any_attempt": False,
                                                             "oracle": False}}],
    "seconds": 0.0008877519999259675, "fingerprint": "c39ec878ad9bffcc"}

OLD = [OLD_FULL, OLD_FALLBACK, OLD_FAILED]


def write_source(folder) -> None:
    """The three tasks, their test outputs those the records were marked against."""
    folder.mkdir()
    for task_id, answer in (("aaa", [[5]]), ("0a1b2c3d", [[4, 4], [4, 4]]), ("bbb", [[7]])):
        demos = [{"input": [[k, 1], [2, k]], "output": answer} for k in range(3)]
        tests = [{"input": [[7, 8], [8, 9]], "output": answer}]
        (folder / f"{task_id}.json").write_text(json.dumps({"train": demos, "test": tests}))


def write_old_run(root):
    """An `arc solve` run directory as 51a3f52 left it: (run directory, source)."""
    source, run = root / "source", root / "run"
    write_source(source)
    (run / "tasks").mkdir(parents=True)
    for record in OLD:
        (run / "tasks" / f"{record['task_id']}.json").write_text(json.dumps(record))
    (run / "config.json").write_text(json.dumps({"command": "arc solve", "testtime": "0.1.0",
                                                 "settings": {"source": str(source), "config.seed": 0},
                                                 "fingerprint": "8192a2baa609a766",
                                                 "options": {"tasks": None, "limit": None}}))
    (run / "submission.json").write_text(json.dumps({
        "aaa": [{"attempt_1": [[5]], "attempt_2": [[0]]}],
        "0a1b2c3d": [{"attempt_1": [[4, 4], [4, 4]], "attempt_2": [[7, 8], [8, 9]]}],
        "bbb": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}))
    return run, source


def without_nulls(value):
    """`value` less the envelope's fingerprint and every null: what a record writes today of an old file."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None and k != "fingerprint"}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def test_a_run_directory_of_today_loads_scores_and_reports(tmp_path):
    run, source = write_old_run(tmp_path)
    records = {r.task_id: r for r in run_records(run / "submission.json")}  # how `arc score` reads them
    assert sorted(records) == ["0a1b2c3d", "aaa", "bbb"]
    full, fallback, failed = records["aaa"], records["0a1b2c3d"], records["bbb"]
    assert full.ok and full.path == "full" and full.ttt.losses[-1] == full.ttt.final_loss
    test = full.tests[0]
    assert test.truth.rank == 1 and test.truth.bits_per_cell_after == 0.0005954690258291225
    assert test.candidates[0].poe == test.candidates[0].poe_prompts + test.candidates[0].poe_views
    assert [p.transform for p in test.predictions] == ["order:2-0-3-1-5-4", "rot90|order:5-4-2-3-0-1"]
    assert fallback.is_fallback and fallback.cut == Cut(at="training step 2 of 4", seconds=1.0422000741527881e-05)
    assert fallback.tests[0].fallback == "greedy" and fallback.tests[0].candidates[0].poe is None
    assert not failed.ok and failed.error == "RuntimeError: boom" and failed.score() == 0.0
    for old in OLD:  # nothing is lost: written back, a record is its old file less the fingerprint and the nulls
        assert TaskRecord.from_json(old).to_json() == without_nulls(old)

    s = summarize(list(records.values()))
    assert (s["tasks"], s["failed"], s["full"], s["fallback"], s["did_not_fit"]) == (3, 1, 1, 1, 0)
    assert s["score"] == 2 / 3 and s["oracle"] == 2 / 3
    assert s["truth"]["bits_per_cell_before"] == 105.30016160907357 and s["truth"]["found"] == 1.0
    scored = invoke("arc", "score", run / "submission.json", source)
    assert scored.exit_code == 0, scored.output
    assert re.search(r"score\s+│\s+66\.7%", scored.output)
    assert re.search(r"truth bits / cell \(before -> after TTT\)\s+│\s+105\.300 -> 0\.001", scored.output)

    html = write_arc_report(run).read_text()
    tasks = sorted(re.findall(r'<section class="task card"[^>]*data-status="(\w+)" data-id="([^"]*)"', html))
    assert tasks == [("failed", "bbb"), ("solved", "0a1b2c3d"), ("solved", "aaa")]
    assert "unreadable" not in html
    assert "rank among candidates 1" in html and "RuntimeError: boom" in html
    assert "<td>-112.775</td>" in html  # the PoE column, from the old record


def test_a_rerun_resumes_records_of_today_and_rebuilds_the_submission(tmp_path):
    _, source = write_old_run(tmp_path)
    config = SolveConfig()
    run_dir = RunDir(tmp_path / "again", records="tasks")
    run_dir.open("arc solve", {"config": config.to_json()})
    for old in (OLD_FULL, OLD_FAILED):  # made under this run's settings
        run_dir.record_file(old["task_id"]).write_text(json.dumps({**old, "fingerprint": run_dir.fingerprint}))
    tasks = [t for t in load_tasks(source).tasks if t.id in ("aaa", "bbb")]
    records, submission, counts = solve_tasks(ArcJob(config), tasks, run_dir)  # no model: nothing may run
    assert (counts.resumed, counts.ran, counts.failed) == (2, 0, 1)
    assert records == [TaskRecord.from_json(OLD_FULL), TaskRecord.from_json(OLD_FAILED)]
    assert submission == {"aaa": [{"attempt_1": [[5]], "attempt_2": [[0]]}],
                          "bbb": [{"attempt_1": [[0]], "attempt_2": [[0]]}]}
    assert json.loads((run_dir.path / "submission.json").read_text()) == submission
