"""The simulated market's server: Alpaca's REST API, the trade_updates WebSocket and the /sim
controls, over aiohttp (the `sim` extra). `SimServer` (`app`) is put together from `trading`,
`data`, `stream` and `controls`; `common` holds what they share, `wire` the JSON shapes."""

from sim.server.app import ServerThread, SimServer, serve_forever, start_site
from sim.server.common import (
    CLOCK_END_MARGIN,
    DEFAULT_API_KEY,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SECRET_KEY,
    MAX_SPEED,
)

__all__ = ["CLOCK_END_MARGIN", "DEFAULT_API_KEY", "DEFAULT_RATE_LIMIT", "DEFAULT_SECRET_KEY", "MAX_SPEED",
           "ServerThread", "SimServer", "serve_forever", "start_site"]
