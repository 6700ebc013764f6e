"""The source emulator over real HTTP on loopback, with a fake clock and a recording sleep: shapes, paging,
snapshots, auth, the rate window, every chaos kind, the request log and the CLI."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from email.utils import formatdate

import pytest
import requests

from local.emulator import Emulator, EmulatorConfig, RateLimit
from tests.conftest import ROOT

A = "/v1/tickers"
C = "/api/v3/coins/markets"
USD = {"vs_currency": "usd", "order": "market_cap_desc", "per_page": 250}
A_FIELDS = {"id", "name", "symbol", "rank", "circulating_supply", "total_supply", "max_supply", "beta_value",
            "first_data_at", "last_updated", "quotes"}
A_QUOTE_FIELDS = {"price", "volume_24h", "volume_24h_change_24h", "market_cap", "market_cap_change_24h",
                  "percent_change_1h", "percent_change_24h", "percent_change_7d", "ath_price", "ath_date",
                  "percent_from_price_ath"}
C_FIELDS = {"id", "symbol", "name", "image", "current_price", "market_cap", "market_cap_rank",
            "fully_diluted_valuation",
            "total_volume", "high_24h", "low_24h", "price_change_24h", "price_change_percentage_24h",
            "market_cap_change_24h", "market_cap_change_percentage_24h",
            "circulating_supply", "total_supply", "max_supply", "ath", "ath_change_percentage", "ath_date", "atl",
            "atl_change_percentage", "atl_date", "roi", "last_updated"}


class Sleeps(list):
    """A sleep that records how long it was asked to wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def serve(clock, sleeps):
    """Start an in-process emulator on a free loopback port with config overrides; stopped at teardown."""
    started = []

    def serve(**overrides) -> Emulator:
        started.append(Emulator(EmulatorConfig(**overrides), clock=clock, sleep=sleeps).start())
        return started[-1]

    yield serve
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emu(serve) -> Emulator:
    return serve()


def get(emulator: Emulator, path: str, params=None, **kwargs) -> requests.Response:
    return requests.get(emulator.url + path, params=params, timeout=5, **kwargs)


def post(emulator: Emulator, path: str, body=None) -> requests.Response:
    return requests.post(emulator.url + path, json=body, timeout=5)


def page(emulator: Emulator, number: int, headers=None) -> requests.Response:
    return get(emulator, C, {**USD, "page": number}, headers=headers)


# --- shapes, paging, snapshots ------------------------------------------------------------------------------------
def test_source_a_returns_every_ticker_in_coinpaprika_shape(emu):
    response = get(emu, A)
    tickers = response.json()
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    assert len(tickers) == 600 and [t["rank"] for t in tickers] == list(range(1, 601))
    assert all(set(t) == A_FIELDS and set(t["quotes"]["USD"]) == A_QUOTE_FIELDS for t in tickers)
    bitcoin = tickers[0]
    assert (bitcoin["id"], bitcoin["name"], bitcoin["symbol"]) == ("btc-bitcoin", "Bitcoin", "BTC")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", bitcoin["last_updated"])
    assert {"ETH", "USDT", "XRP", "BNB", "SOL"} <= {t["symbol"] for t in tickers[:12]}
    assert len({t["symbol"] for t in tickers}) == len({t["id"] for t in tickers}) == 600
    quote = bitcoin["quotes"]["USD"]
    assert quote["market_cap"] == pytest.approx(quote["price"] * bitcoin["circulating_supply"], rel=1e-6)


def test_source_c_pages_in_coingecko_shape_sorted_by_market_cap(emu):
    first = page(emu, 1).json()
    assert all(set(record) == C_FIELDS for record in first)
    assert [r["market_cap"] for r in first] == sorted((r["market_cap"] for r in first), reverse=True)
    assert [r["market_cap_rank"] for r in first] == list(range(1, 251))
    assert (first[0]["id"], first[0]["symbol"], first[0]["name"]) == ("bitcoin", "btc", "Bitcoin")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first[0]["last_updated"])
    assert first[0]["roi"] is None


def test_paging_600_coins_gives_two_full_pages_then_100_then_empty(emu):
    pages = [page(emu, number).json() for number in (1, 2, 3, 4)]
    assert [len(p) for p in pages] == [250, 250, 100, 0]
    ids = [record["id"] for p in pages for record in p]
    assert len(set(ids)) == 600
    assert [r["id"] for r in get(emu, C, {"vs_currency": "usd", "per_page": 100, "page": 6}).json()] == ids[500:]


