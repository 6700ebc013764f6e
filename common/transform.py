"""Transform/load stage: pending raw batches -> normalized upserts, assets and quarantine, batch by batch."""

from __future__ import annotations

from common.batches import Mappers
from common.clock import Clock, Deadline, iso_utc
from common.config import Settings
from common.normalize import Normalized, superseded_entries
from common.parallel import Normalizer
from common.runs import LeaseKeeper
from common.store import RawBatch, Run, Store


def transform_load(
    store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline, clock: Clock
) -> str:
    """Process pending batches oldest first until none is left (or the deadline); each commit is one write.

    With a spare core, the next batch is normalized in a worker process while this one is written.
    A batch that cannot be read at all (a required field missing from it) is quarantined whole and makes the run
    `failed` with the reason, after every other batch has been loaded; so does quarantining more than
    `quarantine_max_ratio` of the run's rows (a file whose dates a spreadsheet rewrote must not "succeed").
    A large backlog loads with the store's sort indexes dropped and built after it (`begin_bulk_load`)."""
    run.summary.update(batches=0, blank_lines=0, by_source={})
    mappers = Mappers(store, settings, run.run_id, clock)
    status = "partial"
    try:
        run.summary["bulk_load"] = store.begin_bulk_load()
        with Normalizer(settings, mappers, run.run_id, clock) as normalizer:
            while not deadline.near():
                pending = store.pending_raw_batches(limit=2)
                if not pending:
                    status = "succeeded"
                    break
                result = normalizer.result(pending[0], iso_utc(clock()))
                if len(pending) > 1:
                    normalizer.prefetch(pending[1], iso_utc(clock()))
                _commit(pending[0], result, store, run)
                del pending, result  # hold one batch (plus the prefetched one) at a time
                keeper.keep_alive()
            else:
                run.summary["warnings"].append("invocation deadline reached; pending batches are left for the next run")
    finally:
        mappers.summarize(run)
        store.finish_bulk_load()  # also builds what a crashed bulk load left missing
    _check_quarantine_ratio(run, settings.quarantine_max_ratio)
    return "failed" if run.summary["errors"] else status


def _check_quarantine_ratio(run: Run, max_ratio: float) -> None:
    """Record the share of rows quarantined; more than `max_ratio` of them is a failed run, with the reason."""
    rows = run.rows_out + run.quarantined
    ratio = run.quarantined / rows if rows else 0.0
    run.summary["quarantine_ratio"] = round(ratio, 4)
    if ratio > max_ratio:
        run.summary["errors"].append(
            f"quarantined {run.quarantined} of {rows} rows ({ratio:.0%}), more than QUARANTINE_MAX_RATIO={max_ratio:g};"
            f" first reason: {run.summary.get('quarantine_first_reason')}; see `etl quarantine list`")


def _commit(batch: RawBatch, result: Normalized, store: Store, run: Run) -> None:
    superseded = superseded_entries(batch, result)
    store.commit_transformed(batch, result.records, result.quarantine, result.assets.values(),
                             resolves=superseded, resolved_by=run.run_id)
    if result.error:
        run.summary["errors"].append(f"batch {batch.batch_id}: {result.error}")
    run.rows_in += batch.row_count
    run.rows_out += len(result.records)
    run.quarantined += len(result.quarantine)
    if result.quarantine and "quarantine_first_reason" not in run.summary:
        run.summary["quarantine_first_reason"] = result.quarantine[0]["reason"][:300]
    run.summary["batches"] += 1
    run.summary["blank_lines"] += result.blank_lines
    counts = run.summary["by_source"].setdefault(batch.source, {"loaded": 0, "quarantined": 0})
    counts["loaded"] += len(result.records)
    counts["quarantined"] += len(result.quarantine)
    run.checkpoint = {"last_batch": batch.batch_id, "version": batch.version}
