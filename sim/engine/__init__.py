"""The simulated market's engine: a virtual clock, NYSE sessions, seeded prices, order matching and
Alpaca's order rules, all in process.

`MarketEngine.create(seed=..., start=..., cash=...)` builds one. The Alpaca-compatible HTTP and
WebSocket server (`sim.server`) and the in-process adapter (`sim.executor.SimulatedExecutor`) both
drive the same engine methods, so what a test sees through alpaca-py and through the in-process
adapter is the same market. See docs/simulator.md.

The engine is one class, `MarketEngine` (`core`), put together from one part per duty:

    clock     the virtual clock, and sessions: opening, closing, catching up to now
    matching  what executes, at what price and when; fills
    entry     submitting (Alpaca's rules, then accepting), cancelling, closing, order reads
    account   cash, holdings, buying power; the account and position views
    data      assets and market data as of now
    controls  what tests and /sim change: prices, splits, assets, holdings, forced fills
    events    status changes (the order state table enforced), history, trade events, state()

with the pieces they use: `market` (price paths as bars and quotes), `paths`, `orders` (the order
and event records), `rules` (Alpaca's refusals) and `universe` (the tradable symbols).
"""

from sim.engine.account import AccountView, PositionView
from sim.engine.clock import ClockView
from sim.engine.controls import MAX_MARKET_PRICE, MIN_PRICE, SPLIT_ORDER_MODES, SplitAction
from sim.engine.core import MarketEngine
from sim.engine.events import IllegalTransition

__all__ = ["MAX_MARKET_PRICE", "MIN_PRICE", "SPLIT_ORDER_MODES", "AccountView", "ClockView", "IllegalTransition",
           "MarketEngine", "PositionView", "SplitAction"]
