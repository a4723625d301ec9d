"""Scanner logs in, signals or typed rejections out: a bad log is never a crash and never a signal."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from shared.config import RankerSettings
from shared.errors import InputError
from shared.ranking import rank
from shared.signals import (
    CSV_COLUMNS,
    Rejection,
    RejectReason,
    ScanState,
    Signal,
    Verdict,
    load_signals_from_redis,
    parse_log,
    parse_log_bytes,
    read_logs,
    read_signals_csv,
    save_signals_to_redis,
    write_signals_csv,
)

NOW = datetime(2026, 11, 24, 11, 0, tzinfo=UTC)  # 06:00 New York
SCANNED = "2026-11-24T01:30:00-05:00"


def scanner_log(ticker: str = "AAPL", state: str = "IN_TRADE", **fields: str | None) -> str:
    """A well-formed log, with `fields` overriding (None drops the line), wrapped in free text."""
    values: dict[str, str | None] = {
        "ticker": ticker, "strategy": "QuickStrike", "status": state, "verdict": "PROFITABLE",
        "win_rate": "63.5%", "trades": "42", "profit_factor": "1.85", "avg_return": "1.2%",
        "signal_date": "2026-11-23", "signal_price": "190.12", "scanned_at": SCANNED,
    }
    values.update(fields)
    body = "\n".join(f"{k}: {v}" for k, v in values.items() if v is not None)
    return f"=== QuickStrike nightly scan ===\nRun started: 01:00 (server time)\n{body}\nDone.\n"


def write_log(folder: Path, ticker: str = "AAPL", state: str = "IN_TRADE", **fields: str | None) -> Path:
    path = folder / f"{state}_live_qs_{ticker}.log"
    path.write_text(scanner_log(ticker, state, **fields), encoding="utf-8")
    return path


def ranker_settings(**overrides) -> RankerSettings:
    return RankerSettings(_env_file=None, **overrides)


def parse_text(name: str, text: str) -> Signal | Rejection:
    return parse_log_bytes(name, text.encode("utf-8"))


# --- a good log -------------------------------------------------------------------------------


def test_well_formed_log_becomes_a_signal_with_fractions_and_decimals():
    signal = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log())
    assert isinstance(signal, Signal)
    assert signal.ticker == "AAPL" and signal.state is ScanState.IN_TRADE and signal.verdict is Verdict.PROFITABLE
    assert signal.win_rate == Decimal("0.635") and signal.avg_return == Decimal("0.012")
    assert signal.profit_factor == Decimal("1.85") and signal.signal_price == Decimal("190.12")
    assert signal.trades == 42 and signal.signal_date == date(2026, 11, 23)
    assert signal.scanned_at == datetime(2026, 11, 24, 6, 30, tzinfo=UTC)
    assert signal.source_file == "IN_TRADE_live_qs_AAPL.log" and signal.black_sheep is False


def test_win_rate_as_a_fraction_means_the_same_as_a_percentage():
    as_percent = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log(win_rate="63.5%"))
    as_fraction = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log(win_rate="0.635"))
    assert as_percent.win_rate == as_fraction.win_rate == Decimal("0.635")


def test_keys_are_case_insensitive_and_surrounding_whitespace_is_ignored():
    text = scanner_log(win_rate=None, trades=None) + "  WIN_RATE   :   70 %  \n\tTrades:12\n"
    signal = parse_text("IN_TRADE_live_qs_AAPL.log", text)
    assert isinstance(signal, Signal)
    assert signal.win_rate == Decimal("0.70") and signal.trades == 12


def test_crlf_line_endings_and_a_utf8_bom_are_accepted():
    raw = b"\xef\xbb\xbf" + scanner_log().replace("\n", "\r\n").encode()
    assert isinstance(parse_log_bytes("IN_TRADE_live_qs_AAPL.log", raw), Signal)


def test_ticker_with_a_share_class_dot_is_accepted():
    signal = parse_text("IN_TRADE_live_qs_BRK.B.log", scanner_log("BRK.B"))
    assert isinstance(signal, Signal) and signal.ticker == "BRK.B"


def test_black_sheep_flag_is_read_from_the_log():
    signal = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log(black_sheep="TRUE"))
    assert signal.black_sheep is True


def test_watching_log_without_an_entry_price_is_still_a_valid_scan():
    signal = parse_text("WATCHING_live_qs_AAPL.log", scanner_log(state="WATCHING", signal_date=None, signal_price=None))
    assert isinstance(signal, Signal) and signal.state is ScanState.WATCHING and signal.signal_price is None


# --- a bad log is a rejection with its reason ---------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"win_rate": None}, RejectReason.MISSING_KEYS),
        ({"signal_price": None}, RejectReason.MISSING_KEYS),  # IN_TRADE needs an entry price
        ({"win_rate": ""}, RejectReason.MISSING_KEYS),
        ({"signal_date": "   "}, RejectReason.MISSING_KEYS),
        ({"ticker": "MSFT"}, RejectReason.TICKER_MISMATCH),
        ({"ticker": "aapl"}, RejectReason.TICKER_MISMATCH),
        ({"status": "WATCHING"}, RejectReason.STATUS_MISMATCH),
        ({"verdict": "GREAT"}, RejectReason.INVALID_VALUE),
        ({"strategy": "=HYPERLINK(1)"}, RejectReason.INVALID_VALUE),
        ({"black_sheep": "maybe"}, RejectReason.INVALID_VALUE),
        ({"win_rate": "135%"}, RejectReason.OUT_OF_RANGE),
        ({"win_rate": "63.5"}, RejectReason.OUT_OF_RANGE),  # a bare number is a fraction: 6350%
        ({"win_rate": "-5%"}, RejectReason.OUT_OF_RANGE),
        ({"trades": "-3"}, RejectReason.OUT_OF_RANGE),
        ({"profit_factor": "-0.5"}, RejectReason.OUT_OF_RANGE),
        ({"avg_return": "-150%"}, RejectReason.OUT_OF_RANGE),
        ({"signal_price": "0"}, RejectReason.OUT_OF_RANGE),
        ({"trades": "12.5"}, RejectReason.INVALID_NUMBER),
        ({"profit_factor": "abc"}, RejectReason.INVALID_NUMBER),
        ({"profit_factor": "inf"}, RejectReason.INVALID_NUMBER),
        ({"profit_factor": "NaN"}, RejectReason.INVALID_NUMBER),
        ({"signal_price": "1e3"}, RejectReason.INVALID_NUMBER),
        ({"signal_price": "$190.12"}, RejectReason.INVALID_NUMBER),
        ({"signal_date": "23/11/2026"}, RejectReason.INVALID_DATE),
        ({"signal_date": "2026-02-30"}, RejectReason.INVALID_DATE),
        ({"scanned_at": "yesterday"}, RejectReason.INVALID_DATE),
        ({"scanned_at": "2026-11-24T01:30:00"}, RejectReason.NAIVE_TIMESTAMP),
    ],
)
def test_bad_value_is_rejected_with_its_specific_reason(fields, reason):
    result = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log(**fields))
    assert isinstance(result, Rejection)
    assert result.reason is reason, result.detail
    assert result.ticker == "AAPL" and result.detail


def test_repeated_key_is_rejected_as_ambiguous_even_with_the_same_value():
    differing = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log() + "win_rate: 80%\n")
    same = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log() + "Win_Rate: 63.5%\n")
    assert differing.reason is same.reason is RejectReason.DUPLICATE_KEY
    assert "win_rate" in differing.detail


def test_unknown_lines_and_free_text_with_colons_are_ignored():
    text = scanner_log() + "note: looked fine\nRSI(14): 28.3\nhttp://example.com/chart\n"
    assert isinstance(parse_text("IN_TRADE_live_qs_AAPL.log", text), Signal)


def test_missing_keys_detail_names_every_missing_key():
    result = parse_text("IN_TRADE_live_qs_AAPL.log", scanner_log(win_rate=None, scanned_at=None))
    assert result.reason is RejectReason.MISSING_KEYS and result.detail == "win_rate, scanned_at"


# --- the hostile folder -------------------------------------------------------------------------


def test_hostile_folder_ranks_the_good_logs_and_lists_every_bad_file_with_its_reason(tmp_path: Path):
    folder = tmp_path / "logs"
    folder.mkdir()
    # good ones
    write_log(folder, "MSFT", win_rate="71%")
    write_log(folder, "AAPL", win_rate="63.5%")
    write_log(folder, "NVDA", win_rate="0.68")
    write_log(folder, "TSLA", "WATCHING")
    # malformed ones
    (folder / "IN_TRADE_live_qs_BIN.log").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    (folder / "IN_TRADE_live_qs_LATIN.log").write_bytes(scanner_log("LATIN", strategy="Caf\xe9").encode("latin-1"))
    (folder / "IN_TRADE_live_qs_EMPTY.log").write_bytes(b"")
    write_log(folder, "NOKEYS", win_rate=None, trades=None)
    (folder / "IN_TRADE_live_qs_WRONG.log").write_text(scanner_log("AMZN"))
    write_log(folder, "OVER", win_rate="135%")
    write_log(folder, "NEGWR", win_rate="-2%")
    write_log(folder, "NEGTR", trades="-7")
    write_log(folder, "DUP", verdict="PROFITABLE\nverdict: UNPROFITABLE")
    write_log(folder, "NUM", profit_factor="1,85")
    write_log(folder, "DATE", scanned_at="24/11/2026 01:30")
    write_log(folder, "NAIVE", scanned_at="2026-11-24T01:30:00")
    write_log(folder, "STAT", status="EXITED")
    with open(folder / "IN_TRADE_live_qs_HUGE.log", "wb") as huge:  # 50 MB, sparse: cheap to make
        huge.write(scanner_log("HUGE").encode())
        huge.truncate(50 * 1024 * 1024)
    (folder / "IN_TRADE_live_qs_ADIR.log").mkdir()
    os.mkfifo(folder / "IN_TRADE_live_qs_PIPE.log")  # opening a FIFO for reading would hang
    # The kernel refuses to read this one even for root (a write-only sysctl).
    (folder / "IN_TRADE_live_qs_LOCKED.log").symlink_to("/proc/sys/vm/drop_caches")
    (folder / "IN_TRADE_live_qs_LOOPA.log").symlink_to(folder / "IN_TRADE_live_qs_LOOPB.log")
    (folder / "IN_TRADE_live_qs_LOOPB.log").symlink_to(folder / "IN_TRADE_live_qs_LOOPA.log")
    (folder / "IN_TRADE_live_qs_GONE.log").symlink_to(folder / "nowhere.log")
    (folder / "scanner.log").write_text("scanner run log\n")
    (folder / "in_trade_live_qs_aapl.log").write_text(scanner_log())
    (folder / "IN_TRADE_live_qs_AAPL.LOG").write_text(scanner_log())
    # not logs at all: ignored silently
    (folder / "README.txt").write_text("not a log")
    (folder / "IN_TRADE_live_qs_AAPL.log.bak").write_text(scanner_log())
    (folder / "sub").mkdir()
    write_log(folder / "sub", "SUBDIR")

    result = rank(read_logs(folder, ranker_settings()), ranker_settings(), NOW)

    assert [s.ticker for s in result.kept] == ["MSFT", "NVDA", "AAPL"]
    assert [s.rank for s in result.kept] == [1, 2, 3]
    assert {r.source_file: r.reason for r in result.rejected} == {
        "WATCHING_live_qs_TSLA.log": RejectReason.NOT_IN_TRADE,
        "IN_TRADE_live_qs_BIN.log": RejectReason.BINARY,
        "IN_TRADE_live_qs_LATIN.log": RejectReason.NOT_UTF8,
        "IN_TRADE_live_qs_EMPTY.log": RejectReason.EMPTY,
        "IN_TRADE_live_qs_NOKEYS.log": RejectReason.MISSING_KEYS,
        "IN_TRADE_live_qs_WRONG.log": RejectReason.TICKER_MISMATCH,
        "IN_TRADE_live_qs_OVER.log": RejectReason.OUT_OF_RANGE,
        "IN_TRADE_live_qs_NEGWR.log": RejectReason.OUT_OF_RANGE,
        "IN_TRADE_live_qs_NEGTR.log": RejectReason.OUT_OF_RANGE,
        "IN_TRADE_live_qs_DUP.log": RejectReason.DUPLICATE_KEY,
        "IN_TRADE_live_qs_NUM.log": RejectReason.INVALID_NUMBER,
        "IN_TRADE_live_qs_DATE.log": RejectReason.INVALID_DATE,
        "IN_TRADE_live_qs_NAIVE.log": RejectReason.NAIVE_TIMESTAMP,
        "IN_TRADE_live_qs_STAT.log": RejectReason.STATUS_MISMATCH,
        "IN_TRADE_live_qs_HUGE.log": RejectReason.TOO_LARGE,
        "IN_TRADE_live_qs_ADIR.log": RejectReason.NOT_A_FILE,
        "IN_TRADE_live_qs_PIPE.log": RejectReason.NOT_A_FILE,
        "IN_TRADE_live_qs_LOCKED.log": RejectReason.UNREADABLE,
        "IN_TRADE_live_qs_LOOPA.log": RejectReason.UNREADABLE,
        "IN_TRADE_live_qs_LOOPB.log": RejectReason.UNREADABLE,
        "IN_TRADE_live_qs_GONE.log": RejectReason.UNREADABLE,
        "scanner.log": RejectReason.BAD_FILE_NAME,
        "in_trade_live_qs_aapl.log": RejectReason.BAD_FILE_NAME,
        "IN_TRADE_live_qs_AAPL.LOG": RejectReason.BAD_FILE_NAME,
    }
    details = {r.source_file: r.detail for r in result.rejected}
    assert details["IN_TRADE_live_qs_LOOPA.log"] == "symlink loop"
    assert details["IN_TRADE_live_qs_LOCKED.log"] == "permission denied"
    assert details["IN_TRADE_live_qs_ADIR.log"] == "a directory"
    assert details["IN_TRADE_live_qs_HUGE.log"] == "52428800 bytes > FL_MAX_LOG_BYTES=1000000"


def test_log_without_read_permission_is_rejected_as_unreadable():
    # Root reads any file, so the parse runs in a child process that has become the user `nobody`.
    work = Path(tempfile.mkdtemp(prefix="fl-ranker-perm-"))
    try:
        work.chmod(0o755)
        locked = write_log(work, "LOCKED")
        locked.chmod(0o000)
        reader, writer = os.pipe()
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the child
            try:
                os.close(reader)
                if os.geteuid() == 0:
                    os.setgroups([])
                    os.setgid(65534)
                    os.setuid(65534)
                result = parse_log(locked, ranker_settings())
                answer = f"{result.reason.value}|{result.detail}" if isinstance(result, Rejection) else "signal"
                os.write(writer, answer.encode())
            finally:
                os._exit(0)
        os.close(writer)
        with os.fdopen(reader, "rb") as pipe:
            answer = pipe.read().decode()
        os.waitpid(child, 0)
        assert answer == "unreadable|permission denied"
    finally:
        shutil.rmtree(work)


def test_symlink_to_a_good_log_elsewhere_is_read(tmp_path: Path):
    elsewhere = write_log(tmp_path, "AAPL")
    folder = tmp_path / "logs"
    folder.mkdir()
    (folder / elsewhere.name).symlink_to(elsewhere)
    [signal] = read_logs(folder, ranker_settings())
    assert isinstance(signal, Signal) and signal.ticker == "AAPL"


def test_file_just_over_the_size_limit_is_rejected_unread(tmp_path: Path):
    settings = ranker_settings(FL_MAX_LOG_BYTES=2048)
    path = write_log(tmp_path, "AAPL", strategy="QuickStrike")
    with open(path, "a") as log_file:
        log_file.write("x" * (2049 - path.stat().st_size))
    assert parse_log(path, settings).reason is RejectReason.TOO_LARGE
    path.write_text(scanner_log())
    assert isinstance(parse_log(path, settings), Signal)


def test_missing_logs_folder_is_an_input_error_naming_it(tmp_path: Path):
    with pytest.raises(InputError, match="signals folder not found: .*nope"):
        read_logs(tmp_path / "nope", ranker_settings())


def test_logs_folder_that_is_a_file_is_an_input_error(tmp_path: Path):
    (tmp_path / "logs").write_text("")
    with pytest.raises(InputError, match="not a folder"):
        read_logs(tmp_path / "logs", ranker_settings())


# --- the parser never raises --------------------------------------------------------------------

_KEYS = ["ticker", "strategy", "status", "verdict", "win_rate", "trades", "profit_factor", "avg_return",
         "signal_date", "signal_price", "scanned_at", "black_sheep", "Win_Rate", "note"]


@hsettings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=4096))
def test_parser_never_raises_on_arbitrary_bytes(raw):
    result = parse_log_bytes("IN_TRADE_live_qs_AAPL.log", raw)
    assert isinstance(result, Signal | Rejection)


@hsettings(max_examples=400, deadline=None)
@given(
    lines=st.lists(st.tuples(st.sampled_from(_KEYS), st.text(max_size=40)), max_size=16),
    name=st.sampled_from(["IN_TRADE_live_qs_AAPL.log", "WATCHING_live_qs_AAPL.log", "x.log"]) | st.text(max_size=30),
)
def test_parser_never_raises_on_arbitrary_key_value_lines(lines, name):
    text = scanner_log() if not lines else "\n".join(f"{k}: {v}" for k, v in lines)
    result = parse_log_bytes(name, text.encode("utf-8", "surrogatepass"))
    assert isinstance(result, Signal | Rejection)
    if isinstance(result, Signal):  # whatever got through obeys the model's own rules
        assert 0 <= result.win_rate <= 1 and result.trades >= 0 and result.scanned_at.utcoffset() is not None


@hsettings(max_examples=300, deadline=None)
@given(key=st.sampled_from(_KEYS[:12]), value=st.text(max_size=40))
def test_any_value_for_one_key_gives_a_signal_or_a_rejection(key, value):
    text = scanner_log(**{key: None}) + f"{key}: {value}\n"
    assert isinstance(parse_log_bytes("IN_TRADE_live_qs_AAPL.log", text.encode("utf-8", "surrogatepass")),
                      Signal | Rejection)


# --- the JSON form ------------------------------------------------------------------------------


def _signal(ticker: str = "AAPL", **fields) -> Signal:
    return Signal(**{
        "ticker": ticker, "strategy": "QuickStrike", "state": "IN_TRADE", "verdict": "PROFITABLE",
        "win_rate": Decimal("0.635"), "trades": 42, "profit_factor": Decimal("1.85"),
        "avg_return": Decimal("0.012"), "signal_date": date(2026, 11, 23), "signal_price": Decimal("190.12"),
        "scanned_at": NOW - timedelta(hours=4), "source_file": f"IN_TRADE_live_qs_{ticker}.log", **fields,
    })


def test_signal_json_keeps_decimals_as_strings_and_round_trips():
    signal = _signal(rank=1)
    payload = json.loads(signal.model_dump_json())
    assert payload["win_rate"] == "0.635" and payload["signal_price"] == "190.12" and payload["schema_version"] == 1
    assert Signal.model_validate_json(signal.model_dump_json()) == signal


def test_signal_json_from_a_newer_writer_with_unknown_fields_is_accepted():
    payload = json.loads(_signal().model_dump_json())
    payload.update(schema_version=2, conviction="high")
    assert Signal.model_validate(payload).ticker == "AAPL"


def test_signal_json_from_an_older_writer_without_optional_fields_is_accepted():
    payload = json.loads(_signal().model_dump_json())
    for optional in ("schema_version", "black_sheep", "source_file", "rank"):
        del payload[optional]
    assert Signal.model_validate(payload).win_rate == Decimal("0.635")


def test_signal_json_with_a_naive_scan_time_is_refused():
    payload = json.loads(_signal().model_dump_json())
    payload["scanned_at"] = "2026-11-24T01:30:00"
    with pytest.raises(ValueError, match="timezone-aware"):
        Signal.model_validate(payload)


# --- actionable_signals.csv ---------------------------------------------------------------------


def test_csv_round_trip_gives_back_the_ranked_signals(tmp_path: Path):
    ranked = [_signal("MSFT", rank=1, win_rate=Decimal("0.71")), _signal("AAPL", rank=2)]
    path = tmp_path / "actionable_signals.csv"
    write_signals_csv(path, ranked)
    assert read_signals_csv(path) == ranked


def test_csv_has_the_documented_columns_and_win_rate_with_four_decimals(tmp_path: Path):
    path = tmp_path / "actionable_signals.csv"
    write_signals_csv(path, [_signal("AAPL", rank=1, win_rate=Decimal("0.63456"))])
    header, row = path.read_text().splitlines()
    assert header == ",".join(CSV_COLUMNS) == (
        "rank,ticker,strategy,win_rate,profit_factor,trades,avg_return,signal_date,signal_price,scanned_at,source_file")
    assert row == ("1,AAPL,QuickStrike,0.6346,1.85,42,0.012,2026-11-23,190.12,2026-11-24T07:00:00+00:00,"
                   "IN_TRADE_live_qs_AAPL.log")


def test_csv_rewrite_replaces_the_old_file_and_leaves_no_temp_file(tmp_path: Path):
    path = tmp_path / "actionable_signals.csv"
    write_signals_csv(path, [_signal("AAPL", rank=1)])
    write_signals_csv(path, [])
    assert read_signals_csv(path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["actionable_signals.csv"]


def test_csv_into_a_missing_folder_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        write_signals_csv(tmp_path / "nope" / "out.csv", [])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda row: row.replace("0.6350", "1.6350"), r"line 3: win_rate: .*less than or equal to 1"),
        (lambda row: row.replace("190.12", "cheap"), r"line 3: signal_price: "),
        (lambda row: row.replace("+00:00", ""), r"line 3: scanned_at: .*timezone-aware"),
        (lambda row: row + ",extra", r"line 3: wrong number of fields"),
        (lambda row: row.replace("AAPL,", "aapl,", 1), r"line 3: ticker: "),
    ],
)
def test_csv_bad_row_is_an_input_error_naming_its_line(tmp_path: Path, corrupt, message):
    path = tmp_path / "actionable_signals.csv"
    write_signals_csv(path, [_signal("MSFT", rank=1, win_rate=Decimal("0.7")), _signal("AAPL", rank=2)])
    header, first, second = path.read_text().splitlines()
    path.write_text("\n".join([header, first, corrupt(second)]) + "\n")
    with pytest.raises(InputError, match=message):
        read_signals_csv(path)


def test_csv_without_a_required_column_is_an_input_error(tmp_path: Path):
    path = tmp_path / "actionable_signals.csv"
    path.write_text("rank,ticker\n1,AAPL\n")
    with pytest.raises(InputError, match="line 1: missing columns strategy, win_rate"):
        read_signals_csv(path)


def test_missing_csv_is_an_input_error(tmp_path: Path):
    with pytest.raises(InputError, match="signals file not found"):
        read_signals_csv(tmp_path / "actionable_signals.csv")


# --- Redis --------------------------------------------------------------------------------------


def test_ranked_list_saved_to_redis_loads_back_equal_and_expires(redis_client, keys):
    ranked = [_signal("MSFT", rank=1, win_rate=Decimal("0.71")), _signal("AAPL", rank=2)]
    key = save_signals_to_redis(redis_client, keys, date(2026, 11, 24), ranked)
    assert key == keys.signals(date(2026, 11, 24))
    assert load_signals_from_redis(redis_client, keys, date(2026, 11, 24)) == ranked
    assert 0 < redis_client.ttl(key) <= 4 * 24 * 3600


def test_day_never_ranked_loads_as_none_and_an_empty_ranking_as_an_empty_list(redis_client, keys):
    assert load_signals_from_redis(redis_client, keys, date(2026, 11, 24)) is None
    save_signals_to_redis(redis_client, keys, date(2026, 11, 24), [])
    assert load_signals_from_redis(redis_client, keys, date(2026, 11, 24)) == []


def test_corrupt_redis_list_is_an_input_error_naming_the_key(redis_client, keys):
    redis_client.set(keys.signals(date(2026, 11, 24)), json.dumps([{"ticker": "AAPL"}]))
    with pytest.raises(InputError, match=f"Redis key {keys.signals(date(2026, 11, 24))}"):
        load_signals_from_redis(redis_client, keys, date(2026, 11, 24))
