"""Source declarations: what each source is, where it lives, and the canonical fields it maps to.

`REGISTRY` is the one list of sources: the orchestrator, the trigger, `run_local` and the CLI derive theirs from it,
so adding a source is one `Declared(...)` line here (plus its fields and, at most, one small class).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from common.config import Settings
from common.errors import InputError


@dataclass(frozen=True)
class Field:
    """One canonical field: its type, whether a record needs it, whether it is part of the record's key."""

    name: str
    type: str  # "text" | "number" | "timestamp"
    required: bool = False
    key: bool = False
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class HttpSpec:
    """How to fetch an `http_json` source: query, auth, budget, pagination."""

    params: tuple[tuple[str, str], ...] = ()
    auth_header: str | None = None
    api_key: str | None = field(default=None, repr=False)
    key_setting: str | None = None  # the env var to name when the source answers 401/403
    rate: str = "10/1m"
    page_param: str | None = None  # page-number pagination when set
    per_page: int | None = None
    max_pages: int = 1
    record_path: tuple[str, ...] = ()  # where the record array sits in the response ((): the body itself)
    timeout_s: float = 20.0
    max_attempts: int = 5


@dataclass(frozen=True)
class SourceSpec:
    name: str
    kind: str  # "csv" | "http_json"
    location: str
    fields: tuple[Field, ...]
    http: HttpSpec | None = None
    ignored: frozenset[str] = frozenset()  # names the source sends that we deliberately do not load

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)



CSV_HISTORY_FIELDS = (
    Field("symbol", "text", required=True, key=True, aliases=("Symbol",)),
    Field("name", "text", aliases=("Name",)),
    Field("observed_at", "timestamp", required=True, key=True, aliases=("Date",)),
    Field("price_usd", "number", required=True, aliases=("Close",)),
    Field("open_usd", "number", aliases=("Open",)),
    Field("high_usd", "number", aliases=("High",)),
    Field("low_usd", "number", aliases=("Low",)),
    Field("volume_24h_usd", "number", aliases=("Volume",)),
    Field("market_cap_usd", "number", aliases=("Marketcap",)),
)


COINPAPRIKA_TICKER_FIELDS = (
    Field("source_id", "text", required=True, key=True, aliases=("id",)),
    Field("symbol", "text", required=True, key=True, aliases=("symbol",)),
    Field("name", "text", aliases=("name",)),
    Field("observed_at", "timestamp", required=True, key=True, aliases=("last_updated",)),
    Field("price_usd", "number", required=True, aliases=("quotes.USD.price",)),
    Field("volume_24h_usd", "number", aliases=("quotes.USD.volume_24h",)),
    Field("market_cap_usd", "number", aliases=("quotes.USD.market_cap",)),
)

COINGECKO_MARKET_FIELDS = (
    Field("source_id", "text", required=True, key=True, aliases=("id",)),
    Field("symbol", "text", required=True, key=True, aliases=("symbol",)),
    Field("name", "text", aliases=("name",)),
    Field("observed_at", "timestamp", required=True, key=True, aliases=("last_updated",)),
    Field("price_usd", "number", required=True, aliases=("current_price",)),
    Field("high_usd", "number", aliases=("high_24h",)),
    Field("low_usd", "number", aliases=("low_24h",)),
    Field("volume_24h_usd", "number", aliases=("total_volume",)),
    Field("market_cap_usd", "number", aliases=("market_cap",)),
)


CSV_HISTORY_IGNORED = frozenset({"SNo"})
COINPAPRIKA_IGNORED = frozenset({
    "rank", "circulating_supply", "total_supply", "max_supply", "beta_value", "first_data_at",
    *(f"quotes.USD.{name}" for name in (
        "volume_24h_change_24h", "market_cap_change_24h", "percent_change_15m", "percent_change_30m",
        "percent_change_1h", "percent_change_6h", "percent_change_12h", "percent_change_24h", "percent_change_7d",
        "percent_change_30d", "percent_change_1y", "ath_price", "ath_date", "percent_from_price_ath")),
})
COINGECKO_IGNORED = frozenset({
    "image", "market_cap_rank", "fully_diluted_valuation", "price_change_24h", "price_change_percentage_24h",
    "market_cap_change_24h", "market_cap_change_percentage_24h", "circulating_supply", "total_supply",
    "max_supply", "ath", "ath_change_percentage", "ath_date", "atl", "atl_change_percentage", "atl_date", "roi",
    "roi.times", "roi.currency", "roi.percentage",
})


def _coinpaprika(settings: Settings) -> SourceSpec:
    return SourceSpec("source_a", "http_json", settings.source_a_url, COINPAPRIKA_TICKER_FIELDS, HttpSpec(
        auth_header="Authorization", api_key=settings.source_a_api_key, key_setting="SOURCE_A_API_KEY",
        rate=settings.source_a_rate, timeout_s=settings.http_timeout_s, max_attempts=settings.http_max_attempts,
    ), COINPAPRIKA_IGNORED)


def _historical_csv(settings: Settings) -> SourceSpec:
    return SourceSpec("source_b", "csv", settings.source_b_path, CSV_HISTORY_FIELDS, ignored=CSV_HISTORY_IGNORED)


def _coingecko(settings: Settings) -> SourceSpec:
    return SourceSpec("source_c", "http_json", settings.source_c_url, COINGECKO_MARKET_FIELDS, HttpSpec(
        params=(("vs_currency", "usd"), ("order", "market_cap_desc")),
        auth_header="x-cg-demo-api-key", api_key=settings.source_c_api_key, key_setting="SOURCE_C_API_KEY",
        rate=settings.source_c_rate, page_param="page", per_page=settings.source_c_per_page,
        max_pages=settings.source_c_max_pages, timeout_s=settings.http_timeout_s,
        max_attempts=settings.http_max_attempts,
    ), COINGECKO_IGNORED)


@dataclass(frozen=True)
class Declared:
    """One source in the registry: its name, the short form the CLI takes, and how settings describe it."""

    name: str  # "source_a": the ledger's and the store's name for it
    short: str  # "a"
    describe: Callable[[Settings], SourceSpec]

    @property
    def function(self) -> str:
        """The stage function that extracts it (`functions/<function>/`, `EXTRACT_SOURCE_A_URL`)."""
        return f"extract_{self.name}"

    def url(self, settings: Settings) -> str:
        """Where its stage function answers when stages are separate functions ('' when not configured)."""
        return getattr(settings, f"{self.function}_url", "")


REGISTRY: tuple[Declared, ...] = (
    Declared("source_a", "a", _coinpaprika),
    Declared("source_b", "b", _historical_csv),
    Declared("source_c", "c", _coingecko),
)
SOURCE_NAMES = tuple(source.name for source in REGISTRY)
SHORT_NAMES = {source.short: source.name for source in REGISTRY}
TRANSFORM_FUNCTION = "transform_load"
STAGE_FUNCTIONS = (*(source.function for source in REGISTRY), TRANSFORM_FUNCTION)
"""Every stage function, extracts first, in registry order."""


def declared(name: str) -> Declared:
    """The registry entry for `name` (`source_a` or its short form `a`)."""
    name = SHORT_NAMES.get(name, name)
    for source in REGISTRY:
        if source.name == name:
            return source
    raise InputError(f"unknown source {name!r}; expected one of: {', '.join(SOURCE_NAMES)}")


def source_spec(name: str, settings: Settings) -> SourceSpec:
    """The declaration of source `name` (`source_a`, `source_b`, `source_c` or the short forms `a`, `b`, `c`)."""
    return declared(name).describe(settings)
