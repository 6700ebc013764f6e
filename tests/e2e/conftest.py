"""Real processes on loopback: functions under functions-framework, sharing one SQLite file."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import requests

from local.run_local import start_function
from local.run_local import stop as stop_functions
from tests.conftest import ROOT
from tests.e2e.emulator_fixture import source_emulator  # noqa: F401 (fixture)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """Function processes started on demand; every one is stopped at teardown."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str) -> str:
        port = free_port()
        self.processes.append(start_function(name, "127.0.0.1", port, self.env))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/health", timeout=2)
                return url
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.processes[-1].poll() is not None:
                    raise RuntimeError(f"{name} did not start on {url}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_functions(self.processes)


def stage_env(tmp_path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "MONGODB_URI"}
    env.update({"SQLITE_PATH": str(tmp_path / "etl.sqlite3"),
                "SOURCE_B_PATH": str(tmp_path / "Historical_Data.csv"),
                "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT), **extra})
    return env


@pytest.fixture
def stack(tmp_path):
    running = Stack(stage_env(tmp_path, CSV_CHUNK_ROWS="50"))
    yield running
    running.stop()


def etl_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "common.cli", *args]
