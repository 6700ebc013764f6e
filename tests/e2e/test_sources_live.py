"""Sources A and C over loopback against the local emulator, with scaled-down rate limits: the shared budget
holds across processes, deadlines resume exactly, chaos is absorbed and accounted for."""

from __future__ import annotations

import subprocess
import sys
import threading

import requests

from common.store.sqlite import SqliteStore
from local.emulator import RateLimit
from tests.conftest import ROOT
from tests.e2e.conftest import Stack, stage_env

RATE = "5/2s"
WINDOW_S, LIMIT = 2.0, 5


def c_env(tmp_path, emulator, **extra: str) -> dict[str, str]:
    return stage_env(tmp_path, **{"SOURCE_C_URL": f"{emulator.url}/api/v3/coins/markets", "SOURCE_C_RATE": RATE,
                                  "SOURCE_A_URL": f"{emulator.url}/v1/tickers", "SOURCE_A_RATE": RATE, **extra})


def requests_to(emulator, source: str) -> list[dict]:
    return [entry for entry in emulator.log() if entry["source"] == source]


def busiest_window(stamps: list[float], window: float) -> int:
    return max(sum(1 for t in stamps if start <= t < start + window) for start in stamps)


def test_two_processes_share_one_budget_never_exceed_it_and_use_it(tmp_path, source_emulator):
    emulator = source_emulator(rate_c=RateLimit.parse(RATE), snapshot_every=0)
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="50", SOURCE_C_MAX_PAGES="12")
    stack = Stack(env)
    try:
        extract = stack.start("extract_source_c")
        results: dict[str, requests.Response] = {}
        first = threading.Thread(target=lambda: results.setdefault("first", requests.post(extract, timeout=120)))
        first.start()
        probe = subprocess.Popen([sys.executable, str(ROOT / "tests/e2e/limiter_probe.py"), env["SQLITE_PATH"],
                                  f"{emulator.url}/api/v3/coins/markets", "10", RATE], env=env)
        while not requests_to(emulator, "c"):
            threading.Event().wait(0.05)
        second = requests.post(extract, timeout=120)  # the same stage while the first holds the lease
        assert second.status_code == 409 and second.json()["run"]["status"] == "skipped"
        assert probe.wait(timeout=120) == 0
        first.join(timeout=120)
    finally:
        stack.stop()
    run = results["first"].json()["run"]
    assert run["status"] == "succeeded" and run["rows_in"] == 600 and run["summary"]["pages"] == 12

    log = requests_to(emulator, "c")
    assert len(log) == 22 and {entry["status"] for entry in log} == {200}  # not one 429
    stamps = sorted(entry["ts"] for entry in log)
    assert busiest_window(stamps, WINDOW_S) <= LIMIT
    fastest = (len(stamps) - 1) // LIMIT * WINDOW_S  # the least time the limit allows for this many requests
    used = fastest / (stamps[-1] - stamps[0])
    print(f"shared budget: {len(stamps)} requests in {stamps[-1] - stamps[0]:.2f}s, busiest {WINDOW_S:g}s window "
          f"{busiest_window(stamps, WINDOW_S)}/{LIMIT}, {used:.1%} of the allowed rate")
    assert used >= 0.9, f"{len(stamps)} requests took {stamps[-1] - stamps[0]:.2f}s; the limit allows {fastest:.2f}s"


def test_a_deadline_interrupted_run_resumes_with_no_page_twice_and_none_skipped(tmp_path, source_emulator):
    emulator = source_emulator(rate_c=RateLimit.parse(RATE), snapshot_every=0)
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="50", SOURCE_C_MAX_PAGES="12", INVOCATION_BUDGET_S="2.5")
    stack = Stack(env)
    try:
        extract = stack.start("extract_source_c")
        statuses = []
        while not statuses or statuses[-1] == "partial":
            statuses.append(requests.post(extract, timeout=60).json()["run"]["status"])
            assert len(statuses) < 12
    finally:
        stack.stop()
    assert statuses[0] == "partial" and statuses[-1] == "succeeded"
    pages = [int(entry["query"]["page"]) for entry in requests_to(emulator, "c")]
    assert pages == list(range(1, 13))
    store = SqliteStore(env["SQLITE_PATH"])
    assert sum(batch.row_count for batch in store.pending_raw_batches(100)) == 600


def test_chaos_is_absorbed_and_every_failure_accounted_for(tmp_path, source_emulator):
    emulator = source_emulator(rate_c=RateLimit.parse("50/2s"), snapshot_every=0)
    emulator.set_chaos("c", storm_429=2, storm_retry_after=1, status_5xx=2, status_5xx_code=502, malformed_pages=[3])
    emulator.set_chaos("a", truncate=1)
    env = c_env(tmp_path, emulator, SOURCE_C_PER_PAGE="100", SOURCE_C_MAX_PAGES="6", SOURCE_C_RATE="50/2s",
                SOURCE_A_RATE="50/2s", HTTP_MAX_ATTEMPTS="5")
    runs = {}
    for source in ("a", "c"):
        done = subprocess.run([sys.executable, "-m", "common.cli", "run", "--source", source, "--quiet"], env=env,
                              capture_output=True, text=True, timeout=120)
        runs[source] = __import__("json").loads(done.stdout)["runs"]
    extract_c, transform = runs["c"]
    assert extract_c["status"] == "succeeded" and transform["status"] == "succeeded"
    http = extract_c["summary"]["http"]
    assert http["statuses"] == {"429": 2, "502": 2, "200": 7}  # 6 pages, one of them malformed once
    assert http["retries"] == 5 and len(http["events"]) == 5
    assert http["waited_s"]["retry_after"] >= 2
    assert runs["a"][0]["status"] == "succeeded" and runs["a"][0]["summary"]["http"]["retries"] == 1
    store = SqliteStore(env["SQLITE_PATH"])
    assert store.count_normalized("source_c") == 600 and store.count_normalized("source_a") == 600
    assert store.count_quarantine() == 0
    btc = [a for a in store.list_assets() if a["asset_id"] == "btc-bitcoin"]
    assert btc and btc[0]["sources"] == ["source_a", "source_c"]  # one master asset across sources


def test_a_field_renamed_mid_stream_keeps_loading(tmp_path, source_emulator):
    import time

    from common.config import Settings
    from common.pipeline import run_extract, run_transform
    from common.wiring import Wiring, build_store

    emulator = source_emulator(snapshot_every=0)
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_c_url=f"{emulator.url}/api/v3/coins/markets",
                        source_c_per_page=100, source_c_max_pages=6, source_c_rate="2/1s")
    store = build_store(settings)
    renamed_before_page = []

    def sleep(seconds: float) -> None:  # the limiter's wait before page 3: the source renames a field meanwhile
        if not renamed_before_page:
            emulator.set_chaos("c", rename={"current_price": "currentPrice"})
            renamed_before_page.append(len(requests_to(emulator, "c")) + 1)
        time.sleep(seconds)

    wiring = Wiring(settings=settings, store=store, sleep=sleep)
    extract, transform = run_extract("c", wiring), run_transform(wiring)
    assert renamed_before_page == [3]
    assert extract.status == "succeeded" and transform.status == "succeeded" and transform.quarantined == 0
    assert store.count_normalized("source_c") == 600
    [decision] = [d for d in transform.summary["drift"] if d["field"] == "currentPrice"]
    assert (decision["mapped_to"], decision["action"], decision["method"]) == ("price_usd", "mapped", "normalized")
    store.close()
