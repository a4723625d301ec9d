"""Configuration: one clear line for a bad setting, live trading only by opt-in, secrets never shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shared.config import BrokerSettings, RankerSettings, RedisSettings, load
from shared.errors import ConfigError

SIM_KEYS = {"ALPACA_API_KEY": "key-AAAA1111", "ALPACA_SECRET_KEY": "secret-BBBB2222"}


def test_missing_api_key_names_the_variable(clean_env):
    clean_env.setenv("ALPACA_SECRET_KEY", "s3cret-value")
    with pytest.raises(ConfigError, match=r"^ALPACA_API_KEY: is not set"):
        load(BrokerSettings)


def test_live_endpoint_is_refused_without_opt_in(clean_env):
    for k, v in SIM_KEYS.items():
        clean_env.setenv(k, v)
    clean_env.setenv("ALPACA_ENDPOINT", "https://api.alpaca.markets")
    with pytest.raises(ConfigError, match="FL_ALLOW_LIVE_TRADING"):
        load(BrokerSettings)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", "true")
    assert load(BrokerSettings).is_live


def test_paper_is_the_default_and_needs_no_opt_in(clean_env):
    for k, v in SIM_KEYS.items():
        clean_env.setenv(k, v)
    settings = load(BrokerSettings)
    assert settings.ALPACA_ENDPOINT == "https://paper-api.alpaca.markets"
    assert settings.data_endpoint == "https://data.alpaca.markets"
    assert settings.stream_endpoint == "wss://paper-api.alpaca.markets/stream"


def test_simulator_endpoint_derives_data_and_stream_urls(clean_env):
    for k, v in SIM_KEYS.items():
        clean_env.setenv(k, v)
    clean_env.setenv("ALPACA_ENDPOINT", "http://127.0.0.1:8765/")
    settings = load(BrokerSettings)
    assert settings.ALPACA_ENDPOINT == "http://127.0.0.1:8765"
    assert settings.data_endpoint == "http://127.0.0.1:8765"
    assert settings.stream_endpoint == "ws://127.0.0.1:8765/stream"


def test_values_come_from_the_dot_env_file(clean_env, tmp_path: Path):
    (tmp_path / ".env").write_text("ALPACA_API_KEY=from-dotenv-key\nALPACA_SECRET_KEY=from-dotenv-secret\n")
    settings = load(BrokerSettings)
    assert settings.ALPACA_API_KEY.get_secret_value() == "from-dotenv-key"


def test_secrets_do_not_appear_in_reprs(clean_env):
    for k, v in SIM_KEYS.items():
        clean_env.setenv(k, v)
    settings = load(BrokerSettings)
    assert "BBBB2222" not in repr(settings) and "BBBB2222" not in str(settings.model_dump())


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("REDIS_URL", "http://localhost", "REDIS_URL"),
        ("FL_NAMESPACE", "bad namespace!", "FL_NAMESPACE"),
    ],
)
def test_invalid_redis_settings_name_the_variable(clean_env, variable, value, fragment):
    clean_env.setenv(variable, value)
    with pytest.raises(ConfigError, match=fragment):
        load(RedisSettings)


def test_non_numeric_max_positions_is_one_line(clean_env):
    clean_env.setenv("FL_MAX_POSITIONS", "five")
    with pytest.raises(ConfigError, match=r"^FL_MAX_POSITIONS: "):
        load(RankerSettings)


def _factoryline(args, env, cwd):
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=60
    )


def _bare_env(tmp_path):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    return env


def test_config_command_without_api_key_prints_one_line_and_exits_2(tmp_path):
    env = _bare_env(tmp_path)
    result = _factoryline(["config"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "factoryline: error: ALPACA_API_KEY, ALPACA_SECRET_KEY: are not set "
        "(put them in .env or the environment; see .env.example)"
    )
    assert "Traceback" not in result.stderr


def test_config_command_masks_secrets(tmp_path):
    env = _bare_env(tmp_path) | SIM_KEYS
    result = _factoryline(["config"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "secret-BBBB2222" not in result.stdout and "key-AAAA1111" not in result.stdout
    assert "ALPACA_SECRET_KEY = (set, hidden)" in result.stdout


SETTINGS_MODULES = ("sim.settings", "services.streamer.settings", "services.manager.settings",
                    "services.reporter.settings", "services.scheduler.settings",
                    "services.manager.portfolio", "services.scanner.settings", "shared.linebacktest")


def _settings_groups():
    import importlib

    from shared import config

    modules = [config] + [importlib.import_module(m) for m in SETTINGS_MODULES]
    return [cls for module in modules for cls in vars(module).values()
            if isinstance(cls, type) and issubclass(cls, config._Settings) and cls is not config._Settings]


def test_a_copied_env_example_loads_every_group_once_the_keys_are_filled_in(clean_env, tmp_path):
    example = (Path(__file__).resolve().parents[2] / ".env.example").read_text()
    (tmp_path / ".env").write_text(example)
    with pytest.raises(ConfigError, match=r"^ALPACA_API_KEY, ALPACA_SECRET_KEY: are not set"):
        load(BrokerSettings)
    (tmp_path / ".env").write_text(example.replace("ALPACA_API_KEY=\n", "ALPACA_API_KEY=pk-test\n")
                                   .replace("ALPACA_SECRET_KEY=\n", "ALPACA_SECRET_KEY=sk-test\n"))
    for group in _settings_groups():
        load(group)


def test_every_setting_is_documented_in_env_example():
    documented = {
        line.split("=", 1)[0].strip()
        for line in (Path(__file__).resolve().parents[2] / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    }
    fields = {name for cls in _settings_groups() for name in cls.model_fields}
    assert fields - documented == set()
