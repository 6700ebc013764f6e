"""One contract for the storage port, run against every adapter.

One mixin per role port (`LeaseContract`, `StateContract`, `BatchContract`, ...); `StoreContract` is their union and
holds the behaviour; each adapter subclasses it once and only says how to build a store.
SqliteStore is the reference; MongoStore runs on mongomock-ng here and on a real server when `TEST_MONGODB_URI`
is set. Time is always passed in (`now`) or injected (`FakeClock`): nothing sleeps.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from abc import ABC, abstractmethod

import mongomock_ng
import pymongo
import pytest

from common.clock import iso_utc
from common.errors import ConfigError, InputError, LeaseLost, StoreError
from common.store import (
    INDEXED_SORTS, NORMALIZED_FIELDS, SCHEMA_VERSION, SORTABLE_FIELDS, DataQuery, Fence, Page, RawBatch, Run, Store,
)
from common.ids import idempotency_key
from common.store import mongo_base
from common.store.mongo import MongoStore
from common.store.sqlite import SqliteStore

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
QUARANTINE_KEYS = ["id", "source", "run_id", "batch_id", "row_number", "raw", "reason", "created_at", "resolved_at",
                   "resolved_by"]
ASSET_KEYS = ["asset_id", "symbol", "name", "first_seen_at", "updated_at", "sources"]
UNREACHABLE_MONGO = "mongodb://127.0.0.1:1/contract?serverSelectionTimeoutMS=50&connectTimeoutMS=50"


def write_v1_sqlite(path):
    """A SQLite store file exactly as the first release left it (schema snapshot below, frozen on purpose)."""
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SQLITE_SCHEMA)
        conn.executemany(
            "INSERT INTO normalized (source, source_id, observed_at, idempotency_key, symbol, asset_id, name, "
            "price_usd, ingested_at, run_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '2026-01-01T00:00:00.000Z', 'r0')",
            V1_RECORDS)
        conn.execute("INSERT INTO leases VALUES ('transform_load', 'old-owner', 1.0)")
        conn.execute("INSERT INTO raw_batches VALUES ('source_b:f:0', 'source_b', 'r0', 'csv_lines', 'x', 1, 1, NULL, "
                     "'[]', '{}', 1, 'done', '2026-01-01T00:00:00.000Z', 1)")
        conn.execute("INSERT INTO raw_batches VALUES ('source_c:s:1', 'source_c', 'r0', 'json', '[]', 0, 1, NULL, "
                     "'[]', '{}', 1, 'done', '2026-01-01T00:00:00.000Z', 2)")
    conn.close()
    return path


# as the first release created it
V1_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS shared_state (
    key TEXT PRIMARY KEY, value TEXT NOT NULL, version INTEGER NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raw_batches (
    batch_id TEXT PRIMARY KEY, source TEXT NOT NULL, run_id TEXT NOT NULL, format TEXT NOT NULL,
    payload TEXT NOT NULL, row_count INTEGER NOT NULL, first_row INTEGER NOT NULL, header TEXT,
    rejects TEXT NOT NULL, position TEXT NOT NULL, version INTEGER NOT NULL, status TEXT NOT NULL,
    created_at TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS raw_batches_seq ON raw_batches (seq);
CREATE INDEX IF NOT EXISTS raw_batches_pending ON raw_batches (seq) WHERE status = 'pending';
CREATE TABLE IF NOT EXISTS normalized (
    source TEXT NOT NULL, source_id TEXT NOT NULL, observed_at TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, symbol TEXT NOT NULL, asset_id TEXT NOT NULL, name TEXT,
    price_usd REAL, open_usd REAL, high_usd REAL, low_usd REAL, market_cap_usd REAL, volume_24h_usd REAL,
    ingested_at TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (source, source_id, observed_at)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS normalized_symbol_time ON normalized (symbol, observed_at);
CREATE TABLE IF NOT EXISTS assets (
    asset_id TEXT PRIMARY KEY, symbol TEXT NOT NULL, name TEXT, first_seen_at TEXT NOT NULL,
    updated_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS asset_sources (
    asset_id TEXT NOT NULL, source TEXT NOT NULL, PRIMARY KEY (asset_id, source)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id TEXT PRIMARY KEY, source TEXT NOT NULL, run_id TEXT NOT NULL, batch_id TEXT, row_number INTEGER,
    raw TEXT, reason TEXT NOT NULL, created_at TEXT NOT NULL, resolved_at TEXT, resolved_by TEXT);
CREATE INDEX IF NOT EXISTS quarantine_source ON quarantine (source, created_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY, stage TEXT NOT NULL, source TEXT, status TEXT NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_stage_started ON runs (stage, started_at);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
"""

V5_SQLITE_RECORDS = """
CREATE TABLE normalized_v5 (
    source TEXT NOT NULL, source_id TEXT NOT NULL, observed_at TEXT NOT NULL,
    idempotency_key TEXT NOT NULL, symbol TEXT NOT NULL, asset_id TEXT NOT NULL, name TEXT,
    price_usd REAL, open_usd REAL, high_usd REAL, low_usd REAL, market_cap_usd REAL, volume_24h_usd REAL,
    ingested_at TEXT NOT NULL, run_id TEXT NOT NULL,
    PRIMARY KEY (source, source_id, observed_at)) WITHOUT ROWID;
INSERT INTO normalized_v5 SELECT source, source_id, observed_at, idempotency_key, symbol, asset_id, name, price_usd,
    open_usd, high_usd, low_usd, market_cap_usd, volume_24h_usd, ingested_at, run_id FROM normalized;
DROP TABLE normalized;
ALTER TABLE normalized_v5 RENAME TO normalized;
CREATE INDEX normalized_symbol_time ON normalized (symbol, observed_at);
CREATE INDEX normalized_asset_source_time ON normalized (asset_id, source, observed_at);
UPDATE schema_version SET version = 5;
"""
"""The records table and its indexes exactly as version 5 left them (frozen on purpose)."""

V1_RECORDS = [  # (source, source_id, observed_at, idempotency_key, symbol, asset_id, name, price_usd) as v1 wrote them
    (source, source_id, observed_at, idempotency_key(source, source_id, observed_at), *rest)
    for source, source_id, observed_at, *rest in (
        ("source_b", "UNI", "2020-09-20T23:59:59Z", "UNI", "uni-uniswap", "Uniswap", 5.0),
        ("source_b", "BTC", "2020-09-20T23:59:59Z", "BTC", "btc-bitcoin", "Bitcoin", 10000.0),
        ("source_c", "bitcoin", "2025-06-25T10:47:48.5Z", "BTC", "btc-bitcoin", "Bitcoin", 100000.0),
        ("source_c", "bitcoin", "2025-06-25T10:47:48Z", "BTC", "btc-bitcoin", "Bitcoin", 99999.0),
    )
]


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def record(source="a", source_id="btc", observed_at="2026-01-01T00:00:00Z", **overrides) -> tuple:
    """A normalized record as the transform hands it over: a tuple in NORMALIZED_FIELDS order."""
    values = {
        "idempotency_key": f"{source}|{source_id}|{observed_at}", "source": source, "source_id": source_id,
        "symbol": "BTC", "observed_at": observed_at, "asset_id": "btc-bitcoin", "name": "Bitcoin",
        "price_usd": 100.0, "open_usd": 99.0, "high_usd": 101.0, "low_usd": 98.0, "market_cap_usd": 1e12,
        "volume_24h_usd": 5e9, "ingested_at": "2026-01-01T00:05:00.000Z", "run_id": "run-1",
    }
    values.update(overrides)
    return tuple(values[name] for name in NORMALIZED_FIELDS)


def as_item(row: tuple) -> dict:
    return dict(zip(NORMALIZED_FIELDS, row, strict=True))


def batch(batch_id="a:0", source="a", payload="l1\nl2", **overrides) -> RawBatch:
    values = {"run_id": "run-1", "format": "csv_lines", "row_count": 2, "header": ["symbol", "price"]}
    values.update(overrides)
    return RawBatch(batch_id=batch_id, source=source, payload=payload, **values)


def quarantined(entry_id="q1", source="a", **overrides) -> dict:
    values = {"id": entry_id, "source": source, "run_id": "run-1", "batch_id": "a:0", "row_number": 1,
              "raw": "x,y", "reason": "missing price"}
    values.update(overrides)
    return values


def asset(asset_id="btc-bitcoin", source="a", symbol="BTC", name="Bitcoin") -> dict:
    return {"asset_id": asset_id, "source": source, "symbol": symbol, "name": name}


def run(run_id="r1", stage="extract", source="a", status="succeeded", started_at="2026-01-01T00:00:00.000Z",
        **overrides) -> Run:
    return Run(run_id=run_id, stage=stage, source=source, status=status, started_at=started_at, **overrides)


