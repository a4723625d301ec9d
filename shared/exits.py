"""Exit rules: the broker-side stop and target levels, and the soft exits the manager checks each tick.

Pure functions over `PositionState`; no broker, no Redis, no clock. The manager (live, every tick) and
the scanner's backtest (`bar_exit`, bar by bar) call these same functions, so both sell at the same
moments for the same reasons. The rules, with worked examples, are written down in docs/exits.md.

- Protection (at the broker): a stop at entry -5% and a take-profit limit at entry +20%.
- Soft exits (checked by us, then a market sell):
  break-even  armed when the high-water mark reaches entry x 1.015; fires when price <= entry.
  trailing    armed when the high-water mark reaches entry x 1.02; fires when price <=
              hwm - 50% x (hwm - entry), i.e. half the peak gain is given back.
  time stop   fires once more than 7 x 24 h have passed since the first fill.
- Arming is sticky. When several fire on one price: TRAILING, then BREAK_EVEN, then TIME_STOP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from enum import StrEnum

from pydantic import Field

from shared.config import ExitSettings
from shared.errors import InputError
from shared.models import AwareDatetime, Model
from shared.money import ONE, ZERO, fmt_qty, round_price

HUNDRED = Decimal("100")
POSITION_STATE_SCHEMA_VERSION = 1


class ExitReason(StrEnum):
    """Why a position (or part of it) was sold. Stored in the ledger and shown in reports."""

    #: The broker-side protective stop filled.
    STOP_LOSS = "stop_loss"
    #: The broker-side take-profit limit filled.
    TAKE_PROFIT = "take_profit"
    #: Soft exit: price came back to the entry after break-even was armed.
    BREAK_EVEN = "break_even"
    #: Soft exit: price gave back the configured share of the peak gain after trailing was armed.
    TRAILING = "trailing"
    #: Soft exit: held longer than FL_TIME_STOP_DAYS.
    TIME_STOP = "time_stop"
    #: Flattened by a person (factoryline flatten, or sold by hand at the broker).
    MANUAL = "manual"
    #: Sold because a risk limit tripped and FL_FLATTEN_ON_LIMIT is set.
    RISK_LIMIT = "risk_limit"

    @property
    def broker_side(self) -> bool:
        """True for exits the broker executes from a resting order; the others are our market sells."""
        return self in (ExitReason.STOP_LOSS, ExitReason.TAKE_PROFIT)


#: When several soft exits fire on the same price, the first in this tuple is the reason.
#: TRAILING before BREAK_EVEN: with gains given back by less than 100%, the trailing level is always
#: above the entry, so whenever break-even fires an armed trailing rule fires too, and the trailing
#: level is the one that was actually crossed first on the way down. TIME_STOP last: a price rule
#: that fires says more about why the position was sold at this price, and the time stop sells anyway.
SOFT_EXIT_PRECEDENCE: tuple[ExitReason, ...] = (ExitReason.TRAILING, ExitReason.BREAK_EVEN, ExitReason.TIME_STOP)


@dataclass(frozen=True, slots=True)
class ExitRules:
    """The thresholds as fractions of the average entry price (5% -> Decimal("0.05"))."""

    stop_loss: Decimal
    take_profit: Decimal
    breakeven_arm: Decimal
    trailing_arm: Decimal
    #: Share of the peak gain (hwm - entry) the trailing exit gives back before it sells.
    trailing_giveback: Decimal
    time_stop: timedelta

    def __post_init__(self) -> None:
        for name in ("stop_loss", "take_profit", "breakeven_arm", "trailing_arm", "trailing_giveback"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= ZERO:
                raise InputError(f"exit rule {name} must be a positive Decimal fraction, got {value!r}")
        if self.stop_loss >= ONE:
            raise InputError(f"exit rule stop_loss must be below 1 (100%), got {self.stop_loss}")
        if self.trailing_giveback >= ONE:
            raise InputError(f"exit rule trailing_giveback must be below 1 (100%), got {self.trailing_giveback}")
        if self.time_stop <= timedelta(0):
            raise InputError(f"exit rule time_stop must be positive, got {self.time_stop}")

    @classmethod
    def from_settings(cls, settings: ExitSettings) -> ExitRules:
        return cls(
            stop_loss=settings.FL_STOP_LOSS_PCT / HUNDRED,
            take_profit=settings.FL_TAKE_PROFIT_PCT / HUNDRED,
            breakeven_arm=settings.FL_BREAKEVEN_ARM_PCT / HUNDRED,
            trailing_arm=settings.FL_TRAILING_ARM_PCT / HUNDRED,
            trailing_giveback=settings.FL_TRAILING_GIVEBACK_PCT / HUNDRED,
            time_stop=timedelta(days=settings.FL_TIME_STOP_DAYS),
        )


class PositionState(Model):
    """What the broker cannot tell us about an open position: its peak and which exits are armed.

    Stored as JSON in Redis by the manager; unknown fields are ignored so an older reader accepts a
    newer writer's payload.
    """

    schema_version: int = POSITION_STATE_SCHEMA_VERSION
    symbol: str
    #: The broker's average entry price of the position.
    entry_price: Decimal = Field(gt=0)
    qty: Decimal = Field(ge=0)
    first_fill_at: AwareDatetime
    #: The highest price seen since entry (never below the entry price).
    high_water_mark: Decimal = Field(gt=0)
    breakeven_armed: bool = False
    trailing_armed: bool = False
    updated_at: AwareDatetime
    #: A position the line did not enter (bought by hand, FL_FOREIGN_POSITIONS): no target, no soft
    #: exits, and its stop is measured from `level_basis`, the price when the line first saw it.
    foreign: bool = False
    #: The price the protective levels are measured from, when that is not the entry price.
    level_basis: Decimal | None = Field(default=None, gt=0)

    @classmethod
    def at_entry(cls, symbol: str, entry_price: Decimal, qty: Decimal, first_fill_at: datetime) -> PositionState:
        """The state of a position that was just filled: nothing armed, peak = entry."""
        return cls(
            symbol=symbol,
            entry_price=entry_price,
            qty=qty,
            first_fill_at=first_fill_at,
            high_water_mark=entry_price,
            updated_at=first_fill_at,
        )

    def with_entry(self, entry_price: Decimal, qty: Decimal, now: datetime) -> PositionState:
        """The same position after a later fill changed its average entry price or quantity.

        The peak and the armed flags are kept (arming is sticky); the first fill time is kept, so the
        time stop still counts from the first share bought.
        """
        _require_aware(now)
        return self.model_copy(
            update={
                "entry_price": entry_price,
                "qty": qty,
                "high_water_mark": max(self.high_water_mark, entry_price),
                "updated_at": now,
            }
        )

    @classmethod
    def adopted(cls, symbol: str, entry_price: Decimal, qty: Decimal, price: Decimal, now: datetime) -> PositionState:
        """A position the line did not enter: levels from the price it has now (a stop below the
        market, never one it is already through), the time stop and soft exits off."""
        state = cls.at_entry(symbol, entry_price, qty, now)
        return state.model_copy(update={"foreign": True, "level_basis": price,
                                        "high_water_mark": max(entry_price, price)})

    @property
    def basis(self) -> Decimal:
        """The price the protective stop and target are measured from."""
        return self.level_basis if self.level_basis is not None else self.entry_price

    def levels(self, rules: ExitRules) -> tuple[Decimal, Decimal | None]:
        """(stop, target) of the broker-side protection; a foreign position has no target."""
        stop, target = protective_levels(self.basis, rules)
        return stop, None if self.foreign else target

    def rebased(self, ratio: Decimal, now: datetime) -> PositionState:
        """The same position after a split that multiplied its share count by `ratio` (2 for a 2:1
        forward split, 1/4 for a 1:4 reverse): every price divides by it, so no level moves relative
        to the market and no exit fires from the old prices. Arming and times are kept."""
        _require_aware(now)
        if not ratio.is_finite() or ratio <= ZERO:
            raise InputError(f"split ratio must be positive, got {ratio}")
        return self.model_copy(update={
            "entry_price": self.entry_price / ratio,
            "qty": self.qty * ratio,
            "high_water_mark": self.high_water_mark / ratio,
            "level_basis": self.level_basis / ratio if self.level_basis is not None else None,
            "updated_at": max(self.updated_at, now),
        })

    def follow_broker(self, qty: Decimal, entry_price: Decimal, now: datetime, *,
                      split_ratio: Decimal | None = None) -> tuple[PositionState, Decimal | None]:
        """The state brought up to the broker's quantity and average entry, and the split ratio
        applied (None when none was).

        A split is `split_ratio` (announced by the corporate-actions feed) when the broker's
        quantity shows it, or any change of quantity that keeps the cost basis (a split changes the
        share count and the average price inversely; a buy raises the cost basis and a sale lowers
        it). Anything else is an ordinary fill: entry and quantity follow the broker, the peak and
        armed flags stay (`with_entry`) and `updated_at` is kept, so the next tick still counts the
        bars since its last look. After a split `updated_at` moves to `now`: bars from before it
        carry the old prices and must not raise the re-based high-water mark."""
        if qty == self.qty and entry_price == self.entry_price:
            return self, None
        ratio = split_ratio_between(self.qty, self.entry_price, qty, entry_price, announced=split_ratio)
        if ratio is not None:
            return self.rebased(ratio, now).model_copy(update={"qty": qty, "entry_price": entry_price}), ratio
        return self.with_entry(entry_price, qty, self.updated_at), None

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, data: str | bytes) -> PositionState:
        return cls.model_validate_json(data)


@dataclass(frozen=True, slots=True)
class ExitDecision:
    """A rule fired: sell the position. `reference_price` is the price that triggered it (for the
    broker-side exits in `bar_exit`, the assumed fill price); `level` is the rule's trigger level."""

    reason: ExitReason
    reference_price: Decimal
    level: Decimal | None
    detail: str


