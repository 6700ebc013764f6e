"""The shared limiter: one budget per source across limiter instances (processes), adaptive after 429s."""

from __future__ import annotations

import pytest

from common.clock import Deadline
from common.errors import ConfigError
from common.sources.ratelimit import RateSpec, SourceLimiter, WindowFull, parse_rate
from common.store.sqlite import SqliteStore
from tests.unit.test_http_sources import SleepingClock


@pytest.mark.parametrize("text, spec", [
    ("10/1m", RateSpec(10, 60_000)), ("3/1m", RateSpec(3, 60_000)), ("5/2s", RateSpec(5, 2_000)),
    ("100/1h", RateSpec(100, 3_600_000)), ("7/m", RateSpec(7, 60_000)),
])
def test_parse_rate(text, spec):
    assert parse_rate(text) == spec


def test_parse_rate_rejects_garbage():
    with pytest.raises(ConfigError, match="X must look like"):
        parse_rate("5 per second", "X")


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "etl.sqlite3"))


def max_in_any_window(stamps: list[float], window: float) -> int:
    return max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)


def test_two_limiters_share_one_budget_and_use_it(store):
    clock = SleepingClock()
    first, second = (SourceLimiter(store, "source_c", RateSpec(5, 2000), clock, clock.sleep) for _ in range(2))
    deadline = Deadline(clock, 10_000)
    granted = []
    for turn in range(40):
        (first if turn % 3 else second).acquire(deadline)
        granted.append(clock())
    assert max_in_any_window(granted, 2.0) <= 5
    elapsed = granted[-1] - granted[0]
    assert 40 / (elapsed / 2.0 + 1) / 5 >= 0.9  # >= 90 % of the allowed rate while there is work


def test_other_sources_have_their_own_budget(store):
    clock = SleepingClock()
    deadline = Deadline(clock, 100)
    a = SourceLimiter(store, "source_a", RateSpec(1, 60_000), clock, clock.sleep)
    c = SourceLimiter(store, "source_c", RateSpec(1, 60_000), clock, clock.sleep)
    a.acquire(deadline)
    c.acquire(deadline)
    assert clock.sleeps == []


def test_a_slot_past_the_deadline_is_refused_not_waited_for(store):
    clock = SleepingClock()
    limiter = SourceLimiter(store, "source_c", RateSpec(1, 60_000), clock, clock.sleep)
    deadline = Deadline(clock, 30)
    limiter.acquire(deadline)
    with pytest.raises(WindowFull):
        limiter.acquire(deadline)
    assert clock.sleeps == []


def test_429_halves_the_rate_blocks_everyone_and_recovers_additively(store):
    clock = SleepingClock()
    one = SourceLimiter(store, "source_a", RateSpec(10, 60_000), clock, clock.sleep)
    other = SourceLimiter(store, "source_a", RateSpec(10, 60_000), clock, clock.sleep)
    assert one.penalize(retry_after_s=5) == 0.5
    assert other.factor() == 0.5
    other.acquire(Deadline(clock, 100))
    assert clock.sleeps == [5]  # the other process honoured the Retry-After too
    clock.advance(60)
    assert other.factor() == pytest.approx(0.6, abs=0.01)
    assert one.penalize(0) == pytest.approx(0.3, abs=0.01)
    for _ in range(10):
        one.penalize(0)
    assert one.factor() == 0.1  # never below MIN_FACTOR
    clock.advance(600)
    assert one.factor() == 1.0
