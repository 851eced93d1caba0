"""The LM and pretraining reports on synthetic run directories: numbers, plots, and missing fields tolerated."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
from report_runs import write_lm_runs, write_pretrain_out  # tests/report/ is on sys.path

from testtime.lm.records import PromptResult
from testtime.report import write_lm_report, write_pretrain_report
from testtime.report.lm import domain_bpb, lm_context, load_lm_runs, paired_pct
from testtime.report.svg import TICK_PX, grouped_bars, line_chart, scatter, text_width

PILE = ("arxiv", "dm_mathematics", "enron_emails", "europarl", "freelaw", "github", "gutenberg_pg_19",
        "hackernews", "nih_exporter", "opensubtitles", "openwebtext2", "philpapers", "pile_cc", "pubmed_abstracts",
        "pubmed_central", "stackexchange", "wikipedia_en")
"""17 domains, the Pile's names: long and many, the case where labels used to overlap."""


def label_boxes(svg: str) -> list[tuple[str, list[tuple[float, float]]]]:
    """Each group label's estimated box (its 4 corners on the page) from its x, y, anchor and rotation."""
    boxes = []
    for attrs, name in re.findall(r'<text class="tick group" ([^>]*)>([^<]*)</text>', svg):
        x, y = float(re.search(r' ?x="([-\d.]+)"', attrs)[1]), float(re.search(r'y="([-\d.]+)"', attrs)[1])
        w = text_width(name)
        x0 = {"end": x - w, "middle": x - w / 2}.get(re.search(r'text-anchor="(\w+)"', attrs)[1], x)
        corners = [(x0, y - TICK_PX), (x0 + w, y - TICK_PX), (x0 + w, y + 0.25 * TICK_PX), (x0, y + 0.25 * TICK_PX)]
        if turn := re.search(r'rotate\(([-\d.]+) ([-\d.]+) ([-\d.]+)\)', attrs):
            a, px, py = (float(v) for v in turn.groups())
            c, s = math.cos(math.radians(a)), math.sin(math.radians(a))
            corners = [(px + c * (u - px) - s * (v - py), py + s * (u - px) + c * (v - py)) for u, v in corners]
        boxes.append((name, corners))
    return boxes


def overlap(a: list[tuple[float, float]], b: list[tuple[float, float]]) -> bool:
    """Whether two convex quadrilaterals overlap (separating axis test on their edges' normals)."""
    for poly in (a, b):
        for (x1, y1), (x2, y2) in zip(poly, poly[1:] + poly[:1]):
            nx, ny = y2 - y1, x1 - x2
            pa, pb = [nx * x + ny * y for x, y in a], [nx * x + ny * y for x, y in b]
            if max(pa) <= min(pb) + 1e-6 or max(pb) <= min(pa) + 1e-6:
                return False
    return True


def test_many_domains_rotate_the_labels_apart_and_put_all_first(tmp_path):
    out = write_lm_runs(tmp_path, n_prompts=34, domains=PILE)
    html = write_lm_report([out]).read_text()
    svg = re.search(r'<svg class="chart".*?</svg>', html, re.S)[0]
    boxes = label_boxes(svg)
    assert [n for n, _ in boxes] == ["All", *PILE] and all("rotate(-45" in a for a in
                                                          re.findall(r'<text class="tick group"[^>]*>', svg))
    assert not [(m, n) for i, (m, a) in enumerate(boxes) for n, b in boxes[i + 1:] if overlap(a, b)]
    width, height = (float(v) for v in re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg).groups())
    assert all(0 <= x <= width and 0 <= y <= height for _, corners in boxes for x, y in corners)  # none cut off
    # overlap() finds the overlap of the labels centred side by side that the chart used to draw
    centred = [(n, [(x - 40, 0), (x + 40, 0), (x + 40, 10), (x - 40, 10)]) for n, x in (("a", 0), ("b", 50))]
    assert overlap(centred[0][1], centred[1][1])
    headers = re.findall(r'<tr><th class="text">run</th>(?:<th class="text">base</th>)?<th>([^<]*)</th>', html)
    assert headers[:2] == ["All", "All"]  # bits per byte, % of base: All is the first data column
    assert html.count('<div class="scroll"><table>') == 2  # wide tables scroll inside their card


def test_few_short_domains_keep_their_labels_level(tmp_path):
    svg = grouped_bars(["code", "docs"], [("a", [1.0, 2.0])], ylabel="y")
    boxes = label_boxes(svg)
    labels = re.findall(r'<text class="tick group"[^>]*>', svg)
    assert [n for n, _ in boxes] == ["code", "docs"] and not any("rotate(" in t for t in labels)
    assert not overlap(boxes[0][1], boxes[1][1])


def test_bits_per_byte_per_domain_are_total_bits_over_total_bytes():
    results = [PromptResult(prompt_id=f"p{i}", domain=domain, bits=bits, bytes=n, steps=0, select_ms=0.0,
                            nn_select_ms=0.0) for i, (domain, bits, n) in enumerate([("a", 10.0, 10), ("a", 30.0, 10),
                                                                                    ("b", 5.0, 20)])]
    assert domain_bpb(results) == {"a": 2.0, "b": 0.25, "all": 45.0 / 40}


