"""A local stand-in for source A (CoinPaprika) and source C (CoinGecko), so the product runs and is tested offline.

    python -m local.emulator --port 8900 --rate-a 10/1m --rate-c 3/1m --seed 1 --coins 600

Endpoints (all bodies JSON, `Content-Type: application/json`; unknown paths -> 404 JSON):
    GET  /v1/tickers                  A: every ticker, CoinPaprika-shaped, by rank. Header `Authorization: <key>`
                                      when --key-a is set.
    GET  /api/v3/coins/markets        C: one page, CoinGecko-shaped, by market cap desc. `vs_currency=usd`
                                      (required), `order=market_cap_desc`, `per_page` 1..250 (100), `page` >= 1 (1);
                                      a page past the end is []. Header `x-cg-demo-api-key: <key>` when --key-c is set.
    GET  /_control/health             {"ok", "snapshot", "taken_at"}
    GET  /_control/log                the request log (below)
    GET  /_control/chaos              {"a": {...}, "c": {...}}, the chaos left to play
    POST /_control/chaos              body {"source": "a"|"c", <chaos keys>}: set those keys; returns that source's chaos
    POST /_control/advance            take a new snapshot now; returns {"snapshot", "taken_at"}
    POST /_control/reset              clear chaos, rate windows and the request log (the market is kept)
Control endpoints are never authenticated, rate limited or logged.

Snapshots: prices follow a random walk per coin, deterministic from --seed and the number of snapshots taken. A new
snapshot is taken on the first data request at least --snapshot-every seconds after the last (0: only on demand)
and on POST /_control/advance; within one snapshot every call returns identical data.

Flags: --host, --port (0: any free port), --seed, --coins, --snapshot-every SECONDS, --key-a, --key-c,
--rate-a, --rate-c (`N/<int><s|m|h>`, e.g. 10/1m; 0 = no limit), --retry-after-format seconds|date,
--log-file PATH (JSON lines), --chaos JSON (same body as POST /_control/chaos; repeatable).

A request is handled in this order: route (404) -> auth (401) -> storm_429 -> rate window (429) -> admitted ->
slow_ms -> status_5xx -> validation (400) -> body chaos. 404, 401 and 429 are not admitted; every admitted request
counts towards the window, as real APIs count 5xx, slow, malformed and invalid requests too.

Chaos keys, per source (counters are consumed by the next admitted requests to that source):
    status_5xx N, status_5xx_code (500)     the next N requests get that status and a JSON error
    storm_429 N, storm_retry_after (1)      the next N requests get 429 + Retry-After, whatever the window says
    slow_ms MS, slow_count N (1 if omitted) the next N requests are delayed MS milliseconds
    malformed_json N                        the next N 200 bodies are not JSON
    truncate N                              the next N 200 bodies are cut in half (Content-Length matches the cut)
    rename {"old": "new"}                   rename fields in every record until set to {} (A: `quotes.USD.price`)
    malformed_pages [2, 5]                  (C) each of those pages returns a malformed body once

Request log entry: {"ts": clock seconds, "source": "a"|"c", "path", "query": {name: last value}, "status",
"admitted"} for every request under /v1 or /api.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import random
import re
import signal
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

# (name, symbol, CoinGecko id, price in USD, circulating supply, max supply)
REAL_COINS = [
    ("Bitcoin", "BTC", "bitcoin", 107077.7, 19.88e6, 21e6), ("Ethereum", "ETH", "ethereum", 2450.0, 120.7e6, None),
    ("Tether", "USDT", "tether", 1.0, 157e9, None), ("XRP", "XRP", "ripple", 2.18, 59e9, 100e9),
    ("BNB", "BNB", "binancecoin", 645.0, 145.9e6, 200e6), ("Solana", "SOL", "solana", 145.0, 530e6, None),
    ("USDC", "USDC", "usd-coin", 1.0, 61.7e9, None), ("TRON", "TRX", "tron", 0.27, 94.8e9, None),
    ("Dogecoin", "DOGE", "dogecoin", 0.165, 149.6e9, None), ("Cardano", "ADA", "cardano", 0.57, 36.1e9, 45e9),
    ("Hyperliquid", "HYPE", "hyperliquid", 37.0, 333e6, 1e9), ("Bitcoin Cash", "BCH", "bitcoin-cash", 480.0, 19.88e6, 21e6),
    ("Sui", "SUI", "sui", 2.8, 3.4e9, 10e9), ("Chainlink", "LINK", "chainlink", 13.2, 678e6, 1e9),
    ("Stellar", "XLM", "stellar", 0.24, 31e9, 50e9), ("Avalanche", "AVAX", "avalanche-2", 18.0, 422e6, 720e6),
    ("Toncoin", "TON", "the-open-network", 2.9, 2.46e9, None), ("Shiba Inu", "SHIB", "shiba-inu", 1.15e-5, 589e12, None),
    ("Litecoin", "LTC", "litecoin", 85.0, 76e6, 84e6), ("Hedera", "HBAR", "hedera-hashgraph", 0.15, 42.3e9, 50e9),
    ("Monero", "XMR", "monero", 320.0, 18.4e6, None), ("Polkadot", "DOT", "polkadot", 3.4, 1.6e9, None),
    ("Dai", "DAI", "dai", 1.0, 5.4e9, None), ("Uniswap", "UNI", "uniswap", 7.2, 600e6, 1e9),
    ("Pepe", "PEPE", "pepe", 9.5e-6, 420.69e12, 420.69e12),
]
SYLLABLES = "ba ko ri zen lu mo ta vex qui dra no fi sol xa pe ru gal tor io nex vo ly kai sha".split()
SUFFIXES = ["", "", "", " Network", " Protocol", " Finance", " Chain", " AI", " Swap", " DAO", " Coin"]
UNITS = {"s": 1, "m": 60, "h": 3600}
MAX_PER_PAGE = 250


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` admitted requests in any window of `window_s` seconds."""

    limit: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """`N/<int><s|m|h>` (e.g. `10/1m`); `0` means no limit (None)."""
        if text.strip() == "0":
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*([smh])\s*", text)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError(f"rate must look like 10/1m or 5/2s, or be 0: {text!r}")
        return cls(int(match[1]), int(match[2]) * UNITS[match[3]])


