"""Raw batch -> normalized record tuples, master assets and quarantine entries (the transform's pure core).

Incoming names are mapped onto the source's canonical fields by a `FieldMapper` (schema drift absorbed, every
decision recorded); values are coerced at the edge (`common.drift.coerce`, one path for every source: the CSV fast
path only takes cells that `float()` and `to_number` read alike); timestamps in a non-standard format are read with
the declared or learned format, or held until every value of the batch has been seen and the format inferred
(`mapper.formats`); a row that cannot be loaded becomes a quarantine entry with its raw text and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import json
import operator
from dataclasses import dataclass, field

from common.drift.coerce import CoerceError
from common.drift.coerce import to_number as coerce_number
from common.drift.formats import Undecided
from common.drift.mapping import FieldMapper, ValueFormats
from common.ids import asset_id as make_asset_id
from common.ids import csv_source_id, idempotency_key, key_prefix, short_hash
from common.store import RawBatch

NUMBER_FIELDS = ("price_usd", "open_usd", "high_usd", "low_usd", "market_cap_usd", "volume_24h_usd")
"""The numeric fields in NORMALIZED_FIELDS order; price_usd is required."""
SAMPLE_ROWS = 20
MAX_RAW_CHARS = 64 * 1024
HOLD = ("held", b"")
"""A row's timestamp format is still being inferred: the row waits for the batch's second pass."""


@dataclass
class Normalized:
    records: list[tuple] = field(default_factory=list)
    quarantine: list[dict] = field(default_factory=list)
    assets: dict[tuple, dict] = field(default_factory=dict)
    blank_lines: int = 0
    error: str | None = None  # set when the whole batch could not be read (e.g. a required field is missing)


class BadRow(ValueError):
    """A row that cannot be loaded; the message is the quarantine reason."""


def number(value: object, label: str, *, required: bool = False) -> float | None:
    """A non-negative finite number (coerced leniently), None when blank and optional; BadRow otherwise."""
    try:
        result = coerce_number(value)
    except CoerceError as exc:
        raise BadRow(f"bad number in {label}: {exc}") from None
    if result is None:
        if required:
            raise BadRow(f"missing {label}")
        return None
    if result < 0:
        raise BadRow(f"negative value in {label}: {str(value)[:50]!r}")
    return result


def timestamp(value: object, label: str, formats: ValueFormats, *, final: bool = True) -> str:
    """The observed_at of a row; Undecided (with `final=False`) while its format is still being inferred."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow(f"missing {label}")
    try:
        return formats.timestamp("observed_at", label, value.strip() if isinstance(value, str) else value,
                                 final=final)
    except CoerceError as exc:
        raise BadRow(f"unparsable timestamp in {label}: {exc}") from None


def entry_id(batch_id: str, row_number: int | None) -> str:
    """A quarantine entry's id: one per row of a batch (row None: the whole batch), so a replayed batch re-quarantines
    in place and a corrected row can resolve the entry it left."""
    return short_hash(batch_id, str(row_number), length=32)


def superseded_entries(batch: RawBatch, result: "Normalized") -> list[str]:
    """Entries an earlier version of this batch may have left for rows that now load (or are blank): only a
    rewritten or requeued batch (version > 1) can have any."""
    if batch.version <= 1:
        return []
    still = {entry["row_number"] for entry in result.quarantine}
    rows = [None] if result.error is None else []
    rows += [row for row in range(batch.first_row, batch.first_row + batch.row_count) if row not in still]
    return [entry_id(batch.batch_id, row) for row in rows]


def quarantine_entry(batch: RawBatch, run_id: str, row_number: int | None, raw: str | None, reason: str) -> dict:
    if raw is not None and len(raw) > MAX_RAW_CHARS:
        raw = raw[:MAX_RAW_CHARS] + "...[truncated]"
    return {
        "id": entry_id(batch.batch_id, row_number),
        "source": batch.source, "run_id": run_id, "batch_id": batch.batch_id,
        "row_number": row_number, "raw": raw, "reason": reason,
    }


def _asset(assets: dict[tuple, dict], symbol: str, name: str, source: str) -> dict:
    """The master asset of (symbol, name), created once per batch."""
    asset = assets.get((symbol, name))
    if asset is None:
        asset = assets[(symbol, name)] = {"asset_id": make_asset_id(symbol, name), "symbol": symbol,
                                          "name": name or None, "source": source}
    return asset


def _whole_batch(out: Normalized, batch: RawBatch, run_id: str, reason: str) -> Normalized:
    out.error = reason
    out.quarantine.append(quarantine_entry(batch, run_id, None, None, f"whole batch rejected: {reason}"))
    return out


