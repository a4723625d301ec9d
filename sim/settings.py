"""The simulated market's settings (FL_SIM_*). Flags of `python -m sim` override them (`sim.cli`).

`factoryline config` finds this group through the `factoryline.settings` entry point (pyproject.toml),
so production code never names the simulator.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field, SecretStr

from shared.config import _Settings


class SimSettings(_Settings):
    FL_SIM_HOST: str = "127.0.0.1"
    FL_SIM_PORT: int = Field(default=8080, ge=0, le=65535)
    FL_SIM_SEED: int = 7
    FL_SIM_START: str = ""
    FL_SIM_SPEED: float = Field(default=1.0, ge=0)
    FL_SIM_CASH: Decimal = Field(default=Decimal("200000"), ge=0)
    FL_SIM_RATE_LIMIT: int = Field(default=200, ge=0)
    FL_SIM_BARS_CSV: str = ""
    #: Replay real daily history (shared.history source: csv:PATH, bokeh, broker); empty: seeded prices.
    FL_SIM_DATA: str = ""
    FL_SIM_UNIVERSE_SIZE: int | None = Field(default=None, ge=1, le=17_576)
    FL_SIM_API_KEY: SecretStr = SecretStr("sim-key")
    FL_SIM_SECRET_KEY: SecretStr = SecretStr("sim-secret")