# -- splits -----------------------------------------------------------------------------------------

#: How far the cost basis may move across a split (cash in lieu of a fractional share, rounding of
#: the broker's average price) and still count as unchanged.
SPLIT_COST_TOLERANCE = Decimal("0.005")


def split_ratio_between(old_qty: Decimal, old_entry: Decimal, new_qty: Decimal, new_entry: Decimal, *,
                        announced: Decimal | None = None) -> Decimal | None:
    """The split that turned (old_qty @ old_entry) into (new_qty @ new_entry), or None.

    With an `announced` ratio: the new quantity must be the old one times it (down to whole shares,
    cash in lieu of a fraction) and the average entry the old one divided by it. Without one: the
    quantity changed and the cost basis did not (within SPLIT_COST_TOLERANCE), the ratio being the
    quantities' quotient."""
    if old_qty <= ZERO or new_qty <= ZERO or old_entry <= ZERO or new_entry <= ZERO:
        return None
    if announced is not None and announced > ZERO and announced != ONE:
        expected_qty = old_qty * announced
        if expected_qty - ONE < new_qty <= expected_qty and _close(new_entry, old_entry / announced):
            return announced
    if new_qty == old_qty:
        return None
    if _close(new_qty * new_entry, old_qty * old_entry):
        ratio = new_qty / old_qty
        return ratio
    return None


