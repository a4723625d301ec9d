"""The entry planner and the client order id scheme: pure functions, no broker, no Redis.

The examples here run the `signals` sizing (the seed's rule: usable cash split across the day's
signals) with the entry checks neutral, and pin that it behaves exactly as it always did; the
`slots` sizing, the cap and the entry checks are in tests/unit/test_sizing_slots.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from shared import client_ids
from shared.config import TraderSettings
from shared.models import Account, Asset, LatestPrice, PriceSource
from shared.sizing import EntryKind, MarketFacts, SkipReason, plan_entries, usable_cash, whole_share_retry

DAY = date(2026, 11, 24)
D = Decimal


@dataclass(frozen=True)
class Sig:
    ticker: str
    signal_price: Decimal | None = None


#: The seed's sizing with every newer check neutral: the plans below must be what they always were.
SEED_RULE = dict(FL_SIZING="signals", FL_MAX_POSITION_PCT=D("100"), FL_MIN_PRICE=D("0"), FL_MIN_DOLLAR_VOLUME=D("0"),
                 FL_MAX_ENTRIES_PER_DAY=500)


def trader_settings(buffer: str = "3", minimum: str = "1") -> TraderSettings:
    return TraderSettings(FL_CASH_BUFFER_PCT=D(buffer), FL_MIN_ORDER_NOTIONAL=D(minimum), **SEED_RULE)


def account(cash: str, buying_power: str | None = None) -> Account:
    return Account(cash=D(cash), buying_power=D(buying_power or cash), equity=D(cash))


def price(symbol: str, value: str) -> LatestPrice:
    return LatestPrice(symbol=symbol, price=D(value), source=PriceSource.ASK, ask=D(value))


def market(spec: dict[str, tuple[str, bool]]) -> tuple[dict[str, Asset], dict[str, LatestPrice]]:
    assets = {s: Asset(symbol=s, fractionable=frac) for s, (_, frac) in spec.items()}
    prices = {s: price(s, p) for s, (p, _) in spec.items()}
    return assets, prices


FIVE = {"AAPL": ("190.12", True), "MSFT": ("410.50", True), "NVDA": ("120.00", True),
        "AMD": ("150.00", True), "BRK.A": ("650000.00", False)}


def plan(signals, acct, spec, held=(), pending=(), **kw):
    assets, prices = market(spec)
    return plan_entries([Sig(t) for t in signals], acct, held, pending, MarketFacts(assets, prices),
                        kw.pop("settings", trader_settings()), DAY, **kw)


# -- the seed's example --------------------------------------------------------------------------


def test_200k_split_across_five_signals_keeps_a_3_percent_buffer():
    spec = {**FIVE, "BRK.A": ("410.00", False)}
    result = plan(list(spec), account("200000"), spec)
    assert result.usable == D("194000.00")
    assert [o.symbol for o in result.orders] == list(spec)
    notional = [o for o in result.orders if o.kind is EntryKind.NOTIONAL]
    assert [o.amount for o in notional] == [D("38800.00")] * 4
    assert all(o.qty is None for o in notional)


def test_non_fractionable_asset_gets_the_most_whole_shares_its_share_buys():
    spec = {**FIVE, "BRK.A": ("410.00", False)}
    whole = next(o for o in plan(list(spec), account("200000"), spec).orders if o.symbol == "BRK.A")
    assert whole.kind is EntryKind.QTY
    assert whole.qty == D("94")  # 38,800 / 410 = 94.63
    assert whole.amount == D("38540.00")
    assert whole.reference_price == D("410.00")


def test_notional_amount_is_rounded_down_to_the_cent():
    spec = {"A": ("10", True), "B": ("10", True), "C": ("10", True)}
    result = plan(["A", "B", "C"], account("100"), spec, settings=trader_settings(buffer="0"))
    assert [o.amount for o in result.orders] == [D("33.33")] * 3


def test_buffer_is_taken_from_the_smaller_of_cash_and_buying_power():
    assert usable_cash(account("10000", "40000"), trader_settings()) == D("9700.00")
    assert usable_cash(account("10000", "5000"), trader_settings()) == D("4850.00")
    assert usable_cash(account("-50", "0"), trader_settings()) == D("0")


# -- skips ---------------------------------------------------------------------------------------


def test_held_ticker_is_skipped_and_the_rest_share_the_cash():
    spec = {"AAPL": ("100", True), "MSFT": ("100", True)}
    result = plan(["AAPL", "MSFT"], account("1000"), spec, held={"AAPL"}, settings=trader_settings("0"))
    assert [(s.symbol, s.reason) for s in result.skips] == [("AAPL", SkipReason.ALREADY_HELD)]
    assert [(o.symbol, o.amount) for o in result.orders] == [("MSFT", D("1000.00"))]


def test_ticker_with_an_open_order_is_skipped():
    spec = {"AAPL": ("100", True)}
    result = plan(["AAPL"], account("1000"), spec, pending={"AAPL"})
    assert result.orders == []
    assert result.skips[0].reason is SkipReason.OPEN_ORDER


def test_unknown_untradable_and_unpriced_tickers_are_skipped_with_their_reason():
    assets = {"OK": Asset(symbol="OK", fractionable=True),
              "HALTED": Asset(symbol="HALTED", fractionable=True, tradable=False),
              "NOPX": Asset(symbol="NOPX", fractionable=True)}
    prices = {"OK": price("OK", "10"), "HALTED": price("HALTED", "10"), "GHOST": price("GHOST", "10")}
    result = plan_entries([Sig("OK"), Sig("HALTED"), Sig("GHOST"), Sig("NOPX")], account("1000"), (), (),
                          MarketFacts(assets, prices), trader_settings("0"), DAY)
    assert {s.symbol: s.reason for s in result.skips} == {
        "HALTED": SkipReason.NOT_TRADABLE, "GHOST": SkipReason.UNKNOWN_ASSET, "NOPX": SkipReason.NO_PRICE}
    assert [(o.symbol, o.amount) for o in result.orders] == [("OK", D("1000.00"))]


def test_expensive_non_fractionable_stock_buying_zero_shares_is_skipped():
    spec = {"AAPL": ("100", True), "BRK.A": ("650000", False)}
    result = plan(["AAPL", "BRK.A"], account("10000"), spec)
    assert [o.symbol for o in result.orders] == ["AAPL"]
    assert [(s.symbol, s.reason) for s in result.skips] == [("BRK.A", SkipReason.ZERO_SHARES)]


def test_share_below_the_minimum_order_is_skipped():
    spec = {"A": ("10", True), "B": ("10", True)}
    result = plan(["A", "B"], account("30"), spec, settings=trader_settings("0", minimum="20"))
    assert result.orders == []
    assert {s.reason for s in result.skips} == {SkipReason.BELOW_MINIMUM}


def test_no_cash_gives_no_orders():
    spec = {"A": ("10", True)}
    result = plan(["A"], account("0"), spec)
    assert result.orders == []
    assert result.skips[0].reason is SkipReason.NO_FUNDS


def test_ticker_listed_twice_gets_one_order():
    spec = {"A": ("10", True)}
    result = plan(["A", "A"], account("100"), spec, settings=trader_settings("0"))
    assert [(o.symbol, o.amount) for o in result.orders] == [("A", D("100.00"))]
    assert [s.reason for s in result.skips] == [SkipReason.DUPLICATE_SIGNAL]


# -- the whole-share retry -----------------------------------------------------------------------


def test_whole_share_retry_uses_its_own_id_and_fits_the_share():
    spec = {"AAPL": ("190.12", True)}
    entry = plan(["AAPL"], account("1000"), spec, settings=trader_settings("0")).orders[0]
    retry = whole_share_retry(entry)
    assert retry is not None
    assert retry.kind is EntryKind.QTY and retry.qty == D("5")
    assert retry.amount == D("950.60") and retry.amount <= entry.amount
    assert retry.client_order_id == "fl-20261124-AAPL-entry-whole" != entry.client_order_id


def test_whole_share_retry_is_none_when_no_whole_share_fits():
    spec = {"AAPL": ("190.12", True)}
    entry = plan(["AAPL"], account("100"), spec).orders[0]
    assert whole_share_retry(entry) is None


# -- client order ids ----------------------------------------------------------------------------

CID_CHARS = re.compile(r"^[A-Za-z0-9._-]{1,48}$")


def test_entry_ids_follow_the_documented_scheme():
    assert client_ids.entry_id(DAY, "AAPL") == "fl-20261124-AAPL-entry"
    assert client_ids.whole_share_entry_id(DAY, "AAPL") == "fl-20261124-AAPL-entry-whole"
    assert client_ids.entry_id(DAY, "AAPL", "acct2") == "acct2-20261124-AAPL-entry"


def test_two_long_namespaces_get_different_short_tags():
    first = client_ids.entry_id(DAY, "AAPL", "production-account-one")
    second = client_ids.entry_id(DAY, "AAPL", "production-account-two")
    assert first != second
    assert CID_CHARS.match(first) and CID_CHARS.match(second)


def test_too_long_id_is_cut_with_a_hash_that_keeps_intents_apart():
    a = client_ids.make_client_order_id("stop", "AAPL", "x" * 60, "1", day=DAY)
    b = client_ids.make_client_order_id("stop", "AAPL", "x" * 60, "2", day=DAY)
    assert len(a) == 48 and len(b) == 48 and a != b
    assert CID_CHARS.match(a)


def test_disallowed_characters_never_reach_the_broker():
    cid = client_ids.make_client_order_id("exit", "BRK/B", "soft exit", day=DAY)
    other = client_ids.make_client_order_id("exit", "BRK_B", "soft_exit", day=DAY)
    assert CID_CHARS.match(cid) and cid != other


@given(kind=st.text(min_size=1, max_size=30), symbol=st.text(min_size=1, max_size=20),
       parts=st.lists(st.text(max_size=20) | st.integers(), max_size=4),
       namespace=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True))
def test_any_intent_gives_a_valid_id_and_the_same_one_every_time(kind, symbol, parts, namespace):
    cid = client_ids.make_client_order_id(kind, symbol, *parts, day=DAY, namespace=namespace)
    assert CID_CHARS.match(cid)
    assert cid == client_ids.make_client_order_id(kind, symbol, *parts, day=DAY, namespace=namespace)


# -- properties ----------------------------------------------------------------------------------

def cents(low: int, high: int):
    return st.integers(low, high).map(lambda c: D(c) / 100)


funds = cents(100_000, 500_000_000) | cents(1, 200_000)
prices_st = st.one_of(
    st.decimals(min_value=D("0.0001"), max_value=D("0.9999"), places=4),  # sub-dollar
    st.decimals(min_value=D("1.00"), max_value=D("700000"), places=2),
)
tickers = st.lists(st.from_regex(r"[A-Z]{1,5}", fullmatch=True), min_size=0, max_size=60)


@st.composite
def scenarios(draw):
    symbols = draw(tickers)
    unique = sorted(set(symbols))
    spec = {s: (draw(prices_st), draw(st.booleans())) for s in unique}
    few = st.sets(st.sampled_from(unique), max_size=3) if unique else st.just(set())
    # A few tickers missing from the broker's lists, held or pending.
    no_asset, no_price, held, pending = draw(few), draw(few), draw(few), draw(few)
    assets = {s: Asset(symbol=s, fractionable=f) for s, (_, f) in spec.items() if s not in no_asset}
    prices = {s: LatestPrice(symbol=s, price=p, source=PriceSource.LAST_TRADE)
              for s, (p, _) in spec.items() if s not in no_price}
    # Mostly funded accounts (so most examples place several orders); sometimes margin, sometimes
    # buying power held by open orders, sometimes a negative cash balance.
    cash = draw(funds | funds | funds | cents(-100_000, 0))
    buying_power = draw(st.just(cash) | funds | st.sampled_from([cash * 2, cash * 4, cash / 3]))
    acct = Account(cash=cash, buying_power=buying_power, equity=D("0"))
    cfg = TraderSettings(
        **SEED_RULE,
        # Percent settings below 0.5 (other than 0) are refused as fractions in disguise (0.05 for 5).
        FL_CASH_BUFFER_PCT=draw(st.just(D(0)) | st.decimals(min_value=D("0.5"), max_value=D("10"), places=3)
                                | st.decimals(min_value=D("0.5"), max_value=D("99.9"), places=1)),
        FL_MIN_ORDER_NOTIONAL=draw(st.sampled_from([D("1"), D("1.5"), D("25")])
                                   | st.decimals(min_value=1, max_value=500, places=2)))
    return [Sig(t) for t in symbols], acct, held, pending, assets, prices, cfg


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_orders_never_spend_more_than_usable_cash_or_break_broker_rules(scenario):
    signals, acct, held, pending, assets, prices, cfg = scenario
    result = plan_entries(signals, acct, held, pending, MarketFacts(assets, prices), cfg, DAY)
    usable = usable_cash(acct, cfg)
    assert usable <= max(D(0), min(acct.cash, acct.buying_power))
    total = sum((o.amount for o in result.orders), D(0))
    assert total <= usable
    symbols = [o.symbol for o in result.orders]
    assert len(symbols) == len(set(symbols))
    assert {o.symbol for o in result.orders}.isdisjoint(held | pending)
    for order in result.orders:
        assert order.amount > 0
        assert order.amount >= cfg.FL_MIN_ORDER_NOTIONAL
        assert order.amount <= order.allocation
        assert order.client_order_id == client_ids.entry_id(DAY, order.symbol)
        if assets[order.symbol].fractionable:
            assert order.kind is EntryKind.NOTIONAL and order.qty is None
            assert order.amount == order.amount.quantize(D("0.01"))
            retry = whole_share_retry(order)
            if retry is not None:
                assert retry.qty == retry.qty.to_integral_value() and retry.qty > 0
                assert retry.amount <= order.amount
        else:
            assert order.kind is EntryKind.QTY
            assert order.qty > 0 and order.qty == order.qty.to_integral_value()
            assert "E" not in str(order.qty)
            assert order.amount == order.qty * order.reference_price
    # Every signal is accounted for: an order or a skip, never both, never lost.
    assert len(result.orders) + len(result.skips) == len(signals)


@settings(max_examples=100, deadline=None)
@given(scenarios())
def test_the_same_inputs_always_give_the_same_plan(scenario):
    signals, acct, held, pending, assets, prices, cfg = scenario
    first = plan_entries(signals, acct, held, pending, MarketFacts(assets, prices), cfg, DAY)
    second = plan_entries(list(signals), acct, set(held), set(pending), MarketFacts(dict(assets), dict(prices)), cfg,
                          DAY)
    assert first == second


@given(namespace=st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True),
       symbol=st.from_regex(r"[A-Z][A-Z0-9.]{0,9}", fullmatch=True))
def test_entry_ids_of_any_namespace_and_ticker_fit_without_being_cut(namespace, symbol):
    cid = client_ids.whole_share_entry_id(DAY, symbol, namespace)
    assert CID_CHARS.match(cid) and "-h" not in cid[-10:]
    assert cid.endswith(f"-20261124-{symbol}-entry-whole")
