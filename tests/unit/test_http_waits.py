"""Waits a server asks for are bounded (issue 7, item 5): a huge Retry-After is capped at MAX_SERVER_WAIT_S for
every process, and the run summary shows what was asked and what was waited."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
import requests
import responses

from common.clock import Deadline
from common.pipeline import run_extract
from common.sources import source_spec
from common.sources.http_client import PageFetcher
from common.config import RateSpec
from common.sources.ratelimit import SourceLimiter
from tests.unit.test_http_sources import C_URL, page_of, pages_requested, wiring  # noqa: F401 (fixture)
from tests.unit.test_http_sources import clock  # noqa: F401 (fixture)

THIRTY_ONE_YEARS = "999999999"


@responses.activate
def test_a_huge_retry_after_is_capped_for_every_process_and_reported(wiring, clock):
    responses.get(C_URL, status=429, headers={"Retry-After": THIRTY_ONE_YEARS})
    responses.get(C_URL, json=page_of(0, 2))
    first = run_extract("c", wiring)  # 3600 s is past this invocation's 540 s: partial, resume later
    assert first.status == "partial"
    state, _ = wiring.store.get_state("adaptive:source_c")
    assert state["blocked_until"] - clock() <= 3600, "every process would wait that long"
    clock.advance(3600)
    second = run_extract("c", wiring)
    assert second.status == "succeeded" and second.rows_in == 2
    [capped] = first.summary["http"]["capped_waits"]
    assert capped == {"page": 1, "requested_s": 999999999.0, "waited_s": 3600.0, "retry_after": THIRTY_ONE_YEARS}
    assert any("capped at 3600" in warning for warning in first.summary["warnings"])
    assert pages_requested() == ["1", "1"]


@responses.activate
def test_a_retry_after_date_decades_ahead_is_capped_and_waited_through_the_injected_sleep(wiring, clock):
    far = format_datetime(datetime(2090, 1, 1, tzinfo=timezone.utc), usegmt=True)
    responses.get(C_URL, status=429, headers={"Retry-After": far})
    responses.get(C_URL, json=page_of(0, 2))
    settings = dataclasses.replace(wiring.settings, invocation_budget_s=10_000)
    run = run_extract("c", dataclasses.replace(wiring, settings=settings))
    assert run.status == "succeeded" and run.rows_in == 2
    assert clock.sleeps == [3600.0]
    assert run.summary["http"]["capped_waits"][0]["waited_s"] == 3600.0
    assert run.summary["http"]["capped_waits"][0]["requested_s"] > 60 * 365 * 86400 * 0.9


@responses.activate
def test_the_cap_is_a_setting_of_the_fetcher(wiring, clock):
    responses.get(C_URL, status=429, headers={"Retry-After": "7200"})
    responses.get(C_URL, json=page_of(0, 2))
    spec = source_spec("c", wiring.settings)
    limiter = SourceLimiter(wiring.store, spec.name, RateSpec(3, 60_000), clock, clock.sleep)
    with requests.Session() as session:
        fetcher = PageFetcher(spec, session, limiter, Deadline(clock, 10_000), clock, clock.sleep,
                              max_server_wait_s=60)
        _, records = fetcher.fetch(1)
    assert len(records) == 2 and clock.sleeps[0] == 60.0  # then the halved rate's own spacing
    assert fetcher.stats.to_dict()["capped_waits"] == [
        {"page": 1, "requested_s": 7200.0, "waited_s": 60.0, "retry_after": "7200"}]


def test_a_block_already_stored_beyond_the_cap_is_honoured_only_up_to_the_cap(wiring, clock):
    """State written before the cap existed (or by a process without it) does not block the source for years."""
    wiring.store.cas_state("adaptive:source_c", {"factor": 0.5, "since": clock(), "blocked_until": clock() + 1e9}, 0)
    limiter = SourceLimiter(wiring.store, "source_c", RateSpec(3, 60_000), clock, clock.sleep, max_blocked_s=3600)
    limiter.acquire(Deadline(clock, 10_000))
    assert clock.sleeps == [pytest.approx(3600.0)]


@responses.activate
def test_max_server_wait_s_reaches_the_fetch_through_the_pipeline(wiring, clock):
    """The setting, not just the default: MAX_SERVER_WAIT_S=120 caps a 2-hour Retry-After at 2 minutes."""
    responses.get(C_URL, status=429, headers={"Retry-After": "7200"})
    responses.get(C_URL, json=page_of(0, 2))
    settings = dataclasses.replace(wiring.settings, max_server_wait_s=120.0)
    run = run_extract("c", dataclasses.replace(wiring, settings=settings))
    assert run.status == "succeeded" and clock.sleeps == [120.0]
    assert run.summary["http"]["capped_waits"][0]["waited_s"] == 120.0
