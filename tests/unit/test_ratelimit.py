"""The shared limiter: one budget per source across limiter instances (processes), adaptive after 429s."""

from __future__ import annotations

import pytest

from common.clock import Deadline
from common.errors import ConfigError
from common.config import RateSpec, parse_rate
from common.sources.ratelimit import SourceLimiter, WindowFull
from common.store.sqlite import SqliteStore
from tests.conftest import SleepingClock


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


# --- a slow store must not bring two requests closer than the budget allows (issue 7, item 4) ---------------------
class StallingStore(SqliteStore):
    """A SqliteStore whose round trips on the limiter's key take `stall_s` of fake time: the clock moves after the
    call did its work (a late answer), as a stalled network or a busy database would."""

    def __init__(self, path: str, clock: SleepingClock) -> None:
        super().__init__(path)
        self.fake_clock = clock
        self.stalls: dict[str, list[float]] = {"get_state": [], "cas_state": []}

    def stall(self, method: str, *seconds: float) -> None:
        self.stalls[method].extend(seconds)

    def _late(self, method: str, key: str) -> None:
        if key.startswith("limiter:") and self.stalls[method]:
            self.fake_clock.advance(self.stalls[method].pop(0))

    def get_state(self, key):
        result = super().get_state(key)
        self._late("get_state", key)
        return result

    def cas_state(self, key, value, expected_version, *args, **kwargs):
        result = super().cas_state(key, value, expected_version, *args, **kwargs)
        self._late("cas_state", key)
        return result


def recorded_stamps(store, source: str = "source_c") -> list[float]:
    state, _ = SqliteStore.get_state(store, f"limiter:{source}")
    return [stamp / 1000 for stamp in (state or {}).get("log", [])]


@pytest.mark.parametrize("method", ["get_state", "cas_state"])
def test_a_store_stall_cannot_bring_two_requests_closer_than_the_budget(tmp_path, method):
    clock = SleepingClock()
    path = str(tmp_path / "etl.sqlite3")
    slow_store = StallingStore(path, clock)
    slow = SourceLimiter(slow_store, "source_c", RateSpec(1, 2000), clock, clock.sleep)
    other = SourceLimiter(SqliteStore(path), "source_c", RateSpec(1, 2000), clock, clock.sleep)
    deadline = Deadline(clock, 1000)
    slow_store.stall(method, 2.0)
    slow.acquire(deadline)
    sent = [clock()]  # the request goes out as soon as acquire returns
    other.acquire(deadline)
    sent.append(clock())
    assert sent[1] - sent[0] >= 2.0, f"two requests {sent[1] - sent[0]:.2f}s apart under a 1-per-2s budget"
    assert max(recorded_stamps(slow_store)) >= sent[1] - 0.001


def test_every_recorded_slot_is_no_earlier_than_its_request_even_with_a_steadily_slow_store(tmp_path):
    clock = SleepingClock()
    store = StallingStore(str(tmp_path / "etl.sqlite3"), clock)
    limiter = SourceLimiter(store, "source_c", RateSpec(2, 1000), clock, clock.sleep)
    tolerance_s = limiter.safety_ms / 4 / 1000
    deadline = Deadline(clock, 1000)
    sent = []
    for _ in range(8):
        store.stall("cas_state", *[0.4] * 10)  # every compare-and-set answers 0.4 s late
        store.stall("get_state", 0.3)
        limiter.acquire(deadline)
        sent.append(clock())
        assert max(recorded_stamps(store)) >= sent[-1] - tolerance_s
        store.stalls = {"get_state": [], "cas_state": []}
    assert max_in_any_window(sent, 1.0) <= 2
