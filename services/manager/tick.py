"""The manager's tick (RQ job `manage_positions`, every 5 minutes in market hours; `factoryline manage`).

Reads: the halt flag, every open position (one listing, whose HTTP Date header is the broker's "now"
and whose `current_price`, the last trade, is each position's price), the day's session (kept in
Redis by `shared.market.sessions`: no broker request), the data feed's latest price only for a
position the listing gives no price (the ask, or the last trade when there is no ask), the minute
bars since the last tick of the positions whose exits they can change (`bars_wanted`), and each
position's `PositionState` in Redis (one MGET).
Decides: `shared.exits.evaluate` raises the high-water mark with the highest price seen since the
last tick (so a spike between ticks counts), arms break-even and trailing, and says whether a soft
exit fires (trailing, break-even, time stop).
Writes: the advanced states (compare-and-set: a fill processed meanwhile wins), the exits
(`shared.positions.exiting`), and portfolio.csv.

Broker requests per tick when no exit fires and no state is lost: 3 (positions, the account for the
risk limits, bars) up to 200 positions. Past that the adapter splits bars into one request per 200
symbols (Alpaca answers a longer symbol list with "Request-URI Too Large"): at most 2 + 7 for
positions with nothing armed (UNARMED_BARS_BUDGET), plus ceil(armed / 200). A cold session
cache adds one calendar request for the day; a lost state adds two requests for all lost symbols
together (order history, bars since entry); each exit adds its own.
Checks no soft exit (and says so) while the halt flag is set, and does nothing while the market is
closed; the risk limits are measured on every tick in the session, halted or not.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from pathlib import Path

import redis

from services.manager import portfolio
from shared import bus, config, logs, risk
from shared.broker.contract import OrderExecutor
from shared.exits import (
    ExitDecision,
    ExitReason,
    ExitRules,
    PositionState,
    breakeven_arm_level,
    evaluate,
    soft_exit,
)
from shared.market import sessions
from shared.market.calendar import NEW_YORK
from shared.models import Position, Timeframe
from shared.money import ZERO
from shared.ownership import ForeignPolicy
from shared.positions import exiting, hwm
from shared.positions.context import ManagerContext, context_from_environment

log = logging.getLogger(__name__)

#: Exit outcomes after which the position is gone from portfolio.csv.
_CLOSED = (exiting.ExitOutcome.SOLD, exiting.ExitOutcome.SOLD_REMAINDER, exiting.ExitOutcome.ALREADY_CLOSED)


class TickStatus(StrEnum):
    DONE = "done"
    HALTED = "halted"
    MARKET_CLOSED = "market_closed"


@dataclass
class TickReport:
    status: TickStatus
    at: datetime | None = None
    #: Each risk limit's reading this tick (`shared.risk`).
    limits: list[str] = field(default_factory=list)
    positions: int = 0
    #: Each open position's state after this tick (including those an exit then sold).
    states: dict[str, PositionState] = field(default_factory=dict)
    exits: list[exiting.ExitResult] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    #: Positions without any price this tick (left as they were).
    unpriced: list[str] = field(default_factory=list)
    #: Positions whose state changed under us twice in this tick (advanced next tick).
    contended: list[str] = field(default_factory=list)
    #: Positions the line did not enter (no soft exits; only their stop).
    foreign: list[str] = field(default_factory=list)
    #: Positions whose state was re-based for a split this tick, with the split's share ratio.
    rebased: dict[str, Decimal] = field(default_factory=dict)
    #: Exits that fired but were not sent: the halt flag was set during the tick.
    halted_before: list[str] = field(default_factory=list)
    portfolio_csv: str | None = None
    #: Positions whose minute bars since the last look were read (`bars_wanted`).
    bars: int = 0
    seconds: float = 0.0

    def lines(self) -> list[str]:
        if self.status is TickStatus.HALTED:
            return ["manage: halted (the halt flag is set): no soft exit checked"
                    + (f", {len(self.exits)} position(s) sold for a risk limit" if self.exits else ""),
                    *(e.summary() for e in self.exits), *(f"limit: {line}" for line in self.limits)]
        if self.status is TickStatus.MARKET_CLOSED:
            return [f"manage: market closed at {self.at.isoformat() if self.at else '?'}: nothing checked"]
        out = [f"{e.summary()}" for e in self.exits]
        out += [f"{s}: state rebuilt from the broker's bars since entry" for s in self.rebuilt]
        out += [f"{s}: no price this tick, left as it was" for s in self.unpriced]
        out += [f"{s}: state changed by a fill during the tick, checked next tick" for s in self.contended]
        out += [f"{s}: re-based for a split (x{r.normalize()}), no exit from the old prices" for s, r in self.rebased.items()]
        out += [f"{s}: not entered by the line: no soft exits" for s in self.foreign]
        out += [f"{s}: exit not sent, the halt flag was set during the tick" for s in self.halted_before]
        out.append(f"manage: {self.positions} position(s) checked at {self.at.isoformat() if self.at else '?'}, "
                   f"{len(self.exits)} exit(s), portfolio {self.portfolio_csv or 'not written'} "
                   f"({self.seconds:.2f} s)")
        return out

    def as_dict(self) -> dict:
        return {
            "status": self.status.value,
            "at": self.at.isoformat() if self.at else None,
            "limits": self.limits,
            "positions": self.positions,
            "exits": [{"symbol": e.symbol, "reason": e.reason.value, "outcome": e.outcome.value,
                       "qty_sold": str(e.qty_sold), "detail": e.detail,
                       "realized_pl": str(e.trade.realized_pl) if e.trade else None} for e in self.exits],
            "armed": {s: [r.value for r in portfolio.armed_exits(st)] for s, st in sorted(self.states.items())},
            "rebuilt": self.rebuilt,
            "unpriced": self.unpriced,
            "contended": self.contended,
            "foreign": self.foreign,
            "rebased": {s: str(r) for s, r in self.rebased.items()},
            "halted_before": self.halted_before,
            "portfolio_csv": self.portfolio_csv,
            "bars": self.bars,
            "seconds": round(self.seconds, 3),
        }




# -- the RQ job ---------------------------------------------------------------------------------------


def manage_positions() -> dict:
    """The RQ job (and `factoryline manage`): one tick with the settings from the environment."""
    return tick_from_settings().as_dict()


def tick_from_settings() -> TickReport:
    portfolio_settings = config.load(portfolio.PortfolioSettings)
    with context_from_environment() as ctx:
        return run_tick(ctx, portfolio_path=portfolio_settings.FL_PORTFOLIO_CSV)


# -- the tick -----------------------------------------------------------------------------------------


def run_tick(ctx: ManagerContext, *, portfolio_path: Path | None = None) -> TickReport:
    """One tick over a given broker and Redis (the job, the command, tests and the benchmark)."""
    executor, client, keys, rules = ctx.executor, ctx.client, ctx.keys, ctx.rules
    started = time.perf_counter()
    listed, now = _positions_and_now(executor)
    if not sessions.in_session(executor, client, keys, now):
        logs.event(log, "tick_skipped", reason="market closed", at=now.isoformat())
        return TickReport(TickStatus.MARKET_CLOSED, at=now)
    positions = {p.symbol: p for p in listed if p.qty > ZERO}
    # The risk limits are measured on every tick, halted or not: a trip halts the entries, and with
    # FL_FLATTEN_ON_LIMIT sells what the line manages through the safe exit.
    limits = _check_limits(ctx, now)
    if client.exists(keys.halt):
        report = TickReport(TickStatus.HALTED, at=now, limits=[r.describe() for r in limits.readings])
        if limits.tripped and ctx.risk.FL_FLATTEN_ON_LIMIT:
            report.exits = _flatten_for_limit(ctx, positions, limits, now)
        logs.event(log, "tick_skipped", level=logging.WARNING, reason="halt flag set", exits=len(report.exits))
        client.set(keys.manager_last_tick, json.dumps(report.as_dict()))
        return report
    report = TickReport(TickStatus.DONE, at=now, limits=[r.describe() for r in limits.readings])
    report.positions = len(positions)
    prices = _prices(executor, positions)
    report.unpriced = sorted(s for s in positions if s not in prices)
    stored = hwm.load_states(client, keys, positions)
    # A position the line did not enter has no soft exits (only its stop, which the reconcile keeps).
    foreign = {s for s, st in stored.items() if st.state is not None and st.state.foreign}
    stored = {s: st for s, st in stored.items() if s not in foreign}
    report.foreign = sorted(foreign)

    lost = {s: positions[s] for s, st in stored.items() if st.state is None}
    rebuilt = hwm.rebuild(executor, lost, prices, now, rules, namespace=keys.ns)
    report.rebuilt = sorted(rebuilt)
    as_stored = {s: st.state for s, st in stored.items() if st.state is not None}
    # Bars from each state's last advance as stored (updating the entry below moves `updated_at`),
    # for the positions whose exits the high since then can change (`bars_wanted`).
    looked = bars_wanted(as_stored, prices, rules)
    report.bars = len(looked)
    highs = _highs_since_last_tick(executor, {s: as_stored[s] for s in looked}, now)
    known: dict[str, PositionState] = {}
    for symbol, state in as_stored.items():
        known[symbol], ratio = state.follow_broker(positions[symbol].qty, positions[symbol].avg_entry_price, now)
        if ratio is not None:
            # A split: the bars before it carry the old prices and must not raise the re-based mark.
            highs.pop(symbol, None)
            report.rebased[symbol] = ratio
            logs.event(log, "split_rebased", level=logging.WARNING, symbol=symbol, ratio=ratio,
                       high_water_mark=known[symbol].high_water_mark)

    decided: dict[str, tuple[PositionState, ExitDecision | None]] = {}
    for symbol, state in known.items():
        if symbol in prices:
            decided[symbol] = evaluate(state, highs.get(symbol), prices[symbol], now, rules)
    for symbol, state in rebuilt.items():
        decision = soft_exit(state, price=prices[symbol], now=now, rules=rules) if symbol in prices else None
        decided[symbol] = (state, decision)
    lost_race = hwm.save_advanced(client, keys, {s: (stored[s].raw, st) for s, (st, _d) in decided.items()})
    if lost_race:
        for symbol in lost_race:
            del decided[symbol]
        decided.update(_retry_contended(client, keys, lost_race, positions, prices, highs, now, rules, report))

    report.states = {s: st for s, (st, _d) in decided.items()}
    for symbol in report.unpriced:
        if known.get(symbol) is not None:
            report.states[symbol] = known[symbol]
    closed = set()
    for symbol, (state, decision) in sorted(decided.items()):
        if decision is None:
            continue
        if client.exists(keys.halt):
            # Halted while this tick ran: no more orders. The states are saved; the next tick decides again.
            report.halted_before = sorted({*report.halted_before, symbol})
            continue
        result = exiting.exit_position(ctx, state, decision, now=now)
        report.exits.append(result)
        if result.outcome in _CLOSED:
            closed.add(symbol)

    if portfolio_path is not None:
        rows = [portfolio.PortfolioRow(state, positions[s].qty, prices.get(s))
                for s, state in report.states.items() if s not in closed]
        report.portfolio_csv = str(portfolio.write(Path(portfolio_path), rows, now, rules))
    report.seconds = time.perf_counter() - started
    client.set(keys.manager_last_tick, json.dumps(report.as_dict()))
    logs.event(log, "tick_done", positions=report.positions, exits=len(report.exits), rebuilt=len(report.rebuilt),
               unpriced=len(report.unpriced), seconds=round(report.seconds, 3))
    return report


def _check_limits(ctx: ManagerContext, now: datetime) -> risk.RiskCheck:
    account = ctx.executor.get_account()
    return risk.check(ctx.client, ctx.keys, account.equity, account.last_equity, ctx.risk,
                      session=now.astimezone(NEW_YORK).date(), at=now, source="manager")


def _flatten_for_limit(ctx: ManagerContext, positions: dict[str, Position], limits: risk.RiskCheck,
                       now: datetime) -> list[exiting.ExitResult]:
    """Sell every position the line manages (not a foreign one under `ignore`), reason `risk_limit`."""
    why = "; ".join(r.describe() for r in limits.tripped)
    results = []
    for symbol, stored in sorted(hwm.load_states(ctx.client, ctx.keys, positions).items()):
        state = stored.state
        if state is None or (state.foreign and ctx.foreign_policy is ForeignPolicy.IGNORE):
            continue  # no state yet: the reconcile adopts it first; the next tick sells it
        decision = ExitDecision(ExitReason.RISK_LIMIT, positions[symbol].current_price or state.entry_price, None,
                                f"risk limit tripped: {why}")
        results.append(exiting.exit_position(ctx, state, decision, now=now))
    return results


def _positions_and_now(executor: OrderExecutor) -> tuple[list[Position], datetime]:
    """The position listing, and "now" as the broker's time when it answered (its Date header), so
    the tick needs no clock request. A broker answer without a time costs one clock request instead."""
    listed, at = executor.get_positions_at()
    if at is None:
        logs.event(log, "tick_clock_fallback", reason="the position listing carried no server time")
        at = executor.get_clock().timestamp
    return listed, at.astimezone(NEW_YORK)


def _prices(executor: OrderExecutor, positions: dict[str, Position]) -> dict[str, Decimal]:
    """The price each position listing carries (`current_price`, the broker's last trade: no request
    of its own); only the symbols it has none for are asked of the data feed, in one batched request
    (the ask, or the last trade when there is no ask), so one quiet symbol never blinds the tick."""
    prices = {s: p.current_price for s, p in positions.items()
              if p.current_price is not None and p.current_price > ZERO}
    missing = [s for s in positions if s not in prices]
    if missing:
        quotes = executor.get_latest_prices(missing)
        prices.update({s: quotes[s].price for s in missing if s in quotes and quotes[s].price > ZERO})
    return prices


#: Positions with no exit armed get minute bars while these fit (7 requests of 200 symbols): up to
#: this many positions every one of them does, so the decisions are those of a tick that reads bars
#: for all. Beyond, those closest to arming do; the rest arm from the current price only.
UNARMED_BARS_BUDGET = 1_400


def bars_wanted(states: dict[str, PositionState], prices: dict[str, Decimal], rules: ExitRules) -> list[str]:
    """The positions whose minute bars since the last look this tick reads.

    Every position with break-even or trailing armed: the high since the last look raises its
    high-water mark, which moves the trailing level (and arms trailing after break-even). A position
    with nothing armed needs the high only if it reached an arming level between two ticks (a spike
    that is gone by the tick); those are read while they fit in UNARMED_BARS_BUDGET, nearest to their
    break-even arming level first."""
    armed = [s for s, st in states.items() if st.breakeven_armed or st.trailing_armed]
    unarmed = [s for s, st in states.items() if not (st.breakeven_armed or st.trailing_armed)]
    if len(unarmed) > UNARMED_BARS_BUDGET:
        def nearness(symbol: str) -> tuple[Decimal, str]:
            price = prices.get(symbol, states[symbol].high_water_mark)
            return -(max(price, states[symbol].high_water_mark)
                     / breakeven_arm_level(states[symbol].entry_price, rules)), symbol

        unarmed = sorted(unarmed, key=nearness)[:UNARMED_BARS_BUDGET]
    return sorted([*armed, *unarmed])


def _highs_since_last_tick(executor: OrderExecutor, states: dict[str, PositionState],
                           now: datetime) -> dict[str, Decimal]:
    """One batched minute-bar request from the oldest state's last update; each symbol counts only the
    bars from the minute of its own last update on (that minute's bar was not complete then)."""
    if not states:
        return {}
    start = hwm.bars_start(states.values(), now)
    if start >= now:
        return {}
    # Light rows, not a model per bar (5,000 positions read ~100k minute bars): the same highs and times.
    bars = executor.get_bar_rows(list(states), Timeframe.MINUTE, start, now)
    return hwm.highs_since(bars, {s: max(hwm.minute_floor(st.updated_at), start) for s, st in states.items()})


def _retry_contended(client: redis.Redis, keys: bus.Keys, symbols: set[str], positions: dict[str, Position],
                     prices: dict[str, Decimal], highs: dict[str, Decimal], now: datetime, rules: ExitRules,
                     report: TickReport) -> dict[str, tuple[PositionState, ExitDecision | None]]:
    """A fill changed (or the reconcile cleared) these states while we decided: decide once more on
    the fresh state; if that loses again, leave the symbol to the next tick."""
    again = hwm.load_states(client, keys, symbols)
    decided = {}
    for symbol, stored in again.items():
        if stored.state is None or symbol not in prices:
            continue  # cleared: the position closed meanwhile
        state, _ratio = stored.state.follow_broker(positions[symbol].qty, positions[symbol].avg_entry_price, now)
        decided[symbol] = evaluate(state, highs.get(symbol), prices[symbol], now, rules)
    still = hwm.save_advanced(client, keys, {s: (again[s].raw, st) for s, (st, _d) in decided.items()})
    report.contended = sorted(still | {s for s in symbols if s not in decided})
    return {s: v for s, v in decided.items() if s not in still}

