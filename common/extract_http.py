"""Extract stage for `http_json` sources: pages -> raw batches, each written with the cursor just after it."""

from __future__ import annotations

from common.clock import Deadline
from common.errors import BudgetExhausted, SourceUnavailable
from common.extract import checkpoint_name
from common.ids import short_hash
from common.runs import LeaseKeeper
from common.sources import SourceSpec
from common.sources.http_client import MalformedBody, PageFetcher
from common.store import RawBatch, Run, Store


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
        for capped in fetcher.stats.capped_waits:
            run.summary["warnings"].append(
                f"{spec.name} asked to wait {capped['requested_s']:g}s (Retry-After: {capped['retry_after']}); "
                f"capped at {capped['waited_s']:g}s (MAX_SERVER_WAIT_S)")
    if run.summary["failed_pages"]:
        run.summary["warnings"].append(f"{len(run.summary['failed_pages'])} page(s) failed; see failed_pages")
        return "partial"
    return "succeeded"
