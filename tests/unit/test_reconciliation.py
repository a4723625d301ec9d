"""Live-versus-backtest reconciliation: each kind of divergence, named with its cause."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal as D

from shared.exits import ExitReason
from shared.ledger import ClosedTrade
from shared.linebacktest import LineTrade
from shared.market.calendar import NEW_YORK
from shared.reconciliation import Cause, reconcile


def at(day: int, hour: int = 9, minute: int = 35) -> datetime:
    return datetime(2025, 3, day, hour, minute, tzinfo=NEW_YORK)


def live(symbol, day, entry, exit_, reason, exit_day=None) -> ClosedTrade:
    return ClosedTrade(symbol=symbol, qty=D(10), entry_price=D(entry), exit_price=D(exit_), realized_pl=D(0),
                       exit_reason=reason, opened_at=at(day), closed_at=at(exit_day or day + 1, 11),
                       closing_order_id=f"o-{symbol}-{day}", closing_client_order_id="c")


def test(symbol, day, entry, exit_, reason, exit_day=None) -> LineTrade:
    return LineTrade(symbol, date(2025, 3, day), D(entry), D(10), None if reason is None else date(2025, 3, exit_day or day + 1),
                     None if exit_ is None else D(exit_), reason)


test.__test__ = False  # a factory, not a test


def test_every_kind_of_divergence_is_named():
    ledger = [
        live("AAA", 3, "100", "95", ExitReason.STOP_LOSS),             # same: no divergence
        live("BBB", 3, "50", "51", ExitReason.TRAILING),               # backtest: time stop
        live("CCC", 4, "20", "20.5", ExitReason.TRAILING, exit_day=7),  # backtest: sold a day earlier
        live("DDD", 4, "10", "9.5", ExitReason.STOP_LOSS),             # backtest entered 1% higher
        live("EEE", 5, "30", "31", ExitReason.TRAILING),               # backtest still open
        live("FFF", 5, "40", "41", ExitReason.MANUAL),                 # backtest never entered
    ]
    backtest = [
        test("AAA", 3, "100.2", "95.1", ExitReason.STOP_LOSS),
        test("BBB", 3, "50", "49", ExitReason.TIME_STOP),
        test("CCC", 4, "20", "20.5", ExitReason.TRAILING, exit_day=6),
        test("DDD", 4, "10.10", "9.5", ExitReason.STOP_LOSS),
        test("EEE", 5, "30", None, None),
        test("GGG", 6, "60", "66", ExitReason.TAKE_PROFIT),            # never entered live
    ]
    result = reconcile(ledger, backtest, date(2025, 3, 1), date(2025, 3, 31))
    assert [(d.symbol, d.cause) for d in result.divergences] == [
        ("BBB", Cause.EXIT_REASON), ("BBB", Cause.EXIT_PRICE),
        ("CCC", Cause.EXIT_DAY), ("DDD", Cause.ENTRY_PRICE),
        ("EEE", Cause.OPEN_IN_BACKTEST), ("FFF", Cause.ONLY_LIVE), ("GGG", Cause.ONLY_BACKTEST),
    ]
    assert result.matched == 5 and result.live == 6 and result.backtest == 6
    assert "1.00% > 0.5%" in result.divergences[3].detail


def test_trades_outside_the_period_are_not_compared():
    result = reconcile([live("AAA", 3, "100", "95", ExitReason.STOP_LOSS)], [], date(2025, 3, 4), date(2025, 3, 31))
    assert result.divergences == () and result.live == 0
