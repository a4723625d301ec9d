"""The scheduler: New York times through DST, trading days and early closes from the broker's
calendar, catch-up inside the grace window and never later, and one enqueue per run whatever the
number of replicas."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest
from conftest import redis_url
from rq import Queue
from simhelpers import NEW_YORK, ROOT, start_sim

from services.scheduler.runner import Scheduler
from services.scheduler.schedule import MANAGE, TRADE, day_entries, decide, next_session
from services.scheduler.settings import SchedulerSettings
from shared.bus import Keys, connect_rq
from shared.errors import ConfigError
from shared.market.calendar import nyse

PLAN = SchedulerSettings(_env_file=None).plan()


def ny(*args: int) -> datetime:
    return datetime(*args, tzinfo=NEW_YORK)


def entries_on(day: date, plan=PLAN):
    return day_entries(nyse().session(day), plan)


def at_of(entries, name):
    return [e.at for e in entries if e.job.name == name]


# -- the pure schedule ----------------------------------------------------------------------------


def test_trade_runs_at_0935_new_york_on_both_sides_of_the_march_dst_change():
    friday = at_of(entries_on(date(2024, 3, 8)), "trade")[0]
    monday = at_of(entries_on(date(2024, 3, 11)), "trade")[0]
    assert friday.astimezone(UTC).strftime("%H:%M") == "14:35"
    assert monday.astimezone(UTC).strftime("%H:%M") == "13:35"
    assert friday.astimezone(NEW_YORK).strftime("%H:%M") == monday.astimezone(NEW_YORK).strftime("%H:%M") == "09:35"


def test_a_normal_day_has_scan_rank_trade_report_and_a_manage_tick_every_five_minutes_of_the_session():
    entries = entries_on(date(2024, 3, 5))
    assert [e.at.strftime("%H:%M") for e in entries if e.job is not MANAGE] == ["02:00", "06:00", "09:35", "16:05"]
    ticks = at_of(entries, "manage")
    assert len(ticks) == 78
    assert ticks[0] == ny(2024, 3, 5, 9, 30) and ticks[-1] == ny(2024, 3, 5, 15, 55)


def test_an_early_close_ends_the_manage_ticks_at_1300_and_moves_the_report_to_1305():
    entries = entries_on(date(2024, 11, 29))  # the day after Thanksgiving closes at 13:00
    assert at_of(entries, "manage")[-1] == ny(2024, 11, 29, 12, 55)
    assert at_of(entries, "report") == [ny(2024, 11, 29, 13, 5)]


def test_an_entry_time_after_an_early_close_is_not_scheduled():
    plan = SchedulerSettings(_env_file=None, FL_SCHEDULE_TRADE="14:00").plan()
    assert at_of(entries_on(date(2024, 11, 29), plan), "trade") == []
    assert at_of(entries_on(date(2024, 11, 27), plan), "trade") == [ny(2024, 11, 27, 14, 0)]


def test_a_run_missed_while_down_is_caught_up_within_the_grace_window():
    entries = entries_on(date(2024, 3, 5))
    decision = decide(entries, ny(2024, 3, 5, 9, 47), timedelta(minutes=15))
    assert [(e.job.name, e.at.strftime("%H:%M")) for e in decision.due] == [("trade", "09:35"), ("manage", "09:45")]
    assert [(e.job.name, e.at.strftime("%H:%M")) for e in decision.missed] == [
        ("scan", "02:00"), ("rank", "06:00"), ("manage", "09:30")]
    assert [e.at.strftime("%H:%M") for e in decision.superseded] == ["09:35", "09:40"]


def test_a_scheduler_back_at_1400_places_no_entries():
    decision = decide(entries_on(date(2024, 3, 5)), ny(2024, 3, 5, 14, 0), timedelta(minutes=15))
    assert [(e.job.name, e.at.strftime("%H:%M")) for e in decision.due] == [("manage", "14:00")]
    assert TRADE in {e.job for e in decision.missed}


def test_a_bad_schedule_time_is_a_one_line_error_naming_the_variable():
    with pytest.raises(ConfigError) as caught:
        SchedulerSettings(_env_file=None, FL_SCHEDULE_TRADE="9h35").plan()
    assert str(caught.value).startswith("FL_SCHEDULE_TRADE: not a schedule time: '9h35'")
    assert "\n" not in str(caught.value)


def test_an_empty_time_turns_a_job_off():
    plan = SchedulerSettings(_env_file=None, FL_SCHEDULE_SCAN="", FL_SCHEDULE_MANAGE_MINUTES=0).plan()
    names = {e.job.name for e in entries_on(date(2024, 3, 5), plan)}
    assert names == {"rank", "trade", "report"}


# -- the loop against the simulator's calendar and the real Redis -----------------------------------


@pytest.fixture
def market():
    handle = start_sim()
    from shared.broker import make_executor

    executor = make_executor(handle.broker_settings())
    yield executor
    executor.close()
    handle.stop()


def scheduler(redis_client, keys: Keys, executor) -> Scheduler:
    return Scheduler(connect_rq(redis_url()), keys, executor, PLAN)


def queued(keys: Keys, service: str) -> list[str]:
    return Queue(keys.queue(service), connection=connect_rq(redis_url()), serializer="json").get_job_ids()


def test_two_replicas_ticking_at_the_same_moment_enqueue_each_run_once(redis_client, keys, market):
    first, second = scheduler(redis_client, keys, market), scheduler(redis_client, keys, market)
    moment = ny(2024, 3, 5, 9, 36)
    a, b = first.tick(moment), second.tick(moment)
    assert sorted(e.job.name for e in a.enqueued) == ["manage", "trade"]
    assert b.enqueued == [] and len(b.already_enqueued) == 2
    assert queued(keys, "trader") == [f"{keys.ns}-sched-trade-20240305-0935"]
    assert queued(keys, "manager") == [f"{keys.ns}-sched-manage-20240305-0935"]


def test_a_restart_inside_the_grace_window_does_not_run_a_job_twice(redis_client, keys, market):
    scheduler(redis_client, keys, market).tick(ny(2024, 3, 5, 9, 35))
    restarted = scheduler(redis_client, keys, market).tick(ny(2024, 3, 5, 9, 38))
    assert restarted.enqueued == []
    assert len(queued(keys, "trader")) == 1


def test_the_enqueued_job_names_the_service_function_and_is_json_serialised(redis_client, keys, market):
    scheduler(redis_client, keys, market).tick(ny(2024, 3, 5, 6, 0))
    job = Queue(keys.queue("ranker"), connection=connect_rq(redis_url()), serializer="json").jobs[0]
    assert job.func_name == "services.ranker.jobs.rank_signals"
    assert list(job.args) == [] and job.kwargs == {}


def test_nothing_is_enqueued_on_a_holiday_or_a_weekend(redis_client, keys, market):
    runner = scheduler(redis_client, keys, market)
    for moment in (ny(2024, 3, 29, 9, 35), ny(2024, 3, 9, 9, 35)):  # Good Friday, a Saturday
        assert runner.tick(moment).enqueued == []
    assert queued(keys, "trader") == []


def test_each_tick_records_the_next_run_for_operators(redis_client, keys, market):
    scheduler(redis_client, keys, market).tick(ny(2024, 3, 5, 6, 1))
    health = redis_client.hgetall(keys.scheduler_health)
    assert health["next_run"] == ny(2024, 3, 5, 9, 30).isoformat()
    assert 0 < redis_client.ttl(keys.scheduler_health) <= 600


def test_after_the_close_the_next_session_is_the_next_trading_day_not_todays_finished_one():
    # Friday 2024-03-08: before its report it is still "next"; after it, Monday 2024-03-11.
    sessions = [nyse().session(date(2024, 3, 8)), nyse().session(date(2024, 3, 11))]
    assert next_session(sessions, PLAN, ny(2024, 3, 8, 15, 0)).date == date(2024, 3, 8)
    assert next_session(sessions, PLAN, ny(2024, 3, 8, 16, 6)).date == date(2024, 3, 11)
    assert next_session(sessions[:1], PLAN, ny(2024, 3, 8, 16, 6)) is None


def test_after_the_close_the_health_key_names_the_next_sessions_first_run(redis_client, keys, market):
    scheduler(redis_client, keys, market).tick(ny(2024, 3, 8, 16, 30))
    assert redis_client.hget(keys.scheduler_health, "next_run") == ny(2024, 3, 11, 2, 0).isoformat()


# -- the command -------------------------------------------------------------------------------------


def run_scheduler(args: list[str], env: dict[str, str], cwd) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL"))}
    return subprocess.run([sys.executable, "-m", "services.scheduler", *args], env={**base, **env,
                          "PYTHONPATH": str(ROOT)}, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_check_prints_the_next_sessions_schedule_and_exits_0(keys, tmp_path):
    handle = start_sim()
    try:
        done = run_scheduler(["--check"], {**handle.broker_env(), "REDIS_URL": redis_url(),
                                           "FL_NAMESPACE": keys.ns}, tmp_path)
    finally:
        handle.stop()
    assert done.returncode == 0, done.stderr
    assert "scheduler: ok" in done.stdout
    assert f"trade   -> {keys.ns}-trader  services.trader.jobs.trade_signals" in done.stdout


def test_check_with_a_bad_time_prints_one_line_and_exits_2(tmp_path):
    done = run_scheduler(["--check"], {"FL_SCHEDULE_RANK": "25:00", "ALPACA_API_KEY": "k",
                                       "ALPACA_SECRET_KEY": "s"}, tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "scheduler: error: FL_SCHEDULE_RANK: not a schedule time: '25:00' (use HH:MM New York time, open+N "
        "or close+N minutes, or empty to turn the job off)"]


def test_every_scheduled_job_is_a_function_of_the_package_callable_without_arguments():
    import importlib
    import inspect

    from services.scheduler.schedule import JOBS

    for job in JOBS:
        module, _, name = job.func.rpartition(".")
        function = getattr(importlib.import_module(module), name)
        required = [p for p in inspect.signature(function).parameters.values() if p.default is p.empty]
        assert required == [], job.func


def test_the_loop_enqueues_when_the_time_comes_and_stops_on_request(redis_client, keys, market):
    import threading
    import time

    moments = iter([ny(2024, 3, 5, 9, 34, 59)] * 2 + [ny(2024, 3, 5, 9, 35, 1)] * 10_000)
    runner = Scheduler(connect_rq(redis_url()), keys, market, PLAN, clock=lambda: next(moments))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, 0.05), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not queued(keys, "trader") and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert queued(keys, "trader") == [f"{keys.ns}-sched-trade-20240305-0935"]


def test_the_loop_keeps_running_while_the_broker_does_not_answer(redis_client, keys, caplog):
    import threading

    from shared.broker import make_executor
    from shared.config import BrokerSettings

    dead = make_executor(BrokerSettings(_env_file=None, ALPACA_API_KEY="k", ALPACA_SECRET_KEY="s",
                                        ALPACA_ENDPOINT="http://127.0.0.1:9", FL_BROKER_TIMEOUT_SECONDS=1))
    runner = Scheduler(connect_rq(redis_url()), keys, dead, PLAN, clock=lambda: ny(2024, 3, 5, 9, 35))
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop, 0.05), daemon=True)
    thread.start()
    thread.join(timeout=3)
    assert thread.is_alive()  # still looking, not crashed
    stop.set()
    thread.join(timeout=30)
    dead.close()
    assert queued(keys, "trader") == []
    assert sum(r.getMessage() == "scheduler_look_failed" for r in caplog.records) >= 2


def test_session_relative_times_follow_the_open_and_an_early_close():
    plan = SchedulerSettings(_env_file=None, FL_SCHEDULE_TRADE="open+5", FL_SCHEDULE_REPORT="close-30").plan()
    normal, early = entries_on(date(2024, 7, 2), plan), entries_on(date(2024, 7, 3), plan)  # July 3: 13:00 close
    assert at_of(normal, "trade") == [ny(2024, 7, 2, 9, 35)] and at_of(early, "trade") == [ny(2024, 7, 3, 9, 35)]
    assert at_of(normal, "report") == [ny(2024, 7, 2, 15, 30)] and at_of(early, "report") == [ny(2024, 7, 3, 12, 30)]


def test_a_look_leaves_the_brokers_sessions_in_redis_for_the_managers_tick(redis_client, keys, market):
    from shared.market import sessions

    scheduler(redis_client, keys, market).tick(ny(2024, 3, 4, 9, 36))  # a Monday
    not_asked = None  # a cache miss would have to ask this "broker", and fail
    monday = sessions.session_on(not_asked, redis_client, keys, date(2024, 3, 4))
    assert monday == market.get_calendar(date(2024, 3, 4), date(2024, 3, 4))[0]
    assert sessions.session_on(not_asked, redis_client, keys, date(2024, 3, 3)) is None  # Sunday: closed
    assert sessions.in_session(not_asked, redis_client, keys, ny(2024, 3, 4, 15, 59))
    assert not sessions.in_session(not_asked, redis_client, keys, ny(2024, 3, 4, 16, 0))
    assert 0 < redis_client.ttl(keys.market_session(date(2024, 3, 4))) <= sessions.TTL_SECONDS