def test_each_run_is_compared_with_the_none_run_beside_it(tmp_path):
    out = write_lm_runs(tmp_path)
    ctx = lm_context(load_lm_runs([out]))
    rows = {r["label"]: r for r in ctx["runs"]}
    assert list(rows) == ["none", "nn", "sift"]  # the base first
    assert rows["none"]["base"] is None and rows["sift"]["base"] == "none"
    # synthetic bits: none 1.0x, nn 0.95x, sift 0.90x on every prompt
    assert rows["nn"]["pct"]["all"] == (pytest.approx(95.0), pytest.approx(0.0), 12)
    assert rows["sift"]["pct"]["code"][0] == pytest.approx(90.0)
    assert rows["sift"]["steps"] == 10 and rows["sift"]["select_ms"] == pytest.approx(2.5)
    html = write_lm_report([out]).read_text()
    assert html.count("<rect x=") == 3 * 4  # 3 runs x (3 domains + all)
    assert "95.0%" in html and "90.0%" in html and html.count("<circle") == 2 * 12
    assert "uncertainty reduction sigma_0^2 - sigma_n^2" in html
    assert not re.search(r"https?://", html)


def test_percent_of_base_pairs_prompts_and_gives_a_standard_error(tmp_path):
    out = write_lm_runs(tmp_path, selects=("none", "sift"), n_prompts=4)
    base, sift = load_lm_runs([out])
    record = sift.path / "results" / "p0.json"  # prompt p0 (code): 50% of base instead of 95%
    data = json.loads(record.read_text())
    data["bits"] = json.loads((base.path / "results" / "p0.json").read_text())["bits"] / 2
    record.write_text(json.dumps(data))
    base, sift = load_lm_runs([out])
    pct = paired_pct(sift, base, ["code", "all"])
    assert pct["code"][0] == pytest.approx((50 + 95) / 2) and pct["code"][2] == 2
    assert pct["all"][0] == pytest.approx((50 + 95 * 3) / 4)
    assert pct["all"][1] == pytest.approx(11.25)  # sd of (50, 95, 95, 95) is 22.5, over sqrt(4)


def test_the_same_selector_from_two_outs_gets_two_names(tmp_path):
    a = write_lm_runs(tmp_path / "seed0")
    b = write_lm_runs(tmp_path / "seed1", selects=("none", "sift"))
    ctx = lm_context(load_lm_runs([a, b / "sift", b / "none"]))
    labels = [r["label"] for r in ctx["runs"]]
    assert len(set(labels)) == len(labels) == 5
    sift1 = next(r for r in ctx["runs"] if r["path"] == str(b / "sift"))
    assert sift1["base"] == next(r["label"] for r in ctx["runs"] if r["path"] == str(b / "none"))


def test_missing_keys_and_runs_leave_gaps_not_errors(tmp_path):
    out = write_lm_runs(tmp_path, selects=("nn", "sift"), sigmas=False)
    (out / "sift" / "results" / "bad.json").write_text("[1, 2")
    (out / "sift" / "results" / "failed.json").write_text(json.dumps({"prompt_id": "x", "status": "failed"}))
    for file in (out / "nn" / "results").glob("*.json"):  # keys a record may lack: empty cells
        record = json.loads(file.read_text())
        for key in ("search_ms", "train_s"):
            record.pop(key)
        if file.name == "p0.json":  # a key every ok record holds: this one is unusable
            record.pop("steps")
        file.write_text(json.dumps(record))
    html = write_lm_report([out / "nn", out / "sift"]).read_text()
    assert "no `select none` run among these" in html
    assert re.search(r"<td>sift</td><td>12</td><td>2</td>", html)  # 2 unusable records counted as failed
    assert re.search(r"<td>nn</td><td>11</td><td>1</td><td>10.0</td>\s*<td>0.50</td><td>0.50</td><td>–</td><td>–</td>",
                     html)


def test_the_lm_cli_reports_a_directory_of_runs(tmp_path):
    from cli_helpers import invoke

    out = write_lm_runs(tmp_path)
    result = invoke("lm", "report", out)
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file()
    result = invoke("lm", "report", tmp_path / "empty")
    assert result.exit_code == 2


def test_the_pretrain_report_draws_every_step_and_validation_point(tmp_path):
    out = write_pretrain_out(tmp_path, steps=60)
    html = write_pretrain_report(out).read_text()
    lines = re.findall(r'<polyline[^>]*points="([^"]*)"', html)
    assert [len(p.split()) for p in lines] == [60, 60, 3]  # train, its moving mean, validation
    assert "2,001" in html  # tokens/s = 123456 / 61.7
    assert "MFU" in html and "not recorded" in html and "testtime ARC pretraining adapter" in html


def test_an_unfinished_pretraining_run_has_a_report_from_its_checkpoint(tmp_path):
    out = write_pretrain_out(tmp_path, card=False, steps=10)
    html = write_pretrain_report(out).read_text()
    assert "unfinished" in html and "no card.json yet" in html
    assert len(re.findall(r"<polyline", html)) == 2  # 10 steps: no moving mean
    shutil.rmtree(out / "checkpoints")
    with pytest.raises(FileNotFoundError):
        write_pretrain_report(out)


def test_charts_skip_what_is_not_finite():
    assert line_chart([("a", [(1, float("nan")), (2, None)])], xlabel="x", ylabel="y") == ""
    assert grouped_bars(["a"], [("s", [None])], ylabel="y") == ""
    assert scatter([("s", [])], xlabel="x", ylabel="y") == ""
    svg = line_chart([("a", [(1, 1.0), (2, float("inf")), (3, 0.5)])], xlabel="x", ylabel="y")
    assert len(re.search(r'points="([^"]*)"', svg).group(1).split()) == 2
