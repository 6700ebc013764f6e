"""The compose healthchecks are true: each one, exactly as docker-compose resolves it, run against the real process
on loopback (functions under functions-framework, the source emulator) passes while it serves and fails when
nothing answers, so `depends_on: condition: service_healthy` waits for something real."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tests.unit.test_compose import FUNCTIONS, env_of, resolved


@pytest.fixture(scope="module")
def services(tmp_path_factory) -> dict:
    return resolved(tmp_path_factory.mktemp("compose"))["services"]


def run_healthcheck(service: dict, port: int) -> subprocess.CompletedProcess:
    """The service's healthcheck command here, with this machine's python and the service's PORT replaced."""
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", test  # no shell, no curl: the image has python only
    return subprocess.run([sys.executable, *test[2:]], cwd=ROOT, env={"PORT": str(port), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_function_healthcheck_passes_while_it_serves_and_fails_without_it(stack, services, name):
    service = services[name]
    assert env_of(service).get("PORT", "8080") == "8080"  # the port the healthcheck reads inside the container
    url = stack.start(name)
    port = int(url.rsplit(":", 1)[1])
    passed = run_healthcheck(service, port)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    stack.stop()
    assert run_healthcheck(service, port).returncode != 0  # stopped: nothing answers


def test_emulator_healthcheck_passes_while_it_serves(services, source_emulator):
    emulator = services["emulator"]
    command = emulator["command"]
    assert env_of(emulator)["PORT"] == command[command.index("--port") + 1]
    running = source_emulator(port=0)
    port = running.port
    done = run_healthcheck(emulator, port)
    assert done.returncode == 0, done.stdout + done.stderr
    running.stop()
    assert run_healthcheck(emulator, port).returncode != 0
