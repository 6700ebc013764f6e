"""Bounded storage: `common.prune` on a real SQLite store, and after every pass of the real orchestrator.

Time is a FakeClock moved by hand: days of retention pass without waiting."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest
import responses

from common.clock import Deadline
from common.config import Settings
from common.invokers import InProcessInvoker
from common.orchestrator import run_pass
from common.prune import Retention, prune
from common.store import RawBatch
from common.store.sqlite import SqliteStore
from common.wiring import Wiring
from tests.conftest import SleepingClock

DAY = 86_400.0
A_URL = "https://a.test/v1/tickers"
RETAIN = Retention(raw_days=7, run_days=30, quarantine_days=30)


def file_size(path: str) -> int:
    """The main file's size once the WAL is folded in (what the disk really holds for the store)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return os.path.getsize(path)


def load_done_batches(store, count: int, payload_kb: int = 64, prefix: str = "b") -> None:
    for index in range(count):
        store.put_raw_batch(RawBatch(batch_id=f"{prefix}:{index}", source="source_b", run_id="r", format="csv_lines",
                                     payload=os.urandom(payload_kb * 512).hex(), row_count=1))
    for pending in store.pending_raw_batches(count + 10):
        if pending.batch_id.startswith(prefix):
            store.commit_transformed(pending, [], [], [])


@pytest.fixture
def clock():
    return SleepingClock()


@pytest.fixture
def store(tmp_path, clock):
    store = SqliteStore(str(tmp_path / "etl.sqlite3"), clock=clock)
    yield store
    store.close()


def run_prune(store, clock, **kwargs) -> dict:
    return prune(store, RETAIN, clock=clock, lease_ttl_s=30, deadline=Deadline(clock, 60), **kwargs)


def test_prune_deletes_old_processed_batches_and_gives_the_space_back(store, clock):
    load_done_batches(store, 60)  # ~4 MB of payload
    store.put_raw_batch(RawBatch(batch_id="waiting", source="source_b", run_id="r", format="csv_lines",
                                 payload="x", row_count=1))
    before = file_size(store.path)
    clock.advance(8 * DAY)
    summary = run_prune(store, clock)
    assert summary["status"] == "succeeded" and summary["deleted"]["raw_batches"] == 60
    assert [b.batch_id for b in store.pending_raw_batches(10)] == ["waiting"]
    after = file_size(store.path)
    assert after < before / 4, (before, after)
    assert summary["size_bytes"]["after"] < summary["size_bytes"]["before"]


def test_nothing_younger_than_its_retention_is_pruned(store, clock):
    load_done_batches(store, 5)
    clock.advance(6 * DAY)
    assert run_prune(store, clock)["deleted"] == {"raw_batches": 0, "runs": 0, "quarantine": 0}
    assert store.count_raw_batches() == 5


def test_a_store_made_before_incremental_vacuum_is_converted_by_its_first_prune(store, clock, tmp_path):
    load_done_batches(store, 60)
    store.close()
    conn = sqlite3.connect(store.path, isolation_level=None)  # as every store before schema 7 was laid out
    conn.execute("PRAGMA auto_vacuum = NONE")
    conn.execute("VACUUM")
    assert conn.execute("PRAGMA auto_vacuum").fetchone() == (0,)
    conn.close()
    old = SqliteStore(store.path, clock=clock)
    before = file_size(old.path)
    clock.advance(8 * DAY)
    summary = run_prune(old, clock)
    assert summary["deleted"]["raw_batches"] == 60
    assert file_size(old.path) < before / 4
    assert old._read("PRAGMA auto_vacuum")[0][0] == 2  # incremental from now on: later prunes need no VACUUM
    old.close()


def test_two_pruners_never_run_at_once(store, clock):
    load_done_batches(store, 3)
    clock.advance(8 * DAY)
    assert store.acquire_lease("prune", "someone-else", 30, clock()) is not None
    summary = run_prune(store, clock)
    assert summary["status"] == "skipped" and store.count_raw_batches() == 3


def test_prune_goes_in_bounded_steps_and_stops_at_its_deadline(store, clock):
    load_done_batches(store, 7, payload_kb=1)
    clock.advance(8 * DAY)
    steps = []
    deadline = Deadline(clock, 60)

    def step(kind: str, deleted: int) -> None:
        steps.append((kind, deleted))
        clock.advance(20)  # each step takes a while: the budget runs out after three

    summary = prune(store, RETAIN, clock=clock, lease_ttl_s=30, deadline=deadline, step=2, on_step=step)
    assert summary["status"] == "partial" and steps == [("raw_batches", 2)] * 3
    assert store.count_raw_batches() == 1
    summary = run_prune(store, clock, step=2)  # the next prune finishes the job
    assert summary["status"] == "succeeded" and store.count_raw_batches() == 0


