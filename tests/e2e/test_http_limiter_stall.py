"""Two real processes share source C's budget while one of them sees the store answer late (issue 7, item 4):
the server must never see two requests closer than the budget allows."""

from __future__ import annotations

import subprocess
import sys
import threading

from local.emulator import RateLimit
from tests.conftest import ROOT
from tests.e2e.conftest import stage_env

RATE, WINDOW_S = "1/1s", 1.0


def test_a_process_with_a_late_store_still_keeps_the_shared_budget(tmp_path, source_emulator):
    emulator = source_emulator(rate_c=RateLimit.parse(RATE), snapshot_every=0)
    env = stage_env(tmp_path)
    url = f"{emulator.url}/api/v3/coins/markets"
    probe = [sys.executable, str(ROOT / "tests/e2e/limiter_probe.py"), env["SQLITE_PATH"], url, "3", RATE]
    late = subprocess.Popen([*probe, "0.3"], env=env)  # every limiter read and write answers 0.3 s late
    while not emulator.log() and late.poll() is None:  # the late one holds the first slot; then both compete
        threading.Event().wait(0.02)
    prompt = subprocess.Popen(probe, env=env)
    assert late.wait(timeout=120) == 0 and prompt.wait(timeout=120) == 0
    log = [entry for entry in emulator.log() if entry["source"] == "c"]
    stamps = sorted(entry["ts"] for entry in log)
    gaps = [round(b - a, 3) for a, b in zip(stamps, stamps[1:])]
    print(f"late store: {len(log)} requests, statuses {sorted({e['status'] for e in log})}, gaps {gaps}")
    assert [entry["status"] for entry in log] == [200] * 6, f"the server refused some: gaps {gaps}"
    assert min(gaps) >= WINDOW_S * 0.98, f"two requests {min(gaps):.3f}s apart under a 1-per-1s budget"
