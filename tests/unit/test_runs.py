"""Single flight and the run ledger: LeaseKeeper and run_stage."""

from __future__ import annotations

import pytest

from common.errors import LeaseLost, SourceError
from common.runs import LeaseKeeper, run_stage
from common.store.sqlite import SqliteStore
from tests.conftest import FakeClock


@pytest.fixture
def store(tmp_path):
    return SqliteStore(str(tmp_path / "etl.sqlite3"))


def test_keeper_renews_and_notices_a_takeover(store):
    clock = FakeClock()
    keeper = LeaseKeeper(store, "extract:x", "me", ttl_s=10, clock=clock)
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

    lost = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=lose)
    assert (lost.status, lost.rows_in) == ("partial", 7) and "lost" in lost.summary["warnings"][0]
    failed = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=fail)
    assert failed.status == "failed" and failed.summary["errors"] == ["source_b: CSV file not found"]
    crashed = run_stage("extract", "x", store, lease_ttl_s=10, clock=clock, work=crash)
    assert crashed.status == "failed" and crashed.summary["errors"][0].startswith("internal error: KeyError")
    ledger = {run.run_id: run.status for run in store.list_runs(stage="extract")}
    assert ledger == {lost.run_id: "partial", failed.run_id: "failed", crashed.run_id: "failed"}
    assert store.acquire_lease("extract:x", "someone", 10, clock())  # every run released its lease
