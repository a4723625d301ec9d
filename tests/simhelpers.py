"""Start the simulated market for a test and drive it: the one helper every broker-facing test uses.

Two ways to run it, same API:

    from simhelpers import start_sim, sim          # `sim` is a pytest fixture (in-thread server)

    def test_something(sim):                          # fresh market, frozen clock, rate limit off
        client = sim.trading_client()                 # unmodified alpaca-py, pointed at the sim
        sim.control.advance(seconds=3600)             # /sim control endpoints over HTTP
        sim.engine.advance(60)                        # or the engine itself (in-thread mode only)

    handle = start_sim(process=True, rate_limit=200)  # a real `python -m sim` subprocess
    try: ... handle.process.kill() ... finally: handle.stop()

- `start_sim(...)` starts a server on a free loopback port. In-thread (default) it starts in
  ~10 ms and exposes `handle.engine`; with `process=True` it is a separate process you can kill,
  delay or restart (`handle.engine` is then None; use `handle.control`).
- Defaults suit tests: virtual start `DEFAULT_START` (Monday 2024-03-04 10:00 New York, market
  open), speed 0 (time moves only when you advance it), seed 7, $200,000 cash, rate limit off.
- `handle.broker_env()` / `handle.broker_settings()` give the ALPACA_* settings that point the
  project's own code (AlpacaExecutor, services) at this simulator.
- `handle.control` wraps every `/sim` endpoint documented in docs/simulator.md, plus
  `wait_for_event(...)` to wait until a trade update happened.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests

ROOT = Path(__file__).resolve().parents[1]
NEW_YORK = ZoneInfo("America/New_York")
#: Monday, regular session in progress; the week has no holiday.
DEFAULT_START = datetime(2024, 3, 4, 10, 0, tzinfo=NEW_YORK)
API_KEY = "sim-key"
SECRET_KEY = "sim-secret"


class SimControl:
    """HTTP client for the simulator's `/sim` control endpoints (see docs/simulator.md)."""

    def __init__(self, base_url: str, timeout: float = 30.0):
        self.base_url = base_url
        self.timeout = timeout
        self._session = requests.Session()

    def _post(self, path: str, body: dict | None = None) -> Any:
        response = self._session.post(f"{self.base_url}{path}", json=body or {}, timeout=self.timeout)
        if response.status_code >= 400:
            raise RuntimeError(f"POST {path} -> {response.status_code}: {response.text}")
        return response.json()

    def _get(self, path: str, params: dict | None = None) -> Any:
        response = self._session.get(f"{self.base_url}{path}", params=params, timeout=self.timeout)
        if response.status_code >= 400:
            raise RuntimeError(f"GET {path} -> {response.status_code}: {response.text}")
        return response.json()

    # -- time ----------------------------------------------------------------------------------
    def advance(self, seconds: float | None = None, to: datetime | str | None = None) -> datetime:
        """Move virtual time forward (everything in between happens); returns the new now."""
        body: dict[str, Any] = (
            {"seconds": seconds} if to is None else {"to": to if isinstance(to, str) else to.isoformat()}
        )
        return datetime.fromisoformat(self._post("/sim/clock/advance", body)["now"].replace("Z", "+00:00"))

    def set_speed(self, speed: float) -> None:
        self._post("/sim/clock/speed", {"speed": speed})

    # -- prices and assets ---------------------------------------------------------------------------
    def set_price(self, symbol: str, price: Decimal | str | float) -> None:
        """The symbol trades at `price` from now on; resting orders it reaches execute now."""
        self._post("/sim/price", {"symbol": symbol, "price": str(price)})

    def set_ask_missing(self, symbol: str, missing: bool = True) -> None:
        self._post("/sim/quote", {"symbol": symbol, "ask_missing": missing})

    def set_asset(
        self,
        symbol: str,
        *,
        fractionable: bool | None = None,
        listed_fractionable: bool | None = None,
        tradable: bool | None = None,
    ) -> dict:
        """`fractionable`: what orders enforce; `listed_fractionable`: what GET /v2/assets says."""
        body: dict[str, Any] = {"symbol": symbol}
        for key, value in (
            ("fractionable", fractionable),
            ("listed_fractionable", listed_fractionable),
            ("tradable", tradable),
        ):
            if value is not None:
                body[key] = value
        return self._post("/sim/asset", body)

    def split(
        self,
        symbol: str,
        new_rate: Decimal | str | int,
        old_rate: Decimal | str | int,
        orders: str = "adjust",
        announce: bool = True,
    ) -> dict:
        """Split `symbol` now (2, 1: two for one; 1, 4: one for four): position, prices and history
        re-base; resting orders "adjust" / "cancel" / "keep"; `announce=False`: no corporate action."""
        return self._post(
            "/sim/split",
            {
                "symbol": symbol,
                "new_rate": str(new_rate),
                "old_rate": str(old_rate),
                "orders": orders,
                "announce": announce,
            },
        )

    # -- fills ---------------------------------------------------------------------------------------
    def fill(
        self,
        order_id: str | None = None,
        *,
        client_order_id: str | None = None,
        qty: Decimal | str | None = None,
        price: Decimal | str | None = None,
    ) -> dict:
        """Fill an open order now (all that is left, or `qty`), at `price` or the quote."""
        body: dict[str, Any] = {"order_id": order_id} if order_id else {"client_order_id": client_order_id}
        if qty is not None:
            body["qty"] = str(qty)
        if price is not None:
            body["price"] = str(price)
        return self._post("/sim/fill", body)

    def broker_status(self, order_id: str, status: str) -> dict:
        """The broker changes an order's state on its own (canceled, expired, rejected, suspended,
        done_for_day); a change the transition table forbids raises (422)."""
        return self._post("/sim/order_status", {"order_id": order_id, "status": status})

    def partial_fill_next(self, symbol: str, fraction: Decimal | str | float) -> None:
        """The next order for `symbol` fills only `fraction` first (the rest later, see docs)."""
        self._post("/sim/partial_fill", {"symbol": symbol, "fraction": str(fraction)})

    # -- faults --------------------------------------------------------------------------------------
    def drop_stream(self, refuse_seconds: float = 0.0) -> int:
        """Close every trade_updates connection; refuse reconnects for `refuse_seconds`."""
        return self._post("/sim/faults/drop_stream", {"refuse_seconds": refuse_seconds})["dropped"]

    def delay_requests(
        self,
        count: int,
        seconds: float,
        *,
        path_prefix: str = "/v2/",
        method: str | None = None,
        when: str = "before",
    ) -> None:
        self._post(
            "/sim/faults/delay",
            {"count": count, "seconds": seconds, "path_prefix": path_prefix, "method": method, "when": when},
        )

    def fail_requests(
        self,
        count: int,
        status: int = 500,
        *,
        path_prefix: str = "/v2/",
        method: str | None = None,
        when: str = "before",
    ) -> None:
        """The next `count` matching requests answer `status`. when="after": processed first
        (an order is then created although the client saw the error)."""
        self._post(
            "/sim/faults/fail",
            {"count": count, "status": status, "path_prefix": path_prefix, "method": method, "when": when},
        )

    def clear_faults(self) -> None:
        self._post("/sim/faults/clear")

    def set_rate_limit(self, per_minute: int) -> None:
        self._post("/sim/rate_limit", {"per_minute": per_minute})

    # -- inspection ----------------------------------------------------------------------------------
    def state(self) -> dict:
        """Every order with its history, fills, positions, account, refusals (for audits)."""
        return self._get("/sim/state")

    def events(self, since: int = 0) -> list[dict]:
        """Trade updates after sequence number `since` (each has a `seq`)."""
        return self._get("/sim/events", {"since": since})

    def health(self) -> dict:
        return self._get("/sim/health")

    def reset(self, **engine_args: Any) -> None:
        """A fresh market (seed, start, cash, speed, universe_size) on the same port."""
        if isinstance(engine_args.get("start"), datetime):
            engine_args["start"] = engine_args["start"].isoformat()
        self._post("/sim/reset", engine_args)

    def wait_for_event(
        self, predicate: Callable[[dict], bool], *, since: int = 0, timeout: float = 5.0
    ) -> dict:
        """The first trade update after `since` that satisfies `predicate` (polls /sim/events)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(since):
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                raise TimeoutError("no matching trade update within the timeout")
            time.sleep(0.02)

    def close(self) -> None:
        self._session.close()


@dataclass
class SimHandle:
    base_url: str
    control: SimControl
    api_key: str = API_KEY
    secret_key: str = SECRET_KEY
    #: The market engine itself (in-thread mode only; None for a subprocess).
    engine: Any = None
    #: The `python -m sim` process (subprocess mode only).
    process: subprocess.Popen | None = None
    _thread: Any = None
    _cleanups: list[Callable[[], None]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    @property
    def stream_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/stream"

    def trading_client(self, *, retries: int = 0, retry_wait: float = 0.0):
        """alpaca-py TradingClient at this sim; its 429/504 retries off unless asked."""
        from alpaca.trading.client import TradingClient

        from shared.broker.alpaca import close_sdk_client, set_sdk_retries

        client = TradingClient(self.api_key, self.secret_key, url_override=self.base_url)
        set_sdk_retries(client, retries, retry_wait)
        self._cleanups.append(lambda: close_sdk_client(client))
        return client

    def data_client(self, *, retries: int = 0, retry_wait: float = 0.0):
        from alpaca.data.historical import StockHistoricalDataClient

        from shared.broker.alpaca import close_sdk_client, set_sdk_retries

        client = StockHistoricalDataClient(self.api_key, self.secret_key, url_override=self.base_url)
        set_sdk_retries(client, retries, retry_wait)
        self._cleanups.append(lambda: close_sdk_client(client))
        return client

    def trading_stream(self):
        from alpaca.trading.stream import TradingStream

        return TradingStream(self.api_key, self.secret_key, url_override=self.stream_url)

    def broker_env(self) -> dict[str, str]:
        """Environment variables that point Factory Line's broker settings at this simulator."""
        return {
            "ALPACA_API_KEY": self.api_key,
            "ALPACA_SECRET_KEY": self.secret_key,
            "ALPACA_ENDPOINT": self.base_url,
            "ALPACA_DATA_ENDPOINT": self.base_url,
            "ALPACA_STREAM_ENDPOINT": self.stream_url,
        }

    def broker_settings(self, **overrides: Any):
        from shared.config import BrokerSettings

        values: dict[str, Any] = dict(self.broker_env())
        values.update(overrides)
        return BrokerSettings(_env_file=None, **values)

    def stop(self) -> None:
        for cleanup in self._cleanups:
            cleanup()
        self.control.close()
        if self._thread is not None:
            self._thread.stop()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


