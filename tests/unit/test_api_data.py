"""GET /data: keyset cursor, filters, view=latest, cached totals, and a 400 naming the parameter for every bad value."""

from __future__ import annotations

import pytest

from common.api.app import create_app
from common.config import Settings
from common.store import NORMALIZED_FIELDS
from common.wiring import Wiring, build_store

SOURCES = ("source_a", "source_b", "source_c")


def record(source="source_a", source_id="btc", observed_at="2026-01-01T00:00:00.000Z", **overrides) -> tuple:
    values = {"idempotency_key": f"{source}|{source_id}|{observed_at}", "source": source, "source_id": source_id,
              "symbol": "BTC", "observed_at": observed_at, "asset_id": "btc-bitcoin", "name": "Bitcoin",
              "price_usd": 100.0, "open_usd": None, "high_usd": None, "low_usd": None, "market_cap_usd": 1e12,
              "volume_24h_usd": 5e9, "ingested_at": "2026-01-02T00:00:00.000Z", "run_id": "run-1"}
    values.update(overrides)
    return tuple(values[name] for name in NORMALIZED_FIELDS)


def stamp(minute: int) -> str:
    return f"2026-01-01T{minute // 60:02d}:{minute % 60:02d}:00.000Z"


COINS = (("BTC", "btc-bitcoin", "Bitcoin"), ("ETH", "eth-ethereum", "Ethereum"), ("SOL", "sol-solana", "Solana"))


def dataset(count: int = 30) -> list[tuple]:
    """`count` rows over three sources and three coins; every fourth price is missing (NULLs in the sort)."""
    rows = []
    for n in range(count):
        symbol, asset_id, name = COINS[n % 3]
        rows.append(record(SOURCES[n % 3 if n % 2 else (n + 1) % 3], asset_id.split("-")[0], stamp(n), symbol=symbol,
                           asset_id=asset_id, name=name, price_usd=None if n % 4 == 0 else float(n % 7),
                           ingested_at=stamp(100 + n)))
    return rows


@pytest.fixture
def store(tmp_path):
    settings = Settings(sqlite_path=str(tmp_path / "etl.sqlite3"))
    store = build_store(settings)
    yield store
    store.close()


@pytest.fixture
def client(store):
    return create_app(Wiring(settings=Settings(sqlite_path=store.path), store=store)).test_client()


@pytest.fixture
def loaded(store):
    store.commit_transformed(None, dataset(), [], [])
    return store


