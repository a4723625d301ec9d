"""The simulated market's tradable symbols: `SimAsset`s with Alpaca's asset facts.

The default universe is 24 real tickers with plausible prices, including two assets Alpaca would
not let you trade fractionally (FUBO, SENS) and two priced under $1 (SENS, TELL), so the fractional
rules and the sub-dollar price increment are exercised. A larger universe (the scanner benchmark
asks for 500 tickers) adds synthetic tickers `XAAA`, `XAAB`, ... generated deterministically.
Replaying a bars CSV makes the CSV's symbols the universe instead.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from functools import cached_property

#: Stable asset ids: the same symbol has the same id in every run (uuid5 under this namespace).
_ASSET_NAMESPACE = uuid.UUID("5b0a5b52-6d3c-4c57-9c4d-0f6c1ad9e7a1")


@dataclass
class SimAsset:
    symbol: str
    name: str
    exchange: str
    #: What order checks enforce (Alpaca refuses fractional/notional orders when False).
    fractionable: bool
    #: Price on the start session's close, in dollars (the seeded path is anchored there).
    base_price: float
    #: Daily volatility of the seeded price path (0.02 = 2% a day).
    daily_volatility: float = 0.02
    #: Typical daily volume in shares.
    daily_volume: int = 5_000_000
    tradable: bool = True
    shortable: bool = True
    marginable: bool = True
    easy_to_borrow: bool = True
    #: What GET /v2/assets says about fractionability; None = the same as `fractionable`. A control
    #: can make the two disagree, to test code that trusts the asset list but meets the refusal.
    listed_fractionable: bool | None = None

    @cached_property
    def asset_id(self) -> str:
        # Derived from the symbol, which never changes: computed once (it is read on every order).
        return str(uuid.uuid5(_ASSET_NAMESPACE, self.symbol))

    @property
    def advertised_fractionable(self) -> bool:
        return self.fractionable if self.listed_fractionable is None else self.listed_fractionable


# symbol, name, exchange, fractionable, price, daily volatility, daily volume
_DEFAULT: tuple[tuple[str, str, str, bool, float, float, int], ...] = (
    ("AAPL", "Apple Inc. Common Stock", "NASDAQ", True, 190.0, 0.015, 55_000_000),
    ("MSFT", "Microsoft Corporation Common Stock", "NASDAQ", True, 410.0, 0.014, 22_000_000),
    ("NVDA", "NVIDIA Corporation Common Stock", "NASDAQ", True, 120.0, 0.030, 300_000_000),
    ("AMZN", "Amazon.com, Inc. Common Stock", "NASDAQ", True, 180.0, 0.019, 45_000_000),
    ("GOOGL", "Alphabet Inc. Class A Common Stock", "NASDAQ", True, 170.0, 0.018, 28_000_000),
    ("META", "Meta Platforms, Inc. Class A Common Stock", "NASDAQ", True, 500.0, 0.022, 15_000_000),
    ("TSLA", "Tesla, Inc. Common Stock", "NASDAQ", True, 240.0, 0.035, 95_000_000),
    ("AMD", "Advanced Micro Devices, Inc. Common Stock", "NASDAQ", True, 160.0, 0.028, 50_000_000),
    ("NFLX", "Netflix, Inc. Common Stock", "NASDAQ", True, 620.0, 0.021, 4_000_000),
    ("INTC", "Intel Corporation Common Stock", "NASDAQ", True, 31.0, 0.024, 40_000_000),
    ("JPM", "JPMorgan Chase & Co. Common Stock", "NYSE", True, 200.0, 0.012, 9_000_000),
    ("BAC", "Bank of America Corporation Common Stock", "NYSE", True, 38.0, 0.015, 35_000_000),
    ("XOM", "Exxon Mobil Corporation Common Stock", "NYSE", True, 115.0, 0.014, 16_000_000),
    ("JNJ", "Johnson & Johnson Common Stock", "NYSE", True, 155.0, 0.010, 7_000_000),
    ("PG", "Procter & Gamble Company (The) Common Stock", "NYSE", True, 165.0, 0.009, 6_500_000),
    ("KO", "Coca-Cola Company (The) Common Stock", "NYSE", True, 62.0, 0.009, 13_000_000),
    ("PFE", "Pfizer, Inc. Common Stock", "NYSE", True, 29.0, 0.016, 30_000_000),
    ("DIS", "Walt Disney Company (The) Common Stock", "NYSE", True, 95.0, 0.017, 9_000_000),
    ("F", "Ford Motor Company Common Stock", "NYSE", True, 12.0, 0.022, 50_000_000),
    ("T", "AT&T Inc. Common Stock", "NYSE", True, 18.0, 0.012, 30_000_000),
    ("PLTR", "Palantir Technologies Inc. Class A Common Stock", "NASDAQ", True, 25.0, 0.040, 60_000_000),
    ("SOFI", "SoFi Technologies, Inc. Common Stock", "NASDAQ", True, 8.0, 0.035, 40_000_000),
    # Not fractionable on Alpaca-like terms: whole shares only.
    ("FUBO", "fuboTV Inc. Common Stock", "NYSE", False, 2.5, 0.050, 12_000_000),
    ("SENS", "Senseonics Holdings, Inc. Common Stock", "AMEX", False, 0.45, 0.055, 8_000_000),
    # Under $1: prices quoted to 4 decimals.
    ("TELL", "Tellurian Inc. Common Stock", "AMEX", True, 0.62, 0.050, 15_000_000),
)

DEFAULT_SYMBOLS: tuple[str, ...] = tuple(row[0] for row in _DEFAULT)


def default_assets() -> list[SimAsset]:
    return [
        SimAsset(
            symbol=s, name=n, exchange=x, fractionable=f, base_price=p, daily_volatility=v, daily_volume=vol
        )
        for s, n, x, f, p, v, vol in _DEFAULT
    ]


def synthetic_symbol(index: int) -> str:
    """`XAAA`, `XAAB`, ... : 17,576 four-letter tickers that no default ticker uses."""
    letters = []
    for _ in range(3):
        index, rest = divmod(index, 26)
        letters.append(chr(ord("A") + rest))
    if index:
        raise ValueError("too many synthetic tickers (at most 17,576)")
    return "X" + "".join(reversed(letters))


def synthetic_asset(index: int, seed: int) -> SimAsset:
    """A made-up listed stock; its facts depend only on the index and the seed."""
    symbol = synthetic_symbol(index)
    rng = random.Random(f"asset|{seed}|{symbol}")
    price = round(10 ** rng.uniform(0.3, 2.7), 2)  # about $2 to $500
    return SimAsset(
        symbol=symbol,
        name=f"{symbol} Synthetic Holdings Inc. Common Stock",
        exchange=rng.choice(("NASDAQ", "NYSE", "ARCA")),
        # One in ten synthetic tickers is whole-share only, as small caps often are.
        fractionable=rng.random() >= 0.1,
        base_price=price,
        daily_volatility=rng.uniform(0.01, 0.05),
        daily_volume=int(10 ** rng.uniform(5.5, 7.5)),
    )


def build_universe(size: int | None, seed: int) -> list[SimAsset]:
    """The default tickers, cut to `size` or padded with synthetic tickers up to it."""
    assets = default_assets()
    if size is None:
        return assets
    if size < 1:
        raise ValueError("the universe needs at least one symbol")
    if size <= len(assets):
        return assets[:size]
    return assets + [synthetic_asset(i, seed) for i in range(size - len(assets))]