def test_same_seed_same_market_other_seed_other_market(serve):
    one, same, other = serve(seed=7, coins=50), serve(seed=7, coins=50), serve(seed=8, coins=50)
    assert get(one, A).json() == get(same, A).json() != get(other, A).json()


def test_snapshot_is_stable_until_advanced_then_prices_move(emu, clock):
    before = page(emu, 1).json()
    clock.advance(30)
    assert page(emu, 1).json() == before
    clock.advance(1)
    assert post(emu, "/_control/advance").json()["snapshot"] == 1
    after = page(emu, 1).json()
    assert after[0]["last_updated"] != before[0]["last_updated"]
    moved = {r["id"]: r["current_price"] for r in after}
    assert sum(moved[r["id"]] != r["current_price"] for r in before if r["id"] in moved) > 200


def test_a_snapshot_is_taken_every_snapshot_every_seconds(serve, clock):
    emulator = serve(snapshot_every=60)
    first = get(emulator, A).json()[0]["last_updated"]
    clock.advance(59)
    assert get(emulator, A).json()[0]["last_updated"] == first
    clock.advance(1)
    assert get(emulator, A).json()[0]["last_updated"] != first
    assert emulator.health()["snapshot"] == 1
    never = serve(snapshot_every=0)
    clock.advance(10_000)
    assert get(never, A).ok and never.health()["snapshot"] == 0


# --- auth and errors ----------------------------------------------------------------------------------------------
def test_keys_are_required_when_configured(serve):
    emulator = serve(key_a="secret-a", key_c="secret-c")
    assert get(emulator, A).status_code == 401
    assert get(emulator, A, headers={"Authorization": "wrong"}).json() == {"error": "invalid api key"}
    assert get(emulator, A, headers={"Authorization": "secret-a"}).status_code == 200
    refused = page(emulator, 1, headers={"x-cg-demo-api-key": "secret-a"})
    assert refused.status_code == 401 and "error_message" in refused.json()["status"]
    assert page(emulator, 1, headers={"x-cg-demo-api-key": "secret-c"}).status_code == 200
    assert [entry["admitted"] for entry in emulator.log()] == [False, False, True, False, True]
    assert "secret" not in repr(emulator.config)


@pytest.mark.parametrize("params, message", [
    ({}, "Missing parameter vs_currency"), ({"vs_currency": "eur"}, "invalid vs_currency"),
    ({"vs_currency": "usd", "per_page": 0}, "per_page"), ({"vs_currency": "usd", "per_page": 251}, "per_page"),
    ({"vs_currency": "usd", "page": 0}, "page"), ({"vs_currency": "usd", "page": "x"}, "page"),
    ({"vs_currency": "usd", "order": "volume_desc"}, "order"),
])
def test_bad_market_queries_get_400_json(emu, params, message):
    response = get(emu, C, params)
    assert response.status_code == 400 and response.headers["Content-Type"] == "application/json"
    assert message in response.json()["error"]


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/v1/coins"), ("GET", "/api/v3/ping"), ("POST", A), ("GET", "/_control/nope"),
])
def test_unknown_paths_get_404_json(emu, method, path):
    response = requests.request(method, emu.url + path, timeout=5)
    assert response.status_code == 404 and "error" in response.json()
    assert response.headers["Content-Type"] == "application/json"


# --- the rate window ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, limit", [
    ("10/1m", RateLimit(10, 60)), ("5/2s", RateLimit(5, 2)), ("1/1h", RateLimit(1, 3600)), ("0", None),
])
def test_rate_limit_format(text, limit):
    assert RateLimit.parse(text) == limit


@pytest.mark.parametrize("text", ["10", "10/m", "0/1m", "3/0s", "3/1d", "-1/1m"])
def test_bad_rate_limits_are_refused(text):
    with pytest.raises(ValueError):
        RateLimit.parse(text)


def test_sliding_window_admits_n_then_429_until_the_oldest_leaves(serve, clock):
    emulator = serve(rate_c=RateLimit.parse("3/1m"))
    for _ in range(3):
        assert page(emulator, 1).status_code == 200
        clock.advance(10)
    refused = page(emulator, 1)  # t=30: admitted at 0, 10, 20
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.json()["status"]["error_code"] == 429
    clock.advance(29.5)
    assert page(emulator, 1).headers["Retry-After"] == "1"  # rounded up, never 0
    clock.advance(0.5)  # t=60: the request at 0 has left the window
    assert page(emulator, 1).status_code == 200
    assert page(emulator, 1).headers["Retry-After"] == "10"  # the one at 10 leaves at 70
    assert get(emulator, A).status_code == 200  # A has its own (unlimited) window
    admitted = [entry["admitted"] for entry in emulator.log() if entry["source"] == "c"]
    assert admitted == [True, True, True, False, False, True, False]


