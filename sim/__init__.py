"""The simulated market: an Alpaca-compatible account and market for the demo and the tests.

Installed with the `sim` extra (`pip install 'factoryline[sim]'`: aiohttp for the server, fakeredis
for the demo's embedded Redis). Production code (`shared`, `services`) never imports it.

    sim.engine    the market in process (`MarketEngine`): clock and sessions, matching, account, ...
    sim.executor  `SimulatedExecutor`: the `OrderExecutor` contract over an engine, no HTTP
    sim.server    Alpaca's REST API, the trade_updates WebSocket and the /sim controls (aiohttp)
    sim.settings  its FL_SIM_* settings;  sim.cli: `python -m sim` / `factoryline sim`
"""
