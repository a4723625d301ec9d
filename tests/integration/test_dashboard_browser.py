"""rq-dashboard as the operator sees it: started like the compose file starts it (`--json`, basic
auth) against a Redis holding the project's queues and jobs; a request without the login is
refused; headless Chromium logs in and shows the queues; a screenshot is kept at
`reports/test-artifacts/dashboard.png` (gitignored) and its path listed after the run.

Chromium comes from `scripts/ensure_chromium.sh`. Missing: the test fails under CI=true, else skips.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from conftest import redis_url
from needs import chromium_path

from shared import job_table
from shared.bus import SERVICES, connect_rq
from shared.queues import enqueue

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
USER = "operator"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def project_jobs(redis_client, keys):
    """Two jobs waiting on each of the project's queues, as the scheduler would leave them."""
    client = connect_rq(redis_url())
    ids = {}
    for service in SERVICES:
        ids[service] = [enqueue(client, keys, service, sorted(job_table.allowed(service))[0],
                                job_id=f"{keys.ns}-dash-{service}-{n}").id for n in range(2)]
    yield ids
    # RQ registers queue names in a server-wide set the namespace clean-up does not touch.
    client.srem("rq:queues", *(f"rq:queue:{keys.queue(s)}" for s in SERVICES))
    client.close()


@pytest.fixture
def dashboard(project_jobs):
    port, password = free_port(), secrets.token_urlsafe(12)
    env = {**os.environ, "RQ_DASHBOARD_REDIS_URL": redis_url(), "RQ_DASHBOARD_USERNAME": USER,
           "RQ_DASHBOARD_PASSWORD": password}
    executable = Path(sys.executable).parent / "rq-dashboard"
    process = subprocess.Popen([str(executable), "--bind", "127.0.0.1", "--port", str(port), "--json"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            requests.get(base, timeout=2)
            break
        except requests.ConnectionError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"rq-dashboard did not start: {process.communicate(timeout=10)[0][-2000:]}")
            time.sleep(0.2)
    yield base, password
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_dashboard_refuses_requests_without_the_login(dashboard):
    base, password = dashboard
    assert requests.get(f"{base}/0/view/queues", timeout=10).status_code == 401
    assert requests.get(f"{base}/0/view/queues", auth=(USER, "wrong"), timeout=10).status_code == 401
    assert requests.get(f"{base}/0/view/queues", auth=(USER, password), timeout=10).status_code == 200


def test_dashboard_counts_the_projects_queued_jobs_and_reads_their_json_arguments(dashboard, keys, project_jobs):
    base, password = dashboard
    queues = requests.get(f"{base}/0/data/queues.json", auth=(USER, password), timeout=10).json()["queues"]
    counts = {q["name"]: q["count"] for q in queues}
    assert {keys.queue(s): counts.get(keys.queue(s)) for s in SERVICES} == {keys.queue(s): 2 for s in SERVICES}
    # The job's data is read with the JSON serializer (--json): a pickle reader would fail here.
    job = requests.get(f"{base}/0/data/job/{project_jobs['trader'][0]}.json", auth=(USER, password), timeout=10)
    assert job.status_code == 200
    assert job.json()["description"].startswith(f"{job_table.TRADE_SIGNALS}(")


def test_the_compose_healthcheck_sees_the_dashboard_up(dashboard):
    base, _ = dashboard
    done = subprocess.run([sys.executable, str(ROOT / "docker" / "http_check.py"), f"{base}/"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


class Browser:
    """Headless Chromium driven over the DevTools protocol. It answers the dashboard's basic-auth
    challenge like a person typing the login (Fetch.authRequired): Chromium refuses credentials
    embedded in the URL (net::ERR_INVALID_AUTH_CREDENTIALS)."""

    def __init__(self, binary: str, profile: Path, login: tuple[str, str]):
        self.login = login
        self.process = subprocess.Popen([binary, *CHROMIUM_FLAGS, "--window-size=1280,900",
                                         "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
        self.ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")

    def open(self, url: str, ready: str, before_shot: str = "0", timeout: float = 60) -> tuple[str, bytes]:
        """Load `url`, wait until the JS expression `ready` is true, run `before_shot`; return the DOM
        and a PNG."""
        import asyncio
        import base64
        import json

        import websockets

        async def session() -> tuple[str, bytes]:
            async with websockets.connect(self.ws_url, max_size=64 * 1024 * 1024) as ws:
                ids = iter(range(1, 1_000_000))
                replies: dict[int, dict] = {}

                async def send(method: str, **params) -> int:
                    msg_id = next(ids)
                    await ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    return msg_id

                async def call(method: str, **params) -> dict:
                    msg_id = await send(method, **params)
                    while msg_id not in replies:
                        await pump()
                    reply = replies.pop(msg_id)
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})

                async def pump() -> None:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout))
                    if "id" in message:
                        replies[message["id"]] = message
                    elif message.get("method") == "Fetch.authRequired":
                        user, password = self.login
                        await send("Fetch.continueWithAuth", requestId=message["params"]["requestId"],
                                   authChallengeResponse={"response": "ProvideCredentials",
                                                          "username": user, "password": password})
                    elif message.get("method") == "Fetch.requestPaused":
                        await send("Fetch.continueRequest", requestId=message["params"]["requestId"])

                await call("Fetch.enable", handleAuthRequests=True, patterns=[{"urlPattern": "*"}])
                await call("Page.enable")
                await call("Page.navigate", url=url)
                deadline = time.monotonic() + timeout
                while True:
                    state = await call("Runtime.evaluate", expression=f"Boolean({ready})", returnByValue=True)
                    if state["result"].get("value"):
                        break
                    if time.monotonic() > deadline:
                        break
                    await asyncio.sleep(0.2)
                await call("Runtime.evaluate", expression=before_shot)
                await asyncio.sleep(0.3)
                dom = await call("Runtime.evaluate", expression="document.documentElement.outerHTML",
                                 returnByValue=True)
                shot = await call("Page.captureScreenshot", format="png")
                return dom["result"]["value"], base64.b64decode(shot["data"])

        return asyncio.run(session())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def test_chromium_logs_in_and_shows_the_projects_queues(dashboard, keys, tmp_path, keep_artifact):
    binary = chromium_path()
    base, password = dashboard
    names = [keys.queue(s) for s in SERVICES]
    browser = Browser(binary, tmp_path / "profile", (USER, password))
    try:
        # The queue table is filled by the page's script from queues.json: wait for our last queue.
        dom, png = browser.open(f"{base}/0/view/queues",
                                ready=f"document.body && document.body.innerText.includes({names[-1]!r})",
                                # Other tests' queues share the server: bring ours into the picture.
                                before_shot=f"[...document.querySelectorAll('td')].find(td => "
                                            f"td.innerText.includes({names[0]!r})).scrollIntoView()")
    finally:
        browser.close()
    missing = [name for name in names if name not in dom]
    assert missing == [], f"queues not shown: {missing}; page: {dom[:1500]}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "dashboard.png"
    screenshot.write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(png) > 10_000  # a blank or error page compresses to a few KB
    keep_artifact("dashboard screenshot", screenshot)
