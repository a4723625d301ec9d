"""`factoryline status`: the whole line on one screen, read-only.

Reads: the halt flag, every service's RQ queue (queued, started, failed: registry counts without
RQ's cleanup, so looking changes nothing) and the workers listening on them, the streamer's and the
scheduler's health hashes, the manager's last tick, the trade-update stream and its consumer group,
then the broker's account, positions and open orders.
Decides: `coverage` (pure) says how many shares of each position open sell stops cover (the line's
and the user's: both protect the shares), how many of them the user's open sells hold, and that a
short position is never protected; `shared.ownership` says which open orders are the user's
(their client order id is not one the line makes under FL_NAMESPACE).
Writes: nothing. A section whose source is unreachable (Redis, the broker) becomes one line saying
so; the rest still prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from shared import config, ledger, risk
from shared.bus import SERVICES, Keys
from shared.errors import ConfigError
from shared.market.calendar import NEW_YORK
from shared.models import Account, Order, OrderClass, OrderType, Position, Side
from shared.money import ZERO, fmt_money
from shared.ownership import is_ours, split_by_owner
from shared.texttable import printable, table

#: The streamer's leader writes its heartbeat every 2 s (docs/streamer.md): older than this, no live leader.
STREAMER_STALE_SECONDS = 10
#: The scheduler looks at the clock at least every FL_SCHEDULE_POLL_SECONDS (30 by default).
SCHEDULER_STALE_SECONDS = 120
_STOP_TYPES = (OrderType.STOP, OrderType.STOP_LIMIT, OrderType.TRAILING_STOP)


# -- pure: protection coverage ---------------------------------------------------------------------


@dataclass(frozen=True)
class Coverage:
    """Shares of a position that open sell stops would sell, what those stops are, and how many shares
    the user's open sell orders (any type) hold."""

    symbol: str
    held: Decimal
    covered: Decimal
    stops: tuple[str, ...] = ()
    held_by_user: Decimal = ZERO

    @property
    def short(self) -> bool:
        """The line never sells short: a negative position is an accident someone must undo by hand."""
        return self.held < ZERO

    @property
    def protected(self) -> bool:
        """Every share of a long position under an open sell stop. A short never is: a sell stop does
        not limit its loss (only buying it back does)."""
        return not self.short and self.covered >= self.held


def coverage(position: Position, open_orders: Iterable[Order], namespace: str | None = None) -> Coverage:
    """Shares covered by the symbol's open sell stops: a plain stop, or the stop leg of an OCO (held
    until its sibling fills or it triggers, still a live stop). Take-profit limits alone protect nothing.

    With `namespace`, a stop the line did not make (`shared.ownership`) still counts (it protects the
    shares) and is marked "(user's)"; and the shares the user's open sells of any type hold (once per
    order: an OCO's legs hold the same shares) are `held_by_user`."""
    covered = held_by_user = ZERO
    stops = []
    for order in open_orders:
        if order.symbol != position.symbol:
            continue
        users = namespace is not None and not is_ours(order.client_order_id, namespace)
        holds = ZERO
        for part in order.all_orders():
            if part.side is not Side.SELL or not part.status.is_open:
                continue
            remaining = part.remaining_qty if part.remaining_qty is not None else ZERO
            holds = max(holds, remaining)
            if part.type not in _STOP_TYPES:
                continue
            covered += remaining
            kind = "oco stop" if order.order_class is OrderClass.OCO else f"{part.time_in_force.value} stop"
            stops.append(f"{kind} {remaining} @ {part.stop_price}" + (" (user's)" if users else ""))
        if users:
            held_by_user += holds
    longest = max(position.qty, ZERO)  # a short has no shares to cover or to hold
    return Coverage(position.symbol, position.qty, min(covered, longest), tuple(stops),
                    min(held_by_user, longest))


# -- what the screen shows -------------------------------------------------------------------------


@dataclass
class QueueRow:
    name: str
    queued: int
    started: int
    failed: int
    scheduled: int
    workers: int


@dataclass
class WorkerRow:
    name: str
    state: str
    queues: str
    heartbeat: datetime | None
    job: str


