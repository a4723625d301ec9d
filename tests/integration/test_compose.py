"""docker-compose.yml and the Dockerfile, tested without a Docker engine: the file is valid Compose,
publishes nothing beyond 127.0.0.1, uses only variables documented in .env.example, and every
container's command exists in the package and passes its own healthcheck against a real Redis and
a simulator process."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import redis_url
from simhelpers import ROOT, start_sim

COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
OUR_IMAGE = "factoryline:latest"
PILLARS = {"scanner", "ranker", "trader", "streamer", "manager", "manager-worker", "reporter", "scheduler",
           "notifier"}


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def schema_errors(document: dict) -> list[str]:
    """Errors against the vendored Compose Specification schema. With jsonschema installed, the
    full schema; without it, a minimal check of top-level and service keys (see the report)."""
    schema = json.loads(SCHEMA.read_text())
    try:
        import jsonschema
    except ModuleNotFoundError:
        allowed_top = set(schema["properties"])
        allowed_service = set(schema["definitions"]["service"]["properties"])
        errors = [f"unknown top-level key {k!r}" for k in document if k not in allowed_top and not k.startswith("x-")]
        for name, service in document.get("services", {}).items():
            errors += [f"services.{name}: unknown key {k!r}" for k in service
                       if k not in allowed_service and not k.startswith("x-")]
        return errors
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]


def our_services(document: dict) -> dict[str, dict]:
    return {name: s for name, s in document["services"].items() if s.get("image") == OUR_IMAGE}


# -- the file itself ----------------------------------------------------------------------------------


def test_compose_file_validates_against_the_compose_specification():
    assert schema_errors(compose()) == []


def test_the_schema_check_rejects_a_misspelt_key():
    broken = copy.deepcopy(compose())
    broken["services"]["trader"]["restrat"] = "always"
    assert any("restrat" in error for error in schema_errors(broken))


def test_one_container_per_pillar_plus_redis_dashboard_and_the_simulator_under_its_profile():
    services = compose()["services"]
    assert set(services) == PILLARS | {"redis", "rq-dashboard", "sim", "prometheus"}
    assert services["sim"]["profiles"] == ["sim"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert all("profiles" not in s for name, s in services.items() if name not in {"sim", "prometheus"})


def test_the_monitoring_profile_scrapes_every_pillar_on_its_metrics_port():
    document = compose()
    prometheus = document["services"]["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:")
    assert "./docker/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    scrape = yaml.safe_load((ROOT / "docker" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for group in job["static_configs"] for t in group["targets"]}
    for name in PILLARS:
        port = document["services"][name]["environment"]["FL_METRICS_PORT"]
        assert int(port) > 0, name
        assert document["services"][name]["environment"]["FL_METRICS_ADDR"] == "0.0.0.0", name
        assert f"{name}:{port}" in targets, name


def test_every_published_port_is_bound_to_loopback_only_on_a_port_the_user_can_set():
    # Fixed host ports clashed with a local Redis on 6379: each is a setting, defaulting as before.
    published = {name: s.get("ports", []) for name, s in compose()["services"].items()}
    assert published == {**{name: [] for name in published},
                         "redis": ["127.0.0.1:${FL_REDIS_PORT:-6379}:6379"],
                         "rq-dashboard": ["127.0.0.1:${FL_DASHBOARD_PORT:-9181}:9181"],
                         "sim": ["127.0.0.1:${FL_SIM_PORT:-8080}:8080"],
                         "prometheus": ["127.0.0.1:${FL_PROMETHEUS_PORT:-9090}:9090"]}


def test_the_host_port_settings_are_known_names_so_env_holds_them_without_a_warning():
    from shared import config

    assert {"FL_REDIS_PORT", "FL_DASHBOARD_PORT", "FL_SIM_PORT", "FL_PROMETHEUS_PORT"} <= config.known_names()


def test_every_app_container_runs_under_an_init_that_passes_sigterm_on():
    # Without it rq-dashboard and the simulator (PID 1) ignored SIGTERM: every stop took 30 s and a SIGKILL.
    for name, service in our_services(compose()).items():
        assert service.get("init") is True, name


def test_healthchecks_probe_often_enough_to_report_healthy_within_15_seconds():
    for name, service in compose()["services"].items():
        check = service.get("healthcheck")
        if check and name != "prometheus":
            assert int(check["interval"].rstrip("s")) <= 10, name


def test_simulator_mode_lives_in_env_so_later_commands_keep_it():
    # `--scale trader=2` without the sim variables on its command line recreated 8 containers against
    # Alpaca paper; the documented way keeps them in .env, which every compose command reads.
    example = (ROOT / ".env.example").read_text()
    for line in ("# COMPOSE_PROFILES=sim", "# ALPACA_ENDPOINT=http://sim:8080", "# ALPACA_API_KEY=sim-key",
                 "# ALPACA_SECRET_KEY=sim-secret"):
        assert line in example.splitlines()
        assert line.lstrip("# ") in COMPOSE.read_text()
    for doc in (ROOT / "README.md", ROOT / "docs" / "operations.md", COMPOSE):
        assert "ALPACA_ENDPOINT=http://sim:8080 ALPACA_API_KEY" not in doc.read_text(), doc


def test_redis_persists_with_append_only_needs_a_password_and_has_a_healthcheck():
    redis_service = compose()["services"]["redis"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--requirepass") + 1].startswith("${REDIS_PASSWORD:?")
    assert "redis-data:/data" in redis_service["volumes"]
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]


def test_every_app_container_restarts_has_a_healthcheck_and_reaches_redis_with_the_password():
    for name, service in our_services(compose()).items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][0] == "CMD", name
        assert service["environment"].get("REDIS_URL", "").startswith("redis://:${REDIS_PASSWORD:?") or \
            name in {"rq-dashboard", "sim"}, name


def test_pillars_keep_scanner_logs_and_reports_on_volumes_and_rotate_their_own_logs():
    document = compose()
    assert {"scanner-logs", "reports", "redis-data"} <= set(document["volumes"])
    for name in PILLARS:
        service = document["services"][name]
        assert "scanner-logs:/app/NIGHTLY_SCANNER" in service["volumes"], name
        assert "reports:/app/reports" in service["volumes"], name
        assert service["environment"]["FL_SIGNALS_DIR"].startswith("/app/NIGHTLY_SCANNER/"), name
        assert service["environment"]["FL_REPORTS_DIR"] == "/app/reports", name
        assert service["logging"]["options"]["max-size"] == "10m", name


def test_dashboard_reads_json_jobs_behind_basic_auth_on_loopback():
    dashboard = compose()["services"]["rq-dashboard"]
    env = dashboard["environment"]
    assert env["RQ_DASHBOARD_JSON"] == "1"
    assert env["RQ_DASHBOARD_USERNAME"].startswith("${RQ_DASHBOARD_USERNAME:?")
    assert env["RQ_DASHBOARD_PASSWORD"].startswith("${RQ_DASHBOARD_PASSWORD:?")
    assert env["RQ_DASHBOARD_REDIS_URL"].startswith("redis://:${REDIS_PASSWORD:?")


def test_every_variable_the_compose_file_uses_is_documented_in_env_example():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    documented = set(re.findall(r"^([A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), flags=re.M))
    assert sorted(used - documented) == []


def test_dockerfile_builds_from_python_311_slim_and_installs_the_project_and_the_dashboard():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.splitlines()[[i for i, line in enumerate(dockerfile.splitlines())
                                    if line.startswith("FROM")][0]] == "FROM python:3.11-slim"
    assert "ARG EXTRAS=dashboard,sim" in dockerfile
    assert "pip install -r /tmp/build/requirements.txt" in dockerfile
    assert "pip install --no-deps --no-build-isolation ." in dockerfile
    # The simulator container runs `python -m sim`: the image carries the sim extra and its package.
    copied = {line.split()[1] for line in dockerfile.splitlines() if line.startswith("COPY ")}
    assert {"shared", "services", "sim", "demo"} <= copied
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repo"


def test_the_dependencies_install_before_any_code_is_copied():
    # A one-line comment change in shared/ must reuse the installed dependencies (a 213 MB layer).
    instructions = (ROOT / "Dockerfile").read_text().replace("\\\n", " ").splitlines()
    lines = [line for line in instructions if line.startswith(("COPY", "RUN"))]
    install = next(i for i, line in enumerate(lines) if "pip install -r" in line)
    assert all(not line.startswith("COPY") or ("shared" not in line and "services" not in line)
               for line in lines[:install])
    copied = " ".join(lines[:install])
    assert "pyproject.toml" in copied and "docker/requirements.py" in copied


def test_the_image_requirements_are_pyprojects_dependencies_and_the_chosen_extras():
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), str(ROOT / "pyproject.toml"),
                           "dashboard"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split()
    assert set(pyproject["project"]["dependencies"]) <= set(lines)
    assert "rq-dashboard==0.9.0" in lines and "six==1.17.0" in lines
    assert not any(line.startswith("pytest") for line in lines)
    bad = subprocess.run([sys.executable, str(ROOT / "docker" / "requirements.py"), str(ROOT / "pyproject.toml"),
                          "dashbord"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and "unknown extra(s) dashbord" in bad.stderr and "Traceback" not in bad.stderr


# -- every command exists and its self-check passes ------------------------------------------------


def python_module(command: list[str]) -> str | None:
    return command[2] if command[:2] == ["python", "-m"] else None


def test_every_python_service_command_names_a_module_of_the_package():
    missing = [f"{name}: {python_module(s['command'])}" for name, s in our_services(compose()).items()
               if python_module(s["command"]) and importlib.util.find_spec(python_module(s["command"])) is None]
    assert missing == []


def test_each_pillars_healthcheck_is_its_own_command_with_check():
    # Through docker/health.py, which runs `python -m <module> --check` (and remembers a success).
    for name in PILLARS:
        service = compose()["services"][name]
        assert service["command"][:2] == ["python", "-m"], name
        assert service["healthcheck"]["test"] == ["CMD", "python", "docker/health.py", service["command"][2]], name


def test_the_dashboard_command_is_installed():
    command = compose()["services"]["rq-dashboard"]["command"]
    executable = Path(sys.executable).parent / command[0]
    done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--json" in done.stdout


@pytest.fixture(scope="module")
def sim_process():
    handle = start_sim(process=True)
    yield handle
    handle.stop()


def service_env(sim_process, tmp_path, namespace: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "FL_", "REDIS_URL", "RQ_"))}
    return {**base, **sim_process.broker_env(), "REDIS_URL": redis_url(), "FL_NAMESPACE": namespace,
            "FL_SIGNALS_DIR": str(tmp_path), "PYTHONPATH": str(ROOT),
            # docker/health.py's remembered successes: this test's own, never another run's.
            "TMPDIR": str(tmp_path)}


def test_every_healthcheck_passes_against_a_real_redis_and_a_simulator_process(sim_process, tmp_path, namespace):
    """What the containers' healthchecks run, as real subprocesses (python from this venv; the sim's
    URL instead of the container's loopback)."""
    env = service_env(sim_process, tmp_path, namespace)
    runs = {}
    for name, service in our_services(compose()).items():
        test = service["healthcheck"]["test"][1:]
        if name == "rq-dashboard":
            continue  # needs a running dashboard: tests/integration/test_dashboard_browser.py runs this check
        argv = [sys.executable if part == "python" else part for part in test]
        argv = [str(ROOT / part) if part.startswith("docker/") else part for part in argv]
        argv = [part.replace("http://127.0.0.1:8080", sim_process.base_url) for part in argv]
        runs[name] = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
    failures = {}
    for name, process in runs.items():
        out, err = process.communicate(timeout=120)
        if process.returncode != 0:
            failures[name] = f"exit {process.returncode}: {(err or out).strip()[-300:]}"
    assert failures == {}