def _unreadable(out: Normalized, batch: RawBatch, run_id: str, reason: str) -> Normalized:
    """A body that cannot be read at all: quarantined whole with its text, and an error, so the run says so and
    a replay resolves the entry only once it really loads."""
    out.error = reason
    out.quarantine.append(quarantine_entry(batch, run_id, None, batch.payload, reason))
    return out


def _split_csv(line: str) -> list[str]:
    try:
        return next(csv.reader([line], strict=True))
    except csv.Error as exc:
        raise BadRow(f"malformed CSV quoting: {exc}") from None


def normalize_csv_batch(batch: RawBatch, mapper: FieldMapper, run_id: str, ingested_at: str) -> Normalized:
    """Parse a `csv_lines` batch: every non-blank line becomes one record or one quarantine entry.

    Two passes only when needed: rows whose timestamp format is still being inferred wait until every line of
    the batch has been seen, then load (or are quarantined as ambiguous) in a second pass over just them."""
    out = Normalized()
    for reject in batch.rejects:
        out.quarantine.append(quarantine_entry(batch, run_id, reject["row_number"], reject["raw"], reject["reason"]))
    header = batch.header or []
    lines = batch.payload.split("\n")
    if batch.payload.endswith("\n"):
        lines.pop()
    placeholders = 0  # lines the reader rejected (already quarantined above) are neither rows nor blank lines
    for reject in batch.rejects:
        offset = reject["row_number"] - batch.first_row
        if 0 <= offset < len(lines):
            lines[offset], placeholders = "", placeholders + 1
    sample_rows = [line.rstrip("\r").split(",") for line in lines[: SAMPLE_ROWS * 2] if line.strip()][:SAMPLE_ROWS]
    samples = {name: [row[i] for row in sample_rows if i < len(row)] for i, name in enumerate(header)}
    match = mapper.map(header, samples)
    missing = mapper.missing_message(match)
    if missing:
        return _whole_batch(out, batch, run_id, missing)
    columns = {canonical: header.index(incoming) for incoming, canonical in match.mapping.items()}
    labels = {canonical: incoming for incoming, canonical in match.mapping.items()}
    width = len(header)
    i_symbol, i_time, i_name = columns["symbol"], columns["observed_at"], columns.get("name")
    present = [name for name in NUMBER_FIELDS if name in columns]
    numbers_of = operator.itemgetter(*(columns[name] for name in present))
    complete = len(present) == len(NUMBER_FIELDS)
    times: dict[str, tuple[str, bytes]] = {}
    identities: dict[tuple[str, str], tuple[str, str, str | None, str, bytes]] = {}
    source, assets, append, formats = batch.source, out.assets, out.records.append, mapper.formats
    blake2b = hashlib.blake2b  # inlined ids.key_from_parts: same bytes, no call per row
    symbol_label, time_label = labels["symbol"], labels["observed_at"]
    held: list[tuple[int, str]] = []
    work, final = enumerate(lines), False

    while True:
        for offset, line in work:
            if line.endswith("\r"):
                line = line[:-1]
            if not line or line.isspace():
                out.blank_lines += 1
                continue
            try:
                cells = _split_csv(line) if '"' in line else line.split(",")
                if len(cells) != width:
                    raise BadRow(f"expected {width} columns, got {len(cells)}")
                raw_identity = (cells[i_symbol], cells[i_name] if i_name is not None else "")
                identity = identities.get(raw_identity)
                if identity is None:
                    symbol, name = raw_identity[0].strip().upper(), raw_identity[1].strip()
                    if not symbol:
                        raise BadRow(f"missing {symbol_label}")
                    source_id = csv_source_id(symbol, name)  # tickers collide: Uniswap and Universe are both UNI
                    identity = identities[raw_identity] = (source_id, symbol, name or None,
                                                           _asset(assets, symbol, name, source)["asset_id"],
                                                           key_prefix(source, source_id))
                stamp = cells[i_time]
                moment = times.get(stamp)
                if moment is None:
                    try:
                        iso = timestamp(stamp, time_label, formats, final=final)
                    except Undecided:
                        moment = times[stamp] = HOLD
                    else:
                        moment = times[stamp] = (iso, iso.encode())
                if moment is HOLD:
                    held.append((offset, line))
                    continue
                try:  # fast path: every number present, finite, non-negative, and read alike by float() and
                    # to_number (float() also takes "1_0" and non-ASCII digits such as "١٢٣": those go to coerce)
                    if not complete or "_" in line or not line.isascii():
                        raise ValueError
                    values = tuple(map(float, numbers_of(cells))) if len(present) > 1 else (float(numbers_of(cells)),)
                    total = sum(values)
                    if total - total != 0 or min(values) < 0:
                        raise ValueError
                except ValueError:
                    found = {name: number(cells[columns[name]], labels[name], required=name == "price_usd")
                             for name in present}
                    values = tuple(found.get(name) for name in NUMBER_FIELDS)
            except BadRow as bad:
                out.quarantine.append(quarantine_entry(batch, run_id, batch.first_row + offset, line, str(bad)))
                continue
            source_id, symbol, name, asset_id, prefix = identity
            append((blake2b(prefix + moment[1], digest_size=16).hexdigest(), source, source_id, symbol, moment[0],
                    asset_id, name, *values, ingested_at, run_id))
        if final or not held:
            break
        times = {stamp: moment for stamp, moment in times.items() if moment is not HOLD}
        work, held, final = held, [], True  # every value has been seen: the format is decided or ambiguous now
    out.blank_lines -= placeholders
    return out