def get_ok(client, query: str) -> dict:
    response = client.get(f"/data?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def walk(client, query: str) -> list[dict]:
    """Follow next_cursor to the end."""
    body = get_ok(client, query)
    items = list(body["data"])
    while "next_cursor" in body["pagination"]:
        body = get_ok(client, f"{query}&cursor={body['pagination']['next_cursor']}")
        items += body["data"]
    return items


def key(item: dict) -> tuple:
    return item["source"], item["source_id"], item["observed_at"]


@pytest.mark.parametrize("order", ["asc", "desc"])
@pytest.mark.parametrize("sort_by", ["observed_at", "symbol", "price_usd", "market_cap_usd", "volume_24h_usd",
                                     "ingested_at"])
def test_a_cursor_walk_equals_the_page_walk_for_every_sort(client, loaded, sort_by, order):
    by_page = get_ok(client, f"sort_by={sort_by}&order={order}&limit=1000")["data"]
    by_cursor = walk(client, f"sort_by={sort_by}&order={order}&limit=4")
    assert [key(i) for i in by_cursor] == [key(i) for i in by_page] and len(by_page) == 30


def test_next_cursor_is_absent_on_the_last_page_and_pagination_says_so(client, loaded):
    first = get_ok(client, "limit=25")["pagination"]
    assert first["total"] == 30 and first["pages"] == 2 and first["page"] == 1 and first["next_cursor"]
    last = get_ok(client, f"limit=25&cursor={first['next_cursor']}")
    assert len(last["data"]) == 5 and "next_cursor" not in last["pagination"] and last["pagination"]["total"] == 30
    assert "next_cursor" not in get_ok(client, "limit=30")["pagination"]
    assert "next_cursor" not in get_ok(client, "page=2&limit=25")["pagination"]


def test_a_cursor_walk_sees_every_row_once_while_rows_arrive(client, store):
    store.commit_transformed(None, dataset(), [], [])
    before = {key(dict(zip(NORMALIZED_FIELDS, r))) for r in dataset()}
    seen, body, step = [], get_ok(client, "limit=3&order=asc"), 0
    seen += body["data"]
    while "next_cursor" in body["pagination"]:
        step += 1  # between page fetches: one row older than the cursor, one newer, one equal in time
        store.commit_transformed(None, [record("source_a", f"new{step}", stamp(1000 + step)),
                                        record("source_b", f"old{step}", stamp(0)),
                                        record("source_c", f"tie{step}", body["data"][-1]["observed_at"])], [], [])
        body = get_ok(client, f"limit=3&order=asc&cursor={body['pagination']['next_cursor']}")
        seen += body["data"]
    keys = [key(i) for i in seen]
    assert len(keys) == len(set(keys))  # nothing twice
    assert before <= set(keys)  # nothing that was there is missed
    assert [i["observed_at"] for i in seen] == sorted(i["observed_at"] for i in seen)  # order kept
    ids = {k[1] for k in keys}
    assert {f"new{n}" for n in range(1, step + 1)} <= ids  # rows inserted ahead of the cursor are reached
    assert not any(i.startswith("old") for i in ids)  # rows inserted behind it are not (the walk does not restart)


def test_the_cursor_walk_of_a_null_sort_value_passes_the_null_block(client, loaded):
    prices = [i["price_usd"] for i in walk(client, "sort_by=price_usd&order=desc&limit=2")]
    assert prices[-8:] == [None] * 8 and None not in prices[:-8]
    prices = [i["price_usd"] for i in walk(client, "sort_by=price_usd&order=asc&limit=3")]
    assert prices[:8] == [None] * 8 and None not in prices[8:]


@pytest.mark.parametrize(("query", "expected"), [
    ("symbol=btc", lambda i: i["symbol"] == "BTC"),
    ("symbol=btc,Sol", lambda i: i["symbol"] in ("BTC", "SOL")),
    ("symbol=%20eth%20,eth", lambda i: i["symbol"] == "ETH"),
    ("source=source_b", lambda i: i["source"] == "source_b"),
    ("asset_id=sol-solana", lambda i: i["asset_id"] == "sol-solana"),
    ("from=2026-01-01T00:10:00Z", lambda i: i["observed_at"] >= "2026-01-01T00:10:00.000Z"),
    ("to=2026-01-01T00:10:00%2B00:00", lambda i: i["observed_at"] < "2026-01-01T00:10:00.000Z"),
    ("from=2026-01-01T01:05:00%2B01:00&to=2026-01-01T00:20:00.000Z",
     lambda i: "2026-01-01T00:05:00.000Z" <= i["observed_at"] < "2026-01-01T00:20:00.000Z"),
    ("from=2026-01-01&source=source_a&symbol=BTC", lambda i: (i["source"], i["symbol"]) == ("source_a", "BTC")),
])
def test_each_filter_and_its_total(client, loaded, query, expected):
    rows = [dict(zip(NORMALIZED_FIELDS, r)) for r in dataset()]
    want = [r for r in rows if expected(r)]
    body = get_ok(client, f"{query}&limit=4")
    assert 0 < len(want) < 30 and body["pagination"]["total"] == len(want)
    assert [key(i) for i in walk(client, f"{query}&limit=4")] == [
        key(r) for r in sorted(want, key=lambda r: (r["observed_at"], *key(r)), reverse=True)]


@pytest.mark.parametrize(("query", "name"), [
    ("page=0", "page"), ("page=x", "page"), ("limit=0", "limit"), ("limit=1001", "limit"),
    ("symbol=B%20TC", "symbol"), ("symbol=BTC,,ETH", "symbol"), ("symbol=" + ",".join(["A"] * 51), "symbol"),
    ("symbol=%C3%A9", "symbol"), ("source=nope", "source"), ("asset_id=BTC", "asset_id"),
    ("from=yesterday", "from"), ("from=1700000000", "from"), ("to=2026-13-01", "to"), ("to=%C3%A9", "to"),
    ("from=2026-01-02&to=2026-01-01", "from"), ("sort_by=name", "sort_by"), ("order=up", "order"),
    ("view=all", "view"), ("cursor=abc", "cursor"), ("cursor=%C3%A9", "cursor"), ("cursor=" + "A" * 3000, "cursor"),
    ("view=latest&cursor=x", "cursor"), ("view=latest&sort_by=price_usd", "sort_by"),
    ("view=latest&from=2026-01-01", "from"),
    ("bogus=1", "bogus"), ("symbol=a&symbol=b", "symbol"),
])
def test_every_invalid_value_is_a_400_naming_it(client, loaded, query, name):
    response = client.get(f"/data?{query}")
    assert response.status_code == 400, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "request_id"} and error["code"] == "invalid_input"
    assert name in error["message"] and error["message"].isascii() and len(error["message"]) < 300


def test_a_cursor_with_page_above_one_or_other_filters_or_order_is_400(client, loaded):
    cursor = get_ok(client, "limit=2&symbol=BTC")["pagination"]["next_cursor"]
    assert get_ok(client, f"limit=2&symbol=BTC&page=1&cursor={cursor}")["data"]
    for query in (f"page=2&symbol=BTC&cursor={cursor}", f"symbol=ETH&cursor={cursor}",
                  f"order=asc&symbol=BTC&cursor={cursor}",
                  f"sort_by=price_usd&symbol=BTC&cursor={cursor}", f"cursor={cursor[:-2]}"):
        response = client.get(f"/data?{query}")
        assert response.status_code == 400 and "cursor" in response.get_json()["error"]["message"], query


