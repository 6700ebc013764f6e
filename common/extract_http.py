"""Extract stage for `http_json` sources: pages -> raw batches, each written with the pass state just after it.

The pass state (`common.sources.paging.PagePass`) is the checkpoint: it goes to the store in the same call as the
page's raw batch. The rules this module adds on top of fetching, and why:

- **A failing page does not pin the source.** A page that still fails after every retry is skipped as soon as it is
  known to be the page and not the source: when the next page answers, or (for the last page, which has no next)
  when it failed in FAILURES_BEFORE_SKIP invocations in a row. Its body (if any) and the reason go to the
  quarantine before the pass moves past it, and the run is `partial`. Two pages failing in a row mean the source is
  down: the run stops, nothing is quarantined, and the next invocation retries the first of them.
- **A stuck pass does not live forever.** An unfinished pass older than the pass interval is not resumed; a fresh
  one starts at page 1 (records are upserts on their natural key, so re-reading pages duplicates nothing).
- **A moving ranking is accounted for** (see `paging`): distinct coins, duplicates across pages, pages fetched again
  to find what the shift pushed past, what could not be found, and coins gone since the previous pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.clock import Deadline
from common.config import Settings
from common.errors import BudgetExhausted, RateLimited, SourceUnavailable
from common.extract import checkpoint_name
from common.ids import short_hash
from common.normalize import quarantine_entry
from common.runs import LeaseKeeper
from common.sources import SourceSpec
from common.sources.http_client import PageFetcher
from common.sources.paging import FAILURES_BEFORE_SKIP, MAX_LISTED, PagePass
from common.store import RawBatch, Run, Store


@dataclass
class PageFailure:
    page: int
    error: SourceUnavailable
    body: str | None


def extract_http(spec: SourceSpec, store: Store, run: Run, keeper: LeaseKeeper, deadline: Deadline,
                 fetcher: PageFetcher, *, pass_interval_s: float = Settings.source_pass_interval_s) -> str:
    """Fetch the pass from its checkpoint until it is complete, the deadline nears, or the source fails."""
    return HttpExtract(spec, store, run, keeper, deadline, fetcher, pass_interval_s).extract()


class HttpExtract:
    """One invocation's work on one pass of an `http_json` source."""

    def __init__(self, spec: SourceSpec, store: Store, run: Run, keeper: LeaseKeeper, deadline: Deadline,
                 fetcher: PageFetcher, pass_interval_s: float) -> None:
        assert spec.http is not None
        self.spec, self.store, self.run, self.keeper, self.deadline, self.fetcher = (
            spec, store, run, keeper, deadline, fetcher)
        self.name, self.paged = checkpoint_name(spec.name), spec.http.page_param is not None
        self.state, note = PagePass.resume(store.get_checkpoint(self.name), run.run_id, deadline.clock(),
                                           pass_interval_s, paged=self.paged,
                                           max_pages=spec.http.max_pages if self.paged else 1)
        self.warnings = run.summary["warnings"]
        if note:
            self.warnings.append(note)
        self.pending: PageFailure | None = None  # a page that failed, waiting for the next page's verdict
        self.written = 0  # raw batches written by this invocation
        self.unrecovered_before = self.state.unrecovered
        run.summary.update(pages=0, records=0, failed_pages=[], refetched_pages=[])

    def extract(self) -> str:
        summary = self.run.summary
        try:
            while not self.state.complete:
                page, again = (self.pending.page + 1, False) if self.pending else self.state.next_fetch()
                if self.deadline.near():
                    raise BudgetExhausted(f"{self.spec.name}: invocation deadline reached before page {page}")
                try:
                    body, records = self.fetcher.fetch(page if self.paged else None)
                except SourceUnavailable as gone:
                    stop = self._failed(page, again, gone)
                    if stop:
                        return stop
                    continue
                self._write(page, again, body, records)
        except BudgetExhausted as out_of_time:
            if self.pending:
                self._undecided(self.pending)
            self.warnings.append(f"{out_of_time.message}; the next invocation continues from page "
                                 f"{self.state.next_fetch()[0]}")
            return "partial"
        finally:
            self._summarize()
        if any(failed["skipped"] for failed in summary["failed_pages"]):
            return "partial"
        return "succeeded"

    # --- a page came in ------------------------------------------------------------------------------------------
    def _write(self, page: int, again: bool, body: str, records: list) -> None:
        spec, state, summary = self.spec, self.state, self.run.summary
        ids = record_ids(spec, records)
        if again:
            refetch = len(state.refetches)
            state.record_refetch(page, ids)
            summary["refetched_pages"].append(state.refetches[-1])
            batch_id, position = f"{spec.name}:{state.snapshot}:{page}:again{refetch}", {"again": refetch}
        else:
            if self.pending:  # the page after a failed one answered: the failure was the page's own
                self._skip(self.pending, "the next page answered")
                self.pending = None
            state.record_page(page, ids, short=self.paged and len(records) < spec.http.per_page)
            batch_id = f"{spec.name}:{state.snapshot}:{page}" if self.paged else f"{spec.name}:{short_hash(body)}"
            position = {}
            summary["pages"] += 1
        self.store.put_raw_batch(
            RawBatch(batch_id=batch_id, source=spec.name, run_id=self.run.run_id, format="json", payload=body,
                     row_count=len(records), position={"snapshot": state.snapshot, "page": page, **position}),
            (self.name, state.to_checkpoint()),
        )
        self.written += 1
        self.run.rows_in += len(records)
        self.run.rows_out += len(records)
        summary["records"] += len(records)
        self.run.checkpoint = state.ledger_view()
        self.keeper.keep_alive()

    # --- a page did not come in ----------------------------------------------------------------------------------
    def _failed(self, page: int, again: bool, gone: SourceUnavailable) -> str | None:
        """Decide what a failed page means; returns the run's status when the invocation must stop."""
        if again:  # a re-fetch for the ranking shift: give up the walk, the pass itself goes on
            self.state.abandon_walk()
            self.warnings.append(f"re-fetching page {page} failed ({gone.message}); the pass goes on without it")
            self._save_state()
            return None
        failure = PageFailure(page, gone, getattr(gone, "body", None))
        if isinstance(gone, RateLimited):  # refused, not broken: retried from here next time
            first, self.pending = self.pending, None
            if first and not self._undecided(first):
                failure = first
            return self._stop(failure, f"{gone.message}; still refused after every retry")
        if self.pending:
            first, self.pending = self.pending, None
            return self._stop(first, f"pages {first.page} and {page} both failed ({gone.message}): "
                                     f"{self.spec.name} looks down")
        if not self.paged:
            if failure.body is not None:
                self._quarantine(failure, f"{self.spec.name}: response kept after every retry failed: {gone.message}")
            raise gone
        if self.state.is_last(page):
            return None if self._undecided(failure) else self._stop(
                failure, f"page {page} failed ({gone.message}); retried next invocation, skipped if it fails again")
        self.pending = failure
        return None

    def _undecided(self, failure: PageFailure) -> bool:
        """A failure with no next page to judge it by: counted across invocations; skipped (True) at the limit."""
        times = self.state.note_failure(failure.page)
        if times >= FAILURES_BEFORE_SKIP:
            self._skip(failure, f"it failed in {times} invocations in a row")
        self._save_state()
        return times >= FAILURES_BEFORE_SKIP

    def _skip(self, failure: PageFailure, why: str) -> None:
        reason = (f"{self.spec.name} page {failure.page} of snapshot {self.state.snapshot} skipped ({why}): "
                  f"{failure.error.message}")
        self._quarantine(failure, reason)  # before the pass moves past the page: never lost without a trace
        self.state.skip(failure.page, reason)
        self.run.summary["failed_pages"].append({"page": failure.page, "reason": failure.error.message,
                                                  "skipped": True})
        self.warnings.append(f"page {failure.page} skipped after every retry failed ({why}); its body and the "
                             f"reason are in the quarantine")

    def _stop(self, failure: PageFailure, note: str) -> str:
        """Stop this invocation; the next one retries the page. Nothing loaded in this one: the run fails."""
        self.run.summary["failed_pages"].append({"page": failure.page, "reason": failure.error.message,
                                                  "skipped": False})
        if not self.written:
            raise failure.error
        self.warnings.append(f"{note}; the next invocation retries page {failure.page}")
        return "partial"

    def _quarantine(self, failure: PageFailure, reason: str) -> None:
        batch_id = (f"{self.spec.name}:{self.state.snapshot}:{failure.page}" if self.paged
                    else f"{self.spec.name}:failed:{self.run.run_id}")
        placeholder = RawBatch(batch_id=batch_id, source=self.spec.name, run_id=self.run.run_id, format="json",
                               payload="", row_count=0)
        entry = quarantine_entry(placeholder, self.run.run_id, None, failure.body, reason)
        self.store.commit_transformed(None, [], [entry], [])
        self.run.quarantined += 1

    def _save_state(self) -> None:
        self.store.put_checkpoint(self.name, self.state.to_checkpoint())
        self.run.checkpoint = self.state.ledger_view()

    # --- the run summary -----------------------------------------------------------------------------------------
    def _summarize(self) -> None:
        state, summary, stats = self.state, self.run.summary, self.fetcher.stats
        summary["http"] = stats.to_dict()
        for capped in stats.capped_waits:
            self.warnings.append(
                f"{self.spec.name} asked to wait {capped['requested_s']:g}s (Retry-After: {capped['retry_after']}); "
                f"capped at {capped['waited_s']:g}s (MAX_SERVER_WAIT_S)")
        summary["distinct_coins"] = len(state.seen())
        summary["duplicate_count"] = state.duplicate_count
        summary["duplicates_across_pages"] = state.duplicates[:MAX_LISTED]
        summary["shift_unrecovered"] = state.unrecovered
        if state.unrecovered > self.unrecovered_before:
            crossed = sorted({d["id"] for d in state.duplicates if d["pages"][0] != d["pages"][1]})
            self.warnings.append(
                f"the ranking moved between pages: {state.unrecovered - self.unrecovered_before} coin(s) pushed "
                f"onto pages already fetched were not found again (duplicates: {', '.join(crossed[:10])})")
        summary["vanished_since_last_pass"] = []
        if state.complete and self.paged and not state.truncated:
            vanished = state.vanished()
            summary["vanished_since_last_pass"] = vanished[:MAX_LISTED]
            inside = [v["id"] for v in vanished if v["page"] < state.previous_last_page()]
            if inside:
                self.warnings.append(f"{len(inside)} coin(s) vanished since the previous pass from inside its "
                                     f"range (not just its last page): {', '.join(inside[:10])}")
        if state.truncated:
            self.warnings.append("more coins than a pass can track; duplicates and vanished coins are incomplete")


def record_ids(spec: SourceSpec, records: list) -> list[str]:
    """The source ids of a page's records, in order (records without one are left to the transform)."""
    path = spec.field("source_id").aliases[0].split(".")
    ids = []
    for record in records:
        for key in path:
            record = record.get(key) if isinstance(record, dict) else None
        if isinstance(record, (str, int)) and not isinstance(record, bool) and str(record).strip():
            ids.append(str(record).strip())
    return ids
