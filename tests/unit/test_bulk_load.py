"""A large backlog loads with the random-order sort indexes dropped and built after it (SQLite): reads stay right
meanwhile, a crash in between leaves nothing missing for long, a stale writer cannot drop them, and the planner's
statistics are refreshed so filtered reads walk the right index."""

from __future__ import annotations

import sqlite3

import pytest

from common.errors import LeaseLost
from common.pipeline import run_extract, run_transform
from common.store import DataQuery, sqlite_records
from common.store.sqlite import SqliteStore
from common.store.sqlite_schema import SORT_INDEXES
from tests.conftest import csv_lines, write_csv


def indexes(path: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def plan(store, sql: str, params=()) -> str:
    return " | ".join(row[3] for row in store._conn().execute("EXPLAIN QUERY PLAN " + sql, params))


@pytest.fixture
def small_bulk(monkeypatch):
    monkeypatch.setattr(sqlite_records, "BULK_MIN_ROWS", 100)
    monkeypatch.setattr(sqlite_records, "ANALYZE_MIN_ROWS", 100)


def test_a_large_backlog_drops_the_sort_indexes_and_the_transform_builds_them(wiring, small_bulk,
                                                                                      monkeypatch):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=4, days=100))
    run_extract("source_b", wiring)
    seen = []
    real = SqliteStore.commit_transformed

    def commit(store, *args, **kwargs):  # what a reader finds between two commits of the load
        seen.append(set(SORT_INDEXES.values()) - indexes(store.path))
        return real(store, *args, **kwargs)

    monkeypatch.setattr(SqliteStore, "commit_transformed", commit)
    run = run_transform(wiring)
    assert run.status == "succeeded" and run.summary["bulk_load"] is True
    assert seen and all(missing == {SORT_INDEXES[f] for f in sqlite_records.REBUILT_SORTS} for missing in seen)
    assert set(SORT_INDEXES.values()) <= indexes(wiring.store.path)  # all back after the load
    assert wiring.store.count_normalized() == 400


def test_a_small_backlog_next_to_many_records_keeps_the_indexes(wiring, small_bulk):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=4, days=100))
    run_extract("source_b", wiring)
    run_transform(wiring)
    write_csv(wiring.settings.source_b_path, csv_lines(coins=1, days=50, first_coin=7), mode="a")
    run_extract("source_b", wiring)
    assert wiring.store.begin_bulk_load() is False  # 50 pending rows, 400 stored: below the share
    assert set(SORT_INDEXES.values()) <= indexes(wiring.store.path)


def test_a_crash_between_drop_and_build_is_healed_by_the_next_transform(wiring, small_bulk):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=4, days=100))
    run_extract("source_b", wiring)
    assert wiring.store.begin_bulk_load() is True  # ... and the process dies here: each step is its own commit
    assert not set(SORT_INDEXES.values()) <= indexes(wiring.store.path)
    ordered = wiring.store.read_normalized(DataQuery(sort_by="price_usd", limit=1000))  # reads stay right meanwhile
    assert ordered == []
    run = run_transform(wiring)
    assert run.status == "succeeded"
    assert set(SORT_INDEXES.values()) <= indexes(wiring.store.path)
    prices = [i["price_usd"] for i in wiring.store.read_normalized(DataQuery(sort_by="price_usd", limit=1000))]
    assert len(prices) == 400 and prices == sorted(prices, reverse=True)


def test_a_writer_that_lost_its_lease_cannot_drop_or_build(wiring, small_bulk):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=4, days=100))
    run_extract("source_b", wiring)
    store = wiring.store
    stale = store.acquire_lease("transform", "stalled", ttl_s=10, now=0.0)
    assert store.acquire_lease("transform", "successor", ttl_s=10, now=11.0) is not None  # expired: taken over
    with pytest.raises(LeaseLost):
        store.begin_bulk_load(fence=stale)
    assert set(SORT_INDEXES.values()) <= indexes(store.path)


def test_statistics_steer_a_source_filter_to_the_sort_index(wiring, small_bulk):
    write_csv(wiring.settings.source_b_path, csv_lines(coins=10, days=300))
    run_extract("source_b", wiring)
    run_transform(wiring)
    sql = ("SELECT id FROM normalized WHERE source = ? ORDER BY price_usd DESC, id DESC LIMIT 10")
    assert "normalized_by_price_usd" in plan(wiring.store, sql, ("source_b",))  # not: sort a whole source
    assert "TEMP B-TREE" not in plan(wiring.store, sql, ("source_b",))
