"""Single flight and the run ledger: LeaseKeeper and run_stage, attacked where the ledger used to lie."""

from __future__ import annotations

import threading
import time

import pytest

from common.errors import LeaseLost, SourceError
from common.runs import LeaseKeeper, run_stage
from common.store import Run
from common.store.sqlite import SqliteStore
from tests.conftest import FakeClock


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "etl.sqlite3"))


def test_keeper_renews_and_notices_a_takeover(store):
    clock = FakeClock()
    keeper = LeaseKeeper(store, "extract:x", "me", ttl_s=10, clock=clock, heartbeat=False)
    assert keeper.acquire()
    clock.advance(3)
    keeper.keep_alive()  # renewed: now valid until +13
    clock.advance(9)
    assert not store.acquire_lease("extract:x", "other", 10, clock())
    clock.advance(5)
    assert store.acquire_lease("extract:x", "other", 10, clock())
    with pytest.raises(LeaseLost):
        keeper.keep_alive()


def test_run_stage_records_outcomes(store):
    clock = FakeClock()

    def lose(run, keeper):
        run.rows_in = 7
        raise LeaseLost("lease extract:x was lost")

    def fail(run, keeper):
        raise SourceError("source_b: CSV file not found")

    def crash(run, keeper):
        raise KeyError("bug")

    lost = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=lose, heartbeat=False)
    assert (lost.status, lost.rows_in) == ("failed", 7) and "lost" in lost.summary["errors"][0]
    failed = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=fail, heartbeat=False)
    assert failed.status == "failed" and failed.summary["errors"] == ["source_b: CSV file not found"]
    crashed = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=crash, heartbeat=False)
    assert crashed.status == "failed" and crashed.summary["errors"][0].startswith("internal error: KeyError")
    ledger = {run.run_id: run.status for run in store.list_runs(stage="extract")}
    assert ledger == {lost.run_id: "failed", failed.run_id: "failed", crashed.run_id: "failed"}
    assert store.acquire_lease("extract:x", "someone", 10, clock())  # every run released its lease


class ReleaseWatcher(SqliteStore):
    """Records what the ledger said about a run at the moment its lease was released, then lets another
    invocation in right there (the gap the old order left open)."""

    def __init__(self, path, clock):
        super().__init__(path, clock=clock)
        self.at_release: list[str] = []
        self.intruders: list[Run] = []

    def release_lease(self, fence):
        super().release_lease(fence)
        if self.at_release:
            return
        self.at_release.append(self.get_run(fence.owner).status)
        self.intruders.append(run_stage("extract", "x", self, lease_ttl_s=10, clock=self.clock,
                                        work=lambda run, keeper: "succeeded", heartbeat=False))


def test_a_finished_run_is_saved_before_its_lease_is_released_and_never_reads_abandoned(tmp_path):
    clock = FakeClock()
    store = ReleaseWatcher(str(tmp_path / "etl.sqlite3"), clock)
    done = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=lambda run, keeper: "succeeded",
                     heartbeat=False)
    assert store.at_release == ["succeeded"]  # the final status was durable before anyone could take over
    assert store.get_run(done.run_id).status == "succeeded"
    assert store.get_run(store.intruders[0].run_id).status == "succeeded"


def test_a_stalled_run_that_wakes_after_a_takeover_cannot_overwrite_the_abandoned_mark(store):
    clock = FakeClock()
    second: list[Run] = []

    def stall_then_finish(run, keeper):
        clock.advance(11)  # stalled past the lease's expiry (SIGSTOP, GC pause, slow disk) ...
        second.append(run_stage("extract", "x", store, lease_ttl_s=10, clock=clock,  # ... someone took over
                                work=lambda r, k: "succeeded", heartbeat=False))
        return "succeeded"  # ... and the stalled one wakes up believing it finished

    stale = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=stall_then_finish, heartbeat=False)
    recorded = store.get_run(stale.run_id)
    assert recorded.status == "failed" and "abandoned" in recorded.summary["errors"][-1]
    assert second[0].run_id in recorded.summary["errors"][-1]
    assert stale.status == "failed"  # what the stale invocation answers agrees with the ledger
    assert store.get_run(second[0].run_id).status == "succeeded"


def test_every_abandoned_run_is_marked_however_many_runs_came_after_it(store):
    clock = FakeClock()
    crashed = Run(run_id="crashed", stage="extract", source="x", started_at="2026-01-01T00:00:00.000Z")
    store.save_run(crashed)  # killed while running: its lease will simply expire
    for index in range(30):
        store.save_run(Run(run_id=f"skipped-{index:02d}", stage="extract", source="x", status="skipped",
                           started_at=f"2026-01-01T00:{index + 1:02d}:00.000Z"))
    resumed = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=lambda r, k: "succeeded",
                        heartbeat=False)
    marked = store.get_run("crashed")
    assert marked.status == "failed" and f"resumed by run {resumed.run_id}" in marked.summary["errors"][-1]
    assert store.running_runs("extract", "x") == []


def test_the_heartbeat_keeps_the_lease_through_a_long_wait(store):
    """A Retry-After or rate-limit wait longer than the TTL: a second invocation must be skipped, not run the
    same work. (Real time, but only ~1 s: the TTL is made tiny instead of the wait long.)"""
    ttl = 0.2
    started = threading.Event()
    outcomes: dict[str, Run] = {}

    def long_wait(run, keeper):
        started.set()
        time.sleep(ttl * 5)  # a wait inside one fetch, with no keep_alive() call in it
        return "succeeded"

    first = threading.Thread(target=lambda: outcomes.setdefault("first", run_stage(
        "extract", "x", store, lease_ttl_s=ttl, clock=time.time, work=long_wait)))
    first.start()
    assert started.wait(5)
    time.sleep(ttl * 2.5)  # well past the TTL: without renewal the lease would be free now
    outcomes["second"] = run_stage("extract", "x", store, lease_ttl_s=ttl, clock=time.time,
                                   work=lambda r, k: "succeeded")
    first.join(10)
    assert outcomes["second"].status == "skipped"
    assert outcomes["first"].status == "succeeded"


def test_a_hung_invocation_stops_renewing_after_its_budget(store):
    ttl = 0.1
    holding, release = threading.Event(), threading.Event()
    outcomes: dict[str, Run] = {}
    worker = threading.Thread(target=lambda: outcomes.setdefault("hung", run_stage(
        "extract", "x", store, lease_ttl_s=ttl, clock=time.time, budget_s=0.1,
        work=lambda r, k: (holding.set(), release.wait(10), "succeeded")[2])))
    worker.start()
    assert holding.wait(5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        taken = store.acquire_lease("extract:x", "rescuer", 10, time.time())
        if taken:
            break
        time.sleep(0.05)
    release.set()
    worker.join(10)
    assert taken, "a hung run held the lease past its budget"
    assert outcomes["hung"].status == "failed"  # it lost the lease: its success is not recorded


def test_default_lease_lets_the_next_invocation_in_within_30_s_of_a_kill(store):
    from common.config import Settings

    ttl = Settings.from_env({}).lease_ttl_s
    clock = FakeClock()
    assert store.acquire_lease("extract:x", "killed", ttl, clock())  # kill -9: never renewed, never released
    clock.advance(30)
    resumed = run_stage("extract", "x", store, lease_ttl_s=ttl, clock=clock, work=lambda r, k: "succeeded",
                        heartbeat=False)
    assert resumed.status == "succeeded"
