"""The demo's audit: the safety invariants of ARCHITECTURE.md checked against the simulator's records.

Pure functions over `MarketEngine.state()` (orders with their history, fills), what the demo printed
and logged, and the demo's Redis keys. Each check says held or violated, with the evidence in a line.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal

from shared import config
from shared.errors import ConfigError
from shared.market.calendar import NEW_YORK, nyse
from shared.money import fmt_money, round_qty

ZERO = Decimal(0)
#: How soon after a fill its shares must rest under a stop ("within seconds of its fill").
COVER_SECONDS = 10
LIVE_ENDPOINT = "https://api.alpaca.markets"


@dataclass(frozen=True)
class EntryRun:
    """One trader run: the buying power read just before it."""

    day: date
    at: datetime
    buying_power: Decimal
    #: Equity read before the run (the per-position cap is a percent of it).
    equity: Decimal = ZERO
    #: A risk limit had halted entries when the run ended (a trip halts before the first entry is sent).
    halted_by_limit: bool = False
    #: The symbols the run submitted entries for.
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True)
class Check:
    number: int
    name: str
    held: bool
    detail: str


def check_all(state: dict, entries: list[EntryRun], outputs: str, secret: str, client, keys) -> list[Check]:
    from shared import ledger

    return [
        no_oversell(state),
        stops_cover_fills(state),
        one_entry_per_signal_per_day(state),
        entries_within_buying_power(state, entries),
        live_trading_needs_opt_in(),
        no_secret_shown(outputs, secret, client, keys),
        entries_within_risk_rules(state, entries, ledger.read_closes(client, keys)),
    ]


# -- 1 ---------------------------------------------------------------------------------------------


def no_oversell(state: dict) -> Check:
    """Replay the fills: a sell never takes more than the shares held at that moment. A split
    (announced by the market, e.g. a real one in replayed data) re-bases the shares held from its ex
    date on, as the broker does overnight."""
    held: dict[str, Decimal] = defaultdict(Decimal)
    bad = []
    sells = 0
    splits = [{"timestamp": datetime.combine(a["ex_date"], time(0), tzinfo=NEW_YORK), "split": a}
              for a in state.get("splits", [])]
    for fill in sorted([*state["fills"], *splits], key=lambda f: f["timestamp"]):
        if "split" in fill:
            action = fill["split"]
            held[action["symbol"]] = round_qty(held[action["symbol"]] * action["new_rate"] / action["old_rate"])
            continue
        if fill["side"] == "buy":
            held[fill["symbol"]] += fill["qty"]
            continue
        sells += 1
        if fill["qty"] > held[fill["symbol"]]:
            bad.append(f"{fill['symbol']} sold {fill['qty']} holding {held[fill['symbol']]}")
        held[fill["symbol"]] -= fill["qty"]
    oversold = [r for r in state["rejections"] if r.get("side") == "sell" and "insufficient" in str(r).lower()]
    detail = (f"{sells} sell fill(s), none beyond the shares held; "
              f"{len(oversold)} sell(s) refused by the broker for insufficient qty")
    return Check(1, "no sell exceeded the shares held and released", not bad, "; ".join(bad[:3]) or detail)


# -- 2 ---------------------------------------------------------------------------------------------


def stops_cover_fills(state: dict) -> Check:
    """For every buy fill in market hours: COVER_SECONDS later, resting sell stops cover the position."""
    stops = [o for o in _all_orders(state) if o["order"].side.value == "sell" and o["order"].stop_price is not None]
    by_symbol: dict[str, list[dict]] = defaultdict(list)
    for stop in stops:
        by_symbol[stop["order"].symbol].append(stop)
    fills = sorted(state["fills"], key=lambda f: f["timestamp"])
    bad, checked = [], 0
    for fill in fills:
        if fill["side"] != "buy" or not nyse().is_open(fill["timestamp"]):
            continue
        moment = fill["timestamp"] + timedelta(seconds=COVER_SECONDS)
        if not nyse().is_open(moment):
            continue
        checked += 1
        position = _position_at(fills, fill["symbol"], moment)
        covered = sum((_resting_qty(stop, moment) for stop in by_symbol[fill["symbol"]]), ZERO)
        if covered < position:
            bad.append(f"{fill['symbol']} {position} shares at {moment.astimezone(NEW_YORK):%Y-%m-%d %H:%M:%S}, "
                       f"{covered} under a stop")
    detail = f"{checked} buy fill(s) covered within {COVER_SECONDS}s"
    return Check(2, f"every share under a resting stop within {COVER_SECONDS}s of its fill", not bad,
                 "; ".join(bad[:3]) or detail)


def _all_orders(state: dict) -> list[dict]:
    out = []
    for entry in state["orders"]:
        out.append(entry)
        out.extend(entry["legs"])
    return out


def _position_at(fills: list[dict], symbol: str, moment: datetime) -> Decimal:
    qty = ZERO
    for fill in fills:
        if fill["symbol"] == symbol and fill["timestamp"] <= moment:
            qty = fill["position_qty_after"]
    return qty


def _resting_qty(stop: dict, moment: datetime) -> Decimal:
    """The stop's unfilled shares at `moment`, if it was resting then (its history says so)."""
    last = None
    for entry in stop["history"]:
        if entry["at"] <= moment:
            last = entry
    if last is None or not last["status"].is_open:
        return ZERO
    filled = sum((e["qty"] or ZERO for e in stop["history"]
                  if e["at"] <= moment and e["event"] in ("fill", "partial_fill")), ZERO)
    return (stop["order"].qty or ZERO) - filled


