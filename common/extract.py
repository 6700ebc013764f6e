"""Extract stage: source -> raw batches, each written together with the checkpoint just after it."""

from __future__ import annotations

from typing import Callable

from common.clock import Deadline
from common.config import Settings
from common.drift.mapping import FieldMapper
from common.errors import BudgetExhausted, SourceError, SourceUnavailable
from common.ids import short_hash
from common.runs import LeaseKeeper
from common.sources import SourceSpec
from common.sources.csv_file import CsvFile
from common.sources.http_client import MalformedBody, PageFetcher
from common.store import RawBatch, Run, Store

Progress = Callable[[int, int, int], None]
"""progress(rows_done, bytes_done, bytes_total), called after every durable chunk."""


def checkpoint_name(source: str) -> str:
    return f"extract:{source}"


def extract_csv(
    spec: SourceSpec, store: Store, settings: Settings, run: Run, keeper: LeaseKeeper, deadline: Deadline,
    progress: Progress | None = None,
) -> str:
    """Stream the CSV from its checkpoint to the end (or the deadline); return the run's final status."""
    csv_file = CsvFile(spec.location, settings.csv_chunk_rows, settings.csv_max_line_bytes)
    header, data_start = csv_file.read_header()
    mapper = FieldMapper.for_run(store, spec, settings, run.run_id, deadline.clock, learn=False)
    missing = mapper.missing_message(mapper.map(header))
    run.summary["drift"] = list(mapper.decisions.values())
    run.summary["warnings"].extend(mapper.warnings())
    if missing:
        raise SourceError(missing, source=spec.name)
    name = checkpoint_name(spec.name)
    position, restart_reason = csv_file.resume(store.get_checkpoint(name), data_start)
    if restart_reason:
        run.summary["warnings"].append(restart_reason)
    total = csv_file.size()
    run.checkpoint = position.to_dict()
    run.summary.update(file=spec.location, batches=0, rejected_lines=0, bytes_total=total)
    if data_start >= total:
        run.summary["warnings"].append("file has a header but no data rows")
        return "succeeded"
    for chunk, after in csv_file.chunks(position):
        store.put_raw_batch(
            RawBatch(
                batch_id=f"{spec.name}:{position.identity}:{chunk.start}", source=spec.name, run_id=run.run_id,
                format="csv_lines", payload=chunk.text, row_count=chunk.row_count, first_row=chunk.first_row,
                header=header, rejects=chunk.rejects, position={"start": chunk.start, "end": chunk.end},
            ),
            (name, after.to_dict()),
        )
        run.rows_in += chunk.row_count
        run.rows_out += chunk.row_count
        run.checkpoint = after.to_dict()
        run.summary["batches"] += 1
        run.summary["rejected_lines"] += len(chunk.rejects)
        if progress:
            progress(after.row, after.offset, total)
        if deadline.near():
            run.summary["warnings"].append("invocation deadline reached; the next run continues from the checkpoint")
            return "partial"
        keeper.keep_alive()
    return "succeeded"


def extract_http(spec: SourceSpec, store: Store, run: Run, keeper: LeaseKeeper, deadline: Deadline,
                 fetcher: PageFetcher) -> str:
    """Fetch pages from the checkpointed cursor; each page's raw batch is written with the cursor after it.

    A completed pass resets the cursor, so the next run starts a fresh snapshot from page 1.
    """
    assert spec.http is not None
    name = checkpoint_name(spec.name)
    saved = store.get_checkpoint(name) or {}
    resuming = bool(saved) and not saved.get("complete", True)
    snapshot = saved["snapshot"] if resuming else run.run_id
    page = saved["next_page"] if resuming else 1
    if resuming:
        run.summary["warnings"].append(f"resuming snapshot {snapshot} at page {page}")
    run.summary.update(pages=0, records=0, failed_pages=[])
    paged = spec.http.page_param is not None
    try:
        while True:
            if deadline.near():
                raise BudgetExhausted(f"{spec.name}: invocation deadline reached before page {page}")
            failed = False
            try:
                body, records = fetcher.fetch(page if paged else None)
            except MalformedBody as bad:  # retries exhausted: keep the body so the failure is quarantined
                run.summary["failed_pages"].append({"page": page, "reason": bad.message})
                body, records, failed = bad.body, [], True
            except SourceUnavailable as gone:  # still down after every retry: stop here, resume here next time
                run.summary["failed_pages"].append({"page": page, "reason": gone.message})
                if run.summary["pages"] == 0:
                    raise
                run.summary["warnings"].append(f"{gone.message}; the next invocation retries page {page}")
                return "partial"
            last = not paged or page >= spec.http.max_pages or (not failed and len(records) < spec.http.per_page)
            position = {"snapshot": snapshot, "page": page}
            store.put_raw_batch(
                RawBatch(
                    batch_id=f"{spec.name}:{snapshot}:{page}" if paged else f"{spec.name}:{short_hash(body)}",
                    source=spec.name, run_id=run.run_id, format="json", payload=body, row_count=len(records),
                    position=position,
                ),
                (name, {"snapshot": snapshot, "next_page": page + 1, "complete": last}),
            )
            run.rows_in += len(records)
            run.rows_out += len(records)
            run.summary["pages"] += 1
            run.summary["records"] += len(records)
            run.checkpoint = {"snapshot": snapshot, "next_page": page + 1, "complete": last}
            if last:
                break
            page += 1
            keeper.keep_alive()
    except BudgetExhausted as out_of_time:
        run.summary["warnings"].append(f"{out_of_time.message}; the next invocation continues from page {page}")
        return "partial"
    finally:
        run.summary["http"] = fetcher.stats.to_dict()
    if run.summary["failed_pages"]:
        run.summary["warnings"].append(f"{len(run.summary['failed_pages'])} page(s) failed; see failed_pages")
        return "partial"
    return "succeeded"
