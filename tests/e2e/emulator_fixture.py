"""Pytest fixture that puts sources A and C on loopback (`source_emulator`, in-process, on a free port)."""

from __future__ import annotations

import pytest

from local.emulator import Emulator, EmulatorConfig


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
