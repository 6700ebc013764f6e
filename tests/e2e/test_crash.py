"""Crash test: SIGKILL the pipeline at random (seeded) moments in extract and in transform/load, rerun, and
require exactly the rows of a clean run — nothing lost, nothing duplicated."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import csv_lines, write_csv
from tests.e2e.conftest import etl_cli, stage_env

SEEDS = [11, 23, 37, 41, 53, 67]
LEASE_TTL_S = 0.5
BATCHES = 400  # 8000 lines in chunks of 20


def snapshot(db_path) -> tuple[list[tuple], list[tuple]]:
    """Normalized rows without per-run metadata, and quarantine entries without timestamps."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT source, source_id, observed_at, idempotency_key, symbol, asset_id, name, price_usd, open_usd, "
            "high_usd, low_usd, market_cap_usd, volume_24h_usd FROM normalized ORDER BY 1, 2, 3").fetchall()
        quarantine = conn.execute("SELECT id, row_number, raw, reason FROM quarantine ORDER BY id").fetchall()
    return rows, quarantine


def run(env, stage: str) -> subprocess.CompletedProcess:
    return subprocess.run(etl_cli("run", "--source", "b", "--stage", stage, "--quiet"), env=env,
                          capture_output=True, text=True, timeout=120)


PROGRESS_SQL = {
    "extract": "SELECT COUNT(*) FROM raw_batches",
    "transform": "SELECT COUNT(*) FROM raw_batches WHERE status = 'done'",
}


def progress(db_path, stage: str, conn: sqlite3.Connection | None = None) -> int:
    try:
        if conn is not None:
            return conn.execute(PROGRESS_SQL[stage]).fetchone()[0]
        with sqlite3.connect(db_path, timeout=5) as fresh:
            return fresh.execute(PROGRESS_SQL[stage]).fetchone()[0]
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0


def run_and_kill(env, stage: str, after_batches: int) -> bool:
    """Start a stage and SIGKILL it as soon as `after_batches` batches are durable — wherever it is by then.

    Returns True if it was still working when the signal arrived."""
    process = subprocess.Popen(etl_cli("run", "--source", "b", "--stage", stage, "--quiet"), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    conn = None
    try:
        while process.poll() is None:
            if conn is None and os.path.exists(env["SQLITE_PATH"]):
                conn = sqlite3.connect(env["SQLITE_PATH"], timeout=5)
            if conn is not None and progress(env["SQLITE_PATH"], stage, conn) >= after_batches:
                break
            assert time.monotonic() < deadline
            time.sleep(0.0005)
    finally:
        if conn is not None:
            conn.close()
    alive = process.poll() is None
    process.kill()
    process.wait()
    return alive


@pytest.fixture(scope="module")
def source_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crash")
    lines = csv_lines(coins=8, days=1000)
    lines[100] = "101,Bitcoin,BTC,2019-04-11 23:59:59,1,1,1,oops,1,1"
    lines[2000] = "1,Bitcoin,BTC,2019"
    return write_csv(folder / "Historical_Data.csv", lines)


@pytest.fixture(scope="module")
def clean(source_file, tmp_path_factory):
    """The reference: one uninterrupted run."""
    folder = tmp_path_factory.mktemp("clean")
    env = stage_env(folder, SOURCE_B_PATH=str(source_file), CSV_CHUNK_ROWS="20", LEASE_TTL_S=str(LEASE_TTL_S))
    for stage in ("extract", "transform"):
        assert run(env, stage).returncode == 0
    rows, quarantine = snapshot(folder / "etl.sqlite3")
    assert len(rows) == 7998 and len(quarantine) == 2
    return rows, quarantine


def test_sigkill_anywhere_then_rerun_equals_a_clean_run(source_file, clean, tmp_path):
    """Six seeded trials; each kills extract, then transform, mid-work, then reruns both to completion."""
    expected_rows, expected_quarantine = clean
    landed = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        folder = tmp_path / f"seed-{seed}"
        folder.mkdir()
        env = stage_env(folder, SOURCE_B_PATH=str(source_file), CSV_CHUNK_ROWS="20", LEASE_TTL_S=str(LEASE_TTL_S))
        landed += run_and_kill(env, "extract", rng.randint(1, BATCHES // 2))
        written = progress(env["SQLITE_PATH"], "extract")
        landed += run_and_kill(env, "transform", rng.randint(0, written // 2))
        time.sleep(LEASE_TTL_S)  # the killed invocation's lease must expire before a new one may take over
        for stage in ("extract", "transform"):
            result = run(env, stage)
            assert result.returncode == 0, result.stdout + result.stderr
        rows, quarantine = snapshot(folder / "etl.sqlite3")
        assert len(rows) == len(expected_rows), f"seed {seed}"
        assert rows == expected_rows, f"seed {seed}"
        assert quarantine == expected_quarantine, f"seed {seed}"
    # a kill that arrives after the work is done proves nothing; most must land inside it
    assert landed >= len(SEEDS) * 2 - 2, f"only {landed} of {len(SEEDS) * 2} kills landed mid-work"
