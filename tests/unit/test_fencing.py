"""Fencing end to end through the real transform: a run that stalled past its lease, while another invocation took
over and loaded a corrected value, changes nothing durable when it wakes."""

from __future__ import annotations

import threading

import pytest

from common.pipeline import run_transform
from common.store import DataQuery, RawBatch
from common.store.sqlite import SqliteStore
from common.wiring import Wiring
from tests.conftest import FakeClock

HEADER = ["SNo", "Name", "Symbol", "Date", "High", "Low", "Open", "Close", "Volume", "Marketcap"]


def csv_batch(close: str) -> RawBatch:
    return RawBatch(batch_id="source_b:file:0", source="source_b", run_id="extract-1", format="csv_lines",
                    payload=f"1,Bitcoin,BTC,2021-01-01 23:59:59,1,1,1,{close},1,1\n", row_count=1, header=HEADER)


class StallingStore(SqliteStore):
    """The first commit blocks until released: the process is stopped between normalizing and writing."""

    def __init__(self, path: str, clock) -> None:
        super().__init__(path, clock=clock)
        self.stalled, self.wake = threading.Event(), threading.Event()

    def commit_transformed(self, *args, **kwargs):
        if not self.stalled.is_set():
            self.stalled.set()
            assert self.wake.wait(10)
        return super().commit_transformed(*args, **kwargs)


@pytest.fixture
def setup(tmp_path, settings):
    clock = FakeClock()
    store = StallingStore(str(tmp_path / "fenced.sqlite3"), clock)
    yield Wiring(settings=settings, store=store, clock=clock), store, clock
    store.close()


def test_a_stalled_transform_cannot_revert_a_corrected_value(setup):
    wiring, store, clock = setup
    store.put_raw_batch(csv_batch("100"))
    stale_result = {}
    stale = threading.Thread(target=lambda: stale_result.setdefault("run", run_transform(wiring)))
    stale.start()
    assert store.stalled.wait(10)  # normalized close=100, about to write it ... and stopped

    clock.advance(wiring.settings.lease_ttl_s + 1)  # its lease expires while it is stopped
    store.put_raw_batch(csv_batch("200"))  # the source was corrected and re-extracted
    takeover = run_transform(wiring)
    assert takeover.status == "succeeded" and takeover.rows_out == 1

    store.wake.set()  # SIGCONT: the stale run goes on with what it had in memory
    stale.join(10)
    [row] = store.query_normalized(DataQuery(symbol="BTC")).items
    assert row["price_usd"] == 200.0, "the stale writer reverted the corrected value"
    assert row["run_id"] == takeover.run_id
    stale_run = store.get_run(stale_result["run"].run_id)
    assert stale_run.status == "failed" and "abandoned" in stale_run.summary["errors"][-1]
    assert stale_result["run"].status == "failed"
    assert store.count_raw_batches(pending_only=True) == 0
    assert store.get_run(takeover.run_id).status == "succeeded"
