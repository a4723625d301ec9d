"""The demo over several trading days: the whole line on the simulated market, step by step.

Each day: the scanner scans the simulated universe at 05:00 New York (two years of the seeded daily
history, every strategy backtested), the ranker keeps its IN_TRADE + PROFITABLE signals at 06:00, the
trader buys them at 09:35, the manager protects every fill and runs its soft-exit tick every 5 minutes
until the close, and the reporter writes the day's report at 16:05. Nothing is made up: a day whose
scan the ranker keeps nothing of is a day without entries, and the demo says so. Fills travel as in
production: the streamer (its real loop, in a thread) holds the market's trade-update WebSocket and writes each update to the Redis stream; the manager's consumer reads the
stream and protects. The demo polls that consumer after each step of virtual time. Virtual time moves only when the demo says so, so a seed gives the same story every run.
The services are called through their own job functions, over HTTP to the simulator and over Redis
(embedded unless REDIS_URL is set), exactly as in production; the demo is wiring and narration.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import threading
import time as wall
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

from demo import audit
from demo.runner import _at, _environment, _redis
from shared import bus, config
from shared.broker import make_executor
from shared.errors import InputError
from shared.exits import ExitRules
from shared.market.calendar import NEW_YORK, nyse
from shared.money import fmt_money, fmt_qty
from shared.protection import Trigger

DEFAULT_FIRST_DAY = date(2026, 11, 2)
DEFAULT_DAYS = 10
SIM_SECRET = "sim-secret-do-not-print"
TICK_MINUTES = 5
#: A demo day runs from the scan to the report (New York).
DAY_STARTS = time(5, 0)
DAY_ENDS = time(16, 5)
#: Seconds the demo lets the market run between an entry and the manager's protection pass.
PROTECT_AFTER_SECONDS = 2
#: Tickers in the demo's market: the simulator's 25 named ones plus synthetic ones (XAAA, XAAB, ...).
#: A nightly scan looks at many tickers because on any one night only a few fire a signal whose
#: backtest proves itself; 50 gives the ranker something to keep on (nearly) every day.
DEMO_UNIVERSE_SIZE = 50
#: Wall seconds the demo waits for the streamer to catch up with the market's trade updates.
STREAM_WAIT_SECONDS = 5


@dataclass
class DaysOptions:
    seed: int = 7
    #: None: DEFAULT_FIRST_DAY, or with `data` two years into the data.
    first_day: date | None = DEFAULT_FIRST_DAY
    days: int = DEFAULT_DAYS
    workdir: Path | None = None
    #: A progress bar redrawn in place (True), plain lines only (False); None: a bar when stdout is a terminal.
    progress_bar: bool | None = None
    #: Real daily history to run on (a `shared.history` source: csv:PATH, bokeh, broker); None: seeded prices.
    data: str | None = None
    #: When given, filled with what happened, for a test to compare (the parity test): "equity"
    #: [(day, equity at the report)], "trades" (the ledger's closed trades), "fills" (the market's).
    record: dict | None = None


class _Narrator:
    """Prints and remembers every line the demo shows (the secret audit reads them back). With a
    live bar, the bar is wiped before each line so lines never mix with it."""

    def __init__(self, out, bar: LiveBar | None = None):
        self.out = out
        self.bar = bar
        self.lines: list[str] = []

    def __call__(self, text: str = "") -> None:
        self.lines.append(text)
        if self.bar is not None:
            self.bar.clear()
        self.out(text)


class LiveBar:
    """The progress bar on a terminal: percent done, day i/N and the simulated New York time, redrawn
    in place on one line (carriage return) and wiped before any other line is printed."""

    WIDTH = 24

    def __init__(self, stream, sessions):
        self.stream = stream
        self.sessions = sessions
        self.shown = ""

    def draw(self, number: int, moment: datetime) -> None:
        """`number`: the day (1-based) in progress; `moment`: the simulated time now."""
        session = self.sessions[number - 1]
        start, end = _at(session.date, DAY_STARTS), _at(session.date, DAY_ENDS)
        into_day = min(max((moment - start) / (end - start), 0.0), 1.0)
        fraction = (number - 1 + into_day) / len(self.sessions)
        done = int(self.WIDTH * fraction)
        text = (f"[{'#' * done}{'.' * (self.WIDTH - done)}] {int(100 * fraction):3d}%  "
                f"day {number}/{len(self.sessions)}  {moment.astimezone(NEW_YORK):%Y-%m-%d %H:%M} New York")
        if text != self.shown:
            self.stream.write("\r" + text + "\x1b[K")
            self.stream.flush()
            self.shown = text

    def clear(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = ""


def run_days(options: DaysOptions, out=print) -> int:
    """Run the days, print the story, the final report and the audit; 0 when every invariant held."""
    if options.days < 1:
        raise InputError(f"--days {options.days}: give at least 1")
    history = None
    first_day = options.first_day
    if options.data is not None:
        from shared.history import load
        from sim.cli import default_replay_start

        history = load(options.data)
        first_day = first_day or default_replay_start(history).date()
    first_day = first_day or DEFAULT_FIRST_DAY
    try:
        first = nyse().session(first_day)
    except ValueError as exc:
        raise InputError(f"--day {first_day}: {exc}") from None
    if first is None:
        raise InputError(f"--day {first_day} is not an NYSE trading day")
    sessions = [first]
    while len(sessions) < options.days:
        sessions.append(nyse().next_session(sessions[-1].date))
    if history is not None:
        history = _demo_history(history, sessions)
    show_bar = sys.stdout.isatty() if options.progress_bar is None else options.progress_bar
    bar = LiveBar(sys.stdout, sessions) if show_bar else None
    say = _Narrator(out, bar)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        with ExitStack() as stack:
            return _run(stack, options, sessions, say, captured, history)
    finally:
        if bar is not None:
            bar.clear()
        logging.getLogger().removeHandler(handler)


def _demo_history(history, sessions):
    """The data the demo's days can use: every day inside it, the symbols already trading on the
    first day (a ticker listed later, FB in the bokeh data, is not in that market yet)."""
    from shared.history import History

    first, last = sessions[0].date, sessions[-1].date
    if not history.first_day() < first or last > history.last_day():
        raise InputError(f"the demo's days {first} to {last} are not inside the data ({history.source}: "
                         f"{history.first_day()} to {history.last_day()}); choose --day and --days inside it")
    symbols = [s for s, bars in history.bars.items() if bars[0].t.date() < first]
    if not symbols:
        raise InputError(f"{history.source}: no symbol has bars before {first}")
    return History(bars={s: history.bars[s] for s in symbols}, adjusted=history.adjusted,
                   splits={s: v for s, v in history.splits.items() if s in symbols}, source=history.source)


def _run(stack: ExitStack, options: DaysOptions, sessions, say: _Narrator, captured: io.StringIO,
         history=None) -> int:
    # Kept after the run: the HTML report it prints is the thing to open next.
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="factoryline-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    engine, base_url = _start_market(stack, options.seed, _at(sessions[0].date, time(5, 0)), history)
    redis_url, redis_kind = _redis(stack)
    namespace = os.environ.get("FL_NAMESPACE") or _namespace(redis_kind)
    env = {
        "ALPACA_API_KEY": "sim-key",
        "ALPACA_SECRET_KEY": SIM_SECRET,
        "ALPACA_ENDPOINT": base_url,
        "REDIS_URL": redis_url,
        "FL_NAMESPACE": namespace,
        "FL_SIGNALS_DIR": str(workdir / "logs"),
        "FL_SIGNALS_CSV": str(workdir / "actionable_signals.csv"),
        "FL_REPORTS_DIR": str(workdir / "reports"),
    }
    stack.enter_context(_environment(env))
    prices = f"real prices: {history.source}" if history is not None else f"seed {options.seed}"
    say(f"simulated market: {base_url} ({prices}); redis: {redis_kind}; files: {workdir}")
    say(f"{len(sessions)} trading day(s): {sessions[0].date} to {sessions[-1].date}")

    executor = make_executor(config.load(config.BrokerSettings))
    stack.callback(executor.close)
    client = bus.connect(redis_url)
    stack.callback(client.close)
    keys = bus.Keys(namespace)
    rules = ExitRules.from_settings(config.load(config.ExitSettings))
    manager = _start_streamer_and_manager(stack, client, keys, rules, redis_url)
    line = _Line(engine, executor, client, keys, rules, say, workdir, manager)
    entries: list[audit.EntryRun] = []
    files = None
    for number, session in enumerate(sessions, start=1):
        line.day_number = number
        entry_run, files = line.day(session)
        entries.append(entry_run)
        say(_progress(number, len(sessions), session.date, files.report.account.equity, line))
        if options.record is not None:
            options.record.setdefault("equity", []).append((session.date, files.report.account.equity))
    quiet = [str(s.date) for s in sessions if s.date not in line.scan_days]
    say(f"\nentries: on {len(line.scan_days)} of {len(sessions)} day(s) the trader bought what that morning's "
        "scan found (no sample signals are made up)" + (f"; no entries on {', '.join(quiet)}" if quiet else ""))

    if options.record is not None:
        from shared import ledger

        options.record["trades"] = ledger.read(client, keys)
        options.record["fills"] = engine.state()["fills"]
    from services.reporter import render_text

    # The stream's length and any lag depend on thread timing, so they go to the log, not the story.
    logging.getLogger(__name__).info("demo stream: %d updates, lagged %d time(s)",
                                     client.xlen(keys.trade_updates), line.streamed_late)
    if client.xlen(keys.trade_updates):
        say(f"\nstreamer: trade updates went through the Redis stream {keys.trade_updates} to the manager")
    else:
        say(f"\nstreamer: NOTHING reached {keys.trade_updates}; the manager protected from the broker's records")

    say("\n== final report")
    say(render_text.render(files.report))
    say(f"\nHTML report: {files.html_path}")
    from services.reporter import render_tearsheet
    from services.reporter.jobs import write_tearsheet
    from services.reporter.settings import ReporterSettings

    sheet = write_tearsheet(executor, client, keys, workdir / "reports", sessions[0].date,
                            config.load(ReporterSettings).FL_BENCHMARK_SYMBOL, record=False)
    say("\n" + render_tearsheet.render_text(sheet.sheet))
    say(f"\ntearsheet: {sheet.html_path}")
    say("\n== safety invariants (ARCHITECTURE.md), checked against the simulator's records")
    outputs = "\n".join(say.lines) + "\n" + captured.getvalue()
    checks = audit.check_all(engine.state(), entries, outputs, SIM_SECRET, client, keys)
    for check in checks:
        say(f"  {'held    ' if check.held else 'VIOLATED'}  {check.number}. {check.name}: {check.detail}")
    violated = [c for c in checks if not c.held]
    say("every invariant held" if not violated else f"{len(violated)} invariant(s) VIOLATED")
    return 1 if violated else 0


def _namespace(redis_kind: str) -> str:
    """The embedded Redis is empty each run; a real one may hold an earlier demo's ledger and stream,
    so each run there gets its own namespace (FL_NAMESPACE overrides)."""
    if redis_kind.startswith("embedded"):
        return "fl-demo"
    return f"fl-demo-{uuid.uuid4().hex[:8]}"


def _start_market(stack: ExitStack, seed: int, start: datetime, history=None):
    from sim.engine import MarketEngine
    from sim.server import ServerThread, SimServer

    # Real data: the universe is the data's symbols (the replay makes it so).
    engine = MarketEngine.create(seed=seed, start=start, speed=0, universe_size=DEMO_UNIVERSE_SIZE,
                                 history=history)
    thread = ServerThread(SimServer(engine, api_key="sim-key", secret_key=SIM_SECRET, rate_limit=0)).start()
    stack.callback(thread.stop)
    return engine, thread.base_url


def _start_streamer_and_manager(stack: ExitStack, client, keys, rules, redis_url: str):
    """The streamer's real loop in a thread (WebSocket to the market, trade updates into the Redis
    stream), and the manager's stream consumer, which the demo polls after each step of time so the
    story stays deterministic."""
    from services.manager.daemon import Manager
    from services.manager.settings import ManagerSettings
    from services.streamer.daemon import Streamer
    from services.streamer.settings import StreamerSettings

    broker_settings = config.load(config.BrokerSettings)
    streamer = Streamer(make_executor(broker_settings), client, keys, config.load(StreamerSettings))
    thread = threading.Thread(target=streamer.run, name="demo-streamer", daemon=True)
    thread.start()

    def stop_streamer() -> None:
        streamer.stop()
        thread.join(timeout=5)

    stack.callback(stop_streamer)
    stream_client = bus.connect(redis_url, blocking=True)
    stack.callback(stream_client.close)
    manager = Manager(make_executor(broker_settings), client, stream_client, keys, rules,
                      config.load(ManagerSettings))
    stack.callback(manager.close)
    manager.consumer.start()
    return manager


def _progress(number: int, total: int, day: date, equity, line: _Line) -> str:
    width = 20
    done = width * number // total
    return (f"[{'#' * done}{'.' * (width - done)}] day {number}/{total} {day}  equity {fmt_money(equity)}  "
            f"fills {line.fill_count}  exits {line.exit_count}")


class _Line:
    """The line's services, driven one step of virtual time after another."""

    def __init__(self, engine, executor, client, keys, rules, say, workdir: Path, manager):
        self.manager = manager
        self.streamed_late = 0
        self.engine, self.executor, self.client, self.keys, self.rules = engine, executor, client, keys, rules
        self.say, self.workdir = say, workdir
        self.fills_seen = 0
        self.trades_seen = 0
        self.fill_count = 0
        self.exit_count = 0
        self.day_number = 1
        #: A tripped risk limit is said once (it stays tripped until `factoryline resume`).
        self.limit_said = False
        #: Days the trader sent entries (for the signals the ranker kept from that morning's scan).
        self.scan_days: list[date] = []

    def day(self, session):
        from services.ranker.jobs import rank_signals
        from services.reporter.jobs import write_report
        from services.trader.jobs import trade_signals

        day = session.date
        self.say(f"\n== {day}")
        self._advance_to(_at(day, DAY_STARTS))
        self._scan()
        self._advance_to(_at(day, time(6, 0)))
        ranked = rank_signals(now=self.engine.now().isoformat())
        self._say_ranked(ranked)
        # The manager's pre-open check (FL_SCHEDULE_PRE_OPEN, open-20): a split effective today
        # (a real one, in replayed data) re-bases the position and its protection before the open.
        self._advance_to(session.open.astimezone(NEW_YORK) - timedelta(minutes=20))
        self._pre_open()
        entry_at = _at(day, time(9, 35))
        self._advance_to(entry_at)
        account = self.executor.get_account()
        traded = trade_signals()
        self.say(f"  09:35 trader: {_trade_line(traded)}")
        submitted = [e for e in traded.get("entries", []) if e["status"] == "submitted"]
        if submitted:
            self.scan_days.append(day)
        entry_run = audit.EntryRun(day=day, at=self.engine.now(), buying_power=account.buying_power,
                                   equity=account.equity, halted_by_limit=_limit_halt(self.client, self.keys),
                                   symbols=tuple(e["symbol"] for e in submitted))
        self.engine.advance(PROTECT_AFTER_SECONDS)
        self._manage(tick=False)
        close = session.close.astimezone(NEW_YORK)
        moment = entry_at
        while True:
            moment += timedelta(minutes=TICK_MINUTES)
            if moment >= close:
                break
            self._advance_to(moment)
            self._manage(tick=True)
        self._advance_to(_at(day, DAY_ENDS))
        self._manage(tick=False, reconcile=True)
        files = write_report(self.executor, self.client, self.keys, self.rules, self.workdir / "reports")
        return entry_run, files

    def _pre_open(self) -> None:
        from services.manager.jobs import pre_open_check

        held = {p.symbol: p.qty for p in self.executor.get_positions()}
        if not held:
            return
        result = pre_open_check()
        for split in self.executor.get_splits(list(held), session_day := self.engine.now().astimezone(NEW_YORK).date(),
                                              session_day):
            self.say(f"  09:10 manager: {split.symbol} split {split.new_rate.normalize()}:{split.old_rate.normalize()} "
                     f"today; position re-based to {fmt_qty(held[split.symbol])} shares and protected again")
        if result.get("failed"):
            self.say(f"  09:10 manager: pre-open check failed for {', '.join(result['failed'])}")

    def _advance_to(self, moment: datetime) -> None:
        if moment > self.engine.now():
            self.engine.advance_to(moment)
        if self.say.bar is not None:
            self.say.bar.draw(self.day_number, self.engine.now())

    def _scan(self) -> None:
        from services.scanner.jobs import scan_targets

        summary = scan_targets(now=self.engine.now().isoformat(), workers=1)
        self.say(f"  05:00 scanner: {summary['scanned']} ticker(s) scanned, {summary['in_trade']} in trade")

    def _say_ranked(self, ranked: dict) -> None:
        kept = ranked["kept"]
        if not kept:
            self.say(f"  06:00 ranker: kept NONE of {ranked['logs']} scanned log(s): no signal in trade with a "
                     "profitable backtest, so no entries today")
            return
        self.say(f"  06:00 ranker: kept {len(kept)} of {ranked['logs']} scanned log(s), "
                 f"rejected {len(ranked['rejected'])}")
        for signal in kept:
            self.say(f"    {signal['rank']}. {signal['ticker']:<5} {signal['strategy']:<21} win rate "
                     f"{Decimal(signal['win_rate']) * 100:.1f}% over {signal['trades']} backtest trades, "
                     f"average {Decimal(signal['avg_return']) * 100:+.2f}%")

    def _manage(self, *, tick: bool, reconcile: bool = False) -> None:
        """The manager's two duties: protect what filled (from the fills the streamer put in the Redis
        stream), then the soft-exit tick; a full reconcile at the day's edges, as its timer would."""
        from services.manager.tick import run_tick

        if self._announce_fills():
            self._consume_stream()
        if reconcile:
            self.manager.reconcile_all(Trigger.TIMER)
        if tick:
            report = run_tick(self.manager.ctx)
            if report.status.value == "halted" and not self.limit_said and (reason := _limit_halt(self.client,
                                                                                                  self.keys)):
                self.limit_said = True
                self.say(f"  {report.at:%H:%M} {reason}: entries halted"
                         + (f", {len(report.exits)} position(s) sold" if report.exits else ""))
            if self._announce_fills():
                self._consume_stream()
        self._announce_exits()

    def _consume_stream(self) -> None:
        """Wait (briefly, in wall time) for the streamer to write every update the market emitted,
        then let the manager read them. If the stream lags, the manager reconciles everything."""
        emitted = self.engine.state()["event_count"]
        deadline = wall.monotonic() + STREAM_WAIT_SECONDS
        while self._streamed() < emitted and wall.monotonic() < deadline:
            wall.sleep(0.005)
        while True:
            batch = self.manager.consumer.poll(block_ms=0)
            if not (batch.acked or batch.failed or batch.dead_lettered):
                break
        if self._streamed() < emitted:
            self.streamed_late += 1
            self.manager.reconcile_all(Trigger.TIMER)

    def _streamed(self) -> int:
        return self.client.xlen(self.keys.trade_updates)

    def _announce_fills(self) -> int:
        """Print the fills since the last look; how many there were."""
        fills = self.engine.state()["fills"]
        new = fills[self.fills_seen:]
        for fill in new:
            at = fill["timestamp"].astimezone(NEW_YORK)
            self.say(f"  {at:%H:%M:%S} fill  {fill['side']:<4} {fmt_qty(fill['qty']):>14} {fill['symbol']:<5} "
                     f"@ {fmt_money(fill['price'])}   position {fmt_qty(fill['position_qty_after'])}")
            self.fill_count += 1
        self.fills_seen = len(fills)
        return len(new)

    def _announce_exits(self) -> None:
        from shared import ledger

        trades = ledger.read(self.client, self.keys)
        for trade in trades[self.trades_seen:]:
            at = trade.closed_at.astimezone(NEW_YORK)
            self.say(f"  {at:%H:%M:%S} exit  {trade.symbol:<5} {fmt_qty(trade.qty)} @ {fmt_money(trade.exit_price)} "
                     f"({trade.exit_reason.value})  P/L {fmt_money(trade.realized_pl)}")
            self.exit_count += 1
        self.trades_seen = len(trades)


def _limit_halt(client, keys) -> str:
    """The halt flag's reason when a risk limit set it, else ''."""
    from shared.halt import halt_reason

    reason = halt_reason(client, keys) or ""
    return reason if reason.startswith("risk limit") else ""


def _trade_line(traded: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(traded.get("counts", {}).items()))
    skips = traded.get("skips", [])
    if not counts and not skips:
        return f"{traded.get('status', '-')}: {traded.get('reason', '')}".rstrip(": ")
    bought = ", ".join(e["symbol"] for e in traded.get("entries", []) if e["status"] == "submitted")
    skipped = ", ".join(f"{s['symbol']} ({s['reason']})" for s in skips)
    return ((counts or "0 submitted") + (f": {bought}" if bought else "")
            + (f"; skipped {skipped}" if skipped else ""))
