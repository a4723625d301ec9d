"""A backtest over real prices from an installed package, its tearsheet opened in headless Chromium
with the network blocked (the issue's "done when": one documented command, the page opens)."""

from __future__ import annotations

import csv

from needs import require_bokeh_data
from test_backtest_cli import factoryline
from test_report_browser import Dom, chromium, chromium_path
from test_tearsheet_browser import OFFLINE

require_bokeh_data()


def test_backtest_on_bokeh_data_opens_in_chromium(tmp_path):
    binary = chromium_path()
    out = tmp_path / "bt"
    result = factoryline(["backtest", "--from", "2006-01-03", "--to", "2007-12-31", "--data", "bokeh",
                          "--out", str(out)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bokeh-sampledata" in result.stdout
    with (out / "trades.csv").open() as handle:
        closed = [t for t in csv.DictReader(handle) if t["exit_day"]]
    assert closed, "two years of real prices and no closed trade"
    dumped = chromium(binary, tmp_path / "profile", *OFFLINE, "--dump-dom", (out / "tearsheet.html").as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = Dom()
    dom.feed(dumped.stdout)
    assert dom.by_class("main-svg"), "plotly drew nothing offline"
    assert len(dom.by_class("trade")) == len(closed)
    assert dom.by_id("total-return")["text"].strip().endswith("%")
