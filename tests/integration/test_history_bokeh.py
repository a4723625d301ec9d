"""The real daily history the `[data]` extra ships (bokeh-sampledata), loaded through
shared.history: its tickers and years, its real splits, and the split-adjusted series. The test
scripts install the extra; without it the test skips, except in CI, where that is a failure."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest
from needs import require_bokeh_data

from shared.history import load, split_adjusted
from shared.market.calendar import NyseCalendar

require_bokeh_data()


@pytest.fixture(scope="module")
def bokeh():
    return load("bokeh")


def test_it_holds_the_documented_tickers_and_years(bokeh):
    assert bokeh.symbols == ("AAPL", "FB", "GOOG", "IBM", "MSFT")
    spans = {s: (b[0].t.date(), b[-1].t.date()) for s, b in bokeh.bars.items()}
    assert spans["AAPL"] == spans["IBM"] == spans["MSFT"] == (date(2000, 3, 1), date(2013, 3, 1))
    assert spans["GOOG"] == (date(2004, 8, 19), date(2013, 3, 1))
    assert bokeh.adjusted is False
    assert bokeh.source.startswith("bokeh-sampledata 2026.1") and "unadjusted" in bokeh.source


def test_every_bar_is_on_an_nyse_session_and_none_is_missing(bokeh):
    calendar = NyseCalendar(start=date(2000, 1, 1), end=date(2013, 12, 31))
    for symbol, bars in bokeh.bars.items():
        days = [b.t.date() for b in bars]
        assert days == [s.date for s in calendar.sessions(days[0], days[-1])], symbol


def test_the_real_splits_are_found_on_their_days(bokeh):
    # Apple 2:1 on 2000-06-21 and 2005-02-28, Microsoft 2:1 on 2003-02-18; none for the others.
    assert bokeh.splits == {
        "AAPL": ((date(2000, 6, 21), D(2)), (date(2005, 2, 28), D(2))),
        "MSFT": ((date(2003, 2, 18), D(2)),),
    }
    aapl = {b.t.date(): b for b in bokeh.bars["AAPL"]}
    assert aapl[date(2005, 2, 25)].c == D("88.99") and aapl[date(2005, 2, 28)].o == D("44.68")


def test_the_split_adjusted_series_has_no_split_gap(bokeh):
    adjusted = split_adjusted(bokeh)
    aapl = {b.t.date(): b for b in adjusted.bars["AAPL"]}
    assert aapl[date(2005, 2, 25)].c == D("44.50")  # 88.99 / 2, on the cent
    assert aapl[date(2000, 3, 1)].c == D("32.58")  # 130.31 / 4
    for symbol, splits in bokeh.splits.items():
        raw = bokeh.bars[symbol]
        fixed = adjusted.bars[symbol]
        for day, _ in splits:
            i = next(k for k, b in enumerate(raw) if b.t.date() == day)
            assert raw[i].o / raw[i - 1].c < D("0.55")  # the raw prices halve overnight
            assert abs(fixed[i].o / fixed[i - 1].c - 1) < D("0.05"), (symbol, day)  # the adjusted do not


def test_a_cut_keeps_only_the_splits_inside_it():
    cut = load("bokeh", start=date(2005, 2, 1), end=date(2005, 3, 31), symbols=["AAPL", "IBM"])
    assert cut.symbols == ("AAPL", "IBM")
    assert cut.splits == {"AAPL": ((date(2005, 2, 28), D(2)),)}
    assert len(cut.bars["AAPL"]) == 41
