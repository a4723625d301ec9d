"""Settings that close the control plane: Redis without a password only on this machine, the live
guard, and the mistakes a person makes in `.env` (issue 13)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from simhelpers import ROOT

from shared import logs
from shared.config import RedisSettings, load
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
