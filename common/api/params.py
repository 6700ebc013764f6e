"""Validation of query parameters at the edge: unknown, repeated or malformed parameters are a 400."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Mapping

from werkzeug.datastructures import MultiDict

from common.drift.coerce import CoerceError, to_timestamp
from common.errors import InputError
from common.sources import SOURCE_NAMES
from common.store import SORTABLE_FIELDS, DataQuery

MAX_LIMIT = 1000
MAX_PAGE = 1_000_000
_ASCII_INT = re.compile(r"[0-9]{1,9}")  # not str.isdigit: it accepts '²', '٣', '５', which int() or later code rejects
_BLANKS = " \t"
_SYMBOL = re.compile(r"[A-Za-z0-9.$_-]{1,20}")
_ASSET_ID = re.compile(r"[a-z0-9-]{1,100}")
DATA_PARAMS = ("page", "limit", "cursor", "symbol", "source", "asset_id", "from", "to", "sort_by", "order", "view")
VIEWS = ("latest",)
LATEST_EXCLUDES = ("cursor", "sort_by", "order", "from", "to")
MAX_SYMBOLS = 50
MAX_CURSOR = 2000
_CURSOR = re.compile(r"[A-Za-z0-9_-]+")
_ISO_START = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def single_values(args: MultiDict, allowed: tuple[str, ...]) -> Mapping[str, str]:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        names = ", ".join(name[:40].encode("ascii", "backslashreplace").decode() for name in unknown[:10])
        raise InputError(f"unknown query parameter(s): {names}; allowed: {', '.join(allowed)}")
    repeated = sorted(key for key in args if len(args.getlist(key)) > 1)
    if repeated:
        raise InputError(f"query parameter(s) given more than once: {', '.join(repeated)}")  # known names only
    return {key: args[key].strip(_BLANKS) for key in args}


def bounded_int(values: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = values.get(name)
    if raw is None or raw == "":
        return default
    if not _ASCII_INT.fullmatch(raw) or not low <= int(raw) <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, got {ascii(raw[:40])}")
    return int(raw)


def matching(values: Mapping[str, str], name: str, pattern: re.Pattern, hint: str) -> str | None:
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    if not pattern.fullmatch(raw):
        raise InputError(f"{name} must be {hint}, got {ascii(raw[:40])}")
    return raw


def choice(values: Mapping[str, str], name: str, options: tuple[str, ...], default: str | None) -> str | None:
    raw = values.get(name) or default
    if raw is not None and raw not in options:
        raise InputError(f"{name} must be one of {', '.join(options)}, got {ascii(raw[:40])}")
    return raw


@dataclass(frozen=True)
class DataRequest:
    query: DataQuery
    view: str | None  # None: rows; "latest": one entry per asset
    cursor: bool  # the query continues a cursor (keyset) walk


def parse_data_request(args: MultiDict) -> DataRequest:
    values = single_values(args, DATA_PARAMS)
    view = choice(values, "view", VIEWS, None)
    if view == "latest":
        given = [name for name in LATEST_EXCLUDES if values.get(name)]
        if given:
            raise InputError(f"{given[0]} is not supported with view=latest (it pages assets by asset_id)")
    from_at, to_at = instant(values, "from"), instant(values, "to")
    if from_at and to_at and from_at >= to_at:
        raise InputError(f"from must be before to, got from={from_at} and to={to_at}")
    query = DataQuery(
        page=bounded_int(values, "page", 1, 1, MAX_PAGE),
        limit=bounded_int(values, "limit", 100, 1, MAX_LIMIT),
        symbols=symbols(values),
        source=choice(values, "source", SOURCE_NAMES, None),
        asset_id=matching(values, "asset_id", _ASSET_ID, "a lowercase asset id such as btc-bitcoin"),
        sort_by=choice(values, "sort_by", SORTABLE_FIELDS, "observed_at"),
        descending=choice(values, "order", ("asc", "desc"), "desc") == "desc",
        from_at=from_at, to_at=to_at,
    )
    raw_cursor = values.get("cursor")
    if not raw_cursor:
        return DataRequest(query, view, False)
    if query.page > 1:
        raise InputError("cursor cannot be combined with page > 1: a cursor already says where the page starts")
    return DataRequest(replace(query, after=decode_cursor(raw_cursor, query)), view, True)


def symbols(values: Mapping[str, str]) -> tuple[str, ...]:
    """`symbol`: one ticker or up to MAX_SYMBOLS comma-separated, case-insensitive (stored upper case)."""
    raw = values.get("symbol")
    if not raw:
        return ()
    parts = [part.strip(_BLANKS) for part in raw.split(",")]
    if len(parts) > MAX_SYMBOLS:
        raise InputError(f"symbol takes at most {MAX_SYMBOLS} comma-separated tickers, got {len(parts)}")
    bad = next((part for part in parts if not _SYMBOL.fullmatch(part)), None)
    if bad is not None:
        raise InputError(f"symbol must be a ticker symbol such as BTC (or several, comma-separated), "
                         f"got {ascii(bad[:40])}")
    return tuple(dict.fromkeys(part.upper() for part in parts))


def instant(values: Mapping[str, str], name: str) -> str | None:
    """An ISO 8601 date or date-time (a zone offset or Z; none means UTC), canonical like stored observed_at."""
    raw = values.get(name)
    if not raw:
        return None
    try:
        if not _ISO_START.match(raw):
            raise CoerceError("not ISO 8601")
        return to_timestamp(raw)
    except CoerceError:
        raise InputError(f"{name} must be an ISO 8601 date or time such as 2026-01-01T00:00:00Z, "
                         f"got {ascii(raw[:40])}") from None


def _fingerprint(query: DataQuery) -> str:
    """What a cursor is bound to: its order and filters (not the page size, which may change mid-walk)."""
    parts = (query.sort_by, query.descending, sorted(query.wanted_symbols()), query.source, query.asset_id,
             query.from_at, query.to_at)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def encode_cursor(query: DataQuery, after: tuple) -> str:
    """Opaque to clients: where the next page starts (`Rows.after`: the last row's sort value and position in
    the store), bound to the query's order and filters."""
    body = json.dumps([_fingerprint(query), list(after)], separators=(",", ":"))
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def decode_cursor(raw: str, query: DataQuery) -> tuple:
    if len(raw) > MAX_CURSOR or not _CURSOR.fullmatch(raw):
        raise InputError("cursor must be a next_cursor returned by GET /data, unchanged")
    try:
        fingerprint, after = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        value, position = after
        valid = (isinstance(value, (str, int, float, type(None))) and not isinstance(value, bool)
                 and isinstance(position, (str, int)) and not isinstance(position, bool))
    except (ValueError, TypeError):
        valid = False
    if not valid:
        raise InputError("cursor must be a next_cursor returned by GET /data, unchanged")
    if fingerprint != _fingerprint(query):
        raise InputError("cursor belongs to another query: keep sort_by, order and the filters of the walk")
    return value, position
