"""The daily report (16:05 New York): where the money stands, as one `DailyReport` model.

Reads the broker's clock, account, positions and open orders, the manager's position state (high-water
mark, armed exits), today's closed trades from the ledger and the recorded equity history; decides
nothing; the renderers (`render_text`, `render_html`) and the JSON file show the same model.

A closed trade is one position close as a person sees it (`ledger.read_closes`: the whole-share OCO leg
and the fractional day stop that one stop price filled are one trade). P/L figures (realized,
unrealized, total) are in cents, half-up: each trade's and position's, and the totals as the sums of
what the rows show. The ledger keeps the exact figures.

`build_report` is pure (figures in, model out). `gather` does the reads; `record_equity` appends the
account's equity to `Keys.equity_history` so every report adds one point to the equity curve.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal

import redis
from pydantic import Field

from shared import ledger, position_store
from shared.broker.contract import OrderExecutor
from shared.bus import Keys
from shared.exits import ExitReason, ExitRules, PositionState, trailing_exit_level
from shared.ledger import ClosedTrade
from shared.market.calendar import NEW_YORK, nyse
from shared.models import (
    Account,
    AwareDatetime,
    MarketClock,
    Model,
    Order,
    OrderClass,
    OrderType,
    Position,
    Side,
)
from shared.money import CENT, ZERO, round_price

REPORT_SCHEMA_VERSION = 1
HUNDRED = Decimal("100")
PERCENT_GRID = Decimal("0.01")
#: The curve shows at most this many recorded points (one a report: years of daily reports).
MAX_CURVE_POINTS = 2000


class ProtectiveOrder(Model):
    """A resting sell at the broker that protects a position: an OCO (stop + target) or a plain stop."""

    kind: str  # "oco", "stop", or the order type of any other resting sell
    client_order_id: str
    qty: Decimal | None
    stop_price: Decimal | None = None
    target_price: Decimal | None = None
    time_in_force: str


class ArmedExit(Model):
    """A soft exit the manager has armed, and the price at or below which it sells."""

    reason: ExitReason
    exit_price: Decimal


class PositionLine(Model):
    symbol: str
    qty: Decimal
    entry_price: Decimal
    last_price: Decimal
    market_value: Decimal
    cost_basis: Decimal
    unrealized_pl: Decimal
    unrealized_pl_pct: Decimal
    #: Whole 24-hour periods since the first fill (the time stop counts the same way); None if unknown.
    days_held: int | None = None
    opened_at: AwareDatetime | None = None
    high_water_mark: Decimal | None = None
    protective_orders: list[ProtectiveOrder] = Field(default_factory=list)
    armed_exits: list[ArmedExit] = Field(default_factory=list)
    time_stop_at: AwareDatetime | None = None


class TradeLine(Model):
    """One closed trade of the day: one position close, however many closing orders it took (realized
    P/L in cents)."""

    symbol: str
    qty: Decimal
    entry_price: Decimal
    exit_price: Decimal
    realized_pl: Decimal
    realized_pl_pct: Decimal
    exit_reason: ExitReason
    opened_at: AwareDatetime
    closed_at: AwareDatetime
    #: The primary closing order; `closing_order_ids` has every broker order whose sells the trade covers.
    closing_order_id: str
    closing_order_ids: list[str] = Field(default_factory=list)


class AccountLine(Model):
    equity: Decimal
    cash: Decimal
    buying_power: Decimal
    last_equity: Decimal
    #: equity - last_equity (the broker's equity at the previous close).
    change_today: Decimal
    change_today_pct: Decimal | None


class SymbolPL(Model):
    """The day's P/L of one symbol: unrealized on what is still held plus realized on today's exits."""

    symbol: str
    unrealized_pl: Decimal
    realized_pl: Decimal
    total_pl: Decimal


class EquityPoint(Model):
    at: AwareDatetime
    equity: Decimal


class Totals(Model):
    open_positions: int
    market_value: Decimal
    cost_basis: Decimal
    unrealized_pl: Decimal
    closed_trades: int
    winning_trades: int
    losing_trades: int
    realized_pl: Decimal
    #: realized today + unrealized now.
    total_pl: Decimal


class SkippedSignal(Model):
    symbol: str
    reason: str
    detail: str = ""


class DailyReport(Model):
    schema_version: int = REPORT_SCHEMA_VERSION
    report_date: date
    generated_at: AwareDatetime
    market_open: bool
    account: AccountLine
    positions: list[PositionLine]
    closed_trades: list[TradeLine]
    pl_by_symbol: list[SymbolPL]
    totals: Totals
    equity_curve: list[EquityPoint]
    #: Today's signals the trader did not buy, each with its reason (price, volume, drift, cooldown,
    #: no free slot, a limit...), as it kept them (`Keys.entry_skips`).
    skipped_signals: list[SkippedSignal] = []


# -- pure builder -------------------------------------------------------------------------------------


def build_report(
    *,
    clock: MarketClock,
    account: Account,
    positions: Iterable[Position],
    open_orders: Iterable[Order],
    states: Mapping[str, PositionState],
    closed_trades: Iterable[ClosedTrade],
    equity_curve: Iterable[EquityPoint],
    rules: ExitRules,
    skipped_signals: Iterable[SkippedSignal] = (),
) -> DailyReport:
    """The report as of the broker's clock. Only trades closed on the clock's New York date count as
    today's; positions are sorted by symbol, trades by closing time. `closed_trades` are trades as a
    person reads them (`ledger.read_closes`: one per position close), each shown as given."""
    now = clock.timestamp
    today = now.astimezone(NEW_YORK).date()
    sells: dict[str, list[Order]] = {}
    for order in open_orders:
        if order.side is Side.SELL:
            sells.setdefault(order.symbol, []).append(order)
    lines = [_position_line(p, sells.get(p.symbol, []), states.get(p.symbol), now, rules)
             for p in sorted(positions, key=lambda p: p.symbol) if p.qty != ZERO]
    trades = sorted((_trade_line(t) for t in closed_trades if t.closed_at.astimezone(NEW_YORK).date() == today),
                    key=lambda t: (t.closed_at, t.symbol))
    return DailyReport(
        report_date=today,
        generated_at=now,
        market_open=clock.is_open,
        account=_account_line(account),
        positions=lines,
        closed_trades=trades,
        pl_by_symbol=_pl_by_symbol(lines, trades),
        totals=_totals(lines, trades),
        equity_curve=sorted(equity_curve, key=lambda p: p.at),
        skipped_signals=list(skipped_signals),
    )


def _position_line(position: Position, sells: list[Order], state: PositionState | None, now: datetime,
                   rules: ExitRules) -> PositionLine:
    qty, entry = position.qty, position.avg_entry_price
    cost_basis = position.cost_basis if position.cost_basis is not None else entry * qty
    if position.current_price is not None:
        last = position.current_price
    elif position.market_value is not None and qty:
        last = position.market_value / qty
    else:
        last = entry
    market_value = position.market_value if position.market_value is not None else last * qty
    unrealized = position.unrealized_pl if position.unrealized_pl is not None else market_value - cost_basis
    pct = _pct(unrealized, cost_basis)
    armed: list[ArmedExit] = []
    opened_at = time_stop_at = hwm = days = None
    if state is not None:
        opened_at, hwm = state.first_fill_at, state.high_water_mark
        days = max(0, (now - state.first_fill_at).days)
        time_stop_at = state.first_fill_at + rules.time_stop
        # The grid price at or below which the rule sells: the exact level rounded down to the tick.
        if state.trailing_armed:
            armed.append(ArmedExit(reason=ExitReason.TRAILING, exit_price=round_price(
                trailing_exit_level(entry, state.high_water_mark, rules), ROUND_FLOOR)))
        if state.breakeven_armed:
            armed.append(ArmedExit(reason=ExitReason.BREAK_EVEN, exit_price=round_price(entry, ROUND_FLOOR)))
    return PositionLine(
        symbol=position.symbol, qty=qty, entry_price=entry, last_price=last, market_value=market_value,
        cost_basis=cost_basis, unrealized_pl=cents(unrealized), unrealized_pl_pct=pct,
        days_held=days, opened_at=opened_at, high_water_mark=hwm,
        protective_orders=[protective_order(o) for o in sorted(sells, key=lambda o: o.created_at)],
        armed_exits=armed, time_stop_at=time_stop_at,
    )


def protective_order(order: Order) -> ProtectiveOrder:
    """An OCO's parent limit is the target and its stop leg the stop; a plain stop has only a stop."""
    if order.order_class is OrderClass.OCO:
        stop_leg = next((leg for leg in order.legs if leg.type in (OrderType.STOP, OrderType.STOP_LIMIT)), None)
        return ProtectiveOrder(kind="oco", client_order_id=order.client_order_id, qty=order.remaining_qty,
                               stop_price=stop_leg.stop_price if stop_leg else None,
                               target_price=order.limit_price, time_in_force=order.time_in_force.value)
    return ProtectiveOrder(kind=order.type.value, client_order_id=order.client_order_id, qty=order.remaining_qty,
                           stop_price=order.stop_price,
                           target_price=order.limit_price if order.type is OrderType.LIMIT else None,
                           time_in_force=order.time_in_force.value)