# -- 3 ---------------------------------------------------------------------------------------------


def one_entry_per_signal_per_day(state: dict) -> Check:
    entries = Counter(
        (o["order"].symbol, o["order"].created_at.astimezone(NEW_YORK).date())
        for o in state["orders"] if o["order"].side.value == "buy"
    )
    bad = [f"{symbol} {day}: {n} entries" for (symbol, day), n in sorted(entries.items()) if n > 1]
    return Check(3, "at most one entry order per signal per day", not bad,
                 "; ".join(bad[:3]) or f"{len(entries)} entry order(s), one per signal and day")


# -- 4 ---------------------------------------------------------------------------------------------


def entries_within_buying_power(state: dict, runs: list[EntryRun]) -> Check:
    """What each trader run's entries cost (at their fill prices) against the buying power read before."""
    bad = []
    for run in runs:
        spent = sum(
            (o["order"].filled_value for o in state["orders"]
             if o["order"].side.value == "buy" and o["order"].created_at.astimezone(NEW_YORK).date() == run.day),
            ZERO,
        )
        if spent > run.buying_power:
            bad.append(f"{run.day}: spent {fmt_money(spent)} of {fmt_money(run.buying_power)}")
    return Check(4, "entries never spent more than the buying power read before them", not bad,
                 "; ".join(bad[:3]) or f"{len(runs)} trader run(s) within their buying power")


# -- 5 ---------------------------------------------------------------------------------------------


def live_trading_needs_opt_in() -> Check:
    """The settings loader itself: the live endpoint without FL_ALLOW_LIVE_TRADING must be refused."""
    try:
        config.load(config.BrokerSettings, ALPACA_ENDPOINT=LIVE_ENDPOINT, FL_ALLOW_LIVE_TRADING=False)
    except ConfigError:
        refused = True
    else:
        refused = False
    try:
        allowed = config.load(config.BrokerSettings, ALPACA_ENDPOINT=LIVE_ENDPOINT, FL_ALLOW_LIVE_TRADING=True)
        opted_in = allowed.is_live
    except ConfigError:
        opted_in = False
    held = refused and opted_in
    detail = ("the config refuses the live endpoint without FL_ALLOW_LIVE_TRADING=true"
              if held else f"refused without opt-in: {refused}; accepted with it: {opted_in}")
    return Check(5, "live trading needs an explicit opt-in", held, detail)