class ContractBase(ABC):
    """How a contract builds and disposes of stores; every role mixin below runs on top of it."""

    @abstractmethod
    def make_store(self, tmp_path, clock: FakeClock) -> Store:
        """A fresh, empty store using `clock`."""

    @abstractmethod
    def make_unreachable_store(self, tmp_path) -> Store:
        """A store whose backing service cannot be reached or opened."""

    def dispose(self, store: Store) -> None:
        store.close()

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    def store(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        yield store
        self.dispose(store)

    def commit_pending(self, store: Store, records=(), quarantine=(), assets=()) -> RawBatch:
        """Put a batch, fetch it back as the transform would, and commit `records` etc. against it."""
        store.put_raw_batch(batch(batch_id=f"commit:{uuid.uuid4().hex}", source="commit"))
        pending = store.pending_raw_batches(1, source="commit")[0]
        store.commit_transformed(pending, list(records), list(quarantine), list(assets))
        return pending


class LifecycleContract(ContractBase):
    """Lifecycle: ping, and what an unreachable store does."""

    def test_ping_answers(self, store):
        assert isinstance(store, Store)
        assert store.ping() is None

    def test_ping_on_unreachable_store_raises_store_error(self, tmp_path):
        store = self.make_unreachable_store(tmp_path)
        try:
            with pytest.raises(StoreError):
                store.ping()
        finally:
            store.close()


class LeaseContract(ContractBase):
    """LeaseStore: single flight and fencing tokens."""

    def test_free_lease_is_acquired_with_a_fencing_token(self, store):
        fence = store.acquire_lease("extract:a", "o1", ttl_s=10, now=0)
        assert fence == Fence("extract:a", "o1", fence.epoch) and fence.epoch >= 1

    def test_second_owner_is_refused_while_lease_unexpired(self, store):
        assert store.acquire_lease("extract:a", "o1", ttl_s=10, now=0)
        assert store.acquire_lease("extract:a", "o2", ttl_s=10, now=5) is None
        assert store.acquire_lease("extract:a", "o2", ttl_s=10, now=9.999) is None

    def test_expired_lease_is_taken_over_with_a_larger_epoch(self, store):
        first = store.acquire_lease("extract:a", "o1", ttl_s=10, now=0)
        second = store.acquire_lease("extract:a", "o2", ttl_s=10, now=10)  # expiry is inclusive
        assert second.owner == "o2" and second.epoch > first.epoch
        assert store.acquire_lease("extract:a", "o1", ttl_s=10, now=15) is None  # o2 holds it until 20

    def test_epochs_only_grow_across_every_lease(self, store):
        epochs = [store.acquire_lease(name, owner, ttl_s=10, now=now).epoch
                  for name, owner, now in (("a", "o1", 0), ("b", "o2", 0), ("a", "o3", 10), ("b", "o4", 10))]
        assert epochs == sorted(set(epochs))

    def test_owner_reacquiring_extends_its_lease_and_keeps_its_epoch(self, store):
        first = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        assert store.acquire_lease("transform", "o1", ttl_s=10, now=5) == first
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=12) is None
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=15)

    def test_renew_extends_lease(self, store):
        fence = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        assert store.renew_lease(fence, ttl_s=10, now=8) is True
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=17) is None
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=18)

    def test_renew_fails_after_takeover(self, store):
        fence = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=11)
        assert store.renew_lease(fence, ttl_s=10, now=12) is False
        assert store.acquire_lease("transform", "o1", ttl_s=10, now=12) is None  # o2 still holds it

    def test_renew_of_expired_but_untaken_lease_succeeds(self, store):
        fence = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        assert store.renew_lease(fence, ttl_s=10, now=30) is True
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=35) is None

    def test_renew_of_unknown_lease_fails(self, store):
        assert store.renew_lease(Fence("never", "o1", 1), ttl_s=10, now=0) is False

    def test_release_only_by_owner_and_the_epoch_never_goes_back(self, store):
        fence = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        store.release_lease(Fence("transform", "o2", fence.epoch))
        assert store.acquire_lease("transform", "o2", ttl_s=10, now=1) is None
        store.release_lease(fence)
        taken = store.acquire_lease("transform", "o2", ttl_s=10, now=1)
        assert taken.epoch > fence.epoch
        assert store.renew_lease(fence, ttl_s=10, now=2) is False

    def test_release_of_unknown_lease_is_a_no_op(self, store):
        store.release_lease(Fence("never", "o1", 7))
        assert store.acquire_lease("never", "o1", ttl_s=10, now=0)

    def test_leases_are_independent_by_name(self, store):
        assert store.acquire_lease("extract:a", "o1", ttl_s=10, now=0)
        assert store.acquire_lease("extract:b", "o2", ttl_s=10, now=0)
        assert store.acquire_lease("extract:a", "o2", ttl_s=10, now=1) is None


class FencingContract(ContractBase):
    """Fencing: every durable write is refused to a writer that lost its lease."""

    @pytest.fixture
    def stale_and_current(self, store):
        """o1 held the lease, stalled past expiry; o2 took over. Returns (stale fence, current fence)."""
        stale = store.acquire_lease("transform", "o1", ttl_s=10, now=0)
        current = store.acquire_lease("transform", "o2", ttl_s=10, now=11)
        return stale, current

    def test_stale_commit_cannot_revert_a_corrected_value(self, store, stale_and_current):
        stale, current = stale_and_current
        store.put_raw_batch(batch(batch_id="b:0", source="b"))
        pending = store.pending_raw_batches(1, source="b")[0]
        store.commit_transformed(pending, [record(price_usd=200.0)], [], [asset()], fence=current)
        store.put_raw_batch(batch(batch_id="b:1", source="b", payload="other"))
        other = store.get_raw_batch("b:1")
        with pytest.raises(LeaseLost):
            store.commit_transformed(other, [record(price_usd=100.0), record(source_id="eth")],
                                     [quarantined("q-stale")], [asset("eth-ethereum")], fence=stale)
        [item] = store.query_normalized(DataQuery()).items
        assert item["price_usd"] == 200.0
        assert store.count_raw_batches("b", pending_only=True) == 1  # b:1 was not marked done
        assert store.count_quarantine() == 0

    def test_stale_checkpoint_and_batch_writes_are_refused(self, store, stale_and_current):
        stale, current = stale_and_current
        store.put_checkpoint("extract:b", {"offset": 50}, fence=current)
        with pytest.raises(LeaseLost):
            store.put_checkpoint("extract:b", {"offset": 10}, fence=stale)
        with pytest.raises(LeaseLost):
            store.put_raw_batch(batch(batch_id="b:9"), checkpoint=("extract:b", {"offset": 90}), fence=stale)
        assert store.get_checkpoint("extract:b") == {"offset": 50}
        assert store.get_raw_batch("b:9") is None

    def test_stale_ledger_state_and_quarantine_writes_are_refused(self, store, stale_and_current):
        stale, current = stale_and_current
        store.save_run(run("r-stale", status="running"), fence=current)
        with pytest.raises(LeaseLost):
            store.save_run(run("r-stale", status="succeeded"), fence=stale)
        assert store.get_run("r-stale").status == "running"
        with pytest.raises(LeaseLost):
            store.cas_state("mapping:b", {"x": 1}, 0, fence=stale)
        assert store.get_state("mapping:b") == (None, 0)
        self.commit_pending(store, quarantine=[quarantined("q1")])
        with pytest.raises(LeaseLost):
            store.resolve_quarantine(["q1"], "r-stale", fence=stale)
        assert store.count_quarantine(unresolved_only=True) == 1

    def test_current_fence_writes_everything(self, store, stale_and_current):
        _, current = stale_and_current
        store.put_raw_batch(batch(batch_id="b:0", source="b"), checkpoint=("extract:b", {"offset": 2}),
                            fence=current)
        pending = store.pending_raw_batches(1, source="b")[0]
        store.commit_transformed(pending, [record()], [quarantined("q1")], [asset()], fence=current)
        assert store.save_run(run("r2", status="succeeded"), fence=current) is True
        assert store.cas_state("mapping:b", {"x": 1}, 0, fence=current) is True
        assert store.resolve_quarantine(["q1"], "r2", fence=current) == 1
        assert store.get_checkpoint("extract:b") == {"offset": 2}
        assert store.count_raw_batches("b", pending_only=True) == 0
        assert store.count_normalized() == 1

    def test_a_released_lease_still_fences_its_old_holder_after_a_takeover(self, store):
        first = store.acquire_lease("extract:b", "o1", ttl_s=10, now=0)
        store.release_lease(first)
        store.acquire_lease("extract:b", "o2", ttl_s=10, now=1)
        with pytest.raises(LeaseLost):
            store.put_checkpoint("extract:b", {"offset": 1}, fence=first)


class StateContract(ContractBase):
    """SharedState: versioned documents, compare-and-set."""

    def test_absent_state_is_none_at_version_zero(self, store):
        assert store.get_state("limiter:a") == (None, 0)

    def test_state_compare_and_set(self, store):
        assert store.cas_state("limiter:a", {"log": [1]}, 0)
        assert not store.cas_state("limiter:a", {"log": [9]}, 0)  # someone created it first
        assert store.get_state("limiter:a") == ({"log": [1]}, 1)
        assert store.cas_state("limiter:a", {"log": [1, 2]}, 1)
        assert not store.cas_state("limiter:a", {"log": [7]}, 1)  # stale version
        assert store.get_state("limiter:a") == ({"log": [1, 2]}, 2)
        assert store.get_state("limiter:b") == (None, 0)