class TradeUpdateCollector:
    """alpaca-py's TradingStream in a background thread, collecting every TradeUpdate.

    with TradeUpdateCollector(sim) as updates:
        ... place orders ...
        updates.wait_for(lambda u: u.event == "fill")
    """

    def __init__(self, handle: SimHandle, timeout: float = 5.0):
        self.handle = handle
        self.timeout = timeout
        self.updates: list = []
        self._stream = handle.trading_stream()
        self._thread = None

    def __enter__(self) -> TradeUpdateCollector:
        import threading

        async def on_update(update) -> None:
            self.updates.append(update)

        self._stream.subscribe_trade_updates(on_update)
        self._thread = threading.Thread(target=self._stream.run, daemon=True)
        self._thread.start()
        self.wait_until_listening()
        return self

    def wait_until_listening(self) -> None:
        deadline = time.monotonic() + self.timeout
        while self.handle.control.state()["stream_connections"] < 1:
            if time.monotonic() > deadline:
                raise TimeoutError("the trade stream did not start listening")
            time.sleep(0.02)

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for update in list(self.updates):
                if predicate(update):
                    return update
            if time.monotonic() > deadline:
                raise TimeoutError(f"no matching trade update; got {[u.event for u in self.updates]}")
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        self._stream.stop()
        # alpaca-py polls its stop flag every 5 s; closing the socket from the server side ends it now.
        self.handle.control.drop_stream()
        if self._thread is not None:
            self._thread.join(timeout=10)