def test_now_moves_the_cutoffs(store, clock):
    load_done_batches(store, 3, payload_kb=1)
    assert run_prune(store, clock, now=clock() + 8 * DAY)["deleted"]["raw_batches"] == 3


# --- after every pass, through the real orchestrator ---------------------------------------------------------------

def ticker(n: int, generation: int) -> dict:
    """Source A's ticker: the same observation each pass (records are upserted in place), a body that differs
    (each pass's raw batch is a new one, as a live API's is)."""
    return {"id": f"coin-{n}", "name": f"Coin {n}", "symbol": f"C{n}", "last_updated": "2025-06-25T10:47:48Z",
            "fetched": generation, "quotes": {"USD": {"price": 10.0 + n, "volume_24h": 1e6, "market_cap": 1e9}}}


@pytest.fixture
def stack(tmp_path, clock):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_a_url=A_URL, source_a_rate="1000/1m",
                        lease_ttl_s=30, raw_retention_days=0.25, run_retention_days=0.5,
                        quarantine_retention_days=0.5)
    store = SqliteStore(settings.sqlite_path, clock=clock)
    yield Wiring(settings=settings, store=store, clock=clock, sleep=clock.sleep)
    store.close()


def quiet(*_args, **_kwargs) -> dict:
    return {"sent": []}


@responses.activate
def test_a_long_running_stack_stops_growing(stack, clock):
    """48 hourly passes of source A (a 300-coin snapshot each): raw batches, runs and the file plateau once the
    retention windows are full, though every pass writes a new batch and three runs."""
    generation = {"n": 0}

    def snapshot(_request):
        generation["n"] += 1
        return 200, {}, json.dumps([ticker(n, generation["n"]) for n in range(300)])

    responses.add_callback(responses.GET, A_URL, callback=snapshot)
    counts, sizes = [], []
    for _ in range(48):
        run = run_pass(stack, InProcessInvoker(stack), sources=["source_a"], notify=quiet)
        assert run.status == "succeeded", run.summary
        assert run.summary["prune"]["status"] == "succeeded", run.summary["prune"]
        counts.append((stack.store.count_raw_batches(), len(stack.store.list_runs(limit=10_000))))
        sizes.append(file_size(stack.settings.sqlite_path))
        clock.advance(3600)
    assert stack.store.count_normalized() == 300
    assert counts[-1][0] <= 7 and max(c[0] for c in counts[24:]) == counts[-1][0]  # 6 hours of batches
    assert max(c[1] for c in counts[24:]) <= 3 * 13 + 3  # 12 hours of runs (+ the newest of each kind)
    assert max(sizes[24:]) <= sizes[23] * 1.05, sizes  # the file stops growing
    assert sizes[-1] < sizes[0] + 48 * 40_000  # ... where 48 kept batches would be ~2 MB more
    assert stack.store.count_runs()[("pipeline", None, "succeeded")] == 48  # the counters never went back


def test_a_prune_failure_never_fails_the_pass(stack, clock, monkeypatch):
    def broken(*_args, **_kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(SqliteStore, "prune_runs", broken)
    with responses.RequestsMock() as mock:
        mock.get(A_URL, json=[ticker(1, 1)])
        run = run_pass(stack, InProcessInvoker(stack), sources=["source_a"], notify=quiet)
    assert run.status == "succeeded"
    assert "disk I/O error" in run.summary["prune"]["error"]
    assert stack.store.get_run(run.run_id).summary["prune"] == run.summary["prune"]


def test_retention_settings_come_from_the_environment():
    settings = Settings.from_env({"RAW_RETENTION_DAYS": "2", "RUN_RETENTION_DAYS": "14",
                                  "QUARANTINE_RETENTION_DAYS": "0.5"})
    assert Retention.from_settings(settings) == Retention(raw_days=2, run_days=14, quarantine_days=0.5)
    defaults = Settings.from_env({})
    assert (defaults.raw_retention_days, defaults.run_retention_days, defaults.quarantine_retention_days) == (7, 30, 30)
    with pytest.raises(Exception, match="RUN_RETENTION_DAYS"):
        Settings.from_env({"RUN_RETENTION_DAYS": "-1"})