@dataclass(frozen=True)
class EmulatorConfig:
    """Everything the emulator is started with; `chaos` holds POST /_control/chaos bodies applied at start."""

    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
    coins: int = 600
    snapshot_every: float = 60.0
    rate_a: RateLimit | None = None
    rate_c: RateLimit | None = None
    key_a: str | None = field(default=None, repr=False)
    key_c: str | None = field(default=None, repr=False)
    retry_after_format: str = "seconds"
    log_file: str | None = None
    chaos: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        if self.coins < 1 or self.snapshot_every < 0 or self.retry_after_format not in ("seconds", "date"):
            raise ValueError("coins must be >= 1, snapshot_every >= 0, retry_after_format seconds|date")


@dataclass
class Chaos:
    """The misbehaviour left to play for one source."""

    status_5xx: int = 0
    status_5xx_code: int = 500
    storm_429: int = 0
    storm_retry_after: int = 1
    slow_ms: int = 0
    slow_count: int = 0
    malformed_json: int = 0
    truncate: int = 0
    rename: dict = field(default_factory=dict)
    malformed_pages: set = field(default_factory=set)

    def update(self, settings: dict) -> None:
        for key, value in settings.items():
            if key not in CHAOS_KEYS:
                raise ValueError(f"unknown chaos key {key!r}")
            if key == "rename" and not (isinstance(value, dict) and all(isinstance(v, str) for v in value.values())):
                raise ValueError("rename must be an object of old name -> new name")
            if key == "malformed_pages" and not (isinstance(value, list) and all(type(v) is int for v in value)):
                raise ValueError("malformed_pages must be a list of page numbers")
            if key not in ("rename", "malformed_pages") and not (type(value) is int and value >= 0):
                raise ValueError(f"{key} must be a non-negative integer")
            setattr(self, key, set(value) if key == "malformed_pages" else value)
        if settings.get("slow_ms") and "slow_count" not in settings and not self.slow_count:
            self.slow_count = 1

    def as_json(self) -> dict:
        return {**asdict(self), "malformed_pages": sorted(self.malformed_pages)}


CHAOS_KEYS = {f.name for f in fields(Chaos)}