class BatchContract(ContractBase):
    """BatchStore: raw batches and their checkpoints."""

    def test_a_rewritten_batch_goes_behind_the_ones_written_since(self, store):
        store.put_raw_batch(batch("b:0"))
        store.put_raw_batch(batch("b:1"))
        store.put_raw_batch(batch("b:0"))  # unchanged: keeps its place
        assert [b.batch_id for b in store.pending_raw_batches(10)] == ["b:0", "b:1"]
        store.put_raw_batch(batch("b:0", payload="corrected"))
        assert [b.batch_id for b in store.pending_raw_batches(10)] == ["b:1", "b:0"]

    def test_missing_checkpoint_is_none(self, store):
        assert store.get_checkpoint("extract:a") is None

    def test_checkpoint_round_trips(self, store):
        value = {"page": 3, "cursor": "abc", "done": False, "ratio": 0.25, "missing": None,
                 "seen": ["x", "ü"], "nested": {"a.b": 1, "$where": "kept", "deep": {"x": [1, 2]}}}
        store.put_checkpoint("extract:a", value)
        assert store.get_checkpoint("extract:a") == value

    def test_checkpoint_is_replaced_not_merged(self, store):
        store.put_checkpoint("extract:a", {"page": 1, "cursor": "abc"})
        store.put_checkpoint("extract:a", {"page": 2})
        store.put_checkpoint("extract:b", {"offset": 7})
        assert store.get_checkpoint("extract:a") == {"page": 2}
        assert store.get_checkpoint("extract:b") == {"offset": 7}

    def test_get_and_requeue_a_raw_batch(self, store):
        store.put_raw_batch(batch(header=["A"]))
        [pending] = store.pending_raw_batches(10)
        store.commit_transformed(pending, [], [], [])
        assert store.get_raw_batch("a:0").header == ["A"] and store.get_raw_batch("nope") is None
        assert store.requeue_raw_batch("a:0") and not store.requeue_raw_batch("nope")
        [again] = store.pending_raw_batches(10)
        assert again.version == pending.version + 1
        store.commit_transformed(pending, [], [], [])  # the old version's commit does not close the requeued batch
        assert store.count_raw_batches(pending_only=True) == 1

    def test_put_raw_batch_round_trips_as_pending(self, store, clock):
        original = batch(
            payload="$line.1\n{\"$x\": 1}", row_count=2, first_row=41, header=["a.b", "$c", "ü"],
            rejects=[{"line": 3, "$error.kind": "bad quote"}], position={"offset": 40, "$k.x": [1, "y"]},
        )
        store.put_raw_batch(original)
        [stored] = store.pending_raw_batches(10)
        assert stored == RawBatch(
            batch_id="a:0", source="a", run_id="run-1", format="csv_lines", payload="$line.1\n{\"$x\": 1}",
            row_count=2, first_row=41, header=["a.b", "$c", "ü"], rejects=[{"line": 3, "$error.kind": "bad quote"}],
            position={"offset": 40, "$k.x": [1, "y"]}, version=1, created_at=iso_utc(clock()),
        )

    def test_json_batch_without_header_round_trips(self, store):
        store.put_raw_batch(batch(format="json", payload='{"data": []}', header=None, row_count=0))
        [stored] = store.pending_raw_batches(10)
        assert (stored.format, stored.payload, stored.header, stored.rejects, stored.position) == (
            "json", '{"data": []}', None, [], {})

    def test_put_raw_batch_writes_its_checkpoint(self, store):
        store.put_raw_batch(batch(), checkpoint=("extract:a", {"offset": 2}))
        assert store.get_checkpoint("extract:a") == {"offset": 2}
        assert store.count_raw_batches() == 1

    def test_put_raw_batch_without_checkpoint_leaves_checkpoints_alone(self, store):
        store.put_checkpoint("extract:a", {"offset": 0})
        store.put_raw_batch(batch())
        assert store.get_checkpoint("extract:a") == {"offset": 0}

    def test_replaying_identical_batch_keeps_done_batch_done(self, store, clock):
        store.put_raw_batch(batch())
        [pending] = store.pending_raw_batches(10)
        store.commit_transformed(pending, [], [], [])
        clock.advance(60)
        store.put_raw_batch(batch(run_id="run-2"), checkpoint=("extract:a", {"offset": 2}))
        assert store.pending_raw_batches(10) == []
        assert store.count_raw_batches() == 1
        assert store.count_raw_batches(pending_only=True) == 0
        assert store.get_checkpoint("extract:a") == {"offset": 2}

    def test_replaying_identical_pending_batch_keeps_version_and_overwrites_metadata(self, store, clock):
        store.put_raw_batch(batch(position={"offset": 0}))
        created_at = iso_utc(clock())
        clock.advance(60)
        store.put_raw_batch(batch(run_id="run-2", position={"offset": 2}))
        [stored] = store.pending_raw_batches(10)
        assert (stored.version, stored.run_id, stored.position, stored.created_at) == (
            1, "run-2", {"offset": 2}, created_at)

    def test_changed_payload_bumps_version_and_makes_batch_pending_again(self, store, clock):
        store.put_raw_batch(batch(payload="old"))
        [pending] = store.pending_raw_batches(10)
        store.commit_transformed(pending, [], [], [])
        created_at = iso_utc(clock())
        clock.advance(60)
        store.put_raw_batch(batch(payload="new", row_count=5))
        [stored] = store.pending_raw_batches(10)
        assert (stored.payload, stored.row_count, stored.version, stored.created_at) == ("new", 5, 2, created_at)
        store.put_raw_batch(batch(payload="newer"))
        assert store.pending_raw_batches(10)[0].version == 3
        assert store.count_raw_batches() == 1

    @pytest.mark.parametrize("change", [{"header": ["X", "Y"]}, {"format": "json"},
                                        {"rejects": [{"row_number": 1, "raw": "x", "reason": "r"}]}])
    def test_same_payload_read_differently_makes_batch_pending_again(self, store, change):
        store.put_raw_batch(batch(header=["A", "B"]))
        [pending] = store.pending_raw_batches(10)
        store.commit_transformed(pending, [], [], [])
        store.put_raw_batch(batch(**{"header": ["A", "B"], **change}))
        [stored] = store.pending_raw_batches(10)
        assert stored.version == 2

    def test_pending_batches_come_in_first_write_order(self, store, clock):
        for batch_id in ("b:2", "a:9", "c:1", "a:1"):
            store.put_raw_batch(batch(batch_id=batch_id, source=batch_id[0]))
            clock.advance(1)
        store.put_raw_batch(batch(batch_id="b:2", source="b"))  # the same content again keeps its place
        assert [b.batch_id for b in store.pending_raw_batches(10)] == ["b:2", "a:9", "c:1", "a:1"]

    def test_pending_batches_filter_by_source_and_limit(self, store):
        for batch_id in ("a:0", "b:0", "a:1", "a:2", "b:1"):
            store.put_raw_batch(batch(batch_id=batch_id, source=batch_id[0]))
        assert [b.batch_id for b in store.pending_raw_batches(10, source="a")] == ["a:0", "a:1", "a:2"]
        assert [b.batch_id for b in store.pending_raw_batches(2, source="a")] == ["a:0", "a:1"]
        assert [b.batch_id for b in store.pending_raw_batches(3)] == ["a:0", "b:0", "a:1"]
        assert store.pending_raw_batches(0) == []
        assert store.pending_raw_batches(10, source="zzz") == []

    def test_done_batches_are_not_pending(self, store):
        for batch_id in ("a:0", "a:1", "a:2"):
            store.put_raw_batch(batch(batch_id=batch_id))
        first = store.pending_raw_batches(1)[0]
        store.commit_transformed(first, [], [], [])
        assert [b.batch_id for b in store.pending_raw_batches(10)] == ["a:1", "a:2"]

    def test_count_raw_batches(self, store):
        for batch_id in ("a:0", "a:1", "b:0"):
            store.put_raw_batch(batch(batch_id=batch_id, source=batch_id[0]))
        store.commit_transformed(store.pending_raw_batches(1)[0], [], [], [])  # a:0 done
        assert store.count_raw_batches() == 3
        assert store.count_raw_batches(source="a") == 2
        assert store.count_raw_batches(pending_only=True) == 2
        assert store.count_raw_batches(source="a", pending_only=True) == 1
        assert store.count_raw_batches(source="zzz") == 0


