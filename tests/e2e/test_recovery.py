"""Recovery after kill -9 with the default lease: the next invocation makes progress within 30 s."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

from tests.conftest import csv_lines, write_csv
from tests.e2e.conftest import etl_cli, stage_env

RECOVERY_LIMIT_S = 30


def batches(db_path) -> int:
    try:
        with sqlite3.connect(db_path, timeout=5) as conn:
            return conn.execute("SELECT COUNT(*) FROM raw_batches").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_after_a_kill_the_next_invocation_makes_progress_within_30_s(tmp_path):
    source = write_csv(tmp_path / "Historical_Data.csv", csv_lines(coins=8, days=1500))
    env = stage_env(tmp_path, SOURCE_B_PATH=str(source), CSV_CHUNK_ROWS="10")
    env.pop("LEASE_TTL_S", None)  # the default is what is on trial
    db = tmp_path / "etl.sqlite3"
    victim = subprocess.Popen(etl_cli("run", "--source", "b", "--stage", "extract", "--quiet"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while batches(db) < 3:
        assert victim.poll() is None and time.monotonic() < deadline, "the extract finished before the kill"
        time.sleep(0.01)
    victim.kill()
    victim.wait()
    killed_at, written = time.monotonic(), batches(db)

    statuses = []
    while True:  # a scheduler retrying every second
        result = subprocess.run(etl_cli("run", "--source", "b", "--stage", "extract", "--quiet"), env=env,
                                capture_output=True, text=True, timeout=120)
        status = json.loads(result.stdout)["runs"][0]["status"]
        statuses.append(status)
        if status != "skipped":
            break
        assert time.monotonic() - killed_at < RECOVERY_LIMIT_S + 5, statuses
        time.sleep(1)
    recovered_s = time.monotonic() - killed_at
    print(f"recovered {recovered_s:.1f} s after kill -9 ({len(statuses) - 1} skipped invocations in between)")
    assert status == "succeeded" and batches(db) > written
    assert recovered_s <= RECOVERY_LIMIT_S
    with sqlite3.connect(db) as conn:
        ledger = dict(conn.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    conn.close()
    assert ledger.get("running", 0) == 0 and ledger.get("failed") == 1  # the killed run, marked abandoned
