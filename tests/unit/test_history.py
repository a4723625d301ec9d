"""Daily history sources (shared.history): the CSV format of docs/data.md, its one-line errors, the
splits read from an adjusted close, and split adjustment."""

from __future__ import annotations

import os
from datetime import date
from decimal import Decimal as D

import pytest

from shared.errors import InputError
from shared.history import History, daily_bar_time, load, split_adjusted, splits_from_adjusted_close
from shared.market.calendar import NEW_YORK
from shared.models import Bar

LONG = """\
# adjusted: no
symbol,date,open,high,low,close,volume,split
AAPL,2005-02-24,88.48,89.31,87.73,88.99,28000000,
AAPL,2005-02-25,89.62,89.91,88.19,88.99,26000000,
AAPL,2005-02-28,44.68,45.14,43.96,44.86,50000000,2:1
AAPL,2005-03-01,44.99,45.11,44.16,44.50,46000000,
MSFT,2005-02-24,25.24,25.35,25.06,25.25,60000000,
MSFT,2005-02-25,25.20,25.32,25.11,25.27,58000000,
"""


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_a_long_file_gives_each_symbol_its_daily_bars_oldest_first(tmp_path):
    history = load(f"csv:{write(tmp_path / 'prices.csv', LONG)}")
    assert history.symbols == ("AAPL", "MSFT")
    aapl = history.bars["AAPL"]
    assert [b.t.date() for b in aapl] == [date(2005, 2, 24), date(2005, 2, 25), date(2005, 2, 28), date(2005, 3, 1)]
    first = aapl[0]
    assert (first.o, first.h, first.l, first.c, first.v) == (D("88.48"), D("89.31"), D("87.73"), D("88.99"), D(28000000))
    # Alpaca's stamp for a daily bar: midnight New York time of the session's date.
    assert first.t == daily_bar_time(date(2005, 2, 24)) and first.t.tzinfo is NEW_YORK
    assert history.adjusted is False
    assert history.splits == {"AAPL": ((date(2005, 2, 28), D(2)),)}
    assert "unadjusted" in history.source


def test_a_folder_of_symbol_files_is_one_history_and_rows_may_come_in_any_order(tmp_path):
    write(tmp_path / "ibm.csv", "# adjusted: yes\nDate,Open,High,Low,Close\n"
          "2010-01-05,130,131,129,130.5\n2010-01-04,129,130,128,129.5\n")
    write(tmp_path / "MSFT.csv", "\ufeff# adjusted: yes\ndate,open,high,low,close,volume\n2010-01-04,30,31,29.5,30.9,100\n")
    write(tmp_path / "notes.txt", "not a price file")
    history = load(f"csv:{tmp_path}")
    assert history.symbols == ("IBM", "MSFT")
    assert [b.c for b in history.bars["IBM"]] == [D("129.5"), D("130.5")]
    assert history.adjusted is True and history.splits == {}


def test_start_end_and_symbols_cut_the_history_and_keep_only_the_splits_inside(tmp_path):
    path = write(tmp_path / "prices.csv", LONG)
    cut = load(f"csv:{path}", start=date(2005, 2, 25), end=date(2005, 2, 28), symbols=["aapl"])
    assert cut.symbols == ("AAPL",)
    assert [b.t.date() for b in cut.bars["AAPL"]] == [date(2005, 2, 25), date(2005, 2, 28)]
    assert cut.splits["AAPL"] == ((date(2005, 2, 28), D(2)),)
    # A split on the first bar kept changes nothing inside the cut: it is not listed.
    after = load(f"csv:{path}", start=date(2005, 2, 28), symbols=["AAPL"])
    assert after.splits == {}


def test_split_adjusted_divides_earlier_prices_and_multiplies_their_volume(tmp_path):
    history = load(f"csv:{write(tmp_path / 'prices.csv', LONG)}")
    adjusted = split_adjusted(history)
    assert adjusted.adjusted is True and adjusted.splits == {}
    before = adjusted.bars["AAPL"][1]
    assert (before.o, before.h, before.l, before.c, before.v) == (D("44.81"), D("44.96"), D("44.10"), D("44.50"), D(52000000))
    # From the split day on nothing changes, nor does a symbol without splits.
    assert adjusted.bars["AAPL"][2:] == history.bars["AAPL"][2:]
    assert adjusted.bars["MSFT"] == history.bars["MSFT"]
    # The adjusted series no longer shows the 2:1 gap.
    assert abs(adjusted.bars["AAPL"][2].o / adjusted.bars["AAPL"][1].c - 1) < D("0.01")
    assert split_adjusted(adjusted) is adjusted


