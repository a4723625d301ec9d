"""The daily report as a terminal table (what `factoryline report` prints), and the number formats the
HTML report shares, so a person reading either sees the same figures."""

from __future__ import annotations

from decimal import Decimal

from services.reporter.report import DailyReport, PositionLine, ProtectiveOrder
from shared.market.calendar import NEW_YORK
from shared.money import ZERO, fmt_money, fmt_qty, round_price


def money(amount: Decimal) -> str:
    """$1,234.56 (cents, half-up)."""
    return fmt_money(amount)


def signed_money(amount: Decimal) -> str:
    """+$12.34 / -$12.34: a change reads as a change."""
    text = fmt_money(amount)
    return text if text.startswith("-") or text == "$0.00" else f"+{text}"


def percent(value: Decimal | None) -> str:
    if value is None:
        return "-"
    return f"{'+' if value > ZERO else ''}{value}%"


def price(value: Decimal | None) -> str:
    """A price on the broker's grid: 2 decimals at or above $1, 4 below."""
    return "-" if value is None else format(round_price(value), "f")


def qty(value: Decimal | None) -> str:
    return "-" if value is None else fmt_qty(value)


def protection_text(order: ProtectiveOrder) -> str:
    if order.kind == "oco":
        return f"OCO {qty(order.qty)} stop {price(order.stop_price)} / target {price(order.target_price)}"
    if order.stop_price is not None:
        return f"{order.kind} {qty(order.qty)} @ {price(order.stop_price)} ({order.time_in_force})"
    return f"{order.kind} {qty(order.qty)} @ {price(order.target_price)} ({order.time_in_force})"


def armed_text(line: PositionLine) -> str:
    return ", ".join(f"{a.reason.value} <= {price(a.exit_price)}" for a in line.armed_exits) or "-"


def render(report: DailyReport) -> str:
    """Account, open positions, today's closed trades and totals, as aligned columns."""
    account, totals = report.account, report.totals
    at = report.generated_at.astimezone(NEW_YORK).strftime("%Y-%m-%d %H:%M %Z")
    lines = [
        f"Factory Line daily report {report.report_date.isoformat()} (as of {at}, market "
        f"{'open' if report.market_open else 'closed'})",
        "",
        "account",
        *_table(("equity", "cash", "buying power", "change today"),
                [(money(account.equity), money(account.cash), money(account.buying_power),
                  f"{signed_money(account.change_today)} ({percent(account.change_today_pct)})")],
                right={0, 1, 2, 3}),
        "",
    ]
    if report.positions:
        lines.append(f"open positions ({len(report.positions)})")
        lines += _table(
            ("symbol", "qty", "entry", "last", "market value", "unrealized P/L", "P/L %", "days", "protection",
             "armed exits"),
            [(p.symbol, qty(p.qty), price(p.entry_price), price(p.last_price), money(p.market_value),
              signed_money(p.unrealized_pl), percent(p.unrealized_pl_pct),
              "-" if p.days_held is None else str(p.days_held),
              "; ".join(protection_text(o) for o in p.protective_orders) or "NONE", armed_text(p))
             for p in report.positions],
            right={1, 2, 3, 4, 5, 6, 7},
        )
    else:
        lines.append("open positions: none")
    lines.append("")
    if report.closed_trades:
        lines.append(f"closed today ({len(report.closed_trades)})")
        lines += _table(
            ("symbol", "qty", "entry", "exit", "realized P/L", "P/L %", "reason", "closed at"),
            [(t.symbol, qty(t.qty), price(t.entry_price), price(t.exit_price), signed_money(t.realized_pl),
              percent(t.realized_pl_pct), t.exit_reason.value, t.closed_at.astimezone(NEW_YORK).strftime("%H:%M"))
             for t in report.closed_trades],
            right={1, 2, 3, 4, 5},
        )
    else:
        lines.append("closed today: none")
    if report.skipped_signals:
        lines += ["", f"signals not bought today ({len(report.skipped_signals)})"]
        lines += _table(("symbol", "reason", "detail"),
                        [(s.symbol, s.reason, s.detail) for s in report.skipped_signals])
    lines += [
        "",
        "totals",
        *_table(("positions", "market value", "unrealized P/L", "closed", "won/lost", "realized P/L", "total P/L"),
                [(str(totals.open_positions), money(totals.market_value), signed_money(totals.unrealized_pl),
                  str(totals.closed_trades), f"{totals.winning_trades}/{totals.losing_trades}",
                  signed_money(totals.realized_pl), signed_money(totals.total_pl))],
                right={0, 1, 2, 3, 4, 5, 6}),
    ]
    return "\n".join(lines)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int] | frozenset[int] = frozenset()
           ) -> list[str]:
    cells = [tuple(_printable(c) for c in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return ["  " + line(cells[0]), "  " + "  ".join("-" * w for w in widths)] + ["  " + line(r) for r in cells[1:]]


def _printable(text: str) -> str:
    """Symbols and ids come from the broker: no control characters reach the terminal."""
    return "".join(c if c.isprintable() else "?" for c in text)
