"""Transform/load stage: pending raw batches -> normalized upserts, assets and quarantine, batch by batch."""

from __future__ import annotations

import logging

from common.clock import Clock, Deadline, iso_utc
from common.config import Settings
from common.errors import EtlError
from common.normalize import Normalized, normalize_csv_batch, normalize_json_batch, quarantine_entry
from common.runs import LeaseKeeper
from common.sources import source_spec
from common.store import RawBatch, Run, Store

log = logging.getLogger(__name__)


def transform_load(
    store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline, clock: Clock
) -> str:
    """Process pending batches oldest first until none is left (or the deadline); each commit is one write."""
    run.summary.update(batches=0, blank_lines=0, by_source={})
    while not deadline.near():
        pending = store.pending_raw_batches(limit=1)
        if not pending:
            return "succeeded"
        _load_batch(pending.pop(), store, settings, run, clock)  # one batch in memory at a time
        keeper.keep_alive()
    run.summary["warnings"].append("invocation deadline reached; pending batches are left for the next run")
    return "partial"


def _load_batch(batch: RawBatch, store: Store, settings: Settings, run: Run, clock: Clock) -> None:
    result = _normalize(batch, settings, run.run_id, iso_utc(clock()))
    store.commit_transformed(batch, result.records, result.quarantine, result.assets.values())
    run.rows_in += batch.row_count
    run.rows_out += len(result.records)
    run.quarantined += len(result.quarantine)
    run.summary["batches"] += 1
    run.summary["blank_lines"] += result.blank_lines
    counts = run.summary["by_source"].setdefault(batch.source, {"loaded": 0, "quarantined": 0})
    counts["loaded"] += len(result.records)
    counts["quarantined"] += len(result.quarantine)
    run.checkpoint = {"last_batch": batch.batch_id, "version": batch.version}


def _normalize(batch: RawBatch, settings: Settings, run_id: str, ingested_at: str) -> Normalized:
    """Normalize one batch; a batch that cannot be read at all is quarantined whole rather than retried forever."""
    try:
        spec = source_spec(batch.source, settings)
        if batch.format == "csv_lines":
            return normalize_csv_batch(batch, spec, run_id, ingested_at)
        if batch.format == "json":
            return normalize_json_batch(batch, spec, run_id, ingested_at)
        raise EtlError(f"unsupported raw batch format {batch.format!r}")
    except EtlError as exc:
        reason = f"whole batch rejected: {exc.message}"
    except Exception as exc:  # a bug must not block every later batch
        log.exception("cannot transform batch %s", batch.batch_id)
        reason = f"whole batch rejected: internal error {type(exc).__name__}: {exc}"
    return Normalized(quarantine=[quarantine_entry(batch, run_id, None, None, reason)])