def test_several_splits_compound_back_in_time():
    bars = tuple(
        Bar(t=daily_bar_time(d), o=D(p), h=D(p), l=D(p), c=D(p), v=D(10))
        for d, p in ((date(2020, 1, 2), "90"), (date(2020, 1, 3), "30"), (date(2020, 1, 6), "20"))
    )
    raw = History(bars={"X": bars}, adjusted=False,
                  splits={"X": ((date(2020, 1, 3), D(3)), (date(2020, 1, 6), D("1.5")))}, source="test")
    out = split_adjusted(raw).bars["X"]
    assert [b.c for b in out] == [D("20.00"), D("20.00"), D("20")]
    assert [b.v for b in out] == [D("45.0"), D("15.0"), D(10)]


def test_splits_are_read_from_the_jumps_of_close_over_adjusted_close():
    days = [date(2005, 2, d) for d in (23, 24, 25, 28)]
    opens = [D("86"), D("88.48"), D("89.62"), D("44.68")]
    closes = [D("88.23"), D("88.99"), D("88.99"), D("44.86")]
    # The adjusted close divides by 2 before the split and also carries a dividend's small step.
    adjusted = [D("44.115") * D("0.99"), D("44.495") * D("0.99"), D("44.495"), D("44.86")]
    assert splits_from_adjusted_close(days, opens, closes, adjusted) == ((date(2005, 2, 28), D(2)),)


def test_a_dividend_or_an_adjusted_close_error_without_a_price_gap_is_no_split():
    days = [date(2004, 11, 12), date(2004, 11, 15)]
    # Microsoft's $3 special dividend: the ratio moves by about 11%, no split.
    assert splits_from_adjusted_close(days, [D("29.9")] * 2, [D("29.97"), D("27.39")], [D("20"), D("20.3")]) == ()
    # The ratio halves but the prices do not: a data error in the adjusted close, not a split.
    assert splits_from_adjusted_close(days, [D("30")] * 2, [D("30"), D("30")], [D("15"), D("30")]) == ()


def test_a_reverse_split_is_a_ratio_below_one():
    days = [date(2010, 5, 3), date(2010, 5, 4)]
    found = splits_from_adjusted_close(days, [D("1"), D("4.1")], [D("1.02"), D("4")], [D("4.08"), D("4")])
    assert found == ((date(2010, 5, 4), D("0.25")),)


