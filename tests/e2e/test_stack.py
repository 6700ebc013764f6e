"""End to end over real processes: CSV -> extract_source_b -> transform_load -> GET /data."""

from __future__ import annotations

import threading

import requests

from common.store.sqlite import SqliteStore
from local.generate_csv import generate
from tests.conftest import csv_lines, write_csv

MALFORMED = [
    "900,Bitcoin,BTC,2019-13-45 23:59:59,1,1,1,1,1,1",
    "901,Bitcoin,BTC,2019-01-01 23:59:59,1,1,1,1,1",
    "902,,,2019-01-01 23:59:59,1,1,1,1,1,1",
    "903,Bitcoin,BTC,2019-01-01 23:59:59,1,1,1,1.2.3,1,1",
]


def all_rows(api: str) -> list[dict]:
    rows, page = [], 1
    while True:
        body = requests.get(f"{api}/data", params={"limit": 1000, "page": page}, timeout=10).json()
        rows += body["data"]
        if page >= body["pagination"]["pages"]:
            return rows
        page += 1


def expected_keys(lines: list[str]) -> set[tuple[str, str]]:
    return {(line.split(",")[2], line.split(",")[3].replace(" ", "T") + ".000Z") for line in lines}


def test_csv_flows_through_the_functions_exactly_once(stack, tmp_path):
    good = csv_lines(coins=4, days=120)
    write_csv(tmp_path / "Historical_Data.csv", good[:200] + MALFORMED + good[200:])
    extract, transform, api = (stack.start(name) for name in ("extract_source_b", "transform_load", "http_api"))

    assert requests.post(extract, timeout=60).json()["run"]["rows_in"] == 484
    load = requests.post(transform, timeout=60)
    assert load.status_code == 200 and load.json()["run"]["quarantined"] == 4
    rows = all_rows(api)
    assert len(rows) == 480 and {(r["symbol"], r["observed_at"]) for r in rows} == expected_keys(good)
    assert len({r["idempotency_key"] for r in rows}) == 480

    # a rerun adds nothing
    assert requests.post(extract, timeout=60).json()["run"]["rows_in"] == 0
    assert requests.post(transform, timeout=60).json()["run"]["rows_out"] == 0
    assert len(all_rows(api)) == 480

    # appended rows: exactly those are added
    more = csv_lines(coins=1, days=40, first_coin=9)
    write_csv(tmp_path / "Historical_Data.csv", more, mode="a")
    assert requests.post(extract, timeout=60).json()["run"]["rows_in"] == 40
    assert requests.post(transform, timeout=60).json()["run"]["rows_out"] == 40
    rows = all_rows(api)
    assert {(r["symbol"], r["observed_at"]) for r in rows} == expected_keys(good) | expected_keys(more)

    # every malformed row is in quarantine with its reason
    store = SqliteStore(str(tmp_path / "etl.sqlite3"))
    quarantined = {entry["raw"]: entry["reason"] for entry in store.list_quarantine()}
    assert set(quarantined) == set(MALFORMED)
    assert "unparsable timestamp" in quarantined[MALFORMED[0]]
    assert quarantined[MALFORMED[1]] == "expected 10 columns, got 9"
    assert quarantined[MALFORMED[2]] == "missing Symbol"
    assert "bad number in Close" in quarantined[MALFORMED[3]]


def test_two_overlapping_invocations_one_works_one_is_skipped(stack, tmp_path):
    generate(str(tmp_path / "Historical_Data.csv"), rows=60_000)
    first, second = stack.start("extract_source_b"), stack.start("extract_source_b")  # two instances
    results: dict[str, requests.Response] = {}
    barrier = threading.Barrier(2)

    def invoke(url: str) -> None:
        barrier.wait()
        results[url] = requests.post(url, timeout=120)

    threads = [threading.Thread(target=invoke, args=(url,)) for url in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted((r.status_code, r.json()["run"]["status"]) for r in results.values())
    assert statuses == [(200, "succeeded"), (409, "skipped")], [r.json()["run"]["summary"] for r in results.values()]
    done = next(r.json()["run"] for r in results.values() if r.status_code == 200)
    assert done["rows_in"] == 60_000
    store = SqliteStore(str(tmp_path / "etl.sqlite3"))
    assert sum(batch.row_count for batch in store.pending_raw_batches(limit=10_000)) == 60_000


def test_a_drifted_header_flows_through_the_functions_with_every_decision_reported(stack, tmp_path):
    from tests.unit.test_drift_pipeline import DRIFTED_HEADER, drifted

    path = tmp_path / "Historical_Data.csv"
    write_csv(path, csv_lines(coins=2, days=10))
    extract, transform, api = (stack.start(name) for name in ("extract_source_b", "transform_load", "http_api"))
    requests.post(extract, timeout=60)
    assert requests.post(transform, timeout=60).json()["run"]["summary"]["drift"] == []

    later = [line for i, line in enumerate(csv_lines(coins=2, days=15)) if i % 15 >= 10]
    write_csv(path, drifted(later), header=DRIFTED_HEADER)  # renamed, new and dropped columns, re-ordered
    assert requests.post(extract, timeout=60).status_code == 200
    run = requests.post(transform, timeout=60).json()["run"]
    assert run["status"] == "succeeded" and run["rows_out"] == 10
    decisions = {d["field"]: (d["mapped_to"], d["action"]) for d in run["summary"]["drift"]}
    assert decisions == {"close_price": ("price_usd", "mapped"), "Volume24h": ("volume_24h_usd", "mapped"),
                         "MarketCap": ("market_cap_usd", "mapped"), "Exchange": (None, "skipped")}
    assert len(all_rows(api)) == 30


def test_etl_serve_answers_on_its_port(tmp_path):
    import subprocess
    import time

    from tests.e2e.conftest import etl_cli, free_port, stage_env

    port = free_port()
    server = subprocess.Popen(etl_cli("serve", "--port", str(port)), env=stage_env(tmp_path))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                response = requests.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        assert response.json()["status"] in ("pass", "warn") and response.headers["X-Request-ID"]
        assert response.json()["checks"]["store:responseTime"][0]["status"] == "pass"
        data = requests.get(f"http://127.0.0.1:{port}/data", timeout=5).json()
        assert data["pagination"]["total"] == 0 and data["data"] == []
    finally:
        server.terminate()
        server.wait(timeout=10)
