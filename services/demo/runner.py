"""The demo: one trading day of the line on the simulated market, through the production path.

It starts the simulated market on loopback (alpaca-py talks to it over HTTP, exactly as to Alpaca),
and an embedded Redis unless REDIS_URL is set. Then it writes sample scanner logs, ranks them at
06:00 New York, enters the signals at 09:35, protects the fills, and ends with positions and the
account at 16:05. The demo is wiring, like the CLI: it calls the services' own job functions.
"""

from __future__ import annotations

import os
import tempfile
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.demo.sample_logs import sample_logs, write_logs
from shared import bus, config
from shared.broker import make_executor
from shared.errors import InputError
from shared.market.calendar import NEW_YORK, nyse
from shared.money import fmt_money, fmt_qty
from shared.sim.engine import MarketEngine
from shared.texttable import table

#: A fixed, ordinary trading day: with the same seed the demo prints the same numbers.
DEFAULT_DAY = date(2026, 11, 2)
UNIVERSE_FOR_LOGS = 10


@dataclass
class DemoOptions:
    seed: int = 7
    day: date = DEFAULT_DAY
    workdir: Path | None = None


def run(options: DemoOptions, out=print) -> dict:
    session = nyse().session(options.day)
    if session is None:
        raise InputError(f"--day {options.day} is not an NYSE trading day")
    with ExitStack() as stack:
        workdir = options.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="factoryline-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        engine, base_url = _start_market(stack, options.seed, _at(options.day, time(5, 0)))
        redis_url, redis_kind = _redis(stack)
        env = {
            "ALPACA_API_KEY": "sim-key",
            "ALPACA_SECRET_KEY": "sim-secret",
            "ALPACA_ENDPOINT": base_url,
            "REDIS_URL": redis_url,
            "FL_NAMESPACE": os.environ.get("FL_NAMESPACE", "fl-demo"),
            "FL_SIGNALS_DIR": str(workdir / "logs"),
            "FL_SIGNALS_CSV": str(workdir / "actionable_signals.csv"),
        }
        stack.enter_context(_environment(env))
        out(f"simulated market: {base_url} (seed {options.seed}); redis: {redis_kind}; files: {workdir}")

        executor = make_executor(config.load(config.BrokerSettings))
        stack.callback(executor.close)

        # Discovery (a sample until the QuickStrike scanner is in): one log per ticker.
        tickers = [a.symbol for a in engine.assets()][:UNIVERSE_FOR_LOGS]
        prices = {s: p.price for s, p in executor.get_latest_prices(tickers).items()}
        write_logs(workdir / "logs", sample_logs(prices, engine.now(), options.seed))
        out(f"\n== 05:00 scanner wrote {len(prices)} logs to {workdir / 'logs'}")

        from services.ranker import cli as ranker_cli
        from services.ranker.jobs import rank_signals

        engine.advance_to(_at(options.day, time(6, 0)))
        ranked = rank_signals(now=engine.now().isoformat())
        out("\n== 06:00 ranker\n" + ranker_cli.render(ranked))

        from services.trader import cli as trader_cli
        from services.trader.jobs import trade_signals

        engine.advance_to(_at(options.day, time(9, 35)))
        traded = trade_signals()
        out("\n== 09:35 trader\n" + trader_cli.render(traded))

        engine.advance(60)
        protected = _protect_all(executor, redis_url, env["FL_NAMESPACE"])
        out(f"\n== 09:36 manager protected {protected} position(s)")
        out(_positions_table(executor))

        engine.advance_to(_at(options.day, time(16, 5)))
        _protect_all(executor, redis_url, env["FL_NAMESPACE"])
        out("\n== 16:05 closed today")
        out(_ledger_table(redis_url, env["FL_NAMESPACE"]))
        account = executor.get_account()
        out("\n== 16:05 account")
        out(f"equity {fmt_money(account.equity)}   cash {fmt_money(account.cash)}   "
            f"buying power {fmt_money(account.buying_power)}")
        out(_positions_table(executor))
        return {"ranked": ranked, "traded": traded, "equity": str(account.equity)}


