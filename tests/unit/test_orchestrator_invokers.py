"""The two ways to reach a stage: in this process (real use cases, real SQLite) and over HTTP (`responses`)."""

from __future__ import annotations

import pytest
import requests
import responses

from common.config import Settings
from common.errors import ConfigError
from common.invokers import HttpInvoker, InProcessInvoker
from common.orchestrator import run_pass
from common.wiring import Wiring, build_store
from tests.conftest import csv_lines, write_csv

A_URL, C_URL = "https://a.test/v1/tickers", "https://c.test/api/v3/coins/markets"
TICKER = {"id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "last_updated": "2025-10-10T14:25:20Z",
          "quotes": {"USD": {"price": 62000.5, "volume_24h": 1e9, "market_cap": 1.2e12}}}
MARKET = {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "current_price": 62001.0, "market_cap": 1.2e12,
          "total_volume": 1e9, "high_24h": 63000.0, "low_24h": 61000.0, "last_updated": "2025-10-10T14:25:20.000Z"}


def quiet(*_args, **_kwargs) -> dict:
    return {}


@pytest.fixture
def make_wiring(tmp_path):
    stores = []

    def make(**overrides) -> Wiring:
        settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_b_path=str(tmp_path / "h.csv"),
                            csv_chunk_rows=40, source_a_rate="100/1s", source_c_rate="100/1s", **overrides)
        stores.append(build_store(settings))
        return Wiring(settings=settings, store=stores[-1])

    yield make
    for store in stores:
        store.close()


def test_in_process_a_pass_loads_b_while_a_does_not_resolve_and_c_refuses(make_wiring, tmp_path):
    write_csv(tmp_path / "h.csv", csv_lines(coins=2, days=60))
    wiring = make_wiring(source_a_url="http://no-such-host.invalid/v1/tickers",
                         source_c_url="http://127.0.0.1:9/api/v3/coins/markets", http_max_attempts=1)
    run = run_pass(wiring, InProcessInvoker(wiring), notify=quiet)
    assert run.status == "partial" and wiring.store.count_normalized("source_b") == 120
    assert run.summary["sources"] == {"source_a": "failed", "source_b": "succeeded", "source_c": "failed"}
    reasons = {e["source"]: e["errors"] for e in run.summary["stages"] if e["stage"] == "extract"}
    assert "cannot resolve host no-such-host.invalid" in reasons["source_a"][0]
    assert "source_c: cannot connect" in reasons["source_c"][0]
    for entry in run.summary["stages"]:  # every stage run it lists is in the ledger as listed
        assert wiring.store.get_run(entry["run_id"]).status == entry["status"]


@responses.activate
def test_in_process_every_source_answering_is_a_succeeded_pass(make_wiring, tmp_path):
    write_csv(tmp_path / "h.csv", csv_lines(coins=1, days=10))
    responses.get(A_URL, json=[TICKER])
    responses.get(C_URL, json=[MARKET])
    wiring = make_wiring(source_a_url=A_URL, source_c_url=C_URL)
    run = run_pass(wiring, InProcessInvoker(wiring), notify=quiet)
    assert run.status == "succeeded", run.summary
    assert wiring.store.count_normalized() == 12


URLS = {"extract_source_a": "http://a.test/", "extract_source_b": "http://b.test/run?token=s3cret",
        "extract_source_c": "http://c.test/", "transform_load": "http://user:pw@t.test/"}


def answer(status: str, **extra) -> dict:
    return {"run": {"run_id": f"r-{status}", "stage": "extract", "source": "source_b", "status": status,
                    "rows_in": 4, "rows_out": 4, "quarantined": 0, "duration_ms": 9,
                    "summary": {"warnings": [], "errors": [], **extra}}}


@responses.activate
@pytest.mark.parametrize("http_status, status", [(200, "succeeded"), (200, "partial"), (409, "skipped"),
                                                 (500, "failed")])
def test_http_a_stage_answer_is_its_run(http_status, status):
    responses.post(URLS["extract_source_b"], json=answer(status), status=http_status)
    assert HttpInvoker(URLS, timeout_s=5).extract("b") == answer(status)["run"]


@responses.activate
def test_http_errors_without_a_run_are_failed_stages_with_the_reason():
    responses.post(URLS["extract_source_b"], status=503, json={"error": {
        "code": "store_unavailable", "message": "the data store is unavailable; retry later", "request_id": "x"}})
    responses.post(URLS["extract_source_a"], body=requests.ConnectionError("Connection refused"))
    responses.post(URLS["extract_source_c"], body=requests.ReadTimeout("read timed out"))
    responses.post(URLS["transform_load"], body=requests.ConnectionError("Connection refused"))
    invoker = HttpInvoker(URLS, timeout_s=5)
    b, a, c, t = invoker.extract("source_b"), invoker.extract("a"), invoker.extract("c"), invoker.transform()
    assert (b["status"], b["run_id"], b["source"]) == ("failed", None, "source_b")
    assert b["summary"]["errors"] == ["extract_source_b: HTTP 503 from http://b.test: the data store is "
                                      "unavailable; retry later"]
    assert a["summary"]["errors"] == ["extract_source_a: cannot reach http://a.test: Connection refused"]
    assert c["summary"]["errors"][0].startswith("extract_source_c: no answer from http://c.test within 5s")
    assert t["stage"] == "transform_load" and "http://t.test" in t["summary"]["errors"][0]
    assert "s3cret" not in str(b) and "pw" not in str(t)  # only the origin is quoted


def test_http_needs_every_stage_url():
    with pytest.raises(ConfigError, match="EXTRACT_SOURCE_A_URL, TRANSFORM_LOAD_URL"):
        HttpInvoker.from_settings(Settings(extract_source_b_url="http://b", extract_source_c_url="http://c"))
    invoker = HttpInvoker.from_settings(Settings(**{f"{name}_url": url for name, url in URLS.items()},
                                                 invocation_budget_s=100))
    assert invoker.urls == URLS and invoker.timeout_s == 160
