"""Protection: which sell orders a position should have, and how the broker's open orders are brought there."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import event, given, settings
from hypothesis import strategies as st

from shared.exits import ExitReason, ExitRules, PositionState, split_ratio_between
from shared.models import Order, OrderClass, OrderStatus, OrderType, Side, TimeInForce
from shared.ownership import ForeignPolicy
from shared.protection import (
    DesiredOrder,
    ProtectionKind,
    Verdict,
    desired_protection,
    plan_position,
    reconcile,
)

D = Decimal
NY = ZoneInfo("America/New_York")
T0 = datetime(2026, 11, 24, 9, 40, tzinfo=NY)
RULES = ExitRules(
    stop_loss=D("0.05"),
    take_profit=D("0.2"),
    breakeven_arm=D("0.015"),
    trailing_arm=D("0.02"),
    trailing_giveback=D("0.5"),
    time_stop=timedelta(days=7),
)
_ids = itertools.count(1)


def plan(qty, entry="100.00", **kw):
    return desired_protection(D(qty), D(entry), RULES, symbol="AAPL", **kw)


def order(kind, qty, *, stop=None, limit=None, side=Side.SELL, tif=TimeInForce.GTC, status=OrderStatus.NEW,
          filled="0", symbol="AAPL", minutes=0, legs=()):
    n = next(_ids)
    at = T0 + timedelta(minutes=minutes, microseconds=n)
    return Order(
        id=f"ord-{n}", client_order_id=f"cid-{n}", symbol=symbol, side=side, type=kind,
        order_class=OrderClass.OCO if legs else OrderClass.SIMPLE, time_in_force=tif, status=status,
        qty=D(qty), filled_qty=D(filled), limit_price=None if limit is None else D(limit),
        stop_price=None if stop is None else D(stop), created_at=at, updated_at=at, legs=list(legs),
    )


def oco(qty, stop="95.00", target="120.00", *, tif=TimeInForce.GTC, minutes=0, status=OrderStatus.NEW,
        leg_status=OrderStatus.HELD, symbol="AAPL"):
    """An OCO as Alpaca lists it nested: the take-profit limit is the parent, the stop its leg."""
    leg = order(OrderType.STOP, qty, stop=stop, tif=tif, status=leg_status, minutes=minutes, symbol=symbol)
    leg = leg.model_copy(update={"order_class": OrderClass.OCO})
    return order(OrderType.LIMIT, qty, limit=target, tif=tif, minutes=minutes, status=status, legs=[leg],
                 symbol=symbol)


def stop(qty, price="95.00", *, tif=TimeInForce.DAY, **kw):
    return order(OrderType.STOP, qty, stop=price, tif=tif, **kw)


def entry_buy(qty, filled="0"):
    return order(OrderType.MARKET, qty, side=Side.BUY, tif=TimeInForce.DAY,
                 status=OrderStatus.PARTIALLY_FILLED if D(filled) else OrderStatus.NEW, filled=filled)


def placed_as_broker_order(desired: DesiredOrder, minutes=1) -> Order:
    """What the broker lists after accepting a desired order."""
    if desired.kind is ProtectionKind.OCO:
        return oco(str(desired.qty), str(desired.stop_price), str(desired.target_price), minutes=minutes)
    return stop(str(desired.qty), str(desired.stop_price), tif=desired.time_in_force, minutes=minutes)


def apply(actions, open_orders):
    """The broker after the caller cancelled and then placed what reconcile asked."""
    kept = [o for o in open_orders if o.id not in actions.cancel]
    return kept + [placed_as_broker_order(d) for d in actions.place]


# -- the desired protection ----------------------------------------------------------------------


def test_whole_shares_get_one_gtc_oco_with_stop_minus_5_and_target_plus_20():
    p = plan("10")
    assert [(o.kind, o.qty, o.stop_price, o.target_price, o.time_in_force) for o in p.orders] == [
        (ProtectionKind.OCO, D("10"), D("95.00"), D("120.00"), TimeInForce.GTC)
    ]


def test_mixed_quantity_gets_an_oco_for_the_whole_part_and_a_day_stop_for_the_rest():
    p = plan("10.5")
    assert [(o.kind, o.qty, o.target_price, o.time_in_force) for o in p.orders] == [
        (ProtectionKind.OCO, D("10"), D("120.00"), TimeInForce.GTC),
        (ProtectionKind.STOP, D("0.5"), None, TimeInForce.DAY),
    ]
    assert p.protected_qty == D("10.5")


def test_position_of_0_4_shares_gets_only_the_fractional_day_stop():
    p = plan("0.4")
    assert [(o.kind, o.qty, o.stop_price, o.time_in_force) for o in p.orders] == [
        (ProtectionKind.STOP, D("0.4"), D("95.00"), TimeInForce.DAY)
    ]


def test_fractional_remainder_is_reported_unprotected_when_the_broker_allows_no_fractional_stop():
    p = plan("10.5", fractional_allowed=False)
    assert [o.kind for o in p.orders] == [ProtectionKind.OCO]
    assert p.unprotected_qty == D("0.5")


def test_without_oco_support_whole_shares_get_a_plain_gtc_stop():
    p = plan("7", oco_allowed=False)
    assert [(o.kind, o.qty, o.target_price, o.time_in_force) for o in p.orders] == [
        (ProtectionKind.STOP, D("7"), None, TimeInForce.GTC)
    ]


def test_flat_position_needs_no_protection_and_its_leftover_sells_are_cancelled():
    leftover = oco("10")
    actions = reconcile(plan("0"), [leftover])
    assert actions.cancel == [leftover.id] and actions.place == [] and actions.keep == []


def test_sub_dollar_entry_levels_use_four_decimals():
    p = plan("1000", entry="0.3333")
    assert (p.stop_price, p.target_price) == (D("0.3167"), D("0.3999"))


def test_quantity_beyond_nine_decimals_is_rounded_down_never_up():
    p = plan("2.0000000019")
    assert p.protected_qty == D("2.000000001")


# -- reconcile -----------------------------------------------------------------------------------


def test_no_open_orders_places_the_whole_plan():
    actions = reconcile(plan("10.5"), [])
    assert actions.cancel == [] and [d.kind for d in actions.place] == [ProtectionKind.OCO, ProtectionKind.STOP]


def test_matching_set_needs_no_actions():
    existing = [oco("10"), stop("0.5")]
    actions = reconcile(plan("10.5"), existing)
    assert actions.in_sync and sorted(actions.keep) == sorted(o.id for o in existing)


def test_partial_fill_30_then_100_percent_replaces_the_set_with_one_covering_everything():
    buy = entry_buy("10", filled="3")
    first = reconcile(plan("3"), [buy])
    assert [(d.kind, d.qty) for d in first.place] == [(ProtectionKind.OCO, D("3"))] and first.cancel == []
    broker = apply(first, [buy])

    filled = buy.model_copy(update={"status": OrderStatus.FILLED, "filled_qty": D("10")})
    second = reconcile(plan("10"), [o for o in broker if o.id != buy.id] + [filled])
    old_set = next(o for o in broker if o.side is Side.SELL)
    assert second.cancel == [old_set.id]
    assert [(d.kind, d.qty) for d in second.place] == [(ProtectionKind.OCO, D("10"))]


def test_still_open_entry_buy_is_never_cancelled_or_claimed():
    buy = entry_buy("10", filled="3")
    actions = reconcile(plan("3"), [buy, oco("3")])
    assert buy.id not in actions.cancel and buy.id not in actions.keep and actions.in_sync


def test_duplicate_sets_keep_the_oldest_and_cancel_the_rest():
    oldest, newer, newest = oco("10", minutes=0), oco("10", minutes=2), oco("10", minutes=5)
    actions = reconcile(plan("10"), [newest, oldest, newer])
    assert actions.keep == [oldest.id] and sorted(actions.cancel) == sorted([newer.id, newest.id])
    assert actions.place == []


def test_stop_without_a_target_is_replaced_by_an_oco():
    lone_stop = stop("10", tif=TimeInForce.GTC)
    actions = reconcile(plan("10"), [lone_stop])
    assert actions.cancel == [lone_stop.id] and [d.kind for d in actions.place] == [ProtectionKind.OCO]


def test_stray_sell_limit_is_cancelled():
    stray = order(OrderType.LIMIT, "2", limit="130.00")
    actions = reconcile(plan("10"), [oco("10"), stray])
    assert actions.cancel == [stray.id] and actions.place == []


def test_set_at_old_levels_is_replaced_after_the_average_entry_changed():
    at_old_entry = oco("10")  # 95.00 / 120.00 from a 100.00 entry
    actions = reconcile(plan("10", entry="101.00"), [at_old_entry])
    assert actions.cancel == [at_old_entry.id]
    assert [(d.stop_price, d.target_price) for d in actions.place] == [(D("95.95"), D("121.20"))]


def test_oco_that_would_expire_at_the_close_is_replaced_by_a_gtc_one():
    day_oco = oco("10", tif=TimeInForce.DAY)
    actions = reconcile(plan("10"), [day_oco])
    assert actions.cancel == [day_oco.id] and actions.place[0].time_in_force is TimeInForce.GTC


def test_order_already_pending_cancel_is_not_counted_as_protection():
    leaving = oco("10", status=OrderStatus.PENDING_CANCEL)
    actions = reconcile(plan("10"), [leaving])
    assert actions.keep == [] and actions.cancel == [leaving.id] and len(actions.place) == 1


def test_oco_whose_stop_leg_is_gone_is_replaced():
    half = oco("10", leg_status=OrderStatus.CANCELED)
    actions = reconcile(plan("10"), [half])
    assert actions.cancel == [half.id] and len(actions.place) == 1


def test_stop_leg_listed_on_its_own_as_well_is_handled_through_its_parent():
    parent = oco("10")
    actions = reconcile(plan("10"), [parent, parent.legs[0]])
    assert actions.in_sync and actions.keep == [parent.id]


def test_other_symbols_orders_are_left_alone():
    msft = oco("4", symbol="MSFT")
    actions = reconcile(plan("10"), [msft])
    assert msft.id not in actions.cancel and len(actions.place) == 1


def test_stop_that_sold_part_of_the_position_still_protects_the_rest():
    partly_sold = stop("0.8", filled="0.3", status=OrderStatus.PARTIALLY_FILLED)
    actions = reconcile(plan("0.5"), [partly_sold])
    assert actions.in_sync and actions.keep == [partly_sold.id]


def test_prices_reported_without_trailing_zeros_still_match():
    existing = oco("10", stop="95", target="120.0")
    assert reconcile(plan("10"), [existing]).in_sync


def test_fractional_stop_and_oco_swap_roles_after_the_position_grows_past_a_whole_share():
    before = [stop("0.6")]
    actions = reconcile(plan("1.2"), before)
    assert actions.cancel == [before[0].id]
    assert [(d.kind, d.qty) for d in actions.place] == [(ProtectionKind.OCO, D("1")), (ProtectionKind.STOP, D("0.2"))]


# -- property: whatever the broker holds, one reconcile converges --------------------------------

quantities = st.one_of(
    st.integers(0, 500).map(D),
    st.integers(1, 50_000).map(lambda n: D(n) / 100),
    st.integers(1, 10**10).map(lambda n: D(n) / 10**9),
)
entries = st.sampled_from([D("100.00"), D("101.00"), D("0.3333"), D("12.34")])


@st.composite
def broker_orders(draw, position_qty, entry):
    """A messy broker: the right set, stale sets, duplicates, stray sells, buys, other symbols."""
    right = desired_protection(position_qty, entry, RULES, symbol="AAPL")
    stale = desired_protection(position_qty + draw(st.integers(1, 5)), entry, RULES, symbol="AAPL")
    candidates = []
    for d in [*right.orders, *right.orders, *stale.orders]:
        candidates.append(placed_as_broker_order(d, minutes=draw(st.integers(0, 30))))
    wrong_qty = str(draw(quantities) + D("0.1"))
    candidates += [
        stop(wrong_qty, tif=TimeInForce.GTC),
        order(OrderType.LIMIT, wrong_qty, limit="130.00"),
        oco("3", tif=TimeInForce.DAY),
        oco("3", status=OrderStatus.PENDING_CANCEL),
        entry_buy("10", filled="3"),
        oco("4", symbol="MSFT"),
    ]
    return draw(st.lists(st.sampled_from(candidates), unique_by=lambda o: o.id, max_size=8))


@settings(max_examples=400, deadline=None)
@given(data=st.data(), position_qty=quantities, entry=entries)
def test_reconcile_never_oversells_never_doubles_and_converges_in_one_pass(data, position_qty, entry):
    p = desired_protection(position_qty, entry, RULES, symbol="AAPL")
    broker = data.draw(broker_orders(position_qty, entry))
    actions = reconcile(p, broker)

    by_id = {o.id: o for o in broker}
    kept, placed = [by_id[i] for i in actions.keep], actions.place
    # Sells of the symbol are either kept or cancelled, never both; nothing else is touched.
    sells = {o.id for o in broker if o.side is Side.SELL and o.symbol == "AAPL"} - {
        leg.id for o in broker for leg in o.legs
    }
    assert set(actions.keep) | set(actions.cancel) == sells
    assert not set(actions.keep) & set(actions.cancel)
    # What rests after the actions never sells more than the position, and is at most one OCO and
    # one fractional stop.
    resting_qty = sum((o.remaining_qty for o in kept), D(0)) + sum((d.qty for d in placed), D(0))
    assert resting_qty <= max(position_qty, D(0))
    after = apply(actions, broker)
    resting = [o for o in after if o.side is Side.SELL and o.symbol == "AAPL"]
    assert sum(o.order_class is OrderClass.OCO for o in resting) <= 1
    assert sum(o.order_class is OrderClass.SIMPLE for o in resting) <= 1
    # A second reconcile against the result has nothing left to do.
    again = reconcile(p, after)
    assert again.in_sync
    event("kept something" if actions.keep else "kept nothing")
    event("cancelled something" if actions.cancel else "cancelled nothing")


# -- the plan of one position (plan_position): the one decision every trigger runs ------------------

NS = "fl"


def ours(o: Order) -> Order:
    """The same order under one of the line's client order ids (`<ns>-<YYYYMMDD>-...`)."""
    return o.model_copy(update={"client_order_id": f"{NS}-20261124-{o.symbol}-oco-r{o.id[4:]}"})


