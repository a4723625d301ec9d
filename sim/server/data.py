"""The simulator's market-data API (`/v2/stocks/...` quotes, trades, bars, snapshots) and the
corporate-actions feed (`/v1/corporate-actions`), with their page tokens."""

from __future__ import annotations

import base64
import binascii
import logging
from datetime import datetime

from aiohttp import web

from shared.errors import OrderRejected
from shared.market.calendar import NEW_YORK
from sim.engine.rules import reject
from sim.server import wire
from sim.server.common import (
    DEFAULT_BARS_PAGE,
    DEFAULT_CORPORATE_ACTIONS_PAGE,
    MAX_BARS_PAGE,
    MAX_CORPORATE_ACTIONS_PAGE,
    _bad_request,
    _day,
    _dumps,
    _int,
    _json,
    _json_text,
    _list,
    _optional_moment,
    _symbols,
)

log = logging.getLogger(__name__)


class DataRoutes:
    """Alpaca's market-data routes (a `SimServer` part)."""

    # -- market data -----------------------------------------------------------------------------
    async def latest_quotes(self, request: web.Request) -> web.Response:
        quotes = {}
        for symbol in _symbols(request):
            quote = self.engine.latest_quote(symbol)
            if quote is not None:
                quotes[symbol] = wire.quote_json(quote)
        return _json({"quotes": quotes})

    def _trade(self, symbol: str) -> dict | None:
        last = self.engine.latest_trade(symbol)
        if last is None:
            return None
        self._trade_ids += 1
        return wire.trade_json(last[0], last[1], self._trade_ids)

    async def latest_trades(self, request: web.Request) -> web.Response:
        trades = {}
        for symbol in _symbols(request):
            trade = self._trade(symbol)
            if trade is not None:
                trades[symbol] = trade
        return _json({"trades": trades})

    async def latest_bars(self, request: web.Request) -> web.Response:
        bars = {}
        for symbol in _symbols(request):
            bar = self.engine.latest_minute_bar(symbol)
            if bar is not None:
                bars[symbol] = wire.bar_json(bar)
        return _json({"bars": bars})

    async def snapshots(self, request: web.Request) -> web.Response:
        result = {}
        for symbol in _symbols(request):
            quote = self.engine.latest_quote(symbol)
            if quote is None:
                continue
            minute = self.engine.latest_minute_bar(symbol)
            daily, previous = self.engine.daily_bars_now(symbol)
            result[symbol] = {
                "latestTrade": self._trade(symbol),
                "latestQuote": wire.quote_json(quote),
                "minuteBar": wire.bar_json(minute) if minute else None,
                "dailyBar": wire.bar_json(daily) if daily else None,
                "prevDailyBar": wire.bar_json(previous) if previous else None,
            }
        return _json(result)

    async def bars(self, request: web.Request) -> web.Response:
        symbols = sorted(_symbols(request))
        timeframe = request.query.get("timeframe")
        if not timeframe:
            raise _bad_request("timeframe is required")
        now = self.engine.now()
        start = _optional_moment(request, "start")
        if start is None:
            local = now.astimezone(NEW_YORK)
            start = datetime(local.year, local.month, local.day, tzinfo=NEW_YORK)
        end = _optional_moment(request, "end") or now
        limit = _int(request, "limit", DEFAULT_BARS_PAGE, 1, MAX_BARS_PAGE)
        descending = request.query.get("sort", "asc").lower() == "desc"
        resume_symbol, resume_index = _decode_page_token(request.query.get("page_token"))
        page: dict[str, str] = {}  # symbol -> its bars as JSON text
        taken = 0
        next_token = None
        for symbol in symbols:
            if resume_symbol is not None and symbol < resume_symbol:
                continue
            try:
                series = self.engine.bars(symbol, timeframe, start, end)
            except ValueError as exc:
                raise _bad_request(str(exc)) from None
            if descending:
                series.reverse()
            skip = resume_index if symbol == resume_symbol else 0
            chunk = series[skip : skip + (limit - taken)]
            if chunk:
                page[symbol] = "[" + ",".join([wire.bar_text(b) for b in chunk]) + "]"
                taken += len(chunk)
            if skip + len(chunk) < len(series):
                next_token = _encode_page_token(symbol, skip + len(chunk))
                break
            if taken >= limit:
                following = [s for s in symbols if s > symbol]
                if following:
                    next_token = _encode_page_token(following[0], 0)
                break
        # The page written as `_json({"bars": {symbol: [bar_json, ...]}, "next_page_token": ...})` would be.
        bars = ",".join(f"{_dumps(symbol)}:{text}" for symbol, text in page.items())
        return _json_text(f'{{"bars":{{{bars}}},"next_page_token":{_dumps(next_token)}}}')

    async def corporate_actions(self, request: web.Request) -> web.Response:
        """GET /v1/corporate-actions: the announced splits, filtered by `symbols`, `cusips`,
        `types` and ex_date in [start, end] (default: today, New York), or by `ids` alone; paged
        by `limit` and `page_token` like Alpaca's data API."""
        types = [t.lower() for t in _list(request, "types")]
        unknown = [t for t in types if t not in wire.CORPORATE_ACTION_TYPES]
        if unknown:
            raise reject(OrderRejected, 400, 40010001, f"invalid types: {','.join(unknown)}")
        limit = _int(request, "limit", DEFAULT_CORPORATE_ACTIONS_PAGE, 1, MAX_CORPORATE_ACTIONS_PAGE)
        sort = request.query.get("sort", "asc").lower()
        if sort not in ("asc", "desc"):
            raise _bad_request(f"invalid sort: {sort!r}")
        actions = self._corporate_actions_matching(request, types)
        if sort == "desc":
            actions.reverse()
        offset = _decode_offset_token(request.query.get("page_token"))
        page = actions[offset : offset + limit]
        more = offset + limit < len(actions)
        return _json(
            {
                "corporate_actions": wire.corporate_actions_json(page),
                "next_page_token": _encode_page_token("corporate-actions", offset + limit) if more else None,
            }
        )

    def _corporate_actions_matching(self, request: web.Request, types: list[str]) -> list:
        ids = set(_list(request, "ids"))
        if ids:  # Alpaca: ids exclude every other filter
            return [a for a in self.engine.splits() if a.id in ids]
        today = self.engine.now().astimezone(NEW_YORK).date()
        start, end = _day(request, "start", today), _day(request, "end", today)
        if end < start:
            raise reject(OrderRejected, 400, 40010001, "end must not be before start")
        symbols = [s.upper() for s in _list(request, "symbols")]
        cusips = {c.upper() for c in _list(request, "cusips")}
        return [
            a
            for a in self.engine.splits(symbols or None, start, end)
            if (not types or a.type in types) and (not cusips or {a.old_cusip, a.new_cusip} & cusips)
        ]


def _encode_page_token(symbol: str, index: int) -> str:
    return base64.urlsafe_b64encode(f"{symbol}|{index}".encode()).decode()


def _decode_offset_token(token: str | None) -> int:
    """The position a page token (from `_encode_page_token`) resumes at."""
    _, offset = _decode_page_token(token)
    if offset < 0:
        raise _bad_request("invalid page_token")
    return offset


def _decode_page_token(token: str | None) -> tuple[str | None, int]:
    if not token:
        return None, 0
    try:
        symbol, index = base64.urlsafe_b64decode(token.encode()).decode().split("|")
        return symbol, int(index)
    except (ValueError, binascii.Error):
        raise _bad_request("invalid page_token") from None