class RecordContract(ContractBase):
    """RecordStore: normalized records, assets, reads."""

    DATASET = [
        record("a", "btc", "2026-01-01T00:00:00Z", symbol="BTC", price_usd=100.0, market_cap_usd=9e11,
               volume_24h_usd=3e9, ingested_at="2026-01-02T00:00:00.000Z"),
        record("a", "btc", "2026-01-01T01:00:00Z", symbol="BTC", price_usd=101.0, market_cap_usd=9.1e11,
               volume_24h_usd=1e9, ingested_at="2026-01-02T00:00:01.000Z"),
        record("b", "XBT", "2026-01-01T00:30:00Z", symbol="BTC", price_usd=99.5, market_cap_usd=None,
               volume_24h_usd=2e9, ingested_at="2026-01-02T00:00:02.000Z"),
        record("a", "eth", "2026-01-01T00:15:00Z", symbol="ETH", asset_id="eth-ethereum", name="Ethereum",
               price_usd=3.5, market_cap_usd=4e11, volume_24h_usd=None, ingested_at="2026-01-02T00:00:03.000Z"),
        record("c", "ethereum", "2026-01-01T00:45:00Z", symbol="ETH", asset_id="eth-ethereum", name="Ethereum",
               price_usd=None, market_cap_usd=4.1e11, volume_24h_usd=7e9, ingested_at="2026-01-02T00:00:04.000Z"),
        record("c", "sol", "2026-01-01T00:05:00Z", symbol="SOL", asset_id="sol-solana", name="Solana",
               price_usd=-0.5, market_cap_usd=1e10, volume_24h_usd=5e8, ingested_at="2026-01-02T00:00:05.000Z"),
    ]

    def test_commit_inserts_records(self, store):
        rows = [record(source_id="btc"), record(source_id="eth", symbol="ETH", asset_id="eth-ethereum",
                                                name="Ethereum", price_usd=None, market_cap_usd=None)]
        self.commit_pending(store, records=rows)
        assert store.count_normalized() == 2
        items = store.query_normalized(DataQuery(sort_by="symbol", descending=False)).items
        assert items == [as_item(r) for r in rows]
        assert all(list(item) == list(NORMALIZED_FIELDS) for item in items)

    def test_recommitting_same_records_adds_no_rows(self, store):
        rows = [record(source_id=str(i)) for i in range(5)]
        self.commit_pending(store, records=rows)
        self.commit_pending(store, records=rows)
        assert store.count_normalized() == 5

    def test_recommit_overwrites_values_but_keeps_first_seen_fields(self, store):
        self.commit_pending(store, records=[record(price_usd=100.0, name="Bitcoin")])
        later = record(price_usd=105.5, name="Bitcoin Core", ingested_at="2026-02-01T00:00:00.000Z",
                       run_id="run-2")
        self.commit_pending(store, records=[later])
        [item] = store.query_normalized(DataQuery()).items
        assert item == {**as_item(later), "ingested_at": "2026-01-01T00:05:00.000Z", "run_id": "run-1"}

    def test_duplicate_records_in_one_commit_leave_one_row(self, store):
        first = record(price_usd=1.0, run_id="run-1", ingested_at="2026-01-01T00:00:00.000Z")
        last = record(price_usd=2.0, run_id="run-9", ingested_at="2026-01-09T00:00:00.000Z")
        self.commit_pending(store, records=[first, last])
        [item] = store.query_normalized(DataQuery()).items
        assert (item["price_usd"], item["run_id"], item["ingested_at"]) == (2.0, "run-1", "2026-01-01T00:00:00.000Z")

    def test_records_differing_in_identity_fields_are_distinct(self, store):
        self.commit_pending(store, records=[
            record(), record(source="b"), record(source_id="xbt"), record(observed_at="2026-01-01T01:00:00Z")])
        assert store.count_normalized() == 4

    def test_numeric_values_read_back_as_floats(self, store):
        self.commit_pending(store, records=[record(price_usd=100, volume_24h_usd=0)])
        [item] = store.query_normalized(DataQuery()).items
        assert (item["price_usd"], item["volume_24h_usd"]) == (100.0, 0.0)
        assert isinstance(item["price_usd"], float) and isinstance(item["volume_24h_usd"], float)

    def test_commit_upserts_assets_ordered_by_id(self, store, clock):
        self.commit_pending(store, assets=[asset("eth-ethereum", symbol="ETH", name="Ethereum"), asset()])
        now = iso_utc(clock())
        assert store.list_assets() == [
            {"asset_id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "first_seen_at": now,
             "updated_at": now, "sources": ["a"]},
            {"asset_id": "eth-ethereum", "symbol": "ETH", "name": "Ethereum", "first_seen_at": now,
             "updated_at": now, "sources": ["a"]},
        ]
        assert all(list(a) == ASSET_KEYS for a in store.list_assets())

    def test_same_asset_from_two_sources_is_one_asset_with_both(self, store, clock):
        first_seen = iso_utc(clock())
        self.commit_pending(store, assets=[asset(source="c")])
        clock.advance(3600)
        self.commit_pending(store, assets=[asset(source="a", name="Bitcoin (A)"), asset(source="c")])
        assert store.list_assets() == [
            {"asset_id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "first_seen_at": first_seen,
             "updated_at": iso_utc(clock()), "sources": ["a", "c"]},
        ]

    def test_empty_store_has_no_assets(self, store):
        assert store.list_assets() == []

    def test_commit_marks_batch_done(self, store):
        store.put_raw_batch(batch())
        [pending] = store.pending_raw_batches(10)
        store.commit_transformed(pending, [record()], [quarantined()], [asset()])
        assert store.pending_raw_batches(10) == []
        assert store.count_raw_batches(pending_only=True) == 0

    def test_batch_overwritten_during_transform_stays_pending(self, store):
        store.put_raw_batch(batch(payload="old"))
        [fetched] = store.pending_raw_batches(10)
        store.put_raw_batch(batch(payload="new"))  # the extract replays the chunk with new content meanwhile
        store.commit_transformed(fetched, [record()], [], [])
        [still_pending] = store.pending_raw_batches(10)
        assert (still_pending.payload, still_pending.version) == ("new", 2)
        assert store.count_normalized() == 1  # the old batch's records are kept; the new one will upsert over them
        store.commit_transformed(still_pending, [record()], [], [])
        assert store.pending_raw_batches(10) == []

    def test_replaying_a_commit_changes_nothing(self, store):
        store.put_raw_batch(batch())
        [pending] = store.pending_raw_batches(10)
        args = ([record(), record(source_id="eth")], [quarantined()], [asset(), asset(source="b")])
        store.commit_transformed(pending, *args)
        snapshot = (store.query_normalized(DataQuery()), store.list_assets(), store.list_quarantine())
        store.commit_transformed(pending, *args)
        assert (store.query_normalized(DataQuery()), store.list_assets(), store.list_quarantine()) == snapshot
        assert store.count_raw_batches(pending_only=True) == 0

    @staticmethod
    def expected_order(rows, sort_by: str, descending: bool) -> list[dict]:
        """The documented order: `sort_by`, nulls lowest (ties: in an order of the adapter's, tested below)."""
        def key(item):
            value = item[sort_by]
            return (value is not None, value if value is not None else 0)
        return sorted((as_item(r) for r in rows), key=key, reverse=descending)

    @pytest.fixture
    def loaded(self, store):
        self.commit_pending(store, records=self.DATASET)
        return store

    def test_default_query_is_newest_observation_first(self, loaded):
        page = loaded.query_normalized(DataQuery())
        assert isinstance(page, Page)
        assert page.total == len(self.DATASET)
        assert [i["observed_at"] for i in page.items] == sorted((as_item(r)["observed_at"] for r in self.DATASET),
                                                                reverse=True)

    @pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
    @pytest.mark.parametrize("sort_by", SORTABLE_FIELDS)
    def test_sort_by_each_sortable_field(self, loaded, sort_by, descending):
        page = loaded.query_normalized(DataQuery(sort_by=sort_by, descending=descending))
        expected = self.expected_order(self.DATASET, sort_by, descending)
        assert [i[sort_by] for i in page.items] == [i[sort_by] for i in expected]
        assert sorted(page.items, key=repr) == sorted(expected, key=repr)

    @pytest.mark.parametrize(
        ("filters", "expected_ids"),
        [
            ({"symbol": "BTC"}, {"btc", "XBT"}),
            ({"source": "c"}, {"ethereum", "sol"}),
            ({"asset_id": "eth-ethereum"}, {"eth", "ethereum"}),
            ({"symbol": "BTC", "source": "a"}, {"btc"}),
            ({"symbol": "ETH", "source": "c", "asset_id": "eth-ethereum"}, {"ethereum"}),
            ({"symbol": "DOGE"}, set()),
        ],
    )
    def test_query_filters(self, loaded, filters, expected_ids):
        page = loaded.query_normalized(DataQuery(**filters))
        assert {i["source_id"] for i in page.items} == expected_ids
        assert page.total == sum(1 for r in self.DATASET
                                 if all(as_item(r)[name] == value for name, value in filters.items()))

    def test_paging_walks_the_whole_order_with_a_stable_total(self, loaded):
        expected = self.expected_order(self.DATASET, "price_usd", True)
        pages = [loaded.query_normalized(DataQuery(page=n, limit=4, sort_by="price_usd")) for n in (1, 2, 3)]
        assert [len(p.items) for p in pages] == [4, 2, 0]
        assert all(p.total == len(self.DATASET) for p in pages)
        assert pages[0].items + pages[1].items == expected

    def test_paging_applies_after_filters(self, loaded):
        page = loaded.query_normalized(DataQuery(page=2, limit=1, symbol="BTC", sort_by="observed_at",
                                                 descending=False))
        assert [i["observed_at"] for i in page.items] == ["2026-01-01T00:30:00Z"]
        assert page.total == 3

    def test_query_on_empty_store(self, store):
        assert store.query_normalized(DataQuery()) == Page(items=[], total=0)

    def test_count_normalized(self, loaded):
        assert loaded.count_normalized() == 6
        assert (loaded.count_normalized("a"), loaded.count_normalized("b"), loaded.count_normalized("c")) == (3, 1, 2)
        assert loaded.count_normalized("zzz") == 0

    def test_counts_follow_new_records_not_updates(self, loaded):
        again = [r[:7] + (1.0,) + r[8:] for r in self.DATASET[:3]]  # the same keys, new prices: updates
        self.commit_pending(loaded, records=again + [record("b", "new", "2026-02-01T00:00:00Z")])
        assert (loaded.count_normalized(), loaded.count_normalized("a"), loaded.count_normalized("b")) == (7, 3, 2)
        self.commit_pending(loaded, records=again)  # a replayed batch
        assert loaded.count_normalized() == 7
        one_source = [self.DATASET[0][:7] + (2.0,) + self.DATASET[0][8:], record("a", "fresh", "2026-03-01T00:00:00Z")]
        self.commit_pending(loaded, records=one_source)  # an update and a new record of one source
        assert (loaded.count_normalized(), loaded.count_normalized("a")) == (8, 4)

    @pytest.mark.parametrize("descending", [False, True], ids=["asc", "desc"])
    @pytest.mark.parametrize("sort_by", SORTABLE_FIELDS)
    def test_keyset_walk_returns_the_whole_order_once(self, loaded, sort_by, descending):
        pages, after = [], None
        while True:
            rows = loaded.read_page(DataQuery(limit=2, sort_by=sort_by, descending=descending, after=after))
            pages.append(rows.items)
            if rows.after is None:
                break
            after = rows.after
        walked = [i for p in pages for i in p]
        assert [len(p) for p in pages] == [2, 2, 2]
        # ties included, the walk is exactly the order of one read: the tiebreaker is unique and stable
        assert walked == loaded.read_normalized(DataQuery(limit=100, sort_by=sort_by, descending=descending))
        assert [i[sort_by] for i in walked] == [
            i[sort_by] for i in self.expected_order(self.DATASET, sort_by, descending)]
        assert sorted(walked, key=repr) == sorted(map(as_item, self.DATASET), key=repr)

    def test_keyset_after_a_null_value(self, loaded):
        eth_c = as_item(self.DATASET[4])  # the only record without a price
        ascending = loaded.read_page(DataQuery(sort_by="price_usd", descending=False, limit=1))
        assert ascending.items == [eth_c]  # NULLs first ascending
        rest = loaded.read_normalized(DataQuery(sort_by="price_usd", descending=False, after=ascending.after))
        assert len(rest) == 5 and eth_c not in rest
        descending = loaded.read_page(DataQuery(sort_by="price_usd", limit=5))
        assert eth_c not in descending.items  # ... and last descending
        assert loaded.read_normalized(DataQuery(sort_by="price_usd", after=descending.after)) == [eth_c]
        assert loaded.read_page(DataQuery(sort_by="price_usd", limit=6)).after is None

    @pytest.mark.parametrize("after", [("BTC", ["a list"]), (True, "x"), ({"a": 1}, 1), ("BTC", True)])
    def test_a_forged_position_is_an_input_error(self, loaded, after):
        with pytest.raises(InputError, match="cursor"):
            loaded.read_page(DataQuery(sort_by="symbol", after=after))

    def test_records_keep_their_position_when_updated(self, loaded):
        first = loaded.read_page(DataQuery(limit=3, sort_by="symbol"))
        self.commit_pending(loaded, records=[self.DATASET[0][:7] + (1.0,) + self.DATASET[0][8:]])
        again = loaded.read_page(DataQuery(limit=3, sort_by="symbol"))
        assert again.after == first.after
        assert loaded.count_normalized() == len(self.DATASET)

    @pytest.mark.parametrize(
        ("filters", "expected_ids"),
        [
            ({"symbols": ("BTC", "SOL")}, {"btc", "XBT", "sol"}),
            ({"symbols": ("ETH",), "symbol": "SOL"}, {"eth", "ethereum", "sol"}),
            ({"from_at": "2026-01-01T00:30:00Z"}, {"btc", "XBT", "ethereum"}),
            ({"to_at": "2026-01-01T00:30:00Z"}, {"btc", "eth", "sol"}),
            ({"from_at": "2026-01-01T00:05:00Z", "to_at": "2026-01-01T00:45:00Z", "source": "a"}, {"eth"}),
        ],
    )
    def test_symbols_and_time_window(self, loaded, filters, expected_ids):
        query = DataQuery(**filters)
        assert {(i["source_id"], i["observed_at"]) for i in loaded.read_normalized(query)} == {
            (as_item(r)["source_id"], as_item(r)["observed_at"]) for r in self.DATASET
            if as_item(r)["source_id"] in expected_ids
            and (not query.from_at or as_item(r)["observed_at"] >= query.from_at)
            and (not query.to_at or as_item(r)["observed_at"] < query.to_at)}
        assert loaded.count_matching(query) == len(loaded.read_normalized(query))

    def test_data_version_moves_on_every_commit(self, store):
        before = store.data_version()
        self.commit_pending(store, records=[record()])
        after_one = store.data_version()
        self.commit_pending(store, records=[])
        assert before < after_one < store.data_version()

    def test_latest_by_source_side_by_side(self, store):
        rows = [record(src, sid, t, price_usd=p, asset_id=aid, symbol=sym)
                for src, sid, t, p, aid, sym in [
                    ("a", "btc", "2026-01-01T00:00:00.000Z", 1.0, "btc-bitcoin", "BTC"),
                    ("a", "btc", "2026-01-01T02:00:00.000Z", 2.0, "btc-bitcoin", "BTC"),
                    ("b", "XBT", "2026-01-01T01:00:00.000Z", 3.0, "btc-bitcoin", "BTC"),
                    ("c", "bitcoin", "2026-01-01T03:00:00.000Z", 4.0, "btc-bitcoin", "BTC"),
                    ("c", "bitcoin", "2026-01-01T00:30:00.000Z", 5.0, "btc-bitcoin", "BTC"),
                    ("a", "eth", "2026-01-01T00:00:00.000Z", 6.0, "eth-ethereum", "ETH")]]
        assets = [asset("btc-bitcoin", s) for s in "abc"] + [asset("eth-ethereum", "a", "ETH", "Ethereum")]
        self.commit_pending(store, records=rows, assets=assets)
        got = [(i["asset_id"], i["source"], i["price_usd"]) for i in store.latest_by_source(DataQuery())]
        assert got == [("btc-bitcoin", "a", 2.0), ("btc-bitcoin", "b", 3.0), ("btc-bitcoin", "c", 4.0),
                       ("eth-ethereum", "a", 6.0)]
        assert store.count_assets(DataQuery()) == 2
        assert [i["price_usd"] for i in store.latest_by_source(DataQuery(limit=1, page=2))] == [6.0]
        assert [i["price_usd"] for i in store.latest_by_source(DataQuery(source="b"))] == [3.0]
        assert store.count_assets(DataQuery(symbols=("ETH",))) == 1

    def test_a_final_status_is_written_once(self, store):
        assert store.save_run(run(status="running")) is True
        assert store.save_run(run(status="failed", summary={"warnings": [], "errors": ["abandoned"]})) is True
        assert store.save_run(run(status="succeeded")) is False  # a late save cannot overwrite the verdict
        assert store.get_run("r1").status == "failed"