def start_sim(
    *,
    seed: int = 7,
    start: datetime = DEFAULT_START,
    cash: Decimal | int | str = 200_000,
    speed: float = 0.0,
    rate_limit: int = 0,
    universe_size: int | None = None,
    bars_csv: Path | str | None = None,
    data: str | None = None,
    process: bool = False,
    port: int = 0,
    api_key: str = API_KEY,
    secret_key: str = SECRET_KEY,
) -> SimHandle:
    """Start a simulated market on 127.0.0.1 (a free port unless `port` is given)."""
    if process:
        return _start_process(
            seed=seed,
            start=start,
            cash=cash,
            speed=speed,
            rate_limit=rate_limit,
            universe_size=universe_size,
            bars_csv=bars_csv,
            data=data,
            port=port,
            api_key=api_key,
            secret_key=secret_key,
        )
    from sim.engine import MarketEngine
    from sim.server import ServerThread, SimServer

    history = None
    if data is not None:
        from shared.history import load

        history = load(data)
    engine = MarketEngine.create(
        seed=seed, start=start, cash=cash, speed=speed, universe_size=universe_size, bars_csv=bars_csv,
        history=history,
    )
    server = SimServer(engine, api_key=api_key, secret_key=secret_key, rate_limit=rate_limit)
    thread = ServerThread(server, port=port).start()
    return SimHandle(
        base_url=thread.base_url,
        control=SimControl(thread.base_url),
        api_key=api_key,
        secret_key=secret_key,
        engine=engine,
        _thread=thread,
    )