def _close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= SPLIT_COST_TOLERANCE * max(abs(a), abs(b))


# -- levels -----------------------------------------------------------------------------------------


def protective_levels(entry_price: Decimal, rules: ExitRules) -> tuple[Decimal, Decimal]:
    """(stop_price, target_price) for the broker-side protection, on the broker's price grid.

    The stop is rounded UP (a sell stop never looser than -5%: 100.03 x 0.95 = 95.0285 -> 95.03) and
    the target DOWN (never above +20%: 0.3333 x 1.2 = 0.39996 -> 0.3999). InputError when the entry is
    so small that a tick is wider than the stop distance (below about $0.002).
    """
    _require_positive_price(entry_price, "entry price")
    stop = round_price(entry_price * (ONE - rules.stop_loss), ROUND_CEILING)
    target = round_price(entry_price * (ONE + rules.take_profit), ROUND_FLOOR)
    if not stop < entry_price < target:
        raise InputError(
            f"entry price {entry_price} is too small for a protective stop below it and a target above it "
            f"at the broker's price increment (stop {stop}, target {target})"
        )
    return stop, target


def breakeven_arm_level(entry_price: Decimal, rules: ExitRules) -> Decimal:
    """The high-water mark at which break-even arms (exact, not rounded: reaching means >=)."""
    return entry_price * (ONE + rules.breakeven_arm)


