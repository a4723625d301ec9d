"""The tearsheet as a terminal summary and as one self-contained HTML page.

The page embeds plotly.js itself (`include_plotlyjs=True`, no CDN): it opens on a machine with no
internet. The trade table's filters (symbol, exit reason) are a few lines of inline script. Every
statistic carries its exact value in `data-value` beside the formatted text (`id="total-return"`, ...).
"""

from __future__ import annotations

import calendar
import math
from datetime import timedelta
from decimal import Decimal
from html import escape

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from services.reporter.render_html import CSS
from services.reporter.render_text import money, price, qty, signed_money
from services.reporter.tearsheet import Tearsheet
from shared.market.calendar import NEW_YORK

EXTRA_CSS = """
.filters { margin: 8px 0; display: flex; gap: 16px; align-items: center; }
.filters select { font: inherit; padding: 2px 6px; }
table.monthly td { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #8a5a00; background: #fff6e0; padding: 6px 10px; border-radius: 6px; display: inline-block; }
.defs { color: #4a5b70; font-size: 12px; }
"""

FILTER_SCRIPT = """
(function () {
  var symbol = document.getElementById('filter-symbol'), reason = document.getElementById('filter-reason');
  if (!symbol || !reason) { return; }
  function apply() {
    var shown = 0;
    document.querySelectorAll('#trade-table tbody tr.trade').forEach(function (row) {
      var ok = (!symbol.value || row.dataset.symbol === symbol.value) &&
               (!reason.value || row.dataset.reason === reason.value);
      row.style.display = ok ? '' : 'none';
      if (ok) { shown += 1; }
    });
    document.getElementById('trades-shown').textContent = shown;
  }
  symbol.addEventListener('change', apply);
  reason.addEventListener('change', apply);
  apply();
})();
"""