def _at(day: date, clock: time) -> datetime:
    return datetime.combine(day, clock, tzinfo=NEW_YORK)


def _start_market(stack: ExitStack, seed: int, start: datetime) -> tuple[MarketEngine, str]:
    from services.sim.server import ServerThread, SimServer

    engine = MarketEngine.create(seed=seed, start=start, speed=0)
    thread = ServerThread(SimServer(engine, rate_limit=0)).start()
    stack.callback(thread.stop)
    return engine, thread.base_url


def _redis(stack: ExitStack) -> tuple[str, str]:
    """REDIS_URL when set; otherwise an embedded, in-memory Redis on a free loopback port."""
    if os.environ.get("REDIS_URL"):
        url = os.environ["REDIS_URL"]
        parts = urlsplit(url)
        # A password in the URL is a secret: show where, never how to log in.
        shown = parts._replace(netloc=f"***@{parts.hostname}:{parts.port or 6379}") if parts.password else parts
        return url, urlunsplit(shown)
    server = _embedded_redis_server()
    threading.Thread(target=server.serve_forever, name="embedded-redis", daemon=True).start()
    stack.callback(server.shutdown)
    host, port = server.server_address
    return f"redis://{host}:{port}/0", "embedded (in-memory, set REDIS_URL to use a real one)"


def _embedded_redis_server():
    import socket

    from fakeredis import TcpFakeServer

    class _NoDelayServer(TcpFakeServer):
        # Replies go out in several small writes; without TCP_NODELAY, Nagle and delayed ACKs cost
        # ~40 ms on pipelined calls (the manager's tick pipelines its compare-and-set scripts).
        def get_request(self):
            conn, addr = super().get_request()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return conn, addr

    return _NoDelayServer(("127.0.0.1", 0), server_type="redis")


class _environment:
    """Set variables for the services' settings loaders; restore them afterwards."""

    def __init__(self, values: dict[str, str]):
        self.values = values
        self.saved: dict[str, str | None] = {}

    def __enter__(self):
        for name, value in self.values.items():
            self.saved[name] = os.environ.get(name)
            os.environ[name] = value
        return self

    def __exit__(self, *exc):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _protect_all(executor, redis_url: str, namespace: str) -> int:
    from services.manager.reconcile import reconcile_all
    from shared.exits import ExitRules

    rules = ExitRules.from_settings(config.load(config.ExitSettings))
    reports = reconcile_all(executor, bus.connect(redis_url), bus.Keys(namespace), rules, "demo")
    return sum(1 for report in reports.values() if report.placed)


def _ledger_table(redis_url: str, namespace: str) -> str:
    from services.manager import ledger

    trades = ledger.read(bus.connect(redis_url), bus.Keys(namespace))
    if not trades:
        return "no closed trades"
    header = ("symbol", "qty", "entry", "exit", "realized P/L", "reason")
    rows = [(t.symbol, fmt_qty(t.qty), fmt_money(t.entry_price), fmt_money(t.exit_price), fmt_money(t.realized_pl),
              t.exit_reason.value) for t in trades]
    return "\n".join(table(header, rows))


def _positions_table(executor) -> str:
    positions = executor.get_positions()
    if not positions:
        return "no open positions"
    stops: dict[str, tuple[Decimal | None, Decimal | None]] = {}
    for order in executor.get_open_orders():
        for leg in order.all_orders():
            stop, target = stops.get(leg.symbol, (None, None))
            stops[leg.symbol] = (leg.stop_price or stop, leg.limit_price or target)
    header = ("symbol", "qty", "entry", "last", "P/L", "stop", "target")
    rows = []
    for p in positions:
        stop, target = stops.get(p.symbol, (None, None))
        rows.append((p.symbol, fmt_qty(p.qty), fmt_money(p.avg_entry_price), fmt_money(p.current_price or 0),
                     fmt_money(p.unrealized_pl or 0), fmt_money(stop) if stop else "-",
                     fmt_money(target) if target else "-"))
    return "\n".join(table(header, rows, right=range(1, 7)))
