"""No secret leaves a process: canary broker keys, every long-running service at DEBUG against the
simulator (its self-check, and a short real run of the streamer, the manager, a manage tick through
its RQ worker, the scheduler and a dry-run trade), then not one 8-character fragment of either key in
anything they printed or logged, or in the RQ job data and results they wrote to Redis."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time

import pytest
from conftest import redis_url
from rq.job import Job
from simhelpers import ROOT, start_sim

from shared import job_table, logs, queues
from shared.bus import connect_rq

CHECKS = {
    "scanner": ["-m", "services.scanner"],
    "ranker": ["-m", "services.ranker"],
    "trader": ["-m", "services.trader"],
    "streamer": ["-m", "services.streamer"],
    "manager": ["-m", "services.manager"],
    "manager-worker": ["-m", "services.manager.worker"],
    "reporter": ["-m", "services.reporter"],
    "scheduler": ["-m", "services.scheduler"],
}
#: Short real runs: name -> (argv, seconds before SIGTERM, or None to wait for the exit).
RUNS = {
    "streamer run": (["-m", "services.streamer", "--log-level", "DEBUG"], 4.0),
    "manager run": (["-m", "services.manager", "--log-level", "DEBUG"], 4.0),
    "manage tick": (["-m", "services.manager.worker", "--burst", "--log-level", "DEBUG"], None),
    "scheduler once": (["-m", "services.scheduler", "--once", "--log-level", "DEBUG"], None),
    "trade dry run": (["-m", "services.cli", "--log-level", "DEBUG", "trade", "--dry-run"], None),
    "config": (["-m", "services.cli", "--log-level", "DEBUG", "config", "--check"], None),
}


def fragments(secret: str, size: int = logs.FRAGMENT) -> set[str]:
    return {secret[i:i + size] for i in range(len(secret) - size + 1)}


def leaks(text: str, *secret_values: str) -> list[str]:
    return sorted({f for s in secret_values for f in fragments(s) if f in text})


@pytest.fixture
def canary():
    api_key = "PKCANARY" + secrets.token_hex(8).upper()
    secret_key = "SKCANARY" + secrets.token_urlsafe(30)
    handle = start_sim(api_key=api_key, secret_key=secret_key)
    yield handle, api_key, secret_key
    handle.stop()


def test_the_fragment_check_itself_finds_a_truncated_copy():
    assert len(leaks("... 'secret': 'SKCANARYabcdefgh...' [57 bytes]", "SKCANARYabcdefghijklmnop")) == 9
    assert leaks("SKCANARYabcdefg", "SKCANARYabcdefghijklmnop") == sorted(fragments("SKCANARYabcdefg"))


def test_canary_keys_appear_nowhere_at_debug(canary, namespace, redis_client, tmp_path):
    sim, api_key, secret_key = canary
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    env.update(sim.broker_env(), REDIS_URL=redis_url(), FL_NAMESPACE=namespace, PYTHONPATH=str(ROOT),
               FL_SIGNALS_DIR=str(tmp_path / "signals"), FL_REPORTS_DIR=str(tmp_path / "reports"),
               FL_PORTFOLIO_CSV=str(tmp_path / "portfolio.csv"), FL_MANAGER_RECONCILE_SECONDS="1")
    (tmp_path / "signals").mkdir()
    # A manage tick waiting for the manager worker: its result is written to Redis by RQ.
    tick = queues.enqueue(connect_rq(redis_url()), keys_for(namespace), "manager", job_table.MANAGE_POSITIONS)

    started: dict[str, tuple[subprocess.Popen, float | None]] = {}
    for name, argv in CHECKS.items():
        started[f"{name} check"] = (_start([*argv, "--check", "--log-level", "DEBUG"], env, tmp_path), None)
    for name, (argv, seconds) in RUNS.items():
        started[name] = (_start(argv, env, tmp_path), seconds)
    began = time.monotonic()
    outputs: dict[str, str] = {}
    try:
        for name, (process, seconds) in started.items():
            if seconds is not None:
                time.sleep(max(0.0, began + seconds - time.monotonic()))
                process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=90)
            outputs[name] = out
    finally:
        for process, _ in started.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)

    # The runs did talk to the broker (the streamer authenticated over the WebSocket at DEBUG).
    failed_checks = {n: o[-500:] for n, o in outputs.items() if n.endswith("check") and ": ok: " not in o}
    assert failed_checks == {}
    assert "trade_stream_connected" in outputs["streamer run"] or "leader_elected" in outputs["streamer run"], \
        outputs["streamer run"][-2000:]
    assert " debug " in outputs["manager run"], "the manager logged nothing at DEBUG"
    assert "configuration OK" in outputs["config"], outputs["config"]
    assert tick.get_status(refresh=True) == "finished", outputs["manage tick"][-2000:]

    found = {name: leaks(out, api_key, secret_key) for name, out in outputs.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}

    # What the project wrote to Redis: every key of the namespace, and every RQ job of its queues with
    # its arguments and results (RQ stores those compressed and base64-encoded: read them through RQ).
    # Read as bytes: some keys holding the namespace are RQ's own (compressed, not UTF-8); they are read
    # again below through RQ, decompressed.
    client = connect_rq(redis_url())
    stored = [repr(_dump(client, key)) for key in client.scan_iter(match=f"*{namespace}*", count=1000)]
    jobs = [key.decode().removeprefix("rq:job:") for key in client.scan_iter(match="rq:job:*", count=1000)
            if (client.hget(key, "origin") or b"").decode().startswith(namespace)]
    assert tick.id in jobs
    for job_id in jobs:
        job = Job.fetch(job_id, connection=client, serializer="json")
        stored.append(repr((job.func_name, job.args, job.kwargs, job.meta)))
        stored += [repr((r.return_value, r.exc_string)) for r in job.results()]
    assert "positions" in "".join(stored), stored  # the tick's result is there to be read
    assert leaks("\n".join(stored), api_key, secret_key) == []


def keys_for(namespace: str):
    from shared.bus import Keys

    return Keys(namespace)


def _start(argv: list[str], env: dict[str, str], cwd) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _dump(client, key):
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return client.smembers(key)
    if kind == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return client.xrange(key)
    return None


# -- the masking itself -----------------------------------------------------------------------------


def test_any_fragment_of_eight_characters_is_masked_and_short_secrets_whole():
    secret = "SKUNIT" + secrets.token_urlsafe(24)
    logs.register_secret(secret)
    logs.register_secret("pw-1234")  # 7 characters: masked whole only
    for start in range(0, len(secret) - 8):
        for size in (8, 9, 13):
            piece = secret[start:start + size]
            assert piece not in logs.redact(f"x{piece}y"), piece
    assert logs.redact(f"a {secret[3:11]} b {secret[:7]} c pw-1234 d") == f"a *** b {secret[:7]} c *** d"
    assert logs.redact("nothing here") == "nothing here"


def test_every_record_is_masked_at_the_source_whatever_the_handler_level_or_exception():
    import io
    import logging

    secret = "SKREC" + secrets.token_urlsafe(24)
    logs.register_secret(secret)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)  # a plain handler: not the project's formatter
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("some.library")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("frame %r", {"secret": secret[:20] + "..."})
        logger.warning("auth failed for %s", secret[5:30])
        try:
            raise ValueError(f"bad key {secret[2:14]}")
        except ValueError:
            logger.exception("while connecting")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "DEBUG some.library frame" in text and "ValueError: bad key ***" in text
    assert leaks(text, secret) == []


def test_rq_job_data_and_results_are_masked_in_redis_and_read_back_as_plain_json():
    import json

    secret = "SKRQ" + secrets.token_urlsafe(24)
    logs.register_secret(secret)
    payload = {"detail": f"refused: key {secret[:12]}", "n": 3, "items": [secret[4:20], "ok"]}
    data = queues.SERIALIZER.dumps(payload)
    assert leaks(data.decode(), secret) == []
    assert json.loads(data) == {"detail": "refused: key ***", "n": 3, "items": ["***", "ok"]}
    assert queues.SERIALIZER.loads(data) == json.loads(data)


def test_printed_urls_hide_passwords():
    assert logs.safe_url("redis://:hunter2hunter2@redis:6379/0") == "redis://:***@redis:6379/0"
    assert logs.safe_url("rediss://default:pw@example.com:6380/1") == "rediss://default:***@example.com:6380/1"
    assert logs.safe_url("redis://h:6379/0?password=abc&db=2") == "redis://h:6379/0?password=***&db=2"
    assert logs.safe_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_wire_loggers_stay_at_info_even_when_the_root_logs_debug():
    code = ("import logging; from shared import logs; logs.setup('DEBUG');"
            "print(logging.getLogger().level, *(logging.getLogger(n).getEffectiveLevel() for n in "
            "('websockets.client', 'urllib3.connectionpool', 'aiohttp.access', 'aiohttp.server', 'shared.x')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout.split() == ["10", "20", "20", "20", "20", "10"], done.stderr
