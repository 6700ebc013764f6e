"""Validation of query parameters at the edge: unknown, repeated or malformed parameters are a 400."""

from __future__ import annotations

import re
from typing import Mapping

from werkzeug.datastructures import MultiDict

from common.errors import InputError
from common.sources import SOURCE_NAMES
from common.store import SORTABLE_FIELDS, DataQuery

MAX_LIMIT = 1000
MAX_PAGE = 1_000_000
_ASCII_INT = re.compile(r"[0-9]{1,9}")  # not str.isdigit: it accepts '²', '٣', '５', which int() or later code rejects
_BLANKS = " \t"
_SYMBOL = re.compile(r"[A-Za-z0-9.$_-]{1,20}")
_ASSET_ID = re.compile(r"[a-z0-9-]{1,100}")
DATA_PARAMS = ("page", "limit", "symbol", "source", "asset_id", "sort_by", "order")


def single_values(args: MultiDict, allowed: tuple[str, ...]) -> Mapping[str, str]:
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        names = ", ".join(name[:40] for name in unknown[:10])
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
        raise InputError(f"{name} must be an integer from {low} to {high}, got {raw[:40]!r}")
    return int(raw)


def matching(values: Mapping[str, str], name: str, pattern: re.Pattern, hint: str) -> str | None:
    raw = values.get(name)
    if raw is None or raw == "":
        return None
    if not pattern.fullmatch(raw):
        raise InputError(f"{name} must be {hint}, got {raw[:40]!r}")
    return raw


def choice(values: Mapping[str, str], name: str, options: tuple[str, ...], default: str | None) -> str | None:
    raw = values.get(name) or default
    if raw is not None and raw not in options:
        raise InputError(f"{name} must be one of {', '.join(options)}, got {raw[:40]!r}")
    return raw


def parse_data_query(args: MultiDict) -> DataQuery:
    values = single_values(args, DATA_PARAMS)
    symbol = matching(values, "symbol", _SYMBOL, "a ticker symbol such as BTC")
    return DataQuery(
        page=bounded_int(values, "page", 1, 1, MAX_PAGE),
        limit=bounded_int(values, "limit", 100, 1, MAX_LIMIT),
        symbol=symbol.upper() if symbol else None,
        source=choice(values, "source", SOURCE_NAMES, None),
        asset_id=matching(values, "asset_id", _ASSET_ID, "a lowercase asset id such as btc-bitcoin"),
        sort_by=choice(values, "sort_by", SORTABLE_FIELDS, "observed_at"),
        descending=choice(values, "order", ("asc", "desc"), "desc") == "desc",
    )