class SlidingWindow:
    """Timestamps of the admitted requests of one source family."""

    def __init__(self, limit: RateLimit | None) -> None:
        self.limit, self.admitted = limit, deque()

    def admit(self, now: float) -> float | None:
        """Record the request and return None, or return the seconds until it would be admitted."""
        if self.limit is None:
            self.admitted.append(now)
            return None
        while self.admitted and self.admitted[0] <= now - self.limit.window_s:
            self.admitted.popleft()
        if len(self.admitted) >= self.limit.limit:
            return self.admitted[0] + self.limit.window_s - now
        self.admitted.append(now)
        return None


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sig(value: float) -> float:
    return float(f"{value:.8g}")


def pct(new: float, old: float) -> float:
    return round((new / old - 1) * 100, 2)


def iso(epoch_s: float, millis: bool = False) -> str:
    moment = datetime.fromtimestamp(epoch_s, timezone.utc)
    return moment.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")


@dataclass
class Coin:
    """One coin's state; `step` moves it to the next snapshot."""

    name: str
    symbol: str
    gecko_id: str
    price: float
    circulating: float
    max_supply: float | None
    total: float
    vol: float
    beta: float
    first_data_at: float
    volume: float
    ath: float
    ath_at: float
    atl: float
    atl_at: float
    ref_1h: float = 0.0
    ref_24h: float = 0.0
    ref_7d: float = 0.0
    volume_change: float = 0.0
    pegged: bool = False

    @property
    def market_cap(self) -> float:
        return self.price * self.circulating

    def step(self, rng: random.Random, now: float) -> None:
        self.ref_1h = self.price
        self.price = 1.0 + rng.gauss(0, 0.0005) if self.pegged else self.price * math.exp(rng.gauss(0, self.vol))
        self.ref_24h += (self.ref_1h - self.ref_24h) * 0.05
        self.ref_7d += (self.ref_1h - self.ref_7d) * 0.01
        volume = self.volume * math.exp(rng.gauss(0, 0.05))
        self.volume_change, self.volume = pct(volume, self.volume), volume
        if self.price > self.ath:
            self.ath, self.ath_at = self.price, now
        if self.price < self.atl:
            self.atl, self.atl_at = self.price, now


def make_coins(rng: random.Random, count: int, now: float) -> list[Coin]:
    """The real coins first, then synthetic ones with unique names and symbols, smaller than the real ones."""
    coins, names, symbols = [], set(), set()
    while len(coins) < count:
        if len(coins) < len(REAL_COINS):
            name, symbol, gecko_id, price, circulating, max_supply = REAL_COINS[len(coins)]
            vol = 0.01
        else:
            stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
            name, letters = stem.capitalize() + rng.choice(SUFFIXES), stem.upper()
            candidates = [c for c in (letters[:3], letters[:4], letters[:5], f"{letters[:3]}{len(symbols)}")
                          if c not in symbols]
            if name in names:
                continue
            symbol, gecko_id, price = candidates[0], slug(name), 10 ** rng.uniform(-5, 2.5)
            circulating = 10 ** rng.uniform(5, 9.3) / price
            max_supply = rng.choice([None, circulating * rng.uniform(1, 3)])
            vol = rng.uniform(0.01, 0.05)
        total = min(circulating * rng.uniform(1, 1.05), max_supply or math.inf)
        names.add(name), symbols.add(symbol)
        coins.append(Coin(
            name, symbol, gecko_id, price, circulating, max_supply, total, vol, beta=rng.uniform(0.3, 1.6),
            first_data_at=now - rng.uniform(1, 12) * 365 * 86400, volume=price * circulating * rng.uniform(0.01, 0.3),
            ath=price * rng.uniform(1.05, 4), ath_at=now - rng.uniform(30, 1500) * 86400,
            atl=price * rng.uniform(0.001, 0.5), atl_at=now - rng.uniform(1500, 4000) * 86400,
            ref_24h=price * math.exp(rng.gauss(0, 0.03)), ref_7d=price * math.exp(rng.gauss(0, 0.08)),
            ref_1h=price * math.exp(rng.gauss(0, 0.005)), pegged=price == 1.0))
    return coins


