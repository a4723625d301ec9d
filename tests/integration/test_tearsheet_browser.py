"""The tearsheet as a person sees it: rendered by headless Chromium with the network blocked.

The page is the hand-computed case of tests/integration/test_tearsheet.py with a benchmark. Chromium resolves no
host and goes through a dead proxy, so anything the page tried to load from the internet would be
missing: plotly must draw from the embedded plotly.js. The screenshot is kept at
`reports/test-artifacts/tearsheet.png` (gitignored) and listed after the run.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest
from test_report_browser import ARTIFACTS, Dom, chromium, chromium_path, png_size
from test_tearsheet import sheet_of

from services.reporter import render_tearsheet
from shared.models import Bar

OFFLINE = ("--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9", "--virtual-time-budget=5000")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, keep_artifact):
    binary = chromium_path()
    tmp_path = tmp_path_factory.mktemp("tearsheet-browser")
    bars = [Bar(t=datetime(2024, 3, d, 5, tzinfo=UTC), o=D(c), h=D(c), l=D(c), c=D(c))
            for d, c in ((1, "500"), (4, "510"), (5, "505"), (6, "490"), (7, "520"))]
    sheet = sheet_of(benchmark_bars=bars)
    page = tmp_path / "tearsheet.html"
    page.write_text(render_tearsheet.render(sheet), encoding="utf-8")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "tearsheet.png"
    screenshot.unlink(missing_ok=True)
    shot = chromium(binary, tmp_path / "profile-shot", *OFFLINE, f"--screenshot={screenshot}",
                    "--window-size=1280,1400", page.as_uri())
    assert screenshot.is_file(), f"chromium wrote no screenshot: {shot.stderr[-2000:]}"
    shutil.copy(page, ARTIFACTS / "tearsheet.html")
    keep_artifact("tearsheet screenshot", screenshot)
    print(f"\ntearsheet screenshot: {screenshot}")
    dumped = chromium(binary, tmp_path / "profile-dom", *OFFLINE, "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom()
    dom.feed(dumped.stdout)
    return sheet, dom, screenshot


def test_chromium_renders_the_tearsheet_offline_with_a_screenshot(rendered):
    _sheet, _dom, screenshot = rendered
    assert png_size(screenshot) == (1280, 1400)
    assert screenshot.stat().st_size > 30_000


def test_plotly_drew_the_equity_benchmark_and_drawdown_from_the_embedded_script(rendered):
    _sheet, dom, _ = rendered
    assert dom.by_class("main-svg"), "plotly drew nothing (its script did not run offline)"
    names = {e["text"].strip() for e in dom.by_class("legendtext")}
    assert {"equity", "peak", "drawdown %", "SPY (same start)"} <= names
    ticks = [e["text"] for e in dom.by_class("ytick")]
    assert any(t.startswith("$") and t.endswith(",000") for t in ticks), ticks  # round dollar ticks


def test_statistics_and_trades_shown_are_the_models(rendered):
    sheet, dom, _ = rendered
    assert dom.by_id("total-return")["text"].strip() == "+3.00%"
    assert dom.by_id("max-drawdown")["text"].strip() == "-4.00%"
    assert dom.by_id("win-rate")["text"].strip() == "50.0%"
    assert dom.by_id("drawdown-peak")["text"] == "2024-03-04"
    assert len(dom.by_class("trade")) == len(sheet.closed_trades) == 4
    assert dom.by_id("trades-shown")["text"] == "4"  # the filter script ran, all shown
