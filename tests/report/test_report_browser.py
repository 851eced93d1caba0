"""The reports in a real browser: headless Chromium draws them (not blank) and their JavaScript raises nothing.

Runs where Chromium is installed (Debian: `apt-get install chromium`; `.ci/run` installs it) and is
skipped elsewhere. Set TESTTIME_SCREENSHOTS=DIR to keep the screenshots for a look.
"""

from __future__ import annotations

import html as htmllib
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from report_runs import read_png, write_arc_run, write_lm_runs, write_pretrain_out  # tests/report/ is on sys.path

from testtime.report import write_arc_report, write_lm_report, write_pretrain_report
from testtime.report.svg import PALETTE

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (apt-get install chromium)"),
              pytest.mark.slow]


def chromium(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)


def page_state(tmp_path: Path, path: Path, fragment: str = "") -> tuple[str, list[str]]:
    """(the DOM after the page's scripts ran, the JavaScript errors it logged)."""
    done = chromium(tmp_path, path.resolve().as_uri() + fragment, "--dump-dom")
    root = re.search(r"<html[^>]*>", done.stdout)
    assert root, f"no DOM from Chromium: {done.stderr[-2000:]}"
    errors = re.findall(r'data-js-errors="([^"]*)"', root.group(0))
    errors += re.findall(r"CONSOLE.*?(Uncaught[^\n]*)", done.stderr)
    assert 'data-ready="1"' in root.group(0) or errors, "the page's own script did not run to its end"
    return done.stdout, errors


def screenshot(tmp_path: Path, path: Path, name: str, size: str = "1200,1500") -> np.ndarray:
    keep = Path(os.environ.get("TESTTIME_SCREENSHOTS") or tmp_path)
    keep.mkdir(parents=True, exist_ok=True)
    png = keep / f"{name}.png"
    png.unlink(missing_ok=True)
    done = chromium(tmp_path, path.resolve().as_uri(), f"--screenshot={png}", f"--window-size={size}")
    assert png.is_file(), f"no screenshot: {done.stderr[-2000:]}"
    return read_png(png)[:, :, :3]


def colours_present(pixels: np.ndarray) -> set[str]:
    """The ARC palette colours that appear exactly in the screenshot."""
    flat = {tuple(p) for p in pixels.reshape(-1, 3)[::3]}
    return {c for c in PALETTE if tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) in flat}


def test_the_checks_catch_a_blank_page_and_a_script_error(tmp_path):
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    assert screenshot(tmp_path, blank, "blank", "400,300").std() == 0
    run, _ = write_arc_run(tmp_path, 2)
    broken = tmp_path / "broken.html"
    broken.write_text(write_arc_report(run).read_text().replace("</body>", "<script>notAFunction();</script></body>"))
    _, errors = page_state(tmp_path, broken)
    assert any("notAFunction" in e for e in errors), errors


def test_the_arc_report_draws_grids_and_runs_its_script_cleanly(tmp_path):
    run, _ = write_arc_run(tmp_path, 6, max_side=12, truth=True, losses=True, failed=("00000005",))
    path = write_arc_report(run)
    _, errors = page_state(tmp_path, path)
    assert not errors
    pixels = screenshot(tmp_path, path, "arc-report")
    assert pixels.std() > 20, "the screenshot is (nearly) one colour"
    assert len(colours_present(pixels)) >= 6, colours_present(pixels)  # the grids are drawn in the palette


def test_a_link_opens_the_report_filtered_and_sorted(tmp_path):
    run, _ = write_arc_run(tmp_path, 9)
    dom, errors = page_state(tmp_path, write_arc_report(run), "#filter=unsolved&sort=-seconds")
    assert not errors
    tags = re.findall(r'<section class="task card"[^>]*>', dom)
    shown = [t for t in tags if not re.search(r"\shidden", t)]
    assert shown and all('data-status="unsolved"' in t for t in shown)
    assert len(shown) == 3 and len(tags) == 9
    seconds = [float(re.search(r'data-seconds="([^"]+)"', t).group(1)) for t in tags]
    assert seconds == sorted(seconds, reverse=True)
    assert "3 of 9 tasks" in htmllib.unescape(dom)


def test_the_lm_and_pretrain_reports_draw_their_charts(tmp_path):
    for name, path in (("lm-report", write_lm_report([write_lm_runs(tmp_path)])),
                       ("pretrain-report", write_pretrain_report(write_pretrain_out(tmp_path)))):
        _, errors = page_state(tmp_path, path)
        assert not errors, (name, errors)
        pixels = screenshot(tmp_path, path, name, "1000,900")
        assert pixels.std() > 20, name
        assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 20, name  # bars and lines, not just text