@dataclass
class Status:
    namespace: str
    now: datetime
    halt: str | None = None
    redis_error: str | None = None
    queues: list[QueueRow] = field(default_factory=list)
    workers: list[WorkerRow] = field(default_factory=list)
    streamer: dict[str, str] = field(default_factory=dict)
    scheduler: dict[str, str] = field(default_factory=dict)
    last_tick: dict | None = None
    stream_line: str = ""
    broker_error: str | None = None
    broker_configured: bool = True
    account: Account | None = None
    positions: list[Position] = field(default_factory=list)
    coverage: dict[str, Coverage] = field(default_factory=dict)
    #: Open orders whose client order id the line did not make (shared.ownership), as the broker lists them.
    user_orders: list[Order] = field(default_factory=list)
    #: What the manager's last reconcile said per symbol (`Keys.manager_notes`): halted, a gap through
    #: the stop, shares the user's orders hold, a position the line did not enter.
    manager_notes: dict[str, list[str]] = field(default_factory=dict)
    #: The last risk check (shared.risk): {"at", "source", "readings": [...]}, or None before the first.
    risk: dict | None = None
    #: FL_MAX_POSITIONS (the slots); the ledger's closed trades and FL_COOLDOWN_DAYS (the cooldowns).
    max_positions: int = 5
    closed_trades: list = field(default_factory=list)
    cooldown_days: int = 0
    #: The broker's time when it answered (the simulator's virtual time); the wall clock without it.
    broker_now: datetime | None = None

    @property
    def cooldowns(self) -> dict[str, datetime]:
        """Symbols in cooldown after a stop-out, with when it ends (as of the broker's time)."""
        return risk.cooldowns(self.closed_trades, self.broker_now or self.now, self.cooldown_days)

    @property
    def unprotected(self) -> list[str]:
        """Every position that needs a person (the command then exits 1): a long not fully under
        stops, and any short."""
        return [s for s, c in sorted(self.coverage.items()) if not c.protected]

    @property
    def shorts(self) -> list[str]:
        return [s for s, c in sorted(self.coverage.items()) if c.short]


def read_redis(status: Status, client, rq_client, keys: Keys) -> None:
    """Fill the Redis sections (`client` answers str, `rq_client` bytes as RQ needs)."""
    from rq import Queue, Worker
    from rq.registry import FailedJobRegistry, ScheduledJobRegistry, StartedJobRegistry


    status.halt = client.get(keys.halt)
    seen_workers: dict[str, WorkerRow] = {}
    for service in SERVICES:
        queue = Queue(keys.queue(service), connection=rq_client, serializer="json")
        workers = Worker.all(queue=queue)
        status.queues.append(QueueRow(
            queue.name, queue.count,
            # cleanup=False: RQ's cleanup would move abandoned jobs; looking must change nothing.
            StartedJobRegistry(queue=queue).get_job_count(cleanup=False),
            FailedJobRegistry(queue=queue).get_job_count(cleanup=False),
            ScheduledJobRegistry(queue=queue).get_job_count(cleanup=False),
            len(workers)))
        for worker in workers:
            if worker.name not in seen_workers:
                seen_workers[worker.name] = WorkerRow(
                    worker.name, str(worker.get_state()), ",".join(worker.queue_names()),
                    worker.last_heartbeat, worker.get_current_job_id() or "-")
    status.workers = sorted(seen_workers.values(), key=lambda w: w.name)
    status.streamer = client.hgetall(keys.streamer_health)
    status.scheduler = client.hgetall(keys.scheduler_health)
    raw_tick = client.get(keys.manager_last_tick)
    if raw_tick:
        try:
            status.last_tick = json.loads(raw_tick)
        except ValueError:
            status.last_tick = {"status": f"unreadable: {raw_tick[:60]}"}
    status.stream_line = _stream_line(client, keys, keys.trade_updates_group)
    status.risk = risk.last_readings(client, keys)
    try:
        trader_settings = config.load(config.TraderSettings)
    except ConfigError:
        trader_settings = config.TraderSettings(_env_file=None)
    status.max_positions = trader_settings.FL_MAX_POSITIONS
    status.cooldown_days = trader_settings.FL_COOLDOWN_DAYS
    status.closed_trades = ledger.read_closes(client, keys)
    for symbol, raw in client.hgetall(keys.manager_notes).items():
        try:
            status.manager_notes[symbol] = list(json.loads(raw).get("notes", []))
        except (ValueError, AttributeError):
            status.manager_notes[symbol] = [f"unreadable note: {raw[:60]}"]


def _stream_line(client, keys: Keys, group: str) -> str:
    length = client.xlen(keys.trade_updates)
    dead = client.xlen(keys.dead_letters)
    text = f"{length} entries"
    groups = client.xinfo_groups(keys.trade_updates) if length or client.exists(keys.trade_updates) else []
    ours = next((g for g in groups if g.get("name") == group), None)
    if ours is None:
        text += f"; no '{group}' consumer group (the manager has not started)"
    else:
        lag = ours.get("lag")
        text += (f"; group '{group}': {ours.get('consumers', 0)} consumer(s), {ours.get('pending', 0)} pending"
                 + (f", {lag} not yet read" if lag is not None else ""))
    return text + f"; dead letters {dead}" + ("  <- look at them" if dead else "")