# -- 6 ---------------------------------------------------------------------------------------------


def no_secret_shown(outputs: str, secret: str, client, keys) -> Check:
    """The secret key in nothing the demo printed or logged, nor in any of its Redis keys."""
    where = []
    if secret in outputs:
        where.append("the demo's output or logs")
    needle = secret.encode()
    scanned = 0
    for key in client.scan_iter(match=f"{keys.ns}:*", count=500):
        scanned += 1
        if needle in _raw(client, key):
            where.append(f"Redis key {key}")
    detail = (f"{len(outputs.splitlines())} output and log line(s) and {scanned} Redis key(s) searched"
              if not where else "found in " + ", ".join(where[:3]))
    return Check(6, "no secret printed, logged or stored in Redis", not where, detail)


# -- 7 ---------------------------------------------------------------------------------------------


def entries_within_risk_rules(state: dict, runs: list[EntryRun], trades: list) -> Check:
    """No entry above its per-position cap (FL_MAX_POSITION_PCT of the equity read before the run, and
    with `slots` sizing one slot, equity / FL_MAX_POSITIONS; plus a cent of rounding per share), none
    from a run a risk limit had halted, none in a stop-out's cooldown."""
    try:
        trader = config.load(config.TraderSettings)
    except ConfigError:
        trader = config.TraderSettings(_env_file=None)
    bad = []
    by_day: dict[date, list[dict]] = defaultdict(list)
    for o in state["orders"]:
        if o["order"].side.value == "buy":
            by_day[o["order"].created_at.astimezone(NEW_YORK).date()].append(o["order"])
    checked = 0
    for run in runs:
        cap = run.equity * trader.FL_MAX_POSITION_PCT / 100
        if trader.FL_SIZING == "slots":
            cap = min(cap, run.equity / trader.FL_MAX_POSITIONS)
        for order in by_day.get(run.day, []):
            checked += 1
            slack = (order.filled_qty or ZERO) * Decimal("0.01")
            if order.filled_value > cap + slack:
                bad.append(f"{run.day} {order.symbol}: {fmt_money(order.filled_value)} over the cap {fmt_money(cap)}")
            stopped = [t for t in trades if t.symbol == order.symbol and t.exit_reason.value == "stop_loss"
                       and t.closed_at < order.created_at <= t.closed_at + timedelta(days=trader.FL_COOLDOWN_DAYS)]
            if stopped:
                bad.append(f"{run.day} {order.symbol}: entered in the cooldown of its stop-out")
        if run.halted_by_limit and run.symbols:
            bad.append(f"{run.day}: {len(run.symbols)} entr(y/ies) while a risk limit had halted entries")
    return Check(7, "no entry above its position cap, while a risk limit is tripped, or in a cooldown", not bad,
                 "; ".join(bad[:3]) or f"{checked} entr(y/ies) within the cap (FL_MAX_POSITION_PCT "
                                        f"{trader.FL_MAX_POSITION_PCT}% of equity"
                                        f"{', and one slot of equity / ' + str(trader.FL_MAX_POSITIONS) if trader.FL_SIZING == 'slots' else ''}"
                                        f"), none halted, none in cooldown")


def _raw(client, key) -> bytes:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        values = [client.get(key)]
    elif kind == "hash":
        values = [x for pair in client.hgetall(key).items() for x in pair]
    elif kind == "list":
        values = client.lrange(key, 0, -1)
    elif kind == "set":
        values = list(client.smembers(key))
    elif kind == "zset":
        values = [m for m, _s in client.zrange(key, 0, -1, withscores=True)]
    elif kind == "stream":
        values = [x for _id, fields in client.xrange(key) for pair in fields.items() for x in pair]
    else:
        values = []
    return b"\n".join(v if isinstance(v, bytes) else str(v).encode() for v in values if v is not None)
