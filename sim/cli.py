"""`factoryline sim`: run the Alpaca-compatible simulated market on a loopback port.

Flags override environment variables (and `.env`), which override the defaults:

    --host      FL_SIM_HOST          127.0.0.1
    --port      FL_SIM_PORT          8080
    --seed      FL_SIM_SEED          7
    --start     FL_SIM_START         now (ISO time; naive means New York)
    --speed     FL_SIM_SPEED         1 (virtual seconds per wall second; 0 freezes the clock)
    --cash      FL_SIM_CASH          200000
    --rate-limit FL_SIM_RATE_LIMIT   200 requests/minute per key and API (0 disables)
    --bars-csv  FL_SIM_BARS_CSV      none (replay bars instead of seeded prices)
    --data      FL_SIM_DATA          none (replay real daily history: csv:PATH, bokeh, broker; docs/data.md)
    --universe-size FL_SIM_UNIVERSE_SIZE  the 25 default tickers
    --api-key / --secret-key  FL_SIM_API_KEY / FL_SIM_SECRET_KEY  sim-key / sim-secret
"""

from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path

from shared.config import load
from shared.errors import InputError
from sim.settings import SimSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1: loopback only)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
    parser.add_argument("--seed", type=int, help="price-path seed (default 7)")
    parser.add_argument("--start", help="virtual start time, ISO 8601 (default: now; no offset = New York)")
    parser.add_argument("--speed", type=float, help="virtual seconds per wall second (default 1; 0 = frozen)")
    parser.add_argument("--cash", help="starting cash in dollars (default 200000)")
    parser.add_argument(
        "--rate-limit", type=int, help="requests per minute per key and API (default 200; 0 = off)"
    )
    parser.add_argument(
        "--bars-csv", help="replay bars from this CSV (symbol,timestamp,open,high,low,close,volume)"
    )
    parser.add_argument(
        "--data", help="replay real daily history: csv:PATH, bokeh or broker (docs/data.md); "
        "the default start is then two years into it"
    )
    parser.add_argument("--universe-size", type=int, help="number of tickers (default: the 25 built-in ones)")
    parser.add_argument("--api-key", help="API key clients must send (default sim-key)")
    parser.add_argument("--secret-key", help="secret key clients must send (default sim-secret)")


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sim", help="run the Alpaca-compatible simulated market")
    add_arguments(parser)
    parser.set_defaults(func=run)


def parse_start(text: str) -> datetime | None:
    from shared.market.calendar import NEW_YORK

    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--start: not an ISO 8601 time: {text!r} (e.g. 2024-03-04T09:00-05:00)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=NEW_YORK)


#: With --data and no --start, the clock starts this far into the history (the scanner reads two years).
REPLAY_LEAD_DAYS = 730


def default_replay_start(history) -> datetime:
    """08:00 New York on the first session at least REPLAY_LEAD_DAYS after the history's first day
    (or its last day, for a shorter history)."""
    from datetime import time, timedelta

    from shared.market.calendar import NEW_YORK, nyse

    day = min(history.first_day() + timedelta(days=REPLAY_LEAD_DAYS), history.last_day())
    session = nyse().next_session(day, include=True)
    return datetime.combine(session.date, time(8, 0), tzinfo=NEW_YORK)


def _pick(flag, env):
    return env if flag is None else flag


def run(args: argparse.Namespace) -> int:
    import asyncio

    from shared.money import to_decimal
    from sim.engine import MarketEngine
    from sim.server import SimServer, serve_forever

    settings = load(SimSettings)
    cash_text = _pick(args.cash, settings.FL_SIM_CASH)
    try:
        cash = to_decimal(cash_text)
    except ValueError:
        raise InputError(f"--cash: not an amount: {cash_text!r}") from None
    if cash < 0:
        raise InputError("--cash: cannot be negative")
    speed = _pick(args.speed, settings.FL_SIM_SPEED)
    if speed < 0:
        raise InputError("--speed: cannot be negative")
    rate_limit = _pick(args.rate_limit, settings.FL_SIM_RATE_LIMIT)
    if rate_limit < 0:
        raise InputError("--rate-limit: cannot be negative (0 disables it)")
    bars_csv = _pick(args.bars_csv, settings.FL_SIM_BARS_CSV) or None
    if bars_csv is not None and not Path(bars_csv).is_file():
        raise InputError(f"--bars-csv: no such file: {bars_csv}")
    data = _pick(getattr(args, "data", None), settings.FL_SIM_DATA) or None
    history = None
    start = parse_start(_pick(args.start, settings.FL_SIM_START))
    if data is not None:
        if bars_csv is not None:
            raise InputError("--data and --bars-csv: replay one or the other")
        from shared.history import load as load_history

        history = load_history(data)
        if start is None:
            start = default_replay_start(history)
    universe_size = _pick(args.universe_size, settings.FL_SIM_UNIVERSE_SIZE)
    if universe_size is not None and not 1 <= universe_size <= 17_576:
        raise InputError("--universe-size: must be between 1 and 17576")
    port = _pick(args.port, settings.FL_SIM_PORT)
    if not 0 <= port <= 65535:
        raise InputError("--port: must be between 0 and 65535")
    engine = MarketEngine.create(
        seed=_pick(args.seed, settings.FL_SIM_SEED),
        start=start,
        cash=cash,
        speed=speed,
        universe_size=universe_size,
        bars_csv=bars_csv,
        history=history,
    )
    server = SimServer(
        engine,
        api_key=_pick(args.api_key, settings.FL_SIM_API_KEY.get_secret_value()),
        secret_key=_pick(args.secret_key, settings.FL_SIM_SECRET_KEY.get_secret_value()),
        rate_limit=rate_limit,
    )
    try:
        asyncio.run(serve_forever(server, _pick(args.host, settings.FL_SIM_HOST), port))
    except OSError as exc:
        raise InputError(f"cannot listen on port {port}: {exc.strerror or exc}") from None
    return 0
