"""Pytest fixtures that put sources A and C on loopback: in-process (`source_emulator`) or as a process of its own
(`source_emulator_process`), as the e2e tests run everything else.

    from tests.e2e.emulator_fixture import source_emulator, source_emulator_process  # noqa: F401 (fixtures)
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from local.emulator import Emulator, EmulatorConfig

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def source_emulator():
    """Factory: `source_emulator(rate_c=RateLimit.parse("3/1m"), ...)` starts an in-process emulator on a free port
    with those EmulatorConfig overrides; every one is stopped at teardown."""
    started: list[Emulator] = []

    def start(**overrides) -> Emulator:
        started.append(Emulator(EmulatorConfig(**overrides)).start())
        return started[-1]

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def source_emulator_process():
    """Factory: `source_emulator_process("--rate-c", "3/1m")` runs `python -m local.emulator --port 0 ...` and
    returns its base URL; every process gets SIGTERM at teardown."""
    processes: list[subprocess.Popen] = []

    def start(*args: str) -> str:
        process = subprocess.Popen([sys.executable, "-m", "local.emulator", "--port", "0", *args], cwd=ROOT,
                                   stdout=subprocess.PIPE, text=True)
        processes.append(process)
        first_line = process.stdout.readline()
        if not (match := re.search(r"source A: (http://[^/\s]+)", first_line)):
            raise RuntimeError(f"the emulator did not start: {first_line!r}")
        return match[1]

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