def trailing_arm_level(entry_price: Decimal, rules: ExitRules) -> Decimal:
    """The high-water mark at which the trailing exit arms (exact, not rounded)."""
    return entry_price * (ONE + rules.trailing_arm)


def trailing_exit_level(entry_price: Decimal, high_water_mark: Decimal, rules: ExitRules) -> Decimal:
    """The price at or below which an armed trailing exit sells: hwm minus the given-back gain."""
    return high_water_mark - rules.trailing_giveback * (high_water_mark - entry_price)


# -- live: one manager tick --------------------------------------------------------------------------


def advance_state(
    state: PositionState,
    *,
    high_since_last: Decimal | None,
    price: Decimal,
    now: datetime,
    rules: ExitRules,
) -> PositionState:
    """Raise the high-water mark with what was seen since the last tick, then arm what it reached.

    `high_since_last` is the highest minute-bar high since the last tick (None when there were no
    bars); `price` is the current price. Both count towards the high-water mark.
    """
    _require_positive_price(price, "price")
    _require_aware(now)
    seen = [state.high_water_mark, price]
    if high_since_last is not None:
        _require_positive_price(high_since_last, "high since last tick")
        seen.append(high_since_last)
    high_water_mark = max(seen)
    return state.model_copy(
        update={
            "high_water_mark": high_water_mark,
            "breakeven_armed": state.breakeven_armed
            or high_water_mark >= breakeven_arm_level(state.entry_price, rules),
            "trailing_armed": state.trailing_armed
            or high_water_mark >= trailing_arm_level(state.entry_price, rules),
            "updated_at": now,
        }
    )


def soft_exit(state: PositionState, *, price: Decimal, now: datetime, rules: ExitRules) -> ExitDecision | None:
    """The soft exit that fires at `price` and `now` for an already advanced state, or None.

    Reads the armed flags and the high-water mark as they are: call `advance_state` first (or use
    `evaluate`). When several fire, SOFT_EXIT_PRECEDENCE picks the reason.
    """
    _require_positive_price(price, "price")
    _require_aware(now)
    fired = {reason: rule(state, price, now, rules) for reason, rule in _SOFT_EXIT_RULES.items()}
    return next((fired[reason] for reason in SOFT_EXIT_PRECEDENCE if fired[reason] is not None), None)


def _trailing(state: PositionState, price: Decimal, _now: datetime, rules: ExitRules) -> ExitDecision | None:
    if not state.trailing_armed:
        return None
    entry = state.entry_price
    level = trailing_exit_level(entry, state.high_water_mark, rules)
    if price > level:
        return None
    return ExitDecision(
        ExitReason.TRAILING,
        price,
        level,
        f"price {price} <= trailing level {level} (high-water mark {state.high_water_mark}, "
        f"entry {entry}, gives back {_pct(rules.trailing_giveback)} of the peak gain)",
    )


def _break_even(state: PositionState, price: Decimal, _now: datetime, _rules: ExitRules) -> ExitDecision | None:
    entry = state.entry_price
    if not state.breakeven_armed or price > entry:
        return None
    return ExitDecision(
        ExitReason.BREAK_EVEN,
        price,
        entry,
        f"price {price} <= entry {entry} after the high-water mark {state.high_water_mark} armed break-even",
    )


def _time_stop(state: PositionState, price: Decimal, now: datetime, rules: ExitRules) -> ExitDecision | None:
    # Subtract in UTC: Python subtracts two datetimes that share one tzinfo (both New York) as wall
    # clock times, so a week spanning a DST change would come out an hour off.
    held = now.astimezone(UTC) - state.first_fill_at.astimezone(UTC)
    if held <= rules.time_stop:
        return None
    return ExitDecision(
        ExitReason.TIME_STOP,
        price,
        None,
        f"held {_duration(held)} since the first fill at {state.first_fill_at.isoformat()}, "
        f"more than {_duration(rules.time_stop)}",
    )


