"""`factoryline watch`: one readable line per live notification (fills, protections, exits, alerts).

Notifications are pub/sub hints (`shared.bus.publish`: JSON with a `kind`); a watcher that is not
running misses them, which loses nothing: the broker and the ledger hold the facts.
The time shown is the broker's (the notification's `at`: an order's acceptance, a trade's close, a
trade update's event time; the simulator's virtual time); a notification without one shows when it
arrived. Quantities are always shown; P/L in cents, percentages to two decimals.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from decimal import ROUND_HALF_UP
from zoneinfo import ZoneInfo

import redis

from shared.bus import Keys
from shared.money import CENT, to_decimal

NEW_YORK = ZoneInfo("America/New_York")

#: Fields already shown by a kind's own format, or noise for a person.
_QUIET = {"kind", "symbol", "at"}


def _money(value: object) -> str:
    return "?" if value in (None, "") else f"{value}"


def _pl(value: object) -> str:
    """A P/L as a person reads it: -50.00 / +116.44 (cents, half-up); the text as sent if not a number."""
    if value in (None, ""):
        return "?"
    try:
        amount = to_decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
    except (ValueError, ArithmeticError):  # not a number, or too large for cents
        return str(value)
    if amount == 0:
        return f"{abs(amount)}"  # never -0.00
    return f"+{amount}" if amount > 0 else f"{amount}"


def _fill(n: dict) -> str:
    text = f"{n.get('side', '')} {n.get('qty', '?')} @ {_money(n.get('price'))}".strip()
    return f"{text}  ({n['client_order_id']})" if n.get("client_order_id") else text


def _protected(n: dict) -> str:
    parts = [f"{n.get('qty', '?')} sh"]
    if n.get("stop_price"):
        parts.append(f"stop {n['stop_price']}")
    if n.get("target_price"):
        parts.append(f"target {n['target_price']}")
    if n.get("order_class"):
        parts.append(f"({n['order_class']})")
    return " ".join(parts)


def _closed(n: dict) -> str:
    return (f"{n.get('exit_reason', '?')}: {n.get('qty', '?')} sh {_money(n.get('entry_price'))} -> "
            f"{_money(n.get('exit_price'))}  P/L {_pl(n.get('realized_pl'))}{_pl_pct(n)}")


def _pl_pct(n: dict) -> str:
    """ (-5.00%): the P/L against what the shares cost, two decimals; nothing when it cannot be known."""
    try:
        cost = to_decimal(n["entry_price"]) * to_decimal(n["qty"])
        pct = (to_decimal(n["realized_pl"]) / cost * 100).quantize(CENT, rounding=ROUND_HALF_UP)
    except (KeyError, TypeError, ValueError, ArithmeticError):
        return ""
    return f" ({'+' if pct > 0 else ''}{pct}%)"


def _entry(n: dict) -> str:
    """The quantity always: shares for a share order, the dollar amount for a notional one."""
    size = f"{n['qty']} sh" if n.get("qty") not in (None, "", "None") else f"${_money(n.get('amount'))} notional"
    return f"buy {size} ({n.get('entry_kind', '?')})  ({n.get('client_order_id', '?')})"


def _trade_update(n: dict) -> str:
    text = f"{n.get('event', '?')}: filled {n.get('filled_qty', '?')}"
    if n.get("price") not in (None, "", "None"):
        text += f" @ {n['price']}"
    return f"{text}  [{n.get('order_status', '?')}]  ({n.get('client_order_id', '?')})"


def _fix(n: dict) -> str:
    return n.get("message") or n.get("action", "")


_FORMATS: dict[str, Callable[[dict], str]] = {
    "trade_update": _trade_update,
    "fill": _fill,
    "partial_fill": _fill,
    "protected": _protected,
    "position_closed": _closed,
    "entry_submitted": _entry,
    "reconcile_fix": _fix,
    "alert": lambda n: n.get("message", ""),
    "risk_limit": lambda n: n.get("message", ""),
    "exit_failed": lambda n: f"{n.get('exit_reason', '?')}: {n.get('reason', '')}"
                             f"{'' if n.get('reprotected', True) else '  NOT re-protected'}",
}


def render(notification: dict, received_at: datetime) -> str:
    """`HH:MM:SS  KIND            SYMBOL  detail` in New York time."""
    kind = str(notification.get("kind", "?"))
    at = received_at
    if notification.get("at"):
        try:
            at = datetime.fromisoformat(str(notification["at"]))
        except ValueError:
            pass
    when = at.astimezone(NEW_YORK).strftime("%H:%M:%S") if at.tzinfo else at.strftime("%H:%M:%S")
    symbol = str(notification.get("symbol") or "-")
    formatter = _FORMATS.get(kind)
    if formatter is not None:
        detail = formatter(notification)
    else:
        detail = " ".join(f"{k}={v}" for k, v in notification.items() if k not in _QUIET)
    return _printable(f"{when}  {kind.upper():<16} {symbol:<6} {detail}".rstrip())


def parse(data: object) -> dict:
    """A notification payload as a dict; anything that is not a JSON object is shown as text."""
    try:
        value = json.loads(data) if isinstance(data, str | bytes) else data
    except ValueError:
        return {"kind": "text", "message": str(data)}
    return value if isinstance(value, dict) else {"kind": "text", "message": str(value)}


def watch(client: redis.Redis, keys: Keys, emit: Callable[[str], None], *, limit: int | None = None,
          raw: bool = False, now: Callable[[], datetime] | None = None) -> int:
    """Print notifications until interrupted (or `limit` of them); returns how many were shown."""
    now = now or (lambda: datetime.now(NEW_YORK))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.notifications)
    shown = 0
    try:
        while limit is None or shown < limit:
            message = pubsub.get_message(timeout=1.0)
            if not message or message.get("type") != "message":
                continue
            emit(message["data"] if raw else render(parse(message["data"]), now()))
            shown += 1
    finally:
        pubsub.close()
    return shown


def _printable(text: str) -> str:
    """Notification text comes over Redis: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)
