"""The daily report as one self-contained HTML page: inline CSS, an inline SVG equity curve and the day's
P/L by position as SVG bars. No script, no external asset: it opens from a file, an e-mail or an archive.

Every figure a test (or a person's tooling) may check carries its exact value in a `data-value`
attribute beside the formatted text, e.g. `<span id="equity" data-value="100123.45">$100,123.45</span>`.
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from html import escape

from services.reporter.render_text import (
    armed_text,
    money,
    percent,
    price,
    protection_text,
    qty,
    signed_money,
)
from services.reporter.report import DailyReport, EquityPoint, SymbolPL
from shared.market.calendar import NEW_YORK
from shared.money import ZERO

PIXEL = Decimal("0.1")
CURVE_W, CURVE_H, PAD_L, PAD_R, PAD_T, PAD_B = 960, 280, 96, 24, 20, 36
BAR_W, BAR_ROW, BAR_LABEL = 960, 30, 170

CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color: #1d2733;
       background: #f4f6f9; margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 8px; color: #34475c; }
.meta { color: #66768a; margin-bottom: 16px; }
.cards { display: flex; gap: 12px; flex-wrap: wrap; }
.card { background: #fff; border-radius: 8px; padding: 12px 16px; min-width: 150px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.card .label { color: #66768a; font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; background: #fff; width: 100%; box-shadow: 0 1px 2px rgba(0,0,0,.08);
        border-radius: 8px; overflow: hidden; }
th, td { padding: 6px 10px; text-align: left; border-bottom: 1px solid #e6eaf0; white-space: nowrap; }
th { background: #eef2f7; font-size: 12px; color: #4a5b70; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.wrap { white-space: normal; font-size: 12px; color: #4a5b70; }
.gain { color: #12824a; } .loss { color: #c0392b; } .none { color: #c0392b; font-weight: 600; }
.chart { background: #fff; border-radius: 8px; padding: 8px; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.empty { color: #66768a; font-style: italic; }
tfoot td { font-weight: 600; background: #f8fafc; }
"""


def render(report: DailyReport) -> str:
    account, totals = report.account, report.totals
    at = report.generated_at.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Factory Line report {report.report_date.isoformat()}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Factory Line daily report {report.report_date.isoformat()}</h1>",
        f'<div class="meta">as of {escape(at)}, market {"open" if report.market_open else "closed"}</div>',
        '<div class="cards">',
        _card("Equity", "equity", account.equity, money(account.equity)),
        _card("Change today", "change-today", account.change_today,
              f"{signed_money(account.change_today)} ({percent(account.change_today_pct)})", signed=True),
        _card("Cash", "cash", account.cash, money(account.cash)),
        _card("Buying power", "buying-power", account.buying_power, money(account.buying_power)),
        _card("Realized today", "realized-today", totals.realized_pl, signed_money(totals.realized_pl), signed=True),
        _card("Unrealized", "unrealized", totals.unrealized_pl, signed_money(totals.unrealized_pl), signed=True),
        "</div>",
        "<h2>Equity curve</h2>",
        f'<div class="chart">{equity_svg(report.equity_curve)}</div>',
        "<h2>P/L by position (unrealized + realized today)</h2>",
        f'<div class="chart">{pl_bars_svg(report.pl_by_symbol)}</div>',
        f"<h2>Open positions ({len(report.positions)})</h2>",
        _positions_table(report),
        f"<h2>Closed today ({len(report.closed_trades)})</h2>",
        _trades_table(report),
        *_skipped_section(report),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _card(label: str, element_id: str, value: Decimal, text: str, *, signed: bool = False) -> str:
    css = f" {_tone(value)}" if signed else ""
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value{css}" id="{element_id}" data-value="{value}">{escape(text)}</div></div>')


def _tone(value: Decimal) -> str:
    return "gain" if value > ZERO else "loss" if value < ZERO else ""


def _cell(text: str, *, css: str = "num", value: Decimal | None = None) -> str:
    data = "" if value is None else f' data-value="{value}"'
    return f'<td class="{css}"{data}>{escape(text)}</td>'


