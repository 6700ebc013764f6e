"""A local stand-in for source A (CoinPaprika) and source C (CoinGecko), so the product runs and is tested offline.

    python -m local.emulator --port 8900 --rate-a 10/1m --rate-c 3/1m --seed 1 --coins 600

Endpoints (JSON bodies, `Content-Type: application/json`; unknown paths -> 404 JSON):
    GET  /v1/tickers              A: every ticker, CoinPaprika-shaped, by rank; header `Authorization: <key-a>`
    GET  /api/v3/coins/markets    C: a page, CoinGecko-shaped, by market cap desc; header `x-cg-demo-api-key: <key-c>`;
                                  vs_currency=usd (required), order=market_cap_desc, per_page 1..250 (100), page >= 1
                                  (1); a page past the end is []
    GET  /_control/health         {"ok": true, "snapshot": n, "taken_at": iso}
    GET  /_control/log            the request log: [{"ts", "source": "a"|"c", "path", "query", "status", "admitted"}]
    GET  /_control/chaos          {"a": {...}, "c": {...}}: the chaos left to play
    POST /_control/chaos          {"source": "a"|"c", <chaos keys>}: set those keys, returns that source's chaos
    POST /_control/advance        take a snapshot now, returns {"snapshot", "taken_at"}
    POST /_control/reset          clear chaos, rate windows and the request log (the market stays)
Control endpoints are never authenticated, rate limited or logged; every request under /v1 or /api is logged.

Snapshots: prices follow a random walk per coin, deterministic from --seed and the number of snapshots. A snapshot is
taken by the first admitted data request --snapshot-every seconds after the last one (0: only on demand) and by
POST /_control/advance; within one snapshot every call returns identical data, unless `rank_moves` moves coins.

Flags: --host, --port (0: any free port), --seed, --coins, --snapshot-every S, --key-a, --key-c, --rate-a,
--rate-c (`N/<int><s|m|h>` such as 10/1m; 0 = no limit), --retry-after-format seconds|date, --log-file PATH (JSON
lines), --chaos JSON (a POST /_control/chaos body; repeatable).

Order of checks: route (404) -> auth (401) -> storm_429 -> rate window (429) -> admitted -> slow -> status_5xx ->
validation (400) -> body chaos. 404, 401 and 429 are not admitted; every other request counts towards the window, as
real APIs count 5xx, slow, malformed and invalid requests too. Chaos keys, per source:
    status_5xx N, status_5xx_code (500)      the next N admitted requests get that status and a JSON error
    storm_429 N, storm_retry_after (1)       the next N requests get 429 + Retry-After, whatever the window says
    slow_ms MS, slow_count N (1 if omitted)  the next N admitted requests are answered MS milliseconds late
    malformed_json N / truncate N            the next N 200 bodies are not JSON / cut in half (Content-Length fits)
    rename {"old": "new"}                    rename fields in every record until set to {} (A: `quotes.USD.price`)
    malformed_pages [2, 5]                   (C) each of those pages answers a malformed body once
    rank_moves [[6, 1], [3, 9]]              (C) after each answered page, the next move takes the coin at the first
                                             rank to the second (its price moves so market caps still sort): the
                                             ranking shifts between two requests, as it does on the real API
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
from dataclasses import dataclass, field
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
    ("Hyperliquid", "HYPE", "hyperliquid", 37.0, 333e6, 1e9), ("Sui", "SUI", "sui", 2.8, 3.4e9, 10e9),
    ("Bitcoin Cash", "BCH", "bitcoin-cash", 480.0, 19.88e6, 21e6), ("Chainlink", "LINK", "chainlink", 13.2, 6.8e8, 1e9),
    ("Stellar", "XLM", "stellar", 0.24, 31e9, 50e9), ("Avalanche", "AVAX", "avalanche-2", 18.0, 422e6, 720e6),
    ("Toncoin", "TON", "the-open-network", 2.9, 2.5e9, None), ("Shiba Inu", "SHIB", "shiba-inu", 1.15e-5, 589e12, None),
    ("Litecoin", "LTC", "litecoin", 85.0, 76e6, 84e6), ("Hedera", "HBAR", "hedera-hashgraph", 0.15, 42.3e9, 50e9),
    ("Monero", "XMR", "monero", 320.0, 18.4e6, None), ("Polkadot", "DOT", "polkadot", 3.4, 1.6e9, None),
    ("Dai", "DAI", "dai", 1.0, 5.4e9, None), ("Uniswap", "UNI", "uniswap", 7.2, 600e6, 1e9),
    ("Pepe", "PEPE", "pepe", 9.5e-6, 420.69e12, 420.69e12),
]
SYLLABLES = "ba ko ri zen lu mo ta vex qui dra no fi sol xa pe ru gal tor io nex vo ly kai sha".split()
SUFFIXES = ["", "", "", " Network", " Protocol", " Finance", " Chain", " AI", " Swap", " DAO", " Coin"]
ROUTES = {"/v1/tickers": "a", "/api/v3/coins/markets": "c"}
AUTH_HEADERS = {"a": "Authorization", "c": "x-cg-demo-api-key"}
ERRORS = {  # the error bodies of each API, by (source, status)
    ("a", 401): {"error": "invalid api key"}, ("a", 429): {"error": "Too many requests"},
    ("c", 401): {"status": {"error_code": 10002, "error_message": "API Key Missing or invalid"}},
    ("c", 429): {"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit."}},
}
MALFORMED = b'{"error": "upstream hiccup" <html><body>502 Bad Gateway</body></html>'


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` admitted requests in any window of `window_s` seconds."""

    limit: int
    window_s: float

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        """`N/<int><s|m|h>` (such as `10/1m`); `0` means no limit (None)."""
        if text.strip() == "0":
            return None
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)([smh])\s*", text)
        if not match or int(match[1]) < 1 or int(match[2]) < 1:
            raise ValueError(f"rate must look like 10/1m or 5/2s, or be 0: {text!r}")
        return cls(int(match[1]), int(match[2]) * {"s": 1, "m": 60, "h": 3600}[match[3]])


