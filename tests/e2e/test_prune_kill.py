"""SIGKILL a real `etl prune` in the middle of its steps: the store stays consistent (every step is one short
transaction) and the next prune finishes the job."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess

from common.clock import Deadline
from common.config import Settings
from common.prune import Retention, prune
from common.store import RawBatch
from common.store.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.e2e.conftest import etl_cli, stage_env

DONE, PENDING, KEPT = 400, 5, 3


def seed(path: str) -> None:
    store = SqliteStore(path)
    for index in range(DONE + PENDING + KEPT):
        store.put_raw_batch(RawBatch(batch_id=f"b:{index}", source="source_b", run_id="r", format="csv_lines",
                                     payload=os.urandom(8192).hex(), row_count=1, header=["x"]))
    for batch in store.pending_raw_batches(DONE + KEPT):  # the first DONE + KEPT done, the last PENDING not
        index = int(batch.batch_id.split(":")[1])
        entries = [{"id": f"q{index}", "source": "source_b", "run_id": "r", "batch_id": batch.batch_id,
                    "row_number": 1, "raw": "x", "reason": "bad"}] if index >= DONE else []
        store.commit_transformed(batch, [], entries, [])
    store.close()


def test_a_prune_killed_midway_leaves_a_consistent_store_and_the_next_one_finishes(tmp_path):
    path = str(tmp_path / "etl.sqlite3")
    seed(path)
    future = "2100-01-01T00:00:00Z"
    process = subprocess.Popen(etl_cli("prune", "--now", future, "--step", "1"),
                               env=stage_env(tmp_path, LEASE_TTL_S="30"), stderr=subprocess.PIPE, text=True)
    try:
        seen = 0
        for line in process.stderr:  # one line per step: kill it once it is well under way
            seen += line.startswith("prune: raw_batches")
            if seen == 50:
                os.kill(process.pid, signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        left = conn.execute("SELECT COUNT(*) FROM raw_batches WHERE status = 'done'").fetchone()[0]
    assert KEPT < left < DONE + KEPT  # stopped half way

    store = SqliteStore(path)
    assert store.count_raw_batches(pending_only=True) == PENDING
    assert store.count_quarantine(unresolved_only=True) == KEPT
    clock = FakeClock(start=4_102_444_800.0)  # 2100: the killed pruner's lease has long expired
    settings = Settings(sqlite_path=path)
    summary = prune(store, Retention.from_settings(settings), clock=clock, lease_ttl_s=30,
                    deadline=Deadline(clock, 600))
    assert summary["status"] == "succeeded", summary
    assert store.count_raw_batches() == PENDING + KEPT  # every done batch no unresolved entry needs is gone
    assert store.count_raw_batches(pending_only=True) == PENDING
    assert store._read("PRAGMA integrity_check")[0][0] == "ok"
    store.close()
