"""One function as `make run` serves it (local/function_server.py): gunicorn's worker timeout follows the invocation
budget, and its logs are JSON lines with the function's name, the request's id and the run's id, no secret in them.

The timeout case does not wait 30 s: it hands the server a 2 s timeout (as a platform or an old default might) and
the sync worker (THREADS=1, the worker gunicorn's timeout kills), and runs a real stage — extract_source_a against
an emulator answering 4 s late — that must finish, because the timeout is sized to the budget instead."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jwt
import pytest
import requests

from common.config import Settings
from local.function_server import TIMEOUT_ENV, server_env, worker_timeout_s
from local.run_local import start_function, stop
from tests.e2e.conftest import free_port, stage_env

API_KEY = "sk-live-0123456789abcdef"
JWT_SECRET = "s" * 48


def test_the_worker_timeout_is_the_budget_plus_the_lease_ttl_plus_slack():
    assert worker_timeout_s(Settings(invocation_budget_s=540, lease_ttl_s=20)) == 590
    assert worker_timeout_s(Settings(invocation_budget_s=1800.5, lease_ttl_s=20)) == 1851
    assert server_env(Settings(invocation_budget_s=60, lease_ttl_s=20), {TIMEOUT_ENV: "2"})[TIMEOUT_ENV] == "110"
    assert server_env(Settings(invocation_budget_s=60, lease_ttl_s=20), {TIMEOUT_ENV: "900"})[TIMEOUT_ENV] == "900"
    assert server_env(Settings(), {TIMEOUT_ENV: "junk"})[TIMEOUT_ENV] == "590"


class Served:
    """One function process with its stderr in a file."""

    def __init__(self, name: str, env: dict[str, str], err_path) -> None:
        self.err_path, port = err_path, free_port()
        with open(err_path, "w") as err:
            self.process = start_function(name, "127.0.0.1", port, env, stderr=err)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(self.url + "/", timeout=2)
                return
            except requests.ConnectionError:
                assert time.monotonic() < deadline and self.process.poll() is None, self.stderr()
                time.sleep(0.1)

    def stop(self) -> None:
        stop([self.process])

    def stderr(self) -> str:
        return self.err_path.read_text()


@pytest.fixture
def slow_source_a(tmp_path, source_emulator):
    """extract_source_a under the function server, its source answering 4 s late."""
    emulator = source_emulator(snapshot_every=0, coins=20)
    emulator.set_chaos("a", slow_ms=4000, slow_count=10)
    env = stage_env(tmp_path, SOURCE_A_URL=f"{emulator.url}/v1/tickers", SOURCE_A_RATE="100/1s",
                    SOURCE_A_API_KEY=API_KEY, JWT_SECRET=JWT_SECRET, HTTP_TIMEOUT_S="15", HTTP_MAX_ATTEMPTS="1",
                    INVOCATION_BUDGET_S="20", LOG_LEVEL="INFO", THREADS="1", **{TIMEOUT_ENV: "2"})
    served = Served("extract_source_a", env, tmp_path / "stderr.txt")
    try:
        yield served
    finally:
        served.stop()


def test_a_stage_longer_than_the_inherited_worker_timeout_is_not_killed(slow_source_a):
    served = slow_source_a
    started = time.monotonic()
    response = requests.post(served.url + "/", timeout=30)
    took = time.monotonic() - started
    assert response.status_code == 200, (response.text[:300], served.stderr()[-3000:])
    assert response.json()["run"]["status"] == "succeeded" and took >= 4
    environ = Path(f"/proc/{served.process.pid}/environ").read_bytes().split(b"\0")
    assert f"{TIMEOUT_ENV}=70".encode() in environ  # 20 s budget + 20 s lease TTL + 30 s, not the 2 s given
    served.stop()
    assert "WORKER TIMEOUT" not in served.stderr()


def test_function_logs_are_json_lines_with_service_request_and_run_ids_and_no_secrets(slow_source_a):
    served = slow_source_a
    token = jwt.encode({"sub": "someone"}, JWT_SECRET, algorithm="HS256")
    response = requests.post(served.url + "/", headers={"X-Request-ID": "req-e2e-1", "Authorization": f"Bearer {token}"},
                             timeout=30)
    run_id = response.json()["run"]["run_id"]
    served.stop()
    err = served.stderr()
    lines = [line for line in err.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line, gunicorn's included, is one JSON object
    assert entries and all(entry["service"] == "extract_source_a" for entry in entries)
    in_request = [entry for entry in entries if entry.get("request_id") == "req-e2e-1"]
    assert any(entry.get("run_id") == run_id for entry in in_request), entries
    for secret in (API_KEY, JWT_SECRET, token):
        assert secret not in err