def line_state(entry="100.00", qty="10", **kw) -> PositionState:
    return PositionState.at_entry("AAPL", D(entry), D(qty), T0).model_copy(update=kw)


def decide(qty, price, state, orders=(), **kw):
    return plan_position("AAPL", D(qty), None if price is None else D(price), state, list(orders), RULES,
                         namespace=NS, **kw)


def test_a_line_position_at_its_levels_is_kept_as_it_is():
    held = ours(oco("10"))
    plan = decide("10", "101", line_state(), [held])
    assert plan.verdict is Verdict.PROTECT and plan.actions.in_sync and plan.actions.keep == [held.id]


def test_price_through_the_stop_in_the_session_is_an_exit_at_market_and_cancels_only_ours():
    mine, users = ours(oco("6")), order(OrderType.LIMIT, "4", limit="150.00")
    plan = decide("10", "90", line_state(), [mine, users], in_session=True)
    assert plan.verdict is Verdict.EXIT and plan.exit_reason is ExitReason.STOP_LOSS
    assert plan.actions.cancel == [mine.id]  # the user's limit sell stays


def test_price_through_the_stop_out_of_the_session_keeps_a_resting_stop_or_places_one_under_the_market():
    resting = ours(oco("10"))
    kept = decide("10", "90", line_state(), [resting], in_session=False)
    assert kept.verdict is Verdict.PROTECT and kept.actions.in_sync  # the broker's stop triggers at the open
    bare = decide("10", "90", line_state(), [], in_session=False)
    ((placed,),) = [bare.actions.place]
    assert (placed.kind, placed.qty, placed.stop_price, placed.target_price) == (
        ProtectionKind.STOP, D("10"), D("89.10"), None)  # 1% under the last price: the broker accepts it