def test_retry_after_can_be_an_http_date(serve, clock):
    emulator = serve(rate_a=RateLimit.parse("1/1m"), retry_after_format="date")
    assert get(emulator, A).ok
    clock.advance(15)
    refused = get(emulator, A)
    assert refused.status_code == 429 and refused.json() == {"error": "Too many requests"}
    assert refused.headers["Retry-After"] == formatdate(clock() + 45, usegmt=True)


def test_no_rate_limit_when_disabled(serve):
    emulator = serve(rate_a=RateLimit.parse("0"))
    assert all(get(emulator, A).ok for _ in range(15))


# --- chaos --------------------------------------------------------------------------------------------------------
def test_5xx_counter_is_consumed_and_the_errors_count_towards_the_window(serve):
    emulator = serve(rate_c=RateLimit(5, 60), chaos=({"source": "c", "status_5xx": 3, "status_5xx_code": 503},))
    statuses = [page(emulator, 1).status_code for _ in range(6)]
    assert statuses == [503, 503, 503, 200, 200, 429]
    assert [e["admitted"] for e in emulator.log()] == [True] * 5 + [False]
    assert page(emulator, 1).json()["status"]["error_code"] == 429


def test_storm_429_refuses_whatever_the_window_and_is_not_admitted(emu):
    post(emu, "/_control/chaos", {"source": "a", "storm_429": 2, "storm_retry_after": 7})
    refused = [get(emu, A) for _ in range(2)]
    assert [(r.status_code, r.headers["Retry-After"]) for r in refused] == [(429, "7"), (429, "7")]
    assert get(emu, A).status_code == 200
    assert [e["admitted"] for e in emu.log()] == [False, False, True]


def test_slow_responses_use_the_injected_sleep(emu, sleeps):
    emu.set_chaos("c", slow_ms=1500, slow_count=2)
    assert [page(emu, 1).status_code for _ in range(3)] == [200, 200, 200]
    assert sleeps == [1.5, 1.5]
    emu.set_chaos("a", slow_ms=250)  # slow_count defaults to 1
    get(emu, A), get(emu, A)
    assert sleeps == [1.5, 1.5, 0.25]


def test_a_slow_response_times_a_client_out(clock):
    emulator = Emulator(EmulatorConfig(coins=30), clock=clock).start()  # the real sleep: 0.1 s in total
    try:
        emulator.set_chaos("a", slow_ms=100)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(emulator.url + A, timeout=0.02)
    finally:
        emulator.stop()


def test_malformed_json_once_then_well_formed(emu):
    emu.set_chaos("a", malformed_json=1)
    broken = get(emu, A)
    assert broken.status_code == 200 and broken.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.exceptions.JSONDecodeError):
        broken.json()
    assert len(get(emu, A).json()) == 600


