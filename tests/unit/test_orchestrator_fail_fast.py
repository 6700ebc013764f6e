"""A source whose host does not resolve fails at once with the reason: a pass must not wait a minute of retries
for a name that will not resolve (offline `make run` left the API empty for ~65 s)."""

from __future__ import annotations

import socket

import pytest
import requests
import responses
from urllib3.exceptions import MaxRetryError, NameResolutionError

from common.config import Settings
from common.pipeline import run_extract
from common.wiring import Wiring, build_store
from tests.conftest import SleepingClock

C_URL = "https://c.test/api/v3/coins/markets"



@pytest.fixture
def clock():
    return SleepingClock()


@pytest.fixture
def wiring(tmp_path, clock):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_c_url=C_URL, source_c_rate="100/1s",
                        http_max_attempts=5)
    store = build_store(settings, clock)
    yield Wiring(settings=settings, store=store, clock=clock, sleep=clock.sleep)
    store.close()


def unresolvable(host: str) -> requests.ConnectionError:
    """What requests raises when the resolver says the name does not exist (the chain urllib3 builds)."""
    cause = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    reason = NameResolutionError(host, None, cause)  # type: ignore[arg-type]
    reason.__cause__ = cause
    return requests.ConnectionError(MaxRetryError(None, f"/{host}", reason))  # type: ignore[arg-type]


@responses.activate
def test_a_name_that_does_not_resolve_fails_at_once_with_the_reason(wiring, clock):
    for _ in range(5):
        responses.get(C_URL, body=unresolvable("c.test"))
    run = run_extract("c", wiring)
    assert run.status == "failed"
    assert len(responses.calls) == 1 and clock.sleeps == []  # not retried
    assert run.summary["errors"][0].startswith("source_c: cannot resolve host c.test")
    assert "not retried" in run.summary["errors"][0]


@responses.activate
def test_a_refused_connection_is_still_retried(wiring, clock):
    for _ in range(2):
        responses.get(C_URL, body=requests.ConnectionError("Connection refused"))
    responses.get(C_URL, json=[])
    run = run_extract("c", wiring)
    assert run.status == "succeeded" and len(responses.calls) == 3 and len(clock.sleeps) == 2


def test_a_real_unresolvable_name_fails_without_retries(wiring, clock):
    """The real resolver on a name reserved never to resolve (RFC 6761 `.invalid`)."""
    settings = Settings(sqlite_path=wiring.settings.sqlite_path, source_c_url="http://no-such-host.invalid/x",
                        http_max_attempts=5)
    run = run_extract("c", Wiring(settings=settings, store=wiring.store, clock=clock, sleep=clock.sleep))
    assert run.status == "failed" and clock.sleeps == []
    assert "cannot resolve host no-such-host.invalid" in run.summary["errors"][0]