def _positions_table(report: DailyReport) -> str:
    if not report.positions:
        return '<p class="empty">No open positions.</p>'
    head = ("<tr><th>Symbol</th><th class=num>Qty</th><th class=num>Entry</th><th class=num>Last</th>"
            "<th class=num>Market value</th><th class=num>Unrealized P/L</th><th class=num>P/L %</th>"
            "<th class=num>Days held</th><th>Protection</th><th>Armed exits</th></tr>")
    rows = []
    for p in report.positions:
        protection = "; ".join(protection_text(o) for o in p.protective_orders)
        rows.append(
            f'<tr class="position" data-symbol="{escape(p.symbol)}"><td>{escape(p.symbol)}</td>'
            + _cell(qty(p.qty), value=p.qty) + _cell(price(p.entry_price), value=p.entry_price)
            + _cell(price(p.last_price), value=p.last_price)
            + _cell(money(p.market_value), css="num market-value", value=p.market_value)
            + _cell(signed_money(p.unrealized_pl), css=f"num unrealized-pl {_tone(p.unrealized_pl)}",
                    value=p.unrealized_pl)
            + _cell(percent(p.unrealized_pl_pct), css=f"num {_tone(p.unrealized_pl)}", value=p.unrealized_pl_pct)
            + _cell("-" if p.days_held is None else str(p.days_held))
            + (f'<td class="wrap protection">{escape(protection)}</td>' if protection
               else '<td class="none protection">NONE</td>')
            + f'<td class="wrap armed">{escape(armed_text(p))}</td></tr>'
        )
    totals = report.totals
    foot = ("<tfoot><tr><td>Total</td><td></td><td></td><td></td>"
            + _cell(money(totals.market_value), value=totals.market_value).replace("<td", '<td id="total-market-value"')
            + _cell(signed_money(totals.unrealized_pl), css=f"num {_tone(totals.unrealized_pl)}",
                    value=totals.unrealized_pl).replace("<td", '<td id="total-unrealized-pl"')
            + "<td></td><td></td><td></td><td></td></tr></tfoot>")
    return f"<table id=\"positions\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody>{foot}</table>"