@pytest.mark.parametrize("text, message", [
    ("symbol,date,open,high,low,close\n", "add a line '# adjusted: yes' or '# adjusted: no'"),
    ("# adjusted: maybe\nsymbol,date,open,high,low,close\n", ":1: '# adjusted:' must be yes or no"),
    ("# adjusted: no\nsymbol,open,high,low,close\n", ":2: the header needs symbol,date,open,high,low,close (missing date)"),
    ("# adjusted: no\n", "no header line"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\n", "a header but no bars"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-30,1,2,1,2\n", ":3: the date '2005-02-30' is not YYYY-MM-DD"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28,1,2,1\n", ":3: 5 fields, the header has 6"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\n\nAAPL,2005-02-28,1,x,1,2\n", ":4: high 'x' is not a positive price"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28,1,2,-1,2\n", ":3: low '-1' is not a positive price"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28,3,2,1,2\n", ":3: impossible bar: open 3 high 2"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\n=cmd,2005-02-28,1,2,1,2\n", ":3: '=cmd' is not a ticker"),
    ("# adjusted: no\nsymbol,date,open,high,low,close,volume\nAAPL,2005-02-28,1,2,1,2,lots\n", ":3: volume 'lots' is not"),
    ("# adjusted: no\nsymbol,date,open,high,low,close,volume\nAAPL,2005-02-28,1,2,1,2,-5\n", ":3: volume '-5' is not"),
    ("# adjusted: no\nsymbol,date,open,high,low,close,volume\nAAPL,2005-02-28,1,2,1,2,NaN\n", ":3: volume 'NaN' is not"),
    ("# adjusted: no\nsymbol,date,open,high,low,close,split\nAAPL,2005-02-28,1,2,1,2,two\n", ":3: split 'two' is not a ratio"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28,1,2,1,2\nAAPL,2005-02-28,1,2,1,2\n",
     ":4: a second AAPL bar for 2005-02-28 (the first is on line 3)"),
    ("# adjusted: yes\nsymbol,date,open,high,low,close,split\nAAPL,2005-02-28,1,2,1,2,\n", "already in its prices"),
    ("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28T10:00:00,1,2,1,2\n", ":3: the time '2005-02-28T10:00:00' needs a zone"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_line(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(InputError) as caught:
        load(f"csv:{path}")
    assert message in str(caught.value)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_long_file_without_a_symbol_column_must_be_named_after_its_ticker(tmp_path):
    text = "# adjusted: no\ndate,open,high,low,close\n2005-02-28,1,2,1,2\n"
    with pytest.raises(InputError, match=r"my prices.csv:2: the header needs symbol,.*\(missing symbol\)"):
        load(f"csv:{write(tmp_path / 'my prices.csv', text)}")
    assert load(f"csv:{write(tmp_path / 'ibm.csv', text)}").symbols == ("IBM",)


def test_a_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("# adjusted: no\nsymbol,date,open,high,low,close\nAAPL,2005-02-28,1,2,1,2 \xe9\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        load(f"csv:{path}")


def test_only_regular_files_are_read(tmp_path):
    fifo = tmp_path / "AAPL.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="must be a regular file; this is a FIFO"):
        load(f"csv:{fifo}")
    with pytest.raises(InputError, match="must be a regular file; this is a FIFO"):
        load(f"csv:{tmp_path}")  # a folder's SYMBOL.csv is checked the same way


def test_an_oversized_file_is_refused_unread(tmp_path, monkeypatch):
    import shared.history as history

    monkeypatch.setattr(history, "MAX_HISTORY_CSV_BYTES", 100)
    path = write(tmp_path / "big.csv", LONG)
    with pytest.raises(InputError, match="over its 100 bytes limit"):
        load(f"csv:{path}")


def test_folder_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="has no SYMBOL.csv file"):
        load(f"csv:{tmp_path}")
    write(tmp_path / "A.csv", "# adjusted: yes\ndate,open,high,low,close\n2010-01-04,1,2,1,2\n")
    write(tmp_path / "B.csv", "# adjusted: no\ndate,open,high,low,close\n2010-01-04,1,2,1,2\n")
    with pytest.raises(InputError, match="the files disagree: adjusted: yes in A.csv, adjusted: no in B.csv"):
        load(f"csv:{tmp_path}")
    write(tmp_path / "B.csv", "# adjusted: yes\nsymbol,date,open,high,low,close\nA,2010-01-04,1,2,1,2\n")
    with pytest.raises(InputError, match=r"B.csv:3: symbol A in the file of B"):
        load(f"csv:{tmp_path}")
    write(tmp_path / "B.csv", "# adjusted: yes\ndate,open,high,low,close\n2010-01-04,1,2,1,2\n")
    write(tmp_path / "bad name.csv", "# adjusted: yes\ndate,open,high,low,close\n2010-01-04,1,2,1,2\n")
    with pytest.raises(InputError, match="the file name must be a ticker"):
        load(f"csv:{tmp_path}")


@pytest.mark.parametrize("source, message", [
    ("yahoo", "unknown history source 'yahoo': use csv:PATH"),
    ("csv:", "needs a path"),
    ("csv:/nonexistent/prices.csv", "history CSV not found: /nonexistent/prices.csv"),
])
def test_a_bad_source_is_one_line(source, message):
    with pytest.raises(InputError, match=message):
        load(source)


def test_asking_for_a_symbol_or_span_the_source_lacks_is_one_line(tmp_path):
    path = write(tmp_path / "prices.csv", LONG)
    with pytest.raises(InputError, match=r"no data for IBM \(it has AAPL, MSFT\)"):
        load(f"csv:{path}", symbols=["IBM"])
    with pytest.raises(InputError, match="no bars from 2010-01-01 to the end"):
        load(f"csv:{path}", start=date(2010, 1, 1))
    with pytest.raises(InputError, match="is before the start"):
        load(f"csv:{path}", start=date(2010, 1, 2), end=date(2010, 1, 1))


def test_the_broker_source_needs_the_symbols():
    with pytest.raises(InputError, match="needs the symbols"):
        load("broker")


def test_an_adj_close_column_gives_the_splits_of_an_unadjusted_file(tmp_path):
    path = write(tmp_path / "AAPL.csv", """\
# adjusted: no
date,open,high,low,close,volume,adj_close
2005-02-25,89.62,89.91,88.19,88.99,26000000,44.495
2005-02-28,44.68,45.14,43.96,44.86,50000000,44.86
""")
    assert load(f"csv:{path}").splits == {"AAPL": ((date(2005, 2, 28), D(2)),)}
