"""Broker adapters behind the `OrderExecutor` contract, and `make_executor` to build the configured one.

Importing this package stays cheap: alpaca-py is imported only when an executor is built, so
commands that never talk to a broker do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.broker.contract import OrderExecutor
    from shared.config import BrokerSettings


def make_executor(settings: BrokerSettings) -> OrderExecutor:
    """The executor for the configured endpoint.

    Real Alpaca (live or paper) and the local simulated market all speak Alpaca's HTTP and
    WebSocket protocol, so every endpoint gets the same `AlpacaExecutor`; only the URLs in
    `settings` differ. (The in-process `SimulatedExecutor` is built directly by tests and demos
    that own a market engine; it has no endpoint.)
    """
    from shared.broker.alpaca import AlpacaExecutor

    return AlpacaExecutor(settings)
