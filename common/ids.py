"""Deterministic identifiers: run ids, idempotency keys, master asset ids, raw batch ids."""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import datetime, timezone

_SLUG = re.compile(r"[^a-z0-9]+")


def new_run_id(stage: str) -> str:
    """Time-sortable, unique run id such as `20261127T230102Z-extract-9f2c61ab`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{stage}-{uuid.uuid4().hex[:8]}"


def idempotency_key(source: str, source_id: str, observed_at: str) -> str:
    """Stable hash of (source, source record id or symbol, original timestamp)."""
    return key_from_parts(key_prefix(source, source_id), observed_at.encode())


def key_prefix(source: str, source_id: str) -> bytes:
    """The part of an idempotency key's input shared by every record of one source record id (hot loops cache it)."""
    return f"{source}\x1f{source_id}\x1f".encode()


def key_from_parts(prefix: bytes, observed_at: bytes) -> str:
    return hashlib.blake2b(prefix + observed_at, digest_size=16).hexdigest()


def slug(text: str) -> str:
    return _SLUG.sub("-", text.lower()).strip("-")


def asset_id(symbol: str, name: str) -> str:
    """One master id per coin across sources: normalised symbol + normalised name (`btc-bitcoin`)."""
    return f"{slug(symbol)}-{slug(name)}" if name.strip() else slug(symbol)


def csv_source_id(symbol: str, name: str) -> str:
    """A CSV coin's record id: symbol and name together, since tickers collide (Uniswap and Universe are both UNI)."""
    return asset_id(symbol, name)


def short_hash(*parts: str, length: int = 16) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]
