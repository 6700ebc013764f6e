"""The trigger's clockwork on a fake clock: a pass per tick, at most one on start, no burst, a heartbeat, a tick
claimed once among triggers, a skipped pass tried once more, a stop that abandons the pass it interrupts."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import pytest

from common.ids import new_run_id
from common.schedule import parse_schedule
from common.store import Run
from common.store.sqlite import SqliteStore
from common.wiring import Wiring
from local.trigger import HEARTBEAT_KEY, LAST_TICK_KEY, Trigger
from tests.conftest import FakeClock

HOUR = 3600.0


@pytest.fixture
def store(tmp_path):
    store = SqliteStore(str(tmp_path / "etl.sqlite3"))
    yield store
    store.close()


class Harness:
    """A trigger whose waits move the fake clock and whose passes are recorded, not run."""

    def __init__(self, store, settings, *, start: float, schedule: str = "0 * * * *", passes: int = 3,
                 pass_s: float = 60.0, statuses: list[str] | None = None, **options) -> None:
        self.clock = FakeClock(start)
        self.started: list[float] = []
        self.beats: list[dict] = []
        self.pass_s, self.statuses, self.passes = pass_s, list(statuses or []), passes
        wiring = Wiring(settings=dataclasses.replace(settings, lease_ttl_s=20), store=store, clock=self.clock)
        self.trigger = Trigger(wiring, invoker=None, schedule=parse_schedule(schedule), wait=self.wait,
                               one_pass=self.one_pass, **options)

    def wait(self, seconds: float) -> bool:
        self.beats.append(self.trigger.store.get_state(HEARTBEAT_KEY)[0])
        self.clock.advance(seconds)
        return self.trigger.stopping.is_set()

    def one_pass(self, wiring, invoker, *, cancel, on_start) -> Run:
        self.started.append(self.clock())
        run = Run(run_id=new_run_id("pipeline"), stage="pipeline", source=None)
        on_start(run)
        self.beats.append(self.trigger.store.get_state(HEARTBEAT_KEY)[0])
        self.clock.advance(self.pass_s)
        run.status = self.statuses.pop(0) if self.statuses else "succeeded"
        if len(self.started) >= self.passes:
            self.trigger.stop("test")
        return run

    def run(self) -> list[float]:
        self.trigger.run()
        return [moment - self.started[0] for moment in self.started]


def test_the_first_start_runs_a_pass_then_one_per_tick(store, settings):
    harness = Harness(store, settings, start=100 * HOUR + 600)
    assert harness.run() == [0, HOUR - 600, 2 * HOUR - 600]  # now, then on the hour


def test_no_pass_on_start_when_no_tick_was_missed(store, settings):
    store.cas_state(LAST_TICK_KEY, {"tick": 100 * HOUR, "finished": True}, 0)
    harness = Harness(store, settings, start=100 * HOUR + 600, passes=1)
    harness.run()
    assert harness.started == [101 * HOUR]


def test_after_downtime_one_pass_on_start_not_a_burst(store, settings):
    store.cas_state(LAST_TICK_KEY, {"tick": 90 * HOUR, "finished": True}, 0)  # ten ticks missed
    harness = Harness(store, settings, start=100 * HOUR + 600)
    assert harness.run() == [0, HOUR - 600, 2 * HOUR - 600]


def test_a_tick_whose_pass_did_not_finish_is_served_again_on_start(store, settings):
    store.cas_state(LAST_TICK_KEY, {"tick": 100 * HOUR, "finished": False, "claimed_by": "a killed trigger"}, 0)
    harness = Harness(store, settings, start=100 * HOUR + 600, passes=1)
    harness.run()
    assert harness.started == [100 * HOUR + 600]
    stored = store.get_state(LAST_TICK_KEY)[0]
    assert stored["finished"] is True and stored["tick"] == 100 * HOUR + 600 and stored["status"] == "succeeded"


def test_ticks_that_pass_during_a_long_pass_are_not_made_up(store, settings):
    harness = Harness(store, settings, start=100 * HOUR, schedule="15m", pass_s=3.5 * 900, run_on_start=True)
    assert harness.run() == [0, 4 * 900, 8 * 900]


def test_the_heartbeat_says_idle_or_running_and_what_comes_next(store, settings):
    harness = Harness(store, settings, start=100 * HOUR + 600, passes=2, heartbeat_s=600)
    harness.run()
    running = [beat for beat in harness.beats if beat["state"] == "running"]
    idle = [beat for beat in harness.beats if beat["state"] == "idle"]
    assert running and all(beat["pass_run_id"] and beat["pid"] for beat in running)
    assert {beat["next_tick"] for beat in idle} == {"1970-01-05T05:00:00.000Z"}
    assert len(idle) == 5  # 50 minutes of waiting, a beat every 10
    assert set(harness.beats[0]) == {"at", "pid", "state", "pass_run_id", "next_tick"}


def test_a_tick_is_served_by_one_trigger_only(store, settings):
    first = Harness(store, settings, start=100 * HOUR + 600, passes=1)
    first.run()
    second = Harness(store, settings, start=100 * HOUR + 600, passes=1)
    second.trigger.run_on_start = False
    assert second.trigger._claim(101 * HOUR) is True and first.trigger._claim(101 * HOUR) is False


def test_a_skipped_pass_is_tried_once_more_after_a_lease_ttl(store, settings):
    harness = Harness(store, settings, start=100 * HOUR + 600, passes=3, statuses=["skipped", "skipped"])
    assert harness.run() == [0, 60 + 20, HOUR - 600]  # once more after LEASE_TTL_S, then the next tick


def test_a_stop_during_a_pass_abandons_it_and_says_so(store, settings, caplog):
    wiring = Wiring(settings=settings, store=store)
    begun = threading.Event()

    def stuck_pass(wiring, invoker, *, cancel, on_start):
        run = Run(run_id="pass-1", stage="pipeline", source=None)
        on_start(run)
        begun.set()
        cancel.wait(30)
        run.status = "failed"
        run.summary["abandoned"] = [{"stage": "extract", "source": "source_c"}]
        return run

    trigger = Trigger(wiring, None, parse_schedule("1h"), run_on_start=True, one_pass=stuck_pass)
    threading.Thread(target=lambda: begun.wait(5) and trigger.stop("SIGTERM"), daemon=True).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, "local.trigger"):
        assert trigger.run() == 0
    assert time.monotonic() - started < 3
    assert "pass pass-1 abandoned with extract source_c in flight" in caplog.text and "SIGTERM" in caplog.text
    assert store.get_state(LAST_TICK_KEY)[0]["finished"] is False  # the next start serves it again