def test_an_exit_refused_this_pass_falls_back_to_a_stop_under_the_market_not_a_second_sell():
    plan = decide("10", "90", line_state(), [], in_session=True, exit_refused=True)
    assert plan.verdict is Verdict.PROTECT and [d.stop_price for d in plan.actions.place] == [D("89.10")]


def test_a_line_position_above_its_target_takes_the_profit_in_the_session_only():
    assert decide("10", "125", line_state(), in_session=True).exit_reason is ExitReason.TAKE_PROFIT
    closed = decide("10", "125", line_state(), [], in_session=False)
    assert closed.verdict is Verdict.PROTECT and closed.actions.place[0].target_price == D("120.00")


def test_a_foreign_position_gets_a_stop_under_todays_price_and_no_target_even_when_far_up():
    state = PositionState.adopted("AAPL", D("100"), D("10"), D("130"), T0)
    plan = decide("10", "130", state, in_session=True)
    assert plan.verdict is Verdict.PROTECT
    assert [(d.kind, d.stop_price, d.target_price) for d in plan.actions.place] == [
        (ProtectionKind.STOP, D("123.50"), None)]
    ignored = decide("10", "130", state, [order(OrderType.STOP, "10", stop="1.00")],
                     foreign_policy=ForeignPolicy.IGNORE)
    assert ignored.verdict is Verdict.IGNORE and ignored.actions.in_sync and not ignored.actions.keep