@dataclass(frozen=True)
class EmulatorConfig:
    """What the emulator starts with; `chaos` holds POST /_control/chaos bodies applied at start."""

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
            raise ValueError("need coins >= 1, snapshot_every >= 0, retry_after_format seconds or date")


CHAOS_OFF = {"status_5xx": 0, "status_5xx_code": 500, "storm_429": 0, "storm_retry_after": 1, "slow_ms": 0,
             "slow_count": 0, "malformed_json": 0, "truncate": 0, "rename": {}, "malformed_pages": [],
             "rank_moves": []}


def with_chaos(chaos: dict, settings: dict) -> dict:
    """`chaos` with `settings` (a POST /_control/chaos body without "source") applied; ValueError if invalid."""
    for key, value in settings.items():
        kind = type(CHAOS_OFF.get(key))
        if key not in CHAOS_OFF or type(value) is not kind or (kind is int and value < 0):
            raise ValueError(f"chaos key {key!r} is unknown or its value is not a valid {kind.__name__}")
    moves = settings.get("rank_moves", [])
    if not all(isinstance(m, list) and len(m) == 2 and all(type(r) is int and r >= 1 for r in m) for m in moves):
        raise ValueError("rank_moves must be a list of [from_rank, to_rank] pairs of ranks >= 1")
    if not 500 <= settings.get("status_5xx_code", 500) <= 599:
        raise ValueError("status_5xx_code must be from 500 to 599")
    if settings.get("slow_ms") and "slow_count" not in settings:
        settings = {**settings, "slow_count": chaos["slow_count"] or 1}
    return copy.deepcopy({**chaos, **settings})


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sig(value: float) -> float:
    return float(f"{value:.8g}")


def pct(new: float, old: float) -> float:
    return round((new / old - 1) * 100, 2)


def iso(epoch_s: float, millis: bool = False) -> str:
    moment = datetime.fromtimestamp(epoch_s, timezone.utc)
    return moment.isoformat(timespec="milliseconds" if millis else "seconds").replace("+00:00", "Z")


class Coin:
    """One coin's state; `step` moves it to the next snapshot."""

    def __init__(self, rng: random.Random, now: float, name: str, symbol: str, gecko_id: str, price: float,
                 circulating: float, max_supply: float | None, vol: float) -> None:
        self.name, self.symbol, self.gecko_id, self.price, self.vol = name, symbol, gecko_id, price, vol
        self.circulating, self.max_supply, self.pegged = circulating, max_supply, price == 1.0
        self.total = min(circulating * rng.uniform(1, 1.05), max_supply or math.inf)
        self.beta, self.first_data_at = rng.uniform(0.3, 1.6), now - rng.uniform(1, 12) * 365 * 86400
        self.volume, self.volume_change = price * circulating * rng.uniform(0.005, 0.15), 0.0
        self.ath, self.ath_at = price * rng.uniform(1.02, 2.5), now - rng.uniform(30, 1500) * 86400
        self.atl, self.atl_at = price * rng.uniform(0.001, 0.5), now - rng.uniform(1500, 4000) * 86400
        self.ref_1h, self.ref_24h, self.ref_7d = [price * math.exp(rng.gauss(0, s)) for s in (0.005, 0.03, 0.08)]

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
        self.ath, self.ath_at = max((self.ath, self.ath_at), (self.price, now))
        self.atl, self.atl_at = min((self.atl, self.atl_at), (self.price, now))


