"""The `slots` sizing, the per-position cap and the entry checks of the planner: pure, no broker."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config import TraderSettings
from shared.models import Account, Asset, Bar, LatestPrice, PriceSource
from shared.sizing import MarketFacts, SkipReason, average_dollar_volume, plan_entries, usable_cash

D = Decimal
DAY = date(2026, 11, 24)
NOW = datetime(2026, 11, 24, 14, 35, tzinfo=UTC)


@dataclass(frozen=True)
class Sig:
    ticker: str
    signal_price: Decimal | None = None


def acct(equity: str, cash: str | None = None) -> Account:
    return Account(cash=D(cash or equity), buying_power=D(cash or equity), equity=D(equity))


def facts(prices: dict[str, str], *, volume: str = "50000000", fractionable: bool = True, **kw) -> MarketFacts:
    return MarketFacts(
        assets={s: Asset(symbol=s, fractionable=fractionable) for s in prices},
        prices={s: LatestPrice(symbol=s, price=D(p), source=PriceSource.ASK) for s, p in prices.items()},
        dollar_volumes={s: D(volume) for s in prices}, **kw)


def cfg(**kw) -> TraderSettings:
    return TraderSettings(_env_file=None, **kw)


# -- slots ---------------------------------------------------------------------------------------------


def test_one_signal_on_an_empty_200k_account_gets_one_slot_not_the_whole_account():
    plan = plan_entries([Sig("AAPL")], acct("200000"), (), (), facts({"AAPL": "190"}), cfg(), DAY)
    ((order,),) = [plan.orders]
    assert order.amount == D("40000.00") and plan.slot == D("40000.00") and plan.free_slots == 5


def test_worked_example_200k_five_slots_two_open_three_signals():
    # $200,000 equity, $80,000 in two positions, $120,000 cash: 3 free slots of $40,000, but only
    # $116,400 usable after the 3% buffer, so each of the three gets a third of it.
    plan = plan_entries([Sig("A"), Sig("B"), Sig("C")], acct("200000", cash="120000"), ("X", "Y"), (),
                        facts({"A": "10", "B": "20", "C": "30"}), cfg(), DAY)
    assert [(o.symbol, o.amount) for o in plan.orders] == [("A", D("38800.00")), ("B", D("38800.00")),
                                                           ("C", D("38800.00"))]
    assert plan.free_slots == 3 and plan.usable == D("116400.00")


def test_the_next_days_signal_gets_its_slots_share_not_the_rest_of_the_cash():
    # Day 2: one position of $40,000 open, $160,000 cash: the new signal still gets one slot.
    plan = plan_entries([Sig("NEW")], acct("200000", cash="160000"), ("OLD",), (), facts({"NEW": "50"}), cfg(), DAY)
    assert [o.amount for o in plan.orders] == [D("40000.00")]


def test_signals_beyond_the_free_slots_are_skipped_in_rank_order():
    held = ("H1", "H2", "H3", "H4")
    plan = plan_entries([Sig("A"), Sig("B")], acct("200000", cash="40000"), held, (), facts({"A": "10", "B": "10"}),
                        cfg(), DAY)
    assert [o.symbol for o in plan.orders] == ["A"]
    assert [(s.symbol, s.reason) for s in plan.skips] == [("B", SkipReason.NO_FREE_SLOT)]


def test_an_open_entry_order_occupies_a_slot():
    plan = plan_entries([Sig("A")], acct("100000"), (), ("P1", "P2", "P3", "P4", "P5"), facts({"A": "10"}), cfg(),
                        DAY)
    assert plan.orders == [] and plan.skips[0].reason is SkipReason.NO_FREE_SLOT


def test_the_daily_entry_cap_counts_what_was_already_sent_today():
    earlier = frozenset({"E1", "E2", "E3", "E4"})
    plan = plan_entries([Sig("A"), Sig("B")], acct("200000"), (), (),
                        facts({"A": "10", "B": "10"}, sent_today=earlier), cfg(FL_MAX_ENTRIES_PER_DAY=5), DAY)
    assert [o.symbol for o in plan.orders] == ["A"]
    assert plan.skips[0].reason is SkipReason.DAILY_ENTRY_CAP
    # A re-run: today's own entries are not new ones (the trader finds and reports them, sends nothing).
    rerun = plan_entries([Sig("A"), Sig("B")], acct("200000"), (), (),
                         facts({"A": "10", "B": "10"}, sent_today=frozenset({"A", "B"})),
                         cfg(FL_MAX_ENTRIES_PER_DAY=2), DAY)
    assert [o.symbol for o in rerun.orders] == ["A", "B"]


def test_position_cap_limits_a_large_slot():
    plan = plan_entries([Sig("A")], acct("200000"), (), (), facts({"A": "10"}),
                        cfg(FL_MAX_POSITIONS=2, FL_MAX_POSITION_PCT=D("30")), DAY)
    assert [o.amount for o in plan.orders] == [D("60000.00")]  # not the $100,000 slot


def test_adding_to_a_held_symbol_counts_what_is_held_against_the_cap():
    plan = plan_entries([Sig("A")], acct("200000", cash="150000"), ("A",), (),
                        facts({"A": "10"}, held_values={"A": D("45000")}), cfg(FL_ALLOW_ADDING=True), DAY)
    assert [o.amount for o in plan.orders] == [D("5000.00")]  # 25% of 200k = 50k, 45k held
    refused = plan_entries([Sig("A")], acct("200000"), ("A",), (), facts({"A": "10"}), cfg(), DAY)
    assert refused.skips[0].reason is SkipReason.ALREADY_HELD


# -- entry checks -----------------------------------------------------------------------------------


def test_each_entry_check_skips_with_its_reason():
    prices = {"CHEAP": "0.64", "THIN": "20", "DRIFT": "2.44", "COLD": "50", "GOOD": "40"}
    signals = [Sig("CHEAP"), Sig("THIN"), Sig("DRIFT", signal_price=D("3.10")), Sig("COLD"), Sig("GOOD", D("40.5"))]
    market = facts(prices, cooldowns={"COLD": NOW + timedelta(days=2)})
    market = MarketFacts(market.assets, market.prices, {**market.dollar_volumes, "THIN": D("250000")},
                         market.cooldowns)
    plan = plan_entries(signals, acct("200000"), (), (), market, cfg(), DAY)
    assert {s.symbol: s.reason for s in plan.skips} == {
        "CHEAP": SkipReason.BELOW_MIN_PRICE, "THIN": SkipReason.LOW_VOLUME, "DRIFT": SkipReason.PRICE_DRIFT,
        "COLD": SkipReason.COOLDOWN}
    assert "-21.3% from the signal's 3.10" in next(s.detail for s in plan.skips if s.symbol == "DRIFT")
    assert [o.symbol for o in plan.orders] == ["GOOD"]


def test_money_of_a_skipped_signal_stays_unspent_unless_reallocated():
    signals = [Sig("A"), Sig("CHEAP")]
    market = facts({"A": "10", "CHEAP": "1"})
    kept = plan_entries(signals, acct("100000"), (), (), market, cfg(FL_SIZING="signals", FL_MAX_POSITION_PCT=100), DAY)
    moved = plan_entries(signals, acct("100000"), (), (), market,
                         cfg(FL_SIZING="signals", FL_MAX_POSITION_PCT=100, FL_REALLOCATE_SKIPPED=True), DAY)
    assert [o.amount for o in kept.orders] == [D("48500.00")]
    assert [o.amount for o in moved.orders] == [D("97000.00")]


def test_average_dollar_volume_is_over_the_last_20_bars():
    bars = [Bar(t=NOW - timedelta(days=30 - i), o=D(1), h=D(1), l=D(1), c=D(10), v=D(1000 if i < 10 else 100))
            for i in range(30)]
    assert average_dollar_volume(bars) == D("1000.00")  # only the last 20, all 10 x 100
    assert average_dollar_volume([]) is None


# -- properties ----------------------------------------------------------------------------------


@st.composite
def books(draw):
    symbols = draw(st.lists(st.from_regex(r"[A-Z]{1,4}", fullmatch=True), max_size=30, unique=True))
    held = draw(st.sets(st.sampled_from(symbols), max_size=4)) if symbols else set()
    prices = {s: str(draw(st.decimals(min_value=D("0.5"), max_value=D("5000"), places=2))) for s in symbols}
    equity = draw(st.integers(1_000, 5_000_000))
    cash = draw(st.integers(0, equity))
    market = facts(prices, fractionable=draw(st.booleans()),
                   held_values={s: D(draw(st.integers(0, equity // 2))) for s in held},
                   sent_today=frozenset(draw(st.lists(st.from_regex(r"[a-z]{1,3}", fullmatch=True), max_size=6))))
    settings_ = cfg(FL_SIZING=draw(st.sampled_from(["slots", "signals"])),
                    FL_MAX_POSITIONS=draw(st.integers(1, 20)),
                    FL_MAX_POSITION_PCT=D(draw(st.integers(1, 100))),
                    FL_ALLOW_ADDING=draw(st.booleans()),
                    FL_CASH_BUFFER_PCT=D(draw(st.integers(0, 10))))
    return [Sig(s) for s in symbols], acct(str(equity), str(cash)), held, market, settings_


@settings(max_examples=300, deadline=None)
@given(books())
def test_no_position_above_its_cap_and_the_total_within_buying_power(book):
    signals, account, held, market, settings_ = book
    plan = plan_entries(signals, account, held, (), market, settings_, DAY)
    cap = account.equity * settings_.FL_MAX_POSITION_PCT / 100
    assert sum((o.amount for o in plan.orders), D(0)) <= usable_cash(account, settings_) <= account.buying_power
    for order in plan.orders:
        assert order.amount + market.held_values.get(order.symbol, D(0)) <= cap
        if settings_.FL_SIZING == "slots":
            assert order.amount <= account.equity / settings_.FL_MAX_POSITIONS
    new = [o for o in plan.orders if o.symbol not in held]
    assert len(new) <= max(settings_.FL_MAX_POSITIONS - len(held), 0) or settings_.FL_SIZING == "signals"
    assert len(plan.orders) <= max(settings_.FL_MAX_ENTRIES_PER_DAY - len(market.sent_today), 0)
    assert len(plan.orders) + len(plan.skips) == len(signals)


@settings(max_examples=100, deadline=None)
@given(books())
def test_identical_inputs_give_identical_plans(book):
    signals, account, held, market, settings_ = book
    assert plan_entries(signals, account, held, (), market, settings_, DAY) == plan_entries(
        list(signals), account, set(held), (), market, settings_, DAY)