def test_the_health_probe_remembers_a_success_for_a_minute_and_never_a_failure(sim_process, tmp_path, namespace):
    env = service_env(sim_process, tmp_path, namespace)
    probe = [sys.executable, str(ROOT / "docker" / "health.py"), "services.ranker"]
    first = subprocess.run(probe, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "ranker: ok" in first.stdout
    broken = {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}
    cached = subprocess.run(probe, env=broken, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (cached.returncode, cached.stdout) == (0, "")      # within the minute: not checked again
    for stamp in tmp_path.glob("factoryline-health-*.ok"):
        stamp.unlink()
    failed = subprocess.run(probe, env=broken, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 2 and "ranker: error" in failed.stderr
    again = subprocess.run(probe, env=broken, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2                               # a failure is not remembered


# -- each container gets only the secrets it uses (docs/operations.md, "Threat model") -----------------

#: secret -> the containers that get it (in their environment, or inside a URL there).
SECRETS_BY_CONTAINER = {
    "ALPACA_API_KEY": PILLARS - {"ranker", "notifier"},
    "ALPACA_SECRET_KEY": PILLARS - {"ranker", "notifier"},
    "FL_SIGNALS_HMAC_KEY": {"ranker", "trader"},
    "REDIS_PASSWORD": PILLARS | {"redis", "rq-dashboard"},
    "RQ_DASHBOARD_USERNAME": {"rq-dashboard"},
    "RQ_DASHBOARD_PASSWORD": {"rq-dashboard"},
    "FL_SIM_API_KEY": {"sim"},
    "FL_SIM_SECRET_KEY": {"sim"},
    "FL_NOTIFY_URLS": {"notifier"},
    "FL_REDIS_SENTINEL_PASSWORD": PILLARS,
}


def _settings_groups():
    from test_config import _settings_groups

    return _settings_groups()


def _secret_fields() -> set[str]:
    from pydantic import SecretStr

    return {name for group in _settings_groups() for name, field in group.model_fields.items()
            if SecretStr in (getattr(field.annotation, "__args__", None) or (field.annotation,))}


def test_no_container_reads_the_whole_env_file():
    document = compose()
    assert [name for name, s in document["services"].items() if "env_file" in s] == []
    assert all("env_file" not in value for key, value in document.items() if key.startswith("x-"))


def test_each_container_gets_only_the_secrets_it_uses():
    assert _secret_fields() <= set(SECRETS_BY_CONTAINER), "a new secret setting: say here who gets it"
    for secret, expected in SECRETS_BY_CONTAINER.items():
        holders = {name for name, service in compose()["services"].items()
                   if secret in service.get("environment", {})
                   or any(f"${{{secret}" in str(value) for value in service.get("environment", {}).values())
                   or any(f"${{{secret}" in str(part) for part in service.get("command", []))}
        assert holders == expected, secret
    for name in ("rq-dashboard", "sim"):
        env = compose()["services"][name]["environment"]
        assert not [k for k in env if k.startswith("ALPACA_")], name
    assert "REDIS_URL" not in compose()["services"]["sim"]["environment"]


def test_every_setting_reaches_the_pillars_and_the_simulator_its_own():
    fields = {name for group in _settings_groups() for name in group.model_fields}
    secrets = set(SECRETS_BY_CONTAINER)
    sim_fields = {name for name in fields if name.startswith("FL_SIM_")}
    services = compose()["services"]
    for name in PILLARS:
        assert sorted(fields - sim_fields - secrets - set(services[name]["environment"])) == [], name
    assert set(services["sim"]["environment"]) == sim_fields - {"FL_SIM_HOST", "FL_SIM_PORT"}  # the command sets those