def make_coins(rng: random.Random, count: int, now: float) -> list[Coin]:
    """The real coins first, then synthetic ones (unique names and symbols) smaller than the real ones."""
    coins = [Coin(rng, now, *real, vol=0.01) for real in REAL_COINS[:count]]
    ids = {coin.gecko_id for coin in coins} | {slug(coin.name) for coin in coins}
    symbols = {coin.symbol for coin in coins}
    while len(coins) < count:
        stem = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3)))
        name, letters = stem.capitalize() + rng.choice(SUFFIXES), stem.upper()
        if slug(name) in ids:
            continue
        symbol = next(s for s in (letters[:3], letters[:4], letters[:2] + letters[-1], letters[:5], letters[:6],
                                  f"{letters[:3]}{len(symbols)}") if s not in symbols)
        price = 10 ** rng.uniform(-5, 2.5)
        circulating = 10 ** rng.uniform(5, 9.3) / price
        max_supply = rng.choice([None, circulating * rng.uniform(1, 3)])
        coins.append(Coin(rng, now, name, symbol, slug(name), price, circulating, max_supply, rng.uniform(0.01, 0.05)))
        ids.add(slug(name))
        symbols.add(symbol)
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
    high, low = max(coin.price, coin.ref_24h) * (1 + coin.vol), min(coin.price, coin.ref_24h) / (1 + coin.vol)
    return {
        "id": coin.gecko_id, "symbol": coin.symbol.lower(), "name": coin.name,
        "image": f"https://coin-images.coingecko.com/coins/images/{rank}/large/{coin.gecko_id}.png",
        "current_price": sig(coin.price), "market_cap": round(coin.market_cap), "market_cap_rank": rank,
        "fully_diluted_valuation": round(coin.price * (coin.max_supply or coin.total)),
        "total_volume": round(coin.volume), "high_24h": sig(high), "low_24h": sig(low),
        "price_change_24h": sig(coin.price - coin.ref_24h),
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
        self.coins, self.number = make_coins(self.rng, coins, now), -1
        self.advance(now, walk=False)

    def advance(self, now: float, walk: bool = True) -> None:
        for coin in self.coins if walk else ():
            coin.step(self.rng, now)
        self.number, self.taken_at = self.number + 1, now
        self._render()

    def move(self, from_rank: int, to_rank: int) -> None:
        """Reprice the coin at `from_rank` so that it ranks `to_rank` (by market cap, between its new neighbours)."""
        ranked = sorted(self.coins, key=lambda coin: coin.market_cap, reverse=True)
        coin = ranked.pop(from_rank - 1)
        above = ranked[to_rank - 2].market_cap if to_rank >= 2 else None
        below = ranked[to_rank - 1].market_cap if to_rank - 1 < len(ranked) else None
        target = (above + below) / 2 if above and below else above * 0.9 if above else below * 1.1
        coin.price = target / coin.circulating
        self._render()

    def _render(self) -> None:
        ranked = sorted(self.coins, key=lambda coin: coin.market_cap, reverse=True)
        self.tickers = [paprika_record(coin, rank, self.taken_at) for rank, coin in enumerate(ranked, 1)]
        self.markets = [gecko_record(coin, rank, self.taken_at) for rank, coin in enumerate(ranked, 1)]


def renamed(record: dict, renames: dict) -> dict:
    """A copy of `record` with fields renamed where they are (`quotes.USD.price` -> `new` inside quotes.USD)."""
    record = copy.deepcopy(record)
    for old, new in renames.items():
        *parents, leaf = old.split(".")
        holder = record
        for key in parents:
            holder = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(holder, dict) and leaf in holder:
            holder[new.split(".")[-1]] = holder.pop(leaf)
    return record


def consume(chaos: dict, counter: str) -> bool:
    """Take one from a chaos counter; False if it was already 0."""
    if chaos[counter] <= 0:
        return False
    chaos[counter] -= 1
    return True


def markets_query_problem(query: dict) -> str | None:
    """CoinGecko's complaint about a /coins/markets query, or None."""
    if "vs_currency" not in query:
        return "Missing parameter vs_currency"
    if query["vs_currency"].lower() != "usd":
        return "invalid vs_currency"
    if query.get("order", "market_cap_desc") != "market_cap_desc":
        return "invalid order (the emulator serves market_cap_desc only)"
    for name, default, high in (("per_page", "100", 250), ("page", "1", math.inf)):
        if not query.get(name, default).isdecimal() or not 1 <= int(query.get(name, default)) <= high:
            return f"invalid {name}: must be an integer from 1 to {high}"
    return None


Reply = tuple[int, bytes, dict]  # status, body, extra headers


def json_reply(status: int, payload, **headers: str) -> Reply:
    return status, json.dumps(payload).encode(), headers


class Emulator:
    """Serves both sources over HTTP from a background thread (`start`), or answers in-process (`handle`)."""

    def __init__(self, config: EmulatorConfig = EmulatorConfig(), *, clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config, self.clock, self.sleep = config, clock, sleep
        self.market = Market(config.seed, config.coins, clock())
        self._lock, self._server, self._thread = threading.Lock(), None, None
        self.reset()
        for body in config.chaos:
            self.set_chaos(**body)

    def start(self) -> Emulator:
        """Listen on config.host:config.port (0: any free port, see `port`) in a daemon thread."""
        self._server = ThreadingHTTPServer((self.config.host, self.config.port), _Handler)
        self._server.daemon_threads, self._server.emulator = True, self
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = self._thread = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def set_chaos(self, source: str, **settings) -> dict:
        """Set chaos keys for source "a" or "c" (ValueError if invalid); returns that source's chaos."""
        if source not in ("a", "c"):
            raise ValueError('source must be "a" or "c"')
        with self._lock:
            chaos = with_chaos(self.chaos[source], settings)
            if any(rank > self.config.coins for move in chaos["rank_moves"] for rank in move):
                raise ValueError(f"rank_moves: ranks go from 1 to {self.config.coins}")
            self.chaos[source] = chaos
            return copy.deepcopy(self.chaos[source])

    def chaos_left(self) -> dict:
        with self._lock:
            return copy.deepcopy(self.chaos)

    def advance(self) -> dict:
        """Take a new snapshot now; returns {"snapshot", "taken_at"}."""
        with self._lock:
            self.market.advance(self.clock())
            return self.health()

    def health(self) -> dict:
        return {"ok": True, "snapshot": self.market.number, "taken_at": iso(self.market.taken_at)}

    def log(self) -> list[dict]:
        with self._lock:
            return list(self._log)

    def reset(self) -> dict:
        """Clear chaos, rate windows and the request log."""
        with self._lock:
            self.chaos = {"a": copy.deepcopy(CHAOS_OFF), "c": copy.deepcopy(CHAOS_OFF)}
            self.windows, self._log = {"a": deque(), "c": deque()}, []
        return {"ok": True}

    def handle(self, method: str, target: str, headers=None, body: bytes = b"") -> Reply:
        """Answer one request: (status, body, extra headers)."""
        parts = urlsplit(target)
        path, query = parts.path, {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        source = "a" if path.startswith("/v1/") else "c" if path.startswith("/api/") else None
        if source is None:
            return self._control(method, path, body)
        with self._lock:
            now = self.clock()
            reply, admitted, delay_s = self._answer(source, method, path, query, headers or {}, now)
            self._record({"ts": now, "source": source, "path": path, "query": query, "status": reply[0],
                          "admitted": admitted})
        if delay_s:
            self.sleep(delay_s)
        return reply

    def _control(self, method: str, path: str, body: bytes) -> Reply:
        actions = {
            ("GET", "/_control/health"): self.health, ("GET", "/_control/log"): self.log,
            ("GET", "/_control/chaos"): self.chaos_left, ("POST", "/_control/advance"): self.advance,
            ("POST", "/_control/reset"): self.reset,
            ("POST", "/_control/chaos"): lambda: self.set_chaos(**json.loads(body or b"{}")),
        }
        if (method, path) not in actions:
            return json_reply(404, {"error": f"not found: {method} {path}"})
        try:
            return json_reply(200, actions[method, path]())
        except (ValueError, TypeError) as error:  # a bad chaos body
            return json_reply(400, {"error": str(error)})

    def _answer(self, source: str, method: str, path: str, query: dict, headers, now: float):
        """(reply, admitted, delay in seconds) for a data request; called under the lock."""
        if ROUTES.get(path) != source or method != "GET":
            return json_reply(404, {"error": f"not found: {method} {path}"}), False, 0
        key, chaos = (self.config.key_a, self.config.key_c)[source == "c"], self.chaos[source]
        if key is not None and headers.get(AUTH_HEADERS[source]) != key:
            return json_reply(401, ERRORS[source, 401]), False, 0
        if consume(chaos, "storm_429"):
            return self._too_many(source, chaos["storm_retry_after"], now), False, 0
        if wait_s := self._wait_before_admitting(source, now):
            return self._too_many(source, wait_s, now), False, 0
        if self.config.snapshot_every and now - self.market.taken_at >= self.config.snapshot_every:
            self.market.advance(now)
        delay_s = chaos["slow_ms"] / 1000 if consume(chaos, "slow_count") else 0
        if consume(chaos, "status_5xx"):
            return json_reply(chaos["status_5xx_code"], {"error": "chaos: upstream failure"}), True, delay_s
        records, page = self.market.tickers, None
        if source == "c":
            if problem := markets_query_problem(query):
                return json_reply(400, {"error": problem}), True, delay_s
            per_page, page = int(query.get("per_page", "100")), int(query.get("page", "1"))
            records = self.market.markets[(page - 1) * per_page: page * per_page]
        if source == "c" and chaos["rank_moves"]:  # the ranking moves after this page is taken
            self.market.move(*chaos["rank_moves"].pop(0))
        if chaos["rename"]:
            records = [renamed(record, chaos["rename"]) for record in records]
        status, body, _ = json_reply(200, records)
        if page in chaos["malformed_pages"]:
            chaos["malformed_pages"].remove(page)
            body = MALFORMED
        elif consume(chaos, "malformed_json"):
            body = MALFORMED
        elif consume(chaos, "truncate"):
            body = body[: len(body) // 2]
        return (status, body, {}), True, delay_s

    def _wait_before_admitting(self, source: str, now: float) -> float:
        """Admit the request into the sliding window (0), or return how long until it would be admitted."""
        limit, admitted = (self.config.rate_a, self.config.rate_c)[source == "c"], self.windows[source]
        if limit is None:
            return 0
        while admitted and admitted[0] <= now - limit.window_s:
            admitted.popleft()
        if len(admitted) >= limit.limit:
            return admitted[0] + limit.window_s - now
        admitted.append(now)
        return 0

    def _too_many(self, source: str, wait_s: float, now: float) -> Reply:
        seconds = max(1, math.ceil(wait_s - 1e-9))
        date = self.config.retry_after_format == "date"
        return json_reply(429, ERRORS[source, 429], **{"Retry-After": formatdate(now + seconds, usegmt=True)
                                                        if date else str(seconds)})

    def _record(self, entry: dict) -> None:
        self._log.append(entry)
        if self.config.log_file:
            with open(self.config.log_file, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry) + "\n")


class _Handler(BaseHTTPRequestHandler):
    server_version = "SourceEmulator/1.0"

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            status, body, headers = self.server.emulator.handle(self.command, self.path, self.headers, body)
        except Exception as error:  # an emulator bug must still answer rather than hang the client
            log.exception("emulator failed on %s %s", self.command, self.path)
            status, body, headers = json_reply(500, {"error": f"emulator error: {error}"})
        try:
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", "Content-Length": len(body), **headers}.items():
                self.send_header(name, str(value))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, e.g. timed out on a slow reply

    do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args) -> None:
        pass  # the request log is the record; stderr stays quiet


def parse_args(argv: list[str] | None = None) -> EmulatorConfig:
    parser = argparse.ArgumentParser(prog="python -m local.emulator", description=__doc__.splitlines()[0])
    for flag, kind, default in (
            ("--host", str, "127.0.0.1"), ("--port", int, 8900), ("--seed", int, 1), ("--coins", int, 600),
            ("--snapshot-every", float, 60.0), ("--rate-a", RateLimit.parse, None), ("--rate-c", RateLimit.parse, None),
            ("--key-a", str, None), ("--key-c", str, None), ("--log-file", str, None)):
        parser.add_argument(flag, type=kind, default=default)
    parser.add_argument("--retry-after-format", choices=("seconds", "date"), default="seconds")
    parser.add_argument("--chaos", type=json.loads, action="append", default=[], help="a POST /_control/chaos body")
    args = parser.parse_args(argv)
    return EmulatorConfig(**{**vars(args), "chaos": tuple(args.chaos)})


def main(argv: list[str] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    emulator = Emulator(parse_args(argv)).start()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM stops like Ctrl-C
    print(f"source A: {emulator.url}/v1/tickers\nsource C: {emulator.url}/api/v3/coins/markets?vs_currency=usd\n"
          f"control:  {emulator.url}/_control/(health|log|chaos|advance|reset)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
