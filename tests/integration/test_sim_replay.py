"""The simulator replaying real daily history (`--data`, issue 17 point 5): the real bars as history,
minutes on the documented intraday path, the live price following them, the clock on the data's real
NYSE sessions, and the data's splits applied on their dates. Through alpaca-py and the production
adapter, as the line reads them."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal as D

import pytest
from needs import require_bokeh_data
from simhelpers import start_sim

from shared.broker.alpaca import AlpacaExecutor
from shared.history import load
from shared.intraday import minute_bars
from shared.market.calendar import NEW_YORK
from shared.models import Timeframe

require_bokeh_data()


def ny(day: date, hour: int = 0, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), tzinfo=NEW_YORK)


@pytest.fixture
def replay():
    handle = start_sim(data="bokeh", start=ny(date(2005, 2, 24), 8, 0))
    executor = AlpacaExecutor(handle.broker_settings())
    yield handle, executor
    executor.close()
    handle.stop()


def test_the_universe_is_the_data_and_the_daily_bars_are_the_real_ones(replay):
    handle, executor = replay
    assert sorted(a.symbol for a in handle.engine.assets()) == ["AAPL", "FB", "GOOG", "IBM", "MSFT"]
    real = {b.t.date(): b for b in load("bokeh", start=date(2005, 1, 3), end=date(2005, 2, 23)).bars["IBM"]}
    served = executor.get_bars(["IBM"], Timeframe.DAY, ny(date(2005, 1, 3)), ny(date(2005, 2, 23), 23))["IBM"]
    assert [b.t.date() for b in served] == sorted(real)
    assert all((b.o, b.h, b.l, b.c, b.v) == (real[d].o, real[d].h, real[d].l, real[d].c, real[d].v)
               for b in served if (d := b.t.date()))


def test_the_clock_is_on_the_real_sessions_and_the_price_follows_the_documented_minutes(replay):
    handle, executor = replay
    clock = executor.get_clock()
    assert clock.timestamp.astimezone(NEW_YORK).date() == date(2005, 2, 24) and not clock.is_open
    # Presidents' Day 2005 (Feb 21) was no session; the calendar of those years is the real one.
    assert [s.date for s in executor.get_calendar(date(2005, 2, 18), date(2005, 2, 23))] == [
        date(2005, 2, 18), date(2005, 2, 22), date(2005, 2, 23)]
    bar = {b.t.date(): b for b in load("bokeh", start=date(2005, 2, 24), end=date(2005, 2, 24)).bars["IBM"]}[
        date(2005, 2, 24)]
    expected = minute_bars(bar.o, bar.h, bar.l, bar.c)
    handle.engine.advance_to(ny(date(2005, 2, 24), 16, 5))
    minutes = executor.get_bars(["IBM"], Timeframe.MINUTE, ny(date(2005, 2, 24), 9, 30),
                                ny(date(2005, 2, 24), 16, 0))["IBM"]
    assert [(m.o, m.h, m.l, m.c) for m in minutes] == expected
    assert sum(m.v for m in minutes) == bar.v


def test_the_live_price_during_the_session_is_the_minute_in_progress(replay):
    handle, executor = replay
    day = date(2005, 2, 24)
    bar = {b.t.date(): b for b in load("bokeh", start=day, end=day).bars["MSFT"]}[day]
    expected = minute_bars(bar.o, bar.h, bar.l, bar.c)
    for minute in (0, 130, 260, 389):
        handle.engine.advance_to(ny(day, 9, 30) + timedelta(minutes=minute))
        last = handle.engine.market.last_trade("MSFT", handle.engine.now())
        assert D(last[0]).scaleb(-4) == expected[minute][0]


def test_a_split_in_the_data_takes_effect_on_its_date(replay):
    handle, executor = replay
    handle.engine.advance_to(ny(date(2005, 2, 25), 10, 0))
    executor.buy_qty("AAPL", D(10), "replay-split-buy")
    handle.engine.advance(60)
    held = executor.get_position("AAPL")
    assert held.qty == D(10)
    entry = held.avg_entry_price
    assert executor.get_splits(["AAPL"], date(2005, 2, 1), date(2005, 3, 31)) == []
    # The evening before the ex date: the split is processed, as a real one is overnight.
    handle.engine.advance_to(ny(date(2005, 2, 28), 9, 10))
    splits = executor.get_splits(["AAPL"], date(2005, 2, 1), date(2005, 3, 31))
    assert [(s.ex_date, s.ratio) for s in splits] == [(date(2005, 2, 28), D(2))]
    held = executor.get_position("AAPL")
    assert held.qty == D(20) and held.avg_entry_price == entry / 2
    # History before the ex date now reads split-adjusted; the ex date's own bar is the raw one.
    handle.engine.advance_to(ny(date(2005, 2, 28), 16, 5))
    days = {b.t.date(): b for b in executor.get_bars(["AAPL"], Timeframe.DAY, ny(date(2005, 2, 24)),
                                                      ny(date(2005, 2, 28), 23))["AAPL"]}
    assert days[date(2005, 2, 25)].c == D("44.50")  # 88.99 / 2
    assert days[date(2005, 2, 25)].v == D(2) * {b.t.date(): b for b in load("bokeh").bars["AAPL"]}[
        date(2005, 2, 25)].v
    assert (days[date(2005, 2, 28)].o, days[date(2005, 2, 28)].c) == (D("44.68"), D("44.86"))


def test_python_m_sim_data_serves_the_history_and_a_bad_source_is_one_line():
    import subprocess
    import sys

    from simhelpers import ROOT

    handle = start_sim(data="bokeh", start=ny(date(2005, 2, 24), 8, 0), process=True)
    try:
        executor = AlpacaExecutor(handle.broker_settings())
        served = executor.get_bars(["AAPL"], Timeframe.DAY, ny(date(2005, 2, 22)), ny(date(2005, 2, 23), 23))
        real = load("bokeh", start=date(2005, 2, 22), end=date(2005, 2, 23)).bars["AAPL"]
        assert [(b.t, b.c) for b in served["AAPL"]] == [(b.t, b.c) for b in real]
        executor.close()
    finally:
        handle.stop()
    proc = subprocess.run([sys.executable, "-m", "sim", "--data", "csv:/nonexistent.csv", "--port", "0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "history CSV not found: /nonexistent.csv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_broker_source_reads_the_replayed_bars_back(replay, monkeypatch, tmp_path):
    handle, _ = replay
    (tmp_path / ".env").write_text("")
    for name, value in handle.broker_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("FL_ENV_FILE", str(tmp_path / ".env"))
    read = load("broker", start=date(2005, 1, 3), end=date(2005, 2, 23), symbols=["MSFT", "IBM"])
    real = load("bokeh", start=date(2005, 1, 3), end=date(2005, 2, 23), symbols=["IBM", "MSFT"])
    assert read.bars == real.bars and read.adjusted is False
    assert read.source.startswith("broker daily bars")
