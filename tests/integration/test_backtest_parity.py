"""Live-vs-backtest parity (issue 17 point 4, first bullet): the same real trading days through the
live path and through the portfolio backtest must make the same decisions.

Live: the demo's runner (`demo.days.run_days`) with the simulator replaying the bokeh data: the real
scanner, ranker, trader, streamer and manager jobs, alpaca-py over HTTP and WebSocket, real Redis.
Backtest: `shared.linebacktest.run` over the same history and days, with the costs the simulator
charges (no fees; its spread of 0.02% either side of the last trade as 2 bps of slippage).

The days, 2005-02-14 to 2005-03-08 (16 sessions, Apple, IBM, Microsoft and Google), hold three
entries, two trailing soft exits, a protective stop-out and Apple's real 2:1 split of 2005-02-28
under a held position. (No take-profit target is reached with the default settings in these
years: the trailing exit always comes first.)

Required: the same entries (symbol, day), the same exits (symbol, day, reason), and what is allowed
to differ, with why (measured on these days: entry prices 0.05-0.1% apart, exit prices at most 0.1%,
equity at most $58.50 apart, 0.03% of the cash):
- entry and exit prices within PRICE_TOLERANCE: the live trader buys at 09:35 (FL_SCHEDULE_TRADE) at
  the ask on the replayed path, the backtest at the open plus slippage (AAPL 2005-02-14: $83.14 live,
  $83.18 backtest). The stop and the trailing line are taken from the entry price, so the exits
  differ by as much (the 2005-03-08 stop: $40.59 live at 11:04, where the minute bar crossed it,
  $40.63 in the backtest, booked at the 11:05 tick; the 2005-02-28 trailing exit one tick later live);
- end-of-day equity within EQUITY_TOLERANCE of the starting cash every day.
"""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal as D

import pytest
from conftest import redis_url
from needs import require_bokeh_data

from shared.history import History, load
from shared.linebacktest import BacktestSettings, run

require_bokeh_data()

FIRST, LAST = date(2005, 2, 14), date(2005, 3, 8)
CASH = D(200_000)  # the simulator's starting cash (sim.engine.core.DEFAULT_CASH)
#: Prices: the 09:35 ask against the open plus slippage, and the exits at levels set from them.
PRICE_TOLERANCE = D("0.005")
#: Equity at each close, as a fraction of the starting cash (0.1% = $200).
EQUITY_TOLERANCE = D("0.001")


@pytest.fixture(scope="module")
def history() -> History:
    # What the demo's market holds on those days: the symbols trading before the first one (not FB).
    full = load("bokeh", end=LAST)
    keep = [s for s, bars in full.bars.items() if bars[0].t.date() < FIRST]
    return History(bars={s: full.bars[s] for s in keep}, adjusted=full.adjusted,
                   splits={s: v for s, v in full.splits.items() if s in keep}, source=full.source)


@pytest.fixture(scope="module")
def backtest(history):
    settings = BacktestSettings.load({"initial_cash": str(CASH), "slippage_bps": "2", "sec_fee_rate": "0",
                                      "taf_per_share": "0"})
    return run(history, settings, start=FIRST, end=LAST)


@pytest.fixture
def live(tmp_path, namespace, monkeypatch):
    from demo.days import DaysOptions, run_days

    for name in list(os.environ):
        if name.startswith(("FL_", "ALPACA_")):
            monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("")
    monkeypatch.setenv("FL_ENV_FILE", str(tmp_path / ".env"))
    monkeypatch.setenv("REDIS_URL", redis_url())
    monkeypatch.setenv("FL_NAMESPACE", namespace)
    days = len([d for d in load("bokeh", start=FIRST, end=LAST, symbols=["IBM"]).bars["IBM"]])
    record: dict = {}
    lines: list[str] = []
    code = run_days(DaysOptions(data="bokeh", first_day=FIRST, days=days, workdir=tmp_path / "demo",
                                progress_bar=False, record=record), out=lines.append)
    assert code == 0, "\n".join(lines[-12:])
    return record


def test_the_live_line_and_the_backtest_make_the_same_trades_on_real_days(live, backtest):
    entries_live = sorted((f["symbol"], f["timestamp"].date()) for f in live["fills"] if f["side"] == "buy")
    entries_backtest = sorted((t.symbol, t.entry_day) for t in backtest.trades)
    assert entries_live == entries_backtest
    assert len(entries_live) >= 3

    exits_live = sorted((t.symbol, t.closed_at.date(), t.exit_reason.value) for t in live["trades"])
    exits_backtest = sorted((t.symbol, t.exit_day, t.reason.value) for t in backtest.closed)
    assert exits_live == exits_backtest
    reasons = {reason for _, _, reason in exits_live}
    assert {"trailing", "stop_loss"} <= reasons

    by_exit = {(t.symbol, t.closed_at.date()): t for t in live["trades"]}
    for trade in backtest.closed:
        mine = by_exit[trade.symbol, trade.exit_day]
        # After a split both sides show the re-based price (the ledger: the broker's re-based entry).
        assert abs(mine.entry_price / trade.entry_price - 1) <= PRICE_TOLERANCE, trade
        assert abs(mine.exit_price / trade.exit_price - 1) <= PRICE_TOLERANCE, trade

    live_equity = dict(live["equity"])
    assert sorted(live_equity) == [d for d, _ in backtest.equity]
    for day, equity in backtest.equity:
        assert abs(live_equity[day] - equity) <= CASH * EQUITY_TOLERANCE, (day, live_equity[day], equity)