def _trade_line(trade: ClosedTrade) -> TradeLine:
    return TradeLine(
        symbol=trade.symbol, qty=trade.qty, entry_price=trade.entry_price, exit_price=trade.exit_price,
        realized_pl=cents(trade.realized_pl),
        realized_pl_pct=_pct(trade.realized_pl, trade.entry_price * trade.qty),
        exit_reason=trade.exit_reason, opened_at=trade.opened_at, closed_at=trade.closed_at,
        closing_order_id=trade.closing_order_id, closing_order_ids=trade.closing_order_ids,
    )


def _account_line(account: Account) -> AccountLine:
    change = account.equity - account.last_equity
    return AccountLine(
        equity=account.equity, cash=account.cash, buying_power=account.buying_power,
        last_equity=account.last_equity, change_today=change,
        change_today_pct=_pct(change, account.last_equity) if account.last_equity > ZERO else None,
    )


def _pl_by_symbol(lines: list[PositionLine], trades: list[TradeLine]) -> list[SymbolPL]:
    unrealized: dict[str, Decimal] = {}
    realized: dict[str, Decimal] = {}
    for line in lines:
        unrealized[line.symbol] = unrealized.get(line.symbol, ZERO) + line.unrealized_pl
    for trade in trades:
        realized[trade.symbol] = realized.get(trade.symbol, ZERO) + trade.realized_pl
    return [SymbolPL(symbol=s, unrealized_pl=cents(unrealized.get(s, ZERO)),
                     realized_pl=cents(realized.get(s, ZERO)),
                     total_pl=cents(unrealized.get(s, ZERO) + realized.get(s, ZERO)))
            for s in sorted(unrealized.keys() | realized.keys())]


