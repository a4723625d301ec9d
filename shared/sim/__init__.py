"""The simulated market: a virtual clock, NYSE sessions, seeded prices, order matching and Alpaca's
order rules, all in process.

`MarketEngine.create(seed=..., start=..., cash=...)` builds one. The Alpaca-compatible HTTP and
WebSocket server (`services.sim.server`) and the in-process adapter
(`shared.broker.simulated.SimulatedExecutor`) both drive the same engine methods, so what a test sees
through alpaca-py and through the in-process adapter is the same market. See docs/simulator.md.
"""

from shared.sim.engine import MarketEngine

__all__ = ["MarketEngine"]
