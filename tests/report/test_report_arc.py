"""The ARC report on synthetic run directories: every task, the right marks, the palette, no network, size."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from report_runs import write_arc_run, write_lm_runs, write_pretrain_out  # tests/report/ is on sys.path

from testtime.report import write_arc_report, write_quietly
from testtime.report.svg import PALETTE, GridBank, grid_paths

STANDARD_ARC_COLOURS = ["#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
                        "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25"]


def sections(html: str) -> dict[str, tuple[str, str]]:
    """Task id -> (status, the HTML of its section)."""
    found = re.findall(r'<section class="task card"[^>]*data-status="(\w+)" data-id="([^"]*)"[^>]*>(.*?)</section>',
                       html, re.S)
    return {task_id: (status, body) for status, task_id, body in found}


def decode_cells(symbol: str, width: int, height: int) -> list[list[str]]:
    """The colour of every cell, read back from `grid_paths` markup (background rect + run paths)."""
    background = re.search(r'<rect width="\d+" height="\d+" fill="(#\w+)"/>', symbol).group(1)
    cells = [[background] * width for _ in range(height)]
    for colour, d in re.findall(r'<path fill="(#\w+)" d="([^"]+)"/>', symbol):
        for x, y, w in re.findall(r"M(\d+) (\d+)h(\d+)v1h-\d+z", d):
            for xx in range(int(x), int(x) + int(w)):
                cells[int(y)][xx] = colour
    return cells


def test_the_palette_is_the_standard_arc_one_and_every_cell_gets_its_colour():
    assert list(PALETTE) == STANDARD_ARC_COLOURS
    grid = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [9, 9, 0, 0, 3]]
    cells = decode_cells(grid_paths(grid), 5, 3)
    assert cells == [[STANDARD_ARC_COLOURS[v] for v in row] for row in grid]


def test_a_grid_is_drawn_once_however_often_it_is_shown():
    bank = GridBank()
    a = bank.show([[1, 2], [3, 4]])
    b = bank.show([[1, 2], [3, 4]], cls="thumb")
    bank.show([[5]])
    assert len(bank) == 2 and 'href="#g0"' in a and 'href="#g0"' in b
    assert bank.defs().count("<symbol") == 2
    assert "no valid grid" in bank.show([[1, 2], [3]]) and "no valid grid" in bank.show("x")


def test_every_task_appears_with_marks_that_match_its_score(tmp_path):
    run, tasks = write_arc_run(tmp_path, 9, failed=("00000008",))
    html = write_arc_report(run).read_text()
    found = sections(html)
    assert sorted(found) == sorted(tasks)
    for k, task_id in enumerate(sorted(tasks)):
        status, body = found[task_id]
        if task_id == "00000008":
            assert status == "failed" and "RuntimeError: boom" in body
            continue
        first, second = re.findall(r'<figcaption>attempt (\d) <span class="(right|wrong)"', body)
        assert status == ("solved" if k % 3 in (0, 1) else "unsolved")
        assert first == ("1", "right" if k % 3 == 0 else "wrong")
        assert second == ("2", "right" if k % 3 == 1 else "wrong")
        assert ("&#10003; truth" in body) == (k % 3 in (0, 1))  # the true candidate is marked
    assert "66.7%" in html  # score: 6 of the 9 tasks (the failed one counts 0)


def test_a_wrong_attempt_has_its_differing_cells_outlined(tmp_path):
    run, tasks = write_arc_run(tmp_path, 3)
    _, body = sections(write_arc_report(run).read_text())["00000002"]  # attempt 1: 1 cell off, attempt 2: 2 off
    outlines = re.findall(r'<path class="diff-i" d="([^"]*)"/>', body)
    assert [d.count("M") for d in outlines[:2]] == [1, 2]


def test_the_report_is_self_contained(tmp_path):
    run, _ = write_arc_run(tmp_path, 4, truth=True, losses=True)
    html = write_arc_report(run).read_text()
    assert not re.search(r"https?://|//cdn|@import|url\((?!#)", html)
    refs = re.findall(r'\b(?:href|src)="([^"]*)"', html)
    assert refs and all(r.startswith("#") for r in refs), [r for r in refs if not r.startswith("#")]
    assert "<img" not in html and "<link" not in html


def test_truth_likelihood_poe_and_loss_curves_are_shown_where_recorded(tmp_path):
    run, _ = write_arc_run(tmp_path, 3, truth=True, losses=True)
    html = write_arc_report(run).read_text()
    assert "3.000 &rarr; 1.000" in html and "2.500 &rarr; 0.750" in html  # summary: bits/cell, bits/token
    assert "rank among candidates 1" in html and "<td>-1.000</td>" in html  # the PoE column
    assert html.count("<polyline") == 3 and "no loss curves are drawn" not in html
    plain, _ = write_arc_run(tmp_path / "plain", 3)
    html = write_arc_report(plain).read_text()
    assert "bits / cell" not in html and "<polyline" not in html
    assert "no per-step TTT losses" in html and "per-step losses not recorded (first 1.200, final 0.300)" in html


def test_tasks_left_on_their_fallback_by_a_time_budget_are_counted(tmp_path):
    run, _ = write_arc_run(tmp_path, 4)
    assert "on their fallback" not in write_arc_report(run).read_text()  # a run without a budget
    for k, cut in ((1, {"at": "training", "seconds": 12.5}), (2, None)):
        path = run / "tasks" / f"record{k}.json"
        record = {**json.loads(path.read_text()), "path": "fallback", **({"cut": cut} if cut else {})}
        path.write_text(json.dumps(record))
    html = " ".join(write_arc_report(run).read_text().split())
    assert "<td>on their fallback (a time budget: no TTT)</td><td>2 (1 cut by the deadline, 1 not started)</td>" \
        in html


def test_without_the_source_the_records_still_render(tmp_path):
    run, tasks = write_arc_run(tmp_path, 3, source=False)
    (run / "tasks" / "junk.json").write_text("{not json")
    html = write_arc_report(run).read_text()
    assert sorted(sections(html)) == sorted(tasks)
    assert "does not load here" in html and "task not loaded" in html and "Demonstrations" not in html
    assert re.search(r"unreadable records</td><td[^>]*>1 \(junk\.json\)<", html)
    assert html.count('class="right"') > 0  # the marks come from the records


def test_hostile_task_ids_are_escaped(tmp_path):
    ids = ["<script>alert(1)</script>", "a\"b'c&d", "ok"]
    run, _ = write_arc_run(tmp_path, 3, task_ids=ids)
    html = write_arc_report(run).read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("<script>") == 2  # the report's own two


def test_the_summary_agrees_with_arc_solve(tmp_path):
    from testtime.arc.score import summarize
    from testtime.report.arc import load_arc_run, summarize_run

    run_dir, _ = write_arc_run(tmp_path, 10, failed=("00000004",))
    run = load_arc_run(run_dir)
    ours, theirs = summarize_run(run), summarize(run.records)
    for key in ("tasks", "failed", "did_not_fit", "score", "pass@1", "oracle", "ttt_seconds_per_task",
                "infer_seconds_per_task"):
        assert ours[key] == pytest.approx(theirs[key]), key


def test_400_tasks_render_into_one_file_under_10_mb(tmp_path):
    run, tasks = write_arc_run(tmp_path, 400, truth=True, failed=("00000007",))
    path = write_arc_report(run)
    size = path.stat().st_size
    print(f"400-task report: {size / 1e6:.2f} MB")
    assert size < 10e6
    assert len(sections(path.read_text())) == 400


def test_rendering_imports_no_model_code(tmp_path):
    run, _ = write_arc_run(tmp_path, 2)
    lm = write_lm_runs(tmp_path)
    pre = write_pretrain_out(tmp_path)
    code = ("import sys; from testtime.report import write_arc_report, write_lm_report, write_pretrain_report; "
            f"write_arc_report({str(run)!r}); write_lm_report([{str(lm)!r}]); write_pretrain_report({str(pre)!r}); "
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'faiss') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_cli_writes_the_report_where_asked(tmp_path):
    from cli_helpers import invoke

    run, _ = write_arc_run(tmp_path, 3)
    out = tmp_path / "elsewhere" / "r.html"
    result = invoke("arc", "report", run, "--out", out)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and out.is_file() and not (run / "report.html").exists()
    result = invoke("arc", "report", tmp_path / "nothing")
    assert result.exit_code == 2 and "not an `arc solve` run directory" in " ".join(result.output.split())


def test_a_report_that_cannot_be_made_after_a_run_is_a_warning(tmp_path, caplog):
    assert write_quietly("arc", tmp_path / "missing") is None
    assert "could not write the arc report" in caplog.text
    run, _ = write_arc_run(tmp_path, 2)
    assert write_quietly("arc", run) == run / "report.html"
    assert json.loads((run / "config.json").read_text())["command"] == "arc solve"