_LISTENING = re.compile(r"listening on (http://[0-9.]+:[0-9]+)")


def _start_process(
    *, seed, start, cash, speed, rate_limit, universe_size, bars_csv, data, port, api_key, secret_key
) -> SimHandle:
    command = [
        sys.executable,
        "-m",
        "sim",
        "--port",
        str(port),
        "--seed",
        str(seed),
        "--start",
        start.isoformat(),
        "--speed",
        str(speed),
        "--cash",
        str(cash),
        "--rate-limit",
        str(rate_limit),
        "--api-key",
        api_key,
        "--secret-key",
        secret_key,
    ]
    if universe_size is not None:
        command += ["--universe-size", str(universe_size)]
    if bars_csv is not None:
        command += ["--bars-csv", str(bars_csv)]
    if data is not None:
        command += ["--data", data]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FL_SIM_")}
    # stderr goes to a file, not a pipe: a pipe nobody reads would block the server once full.
    stderr = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.monotonic() + 30
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        match = _LISTENING.search(line)
        if match:
            base_url = match.group(1)
            return SimHandle(
                base_url=base_url,
                control=SimControl(base_url),
                api_key=api_key,
                secret_key=secret_key,
                process=proc,
            )
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait(timeout=5)
    stderr.seek(0)
    raise RuntimeError(f"the simulator process did not start: {line.strip()} {stderr.read().strip()[-2000:]}")


@pytest.fixture
def sim() -> Iterator[SimHandle]:
    """A fresh in-thread simulated market (frozen clock at DEFAULT_START, rate limit off)."""
    handle = start_sim()
    yield handle
    handle.stop()


@pytest.fixture
def sim_process() -> Iterator[SimHandle]:
    """A fresh simulated market in its own process (for kill/restart tests)."""
    handle = start_sim(process=True)
    yield handle
    handle.stop()