def _flatten(record: dict, prefix: str = "", into: dict | None = None) -> dict:
    """Dotted paths of a JSON object's leaves (`quotes.USD.price`); lists are leaves."""
    into = {} if into is None else into
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            _flatten(value, f"{path}.", into)
        else:
            into.setdefault(path, value)
    return into


def _at_path(record: dict, path: tuple[str, ...]):
    value = record
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _text(value: object) -> str:
    return str(value).strip() if value is not None and not isinstance(value, (dict, list, bool)) else ""


def normalize_json_batch(batch: RawBatch, mapper: FieldMapper, run_id: str, ingested_at: str) -> Normalized:
    """A `json` batch (one page as received): every record becomes one normalized record or one quarantine entry."""
    out = Normalized()
    try:
        records = json.loads(batch.payload)
    except ValueError as exc:
        return _unreadable(out, batch, run_id, f"response is not valid JSON ({exc})")
    if not isinstance(records, list):
        return _unreadable(out, batch, run_id, f"expected a JSON array of records, got {type(records).__name__}")
    names: dict[str, list] = {}
    for record in records[:SAMPLE_ROWS * 5]:
        if isinstance(record, dict):
            for path, value in _flatten(record).items():
                names.setdefault(path, []).append(value)
    if not names:
        return out if not records else _whole_batch(out, batch, run_id, "no JSON objects in the page")
    match = mapper.map(list(names), {path: values[:SAMPLE_ROWS] for path, values in names.items()})
    missing = mapper.missing_message(match)
    if missing:
        return _whole_batch(out, batch, run_id, missing)
    paths = {canonical: tuple(incoming.split(".")) for incoming, canonical in match.mapping.items()}
    labels = {canonical: incoming for incoming, canonical in match.mapping.items()}
    numbers = [name for name in NUMBER_FIELDS if name in paths]
    formats, time_path, time_label = mapper.formats, paths["observed_at"], labels["observed_at"]
    for record in records:  # every value first: a timestamp format is inferred from all of them, never a sample
        try:
            timestamp(_at_path(record, time_path) if isinstance(record, dict) else None, time_label, formats,
                      final=False)
        except (BadRow, Undecided):
            pass
    for index, record in enumerate(records, start=1):
        try:
            if not isinstance(record, dict):
                raise BadRow(f"record is a {type(record).__name__}, not an object")
            source_id = _text(_at_path(record, paths["source_id"])) if "source_id" in paths else ""
            symbol = _text(_at_path(record, paths["symbol"])).upper()
            if not symbol:
                raise BadRow(f"missing {labels['symbol']}")
            if "source_id" in paths and not source_id:
                raise BadRow(f"missing {labels['source_id']}")
            observed_at = timestamp(_at_path(record, time_path), time_label, formats)
            found = {name: number(_at_path(record, paths[name]), labels[name], required=name == "price_usd")
                     for name in numbers}
        except BadRow as bad:
            out.quarantine.append(quarantine_entry(batch, run_id, index, json.dumps(record), str(bad)))
            continue
        name = _text(_at_path(record, paths["name"])) if "name" in paths else ""
        source_id = source_id or symbol
        out.records.append((
            idempotency_key(batch.source, source_id, observed_at), batch.source, source_id, symbol, observed_at,
            _asset(out.assets, symbol, name, batch.source)["asset_id"], name or None,
            *(found.get(n) for n in NUMBER_FIELDS), ingested_at, run_id,
        ))
    return out