def paprika_record(coin: Coin, rank: int, at: float) -> dict:
    return {
        "id": f"{coin.symbol.lower()}-{slug(coin.name)}", "name": coin.name, "symbol": coin.symbol, "rank": rank,
        "circulating_supply": round(coin.circulating), "total_supply": round(coin.total),
        "max_supply": round(coin.max_supply or 0), "beta_value": round(coin.beta, 4),
        "first_data_at": iso(coin.first_data_at), "last_updated": iso(at),
        "quotes": {"USD": {
            "price": sig(coin.price), "volume_24h": round(coin.volume, 2), "volume_24h_change_24h": coin.volume_change,
            "market_cap": round(coin.market_cap), "market_cap_change_24h": pct(coin.price, coin.ref_24h),
            "percent_change_1h": pct(coin.price, coin.ref_1h), "percent_change_24h": pct(coin.price, coin.ref_24h),
            "percent_change_7d": pct(coin.price, coin.ref_7d), "ath_price": sig(coin.ath),
            "ath_date": iso(coin.ath_at), "percent_from_price_ath": pct(coin.price, coin.ath)}},
    }


def gecko_record(coin: Coin, rank: int, at: float) -> dict:
    spread = 1 + coin.vol
    return {
        "id": coin.gecko_id, "symbol": coin.symbol.lower(), "name": coin.name,
        "image": f"https://coin-images.coingecko.com/coins/images/{rank}/large/{coin.gecko_id}.png",
        "current_price": sig(coin.price), "market_cap": round(coin.market_cap), "market_cap_rank": rank,
        "fully_diluted_valuation": round(coin.price * (coin.max_supply or coin.total)),
        "total_volume": round(coin.volume), "high_24h": sig(max(coin.price, coin.ref_24h) * spread),
        "low_24h": sig(min(coin.price, coin.ref_24h) / spread), "price_change_24h": sig(coin.price - coin.ref_24h),
        "price_change_percentage_24h": pct(coin.price, coin.ref_24h),
        "market_cap_change_24h": round((coin.price - coin.ref_24h) * coin.circulating),
        "market_cap_change_percentage_24h": pct(coin.price, coin.ref_24h),
        "circulating_supply": round(coin.circulating, 1), "total_supply": round(coin.total, 1),
        "max_supply": round(coin.max_supply, 1) if coin.max_supply else None,
        "ath": sig(coin.ath), "ath_change_percentage": pct(coin.price, coin.ath), "ath_date": iso(coin.ath_at, True),
        "atl": sig(coin.atl), "atl_change_percentage": pct(coin.price, coin.atl), "atl_date": iso(coin.atl_at, True),
        "roi": None, "last_updated": iso(at, millis=True),
    }


class Market:
    """The coin universe and its current snapshot, rendered once per snapshot in both shapes."""

    def __init__(self, seed: int, coins: int, now: float) -> None:
        self.rng = random.Random(seed)
        self.coins = make_coins(self.rng, coins, now)
        self.number, self.taken_at = 0, now
        self.render()

    def advance(self, now: float) -> None:
        for coin in self.coins:
            coin.step(self.rng, now)
        self.number, self.taken_at = self.number + 1, now
        self.render()

    def render(self) -> None:
        ranked = sorted(self.coins, key=lambda coin: coin.market_cap, reverse=True)
        self.tickers = [paprika_record(coin, rank, self.taken_at) for rank, coin in enumerate(ranked, 1)]
        self.markets = [gecko_record(coin, rank, self.taken_at) for rank, coin in enumerate(ranked, 1)]


def renamed(record: dict, renames: dict) -> dict:
    """A copy of `record` with fields renamed in place (`quotes.USD.price` -> key `new` inside quotes.USD)."""
    record = copy.deepcopy(record)
    for old, new in renames.items():
        *parents, leaf = old.split(".")
        holder = record
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and leaf in holder:
            holder[new.split(".")[-1]] = holder.pop(leaf)
    return record


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict = field(default_factory=dict)


def json_reply(status: int, payload, **headers: str) -> Reply:
    return Reply(status, json.dumps(payload).encode(), headers)


ERROR_BODIES = {  # (source, status) -> error payload in that API's style
    ("a", 401): {"error": "invalid api key"}, ("c", 401): {"status": {"error_code": 10002, "error_message":
                                                                      "API Key Missing or invalid"}},
    ("a", 429): {"error": "Too many requests"}, ("c", 429): {"status": {"error_code": 429, "error_message":
                                                                       "You've exceeded the Rate Limit."}},
}
AUTH_HEADERS = {"a": "Authorization", "c": "x-cg-demo-api-key"}
ROUTES = {"/v1/tickers": "a", "/api/v3/coins/markets": "c"}