def read_broker(status: Status, executor) -> None:
    status.broker_now = executor.get_clock().timestamp
    status.account = executor.get_account()
    status.positions = sorted(executor.get_positions(), key=lambda p: p.symbol)
    orders = executor.get_open_orders()
    _ours, status.user_orders = split_by_owner(orders, status.namespace)
    status.coverage = {p.symbol: coverage(p, orders, status.namespace) for p in status.positions}


# -- rendering (pure) -----------------------------------------------------------------------------


def render(status: Status) -> list[str]:
    now = status.now
    lines = [f"Factory Line status  namespace {status.namespace}  "
             f"{now.astimezone(NEW_YORK):%Y-%m-%d %H:%M:%S %Z} ({now.astimezone(UTC):%H:%M:%S} UTC)", ""]
    if status.redis_error is not None:
        lines += [f"redis: UNREACHABLE ({status.redis_error}): halt flag, queues, workers and health not shown", ""]
    else:
        lines.append(halt_line(status.halt))
        lines += ["", "queues"]
        lines += table(("queue", "queued", "started", "failed", "scheduled", "workers"),
                       [(q.name, q.queued, q.started, q.failed, q.scheduled, q.workers) for q in status.queues],
                       right={1, 2, 3, 4, 5})
        lines += ["", "workers"]
        if status.workers:
            lines += table(("worker", "state", "queues", "heartbeat", "job"),
                           [(w.name, w.state, w.queues, _ago(w.heartbeat, now), w.job) for w in status.workers])
        else:
            lines.append("  none listening (start the service containers, or `python -m services.<name>`)")
        lines += ["", f"streamer   {streamer_line(status.streamer, now)}",
                  f"stream     {status.stream_line}",
                  f"scheduler  {scheduler_line(status.scheduler, now)}",
                  f"manager    {tick_line(status.last_tick)}"]
    lines.append("")
    if status.broker_error is not None:
        problem = "UNREACHABLE" if status.broker_configured else "NOT CONFIGURED"
        lines.append(f"broker: {problem} ({status.broker_error}): account and positions not shown")
        return lines
    account = status.account
    if account is not None:
        lines.append(f"account    equity {fmt_money(account.equity)}, cash {fmt_money(account.cash)}, "
                     f"buying power {fmt_money(account.buying_power)}")
    lines += ["", "positions"]
    if not status.positions:
        lines.append("  none")
    else:
        lines += _position_lines(status)
    lines += ["", "risk", *risk_lines(status)]
    if status.manager_notes:
        lines += ["", "manager notes (from its last reconcile of each symbol)"]
        lines += [f"  {note}" for _symbol, notes in sorted(status.manager_notes.items()) for note in notes]
    lines += ["", "orders the line did not make (left alone)"]
    if status.user_orders:
        lines += table(("symbol", "side", "type", "tif", "qty", "prices", "client order id"),
                       [user_order_row(o) for o in status.user_orders], right={4})
    else:
        lines.append("  none")
    return lines


def _position_lines(status: Status) -> list[str]:
    rows = []
    for p in status.positions:
        cov = status.coverage[p.symbol]
        state = "SHORT" if cov.short else "covered" if cov.protected else "UNPROTECTED"
        notes = list(cov.stops)
        if cov.held_by_user > ZERO:
            notes.append(f"{cov.held_by_user} held by the user's orders")
        rows.append((p.symbol, p.qty, p.qty_available, p.avg_entry_price, p.current_price or "-",
                     fmt_money(p.unrealized_pl) if p.unrealized_pl is not None else "-",
                     "-" if cov.short else f"{cov.covered}/{cov.held}", state, "; ".join(notes) or "-"))
    lines = table(("symbol", "qty", "available", "avg entry", "price", "unrealized", "stops cover", "protection",
                   "stops"), rows, right={1, 2, 3, 4, 5, 6})
    shorts = set(status.shorts)
    longs = [s for s in status.unprotected if s not in shorts]
    if longs:
        lines += ["", f"UNPROTECTED: {', '.join(longs)}: shares without a resting stop at the broker "
                      "(is the manager running? `factoryline reconcile` places the protection now)"]
    if shorts:
        lines.append("")
        lines += [f"SHORT: {symbol} {status.coverage[symbol].held} shares: never expected; buy it back by hand"
                  for symbol in sorted(shorts)]
    return lines