class QuarantineContract(ContractBase):
    """QuarantineStore: entries, listing, resolution."""

    def test_a_commit_resolves_the_entries_it_supersedes_in_the_same_write(self, store):
        self.commit_pending(store, quarantine=[quarantined("q1"), quarantined("q2", row_number=2)])
        store.put_raw_batch(batch("b:0"))
        pending = store.pending_raw_batches(1)[0]
        store.commit_transformed(pending, [record()], [], [], resolves=["q1", "unknown"], resolved_by="r9")
        entries = {e["id"]: e for e in store.list_quarantine()}
        assert (entries["q1"]["resolved_by"], entries["q2"]["resolved_by"]) == ("r9", None)
        assert store.resolve_quarantine(["q1", "q2", "nope"], "r10") == 1

    def test_quarantine_entries_resolve_once(self, store):
        entries = [{"id": f"q{i}", "source": "a", "run_id": "r", "reason": "bad"} for i in range(3)]
        store.put_raw_batch(batch())
        store.commit_transformed(store.pending_raw_batches(1)[0], [], entries, [])
        assert store.count_quarantine(unresolved_only=True) == 3
        assert store.resolve_quarantine(["q0", "q2", "missing"], "replay-1") == 2
        assert store.resolve_quarantine(["q0"], "replay-2") == 0
        [open_entry] = store.list_quarantine(unresolved_only=True)
        assert open_entry["id"] == "q1" and open_entry["resolved_at"] is None
        resolved = {e["id"]: e["resolved_by"] for e in store.list_quarantine() if e["resolved_at"]}
        assert resolved == {"q0": "replay-1", "q2": "replay-1"}
        assert store.count_quarantine("a", unresolved_only=True) == 1 and store.count_quarantine("a") == 3

    def test_quarantine_entries_are_stored(self, store, clock):
        self.commit_pending(store, quarantine=[
            quarantined("q1", row_number=2), quarantined("q2", batch_id=None, row_number=None, raw=None)])
        now = iso_utc(clock())
        entries = store.list_quarantine()
        assert entries == [
            {"id": "q2", "source": "a", "run_id": "run-1", "batch_id": None, "row_number": None, "raw": None,
             "reason": "missing price", "created_at": now, "resolved_at": None, "resolved_by": None},
            {"id": "q1", "source": "a", "run_id": "run-1", "batch_id": "a:0", "row_number": 2, "raw": "x,y",
             "reason": "missing price", "created_at": now, "resolved_at": None, "resolved_by": None},
        ]
        assert all(list(entry) == QUARANTINE_KEYS for entry in entries)

    def test_optional_quarantine_fields_may_be_absent(self, store):
        self.commit_pending(store, quarantine=[{"id": "q1", "source": "a", "run_id": "r", "reason": "bad"}])
        [entry] = store.list_quarantine()
        assert (entry["batch_id"], entry["row_number"], entry["raw"]) == (None, None, None)

    def test_quarantine_is_idempotent_by_id(self, store, clock):
        self.commit_pending(store, quarantine=[quarantined("q1")])
        first = store.list_quarantine()
        clock.advance(60)
        self.commit_pending(store, quarantine=[quarantined("q1", reason="changed")])
        assert store.list_quarantine() == first
        assert store.count_quarantine() == 1

    def test_quarantine_list_order_filter_and_paging(self, store, clock):
        self.commit_pending(store, quarantine=[
            quarantined("q-b2", batch_id="b", row_number=2), quarantined("q-a9", batch_id="a", row_number=9),
            quarantined("q-b1", batch_id="b", row_number=1), quarantined("q-c", source="c", batch_id="c")])
        clock.advance(60)
        self.commit_pending(store, quarantine=[quarantined("q-late", batch_id="a", row_number=0)])
        ids = [e["id"] for e in store.list_quarantine()]
        assert ids == ["q-a9", "q-b1", "q-b2", "q-c", "q-late"]  # created_at, then batch_id, then row_number
        assert [e["id"] for e in store.list_quarantine(source="a")] == ["q-a9", "q-b1", "q-b2", "q-late"]
        assert [e["id"] for e in store.list_quarantine(limit=2, offset=1)] == ["q-b1", "q-b2"]
        assert [e["id"] for e in store.list_quarantine(source="a", limit=10, offset=3)] == ["q-late"]
        assert store.list_quarantine(limit=0) == []
        assert store.list_quarantine(source="zzz") == []

    def test_count_quarantine(self, store):
        self.commit_pending(store, quarantine=[quarantined("q1"), quarantined("q2"), quarantined("q3", source="c")])
        assert (store.count_quarantine(), store.count_quarantine("a"), store.count_quarantine("c")) == (3, 2, 1)
        assert store.count_quarantine("zzz") == 0