def pct(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value * 100:+.{digits}f}%"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def render_text(sheet: Tearsheet) -> str:
    """The statistics as aligned lines (what `factoryline report --since` and the demo print)."""
    dd = "-" if sheet.max_drawdown is None else (
        f"{pct(sheet.max_drawdown)} (peak {sheet.drawdown_peak}, trough {sheet.drawdown_trough}, "
        f"recovered {sheet.drawdown_recovery or 'not yet'})")
    rows = [
        ("starting equity", "-" if sheet.start_equity is None else f"{money(sheet.start_equity)} ({sheet.start_day})"),
        ("ending equity", "-" if sheet.end_equity is None else money(sheet.end_equity)),
        ("total return", pct(sheet.total_return)),
        ("annualized return", pct(sheet.annual_return)),
        ("max drawdown", dd),
        ("sharpe / sortino", f"{ratio(sheet.sharpe)} / {ratio(sheet.sortino)}"),
        ("trades (won/lost)", f"{sheet.trades} ({sheet.wins}/{sheet.losses})"),
        ("win rate", "-" if sheet.win_rate is None else f"{sheet.win_rate * 100:.1f}%"),
        ("profit factor", ratio(sheet.profit_factor)),
        ("average win / loss", f"{_money_or_dash(sheet.average_win)} / {_money_or_dash(sheet.average_loss)}"),
        ("exposure", "-" if sheet.exposure is None else
         f"{sheet.exposure * 100:.1f}% ({sheet.exposed_days} of {_window_days(sheet)} days)"),
        (f"benchmark {sheet.benchmark_symbol}", pct(sheet.benchmark_return) if sheet.benchmark
         else sheet.benchmark_note),
    ]
    width = max(len(k) for k, _ in rows)
    head = f"Factory Line tearsheet {sheet.since} to {sheet.until} ({sheet.trading_days} trading day(s))"
    return "\n".join([head, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def _money_or_dash(value: Decimal | None) -> str:
    return "-" if value is None else signed_money(value)


def _window_days(sheet: Tearsheet) -> int:
    return sum(1 for p in sheet.daily if p.day >= sheet.since)


# -- the page -----------------------------------------------------------------------------------------


def render(sheet: Tearsheet) -> str:
    at = sheet.generated_at.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Factory Line tearsheet {sheet.since} to {sheet.until}</title>",
        f"<style>{CSS}{EXTRA_CSS}</style></head><body>",
        f"<h1>Factory Line tearsheet {sheet.since} to {sheet.until}</h1>",
        f'<div class="meta">as of {escape(at)}; {sheet.trading_days} trading day(s) of returns from the '
        f"starting point {sheet.start_day or '-'} ({escape(sheet.start_source)})</div>",
        '<div class="cards">',
        _card("Starting equity", "start-equity", sheet.start_equity,
              "-" if sheet.start_equity is None else money(sheet.start_equity)),
        _card("Ending equity", "end-equity", sheet.end_equity,
              "-" if sheet.end_equity is None else money(sheet.end_equity)),
        _card("Total return", "total-return", sheet.total_return, pct(sheet.total_return)),
        _card("Annualized return", "annual-return", sheet.annual_return, pct(sheet.annual_return)),
        _card("Max drawdown", "max-drawdown", sheet.max_drawdown, pct(sheet.max_drawdown)),
        _card("Sharpe", "sharpe", sheet.sharpe, ratio(sheet.sharpe)),
        _card("Sortino", "sortino", sheet.sortino, ratio(sheet.sortino)),
        "</div>",
        '<div class="cards" style="margin-top:12px">',
        _card("Trades", "trades", sheet.trades, f"{sheet.trades} ({sheet.wins} won / {sheet.losses} lost)"),
        _card("Win rate", "win-rate", sheet.win_rate,
              "-" if sheet.win_rate is None else f"{sheet.win_rate * 100:.1f}%"),
        _card("Profit factor", "profit-factor", sheet.profit_factor, ratio(sheet.profit_factor)),
        _card("Average win", "average-win", sheet.average_win, _money_or_dash(sheet.average_win)),
        _card("Average loss", "average-loss", sheet.average_loss, _money_or_dash(sheet.average_loss)),
        _card("Exposure", "exposure", sheet.exposure,
              "-" if sheet.exposure is None else f"{sheet.exposure * 100:.1f}% of days"),
        "</div>",
        '<p class="defs" id="drawdown-dates">Max drawdown: peak '
        f'<span id="drawdown-peak">{sheet.drawdown_peak or "-"}</span>, trough '
        f'<span id="drawdown-trough">{sheet.drawdown_trough or "-"}</span>, recovery '
        f'<span id="drawdown-recovery">{sheet.drawdown_recovery or "not yet"}</span>.</p>',
        "<h2>Equity from the starting capital, drawdown shaded</h2>",
        *([f'<p class="note" id="benchmark-note">Benchmark {escape(sheet.benchmark_symbol)}: '
           f"{escape(sheet.benchmark_note)}</p>"] if not sheet.benchmark else []),
        f'<div class="chart">{equity_chart(sheet)}</div>',
        "<h2>Monthly returns</h2>",
        monthly_table(sheet),
        f"<h2>Closed trades (<span id=\"trades-shown\">{len(sheet.closed_trades)}</span> of "
        f"{len(sheet.closed_trades)})</h2>",
        trade_table(sheet),
        '<p class="defs">Returns, drawdown, Sharpe and Sortino: empyrical over the daily returns of the '
        "equity series (last recorded equity of each day, from the starting point), 252 days a year, risk-free "
        "rate 0. Win rate, profit factor and averages: over the closed trades (one per position close). "
        "Exposure: share of the window's days on which a position was held at any time.</p>",
        f"<script>{FILTER_SCRIPT}</script>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _card(label: str, element_id: str, value, text: str) -> str:
    data = "" if value is None else f' data-value="{value}"'
    return (f'<div class="card"><div class="label">{escape(label)}</div>'
            f'<div class="value" id="{element_id}"{data}>{escape(text)}</div></div>')


def nice_step(span: float, ticks: int = 5) -> float:
    """A round tick step (1, 2, 2.5 or 5 x 10^k) giving about `ticks` ticks over `span`."""
    if span <= 0 or not math.isfinite(span):
        return 1.0
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def _date_axis(sheet: Tearsheet) -> dict:
    if len(sheet.daily) < 2:
        return {"tickformat": "%b %d", "dtick": 86_400_000}
    span = (sheet.daily[-1].day - sheet.daily[0].day).days
    if span <= 16:
        return {"tickformat": "%b %d", "dtick": 86_400_000}
    if span <= 92:
        return {"tickformat": "%b %d", "dtick": 7 * 86_400_000}
    return {"tickformat": "%b %Y", "dtick": "M1" if span <= 730 else "M3"}


def equity_chart(sheet: Tearsheet) -> str:
    """Equity and its running peak (the gap between them shaded red: the drawdown), the benchmark from
    the same start, and the drawdown in percent below; plotly.js embedded once, here."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.72, 0.28], vertical_spacing=0.06)
    days = [p.day.isoformat() for p in sheet.daily]
    equity = [float(p.equity) for p in sheet.daily]
    peak, running = [], -math.inf
    for value in equity:
        running = max(running, value)
        peak.append(running)
    fig.add_trace(go.Scatter(x=days, y=peak, name="peak", mode="lines", line={"color": "#9aa8b8", "width": 1,
                                                                              "dash": "dot"}), row=1, col=1)
    fig.add_trace(go.Scatter(x=days, y=equity, name="equity", mode="lines+markers", fill="tonexty",
                             fillcolor="rgba(192,57,43,0.25)", line={"color": "#1f6feb", "width": 2}),
                  row=1, col=1)
    values = list(equity)
    if sheet.benchmark:
        bench = [float(b.value) for b in sheet.benchmark]
        values += bench
        fig.add_trace(go.Scatter(x=[b.day.isoformat() for b in sheet.benchmark], y=bench,
                                 name=f"{sheet.benchmark_symbol} (same start)", mode="lines",
                                 line={"color": "#8e44ad", "width": 1.5, "dash": "dash"}), row=1, col=1)
    drawdown = [p.drawdown * 100 for p in sheet.daily]
    fig.add_trace(go.Scatter(x=days, y=drawdown, name="drawdown %", mode="lines", fill="tozeroy",
                             fillcolor="rgba(192,57,43,0.35)", line={"color": "#c0392b", "width": 1}), row=2, col=1)
    if values:
        low, high = min(values), max(values)
        step = nice_step(max(high - low, high * 0.01))
        lo, hi = math.floor(low / step) * step, math.ceil(high / step) * step
        fig.update_yaxes(row=1, col=1, tickformat="$,.0f", dtick=step, tick0=0, range=[lo - step * 0.25,
                                                                                      hi + step * 0.25])
    depth = -min(drawdown, default=0.0)
    dd_step = nice_step(max(depth, 1.0), ticks=3)
    fig.update_yaxes(row=2, col=1, ticksuffix="%", dtick=dd_step, tick0=0,
                     range=[-(math.ceil(depth / dd_step) * dd_step or dd_step) * 1.05, dd_step * 0.2])
    # Weekends are no trading days: no gap for them; half a day of margin so the end dates get a tick.
    fig.update_xaxes(type="date", rangebreaks=[{"bounds": ["sat", "mon"]}], **_date_axis(sheet))
    if len(sheet.daily) > 1:
        first, last = sheet.daily[0].day - timedelta(days=1), sheet.daily[-1].day
        fig.update_xaxes(range=[f"{first} 12:00", f"{last} 12:00"])
    fig.update_layout(height=520, margin={"l": 80, "r": 20, "t": 20, "b": 40}, template="plotly_white",
                      legend={"orientation": "h", "y": 1.06}, hovermode="x unified")
    return fig.to_html(full_html=False, include_plotlyjs=True, div_id="equity-chart",
                       config={"displaylogo": False, "responsive": True})


def monthly_table(sheet: Tearsheet) -> str:
    if not sheet.monthly:
        return '<p class="empty">No returns yet.</p>'
    years = sorted({m.year for m in sheet.monthly})
    by = {(m.year, m.month): m.monthly_return for m in sheet.monthly}
    head = "<tr><th>Year</th>" + "".join(f"<th class=num>{calendar.month_abbr[i]}</th>" for i in range(1, 13)) + "</tr>"
    rows = []
    for year in years:
        cells = []
        for month in range(1, 13):
            value = by.get((year, month))
            if value is None:
                cells.append("<td></td>")
                continue
            alpha = min(abs(value) / 0.05, 1.0) * 0.6 + 0.08
            colour = f"rgba(18,130,74,{alpha:.2f})" if value >= 0 else f"rgba(192,57,43,{alpha:.2f})"
            cells.append(f'<td class="month-return" data-month="{year}-{month:02d}" data-value="{value}" '
                         f'style="background:{colour}">{pct(value, 1)}</td>')
        rows.append(f"<tr><td>{year}</td>{''.join(cells)}</tr>")
    return f'<table class="monthly" id="monthly-returns"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'


def trade_table(sheet: Tearsheet) -> str:
    if not sheet.closed_trades:
        return '<p class="empty">No trades closed in this window.</p>'
    symbols = sorted({t.symbol for t in sheet.closed_trades})
    reasons = sorted({t.exit_reason.value for t in sheet.closed_trades})

    def select(element_id: str, label: str, options: list[str]) -> str:
        opts = "".join(f'<option value="{escape(o)}">{escape(o)}</option>' for o in options)
        return (f'<label>{label} <select id="{element_id}"><option value="">all</option>{opts}</select></label>')

    filters = (f'<div class="filters">{select("filter-symbol", "Symbol", symbols)}'
               f'{select("filter-reason", "Exit reason", reasons)}</div>')
    head = ("<tr><th>Symbol</th><th class=num>Qty</th><th class=num>Entry</th><th class=num>Exit</th>"
            "<th class=num>Realized P/L</th><th class=num>P/L %</th><th>Exit reason</th><th>Opened</th>"
            "<th>Closed</th></tr>")
    rows = []
    for t in sheet.closed_trades:
        tone = "gain" if t.realized_pl > 0 else "loss" if t.realized_pl < 0 else ""
        rows.append(
            f'<tr class="trade" data-symbol="{escape(t.symbol)}" data-reason="{escape(t.exit_reason.value)}">'
            f"<td>{escape(t.symbol)}</td><td class=num>{qty(t.qty)}</td><td class=num>{price(t.entry_price)}</td>"
            f"<td class=num>{price(t.exit_price)}</td>"
            f'<td class="num realized-pl {tone}" data-value="{t.realized_pl}">{signed_money(t.realized_pl)}</td>'
            f'<td class="num {tone}">{t.realized_pl_pct}%</td><td>{escape(t.exit_reason.value)}</td>'
            f"<td>{t.opened_at.astimezone(NEW_YORK):%Y-%m-%d %H:%M}</td>"
            f"<td>{t.closed_at.astimezone(NEW_YORK):%Y-%m-%d %H:%M}</td></tr>")
    return f'{filters}<table id="trade-table"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
