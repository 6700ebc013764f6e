"""The worker-process prefetch gives exactly what in-process normalization gives, decisions included."""

from __future__ import annotations

import dataclasses

from common import parallel
from common.pipeline import run_extract, run_transform
from common.store import DataQuery
from tests.conftest import csv_lines, write_csv
from tests.unit.test_drift_pipeline import DRIFTED_HEADER, drifted


def load(wiring, workers: int, monkeypatch) -> tuple[list[dict], object]:
    monkeypatch.setattr(parallel, "PREFETCH_AFTER_S", 0.0 if workers else 1e9)
    wiring = dataclasses.replace(wiring, settings=dataclasses.replace(wiring.settings, transform_workers=workers))
    write_csv(wiring.settings.source_b_path, drifted(csv_lines(coins=3, days=40)) + ["BTC,Bitcoin,bad,1,1,1,1,1,x"],
              header=DRIFTED_HEADER)
    run_extract("b", wiring)
    run = run_transform(wiring)
    items = wiring.store.query_normalized(DataQuery(limit=1000, sort_by="symbol")).items
    return [{k: v for k, v in item.items() if k not in ("ingested_at", "run_id")} for item in items], run


def test_prefetching_in_a_worker_changes_nothing_but_speed(wiring, tmp_path, monkeypatch, sent_to_worker):
    other = dataclasses.replace(wiring.settings, sqlite_path=str(tmp_path / "other.sqlite3"))
    from common.wiring import Wiring, build_store

    inline_items, inline_run = load(Wiring(settings=other, store=build_store(other)), 0, monkeypatch)
    assert sent_to_worker == []
    worker_items, worker_run = load(wiring, 1, monkeypatch)
    assert len(sent_to_worker) == 3  # batches 2..4 were normalized in the worker
    assert inline_run.summary["batches"] == worker_run.summary["batches"] == 4  # 121 lines in chunks of 40
    assert worker_items == inline_items and len(worker_items) == 120
    assert (worker_run.rows_out, worker_run.quarantined) == (inline_run.rows_out, inline_run.quarantined) == (120, 1)
    fields = lambda run: sorted((d["field"], d["mapped_to"], d["action"]) for d in run.summary["drift"])  # noqa: E731
    assert fields(worker_run) == fields(inline_run) and ("close_price", "price_usd", "mapped") in fields(worker_run)