class Emulator:
    """The emulator: `start()` serves it over HTTP in a background thread; `handle()` answers without a socket."""

    def __init__(self, config: EmulatorConfig = EmulatorConfig(), *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config, self.clock, self.sleep = config, clock, sleep
        self.market = Market(config.seed, config.coins, clock())
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()
        for body in config.chaos:
            self.set_chaos(**body)

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> Emulator:
        self._server = ThreadingHTTPServer((self.config.host, self.config.port), _Handler)
        self._server.daemon_threads, self._server.emulator = True, self
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="source-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    # --- control -------------------------------------------------------------------------------------------
    def set_chaos(self, source: str, **settings) -> dict:
        """Set chaos keys for source "a" or "c" (ValueError if unknown); returns what is left to play."""
        if source not in ("a", "c"):
            raise ValueError('source must be "a" or "c"')
        with self._lock:
            self.chaos[source].update(settings)
            return self.chaos[source].as_json()

    def advance(self) -> dict:
        """Take a new snapshot now."""
        with self._lock:
            self.market.advance(self.clock())
            return self.snapshot_info()

    def snapshot_info(self) -> dict:
        return {"snapshot": self.market.number, "taken_at": iso(self.market.taken_at)}

    def log(self) -> list[dict]:
        with self._lock:
            return list(self._log)

    def reset(self) -> None:
        """Clear chaos, rate windows and the request log."""
        with self._lock:
            self.chaos = {"a": Chaos(), "c": Chaos()}
            self.windows = {"a": SlidingWindow(self.config.rate_a), "c": SlidingWindow(self.config.rate_c)}
            self._log: list[dict] = []

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        if (method, path) == ("GET", "/_control/log"):
            return json_reply(200, self.log())
        if (method, path) == ("GET", "/_control/health"):
            return json_reply(200, {"ok": True, **self.snapshot_info()})
        if (method, path) == ("GET", "/_control/chaos"):
            with self._lock:
                return json_reply(200, {source: chaos.as_json() for source, chaos in self.chaos.items()})
        if (method, path) == ("POST", "/_control/advance"):
            return json_reply(200, self.advance())
        if (method, path) == ("POST", "/_control/reset"):
            self.reset()
            return json_reply(200, {"ok": True})
        if (method, path) == ("POST", "/_control/chaos"):
            try:
                settings = json.loads(body or b"{}")
                return json_reply(200, self.set_chaos(**settings))
            except (ValueError, TypeError) as error:
                return json_reply(400, {"error": str(error)})
        return json_reply(404, {"error": f"no control endpoint {method} {path}"})

    # --- sources -------------------------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers=None, body: bytes = b"") -> Reply:
        """Answer one HTTP request."""
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if path.startswith("/_control/"):
            return self._control(method, path, body)
        source = "a" if path.startswith("/v1/") else "c" if path.startswith("/api/") else None
        if source is None:
            return json_reply(404, {"error": f"not found: {path}"})
        with self._lock:
            now = self.clock()
            reply, admitted, delay_s = self._answer(source, method, path, query, headers or {}, now)
            self._record({"ts": now, "source": source, "path": path, "query": query, "status": reply.status,
                          "admitted": admitted})
        if delay_s:
            self.sleep(delay_s)
        return reply

    def _answer(self, source: str, method: str, path: str, query: dict, headers, now: float):
        """(reply, admitted, delay) for a data request; called under the lock."""
        if ROUTES.get(path) != source or method != "GET":
            return json_reply(404, {"error": f"not found: {method} {path}"}), False, 0
        key = self.config.key_a if source == "a" else self.config.key_c
        if key is not None and headers.get(AUTH_HEADERS[source]) != key:
            return json_reply(401, ERROR_BODIES[source, 401]), False, 0
        chaos = self.chaos[source]
        if chaos.storm_429:
            chaos.storm_429 -= 1
            return self._too_many(source, chaos.storm_retry_after, now), False, 0
        wait_s = self.windows[source].admit(now)
        if wait_s is not None:
            return self._too_many(source, wait_s, now), False, 0
        if self.config.snapshot_every and now - self.market.taken_at >= self.config.snapshot_every:
            self.market.advance(now)
        delay_s = 0.0
        if chaos.slow_count:
            chaos.slow_count -= 1
            delay_s = chaos.slow_ms / 1000
        if chaos.status_5xx:
            chaos.status_5xx -= 1
            return json_reply(chaos.status_5xx_code, {"error": "chaos: upstream failure"}), True, delay_s
        if source == "a":
            records, page = self.market.tickers, None
        else:
            page = query.get("page", "1")
            problem = validate_markets_query(query)
            if problem:
                return json_reply(400, {"error": problem}), True, delay_s
            per_page, page = int(query.get("per_page", "100")), int(page)
            records = self.market.markets[(page - 1) * per_page: page * per_page]
        if chaos.rename:
            records = [renamed(record, chaos.rename) for record in records]
        reply = json_reply(200, records)
        if page in chaos.malformed_pages or chaos.malformed_json:
            if page in chaos.malformed_pages:
                chaos.malformed_pages.discard(page)
            else:
                chaos.malformed_json -= 1
            reply.body = b'{"error": "upstream hiccup" <html><body>502 Bad Gateway</body></html>'
        elif chaos.truncate:
            chaos.truncate -= 1
            reply.body = reply.body[: len(reply.body) // 2]
        return reply, True, delay_s

    def _too_many(self, source: str, wait_s: float, now: float) -> Reply:
        seconds = max(1, math.ceil(wait_s - 1e-9))
        retry_after = formatdate(now + seconds, usegmt=True) if self.config.retry_after_format == "date" else str(seconds)
        return json_reply(429, ERROR_BODIES[source, 429], **{"Retry-After": retry_after})

    def _record(self, entry: dict) -> None:
        self._log.append(entry)
        if self.config.log_file:
            with open(self.config.log_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


def validate_markets_query(query: dict) -> str | None:
    """CoinGecko's complaint about the query, or None."""
    if "vs_currency" not in query:
        return "Missing parameter vs_currency"
    if query["vs_currency"].lower() != "usd":
        return "invalid vs_currency"
    if query.get("order", "market_cap_desc") != "market_cap_desc":
        return "invalid order (the emulator serves market_cap_desc only)"
    for name, low, high, default in (("per_page", 1, MAX_PER_PAGE, "100"), ("page", 1, math.inf, "1")):
        text = query.get(name, default)
        if not text.isdigit() or not low <= int(text) <= high:
            return f"invalid {name}: must be an integer from {low}" + (f" to {high}" if high < math.inf else "")
    return None


class _Handler(BaseHTTPRequestHandler):
    server_version = "SourceEmulator/1.0"

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            reply = self.server.emulator.handle(self.command, self.path, self.headers, body)
        except Exception as error:  # a bug in the emulator must still answer, not hang the client
            log.exception("emulator failed on %s %s", self.command, self.path)
            reply = json_reply(500, {"error": f"emulator error: {error}"})
        try:
            self.send_response(reply.status)
            headers = {"Content-Type": "application/json", "Content-Length": str(len(reply.body)), **reply.headers}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, e.g. timed out on a slow reply

    do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args) -> None:
        log.debug("%s " + format, self.address_string(), *args)


def parse_args(argv: list[str] | None = None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(prog="python -m local.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--coins", type=int, default=600)
    parser.add_argument("--snapshot-every", type=float, default=60.0)
    parser.add_argument("--rate-a", type=RateLimit.parse, default=None)
    parser.add_argument("--rate-c", type=RateLimit.parse, default=None)
    parser.add_argument("--key-a")
    parser.add_argument("--key-c")
    parser.add_argument("--retry-after-format", choices=("seconds", "date"), default="seconds")
    parser.add_argument("--log-file")
    parser.add_argument("--chaos", type=json.loads, action="append", default=[])
    args = parser.parse_args(argv)
    return EmulatorConfig(**{**vars(args), "chaos": tuple(args.chaos)})


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    emulator = Emulator(parse_args(argv)).start()
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    print(f"source A: {emulator.url}/v1/tickers\nsource C: {emulator.url}/api/v3/coins/markets?vs_currency=usd\n"
          f"control:  {emulator.url}/_control/(health|log|chaos|advance|reset)", flush=True)
    try:
        while not stopping.wait(0.2):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