def user_order_row(order: Order) -> tuple:
    """One of the user's open orders as the status table shows it (its legs' prices included)."""
    kind = order.type.value
    if order.order_class is not OrderClass.SIMPLE:
        kind = f"{order.order_class.value} {kind}"
    if order.remaining_qty is not None:
        qty: object = order.remaining_qty
    else:
        qty = f"{fmt_money(order.notional)} notional" if order.notional is not None else "-"
    prices = []
    for part in order.all_orders():
        if part.limit_price is not None:
            prices.append(f"limit {part.limit_price}")
        if part.stop_price is not None:
            prices.append(f"stop {part.stop_price}")
    return (order.symbol, order.side.value, kind, order.time_in_force.value, qty, ", ".join(prices) or "market",
            printable(order.client_order_id))


def risk_lines(status: Status) -> list[str]:
    """Slots used and free, each limit against its threshold (as the last check measured them), cooldowns."""
    used = sum(1 for p in status.positions if p.qty > ZERO)
    lines = [f"  slots      {used} of {status.max_positions} used, {max(status.max_positions - used, 0)} free"
             + ("" if status.account is not None else " (positions not read)")]
    if status.risk is None:
        lines.append("  limits     not measured yet (the trader and every manage tick measure them)")
    else:
        for reading in status.risk.get("readings", []):
            state = "TRIPPED" if reading.get("tripped") else "ok"
            lines.append(f"  {reading.get('limit', '?').replace('_', ' '):<10} {reading.get('value_pct')}% of "
                         f"{reading.get('threshold_pct')}%  {state}  (measured {reading_age(status.risk, status.broker_now or status.now)})")
    if status.cooldowns:
        lines += [f"  cooldown   {symbol} until {until.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z} (stopped out)"
                  for symbol, until in sorted(status.cooldowns.items())]
    else:
        lines.append("  cooldown   none")
    return lines


def reading_age(risk_state: dict, now: datetime) -> str:
    return _ago(_parse(risk_state.get("at")), now)


def halt_line(value: str | None) -> str:
    if value is None:
        return "halt       not set: entries and soft exits run"
    try:
        flag = json.loads(value)
        text = f"{flag.get('reason') or 'no reason given'} (since {flag.get('at', '?')}, by {flag.get('by', '?')})"
    except (ValueError, AttributeError):
        text = value
    return f"halt       HALTED: {printable(text)}; no entries, no soft exits (protection still runs; " \
           "`factoryline resume` clears it)"


def streamer_line(health: dict[str, str], now: datetime) -> str:
    if not health:
        return "no health record: the streamer has never run in this namespace"
    beat = _parse(health.get("heartbeat_at"))
    where = f"{health.get('leader_host', '?')} pid {health.get('leader_pid', '?')}"
    if health.get("role") == "stopped":
        return f"STOPPED (clean stop; last leader {where}, heartbeat {_ago(beat, now)})"
    if beat is None or (now - beat).total_seconds() > STREAMER_STALE_SECONDS:
        return f"STALE: last heartbeat {_ago(beat, now)} (leader {where}); no live leader records trade updates"
    connected = "connected" if health.get("connected") == "yes" else "DISCONNECTED from the broker"
    last = health.get("last_event_id") or "none yet"
    return (f"leader {where}, {connected}, heartbeat {_ago(beat, now)}, buffered {health.get('buffered', '0')}, "
            f"last update {printable(last)}")


def scheduler_line(health: dict[str, str], now: datetime) -> str:
    if not health:
        return "no health record: not running (the record expires 10 min after its last look)"
    look = _parse(health.get("last_look"))
    stale = look is None or (now - look).total_seconds() > SCHEDULER_STALE_SECONDS
    nxt = _parse(health.get("next_run"))
    text = (f"on {health.get('host', '?')}, last look {_ago(look, now)}, next run "
            f"{nxt.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}" if nxt else
            f"on {health.get('host', '?')}, last look {_ago(look, now)}, no run scheduled")
    return ("STALE: " if stale else "") + text


def tick_line(tick: dict | None) -> str:
    if not tick:
        return "no tick recorded yet (written after each completed manage tick)"
    at = _parse(tick.get("at"))
    when = f"{at.astimezone(NEW_YORK):%Y-%m-%d %H:%M %Z}" if at else "?"
    exits = tick.get("exits") or []
    return (f"last tick {when} (broker time): {tick.get('status', '?')}, {tick.get('positions', '?')} position(s), "
            f"{len(exits)} exit(s)")


def _parse(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # RQ stores naive UTC
    seconds = int((now - moment).total_seconds())
    if seconds < 0:
        return f"{moment.astimezone(NEW_YORK):%H:%M:%S %Z}"
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"