def _skipped_section(report: DailyReport) -> list[str]:
    if not report.skipped_signals:
        return []
    rows = "".join(f'<tr class="skipped" data-symbol="{escape(s.symbol)}"><td>{escape(s.symbol)}</td>'
                   f"<td>{escape(s.reason)}</td><td>{escape(s.detail)}</td></tr>" for s in report.skipped_signals)
    return [f"<h2>Signals not bought today ({len(report.skipped_signals)})</h2>",
            f'<table id="skipped"><thead><tr><th>Symbol</th><th>Reason</th><th>Detail</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"]


def _trades_table(report: DailyReport) -> str:
    if not report.closed_trades:
        return '<p class="empty">No trades closed today.</p>'
    head = ("<tr><th>Symbol</th><th class=num>Qty</th><th class=num>Entry</th><th class=num>Exit</th>"
            "<th class=num>Realized P/L</th><th class=num>P/L %</th><th>Exit reason</th><th>Closed at</th></tr>")
    rows = [
        f'<tr class="trade" data-symbol="{escape(t.symbol)}"><td>{escape(t.symbol)}</td>'
        + _cell(qty(t.qty), value=t.qty) + _cell(price(t.entry_price), value=t.entry_price)
        + _cell(price(t.exit_price), value=t.exit_price)
        + _cell(signed_money(t.realized_pl), css=f"num realized-pl {_tone(t.realized_pl)}", value=t.realized_pl)
        + _cell(percent(t.realized_pl_pct), css=f"num {_tone(t.realized_pl)}", value=t.realized_pl_pct)
        + f'<td class="reason">{escape(t.exit_reason.value)}</td>'
        + f"<td>{escape(t.closed_at.astimezone(NEW_YORK).strftime('%H:%M'))}</td></tr>"
        for t in report.closed_trades
    ]
    totals = report.totals
    foot = ("<tfoot><tr><td>Total</td><td></td><td></td><td></td>"
            + _cell(signed_money(totals.realized_pl), css=f"num {_tone(totals.realized_pl)}",
                    value=totals.realized_pl).replace("<td", '<td id="total-realized-pl"')
            + f"<td></td><td>{totals.winning_trades} won / {totals.losing_trades} lost</td><td></td></tr></tfoot>")
    return f"<table id=\"closed-trades\"><thead>{head}</thead><tbody>{''.join(rows)}</tbody>{foot}</table>"


# -- charts -------------------------------------------------------------------------------------------


def _px(value: Decimal) -> str:
    return format(value.quantize(PIXEL, rounding=ROUND_HALF_UP), "f")


def equity_svg(points: list[EquityPoint]) -> str:
    """The recorded equity over time: a line through every point, a dot on each (hover shows the figure)."""
    header = (f'<svg id="equity-curve" xmlns="http://www.w3.org/2000/svg" width="100%" '
              f'viewBox="0 0 {CURVE_W} {CURVE_H}" role="img" aria-label="equity curve" data-points="{len(points)}">')
    if not points:
        return (header + f'<text x="{CURVE_W // 2}" y="{CURVE_H // 2}" text-anchor="middle" fill="#66768a">'
                "no equity recorded yet</text></svg>")
    low = min(p.equity for p in points)
    high = max(p.equity for p in points)
    if high == low:  # a flat line sits in the middle, with a band of +-1% around it
        low, high = low * Decimal("0.99"), high * Decimal("1.01") if high else Decimal("1")
    first, last = points[0].at.timestamp(), points[-1].at.timestamp()
    span_t = Decimal(str(last - first)) or Decimal(1)
    width, height = Decimal(CURVE_W - PAD_L - PAD_R), Decimal(CURVE_H - PAD_T - PAD_B)

    def x(at: datetime) -> Decimal:
        if len(points) == 1:
            return Decimal(PAD_L) + width / 2
        return Decimal(PAD_L) + Decimal(str(at.timestamp() - first)) / span_t * width

    def y(equity: Decimal) -> Decimal:
        return Decimal(PAD_T) + (high - equity) / (high - low) * height

    coords = [(x(p.at), y(p.equity), p) for p in points]
    grid = []
    for i in range(5):
        level = low + (high - low) * Decimal(i) / 4
        gy = _px(y(level))
        grid.append(f'<line x1="{PAD_L}" y1="{gy}" x2="{CURVE_W - PAD_R}" y2="{gy}" stroke="#e6eaf0"/>'
                    f'<text x="{PAD_L - 8}" y="{gy}" text-anchor="end" dominant-baseline="middle" font-size="11" '
                    f'fill="#66768a">{escape(money(level))}</text>')
    labels = [f'<text x="{_px(coords[0][0])}" y="{CURVE_H - 10}" text-anchor="start" font-size="11" fill="#66768a">'
              f"{_day(points[0].at)}</text>"]
    if len(points) > 1:
        labels.append(f'<text x="{_px(coords[-1][0])}" y="{CURVE_H - 10}" text-anchor="end" font-size="11" '
                      f'fill="#66768a">{_day(points[-1].at)}</text>')
    line = " ".join(f"{_px(cx)},{_px(cy)}" for cx, cy, _ in coords)
    dots = "".join(
        f'<circle class="equity-point" cx="{_px(cx)}" cy="{_px(cy)}" r="3.5" fill="#1f6feb" '
        f'data-equity="{p.equity}" data-at="{p.at.isoformat()}"><title>{_day(p.at)} {escape(money(p.equity))}'
        "</title></circle>"
        for cx, cy, p in coords
    )
    return (header + "".join(grid) + "".join(labels)
            + f'<polyline class="equity-line" fill="none" stroke="#1f6feb" stroke-width="2" points="{line}"/>'
            + dots + "</svg>")


def pl_bars_svg(rows: list[SymbolPL]) -> str:
    """One horizontal bar per symbol from a zero line: green right for a gain, red left for a loss."""
    height = max(1, len(rows)) * BAR_ROW + 16
    header = (f'<svg id="pl-by-position" xmlns="http://www.w3.org/2000/svg" width="100%" '
              f'viewBox="0 0 {BAR_W} {height}" role="img" aria-label="P/L by position" data-bars="{len(rows)}">')
    if not rows:
        return header + '<text x="16" y="24" fill="#66768a">no positions today</text></svg>'
    scale_max = max(abs(r.total_pl) for r in rows) or Decimal(1)
    half = Decimal(BAR_W - BAR_LABEL - 120) / 2
    zero_x = Decimal(BAR_LABEL) + half
    parts = [f'<line x1="{_px(zero_x)}" y1="4" x2="{_px(zero_x)}" y2="{height - 4}" stroke="#9aa8b8"/>']
    for i, row in enumerate(rows):
        top = Decimal(8 + i * BAR_ROW)
        length = abs(row.total_pl) / scale_max * half
        left = zero_x if row.total_pl >= ZERO else zero_x - length
        tone = "gain" if row.total_pl > ZERO else "loss" if row.total_pl < ZERO else "flat"
        colour = {"gain": "#12824a", "loss": "#c0392b", "flat": "#9aa8b8"}[tone]
        label_x = zero_x + length + 6 if row.total_pl >= ZERO else zero_x - length - 6
        anchor = "start" if row.total_pl >= ZERO else "end"
        parts.append(
            f'<text x="8" y="{_px(top + 15)}" font-size="12" font-weight="600" fill="#1d2733">{escape(row.symbol)}'
            "</text>"
            f'<rect class="pl-bar {tone}" data-symbol="{escape(row.symbol)}" data-value="{row.total_pl}" '
            f'x="{_px(left)}" y="{_px(top)}" width="{_px(max(length, Decimal(1)))}" height="20" rx="3" '
            f'fill="{colour}"><title>{escape(row.symbol)}: unrealized {escape(signed_money(row.unrealized_pl))}, '
            f"realized {escape(signed_money(row.realized_pl))}</title></rect>"
            f'<text class="pl-label" x="{_px(label_x)}" y="{_px(top + 15)}" text-anchor="{anchor}" font-size="12" '
            f'fill="{colour}">{escape(signed_money(row.total_pl))}</text>'
        )
    return header + "".join(parts) + "</svg>"


def _day(at: datetime) -> str:
    return escape(at.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M"))
