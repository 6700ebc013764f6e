"""Raw batch -> normalized record tuples, master assets and quarantine entries (the transform's pure core)."""

from __future__ import annotations

import csv
import json
import math
import operator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from common.ids import asset_id as make_asset_id
from common.ids import idempotency_key, short_hash
from common.sources import SourceSpec, resolve_header
from common.store import RawBatch


@dataclass
class Normalized:
    records: list[tuple] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    assets: dict[str, dict] = field(default_factory=dict)
    blank_lines: int = 0


NUMBER_FIELDS = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd")
"""The numeric fields in NORMALIZED_FIELDS order; price_usd is required."""


class BadRow(ValueError):
    """A row that cannot be loaded; the message is the quarantine reason."""


def to_utc_iso(text: str) -> str:
    """ISO 8601 / `YYYY-MM-DD HH:MM:SS` / date -> `YYYY-MM-DDTHH:MM:SSZ` in UTC (naive values are taken as UTC)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat() + "Z"


def to_number(text: str, label: str, *, required: bool = False) -> float | None:
    text = text.strip()
    if not text:
        if required:
            raise BadRow(f"missing {label}")
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRow(f"unparsable number in {label}: {text[:50]!r}") from None
    if math.isnan(value) or math.isinf(value):
        raise BadRow(f"non-finite number in {label}: {text[:50]!r}")
    if value < 0:
        raise BadRow(f"negative value in {label}: {text[:50]!r}")
    return value


def quarantine_entry(batch: RawBatch, run_id: str, row_number: int | None, raw: str | None, reason: str) -> dict:
    return {
        "id": short_hash(batch.batch_id, str(row_number), length=32),
        "source": batch.source, "run_id": run_id, "batch_id": batch.batch_id,
        "row_number": row_number, "raw": raw, "reason": reason,
    }


def normalize_csv_batch(batch: RawBatch, spec: SourceSpec, run_id: str, ingested_at: str) -> Normalized:
    """Parse a `csv_lines` batch: every non-blank line becomes one record or one quarantine entry."""
    out = Normalized()
    for reject in batch.rejects:
        out.quarantine.append(quarantine_entry(batch, run_id, reject["row_number"], reject["raw"], reject["reason"]))
    columns = resolve_header(spec, batch.header or [])
    width = len(batch.header or [])
    labels = {f.name: f.aliases[0] if f.aliases else f.name for f in spec.fields}
    i_symbol, i_time, i_name = columns["symbol"], columns["observed_at"], columns.get("name")
    present = [name for name in NUMBER_FIELDS if name in columns]
    numbers_of = operator.itemgetter(*(columns[name] for name in present))
    complete = len(present) == len(NUMBER_FIELDS)
    source = batch.source
    times: dict[str, str] = {}
    assets = out.assets
    records_append = out.records.append

    lines = batch.payload.split("\n")
    if batch.payload.endswith("\n"):
        lines.pop()
    for offset, line in enumerate(lines):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            out.blank_lines += 1
            continue
        try:
            if '"' in line:
                try:
                    cells = next(csv.reader([line], strict=True))
                except csv.Error as exc:
                    raise BadRow(f"malformed CSV quoting: {exc}") from None
            else:
                cells = line.split(",")
            if len(cells) != width:
                raise BadRow(f"expected {width} columns, got {len(cells)}")
            symbol = cells[i_symbol].strip().upper()
            if not symbol:
                raise BadRow(f"missing {labels['symbol']}")
            stamp = cells[i_time].strip()
            observed_at = times.get(stamp)
            if observed_at is None:
                if not stamp:
                    raise BadRow(f"missing {labels['observed_at']}")
                try:
                    observed_at = times[stamp] = to_utc_iso(stamp)
                except ValueError:
                    raise BadRow(f"unparsable timestamp in {labels['observed_at']}: {stamp[:50]!r}") from None
            name = cells[i_name].strip() if i_name is not None else ""
            try:  # fast path: every number present, finite and non-negative
                values = tuple(map(float, numbers_of(cells))) if len(present) > 1 else (float(numbers_of(cells)),)
                total = sum(values)
                if total - total != 0 or min(values) < 0 or not complete:
                    raise ValueError
            except ValueError:
                found = {
                    name_: to_number(cells[columns[name_]], labels[name_], required=name_ == "price_usd")
                    for name_ in present
                }
                values = tuple(found.get(name_) for name_ in NUMBER_FIELDS)
        except BadRow as bad:
            out.quarantine.append(quarantine_entry(batch, run_id, batch.first_row + offset, line, str(bad)))
            continue
        asset_key = (symbol, name)
        asset = assets.get(asset_key)
        if asset is None:
            asset = assets[asset_key] = {
                "asset_id": make_asset_id(symbol, name), "symbol": symbol, "name": name or None, "source": source,
            }
        records_append((
            idempotency_key(source, symbol, observed_at), source, symbol, symbol, observed_at, asset["asset_id"],
            name or None, *values, ingested_at, run_id,
        ))
    return out


def _at_path(record: dict, path: tuple[str, ...]):
    value = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def json_number(value, label: str, *, required: bool = False) -> float | None:
    """A JSON number, or a numeric string; booleans, objects and non-finite values are bad rows."""
    if value is None or value == "":
        if required:
            raise BadRow(f"missing {label}")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadRow(f"not a number in {label}: {str(value)[:50]!r}")
    return to_number(str(value), label, required=required)


def normalize_json_batch(batch: RawBatch, spec: SourceSpec, run_id: str, ingested_at: str) -> Normalized:
    """A `json` batch (one page as received): every record becomes one normalized record or one quarantine entry."""
    out = Normalized()
    try:
        records = json.loads(batch.payload)
    except ValueError as exc:
        out.quarantine.append(quarantine_entry(batch, run_id, None, batch.payload[:2000],
                                               f"response is not valid JSON ({exc})"))
        return out
    if not isinstance(records, list):
        out.quarantine.append(quarantine_entry(batch, run_id, None, batch.payload[:2000],
                                               f"expected a JSON array of records, got {type(records).__name__}"))
        return out
    paths = {f.name: tuple(f.aliases[0].split(".")) if f.aliases else (f.name,) for f in spec.fields}
    labels = {f.name: f.aliases[0] if f.aliases else f.name for f in spec.fields}
    numbers = [name for name in NUMBER_FIELDS if name in paths]
    for index, record in enumerate(records, start=1):
        try:
            if not isinstance(record, dict):
                raise BadRow(f"record is a {type(record).__name__}, not an object")
            texts = {}
            for name in ("source_id", "symbol", "name"):
                value = _at_path(record, paths[name]) if name in paths else None
                texts[name] = str(value).strip() if value is not None and not isinstance(value, (dict, list)) else ""
                if not texts[name] and spec.field(name).required:
                    raise BadRow(f"missing {labels[name]}")
            stamp = _at_path(record, paths["observed_at"])
            if not isinstance(stamp, str) or not stamp.strip():
                raise BadRow(f"missing {labels['observed_at']}")
            try:
                observed_at = to_utc_iso(stamp.strip())
            except ValueError:
                raise BadRow(f"unparsable timestamp in {labels['observed_at']}: {stamp[:50]!r}") from None
            values = {name: json_number(_at_path(record, paths[name]), labels[name], required=name == "price_usd")
                      for name in numbers}
        except BadRow as bad:
            out.quarantine.append(quarantine_entry(batch, run_id, index, json.dumps(record)[:2000], str(bad)))
            continue
        symbol, name = texts["symbol"].upper(), texts["name"]
        asset = out.assets.get((symbol, name))
        if asset is None:
            asset = out.assets[(symbol, name)] = {
                "asset_id": make_asset_id(symbol, name), "symbol": symbol, "name": name or None,
                "source": batch.source,
            }
        source_id = texts["source_id"] or symbol
        out.records.append((
            idempotency_key(batch.source, source_id, observed_at), batch.source, source_id, symbol, observed_at,
            asset["asset_id"], name or None, *(values.get(name) for name in NUMBER_FIELDS), ingested_at, run_id,
        ))
    return out