def test_totals_are_cached_per_filters_and_data_version(client, loaded, monkeypatch):
    calls = []
    real = loaded.count_matching
    monkeypatch.setattr(loaded, "count_matching", lambda query: calls.append(query) or real(query))
    for _ in range(3):
        assert get_ok(client, "limit=1")["pagination"]["total"] == 30
        assert get_ok(client, "limit=5&symbol=btc")["pagination"]["total"] == 10
    cursor = get_ok(client, "limit=1&symbol=BTC")["pagination"]["next_cursor"]
    get_ok(client, f"limit=1&symbol=btc&cursor={cursor}")
    get_ok(client, "limit=1&symbol=BTC&sort_by=price_usd&order=asc&page=3")  # order and paging share the total
    assert len(calls) == 2
    loaded.commit_transformed(None, [record("source_a", "btc", stamp(999))], [], [])  # a commit bumps the version
    assert get_ok(client, "limit=1")["pagination"]["total"] == 31
    assert len(calls) == 3


def test_view_latest_puts_each_sources_newest_price_side_by_side(client, store):
    rows = [record("source_a", "btc", stamp(1), price_usd=1.0), record("source_a", "btc", stamp(5), price_usd=2.0),
            record("source_b", "btc-bitcoin", stamp(9), price_usd=3.0),
            record("source_c", "bitcoin", stamp(7), price_usd=4.0),
            record("source_c", "bitcoin", stamp(2), price_usd=5.0),
            record("source_c", "ethereum", stamp(3), symbol="ETH", asset_id="eth-ethereum", name="Ethereum",
                   price_usd=6.0)]
    assets = [{"asset_id": "btc-bitcoin", "source": s, "symbol": "BTC", "name": "Bitcoin"} for s in SOURCES]
    assets.append({"asset_id": "eth-ethereum", "source": "source_c", "symbol": "ETH", "name": "Ethereum"})
    store.commit_transformed(None, rows, [], assets)
    body = get_ok(client, "view=latest")
    assert body["data"] == [
        {"asset_id": "btc-bitcoin", "symbol": "BTC", "name": "Bitcoin", "observed_at": stamp(9), "price_usd": 3.0,
         "source": "source_b",
         "sources": {"source_a": {"price_usd": 2.0, "observed_at": stamp(5)},
                     "source_b": {"price_usd": 3.0, "observed_at": stamp(9)},
                     "source_c": {"price_usd": 4.0, "observed_at": stamp(7)}}},
        {"asset_id": "eth-ethereum", "symbol": "ETH", "name": "Ethereum", "observed_at": stamp(3), "price_usd": 6.0,
         "source": "source_c", "sources": {"source_c": {"price_usd": 6.0, "observed_at": stamp(3)}}},
    ]
    assert body["pagination"] == {"page": 1, "limit": 100, "total": 2, "pages": 1}
    assert [a["asset_id"] for a in get_ok(client, "view=latest&symbol=eth")["data"]] == ["eth-ethereum"]
    only_a = get_ok(client, "view=latest&source=source_a")["data"]
    assert [(a["asset_id"], list(a["sources"])) for a in only_a] == [("btc-bitcoin", ["source_a"])]
    second = get_ok(client, "view=latest&limit=1&page=2")
    assert [a["asset_id"] for a in second["data"]] == ["eth-ethereum"] and second["pagination"]["total"] == 2


def test_a_page_is_encoded_once_per_data_version(client, loaded, monkeypatch):
    calls = []
    real = loaded.read_page
    monkeypatch.setattr(loaded, "read_page", lambda query: calls.append(query) or real(query))
    first = [get_ok(client, "limit=3&sort_by=price_usd") for _ in range(3)]
    assert len(calls) == 1 and first[0]["data"] == first[2]["data"]
    assert first[0]["meta"]["request_id"] != first[1]["meta"]["request_id"]  # meta is per response, not cached
    loaded.commit_transformed(None, [record("source_a", "btc", stamp(998), price_usd=1e9)], [], [])
    after = get_ok(client, "limit=3&sort_by=price_usd")
    assert len(calls) == 2 and after["data"][0]["price_usd"] == 1e9 and after["pagination"]["total"] == 31


def test_the_page_cache_is_bounded_and_never_goes_back_a_version():
    from common.api.cache import VersionedCache

    cache = VersionedCache(max_entries=3, max_bytes=100)
    for n in range(10):
        cache.put(1, n, b"x" * 10, 10)
    assert sum(cache.get(1, n) is not None for n in range(10)) <= 3
    cache.put(1, "big", b"x" * 101, 101)
    assert cache.get(1, "big") is None  # larger than the whole budget: not kept
    cache.put(2, "new", b"2", 1)
    cache.put(1, "old", b"1", 1)  # computed before version 2 was seen: must not replace it
    assert cache.get(2, "new") == b"2" and cache.get(1, "old") is None and cache.get(2, "old") is None