def test_truncated_body_is_half_with_a_matching_content_length(emu):
    whole = page(emu, 1).content
    emu.set_chaos("c", truncate=1)
    cut = page(emu, 1)
    assert cut.content == whole[: len(whole) // 2]
    assert int(cut.headers["Content-Length"]) == len(cut.content)
    with pytest.raises(ValueError):
        json.loads(cut.content)


def test_rename_applies_to_every_record_until_cleared(emu):
    post(emu, "/_control/chaos", {"source": "c", "rename": {"current_price": "currentPrice"}})
    emu.set_chaos("a", rename={"quotes.USD.price": "last_price", "symbol": "ticker"})
    for _ in range(2):
        records = page(emu, 2).json()
        assert all("currentPrice" in r and "current_price" not in r for r in records)
        tickers = get(emu, A).json()
        assert all("last_price" in t["quotes"]["USD"] and "price" not in t["quotes"]["USD"] for t in tickers)
        assert all("ticker" in t and "symbol" not in t for t in tickers)
    emu.set_chaos("c", rename={})
    assert "current_price" in page(emu, 1).json()[0]
    emu.reset()
    assert "price" in get(emu, A).json()[0]["quotes"]["USD"]


def test_malformed_pages_break_each_listed_page_once(emu):
    emu.set_chaos("c", malformed_pages=[2, 3])
    assert len(page(emu, 1).json()) == 250
    for number in (2, 3):
        with pytest.raises(requests.exceptions.JSONDecodeError):
            page(emu, number).json()
        assert page(emu, number).json()
    assert emu.chaos_left()["c"]["malformed_pages"] == []


def test_rank_moves_shift_the_ranking_between_requests(emu):
    """After each admitted page request, the next move takes the coin at one rank to another (its price moves so
    that market caps still sort), so a pager sees a coin twice and misses another, as on the real API."""
    before = [r["id"] for r in get(emu, C, {**USD, "per_page": 5, "page": 1}).json()]
    sixth = get(emu, C, {**USD, "per_page": 5, "page": 2}).json()[0]["id"]
    emu.set_chaos("c", rank_moves=[[6, 1]])
    assert [r["id"] for r in get(emu, C, {**USD, "per_page": 5, "page": 1}).json()] == before
    second = get(emu, C, {**USD, "per_page": 5, "page": 2}).json()
    assert second[0]["id"] == before[-1] and sixth not in [r["id"] for r in second]  # shown twice / never
    assert [r["market_cap_rank"] for r in second] == list(range(6, 11))
    assert [r["market_cap"] for r in second] == sorted((r["market_cap"] for r in second), reverse=True)
    assert emu.chaos_left()["c"]["rank_moves"] == []
    assert [r["id"] for r in get(emu, C, {**USD, "per_page": 5, "page": 1}).json()] == [sixth, *before[:4]]
    assert [r["id"] for r in get(emu, C, {**USD, "per_page": 10, "page": 1}).json()][:6] == [sixth, *before]
    for bad in ([[0, 1]], [[1]], [["1", 2]], [[1, 2, 3]], [[601, 1]]):
        assert post(emu, "/_control/chaos", {"source": "c", "rank_moves": bad}).status_code == 400


def test_bad_chaos_bodies_are_400(emu):
    for body in ({"source": "x", "truncate": 1}, {"source": "a", "explode": 1}, {"source": "a", "truncate": -1},
                 {"source": "a", "rename": "price"}, {"source": "a", "status_5xx_code": 200}, {"truncate": 1}):
        assert post(emu, "/_control/chaos", body).status_code == 400
    assert requests.post(emu.url + "/_control/chaos", data=b"{", timeout=5).status_code == 400
    assert emu.chaos_left()["a"]["truncate"] == 0


def test_reset_clears_chaos_windows_and_log(serve):
    emulator = serve(rate_a=RateLimit(1, 3600))
    emulator.set_chaos("a", status_5xx=5)
    assert get(emulator, A).status_code == 500 and get(emulator, A).status_code == 429
    assert post(emulator, "/_control/reset").json() == {"ok": True}
    assert emulator.log() == [] and emulator.chaos_left()["a"]["status_5xx"] == 0
    assert get(emulator, A).status_code == 200


# --- the request log and the CLI ----------------------------------------------------------------------------------
def test_request_log_records_data_requests_only(serve, clock, tmp_path):
    emulator = serve(log_file=str(tmp_path / "requests.jsonl"))
    page(emulator, 2)
    clock.advance(1.5)
    get(emulator, A)
    get(emulator, "/_control/health"), post(emulator, "/_control/advance"), get(emulator, "/_control/chaos")
    entries = get(emulator, "/_control/log").json()
    assert entries == [
        {"ts": clock() - 1.5, "source": "c", "path": C, "status": 200, "admitted": True,
         "query": {"vs_currency": "usd", "order": "market_cap_desc", "per_page": "250", "page": "2"}},
        {"ts": clock(), "source": "a", "path": A, "query": {}, "status": 200, "admitted": True},
    ]
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == entries


def test_cli_prints_its_urls_and_stops_on_sigterm():
    process = subprocess.Popen([sys.executable, "-m", "local.emulator", "--port", "0", "--coins", "40",
                                "--rate-c", "5/2s", "--chaos", '{"source": "a", "status_5xx": 1}'],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        url = re.search(r"source A: (http://\S+)", process.stdout.readline())[1]
        assert requests.get(url, timeout=5).status_code == 500
        assert len(requests.get(url, timeout=5).json()) == 40
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert "stopped" in process.stdout.read()
    finally:
        process.kill()
        process.stdout.close()
        process.wait()