def _totals(lines: list[PositionLine], trades: list[TradeLine]) -> Totals:
    # The rows are in cents already: the totals are the sums of what the rows show.
    unrealized = cents(sum((line.unrealized_pl for line in lines), ZERO))
    realized = cents(sum((t.realized_pl for t in trades), ZERO))
    return Totals(
        open_positions=len(lines),
        market_value=sum((line.market_value for line in lines), ZERO),
        cost_basis=sum((line.cost_basis for line in lines), ZERO),
        unrealized_pl=unrealized,
        closed_trades=len(trades),
        winning_trades=sum(1 for t in trades if t.realized_pl > ZERO),
        losing_trades=sum(1 for t in trades if t.realized_pl < ZERO),
        realized_pl=realized,
        total_pl=realized + unrealized,
    )


def cents(amount: Decimal) -> Decimal:
    """Money for a person: whole cents, half-up (-52.005 -> -52.01)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def _pct(amount: Decimal, base: Decimal) -> Decimal:
    if not base:
        return ZERO.quantize(PERCENT_GRID)
    return (amount / base * HUNDRED).quantize(PERCENT_GRID, rounding=ROUND_HALF_UP)


# -- equity history (Redis) --------------------------------------------------------------------------


def record_equity(client: redis.Redis, keys: Keys, at: datetime, equity: Decimal) -> None:
    """Add (at, equity) to the equity history, a sorted set scored by epoch seconds. A second report at
    the same instant replaces the first point instead of adding a duplicate."""
    score = at.timestamp()
    member = json.dumps({"at": at.isoformat(), "equity": str(equity)})
    pipe = client.pipeline(transaction=True)
    pipe.zremrangebyscore(keys.equity_history, score, score)
    pipe.zadd(keys.equity_history, {member: score})
    pipe.execute()


def equity_history(client: redis.Redis, keys: Keys, *, limit: int = MAX_CURVE_POINTS) -> list[EquityPoint]:
    """The most recent `limit` recorded points, oldest first (unreadable members are skipped)."""
    points = []
    for member in client.zrange(keys.equity_history, -limit, -1):
        try:
            points.append(EquityPoint.model_validate_json(member))
        except ValueError:
            continue
    return points


# -- the starting capital (Redis) ---------------------------------------------------------------------




def record_start(client: redis.Redis, keys: Keys, at: datetime, equity: Decimal) -> bool:
    """Record the starting capital once: (the close before the first report, the broker's last_equity).
    Only while the equity history is empty (an older history's start is its first point). True if set."""
    if client.zcard(keys.equity_history):
        return False
    member = json.dumps({"at": at.isoformat(), "equity": str(equity)})
    return bool(client.set(keys.equity_start, member, nx=True))


def read_start(client: redis.Redis, keys: Keys) -> EquityPoint | None:
    raw = client.get(keys.equity_start)
    try:
        return EquityPoint.model_validate_json(raw) if raw else None
    except ValueError:
        return None


def previous_close(at: datetime) -> datetime:
    """The close of the session before `at`'s New York date (a day earlier outside the calendar)."""
    try:
        return nyse().previous_session(at.astimezone(NEW_YORK).date()).close
    except ValueError:
        return at - timedelta(days=1)


# -- the reads ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the broker said, read once, so the report and the equity point agree."""

    clock: MarketClock
    account: Account
    positions: list[Position]
    open_orders: list[Order]


def read_broker(executor: OrderExecutor) -> Snapshot:
    """Four requests whatever the number of positions: clock, account, positions, open orders."""
    return Snapshot(clock=executor.get_clock(), account=executor.get_account(), positions=executor.get_positions(),
                    open_orders=executor.get_open_orders())


def gather(executor: OrderExecutor, client: redis.Redis, keys: Keys, rules: ExitRules, *,
           record: bool = True) -> DailyReport:
    """Read everything, record today's equity point (unless `record` is False), build the report."""
    snapshot = read_broker(executor)
    if record:
        record_start(client, keys, previous_close(snapshot.clock.timestamp), snapshot.account.last_equity)
        record_equity(client, keys, snapshot.clock.timestamp, snapshot.account.equity)
    states = {p.symbol: s for p in snapshot.positions
              if (s := position_store.load_state(client, keys, p.symbol)) is not None}
    return build_report(
        clock=snapshot.clock, account=snapshot.account, positions=snapshot.positions,
        open_orders=snapshot.open_orders, states=states, closed_trades=ledger.read_closes(client, keys),
        equity_curve=equity_history(client, keys), rules=rules,
        skipped_signals=skipped_signals(client, keys, snapshot.clock.timestamp.astimezone(NEW_YORK).date()),
    )


def skipped_signals(client: redis.Redis, keys: Keys, day: date) -> list[SkippedSignal]:
    """The signals the trader skipped for `day` (an unreadable record reads as none)."""
    raw = client.get(keys.entry_skips(day))
    try:
        return [SkippedSignal.model_validate(row) for row in json.loads(raw)] if raw else []
    except (ValueError, TypeError):
        return []