#: Each soft exit's rule; SOFT_EXIT_PRECEDENCE (above) decides which reason wins when several fire.
_SOFT_EXIT_RULES = {
    ExitReason.TRAILING: _trailing,
    ExitReason.BREAK_EVEN: _break_even,
    ExitReason.TIME_STOP: _time_stop,
}


def evaluate(
    state: PositionState,
    high_since_last: Decimal | None,
    price: Decimal,
    now: datetime,
    rules: ExitRules,
) -> tuple[PositionState, ExitDecision | None]:
    """One tick: advance the state, then check the soft exits at the current price."""
    new_state = advance_state(state, high_since_last=high_since_last, price=price, now=now, rules=rules)
    return new_state, soft_exit(new_state, price=price, now=now, rules=rules)


# -- backtest: one bar -------------------------------------------------------------------------------


def bar_exit(
    state: PositionState,
    bar_open: Decimal,
    bar_high: Decimal,
    bar_low: Decimal,
    bar_close: Decimal,
    when: datetime,
    rules: ExitRules,
) -> tuple[PositionState, ExitDecision | None]:
    """One bar of a backtest, in the order the live system would see it.

    1. The broker-side orders, which rest all bar: an open at or below the stop fills the stop at the
       open (gap down); an open at or above the target fills the target at the open (gap up); else a
       low at or below the stop fills at the stop; else a high at or above the target fills at the
       target. A bar that touches both is a STOP_LOSS: we cannot know which came first, so assume the
       worse (as freqtrade does).
    2. Otherwise the bar is a manager tick: its high and close raise the high-water mark, and the
       soft exits are checked at the close, `when` being the time of that close (the bar's end).

    When a decision is returned the position is closed; for a broker-side exit the state is returned
    unchanged (the bar's high may have come after the fill).
    """
    for value, name in ((bar_open, "open"), (bar_high, "high"), (bar_low, "low"), (bar_close, "close")):
        _require_positive_price(value, f"bar {name}")
    if not (bar_low <= min(bar_open, bar_close) and max(bar_open, bar_close) <= bar_high):
        raise InputError(
            f"impossible bar for {state.symbol}: open {bar_open} high {bar_high} low {bar_low} close {bar_close}"
        )
    stop, target = protective_levels(state.entry_price, rules)
    if bar_open <= stop:
        return state, ExitDecision(
            ExitReason.STOP_LOSS, bar_open, stop, f"opened at {bar_open}, at or through the stop {stop}"
        )
    if bar_open >= target:
        return state, ExitDecision(
            ExitReason.TAKE_PROFIT, bar_open, target, f"opened at {bar_open}, at or through the target {target}"
        )
    if bar_low <= stop:
        both = f"; the high {bar_high} also reached the target {target}, stop assumed first" if bar_high >= target else ""
        return state, ExitDecision(ExitReason.STOP_LOSS, stop, stop, f"low {bar_low} reached the stop {stop}{both}")
    if bar_high >= target:
        return state, ExitDecision(
            ExitReason.TAKE_PROFIT, target, target, f"high {bar_high} reached the target {target}"
        )
    return evaluate(state, bar_high, bar_close, when, rules)


# -- helpers -----------------------------------------------------------------------------------------


def _require_positive_price(value: object, what: str) -> None:
    if not isinstance(value, Decimal) or not value.is_finite() or value <= ZERO:
        raise InputError(f"{what} must be a positive Decimal, got {value!r}")


def _require_aware(when: datetime) -> None:
    if when.tzinfo is None or when.utcoffset() is None:
        raise InputError(f"time must be timezone-aware, got {when.isoformat()}")


def _pct(fraction: Decimal) -> str:
    return f"{fmt_qty(fraction * HUNDRED)}%"


def _duration(delta: timedelta) -> str:
    return str(delta)  # "7 days, 0:00:01"
