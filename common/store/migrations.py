"""What a schema upgrade does to stored records, shared by both adapters (each runs it its own way).

Version 3 re-keys normalized records the way today's transform writes them:
- a CSV (source_b) record's `source_id` is its coin, symbol and name together (`uni-uniswap`), not the bare
  ticker, which two coins can share; that is the record's `asset_id`, already stored;
- `observed_at` is fixed-width (`YYYY-MM-DDTHH:MM:SS.sssZ`), so text order is time order;
- `idempotency_key` is recomputed from the new parts.
"""

from __future__ import annotations

from common.drift.coerce import CoerceError, to_timestamp
from common.ids import idempotency_key

CSV_SOURCES = frozenset({"source_b"})


def canonical_observed_at(stored: str) -> str:
    """A stored timestamp in today's canonical form (one that cannot be read is kept as it is)."""
    try:
        return to_timestamp(stored)
    except CoerceError:
        return stored


def migrated_source_id(source: str, source_id: str, asset_id: str) -> str:
    return asset_id if source in CSV_SOURCES else source_id


def record_key(source: str, source_id: str, observed_at: str) -> str:
    return idempotency_key(source, source_id, observed_at)
