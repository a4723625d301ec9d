"""The trader's RQ job (09:35 New York): today's ranked signals in, sized market entries out.

Reads the halt flag, the broker's clock, today's ranked signals (Redis, or a CSV given explicitly), then
the account, positions, open orders, assets and latest prices (one batched call); decides with
`shared.sizing.plan_entries`; sends each entry at most once and publishes `entry_submitted` per order.

Never twice: each entry's client order id is deterministic (`shared.client_ids`). Tickers held or with an
open order are skipped; one listing of the recent orders tells which entries (or their whole-share
retries) the broker already has; and the broker itself refuses a reused id. A timeout on a submit is
looked up by id, never re-sent in the same run; a later run finds it (or its position) and skips it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum

import redis

from shared import bus, client_ids, config, ledger, logs, risk, signals
from shared.broker import procedures
from shared.broker.contract import OrderExecutor
from shared.errors import (
    BrokerError,
    BrokerUnavailable,
    NotFound,
    NotFractionable,
    RateLimited,
)
from shared.market.calendar import NEW_YORK, nyse
from shared.models import Account, MarketClock, Order, Side, Timeframe
from shared.sizing import (
    EntryKind,
    EntryPlan,
    MarketFacts,
    PlannedEntry,
    average_dollar_volume,
    plan_entries,
    whole_share_retry,
)
from shared.wiring import connected

log = logging.getLogger(__name__)


class RunStatus(StrEnum):
    DONE = "done"
    DRY_RUN = "dry_run"
    HALTED = "halted"
    MARKET_CLOSED = "market_closed"
    NO_SIGNALS = "no_signals"


class EntryStatus(StrEnum):
    """What happened to one planned entry in this run."""

    PLANNED = "planned"  # dry run: nothing sent
    SUBMITTED = "submitted"
    ALREADY_SUBMITTED = "already submitted"
    UNKNOWN_OUTCOME = "unknown outcome"  # the broker did not answer and has no order with the id (yet)
    REJECTED = "rejected"
    NOT_SENT = "not sent"  # the halt flag was set during the run


@dataclass(frozen=True, slots=True)
class EntryResult:
    entry: PlannedEntry
    status: EntryStatus
    order: Order | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, str | None]:
        return {
            **self.entry.as_dict(),
            "status": self.status.value,
            "order_id": self.order.id if self.order else None,
            "order_status": self.order.status.value if self.order else None,
            "detail": self.detail,
        }


def trade_signals(csv_path: str | None = None, dry_run: bool = False, queue_for_open: bool = False) -> dict:
    """Enter today's signals now (the RQ job and `factoryline trade`). `csv_path` reads the ranked list
    from that file instead of Redis; `dry_run` returns the plan and sends nothing; `queue_for_open`
    sends even while the market is closed (the broker queues day orders for the next open).
    Returns a JSON-friendly summary."""
    trader_settings = config.load(config.TraderSettings)
    risk_settings = config.load(config.RiskSettings)
    redis_settings = config.load(config.RedisSettings)
    broker_settings = config.load(config.BrokerSettings)
    with connected(broker_settings, redis_settings) as (executor, client, keys):
        if client.exists(keys.halt):
            return _halted_before_start(keys)
        # A live account is refused before anything is planned, unless live trading is allowed.
        broker_settings.check_account(executor.get_account().account_number)
        return enter_signals(executor, client, keys, trader_settings, csv_path=csv_path,
                             dry_run=dry_run, queue_for_open=queue_for_open, risk_settings=risk_settings)


def enter_signals(
    executor: OrderExecutor,
    client: redis.Redis,
    keys: bus.Keys,
    settings: config.TraderSettings,
    *,
    csv_path: str | None = None,
    dry_run: bool = False,
    queue_for_open: bool = False,
    risk_settings: config.RiskSettings | None = None,
) -> dict:
    """The job's body over a given broker and Redis (the benchmark and tests call it directly).
    `risk_settings` default: the limits' defaults (the job passes the environment's)."""
    if client.exists(keys.halt):
        return _halted_before_start(keys)
    clock = executor.get_clock()
    today = clock.timestamp.astimezone(NEW_YORK).date()
    trade_date = session_date(clock)
    summary: dict = {
        "status": RunStatus.DONE.value, "reason": "", "trade_date": trade_date.isoformat(),
        "signals_day": today.isoformat(), "signals_source": None, "market_open": clock.is_open,
        "next_open": clock.next_open.astimezone(NEW_YORK).isoformat(), "dry_run": dry_run,
        "queue_for_open": queue_for_open, "account": None, "usable": None, "allocation": None,
        "entries": [], "skips": [], "counts": {},
    }
    if not clock.is_open and not queue_for_open and not dry_run:
        reason = (f"market is closed (next open {_ny(clock.next_open)}); nothing sent. "
                  "Use --queue-for-open to send the entries now for the broker to fill at the open")
        logs.event(log, "entries_refused", level=logging.WARNING, reason="market closed",
                   next_open=clock.next_open.isoformat())
        return {**summary, "status": RunStatus.MARKET_CLOSED.value, "reason": reason}

    # Re-checked against the ranker's rules (and its signature, with FL_SIGNALS_HMAC_KEY): docs/trader.md.
    checked = signals.load_for_trading(client, keys, today, clock.timestamp, csv_path=csv_path)
    ranked, source = checked.signals, checked.source
    summary.update(signals_source=source, signals_dropped=checked.dropped_as_dicts())
    if checked.refused:
        return {**summary, "status": "signals_refused", "reason": checked.refused}
    if not ranked:
        reason = (f"no signals for {today} in {source}" if ranked is None
                  else f"the ranked list in {source} is empty: nothing to buy today")
        logs.event(log, "no_signals", day=today.isoformat(), source=source)
        return {**summary, "status": RunStatus.NO_SIGNALS.value, "reason": reason}

    account = executor.get_account()
    limits = risk.check(client, keys, account.equity, account.last_equity,
                        risk_settings or config.RiskSettings(_env_file=None), session=trade_date,
                        at=clock.timestamp, source="trader")
    summary["limits"] = [reading.describe() for reading in limits.readings]
    if limits.tripped:
        reason = "; ".join(reading.describe() for reading in limits.tripped)
        logs.event(log, "entries_refused", level=logging.WARNING, reason="risk limit", detail=reason)
        return {**summary, "status": RunStatus.HALTED.value,
                "reason": f"risk limit tripped, entries halted ({reason}); `factoryline resume` clears it"}

    # One listing of the recent orders answers "was this entry already sent?" for every entry at once,
    # and how many entries today already has.
    known = recent_orders_by_client_id(executor, trade_date)
    plan = _plan(executor, client, keys, ranked, account, settings, trade_date, known, clock.timestamp)
    summary.update(
        account={"cash": str(account.cash), "buying_power": str(account.buying_power), "equity": str(account.equity)},
        usable=str(plan.usable), allocation=str(plan.allocation), slot=str(plan.slot), free_slots=plan.free_slots,
        skips=[skip.as_dict() for skip in plan.skips],
    )
    for skip in plan.skips:
        logs.event(log, "signal_skipped", symbol=skip.symbol, reason=skip.reason.value, detail=skip.detail)
    if not dry_run:
        client.set(keys.entry_skips(trade_date), json.dumps([skip.as_dict() for skip in plan.skips]),
                   ex=SKIPS_TTL_SECONDS)
    results = []
    for entry in plan.orders:
        existing = find_existing(entry, known)
        if existing is not None:
            result = existing
        elif dry_run:
            result = EntryResult(entry, EntryStatus.PLANNED)
        elif client.exists(keys.halt):
            result = EntryResult(entry, EntryStatus.NOT_SENT, detail="halt flag set during the run")
        else:
            result = enter_once(executor, entry, known)
        results.append(result)
        if not dry_run:
            _report(client, keys, result)
    if dry_run:
        summary["status"] = RunStatus.DRY_RUN.value
        if not clock.is_open:
            summary["reason"] = f"dry run while the market is closed (next open {_ny(clock.next_open)})"
    summary["entries"] = [result.as_dict() for result in results]
    summary["counts"] = dict(Counter(result.status.value for result in results))
    logs.event(log, "entries_done", trade_date=trade_date.isoformat(), dry_run=dry_run,
               entries=len(plan.orders), skipped=len(plan.skips),
               outcome=",".join(f"{k.replace(' ', '_')}:{v}" for k, v in summary["counts"].items()) or "-")
    return summary


def session_date(clock: MarketClock) -> date:
    """The New York date of the session the entries fill in: today while open, else the next open's.
    Entry ids carry it, so an entry queued the evening before and the 09:35 run share one id."""
    moment = clock.timestamp if clock.is_open else clock.next_open
    return moment.astimezone(NEW_YORK).date()


#: How far back the "already sent?" listing looks. An id carries its session's date and is created at
#: the earliest after the previous session's close (`--queue-for-open`): a week covers any weekend
#: plus holidays.
LOOKBACK_DAYS = 7


#: How long the day's skipped signals stay in Redis for the reports.
SKIPS_TTL_SECONDS = 30 * 24 * 3600
#: The dollar-volume check averages this many sessions' daily bars (the calendar days searched for them).
VOLUME_SESSIONS = 20
VOLUME_LOOKBACK_DAYS = 45


def _plan(executor: OrderExecutor, client: redis.Redis, keys: bus.Keys, ranked: list[signals.Signal],
          account: Account, settings: config.TraderSettings, trade_date: date, known: Mapping[str, Order],
          now: datetime) -> EntryPlan:
    """Read everything the planner needs (prices and daily bars each in one batched call, the ledger's
    stop-outs for the cooldowns), then plan."""
    positions = [p for p in executor.get_positions() if p.qty != 0]
    held = {p.symbol for p in positions}
    pending = {o.symbol for o in executor.get_open_orders()}
    # Held (unless adding) and pending tickers are skipped whatever their asset or price.
    excluded = pending if settings.FL_ALLOW_ADDING else held | pending
    candidates = [t for t in dict.fromkeys(signal.ticker for signal in ranked) if t not in excluded]
    with ThreadPoolExecutor(1, thread_name_prefix="volume") as background:
        # The daily bars go out first and overlap the asset reads: one batched request, off the
        # critical path (the dollar-volume check costs the job almost nothing in time).
        volumes = background.submit(_dollar_volumes, executor, candidates, settings, trade_date, now)
        assets = {}
        for symbol in candidates:
            try:
                assets[symbol] = executor.get_asset(symbol)
            except NotFound:
                pass  # the planner skips it as an unknown asset
        prices = executor.get_latest_prices(candidates) if candidates else {}
        dollar_volumes = volumes.result()
    facts = MarketFacts(
        assets=assets, prices=prices, dollar_volumes=dollar_volumes,
        cooldowns=risk.cooldowns(ledger.read_closes(client, keys), now, settings.FL_COOLDOWN_DAYS),
        held_values={p.symbol: p.market_value or p.qty * p.avg_entry_price for p in positions},
        sent_today=entries_sent_on(known.values(), trade_date, keys.ns),
    )
    return plan_entries(ranked, account, held_symbols=held, open_order_symbols=pending, facts=facts,
                        settings=settings, trade_date=trade_date, namespace=keys.ns)


def _dollar_volumes(executor: OrderExecutor, candidates: list[str], settings: config.TraderSettings,
                    trade_date: date, now: datetime) -> dict[str, Decimal]:
    """Average daily dollar volume of the last VOLUME_SESSIONS sessions before the trade date, from one
    batched daily-bars request asking for exactly those sessions."""
    if not candidates or settings.FL_MIN_DOLLAR_VOLUME <= 0:
        return {}
    before = nyse().sessions(trade_date - timedelta(days=VOLUME_LOOKBACK_DAYS), trade_date - timedelta(days=1))
    start = before[-VOLUME_SESSIONS:][0].open if before else now - timedelta(days=VOLUME_LOOKBACK_DAYS)
    day_start = datetime.combine(trade_date, time.min, tzinfo=NEW_YORK)
    bars = executor.get_bars(candidates, Timeframe.DAY, start, day_start)
    return {s: v for s, rows in bars.items()
            if (v := average_dollar_volume([b for b in rows if b.t < day_start], VOLUME_SESSIONS)) is not None}


def entries_sent_on(orders: Iterable[Order], trade_date: date, namespace: str) -> frozenset[str]:
    """Symbols the line sent an entry for, for the session `trade_date` (the daily cap counts them)."""
    return frozenset({o.symbol for o in orders if o.side is Side.BUY and o.client_order_id in (
        client_ids.entry_id(trade_date, o.symbol, namespace), client_ids.whole_share_entry_id(trade_date, o.symbol,
                                                                                               namespace))})


def recent_orders_by_client_id(executor: OrderExecutor, trade_date: date) -> dict[str, Order]:
    """Every order (open or closed, legs included) submitted since LOOKBACK_DAYS before the session,
    by client order id."""
    since = datetime.combine(trade_date - timedelta(days=LOOKBACK_DAYS), time.min, tzinfo=NEW_YORK)
    return {o.client_order_id: o for order in executor.get_orders_updated_since(since) for o in order.all_orders()}


def find_existing(entry: PlannedEntry, known: Mapping[str, Order]) -> EntryResult | None:
    """`already submitted` when the broker has an order with the entry's id or its whole-share retry's."""
    found = "found at the broker by client order id"
    if (order := known.get(entry.client_order_id)) is not None:
        return EntryResult(entry, EntryStatus.ALREADY_SUBMITTED, order, found)
    # Checked whatever today's plan says about whole shares: an earlier run may have sent the retry.
    if entry.whole_share_client_order_id and (order := known.get(entry.whole_share_client_order_id)):
        qty = order.qty if order.qty is not None else entry.whole_share_qty
        sent = replace(entry, kind=EntryKind.QTY, client_order_id=order.client_order_id, qty=qty,
                       amount=qty * entry.reference_price)
        return EntryResult(sent, EntryStatus.ALREADY_SUBMITTED, order, found)
    return None


def enter_once(executor: OrderExecutor, entry: PlannedEntry, known: Mapping[str, Order]) -> EntryResult:
    """Send one planned entry the broker does not have (`known`: its recent orders by client order id);
    retry a notional order refused as not fractionable once as whole shares.

    Should another run send the same entry after `known` was read, the broker refuses the id as a
    duplicate and the order is looked up and reported instead."""
    if (existing := find_existing(entry, known)) is not None:
        return existing
    try:
        return _send(executor, entry)
    except NotFractionable as exc:
        refusal = exc
    # The asset list said fractionable but the order check disagreed: whole shares, under their own id.
    retry = whole_share_retry(entry)
    if retry is None:
        return EntryResult(entry, EntryStatus.REJECTED,
                           detail=f"{refusal}; its share buys no whole share at {entry.reference_price}")
    logs.event(log, "entry_retry_whole_shares", symbol=entry.symbol, client_order_id=retry.client_order_id,
               qty=retry.qty, refused_client_order_id=entry.client_order_id)
    try:
        retried = _send(executor, retry)
    except NotFractionable as exc:  # a whole-share order should never get this; report, do not loop
        return EntryResult(retry, EntryStatus.REJECTED, detail=str(exc))
    if retried.status is EntryStatus.SUBMITTED:
        return replace(retried, detail="notional order refused as not fractionable; sent as whole shares")
    return retried


def _send(executor: OrderExecutor, entry: PlannedEntry) -> EntryResult:
    """One submit, never repeated (`procedures.submit_once`): an id the broker already has is that
    entry, an unclear answer is settled by looking the id up. NotFractionable propagates: the caller
    decides about the whole-share retry."""
    found: list[tuple[Order, str]] = []

    def send(cid: str) -> Order:
        if entry.kind is EntryKind.NOTIONAL:
            return executor.buy_notional(entry.symbol, entry.amount, cid)
        assert entry.qty is not None
        return executor.buy_qty(entry.symbol, entry.qty, cid)

    try:
        order = procedures.submit_once(executor, send, lambda _attempt: entry.client_order_id, side=Side.BUY,
                                       max_attempts=1, accept_finished=True,
                                       on_found=lambda order, why: found.append((order, why)))
    except NotFractionable:
        raise
    except (BrokerUnavailable, RateLimited) as exc:
        # The broker did not answer and has no order with the id (yet), or the lookup failed too.
        return EntryResult(entry, EntryStatus.UNKNOWN_OUTCOME, detail=f"not resent in this run: {exc}")
    except BrokerError as exc:
        return EntryResult(entry, EntryStatus.REJECTED, detail=str(exc))
    if not found:
        return EntryResult(entry, EntryStatus.SUBMITTED, order)
    _order, why = found[0]
    if why == "duplicate id":
        return EntryResult(entry, EntryStatus.ALREADY_SUBMITTED, order, "the broker already has this client order id")
    return EntryResult(entry, EntryStatus.SUBMITTED, order, "confirmed by lookup after the broker did not answer")


def _report(client: redis.Redis, keys: bus.Keys, result: EntryResult) -> None:
    entry = result.entry
    fields = dict(symbol=entry.symbol, client_order_id=entry.client_order_id, entry_kind=entry.kind.value,
                  amount=str(entry.amount), qty=None if entry.qty is None else str(entry.qty),
                  order_id=result.order.id if result.order else None,
                  order_status=result.order.status.value if result.order else None)
    level = logging.INFO if result.status in (EntryStatus.SUBMITTED, EntryStatus.ALREADY_SUBMITTED) else logging.WARNING
    logs.event(log, f"entry_{result.status.value.replace(' ', '_')}", level=level, **fields,
               detail=result.detail or None)
    if result.status is EntryStatus.SUBMITTED:
        try:
            order = result.order
            at = (order.submitted_at or order.created_at).isoformat() if order is not None else None
            bus.publish(client, keys, "entry_submitted", **fields, at=at)
        except redis.RedisError as exc:  # a lost notification loses nothing: the order is placed
            logs.event(log, "notification_failed", level=logging.WARNING, symbol=entry.symbol, error=str(exc))


def _halted_before_start(keys: bus.Keys) -> dict:
    logs.event(log, "entries_refused", level=logging.WARNING, reason="halted", halt_key=keys.halt)
    return {"status": RunStatus.HALTED.value,
            "reason": f"halt flag {keys.halt} is set; nothing sent (delete the key to resume)",
            "entries": [], "skips": [], "counts": {}}


def _ny(moment) -> str:
    return moment.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")

