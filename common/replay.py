"""Quarantine replay: after a mapping fix (an alias in FIELD_ALIASES), load what the fix makes loadable.

Each unresolved entry is normalized again from its raw text (a CSV line under its batch's header, or one JSON
record) with the mappings in force now. Rows that load are upserted (idempotent) and their entry is marked
resolved by this run, so a second replay loads nothing twice. A batch that was rejected whole is re-read whole.
Entries whose bytes never made it (undecodable or oversize lines) cannot be replayed and stay as they are.
"""

from __future__ import annotations

import dataclasses
from itertools import groupby

from common.clock import Clock, Deadline, iso_utc
from common.config import Settings
from common.runs import LeaseKeeper
from common.store import RawBatch, Run, Store
from common.batches import NORMALIZERS, Mappers

PAGE = 500


def replay_quarantine(store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline,
                      clock: Clock, source: str | None = None) -> str:
    mappers = Mappers(store, settings, run.run_id, clock)
    counts = run.summary.setdefault("replay", {"entries": 0, "resolved": 0, "still_quarantined": 0,
                                               "not_replayable": 0})
    offset = 0
    try:
        while True:
            if deadline.near():
                run.summary["warnings"].append("invocation deadline reached; replay the rest with another run")
                return "partial"
            entries = store.list_quarantine(source, limit=PAGE, offset=offset, unresolved_only=True)
            if not entries:
                return "succeeded"
            for batch_id, group in groupby(sorted(entries, key=lambda e: e["batch_id"] or ""),
                                           key=lambda e: e["batch_id"]):
                group = list(group)
                resolved = _replay_group(store, batch_id, group, mappers, run, clock)
                counts["entries"] += len(group)
                counts["resolved"] += resolved
                offset += len(group) - resolved  # what stays unresolved stays in the listing
            keeper.keep_alive()
    finally:
        counts["still_quarantined"] = counts["entries"] - counts["resolved"] - counts["not_replayable"]
        mappers.summarize(run)


def _replay_group(store: Store, batch_id: str | None, entries: list[dict], mappers: Mappers, run: Run,
                  clock: Clock) -> int:
    batch = store.get_raw_batch(batch_id) if batch_id else None
    if batch is None:
        run.summary["replay"]["not_replayable"] += len(entries)
        return 0
    rejected_rows = {reject["row_number"] for reject in batch.rejects}
    normalize = NORMALIZERS[batch.format]
    loadable: list[str] = []
    for entry in entries:
        if entry["row_number"] is None:  # the whole batch was rejected: read it whole again
            result = normalize(batch, mappers[batch.source], run.run_id, iso_utc(clock()))
            if result.error is None:
                store.commit_transformed(None, result.records, result.quarantine, result.assets.values())
                run.rows_out += len(result.records)
                loadable.append(entry["id"])
            continue
        if entry["row_number"] in rejected_rows or entry["raw"] is None or entry["raw"].endswith("...[truncated]"):
            run.summary["replay"]["not_replayable"] += 1
            continue
        single = _single_row(batch, entry)
        result = normalize(single, mappers[batch.source], run.run_id, iso_utc(clock()))
        if result.records:
            store.commit_transformed(None, result.records, [], result.assets.values())
            run.rows_out += len(result.records)
            loadable.append(entry["id"])
    run.rows_in += len(entries)
    return store.resolve_quarantine(loadable, run.run_id)


def _single_row(batch: RawBatch, entry: dict) -> RawBatch:
    """A one-row batch holding just this entry, read the way its original batch was."""
    payload = entry["raw"] + "\n" if batch.format == "csv_lines" else f"[{entry['raw']}]"
    return dataclasses.replace(batch, payload=payload, row_count=1, first_row=entry["row_number"], rejects=[])
