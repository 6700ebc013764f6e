"""Sources A and C through `responses`: paging, Retry-After, retries, fail-fast, malformed pages, deadlines.

The clock and sleep are fakes: a sleep advances the clock, so nothing here really waits."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
import requests
import responses

from common.config import Settings
from common.pipeline import run_extract, run_transform
from common.store import DataQuery
from common.wiring import Wiring, build_store
from tests.conftest import SleepingClock

C_URL = "https://c.test/api/v3/coins/markets"
A_URL = "https://a.test/v1/tickers"



def coin(n: int, **extra) -> dict:
    return {"id": f"coin-{n}", "symbol": f"c{n}", "name": f"Coin {n}", "current_price": 10.0 + n,
            "market_cap": 1e9 - n, "total_volume": 1e6, "high_24h": 11.0 + n, "low_24h": 9.0 + n,
            "last_updated": "2025-10-10T14:25:20.000Z", **extra}


def page_of(first: int, count: int) -> list[dict]:
    return [coin(n) for n in range(first, first + count)]


@pytest.fixture
def clock():
    return SleepingClock()


@pytest.fixture
def wiring(tmp_path, clock):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"), source_c_url=C_URL, source_a_url=A_URL,
                        source_c_per_page=3, source_c_max_pages=4, source_c_rate="3/1m", source_a_rate="10/1m",
                        source_c_api_key="demo-key", invocation_budget_s=540)
    store = build_store(settings, clock)
    yield Wiring(settings=settings, store=store, clock=clock, sleep=clock.sleep)
    store.close()


def pages_requested() -> list[str]:
    return [call.request.params.get("page") for call in responses.calls]


@responses.activate
def test_pages_until_a_short_page_within_the_rate_limit(wiring, clock):
    for first, count in ((0, 3), (3, 3), (6, 1)):
        responses.get(C_URL, json=page_of(first, count))
    run = run_extract("c", wiring)
    assert (run.status, run.rows_in, run.summary["pages"]) == ("succeeded", 7, 3)
    assert pages_requested() == ["1", "2", "3"]
    first = responses.calls[0].request
    assert first.headers["x-cg-demo-api-key"] == "demo-key"
    assert first.params == {"vs_currency": "usd", "order": "market_cap_desc", "per_page": "3", "page": "1"}
    assert clock.sleeps == []  # 3 requests fit the 3/1m budget
    assert wiring.store.get_checkpoint("extract:source_c")["complete"] is True
    run_transform(wiring)
    assert wiring.store.count_normalized("source_c") == 7


@responses.activate
def test_the_budget_is_waited_for_not_exceeded(wiring, clock):
    for first in range(0, 12, 3):
        responses.get(C_URL, json=page_of(first, 3))
    run = run_extract("c", wiring)
    assert run.summary["pages"] == 4  # max_pages
    assert len(clock.sleeps) == 1 and 60 <= clock.sleeps[0] <= 62  # the 4th request waited for the window
    assert run.summary["http"]["waited_s"]["rate_limit"] == pytest.approx(clock.sleeps[0])


@responses.activate
def test_a_completed_pass_starts_the_next_run_from_page_one_without_duplicates(wiring, clock):
    responses.get(C_URL, json=page_of(0, 2))
    first = run_extract("c", wiring)
    clock.advance(120)
    second = run_extract("c", wiring)
    assert pages_requested() == ["1", "1"]
    assert second.checkpoint["snapshot"] == second.run_id != first.run_id
    run_transform(wiring)
    assert wiring.store.count_normalized("source_c") == 2  # unchanged last_updated: same keys


@responses.activate
@pytest.mark.parametrize("as_date", [False, True])
def test_429_honours_retry_after_and_lowers_the_rate(wiring, clock, as_date):
    retry_at = format_datetime(datetime.fromtimestamp(clock() + 7, timezone.utc), usegmt=True)
    responses.get(C_URL, status=429, headers={"Retry-After": retry_at if as_date else "7"})
    responses.get(C_URL, json=page_of(0, 2))
    run = run_extract("c", wiring)
    assert run.status == "succeeded" and run.rows_in == 2
    assert clock.sleeps and 6 <= clock.sleeps[0] <= 7.5
    http = run.summary["http"]
    assert http["statuses"] == {"429": 1, "200": 1} and http["retries"] == 1
    assert "429" in http["events"][0]["error"]
    state, _ = wiring.store.get_state("adaptive:source_c")
    assert state["factor"] == 0.5  # shared with every other invocation through the store


@responses.activate
def test_5xx_and_timeouts_are_retried_with_backoff(wiring, clock):
    responses.get(C_URL, status=503)
    responses.get(C_URL, body=requests.ConnectTimeout("slow"))
    responses.get(C_URL, json=page_of(0, 1))
    settings = dataclasses.replace(wiring.settings, source_c_rate="100/1m")
    run = run_extract("c", dataclasses.replace(wiring, settings=settings))
    assert run.status == "succeeded" and run.rows_in == 1
    assert run.summary["http"]["retries"] == 2 and run.summary["http"]["waited_s"]["backoff"] > 0
    assert [e["error"] for e in run.summary["http"]["events"]] == ["source_c: HTTP 503", "source_c: timed out after 20s"]


@responses.activate
@pytest.mark.parametrize("status, expected", [
    (401, "source_c: 401 — check SOURCE_C_API_KEY"),
    (403, "source_c: 403 — check SOURCE_C_API_KEY"),
    (404, "source_c: HTTP 404 from"),
])
def test_other_4xx_fail_fast(wiring, status, expected):
    responses.get(C_URL, status=status, json={"error": "nope"})
    run = run_extract("c", wiring)
    assert run.status == "failed" and run.summary["errors"][0].startswith(expected)
    assert len(responses.calls) == 1
    assert "demo-key" not in str(run.to_dict())


@responses.activate
def test_a_malformed_page_is_recorded_and_quarantined_without_losing_other_pages(wiring, clock):
    settings = dataclasses.replace(wiring.settings, source_c_rate="100/1m", http_max_attempts=2)
    wiring = dataclasses.replace(wiring, settings=settings)
    responses.get(C_URL, json=page_of(0, 3))
    responses.get(C_URL, body="<html>oops")
    responses.get(C_URL, body='[{"id": "cut')
    responses.get(C_URL, json=page_of(6, 2))
    run = run_extract("c", wiring)
    assert run.status == "partial" and run.rows_in == 5
    assert [p["page"] for p in run.summary["failed_pages"]] == [2]
    assert "not valid JSON" in run.summary["failed_pages"][0]["reason"]
    transform = run_transform(wiring)  # the page was quarantined by the extract, with the fetch's reason
    assert wiring.store.count_normalized("source_c") == 5 and (run.quarantined, transform.quarantined) == (1, 0)
    [entry] = wiring.store.list_quarantine("source_c")
    assert "not valid JSON" in entry["reason"] and entry["raw"] == '[{"id": "cut'


@responses.activate
def test_a_retry_after_beyond_the_deadline_returns_partial_and_resumes_at_that_page(wiring, clock):
    settings = dataclasses.replace(wiring.settings, source_c_rate="100/1m", invocation_budget_s=100)
    short = dataclasses.replace(wiring, settings=settings)
    responses.get(C_URL, json=page_of(0, 3))
    responses.get(C_URL, status=429, headers={"Retry-After": "600"})
    first = run_extract("c", short)
    assert first.status == "partial" and first.rows_in == 3
    assert "page 2" in first.summary["warnings"][-1]
    clock.advance(600)  # well within the pass interval: the same pass resumes
    responses.get(C_URL, json=page_of(3, 3))
    responses.get(C_URL, json=page_of(6, 1))
    second = run_extract("c", short)
    assert second.status == "succeeded" and second.rows_in == 4
    assert pages_requested() == ["1", "2", "2", "3"]  # page 2 again only because it was refused; none skipped
    assert second.checkpoint["snapshot"] == first.checkpoint["snapshot"]
    run_transform(wiring)
    assert wiring.store.count_normalized("source_c") == 7


@responses.activate
def test_source_a_nested_quotes_and_bad_records(wiring):
    good = {"id": "btc-bitcoin", "name": "Bitcoin", "symbol": "BTC", "last_updated": "2025-06-25T10:47:48Z",
            "quotes": {"USD": {"price": 107077.7, "volume_24h": 23175936198.9, "market_cap": 2129051326372}}}
    responses.get(A_URL, json=[
        good,
        {**good, "id": "x-nosymbol", "symbol": ""},
        {**good, "id": "x-noprice", "quotes": {"USD": {}}},
        {**good, "id": "x-badtime", "last_updated": "yesterday"},
        {**good, "id": "x-boolprice", "quotes": {"USD": {"price": True}}},
        "not an object",
    ])
    assert run_extract("a", wiring).status == "succeeded"
    transform = run_transform(wiring)
    assert transform.rows_out == 1 and transform.quarantined == 5
    [record] = wiring.store.query_normalized(DataQuery(source="source_a")).items
    assert (record["asset_id"], record["source_id"], record["price_usd"], record["observed_at"]) == (
        "btc-bitcoin", "btc-bitcoin", 107077.7, "2025-06-25T10:47:48.000Z")
    reasons = {e["row_number"]: e["reason"] for e in wiring.store.list_quarantine("source_a")}
    assert reasons[2] == "missing symbol" and reasons[3] == "missing quotes.USD.price"
    assert reasons[4].startswith("unparsable timestamp in last_updated:") and "yesterday" in reasons[4]
    assert reasons[5] == "bad number in quotes.USD.price: a boolean is not a number: True"
    assert reasons[6] == "record is a str, not an object"


@responses.activate
def test_wrong_shape_fails_with_a_clear_reason(wiring):
    responses.get(A_URL, json={"tickers": []})
    run = run_extract("a", wiring)
    assert run.status == "failed" and "expected a JSON array of records, got dict" in run.summary["errors"][0]
    [entry] = wiring.store.list_quarantine("source_a")  # the body is kept, with the reason
    assert entry["raw"] == '{"tickers": []}' and "expected a JSON array" in entry["reason"]


@responses.activate
@pytest.mark.parametrize("error, expected", [
    (requests.ConnectionError("Failed to resolve 'c.test' (Name or service not known)"), "cannot connect"),
    (requests.exceptions.SSLError("certificate verify failed"), "TLS error"),
])
def test_dns_and_tls_failures_are_a_clear_reason_not_a_traceback(wiring, error, expected):
    settings = dataclasses.replace(wiring.settings, http_max_attempts=2)
    responses.get(C_URL, body=error)
    responses.get(C_URL, body=error)
    run = run_extract("c", dataclasses.replace(wiring, settings=settings))
    assert run.status == "failed" and run.summary["errors"][0].startswith(f"source_c: {expected}")
