"""Settings that close the control plane: Redis without a password only on this machine, the live
guard, and the mistakes a person makes in `.env` (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from simhelpers import ROOT

from shared import logs
from shared.config import BrokerSettings, RedisSettings, load
from shared.errors import ConfigError


def bare_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


# -- Redis access --------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis://redis:6379/0",
    "redis://10.0.0.5:6379/0",
    "rediss://cache.example.com:6380/0",
    "redis://default@redis:6379/0",
    "redis://[2001:db8::1]:6379/0",
    "redis://127.0.0.1.example.com:6379/0",
])
def test_a_redis_url_without_password_off_this_machine_is_refused(clean_env, url):
    clean_env.setenv("REDIS_URL", url)
    with pytest.raises(ConfigError) as refused:
        load(RedisSettings)
    message = str(refused.value)
    assert message.startswith("REDIS_URL: ") and "has no password" in message
    assert "FL_ALLOW_REDIS_WITHOUT_PASSWORD=true" in message and "\n" not in message


@pytest.mark.parametrize("url", [
    "redis://127.0.0.1:6379/0",
    "redis://127.8.9.10:6379/0",
    "redis://localhost:6379/0",
    "redis://LOCALHOST.:6379/0",
    "redis://[::1]:6379/0",
    "unix:///run/redis/redis.sock?db=0",
    "redis://:pw-for-redis-1234@redis:6379/0",
    "redis://ops:pw-for-redis-1234@redis:6379/0",
    "redis://redis:6379/0?password=pw-for-redis-1234",
])
def test_loopback_a_socket_or_a_password_is_accepted(clean_env, url):
    clean_env.setenv("REDIS_URL", url)
    assert load(RedisSettings).REDIS_URL == url


def test_the_explicit_setting_allows_a_passwordless_remote_redis(clean_env):
    clean_env.setenv("REDIS_URL", "redis://redis:6379/0")
    clean_env.setenv("FL_ALLOW_REDIS_WITHOUT_PASSWORD", "true")
    assert load(RedisSettings).FL_ALLOW_REDIS_WITHOUT_PASSWORD


def test_the_redis_password_is_masked_once_loaded(clean_env):
    clean_env.setenv("REDIS_URL", "redis://:Zq8wRedisPassw0rd77@redis:6379/0")
    load(RedisSettings)
    assert logs.redact("auth Zq8wRedisPassw0rd77 failed; Passw0rd77") == "auth *** failed; ***"


def test_a_service_refuses_to_start_on_a_passwordless_remote_redis(tmp_path):
    done = subprocess.run([sys.executable, "-m", "services.ranker"], cwd=tmp_path, capture_output=True, text=True,
                          env=bare_env(REDIS_URL="redis://redis.internal:6379/0"), timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("ranker: error: REDIS_URL: redis://redis.internal")
    assert "Traceback" not in done.stderr


# -- the live guard --------------------------------------------------------------------------------------

KEYS = {"ALPACA_API_KEY": "key-live-guard", "ALPACA_SECRET_KEY": "secret-live-guard"}


@pytest.mark.parametrize("endpoint", [
    "https://api.alpaca.markets",
    "https://api.alpaca.markets.",
    "https://API.alpaca.markets:443",
    "HTTPS://Api.Alpaca.Markets.:443/",
    "http://api.alpaca.markets:8080",
])
def test_every_spelling_of_the_live_host_is_live_and_needs_the_opt_in(clean_env, endpoint):
    for name, value in {**KEYS, "ALPACA_ENDPOINT": endpoint}.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match=r"^ALPACA_ENDPOINT points at live trading .*FL_ALLOW_LIVE_TRADING=true"):
        load(BrokerSettings)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", "true")
    assert load(BrokerSettings).is_live


@pytest.mark.parametrize("endpoint", ["https://paper-api.alpaca.markets", "https://api.alpaca.markets.evil.example",
                                      "http://127.0.0.1:8080"])
def test_other_hosts_are_not_the_live_host(clean_env, endpoint):
    for name, value in {**KEYS, "ALPACA_ENDPOINT": endpoint}.items():
        clean_env.setenv(name, value)
    assert not load(BrokerSettings).is_live


@pytest.mark.parametrize(("value", "allowed"), [("true", True), ("TRUE", True), (" True ", True),
                                                 ("false", False), ("False", False), ("", False)])
def test_allow_live_trading_is_the_word_true_or_false(clean_env, value, allowed):
    for name, key in KEYS.items():
        clean_env.setenv(name, key)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", value)
    assert load(BrokerSettings).FL_ALLOW_LIVE_TRADING is allowed


@pytest.mark.parametrize("value", ["1", "yes", "on", "t", "y", "ture", "0", "no"])
def test_anything_else_for_allow_live_trading_is_one_line(clean_env, value):
    for name, key in KEYS.items():
        clean_env.setenv(name, key)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", value)
    with pytest.raises(ConfigError, match=r"^FL_ALLOW_LIVE_TRADING: must be true or false, not "):
        load(BrokerSettings)


def test_only_an_account_number_beginning_with_pa_is_paper(clean_env):
    for name, key in KEYS.items():
        clean_env.setenv(name, key)
    settings = load(BrokerSettings)
    settings.check_account("PA3SIM000001")
    for number in ("", "123456789", "pa3abc", "LIVE1", " PA1"):
        with pytest.raises(ConfigError, match="looks live .*FL_ALLOW_LIVE_TRADING=true"):
            settings.check_account(number)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", "true")
    load(BrokerSettings).check_account("123456789")


@pytest.fixture
def live_account_sim(monkeypatch):
    """The simulator answering GET /v2/account as a live account would (a number without PA)."""
    from simhelpers import start_sim

    monkeypatch.setattr("sim.server.wire.ACCOUNT_NUMBER", "376251994")
    handle = start_sim()
    yield handle
    handle.stop()


def test_a_live_account_is_refused_by_the_self_checks_unless_allowed(live_account_sim, namespace, tmp_path):
    from conftest import redis_url

    env = bare_env(**live_account_sim.broker_env(), REDIS_URL=redis_url(), FL_NAMESPACE=namespace,
                   FL_SIGNALS_DIR=str(tmp_path))
    runs = {name: subprocess.Popen([sys.executable, "-m", module, "--check"], cwd=tmp_path, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for name, module in (("trader", "services.trader"), ("streamer", "services.streamer"),
                                 ("manager", "services.manager"), ("reporter", "services.reporter"),
                                 ("manager worker", "services.manager.worker"), ("scheduler", "services.scheduler"))}
    for name, process in runs.items():
        out, err = process.communicate(timeout=90)
        assert process.returncode == 2, (name, out, err)
        assert err.count("\n") == 1 and "looks live (account number '376251994'" in err, err
    allowed = subprocess.run([sys.executable, "-m", "services.trader", "--check"], cwd=tmp_path, text=True,
                             env={**env, "FL_ALLOW_LIVE_TRADING": "true"}, capture_output=True, timeout=90)
    assert allowed.returncode == 0, allowed.stderr


def test_the_trader_refuses_a_live_account_before_planning(live_account_sim, clean_env, namespace):
    from conftest import redis_url

    from services.trader.jobs import trade_signals

    for name, value in {**live_account_sim.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace}.items():
        clean_env.setenv(name, value)
    with pytest.raises(ConfigError, match="looks live"):
        trade_signals(dry_run=True)
    clean_env.setenv("FL_ALLOW_LIVE_TRADING", "true")
    assert trade_signals(dry_run=True)["status"] == "no_signals"


# -- settings mistakes -----------------------------------------------------------------------------------


def factoryline(args: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env=bare_env(**env), timeout=90)


@pytest.mark.parametrize(("content", "line"), [
    ("ALPACA_API_KEY=pk\nthis is not a setting\n", 2),
    ("# comment\n\nALPACA_API_KEY=pk\nALPACA_SECRET_KEY=\"unclosed\nFL_NAMESPACE=x\n", 4),
    ("ALPACA_API_KEY pk\n", 1),
])
def test_a_malformed_env_line_is_an_error_naming_the_file_and_the_line(clean_env, tmp_path, content, line):
    (tmp_path / ".env").write_text(content)
    with pytest.raises(ConfigError, match=rf"^\.env line {line}: not a setting line: expected NAME=value"):
        load(RedisSettings)
    done = factoryline(["config"], tmp_path)
    assert (done.returncode, done.stderr) == (2, f"factoryline: error: .env line {line}: not a setting line: expected "
                                                 "NAME=value (a comment starts with #; an opened quote must be closed "
                                                 "on the same line)\n")
    assert "pk" not in done.stderr  # values are never shown


def test_the_file_named_by_fl_env_file_is_named(clean_env, tmp_path):
    (tmp_path / "prod.env").write_text("FL_NAMESPACE=ok\n=oops\n")
    clean_env.setenv("FL_ENV_FILE", str(tmp_path / "prod.env"))
    with pytest.raises(ConfigError, match=rf"^{tmp_path}/prod.env line 2: "):
        load(RedisSettings)


def test_an_unknown_name_is_a_warning_naming_the_closest_setting(tmp_path):
    (tmp_path / ".env").write_text("ALPACA_API_KEY=pk-1\nALPACA_SECRET_KEY=sk-1\nFL_STOP_LOS_PCT=4\nFL_ZZZZZZ=1\n")
    done = factoryline(["config", "--no-broker"], tmp_path, ALPACA_SECRET="x", FL_MAX_POSITION="3")
    assert done.returncode == 0, done.stderr
    warnings = [line.split(" shared.config ", 1)[1] for line in done.stderr.splitlines()]
    assert sorted(warnings) == sorted([
        ".env line 3: FL_STOP_LOS_PCT is not a Factory Line setting and is ignored (did you mean FL_STOP_LOSS_PCT?)",
        ".env line 4: FL_ZZZZZZ is not a Factory Line setting and is ignored (see .env.example)",
        "environment: ALPACA_SECRET is not a Factory Line setting and is ignored (did you mean ALPACA_SECRET_KEY?)",
        "environment: FL_MAX_POSITION is not a Factory Line setting and is ignored (did you mean FL_MAX_POSITIONS?)",
    ])
    assert all(" warning " in line for line in done.stderr.splitlines())


def percent_settings() -> list[tuple[type, str]]:
    from shared import config

    return [(group, name) for group in config.all_groups() for name in group.model_fields if name.endswith("_PCT")]


def test_there_are_percent_settings_to_guard():
    names = {name for _, name in percent_settings()}
    assert {"FL_STOP_LOSS_PCT", "FL_CASH_BUFFER_PCT", "FL_TRAILING_GIVEBACK_PCT", "FL_BLACK_SHEEP_RETURN_GAP_PCT"} <= names


@pytest.mark.parametrize(("group", "name"), percent_settings(), ids=lambda v: getattr(v, "__name__", v))
def test_every_percent_setting_given_as_a_fraction_is_refused(clean_env, group, name):
    for key, value in KEYS.items():
        clean_env.setenv(key, value)
    clean_env.setenv(name, "0.05")
    with pytest.raises(ConfigError) as refused:
        load(group)
    assert str(refused.value) == (f"{name}: 0.05 is a fraction, but percent settings are in percent: did you mean 5? "
                                  "(values between 0 and 0.5 are refused)")


def test_percent_values_from_half_a_percent_and_zero_where_allowed_are_accepted(clean_env):
    from shared.config import ExitSettings, TraderSettings

    clean_env.setenv("FL_STOP_LOSS_PCT", "0.5")
    clean_env.setenv("FL_BREAKEVEN_ARM_PCT", "0.75")
    clean_env.setenv("FL_CASH_BUFFER_PCT", "0")
    assert str(load(ExitSettings).FL_STOP_LOSS_PCT) == "0.5"
    assert str(load(TraderSettings).FL_CASH_BUFFER_PCT) == "0"
    clean_env.setenv("FL_TRAILING_ARM_PCT", "0.015")
    with pytest.raises(ConfigError, match="did you mean 1.5[?]"):
        load(ExitSettings)


def test_the_settings_modules_list_every_settings_group_of_the_project():
    import importlib
    import re

    from shared import config

    found = set()
    for path in [*ROOT.glob("shared/**/*.py"), *ROOT.glob("services/**/*.py")]:
        if re.search(r"^class \w+\([\w.]*(_Settings|Settings)\):", path.read_text(), flags=re.M):
            module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
            found |= {v for v in vars(module).values() if isinstance(v, type) and issubclass(v, config._Settings)
                      and not v.__name__.startswith("_") and v.__module__ == module.__name__}
    assert found - set(config.all_groups()) == set()


def test_config_validates_every_services_settings(tmp_path):
    for name, value in (("FL_SCHEDULE_GRACE_MINUTES", "0"), ("FL_MANAGER_WORKERS", "0"),
                        ("FL_STREAMER_MAXLEN", "lots"), ("FL_SIM_PORT", "99999"), ("FL_SCAN_WORKERS", "-1")):
        done = factoryline(["config"], tmp_path, **KEYS, **{name: value})
        assert done.returncode == 2, (name, done.stdout[-300:])
        assert done.stderr.startswith(f"factoryline: error: {name}: ") and done.stderr.count("\n") == 1, done.stderr


def test_config_shows_the_redis_password_as_stars(tmp_path):
    done = factoryline(["config"], tmp_path, **KEYS, REDIS_URL="redis://:Sup3rSecretRedisPw@127.0.0.1:6379/0")
    assert done.returncode == 0, done.stderr
    assert "  REDIS_URL = redis://:***@127.0.0.1:6379/0\n" in done.stdout
    assert "Sup3rSecret" not in done.stdout + done.stderr


def test_config_check_reaches_redis_and_the_broker_one_line_each(tmp_path, namespace):
    from conftest import redis_url
    from simhelpers import start_sim

    sim = start_sim()
    try:
        env = {**sim.broker_env(), "FL_NAMESPACE": namespace}
        ok = factoryline(["config", "--check"], tmp_path, **env, REDIS_URL=redis_url())
        assert ok.returncode == 0, ok.stderr
        checks = [line for line in ok.stdout.splitlines() if line.startswith("check ")]
        assert checks == [f"check redis: ok: {redis_url()} answers PING",
                          f"check broker: ok: {sim.base_url} answers GET account (paper account PA3SIM000001, "
                          "USD 200000.00 equity)"]
        down = factoryline(["config", "--check"], tmp_path, **env, REDIS_URL="redis://127.0.0.1:1/0")
        assert down.returncode == 2
        assert down.stderr.startswith("check redis: FAILED: redis://127.0.0.1:1/0: ConnectionError: ")
        assert down.stderr.count("\n") == 1 and "check broker: ok: " in down.stdout
    finally:
        sim.stop()
    gone = factoryline(["config", "--check"], tmp_path, **env, REDIS_URL=redis_url())
    assert gone.returncode == 2 and gone.stderr.startswith(f"check broker: FAILED: {sim.base_url}: ")
    assert "Traceback" not in gone.stderr and gone.stderr.count("\n") == 1, gone.stderr


def test_config_check_refuses_a_live_account(live_account_sim, tmp_path):
    from conftest import redis_url

    done = factoryline(["config", "--check"], tmp_path, **live_account_sim.broker_env(), REDIS_URL=redis_url())
    assert done.returncode == 2
    assert done.stderr.startswith(f"check broker: FAILED: {live_account_sim.base_url}: the account at ")
    assert "looks live" in done.stderr