class LedgerContract(ContractBase):
    """RunLedger: runs, written once, found by status."""

    def test_run_round_trips(self, store):
        original = run(
            status="partial", finished_at="2026-01-01T00:01:00.000Z", duration_ms=60_000, rows_in=10, rows_out=8,
            quarantined=2, checkpoint={"offset": 10, "$k.x": None},
            summary={"warnings": ["slow"], "errors": [], "mapping": {"Price.USD": "price_usd", "$x": 0.93}},
        )
        store.save_run(original)
        assert store.get_run("r1") == original

    def test_unknown_run_is_none(self, store):
        assert store.get_run("nope") is None

    def test_save_run_replaces_the_entry(self, store):
        store.save_run(run(status="running"))
        store.save_run(run(status="succeeded", rows_out=5, finished_at="2026-01-01T00:00:09.000Z"))
        assert store.get_run("r1") == run(status="succeeded", rows_out=5, finished_at="2026-01-01T00:00:09.000Z")
        assert len(store.list_runs()) == 1

    def test_running_runs_finds_every_one_however_many_came_after(self, store):
        store.save_run(run("old", "extract", "b", status="running", started_at="2026-01-01T00:00:00.000Z"))
        for index in range(60):
            store.save_run(run(f"s{index:02d}", "extract", "b", status="skipped",
                               started_at=f"2026-01-02T00:{index:02d}:00.000Z"))
        store.save_run(run("other-source", "extract", "a", status="running"))
        store.save_run(run("other-stage", "transform_load", None, status="running"))
        assert [r.run_id for r in store.running_runs("extract", "b")] == ["old"]
        assert [r.run_id for r in store.running_runs("transform_load", None)] == ["other-stage"]
        assert [r.run_id for r in store.list_runs(status="running", limit=10)] == ["other-stage", "other-source",
                                                                                   "old"]

    def test_list_runs_is_newest_first_with_filters_and_limit(self, store):
        runs = [
            run("r1", "extract", "a", started_at="2026-01-01T00:00:00.000Z"),
            run("r2", "extract", "b", started_at="2026-01-01T02:00:00.000Z"),
            run("r3", "transform", None, started_at="2026-01-01T01:00:00.000Z"),
            run("r4", "extract", "a", started_at="2026-01-01T03:00:00.000Z"),
            run("r5", "extract", "a", started_at="2026-01-01T03:00:00.000Z"),  # tie: higher run_id first
        ]
        for entry in runs:
            store.save_run(entry)
        assert [r.run_id for r in store.list_runs()] == ["r5", "r4", "r2", "r3", "r1"]
        assert [r.run_id for r in store.list_runs(stage="extract")] == ["r5", "r4", "r2", "r1"]
        assert [r.run_id for r in store.list_runs(source="a")] == ["r5", "r4", "r1"]
        assert [r.run_id for r in store.list_runs(stage="extract", source="b")] == ["r2"]
        assert [r.run_id for r in store.list_runs(stage="transform", source="a")] == []
        assert [r.run_id for r in store.list_runs(limit=2)] == ["r5", "r4"]
        assert store.list_runs(stage="transform") == [runs[2]]

    def test_run_durations_are_the_finished_runs_among_the_newest_of_exactly_that_stage_and_source(self, store):
        for i, (status, source, ms) in enumerate([
            ("succeeded", "a", 10), ("failed", "a", 20), ("running", "a", None), ("skipped", "a", 0),
            ("partial", "a", 40), ("succeeded", "b", 99), ("succeeded", None, 7), ("succeeded", "a", None),
        ]):
            store.save_run(run(f"r{i}", "extract", source, status=status, duration_ms=ms,
                               started_at=f"2026-01-01T0{i}:00:00.000Z"))
        store.save_run(run("t1", "transform", None, duration_ms=5, started_at="2026-01-01T09:00:00.000Z"))
        assert store.run_durations("extract", "a", 500) == [40, 20, 10]  # newest first; no duration: left out
        assert store.run_durations("extract", "a", 4) == [40]  # the window counts every run: running, skipped
        assert store.run_durations("extract", None, 500) == [7]  # None: runs without a source, not any source
        assert store.run_durations("transform", None, 500) == [5]
        assert store.run_durations("extract", "c", 500) == [] and store.run_durations("extract", "a", 0) == []

    def test_last_run_by_status_and_stage(self, store):
        for entry in (
            run("r1", "extract", status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r2", "transform", status="succeeded", started_at="2026-01-01T01:00:00.000Z"),
            run("r3", "extract", status="failed", started_at="2026-01-01T02:00:00.000Z"),
            run("r4", "extract", status="running", started_at="2026-01-01T03:00:00.000Z"),
        ):
            store.save_run(entry)
        assert store.last_run(["succeeded"]).run_id == "r2"
        assert store.last_run(["succeeded"], stage="extract").run_id == "r1"
        assert store.last_run(["succeeded", "failed"], stage="extract").run_id == "r3"
        assert store.last_run(["running", "failed"]).run_id == "r4"
        assert store.last_run(["partial"]) is None
        assert store.last_run(["succeeded"], stage="load") is None

    def test_list_runs_pages_by_keyset_without_gaps_or_repeats(self, store):
        for index in range(7):  # two runs share each start time: run_id breaks the tie
            store.save_run(run(f"r{index}", "extract", "a" if index % 3 else "b",
                               status="failed" if index == 4 else "succeeded",
                               started_at=f"2026-01-01T00:0{index // 2}:00.000Z"))
        every = [r.run_id for r in store.list_runs(limit=100)]
        assert every == ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]
        seen, before = [], None
        while True:
            page = store.list_runs(limit=3, before=before)
            seen += [r.run_id for r in page]
            if len(page) < 3:
                break
            before = (page[-1].started_at, page[-1].run_id)
        assert seen == every
        last = store.list_runs(limit=100)[2]
        assert [r.run_id for r in store.list_runs(source="a", before=(last.started_at, last.run_id))] == ["r2", "r1"]
        assert [r.run_id for r in store.list_runs(status="failed", before=("2026-01-01T00:02:00.000Z", "r5"))] == ["r4"]

    def test_count_runs_by_stage_source_and_status_since(self, store):
        for entry in (
            run("r1", "extract", "a", status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r2", "extract", "a", status="failed", started_at="2026-01-02T00:00:00.000Z"),
            run("r3", "extract", "a", status="failed", started_at="2026-01-03T00:00:00.000Z"),
            run("r4", "transform_load", None, status="succeeded", started_at="2026-01-03T00:00:00.000Z"),
        ):
            store.save_run(entry)
        assert store.count_runs() == {("extract", "a", "succeeded"): 1, ("extract", "a", "failed"): 2,
                                      ("transform_load", None, "succeeded"): 1}
        assert store.count_runs(since="2026-01-02T12:00:00.000Z") == {("extract", "a", "failed"): 1,
                                                                     ("transform_load", None, "succeeded"): 1}
        assert store.count_runs(since="2027-01-01T00:00:00.000Z") == {}

    def test_count_runs_follows_each_run_to_its_one_final_status(self, store):
        store.save_run(run("r1", status="running"))
        store.save_run(run("r1", status="running", rows_in=3))  # progress saved: still one running run
        assert store.count_runs() == {("extract", "a", "running"): 1}
        store.save_run(run("r1", status="succeeded"))
        assert not store.save_run(run("r1", status="failed"))  # a final status is written once: not counted
        store.save_run(run("r2", "transform_load", None, status="failed"))
        assert store.count_runs() == {("extract", "a", "succeeded"): 1, ("transform_load", None, "failed"): 1}
        assert store.count_runs(since="2026-01-01T00:00:00.000Z") == store.count_runs()

    def test_latest_runs_is_the_newest_matching_run_of_each_stage_and_source(self, store):
        for entry in (
            run("r1", "extract", "a", status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r2", "extract", "a", status="partial", started_at="2026-01-02T00:00:00.000Z"),
            run("r3", "extract", "a", status="failed", started_at="2026-01-03T00:00:00.000Z"),
            run("r4", "extract", "b", status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r5", "extract", "b", status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r6", "transform_load", None, status="succeeded", started_at="2026-01-01T00:00:00.000Z"),
            run("r7", "extract", "c", status="failed", started_at="2026-01-01T00:00:00.000Z"),
        ):
            store.save_run(entry)
        got = {(r.stage, r.source): r.run_id for r in store.latest_runs(["succeeded", "partial"])}
        assert got == {("extract", "a"): "r2", ("extract", "b"): "r5", ("transform_load", None): "r6"}
        assert {r.run_id for r in store.latest_runs(["succeeded"])} == {"r1", "r5", "r6"}
        assert store.latest_runs(["skipped"]) == []


class UpgradeContract(ContractBase):
    """Schema upgrades in place: a store written by an older version opens and is upgraded."""

    @abstractmethod
    def make_v1_store(self, tmp_path, clock: FakeClock) -> Store:
        """A store over data written by the first release (V1_RECORDS, a lease without an epoch)."""

    def test_a_first_release_store_upgrades_in_place(self, tmp_path, clock):
        store = self.make_v1_store(tmp_path, clock)
        try:
            assert store.migrate() == (1, SCHEMA_VERSION)
            items = store.query_normalized(DataQuery(limit=10, sort_by="observed_at", descending=False)).items
            got = sorted((i["source"], i["source_id"], i["observed_at"], i["price_usd"], i["idempotency_key"])
                         for i in items)
            assert got == sorted([
                ("source_b", "uni-uniswap", "2020-09-20T23:59:59.000Z", 5.0,
                 idempotency_key("source_b", "uni-uniswap", "2020-09-20T23:59:59.000Z")),
                ("source_b", "btc-bitcoin", "2020-09-20T23:59:59.000Z", 10000.0,
                 idempotency_key("source_b", "btc-bitcoin", "2020-09-20T23:59:59.000Z")),
                ("source_c", "bitcoin", "2025-06-25T10:47:48.500Z", 100000.0,
                 idempotency_key("source_c", "bitcoin", "2025-06-25T10:47:48.500Z")),
                ("source_c", "bitcoin", "2025-06-25T10:47:48.000Z", 99999.0,
                 idempotency_key("source_c", "bitcoin", "2025-06-25T10:47:48.000Z")),
            ])
            times = [i["observed_at"] for i in items]
            assert times[-2:] == ["2025-06-25T10:47:48.000Z", "2025-06-25T10:47:48.500Z"]  # text order = time order
            # the CSV's batches are transformed once more (coins that shared a ticker had lost rows); others are not
            assert [b.batch_id for b in store.pending_raw_batches(10)] == ["source_b:f:0"]
            assert store.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
            fence = store.acquire_lease("transform_load", "new-owner", ttl_s=10, now=clock.now)  # the v1 lease expired
            assert fence and fence.epoch >= 1
            store.put_checkpoint("x", {"ok": 1}, fence=fence)
        finally:
            self.dispose(store)


class V3UpgradeContract(ContractBase):
    """Version 4 (run counts kept as runs are written, an index per stage/source/status) over a version 3 store."""

    @abstractmethod
    def reopen_as_v3(self, store: Store, clock: FakeClock) -> Store:
        """Close `store`, put its schema back as version 3 left it (no run counts, no runs_latest index), reopen."""

    def test_a_v3_store_upgrades_in_place(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        store.save_run(run("r1", "extract", "a", status="running", started_at="2026-01-01T00:00:00.000Z"))
        store.save_run(run("r1", "extract", "a", status="succeeded", started_at="2026-01-01T00:00:00.000Z"))
        store.save_run(run("r2", "extract", "a", status="failed", started_at="2026-01-02T00:00:00.000Z"))
        store.save_run(run("r3", "transform_load", None, status="running", started_at="2026-01-03T00:00:00.000Z"))
        old = self.reopen_as_v3(store, clock)
        try:
            assert old.migrate() == (3, SCHEMA_VERSION)
            assert old.count_runs() == {("extract", "a", "succeeded"): 1, ("extract", "a", "failed"): 1,
                                        ("transform_load", None, "running"): 1}
            assert [r.run_id for r in old.latest_runs(["succeeded", "failed"])] == ["r2"]
            old.save_run(run("r3", "transform_load", None, status="succeeded", started_at="2026-01-03T00:00:00.000Z"))
            assert old.count_runs()[("transform_load", None, "succeeded")] == 1
            assert ("transform_load", None, "running") not in old.count_runs()
            assert old.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
            assert old.count_runs()[("extract", "a", "failed")] == 1  # not counted twice
        finally:
            self.dispose(old)


class V4UpgradeContract(ContractBase):
    """Version 5 (an index per sortable field + natural key, a data version) over a version 4 store."""

    @abstractmethod
    def reopen_as_v4(self, store: Store, clock: FakeClock) -> Store:
        """Close `store`, drop the version 5 indexes, mark it version 4, reopen."""

    @abstractmethod
    def sort_indexes(self, store: Store) -> set[str]:
        """Names of the version 5 indexes present."""

    def test_a_v4_store_upgrades_in_place(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        self.commit_pending(store, records=[record(), record(source="b", price_usd=None)])
        expected = len(self.sort_indexes(store))
        old = self.reopen_as_v4(store, clock)
        try:
            assert old.migrate() == (4, SCHEMA_VERSION)
            assert len(self.sort_indexes(old)) == expected == len(INDEXED_SORTS) + 1  # + view=latest's
            first = old.read_page(DataQuery(limit=1, sort_by="price_usd"))
            assert [i["source"] for i in old.read_normalized(DataQuery(sort_by="price_usd", after=first.after))] == ["b"]
            assert old.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        finally:
            self.dispose(old)


class V7UpgradeContract(ContractBase):
    """Version 8 (records per source kept as they are committed) over a version 7 store."""

    @abstractmethod
    def reopen_as_v7(self, store: Store, clock: FakeClock) -> Store:
        """Close `store`, take away what version 8 keeps, mark it version 7, reopen."""

    def test_a_v7_store_upgrades_in_place_with_its_counts(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        self.commit_pending(store, records=[record(source_id=f"c{n}") for n in range(3)] + [record(source="b")])
        old = self.reopen_as_v7(store, clock)
        try:
            assert old.migrate() == (7, SCHEMA_VERSION)
            assert (old.count_normalized(), old.count_normalized("a"), old.count_normalized("b")) == (4, 3, 1)
            self.commit_pending(old, records=[record(source="b", source_id="x")])
            assert old.count_normalized("b") == 2
            assert old.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        finally:
            self.dispose(old)


class V5UpgradeContract(ContractBase):
    """Version 6 (an index per sort field with a unique record position; SQLite: records in a rowid table) over a
    store as version 5 left it."""

    @abstractmethod
    def reopen_as_v5(self, store: Store, clock: FakeClock) -> Store:
        """Close `store`, put its records and indexes back in their version 5 shape, mark it version 5, reopen."""

    def test_a_v5_store_upgrades_in_place(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        records = [record(source_id=f"coin-{n}", price_usd=float(n % 3), ingested_at=f"2026-01-02T00:00:0{n}.000Z")
                   for n in range(6)]
        self.commit_pending(store, records=records[3:])
        self.commit_pending(store, records=records[:3])
        old = self.reopen_as_v5(store, clock)
        try:
            assert old.migrate() == (5, SCHEMA_VERSION)
            assert len(self.sort_indexes(old)) == len(INDEXED_SORTS) + 1  # + view=latest's
            assert sorted(old.read_normalized(DataQuery()), key=repr) == sorted(map(as_item, records), key=repr)
            walked, after = [], None
            while after is not None or not walked:
                rows = old.read_page(DataQuery(limit=4, sort_by="price_usd", after=after))
                walked, after = walked + rows.items, rows.after
            assert [i["price_usd"] for i in walked] == [2.0, 2.0, 1.0, 1.0, 0.0, 0.0]
            assert len({i["source_id"] for i in walked}) == 6
            self.commit_pending(old, records=[records[0][:7] + (9.0,) + records[0][8:]])  # an upsert, not a new row
            assert old.count_normalized() == 6
            assert old.read_normalized(DataQuery(limit=1, sort_by="price_usd"))[0]["source_id"] == "coin-0"
            assert old.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        finally:
            self.dispose(old)


DAY = 86_400.0


class PruneContract(ContractBase):
    """Retention (`prune_raw_batches`, `prune_runs`, `prune_quarantine`): old housekeeping goes in bounded steps;
    what is still needed (pending batches, batches an unresolved entry replays from, running runs, unresolved
    entries, the run counts behind /metrics) never does."""

    def done_batch(self, store, batch_id, quarantine=()):
        store.put_raw_batch(batch(batch_id=batch_id))
        [pending] = [b for b in store.pending_raw_batches(100) if b.batch_id == batch_id]
        store.commit_transformed(pending, [], list(quarantine), [])

    def test_old_done_batches_go_pending_and_new_ones_stay(self, store, clock):
        for index in range(5):
            self.done_batch(store, f"old:{index}")
        store.put_raw_batch(batch(batch_id="old:pending"))  # as old, never transformed
        clock.advance(8 * DAY)
        self.done_batch(store, "new:0")
        cutoff = iso_utc(clock() - 7 * DAY)
        assert store.prune_raw_batches(cutoff, limit=2) == 2  # a bounded step
        assert store.prune_raw_batches(cutoff, limit=100) == 3
        assert store.prune_raw_batches(cutoff, limit=100) == 0
        assert {b.batch_id for b in store.pending_raw_batches(100)} == {"old:pending"}
        assert store.get_raw_batch("new:0") is not None and store.get_raw_batch("old:0") is None
        assert store.count_raw_batches() == 2

    def test_a_batch_an_unresolved_entry_replays_from_is_kept_until_resolved(self, store, clock):
        self.done_batch(store, "kept", quarantine=[quarantined("q-open", batch_id="kept")])
        self.done_batch(store, "whole", quarantine=[quarantined("q-whole", batch_id="whole", row_number=None)])
        self.done_batch(store, "fixed", quarantine=[quarantined("q-fixed", batch_id="fixed")])
        store.resolve_quarantine(["q-fixed"], "replay-1")
        clock.advance(8 * DAY)
        assert store.prune_raw_batches(iso_utc(clock() - 7 * DAY), limit=100) == 1
        assert store.get_raw_batch("fixed") is None
        assert store.get_raw_batch("kept") is not None and store.get_raw_batch("whole") is not None
        store.resolve_quarantine(["q-open", "q-whole"], "replay-2")
        assert store.prune_raw_batches(iso_utc(clock() - 7 * DAY), limit=100) == 2

    def test_a_pruned_batch_read_again_is_a_new_pending_batch(self, store, clock):
        self.done_batch(store, "b:0")
        clock.advance(8 * DAY)
        store.prune_raw_batches(iso_utc(clock() - 7 * DAY), limit=100)
        store.put_raw_batch(batch(batch_id="b:0"))
        [again] = store.pending_raw_batches(10)
        assert (again.batch_id, again.version) == ("b:0", 1)

    def test_old_finished_runs_go_but_running_ones_and_the_newest_of_each_kind_stay(self, store):
        day = "2026-01-0{}T00:00:00.000Z"
        for index, status in enumerate(("succeeded", "succeeded", "failed", "failed", "succeeded")):
            store.save_run(run(f"old{index}", "extract", "a", status=status, started_at=day.format(index + 1)))
        store.save_run(run("stuck", "extract", "a", status="running", started_at=day.format(1)))
        store.save_run(run("recent", "transform_load", None, status="running", started_at="2026-02-01T00:00:00.000Z"))
        store.save_run(run("recent", "transform_load", None, status="succeeded", started_at="2026-02-01T00:00:00.000Z"))
        counts = store.count_runs()  # (transform_load, None, running) has been counted down to 0: no run of its kind
        assert store.prune_runs("2026-01-20T00:00:00.000Z", limit=1) == 1
        assert store.prune_runs("2026-01-20T00:00:00.000Z", limit=100) == 2
        assert store.prune_runs("2026-01-20T00:00:00.000Z", limit=100) == 0
        left = {r.run_id for r in store.list_runs(limit=100)}
        assert left == {"stuck", "old3", "old4", "recent"}  # running; newest failed and succeeded of extract a
        assert store.count_runs() == counts  # the counters behind /metrics never go back
        store.save_run(run("later", "extract", "a", status="succeeded", started_at="2026-02-02T00:00:00.000Z"))
        assert store.count_runs()[("extract", "a", "succeeded")] == counts[("extract", "a", "succeeded")] + 1
        assert store.prune_runs("2026-01-20T00:00:00.000Z", limit=100) == 1  # old4 is no longer the newest
        assert store.get_run("old4") is None and store.get_run("stuck") is not None

    def test_old_resolved_quarantine_goes_and_unresolved_stays(self, store, clock):
        self.commit_pending(store, quarantine=[quarantined(f"q{i}") for i in range(4)])
        store.resolve_quarantine(["q0", "q1", "q2"], "replay-1")
        clock.advance(40 * DAY)
        self.commit_pending(store, quarantine=[quarantined("q-new")])
        store.resolve_quarantine(["q-new"], "replay-2")  # resolved now: kept for its retention
        cutoff = iso_utc(clock() - 30 * DAY)
        assert store.prune_quarantine(cutoff, limit=2) == 2
        assert store.prune_quarantine(cutoff, limit=100) == 1
        assert {e["id"] for e in store.list_quarantine()} == {"q3", "q-new"}
        assert store.count_quarantine(unresolved_only=True) == 1

    def test_a_stale_pruner_deletes_nothing(self, store, clock):
        self.done_batch(store, "b:0", quarantine=[quarantined("q1", batch_id="b:0")])
        store.resolve_quarantine(["q1"], "replay-1")
        store.save_run(run("r0", status="failed"))
        store.save_run(run("r1", status="failed", started_at="2026-01-02T00:00:00.000Z"))
        stale = store.acquire_lease("prune", "first", 10, now=clock())
        clock.advance(8 * DAY)
        store.acquire_lease("prune", "second", 10, now=clock())
        cutoff = iso_utc(clock())
        for prune in (store.prune_raw_batches, store.prune_runs, store.prune_quarantine):
            with pytest.raises(LeaseLost):
                prune(cutoff, limit=100, fence=stale)
        assert (store.count_raw_batches(), len(store.list_runs()), store.count_quarantine()) == (1, 2, 1)

    def test_reclaim_space_is_safe_to_call_any_time(self, store):
        assert store.reclaim_space() >= 0


class StoreContract(LifecycleContract, LeaseContract, FencingContract, StateContract, BatchContract, RecordContract,
                    QuarantineContract, LedgerContract, UpgradeContract, V3UpgradeContract, V4UpgradeContract,
                    V5UpgradeContract, V7UpgradeContract, PruneContract):
    """Behaviour every `Store` adapter must show, one mixin per role; subclasses only build stores."""


class TestSqliteStore(StoreContract):
    def make_store(self, tmp_path, clock):
        return SqliteStore(str(tmp_path / "store" / "etl.sqlite3"), clock=clock)

    def make_v1_store(self, tmp_path, clock):
        path = write_v1_sqlite(tmp_path / "v1.sqlite3")
        return SqliteStore(str(path), clock=clock)

    @staticmethod
    def reopen_after(store, clock, script: str) -> SqliteStore:
        """Close `store`, run `script` on its file (putting it back in an older version's shape), reopen it."""
        store.close()
        conn = sqlite3.connect(store.path)
        conn.executescript(script)
        conn.close()
        return SqliteStore(store.path, clock=clock)

    def reopen_as_v3(self, store, clock):
        return self.reopen_after(store, clock,
                                 "DROP TABLE run_counts; DROP INDEX runs_latest; UPDATE schema_version SET version = 3;")

    def reopen_as_v4(self, store, clock):
        store.close()
        conn = sqlite3.connect(store.path)
        for name in self.sort_indexes_at(store.path):
            conn.execute(f"DROP INDEX {name}")
        conn.execute("UPDATE schema_version SET version = 4")
        conn.commit()
        conn.close()
        return SqliteStore(store.path, clock=clock)

    def reopen_as_v7(self, store, clock):
        return self.reopen_after(store, clock, "DELETE FROM record_counts; UPDATE schema_version SET version = 7;")

    def reopen_as_v5(self, store, clock):
        return self.reopen_after(store, clock, V5_SQLITE_RECORDS)

    def test_v5_records_get_ids_in_first_ingest_order(self, tmp_path, clock):
        store = self.make_store(tmp_path, clock)
        self.commit_pending(store, records=[record(source_id="late", ingested_at="2026-01-03T00:00:00.000Z"),
                                            record(source_id="early", ingested_at="2026-01-01T00:00:00.000Z")])
        old = self.reopen_as_v5(store, clock)
        try:
            old.migrate()
            ids = old._read("SELECT source_id FROM normalized ORDER BY id")
            assert [r[0] for r in ids] == ["early", "late"]
        finally:
            self.dispose(old)

    @staticmethod
    def sort_indexes_at(path) -> set[str]:
        conn = sqlite3.connect(path)
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND "
                                            "(name LIKE 'normalized_by_%' OR name = 'normalized_asset_source_time')")}
        conn.close()
        return names

    def sort_indexes(self, store):
        return self.sort_indexes_at(store.path)

    def test_view_latest_is_one_index_seek_per_asset_and_source(self, store, monkeypatch):
        plans, read = [], store._read

        def explained(sql, params=()):
            if "newest" in sql:
                plans.append(" | ".join(r[3] for r in store._conn().execute("EXPLAIN QUERY PLAN " + sql, params)))
            return read(sql, params)

        monkeypatch.setattr(store, "_read", explained)
        store.latest_by_source(DataQuery(source="a", symbols=("BTC",)))
        store.latest_by_source(DataQuery())
        for plan in plans:
            seek = "SEARCH n USING INDEX normalized_asset_source_time (asset_id=? AND source=? AND observed_at=?)"
            assert seek in plan, plan
            assert "SEARCH m USING COVERING INDEX normalized_asset_source_time (asset_id=? AND source=?)" in plan
            assert "SCAN n" not in plan and "SCAN m" not in plan, plan

    def make_unreachable_store(self, tmp_path):
        (tmp_path / "not-a-dir").write_text("a file where the store's directory should be")
        return SqliteStore(str(tmp_path / "not-a-dir" / "etl.sqlite3"))


class MongoContract(StoreContract):
    """MongoStore-only checks, on top of the contract."""

    def reopen_as_v3(self, store, clock):
        db = store._database()
        db.drop_collection("run_counts")
        db.runs.drop_index("stage_1_source_1_status_1_started_at_1")
        db.meta.update_one({"_id": "schema"}, {"$set": {"version": 3}})
        return MongoStore(db.client, db.name, clock=clock, transactions=store._transactions)

    def reopen_as_v4(self, store, clock):
        db = store._database()
        for name in self.sort_indexes(store):
            db.normalized.drop_index(name)
        db.meta.update_one({"_id": "schema"}, {"$set": {"version": 4}})
        return MongoStore(db.client, db.name, clock=clock, transactions=store._transactions)

    def reopen_as_v7(self, store, clock):
        db = store._database()
        db.meta.update_one({"_id": "schema"}, {"$set": {"version": 7}})
        return MongoStore(db.client, db.name, clock=clock, transactions=store._transactions)

    def reopen_as_v5(self, store, clock):
        db = store._database()
        for name in self.sort_indexes(store) - {"asset_id_1_source_1_observed_at_1"}:
            db.normalized.drop_index(name)
        db.normalized.create_index([("observed_at", pymongo.ASCENDING)])
        db.meta.update_one({"_id": "schema"}, {"$set": {"version": 5}})
        reopened = MongoStore(db.client, db.name, clock=clock, transactions=store._transactions)
        assert "observed_at_1" in db.normalized.index_information()
        return reopened

    def sort_indexes(self, store):
        info = store._database().normalized.index_information()
        keys = {name: tuple(k for k, _ in spec["key"]) for name, spec in info.items()}
        return {name for name, key in keys.items()
                if (len(key) == 2 and key[1] == "_id") or key == ("asset_id", "source", "observed_at")}

    def make_unreachable_store(self, tmp_path):
        return MongoStore.from_uri(UNREACHABLE_MONGO)

    def test_stores_no_dollar_or_dotted_field_names(self, store):
        store.put_raw_batch(batch(header=["a.b", "$c"], rejects=[{"$e.f": 1}], position={"$g.h": 2}),
                            checkpoint=("x.y", {"$i.j": 3}))
        store.save_run(run(checkpoint={"$k.l": 4}, summary={"m.n": {"$o": 5}}))
        self.commit_pending(store, records=[record()], quarantine=[quarantined()], assets=[asset()])
        db = store._database()

        def bad_keys(value):
            if isinstance(value, dict):
                return [k for k in value if k.startswith("$") or "." in k] + [
                    b for v in value.values() for b in bad_keys(v)]
            if isinstance(value, list):
                return [b for v in value for b in bad_keys(v)]
            return []

        for name in db.list_collection_names():
            for doc in db[name].find():
                assert bad_keys(doc) == [], (name, doc)

    def test_raw_batch_document_holds_only_its_fields(self, store):
        store.put_raw_batch(batch())
        store.put_raw_batch(batch(payload="changed"))
        [doc] = store._database().raw_batches.find()
        assert set(doc) == {"_id", "source", "run_id", "format", "payload", "row_count", "first_row", "header",
                            "rejects", "position", "version", "status", "seq", "created_at"}

    def test_indexes_are_created_and_creation_is_idempotent(self, store):
        store.ping()
        normalized = store._database().normalized.index_information()
        assert any(info.get("unique") and [k for k, _ in info["key"]] == ["source", "source_id", "observed_at"]
                   for info in normalized.values())
        again = MongoStore(store._database().client, store._database().name)
        again.ping()
        again.close()


def test_an_unreachable_mongodb_fails_within_the_store_timeout(monkeypatch):
    """With the server down, a request must answer in seconds: the client is built with the bounded timeouts."""
    built = []
    monkeypatch.setattr(mongo_base, "MongoClient", lambda *a, **kw: built.append(kw) or mongomock_ng.MongoClient())
    MongoStore.from_uri("mongodb://db.example:27017/etl", timeout_s=2.5).ping()
    assert built == [{"serverSelectionTimeoutMS": 2500, "connectTimeoutMS": 2500}]
    monkeypatch.undo()
    real = MongoStore.from_uri("mongodb://127.0.0.1:1/etl", timeout_s=0.2)
    try:
        with pytest.raises(StoreError):
            real.ping()
    finally:
        real.close()


@pytest.mark.parametrize("uri", ["mongodb://", "mongodb://admin:s3cret@", "mongodb://h:notaport/x", "mysql://h/x",
                                 "mongodb://admin:s3cret@h:99999/x"])
def test_a_malformed_mongodb_uri_is_a_config_error_that_names_no_secret(uri):
    with pytest.raises(ConfigError) as raised:
        MongoStore.from_uri(uri)
    assert "MONGODB_URI" in raised.value.message and "s3cret" not in raised.value.message


class TestMongomockStore(MongoContract):
    def make_store(self, tmp_path, clock):
        return MongoStore(mongomock_ng.MongoClient(), f"contract_{uuid.uuid4().hex[:12]}", clock=clock)

    def make_v1_store(self, tmp_path, clock):
        client, name = mongomock_ng.MongoClient(), f"v1_{uuid.uuid4().hex[:12]}"
        seed_v1_mongo(client[name])
        return MongoStore(client, name, clock=clock)


class TestMongomockStoreInTransactions(TestMongomockStore):
    """The same contract through the multi-document-transaction path (replica sets, Atlas). mongomock-ng runs
    the code path, not real isolation: the real server run covers that."""

    def make_store(self, tmp_path, clock):
        return MongoStore(mongomock_ng.MongoClient(), f"contract_{uuid.uuid4().hex[:12]}", clock=clock,
                          transactions=True)

    def test_from_uri_connects_lazily_to_the_database_named_in_the_uri(self, monkeypatch):
        clients = []

        def client_factory(*args, **kwargs):
            clients.append(mongomock_ng.MongoClient(*args, **kwargs))
            return clients[-1]

        monkeypatch.setattr(mongo_base, "MongoClient", client_factory)
        named = MongoStore.from_uri("mongodb://localhost/analytics")
        default = MongoStore.from_uri("mongodb://localhost")
        assert clients == []  # nothing connects before first use (gunicorn forks after import)
        named.save_run(run())
        default.save_run(run())
        assert "runs" in clients[0]["analytics"].list_collection_names()
        assert "runs" in clients[1]["etl_db"].list_collection_names()
        named.close()
        default.close()


def seed_v1_mongo(db) -> None:
    """Documents as the first release wrote them: `_id` = idempotency key, no schema marker, epoch-less lease."""
    for source, source_id, observed_at, key, symbol, asset_id, name, price in V1_RECORDS:
        db.normalized.insert_one({
            "_id": key, "source": source, "source_id": source_id, "observed_at": observed_at, "symbol": symbol,
            "asset_id": asset_id, "name": name, "price_usd": price, "open_usd": None, "high_usd": None,
            "low_usd": None, "market_cap_usd": None, "volume_24h_usd": None,
            "ingested_at": "2026-01-01T00:00:00.000Z", "run_id": "r0"})
    db.normalized.create_index([("source", 1), ("source_id", 1), ("observed_at", 1)], unique=True)
    db.leases.insert_one({"_id": "transform_load", "owner": "old-owner", "expires_at": 1.0})
    for seq, (batch_id, source) in enumerate((("source_b:f:0", "source_b"), ("source_c:s:1", "source_c")), start=1):
        db.raw_batches.insert_one({
            "_id": batch_id, "source": source, "run_id": "r0", "format": "csv_lines", "payload": "x", "row_count": 1,
            "first_row": 1, "header": "null", "rejects": "[]", "position": "{}", "version": 1, "status": "done",
            "seq": seq, "created_at": "2026-01-01T00:00:00.000Z"})


@pytest.mark.skipif(not os.environ.get("TEST_MONGODB_URI"), reason="TEST_MONGODB_URI is not set")
class TestRealMongoStore(MongoContract):
    def make_store(self, tmp_path, clock):
        client = pymongo.MongoClient(os.environ["TEST_MONGODB_URI"])
        base = client.get_default_database(default="etl_test").name
        return MongoStore(client, f"{base}_{uuid.uuid4().hex[:12]}", clock=clock)

    def make_v1_store(self, tmp_path, clock):
        client = pymongo.MongoClient(os.environ["TEST_MONGODB_URI"])
        name = f"{client.get_default_database(default='etl_test').name}_{uuid.uuid4().hex[:12]}"
        seed_v1_mongo(client[name])
        return MongoStore(client, name, clock=clock)

    def dispose(self, store):
        db = store._database()
        db.client.drop_database(db.name)
        store.close()
        db.client.close()


@pytest.mark.skipif(not os.environ.get("TEST_MONGODB_RS_URI"), reason="TEST_MONGODB_RS_URI is not set")
class TestRealMongoReplicaSet(TestRealMongoStore):
    """A replica set: fenced writes go through multi-document transactions (detected, not forced)."""

    def make_store(self, tmp_path, clock):
        client = pymongo.MongoClient(os.environ["TEST_MONGODB_RS_URI"])
        store = MongoStore(client, f"etl_rs_{uuid.uuid4().hex[:12]}", clock=clock)
        store.ping()
        assert store._transactions is True
        return store

    def make_v1_store(self, tmp_path, clock):
        client = pymongo.MongoClient(os.environ["TEST_MONGODB_RS_URI"])
        name = f"etl_rs_{uuid.uuid4().hex[:12]}"
        seed_v1_mongo(client[name])
        return MongoStore(client, name, clock=clock)
