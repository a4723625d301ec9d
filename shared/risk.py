"""Account-level risk limits and cooldowns (docs/trader.md, "Risk limits").

Pure: `readings` measures the daily loss and the drawdown against their thresholds; `cooldowns`
says which symbols a recent stop-out keeps from being entered again.
Redis (`check`, `acknowledge`): the highest equity the line has recorded (`<ns>:risk:equity_peak`)
and the day a person resumed after a daily-loss trip (`<ns>:risk:daily_ack`). `check` runs before
every entry batch (trader) and on every manage tick: a tripped limit sets the halt flag with its
reason and is announced (ERROR `risk_limit_tripped`, a `risk_limit` notification); only
`factoryline resume` clears the halt, and resuming re-arms the limits from that moment
(`acknowledge`): the daily loss from the next session on, the drawdown from the equity then.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from shared import bus, logs
from shared.bus import Keys
from shared.config import RiskSettings
from shared.exits import ExitReason
from shared.halt import set_halt
from shared.ledger import ClosedTrade
from shared.money import ZERO

log = logging.getLogger(__name__)

HUNDRED = Decimal("100")

#: Keep the peak when it is higher (a compare in Lua: two checks at once never lower it).
_RAISE_PEAK = """
local current = redis.call('GET', KEYS[1])
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
    redis.call('SET', KEYS[1], ARGV[1])
    return ARGV[1]
end
return current
"""


class Limit(StrEnum):
    DAILY_LOSS = "daily_loss"
    DRAWDOWN = "drawdown"


@dataclass(frozen=True, slots=True)
class LimitReading:
    """One limit's current value against its threshold, both in percent (a loss is positive)."""

    limit: Limit
    value_pct: Decimal
    threshold_pct: Decimal
    #: Tripped now (and not acknowledged by a resume).
    tripped: bool
    detail: str

    def describe(self) -> str:
        state = "TRIPPED" if self.tripped else "ok"
        return (f"{self.limit.value.replace('_', ' ')} {self.value_pct:.2f}% of {self.threshold_pct}% "
                f"({self.detail}) {state}")


def readings(equity: Decimal, last_equity: Decimal, peak: Decimal, settings: RiskSettings, *,
             daily_acknowledged: bool = False) -> list[LimitReading]:
    """The daily loss ((previous close's equity - equity) / previous close's equity: realized plus
    unrealized since the previous close) and the drawdown ((peak - equity) / peak)."""
    daily = _pct(last_equity - equity, last_equity)
    drawdown = _pct(peak - equity, peak)
    return [
        LimitReading(Limit.DAILY_LOSS, daily, settings.FL_DAILY_LOSS_LIMIT_PCT,
                     daily >= settings.FL_DAILY_LOSS_LIMIT_PCT and not daily_acknowledged,
                     f"equity {equity} against the previous close {last_equity}"),
        LimitReading(Limit.DRAWDOWN, drawdown, settings.FL_MAX_DRAWDOWN_PCT,
                     drawdown >= settings.FL_MAX_DRAWDOWN_PCT,
                     f"equity {equity} against the recorded peak {peak}"),
    ]


def cooldowns(trades: Iterable[ClosedTrade], now: datetime, days: int) -> dict[str, datetime]:
    """Symbols stopped out (`stop_loss`) within the last `days` days, each with when its cooldown ends."""
    if days <= 0:
        return {}
    until: dict[str, datetime] = {}
    for trade in trades:
        if trade.exit_reason is not ExitReason.STOP_LOSS:
            continue
        end = trade.closed_at + timedelta(days=days)
        if end > now:
            until[trade.symbol] = max(until.get(trade.symbol, end), end)
    return until


def _pct(part: Decimal, whole: Decimal) -> Decimal:
    if whole <= ZERO:
        return ZERO
    return (part / whole * HUNDRED).quantize(Decimal("0.01"))


# -- Redis: the recorded peak, the acknowledgment, the check -------------------------------------------






@dataclass(frozen=True, slots=True)
class RiskCheck:
    readings: list[LimitReading]
    #: True when this check set the halt flag.
    halted_now: bool

    @property
    def tripped(self) -> list[LimitReading]:
        return [r for r in self.readings if r.tripped]


def check(client, keys: Keys, equity: Decimal, last_equity: Decimal, settings: RiskSettings, *,
          session: date, at: datetime, source: str) -> RiskCheck:
    """Record the equity peak, measure both limits (kept for `status`), and on a trip set the halt
    flag (reason: the limit and its figures) and announce it once."""
    peak = Decimal(client.eval(_RAISE_PEAK, 1, keys.risk_equity_peak, str(equity)))
    acknowledged = client.get(keys.risk_daily_ack) == session.isoformat()
    measured = readings(equity, last_equity, peak, settings, daily_acknowledged=acknowledged)
    tripped = [r for r in measured if r.tripped]
    halted_now = False
    if tripped:
        reason = "risk limit: " + "; ".join(r.describe() for r in tripped)
        halted_now = set_halt(client, keys, reason, keep_existing=True, by=source)
        if halted_now:
            logs.event(log, "risk_limit_tripped", level=logging.ERROR, limits=",".join(r.limit.value for r in tripped),
                       reason=reason, source=source)
            bus.publish(client, keys, "risk_limit", message=reason, limits=[r.limit.value for r in tripped],
                        source=source, at=at.isoformat())
    client.set(keys.risk_last, json.dumps({
        "at": at.isoformat(), "source": source,
        "readings": [{"limit": r.limit.value, "value_pct": str(r.value_pct), "threshold_pct": str(r.threshold_pct),
                      "tripped": r.tripped, "detail": r.detail} for r in measured],
    }))
    return RiskCheck(measured, halted_now)


def acknowledge(client, keys: Keys, equity: Decimal | None, session: date) -> None:
    """A person resumed: the daily loss is not measured again this session, and the drawdown is
    measured from the equity now (when known)."""
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.risk_daily_ack, session.isoformat(), ex=4 * 24 * 3600)
    if equity is not None:
        pipe.set(keys.risk_equity_peak, str(equity))
    pipe.execute()




def last_readings(client, keys: Keys) -> dict | None:
    raw = client.get(keys.risk_last)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None
