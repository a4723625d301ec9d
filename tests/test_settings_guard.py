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

    monkeypatch.setattr("services.sim.wire.ACCOUNT_NUMBER", "376251994")
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
                                 ("manager", "services.manager"), ("reporter", "services.reporter"))}
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