def test_shares_the_users_sells_hold_are_not_protected_again():
    plan = decide("10", "101", line_state(), [order(OrderType.LIMIT, "4", limit="150.00")])
    assert [(d.kind, d.qty) for d in plan.actions.place] == [(ProtectionKind.OCO, D("6"))]
    assert plan.user_held == D("4")


def test_halted_keeps_every_order_and_short_and_flat_cancel_only_ours():
    mine, users = ours(oco("10")), order(OrderType.STOP, "5", stop="90.00")
    halted = decide("10", "90", line_state(), [mine], in_session=True, tradable=False)
    assert halted.verdict is Verdict.HALTED and halted.actions.cancel == [] and halted.actions.place == []
    short = decide("-5", "100", None, [mine, users])
    assert short.verdict is Verdict.SHORT and short.actions.cancel == [mine.id]
    flat = decide("0", None, line_state(), [mine, users])
    assert flat.verdict is Verdict.FLAT and flat.actions.cancel == [mine.id]


def test_a_split_is_a_change_of_quantity_that_keeps_the_cost_basis():
    assert split_ratio_between(D("10"), D("100"), D("20"), D("50")) == D("2")
    assert split_ratio_between(D("10"), D("100"), D("2.5"), D("400")) == D("0.25")
    assert split_ratio_between(D("10"), D("100"), D("20"), D("101")) is None  # a buy: the cost basis grew
    assert split_ratio_between(D("10"), D("100"), D("6"), D("100")) is None  # a sale
    # 1-for-3 with cash in lieu of the third of a share: the announced ratio explains it.
    assert split_ratio_between(D("10"), D("100"), D("3"), D("300"), announced=D(1) / D(3)) == D(1) / D(3)
    state, ratio = line_state(high_water_mark=D("103")).follow_broker(D("20"), D("50"), T0 + timedelta(days=1))
    assert ratio == D("2") and state.high_water_mark == D("51.5") and state.qty == D("20")
