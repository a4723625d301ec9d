"""Scanner logs for the demo, in the documented format (docs/signals.md), until the QuickStrike
scanner writes real ones: a handful of actionable signals plus the kinds the ranker must refuse."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path


@dataclass(frozen=True)
class SampleLog:
    state: str
    ticker: str
    body: str

    @property
    def file_name(self) -> str:
        return f"{self.state}_live_qs_{self.ticker}.log"


def sample_logs(prices: dict[str, Decimal], scanned_at: datetime, seed: int) -> list[SampleLog]:
    """One log per ticker in `prices`: the first seven in trade (one of them a black sheep), then
    watching, unprofitable, stale and malformed ones."""
    rng = random.Random(seed)
    tickers = sorted(prices)
    logs: list[SampleLog] = []
    for i, ticker in enumerate(tickers):
        kind = _KINDS[i] if i < len(_KINDS) else "watching"
        win_rate = Decimal(rng.randint(520, 780)) / 10
        fields = {
            "ticker": ticker,
            "strategy": rng.choice(["breakout_20d", "pullback_uptrend", "momentum_continuation"]),
            "status": "IN_TRADE",
            "verdict": "PROFITABLE",
            "win_rate": f"{win_rate}%",
            "trades": str(rng.randint(14, 60)),
            "profit_factor": str(Decimal(rng.randint(115, 260)) / 100),
            "avg_return": f"{Decimal(rng.randint(4, 35)) / 10}%",
            "signal_date": scanned_at.date().isoformat(),
            "signal_price": str(prices[ticker]),
            "scanned_at": scanned_at.isoformat(),
        }
        state = "IN_TRADE"
        if kind == "black_sheep":
            fields["black_sheep"] = "true"
        elif kind == "watching":
            state = fields["status"] = "WATCHING"
        elif kind == "unprofitable":
            fields["verdict"] = "UNPROFITABLE"
        elif kind == "stale":
            fields["scanned_at"] = (scanned_at - timedelta(days=4)).isoformat()
        elif kind == "malformed":
            fields["win_rate"] = "135%"
        body = "QuickStrike nightly scan (demo sample)\n" + "".join(f"{k}: {v}\n" for k, v in fields.items())
        logs.append(SampleLog(state, ticker, body))
    return logs


_KINDS = ["trade"] * 6 + ["black_sheep", "unprofitable", "stale", "malformed"]


def write_logs(folder: Path, logs: list[SampleLog]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*_live_qs_*.log"):
        old.unlink()
    for log in logs:
        (folder / log.file_name).write_text(log.body, encoding="utf-8")
